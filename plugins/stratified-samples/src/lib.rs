//! `stratified-samples`: a stratified random sample of the candidates, with the strata
//! given by a class layer (Sedona et al., "stratified random sampling" of step 3; the
//! allocation rules are the textbook ones, e.g. Olofsson et al. 2014, "Good practices
//! for estimating area and assessing accuracy of land change", section 5.1).
//!
//! Each class of the layer (0 = none) is a stratum. How many samples a stratum gets:
//! - a fixed quota, `per_class` (default 100): every class the same, so rare classes
//!   are as well represented as common ones — what a classifier's training set needs;
//! - or a `total` shared among the classes by `allocation`:
//!   - `"proportional"`: in proportion to the class's candidates (largest-remainder
//!     rounding, ties to the lower class code) — the sample keeps the map's class mix,
//!     which is what an area estimate or an accuracy assessment wants;
//!   - `"equal"`: `total / classes` each; a class with fewer candidates than its share
//!     gives all it has and the rest is shared again among the others, so the total is
//!     reached whenever there are enough candidates (a last remainder below the number
//!     of classes goes one each to the lowest codes).
//!
//! Within each class the draw is uniform and seeded. With `min_distance_px ≥ 2`, the
//! draw also thins the sample in space, because neighbouring pixels are nearly copies
//! of each other (spatial autocorrelation) and inflate both training and validation:
//! every class's candidates are shuffled, then the classes take turns (in code order)
//! taking their next candidate, which is skipped if an already chosen sample of *any*
//! class lies closer than `min_distance_px` (Chebyshev distance, in pixels). A class
//! whose candidates are too crowded may then fall short of its quota; the report says
//! by how much.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::sampling::*;
use sitsflow_sdk::serde_json::json;
use std::collections::{BTreeMap, HashMap};

fn default_layer() -> String {
    "reference".into()
}

const DEFAULT_PER_CLASS: u32 = 100;

/// How a `total` is shared among the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// In proportion to each class's candidates: `allocation = "proportional"`.
    #[default]
    Proportional,
    /// The same for every class, redistributing what small classes cannot give:
    /// `allocation = "equal"`.
    Equal,
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Layer holding the classes to stratify by: `"reference"` or an earlier stage's id.
    #[serde(default = "default_layer")]
    pub layer: String,
    /// Samples per class, e.g. `per_class = 200`. Default 100. Not together with `total`.
    #[serde(default)]
    pub per_class: Option<u32>,
    /// Instead of a fixed quota per class: this many samples in all, shared among the
    /// classes by `allocation`, e.g. `total = 2000`.
    #[serde(default)]
    pub total: Option<u32>,
    /// How `total` is shared: `"proportional"` (default) or `"equal"`. Only with `total`.
    #[serde(default)]
    pub allocation: Option<Allocation>,
    /// Only these class codes are sampled, e.g. `classes = [1, 2, 5]`. Default: all.
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    /// No two chosen samples (of any class) closer than this many pixels, in Chebyshev
    /// distance: `min_distance_px = 3` leaves at least two pixels between samples.
    /// 0 or 1: no spatial thinning. Needs the candidates' positions.
    #[serde(default)]
    pub min_distance_px: u32,
}

pub struct StratifiedSamples;

impl Stage for StratifiedSamples {
    const NAME: &'static str = "stratified-samples";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "Stratified random samples from a class layer, with per-class quotas and spatial spreading.";
    type Params = Params;
}

/// How many samples each class gets, before any spatial thinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quota {
    PerClass(u32),
    Total(u32, Allocation),
}

impl Quota {
    fn from_params(p: &Params) -> Result<Quota, StageError> {
        match (p.per_class, p.total, p.allocation) {
            (Some(_), Some(_), _) => Err(StageError::InvalidParams(
                "per_class and total exclude each other: give one".into(),
            )),
            (_, None, Some(_)) => Err(StageError::InvalidParams("allocation needs a total".into())),
            (per_class, None, None) => Ok(Quota::PerClass(per_class.unwrap_or(DEFAULT_PER_CLASS))),
            (None, Some(total), allocation) => Ok(Quota::Total(total, allocation.unwrap_or_default())),
        }
    }

    /// Quota per class, given the candidates per class (ascending codes).
    fn allocate(self, available: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
        let all: u64 = available.values().sum();
        match self {
            Quota::PerClass(k) => available.iter().map(|(&c, &n)| (c, n.min(k as u64))).collect(),
            Quota::Total(total, Allocation::Proportional) => {
                if all == 0 {
                    return available.clone();
                }
                let total = (total as u64).min(all);
                // Largest remainder: floor shares first, the rest by the largest fractions.
                let mut quota: BTreeMap<u32, u64> = BTreeMap::new();
                let mut fractions: Vec<(u128, u32)> = Vec::new();
                for (&c, &n) in available {
                    let exact = total as u128 * n as u128;
                    quota.insert(c, (exact / all as u128) as u64);
                    fractions.push((exact % all as u128, c));
                }
                let left = total - quota.values().sum::<u64>();
                // Larger fraction first; on a tie the lower code (stable sort keeps code order).
                fractions.sort_by_key(|f| std::cmp::Reverse(f.0));
                for &(_, c) in fractions.iter().take(left as usize) {
                    *quota.get_mut(&c).expect("every class has a quota") += 1;
                }
                quota
            }
            Quota::Total(total, Allocation::Equal) => {
                let mut quota: BTreeMap<u32, u64> = available.keys().map(|&c| (c, 0)).collect();
                let mut left = (total as u64).min(all);
                while left > 0 {
                    let open: Vec<u32> = available
                        .iter()
                        .filter(|(c, n)| quota[*c] < **n)
                        .map(|(&c, _)| c)
                        .collect();
                    let share = left / open.len() as u64;
                    if share == 0 {
                        // Fewer samples left than open classes: one each, lowest codes first.
                        for c in open.iter().take(left as usize) {
                            *quota.get_mut(c).expect("open classes have a quota") += 1;
                        }
                        break;
                    }
                    for c in open {
                        let q = quota.get_mut(&c).expect("open classes have a quota");
                        let add = share.min(available[&c] - *q);
                        *q += add;
                        left -= add;
                    }
                }
                quota
            }
        }
    }
}

/// Chosen positions on a grid of `d × d` buckets, so a distance check looks at 9 buckets.
struct Thinning {
    d: u32,
    buckets: HashMap<(u32, u32), Vec<(u32, u32)>>,
}

impl Thinning {
    fn too_close(&self, (r, c): (u32, u32)) -> bool {
        let (br, bc) = (r / self.d, c / self.d);
        for dr in br.saturating_sub(1)..=br.saturating_add(1) {
            for dc in bc.saturating_sub(1)..=bc.saturating_add(1) {
                let near = self.buckets.get(&(dr, dc)).map(Vec::as_slice).unwrap_or(&[]);
                if near.iter().any(|&(pr, pc)| pr.abs_diff(r).max(pc.abs_diff(c)) < self.d) {
                    return true;
                }
            }
        }
        false
    }

    fn add(&mut self, (r, c): (u32, u32)) {
        self.buckets.entry((r / self.d, c / self.d)).or_default().push((r, c));
    }
}

impl SamplerStage for StratifiedSamples {
    fn needs(params: &Params) -> SampleNeeds {
        SampleNeeds { features: false, positions: params.min_distance_px >= 2 }
    }

    fn select(input: SampleInput, params: Params) -> Result<Selection, StageError> {
        input.features.check()?;
        let quota_rule = Quota::from_params(&params)?;
        let allowed = allowed_classes(&params.classes)?;
        let classes_of = layer(&input, &params.layer)?;
        let thinning = params.min_distance_px >= 2;
        if thinning && input.positions.len() != input.features.samples {
            return Err(StageError::InvalidInput(format!(
                "min_distance_px = {} needs a position per candidate, but there are {} positions for {} candidates",
                params.min_distance_px,
                input.positions.len(),
                input.features.samples
            )));
        }

        // 1. Strata.
        let mut pools: BTreeMap<u32, Vec<u32>> = allowed.iter().flatten().map(|&c| (c, Vec::new())).collect();
        for (i, &c) in classes_of.iter().enumerate() {
            if c != 0 && allowed.as_ref().is_none_or(|a| a.contains(&c)) {
                pools.entry(c).or_default().push(i as u32);
            }
        }
        let mut codes = BTreeMap::new();
        for &c in pools.keys() {
            let code = u16::try_from(c).map_err(|_| {
                StageError::InvalidInput(format!(
                    "layer '{}' has class {c}, which does not fit 16 bits",
                    params.layer
                ))
            })?;
            codes.insert(c, code);
        }
        let available: BTreeMap<u32, u64> = pools.iter().map(|(&c, p)| (c, p.len() as u64)).collect();
        let quota = quota_rule.allocate(&available);

        // 2. The draw.
        let mut rng = SplitMix(input.seed);
        let mut chosen: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut too_close: BTreeMap<u32, u64> = BTreeMap::new();
        if !thinning {
            for (&c, pool) in pools.iter_mut() {
                let k = quota[&c] as usize;
                shuffle_front(pool, k, &mut rng);
                chosen.insert(c, pool[..k].to_vec());
            }
        } else {
            for pool in pools.values_mut() {
                let n = pool.len();
                shuffle_front(pool, n, &mut rng);
            }
            let mut taken = Thinning {
                d: params.min_distance_px,
                buckets: HashMap::new(),
            };
            let mut cursor: BTreeMap<u32, usize> = pools.keys().map(|&c| (c, 0)).collect();
            // Classes take turns so that no class claims the space before the others.
            loop {
                let mut progress = false;
                for (&c, pool) in &pools {
                    let mine = chosen.entry(c).or_default();
                    if mine.len() as u64 >= quota[&c] {
                        continue;
                    }
                    let at = cursor.get_mut(&c).expect("every class has a cursor");
                    while *at < pool.len() {
                        let i = pool[*at];
                        *at += 1;
                        let p = input.positions[i as usize];
                        if taken.too_close(p) {
                            *too_close.entry(c).or_default() += 1;
                        } else {
                            taken.add(p);
                            mine.push(i);
                            progress = true;
                            break;
                        }
                    }
                }
                if !progress {
                    break;
                }
            }
        }

        let mut rows = Vec::new();
        let mut short = Vec::new();
        let mut out: Vec<(u32, u16)> = Vec::new();
        for (&c, &n) in &available {
            let got = chosen.get(&c).map_or(0, Vec::len) as u64;
            // Short of the asked quota, i.e. before capping at what the class has.
            let asked = match quota_rule {
                Quota::PerClass(k) => k as u64,
                Quota::Total(..) => quota[&c],
            };
            if got < asked {
                short.push(c);
            }
            rows.push(json!([c, n, quota[&c], got, too_close.get(&c).copied().unwrap_or(0)]));
            out.extend(chosen.get(&c).into_iter().flatten().map(|&i| (i, codes[&c])));
        }
        out.sort_unstable();
        if !short.is_empty() {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!("classes {short:?} of layer '{}' are short of their quota", params.layer),
            );
        }
        let mut report = json!({
            "layer": params.layer,
            "min_distance_px": params.min_distance_px,
            "candidates": input.features.samples,
            "available": available.values().sum::<u64>(),
            "selected": out.len(),
            "classes_short_of_quota": short,
            "per_class": {
                "columns": ["class", "available", "quota", "selected", "too close"],
                "rows": rows,
            },
        });
        match quota_rule {
            Quota::PerClass(k) => {
                report["allocation"] = json!("fixed");
                report["per_class_quota"] = json!(k);
            }
            Quota::Total(t, a) => {
                report["allocation"] = json!(if a == Allocation::Equal {
                    "equal"
                } else {
                    "proportional"
                });
                report["total"] = json!(t);
            }
        }
        Ok(Selection {
            indices: out.iter().map(|c| c.0).collect(),
            labels: out.iter().map(|c| c.1).collect(),
            report: report.to_string(),
        })
    }
}

sitsflow_sdk::export_sampler_stage!(StratifiedSamples);

#[cfg(test)]
mod tests {
    use super::*;
    use sitsflow_sdk::serde_json;

    fn input(reference: Vec<u32>, positions: Vec<(u32, u32)>, seed: u64) -> SampleInput {
        SampleInput {
            features: FeatureMatrix {
                samples: reference.len(),
                names: Vec::new(),
                data: Vec::new(),
            },
            layers: vec![
                ("kmeans".into(), vec![1; reference.len()]),
                ("reference".into(), reference),
            ],
            probabilities: None,
            positions,
            seed,
        }
    }

    fn params(json: &str) -> Params {
        StratifiedSamples::parse_params(json).unwrap()
    }

    fn report(s: &Selection) -> serde_json::Value {
        serde_json::from_str(&s.report).unwrap()
    }

    fn count(s: &Selection, class: u16) -> usize {
        s.labels.iter().filter(|&&l| l == class).count()
    }

    #[test]
    fn fixed_quota_per_class_takes_all_of_a_small_class() {
        // Class 3 has 2 pixels; 0 is no class.
        let reference: Vec<u32> = (0..50)
            .map(|i| {
                if i < 30 {
                    1
                } else if i < 48 {
                    2
                } else if i == 48 {
                    3
                } else {
                    0
                }
            })
            .collect();
        let mut r = reference.clone();
        r[0] = 3;
        let s = StratifiedSamples::select(input(r.clone(), Vec::new(), 1), params(r#"{"per_class": 10}"#)).unwrap();
        assert_eq!((count(&s, 1), count(&s, 2), count(&s, 3)), (10, 10, 2));
        assert!(s.indices.contains(&0) && s.indices.contains(&48) && !s.indices.contains(&49));
        assert!(s.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(
            s.indices
                .iter()
                .zip(&s.labels)
                .all(|(&i, &l)| r[i as usize] == l as u32)
        );
        let rep = report(&s);
        assert_eq!(rep["per_class"]["rows"][2], json!([3, 2, 2, 2, 0]));
        assert_eq!(rep["classes_short_of_quota"], json!([3]));
        assert_eq!(rep["allocation"], "fixed");
    }

    #[test]
    fn the_draw_is_seeded() {
        let reference: Vec<u32> = (0..300).map(|i| 1 + i % 3).collect();
        let p = || params(r#"{"per_class": 20}"#);
        let a = StratifiedSamples::select(input(reference.clone(), Vec::new(), 3), p()).unwrap();
        let b = StratifiedSamples::select(input(reference.clone(), Vec::new(), 3), p()).unwrap();
        let c = StratifiedSamples::select(input(reference, Vec::new(), 4), p()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.indices, c.indices);
        assert_eq!(a.indices.len(), 60);
    }

    #[test]
    fn allow_list_and_another_layer() {
        let mut i = input(vec![1, 2, 2, 3, 3, 3], Vec::new(), 1);
        i.layers[0].1 = vec![7, 7, 8, 8, 0, 9];
        let s = StratifiedSamples::select(i, params(r#"{"layer": "kmeans", "classes": [8, 9, 4]}"#)).unwrap();
        assert_eq!(s.indices, [2, 3, 5]);
        assert_eq!(s.labels, [8, 8, 9]);
        // Class 4 is asked for but absent: a row with nothing available.
        assert_eq!(report(&s)["per_class"]["rows"][0], json!([4, 0, 0, 0, 0]));
        // Only absent classes with a proportional total: nothing to share, not a division by zero.
        let s = StratifiedSamples::select(
            input(vec![1, 2], Vec::new(), 1),
            params(r#"{"total": 5, "classes": [4]}"#),
        )
        .unwrap();
        assert!(s.indices.is_empty());
        assert_eq!(report(&s)["classes_short_of_quota"], json!([]));
    }

    #[test]
    fn proportional_allocation_uses_largest_remainders() {
        // 6, 3 and 1 candidates; total 5 → exact shares 3, 1.5, 0.5 → 3 + 1 + 0 and the
        // one left goes to the tie between 1.5 and 0.5 on the lower code: class 2.
        let available = BTreeMap::from([(1, 6), (2, 3), (3, 1)]);
        let q = Quota::Total(5, Allocation::Proportional).allocate(&available);
        assert_eq!(q, BTreeMap::from([(1, 3), (2, 2), (3, 0)]));
        // total 7 → 4.2, 2.1, 0.7 → 4 + 2 + 0, the one left to the largest fraction: class 3.
        let q = Quota::Total(7, Allocation::Proportional).allocate(&available);
        assert_eq!(q, BTreeMap::from([(1, 4), (2, 2), (3, 1)]));
        // More than there is: everything.
        let q = Quota::Total(50, Allocation::Proportional).allocate(&available);
        assert_eq!(q, available);
    }

    #[test]
    fn equal_allocation_redistributes_what_small_classes_lack() {
        let available = BTreeMap::from([(1, 6), (2, 3), (3, 1)]);
        // 3 each; class 3 has only 1, so 2 go to class 1 (class 2 is full).
        assert_eq!(
            Quota::Total(9, Allocation::Equal).allocate(&available),
            BTreeMap::from([(1, 5), (2, 3), (3, 1)])
        );
        // 1 each, then the one left to the lowest open code.
        assert_eq!(
            Quota::Total(4, Allocation::Equal).allocate(&available),
            BTreeMap::from([(1, 2), (2, 1), (3, 1)])
        );
        // Through select: the total is met and the report names the rule.
        let r = vec![1, 1, 1, 1, 1, 1, 2, 2, 2, 3];
        let s = StratifiedSamples::select(
            input(r, Vec::new(), 2),
            params(r#"{"total": 9, "allocation": "equal"}"#),
        )
        .unwrap();
        assert_eq!((count(&s, 1), count(&s, 2), count(&s, 3)), (5, 3, 1));
        assert_eq!(report(&s)["allocation"], "equal");
        assert_eq!(report(&s)["total"], 9);
    }

    #[test]
    fn thinning_skips_candidates_near_any_chosen_sample() {
        // Class 1 has one pixel at (0, 0); class 2 one right next to it and one far away.
        // Class 1 goes first, so whichever order class 2 draws, its neighbour is too close.
        let positions = vec![(0, 0), (0, 1), (5, 5)];
        for seed in 0..8 {
            let s = StratifiedSamples::select(
                input(vec![1, 2, 2], positions.clone(), seed),
                params(r#"{"per_class": 1, "min_distance_px": 2}"#),
            )
            .unwrap();
            assert_eq!(s.indices, [0, 2], "seed {seed}");
            assert_eq!(s.labels, [1, 2]);
        }
    }

    #[test]
    fn thinning_keeps_the_minimum_distance_and_fills_the_gaps() {
        // A 10 × 10 block, two classes in stripes, generous quotas: greedy thinning must
        // end with every pair ≥ 3 apart and every skipped pixel within 3 of a chosen one.
        let positions: Vec<(u32, u32)> = (0..100).map(|i| (i / 10, i % 10)).collect();
        let reference: Vec<u32> = (0..100).map(|i| 1 + (i / 10) % 2).collect();
        let s = StratifiedSamples::select(
            input(reference, positions.clone(), 9),
            params(r#"{"per_class": 100, "min_distance_px": 3}"#),
        )
        .unwrap();
        let cheb = |a: (u32, u32), b: (u32, u32)| a.0.abs_diff(b.0).max(a.1.abs_diff(b.1));
        let picked: Vec<(u32, u32)> = s.indices.iter().map(|&i| positions[i as usize]).collect();
        for (k, &a) in picked.iter().enumerate() {
            assert!(picked[k + 1..].iter().all(|&b| cheb(a, b) >= 3), "{picked:?}");
        }
        for &p in &positions {
            assert!(picked.iter().any(|&q| cheb(p, q) < 3), "{p:?} could have been taken");
        }
        // Each sample rules out its 5 × 5 neighbourhood (≥ 4 samples to cover 10 × 10) and
        // no 3 × 3 block holds two (≤ 16 blocks cover it).
        assert!((4..=16).contains(&picked.len()), "{}", picked.len());
        let rep = report(&s);
        let too_close: u64 = rep["per_class"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[4].as_u64().unwrap())
            .sum();
        assert_eq!(too_close as usize + picked.len(), 100);
    }

    #[test]
    fn names_missing_layers_and_bad_params() {
        let err =
            StratifiedSamples::select(input(vec![1, 2], Vec::new(), 0), params(r#"{"layer": "pseudo"}"#)).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput("no layer 'pseudo' (layers: kmeans, reference)".into())
        );
        let err = StratifiedSamples::select(input(vec![1, 2], Vec::new(), 0), params(r#"{"min_distance_px": 4}"#))
            .unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput(
                "min_distance_px = 4 needs a position per candidate, but there are 0 positions for 2 candidates".into()
            )
        );
        let err = StratifiedSamples::select(
            input(vec![1, 2], Vec::new(), 0),
            params(r#"{"per_class": 4, "total": 10}"#),
        )
        .unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidParams("per_class and total exclude each other: give one".into())
        );
        let err = StratifiedSamples::select(input(vec![1, 2], Vec::new(), 0), params(r#"{"allocation": "equal"}"#))
            .unwrap_err();
        assert_eq!(err, StageError::InvalidParams("allocation needs a total".into()));
        let mut short = input(vec![1, 2], Vec::new(), 0);
        short.layers[1].1.pop();
        let err = StratifiedSamples::select(short, params("{}")).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput("layer 'reference' has 1 values for 2 candidates".into())
        );
        assert!(StratifiedSamples::parse_params(r#"{"allocation": "random"}"#).is_err());
    }
}

//! `agreement-samples`: a multi-year training set from pixels whose yearly
//! pseudo-labels agree (Sedona et al., step 3 of the multi-year training set).
//!
//! A random forest trained on one year predicts a pseudo-label map for every year of
//! the series. Where the maps agree the label is likely right *and* the land cover is
//! likely stable, so those pixels can carry one label for all years; where they
//! disagree the pixel is either misclassified or really changed, and in both cases it
//! would teach a multi-year model the wrong thing. The kept pixels then go through a
//! stratified random draw with a per-class quota ("stratified random sampling" in the
//! seed) so that rare classes are not swamped by common ones.
//!
//! Inputs (from the host): the year layers `<maps>_<YYYY>` (a labeller predicting per
//! year, e.g. `pseudo_2018`, `pseudo_2019`, `pseudo_2020`; class codes, 0 = none) and,
//! when `exclude_reference_disagreement` is set, the `reference` layer.
//!
//! Agreement rule: a candidate's label is the class most of its years carry, provided
//! that class is carried by at least `min_agreeing` years (default: all of them) and by
//! more years than any other class. Years with no label (0) never count towards
//! agreement. So with the default every year must carry the same class; with
//! `min_agreeing = 2` of three years, a 2-of-3 majority is enough.
//!
//! The report mirrors the seed's consistency table: for each pair of consecutive
//! years and each class, the share of the candidates of class c in the first year
//! that are still c in the second (candidates with no label in either year are left
//! out, as in `sitsflow eval --series`), with an `all` row over every class; and
//! `overall_agreement`, the share of candidates that pass the agreement rule.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::sampling::*;
use sitsflow_sdk::serde_json::{self, json};
use std::collections::BTreeSet;

fn default_per_class() -> u32 {
    1000
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Prefix of the yearly label layers: `maps = "pseudo"` uses every layer named
    /// `pseudo_<YYYY>` (e.g. `pseudo_2018`, `pseudo_2019`), in year order. At least two.
    pub maps: String,
    /// How many years must carry the same class (2..=number of years). Default: all.
    #[serde(default)]
    pub min_agreeing: Option<u32>,
    /// At most this many samples per class (stratified random draw).
    #[serde(default = "default_per_class")]
    pub per_class: u32,
    /// Only these class codes are sampled, e.g. `classes = [1, 2, 5]`. Default: all.
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    /// Drop candidates whose agreed class differs from the `reference` layer (when the
    /// pipeline has one), e.g. to keep pseudo-labels that the reference map confirms.
    #[serde(default)]
    pub exclude_reference_disagreement: bool,
}

pub struct AgreementSamples;

impl Stage for AgreementSamples {
    const NAME: &'static str = "agreement-samples";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Multi-year pseudo-label agreement: keep pixels whose yearly labels agree, stratified draw with per-class quotas.";
    type Params = Params;
}

/// One year's label layer: (year, layer name, labels per candidate).
type YearLayer<'a> = (i32, &'a str, &'a [u32]);

/// The layers `<prefix>_<YYYY>`, sorted by year.
fn year_layers<'a>(input: &'a SampleInput, prefix: &str) -> Result<Vec<YearLayer<'a>>, StageError> {
    let mut years = Vec::new();
    for (name, values) in &input.layers {
        let Some(year) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
            continue;
        };
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let year: i32 = year.parse().expect("four ASCII digits parse");
        check_layer(input, name, values)?;
        years.push((year, name.as_str(), values.as_slice()));
    }
    years.sort_by_key(|y| y.0);
    if let Some(w) = years.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(StageError::InvalidInput(format!(
            "two layers for year {} ('{}')",
            w[0].0, w[0].1
        )));
    }
    if years.len() < 2 {
        return Err(StageError::InvalidInput(format!(
            "maps = '{prefix}' needs at least two layers named '{prefix}_<YYYY>', found {} (layers: {})",
            years.len(),
            layer_names(input)
        )));
    }
    Ok(years)
}

/// The agreed class of one candidate (dense class indices, [`NO_CODE`] for no label),
/// or None. `votes` is scratch space.
fn agreed(labels: impl Iterator<Item = u32>, min_agreeing: usize, votes: &mut Vec<(u32, usize)>) -> Option<u32> {
    votes.clear();
    for l in labels.filter(|&l| l != NO_CODE) {
        match votes.iter_mut().find(|v| v.0 == l) {
            Some(v) => v.1 += 1,
            None => votes.push((l, 1)),
        }
    }
    let best = votes.iter().map(|v| v.1).max()?;
    let mut at_best = votes.iter().filter(|v| v.1 == best);
    let (class, n) = *at_best.next()?;
    // A tie between two classes is no agreement, whatever their count.
    (n >= min_agreeing && at_best.next().is_none()).then_some(class)
}

fn share(part: u64, whole: u64) -> serde_json::Value {
    if whole == 0 {
        serde_json::Value::Null
    } else {
        json!(((part as f64 / whole as f64) * 1e4).round() / 1e4)
    }
}

impl SamplerStage for AgreementSamples {
    fn needs(_: &Params) -> SampleNeeds {
        SampleNeeds { features: false, positions: false }
    }

    fn select(input: SampleInput, params: Params) -> Result<Selection, StageError> {
        input.features.check()?;
        let years = year_layers(&input, &params.maps)?;
        let min_agreeing = match params.min_agreeing {
            None => years.len(),
            Some(k) if (2..=years.len() as u32).contains(&k) => k as usize,
            Some(k) => {
                return Err(StageError::InvalidParams(format!(
                    "min_agreeing {k} is outside 2..={} (the number of '{}_<YYYY>' layers)",
                    years.len(),
                    params.maps
                )));
            }
        };
        let allowed = allowed_classes(&params.classes)?;
        let reference = if params.exclude_reference_disagreement {
            match input.layers.iter().find(|(n, _)| n == "reference") {
                Some((name, values)) => {
                    check_layer(&input, name, values)?;
                    Some(values.as_slice())
                }
                None => {
                    sitsflow_sdk::host::log(
                        sitsflow_sdk::host::Level::Warn,
                        "exclude_reference_disagreement is set but there is no 'reference' layer: nothing is excluded",
                    );
                    None
                }
            }
        } else {
            None
        };

        // 1. Agreement per candidate, and the per-class counts of the report. The classes
        //    of all years renumbered densely, so counts and pools are arrays indexed by
        //    class, not maps searched per pixel.
        let n = input.features.samples;
        let all_years: Vec<u32> = years.iter().flat_map(|y| y.2.iter().copied()).collect();
        let dense = DenseCodes::new(&all_years);
        drop(all_years);
        let nc = dense.codes.len();
        let class_index = |code: u32| dense.codes.binary_search(&code).ok();
        let mut candidates = vec![0u64; nc]; // per class: candidates labelled it in some year
        let mut agreeing = vec![0u64; nc];
        let mut against_reference = vec![0u64; nc];
        let mut pools: Vec<Vec<u32>> = vec![Vec::new(); nc];
        let allowed_index: Vec<bool> =
            dense.codes.iter().map(|c| allowed.as_ref().is_none_or(|a| a.contains(c))).collect();
        let mut agreeing_total = 0u64;
        let mut votes = Vec::new();
        let mut seen = Vec::new();
        let label = |y: usize, i: usize| dense.index[y * n + i];
        for i in 0..n {
            seen.clear();
            for y in 0..years.len() {
                let l = label(y, i);
                if l != NO_CODE && !seen.contains(&l) {
                    seen.push(l);
                    candidates[l as usize] += 1;
                }
            }
            let Some(k) = agreed((0..years.len()).map(|y| label(y, i)), min_agreeing, &mut votes) else {
                continue;
            };
            agreeing_total += 1;
            if !allowed_index[k as usize] {
                continue;
            }
            agreeing[k as usize] += 1;
            let class = dense.codes[k as usize];
            if reference.is_some_and(|r| r[i] != 0 && r[i] != class) {
                against_reference[k as usize] += 1;
                continue;
            }
            pools[k as usize].push(i as u32);
        }
        let count = |counts: &[u64], class: u32| class_index(class).map_or(0, |k| counts[k]);

        // 2. Stratified draw with a per-class quota, classes in ascending code order.
        let classes: BTreeSet<u32> = match &allowed {
            Some(a) => a.clone(),
            // Every class of the year layers labels some candidate.
            None => dense.codes.iter().copied().collect(),
        };
        let mut rng = SplitMix(input.seed);
        let mut chosen: Vec<(u32, u16)> = Vec::new();
        let mut per_class_rows = Vec::new();
        let mut short = Vec::new();
        for &class in &classes {
            let code = u16::try_from(class)
                .map_err(|_| StageError::InvalidInput(format!("class {class} does not fit 16 bits")))?;
            let mut pool = class_index(class).map(|k| std::mem::take(&mut pools[k])).unwrap_or_default();
            let drawn = draw(&mut pool, params.per_class as usize, &mut rng);
            let met = drawn.len() >= params.per_class as usize;
            if !met {
                short.push(class);
            }
            per_class_rows.push(json!([
                class,
                count(&candidates, class),
                count(&agreeing, class),
                count(&against_reference, class),
                drawn.len(),
                if met { "yes" } else { "no" },
            ]));
            chosen.extend(drawn.into_iter().map(|i| (i, code)));
        }
        chosen.sort_unstable();
        if !short.is_empty() {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!(
                    "quota of {} not met for classes {short:?}: too few candidates agree",
                    params.per_class
                ),
            );
        }

        // 3. Year-to-year agreement per class over all candidates.
        let pair_names: Vec<String> = years.windows(2).map(|w| format!("{}-{}", w[0].0, w[1].0)).collect();
        let mut pair_class: Vec<Vec<(u64, u64)>> = vec![vec![(0, 0); nc]; pair_names.len()];
        let mut pair_overall = vec![(0u64, 0u64); pair_names.len()];
        for (p, (pair, overall)) in pair_class.iter_mut().zip(&mut pair_overall).enumerate() {
            let (a, b) = (&dense.index[p * n..(p + 1) * n], &dense.index[(p + 1) * n..(p + 2) * n]);
            for (&a, &b) in a.iter().zip(b) {
                if a == NO_CODE || b == NO_CODE {
                    continue;
                }
                let e = &mut pair[a as usize];
                e.1 += 1;
                overall.1 += 1;
                if a == b {
                    e.0 += 1;
                    overall.0 += 1;
                }
            }
        }
        let mut pair_columns = vec![json!("class")];
        pair_columns.extend(pair_names.iter().map(|p| json!(p)));
        let mut pair_rows: Vec<serde_json::Value> = classes
            .iter()
            .map(|c| {
                let mut row = vec![json!(c)];
                row.extend(pair_class.iter().map(|m| {
                    let (same, of) = class_index(*c).map_or((0, 0), |k| m[k]);
                    share(same, of)
                }));
                json!(row)
            })
            .collect();
        let mut all_row = vec![json!("all")];
        all_row.extend(pair_overall.iter().map(|&(same, of)| share(same, of)));
        pair_rows.push(json!(all_row));

        let report = json!({
            "years": years.iter().map(|y| y.0).collect::<Vec<_>>(),
            "layers": years.iter().map(|y| y.1).collect::<Vec<_>>(),
            "min_agreeing": min_agreeing,
            "per_class_quota": params.per_class,
            "reference_check": if reference.is_some() { "on" } else { "off" },
            "candidates": n,
            "agreeing": agreeing_total,
            "overall_agreement": share(agreeing_total, n as u64),
            "selected": chosen.len(),
            "classes_short_of_quota": short,
            "per_class": {
                "columns": ["class", "candidates", "agreeing", "differ from reference", "selected", "quota met"],
                "rows": per_class_rows,
            },
            "year_to_year_agreement": { "columns": pair_columns, "rows": pair_rows },
        });
        Ok(Selection {
            indices: chosen.iter().map(|c| c.0).collect(),
            labels: chosen.iter().map(|c| c.1).collect(),
            report: report.to_string(),
        })
    }
}

sitsflow_sdk::export_sampler_stage!(AgreementSamples);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(layers: Vec<(&str, Vec<u32>)>) -> SampleInput {
        let samples = layers[0].1.len();
        SampleInput {
            features: FeatureMatrix {
                samples,
                names: Vec::new(),
                data: Vec::new(),
            },
            layers: layers.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            probabilities: None,
            positions: Vec::new(),
            seed: 11,
        }
    }

    fn params(json: &str) -> Params {
        AgreementSamples::parse_params(json).unwrap()
    }

    fn report(s: &Selection) -> serde_json::Value {
        serde_json::from_str(&s.report).unwrap()
    }

    /// Three years over eight candidates; the layers come in shuffled order.
    fn three_years() -> SampleInput {
        input(vec![
            // candidate:    0  1  2  3  4  5  6  7
            ("pseudo_2020", vec![1, 1, 2, 2, 3, 1, 0, 4]),
            ("reference", vec![1, 2, 2, 2, 3, 1, 1, 4]),
            ("pseudo_2018", vec![1, 1, 2, 2, 3, 2, 1, 4]),
            ("pseudo_2019", vec![1, 1, 2, 3, 3, 1, 1, 4]),
            ("pseudo", vec![9; 8]),       // no year: ignored
            ("pseudo_20190", vec![9; 8]), // five digits: ignored
        ])
    }

    #[test]
    fn keeps_candidates_where_all_years_agree() {
        let s = AgreementSamples::select(three_years(), params(r#"{"maps": "pseudo"}"#)).unwrap();
        // 3 (2,3,2), 5 (2,1,1) disagree; 6 has no 2020 label.
        assert_eq!(s.indices, [0, 1, 2, 4, 7]);
        assert_eq!(s.labels, [1, 1, 2, 3, 4]);
        let r = report(&s);
        assert_eq!(r["years"], json!([2018, 2019, 2020]));
        assert_eq!(r["agreeing"], 5);
        assert_eq!(r["overall_agreement"], 0.625);
        // class 1 is carried by candidates 0, 1, 5, 6 in some year; 2 agree.
        assert_eq!(r["per_class"]["rows"][0], json!([1, 4, 2, 0, 2, "no"]));
    }

    #[test]
    fn a_majority_is_enough_with_min_agreeing() {
        let s = AgreementSamples::select(three_years(), params(r#"{"maps": "pseudo", "min_agreeing": 2}"#)).unwrap();
        // Now 3 → 2 (2 of 3), 5 → 1 (2 of 3) and 6 → 1 (2 labelled years agree).
        assert_eq!(s.indices, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(s.labels, [1, 1, 2, 2, 3, 1, 1, 4]);
    }

    #[test]
    fn a_tie_between_two_classes_is_no_agreement() {
        let four = input(vec![
            ("rf_2017", vec![1, 1]),
            ("rf_2018", vec![1, 1]),
            ("rf_2019", vec![2, 1]),
            ("rf_2020", vec![2, 2]),
        ]);
        let s = AgreementSamples::select(four, params(r#"{"maps": "rf", "min_agreeing": 2}"#)).unwrap();
        assert_eq!(s.indices, [1]);
        assert_eq!(s.labels, [1]);
    }

    #[test]
    fn allow_list_and_reference_check_drop_candidates() {
        let p = params(r#"{"maps": "pseudo", "classes": [1, 2], "exclude_reference_disagreement": true}"#);
        let s = AgreementSamples::select(three_years(), p).unwrap();
        // Agreeing: 0→1, 1→1, 2→2, 4→3, 7→4; classes 3 and 4 are not allowed and the
        // reference says 2 for candidate 1.
        assert_eq!(s.indices, [0, 2]);
        assert_eq!(s.labels, [1, 2]);
        let r = report(&s);
        assert_eq!(
            r["per_class"]["rows"],
            json!([[1, 4, 2, 1, 1, "no"], [2, 3, 1, 0, 1, "no"]])
        );
    }

    #[test]
    fn year_to_year_table_counts_class_persistence() {
        let s = AgreementSamples::select(three_years(), params(r#"{"maps": "pseudo"}"#)).unwrap();
        let t = &report(&s)["year_to_year_agreement"];
        assert_eq!(t["columns"], json!(["class", "2018-2019", "2019-2020"]));
        // 2018→2019: class 2 in 2018 = {2, 3, 5}; still 2 in 2019: {2} → 1/3.
        // 2019→2020: class 1 in 2019 = {0, 1, 5, 6}; 6 has no 2020 label; {0, 1, 5} are 1 → 1.
        assert_eq!(t["rows"][0], json!([1, 1.0, 1.0]));
        assert_eq!(t["rows"][1], json!([2, 0.3333, 1.0]));
        // 2019→2020: class 3 in 2019 = {3, 4}; only 4 is still 3 → 0.5.
        assert_eq!(t["rows"][2], json!([3, 1.0, 0.5]));
        // 2018→2019: 6 of 8 the same; 2019→2020: 6 of the 7 labelled in both.
        assert_eq!(t["rows"][4], json!(["all", 0.75, 0.8571]));
    }

    #[test]
    fn quota_caps_each_class_and_the_draw_is_seeded() {
        let n = 600;
        let y: Vec<u32> = (0..n).map(|i| if i < 400 { 1 } else { 2 }).collect();
        let mut y2 = y.clone();
        y2[0] = 2; // one disagreement in class 1
        let make = |seed| {
            let mut i = input(vec![("pseudo_2018", y.clone()), ("pseudo_2019", y2.clone())]);
            i.seed = seed;
            i
        };
        let p = || params(r#"{"maps": "pseudo", "per_class": 150}"#);
        let a = AgreementSamples::select(make(5), p()).unwrap();
        let b = AgreementSamples::select(make(5), p()).unwrap();
        let c = AgreementSamples::select(make(6), p()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.indices, c.indices);
        assert_eq!(a.labels.iter().filter(|&&l| l == 1).count(), 150);
        assert_eq!(a.labels.iter().filter(|&&l| l == 2).count(), 150);
        assert!(!a.indices.contains(&0));
        assert!(a.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(a.indices.iter().zip(&a.labels).all(|(&i, &l)| (l == 1) == (i < 400)));
        assert_eq!(report(&a)["per_class"]["rows"][0][5], "yes");
    }

    #[test]
    fn names_missing_layers_and_bad_params() {
        let one = input(vec![("pseudo_2018", vec![1, 2]), ("reference", vec![1, 2])]);
        let err = AgreementSamples::select(one, params(r#"{"maps": "pseudo"}"#)).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput(
                "maps = 'pseudo' needs at least two layers named 'pseudo_<YYYY>', found 1 (layers: pseudo_2018, reference)"
                    .into()
            )
        );
        let err =
            AgreementSamples::select(three_years(), params(r#"{"maps": "pseudo", "min_agreeing": 4}"#)).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidParams("min_agreeing 4 is outside 2..=3 (the number of 'pseudo_<YYYY>' layers)".into())
        );
        let err = AgreementSamples::select(three_years(), params(r#"{"maps": "pseudo", "classes": []}"#)).unwrap_err();
        assert!(
            matches!(err, StageError::InvalidParams(ref m) if m.contains("classes")),
            "{err:?}"
        );
        let mut short = three_years();
        short.layers[2].1.pop();
        let err = AgreementSamples::select(short, params(r#"{"maps": "pseudo"}"#)).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput("layer 'pseudo_2018' has 7 values for 8 candidates".into())
        );
        assert!(AgreementSamples::parse_params(r#"{"maps": "pseudo", "per_clas": 3}"#).is_err());
    }
}

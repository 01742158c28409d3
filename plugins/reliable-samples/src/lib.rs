//! `reliable-samples`: training samples drawn where an unsupervised clustering and
//! an existing reference map agree (Sedona et al., step 2 of the multi-year training
//! set; after Paris, Bruzzone & Fernández-Prieto 2019).
//!
//! The reference map (e.g. CORINE Land Cover, 100 m, years old) is too coarse and
//! too stale to train on pixel by pixel. Clusters of the spectral-index features
//! group pixels that behave alike; a cluster that is dominated by one reference
//! class is trusted for that class, and inside it only the pixels that carry the
//! dominant class *and* lie close to the cluster's centre in feature space are
//! kept. A stratified random draw with a per-class cap then gives a balanced set.
//!
//! Inputs (from the host): layer `reference` (class codes, 0 = none), the cluster
//! layer named by `clusters` (cluster ids, 0 = none) and the features the clusters
//! were built on. Distances to the centre are measured on features standardised
//! over the candidates (missing values are left out of the sum and the sum is
//! rescaled to all features), so no feature dominates by its units.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::sampling::*;
use sitsflow_sdk::for_each_index;
use sitsflow_sdk::serde_json;
use std::collections::BTreeMap;

use sitsflow_sdk::lanes::D4;

fn default_reference() -> String {
    "reference".into()
}
fn default_purity() -> f64 {
    0.7
}
fn default_quantile() -> f64 {
    0.5
}
fn default_per_class() -> u32 {
    1000
}
fn default_min_cluster() -> u32 {
    20
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Layer holding the cluster ids: the clusterer stage's id, e.g. `"kmeans"`.
    pub clusters: String,
    /// Layer holding the reference classes.
    #[serde(default = "default_reference")]
    pub reference: String,
    /// A cluster is trusted when its dominant reference class holds at least this share
    /// of its labelled pixels (0.5..=1).
    #[serde(default = "default_purity")]
    pub purity: f64,
    /// Within a trusted cluster, keep the pixels of the dominant class whose distance to
    /// the cluster centre is within this quantile of those pixels' distances (0..=1;
    /// 1 keeps them all).
    #[serde(default = "default_quantile")]
    pub centroid_quantile: f64,
    /// At most this many samples per class (stratified random draw).
    #[serde(default = "default_per_class")]
    pub per_class: u32,
    /// Clusters with fewer labelled pixels than this are not trusted.
    #[serde(default = "default_min_cluster")]
    pub min_cluster_pixels: u32,
}

pub struct ReliableSamples;

impl Stage for ReliableSamples {
    const NAME: &'static str = "reliable-samples";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "Reliable training samples: clusters crossed with a reference map, purity threshold, stratified per-class caps.";
    type Params = Params;
}

/// Adds each feature's values over `rows` (all finite) to `sum`, and their squares to
/// `sq` when `SQUARES`, in one pass over the rows. Each feature adds its values in row
/// order, as a row-by-row loop would.
///
/// The sums stay in memory and are loaded, added to from four rows and stored back per
/// group of four features: compiled in the sandbox, a loop that carried them in
/// registers spilled them at every back-edge anyway (the deadline check's slow path is
/// a call), and held few enough of them (eleven features a pass) to need three passes
/// over the rows for 25 features.
fn add_columns<'a, const SQUARES: bool>(rows: impl Iterator<Item = &'a [f32]>, sum: &mut [f64], sq: &mut [f64]) {
    const R: usize = 4;
    let mut rows = rows.fuse();
    loop {
        let mut batch: [&[f32]; R] = [&[]; R];
        let mut m = 0;
        for (slot, row) in batch.iter_mut().zip(&mut rows) {
            *slot = row;
            m += 1;
        }
        if m < R {
            for row in &batch[..m] {
                add_rows::<1, SQUARES>([row], sum, sq);
            }
            return;
        }
        add_rows::<R, SQUARES>(batch, sum, sq);
    }
}

/// [`add_columns`] for `R` rows: per group of four features, the sums loaded once, the
/// rows' values added in row order, the sums stored; then the last one to three
/// features one by one.
#[inline(always)]
fn add_rows<const R: usize, const SQUARES: bool>(rows: [&[f32]; R], sum: &mut [f64], sq: &mut [f64]) {
    let f = sum.len();
    let (sum4, _) = sum.as_chunks_mut::<4>();
    let quads = sum4.len();
    let rows: [&[f32]; R] = rows.map(|r| &r[..f]);
    for q in 0..quads {
        let mut s = D4::load(&sum4[q]);
        let mut s2 = if SQUARES { D4::load(&sq[4 * q..4 * q + 4]) } else { D4::zero() };
        for row in rows {
            let x = D4::widen(&row[4 * q..4 * q + 4]);
            s = s.add(x);
            if SQUARES {
                s2 = s2.add(x.mul(x));
            }
        }
        s.store(&mut sum4[q]);
        if SQUARES {
            s2.store(&mut sq[4 * q..4 * q + 4]);
        }
    }
    for j in 4 * quads..f {
        for row in rows {
            let x = row[j] as f64;
            sum[j] += x;
            if SQUARES {
                sq[j] += x * x;
            }
        }
    }
}

/// Per-feature standard deviation over finite values (1 where a feature is constant or
/// has fewer than two values), the scale distances are measured in. `complete`: whether
/// every value is finite; if not, rows are checked one by one (the same sums, slower).
fn feature_scales(features: &FeatureMatrix, complete: bool) -> Vec<f64> {
    let f = features.names.len();
    let mut sum = vec![0f64; f];
    let mut sq = vec![0f64; f];
    let mut n = vec![0u64; f];
    let rows = features.data.chunks_exact(f.max(1));
    if complete {
        add_columns::<true>(rows, &mut sum, &mut sq);
        n.fill(features.samples as u64);
    } else {
        for row in rows {
            for (((s, q), c), &v) in sum.iter_mut().zip(&mut sq).zip(&mut n).zip(row) {
                if v.is_finite() {
                    let v = v as f64;
                    *s += v;
                    *q += v * v;
                    *c += 1;
                }
            }
        }
    }
    (0..f)
        .map(|k| {
            let n = n[k] as f64;
            let mean = if n > 0.0 { sum[k] / n } else { 0.0 };
            let var = if n > 1.0 { (sq[k] / n - mean * mean).max(0.0) } else { 0.0 };
            if var > 0.0 { var.sqrt() } else { 1.0 }
        })
        .collect()
}

/// Distance of each member to the members' centre on standardised features,
/// `√(Σⱼ ((vⱼ − mⱼ) / σⱼ)²)` with `m` the members' mean: the centre of the standardised
/// values is the standardised mean, so nothing is divided per value. Missing values are
/// left out of the sum, which is then rescaled to all features.
/// `complete`: whether every value of `features` is finite (so no row needs checking).
fn centre_distances(features: &FeatureMatrix, members: &[u32], std: &[f64], complete: bool) -> Vec<f64> {
    let f = features.names.len();
    let mut sum = vec![0f64; f];
    let mut count = vec![0u64; f];
    if complete {
        add_columns::<false>(members.iter().map(|&i| features.row(i as usize)), &mut sum, &mut []);
        count.fill(members.len() as u64);
    } else {
        for &i in members {
            for ((s, c), &v) in sum.iter_mut().zip(&mut count).zip(features.row(i as usize)) {
                if v.is_finite() {
                    *s += v as f64;
                    *c += 1;
                }
            }
        }
    }
    let centre: Vec<f64> = sum.iter().zip(&count).map(|(s, &c)| s / c.max(1) as f64).collect();
    let weight: Vec<f64> = std.iter().map(|s| 1.0 / (s * s)).collect();
    // The number of quads known at compile time up to 35 features.
    let (m, c, w) = (members, &centre[..], &weight[..]);
    match f / 4 {
        1 => member_distances::<1>(features, m, c, w, complete),
        2 => member_distances::<2>(features, m, c, w, complete),
        3 => member_distances::<3>(features, m, c, w, complete),
        4 => member_distances::<4>(features, m, c, w, complete),
        5 => member_distances::<5>(features, m, c, w, complete),
        6 => member_distances::<6>(features, m, c, w, complete),
        7 => member_distances::<7>(features, m, c, w, complete),
        8 => member_distances::<8>(features, m, c, w, complete),
        _ => member_distances::<0>(features, m, c, w, complete),
    }
}

/// The distances of `members` to `centre` with weights `weight` (see [`centre_distances`]);
/// `QUADS` as in [`distance`].
fn member_distances<const QUADS: usize>(
    features: &FeatureMatrix,
    members: &[u32],
    centre: &[f64],
    weight: &[f64],
    complete: bool,
) -> Vec<f64> {
    let f = features.names.len();
    members
        .iter()
        .map(|&i| {
            let row = features.row(i as usize);
            if complete || all_finite(row) {
                distance::<QUADS>(row, centre, weight)
            } else {
                let (mut d, mut used) = (0f64, 0usize);
                for (j, &v) in row.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                    d += weighted_square(v, centre[j], weight[j]);
                    used += 1;
                }
                if used == 0 { f64::INFINITY } else { (d * f as f64 / used as f64).sqrt() }
            }
        })
        .collect()
}

/// One term `w (v − m)²` of a distance, as the lanes of [`distance`] compute it.
#[inline(always)]
fn weighted_square(v: f32, m: f64, w: f64) -> f64 {
    (v as f64 - m).powi(2) * w
}

/// `√(Σⱼ wⱼ (vⱼ − mⱼ)²)` of a row without missing values, feature `j` added into
/// partial sum `j % 4`. `QUADS`: `row.len() / 4`, or 0 for "count them at run time".
/// Known at compile time, the quads are unrolled: in the sandbox every loop round
/// checks the deadline.
#[inline(always)]
fn distance<const QUADS: usize>(row: &[f32], centre: &[f64], weight: &[f64]) -> f64 {
    let f = row.len();
    let quads = if QUADS > 0 { QUADS } else { f / 4 };
    debug_assert!(quads == f / 4 && centre.len() == f && weight.len() == f);
    let mut acc = D4::zero();
    for q in 0..quads {
        let j = 4 * q;
        let d = D4::widen(&row[j..j + 4]).sub(D4::load(&centre[j..j + 4]));
        acc = acc.add(d.mul(d).mul(D4::load(&weight[j..j + 4])));
    }
    let mut acc = acc.to_array();
    // The last (at most three) features, in partial sums 0, 1, 2.
    let tail = 4 * quads;
    for (k, a) in acc.iter_mut().take(f - tail).enumerate() {
        *a += weighted_square(row[tail + k], centre[tail + k], weight[tail + k]);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])).sqrt()
}

impl SamplerStage for ReliableSamples {
    fn needs(_: &Params) -> SampleNeeds {
        SampleNeeds { features: true, positions: false }
    }

    fn select(input: SampleInput, params: Params) -> Result<Selection, StageError> {
        input.features.check()?;
        if !(0.5..=1.0).contains(&params.purity) {
            return Err(StageError::InvalidParams(format!("purity {} is outside 0.5..=1", params.purity)));
        }
        if !(0.0..=1.0).contains(&params.centroid_quantile) || params.centroid_quantile == 0.0 {
            return Err(StageError::InvalidParams(format!(
                "centroid_quantile {} is outside 0 < q ≤ 1",
                params.centroid_quantile
            )));
        }
        let reference = layer(&input, &params.reference)?;
        let clusters = layer(&input, &params.clusters)?;

        // 1. Cross clusters with reference classes (codes renumbered densely, so the
        //    per-pixel tally is an array increment).
        let cl = DenseCodes::new(clusters);
        let rf = DenseCodes::new(reference);
        let nr = rf.codes.len();
        let mut table = vec![0u64; cl.codes.len() * nr]; // cluster × class, labelled pixels
        // Eight pixels per loop round here and below (each back-edge checks the deadline
        // in the sandbox).
        let (cls, rfs) = (&cl.index[..], &rf.index[..cl.index.len()]);
        for_each_index::<8>(cls.len(), |i| {
            let (c, r) = (cls[i], rfs[i]);
            if c != NO_CODE && r != NO_CODE {
                table[c as usize * nr + r as usize] += 1;
            }
        });
        // Clusters with labelled pixels, by code: (dense index, total, dominant class
        // index, purity). Ties go to the lower class code.
        let stats: Vec<(usize, u64, usize, f64)> = (0..cl.codes.len())
            .filter_map(|c| {
                let row = &table[c * nr..(c + 1) * nr];
                let total: u64 = row.iter().sum();
                let dominant = (0..nr).fold(0, |best, r| if row[r] > row[best] { r } else { best });
                (total > 0).then(|| (c, total, dominant, row[dominant] as f64 / total as f64))
            })
            .collect();
        let mut trusted = vec![false; cl.codes.len()];
        let mut dominant = vec![usize::MAX; cl.codes.len()];
        for &(c, total, d, purity) in &stats {
            trusted[c] = total >= params.min_cluster_pixels as u64 && purity >= params.purity;
            dominant[c] = d;
        }

        // 2. In trusted clusters, the pixels of the dominant class, nearest the centre.
        let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new(); // cluster code → pixels
        {
            let mut by_cluster: Vec<Vec<u32>> = vec![Vec::new(); cl.codes.len()];
            for_each_index::<8>(cls.len(), |i| {
                let (c, r) = (cls[i], rfs[i]);
                if c != NO_CODE && trusted[c as usize] && dominant[c as usize] == r as usize {
                    by_cluster[c as usize].push(i as u32);
                }
            });
            for (c, list) in by_cluster.into_iter().enumerate() {
                if !list.is_empty() {
                    members.insert(cl.codes[c], list);
                }
            }
        }
        let cluster_index = |code: u32| cl.codes.binary_search(&code).expect("a cluster code of this layer");
        let dominant_code = |code: u32| rf.codes[dominant[cluster_index(code)]];
        let complete = all_finite(&input.features.data);
        let std = feature_scales(&input.features, complete);
        let mut near: BTreeMap<u32, Vec<u32>> = BTreeMap::new(); // class → candidates
        let mut kept_per_cluster: BTreeMap<u32, usize> = BTreeMap::new();
        for (&c, list) in &members {
            let keep: Vec<u32> = if input.features.names.is_empty() || params.centroid_quantile >= 1.0 {
                list.clone()
            } else {
                let d = centre_distances(&input.features, list, &std, complete);
                let mut finite: Vec<f64> = d.iter().copied().filter(|v| v.is_finite()).collect();
                if finite.is_empty() {
                    Vec::new()
                } else {
                    // The quantile's order statistic, found without sorting them all.
                    let rank = ((finite.len() as f64 * params.centroid_quantile).ceil() as usize).clamp(1, finite.len()) - 1;
                    let cut = *finite.select_nth_unstable_by(rank, f64::total_cmp).1;
                    list.iter().zip(&d).filter(|(_, dist)| **dist <= cut).map(|(i, _)| *i).collect()
                }
            };
            kept_per_cluster.insert(c, keep.len());
            near.entry(dominant_code(c)).or_default().extend(keep);
        }

        // 3. Stratified draw with a per-class cap.
        let mut rng = SplitMix(input.seed);
        let mut chosen: Vec<(u32, u16)> = Vec::new();
        let mut per_class_rows = Vec::new();
        let eligible: BTreeMap<u32, u64> = members.iter().fold(BTreeMap::new(), |mut acc, (&c, l)| {
            *acc.entry(dominant_code(c)).or_default() += l.len() as u64;
            acc
        });
        let class_pixels = rf.counts();
        let all_classes = &rf.codes;
        for (class_index, &class) in all_classes.iter().enumerate() {
            let code = u16::try_from(class)
                .map_err(|_| StageError::InvalidInput(format!("reference class {class} does not fit 16 bits")))?;
            let mut pool = near.remove(&class).unwrap_or_default();
            let near_count = pool.len();
            let drawn = draw(&mut pool, params.per_class as usize, &mut rng);
            per_class_rows.push(serde_json::json!([
                class,
                class_pixels[class_index],
                eligible.get(&class).copied().unwrap_or(0),
                near_count,
                drawn.len()
            ]));
            chosen.extend(drawn.into_iter().map(|i| (i, code)));
        }
        chosen.sort_unstable();

        let classes: &[u32] = all_classes;
        let mut columns = vec![serde_json::json!("cluster"), serde_json::json!("labelled px")];
        columns.extend(classes.iter().map(|c| serde_json::json!(format!("class {c}"))));
        columns.extend(["dominant", "purity", "trusted", "kept"].map(serde_json::Value::from));
        let rows: Vec<serde_json::Value> = stats
            .iter()
            .map(|&(c, total, d, purity)| {
                let code = cl.codes[c];
                let mut row = vec![serde_json::json!(code), serde_json::json!(total)];
                row.extend(table[c * nr..(c + 1) * nr].iter().map(|&n| serde_json::json!(n)));
                row.push(serde_json::json!(rf.codes[d]));
                row.push(serde_json::json!((purity * 1e4).round() / 1e4));
                row.push(serde_json::json!(if trusted[c] { "yes" } else { "no" }));
                row.push(serde_json::json!(kept_per_cluster.get(&code).copied().unwrap_or(0)));
                serde_json::json!(row)
            })
            .collect();
        let missing: Vec<u32> = per_class_rows
            .iter()
            .filter(|r| r[4].as_u64() == Some(0))
            .filter_map(|r| r[0].as_u64().map(|c| c as u32))
            .collect();
        if !missing.is_empty() {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!("no reliable samples for classes {missing:?}: no trusted cluster is dominated by them"),
            );
        }
        let report = serde_json::json!({
            "purity_threshold": params.purity,
            "centroid_quantile": params.centroid_quantile,
            "per_class_cap": params.per_class,
            "clusters": stats.len(),
            "trusted_clusters": stats.iter().filter(|s| trusted[s.0]).count(),
            "selected": chosen.len(),
            "classes_without_samples": missing,
            "purity_table": { "columns": columns, "rows": rows },
            "per_class": {
                "columns": ["class", "candidates", "in trusted clusters", "near centre", "selected"],
                "rows": per_class_rows,
            },
        });
        Ok(Selection {
            indices: chosen.iter().map(|c| c.0).collect(),
            labels: chosen.iter().map(|c| c.1).collect(),
            report: report.to_string(),
        })
    }
}

sitsflow_sdk::export_sampler_stage!(ReliableSamples);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(features: Vec<f32>, reference: Vec<u32>, clusters: Vec<u32>) -> SampleInput {
        let samples = reference.len();
        SampleInput {
            features: FeatureMatrix { samples, names: vec!["ndvi".into()], data: features },
            layers: vec![("reference".into(), reference), ("kmeans".into(), clusters)],
            probabilities: None,
            positions: Vec::new(),
            seed: 7,
        }
    }

    fn params(json: &str) -> Params {
        ReliableSamples::parse_params(json).unwrap()
    }

    #[test]
    fn keeps_pure_clusters_dominant_class_near_the_centre() {
        // Cluster 1: 8 of class 5 (purity 0.8) + 2 of class 6; cluster 2: 50/50 → untrusted.
        let reference = vec![5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 5, 6, 5, 6];
        let clusters = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2];
        // Class-5 pixels of cluster 1 at 0.50..0.57 except one outlier at 0.9.
        let features = vec![0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.9, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3];
        let p = params(r#"{"clusters": "kmeans", "purity": 0.8, "centroid_quantile": 0.75, "min_cluster_pixels": 2}"#);
        let s = ReliableSamples::select(input(features, reference, clusters), p).unwrap();
        assert!(s.labels.iter().all(|&l| l == 5), "{:?}", s.labels);
        // 8 members, quantile 0.75 → 6 kept; the outlier (index 7) is not among them.
        assert_eq!(s.indices.len(), 6, "{:?}", s.indices);
        assert!(!s.indices.contains(&7));
        let report: serde_json::Value = serde_json::from_str(&s.report).unwrap();
        assert_eq!(report["trusted_clusters"], 1);
        assert_eq!(report["classes_without_samples"], serde_json::json!([6]));
    }

    #[test]
    fn caps_each_class_and_is_deterministic() {
        let n = 400;
        let reference: Vec<u32> = (0..n).map(|i| if i < 300 { 1 } else { 2 }).collect();
        let clusters: Vec<u32> = (0..n).map(|i| if i < 300 { 1 } else { 2 }).collect();
        let features: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
        let p = || params(r#"{"clusters": "kmeans", "per_class": 50, "centroid_quantile": 1.0}"#);
        let a = ReliableSamples::select(input(features.clone(), reference.clone(), clusters.clone()), p()).unwrap();
        let b = ReliableSamples::select(input(features, reference, clusters), p()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.labels.iter().filter(|&&l| l == 1).count(), 50);
        assert_eq!(a.labels.iter().filter(|&&l| l == 2).count(), 50);
        assert!(a.indices.windows(2).all(|w| w[0] < w[1]));
    }

    /// Pseudo-random values in −2..2, some of them large.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix(seed);
        (0..n).map(|i| (rng.next_u64() >> 40) as f32 / (1u64 << 22) as f32 - 2.0 + if i % 7 == 0 { 1e4 } else { 0.0 }).collect()
    }

    #[test]
    fn lane_sums_and_distances_match_scalar_loops_bit_for_bit() {
        for f in [1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 15, 16, 17, 25, 27, 36, 41] {
            let samples = 37;
            let features = FeatureMatrix { samples, names: (0..f).map(|j| format!("f{j}")).collect(), data: values(samples * f, f as u64) };
            // Sums and squares feature by feature in row order.
            let (mut sum, mut sq) = (vec![0f64; f], vec![0f64; f]);
            add_columns::<true>(features.data.chunks_exact(f), &mut sum, &mut sq);
            for j in 0..f {
                let (mut s, mut q) = (0f64, 0f64);
                for i in 0..samples {
                    let x = features.row(i)[j] as f64;
                    s += x;
                    q += x * x;
                }
                assert_eq!((sum[j].to_bits(), sq[j].to_bits()), (s.to_bits(), q.to_bits()), "feature {j} of {f}");
            }
            // Distances: feature j added into partial sum j % 4.
            let members: Vec<u32> = (0..samples as u32).filter(|i| i % 3 != 1).collect();
            let std: Vec<f64> = (0..f).map(|j| 0.5 + j as f64).collect();
            let d = centre_distances(&features, &members, &std, true);
            let mut centre = vec![0f64; f];
            for &i in &members {
                for j in 0..f {
                    centre[j] += features.row(i as usize)[j] as f64;
                }
            }
            centre.iter_mut().for_each(|c| *c /= members.len() as f64);
            for (k, &i) in members.iter().enumerate() {
                let mut acc = [0f64; 4];
                for j in 0..f {
                    acc[j % 4] += (features.row(i as usize)[j] as f64 - centre[j]).powi(2) * (1.0 / (std[j] * std[j]));
                }
                let expect = ((acc[0] + acc[1]) + (acc[2] + acc[3])).sqrt();
                assert_eq!(d[k].to_bits(), expect.to_bits(), "member {i} of {f} features");
            }
        }
    }

    #[test]
    fn names_a_missing_layer_and_bad_params() {
        let mut i = input(vec![0.0; 3], vec![1, 1, 1], vec![1, 1, 1]);
        i.layers.truncate(1);
        let err = ReliableSamples::select(i, params(r#"{"clusters": "kmeans"}"#)).unwrap_err();
        assert_eq!(err, StageError::InvalidInput("no layer 'kmeans' (layers: reference)".into()));
        let err = ReliableSamples::select(input(vec![0.0; 3], vec![1; 3], vec![1; 3]), params(r#"{"clusters": "kmeans", "purity": 0.2}"#))
            .unwrap_err();
        assert!(matches!(err, StageError::InvalidParams(_)), "{err:?}");
    }
}

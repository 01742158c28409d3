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
use sitsflow_sdk::serde_json;
use std::collections::BTreeMap;

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

/// Per-feature mean and standard deviation over finite values.
fn standardisation(features: &FeatureMatrix) -> (Vec<f64>, Vec<f64>) {
    let f = features.names.len();
    let mut sum = vec![0f64; f];
    let mut sq = vec![0f64; f];
    let mut n = vec![0u64; f];
    for i in 0..features.samples {
        for (k, &v) in features.row(i).iter().enumerate() {
            if v.is_finite() {
                sum[k] += v as f64;
                sq[k] += (v as f64) * (v as f64);
                n[k] += 1;
            }
        }
    }
    let mean: Vec<f64> = (0..f).map(|k| if n[k] > 0 { sum[k] / n[k] as f64 } else { 0.0 }).collect();
    let std: Vec<f64> = (0..f)
        .map(|k| {
            let var = if n[k] > 1 { (sq[k] / n[k] as f64 - mean[k] * mean[k]).max(0.0) } else { 0.0 };
            if var > 0.0 { var.sqrt() } else { 1.0 }
        })
        .collect();
    (mean, std)
}

/// Distance of each member to the members' centre, on standardised features.
fn centre_distances(features: &FeatureMatrix, members: &[u32], mean: &[f64], std: &[f64]) -> Vec<f64> {
    let f = features.names.len();
    let z = |i: u32, k: usize| (features.row(i as usize)[k] as f64 - mean[k]) / std[k];
    let mut centre = vec![0f64; f];
    let mut count = vec![0u64; f];
    for &i in members {
        for k in 0..f {
            let v = z(i, k);
            if v.is_finite() {
                centre[k] += v;
                count[k] += 1;
            }
        }
    }
    for k in 0..f {
        centre[k] /= count[k].max(1) as f64;
    }
    members
        .iter()
        .map(|&i| {
            let (mut d, mut used) = (0f64, 0usize);
            for k in 0..f {
                let v = z(i, k);
                if v.is_finite() {
                    d += (v - centre[k]).powi(2);
                    used += 1;
                }
            }
            if used == 0 { f64::INFINITY } else { (d * f as f64 / used as f64).sqrt() }
        })
        .collect()
}

struct ClusterStats {
    /// Labelled pixels per reference class.
    classes: BTreeMap<u32, u64>,
    total: u64,
}

impl SamplerStage for ReliableSamples {
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

        // 1. Cross clusters with reference classes.
        let mut stats: BTreeMap<u32, ClusterStats> = BTreeMap::new();
        for (&c, &r) in clusters.iter().zip(reference) {
            if c == 0 || r == 0 {
                continue;
            }
            let s = stats.entry(c).or_insert_with(|| ClusterStats { classes: BTreeMap::new(), total: 0 });
            *s.classes.entry(r).or_default() += 1;
            s.total += 1;
        }
        let dominant: BTreeMap<u32, (u32, f64)> = stats
            .iter()
            .map(|(&c, s)| {
                // Ties go to the lower code, so the result does not depend on map order.
                let (&class, &n) = s.classes.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).expect("non-empty");
                (c, (class, n as f64 / s.total as f64))
            })
            .collect();
        let trusted = |c: u32| {
            stats.get(&c).is_some_and(|s| s.total >= params.min_cluster_pixels as u64)
                && dominant.get(&c).is_some_and(|d| d.1 >= params.purity)
        };

        // 2. In trusted clusters, the pixels of the dominant class, nearest the centre.
        let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (i, (&c, &r)) in clusters.iter().zip(reference).enumerate() {
            if c != 0 && trusted(c) && dominant[&c].0 == r {
                members.entry(c).or_default().push(i as u32);
            }
        }
        let (mean, std) = standardisation(&input.features);
        let mut near: BTreeMap<u32, Vec<u32>> = BTreeMap::new(); // class → candidates
        let mut kept_per_cluster: BTreeMap<u32, usize> = BTreeMap::new();
        for (&c, list) in &members {
            let keep: Vec<u32> = if input.features.names.is_empty() || params.centroid_quantile >= 1.0 {
                list.clone()
            } else {
                let d = centre_distances(&input.features, list, &mean, &std);
                let mut sorted: Vec<f64> = d.iter().copied().filter(|v| v.is_finite()).collect();
                sorted.sort_by(f64::total_cmp);
                if sorted.is_empty() {
                    Vec::new()
                } else {
                    let cut = sorted[((sorted.len() as f64 * params.centroid_quantile).ceil() as usize).clamp(1, sorted.len()) - 1];
                    list.iter().zip(&d).filter(|(_, dist)| **dist <= cut).map(|(i, _)| *i).collect()
                }
            };
            kept_per_cluster.insert(c, keep.len());
            near.entry(dominant[&c].0).or_default().extend(keep);
        }

        // 3. Stratified draw with a per-class cap.
        let mut rng = SplitMix(input.seed);
        let mut chosen: Vec<(u32, u16)> = Vec::new();
        let mut per_class_rows = Vec::new();
        let eligible: BTreeMap<u32, u64> = members.iter().fold(BTreeMap::new(), |mut acc, (c, l)| {
            *acc.entry(dominant[c].0).or_default() += l.len() as u64;
            acc
        });
        let all_classes: std::collections::BTreeSet<u32> = reference.iter().copied().filter(|&r| r != 0).collect();
        for &class in &all_classes {
            let code = u16::try_from(class)
                .map_err(|_| StageError::InvalidInput(format!("reference class {class} does not fit 16 bits")))?;
            let mut pool = near.remove(&class).unwrap_or_default();
            let near_count = pool.len();
            let drawn = draw(&mut pool, params.per_class as usize, &mut rng);
            per_class_rows.push(serde_json::json!([
                class,
                reference.iter().filter(|&&r| r == class).count(),
                eligible.get(&class).copied().unwrap_or(0),
                near_count,
                drawn.len()
            ]));
            chosen.extend(drawn.into_iter().map(|i| (i, code)));
        }
        chosen.sort_unstable();

        let classes: Vec<u32> = all_classes.iter().copied().collect();
        let mut columns = vec![serde_json::json!("cluster"), serde_json::json!("labelled px")];
        columns.extend(classes.iter().map(|c| serde_json::json!(format!("class {c}"))));
        columns.extend(["dominant", "purity", "trusted", "kept"].map(serde_json::Value::from));
        let rows: Vec<serde_json::Value> = stats
            .iter()
            .map(|(&c, s)| {
                let mut row = vec![serde_json::json!(c), serde_json::json!(s.total)];
                row.extend(classes.iter().map(|k| serde_json::json!(s.classes.get(k).copied().unwrap_or(0))));
                row.push(serde_json::json!(dominant[&c].0));
                row.push(serde_json::json!((dominant[&c].1 * 1e4).round() / 1e4));
                row.push(serde_json::json!(if trusted(c) { "yes" } else { "no" }));
                row.push(serde_json::json!(kept_per_cluster.get(&c).copied().unwrap_or(0)));
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
            "trusted_clusters": stats.keys().filter(|&&c| trusted(c)).count(),
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

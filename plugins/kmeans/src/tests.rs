use super::*;
use crate::rng::Rng;

fn params(json: &str) -> Params {
    KMeans::parse_params(json).unwrap()
}

fn gaussian(rng: &mut Rng) -> f64 {
    // Box–Muller; 1 − u keeps the logarithm finite.
    let (u, v) = (1.0 - rng.uniform(), rng.uniform());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `per` samples around each centre with standard deviation `sd`, interleaved so the
/// blobs are not in runs; returns the matrix and each sample's true blob.
fn blobs(centres: &[&[f64]], per: usize, sd: f64, seed: u64) -> (FeatureMatrix, Vec<usize>) {
    let d = centres[0].len();
    let mut rng = Rng::new(seed);
    let mut data = Vec::new();
    let mut truth = Vec::new();
    for _ in 0..per {
        for (b, c) in centres.iter().enumerate() {
            data.extend(c.iter().map(|v| (v + sd * gaussian(&mut rng)) as f32));
            truth.push(b);
        }
    }
    let names = (0..d).map(|j| format!("f{j}")).collect();
    (FeatureMatrix { samples: truth.len(), names, data }, truth)
}

fn report(f: &Fitted) -> serde_json::Value {
    serde_json::from_str(&f.report).unwrap()
}

fn four_blobs() -> (FeatureMatrix, Vec<usize>) {
    blobs(&[&[0.0, 0.0, 0.0], &[10.0, 0.0, 5.0], &[0.0, 10.0, -5.0], &[10.0, 10.0, 10.0]], 250, 1.0, 1)
}

/// Same partition up to the clusters' numbering.
fn same_partition(clusters: &[u32], truth: &[usize]) -> bool {
    let mut map = std::collections::HashMap::new();
    let mut back = std::collections::HashMap::new();
    clusters.iter().zip(truth).all(|(&c, &t)| *map.entry(c).or_insert(t) == t && *back.entry(t).or_insert(c) == c)
}

#[test]
fn separable_blobs_are_recovered_by_every_init_and_algorithm() {
    let (x, truth) = four_blobs();
    for p in [
        r#"{"k": 4}"#,
        r#"{"k": 4, "algorithm": "elkan"}"#,
        r#"{"k": 4, "init": "random"}"#,
        r#"{"k": 4, "init": "random", "algorithm": "elkan", "standardize": true}"#,
    ] {
        let fitted = KMeans::fit(x.clone(), params(p)).unwrap();
        let r = report(&fitted);
        assert_eq!(r["converged"], true, "{p}");
        assert_eq!(r["cluster_sizes"], serde_json::json!([250, 250, 250, 250]), "{p}");
        let a = KMeans::assign(fitted.model, x.clone(), params("{}")).unwrap();
        assert!(same_partition(&a.clusters, &truth), "{p}");
        // Inertia ≈ n·d·σ² = 1000 · 3 · 1 when the blobs are found (unstandardised).
        if !p.contains("standardize") {
            let inertia = r["inertia"].as_f64().unwrap();
            assert!((2700.0..3300.0).contains(&inertia), "{p}: inertia {inertia}");
        }
    }
}

#[test]
fn centres_are_the_blob_means() {
    let (x, _) = four_blobs();
    let fitted = KMeans::fit(x, params(r#"{"k": 4}"#)).unwrap();
    let model = Model::from_blob(&fitted.model).unwrap();
    for want in [[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 10.0, -5.0], [10.0, 10.0, 10.0]] {
        let near = model.centres.iter().any(|c| c.iter().zip(&want).all(|(a, b)| (a - b).abs() < 0.25));
        assert!(near, "no centre near {want:?}: {:?}", model.centres);
    }
}

#[test]
fn same_seed_same_model_other_seed_other_draws() {
    // Overlapping blobs, so the start matters.
    let (x, _) = blobs(&[&[0.0, 0.0], &[2.0, 0.0], &[0.0, 2.0], &[2.0, 2.0], &[1.0, 1.0]], 200, 1.0, 2);
    let p = r#"{"k": 5, "n_init": 3, "seed": 11}"#;
    let a = KMeans::fit(x.clone(), params(p)).unwrap();
    let b = KMeans::fit(x.clone(), params(p)).unwrap();
    assert_eq!(a, b);
    let c = KMeans::fit(x, params(r#"{"k": 5, "n_init": 3, "seed": 12}"#)).unwrap();
    assert_ne!(report(&a)["init_inertias"], report(&c)["init_inertias"]);
}

#[test]
fn lloyd_and_elkan_agree_from_the_same_start() {
    let (x, _) = blobs(&[&[0.0, 0.0, 1.0], &[3.0, 0.0, 0.0], &[0.0, 3.0, 0.0], &[3.0, 3.0, 3.0]], 300, 1.2, 3);
    for seed in 0..4 {
        let lloyd = report(&KMeans::fit(x.clone(), params(&format!(r#"{{"k": 4, "seed": {seed}, "tol": 0}}"#))).unwrap());
        let elkan = report(
            &KMeans::fit(x.clone(), params(&format!(r#"{{"k": 4, "seed": {seed}, "tol": 0, "algorithm": "elkan"}}"#)))
                .unwrap(),
        );
        let (a, b) = (lloyd["inertia"].as_f64().unwrap(), elkan["inertia"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * a, "seed {seed}: lloyd {a} vs elkan {b}");
        assert_eq!(lloyd["cluster_sizes"], elkan["cluster_sizes"], "seed {seed}");
    }
}

#[test]
fn rows_with_nan_are_skipped_by_fit_and_unassigned() {
    let (mut x, _) = four_blobs();
    for i in [0, 17, 999] {
        x.data[i * 3 + 1] = f32::NAN;
    }
    let fitted = KMeans::fit(x.clone(), params(r#"{"k": 4}"#)).unwrap();
    let r = report(&fitted);
    assert_eq!(r["skipped_rows"], 3);
    assert_eq!(r["samples_used"], 997);
    let a = KMeans::assign(fitted.model, x, params("{}")).unwrap();
    for i in [0, 17, 999] {
        assert_eq!(a.clusters[i], u32::MAX);
        assert!(a.distances[i].is_nan());
    }
    assert_eq!(a.clusters.iter().filter(|&&c| c == u32::MAX).count(), 3);
    assert!(a.distances.iter().filter(|d| !d.is_nan()).all(|d| d.is_finite()));
}

#[test]
fn assign_of_the_fit_sample_reproduces_the_inertia() {
    let (x, _) = blobs(&[&[100.0, 200.0], &[104.0, 201.0], &[101.0, 205.0]], 500, 1.5, 4);
    for p in [r#"{"k": 3}"#, r#"{"k": 3, "standardize": true}"#, r#"{"k": 3, "algorithm": "elkan"}"#] {
        let fitted = KMeans::fit(x.clone(), params(p)).unwrap();
        let inertia = report(&fitted)["inertia"].as_f64().unwrap();
        let a = KMeans::assign(fitted.model, x.clone(), params(p)).unwrap();
        let sum: f64 = a.distances.iter().map(|&d| d as f64 * d as f64).sum();
        assert!((sum - inertia).abs() <= 1e-5 * inertia, "{p}: assign {sum} vs fit {inertia}");
    }
}

#[test]
fn model_round_trips_and_is_checked() {
    let (x, _) = four_blobs();
    let fitted = KMeans::fit(x.clone(), params(r#"{"k": 4, "standardize": true}"#)).unwrap();
    assert_eq!(fitted.model.format, "sitsflow-kmeans/1");
    let model = Model::from_blob(&fitted.model).unwrap();
    assert_eq!(model.k, 4);
    assert_eq!(model.features, ["f0", "f1", "f2"]);
    assert!(model.standardize);
    assert_eq!(Model::from_blob(&model.to_blob()).unwrap(), model);

    let mut renamed = x.clone();
    renamed.names[1] = "NDVI".into();
    let e = KMeans::assign(fitted.model.clone(), renamed, params("{}")).unwrap_err();
    assert!(matches!(&e, StageError::InvalidInput(m) if m.contains("feature 1 is 'NDVI' where the model has 'f1'")), "{e}");

    let fewer = FeatureMatrix { samples: 1, names: vec!["f0".into(), "f1".into()], data: vec![0.0, 0.0] };
    let e = KMeans::assign(fitted.model.clone(), fewer, params("{}")).unwrap_err();
    assert!(e.to_string().contains("the samples have 2 features, the model 3"), "{e}");

    let other = ModelBlob { format: "sitsflow-rf/1".into(), data: fitted.model.data.clone() };
    let e = KMeans::assign(other, x.clone(), params("{}")).unwrap_err();
    assert!(e.to_string().contains("model format 'sitsflow-rf/1'"), "{e}");

    let mut broken = model.clone();
    broken.centres.pop();
    let e = KMeans::assign(broken.to_blob(), x, params("{}")).unwrap_err();
    assert!(e.to_string().contains("k = 4 but it holds 3 centres"), "{e}");
}

#[test]
fn standardize_lets_a_small_scale_feature_count() {
    // Feature 0 holds two tight groups (0 or 1); feature 1 is uniform noise × 100.
    let mut rng = Rng::new(5);
    let mut data = Vec::new();
    let mut truth = Vec::new();
    for i in 0..600 {
        let g = i % 2;
        data.push((g as f64 + 0.05 * gaussian(&mut rng)) as f32);
        data.push((100.0 * rng.uniform()) as f32);
        truth.push(g);
    }
    let x = FeatureMatrix { samples: 600, names: vec!["a".into(), "b".into()], data };
    let by = |p: &str| {
        let f = KMeans::fit(x.clone(), params(p)).unwrap();
        KMeans::assign(f.model, x.clone(), params("{}")).unwrap().clusters
    };
    assert!(same_partition(&by(r#"{"k": 2, "standardize": true, "n_init": 3}"#), &truth));
    assert!(!same_partition(&by(r#"{"k": 2, "n_init": 3}"#), &truth));
}

#[test]
fn a_huge_tol_stops_after_one_iteration() {
    let (x, _) = four_blobs();
    let r = report(&KMeans::fit(x.clone(), params(r#"{"k": 4, "tol": 1e6, "init": "random", "n_init": 1}"#)).unwrap());
    assert_eq!(r["iterations"], 1);
    assert_eq!(r["converged"], true);
    let r = report(&KMeans::fit(x, params(r#"{"k": 4, "max_iter": 1, "tol": 0, "init": "random", "n_init": 1, "seed": 3}"#)).unwrap());
    assert_eq!(r["iterations"], 1);
}

#[test]
fn bad_params_and_input_are_named() {
    let (x, _) = four_blobs();
    let err = |p: &str, x: FeatureMatrix| KMeans::fit(x, KMeans::parse_params(p).unwrap()).unwrap_err().to_string();
    assert!(err(r#"{"k": 0}"#, x.clone()).contains("k must be at least 1"));
    assert!(err(r#"{"n_init": 0}"#, x.clone()).contains("n_init must be at least 1"));
    assert!(err(r#"{"max_iter": 0}"#, x.clone()).contains("max_iter must be at least 1"));
    assert!(err(r#"{"tol": -1}"#, x.clone()).contains("tol must be a finite number"));
    assert!(err(r#"{"k": 1001}"#, x.clone()).contains("1000 samples without a missing value (0 skipped), fewer than k = 1001"));
    assert!(KMeans::parse_params(r#"{"clusters": 3}"#).unwrap_err().to_string().contains("unknown field `clusters`"));
    assert!(KMeans::parse_params(r#"{"algorithm": "hamerly"}"#).is_err());
    let mut inf = x.clone();
    inf.data[5 * 3 + 2] = f32::INFINITY;
    assert!(err(r#"{"k": 4}"#, inf).contains("feature 'f2' of sample 5 is inf"));
    let ragged = FeatureMatrix { samples: 3, names: x.names.clone(), data: vec![0.0; 8] };
    assert!(err(r#"{"k": 1}"#, ragged).contains("feature matrix has 8 values"));
    let none = FeatureMatrix { samples: 0, names: vec![], data: vec![] };
    assert!(err(r#"{"k": 1}"#, none).contains("no features"));
}

#[test]
fn k_equal_to_n_gives_zero_inertia() {
    let x = FeatureMatrix { samples: 5, names: vec!["v".into()], data: vec![1.0, 2.0, 4.0, 8.0, 16.0] };
    for init in ["k-means++", "random"] {
        let r = report(&KMeans::fit(x.clone(), params(&format!(r#"{{"k": 5, "init": "{init}"}}"#))).unwrap());
        assert_eq!(r["inertia"], 0.0, "{init}");
        assert_eq!(r["cluster_sizes"], serde_json::json!([1, 1, 1, 1, 1]), "{init}");
    }
}

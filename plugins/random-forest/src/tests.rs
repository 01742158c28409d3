use super::*;
use sitsflow_sdk::serde_json::Value;

/// A small deterministic generator for test data (not the forest's).
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn matrix(names: &[&str], rows: &[Vec<f32>]) -> FeatureMatrix {
    FeatureMatrix { samples: rows.len(), names: names.iter().map(|s| s.to_string()).collect(), data: rows.concat() }
}

fn params(json: &str) -> Params {
    RandomForest::parse_params(json).unwrap()
}

/// Three classes (codes 3, 7, 9) as blobs in features `a` and `b`, plus two noise
/// features; every tenth sample is unlabelled.
fn blobs(n: usize, seed: u64) -> (FeatureMatrix, Vec<u16>) {
    let mut r = Lcg(seed);
    let centres = [(0.0, 0.0), (3.0, 0.0), (0.0, 3.0)];
    let codes = [3u16, 7, 9];
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 3;
        rows.push(vec![centres[c].0 + r.uniform() - 0.5, centres[c].1 + r.uniform() - 0.5, r.uniform(), r.uniform() * 10.0]);
        labels.push(if i % 10 == 9 { 0 } else { codes[c] });
    }
    (matrix(&["a", "b", "noise1", "noise2"], &rows), labels)
}

fn argmax_codes(p: &Probabilities) -> Vec<u16> {
    let k = p.classes.len();
    p.data.chunks_exact(k).map(|row| p.classes[(0..k).fold(0, |best, c| if row[c] > row[best] { c } else { best })]).collect()
}

fn report(t: &Trained) -> Value {
    sitsflow_sdk::serde_json::from_str(&t.report).unwrap()
}

#[test]
fn learns_separable_blobs_and_reports_what_it_did() {
    let (x, y) = blobs(300, 1);
    let trained = RandomForest::train(x, y, params(r#"{"n_trees": 30, "seed": 4}"#)).unwrap();
    assert_eq!(trained.model.format, "sitsflow-rf/1");
    let (test, truth) = blobs(150, 99);
    let probs = RandomForest::predict(trained.model.clone(), test, params("{}")).unwrap();
    assert_eq!(probs.classes, [3, 7, 9]);
    assert_eq!(probs.data.len(), 150 * 3);
    for row in probs.data.chunks_exact(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let predicted = argmax_codes(&probs);
    let right = predicted.iter().zip(&truth).filter(|(p, t)| **t != 0 && p == t).count();
    let labelled = truth.iter().filter(|&&t| t != 0).count();
    assert_eq!(right, labelled, "blobs 3 apart with ±0.5 noise are separable");

    let r = report(&trained);
    assert_eq!(r["n_trees"], 30);
    assert_eq!(r["classes"], sitsflow_sdk::serde_json::json!([3, 7, 9]));
    assert_eq!(r["training_samples"], 270);
    assert_eq!(r["unlabelled_ignored"], 30);
    assert_eq!(r["samples_per_class"]["7"], 90);
    assert_eq!(r["max_features_resolved"], 2);
    assert!(r["oob_score"].as_f64().unwrap() > 0.97, "{}", r["oob_score"]);
    let imp = &r["feature_importances"];
    let total: f64 = ["a", "b", "noise1", "noise2"].iter().map(|f| imp[f].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(imp["a"].as_f64().unwrap() > 0.3 && imp["b"].as_f64().unwrap() > 0.3, "{imp}");
    assert!(imp["noise1"].as_f64().unwrap() < 0.1, "{imp}");
    assert!(r["tree_depth"]["max"].as_u64().unwrap() >= 2);
}

#[test]
fn one_tree_on_one_feature_splits_at_the_midpoint() {
    let x = matrix(&["v"], &[vec![1.0], vec![2.0], vec![3.0], vec![4.0]]);
    let t = RandomForest::train(x, vec![1, 1, 2, 2], params(r#"{"n_trees": 1, "bootstrap": false}"#)).unwrap();
    let f = blob::decode(&t.model.data).unwrap();
    assert_eq!(f.feature, [0, -1, -1]);
    assert_eq!(f.threshold[0], 2.5);
    assert_eq!((f.left[0], f.right[0]), (1, 2));
    assert_eq!(f.leaf_values, [1.0, 0.0, 0.0, 1.0]);
    // No missing value in training: NaN goes to the bigger child, here a tie → right.
    let probe = matrix(&["v"], &[vec![2.4], vec![2.6], vec![f32::NAN]]);
    let p = RandomForest::predict(t.model, probe, params("{}")).unwrap();
    assert_eq!(p.data, [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn same_seed_same_bytes_other_seed_other_model() {
    let (x, y) = blobs(200, 3);
    let a = RandomForest::train(x.clone(), y.clone(), params(r#"{"n_trees": 10, "seed": 11}"#)).unwrap();
    let b = RandomForest::train(x.clone(), y.clone(), params(r#"{"n_trees": 10, "seed": 11}"#)).unwrap();
    let c = RandomForest::train(x, y, params(r#"{"n_trees": 10, "seed": 12}"#)).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.report, b.report);
    assert_ne!(a.model.data, c.model.data);
}

#[test]
fn missingness_itself_can_be_learned_and_followed_at_prediction() {
    // Class 1 is cloudy (NaN) in feature `t1`, class 2 never is; `t2` is noise.
    let mut r = Lcg(5);
    let rows: Vec<Vec<f32>> = (0..200).map(|i| vec![if i % 2 == 0 { f32::NAN } else { r.uniform() }, r.uniform()]).collect();
    let labels: Vec<u16> = (0..200).map(|i| if i % 2 == 0 { 1 } else { 2 }).collect();
    let t = RandomForest::train(matrix(&["t1", "t2"], &rows), labels, params(r#"{"n_trees": 5, "max_features": 2}"#)).unwrap();
    let f = blob::decode(&t.model.data).unwrap();
    // Each root splits on t1 and sends NaN one way, everything else the other.
    for &root in &f.roots {
        assert_eq!(f.feature[root as usize], 0);
    }
    let probe = matrix(&["t1", "t2"], &[vec![f32::NAN, 0.5], vec![0.3, 0.5], vec![f32::NAN, f32::NAN]]);
    let p = RandomForest::predict(t.model, probe, params("{}")).unwrap();
    assert_eq!(argmax_codes(&p), [1, 2, 1]);
    assert!(p.data[0] > 0.99 && p.data[3] > 0.99, "{:?}", p.data);
}

#[test]
fn scattered_clouds_do_not_stop_it_learning() {
    // A third of the values of both informative features are missing at random.
    let (mut x, y) = blobs(600, 8);
    let mut r = Lcg(21);
    for i in 0..x.samples {
        for f in 0..2 {
            if r.uniform() < 0.33 {
                x.data[i * 4 + f] = f32::NAN;
            }
        }
    }
    let t = RandomForest::train(x, y, params(r#"{"n_trees": 40, "seed": 1}"#)).unwrap();
    // The best any classifier can do: both features present (0.67² of samples) →
    // right; one present (2 · 0.33 · 0.67) → it tells one class from the other two,
    // right 2/3 of the time; none → 1/3. That is 0.78.
    let oob = report(&t)["oob_score"].as_f64().unwrap();
    assert!(oob > 0.74, "OOB accuracy with 33 % NaNs: {oob}, the Bayes rate is 0.78");
    let (test, truth) = blobs(90, 77);
    let p = RandomForest::predict(t.model, test, params("{}")).unwrap();
    let right = argmax_codes(&p).iter().zip(&truth).filter(|(p, t)| **t != 0 && p == t).count();
    assert!(right >= 78, "{right} of 81 clear test samples right");
}

#[test]
fn balanced_weights_lift_a_rare_overlapping_class() {
    // 95 % class 1, 5 % class 2, overlapping in the one feature.
    let mut r = Lcg(13);
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..1000 {
        let rare = i % 20 == 0;
        rows.push(vec![r.uniform() + if rare { 0.6 } else { 0.0 }, r.uniform()]);
        labels.push(if rare { 2 } else { 1 });
    }
    let x = matrix(&["v", "noise"], &rows);
    let rare_share = |json: &str| {
        let t = RandomForest::train(x.clone(), labels.clone(), params(json)).unwrap();
        let p = RandomForest::predict(t.model, x.clone(), params("{}")).unwrap();
        p.data.chunks_exact(2).map(|row| row[1] as f64).sum::<f64>() / 1000.0
    };
    let plain = rare_share(r#"{"n_trees": 30, "min_samples_leaf": 20, "seed": 2}"#);
    let balanced = rare_share(r#"{"n_trees": 30, "min_samples_leaf": 20, "seed": 2, "class_weight": "balanced"}"#);
    let subsample = rare_share(r#"{"n_trees": 30, "min_samples_leaf": 20, "seed": 2, "class_weight": "balanced_subsample"}"#);
    let no_bootstrap = rare_share(r#"{"n_trees": 5, "min_samples_leaf": 20, "bootstrap": false, "class_weight": "balanced"}"#);
    assert!(plain < 0.1, "unweighted mean probability of the rare class: {plain}");
    for (what, share) in [("balanced", balanced), ("balanced_subsample", subsample), ("balanced without bootstrap", no_bootstrap)] {
        assert!(share > 2.0 * plain, "{what}: {share} vs unweighted {plain}");
    }
}

#[test]
fn entropy_depth_and_sample_limits_shape_the_trees() {
    let (x, y) = blobs(300, 4);
    let t = RandomForest::train(x.clone(), y.clone(), params(r#"{"n_trees": 10, "criterion": "entropy", "max_depth": 1}"#)).unwrap();
    let r = report(&t);
    assert_eq!(r["tree_depth"]["max"], 1);
    assert_eq!(r["tree_leaves"]["max"], 2);
    let t = RandomForest::train(x, y, params(r#"{"n_trees": 5, "min_samples_leaf": 40, "max_samples": 0.5}"#)).unwrap();
    let f = blob::decode(&t.model.data).unwrap();
    // 135 bootstrap draws, ≥ 40 distinct samples per leaf: at most 3 leaves per tree.
    assert!(report(&t)["tree_leaves"]["max"].as_u64().unwrap() <= 3, "{}", t.report);
    assert!(f.roots.len() == 5);
}

#[test]
fn the_blob_round_trips_and_corruption_is_an_error() {
    let (x, y) = blobs(150, 6);
    let t = RandomForest::train(x.clone(), y, params(r#"{"n_trees": 7}"#)).unwrap();
    let forest = blob::decode(&t.model.data).unwrap();
    assert_eq!(blob::encode(&forest), t.model.data);
    let direct = forest.predict(&x.data, x.samples);
    let via_stage = RandomForest::predict(t.model.clone(), x.clone(), params("{}")).unwrap();
    assert_eq!(direct, via_stage.data);

    let predict = |data: Vec<u8>, format: &str| {
        RandomForest::predict(ModelBlob { format: format.into(), data }, x.clone(), params("{}")).unwrap_err()
    };
    let err = predict(t.model.data.clone(), "sitsflow-kmeans/1");
    assert_eq!(err, StageError::InvalidInput("model format 'sitsflow-kmeans/1' is not sitsflow-rf/1".into()));
    let err = predict(t.model.data[..t.model.data.len() / 2].to_vec(), "sitsflow-rf/1");
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("ends at byte")), "{err:?}");
    let mut wrong_version = t.model.data.clone();
    wrong_version[12] = 2;
    let err = predict(wrong_version, "sitsflow-rf/1");
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("version 2")), "{err:?}");
    // A child pointing back at its parent would loop forever: refused.
    let mut looping = forest.clone();
    let split = looping.feature.iter().position(|&f| f >= 0).unwrap();
    looping.left[split] = split as u32;
    let err = predict(blob::encode(&looping), "sitsflow-rf/1");
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("has children")), "{err:?}");
    let mut shared = forest.clone();
    let split = shared.feature.iter().position(|&f| f >= 0).unwrap();
    shared.right[split] = shared.left[split];
    let err = predict(blob::encode(&shared), "sitsflow-rf/1");
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("parents")), "{err:?}");
    let mut bad_leaf = forest;
    let leaf = bad_leaf.feature.iter().position(|&f| f < 0).unwrap();
    bad_leaf.leaf_offset[leaf] = bad_leaf.leaf_values.len() as u32;
    assert!(matches!(predict(blob::encode(&bad_leaf), "sitsflow-rf/1"), StageError::InvalidInput(m) if m.contains("points at values")));
}

#[test]
fn mismatched_features_are_named() {
    let (x, y) = blobs(60, 2);
    let t = RandomForest::train(x.clone(), y, params(r#"{"n_trees": 2}"#)).unwrap();
    let mut renamed = x.clone();
    renamed.names[2] = "NDVI@2020-05-01".into();
    let err = RandomForest::predict(t.model.clone(), renamed, params("{}")).unwrap_err();
    assert_eq!(
        err,
        StageError::InvalidInput(
            "the samples' features do not match the model's: feature 2 is 'noise1' in the model but 'NDVI@2020-05-01' in the samples"
                .into()
        )
    );
    let fewer = FeatureMatrix { samples: 1, names: vec!["a".into(), "b".into(), "noise1".into()], data: vec![0.0; 3] };
    let err = RandomForest::predict(t.model, fewer, params("{}")).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.ends_with("the model has 4 features, the samples 3")), "{err:?}");
}

#[test]
fn bad_parameters_and_inputs_are_refused_with_the_reason() {
    let (x, y) = blobs(30, 1);
    let train = |json: &str| RandomForest::train(x.clone(), y.clone(), params(json)).unwrap_err();
    let cases = [
        (r#"{"n_trees": 0}"#, "n_trees must be at least 1"),
        (r#"{"max_features": 2.0}"#, "max_features = 2 must be a fraction in (0, 1]"),
        (r#"{"max_features": 9}"#, "max_features = 9 must be a count between 1 and the 4 features"),
        (r#"{"min_samples_split": 1}"#, "min_samples_split = 1 must be at least 2"),
        (r#"{"max_depth": 0}"#, "max_depth must be at least 1"),
        (r#"{"bootstrap": false, "max_samples": 0.5}"#, "max_samples needs bootstrap = true"),
        (r#"{"bootstrap": false, "oob_score": true}"#, "oob_score needs bootstrap = true"),
        (r#"{"max_samples": 1.5}"#, "max_samples = 1.5 must be a fraction in (0, 1]"),
    ];
    for (json, message) in cases {
        match train(json) {
            StageError::InvalidParams(m) => assert!(m.starts_with(message), "{json}: {m}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    for (json, needle) in [
        (r#"{"n_tree": 10}"#, "unknown field `n_tree`"),
        (r#"{"max_features": "sqr"}"#, r#"expected max_features as "sqrt""#),
        (r#"{"max_features": -3}"#, r#"expected max_features as "sqrt""#),
        (r#"{"criterion": "mse"}"#, "unknown variant `mse`"),
    ] {
        let err = RandomForest::parse_params(json).err().unwrap();
        assert!(matches!(&err, StageError::InvalidParams(m) if m.contains(needle)), "{json}: {err:?}");
    }

    let err = RandomForest::train(x.clone(), vec![0; 30], Params::default()).unwrap_err();
    assert_eq!(err, StageError::InvalidInput("no labelled samples: all 30 labels are 0 (unlabelled)".into()));
    let err = RandomForest::train(x.clone(), vec![1; 29], Params::default()).unwrap_err();
    assert_eq!(err, StageError::InvalidInput("29 labels for 30 samples".into()));
    let mut inf = x.clone();
    inf.data[5] = f32::INFINITY;
    let err = RandomForest::train(inf, y.clone(), Params::default()).unwrap_err();
    assert_eq!(err, StageError::InvalidInput("feature 'b' of sample 1 is inf; use NaN for a missing value".into()));
    let mut twice = x.clone();
    twice.names[3] = "a".into();
    let err = RandomForest::train(twice, y.clone(), Params::default()).unwrap_err();
    assert_eq!(err, StageError::InvalidInput("feature 'a' appears twice in the feature matrix".into()));
    let mut short = x;
    short.data.pop();
    assert!(
        matches!(RandomForest::train(short, y, Params::default()), Err(StageError::InvalidInput(m)) if m.contains("expected 30 samples × 4 features"))
    );
}

#[test]
fn a_single_class_gives_certain_predictions() {
    let (x, _) = blobs(20, 1);
    let t = RandomForest::train(x.clone(), vec![5; 20], params(r#"{"n_trees": 3}"#)).unwrap();
    let p = RandomForest::predict(t.model, x, params("{}")).unwrap();
    assert_eq!(p.classes, [5]);
    assert!(p.data.iter().all(|&v| v == 1.0));
}

#[test]
fn the_schema_documents_max_features() {
    let schema = RandomForest::params_schema();
    assert!(schema.contains(r#""sqrt""#) && schema.contains("exclusiveMinimum"), "{schema}");
    assert!(schema.contains("n_trees") && schema.contains("class_weight"));
}

#[test]
fn alternating_models_each_give_their_own_answers() {
    // The instance keeps the last model laid out; another blob must replace it.
    let (x, y) = blobs(120, 8);
    let a = RandomForest::train(x.clone(), y.clone(), params(r#"{"n_trees": 4, "seed": 1}"#)).unwrap().model;
    let b = RandomForest::train(x.clone(), y, params(r#"{"n_trees": 4, "seed": 2, "max_depth": 2}"#)).unwrap().model;
    let expect = |m: &ModelBlob| blob::decode(&m.data).unwrap().predict(&x.data, x.samples);
    for model in [&a, &b, &a, &a, &b] {
        let p = RandomForest::predict(model.clone(), x.clone(), params("{}")).unwrap();
        assert_eq!(p.data, expect(model));
    }
    assert_ne!(expect(&a), expect(&b));
}

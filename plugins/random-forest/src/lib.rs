//! `random-forest`: a random-forest classifier (labeller stage) that grows trees the way
//! scikit-learn's `RandomForestClassifier` does, so that its maps can be defended with
//! the same reasoning and compared with the same tool.
//!
//! - **Trees**: CART, best split over `max_features` randomly drawn features, Gini or
//!   entropy, `max_depth`, `min_samples_split`, `min_samples_leaf`,
//!   `min_impurity_decrease`; leaves hold weighted class distributions. See [`train`]
//!   for what is mirrored from scikit-learn and why.
//! - **Forest**: bootstrap (or not) with `max_samples`; `class_weight` none, `balanced`
//!   or `balanced_subsample`; prediction is the mean of the trees' class distributions
//!   (`predict_proba`). Classes are the distinct nonzero training labels, ascending;
//!   label 0 means unlabelled and is left out of training.
//! - **Missing values (NaN, e.g. clouds)** are handled inside the trees, as scikit-learn
//!   ≥ 1.3 does rather than by imputation: each candidate split is tried with the node's
//!   missing samples sent left and sent right (and "missing alone on the right"), the
//!   better one is kept and the side stored in the node; at prediction NaN follows that
//!   side. A node that saw no missing value in training sends NaN to the child that
//!   received more training samples. A sample may be NaN in every feature.
//! - **Diagnostics** (the training report): out-of-bag accuracy over the samples that
//!   were out of bag for at least one tree (scikit-learn also counts the others, as
//!   votes for the first class), impurity-based feature importances (normalised like
//!   `feature_importances_`), samples per class, tree depth and leaf counts.
//! - **Determinism**: every random draw comes from `seed` and the tree's index, so the
//!   same data and parameters give the same model bytes.
//! - **Model**: the `sitsflow-rf/1` blob described in [`blob`]; `predict` checks its
//!   format, version and structure and that the samples carry the same feature names
//!   in the same order. An instance keeps the last model it decoded (laid out for
//!   prediction, see [`forest`]) and reuses it for a byte-identical blob, since the
//!   host hands the same model in with every chunk.
//!
//! Random streams differ from numpy's, so trees are not bit-identical to
//! scikit-learn's; accuracy agrees within noise (tests/forest.rs measures it).

pub mod blob;
pub mod forest;
pub mod params;
mod rng;
pub mod train;

pub use params::Params;

use forest::Forest;
use sitsflow_sdk::prelude::*;
use sitsflow_sdk::serde_json::{self, json};

pub struct RandomForest;

impl Stage for RandomForest {
    const NAME: &'static str = "random-forest";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "Random-forest classifier: bootstrap, Gini/entropy, NaN-aware splits, OOB score, feature importances, class probabilities.";
    type Params = Params;
}

fn invalid(message: String) -> StageError {
    StageError::InvalidInput(message)
}

/// Checks a feature matrix's shape and names (non-empty, distinct).
fn check_samples(samples: &FeatureMatrix) -> Result<(), StageError> {
    samples.check()?;
    if samples.names.is_empty() {
        return Err(invalid("the feature matrix has no features".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &samples.names {
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!("feature '{name}' appears twice in the feature matrix")));
        }
    }
    Ok(())
}

impl LabellerStage for RandomForest {
    fn train(samples: FeatureMatrix, labels: Vec<u16>, params: Params) -> Result<Trained, StageError> {
        check_samples(&samples)?;
        if labels.len() != samples.samples {
            return Err(invalid(format!("{} labels for {} samples", labels.len(), samples.samples)));
        }
        let width = samples.names.len();
        let config = params.resolve(width)?;
        let labelled: Vec<usize> = (0..samples.samples).filter(|&i| labels[i] != 0).collect();
        if labelled.is_empty() {
            return Err(invalid(format!("no labelled samples: all {} labels are 0 (unlabelled)", samples.samples)));
        }
        let mut classes: Vec<u16> = labelled.iter().map(|&i| labels[i]).collect();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() == 1 {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!("random-forest: every labelled sample is class {}; the model always predicts it", classes[0]),
            );
        }

        // Column-major copy of the labelled rows; infinities are refused since no
        // threshold can separate them meaningfully (NaN is a missing value).
        let n = labelled.len();
        let mut x = vec![0.0f32; n * width];
        for (j, &i) in labelled.iter().enumerate() {
            for (f, &v) in samples.row(i).iter().enumerate() {
                if v.is_infinite() {
                    return Err(invalid(format!("feature '{}' of sample {i} is {v}; use NaN for a missing value", samples.names[f])));
                }
                x[f * n + j] = v;
            }
        }
        let y: Vec<u16> = labelled.iter().map(|&i| classes.binary_search(&labels[i]).unwrap() as u16).collect();
        let names = samples.names;
        drop(samples.data);
        let data = train::TrainSet { n, n_features: width, x, y, n_classes: classes.len() };
        let grown = train::grow_forest(&data, &config, |t| sitsflow_sdk::host::progress(t as u64, config.n_trees as u64));

        let mut per_class = serde_json::Map::new();
        for (c, code) in classes.iter().enumerate() {
            per_class.insert(code.to_string(), json!(data.y.iter().filter(|&&y| y as usize == c).count()));
        }
        let importances: serde_json::Map<String, serde_json::Value> =
            names.iter().zip(&grown.importances).map(|(name, v)| (name.clone(), json!(v))).collect();
        let depths: Vec<usize> = grown.trees.iter().map(|t| t.depth).collect();
        let leaves: Vec<usize> = grown.trees.iter().map(|t| t.leaves()).collect();
        let stats = |v: &[usize]| {
            json!({
                "min": v.iter().min(),
                "mean": v.iter().sum::<usize>() as f64 / v.len() as f64,
                "max": v.iter().max(),
            })
        };
        let forest = Forest::from_trees(names, classes.clone(), &grown.trees);
        let report = json!({
            "format": blob::FORMAT,
            "n_trees": config.n_trees,
            "params": params,
            "max_features_resolved": config.max_features,
            "oob_score": grown.oob.map(|(score, _)| score).filter(|s| s.is_finite()),
            "oob_samples": grown.oob.map(|(_, n)| n),
            "feature_importances": importances,
            "classes": classes,
            "training_samples": n,
            "unlabelled_ignored": labels.len() - n,
            "samples_per_class": per_class,
            "in_bag_samples_mean": grown.in_bag.iter().sum::<usize>() as f64 / grown.in_bag.len() as f64,
            "tree_depth": stats(&depths),
            "tree_leaves": stats(&leaves),
            "nodes": forest.n_nodes(),
        });
        Ok(Trained { model: ModelBlob { format: blob::FORMAT.to_string(), data: blob::encode(&forest) }, report: report.to_string() })
    }

    fn predict(model: ModelBlob, samples: FeatureMatrix, _params: Params) -> Result<Probabilities, StageError> {
        if model.format != blob::FORMAT {
            return Err(invalid(format!("model format '{}' is not {}", model.format, blob::FORMAT)));
        }
        let loaded = load(model.data)?;
        check_samples(&samples)?;
        if samples.names != loaded.feature_names {
            let (ours, theirs) = (&loaded.feature_names, &samples.names);
            let detail = match ours.iter().zip(theirs).position(|(a, b)| a != b) {
                Some(i) => format!("feature {i} is '{}' in the model but '{}' in the samples", ours[i], theirs[i]),
                None => format!("the model has {} features, the samples {}", ours.len(), theirs.len()),
            };
            return Err(invalid(format!("the samples' features do not match the model's: {detail}")));
        }
        let data = loaded.predictor.predict(&samples.data, samples.samples);
        Ok(Probabilities { samples: samples.samples, classes: loaded.classes.clone(), data })
    }
}

/// A model blob decoded, checked and laid out for prediction.
struct Loaded {
    bytes: Vec<u8>,
    feature_names: Vec<String>,
    classes: Vec<u16>,
    predictor: forest::Predictor,
}

thread_local! {
    /// The last model predicted with. The host calls `predict` once per chunk with the
    /// same blob; decoding and laying out a large forest costs tens of milliseconds per
    /// call, so it is done once. Reused only for byte-identical blobs, so a call's
    /// result never depends on what came before.
    static LOADED: std::cell::RefCell<Option<std::rc::Rc<Loaded>>> = const { std::cell::RefCell::new(None) };
}

fn load(bytes: Vec<u8>) -> Result<std::rc::Rc<Loaded>, StageError> {
    if let Some(loaded) = LOADED.with_borrow(|l| l.clone()).filter(|l| l.bytes == bytes) {
        return Ok(loaded);
    }
    // Free the previous model before building the next one.
    LOADED.with_borrow_mut(|l| *l = None);
    let forest = blob::decode(&bytes).map_err(|why| invalid(format!("the {} model blob is unusable: {why}", blob::FORMAT)))?;
    let predictor = forest::Predictor::new(&forest);
    let loaded = std::rc::Rc::new(Loaded { bytes, feature_names: forest.feature_names, classes: forest.classes, predictor });
    LOADED.with_borrow_mut(|l| *l = Some(loaded.clone()));
    Ok(loaded)
}

sitsflow_sdk::export_labeller_stage!(RandomForest);

#[cfg(test)]
mod tests;

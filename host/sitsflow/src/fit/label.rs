//! A labeller's node: a model from a sampler's selection, active learning (`active`)
//! or an earlier run, then every map its node names.

use super::{Context, FitResults, HOLDOUT_BLOCK_PX, Selected, call_error, context, parse_report, save_model};
use crate::learn::{argmax, rows_where};
use crate::config::{Nomenclature, StageId};
use crate::eval::Confusion;
use crate::graph::{LabelMaps, RasterId};
use crate::inference::Model;
use crate::outputs::{Output, PixelType};
use crate::plan::{Executor, Holdout, HoldoutBy, RecipePlan, StagePlan, Training};
use crate::raster::{ClassStyle, FeatureRaster, Window};
use crate::report::SceneSection;
use crate::runtime::data::{FeatureMatrix, ModelBlob, Probabilities};
use crate::runtime::{Plugin, StagePool};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A labeller with what its role and its node give it.
pub(super) struct LabellerPlan<'a> {
    pub stage: &'a StagePlan,
    /// The year of per-year features it trains on (`None`: every year).
    pub year: Option<i32>,
    /// What of its samples it holds out for its accuracy report.
    pub holdout: Holdout,
    /// The maps it predicts, each from its features raster (one per year of per-year
    /// features), as its node names them.
    pub maps: &'a [LabelMaps],
}

impl<'a> LabellerPlan<'a> {
    /// The features rasters it trains on: of its year, or of every year.
    pub(super) fn training_maps(&self) -> Vec<&'a LabelMaps> {
        match self.year {
            Some(y) => self.maps.iter().filter(|m| m.year == Some(y)).collect(),
            None => self.maps.iter().collect(),
        }
    }
}

/// A labeller's node: gets a model as `training` says (a sampler's selection, active
/// learning with `query` asking `oracle`, or a stored model), then predicts its maps.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    scene: &Context,
    labeller: &LabellerPlan,
    training: &Training,
    query: Option<&StagePlan>,
    oracle: Option<RasterId>,
    selections: &HashMap<String, Selected>,
    nomenclature: Option<&Nomenclature>,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let stage = labeller.stage;
    // Every year it maps has the features it trains on: found before it trains.
    let mapped = mapped_features(scene, labeller)?;
    match &stage.executor {
        Executor::Recipe(recipe) if recipe.shape() == sitsflow_core::recipes::RecipeShape::Segmentation => {
            super::segment::run(scene, labeller, recipe, training, selections, nomenclature, results)
        }
        Executor::Recipe(recipe) => {
            let class_names = nomenclature.map(|n| n.classes.iter().map(|c| (c.code, c.name.clone())).collect()).unwrap_or_default();
            let learner = Learner::Network { recipe, class_names };
            let fit = match training {
                Training::Stored(path) => stored_network(scene, stage, recipe, path)?,
                Training::Csv(_) => unreachable!("Plan::resolve refuses a samples CSV for a recipe labeller"),
                // A network learns from the sampler's selection (no active learning).
                Training::Samples(samples) | Training::ActiveLearning { samples, .. } => {
                    fit_on_selection(scene, labeller, &learner, samples, selected(selections, stage, samples)?)?
                }
            };
            label(scene, labeller, &mapped, &learner, fit, nomenclature, results)
        }
        Executor::Plugin(plugin) => {
            let pool = StagePool::with_models(plugin.clone(), stage.limits, scene.models.clone()).seeded(scene.plan.seed).sharing(&scene.guest_memory);
            let fit = match training {
                Training::Stored(path) => stored_blob(stage, plugin, path)?,
                Training::ActiveLearning { samples, learning } => {
                    let selected = selected(selections, stage, samples)?;
                    let Some(query) = query else {
                        bail!("stage '{}': its query stage '{}' is not in the pipeline", stage.id, learning.query);
                    };
                    let Some(oracle) = oracle else {
                        bail!("stage '{}': active learning asks the reference map for labels, and the pipeline has no [reference]", stage.id);
                    };
                    super::active::learn(scene, labeller, learning, &pool, query, selected, &scene.path(oracle))?
                }
                Training::Samples(samples) => fit_on_selection(scene, labeller, &Learner::Stage(&pool), samples, selected(selections, stage, samples)?)?,
                Training::Csv(path) => fit_on_csv(scene, labeller, &Learner::Stage(&pool), path, nomenclature)?,
            };
            label(scene, labeller, &mapped, &Learner::Stage(&pool), fit, nomenclature, results)
        }
    }
}

/// The selection of the sampler `samples` that a labeller trains on.
pub(super) fn selected<'a>(selections: &'a HashMap<String, Selected>, stage: &StagePlan, samples: &StageId) -> Result<&'a Selected> {
    selections
        .get(samples.as_str())
        .ok_or_else(|| anyhow!("stage '{}': its sampler '{samples}' has made no selection before it", stage.id))
}


/// A plugin labeller's model stored by an earlier run (`models/<id>.model` and its
/// `.json` sidecar naming the format and the plugin that trained it).
fn stored_blob(stage: &StagePlan, plugin: &Plugin, path: &Path) -> Result<Fit> {
    let crate::learn::StoredModel { blob, sidecar } =
        crate::learn::read_model(path).map_err(|e| anyhow!("stage '{}': {e:#}", stage.id))?;
    let trained_by = sidecar["plugin"].as_str().unwrap_or("");
    if trained_by.split('@').next() != Some(plugin.info().name.as_str()) {
        bail!("stage '{}': {} was trained by '{trained_by}', not by {}", stage.id, path.display(), plugin.info().reference());
    }
    if sidecar["plugin_sha256"].as_str() != Some(plugin.sha256()) {
        log::warn!(
            "stage '{}': {} was trained by another build of {} ({}); predicting with it anyway",
            stage.id,
            path.display(),
            trained_by,
            sidecar["plugin_sha256"].as_str().unwrap_or("unknown sha256")
        );
    }
    Ok(Fit {
        model: Trained::Blob(blob),
        training: json!({ "stored_model": path.display().to_string(), "trained_by": trained_by, "report": sidecar["report"] }),
        held_out: Value::Null,
        split: json!({ "stored_model": path.display().to_string() }),
        training_years: Value::Null,
        learning_curve: Value::Null,
    })
}

/// A recipe labeller's network stored by an earlier run (`models/<id>/model.onnx` with
/// its `model.json`), copied into this run's `models/<id>/` and loaded from there.
pub(super) fn stored_network(scene: &Context, stage: &StagePlan, recipe: &RecipePlan, path: &Path) -> Result<Fit> {
    let from = path.parent().unwrap_or(Path::new("."));
    let into = scene.run_dir().join("models").join(stage.id.as_str());
    if crate::fsutil::normalize(from) != crate::fsutil::normalize(&into) {
        std::fs::create_dir_all(&into).with_context(|| format!("creating {}", into.display()))?;
        for file in crate::network::FILES {
            if from.join(file).is_file() {
                let bytes = std::fs::read(from.join(file)).with_context(|| format!("reading {}", from.join(file).display()))?;
                crate::fsutil::write_atomic(&into.join(file), &bytes)?;
            }
        }
    }
    let model = Model::load(into.join("model.onnx"), recipe.device).map_err(|e| anyhow!("stage '{}': loading {}: {e}", stage.id, path.display()))?;
    Ok(Fit {
        model: Trained::Network(model),
        training: json!({ "stored_model": path.display().to_string(), "recipe": recipe.arch }),
        held_out: Value::Null,
        split: json!({ "stored_model": path.display().to_string() }),
        training_years: Value::Null,
        learning_curve: Value::Null,
    })
}


/// What trains and predicts for a labeller stage.
pub(super) enum Learner<'a> {
    /// Its component's `train` and `predict`, in the sandbox.
    Stage(&'a StagePool),
    /// A network a recipe of `models/` trains (subprocess), run by ONNX Runtime.
    Network { recipe: &'a RecipePlan, class_names: Vec<(u16, String)> },
}

/// A labeller's trained model.
pub(super) enum Trained {
    /// A component's model blob (saved as `models/<id>.model`).
    Blob(ModelBlob),
    /// An exported network (its folder `models/<id>/` written by the recipe).
    Network(Arc<Model>),
}

impl Learner<'_> {
    /// Trains on `train` (rows at `train_pixels`, which group the recipe's validation
    /// split by hold-out block); returns the model and the learner's training report.
    fn train(&self, scene: &Context, stage: &StagePlan, train: &FeatureMatrix, labels: &[u16], train_pixels: &[u64]) -> Result<(Trained, Value)> {
        match self {
            Learner::Stage(pool) => {
                let trained = pool
                    .with(|i| i.train(&context(stage, "train"), train, labels, &stage.params_json()))
                    .map_err(call_error(stage, &format!("training on {} samples", train.samples)))?;
                Ok((Trained::Blob(trained.model), parse_report(&trained.report)))
            }
            Learner::Network { recipe, class_names } => {
                let groups: Vec<u64> = train_pixels.iter().map(|&p| super::block_of(scene.grid.width, p)).collect();
                let set = crate::network::TrainingSet { features: train, labels, groups: &groups, class_names };
                let seed = {
                    use rand::RngCore;
                    scene.rng(stage, "recipe").next_u64() >> 1
                };
                let network = crate::network::train(recipe, stage.id.as_str(), &scene.run_dir().join("models"), &set, seed, &stage.params)?;
                Ok((Trained::Network(network.model), network.report))
            }
        }
    }

    pub(super) fn predict(&self, stage: &StagePlan, model: &Trained, features: &FeatureMatrix, what: &str) -> Result<Probabilities> {
        let p = match (self, model) {
            (Learner::Stage(pool), Trained::Blob(blob)) => pool
                .with(|i| i.predict(&context(stage, what), blob, features, &stage.params_json()))
                .map_err(call_error(stage, &format!("predicting {what}")))?,
            (Learner::Network { .. }, Trained::Network(model)) => {
                crate::network::predict(stage.id.as_str(), model, features).with_context(|| format!("predicting {what}"))?
            }
            _ => unreachable!("a learner predicts with the model it trained"),
        };
        check_probabilities(stage, &p, features.samples as usize, what)?;
        Ok(p)
    }
}



/// Pixel-major `pixels × k` values as `k` planes.
fn band_major(data: &[f32], k: usize) -> Vec<f32> {
    let n = data.len() / k.max(1);
    let mut planes = vec![0f32; data.len()];
    for p in 0..n {
        for j in 0..k {
            planes[j * n + p] = data[p * k + j];
        }
    }
    planes
}

/// Checks a labeller's probabilities before anything is written from them: the shape,
/// at least one class, class codes that are usable (not 0, which is no data in a class
/// map) and distinct, and every sample's values probabilities (finite, within [0, 1],
/// summing to 1 within [`PROBABILITY_TOLERANCE`]). `what` names the chunk or the samples.
pub(crate) fn check_probabilities(stage: &StagePlan, p: &Probabilities, samples: usize, what: &str) -> Result<()> {
    if p.classes.is_empty() {
        bail!("stage '{}' ({}) returned probabilities over zero classes", stage.id, stage.reference());
    }
    if p.classes.contains(&0) {
        bail!("stage '{}' ({}) returned class code 0, which is no data in a class map", stage.id, stage.reference());
    }
    let mut sorted = p.classes.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        bail!("stage '{}' ({}) returned class code {} twice", stage.id, stage.reference(), w[0]);
    }
    if p.samples as usize != samples || p.data.len() != samples * p.classes.len() {
        bail!(
            "stage '{}' returned probabilities for {} samples × {} classes ({} values), expected {samples} samples",
            stage.id,
            p.samples,
            p.classes.len(),
            p.data.len()
        );
    }
    if let Some(problem) = crate::fit::probability_problem(&p.data, p.classes.len()) {
        bail!("stage '{}' ({}) predicting {what}: {problem}", stage.id, stage.reference());
    }
    Ok(())
}

/// Whether a pixel falls in the held-out share: decided per 32 px block, seeded.
pub(super) fn held_out(seed: u64, grid_width: usize, pixel: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let (row, col) = ((pixel / grid_width as u64) as usize, (pixel % grid_width as u64) as usize);
    let block = ((row / HOLDOUT_BLOCK_PX) as u64) << 32 | (col / HOLDOUT_BLOCK_PX) as u64;
    // SplitMix64 of (block, seed): a uniform draw per block.
    let mut z = block ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 <= share
}

/// A labeller's trained model with what the report says of its training.
pub(super) struct Fit {
    pub(super) model: Trained,
    /// The stage's own training report.
    pub(super) training: Value,
    /// `{ "metrics", "confusion" }` on held-out samples, or null.
    pub(super) held_out: Value,
    pub(super) split: Value,
    pub(super) training_years: Value,
    /// Active learning's curve, or null.
    pub(super) learning_curve: Value,
}

/// Features of `pixels` from each raster, stacked (rows repeat the pixels per raster).
fn stacked_features(scene: &Context, stage: &StagePlan, rasters: &[PathBuf], pixels: &[u64]) -> Result<FeatureMatrix> {
    let mut samples = FeatureMatrix { samples: 0, names: Vec::new(), data: Vec::new() };
    for path in rasters {
        let part = scene.gather_features(path, pixels)?;
        if samples.names.is_empty() {
            samples.names = part.names.clone();
        } else if samples.names != part.names {
            bail!(
                "stage '{}': {} has other features than {} (a multi-year set needs the same features each year)",
                stage.id,
                path.display(),
                rasters[0].display()
            );
        }
        samples.samples += part.samples;
        samples.data.extend_from_slice(&part.data);
    }
    Ok(samples)
}

pub(super) fn train_and_test(
    scene: &Context,
    stage: &StagePlan,
    learner: &Learner,
    (train, train_labels, train_pixels): (&FeatureMatrix, &[u16], &[u64]),
    test: &FeatureMatrix,
    test_labels: &[u16],
) -> Result<(Trained, Value, Option<Confusion>)> {
    if train.samples == 0 {
        bail!("stage '{}': no training samples (lower `holdout`, or check the sampler's selection)", stage.id);
    }
    let (model, report) = learner.train(scene, stage, train, train_labels, train_pixels)?;
    let confusion = if test.samples > 0 {
        let p = learner.predict(stage, &model, test, "the held-out samples")?;
        Some(Confusion::from_pairs(test_labels, &argmax(&p).0))
    } else {
        None
    };
    Ok((model, report, confusion))
}

pub(super) fn held_out_json(confusion: &Option<Confusion>) -> Value {
    confusion.as_ref().map_or(Value::Null, |c| json!({ "metrics": c.metrics(), "confusion": c }))
}

/// How a selection splits into training and held-out samples: each pixel's group (its
/// 32 px block, or its polygon) and whether it is held out.
pub(super) struct Split {
    /// Group of each selected pixel, from 1.
    pub(super) groups: Vec<u32>,
    pub(super) test: Vec<bool>,
    /// How it was drawn, for the report.
    pub(super) rule: String,
}

/// The split of `selected` that `labeller.holdout` asks for. Blocks and polygons are both
/// drawn per sampler (`samples`) and share, so every labeller of one sampler with the same
/// share is tested on the same pixels (seed 004's comparison; the report's comparison
/// table).
pub(super) fn split_selection(scene: &Context, labeller: &LabellerPlan, samples: &StageId, selected: &Selected) -> Split {
    let width = scene.grid.width;
    let share = labeller.holdout.share;
    match labeller.holdout.by {
        HoldoutBy::Blocks => {
            // An exact share of the blocks that hold samples (at least one, and never all
            // of them), drawn per sampler: a per-block coin would hold out 1 block of 16 as
            // readily as 9.
            use rand::seq::SliceRandom;
            let groups: Vec<u32> = selected.pixels.iter().map(|&p| super::block_of(width, p) as u32 + 1).collect();
            let mut blocks = groups.clone();
            blocks.sort_unstable();
            blocks.dedup();
            blocks.shuffle(&mut scene.rng_for(samples.as_str(), &format!("blocks {share}")));
            let lowest = usize::from(share > 0.0 && blocks.len() > 1);
            let n = ((share * blocks.len() as f64).round() as usize).clamp(lowest, blocks.len().saturating_sub(1).max(lowest));
            let test_blocks: std::collections::HashSet<u32> = blocks[..n].iter().copied().collect();
            let test: Vec<bool> = groups.iter().map(|g| test_blocks.contains(g)).collect();
            Split { groups, test, rule: format!("{:.0} % of the {HOLDOUT_BLOCK_PX} px blocks holding samples, seeded per sampler", share * 100.0) }
        }
        HoldoutBy::Polygons => {
            // The vector reference's features (its parcels) when it has them, else
            // 4-connected pixels of one class.
            let (groups, what) = match &selected.features {
                Some(ids) => (dense_groups(ids), format!("the features of the vector reference, one per parcel, in '{samples}'")),
                None => (crate::segment::polygons(&selected.pixels, &selected.labels, width), format!("4-connected pixels of one class in '{samples}'")),
            };
            let mut rng = scene.rng_for(samples.as_str(), &format!("polygons {share}"));
            let test_groups = crate::segment::test_polygons(&groups, &selected.labels, share, &mut rng);
            let test = groups.iter().map(|g| test_groups.contains(g)).collect();
            Split { groups, test, rule: format!("{:.0} % of each class's polygons ({what}), seeded per sampler", share * 100.0) }
        }
    }
}

/// Feature ids as groups numbered 1, 2, … in order of first appearance (pixels are
/// ascending, so the numbering does not depend on the FIDs' values).
fn dense_groups(ids: &[u32]) -> Vec<u32> {
    let mut numbers: HashMap<u32, u32> = HashMap::new();
    ids.iter()
        .map(|id| {
            let next = numbers.len() as u32 + 1;
            *numbers.entry(*id).or_insert(next)
        })
        .collect()
}

impl Split {
    /// The groups held out.
    pub(super) fn test_groups(&self) -> std::collections::BTreeSet<u32> {
        self.groups.iter().zip(&self.test).filter(|(_, t)| **t).map(|(g, _)| *g).collect()
    }

    pub(super) fn to_json(&self, holdout: &Holdout, train_samples: u32, test_samples: u32) -> Value {
        let groups: std::collections::BTreeSet<u32> = self.groups.iter().copied().collect();
        json!({
            "holdout": holdout.share,
            "grouped_by": match holdout.by { HoldoutBy::Blocks => format!("{HOLDOUT_BLOCK_PX} px blocks"), HoldoutBy::Polygons => "polygons".into() },
            "rule": self.rule,
            "groups": groups.len(),
            "test_groups": self.test_groups().len(),
            "train_samples": train_samples,
            "test_samples": test_samples,
        })
    }
}

/// Trains on a sampler's selection, holding out a share by blocks or polygons.
fn fit_on_selection(scene: &Context, labeller: &LabellerPlan, learner: &Learner, samples_stage: &StageId, selected: &Selected) -> Result<Fit> {
    let stage = labeller.stage;
    // Training features: of the stage's year, or of every year stacked (a multi-year
    // training set: each sample pixel once per year, with its one label).
    let training: Vec<PathBuf> = labeller.training_maps().iter().map(|m| scene.path(m.features)).collect();
    let samples = stacked_features(scene, stage, &training, &selected.pixels)?;
    let pixels: Vec<u64> = training.iter().flat_map(|_| selected.pixels.iter().copied()).collect();
    let labels: Vec<u16> = training.iter().flat_map(|_| selected.labels.iter().copied()).collect();
    let split = split_selection(scene, labeller, samples_stage, selected);
    let test: Vec<bool> = training.iter().flat_map(|_| split.test.iter().copied()).collect();
    let (train, train_labels) = rows_where(&samples, &labels, |i| !test[i]);
    let train_pixels: Vec<u64> = pixels.iter().zip(&test).filter(|(_, t)| !**t).map(|(p, _)| *p).collect();
    let (test_set, test_labels) = rows_where(&samples, &labels, |i| test[i]);
    let (model, training_report, confusion) =
        train_and_test(scene, stage, learner, (&train, &train_labels, &train_pixels), &test_set, &test_labels)?;
    Ok(Fit {
        model,
        training: training_report,
        held_out: held_out_json(&confusion),
        split: split.to_json(&labeller.holdout, train.samples, test_set.samples),
        training_years: match labeller.year {
            Some(y) => json!([y]),
            None if training.len() > 1 => json!(scene.years),
            None => Value::Null,
        },
        learning_curve: Value::Null,
    })
}


/// Trains on the rows of a samples CSV: its columns matched to the input's features by
/// name (a missing one is an error naming it), its labels class names of the
/// pipeline's nomenclature or codes; `holdout` of its groups (the `group` column, else
/// its rows) held out, seeded per labeller.
fn fit_on_csv(scene: &Context, labeller: &LabellerPlan, learner: &Learner, path: &Path, nomenclature: Option<&Nomenclature>) -> Result<Fit> {
    let stage = labeller.stage;
    let context = |e: anyhow::Error| e.context(format!("stage '{}': training on {}", stage.id, path.display()));
    let samples = crate::samples::Samples::read_csv(path).map_err(context)?;
    let classes: Option<Vec<crate::learn::Class>> =
        nomenclature.map(|n| n.classes.iter().map(|c| crate::learn::Class { code: c.code, name: c.name.clone() }).collect());
    let (codes, _) = crate::learn::code_labels(&samples, path, classes.as_deref()).map_err(context)?;
    let maps = labeller.training_maps();
    let first = maps.first().ok_or_else(|| anyhow!("stage '{}': no features to train on", stage.id))?;
    let names = FeatureRaster::open(&scene.path(first.features))?.names;
    let x = crate::learn::matrix_for(&samples, path, &names).map_err(context)?;
    // Held out: whole groups (or rows), a share of them drawn with the labeller's seed.
    let groups: Vec<String> = samples.groups.clone().unwrap_or_else(|| (0..samples.len()).map(|i| i.to_string()).collect());
    let mut unique: Vec<&str> = groups.iter().map(String::as_str).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    {
        use rand::seq::SliceRandom;
        unique.shuffle(&mut scene.rng(stage, "holdout"));
    }
    let n_test = (labeller.holdout.share * unique.len() as f64).round() as usize;
    let test_groups: std::collections::BTreeSet<&str> = unique.into_iter().take(n_test).collect();
    let test: Vec<bool> = groups.iter().map(|g| test_groups.contains(g.as_str())).collect();
    let (train, train_labels) = rows_where(&x, &codes, |i| !test[i]);
    let (test_set, test_labels) = rows_where(&x, &codes, |i| test[i]);
    let (model, training_report, confusion) = train_and_test(scene, stage, learner, (&train, &train_labels, &[]), &test_set, &test_labels)?;
    Ok(Fit {
        model,
        training: training_report,
        held_out: held_out_json(&confusion),
        split: json!({
            "samples_csv": path.display().to_string(),
            "holdout": labeller.holdout.share,
            "grouped_by": if samples.groups.is_some() { "the `group` column" } else { "rows" },
            "test_groups": test_groups.len(),
            "train_samples": train.samples,
            "test_samples": test_set.samples,
        }),
        training_years: Value::Null,
        learning_curve: Value::Null,
    })
}

/// A labeller's evaluation (split, held-out metrics, training report): written as
/// `<id>.metrics.json` beside its model's files, and returned for its report section.
pub(super) fn write_evaluation(scene: &Context, stage: &StagePlan, fit: &Fit, nomenclature: Option<&Nomenclature>, results: &mut FitResults) -> Result<Value> {
    let class_names: BTreeMap<String, String> = nomenclature
        .map(|n| n.classes.iter().map(|c| (c.code.to_string(), c.name.clone())).collect())
        .unwrap_or_default();
    let evaluation = json!({
        "stage": stage.id.to_string(),
        "plugin": stage.reference(),
        "training_years": fit.training_years,
        "split": fit.split,
        "class_names": class_names,
        "held_out": fit.held_out,
        "learning_curve": fit.learning_curve,
        "training": fit.training,
    });
    let metrics_path = scene.run_dir().join(format!("{}.metrics.json", stage.id));
    crate::fsutil::write_atomic(&metrics_path, serde_json::to_string_pretty(&evaluation)?.as_bytes())?;
    results.files.push(metrics_path);
    match &fit.model {
        Trained::Blob(blob) => results.files.push(save_model(scene.run_dir(), stage, blob, &evaluation["training"])?),
        Trained::Network(network) => {
            let dir = network.path().parent().expect("model.onnx is in its folder");
            for file in crate::network::FILES {
                if dir.join(file).is_file() {
                    results.files.push(dir.join(file));
                }
            }
        }
    }
    Ok(evaluation)
}

/// Predicts every map of `labeller` with the model `fit`; `mapped` is the features
/// raster trained on and its names, which every mapped raster has (`mapped_features`).
#[allow(clippy::too_many_arguments)]
fn label(
    scene: &Context,
    labeller: &LabellerPlan,
    (first, names): &(&LabelMaps, Vec<String>),
    learner: &Learner,
    fit: Fit,
    nomenclature: Option<&Nomenclature>,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let stage = labeller.stage;
    let evaluation = write_evaluation(scene, stage, &fit, nomenclature, results)?;
    let model = fit.model;
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    let mut maps = Vec::new();
    for target in labeller.maps {
        let features = &scene.path(target.features);
        let name = scene.name(target.map).to_string();
        let mut map = Output::new(scene.partial_dir, scene.run_dir(), &name, scene.grid, PixelType::U16, style.clone());
        let mut confidence = Output::new(scene.partial_dir, scene.run_dir(), scene.name(target.confidence), scene.grid, PixelType::F32, None);
        // A decoder reading this labeller needs its full posteriors, not only the winner.
        let keep_posteriors = target.proba.is_some();
        let mut posteriors = target.proba.map(|p| Output::new(scene.partial_dir, scene.run_dir(), scene.name(p), scene.grid, PixelType::F32, None));
        scene.per_chunk(
            |i, window| {
                let raster = FeatureRaster::open(features)?;
                if raster.names != *names {
                    bail!("{}", other_features(stage, scene.name(first.features), &names, &name, &raster.names));
                }
                let matrix = FeatureMatrix { samples: window.pixels() as u32, names: names.clone(), data: raster.read(window)? };
                let p = learner.predict(stage, &model, &matrix, &format!("{name}, chunk {i} ({window})"))?;
                if let Some(n) = nomenclature {
                    if let Some(c) = p.classes.iter().find(|c| !n.classes.iter().any(|k| k.code == **c)) {
                        bail!(
                            "stage '{}' ({}) predicted class code {c}, which nomenclature '{}' does not declare",
                            stage.id,
                            stage.reference(),
                            n.name
                        );
                    }
                }
                let (labels, best) = argmax(&p);
                Ok((labels, best, keep_posteriors.then_some(p)))
            },
            |i, window, (labels, best, p)| {
                map.raster.write_chunk(i, window, &[name.clone()], &labels)?;
                confidence.raster.write_chunk(i, window, &["confidence".to_string()], &best)?;
                if let (Some(out), Some(p)) = (posteriors.as_mut(), p) {
                    let band_names: Vec<String> = p.classes.iter().map(|c| format!("p:{c}")).collect();
                    out.raster.write_chunk(i, window, &band_names, &band_major(&p.data, p.classes.len()))?;
                }
                Ok(())
            },
        )?;
        let finished = map.finish(&all)?;
        maps.push(finished.clone());
        results.outputs.push(finished);
        results.outputs.push(confidence.finish(&all)?);
        if let Some(out) = posteriors.as_mut() {
            results.files.push(out.finish(&all)?);
        }
    }
    let mut summary = evaluation;
    if maps.len() > 1 {
        summary["consistency"] = consistency(&scene.years, &maps, nomenclature)?;
    }
    Ok(SceneSection { stage: stage.id.to_string(), kind: "labeller".into(), plugin: stage.reference(), summary })
}


/// The features raster a labeller's model is trained on (its year's, or the first) and
/// its feature names, which every raster it maps must have.
fn mapped_features<'a>(scene: &Context, labeller: &LabellerPlan<'a>) -> Result<(&'a LabelMaps, Vec<String>)> {
    let stage = labeller.stage;
    let Some(first) = labeller.training_maps().first().copied().or(labeller.maps.first()) else {
        bail!("stage '{}': no features raster to predict on", stage.id);
    };
    let names = FeatureRaster::open(&scene.path(first.features))?.names;
    for target in labeller.maps {
        let theirs = FeatureRaster::open(&scene.path(target.features))?.names;
        if theirs != names {
            bail!("{}", other_features(stage, scene.name(first.features), &names, scene.name(target.features), &theirs));
        }
    }
    Ok((first, names))
}

/// Why a features raster cannot be mapped by a model trained on another: the first
/// feature that differs, and for per-year features (`@t00`: a date's rank in its year)
/// how to give every year the same dates.
fn other_features(stage: &StagePlan, trained: &str, ours: &[String], target: &str, theirs: &[String]) -> String {
    let differ = match ours.iter().zip(theirs).position(|(a, b)| a != b) {
        Some(i) => format!("feature {i} is '{}' in {trained} and '{}' in {target}", ours[i], theirs[i]),
        None => format!("{trained} has {} features and {target} {}", ours.len(), theirs.len()),
    };
    let positional = ours.iter().chain(theirs).any(|n| n.rsplit_once("@t").is_some_and(|(_, r)| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())));
    let hint = if positional {
        "; per-year features are named by the rank of their date in the year, so each year needs the same dates: \
         gap-fill them onto a grid anchored on a day of the year (indices: gapfill = { step_days = 10, start = \"MM-DD\", \
         end = \"MM-DD\" }), with acquisitions over that season in every year ([input] start/end leave out a partial year)"
    } else {
        ""
    };
    format!(
        "stage '{}' ({}): trained on {trained} ({} features), it cannot map {target} ({} features): {differ}{hint}",
        stage.id,
        stage.reference(),
        ours.len(),
        theirs.len()
    )
}

/// Agreement between consecutive years' maps, per class (the share of a class's pixels
/// in one year that keep it the next) and overall: the consistency table of seed 001.
pub(super) fn consistency(years: &[i32], maps: &[PathBuf], nomenclature: Option<&Nomenclature>) -> Result<Value> {
    let pairs = crate::eval::series_agreement(maps)?;
    let mut classes: Vec<u16> = pairs.iter().flat_map(|p| p.per_class.keys().copied()).collect();
    classes.sort_unstable();
    classes.dedup();
    let name = |c: u16| {
        nomenclature.and_then(|n| n.classes.iter().find(|k| k.code == c)).map_or(c.to_string(), |k| format!("{c} {}", k.name))
    };
    let mut columns = vec![json!("class")];
    columns.extend(years.windows(2).map(|w| json!(format!("{}–{}", w[0], w[1]))));
    let mut rows: Vec<Value> = classes
        .iter()
        .map(|&c| {
            let mut row = vec![json!(name(c))];
            row.extend(pairs.iter().map(|p| p.per_class.get(&c).map_or(Value::Null, |v| json!((v * 1e4).round() / 1e4))));
            json!(row)
        })
        .collect();
    let mut overall = vec![json!("overall")];
    overall.extend(pairs.iter().map(|p| json!((p.overall * 1e4).round() / 1e4)));
    rows.push(json!(overall));
    Ok(json!({ "columns": columns, "rows": rows }))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_decided_per_block() {
        let width = 256;
        // Every pixel of one 32 px block lands on the same side.
        for block_row in 0..4 {
            for block_col in 0..4 {
                let first = held_out(7, width, (block_row * 32 * width + block_col * 32) as u64, 0.3);
                for r in 0..32 {
                    for c in 0..32 {
                        let p = ((block_row * 32 + r) * width + block_col * 32 + c) as u64;
                        assert_eq!(held_out(7, width, p, 0.3), first);
                    }
                }
            }
        }
        // And the share is about right over many blocks.
        let width = 32 * 100;
        let test = (0..100u64).flat_map(|br| (0..100u64).map(move |bc| (br, bc))).filter(|(br, bc)| {
            held_out(11, width, br * 32 * width as u64 + bc * 32, 0.25)
        });
        let share = test.count() as f64 / 10_000.0;
        assert!((share - 0.25).abs() < 0.02, "{share}");
        assert!(!held_out(11, width, 0, 0.0));
    }

}


//! Labellers whose network is trained in the run: `recipe = "lstm"` (or `"tempcnn"`) in
//! a pipeline (seed 001, step 4: an LSTM trained on the multi-year training set).
//!
//! The scene phase hands such a labeller the same samples a plugin labeller gets (the
//! features of a sampler's selection, per year or stacked over the years). This module
//! writes them as a samples CSV in the shared convention (`label`, `group`,
//! `BAND@DATE` columns), launches the PyTorch recipe of `models/` through
//! [`crate::train`] (file contract 1: the CSV in; `model.onnx`, `model.json`,
//! `metrics.json` out), and predicts with the exported graph through ONNX Runtime
//! ([`sitsflow_infer`]), the features of each pixel laid out as the `N × T × B`
//! tensor the model's sidecar describes.

use sitsflow_infer::Model;
use crate::RecipePlan;
use sitsflow_sandbox::data::{FeatureMatrix, Probabilities};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// Batches of at most this many bytes (input and output) go through ONNX Runtime.
const BATCH_BUDGET_BYTES: usize = 64 << 20;

/// The parameters a recipe labeller takes (`params = { … }`), as a JSON Schema.
fn params_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "epochs": { "type": "integer", "minimum": 1, "maximum": 10000, "description": "most epochs (default 100)" },
            "patience": { "type": "integer", "minimum": 1, "description": "early stopping after this many epochs without improvement (default 10)" },
            "batch_size": { "type": "integer", "minimum": 1, "description": "samples per step (default 64)" },
            "learning_rate": { "type": "number", "exclusiveMinimum": 0, "description": "Adam's learning rate (default 1e-3)" },
            "threads": { "type": "integer", "minimum": 1, "description": "torch threads: results depend on the count (default 1)" },
            "seed": { "type": "integer", "minimum": 0, "description": "default: the run's seed" },
            "hyperparameters": { "type": "object", "description": "network widths: tempcnn filters, kernel, dense, dropout; lstm hidden, layers, dropout; ltae d_model, heads, d_k, dropout, period" },
            "nproc_per_node": { "type": "integer", "minimum": 1, "maximum": 256, "description": "train with this many processes per node under torchrun (DDP: gloo on CPU, NCCL on CUDA; default 1)" },
            "nodes": { "type": "integer", "minimum": 1, "maximum": 4096, "description": "train on this many nodes of the Slurm allocation (srun torchrun, c10d rendezvous; default 1)" }
        }
    })
}

/// The parameters of a per-pixel temporal recipe (`tempcnn`, `lstm`, `ltae`): the common
/// ones and time augmentation.
fn pixel_params_schema() -> Value {
    let mut schema = params_schema();
    let properties = schema["properties"].as_object_mut().expect("an object schema");
    properties.insert("drop_dates".into(), json!({ "type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "time augmentation: share of each training sample's dates set missing in each batch, as a cloud would (default 0)" }));
    properties.insert("shift_dates".into(), json!({ "type": "integer", "minimum": 0, "maximum": 64, "description": "time augmentation: each training sample shifted by up to this many dates either way, a season early or late (default 0)" }));
    schema
}

/// The parameters of `recipe = "fg-unet"`: the temporal recipes' and the tiles, the
/// patches.
fn segmentation_params_schema() -> Value {
    let mut schema = params_schema();
    let properties = schema["properties"].as_object_mut().expect("an object schema");
    properties["batch_size"]["description"] = json!("patches per step (default 16)");
    properties["hyperparameters"]["description"] = json!("network widths: width, depth, pixel_width, dropout; with `vhr`, the VHR encoder's vhr_width and the fusion, \"se\" (squeeze-and-excitation, default) or \"concat\"");
    properties.insert("vhr_scale".into(), json!({ "type": "integer", "minimum": 1, "maximum": 64, "description": "with `vhr`: VHR pixels per scene pixel along each axis, a power of two; the image is warped onto the scene's grid made this much finer (default: the image's own resolution ratio)" }));
    properties.insert("tile".into(), json!({ "type": "integer", "minimum": 16, "maximum": 8192, "description": "inference tile side in px (default 512, the seed's)" }));
    properties.insert("normalise".into(), json!({ "enum": ["channel", "band"], "description": "standardise each BAND@DATE channel with its own statistics (\"channel\", default, the seed's) or with its band's pooled over the dates (\"band\": a model that maps other years)" }));
    properties.insert("overlap".into(), json!({ "type": "integer", "minimum": 0, "maximum": 1024, "description": "context added on each side of a tile's core in px (default 16, the seed's)" }));
    properties.insert("patch".into(), json!({ "type": "integer", "minimum": 8, "maximum": 1024, "description": "training patch side in px (default 64)" }));
    properties.insert("patches_per_epoch".into(), json!({ "type": "integer", "minimum": 1, "description": "patches drawn on the fly per epoch (default 256)" }));
    properties.insert("budgets".into(), json!({
        "type": "array", "minItems": 1, "maxItems": 8,
        "items": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
        "description": "label budgets, shares of the labelled training pixels (e.g. [0.01, 0.1, 1]): the network is trained at each, from the `pretrained` encoder and from scratch, for the comparison table; the map comes from the largest (default [1])"
    }));
    schema
}

/// The parameters of `recipe = "asunet"` (a super-resolution stage, seed 000).
fn super_resolution_params_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "scale": { "type": "integer", "enum": [1, 2, 4, 8, 16], "description": "output pixels per series pixel along each axis: 4 ⇒ 2.5 m, 8 ⇒ 1.25 m (default 4); the annotations are read on that grid" },
            "smoothness": { "type": "number", "minimum": 0, "description": "λ of the temporal smoothness term, the KL divergence between consecutive dates' transition probabilities (default 0.1)" },
            "valid_days": { "type": "integer", "minimum": 0, "maximum": 36500, "description": "an annotation is the target of series dates at most this many days away (default 5, the seed's)" },
            "split": { "enum": ["random", "time"], "description": "test on spatial blocks of every annotation (random, default) or on `test_dates` left out of training (time)" },
            "test_dates": { "type": "array", "items": { "type": "string" }, "description": "annotation dates left out of training (the years of strong change, as the seed's conclusion asks)" },
            "ablation": { "type": "boolean", "description": "also train with λ = 0, for the ablation table (default false)" },
            "baseline": { "type": "boolean", "description": "also train the network at the series' resolution, whose nearest-upsampled maps are the mixed pixels' baseline (default false)" },
            "epochs": { "type": "integer", "minimum": 1, "maximum": 10000, "description": "most epochs (default 100)" },
            "patience": { "type": "integer", "minimum": 1, "description": "early stopping after this many epochs without a better validation loss (default 10)" },
            "batch_size": { "type": "integer", "minimum": 1, "description": "patches per step (default 64)" },
            "learning_rate": { "type": "number", "exclusiveMinimum": 0, "description": "Adam's learning rate (default 1e-3)" },
            "threads": { "type": "integer", "minimum": 1, "description": "torch threads (default 1)" },
            "seed": { "type": "integer", "minimum": 0, "description": "default: the run's seed" },
            "patch": { "type": "integer", "minimum": 4, "maximum": 1024, "description": "training patch side in series px (default 64)" },
            "patches_per_epoch": { "type": "integer", "minimum": 1, "description": "patches drawn per epoch (default 256)" },
            "tile": { "type": "integer", "minimum": 8, "maximum": 4096, "description": "inference tile side in series px (default 512)" },
            "overlap": { "type": "integer", "minimum": 0, "maximum": 512, "description": "context on each side of a tile's core in series px (default 16)" },
            "hyperparameters": { "type": "object", "additionalProperties": false, "properties": {
                "width": { "type": "integer", "minimum": 1 }, "depth": { "type": "integer", "minimum": 1, "maximum": 6 },
                "window": { "type": "integer", "minimum": 2, "maximum": 64 }, "month_dim": { "type": "integer", "minimum": 1 },
                "dropout": { "type": "number", "minimum": 0, "maximum": 1 }
            }, "description": "ASUNet/ME: width, depth, window (HR dates it reads, ending at the target date), month_dim, dropout" }
        }
    })
}

/// The parameters of `recipe = "simclr"` (a pretraining stage, seed 003).
fn pretraining_params_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "epochs": { "type": "integer", "minimum": 1, "maximum": 10000, "description": "epochs of views (default 20)" },
            "batches_per_epoch": { "type": "integer", "minimum": 1, "maximum": 100000, "description": "batches per epoch, each of new patches and views (default 32)" },
            "batch_size": { "type": "integer", "minimum": 2, "maximum": 4096, "description": "patch pairs per step: 2 × batch_size views, 2 × (batch_size − 1) negatives per anchor (default 16, the seed's)" },
            "patch": { "type": "integer", "minimum": 8, "maximum": 512, "description": "patch side in px (default 40, the seed's), a multiple of 2^depth" },
            "temperature": { "type": "number", "exclusiveMinimum": 0, "maximum": 10, "description": "NT-Xent temperature τ (default 0.1; the seed also used 0.7)" },
            "learning_rate": { "type": "number", "exclusiveMinimum": 0, "description": "SGD learning rate (default 0.001, the seed's)" },
            "momentum": { "type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum (default 0.9)" },
            "projection_dim": { "type": "integer", "minimum": 1, "maximum": 4096, "description": "output size of the 2-layer projection head (default 64)" },
            "hyperparameters": { "type": "object", "additionalProperties": false, "properties": { "width": { "type": "integer", "minimum": 1 }, "depth": { "type": "integer", "minimum": 1, "maximum": 6 } }, "description": "the encoder's FG-UNet shape: width, depth (an fg-unet starting from it takes the same)" },
            "threads": { "type": "integer", "minimum": 1, "description": "torch threads (default 1)" },
            "seed": { "type": "integer", "minimum": 0, "description": "default: the run's seed" }
        }
    })
}

/// Checks a recipe labeller's parameters: `Err` lists each violation with its JSON pointer.
pub fn check_params(arch: &str, params: &Value) -> Result<(), Vec<(String, String)>> {
    use sitsflow_core::recipes::{RecipeShape, recipe};
    let schema = match recipe(arch).map(|r| r.shape) {
        Some(RecipeShape::Segmentation) => segmentation_params_schema(),
        Some(RecipeShape::Pretraining) => pretraining_params_schema(),
        Some(RecipeShape::SuperResolution) => super_resolution_params_schema(),
        Some(RecipeShape::Pixel) | None => pixel_params_schema(),
    };
    let schema = jsonschema::validator_for(&schema).expect("the recipe parameter schema is valid");
    let errors: Vec<_> = schema.iter_errors(params).map(|e| (e.instance_path().to_string(), sitsflow_core::fsutil::cut_text(&e.to_string(), 300).into_owned())).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// `BAND@DATE` → (band, date); the date part may be an ISO date or `tNN`.
fn split_feature(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('@').filter(|(b, d)| !b.is_empty() && !d.is_empty())
}

/// Checks that features form a full band × date grid (what the recipe trains on).
fn check_grid(stage: &str, names: &[String]) -> Result<(usize, usize)> {
    let (bands, dates) = grid_axes(&format!("stage '{stage}'"), names)?;
    Ok((dates.len(), bands.len()))
}

/// The bands and dates of `BAND@DATE` features, in order of first appearance, when they
/// form a full grid; errors start with `what` (the stage, or the raster).
pub fn grid_axes<'a>(what: &str, names: &'a [String]) -> Result<(Vec<&'a str>, Vec<&'a str>)> {
    let mut bands: Vec<&str> = Vec::new();
    let mut dates: Vec<&str> = Vec::new();
    for name in names {
        let (b, d) = split_feature(name).ok_or_else(|| {
            anyhow!("{what}: feature '{name}' is not named BAND@DATE; a recipe labeller reads per-date features (e.g. indices with per_date = true)")
        })?;
        if !bands.contains(&b) {
            bands.push(b);
        }
        if !dates.contains(&d) {
            dates.push(d);
        }
    }
    if bands.len() * dates.len() != names.len() {
        bail!("{what}: its {} features are not a full grid of {} bands × {} dates", names.len(), bands.len(), dates.len());
    }
    Ok((bands, dates))
}

/// The files a recipe writes into its folder, `model.json` last (its presence means the
/// folder is complete); `model.pt` may be absent.
pub const FILES: [&str; 4] = ["model.onnx", "metrics.json", "model.pt", "model.json"];

/// What the training of a recipe labeller leaves: the loaded model (in
/// `<run>/models/<id>/`, beside the other [`FILES`]) and its report.
pub struct TrainedNetwork {
    /// The trained ONNX model, loaded for inference.
    pub model: Arc<Model>,
    /// The recipe's own account: sidecar summary (training, validation metrics, onnx check).
    pub report: Value,
}

/// Labelled samples handed to a recipe.
pub struct TrainingSet<'a> {
    /// The samples' features, one row each.
    pub features: &'a FeatureMatrix,
    /// The samples' class codes, one per row.
    pub labels: &'a [u16],
    /// One group per row (e.g. the 32 px block of the pixel): the recipe's validation
    /// split keeps a group on one side.
    pub groups: &'a [u64],
    /// Class code → name, for the samples' `label` column and the recipe's classes.
    pub class_names: &'a [(u16, String)],
}

/// Trains the recipe on `set`, writing `<models_dir>/<stage>.samples.csv` and the
/// recipe's output folder `<models_dir>/<stage>/`.
pub fn train(
    recipe: &RecipePlan,
    stage: &str,
    models_dir: &Path,
    set: &TrainingSet,
    seed: u64,
    params: &Value,
) -> Result<TrainedNetwork> {
    check_grid(stage, &set.features.names)?;
    std::fs::create_dir_all(models_dir).with_context(|| format!("creating {}", models_dir.display()))?;
    let samples = models_dir.join(format!("{stage}.samples.csv"));
    let classes = models_dir.join(format!("{stage}.classes.csv"));
    write_samples(&samples, set)?;
    write_classes(&classes, set)?;
    let data = crate::train::TrainData::Samples(samples);
    let request = request(recipe, stage, data, Some(classes), models_dir.join(stage), seed, params)?;
    run_recipe(recipe, stage, &request)
}

/// The request that trains `recipe` on `data` into `out` (a previous run's folder there
/// is removed: the recipe writes a complete folder or none), the stage's `params` as the
/// recipe's flags (their schema, `check_params`, admits only its recipe's keys), and
/// `seed` unless they set one.
pub fn request(
    recipe: &RecipePlan,
    stage: &str,
    data: crate::train::TrainData,
    classes: Option<std::path::PathBuf>,
    out: std::path::PathBuf,
    seed: u64,
    params: &Value,
) -> Result<crate::train::TrainRequest> {
    fresh_output(&out)?;
    let mut extra = flags(
        params,
        &[
            ("patience", "--patience"),
            ("batch_size", "--batch-size"),
            ("learning_rate", "--learning-rate"),
            ("threads", "--threads"),
            ("tile", "--tile"),
            ("overlap", "--overlap"),
            ("patch", "--patch"),
            ("patches_per_epoch", "--patches-per-epoch"),
            ("hyperparameters", "--hyperparameters"),
            ("normalise", "--normalise"),
            ("drop_dates", "--drop-dates"),
            ("shift_dates", "--shift-dates"),
        ],
    );
    if let Some(budgets) = params.get("budgets").and_then(Value::as_array) {
        let list: Vec<String> = budgets.iter().map(Value::to_string).collect();
        extra.extend(["--budgets".to_string(), list.join(",")]);
    }
    if matches!(data, crate::train::TrainData::Samples(_)) {
        // Pixels of the run's rasters: NaN is a masked (cloudy) date, which the network takes.
        extra.extend(["--missing".to_string(), "keep".to_string()]);
    }
    extra.extend(["--note".to_string(), format!("trained by sitsflow for stage '{stage}'")]);
    Ok(crate::train::TrainRequest {
        data,
        distributed: crate::train::Distributed {
            nodes: params.get("nodes").and_then(Value::as_u64).unwrap_or(1) as u32,
            nproc_per_node: params.get("nproc_per_node").and_then(Value::as_u64).unwrap_or(1) as u32,
        },
        test: None,
        classes,
        arch: recipe.arch.clone(),
        out,
        seed: params.get("seed").and_then(Value::as_u64).unwrap_or(seed),
        epochs: params.get("epochs").and_then(Value::as_u64).map(|e| e as u32),
        extra,
    })
}

/// `flag value` for each key of `table` that `params` sets (a stage's params as the
/// recipe's command-line flags), in the table's order.
pub fn flags(params: &Value, table: &[(&str, &str)]) -> Vec<String> {
    // A string goes as it is (`--normalise band`), anything else as JSON (`--hyperparameters {…}`).
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    table.iter().filter_map(|(key, flag)| params.get(*key).map(|v| [flag.to_string(), text(v)])).flatten().collect()
}

/// Removes a previous training's output folder before a recipe writes it again.
pub fn fresh_output(out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing the previous {}", out.display()))?;
    }
    Ok(())
}

/// The progress a recipe's training logs: one line every tenth of the epochs (a run has
/// no bar of its own), `what` saying what the epoch's event reports.
pub fn epoch_logger<'a>(
    stage: &'a str,
    arch: &'a str,
    what: impl Fn(&Value) -> String + Send + 'a,
) -> impl FnMut(u64, u64, &Value) + Send + 'a {
    let mut last_logged = 0;
    move |epoch, epochs, event| {
        if epoch == 1 || epoch >= last_logged + (epochs / 10).max(1) {
            last_logged = epoch;
            log::info!("stage '{stage}' ({arch}): epoch {epoch}/{epochs}, {}", what(event));
        }
    }
}

/// A metric of an epoch's event, for the log (`-` when absent).
pub fn shown(event: &Value, key: &str) -> String {
    event[key].as_f64().map_or("-".into(), |v| format!("{v:.4}"))
}

/// Runs a recipe's training and loads the network it exported, with the report a
/// labeller section shows.
pub fn run_recipe(recipe: &RecipePlan, stage: &str, request: &crate::train::TrainRequest) -> Result<TrainedNetwork> {
    let progress = epoch_logger(stage, &recipe.arch, |e| format!("validation loss {}, OA {}", shown(e, "val_loss"), shown(e, "val_oa")));
    let trained = crate::train::train(request, &recipe.pythonpath, progress)?;
    let model = Model::load(&trained.model, recipe.device).map_err(|e| anyhow!("loading {}: {e}", trained.model.display()))?;
    if let Some(why) = model.fallback_reason() {
        log::info!("stage '{stage}': {why}");
    }
    let report = json!({
        "recipe": recipe.arch,
        "recipe_sha256": recipe.sha256,
        "model": trained.model.display().to_string(),
        "device": model.provider().ort_name(),
        "torch_version": trained.sidecar["torch_version"],
        "training_data_sha256": trained.sidecar["training_data_sha256"],
        "hyperparameters": trained.sidecar["hyperparameters"],
        "parameters": trained.sidecar["parameters"],
        "training": trained.sidecar["training"],
        "validation": trained.metrics,
        "onnx_check": trained.sidecar["onnx_check"],
    });
    Ok(TrainedNetwork { model, report })
}

/// The model's class probabilities for every row of `features`.
pub fn predict(stage: &str, model: &Model, features: &FeatureMatrix) -> Result<Probabilities> {
    let meta = model.metadata().ok_or_else(|| anyhow!("stage '{stage}': {} has no model.json", model.path().display()))?;
    let (t, b) = (meta.input.dates.len(), meta.input.bands.len());
    // Column of each (date, band) of the model's input, from the feature names.
    let mut columns = Vec::with_capacity(t * b);
    for date in &meta.input.dates {
        for band in &meta.input.bands {
            let name = format!("{band}@{date}");
            let j = features.names.iter().position(|n| *n == name).ok_or_else(|| {
                anyhow!("stage '{stage}': the features have no '{name}', which {} was trained on", model.path().display())
            })?;
            columns.push(j);
        }
    }
    let f = features.names.len();
    let n = features.samples as usize;
    let mut tensor = Vec::with_capacity(n * t * b);
    for row in features.data.chunks_exact(f.max(1)).take(n) {
        tensor.extend(columns.iter().map(|&j| row[j]));
    }
    let (data, shape) =
        model.run_batched(&tensor, &[t, b], BATCH_BUDGET_BYTES).map_err(|e| anyhow!("stage '{stage}': {e}"))?;
    let classes: Vec<u16> = meta.output.classes.iter().map(|c| c.code).collect();
    if shape != [n, classes.len()] {
        bail!("stage '{stage}': the model returned shape {shape:?} for {n} samples of {} classes", classes.len());
    }
    Ok(Probabilities { samples: n as u32, classes, data })
}

fn write_samples(path: &Path, set: &TrainingSet) -> Result<()> {
    let names: std::collections::HashMap<u16, &str> = set.class_names.iter().map(|(c, n)| (*c, n.as_str())).collect();
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["label".to_string(), "group".to_string()];
    header.extend(set.features.names.iter().cloned());
    out.write_record(&header)?;
    let f = set.features.names.len();
    let mut record = Vec::with_capacity(f + 2);
    for (i, row) in set.features.data.chunks_exact(f.max(1)).take(set.features.samples as usize).enumerate() {
        record.clear();
        let label = set.labels[i];
        record.push(names.get(&label).map_or_else(|| format!("class {label}"), |n| n.to_string()));
        record.push(set.groups[i].to_string());
        // Missing values (clouds) are empty fields, as the shared convention has them.
        record.extend(row.iter().map(|v| if v.is_finite() { v.to_string() } else { String::new() }));
        out.write_record(&record)?;
    }
    let bytes = out.into_inner().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    sitsflow_core::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_classes(path: &Path, set: &TrainingSet) -> Result<()> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(["code", "name", "color"])?;
    let mut codes: Vec<u16> = set.labels.to_vec();
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let name = set.class_names.iter().find(|(c, _)| *c == code).map_or_else(|| format!("class {code}"), |(_, n)| n.clone());
        out.write_record([code.to_string(), name, "#808080".to_string()])?;
    }
    let bytes = out.into_inner().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    sitsflow_core::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_must_form_a_band_by_date_grid() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_grid("s", &names(&["B04@t00", "B08@t00", "B04@t01", "B08@t01"])).unwrap(), (2, 2));
        let err = check_grid("s", &names(&["B04@t00", "B08@t00", "B04@t01"])).unwrap_err().to_string();
        assert!(err.contains("not a full grid of 2 bands × 2 dates"), "{err}");
        let err = check_grid("s", &names(&["NDVI_mean"])).unwrap_err().to_string();
        assert!(err.contains("not named BAND@DATE"), "{err}");
    }

    #[test]
    fn parameters_are_checked_against_the_recipe_schema() {
        assert!(check_params("lstm", &json!({ "epochs": 20, "hyperparameters": { "hidden": 32 } })).is_ok());
        let errors = check_params("lstm", &json!({ "epochs": 0, "layers": 2 })).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(check_params("lstm", &json!({ "tile": 256 })).is_err());
        assert!(check_params("fg-unet", &json!({ "tile": 256, "overlap": 16, "nproc_per_node": 2, "nodes": 1 })).is_ok());
        assert_eq!(check_params("fg-unet", &json!({ "tile": 8 })).unwrap_err().len(), 1);
        // Time augmentation is the per-pixel networks'; the band normalisation FG-UNet's.
        assert!(check_params("ltae", &json!({ "drop_dates": 0.2, "shift_dates": 1 })).is_ok());
        assert_eq!(check_params("tempcnn", &json!({ "drop_dates": 1.0, "shift_dates": -1 })).unwrap_err().len(), 2);
        assert!(check_params("fg-unet", &json!({ "drop_dates": 0.2 })).is_err());
        assert!(check_params("fg-unet", &json!({ "normalise": "band" })).is_ok());
        assert!(check_params("fg-unet", &json!({ "normalise": "date" })).is_err());
    }

    #[test]
    fn flags_pass_strings_as_they_are_and_the_rest_as_json() {
        let params = json!({ "normalise": "band", "drop_dates": 0.2, "hyperparameters": { "width": 8 } });
        let table = [("normalise", "--normalise"), ("drop_dates", "--drop-dates"), ("hyperparameters", "--hyperparameters"), ("tile", "--tile")];
        assert_eq!(flags(&params, &table), ["--normalise", "band", "--drop-dates", "0.2", "--hyperparameters", r#"{"width":8}"#]);
    }
}

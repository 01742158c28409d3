//! Scene stages: what runs on the whole scene once the chunk stages (cloud masks,
//! features) have written their rasters.
//!
//! - A **clusterer** is fitted on pixels drawn at random (seeded) from its features
//!   raster, then assigns every pixel, chunk by chunk (`<id>.tif`, clusters 1..k).
//! - A **sampler** chooses among candidate pixels (those with a reference class, or
//!   all pixels without a reference; at most `sample_size`, drawn at random) given
//!   their features and the run's class layers so far (`reference` and every earlier
//!   clusterer, sampler or labeller, by stage id). It writes the selection as a
//!   samples CSV in the shared convention and as a raster of the chosen labels.
//! - A **labeller** trains on a sampler's selection, holds out a share of it by
//!   32 px blocks (neighbouring pixels never sit on both sides) for an accuracy
//!   report, and predicts every pixel (`<id>.tif`, and its winning probability in
//!   `<id>_confidence.tif`). The model is kept in `models/` for later runs. A labeller
//!   is a component, or a network a recipe of `models/` trains (`crate::network`):
//!   both go through [`Learner`], so splits, metrics and maps are the same.
//!
//! Fits and selections see samples that fit in memory; assignment and prediction
//! stream chunks on all workers, as the chunk stages do.

use crate::bindings::types::StageKind;
use crate::config::{ActiveLearning, Nomenclature, StageId};
use crate::eval::Confusion;
use crate::inference::Model;
use crate::outputs::{Output, PixelType};
use crate::plan::{Executor, Plan, RecipePlan, Role, StagePlan, Training};
use crate::raster::{ClassRaster, ClassStyle, FeatureRaster, Grid, Window, pixel_centre};
use crate::report::SceneSection;
use crate::runtime::data::{FeatureMatrix, ModelBlob, Probabilities, SampleInput};
use crate::runtime::{CallContext, Plugin, StageCallError, StagePool};
use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Side of the blocks a labeller's hold-out split is drawn by.
pub const HOLDOUT_BLOCK_PX: usize = 32;

/// What the scene stages produced.
#[derive(Default)]
pub struct SceneResults {
    pub outputs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub sections: Vec<SceneSection>,
}

/// A sampler's selection, kept for the labellers that train on it.
struct Selected {
    /// Pixel indices (row-major over the grid), ascending.
    pixels: Vec<u64>,
    labels: Vec<u16>,
}

/// Everything the scene stages share.
pub struct Scene<'a> {
    pub plan: &'a Plan,
    /// The calendar years of the series, in order (per-year features have one raster each).
    pub years: Vec<i32>,
    pub grid: &'a Grid,
    pub chunks: &'a [Window],
    pub chunk_size: usize,
    pub workers: usize,
    pub partial_dir: &'a Path,
    /// Where the run's files are staged until the run is published (`crate::rundir`):
    /// scene stages read the rasters of earlier stages from here and write here.
    pub out_dir: &'a Path,
    pub stage_nanos: &'a [AtomicU64],
    /// The pipeline's ONNX models, for stages that call `infer`.
    pub models: std::sync::Arc<crate::inference::ModelSet>,
}

impl Scene<'_> {
    /// The staging folder of the run directory (see `out_dir`).
    fn run_dir(&self) -> &Path {
        self.out_dir
    }

    fn raster_of(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.tif"))
    }

    fn pixels(&self) -> u64 {
        (self.grid.width * self.grid.height) as u64
    }

    /// The chunk holding a pixel, and its offset inside it.
    fn locate(&self, pixel: u64) -> (usize, usize) {
        let (row, col) = ((pixel / self.grid.width as u64) as usize, (pixel % self.grid.width as u64) as usize);
        let per_row = self.grid.width.div_ceil(self.chunk_size);
        let chunk = (row / self.chunk_size) * per_row + col / self.chunk_size;
        let w = self.chunks[chunk];
        debug_assert!(row >= w.row && col >= w.col && row < w.row + w.rows && col < w.col + w.cols);
        (chunk, (row - w.row) * w.cols + (col - w.col))
    }

    /// Reads the features of the given pixels (ascending), one row each.
    fn gather_features(&self, path: &Path, pixels: &[u64]) -> Result<FeatureMatrix> {
        let raster = FeatureRaster::open(path)?;
        let f = raster.names.len();
        let mut data = vec![0f32; pixels.len() * f];
        self.gather(pixels, |window| raster.read(window), |values, offset, i| {
            data[i * f..(i + 1) * f].copy_from_slice(&values[offset * f..(offset + 1) * f]);
        })?;
        Ok(FeatureMatrix { samples: pixels.len() as u32, names: raster.names, data })
    }

    /// Reads a class raster at the given pixels (ascending).
    fn gather_classes(&self, path: &Path, pixels: &[u64]) -> Result<Vec<u32>> {
        let raster = ClassRaster::open(path)?;
        let mut out = vec![0u32; pixels.len()];
        self.gather(pixels, |window| raster.read(window), |values, offset, i| out[i] = values[offset] as u32)?;
        Ok(out)
    }

    /// Reads each chunk that holds any of the pixels once and hands `take` the chunk's
    /// values, the pixel's offset in the chunk and its position in the list, so the
    /// caller copies its rows out while the chunk is read: only one chunk is held at a
    /// time, whatever the number of pixels.
    fn gather<T>(
        &self,
        pixels: &[u64],
        read: impl Fn(Window) -> Result<Vec<T>>,
        mut take: impl FnMut(&[T], usize, usize),
    ) -> Result<()> {
        let mut by_chunk: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, &p) in pixels.iter().enumerate() {
            let (chunk, offset) = self.locate(p);
            by_chunk.entry(chunk).or_default().push((i, offset));
        }
        for (chunk, members) in &by_chunk {
            let values = read(self.chunks[*chunk])?;
            for &(i, offset) in members {
                take(&values, offset, i);
            }
        }
        Ok(())
    }

    /// Runs `work` on every chunk on the workers and hands each result, in any order, to
    /// `write` on this thread.
    fn per_chunk<T: Send>(
        &self,
        work: impl Fn(usize, Window) -> Result<T> + Sync,
        mut write: impl FnMut(usize, Window, T) -> Result<()>,
    ) -> Result<()> {
        let items: Vec<usize> = (0..self.chunks.len()).collect();
        let outcome = crate::chunks::for_each(
            self.workers,
            &items,
            crate::chunks::OnFailure::Stop,
            || Ok(()),
            |_, i| work(i, self.chunks[i]),
            |i, t| {
                write(i, self.chunks[i], t)?;
                crate::fail_point!("scene::chunk_written");
                Ok(())
            },
        );
        if let Some((i, e)) = outcome.failures.into_iter().next() {
            return Err(e.context(format!("chunk {i} ({})", self.chunks[i])));
        }
        outcome.error.map_or(Ok(()), Err)
    }

    /// A seeded generator for one stage (its id mixed into the run's seed).
    fn rng(&self, stage: &StagePlan, purpose: &str) -> rand_chacha::ChaCha8Rng {
        let mix = crate::hash::sha256_hex(format!("{}:{}:{purpose}", self.plan.seed, stage.id).as_bytes());
        let seed = u64::from_str_radix(&mix[..16], 16).expect("hex");
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }
}

fn call_error(stage: &StagePlan, what: &str) -> impl Fn(StageCallError) -> anyhow::Error {
    let shown = format!("stage '{}' ({}) {what}", stage.id, stage.reference());
    move |e| anyhow!("{shown}: {e}")
}

fn context(stage: &StagePlan, what: &str) -> CallContext {
    CallContext { stage: stage.id.to_string(), chunk: what.to_string() }
}

/// Distinct colours for cluster ids (golden-angle hues).
fn cluster_style(k: usize) -> ClassStyle {
    let classes = (1..=k)
        .map(|c| {
            let h = (c as f64 * 137.508) % 360.0;
            let (r, g, b) = hsv(h, 0.65, 0.9);
            (c as u16, format!("cluster {c}"), format!("#{r:02x}{g:02x}{b:02x}"))
        })
        .collect();
    ClassStyle { classes }
}

fn hsv(h: f64, s: f64, v: f64) -> (u8, u8, u8) {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let to = |f: f64| ((f + m) * 255.0).round() as u8;
    (to(r), to(g), to(b))
}

/// Keeps a model in `<run>/models/` with a JSON sidecar naming its format and stage.
fn save_model(run_dir: &Path, stage: &StagePlan, model: &ModelBlob, report: &Value) -> Result<PathBuf> {
    let dir = run_dir.join("models");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.model", stage.id));
    crate::fsutil::write_atomic(&path, &model.data)?;
    let sidecar = json!({
        "format": model.format,
        "stage": stage.id.to_string(),
        "plugin": stage.reference(),
        "plugin_sha256": stage.sha256(),
        "bytes": model.data.len(),
        "sha256": crate::hash::sha256_hex(&model.data),
        "report": report,
    });
    crate::fsutil::write_atomic(&dir.join(format!("{}.json", stage.id)), serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    Ok(path)
}

fn parse_report(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Runs the plan's scene stages in order.
pub fn run(scene: &Scene, reference: Option<(&Path, &Nomenclature)>) -> Result<SceneResults> {
    let mut results = SceneResults::default();
    let mut selections: HashMap<String, Selected> = HashMap::new();
    // Class layers offered to samplers: `reference` plus each scene stage's class raster.
    let mut layers: Vec<(String, PathBuf)> = Vec::new();
    if let Some((path, _)) = reference {
        layers.push(("reference".into(), path.to_path_buf()));
    }
    // Samplers that answer a labeller's active-learning queries run inside its loop only.
    let queries = scene.plan.query_samplers();
    for (s, stage) in scene.plan.stages.iter().enumerate() {
        if stage.is_chunk_stage() || queries.contains(&stage.id.as_str()) {
            continue;
        }
        let started = Instant::now();
        log::info!("stage '{}' ({}, {}) on the whole scene", stage.id, stage.kind_name(), stage.reference());
        let section = match (&stage.role, &stage.executor) {
            (Role::Labeller { input, year, holdout, training }, Executor::Recipe(recipe)) => {
                let class_names = reference.map(|r| r.1.classes.iter().map(|c| (c.code, c.name.clone())).collect()).unwrap_or_default();
                let learner = Learner::Network { recipe, class_names };
                let plan = LabellerPlan { stage, input, year: *year, holdout: *holdout };
                let fit = match training {
                    Training::Stored(path) => stored_network(scene, stage, recipe, path)?,
                    // A network learns from the sampler's selection (no active learning).
                    Training::Samples(samples) | Training::ActiveLearning { samples, .. } => {
                        fit_on_selection(scene, &plan, &learner, selected(&selections, stage, samples)?)?
                    }
                };
                label(scene, &plan, &learner, fit, reference.map(|r| r.1), &mut results)?
            }
            (_, Executor::Recipe(_)) => bail!("stage '{}': only labellers are trained by recipes", stage.id),
            (role, Executor::Plugin(plugin)) => {
                let pool = StagePool::with_models(plugin.clone(), stage.limits, scene.models.clone());
                match role {
                    Role::Clusterer { sample_size, .. } => cluster(scene, stage, *sample_size, &pool, &mut results)?,
                    Role::Sampler { sample_size, .. } => {
                        let (section, selected) = sample(scene, stage, *sample_size, &pool, &layers, reference.map(|r| r.1), &mut results)?;
                        selections.insert(stage.id.to_string(), selected);
                        section
                    }
                    Role::Labeller { input, year, holdout, training } => {
                        let plan = LabellerPlan { stage, input, year: *year, holdout: *holdout };
                        let fit = match training {
                            Training::Stored(path) => stored_blob(stage, plugin, path)?,
                            Training::ActiveLearning { samples, learning } => {
                                let selected = selected(&selections, stage, samples)?;
                                let Some(query) = scene.plan.stages.iter().find(|q| q.id == learning.query) else {
                                    bail!("stage '{}': its query stage '{}' is not in the pipeline", stage.id, learning.query);
                                };
                                let Some((reference_path, _)) = reference else {
                                    bail!("stage '{}': active learning asks the reference map for labels, and the pipeline has no [reference]", stage.id);
                                };
                                active_learning(scene, &plan, learning, &pool, query, selected, reference_path)?
                            }
                            Training::Samples(samples) => {
                                fit_on_selection(scene, &plan, &Learner::Stage(&pool), selected(&selections, stage, samples)?)?
                            }
                        };
                        label(scene, &plan, &Learner::Stage(&pool), fit, reference.map(|r| r.1), &mut results)?
                    }
                    Role::Decoder { input } => decode(scene, stage, input, &pool, reference.map(|r| r.1), &mut results)?,
                    Role::CloudMask { .. } | Role::Features { .. } => bail!("stage '{}': chunk stages do not run on a scene", stage.id),
                }
            }
        };
        finish_stage(scene, s, stage, started, section, &mut layers, &mut results);
    }
    Ok(results)
}

/// A labeller with what its role gives it.
struct LabellerPlan<'a> {
    stage: &'a StagePlan,
    /// The features stage it reads.
    input: &'a StageId,
    /// The year of per-year features it trains on (`None`: every year).
    year: Option<i32>,
    /// The share of its samples held out for its accuracy report.
    holdout: f64,
}

/// After scene stage `s`: its class rasters become layers for the samplers after it,
/// its section goes into the report, its time into the manifest.
fn finish_stage(
    scene: &Scene,
    s: usize,
    stage: &StagePlan,
    started: Instant,
    section: SceneSection,
    layers: &mut Vec<(String, PathBuf)>,
    results: &mut SceneResults,
) {
    push_layers(scene, stage, layers);
    results.sections.push(section);
    scene.stage_nanos[s].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    crate::fail_point!("scene::stage_done");
}

/// The selection of the sampler `samples` that a labeller trains on.
fn selected<'a>(selections: &'a HashMap<String, Selected>, stage: &StagePlan, samples: &StageId) -> Result<&'a Selected> {
    selections
        .get(samples.as_str())
        .ok_or_else(|| anyhow!("stage '{}': its sampler '{samples}' has made no selection before it", stage.id))
}

/// A plugin labeller's model stored by an earlier run (`models/<id>.model` and its
/// `.json` sidecar naming the format and the plugin that trained it).
fn stored_blob(stage: &StagePlan, plugin: &Plugin, path: &Path) -> Result<Fit> {
    let data = std::fs::read(path).with_context(|| format!("stage '{}': reading the model {}", stage.id, path.display()))?;
    let sidecar_path = path.with_extension("json");
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(&sidecar_path)
            .with_context(|| format!("stage '{}': the model's sidecar {} is missing", stage.id, sidecar_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", sidecar_path.display()))?;
    let format = sidecar["format"].as_str().ok_or_else(|| anyhow!("{}: no \"format\"", sidecar_path.display()))?.to_string();
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
    if crate::hash::sha256_hex(&data) != sidecar["sha256"].as_str().unwrap_or_default() {
        bail!("stage '{}': {} does not match the sha256 its sidecar records", stage.id, path.display());
    }
    Ok(Fit {
        model: Trained::Blob(ModelBlob { format, data }),
        training: json!({ "stored_model": path.display().to_string(), "trained_by": trained_by, "report": sidecar["report"] }),
        held_out: Value::Null,
        split: json!({ "stored_model": path.display().to_string() }),
        training_years: Value::Null,
        learning_curve: Value::Null,
    })
}

/// A recipe labeller's network stored by an earlier run (`models/<id>/model.onnx` with
/// its `model.json`), copied into this run's `models/<id>/` and loaded from there.
fn stored_network(scene: &Scene, stage: &StagePlan, recipe: &RecipePlan, path: &Path) -> Result<Fit> {
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

/// Offers a scene stage's class rasters to the samplers after it.
fn push_layers(scene: &Scene, stage: &StagePlan, layers: &mut Vec<(String, PathBuf)>) {
    let yearly = match stage.role {
        Role::Labeller { .. } => reads_per_year(scene, stage),
        Role::Decoder { .. } => true,
        _ => false,
    };
    if yearly {
        for y in &scene.years {
            let name = output_name(stage, Some(*y));
            layers.push((name.clone(), scene.raster_of(&name)));
        }
    } else {
        layers.push((stage.id.to_string(), scene.raster_of(stage.id.as_str())));
    }
}

/// What trains and predicts for a labeller stage.
enum Learner<'a> {
    /// Its component's `train` and `predict`, in the sandbox.
    Stage(&'a StagePool),
    /// A network a recipe of `models/` trains (subprocess), run by ONNX Runtime.
    Network { recipe: &'a RecipePlan, class_names: Vec<(u16, String)> },
}

/// A labeller's trained model.
enum Trained {
    /// A component's model blob (saved as `models/<id>.model`).
    Blob(ModelBlob),
    /// An exported network (its folder `models/<id>/` written by the recipe).
    Network(Arc<Model>),
}

impl Learner<'_> {
    /// Trains on `train` (rows at `train_pixels`, which group the recipe's validation
    /// split by hold-out block); returns the model and the learner's training report.
    fn train(&self, scene: &Scene, stage: &StagePlan, train: &FeatureMatrix, labels: &[u16], train_pixels: &[u64]) -> Result<(Trained, Value)> {
        match self {
            Learner::Stage(pool) => {
                let trained = pool
                    .with(|i| i.train(&context(stage, "train"), train, labels, &stage.params_json()))
                    .map_err(call_error(stage, &format!("training on {} samples", train.samples)))?;
                Ok((Trained::Blob(trained.model), parse_report(&trained.report)))
            }
            Learner::Network { recipe, class_names } => {
                let groups: Vec<u64> = train_pixels.iter().map(|&p| block_of(scene.grid.width, p)).collect();
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

    fn predict(&self, stage: &StagePlan, model: &Trained, features: &FeatureMatrix, what: &str) -> Result<Probabilities> {
        let p = match (self, model) {
            (Learner::Stage(pool), Trained::Blob(blob)) => pool
                .with(|i| i.predict(&context(stage, what), blob, features, &stage.params_json()))
                .map_err(call_error(stage, &format!("predicting {what}")))?,
            (Learner::Network { .. }, Trained::Network(model)) => {
                crate::network::predict(stage.id.as_str(), model, features).with_context(|| format!("predicting {what}"))?
            }
            _ => unreachable!("a learner predicts with the model it trained"),
        };
        check_probabilities(stage, &p, features.samples as usize)?;
        Ok(p)
    }
}

/// The hold-out block (32 px square) of a pixel, numbered row-major.
fn block_of(grid_width: usize, pixel: u64) -> u64 {
    let (row, col) = (pixel / grid_width as u64, pixel % grid_width as u64);
    let blocks_per_row = grid_width.div_ceil(HOLDOUT_BLOCK_PX) as u64;
    row / HOLDOUT_BLOCK_PX as u64 * blocks_per_row + col / HOLDOUT_BLOCK_PX as u64
}

/// Whether a stage reads a per-year features stage.
fn reads_per_year(scene: &Scene, stage: &StagePlan) -> bool {
    stage.role.input().is_some_and(|i| scene.plan.stages.iter().any(|s| &s.id == i && s.role.per_year()))
}

/// The features raster a stage works on: its input's, or that input's raster of the
/// stage's `year`.
fn input_raster(scene: &Scene, stage: &StagePlan) -> Option<PathBuf> {
    let input = stage.role.input()?;
    Some(match (reads_per_year(scene, stage), stage.role.year()) {
        (true, Some(year)) => scene.raster_of(&format!("{input}_{year}")),
        // A sampler over per-year features without a year works on its layers alone.
        (true, None) => return None,
        (false, _) => scene.raster_of(input.as_str()),
    })
}

/// The features rasters a labeller predicts on, with the year each is for.
fn prediction_rasters(scene: &Scene, labeller: &LabellerPlan) -> Vec<(Option<i32>, PathBuf)> {
    let input = labeller.input;
    if reads_per_year(scene, labeller.stage) {
        scene.years.iter().map(|y| (Some(*y), scene.raster_of(&format!("{input}_{y}")))).collect()
    } else {
        vec![(None, scene.raster_of(input.as_str()))]
    }
}

/// The name of a stage's output for a year (or its only output).
fn output_name(stage: &StagePlan, year: Option<i32>) -> String {
    match year {
        Some(y) => format!("{}_{y}", stage.id),
        None => stage.id.to_string(),
    }
}

fn cluster(scene: &Scene, stage: &StagePlan, sample_size: u64, pool: &StagePool, results: &mut SceneResults) -> Result<SceneSection> {
    let Some(features) = input_raster(scene, stage) else {
        bail!("stage '{}': a clusterer needs a features raster (of one year, for per-year features)", stage.id);
    };
    let n = scene.pixels();
    let m = sample_size.min(n);
    let mut rng = scene.rng(stage, "fit-sample");
    let mut pixels: Vec<u64> = rand::seq::index::sample(&mut rng, n as usize, m as usize).into_iter().map(|p| p as u64).collect();
    pixels.sort_unstable();
    let sample = scene.gather_features(&features, &pixels)?;
    let params = stage.params_json();
    let fitted = pool
        .with(|i| i.fit(&context(stage, "fit"), &sample, &params))
        .map_err(call_error(stage, &format!("fitting on {m} pixels")))?;
    let report = parse_report(&fitted.report);
    results.files.push(save_model(scene.run_dir(), stage, &fitted.model, &report)?);

    let names = sample.names.clone();
    drop(sample);
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut out = Output::new(scene.partial_dir, scene.run_dir(), stage.id.as_str(), scene.grid, PixelType::U16, None);
    let model = fitted.model;
    scene.per_chunk(
        |i, window| {
            let raster = FeatureRaster::open(&features)?;
            let matrix = FeatureMatrix { samples: window.pixels() as u32, names: names.clone(), data: raster.read(window)? };
            let assignment = pool
                .with(|inst| inst.assign(&context(stage, &format!("chunk {i}")), &model, &matrix, &params))
                .map_err(call_error(stage, &format!("assigning chunk {i} ({window})")))?;
            if assignment.clusters.len() != window.pixels() {
                bail!("stage '{}' returned {} clusters for {} pixels", stage.id, assignment.clusters.len(), window.pixels());
            }
            // Cluster c is written as c + 1: 0 stays "no cluster" (rows with missing features).
            Ok(assignment.clusters.iter().map(|&c| if c == u32::MAX { 0 } else { (c + 1).min(u16::MAX as u32) as u16 }).collect::<Vec<u16>>())
        },
        |i, window, labels| {
            for &c in &labels {
                *counts.entry(c as u32).or_default() += 1;
            }
            out.raster.write_chunk(i, window, &[stage.id.to_string()], &labels)
        },
    )?;
    let k = counts.keys().copied().max().unwrap_or(0) as usize;
    out.raster.set_style(cluster_style(k));
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    results.outputs.push(out.finish(&all)?);
    Ok(SceneSection {
        stage: stage.id.to_string(),
        kind: "clusterer",
        plugin: stage.reference(),
        summary: json!({
            "fit_pixels": m,
            "features": names,
            "pixels_per_cluster": counts.iter().filter(|(c, _)| **c > 0).map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "unassigned_pixels": counts.get(&0).copied().unwrap_or(0),
            "report": report,
        }),
    })
}

fn sample(
    scene: &Scene,
    stage: &StagePlan,
    sample_size: u64,
    pool: &StagePool,
    layers: &[(String, PathBuf)],
    nomenclature: Option<&Nomenclature>,
    results: &mut SceneResults,
) -> Result<(SceneSection, Selected)> {
    // Candidates: pixels with a reference class (all pixels without a reference).
    let reference = layers.iter().find(|(n, _)| n == "reference").map(|(_, p)| p.clone());
    let mut candidates: Vec<u64> = Vec::new();
    match &reference {
        Some(path) => {
            let raster = ClassRaster::open(path)?;
            for window in scene.chunks {
                let codes = raster.read(*window)?;
                for (o, &c) in codes.iter().enumerate() {
                    if c != 0 {
                        let (r, col) = (window.row + o / window.cols, window.col + o % window.cols);
                        candidates.push((r * scene.grid.width + col) as u64);
                    }
                }
            }
            candidates.sort_unstable();
        }
        None => candidates = (0..scene.pixels()).collect(),
    }
    let total_candidates = candidates.len();
    if candidates.len() as u64 > sample_size {
        let mut rng = scene.rng(stage, "candidates");
        let mut keep: Vec<u64> = rand::seq::index::sample(&mut rng, candidates.len(), sample_size as usize)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        keep.sort_unstable();
        candidates = keep;
    }
    if candidates.is_empty() {
        bail!("stage '{}': no candidate pixels (the reference map has no class on this scene)", stage.id);
    }
    let features = match input_raster(scene, stage) {
        Some(path) => scene.gather_features(&path, &candidates)?,
        None => FeatureMatrix { samples: candidates.len() as u32, names: Vec::new(), data: Vec::new() },
    };
    let mut input_layers = Vec::new();
    for (name, path) in layers {
        input_layers.push((name.clone(), scene.gather_classes(path, &candidates)?));
    }
    let positions = candidates
        .iter()
        .map(|&p| ((p / scene.grid.width as u64) as u32, (p % scene.grid.width as u64) as u32))
        .collect();
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "select").next_u64()
    };
    let mut input = SampleInput { features, layers: input_layers, probabilities: None, positions, seed };
    let params = stage.params_json();
    let selection = pool
        .with(|i| i.select(&context(stage, "select"), &mut input, &params))
        .map_err(call_error(stage, &format!("selecting among {} candidates", candidates.len())))?;
    if selection.indices.len() != selection.labels.len() {
        bail!("stage '{}' returned {} indices but {} labels", stage.id, selection.indices.len(), selection.labels.len());
    }
    if let Some(bad) = selection.indices.iter().find(|&&i| i as usize >= candidates.len()) {
        bail!("stage '{}' chose candidate {bad}, but there are {}", stage.id, candidates.len());
    }
    let mut chosen: Vec<(u64, u16, usize)> =
        selection.indices.iter().zip(&selection.labels).map(|(&i, &l)| (candidates[i as usize], l, i as usize)).collect();
    chosen.sort_unstable();
    chosen.dedup_by_key(|c| c.0);
    let report = parse_report(&selection.report);

    // The samples CSV (shared convention: label name, id, group, then features).
    let names: HashMap<u16, String> =
        nomenclature.map(|n| n.classes.iter().map(|c| (c.code, c.name.clone())).collect()).unwrap_or_default();
    let csv_path = scene.run_dir().join(format!("{}.csv", stage.id));
    write_samples_csv(scene, &csv_path, &input.features, &chosen, &names)?;
    results.files.push(csv_path);

    // The raster of chosen labels.
    let mut per_chunk: BTreeMap<usize, Vec<(usize, u16)>> = BTreeMap::new();
    for &(p, l, _) in &chosen {
        let (chunk, offset) = scene.locate(p);
        per_chunk.entry(chunk).or_default().push((offset, l));
    }
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let mut out = Output::new(scene.partial_dir, scene.run_dir(), stage.id.as_str(), scene.grid, PixelType::U16, style);
    for (i, window) in scene.chunks.iter().enumerate() {
        let mut labels = vec![0u16; window.pixels()];
        for &(offset, l) in per_chunk.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
            labels[offset] = l;
        }
        out.raster.write_chunk(i, *window, &[stage.id.to_string()], &labels)?;
    }
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    results.outputs.push(out.finish(&all)?);

    let mut per_class: BTreeMap<u16, u64> = BTreeMap::new();
    for &(_, l, _) in &chosen {
        *per_class.entry(l).or_default() += 1;
    }
    let section = SceneSection {
        stage: stage.id.to_string(),
        kind: "sampler",
        plugin: stage.reference(),
        summary: json!({
            "candidates": input.features.samples,
            "candidate_pixels_in_scene": total_candidates,
            "layers": layers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "selected": chosen.len(),
            "selected_per_class": per_class.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "samples_csv": format!("{}.csv", stage.id),
            "report": report,
        }),
    };
    let selected = Selected { pixels: chosen.iter().map(|c| c.0).collect(), labels: chosen.iter().map(|c| c.1).collect() };
    Ok((section, selected))
}

fn write_samples_csv(
    scene: &Scene,
    path: &Path,
    features: &FeatureMatrix,
    chosen: &[(u64, u16, usize)],
    names: &HashMap<u16, String>,
) -> Result<()> {
    let mut text = String::from("label,id,group,row,col");
    let georef = scene.grid.geo_transform.is_some();
    if georef {
        text.push_str(",x,y");
    }
    for n in &features.names {
        text.push(',');
        text.push_str(n);
    }
    text.push('\n');
    let f = features.names.len();
    let blocks_per_row = scene.grid.width.div_ceil(HOLDOUT_BLOCK_PX);
    for &(p, l, i) in chosen {
        let (row, col) = ((p / scene.grid.width as u64) as usize, (p % scene.grid.width as u64) as usize);
        let label = names.get(&l).cloned().unwrap_or_else(|| l.to_string());
        let group = (row / HOLDOUT_BLOCK_PX) * blocks_per_row + col / HOLDOUT_BLOCK_PX;
        text.push_str(&format!("{label},{p},{group},{row},{col}"));
        if let Some(gt) = &scene.grid.geo_transform {
            let (x, y) = pixel_centre(gt, row, col);
            text.push_str(&format!(",{x},{y}"));
        }
        for k in 0..f {
            let v = features.data[i * f + k];
            if v.is_nan() {
                text.push(',');
            } else {
                text.push_str(&format!(",{v}"));
            }
        }
        text.push('\n');
    }
    Ok(crate::fsutil::write_atomic(path, text.as_bytes())?)
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

/// The most probable class of each row.
fn argmax(p: &Probabilities) -> (Vec<u16>, Vec<f32>) {
    let k = p.classes.len();
    let mut labels = Vec::with_capacity(p.samples as usize);
    let mut best = Vec::with_capacity(p.samples as usize);
    for row in p.data.chunks_exact(k.max(1)) {
        let (j, v) = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc });
        labels.push(if v.is_finite() { p.classes[j] } else { 0 });
        best.push(v);
    }
    (labels, best)
}

/// Checks a labeller's probabilities before anything is written from them: the shape,
/// at least one class, and class codes that are usable (not 0, which is no data in a
/// class map) and distinct.
fn check_probabilities(stage: &StagePlan, p: &Probabilities, samples: usize) -> Result<()> {
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
    Ok(())
}

/// Whether a pixel falls in the held-out share: decided per 32 px block, seeded.
fn held_out(seed: u64, grid_width: usize, pixel: u64, share: f64) -> bool {
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
struct Fit {
    model: Trained,
    /// The stage's own training report.
    training: Value,
    /// `{ "metrics", "confusion" }` on held-out samples, or null.
    held_out: Value,
    split: Value,
    training_years: Value,
    /// Active learning's curve, or null.
    learning_curve: Value,
}

/// Features of `pixels` from each raster, stacked (rows repeat the pixels per raster).
fn stacked_features(scene: &Scene, stage: &StagePlan, rasters: &[&PathBuf], pixels: &[u64]) -> Result<FeatureMatrix> {
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

/// The rows of a matrix where `keep` is true.
fn rows_where(m: &FeatureMatrix, labels: &[u16], keep: impl Fn(usize) -> bool) -> (FeatureMatrix, Vec<u16>) {
    let f = m.names.len();
    let mut out = FeatureMatrix { samples: 0, names: m.names.clone(), data: Vec::new() };
    let mut out_labels = Vec::new();
    for i in 0..m.samples as usize {
        if keep(i) {
            out.data.extend_from_slice(&m.data[i * f..(i + 1) * f]);
            out_labels.push(labels[i]);
            out.samples += 1;
        }
    }
    (out, out_labels)
}

fn train_and_test(
    scene: &Scene,
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

fn held_out_json(confusion: &Option<Confusion>) -> Value {
    confusion.as_ref().map_or(Value::Null, |c| json!({ "metrics": c.metrics(), "confusion": c }))
}

/// Trains on a sampler's selection, holding out a share by blocks.
fn fit_on_selection(scene: &Scene, labeller: &LabellerPlan, learner: &Learner, selected: &Selected) -> Result<Fit> {
    let stage = labeller.stage;
    // Training features: of the stage's year, or of every year stacked (a multi-year
    // training set: each sample pixel once per year, with its one label).
    let rasters = prediction_rasters(scene, labeller);
    let training: Vec<&PathBuf> = match labeller.year {
        Some(y) => rasters.iter().filter(|(year, _)| *year == Some(y)).map(|(_, p)| p).collect(),
        None => rasters.iter().map(|(_, p)| p).collect(),
    };
    let samples = stacked_features(scene, stage, &training, &selected.pixels)?;
    let pixels: Vec<u64> = training.iter().flat_map(|_| selected.pixels.iter().copied()).collect();
    let labels: Vec<u16> = training.iter().flat_map(|_| selected.labels.iter().copied()).collect();
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "holdout").next_u64()
    };
    let test: Vec<bool> = pixels.iter().map(|&p| held_out(seed, scene.grid.width, p, labeller.holdout)).collect();
    let (train, train_labels) = rows_where(&samples, &labels, |i| !test[i]);
    let train_pixels: Vec<u64> = pixels.iter().zip(&test).filter(|(_, t)| !**t).map(|(p, _)| *p).collect();
    let (test_set, test_labels) = rows_where(&samples, &labels, |i| test[i]);
    let (model, training_report, confusion) =
        train_and_test(scene, stage, learner, (&train, &train_labels, &train_pixels), &test_set, &test_labels)?;
    Ok(Fit {
        model,
        training: training_report,
        held_out: held_out_json(&confusion),
        split: json!({
            "holdout": labeller.holdout,
            "grouped_by": format!("{HOLDOUT_BLOCK_PX} px blocks"),
            "train_samples": train.samples,
            "test_samples": test_set.samples,
        }),
        training_years: match labeller.year {
            Some(y) => json!([y]),
            None if training.len() > 1 => json!(scene.years),
            None => Value::Null,
        },
        learning_curve: Value::Null,
    })
}

/// Active learning (seed 000, section 2): from a sparse labelled set, rounds of train →
/// score an unlabelled pool → query the sampler's batch → the reference map labels it.
/// Held-out blocks (never queried) measure each round: the learning curve.
fn active_learning(
    scene: &Scene,
    labeller: &LabellerPlan,
    al: &ActiveLearning,
    pool: &StagePool,
    query: &StagePlan,
    selected: &Selected,
    reference: &Path,
) -> Result<Fit> {
    let stage = labeller.stage;
    let Some(features) = input_raster(scene, stage).or_else(|| prediction_rasters(scene, labeller).first().map(|r| r.1.clone())) else {
        bail!("stage '{}': no features raster to learn from", stage.id);
    };
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "holdout").next_u64()
    };
    // Labelled pixels of the reference, split by held-out blocks.
    let oracle = ClassRaster::open(reference)?;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for window in scene.chunks {
        let codes = oracle.read(*window)?;
        for (o, &c) in codes.iter().enumerate() {
            if c != 0 {
                let p = ((window.row + o / window.cols) * scene.grid.width + window.col + o % window.cols) as u64;
                if held_out(seed, scene.grid.width, p, labeller.holdout.max(0.05)) { inside.push(p) } else { outside.push(p) }
            }
        }
    }
    let mut rng = scene.rng(stage, "pool");
    let mut draw = |from: &[u64], n: u64| -> Vec<u64> {
        let mut picked: Vec<u64> = rand::seq::index::sample(&mut rng, from.len(), (n as usize).min(from.len()))
            .into_iter()
            .map(|i| from[i])
            .collect();
        picked.sort_unstable();
        picked
    };
    let labelled_set: std::collections::HashSet<u64> = selected.pixels.iter().copied().collect();
    let candidates: Vec<u64> = outside.into_iter().filter(|p| !labelled_set.contains(p)).collect();
    let unlabelled = draw(&candidates, al.pool);
    let evaluation = draw(&inside, al.pool);
    if unlabelled.is_empty() || evaluation.is_empty() {
        bail!("stage '{}': the reference map labels too few pixels for active learning", stage.id);
    }
    let pool_features = scene.gather_features(&features, &unlabelled)?;
    let pool_truth: Vec<u16> = scene.gather_classes(reference, &unlabelled)?.into_iter().map(|c| c as u16).collect();
    let eval_features = scene.gather_features(&features, &evaluation)?;
    let eval_truth: Vec<u16> = scene.gather_classes(reference, &evaluation)?.into_iter().map(|c| c as u16).collect();
    // The initial labelled set, outside the held-out blocks only.
    let initial: Vec<usize> = (0..selected.pixels.len()).filter(|&i| !held_out(seed, scene.grid.width, selected.pixels[i], labeller.holdout.max(0.05))).collect();
    let initial_pixels: Vec<u64> = initial.iter().map(|&i| selected.pixels[i]).collect();
    let mut train = scene.gather_features(&features, &initial_pixels)?;
    let mut train_labels: Vec<u16> = initial.iter().map(|&i| selected.labels[i]).collect();
    let mut train_pixels = initial_pixels;
    let f = train.names.len();
    if pool_features.names != train.names {
        bail!("stage '{}': features differ between the pool and the labelled set", stage.id);
    }
    let mut queried = vec![false; unlabelled.len()];
    let positions: Vec<(u32, u32)> =
        unlabelled.iter().map(|&p| ((p / scene.grid.width as u64) as u32, (p % scene.grid.width as u64) as u32)).collect();
    let learner = Learner::Stage(pool);
    let query_plugin = query.plugin().ok_or_else(|| anyhow!("stage '{}': the query stage '{}' is not a component", stage.id, query.id))?;
    let query_pool = StagePool::with_models(query_plugin.clone(), query.limits, scene.models.clone());
    let query_params = query.params_json();
    let mut curve = Vec::new();
    let mut last = None;
    for round in 0..=al.rounds {
        let (model, report, confusion) =
            train_and_test(scene, stage, &learner, (&train, &train_labels, &train_pixels), &eval_features, &eval_truth)?;
        let metrics = confusion.as_ref().expect("the evaluation set is not empty").metrics();
        log::info!(
            "stage '{}' active learning round {round}: {} labels, held-out OA {:.4}, kappa {:.4}",
            stage.id,
            train.samples,
            metrics.overall_accuracy,
            metrics.kappa
        );
        curve.push(json!([round, train.samples, (metrics.overall_accuracy * 1e4).round() / 1e4, (metrics.kappa * 1e4).round() / 1e4, (metrics.macro_f1 * 1e4).round() / 1e4]));
        if round == al.rounds {
            last = Some((model, report, confusion));
            break;
        }
        // Score the rest of the pool and ask the query stage for a batch.
        let open: Vec<usize> = (0..unlabelled.len()).filter(|&i| !queried[i]).collect();
        if open.is_empty() {
            last = Some((model, report, confusion));
            break;
        }
        let (open_features, _) = rows_where(&pool_features, &pool_truth, |i| !queried[i]);
        let probabilities = learner.predict(stage, &model, &open_features, &format!("the pool in round {round}"))?;
        let mut input = SampleInput {
            features: open_features,
            layers: Vec::new(),
            probabilities: Some(probabilities),
            positions: open.iter().map(|&i| positions[i]).collect(),
            seed: seed.wrapping_add(round as u64),
        };
        let batch = query_pool
            .with(|i| i.select(&context(query, &format!("round {round}")), &mut input, &query_params))
            .map_err(call_error(query, &format!("querying round {round}")))?;
        if batch.indices.is_empty() {
            last = Some((model, report, confusion));
            break;
        }
        for &k in &batch.indices {
            let i = *open.get(k as usize).ok_or_else(|| anyhow!("stage '{}' chose candidate {k} of {}", query.id, open.len()))?;
            if std::mem::replace(&mut queried[i], true) {
                continue;
            }
            // The oracle (the reference map) answers.
            train.data.extend_from_slice(&pool_features.data[i * f..(i + 1) * f]);
            train.samples += 1;
            train_labels.push(pool_truth[i]);
            train_pixels.push(unlabelled[i]);
        }
    }
    let (model, report, confusion) = last.expect("the loop ends with a model");
    Ok(Fit {
        model,
        training: report,
        held_out: held_out_json(&confusion),
        split: json!({
            "holdout": labeller.holdout.max(0.05),
            "grouped_by": format!("{HOLDOUT_BLOCK_PX} px blocks"),
            "train_samples": train.samples,
            "test_samples": eval_features.samples,
            "initial_labels": curve.first().map(|c| c[1].clone()),
            "queried_labels": train.samples as usize - curve.first().and_then(|c| c[1].as_u64()).unwrap_or(0) as usize,
            "pool": unlabelled.len(),
        }),
        training_years: Value::Null,
        learning_curve: json!({ "columns": ["round", "labels", "OA", "kappa", "macro F1"], "rows": curve }),
    })
}

fn label(
    scene: &Scene,
    labeller: &LabellerPlan,
    learner: &Learner,
    fit: Fit,
    nomenclature: Option<&Nomenclature>,
    results: &mut SceneResults,
) -> Result<SceneSection> {
    let stage = labeller.stage;
    let model = fit.model;
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
    match &model {
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

    let rasters = prediction_rasters(scene, labeller);
    let names = FeatureRaster::open(&rasters[0].1)?.names;
    // A decoder reading this labeller needs its full posteriors, not only the winner.
    let keep_posteriors = scene.plan.stages.iter().any(|d| matches!(&d.role, Role::Decoder { input } if *input == stage.id));
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    let mut maps = Vec::new();
    for (year, features) in &rasters {
        let name = output_name(stage, *year);
        let mut map = Output::new(scene.partial_dir, scene.run_dir(), &name, scene.grid, PixelType::U16, style.clone());
        let confidence_name = format!("{name}_confidence");
        let mut confidence = Output::new(scene.partial_dir, scene.run_dir(), &confidence_name, scene.grid, PixelType::F32, None);
        let mut posteriors = keep_posteriors
            .then(|| Output::new(scene.partial_dir, scene.run_dir(), &format!("{name}_proba"), scene.grid, PixelType::F32, None));
        scene.per_chunk(
            |i, window| {
                let raster = FeatureRaster::open(features)?;
                if raster.names != names {
                    bail!("{} has other features than the model was trained on", features.display());
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
    Ok(SceneSection { stage: stage.id.to_string(), kind: "labeller", plugin: stage.reference(), summary })
}

/// Year-to-year agreement counts, per pair of consecutive years and class: (kept, total).
type AgreementCounts = Vec<BTreeMap<u16, (u64, u64)>>;

fn count_agreement(counts: &mut AgreementCounts, labels: &[Vec<u16>]) {
    for (t, pair) in labels.windows(2).enumerate() {
        for (&a, &b) in pair[0].iter().zip(&pair[1]) {
            if a == 0 || b == 0 {
                continue;
            }
            let e = counts[t].entry(a).or_default();
            e.1 += 1;
            if a == b {
                e.0 += 1;
            }
        }
    }
}

/// The consistency table of raw and decoded maps side by side.
fn agreement_table(years: &[i32], raw: &AgreementCounts, decoded: &AgreementCounts, nomenclature: Option<&Nomenclature>) -> Value {
    let mut classes: Vec<u16> = raw.iter().chain(decoded).flat_map(|m| m.keys().copied()).collect();
    classes.sort_unstable();
    classes.dedup();
    let name = |c: u16| nomenclature.and_then(|n| n.classes.iter().find(|k| k.code == c)).map_or(c.to_string(), |k| format!("{c} {}", k.name));
    let share = |m: &BTreeMap<u16, (u64, u64)>, c: Option<u16>| {
        let (k, n) = match c {
            Some(c) => m.get(&c).copied().unwrap_or((0, 0)),
            None => m.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1)),
        };
        if n == 0 { Value::Null } else { json!(((k as f64 / n as f64) * 1e4).round() / 1e4) }
    };
    let mut columns = vec![json!("class")];
    for w in years.windows(2) {
        columns.push(json!(format!("{}–{} input", w[0], w[1])));
        columns.push(json!(format!("{}–{} decoded", w[0], w[1])));
    }
    let row = |label: String, c: Option<u16>| {
        let mut row = vec![json!(label)];
        for t in 0..raw.len() {
            row.push(share(&raw[t], c));
            row.push(share(&decoded[t], c));
        }
        json!(row)
    };
    let mut rows: Vec<Value> = classes.iter().map(|&c| row(name(c), Some(c))).collect();
    rows.push(row("overall".into(), None));
    json!({ "columns": columns, "rows": rows })
}

/// How a decoder's from → to raster codes a pair of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FromTo {
    base: u32,
    pixel: PixelType,
}

impl FromTo {
    fn for_classes(classes: &[u16]) -> FromTo {
        let max = classes.iter().copied().max().unwrap_or(0) as u32;
        // Decimal (at least two digits for `to`) so it reads as two codes side by side; codes of five digits take
        // 65536, which still fits u32 for any pair of u16 codes.
        let base = [100u32, 1000, 10_000].into_iter().find(|&b| max < b).unwrap_or(65_536);
        let pixel = if max * base + max <= u16::MAX as u32 { PixelType::U16 } else { PixelType::U32 };
        FromTo { base, pixel }
    }

    fn code(&self, from: u16, to: u16) -> u32 {
        from as u32 * self.base + to as u32
    }
}

/// Decodes yearly posteriors into consistent yearly maps (a decoder stage).
fn decode(
    scene: &Scene,
    stage: &StagePlan,
    input: &StageId,
    pool: &StagePool,
    nomenclature: Option<&Nomenclature>,
    results: &mut SceneResults,
) -> Result<SceneSection> {
    let from_labeller = scene.plan.stages.iter().any(|s| &s.id == input && s.kind() == StageKind::Labeller);
    let rasters: Vec<PathBuf> = scene
        .years
        .iter()
        .map(|y| scene.raster_of(&if from_labeller { format!("{input}_{y}_proba") } else { format!("{input}_{y}") }))
        .collect();
    let names = FeatureRaster::open(&rasters[0])?.names;
    let classes: Vec<u16> = names
        .iter()
        .map(|n| n.strip_prefix("p:").and_then(|c| c.parse().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("stage '{}': {} has bands {names:?}, not class probabilities `p:<code>`", stage.id, rasters[0].display()))?;
    let k = classes.len();
    let steps = rasters.len();
    let params = stage.params_json();
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let mut maps: Vec<Output> = scene
        .years
        .iter()
        .map(|y| Output::new(scene.partial_dir, scene.run_dir(), &output_name(stage, Some(*y)), scene.grid, PixelType::U16, style.clone()))
        .collect();
    let mut changes = Output::new(scene.partial_dir, scene.run_dir(), &format!("{}_changes", stage.id), scene.grid, PixelType::U16, None);
    // from → to is coded from × base + to, base the power of ten above every class code
    // (7 → 3 reads 703; CORINE 311 → 312 reads 311312), in u16 when that fits, else u32;
    // `<id>_fromto.csv` lists every code present with both classes.
    let coding = FromTo::for_classes(&classes);
    let mut fromto = Output::new(scene.partial_dir, scene.run_dir(), &format!("{}_fromto", stage.id), scene.grid, coding.pixel, None);
    let mut raw_counts: AgreementCounts = vec![BTreeMap::new(); steps.saturating_sub(1)];
    let mut decoded_counts: AgreementCounts = vec![BTreeMap::new(); steps.saturating_sub(1)];
    let mut pairs: BTreeMap<(u16, u16), u64> = BTreeMap::new();
    let mut change_histogram: BTreeMap<u16, u64> = BTreeMap::new();
    scene.per_chunk(
        |i, window| {
            let n = window.pixels();
            let mut data = Vec::with_capacity(steps * n * k);
            for path in &rasters {
                let raster = FeatureRaster::open(path)?;
                if raster.names != names {
                    bail!("{} has other classes than {}", path.display(), rasters[0].display());
                }
                data.extend(raster.read(window)?);
            }
            let raw: Vec<Vec<u16>> = data
                .chunks_exact(n * k)
                .map(|year| year.chunks_exact(k).map(|p| {
                    let (j, v) = p.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
                    if v.is_finite() { classes[j] } else { 0 }
                }).collect())
                .collect();
            let series = crate::bindings::stages::decoder::PosteriorSeries { steps: steps as u32, samples: n as u32, classes: classes.clone(), data };
            let decoded = pool
                .with(|inst| inst.decode(&context(stage, &format!("chunk {i}")), &series, &params))
                .map_err(call_error(stage, &format!("decoding chunk {i} ({window})")))?;
            if decoded.labels.len() != steps * n {
                bail!("stage '{}' returned {} labels for {steps} years × {n} pixels", stage.id, decoded.labels.len());
            }
            if let Some(bad) = decoded.labels.iter().find(|l| **l != 0 && !classes.contains(l)) {
                bail!("stage '{}' ({}) returned label {bad}, not one of the input's classes {classes:?}", stage.id, stage.reference());
            }
            let decoded: Vec<Vec<u16>> = decoded.labels.chunks_exact(n).map(<[u16]>::to_vec).collect();
            Ok((raw, decoded))
        },
        |i, window, (raw, decoded)| {
            count_agreement(&mut raw_counts, &raw);
            count_agreement(&mut decoded_counts, &decoded);
            let n = window.pixels();
            let mut count = vec![0u16; n];
            let mut ft = vec![0u32; n];
            for p in 0..n {
                count[p] = decoded.windows(2).filter(|w| w[0][p] != w[1][p] && w[0][p] != 0 && w[1][p] != 0).count() as u16;
                let (a, b) = (decoded[0][p], decoded[steps - 1][p]);
                if a != b && a != 0 && b != 0 {
                    ft[p] = coding.code(a, b);
                    *pairs.entry((a, b)).or_default() += 1;
                }
                *change_histogram.entry(count[p]).or_default() += 1;
            }
            for (t, out) in maps.iter_mut().enumerate() {
                out.raster.write_chunk(i, window, &[output_name(stage, Some(scene.years[t]))], &decoded[t])?;
            }
            changes.raster.write_chunk(i, window, &["changes".to_string()], &count)?;
            let band = ["from-to".to_string()];
            match coding.pixel {
                PixelType::U16 => fromto.raster.write_chunk(i, window, &band, &ft.iter().map(|&c| c as u16).collect::<Vec<_>>()),
                _ => fromto.raster.write_chunk(i, window, &band, &ft),
            }
        },
    )?;
    let name = |c: u16| nomenclature.and_then(|n| n.classes.iter().find(|k| k.code == c)).map_or(c.to_string(), |k| k.name.clone());
    if coding.pixel == PixelType::U16 {
        // A colour table is indexed by the pixel value: only for u16 codes.
        let pair_style = ClassStyle {
            classes: pairs
                .keys()
                .enumerate()
                .map(|(j, (a, b))| {
                    let (r, g, bl) = hsv((j as f64 * 137.508) % 360.0, 0.7, 0.9);
                    (coding.code(*a, *b) as u16, format!("{} → {}", name(*a), name(*b)), format!("#{r:02x}{g:02x}{bl:02x}"))
                })
                .collect(),
        };
        fromto.raster.set_style(pair_style);
    }
    let table_path = scene.run_dir().join(format!("{}_fromto.csv", stage.id));
    let mut table = String::from("code,from,to,from_name,to_name,pixels\n");
    for ((a, b), n) in &pairs {
        let quote = |s: String| format!("\"{}\"", s.replace('"', "\"\""));
        table.push_str(&format!("{},{a},{b},{},{},{n}\n", coding.code(*a, *b), quote(name(*a)), quote(name(*b))));
    }
    crate::fsutil::write_atomic(&table_path, table.as_bytes()).with_context(|| format!("writing {}", table_path.display()))?;
    results.files.push(table_path);
    let max_changes = change_histogram.keys().copied().max().unwrap_or(0) as usize;
    changes.raster.set_style(ClassStyle {
        classes: (1..=max_changes.max(1)).map(|c| (c as u16, format!("{c} change{}", if c > 1 { "s" } else { "" }), ["#fdae61", "#d7191c", "#7b0000", "#3d0000"][(c - 1).min(3)].to_string())).collect(),
    });
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    for out in maps.iter_mut() {
        results.outputs.push(out.finish(&all)?);
    }
    results.outputs.push(changes.finish(&all)?);
    results.outputs.push(fromto.finish(&all)?);
    let from_to_rows: Vec<Value> = pairs.iter().map(|((a, b), n)| json!([name(*a), name(*b), n])).collect();
    Ok(SceneSection {
        stage: stage.id.to_string(),
        kind: "decoder",
        plugin: stage.reference(),
        summary: json!({
            "posteriors_of": input.to_string(),
            "years": scene.years,
            "consistency": agreement_table(&scene.years, &raw_counts, &decoded_counts, nomenclature),
            "pixels_by_change_count": { "columns": ["changes", "pixels"], "rows": change_histogram.iter().map(|(c, n)| json!([c, n])).collect::<Vec<_>>() },
            "from_to": { "columns": [format!("from ({})", scene.years[0]), format!("to ({})", scene.years[steps - 1]), "pixels"], "rows": from_to_rows },
        }),
    })
}

/// Agreement between consecutive years' maps, per class (the share of a class's pixels
/// in one year that keep it the next) and overall: the consistency table of seed 001.
pub fn consistency(years: &[i32], maps: &[PathBuf], nomenclature: Option<&Nomenclature>) -> Result<Value> {
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

    #[test]
    fn from_to_codes_never_wrap() {
        let small = FromTo::for_classes(&[1, 7, 12]);
        assert_eq!((small.code(7, 3), small.pixel), (703, PixelType::U16));
        let corine = FromTo::for_classes(&[111, 311, 523]);
        assert_eq!((corine.code(311, 312), corine.pixel), (311_312, PixelType::U32));
        let wide = FromTo::for_classes(&[1, u16::MAX]);
        assert_eq!(wide.code(u16::MAX, u16::MAX - 1), u16::MAX as u32 * 65_536 + u16::MAX as u32 - 1);
        let digits = FromTo::for_classes(&[3, 9]);
        assert_eq!(digits.code(9, 3), 903, "at least two digits for the 'to' code");
    }

    #[test]
    fn argmax_takes_the_most_probable_class() {
        let p = Probabilities { samples: 2, classes: vec![3, 7], data: vec![0.2, 0.8, 0.6, 0.4] };
        assert_eq!(argmax(&p), (vec![7, 3], vec![0.8, 0.6]));
    }
}

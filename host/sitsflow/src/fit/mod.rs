//! Fit nodes: the whole-scene stages of the compiled graph (`crate::graph`), which run
//! once the map node's rasters are assembled, one driver per kind:
//!
//! - `cluster`: a **clusterer** is fitted on pixels drawn at random (seeded) from its
//!   features raster, then assigns every pixel, chunk by chunk (clusters 1..k).
//! - `sample`: a **sampler** chooses among candidate pixels (those with a reference
//!   class, or all pixels without a reference; at most `sample_size`, drawn at random)
//!   given their features and the class layers the graph gives it (`reference` and the
//!   class rasters of the fit nodes before it). It writes the selection as a samples CSV
//!   in the shared convention and as a raster of the chosen labels.
//! - `label` (and `active`): a **labeller** trains on a sampler's selection (or grows it
//!   by active learning, or loads a stored model), holds out a share of it by 32 px
//!   blocks for an accuracy report, and predicts every map the graph names (and its
//!   winning probability, and its posteriors for a decoder). A labeller is a component,
//!   or a network a recipe of `models/` trains (`crate::network`): both go through one
//!   `Learner`, so splits, metrics and maps are the same.
//! - `decode`: a **decoder** turns yearly posteriors into consistent yearly maps, the
//!   change count and the from → to raster.
//! - `pretrain`: a **pretrainer** (`recipe = "simclr"`) trains an encoder on views an
//!   augmenter stage makes of patches of its features, streamed to the recipe; an
//!   `fg-unet` labeller with `pretrained` starts from it.
//!
//! Every raster a driver reads or writes is named by its node's `FitIo`. Fits see
//! samples that fit in memory; assignment and prediction stream chunks on all workers
//! (`chunks::for_each`), as the map node does.
//!
//! Each finished node is journaled (`.partial/nodes/<stage>.json`: its report section,
//! the files it staged, a sampler's selection); a rerun of the same run key takes a
//! journaled node over when every file it names is staged, so a run killed after an
//! expensive fit resumes after it.

mod active;
mod cluster;
mod decode;
mod label;
mod pretrain;
mod sample;
mod segment;
mod sen2vhr;

use crate::graph::{FitIo, Graph, Node, RasterId};
use crate::plan::{Executor, Plan, Role, SampleSize, StagePlan};
use crate::raster::{ClassRaster, FeatureRaster, Grid, Window};
use crate::report::SceneSection;
use crate::runtime::data::{FeatureMatrix, ModelBlob};
use crate::runtime::{CallContext, StageCallError, StagePool};
use anyhow::{Context as _, Result, anyhow, bail};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Side of the blocks a labeller's hold-out split is drawn by.
pub const HOLDOUT_BLOCK_PX: usize = 32;

/// The hold-out block (32 px square) of a pixel, numbered row-major.
pub(crate) fn block_of(grid_width: usize, pixel: u64) -> u64 {
    let (row, col) = (pixel / grid_width as u64, pixel % grid_width as u64);
    let blocks_per_row = grid_width.div_ceil(HOLDOUT_BLOCK_PX) as u64;
    row / HOLDOUT_BLOCK_PX as u64 * blocks_per_row + col / HOLDOUT_BLOCK_PX as u64
}

/// The `group` a samples CSV gives the sample at `pixel`: the vector reference's
/// feature there (its parcel), else its hold-out block.
pub(crate) fn sample_group(grid_width: usize, pixel: u64, feature: Option<u32>) -> u64 {
    match feature {
        Some(id) if id != crate::raster::NO_FEATURE => id as u64,
        _ => block_of(grid_width, pixel),
    }
}

/// What the fit nodes produced.
#[derive(Default)]
pub struct FitResults {
    /// Declared rasters (COGs), in the order the nodes wrote them.
    pub outputs: Vec<PathBuf>,
    /// Other files: samples CSVs, models, metrics, posteriors.
    pub files: Vec<PathBuf>,
    /// Each fit node's report section, in the order the nodes finished.
    pub sections: Vec<SceneSection>,
    /// Stages whose node an interrupted run had finished.
    pub resumed: Vec<String>,
}

/// A sampler's selection, kept for the labellers that train on it (and journaled).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Selected {
    /// Pixel indices (row-major over the grid), ascending.
    pixels: Vec<u64>,
    labels: Vec<u16>,
    /// Each pixel's feature id, when the reference is vectors: its parcel.
    features: Option<Vec<u32>>,
}

/// Everything the fit nodes share.
pub struct Context<'a> {
    /// The run's plan.
    pub plan: &'a Plan,
    /// The compiled graph of stages and rasters.
    pub graph: &'a Graph,
    /// The calendar years of the series, in order (per-year features have one raster each).
    pub years: Vec<i32>,
    /// The scene's pixel grid.
    pub grid: &'a Grid,
    /// The scene's chunk windows, indexed by chunk number.
    pub chunks: &'a [Window],
    /// Side of the chunks, in pixels.
    pub chunk_size: usize,
    /// How many workers stream chunks at once.
    pub workers: usize,
    /// The run's partial state (`.partial/`): outputs' chunk files and the node journal.
    pub partial_dir: &'a Path,
    /// Where the run's files are staged until the run is published (`crate::rundir`):
    /// fit nodes read the rasters of earlier nodes from here and write here.
    pub out_dir: &'a Path,
    /// Time spent in each stage, in nanoseconds, indexed as the plan's stages.
    pub stage_nanos: &'a [AtomicU64],
    /// The pipeline's ONNX models, for stages that call `infer`.
    pub models: std::sync::Arc<crate::inference::ModelSet>,
    /// The run's account of its stage instances' memory.
    pub guest_memory: std::sync::Arc<crate::runtime::GuestMemory>,
}

impl Context<'_> {
    /// The staging folder of the run directory (see `out_dir`).
    pub(super) fn run_dir(&self) -> &Path {
        self.out_dir
    }

    /// Where a declared raster of the graph is staged.
    pub(super) fn path(&self, raster: RasterId) -> PathBuf {
        self.run_dir().join(format!("{}.tif", self.name(raster)))
    }

    /// The name of a raster of the graph.
    pub(super) fn name(&self, raster: RasterId) -> &str {
        &self.graph.rasters[raster].name
    }

    /// What a network's tiles in flight may hold: the budget less the engine and caches
    /// (at least 64 MiB).
    pub(super) fn tile_budget_bytes(&self) -> usize {
        let mib = (self.plan.memory_budget_mib as usize)
            .saturating_sub(crate::memory::FIXED_OVERHEAD_MIB + crate::raster::block_cache_mib())
            .max(64);
        mib << 20
    }

    pub(super) fn pixels(&self) -> u64 {
        (self.grid.width * self.grid.height) as u64
    }

    /// The chunk holding a pixel, and its offset inside it.
    /// Each pixel's feature id (the FID of a vector reference's feature there,
    /// [`crate::raster::NO_FEATURE`] where none is), when the reference is vectors.
    pub(super) fn feature_ids_at(&self, pixels: &[u64]) -> Result<Option<Vec<u32>>> {
        let Some(ids) = self.graph.declared(crate::graph::REFERENCE_IDS) else { return Ok(None) };
        let raster = crate::raster::ClassRaster::open(&self.path(ids))?;
        let mut by_chunk: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, &p) in pixels.iter().enumerate() {
            let (chunk, offset) = self.locate(p);
            by_chunk.entry(chunk).or_default().push((i, offset));
        }
        let mut out = vec![crate::raster::NO_FEATURE; pixels.len()];
        for (chunk, at) in by_chunk {
            let window = raster.read_u32(self.chunks[chunk])?;
            for (i, offset) in at {
                out[i] = window[offset];
            }
        }
        Ok(Some(out))
    }

    pub(super) fn locate(&self, pixel: u64) -> (usize, usize) {
        let (row, col) = ((pixel / self.grid.width as u64) as usize, (pixel % self.grid.width as u64) as usize);
        let per_row = self.grid.width.div_ceil(self.chunk_size);
        let chunk = (row / self.chunk_size) * per_row + col / self.chunk_size;
        let w = self.chunks[chunk];
        debug_assert!(row >= w.row && col >= w.col && row < w.row + w.rows && col < w.col + w.cols);
        (chunk, (row - w.row) * w.cols + (col - w.col))
    }

    /// Reads the features of the given pixels (ascending), one row each.
    pub(super) fn gather_features(&self, path: &Path, pixels: &[u64]) -> Result<FeatureMatrix> {
        let raster = FeatureRaster::open(path)?;
        let f = raster.names.len();
        let mut data = vec![0f32; pixels.len() * f];
        self.gather(pixels, |window| raster.read(window), |values, offset, i| {
            data[i * f..(i + 1) * f].copy_from_slice(&values[offset * f..(offset + 1) * f]);
        })?;
        Ok(FeatureMatrix { samples: pixels.len() as u32, names: raster.names, data })
    }

    /// Reads a class raster at the given pixels (ascending).
    pub(super) fn gather_classes(&self, path: &Path, pixels: &[u64]) -> Result<Vec<u32>> {
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
    pub(super) fn per_chunk<T: Send>(
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
                crate::fail_point!("fit::chunk_written");
                Ok(())
            },
        );
        if let Some((i, e)) = outcome.failures.into_iter().next() {
            return Err(e.context(format!("chunk {i} ({})", self.chunks[i])));
        }
        outcome.error.map_or(Ok(()), Err)
    }

    /// How many samples a fit node may hold: `requested` (at most the `available`
    /// ones), or, where that does not fit
    /// the memory budget beside the run's fixed part (engine, GDAL's cache) and
    /// `transient` bytes, the most that do (a default is lowered, logged and returned;
    /// a size the pipeline sets is refused, naming the size that fits). `bytes_each`
    /// counts every copy of a sample: the host's, the stage instance's input and its
    /// working copy.
    pub(super) fn samples_within_budget(&self, stage: &StagePlan, requested: &SampleSize, available: u64, bytes_each: usize, transient: usize) -> Result<u64> {
        let requested = SampleSize { n: requested.n.min(available), ..*requested };
        let budget = self.plan.memory_budget_mib as usize;
        let fixed = crate::memory::FIXED_OVERHEAD_MIB + crate::raster::block_cache_mib();
        samples_that_fit(budget, fixed, requested, bytes_each, transient).map_err(|fits| {
            anyhow!(
                "stage '{}': sample_size = {} needs about {} MiB ({} bytes a sample), over memory_budget_mib = {budget} \
                 beside the run's {fixed} MiB of engine and caches; lower sample_size to {fits} or raise the budget",
                stage.id,
                requested.n,
                (requested.n as usize * bytes_each + transient) >> 20,
                bytes_each
            )
        })
        .inspect(|&n| {
            if n < requested.n {
                log::info!(
                    "stage '{}': {n} samples of {bytes_each} bytes fit memory_budget_mib = {budget}; using them instead of the default {}",
                    stage.id,
                    requested.n
                );
            }
        })
    }

    /// A seeded generator for one stage (its id mixed into the run's seed).
    pub(super) fn rng(&self, stage: &StagePlan, purpose: &str) -> rand_chacha::ChaCha8Rng {
        self.rng_for(stage.id.as_str(), purpose)
    }

    /// A seeded generator for a stage by id (e.g. a labeller's sampler).
    pub(super) fn rng_for(&self, stage: &str, purpose: &str) -> rand_chacha::ChaCha8Rng {
        let mix = crate::hash::sha256_hex(format!("{}:{stage}:{purpose}", self.plan.seed).as_bytes());
        let seed = u64::from_str_radix(&mix[..16], 16).expect("hex");
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }
}

pub(super) fn call_error(stage: &StagePlan, what: &str) -> impl Fn(StageCallError) -> anyhow::Error {
    let shown = format!("stage '{}' ({}) {what}", stage.id, stage.reference());
    move |e| anyhow!("{shown}: {e}")
}

pub(super) fn context(stage: &StagePlan, what: &str) -> CallContext {
    CallContext { stage: stage.id.to_string(), chunk: what.to_string() }
}

pub(super) fn hsv(h: f64, s: f64, v: f64) -> (u8, u8, u8) {
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
pub(super) fn save_model(run_dir: &Path, stage: &StagePlan, model: &ModelBlob, report: &Value) -> Result<PathBuf> {
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

pub(super) fn parse_report(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Runs the graph's fit nodes in order, taking over those an interrupted run of the
/// same key journaled.
pub fn run(ctx: &Context, peaks: &mut crate::memory::Peaks) -> Result<FitResults> {
    let nomenclature = ctx.plan.reference.as_ref().map(|r| &r.nomenclature);
    let mut results = FitResults::default();
    let mut selections: HashMap<String, Selected> = HashMap::new();
    let journal = Journal::open(ctx.partial_dir.join("nodes"), ctx.out_dir)?;
    for node in &ctx.graph.nodes {
        let Node::Fit { stage: s, query, io, .. } = node else { continue };
        let stage = &ctx.plan.stages[*s];
        if let Some(record) = journal.take_over(stage) {
            log::info!("stage '{}' ({}): taken over from an interrupted run", stage.id, stage.kind_name());
            ctx.stage_nanos[*s].fetch_add((record.cpu_seconds * 1e9) as u64, Ordering::Relaxed);
            results.outputs.extend(record.outputs.iter().map(|f| ctx.out_dir.join(f)));
            results.files.extend(record.files.iter().map(|f| ctx.out_dir.join(f)));
            if let Some(selected) = record.selection {
                selections.insert(stage.id.to_string(), selected);
            }
            results.sections.push(record.section);
            results.resumed.push(stage.id.to_string());
            continue;
        }
        let started = Instant::now();
        peaks.start();
        let before = (results.outputs.len(), results.files.len());
        log::info!("stage '{}' ({}, {}) on the whole scene", stage.id, stage.kind_name(), stage.reference());
        let pool = || match &stage.executor {
            Executor::Plugin(plugin) => Ok(StagePool::with_models(plugin.clone(), stage.limits, ctx.models.clone()).seeded(ctx.plan.seed).sharing(&ctx.guest_memory)),
            Executor::Recipe(_) => Err(anyhow!("stage '{}': only labellers are trained by recipes", stage.id)),
        };
        let mut selection = None;
        let section = (|| -> Result<SceneSection> {
            Ok(match (io, &stage.role) {
                (FitIo::Cluster { features, map }, Role::Clusterer { sample_size, .. }) => {
                    cluster::run(ctx, stage, sample_size, &pool()?, *features, *map, &mut results)?
                }
                (FitIo::Sample { features, layers, map }, Role::Sampler { sample_size, .. }) => {
                    let (section, selected) = sample::run(ctx, stage, sample_size, &pool()?, *features, layers, *map, nomenclature, &mut results)?;
                    selection = Some(selected);
                    section
                }
                (FitIo::Label { maps, oracle }, Role::Labeller { year, holdout, training, .. }) => {
                    let labeller = label::LabellerPlan { stage, year: *year, holdout: *holdout, maps };
                    let query = query.map(|q| &ctx.plan.stages[q]);
                    label::run(ctx, &labeller, training, query, *oracle, &selections, nomenclature, &mut results)?
                }
                (FitIo::Decode { posteriors, maps, changes, fromto }, Role::Decoder { input }) => {
                    decode::run(ctx, stage, input, &pool()?, posteriors, maps, *changes, *fromto, nomenclature, &mut results)?
                }
                (FitIo::Pretrain { features, sources, embeddings }, Role::Pretrainer { views, .. }) => {
                    let Executor::Recipe(recipe) = &stage.executor else { bail!("internal: stage '{}' pretrains without a recipe", stage.id) };
                    let views = ctx.plan.stages.iter().find(|s| &s.id == views).ok_or_else(|| anyhow!("internal: no stage '{views}'"))?;
                    let io = pretrain::Io { features, sources, embeddings };
                    pretrain::run(ctx, stage, recipe, views, &io, &mut results)?
                }
                (FitIo::SuperResolve { features, annotations: maps, dates, markov, changes }, Role::SuperResolver { annotations, scale, .. }) => {
                    let Executor::Recipe(recipe) = &stage.executor else { bail!("internal: stage '{}' maps without a recipe", stage.id) };
                    let io = sen2vhr::Io { features: *features, dates: *dates, markov: *markov, changes: *changes };
                    let annotations: Vec<crate::plan::Annotation> = match annotations {
                        crate::plan::Annotations::Files(files) => files.clone(),
                        crate::plan::Annotations::Maps(_) => maps.iter().map(|(date, r)| crate::plan::Annotation { date: date.clone(), path: ctx.path(*r) }).collect(),
                    };
                    sen2vhr::run(ctx, stage, recipe, &annotations, *scale, &io, nomenclature, &mut results)?
                }
                _ => bail!("internal: stage '{}' ({}) has a fit node of another kind", stage.id, stage.kind_name()),
            })
        })();
        // A full disk shows up as a bare I/O error (GDAL: "IO error"): say so.
        let section = crate::fsutil::with_space_hint(section, ctx.out_dir)?;
        peaks.finish(format!("fit {}", stage.id));
        let seconds = started.elapsed().as_secs_f64();
        ctx.stage_nanos[*s].fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        let staged = (&results.outputs[before.0..], &results.files[before.1..]);
        crate::fsutil::with_space_hint(journal.record(stage, &section, staged, selection.as_ref(), seconds), ctx.out_dir)?;
        if let Some(selected) = selection {
            selections.insert(stage.id.to_string(), selected);
        }
        results.sections.push(section);
        crate::fail_point!("fit::node_done");
    }
    Ok(results)
}

/// What a finished fit node leaves for a rerun to take over.
#[derive(Serialize, Deserialize)]
struct NodeRecord {
    stage: String,
    section: SceneSection,
    /// Declared rasters and other files it staged, relative to the staging folder.
    outputs: Vec<String>,
    files: Vec<String>,
    selection: Option<Selected>,
    cpu_seconds: f64,
}

/// `.partial/nodes/`: one record per finished fit node. It lives in the run's partial
/// folder, which a changed run key discards whole, so a record always belongs to this
/// pipeline, these plugins and these inputs.
struct Journal {
    dir: PathBuf,
    staging: PathBuf,
}

impl Journal {
    fn open(dir: PathBuf, staging: &Path) -> Result<Journal> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Journal { dir, staging: staging.to_path_buf() })
    }

    fn file(&self, stage: &StagePlan) -> PathBuf {
        self.dir.join(format!("{}.json", stage.id))
    }

    /// The record of a node an earlier process finished, when every file it names is
    /// still staged (a record is written only after them, so this holds unless someone
    /// removed files by hand).
    fn take_over(&self, stage: &StagePlan) -> Option<NodeRecord> {
        let text = std::fs::read_to_string(self.file(stage)).ok()?;
        let record: NodeRecord = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("{}: unreadable node record ({e}); running the stage again", self.file(stage).display());
                return None;
            }
        };
        let staged = record.outputs.iter().chain(&record.files).all(|f| self.staging.join(f).is_file());
        (record.stage == stage.id.as_str() && staged).then_some(record)
    }

    /// Records a finished node: its report section, the outputs and files it staged,
    /// a sampler's selection. A node that staged a file outside the staging folder is
    /// not recorded (a rerun runs it again).
    fn record(
        &self,
        stage: &StagePlan,
        section: &SceneSection,
        (outputs, files): (&[PathBuf], &[PathBuf]),
        selection: Option<&Selected>,
        cpu_seconds: f64,
    ) -> Result<()> {
        let relative = |paths: &[PathBuf]| -> Option<Vec<String>> {
            paths.iter().map(|p| p.strip_prefix(&self.staging).ok().map(|r| r.display().to_string())).collect()
        };
        let (Some(outputs), Some(files)) = (relative(outputs), relative(files)) else {
            log::debug!("stage '{}' staged a file outside {}: not journaled", stage.id, self.staging.display());
            return Ok(());
        };
        let record = NodeRecord { stage: stage.id.to_string(), section: section.clone(), outputs, files, selection: selection.cloned(), cpu_seconds };
        let path = self.file(stage);
        crate::fsutil::write_atomic(&path, &serde_json::to_vec(&record)?).with_context(|| format!("journaling {}", path.display()))
    }
}

/// The samples of `bytes_each` (plus `transient` bytes) that fit a budget of
/// `budget_mib` beside `fixed_mib`: `requested` when it fits; else a default is lowered
/// to what fits (when anything does), and a size the pipeline set is an error carrying
/// what fits.
fn samples_that_fit(budget_mib: usize, fixed_mib: usize, requested: SampleSize, bytes_each: usize, transient: usize) -> Result<u64, u64> {
    let room = (budget_mib.saturating_sub(fixed_mib) << 20).saturating_sub(transient);
    let fits = (room / bytes_each.max(1)) as u64;
    match (requested.n <= fits, requested.set) {
        (true, _) => Ok(requested.n),
        (false, false) if fits > 0 => Ok(fits),
        (false, _) => Err(fits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fit_the_budget_or_an_explicit_size_is_refused() {
        let (default, set) = (SampleSize { n: 1_000_000, set: false }, SampleSize { n: 1_000_000, set: true });
        // 256 MiB beside 128 MiB fixed, 4 MiB transient: 124 MiB for samples of 344 bytes.
        let fits = ((124usize << 20) / 344) as u64;
        assert_eq!(samples_that_fit(256, 128, default, 344, 4 << 20), Ok(fits));
        assert_eq!(samples_that_fit(256, 128, set, 344, 4 << 20), Err(fits));
        assert_eq!(samples_that_fit(1024, 128, set, 344, 4 << 20), Ok(1_000_000), "what fits is kept as asked");
        assert_eq!(samples_that_fit(100, 128, default, 344, 0), Err(0), "no room: refused, never an underflow");
    }
}

/// How far a sample's probabilities may sum from 1 (f32 softmax and vote shares sum
/// within about 1e-6; a labeller off by more is wrong, not imprecise).
pub const PROBABILITY_TOLERANCE: f32 = 1e-3;

/// What is wrong with `data` (samples × `classes` values) as probabilities, if
/// anything: the first sample whose values are not finite, not within [0, 1], or do not
/// sum to 1 within [`PROBABILITY_TOLERANCE`].
pub fn probability_problem(data: &[f32], classes: usize) -> Option<String> {
    if classes == 0 {
        return None;
    }
    for (sample, row) in data.chunks_exact(classes).enumerate() {
        if let Some((j, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Some(format!("returned a non-finite probability ({v}) for sample {sample}, class column {j}"));
        }
        if let Some((j, v)) = row.iter().enumerate().find(|(_, v)| **v < -PROBABILITY_TOLERANCE || **v > 1.0 + PROBABILITY_TOLERANCE) {
            return Some(format!("returned probability {v} for sample {sample}, class column {j}: probabilities lie within [0, 1]"));
        }
        let sum: f32 = row.iter().sum();
        if (sum - 1.0).abs() > PROBABILITY_TOLERANCE {
            return Some(format!("returned probabilities summing to {sum} for sample {sample}: each sample's sum to 1"));
        }
    }
    None
}

#[cfg(test)]
mod probability_tests {
    use super::probability_problem;

    #[test]
    fn probabilities_must_be_finite_within_0_1_and_sum_to_1() {
        assert_eq!(probability_problem(&[0.25, 0.75, 1.0, 0.0], 2), None);
        assert!(probability_problem(&[0.5, 0.5, f32::NAN, 1.0], 2).unwrap().contains("non-finite probability (NaN) for sample 1"));
        assert!(probability_problem(&[-5.0, 6.0], 2).unwrap().contains("probability -5 for sample 0"));
        assert!(probability_problem(&[0.5, 0.4], 2).unwrap().contains("summing to 0.9"));
        assert!(probability_problem(&[f32::NEG_INFINITY, 1.0], 2).unwrap().contains("non-finite"));
    }
}

//! The plan: a pipeline resolved against the file system and its plugins —
//! absolute paths, loaded plugins, parameters checked against each plugin's
//! schema, sandbox limits. Building it runs nothing but `describe()`.
//!
//! Also [`graph`] (the nodes a run executes, compiled from the plan) and [`plugins`]
//! (the plugin directory).

#![deny(missing_docs)]

pub mod graph;
pub mod plugins;

pub use sitsflow_recipes::RecipePlan;

use sitsflow_core::recipes::RecipeShape;
use sitsflow_config::{
    ActiveLearning, ConfigError, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MIB, LockEntry, Lockfile, Nomenclature, Pipeline, Source,
    StageId,
};
use sitsflow_raster::{GridSpec, L2aOptions, Series};
use crate::plugins::PluginDir;
use sitsflow_sandbox::StageKind;
use sitsflow_sandbox::{Interruption, Limits, Plugin, Runtime};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default memory budget of a run.
pub const DEFAULT_MEMORY_BUDGET_MIB: u32 = 2048;

/// What the series is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A folder of `YYYY-MM-DD.tif`.
    Series(PathBuf),
    /// A folder of Sentinel-2 L2A products.
    L2a(PathBuf),
    /// A STAC ItemCollection file.
    Stac(PathBuf),
}

/// The input, resolved.
#[derive(Debug, Clone)]
pub struct InputPlan {
    /// What the series is read from.
    pub source: InputSource,
    /// The bands to read, in order (default: all of a series folder, B02–B08, B8A, B11, B12 of L2A).
    pub bands: Option<Vec<String>>,
    /// The tile to read when an L2A folder holds several.
    pub tile: Option<String>,
    /// The L2A offset in DN for products whose metadata does not say.
    pub boa_add_offset: Option<f64>,
    /// The grid every input is aligned to (default: the first input's).
    pub grid: Option<GridSpec>,
}

impl InputPlan {
    /// Opens and checks the series (every file, band and date) without reading pixels.
    pub fn open(&self) -> anyhow::Result<Series> {
        let grid = self.grid.as_ref().map(GridSpec::to_grid).transpose()?;
        let options = L2aOptions {
            bands: self.bands.clone(),
            tile: self.tile.clone(),
            boa_add_offset: self.boa_add_offset,
            grid: grid.clone(),
        };
        match &self.source {
            InputSource::Series(dir) => Series::open_folder(dir, self.bands.as_deref(), grid),
            InputSource::L2a(dir) => sitsflow_raster::open_l2a(dir, &options),
            InputSource::Stac(file) => sitsflow_raster::open_stac(file, &options),
        }
    }
}

/// An `[[evaluate]]`, resolved.
#[derive(Debug, Clone)]
pub struct EvaluatePlan {
    /// The output's name (stage id or `reference`).
    pub output: String,
    /// The truth raster, any CRS.
    pub truth: PathBuf,
    /// Translates the truth's codes to classes first.
    pub nomenclature: Option<Nomenclature>,
    /// Whether the truth is a sample stratified by map class (area estimates).
    pub stratified: bool,
}

/// The reference map, resolved.
#[derive(Debug, Clone)]
pub struct ReferencePlan {
    /// The reference raster, any CRS.
    pub path: PathBuf,
    /// Its codes → classes, with names and colours.
    pub nomenclature: Nomenclature,
}

/// A resolved pipeline, ready to run.
pub struct Plan {
    /// The pipeline's name, which names the run.
    pub name: String,
    /// Free text for the report.
    pub description: Option<String>,
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// The pipeline file's text, recorded in the manifest.
    pub pipeline_text: String,
    /// The image time series.
    pub input: InputPlan,
    /// The reference map, when the pipeline has one.
    pub reference: Option<ReferencePlan>,
    /// Accuracy assessments of outputs against truth rasters.
    pub evaluations: Vec<EvaluatePlan>,
    /// The run directory (default `runs/<name>` beside the pipeline file).
    pub output_dir: PathBuf,
    /// Chunk side in pixels when the pipeline fixes it; otherwise derived from the budget.
    pub chunk_size: Option<u32>,
    /// What the run may hold in memory at once, in MiB.
    pub memory_budget_mib: u32,
    /// Pixels of context the pipeline asks around each chunk (the stages' footprints may widen it).
    pub halo: u32,
    /// 0 = one per core.
    pub workers: usize,
    /// Seed handed to stochastic stages.
    pub seed: u64,
    /// The folder of installed plugins.
    pub plugin_dir: PathBuf,
    /// The lockfile pinning the plugins' sha256.
    pub lockfile: PathBuf,
    /// The stages, in pipeline order.
    pub stages: Vec<StagePlan>,
    /// ONNX models the stages may call (loaded when the run starts).
    pub models: Vec<sitsflow_infer::ModelSpec>,
}

/// One stage, resolved.
pub struct StagePlan {
    /// The stage's id, as the pipeline names it.
    pub id: StageId,
    /// The component, or the training recipe, that runs the stage.
    pub executor: Executor,
    /// The sandbox's memory cap and deadline for its instances.
    pub limits: Limits,
    /// The parameters as JSON, checked against the plugin's schema.
    pub params: serde_json::Value,
    /// What the stage is, with what its kind needs (and nothing it does not).
    pub role: Role,
}

/// A stage's kind with what that kind needs, checked by `Plan::resolve`.
#[derive(Debug, Clone)]
pub enum Role {
    /// Runs on chunks; narrows the validity later stages see. With `input`, it reads
    /// that earlier features stage's output (dated `NAME@DATE` features as a cube)
    /// instead of the series.
    CloudMask {
        /// What its plugin declares: tile, halo and scale.
        footprint: Footprint,
        /// The features stage whose output it reads instead of the series.
        input: Option<StageId>,
    },
    /// Runs on chunks (`per_year`: once per calendar year of the series), on the series
    /// or, with `input`, on an earlier features stage's output.
    Features {
        /// What its plugin declares: tile, halo and scale.
        footprint: Footprint,
        /// Whether it runs once per calendar year of the series.
        per_year: bool,
        /// The features stage whose output it reads instead of the series.
        input: Option<StageId>,
    },
    /// Fitted on `sample_size` pixels of `input` (of `year`, for per-year features),
    /// then assigns every pixel.
    Clusterer {
        /// The features stage it reads.
        input: StageId,
        /// The year of per-year features it reads.
        year: Option<i32>,
        /// How many pixels it is fitted on.
        sample_size: SampleSize,
    },
    /// Chooses among up to `sample_size` candidates, with `input`'s features when the
    /// pipeline has a features stage.
    Sampler {
        /// The features stage whose features it is given.
        input: Option<StageId>,
        /// The year of per-year features it reads.
        year: Option<i32>,
        /// How many candidates it chooses among, at most.
        sample_size: SampleSize,
    },
    /// Trains on `input`'s features (of `year`, or of every year) as `training` says,
    /// holding out `holdout` of its samples, and predicts every pixel.
    /// With `pretrained`, an `fg-unet` starts from that pretraining stage's encoder; with
    /// `vhr` (a path, `{year}` standing for a map's year) it also fuses that
    /// very-high-resolution image.
    Labeller {
        /// The features stage it trains on and predicts from.
        input: StageId,
        /// The year of per-year features it trains on (None: every year).
        year: Option<i32>,
        /// What it holds out of its samples for its accuracy report.
        holdout: Holdout,
        /// How it gets its model.
        training: Training,
        /// The pretraining stage whose encoder an `fg-unet` starts from.
        pretrained: Option<StageId>,
        /// A very-high-resolution image to fuse (`{year}` standing for a map's year).
        vhr: Option<PathBuf>,
    },
    /// Decodes `input`'s yearly posteriors (a labeller predicting per year, or a
    /// per-year features stage of probabilities).
    Decoder {
        /// The stage whose yearly posteriors it decodes.
        input: StageId,
    },
    /// Makes views of patches for a pretraining stage that names it (`views = "…"`);
    /// writes nothing itself.
    Augmenter,
    /// Trains an encoder self-supervised (`recipe = "simclr"`) on `views`' views of
    /// patches of `input` (of `year`, or of every year), then writes its embeddings of
    /// every features raster of `input` (`per_year`: one per year, like the input) for
    /// later stages to read as features.
    Pretrainer {
        /// The features stage whose patches it trains on and embeds.
        input: StageId,
        /// The year of per-year features it trains on (None: every year).
        year: Option<i32>,
        /// The augmenter stage that makes its views.
        views: StageId,
        /// Whether its input, and so its embeddings, come once per year.
        per_year: bool,
    },
    /// Maps every date of the series on a grid `scale` times finer (`recipe = "asunet"`,
    /// seed 000), trained on dated annotations of that grid; reads `input`'s dated
    /// features (every date, not per year).
    SuperResolver {
        /// The features stage whose dated features it reads.
        input: StageId,
        /// Where its annotations come from.
        annotations: Annotations,
        /// How many times finer its grid is than the series', along each axis.
        scale: usize,
    },
}

/// Where a super-resolution stage's annotations come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Annotations {
    /// Dated files (`annotations = "….csv"`).
    Files(Vec<Annotation>),
    /// An earlier labeller's (or decoder's) yearly maps, each dated 1 July of its year
    /// (`annotations = "<stage id>"`, seed 000's "from sparse to dense": a random forest
    /// grown by active learning gives the dense annotations).
    Maps(StageId),
}

/// A dated very-high-resolution annotation (`annotations = "….csv"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// The annotation's date (YYYY-MM-DD).
    pub date: String,
    /// The annotation raster.
    pub path: PathBuf,
}

/// How many pixels a clusterer is fitted on, or a sampler chooses among: what the
/// pipeline sets (a run refuses it when it does not fit the memory budget), or the
/// default (lowered to what the budget holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSize {
    /// The number of pixels.
    pub n: u64,
    /// Whether the pipeline sets it (else it is the default).
    pub set: bool,
}

impl std::fmt::Display for SampleSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.n)
    }
}

/// How a labeller gets its model.
#[derive(Debug, Clone)]
pub enum Training {
    /// Trained on an earlier sampler's selection.
    Samples(StageId),
    /// Trained on a sampler's selection grown by active learning.
    ActiveLearning {
        /// The sampler whose selection it starts from.
        samples: StageId,
        /// The query sampler, rounds and pool of the active learning.
        learning: ActiveLearning,
    },
    /// A model an earlier run stored (`model = "…"`), no training.
    Stored(PathBuf),
    /// Trained on the rows of a samples CSV (`samples = "train.csv"`), its columns
    /// matched to the input's features by name.
    Csv(PathBuf),
}

impl Role {
    /// The stage kind it is.
    pub fn kind(&self) -> StageKind {
        match self {
            Role::CloudMask { .. } => StageKind::CloudMask,
            Role::Features { .. } => StageKind::Features,
            Role::Clusterer { .. } => StageKind::Clusterer,
            Role::Sampler { .. } => StageKind::Sampler,
            Role::Labeller { .. } => StageKind::Labeller,
            Role::Decoder { .. } => StageKind::Decoder,
            Role::Augmenter => StageKind::Augmenter,
            Role::Pretrainer { .. } => StageKind::Pretrainer,
            Role::SuperResolver { .. } => StageKind::SuperResolver,
        }
    }

    /// The stage whose output it reads, if any.
    pub fn input(&self) -> Option<&StageId> {
        match self {
            Role::Clusterer { input, .. }
            | Role::Labeller { input, .. }
            | Role::Decoder { input }
            | Role::Pretrainer { input, .. }
            | Role::SuperResolver { input, .. } => Some(input),
            Role::Sampler { input, .. } | Role::CloudMask { input, .. } | Role::Features { input, .. } => input.as_ref(),
            Role::Augmenter => None,
        }
    }

    /// The year of a per-year input it works on.
    pub fn year(&self) -> Option<i32> {
        match self {
            Role::Clusterer { year, .. } | Role::Sampler { year, .. } | Role::Labeller { year, .. } | Role::Pretrainer { year, .. } => *year,
            _ => None,
        }
    }

    /// A stage whose features come once per year: a per-year features stage, or a
    /// pretrainer over one (its embeddings).
    pub fn per_year(&self) -> bool {
        matches!(self, Role::Features { per_year: true, .. } | Role::Pretrainer { per_year: true, .. })
    }

    /// Whether later stages may read its output as features (`input = "…"`).
    pub fn gives_features(&self) -> bool {
        matches!(self, Role::Features { .. } | Role::Pretrainer { .. })
    }

    /// A chunk stage's footprint.
    pub fn footprint(&self) -> Option<Footprint> {
        match self {
            Role::CloudMask { footprint, .. } | Role::Features { footprint, .. } => Some(*footprint),
            _ => None,
        }
    }
}

/// The dated annotations of a super-resolution stage: a CSV with `date` (YYYY-MM-DD) and
/// `path` columns (paths relative to the CSV), each file present, dates in order.
fn read_annotations(csv: &Path) -> Result<Vec<Annotation>, String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("reading the annotations list {}: {e}", csv.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else { return Err(format!("{}: empty (expected a date,path header)", csv.display())) };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let (Some(date_at), Some(path_at)) = (columns.iter().position(|c| *c == "date"), columns.iter().position(|c| *c == "path")) else {
        return Err(format!("{}:1: the header {header:?} lacks a `date` or a `path` column", csv.display()));
    };
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut out: Vec<Annotation> = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(date), Some(path)) = (cells.get(date_at), cells.get(path_at)) else {
            return Err(format!("{}:{}: {} cells, the header has {}", csv.display(), n + 1, cells.len(), columns.len()));
        };
        if sitsflow_raster::parse_date(date).is_none() {
            return Err(format!("{}:{}: '{date}' is not a date (YYYY-MM-DD)", csv.display(), n + 1));
        }
        if out.last().is_some_and(|a| a.date.as_str() >= *date) {
            return Err(format!("{}:{}: {date} does not follow {} (one annotation per date, in order)", csv.display(), n + 1, out.last().expect("checked").date));
        }
        let file = sitsflow_core::fsutil::normalize(&base.join(path));
        if !file.is_file() {
            return Err(format!("{}:{}: the annotation {} does not exist", csv.display(), n + 1, file.display()));
        }
        out.push(Annotation { date: date.to_string(), path: file });
    }
    if out.is_empty() {
        return Err(format!("{}: no annotation listed", csv.display()));
    }
    Ok(out)
}

/// Names a run writes for itself, which no stage id may take.
const RESERVED_OUTPUTS: &[&str] = &["reference", "report", "manifest", "models"];

/// Whether `name` is one of the names stage `stage` writes besides its own id
/// (`<id>_<year>`, `<id>_<year>_confidence`, `<id>_changes`, …; the fit drivers in `sitsflow::fit` write them).
fn writes_name(stage: &StagePlan, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(stage.id.as_str()).and_then(|r| r.strip_prefix('_')) else { return false };
    let year = |s: &str| s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit());
    let (head, tail) = rest.split_once('_').map_or((rest, None), |(h, t)| (h, Some(t)));
    match &stage.role {
        Role::Features { per_year, .. } => *per_year && year(rest),
        Role::Labeller { .. } => {
            matches!(rest, "confidence" | "proba") || (year(head) && matches!(tail, None | Some("confidence") | Some("proba")))
        }
        Role::Decoder { .. } => year(rest) || matches!(rest, "changes" | "fromto"),
        Role::Pretrainer { per_year, .. } => *per_year && year(rest),
        Role::SuperResolver { .. } => matches!(rest, "dates" | "markov" | "changes"),
        _ => false,
    }
}

/// Refuses a stage id that another stage's outputs, or the run's own files, would
/// overwrite (`lab_2018_confidence` beside a labeller `lab`, `reference`, …).
fn check_output_names(stages: &[StagePlan], pipeline: &Pipeline, source: &Source) -> Result<(), ConfigError> {
    for (stage, located) in stages.iter().zip(&pipeline.stages) {
        let id = stage.id.as_str();
        if RESERVED_OUTPUTS.contains(&id) {
            return Err(source.error(
                Some(located.id.span()),
                format!("stage id '{id}' is taken by the run's own {id} output; choose another id"),
            ));
        }
        if let Some(other) = stages.iter().find(|o| o.id != stage.id && writes_name(o, id)) {
            return Err(source.error(
                Some(located.id.span()),
                format!("stage id '{id}' collides with an output of {} stage '{}' (it writes {id}.tif); choose another id", other.kind_name(), other.id),
            ));
        }
    }
    Ok(())
}

/// What a chunk stage declares for its parameters (`footprint-for`, WIT 0.2): chunks
/// whose core is a multiple of `tile` (0 = any), `halo` px of context on every side,
/// outputs `scale` times finer than the series' grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// What chunk cores are a multiple of, in pixels (0 = any).
    pub tile: usize,
    /// Pixels of context needed on every side.
    pub halo: usize,
    /// Output pixels per series pixel along each axis.
    pub scale: usize,
}

/// The largest tile, halo and scale a stage may declare.
const MAX_TILE: usize = 4096;
const MAX_HALO: usize = 512;
const MAX_SCALE: usize = 16;

impl Footprint {
    /// Asks the plugin (in a throw-away instance) and checks the answer.
    fn ask(plugin: &Plugin, limits: Limits, id: &str, params: &serde_json::Value) -> Result<Footprint, String> {
        let context = sitsflow_sandbox::CallContext { stage: id.to_string(), chunk: "footprint".into() };
        let raw = plugin
            .instantiate(limits)
            .and_then(|mut i| i.footprint(&context, &params.to_string()))
            .map_err(|e| format!("footprint-for() {e}"))?;
        let fp = Footprint { tile: raw.tile as usize, halo: raw.halo as usize, scale: raw.scale as usize };
        if fp.tile > MAX_TILE || fp.halo > MAX_HALO || fp.scale == 0 || fp.scale > MAX_SCALE {
            return Err(format!(
                "footprint-for() gives tile {}, halo {}, scale {}: the host takes tiles up to {MAX_TILE} px, halos up to {MAX_HALO} px, scales 1 to {MAX_SCALE}",
                fp.tile, fp.halo, fp.scale
            ));
        }
        if plugin.info().kind == StageKind::CloudMask && fp.scale != 1 {
            return Err(format!("a cloud mask's output is on the series' grid, but footprint-for() gives scale {}", fp.scale));
        }
        Ok(fp)
    }
}

/// Pixels drawn to fit a clusterer when the pipeline does not say.
pub const DEFAULT_FIT_SAMPLES: u64 = 200_000;
/// Candidates a sampler considers when the pipeline does not say.
pub const DEFAULT_CANDIDATES: u64 = 1_000_000;
/// Share of a labeller's samples held out when the pipeline does not say.
pub const DEFAULT_HOLDOUT: f64 = 0.25;

/// What a labeller holds out of its samples for its accuracy report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    /// The share held out (0 = none).
    pub share: f64,
    /// The units held out whole.
    pub by: HoldoutBy,
}

/// The units held out whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldoutBy {
    /// 32 px squares of the grid, drawn per labeller.
    Blocks,
    /// Polygons (4-connected pixels of one class) of the sampler's selection, drawn per
    /// class and per sampler: every labeller of a sampler is tested on the same pixels.
    Polygons,
}

/// What runs a stage.
#[derive(Clone)]
pub enum Executor {
    /// A WebAssembly component, sandboxed.
    Plugin(Arc<Plugin>),
    /// A labeller whose network a PyTorch recipe of `models/` trains in the run (a
    /// subprocess under the file contract of `train`); it predicts through ONNX Runtime.
    Recipe(RecipePlan),
}

impl Executor {
    /// The stage kind it runs: a plugin's own; for a recipe, the kind its shape makes
    /// (a pretrainer, a super-resolver, else a labeller).
    pub fn kind(&self) -> StageKind {
        match self {
            Executor::Plugin(p) => p.info().kind,
            Executor::Recipe(r) => match r.shape() {
                RecipeShape::Pretraining => StageKind::Pretrainer,
                RecipeShape::SuperResolution => StageKind::SuperResolver,
                RecipeShape::Pixel | RecipeShape::Segmentation => StageKind::Labeller,
            },
        }
    }

    /// Whether it is a segmentation recipe (`fg-unet`), the one that takes `pretrained` and `vhr`.
    pub fn is_segmentation(&self) -> bool {
        matches!(self, Executor::Recipe(r) if r.shape() == RecipeShape::Segmentation)
    }
}

impl StagePlan {
    /// Whether the stage runs chunk by chunk on the series (cloud masks, features)
    /// rather than on the whole scene after them (clusterers, samplers, labellers).
    pub fn is_chunk_stage(&self) -> bool {
        matches!(self.role, Role::CloudMask { .. } | Role::Features { .. })
    }

    /// The stage's kind.
    pub fn kind(&self) -> StageKind {
        self.role.kind()
    }

    /// `cloud-mask`, `features`, `clusterer`, `labeller`, `sampler` or `decoder`, for
    /// messages and records.
    pub fn kind_name(&self) -> &'static str {
        sitsflow_sandbox::kind_name(self.kind())
    }

    /// What runs it, for messages and reports: `name@version`, or `recipe:lstm`.
    pub fn reference(&self) -> String {
        match &self.executor {
            Executor::Plugin(p) => p.info().reference(),
            Executor::Recipe(r) => format!("recipe:{}", r.arch),
        }
    }

    /// The component's (or the recipe sources') sha256.
    pub fn sha256(&self) -> &str {
        match &self.executor {
            Executor::Plugin(p) => p.sha256(),
            Executor::Recipe(r) => &r.sha256,
        }
    }

    /// The component, for stages that are one.
    pub fn plugin(&self) -> Option<&Arc<Plugin>> {
        match &self.executor {
            Executor::Plugin(p) => Some(p),
            Executor::Recipe(_) => None,
        }
    }

    /// The component of a chunk stage (cloud masks and features are always components).
    pub fn chunk_plugin(&self) -> &Arc<Plugin> {
        self.plugin().expect("Plan::resolve makes only components chunk stages")
    }
}

impl StagePlan {
    /// Parameters as the JSON text handed to the stage.
    pub fn params_json(&self) -> String {
        serde_json::to_string(&self.params).expect("JSON values serialise")
    }
}

/// The plugin directory used when neither the pipeline nor the environment names one.
fn default_plugin_dir(base: &Path) -> PathBuf {
    std::env::var_os("SITSFLOW_PLUGIN_DIR").map(PathBuf::from).unwrap_or_else(|| base.join("plugins"))
}

/// Resolves a `recipe = "…"` labeller: finds `models/` (beside the pipeline file or
/// above it, else above the working directory, else `SITSFLOW_MODELS_DIR`), checks that
/// Python can import torch and the recipe, and hashes the recipe's sources.
fn recipe_plan(
    stage: &sitsflow_config::Stage,
    recipe: &sitsflow_config::Located<String>,
    base: &Path,
    source: &Source,
) -> Result<RecipePlan, ConfigError> {
    let at = Some(recipe.span());
    let from_env = std::env::var_os("SITSFLOW_MODELS_DIR").map(PathBuf::from);
    let workspace = sitsflow_recipes::train::find_workspace_from(Some(base));
    let (models_dir, workspace) = match (from_env, workspace) {
        (Some(dir), Some(w)) => (dir, w),
        (None, Some(w)) => (w.join("models"), w),
        (_, None) => {
            return Err(source.error(
                at,
                "recipe labellers need the models/ folder of sitsflow (none above the pipeline file or the working \
                 directory); set SITSFLOW_MODELS_DIR to it",
            ));
        }
    };
    // `python_path` also honours SITSFLOW_MODELS_DIR and SITSFLOW_MODELS_PYTHON.
    let pythonpath = sitsflow_recipes::train::python_path(&workspace);
    sitsflow_recipes::train::check_environment(&pythonpath)
        .map_err(|e| source.error(at.clone(), format!("recipe = '{}' cannot be trained here: {e:#}", recipe.get_ref())))?;
    let package = models_dir.join("sitsflow_models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&package)
        .map_err(|e| source.error(at.clone(), format!("reading {}: {e}", package.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    files.sort();
    let mut sources = Vec::new();
    for f in &files {
        sources.extend_from_slice(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        sources.extend(std::fs::read(f).map_err(|e| source.error(at.clone(), format!("reading {}: {e}", f.display())))?);
    }
    let device = match &stage.device {
        Some(d) => d.get_ref().parse().map_err(|e| source.error(Some(d.span()), e))?,
        None => sitsflow_infer::Device::Auto,
    };
    Ok(RecipePlan { arch: recipe.get_ref().clone(), device, pythonpath, sha256: sitsflow_core::hash::sha256_hex(&sources) })
}

impl Plan {
    /// Resolves a parsed pipeline. Errors point into `source`.
    pub fn resolve(pipeline: &Pipeline, source: &Source, runtime: &Arc<Runtime>) -> Result<Plan, ConfigError> {
        let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let rel = |p: &str| sitsflow_core::fsutil::normalize(&base.join(p));
        let name = pipeline.name.get_ref().clone();
        let plugin_dir = PluginDir::new(
            pipeline.plugins.dir.as_ref().map(|d| rel(d.get_ref())).unwrap_or_else(|| default_plugin_dir(&base)),
        );
        let lockfile = pipeline.plugins.lockfile.as_ref().map(|l| rel(l.get_ref())).unwrap_or_else(|| {
            let stem = source.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or(name.clone());
            sitsflow_core::fsutil::normalize(&base.join(format!("{stem}.lock")))
        });

        let mut stages = Vec::new();
        for stage in &pipeline.stages {
            let id = stage.id.get_ref().clone();
            let interruption =
                if stage.trusted.as_ref().is_some_and(|t| *t.get_ref()) { Interruption::Trusted } else { Interruption::Deadline };
            let executor = match (&stage.plugin, &stage.path, &stage.recipe) {
                (None, None, Some(recipe)) => Executor::Recipe(recipe_plan(stage, recipe, &base, source)?),
                (Some(reference), _, _) => {
                    let file = plugin_dir
                        .find(reference.get_ref())
                        .map_err(|e| source.error(Some(reference.span()), format!("{e:#}")))?;
                    let plugin = runtime
                        .load_with(&file, interruption)
                        .map_err(|e| source.error(Some(reference.span()), format!("{e:#}")))?;
                    let info = plugin.info();
                    if info.name != reference.get_ref().name || info.version != reference.get_ref().version {
                        return Err(source.error(
                            Some(reference.span()),
                            format!("{} describes itself as '{}', not '{}'", file.display(), info.reference(), reference.get_ref()),
                        ));
                    }
                    Executor::Plugin(plugin)
                }
                (None, Some(path), _) => Executor::Plugin(
                    runtime
                        .load_with(&rel(path.get_ref()), interruption)
                        .map_err(|e| source.error(Some(path.span()), format!("{e:#}")))?,
                ),
                (None, None, None) => unreachable!("Pipeline::parse checks that a stage names its plugin"),
            };
            let kind = executor.kind();
            let kind_of = |target: &StageId| -> Option<StageKind> { stages.iter().find(|s: &&StagePlan| &s.id == target).map(|s| s.kind()) };
            let shown_kind_of = |target: &StageId| kind_of(target).map_or("unknown", sitsflow_sandbox::kind_name);
            let chunk_kind = matches!(kind, StageKind::CloudMask | StageKind::Features);
            let kind_shown = sitsflow_sandbox::kind_name(kind);
            if let (true, Some(v)) = (chunk_kind, &stage.samples) {
                return Err(source.error(Some(v.span()), format!("'samples' is for labeller stages; '{id}' is a {kind_shown} stage")));
            }
            let input = match &stage.input {
                Some(target) if kind == StageKind::Augmenter => {
                    return Err(source.error(
                        Some(target.span()),
                        format!("'input' is not for augmenter stages: '{id}' gets its patches from the pretraining stage that names it in `views`"),
                    ));
                }
                Some(target) if kind == StageKind::Decoder => {
                    let earlier = stages.iter().find(|s| &s.id == target.get_ref());
                    let ok = earlier.is_some_and(|s| match &s.role {
                        Role::Labeller { input, .. } => stages.iter().any(|f| &f.id == input && f.role.per_year()),
                        Role::Features { per_year, .. } => *per_year,
                        _ => false,
                    });
                    if !ok {
                        return Err(source.error(
                            Some(target.span()),
                            format!(
                                "input = '{}': a decoder reads yearly posteriors, from a labeller predicting per year or a per-year features stage of probabilities",
                                target.get_ref()
                            ),
                        ));
                    }
                    Some(target.get_ref().clone())
                }
                None if kind == StageKind::Decoder => {
                    return Err(source.error(
                        Some(stage.id.span()),
                        format!("the decoder stage '{id}' needs `input = \"<stage id>\"`: the labeller or per-year features stage whose posteriors it decodes"),
                    ));
                }
                Some(target) if chunk_kind => {
                    // A chunk stage reads an earlier features stage chunk by chunk: one
                    // raster of dated features (`NAME@DATE`), on the series' grid.
                    let earlier = stages.iter().find(|s| &s.id == target.get_ref());
                    match earlier.map(|s| &s.role) {
                        Some(Role::Features { per_year: false, .. }) => {}
                        Some(Role::Features { per_year: true, .. }) => {
                            return Err(source.error(
                                Some(target.span()),
                                format!("input = '{}' runs once per year; the {kind_shown} stage '{id}' reads one features raster of dated features", target.get_ref()),
                            ));
                        }
                        _ => {
                            return Err(source.error(
                                Some(target.span()),
                                format!(
                                    "input = '{}' is {}; the {kind_shown} stage '{id}' reads the series or an earlier features stage",
                                    target.get_ref(),
                                    earlier.map_or("not an earlier stage".to_string(), |s| format!("a {} stage", s.kind_name()))
                                ),
                            ));
                        }
                    }
                    Some(target.get_ref().clone())
                }
                Some(target) => {
                    // Features, or a pretrainer's embeddings (not for another pretrainer).
                    let gives = stages.iter().find(|s| &s.id == target.get_ref()).is_some_and(|s| {
                        s.role.gives_features() && !(kind == StageKind::Pretrainer && s.kind() == StageKind::Pretrainer)
                    });
                    if !gives {
                        return Err(source.error(
                            Some(target.span()),
                            format!(
                                "input = '{}' is a {} stage; '{id}' reads a features stage{}",
                                target.get_ref(),
                                shown_kind_of(target.get_ref()),
                                if kind == StageKind::Pretrainer { "" } else { " (or a pretrainer's embeddings)" }
                            ),
                        ));
                    }
                    Some(target.get_ref().clone())
                }
                None if chunk_kind || kind == StageKind::Augmenter => None,
                None => stages.iter().rev().find(|s| s.kind() == StageKind::Features).map(|s| s.id.clone()),
            };
            let views = match (&stage.views, kind) {
                (Some(v), StageKind::Pretrainer) => {
                    if kind_of(v.get_ref()) != Some(StageKind::Augmenter) {
                        return Err(source.error(
                            Some(v.span()),
                            format!("views = '{}' is a {} stage; a pretraining stage takes its views from an earlier augmenter stage", v.get_ref(), shown_kind_of(v.get_ref())),
                        ));
                    }
                    Some(v.get_ref().clone())
                }
                (None, StageKind::Pretrainer) => {
                    return Err(source.error(
                        Some(stage.id.span()),
                        format!("the pretraining stage '{id}' needs `views = \"<augmenter stage id>\"`: the plugin that makes its views (e.g. simclr-augment@0.1.0)"),
                    ));
                }
                (Some(v), _) => {
                    return Err(source.error(Some(v.span()), format!("'views' is for pretraining stages (recipe = \"simclr\"); '{id}' is a {kind_shown} stage")));
                }
                (None, _) => None,
            };
            let pretrained = match &stage.pretrained {
                None => None,
                Some(p) => {
                    if !executor.is_segmentation() {
                        return Err(source.error(Some(p.span()), format!("'pretrained' is for fg-unet labellers; '{id}' is {}", match &executor {
                            Executor::Recipe(r) => format!("recipe {}", r.arch),
                            Executor::Plugin(_) => format!("a {kind_shown} plugin"),
                        })));
                    }
                    if kind_of(p.get_ref()) != Some(StageKind::Pretrainer) {
                        return Err(source.error(
                            Some(p.span()),
                            format!("pretrained = '{}' is a {} stage; name an earlier pretraining stage (recipe = \"simclr\")", p.get_ref(), shown_kind_of(p.get_ref())),
                        ));
                    }
                    Some(p.get_ref().clone())
                }
            };
            let vhr = match &stage.vhr {
                None => None,
                Some(v) => {
                    if !executor.is_segmentation() {
                        return Err(source.error(Some(v.span()), format!("'vhr' is for fg-unet labellers, which fuse it with the series; '{id}' is {}", match &executor {
                            Executor::Recipe(r) => format!("recipe {}", r.arch),
                            Executor::Plugin(_) => format!("a {kind_shown} plugin"),
                        })));
                    }
                    let template = v.get_ref();
                    // Without `{year}` one image serves every year; with it, the training
                    // year's image is checked here and each other year's when it is mapped.
                    let year = stage.year.as_ref().map(|y| *y.get_ref());
                    let check = match year {
                        Some(y) => Some(template.replace("{year}", &y.to_string())),
                        None if !template.contains("{year}") => Some(template.clone()),
                        None => None,
                    };
                    if let Some(file) = check.map(|f| rel(&f)) {
                        if !file.is_file() {
                            return Err(source.error(Some(v.span()), format!("the VHR image {} does not exist", file.display())));
                        }
                    }
                    Some(rel(template))
                }
            };
            if let (StageKind::SuperResolver, Some(target)) = (kind, &input) {
                if stages.iter().any(|s| &s.id == target && s.role.per_year()) {
                    let at = stage.input.as_ref().map(|i| i.span()).or_else(|| Some(stage.id.span()));
                    return Err(source.error(at, format!("input = '{target}' runs once per year; the super-resolution stage '{id}' reads every date of the series: a features stage without per_year")));
                }
            }
            let annotations = match (&stage.annotations, kind) {
                (Some(a), StageKind::SuperResolver) if !a.get_ref().ends_with(".csv") => {
                    let target = a.get_ref();
                    let maps = stages.iter().find(|s| s.id.as_str() == target).map(|s| {
                        let yearly = match &s.role {
                            Role::Decoder { .. } => true,
                            Role::Labeller { input, .. } => stages.iter().any(|f| &f.id == input && f.role.per_year()),
                            _ => false,
                        };
                        (s.id.clone(), yearly)
                    });
                    match maps {
                        Some((id, true)) => Some(Annotations::Maps(id)),
                        Some((id, false)) => {
                            return Err(source.error(
                                Some(a.span()),
                                format!("annotations = '{target}' is a {} stage that writes no yearly maps; name a labeller over per-year features, a decoder, or a .csv of dated files", shown_kind_of(&id)),
                            ));
                        }
                        None => {
                            return Err(source.error(
                                Some(a.span()),
                                format!("annotations = '{target}' is neither an earlier stage nor a .csv file of dated annotations (date,path)"),
                            ));
                        }
                    }
                }
                (Some(a), StageKind::SuperResolver) => {
                    let csv = rel(a.get_ref());
                    Some(Annotations::Files(read_annotations(&csv).map_err(|e| source.error(Some(a.span()), e))?))
                }
                (None, StageKind::SuperResolver) => {
                    return Err(source.error(
                        Some(stage.id.span()),
                        format!("the super-resolution stage '{id}' needs `annotations = \"<file>.csv\"`: the dated annotations on the finer grid it trains on (date,path)"),
                    ));
                }
                (Some(a), _) => {
                    return Err(source.error(Some(a.span()), format!("'annotations' is for super-resolution stages (recipe = \"asunet\"); '{id}' is a {kind_shown} stage")));
                }
                (None, _) => None,
            };
            if matches!(kind, StageKind::Clusterer | StageKind::Labeller | StageKind::Pretrainer | StageKind::SuperResolver) && input.is_none() {
                return Err(source.error(
                    Some(stage.id.span()),
                    format!("the {kind_shown} stage '{id}' needs features: add a features stage before it (or name one with `input`)"),
                ));
            }
            let samples = match (&stage.samples, kind) {
                (Some(file), StageKind::Labeller) if matches!(file.get_ref(), sitsflow_config::SamplesSource::File(_)) => {
                    let sitsflow_config::SamplesSource::File(name) = file.get_ref() else { unreachable!("matched above") };
                    let path = rel(name);
                    if !path.is_file() {
                        return Err(source.error(Some(file.span()), format!("samples file {} does not exist", path.display())));
                    }
                    if let Executor::Recipe(r) = &executor {
                        return Err(source.error(
                            Some(file.span()),
                            format!(
                                "a recipe labeller ({}) trains on a sampler's selection in a run; train it on a CSV with \
                                 `sitsflow train --arch {} --samples {name}`, then give the model with `model = \"…\"`",
                                r.arch, r.arch
                            ),
                        ));
                    }
                    if stage.active_learning.is_some() {
                        return Err(source.error(Some(file.span()), "active learning grows a sampler's selection: give `samples` a sampler stage"));
                    }
                    Some(Err(path))
                }
                (Some(located), StageKind::Labeller) => {
                    let target = located.get_ref().stage().expect("a file is matched above");
                    if kind_of(target) != Some(StageKind::Sampler) {
                        return Err(source.error(
                            Some(located.span()),
                            format!(
                                "samples = '{}' is a {} stage; a labeller trains on a sampler's selection (or a samples CSV file)",
                                target,
                                shown_kind_of(target)
                            ),
                        ));
                    }
                    Some(Ok(target.clone()))
                }
                (Some(target), _) => {
                    return Err(source.error(Some(target.span()), format!("'samples' is for labeller stages; '{id}' is a {kind_shown} stage")));
                }
                (None, StageKind::Labeller) if stage.model.is_none() => {
                    return Err(source.error(
                        Some(stage.id.span()),
                        format!(
                            "the labeller stage '{id}' needs `samples = \"<sampler stage id>\"` to train on \
                             (or `model = \"<file>\"`, a model an earlier run stored)"
                        ),
                    ));
                }
                (None, _) => None,
            };
            let model = match (&stage.model, kind) {
                (None, _) => None,
                (Some(m), StageKind::Labeller) => {
                    let path = rel(m.get_ref());
                    if !path.is_file() {
                        return Err(source.error(Some(m.span()), format!("model file {} does not exist", path.display())));
                    }
                    Some(path)
                }
                (Some(m), _) => {
                    return Err(source.error(Some(m.span()), format!("'model' is for labeller stages; '{id}' is a {kind_shown} stage")));
                }
            };
            let sample_size = match stage.sample_size.as_ref() {
                Some(s) => SampleSize { n: *s.get_ref(), set: true },
                None => SampleSize { n: if kind == StageKind::Sampler { DEFAULT_CANDIDATES } else { DEFAULT_FIT_SAMPLES }, set: false },
            };
            let holdout = Holdout {
                share: stage.holdout.as_ref().map_or(DEFAULT_HOLDOUT, |h| *h.get_ref()),
                by: match stage.holdout_by.as_ref().map(|b| (b, b.get_ref().as_str())) {
                    None | Some((_, "blocks")) => HoldoutBy::Blocks,
                    Some((_, "polygons")) => HoldoutBy::Polygons,
                    Some((b, other)) => {
                        return Err(source.error(Some(b.span()), format!("holdout_by = '{other}': expected 'blocks' or 'polygons'")));
                    }
                },
            };
            if let (Some(b), false) = (&stage.holdout_by, kind == StageKind::Labeller) {
                return Err(source.error(Some(b.span()), format!("'holdout_by' is for labeller stages; '{id}' is a {kind_shown} stage")));
            }
            if let (Some(b), Some(_), HoldoutBy::Polygons) = (&stage.holdout_by, &stage.active_learning, holdout.by) {
                return Err(source.error(Some(b.span()), "active learning holds out 32 px blocks (its pool is drawn outside them); remove holdout_by"));
            }
            let active_learning = match (&stage.active_learning, kind) {
                (None, _) => None,
                (Some(a), StageKind::Labeller) => {
                    let al = a.get_ref();
                    if kind_of(&al.query) != Some(StageKind::Sampler) {
                        return Err(source.error(
                            Some(a.span()),
                            format!("active_learning.query = '{}' must name an earlier sampler stage", al.query),
                        ));
                    }
                    if al.rounds == 0 || al.pool == 0 {
                        return Err(source.error(Some(a.span()), "active_learning needs rounds ≥ 1 and pool ≥ 1"));
                    }
                    Some(al.clone())
                }
                (Some(a), _) => {
                    return Err(source.error(Some(a.span()), format!("'active_learning' is for labeller stages; '{id}' is a {kind_shown} stage")));
                }
            };
            let per_year = stage.per_year.as_ref().is_some_and(|p| *p.get_ref());
            if let (Some(p), false) = (&stage.per_year, kind == StageKind::Features) {
                return Err(source.error(Some(p.span()), format!("'per_year' is for features stages; '{id}' is a {kind_shown} stage")));
            }
            let input_per_year = input.as_ref().is_some_and(|i| stages.iter().any(|s| &s.id == i && s.role.per_year()));
            let year = match &stage.year {
                Some(y) if !input_per_year => {
                    return Err(source.error(
                        Some(y.span()),
                        format!("'year' picks a year of a per-year features stage, and '{id}' reads none"),
                    ));
                }
                Some(y) => Some(*y.get_ref()),
                None if input_per_year && kind == StageKind::Clusterer => {
                    return Err(source.error(
                        Some(stage.id.span()),
                        format!("the {kind_shown} stage '{id}' reads per-year features: say which year with `year = …`"),
                    ));
                }
                None => None,
            };

            let params = match &stage.params {
                Some(table) => serde_json::to_value(table.get_ref())
                    .map_err(|e| source.error(Some(table.span()), format!("parameters cannot be converted to JSON: {e}")))?,
                None => serde_json::json!({}),
            };
            let checked = match &executor {
                Executor::Plugin(plugin) => plugin.check_params(&params),
                Executor::Recipe(r) => sitsflow_recipes::network::check_params(&r.arch, &params),
            };
            if let Err(errors) = checked {
                let (pointer, message) = &errors[0];
                let at = param_span(source, stage.params.as_ref().map(|t| t.span()), pointer, message)
                    .or_else(|| Some(stage.id.span()));
                let more = if errors.len() > 1 { format!(" (and {} more)", errors.len() - 1) } else { String::new() };
                let place = if pointer.is_empty() { String::new() } else { format!(" at '{pointer}'") };
                return Err(source.error(
                    at,
                    format!(
                        "parameters of stage '{id}' do not fit {}'s schema{place}: {message}{more}",
                        match &executor {
                            Executor::Plugin(plugin) => plugin.info().reference(),
                            Executor::Recipe(r) => format!("the {} recipe", r.arch),
                        }
                    ),
                ));
            }
            if vhr.is_none() && params.get("vhr_scale").is_some() {
                let at = param_span(source, stage.params.as_ref().map(|t| t.span()), "/vhr_scale", "");
                return Err(source.error(at, format!("'vhr_scale' scales a VHR image, and stage '{id}' has none: add `vhr = \"…\"` or remove it")));
            }
            let memory_mib = stage.memory_mib.as_ref().map_or(DEFAULT_MEMORY_MIB, |m| *m.get_ref());
            let deadline_ms = stage.deadline_ms.as_ref().map_or(DEFAULT_DEADLINE_MS, |d| *d.get_ref());
            let limits = Limits { memory_bytes: memory_mib as usize * 1024 * 1024, deadline_ms };
            let at_params = || stage.params.as_ref().map(|t| t.span()).or_else(|| Some(stage.id.span()));
            let footprint = match &executor {
                Executor::Plugin(plugin) if chunk_kind => {
                    let fp = Footprint::ask(plugin, limits, id.as_str(), &params)
                        .map_err(|e| source.error(at_params(), format!("stage '{id}' ({}): {e}", plugin.info().reference())))?;
                    Some(fp)
                }
                _ => None,
            };
            if let Some(read) = &input {
                let scale = stages.iter().find(|s| &s.id == read).and_then(|s| s.role.footprint()).map_or(1, |f| f.scale);
                if scale != 1 {
                    return Err(source.error(
                        stage.input.as_ref().map(|i| i.span()),
                        format!("'{read}' writes on a grid {scale}× finer than the series; the {kind_shown} stage '{id}' reads only the series' grid"),
                    ));
                }
            }
            fn unresolved(kind: &str, what: &str) -> ! {
                unreachable!("Plan::resolve checked above that a {kind} stage has {what}")
            }
            let role = match kind {
                StageKind::CloudMask => Role::CloudMask { footprint: footprint.unwrap_or_else(|| unresolved(kind_shown, "a footprint")), input },
                StageKind::Features => Role::Features { footprint: footprint.unwrap_or_else(|| unresolved(kind_shown, "a footprint")), per_year, input },
                StageKind::Clusterer => Role::Clusterer { input: input.unwrap_or_else(|| unresolved(kind_shown, "an input")), year, sample_size },
                StageKind::Sampler => Role::Sampler { input, year, sample_size },
                StageKind::Labeller => Role::Labeller {
                    input: input.unwrap_or_else(|| unresolved(kind_shown, "an input")),
                    year,
                    holdout,
                    training: match (model, samples, active_learning) {
                        (Some(path), _, _) => Training::Stored(path),
                        (None, Some(Err(file)), _) => Training::Csv(file),
                        (None, Some(Ok(samples)), Some(learning)) => Training::ActiveLearning { samples, learning },
                        (None, Some(Ok(samples)), None) => Training::Samples(samples),
                        (None, None, _) => unresolved(kind_shown, "samples or a model"),
                    },
                    pretrained,
                    vhr,
                },
                StageKind::Decoder => Role::Decoder { input: input.unwrap_or_else(|| unresolved(kind_shown, "an input")) },
                StageKind::Augmenter => Role::Augmenter,
                StageKind::Pretrainer => Role::Pretrainer {
                    input: input.unwrap_or_else(|| unresolved(kind_shown, "an input")),
                    year,
                    views: views.unwrap_or_else(|| unresolved(kind_shown, "views")),
                    per_year: input_per_year,
                },
                StageKind::SuperResolver => Role::SuperResolver {
                    input: input.unwrap_or_else(|| unresolved(kind_shown, "an input")),
                    annotations: annotations.unwrap_or_else(|| unresolved(kind_shown, "annotations")),
                    scale: params.get("scale").and_then(serde_json::Value::as_u64).unwrap_or(4) as usize,
                },
            };
            stages.push(StagePlan { id, executor, limits, params, role });
        }

        let i = &pipeline.input;
        let source_kind = if let Some(p) = &i.series {
            InputSource::Series(rel(p.get_ref()))
        } else if let Some(p) = &i.l2a {
            InputSource::L2a(rel(p.get_ref()))
        } else if let Some(p) = &i.stac {
            InputSource::Stac(rel(p.get_ref()))
        } else {
            unreachable!("Pipeline::parse checks that [input] names one source")
        };
        let input = InputPlan {
            source: source_kind,
            bands: i.bands.as_ref().map(|b| b.get_ref().clone()),
            tile: i.tile.as_ref().map(|t| t.get_ref().clone()),
            boa_add_offset: i.boa_add_offset.as_ref().map(|o| *o.get_ref()),
            grid: i.grid.as_ref().map(|g| {
                let g = g.get_ref();
                GridSpec { crs: g.crs.clone(), bounds: g.bounds, resolution: g.resolution }
            }),
        };
        if let (Some(spec), Some(located)) = (&input.grid, &i.grid) {
            spec.to_grid().map_err(|e| source.error(Some(located.span()), format!("{e:#}")))?;
        }
        let reference = match &pipeline.reference {
            None => None,
            Some(r) => {
                let nomenclature = match (&r.nomenclature, &r.classes) {
                    (Some(n), _) => Nomenclature::load(&rel(n.get_ref()))?,
                    (None, Some(c)) => Nomenclature::from_classes_csv(&rel(c.get_ref()))?,
                    (None, None) => unreachable!("Pipeline::parse checks [reference]"),
                };
                Some(ReferencePlan { path: rel(r.path.get_ref()), nomenclature })
            }
        };

        check_output_names(&stages, pipeline, source)?;

        let mut evaluations = Vec::new();
        for e in &pipeline.evaluations {
            evaluations.push(EvaluatePlan {
                output: e.output.get_ref().clone(),
                truth: rel(e.truth.get_ref()),
                nomenclature: e.nomenclature.as_ref().map(|n| Nomenclature::load(&rel(n.get_ref()))).transpose()?,
                stratified: e.stratified,
            });
        }

        let mut models = Vec::new();
        for m in &pipeline.models {
            let path = rel(m.path.get_ref());
            if !path.is_file() {
                return Err(source.error(Some(m.path.span()), format!("model file {} does not exist", path.display())));
            }
            let device = m.device.as_ref().map_or(Ok(sitsflow_infer::Device::Auto), |d| d.get_ref().parse());
            let device = device.map_err(|e| source.error(m.device.as_ref().map(|d| d.span()), e))?;
            models.push(sitsflow_infer::ModelSpec { name: m.name.get_ref().clone(), path, device });
        }

        Ok(Plan {
            models,
            name: name.clone(),
            description: pipeline.description.clone(),
            pipeline: source.path.clone(),
            pipeline_text: source.text.clone(),
            input,
            reference,
            evaluations,
            output_dir: pipeline
                .output
                .dir
                .as_ref()
                .map(|d| rel(d.get_ref()))
                .unwrap_or_else(|| sitsflow_core::fsutil::normalize(&base.join("runs").join(&name))),
            chunk_size: pipeline.run.chunk_size.as_ref().map(|c| *c.get_ref()),
            memory_budget_mib: pipeline.run.memory_budget_mib.as_ref().map_or(DEFAULT_MEMORY_BUDGET_MIB, |b| *b.get_ref()),
            halo: pipeline.run.halo.as_ref().map_or(0, |h| *h.get_ref()),
            workers: pipeline.run.workers.unwrap_or(0) as usize,
            seed: pipeline.run.seed.unwrap_or(0),
            plugin_dir: plugin_dir.path,
            lockfile,
            stages,
        })
    }

    /// Loads and resolves a pipeline file.
    pub fn load(path: &Path, runtime: &Arc<Runtime>) -> Result<Plan, ConfigError> {
        let (pipeline, source) = Pipeline::load(path)?;
        Plan::resolve(&pipeline, &source, runtime)
    }

    /// The samplers that answer an active learner's queries: they run inside its loop,
    /// not as stages of their own.
    pub fn query_samplers(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter_map(|s| match &s.role {
                Role::Labeller { training: Training::ActiveLearning { learning, .. }, .. } => Some(learning.query.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Every file or folder a run reads besides what the run writes: the pipeline, the
    /// plugin folder, the input, the reference, the truth maps, labellers' samples CSVs,
    /// stored models and VHR images — each with what it is, for messages.
    pub fn input_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut inputs: Vec<(&'static str, PathBuf)> =
            vec![("the pipeline", self.pipeline.clone()), ("the plugin folder", self.plugin_dir.clone())];
        inputs.push(match &self.input.source {
            InputSource::Series(p) => ("the series folder", p.clone()),
            InputSource::L2a(p) => ("the L2A folder", p.clone()),
            InputSource::Stac(p) => ("the STAC file", p.clone()),
        });
        if let Some(r) = &self.reference {
            inputs.push(("the reference map", r.path.clone()));
        }
        for e in &self.evaluations {
            inputs.push(("a truth map", e.truth.clone()));
        }
        for stage in &self.stages {
            match &stage.role {
                Role::Labeller { training: Training::Csv(file), .. } => inputs.push(("a samples file", file.clone())),
                Role::Labeller { training: Training::Stored(model), .. } => inputs.push(("a stored model", model.clone())),
                _ => {}
            }
            if let Role::Labeller { vhr: Some(vhr), .. } = &stage.role {
                inputs.push(("a VHR image", vhr.clone()));
            }
            if let Role::SuperResolver { annotations: Annotations::Files(files), .. } = &stage.role {
                inputs.extend(files.iter().map(|a| ("an annotation", a.path.clone())));
            }
            match &stage.role {
                _ => {}
            }
        }
        inputs
    }

    /// Refuses a run directory that is one of the run's inputs or holds one (publishing
    /// replaces the files of the run directory), or that lies inside the series folder
    /// (whose rasters are read as dates). A stored model may sit in the run directory it
    /// was trained in: a run predicting with it writes its own models there.
    pub fn check_output_dir(&self) -> anyhow::Result<()> {
        let abs = |p: &Path| sitsflow_core::fsutil::normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
        let out = abs(&self.output_dir);
        let inputs: Vec<(&str, PathBuf)> = self.input_paths().into_iter().filter(|(what, _)| *what != "a stored model").collect();
        for (what, path) in &inputs {
            let path = abs(path);
            if path == out || path.starts_with(&out) {
                anyhow::bail!(
                    "the run directory {} holds {what} {}: publishing a run replaces its folder's files; give the run a \
                     folder of its own ([output] dir or --output)",
                    out.display(),
                    path.display()
                );
            }
        }
        let folder = match &self.input.source {
            InputSource::Series(dir) => Some(("the series folder", dir)),
            InputSource::L2a(dir) => Some(("the L2A folder", dir)),
            InputSource::Stac(_) => None,
        };
        if let Some((what, dir)) = folder {
            let dir = abs(dir);
            if out.starts_with(&dir) {
                anyhow::bail!(
                    "the run directory {} is inside {what} {}, whose rasters are read as the input; give the run a folder \
                     outside it ([output] dir or --output)",
                    out.display(),
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// Worker threads to use: `SITSFLOW_WORKERS` (the cores an engine gave this process:
    /// the scripts of `sitsflow plan` set it), else the pipeline's `workers`, else one per
    /// core. The count never changes a result.
    pub fn worker_count(&self) -> usize {
        if let Some(n) = std::env::var("SITSFLOW_WORKERS").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0) {
            return n;
        }
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The lockfile entries that pin this plan's plugins (recipe labellers are pinned by
    /// their sources' hash in the manifest, not in the lockfile).
    pub fn lock_entries(&self) -> Vec<LockEntry> {
        self.stages
            .iter()
            .filter_map(|s| s.plugin().map(|p| (s, p)))
            .map(|(s, p)| LockEntry {
                stage: s.id.to_string(),
                plugin: p.info().reference(),
                sha256: p.sha256().to_string(),
            })
            .collect()
    }

    /// Checks every plugin against the lockfile; the error says what differs and
    /// how to accept the change.
    pub fn verify_lock(&self) -> anyhow::Result<()> {
        let fix = format!("run `sitsflow plugins lock {}` to pin the plugins as they are now", self.pipeline.display());
        let Some(lock) = Lockfile::load(&self.lockfile)? else {
            anyhow::bail!("no lockfile {} pins this pipeline's plugins; {fix}", self.lockfile.display());
        };
        let mut problems = Vec::new();
        for entry in self.lock_entries() {
            match lock.entry(&entry.stage) {
                None => problems.push(format!("stage '{}' ({}) is not in the lockfile", entry.stage, entry.plugin)),
                Some(pinned) if pinned.plugin != entry.plugin => problems.push(format!(
                    "stage '{}' uses {} but the lockfile pins {}",
                    entry.stage, entry.plugin, pinned.plugin
                )),
                Some(pinned) if pinned.sha256 != entry.sha256 => problems.push(format!(
                    "stage '{}': {} has changed (sha256 {}…, the lockfile pins {}…)",
                    entry.stage,
                    entry.plugin,
                    &entry.sha256[..12],
                    &pinned.sha256[..12.min(pinned.sha256.len())]
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!(
                "plugins differ from the lockfile {}:\n  - {}\n{fix}",
                self.lockfile.display(),
                problems.join("\n  - ")
            )
        }
    }

    /// A readable summary, stable across machines (paths relative to the pipeline
    /// file, no hashes): what `sitsflow validate` prints and golden tests compare.
    pub fn render(&self) -> String {
        let base = self.pipeline.parent().unwrap_or(Path::new(""));
        let show = |p: &Path| sitsflow_core::fsutil::relative_to(p, base).display().to_string();
        let mut out = String::new();
        let _ = writeln!(out, "pipeline {}", self.name);
        let (kind, path) = match &self.input.source {
            InputSource::Series(p) => ("series", p),
            InputSource::L2a(p) => ("l2a", p),
            InputSource::Stac(p) => ("stac", p),
        };
        let _ = writeln!(out, "  input {kind:<7} {}", show(path));
        if let Some(bands) = &self.input.bands {
            let _ = writeln!(out, "  input bands   {}", bands.join(", "));
        }
        if let Some(tile) = &self.input.tile {
            let _ = writeln!(out, "  input tile    {tile}");
        }
        if let Some(offset) = self.input.boa_add_offset {
            let _ = writeln!(out, "  boa offset    {offset} DN where the products do not say");
        }
        if let Some(g) = &self.input.grid {
            let _ = writeln!(out, "  grid          {} {:?} at {} m", g.crs, g.bounds, g.resolution);
        }
        if let Some(r) = &self.reference {
            let _ = writeln!(
                out,
                "  reference     {} ({}: {} classes)",
                show(&r.path),
                r.nomenclature.name,
                r.nomenclature.classes.len()
            );
        }
        let _ = writeln!(out, "  output        {}", show(&self.output_dir));
        for e in &self.evaluations {
            let _ = writeln!(
                out,
                "  evaluate      {} against {}{}",
                e.output,
                show(&e.truth),
                if e.stratified { " (stratified sample)" } else { "" }
            );
        }
        let workers = if self.workers == 0 { "one per core".to_string() } else { self.workers.to_string() };
        let chunks = match self.chunk_size {
            Some(c) => format!("{c} x {c} px"),
            None => "sized to the budget".to_string(),
        };
        let _ = writeln!(
            out,
            "  chunks        {chunks}, halo {} px, memory budget {} MiB, workers: {workers}, seed {}",
            self.halo, self.memory_budget_mib, self.seed
        );
        let _ = writeln!(out, "  plugins       {} (lockfile {})", show(&self.plugin_dir), show(&self.lockfile));
        for m in &self.models {
            let _ = writeln!(out, "  model         {} = {} on {}", m.name, show(&m.path), m.device);
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let limits = match &stage.executor {
                Executor::Plugin(plugin) => {
                    let deadline = match plugin.interruption() {
                        Interruption::Deadline => format!("deadline {} ms", stage.limits.deadline_ms),
                        Interruption::Trusted => "trusted: no deadline".to_string(),
                    };
                    format!("memory {} MiB, {deadline}", stage.limits.memory_bytes >> 20)
                }
                Executor::Recipe(r) => format!("trained by a Python subprocess, ONNX Runtime on {}", r.device),
            };
            let _ = writeln!(out, "  stage {} {:<12} {} {} [{limits}]", i + 1, stage.id, stage.kind_name(), stage.reference());
            let _ = writeln!(out, "      params {}", stage.params_json());
            if stage.role.per_year() {
                let _ = writeln!(out, "      once per year");
            }
            if let Some(f) = stage.role.footprint() {
                let tile = if f.tile == 0 { "any chunk".to_string() } else { format!("tiles of {} px", f.tile) };
                let _ = writeln!(out, "      footprint {tile}, halo {} px, scale {}", f.halo, f.scale);
            }
            if let (true, Some(input)) = (stage.is_chunk_stage(), stage.role.input()) {
                let _ = writeln!(out, "      reads the features of '{input}' (chunk by chunk, dated NAME@DATE as a cube)");
            }
            if !stage.is_chunk_stage() {
                let mut reads = Vec::new();
                if let Some(input) = stage.role.input() {
                    let what = if matches!(stage.role, Role::Decoder { .. }) { "yearly posteriors" } else { "features" };
                    reads.push(format!("{what} of '{input}'"));
                }
                let mut learning = None;
                if let Role::Labeller { training, .. } = &stage.role {
                    match training {
                        Training::Samples(samples) => reads.push(format!("samples of '{samples}'")),
                        Training::ActiveLearning { samples, learning: al } => {
                            reads.push(format!("samples of '{samples}'"));
                            learning = Some(al);
                        }
                        Training::Stored(model) => reads.push(format!("the stored model {}", show(model))),
                        Training::Csv(file) => reads.push(format!("the samples of {}", show(file))),
                    }
                }
                if let Some(year) = stage.role.year() {
                    reads.push(format!("year {year}"));
                }
                let size = match &stage.role {
                    Role::Clusterer { sample_size, .. } => format!(", fitted on {sample_size} px"),
                    Role::Sampler { sample_size, .. } => format!(", up to {sample_size} candidates"),
                    Role::Labeller { holdout, .. } => format!(
                        ", {:.0} % held out{}",
                        holdout.share * 100.0,
                        if holdout.by == HoldoutBy::Polygons { " by polygons" } else { "" }
                    ),
                    _ => String::new(),
                };
                if let Some(al) = learning {
                    reads.push(format!("active learning: {} rounds of '{}' queries from {} px", al.rounds, al.query, al.pool));
                }
                let reads = if reads.is_empty() { "no features".to_string() } else { reads.join(", ") };
                let _ = writeln!(out, "      reads {reads}{size}");
            }
        }
        out
    }
}

/// The span of the parameter a schema error is about: the key named by the
/// pointer's first segment, or by the error text (unknown or missing properties),
/// found inside the parameters' table.
fn param_span(
    source: &Source,
    table: Option<std::ops::Range<usize>>,
    pointer: &str,
    message: &str,
) -> Option<std::ops::Range<usize>> {
    let table = table?;
    let key = pointer
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        // jsonschema: "Additional properties are not allowed ('c' was unexpected)"
        .or_else(|| message.split('\'').nth(1).map(str::to_string));
    let Some(key) = key else { return Some(table) };
    // A `[stage.params]` table's span is its header: its keys follow, up to the next header.
    let table = if source.text[table.clone()].starts_with('[') {
        let end = source.text[table.end..].find("\n[").map_or(source.text.len(), |i| table.end + i);
        table.start..end
    } else {
        table
    };
    let text = &source.text[table.clone()];
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(key.as_str()) {
        let start = from + pos;
        let end = start + key.len();
        let before_ok = start == 0 || matches!(bytes[start - 1], b' ' | b'\t' | b'\n' | b'{' | b',' | b'"');
        let after = text[end..].trim_start_matches('"').trim_start();
        if before_ok && after.starts_with('=') {
            return Some(table.start + start..table.start + end);
        }
        from = end;
    }
    Some(table)
}

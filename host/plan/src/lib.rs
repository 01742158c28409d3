//! The plan: a pipeline resolved against the file system and its plugins —
//! absolute paths, loaded plugins, parameters checked against each plugin's
//! schema, sandbox limits. Building it runs nothing but `describe()`.
//!
//! Also [`graph`] (the nodes a run executes, compiled from the plan) and [`plugins`]
//! (the plugin directory).

#![deny(missing_docs)]

pub mod graph;
mod kinds;
pub mod plugins;

pub use kinds::{
    Annotation, Annotations, DEFAULT_CANDIDATES, DEFAULT_FIT_SAMPLES, DEFAULT_HOLDOUT, Footprint, Holdout, HoldoutBy, Role, SampleSize,
    Training,
};

pub use sitsflow_recipes::RecipePlan;

use sitsflow_core::recipes::RecipeShape;
use sitsflow_config::{
    ConfigError, LockEntry, Lockfile, Nomenclature, Pipeline, Source,
    StageId,
};
use sitsflow_raster::{GridSpec, L2aOptions, Series, VectorSpec};
use crate::plugins::PluginDir;
use sitsflow_sandbox::StageKind;
use sitsflow_sandbox::{Interruption, Limits, Plugin, Runtime};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a pipeline could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The pipeline file (or a file it names) is wrong: `file:line:column: …`.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A cached compiled component failed its integrity check: the cache, not the
    /// pipeline, is at fault.
    #[error("{0:#}")]
    Cache(anyhow::Error),
}

/// A plugin that could not be loaded: the cache's fault, or the pipeline's (pointing
/// at the key that names the plugin).
fn load_error(source: &Source, span: std::ops::Range<usize>, e: anyhow::Error) -> PlanError {
    if e.chain().any(|c| c.downcast_ref::<sitsflow_sandbox::CacheRefused>().is_some()) {
        PlanError::Cache(e)
    } else {
        source.error(Some(span), format!("{e:#}")).into()
    }
}

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
    /// A STAC API search (frozen into the run directory by the first run).
    StacApi(StacApiPlan),
}

/// `[input] stac_api`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct StacApiPlan {
    /// The API's landing page.
    pub url: String,
    /// The collections searched.
    pub collections: Vec<String>,
    /// `[west, south, east, north]` in degrees.
    pub bbox: Option<[f64; 4]>,
    /// Or the vector file whose geometries the items must intersect.
    pub aoi: Option<PathBuf>,
    /// Items cloudier than this (percent) are left out.
    pub max_cloud_cover: Option<f64>,
    /// The most items a search may find.
    pub max_items: usize,
}

/// The file, in the run directory, that freezes the items a STAC API search found.
pub const FROZEN_STAC_ITEMS: &str = "stac-items.json";

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
    /// The acquisitions read (`start`/`end`).
    pub dates: sitsflow_core::dates::DateWindow,
}

impl InputPlan {
    /// Opens and checks the series (every file, band and date) without reading pixels.
    pub fn open(&self) -> anyhow::Result<Series> {
        let options = self.options()?;
        match &self.source {
            InputSource::Series(dir) => Series::open_folder_within(dir, self.bands.as_deref(), options.grid, &self.dates),
            InputSource::L2a(dir) => sitsflow_raster::open_l2a(dir, &options),
            InputSource::Stac(file) => sitsflow_raster::open_stac(file, &options),
            InputSource::StacApi(api) => {
                let found = self.search(api)?;
                sitsflow_raster::open_stac_items(&found.items, Path::new(&api.url), &options)
            }
        }
    }

    /// The area a STAC API search covers, in degrees: its bbox, or its AOI's bounds.
    fn clip(&self) -> anyhow::Result<Option<[f64; 4]>> {
        let InputSource::StacApi(api) = &self.source else { return Ok(None) };
        Ok(match (&api.bbox, &api.aoi) {
            (Some(b), _) => Some(*b),
            (None, Some(aoi)) => Some(sitsflow_raster::aoi_geometry(aoi)?.1),
            (None, None) => None,
        })
    }

    /// Searches the STAC API of `[input] stac_api` over `start`/`end`.
    pub fn search(&self, api: &StacApiPlan) -> anyhow::Result<sitsflow_raster::StacFound> {
        let intersects = api.aoi.as_deref().map(sitsflow_raster::aoi_geometry).transpose()?.map(|(g, _)| g);
        let search = sitsflow_raster::StacSearch {
            url: api.url.clone(),
            collections: api.collections.clone(),
            bbox: api.bbox,
            intersects,
            dates: self.dates.clone(),
            max_cloud_cover: api.max_cloud_cover,
            max_items: api.max_items,
        };
        let found = sitsflow_raster::search_stac(&search)?;
        log::info!(
            "STAC search of {} ({}): {} items{}",
            api.url,
            api.collections.join(", "),
            found.returned,
            if found.cloudy > 0 { format!(", {} left out above {}% cloud cover", found.cloudy, api.max_cloud_cover.unwrap_or(100.0)) } else { String::new() }
        );
        Ok(found)
    }

    /// Opens the series, a STAC API search from the items frozen in `run_dir` — searched
    /// and frozen there first when they are not (the rerun of a run reads the items its
    /// first search found, whatever the archive holds since).
    pub fn open_frozen(&self, run_dir: &Path) -> anyhow::Result<Series> {
        let InputSource::StacApi(api) = &self.source else { return self.open() };
        let frozen = run_dir.join(FROZEN_STAC_ITEMS);
        if frozen.is_file() {
            log::info!("reading the STAC items frozen in {} (delete it to search {} again)", frozen.display(), api.url);
        } else {
            let found = self.search(api)?;
            std::fs::create_dir_all(run_dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", run_dir.display()))?;
            let text = serde_json::to_string_pretty(&found.items)?;
            sitsflow_core::fsutil::write_atomic(&frozen, text.as_bytes())?;
            log::info!("froze the {} items found in {}", found.items["features"].as_array().map_or(0, Vec::len), frozen.display());
        }
        sitsflow_raster::open_stac(&frozen, &self.options()?)
    }

    /// What the readers of products and items are told: bands, tile, offset, grid, dates
    /// and the searched area.
    fn options(&self) -> anyhow::Result<L2aOptions> {
        Ok(L2aOptions {
            bands: self.bands.clone(),
            tile: self.tile.clone(),
            boa_add_offset: self.boa_add_offset,
            grid: self.grid.as_ref().map(GridSpec::to_grid).transpose()?,
            dates: self.dates.clone(),
            clip: self.clip()?,
        })
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
    /// The truth's vector layer and class field, when it is vectors.
    pub vector: Option<VectorSpec>,
    /// Class names → codes a name field resolves through: the evaluation's
    /// nomenclature, else the reference's.
    pub class_names: Vec<(String, u16)>,
}

/// The reference map, resolved.
#[derive(Debug, Clone)]
pub struct ReferencePlan {
    /// The reference raster, any CRS.
    pub path: PathBuf,
    /// Its codes → classes, with names and colours.
    pub nomenclature: Nomenclature,
    /// Its vector layer and class field, when it is vectors (rasterised by GDAL).
    pub vector: Option<VectorSpec>,
}

impl ReferencePlan {
    /// Class names → class codes, for vector class fields that hold names.
    pub fn class_names(&self) -> Vec<(String, u16)> {
        self.nomenclature.classes.iter().map(|c| (c.name.clone(), c.code)).collect()
    }
}

/// ` (layer 'parcels', classes from 'crop')` for the plan's summary.
fn shown_spec(v: &VectorSpec) -> String {
    match &v.layer {
        Some(l) => format!(" (layer '{l}', classes from field '{}')", v.class_field),
        None => format!(" (classes from field '{}')", v.class_field),
    }
}

fn vector_spec(layer: &Option<sitsflow_config::Located<String>>, class_field: &Option<sitsflow_config::Located<String>>) -> Option<VectorSpec> {
    class_field.as_ref().map(|f| VectorSpec { layer: layer.as_ref().map(|l| l.get_ref().clone()), class_field: f.get_ref().clone() })
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
    /// The first folder of installed plugins.
    pub plugin_dir: PathBuf,
    /// Every folder of installed plugins, searched in order.
    pub plugin_dirs: Vec<PathBuf>,
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

/// Names a run writes for itself, which no stage id may take.
const RESERVED_OUTPUTS: &[&str] = &["reference", "reference_ids", "report", "manifest", "models"];

/// Whether `name` is one of the names stage `stage` writes besides its own id.
fn writes_name(stage: &StagePlan, name: &str) -> bool {
    name.strip_prefix(stage.id.as_str()).and_then(|r| r.strip_prefix('_')).is_some_and(|rest| stage.role.writes(rest))
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
    pub fn resolve(pipeline: &Pipeline, source: &Source, runtime: &Arc<Runtime>) -> Result<Plan, PlanError> {
        let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let rel = |p: &str| sitsflow_core::fsutil::normalize(&base.join(p));
        let name = pipeline.name.get_ref().clone();
        let plugin_dirs: Vec<PluginDir> = match &pipeline.plugins.dir {
            Some(d) => d.get_ref().list().into_iter().map(|d| PluginDir::new(rel(d))).collect(),
            None => vec![PluginDir::new(default_plugin_dir(&base))],
        };
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
                    let file = crate::plugins::find_in(&plugin_dirs, reference.get_ref())
                        .map_err(|e| source.error(Some(reference.span()), format!("{e:#}")))?;
                    let plugin = runtime.load_with(&file, interruption).map_err(|e| load_error(source, reference.span(), e))?;
                    let info = plugin.info();
                    if info.name != reference.get_ref().name || info.version != reference.get_ref().version {
                        return Err(source
                            .error(
                                Some(reference.span()),
                                format!("{} describes itself as '{}', not '{}'", file.display(), info.reference(), reference.get_ref()),
                            )
                            .into());
                    }
                    Executor::Plugin(plugin)
                }
                (None, Some(path), _) => Executor::Plugin(
                    runtime.load_with(&rel(path.get_ref()), interruption).map_err(|e| load_error(source, path.span(), e))?,
                ),
                (None, None, None) => unreachable!("Pipeline::parse checks that a stage names its plugin"),
            };
            let limits = kinds::limits(stage);
            let cx = kinds::Cx {
                stage,
                id: &id,
                kind: executor.kind(),
                executor: &executor,
                earlier: &stages,
                source,
                base: &base,
                limits,
            };
            let (role, params) = kinds::resolve(&cx)?;
            stages.push(StagePlan { id, executor, limits, params, role });
        }

        let i = &pipeline.input;
        let source_kind = if let Some(p) = &i.series {
            InputSource::Series(rel(p.get_ref()))
        } else if let Some(p) = &i.l2a {
            InputSource::L2a(rel(p.get_ref()))
        } else if let Some(p) = &i.stac {
            InputSource::Stac(rel(p.get_ref()))
        } else if let Some(api) = &i.stac_api {
            let t = api.get_ref();
            InputSource::StacApi(StacApiPlan {
                url: t.url.clone(),
                collections: t.collections.clone(),
                bbox: t.bbox,
                aoi: t.aoi.as_ref().map(|a| rel(a)),
                max_cloud_cover: t.max_cloud_cover,
                max_items: t.max_items.unwrap_or(1000) as usize,
            })
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
            dates: i.dates(),
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
                Some(ReferencePlan { path: rel(r.path.get_ref()), nomenclature, vector: vector_spec(&r.layer, &r.class_field) })
            }
        };

        check_output_names(&stages, pipeline, source)?;

        let mut evaluations = Vec::new();
        for e in &pipeline.evaluations {
            let nomenclature = e.nomenclature.as_ref().map(|n| Nomenclature::load(&rel(n.get_ref()))).transpose()?;
            let class_names = match (&nomenclature, &reference) {
                (Some(n), _) => n.classes.iter().map(|c| (c.name.clone(), c.code)).collect(),
                (None, Some(r)) => r.class_names(),
                (None, None) => Vec::new(),
            };
            evaluations.push(EvaluatePlan {
                output: e.output.get_ref().clone(),
                truth: rel(e.truth.get_ref()),
                nomenclature,
                stratified: e.stratified,
                vector: vector_spec(&e.layer, &e.class_field),
                class_names,
            });
        }

        let mut models = Vec::new();
        for m in &pipeline.models {
            let path = rel(m.path.get_ref());
            if !path.is_file() {
                return Err(source.error(Some(m.path.span()), format!("model file {} does not exist", path.display())).into());
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
            plugin_dir: plugin_dirs[0].path.clone(),
            plugin_dirs: plugin_dirs.into_iter().map(|d| d.path).collect(),
            lockfile,
            stages,
        })
    }

    /// Loads and resolves a pipeline file.
    pub fn load(path: &Path, runtime: &Arc<Runtime>) -> Result<Plan, PlanError> {
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
            vec![("the pipeline", self.pipeline.clone())];
        let folder = self.plugin_folder_word();
        inputs.extend(self.plugin_dirs.iter().map(|d| (folder, d.clone())));
        inputs.push(match &self.input.source {
            InputSource::Series(p) => ("the series folder", p.clone()),
            InputSource::L2a(p) => ("the L2A folder", p.clone()),
            InputSource::Stac(p) => ("the STAC file", p.clone()),
            InputSource::StacApi(StacApiPlan { aoi: Some(p), .. }) => ("the STAC search's area", p.clone()),
            InputSource::StacApi(_) => ("the pipeline", self.pipeline.clone()),
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
        }
        inputs
    }

    /// Refuses a run directory that is one of the run's inputs or holds one (publishing
    /// replaces the files of the run directory), or that lies inside the series folder
    /// (whose rasters are read as dates) or the plugin folder. Paths are compared where
    /// they really are, so a symbolic link (the run directory, or a folder above it)
    /// cannot lead a run into its inputs. A stored model may sit in the run directory it
    /// was trained in: a run predicting with it writes its own models there.
    pub fn check_output_dir(&self) -> anyhow::Result<()> {
        use sitsflow_core::fsutil::resolve;
        let out = resolve(&self.output_dir);
        let shown = |p: &Path, real: &Path| {
            let lexical = sitsflow_core::fsutil::normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
            if lexical == real { real.display().to_string() } else { format!("{} (which resolves to {})", p.display(), real.display()) }
        };
        let inputs: Vec<(&str, PathBuf)> = self.input_paths().into_iter().filter(|(what, _)| *what != "a stored model").collect();
        for (what, path) in &inputs {
            let real = resolve(path);
            if real.starts_with(&out) {
                anyhow::bail!(
                    "the run directory {} holds {what} {}: publishing a run replaces its folder's files; give the run a \
                     folder of its own ([output] dir or --output)",
                    shown(&self.output_dir, &out),
                    shown(path, &real)
                );
            }
        }
        let folder = self.plugin_folder_word();
        let mut folders: Vec<(&str, &PathBuf)> = self.plugin_dirs.iter().map(|d| (folder, d)).collect();
        match &self.input.source {
            InputSource::Series(dir) => folders.push(("the series folder", dir)),
            InputSource::L2a(dir) => folders.push(("the L2A folder", dir)),
            InputSource::Stac(_) | InputSource::StacApi(_) => {}
        }
        for (what, dir) in folders {
            let real = resolve(dir);
            if out.starts_with(&real) {
                anyhow::bail!(
                    "the run directory {} is inside {what} {}, whose files are read as the run's input; give the run a folder \
                     outside it ([output] dir or --output)",
                    shown(&self.output_dir, &out),
                    shown(dir, &real)
                );
            }
        }
        Ok(())
    }

    /// How messages name one of the plugin folders.
    fn plugin_folder_word(&self) -> &'static str {
        if self.plugin_dirs.len() == 1 { "the plugin folder" } else { "a plugin folder" }
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
            InputSource::StacApi(api) => {
                let area = match (&api.bbox, &api.aoi) {
                    (Some(b), _) => format!("bbox {b:?}"),
                    (None, Some(a)) => format!("aoi {}", show(a)),
                    (None, None) => String::new(),
                };
                let clouds = api.max_cloud_cover.map_or(String::new(), |c| format!(", cloud cover ≤ {c} %"));
                let _ = writeln!(out, "  input stac-api {} ({}), {area}{clouds}, at most {} items", api.url, api.collections.join(", "), api.max_items);
                ("", &self.pipeline)
            }
        };
        if !kind.is_empty() {
            let _ = writeln!(out, "  input {kind:<7} {}", show(path));
        }
        if let Some(bands) = &self.input.bands {
            let _ = writeln!(out, "  input bands   {}", bands.join(", "));
        }
        if let Some(tile) = &self.input.tile {
            let _ = writeln!(out, "  input tile    {tile}");
        }
        if let Some(offset) = self.input.boa_add_offset {
            let _ = writeln!(out, "  boa offset    {offset} DN where the products do not say");
        }
        if !self.input.dates.is_all() {
            let _ = writeln!(out, "  input dates   {}", self.input.dates.describe());
        }
        if let Some(g) = &self.input.grid {
            let _ = writeln!(out, "  grid          {} {:?} at {} m", g.crs, g.bounds, g.resolution);
        }
        if let Some(r) = &self.reference {
            let _ = writeln!(
                out,
                "  reference     {}{} ({}: {} classes)",
                show(&r.path),
                r.vector.as_ref().map_or(String::new(), shown_spec),
                r.nomenclature.name,
                r.nomenclature.classes.len()
            );
        }
        let _ = writeln!(out, "  output        {}", show(&self.output_dir));
        for e in &self.evaluations {
            let _ = writeln!(
                out,
                "  evaluate      {} against {}{}{}",
                e.output,
                show(&e.truth),
                e.vector.as_ref().map_or(String::new(), shown_spec),
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
        let dirs: Vec<String> = self.plugin_dirs.iter().map(|d| show(d)).collect();
        let _ = writeln!(out, "  plugins       {} (lockfile {})", dirs.join(", then "), show(&self.lockfile));
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

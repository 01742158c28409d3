//! The pipeline file (`sitsflow run pipeline.toml`), schema version 1.
//!
//! ```toml
//! schema = 1
//! name = "demo"
//!
//! [input]
//! series = "../data/demo/series"     # folder of YYYY-MM-DD.tif, relative to this file
//!                                    # (or l2a = "products/", or stac = "items.json")
//!
//! [output]
//! dir = "../runs/demo"               # the run directory
//!
//! [run]
//! chunk_size = 256                   # pixels per chunk side
//!
//! [plugins]
//! dir = "../plugins/dist"            # where `name@version` plugins live
//!
//! [[stage]]
//! id = "ndvi"
//! plugin = "normalized-difference@0.1.0"
//! params = { a = "B08", b = "B04", name = "NDVI" }
//! ```

use super::source::{ConfigError, Located, Source};
use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// The pipeline schema version this build reads.
pub const SCHEMA_VERSION: u32 = 1;

pub use sitsflow_core::ids::{valid_plugin_name, valid_version};
pub use sitsflow_core::limits::{DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB};

/// A parsed, syntactically valid pipeline, with the spans of its values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `schema = 1`: the pipeline schema version the file is written for.
    pub schema: Located<u32>,
    /// `name = "demo"`: names the run in reports.
    pub name: Located<String>,
    /// `description = "…"`: free text for the report.
    #[serde(default)]
    pub description: Option<String>,
    /// `[input]`: the image time series.
    pub input: Input,
    /// `[reference]`: a reference map, aligned and written with the outputs.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// `[output]`: where results go.
    #[serde(default)]
    pub output: Output,
    /// `[run]`: chunking, parallelism and seed.
    #[serde(default)]
    pub run: Run,
    /// `[plugins]`: where plugins are found and pinned.
    #[serde(default)]
    pub plugins: Plugins,
    /// `[[stage]]`: the stages, run in order.
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
    /// `[[evaluate]]`: accuracy of outputs against truth rasters, in the report.
    #[serde(default, rename = "evaluate")]
    pub evaluations: Vec<Evaluate>,
    /// `[[model]]`: ONNX models that stages may run through the host's `infer` import.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelDecl>,
}

/// `[[model]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDecl {
    /// `name = "tempcnn"`: what stages call it (e.g. onnx-classifier's `model` parameter).
    pub name: Located<String>,
    /// `path = "../models/pretrained/demo-tempcnn/model.onnx"`: the ONNX file; its
    /// `model.json` sidecar beside it is read when present.
    pub path: Located<String>,
    /// `device = "auto"`: `auto` (CUDA when usable, else CPU, saying why), `cpu` or `cuda`.
    #[serde(default)]
    pub device: Option<Located<String>>,
}

/// `[[evaluate]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// `output = "reference"`: a class-map output of the run (a stage id, or `reference`).
    pub output: Located<String>,
    /// `truth = "truth/2018.tif"`: the reference raster, any CRS (aligned by mode); or
    /// vectors with `class_field`.
    pub truth: Located<String>,
    /// `layer = "points"`: the truth's vector layer (default: its only one).
    #[serde(default)]
    pub layer: Option<Located<String>>,
    /// `class_field = "class"`: the attribute with each truth feature's class (code, or
    /// class name of the nomenclature).
    #[serde(default)]
    pub class_field: Option<Located<String>>,
    /// `nomenclature = "….toml"`: translate the truth's codes first.
    #[serde(default)]
    pub nomenclature: Option<Located<String>>,
    /// `stratified = true`: the truth is a sample stratified by map class (area estimates).
    #[serde(default)]
    pub stratified: bool,
}

/// `[input]`: exactly one of `series`, `l2a` or `stac`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// `series = "path"`: a folder of per-date rasters `YYYY-MM-DD.tif`, band names in
    /// the band descriptions; relative to the pipeline file.
    #[serde(default)]
    pub series: Option<Located<String>>,
    /// `l2a = "path"`: a folder of Sentinel-2 L2A products (`.SAFE` folders or band
    /// files like `T33TPS_20190119T100319_B04_10m.jp2`).
    #[serde(default)]
    pub l2a: Option<Located<String>>,
    /// `stac = "items.json"`: a STAC ItemCollection whose assets are the bands.
    #[serde(default)]
    pub stac: Option<Located<String>>,
    /// `stac_api = { url = "…", collections = ["sentinel-2-l2a"], bbox = [w, s, e, n] }`
    /// (or `aoi = "field.gpkg"`; `max_cloud_cover = 20`): search a STAC API over
    /// `start`/`end`; a run freezes the items found in its run directory
    /// (`stac-items.json`) and every later run reads those.
    #[serde(default)]
    pub stac_api: Option<Located<StacApiTable>>,
    /// `bands = ["B02", "B04", "B08"]`: read only these bands, in this order (default:
    /// all bands of a series folder; B02–B08, B8A, B11, B12 of L2A products and STAC items).
    #[serde(default)]
    pub bands: Option<Located<Vec<String>>>,
    /// `tile = "T33TPS"`: the tile to read when an L2A folder holds several.
    #[serde(default)]
    pub tile: Option<Located<String>>,
    /// `boa_add_offset = -1000`: the L2A offset in DN for products whose metadata does not
    /// say (read from `MTD_MSIL2A.xml` or the product name when they do).
    #[serde(default)]
    pub boa_add_offset: Option<Located<f64>>,
    /// `grid = { crs = "EPSG:32633", bounds = [xmin, ymin, xmax, ymax], resolution = 10.0 }`:
    /// the target grid every input is aligned to (default: the first input's grid).
    #[serde(default)]
    pub grid: Option<Located<GridTable>>,
    /// `start = "2018-08-01"`: the first acquisition date read (included; default: the
    /// series' first).
    #[serde(default)]
    pub start: Option<Located<String>>,
    /// `end = "2018-11-30"`: the last acquisition date read (included; default: the
    /// series' last).
    #[serde(default)]
    pub end: Option<Located<String>>,
}

impl Input {
    /// The dates a run reads (`start`/`end`, checked by [`Pipeline::parse`]).
    pub fn dates(&self) -> sitsflow_core::dates::DateWindow {
        sitsflow_core::dates::DateWindow {
            start: self.start.as_ref().map(|s| s.get_ref().clone()),
            end: self.end.as_ref().map(|e| e.get_ref().clone()),
        }
    }
}

/// `stac_api = { url = "…", collections = ["…"], bbox = [w, s, e, n], max_cloud_cover = 20 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacApiTable {
    /// The API's landing page, e.g. `https://earth-search.aws.element84.com/v1`.
    pub url: String,
    /// The collections to search, e.g. `["sentinel-2-l2a"]`.
    pub collections: Vec<String>,
    /// `[west, south, east, north]` in degrees (WGS 84).
    #[serde(default)]
    pub bbox: Option<[f64; 4]>,
    /// Or a vector file (one layer, any CRS) whose geometries the items must intersect.
    #[serde(default)]
    pub aoi: Option<String>,
    /// Leave out items whose `eo:cloud_cover` (percent) is above this.
    #[serde(default)]
    pub max_cloud_cover: Option<f64>,
    /// Refuse a search that finds more items than this (default 1000).
    #[serde(default)]
    pub max_items: Option<u32>,
}

/// `grid = { crs = "EPSG:32633", bounds = [xmin, ymin, xmax, ymax], resolution = 10.0 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridTable {
    /// The grid's CRS, e.g. `EPSG:32633`.
    pub crs: String,
    /// `[xmin, ymin, xmax, ymax]` in CRS units.
    pub bounds: [f64; 4],
    /// Pixel size in CRS units.
    pub resolution: f64,
}

/// `[reference]`: a categorical reference map (e.g. CORINE Land Cover).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// `path = "clc2018.tif"`: any CRS; aligned to the cube grid by mode. Or vectors in
    /// any format OGR reads (`parcels.gpkg`, `points.shp`, `.geojson`), with `class_field`.
    pub path: Located<String>,
    /// `layer = "parcels"`: the vector layer (default: the file's only one).
    #[serde(default)]
    pub layer: Option<Located<String>>,
    /// `class_field = "crop"`: the attribute with each feature's class, a code or a class
    /// name of the nomenclature; makes `path` a vector reference.
    #[serde(default)]
    pub class_field: Option<Located<String>>,
    /// `nomenclature = "nomenclature/clc-to-10.toml"`: source codes → classes.
    #[serde(default)]
    pub nomenclature: Option<Located<String>>,
    /// `classes = "classes.csv"`: `code,name,color`, codes kept as they are.
    #[serde(default)]
    pub classes: Option<Located<String>>,
}

/// `[output]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// `dir = "runs/demo"`: the run directory, relative to the pipeline file
    /// (default `runs/<name>`).
    #[serde(default)]
    pub dir: Option<Located<String>>,
}

/// `[run]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// `chunk_size = 256`: side of a square chunk in pixels (16..=4096); default: the
    /// largest that fits the memory budget.
    #[serde(default)]
    pub chunk_size: Option<Located<u32>>,
    /// `memory_budget_mib = 2048`: what the run may hold in memory at once (chunks in
    /// flight, stage instances, GDAL's cache).
    #[serde(default)]
    pub memory_budget_mib: Option<Located<u32>>,
    /// `halo = 16`: pixels of context read around each chunk for spatial stages; outputs
    /// keep only the chunk itself.
    #[serde(default)]
    pub halo: Option<Located<u32>>,
    /// `workers = 0`: worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: Option<u32>,
    /// `seed = 42`: seed handed to stochastic stages.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `[plugins]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    /// `dir = "plugins"`: folder of installed plugins `name@version.wasm`, relative to the
    /// pipeline file (default: `$SITSFLOW_PLUGIN_DIR`, else `plugins/` beside the file).
    /// Or several, searched in order: `dir = ["my-plugins", "../plugins/dist"]` (an
    /// author's stages beside the shipped ones; the lockfile pins each one's bytes).
    #[serde(default)]
    pub dir: Option<Located<Folders>>,
    /// `lockfile = "demo.lock"`: the sha256 pins (default: the pipeline's name with `.lock`).
    #[serde(default)]
    pub lockfile: Option<Located<String>>,
}

/// One folder, or several searched in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Folders {
    /// `dir = "plugins"`
    One(String),
    /// `dir = ["mine", "../plugins/dist"]`
    Several(Vec<String>),
}

impl Folders {
    /// The folders, in search order.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Folders::One(d) => vec![d.as_str()],
            Folders::Several(ds) => ds.iter().map(String::as_str).collect(),
        }
    }
}

/// `[[stage]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// `id = "ndvi"`: unique within the pipeline; names outputs and errors.
    pub id: Located<StageId>,
    /// `plugin = "normalized-difference@0.1.0"`: an installed plugin.
    #[serde(default)]
    pub plugin: Option<Located<PluginRef>>,
    /// `path = "my-stage.wasm"`: a component file instead, relative to the pipeline file.
    #[serde(default)]
    pub path: Option<Located<String>>,
    /// `recipe = "lstm"`: instead of a plugin, a labeller whose network is trained in the
    /// run by a PyTorch recipe of `models/` (`lstm`, `tempcnn` or `fg-unet`, launched as
    /// a subprocess) and predicts through ONNX Runtime on the host. Its `params` go to the
    /// recipe (`epochs`, `patience`, `batch_size`, `learning_rate`, `threads`,
    /// `hyperparameters`, `nproc_per_node` and `nodes` for a distributed training;
    /// fg-unet also `tile`, `overlap`, `patch`, `patches_per_epoch`); its input is per-date features named `BAND@DATE`. `fg-unet` is a
    /// segmentation network: it trains on patches around the selection's pixels and
    /// predicts by overlapping tiles. `simclr` is not a labeller but a pretraining stage:
    /// it trains FG-UNet's encoder self-supervised on the views of an augmenter stage
    /// (`views = "…"`) of patches of its `input`, for an `fg-unet` labeller to start from
    /// (`pretrained = "…"`); its params: `epochs`, `batches_per_epoch`, `batch_size`,
    /// `patch`, `temperature`, `learning_rate`, `momentum`, `projection_dim`,
    /// `hyperparameters` (width, depth), `threads`, `seed`.
    #[serde(default)]
    pub recipe: Option<Located<String>>,
    /// `device = "auto"`: where a recipe labeller's network runs (`auto`, `cpu`, `cuda`).
    #[serde(default)]
    pub device: Option<Located<String>>,
    /// `memory_mib = 1024`: the instance's memory cap (1..=4096).
    #[serde(default)]
    pub memory_mib: Option<Located<u32>>,
    /// `deadline_ms = 60000`: the longest one call on one chunk may take.
    #[serde(default)]
    pub deadline_ms: Option<Located<u64>>,
    /// `trusted = true`: run the plugin compiled without the sandbox's interruption
    /// checks — no deadline (so no `deadline_ms`), faster tight loops; memory cap and
    /// capability isolation unchanged. Only for plugins you trust to terminate.
    #[serde(default)]
    pub trusted: Option<Located<bool>>,
    /// `params = { … }` or `[stage.params]`: checked against the plugin's schema.
    #[serde(default)]
    pub params: Option<Located<toml::Table>>,
    /// `input = "stats"`: the features stage a clusterer, sampler or labeller reads
    /// (default: the last features stage before it).
    #[serde(default)]
    pub input: Option<Located<StageId>>,
    /// `samples = "reliable"`: the sampler stage whose selection a labeller trains on;
    /// or `samples = "train.csv"`: a samples CSV (relative to the pipeline file: `label`,
    /// optional `group`, one column per feature of the labeller's input, matched by name).
    #[serde(default)]
    pub samples: Option<Located<SamplesSource>>,
    /// `model = "../runs/demo/models/landcover.model"`: instead of `samples`, a model an
    /// earlier run of this labeller trained and stored (a plugin's `models/<id>.model`,
    /// or a recipe's `models/<id>/model.onnx`); the stage only predicts with it.
    #[serde(default)]
    pub model: Option<Located<String>>,
    /// `sample_size = 200000`: pixels drawn at random to fit a clusterer on, or the most
    /// candidate pixels a sampler considers.
    #[serde(default)]
    pub sample_size: Option<Located<u64>>,
    /// `holdout = 0.25`: share of a labeller's samples held out, by 32 px blocks, for its
    /// accuracy report (0 = report none).
    #[serde(default)]
    pub holdout: Option<Located<f64>>,
    /// `holdout_by = "polygons"`: what is held out whole: `"blocks"` (32 px squares, the
    /// default) or `"polygons"` (4-connected pixels of one class in the sampler's
    /// selection, e.g. parcels of a sparse reference; seed 004). A polygon split is drawn
    /// from the run's seed and the sampler's id, so labellers of one sampler with the
    /// same `holdout` are assessed on the same pixels.
    #[serde(default)]
    pub holdout_by: Option<Located<String>>,
    /// `per_year = true`: run a features stage once per calendar year of the series, on
    /// that year's dates, writing `<id>_<year>.tif` (date-named features become `@t00`,
    /// `@t01`, … so that a model trained on one year applies to the others).
    #[serde(default)]
    pub per_year: Option<Located<bool>>,
    /// `year = 2018`: which year of a per-year input a clusterer or sampler works on, or a
    /// labeller trains on (a labeller without `year` trains on all years' features of its
    /// samples: a multi-year training set; a sampler without one sees no features, only
    /// the class layers).
    #[serde(default)]
    pub year: Option<Located<i32>>,
    /// `active_learning = { query = "query", rounds = 8, pool = 20000 }`: grow a labeller's
    /// sparse samples by active learning, the reference map answering the queries.
    #[serde(default)]
    pub active_learning: Option<Located<ActiveLearning>>,
    /// `views = "views"`: the augmenter stage whose views a pretraining stage
    /// (`recipe = "simclr"`) trains on (seed 003).
    #[serde(default)]
    pub views: Option<Located<StageId>>,
    /// `pretrained = "ssl"`: the pretraining stage whose encoder an `fg-unet` labeller
    /// starts from; it is also trained from scratch at each of its `budgets`, for the
    /// self-supervised-against-supervised table (seed 003).
    #[serde(default)]
    pub pretrained: Option<Located<StageId>>,
    /// `vhr = "../data/demo-urban/vhr/{year}.tif"`: a very-high-resolution image of the
    /// scene (seed 003's fusion) an `fg-unet` labeller reads beside its features, warped
    /// onto the scene's grid made `vhr_scale` times finer (its param; by default the
    /// image's own resolution ratio); `{year}` stands for the year of each map. The
    /// labeller then trains a fusion network (one encoder per modality, fused late)
    /// beside the series-only one, and maps with the fusion network.
    #[serde(default)]
    pub vhr: Option<Located<String>>,
    /// `annotations = "../data/demo-forest/forest/annotations.csv"`: the dated
    /// very-high-resolution annotations a super-resolution stage (`recipe = "asunet"`,
    /// seed 000) trains on — a CSV of `date,path` (paths relative to it), each a class
    /// raster on a grid finer than the scene's.
    #[serde(default)]
    pub annotations: Option<Located<String>>,
}

/// `active_learning = { … }` of a labeller stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveLearning {
    /// `query = "query"`: the sampler stage that picks each round's queries from the
    /// unlabelled pool's class probabilities (it does not run on its own).
    pub query: StageId,
    /// `rounds = 8`: query rounds after the first training.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// `pool = 20000`: unlabelled pixels drawn at random (outside the held-out blocks) to query from.
    #[serde(default = "default_pool")]
    pub pool: u64,
}

fn default_rounds() -> u32 {
    5
}

fn default_pool() -> u64 {
    20_000
}

/// What a labeller trains on: a sampler stage's selection, or a samples CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SamplesSource {
    /// A sampler stage, by id.
    Stage(StageId),
    /// A path ending in `.csv`, as written (relative to the pipeline file).
    File(String),
}

impl TryFrom<String> for SamplesSource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.to_ascii_lowercase().ends_with(".csv") {
            return Ok(SamplesSource::File(s));
        }
        StageId::try_from(s).map(SamplesSource::Stage).map_err(|e| format!("{e}; or name a samples CSV file (*.csv)"))
    }
}

impl SamplesSource {
    /// The sampler stage, when it names one.
    pub fn stage(&self) -> Option<&StageId> {
        match self {
            SamplesSource::Stage(id) => Some(id),
            SamplesSource::File(_) => None,
        }
    }
}

/// A stage id: a lower-case letter, then letters, digits, `-` or `_`; at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct StageId(String);

impl TryFrom<String> for StageId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut chars = s.chars();
        let ok = s.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(StageId(s))
        } else {
            Err(format!(
                "invalid stage id '{s}': use a lower-case letter, then lower-case letters, digits, '-' or '_' (at most 64)"
            ))
        }
    }
}

impl StageId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plugin reference `name@version`, e.g. `normalized-difference@0.1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct PluginRef {
    /// The plugin name, e.g. `normalized-difference`.
    pub name: String,
    /// The plugin version, `MAJOR.MINOR.PATCH`.
    pub version: String,
}


impl TryFrom<String> for PluginRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let Some((name, version)) = s.split_once('@') else {
            return Err(format!("invalid plugin reference '{s}': expected 'name@version', e.g. 'normalized-difference@0.1.0'"));
        };
        if !valid_plugin_name(name) {
            return Err(format!("invalid plugin name '{name}': use lower-case letters, digits and '-'"));
        }
        if !valid_version(version) {
            return Err(format!("invalid plugin version '{version}': expected MAJOR.MINOR.PATCH"));
        }
        Ok(PluginRef { name: name.to_string(), version: version.to_string() })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl Pipeline {
    /// Reads and parses a pipeline file, checking everything that needs no plugin.
    pub fn load(path: &Path) -> Result<(Pipeline, Source), ConfigError> {
        let source = Source::read(path)?;
        let pipeline = Self::parse(&source)?;
        Ok((pipeline, source))
    }

    /// Parses pipeline text, checking everything that needs no plugin.
    pub fn parse(source: &Source) -> Result<Pipeline, ConfigError> {
        let pipeline: Pipeline = toml::from_str(&source.text).map_err(|e| {
            // toml's message repeats the place and the line; keep only what it says.
            source.error(e.span(), e.message().trim_end().to_string())
        })?;
        pipeline.check(source)?;
        Ok(pipeline)
    }

    fn check(&self, source: &Source) -> Result<(), ConfigError> {
        let at = |l: &dyn Spanned| Some(l.span());
        if *self.schema.get_ref() != SCHEMA_VERSION {
            return Err(source.error(
                at(&self.schema),
                format!(
                    "unsupported schema version {} (this sitsflow reads schema {SCHEMA_VERSION})",
                    self.schema.get_ref()
                ),
            ));
        }
        if self.name.get_ref().trim().is_empty() {
            return Err(source.error(at(&self.name), "the pipeline name must not be empty"));
        }
        let mut inputs: Vec<std::ops::Range<usize>> =
            [&self.input.series, &self.input.l2a, &self.input.stac].into_iter().flatten().map(|l| l.span()).collect();
        inputs.extend(self.input.stac_api.as_ref().map(|l| l.span()));
        inputs.sort_by_key(|r| r.start);
        match inputs.as_slice() {
            [] => return Err(source.error(None, "[input] needs one of `series`, `l2a`, `stac` or `stac_api`")),
            [_] => {}
            [_, second, ..] => {
                return Err(source.error(Some(second.clone()), "[input] takes one of `series`, `l2a`, `stac` or `stac_api`, not several"));
            }
        }
        if let Some(api) = &self.input.stac_api {
            let t = api.get_ref();
            let problem = if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                Some(format!("stac_api.url '{}' is not an http(s) address", t.url))
            } else if t.collections.is_empty() {
                Some("stac_api.collections names no collection".to_string())
            } else if t.bbox.is_some() == t.aoi.is_some() {
                Some("stac_api takes the area to search as `bbox = [west, south, east, north]` (degrees) or `aoi = \"file\"`, one of them".to_string())
            } else if let Some([w, s, e, n]) = t.bbox.filter(|[w, s, e, n]| !(-180.0 <= *w && w < e && *e <= 180.0 && -90.0 <= *s && s < n && *n <= 90.0)) {
                Some(format!("stac_api.bbox [{w}, {s}, {e}, {n}] is not [west, south, east, north] in degrees"))
            } else if let Some(c) = t.max_cloud_cover.filter(|c| !(0.0..=100.0).contains(c)) {
                Some(format!("stac_api.max_cloud_cover {c} is not a percentage (0 to 100)"))
            } else if t.max_items == Some(0) {
                Some("stac_api.max_items must be at least 1".to_string())
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(source.error(at(api), p));
            }
        }
        for bound in [&self.input.start, &self.input.end].into_iter().flatten() {
            if sitsflow_core::dates::parse_date(bound.get_ref()).is_none() {
                return Err(source.error(
                    at(bound),
                    format!("{} is not a date: write YYYY-MM-DD, e.g. \"2018-08-01\"", sitsflow_core::fsutil::shown_value(bound.get_ref())),
                ));
            }
        }
        if let (Some(start), Some(end)) = (&self.input.start, &self.input.end)
            && start.get_ref() > end.get_ref()
        {
            return Err(source.error(at(end), format!("end {} is before start {}: no date would be read", end.get_ref(), start.get_ref())));
        }
        let layers = self.reference.iter().map(|r| (&r.layer, &r.class_field)).chain(self.evaluations.iter().map(|e| (&e.layer, &e.class_field)));
        for (layer, class_field) in layers {
            if let (Some(layer), None) = (layer, class_field) {
                return Err(source.error(at(layer), "`layer` names a vector layer: give its class attribute too (`class_field = \"…\"`)"));
            }
        }
        if let Some(reference) = &self.reference {
            match (&reference.nomenclature, &reference.classes) {
                (Some(_), Some(classes)) => {
                    return Err(source.error(at(classes), "[reference] takes `nomenclature` or `classes`, not both"));
                }
                (None, None) => {
                    return Err(source.error(
                        at(&reference.path),
                        "[reference] needs `nomenclature = \"….toml\"` or `classes = \"classes.csv\"`",
                    ));
                }
                _ => {}
            }
        }
        for e in &self.evaluations {
            let name = e.output.get_ref();
            // `<id>_<year>` names a year's output of a per-year stage (checked when the run has its years).
            let stage_of_year = name.rsplit_once('_').filter(|(_, y)| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit())).map(|(s, _)| s);
            let known = name == "reference" && self.reference.is_some()
                || self.stages.iter().any(|s| s.id.get_ref().as_str() == name || Some(s.id.get_ref().as_str()) == stage_of_year);
            if !known {
                let mut names: Vec<&str> = self.stages.iter().map(|s| s.id.get_ref().as_str()).collect();
                if self.reference.is_some() {
                    names.push("reference");
                }
                return Err(source.error(at(&e.output), format!("no output named '{name}' (outputs: {})", names.join(", "))));
            }
        }
        if let Some(dirs) = &self.plugins.dir
            && dirs.get_ref().list().is_empty()
        {
            return Err(source.error(at(dirs), "[plugins] dir names no folder"));
        }
        if let Some(budget) = &self.run.memory_budget_mib {
            if *budget.get_ref() < 64 {
                return Err(source.error(at(budget), "memory_budget_mib must be at least 64"));
            }
        }
        if let Some(halo) = &self.run.halo {
            if *halo.get_ref() > 512 {
                return Err(source.error(at(halo), format!("halo {} is larger than 512 px", halo.get_ref())));
            }
        }
        if let Some(size) = &self.run.chunk_size {
            if !(16..=4096).contains(size.get_ref()) {
                return Err(source.error(at(size), format!("chunk_size {} is outside 16..=4096", size.get_ref())));
            }
        }
        if self.stages.is_empty() {
            return Err(source.error(None, "the pipeline has no [[stage]]"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if let Some(first) = self.models[..i].iter().find(|o| o.name.get_ref() == m.name.get_ref()) {
                let (line, _) = source.line_col(first.name.span().start);
                return Err(source.error(at(&m.name), format!("duplicate model name '{}' (first declared on line {line})", m.name.get_ref())));
            }
            if let Some(device) = &m.device {
                check_device(source, device)?;
            }
        }
        let mut seen: Vec<&Located<StageId>> = Vec::new();
        for stage in &self.stages {
            if let Some(first) = seen.iter().find(|s| s.get_ref() == stage.id.get_ref()) {
                let (line, _) = source.line_col(first.span().start);
                return Err(source.error(
                    at(&stage.id),
                    format!("duplicate stage id '{}' (first defined on line {line})", stage.id.get_ref()),
                ));
            }
            seen.push(&stage.id);
            match (&stage.plugin, &stage.path, &stage.recipe) {
                (Some(_), Some(path), _) => {
                    return Err(source.error(at(path), "a stage takes either 'plugin' or 'path', not both"));
                }
                (Some(_), None, Some(recipe)) | (None, Some(_), Some(recipe)) => {
                    return Err(source.error(at(recipe), "a stage takes a plugin ('plugin' or 'path') or a 'recipe', not both"));
                }
                (None, None, None) => {
                    return Err(source.error(
                        at(&stage.id),
                        format!(
                            "stage '{}' needs 'plugin = \"name@version\"', 'path = \"file.wasm\"' or 'recipe = \"lstm\"'",
                            stage.id.get_ref()
                        ),
                    ));
                }
                _ => {}
            }
            if let Some(recipe) = &stage.recipe {
                if sitsflow_core::recipes::recipe(recipe.get_ref()).is_none() {
                    return Err(source.error(
                        at(recipe),
                        format!("unknown recipe '{}' (the recipes of models/: {})", recipe.get_ref(), sitsflow_core::recipes::names()),
                    ));
                }
                let plugin_only = [
                    ("memory_mib", stage.memory_mib.as_ref().map(|v| v.span())),
                    ("deadline_ms", stage.deadline_ms.as_ref().map(|v| v.span())),
                    ("trusted", stage.trusted.as_ref().map(|v| v.span())),
                    ("per_year", stage.per_year.as_ref().map(|v| v.span())),
                    ("sample_size", stage.sample_size.as_ref().map(|v| v.span())),
                    ("active_learning", stage.active_learning.as_ref().map(|v| v.span())),
                ];
                if let Some((key, Some(span))) = plugin_only.into_iter().find(|(_, span)| span.is_some()) {
                    return Err(source.error(
                        Some(span),
                        format!("'{key}' is not for a recipe labeller: it trains in a Python subprocess and predicts on the host"),
                    ));
                }
            }
            if let Some(device) = &stage.device {
                if stage.recipe.is_none() {
                    return Err(source.error(
                        at(device),
                        "'device' is for recipe labellers (plugins reach their models through [[model]] tables)",
                    ));
                }
                check_device(source, device)?;
            }
            if let Some(mem) = &stage.memory_mib {
                if !(1..=MAX_MEMORY_MIB).contains(mem.get_ref()) {
                    return Err(source.error(
                        at(mem),
                        format!("memory_mib {} is outside 1..={MAX_MEMORY_MIB}", mem.get_ref()),
                    ));
                }
            }
            if let Some(deadline) = &stage.deadline_ms {
                if *deadline.get_ref() == 0 {
                    return Err(source.error(at(deadline), "deadline_ms must be at least 1"));
                }
            }
            if let (Some(deadline), Some(trusted)) = (&stage.deadline_ms, &stage.trusted) {
                if *trusted.get_ref() {
                    return Err(source.error(
                        at(deadline),
                        "deadline_ms cannot be kept for a trusted stage: its code has no interruption checks \
                         (remove deadline_ms, or drop trusted = true)",
                    ));
                }
            }
            let samples_stage = stage.samples.as_ref().and_then(|s| s.get_ref().stage().map(|id| (id, s.span())));
            for (field, target) in [("input", stage.input.as_ref().map(|t| (t.get_ref(), t.span()))), ("samples", samples_stage)] {
                let Some((target, span)) = target else { continue };
                let earlier = seen[..seen.len() - 1].iter().any(|s| s.get_ref() == target);
                if !earlier {
                    let names: Vec<&str> = seen[..seen.len() - 1].iter().map(|s| s.get_ref().as_str()).collect();
                    return Err(source.error(
                        Some(span),
                        format!(
                            "{field} = '{}' names no earlier stage (stages before '{}': {})",
                            target,
                            stage.id.get_ref(),
                            if names.is_empty() { "none".to_string() } else { names.join(", ") }
                        ),
                    ));
                }
            }
            if let (Some(_), Some(model)) = (&stage.samples, &stage.model) {
                return Err(source.error(
                    at(model),
                    "a labeller trains on 'samples' or predicts with a stored 'model', not both",
                ));
            }
            if let (Some(model), Some(_)) = (&stage.model, &stage.active_learning) {
                return Err(source.error(at(model), "active learning trains its model: it takes no stored 'model'"));
            }
            if let Some(size) = &stage.sample_size {
                if *size.get_ref() == 0 {
                    return Err(source.error(at(size), "sample_size must be at least 1"));
                }
            }
            if let Some(holdout) = &stage.holdout {
                if !(0.0..0.9).contains(holdout.get_ref()) {
                    return Err(source.error(at(holdout), format!("holdout {} is outside 0 ≤ holdout < 0.9", holdout.get_ref())));
                }
            }
        }
        Ok(())
    }
}

/// `device = "…"` of a model or a recipe labeller: one the model runtime knows.
fn check_device(source: &Source, device: &Located<String>) -> Result<(), ConfigError> {
    device.get_ref().parse::<sitsflow_core::Device>().map(|_| ()).map_err(|e| source.error(Some(device.span()), e))
}

/// Anything with a byte span (so checks can point at fields of any type).
pub trait Spanned {
    /// The byte range in the source text.
    fn span(&self) -> std::ops::Range<usize>;
}

impl<T> Spanned for Located<T> {
    fn span(&self) -> std::ops::Range<usize> {
        toml::Spanned::span(self)
    }
}

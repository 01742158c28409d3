//! One file per stage kind: what a stage of that kind reads, which of the pipeline's
//! stage keys it takes, the checks `Plan::resolve` runs on them, and the names it writes
//! besides its own id. This file holds what every kind shares: the resolved [`Role`]
//! (one variant per kind), the context a kind's `resolve` is given ([`Cx`]), the keys
//! refused on kinds that do not take them, and the dispatch on `StageKind`.
//!
//! A new stage kind is one file here (its `resolve`, and `writes` if it names outputs
//! besides its id) plus one arm in each `match` on `StageKind` below; the compiler
//! points at every one.

mod augmenter;
mod cloud_mask;
mod clusterer;
mod decoder;
mod features;
mod labeller;
mod pretrainer;
mod sampler;
mod super_resolver;

pub use features::Footprint;
pub use labeller::{DEFAULT_HOLDOUT, Holdout, HoldoutBy, LabelMaps, Training};
pub use super_resolver::{Annotation, Annotations};

use crate::graph::{FitCx, RasterId};
use crate::{Executor, StagePlan};
use sitsflow_config::{ConfigError, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MIB, Source, StageId};
use sitsflow_sandbox::{Limits, StageKind};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Pixels drawn to fit a clusterer when the pipeline does not say.
pub const DEFAULT_FIT_SAMPLES: u64 = 200_000;
/// Candidates a sampler considers when the pipeline does not say.
pub const DEFAULT_CANDIDATES: u64 = 1_000_000;

/// A stage's kind with what that kind needs, checked by `Plan::resolve` (each kind in
/// its own file of this module).
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

/// What a fit node reads and writes, per kind: the drivers (`sitsflow::fit`) take every
/// raster name from here, so the graph is the one source of the run's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitIo {
    /// Fitted on a sample of `features` (None: its input is per-year and it names no
    /// year, which the driver refuses), then assigns every pixel into `map`.
    Cluster {
        /// The features raster it is fitted on and assigns.
        features: Option<RasterId>,
        /// The cluster map it writes.
        map: RasterId,
    },
    /// Chooses among candidate pixels (those `layers[0]` = `reference` labels, when the
    /// pipeline has one) with their `features` and the class `layers` written so far.
    Sample {
        /// The candidates' features raster.
        features: Option<RasterId>,
        /// The class rasters offered to it: the reference (when there is one), then earlier fit nodes' maps.
        layers: Vec<RasterId>,
        /// The raster of the chosen labels it writes.
        map: RasterId,
    },
    /// Trains (or loads a model) and predicts each of `maps`; `oracle` is the reference
    /// an active learner asks for labels.
    Label {
        /// The maps it predicts, one per features raster.
        maps: Vec<LabelMaps>,
        /// The reference an active learner asks for labels.
        oracle: Option<RasterId>,
    },
    /// Decodes yearly `posteriors` into yearly `maps`, the change count and from → to.
    Decode {
        /// The yearly posteriors it reads.
        posteriors: Vec<RasterId>,
        /// The yearly maps it writes.
        maps: Vec<RasterId>,
        /// The count of changes across the years.
        changes: RasterId,
        /// The from → to codes.
        fromto: RasterId,
    },
    /// Trains an encoder on views of patches of `features` (one raster per year it
    /// pools), then writes the `embeddings` of each of `sources` (every features raster
    /// of its input), one raster each.
    Pretrain {
        /// The features rasters it trains on, one per year it pools.
        features: Vec<RasterId>,
        /// The features rasters it embeds.
        sources: Vec<RasterId>,
        /// The embeddings it writes, one per source.
        embeddings: Vec<RasterId>,
    },
    /// Trains on dated annotations, then maps every date of `features` on the finer
    /// grid: each date's own labels (`dates`, a band per date), the Markov chain's
    /// consistent sequence (`markov`) and its count of changes (`changes`).
    /// `annotations`: an earlier stage's yearly maps with their dates (none when the
    /// annotations are files the plan lists).
    SuperResolve {
        /// The features raster whose dates it maps.
        features: Option<RasterId>,
        /// An earlier stage's yearly maps, each with its date.
        annotations: Vec<(String, RasterId)>,
        /// Each date's own labels, a band per date.
        dates: RasterId,
        /// The Markov chain's consistent sequence.
        markov: RasterId,
        /// The count of changes in the consistent sequence.
        changes: RasterId,
    },
}

impl FitIo {
    /// The rasters the node reads.
    pub fn reads(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { features, .. } => features.iter().copied().collect(),
            FitIo::Sample { features, layers, .. } => features.iter().chain(layers).copied().collect(),
            FitIo::Label { maps, oracle } => maps.iter().map(|m| m.features).chain(*oracle).collect(),
            FitIo::Decode { posteriors, .. } => posteriors.clone(),
            FitIo::Pretrain { features, sources, .. } => features.iter().chain(sources).copied().collect(),
            FitIo::SuperResolve { features, annotations, .. } => features.iter().copied().chain(annotations.iter().map(|a| a.1)).collect(),
        }
    }

    /// The rasters the node writes.
    pub fn writes(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { map, .. } | FitIo::Sample { map, .. } => vec![*map],
            FitIo::Label { maps, .. } => maps.iter().flat_map(|m| [m.map, m.confidence].into_iter().chain(m.proba)).collect(),
            FitIo::Decode { maps, changes, fromto, .. } => maps.iter().copied().chain([*changes, *fromto]).collect(),
            FitIo::Pretrain { embeddings, .. } => embeddings.clone(),
            FitIo::SuperResolve { dates, markov, changes, .. } => vec![*dates, *markov, *changes],
        }
    }

    /// The class rasters it writes, offered as layers to the samplers after it.
    pub(crate) fn class_layers(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { map, .. } | FitIo::Sample { map, .. } => vec![*map],
            FitIo::Label { maps, .. } => maps.iter().map(|m| m.map).collect(),
            FitIo::Decode { maps, .. } => maps.clone(),
            // On a finer grid: not a layer of the scene's samplers.
            FitIo::Pretrain { .. } | FitIo::SuperResolve { .. } => Vec::new(),
        }
    }
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

    /// Its fit node's rasters: what it reads and the names and types of what it writes.
    pub(crate) fn fit_io(&self, f: &mut FitCx) -> FitIo {
        match self {
            Role::Clusterer { .. } => clusterer::fit_io(f),
            Role::Sampler { .. } => sampler::fit_io(f),
            Role::Labeller { input, training, pretrained, .. } => labeller::fit_io(input, training, pretrained.as_ref(), f),
            Role::Decoder { input } => decoder::fit_io(input, f),
            Role::Pretrainer { input, year, per_year, .. } => pretrainer::fit_io(input, *year, *per_year, f),
            Role::SuperResolver { input, scale, annotations } => super_resolver::fit_io(input, *scale, annotations, f),
            Role::CloudMask { .. } | Role::Features { .. } => unreachable!("chunk stages run in the map node"),
            Role::Augmenter => unreachable!("an augmenter runs inside the pretraining node that names it"),
        }
    }

    /// Whether `rest` (a name `<id>_<rest>`) is one the stage writes besides its own id
    /// (`<id>_<year>`, `<id>_<year>_confidence`, `<id>_changes`, …; the fit drivers in
    /// `sitsflow::fit` write them).
    pub(crate) fn writes(&self, rest: &str) -> bool {
        match self {
            Role::Features { per_year, .. } | Role::Pretrainer { per_year, .. } => *per_year && is_year(rest),
            Role::Labeller { .. } => labeller::writes(rest),
            Role::Decoder { .. } => decoder::writes(rest),
            Role::SuperResolver { .. } => super_resolver::writes(rest),
            Role::CloudMask { .. } | Role::Clusterer { .. } | Role::Sampler { .. } | Role::Augmenter => false,
        }
    }
}

/// Whether `s` is a four-digit year.
fn is_year(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())
}

/// What a kind's `resolve` is given: the stage as written, what runs it, the stages
/// resolved before it, and where errors point.
pub(crate) struct Cx<'a> {
    /// The stage as the pipeline writes it.
    pub stage: &'a sitsflow_config::Stage,
    /// Its id.
    pub id: &'a StageId,
    /// Its kind (from what runs it).
    pub kind: StageKind,
    /// What runs it.
    pub executor: &'a Executor,
    /// The stages before it, resolved.
    pub earlier: &'a [StagePlan],
    /// The pipeline file, for errors.
    pub source: &'a Source,
    /// The folder relative paths are resolved against.
    pub base: &'a Path,
    /// Its sandbox limits.
    pub limits: Limits,
}

impl Cx<'_> {
    /// A path of the pipeline, resolved against its folder.
    pub fn rel(&self, p: &str) -> PathBuf {
        sitsflow_core::fsutil::normalize(&self.base.join(p))
    }

    /// An error at `span` of the pipeline file.
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        self.source.error(span, message)
    }

    /// An error at the stage's id.
    pub fn error_at_id(&self, message: impl Into<String>) -> ConfigError {
        self.source.error(Some(self.stage.id.span()), message)
    }

    /// The kind's name, for messages.
    pub fn kind_shown(&self) -> &'static str {
        sitsflow_sandbox::kind_name(self.kind)
    }

    /// An earlier stage.
    pub fn earlier(&self, id: &StageId) -> Option<&StagePlan> {
        self.earlier.iter().find(|s| &s.id == id)
    }

    /// An earlier stage's kind.
    pub fn kind_of(&self, id: &StageId) -> Option<StageKind> {
        self.earlier(id).map(StagePlan::kind)
    }

    /// An earlier stage's kind as messages name it (`unknown` when there is none).
    pub fn shown_kind_of(&self, id: &StageId) -> &'static str {
        self.kind_of(id).map_or("unknown", sitsflow_sandbox::kind_name)
    }

    /// Whether an earlier stage's features come once per year.
    pub fn is_per_year(&self, id: &StageId) -> bool {
        self.earlier(id).is_some_and(|s| s.role.per_year())
    }

    /// The input of a stage that reads features: the stage `input` names (features, or
    /// a pretrainer's embeddings — not for another pretrainer), else the last features
    /// stage before it.
    pub fn features_input(&self) -> Result<Option<StageId>, ConfigError> {
        let Some(target) = &self.stage.input else {
            return Ok(self.earlier.iter().rev().find(|s| s.kind() == StageKind::Features).map(|s| s.id.clone()));
        };
        let pretrainer = self.kind == StageKind::Pretrainer;
        let gives = self.earlier(target.get_ref()).is_some_and(|s| s.role.gives_features() && !(pretrainer && s.kind() == StageKind::Pretrainer));
        if !gives {
            return Err(self.error(
                Some(target.span()),
                format!(
                    "input = '{}' is a {} stage; '{}' reads a features stage{}",
                    target.get_ref(),
                    self.shown_kind_of(target.get_ref()),
                    self.id,
                    if pretrainer { "" } else { " (or a pretrainer's embeddings)" }
                ),
            ));
        }
        Ok(Some(target.get_ref().clone()))
    }

    /// The input of a stage that cannot work without features.
    pub fn required_features_input(&self) -> Result<StageId, ConfigError> {
        let input = self.features_input()?;
        self.needs_features(input)
    }

    /// Refuses a stage that cannot work without features when it has none.
    pub fn needs_features(&self, input: Option<StageId>) -> Result<StageId, ConfigError> {
        input.ok_or_else(|| {
            self.error_at_id(format!(
                "the {} stage '{}' needs features: add a features stage before it (or name one with `input`)",
                self.kind_shown(),
                self.id
            ))
        })
    }

    /// `year = …`: which year of a per-year input it reads (`required`: it must say).
    pub fn year(&self, input: Option<&StageId>, required: bool) -> Result<Option<i32>, ConfigError> {
        let input_per_year = input.is_some_and(|i| self.is_per_year(i));
        match &self.stage.year {
            Some(y) if !input_per_year => Err(self.error(
                Some(y.span()),
                format!("'year' picks a year of a per-year features stage, and '{}' reads none", self.id),
            )),
            Some(y) => Ok(Some(*y.get_ref())),
            None if input_per_year && required => Err(self.error_at_id(format!(
                "the {} stage '{}' reads per-year features: say which year with `year = …`",
                self.kind_shown(),
                self.id
            ))),
            None => Ok(None),
        }
    }

    /// `sample_size = …`, or `default`.
    pub fn sample_size(&self, default: u64) -> SampleSize {
        match self.stage.sample_size.as_ref() {
            Some(s) => SampleSize { n: *s.get_ref(), set: true },
            None => SampleSize { n: default, set: false },
        }
    }

    /// The parameters as JSON, checked against the plugin's schema (or the recipe's);
    /// `has_vhr`: whether the stage fuses a VHR image (else `vhr_scale` is refused).
    pub fn params(&self, has_vhr: bool) -> Result<serde_json::Value, ConfigError> {
        let stage = self.stage;
        let id = self.id;
        let params = match &stage.params {
            Some(table) => serde_json::to_value(table.get_ref())
                .map_err(|e| self.error(Some(table.span()), format!("parameters cannot be converted to JSON: {e}")))?,
            None => serde_json::json!({}),
        };
        let checked = match self.executor {
            Executor::Plugin(plugin) => plugin.check_params(&params),
            Executor::Recipe(r) => sitsflow_recipes::network::check_params(&r.arch, &params),
        };
        if let Err(errors) = checked {
            let (pointer, message) = &errors[0];
            let at = crate::param_span(self.source, stage.params.as_ref().map(|t| t.span()), pointer, message)
                .or_else(|| Some(stage.id.span()));
            let more = if errors.len() > 1 { format!(" (and {} more)", errors.len() - 1) } else { String::new() };
            let place = if pointer.is_empty() { String::new() } else { format!(" at '{pointer}'") };
            return Err(self.error(
                at,
                format!(
                    "parameters of stage '{id}' do not fit {}'s schema{place}: {message}{more}",
                    match self.executor {
                        Executor::Plugin(plugin) => plugin.info().reference(),
                        Executor::Recipe(r) => format!("the {} recipe", r.arch),
                    }
                ),
            ));
        }
        if !has_vhr && params.get("vhr_scale").is_some() {
            let at = crate::param_span(self.source, stage.params.as_ref().map(|t| t.span()), "/vhr_scale", "");
            return Err(self.error(at, format!("'vhr_scale' scales a VHR image, and stage '{id}' has none: add `vhr = \"…\"` or remove it")));
        }
        Ok(params)
    }

    /// What runs it, for messages about keys only some executors take.
    fn executor_shown(&self) -> String {
        match self.executor {
            Executor::Recipe(r) => format!("recipe {}", r.arch),
            Executor::Plugin(_) => format!("a {} plugin", self.kind_shown()),
        }
    }
}

/// Refuses the stage keys its kind (or its executor) does not take, in the order the
/// keys are documented.
fn refuse_foreign_keys(cx: &Cx) -> Result<(), ConfigError> {
    let s = cx.stage;
    let (id, kind, shown) = (cx.id, cx.kind, cx.kind_shown());
    let not_for = |span: Range<usize>, key: &str, whose: &str| cx.error(Some(span), format!("'{key}' is for {whose}; '{id}' is a {shown} stage"));
    if let (Some(v), false) = (&s.samples, kind == StageKind::Labeller) {
        return Err(not_for(v.span(), "samples", "labeller stages"));
    }
    if let (Some(v), false) = (&s.views, kind == StageKind::Pretrainer) {
        return Err(not_for(v.span(), "views", "pretraining stages (recipe = \"simclr\")"));
    }
    if let (Some(p), false) = (&s.pretrained, cx.executor.is_segmentation()) {
        return Err(cx.error(Some(p.span()), format!("'pretrained' is for fg-unet labellers; '{id}' is {}", cx.executor_shown())));
    }
    if let (Some(v), false) = (&s.vhr, cx.executor.is_segmentation()) {
        return Err(cx.error(
            Some(v.span()),
            format!("'vhr' is for fg-unet labellers, which fuse it with the series; '{id}' is {}", cx.executor_shown()),
        ));
    }
    if let (Some(a), false) = (&s.annotations, kind == StageKind::SuperResolver) {
        return Err(not_for(a.span(), "annotations", "super-resolution stages (recipe = \"asunet\")"));
    }
    if let (Some(m), false) = (&s.model, kind == StageKind::Labeller) {
        return Err(not_for(m.span(), "model", "labeller stages"));
    }
    if let (Some(b), false) = (&s.holdout_by, kind == StageKind::Labeller) {
        return Err(not_for(b.span(), "holdout_by", "labeller stages"));
    }
    if let (Some(a), false) = (&s.active_learning, kind == StageKind::Labeller) {
        return Err(not_for(a.span(), "active_learning", "labeller stages"));
    }
    if let (Some(p), false) = (&s.per_year, kind == StageKind::Features) {
        return Err(not_for(p.span(), "per_year", "features stages"));
    }
    Ok(())
}

/// Resolves one stage of a kind: the keys it takes, checked; its role and parameters.
pub(crate) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    refuse_foreign_keys(cx)?;
    let (role, params) = match cx.kind {
        StageKind::CloudMask => cloud_mask::resolve(cx)?,
        StageKind::Features => features::resolve(cx)?,
        StageKind::Clusterer => clusterer::resolve(cx)?,
        StageKind::Sampler => sampler::resolve(cx)?,
        StageKind::Labeller => labeller::resolve(cx)?,
        StageKind::Decoder => decoder::resolve(cx)?,
        StageKind::Augmenter => augmenter::resolve(cx)?,
        StageKind::Pretrainer => pretrainer::resolve(cx)?,
        StageKind::SuperResolver => super_resolver::resolve(cx)?,
    };
    // Every stage reads the series' grid: an input on a finer grid is refused.
    if let Some(read) = role.input() {
        let scale = cx.earlier(read).and_then(|s| s.role.footprint()).map_or(1, |f| f.scale);
        if scale != 1 {
            return Err(cx.error(
                cx.stage.input.as_ref().map(|i| i.span()),
                format!("'{read}' writes on a grid {scale}× finer than the series; the {} stage '{}' reads only the series' grid", cx.kind_shown(), cx.id),
            ));
        }
    }
    Ok((role, params))
}

/// The sandbox limits a stage sets (`memory_mib`, `deadline_ms`), or the defaults.
pub(crate) fn limits(stage: &sitsflow_config::Stage) -> Limits {
    let memory_mib = stage.memory_mib.as_ref().map_or(DEFAULT_MEMORY_MIB, |m| *m.get_ref());
    let deadline_ms = stage.deadline_ms.as_ref().map_or(DEFAULT_DEADLINE_MS, |d| *d.get_ref());
    Limits { memory_bytes: memory_mib as usize * 1024 * 1024, deadline_ms }
}

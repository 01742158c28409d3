//! Labeller stages: train on a sampler's selection (grown by active learning, or a
//! samples CSV), or take a stored model; hold out part of their samples for the
//! accuracy report; predict every pixel (per year on per-year features). An `fg-unet`
//! recipe may start from a pretrainer's encoder (`pretrained`) and fuse a VHR image.

use super::{Cx, Role, is_year};
use crate::Executor;
use crate::graph::{CLASS_MAP, FitCx, FitIo, Pixels, RasterId};
use sitsflow_core::PixelType;
use sitsflow_config::{ActiveLearning, ConfigError, SamplesSource, StageId};
use sitsflow_sandbox::StageKind;
use std::path::PathBuf;

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
    /// 32 px squares of the grid, drawn per sampler (as polygons are).
    Blocks,
    /// Polygons (4-connected pixels of one class) of the sampler's selection, drawn per
    /// class and per sampler: every labeller of a sampler is tested on the same pixels.
    Polygons,
}

/// One map a labeller predicts, from one features raster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMaps {
    /// The year of per-year features (None: features without years).
    pub year: Option<i32>,
    /// The features raster it predicts from.
    pub features: RasterId,
    /// The class map it writes.
    pub map: RasterId,
    /// The winning class's probability, per pixel.
    pub confidence: RasterId,
    /// Kept for a decoder that reads this labeller.
    pub proba: Option<RasterId>,
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

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let stage = cx.stage;
    let input = cx.features_input()?;
    let pretrained = match &stage.pretrained {
        Some(p) if cx.kind_of(p.get_ref()) != Some(StageKind::Pretrainer) => {
            return Err(cx.error(
                Some(p.span()),
                format!(
                    "pretrained = '{}' is a {} stage; name an earlier pretraining stage (recipe = \"simclr\")",
                    p.get_ref(),
                    cx.shown_kind_of(p.get_ref())
                ),
            ));
        }
        p => p.as_ref().map(|p| p.get_ref().clone()),
    };
    let vhr = match &stage.vhr {
        None => None,
        Some(v) => {
            let template = v.get_ref();
            // Without `{year}` one image serves every year; with it, the training
            // year's image is checked here and each other year's when it is mapped.
            let check = match stage.year.as_ref().map(|y| *y.get_ref()) {
                Some(y) => Some(template.replace("{year}", &y.to_string())),
                None if !template.contains("{year}") => Some(template.clone()),
                None => None,
            };
            if let Some(file) = check.map(|f| cx.rel(&f)) {
                if !file.is_file() {
                    return Err(cx.error(Some(v.span()), format!("the VHR image {} does not exist", file.display())));
                }
            }
            Some(cx.rel(template))
        }
    };
    let input = cx.needs_features(input)?;
    let training = training(cx)?;
    let holdout = Holdout {
        share: stage.holdout.as_ref().map_or(DEFAULT_HOLDOUT, |h| *h.get_ref()),
        by: match stage.holdout_by.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "blocks")) => HoldoutBy::Blocks,
            Some((_, "polygons")) => HoldoutBy::Polygons,
            Some((b, other)) => {
                return Err(cx.error(Some(b.span()), format!("holdout_by = '{other}': expected 'blocks' or 'polygons'")));
            }
        },
    };
    if let (Some(b), Some(_), HoldoutBy::Polygons) = (&stage.holdout_by, &stage.active_learning, holdout.by) {
        return Err(cx.error(Some(b.span()), "active learning holds out 32 px blocks (its pool is drawn outside them); remove holdout_by"));
    }
    let year = cx.year(Some(&input), false)?;
    let params = cx.params(vhr.is_some())?;
    Ok((Role::Labeller { input, year, holdout, training, pretrained, vhr }, params))
}

/// How it gets its model: `model`, `samples` (a sampler, or a CSV file) and
/// `active_learning`, checked.
fn training(cx: &Cx) -> Result<Training, ConfigError> {
    let (stage, id) = (cx.stage, cx.id);
    let samples = match &stage.samples {
        Some(file) if matches!(file.get_ref(), SamplesSource::File(_)) => {
            let SamplesSource::File(name) = file.get_ref() else { unreachable!("matched above") };
            let path = cx.rel(name);
            if !path.is_file() {
                return Err(cx.error(Some(file.span()), format!("samples file {} does not exist", path.display())));
            }
            if let Executor::Recipe(r) = cx.executor {
                return Err(cx.error(
                    Some(file.span()),
                    format!(
                        "a recipe labeller ({}) trains on a sampler's selection in a run; train it on a CSV with \
                         `sitsflow train --arch {} --samples {name}`, then give the model with `model = \"…\"`",
                        r.arch, r.arch
                    ),
                ));
            }
            if stage.active_learning.is_some() {
                return Err(cx.error(Some(file.span()), "active learning grows a sampler's selection: give `samples` a sampler stage"));
            }
            Some(Err(path))
        }
        Some(located) => {
            let target = located.get_ref().stage().expect("a file is matched above");
            if cx.kind_of(target) != Some(StageKind::Sampler) {
                return Err(cx.error(
                    Some(located.span()),
                    format!(
                        "samples = '{}' is a {} stage; a labeller trains on a sampler's selection (or a samples CSV file)",
                        target,
                        cx.shown_kind_of(target)
                    ),
                ));
            }
            Some(Ok(target.clone()))
        }
        None if stage.model.is_none() => {
            return Err(cx.error_at_id(format!(
                "the labeller stage '{id}' needs `samples = \"<sampler stage id>\"` to train on \
                 (or `model = \"<file>\"`, a model an earlier run stored)"
            )));
        }
        None => None,
    };
    let model = match &stage.model {
        None => None,
        Some(m) => {
            let path = cx.rel(m.get_ref());
            if !path.is_file() {
                return Err(cx.error(Some(m.span()), format!("model file {} does not exist", path.display())));
            }
            Some(path)
        }
    };
    let active_learning = match &stage.active_learning {
        None => None,
        Some(a) => {
            let al = a.get_ref();
            if cx.kind_of(&al.query) != Some(StageKind::Sampler) {
                return Err(cx.error(Some(a.span()), format!("active_learning.query = '{}' must name an earlier sampler stage", al.query)));
            }
            if al.rounds == 0 || al.pool == 0 {
                return Err(cx.error(Some(a.span()), "active_learning needs rounds ≥ 1 and pool ≥ 1"));
            }
            Some(al.clone())
        }
    };
    Ok(match (model, samples, active_learning) {
        (Some(path), _, _) => Training::Stored(path),
        (None, Some(Err(file)), _) => Training::Csv(file),
        (None, Some(Ok(samples)), Some(learning)) => Training::ActiveLearning { samples, learning },
        (None, Some(Ok(samples)), None) => Training::Samples(samples),
        (None, None, _) => unreachable!("a labeller without a model needs samples, checked above"),
    })
}

/// The names it writes besides its id: `<id>_confidence`, `<id>_proba`, and per year
/// `<id>_<year>`, `<id>_<year>_confidence`, `<id>_<year>_proba`.
pub(super) fn writes(rest: &str) -> bool {
    let (head, tail) = rest.split_once('_').map_or((rest, None), |(h, t)| (h, Some(t)));
    matches!(rest, "confidence" | "proba") || (is_year(head) && matches!(tail, None | Some("confidence") | Some("proba")))
}

/// Its fit node: after its sampler (and pretrainer), with the reference as an active
/// learner's oracle; predicts every features raster of its input (every year of
/// per-year features, trained on one year or on all): a map, its confidence and, when a
/// decoder reads it, its probabilities.
pub(super) fn fit_io(input: &StageId, training: &Training, pretrained: Option<&StageId>, f: &mut FitCx) -> FitIo {
    if let Some(encoder) = pretrained {
        f.run_after(encoder.as_str());
    }
    let mut oracle = None;
    let sampler = match training {
        Training::Samples(samples) => Some(samples),
        Training::ActiveLearning { samples, learning } => {
            f.query = f.plan.stages.iter().position(|q| q.id == learning.query);
            oracle = f.reference;
            Some(samples)
        }
        Training::Stored(_) | Training::Csv(_) => None,
    };
    if let Some(sampler) = sampler {
        f.run_after(sampler.as_str());
    }
    let id = f.id().to_string();
    let decoded = f.plan.stages.iter().any(|d| matches!(&d.role, Role::Decoder { input } if input.as_str() == id));
    let sources: Vec<(Option<i32>, String, String)> = if f.per_year_input(input.as_str()) {
        f.years.iter().map(|y| (Some(*y), format!("{input}_{y}"), format!("{id}_{y}"))).collect()
    } else {
        vec![(None, input.to_string(), id.clone())]
    };
    let mut maps = Vec::new();
    for (year, features, map) in sources {
        let Some(features) = f.declared(&features) else { continue };
        maps.push(LabelMaps {
            year,
            features,
            map: f.declare(map.clone(), CLASS_MAP),
            confidence: f.declare(format!("{map}_confidence"), Pixels::Known(PixelType::F32)),
            proba: decoded.then(|| f.declare(format!("{map}_proba"), Pixels::Known(PixelType::F32))),
        });
    }
    FitIo::Label { maps, oracle }
}

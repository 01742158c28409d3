//! Decoder stages: decode a stage's yearly posteriors (a labeller predicting per year,
//! or a per-year features stage of probabilities) into consistent yearly maps, their
//! changes and from-to transitions.

use super::{Cx, Role, is_year};
use crate::graph::{CLASS_MAP, FitCx, FitIo, Pixels};
use sitsflow_config::{ConfigError, StageId};
use sitsflow_sandbox::StageKind;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let Some(target) = &cx.stage.input else {
        return Err(cx.error_at_id(format!(
            "the decoder stage '{}' needs `input = \"<stage id>\"`: the labeller or per-year features stage whose posteriors it decodes",
            cx.id
        )));
    };
    let yearly = cx.earlier(target.get_ref()).is_some_and(|s| match &s.role {
        Role::Labeller { input, .. } => cx.is_per_year(input),
        Role::Features { per_year, .. } => *per_year,
        _ => false,
    });
    if !yearly {
        return Err(cx.error(
            Some(target.span()),
            format!(
                "input = '{}': a decoder reads yearly posteriors, from a labeller predicting per year or a per-year features stage of probabilities",
                target.get_ref()
            ),
        ));
    }
    let input = target.get_ref().clone();
    cx.year(Some(&input), false)?;
    let params = cx.params(false)?;
    Ok((Role::Decoder { input }, params))
}

/// The names it writes besides its id: `<id>_<year>`, `<id>_changes`, `<id>_fromto`.
pub(super) fn writes(rest: &str) -> bool {
    is_year(rest) || matches!(rest, "changes" | "fromto")
}

/// Its fit node: the yearly posteriors of its input (a labeller's `_proba`, or per-year
/// features); writes the yearly maps, the change count and the from → to codes.
pub(super) fn fit_io(input: &StageId, f: &mut FitCx) -> FitIo {
    let id = f.id().to_string();
    let from_labeller = f.plan.stages.iter().any(|l| &l.id == input && l.kind() == StageKind::Labeller);
    let posteriors = f
        .years
        .iter()
        .filter_map(|y| f.declared(&if from_labeller { format!("{input}_{y}_proba") } else { format!("{input}_{y}") }))
        .collect();
    let maps = f.years.iter().map(|y| f.declare(format!("{id}_{y}"), CLASS_MAP)).collect();
    let changes = f.declare(format!("{id}_changes"), CLASS_MAP);
    let fromto = f.declare(format!("{id}_fromto"), Pixels::FromToCoding);
    FitIo::Decode { posteriors, maps, changes, fromto }
}

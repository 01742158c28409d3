//! Super-resolution stages (`recipe = "asunet"`, seed 000): map every date of the
//! series on a grid `scale` times finer, trained on dated annotations of that grid —
//! files listed in a CSV, or an earlier stage's yearly maps — from a features stage's
//! dated features (every date, not per year).

use super::{Cx, Role};
use crate::graph::{CLASS_MAP, FitCx, FitIo};
use sitsflow_config::{ConfigError, StageId};
use std::path::{Path, PathBuf};

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

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let id = cx.id;
    let input = cx.features_input()?;
    if let Some(target) = &input {
        if cx.is_per_year(target) {
            let at = cx.stage.input.as_ref().map(|i| i.span()).or_else(|| Some(cx.stage.id.span()));
            return Err(cx.error(
                at,
                format!("input = '{target}' runs once per year; the super-resolution stage '{id}' reads every date of the series: a features stage without per_year"),
            ));
        }
    }
    let annotations = match &cx.stage.annotations {
        Some(a) if !a.get_ref().ends_with(".csv") => {
            let target = a.get_ref();
            let maps = cx.earlier.iter().find(|s| s.id.as_str() == target).map(|s| {
                let yearly = match &s.role {
                    Role::Decoder { .. } => true,
                    Role::Labeller { input, .. } => cx.is_per_year(input),
                    _ => false,
                };
                (s.id.clone(), yearly)
            });
            match maps {
                Some((id, true)) => Annotations::Maps(id),
                Some((id, false)) => {
                    return Err(cx.error(
                        Some(a.span()),
                        format!(
                            "annotations = '{target}' is a {} stage that writes no yearly maps; name a labeller over per-year features, a decoder, or a .csv of dated files",
                            cx.shown_kind_of(&id)
                        ),
                    ));
                }
                None => {
                    return Err(cx.error(
                        Some(a.span()),
                        format!("annotations = '{target}' is neither an earlier stage nor a .csv file of dated annotations (date,path)"),
                    ));
                }
            }
        }
        Some(a) => Annotations::Files(read_annotations(&cx.rel(a.get_ref())).map_err(|e| cx.error(Some(a.span()), e))?),
        None => {
            return Err(cx.error_at_id(format!(
                "the super-resolution stage '{id}' needs `annotations = \"<file>.csv\"`: the dated annotations on the finer grid it trains on (date,path)"
            )));
        }
    };
    let input = cx.needs_features(input)?;
    cx.year(Some(&input), false)?;
    let params = cx.params(false)?;
    let scale = params.get("scale").and_then(serde_json::Value::as_u64).unwrap_or(4) as usize;
    Ok((Role::SuperResolver { input, annotations, scale }, params))
}

/// The names it writes besides its id: `<id>_dates`, `<id>_markov`, `<id>_changes`.
pub(super) fn writes(rest: &str) -> bool {
    matches!(rest, "dates" | "markov" | "changes")
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

/// Its fit node: its input's dated features and, for annotations from an earlier
/// stage, that stage's yearly maps (each dated 1 July of its year); writes on the finer
/// grid each date's labels, the Markov chain's sequence and its change count.
pub(super) fn fit_io(input: &StageId, scale: usize, annotations: &Annotations, f: &mut FitCx) -> FitIo {
    let id = f.id().to_string();
    let annotations = match annotations {
        Annotations::Maps(maps) => f.years.iter().filter_map(|y| f.declared(&format!("{maps}_{y}")).map(|r| (format!("{y}-07-01"), r))).collect(),
        Annotations::Files(_) => Vec::new(),
    };
    FitIo::SuperResolve {
        annotations,
        features: f.declared(input.as_str()),
        dates: f.declare_scaled(format!("{id}_dates"), scale, CLASS_MAP),
        markov: f.declare_scaled(format!("{id}_markov"), scale, CLASS_MAP),
        changes: f.declare_scaled(format!("{id}_changes"), scale, CLASS_MAP),
    }
}

//! Pretraining stages (`recipe = "simclr"`): train an encoder self-supervised on the
//! views an augmenter stage makes of patches of a features stage, then write its
//! embeddings of every features raster of that stage (once per year when it is per year).

use super::{Cx, Role};
use crate::graph::{FitCx, FitIo, Pixels};
use sitsflow_config::{ConfigError, StageId};
use sitsflow_core::PixelType;
use sitsflow_sandbox::StageKind;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let input = cx.features_input()?;
    let views = match &cx.stage.views {
        Some(v) if cx.kind_of(v.get_ref()) == Some(StageKind::Augmenter) => v.get_ref().clone(),
        Some(v) => {
            return Err(cx.error(
                Some(v.span()),
                format!(
                    "views = '{}' is a {} stage; a pretraining stage takes its views from an earlier augmenter stage",
                    v.get_ref(),
                    cx.shown_kind_of(v.get_ref())
                ),
            ));
        }
        None => {
            return Err(cx.error_at_id(format!(
                "the pretraining stage '{}' needs `views = \"<augmenter stage id>\"`: the plugin that makes its views (e.g. simclr-augment@0.1.0)",
                cx.id
            )));
        }
    };
    let input = cx.needs_features(input)?;
    let year = cx.year(Some(&input), false)?;
    let params = cx.params(false)?;
    let per_year = cx.is_per_year(&input);
    Ok((Role::Pretrainer { input, year, views, per_year }, params))
}

/// Its fit node: the features rasters it trains on (its year's, or every year's); writes
/// the embeddings of every features raster of its input, named like it.
pub(super) fn fit_io(input: &StageId, year: Option<i32>, per_year: bool, f: &mut FitCx) -> FitIo {
    let id = f.id().to_string();
    let names: Vec<String> = match year {
        Some(y) => vec![format!("{input}_{y}")],
        None if per_year => f.years.iter().map(|y| format!("{input}_{y}")).collect(),
        None => vec![input.to_string()],
    };
    let features = names.iter().filter_map(|n| f.declared(n)).collect();
    let mut sources = Vec::new();
    let mut embeddings = Vec::new();
    let pairs: Vec<(String, String)> = if per_year {
        f.years.iter().map(|y| (format!("{input}_{y}"), format!("{id}_{y}"))).collect()
    } else {
        vec![(input.to_string(), id.clone())]
    };
    for (source, name) in pairs {
        let Some(source) = f.declared(&source) else { continue };
        sources.push(source);
        embeddings.push(f.declare(name, Pixels::Known(PixelType::F32)));
    }
    FitIo::Pretrain { features, sources, embeddings }
}

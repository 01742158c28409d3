//! Sampler stages: choose training pixels among up to `sample_size` candidates, given a
//! features stage's features when the pipeline has one.

use super::{Cx, DEFAULT_CANDIDATES, Role};
use crate::graph::{CLASS_MAP, FitCx, FitIo};
use sitsflow_config::ConfigError;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let input = cx.features_input()?;
    let sample_size = cx.sample_size(DEFAULT_CANDIDATES);
    let year = cx.year(input.as_ref(), false)?;
    let params = cx.params(false)?;
    Ok((Role::Sampler { input, year, sample_size }, params))
}

/// Its fit node: one features raster and the class rasters written so far; writes the
/// chosen labels.
pub(super) fn fit_io(f: &mut FitCx) -> FitIo {
    FitIo::Sample { features: f.one_features(), layers: f.class_layers.to_vec(), map: f.declare(f.id().to_string(), CLASS_MAP) }
}

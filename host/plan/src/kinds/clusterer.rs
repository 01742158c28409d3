//! Clusterer stages: fitted on a sample of pixels of a features stage (one year of a
//! per-year one, which it must name), then assigning every pixel.

use super::{Cx, DEFAULT_FIT_SAMPLES, Role};
use crate::graph::{CLASS_MAP, FitCx, FitIo};
use sitsflow_config::ConfigError;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let input = cx.required_features_input()?;
    let sample_size = cx.sample_size(DEFAULT_FIT_SAMPLES);
    let year = cx.year(Some(&input), true)?;
    let params = cx.params(false)?;
    Ok((Role::Clusterer { input, year, sample_size }, params))
}

/// Its fit node: fitted on, and assigning, one features raster; writes the cluster map.
pub(super) fn fit_io(f: &mut FitCx) -> FitIo {
    FitIo::Cluster { features: f.one_features(), map: f.declare(f.id().to_string(), CLASS_MAP) }
}

//! Cloud-mask stages: a component run chunk by chunk that narrows the validity later
//! stages see; on the series, or on an earlier features stage's dated output.

use super::{Cx, Role, features};
use sitsflow_config::ConfigError;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let input = features::chunk_input(cx)?;
    cx.year(input.as_ref(), false)?;
    let (params, footprint) = features::params_and_footprint(cx)?;
    Ok((Role::CloudMask { footprint, input }, params))
}

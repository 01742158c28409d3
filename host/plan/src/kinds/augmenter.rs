//! Augmenter stages: make views of patches for the pretraining stage that names them
//! (`views = "…"`); they read nothing of their own and write nothing.

use super::{Cx, Role};
use sitsflow_config::ConfigError;

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    if let Some(target) = &cx.stage.input {
        return Err(cx.error(
            Some(target.span()),
            format!("'input' is not for augmenter stages: '{}' gets its patches from the pretraining stage that names it in `views`", cx.id),
        ));
    }
    cx.year(None, false)?;
    Ok((Role::Augmenter, cx.params(false)?))
}

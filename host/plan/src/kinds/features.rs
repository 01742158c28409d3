//! Features stages: a component run chunk by chunk on the series (or, with `input`, on
//! an earlier features stage's dated output), once per calendar year with `per_year`.
//! Also what every chunk stage shares: its [`Footprint`] and the `input` it may read.

use super::{Cx, Role};
use crate::Executor;
use sitsflow_config::{ConfigError, StageId};
use sitsflow_sandbox::{Limits, Plugin, StageKind};

/// What a chunk stage declares for its parameters (`footprint-for`, WIT 0.2): chunks
/// whose core is a multiple of `tile` (0 = any), `halo` px of context on every side,
/// outputs `scale` times finer than the series' grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// What chunk cores are a multiple of, in pixels (0 = any).
    pub tile: usize,
    /// Pixels of context needed on every side.
    pub halo: usize,
    /// Output pixels per series pixel along each axis.
    pub scale: usize,
}

/// The largest tile, halo and scale a stage may declare.
const MAX_TILE: usize = 4096;
const MAX_HALO: usize = 512;
const MAX_SCALE: usize = 16;

impl Footprint {
    /// Asks the plugin (in a throw-away instance) and checks the answer.
    fn ask(plugin: &Plugin, limits: Limits, id: &str, params: &serde_json::Value) -> Result<Footprint, String> {
        let context = sitsflow_sandbox::CallContext { stage: id.to_string(), chunk: "footprint".into() };
        let raw = plugin
            .instantiate(limits)
            .and_then(|mut i| i.footprint(&context, &params.to_string()))
            .map_err(|e| format!("footprint-for() {e}"))?;
        let fp = Footprint { tile: raw.tile as usize, halo: raw.halo as usize, scale: raw.scale as usize };
        if fp.tile > MAX_TILE || fp.halo > MAX_HALO || fp.scale == 0 || fp.scale > MAX_SCALE {
            return Err(format!(
                "footprint-for() gives tile {}, halo {}, scale {}: the host takes tiles up to {MAX_TILE} px, halos up to {MAX_HALO} px, scales 1 to {MAX_SCALE}",
                fp.tile, fp.halo, fp.scale
            ));
        }
        if plugin.info().kind == StageKind::CloudMask && fp.scale != 1 {
            return Err(format!("a cloud mask's output is on the series' grid, but footprint-for() gives scale {}", fp.scale));
        }
        Ok(fp)
    }
}

/// A chunk stage's `input`: none (it reads the series) or an earlier features stage
/// that is not per year, read chunk by chunk as one raster of dated features
/// (`NAME@DATE`) on the series' grid.
pub(super) fn chunk_input(cx: &Cx) -> Result<Option<StageId>, ConfigError> {
    let Some(target) = &cx.stage.input else { return Ok(None) };
    let (id, shown) = (cx.id, cx.kind_shown());
    let earlier = cx.earlier(target.get_ref());
    match earlier.map(|s| &s.role) {
        Some(Role::Features { per_year: false, .. }) => Ok(Some(target.get_ref().clone())),
        Some(Role::Features { per_year: true, .. }) => Err(cx.error(
            Some(target.span()),
            format!("input = '{}' runs once per year; the {shown} stage '{id}' reads one features raster of dated features", target.get_ref()),
        )),
        _ => Err(cx.error(
            Some(target.span()),
            format!(
                "input = '{}' is {}; the {shown} stage '{id}' reads the series or an earlier features stage",
                target.get_ref(),
                earlier.map_or("not an earlier stage".to_string(), |s| format!("a {} stage", s.kind_name()))
            ),
        )),
    }
}

/// A chunk stage's parameters and the footprint its plugin declares for them.
pub(super) fn params_and_footprint(cx: &Cx) -> Result<(serde_json::Value, Footprint), ConfigError> {
    let params = cx.params(false)?;
    let Executor::Plugin(plugin) = cx.executor else {
        unreachable!("only components are chunk stages (recipes are labellers, pretrainers or super-resolvers)")
    };
    let at = cx.stage.params.as_ref().map(|t| t.span()).or_else(|| Some(cx.stage.id.span()));
    let footprint = Footprint::ask(plugin, cx.limits, cx.id.as_str(), &params)
        .map_err(|e| cx.error(at, format!("stage '{}' ({}): {e}", cx.id, plugin.info().reference())))?;
    Ok((params, footprint))
}

pub(super) fn resolve(cx: &Cx) -> Result<(Role, serde_json::Value), ConfigError> {
    let input = chunk_input(cx)?;
    cx.year(input.as_ref(), false)?;
    let per_year = cx.stage.per_year.as_ref().is_some_and(|p| *p.get_ref());
    let (params, footprint) = params_and_footprint(cx)?;
    Ok((Role::Features { footprint, per_year, input }, params))
}

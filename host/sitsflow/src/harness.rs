//! `sitsflow plugins run`: a built component run on a small series without a pipeline,
//! so that a plugin author's tests exercise the WebAssembly build (the sandbox, its
//! limits, the parameters checked against the schema the component publishes) and
//! not only the native code. Chunk stages only (features and cloud masks): the other
//! kinds need the scene a pipeline builds.

use crate::raster::{Grid, Series, Window, write_geotiff_f32};
use crate::runtime::{CallContext, Limits, Runtime, StageKind, StagePool};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a harness run did.
#[derive(Debug, Clone)]
pub struct HarnessSummary {
    /// The plugin, `name@version`.
    pub plugin: String,
    /// The raster written.
    pub out: PathBuf,
    /// Its bands: feature names, or `mask@DATE` per date.
    pub bands: Vec<String>,
    /// The window of the series it ran on.
    pub window: Window,
    /// How long the call took, in seconds.
    pub seconds: f64,
}

/// Runs the component `wasm` with `params` (JSON) on `window` (default: the whole
/// scene) of the series folder `input`, and writes its output to `out` (Float32
/// GeoTIFF on the window's grid, one band per feature, or per date for a mask).
pub fn run_component(runtime: &Arc<Runtime>, wasm: &Path, params: &str, input: &Path, window: Option<Window>, out: &Path) -> Result<HarnessSummary> {
    let plugin = runtime.load(wasm).with_context(|| format!("loading {}", wasm.display()))?;
    let reference = plugin.info().reference();
    let value: serde_json::Value = serde_json::from_str(params).with_context(|| format!("--params is not JSON: {params}"))?;
    if let Err(problems) = plugin.check_params(&value) {
        let list: Vec<String> = problems.iter().map(|(at, why)| format!("{at}: {why}")).collect();
        bail!("{reference}: the parameters do not fit its schema: {}", list.join("; "));
    }
    let kind = plugin.info().kind;
    if !matches!(kind, StageKind::Features | StageKind::CloudMask) {
        bail!("{reference} is a {} stage; `plugins run` runs chunk stages (features, cloud-mask), the other kinds run in a pipeline", plugin.info().kind_name());
    }
    let series = Series::open(input, None)?;
    let grid = &series.grid;
    let window = window.unwrap_or(Window { row: 0, col: 0, rows: grid.height, cols: grid.width });
    if window.row + window.rows > grid.height || window.col + window.cols > grid.width || window.pixels() == 0 {
        bail!("--window {window} is not inside the series' {} × {} px", grid.width, grid.height);
    }
    // The chunk as a run hands it over (no halo: the window is the core).
    let dates = series.dates();
    let mut reader = series.reader()?;
    let (cube, around) = crate::run::chunk_input(&mut reader, &series, &dates, 0, window, 0).map_err(anyhow::Error::msg)?;
    let placement = around.placement;
    let context = CallContext { stage: plugin.info().name.clone(), chunk: format!("window {window}") };
    let pool = StagePool::new(plugin.clone(), Limits::default());
    let started = std::time::Instant::now();
    let n = window.pixels();
    let (bands, planes): (Vec<String>, Vec<Vec<f32>>) = match kind {
        StageKind::Features => {
            let features = pool.with(|i| i.features_at(&context, &cube, placement, params)).map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
            let f = features.names.len();
            crate::run::check_feature_values(&format!("{reference} on {window}"), f, features.data.len(), n).map_err(anyhow::Error::msg)?;
            let planes = (0..f).map(|k| (0..n).map(|p| features.data[p * f + k]).collect()).collect();
            (features.names, planes)
        }
        _ => {
            let mask = pool.with(|i| i.mask_at(&context, &cube, placement, params)).map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
            if mask.classes.len() != dates.len() * n {
                bail!("{reference} returned {} mask values for {} dates × {n} pixels", mask.classes.len(), dates.len());
            }
            let planes = mask.classes.chunks_exact(n).map(|d| d.iter().map(|&c| c as f32).collect()).collect();
            (dates.iter().map(|d| format!("mask@{d}")).collect(), planes)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let out_grid = Grid {
        width: window.cols,
        height: window.rows,
        geo_transform: grid.geo_transform.map(|g| [g[0] + window.col as f64 * g[1], g[1], g[2], g[3] + window.row as f64 * g[5], g[4], g[5]]),
        projection: grid.projection.clone(),
    };
    write_geotiff_f32(out, &out_grid, &bands, planes).with_context(|| format!("writing {}", out.display()))?;
    Ok(HarnessSummary { plugin: reference, out: out.to_path_buf(), bands, window, seconds })
}

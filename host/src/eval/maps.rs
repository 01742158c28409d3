//! Evaluating map files: a map against a reference raster (aligned onto the map's
//! grid by mode, codes translated through a nomenclature), and series of maps.

use super::{AreaEstimate, Confusion, Metrics, agreement, area_estimate};
use crate::raster::{ReferenceMap, Window, chunk_grid, grid_of, pixel_area};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What `sitsflow eval` reports for a map against a reference.
#[derive(Debug, Clone, Serialize)]
pub struct MapEvaluation {
    pub map: PathBuf,
    pub reference: PathBuf,
    pub confusion: Confusion,
    pub metrics: Metrics,
    /// Mapped pixels per class (the strata of a stratified sample).
    pub map_pixels: BTreeMap<u16, u64>,
    /// Area-adjusted estimates, when the reference is a stratified sample.
    pub area: Option<AreaEstimate>,
    /// Reference codes the nomenclature does not map (code → pixels).
    pub unmapped: BTreeMap<u32, u64>,
}

fn to_u16(code: u32, path: &Path) -> Result<u16> {
    u16::try_from(code).with_context(|| format!("{}: class code {code} does not fit 16 bits", path.display()))
}

/// Compares `map` with `reference` pixel by pixel, chunk by chunk. `lookup` translates
/// reference codes (None: codes are classes already). With `stratified`, the
/// reference is a sample stratified by map class and area estimates are added.
pub fn evaluate_map(map: &Path, reference: &Path, lookup: Option<&HashMap<u32, u16>>, stratified: bool) -> Result<MapEvaluation> {
    let grid = grid_of(map)?;
    let map_raster = ReferenceMap::open(map, &grid)?;
    let ref_raster = ReferenceMap::open(reference, &grid)?;
    let mut confusion = Confusion::default();
    let mut map_pixels: BTreeMap<u16, u64> = BTreeMap::new();
    let mut unmapped = BTreeMap::new();
    for window in chunk_grid(grid.width, grid.height, 1024) {
        let m: Vec<u16> = map_raster.read_raw(window)?.into_iter().map(|c| to_u16(c, map)).collect::<Result<_>>()?;
        let r: Vec<u16> = match lookup {
            Some(l) => ref_raster.read(window, l, &mut unmapped)?,
            None => ref_raster.read_raw(window)?.into_iter().map(|c| to_u16(c, reference)).collect::<Result<_>>()?,
        };
        for &c in m.iter().filter(|c| **c != 0) {
            *map_pixels.entry(c).or_default() += 1;
        }
        confusion.merge(&Confusion::from_pairs(&r, &m));
    }
    if confusion.total() == 0 {
        bail!("{} and {} share no pixel with a reference class", map.display(), reference.display());
    }
    let area = if stratified {
        let pixel = pixel_area(&grid).unwrap_or(1.0);
        Some(area_estimate(&confusion, &map_pixels, pixel)?)
    } else {
        None
    };
    Ok(MapEvaluation {
        map: map.to_path_buf(),
        reference: reference.to_path_buf(),
        metrics: confusion.metrics(),
        confusion,
        map_pixels,
        area,
        unmapped,
    })
}

/// Agreement between consecutive maps of a series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesAgreement {
    pub from: PathBuf,
    pub to: PathBuf,
    pub overall: f64,
    pub per_class: BTreeMap<u16, f64>,
}

/// Year-to-year agreement of a series of maps on one grid.
pub fn series_agreement(maps: &[PathBuf]) -> Result<Vec<SeriesAgreement>> {
    if maps.len() < 2 {
        bail!("a series needs at least two maps");
    }
    let grid = grid_of(&maps[0])?;
    let rasters: Vec<ReferenceMap> = maps.iter().map(|m| ReferenceMap::open(m, &grid)).collect::<Result<_>>()?;
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let labels: Vec<Vec<u16>> = rasters
        .iter()
        .zip(maps)
        .map(|(r, p)| r.read_raw(window)?.into_iter().map(|c| to_u16(c, p)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    Ok(labels
        .windows(2)
        .zip(maps.windows(2))
        .map(|(l, p)| {
            let (overall, per_class) = agreement(&l[0], &l[1]);
            SeriesAgreement { from: p[0].clone(), to: p[1].clone(), overall, per_class }
        })
        .collect())
}

//! Categorical reference maps (CORINE Land Cover and the like) in any CRS, presented
//! on the cube's grid by the most frequent source class (GDAL warp, `mode`), then
//! translated to the pipeline's classes through a nomenclature lookup.
//!
//! The mode is taken over source codes before translation; where the cube's pixels
//! are finer than the map's (10 m against CLC's 100 m) the two orders agree.

use super::series::Resampling;
use super::warp::Aligned;
use super::{Grid, Window};
use anyhow::{Context, Result};
use gdal::Dataset;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A reference map opened on a target grid.
pub struct ReferenceMap {
    pub path: PathBuf,
    aligned: Aligned,
    nodata: Option<f64>,
}

impl ReferenceMap {
    /// Opens `path` and aligns it to `grid` (no-op when it is already on it).
    pub fn open(path: &Path, grid: &Grid) -> Result<ReferenceMap> {
        let ds = Dataset::open(path).with_context(|| format!("{}: cannot open the reference map with GDAL", path.display()))?;
        let nodata = ds.rasterband(1)?.no_data_value();
        let aligned = Aligned::new(ds, grid, Resampling::Mode, nodata)
            .with_context(|| format!("{}: aligning the reference map to the cube grid", path.display()))?;
        Ok(ReferenceMap { path: path.to_path_buf(), aligned, nodata })
    }

    /// Reads a window of raw codes (no-data as 0).
    pub fn read_raw(&self, window: Window) -> Result<Vec<u32>> {
        let mut raw = vec![0u32; window.pixels()];
        self.aligned
            .dataset
            .rasterband(1)?
            .read_into_slice::<u32>(
                (window.col as isize, window.row as isize),
                (window.cols, window.rows),
                (window.cols, window.rows),
                &mut raw,
                None,
            )
            .with_context(|| format!("{}: reading at {window}", self.path.display()))?;
        if let Some(nd) = self.nodata {
            for v in raw.iter_mut().filter(|v| **v as f64 == nd) {
                *v = 0;
            }
        }
        Ok(raw)
    }

    /// Reads a window and translates source codes with `lookup`; codes not in it
    /// become 0 and are counted in `unmapped` (no-data stays 0 and is not counted).
    pub fn read(&self, window: Window, lookup: &HashMap<u32, u16>, unmapped: &mut BTreeMap<u32, u64>) -> Result<Vec<u16>> {
        Ok(self
            .read_raw(window)?
            .into_iter()
            .map(|code| {
                if code == 0 {
                    return 0;
                }
                lookup.get(&code).copied().unwrap_or_else(|| {
                    *unmapped.entry(code).or_default() += 1;
                    0
                })
            })
            .collect())
    }
}

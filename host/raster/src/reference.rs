//! Categorical reference maps (CORINE Land Cover and the like) in any CRS, presented
//! on the cube's grid by the most frequent source class (GDAL warp, `mode`), then
//! translated to the pipeline's classes through a nomenclature lookup.
//!
//! The mode is taken over source codes before translation; where the cube's pixels
//! are finer than the map's (10 m against CLC's 100 m) the two orders agree.

use super::series::Resampling;
use super::vector::{VectorReference, VectorSpec, VectorSummary};
use super::warp::Aligned;
use super::{Grid, Window};
use anyhow::{Context, Result, bail};
use gdal::Dataset;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A reference map opened on a target grid: a raster aligned by mode, or vectors
/// rasterised by GDAL ([`VectorReference`]).
pub struct ReferenceMap {
    /// The reference map's file.
    pub path: PathBuf,
    source: Source,
}

enum Source {
    Raster { aligned: Aligned, nodata: Option<f64> },
    /// The vectors, and whether their class field holds names (resolved to class codes).
    Vector { vector: Mutex<VectorReference>, names: bool },
}

impl ReferenceMap {
    /// Opens `path` and aligns it to `grid` (no-op when it is already on it).
    pub fn open(path: &Path, grid: &Grid) -> Result<ReferenceMap> {
        let ds = Dataset::open(path).with_context(|| format!("{}: cannot open the reference map with GDAL", path.display()));
        let ds = match ds {
            Ok(ds) if ds.raster_count() > 0 => ds,
            _ if super::vector::is_vector(path) => bail!(
                "{}: holds vectors, not a raster: name the attribute with their classes (`class_field = \"…\"`, and `layer` \
                 when the file has several)",
                path.display()
            ),
            Ok(_) => bail!("{}: has no raster band", path.display()),
            Err(e) => return Err(e),
        };
        if let Some(false) = overlaps(&ds, grid) {
            bail!(
                "{}: the reference map does not overlap the grid it is compared on ({} × {} px{}): every pixel \
                 would be no data; check its CRS and extent",
                path.display(),
                grid.width,
                grid.height,
                grid.geo_transform.map_or(String::new(), |g| format!(", upper left {} {}", g[0], g[3]))
            );
        }
        let nodata = ds.rasterband(1)?.no_data_value();
        let aligned = Aligned::new(ds, grid, Resampling::Mode, nodata)
            .with_context(|| format!("{}: aligning the reference map to the cube grid", path.display()))?;
        Ok(ReferenceMap { path: path.to_path_buf(), source: Source::Raster { aligned, nodata } })
    }

    /// Opens a vector reference and surveys it once (see [`VectorReference::open`] and
    /// [`VectorReference::survey`]).
    pub fn open_vector(path: &Path, spec: &VectorSpec, class_names: &[(String, u16)], grid: &Grid) -> Result<(ReferenceMap, VectorSummary)> {
        let mut vector = VectorReference::open(path, spec, class_names, grid)?;
        let summary = vector.survey()?;
        Ok((Self::of_vector(vector), summary))
    }

    /// Opens a vector reference for reading windows, without the survey (a chunk worker's
    /// copy of one surveyed already).
    pub fn open_vector_to_read(path: &Path, spec: &VectorSpec, class_names: &[(String, u16)], grid: &Grid) -> Result<ReferenceMap> {
        Ok(Self::of_vector(VectorReference::open(path, spec, class_names, grid)?))
    }

    fn of_vector(vector: VectorReference) -> ReferenceMap {
        let names = vector.holds_names();
        ReferenceMap { path: vector.path.clone(), source: Source::Vector { vector: Mutex::new(vector), names } }
    }

    /// Whether pixels carry the id of the feature they come from (a vector reference).
    pub fn has_feature_ids(&self) -> bool {
        matches!(self.source, Source::Vector { .. })
    }

    /// Reads a window of raw codes (no-data as 0); for vectors whose class field holds
    /// names, the class codes the names resolve to.
    pub fn read_raw(&self, window: Window) -> Result<Vec<u32>> {
        Ok(self.read_raw_with_ids(window)?.0)
    }

    /// [`ReferenceMap::read_raw`], with each pixel's feature id for vector references
    /// ([`crate::NO_FEATURE`] where no feature is).
    pub fn read_raw_with_ids(&self, window: Window) -> Result<(Vec<u32>, Option<Vec<u32>>)> {
        let (aligned, nodata) = match &self.source {
            Source::Raster { aligned, nodata } => (aligned, *nodata),
            Source::Vector { vector, .. } => {
                let (classes, ids) = vector.lock().unwrap_or_else(std::sync::PoisonError::into_inner).read(window)?;
                return Ok((classes, Some(ids)));
            }
        };
        let mut raw = vec![0u32; window.pixels()];
        aligned
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
        if let Some(nd) = nodata {
            for v in raw.iter_mut().filter(|v| **v as f64 == nd) {
                *v = 0;
            }
        }
        Ok((raw, None))
    }

    /// Reads a window and translates source codes with `lookup`; codes not in it
    /// become 0 and are counted in `unmapped` (no-data stays 0 and is not counted).
    pub fn read(&self, window: Window, lookup: &HashMap<u32, u16>, unmapped: &mut BTreeMap<u32, u64>) -> Result<Vec<u16>> {
        Ok(self.read_with_ids(window, lookup, unmapped)?.0)
    }

    /// [`ReferenceMap::read`], with each pixel's feature id for vector references.
    pub fn read_with_ids(&self, window: Window, lookup: &HashMap<u32, u16>, unmapped: &mut BTreeMap<u32, u64>) -> Result<(Vec<u16>, Option<Vec<u32>>)> {
        let (raw, ids) = self.read_raw_with_ids(window)?;
        // Names were resolved to class codes when the vectors were opened.
        if let Source::Vector { names: true, .. } = &self.source {
            return Ok((raw.into_iter().map(|c| c as u16).collect(), ids));
        }
        let classes = raw
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
            .collect();
        Ok((classes, ids))
    }
}

/// Whether `ds`'s extent meets `grid`'s (the grid's outline transformed into `ds`'s
/// CRS); `None` when either lacks georeferencing or the CRSs cannot be related.
pub(crate) fn overlaps(ds: &Dataset, grid: &Grid) -> Option<bool> {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    let gt = grid.geo_transform?;
    let rgt = ds.geo_transform().ok()?;
    if grid.projection.is_empty() || ds.projection().is_empty() || gt[2] != 0.0 || gt[4] != 0.0 || rgt[2] != 0.0 || rgt[4] != 0.0 {
        return None;
    }
    let bounds = |g: [f64; 6], w: usize, h: usize| {
        let (x0, x1) = (g[0], g[0] + g[1] * w as f64);
        let (y0, y1) = (g[3], g[3] + g[5] * h as f64);
        [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)]
    };
    let mut from = SpatialRef::from_wkt(&grid.projection).ok()?;
    let mut to = SpatialRef::from_wkt(&ds.projection()).ok()?;
    from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    to.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let ours = CoordTransform::new(&from, &to).ok()?.transform_bounds(&bounds(gt, grid.width, grid.height), 21).ok()?;
    let (w, h) = ds.raster_size();
    let theirs = bounds(rgt, w, h);
    Some(ours[0] < theirs[2] && theirs[0] < ours[2] && ours[1] < theirs[3] && theirs[1] < ours[3])
}

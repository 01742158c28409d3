//! Raster I/O through GDAL: image time series in, GeoTIFFs out.
//!
//! Architecture invariant: this is the only crate that knows GDAL (`scripts/check-layers.sh` enforces it).
//!
//! Inputs of three shapes become one [`Series`]: a folder of per-date multi-band
//! rasters (`YYYY-MM-DD.tif`, band names in the descriptions), Sentinel-2 L2A products
//! as delivered (per-band JP2/GeoTIFF at 10 m and 20 m, DN with the processing
//! baseline's offset), and STAC ItemCollections. Every band of every date is a
//! [`BandSource`]; sources not on the target [`Grid`] are warped onto it by GDAL
//! (bilinear for reflectance, nearest for classes), lazily, window by window.

#![deny(missing_docs)]

mod l2a;
mod layers;
mod quicklook;
mod reference;
mod series;
mod stac;
mod vector;
mod warp;
mod write;

pub use l2a::{L2aOptions, open_l2a};
pub use layers::{ClassRaster, FeatureRaster, pixel_centre, read_classes_on};
pub use quicklook::{Quicklook, quicklook, true_colour};
pub use reference::ReferenceMap;
pub use series::{BandSource, ChunkData, Resampling, Scene, Series, SeriesReader};
pub use stac::{StacFound, StacSearch, aoi_geometry, open_stac, open_stac_items, search_stac};
pub use vector::{NO_FEATURE, VectorReference, VectorSpec, VectorSummary, is_vector};
pub use warp::GridSpec;
pub use write::{ChunkedRaster, ClassStyle, OutputKind, write_class_map, write_geotiff_dn, write_geotiff_f32};
// Pixel windows and dates are core types; re-exported so raster's callers name one module.
pub use sitsflow_core::dates::{DateWindow, parse_date, years_of};
pub use sitsflow_core::window::{Window, chunk_grid};

/// The pixel grid a series is read onto and outputs are written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// GDAL geotransform, or `None` for rasters without georeferencing.
    pub geo_transform: Option<[f64; 6]>,
    /// CRS as WKT (empty when unknown).
    pub projection: String,
}

impl Grid {
    /// The grid `factor` times finer over the same extent (`factor × factor` pixels for
    /// each of this grid's), for stage outputs of scale > 1.
    pub fn scaled(&self, factor: usize) -> Grid {
        let f = factor as f64;
        Grid {
            width: self.width * factor,
            height: self.height * factor,
            geo_transform: self.geo_transform.map(|g| [g[0], g[1] / f, g[2] / f, g[3], g[4] / f, g[5] / f]),
            projection: self.projection.clone(),
        }
    }

    /// The part of this grid (north up) that covers `wgs84` (`[west, south, east, north]`
    /// in degrees), snapped outwards to whole pixels: the same pixels, fewer of them.
    pub fn cropped_to(&self, wgs84: [f64; 4]) -> anyhow::Result<Grid> {
        use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
        let Some(gt) = self.geo_transform.filter(|g| g[2] == 0.0 && g[4] == 0.0) else {
            anyhow::bail!("the grid is not north up with a geotransform, so it cannot be cropped to an area");
        };
        anyhow::ensure!(!self.projection.is_empty(), "the grid has no CRS, so it cannot be cropped to an area in degrees");
        let mut from = SpatialRef::from_epsg(4326)?;
        let mut to = SpatialRef::from_wkt(&self.projection)?;
        from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        to.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        let [minx, miny, maxx, maxy] = CoordTransform::new(&from, &to)?.transform_bounds(&wgs84, 21)?;
        let col = |x: f64| (x - gt[0]) / gt[1];
        let row = |y: f64| (y - gt[3]) / gt[5];
        let (c0, c1) = (col(minx).min(col(maxx)).floor().max(0.0), col(minx).max(col(maxx)).ceil().min(self.width as f64));
        let (r0, r1) = (row(miny).min(row(maxy)).floor().max(0.0), row(miny).max(row(maxy)).ceil().min(self.height as f64));
        anyhow::ensure!(
            c0 < c1 && r0 < r1,
            "the area [{}, {}, {}, {}] does not meet the grid ({} × {} px, upper left {} {})",
            wgs84[0],
            wgs84[1],
            wgs84[2],
            wgs84[3],
            self.width,
            self.height,
            gt[0],
            gt[3]
        );
        Ok(Grid {
            width: (c1 - c0) as usize,
            height: (r1 - r0) as usize,
            geo_transform: Some([gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5]]),
            projection: self.projection.clone(),
        })
    }

    /// The grid of an open dataset.
    pub(crate) fn of(ds: &gdal::Dataset) -> Grid {
        let (width, height) = ds.raster_size();
        Grid { width, height, geo_transform: ds.geo_transform().ok(), projection: ds.projection() }
    }

    /// True when `other` covers the same pixels (same size, transform within 1e-6 of a
    /// pixel, same CRS).
    pub fn same_pixels(&self, other: &Grid) -> bool {
        if (self.width, self.height) != (other.width, other.height) {
            return false;
        }
        let crs_equal = self.projection == other.projection
            || (!self.projection.is_empty() && !other.projection.is_empty() && warp::same_crs(&self.projection, &other.projection));
        match (self.geo_transform, other.geo_transform) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                let tolerance = a[1].abs().max(a[5].abs()) * 1e-6;
                crs_equal && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tolerance)
            }
            _ => false,
        }
    }
}

/// The grid of a raster file.
pub fn grid_of(path: &std::path::Path) -> anyhow::Result<Grid> {
    use anyhow::Context;
    let ds = gdal::Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
    Ok(Grid::of(&ds))
}

/// Area of one pixel in the grid's units squared (m² for projected CRSs), if known.
pub fn pixel_area(grid: &Grid) -> Option<f64> {
    grid.geo_transform.map(|gt| (gt[1] * gt[5] - gt[2] * gt[4]).abs())
}

/// The metadata item (default domain) that marks a raster as made by a generator rather
/// than observed (`sitsflow demo-data --vhr` writes it); its value names the generator.
pub const GENERATED_KEY: &str = "SITSFLOW_GENERATED";

/// What generated the raster at `path` ([`GENERATED_KEY`]), or `None` when it is not
/// marked (or cannot be opened: the caller reads it anyway and reports that error).
pub fn generated_by(path: &std::path::Path) -> Option<String> {
    use gdal::Metadata;
    gdal::Dataset::open(path).ok().and_then(|d| d.metadata_item(GENERATED_KEY, ""))
}

/// The CRS of an EPSG code, as WKT.
pub fn epsg_wkt(code: u32) -> anyhow::Result<String> {
    Ok(gdal::spatial_ref::SpatialRef::from_epsg(code)?.to_wkt()?)
}

/// Sends GDAL's own messages to the log instead of stderr: failures that matter come
/// back as errors with their message anyway, so they are logged at debug level;
/// warnings at warn level.
pub fn route_gdal_messages() {
    gdal::config::set_error_handler(|kind, code, message| match kind {
        gdal::errors::CplErrType::Warning => log::warn!(target: "gdal", "GDAL: {message}"),
        gdal::errors::CplErrType::Fatal => log::error!(target: "gdal", "GDAL fatal error {code}: {message}"),
        _ => log::debug!(target: "gdal", "GDAL ({kind:?} {code}): {message}"),
    });
}

/// Caps GDAL's block cache (decoded tiles of inputs and outputs), which otherwise
/// grows to 5 % of the machine's memory.
pub fn set_block_cache(mib: usize) {
    // SAFETY: sets a process-wide size; GDAL evicts blocks to honour it.
    unsafe { gdal_sys::GDALSetCacheMax64((mib as i64) << 20) };
}

/// Threads that compress a COG's blocks while it is written (GDAL's `NUM_THREADS`): the
/// run's workers. The file's bytes do not depend on it (blocks are compressed apart and
/// written in order).
static COG_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Sets the threads that compress COG blocks while outputs are written (at least 1).
pub fn set_cog_threads(threads: usize) {
    COG_THREADS.store(threads.max(1), std::sync::atomic::Ordering::Relaxed);
}

static ASSEMBLY_MIB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets what the memory budget leaves the writing of an output (0: no limit): an output
/// whose overviews would take more is written without them, with a warning.
pub fn set_assembly_memory(mib: usize) {
    ASSEMBLY_MIB.store(mib, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn assembly_memory_mib() -> usize {
    ASSEMBLY_MIB.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn cog_threads() -> usize {
    COG_THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The size of GDAL's block cache, in MiB.
pub fn block_cache_mib() -> usize {
    // SAFETY: reads a process-wide setting.
    (unsafe { gdal_sys::GDALGetCacheMax64() } >> 20) as usize
}

/// GDAL's version, for `doctor` and the manifest.
pub fn gdal_version() -> String {
    gdal::version::VersionInfo::version_summary()
}

/// The GDAL drivers this build can use for what sitsflow reads and writes (GeoTIFF/COG,
/// JPEG 2000 for L2A products, VRT, PNG for quicklooks), each with whether it is present.
pub fn gdal_drivers() -> Vec<(&'static str, bool)> {
    ["GTiff", "COG", "JP2OpenJPEG", "VRT", "PNG", "MEM"]
        .into_iter()
        .map(|name| (name, gdal::DriverManager::get_driver_by_name(name).is_ok()))
        .collect()
}

/// How many GDAL drivers are registered in all.
pub fn gdal_driver_count() -> usize {
    gdal::DriverManager::count()
}


/// Longitude and latitude (WGS 84, degrees) of points given in `grid`'s CRS; `None`
/// when the grid has no CRS.
pub fn lon_lat(grid: &Grid, points: &[(f64, f64)]) -> anyhow::Result<Option<Vec<(f64, f64)>>> {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    if grid.projection.is_empty() {
        return Ok(None);
    }
    let mut from = SpatialRef::from_wkt(&grid.projection)?;
    let mut to = SpatialRef::from_epsg(4326)?;
    from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    to.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let transform = CoordTransform::new(&from, &to)?;
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
    let mut zs = vec![0.0; xs.len()];
    if !xs.is_empty() {
        transform.transform_coords(&mut xs, &mut ys, &mut zs)?;
    }
    Ok(Some(xs.into_iter().zip(ys).collect()))
}

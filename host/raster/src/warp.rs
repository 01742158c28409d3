//! Aligning rasters onto a target grid with GDAL's warper (`gdalwarp` as a library),
//! producing virtual datasets that are computed window by window when read.

use super::Grid;
use super::series::Resampling;
use anyhow::{Context, Result, bail};
use gdal::Dataset;
use gdal::cpl::CslStringList;
use gdal::spatial_ref::SpatialRef;
use std::ffi::CString;

/// A target grid as written in a pipeline: `grid = { crs = "EPSG:32633",
/// bounds = [xmin, ymin, xmax, ymax], resolution = 10.0 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    /// The CRS, e.g. `EPSG:32633`.
    pub crs: String,
    /// `[xmin, ymin, xmax, ymax]` in CRS units.
    pub bounds: [f64; 4],
    /// Pixel size in CRS units.
    pub resolution: f64,
}

impl GridSpec {
    /// The pixel grid these bounds and resolution make, north up; checks the CRS and bounds.
    pub fn to_grid(&self) -> Result<Grid> {
        let srs = SpatialRef::from_definition(&self.crs).with_context(|| format!("unknown CRS '{}'", self.crs))?;
        let [xmin, ymin, xmax, ymax] = self.bounds;
        if !(xmax > xmin && ymax > ymin && self.resolution > 0.0) {
            bail!("grid bounds must be [xmin, ymin, xmax, ymax] with xmax > xmin, ymax > ymin, and resolution > 0");
        }
        let width = ((xmax - xmin) / self.resolution).round() as usize;
        let height = ((ymax - ymin) / self.resolution).round() as usize;
        Ok(Grid {
            width,
            height,
            geo_transform: Some([xmin, self.resolution, 0.0, ymax, 0.0, -self.resolution]),
            projection: srs.to_wkt()?,
        })
    }
}

/// True when two WKT strings name the same CRS (GDAL's `OSRIsSame`).
pub(crate) fn same_crs(a: &str, b: &str) -> bool {
    match (SpatialRef::from_wkt(a), SpatialRef::from_wkt(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A dataset on the target grid: the source itself, or a warped VRT over it. The VRT
/// reads through the source's handle, so the source must outlive it: fields drop in
/// order, the VRT first.
pub(crate) struct Aligned {
    pub dataset: Dataset,
    _source: Option<Dataset>,
}

impl Aligned {
    /// `src` as it is when it is on `grid`, else warped onto it.
    pub fn new(src: Dataset, grid: &Grid, resampling: Resampling, nodata: Option<f64>) -> Result<Aligned> {
        if Grid::of(&src).same_pixels(grid) {
            return Ok(Aligned { dataset: src, _source: None });
        }
        let dataset = warp_to_grid(&src, grid, resampling, nodata)?;
        Ok(Aligned { dataset, _source: Some(src) })
    }

    /// `src` read as it is.
    pub fn unwarped(src: Dataset) -> Aligned {
        Aligned { dataset: src, _source: None }
    }
}

/// A virtual dataset presenting `src` on `grid` (GDAL warp to VRT, nothing computed
/// until read). `nodata` is the source's no-data value, carried to the output.
/// The result reads through `src`'s handle: keep `src` open while it is used.
fn warp_to_grid(src: &Dataset, grid: &Grid, resampling: Resampling, nodata: Option<f64>) -> Result<Dataset> {
    let Some(gt) = grid.geo_transform else {
        bail!("the target grid has no georeferencing, so other rasters cannot be aligned to it");
    };
    if src.geo_transform().is_err() {
        bail!("it has no georeferencing, so it cannot be aligned to the target grid");
    }
    if src.projection().is_empty() {
        bail!("it has no CRS, so it cannot be aligned to the target grid");
    }
    // Interpolating reflectance onto a coarser grid would skip most source pixels:
    // average them instead (a finer grid keeps bilinear).
    let resampling = match (resampling, src.geo_transform()) {
        (Resampling::Bilinear, Ok(sgt)) if same_crs(&src.projection(), &grid.projection) && sgt[1].abs() < gt[1].abs() * 0.999 => {
            Resampling::Average
        }
        (r, _) => r,
    };
    let (xmin, ymax) = (gt[0], gt[3]);
    let xmax = xmin + gt[1] * grid.width as f64;
    let ymin = ymax + gt[5] * grid.height as f64;
    let mut args: Vec<String> = vec![
        "-of".into(),
        "VRT".into(),
        "-t_srs".into(),
        grid.projection.clone(),
        "-te".into(),
        xmin.to_string(),
        ymin.to_string(),
        xmax.to_string(),
        ymax.to_string(),
        "-ts".into(),
        grid.width.to_string(),
        grid.height.to_string(),
        "-r".into(),
        resampling.gdal_name().into(),
        // From full-resolution data only: a JPEG 2000's reduced resolutions (or any
        // overview) would average class codes and resample reflectance their own way.
        "-ovr".into(),
        "NONE".into(),
    ];
    if resampling != Resampling::Nearest {
        // Interpolate and keep the result in float: in the source's integer type an
        // interpolated digital number would be rounded (up to 0.5 DN off).
        args.extend(["-wt".into(), "Float32".into(), "-ot".into(), "Float32".into()]);
    }
    if let Some(nd) = nodata {
        let nd = if nd.is_nan() { "nan".to_string() } else { nd.to_string() };
        args.extend(["-srcnodata".into(), nd.clone(), "-dstnodata".into(), nd]);
    }
    let argv: CslStringList = args.iter().map(String::as_str).collect();
    let dest = CString::new("").expect("no NUL");
    // SAFETY: GDALWarp reads the options and the source handle and returns a new
    // dataset handle (or null) that we own; the options are freed right after.
    unsafe {
        let options = gdal_sys::GDALWarpAppOptionsNew(argv.as_ptr() as *mut *mut std::ffi::c_char, std::ptr::null_mut());
        if options.is_null() {
            bail!("GDAL refused the warp options {args:?}");
        }
        let mut sources = [src.c_dataset()];
        let mut usage_error = 0;
        let out = gdal_sys::GDALWarp(dest.as_ptr(), std::ptr::null_mut(), 1, sources.as_mut_ptr(), options, &mut usage_error);
        gdal_sys::GDALWarpAppOptionsFree(options);
        if out.is_null() {
            bail!("GDAL could not warp it onto the target grid: {}", last_gdal_error());
        }
        Ok(Dataset::from_c_dataset(out))
    }
}

fn last_gdal_error() -> String {
    // SAFETY: CPLGetLastErrorMsg returns a pointer to a thread-local, NUL-terminated string.
    unsafe {
        let msg = gdal_sys::CPLGetLastErrorMsg();
        if msg.is_null() {
            return "unknown error".into();
        }
        std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned()
    }
}

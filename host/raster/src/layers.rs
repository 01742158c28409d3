//! Reading a run's own outputs back, window by window: multi-band feature rasters
//! (pixel-major, as stages take them) and single-band class rasters.

use super::Window;
use anyhow::{Context, Result, bail};
use gdal::Dataset;
use gdal::Metadata as _;
use std::path::{Path, PathBuf};

/// A multi-band f32 raster written by a features stage (band descriptions = feature names).
pub struct FeatureRaster {
    /// The raster file.
    pub path: PathBuf,
    /// The feature names, one per band, from the band descriptions (`band<n>` when empty).
    pub names: Vec<String>,
    /// The file itself, or a warped VRT over it (`open_on`), which reads through the
    /// file's handle: it drops first.
    dataset: super::warp::Aligned,
    /// Read as NaN (`open_on`: the image's own no-data value).
    nodata: Option<f64>,
}

impl FeatureRaster {
    /// Opens a features raster of the run, on its own grid.
    pub fn open(path: &Path) -> Result<FeatureRaster> {
        let dataset = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
        let names = band_names(&dataset)?;
        Ok(FeatureRaster { path: path.to_path_buf(), names, dataset: super::warp::Aligned::unwarped(dataset), nodata: None })
    }

    /// An image from outside the run (a very-high-resolution image for fusion) as it
    /// falls on `grid`: warped there with GDAL when it is on another grid — averaged when
    /// its pixels are finer than the grid's, else interpolated bilinearly — its no-data
    /// value read as NaN.
    pub fn open_on(path: &Path, grid: &super::Grid) -> Result<FeatureRaster> {
        let source = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
        let names = band_names(&source)?;
        let nodata = source.rasterband(1)?.no_data_value();
        let finer = match (source.geo_transform().ok(), grid.geo_transform) {
            (Some(s), Some(g)) => s[1].abs() < g[1].abs() * 0.999,
            _ => false,
        };
        let resampling = if finer { super::series::Resampling::Average } else { super::series::Resampling::Bilinear };
        let dataset = super::warp::Aligned::new(source, grid, resampling, nodata)
            .with_context(|| format!("{}: onto the grid of {} × {} px", path.display(), grid.width, grid.height))?;
        Ok(FeatureRaster { path: path.to_path_buf(), names, dataset, nodata })
    }

    /// `window.pixels() × features` values, pixel-major.
    pub fn read(&self, window: Window) -> Result<Vec<f32>> {
        let n = window.pixels();
        let f = self.names.len();
        let mut plane = vec![0f32; n];
        let mut out = vec![0f32; n * f];
        for k in 0..f {
            self.dataset
                .dataset
                .rasterband(k + 1)?
                .read_into_slice::<f32>(
                    (window.col as isize, window.row as isize),
                    (window.cols, window.rows),
                    (window.cols, window.rows),
                    &mut plane,
                    None,
                )
                .with_context(|| format!("{}: reading band {} ({}) at {window}", self.path.display(), k + 1, self.names[k]))?;
            for (p, v) in plane.iter().enumerate() {
                out[p * f + k] = *v;
            }
        }
        Ok(out)
    }
}

impl FeatureRaster {
    /// The bands `bands` (0-based) of `window`, band-major: `bands.len()` planes of
    /// `window.pixels()` values, row-major.
    ///
    /// One dataset-level read for all the bands: a run's COGs interleave the bands by
    /// pixel, so reading band after band decodes every block once per band, and once a
    /// window's blocks outgrow GDAL's cache, from disk each time (a 544 px tile of 120
    /// bands read band by band ran 2.6× slower than this).
    pub fn read_planes(&self, window: Window, bands: &[usize]) -> Result<Vec<f32>> {
        let n = window.pixels();
        let mut out = vec![0f32; n * bands.len()];
        if let Some(&k) = bands.iter().find(|&&k| k >= self.names.len()) {
            bail!("{}: no band {} (it has {})", self.path.display(), k + 1, self.names.len());
        }
        let mut map: Vec<i32> = bands.iter().map(|&k| k as i32 + 1).collect();
        // SAFETY: `out` holds `bands.len()` planes of `window` in f32, the band-sequential
        // layout GDAL uses when the pixel, line and band spacings are 0; `map` names
        // existing bands (checked above); the dataset outlives the call.
        let err = unsafe {
            gdal_sys::GDALDatasetRasterIO(
                self.dataset.dataset.c_dataset(),
                gdal_sys::GDALRWFlag::GF_Read,
                window.col as i32,
                window.row as i32,
                window.cols as i32,
                window.rows as i32,
                out.as_mut_ptr().cast(),
                window.cols as i32,
                window.rows as i32,
                gdal_sys::GDALDataType::GDT_Float32,
                map.len() as i32,
                map.as_mut_ptr(),
                0,
                0,
                0,
            )
        };
        if err != gdal_sys::CPLErr::CE_None {
            // SAFETY: GDAL's last error message of this thread, a C string it owns.
            let message = unsafe { std::ffi::CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) }.to_string_lossy().into_owned();
            bail!("{}: reading {} bands at {window}: {message}", self.path.display(), bands.len());
        }
        if let Some(nd) = self.nodata.filter(|nd| !nd.is_nan()) {
            let nd = nd as f32;
            out.iter_mut().filter(|v| **v == nd).for_each(|v| *v = f32::NAN);
        }
        Ok(out)
    }
}

/// A class raster from outside the run (a dated annotation, seed 000) as it falls on
/// `grid`: as it is when on the grid, else warped there — the most frequent class when
/// its pixels are finer than the grid's, the nearest otherwise; codes, 0 = none. Also its
/// classes' names and colours where the file has them (category names, colour table).
pub fn read_classes_on(path: &Path, grid: &super::Grid) -> Result<(Vec<u16>, Vec<(u16, String, String)>)> {
    let source = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
    if source.raster_count() != 1 {
        bail!("{}: {} bands; an annotation has one band of class codes", path.display(), source.raster_count());
    }
    let band = source.rasterband(1)?;
    let nodata = band.no_data_value();
    let mut style = Vec::new();
    // SAFETY: GDAL returns the band's category names as a NULL-terminated list it owns
    // (or null), valid while the band is; each entry is a NUL-terminated string.
    let names: Vec<String> = unsafe {
        let list = gdal_sys::GDALGetRasterCategoryNames(band.c_rasterband());
        let mut out = Vec::new();
        if !list.is_null() {
            let mut i = 0;
            while !(*list.add(i)).is_null() {
                out.push(std::ffi::CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned());
                i += 1;
            }
        }
        out
    };
    let colours = band.color_table();
    for (code, name) in names.iter().enumerate().skip(1) {
        if name.is_empty() {
            continue;
        }
        let colour = colours
            .as_ref()
            .and_then(|t| t.entry_as_rgb(code))
            .map_or("#808080".to_string(), |c| format!("#{:02x}{:02x}{:02x}", c.r, c.g, c.b));
        style.push((code as u16, name.clone(), colour));
    }
    drop(colours);
    let finer = match (source.geo_transform().ok(), grid.geo_transform) {
        (Some(s), Some(g)) => s[1].abs() < g[1].abs() * 0.999,
        _ => false,
    };
    let resampling = if finer { super::series::Resampling::Mode } else { super::series::Resampling::Nearest };
    let aligned = super::warp::Aligned::new(source, grid, resampling, nodata)
        .with_context(|| format!("{}: onto the grid of {} × {} px", path.display(), grid.width, grid.height))?;
    let band = aligned.dataset.rasterband(1)?;
    let mut data = vec![0u16; grid.width * grid.height];
    band.read_into_slice::<u16>((0, 0), (grid.width, grid.height), (grid.width, grid.height), &mut data, None)
        .with_context(|| format!("{}: reading its classes", path.display()))?;
    if let Some(nd) = nodata.filter(|nd| *nd != 0.0 && nd.is_finite() && (0.0..=65535.0).contains(nd)) {
        let nd = nd as u16;
        data.iter_mut().filter(|v| **v == nd).for_each(|v| *v = 0);
    }
    Ok((data, style))
}

/// Band names: descriptions, else `band<i>`.
fn band_names(dataset: &Dataset) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(dataset.raster_count());
    for b in 1..=dataset.raster_count() {
        let band = dataset.rasterband(b)?;
        let name = band.description().unwrap_or_default();
        names.push(if name.is_empty() { format!("band{b}") } else { name });
    }
    Ok(names)
}

/// A single-band class raster of the run (u16 codes, 0 = none).
pub struct ClassRaster {
    /// The raster file.
    pub path: PathBuf,
    dataset: Dataset,
}

impl ClassRaster {
    /// Opens a class raster, which must have exactly one band.
    pub fn open(path: &Path) -> Result<ClassRaster> {
        let dataset = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
        if dataset.raster_count() != 1 {
            bail!("{}: a class raster has one band, this has {}", path.display(), dataset.raster_count());
        }
        Ok(ClassRaster { path: path.to_path_buf(), dataset })
    }

    /// Reads a window of class codes.
    pub fn read(&self, window: Window) -> Result<Vec<u16>> {
        self.read_window(window)
    }

    /// Reads a window of 32-bit values (feature ids, wide codes).
    pub fn read_u32(&self, window: Window) -> Result<Vec<u32>> {
        self.read_window(window)
    }

    fn read_window<T: gdal::raster::GdalType + Copy + Default>(&self, window: Window) -> Result<Vec<T>> {
        let mut out = vec![T::default(); window.pixels()];
        self.dataset
            .rasterband(1)?
            .read_into_slice::<T>(
                (window.col as isize, window.row as isize),
                (window.cols, window.rows),
                (window.cols, window.rows),
                &mut out,
                None,
            )
            .with_context(|| format!("{}: reading at {window}", self.path.display()))?;
        Ok(out)
    }
}

/// Map coordinates of a pixel's centre.
pub fn pixel_centre(geo_transform: &[f64; 6], row: usize, col: usize) -> (f64, f64) {
    let (c, r) = (col as f64 + 0.5, row as f64 + 0.5);
    (
        geo_transform[0] + c * geo_transform[1] + r * geo_transform[2],
        geo_transform[3] + c * geo_transform[4] + r * geo_transform[5],
    )
}

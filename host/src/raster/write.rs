//! Writing rasters: a tiled working GeoTIFF filled chunk by chunk, finished into a
//! Cloud-Optimized GeoTIFF (tiled, DEFLATE, overviews) under the final name.
//!
//! The working file and the COG copy both live under temporary names; only the
//! final rename gives a file its real name, so an interrupted run never leaves a
//! file that looks finished.

use super::{Grid, Window};
use anyhow::{Context, Result};
use gdal::raster::{Buffer, ColorEntry, ColorTable, GdalType, PaletteInterpretation, RasterCreationOptions, RgbaEntry};
use gdal::{Dataset, DatasetOptions, DriverManager, GdalOpenFlags, Metadata};
use std::path::{Path, PathBuf};

/// Class names and colours of a categorical map.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStyle {
    /// (code, name, `#rrggbb`)
    pub classes: Vec<(u16, String, String)>,
}

/// What an output holds, which decides its overview resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Continuous values (features, probabilities): averaged overviews.
    Continuous,
    /// Classes or masks: overviews by the most frequent value.
    Categorical,
}

fn rgb(hex: &str) -> Option<(i16, i16, i16)> {
    let h = hex.strip_prefix('#')?;
    if h.len() != 6 {
        return None;
    }
    let v = u32::from_str_radix(h, 16).ok()?;
    Some((((v >> 16) & 0xff) as i16, ((v >> 8) & 0xff) as i16, (v & 0xff) as i16))
}

/// A raster being written: a tiled GeoTIFF at `work`, to become a COG at `target`.
pub struct GeoTiffWriter {
    dataset: Dataset,
    work: PathBuf,
    target: PathBuf,
    kind: OutputKind,
}

fn work_options() -> RasterCreationOptions {
    RasterCreationOptions::from_iter(["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=ZSTD", "ZSTD_LEVEL=1", "BIGTIFF=IF_SAFER"])
}

impl GeoTiffWriter {
    /// Creates the working file `work` with one band per name.
    pub fn create<T: GdalType>(
        work: &Path,
        target: &Path,
        grid: &Grid,
        band_names: &[String],
        nodata: Option<f64>,
        kind: OutputKind,
    ) -> Result<Self> {
        if let Some(parent) = work.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let driver = DriverManager::get_driver_by_name("GTiff")?;
        let mut dataset = driver
            .create_with_band_type_with_options::<T, _>(work, grid.width, grid.height, band_names.len(), &work_options())
            .with_context(|| format!("creating {}", work.display()))?;
        if let Some(gt) = grid.geo_transform {
            dataset.set_geo_transform(&gt)?;
        }
        if !grid.projection.is_empty() {
            dataset.set_projection(&grid.projection)?;
        }
        for (i, name) in band_names.iter().enumerate() {
            let mut band = dataset.rasterband(i + 1)?;
            band.set_description(name)?;
            if let Some(nd) = nodata {
                band.set_no_data_value(Some(nd))?;
            }
        }
        Ok(GeoTiffWriter { dataset, work: work.to_path_buf(), target: target.to_path_buf(), kind })
    }

    /// Reopens a working file left by an interrupted run, to go on writing into it.
    pub fn reopen(work: &Path, target: &Path, kind: OutputKind) -> Result<Self> {
        let options = DatasetOptions { open_flags: GdalOpenFlags::GDAL_OF_UPDATE | GdalOpenFlags::GDAL_OF_RASTER, ..Default::default() };
        let dataset = Dataset::open_ex(work, options).with_context(|| format!("reopening {}", work.display()))?;
        Ok(GeoTiffWriter { dataset, work: work.to_path_buf(), target: target.to_path_buf(), kind })
    }

    /// Band names of the file.
    pub fn band_names(&self) -> Result<Vec<String>> {
        (1..=self.dataset.raster_count()).map(|i| Ok(self.dataset.rasterband(i)?.description()?)).collect()
    }

    /// Gives band 1 a colour table and category names (for class maps).
    pub fn set_classes(&mut self, style: &ClassStyle) -> Result<()> {
        let mut table = ColorTable::new(PaletteInterpretation::Rgba);
        let max = style.classes.iter().map(|c| c.0).max().unwrap_or(0);
        let mut names = vec![String::new(); max as usize + 1];
        table.set_color_entry(0, &ColorEntry::Rgba(RgbaEntry { r: 0, g: 0, b: 0, a: 0 }));
        for (code, name, color) in &style.classes {
            let (r, g, b) = rgb(color).with_context(|| format!("class {code} '{name}': colour '{color}' is not #rrggbb"))?;
            table.set_color_entry(*code, &ColorEntry::Rgba(RgbaEntry { r, g, b, a: 255 }));
            names[*code as usize] = name.clone();
        }
        let mut band = self.dataset.rasterband(1)?;
        band.set_color_table(&table);
        let list: gdal::cpl::CslStringList = names.iter().map(String::as_str).collect();
        // SAFETY: GDALSetRasterCategoryNames copies the list; the band handle is valid
        // for as long as `self.dataset` lives.
        let err = unsafe { gdal_sys::GDALSetRasterCategoryNames(band.c_rasterband(), list.as_ptr() as *mut *mut std::ffi::c_char) };
        if err != gdal_sys::CPLErr::CE_None {
            anyhow::bail!("setting category names of {}", self.work.display());
        }
        Ok(())
    }

    /// Writes a window of band `band` (0-based) from a `rows × cols` plane.
    pub fn write<T: GdalType + Copy>(&mut self, band: usize, window: Window, plane: Vec<T>) -> Result<()> {
        let mut buffer = Buffer::new((window.cols, window.rows), plane);
        self.dataset
            .rasterband(band + 1)?
            .write((window.col as isize, window.row as isize), (window.cols, window.rows), &mut buffer)
            .with_context(|| format!("writing {} band {} at {window}", self.work.display(), band + 1))
    }

    /// Pushes written blocks to disk (so a chunk recorded as done survives a crash).
    pub fn flush(&mut self) -> Result<()> {
        self.dataset.flush_cache().with_context(|| format!("flushing {}", self.work.display()))
    }

    /// Turns the working file into a COG under the target name and removes it.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.dataset.flush_cache()?;
        let resampling = match self.kind {
            OutputKind::Continuous => "AVERAGE",
            OutputKind::Categorical => "MODE",
        };
        let cog_tmp = crate::fsutil::temp_path(&self.target);
        let driver = DriverManager::get_driver_by_name("COG")?;
        let options = RasterCreationOptions::from_iter([
            "COMPRESS=DEFLATE".to_string(),
            "PREDICTOR=YES".to_string(),
            "BLOCKSIZE=512".to_string(),
            "BIGTIFF=IF_SAFER".to_string(),
            format!("OVERVIEW_RESAMPLING={resampling}"),
            "NUM_THREADS=ALL_CPUS".to_string(),
        ]);
        let copy = self
            .dataset
            .create_copy(&driver, &cog_tmp, &options)
            .with_context(|| format!("writing the COG {}", cog_tmp.display()));
        let GeoTiffWriter { dataset, work, target, .. } = self;
        drop(dataset);
        let copy = copy?;
        drop(copy);
        std::fs::rename(&cog_tmp, &target).with_context(|| format!("renaming {} to {}", cog_tmp.display(), target.display()))?;
        // Category names live in the PAM sidecar for some types: keep it with the file.
        let aux = PathBuf::from(format!("{}.aux.xml", cog_tmp.display()));
        if aux.exists() {
            std::fs::rename(&aux, format!("{}.aux.xml", target.display()))?;
        }
        let _ = std::fs::remove_file(&work);
        let _ = std::fs::remove_file(format!("{}.aux.xml", work.display()));
        Ok(target)
    }

    /// Closes and removes the working file.
    pub fn abandon(self) {
        let GeoTiffWriter { dataset, work, .. } = self;
        drop(dataset);
        let _ = std::fs::remove_file(&work);
        let _ = std::fs::remove_file(format!("{}.aux.xml", work.display()));
    }
}

/// Writes a whole multi-band float raster as a COG (used by the demo generator).
pub fn write_geotiff_f32(path: &Path, grid: &Grid, band_names: &[String], planes: Vec<Vec<f32>>) -> Result<()> {
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let work = crate::fsutil::temp_path(&path.with_extension("work.tif"));
    let mut writer = GeoTiffWriter::create::<f32>(&work, path, grid, band_names, None, OutputKind::Continuous)?;
    for (i, plane) in planes.into_iter().enumerate() {
        writer.write(i, window, plane)?;
    }
    writer.finish()?;
    Ok(())
}

/// Writes a class map (`u16`, 0 = no data) as a COG with colour table and class names.
pub fn write_class_map(path: &Path, grid: &Grid, name: &str, labels: Vec<u16>, style: &ClassStyle) -> Result<()> {
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let work = crate::fsutil::temp_path(&path.with_extension("work.tif"));
    let mut writer = GeoTiffWriter::create::<u16>(&work, path, grid, &[name.to_string()], Some(0.0), OutputKind::Categorical)?;
    writer.set_classes(style)?;
    writer.write(0, window, labels)?;
    writer.finish()?;
    Ok(())
}

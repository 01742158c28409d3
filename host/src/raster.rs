//! Raster I/O through GDAL: image time series in, GeoTIFFs out.
//!
//! Architecture invariant: this is the only module that knows GDAL.
//!
//! A series is a folder of per-date rasters `YYYY-MM-DD.tif`, each multi-band with
//! band names in the band descriptions (the convention of `shared/data`). All dates
//! must share size, geotransform and CRS. Reads go straight into a chunk's buffer,
//! with each band's scale and offset applied and nodata turned into NaN.

use anyhow::{Context, Result, bail, ensure};
use gdal::raster::{Buffer, GdalType, RasterCreationOptions};
use gdal::{Dataset, DriverManager, Metadata};
use std::path::{Path, PathBuf};

/// A rectangle of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub row: usize,
    pub col: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Window {
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rows {}..{}, cols {}..{}", self.row, self.row + self.rows, self.col, self.col + self.cols)
    }
}

/// Splits a `width × height` raster into chunks of at most `size × size`, row-major.
pub fn chunk_grid(width: usize, height: usize, size: usize) -> Vec<Window> {
    let mut chunks = Vec::new();
    for row in (0..height).step_by(size) {
        for col in (0..width).step_by(size) {
            chunks.push(Window { row, col, rows: size.min(height - row), cols: size.min(width - col) });
        }
    }
    chunks
}

/// Georeferencing shared by a series and its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// GDAL geotransform, or `None` for rasters without georeferencing.
    pub geo_transform: Option<[f64; 6]>,
    /// CRS as WKT (empty when unknown).
    pub projection: String,
}

/// One date of a series.
#[derive(Debug, Clone)]
pub struct Scene {
    /// ISO `YYYY-MM-DD`.
    pub date: String,
    pub path: PathBuf,
    /// 1-based GDAL band number of each of the series' bands.
    band_numbers: Vec<usize>,
}

/// An opened, checked time series (metadata only; pixels are read per chunk).
#[derive(Debug, Clone)]
pub struct Series {
    pub dir: PathBuf,
    pub scenes: Vec<Scene>,
    pub bands: Vec<String>,
    pub grid: Grid,
}

/// Checks `YYYY-MM-DD` (a real calendar date).
pub fn parse_date(s: &str) -> Option<(i32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i32 = s[0..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    ((1..=12).contains(&m) && d >= 1 && d <= days[m as usize - 1]).then_some((y, m, d))
}

fn geo_transform(ds: &Dataset) -> Option<[f64; 6]> {
    ds.geo_transform().ok()
}

impl Series {
    /// Opens a series folder, checking names, dates, bands and alignment of every file.
    /// `bands` selects and orders bands by name (default: the first file's bands).
    pub fn open(dir: &Path, bands: Option<&[String]>) -> Result<Series> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading the series folder {}", dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let lower = name.to_ascii_lowercase();
            let Some(stem) = lower.strip_suffix(".tif").or_else(|| lower.strip_suffix(".tiff")) else { continue };
            if parse_date(stem).is_none() {
                bail!("{}: a series file must be named YYYY-MM-DD.tif with a real date", path.display());
            }
            files.push((stem.to_string(), path));
        }
        files.sort();
        if let Some(w) = files.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("date {} appears twice: {} and {}", w[0].0, w[0].1.display(), w[1].1.display());
        }
        ensure!(!files.is_empty(), "the series folder {} has no YYYY-MM-DD.tif files", dir.display());

        let mut scenes = Vec::new();
        let mut grid: Option<(Grid, PathBuf)> = None;
        let mut names: Option<Vec<String>> = bands.map(<[String]>::to_vec);
        for (date, path) in files {
            let ds = Dataset::open(&path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
            let (width, height) = ds.raster_size();
            let this = Grid { width, height, geo_transform: geo_transform(&ds), projection: ds.projection() };
            match &grid {
                None => grid = Some((this, path.clone())),
                Some((g, first)) => {
                    if (g.width, g.height) != (width, height) {
                        bail!(
                            "{}: size {width} x {height} differs from {} ({} x {})",
                            path.display(),
                            first.display(),
                            g.width,
                            g.height
                        );
                    }
                    if g.geo_transform != this.geo_transform {
                        bail!("{}: geotransform {:?} differs from {}'s {:?}", path.display(), this.geo_transform, first.display(), g.geo_transform);
                    }
                    if g.projection != this.projection {
                        bail!("{}: its CRS differs from {}'s", path.display(), first.display());
                    }
                }
            }
            let described: Vec<String> = (1..=ds.raster_count())
                .map(|i| ds.rasterband(i).map(|b| b.description().unwrap_or_default()))
                .collect::<gdal::errors::Result<_>>()
                .with_context(|| format!("{}: reading band descriptions", path.display()))?;
            let wanted = names.get_or_insert_with(|| described.clone()).clone();
            ensure!(!wanted.is_empty(), "{}: has no bands", path.display());
            let mut band_numbers = Vec::new();
            for band in &wanted {
                let Some(i) = described.iter().position(|d| d == band) else {
                    bail!(
                        "{}: band '{band}' is missing (its bands: {})",
                        path.display(),
                        if described.iter().all(String::is_empty) { "no names".to_string() } else { described.join(", ") }
                    );
                };
                band_numbers.push(i + 1);
            }
            scenes.push(Scene { date, path, band_numbers });
        }
        Ok(Series {
            dir: dir.to_path_buf(),
            scenes,
            bands: names.unwrap_or_default(),
            grid: grid.expect("at least one file").0,
        })
    }

    pub fn dates(&self) -> Vec<String> {
        self.scenes.iter().map(|s| s.date.clone()).collect()
    }

    /// Opens the files for reading; one reader per thread.
    pub fn reader(&self) -> Result<SeriesReader<'_>> {
        let datasets = self
            .scenes
            .iter()
            .map(|s| Dataset::open(&s.path).with_context(|| format!("{}: cannot open with GDAL", s.path.display())))
            .collect::<Result<_>>()?;
        Ok(SeriesReader { series: self, datasets })
    }
}

/// Open file handles of a series, for one thread.
pub struct SeriesReader<'a> {
    series: &'a Series,
    datasets: Vec<Dataset>,
}

/// The pixels of one chunk: `dates × bands × rows × cols` and per-date validity.
pub struct ChunkData {
    pub data: Vec<f32>,
    /// `dates × rows × cols`, 1 where every band has a value; empty if all valid.
    pub valid: Vec<u8>,
}

impl SeriesReader<'_> {
    /// Reads a window of every date and band.
    pub fn read(&self, window: Window) -> Result<ChunkData> {
        let n = window.pixels();
        let bands = self.series.bands.len();
        let mut data = vec![0f32; self.series.scenes.len() * bands * n];
        for (d, (scene, ds)) in self.series.scenes.iter().zip(&self.datasets).enumerate() {
            for (b, &number) in scene.band_numbers.iter().enumerate() {
                let out = &mut data[(d * bands + b) * n..(d * bands + b + 1) * n];
                let band = ds.rasterband(number)?;
                band.read_into_slice::<f32>(
                    (window.col as isize, window.row as isize),
                    (window.cols, window.rows),
                    (window.cols, window.rows),
                    out,
                    None,
                )
                .with_context(|| {
                    format!("{}: reading band '{}' at {window}", scene.path.display(), self.series.bands[b])
                })?;
                let nodata = band.no_data_value();
                let (scale, offset) = (band.scale().unwrap_or(1.0) as f32, band.offset().unwrap_or(0.0) as f32);
                for v in out.iter_mut() {
                    if nodata.is_some_and(|nd| *v as f64 == nd) {
                        *v = f32::NAN;
                    } else if scale != 1.0 || offset != 0.0 {
                        *v = *v * scale + offset;
                    }
                }
            }
        }
        let mut valid = vec![1u8; self.series.scenes.len() * n];
        let mut any_invalid = false;
        for d in 0..self.series.scenes.len() {
            for b in 0..bands {
                let plane = &data[(d * bands + b) * n..(d * bands + b + 1) * n];
                for (v, x) in valid[d * n..(d + 1) * n].iter_mut().zip(plane) {
                    if x.is_nan() {
                        *v = 0;
                        any_invalid = true;
                    }
                }
            }
        }
        if !any_invalid {
            valid.clear();
        }
        Ok(ChunkData { data, valid })
    }
}

/// A tiled, compressed GeoTIFF written under a temporary name; [`GeoTiffWriter::finish`]
/// renames it into place, so an unfinished file never carries the final name.
pub struct GeoTiffWriter {
    dataset: Dataset,
    tmp: PathBuf,
    path: PathBuf,
}

impl GeoTiffWriter {
    /// Creates `path` (as a temporary file) with one band per name.
    pub fn create<T: GdalType>(path: &Path, grid: &Grid, band_names: &[String], nodata: Option<f64>) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = crate::fsutil::temp_path(path);
        let driver = DriverManager::get_driver_by_name("GTiff")?;
        let options = RasterCreationOptions::from_iter(["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]);
        let mut dataset = driver
            .create_with_band_type_with_options::<T, _>(&tmp, grid.width, grid.height, band_names.len(), &options)
            .with_context(|| format!("creating {}", tmp.display()))?;
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
        Ok(GeoTiffWriter { dataset, tmp, path: path.to_path_buf() })
    }

    /// Writes a window of band `band` (0-based) from a `rows × cols` plane.
    pub fn write<T: GdalType + Copy>(&mut self, band: usize, window: Window, plane: Vec<T>) -> Result<()> {
        let mut buffer = Buffer::new((window.cols, window.rows), plane);
        self.dataset
            .rasterband(band + 1)?
            .write((window.col as isize, window.row as isize), (window.cols, window.rows), &mut buffer)
            .with_context(|| format!("writing {} band {} at {window}", self.path.display(), band + 1))
    }

    /// Flushes, closes and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.dataset.flush_cache()?;
        let GeoTiffWriter { dataset, tmp, path } = self;
        drop(dataset);
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(path)
    }

    /// Closes and removes the temporary file.
    pub fn abandon(self) {
        let GeoTiffWriter { dataset, tmp, .. } = self;
        drop(dataset);
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Writes a whole multi-band raster in one go (used by the demo data generator).
pub fn write_geotiff_f32(path: &Path, grid: &Grid, band_names: &[String], planes: Vec<Vec<f32>>) -> Result<()> {
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let mut writer = GeoTiffWriter::create::<f32>(path, grid, band_names, None)?;
    for (i, plane) in planes.into_iter().enumerate() {
        writer.write(i, window, plane)?;
    }
    writer.finish()?;
    Ok(())
}

/// GDAL's version, for `doctor` and the manifest.
pub fn gdal_version() -> String {
    gdal::version::VersionInfo::version_summary()
}

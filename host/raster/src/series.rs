//! A time series: for every date, where each band comes from; read window by window.

use super::warp::Aligned;
use super::{DateWindow, Grid, Window, parse_date};
use anyhow::{Context, Result, bail, ensure};
use gdal::{Dataset, Metadata};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How a source is resampled onto the target grid when it is not already on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resampling {
    /// Classes (SCL, masks): take the nearest source pixel.
    Nearest,
    /// Reflectance: bilinear interpolation.
    Bilinear,
    /// Categorical maps onto a coarser or rotated grid: the most frequent class.
    Mode,
    /// Reflectance onto a coarser grid: the mean of the source pixels each target pixel
    /// covers (a very-high-resolution image brought to the grid a network reads).
    Average,
}

impl Resampling {
    /// How a band of this name is warped: nearest for class bands (the L2A scene
    /// classification `SCL`, cloud and quality masks `CLM`, `CLD`, `MSK_*`, `QA*`,
    /// `*mask*`), whose codes must never be averaged; bilinear for reflectance.
    pub fn for_band(name: &str) -> Resampling {
        let upper = name.to_ascii_uppercase();
        let class_band = matches!(upper.as_str(), "SCL" | "CLM" | "CLD" | "SNW" | "DATAMASK")
            || upper.starts_with("MSK")
            || upper.starts_with("QA")
            || upper.contains("MASK");
        if class_band { Resampling::Nearest } else { Resampling::Bilinear }
    }

    /// GDAL's name for the resampling method (`near`, `bilinear`, `mode`, `average`).
    pub fn gdal_name(self) -> &'static str {
        match self {
            Resampling::Nearest => "near",
            Resampling::Bilinear => "bilinear",
            Resampling::Mode => "mode",
            Resampling::Average => "average",
        }
    }
}

/// Where one band of one date comes from, and how its raw values become the cube's.
#[derive(Debug, Clone, PartialEq)]
pub struct BandSource {
    /// A file path or a GDAL virtual path (`/vsicurl/…`, `/vsis3/…`).
    pub path: String,
    /// 1-based band number in that file.
    pub band: usize,
    /// value = raw × scale + offset.
    pub scale: f64,
    /// Added after scaling (see `scale`).
    pub offset: f64,
    /// The raw value that means "missing" (becomes NaN).
    pub nodata: Option<f64>,
    /// How the band is warped onto the target grid.
    pub resampling: Resampling,
}

/// One date of a series: a source per band of the series.
#[derive(Debug, Clone)]
pub struct Scene {
    /// ISO `YYYY-MM-DD`.
    pub date: String,
    /// One source per band, in the series' band order.
    pub sources: Vec<BandSource>,
    /// How its digital numbers became reflectance, when the source says (L2A products:
    /// the offset applied and where it came from), for the manifest.
    pub radiometry: Option<serde_json::Value>,
}

/// An opened, checked time series (metadata only; pixels are read per chunk).
#[derive(Debug, Clone)]
pub struct Series {
    /// What the series was opened from (a folder, a product folder, a STAC file).
    pub origin: PathBuf,
    /// The scenes, one per date, in date order.
    pub scenes: Vec<Scene>,
    /// The band names, in order.
    pub bands: Vec<String>,
    /// The grid every date and band is read onto.
    pub grid: Grid,
}

fn open(path: &str) -> Result<Dataset> {
    Dataset::open(path).with_context(|| format!("{path}: cannot open with GDAL"))
}

impl Series {
    /// Opens a folder of per-date rasters `YYYY-MM-DD.tif`, checking names, dates and
    /// bands of every file. `bands` selects and orders bands by name (default: the
    /// first file's). Files on another grid than `target` (default: the first file's)
    /// are warped onto it.
    pub fn open(dir: &Path, bands: Option<&[String]>) -> Result<Series> {
        Self::open_folder(dir, bands, None)
    }

    /// Like [`Series::open`], aligning every file onto `target` when given (default: the
    /// first file's grid).
    pub fn open_folder(dir: &Path, bands: Option<&[String]>, target: Option<Grid>) -> Result<Series> {
        Self::open_folder_within(dir, bands, target, &DateWindow::default())
    }

    /// Like [`Series::open_folder`], reading only the dates in `window` (files outside
    /// it are not opened).
    pub fn open_folder_within(dir: &Path, bands: Option<&[String]>, target: Option<Grid>, window: &DateWindow) -> Result<Series> {
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
        if !window.is_all() {
            let found: Vec<String> = files.iter().map(|(d, _)| d.clone()).collect();
            files.retain(|(d, _)| window.contains(d));
            ensure!(!files.is_empty(), "{}", window.nothing_in(&format!("the series folder {}", dir.display()), &found));
        }

        let mut names: Option<Vec<String>> = bands.map(<[String]>::to_vec);
        let mut scenes = Vec::new();
        for (date, path) in files {
            let shown = path.display().to_string();
            let ds = open(&shown)?;
            let described: Vec<String> = (1..=ds.raster_count())
                .map(|i| ds.rasterband(i).map(|b| b.description().unwrap_or_default()))
                .collect::<gdal::errors::Result<_>>()
                .with_context(|| format!("{shown}: reading band descriptions"))?;
            let wanted = names.get_or_insert_with(|| described.clone()).clone();
            ensure!(!wanted.is_empty(), "{shown}: has no bands");
            let mut sources = Vec::new();
            for band in &wanted {
                let Some(i) = described.iter().position(|d| d == band) else {
                    bail!(
                        "{shown}: band '{band}' is missing (its bands: {})",
                        if described.iter().all(String::is_empty) { "no names".to_string() } else { described.join(", ") }
                    );
                };
                let b = ds.rasterband(i + 1)?;
                sources.push(BandSource {
                    path: shown.clone(),
                    band: i + 1,
                    scale: b.scale().unwrap_or(1.0),
                    offset: b.offset().unwrap_or(0.0),
                    nodata: b.no_data_value(),
                    resampling: Resampling::for_band(band),
                });
            }
            scenes.push(Scene { date, sources, radiometry: None });
        }
        Series::from_scenes(dir.to_path_buf(), scenes, names.unwrap_or_default(), target)
    }

    /// Checks the sources of every scene (they open, have their band, can be aligned)
    /// and fixes the grid: `target`, or the grid of the first scene's first band.
    pub fn from_scenes(origin: PathBuf, mut scenes: Vec<Scene>, bands: Vec<String>, target: Option<Grid>) -> Result<Series> {
        ensure!(!scenes.is_empty(), "{}: no acquisitions found", origin.display());
        scenes.sort_by(|a, b| a.date.cmp(&b.date));
        if let Some(w) = scenes.windows(2).find(|w| w[0].date == w[1].date) {
            bail!(
                "{}: date {} appears twice ({} and {})",
                origin.display(),
                w[0].date,
                w[0].sources[0].path,
                w[1].sources[0].path
            );
        }
        let grid = match target {
            Some(g) => g,
            None => Grid::of(&open(&scenes[0].sources[0].path)?),
        };
        // Each file's grid, and whether it overlaps the target grid (None: cannot tell).
        let mut checked: HashMap<String, (Grid, Option<bool>)> = HashMap::new();
        for scene in &scenes {
            ensure!(scene.sources.len() == bands.len(), "{}: date {} has {} bands, expected {}", origin.display(), scene.date, scene.sources.len(), bands.len());
            for (source, band) in scene.sources.iter().zip(&bands) {
                if !checked.contains_key(&source.path) {
                    let ds = open(&source.path)?;
                    let overlap = crate::reference::overlaps(&ds, &grid);
                    checked.insert(source.path.clone(), (Grid::of(&ds), overlap));
                    probe(&ds, &source.path)?;
                }
                let (ds_grid, overlap) = &checked[&source.path];
                if *overlap == Some(false) {
                    bail!(
                        "{} (date {}, band '{band}'): does not overlap the grid ({} × {} px{}): every pixel of that date would be \
                         no data; check its CRS and extent, or leave the date out of the series",
                        source.path,
                        scene.date,
                        grid.width,
                        grid.height,
                        grid.geo_transform.map_or(String::new(), |g| format!(", upper left {} {}", g[0], g[3]))
                    );
                }
                if !ds_grid.same_pixels(&grid) && !grid.projection.is_empty() && ds_grid.projection.is_empty() {
                    bail!(
                        "{} (date {}, band '{band}'): has no CRS while the grid has one, so it cannot be aligned; give the file \
                         its CRS (e.g. `gdal_edit.py -a_srs EPSG:…`)",
                        source.path,
                        scene.date
                    );
                }
                if !ds_grid.same_pixels(&grid) && (ds_grid.geo_transform.is_none() || grid.geo_transform.is_none()) {
                    bail!(
                        "{} (date {}, band '{band}'): its grid ({} x {} px) differs from the target grid ({} x {} px) and one of them has no georeferencing, so it cannot be aligned",
                        source.path,
                        scene.date,
                        ds_grid.width,
                        ds_grid.height,
                        grid.width,
                        grid.height
                    );
                }
            }
        }
        Ok(Series { origin, scenes, bands, grid })
    }

    /// The square tile size of the first source, when it is tiled (so chunks can be
    /// aligned to whole tiles); `None` for striped or untiled files.
    pub fn tile_size(&self) -> Option<usize> {
        let source = self.scenes.first()?.sources.first()?;
        let ds = Dataset::open(&source.path).ok()?;
        let (bx, by) = ds.rasterband(source.band).ok()?.block_size();
        (bx == by && bx < self.grid.width.max(self.grid.height)).then_some(bx)
    }

    /// Bytes GDAL holds per open file while reading it: one decoded tile (all bands of
    /// it for pixel-interleaved files) plus its compressed copy, counted as 8 bytes per
    /// pixel and band (f32 decoded, plus as much again), from the first date's files.
    pub fn decode_buffer_bytes(&self) -> usize {
        let Some(scene) = self.scenes.first() else { return 0 };
        let mut files: Vec<&str> = scene.sources.iter().map(|s| s.path.as_str()).collect();
        files.dedup();
        let per_date: usize = files
            .iter()
            .filter_map(|f| Dataset::open(f).ok())
            .map(|ds| {
                let Ok(band) = ds.rasterband(1) else { return 0 };
                let (bx, by) = band.block_size();
                let interleaved = ds.metadata_item("INTERLEAVE", "IMAGE_STRUCTURE").is_some_and(|i| i == "PIXEL");
                bx * by * 8 * if interleaved { ds.raster_count() } else { 1 }
            })
            .sum();
        per_date * self.scenes.len()
    }

    /// The scenes' acquisition dates (`YYYY-MM-DD`), in order.
    pub fn dates(&self) -> Vec<String> {
        self.scenes.iter().map(|s| s.date.clone()).collect()
    }

    /// Every distinct file the series reads.
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.scenes.iter().flat_map(|s| s.sources.iter().map(|b| b.path.clone())).collect();
        files.sort();
        files.dedup();
        files
    }

    /// Opens the files for reading (warping where needed); one reader per thread.
    pub fn reader(&self) -> Result<SeriesReader<'_>> {
        let mut datasets: HashMap<(String, Resampling), Aligned> = HashMap::new();
        for scene in &self.scenes {
            for source in &scene.sources {
                let key = (source.path.clone(), source.resampling);
                if datasets.contains_key(&key) {
                    continue;
                }
                let ds = Aligned::new(open(&source.path)?, &self.grid, source.resampling, source.nodata)
                    .with_context(|| format!("{}: aligning to the target grid", source.path))?;
                datasets.insert(key, ds);
            }
        }
        Ok(SeriesReader { series: self, datasets })
    }
}

/// Reads the last pixel of every band, so a truncated file fails before any output
/// is written rather than in the middle of a run.
fn probe(ds: &Dataset, path: &str) -> Result<()> {
    let (w, h) = ds.raster_size();
    for i in 1..=ds.raster_count() {
        let band = ds.rasterband(i)?;
        let mut px = [0f64; 1];
        band.read_into_slice::<f64>((w as isize - 1, h as isize - 1), (1, 1), (1, 1), &mut px, None)
            .with_context(|| format!("{path}: band {i} cannot be read (corrupt or truncated file?)"))?;
    }
    Ok(())
}

/// Open file handles of a series, for one thread.
pub struct SeriesReader<'a> {
    series: &'a Series,
    datasets: HashMap<(String, Resampling), Aligned>,
}

/// The pixels of one chunk: `dates × bands × rows × cols` and per-date validity.
pub struct ChunkData {
    /// Values as `dates × bands × rows × cols`, NaN where missing.
    pub data: Vec<f32>,
    /// `dates × rows × cols`, 1 where every band has a value; empty if all valid.
    pub valid: Vec<u8>,
}

impl SeriesReader<'_> {
    /// Reads a window of every date and band.
    pub fn read(&self, window: Window) -> Result<ChunkData> {
        let n = window.pixels();
        let bands = self.series.bands.len();
        let dates = self.series.scenes.len();
        let mut data = vec![0f32; dates * bands * n];
        for (d, scene) in self.series.scenes.iter().enumerate() {
            for (b, source) in scene.sources.iter().enumerate() {
                let out = &mut data[(d * bands + b) * n..(d * bands + b + 1) * n];
                let ds = &self.datasets[&(source.path.clone(), source.resampling)].dataset;
                let band = ds.rasterband(source.band)?;
                band.read_into_slice::<f32>(
                    (window.col as isize, window.row as isize),
                    (window.cols, window.rows),
                    (window.cols, window.rows),
                    out,
                    None,
                )
                .with_context(|| {
                    format!("{}: reading band '{}' of {} at {window}", source.path, self.series.bands[b], scene.date)
                })?;
                let (scale, offset) = (source.scale as f32, source.offset as f32);
                let identity = scale == 1.0 && offset == 0.0;
                for v in out.iter_mut() {
                    if source.nodata.is_some_and(|nd| *v as f64 == nd) {
                        *v = f32::NAN;
                    } else if !identity {
                        *v = *v * scale + offset;
                    }
                }
            }
        }
        let mut valid = vec![1u8; dates * n];
        let mut any_invalid = false;
        for d in 0..dates {
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

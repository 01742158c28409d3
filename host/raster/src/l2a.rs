//! Sentinel-2 L2A products as delivered: one file per band and resolution
//! (`T33TPS_20190119T100319_B04_10m.jp2`, `…_B11_20m.jp2`, `…_SCL_20m.jp2`, JP2 or
//! GeoTIFF, inside `.SAFE` folders or flat), digital numbers with the processing
//! baseline's offset.
//!
//! Reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE, DN 0 = no data.
//! The offset is, in this order: `boa_add_offset` when the pipeline sets it (an explicit
//! setting always wins); the product's `MTD_MSIL2A.xml`; the baseline in the product
//! name, only for an official baseline (`_N0200_` … `_N0999_`: −1000 from 04.00);
//! otherwise the run stops and asks for the setting (reprocessed products such as
//! BigEarthNet's carry `_N9999_`, which says nothing of their offset). The manifest
//! records each product's offset and where it came from. Every band is read onto one
//! grid: the pipeline's, or else the finest spectral band's of the first product (10 m
//! when it has a 10 m band; a class band such as SCL never sets it), said in the log.
//! Each band is read from the product's own file at the grid's resolution when it has
//! one, else from the closest finer file (so a coarser grid averages full-resolution
//! pixels), else from its finest; reflectance is averaged onto a coarser grid and
//! interpolated bilinearly onto a finer one, in float, and SCL is taken by nearest —
//! always from full-resolution data, never from the JPEG 2000 codestream's reduced
//! resolutions (`-ovr NONE`), which average class codes. Two products of one tile and
//! date are refused, naming both: which one to read is the operator's choice.

use super::series::{BandSource, Resampling, Scene, Series};
use super::{DateWindow, Grid, parse_date};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The ten bands most land-cover work uses (B01, B09, B10 are atmospheric).
pub const DEFAULT_BANDS: [&str; 10] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"];
/// Band ids as numbered in `MTD_MSIL2A.xml` (`band_id="0"` is B01).
const BAND_IDS: [&str; 13] = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"];

/// How to read a folder of Sentinel-2 L2A products.
#[derive(Debug, Clone, Default)]
pub struct L2aOptions {
    /// Bands to read, in order (default [`DEFAULT_BANDS`]); `SCL` may be among them.
    pub bands: Option<Vec<String>>,
    /// Only this tile (e.g. `T33TPS`), when the folder holds several.
    pub tile: Option<String>,
    /// Offset in DN when a product has neither metadata nor a baseline in its name.
    pub boa_add_offset: Option<f64>,
    /// The target grid (default: the finest band's grid of the first acquisition).
    pub grid: Option<Grid>,
    /// The acquisitions read (`[input] start`/`end`; default all).
    pub dates: DateWindow,
    /// STAC items: without `grid`, the items' grid is cropped to this area
    /// (`[west, south, east, north]` in degrees: the search's bbox or area of interest).
    pub clip: Option<[f64; 4]>,
}

/// One band file found on disk.
#[derive(Debug, Clone)]
struct BandFile {
    path: PathBuf,
    resolution_m: u32,
}

/// The parts of an L2A band file name, e.g. `T33TPS_20190119T100319_B04_10m.jp2`
/// (older products prefix `L2A_`): tile, datetime, band, resolution.
fn parse_name(name: &str) -> Option<(String, String, String, u32)> {
    let lower = name.to_ascii_lowercase();
    let stem_len = [".jp2", ".tif", ".tiff"].iter().find_map(|e| lower.strip_suffix(e).map(str::len))?;
    let stem = name[..stem_len].strip_prefix("L2A_").unwrap_or(&name[..stem_len]);
    let parts: Vec<&str> = stem.split('_').collect();
    let [tile, datetime, band, resolution] = parts.as_slice() else { return None };
    let tile_ok = tile.len() == 6 && tile.starts_with('T');
    let datetime_ok = datetime.len() == 15 && datetime.as_bytes()[8] == b'T';
    let resolution_m: u32 = resolution.strip_suffix('m')?.parse().ok()?;
    (tile_ok && datetime_ok).then(|| (tile.to_string(), datetime.to_string(), band.to_string(), resolution_m))
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

/// Offset and quantification of one product, and where they came from.
#[derive(Debug, Clone, PartialEq)]
struct Radiometry {
    /// Per band name.
    offsets: BTreeMap<String, f64>,
    default_offset: f64,
    quantification: f64,
}

impl Radiometry {
    fn offset(&self, band: &str) -> f64 {
        self.offsets.get(band).copied().unwrap_or(self.default_offset)
    }
}

/// Reads `BOA_ADD_OFFSET`, `BOA_QUANTIFICATION_VALUE` and `PROCESSING_BASELINE` from
/// the product metadata.
fn radiometry_from_metadata(xml: &Path) -> Result<Radiometry> {
    let text = std::fs::read_to_string(xml).with_context(|| format!("reading {}", xml.display()))?;
    let doc = roxmltree::Document::parse(&text).with_context(|| format!("{}: not valid XML", xml.display()))?;
    let mut offsets = BTreeMap::new();
    let mut quantification = 10_000.0;
    let mut baseline = None;
    for node in doc.descendants().filter(|n| n.is_element()) {
        let value = || node.text().map(str::trim).unwrap_or("");
        match node.tag_name().name() {
            "BOA_ADD_OFFSET" => {
                let id: usize = node.attribute("band_id").and_then(|v| v.parse().ok()).with_context(|| {
                    format!("{}: BOA_ADD_OFFSET without a valid band_id", xml.display())
                })?;
                let band = BAND_IDS.get(id).with_context(|| format!("{}: BOA_ADD_OFFSET band_id {id} is unknown", xml.display()))?;
                let v: f64 = value().parse().with_context(|| format!("{}: BOA_ADD_OFFSET '{}' is not a number", xml.display(), value()))?;
                offsets.insert(band.to_string(), v);
            }
            "BOA_QUANTIFICATION_VALUE" => {
                quantification = value()
                    .parse()
                    .with_context(|| format!("{}: BOA_QUANTIFICATION_VALUE '{}' is not a number", xml.display(), value()))?;
            }
            "PROCESSING_BASELINE" => baseline = value().parse::<f64>().ok(),
            _ => {}
        }
    }
    // Products before baseline 04.00 have no offsets in their metadata and need none.
    let default_offset = if offsets.is_empty() && baseline.is_some_and(|b| b >= 4.0) { -1000.0 } else { 0.0 };
    Ok(Radiometry { offsets, default_offset, quantification })
}

/// The baseline from a product folder name such as `S2B_MSIL2A_20190119T100319_N0211_R122_…`.
fn baseline_from_name(path: &Path) -> Option<f64> {
    path.ancestors().find_map(|p| {
        let name = p.file_name()?.to_str()?;
        if !name.contains("MSIL2A") {
            return None;
        }
        name.split('_').find_map(|part| {
            let digits = part.strip_prefix('N')?;
            (digits.len() == 4 && digits.chars().all(|c| c.is_ascii_digit()))
                .then(|| digits.parse::<f64>().ok().map(|v| v / 100.0))
                .flatten()
        })
    })
}

/// ESA's processing baselines so far run from 02.00 to 05.xx; a name outside 02.00 …
/// 09.99 (BigEarthNet's reprocessed `N9999`) says nothing of the offset.
fn official_baseline(baseline: f64) -> bool {
    (2.0..10.0).contains(&baseline)
}

/// The radiometry of a band file and where it came from (for the manifest).
fn radiometry(band_file: &Path, options: &L2aOptions) -> Result<(Radiometry, String)> {
    if let Some(offset) = options.boa_add_offset {
        return Ok((
            Radiometry { offsets: BTreeMap::new(), default_offset: offset, quantification: 10_000.0 },
            "boa_add_offset in [input]".into(),
        ));
    }
    for dir in band_file.ancestors().skip(1).take(6) {
        let xml = dir.join("MTD_MSIL2A.xml");
        if xml.exists() {
            return Ok((radiometry_from_metadata(&xml)?, format!("{}", xml.display())));
        }
    }
    match baseline_from_name(band_file) {
        Some(baseline) if official_baseline(baseline) => {
            let default_offset = if baseline >= 4.0 { -1000.0 } else { 0.0 };
            Ok((
                Radiometry { offsets: BTreeMap::new(), default_offset, quantification: 10_000.0 },
                format!("processing baseline {baseline:05.2} in the product name"),
            ))
        }
        Some(baseline) => bail!(
            "{}: the product name says processing baseline {baseline:05.2} (N{:04}), which is not one of ESA's (02.00 … 05.xx: \
             reprocessed products such as BigEarthNet's use N9999) and says nothing of its offset, and no MTD_MSIL2A.xml is \
             above it; set `boa_add_offset` in [input] (-1000 if its DNs carry the offset of baseline 04.00 and later, 0 if not)",
            band_file.display(),
            (baseline * 100.0).round() as u32
        ),
        None => bail!(
            "{}: cannot tell its processing baseline (no MTD_MSIL2A.xml above it, no _Nxxxx_ in a product folder name); \
             set `boa_add_offset` in [input] (-1000 for baseline 04.00 and later, 0 before)",
            band_file.display()
        ),
    }
}

/// The file of a band to read onto a grid of `grid_m` metre pixels: the one at the grid's
/// resolution, else the closest finer one, else the finest there is.
fn file_for_grid(candidates: &[BandFile], grid_m: f64) -> &BandFile {
    let exact = candidates.iter().find(|f| (f.resolution_m as f64 - grid_m).abs() < 1e-6);
    let finer = candidates.iter().filter(|f| (f.resolution_m as f64) < grid_m).max_by_key(|f| f.resolution_m);
    exact.or(finer).unwrap_or_else(|| candidates.iter().min_by_key(|f| f.resolution_m).expect("at least one file"))
}

/// Finds the L2A band files under `dir` and builds the series.
pub fn open_l2a(dir: &Path, options: &L2aOptions) -> Result<Series> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    // (tile, datetime) → band → files at each resolution.
    let mut products: BTreeMap<(String, String), BTreeMap<String, Vec<BandFile>>> = BTreeMap::new();
    for path in files {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some((tile, datetime, band, resolution_m)) = parse_name(name) else { continue };
        if options.tile.as_ref().is_some_and(|t| *t != tile) {
            continue;
        }
        let same = products.entry((tile.clone(), datetime.clone())).or_default().entry(band.clone()).or_default();
        if let Some(other) = same.iter().find(|f| f.resolution_m == resolution_m) {
            bail!(
                "{}: two products of tile {tile} at {datetime} (band {band} at {resolution_m} m in both): {} and {}; \
                 keep one of them in the folder (or mosaic them into one product first)",
                dir.display(),
                other.path.display(),
                path.display()
            );
        }
        same.push(BandFile { path, resolution_m });
    }
    // Two acquisitions of one tile on one day (e.g. two patches, or a product and its
    // reprocessing under another time) would be two scenes of one date.
    let mut by_date: BTreeMap<(String, String), &String> = BTreeMap::new();
    for (tile, datetime) in products.keys() {
        if let Some(other) = by_date.insert((tile.clone(), datetime[..8].to_string()), datetime) {
            bail!(
                "{}: two products of tile {tile} on {}-{}-{} ({other} and {datetime}); keep one of them in the folder \
                 (or mosaic them into one product first)",
                dir.display(),
                &datetime[0..4],
                &datetime[4..6],
                &datetime[6..8]
            );
        }
    }
    if products.is_empty() {
        bail!("{}: no Sentinel-2 L2A band files (like T33TPS_20190119T100319_B04_10m.jp2) found", dir.display());
    }
    if !options.dates.is_all() {
        let found: Vec<String> = products.keys().map(|(_, t)| format!("{}-{}-{}", &t[0..4], &t[4..6], &t[6..8])).collect();
        products.retain(|(_, t), _| options.dates.contains(&format!("{}-{}-{}", &t[0..4], &t[4..6], &t[6..8])));
        if products.is_empty() {
            let mut found = found;
            found.sort();
            bail!("{}", options.dates.nothing_in(&dir.display().to_string(), &found));
        }
    }
    let tiles: std::collections::BTreeSet<&String> = products.keys().map(|(t, _)| t).collect();
    if tiles.len() > 1 {
        let list: Vec<&str> = tiles.iter().map(|t| t.as_str()).collect();
        bail!("{}: holds several tiles ({}); choose one with `tile = \"…\"` in [input]", dir.display(), list.join(", "));
    }
    let bands: Vec<String> =
        options.bands.clone().unwrap_or_else(|| DEFAULT_BANDS.iter().map(|b| b.to_string()).collect());

    // The grid first: the pipeline's, else the finest spectral band's of the first product.
    let grid = match &options.grid {
        Some(g) => g.clone(),
        None => {
            let ((tile, datetime), first) = products.iter().next().expect("checked non-empty above");
            let spectral: Vec<&String> = bands.iter().filter(|b| Resampling::for_band(b) != Resampling::Nearest).collect();
            let candidates: Vec<&String> = if spectral.is_empty() { bands.iter().collect() } else { spectral };
            let finest = candidates
                .iter()
                .filter_map(|b| first.get(*b).and_then(|files| files.iter().min_by_key(|f| f.resolution_m)).map(|f| (f, *b)))
                .min_by_key(|(f, _)| f.resolution_m);
            let Some((file, band)) = finest else {
                let have: Vec<&str> = first.keys().map(String::as_str).collect();
                let missing = bands.iter().find(|b| !first.contains_key(*b)).unwrap_or(&bands[0]);
                bail!(
                    "{}: product {tile} of {}-{}-{} has no band {missing} (it has {})",
                    dir.display(),
                    &datetime[0..4],
                    &datetime[4..6],
                    &datetime[6..8],
                    have.join(", ")
                );
            };
            log::info!(
                "grid: {} m, the finest of the spectral bands asked in the first product ({band}, {}); set [input] grid for another",
                file.resolution_m,
                file.path.display()
            );
            let ds = gdal::Dataset::open(&file.path).with_context(|| format!("{}: cannot open with GDAL", file.path.display()))?;
            Grid::of(&ds)
        }
    };
    // The grid's pixel size in metres (L2A tiles are in UTM), to pick each band's file.
    let grid_m = grid.geo_transform.map(|g| g[1].abs()).unwrap_or(0.0);

    let mut scenes = Vec::new();
    for ((tile, datetime), by_band) in &products {
        let date = format!("{}-{}-{}", &datetime[0..4], &datetime[4..6], &datetime[6..8]);
        if parse_date(&date).is_none() {
            bail!("{}: product {tile}_{datetime} has an invalid date", dir.display());
        }
        let mut sources = Vec::new();
        let mut radiometry_record = None;
        for band in &bands {
            let Some(candidates) = by_band.get(band) else {
                let have: Vec<&str> = by_band.keys().map(String::as_str).collect();
                bail!("{}: product {tile} of {date} has no band {band} (it has {})", dir.display(), have.join(", "));
            };
            let file = file_for_grid(candidates, grid_m);
            let path = file.path.display().to_string();
            let source = if Resampling::for_band(band) == Resampling::Nearest {
                BandSource { path, band: 1, scale: 1.0, offset: 0.0, nodata: Some(0.0), resampling: Resampling::Nearest }
            } else {
                let (r, from) = radiometry(&file.path, options)?;
                if radiometry_record.is_none() {
                    radiometry_record = Some(serde_json::json!({
                        "product": format!("{tile}_{datetime}"),
                        "boa_add_offset_dn": r.offsets.values().next().copied().unwrap_or(r.default_offset),
                        "offsets_per_band": !r.offsets.is_empty(),
                        "quantification": r.quantification,
                        "from": from,
                    }));
                }
                BandSource {
                    path,
                    band: 1,
                    scale: 1.0 / r.quantification,
                    offset: r.offset(band) / r.quantification,
                    nodata: Some(0.0),
                    // Averaged onto a coarser grid, bilinear onto a finer one (warp.rs decides).
                    resampling: Resampling::Bilinear,
                }
            };
            sources.push(source);
        }
        scenes.push(Scene { date, sources, radiometry: radiometry_record });
    }
    Series::from_scenes(dir.to_path_buf(), scenes, bands, Some(grid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_file_names() {
        assert_eq!(
            parse_name("T33TPS_20190119T100319_B04_10m.jp2"),
            Some(("T33TPS".into(), "20190119T100319".into(), "B04".into(), 10))
        );
        assert_eq!(parse_name("L2A_T33UVS_20180807T101021_SCL_20m.tif").map(|p| p.2), Some("SCL".into()));
        assert_eq!(parse_name("MTD_MSIL2A.xml"), None);
        assert_eq!(parse_name("T33TPS_20190119T100319_B04.jp2"), None);
    }

    #[test]
    fn baseline_from_product_folder() {
        let p = Path::new("/x/S2B_MSIL2A_20190119T100319_N0211_R122_T33TPS_20190119T105925.SAFE/GRANULE/a/IMG_DATA/R10m/f.jp2");
        assert_eq!(baseline_from_name(p), Some(2.11));
        let p = Path::new("/x/S2A_MSIL2A_20230601T100031_N0509_R122_T33TPS_20230601T161025.SAFE/f.jp2");
        assert_eq!(baseline_from_name(p), Some(5.09));
        assert_eq!(baseline_from_name(Path::new("/x/y/f.jp2")), None);
        let p = Path::new("/x/S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_20170613T101031.SAFE/f.tif");
        assert_eq!(baseline_from_name(p), Some(99.99));
        assert!(!official_baseline(99.99) && official_baseline(5.09) && official_baseline(2.11));
    }
}

//! Sentinel-2 L2A products as delivered: one file per band and resolution
//! (`T33TPS_20190119T100319_B04_10m.jp2`, `…_B11_20m.jp2`, `…_SCL_20m.jp2`, JP2 or
//! GeoTIFF, inside `.SAFE` folders or flat), digital numbers with the processing
//! baseline's offset.
//!
//! Reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE, DN 0 = no data.
//! The offset is read from the product's `MTD_MSIL2A.xml` when present; otherwise it
//! follows from the baseline in the product name (`_N0400_` and later: −1000); otherwise
//! from `boa_add_offset` in the pipeline. Every band is read onto one grid (the finest
//! band's, 10 m, unless the pipeline names one): bilinear for reflectance, nearest for SCL.

use super::series::{BandSource, Resampling, Scene, Series};
use super::{Grid, parse_date};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The ten bands most land-cover work uses (B01, B09, B10 are atmospheric).
pub const DEFAULT_BANDS: [&str; 10] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"];
/// Band ids as numbered in `MTD_MSIL2A.xml` (`band_id="0"` is B01).
const BAND_IDS: [&str; 13] = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"];

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

fn radiometry(band_file: &Path, options: &L2aOptions) -> Result<Radiometry> {
    for dir in band_file.ancestors().skip(1).take(6) {
        let xml = dir.join("MTD_MSIL2A.xml");
        if xml.exists() {
            return radiometry_from_metadata(&xml);
        }
    }
    if let Some(baseline) = baseline_from_name(band_file) {
        let default_offset = if baseline >= 4.0 { -1000.0 } else { 0.0 };
        return Ok(Radiometry { offsets: BTreeMap::new(), default_offset, quantification: 10_000.0 });
    }
    match options.boa_add_offset {
        Some(offset) => Ok(Radiometry { offsets: BTreeMap::new(), default_offset: offset, quantification: 10_000.0 }),
        None => bail!(
            "{}: cannot tell its processing baseline (no MTD_MSIL2A.xml above it, no _Nxxxx_ in a product folder name); \
             set `boa_add_offset` in [input] (-1000 for baseline 04.00 and later, 0 before)",
            band_file.display()
        ),
    }
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
        products.entry((tile, datetime)).or_default().entry(band).or_default().push(BandFile { path, resolution_m });
    }
    if products.is_empty() {
        bail!("{}: no Sentinel-2 L2A band files (like T33TPS_20190119T100319_B04_10m.jp2) found", dir.display());
    }
    let tiles: std::collections::BTreeSet<&String> = products.keys().map(|(t, _)| t).collect();
    if tiles.len() > 1 {
        let list: Vec<&str> = tiles.iter().map(|t| t.as_str()).collect();
        bail!("{}: holds several tiles ({}); choose one with `tile = \"…\"` in [input]", dir.display(), list.join(", "));
    }
    let bands: Vec<String> =
        options.bands.clone().unwrap_or_else(|| DEFAULT_BANDS.iter().map(|b| b.to_string()).collect());

    let mut scenes = Vec::new();
    let mut finest: Option<(u32, PathBuf)> = None;
    for ((tile, datetime), by_band) in &products {
        let date = format!("{}-{}-{}", &datetime[0..4], &datetime[4..6], &datetime[6..8]);
        if parse_date(&date).is_none() {
            bail!("{}: product {tile}_{datetime} has an invalid date", dir.display());
        }
        let mut sources = Vec::new();
        for band in &bands {
            let Some(candidates) = by_band.get(band) else {
                let have: Vec<&str> = by_band.keys().map(String::as_str).collect();
                bail!("{}: product {tile} of {date} has no band {band} (it has {})", dir.display(), have.join(", "));
            };
            let file = candidates.iter().min_by_key(|f| f.resolution_m).expect("at least one file");
            if scenes.is_empty() && finest.as_ref().is_none_or(|(r, _)| file.resolution_m < *r) {
                finest = Some((file.resolution_m, file.path.clone()));
            }
            let path = file.path.display().to_string();
            let source = if band == "SCL" {
                BandSource { path, band: 1, scale: 1.0, offset: 0.0, nodata: Some(0.0), resampling: Resampling::Nearest }
            } else {
                let r = radiometry(&file.path, options)?;
                BandSource {
                    path,
                    band: 1,
                    scale: 1.0 / r.quantification,
                    offset: r.offset(band) / r.quantification,
                    nodata: Some(0.0),
                    resampling: Resampling::Bilinear,
                }
            };
            sources.push(source);
        }
        scenes.push(Scene { date, sources });
    }
    let grid = match &options.grid {
        Some(g) => g.clone(),
        None => {
            let (_, path) = finest.expect("the first scene has bands");
            let ds = gdal::Dataset::open(&path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
            Grid::of(&ds)
        }
    };
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
    }
}

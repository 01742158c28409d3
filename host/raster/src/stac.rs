//! STAC ItemCollections (a JSON file): one item per acquisition, one asset per band,
//! hrefs to local files or GDAL virtual paths.
//!
//! Assets are found by band name (`B04`), by the common names Earth Search uses
//! (`red`, `nir`, `swir16`, `scl`, …) or by `eo:bands[].name`. Radiometry comes from
//! the asset's `raster:bands` (scale, offset, nodata) when present, otherwise from the
//! item's `s2:processing_baseline` (−1000 DN from 04.00 on), with DN / 10000.
//! Relative hrefs are resolved against the JSON file; `http(s)://` becomes
//! `/vsicurl/…` and `s3://` becomes `/vsis3/…`.

use super::l2a::{DEFAULT_BANDS, L2aOptions};
use super::series::{BandSource, Resampling, Scene, Series};
use super::{Grid, parse_date};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// Earth Search (v1) asset keys of the Sentinel-2 bands.
const COMMON_NAMES: [(&str, &str); 13] = [
    ("B01", "coastal"),
    ("B02", "blue"),
    ("B03", "green"),
    ("B04", "red"),
    ("B05", "rededge1"),
    ("B06", "rededge2"),
    ("B07", "rededge3"),
    ("B08", "nir"),
    ("B8A", "nir08"),
    ("B09", "nir09"),
    ("B11", "swir16"),
    ("B12", "swir22"),
    ("SCL", "scl"),
];

fn gdal_path(href: &str, base: &Path) -> String {
    if let Some(rest) = href.strip_prefix("s3://") {
        format!("/vsis3/{rest}")
    } else if href.starts_with("http://") || href.starts_with("https://") {
        format!("/vsicurl/{href}")
    } else if let Some(rest) = href.strip_prefix("file://") {
        rest.to_string()
    } else if href.starts_with('/') {
        href.to_string()
    } else {
        base.join(href).display().to_string()
    }
}

fn find_asset<'a>(assets: &'a serde_json::Map<String, Value>, band: &str) -> Option<&'a Value> {
    if let Some(a) = assets.get(band) {
        return Some(a);
    }
    let common = COMMON_NAMES.iter().find(|(b, _)| *b == band).map(|(_, c)| *c);
    if let Some(a) = common.and_then(|c| assets.get(c)) {
        return Some(a);
    }
    assets.values().find(|a| {
        a["eo:bands"].as_array().is_some_and(|bands| bands.iter().any(|b| b["name"].as_str() == Some(band)))
    })
}

/// Opens the series an ItemCollection describes.
pub fn open_stac(file: &Path, options: &L2aOptions) -> Result<Series> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
    let Some(items) = doc["features"].as_array() else {
        bail!("{}: not a STAC ItemCollection (no \"features\" array)", file.display());
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let bands: Vec<String> =
        options.bands.clone().unwrap_or_else(|| DEFAULT_BANDS.iter().map(|b| b.to_string()).collect());
    let mut scenes = Vec::new();
    let mut outside = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let id = item["id"].as_str().map_or_else(|| format!("#{i}"), str::to_string);
        let properties = &item["properties"];
        let datetime = properties["datetime"].as_str().or(properties["start_datetime"].as_str()).unwrap_or("");
        let date = datetime.get(0..10).unwrap_or("");
        if parse_date(date).is_none() {
            bail!("{}: item {id} has no valid datetime ('{datetime}')", file.display());
        }
        if !options.dates.contains(date) {
            outside.push(date.to_string());
            continue;
        }
        let baseline: Option<f64> = properties["s2:processing_baseline"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or(properties["s2:processing_baseline"].as_f64());
        let Some(assets) = item["assets"].as_object() else {
            bail!("{}: item {id} has no assets", file.display());
        };
        let mut sources = Vec::new();
        for band in &bands {
            let Some(asset) = find_asset(assets, band) else {
                let keys: Vec<&str> = assets.keys().map(String::as_str).collect();
                bail!("{}: item {id} ({date}) has no asset for band {band} (its assets: {})", file.display(), keys.join(", "));
            };
            let Some(href) = asset["href"].as_str() else {
                bail!("{}: item {id}, band {band}: the asset has no href", file.display());
            };
            let raster = &asset["raster:bands"][0];
            let is_scl = band == "SCL";
            let (scale, offset) = if let Some(s) = raster["scale"].as_f64() {
                (s, raster["offset"].as_f64().unwrap_or(0.0))
            } else if is_scl {
                (1.0, 0.0)
            } else if let Some(b) = baseline {
                (1e-4, if b >= 4.0 { -0.1 } else { 0.0 })
            } else if let Some(o) = options.boa_add_offset {
                (1e-4, o * 1e-4)
            } else {
                bail!(
                    "{}: item {id}, band {band}: no raster:bands scale/offset and no s2:processing_baseline; \
                     set `boa_add_offset` in [input]",
                    file.display()
                );
            };
            sources.push(BandSource {
                path: gdal_path(href, base),
                band: 1,
                scale,
                offset,
                nodata: raster["nodata"].as_f64().or(Some(0.0)),
                resampling: Resampling::for_band(band),
            });
        }
        scenes.push(Scene { date: date.to_string(), sources, radiometry: None });
    }
    if scenes.is_empty() && !outside.is_empty() {
        outside.sort();
        bail!("{}", options.dates.nothing_in(&file.display().to_string(), &outside));
    }
    let grid = match &options.grid {
        Some(g) => g.clone(),
        None => finest_grid(scenes.first().map(|s| s.sources.as_slice()).unwrap_or(&[]))?,
    };
    Series::from_scenes(file.to_path_buf(), scenes, bands, Some(grid))
}

/// The grid of the finest-resolution source.
fn finest_grid(sources: &[BandSource]) -> Result<Grid> {
    let mut best: Option<Grid> = None;
    for source in sources {
        let ds = gdal::Dataset::open(&source.path).with_context(|| format!("{}: cannot open with GDAL", source.path))?;
        let grid = Grid::of(&ds);
        let res = |g: &Grid| g.geo_transform.map_or(f64::INFINITY, |t| t[1].abs());
        if best.as_ref().is_none_or(|b| res(&grid) < res(b)) {
            best = Some(grid);
        }
    }
    best.context("no bands to take a grid from")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_become_gdal_paths() {
        let base = Path::new("/data/stac");
        assert_eq!(gdal_path("s3://bucket/x/B04.tif", base), "/vsis3/bucket/x/B04.tif");
        assert_eq!(gdal_path("https://host/B04.tif", base), "/vsicurl/https://host/B04.tif");
        assert_eq!(gdal_path("./items/B04.tif", base), "/data/stac/./items/B04.tif");
        assert_eq!(gdal_path("/vsizip/a.zip/B04.tif", base), "/vsizip/a.zip/B04.tif");
        assert_eq!(gdal_path("file:///tmp/B04.tif", base), "/tmp/B04.tif");
    }
}

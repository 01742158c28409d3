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
use super::{DateWindow, Grid, parse_date};
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

/// A search of a STAC API (`[input] stac_api`).
#[derive(Debug, Clone, PartialEq)]
pub struct StacSearch {
    /// The API's landing page, e.g. `https://earth-search.aws.element84.com/v1`.
    pub url: String,
    /// The collections searched, e.g. `sentinel-2-l2a`.
    pub collections: Vec<String>,
    /// `[west, south, east, north]` in degrees (WGS 84).
    pub bbox: Option<[f64; 4]>,
    /// Or a GeoJSON geometry in WGS 84 the items must intersect (see [`aoi_geometry`]).
    pub intersects: Option<Value>,
    /// The acquisitions searched (`[input] start`/`end`).
    pub dates: DateWindow,
    /// Items whose `eo:cloud_cover` is above this (percent) are left out.
    pub max_cloud_cover: Option<f64>,
    /// At most this many items are taken (the search is refused when there are more).
    pub max_items: usize,
}

/// What a search found and kept, for the log and the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct StacFound {
    /// The ItemCollection of the items kept, sorted by date then id.
    pub items: Value,
    /// Items the API returned.
    pub returned: usize,
    /// Items left out for their cloud cover.
    pub cloudy: usize,
}

/// Searches a STAC API with rustac's client (items page by page, following `next`
/// links). The cloud cover is checked on the items returned, whatever the server
/// supports (rustac's in-memory server answers a `query` with no items at all).
pub fn search_stac(search: &StacSearch) -> Result<StacFound> {
    let shown = &search.url;
    let datetime = match (&search.dates.start, &search.dates.end) {
        (None, None) => None,
        (s, e) => Some(format!(
            "{}/{}",
            s.as_ref().map_or("..".to_string(), |s| format!("{s}T00:00:00Z")),
            e.as_ref().map_or("..".to_string(), |e| format!("{e}T23:59:59Z"))
        )),
    };
    let mut body = serde_json::json!({ "collections": search.collections, "limit": search.max_items.min(250) });
    if let Some(b) = search.bbox {
        body["bbox"] = serde_json::json!(b);
    }
    if let Some(g) = &search.intersects {
        body["intersects"] = g.clone();
    }
    if let Some(d) = datetime {
        body["datetime"] = Value::String(d);
    }
    let query: stac::api::Search = serde_json::from_value(body.clone()).with_context(|| format!("{shown}: building the search {body}"))?;
    let client = stac_io::api::BlockingClient::new(shown).with_context(|| format!("{shown}: not a STAC API address"))?;
    let pages = client.search(query).with_context(|| format!("{shown}: searching {body}"))?;
    let (mut kept, mut returned, mut cloudy) = (Vec::new(), 0usize, 0usize);
    for item in pages {
        let item = Value::Object(item.with_context(|| format!("{shown}: reading the search's results"))?);
        returned += 1;
        if returned > search.max_items {
            bail!(
                "{shown}: the search finds more than max_items = {} items; narrow it (bbox or aoi, [input] start/end, max_cloud_cover) or raise max_items",
                search.max_items
            );
        }
        if let Some(max) = search.max_cloud_cover {
            match item["properties"]["eo:cloud_cover"].as_f64() {
                Some(c) if c > max => {
                    cloudy += 1;
                    continue;
                }
                Some(_) => {}
                None => bail!(
                    "{shown}: item {} has no eo:cloud_cover, so max_cloud_cover cannot be applied to it",
                    item["id"].as_str().unwrap_or("?")
                ),
            }
        }
        kept.push(item);
    }
    let date = |i: &Value| i["properties"]["datetime"].as_str().or(i["properties"]["start_datetime"].as_str()).unwrap_or("").to_string();
    kept.sort_by(|a, b| (date(a), a["id"].as_str().unwrap_or("")).cmp(&(date(b), b["id"].as_str().unwrap_or(""))));
    Ok(StacFound { items: serde_json::json!({ "type": "FeatureCollection", "features": kept }), returned, cloudy })
}

/// The geometries of a vector file's layer (its only one), as one GeoJSON geometry in
/// WGS 84 — the area a STAC search must intersect — and its bounds
/// (`[west, south, east, north]`).
pub fn aoi_geometry(path: &Path) -> Result<(Value, [f64; 4])> {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    use gdal::vector::LayerAccess;
    let shown = path.display();
    let options = gdal::DatasetOptions { open_flags: gdal::GdalOpenFlags::GDAL_OF_VECTOR, ..Default::default() };
    let ds = gdal::Dataset::open_ex(path, options).with_context(|| format!("{shown}: cannot open as a vector dataset"))?;
    if ds.layer_count() != 1 {
        bail!("{shown}: an area of interest has one layer; this has {}", ds.layer_count());
    }
    let mut layer = ds.layer(0)?;
    let mut wgs84 = SpatialRef::from_epsg(4326)?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let transform = match layer.spatial_ref() {
        Some(mut srs) => {
            srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
            Some(CoordTransform::new(&srs, &wgs84)?)
        }
        None => None,
    };
    let mut union: Option<gdal::vector::Geometry> = None;
    for feature in layer.features() {
        let Some(g) = feature.geometry() else { continue };
        let g = match &transform {
            Some(t) => g.transform(t)?,
            None => g.clone(),
        };
        union = Some(match union {
            None => g,
            Some(u) => u.union(&g).with_context(|| format!("{shown}: joining its geometries"))?,
        });
    }
    let union = union.with_context(|| format!("{shown}: no geometry"))?;
    let e = union.envelope();
    let geometry = serde_json::from_str(&union.json()?).with_context(|| format!("{shown}: its geometry as GeoJSON"))?;
    Ok((geometry, [e.MinX, e.MinY, e.MaxX, e.MaxY]))
}

/// Opens the series an ItemCollection describes.
pub fn open_stac(file: &Path, options: &L2aOptions) -> Result<Series> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
    open_stac_items(&doc, file, options)
}

/// Opens the series of an ItemCollection read from `file` (which names it in messages;
/// relative asset hrefs are taken from its folder).
pub fn open_stac_items(doc: &Value, file: &Path, options: &L2aOptions) -> Result<Series> {
    let Some(items) = doc["features"].as_array() else {
        bail!("{}: not a STAC ItemCollection (no \"features\" array)", file.display());
    };
    if items.is_empty() {
        bail!("{}: the ItemCollection holds no item", file.display());
    }
    let base = file.parent().unwrap_or(Path::new("."));
    if items.iter().flat_map(|i| i["assets"].as_object().into_iter().flatten()).any(|(_, a)| a["href"].as_str().is_some_and(|h| h.starts_with("http"))) {
        // Assets over HTTP: GDAL reads their blocks by range requests, and must not list
        // the server's folders first.
        gdal::config::set_config_option("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")?;
    }
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
            // A multi-band asset names its bands in `eo:bands`: the band is at its position
            // there (GDAL band position + 1), with its own `raster:bands` entry.
            let position = asset["eo:bands"]
                .as_array()
                .and_then(|bands| bands.iter().position(|b| b["name"].as_str() == Some(band.as_str())))
                .unwrap_or(0);
            let raster = &asset["raster:bands"][position];
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
                band: position + 1,
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
        None => {
            let finest = finest_grid(scenes.first().map(|s| s.sources.as_slice()).unwrap_or(&[]))?;
            match options.clip {
                Some(area) => {
                    let cropped = finest.cropped_to(area).with_context(|| format!("{}: cropping the items' grid to the searched area", file.display()))?;
                    log::info!(
                        "grid: the items' finest, cropped to the searched area: {} × {} px of {} × {}; set [input] grid for another",
                        cropped.width,
                        cropped.height,
                        finest.width,
                        finest.height
                    );
                    cropped
                }
                None => finest,
            }
        }
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

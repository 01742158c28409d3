//! Reading real series with GDAL: the shared Slovenia patch (68 acquisitions of
//! NDVI and cloud products, 5 full L1C scenes) and bad folders.

use crate::common;

use sitsflow::raster::{Series, Window, chunk_grid};

#[test]
fn slovenia_series_has_its_dates_bands_and_georeferencing() {
    let dir = common::shared_data().join("slovenia-s2-eolearn/series");
    let series = Series::open(&dir, None).unwrap();
    assert_eq!(series.scenes.len(), 67, "67 files (the 68th acquisition is a same-day duplicate in series_dup/)");
    assert_eq!(series.scenes[0].date, "2015-07-11");
    assert_eq!(series.scenes.last().unwrap().date, "2017-12-22");
    assert_eq!(series.bands, ["NDVI", "CLP", "CLP_S2C"]);
    assert_eq!((series.grid.width, series.grid.height), (100, 101));
    let gt = series.grid.geo_transform.unwrap();
    // rasterio.transform.from_bounds(bbox, 100, 101) of the README's bounds.
    assert!((gt[0] - 465181.0522).abs() < 1e-3 && (gt[3] - 5080254.6335).abs() < 1e-3, "{gt:?}");
    assert!((gt[1] - 9.99479).abs() < 1e-4 && (gt[5] + 9.99745).abs() < 1e-4, "{gt:?}");
    assert!(series.grid.projection.contains("UTM zone 33N"));

    // A window read matches GDAL's own read of the same pixels.
    let reader = series.reader().unwrap();
    let window = Window { row: 40, col: 30, rows: 7, cols: 9 };
    let chunk = reader.read(window).unwrap();
    assert_eq!(chunk.data.len(), 67 * 3 * 63);
    let ds = gdal::Dataset::open(&series.scenes[10].sources[0].path).unwrap();
    let ndvi = ds.rasterband(1).unwrap().read_as::<f32>((30, 40), (9, 7), (9, 7), None).unwrap();
    let ours = &chunk.data[(10 * 3) * 63..(10 * 3 + 1) * 63];
    assert_eq!(ours, ndvi.data());
}

#[test]
fn band_selection_reads_the_full_l1c_scenes_in_the_asked_order() {
    let dir = common::shared_data().join("slovenia-s2-eolearn/l1c");
    let bands: Vec<String> = ["B08", "B04"].iter().map(|s| s.to_string()).collect();
    let series = Series::open(&dir, Some(&bands)).unwrap();
    assert_eq!(series.dates(), ["2015-07-11", "2015-07-31", "2015-08-20", "2015-08-30", "2015-09-09"]);
    let chunks = chunk_grid(series.grid.width, series.grid.height, 64);
    assert_eq!(chunks.len(), 4);
    let chunk = series.reader().unwrap().read(chunks[3]).unwrap();
    let n = chunks[3].pixels();
    assert_eq!(n, 36 * 37);
    // NDVI from the read bands equals the stored NDVI (bit-identical per the data README).
    let stored = Series::open(&common::shared_data().join("slovenia-s2-eolearn/series"), Some(&["NDVI".to_string()])).unwrap();
    let ndvi = stored.reader().unwrap().read(chunks[3]).unwrap();
    let (b08, b04) = (&chunk.data[0..n], &chunk.data[n..2 * n]);
    for p in 0..n {
        let ours = (b08[p] - b04[p]) / (b08[p] + b04[p]);
        assert!((ours - ndvi.data[p]).abs() < 1e-6, "pixel {p}: {ours} vs {}", ndvi.data[p]);
    }
}

#[test]
fn a_missing_band_names_file_and_band() {
    let dir = common::shared_data().join("slovenia-s2-eolearn/series");
    let err = Series::open(&dir, Some(&["B04".to_string()])).unwrap_err().to_string();
    assert!(err.ends_with("2015-07-11.tif: band 'B04' is missing (its bands: NDVI, CLP, CLP_S2C)"), "{err}");
}

#[test]
fn bad_file_names_and_duplicate_dates_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_data().join("slovenia-s2-eolearn/series/2015-07-11.tif");
    std::fs::copy(&src, dir.path().join("2015-07-11.tif")).unwrap();
    std::fs::copy(&src, dir.path().join("2015-02-30.tif")).unwrap();
    let err = Series::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.ends_with("2015-02-30.tif: a series file must be named YYYY-MM-DD.tif with a real date"), "{err}");
    std::fs::remove_file(dir.path().join("2015-02-30.tif")).unwrap();
    std::fs::copy(&src, dir.path().join("2015-07-11.TIF")).unwrap();
    let err = Series::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.starts_with("date 2015-07-11 appears twice"), "{err}");
}

#[test]
fn a_date_that_does_not_overlap_the_grid_is_an_error_naming_file_and_date() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_data().join("slovenia-s2-eolearn/series");
    std::fs::copy(src.join("2015-07-11.tif"), dir.path().join("2015-07-11.tif")).unwrap();
    // The next date, 100 km east of the first: it shares no pixel with the grid.
    let far = dir.path().join("2015-07-31.tif");
    std::fs::copy(src.join("2015-07-31.tif"), &far).unwrap();
    {
        let mut ds = gdal::Dataset::open_ex(&far, gdal::DatasetOptions { open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE, ..Default::default() }).unwrap();
        let mut gt = ds.geo_transform().unwrap();
        gt[0] += 100_000.0;
        ds.set_geo_transform(&gt).unwrap();
    }
    let err = format!("{:#}", Series::open(dir.path(), None).unwrap_err());
    assert!(err.contains("2015-07-31.tif (date 2015-07-31, band 'NDVI'): does not overlap the grid"), "{err}");
    assert!(err.contains("every pixel of that date would be no data"), "{err}");
    // Without a CRS the file cannot be aligned at all: refused when opened, not in the chunk phase.
    {
        let mut ds = gdal::Dataset::open_ex(&far, gdal::DatasetOptions { open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE, ..Default::default() }).unwrap();
        let mut gt = ds.geo_transform().unwrap();
        gt[0] -= 100_000.0;
        ds.set_geo_transform(&gt).unwrap();
        ds.set_projection("").unwrap();
    }
    let err = format!("{:#}", Series::open(dir.path(), None).unwrap_err());
    assert!(err.contains("2015-07-31.tif (date 2015-07-31, band 'NDVI'): has no CRS while the grid has one"), "{err}");
}

// ---- Generated Sentinel-2 L2A products and STAC items ------------------------------

use gdal::raster::{Buffer, RasterCreationOptions};
use gdal::{DriverManager, Metadata};
use std::path::Path;

const ORIGIN: (f64, f64) = (500_000.0, 5_100_000.0);

/// Writes a one-band uint16 raster in EPSG:32633 (GeoTIFF, or JPEG 2000 when `jp2`).
fn write_u16(path: &Path, size: usize, pixel_m: f64, data: Vec<u16>, jp2: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mem = DriverManager::get_driver_by_name("MEM").unwrap();
    let mut ds = mem.create_with_band_type::<u16, _>("", size, size, 1).unwrap();
    ds.set_geo_transform(&[ORIGIN.0, pixel_m, 0.0, ORIGIN.1, 0.0, -pixel_m]).unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).unwrap()).unwrap();
    let mut buffer = Buffer::new((size, size), data);
    ds.rasterband(1).unwrap().write((0, 0), (size, size), &mut buffer).unwrap();
    let (driver, options) = if jp2 {
        ("JP2OpenJPEG", RasterCreationOptions::from_iter(["REVERSIBLE=YES", "QUALITY=100"]))
    } else {
        ("GTiff", RasterCreationOptions::from_iter(["COMPRESS=DEFLATE"]))
    };
    ds.create_copy(&DriverManager::get_driver_by_name(driver).unwrap(), path, &options).unwrap();
}

/// DN of the 10 m bands: a distinct value per band and pixel, 0 (no data) at (0, 0).
fn dn10(band: usize, r: usize, c: usize) -> u16 {
    if r == 0 && c == 0 { 0 } else { (1500 + 100 * band + r * 20 + c) as u16 }
}

/// DN of the 20 m bands: a ramp along columns, for checking bilinear resampling.
fn dn20(c: usize) -> u16 {
    (3000 + 40 * c) as u16
}

const MTD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info><Product_Info><PROCESSING_BASELINE>04.00</PROCESSING_BASELINE></Product_Info>
  <Product_Image_Characteristics>
    <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
    <BOA_ADD_OFFSET_VALUES_LIST>
      BANDS
    </BOA_ADD_OFFSET_VALUES_LIST>
  </Product_Image_Characteristics></n1:General_Info>
</n1:Level-2A_User_Product>"#;

/// A product as delivered: `.SAFE/MTD_MSIL2A.xml` and `GRANULE/…/IMG_DATA/R10m|R20m/…`;
/// B11 as JPEG 2000, the rest GeoTIFF. Returns the folder holding the product.
fn make_product(root: &Path, datetime: &str, with_metadata: bool) {
    let safe = root.join(format!("S2A_MSIL2A_{datetime}_N9999_R122_T33TPS_{datetime}.SAFE"));
    let safe = if with_metadata { safe } else { root.join(format!("loose_{datetime}")) };
    let img = safe.join(format!("GRANULE/L2A_T33TPS_A000001_{datetime}/IMG_DATA"));
    for (i, band) in ["B02", "B03", "B04", "B08"].iter().enumerate() {
        let data = (0..400).map(|p| dn10(i, p / 20, p % 20)).collect();
        write_u16(&img.join(format!("R10m/T33TPS_{datetime}_{band}_10m.tif")), 20, 10.0, data, false);
    }
    for band in ["B05", "B06", "B07", "B8A", "B11", "B12"] {
        let data = (0..100).map(|p| dn20(p % 10)).collect();
        write_u16(&img.join(format!("R20m/T33TPS_{datetime}_{band}_20m.{}", if band == "B11" { "jp2" } else { "tif" })), 10, 20.0, data, band == "B11");
    }
    let scl = (0..100).map(|p| ((p / 10 + p % 10) % 11 + 1) as u16).collect();
    write_u16(&img.join(format!("R20m/T33TPS_{datetime}_SCL_20m.tif")), 10, 20.0, scl, false);
    if with_metadata {
        let bands: String = (0..13).map(|i| format!("<BOA_ADD_OFFSET band_id=\"{i}\">-1000</BOA_ADD_OFFSET>")).collect();
        std::fs::write(safe.join("MTD_MSIL2A.xml"), MTD.replace("BANDS", &bands)).unwrap();
    }
}

fn l2a_bands() -> Vec<String> {
    ["B02", "B03", "B04", "B08", "B11", "SCL"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn l2a_product_reads_to_reflectance_on_the_10m_grid() {
    let dir = tempfile::tempdir().unwrap();
    make_product(dir.path(), "20220315T100031", true);
    let options = sitsflow::raster::L2aOptions { bands: Some(l2a_bands()), ..Default::default() };
    let series = sitsflow::raster::open_l2a(dir.path(), &options).unwrap();
    assert_eq!(series.dates(), ["2022-03-15"]);
    assert_eq!((series.grid.width, series.grid.height), (20, 20));
    assert_eq!(series.grid.geo_transform.unwrap()[1], 10.0);
    let window = Window { row: 0, col: 0, rows: 20, cols: 20 };
    let chunk = series.reader().unwrap().read(window).unwrap();
    let plane = |b: usize| &chunk.data[b * 400..(b + 1) * 400];
    // 10 m bands: (DN − 1000) / 10000 exactly; DN 0 is missing.
    for (b, band) in [0usize, 1, 2, 3].iter().enumerate() {
        for p in 1..400 {
            let expected = (dn10(*band, p / 20, p % 20) as f32 - 1000.0) / 10000.0;
            assert!((plane(b)[p] - expected).abs() < 1e-6, "band {b} pixel {p}: {} vs {expected}", plane(b)[p]);
        }
        assert!(plane(b)[0].is_nan(), "DN 0 is no data");
    }
    assert_eq!(chunk.valid[0], 0, "a pixel with a missing band is not valid");
    assert_eq!(chunk.valid[1], 1);
    // B11 (20 m, JPEG 2000): bilinear onto 10 m; inside the ramp the value is exact.
    for c in 1..19 {
        let dn = 3000.0 + 40.0 * ((c as f32 + 0.5) / 2.0 - 0.5);
        let expected = (dn - 1000.0) / 10000.0;
        assert!((plane(4)[5 * 20 + c] - expected).abs() < 1e-5, "B11 col {c}: {} vs {expected}", plane(4)[5 * 20 + c]);
    }
    // SCL (20 m): nearest, classes unchanged.
    for p in 0..400 {
        let (r, c) = (p / 20 / 2, p % 20 / 2);
        assert_eq!(plane(5)[p], ((r + c) % 11 + 1) as f32, "SCL pixel {p}");
    }
}

#[test]
fn l2a_offset_comes_from_the_pipeline_when_products_do_not_say() {
    let dir = tempfile::tempdir().unwrap();
    make_product(dir.path(), "20220315T100031", false);
    let options = sitsflow::raster::L2aOptions { bands: Some(vec!["B04".into()]), ..Default::default() };
    let err = format!("{:#}", sitsflow::raster::open_l2a(dir.path(), &options).unwrap_err());
    assert!(err.contains("T33TPS_20220315T100031_B04_10m.tif: cannot tell its processing baseline"), "{err}");
    assert!(err.contains("set `boa_add_offset` in [input]"), "{err}");
    let options = sitsflow::raster::L2aOptions { bands: Some(vec!["B04".into()]), boa_add_offset: Some(0.0), ..Default::default() };
    let series = sitsflow::raster::open_l2a(dir.path(), &options).unwrap();
    let chunk = series.reader().unwrap().read(Window { row: 1, col: 1, rows: 1, cols: 1 }).unwrap();
    assert!((chunk.data[0] - dn10(2, 1, 1) as f32 / 10000.0).abs() < 1e-6);
}

#[test]
fn l2a_missing_band_names_the_product_and_band() {
    let dir = tempfile::tempdir().unwrap();
    make_product(dir.path(), "20220315T100031", true);
    let options = sitsflow::raster::L2aOptions { bands: Some(vec!["B01".into()]), ..Default::default() };
    let err = format!("{:#}", sitsflow::raster::open_l2a(dir.path(), &options).unwrap_err());
    assert!(err.contains("product T33TPS of 2022-03-15 has no band B01 (it has B02, B03, B04, B05, B06, B07, B08, B11, B12, B8A, SCL)"), "{err}");
}

#[test]
fn stac_items_read_with_their_own_radiometry() {
    let dir = tempfile::tempdir().unwrap();
    make_product(dir.path(), "20220315T100031", true);
    let img = "S2A_MSIL2A_20220315T100031_N9999_R122_T33TPS_20220315T100031.SAFE/GRANULE/L2A_T33TPS_A000001_20220315T100031/IMG_DATA";
    let asset = |band: &str, res: &str, ext: &str| format!("{img}/R{res}/T33TPS_20220315T100031_{band}_{res}.{ext}");
    let items = serde_json::json!({
        "type": "FeatureCollection",
        "features": [
            {   // Earth Search style: common names and raster:bands scale/offset.
                "type": "Feature", "id": "item-a",
                "properties": { "datetime": "2022-03-15T10:00:31Z" },
                "assets": {
                    "red": { "href": asset("B04", "10m", "tif"), "raster:bands": [{ "scale": 0.0001, "offset": -0.1, "nodata": 0 }] },
                    "nir": { "href": asset("B08", "10m", "tif"), "raster:bands": [{ "scale": 0.0001, "offset": -0.1, "nodata": 0 }] },
                    "scl": { "href": asset("SCL", "20m", "tif") }
                }
            },
            {   // Band-named assets, radiometry from the processing baseline.
                "type": "Feature", "id": "item-b",
                "properties": { "datetime": "2022-03-25T10:00:31Z", "s2:processing_baseline": "04.00" },
                "assets": {
                    "B04": { "href": asset("B04", "10m", "tif") },
                    "B08": { "href": asset("B08", "10m", "tif") },
                    "SCL": { "href": asset("SCL", "20m", "tif") }
                }
            }
        ]
    });
    let file = dir.path().join("items.json");
    std::fs::write(&file, serde_json::to_string_pretty(&items).unwrap()).unwrap();
    let bands: Vec<String> = ["B04", "B08", "SCL"].iter().map(|s| s.to_string()).collect();
    let options = sitsflow::raster::L2aOptions { bands: Some(bands), ..Default::default() };
    let series = sitsflow::raster::open_stac(&file, &options).unwrap();
    assert_eq!(series.dates(), ["2022-03-15", "2022-03-25"]);
    assert_eq!((series.grid.width, series.grid.height), (20, 20), "the finest band's grid");
    let chunk = series.reader().unwrap().read(Window { row: 2, col: 3, rows: 1, cols: 1 }).unwrap();
    let b04 = (dn10(2, 2, 3) as f32 - 1000.0) / 10000.0;
    let b08 = (dn10(3, 2, 3) as f32 - 1000.0) / 10000.0;
    // date × band × 1 pixel
    assert!((chunk.data[0] - b04).abs() < 1e-6 && (chunk.data[1] - b08).abs() < 1e-6, "{:?}", chunk.data);
    assert!((chunk.data[3] - b04).abs() < 1e-6 && (chunk.data[4] - b08).abs() < 1e-6, "{:?}", chunk.data);
    assert_eq!(chunk.data[2], ((1 + 1) % 11 + 1) as f32, "SCL nearest from 20 m");
}

// ---- Reference maps -----------------------------------------------------------------

#[test]
fn corine_like_map_in_wgs84_is_reprojected_onto_utm_by_mode() {
    let dir = tempfile::tempdir().unwrap();
    // A 1 km × 1 km UTM 33N grid centred on the zone's central meridian (15° E).
    let spec = sitsflow::raster::GridSpec {
        crs: "EPSG:32633".into(),
        bounds: [499_500.0, 5_099_000.0, 500_500.0, 5_100_000.0],
        resolution: 10.0,
    };
    let grid = spec.to_grid().unwrap();
    // The reference in EPSG:4326: CLC 311 (broad-leaved) west of 15° E, 312 (coniferous)
    // east of it, at 0.0002° (about 15 m × 22 m), with a no-data strip at the north.
    let (lon0, lat1, step, w, h) = (14.99, 46.06, 0.0002, 100usize, 100usize);
    let data: Vec<u16> = (0..w * h)
        .map(|p| {
            let (r, c) = (p / w, p % w);
            let lon = lon0 + (c as f64 + 0.5) * step;
            if r < 2 { 0 } else if lon < 15.0 { 311 } else { 312 }
        })
        .collect();
    let path = dir.path().join("clc4326.tif");
    let mem = DriverManager::get_driver_by_name("MEM").unwrap();
    let mut ds = mem.create_with_band_type::<u16, _>("", w, h, 1).unwrap();
    ds.set_geo_transform(&[lon0, step, 0.0, lat1, 0.0, -step]).unwrap();
    let mut wgs84 = gdal::spatial_ref::SpatialRef::from_epsg(4326).unwrap();
    wgs84.set_axis_mapping_strategy(gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder);
    ds.set_spatial_ref(&wgs84).unwrap();
    ds.rasterband(1).unwrap().set_no_data_value(Some(0.0)).unwrap();
    ds.rasterband(1).unwrap().write((0, 0), (w, h), &mut Buffer::new((w, h), data)).unwrap();
    ds.create_copy(&DriverManager::get_driver_by_name("GTiff").unwrap(), &path, &RasterCreationOptions::default()).unwrap();

    let nomenclature = sitsflow::config::Nomenclature::load(&common::workspace().join("configs/nomenclature/clc-to-seed001.toml")).unwrap();
    let reference = sitsflow::raster::ReferenceMap::open(&path, &grid).unwrap();
    let mut unmapped = std::collections::BTreeMap::new();
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let labels = reference.read(window, &nomenclature.lookup(), &mut unmapped).unwrap();
    assert!(unmapped.is_empty(), "{unmapped:?}");
    // Broadleaves (7) west of the central meridian, conifers (8) east; allow the
    // boundary column.
    let mut wrong = 0;
    for (p, label) in labels.iter().enumerate() {
        let c = p % grid.width;
        let expected = if c < 50 { 7 } else { 8 };
        if *label != expected && c != 49 && c != 50 {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "pixels off the expected class");
}

// ---- Outputs ------------------------------------------------------------------------

fn gdalinfo(path: &Path) -> String {
    let out = std::process::Command::new("gdalinfo").arg(path).output().expect("gdalinfo (gdal-bin, installed by scripts/setup.sh)");
    assert!(out.status.success(), "gdalinfo failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn class_maps_are_cogs_with_colour_table_names_and_overviews() {
    let dir = tempfile::tempdir().unwrap();
    let grid = sitsflow::raster::GridSpec { crs: "EPSG:32633".into(), bounds: [500_000.0, 5_093_000.0, 507_000.0, 5_100_000.0], resolution: 10.0 }
        .to_grid()
        .unwrap();
    let labels: Vec<u16> = (0..grid.width * grid.height).map(|p| ((p / grid.width / 100 + p % grid.width / 100) % 3 + 1) as u16).collect();
    let style = sitsflow::raster::ClassStyle {
        classes: vec![(1, "Artificial".into(), "#e6004d".into()), (2, "Grass".into(), "#ccf24d".into()), (3, "Crops".into(), "#ffe64d".into())],
    };
    let path = dir.path().join("map.tif");
    sitsflow::raster::write_class_map(&path, &grid, "class", labels, &style).unwrap();
    let info = gdalinfo(&path);
    assert!(info.contains("LAYOUT=COG"), "{info}");
    assert!(info.contains("COMPRESSION=DEFLATE"), "{info}");
    assert!(info.contains("Overviews: "), "{info}");
    assert!(info.contains("Color Table (RGB"), "{info}");
    assert!(info.contains("      1: Artificial") && info.contains("      3: Crops"), "{info}");
    assert!(info.contains("1: 230,0,77,255"), "{info}");
    // Only the finished file (and its metadata sidecar) carry the final name.
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["map.tif", "map.tif.aux.xml"]);
    let ds = gdal::Dataset::open(&path).unwrap();
    assert_eq!(ds.rasterband(1).unwrap().description().unwrap(), "class");
}

// ---- Labelled samples -----------------------------------------------------------------

#[test]
fn formosat2_samples_read_with_labels_groups_and_149_dates() {
    let dir = common::shared_data().join("formosat2-tempcnn");
    let train = sitsflow::samples::Samples::read_csv(&dir.join("train.csv")).unwrap();
    let test = sitsflow::samples::Samples::read_csv(&dir.join("test.csv")).unwrap();
    assert_eq!((train.len(), test.len()), (260, 260));
    assert_eq!(train.features.len(), 447);
    assert_eq!(train.bands(), ["NIR", "R", "G"]);
    assert_eq!(train.dates().len(), 149);
    assert_eq!(train.dates()[0], "t000");
    let counts = train.class_counts();
    assert_eq!(counts.len(), 13);
    assert!(counts.values().all(|&n| n == 20), "{counts:?}");
    // Train and test share no parcel (the data README says so).
    let groups: std::collections::BTreeSet<_> = train.groups.as_ref().unwrap().iter().collect();
    assert!(test.groups.as_ref().unwrap().iter().all(|g| !groups.contains(g)));
    assert!(train.data.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_samples_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("samples.csv");
    std::fs::write(&file, "label,group,B04@2020-01-01,B08@2020-01-01\nwheat,1,0.1,0.3\ncorn,2,0.2,x\n").unwrap();
    let err = sitsflow::samples::Samples::read_csv(&file).unwrap_err().to_string();
    assert!(err.ends_with("samples.csv:3:4: 'x' is not a number (B08@2020-01-01)"), "{err}");
    std::fs::write(&file, "label,B04@2020-13-01\nwheat,0.1\n").unwrap();
    let err = format!("{:#}", sitsflow::samples::Samples::read_csv(&file).unwrap_err());
    assert!(err.ends_with("samples.csv:1: column 2 'B04@2020-13-01': expected BAND@YYYY-MM-DD or BAND@t000"), "{err}");
    std::fs::write(&file, "label,B04@2020-01-01\nwheat,\n").unwrap();
    let s = sitsflow::samples::Samples::read_csv(&file).unwrap();
    assert!(s.data[0].is_nan(), "empty is missing");
}

/// Regression guard: a truncated file (an interrupted download) must fail when the
/// series is opened, naming the file, not in the middle of a run.
#[test]
fn a_truncated_file_is_refused_when_the_series_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_data().join("slovenia-s2-eolearn/l1c");
    for name in ["2015-07-11.tif", "2015-07-31.tif"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let victim = dir.path().join("2015-07-31.tif");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = format!("{:#}", Series::open(dir.path(), None).unwrap_err());
    assert!(err.contains("2015-07-31.tif"), "{err}");
    assert!(err.contains("cannot be read (corrupt or truncated file?)") || err.contains("cannot open with GDAL"), "{err}");
}

// ---- A real L2A product as ESA delivers it (SAFE, JPEG 2000, 60 m bands) -----------

/// The shared T29UNU product's SAFE folder.
fn t29unu() -> std::path::PathBuf {
    common::shared_data().join("s2-l2a-safe-t29unu")
}

/// A window of a file's first band, as raw values.
fn raw_window(path: &Path, row: usize, col: usize, rows: usize, cols: usize) -> Vec<u16> {
    let ds = gdal::Dataset::open(path).unwrap();
    ds.rasterband(1).unwrap().read_as::<u16>((col as isize, row as isize), (cols, rows), (cols, rows), None).unwrap().data().to_vec()
}

fn img_data() -> std::path::PathBuf {
    let granule = std::fs::read_dir(t29unu().join("S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE/GRANULE"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    granule.join("IMG_DATA")
}

#[test]
fn a_real_l2a_product_is_read_on_its_60m_grid_from_its_own_files() {
    let options = sitsflow::raster::L2aOptions {
        bands: Some(["B01", "B04", "B8A", "SCL"].map(String::from).to_vec()),
        ..Default::default()
    };
    let series = sitsflow::raster::open_l2a(&t29unu(), &options).unwrap();
    // No band asked is finer than 60 m: the grid is the product's 60 m one, not SCL's 20 m.
    assert_eq!((series.grid.width, series.grid.height), (1830, 1830));
    assert_eq!(series.grid.geo_transform.unwrap()[1], 60.0);
    let (row, col, side) = (900, 700, 64);
    let chunk = series.reader().unwrap().read(Window { row, col, rows: side, cols: side }).unwrap();
    let n = side * side;
    let plane = |band: usize| &chunk.data[band * n..(band + 1) * n];
    let r60 = img_data().join("R60m");
    // Reflectance = (DN − 1000) / 10000 (MTD_MSIL2A.xml, baseline 04.00), DN 0 = no data.
    for (b, name) in ["B01", "B04", "B8A"].iter().enumerate() {
        let dn = raw_window(&r60.join(format!("T29UNU_20221005T115411_{name}_60m.jp2")), row, col, side, side);
        for (p, (&d, &v)) in dn.iter().zip(plane(b)).enumerate() {
            if d == 0 {
                assert!(v.is_nan(), "{name} pixel {p}: DN 0 is no data");
            } else {
                let expected = (d as f64 - 1000.0) / 10000.0;
                assert!((v as f64 - expected).abs() < 1e-6, "{name} pixel {p}: {v} vs (DN {d} − 1000) / 10000");
            }
        }
    }
    // SCL comes from the product's own 60 m file, codes untouched: 0 … 11 only.
    let scl60 = raw_window(&r60.join("T29UNU_20221005T115411_SCL_60m.jp2"), row, col, side, side);
    for (p, (&code, &v)) in scl60.iter().zip(plane(3)).enumerate() {
        let v = if v.is_nan() { 0.0 } else { v };
        assert_eq!(v, code as f32, "SCL pixel {p}");
    }
    assert!(plane(3).iter().all(|v| v.is_nan() || *v <= 11.0), "no SCL code beyond 11");
}

#[cfg(unix)]
#[test]
fn scl_read_from_20m_onto_a_60m_grid_is_nearest_on_full_resolution_data() {
    // The product without its SCL_60m: the 20 m SCL must be taken by nearest from its
    // full-resolution pixels (the JPEG 2000's reduced resolutions would average codes).
    let copy = tempfile::tempdir().unwrap();
    fn mirror(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                mirror(&path, &target);
            } else if !path.to_string_lossy().ends_with("_SCL_60m.jp2") {
                std::os::unix::fs::symlink(&path, &target).unwrap();
            }
        }
    }
    mirror(&t29unu(), copy.path());
    let options = sitsflow::raster::L2aOptions { bands: Some(["B01", "SCL"].map(String::from).to_vec()), ..Default::default() };
    let series = sitsflow::raster::open_l2a(copy.path(), &options).unwrap();
    assert_eq!(series.grid.geo_transform.unwrap()[1], 60.0, "the grid is B01's, not SCL's 20 m");
    let (row, col, side) = (600, 600, 48);
    let chunk = series.reader().unwrap().read(Window { row, col, rows: side, cols: side }).unwrap();
    let scl = &chunk.data[side * side..2 * side * side];
    let scl20 = raw_window(&img_data().join("R20m/T29UNU_20221005T115411_SCL_20m.jp2"), 3 * row, 3 * col, 3 * side, 3 * side);
    let mut differ = 0;
    for r in 0..side {
        for c in 0..side {
            // GDAL's nearest: the 20 m pixel under the 60 m pixel's centre.
            let expected = scl20[(3 * r + 1) * 3 * side + 3 * c + 1] as f32;
            let got = if scl[r * side + c].is_nan() { 0.0 } else { scl[r * side + c] };
            differ += (got != expected) as usize;
        }
    }
    assert_eq!(differ, 0, "{differ} of {} SCL pixels are not their 20 m centre pixel's code", side * side);
    assert!(scl.iter().all(|v| v.is_nan() || *v <= 11.0), "no SCL code beyond 11");
}

#[test]
fn ndvi_of_the_real_product_at_60m_uses_b8a_and_never_leaves_its_range() {
    let dir = common::project_dir();
    let pipeline = format!(
        "schema = 1\nname = \"t29unu\"\n[input]\nl2a = {:?}\nbands = [\"B04\", \"B8A\", \"SCL\"]\n\
         [[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\n\
         [[stage]]\nid = \"ndvi\"\nplugin = \"indices@0.1.0\"\nparams = {{ indices = [\"NDVI\"], nir = \"B8A\" }}\n",
        t29unu().display().to_string()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let run = |args: &[&str]| common::sitsflow_command(dir.path()).args(args).output().unwrap();
    assert!(run(&["--quiet", "plugins", "lock", "pipeline.toml"]).status.success());
    let out = run(&["run", "pipeline.toml"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("grid: 60 m, the finest of the spectral bands asked in the first product (B04"), "{log}");
    // Negative reflectance (DN under the offset) is masked where it would push NDVI out of range, and said.
    assert!(log.contains("indices outside [-1, 1] masked (from negative reflectance), pixel-dates per index: NDVI "), "{log}");
    let ds = gdal::Dataset::open(dir.path().join("runs/t29unu/ndvi.tif")).unwrap();
    assert_eq!(ds.raster_size(), (1830, 1830));
    let ndvi = ds.rasterband(1).unwrap().read_as::<f32>((0, 0), (1830, 1830), (1830, 1830), None).unwrap();
    let finite: Vec<f32> = ndvi.data().iter().copied().filter(|v| v.is_finite()).collect();
    assert!(finite.len() > 500_000, "{} finite values (the product is 60 % cloud)", finite.len());
    assert!(finite.iter().all(|v| (-1.0..=1.0).contains(v)), "NDVI within [-1, 1]");
}

// ---- A pipeline on L2A products: SCL cloud mask, then NDVI ---------------------------

#[test]
fn l2a_pipeline_masks_clouds_from_scl_before_ndvi() {
    let project = common::project_dir();
    make_product(&project.path().join("products"), "20220315T100031", true);
    let pipeline = "schema = 1\nname = \"l2a\"\n\n[input]\nl2a = \"products\"\nbands = [\"B04\", \"B08\", \"SCL\"]\n\n[run]\nchunk_size = 16\n\n\
        [[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\nparams = { classes = [\"cloud-high\", \"cloud-shadow\"] }\n\n\
        [[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = { a = \"B08\", b = \"B04\", name = \"NDVI\" }\n";
    std::fs::write(project.path().join("pipeline.toml"), pipeline).unwrap();
    let exe = env!("CARGO_BIN_EXE_sitsflow");
    for args in [&["--quiet", "plugins", "lock", "pipeline.toml"][..], &["--quiet", "run", "pipeline.toml"][..]] {
        let out = std::process::Command::new(exe)
            .args(args)
            .current_dir(project.path())
            .env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let run = project.path().join("runs/l2a");
    let read = |name: &str| -> Vec<f32> {
        let ds = gdal::Dataset::open(run.join(name)).unwrap();
        ds.rasterband(1).unwrap().read_as::<f32>((0, 0), (20, 20), (20, 20), None).unwrap().data().to_vec()
    };
    let (mask, ndvi) = (read("clouds.tif"), read("ndvi.tif"));
    for p in 0..400 {
        // make_product's SCL (20 m, nearest onto 10 m): class (r/2 + c/2) % 11 + 1.
        let scl = ((p / 20 / 2 + p % 20 / 2) % 11 + 1) as u8;
        let expected = match scl {
            9 => 1,
            3 => 2,
            _ => 0,
        };
        assert_eq!(mask[p] as u8, expected, "mask at pixel {p} (SCL {scl})");
        if expected != 0 || p == 0 {
            assert!(ndvi[p].is_nan(), "pixel {p}: masked or missing gives NaN NDVI, got {}", ndvi[p]);
        } else {
            let (b04, b08) = ((dn10(2, p / 20, p % 20) as f32 - 1000.0) / 1e4, (dn10(3, p / 20, p % 20) as f32 - 1000.0) / 1e4);
            assert!((ndvi[p] - (b08 - b04) / (b08 + b04)).abs() < 1e-6, "pixel {p}");
        }
    }
}

/// On the real Slovenia series (NDVI and cloud products only), the indices stage uses
/// the stored NDVI, skips what needs absent bands, and its unmasked temporal maximum
/// matches eo-learn's MAX_NDVI oracle.
#[test]
fn slovenia_max_ndvi_matches_the_eolearn_oracle() {
    let project = common::project_dir();
    let series = common::shared_data().join("slovenia-s2-eolearn/series");
    let pipeline = format!(
        "schema = 1\nname = \"slovenia\"\n\n[input]\nseries = {:?}\n\n[run]\nchunk_size = 64\n\n\
         [[stage]]\nid = \"stats\"\nplugin = \"indices@0.1.0\"\nparams = {{ indices = [\"NDVI\", \"MNDWI\"], per_date = false, stats = [\"max\", \"count\"], on_missing = \"skip\" }}\n",
        series.display().to_string()
    );
    std::fs::write(project.path().join("pipeline.toml"), pipeline).unwrap();
    let exe = env!("CARGO_BIN_EXE_sitsflow");
    let mut log = String::new();
    for args in [&["--quiet", "plugins", "lock", "pipeline.toml"][..], &["run", "pipeline.toml"][..]] {
        let out = std::process::Command::new(exe)
            .args(args)
            .current_dir(project.path())
            .env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(log.contains("indices skipped: MNDWI needs B03, B11 but the cube has no B03, B11"), "{log}");
    let stats = gdal::Dataset::open(project.path().join("runs/slovenia/stats.tif")).unwrap();
    assert_eq!(stats.rasterband(1).unwrap().description().unwrap(), "NDVI:max");
    let ours = stats.rasterband(1).unwrap().read_as::<f32>((0, 0), (100, 101), (100, 101), None).unwrap();
    let count = stats.rasterband(2).unwrap().read_as::<f32>((0, 0), (100, 101), (100, 101), None).unwrap();
    let oracle = gdal::Dataset::open(common::shared_data().join("slovenia-s2-eolearn/max_ndvi.tif")).unwrap();
    let oracle = oracle.rasterband(1).unwrap().read_as::<f32>((0, 0), (100, 101), (100, 101), None).unwrap();
    // The oracle is over 68 acquisitions; series/ holds 67 (the 68th, a second one on
    // 2015-12-08, is in series_dup/), so ours may only be lower, and rarely is.
    let mut equal = 0;
    for (a, b) in ours.data().iter().zip(oracle.data()) {
        assert!(*a <= *b + 1e-6, "our max {a} above the oracle's {b}");
        if (a - b).abs() < 1e-6 {
            equal += 1;
        }
    }
    assert!(equal * 100 >= 99 * ours.data().len(), "{equal} of {} pixels equal", ours.data().len());
    assert!(count.data().iter().all(|c| *c == 67.0), "no masking: every date counts");
}

/// A two-band (`B04`, `SCL`) `YYYY-MM-DD.tif` of a series folder, `size` px of `pixel_m`.
fn write_series_date(path: &Path, size: usize, pixel_m: f64, b04: Vec<u16>, scl: Vec<u16>) {
    let mem = DriverManager::get_driver_by_name("MEM").unwrap();
    let mut ds = mem.create_with_band_type::<u16, _>("", size, size, 2).unwrap();
    ds.set_geo_transform(&[ORIGIN.0, pixel_m, 0.0, ORIGIN.1, 0.0, -pixel_m]).unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).unwrap()).unwrap();
    for (i, (name, data)) in [("B04", b04), ("SCL", scl)].into_iter().enumerate() {
        let mut band = ds.rasterband(i + 1).unwrap();
        band.set_description(name).unwrap();
        band.write((0, 0), (size, size), &mut Buffer::new((size, size), data)).unwrap();
    }
    ds.create_copy(&DriverManager::get_driver_by_name("GTiff").unwrap(), path, &RasterCreationOptions::from_iter(["COMPRESS=DEFLATE"])).unwrap();
}

/// A date on a coarser grid is warped onto the series' grid: bilinear for reflectance,
/// nearest for the scene classification (averaging class codes invents classes).
#[test]
fn a_date_on_another_resolution_warps_scl_by_nearest_and_reflectance_bilinearly() {
    let dir = tempfile::tempdir().unwrap();
    let fine = 20;
    let n = fine * fine;
    write_series_date(&dir.path().join("2020-01-01.tif"), fine, 10.0, vec![1000; n], vec![4; n]);
    // 20 m: SCL codes 4 (vegetation) and 9 (cloud, high probability) side by side, B04 a ramp.
    let coarse = fine / 2;
    let scl: Vec<u16> = (0..coarse * coarse).map(|p| if (p / coarse + p % coarse) % 2 == 0 { 4 } else { 9 }).collect();
    let b04: Vec<u16> = (0..coarse * coarse).map(|p| 1000 + 100 * (p % coarse) as u16).collect();
    write_series_date(&dir.path().join("2020-01-02.tif"), coarse, 20.0, b04, scl.clone());
    let series = Series::open(dir.path(), None).unwrap();
    assert_eq!((series.grid.width, series.grid.height), (fine, fine));
    let chunk = series.reader().unwrap().read(Window { row: 0, col: 0, rows: fine, cols: fine }).unwrap();
    let plane = |date: usize, band: usize| &chunk.data[(date * 2 + band) * n..(date * 2 + band + 1) * n];
    for p in 0..n {
        let (r, c) = (p / fine, p % fine);
        assert_eq!(plane(1, 1)[p], scl[(r / 2) * coarse + c / 2] as f32, "SCL at ({r}, {c}) is its 20 m pixel's class");
    }
    let b04 = plane(1, 0);
    let between = b04.iter().filter(|v| (v.round() as i64 - 1000) % 100 != 0).count();
    assert!(between > 0, "reflectance is interpolated between 20 m pixels");
}

#[test]
fn a_date_window_keeps_or_leaves_out_a_real_l2a_product_and_says_what_it_found() {
    let window = |start: &str, end: &str| sitsflow::raster::DateWindow { start: Some(start.into()), end: Some(end.into()) };
    let options = |dates| sitsflow::raster::L2aOptions { bands: Some(vec!["B01".into()]), dates, ..Default::default() };
    let series = sitsflow::raster::open_l2a(&t29unu(), &options(window("2022-10-05", "2022-10-05"))).unwrap();
    assert_eq!(series.dates(), ["2022-10-05"], "both ends are included");
    let err = format!("{:#}", sitsflow::raster::open_l2a(&t29unu(), &options(window("2023-01-01", "2023-12-31"))).unwrap_err());
    assert!(
        err.ends_with("no acquisition in the window [input] start/end = 2023-01-01 … 2023-12-31; its only acquisition is of 2022-10-05"),
        "{err}"
    );
}

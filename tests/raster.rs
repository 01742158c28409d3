//! Reading real series with GDAL: the shared Slovenia patch (68 acquisitions of
//! NDVI and cloud products, 5 full L1C scenes) and bad folders.

mod common;

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

//! What a new operator runs into with products and files from outside this project:
//! L2A offsets and duplicate products, float resampling, the messages of a run and of
//! `eval`, run directories that would overwrite inputs, `train` outside the checkout,
//! the shipped active-learning pipeline, the cloud mask's class names and what
//! `plugins inspect` says of a stage's halo.

use crate::common;
use crate::faults::text;

use gdal::raster::Buffer;
use gdal::{DriverManager, raster::RasterCreationOptions};
use sitsflow::raster::Window;
use std::path::Path;
use std::process::Output;

fn sitsflow(args: &[&str], cwd: &Path) -> Output {
    common::sitsflow_command(cwd).args(args).output().expect("running sitsflow")
}

/// A one-band u16 GeoTIFF of `size`² px at `res` m over a fixed UTM 33N origin.
fn write_u16(path: &Path, size: usize, res: f64, data: Vec<u16>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type_with_options::<u16, _>(path, size, size, 1, &RasterCreationOptions::new()).unwrap();
    ds.set_geo_transform(&[500000.0, res, 0.0, 5100000.0, 0.0, -res]).unwrap();
    ds.set_projection(&gdal::spatial_ref::SpatialRef::from_epsg(32633).unwrap().to_wkt().unwrap()).unwrap();
    let mut band = ds.rasterband(1).unwrap();
    band.write((0, 0), (size, size), &mut Buffer::new((size, size), data)).unwrap();
}

const MTD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info><Product_Info><PROCESSING_BASELINE>04.00</PROCESSING_BASELINE></Product_Info>
  <Product_Image_Characteristics>
    <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
    <BOA_ADD_OFFSET_VALUES_LIST>BANDS</BOA_ADD_OFFSET_VALUES_LIST>
  </Product_Image_Characteristics></n1:General_Info>
</n1:Level-2A_User_Product>"#;

/// A product `S2A_MSIL2A_<datetime>_<baseline>_…SAFE` under `root` with B04 at 10 m
/// (DN 2000 + c) and B12 at 20 m (a ramp of 3 DN per 20 m column, so bilinear values
/// fall between integers), with or without its metadata.
fn product(root: &Path, datetime: &str, baseline: &str, metadata: bool) {
    let safe = root.join(format!("S2A_MSIL2A_{datetime}_{baseline}_R122_T33TPS_{datetime}.SAFE"));
    let img = safe.join(format!("GRANULE/L2A_T33TPS_A000001_{datetime}/IMG_DATA"));
    write_u16(&img.join(format!("R10m/T33TPS_{datetime}_B04_10m.tif")), 20, 10.0, (0..400).map(|p| 2000 + (p % 20) as u16).collect());
    write_u16(&img.join(format!("R20m/T33TPS_{datetime}_B12_20m.tif")), 10, 20.0, (0..100).map(|p| 3000 + 3 * (p % 10) as u16).collect());
    if metadata {
        let bands: String = (0..13).map(|i| format!("<BOA_ADD_OFFSET band_id=\"{i}\">-1000</BOA_ADD_OFFSET>")).collect();
        std::fs::write(safe.join("MTD_MSIL2A.xml"), MTD.replace("BANDS", &bands)).unwrap();
    }
}

fn options(offset: Option<f64>) -> sitsflow::raster::L2aOptions {
    sitsflow::raster::L2aOptions { bands: Some(vec!["B04".into(), "B12".into()]), boa_add_offset: offset, ..Default::default() }
}

#[test]
fn l2a_offsets_an_explicit_setting_wins_and_n9999_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    product(dir.path(), "20170613T101031", "N9999", false);
    // A reprocessed product's N9999 says nothing: the run asks instead of guessing −1000.
    let err = format!("{:#}", sitsflow::raster::open_l2a(dir.path(), &options(None)).unwrap_err());
    assert!(err.contains("processing baseline 99.99 (N9999), which is not one of ESA's"), "{err}");
    assert!(err.contains("set `boa_add_offset` in [input]"), "{err}");
    let series = sitsflow::raster::open_l2a(dir.path(), &options(Some(0.0))).unwrap();
    let record = series.scenes[0].radiometry.clone().unwrap();
    assert_eq!((record["boa_add_offset_dn"].as_f64(), record["from"].as_str()), (Some(0.0), Some("boa_add_offset in [input]")));
    let chunk = series.reader().unwrap().read(Window { row: 0, col: 0, rows: 20, cols: 20 }).unwrap();
    assert!((chunk.data[5] - 0.2005).abs() < 1e-6, "DN 2005 without offset: {}", chunk.data[5]);

    // With its metadata (−1000), the metadata is used unless the pipeline says otherwise.
    let dir = tempfile::tempdir().unwrap();
    product(dir.path(), "20230601T100031", "N0509", true);
    let series = sitsflow::raster::open_l2a(dir.path(), &options(None)).unwrap();
    let record = series.scenes[0].radiometry.clone().unwrap();
    assert_eq!(record["boa_add_offset_dn"].as_f64(), Some(-1000.0));
    assert!(record["from"].as_str().unwrap().ends_with("MTD_MSIL2A.xml"), "{record}");
    let chunk = series.reader().unwrap().read(Window { row: 0, col: 0, rows: 20, cols: 20 }).unwrap();
    assert!((chunk.data[5] - 0.1005).abs() < 1e-6, "{}", chunk.data[5]);
    // B12: bilinear in float, so a value between two DNs stays between them.
    for c in 1..19 {
        let dn = 3000.0 + 3.0 * ((c as f64 + 0.5) / 2.0 - 0.5);
        let got = chunk.data[400 + 5 * 20 + c] as f64;
        assert!((got - (dn - 1000.0) / 10000.0).abs() < 2e-6, "B12 col {c}: {got} vs DN {dn}");
    }
    let series = sitsflow::raster::open_l2a(dir.path(), &options(Some(0.0))).unwrap();
    let chunk = series.reader().unwrap().read(Window { row: 0, col: 0, rows: 1, cols: 20 }).unwrap();
    assert!((chunk.data[5] - 0.2005).abs() < 1e-6, "the explicit setting wins over the metadata: {}", chunk.data[5]);
}

#[test]
fn two_products_of_one_tile_and_date_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    product(&dir.path().join("a"), "20230601T100031", "N0509", true);
    product(&dir.path().join("b"), "20230601T100031", "N0509", true);
    let err = format!("{:#}", sitsflow::raster::open_l2a(dir.path(), &options(None)).unwrap_err());
    assert!(err.contains("two products of tile T33TPS at 20230601T100031") && err.contains("/a/") && err.contains("/b/"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    product(dir.path(), "20230601T100031", "N0509", true);
    product(dir.path(), "20230601T113000", "N0509", true);
    let err = format!("{:#}", sitsflow::raster::open_l2a(dir.path(), &options(None)).unwrap_err());
    assert!(err.contains("two products of tile T33TPS on 2023-06-01 (20230601T100031 and 20230601T113000)"), "{err}");
}

/// A small pipeline over the small demo: NDVI statistics only.
fn ndvi_pipeline(output: &str, extra: &str) -> String {
    format!(
        "schema = 1\nname = \"ops\"\n[input]\nseries = {:?}\n{extra}\n[output]\ndir = {output:?}\n[plugins]\ndir = \"plugins\"\n\
         [[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = {{ a = \"B08\", b = \"B04\" }}\n",
        common::small_demo().join("series")
    )
}

fn project(pipeline: &str) -> tempfile::TempDir {
    let dir = common::project_dir();
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

#[test]
fn a_small_scene_is_one_chunk_of_its_own_size() {
    let dir = project(&ndvi_pipeline("runs/ops", "[run]\nmemory_budget_mib = 4096"));
    let out = sitsflow(&["run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("64 × 64 px in 1 chunk of 64 px"), "{log}");
    let estimate: u64 = log.split("memory estimate ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(estimate < 600, "the estimate is for the 64 px chunk, not the budget's: {log}");
}

#[test]
fn a_run_directory_that_is_or_holds_an_input_is_refused() {
    let series = common::small_demo().join("series");
    for (output, message) in [
        (series.display().to_string(), "holds the series folder"),
        (common::small_demo().display().to_string(), "holds the series folder"),
        (series.join("runs").display().to_string(), "is inside the series folder"),
        (".".to_string(), "holds the pipeline"),
    ] {
        let dir = project(&ndvi_pipeline(&output, ""));
        let before = std::fs::read_dir(&series).unwrap().count();
        let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{output}");
        assert!(text(&out.stderr).contains(message), "{output}: {}", text(&out.stderr));
        assert_eq!(std::fs::read_dir(&series).unwrap().count(), before, "nothing written into the series folder");
    }
}

#[cfg(unix)]
#[test]
fn a_run_directory_that_a_symlink_leads_into_an_input_is_refused() {
    let demo = common::small_demo();
    let series = demo.join("series");
    // (link, its target — None: the project's plugin folder —, the run directory, the refusal)
    for (link, target, output, message) in [
        // The run directory itself is a link to the series folder.
        ("links/series", Some(series.clone()), "links/series", "holds the series folder"),
        // A folder above it is a link: the run directory lands in the series folder.
        ("links/demo", Some(demo.to_path_buf()), "links/demo/series", "holds the series folder"),
        ("links/demo", Some(demo.to_path_buf()), "links/demo/series/runs/x", "is inside the series folder"),
        // Into the plugin folder, through a link.
        ("links/plugins", None, "links/plugins/run", "is inside the plugin folder"),
    ] {
        let dir = project(&ndvi_pipeline(output, ""));
        let link = dir.path().join(link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let target = target.unwrap_or_else(|| dir.path().join("plugins"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let before = std::fs::read_dir(&series).unwrap().count();
        let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{output}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(message) && err.contains("which resolves to"), "{output}: {err}");
        assert_eq!(std::fs::read_dir(&series).unwrap().count(), before, "{output}: nothing written into the series folder");
        assert!(!target.join(".sitsflow.lock").exists(), "{output}: no lock file left in the input");
    }
}

#[test]
fn a_reference_that_misses_the_grid_is_an_error_not_an_empty_map() {
    let dir = tempfile::tempdir().unwrap();
    // 64 px of class 1, 100 km east of the demo.
    let far = dir.path().join("far.tif");
    let demo_gt = gdal::Dataset::open(common::small_demo().join("truth/2018.tif")).unwrap().geo_transform().unwrap();
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type::<u16, _>(&far, 64, 64, 1).unwrap();
    ds.set_geo_transform(&[demo_gt[0] + 100_000.0, 10.0, 0.0, demo_gt[3], 0.0, -10.0]).unwrap();
    ds.set_projection(&gdal::Dataset::open(common::small_demo().join("truth/2018.tif")).unwrap().projection()).unwrap();
    ds.rasterband(1).unwrap().write((0, 0), (64, 64), &mut Buffer::new((64, 64), vec![1u16; 4096])).unwrap();
    drop(ds);
    let truth = common::small_demo().join("truth/2018.tif");
    let out = sitsflow(&["eval", "--map", truth.to_str().unwrap(), "--reference", far.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("far.tif: the reference map does not overlap the grid"), "{}", text(&out.stderr));
}

#[test]
fn eval_skips_the_maps_nodata_code_unless_told_to_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let truth = common::small_demo().join("truth/2018.tif");
    let ds = gdal::Dataset::open(&truth).unwrap();
    let codes: Vec<u16> = ds.rasterband(1).unwrap().read_as::<u16>((0, 0), (64, 64), (64, 64), None).unwrap().data().to_vec();
    // The left half unmapped (0), the right half right.
    let map = dir.path().join("map.tif");
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut out_ds = driver.create_with_band_type::<u16, _>(&map, 64, 64, 1).unwrap();
    out_ds.set_geo_transform(&ds.geo_transform().unwrap()).unwrap();
    out_ds.set_projection(&ds.projection()).unwrap();
    let half: Vec<u16> = codes.iter().enumerate().map(|(p, &c)| if p % 64 < 32 { 0 } else { c }).collect();
    out_ds.rasterband(1).unwrap().write((0, 0), (64, 64), &mut Buffer::new((64, 64), half)).unwrap();
    drop(out_ds);
    let run = |extra: &[&str]| {
        let json = dir.path().join("e.json");
        let mut args = vec!["eval", "--map", map.to_str().unwrap(), "--reference", truth.to_str().unwrap(), "--json", json.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = sitsflow(&args, dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (e, text(&out.stdout))
    };
    let (e, shown) = run(&[]);
    assert_eq!(e["metrics"]["overall_accuracy"].as_f64(), Some(1.0), "0 is the map's no-data by default");
    assert_eq!(e["skipped_map_nodata"].as_u64(), Some(64 * 32));
    assert!(shown.contains("skipped where the map holds its no-data code 0: 2048"), "{shown}");
    let (e, _) = run(&["--map-nodata", "none"]);
    assert!((e["metrics"]["overall_accuracy"].as_f64().unwrap() - 0.5).abs() < 1e-9, "counted as errors of the map");
}

#[test]
fn train_outside_the_checkout_says_where_it_looked_for_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin/sitsflow");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_sitsflow"), &bin).unwrap();
    let samples = common::shared_data().join("formosat2-tempcnn/train.csv");
    let out = std::process::Command::new(&bin)
        .args(["train", "--arch", "tempcnn", "--samples", samples.to_str().unwrap(), "--out", "m"])
        .current_dir(dir.path())
        .env_remove("SITSFLOW_MODELS_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("the training recipe (models/sitsflow_models) was not found: looked in"), "{err}");
    assert!(err.contains(&bin.display().to_string()) && err.contains("SITSFLOW_MODELS_DIR"), "{err}");
    assert!(!err.contains("PyTorch"), "not a PyTorch problem: {err}");
}

#[test]
fn the_active_learning_config_grows_sparse_labels_into_dense_maps() {
    let dir = common::project_dir();
    let demo = common::small_demo();
    let text_ = std::fs::read_to_string(common::workspace().join("configs/active-learning.toml"))
        .unwrap()
        .replace("../data/demo", &demo.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/active-learning\"", "dir = \"runs/al\"")
        .replace("pool = 5000", "pool = 2000");
    std::fs::write(dir.path().join("pipeline.toml"), text_).unwrap();
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = dir.path().join("runs/al");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("dense.metrics.json")).unwrap()).unwrap();
    let curve = metrics["learning_curve"]["rows"].as_array().unwrap();
    assert_eq!(curve.len(), 7, "the first training and 6 rounds");
    assert!(curve[6][1].as_u64().unwrap() >= curve[0][1].as_u64().unwrap() + 6 * 25 - 25);
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("learning curve"));
    for year in [2018, 2019, 2020] {
        assert!(run.join(format!("dense_{year}.tif")).is_file());
    }
    // The cloud mask's classes are all named, "clear" included.
    let info = std::process::Command::new("gdalinfo").arg("-json").arg(run.join("clouds.tif")).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let categories = &info["bands"][0]["categories"];
    assert_eq!(categories, &serde_json::json!(["clear", "cloud", "cloud shadow", "snow"]), "{categories}");
}

#[test]
fn inspect_says_the_halo_a_stage_needs() {
    let dir = common::project_dir();
    let out = sitsflow(&["plugins", "inspect", "spectral-mask@0.1.0", "--dir", "plugins"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("halo 13 px"), "{}", text(&out.stdout));
}

/// `demo-data --dn` writes the demo as L2A COGs carry reflectance (UInt16 DN with the
/// 04.00 offset, scale and offset in the band metadata): read back, it is the Float32
/// demo's reflectance to within the DN's quantisation, and SCL is unchanged.
#[test]
fn the_demo_in_digital_numbers_reads_back_as_its_reflectance() {
    let dir = tempfile::tempdir().unwrap();
    let options = sitsflow::demo::DemoOptions { size: 32, dates_per_year: 2, years: vec![2018], ..Default::default() };
    sitsflow::demo::generate(&dir.path().join("f32"), &options).unwrap();
    sitsflow::demo::generate(&dir.path().join("dn"), &sitsflow::demo::DemoOptions { dn: true, ..options }).unwrap();
    let f32_series = sitsflow::raster::Series::open(&dir.path().join("f32/series"), None).unwrap();
    let dn_series = sitsflow::raster::Series::open(&dir.path().join("dn/series"), None).unwrap();
    assert_eq!(f32_series.bands, dn_series.bands);
    let window = Window { row: 0, col: 0, rows: 32, cols: 32 };
    let a = f32_series.reader().unwrap().read(window).unwrap();
    let b = dn_series.reader().unwrap().read(window).unwrap();
    let scl = f32_series.bands.iter().position(|b| b == "SCL").unwrap();
    let bands = f32_series.bands.len();
    for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
        let band = (i / 1024) % bands;
        if band == scl {
            assert_eq!(x, y, "SCL is written as its codes");
        } else {
            assert!((x - y).abs() <= 0.5e-4 + 1e-6, "value {i}: {x} vs {y}");
        }
    }
}

//! Chunk footprints (WIT 0.2 `footprint-for`): the host cuts chunks as multiples of a
//! stage's tile, reads its halo around each chunk (reflected at the scene's edges),
//! tells the stage where the chunk lies, crops its output to the core, and writes an
//! output of scale > 1 on a grid that many times finer. A mask's halo comes from its
//! parameters, so chunk edges never show in its output.

use crate::common;

use sitsflow::raster::{Series, Window};
use std::path::Path;
use std::process::Output;

fn sitsflow(project: &Path, args: &[&str]) -> Output {
    common::sitsflow_command(project).args(args).output().expect("running sitsflow")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `stages` on the small demo (64 × 64 px) with `run` settings; returns the project.
fn run(run: &str, stages: &str) -> (tempfile::TempDir, Output) {
    let dir = common::project_dir();
    let pipeline = format!(
        "schema = 1\nname = \"fp\"\n\n[input]\nseries = {:?}\n\n[run]\n{run}\n\n{stages}",
        common::small_demo().join("series").display().to_string()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow(dir.path(), &["--quiet", "plugins", "lock", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"]);
    (dir, out)
}

fn probe(tile: u32, halo: u32, scale: u32) -> String {
    format!(
        "[[stage]]\nid = \"probe\"\npath = {:?}\nparams = {{ tile = {tile}, halo = {halo}, scale = {scale} }}\n",
        common::component("fixture-footprint").display().to_string()
    )
}

/// The first band of the first date of the small demo, row-major.
fn first_band() -> Vec<f32> {
    let series = Series::open(&common::small_demo().join("series"), None).unwrap();
    let data = series.reader().unwrap().read(Window { row: 0, col: 0, rows: 64, cols: 64 }).unwrap();
    data.data[..64 * 64].to_vec()
}

/// Band `b` (1-based) of a raster, row-major.
fn band(path: &Path, b: usize) -> Vec<f32> {
    let ds = gdal::Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    ds.rasterband(b).unwrap().read_as::<f32>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec()
}

#[test]
fn a_stage_with_a_tile_and_a_halo_sees_its_core_and_the_scene_reflected_at_its_edges() {
    let (dir, out) = run("chunk_size = 32", &probe(16, 8, 1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let map = dir.path().join("runs/fp/probe.tif");
    let (rows, cols, value, left, core, cube_rows) = (band(&map, 1), band(&map, 2), band(&map, 3), band(&map, 4), band(&map, 5), band(&map, 6));
    let b = first_band();
    for p in 0..64 * 64 {
        let (r, c) = (p / 64, p % 64);
        assert_eq!((rows[p], cols[p]), (r as f32, c as f32), "pixel ({r}, {c}) placed");
        assert_eq!(value[p], b[p], "pixel ({r}, {c}) reads its own value");
        // 8 px to the left: inside the scene, or mirrored at its left edge (no repeat).
        let l = if c >= 8 { c - 8 } else { 8 - c };
        assert_eq!(left[p], b[r * 64 + l], "pixel ({r}, {c}): the halo holds column {l}");
        assert_eq!(core[p], 1.0, "only the core is kept");
        assert_eq!(cube_rows[p], 48.0, "the cube is the 32 px chunk plus 8 px on each side");
    }
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    assert_eq!((manifest["halo"].as_u64(), manifest["chunk_size"].as_u64()), (Some(8), Some(32)));
    assert_eq!(manifest["stages"][0]["footprint"], serde_json::json!({ "tile": 16, "halo": 8, "scale": 1 }));

    // The case: a 64 px tile and a 16 px halo (one chunk here, padded on every side).
    let (dir, out) = run("", &probe(64, 16, 1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let map = dir.path().join("runs/fp/probe.tif");
    let (left, cube_rows) = (band(&map, 4), band(&map, 6));
    for p in 0..64 * 64 {
        let (r, c) = (p / 64, p % 64);
        let l = if c >= 16 { c - 16 } else { 16 - c };
        assert_eq!(left[p], b[r * 64 + l], "pixel ({r}, {c}): the halo holds column {l}");
        assert_eq!(cube_rows[p], 96.0, "64 px core + 16 px on each side");
    }

    let (_dir, out) = run("chunk_size = 40", &probe(16, 8, 1));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("chunk_size 40 is not a multiple of the 16 px tile a stage works on; use 32"), "{}", text(&out.stderr));
    // Without a fixed size, the chunk is a multiple of the tile.
    let (dir, out) = run("memory_budget_mib = 150", &probe(24, 0, 1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["chunk_size"].as_u64().unwrap() % 24, 0, "{}", manifest["chunk_size"]);
}

#[test]
fn a_stage_of_scale_4_writes_a_raster_on_a_grid_four_times_finer() {
    let (dir, out) = run("chunk_size = 32", &probe(0, 2, 4));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let map = dir.path().join("runs/fp/probe.tif");
    let ds = gdal::Dataset::open(&map).unwrap();
    assert_eq!(ds.raster_size(), (256, 256));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    let probe = manifest["graph"]["rasters"].as_array().unwrap().iter().find(|r| r["name"] == "probe").unwrap().clone();
    assert_eq!((probe["width"].as_u64(), probe["height"].as_u64(), probe["scale"].as_u64()), (Some(256), Some(256), Some(4)), "{probe}");
    let series = Series::open(&common::small_demo().join("series"), None).unwrap();
    let (fine, coarse) = (ds.geo_transform().unwrap(), series.grid.geo_transform.unwrap());
    assert_eq!((fine[0], fine[3]), (coarse[0], coarse[3]), "same origin");
    assert!((fine[1] - coarse[1] / 4.0).abs() < 1e-9 && (fine[5] - coarse[5] / 4.0).abs() < 1e-9, "{fine:?} vs {coarse:?}");
    let (rows, value) = (band(&map, 1), band(&map, 3));
    let b = first_band();
    for p in 0..256 * 256 {
        let (r, c) = (p / 256, p % 256);
        assert_eq!(rows[p], (r / 4) as f32, "fine pixel ({r}, {c}) lies over input row {}", r / 4);
        assert_eq!(value[p], b[(r / 4) * 64 + c / 4], "fine pixel ({r}, {c})");
    }
}

/// scl-mask declares its dilation as its halo: the mask is the same whatever the chunks.
#[test]
fn a_dilating_mask_gets_the_halo_it_needs_and_chunk_edges_never_show() {
    let mask = "[[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\nparams = { dilation = 3 }\n";
    let (small, out) = run("chunk_size = 16", mask);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (whole, out) = run("chunk_size = 64", mask);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(small.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["halo"].as_u64(), Some(3), "the planner gives the mask its dilation as halo");
    let dates = gdal::Dataset::open(small.path().join("runs/fp/clouds.tif")).unwrap().raster_count();
    for b in 1..=dates {
        assert!(
            band(&small.path().join("runs/fp/clouds.tif"), b) == band(&whole.path().join("runs/fp/clouds.tif"), b),
            "date {b}: 16 px chunks and one 64 px chunk give other masks"
        );
    }
}

/// A 0.1 plugin (built against the frozen 0.1.0 WIT) runs in a pipeline beside 0.2
/// ones, with footprint 0/0/1, and the manifest says which contract each stage has.
#[test]
fn a_plugin_of_wit_0_1_runs_beside_0_2_plugins() {
    let compat = common::component("fixture-compat-0-1-0");
    let stages = format!(
        "[[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\nparams = {{ dilation = 1 }}\n\n[[stage]]\nid = \"old\"\npath = {:?}\n",
        compat.display().to_string()
    );
    let (dir, out) = run("chunk_size = 32", &stages);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"][0]["wit"], "sitsflow:stage@0.2.1");
    assert_eq!(manifest["stages"][1]["wit"], "sitsflow:stage@0.1.1");
    assert_eq!(manifest["stages"][1]["footprint"], serde_json::json!({ "tile": 0, "halo": 0, "scale": 1 }));
    assert!(dir.path().join("runs/fp/old.tif").exists());
}

/// WIT 0.2.1 only added the augmenter: a plugin built against 0.2.0 (the frozen copy in
/// the fixture) loads through the current bindings and gets its placement.
#[test]
fn a_plugin_of_wit_0_2_0_runs_in_a_0_2_1_host() {
    let compat = common::component("fixture-compat-0-2-0");
    let stages = format!("[[stage]]\nid = \"rows\"\npath = {:?}\n", compat.display().to_string());
    let (dir, out) = run("chunk_size = 32", &stages);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/fp/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"][0]["wit"], "sitsflow:stage@0.2.1");
    let ds = gdal::Dataset::open(dir.path().join("runs/fp/rows.tif")).unwrap();
    let (w, h) = ds.raster_size();
    let values = ds.rasterband(1).unwrap().read_as::<f32>((0, 0), (w, h), (w, h), None).unwrap();
    assert!(values.data().iter().enumerate().all(|(p, v)| *v == (p / w) as f32), "each pixel holds its scene row");
}

#[test]
fn a_features_stage_reads_an_earlier_stage_output() {
    // NDVI per date, then its temporal statistics computed by a second stage reading the
    // first one's output, against the same statistics straight from the series.
    let indices = |id: &str, input: Option<&str>, params: &str| {
        let input = input.map_or(String::new(), |i| format!("input = \"{i}\"\n"));
        format!("[[stage]]\nid = \"{id}\"\nplugin = \"indices@0.1.0\"\n{input}params = {{ {params} }}\n\n")
    };
    let stages = [
        indices("ndvi", None, "indices = [\"NDVI\"]"),
        indices("chained", Some("ndvi"), "bands = [\"NDVI\"], per_date = false, stats = [\"mean\", \"p50\", \"p90\"]"),
        indices("direct", None, "indices = [\"NDVI\"], per_date = false, stats = [\"mean\", \"p50\", \"p90\"]"),
    ]
    .concat();
    let (dir, out) = run("chunk_size = 32", &stages);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = dir.path().join("runs/fp");
    let names = |p: &Path| {
        let ds = gdal::Dataset::open(p).unwrap();
        (1..=ds.raster_count()).map(|b| gdal::Metadata::description(&ds.rasterband(b).unwrap()).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(names(&runs.join("chained.tif")), names(&runs.join("direct.tif")));
    for b in 1..=3 {
        let (chained, direct) = (band(&runs.join("chained.tif"), b), band(&runs.join("direct.tif"), b));
        let same = chained.iter().zip(&direct).all(|(a, d)| a.to_bits() == d.to_bits() || (a.is_nan() && d.is_nan()));
        assert!(same, "band {b}: the chained statistics differ from the direct ones");
    }

    // A stage reading a later stage is refused by validate.
    let dir = common::project_dir();
    let bad = indices("late", Some("ndvi2"), "indices = [\"NDVI\"]") + &indices("ndvi2", None, "indices = [\"NDVI\"]");
    let pipeline = format!(
        "schema = 1\nname = \"fp\"\n\n[input]\nseries = {:?}\n\n{bad}",
        common::small_demo().join("series").display().to_string()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow(dir.path(), &["validate", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("input = 'ndvi2' names no earlier stage"), "{}", text(&out.stderr));
}

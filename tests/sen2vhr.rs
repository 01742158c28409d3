//! Seed 000 in a run: ASUNet/ME trained on the small demo's dated 2.5 m forest
//! annotations, every date mapped on the 4× grid with the Markov chain's consistent
//! sequence and its changes; the report carries the per-date table, the λ ablation, the
//! consistency with and without the chain and the mixed pixels.

use crate::common;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn pipeline(annotations: &Path, extra: &str) -> String {
    let demo = common::small_forest_demo();
    format!(
        r#"schema = 1
name = "sen2vhr"

[input]
series = {series:?}

[run]
seed = 5

[[stage]]
id = "bands"
plugin = "indices@0.1.0"
params = {{ bands = ["B04", "B08", "B11"], per_date = true }}

[[stage]]
id = "sr"
recipe = "asunet"
input = "bands"
annotations = {annotations:?}
params = {{ scale = 4, epochs = 2, patch = 16, patches_per_epoch = 8, batch_size = 4, tile = 32, overlap = 8, {extra} hyperparameters = {{ width = 4, depth = 2, window = 2, month_dim = 4 }} }}
"#,
        series = demo.join("series").display().to_string(),
        annotations = annotations.display().to_string(),
    )
}

fn run(project: &Path, text: &str) -> std::process::Output {
    std::fs::write(project.join("sr.toml"), text).unwrap();
    let sitsflow = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_sitsflow")).current_dir(project).args(args).output().unwrap();
    let out = sitsflow(&["--quiet", "plugins", "lock", "sr.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sitsflow(&["--quiet", "run", "sr.toml"])
}

#[test]
fn asunet_maps_every_date_on_the_finer_grid_with_its_markov_sequence() {
    let project = common::project_dir();
    let csv = common::small_forest_demo().join("forest/annotations.csv");
    let last = std::fs::read_to_string(&csv).unwrap().lines().last().unwrap().split(',').next().unwrap().to_string();
    let out = run(project.path(), &pipeline(&csv, &format!("ablation = true, baseline = true, test_dates = [{last:?}],")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = project.path().join("runs/sen2vhr");
    for (name, bands) in [("sr_dates.tif", 12), ("sr_markov.tif", 12), ("sr_changes.tif", 1)] {
        let ds = gdal::Dataset::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((ds.raster_size(), ds.raster_count()), ((256, 256), bands), "{name}: 4× the 64 px scene");
    }
    // The Markov sequence changes class no more often than the dates' own labels.
    let read = |name: &str, band: usize| {
        gdal::Dataset::open(dir.join(name)).unwrap().rasterband(band).unwrap().read_band_as::<u16>().unwrap().data().to_vec()
    };
    let changes = |name: &str| -> usize {
        let bands: Vec<Vec<u16>> = (1..=12).map(|b| read(name, b)).collect();
        bands.windows(2).map(|w| w[0].iter().zip(&w[1]).filter(|(a, b)| a != b).count()).sum()
    };
    assert!(changes("sr_markov.tif") <= changes("sr_dates.tif"), "the chain smooths");
    let markov_changes: usize = read("sr_changes.tif", 1).iter().map(|&c| c as usize).sum();
    assert_eq!(markov_changes, changes("sr_markov.tif"), "the change map counts the sequence's changes");

    let report = json(&dir.join("report.json"));
    let sr = report["scene_stages"].as_array().unwrap().iter().find(|s| s["stage"] == "sr").expect("the stage's section");
    assert_eq!(sr["kind"], "super-resolver");
    let metrics = &sr["summary"]["training"]["validation"];
    let rows = metrics["per_date"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one row per annotation");
    assert_eq!(rows[2]["role"], "test (date left out)");
    for row in rows {
        // The annotation is dated the day after its HR date.
        assert_eq!(row["days_apart"], 1, "{row}");
        assert!(row["accuracy"].is_number() && row["accuracy_markov"].is_number(), "{row}");
    }
    assert_eq!(metrics["ablation"]["rows"].as_array().unwrap().len(), 2);
    assert!(metrics["mixed_pixels"]["pixels"].as_u64().unwrap() > 0);
    assert!(sr["summary"]["training"]["onnx_check"]["max_abs_diff"].as_f64().unwrap() < 1e-4);
    let sidecar = json(&dir.join("models/sr/model.json"));
    assert_eq!(sidecar["output"]["scale"], 4);
    assert_eq!(sidecar["output"]["classes"].as_array().unwrap().len(), 5, "seed 000's five forest classes");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for text in ["Accuracy per annotation date", "Ablation: temporal smoothness", "Consistency with and without the Markov chain", "Mixed pixels"] {
        assert!(html.contains(text), "{text}");
    }
}

#[test]
fn an_annotation_list_naming_a_missing_file_points_at_its_line() {
    let project = common::project_dir();
    let csv = project.path().join("annotations.csv");
    std::fs::write(&csv, "date,path\n2018-07-01,nowhere.tif\n").unwrap();
    std::fs::write(project.path().join("sr.toml"), pipeline(&csv, "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sitsflow")).current_dir(project.path()).args(["validate", "sr.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("annotations.csv:2") && err.contains("nowhere.tif") && err.contains("does not exist"), "{err}");
}

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
    // The change map counts the Markov sequence's changes. (Whether the chain smooths is a
    // property of a trained network: measured on the demo forest in docs/figures.md. This
    // network has trained two tiny epochs; with its batch norms re-estimated after
    // training it no longer maps one class everywhere, and its chain may change more
    // often than its dates' own labels.)
    let read = |name: &str, band: usize| {
        gdal::Dataset::open(dir.join(name)).unwrap().rasterband(band).unwrap().read_band_as::<u16>().unwrap().data().to_vec()
    };
    let changes = |name: &str| -> usize {
        let bands: Vec<Vec<u16>> = (1..=12).map(|b| read(name, b)).collect();
        bands.windows(2).map(|w| w[0].iter().zip(&w[1]).filter(|(a, b)| a != b).count()).sum()
    };
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

    // The host's tiles, windows of dates, months and Viterbi pass against PyTorch's
    // (the recipe's `predict` on the same dataset and tiles).
    let scratch = tempfile::tempdir().unwrap();
    let grid = sitsflow::raster::grid_of(&dir.join("bands.tif")).unwrap();
    let annotations: Vec<(String, Vec<u16>)> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let path = csv.parent().unwrap().join(cells[1]);
            (cells[0].to_string(), sitsflow::raster::read_classes_on(&path, &grid.scaled(4)).unwrap().0)
        })
        .collect();
    let windows = [sitsflow::raster::Window { row: 0, col: 0, rows: 64, cols: 64 }];
    let dataset = scratch.path().join("dataset");
    sitsflow::segment::write_sr_dataset(&dataset, &dir.join("bands.tif"), &windows, 64, 64, &annotations, 4, &[]).unwrap();
    let maps = scratch.path().join("maps.npy");
    let ws = common::workspace();
    let out = Command::new("python3")
        .args(["-m", "sitsflow_models", "predict", "--model"])
        .arg(dir.join("models/sr/model.onnx"))
        .arg("--patches")
        .arg(&dataset)
        .args(["--tile", "32", "--overlap", "8", "--out"])
        .arg(&maps)
        .env("PYTHONPATH", format!("{}:{}", ws.join(".deps/models-python").display(), ws.join("models").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "predict failed: {}", String::from_utf8_lossy(&out.stderr));
    let torch: ndarray::Array4<u16> = ndarray_npy::read_npy(&maps).unwrap();
    assert_eq!(torch.shape(), [2, 12, 256, 256]);
    for (k, name) in ["sr_dates.tif", "sr_markov.tif"].iter().enumerate() {
        let mut differ = 0usize;
        for t in 0..12 {
            let host = read(name, t + 1);
            differ += host.iter().zip(torch.index_axis(ndarray::Axis(0), k).index_axis(ndarray::Axis(0), t).iter()).filter(|(a, b)| a != b).count();
        }
        let share = differ as f64 / (12.0 * 65536.0);
        eprintln!("{name}: host and PyTorch differ on {share:.2e} of the pixels");
        assert!(share < 1e-3, "{name}: host and PyTorch differ on {share} of the pixels");
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

/// Seed 000's "from sparse to dense": a random forest's yearly maps are the annotations,
/// each dated 1 July of its year.
#[test]
fn a_labellers_yearly_maps_are_the_annotations_of_a_chained_pipeline() {
    let project = common::project_dir();
    let demo = common::small_forest_demo();
    let text = format!(
        r#"schema = 1
name = "dense"

[input]
series = {series:?}

[reference]
path = {reference:?}
classes = {classes:?}

[run]
seed = 5

[[stage]]
id = "features"
plugin = "indices@0.1.0"
per_year = true
params = {{ indices = ["NDVI"], per_date = false, stats = ["mean", "p10", "p90"] }}

[[stage]]
id = "bands"
plugin = "indices@0.1.0"
params = {{ bands = ["B04", "B08"], per_date = true }}

[[stage]]
id = "labels"
plugin = "stratified-samples@0.1.0"
params = {{ per_class = 30 }}

[[stage]]
id = "rf"
plugin = "random-forest@0.1.0"
input = "features"
year = 2018
samples = "labels"
params = {{ n_trees = 10, seed = 1 }}

[[stage]]
id = "sr"
recipe = "asunet"
input = "bands"
annotations = "rf"
params = {{ scale = 2, valid_days = 182, epochs = 1, patch = 16, patches_per_epoch = 4, batch_size = 2, tile = 32, overlap = 8, hyperparameters = {{ width = 4, depth = 2, window = 2, month_dim = 2 }} }}
"#,
        series = demo.join("series").display().to_string(),
        reference = demo.join("truth/2018.tif").display().to_string(),
        classes = demo.join("classes.csv").display().to_string(),
    );
    let out = run(project.path(), &text);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = project.path().join("runs/dense");
    let ds = gdal::Dataset::open(dir.join("sr_markov.tif")).unwrap();
    assert_eq!((ds.raster_size(), ds.raster_count()), ((128, 128), 12), "2× the 64 px scene, a band per date");
    let report = json(&dir.join("report.json"));
    let sr = report["scene_stages"].as_array().unwrap().iter().find(|s| s["stage"] == "sr").unwrap();
    let annotations: Vec<&str> = sr["summary"]["annotations"].as_array().unwrap().iter().map(|a| a["date"].as_str().unwrap()).collect();
    assert_eq!(annotations, ["2018-07-01", "2019-07-01", "2020-07-01"]);
    assert!(sr["summary"]["annotations"][0]["path"].as_str().unwrap().ends_with("rf_2018.tif"));
}

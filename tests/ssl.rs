//! SimCLR pretraining in a run (seed 003): an augmenter component makes the views, the
//! host streams them to the recipe, the encoder is exported and an FG-UNet starts from
//! it at two label budgets beside the same network from scratch; the report carries the
//! table. A failing augmenter fails the run naming it, and nothing is published.

use crate::common;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn pipeline(views_params: &str) -> String {
    let demo = common::small_demo();
    format!(
        r#"schema = 1
name = "ssl"

[input]
series = {series:?}

[reference]
path = {reference:?}
classes = {classes:?}

[run]
seed = 3

[[stage]]
id = "bands"
plugin = "indices@0.1.0"
per_year = true
params = {{ bands = ["B04", "B08", "B11"], per_date = true }}

[[stage]]
id = "labels"
plugin = "stratified-samples@0.1.0"
params = {{ per_class = 300 }}

[[stage]]
id = "views"
plugin = "simclr-augment@0.1.0"
params = {{ {views_params} }}

[[stage]]
id = "ssl"
recipe = "simclr"
input = "bands"
views = "views"
params = {{ epochs = 2, batches_per_epoch = 3, batch_size = 4, patch = 16, learning_rate = 0.01, hyperparameters = {{ width = 4, depth = 2 }} }}

[[stage]]
id = "unet"
recipe = "fg-unet"
input = "bands"
year = 2018
samples = "labels"
holdout = 0.3
holdout_by = "polygons"
pretrained = "ssl"
params = {{ budgets = [0.2, 1.0], epochs = 2, patch = 16, patches_per_epoch = 16, batch_size = 4, tile = 64, overlap = 8, hyperparameters = {{ pixel_width = 4 }} }}

# A random forest on the encoder's embeddings of 2018.
[[stage]]
id = "forest"
plugin = "random-forest@0.1.0"
input = "ssl"
year = 2018
samples = "labels"
holdout = 0.3
holdout_by = "polygons"
params = {{ n_trees = 20, seed = 1 }}
"#,
        series = demo.join("series").display().to_string(),
        reference = demo.join("truth/2018.tif").display().to_string(),
        classes = demo.join("classes.csv").display().to_string(),
    )
}

fn run(project: &Path, text: &str) -> std::process::Output {
    std::fs::write(project.join("ssl.toml"), text).unwrap();
    let sitsflow = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_sitsflow")).current_dir(project).args(args).output().unwrap();
    let out = sitsflow(&["--quiet", "plugins", "lock", "ssl.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sitsflow(&["--quiet", "run", "ssl.toml"])
}

#[test]
fn simclr_pretrains_on_streamed_views_and_fg_unet_starts_from_its_encoder() {
    let project = common::project_dir();
    let out = run(project.path(), &pipeline(""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = project.path().join("runs/ssl");
    let manifest = json(&dir.join("manifest.json"));
    let published: Vec<&str> = manifest["published"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for f in ["models/ssl/model.onnx", "models/ssl/model.pt", "models/ssl/model.json", "models/ssl/metrics.json", "unet_2018.tif"] {
        assert!(published.contains(&f), "{f} not in {published:?}");
    }
    let report = json(&dir.join("report.json"));
    let sections = report["scene_stages"].as_array().expect("the report's scene stage sections");
    let ssl = sections.iter().find(|s| s["stage"] == "ssl").expect("the pretrainer's section");
    assert_eq!(ssl["kind"], "pretrainer");
    let summary = &ssl["summary"];
    assert_eq!(summary["views"]["pairs"], 2 * 3 * 4);
    assert_eq!(summary["views"]["channels"], 3 * 4, "3 bands × 4 dates");
    assert_eq!(summary["views"]["rasters"].as_array().unwrap().len(), 3, "every year's patches are in the pool");
    assert_eq!(summary["augmenter"]["plugin"], "simclr-augment@0.1.0");
    assert_eq!(summary["loss"]["history"].as_array().unwrap().len(), 2);
    assert!(summary["onnx_check"]["max_abs_diff"].as_f64().unwrap() < 1e-4, "{}", summary["onnx_check"]);
    let sidecar = json(&dir.join("models/ssl/model.json"));
    assert_eq!(sidecar["views_sha256"], summary["views"]["sha256"]);
    assert_eq!(sidecar["input"]["channels"].as_array().unwrap().len(), 12);

    let unet = sections.iter().find(|s| s["stage"] == "unet").expect("the labeller's section");
    let budgets = &unet["summary"]["training"]["validation"]["label_budgets"];
    let table = budgets["table"].as_array().expect("the label budget table");
    assert_eq!(table.iter().map(|r| r["budget"].as_f64().unwrap()).collect::<Vec<_>>(), [0.2, 1.0]);
    for row in table {
        for init in ["ssl", "supervised"] {
            assert!(row[init]["overall_accuracy"].is_number() && row[init]["iou"].is_object(), "{row}");
        }
    }
    assert!(table[0]["fit_pixels"].as_u64() < table[1]["fit_pixels"].as_u64());
    assert!(budgets["pretrained"].as_str().unwrap().ends_with("models/ssl/model.pt"));
    let unet_sidecar = json(&dir.join("models/unet/model.json"));
    assert_eq!(unet_sidecar["training"]["pretrained_encoder"]["views_sha256"], sidecar["views_sha256"]);
    // The embeddings: one raster per year, the first level's 4 channels and the bottom's
    // 16, read by the forest as features.
    for year in [2018, 2019, 2020] {
        assert!(published.contains(&format!("ssl_{year}.tif").as_str()), "ssl_{year}.tif not in {published:?}");
    }
    let embedded = gdal::Dataset::open(dir.join("ssl_2018.tif")).unwrap();
    assert_eq!((embedded.raster_size(), embedded.raster_count()), ((64, 64), 20));
    let first = embedded.rasterband(1).unwrap();
    assert_eq!(gdal::Metadata::description(&first).unwrap(), "emb00");
    let values = first.read_as::<f32>((0, 0), (64, 64), (64, 64), None).unwrap();
    assert!(values.data().iter().all(|v| v.is_finite()));
    assert_eq!(summary["embeddings"].as_array().unwrap().len(), 3);
    let forest = sections.iter().find(|s| s["stage"] == "forest").expect("the forest's section");
    // Assessed on held-out polygons like any labeller (a two-epoch encoder of width 4
    // says nothing of accuracy; docs/figures.md has the demo's).
    let held_out = &forest["summary"]["held_out"]["metrics"];
    assert!(held_out["samples"].as_u64().unwrap() > 100 && held_out["overall_accuracy"].is_number(), "{held_out}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Self-supervised against supervised, per label budget"));
    assert!(html.contains("NT-Xent"));
}

#[test]
fn an_augmenter_that_rejects_its_parameters_fails_the_run_naming_it() {
    let project = common::project_dir();
    let out = run(project.path(), &pipeline("blur_sigma = [2.0, 1.0]"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage 'views' (simclr-augment@0.1.0)") && err.contains("blur_sigma"), "{err}");
    assert!(!project.path().join("runs/ssl/manifest.json").exists(), "nothing published");
}

/// Seed 003's fusion on the small demo: the labeller reads each year's generated VHR
/// image (2.5 m, 4× the grid) beside its bands, trains the fusion network beside the
/// series-only one, and maps every year with both images of that year.
fn fusion_pipeline(vhr: &str) -> String {
    let demo = common::small_demo();
    format!(
        r#"schema = 1
name = "fusion"

[input]
series = {series:?}

[reference]
path = {reference:?}
classes = {classes:?}

[run]
seed = 3

[[stage]]
id = "bands"
plugin = "indices@0.1.0"
per_year = true
params = {{ bands = ["B04", "B08", "B11"], per_date = true }}

[[stage]]
id = "labels"
plugin = "stratified-samples@0.1.0"
params = {{ per_class = 300 }}

[[stage]]
id = "unet"
recipe = "fg-unet"
input = "bands"
year = 2018
samples = "labels"
holdout = 0.3
holdout_by = "polygons"
vhr = {vhr:?}
params = {{ epochs = 2, patch = 16, patches_per_epoch = 16, batch_size = 4, tile = 64, overlap = 8, hyperparameters = {{ width = 4, pixel_width = 4, vhr_width = 4 }} }}
"#,
        series = demo.join("series").display().to_string(),
        reference = demo.join("truth/2018.tif").display().to_string(),
        classes = demo.join("classes.csv").display().to_string(),
    )
}

#[test]
fn fusion_trains_beside_the_series_alone_and_maps_each_year_with_its_vhr_image() {
    let project = common::project_dir();
    let vhr = common::small_demo().join("vhr/{year}.tif").display().to_string();
    let out = run(project.path(), &fusion_pipeline(&vhr));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = project.path().join("runs/fusion");
    let sidecar = json(&dir.join("models/unet/model.json"));
    assert_eq!(sidecar["input"]["vhr"]["scale"], 4);
    assert_eq!(sidecar["input"]["vhr"]["channels"], serde_json::json!(["blue", "green", "red", "nir"]));
    assert!(sidecar["onnx_check"]["max_abs_diff"].as_f64().unwrap() < 1e-4, "{}", sidecar["onnx_check"]);
    let dataset = json(&dir.join("models/unet/dataset.json"));
    assert_eq!(dataset["vhr"]["scale"], 4);
    let report = json(&dir.join("report.json"));
    let unet = report["scene_stages"].as_array().unwrap().iter().find(|s| s["stage"] == "unet").expect("the labeller's section");
    let training = &unet["summary"]["training"];
    let budgets = &training["validation"]["label_budgets"];
    assert_eq!(budgets["inits"], serde_json::json!(["supervised", "fusion"]));
    for init in ["supervised", "fusion"] {
        assert!(budgets["table"][0][init]["miou"].is_number(), "{}", budgets["table"][0]);
    }
    // Each year's map was predicted with that year's image, which says it is generated.
    let images = training["vhr"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (image, year) in images.iter().zip([2018, 2019, 2020]) {
        assert!(image["path"].as_str().unwrap().ends_with(&format!("vhr/{year}.tif")), "{image}");
        assert_eq!(image["generated"], "sitsflow demo-data --vhr");
    }
    for year in [2018, 2019, 2020] {
        let map = gdal::Dataset::open(dir.join(format!("unet_{year}.tif"))).unwrap();
        assert_eq!(map.raster_size(), (64, 64));
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Fusion with the VHR image against the series alone, per label budget"));
    assert!(html.contains("The VHR image is generated"));

    // The host's two-input tiles against PyTorch's (the recipe's `predict`) on 2019, by
    // 32 px tiles: cores of 16 px, so VHR blocks are mirrored at every edge of the scene.
    let model = sitsflow::inference::Model::load(dir.join("models/unet/model.onnx"), sitsflow::inference::Device::Cpu).unwrap();
    let bands = dir.join("bands_2019.tif");
    let raster = sitsflow::raster::FeatureRaster::open(&bands).unwrap();
    let grid = sitsflow::raster::grid_of(&bands).unwrap();
    let image = sitsflow::segment::Vhr::open(&common::small_demo().join("vhr/2019.tif"), &grid, None).unwrap();
    assert_eq!(image.scale, 4);
    let network = sitsflow::segment::Network::new(&model, &raster, Some(&image), Some(32), Some(8)).unwrap();
    let k = network.classes.len();
    let mut host = vec![f32::NAN; k * 64 * 64];
    network
        .predict(&raster, Some(&image), 64, 64, 3, |t| {
            let n = t.core.pixels();
            for j in 0..k {
                for r in 0..t.core.rows {
                    for c in 0..t.core.cols {
                        host[j * 4096 + (t.core.row + r) * 64 + t.core.col + c] = t.data[j * n + r * t.core.cols + c];
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let patches = scratch.path().join("patches");
    let none = std::collections::BTreeSet::new();
    let labels = sitsflow::segment::SparseLabels { pixels: &[], labels: &[], groups: &[], test_groups: &none, classes: &[], split_rule: "none".into() };
    let whole = [sitsflow::raster::Window { row: 0, col: 0, rows: 64, cols: 64 }];
    sitsflow::segment::write_dataset(&patches, &bands, Some(&image), &whole, 64, 64, &labels).unwrap();
    let probs = scratch.path().join("probs.npy");
    let ws = common::workspace();
    let out = Command::new("python3")
        .args(["-m", "sitsflow_models", "predict", "--model"])
        .arg(dir.join("models/unet/model.onnx"))
        .arg("--patches")
        .arg(&patches)
        .args(["--tile", "32", "--overlap", "8", "--out"])
        .arg(&probs)
        .env("PYTHONPATH", format!("{}:{}", ws.join(".deps/models-python").display(), ws.join("models").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "predict failed: {}", String::from_utf8_lossy(&out.stderr));
    let torch: ndarray::Array3<f32> = ndarray_npy::read_npy(&probs).unwrap();
    assert_eq!(torch.shape(), [k, 64, 64]);
    let max = torch.iter().zip(&host).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max < 1e-4, "ONNX Runtime on the host differs from PyTorch by {max} with the VHR input");
    eprintln!("fusion, host ONNX Runtime vs PyTorch: max |Δp| = {max:.2e}");
}

#[test]
fn a_missing_vhr_image_of_a_mapped_year_names_the_file() {
    let project = common::project_dir();
    // Only 2018's image: the training year checks at validation; 2019's fails the run.
    let only = project.path().join("vhr");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::copy(common::small_demo().join("vhr/2018.tif"), only.join("2018.tif")).unwrap();
    let out = run(project.path(), &fusion_pipeline(&only.join("{year}.tif").display().to_string()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage 'unet'") && err.contains("vhr/2019.tif") && err.contains("does not exist"), "{err}");
    assert!(!project.path().join("runs/fusion/manifest.json").exists(), "nothing published");
}

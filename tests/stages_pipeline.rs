//! Whole pipelines through the scene stages, on generated demo data: seed 001's chain
//! (k-means reliable samples → random-forest pseudo-labels per year → multi-year
//! agreement set → final random forest → Markov chain), active learning (seed 000),
//! and the real Slovenia series with its LULC reference.

use crate::common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `pipeline.toml` into a project folder with the shipped plugins, locks and runs
/// it, and returns the run folder and the log.
fn run(project: &Path, name: &str, pipeline: &str) -> (PathBuf, String) {
    std::fs::write(project.join("pipeline.toml"), pipeline).unwrap();
    let nomenclature = project.join("nomenclature");
    std::fs::create_dir_all(&nomenclature).unwrap();
    for entry in std::fs::read_dir(common::workspace().join("configs/nomenclature")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, nomenclature.join(path.file_name().unwrap())).unwrap();
    }
    let exe = env!("CARGO_BIN_EXE_sitsflow");
    let mut log = String::new();
    for args in [&["--quiet", "plugins", "lock", "pipeline.toml"][..], &["run", "pipeline.toml"][..]] {
        let out = Command::new(exe)
            .args(args)
            .current_dir(project)
            .env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"))
            .env("SITSFLOW_MODELS_DIR", common::workspace().join("models"))
            .output()
            .unwrap();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "sitsflow {args:?} failed:\n{log}");
    }
    (project.join("runs").join(name), log)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn section<'a>(report: &'a Value, stage: &str) -> &'a Value {
    report["scene_stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .unwrap_or_else(|| panic!("no section '{stage}' in the report"))
}

/// The demo pipeline of configs/, pointed at the small generated demo.
fn demo_pipeline(demo: &Path) -> String {
    let text = std::fs::read_to_string(common::workspace().join("configs/demo.toml")).unwrap();
    text.replace("../data/demo", &demo.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/demo\"", "dir = \"runs/demo\"")
        // 64 × 64 px: fewer clusters and samples than on the 512 × 512 demo.
        .replace("k = 40", "k = 12")
        .replace("per_class = 500", "per_class = 150")
        .replace("n_trees = 100", "n_trees = 40")
        // Four 32 px blocks in all: hold out half of them for the metrics.
        .replace("samples = \"agreeing\"", "samples = \"agreeing\"\nholdout = 0.5")
}

#[test]
fn seed001_chain_runs_end_to_end_and_the_markov_chain_steadies_the_series() {
    let project = common::project_dir();
    let (run, log) = run(project.path(), "demo", &demo_pipeline(common::small_demo()));
    for name in [
        "features_2018.tif",
        "features_2020.tif",
        "clusters.tif",
        "reliable.tif",
        "reliable.csv",
        "pseudo_2018.tif",
        "pseudo_2019.tif",
        "pseudo_2020_confidence.tif",
        "agreeing.csv",
        "landcover_2019.tif",
        "consistent_2018.tif",
        "consistent_2020.tif",
        "consistent_changes.tif",
        "consistent_fromto.tif",
        "models/pseudo.model",
        "models/landcover.json",
        "models/clusters.model",
        "landcover.metrics.json",
        "report.html",
    ] {
        assert!(run.join(name).exists(), "{name} missing; log:\n{log}");
    }

    // The manifest records the compiled graph: one map node, an assemble node per chunk
    // output, one fit node per scene stage in pipeline order (the decoder reading the
    // labeller's posteriors, the labeller after its sampler), then the report.
    let manifest = json(&run.join("manifest.json"));
    let graph = &manifest["graph"];
    let nodes = graph["nodes"].as_array().unwrap();
    let kinds: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"map"));
    assert_eq!(kinds.last(), Some(&"report"));
    let fits: Vec<&str> = nodes.iter().filter(|n| n["node"] == "fit").map(|n| n["stage"].as_str().unwrap()).collect();
    assert_eq!(fits, ["clusters", "reliable", "pseudo", "agreeing", "landcover", "consistent"]);
    let rasters = graph["rasters"].as_array().unwrap();
    let name_of = |r: &Value| rasters[r.as_u64().unwrap() as usize]["name"].as_str().unwrap().to_string();
    let node = |stage: &str| nodes.iter().find(|n| n["stage"] == stage).unwrap();
    let decoder_reads: Vec<String> = node("consistent")["reads"].as_array().unwrap().iter().map(name_of).collect();
    assert_eq!(decoder_reads, ["landcover_2018_proba", "landcover_2019_proba", "landcover_2020_proba"]);
    let agreeing = nodes.iter().position(|n| n["stage"] == "agreeing").unwrap();
    assert_eq!(node("landcover")["after"], serde_json::json!([agreeing]));
    let declared = rasters.iter().filter(|r| r["lifetime"] == "declared").count();
    let assembled = kinds.iter().filter(|k| **k == "assemble").count();
    assert_eq!(rasters.len() - declared, assembled, "every intermediate raster has its assemble node");
    for r in rasters.iter().filter(|r| r["lifetime"] == "declared") {
        let name = r["name"].as_str().unwrap();
        assert!(run.join(format!("{name}.tif")).exists(), "the graph declares {name}.tif, which the run did not publish");
    }
    // The samples CSV follows the shared convention: label names, ids, groups, features.
    let csv = std::fs::read_to_string(run.join("reliable.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[..5], ["label", "id", "group", "row", "col"]);
    assert!(header.contains(&"NDVI:mean"), "{header:?}");
    let samples = sitsflow::samples::Samples::read_csv(&run.join("reliable.csv")).unwrap();
    assert!(samples.len() >= 100, "only {} reliable samples", samples.len());

    let report = json(&run.join("report.json"));
    let purity = &section(&report, "reliable")["summary"]["report"]["purity_table"];
    assert_eq!(purity["columns"][0], "cluster");
    assert_eq!(purity["rows"].as_array().unwrap().len(), 12, "one row per cluster");

    // Every trained model reports held-out metrics, grouped by blocks.
    let metrics = json(&run.join("landcover.metrics.json"));
    assert_eq!(metrics["split"]["grouped_by"], "32 px blocks");
    assert_eq!(metrics["training_years"], serde_json::json!([2018, 2019, 2020]), "a multi-year training set");
    let oa = metrics["held_out"]["metrics"]["overall_accuracy"].as_f64().unwrap();
    assert!(oa > 0.5, "held-out OA {oa}");
    for key in ["kappa", "macro_f1", "classes"] {
        assert!(!metrics["held_out"]["metrics"][key].is_null(), "{key}");
    }
    assert!(metrics["held_out"]["confusion"]["counts"].is_array());

    // Maps against the yearly truth, and the decoder against the true changes.
    let evaluations = report["evaluations"].as_array().unwrap();
    let oa_of = |output: &str| {
        evaluations.iter().find(|e| e["output"] == output).unwrap_or_else(|| panic!("no evaluation of {output}"))["evaluation"]
            ["metrics"]["overall_accuracy"]
            .as_f64()
            .unwrap()
    };
    for year in [2018, 2019, 2020] {
        let (pseudo, landcover, consistent) =
            (oa_of(&format!("pseudo_{year}")), oa_of(&format!("landcover_{year}")), oa_of(&format!("consistent_{year}")));
        eprintln!("{year}: OA pseudo-labels {pseudo:.4}, multi-year forest {landcover:.4}, Markov {consistent:.4}");
        // 64 px, 4 dates a year, a CORINE-like 100 m reference as the only labels: far
        // better than chance (7 classes), not a benchmark.
        assert!(landcover > 0.5, "landcover {year}: OA {landcover}");
    }
    let series = |output: &str| {
        report["scene_stages"].as_array().unwrap().iter().find(|s| s["stage"] == output && s["kind"] == "series evaluation").cloned().unwrap()
    };
    let stable = |output: &str| series(output)["summary"]["stable_where_unchanged"].as_f64().unwrap();
    let kept = |output: &str| series(output)["summary"]["true_changes_kept"].as_f64().unwrap();
    eprintln!(
        "stable where unchanged: landcover {:.4}, consistent {:.4}; true changes kept: landcover {:.4}, consistent {:.4}",
        stable("landcover"),
        stable("consistent"),
        kept("landcover"),
        kept("consistent")
    );
    assert!(stable("consistent") >= stable("landcover"), "the Markov chain must not make unchanged pixels flicker more");
    let consistency = &section(&report, "consistent")["summary"]["consistency"];
    assert_eq!(consistency["columns"].as_array().unwrap().len(), 1 + 2 * 2, "input and decoded per pair of years");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for needle in ["purity table", "Year-to-year consistency", "Held-out OA", "consistency"] {
        assert!(html.contains(needle), "report.html lacks '{needle}'");
    }

    // A later run reloads the stored forest and predicts with it: the same maps.
    let again = demo_pipeline(common::small_demo())
        .replace("name = \"demo\"", "name = \"again\"")
        .replace("dir = \"runs/demo\"", "dir = \"runs/again\"")
        .replace("samples = \"agreeing\"\nholdout = 0.5", "model = \"runs/demo/models/landcover.model\"");
    let (rerun, log) = self::run(project.path(), "again", &again);
    let metrics = json(&rerun.join("landcover.metrics.json"));
    assert!(metrics["training"]["stored_model"].as_str().unwrap().ends_with("runs/demo/models/landcover.model"), "{log}");
    for year in [2018, 2019, 2020] {
        let name = format!("landcover_{year}.tif");
        assert_eq!(class_pixels(&rerun.join(&name)), class_pixels(&run.join(&name)), "{name} differs with the reloaded model");
    }
}

fn class_pixels(path: &Path) -> Vec<u16> {
    let dataset = gdal::Dataset::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let band = dataset.rasterband(1).unwrap();
    band.read_band_as::<u16>().unwrap().data().to_vec()
}

/// Seed 001 in full (configs/demo-lstm.toml): the multi-year agreement set trains the
/// LSTM recipe of models/ inside the run (Python subprocess), which predicts every year
/// through ONNX Runtime and feeds the Markov chain.
#[test]
fn seed001_lstm_trains_on_the_multi_year_set_inside_the_run() {
    let project = common::project_dir();
    let demo = common::small_demo();
    let text = std::fs::read_to_string(common::workspace().join("configs/demo-lstm.toml")).unwrap();
    let pipeline = text
        .replace("../data/demo", &demo.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/demo-lstm\"", "dir = \"runs/demo-lstm\"")
        .replace("k = 40", "k = 12")
        .replace("per_class = 500", "per_class = 150")
        .replace("n_trees = 100", "n_trees = 40")
        .replace("epochs = 40, patience = 8", "epochs = 12, patience = 4")
        .replace("samples = \"agreeing\"", "samples = \"agreeing\"\nholdout = 0.5");
    // The project is a temp folder: `run` points SITSFLOW_MODELS_DIR at the recipe.
    let (run, log) = run(project.path(), "demo-lstm", &pipeline);
    for name in [
        "bands_2018.tif",
        "lstm_2018.tif",
        "lstm_2019.tif",
        "lstm_2020_confidence.tif",
        "lstm.metrics.json",
        "models/lstm/model.onnx",
        "models/lstm/model.json",
        "models/lstm.samples.csv",
        "consistent_2019.tif",
    ] {
        assert!(run.join(name).exists(), "{name} missing; log:\n{log}");
    }
    // The recipe trained on every year's series of the agreeing pixels.
    let samples = sitsflow::samples::Samples::read_csv(&run.join("models/lstm.samples.csv")).unwrap();
    let sidecar = json(&run.join("models/lstm/model.json"));
    assert_eq!(sidecar["arch"], "lstm");
    assert_eq!(sidecar["input"]["bands"].as_array().unwrap().len(), 10);
    assert_eq!(sidecar["input"]["dates"].as_array().unwrap().len(), 4, "the small demo has 4 dates a year");
    let metrics = json(&run.join("lstm.metrics.json"));
    assert_eq!(metrics["training_years"], serde_json::json!([2018, 2019, 2020]), "a multi-year training set");
    assert_eq!(metrics["training"]["recipe"], "lstm");
    assert!(metrics["training"]["training"]["epochs_run"].as_u64().is_some_and(|e| e >= 1), "{}", metrics["training"]);
    let trained_rows = metrics["split"]["train_samples"].as_u64().unwrap() as usize;
    assert_eq!(samples.len(), trained_rows, "the samples CSV holds the training split");
    let report = json(&run.join("report.json"));
    let evaluations = report["evaluations"].as_array().unwrap();
    for year in [2018, 2019, 2020] {
        let oa = evaluations.iter().find(|e| e["output"] == format!("lstm_{year}")).unwrap()["evaluation"]["metrics"]
            ["overall_accuracy"]
            .as_f64()
            .unwrap();
        eprintln!("{year}: LSTM OA {oa:.4}");
        // Seven classes; pseudo-labels from a 100 m reference on 64 px: far above chance.
        assert!(oa > 0.4, "lstm {year}: OA {oa}");
    }
    let manifest = json(&run.join("manifest.json"));
    let stage = manifest["stages"].as_array().unwrap().iter().find(|s| s["id"] == "lstm").unwrap().clone();
    assert_eq!(stage["recipe"], "lstm");
    assert_eq!(stage["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn active_learning_grows_sparse_labels_and_reports_its_learning_curve() {
    let project = common::project_dir();
    let demo = common::small_demo();
    let pipeline = format!(
        r#"schema = 1
name = "active"

[input]
series = "{demo}/series"

# The oracle: the reference map answers each round's queries (here the 2018 truth).
[reference]
path = "{demo}/truth/2018.tif"
classes = "{demo}/classes.csv"

[run]
seed = 3

[[stage]]
id = "clouds"
plugin = "scl-mask@0.1.0"

[[stage]]
id = "features"
plugin = "indices@0.1.0"
per_year = true
params = {{ indices = ["NDVI", "NDWI", "BSI"], per_date = false, stats = ["mean", "p10", "p90"] }}

[[stage]]
id = "sparse"
plugin = "stratified-samples@0.1.0"
params = {{ per_class = 3 }}

[[stage]]
id = "query"
plugin = "uncertainty-query@0.1.0"
params = {{ strategy = "margin", batch = 20 }}

[[stage]]
id = "dense"
plugin = "random-forest@0.1.0"
input = "features"
year = 2018
samples = "sparse"
active_learning = {{ query = "query", rounds = 4, pool = 2000 }}
params = {{ n_trees = 30, seed = 3 }}

[[evaluate]]
output = "dense_2018"
truth = "{demo}/truth/2018.tif"
"#,
        demo = demo.display()
    );
    let (run, log) = run(project.path(), "active", &pipeline);
    let metrics = json(&run.join("dense.metrics.json"));
    let curve = metrics["learning_curve"]["rows"].as_array().unwrap_or_else(|| panic!("no learning curve:\n{log}"));
    assert_eq!(curve.len(), 5, "the first training and 4 query rounds");
    let labels: Vec<u64> = curve.iter().map(|r| r[1].as_u64().unwrap()).collect();
    assert!(labels.windows(2).all(|w| w[1] > w[0]), "labels grow each round: {labels:?}");
    assert!(labels[4] >= labels[0] + 60, "4 batches of 20: {labels:?}");
    let first = curve[0][2].as_f64().unwrap();
    let last = curve[4][2].as_f64().unwrap();
    eprintln!("active learning: OA {first:.4} with {} labels → {last:.4} with {}", labels[0], labels[4]);
    assert!(last > first, "querying must help on this scene: {first} → {last}");
    // Trained on 2018's features, the dense map is predicted for every year.
    assert!(run.join("dense_2018.tif").exists() && run.join("dense_2020_confidence.tif").exists());
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("learning curve"));
}

/// The real Slovenia patch: only NDVI and cloud products exist, so the indices stage
/// computes what it can and says what it cannot; the pipeline still yields a map.
#[test]
fn slovenia_reference_pipeline_runs_on_ndvi_only() {
    let project = common::project_dir();
    let data = common::shared_data().join("slovenia-s2-eolearn");
    let text = std::fs::read_to_string(common::workspace().join("configs/slovenia.toml")).unwrap();
    let text = text
        .replace("../../shared/data/slovenia-s2-eolearn", &data.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/slovenia\"", "dir = \"runs/slovenia\"");
    let (run, log) = run(project.path(), "slovenia", &text);
    assert!(log.contains("indices skipped: NDWI needs B03, B08 but the cube has no B03, B08"), "{log}");
    let report = json(&run.join("report.json"));
    let evaluation = &report["evaluations"].as_array().unwrap().iter().find(|e| e["output"] == "landcover").unwrap()["evaluation"];
    let oa = evaluation["metrics"]["overall_accuracy"].as_f64().unwrap();
    eprintln!("slovenia: landcover OA against the LULC map {oa:.4}");
    assert!(oa > 0.6, "OA {oa}");
}

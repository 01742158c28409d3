//! FG-UNet (seed 004) in a run, on the real Flanders patch with sparse parcel labels
//! (configs/flanders-fg-unet.toml, shortened): the recipe trains on the patch dataset the
//! host writes, the random forest beside it is tested on the same held-out polygons, the
//! report compares them; then the exported network's tiled inference on the host is
//! checked against PyTorch and against itself with other tiles (seams).

use crate::common;
use serde_json::Value;
use sitsflow::inference::{Device, Model};
use sitsflow::raster::{FeatureRaster, Window};
use sitsflow::segment::{Network, SparseLabels};
use std::path::{Path, PathBuf};
use std::process::Command;

fn json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn flanders() -> PathBuf {
    let dir = common::shared_data().join("worldcereal-flanders-s2/00002806639B424A");
    assert!(
        dir.is_dir(),
        "missing test data: {} (the shared data set)",
        dir.display()
    );
    dir
}

/// Class probabilities `[K, H, W]` of the whole scene by `tile`-px tiles.
fn predict(
    model: &Model,
    raster: &FeatureRaster,
    tile: usize,
    overlap: usize,
) -> (Vec<f32>, usize) {
    let network = Network::new(model, raster, None, Some(tile), Some(overlap)).unwrap();
    let (w, h) = (64, 64);
    let k = network.classes.len();
    let mut out = vec![f32::NAN; k * w * h];
    network
        .predict(raster, None, w, h, 4, |t| {
            let n = t.core.pixels();
            for j in 0..k {
                for r in 0..t.core.rows {
                    for c in 0..t.core.cols {
                        out[j * w * h + (t.core.row + r) * w + t.core.col + c] =
                            t.data[j * n + r * t.core.cols + c];
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        out.iter().all(|v| v.is_finite()),
        "every pixel predicted once"
    );
    (out, k)
}

fn argmax(p: &[f32], k: usize, pixels: usize) -> Vec<usize> {
    (0..pixels)
        .map(|i| {
            (0..k)
                .max_by(|&a, &b| p[a * pixels + i].total_cmp(&p[b * pixels + i]))
                .unwrap()
        })
        .collect()
}

#[test]
fn fg_unet_trains_on_sparse_parcels_beside_the_random_forest_and_tiles_without_seams() {
    flanders();
    let project = common::project_dir();
    let shared = common::shared_data().canonicalize().unwrap();
    let text =
        std::fs::read_to_string(common::workspace().join("configs/flanders-fg-unet.toml")).unwrap();
    let pipeline = text
        .replace("../../shared/data", &shared.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/flanders-fg-unet\"", "dir = \"runs/flanders\"")
        .replace(
            "epochs = 60, patience = 12, patch = 64, patches_per_epoch = 128, batch_size = 8",
            "epochs = 3, patience = 3, patch = 32, patches_per_epoch = 16, batch_size = 4, nproc_per_node = 2, hyperparameters = { width = 8, pixel_width = 8 }",
        )
        .replace("n_trees = 100", "n_trees = 20");
    assert!(
        pipeline.contains("epochs = 3"),
        "configs/flanders-fg-unet.toml changed: update this test"
    );
    std::fs::write(project.path().join("pipeline.toml"), &pipeline).unwrap();
    let mut log = String::new();
    for args in [
        &["--quiet", "plugins", "lock", "pipeline.toml"][..],
        &["run", "pipeline.toml"][..],
    ] {
        let out = common::sitsflow_command(project.path())
            .args(args)
            .env("SITSFLOW_MODELS_DIR", common::workspace().join("models"))
            .output()
            .unwrap();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "sitsflow {args:?} failed:\n{log}");
    }
    let run = project.path().join("runs/flanders");
    // The manifest names every output where it is published (a network's model files
    // were once named by their staging path, gone after publishing).
    for o in json(&run.join("manifest.json"))["outputs"].as_array().unwrap() {
        let path = project.path().join(o["path"].as_str().unwrap());
        assert!(path.is_file() && !path.to_string_lossy().contains(".partial"), "the manifest names {}, which is not a published file", path.display());
    }
    for name in [
        "unet.tif",
        "unet_confidence.tif",
        "forest.tif",
        "unet.metrics.json",
        "models/unet/model.onnx",
        "models/unet/model.json",
        "models/unet/dataset.json",
    ] {
        assert!(run.join(name).exists(), "{name} missing; log:\n{log}");
    }

    // The same polygons held out for both, and both assessed on them.
    let (unet, forest) = (
        json(&run.join("unet.metrics.json")),
        json(&run.join("forest.metrics.json")),
    );
    assert_eq!(
        unet["split"], forest["split"],
        "one split for both labellers"
    );
    assert_eq!(unet["split"]["grouped_by"], "polygons");
    assert!(unet["split"]["test_groups"].as_u64().unwrap() >= 1);
    for m in [&unet, &forest] {
        assert_eq!(
            m["held_out"]["metrics"]["samples"], unet["split"]["test_samples"],
            "{m}"
        );
    }
    let report = json(&run.join("report.json"));
    let comparison = &report["comparisons"][0];
    let stages: Vec<&str> = comparison["labellers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["unet", "forest"]);
    assert!(comparison["labellers"][0]["miou"].is_number());
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("Comparison on the same held-out pixels"));
    eprintln!(
        "Flanders (3 epochs): FG-UNet OA {} kappa {}; forest OA {} kappa {}",
        comparison["labellers"][0]["overall_accuracy"],
        comparison["labellers"][0]["kappa"],
        comparison["labellers"][1]["overall_accuracy"],
        comparison["labellers"][1]["kappa"]
    );

    // The export was checked against PyTorch by the recipe, on a real tile.
    let sidecar = json(&run.join("models/unet/model.json"));
    assert_eq!(sidecar["input"]["layout"], "N×C×H×W");
    assert_eq!(sidecar["training"]["processes"], 2, "trained by two processes under torchrun (DDP, gloo)");
    assert_eq!(sidecar["tiling"]["tile"], 512);
    assert_eq!(sidecar["tiling"]["overlap"], 16);
    let diff = sidecar["onnx_check"]["max_abs_diff"]
        .as_f64()
        .unwrap_or_else(|| panic!("no onnx_check: {}", sidecar["onnx_check"]));
    assert!(diff < 1e-4, "ONNX Runtime differs from PyTorch by {diff}");
    assert_eq!(
        unet["training"]["tiling"]["tile"], 96,
        "a 64 px scene is one tile of 64 + 2 × 16 px"
    );
    // The recipe assessed its network on the same held-out parcels with the same
    // definitions (macro F1 over the classes of the reference or the prediction): its
    // metrics.json and the host's agree.
    let recipe = json(&run.join("models/unet/metrics.json"));
    let host = &unet["held_out"]["metrics"];
    assert_eq!(recipe["evaluated_on"], "test", "{recipe}");
    assert_eq!(recipe["samples"], host["samples"], "{recipe}");
    for key in ["overall_accuracy", "kappa", "macro_f1"] {
        let (a, b) = (recipe[key].as_f64().unwrap(), host[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: the recipe says {a}, the host {b}");
    }
    let dataset = json(&run.join("models/unet/dataset.json"));
    assert_eq!(dataset["contract"], "sitsflow-patches/1");
    assert_eq!(
        dataset["split"]["test"].as_array().unwrap().len() as u64,
        unet["split"]["test_groups"].as_u64().unwrap()
    );

    // The host's tiles against PyTorch's on the same scene (the recipe's `predict`).
    let model = Model::load(run.join("models/unet/model.onnx"), Device::Cpu).unwrap();
    let bands = run.join("bands.tif");
    let raster = FeatureRaster::open(&bands).unwrap();
    let (whole, k) = predict(&model, &raster, 96, 16);
    let scratch = tempfile::tempdir().unwrap();
    let patches = scratch.path().join("patches");
    let none = std::collections::BTreeSet::new();
    let labels = SparseLabels {
        pixels: &[],
        labels: &[],
        groups: &[],
        test_groups: &none,
        classes: &[],
        split_rule: "none".into(),
    };
    sitsflow::segment::write_dataset(
        &patches,
        &bands,
        None,
        &[Window {
            row: 0,
            col: 0,
            rows: 64,
            cols: 64,
        }],
        64,
        64,
        &labels,
    )
    .unwrap();
    let probs = scratch.path().join("probs.npy");
    let ws = common::workspace();
    let out = Command::new("python3")
        .args(["-m", "sitsflow_models", "predict", "--model"])
        .arg(run.join("models/unet/model.onnx"))
        .arg("--patches")
        .arg(&patches)
        .args(["--tile", "96", "--overlap", "16", "--out"])
        .arg(&probs)
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                ws.join(".deps/models-python").display(),
                ws.join("models").display()
            ),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let torch: ndarray::Array3<f32> = ndarray_npy::read_npy(&probs).unwrap();
    assert_eq!(torch.shape(), [k, 64, 64]);
    let max = torch
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max < 1e-4,
        "ONNX Runtime on the host differs from PyTorch by {max}"
    );
    eprintln!("host ONNX Runtime vs PyTorch: max |Δp| = {max:.2e}");

    // `model = …` reuses the trained network: the same map, without training.
    let stored = run.join("models/unet/model.onnx");
    let reuse = pipeline
        .replace("dir = \"runs/flanders\"", "dir = \"runs/reuse\"")
        .replace("id = \"unet\"\nrecipe = \"fg-unet\"\ninput = \"bands\"\nsamples = \"labels\"", &format!("id = \"unet\"\nrecipe = \"fg-unet\"\ninput = \"bands\"\nmodel = \"{}\"", stored.display()));
    assert!(reuse.contains("model = "), "configs/flanders-fg-unet.toml changed: update this test");
    std::fs::write(project.path().join("reuse.toml"), &reuse).unwrap();
    for args in [&["--quiet", "plugins", "lock", "reuse.toml"][..], &["run", "reuse.toml"][..]] {
        let out = common::sitsflow_command(project.path()).args(args).env("SITSFLOW_MODELS_DIR", common::workspace().join("models")).output().unwrap();
        assert!(out.status.success(), "sitsflow {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let read_map = |path: &Path| gdal::Dataset::open(path).unwrap().rasterband(1).unwrap().read_band_as::<u16>().unwrap().data().to_vec();
    assert_eq!(read_map(&run.join("unet.tif")), read_map(&project.path().join("runs/reuse/unet.tif")), "the stored network maps the same");
    assert_eq!(json(&project.path().join("runs/reuse/unet.metrics.json"))["training"]["stored_model"], stored.display().to_string());

    // Seams: 48 px tiles (16 px cores) against the one-tile prediction. Pixels next to a
    // core's edge disagree no more often than those inside.
    let (tiled, _) = predict(&model, &raster, 48, 16);
    let (a, b) = (argmax(&whole, k, 4096), argmax(&tiled, k, 4096));
    let (mut border, mut interior) = ((0usize, 0usize), (0usize, 0usize));
    for i in 0..4096 {
        let (r, c) = (i / 64 % 16, i % 64 % 16);
        let at_edge = r.min(15 - r) < 2 || c.min(15 - c) < 2;
        let slot = if at_edge { &mut border } else { &mut interior };
        slot.0 += (a[i] != b[i]) as usize;
        slot.1 += 1;
    }
    let (border_rate, interior_rate) = (
        border.0 as f64 / border.1 as f64,
        interior.0 as f64 / interior.1 as f64,
    );
    eprintln!(
        "tiled vs whole: disagreement {border_rate:.4} at core edges, {interior_rate:.4} inside"
    );
    assert!(
        border_rate <= interior_rate + 0.02,
        "seams: {border_rate} at edges against {interior_rate} inside"
    );
}

//! Tiled FG-UNet inference (seed 004): ONNX Runtime in the host against PyTorch on the
//! same tiles of the same scene, in the same run, and the host's peak memory against the
//! budget.
//!
//! `cargo bench -p sitsflow --bench segment [-- SIZE [BUDGET_MIB]]` (default 2048 px,
//! 1024 MiB): a SIZE² scene of 12 dates × 10 bands (120 channels, the demo's per-year
//! layout) of random reflectance, an untrained FG-UNet of the default widths
//! (`python -m sitsflow_models init`: speed does not depend on the weights), 512 px tiles
//! overlapping by 16 px, on the CPU. PyTorch is timed by the recipe's own `bench --patches`
//! (model loaded, `torch.no_grad`, the same tiles by `predict_scene`), so both sides
//! exclude start-up. Prints px/s of both and the host's peak resident memory during its
//! pass (GDAL's cache and the tiles' share of the budget as a run sets them; the scene,
//! dataset and model are made by a first invocation and reused); writes
//! `target/bench/segment.json`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use gdal::Metadata as _;
use rand::{Rng, SeedableRng};
use sitsflow::inference::{Device, Model};
use sitsflow::raster::FeatureRaster;
use sitsflow::segment::{Network, SparseLabels};
use std::time::Instant;

fn main() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", sitsflow::inference::default_library()) };
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let size: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let budget_mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    // GDAL's block cache as a run with this budget sets it.
    let cache_mib = (budget_mib / 8).clamp(16, 256);
    sitsflow::raster::set_block_cache(cache_mib);
    let workspace = common::workspace();
    let dir = workspace.join(format!("target/bench/segment-{size}"));
    std::fs::create_dir_all(&dir).unwrap();
    let features = dir.join("features.tif");
    let names: Vec<String> = (0..12).flat_map(|t| ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"].map(|b| format!("{b}@t{t:02}"))).collect();
    if !features.exists() {
        eprintln!("writing a {size}² scene of {} channels to {}", names.len(), features.display());
        write_scene(&features, size, &names);
    }
    let patches = dir.join("patches");
    if !patches.join("dataset.json").exists() {
        let none = std::collections::BTreeSet::new();
        let labels = SparseLabels { pixels: &[], labels: &[], groups: &[], test_groups: &none, classes: &[], split_rule: "none".into() };
        let windows = sitsflow::raster::chunk_grid(size, size, 512);
        sitsflow::segment::write_dataset(&patches, &features, None, &windows, size, size, &labels).unwrap();
    }
    let model_dir = dir.join("model");
    let pythonpath = sitsflow::train::python_path(&workspace);
    if !model_dir.join("model.json").exists() {
        let out = std::process::Command::new("python3")
            .args(["-m", "sitsflow_models", "init", "--patches"])
            .arg(&patches)
            .arg("--out")
            .arg(&model_dir)
            .env("PYTHONPATH", &pythonpath)
            .output()
            .expect("python3");
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let onnx = model_dir.join("model.onnx");
    let model = Model::load(&onnx, Device::Cpu).unwrap();
    let raster = FeatureRaster::open(&features).unwrap();
    let mut network = Network::new(&model, &raster, None, Some(512), Some(16)).unwrap();
    // What the fit node gives its tiles: the budget less the engine and caches.
    let tiles_mib = budget_mib.saturating_sub(sitsflow::run::FIXED_OVERHEAD_MIB + cache_mib).max(64);
    let batch = network.fit_budget(size, size, tiles_mib << 20);
    sitsflow::memory::release_free_heap();
    let pixels = size * size;
    let side = network.tiling.side(size, size);

    // Rounds alternate the two sides; each keeps its best.
    let rounds = 2;
    let (mut ort_best, mut torch_best) = (f64::INFINITY, None::<f64>);
    let mut peak = 0f64;
    let resident = sitsflow::memory::resident_mib().unwrap_or(0.0);
    for _ in 0..rounds {
        sitsflow::memory::reset_peak();
        let started = Instant::now();
        let mut checksum = 0f64;
        network.predict(&raster, None, size, size, batch, |t| {
            checksum += t.data[0] as f64;
            Ok(())
        })
        .unwrap();
        ort_best = ort_best.min(started.elapsed().as_secs_f64());
        std::hint::black_box(checksum);
        peak = peak.max(sitsflow::memory::peak_mib().unwrap_or(0.0));
        let out = std::process::Command::new("python3")
            .args(["-m", "sitsflow_models", "bench", "--model"])
            .arg(&onnx)
            .arg("--patches")
            .arg(&patches)
            .args(["--repeat", "1", "--threads", "0", "--tile", &side.to_string(), "--overlap", "16"])
            .env("PYTHONPATH", &pythonpath)
            .output()
            .expect("python3");
        if !out.status.success() {
            eprintln!("PyTorch side skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
        let seconds = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["seconds_best"].as_f64());
        torch_best = match (torch_best, seconds) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let ort = pixels as f64 / ort_best;
    let torch = torch_best.map(|s| pixels as f64 / s);
    println!("FG-UNet tiled inference, {size}² px × {} channels, {side} px tiles overlapping by 16 px, {batch} per batch, CPU", names.len());
    println!("{:<28} {:>12}", "ONNX Runtime (host) px/s", format!("{ort:.0}"));
    println!("{:<28} {:>12}", "PyTorch px/s", torch.map_or("-".into(), |v| format!("{v:.0}")));
    println!("{:<28} {:>12}", "ratio", torch.map_or("-".into(), |v| format!("{:.2}x", ort / v)));
    println!("host peak resident {peak:.0} MiB (at start {resident:.0} MiB), budget {budget_mib} MiB");
    let report = serde_json::json!({
        "bench": "segment",
        "baseline": "PyTorch CPU inference of the same model on the same tiles, same run",
        "size": size, "channels": names.len(), "tile": side, "overlap": 16, "batch": batch,
        "parameters": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(model_dir.join("model.json")).unwrap()).unwrap()["parameters"],
        "ort_pixels_per_s": ort, "torch_pixels_per_s": torch, "ratio": torch.map(|v| ort / v),
        "host_peak_rss_mib": peak, "resident_at_start_mib": resident, "budget_mib": budget_mib,
    });
    let out = workspace.join("target/bench/segment.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
}

/// A scene of random reflectance (0–0.5, 2 % missing), band by band so it is never whole
/// in memory.
fn write_scene(path: &std::path::Path, size: usize, names: &[String]) {
    let driver = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let options = gdal::raster::RasterCreationOptions::from_iter(["TILED=YES", "BIGTIFF=YES"]);
    let dataset = driver.create_with_band_type_with_options::<f32, _>(path, size, size, names.len(), &options).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut plane = vec![0f32; size * size];
    for (k, name) in names.iter().enumerate() {
        for v in plane.iter_mut() {
            *v = if rng.random::<f32>() < 0.02 { f32::NAN } else { rng.random::<f32>() * 0.5 };
        }
        let mut band = dataset.rasterband(k + 1).unwrap();
        band.set_description(name).unwrap();
        let mut buffer = gdal::raster::Buffer::new((size, size), plane.clone());
        band.write((0, 0), (size, size), &mut buffer).unwrap();
    }
}

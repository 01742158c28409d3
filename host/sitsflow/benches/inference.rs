//! ONNX Runtime (CPU) in the host against PyTorch (CPU) on the same model and samples,
//! in the same run: the shipped demo TempCNN and LSTM on the demo check samples,
//! repeated to 20 000 samples.
//!
//! `cargo bench -p sitsflow --bench inference` prints samples per second and writes
//! `target/bench/inference.json`. PyTorch is timed by the recipe's own `bench` command
//! (inside Python, model loaded, `torch.no_grad`), so both sides exclude start-up. Both
//! run batches of `CPU_MAX_BATCH_ITEMS`, with all cores; rounds alternate the two.

#[path = "../../../tests/common/mod.rs"]
mod common;

use sitsflow::inference::{CPU_MAX_BATCH_ITEMS, Device, Model};
use std::time::Instant;

fn main() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", sitsflow::inference::default_library()) };
    }
    let workspace = common::workspace();
    let pretrained = workspace.join("models/pretrained");
    let samples = sitsflow::samples::Samples::read_csv(&pretrained.join("check-samples.csv")).unwrap();
    let (t, b) = (samples.dates().len(), samples.bands().len());
    let target: usize = 20_000;
    let copies = target.div_ceil(samples.len());
    let data: Vec<f32> = (0..copies).flat_map(|_| samples.data.iter().copied()).collect();
    let n = copies * samples.len();
    let repeat = 5;
    let rounds = 3;
    // The same samples for PyTorch: the check file's rows repeated to the same count.
    let csv = std::fs::read_to_string(pretrained.join("check-samples.csv")).unwrap();
    let (header, body) = csv.split_once('\n').unwrap();
    let repeated = std::env::temp_dir().join(format!("sitsflow-bench-{}.csv", std::process::id()));
    std::fs::write(&repeated, format!("{header}\n{}", body.repeat(copies))).unwrap();
    let mut rows = Vec::new();
    println!("ONNX Runtime (host, CPU) vs PyTorch (CPU), {n} samples × {t} dates × {b} bands, best of {rounds} × {repeat}, alternating");
    println!("{:<14} {:>14} {:>14} {:>7}", "model", "ORT samples/s", "torch samples/s", "ratio");
    for arch in ["demo-tempcnn", "demo-lstm"] {
        let path = pretrained.join(arch).join("model.onnx");
        let model = Model::load(&path, Device::Cpu).unwrap();
        // Rounds alternate the two sides, so a noisy neighbour on the machine hits both;
        // each side keeps its best run over all rounds.
        let mut best = f64::INFINITY;
        let mut torch: Option<f64> = None;
        for _ in 0..rounds {
            for _ in 0..repeat {
                let started = Instant::now();
                std::hint::black_box(model.run_batched(&data, &[t, b], 64 << 20).unwrap());
                best = best.min(started.elapsed().as_secs_f64());
            }
            let out = std::process::Command::new("python3")
                .args(["-m", "sitsflow_models", "bench", "--model", path.to_str().unwrap()])
                .args(["--samples", repeated.to_str().unwrap(), "--repeat", &repeat.to_string(), "--threads", "0"])
                .args(["--batch-size", &CPU_MAX_BATCH_ITEMS.to_string()])
                .env("PYTHONPATH", sitsflow::train::python_path(&workspace))
                .output()
                .expect("python3");
            if out.status.success() {
                let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
                let rate = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["samples_per_s_best"].as_f64());
                torch = match (torch, rate) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            } else {
                eprintln!("PyTorch side skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
                break;
            }
        }
        let ort = n as f64 / best;
        println!(
            "{arch:<14} {ort:>14.0} {:>14} {:>7}",
            torch.map_or("-".into(), |v| format!("{v:.0}")),
            torch.map_or("-".into(), |v| format!("{:.2}x", ort / v))
        );
        rows.push(serde_json::json!({ "model": arch, "samples": n, "ort_samples_per_s": ort, "torch_samples_per_s": torch,
                                      "ratio": torch.map(|v| ort / v), "provider": model.provider().to_string() }));
    }
    let _ = std::fs::remove_file(&repeated);
    let report = serde_json::json!({ "bench": "inference", "baseline": "PyTorch CPU inference of the same model, same run", "models": rows });
    let out = workspace.join("target/bench/inference.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
}

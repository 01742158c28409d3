//! k-means fit speed: the `kmeans` component in the sandbox, the same crate called
//! natively, and scikit-learn's `KMeans`, on the same data in the same run.
//!
//! `cargo bench -p sitsflow --bench kmeans` prints a table and writes
//! `target/bench/kmeans.json`. Data: 1,000,000 samples × 10 f32 features, 8 Gaussian
//! blobs (centres drawn N(0, 1.5²) per feature, unit noise, seeded), so they overlap
//! and a fit iterates more than on well-separated blobs. Every fit: k = 8, n_init = 3,
//! max_iter = 300, tol = 1e-4, seed 0, k-means++ init; Lloyd and Elkan.
//!
//! What is timed: the Wasm fit including the copy of the 40 MB matrix into the
//! sandbox; the native fit (the matrix is moved in, as the stage owns it); scikit-learn
//! only around `fit` inside Python (scripts/bench/sklearn_kmeans.py), float32 data, all
//! cores (OpenMP/BLAS threads as threadpoolctl reports them). Each is the median of
//! `REPEATS` fits. Seeds do not carry over between implementations (different
//! generators), so iterations and inertia differ by the start each one draws.

#[path = "../../../tests/common/mod.rs"]
mod common;

use kmeans::KMeans;
use rand::{Rng, SeedableRng};
use sitsflow::runtime::data::FeatureMatrix;
use sitsflow::runtime::{CallContext, Limits, StagePool};
use sitsflow_sdk::{ClustererStage, Stage};
use std::process::Command;
use std::time::Instant;

const N: usize = 1_000_000;
const D: usize = 10;
const K: usize = 8;
const N_INIT: u32 = 3;
const MAX_ITER: u32 = 300;
const TOL: f64 = 1e-4;
const SEED: u64 = 0;
const REPEATS: usize = 3;

/// `N × D` f32, blob `i % K` for sample `i`.
fn blobs() -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut gaussian = move || {
        // Box–Muller; 1 − u keeps the logarithm finite.
        let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let centres: Vec<f64> = (0..K * D).map(|_| 1.5 * gaussian()).collect();
    let mut data = Vec::with_capacity(N * D);
    for i in 0..N {
        let c = &centres[(i % K) * D..(i % K + 1) * D];
        data.extend(c.iter().map(|v| (v + gaussian()) as f32));
    }
    data
}

struct Row {
    what: String,
    seconds: f64,
    iterations: u64,
    inertia: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn params(algorithm: &str) -> String {
    format!(
        r#"{{"k": {K}, "n_init": {N_INIT}, "max_iter": {MAX_ITER}, "tol": {TOL}, "seed": {SEED}, "algorithm": "{algorithm}"}}"#
    )
}

fn from_report(what: String, seconds: Vec<f64>, report: &str) -> Row {
    let r: serde_json::Value = serde_json::from_str(report).expect("the fit report is JSON");
    Row {
        what,
        seconds: median(seconds),
        iterations: r["iterations"].as_u64().unwrap(),
        inertia: r["inertia"].as_f64().unwrap(),
    }
}

fn main() {
    let data = blobs();
    let names: Vec<String> = (0..D).map(|j| format!("f{j}")).collect();
    let matrix = FeatureMatrix { samples: N as u32, names: names.clone(), data: data.clone() };

    let runtime = common::runtime();
    let plugin = runtime.load(&common::component("kmeans")).expect("loading the kmeans component");
    // The sample (40 MB), the labels, k-means++'s candidate distances and Elkan's
    // bounds (n × k f32) fit well inside 512 MiB.
    let limits = Limits { memory_bytes: 512 << 20, deadline_ms: 600_000 };
    let pool = StagePool::new(plugin, limits);
    let context = CallContext { stage: "bench".into(), chunk: "-".into() };
    // Instantiate and touch the stage once on a small matrix, outside the timings.
    let warm = FeatureMatrix { samples: 1000, names: names.clone(), data: data[..1000 * D].to_vec() };
    pool.with(|i| i.fit(&context, &warm, &params("lloyd"))).expect("warm-up fit");

    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("blobs.f32");
    std::fs::write(&raw, data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).expect("writing the matrix");

    let mut rows = Vec::new();
    let mut sklearn_meta = serde_json::Value::Null;
    for algorithm in ["lloyd", "elkan"] {
        let p = params(algorithm);
        let mut report = String::new();
        let wasm: Vec<f64> = (0..REPEATS)
            .map(|_| {
                let t = Instant::now();
                let fitted = pool.with(|i| i.fit(&context, &matrix, &p)).expect("wasm fit");
                let s = t.elapsed().as_secs_f64();
                report = fitted.report;
                s
            })
            .collect();
        rows.push(from_report(format!("wasm {algorithm}"), wasm, &report));

        let native: Vec<f64> = (0..REPEATS)
            .map(|_| {
                let samples = sitsflow_sdk::FeatureMatrix { samples: N, names: names.clone(), data: data.clone() };
                let t = Instant::now();
                let fitted = KMeans::fit(samples, KMeans::parse_params(&p).unwrap()).expect("native fit");
                let s = t.elapsed().as_secs_f64();
                report = fitted.report;
                s
            })
            .collect();
        rows.push(from_report(format!("native {algorithm}"), native, &report));

        let mut command = Command::new("python3");
        command
            .arg(common::workspace().join("scripts/bench/sklearn_kmeans.py"))
            .arg(&raw)
            .args(["--features", &D.to_string(), "--k", &K.to_string(), "--n-init", &N_INIT.to_string()])
            .args(["--max-iter", &MAX_ITER.to_string(), "--tol", &TOL.to_string(), "--seed", &SEED.to_string()])
            .args(["--algorithm", algorithm, "--repeats", &REPEATS.to_string()]);
        let s = common::sklearn_json(command);
        rows.push(Row {
            what: format!("scikit-learn {algorithm}"),
            seconds: median(serde_json::from_value(s["seconds"].clone()).unwrap()),
            iterations: s["iterations"].as_u64().unwrap(),
            inertia: s["inertia"].as_f64().unwrap(),
        });
        sklearn_meta = serde_json::json!({"sklearn": s["sklearn"], "numpy": s["numpy"], "threads": s["threads"]});
    }

    let wasm_lloyd = rows[0].seconds;
    println!(
        "k-means fit, {N} × {D} f32, k = {K}, n_init = {N_INIT}, max_iter = {MAX_ITER}, tol = {TOL}, median of {REPEATS}"
    );
    println!(
        "{:<20} {:>9} {:>6} {:>16} {:>14} {:>14}",
        "fit", "seconds", "iter", "inertia", "sklearn/wasm", "native/wasm"
    );
    let print = |r: &Row, vs_sklearn: &str, vs_native: &str| {
        println!(
            "{:<20} {:>9.3} {:>6} {:>16.1} {:>14} {:>14}",
            r.what, r.seconds, r.iterations, r.inertia, vs_sklearn, vs_native
        );
    };
    for chunk in rows.chunks(3) {
        let (wasm, native, sklearn) = (&chunk[0], &chunk[1], &chunk[2]);
        let ratio = |r: &Row| format!("{:.2}x", r.seconds / wasm.seconds);
        print(wasm, &ratio(sklearn), &ratio(native));
        print(native, "-", "-");
        print(sklearn, "-", "-");
    }
    let json_rows: Vec<_> = rows
        .iter()
        .map(|r| serde_json::json!({"fit": r.what, "seconds": r.seconds, "iterations": r.iterations, "inertia": r.inertia}))
        .collect();
    println!("scikit-learn lloyd / wasm lloyd: {:.2}x (above 1: the sandbox is faster)", rows[2].seconds / wasm_lloyd);

    let report = serde_json::json!({
        "samples": N, "features": D, "k": K, "n_init": N_INIT, "max_iter": MAX_ITER, "tol": TOL, "seed": SEED,
        "repeats": REPEATS,
        "rows": json_rows,
        "ratios": {
            "sklearn_over_wasm_lloyd": rows[2].seconds / rows[0].seconds,
            "native_over_wasm_lloyd": rows[1].seconds / rows[0].seconds,
            "sklearn_over_wasm_elkan": rows[5].seconds / rows[3].seconds,
            "native_over_wasm_elkan": rows[4].seconds / rows[3].seconds,
        },
        "python": sklearn_meta,
    });
    let out = common::workspace().join("target/bench/kmeans.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
}

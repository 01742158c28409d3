//! Sandbox overhead, as ratios to the same stage code run natively in the same run.
//!
//! `cargo bench -p sitsflow --bench runtime` prints a table and writes
//! `target/bench/runtime.json`. Measured: the per-call overhead of a stage call on a
//! tiny chunk, the cost of a fresh instance, and the throughput of moving a 64 MiB
//! cube into a stage and its 32 MiB feature matrix out (template stage
//! `normalized-difference`), each against the native call of the same code; and what
//! a fresh instance per call (`StagePool::with`, what runs do) costs against calling one
//! reused instance.

#[path = "../../../tests/common/mod.rs"]
mod common;

use normalized_difference::NormalizedDifference as Nd;
use sitsflow::runtime::data::Cube;
use sitsflow::runtime::{CallContext, Limits, StagePool};
use sitsflow_sdk::{FeatureStage, Stage};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PARAMS: &str = r#"{"a": "B08", "b": "B04", "name": "NDVI"}"#;

fn cube(dates: usize, rows: usize, cols: usize) -> Cube {
    let n = dates * 2 * rows * cols;
    Cube {
        dates: (0..dates).map(|d| format!("2020-{:02}-01", d % 12 + 1)).collect(),
        bands: vec!["B04".into(), "B08".into()],
        rows: rows as u32,
        cols: cols as u32,
        data: (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect(),
        valid: Vec::new(),
    }
}


/// Median of `runs` timings of `f`, after one warm-up call.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    t[runs / 2]
}

fn main() {
    let runtime = common::runtime();
    let plugin = runtime.load(&common::component("normalized-difference")).expect("loading the template stage");
    let limits = Limits { memory_bytes: 1024 << 20, deadline_ms: 600_000 };
    let pool = StagePool::new(plugin.clone(), limits);
    let context = CallContext { stage: "bench".into(), chunk: "-".into() };
    let params = Nd::parse_params(PARAMS).unwrap();
    let _ = params;

    // 1. Per-call overhead on a 1-pixel, 1-date chunk.
    let tiny = cube(1, 1, 1);
    let calls = 20_000;
    let wasm_call = median(5, || {
        let t = Instant::now();
        for _ in 0..calls {
            black_box(pool.with(|i| i.features(&context, &tiny, PARAMS)).unwrap());
        }
        t.elapsed() / calls
    });
    let native_call = median(5, || {
        let inputs: Vec<_> = (0..calls).map(|_| common::sdk_cube(&tiny)).collect();
        let t = Instant::now();
        for c in inputs {
            black_box(Nd::compute(c, Nd::parse_params(PARAMS).unwrap()).unwrap());
        }
        t.elapsed() / calls
    });

    // 1b. The same calls on one reused instance: what pooling instances would save.
    let mut reused = plugin.instantiate(limits).unwrap();
    let reused_call = median(5, || {
        let t = Instant::now();
        for _ in 0..calls {
            black_box(reused.features(&context, &tiny, PARAMS).unwrap());
        }
        t.elapsed() / calls
    });

    // 2. A fresh instance from the pre-instantiated component.
    let instantiate = median(5, || {
        let t = Instant::now();
        for _ in 0..200 {
            black_box(plugin.instantiate(limits).unwrap());
        }
        t.elapsed() / 200
    });

    // 3. A 64 MiB chunk in (8 dates × 2 bands × 1024 × 1024 f32), 32 MiB out.
    let big = cube(8, 1024, 1024);
    let bytes_in = big.data.len() * 4;
    let bytes_out = 8 * 1024 * 1024 * 4;
    let wasm_big = median(7, || {
        let t = Instant::now();
        black_box(pool.with(|i| i.features(&context, &big, PARAMS)).unwrap());
        t.elapsed()
    });
    let reused_big = median(7, || {
        let t = Instant::now();
        black_box(reused.features(&context, &big, PARAMS).unwrap());
        t.elapsed()
    });
    let native_big = median(7, || {
        let input = common::sdk_cube(&big);
        let t = Instant::now();
        black_box(Nd::compute(input, Nd::parse_params(PARAMS).unwrap()).unwrap());
        t.elapsed()
    });
    let gbps = |d: Duration| (bytes_in + bytes_out) as f64 / d.as_secs_f64() / 1e9;

    println!("sandbox overhead (template stage normalized-difference; baseline: the same code called natively)");
    println!("{:<44} {:>12} {:>12} {:>8}", "measure", "wasm", "native", "ratio");
    println!(
        "{:<44} {:>10.2}µs {:>10.2}µs {:>7.1}x",
        "per call, 1-pixel chunk",
        wasm_call.as_secs_f64() * 1e6,
        native_call.as_secs_f64() * 1e6,
        wasm_call.as_secs_f64() / native_call.as_secs_f64()
    );
    println!(
        "{:<44} {:>10.2}µs {:>10.2}µs {:>7.1}x",
        "  the same on one reused instance",
        reused_call.as_secs_f64() * 1e6,
        native_call.as_secs_f64() * 1e6,
        reused_call.as_secs_f64() / native_call.as_secs_f64()
    );
    println!("{:<44} {:>10.2}µs {:>12} {:>8}", "fresh instance (InstancePre)", instantiate.as_secs_f64() * 1e6, "-", "-");
    println!(
        "{:<44} {:>10.1}ms {:>10.1}ms {:>7.2}x",
        "64 MiB in + 32 MiB out, one call",
        wasm_big.as_secs_f64() * 1e3,
        native_big.as_secs_f64() * 1e3,
        wasm_big.as_secs_f64() / native_big.as_secs_f64()
    );
    println!("{:<44} {:>8.2}GB/s {:>8.2}GB/s", "  throughput (bytes in + out / time)", gbps(wasm_big), gbps(native_big));
    println!(
        "{:<44} {:>10.1}ms {:>10.1}ms {:>7.2}x",
        "  the same on one reused instance",
        reused_big.as_secs_f64() * 1e3,
        native_big.as_secs_f64() * 1e3,
        reused_big.as_secs_f64() / native_big.as_secs_f64()
    );

    let report = serde_json::json!({
        "bench": "runtime",
        "baseline": "native call of the same stage code in the same run",
        "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
        "per_call_us": { "wasm": wasm_call.as_secs_f64() * 1e6, "native": native_call.as_secs_f64() * 1e6,
                         "ratio": wasm_call.as_secs_f64() / native_call.as_secs_f64(),
                         "wasm_reused_instance": reused_call.as_secs_f64() * 1e6 },
        "instantiate_us": instantiate.as_secs_f64() * 1e6,
        "chunk_64mib": { "bytes_in": bytes_in, "bytes_out": bytes_out,
                         "wasm_ms": wasm_big.as_secs_f64() * 1e3, "native_ms": native_big.as_secs_f64() * 1e3,
                         "ratio": wasm_big.as_secs_f64() / native_big.as_secs_f64(),
                         "wasm_gbps": gbps(wasm_big), "native_gbps": gbps(native_big),
                         "wasm_reused_instance_ms": reused_big.as_secs_f64() * 1e3 },
    });
    let out = common::workspace().join("target/bench/runtime.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
}

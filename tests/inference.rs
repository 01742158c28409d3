//! The model runtime on ONNX Runtime: sessions on a graph built byte by byte here (so the
//! runtime is always tested, with or without trained models), batching, the session
//! registry, devices and their fallback, `doctor`, and the `infer` host import end to end
//! through the `onnx-classifier` component.

use crate::common;

use sitsflow::inference::{self, Device, InferenceError, Model, ModelSet, Provider};
use sitsflow::runtime::data::{Cube, StageError};
use sitsflow::runtime::{CallContext, Limits, StageCallError, StagePool};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// A tiny ONNX classifier, written as protobuf by hand: no Python, no `onnx` crate.

/// A protobuf writer just big enough for an ONNX `ModelProto` (wire types 0 and 2).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn int(mut self, field: u64, v: i64) -> Self {
        self.varint(field << 3);
        // int64 fields carry negatives as their two's complement (ten bytes).
        self.varint(v as u64);
        self
    }
    fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, field: u64, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u64, m: Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

// TensorProto.DataType
const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// `TensorProto` with little-endian `raw_data`.
fn initializer(name: &str, elem_type: i64, dims: &[i64], raw: Vec<u8>) -> Pb {
    dims.iter().fold(Pb::default(), |t, &d| t.int(1, d)).int(2, elem_type).str(8, name).bytes(9, &raw)
}

/// `ValueInfoProto` of a float tensor; `None` is the symbolic batch dimension `N`.
fn float_value(name: &str, dims: &[Option<usize>]) -> Pb {
    let shape = dims.iter().fold(Pb::default(), |s, d| {
        s.msg(1, match d {
            Some(v) => Pb::default().int(1, *v as i64),
            None => Pb::default().str(2, "N"),
        })
    });
    let tensor = Pb::default().int(1, FLOAT).msg(2, shape);
    Pb::default().str(1, name).msg(2, Pb::default().msg(1, tensor))
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<Pb>) -> Pb {
    let n = inputs.iter().fold(Pb::default(), |n, i| n.str(1, i)).str(2, output).str(3, output).str(4, op);
    attributes.into_iter().fold(n, |n, a| n.msg(5, a))
}

/// `reflectance [N, T, B]` → NaN as 0 → `[N, T·B]` → `· W + b` → softmax → `probabilities [N, C]`,
/// the interface of the `sitsflow-model/1` exports. `weights` is `[T·B, C]` row-major.
fn tiny_classifier(t: usize, b: usize, weights: &[f32], bias: &[f32]) -> Vec<u8> {
    let c = bias.len();
    assert_eq!(weights.len(), t * b * c);
    let f32_raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let axis = Pb::default().str(1, "axis").int(3, -1).int(20, 2); // AttributeProto, type INT
    let graph = Pb::default()
        .msg(1, node("IsNaN", &["reflectance"], "missing", vec![]))
        .msg(1, node("Where", &["missing", "zero", "reflectance"], "filled", vec![]))
        .msg(1, node("Reshape", &["filled", "flat_shape"], "flat", vec![]))
        .msg(1, node("MatMul", &["flat", "weights"], "scores", vec![]))
        .msg(1, node("Add", &["scores", "bias"], "logits", vec![]))
        .msg(1, node("Softmax", &["logits"], "probabilities", vec![axis]))
        .str(2, "tiny-classifier")
        .msg(5, initializer("zero", FLOAT, &[], f32_raw(&[0.0])))
        // Reshape's 0 keeps the batch dimension, -1 takes the rest.
        .msg(5, initializer("flat_shape", INT64, &[2], [0i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect()))
        .msg(5, initializer("weights", FLOAT, &[(t * b) as i64, c as i64], f32_raw(weights)))
        .msg(5, initializer("bias", FLOAT, &[c as i64], f32_raw(bias)))
        .msg(11, float_value("reflectance", &[None, Some(t), Some(b)]))
        .msg(12, float_value("probabilities", &[None, Some(c)]));
    Pb::default()
        .int(1, 8) // ir_version
        .str(2, "sitsflow-tests")
        .msg(7, graph)
        .msg(8, Pb::default().str(1, "").int(2, 17)) // opset_import: ai.onnx 17
        .0
}

/// Weights of a `T × B → C` tiny classifier, varied enough that every class wins somewhere.
fn weights(t: usize, b: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let w = (0..t * b * c).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let bias = (0..c).map(|k| k as f32 * 0.1 - 0.15).collect();
    (w, bias)
}

/// The softmax of `x · W + b` per item in f64, NaN counted as 0 (what the graph does).
fn reference(x: &[f32], t: usize, b: usize, w: &[f32], bias: &[f32]) -> Vec<f64> {
    let c = bias.len();
    x.chunks(t * b)
        .flat_map(|item| {
            let logits: Vec<f64> = (0..c)
                .map(|k| {
                    let dot: f64 = item.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(j, &v)| v as f64 * w[j * c + k] as f64).sum();
                    dot + bias[k] as f64
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            logits.into_iter().map(move |l| (l - max).exp() / total)
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tolerance, "value {i}: got {g}, want {w}");
    }
}

/// Test inputs: reflectance-like values with a NaN every 17th.
fn series(n: usize, row: usize) -> Vec<f32> {
    (0..n * row).map(|i| if i % 17 == 5 { f32::NAN } else { ((i * 31 % 97) as f32) / 200.0 }).collect()
}

const T: usize = 3;
const B: usize = 2;
const C: usize = 4;

/// Writes a tiny classifier (T = 3, B = 2, C = 4) as `<dir>/<name>` and returns its path.
fn write_tiny(dir: &Path, name: &str) -> PathBuf {
    let (w, bias) = weights(T, B, C);
    let path = dir.join(name);
    std::fs::write(&path, tiny_classifier(T, B, &w, &bias)).expect("writing the tiny model");
    path
}

/// The tiny classifier shared by the tests (one file, so one cached session per device).
fn tiny() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_tiny(dir.path(), "tiny.onnx");
        (dir, path)
    })
    .1
}

// ---------------------------------------------------------------------------------------
// Set-up: the library path and a log capture.

/// Every log line of the process, for the tests that check what the runtime says.
static LOG: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOG.lock().unwrap().push((record.level(), record.target().to_string(), record.args().to_string()));
    }
    fn flush(&self) {}
}

/// First call in every test: points `ORT_DYLIB_PATH` at the workspace's library when it
/// is unset (as `scripts/env.sh` does) and installs the log capture.
fn setup() {
    static SETUP: OnceLock<()> = OnceLock::new();
    SETUP.get_or_init(|| {
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            // SAFETY: every test calls `setup` before anything else, and the others wait on
            // this `OnceLock`, so no other thread of this process reads the environment now.
            unsafe { std::env::set_var("ORT_DYLIB_PATH", inference::default_library()) };
        }
        log::set_boxed_logger(Box::new(Capture)).expect("the only logger of this test binary");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn cuda_usable() -> Result<(), String> {
    let cuda = inference::doctor().cuda;
    if cuda.usable { Ok(()) } else { Err(cuda.reason.unwrap_or_default()) }
}

fn invalid_input(result: Result<impl std::fmt::Debug, InferenceError>) -> String {
    match result {
        Err(InferenceError::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The runtime.

#[test]
fn cpu_session_matches_a_reference_computation() {
    setup();
    let model = Model::load(tiny(), Device::Cpu).unwrap();
    assert_eq!(model.provider(), Provider::Cpu);
    assert_eq!(model.fallback_reason(), None);
    assert_eq!(model.inputs()[0].to_string(), "'reflectance' [N, 3, 2] f32");
    assert_eq!(model.outputs()[0].to_string(), "'probabilities' [N, 4] f32");
    assert!(model.metadata().is_none(), "no sidecar beside tiny.onnx");

    let x = series(5, T * B);
    let out = model.run(vec![("reflectance".into(), vec![5, T, B], x.clone())]).unwrap();
    assert_eq!(out.len(), 1);
    let (name, shape, data) = &out[0];
    assert_eq!((name.as_str(), shape.as_slice()), ("probabilities", [5, C].as_slice()));
    let (w, bias) = weights(T, B, C);
    assert_close(data, &reference(&x, T, B, &w, &bias), 1e-5);
    // Not a degenerate model: the rows do not all pick the same class.
    let winners: std::collections::BTreeSet<usize> = data
        .chunks(C)
        .map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0)
        .collect();
    assert!(winners.len() > 1, "{data:?}");
}

#[test]
fn batched_run_equals_unbatched() {
    setup();
    let model = Model::load(tiny(), Device::Cpu).unwrap();
    let n = 1001;
    let x = series(n, T * B);
    let (whole, whole_shape) = model.run_batched(&x, &[T, B], usize::MAX).unwrap();
    assert_eq!(whole_shape, [n, C]);
    // (6 inputs + 4 outputs) × 4 bytes per item: 7 items per batch, the last one partial.
    let (batched, shape) = model.run_batched(&x, &[T, B], 7 * 40).unwrap();
    assert_eq!(shape, [n, C]);
    assert_close(&batched, &whole.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-6);
    // A budget below one item still makes progress, one item at a time.
    let (single, _) = model.run_batched(&x[..10 * T * B], &[T, B], 0).unwrap();
    assert_eq!(single, whole[..10 * C]);
    let (w, bias) = weights(T, B, C);
    assert_close(&whole, &reference(&x, T, B, &w, &bias), 1e-5);
    // No items, no run: the output's fixed shape.
    assert_eq!(model.run_batched(&[], &[T, B], 1024).unwrap(), (vec![], vec![0, C]));
    let err = invalid_input(model.run_batched(&x[..7], &[T, B], 1024));
    assert!(err.contains("7 values are not a whole number of items of shape [3, 2]"), "{err}");
}

#[test]
fn session_cache_returns_the_same_session() {
    setup();
    let a = Model::load(tiny(), Device::Cpu).unwrap();
    // Another spelling of the same file is the same session.
    let dir = tiny().parent().unwrap();
    let b = Model::load(dir.join(".").join("tiny.onnx"), Device::Cpu).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.path(), tiny().canonicalize().unwrap());
    // A different file is a different session.
    let other_dir = tempfile::tempdir().unwrap();
    let c = Model::load(write_tiny(other_dir.path(), "tiny.onnx"), Device::Cpu).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    // Named twice in a pipeline, loaded once.
    let specs = [
        inference::ModelSpec { name: "first".into(), path: tiny().to_path_buf(), device: Device::Cpu },
        inference::ModelSpec { name: "second".into(), path: tiny().to_path_buf(), device: Device::Cpu },
    ];
    let set = ModelSet::load(&specs).unwrap();
    assert!(Arc::ptr_eq(set.get("first").unwrap(), set.get("second").unwrap()));
    assert_eq!(set.names().collect::<Vec<_>>(), ["first", "second"]);
}

#[test]
fn sidecar_beside_the_model_is_read_and_checked_against_the_graph() {
    setup();
    let sidecar = |dates: usize| {
        let dates: Vec<String> = (0..dates).map(|d| format!("\"2020-0{}-01\"", d + 1)).collect();
        format!(
            r#"{{"contract": "sitsflow-model/1", "arch": "linear", "seed": 1,
                "input": {{"name": "reflectance", "dtype": "float32", "shape": ["N", {}, 2], "layout": "N×T×B",
                          "bands": ["B04", "B08"], "dates": [{}]}},
                "output": {{"name": "probabilities", "classes": [{{"code": 11, "name": "crop"}},
                           {{"code": 21, "name": "forest"}}, {{"code": 31, "name": "water"}}, {{"code": 41, "name": "urban"}}]}},
                "normalisation": {{"mean": [0, 0], "std": [1, 1], "in_graph": true}},
                "opset": 17, "metrics": {{"overall_accuracy": 0.5}}}}"#,
            dates.len(),
            dates.join(", ")
        )
    };
    let good = tempfile::tempdir().unwrap();
    let path = write_tiny(good.path(), "model.onnx");
    std::fs::write(good.path().join("model.json"), sidecar(T)).unwrap();
    let model = Model::load(&path, Device::Cpu).unwrap();
    let metadata = model.metadata().expect("model.json is read");
    assert_eq!(metadata.output.classes.iter().map(|c| c.code).collect::<Vec<_>>(), [11, 21, 31, 41]);
    assert_eq!(metadata.input.bands, ["B04", "B08"]);
    assert_eq!(metadata.opset, Some(17));

    let bad = tempfile::tempdir().unwrap();
    let path = write_tiny(bad.path(), "model.onnx");
    std::fs::write(bad.path().join("model.json"), sidecar(5)).unwrap();
    let err = Model::load(&path, Device::Cpu).unwrap_err();
    assert!(matches!(err, InferenceError::Metadata { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("model.json") && text.contains("input dimension 1 is 5, the graph's 'reflectance' [N, 3, 2] f32 says 3"), "{text}");
}

#[test]
fn invalid_inputs_are_typed_errors_naming_the_problem() {
    setup();
    let model = Model::load(tiny(), Device::Cpu).unwrap();
    let x = series(2, T * B);
    let err = invalid_input(model.run(vec![("pixels".into(), vec![2, T, B], x.clone())]));
    assert!(err.contains("no input 'pixels'") && err.contains("'reflectance' [N, 3, 2] f32"), "{err}");
    let err = invalid_input(model.run(vec![("reflectance".into(), vec![2, T, B], x[..11].to_vec())]));
    assert!(err.contains("shape [2, 3, 2] needs 12 values, 11 were given"), "{err}");
    let err = invalid_input(model.run(vec![("reflectance".into(), vec![3, 2, B], x.clone())]));
    assert!(err.contains("dimension 1 is 2, the model's is 3"), "{err}");
    let err = invalid_input(model.run(vec![("reflectance".into(), vec![2, T * B], x.clone())]));
    assert!(err.contains("has 2 dimensions [2, 6], the model takes [N, 3, 2]"), "{err}");
    let err = invalid_input(model.run(vec![]));
    assert!(err.contains("input 'reflectance' [N, 3, 2] f32 is missing"), "{err}");
    let twice = ("reflectance".to_string(), vec![2, T, B], x);
    let err = invalid_input(model.run(vec![twice.clone(), twice]));
    assert!(err.contains("given twice"), "{err}");
}

#[test]
fn auto_falls_back_to_cpu_here_saying_why_once() {
    setup();
    if let Ok(()) = cuda_usable() {
        eprintln!("skipped: CUDA is usable on this machine, so device auto does not fall back");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.onnx", "b.onnx"] {
        let model = Model::load(write_tiny(dir.path(), name), Device::Auto).unwrap();
        assert_eq!(model.provider(), Provider::Cpu);
        let reason = model.fallback_reason().expect("auto on CPU says why");
        assert!(reason.contains("CUDA") || reason.contains("cuda"), "{reason}");
        let out = model.run(vec![("reflectance".into(), vec![1, T, B], series(1, T * B))]).unwrap();
        assert_eq!(out[0].1, [1, C]);
    }
    let lines: Vec<_> = LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|(level, target, message)| {
            target == "inference" && *level <= log::Level::Info && message.contains("device auto: models run on CPU")
        })
        .cloned()
        .collect();
    assert_eq!(lines.len(), 1, "one line per process says why auto runs on CPU: {lines:?}");
    eprintln!("the fallback line: {:?}", lines[0]);
}

#[test]
fn cuda_device_fails_here_with_a_clear_reason() {
    setup();
    if let Ok(()) = cuda_usable() {
        eprintln!("skipped: CUDA is usable on this machine (see cuda_session_matches_cpu_when_a_gpu_is_present)");
        return;
    }
    let err = Model::load(tiny(), Device::Cuda).unwrap_err();
    assert!(matches!(err, InferenceError::CudaUnavailable(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("the CUDA execution provider is not usable here: "), "{text}");
    let doctor = inference::doctor();
    if !doctor.onnxruntime.providers.iter().any(|p| p == "CUDAExecutionProvider") {
        assert!(text.contains("built without the CUDA execution provider") && text.contains("scripts/setup-gpu.sh"), "{text}");
    }
    eprintln!("{text}");
}

#[test]
fn cuda_session_matches_cpu_when_a_gpu_is_present() {
    setup();
    if let Err(reason) = cuda_usable() {
        eprintln!("skipped: no usable CUDA here: {reason}");
        return;
    }
    let gpu = Model::load(tiny(), Device::Cuda).unwrap();
    assert_eq!(gpu.provider(), Provider::Cuda);
    let cpu = Model::load(tiny(), Device::Cpu).unwrap();
    let x = series(300, T * B);
    let (on_gpu, _) = gpu.run_batched(&x, &[T, B], 1 << 20).unwrap();
    let (on_cpu, _) = cpu.run_batched(&x, &[T, B], 1 << 20).unwrap();
    assert_close(&on_gpu, &on_cpu.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-4);
}

#[test]
fn doctor_reports_the_library_its_providers_and_cuda() {
    setup();
    let d = inference::doctor();
    assert_eq!(d.onnxruntime.error, None);
    let library = d.onnxruntime.library.as_ref().expect("the library loaded");
    assert!(library.is_file(), "{}", library.display());
    let version = d.onnxruntime.version.as_deref().unwrap();
    assert!(version.starts_with("1."), "{version}");
    if library.ends_with("libonnxruntime.so.1.31.1") {
        assert_eq!(version, "1.31.1");
    }
    assert!(d.onnxruntime.providers.iter().any(|p| p == "CPUExecutionProvider"), "{:?}", d.onnxruntime.providers);
    assert_eq!(d.cuda.libraries.len(), inference::CUDA_LIBRARIES.len());
    assert_eq!(d.cuda.usable, d.cuda.reason.is_none());
    assert!(d.cpu.threads >= 1);
    let text = d.to_string();
    assert!(text.starts_with(&format!("ONNX Runtime  {version} at {}", library.display())), "{text}");
    assert!(text.contains(if d.cuda.usable { "CUDA          usable" } else { "CUDA          not usable: " }), "{text}");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["onnxruntime"]["version"], version);
    eprintln!("{text}");
}

#[test]
fn demo_tempcnn_runs_when_present() {
    setup();
    let path = common::workspace().join("models/pretrained/demo-tempcnn/model.onnx");
    if !path.is_file() {
        eprintln!("skipped: {} does not exist yet (trained and exported by models/)", path.display());
        return;
    }
    let model = Model::load(&path, Device::Cpu).unwrap();
    let metadata = model.metadata().expect("the demo model has its model.json");
    let dims: Vec<usize> = model.inputs()[0].dims.iter().skip(1).map(|d| d.expect("fixed T and B")).collect();
    let classes = metadata.output.classes.len();
    let n = 257;
    let x = series(n, dims.iter().product());
    let (probabilities, shape) = model.run_batched(&x, &dims, 64 * 1024).unwrap();
    assert_eq!(shape, [n, classes]);
    for row in probabilities.chunks(classes) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4 && row.iter().all(|p| p.is_finite()), "{row:?}");
    }

    // The same model through the sandbox: a cube in the model's band order over its dates
    // gives the probabilities of the host-side run on the same series.
    let (t, b) = (dims[0], dims[1]);
    let (rows, cols) = (16usize, 16usize);
    let pixels = rows * cols;
    let x = series(pixels, t * b);
    let mut data = vec![0.0; pixels * t * b];
    for p in 0..pixels {
        for d in 0..t {
            for band in 0..b {
                data[(d * b + band) * pixels + p] = x[(p * t + d) * b + band];
            }
        }
    }
    let chunk = Cube {
        dates: metadata.input.dates.clone(),
        bands: metadata.input.bands.clone(),
        rows: rows as u32,
        cols: cols as u32,
        data,
        valid: Vec::new(),
    };
    let mut set = ModelSet::default();
    set.insert("demo", model.clone());
    let pool = classifier_pool(Arc::new(set));
    let params = serde_json::json!({
        "model": "demo",
        "bands": metadata.input.bands,
        "classes": metadata.output.classes.iter().map(|c| c.code).collect::<Vec<_>>(),
        "batch": 100,
    });
    let features = pool.with(|i| i.features(&context(), &chunk, &params.to_string())).unwrap();
    let (host_side, _) = model.run_batched(&x, &dims, 1 << 20).unwrap();
    assert_close(&features.data, &host_side.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-5);
}

// ---------------------------------------------------------------------------------------
// The `infer` host import, through real components.

fn context() -> CallContext {
    CallContext { stage: "classify".into(), chunk: "chunk 0".into() }
}

/// `dates` dates of bands B02, B04, B08 over `rows × cols`, with date 1 invalid at every
/// third pixel.
fn cube(dates: usize, rows: usize, cols: usize) -> Cube {
    let bands = ["B02", "B04", "B08"];
    let n = rows * cols;
    let data = (0..dates * bands.len() * n).map(|i| ((i * 13 % 89) as f32) / 150.0).collect();
    let valid = (0..dates * n).map(|i| u8::from(!(i / n == 1 && (i % n) % 3 == 0))).collect();
    Cube {
        dates: (0..dates).map(|d| format!("2021-{:02}-01", d + 1)).collect(),
        bands: bands.iter().map(|b| b.to_string()).collect(),
        rows: rows as u32,
        cols: cols as u32,
        data,
        valid,
    }
}

/// The `[n, T, B]` series the stage should build: bands B08, B04; masked dates NaN.
fn expected_series(cube: &Cube) -> Vec<f32> {
    let n = (cube.rows * cube.cols) as usize;
    let t = cube.dates.len();
    let mut x = Vec::new();
    for p in 0..n {
        for d in 0..t {
            for band in [2, 1] {
                let valid = cube.valid[d * n + p] != 0;
                x.push(if valid { cube.data[(d * 3 + band) * n + p] } else { f32::NAN });
            }
        }
    }
    x
}

fn classifier_pool(models: Arc<ModelSet>) -> StagePool {
    let plugin = common::runtime().load(&common::component("onnx-classifier")).expect("loading onnx-classifier");
    assert_eq!(plugin.info().kind_name(), "features");
    StagePool::with_models(plugin, Limits::default(), models)
}

fn tiny_set() -> Arc<ModelSet> {
    let mut set = ModelSet::default();
    set.insert("tiny", Model::load(tiny(), Device::Cpu).unwrap());
    Arc::new(set)
}

const PARAMS: &str = r#"{"model": "tiny", "bands": ["B08", "B04"], "classes": [11, 21, 31, 41], "batch": 5}"#;

#[test]
fn infer_import_runs_the_model_inside_onnx_classifier() {
    setup();
    let pool = classifier_pool(tiny_set());
    let chunk = cube(T, 3, 4);
    // 12 pixels in batches of 5: three infer calls, the last one partial.
    let features = pool.with(|i| i.features(&context(), &chunk, PARAMS)).unwrap();
    assert_eq!(features.names, ["p:11", "p:21", "p:31", "p:41"]);
    assert_eq!(features.samples, 12u32);
    let (w, bias) = weights(T, B, C);
    assert_close(&features.data, &reference(&expected_series(&chunk), T, B, &w, &bias), 1e-5);
    // Masking changes the answer: the masked pixels differ from the same data unmasked.
    let mut unmasked = chunk.clone();
    unmasked.valid.clear();
    let open = pool.with(|i| i.features(&context(), &unmasked, PARAMS)).unwrap();
    assert!(open.data[..C] != features.data[..C], "pixel 0 is masked on date 1");
    assert_eq!(open.data[C..2 * C], features.data[C..2 * C], "pixel 1 is not");
}

#[test]
fn infer_errors_reach_the_stage_typed() {
    setup();
    let stage_error = |r: Result<_, StageCallError>| match r {
        Err(StageCallError::Stage(e)) => e,
        other => panic!("expected a stage error, got {other:?}"),
    };
    let pool = classifier_pool(tiny_set());
    // A model the pipeline does not declare: the host says unknown-model, the stage names its parameter.
    let params = PARAMS.replace("\"tiny\"", "\"nope\"");
    match stage_error(pool.with(|i| i.features(&context(), &cube(T, 2, 2), &params))) {
        StageError::InvalidParams(m) => assert!(m.contains("'nope' is not declared (this stage has tiny)"), "{m}"),
        other => panic!("{other:?}"),
    }
    // One date too many for the model's T: the host's shape check, explained by the stage.
    match stage_error(pool.with(|i| i.features(&context(), &cube(T + 1, 2, 2), PARAMS))) {
        StageError::InvalidInput(m) => {
            assert!(m.contains("dimension 1 is 4, the model's is 3") && m.contains("4 dates"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // No models at all for this stage: unsupported.
    let bare = classifier_pool(ModelSet::empty());
    match stage_error(bare.with(|i| i.features(&context(), &cube(T, 2, 2), PARAMS))) {
        StageError::Unsupported(m) => assert!(m.contains("no models are declared for this stage"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The import's own variant, seen by a stage that calls it with a made-up name.
    let plugin = common::runtime().load(&common::component("fixture-snoop")).unwrap();
    let snoop = StagePool::with_models(plugin, Limits::default(), tiny_set());
    let params = format!(r#"{{"path": {:?}}}"#, common::workspace().join("Cargo.toml").display().to_string());
    let seen = snoop.with(|i| i.features(&context(), &cube(1, 1, 1), &params)).unwrap().names;
    assert!(seen[5].starts_with("infer:unknown model: 'any-model' is not declared"), "{}", seen[5]);
}

/// Throughput of the runtime alone and through the sandbox, on a linear model of the
/// demo's size (36 dates × 10 bands → 8 classes). `cargo test -p sitsflow --test integration inference:: -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it on purpose"]
fn throughput_on_a_linear_model() {
    setup();
    let (t, b, c) = (36, 10, 8);
    let w: Vec<f32> = (0..t * b * c).map(|i| ((i * 7 % 11) as f32 - 5.0) / 40.0).collect();
    let bias = vec![0.0; c];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linear.onnx");
    std::fs::write(&path, tiny_classifier(t, b, &w, &bias)).unwrap();
    let model = Model::load(&path, Device::Cpu).unwrap();

    let n = 200_000;
    let x = series(n, t * b);
    model.run_batched(&x[..4096 * t * b], &[t, b], 16 << 20).unwrap();
    let started = Instant::now();
    let (probabilities, _) = model.run_batched(&x, &[t, b], 16 << 20).unwrap();
    let runtime_s = started.elapsed().as_secs_f64();
    for row in probabilities.chunks(c).step_by(997) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    let mut set = ModelSet::default();
    set.insert("linear", model);
    let pool = classifier_pool(Arc::new(set));
    let bands: Vec<String> = (0..b).map(|i| format!("\"X{i}\"")).collect();
    let params = format!(
        r#"{{"model": "linear", "bands": [{}], "classes": [1, 2, 3, 4, 5, 6, 7, 8], "batch": 4096}}"#,
        bands.join(", ")
    );
    let (rows, cols) = (128usize, 128usize);
    let pixels = rows * cols;
    let chunk = Cube {
        dates: (0..t).map(|d| format!("2021-01-{:02}", d % 28 + 1)).collect(),
        bands: (0..b).map(|i| format!("X{i}")).collect(),
        rows: rows as u32,
        cols: cols as u32,
        data: series(pixels, t * b),
        valid: Vec::new(),
    };
    pool.with(|i| i.features(&context(), &chunk, &params)).unwrap();
    let started = Instant::now();
    let features = pool.with(|i| i.features(&context(), &chunk, &params)).unwrap();
    let sandbox_s = started.elapsed().as_secs_f64();
    assert_eq!(features.samples as usize, pixels);
    // The model's share of the sandboxed call: the same pixels in the same batches, host side.
    let started = Instant::now();
    let linear = pool.models().get("linear").unwrap();
    linear.run_batched(&chunk.data, &[t, b], 4096 * (t * b + c) * 4).unwrap();
    let model_s = started.elapsed().as_secs_f64();
    eprintln!(
        "linear {t}×{b}→{c}: run_batched {:.0} px/s ({n} px in {runtime_s:.3} s); \
         onnx-classifier through infer {:.0} px/s ({pixels} px in {sandbox_s:.3} s, of which the model {model_s:.3} s)",
        n as f64 / runtime_s,
        pixels as f64 / sandbox_s
    );

    let demo = common::workspace().join("models/pretrained/demo-tempcnn/model.onnx");
    if !demo.is_file() {
        eprintln!("demo TempCNN: skipped, {} does not exist", demo.display());
        return;
    }
    let model = Model::load(&demo, Device::Cpu).unwrap();
    let dims: Vec<usize> = model.inputs()[0].dims.iter().skip(1).map(|d| d.unwrap()).collect();
    let n = 20_000;
    let x = series(n, dims.iter().product());
    model.run_batched(&x[..1000 * dims[0] * dims[1]], &dims, 4 << 20).unwrap();
    let started = Instant::now();
    let (probabilities, shape) = model.run_batched(&x, &dims, 4 << 20).unwrap();
    let demo_s = started.elapsed().as_secs_f64();
    assert_eq!(shape[0], n);
    assert!(probabilities.iter().all(|p| p.is_finite()));
    eprintln!("demo TempCNN {dims:?}: run_batched {:.0} px/s ({n} px in {demo_s:.3} s)", n as f64 / demo_s);
}

/// Reads a probabilities CSV written by `python -m sitsflow_models predict`
/// (`row,id,predicted,<code>…`): the class codes and `rows × classes` values.
pub fn read_probabilities(path: &Path) -> (Vec<u16>, Vec<f32>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let codes: Vec<u16> = header[3..].iter().map(|c| c.parse().unwrap()).collect();
    let values = lines.flat_map(|l| l.split(',').skip(3).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>()).collect();
    (codes, values)
}

/// The host's ONNX Runtime inference of the shipped demo models reproduces PyTorch's class
/// probabilities (written by the recipe's `predict` into check-probabilities.csv) on the
/// check samples, missing values included.
#[test]
fn host_inference_reproduces_pytorch_on_the_demo_check_samples() {
    setup();
    let pretrained = common::workspace().join("models/pretrained");
    let samples = sitsflow::samples::Samples::read_csv(&pretrained.join("check-samples.csv")).unwrap();
    assert!(samples.data.iter().any(|v| v.is_nan()), "the check set has missing values");
    for arch in ["demo-tempcnn", "demo-lstm"] {
        let model = Model::load(&pretrained.join(arch).join("model.onnx"), Device::Cpu).unwrap();
        let (t, b) = (samples.dates().len(), samples.bands().len());
        let (ours, shape) = model.run_batched(&samples.data, &[t, b], 1 << 20).unwrap();
        let (codes, theirs) = read_probabilities(&pretrained.join(arch).join("check-probabilities.csv"));
        assert_eq!(shape, [samples.len(), codes.len()]);
        let classes: Vec<u16> = model.metadata().unwrap().output.classes.iter().map(|c| c.code).collect();
        assert_eq!(classes, codes);
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{arch}: max |ONNX Runtime − PyTorch| = {max:.2e} over {} samples", samples.len());
        assert!(max < 1e-4, "{arch}: {max}");
    }
}

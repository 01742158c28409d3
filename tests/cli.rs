//! The `sitsflow` command end to end: exit codes, messages, runs on generated data.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn sitsflow(args: &[&str], cwd: &Path) -> Output {
    common::sitsflow_command(cwd).args(args).output().expect("running sitsflow")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A project folder with the template plugin installed and a pipeline over the small demo.
fn project(stages: &str) -> tempfile::TempDir {
    let dir = common::project_dir();
    let series = common::small_demo().join("series");
    let pipeline = format!(
        "schema = 1\nname = \"cli\"\n\n[input]\nseries = {:?}\n\n[run]\nchunk_size = 32\n\n{stages}",
        series.display().to_string()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    dir
}

const NDVI: &str = "[[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = { a = \"B08\", b = \"B04\", name = \"NDVI\" }\n";

#[test]
fn validate_lock_and_run_end_to_end() {
    let dir = project(NDVI);
    let out = sitsflow(&["--quiet", "validate", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(4), "no lockfile yet: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("sitsflow plugins lock pipeline.toml"), "{}", text(&out.stderr));

    let out = sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "--quiet prints only errors");
    let out = sitsflow(&["--quiet", "validate", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stage 1 ndvi features normalized-difference@0.1.0"));

    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_dir = dir.path().join("runs/cli");
    let ndvi = gdal::Dataset::open(run_dir.join("ndvi.tif")).expect("ndvi.tif opens");
    assert_eq!(ndvi.raster_size(), (64, 64));
    assert_eq!(ndvi.raster_count(), 12, "one band per date");
    use gdal::Metadata;
    let first = ndvi.rasterband(1).unwrap().description().unwrap();
    assert!(first.starts_with("NDVI@2018-01-"), "band names carry index and date: {first}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 12);
    assert_eq!(manifest["stages"][0]["plugin"], "normalized-difference@0.1.0");
    assert_eq!(manifest["outputs"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["chunks"], 4);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&run_dir).unwrap().filter_map(|e| {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        name.contains(".partial-").then_some(name)
    }).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_changed_plugin_is_refused_until_relocked() {
    let dir = project(NDVI);
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    // Append a custom section: the component still loads, but its hash changes.
    let installed = dir.path().join("plugins/normalized-difference@0.1.0.wasm");
    let mut bytes = std::fs::read(&installed).unwrap();
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b't', b'e', b's', b't']);
    std::fs::write(&installed, bytes).unwrap();

    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("stage 'ndvi': normalized-difference@0.1.0 has changed"), "{err}");
    assert!(!dir.path().join("runs/cli/ndvi.tif").exists());
    let out = sitsflow(&["--quiet", "plugins", "verify", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(4));

    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A cached component that fails its integrity check is the cache's fault, not the
/// pipeline's: its own exit code and message, no `file:line:column` prefix.
#[test]
fn a_tampered_component_cache_exits_5_naming_the_cache_not_the_pipeline() {
    let dir = project(NDVI);
    let cache = tempfile::tempdir().unwrap();
    let validate = || {
        common::sitsflow_command(dir.path()).env("SITSFLOW_CACHE_DIR", cache.path()).args(["--quiet", "validate", "pipeline.toml"]).output().unwrap()
    };
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    assert!(validate().status.success(), "{}", text(&validate().stderr));
    // Every cached component's bytes changed: its signature no longer matches.
    for entry in std::fs::read_dir(cache.path().join("components")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let out = validate();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: the component cache: compiling plugin ") && err.contains("the cached component "), "{err}");
    assert!(err.contains("does not carry this machine's signature") && !err.contains("pipeline.toml:"), "{err}");
}

/// A `name@version` names one build: `plugins install` refuses other bytes under an
/// installed name (a stale build was once installed that way) unless `--force`.
#[test]
fn installing_other_bytes_under_an_installed_name_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let template = common::component("normalized-difference");
    let install = |extra: &[&str], file: &Path| {
        let mut args = vec!["plugins", "install", "--dir", "plugins"];
        args.extend_from_slice(extra);
        common::sitsflow_command(dir.path()).args(&args).arg(file).output().unwrap()
    };
    assert!(install(&[], &template).status.success());
    let out = install(&[], &template);
    assert!(out.status.success(), "the same bytes again: {}", text(&out.stderr));
    // The same component with a custom section appended: valid, same name@version, other bytes.
    let other = dir.path().join("rebuilt.wasm");
    let mut bytes = std::fs::read(&template).unwrap();
    bytes.extend_from_slice(&[0x00, 0x03, 0x01, b't', b'1']);
    std::fs::write(&other, &bytes).unwrap();
    let out = install(&[], &other);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("already holds normalized-difference@0.1.0 with other bytes") && err.contains("--force"), "{err}");
    let installed = dir.path().join("plugins/normalized-difference@0.1.0.wasm");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&template).unwrap(), "the installed build is untouched");
    assert!(install(&["--force"], &other).status.success());
    assert_eq!(std::fs::read(&installed).unwrap(), bytes);
}

#[test]
fn invalid_pipeline_exits_3_with_file_line_column() {
    let dir = project(&format!("{NDVI}colour = \"blue\"\n"));
    let out = sitsflow(&["--quiet", "validate", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: pipeline.toml:14:1: unknown field `colour`"), "{err}");
    assert!(err.contains("14 | colour = \"blue\""), "the excerpt shows the line: {err}");
}

#[test]
fn failing_stage_writes_nothing_and_keeps_previous_outputs() {
    let spin = common::component("fixture-spin");
    let stage = format!("[[stage]]\nid = \"ndvi\"\npath = {:?}\ndeadline_ms = 50\n", spin.display().to_string());
    let dir = project(&stage);
    // A previous run's output must survive a failed run untouched.
    let previous = dir.path().join("runs/cli/ndvi.tif");
    std::fs::create_dir_all(previous.parent().unwrap()).unwrap();
    std::fs::write(&previous, b"previous run").unwrap();
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("4 of 4 chunks failed; no output was written (the 0 chunks done are kept in"), "{err}");
    assert!(err.contains("stage 'ndvi' (fixture-spin@0.1.0) on chunk 0 (rows 0..32, cols 0..32): interrupted after its deadline of 50 ms"), "{err}");
    assert_eq!(std::fs::read(&previous).unwrap(), b"previous run");
    assert!(!dir.path().join("runs/cli/manifest.json").exists());
    // Besides the previous output, only the hidden working folder (for resuming) exists.
    let mut names: Vec<_> =
        std::fs::read_dir(previous.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [".partial", ".sitsflow.lock", "ndvi.tif"]);
}

#[test]
fn inspect_prints_name_version_kind_and_schema() {
    let dir = common::project_dir();
    let out = sitsflow(&["plugins", "inspect", "normalized-difference@0.1.0", "--dir", "plugins"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in ["name     normalized-difference", "version  0.1.0", "kind     features", "wit      sitsflow:stage@0.2.1", "footprint depends on parameters it needs (with {} it rejected its parameters: missing field `a`", "\"required\": ["] {
        assert!(shown.contains(line), "missing {line:?} in:\n{shown}");
    }
    let out = sitsflow(&["plugins", "inspect", "spectral-mask@0.1.0", "--dir", "plugins"], dir.path());
    assert!(text(&out.stdout).contains("footprint tile 0 px, halo 13 px, scale 1 (with default parameters)"), "{}", text(&out.stdout));
    let out = sitsflow(&["plugins", "list", "--dir", "plugins"], dir.path());
    let listed = text(&out.stdout);
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let mut shipped: Vec<String> = common::shipped().iter().map(|p| format!("{p}@0.1.0")).collect();
    shipped.sort();
    assert_eq!(names, shipped, "{listed}");
    assert!(listed.contains("scl-mask@0.1.0                       cloud-mask"), "{listed}");
    let out = sitsflow(&["plugins", "inspect", "nothing@1.0.0", "--dir", "plugins"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown plugin 'nothing@1.0.0'"));
}

/// Regression guard for resuming: a run killed in the middle (SIGKILL, no chance to
/// clean up) leaves no finished-looking file, and the rerun takes over the chunks done
/// and produces exactly what an uninterrupted run produces.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn an_interrupted_run_leaves_no_finished_file_and_resumes() {
    let slow = common::component("fixture-slow-mean");
    let stage = format!(
        "[[stage]]\nid = \"mean\"\npath = {:?}\nparams = {{ work = 40 }}\n",
        slow.display().to_string()
    );
    let pipeline = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
        std::fs::write(dir.join("pipeline.toml"), text.replace("chunk_size = 32", "chunk_size = 16\nworkers = 1")).unwrap();
    };
    let dir = project(&stage);
    pipeline(dir.path());
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());

    // Held (alive) after its third chunk is journaled, then killed: no race with its end.
    let mut run = common::sitsflow_command(dir.path());
    run.args(["--quiet", "run", "pipeline.toml"]);
    let mut child = common::spawn_held(run, "run::chunk_written", 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dir.path().join("runs/cli/mean.tif").exists(), "an interrupted run must not leave a finished-looking output");
    assert!(!dir.path().join("runs/cli/manifest.json").exists());

    let out = sitsflow(&["run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("resuming: ") && log.contains(" of 16 chunks were done by an interrupted run"), "{log}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/cli/manifest.json")).unwrap()).unwrap();
    let resumed = manifest["resumed_chunks"].as_u64().unwrap();
    assert!((3..16).contains(&resumed), "resumed {resumed}");
    assert!(!dir.path().join("runs/cli/.partial").exists(), "the working folder is removed after success");

    // The same pipeline run in one go gives the same bytes.
    let fresh = project(&stage);
    pipeline(fresh.path());
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], fresh.path()).status.success());
    assert!(sitsflow(&["--quiet", "run", "pipeline.toml"], fresh.path()).status.success());
    let a = std::fs::read(dir.path().join("runs/cli/mean.tif")).unwrap();
    let b = std::fs::read(fresh.path().join("runs/cli/mean.tif")).unwrap();
    assert!(a == b, "resumed and uninterrupted outputs differ");
}

#[test]
fn reference_map_is_aligned_mapped_and_written_as_a_class_cog() {
    let dir = project(NDVI);
    let demo = common::small_demo();
    let pipeline = std::fs::read_to_string(dir.path().join("pipeline.toml")).unwrap();
    let nomenclature = common::workspace().join("configs/nomenclature/clc-to-seed001.toml");
    let pipeline = pipeline.replace(
        "[run]",
        &format!(
            "[reference]\npath = {:?}\nnomenclature = {:?}\n\n[run]",
            demo.join("reference.tif").display().to_string(),
            nomenclature.display().to_string()
        ),
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reference = gdal::Dataset::open(dir.path().join("runs/cli/reference.tif")).unwrap();
    assert_eq!(reference.raster_size(), (64, 64), "the 100 m reference is on the 10 m grid");
    let labels = reference.rasterband(1).unwrap().read_as::<u16>((0, 0), (64, 64), (64, 64), None).unwrap();
    let truth = gdal::Dataset::open(demo.join("truth/2018.tif")).unwrap();
    let truth = truth.rasterband(1).unwrap().read_as::<u16>((0, 0), (64, 64), (64, 64), None).unwrap();
    // The coarse reference agrees with the fine truth on most pixels, not all (it is coarse).
    let agree = labels.data().iter().zip(truth.data()).filter(|(a, b)| a == b).count();
    assert!(agree > 64 * 64 * 6 / 10, "agreement {agree} of 4096");
    assert!(agree < 64 * 64, "a 100 m map cannot match 10 m truth everywhere");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/cli/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["reference"]["nomenclature"], "clc-to-seed001");
    assert_eq!(manifest["reference"]["unmapped_codes"].as_array().unwrap().len(), 0);
}

#[test]
fn a_halo_gives_stages_context_without_changing_per_pixel_outputs() {
    let plain = project(NDVI);
    let with_halo = project(NDVI);
    let pipeline = std::fs::read_to_string(with_halo.path().join("pipeline.toml")).unwrap();
    std::fs::write(with_halo.path().join("pipeline.toml"), pipeline.replace("chunk_size = 32", "chunk_size = 32\nhalo = 8")).unwrap();
    for dir in [&plain, &with_halo] {
        assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
        let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let a = std::fs::read(plain.path().join("runs/cli/ndvi.tif")).unwrap();
    let b = std::fs::read(with_halo.path().join("runs/cli/ndvi.tif")).unwrap();
    assert!(a == b, "the halo must be cropped away exactly");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(with_halo.path().join("runs/cli/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["halo"], 8);
}

#[test]
fn two_runs_of_the_same_pipeline_give_byte_identical_outputs() {
    let a = project(NDVI);
    let b = project(NDVI);
    for dir in [&a, &b] {
        assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
        let out = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("runs/cli/ndvi.tif")).unwrap();
    assert!(read(&a) == read(&b), "outputs differ between identical runs");
    let manifest = |d: &tempfile::TempDir| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.path().join("runs/cli/manifest.json")).unwrap()).unwrap()
    };
    assert_eq!(manifest(&a)["outputs"][0]["sha256"], manifest(&b)["outputs"][0]["sha256"]);
}

#[test]
fn bench_records_runs_and_compares_two_records() {
    let dir = project(NDVI);
    assert!(sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path()).status.success());
    for name in ["a.json", "b.json"] {
        let out = sitsflow(&["--quiet", "bench", "pipeline.toml", "--runs", "2", "--out", name], dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("a.json")).unwrap()).unwrap();
    assert_eq!(record["runs"].as_array().unwrap().len(), 2);
    for key in ["wall_s", "cpu_s", "peak_rss_mib", "mpx_per_s"] {
        assert!(record["median"][key].as_f64().unwrap() > 0.0, "{key}: {}", record["median"]);
    }
    assert_eq!(record["median"]["stages"][0]["id"], "ndvi");
    assert!(record["machine"]["cores"].as_u64().unwrap() >= 1);
    // Runs write into their own folders: the pipeline's output folder stays empty.
    assert!(!dir.path().join("runs/cli/ndvi.tif").exists());
    let out = sitsflow(&["bench", "--compare", "a.json", "b.json"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("wall_s") && table.contains("ndvi Mpx per CPU s") && table.contains("x\n"), "{table}");
}

/// `sitsflow train` drives the PyTorch recipe in models/ under the file contract:
/// a few epochs of TempCNN on the real Formosat-2 samples give an ONNX model, its
/// sidecar and test metrics.
#[test]
fn train_launches_the_recipe_and_reads_its_outputs() {
    train_and_check_against_pytorch("tempcnn");
}

/// The same for L-TAE: its attention over dates (einsum, masked softmax) exports to a
/// graph the host's ONNX Runtime runs as PyTorch does.
#[test]
fn train_launches_ltae_and_the_host_runs_its_graph() {
    train_and_check_against_pytorch("ltae");
}

fn train_and_check_against_pytorch(arch: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let data = common::shared_data().join("formosat2-tempcnn");
    let model = out_dir.path().join(arch);
    let (train, test, classes) = (data.join("train.csv"), data.join("test.csv"), data.join("classes.csv"));
    let args = [
        "train", "--samples", train.to_str().unwrap(), "--test", test.to_str().unwrap(), "--classes",
        classes.to_str().unwrap(), "--arch", arch, "--epochs", "3", "--out", model.to_str().unwrap(),
    ];
    let out = sitsflow(&args, &common::workspace());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OA "), "{}", text(&out.stdout));
    let sidecar: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(sidecar["contract"], "sitsflow-model/1");
    assert_eq!(sidecar["arch"], arch);
    assert_eq!(sidecar["input"]["shape"], serde_json::json!(["N", 149, 3]));
    assert!(model.join("model.onnx").exists() && model.join("metrics.json").exists());

    // The host's ONNX Runtime reproduces PyTorch's probabilities on the test set.
    let probs = out_dir.path().join("probs.csv");
    let workspace = common::workspace();
    let predict = Command::new("python3")
        .args(["-m", "sitsflow_models", "predict", "--model", model.join("model.onnx").to_str().unwrap()])
        .args(["--samples", test.to_str().unwrap(), "--out", probs.to_str().unwrap()])
        .env("PYTHONPATH", sitsflow::train::python_path(&workspace))
        .output()
        .unwrap();
    assert!(predict.status.success(), "{}", text(&predict.stderr));
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // SAFETY: set before any thread of this test loads ONNX Runtime.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", sitsflow::inference::default_library()) };
    }
    let samples = sitsflow::samples::Samples::read_csv(&test).unwrap();
    let onnx = sitsflow::inference::Model::load(&model.join("model.onnx"), sitsflow::inference::Device::Cpu).unwrap();
    let (ours, _) = onnx.run_batched(&samples.data, &[149, 3], 1 << 20).unwrap();
    let text_probs = std::fs::read_to_string(&probs).unwrap();
    // Probability columns are the ones named by a class code.
    let header: Vec<&str> = text_probs.lines().next().unwrap().split(',').collect();
    let first = header.iter().position(|h| h.parse::<u16>().is_ok()).expect("class-code columns");
    let theirs: Vec<f32> = text_probs
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').skip(first).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("formosat-2 {arch}: max |ONNX Runtime − PyTorch| = {max:.2e} on {} test samples", samples.len());
    assert!(max < 1e-4, "{max}");
}

#[test]
fn train_without_torch_says_how_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let data = common::shared_data().join("formosat2-tempcnn");
    let out = Command::new(env!("CARGO_BIN_EXE_sitsflow"))
        .args(["train", "--samples", data.join("train.csv").to_str().unwrap(), "--out", empty.path().join("m").to_str().unwrap()])
        .current_dir(common::workspace())
        .env("SITSFLOW_MODELS_PYTHON", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("run `bash scripts/setup-python.sh`"), "{}", text(&out.stderr));
}

#[test]
fn doctor_reports_gdal_onnx_runtime_cuda_and_the_wasm_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = sitsflow(&["doctor", "--json", "--dir", dir.path().to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert!(report["gdal"]["version"].as_str().unwrap().starts_with("GDAL 3."));
    assert_eq!(report["gdal"]["drivers"]["COG"], true);
    assert!(!report["onnxruntime"].is_null());
    assert_eq!(report["plugin_dir"]["plugins"], serde_json::json!([]));
    let human = text(&sitsflow(&["doctor", "--dir", dir.path().to_str().unwrap()], dir.path()).stdout);
    for needle in ["GDAL", "ONNX Runtime", "CUDA", "wasm32-wasip2", "plugins"] {
        assert!(human.contains(needle), "doctor output lacks {needle}:\n{human}");
    }
}

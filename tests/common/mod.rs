//! Test harness: builds the plugin components for wasm32-wasip2 (once per test
//! binary) and hands out a shared runtime, so tests drive real components.

#![allow(dead_code)]

use sitsflow::runtime::{Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// The packages of the folders under `dir` (each folder's `Cargo.toml` `name`), sorted.
/// The workspace's folders are the one list of plugins and fixtures: a new one needs no
/// line in the harness.
fn packages_under(dir: &str) -> Vec<String> {
    let root = workspace().join(dir);
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("Cargo.toml")).ok())
        .filter_map(|manifest| {
            manifest.lines().find_map(|l| l.strip_prefix("name = \"").and_then(|n| n.strip_suffix('"')).map(str::to_string))
        })
        .collect();
    names.sort();
    names
}

/// The plugins that ship (installed into a project's plugins/ by `project_dir`): every
/// package under plugins/ but the SDK.
pub fn shipped() -> &'static [String] {
    static SHIPPED: OnceLock<Vec<String>> = OnceLock::new();
    SHIPPED.get_or_init(|| packages_under("plugins").into_iter().filter(|p| p != "sitsflow-sdk").collect())
}

/// The components the harness builds: the shipped plugins and the sandbox fixtures of
/// tests/components/.
pub fn packages() -> Vec<String> {
    shipped().iter().cloned().chain(packages_under("tests/components")).collect()
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("host/sitsflow/ is inside the workspace").to_path_buf()
}

/// Where scikit-learn and numpy are for the parity tests and benchmarks
/// (`SITSFLOW_PYTHONPATH`, else `.deps/python` as scripts/setup.sh installs them).
pub fn python_path() -> PathBuf {
    std::env::var_os("SITSFLOW_PYTHONPATH").map(PathBuf::from).unwrap_or_else(|| workspace().join(".deps/python"))
}

pub fn shared_data() -> PathBuf {
    workspace().join("../shared/data")
}

/// Builds every component once and returns the folder holding them.
fn built() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(workspace()).env_remove("CARGO_TARGET_DIR").args(["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2"]);
        for p in packages() {
            command.args(["-p", &p]);
        }
        let status = command.status().expect("running cargo to build the test components");
        assert!(status.success(), "building the components for wasm32-wasip2 failed (is the target installed? scripts/setup.sh adds it)");
        workspace().join("target/wasm32-wasip2/plugin")
    })
}

/// The component file of a package, e.g. `component("fixture-spin")`.
pub fn component(package: &str) -> PathBuf {
    let path = built().join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// One runtime per test binary, with its component cache under target/.
pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cache = workspace().join("target/test-cache");
            Runtime::new(RuntimeOptions { cache_dir: Some(cache) }).expect("creating the runtime")
        })
        .clone()
}

/// Makes a folder with the shipped plugins installed in `plugins/` beside where a
/// pipeline file will go (the default plugin directory of a pipeline).
pub fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = sitsflow::plugins::PluginDir::new(dir.path().join("plugins"));
    for shipped in shipped() {
        plugins.install(&runtime(), &component(shipped), false).expect("installing a shipped plugin");
    }
    dir
}

/// The `sitsflow` binary run in `project` with the tests' shared component cache (and
/// no `FAILPOINTS` from the environment).
pub fn sitsflow_command(project: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sitsflow"));
    command.current_dir(project).env("SITSFLOW_CACHE_DIR", workspace().join("target/test-cache")).env_remove("FAILPOINTS");
    command
}

/// Starts `command` (a `sitsflow` run) so that it holds, alive, the `n`-th time
/// (1-based) it reaches the failpoint `point`, and returns once it says so on stderr.
/// The process then cannot finish: its lock stays held and its journal stays as it is
/// until the test kills it, so no test races a run that might end first. Needs the
/// `failpoints` feature (`scripts/test.sh` enables it). Fails, with what the process
/// printed, when it ends before getting there.
pub fn spawn_held(mut command: Command, point: &str, n: usize) -> std::process::Child {
    use std::io::BufRead;
    assert!(n >= 1, "the first time is n = 1");
    let spec = if n == 1 { format!("{point}=return(hold)") } else { format!("{point}={}*off->return(hold)", n - 1) };
    command.env("FAILPOINTS", spec).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawning sitsflow");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mark = format!("failpoint {point}: holding");
    let mut said = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line == mark => break,
            Some(Ok(line)) => said.push(line),
            _ => panic!("the process ended before reaching {point} {n} time(s); it said:\n{}", said.join("\n")),
        }
    }
    // Keep reading what it says, so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// A small demo series (64 × 64 px, 3 years × 4 dates) generated once per test binary.
pub fn small_demo() -> &'static Path {
    static DEMO: OnceLock<tempfile::TempDir> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = sitsflow::demo::DemoOptions { size: 64, dates_per_year: 4, vhr: true, ..Default::default() };
        sitsflow::demo::generate(dir.path(), &options).expect("generating demo data");
        dir
    })
    .path()
}

/// A small demo with seed 000's forest change (dry crowns in the last year) and its
/// 2.5 m forest annotations (`forest/annotations.csv`), generated once per test binary.
pub fn small_forest_demo() -> &'static Path {
    static DEMO: OnceLock<tempfile::TempDir> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = sitsflow::demo::DemoOptions { size: 64, dates_per_year: 4, forest_change: true, ..Default::default() };
        sitsflow::demo::generate(dir.path(), &options).expect("generating demo data");
        dir
    })
    .path()
}

/// Runs a Python command that needs scikit-learn (PYTHONPATH from [`python_path`]) and
/// parses the JSON it prints; fails with the install hint when it cannot run.
pub fn sklearn_json(mut command: Command) -> serde_json::Value {
    let out = command.env("PYTHONPATH", python_path()).output().expect("running python3");
    assert!(
        out.status.success(),
        "scikit-learn is needed here (scripts/setup.sh installs it into .deps/python): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// A host cube as the SDK's, to call a stage's code natively.
pub fn sdk_cube(c: &sitsflow::runtime::data::Cube) -> sitsflow_sdk::Cube {
    sitsflow_sdk::Cube {
        dates: c.dates.clone(),
        bands: c.bands.clone(),
        rows: c.rows as usize,
        cols: c.cols as usize,
        data: c.data.clone(),
        valid: c.valid.clone(),
    }
}

/// `count` patches of `side` px (the first `dates` dates and `bands` bands of `cube`),
/// at seeded positions, seeds 1.. — what a pretraining node hands an augmenter.
pub fn patch_batch(
    cube: &sitsflow::runtime::data::Cube,
    count: usize,
    side: usize,
    dates: usize,
    bands: usize,
) -> sitsflow::runtime::data::PatchBatch {
    let (rows, cols, nb) = (cube.rows as usize, cube.cols as usize, cube.bands.len());
    let mut state = 17u64;
    let mut data = Vec::with_capacity(count * dates * bands * side * side);
    for _ in 0..count {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let top = (state >> 33) as usize % (rows - side + 1);
        let left = (state >> 13) as usize % (cols - side + 1);
        for d in 0..dates {
            for b in 0..bands {
                let plane = &cube.data[(d * nb + b) * rows * cols..(d * nb + b + 1) * rows * cols];
                for r in top..top + side {
                    data.extend_from_slice(&plane[r * cols + left..r * cols + left + side]);
                }
            }
        }
    }
    sitsflow::runtime::data::PatchBatch {
        count: count as u32,
        dates: cube.dates[..dates].to_vec(),
        bands: cube.bands[..bands].to_vec(),
        rows: side as u32,
        cols: side as u32,
        data,
        seeds: (1..=count as u64).collect(),
    }
}

/// A host patch batch as the SDK's.
pub fn sdk_patch_batch(b: &sitsflow::runtime::data::PatchBatch) -> sitsflow_sdk::PatchBatch {
    sitsflow_sdk::PatchBatch {
        count: b.count as usize,
        dates: b.dates.clone(),
        bands: b.bands.clone(),
        rows: b.rows as usize,
        cols: b.cols as usize,
        data: b.data.clone(),
        seeds: b.seeds.clone(),
    }
}

/// A host feature matrix as the SDK's, for native calls of the same stage code.
pub fn sdk_matrix(m: &sitsflow::runtime::data::FeatureMatrix) -> sitsflow_sdk::FeatureMatrix {
    sitsflow_sdk::FeatureMatrix { samples: m.samples as usize, names: m.names.clone(), data: m.data.clone() }
}

/// A host sampler input as the SDK's, for native calls of the same stage code.
pub fn sdk_sample_input(i: &sitsflow::runtime::data::SampleInput) -> sitsflow_sdk::SampleInput {
    sitsflow_sdk::SampleInput {
        features: sdk_matrix(&i.features),
        layers: i.layers.clone(),
        probabilities: i.probabilities.as_ref().map(|p| sitsflow_sdk::Probabilities {
            samples: p.samples as usize,
            classes: p.classes.clone(),
            data: p.data.clone(),
        }),
        positions: i.positions.clone(),
        seed: i.seed,
    }
}

//! Training the temporal classifiers (TempCNN, LSTM) of `models/`: the host launches
//! the PyTorch recipe as a subprocess under the versioned file contract (samples CSV
//! in; `model.onnx`, `model.json` and `metrics.json` out), shows its epochs in a
//! progress bar and fails with a clear message when Python or torch is missing.
//!
//! Contract 1 (see `models/README.md`): stdout carries one JSON object per line
//! (`{"event": "epoch", "epoch", "epochs", …}`, finally `{"event": "done"}` or
//! `{"event": "error", "message"}`), stderr human messages; exit 0 success, 2 bad input,
//! 1 a crash. `model.json` is written last, so its presence means the folder is complete.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The contract version this host speaks.
pub const CONTRACT: u32 = 1;

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// What it trains on.
    pub data: TrainData,
    /// Processes of a distributed training; one of each = a plain subprocess.
    pub distributed: Distributed,
    /// Test samples to report metrics on (`--test`), instead of the validation split.
    pub test: Option<PathBuf>,
    /// A classes CSV (`code,name,color`) giving the class codes (`--classes`).
    pub classes: Option<PathBuf>,
    /// `tempcnn`, `lstm` or `fg-unet`.
    pub arch: String,
    /// The folder the recipe writes its files into (`--out`).
    pub out: PathBuf,
    /// The recipe's seed (`--seed`).
    pub seed: u64,
    /// The most epochs to train (`--epochs`; default: the recipe's).
    pub epochs: Option<u32>,
    /// Extra arguments handed to the recipe as they are (e.g. `--hyperparameters {…}`).
    pub extra: Vec<String>,
}

/// The processes of a distributed training (DistributedDataParallel under torchrun).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distributed {
    /// Nodes (> 1: `srun torchrun` across the Slurm allocation, c10d rendezvous).
    pub nodes: u32,
    /// Processes per node (`torchrun --nproc_per_node`).
    pub nproc_per_node: u32,
}

impl Default for Distributed {
    fn default() -> Self {
        Distributed { nodes: 1, nproc_per_node: 1 }
    }
}

impl Distributed {
    /// The total number of training processes: nodes × processes per node.
    pub fn world_size(&self) -> u32 {
        self.nodes * self.nproc_per_node
    }
}

/// How the recipe's processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Launch {
    /// One process.
    Plain,
    /// `torchrun --standalone` on this machine.
    Local { nproc_per_node: u32 },
    /// `srun` one torchrun per node of the Slurm job, meeting at `endpoint` (this node).
    Slurm { nodes: u32, nproc_per_node: u32, endpoint: String, job: String },
}

/// Chooses the launch: several nodes need a Slurm allocation with that many nodes (the
/// assembly job `sitsflow plan --engine slurm` writes asks for them); inside a Slurm job
/// even one node's processes are started through `srun`, so they run in the job's step
/// and are accounted and killed with it.
fn launch(distributed: Distributed, slurm: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    let Distributed { nodes, nproc_per_node } = distributed;
    if nodes == 0 || nproc_per_node == 0 {
        bail!("nodes and nproc_per_node must be at least 1");
    }
    let job = slurm("SLURM_JOB_ID");
    if nodes > 1 {
        let Some(job) = &job else {
            bail!(
                "nodes = {nodes}: a training on several nodes runs inside a Slurm allocation of {nodes} nodes (srun \
                 torchrun); this process is not in one: submit the run with `sitsflow plan --engine slurm`, or train \
                 on one node (nproc_per_node)"
            )
        };
        let allocated = slurm("SLURM_JOB_NUM_NODES").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1);
        if allocated < nodes {
            bail!("nodes = {nodes}, but Slurm job {job} has {allocated} node(s): ask for --nodes={nodes}");
        }
    }
    if nodes == 1 && nproc_per_node == 1 {
        return Ok(Launch::Plain);
    }
    match job {
        Some(job) => {
            let host = slurm("SLURMD_NODENAME").unwrap_or_else(sitsflow_core::fsutil::host_name);
            let port = std::net::TcpListener::bind(("0.0.0.0", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(29400);
            Ok(Launch::Slurm { nodes, nproc_per_node, endpoint: format!("{host}:{port}"), job })
        }
        None => Ok(Launch::Local { nproc_per_node }),
    }
}

/// A recipe's training data.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// A samples CSV (`--samples`: tempcnn, lstm).
    Samples(PathBuf),
    /// A patch dataset folder (`--patches`: fg-unet).
    Patches(PathBuf),
    /// A `sitsflow-views/1` stream on the recipe's standard input (`pretrain --views -`:
    /// simclr), written by the caller of [`pretrain`].
    Views,
}

impl TrainData {
    /// The data's path, or `-` for the views streamed on standard input.
    pub fn path(&self) -> &Path {
        match self {
            TrainData::Samples(p) | TrainData::Patches(p) => p,
            TrainData::Views => Path::new("-"),
        }
    }

    fn flag(&self) -> &'static str {
        match self {
            TrainData::Samples(_) => "--samples",
            TrainData::Patches(_) => "--patches",
            TrainData::Views => "--views",
        }
    }

    /// For messages: the file, or the stream.
    fn shown(&self) -> String {
        match self {
            TrainData::Views => "the views streamed to it".into(),
            other => other.path().display().to_string(),
        }
    }
}

/// What a finished training wrote.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The exported network (`model.onnx`).
    pub model: PathBuf,
    /// The model's sidecar (`model.json`).
    pub sidecar: Value,
    /// The recipe's metrics (`metrics.json`).
    pub metrics: Value,
}

/// Where the recipe and its Python packages are: the workspace's `models/` and
/// `.deps/models-python` (installed by `scripts/setup-python.sh`), unless
/// `SITSFLOW_MODELS_DIR` / `SITSFLOW_MODELS_PYTHON` say otherwise.
pub fn python_path(workspace: &Path) -> String {
    let models = std::env::var_os("SITSFLOW_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("models"));
    let packages =
        std::env::var_os("SITSFLOW_MODELS_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace.join(".deps/models-python"));
    // The onnxruntime package beside the library the host loads (scripts/setup.sh unpacks
    // the wheel): the recipe checks every export against it (`onnx_check` in model.json).
    let ort_package = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .and_then(|lib| lib.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|p| p.join("onnxruntime/__init__.py").is_file());
    match ort_package {
        Some(ort) => format!("{}:{}:{}", packages.display(), models.display(), ort.display()),
        None => format!("{}:{}", packages.display(), models.display()),
    }
}

/// Whether `sitsflow train --arch <arch>` trains a recipe of `models/` (anything else it
/// names is a labeller plugin); from the one recipe list, `sitsflow_core::recipes`.
pub fn is_standalone_recipe(arch: &str) -> bool {
    sitsflow_core::recipes::recipe(arch).is_some_and(|r| r.standalone)
}

/// Folders holding `models/sitsflow_models`: `dir` or one of its parents.
fn holding_models(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join("models/sitsflow_models").is_dir()).map(Path::to_path_buf)
}

/// The folder holding `models/` and `.deps/`: the parent of `SITSFLOW_MODELS_DIR` when
/// set, else `start` (e.g. a pipeline's folder) or one of its parents, else the current
/// directory or one of its parents, else the folder of this binary or one of its parents
/// (a checkout's `target/release/sitsflow`, or an install with `models/` beside `bin/`).
pub fn find_workspace_from(start: Option<&Path>) -> Option<PathBuf> {
    if let Some(models) = std::env::var_os("SITSFLOW_MODELS_DIR") {
        return PathBuf::from(models).parent().map(Path::to_path_buf);
    }
    start
        .and_then(|s| std::fs::canonicalize(s).ok())
        .and_then(|s| holding_models(&s))
        .or_else(|| std::env::current_dir().ok().and_then(|d| holding_models(&d)))
        .or_else(|| std::env::current_exe().ok().and_then(|e| std::fs::canonicalize(e).ok()).and_then(|e| holding_models(&e)))
}

/// [`find_workspace_from`] the current directory.
pub fn find_workspace() -> Option<PathBuf> {
    find_workspace_from(None)
}

/// The workspace of [`find_workspace`], or an error saying where the recipe was looked for.
pub fn locate_models() -> Result<PathBuf> {
    if let Some(models) = std::env::var_os("SITSFLOW_MODELS_DIR") {
        let models = PathBuf::from(models);
        if !models.join("sitsflow_models").is_dir() {
            bail!("SITSFLOW_MODELS_DIR={} has no sitsflow_models/ (it should name the models/ folder of a sitsflow checkout)", models.display());
        }
    }
    find_workspace().ok_or_else(|| {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        let exe = std::env::current_exe().map_or_else(|_| "?".into(), |d| d.display().to_string());
        anyhow::anyhow!(
            "the training recipe (models/sitsflow_models) was not found: looked in {cwd} and its parents and beside {exe} and its \
             parents; set SITSFLOW_MODELS_DIR to the models/ folder of a sitsflow checkout (its Python packages are then looked \
             for in ../.deps/models-python, or in SITSFLOW_MODELS_PYTHON)"
        )
    })
}

fn python() -> String {
    std::env::var("SITSFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Checks that Python, torch and the recipe can be imported, saying what to install if not.
pub fn check_environment(pythonpath: &str) -> Result<String> {
    let out = Command::new(python())
        .args(["-c", "import torch, sitsflow_models; print(torch.__version__)"])
        .env("PYTHONPATH", pythonpath)
        .output()
        .with_context(|| format!("cannot start '{}': training needs Python 3 (set SITSFLOW_PYTHON to another interpreter)", python()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        if last.contains("No module named 'torch'") || last.contains("libcu") {
            bail!(
                "PyTorch is not importable by {} with PYTHONPATH={pythonpath} ({last}); run `bash scripts/setup-python.sh` in \
                 the checkout to install it into .deps/models-python, or set SITSFLOW_MODELS_PYTHON to where it is",
                python()
            );
        }
        if last.contains("sitsflow_models") {
            bail!(
                "the training recipe is not importable with PYTHONPATH={pythonpath} ({last}); set SITSFLOW_MODELS_DIR to the \
                 models/ folder of a sitsflow checkout"
            );
        }
        bail!("the training environment is broken ({} with PYTHONPATH={pythonpath}): {last}", python());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the recipe, forwarding its progress to `progress(epoch, epochs, event)`.
pub fn train(request: &TrainRequest, pythonpath: &str, progress: impl FnMut(u64, u64, &Value) + Send) -> Result<Trained> {
    supervise(request, pythonpath, progress, None)
}

/// Runs a pretraining recipe (`pretrain`, [`TrainData::Views`]) while `feed` writes its
/// views stream to the recipe's standard input (closed when `feed` returns). A recipe
/// that stops reading makes `feed` fail with a broken pipe; the recipe's own error is
/// reported then.
pub fn pretrain(
    request: &TrainRequest,
    pythonpath: &str,
    progress: impl FnMut(u64, u64, &Value) + Send,
    feed: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<Trained> {
    supervise(request, pythonpath, progress, Some(feed))
}

#[allow(clippy::type_complexity)]
fn supervise(
    request: &TrainRequest,
    pythonpath: &str,
    mut progress: impl FnMut(u64, u64, &Value) + Send,
    feed: Option<&mut dyn FnMut(&mut dyn Write) -> Result<()>>,
) -> Result<Trained> {
    let torch = check_environment(pythonpath)?;
    let launch = launch(request.distributed, |name| std::env::var(name).ok())?;
    log::info!(
        "training {} on {} with torch {torch}{}",
        request.arch,
        request.data.shown(),
        match &launch {
            Launch::Plain => String::new(),
            Launch::Local { nproc_per_node } => format!(", {nproc_per_node} processes (torchrun)"),
            Launch::Slurm { nodes, nproc_per_node, job, .. } =>
                format!(", {nodes} node(s) × {nproc_per_node} processes (srun torchrun in Slurm job {job})"),
        }
    );
    // torchrun: one process per rank; the recipe sees WORLD_SIZE and trains with
    // DistributedDataParallel, rank 0 writes the model.
    let mut command = match &launch {
        Launch::Plain => Command::new(python()),
        Launch::Local { nproc_per_node } => {
            let mut c = Command::new(python());
            c.args(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", &nproc_per_node.to_string()]);
            c
        }
        Launch::Slurm { nodes, nproc_per_node, endpoint, job } => {
            let mut c = Command::new("srun");
            c.args([
                &format!("--nodes={nodes}"),
                &format!("--ntasks={nodes}"),
                "--ntasks-per-node=1",
                "--kill-on-bad-exit=1",
                // Each torchrun starts its node's processes, which share the task's cores.
                "--cpu-bind=none",
            ])
            .arg(python())
            .args(["-m", "torch.distributed.run", "--nnodes", &nodes.to_string(), "--nproc_per_node", &nproc_per_node.to_string()])
            .args(["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job]);
            c
        }
    };
    let verb = if matches!(request.data, TrainData::Views) { "pretrain" } else { "train" };
    command
        .args(["-m", "sitsflow_models", verb, "--contract", &CONTRACT.to_string(), "--arch", &request.arch])
        .arg(request.data.flag())
        .arg(request.data.path())
        .arg("--out")
        .arg(&request.out)
        .args(["--seed", &request.seed.to_string()]);
    if let Some(test) = &request.test {
        command.arg("--test").arg(test);
    }
    if let Some(classes) = &request.classes {
        command.arg("--classes").arg(classes);
    }
    if let Some(epochs) = request.epochs {
        command.args(["--epochs", &epochs.to_string()]);
    }
    command.args(&request.extra).env("PYTHONPATH", pythonpath).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if feed.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().with_context(|| format!("starting {}", python()))?;
    // stderr in its own thread so neither pipe can fill up and stall the recipe.
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The recipe's warnings (classes too small to learn, metrics on the training
            // set) reach the operator; the rest of its chatter is debug.
            match line.strip_prefix("warning: ") {
                Some(warning) => log::warn!(target: "train", "{warning}"),
                None => log::debug!(target: "train", "{line}"),
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        tail
    });
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take();
    let (last_error, fed) = std::thread::scope(|scope| {
        // Events in their own thread while this one feeds the recipe's input.
        let events = scope.spawn(move || -> Result<Option<String>> {
            let mut last_error = None;
            for line in BufReader::new(stdout).lines() {
                let line = line.context("reading the recipe's output")?;
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    log::warn!(target: "train", "not a contract line: {line}");
                    continue;
                };
                match event["event"].as_str() {
                    Some("epoch") => progress(event["epoch"].as_u64().unwrap_or(0), event["epochs"].as_u64().unwrap_or(0), &event),
                    Some("error") => last_error = event["message"].as_str().map(str::to_string),
                    _ => log::debug!(target: "train", "{line}"),
                }
            }
            Ok(last_error)
        });
        let fed = match (feed, stdin) {
            (Some(feed), Some(mut stdin)) => {
                let mut writer = std::io::BufWriter::with_capacity(1 << 20, &mut stdin);
                let result = feed(&mut writer).and_then(|()| writer.flush().context("writing to the recipe"));
                drop(writer);
                drop(stdin);
                result
            }
            _ => Ok(()),
        };
        (events.join().unwrap_or_else(|_| Ok(Some("the event reader panicked".into()))), fed)
    });
    let last_error = last_error?;
    let status = child.wait().context("waiting for the recipe")?;
    let tail = errors.join().unwrap_or_default();
    // A feed that failed on its own (not because the recipe stopped reading: a broken
    // pipe) is the cause; the recipe then only saw its input end early.
    if let Err(e) = &fed {
        let broken_pipe = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if !broken_pipe {
            return Err(fed.unwrap_err().context(format!("feeding {} its views", request.arch)));
        }
    }
    if !status.success() {
        let why = last_error.unwrap_or_else(|| tail.iter().rev().take(5).rev().cloned().collect::<Vec<_>>().join("\n"));
        let kind = if status.code() == Some(2) { "rejected its input" } else { "failed" };
        bail!("training {} on {} {kind}: {why}", request.arch, request.data.shown());
    }
    // The recipe succeeded although the feed failed (it read all it needed): still an error.
    fed.with_context(|| format!("feeding {} its views", request.arch))?;
    let sidecar_path = request.out.join("model.json");
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(&sidecar_path)
            .with_context(|| format!("the recipe succeeded but wrote no {}", sidecar_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", sidecar_path.display()))?;
    if sidecar["contract"] != "sitsflow-model/1" {
        bail!("{}: contract {} is not sitsflow-model/1", sidecar_path.display(), sidecar["contract"]);
    }
    let metrics_path = request.out.join("metrics.json");
    let metrics: Value = serde_json::from_str(&std::fs::read_to_string(&metrics_path).with_context(|| format!("reading {}", metrics_path.display()))?)
        .with_context(|| format!("{} is not JSON", metrics_path.display()))?;
    Ok(Trained { model: request.out.join("model.onnx"), sidecar, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn one_process_is_plain_and_several_use_torchrun_or_srun() {
        let one = Distributed::default();
        assert_eq!(launch(one, env(&[])).unwrap(), Launch::Plain);
        assert_eq!(launch(one, env(&[("SLURM_JOB_ID", "7")])).unwrap(), Launch::Plain);
        let two = Distributed { nodes: 1, nproc_per_node: 2 };
        assert_eq!(launch(two, env(&[])).unwrap(), Launch::Local { nproc_per_node: 2 });
        match launch(two, env(&[("SLURM_JOB_ID", "7"), ("SLURMD_NODENAME", "n01")])).unwrap() {
            Launch::Slurm { nodes: 1, nproc_per_node: 2, endpoint, job } => {
                assert!(endpoint.starts_with("n01:"), "{endpoint}");
                assert_eq!(job, "7");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn several_nodes_need_a_slurm_allocation_that_big() {
        let four = Distributed { nodes: 4, nproc_per_node: 1 };
        let err = launch(four, env(&[])).unwrap_err().to_string();
        assert!(err.contains("nodes = 4") && err.contains("not in one"), "{err}");
        let err = launch(four, env(&[("SLURM_JOB_ID", "9"), ("SLURM_JOB_NUM_NODES", "2")])).unwrap_err().to_string();
        assert!(err.contains("Slurm job 9 has 2 node(s): ask for --nodes=4"), "{err}");
        assert!(matches!(
            launch(four, env(&[("SLURM_JOB_ID", "9"), ("SLURM_JOB_NUM_NODES", "4")])).unwrap(),
            Launch::Slurm { nodes: 4, .. }
        ));
    }
}

//! A model: an ONNX graph's session on the provider it actually got, the metadata
//! sidecar written beside it, and runs whose inputs are checked before ONNX Runtime sees
//! them (so a stage hears "dimension 1 is 12, the model's is 8", not a C++ exception).

use super::library::{self, OrtRuntime};
use super::{Device, InferenceError, Provider};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorRef, ValueType};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A dense f32 tensor by name: `(name, shape, row-major data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The contract of the `model.json` sidecar that `models/` writes beside `model.onnx`.
pub const METADATA_CONTRACT: &str = "sitsflow-model/1";

/// The largest batch on CPU. Larger batches only spill the intermediate tensors out of
/// cache: on 2 cores the demo TempCNN ran at ~221,000 samples/s in batches of 256,
/// ~163,000 in batches of 1,024 and ~131,000 in batches of 4,096; the LSTM at ~57,000
/// vs ~41,000 (256 vs 4,096). It also bounds the graph's intermediate tensors, which
/// the byte budget of [`Model::run_batched`] does not count.
pub const CPU_MAX_BATCH_ITEMS: usize = 256;

/// `model.json` (contract `sitsflow-model/1`): what the graph takes and gives. Only the
/// fields the host uses are read; the rest (training report, hyperparameters, …) is left
/// alone, so the Python side may add fields without breaking the host.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ModelMetadata {
    /// `sitsflow-model/1`.
    pub contract: String,
    /// The graph's input and what its axes hold.
    pub input: InputMetadata,
    /// The graph's output and what its columns or channels are.
    pub output: OutputMetadata,
    /// Per-band mean and std the graph applies (informative: `in_graph` models normalise themselves).
    #[serde(default)]
    pub normalisation: Option<serde_json::Value>,
    /// The ONNX opset the graph was exported with.
    #[serde(default)]
    pub opset: Option<u32>,
    /// The evaluation written at training time (overall accuracy, kappa, …).
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
    /// The network's widths (a segmentation network's size the host's tile sizing reads).
    #[serde(default)]
    pub hyperparameters: Option<serde_json::Value>,
    /// A segmentation network's tiles: `{ "tile": 512, "overlap": 16 }`.
    #[serde(default)]
    pub tiling: Option<serde_json::Value>,
}

/// `input` of the sidecar: the graph's input and what its axes hold.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct InputMetadata {
    /// The graph's input name.
    pub name: String,
    /// `["N", T, B]`: a name for the batch dimension, numbers for fixed ones.
    pub shape: Vec<MetadataDim>,
    /// Band names in the order of the last axis.
    #[serde(default)]
    pub bands: Vec<String>,
    /// Training dates (matched by position, not by value).
    #[serde(default)]
    pub dates: Vec<String>,
    /// e.g. `N×T×B`, or `N×C×H×W` for a segmentation network.
    #[serde(default)]
    pub layout: Option<String>,
    /// A segmentation network's input channels (`BAND@DATE`), in order.
    #[serde(default)]
    pub channels: Vec<String>,
    /// A segmentation network's height and width must be multiples of this.
    #[serde(default)]
    pub multiple: Option<usize>,
    /// A fusion network's second input: a very-high-resolution image on the grid
    /// `scale` times finer than the first input's.
    #[serde(default)]
    pub vhr: Option<VhrMetadata>,
}

/// The VHR input of a fusion network (`input.vhr` of the sidecar).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct VhrMetadata {
    /// The graph's input name.
    pub name: String,
    /// Its channels, matched by name to the image's bands.
    pub channels: Vec<String>,
    /// VHR pixels per input pixel along each axis.
    pub scale: usize,
}

/// One dimension of a sidecar shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum MetadataDim {
    Fixed(usize),
    Named(String),
}

/// `output` of the sidecar: the graph's output and what its columns hold.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct OutputMetadata {
    /// The graph's output name.
    pub name: String,
    /// The columns of the output, in order.
    pub classes: Vec<ClassMetadata>,
    /// The channels of an output that is not classes (an encoder's embeddings,
    /// `N×E×H×W`), in order.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// One class of a classifier's output (one column).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ClassMetadata {
    /// The class code in outputs.
    pub code: u16,
    /// The class name.
    pub name: String,
}

/// An input or output of the graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// The name in the graph.
    pub name: String,
    /// `None` for a dimension fixed only at run time (the batch `N`).
    pub dims: Vec<Option<usize>>,
    /// ONNX element type: `f32`, `i64`, … (`sequence` or `map` for non-tensors).
    pub element: String,
    /// The graph's names of the dynamic dimensions (`N`), for messages.
    #[serde(skip)]
    symbols: Vec<String>,
}

impl TensorSpec {
    fn from_outlet(name: &str, dtype: &ValueType) -> TensorSpec {
        match dtype {
            ValueType::Tensor { ty, shape, dimension_symbols } => TensorSpec {
                name: name.to_string(),
                dims: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
                element: ty.to_string(),
                symbols: dimension_symbols.iter().cloned().collect(),
            },
            ValueType::Sequence(_) => TensorSpec { name: name.into(), dims: Vec::new(), element: "sequence".into(), symbols: Vec::new() },
            _ => TensorSpec { name: name.into(), dims: Vec::new(), element: "map".into(), symbols: Vec::new() },
        }
    }

    /// Values per item along the first (batch) axis, when the other dimensions are fixed.
    fn row_size(&self) -> Option<usize> {
        self.dims.iter().skip(1).try_fold(1usize, |acc, d| d.and_then(|d| acc.checked_mul(d)))
    }

    fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(d) => d.to_string(),
                None => self.symbols.get(i).filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "?".into()),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' {} {}", self.name, self.shape_text(), self.element)
    }
}

fn shape_text(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// A loaded model. Shared (`Arc`) by every stage instance that uses it; one run at a time
/// goes through its session (ONNX Runtime parallelises inside a run).
pub struct Model {
    path: PathBuf,
    device: Device,
    provider: Provider,
    fallback: Option<String>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    metadata: Option<ModelMetadata>,
    /// `ort` runs need `&mut Session`.
    session: Mutex<Session>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("device", &self.device)
            .field("provider", &self.provider)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

/// The sessions of the process by (canonical path, device asked for).
type Registry = HashMap<(PathBuf, Device), Arc<Model>>;

/// The process-wide sessions, one per (canonical path, device).
fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Why a CUDA session could not be made.
struct CudaFailure {
    reason: String,
    /// The library simply has no CUDA provider: the normal CPU set-up, not a surprise.
    expected: bool,
}

impl Model {
    /// The model at `path` on `device`, from the process-wide registry: one session per
    /// (canonical path, device). A file replaced on disk is not reloaded by this process.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Arc<Model>, InferenceError> {
        let path = path.as_ref();
        let canonical = path
            .canonicalize()
            .map_err(|e| InferenceError::Load { path: path.to_path_buf(), reason: format!("cannot be read: {e}") })?;
        let runtime = library::runtime()?;
        // Held while a session is built, so two stages naming the same file load it once.
        let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let key = (canonical, device);
        if let Some(model) = registry.get(&key) {
            return Ok(model.clone());
        }
        let model = Arc::new(Model::open(runtime, key.0.clone(), device)?);
        registry.insert(key, model.clone());
        Ok(model)
    }

    /// Forgets the session of `path` on `device`: it (and the memory its arena holds) is
    /// freed when the last `Arc` of it goes. For a model one fit node uses alone (a
    /// segmentation network, whose arena holds a tile batch's activations).
    pub fn unload(path: impl AsRef<Path>, device: Device) {
        if let Ok(canonical) = path.as_ref().canonicalize() {
            registry().lock().unwrap_or_else(PoisonError::into_inner).remove(&(canonical, device));
        }
    }

    fn open(runtime: &OrtRuntime, path: PathBuf, device: Device) -> Result<Model, InferenceError> {
        let (session, provider, fallback) = match device {
            Device::Cpu => (cpu_session(runtime, &path)?, Provider::Cpu, None),
            Device::Cuda => match cuda_session(runtime, &path, false) {
                Ok(session) => (session, Provider::Cuda, None),
                Err(failure) => return Err(InferenceError::CudaUnavailable(failure.reason)),
            },
            Device::Auto => match cuda_session(runtime, &path, true) {
                Ok(session) => (session, Provider::Cuda, None),
                Err(failure) => {
                    // A broken model fails on CPU too: report that, not a CUDA fallback.
                    let session = cpu_session(runtime, &path)?;
                    announce_fallback(&path, &failure);
                    (session, Provider::Cpu, Some(failure.reason))
                }
            },
        };
        let inputs: Vec<TensorSpec> = session.inputs().iter().map(|o| TensorSpec::from_outlet(o.name(), o.dtype())).collect();
        let outputs: Vec<TensorSpec> = session.outputs().iter().map(|o| TensorSpec::from_outlet(o.name(), o.dtype())).collect();
        let metadata = read_metadata(&path, &inputs, &outputs)?;
        log::info!(
            target: "inference",
            "model {}: {provider} session (device {device}); inputs {}; outputs {}",
            path.display(),
            list(&inputs),
            list(&outputs)
        );
        Ok(Model { path, device, provider, fallback, inputs, outputs, metadata, session: Mutex::new(session) })
    }

    /// The canonical path of the `.onnx` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device asked for.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The provider the session runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Why `Device::Auto` ended up on CPU, when it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The graph's inputs, as the session reports them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The graph's outputs, as the session reports them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The sidecar (`<stem>.json` beside the `.onnx`, `model.json` for `model.onnx`), when present.
    pub fn metadata(&self) -> Option<&ModelMetadata> {
        self.metadata.as_ref()
    }

    /// Runs the model on named f32 tensors (every input of the graph, each once) and
    /// returns every output in the graph's order. Names, shapes and sizes are checked
    /// first: a mismatch is `InvalidInput`; a failure inside ONNX Runtime is `Failed`.
    ///
    /// On CPU, a one-input, one-output graph whose first axis is the batch on both
    /// sides is run [`CPU_MAX_BATCH_ITEMS`] items at a time (the same values, faster).
    pub fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, InferenceError> {
        if let ([(name, shape, data)], [input], [output]) = (inputs.as_slice(), self.inputs.as_slice(), self.outputs.as_slice()) {
            let batch_axes = input.dims.first() == Some(&None) && output.dims.first() == Some(&None);
            if self.provider == Provider::Cpu && batch_axes && name == &input.name && shape.len() > 1
                && shape[0] > CPU_MAX_BATCH_ITEMS
                && shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) == Some(data.len())
            {
                let (values, out_shape) = self.run_batched(data, &shape[1..], usize::MAX)?;
                return Ok(vec![(output.name.clone(), out_shape, values)]);
            }
        }
        let views: Vec<(&str, &[usize], &[f32])> =
            inputs.iter().map(|(name, shape, data)| (name.as_str(), shape.as_slice(), data.as_slice())).collect();
        self.run_views(&views)
    }

    /// Runs a one-input, one-output model on `N × shape_tail` values in batches along N,
    /// each batch's input and output tensors together at most `batch_budget_bytes` (at
    /// least one item per batch) and, on CPU, at most [`CPU_MAX_BATCH_ITEMS`] items —
    /// which also bounds the graph's intermediate tensors, not otherwise counted.
    /// Returns the outputs concatenated along N and their shape.
    pub fn run_batched(
        &self,
        input: &[f32],
        shape_tail: &[usize],
        batch_budget_bytes: usize,
    ) -> Result<(Vec<f32>, Vec<usize>), InferenceError> {
        let [input_spec] = self.inputs.as_slice() else {
            return Err(self.batched_misuse("inputs", self.inputs.len()));
        };
        let [output_spec] = self.outputs.as_slice() else {
            return Err(self.batched_misuse("outputs", self.outputs.len()));
        };
        let row = shape_tail.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&r| r > 0).ok_or_else(|| {
            InferenceError::InvalidInput(format!("input '{}': shape tail {} holds no values", input_spec.name, shape_text(shape_tail)))
        })?;
        if !input.len().is_multiple_of(row) {
            return Err(InferenceError::InvalidInput(format!(
                "input '{}': {} values are not a whole number of items of shape {} ({row} values each)",
                input_spec.name,
                input.len(),
                shape_text(shape_tail)
            )));
        }
        let n = input.len() / row;
        // Output items of unknown size count as nothing; the input alone then sets the batch.
        let out_row = output_spec.row_size().unwrap_or(0);
        let per_item = (row + out_row) * std::mem::size_of::<f32>();
        let mut batch = (batch_budget_bytes / per_item).clamp(1, n.max(1));
        if self.provider == Provider::Cpu {
            batch = batch.min(CPU_MAX_BATCH_ITEMS);
        }
        let mut data = Vec::with_capacity(n * out_row);
        let mut out_tail: Option<Vec<usize>> = None;
        let mut shape = Vec::with_capacity(shape_tail.len() + 1);
        for start in (0..n).step_by(batch) {
            let rows = batch.min(n - start);
            shape.clear();
            shape.push(rows);
            shape.extend_from_slice(shape_tail);
            let outputs = self.run_views(&[(input_spec.name.as_str(), &shape, &input[start * row..(start + rows) * row])])?;
            let (_, out_shape, out_data) = outputs.into_iter().next().expect("one output, checked above");
            if out_shape.first() != Some(&rows) {
                return Err(InferenceError::Failed(format!(
                    "model {}: output '{}' has shape {} for a batch of {rows}; run_batched needs the batch on its first axis",
                    self.path.display(),
                    output_spec.name,
                    shape_text(&out_shape)
                )));
            }
            match &out_tail {
                None => out_tail = Some(out_shape[1..].to_vec()),
                Some(tail) if tail.as_slice() != &out_shape[1..] => {
                    return Err(InferenceError::Failed(format!(
                        "model {}: output '{}' changes shape between batches ({} then {})",
                        self.path.display(),
                        output_spec.name,
                        shape_text(tail),
                        shape_text(&out_shape[1..])
                    )));
                }
                Some(_) => {}
            }
            data.extend_from_slice(&out_data);
        }
        // No items: the output's fixed dimensions, unknown ones as 0.
        let tail = out_tail.unwrap_or_else(|| output_spec.dims.iter().skip(1).map(|d| d.unwrap_or(0)).collect());
        let mut out_shape = vec![n];
        out_shape.extend(tail);
        Ok((data, out_shape))
    }

    fn batched_misuse(&self, what: &str, count: usize) -> InferenceError {
        InferenceError::InvalidInput(format!(
            "model {} has {count} {what}; batched runs need exactly one input and one output",
            self.path.display()
        ))
    }

    fn run_views(&self, inputs: &[(&str, &[usize], &[f32])]) -> Result<Vec<NamedTensor>, InferenceError> {
        self.check_inputs(inputs)?;
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for &(name, shape, data) in inputs {
            // A view: ONNX Runtime reads the caller's buffer, no copy.
            let tensor = TensorRef::from_array_view((shape.to_vec(), data))
                .map_err(|e| InferenceError::InvalidInput(format!("input '{name}': {e}")))?;
            values.push((name.to_string(), tensor.into()));
        }
        let failed = |e: &dyn fmt::Display| InferenceError::Failed(format!("model {}: {e}", self.path.display()));
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session.run(values).map_err(|e| failed(&e))?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs.get(&spec.name).ok_or_else(|| failed(&format!("no output '{}' after the run", spec.name)))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| failed(&format!("output '{}' ({}) is not an f32 tensor: {e}", spec.name, spec.element)))?;
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            result.push((spec.name.clone(), shape, data.to_vec()));
        }
        Ok(result)
    }

    fn check_inputs(&self, inputs: &[(&str, &[usize], &[f32])]) -> Result<(), InferenceError> {
        let invalid = |m: String| Err(InferenceError::InvalidInput(m));
        for (i, &(name, shape, data)) in inputs.iter().enumerate() {
            if inputs[..i].iter().any(|(n, ..)| *n == name) {
                return invalid(format!("input '{name}' is given twice"));
            }
            let Some(spec) = self.inputs.iter().find(|s| s.name == name) else {
                return invalid(format!("the model has no input '{name}' (it takes {})", list(&self.inputs)));
            };
            if spec.element != "f32" {
                return invalid(format!("input {spec} is not f32; only f32 tensors can be passed"));
            }
            let size = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if size != Some(data.len()) {
                return invalid(format!(
                    "input '{name}': shape {} needs {} values, {} were given",
                    shape_text(shape),
                    size.map_or_else(|| "more than usize::MAX".to_string(), |s| s.to_string()),
                    data.len()
                ));
            }
            if shape.len() != spec.dims.len() {
                return invalid(format!(
                    "input '{name}' has {} dimensions {}, the model takes {}",
                    shape.len(),
                    shape_text(shape),
                    spec.shape_text()
                ));
            }
            for (axis, (&got, want)) in shape.iter().zip(&spec.dims).enumerate() {
                if let Some(want) = want
                    && *want != got
                {
                    return invalid(format!(
                        "input '{name}' has shape {}, the model takes {}: dimension {axis} is {got}, the model's is {want}",
                        shape_text(shape),
                        spec.shape_text()
                    ));
                }
            }
        }
        if let Some(missing) = self.inputs.iter().find(|s| !inputs.iter().any(|(n, ..)| *n == s.name)) {
            return invalid(format!("input {missing} is missing"));
        }
        Ok(())
    }
}

fn list(specs: &[TensorSpec]) -> String {
    specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn cpu_session(runtime: &OrtRuntime, path: &Path) -> Result<Session, InferenceError> {
    let load = |e: &dyn fmt::Display| InferenceError::Load { path: path.to_path_buf(), reason: e.to_string() };
    let mut builder = Session::builder(&runtime.environment).map_err(|e| load(&e))?;
    builder.commit_from_file(path).map_err(|e| load(&e))
}

fn cuda_session(runtime: &OrtRuntime, path: &Path, quiet: bool) -> Result<Session, CudaFailure> {
    if let Some(reason) = library::cuda_blocker(runtime) {
        return Err(CudaFailure { reason, expected: true });
    }
    library::preload_cuda_wheels(&runtime.library);
    let failure = |e: &dyn fmt::Display| CudaFailure { reason: with_library_hints(e.to_string()), expected: false };
    let mut builder = Session::builder(&runtime.environment).map_err(|e| failure(&e))?;
    if quiet {
        // Auto says why it falls back in one line of its own; ONNX Runtime's errors about the
        // failed CUDA attempt would only repeat it.
        builder = builder.with_log_level(ort::logging::LogLevel::Fatal).map_err(|e| failure(&e))?;
    }
    let mut builder = builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| failure(&e))?;
    builder.commit_from_file(path).map_err(|e| failure(&e))
}

/// ONNX Runtime's CUDA error plus the libraries this process cannot load, which is
/// usually the actual cause.
fn with_library_hints(message: String) -> String {
    let missing: Vec<String> =
        library::cuda_library_checks().into_iter().filter(|(_, r)| r.is_err()).map(|(name, _)| name).collect();
    if missing.is_empty() {
        message
    } else if missing.iter().any(|m| m == "libcuda.so.1") {
        format!("{message} (no NVIDIA driver here: libcuda.so.1 cannot be loaded)")
    } else {
        format!(
            "{message} (cannot load {}; set LD_LIBRARY_PATH as scripts/setup-gpu.sh prints)",
            missing.join(", ")
        )
    }
}

/// One line per process says why `auto` runs on CPU; later models repeat it at debug level.
fn announce_fallback(path: &Path, failure: &CudaFailure) {
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    let mut first = false;
    ANNOUNCED.get_or_init(|| first = true);
    let message = format!("device auto: models run on CPU, CUDA is not usable here: {}", failure.reason);
    if !first {
        log::debug!(target: "inference", "model {}: {message}", path.display());
    } else if failure.expected {
        log::info!(target: "inference", "{message}");
    } else {
        log::warn!(target: "inference", "{message}");
    }
}

/// Reads and checks the sidecar beside `path` against the graph, when there is one.
fn read_metadata(path: &Path, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<Option<ModelMetadata>, InferenceError> {
    let sidecar = path.with_extension("json");
    if !sidecar.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| InferenceError::Metadata { path: sidecar.clone(), reason };
    let text = std::fs::read_to_string(&sidecar).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let metadata: ModelMetadata = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    check_metadata(&metadata, inputs, outputs).map_err(bad)?;
    Ok(Some(metadata))
}

fn check_metadata(m: &ModelMetadata, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<(), String> {
    if m.contract != METADATA_CONTRACT {
        return Err(format!("contract '{}' is not '{METADATA_CONTRACT}'", m.contract));
    }
    let input = inputs
        .iter()
        .find(|s| s.name == m.input.name)
        .ok_or_else(|| format!("input '{}' is not an input of the graph (it takes {})", m.input.name, list(inputs)))?;
    if m.input.shape.len() != input.dims.len() {
        return Err(format!("input shape has {} dimensions, the graph's {input} has {}", m.input.shape.len(), input.dims.len()));
    }
    for (axis, (dim, graph)) in m.input.shape.iter().zip(&input.dims).enumerate() {
        if let (MetadataDim::Fixed(d), Some(g)) = (dim, graph)
            && d != g
        {
            return Err(format!("input dimension {axis} is {d}, the graph's {input} says {g}"));
        }
    }
    if let Some(vhr) = &m.input.vhr
        && !inputs.iter().any(|s| s.name == vhr.name)
    {
        return Err(format!("the VHR input '{}' is not an input of the graph (it takes {})", vhr.name, list(inputs)));
    }
    // `N×T×B`: the bands and dates listed must match the axes they name.
    if let [_, t, b] = m.input.shape.as_slice() {
        if let MetadataDim::Fixed(b) = b
            && !m.input.bands.is_empty()
            && m.input.bands.len() != *b
        {
            return Err(format!("{} bands are listed for an input of {b} bands", m.input.bands.len()));
        }
        if let MetadataDim::Fixed(t) = t
            && !m.input.dates.is_empty()
            && m.input.dates.len() != *t
        {
            return Err(format!("{} dates are listed for an input of {t} dates", m.input.dates.len()));
        }
    }
    let output = outputs
        .iter()
        .find(|s| s.name == m.output.name)
        .ok_or_else(|| format!("output '{}' is not an output of the graph (it gives {})", m.output.name, list(outputs)))?;
    if let Some(Some(columns)) = output.dims.last()
        && *columns != m.output.classes.len()
    {
        return Err(format!("{} classes are listed for the graph's output {output}", m.output.classes.len()));
    }
    let mut codes: Vec<u16> = m.output.classes.iter().map(|c| c.code).collect();
    codes.sort_unstable();
    if let Some(w) = codes.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("class code {} is listed twice", w[0]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dims: &[Option<usize>]) -> TensorSpec {
        TensorSpec { name: name.into(), dims: dims.to_vec(), element: "f32".into(), symbols: vec!["N".into()] }
    }

    fn sidecar(extra: &str) -> String {
        format!(
            r#"{{"contract": "sitsflow-model/1", "arch": "tempcnn", {extra}
                "input": {{"name": "reflectance", "dtype": "float32", "shape": ["N", 3, 2], "layout": "N×T×B",
                          "bands": ["B04", "B08"], "dates": ["2020-01-01", "2020-02-01", "2020-03-01"]}},
                "output": {{"name": "probabilities", "shape": ["N", 2],
                           "classes": [{{"code": 1, "name": "crop"}}, {{"code": 2, "name": "forest"}}]}},
                "opset": 17, "metrics": {{"overall_accuracy": 0.9}}}}"#
        )
    }

    #[test]
    fn sidecar_with_extra_fields_parses_and_matches_the_graph() {
        let m: ModelMetadata = serde_json::from_str(&sidecar(r#""training": {"epochs": 3},"#)).unwrap();
        assert_eq!(m.input.shape, [MetadataDim::Named("N".into()), MetadataDim::Fixed(3), MetadataDim::Fixed(2)]);
        assert_eq!(m.output.classes[1], ClassMetadata { code: 2, name: "forest".into() });
        let inputs = [spec("reflectance", &[None, Some(3), Some(2)])];
        let outputs = [spec("probabilities", &[None, Some(2)])];
        check_metadata(&m, &inputs, &outputs).unwrap();
    }

    #[test]
    fn sidecar_contradicting_the_graph_is_rejected_with_the_reason() {
        let m: ModelMetadata = serde_json::from_str(&sidecar("")).unwrap();
        let outputs = [spec("probabilities", &[None, Some(2)])];
        let err = check_metadata(&m, &[spec("reflectance", &[None, Some(4), Some(2)])], &outputs).unwrap_err();
        assert!(err.contains("dimension 1 is 3") && err.contains("says 4"), "{err}");
        let err = check_metadata(&m, &[spec("x", &[None, Some(3), Some(2)])], &outputs).unwrap_err();
        assert!(err.contains("'reflectance' is not an input"), "{err}");
        let inputs = [spec("reflectance", &[None, Some(3), Some(2)])];
        let err = check_metadata(&m, &inputs, &[spec("probabilities", &[None, Some(5)])]).unwrap_err();
        assert!(err.contains("2 classes are listed"), "{err}");
        let mut wrong = m.clone();
        wrong.contract = "sitsflow-model/2".into();
        assert!(check_metadata(&wrong, &inputs, &outputs).unwrap_err().contains("is not 'sitsflow-model/1'"));
        let mut wrong = m.clone();
        wrong.input.bands.pop();
        assert!(check_metadata(&wrong, &inputs, &outputs).unwrap_err().contains("1 bands are listed for an input of 2"));
        let mut wrong = m;
        wrong.output.classes[1].code = 1;
        assert!(check_metadata(&wrong, &inputs, &outputs).unwrap_err().contains("class code 1 is listed twice"));
    }

    #[test]
    fn spec_text_names_dynamic_dimensions() {
        let s = spec("reflectance", &[None, Some(3), Some(2)]);
        assert_eq!(s.to_string(), "'reflectance' [N, 3, 2] f32");
        assert_eq!(s.row_size(), Some(6));
        assert_eq!(spec("x", &[None, None]).row_size(), None);
    }
}

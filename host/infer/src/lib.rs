//! The model runtime: ONNX models (TempCNN, LSTM, …) run by ONNX Runtime through `ort`,
//! for stages that call the `infer` host import.
//!
//! Architecture invariants:
//! - this is the only crate that knows `ort` (`scripts/check-layers.sh` enforces it); a plugin never links a model runtime, it
//!   names a model its pipeline declares and hands tensors across the `infer` import
//!   (like wasi-nn's `load-by-name`);
//! - ONNX Runtime is a shared library loaded at run time, once per process, from
//!   `ORT_DYLIB_PATH` or the copy `scripts/setup.sh` puts in `.deps/`; when it is missing
//!   the error names the path tried and the script, and nothing else in the host breaks;
//! - one session per (model file, device) per process, shared by every stage instance
//!   that uses the model (the registry in `model.rs`).
//!
//! Code map: `library.rs` (finding and loading the library, its version and providers,
//! the CUDA checks), `model.rs` (`Model`: sidecar metadata, session registry, checked
//! `run`, `run_batched`), `doctor.rs` (what `sitsflow doctor` prints about all this).

#![deny(missing_docs)]

mod doctor;
mod library;
mod model;

pub use doctor::{CudaReport, Doctor, LibraryCheck, OnnxRuntimeReport, doctor};
pub use library::{CUDA_LIBRARIES, CUDA_PROVIDER_LIBRARY, default_library, library_path, resolve_library};
pub use sitsflow_core::Device;
pub use model::{
    CPU_MAX_BATCH_ITEMS, ClassMetadata, InputMetadata, METADATA_CONTRACT, Model, ModelMetadata, NamedTensor, OutputMetadata, TensorSpec,
    VhrMetadata,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};


/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// ONNX Runtime's CUDA execution provider.
    Cuda,
}

impl Provider {
    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "CPU",
            Provider::Cuda => "CUDA",
        })
    }
}

/// Why loading or running a model failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    /// The ONNX Runtime library is missing or unusable.
    #[error("ONNX Runtime is not available: {0} (scripts/setup.sh installs it into .deps/; set ORT_DYLIB_PATH to use another copy)")]
    Library(String),
    /// `Device::Cuda` was asked for and CUDA is not usable here.
    #[error("the CUDA execution provider is not usable here: {0}")]
    CudaUnavailable(String),
    /// The model file could not be read or turned into a session.
    #[error("model {}: {reason}", path.display())]
    Load {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The metadata sidecar beside the model is malformed or contradicts the graph.
    #[error("model metadata {}: {reason}", path.display())]
    Metadata {
        /// The sidecar file.
        path: PathBuf,
        /// What is wrong with the sidecar.
        reason: String,
    },
    /// Tensor names, shapes or sizes do not fit the model.
    #[error("{0}")]
    InvalidInput(String),
    /// ONNX Runtime failed while running the model.
    #[error("{0}")]
    Failed(String),
}

/// A model a pipeline declares: the name stages use with `infer`, the file, the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name stages pass to `infer`.
    pub name: String,
    /// The `.onnx` file.
    pub path: PathBuf,
    /// The device asked for.
    pub device: Device,
}

/// The models the stages of a pipeline may call, by the names the pipeline gives them.
/// Stage instances hold it behind an `Arc`; an empty set means the `infer` import answers
/// `unsupported`.
#[derive(Debug, Clone, Default)]
pub struct ModelSet {
    models: BTreeMap<String, Arc<Model>>,
}

impl ModelSet {
    /// The shared empty set (instances of stages that declare no models).
    pub fn empty() -> Arc<ModelSet> {
        static EMPTY: OnceLock<Arc<ModelSet>> = OnceLock::new();
        EMPTY.get_or_init(|| Arc::new(ModelSet::default())).clone()
    }

    /// Loads every model (sessions come from the process-wide registry, so a file named
    /// twice is loaded once).
    pub fn load(specs: &[ModelSpec]) -> Result<ModelSet, InferenceError> {
        let mut set = ModelSet::default();
        for spec in specs {
            let model = Model::load(&spec.path, spec.device)?;
            if set.models.insert(spec.name.clone(), model).is_some() {
                return Err(InferenceError::Load {
                    path: spec.path.clone(),
                    reason: format!("the model name '{}' is declared twice", spec.name),
                });
            }
        }
        Ok(set)
    }

    /// Adds a model under a name, returning the one it replaces.
    pub fn insert(&mut self, name: impl Into<String>, model: Arc<Model>) -> Option<Arc<Model>> {
        self.models.insert(name.into(), model)
    }

    /// The model of this name, if the pipeline declares one.
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The models with their names, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Model>)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many models there are.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is declared.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_through_serde_and_from_str() {
        for (device, name) in [(Device::Auto, "auto"), (Device::Cpu, "cpu"), (Device::Cuda, "cuda")] {
            assert_eq!(serde_json::to_string(&device).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Device>(&format!("\"{name}\"")).unwrap(), device);
            assert_eq!(name.parse::<Device>().unwrap(), device);
            assert_eq!(device.to_string(), name);
        }
        assert!("gpu".parse::<Device>().unwrap_err().contains("auto, cpu or cuda"));
        assert!(serde_json::from_str::<Device>("\"CUDA\"").is_err());
    }

    #[test]
    fn empty_set_is_shared() {
        assert!(Arc::ptr_eq(&ModelSet::empty(), &ModelSet::empty()));
        assert!(ModelSet::empty().is_empty());
    }
}

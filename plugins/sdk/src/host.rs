//! What the host offers a stage: logging, progress and model inference.
//!
//! Inside the sandbox these call the host imports; when the stage code runs natively
//! (unit tests, benchmarks) logging goes to stderr, progress is dropped and inference
//! reports `Unsupported`.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A dense f32 tensor for [`infer`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u32>,
    pub data: Vec<f32>,
}

/// Why [`infer`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferError {
    Unsupported(String),
    UnknownModel(String),
    InvalidInput(String),
    Failed(String),
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InferError::Unsupported(m) => write!(f, "inference unsupported: {m}"),
            InferError::UnknownModel(m) => write!(f, "unknown model: {m}"),
            InferError::InvalidInput(m) => write!(f, "invalid model input: {m}"),
            InferError::Failed(m) => write!(f, "inference failed: {m}"),
        }
    }
}

impl std::error::Error for InferError {}

impl From<InferError> for crate::StageError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Unsupported(m) => crate::StageError::Unsupported(m),
            InferError::InvalidInput(m) => crate::StageError::InvalidInput(m),
            other => crate::StageError::Failed(other.to_string()),
        }
    }
}

/// Writes a line to the host's log, tagged by the host with stage id and chunk.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::wit::host::LogLevel;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        crate::wit::host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    if level >= Level::Warn {
        eprintln!("[{level:?}] {message}");
    }
}

/// Reports progress within the current call.
pub fn progress(done: u64, total: u64) {
    #[cfg(target_arch = "wasm32")]
    crate::wit::host::progress(done, total);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (done, total);
}

/// Runs a model the pipeline declares, on the host's model runtime.
pub fn infer(model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::wit::host::InferError as E;
        let inputs: Vec<_> = inputs
            .into_iter()
            .map(|t| crate::wit::types::Tensor { name: t.name, shape: t.shape, data: t.data })
            .collect();
        match crate::wit::host::infer(model, &inputs) {
            Ok(out) => Ok(out
                .into_iter()
                .map(|t| Tensor { name: t.name, shape: t.shape, data: t.data })
                .collect()),
            Err(E::Unsupported(m)) => Err(InferError::Unsupported(m)),
            Err(E::UnknownModel(m)) => Err(InferError::UnknownModel(m)),
            Err(E::InvalidInput(m)) => Err(InferError::InvalidInput(m)),
            Err(E::Failed(m)) => Err(InferError::Failed(m)),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = inputs;
        Err(InferError::Unsupported(format!(
            "model '{model}': no host model runtime when a stage runs natively"
        )))
    }
}

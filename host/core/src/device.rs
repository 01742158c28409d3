//! Where a model should run: the choice a pipeline or a flag states. `infer` turns it
//! into an execution provider; `config` only checks its spelling.

use std::fmt;
use std::str::FromStr;

/// Where a model should run, as a pipeline or a flag says it (`auto`, `cpu`, `cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when it works here, else CPU (saying why, once per process).
    #[default]
    Auto,
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// CUDA or an error saying why not.
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device '{other}' (auto, cpu or cuda)")),
        }
    }
}

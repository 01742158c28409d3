//! What `sitsflow doctor` reports about the model runtime: the ONNX Runtime library, its
//! providers, and whether CUDA works here or exactly why not. Everything is cheap to check
//! (no model of the user's is loaded).

use super::library::{self, CUDA_PROVIDER_LIBRARY};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// The model runtime's part of `sitsflow doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct Doctor {
    /// The ONNX Runtime library: where it is, its version and providers.
    pub onnxruntime: OnnxRuntimeReport,
    /// Whether CUDA works here, or why not.
    pub cuda: CudaReport,
    /// The CPU threads and SIMD features ONNX Runtime can use.
    pub cpu: CpuReport,
}

/// The ONNX Runtime library as `sitsflow doctor` found it.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxRuntimeReport {
    /// The library used or tried.
    pub library: Option<PathBuf>,
    /// `ORT_DYLIB_PATH` or `default` (the workspace's `.deps/`).
    pub source: String,
    /// The library's version, when it loaded.
    pub version: Option<String>,
    /// Execution providers compiled into the library.
    pub providers: Vec<String>,
    /// Why it could not be loaded.
    pub error: Option<String>,
}

/// Whether the CUDA execution provider is usable here, and what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct CudaReport {
    /// A CUDA session was created here (on a one-node probe graph).
    pub usable: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// `libonnxruntime_providers_cuda.so` beside the library, when it is there.
    pub provider_library: Option<PathBuf>,
    /// First line of `/proc/driver/nvidia/version`.
    pub driver: Option<String>,
    /// `/dev/nvidia<N>` device nodes.
    pub devices: Vec<String>,
    /// The CUDA and cuDNN libraries the GPU build needs, and whether this process can load each.
    pub libraries: Vec<LibraryCheck>,
}

/// One CUDA or cuDNN library the GPU build needs, and whether it loads.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryCheck {
    /// The library's file name.
    pub name: String,
    /// Whether this process can load it.
    pub found: bool,
    /// The dynamic linker's message when not found.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Threads this process may use.
    pub threads: usize,
    /// SIMD extensions ONNX Runtime's CPU kernels use when present.
    pub features: Vec<String>,
}

/// One Identity node, `x: f32[1] → y`: enough for ONNX Runtime to create a CUDA session
/// (ir_version 8, opset 17), so `doctor` tests the real thing rather than guessing.
const PROBE_MODEL: &[u8] = &[
    8, 8, 58, 59, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121, 18, 5, 112, 114, 111, 98,
    101, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2,
    8, 1, 66, 2, 16, 17,
];

/// Checks the model runtime of this process.
pub fn doctor() -> Doctor {
    let source = if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty()) { "ORT_DYLIB_PATH" } else { "default" };
    let tried = library::library_path().ok().or_else(|| {
        std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| Some(library::default_library()))
    });
    let runtime = library::runtime();
    let onnxruntime = match &runtime {
        Ok(rt) => OnnxRuntimeReport {
            library: Some(rt.library.clone()),
            source: source.into(),
            version: Some(rt.version.clone()),
            providers: rt.providers.clone(),
            error: None,
        },
        Err(e) => OnnxRuntimeReport { library: tried, source: source.into(), version: None, providers: Vec::new(), error: Some(e.to_string()) },
    };
    if let Ok(rt) = &runtime {
        library::preload_cuda_wheels(&rt.library);
    }
    let libraries: Vec<LibraryCheck> = library::cuda_library_checks()
        .into_iter()
        .map(|(name, r)| LibraryCheck { name, found: r.is_ok(), error: r.err() })
        .collect();
    let provider_library = runtime.as_ref().ok().map(|rt| rt.library.with_file_name(CUDA_PROVIDER_LIBRARY)).filter(|p| p.is_file());
    let (usable, reason) = match &runtime {
        Err(_) => (false, Some("ONNX Runtime is not loaded".to_string())),
        Ok(rt) => match library::cuda_blocker(rt) {
            Some(reason) => (false, Some(reason)),
            None => match probe_cuda(rt) {
                Ok(()) => (true, None),
                Err(reason) => (false, Some(reason)),
            },
        },
    };
    Doctor {
        onnxruntime,
        cuda: CudaReport { usable, reason, provider_library, driver: nvidia_driver(), devices: nvidia_devices(), libraries },
        cpu: CpuReport { threads: std::thread::available_parallelism().map_or(1, |n| n.get()), features: cpu_features() },
    }
}

fn probe_cuda(rt: &library::OrtRuntime) -> Result<(), String> {
    let mut builder = ort::session::Session::builder(&rt.environment)
        .map_err(|e| e.to_string())?
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| e.to_string())?;
    builder.commit_from_memory(PROBE_MODEL).map(drop).map_err(|e| e.to_string())
}

fn nvidia_driver() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    text.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn nvidia_devices() -> Vec<String> {
    let mut devices: Vec<String> = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.strip_prefix("nvidia").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    devices.sort();
    devices
}

fn cpu_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut features = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2".to_string());
        }
        if std::arch::is_x86_feature_detected!("fma") {
            features.push("fma".to_string());
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f".to_string());
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            features.push("avx512vnni".to_string());
        }
        features
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

impl fmt::Display for Doctor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ort = &self.onnxruntime;
        let library = ort.library.as_ref().map_or_else(|| "-".to_string(), |p| p.display().to_string());
        match &ort.error {
            None => {
                writeln!(f, "ONNX Runtime  {} at {library} ({})", ort.version.as_deref().unwrap_or("unknown"), ort.source)?;
                writeln!(f, "  providers   {}", ort.providers.join(", "))?;
            }
            Some(e) => writeln!(f, "ONNX Runtime  not loaded from {library} ({}): {e}", ort.source)?,
        }
        let cuda = &self.cuda;
        match &cuda.reason {
            None => writeln!(f, "CUDA          usable")?,
            Some(reason) => writeln!(f, "CUDA          not usable: {reason}")?,
        }
        let provider = cuda.provider_library.as_ref().map_or_else(|| format!("{CUDA_PROVIDER_LIBRARY} absent"), |p| p.display().to_string());
        writeln!(f, "  provider    {provider}")?;
        writeln!(f, "  driver      {}", cuda.driver.as_deref().unwrap_or("none (no /proc/driver/nvidia/version)"))?;
        writeln!(f, "  devices     {}", if cuda.devices.is_empty() { "none".to_string() } else { cuda.devices.join(", ") })?;
        let (found, missing): (Vec<&LibraryCheck>, Vec<&LibraryCheck>) = cuda.libraries.iter().partition(|l| l.found);
        let names = |v: &[&LibraryCheck]| v.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ");
        if !found.is_empty() {
            writeln!(f, "  found       {}", names(&found))?;
        }
        if !missing.is_empty() {
            writeln!(f, "  missing     {}", names(&missing))?;
        }
        let features = if self.cpu.features.is_empty() { "no AVX2".to_string() } else { self.cpu.features.join(", ") };
        writeln!(f, "CPU           {} threads; {features}", self.cpu.threads)
    }
}

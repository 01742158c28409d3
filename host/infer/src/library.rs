//! The ONNX Runtime shared library: where it is, loading it once per process, its
//! version and execution providers, and what its CUDA provider needs.

use super::InferenceError;
use std::ffi::{CStr, OsString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where `scripts/setup.sh` puts the library (from the `onnxruntime` 1.31.1 PyPI wheel),
/// relative to the workspace.
const DEFAULT_RELATIVE: &str = ".deps/onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The CUDA execution provider: a separate library beside `libonnxruntime.so` in GPU
/// builds, absent from the CPU wheel.
pub const CUDA_PROVIDER_LIBRARY: &str = "libonnxruntime_providers_cuda.so";

/// What the CUDA provider of the `onnxruntime-gpu` 1.31.1 wheel loads: the driver, the
/// CUDA 13 libraries it links (its ELF `NEEDED` entries plus NVRTC and cuFFT) and cuDNN 9,
/// which it opens on first use.
pub const CUDA_LIBRARIES: &[&str] = &[
    "libcuda.so.1",
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libnvrtc.so.13",
    "libcudnn.so.9",
];

/// The library of the workspace this binary was built from (right for `cargo run` and the
/// tests; an installed binary is pointed at its library with `ORT_DYLIB_PATH`).
pub fn default_library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(Path::new(".")).join(DEFAULT_RELATIVE)
}

/// The library to load: `ORT_DYLIB_PATH` (`env_value`) when set, else `default` when it
/// exists. The error says which was tried and why it is not there.
pub fn resolve_library(env_value: Option<OsString>, default: &Path) -> Result<PathBuf, InferenceError> {
    resolve(env_value, default).map_err(InferenceError::Library)
}

fn resolve(env_value: Option<OsString>, default: &Path) -> Result<PathBuf, String> {
    match env_value.filter(|v| !v.is_empty()) {
        Some(v) => {
            let path = PathBuf::from(v);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("ORT_DYLIB_PATH is {}, which is not a file", path.display()))
            }
        }
        None if default.is_file() => Ok(default.to_path_buf()),
        None => Err(format!("ORT_DYLIB_PATH is not set and the default library {} does not exist", default.display())),
    }
}

/// [`resolve_library`] with this process's environment.
pub fn library_path() -> Result<PathBuf, InferenceError> {
    resolve_library(std::env::var_os("ORT_DYLIB_PATH"), &default_library())
}

/// The loaded runtime: the one `ort` environment of the process and what it is.
pub(crate) struct OrtRuntime {
    pub(crate) environment: ort::environment::Environment,
    /// Canonical path of the loaded library (its provider libraries sit beside it).
    pub(crate) library: PathBuf,
    pub(crate) version: String,
    /// Execution providers compiled into the library, e.g. `CPUExecutionProvider`.
    pub(crate) providers: Vec<String>,
}

/// Loads the library on first use. A failure is remembered: the process cannot load a
/// second copy after `ort` has settled on a path.
pub(crate) fn runtime() -> Result<&'static OrtRuntime, InferenceError> {
    static RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();
    RUNTIME.get_or_init(load).as_ref().map_err(|e| InferenceError::Library(e.clone()))
}

fn load() -> Result<OrtRuntime, String> {
    let path = resolve(std::env::var_os("ORT_DYLIB_PATH"), &default_library())?;
    let library = path.canonicalize().unwrap_or(path);
    // `init_from` dlopens the library and checks its API version; every later `ort` call
    // uses this copy (without it `ort` would fall back to whatever `libonnxruntime.so`
    // the dynamic linker finds, and panic when there is none).
    let builder = ort::init_from(&library).map_err(|e| e.to_string())?;
    let environment = builder
        .with_name("sitsflow")
        .with_telemetry(false)
        .with_logger(Arc::new(forward_log))
        .build()
        .map_err(|e| format!("creating the environment of {}: {e}", library.display()))?;
    // The custom logger makes ONNX Runtime report everything; its info lines are per-node chatter.
    environment.set_log_level(ort::logging::LogLevel::Warning);
    let version = version_of(&library).unwrap_or_else(|| "unknown".into());
    let providers = available_providers().map_err(|e| format!("listing the execution providers of {}: {e}", library.display()))?;
    log::debug!(target: "inference", "ONNX Runtime {version} from {} (providers: {})", library.display(), providers.join(", "));
    Ok(OrtRuntime { environment, library, version, providers })
}

/// ONNX Runtime's own log lines go to the host's log under the `onnxruntime` target.
fn forward_log(level: ort::logging::LogLevel, _category: &str, _id: &str, _location: &str, message: &str) {
    use ort::logging::LogLevel as L;
    let level = match level {
        L::Verbose => log::Level::Trace,
        L::Info => log::Level::Debug,
        L::Warning => log::Level::Warn,
        L::Error | L::Fatal => log::Level::Error,
    };
    log::log!(target: "onnxruntime", level, "{message}");
}

/// The version string of the loaded library (`OrtGetApiBase()->GetVersionString()`), which
/// `ort` reads for its version check but does not expose.
#[cfg(unix)]
fn version_of(library: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(library.as_os_str().as_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only hands back the copy `ort` already loaded (no constructors
    // run, no second copy). `OrtGetApiBase` has this C signature in every 1.x release,
    // and the version string it points to is static.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let symbol = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if symbol.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(symbol);
            let base = get_base();
            if base.is_null() {
                None
            } else {
                let text = ((*base).GetVersionString)();
                (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
            }
        };
        libc::dlclose(handle);
        version
    }
}

#[cfg(not(unix))]
fn version_of(_library: &Path) -> Option<String> {
    None
}

/// Every execution provider compiled into the library (`ort` only answers per provider).
fn available_providers() -> Result<Vec<String>, String> {
    let api = ort::api();
    let mut names: *mut *mut c_char = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: the C API fills `names` with `count` NUL-terminated strings that stay valid
    // until `ReleaseAvailableProviders`, which is called once, after they are copied.
    unsafe {
        status((api.GetAvailableProviders)(&mut names, &mut count))?;
        if names.is_null() {
            return Ok(Vec::new());
        }
        let providers = (0..count.max(0) as usize)
            .map(|i| CStr::from_ptr(*names.add(i)).to_string_lossy().into_owned())
            .collect();
        status((api.ReleaseAvailableProviders)(names, count))?;
        Ok(providers)
    }
}

/// An `OrtStatus` as a `Result`, releasing it.
///
/// # Safety
/// `s` must be a status returned by the C API and not yet released.
unsafe fn status(s: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if s.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status carries a NUL-terminated message until it is released.
    unsafe {
        let message = CStr::from_ptr((api.GetErrorMessage)(s.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(s.0);
        Err(message)
    }
}

/// Why CUDA cannot even be tried with this library, or `None` when a session may try it.
pub(crate) fn cuda_blocker(runtime: &OrtRuntime) -> Option<String> {
    if !runtime.providers.iter().any(|p| p == "CUDAExecutionProvider") {
        return Some(format!(
            "the ONNX Runtime library {} ({}) is built without the CUDA execution provider (the CPU `onnxruntime` \
             wheel; scripts/setup-gpu.sh installs the GPU build)",
            runtime.library.display(),
            runtime.version
        ));
    }
    let provider = runtime.library.with_file_name(CUDA_PROVIDER_LIBRARY);
    if !provider.is_file() {
        return Some(format!("{CUDA_PROVIDER_LIBRARY} is absent beside {}", runtime.library.display()));
    }
    None
}

/// Loads the CUDA and cuDNN libraries of the `nvidia-*` wheels that `scripts/setup-gpu.sh`
/// installs beside `onnxruntime/` (`nvidia/cu13/lib`, `nvidia/cudnn/lib`), in the order
/// onnxruntime's Python package preloads them, so the CUDA provider finds them by soname
/// without `LD_LIBRARY_PATH`. Once per process; libraries that are not there are skipped
/// (the provider's own error, or [`cuda_library_checks`], names what is missing).
pub(crate) fn preload_cuda_wheels(library: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // <site>/onnxruntime/capi/libonnxruntime.so.* → <site>/nvidia
        let Some(nvidia) = library.parent().and_then(Path::parent).and_then(Path::parent).map(|s| s.join("nvidia")) else {
            return;
        };
        let cuda = nvidia.join("cu13/lib");
        let order = [
            cuda.join("libcublasLt.so.13"),
            cuda.join("libcublas.so.13"),
            cuda.join("libnvrtc.so.13"),
            cuda.join("libcurand.so.10"),
            cuda.join("libnvJitLink.so.13"),
            cuda.join("libcufft.so.12"),
            cuda.join("libcudart.so.13"),
            nvidia.join("cudnn/lib/libcudnn.so.9"),
        ];
        for path in order.iter().filter(|p| p.is_file()) {
            match open_library(&path.to_string_lossy(), true) {
                Ok(()) => log::debug!(target: "inference", "preloaded {}", path.display()),
                Err(e) => log::debug!(target: "inference", "could not preload {}: {e}", path.display()),
            }
        }
    });
}

/// Whether each of [`CUDA_LIBRARIES`] can be loaded by this process (after the wheel preload).
pub(crate) fn cuda_library_checks() -> Vec<(String, Result<(), String>)> {
    CUDA_LIBRARIES.iter().map(|name| (name.to_string(), open_library(name, false))).collect()
}

/// `dlopen`s a library by name or path. `keep` leaves it loaded (global symbols) for the
/// CUDA provider; otherwise it is closed again and this is only a check.
#[cfg(unix)]
fn open_library(name: &str, keep: bool) -> Result<(), String> {
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("{name}: NUL in the name"))?;
    // SAFETY: loading runs the library's constructors, as the CUDA provider would; CUDA's
    // libraries initialise lazily (on their first API call). `dlerror` is read right after
    // the failing call on the same thread.
    unsafe {
        let flags = if keep { libc::RTLD_NOW | libc::RTLD_GLOBAL } else { libc::RTLD_LAZY | libc::RTLD_LOCAL };
        let handle = libc::dlopen(c_name.as_ptr(), flags);
        if handle.is_null() {
            let error = libc::dlerror();
            return Err(if error.is_null() {
                "not found".into()
            } else {
                CStr::from_ptr(error).to_string_lossy().into_owned()
            });
        }
        if !keep {
            libc::dlclose(handle);
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn open_library(name: &str, _keep: bool) -> Result<(), String> {
    Err(format!("{name}: checking libraries is only implemented on Unix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_variable_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libonnxruntime.so");
        std::fs::write(&file, b"").unwrap();
        let missing_default = dir.path().join("nope.so");
        assert_eq!(resolve(Some(file.clone().into()), &missing_default).unwrap(), file);
        let err = resolve(Some(dir.path().join("gone.so").into()), &file).unwrap_err();
        assert!(err.contains("ORT_DYLIB_PATH is") && err.contains("gone.so") && err.contains("not a file"), "{err}");
    }

    #[test]
    fn unset_or_empty_variable_falls_back_to_an_existing_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("libonnxruntime.so.1.31.1");
        let err = resolve(None, &default).unwrap_err();
        assert!(err.contains("not set") && err.contains("libonnxruntime.so.1.31.1"), "{err}");
        std::fs::write(&default, b"").unwrap();
        assert_eq!(resolve(None, &default).unwrap(), default);
        assert_eq!(resolve(Some(OsString::new()), &default).unwrap(), default);
        let wrapped = resolve_library(None, &dir.path().join("x.so")).unwrap_err().to_string();
        assert!(wrapped.contains("scripts/setup.sh"), "{wrapped}");
    }

    #[test]
    fn default_library_is_in_the_workspace_deps() {
        let path = default_library();
        assert!(path.ends_with(DEFAULT_RELATIVE));
        assert!(path.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap()));
    }
}

//! The process-wide engine and the epoch ticker that enforces deadlines.

use super::cache::ComponentCache;
use super::instance::StageState;
use super::plugin::Plugin;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, OptLevel};

/// How often the epoch advances; deadlines are rounded up to this.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of the process-wide runtime.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeOptions {
    /// `$SITSFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/sitsflow`, else `~/.cache/sitsflow`.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("SITSFLOW_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sitsflow")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sitsflow")));
        RuntimeOptions { cache_dir: dir }
    }
}

/// The engine, the linker with the host imports, and the component cache.
/// Create one per process and share it (`Arc`) between threads.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StageState>,
    cache: ComponentCache,
    ticker: Option<Ticker>,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Stages run numeric kernels: SIMD is part of the contract.
            .wasm_simd(true)
            .wasm_relaxed_simd(false);
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        // WASI p2 is linked because Rust's std for wasm32-wasip2 imports it; the
        // context grants nothing (see `StageState::new`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        crate::bindings::HostView::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the sitsflow host interface")?;

        let cache = ComponentCache::new(options.cache_dir, &engine);
        let ticker = Ticker::start(engine.clone());
        Ok(Arc::new(Runtime { engine, linker, cache, ticker: Some(ticker) }))
    }

    /// Loads (compiling or taking from the cache) a component file and asks it to
    /// describe itself.
    pub fn load(self: &Arc<Self>, path: &Path) -> Result<Arc<Plugin>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        let component = self
            .cache
            .component(&self.engine, &bytes)
            .with_context(|| format!("compiling plugin {}", path.display()))?;
        Plugin::new(self.clone(), path, &bytes, component)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`].
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("sitsflow-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Ticker { stop, handle }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

//! The process-wide engines and the epoch ticker that enforces deadlines.
//!
//! Two engines share one configuration but for interruption: the default one compiles
//! an epoch check into every function entry and loop header, which is what lets the
//! host stop a stage at its deadline; the trusted one compiles none (a stage loaded
//! through it runs without a deadline, and its tight loops run up to ~1.6× faster,
//! see `cargo bench --bench stages`). Memory caps and capability isolation are the
//! same in both.

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

/// Whether a stage's compiled code checks for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Interruption {
    /// Epoch checks at function entries and loop headers: the call stops at its
    /// deadline (the default, and the only safe choice for plugins you did not vet).
    #[default]
    Deadline,
    /// No checks: no deadline, faster tight loops. For plugins trusted to terminate.
    Trusted,
}

/// One wasmtime engine with its linker and component cache.
pub(crate) struct Backend {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StageState>,
    cache: ComponentCache,
}

impl Backend {
    fn new(interruption: Interruption, cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(interruption == Interruption::Deadline)
            .cranelift_opt_level(OptLevel::Speed)
            // Stages run numeric kernels: SIMD is part of the contract.
            .wasm_simd(true)
            .wasm_relaxed_simd(false);
        // Profiling plugins: `SITSFLOW_WASM_PROFILER=perfmap` makes the
        // compiled stage code visible to `perf record`, with the names the component
        // keeps (build it with `CARGO_PROFILE_PLUGIN_STRIP=false` to keep them).
        match std::env::var("SITSFLOW_WASM_PROFILER").as_deref() {
            Ok("perfmap") => {
                config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            Ok(other) => anyhow::bail!("SITSFLOW_WASM_PROFILER={other:?}: expected \"perfmap\""),
            Err(_) => {}
        }
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        // WASI p2 is linked because Rust's std for wasm32-wasip2 imports it; the
        // context grants nothing (see `StageState::new`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        // Sleeps are virtual: a guest can block in no host call (see `guest_env`).
        super::guest_env::link_virtual_sleep(&mut linker).context("linking virtual sleeps")?;
        crate::bindings::HostView::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the sitsflow host interface")?;
        // Plugins of WIT 0.1.x import `sitsflow:stage/host@0.1.x`.
        crate::bindings::since_v0_1::HostView::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the sitsflow host interface")?;
        // The engine's compatibility hash differs between the two, so their compiled
        // components never mix in the cache.
        let cache = ComponentCache::new(cache_dir, &engine);
        Ok(Backend { engine, linker, cache })
    }
}

/// The engines (with deadlines, and trusted), their linkers and component caches.
/// Create one per process and share it (`Arc`) between threads.
pub struct Runtime {
    checked: Backend,
    trusted: Backend,
    ticker: Option<Ticker>,
}

impl Runtime {
    /// Creates both engines with their linkers and component caches (`options.cache_dir`),
    /// and starts the epoch ticker that enforces deadlines.
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>> {
        let checked = Backend::new(Interruption::Deadline, options.cache_dir.clone())?;
        let trusted = Backend::new(Interruption::Trusted, options.cache_dir)?;
        let ticker = Ticker::start(checked.engine.clone());
        Ok(Arc::new(Runtime { checked, trusted, ticker: Some(ticker) }))
    }

    pub(crate) fn backend(&self, interruption: Interruption) -> &Backend {
        match interruption {
            Interruption::Deadline => &self.checked,
            Interruption::Trusted => &self.trusted,
        }
    }

    /// Loads (compiling or taking from the cache) a component file, with deadlines,
    /// and asks it to describe itself.
    pub fn load(self: &Arc<Self>, path: &Path) -> Result<Arc<Plugin>> {
        self.load_with(path, Interruption::Deadline)
    }

    /// Loads a component compiled for `interruption` (see [`Interruption`]).
    pub fn load_with(self: &Arc<Self>, path: &Path, interruption: Interruption) -> Result<Arc<Plugin>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        let backend = self.backend(interruption);
        let component = backend
            .cache
            .component(&backend.engine, &bytes)
            .with_context(|| format!("compiling plugin {}", path.display()))?;
        Plugin::new(self.clone(), interruption, path, &bytes, component)
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

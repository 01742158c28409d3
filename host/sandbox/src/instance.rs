//! Stage instances: a `Store` with its limits, the typed exports of its kind, and
//! a pool that reuses healthy instances across chunks.

use super::engine::{EPOCH_TICK, Interruption};
use super::plugin::{InputIndices, KindIndices, Plugin};
use crate::bindings::host::{self, InferError, LogLevel};
use crate::bindings::stages::{
    augmenter, cloud_mask, cloud_mask_inputs, clusterer, decoder, features, features_inputs, labeller, sampler,
    sampler_inputs,
};
use crate::bindings::since_v0_1::{self, stages as v01};
use crate::bindings::types::{self, Cube, FeatureMatrix, Footprint, ModelBlob, Placement, Probabilities, StageError, Tensor};
use sitsflow_infer::{InferenceError, ModelSet};
use std::fmt;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};


/// The sandbox limits of one stage instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on each linear memory of the instance.
    pub memory_bytes: usize,
    /// The longest one call may run (not enforced for a trusted plugin, whose code
    /// has no epoch checks).
    pub deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: sitsflow_core::limits::DEFAULT_MEMORY_MIB as usize * 1024 * 1024,
            deadline_ms: sitsflow_core::limits::DEFAULT_DEADLINE_MS,
        }
    }
}

/// Who is calling, for log lines and errors: the stage id and the chunk.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The stage id (or the plugin's name).
    pub stage: String,
    /// The chunk or step being worked on, e.g. `batch 3`; `-` when none.
    pub chunk: String,
}

/// Why a stage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StageCallError {
    /// The stage itself returned an error (bad input, parameters, …).
    #[error("{}", describe_stage_error(.0))]
    Stage(StageError),
    /// The call ran past its deadline and was interrupted.
    #[error("interrupted after its deadline of {deadline_ms} ms")]
    Deadline {
        /// The deadline it ran past.
        deadline_ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("tried to grow its memory to {requested_mib} MiB, past its cap of {cap_mib} MiB (raise `memory_mib`)")]
    Memory {
        /// The instance's memory cap.
        cap_mib: usize,
        /// The size the guest asked to grow its memory to.
        requested_mib: usize,
    },
    /// The guests of the run together would hold more than the run's budget leaves them.
    #[error(
        "tried to grow its memory to {requested_mib} MiB while the run's stage instances already hold {held_mib} MiB of the \
         {shared_mib} MiB the memory budget leaves them (raise `memory_budget_mib`, or lower the stage's use)"
    )]
    SharedMemory {
        /// What the memory budget leaves the run's stage instances together.
        shared_mib: usize,
        /// What the run's instances already held.
        held_mib: usize,
        /// The size the guest asked to grow its memory to.
        requested_mib: usize,
    },
    /// The guest trapped (a panic or another bug in the plugin).
    #[error("trapped: {0}")]
    Trap(String),
    /// The component could not be instantiated.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    /// The host asked a stage for something its kind does not do.
    #[error("is a {actual} stage, not a {expected} stage")]
    WrongKind {
        /// The kind the call needs.
        expected: KindName,
        /// The stage's own kind.
        actual: KindName,
    },
}

/// A stage's own error, its text cut to [`SHOWN_MESSAGE_BYTES`](sitsflow_core::fsutil::SHOWN_MESSAGE_BYTES).
fn describe_stage_error(e: &StageError) -> String {
    let cut = |m: &str| sitsflow_core::fsutil::cut_text(m, sitsflow_core::fsutil::SHOWN_MESSAGE_BYTES).into_owned();
    match e {
        StageError::InvalidInput(m) => format!("rejected its input: {}", cut(m)),
        StageError::InvalidParams(m) => format!("rejected its parameters: {}", cut(m)),
        StageError::Unsupported(m) => format!("cannot do this: {}", cut(m)),
        StageError::Failed(m) => format!("failed: {}", cut(m)),
    }
}

/// A stage kind's name as written in WIT and in messages (`cloud-mask`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindName(pub StageKind);

impl fmt::Display for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(kind_name(self.0))
    }
}

pub use sitsflow_core::kind::{StageKind, kind_name};

impl From<types::StageKind> for StageKind {
    fn from(kind: types::StageKind) -> Self {
        match kind {
            types::StageKind::CloudMask => StageKind::CloudMask,
            types::StageKind::Features => StageKind::Features,
            types::StageKind::Clusterer => StageKind::Clusterer,
            types::StageKind::Labeller => StageKind::Labeller,
            types::StageKind::Sampler => StageKind::Sampler,
            types::StageKind::Decoder => StageKind::Decoder,
        }
    }
}

/// What `describe()` says, whichever interface said it.
#[derive(Debug, Clone)]
pub struct Described {
    /// Plugin name, e.g. `normalized-difference`.
    pub name: String,
    /// Plugin version, e.g. `0.1.0`.
    pub version: String,
    /// The stage kind (for an augmenter, its interface: its `describe()` names none).
    pub kind: StageKind,
    /// One line for `sitsflow plugins list`.
    pub summary: String,
    /// JSON Schema of the parameters, as the plugin gives it (unparsed).
    pub params_schema: String,
}

impl From<types::StageInfo> for Described {
    fn from(i: types::StageInfo) -> Self {
        Described { name: i.name, version: i.version, kind: i.kind.into(), summary: i.summary, params_schema: i.params_schema }
    }
}

/// Per-store state: the (empty) WASI context, the limits' bookkeeping and the models the
/// stage may call through `infer`.
pub struct StageState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CapLimiter,
    stderr: super::stderr::TailPipe,
    /// `host.log` lines of the current call, within their limits.
    log_budget: super::stderr::LogBudget,
    /// What the guest sees of randomness and time: reseeded and reset at every call.
    random: super::guest_env::GuestRandom,
    clock: super::guest_env::GuestClock,
    /// The run's seed, mixed with the stage and chunk of each call (`StagePool::seeded`).
    run_seed: u64,
    context: CallContext,
    models: Arc<ModelSet>,
}

impl StageState {
    fn new(memory_bytes: usize, models: Arc<ModelSet>, shared: Option<Arc<GuestMemory>>) -> Self {
        let stderr = super::stderr::TailPipe::default();
        let random = super::guest_env::GuestRandom::default();
        let clock = super::guest_env::GuestClock::default();
        // Deny by default: no arguments, no environment, no preopened directories,
        // no sockets, no stdin; stdout is discarded and stderr kept for panic messages.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .secure_random(random.clone())
            .insecure_random(random.clone())
            .insecure_random_seed(super::guest_env::INSECURE_SEED)
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .build();
        StageState {
            wasi,
            table: ResourceTable::new(),
            limiter: CapLimiter { cap: memory_bytes, exceeded: None, shared, held: 0, shared_exceeded: None },
            stderr,
            log_budget: super::stderr::LogBudget::default(),
            random,
            clock,
            run_seed: 0,
            context: CallContext::default(),
            models,
        }
    }

    /// The `infer` import: a model of this stage's set on the host's model runtime.
    fn run_model(&self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
        if self.models.is_empty() {
            return Err(InferError::Unsupported(format!(
                "model '{model}': no models are declared for this stage (a pipeline declares them in [[model]] tables)"
            )));
        }
        let Some(found) = self.models.get(model) else {
            let names: Vec<&str> = self.models.names().collect();
            return Err(InferError::UnknownModel(format!("'{model}' is not declared (this stage has {})", names.join(", "))));
        };
        let inputs = inputs
            .into_iter()
            .map(|t| (t.name, t.shape.into_iter().map(|d| d as usize).collect(), t.data))
            .collect();
        let started = std::time::Instant::now();
        let outputs = found.run(inputs).map_err(|e| match e {
            InferenceError::InvalidInput(m) => InferError::InvalidInput(format!("model '{model}': {m}")),
            other => InferError::Failed(format!("model '{model}': {other}")),
        })?;
        log::trace!(
            target: "stage",
            "[{} {}] infer '{model}' on {} in {:?}",
            self.context.stage,
            self.context.chunk,
            found.provider(),
            started.elapsed()
        );
        outputs
            .into_iter()
            .map(|(name, shape, data)| {
                let shape = shape.iter().map(|&d| u32::try_from(d)).collect::<Result<Vec<u32>, _>>().map_err(|_| {
                    InferError::Failed(format!("model '{model}': output '{name}' has a dimension past u32 ({shape:?})"))
                })?;
                Ok(Tensor { name, shape, data })
            })
            .collect()
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StageState {
    pub(crate) fn clock(&self) -> &super::guest_env::GuestClock {
        &self.clock
    }

    pub(crate) fn ready_pollable(&mut self) -> wasmtime::Result<wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>> {
        super::guest_env::ready_pollable(&mut self.table)
    }
}

impl types::Host for StageState {}

/// The 0.1 `host` interface: the same functions, its own enum types.
impl since_v0_1::host::Host for StageState {
    fn log(&mut self, level: since_v0_1::host::LogLevel, message: String) -> wasmtime::Result<()> {
        use since_v0_1::host::LogLevel as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        host::Host::log(self, level, message)
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        host::Host::progress(self, done, total)
    }

    fn infer(&mut self, model: String, inputs: Vec<Tensor>) -> wasmtime::Result<Result<Vec<Tensor>, since_v0_1::host::InferError>> {
        use since_v0_1::host::InferError as E;
        Ok(self.run_model(&model, inputs).map_err(|e| match e {
            InferError::Unsupported(m) => E::Unsupported(m),
            InferError::UnknownModel(m) => E::UnknownModel(m),
            InferError::InvalidInput(m) => E::InvalidInput(m),
            InferError::Failed(m) => E::Failed(m),
        }))
    }
}

impl host::Host for StageState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error => log::Level::Error,
        };
        // A runaway plugin must not flood the log: long lines cut, and a bounded number
        // of lines per call (`call` says how many were dropped).
        let message: String = message.chars().take(2000).collect();
        if log::log_enabled!(target: "stage", level) && self.log_budget.admit(message.len()) {
            log::log!(target: "stage", level, "[{} {}] {message}", self.context.stage, self.context.chunk);
        }
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        log::trace!(target: "stage", "[{} {}] progress {done}/{total}", self.context.stage, self.context.chunk);
        Ok(())
    }

    // The time inside the model counts against the call's deadline: the epoch keeps
    // ticking and the guest is interrupted as soon as it resumes past it.
    fn infer(&mut self, model: String, inputs: Vec<Tensor>) -> wasmtime::Result<Result<Vec<Tensor>, InferError>> {
        Ok(self.run_model(&model, inputs))
    }
}

/// Caps each linear memory; remembers a refused growth so the trap that follows
/// (Rust aborts on allocation failure) is reported as a memory error.
struct CapLimiter {
    cap: usize,
    exceeded: Option<usize>,
    /// The run's account of all its instances' memory, when the pool has one.
    shared: Option<Arc<GuestMemory>>,
    /// What this store's memories hold (in `shared`'s account).
    held: usize,
    /// (what the run's instances held, what this one asked) when `shared` refused.
    shared_exceeded: Option<(usize, usize)>,
}

/// The memory of all the stage instances of a run, counted against what the memory
/// budget leaves them (`StagePool::sharing`): an instance may not grow when the sum
/// would pass it, so guests filling their `memory_mib` on every worker cannot take the
/// host past its budget. Its peak goes to the manifest.
#[derive(Debug)]
pub struct GuestMemory {
    cap: usize,
    held: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl GuestMemory {
    /// An empty account in which the run's instances may hold at most `cap_bytes` together.
    pub fn new(cap_bytes: usize) -> Arc<GuestMemory> {
        Arc::new(GuestMemory { cap: cap_bytes, held: Default::default(), peak: Default::default() })
    }

    /// The most the instances held at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the instances may hold together.
    pub fn cap_bytes(&self) -> usize {
        self.cap
    }

    /// Takes `delta` bytes if they fit, else returns what is held.
    fn reserve(&self, delta: usize) -> Result<(), usize> {
        use std::sync::atomic::Ordering;
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            if held + delta > self.cap {
                return Err(held);
            }
            match self.held.compare_exchange_weak(held, held + delta, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.peak.fetch_max(held + delta, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => held = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for CapLimiter {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.release(self.held);
        }
    }
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = Some(desired);
            return Ok(false);
        }
        if let Some(shared) = &self.shared {
            let delta = desired.saturating_sub(current);
            if let Err(held) = shared.reserve(delta) {
                self.shared_exceeded = Some((held, desired));
                return Ok(false);
            }
            self.held += delta;
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The typed exports of one instance, by kind (`…V01`: a plugin of WIT 0.1.x).
pub(crate) enum Guest {
    CloudMask(cloud_mask::Guest),
    Features(features::Guest),
    Clusterer(clusterer::Guest),
    Labeller(labeller::Guest),
    Sampler(sampler::Guest),
    Decoder(decoder::Guest),
    Augmenter(augmenter::Guest),
    CloudMaskV01(v01::cloud_mask::Guest),
    FeaturesV01(v01::features::Guest),
    ClustererV01(v01::clusterer::Guest),
    LabellerV01(v01::labeller::Guest),
    SamplerV01(v01::sampler::Guest),
    DecoderV01(v01::decoder::Guest),
}

impl Guest {
    fn kind(&self) -> StageKind {
        match self {
            Guest::CloudMask(_) | Guest::CloudMaskV01(_) => StageKind::CloudMask,
            Guest::Features(_) | Guest::FeaturesV01(_) => StageKind::Features,
            Guest::Clusterer(_) | Guest::ClustererV01(_) => StageKind::Clusterer,
            Guest::Labeller(_) | Guest::LabellerV01(_) => StageKind::Labeller,
            Guest::Sampler(_) | Guest::SamplerV01(_) => StageKind::Sampler,
            Guest::Decoder(_) | Guest::DecoderV01(_) => StageKind::Decoder,
            Guest::Augmenter(_) => StageKind::Augmenter,
        }
    }
}

/// The optional `<kind>-inputs` export, loaded.
enum Inputs {
    None,
    CloudMask(cloud_mask_inputs::Guest),
    Features(features_inputs::Guest),
    Sampler(sampler_inputs::Guest),
    CloudMaskV01(v01::cloud_mask_inputs::Guest),
    FeaturesV01(v01::features_inputs::Guest),
    SamplerV01(v01::sampler_inputs::Guest),
}

/// What a 0.1 plugin's footprint is: any chunk, no halo, the series' grid.
pub const FOOTPRINT_V01: Footprint = Footprint { tile: 0, halo: 0, scale: 1 };

/// Moves a record of one contract version into the same record of the other (their
/// fields are the same; only the generated types differ).
macro_rules! same_record {
    ($value:expr => $to:path { $($field:ident),* }) => {{
        let v = $value;
        $to { $($field: v.$field),* }
    }};
}

/// One sandboxed instance of a plugin. Not `Sync`: one thread calls it at a time.
pub struct Instance {
    store: Store<StageState>,
    guest: Guest,
    inputs: Inputs,
    /// The last `bands` answer: (params, the chunk's bands) → indices of the bands to hand over.
    bands_asked: Option<(String, Vec<String>, Option<Vec<usize>>)>,
    limits: Limits,
    /// False for a trusted plugin: its code has no epoch checks to stop it.
    deadlines: bool,
    trapped: bool,
}

macro_rules! kind_call {
    ($self:ident, $ctx:ident, $variant:ident, $expected:expr, |$g:ident, $store:ident| $call:expr) => {{
        let actual = $self.guest.kind();
        $self.call($ctx, |guest, $store| match guest {
            Guest::$variant($g) => Ok($call),
            _ => Err(StageCallError::WrongKind { expected: KindName($expected), actual: KindName(actual) }),
        })
    }};
    // A call whose 0.1 form takes and returns the same types (through `map`).
    ($self:ident, $ctx:ident, $variant:ident | $v01:ident, $expected:expr, |$g:ident, $store:ident| $call:expr, $map:expr) => {{
        let actual = $self.guest.kind();
        $self.call($ctx, |guest, $store| match guest {
            Guest::$variant($g) => Ok($call),
            Guest::$v01($g) => Ok($call.map(|r| r.map($map))),
            _ => Err(StageCallError::WrongKind { expected: KindName($expected), actual: KindName(actual) }),
        })
    }};
}

impl Instance {
    pub(crate) fn new(plugin: &Plugin, limits: Limits, models: Arc<ModelSet>, shared: Option<Arc<GuestMemory>>) -> Result<Self, StageCallError> {
        let engine = &plugin.runtime.backend(plugin.interruption).engine;
        let mut store = Store::new(engine, StageState::new(limits.memory_bytes, models, shared));
        store.limiter(|s| &mut s.limiter);
        // What a call may hand the host (its result included) is bounded by the
        // instance's own memory cap, which the budget counts: wasmtime's default of
        // 128 MiB trapped a legitimate features stage returning more (10 bands × 13
        // dates on a 512 px chunk), which the chunk sizer did not know of.
        store.set_hostcall_fuel(limits.memory_bytes.max(128 << 20));
        let deadlines = plugin.interruption == Interruption::Deadline;
        if deadlines {
            store.epoch_deadline_trap();
            store.set_epoch_deadline(deadline_ticks(limits.deadline_ms));
        }
        let instance = plugin.pre.instantiate(&mut store).map_err(|e| StageCallError::Instantiate(format!("{e:#}")))?;
        let guest = match &plugin.indices {
            KindIndices::CloudMask(i) => Guest::CloudMask(loaded(i.load(&mut store, &instance))?),
            KindIndices::Features(i) => Guest::Features(loaded(i.load(&mut store, &instance))?),
            KindIndices::Clusterer(i) => Guest::Clusterer(loaded(i.load(&mut store, &instance))?),
            KindIndices::Labeller(i) => Guest::Labeller(loaded(i.load(&mut store, &instance))?),
            KindIndices::Sampler(i) => Guest::Sampler(loaded(i.load(&mut store, &instance))?),
            KindIndices::Decoder(i) => Guest::Decoder(loaded(i.load(&mut store, &instance))?),
            KindIndices::Augmenter(i) => Guest::Augmenter(loaded(i.load(&mut store, &instance))?),
            KindIndices::CloudMaskV01(i) => Guest::CloudMaskV01(loaded(i.load(&mut store, &instance))?),
            KindIndices::FeaturesV01(i) => Guest::FeaturesV01(loaded(i.load(&mut store, &instance))?),
            KindIndices::ClustererV01(i) => Guest::ClustererV01(loaded(i.load(&mut store, &instance))?),
            KindIndices::LabellerV01(i) => Guest::LabellerV01(loaded(i.load(&mut store, &instance))?),
            KindIndices::SamplerV01(i) => Guest::SamplerV01(loaded(i.load(&mut store, &instance))?),
            KindIndices::DecoderV01(i) => Guest::DecoderV01(loaded(i.load(&mut store, &instance))?),
        };
        let inputs = match &plugin.inputs {
            InputIndices::None => Inputs::None,
            InputIndices::CloudMask(i) => Inputs::CloudMask(loaded(i.load(&mut store, &instance))?),
            InputIndices::Features(i) => Inputs::Features(loaded(i.load(&mut store, &instance))?),
            InputIndices::Sampler(i) => Inputs::Sampler(loaded(i.load(&mut store, &instance))?),
            InputIndices::CloudMaskV01(i) => Inputs::CloudMaskV01(loaded(i.load(&mut store, &instance))?),
            InputIndices::FeaturesV01(i) => Inputs::FeaturesV01(loaded(i.load(&mut store, &instance))?),
            InputIndices::SamplerV01(i) => Inputs::SamplerV01(loaded(i.load(&mut store, &instance))?),
        };
        Ok(Instance { store, guest, inputs, bands_asked: None, limits, deadlines, trapped: false })
    }

    /// False once the instance has trapped; it must then be discarded.
    pub fn is_healthy(&self) -> bool {
        !self.trapped
    }

    /// Runs one export under the deadline and classifies what went wrong.
    fn call<R>(
        &mut self,
        context: &CallContext,
        f: impl FnOnce(&Guest, &mut Store<StageState>) -> Result<wasmtime::Result<Result<R, StageError>>, StageCallError>,
    ) -> Result<R, StageCallError> {
        assert!(!self.trapped, "a trapped instance must not be called again");
        self.store.data_mut().context = context.clone();
        self.store.data_mut().limiter.exceeded = None;
        self.store.data_mut().limiter.shared_exceeded = None;
        let state = self.store.data();
        state.stderr.clear();
        state.random.reseed(super::guest_env::seed_of(state.run_seed, &context.stage, &context.chunk));
        state.clock.reset();
        if self.deadlines {
            self.store.set_epoch_deadline(deadline_ticks(self.limits.deadline_ms));
        }
        let outcome = f(&self.guest, &mut self.store)?;
        let dropped = self.store.data_mut().log_budget.finish();
        if dropped > 0 {
            log::warn!(
                target: "stage",
                "[{} {}] … {dropped} more log lines of this call dropped (at most {} lines, {} KiB a call)",
                context.stage,
                context.chunk,
                super::stderr::LOG_LINES_PER_CALL,
                super::stderr::LOG_BYTES_PER_CALL >> 10
            );
        }
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(stage_error)) => Err(StageCallError::Stage(stage_error)),
            Err(trap) => {
                self.trapped = true;
                let state = self.store.data();
                if let (Some((held, requested)), Some(shared)) = (state.limiter.shared_exceeded, &state.limiter.shared) {
                    return Err(StageCallError::SharedMemory {
                        shared_mib: shared.cap_bytes() >> 20,
                        held_mib: held >> 20,
                        requested_mib: requested.div_ceil(1 << 20),
                    });
                }
                if let Some(requested) = state.limiter.exceeded {
                    return Err(StageCallError::Memory {
                        cap_mib: self.limits.memory_bytes >> 20,
                        requested_mib: requested.div_ceil(1 << 20),
                    });
                }
                if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    return Err(StageCallError::Deadline { deadline_ms: self.limits.deadline_ms });
                }
                let stderr = state.stderr.contents();
                let cause = trap.downcast_ref::<Trap>().map_or_else(|| format!("{trap:#}"), |t| t.to_string());
                Err(StageCallError::Trap(if stderr.is_empty() { cause } else { format!("{cause}; the plugin wrote: {stderr}") }))
            }
        }
    }

    /// `describe()` of whatever kind this instance is.
    pub fn describe(&mut self, context: &CallContext) -> Result<Described, StageCallError> {
        self.call(context, |guest, store| {
            let described: wasmtime::Result<Described> = match guest {
                Guest::Augmenter(g) => g.call_describe(&mut *store).map(|i| Described {
                    name: i.name,
                    version: i.version,
                    kind: StageKind::Augmenter,
                    summary: i.summary,
                    params_schema: i.params_schema,
                }),
                Guest::CloudMask(g) => g.call_describe(store).map(Described::from),
                Guest::Features(g) => g.call_describe(store).map(Described::from),
                Guest::Clusterer(g) => g.call_describe(store).map(Described::from),
                Guest::Labeller(g) => g.call_describe(store).map(Described::from),
                Guest::Sampler(g) => g.call_describe(store).map(Described::from),
                Guest::Decoder(g) => g.call_describe(store).map(Described::from),
                Guest::CloudMaskV01(g) => g.call_describe(store).map(Described::from),
                Guest::FeaturesV01(g) => g.call_describe(store).map(Described::from),
                Guest::ClustererV01(g) => g.call_describe(store).map(Described::from),
                Guest::LabellerV01(g) => g.call_describe(store).map(Described::from),
                Guest::SamplerV01(g) => g.call_describe(store).map(Described::from),
                Guest::DecoderV01(g) => g.call_describe(store).map(Described::from),
            };
            Ok(described.map(Ok))
        })
    }

    /// Two seeded views of every patch of `batch` (an augmenter stage).
    pub fn augment(
        &mut self,
        context: &CallContext,
        batch: &augmenter::PatchBatch,
        params: &str,
    ) -> Result<augmenter::ViewPair, StageCallError> {
        kind_call!(self, context, Augmenter, StageKind::Augmenter, |g, store| g.call_augment(store, batch, params))
    }

    /// Masks `chunk` as if it were the whole scene ([`whole`]).
    pub fn mask(&mut self, context: &CallContext, chunk: &Cube, params: &str) -> Result<cloud_mask::MaskLayers, StageCallError> {
        self.mask_at(context, chunk, whole(chunk), params)
    }

    /// Features of `chunk` as if it were the whole scene ([`whole`]).
    pub fn features(&mut self, context: &CallContext, chunk: &Cube, params: &str) -> Result<FeatureMatrix, StageCallError> {
        self.features_at(context, chunk, whole(chunk), params)
    }

    /// The footprint of a chunk stage's call with `params`: what the stage says (0.2),
    /// or [`FOOTPRINT_V01`] for a 0.1 plugin.
    pub fn footprint(&mut self, context: &CallContext, params: &str) -> Result<Footprint, StageCallError> {
        let actual = self.guest.kind();
        self.call(context, |guest, store| match guest {
            Guest::CloudMask(g) => Ok(g.call_footprint_for(store, params)),
            Guest::Features(g) => Ok(g.call_footprint_for(store, params)),
            Guest::CloudMaskV01(_) | Guest::FeaturesV01(_) => Ok(Ok(Ok(FOOTPRINT_V01))),
            _ => Err(StageCallError::WrongKind { expected: KindName(StageKind::Features), actual: KindName(actual) }),
        })
    }

    /// Masks `chunk`, placed in the scene by `at` (a 0.1 plugin is not told). If the
    /// stage says which bands it reads (`cloud-mask-inputs`), only those are copied into
    /// the sandbox.
    pub fn mask_at(&mut self, context: &CallContext, chunk: &Cube, at: Placement, params: &str) -> Result<cloud_mask::MaskLayers, StageCallError> {
        let narrowed = self.narrowed(context, chunk, params)?;
        let chunk = narrowed.as_ref().unwrap_or(chunk);
        let actual = self.guest.kind();
        self.call(context, |guest, store| match guest {
            Guest::CloudMask(g) => Ok(g.call_mask(store, chunk, at, params)),
            Guest::CloudMaskV01(g) => Ok(g
                .call_mask(store, chunk, params)
                .map(|r| r.map(|m| same_record!(m => cloud_mask::MaskLayers { classes, probability })))),
            _ => Err(StageCallError::WrongKind { expected: KindName(StageKind::CloudMask), actual: KindName(actual) }),
        })
    }

    /// Features of `chunk`, with only the bands the stage reads copied in (as `mask`).
    pub fn features_at(&mut self, context: &CallContext, chunk: &Cube, at: Placement, params: &str) -> Result<FeatureMatrix, StageCallError> {
        let narrowed = self.narrowed(context, chunk, params)?;
        let chunk = narrowed.as_ref().unwrap_or(chunk);
        let actual = self.guest.kind();
        self.call(context, |guest, store| match guest {
            Guest::Features(g) => Ok(g.call_compute(store, chunk, at, params)),
            Guest::FeaturesV01(g) => Ok(g.call_compute(store, chunk, params)),
            _ => Err(StageCallError::WrongKind { expected: KindName(StageKind::Features), actual: KindName(actual) }),
        })
    }

    /// The bands of `chunk` a call with `params` reads, as indices into `chunk.bands`, or
    /// `None` for all of them (no `<kind>-inputs` export, the stage's answer, or an answer
    /// naming a band the chunk lacks). Asked once per parameters and band list.
    pub fn bands_read(&mut self, context: &CallContext, chunk: &Cube, params: &str) -> Result<Option<Vec<usize>>, StageCallError> {
        if let Some((p, b, answer)) = &self.bands_asked
            && p == params
            && *b == chunk.bands
        {
            return Ok(answer.clone());
        }
        let bands = &chunk.bands;
        // The same call on each contract's `<kind>-inputs` (their types differ).
        macro_rules! ask {
            ($g:expr) => {{
                let g = $g.clone();
                self.call(context, |_, store| Ok(g.call_bands(store, bands, params).map(Ok)))?
            }};
        }
        let names = match &self.inputs {
            Inputs::CloudMask(g) => ask!(g),
            Inputs::Features(g) => ask!(g),
            Inputs::CloudMaskV01(g) => ask!(g),
            Inputs::FeaturesV01(g) => ask!(g),
            _ => None,
        };
        let answer = names.and_then(|names| {
            let mut at: Vec<usize> = names.iter().map(|n| bands.iter().position(|b| b == n)).collect::<Option<_>>()?;
            at.sort_unstable();
            at.dedup();
            (at.len() < bands.len()).then_some(at)
        });
        self.bands_asked = Some((params.to_string(), bands.clone(), answer.clone()));
        Ok(answer)
    }

    /// `chunk` with only the bands the stage reads, or `None` to hand it over whole.
    fn narrowed(&mut self, context: &CallContext, chunk: &Cube, params: &str) -> Result<Option<Cube>, StageCallError> {
        Ok(self.bands_read(context, chunk, params)?.map(|at| select_bands(chunk, &at)))
    }

    /// Fits the clustering model on `samples` (a clusterer stage).
    pub fn fit(&mut self, context: &CallContext, samples: &FeatureMatrix, params: &str) -> Result<clusterer::Fitted, StageCallError> {
        kind_call!(self, context, Clusterer | ClustererV01, StageKind::Clusterer, |g, store| g.call_fit(store, samples, params), |f| {
            same_record!(f => clusterer::Fitted { model, report })
        })
    }

    /// Assigns every sample to a cluster of a fitted `model` (a clusterer stage).
    pub fn assign(
        &mut self,
        context: &CallContext,
        model: &ModelBlob,
        samples: &FeatureMatrix,
        params: &str,
    ) -> Result<clusterer::Assignment, StageCallError> {
        kind_call!(
            self,
            context,
            Clusterer | ClustererV01,
            StageKind::Clusterer,
            |g, store| g.call_assign(store, model, samples, params),
            |a| same_record!(a => clusterer::Assignment { clusters, distances })
        )
    }

    /// Trains a labeller on `samples` with one class code per sample (0 = unlabelled).
    pub fn train(
        &mut self,
        context: &CallContext,
        samples: &FeatureMatrix,
        labels: &[u16],
        params: &str,
    ) -> Result<labeller::Trained, StageCallError> {
        kind_call!(self, context, Labeller | LabellerV01, StageKind::Labeller, |g, store| g.call_train(store, samples, labels, params), |t| {
            same_record!(t => labeller::Trained { model, report })
        })
    }

    /// Class probabilities of every sample from a trained `model` (a labeller stage).
    pub fn predict(
        &mut self,
        context: &CallContext,
        model: &ModelBlob,
        samples: &FeatureMatrix,
        params: &str,
    ) -> Result<Probabilities, StageCallError> {
        kind_call!(self, context, Labeller | LabellerV01, StageKind::Labeller, |g, store| g.call_predict(store, model, samples, params), |p| p)
    }

    /// Runs the sampler on `input`. What the stage says it does not read
    /// (`sampler-inputs`) is taken out of `input` for the call, so it is not copied into
    /// the sandbox, and put back afterwards.
    pub fn select(
        &mut self,
        context: &CallContext,
        input: &mut sampler::SampleInput,
        params: &str,
    ) -> Result<sampler::Selection, StageCallError> {
        let needs = match &self.inputs {
            Inputs::Sampler(g) => {
                let g = g.clone();
                self.call(context, |_, store| Ok(g.call_needs(store, params).map(Ok)))?
            }
            Inputs::SamplerV01(g) => {
                let g = g.clone();
                let needs = self.call(context, |_, store| Ok(g.call_needs(store, params).map(Ok)))?;
                same_record!(needs => sampler_inputs::SampleNeeds { features, positions })
            }
            _ => sampler_inputs::SampleNeeds { features: true, positions: true },
        };
        let lent_positions = (!needs.positions).then(|| std::mem::take(&mut input.positions));
        let lent_features =
            (!needs.features).then(|| (std::mem::take(&mut input.features.names), std::mem::take(&mut input.features.data)));
        let actual = self.guest.kind();
        let result = self.call(context, |guest, store| match guest {
            Guest::Sampler(g) => Ok(g.call_select(store, input, params)),
            Guest::SamplerV01(g) => {
                // The 0.1 record is the same but for its Rust type: moved in and back.
                let v01_input = v01::sampler::SampleInput {
                    features: std::mem::replace(&mut input.features, FeatureMatrix { samples: 0, names: Vec::new(), data: Vec::new() }),
                    layers: std::mem::take(&mut input.layers),
                    probabilities: input.probabilities.take(),
                    positions: std::mem::take(&mut input.positions),
                    seed: input.seed,
                };
                let result = g.call_select(store, &v01_input, params);
                (input.features, input.layers, input.probabilities, input.positions) =
                    (v01_input.features, v01_input.layers, v01_input.probabilities, v01_input.positions);
                Ok(result.map(|r| r.map(|sel| same_record!(sel => sampler::Selection { indices, labels, report }))))
            }
            _ => Err(StageCallError::WrongKind { expected: KindName(StageKind::Sampler), actual: KindName(actual) }),
        });
        if let Some(positions) = lent_positions {
            input.positions = positions;
        }
        if let Some((names, data)) = lent_features {
            (input.features.names, input.features.data) = (names, data);
        }
        result
    }

    /// Decodes a series of class posteriors into class codes per step, and optionally
    /// smoothed posteriors (a decoder stage).
    pub fn decode(
        &mut self,
        context: &CallContext,
        series: &decoder::PosteriorSeries,
        params: &str,
    ) -> Result<decoder::Decoded, StageCallError> {
        let actual = self.guest.kind();
        self.call(context, |guest, store| match guest {
            Guest::Decoder(g) => Ok(g.call_decode(store, series, params)),
            Guest::DecoderV01(g) => {
                let v01_series = v01::decoder::PosteriorSeries {
                    steps: series.steps,
                    samples: series.samples,
                    classes: series.classes.clone(),
                    data: series.data.clone(),
                };
                Ok(g.call_decode(store, &v01_series, params).map(|r| r.map(|d| same_record!(d => decoder::Decoded { labels, posteriors }))))
            }
            _ => Err(StageCallError::WrongKind { expected: KindName(StageKind::Decoder), actual: KindName(actual) }),
        })
    }
}

/// The placement of a cube that is the whole scene, without halo.
pub fn whole(chunk: &Cube) -> Placement {
    Placement {
        row: 0,
        col: 0,
        core_row: 0,
        core_col: 0,
        core_rows: chunk.rows,
        core_cols: chunk.cols,
        scene_rows: chunk.rows,
        scene_cols: chunk.cols,
    }
}

/// The bands `at` (indices into `chunk.bands`, ascending) of every date of `chunk`.
fn select_bands(chunk: &Cube, at: &[usize]) -> Cube {
    let plane = chunk.rows as usize * chunk.cols as usize;
    let mut data = Vec::with_capacity(chunk.dates.len() * at.len() * plane);
    for date in chunk.data.chunks_exact(chunk.bands.len() * plane) {
        for &b in at {
            data.extend_from_slice(&date[b * plane..(b + 1) * plane]);
        }
    }
    Cube {
        dates: chunk.dates.clone(),
        bands: at.iter().map(|&b| chunk.bands[b].clone()).collect(),
        rows: chunk.rows,
        cols: chunk.cols,
        data,
        valid: chunk.valid.clone(),
    }
}

fn loaded<T>(r: wasmtime::Result<T>) -> Result<T, StageCallError> {
    r.map_err(|e| StageCallError::Instantiate(format!("{e:#}")))
}

fn deadline_ticks(deadline_ms: u64) -> u64 {
    deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1)
}

/// The instances of one stage: every call (every chunk, every `with`) gets a fresh
/// instance from the plugin's `InstancePre`, so nothing a guest keeps between calls —
/// a cache, a counter, a `HashMap` iterated in its random order — can make a result
/// depend on which instance served a chunk or in what order the workers ran. The same
/// inputs and seed give the same bits whatever the plugin does.
pub struct StagePool {
    plugin: Arc<Plugin>,
    limits: Limits,
    /// The run's seed, which (with the stage and chunk) seeds the guest's randomness.
    seed: u64,
    /// The run's account of its instances' memory (`sharing`).
    shared: Option<Arc<GuestMemory>>,
    models: Arc<ModelSet>,
}

impl StagePool {
    /// A pool whose instances have no models (`infer` answers `unsupported`).
    pub fn new(plugin: Arc<Plugin>, limits: Limits) -> Self {
        StagePool::with_models(plugin, limits, ModelSet::empty())
    }

    /// A pool whose instances may call these models through `infer`, by their names in the set.
    pub fn with_models(plugin: Arc<Plugin>, limits: Limits, models: Arc<ModelSet>) -> Self {
        StagePool { plugin, limits, seed: 0, shared: None, models }
    }

    /// The same pool, its guests' randomness seeded from the run's `seed` (with the
    /// stage and chunk of each call).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same pool, its instances' memory counted in the run's `shared` account.
    pub fn sharing(mut self, shared: &Arc<GuestMemory>) -> Self {
        self.shared = Some(shared.clone());
        self
    }

    /// The plugin the pool instantiates.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The models its instances may call through `infer`.
    pub fn models(&self) -> &Arc<ModelSet> {
        &self.models
    }

    /// Runs `f` on a fresh instance, dropped afterwards (its memory returned to the
    /// run's account). Instantiating from the `InstancePre` costs tens of µs (memory
    /// images are mapped copy-on-write), small beside a chunk's call.
    pub fn with<R>(&self, f: impl FnOnce(&mut Instance) -> Result<R, StageCallError>) -> Result<R, StageCallError> {
        let mut instance = Instance::new(&self.plugin, self.limits, self.models.clone(), self.shared.clone())?;
        instance.store.data_mut().run_seed = self.seed;
        f(&mut instance)
    }
}

//! The sandbox: one wasmtime `Engine` per process (and a second without epoch checks
//! for trusted stages), components compiled once and cached on disk, one `Store` per
//! stage instance with a memory cap and an epoch deadline, instances pooled and
//! reused, a trapped instance discarded.
//!
//! Architecture invariants:
//! - a stage sees no files, no network, no environment, no arguments and no stdio;
//!   what it needs arrives as call arguments, what it says goes through `host.log`;
//! - an instance that trapped is never called again;
//! - nothing outside this crate touches wasmtime types (its dependency on wasmtime is the only one: `scripts/check-layers.sh`).

#![deny(missing_docs)]

mod cache;
mod engine;
mod instance;
mod plugin;
mod stderr;
/// The WIT contract's generated bindings (`bindgen!`): their items carry the WIT's own
/// names and cannot carry doc comments. Private: the records other crates need are
/// re-exported by [`data`], and no wasmtime type leaves this crate.
#[allow(missing_docs)]
mod bindings;
mod guest_env;

pub use cache::CacheRefused;
pub use engine::{Interruption, Runtime, RuntimeOptions};
pub use instance::{CallContext, Described, GuestMemory, Instance, Limits, StageCallError, StageKind, StagePool, kind_name};
pub use plugin::{Plugin, PluginInfo};

/// The data types a stage call takes and returns: the records of the WIT contract,
/// which are plain Rust data (vectors and integers, no wasmtime type), so a call moves
/// them into the guest without a host-side copy. Code outside this crate names them
/// from here, never from `bindings`.
pub mod data {
    pub use crate::bindings::stages::augmenter::{PatchBatch, ViewPair};
    pub use crate::bindings::stages::cloud_mask::MaskLayers;
    pub use crate::bindings::stages::decoder::PosteriorSeries;
    pub use crate::bindings::stages::sampler::{SampleInput, Selection};
    pub use crate::bindings::types::{
        Cube, FeatureMatrix, ModelBlob, Placement, Probabilities, StageError, Tensor,
    };
    pub use crate::bindings::WIT_PACKAGE;
    pub use crate::StageKind;
}

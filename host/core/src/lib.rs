//! sitsflow's core: the types and small services every other crate of the host shares,
//! with no knowledge of GDAL, wasmtime, ONNX Runtime or TOML.
//!
//! - [`window`]: rectangles of pixels and a scene's chunking; [`pixel`]: raster value types;
//! - [`dates`]: acquisition dates and the calendar years of a series;
//! - [`device`]: where a model should run, as a pipeline states it;
//! - [`kind`]: the stage kinds (`StageKind`), the one enum of them;
//! - [`recipes`]: the training recipes of `models/` the host drives (the one list);
//! - [`ids`], [`limits`]: what plugin names and versions look like, a stage's default limits;
//! - [`fsutil`]: atomic writes (temporary name, sync, rename) and disk-space hints;
//! - [`hash`]: sha256 of bytes and files;
//! - [`chunks`]: the one worker-pool executor of chunk work;
//! - [`memory`]: the resident-memory peaks a run's manifest reports;
//! - [`faults`]: the failpoints the fault tests stop a run at ([`fail_point!`]).

#![deny(missing_docs)]

pub mod chunks;
pub mod dates;
pub mod device;
pub mod faults;
pub mod fsutil;
pub mod hash;
pub mod ids;
pub mod kind;
pub mod limits;
pub mod memory;
pub mod pixel;
pub mod recipes;
pub mod window;

pub use device::Device;
pub use kind::StageKind;
pub use pixel::PixelType;
pub use window::{Window, chunk_grid};

/// The `fail` crate, for [`fail_point!`]'s expansion in other crates.
#[doc(hidden)]
pub use fail;

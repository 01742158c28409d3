//! Pipeline configuration: TOML in, typed and validated values out.
//!
//! Architecture invariant: this is the only crate that knows TOML (`scripts/check-layers.sh` enforces it). Everything
//! downstream sees [`Pipeline`] and [`Lockfile`]; every error points at the file,
//! line and column at fault.

#![deny(missing_docs)]

mod lockfile;
mod nomenclature;
mod pipeline;
mod source;

pub use lockfile::{LockEntry, Lockfile};
pub use nomenclature::{Nomenclature, NomenclatureClass};
pub use pipeline::*;
pub use source::{ConfigError, Located, Source};

//! The guest SDK: write a sitsflow stage in plain Rust, export it as a WebAssembly component.
//!
//! A stage is a type that implements [`Stage`] (name, version, parameters) and one
//! kind trait ([`FeatureStage`], [`CloudMaskStage`], …). The method itself sees only
//! plain Rust types from [`data`], so the same code runs natively — for unit tests and
//! for Wasm-vs-native benchmarks — and inside the sandbox. One macro line exports it:
//!
//! ```ignore
//! use sitsflow_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! pub struct Params { band: String }
//!
//! pub struct Passthrough;
//! impl Stage for Passthrough {
//!     const NAME: &'static str = "passthrough";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const SUMMARY: &'static str = "Copies one band out as a feature.";
//!     type Params = Params;
//! }
//! impl FeatureStage for Passthrough {
//!     fn compute(chunk: Cube, params: Params) -> Result<FeatureMatrix, StageError> { … }
//! }
//! sitsflow_sdk::export_features_stage!(Passthrough);
//! ```
//!
//! Parameters arrive as JSON; the SDK parses them into `Params` and maps a parse error to
//! [`StageError::InvalidParams`], and publishes `Params`' JSON Schema through `describe()`
//! so the host validates a pipeline before anything runs.

pub mod data;
pub mod host;
pub mod lanes;
pub mod morphology;
pub mod sampling;
#[doc(hidden)]
pub mod glue;
#[doc(hidden)]
pub mod wit;

pub use data::*;
pub use schemars;

/// The WIT contract this SDK implements, as its package line names it
/// (`sitsflow:stage@0.2.1`); the SDK's own version shares its MAJOR.MINOR.
pub const CONTRACT: &str = contract_of(include_str!("../wit/stage.wit"));

/// The `package …;` of a WIT document (a compile-time scan, so a mismatch with the
/// crate's version fails the SDK's own tests, not an author's build).
const fn contract_of(wit: &str) -> &str {
    let bytes = wit.as_bytes();
    let key = b"package ";
    let mut i = 0;
    while i + key.len() < bytes.len() {
        let mut k = 0;
        while k < key.len() && bytes[i + k] == key[k] {
            k += 1;
        }
        if k == key.len() && (i == 0 || bytes[i - 1] == b'\n') {
            let start = i + key.len();
            let mut end = start;
            while end < bytes.len() && bytes[end] != b';' {
                end += 1;
            }
            let (_, rest) = bytes.split_at(start);
            let (name, _) = rest.split_at(end - start);
            return match std::str::from_utf8(name) {
                Ok(s) => s,
                Err(_) => panic!("the package line of wit/stage.wit is not UTF-8"),
            };
        }
        i += 1;
    }
    panic!("wit/stage.wit has no package line")
}
pub use serde;
pub use serde_json;

/// Everything a stage author needs in scope.
pub mod prelude {
    pub use crate::data::*;
    pub use crate::{
        AugmenterStage, ClustererStage, CloudMaskStage, DecoderStage, FeatureStage, Footprint, LabellerStage, Placement, SampleNeeds,
        SamplerStage, Stage, StageError, StageInfo, StageKind, bands_present,
    };
}

use std::fmt;

/// What a stage returns for bad input or parameters. Panics (traps) are for bugs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageError {
    /// The data handed in is malformed or inconsistent.
    InvalidInput(String),
    /// The parameters do not fit the schema or each other.
    InvalidParams(String),
    /// The stage cannot do this with what it was given (e.g. a needed band is absent).
    Unsupported(String),
    /// Anything else that went wrong inside the method.
    Failed(String),
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            StageError::InvalidParams(m) => write!(f, "invalid parameters: {m}"),
            StageError::Unsupported(m) => write!(f, "unsupported: {m}"),
            StageError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for StageError {}

/// The kind of a stage: which WIT world it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    CloudMask,
    Features,
    Clusterer,
    Labeller,
    Sampler,
    Decoder,
}

/// What `describe()` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    pub name: String,
    pub version: String,
    pub kind: StageKind,
    pub summary: String,
    /// JSON Schema of the parameters object.
    pub params_schema: String,
}

/// Identity and parameters of a stage. Implement this plus one kind trait.
pub trait Stage {
    /// Lower-case name with digits and `-`, e.g. `normalized-difference`.
    const NAME: &'static str;
    /// Semantic version; use `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// One line for `sitsflow plugins list`.
    const SUMMARY: &'static str;
    /// The parameters, deserialised from the pipeline's `[stage.params]` table.
    /// Use `#[serde(deny_unknown_fields)]` so typos are caught.
    type Params: serde::de::DeserializeOwned + schemars::JsonSchema;

    /// Parse the JSON parameters handed in by the host.
    fn parse_params(json: &str) -> Result<Self::Params, StageError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        serde_json::from_str(json).map_err(|e| StageError::InvalidParams(e.to_string()))
    }

    /// JSON Schema of [`Stage::Params`].
    fn params_schema() -> String {
        serde_json::to_string(&schemars::schema_for!(Self::Params))
            .expect("a JSON Schema always serialises")
    }
}

/// Builds the `describe()` answer of a stage of the given kind.
pub fn info_of<S: Stage>(kind: StageKind) -> StageInfo {
    StageInfo {
        name: S::NAME.to_string(),
        version: S::VERSION.to_string(),
        kind,
        summary: S::SUMMARY.to_string(),
        params_schema: S::params_schema(),
    }
}

/// What a chunk stage needs of a chunk for given parameters (WIT `footprint`): the
/// host cuts chunks whose core is a multiple of `tile` (0 = any), reads `halo` px of
/// context on every side (reflected at the scene's edges), and expects outputs `scale`
/// times finer than the input along each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub tile: usize,
    pub halo: usize,
    pub scale: usize,
}

impl Default for Footprint {
    /// Any chunk, no context, the series' grid.
    fn default() -> Self {
        Footprint { tile: 0, halo: 0, scale: 1 }
    }
}

/// Where a cube lies in the scene (WIT `placement`): the scene row and column of its
/// first pixel (negative inside the reflected padding), the core window the host keeps
/// (in cube pixels; the rest is halo) and the scene's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub row: i64,
    pub col: i64,
    pub core_row: usize,
    pub core_col: usize,
    pub core_rows: usize,
    pub core_cols: usize,
    pub scene_rows: usize,
    pub scene_cols: usize,
}

impl Placement {
    /// A cube that is the whole scene, without halo (tests, native runs).
    pub fn whole(rows: usize, cols: usize) -> Placement {
        Placement { row: 0, col: 0, core_row: 0, core_col: 0, core_rows: rows, core_cols: cols, scene_rows: rows, scene_cols: cols }
    }
}

/// For [`CloudMaskStage::bands`] and [`FeatureStage::bands`]: `needed`, if every one of
/// them is in `available`; otherwise `None`, so the stage gets every band and its call
/// names the one that is missing.
pub fn bands_present<'a>(available: &[String], needed: impl IntoIterator<Item = &'a str>) -> Option<Vec<String>> {
    needed.into_iter().map(|b| available.iter().find(|a| *a == b).cloned()).collect()
}

// Each stage kind (its trait, the types only it uses, its export macro and its WIT
// world) lives in one file under `kinds/`; the traits are re-exported here.
mod kinds;

pub use kinds::augmenter::AugmenterStage;
pub use kinds::cloud_mask::CloudMaskStage;
pub use kinds::clusterer::ClustererStage;
pub use kinds::decoder::DecoderStage;
pub use kinds::features::FeatureStage;
pub use kinds::labeller::LabellerStage;
pub use kinds::sampler::{SampleNeeds, SamplerStage};

#[cfg(test)]
mod version_tests {
    /// The SDK's version is tied to the contract it carries: MAJOR.MINOR equal, the SDK's
    /// patch at least the contract's.
    #[test]
    fn the_sdk_version_follows_its_contract() {
        let (package, version) = super::CONTRACT.split_once('@').expect("sitsflow:stage@x.y.z");
        assert_eq!(package, "sitsflow:stage");
        let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
        let (wit, sdk) = (parts(version), parts(env!("CARGO_PKG_VERSION")));
        assert_eq!((wit[0], wit[1]), (sdk[0], sdk[1]), "SDK {} against contract {}", env!("CARGO_PKG_VERSION"), super::CONTRACT);
        assert!(sdk[2] >= wit[2], "SDK {} is older than its contract {}", env!("CARGO_PKG_VERSION"), super::CONTRACT);
    }
}

//! sitsflow: Sentinel-2 image time series to land-cover maps, with pipeline stages
//! run as sandboxed WebAssembly components. See `ARCHITECTURE.md` for the map.
//!
//! This crate is the engine and the command line; the layers below it are crates of their own, re-exported here under the module
//! names the code has always used (`crate::raster`, `crate::runtime`, …):
//! [`sitsflow_core`], [`sitsflow_config`] (TOML), [`sitsflow_raster`] (GDAL),
//! [`sitsflow_infer`] (ONNX Runtime), [`sitsflow_sandbox`] (wasmtime),
//! [`sitsflow_eval`], [`sitsflow_demo`], [`sitsflow_recipes`] (the networks' host side)
//! and [`sitsflow_plan`] (plan, graph, plugin directory). What stays here is the engine:
//! the executors (`run`, `fit`), the run directory, outputs, report, `learn`, `bench`
//! and `scaleout`.

#![deny(missing_docs)]

pub use sitsflow_config as config;
pub use sitsflow_core::{chunks, faults, fsutil, hash, memory};
pub use sitsflow_core::fail_point;
pub use sitsflow_demo as demo;
pub use sitsflow_eval as eval;
pub use sitsflow_eval::samples;
pub use sitsflow_infer as inference;
pub use sitsflow_raster as raster;
pub use sitsflow_sandbox as runtime;
pub use sitsflow_recipes::{network, segment, train};
pub use sitsflow_plan as plan;
pub use sitsflow_plan::{graph, plugins};

pub mod bench;
pub mod extract;
pub mod fit;
pub mod harness;
pub mod learn;
pub mod outputs;
pub mod report;
pub mod run;
pub mod rundir;
pub mod scaleout;
pub mod template;

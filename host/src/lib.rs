//! sitsflow: Sentinel-2 image time series to land-cover maps, with pipeline stages
//! run as sandboxed WebAssembly components. See `ARCHITECTURE.md` for the map.

pub mod bindings;
pub mod bench;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod demo;
pub mod eval;
pub mod faults;
pub mod fit;
pub mod fsutil;
pub mod graph;
pub mod hash;
pub mod inference;
pub mod memory;
pub mod network;
pub mod outputs;
pub mod plan;
pub mod plugins;
pub mod raster;
pub mod report;
pub mod run;
pub mod rundir;
pub mod learn;
pub mod samples;
pub mod scaleout;
pub mod segment;

pub mod train;
pub mod runtime;

//! The host's integration tests, one module per area, in one test binary: each binary
//! that links wasmtime, GDAL and ONNX Runtime costs a link and hundreds of MB, and one
//! binary builds the components and the demo data once for all of them.
//!
//! Run one area with a filter: `cargo test -p sitsflow --test integration forest::`.

mod common;

mod cli;
mod cloud_masks;
mod config;
mod eval;
mod faults;
mod footprints;
mod forest;
mod guide;
mod inference;
mod learn;
mod operator;
mod plugin_author;
mod kmeans;
mod raster;
mod report;
mod sandbox;
mod scaleout;
mod seasons;
mod stac_api;
mod vectors;
mod segment;
mod sen2vhr;
mod ssl;
mod stages_pipeline;

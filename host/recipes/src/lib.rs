//! The networks' host side: the training recipes of `models/` (PyTorch, run as a
//! subprocess under a file contract) and how the host feeds and maps their ONNX exports.
//!
//! - [`train`]: `sitsflow train` and a stage's training: the recipe as a subprocess
//!   (contract 1), its events, distributed launch, finding `models/`;
//! - [`network`]: per-pixel recipes (`tempcnn`, `lstm`) as labellers, every recipe's
//!   parameter schema, a stage's params as the recipe's flags;
//! - [`segment`]: segmentation networks on the host: tiling, tiled prediction through
//!   ONNX Runtime, VHR tiles, the patch datasets the recipes train on;
//! - [`RecipePlan`]: a `recipe = "…"` stage as the plan resolves it.
//!
//! The list of recipes itself is `sitsflow_core::recipes` (config reads it too).

#![deny(missing_docs)]

pub mod network;
pub mod segment;
pub mod train;

/// A `recipe = "…"` stage, resolved.
#[derive(Debug, Clone)]
pub struct RecipePlan {
    /// The recipe's name (one of `sitsflow_core::recipes::RECIPES`).
    pub arch: String,
    /// Where the network runs (`auto`, `cpu`, `cuda`).
    pub device: sitsflow_core::Device,
    /// `PYTHONPATH` for the recipe (its packages and `models/`).
    pub pythonpath: String,
    /// sha256 over the recipe's Python sources: pins it like a plugin's hash.
    pub sha256: String,
}

impl RecipePlan {
    /// How the recipe is trained and run (from the one recipe list).
    pub fn shape(&self) -> sitsflow_core::recipes::RecipeShape {
        sitsflow_core::recipes::recipe(&self.arch).map(|r| r.shape).expect("config accepts only the recipes of the list")
    }
}


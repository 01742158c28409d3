//! Fixture: a features stage written straight against `wit/stage.wit` as 0.2.0 shipped it
//! (the copy in `../wit`), without the SDK, as a third party's plugin of that time would
//! be. A host of a later 0.2.x (0.2.1 added the augmenter) must load it unchanged: one
//! feature per pixel, its scene row, so a test sees the placement arrive.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "features-stage" });

use exports::sitsflow::stage::features::Guest;
use exports::sitsflow::stage::features_inputs::Guest as Inputs;
use sitsflow::stage::types::{Cube, FeatureMatrix, Footprint, Placement, StageError, StageInfo, StageKind};

struct Compat;

impl Guest for Compat {
    fn describe() -> StageInfo {
        StageInfo {
            name: "fixture-compat-two".into(),
            version: "0.2.0".into(),
            kind: StageKind::Features,
            summary: "Built against sitsflow:stage@0.2.0; writes each pixel's scene row.".into(),
            params_schema: r#"{"type": "object"}"#.into(),
        }
    }

    fn footprint_for(_params: String) -> Result<Footprint, StageError> {
        Ok(Footprint { tile: 0, halo: 0, scale: 1 })
    }

    fn compute(chunk: Cube, at: Placement, _params: String) -> Result<FeatureMatrix, StageError> {
        let data = (0..chunk.rows * chunk.cols).map(|p| (at.row + (p / chunk.cols) as i32) as f32).collect();
        Ok(FeatureMatrix { samples: chunk.rows * chunk.cols, names: vec!["row".into()], data })
    }
}

impl Inputs for Compat {
    fn bands(_bands: Vec<String>, _params: String) -> Option<Vec<String>> {
        Some(Vec::new())
    }
}

export!(Compat);

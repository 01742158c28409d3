//! Fixture: a features stage written straight against `wit/stage.wit` as 0.1.0 shipped it
//! (the frozen copy in `../wit`), without the SDK, as a third party's plugin of that time
//! would be. It must keep loading in a host of a later 0.1.x: one feature per pixel, the
//! number of bands it was handed, so a test sees that it got every band.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "features-stage" });

use exports::sitsflow::stage::features::Guest;
use sitsflow::stage::types::{Cube, FeatureMatrix, StageError, StageInfo, StageKind};

struct Compat;

impl Guest for Compat {
    fn describe() -> StageInfo {
        StageInfo {
            name: "fixture-compat".into(),
            version: "0.1.0".into(),
            kind: StageKind::Features,
            summary: "Built against sitsflow:stage@0.1.0; counts the bands it is given.".into(),
            params_schema: r#"{"type": "object"}"#.into(),
        }
    }

    fn compute(chunk: Cube, _params: String) -> Result<FeatureMatrix, StageError> {
        let n = chunk.rows * chunk.cols;
        Ok(FeatureMatrix { samples: n, names: vec!["bands".into()], data: vec![chunk.bands.len() as f32; n as usize] })
    }
}

export!(Compat);

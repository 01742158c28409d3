//! Fixture: per-pixel mean over dates and bands, but panics (traps) on any chunk that
//! contains the value `trap_value` — so one chunk of a run fails and the others must not.
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub trap_value: f32,
}

pub struct TrapOnChunk;
impl Stage for TrapOnChunk {
    const NAME: &'static str = "fixture-trap-on-chunk";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Mean per pixel; traps on a marked chunk.";
    type Params = Params;
}
impl FeatureStage for TrapOnChunk {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        if chunk.data.contains(&p.trap_value) {
            panic!("marked chunk");
        }
        let n = chunk.pixels();
        let layers = chunk.dates.len() * chunk.bands.len();
        let mut data = vec![0.0f32; n];
        for layer in chunk.data.chunks_exact(n) {
            for (acc, v) in data.iter_mut().zip(layer) {
                *acc += v / layers as f32;
            }
        }
        Ok(FeatureMatrix { samples: n, names: vec!["mean".into()], data })
    }
}
sitsflow_sdk::export_features_stage!(TrapOnChunk);

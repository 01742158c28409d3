//! Fixture: per-pixel mean over dates and bands, after busy work proportional to
//! `work` (so a run lasts long enough to be interrupted in the middle).
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Millions of loop iterations per chunk.
    pub work: u32,
}

pub struct SlowMean;
impl Stage for SlowMean {
    const NAME: &'static str = "fixture-slow-mean";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Mean per pixel, slowly.";
    type Params = Params;
}
impl FeatureStage for SlowMean {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        let mut x = 1u64;
        for _ in 0..(p.work as u64 * 1_000_000) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let n = chunk.pixels();
        let layers = (chunk.dates.len() * chunk.bands.len()) as f32;
        let mut data = vec![0.0f32; n];
        for layer in chunk.data.chunks_exact(n) {
            for (acc, v) in data.iter_mut().zip(layer) {
                *acc += v / layers;
            }
        }
        Ok(FeatureMatrix { samples: n, names: vec![format!("mean{}", x % 1)], data })
    }
}
sitsflow_sdk::export_features_stage!(SlowMean);

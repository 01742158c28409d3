//! Fixture: a features stage that never returns (tests the epoch deadline).
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {}

pub struct Spin;
impl Stage for Spin {
    const NAME: &'static str = "fixture-spin";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Loops forever.";
    type Params = Params;
}
impl FeatureStage for Spin {
    fn compute(chunk: Cube, _: Params) -> Result<FeatureMatrix, StageError> {
        let mut x = chunk.rows as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
sitsflow_sdk::export_features_stage!(Spin);

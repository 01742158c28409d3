//! Fixture: per-pixel mean over dates and bands, chattering on every call: `lines`
//! `host.log` lines and `stderr_bytes` bytes of stderr; panics when the chunk holds
//! `panic_value` (after chattering), so the tail of its stderr must reach the error.
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub lines: u32,
    pub stderr_bytes: usize,
    #[serde(default)]
    pub panic_value: Option<f32>,
}

pub struct Chatter;
impl Stage for Chatter {
    const NAME: &'static str = "fixture-chatter";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Mean per pixel; logs and writes to stderr on every call.";
    type Params = Params;
}
impl FeatureStage for Chatter {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        for i in 0..p.lines {
            sitsflow_sdk::host::log(sitsflow_sdk::host::Level::Error, &format!("chatter line {i}"));
        }
        eprint!("{}", "e".repeat(p.stderr_bytes));
        if p.panic_value.is_some_and(|v| chunk.data.contains(&v)) {
            panic!("marked chunk after chatter");
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
sitsflow_sdk::export_features_stage!(Chatter);

//! Fixture: a plugin whose output depends on everything a guest can read of time and
//! randomness — the wall clock, the monotonic clock, and `wasi:random` — so that only a
//! host giving guests deterministic clocks and seeded randomness makes two runs agree;
//! and that sleeps, once or for ever.
use sitsflow_sdk::prelude::*;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Sleep this long before computing (`std::thread::sleep`).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Sleep 1 s at a time, for ever.
    #[serde(default)]
    pub sleep_forever: bool,
}

pub struct Entropy;
impl Stage for Entropy {
    const NAME: &'static str = "fixture-entropy";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Clock readings and random draws per pixel.";
    type Params = Params;
}
impl FeatureStage for Entropy {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        let n = chunk.pixels();
        let started = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
        while p.sleep_forever {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let mut data = Vec::with_capacity(3 * n);
        for _ in 0..n {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros()) % 1_000_000;
            let elapsed = started.elapsed().as_micros() % 1_000_000;
            let draw = getrandom::u32().map_err(|e| StageError::Failed(e.to_string()))? >> 8;
            data.extend([wall as f32, elapsed as f32, draw as f32]);
        }
        Ok(FeatureMatrix { samples: n, names: vec!["wall".into(), "elapsed".into(), "draw".into()], data })
    }
}
sitsflow_sdk::export_features_stage!(Entropy);

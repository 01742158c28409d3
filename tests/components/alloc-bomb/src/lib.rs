//! Fixture: a features stage that allocates `mib` MiB (tests the memory cap).
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// How much to allocate and touch, in MiB.
    pub mib: u32,
}

pub struct AllocBomb;
impl Stage for AllocBomb {
    const NAME: &'static str = "fixture-alloc-bomb";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Allocates as much memory as asked.";
    type Params = Params;
}
impl FeatureStage for AllocBomb {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        for _ in 0..p.mib {
            blocks.push(vec![1u8; 1 << 20]);
        }
        let touched: usize = blocks.iter().map(|b| b[b.len() - 1] as usize).sum();
        Ok(FeatureMatrix {
            samples: chunk.pixels(),
            names: vec![format!("touched={touched}")],
            data: vec![0.0; chunk.pixels()],
        })
    }
}
sitsflow_sdk::export_features_stage!(AllocBomb);

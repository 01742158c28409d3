//! Fixture: a features stage with the footprint its parameters say, which reports what
//! it was handed. Per output pixel (of the whole cube, `scale` times finer):
//! - `row`, `col`: the scene row and column of the input pixel under it (from the placement);
//! - `value`: the first band there;
//! - `left`: the first band `halo` px to the left in the cube (padding included);
//! - `core`: 1 inside the placement's core, else 0;
//! - `cube_rows`: the cube's rows (core + 2 × halo).
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub tile: u32,
    pub halo: u32,
    pub scale: u32,
}

pub struct Probe;
impl Stage for Probe {
    const NAME: &'static str = "fixture-footprint";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Reports the placement, halo and padding it was handed.";
    type Params = Params;
}
impl FeatureStage for Probe {
    fn footprint(p: &Params) -> Footprint {
        Footprint { tile: p.tile as usize, halo: p.halo as usize, scale: p.scale as usize }
    }

    fn compute(_chunk: Cube, _p: Params) -> Result<FeatureMatrix, StageError> {
        Err(StageError::Unsupported("this fixture needs its placement (compute_at)".into()))
    }

    fn compute_at(chunk: Cube, at: Placement, p: Params) -> Result<FeatureMatrix, StageError> {
        let (rows, cols, s, halo) = (chunk.rows, chunk.cols, p.scale as usize, p.halo as usize);
        if at.core_row + at.core_rows > rows || at.core_col + at.core_cols > cols {
            return Err(StageError::InvalidInput(format!("core outside the {rows} × {cols} cube: {at:?}")));
        }
        let first = &chunk.data[..rows * cols];
        let names: Vec<String> = ["row", "col", "value", "left", "core", "cube_rows"].iter().map(|n| n.to_string()).collect();
        let mut data = Vec::with_capacity(rows * cols * s * s * names.len());
        for r in 0..rows * s {
            for c in 0..cols * s {
                let (ir, ic) = (r / s, c / s);
                let core = ir >= at.core_row && ir < at.core_row + at.core_rows && ic >= at.core_col && ic < at.core_col + at.core_cols;
                let left = if ic >= halo { first[ir * cols + ic - halo] } else { f32::NAN };
                data.extend_from_slice(&[
                    (at.row + ir as i64) as f32,
                    (at.col + ic as i64) as f32,
                    first[ir * cols + ic],
                    left,
                    core as u8 as f32,
                    rows as f32,
                ]);
            }
        }
        Ok(FeatureMatrix { samples: rows * cols * s * s, names, data })
    }
}
sitsflow_sdk::export_features_stage!(Probe);

//! Feature stages: per-pixel features of a cube chunk, one sample per output pixel.
//! WIT world `features-stage`.

use crate::{Cube, FeatureMatrix, Footprint, Placement, Stage, StageError};

/// Per-pixel features of a cube chunk: one sample per pixel, row-major.
pub trait FeatureStage: Stage {
    /// One row per output pixel of the whole chunk (`rows × cols` × scale² of them).
    fn compute(chunk: Cube, params: Self::Params) -> Result<FeatureMatrix, StageError>;

    /// As `compute`, told where the chunk lies; the default ignores it.
    fn compute_at(chunk: Cube, _at: Placement, params: Self::Params) -> Result<FeatureMatrix, StageError> {
        Self::compute(chunk, params)
    }

    /// As [`CloudMaskStage::footprint`](crate::CloudMaskStage::footprint); a scale above 1
    /// puts the output on a finer grid.
    fn footprint(_params: &Self::Params) -> Footprint {
        Footprint::default()
    }

    /// As [`CloudMaskStage::bands`](crate::CloudMaskStage::bands).
    fn bands(_available: &[String], _params: &Self::Params) -> Option<Vec<String>> {
        None
    }
}

/// Exports a [`FeatureStage`] as the component's `features-stage` world.
#[macro_export]
macro_rules! export_features_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::wit::features_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::features::Guest for Component {
                fn describe() -> w::StageInfo {
                    $crate::glue::describe::<$stage>($crate::StageKind::Features)
                }
                fn footprint_for(params: String) -> Result<w::Footprint, w::StageError> {
                    $crate::glue::footprint::<$stage>(&params, <$stage as $crate::FeatureStage>::footprint)
                }
                fn compute(chunk: w::Cube, at: w::Placement, params: String) -> Result<w::FeatureMatrix, w::StageError> {
                    $crate::glue::features_compute::<$stage>(chunk, at, &params)
                }
            }
            impl exports::features_inputs::Guest for Component {
                fn bands(bands: Vec<String>, params: String) -> Option<Vec<String>> {
                    $crate::glue::bands::<$stage>(&bands, &params, <$stage as $crate::FeatureStage>::bands)
                }
            }
            $crate::wit::features_stage::export_features_world!(Component);
        }
    };
}

crate::wit::world!(world, "features-stage", "export_features_world", "sitsflow_sdk::wit::features_stage");

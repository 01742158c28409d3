//! Cloud-mask stages: classify every pixel of a cube chunk at every date as clear, cloud,
//! shadow or snow. WIT world `cloud-mask-stage`, which alone stays in `wit.rs`
//! (`wit::cloud_mask_stage`): generating it also generates the interfaces every kind
//! shares (see there).

use crate::{Cube, Footprint, Placement, Stage, StageError};

/// Cloud, shadow and snow masking of a cube chunk.
pub trait CloudMaskStage: Stage {
    fn mask(chunk: Cube, params: Self::Params) -> Result<Mask, StageError>;

    /// As `mask`, told where the chunk lies; the default ignores it.
    fn mask_at(chunk: Cube, _at: Placement, params: Self::Params) -> Result<Mask, StageError> {
        Self::mask(chunk, params)
    }

    /// The context the mask needs for `params` (e.g. its dilation radius); the default
    /// needs none. A mask's scale must be 1.
    fn footprint(_params: &Self::Params) -> Footprint {
        Footprint::default()
    }

    /// The bands of `available` that `mask` reads with `params`, or `None` for all of
    /// them (the default) — see [`bands_present`](crate::bands_present). The host then
    /// copies only those into the sandbox.
    fn bands(_available: &[String], _params: &Self::Params) -> Option<Vec<String>> {
        None
    }
}

/// Cloud mask classes: 0 clear, 1 cloud, 2 shadow, 3 snow, 255 no data.
pub mod mask_class {
    pub const CLEAR: u8 = 0;
    pub const CLOUD: u8 = 1;
    pub const SHADOW: u8 = 2;
    pub const SNOW: u8 = 3;
    pub const NO_DATA: u8 = 255;
}

/// A cloud mask for a chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mask {
    /// `dates × rows × cols`, see [`mask_class`].
    pub classes: Vec<u8>,
    /// `dates × rows × cols` cloud probability, or empty.
    pub probability: Vec<f32>,
}

/// Exports a [`CloudMaskStage`] as the component's `cloud-mask-stage` world.
#[macro_export]
macro_rules! export_cloud_mask_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::wit::cloud_mask_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::cloud_mask::Guest for Component {
                fn describe() -> w::StageInfo {
                    $crate::glue::describe::<$stage>($crate::StageKind::CloudMask)
                }
                fn footprint_for(params: String) -> Result<w::Footprint, w::StageError> {
                    $crate::glue::footprint::<$stage>(&params, <$stage as $crate::CloudMaskStage>::footprint)
                }
                fn mask(chunk: w::Cube, at: w::Placement, params: String) -> Result<exports::cloud_mask::MaskLayers, w::StageError> {
                    let chunk = $crate::glue::cube(chunk);
                    chunk.check().map_err($crate::glue::error_out)?;
                    let at = $crate::glue::placement(at);
                    $crate::glue::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::CloudMaskStage>::mask_at(chunk, at, p),
                        |m| exports::cloud_mask::MaskLayers { classes: m.classes, probability: m.probability },
                    )
                }
            }
            impl exports::cloud_mask_inputs::Guest for Component {
                fn bands(bands: Vec<String>, params: String) -> Option<Vec<String>> {
                    $crate::glue::bands::<$stage>(&bands, &params, <$stage as $crate::CloudMaskStage>::bands)
                }
            }
            $crate::wit::cloud_mask_stage::export_cloud_mask_world!(Component);
        }
    };
}

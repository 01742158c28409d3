//! Decoder stages: decode series of per-step class posteriors into labels over time.
//! WIT world `decoder-stage`.

use crate::{Stage, StageError};

/// Temporal decoding of posterior series.
pub trait DecoderStage: Stage {
    fn decode(series: PosteriorSeries, params: Self::Params) -> Result<Decoded, StageError>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PosteriorSeries {
    pub steps: usize,
    pub samples: usize,
    pub classes: Vec<u16>,
    /// `steps × samples × classes`.
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// `steps × samples`.
    pub labels: Vec<u16>,
    /// `steps × samples × classes`, or empty.
    pub posteriors: Vec<f32>,
}

/// Exports a [`DecoderStage`] as the component's `decoder-stage` world.
#[macro_export]
macro_rules! export_decoder_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::glue as g;
            use $crate::wit::decoder_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::decoder::Guest for Component {
                fn describe() -> w::StageInfo {
                    g::describe::<$stage>($crate::StageKind::Decoder)
                }
                fn decode(series: exports::decoder::PosteriorSeries, params: String) -> Result<exports::decoder::Decoded, w::StageError> {
                    let series = $crate::PosteriorSeries {
                        steps: series.steps as usize,
                        samples: series.samples as usize,
                        classes: series.classes,
                        data: series.data,
                    };
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::DecoderStage>::decode(series, p),
                        |d| exports::decoder::Decoded { labels: d.labels, posteriors: d.posteriors },
                    )
                }
            }
            $crate::wit::decoder_stage::export_decoder_world!(Component);
        }
    };
}

crate::wit::world!(world, "decoder-stage", "export_decoder_world", "sitsflow_sdk::wit::decoder_stage");

//! Labeller stages: train a supervised per-pixel classifier, then predict class
//! probabilities. WIT world `labeller-stage`.

use crate::{FeatureMatrix, ModelBlob, Probabilities, Stage, StageError};

/// Supervised per-pixel classification.
pub trait LabellerStage: Stage {
    fn train(samples: FeatureMatrix, labels: Vec<u16>, params: Self::Params)
    -> Result<Trained, StageError>;
    fn predict(model: ModelBlob, samples: FeatureMatrix, params: Self::Params)
    -> Result<Probabilities, StageError>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trained {
    pub model: ModelBlob,
    /// JSON diagnostics.
    pub report: String,
}

/// Exports a [`LabellerStage`] as the component's `labeller-stage` world.
#[macro_export]
macro_rules! export_labeller_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::glue as g;
            use $crate::wit::labeller_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::labeller::Guest for Component {
                fn describe() -> w::StageInfo {
                    g::describe::<$stage>($crate::StageKind::Labeller)
                }
                fn train(samples: w::FeatureMatrix, labels: Vec<u16>, params: String) -> Result<exports::labeller::Trained, w::StageError> {
                    let samples = g::features_in(samples);
                    samples.check().map_err(g::error_out)?;
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::LabellerStage>::train(samples, labels, p),
                        |t| exports::labeller::Trained { model: g::model_out(t.model), report: t.report },
                    )
                }
                fn predict(model: w::ModelBlob, samples: w::FeatureMatrix, params: String) -> Result<w::Probabilities, w::StageError> {
                    let samples = g::features_in(samples);
                    samples.check().map_err(g::error_out)?;
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::LabellerStage>::predict(g::model_in(model), samples, p),
                        g::probabilities_out,
                    )
                }
            }
            $crate::wit::labeller_stage::export_labeller_world!(Component);
        }
    };
}

crate::wit::world!(world, "labeller-stage", "export_labeller_world", "sitsflow_sdk::wit::labeller_stage");

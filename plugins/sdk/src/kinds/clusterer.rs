//! Clusterer stages: fit an unsupervised model on samples, then assign samples to its
//! clusters. WIT world `clusterer-stage`.

use crate::{FeatureMatrix, ModelBlob, Stage, StageError};

/// Unsupervised clustering.
pub trait ClustererStage: Stage {
    fn fit(samples: FeatureMatrix, params: Self::Params) -> Result<Fitted, StageError>;
    fn assign(model: ModelBlob, samples: FeatureMatrix, params: Self::Params)
    -> Result<Assignment, StageError>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fitted {
    pub model: ModelBlob,
    /// JSON diagnostics.
    pub report: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub clusters: Vec<u32>,
    pub distances: Vec<f32>,
}

/// Exports a [`ClustererStage`] as the component's `clusterer-stage` world.
#[macro_export]
macro_rules! export_clusterer_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::glue as g;
            use $crate::wit::clusterer_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::clusterer::Guest for Component {
                fn describe() -> w::StageInfo {
                    g::describe::<$stage>($crate::StageKind::Clusterer)
                }
                fn fit(samples: w::FeatureMatrix, params: String) -> Result<exports::clusterer::Fitted, w::StageError> {
                    let samples = g::features_in(samples);
                    samples.check().map_err(g::error_out)?;
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::ClustererStage>::fit(samples, p),
                        |f| exports::clusterer::Fitted { model: g::model_out(f.model), report: f.report },
                    )
                }
                fn assign(model: w::ModelBlob, samples: w::FeatureMatrix, params: String) -> Result<exports::clusterer::Assignment, w::StageError> {
                    let samples = g::features_in(samples);
                    samples.check().map_err(g::error_out)?;
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::ClustererStage>::assign(g::model_in(model), samples, p),
                        |a| exports::clusterer::Assignment { clusters: a.clusters, distances: a.distances },
                    )
                }
            }
            $crate::wit::clusterer_stage::export_clusterer_world!(Component);
        }
    };
}

crate::wit::world!(world, "clusterer-stage", "export_clusterer_world", "sitsflow_sdk::wit::clusterer_stage");

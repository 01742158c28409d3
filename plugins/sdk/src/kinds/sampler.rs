//! Sampler stages: select (and label) training samples among candidates. WIT world
//! `sampler-stage`.

use crate::{FeatureMatrix, Probabilities, Stage, StageError};

/// Sample selection.
pub trait SamplerStage: Stage {
    fn select(input: SampleInput, params: Self::Params) -> Result<Selection, StageError>;

    /// What `select` reads with `params`; the host leaves the rest empty. Default: all.
    fn needs(_params: &Self::Params) -> SampleNeeds {
        SampleNeeds::ALL
    }
}

/// Which parts of a [`SampleInput`] a sampler reads (see [`SamplerStage::needs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleNeeds {
    /// The candidates' features; without them `features` keeps `samples` but no values.
    pub features: bool,
    /// The candidates' positions; without them `positions` is empty.
    pub positions: bool,
}

impl SampleNeeds {
    pub const ALL: SampleNeeds = SampleNeeds { features: true, positions: true };
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleInput {
    pub features: FeatureMatrix,
    /// Named categorical layers, each `samples` long (0 = no data).
    pub layers: Vec<(String, Vec<u32>)>,
    pub probabilities: Option<Probabilities>,
    /// (row, col) per candidate, or empty.
    pub positions: Vec<(u32, u32)>,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub indices: Vec<u32>,
    pub labels: Vec<u16>,
    /// JSON report.
    pub report: String,
}

/// Exports a [`SamplerStage`] as the component's `sampler-stage` world.
#[macro_export]
macro_rules! export_sampler_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::glue as g;
            use $crate::wit::sampler_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::sampler::Guest for Component {
                fn describe() -> w::StageInfo {
                    g::describe::<$stage>($crate::StageKind::Sampler)
                }
                fn select(input: exports::sampler::SampleInput, params: String) -> Result<exports::sampler::Selection, w::StageError> {
                    let input = $crate::SampleInput {
                        features: g::features_in(input.features),
                        layers: input.layers,
                        probabilities: input.probabilities.map(g::probabilities_in),
                        positions: input.positions,
                        seed: input.seed,
                    };
                    input.features.check().map_err(g::error_out)?;
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::SamplerStage>::select(input, p),
                        |s| exports::sampler::Selection { indices: s.indices, labels: s.labels, report: s.report },
                    )
                }
            }
            impl exports::sampler_inputs::Guest for Component {
                fn needs(params: String) -> exports::sampler_inputs::SampleNeeds {
                    let needs = g::needs::<$stage>(&params);
                    exports::sampler_inputs::SampleNeeds { features: needs.features, positions: needs.positions }
                }
            }
            $crate::wit::sampler_stage::export_sampler_world!(Component);
        }
    };
}

crate::wit::world!(world, "sampler-stage", "export_sampler_world", "sitsflow_sdk::wit::sampler_stage");

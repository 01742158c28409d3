//! Augmenter stages: two seeded views of every patch, for self-supervised pretraining
//! (WIT 0.2.1). WIT world `augmenter-stage`.

use crate::{Stage, StageError};

/// Views of patches for self-supervised pretraining (WIT 0.2.1, `augmenter-stage`):
/// two seeded views of every patch, each of the patch's shape.
pub trait AugmenterStage: Stage {
    fn augment(batch: PatchBatch, params: Self::Params) -> Result<ViewPair, StageError>;
}

/// A batch of patches of one scene for an [`AugmenterStage`]:
/// `count × dates × bands × rows × cols` f32, row-major, NaN = missing, and one seed per
/// patch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchBatch {
    pub count: usize,
    pub dates: Vec<String>,
    pub bands: Vec<String>,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    /// The views of patch `i` depend only on its values, `seeds[i]` and the parameters.
    pub seeds: Vec<u64>,
}

impl PatchBatch {
    /// Values of one patch (`dates × bands × rows × cols`).
    pub fn patch_len(&self) -> usize {
        self.dates.len() * self.bands.len() * self.rows * self.cols
    }

    /// Checks that `data` and `seeds` have the sizes the header says.
    pub fn check(&self) -> Result<(), crate::StageError> {
        if self.seeds.len() != self.count {
            return Err(crate::StageError::InvalidInput(format!("{} seeds for {} patches", self.seeds.len(), self.count)));
        }
        if self.data.len() != self.count * self.patch_len() {
            return Err(crate::StageError::InvalidInput(format!(
                "{} values for {} patches of {} dates × {} bands × {} × {} px",
                self.data.len(),
                self.count,
                self.dates.len(),
                self.bands.len(),
                self.rows,
                self.cols
            )));
        }
        Ok(())
    }
}

/// Two views of every patch of a [`PatchBatch`], each in the batch's layout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewPair {
    pub first: Vec<f32>,
    pub second: Vec<f32>,
}

/// Exports an [`AugmenterStage`] as the component's `augmenter-stage` world (WIT 0.2.1).
#[macro_export]
macro_rules! export_augmenter_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __sitsflow_component {
            use super::*;
            use $crate::glue as g;
            use $crate::wit::augmenter_stage::exports::sitsflow::stage as exports;
            use $crate::wit::types as w;
            struct Component;
            impl exports::augmenter::Guest for Component {
                fn describe() -> exports::augmenter::AugmenterInfo {
                    exports::augmenter::AugmenterInfo {
                        name: <$stage as $crate::Stage>::NAME.to_string(),
                        version: <$stage as $crate::Stage>::VERSION.to_string(),
                        summary: <$stage as $crate::Stage>::SUMMARY.to_string(),
                        params_schema: <$stage as $crate::Stage>::params_schema(),
                    }
                }
                fn augment(batch: exports::augmenter::PatchBatch, params: String) -> Result<exports::augmenter::ViewPair, w::StageError> {
                    let batch = $crate::PatchBatch {
                        count: batch.count as usize,
                        dates: batch.dates,
                        bands: batch.bands,
                        rows: batch.rows as usize,
                        cols: batch.cols as usize,
                        data: batch.data,
                        seeds: batch.seeds,
                    };
                    g::run::<$stage, _, _>(
                        &params,
                        |p| <$stage as $crate::AugmenterStage>::augment(batch, p),
                        |v| exports::augmenter::ViewPair { first: v.first, second: v.second },
                    )
                }
            }
            $crate::wit::augmenter_stage::export_augmenter_world!(Component);
        }
    };
}

crate::wit::world!(world, "augmenter-stage", "export_augmenter_world", "sitsflow_sdk::wit::augmenter_stage");

//! Conversions between the WIT types and the plain Rust types, and the export macros.
//! Moves vectors, never copies them: the only copies are the host's into and out of
//! the component's memory.

use crate::wit::types as w;
use crate::*;

pub fn error_out(e: StageError) -> w::StageError {
    match e {
        StageError::InvalidInput(m) => w::StageError::InvalidInput(m),
        StageError::InvalidParams(m) => w::StageError::InvalidParams(m),
        StageError::Unsupported(m) => w::StageError::Unsupported(m),
        StageError::Failed(m) => w::StageError::Failed(m),
    }
}

pub fn describe<S: Stage>(kind: StageKind) -> w::StageInfo {
    let info = info_of::<S>(kind);
    w::StageInfo {
        name: info.name,
        version: info.version,
        kind: match kind {
            StageKind::CloudMask => w::StageKind::CloudMask,
            StageKind::Features => w::StageKind::Features,
            StageKind::Clusterer => w::StageKind::Clusterer,
            StageKind::Labeller => w::StageKind::Labeller,
            StageKind::Sampler => w::StageKind::Sampler,
            StageKind::Decoder => w::StageKind::Decoder,
        },
        summary: info.summary,
        params_schema: info.params_schema,
    }
}

pub fn cube(c: w::Cube) -> Cube {
    Cube {
        dates: c.dates,
        bands: c.bands,
        rows: c.rows as usize,
        cols: c.cols as usize,
        data: c.data,
        valid: c.valid,
    }
}

pub fn features_in(f: w::FeatureMatrix) -> FeatureMatrix {
    FeatureMatrix { samples: f.samples as usize, names: f.names, data: f.data }
}

pub fn features_out(f: FeatureMatrix) -> w::FeatureMatrix {
    w::FeatureMatrix { samples: f.samples as u32, names: f.names, data: f.data }
}

pub fn model_in(m: w::ModelBlob) -> ModelBlob {
    ModelBlob { format: m.format, data: m.data }
}

pub fn model_out(m: ModelBlob) -> w::ModelBlob {
    w::ModelBlob { format: m.format, data: m.data }
}

pub fn probabilities_in(p: w::Probabilities) -> Probabilities {
    Probabilities { samples: p.samples as usize, classes: p.classes, data: p.data }
}

pub fn probabilities_out(p: Probabilities) -> w::Probabilities {
    w::Probabilities { samples: p.samples as u32, classes: p.classes, data: p.data }
}

/// Parses the parameters and runs `f`, mapping errors to the WIT error type.
pub fn run<S: Stage, T, U>(
    params: &str,
    f: impl FnOnce(S::Params) -> Result<T, StageError>,
    out: impl FnOnce(T) -> U,
) -> Result<U, w::StageError> {
    let params = S::parse_params(params).map_err(error_out)?;
    f(params).map(out).map_err(error_out)
}

pub fn placement(at: w::Placement) -> Placement {
    Placement {
        row: at.row as i64,
        col: at.col as i64,
        core_row: at.core_row as usize,
        core_col: at.core_col as usize,
        core_rows: at.core_rows as usize,
        core_cols: at.core_cols as usize,
        scene_rows: at.scene_rows as usize,
        scene_cols: at.scene_cols as usize,
    }
}

pub fn footprint_out(f: Footprint) -> w::Footprint {
    w::Footprint { tile: f.tile as u32, halo: f.halo as u32, scale: f.scale as u32 }
}

/// `footprint-for`: the stage's footprint for the parameters, or their parse error.
pub fn footprint<S: Stage>(params: &str, f: impl FnOnce(&S::Params) -> Footprint) -> Result<w::Footprint, w::StageError> {
    let params = S::parse_params(params).map_err(error_out)?;
    Ok(footprint_out(f(&params)))
}

pub fn features_compute<S: FeatureStage>(
    chunk: w::Cube,
    at: w::Placement,
    params: &str,
) -> Result<w::FeatureMatrix, w::StageError> {
    let chunk = cube(chunk);
    chunk.check().map_err(error_out)?;
    run::<S, _, _>(params, |p| S::compute_at(chunk, placement(at), p), features_out)
}

/// `bands` of `cloud-mask-inputs` and `features-inputs`: `None` too when the parameters do not parse.
pub fn bands<S: Stage>(available: &[String], params: &str, f: impl FnOnce(&[String], &S::Params) -> Option<Vec<String>>) -> Option<Vec<String>> {
    S::parse_params(params).ok().and_then(|p| f(available, &p))
}

/// `needs` of `sampler-inputs`: everything too when the parameters do not parse.
pub fn needs<S: SamplerStage>(params: &str) -> SampleNeeds {
    S::parse_params(params).map_or(SampleNeeds::ALL, |p| S::needs(&p))
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

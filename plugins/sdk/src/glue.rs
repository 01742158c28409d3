//! Conversions between the WIT types and the plain Rust types, and the helpers the export
//! macros (one per kind, in `kinds/`) expand to.
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
    // A stage of scale s returns s² rows per pixel of the cube.
    let scale = S::parse_params(params).map_or(1, |p| S::footprint(&p).scale.max(1));
    let rows = chunk.pixels() * scale * scale;
    run::<S, _, _>(params, |p| S::compute_at(chunk, placement(at), p).and_then(|f| check_features(f, rows)), features_out)
}

/// A stage's features against themselves before they leave the sandbox: `pixels` rows
/// (one per output pixel: the cube's pixels times the footprint's scale²), as many
/// values per row as names. The message says which is off.
pub fn check_features(f: FeatureMatrix, pixels: usize) -> Result<FeatureMatrix, StageError> {
    if f.samples != pixels {
        return Err(StageError::Failed(format!("the stage returned {} samples for {pixels} output pixels", f.samples)));
    }
    let width = f.names.len();
    if f.data.len() != pixels * width {
        let per_pixel = f.data.len() as f64 / pixels.max(1) as f64;
        return Err(StageError::Failed(if f.data.len() % pixels.max(1) == 0 {
            format!(
                "the stage named {width} features but returned {} values per pixel ({} values for {pixels} pixels): \
                 {} name{} {}",
                per_pixel as usize,
                f.data.len(),
                (per_pixel as usize).abs_diff(width),
                if (per_pixel as usize).abs_diff(width) == 1 { " is" } else { "s are" },
                if (per_pixel as usize) > width { "missing" } else { "too many" }
            )
        } else {
            format!("the stage returned {} values, not a whole number per pixel ({pixels} pixels, {width} names)", f.data.len())
        }));
    }
    Ok(f)
}

/// `bands` of `cloud-mask-inputs` and `features-inputs`: `None` too when the parameters do not parse.
pub fn bands<S: Stage>(available: &[String], params: &str, f: impl FnOnce(&[String], &S::Params) -> Option<Vec<String>>) -> Option<Vec<String>> {
    S::parse_params(params).ok().and_then(|p| f(available, &p))
}

/// `needs` of `sampler-inputs`: everything too when the parameters do not parse.
pub fn needs<S: SamplerStage>(params: &str) -> SampleNeeds {
    S::parse_params(params).map_or(SampleNeeds::ALL, |p| S::needs(&p))
}

//! `onnx-classifier`: per-pixel temporal classification with an ONNX model run by the host
//! (TempCNN, LSTM, … as exported by `models/`). Each pixel's series becomes one row of an
//! `[n, T, B]` tensor (pixels × dates × bands, masked dates NaN) handed to the `infer` host
//! import; the model's `[n, C]` class probabilities come back as features `p:<code>`.
//!
//! The model is named, not embedded: the pipeline declares it in a `[[model]]` table and the
//! host runs it with ONNX Runtime (on CUDA when asked for and present). A stage cannot read
//! files, so it never sees the model's sidecar (`model.json`); the pipeline repeats the two
//! things the stage needs from it: the bands in the model's order (`input.bands`) and the
//! class codes of the output's columns (`output.classes[].code`). The host checks the
//! tensor's shape against the graph, so a wrong date or band count is reported, not guessed.

use sitsflow_sdk::host::{self, InferError, Tensor};
use sitsflow_sdk::prelude::*;

/// Which dates of the chunk go into the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dates {
    /// Every date of the chunk, in order: the model's T must equal the chunk's date count.
    #[default]
    All,
}

fn default_batch() -> u32 {
    4096
}

fn default_input() -> String {
    "reflectance".into()
}

fn default_output() -> String {
    "probabilities".into()
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The model, by its name in the pipeline's `[[model]]` tables: `model = "tempcnn"`.
    pub model: String,
    /// Bands of the cube in the order of the model's last input axis (`input.bands` of its
    /// `model.json`): `bands = ["B02", "B03", "B04", "B08"]`.
    pub bands: Vec<String>,
    /// Class codes of the model's output columns, in order (`output.classes[].code` of its
    /// `model.json`): `classes = [11, 21, 31]`. Feature `p:<code>` is that class's probability.
    pub classes: Vec<u16>,
    /// The dates that go in: `dates = "all"` (default), every date of the chunk in order.
    #[serde(default)]
    pub dates: Dates,
    /// Pixels per `infer` call, bounding the tensors copied across the sandbox at once:
    /// `batch = 4096` (default); at least 1.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Name of the model's input: `input = "reflectance"` (default, the `sitsflow-model/1` export).
    #[serde(default = "default_input")]
    pub input: String,
    /// Name of the model's `[n, C]` probability output: `output = "probabilities"` (default).
    #[serde(default = "default_output")]
    pub output: String,
}

pub struct OnnxClassifier;

impl Stage for OnnxClassifier {
    const NAME: &'static str = "onnx-classifier";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Class probabilities per pixel from an ONNX model (TempCNN, LSTM) run by the host.";
    type Params = Params;
}

/// Where each of the model's bands is in the cube.
fn band_indices(chunk: &Cube, bands: &[String]) -> Result<Vec<usize>, StageError> {
    if bands.is_empty() {
        return Err(StageError::InvalidParams("`bands` is empty: list the model's bands in its order".into()));
    }
    let mut indices = Vec::with_capacity(bands.len());
    for (i, name) in bands.iter().enumerate() {
        if bands[..i].contains(name) {
            return Err(StageError::InvalidParams(format!("band '{name}' is listed twice in `bands`")));
        }
        let Some(b) = chunk.band_index(name) else {
            return Err(StageError::Unsupported(format!(
                "band '{name}' is not in the cube (bands: {})",
                chunk.bands.join(", ")
            )));
        };
        indices.push(b);
    }
    Ok(indices)
}

/// Writes pixels `start..start + n` as an `[n, T, B]` tensor into `out` (resized): item `i`,
/// date `t`, band `b` at `(i·T + t)·B + b`. A date the cube marks invalid for a pixel is
/// NaN in every band (the exported graphs fill NaN themselves).
pub fn fill_series_tensor(chunk: &Cube, bands: &[usize], start: usize, n: usize, out: &mut Vec<f32>) {
    let (t_count, b_count) = (chunk.dates.len(), bands.len());
    out.clear();
    out.resize(n * t_count * b_count, f32::NAN);
    for t in 0..t_count {
        let valid = chunk.valid_plane(t).map(|v| &v[start..start + n]);
        for (b, &band) in bands.iter().enumerate() {
            let plane = &chunk.plane(t, band)[start..start + n];
            for (i, &v) in plane.iter().enumerate() {
                if valid.is_none_or(|valid| valid[i] != 0) {
                    out[(i * t_count + t) * b_count + b] = v;
                }
            }
        }
    }
}

/// Checks a model output against the classes and copies its rows into the features of
/// pixels `start..start + n` (`data` is `pixels × classes`).
pub fn copy_probabilities(
    output: &Tensor,
    classes: usize,
    start: usize,
    n: usize,
    data: &mut [f32],
) -> Result<(), StageError> {
    let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
    if shape.len() != 2 || shape[0] != n {
        return Err(StageError::Failed(format!(
            "output '{}' has shape {shape:?} for {n} pixels; expected [{n}, classes]",
            output.name
        )));
    }
    if shape[1] != classes {
        return Err(StageError::InvalidParams(format!(
            "the model's output '{}' has {} columns but `classes` lists {classes} codes (use output.classes of its model.json)",
            output.name, shape[1]
        )));
    }
    if output.data.len() != n * classes {
        return Err(StageError::Failed(format!(
            "output '{}' has {} values for shape {shape:?}",
            output.name,
            output.data.len()
        )));
    }
    data[start * classes..(start + n) * classes].copy_from_slice(&output.data);
    Ok(())
}

fn dims(what: &str, value: usize) -> Result<u32, StageError> {
    u32::try_from(value).map_err(|_| StageError::InvalidInput(format!("{what} {value} does not fit a tensor dimension")))
}

impl FeatureStage for OnnxClassifier {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        chunk.check()?;
        let Dates::All = p.dates;
        if p.batch == 0 {
            return Err(StageError::InvalidParams("`batch` must be at least 1".into()));
        }
        if p.classes.is_empty() {
            return Err(StageError::InvalidParams("`classes` is empty: list the codes of the model's output columns".into()));
        }
        let mut sorted = p.classes.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(StageError::InvalidParams(format!("class {} is listed twice in `classes`", w[0])));
        }
        if chunk.dates.is_empty() {
            return Err(StageError::InvalidInput("the chunk has no dates".into()));
        }
        let bands = band_indices(&chunk, &p.bands)?;
        let (pixels, c) = (chunk.pixels(), p.classes.len());
        let (t, b) = (dims("date count", chunk.dates.len())?, dims("band count", bands.len())?);
        let mut data = vec![0.0f32; pixels * c];
        let mut series = Vec::new();
        let batch = p.batch as usize;
        for start in (0..pixels).step_by(batch) {
            let n = batch.min(pixels - start);
            fill_series_tensor(&chunk, &bands, start, n, &mut series);
            let input = Tensor { name: p.input.clone(), shape: vec![n as u32, t, b], data: std::mem::take(&mut series) };
            let outputs = host::infer(&p.model, vec![input]).map_err(|e| infer_error(e, &p, t, b))?;
            let Some(output) = outputs.iter().find(|o| o.name == p.output) else {
                let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(StageError::InvalidParams(format!(
                    "model '{}' gave no output '{}' (it gave {})",
                    p.model,
                    p.output,
                    names.join(", ")
                )));
            };
            copy_probabilities(output, c, start, n, &mut data)?;
            host::progress((start + n) as u64, pixels as u64);
        }
        Ok(FeatureMatrix { samples: pixels, names: p.classes.iter().map(|code| format!("p:{code}")).collect(), data })
    }
}

/// The host's answer, with what this stage put in the tensor when the shapes disagree.
fn infer_error(e: InferError, p: &Params, t: u32, b: u32) -> StageError {
    match e {
        InferError::UnknownModel(m) => {
            StageError::InvalidParams(format!("`model`: {m}; name a model the pipeline declares in [[model]]"))
        }
        InferError::InvalidInput(m) => StageError::InvalidInput(format!(
            "{m} (this stage passes '{}' as [pixels, {t} dates, {b} bands]: dates = \"all\" is every date of the chunk, \
             and `bands` lists {b}; the model's T and B must match)",
            p.input
        )),
        InferError::Unsupported(m) => StageError::Unsupported(m),
        InferError::Failed(m) => StageError::Failed(m),
    }
}

sitsflow_sdk::export_features_stage!(OnnxClassifier);

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 dates × 3 bands × 2 × 2 pixels, value = date·100 + band·10 + pixel.
    fn cube(valid: Vec<u8>) -> Cube {
        let (dates, bands, pixels) = (2, 3, 4);
        let data = (0..dates * bands * pixels)
            .map(|i| {
                let (d, b, p) = (i / (bands * pixels), (i / pixels) % bands, i % pixels);
                (d * 100 + b * 10 + p) as f32
            })
            .collect();
        Cube {
            dates: vec!["2020-01-01".into(), "2020-02-01".into()],
            bands: vec!["B02".into(), "B04".into(), "B08".into()],
            rows: 2,
            cols: 2,
            data,
            valid,
        }
    }

    fn params(json: &str) -> Params {
        OnnxClassifier::parse_params(json).unwrap()
    }

    #[test]
    fn tensor_is_pixels_by_dates_by_bands_in_the_model_band_order() {
        let chunk = cube(Vec::new());
        // The model wants B08 then B02.
        let bands = band_indices(&chunk, &["B08".into(), "B02".into()]).unwrap();
        let mut out = Vec::new();
        fill_series_tensor(&chunk, &bands, 1, 2, &mut out);
        // Pixels 1 and 2: [date0: B08, B02, date1: B08, B02] each.
        assert_eq!(out, [21., 1., 121., 101., 22., 2., 122., 102.]);
    }

    #[test]
    fn masked_dates_are_nan_in_every_band() {
        // Date 1 invalid at pixel 2 only.
        let chunk = cube(vec![1, 1, 1, 1, 1, 1, 0, 1]);
        let bands = band_indices(&chunk, &["B04".into(), "B08".into()]).unwrap();
        let mut out = Vec::new();
        fill_series_tensor(&chunk, &bands, 2, 2, &mut out);
        assert_eq!(&out[..2], [12., 22.]);
        assert!(out[2].is_nan() && out[3].is_nan(), "{out:?}");
        assert_eq!(&out[4..], [13., 23., 113., 123.]);
    }

    #[test]
    fn probabilities_land_in_their_pixel_rows() {
        let mut data = vec![0.0; 4 * 2];
        let output = Tensor { name: "probabilities".into(), shape: vec![2, 2], data: vec![0.25, 0.75, 0.5, 0.5] };
        copy_probabilities(&output, 2, 1, 2, &mut data).unwrap();
        assert_eq!(data, [0., 0., 0.25, 0.75, 0.5, 0.5, 0., 0.]);
        let err = copy_probabilities(&output, 3, 1, 2, &mut data).unwrap_err();
        assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("2 columns but `classes` lists 3")), "{err}");
        let err = copy_probabilities(&output, 2, 0, 3, &mut data).unwrap_err();
        assert!(matches!(err, StageError::Failed(_)));
    }

    #[test]
    fn params_have_defaults_and_reject_unknown_keys() {
        let p = params(r#"{"model": "tempcnn", "bands": ["B04"], "classes": [1, 2]}"#);
        assert_eq!((p.dates, p.batch, p.input.as_str(), p.output.as_str()), (Dates::All, 4096, "reflectance", "probabilities"));
        assert!(OnnxClassifier::parse_params(r#"{"model": "m", "bands": [], "classes": [], "dates": "some"}"#).is_err());
        let err = OnnxClassifier::parse_params(r#"{"model": "m", "bands": [], "classes": [], "batchsize": 2}"#).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn bad_params_and_bands_are_named() {
        let chunk = cube(Vec::new());
        let run = |json: &str| OnnxClassifier::compute(chunk.clone(), params(json)).unwrap_err();
        let err = run(r#"{"model": "m", "bands": ["B04", "B11"], "classes": [1]}"#);
        assert!(matches!(&err, StageError::Unsupported(m) if m.contains("'B11'") && m.contains("B02, B04, B08")), "{err}");
        let err = run(r#"{"model": "m", "bands": ["B04", "B04"], "classes": [1]}"#);
        assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("twice")), "{err}");
        let err = run(r#"{"model": "m", "bands": ["B04"], "classes": [3, 3]}"#);
        assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("class 3 is listed twice")), "{err}");
        let err = run(r#"{"model": "m", "bands": ["B04"], "classes": [1], "batch": 0}"#);
        assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("`batch`")), "{err}");
    }

    #[test]
    fn natively_there_is_no_model_runtime() {
        // Outside the sandbox the SDK's `infer` has no host to call: the stage says so.
        let err = OnnxClassifier::compute(cube(Vec::new()), params(r#"{"model": "m", "bands": ["B04"], "classes": [1]}"#))
            .unwrap_err();
        assert!(matches!(&err, StageError::Unsupported(m) if m.contains("no host model runtime")), "{err}");
    }
}

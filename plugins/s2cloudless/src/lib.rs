//! `s2cloudless`: Sentinel-2 L1C cloud probability and mask, a port of s2cloudless 1.7.3
//! (github.com/sentinel-hub/sentinel2-cloud-detector, `S2PixelCloudDetector`).
//!
//! - The model is s2cloudless's LightGBM `pixel_s2_cloud_detector_lightGBM_v0.1`
//!   (CC BY-SA 4.0), embedded at build time (see `build.rs`) and evaluated exactly as
//!   LightGBM does ([`lightgbm`]), on the TOA reflectance (0..1) of the bands
//!   B01 B02 B04 B05 B08 B8A B09 B10 B11 B12, found by name.
//! - The mask is s2cloudless's post-processing ([`post`]): mean over a disk of radius
//!   `average_over` with reflected borders, strictly above `threshold`, dilated by a disk of
//!   radius `dilation_size`.
//!
//! Chunks: the mask at a pixel depends on pixels up to `average_over + dilation_size` away,
//! so the pipeline's `[run] halo` must be at least that for chunked output to equal a
//! whole-scene run (the defaults need 2).
//!
//! Pixels without data (NaN in any model band, or `valid` 0) are class 255 with probability
//! NaN; they take no part in the averaging of their neighbours (s2cloudless has no notion
//! of them; elsewhere the result is s2cloudless's own).

pub mod lightgbm;
pub mod post;

use lightgbm::{Forest, RawModel};
use sitsflow_sdk::prelude::*;
use std::sync::OnceLock;

/// The bands the model takes, in its feature order (s2cloudless `MODEL_BAND_IDS` of the 13 L1C bands).
pub const MODEL_BANDS: [&str; 10] = ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"];

/// Largest disk radius accepted for `average_over` and `dilation_size`: the averaging costs
/// O(radius²) per pixel, and a radius needs that much halo around every chunk.
pub const MAX_RADIUS: u32 = 64;

/// Written by `build.rs` from the LightGBM text model.
static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/s2cloudless_lightgbm.bin"));

/// The embedded model, decoded once per process (or component instance).
pub fn forest() -> &'static Forest {
    static FOREST: OnceLock<Forest> = OnceLock::new();
    FOREST.get_or_init(|| {
        // build.rs validated these bytes; failing here is a bug, not bad input.
        let raw = RawModel::decode(MODEL).expect("the embedded s2cloudless model decodes");
        Forest::new(&raw).expect("build.rs flattened the embedded model")
    })
}

fn default_threshold() -> f64 {
    0.4
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// Parameters; the defaults are `S2PixelCloudDetector`'s.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `threshold = 0.4`: a pixel is cloud where its averaged probability is strictly
    /// greater than this (compared in `f32`, as s2cloudless does on its `float32` array).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// `average_over = 1`: radius in pixels of the disk the probability is averaged over
    /// before thresholding; 0 thresholds the raw probability. The pipeline's `[run] halo`
    /// must be at least `average_over + dilation_size`.
    #[serde(default = "one")]
    pub average_over: u32,
    /// `dilation_size = 1`: radius in pixels of the disk the cloud mask is dilated by; 0
    /// leaves it as thresholded. Counts towards the halo (see `average_over`).
    #[serde(default = "one")]
    pub dilation_size: u32,
    /// `probability = true`: also return the model's cloud probability per date and pixel
    /// (before averaging; NaN where there is no data).
    #[serde(default = "yes")]
    pub probability: bool,
    /// Use a band of stored s2cloudless probabilities instead of running the model, and
    /// apply only the averaging, threshold and dilation: `probability_band = "CLP_S2C"`
    /// (eo-learn's patches carry one). The L1C bands are then not needed.
    #[serde(default)]
    pub probability_band: Option<String>,
}

impl Params {
    fn check(&self) -> Result<(), StageError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(StageError::InvalidParams(format!("threshold {} is not a probability in 0..1", self.threshold)));
        }
        for (name, radius) in [("average_over", self.average_over), ("dilation_size", self.dilation_size)] {
            if radius > MAX_RADIUS {
                return Err(StageError::InvalidParams(format!("{name} {radius} is larger than {MAX_RADIUS} px")));
            }
        }
        Ok(())
    }
}

pub struct S2Cloudless;

impl Stage for S2Cloudless {
    const NAME: &'static str = "s2cloudless";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Cloud probability and mask from Sentinel-2 L1C bands: s2cloudless 1.7.3 (LightGBM, averaging, dilation).";
    type Params = Params;
}

/// Pixels gathered per call into the forest: their features (40 bytes each) and scores stay
/// in cache while all trees pass over them.
const BLOCK: usize = 16384;

/// Model probabilities of one date: `prob[p]` for usable pixels, NaN elsewhere.
fn probabilities(planes: &[&[f32]; 10], usable: &[bool], prob: &mut [f32]) {
    let forest = forest();
    let mut features = Vec::with_capacity(BLOCK * MODEL_BANDS.len());
    let mut at = Vec::with_capacity(BLOCK);
    let mut scores = vec![0f64; BLOCK];
    let mut flush = |features: &mut Vec<f32>, at: &mut Vec<usize>| {
        let scores = &mut scores[..at.len()];
        forest.raw_scores(features, scores);
        for (&p, &s) in at.iter().zip(scores.iter()) {
            // s2cloudless returns `proba.astype(np.float32)` of LightGBM's f64 output.
            prob[p] = forest.probability(s) as f32;
        }
        features.clear();
        at.clear();
    };
    for p in 0..usable.len() {
        if !usable[p] {
            continue;
        }
        features.extend(planes.iter().map(|plane| plane[p]));
        at.push(p);
        if at.len() == BLOCK {
            flush(&mut features, &mut at);
        }
    }
    if !at.is_empty() {
        flush(&mut features, &mut at);
    }
}

impl CloudMaskStage for S2Cloudless {
    /// The averaging disk plus the dilation disk (see the module doc).
    fn footprint(params: &Params) -> Footprint {
        Footprint { halo: (params.average_over + params.dilation_size) as usize, ..Footprint::default() }
    }

    fn bands(available: &[String], params: &Params) -> Option<Vec<String>> {
        match &params.probability_band {
            Some(band) => bands_present(available, [band.as_str()]),
            None => bands_present(available, MODEL_BANDS),
        }
    }

    fn mask(chunk: Cube, params: Params) -> Result<Mask, StageError> {
        chunk.check()?;
        params.check()?;
        let stored = match &params.probability_band {
            Some(name) => Some(chunk.band_index(name).ok_or_else(|| {
                StageError::Unsupported(format!("probability_band '{name}' is not in the cube (bands: {})", chunk.bands.join(", ")))
            })?),
            None => None,
        };
        let missing: Vec<&str> = MODEL_BANDS.iter().copied().filter(|b| chunk.band_index(b).is_none()).collect();
        if stored.is_none() && !missing.is_empty() {
            return Err(StageError::Unsupported(format!(
                "s2cloudless needs the L1C bands {}; the cube lacks {} (bands: {})",
                MODEL_BANDS.join(", "),
                missing.join(", "),
                chunk.bands.join(", ")
            )));
        }
        let band_at: [usize; 10] = std::array::from_fn(|k| chunk.band_index(MODEL_BANDS[k]).unwrap_or(0));
        let (rows, cols, n) = (chunk.rows, chunk.cols, chunk.pixels());
        // f32 as NumPy compares a float32 array with a Python float.
        let threshold = params.threshold as f32;
        let mut classes = Vec::with_capacity(chunk.dates.len() * n);
        let mut probability = Vec::with_capacity(if params.probability { chunk.dates.len() * n } else { 0 });
        let mut usable = vec![false; n];
        let mut prob = vec![f32::NAN; n];
        for d in 0..chunk.dates.len() {
            let valid = chunk.valid_plane(d);
            prob.fill(f32::NAN);
            if let Some(band) = stored {
                let plane = chunk.plane(d, band);
                for p in 0..n {
                    usable[p] = valid.is_none_or(|v| v[p] != 0) && !plane[p].is_nan();
                    if usable[p] {
                        prob[p] = plane[p];
                    }
                }
            } else {
                let planes: [&[f32]; 10] = std::array::from_fn(|k| chunk.plane(d, band_at[k]));
                for p in 0..n {
                    usable[p] = valid.is_none_or(|v| v[p] != 0) && planes.iter().all(|plane| !plane[p].is_nan());
                }
                probabilities(&planes, &usable, &mut prob);
            }
            let averaged;
            let compared = if params.average_over > 0 {
                averaged = post::mean_filter(&prob, &usable, rows, cols, params.average_over as usize);
                &averaged
            } else {
                &prob
            };
            let cloud: Vec<u8> = (0..n).map(|p| (usable[p] && compared[p] > threshold) as u8).collect();
            let cloud = post::dilate(&cloud, rows, cols, params.dilation_size as usize);
            classes.extend((0..n).map(|p| {
                if !usable[p] {
                    mask_class::NO_DATA
                } else if cloud[p] == 1 {
                    mask_class::CLOUD
                } else {
                    mask_class::CLEAR
                }
            }));
            if params.probability {
                probability.extend_from_slice(&prob);
            }
        }
        Ok(Mask { classes, probability })
    }
}

sitsflow_sdk::export_cloud_mask_stage!(S2Cloudless);

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(rows: usize, cols: usize, pixel: impl Fn(usize, &str) -> f32) -> Cube {
        let bands: Vec<String> = MODEL_BANDS.iter().map(|b| b.to_string()).collect();
        let mut data = Vec::new();
        for b in &bands {
            data.extend((0..rows * cols).map(|p| pixel(p, b)));
        }
        Cube { dates: vec!["2020-01-01".into()], bands, rows, cols, data, valid: vec![] }
    }

    /// A bright, flat cloud-like TOA spectrum and a vegetation-like one.
    fn spectrum(band: &str, cloudy: bool) -> f32 {
        let at = MODEL_BANDS.iter().position(|b| *b == band).unwrap();
        let cloud = [0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.3, 0.05, 0.5, 0.4];
        let vegetation = [0.12, 0.09, 0.05, 0.09, 0.3, 0.32, 0.1, 0.002, 0.15, 0.07];
        if cloudy { cloud[at] } else { vegetation[at] }
    }

    #[test]
    fn the_embedded_model_is_s2cloudless() {
        let f = forest();
        assert_eq!(f.num_features(), 10);
        assert_eq!(f.num_trees(), 170);
    }

    #[test]
    fn batched_inference_equals_one_pixel_at_a_time_on_the_real_model() {
        // Reflectance-like values from a fixed sequence, with some NaN and zeros mixed in.
        let f = forest();
        let n = 1000;
        let x: Vec<f32> = (0..n * 10)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                1 => 0.0,
                _ => ((i as u64 * 2654435761) % 12000) as f32 / 10000.0,
            })
            .collect();
        let mut batched = vec![0f64; n];
        f.raw_scores(&x, &mut batched);
        for k in 0..n {
            assert_eq!(batched[k].to_bits(), f.raw_score_one(&x[k * 10..(k + 1) * 10]).to_bits(), "sample {k}");
        }
    }

    #[test]
    fn bright_pixels_are_cloud_dark_vegetation_is_not_and_no_data_is_255() {
        // 1 × 6: three cloudy, two clear, one with a NaN band.
        let c = cube(1, 6, |p, b| if p == 5 && b == "B11" { f32::NAN } else { spectrum(b, p < 3) });
        let params = S2Cloudless::parse_params(r#"{"average_over": 0, "dilation_size": 0}"#).unwrap();
        let m = S2Cloudless::mask(c, params).unwrap();
        assert_eq!(m.classes, [1, 1, 1, 0, 0, 255]);
        assert!(m.probability[0] > 0.9 && m.probability[4] < 0.1, "{:?}", m.probability);
        assert!(m.probability[5].is_nan());
    }

    #[test]
    fn missing_bands_and_bad_params_are_named() {
        let mut c = cube(1, 1, |_, b| spectrum(b, false));
        c.bands[7] = "CIRRUS".into();
        let err = S2Cloudless::mask(c, S2Cloudless::parse_params("{}").unwrap()).unwrap_err();
        match err {
            StageError::Unsupported(m) => assert!(m.contains("the cube lacks B10 (bands:"), "{m}"),
            other => panic!("{other:?}"),
        }
        let c = cube(1, 1, |_, b| spectrum(b, false));
        let err = S2Cloudless::mask(c, S2Cloudless::parse_params(r#"{"threshold": 1.5}"#).unwrap()).unwrap_err();
        assert_eq!(err, StageError::InvalidParams("threshold 1.5 is not a probability in 0..1".into()));
        assert!(S2Cloudless::parse_params(r#"{"average": 2}"#).is_err());
    }
}

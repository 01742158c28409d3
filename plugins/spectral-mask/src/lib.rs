//! `spectral-mask`: a rule-based cloud, cloud-shadow and snow mask from six Sentinel-2
//! bands (B02 blue, B03 green, B04 red, B08 NIR, B11 SWIR1, B12 SWIR2; TOA reflectance 0..1),
//! for cubes without the bands s2cloudless needs or without an SCL layer.
//!
//! Clouds are Fmask's *potential cloud pixels* (Zhu & Woodcock 2012, "Object-based cloud and
//! cloud shadow detection in Landsat imagery", RSE 118, eq. 1–4), with Landsat bands mapped
//! to Sentinel-2 (blue B02, green B03, red B04, NIR B08, SWIR1 B11, SWIR2 B12):
//! - basic test: B12 > 0.03, NDSI < 0.8, NDVI < 0.8 (Fmask's brightness-temperature term
//!   needs a thermal band, which Sentinel-2 lacks, so it is left out);
//! - whiteness: Σ |b − mean| / mean over B02, B03, B04 < 0.7;
//! - HOT, the haze-optimised transform (Zhang et al. 2002): B02 − 0.5·B04 − 0.08 > 0;
//! - B08 / B11 > 0.75.
//!
//! Fmask's second pass (scene-wide cloud probabilities from temperature and variability
//! percentiles) is left out on purpose: it needs the thermal band and statistics over the
//! whole scene, while a chunk only sees itself, and a per-chunk statistic would make the
//! mask depend on where the chunks are cut.
//!
//! Cloud shadows (our choice, documented here): Fmask finds shadows by flood-filling NIR and
//! SWIR1 and matching each cloud's projected shadow, which needs sun and view angles the cube
//! does not carry and a whole-scene fill. This stage keeps Fmask's idea, a pixel darker than
//! its surroundings in NIR and SWIR1, but with a bounded neighbourhood and no projection:
//! a pixel is shadow if, in both B08 and B11, it is below `shadow_darkness` × its local
//! background (the grey-level closing over a square of radius `shadow_window`, which fills
//! dark spots narrower than the window as a flood fill fills basins), it is within
//! `shadow_distance` pixels of a cloud pixel (shadows lie beside their clouds), and it is not
//! water (Fmask's water test: water is dark in NIR and SWIR anyway). A ratio rather than
//! Fmask's 0.02 difference, because the shadow removes a share of the direct light, and a
//! fixed difference flags every dark texture once the fill is local.
//!
//! Snow: NDSI > 0.4, B08 > 0.11, B03 > 0.1 (SNOMAP, Hall et al. 1995; the NIR and green
//! bounds are also Fmask's snow test without its thermal term) and white in the visible
//! (Fmask's whiteness < 0.7), which keeps bright turbid water — also dark in SWIR — out.
//! Without a thermal band, snow with NDSI below 0.8 also passes the cloud tests; cloud wins.
//!
//! Classes: 0 clear, 1 cloud, 2 shadow, 3 snow, 255 no data (NaN in one of the six bands or
//! `valid` 0). Precedence: no data, cloud (dilated), shadow (dilated), snow.
//!
//! Chunks: the result at a pixel depends on pixels up to
//! `max(2 × shadow_window, shadow_distance) + max(cloud_dilation, shadow_dilation)` away
//! (13 with the defaults); the pipeline's `[run] halo` must be at least that for chunked
//! output to equal a whole-scene run.

use sitsflow_sdk::morphology::{dilate_square, max_filter_square, min_filter_square};
use sitsflow_sdk::prelude::*;

/// The bands the tests use.
pub const BANDS: [&str; 6] = ["B02", "B03", "B04", "B08", "B11", "B12"];

/// Largest window, distance or dilation radius accepted, in pixels: each needs that much halo.
pub const MAX_RADIUS: u32 = 128;

/// Parameters: the thresholds of the tests, with their sources' values as defaults.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// `cloud_b12_min = 0.03`: basic test, B12 (SWIR2) reflectance above this (Fmask 2012, eq. 1).
    pub cloud_b12_min: f64,
    /// `cloud_ndsi_max = 0.8`: basic test, NDSI (B03−B11)/(B03+B11) below this (Fmask 2012, eq. 1).
    pub cloud_ndsi_max: f64,
    /// `cloud_ndvi_max = 0.8`: basic test, NDVI (B08−B04)/(B08+B04) below this (Fmask 2012, eq. 1).
    pub cloud_ndvi_max: f64,
    /// `whiteness_max = 0.7`: whiteness Σ|b − mean|/mean over B02, B03, B04 below this (Fmask 2012, eq. 2).
    pub whiteness_max: f64,
    /// `hot_offset = 0.08`: haze-optimised transform B02 − 0.5·B04 − hot_offset > 0
    /// (Zhang et al. 2002, as in Fmask 2012, eq. 3).
    pub hot_offset: f64,
    /// `nir_swir_ratio_min = 0.75`: B08/B11 above this (Fmask 2012, eq. 4; rocks and
    /// desert are brighter in SWIR1 than clouds are).
    pub nir_swir_ratio_min: f64,
    /// `snow_ndsi_min = 0.4`: snow where NDSI is above this (SNOMAP, Hall et al. 1995).
    pub snow_ndsi_min: f64,
    /// `snow_nir_min = 0.11`: snow needs B08 above this (Fmask 2012 snow test; SNOMAP).
    pub snow_nir_min: f64,
    /// `snow_green_min = 0.1`: snow needs B03 above this (Fmask 2012 snow test; SNOMAP).
    pub snow_green_min: f64,
    /// `shadow = true`: look for cloud shadows (class 2).
    pub shadow: bool,
    /// `shadow_darkness = 0.6`: a shadow is darker than this share of its local background in
    /// both B08 and B11 (this stage's rule, see the crate docs).
    pub shadow_darkness: f64,
    /// `shadow_window = 6`: radius in pixels of the square the local background (grey-level
    /// closing) is taken over; dark patches wider than about twice this are not found.
    pub shadow_window: u32,
    /// `shadow_distance = 12`: shadows lie within this many pixels (square) of a cloud pixel.
    pub shadow_distance: u32,
    /// `cloud_dilation = 1`: grow clouds by this many pixels (square, as Fmask does; Fmask's
    /// default is 3 px of 30 m), since the tests miss thin cloud edges.
    pub cloud_dilation: u32,
    /// `shadow_dilation = 1`: grow shadows by this many pixels (square).
    pub shadow_dilation: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            cloud_b12_min: 0.03,
            cloud_ndsi_max: 0.8,
            cloud_ndvi_max: 0.8,
            whiteness_max: 0.7,
            hot_offset: 0.08,
            nir_swir_ratio_min: 0.75,
            snow_ndsi_min: 0.4,
            snow_nir_min: 0.11,
            snow_green_min: 0.1,
            shadow: true,
            shadow_darkness: 0.6,
            shadow_window: 6,
            shadow_distance: 12,
            cloud_dilation: 1,
            shadow_dilation: 1,
        }
    }
}

impl Params {
    fn check(&self) -> Result<(), StageError> {
        let values = [
            ("cloud_b12_min", self.cloud_b12_min),
            ("cloud_ndsi_max", self.cloud_ndsi_max),
            ("cloud_ndvi_max", self.cloud_ndvi_max),
            ("whiteness_max", self.whiteness_max),
            ("hot_offset", self.hot_offset),
            ("nir_swir_ratio_min", self.nir_swir_ratio_min),
            ("snow_ndsi_min", self.snow_ndsi_min),
            ("snow_nir_min", self.snow_nir_min),
            ("snow_green_min", self.snow_green_min),
            ("shadow_darkness", self.shadow_darkness),
        ];
        if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(StageError::InvalidParams(format!("{name} is {v}, not a finite number")));
        }
        if !(0.0..=1.0).contains(&self.shadow_darkness) {
            return Err(StageError::InvalidParams(format!(
                "shadow_darkness {} is not a share of the background in 0..1",
                self.shadow_darkness
            )));
        }
        let radii = [
            ("shadow_window", self.shadow_window),
            ("shadow_distance", self.shadow_distance),
            ("cloud_dilation", self.cloud_dilation),
            ("shadow_dilation", self.shadow_dilation),
        ];
        if let Some((name, r)) = radii.iter().find(|(_, r)| *r > MAX_RADIUS) {
            return Err(StageError::InvalidParams(format!("{name} {r} is larger than {MAX_RADIUS} px")));
        }
        Ok(())
    }

    /// Pixels of context the result at a pixel depends on (the `[run] halo` it needs).
    pub fn halo(&self) -> u32 {
        let reach = if self.shadow { (2 * self.shadow_window).max(self.shadow_distance) } else { 0 };
        reach + self.cloud_dilation.max(if self.shadow { self.shadow_dilation } else { 0 })
    }
}

pub struct SpectralMask;

impl Stage for SpectralMask {
    const NAME: &'static str = "spectral-mask";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Rule-based cloud, cloud-shadow and snow mask from B02 B03 B04 B08 B11 B12 (Fmask-style tests).";
    type Params = Params;
}

/// Normalised difference; NaN when both are 0, which fails every test.
#[inline]
fn nd(a: f64, b: f64) -> f64 {
    (a - b) / (a + b)
}

/// The per-pixel tests on one pixel's bands `[B02, B03, B04, B08, B11, B12]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tests {
    pub cloud: bool,
    pub water: bool,
    pub snow: bool,
}

/// Fmask's potential-cloud-pixel, water and snow tests on one pixel.
pub fn tests(b: [f32; 6], p: &Params) -> Tests {
    let [blue, green, red, nir, swir1, swir2] = b.map(f64::from);
    let ndvi = nd(nir, red);
    let ndsi = nd(green, swir1);
    let mean = (blue + green + red) / 3.0;
    let whiteness = ((blue - mean).abs() + (green - mean).abs() + (red - mean).abs()) / mean;
    let basic = swir2 > p.cloud_b12_min && ndsi < p.cloud_ndsi_max && ndvi < p.cloud_ndvi_max;
    let hot = blue - 0.5 * red - p.hot_offset > 0.0;
    let cloud = basic && whiteness < p.whiteness_max && hot && nir / swir1 > p.nir_swir_ratio_min;
    // Fmask 2012, eq. 5.
    let water = (ndvi < 0.01 && nir < 0.11) || (ndvi > 0.0 && ndvi < 0.1 && nir < 0.05);
    let snow = ndsi > p.snow_ndsi_min && nir > p.snow_nir_min && green > p.snow_green_min && whiteness < p.whiteness_max;
    Tests { cloud, water, snow }
}

/// Grey-level closing (square max filter, then square min filter) of radius `r`: each
/// pixel's local background, with dark features narrower than the square filled in.
/// NaN (no data) takes part in neither filter; the result is finite wherever the input is.
pub fn closing(plane: &[f32], rows: usize, cols: usize, r: usize) -> Vec<f32> {
    let low: Vec<f32> = plane.iter().map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
    let mut grown = max_filter_square(&low, rows, cols, r);
    // A window with no data at all stays -inf: it must not win the minimum either.
    for v in grown.iter_mut().filter(|v| **v == f32::NEG_INFINITY) {
        *v = f32::INFINITY;
    }
    min_filter_square(&grown, rows, cols, r)
}

impl CloudMaskStage for SpectralMask {
    /// [`Params::halo`]: how far the result at a pixel looks.
    fn footprint(params: &Params) -> Footprint {
        Footprint { halo: params.halo() as usize, ..Footprint::default() }
    }

    fn bands(available: &[String], _: &Params) -> Option<Vec<String>> {
        bands_present(available, BANDS)
    }

    fn mask(chunk: Cube, params: Params) -> Result<Mask, StageError> {
        chunk.check()?;
        params.check()?;
        let missing: Vec<&str> = BANDS.iter().copied().filter(|b| chunk.band_index(b).is_none()).collect();
        if !missing.is_empty() {
            return Err(StageError::Unsupported(format!(
                "spectral-mask needs the bands {}; the cube lacks {} (bands: {})",
                BANDS.join(", "),
                missing.join(", "),
                chunk.bands.join(", ")
            )));
        }
        let band_at: [usize; 6] = std::array::from_fn(|k| chunk.band_index(BANDS[k]).expect("checked above"));
        let (rows, cols, n) = (chunk.rows, chunk.cols, chunk.pixels());
        let mut classes = Vec::with_capacity(chunk.dates.len() * n);
        let (mut usable, mut cloud, mut water, mut snow) = (vec![false; n], vec![false; n], vec![false; n], vec![false; n]);
        for d in 0..chunk.dates.len() {
            let planes: [&[f32]; 6] = std::array::from_fn(|k| chunk.plane(d, band_at[k]));
            let valid = chunk.valid_plane(d);
            for p in 0..n {
                let b: [f32; 6] = std::array::from_fn(|k| planes[k][p]);
                usable[p] = valid.is_none_or(|v| v[p] != 0) && b.iter().all(|v| !v.is_nan());
                let t = if usable[p] { tests(b, &params) } else { Tests { cloud: false, water: false, snow: false } };
                (cloud[p], water[p], snow[p]) = (t.cloud, t.water, t.snow);
            }
            let shadow = if params.shadow {
                // No-data pixels must not count as dark or bright in the background.
                let masked = |plane: &[f32]| -> Vec<f32> {
                    plane.iter().zip(&usable).map(|(&v, &ok)| if ok { v } else { f32::NAN }).collect()
                };
                let (nir, swir1) = (masked(planes[3]), masked(planes[4]));
                let w = params.shadow_window as usize;
                let (bg_nir, bg_swir1) = (closing(&nir, rows, cols, w), closing(&swir1, rows, cols, w));
                let near_cloud = dilate_square(&cloud, rows, cols, params.shadow_distance as usize);
                let k = params.shadow_darkness as f32;
                let found: Vec<bool> = (0..n)
                    .map(|p| {
                        usable[p]
                            && !cloud[p]
                            && !water[p]
                            && near_cloud[p]
                            && nir[p] < k * bg_nir[p]
                            && swir1[p] < k * bg_swir1[p]
                    })
                    .collect();
                dilate_square(&found, rows, cols, params.shadow_dilation as usize)
            } else {
                vec![false; n]
            };
            let cloud = dilate_square(&cloud, rows, cols, params.cloud_dilation as usize);
            classes.extend((0..n).map(|p| {
                if !usable[p] {
                    mask_class::NO_DATA
                } else if cloud[p] {
                    mask_class::CLOUD
                } else if shadow[p] {
                    mask_class::SHADOW
                } else if snow[p] {
                    mask_class::SNOW
                } else {
                    mask_class::CLEAR
                }
            }));
        }
        Ok(Mask { classes, probability: Vec::new() })
    }
}

sitsflow_sdk::export_cloud_mask_stage!(SpectralMask);

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAR_LAND: [f32; 6] = [0.08, 0.10, 0.09, 0.30, 0.20, 0.12];
    const CLOUD: [f32; 6] = [0.45, 0.44, 0.43, 0.46, 0.35, 0.22];
    const WATER: [f32; 6] = [0.10, 0.08, 0.05, 0.03, 0.01, 0.01];
    const SNOW: [f32; 6] = [0.80, 0.80, 0.78, 0.70, 0.05, 0.03];

    #[test]
    fn fmask_tests_on_typical_spectra() {
        let p = Params::default();
        assert_eq!(tests(CLOUD, &p), Tests { cloud: true, water: false, snow: false });
        assert_eq!(tests(CLEAR_LAND, &p), Tests { cloud: false, water: false, snow: false });
        assert_eq!(tests(WATER, &p), Tests { cloud: false, water: true, snow: false });
        // Fresh snow has NDSI above 0.8, so the basic test already keeps it out of the clouds.
        assert_eq!(tests(SNOW, &p), Tests { cloud: false, water: false, snow: true });
        // Bright, orange turbid water is dark in SWIR like snow, but not white.
        assert!(!tests([0.12, 0.16, 0.25, 0.20, 0.03, 0.02], &p).snow);
        // A zero spectrum gives NaN indices, which fail every test.
        assert_eq!(tests([0.0; 6], &p), Tests { cloud: false, water: false, snow: false });
    }

    #[test]
    fn closing_fills_narrow_dark_spots_only() {
        // 1 × 7: a one-pixel pit at 2 and a wide trough at 4..7.
        let row = [0.5, 0.5, 0.1, 0.5, 0.1, 0.1, 0.1];
        assert_eq!(closing(&row, 1, 7, 1), [0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1]);
        // NaN (no data) does not count as either extreme.
        let row = [0.5, f32::NAN, 0.1, 0.5];
        assert_eq!(closing(&row, 1, 4, 1), [0.5, 0.5, 0.5, 0.5]);
        // The same along columns.
        let col = [0.5, 0.1, 0.5];
        assert_eq!(closing(&col, 3, 1, 1), [0.5, 0.5, 0.5]);
    }

    fn cube(rows: usize, cols: usize, spectrum: impl Fn(usize) -> [f32; 6]) -> Cube {
        let n = rows * cols;
        let mut data = vec![0f32; 6 * n];
        for p in 0..n {
            let s = spectrum(p);
            for k in 0..6 {
                data[k * n + p] = s[k];
            }
        }
        let bands = BANDS.iter().map(|b| b.to_string()).collect();
        Cube { dates: vec!["2021-06-01".into()], bands, rows, cols, data, valid: vec![] }
    }

    #[test]
    fn a_cloud_casts_a_shadow_beside_it_and_snow_stays_snow() {
        // 9 × 9 land; cloud at (2, 2); a dark patch (a third of the land's NIR and SWIR1) at
        // (2, 5) near it, and another far away at (8, 8); snow at (7, 0); one pixel no data.
        let dark = CLEAR_LAND.map(|v| v / 3.0);
        let c = cube(9, 9, |p| match (p / 9, p % 9) {
            (2, 2) => CLOUD,
            (2, 5) | (8, 8) => dark,
            (7, 0) => SNOW,
            (0, 8) => [f32::NAN; 6],
            _ => CLEAR_LAND,
        });
        let params = r#"{"shadow_distance": 4, "shadow_window": 2, "cloud_dilation": 1, "shadow_dilation": 0}"#;
        let m = SpectralMask::mask(c, SpectralMask::parse_params(params).unwrap()).unwrap();
        let at = |r: usize, c: usize| m.classes[r * 9 + c];
        assert_eq!(at(2, 2), mask_class::CLOUD);
        assert_eq!(at(1, 1), mask_class::CLOUD, "dilated by one");
        assert_eq!(at(2, 5), mask_class::SHADOW);
        assert_eq!(at(8, 8), mask_class::CLEAR, "dark but far from any cloud");
        assert_eq!(at(7, 0), mask_class::SNOW);
        assert_eq!(at(0, 8), mask_class::NO_DATA);
        assert_eq!(m.classes.iter().filter(|&&v| v == mask_class::CLEAR).count(), 81 - 9 - 1 - 1 - 1);
        assert!(m.probability.is_empty());
    }

    #[test]
    fn missing_bands_and_bad_params_are_named() {
        let mut c = cube(1, 1, |_| CLEAR_LAND);
        c.bands[4] = "B8A".into();
        let err = SpectralMask::mask(c, Params::default()).unwrap_err();
        assert_eq!(
            err,
            StageError::Unsupported(
                "spectral-mask needs the bands B02, B03, B04, B08, B11, B12; the cube lacks B11 (bands: B02, B03, B04, B08, B8A, B12)".into()
            )
        );
        let err = SpectralMask::mask(cube(1, 1, |_| CLEAR_LAND), SpectralMask::parse_params(r#"{"shadow_darkness": 2}"#).unwrap())
            .unwrap_err();
        assert!(matches!(err, StageError::InvalidParams(m) if m.contains("shadow_darkness 2")));
        assert!(SpectralMask::parse_params(r#"{"shadow_windw": 3}"#).is_err());
        assert_eq!(Params::default().halo(), 13);
    }
}

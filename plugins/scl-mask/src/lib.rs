//! `scl-mask`: a cloud, shadow and snow mask from the Sentinel-2 L2A Scene
//! Classification Layer (SCL), with configurable classes and optional dilation.
//!
//! SCL codes (ESA L2A product specification): 0 no data, 1 saturated or defective,
//! 2 dark area / topographic shadow, 3 cloud shadow, 4 vegetation, 5 not vegetated,
//! 6 water, 7 unclassified, 8 cloud medium probability, 9 cloud high probability,
//! 10 thin cirrus, 11 snow or ice.

use sitsflow_sdk::prelude::*;

/// The SCL classes that can be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SclClass {
    NoData,
    SaturatedDefective,
    DarkArea,
    CloudShadow,
    CloudMedium,
    CloudHigh,
    ThinCirrus,
    Snow,
}

impl SclClass {
    fn code(self) -> u8 {
        match self {
            SclClass::NoData => 0,
            SclClass::SaturatedDefective => 1,
            SclClass::DarkArea => 2,
            SclClass::CloudShadow => 3,
            SclClass::CloudMedium => 8,
            SclClass::CloudHigh => 9,
            SclClass::ThinCirrus => 10,
            SclClass::Snow => 11,
        }
    }

    /// The mask class it becomes.
    fn mask_class(self) -> u8 {
        match self {
            SclClass::NoData | SclClass::SaturatedDefective => mask_class::NO_DATA,
            SclClass::DarkArea | SclClass::CloudShadow => mask_class::SHADOW,
            SclClass::CloudMedium | SclClass::CloudHigh | SclClass::ThinCirrus => mask_class::CLOUD,
            SclClass::Snow => mask_class::SNOW,
        }
    }
}

fn default_classes() -> Vec<SclClass> {
    use SclClass::*;
    vec![NoData, SaturatedDefective, CloudShadow, CloudMedium, CloudHigh, ThinCirrus]
}

fn default_band() -> String {
    "SCL".into()
}

/// Parameters.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// SCL classes to mask (default: no-data, saturated-defective, cloud-shadow,
    /// cloud-medium, cloud-high, thin-cirrus; add "snow" or "dark-area" as needed).
    #[serde(default = "default_classes")]
    pub classes: Vec<SclClass>,
    /// Grow cloud and shadow masks by this many pixels (square neighbourhood), since
    /// SCL misses cloud edges.
    #[serde(default)]
    pub dilation: u32,
    /// Name of the SCL band in the cube.
    #[serde(default = "default_band")]
    pub band: String,
}

pub struct SclMask;

impl Stage for SclMask {
    const NAME: &'static str = "scl-mask";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Cloud, shadow and snow mask from the Sentinel-2 L2A Scene Classification Layer.";
    type Params = Params;
}

/// Grows the pixels of `class` by `radius` (square) over clear pixels, leaving other
/// masked classes as they are.
fn dilate(plane: &mut [u8], rows: usize, cols: usize, class: u8, radius: usize) {
    if radius == 0 {
        return;
    }
    let seeds: Vec<bool> = plane.iter().map(|&v| v == class).collect();
    let near = sitsflow_sdk::morphology::dilate_square(&seeds, rows, cols, radius);
    for (v, near) in plane.iter_mut().zip(near) {
        if near && *v == mask_class::CLEAR {
            *v = class;
        }
    }
}

impl CloudMaskStage for SclMask {
    /// The dilation radius: a pixel's class depends on the SCL that far away.
    fn footprint(params: &Params) -> Footprint {
        Footprint { halo: params.dilation as usize, ..Footprint::default() }
    }

    fn bands(available: &[String], params: &Params) -> Option<Vec<String>> {
        bands_present(available, [params.band.as_str()])
    }

    fn mask(chunk: Cube, params: Params) -> Result<Mask, StageError> {
        let Some(band) = chunk.band_index(&params.band) else {
            return Err(StageError::Unsupported(format!(
                "band '{}' (the Scene Classification Layer) is not in the cube (bands: {})",
                params.band,
                chunk.bands.join(", ")
            )));
        };
        let mut lut = [mask_class::CLEAR; 256];
        for class in &params.classes {
            lut[class.code() as usize] = class.mask_class();
        }
        let n = chunk.pixels();
        let mut classes = vec![mask_class::CLEAR; chunk.dates.len() * n];
        for d in 0..chunk.dates.len() {
            let plane = &mut classes[d * n..(d + 1) * n];
            for (out, &v) in plane.iter_mut().zip(chunk.plane(d, band)) {
                // NaN is no data (also when SCL 0 was read as missing).
                *out = if v.is_nan() {
                    mask_class::NO_DATA
                } else if !(0.0..=11.0).contains(&v) || v.fract() != 0.0 {
                    return Err(StageError::InvalidInput(format!(
                        "SCL value {v} on {} is not a class code 0..11",
                        chunk.dates[d]
                    )));
                } else {
                    lut[v as usize]
                };
            }
            let radius = params.dilation as usize;
            dilate(plane, chunk.rows, chunk.cols, mask_class::CLOUD, radius);
            dilate(plane, chunk.rows, chunk.cols, mask_class::SHADOW, radius);
        }
        Ok(Mask { classes, probability: Vec::new() })
    }
}

sitsflow_sdk::export_cloud_mask_stage!(SclMask);

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(scl: &[f32], rows: usize, cols: usize) -> Cube {
        let n = rows * cols;
        let mut data = vec![0.1f32; n]; // B04
        data.extend_from_slice(scl);
        Cube { dates: vec!["2021-06-01".into()], bands: vec!["B04".into(), "SCL".into()], rows, cols, data, valid: vec![] }
    }

    #[test]
    fn default_classes_map_to_cloud_shadow_and_no_data() {
        let scl = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, f32::NAN];
        let m = SclMask::mask(cube(&scl, 1, 13), SclMask::parse_params("{}").unwrap()).unwrap();
        assert_eq!(m.classes, [255, 255, 0, 2, 0, 0, 0, 0, 1, 1, 1, 0, 255]);
    }

    #[test]
    fn snow_and_dilation_on_request() {
        // 3 × 3 with a cloud in the middle and snow in a corner.
        let scl = [4.0, 4.0, 11.0, 4.0, 9.0, 4.0, 4.0, 4.0, 4.0];
        let p = SclMask::parse_params(r#"{"classes": ["cloud-high", "snow"], "dilation": 1}"#).unwrap();
        let m = SclMask::mask(cube(&scl, 3, 3), p).unwrap();
        assert_eq!(m.classes, [1, 1, 3, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn missing_band_and_bad_values_are_named() {
        let mut c = cube(&[4.0], 1, 1);
        c.bands[1] = "CLM".into();
        let err = SclMask::mask(c, SclMask::parse_params("{}").unwrap()).unwrap_err();
        assert_eq!(err, StageError::Unsupported("band 'SCL' (the Scene Classification Layer) is not in the cube (bands: B04, CLM)".into()));
        let err = SclMask::mask(cube(&[12.0], 1, 1), SclMask::parse_params("{}").unwrap()).unwrap_err();
        assert_eq!(err, StageError::InvalidInput("SCL value 12 on 2021-06-01 is not a class code 0..11".into()));
        assert!(SclMask::parse_params(r#"{"classes": ["clouds"]}"#).is_err());
    }
}

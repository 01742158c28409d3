//! `normalized-difference`: the template stage of the plugin-author guide.
//!
//! For every date it computes `(a − b) / (a + b)` of two named bands — NDVI with
//! `a = "B08", b = "B04"`, NDWI with `a = "B03", b = "B08"`, and so on — and returns
//! one feature per date named `ND(a,b)@YYYY-MM-DD`. Pixels that are missing (NaN),
//! masked (validity 0) or whose denominator is zero give NaN, and so do values outside
//! [−1, 1]: L2A reflectance below zero (DN under the offset) makes them, and they are
//! counted in a warning rather than written silently.

use sitsflow_sdk::prelude::*;

/// Parameters, from the pipeline's `[stage.params]` table.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// First band (the minuend), e.g. `"B08"`.
    pub a: String,
    /// Second band (the subtrahend), e.g. `"B04"`.
    pub b: String,
    /// Name of the index in the feature names (default `ND(a,b)`), e.g. `"NDVI"`.
    #[serde(default)]
    pub name: Option<String>,
}

pub struct NormalizedDifference;

impl Stage for NormalizedDifference {
    const NAME: &'static str = "normalized-difference";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Normalized difference (a - b) / (a + b) of two bands, per date.";
    type Params = Params;
}

impl FeatureStage for NormalizedDifference {
    /// Only `a` and `b` are copied into the sandbox (optional: without this every band is).
    fn bands(available: &[String], params: &Params) -> Option<Vec<String>> {
        bands_present(available, [params.a.as_str(), params.b.as_str()])
    }

    fn compute(chunk: Cube, params: Params) -> Result<FeatureMatrix, StageError> {
        let band = |name: &str| {
            chunk.band_index(name).ok_or_else(|| {
                StageError::Unsupported(format!(
                    "band '{name}' is not in the cube (bands: {})",
                    chunk.bands.join(", ")
                ))
            })
        };
        let (ia, ib) = (band(&params.a)?, band(&params.b)?);
        let label = params.name.unwrap_or_else(|| format!("ND({},{})", params.a, params.b));
        let (pixels, dates) = (chunk.pixels(), chunk.dates.len());
        // Sample-major output (one row per pixel), written date by date so the
        // inner loop reads two contiguous planes.
        let mut data = vec![f32::NAN; pixels * dates];
        let mut outside = 0usize;
        for d in 0..dates {
            let (a, b) = (chunk.plane(d, ia), chunk.plane(d, ib));
            let valid = chunk.valid_plane(d);
            for p in 0..pixels {
                if valid.is_some_and(|v| v[p] == 0) {
                    continue;
                }
                let sum = a[p] + b[p];
                if sum != 0.0 {
                    let v = (a[p] - b[p]) / sum;
                    if v.abs() <= 1.0 {
                        data[p * dates + d] = v;
                    } else {
                        outside += 1;
                    }
                }
            }
        }
        if outside > 0 {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!("{label}: {outside} pixel-dates outside [-1, 1] (from negative reflectance) masked"),
            );
        }
        Ok(FeatureMatrix {
            samples: pixels,
            names: chunk.dates.iter().map(|d| format!("{label}@{d}")).collect(),
            data,
        })
    }
}

sitsflow_sdk::export_features_stage!(NormalizedDifference);

#[cfg(test)]
mod tests {
    use super::*;

    fn cube() -> Cube {
        // 2 dates × 2 bands (B04, B08) × 1 × 3 pixels.
        Cube {
            dates: vec!["2020-01-01".into(), "2020-02-01".into()],
            bands: vec!["B04".into(), "B08".into()],
            rows: 1,
            cols: 3,
            data: vec![
                0.1, 0.2, f32::NAN, 0.5, 0.2, 0.3, // date 0: B04, B08
                0.0, 0.1, 0.1, 0.0, 0.3, 0.1, // date 1: B04, B08
            ],
            valid: vec![1, 1, 1, 1, 0, 1],
        }
    }

    #[test]
    fn ndvi_per_date_with_masked_and_missing_pixels() {
        let params = NormalizedDifference::parse_params(r#"{"a":"B08","b":"B04","name":"NDVI"}"#).unwrap();
        let out = NormalizedDifference::compute(cube(), params).unwrap();
        assert_eq!(out.names, ["NDVI@2020-01-01", "NDVI@2020-02-01"]);
        assert_eq!(out.samples, 3);
        let close = |x: f32, y: f32| (x - y).abs() < 1e-6;
        assert!(close(out.row(0)[0], (0.5 - 0.1) / 0.6));
        assert!(out.row(0)[1].is_nan(), "0/0 gives NaN");
        assert!(out.row(1)[1].is_nan(), "masked pixel gives NaN");
        assert!(close(out.row(1)[0], 0.0));
        assert!(out.row(2)[0].is_nan(), "missing input gives NaN");
        assert!(close(out.row(2)[1], 0.0));
    }

    #[test]
    fn values_outside_minus_one_one_are_masked() {
        // Reflectance below zero (an L2A DN under the offset): (0.3 - -0.1) / 0.2 = 2.
        let c = Cube { dates: vec!["2022-10-05".into()], bands: vec!["B04".into(), "B08".into()], rows: 1, cols: 2, data: vec![-0.1, 0.1, 0.3, 0.3], valid: vec![] };
        let params = NormalizedDifference::parse_params(r#"{"a":"B08","b":"B04"}"#).unwrap();
        let out = NormalizedDifference::compute(c, params).unwrap();
        assert!(out.row(0)[0].is_nan(), "2.0 is no normalized difference");
        assert!((out.row(1)[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn missing_band_is_named() {
        let params = NormalizedDifference::parse_params(r#"{"a":"B11","b":"B04"}"#).unwrap();
        let err = NormalizedDifference::compute(cube(), params).unwrap_err();
        assert_eq!(err, StageError::Unsupported("band 'B11' is not in the cube (bands: B04, B08)".into()));
    }

    #[test]
    fn unknown_parameter_is_refused() {
        let err = NormalizedDifference::parse_params(r#"{"a":"B08","b":"B04","c":1}"#).err().unwrap();
        assert!(matches!(err, StageError::InvalidParams(m) if m.contains("unknown field `c`")));
    }
}

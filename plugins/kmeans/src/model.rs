//! The model blob, format `sitsflow-kmeans/1`: UTF-8 JSON, so a run directory's model
//! can be read without this crate.
//!
//! ```json
//! {"format": "sitsflow-kmeans/1", "k": 2, "features": ["NDVI_0", "NDVI_1"],
//!  "standardize": false, "mean": [0.41, 0.52], "scale": [1.0, 1.0],
//!  "centres": [[0.2, 0.3], [0.7, 0.8]]}
//! ```
//!
//! `centres` are in feature units. Distances (inertia, `assign`) are measured on
//! `(x − mean) / scale`: with `standardize`, `scale` is the fit sample's standard
//! deviation per feature (1 for a constant one), so distances are in standard
//! deviations; without it `scale` is 1 and `mean` only centres the data, which keeps
//! the f32 arithmetic exact enough.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::serde_json;

pub const FORMAT: &str = "sitsflow-kmeans/1";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub format: String,
    pub k: usize,
    pub features: Vec<String>,
    pub standardize: bool,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    /// `k` rows of `features.len()` values, in feature units.
    pub centres: Vec<Vec<f64>>,
}

/// The transform into the space the clustering runs in; fit and `assign` share it so
/// they compute the very same f32 values.
#[inline]
pub fn to_internal(v: f32, mean: f64, inv_scale: f64) -> f32 {
    ((v as f64 - mean) * inv_scale) as f32
}

impl Model {
    pub fn to_blob(&self) -> ModelBlob {
        ModelBlob { format: FORMAT.into(), data: serde_json::to_vec(self).expect("a model always serialises") }
    }

    pub fn from_blob(blob: &ModelBlob) -> Result<Model, StageError> {
        if blob.format != FORMAT {
            return Err(StageError::InvalidInput(format!(
                "model format '{}' is not {FORMAT}: this model was not made by the kmeans stage",
                blob.format
            )));
        }
        let model: Model = serde_json::from_slice(&blob.data)
            .map_err(|e| StageError::InvalidInput(format!("{FORMAT} model does not parse: {e}")))?;
        model.check()?;
        Ok(model)
    }

    fn check(&self) -> Result<(), StageError> {
        let bad = |m: String| Err(StageError::InvalidInput(format!("{FORMAT} model: {m}")));
        let d = self.features.len();
        if self.format != FORMAT {
            return bad(format!("its format field says '{}'", self.format));
        }
        if self.k == 0 || self.centres.len() != self.k {
            return bad(format!("k = {} but it holds {} centres", self.k, self.centres.len()));
        }
        if d == 0 || self.mean.len() != d || self.scale.len() != d {
            return bad(format!(
                "{d} features but {} means and {} scales",
                self.mean.len(),
                self.scale.len()
            ));
        }
        if let Some(c) = self.centres.iter().position(|c| c.len() != d) {
            return bad(format!("centre {c} has {} values for {d} features", self.centres[c].len()));
        }
        if self.centres.iter().flatten().chain(&self.mean).any(|v| !v.is_finite()) {
            return bad("a centre or mean is not finite".into());
        }
        if let Some(j) = self.scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return bad(format!("scale of feature '{}' is {}, not a positive number", self.features[j], self.scale[j]));
        }
        Ok(())
    }

    /// Checks that `names` are the features the model was fitted on, in that order.
    pub fn check_features(&self, names: &[String]) -> Result<(), StageError> {
        if names == self.features {
            return Ok(());
        }
        let first = names.iter().zip(&self.features).position(|(a, b)| a != b);
        let detail = match first {
            Some(j) => format!("feature {j} is '{}' where the model has '{}'", names[j], self.features[j]),
            None => format!("the samples have {} features, the model {}", names.len(), self.features.len()),
        };
        Err(StageError::InvalidInput(format!(
            "the samples' features do not match the model's ({detail}); assign needs the features the model was fitted on, in the same order"
        )))
    }

    /// Reciprocal scales, as the transform uses them.
    pub fn inv_scale(&self) -> Vec<f64> {
        self.scale.iter().map(|s| 1.0 / s).collect()
    }

    /// The centres in the clustering space, `k × d`.
    pub fn internal_centres(&self) -> Vec<f64> {
        let inv = self.inv_scale();
        self.centres
            .iter()
            .flat_map(|c| c.iter().zip(&self.mean).zip(&inv).map(|((v, m), i)| (v - m) * i))
            .collect()
    }
}

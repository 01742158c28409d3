//! Plain Rust mirrors of the WIT data types, so stage methods run natively too.
//! Every array is flat and row-major; the field docs give the layout.

/// A chunk of an image time series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cube {
    /// ISO `YYYY-MM-DD`, ascending.
    pub dates: Vec<String>,
    pub bands: Vec<String>,
    pub rows: usize,
    pub cols: usize,
    /// `dates × bands × rows × cols`; NaN = missing.
    pub data: Vec<f32>,
    /// `dates × rows × cols` (1 usable, 0 not), or empty when all are usable.
    pub valid: Vec<u8>,
}

impl Cube {
    /// Pixels per band and date.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// Index of a band by name.
    pub fn band_index(&self, name: &str) -> Option<usize> {
        self.bands.iter().position(|b| b == name)
    }

    /// The `rows × cols` plane of one band at one date.
    pub fn plane(&self, date: usize, band: usize) -> &[f32] {
        let n = self.pixels();
        let start = (date * self.bands.len() + band) * n;
        &self.data[start..start + n]
    }

    /// The validity plane of one date, if the chunk carries validity.
    pub fn valid_plane(&self, date: usize) -> Option<&[u8]> {
        if self.valid.is_empty() {
            return None;
        }
        let n = self.pixels();
        Some(&self.valid[date * n..(date + 1) * n])
    }

    /// Checks that the arrays have the sizes the shape says.
    pub fn check(&self) -> Result<(), crate::StageError> {
        let expect = self.dates.len() * self.bands.len() * self.pixels();
        if self.data.len() != expect {
            return Err(crate::StageError::InvalidInput(format!(
                "cube data has {} values, expected {} dates × {} bands × {} rows × {} cols = {expect}",
                self.data.len(),
                self.dates.len(),
                self.bands.len(),
                self.rows,
                self.cols
            )));
        }
        let expect_valid = self.dates.len() * self.pixels();
        if !self.valid.is_empty() && self.valid.len() != expect_valid {
            return Err(crate::StageError::InvalidInput(format!(
                "cube validity has {} values, expected dates × rows × cols = {expect_valid}",
                self.valid.len()
            )));
        }
        Ok(())
    }
}

/// `samples × features`, row-major; NaN = missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMatrix {
    pub samples: usize,
    pub names: Vec<String>,
    pub data: Vec<f32>,
}

impl FeatureMatrix {
    /// The features of one sample.
    pub fn row(&self, i: usize) -> &[f32] {
        let f = self.names.len();
        &self.data[i * f..(i + 1) * f]
    }

    pub fn check(&self) -> Result<(), crate::StageError> {
        if self.data.len() != self.samples * self.names.len() {
            return Err(crate::StageError::InvalidInput(format!(
                "feature matrix has {} values, expected {} samples × {} features",
                self.data.len(),
                self.samples,
                self.names.len()
            )));
        }
        Ok(())
    }
}

/// `samples × classes` probabilities, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probabilities {
    pub samples: usize,
    pub classes: Vec<u16>,
    pub data: Vec<f32>,
}

/// A trained model in the stage's own versioned format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelBlob {
    /// e.g. `sitsflow-rf/1`.
    pub format: String,
    pub data: Vec<u8>,
}

/// Cloud mask classes: 0 clear, 1 cloud, 2 shadow, 3 snow, 255 no data.
pub mod mask_class {
    pub const CLEAR: u8 = 0;
    pub const CLOUD: u8 = 1;
    pub const SHADOW: u8 = 2;
    pub const SNOW: u8 = 3;
    pub const NO_DATA: u8 = 255;
}

/// A cloud mask for a chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mask {
    /// `dates × rows × cols`, see [`mask_class`].
    pub classes: Vec<u8>,
    /// `dates × rows × cols` cloud probability, or empty.
    pub probability: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fitted {
    pub model: ModelBlob,
    /// JSON diagnostics.
    pub report: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub clusters: Vec<u32>,
    pub distances: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trained {
    pub model: ModelBlob,
    /// JSON diagnostics.
    pub report: String,
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PosteriorSeries {
    pub steps: usize,
    pub samples: usize,
    pub classes: Vec<u16>,
    /// `steps × samples × classes`.
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// `steps × samples`.
    pub labels: Vec<u16>,
    /// `steps × samples × classes`, or empty.
    pub posteriors: Vec<f32>,
}

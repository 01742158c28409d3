//! Fixture: a labeller that trains like any other (it remembers the classes it saw) but
//! predicts what `probabilities` says — proper ones, NaN, negative values, or rows that
//! do not sum to 1 — so the host's check of a labeller's output can be tested.
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `"fine"` (one-hot on the first class), `"nan"`, `"negative"` (−5 and 6) or
    /// `"unnormalised"` (0.5 for every class).
    #[serde(default = "fine")]
    pub probabilities: String,
}

fn fine() -> String {
    "fine".into()
}

pub struct Hostile;
impl Stage for Hostile {
    const NAME: &'static str = "fixture-hostile-labeller";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Predicts values that are not probabilities, on request.";
    type Params = Params;
}

impl LabellerStage for Hostile {
    fn train(_samples: FeatureMatrix, labels: Vec<u16>, _p: Params) -> Result<Trained, StageError> {
        let mut classes: Vec<u16> = labels.into_iter().filter(|&l| l != 0).collect();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() < 2 {
            return Err(StageError::InvalidInput("needs two classes".into()));
        }
        let data = classes.iter().flat_map(|c| c.to_le_bytes()).collect();
        Ok(Trained { model: ModelBlob { format: "fixture-hostile/1".into(), data }, report: "{}".into() })
    }

    fn predict(model: ModelBlob, samples: FeatureMatrix, p: Params) -> Result<Probabilities, StageError> {
        let classes: Vec<u16> = model.data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let k = classes.len();
        let row: Vec<f32> = match p.probabilities.as_str() {
            "fine" => (0..k).map(|j| if j == 0 { 1.0 } else { 0.0 }).collect(),
            "nan" => vec![f32::NAN; k],
            "negative" => (0..k).map(|j| if j == 0 { -5.0 } else if j == 1 { 6.0 } else { 0.0 }).collect(),
            "unnormalised" => vec![0.5; k],
            other => return Err(StageError::InvalidParams(format!("probabilities = '{other}'"))),
        };
        let data = row.iter().copied().cycle().take(samples.samples * k).collect();
        Ok(Probabilities { samples: samples.samples, classes, data })
    }
}
sitsflow_sdk::export_labeller_stage!(Hostile);

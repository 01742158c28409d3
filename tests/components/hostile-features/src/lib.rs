//! Fixture: a features stage whose output is well formed in size but not in names —
//! zero features, a name holding NUL, two features of one name — on request, so the
//! host's check of a stage's result at the boundary can be tested; or whose output
//! depends on state it keeps between calls (`"calls"`: how many calls its instance has
//! served), so a host reusing instances across chunks gives results that depend on
//! which instance served a chunk.
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `"fine"` (one feature `x`), `"none"`, `"nul"`, `"duplicate"`, `"short"` (one name,
    /// two values per pixel), `"calls"` (one
    /// feature `calls`: the calls this instance has served, this one included) or
    /// `"wide"` (`count` features: a stage whose output dwarfs its input).
    #[serde(default = "fine")]
    pub names: String,
    /// With `names = "wide"`: this many features (`f0`, `f1`, …), each the pixel's index.
    #[serde(default)]
    pub count: usize,
}

fn fine() -> String {
    "fine".into()
}

/// The calls this instance has served.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct Hostile;
impl Stage for Hostile {
    const NAME: &'static str = "fixture-hostile-features";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Returns unusable feature names, on request.";
    type Params = Params;
}

impl FeatureStage for Hostile {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        let n = chunk.pixels();
        let names: Vec<String> = match p.names.as_str() {
            "fine" => vec!["x".into()],
            "none" => Vec::new(),
            "nul" => vec!["a\0b".into()],
            "duplicate" => vec!["x".into(), "x".into()],
            "short" => return Ok(FeatureMatrix { samples: n, names: vec!["x".into()], data: vec![1.0; 2 * n] }),
            "wide" => {
                let names: Vec<String> = (0..p.count).map(|k| format!("f{k}")).collect();
                let data = (0..n).flat_map(|i| std::iter::repeat_n(i as f32, p.count)).collect();
                return Ok(FeatureMatrix { samples: n, names, data });
            }
            "calls" => {
                let served = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                return Ok(FeatureMatrix { samples: n, names: vec!["calls".into()], data: vec![served as f32; n] });
            }
            other => return Err(StageError::InvalidParams(format!("names = '{other}'"))),
        };
        let data = vec![1.0; n * names.len()];
        Ok(FeatureMatrix { samples: n, names, data })
    }
}
sitsflow_sdk::export_features_stage!(Hostile);

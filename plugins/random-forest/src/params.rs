//! The stage's parameters (their doc comments are the JSON Schema users see) and
//! their validation against the training data.

use serde::{Deserialize, Serialize};
use sitsflow_sdk::StageError;
use std::borrow::Cow;

/// How a split's quality is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Gini impurity, 1 − Σ p².
    #[default]
    Gini,
    /// Shannon entropy in bits, −Σ p log₂ p (`log_loss` is accepted as in scikit-learn).
    #[serde(alias = "log_loss")]
    Entropy,
}

/// How samples are weighted by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every sample counts once.
    #[default]
    None,
    /// Classes weighted by n / (classes × n_class) over the training set. With
    /// bootstrap this becomes a class-balanced bootstrap draw, as scikit-learn 1.9 does.
    Balanced,
    /// Like `balanced`, but computed on each tree's bootstrap sample.
    BalancedSubsample,
}

/// How many features each split tries.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum MaxFeatures {
    /// ⌊√features⌋ (at least 1).
    #[default]
    Sqrt,
    /// ⌊log₂ features⌋ (at least 1).
    Log2,
    /// ⌊fraction × features⌋ (at least 1), fraction in (0, 1].
    Fraction(f64),
    /// Exactly this many (1 ..= features).
    Count(u64),
}

impl Serialize for MaxFeatures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxFeatures::Sqrt => s.serialize_str("sqrt"),
            MaxFeatures::Log2 => s.serialize_str("log2"),
            MaxFeatures::Fraction(f) => s.serialize_f64(*f),
            MaxFeatures::Count(n) => s.serialize_u64(*n),
        }
    }
}

// A hand-written visitor rather than `#[serde(untagged)]`: the untagged error ("data did
// not match any variant") would not tell the user what `max_features` accepts.
impl<'de> Deserialize<'de> for MaxFeatures {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MaxFeatures;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"max_features as "sqrt", "log2", a fraction in (0, 1] such as 0.3, or a feature count such as 12"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaxFeatures, E> {
                match v {
                    "sqrt" => Ok(MaxFeatures::Sqrt),
                    "log2" => Ok(MaxFeatures::Log2),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaxFeatures, E> {
                Ok(MaxFeatures::Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaxFeatures, E> {
                Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MaxFeatures, E> {
                Ok(MaxFeatures::Fraction(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for MaxFeatures {
    fn schema_name() -> Cow<'static, str> {
        "MaxFeatures".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Features tried at each split: \"sqrt\", \"log2\", a fraction in (0, 1] or a count.",
            "oneOf": [
                { "type": "string", "enum": ["sqrt", "log2"] },
                { "type": "integer", "minimum": 1 },
                { "type": "number", "exclusiveMinimum": 0, "maximum": 1 }
            ]
        })
    }
}

/// Parameters of `random-forest`. Names and defaults follow scikit-learn's
/// `RandomForestClassifier` (`n_trees` is its `n_estimators`, `seed` its `random_state`).
/// `predict` takes the same table and ignores it: the model carries what it needs.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Number of trees, e.g. `n_trees = 100`.
    #[serde(default = "default_trees")]
    pub n_trees: u32,
    /// Split quality: `criterion = "gini"` (default) or `"entropy"`.
    #[serde(default)]
    pub criterion: Criterion,
    /// Features tried at each split: `max_features = "sqrt"` (default), `"log2"`, a
    /// fraction such as `0.3`, or a count such as `12`.
    #[serde(default)]
    pub max_features: MaxFeatures,
    /// Deepest level a tree may reach (the root is level 0), e.g. `max_depth = 20`;
    /// unset, trees grow until their leaves are pure or too small to split.
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// Fewest samples a node needs to be split, e.g. `min_samples_split = 2` (default).
    #[serde(default = "default_min_split")]
    pub min_samples_split: u32,
    /// Fewest samples each side of a split must keep, e.g. `min_samples_leaf = 1` (default).
    #[serde(default = "default_min_leaf")]
    pub min_samples_leaf: u32,
    /// A node is split only if that lowers the weighted impurity by at least this,
    /// e.g. `min_impurity_decrease = 0.0` (default).
    #[serde(default)]
    pub min_impurity_decrease: f64,
    /// Grow each tree on a bootstrap sample (default `true`); `false` uses every sample.
    #[serde(default = "yes")]
    pub bootstrap: bool,
    /// Bootstrap sample size as a fraction of the samples, e.g. `max_samples = 0.5`;
    /// unset draws as many as there are samples. Needs `bootstrap = true`.
    #[serde(default)]
    pub max_samples: Option<f64>,
    /// `class_weight = "none"` (default), `"balanced"` or `"balanced_subsample"`.
    #[serde(default)]
    pub class_weight: ClassWeight,
    /// Compute the out-of-bag accuracy (default: whenever `bootstrap` is on).
    #[serde(default)]
    pub oob_score: Option<bool>,
    /// Seed of every random draw: the same seed and data give the same model bytes.
    #[serde(default)]
    pub seed: u64,
}

fn default_trees() -> u32 {
    100
}
fn default_min_split() -> u32 {
    2
}
fn default_min_leaf() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl Default for Params {
    fn default() -> Self {
        sitsflow_sdk::serde_json::from_str("{}").expect("every field has a default")
    }
}

/// Parameters checked against each other and resolved for a training set.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_trees: usize,
    pub criterion: Criterion,
    /// Features tried per split, resolved against the number of features.
    pub max_features: usize,
    pub max_depth: usize,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
    pub min_impurity_decrease: f64,
    pub bootstrap: bool,
    pub max_samples: Option<f64>,
    pub class_weight: ClassWeight,
    pub oob_score: bool,
    pub seed: u64,
}

fn bad(message: String) -> StageError {
    StageError::InvalidParams(message)
}

impl Params {
    /// Checks the parameters and resolves them for `n_features` features.
    pub fn resolve(&self, n_features: usize) -> Result<Config, StageError> {
        if self.n_trees == 0 {
            return Err(bad("n_trees must be at least 1".into()));
        }
        if self.max_depth == Some(0) {
            return Err(bad("max_depth must be at least 1 (or unset for no limit)".into()));
        }
        if self.min_samples_split < 2 {
            return Err(bad(format!("min_samples_split = {} must be at least 2", self.min_samples_split)));
        }
        if self.min_samples_leaf < 1 {
            return Err(bad("min_samples_leaf must be at least 1".into()));
        }
        if !(self.min_impurity_decrease >= 0.0 && self.min_impurity_decrease.is_finite()) {
            return Err(bad(format!("min_impurity_decrease = {} must be a finite number ≥ 0", self.min_impurity_decrease)));
        }
        let max_features = match self.max_features {
            MaxFeatures::Sqrt => ((n_features as f64).sqrt() as usize).max(1),
            MaxFeatures::Log2 => ((n_features as f64).log2() as usize).max(1),
            MaxFeatures::Fraction(f) => {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(bad(format!("max_features = {f} must be a fraction in (0, 1] (or a count, or \"sqrt\" / \"log2\")")));
                }
                ((f * n_features as f64) as usize).max(1)
            }
            MaxFeatures::Count(k) => {
                if k == 0 || k as usize > n_features {
                    return Err(bad(format!("max_features = {k} must be a count between 1 and the {n_features} features")));
                }
                k as usize
            }
        };
        if let Some(m) = self.max_samples {
            if !self.bootstrap {
                return Err(bad("max_samples needs bootstrap = true".into()));
            }
            if !(m > 0.0 && m <= 1.0) {
                return Err(bad(format!("max_samples = {m} must be a fraction in (0, 1]")));
            }
        }
        if self.oob_score == Some(true) && !self.bootstrap {
            return Err(bad("oob_score needs bootstrap = true (without it no sample is out of bag)".into()));
        }
        Ok(Config {
            n_trees: self.n_trees as usize,
            criterion: self.criterion,
            max_features,
            max_depth: self.max_depth.map_or(usize::MAX, |d| d as usize),
            min_samples_split: self.min_samples_split as usize,
            min_samples_leaf: self.min_samples_leaf as usize,
            min_impurity_decrease: self.min_impurity_decrease,
            bootstrap: self.bootstrap,
            max_samples: self.max_samples,
            class_weight: self.class_weight,
            oob_score: self.oob_score.unwrap_or(self.bootstrap),
            seed: self.seed,
        })
    }
}

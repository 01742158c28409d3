//! `markov`: temporal consistency of yearly land-cover maps with a Markov chain over the
//! classes (module B of the multi-year pipeline: "track the most probable consistent sequence
//! of land-cover states, based on transition probabilities").
//!
//! A classifier gives each pixel, each year `t`, class posteriors `p_t(c | x_t)` that it
//! computed from that year alone, so a pixel can flicker between classes from year to year.
//! The decoder treats the true classes as a hidden Markov chain — prior `π`, transition
//! matrix `A[i][j] = P(class j at t+1 | class i at t)` — and the classifier's output as the
//! observation of each year, and returns per pixel:
//!
//! - `labels`: the Viterbi path, the single most probable class sequence (a one-year flicker
//!   against a strong "stay" prior is removed; a change that the following years confirm is
//!   kept);
//! - `posteriors` (unless `smoothed = false`): forward-backward smoothed posteriors
//!   `P(class at t | all years)`. Their per-year argmax can differ from the Viterbi path:
//!   one is the best class per year, the other the best sequence.
//!
//! **Posteriors as emissions.** An HMM needs `p(x_t | c)`; a discriminative classifier gives
//! `p(c | x_t) = p(x_t | c) q(c) / p(x_t)`, where `q` is its class prior. `p(x_t)` is the same
//! for every path, so `p(c | x_t) / q(c)` is a likelihood up to a constant: the "scaled
//! likelihood" of hybrid HMM/neural-network decoders (Bourlard & Morgan). With
//! `posteriors_as = "scaled-likelihood"` (the default) the decoder divides by the prior `π`
//! it was given, taken as the classifier's class prior, so `π` counts once in the path score
//! (`π(c₁)·p₁(c₁|x)/π(c₁) = p₁(c₁|x)`) instead of once per year. With
//! `posteriors_as = "likelihood"` the posteriors are used as they are, which is right when the
//! classifier was trained on balanced classes. With `prior = "uniform"` the two coincide.
//!
//! **Missing years.** A step whose posteriors are all NaN (no clear observation of the pixel
//! that year) is uninformative: its emission is flat, so its label and posterior come from
//! the neighbouring years through the transitions. A row with only some NaN is an error.
//!
//! Rows are checked (finite, ≥ 0, summing to 1 within 1e-3) and renormalised; then every
//! posterior is raised to at least `floor` before its logarithm, so a classifier's hard 0
//! never forbids a path. Cost per pixel is O(steps · classes²) with buffers allocated once per
//! call; Viterbi runs in log space, forward-backward on probabilities rescaled at every step
//! (the numerics are in the `chain` module), two pixels at a time in SIMD lanes.

mod chain;
mod transition;

use chain::{Chain, LANES, Workspace};
use sitsflow_sdk::prelude::*;
use sitsflow_sdk::serde_json;
use std::collections::BTreeMap;

/// How far a posterior row may be from summing to 1 before it is an error rather than
/// rounding (f32 softmax outputs and averaged tree votes are within ~1e-6).
pub const POSTERIOR_TOLERANCE: f64 = 1e-3;

fn default_floor() -> f64 {
    1e-6
}
fn default_smoothed() -> bool {
    true
}
fn default_stay_prior() -> f64 {
    0.9
}
fn default_strength() -> f64 {
    10.0
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The transition model, in one of three forms:
    /// `transition = { stay = 0.9 }` (a change prior, optionally with `to = { 21 = 2, 31 = 1 }`),
    /// `transition = { matrix = [[0.9, 0.1], [0.05, 0.95]], classes = [11, 21] }` (a full matrix),
    /// `transition = { estimate = { counts = [[40, 2], [1, 30]], classes = [11, 21] } }` (estimated from counts).
    pub transition: Transition,
    /// The class prior `π` of the first year (and, with `posteriors_as = "scaled-likelihood"`,
    /// the classifier's class prior that is divided out):
    /// `prior = "uniform"` (default); `prior = "first-step"`: the mean posterior of the first
    /// step over the pixels of the chunk (so it varies from chunk to chunk);
    /// `prior = { weights = { 11 = 0.3, 21 = 0.7 } }`: one weight per class, normalised.
    #[serde(default)]
    pub prior: Prior,
    /// How the classifier's posteriors enter as emissions: `"scaled-likelihood"` (default)
    /// divides them by the prior, `"likelihood"` uses them as they are.
    #[serde(default)]
    pub posteriors_as: PosteriorsAs,
    /// Every posterior is raised to at least this before its logarithm, so a 0 never forbids
    /// a path: `floor = 1e-6` (default); 0 < floor < 1.
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// Also return the forward-backward smoothed posteriors: `smoothed = true` (default);
    /// `false` returns labels only and skips that pass.
    #[serde(default = "default_smoothed")]
    pub smoothed: bool,
}

/// The transition model `A[i][j] = P(class j next year | class i this year)`.
#[derive(Debug, schemars::JsonSchema)]
#[schemars(untagged)]
pub enum Transition {
    /// A change prior.
    Stay(ChangePrior),
    /// A full matrix.
    Matrix(GivenMatrix),
    /// Estimated from transition counts.
    Estimate(Estimated),
}

/// A change prior: `transition = { stay = 0.9 }`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrior {
    /// Probability of keeping the class from one year to the next, `0 < stay ≤ 1`.
    pub stay: f64,
    /// Relative weights of the classes a change goes to, e.g. `to = { 21 = 2, 31 = 1 }`;
    /// a class left out is never changed into. Without it, `1 − stay` is spread evenly
    /// over the other classes.
    #[serde(default)]
    pub to: Option<BTreeMap<u16, f64>>,
}

/// A full matrix: `transition = { matrix = [[…], …], classes = [11, 21, …] }`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GivenMatrix {
    /// Row `i` is `P(next class | class classes[i])`; each row sums to 1 (±1e-6).
    pub matrix: Vec<Vec<f64>>,
    /// The class code of each row and column: every class of the series, in any order.
    pub classes: Vec<u16>,
}

/// `transition = { estimate = { … } }`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Estimated {
    pub estimate: Estimate,
}

/// A matrix estimated from transition counts: each row is the posterior mean under a
/// Dirichlet prior of `strength` pseudo-counts centred on the change prior with `stay_prior`,
/// `A[i][j] = (counts[i][j] + strength · A0[i][j]) / (Σ_j counts[i][j] + strength)`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// `counts[i][j]`: pixels of class `classes[i]` one year and `classes[j]` the next,
    /// e.g. from consecutive years' training labels.
    pub counts: Vec<Vec<f64>>,
    /// Class code of each row and column; series classes not listed have no counts.
    pub classes: Vec<u16>,
    /// Centre of the prior: probability of keeping the class, `stay_prior = 0.9` (default).
    #[serde(default = "default_stay_prior")]
    pub stay_prior: f64,
    /// Weight of the prior in pseudo-counts per row, `strength = 10` (default).
    #[serde(default = "default_strength")]
    pub strength: f64,
}

impl<'de> serde::Deserialize<'de> for Transition {
    /// Picks the form by its key and parses it strictly, so an error names the offending
    /// field of that form (an untagged enum would only say that no form matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        fn form<T: serde::de::DeserializeOwned, E: Error>(value: serde_json::Value, name: &str) -> Result<T, E> {
            serde_json::from_value(value).map_err(|e| E::custom(format!("transition ({name} form): {e}")))
        }
        let value = serde_json::Value::deserialize(deserializer)?;
        let key = value.as_object().and_then(|m| ["estimate", "matrix", "stay"].into_iter().find(|k| m.contains_key(*k)));
        match key {
            Some("estimate") => form(value, "estimate").map(Transition::Estimate),
            Some("matrix") => form(value, "matrix").map(Transition::Matrix),
            Some(_) => form(value, "stay").map(Transition::Stay),
            None => Err(D::Error::custom(format!(
                "transition must be {{ stay = … }}, {{ matrix = […], classes = […] }} or {{ estimate = {{ … }} }}; got {value}"
            ))),
        }
    }
}

/// The class prior `π`.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Prior {
    /// Every class alike.
    #[default]
    Uniform,
    /// The mean posterior of the first step over the chunk's pixels with data.
    FirstStep,
    /// One weight per class code, normalised: `{ weights = { 11 = 0.3, 21 = 0.7 } }`.
    Weights(BTreeMap<u16, f64>),
}

/// How the classifier's posteriors enter the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PosteriorsAs {
    /// `p_t(c | x) / π(c)`: the classifier's prior divided out.
    #[default]
    ScaledLikelihood,
    /// `p_t(c | x)` as it is.
    Likelihood,
}

pub struct Markov;

impl Stage for Markov {
    const NAME: &'static str = "markov";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "Markov-chain temporal consistency of yearly class posteriors: Viterbi labels and forward-backward smoothed posteriors.";
    type Params = Params;
}

/// Checks one step's posteriors of one sample; `None` if the row is all NaN (no data),
/// else the row's sum.
#[inline(always)]
fn check_row(row: &[f32], classes: &[u16], step: usize, sample: usize) -> Result<Option<f64>, StageError> {
    // Fast path without branches: NaN and ±inf are outside the range.
    // Four values per loop round (each back-edge checks the deadline in the sandbox),
    // added in order.
    let (mut sum, mut ok) = (0f64, true);
    sitsflow_sdk::for_each_index::<4>(row.len(), |k| {
        ok &= (0.0..=f32::MAX).contains(&row[k]);
        sum += row[k] as f64;
    });
    if !ok {
        if row.iter().all(|v| v.is_nan()) {
            return Ok(None);
        }
        for (k, &v) in row.iter().enumerate() {
            let problem = if v.is_nan() {
                "is NaN but others are not; a step without data has NaN for every class".to_string()
            } else if !(0.0..=f32::MAX).contains(&v) {
                format!("is {v}; expected a probability")
            } else {
                continue;
            };
            return Err(StageError::InvalidInput(format!(
                "posterior of class {} for sample {sample} at step {step} {problem}",
                classes[k]
            )));
        }
    }
    if (sum - 1.0).abs() > POSTERIOR_TOLERANCE {
        return Err(StageError::InvalidInput(format!(
            "posteriors of sample {sample} at step {step} sum to {sum:.6}, not 1 (±{POSTERIOR_TOLERANCE})"
        )));
    }
    Ok(Some(sum))
}

/// The prior, floored and normalised where it comes from data.
fn prior(series: &PosteriorSeries, params: &Params) -> Result<Vec<f64>, StageError> {
    let c = series.classes.len();
    let prior = match &params.prior {
        Prior::Uniform => vec![1.0 / c as f64; c],
        Prior::Weights(w) => {
            let prior = transition::explicit_prior(&series.classes, w)?;
            if params.posteriors_as == PosteriorsAs::ScaledLikelihood
                && let Some(k) = prior.iter().position(|&p| p == 0.0)
            {
                return Err(StageError::InvalidParams(format!(
                    "prior.weights of class {} is 0, but posteriors_as = \"scaled-likelihood\" divides by the prior; \
                     give it a weight > 0 or use posteriors_as = \"likelihood\"",
                    series.classes[k]
                )));
            }
            prior
        }
        Prior::FirstStep => {
            let mut mean = vec![0f64; c];
            let mut informative = 0usize;
            let rows = if series.steps == 0 { 0 } else { series.samples };
            for s in 0..rows {
                let row = &series.data[s * c..(s + 1) * c];
                if let Some(sum) = check_row(row, &series.classes, 0, s)? {
                    mean.iter_mut().zip(row).for_each(|(m, &p)| *m += p as f64 / sum);
                    informative += 1;
                }
            }
            if informative == 0 {
                vec![1.0 / c as f64; c]
            } else {
                // Floored like the posteriors it comes from, so no class is ruled out at the start.
                mean.iter_mut().for_each(|m| *m = (*m / informative as f64).max(params.floor));
                let total: f64 = mean.iter().sum();
                mean.iter().map(|m| m / total).collect()
            }
        }
    };
    Ok(prior)
}

impl DecoderStage for Markov {
    fn decode(series: PosteriorSeries, params: Params) -> Result<Decoded, StageError> {
        let (steps, samples, c) = (series.steps, series.samples, series.classes.len());
        if c == 0 {
            return Err(StageError::InvalidInput("the series has no classes".into()));
        }
        if let Some((k, code)) = series.classes.iter().enumerate().find(|(k, code)| series.classes[..*k].contains(code)) {
            return Err(StageError::InvalidInput(format!("series class {code} is listed twice (at {k})")));
        }
        let expect = steps.checked_mul(samples).and_then(|n| n.checked_mul(c));
        if expect != Some(series.data.len()) {
            return Err(StageError::InvalidInput(format!(
                "posterior series has {} values, expected {steps} steps × {samples} samples × {c} classes",
                series.data.len()
            )));
        }
        if !(params.floor > 0.0 && params.floor < 1.0) {
            return Err(StageError::InvalidParams(format!("floor = {} is outside 0 < floor < 1", params.floor)));
        }
        let a = transition::build(&series.classes, &params.transition)?;
        let prior = prior(&series, &params)?;
        let chain = Chain::new(&a, &prior);
        // Scaled likelihood: every informative emission divided by π.
        let scale: Vec<f64> = match params.posteriors_as {
            PosteriorsAs::ScaledLikelihood => prior.iter().map(|p| 1.0 / p).collect(),
            PosteriorsAs::Likelihood => vec![1.0; c],
        };

        let mut labels = vec![0u16; steps * samples];
        let mut posteriors = if params.smoothed { vec![0f32; steps * samples * c] } else { Vec::new() };
        let mut ws = Workspace::new(steps, c);
        // One block's emissions `e_t(c)` (`steps × classes`, one lane per pixel), their logs
        // for Viterbi, its paths and smoothed posteriors.
        let mut emission = vec![[0f64; LANES]; steps * c];
        let mut log_emission = vec![[0f64; LANES]; steps * c];
        let mut path = vec![[0u32; LANES]; steps];
        let mut smoothed = vec![[0f64; LANES]; steps * c];
        for first in (0..samples).step_by(LANES) {
            let width = LANES.min(samples - first);
            for t in 0..steps {
                let e = &mut emission[t * c..(t + 1) * c];
                for k in 0..LANES {
                    let s = first + k;
                    let at = (t * samples + s) * c;
                    // Lanes past the last pixel decode a flat series nobody reads.
                    let sum = if k < width { check_row(&series.data[at..at + c], &series.classes, t, s)? } else { None };
                    match sum {
                        // Flat: the year says nothing, its neighbours decide.
                        None => e.iter_mut().for_each(|e| e[k] = 1.0),
                        Some(sum) => {
                            let inv = 1.0 / sum;
                            for ((e, &p), &scale) in e.iter_mut().zip(&series.data[at..at + c]).zip(&scale) {
                                // `max(floor)` as a compare: the value is a checked
                                // probability, never NaN, and f64::max becomes a call to
                                // libm's fmax in the sandbox.
                                let v = p as f64 * inv;
                                e[k] = if v < params.floor { params.floor } else { v } * scale;
                            }
                        }
                    }
                }
            }
            for (l, e) in log_emission.iter_mut().zip(&emission) {
                *l = e.map(f64::ln);
            }
            chain.viterbi(&log_emission, &mut ws, &mut path);
            for (t, p) in path.iter().enumerate() {
                for k in 0..width {
                    labels[t * samples + first + k] = series.classes[p[k] as usize];
                }
            }
            if params.smoothed {
                chain.smooth(&emission, &mut ws, &mut smoothed);
                for t in 0..steps {
                    for k in 0..width {
                        let at = (t * samples + first + k) * c;
                        for (o, g) in posteriors[at..at + c].iter_mut().zip(&smoothed[t * c..(t + 1) * c]) {
                            *o = g[k] as f32;
                        }
                    }
                }
            }
        }
        Ok(Decoded { labels, posteriors })
    }
}

sitsflow_sdk::export_decoder_stage!(Markov);

#[cfg(test)]
mod tests;

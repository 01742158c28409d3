//! `uncertainty-query`: the next batch of pixels for an oracle to label, in an active
//! learning loop (SEN2VHR, section 2: a random forest grows a sparse annotation set
//! into a dense one; uncertainty sampling as surveyed by Ren et al. 2021, "A survey of
//! deep active learning", ACM Computing Surveys 54(9), and Settles 2009, "Active
//! learning literature survey", section 3.1).
//!
//! The classifier's class probabilities for the unlabelled pool give each candidate an
//! uncertainty in 0..=1 (`p1 ≥ p2` are the two largest probabilities of the row, `K`
//! the number of classes):
//! - `"margin"`: `1 − (p1 − p2)` — two classes nearly tied;
//! - `"least-confidence"`: `1 − p1` — the predicted class is weakly supported;
//! - `"entropy"`: `−Σ p ln p / ln K` — the whole distribution is flat.
//!
//! Taking the top `batch` alone tends to pick near-duplicates — the pixels along one
//! field edge, or all of one confusable class — which is the redundancy problem Ren et
//! al. discuss (section 5.1, batch-mode sampling). Two cheap diversity rules counter it:
//! - space: the extent of the candidates' positions is cut into `spread_cells ×
//!   spread_cells` cells and the batch is filled in rounds; in a round each cell gives
//!   at most one candidate, its most uncertain, and cells are visited in the order of
//!   their most uncertain remaining candidate (so with a batch smaller than the number
//!   of cells the most uncertain cells are served first);
//! - class (`class_balance`): when a cell gives its candidate, it takes it from the
//!   predicted class chosen least so far in the batch (ties: the class whose candidate
//!   is more uncertain), so no predicted class can fill the whole batch.
//!
//! Equal uncertainties are ordered by a seeded random key, so the same seed gives the
//! same batch. Each row of probabilities is divided by its sum first (forest votes may
//! not sum to exactly 1). The labels returned are the predicted classes; the host
//! replaces them with the oracle's.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::sampling::*;
use sitsflow_sdk::serde_json::{self, json};
use std::collections::BTreeMap;

/// How a candidate's uncertainty is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// `1 − (p1 − p2)`: `strategy = "margin"` (the default).
    #[default]
    Margin,
    /// Normalised Shannon entropy `−Σ p ln p / ln K`: `strategy = "entropy"`.
    Entropy,
    /// `1 − p1`: `strategy = "least-confidence"`.
    LeastConfidence,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Margin => "margin",
            Strategy::Entropy => "entropy",
            Strategy::LeastConfidence => "least-confidence",
        }
    }

    /// Uncertainty of one row of probabilities that sums to 1, whose largest and second
    /// largest values are `top`'s.
    fn uncertainty(self, p: &[f64], top: TopTwo) -> f64 {
        let (p1, p2) = (top.p1, top.p2);
        match self {
            Strategy::Margin => 1.0 - (p1 - p2),
            Strategy::LeastConfidence => 1.0 - p1,
            Strategy::Entropy if p.len() < 2 => 0.0,
            Strategy::Entropy => {
                -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f64>() / (p.len() as f64).ln()
            }
        }
    }
}

/// The largest and second largest of a row's values so far (both start at 0) and the
/// class of the first largest.
#[derive(Clone, Copy, Default)]
struct TopTwo {
    p1: f64,
    p2: f64,
    best: usize,
}

impl TopTwo {
    /// Folds in class `c`'s value `v` (classes in order).
    #[inline(always)]
    fn add(self, c: usize, v: f64) -> Self {
        if v > self.p1 {
            TopTwo { p1: v, p2: self.p1, best: c }
        } else if v > self.p2 {
            TopTwo { p2: v, ..self }
        } else {
            self
        }
    }
}

fn default_batch() -> u32 {
    50
}
fn default_spread_cells() -> u32 {
    8
}
fn default_true() -> bool {
    true
}

/// Parameters.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Uncertainty measure: `"margin"` (default), `"entropy"` or `"least-confidence"`.
    #[serde(default)]
    pub strategy: Strategy,
    /// How many candidates to query, e.g. `batch = 50`.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// The candidates' extent is cut into `spread_cells × spread_cells` cells and the
    /// batch is spread over them. 1: no spatial spreading (then positions may be absent).
    #[serde(default = "default_spread_cells")]
    pub spread_cells: u32,
    /// Rotate over the predicted classes too, so no class takes the whole batch.
    #[serde(default = "default_true")]
    pub class_balance: bool,
}

pub struct UncertaintyQuery;

impl Stage for UncertaintyQuery {
    const NAME: &'static str = "uncertainty-query";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "Active-learning queries: the most uncertain candidates by margin or entropy, spread across space and classes.";
    type Params = Params;
}

/// Per candidate: uncertainty and the index of its predicted class.
fn score(p: &Probabilities, strategy: Strategy) -> Result<(Vec<f64>, Vec<usize>), StageError> {
    let k = p.classes.len();
    let mut row = vec![0f64; k];
    let mut uncertainty = Vec::with_capacity(p.samples);
    let mut predicted = Vec::with_capacity(p.samples);
    for i in 0..p.samples {
        let values = &p.data[i * k..(i + 1) * k];
        // Two passes over the row (in the sandbox every loop round also checks the
        // deadline): its sum and first bad value, then the normalised row with its
        // first maximum and top two.
        let (mut sum, mut bad) = (-0.0f64, None);
        for &v in values {
            if bad.is_none() && (!v.is_finite() || v < 0.0) {
                bad = Some(v);
            }
            sum += v as f64;
        }
        if let Some(bad) = bad {
            return Err(StageError::InvalidInput(format!("candidate {i} has probability {bad}")));
        }
        if sum <= 0.0 {
            return Err(StageError::InvalidInput(format!(
                "candidate {i} has probabilities that are all 0"
            )));
        }
        // The predicted class is the first of equal maxima, as the host's argmax does
        // (probabilities are not negative, so the largest value beats the start at 0 or
        // is class 0's).
        let mut top = TopTwo::default();
        for (c, (r, &v)) in row.iter_mut().zip(values).enumerate() {
            *r = v as f64 / sum;
            top = top.add(c, *r);
        }
        uncertainty.push(strategy.uncertainty(&row, top));
        predicted.push(top.best);
    }
    Ok((uncertainty, predicted))
}

/// An unsigned key that orders f64 values as `f64::total_cmp` does.
fn ascending_key(v: f64) -> u64 {
    let bits = v.to_bits();
    // Negative values: every bit flipped; positive ones: the sign bit set.
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

/// The cell of each candidate on a `g × g` grid over the positions' extent.
fn cells(positions: &[(u32, u32)], g: u32) -> Vec<u64> {
    if positions.is_empty() {
        return Vec::new();
    }
    let (r0, r1) = positions
        .iter()
        .fold((u32::MAX, 0), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (c0, c1) = positions
        .iter()
        .fold((u32::MAX, 0), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (h, w) = ((r1 - r0) as u64 + 1, (c1 - c0) as u64 + 1);
    let g = g as u64;
    positions
        .iter()
        .map(|&(r, c)| ((r - r0) as u64 * g / h) * g + (c - c0) as u64 * g / w)
        .collect()
}

/// One cell's candidates, per predicted class, most uncertain last (popped first).
#[derive(Default)]
struct Cell {
    by_class: BTreeMap<usize, Vec<u32>>,
}

impl Cell {
    /// The class whose next candidate this cell gives, or None when it is empty.
    fn pick(&self, rank: &[u32], chosen_per_class: &[u64], class_balance: bool) -> Option<usize> {
        let head = |c: &usize| rank[*self.by_class[c].last().expect("classes left are non-empty") as usize];
        let classes = self.by_class.keys();
        if class_balance {
            classes.min_by_key(|c| (chosen_per_class[**c], head(c))).copied()
        } else {
            classes.min_by_key(|c| head(c)).copied()
        }
    }

    fn best_rank(&self, rank: &[u32]) -> Option<u32> {
        self.by_class
            .values()
            .filter_map(|v| v.last())
            .map(|&i| rank[i as usize])
            .min()
    }

    fn take(&mut self, class: usize) -> u32 {
        let list = self.by_class.get_mut(&class).expect("picked class is present");
        let i = list.pop().expect("classes left are non-empty");
        if list.is_empty() {
            self.by_class.remove(&class);
        }
        i
    }
}

fn mean(values: impl Iterator<Item = f64>) -> serde_json::Value {
    let (sum, n) = values.fold((0f64, 0u64), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        serde_json::Value::Null
    } else {
        json!((sum / n as f64 * 1e4).round() / 1e4)
    }
}

impl SamplerStage for UncertaintyQuery {
    fn needs(params: &Params) -> SampleNeeds {
        SampleNeeds { features: false, positions: params.spread_cells > 1 }
    }

    fn select(input: SampleInput, params: Params) -> Result<Selection, StageError> {
        input.features.check()?;
        if params.batch == 0 {
            return Err(StageError::InvalidParams("batch must be at least 1".into()));
        }
        if params.spread_cells == 0 {
            return Err(StageError::InvalidParams(
                "spread_cells must be at least 1 (1: no spatial spreading)".into(),
            ));
        }
        let p = input.probabilities.as_ref().ok_or_else(|| {
            StageError::InvalidInput(
                "no class probabilities: uncertainty-query needs the classifier's probabilities for the candidates"
                    .into(),
            )
        })?;
        let n = input.features.samples;
        if p.samples != n || p.classes.is_empty() || p.data.len() != p.samples * p.classes.len() {
            return Err(StageError::InvalidInput(format!(
                "probabilities are {} values for {} samples × {} classes, expected {n} candidates × at least 1 class",
                p.data.len(),
                p.samples,
                p.classes.len()
            )));
        }
        let spread = params.spread_cells > 1;
        if spread && input.positions.len() != n {
            return Err(StageError::InvalidInput(format!(
                "spread_cells = {} needs a position per candidate, but there are {} positions for {n} candidates",
                params.spread_cells,
                input.positions.len()
            )));
        }
        let (uncertainty, predicted) = score(p, params.strategy)?;

        // Global order, most uncertain first, equal uncertainties by a seeded key.
        let mut rng = SplitMix(input.seed);
        // Sorted as plain integers held beside each candidate (no lookups per comparison):
        // the uncertainty's total-order key, descending, then the seeded key.
        let mut sorted: Vec<(u64, u64, u32)> =
            (0..n).map(|i| (!ascending_key(uncertainty[i]), rng.next_u64(), i as u32)).collect();
        sorted.sort_unstable();
        let order: Vec<u32> = sorted.into_iter().map(|(_, _, i)| i).collect();
        let mut rank = vec![0u32; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }

        let cell_of = if spread {
            cells(&input.positions, params.spread_cells)
        } else {
            vec![0; n]
        };
        let mut grid: BTreeMap<u64, Cell> = BTreeMap::new();
        // Least uncertain first, so each list's end is its most uncertain candidate.
        for &i in order.iter().rev() {
            let cell = grid.entry(cell_of[i as usize]).or_default();
            cell.by_class.entry(predicted[i as usize]).or_default().push(i);
        }
        let cells_with_candidates = grid.len();

        // Rounds: each cell gives at most one candidate per round.
        let batch = (params.batch as usize).min(n);
        let mut chosen: Vec<u32> = Vec::with_capacity(batch);
        let mut chosen_per_class = vec![0u64; p.classes.len()];
        while chosen.len() < batch {
            let mut visit: Vec<(u32, u64)> = grid
                .iter()
                .filter_map(|(&id, c)| c.best_rank(&rank).map(|r| (r, id)))
                .collect();
            visit.sort_unstable();
            for (_, id) in visit {
                if chosen.len() == batch {
                    break;
                }
                let cell = grid.get_mut(&id).expect("visited cells exist");
                let class = cell
                    .pick(&rank, &chosen_per_class, params.class_balance)
                    .expect("visited cells are non-empty");
                chosen.push(cell.take(class));
                chosen_per_class[class] += 1;
            }
            grid.retain(|_, c| !c.by_class.is_empty());
        }
        chosen.sort_unstable();

        let mut covered: Vec<u64> = chosen.iter().map(|&i| cell_of[i as usize]).collect();
        covered.sort_unstable();
        covered.dedup();
        let rows: Vec<serde_json::Value> = p
            .classes
            .iter()
            .enumerate()
            .filter(|(k, _)| predicted.contains(k))
            .map(|(k, &code)| {
                let pool = (0..n).filter(|&i| predicted[i] == k);
                let mine = chosen.iter().map(|&i| i as usize).filter(|&i| predicted[i] == k);
                json!([
                    code,
                    pool.clone().count(),
                    chosen_per_class[k],
                    mean(pool.map(|i| uncertainty[i])),
                    mean(mine.map(|i| uncertainty[i])),
                ])
            })
            .collect();
        let report = json!({
            "strategy": params.strategy.name(),
            "batch": params.batch,
            "pool": n,
            "selected": chosen.len(),
            "mean_uncertainty_pool": mean(uncertainty.iter().copied()),
            "mean_uncertainty_chosen": mean(chosen.iter().map(|&i| uncertainty[i as usize])),
            "grid": format!("{0} × {0}", params.spread_cells),
            "cells_with_candidates": cells_with_candidates,
            "cells_covered": covered.len(),
            "class_balance": params.class_balance,
            "per_predicted_class": {
                "columns": ["class", "pool", "chosen", "mean uncertainty (pool)", "mean uncertainty (chosen)"],
                "rows": rows,
            },
        });
        Ok(Selection {
            labels: chosen.iter().map(|&i| p.classes[predicted[i as usize]]).collect(),
            indices: chosen,
            report: report.to_string(),
        })
    }
}

sitsflow_sdk::export_sampler_stage!(UncertaintyQuery);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_as_total_cmp() {
        let v = [f64::NEG_INFINITY, -2.5, -1e-300, -0.0, 0.0, 1e-300, 0.3, 7.0, f64::INFINITY];
        for a in v {
            for b in v {
                assert_eq!(ascending_key(a).cmp(&ascending_key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }

    fn input(classes: Vec<u16>, rows: &[&[f32]], positions: Vec<(u32, u32)>, seed: u64) -> SampleInput {
        let samples = rows.len();
        SampleInput {
            features: FeatureMatrix {
                samples,
                names: Vec::new(),
                data: Vec::new(),
            },
            layers: Vec::new(),
            probabilities: Some(Probabilities {
                samples,
                classes,
                data: rows.concat(),
            }),
            positions,
            seed,
        }
    }

    fn params(json: &str) -> Params {
        UncertaintyQuery::parse_params(json).unwrap()
    }

    fn report(s: &Selection) -> serde_json::Value {
        serde_json::from_str(&s.report).unwrap()
    }

    /// Four candidates on which the three measures disagree.
    ///           margin  least-conf.  entropy (nats)
    /// 0 F       0.75    0.50         1.040
    /// 1 D       1.00    0.55         0.949
    /// 2 C       0.30    0.20         0.639
    /// 3 E       0.90    0.60         1.089
    fn four() -> SampleInput {
        let rows: [&[f32]; 4] = [
            &[0.25, 0.5, 0.25],
            &[0.45, 0.1, 0.45],
            &[0.1, 0.1, 0.8],
            &[0.3, 0.3, 0.4],
        ];
        input(vec![10, 20, 30], &rows, Vec::new(), 1)
    }

    #[test]
    fn each_strategy_ranks_by_its_own_measure() {
        let one = |strategy: &str, batch: u32| {
            let p = params(&format!(
                r#"{{"strategy": "{strategy}", "batch": {batch}, "spread_cells": 1, "class_balance": false}}"#
            ));
            UncertaintyQuery::select(four(), p).unwrap()
        };
        assert_eq!(one("margin", 1).indices, [1]);
        assert_eq!(one("least-confidence", 1).indices, [3]);
        assert_eq!(one("entropy", 1).indices, [3]);
        assert_eq!(one("margin", 2).indices, [1, 3]);
        assert_eq!(one("least-confidence", 2).indices, [1, 3]);
        assert_eq!(one("entropy", 2).indices, [0, 3]);
        // Predicted classes: F → 20, E → 30 (D's tie 0.45/0.45 goes to the first, 10).
        assert_eq!(one("entropy", 2).labels, [20, 30]);
        assert_eq!(one("margin", 1).labels, [10]);
        let r = report(&one("margin", 1));
        assert_eq!(r["strategy"], "margin");
        assert_eq!(r["mean_uncertainty_pool"], 0.7375);
        assert_eq!(r["mean_uncertainty_chosen"], 1.0);
        // Entropy is normalised by ln 3: E = 1.0889 / 1.0986.
        let r = report(&one("entropy", 1));
        assert_eq!(r["mean_uncertainty_chosen"], 0.9912);
    }

    #[test]
    fn spreads_the_batch_over_grid_cells() {
        // Four very uncertain candidates in the top-left corner, a less uncertain one in
        // the bottom-right; 2 × 2 cells over the 10 × 10 extent.
        let rows: [&[f32]; 5] = [&[0.5, 0.5], &[0.52, 0.48], &[0.54, 0.46], &[0.56, 0.44], &[0.8, 0.2]];
        let positions = vec![(0, 0), (0, 1), (1, 0), (1, 1), (9, 9)];
        let q = |cells: u32| {
            let p = params(&format!(
                r#"{{"batch": 2, "spread_cells": {cells}, "class_balance": false}}"#
            ));
            UncertaintyQuery::select(input(vec![1, 2], &rows, positions.clone(), 3), p).unwrap()
        };
        assert_eq!(q(1).indices, [0, 1]);
        let spread = q(2);
        assert_eq!(spread.indices, [0, 4]);
        let r = report(&spread);
        assert_eq!(
            (r["cells_with_candidates"].as_u64(), r["cells_covered"].as_u64()),
            (Some(2), Some(2))
        );
        // A third round goes back to the corner for its next most uncertain.
        let p = params(r#"{"batch": 3, "spread_cells": 2, "class_balance": false}"#);
        assert_eq!(
            UncertaintyQuery::select(input(vec![1, 2], &rows, positions, 3), p)
                .unwrap()
                .indices,
            [0, 1, 4]
        );
    }

    #[test]
    fn class_balance_rotates_over_predicted_classes() {
        // Margins: class 1 predicted for 0..4 (0.9, 0.8, 0.7, 0.6), class 2 for 4, 5 (0.65, 0.5).
        let rows: [&[f32]; 6] = [
            &[0.55, 0.45],
            &[0.6, 0.4],
            &[0.65, 0.35],
            &[0.7, 0.3],
            &[0.325, 0.675],
            &[0.25, 0.75],
        ];
        let q = |balance: bool| {
            let p = params(&format!(
                r#"{{"batch": 3, "spread_cells": 1, "class_balance": {balance}}}"#
            ));
            UncertaintyQuery::select(input(vec![1, 2], &rows, Vec::new(), 0), p).unwrap()
        };
        assert_eq!(q(false).indices, [0, 1, 2]);
        // Class 1's best, then class 2's best, then class 1's next (it beats class 2's next).
        let balanced = q(true);
        assert_eq!(balanced.indices, [0, 1, 4]);
        assert_eq!(balanced.labels, [1, 1, 2]);
        let r = report(&balanced);
        assert_eq!(
            r["per_predicted_class"]["rows"],
            json!([[1, 4, 2, 0.75, 0.85], [2, 2, 1, 0.575, 0.65]])
        );
    }

    #[test]
    fn ties_are_broken_by_the_seed() {
        let rows: Vec<&[f32]> = vec![&[0.5f32, 0.5][..]; 40];
        let q = |seed| {
            UncertaintyQuery::select(
                input(vec![1, 2], &rows, Vec::new(), seed),
                params(r#"{"batch": 5, "spread_cells": 1}"#),
            )
            .unwrap()
        };
        assert_eq!(q(8), q(8));
        assert_ne!(q(8).indices, q(9).indices);
        assert_eq!(q(8).indices.len(), 5);
        // A batch larger than the pool takes the whole pool.
        let all = UncertaintyQuery::select(
            input(vec![1, 2], &rows[..3], Vec::new(), 1),
            params(r#"{"spread_cells": 1}"#),
        )
        .unwrap();
        assert_eq!(all.indices, [0, 1, 2]);
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        let mut none = four();
        none.probabilities = None;
        let err = UncertaintyQuery::select(none, params("{}")).unwrap_err();
        assert!(
            matches!(err, StageError::InvalidInput(ref m) if m.contains("probabilities")),
            "{err:?}"
        );
        let err = UncertaintyQuery::select(four(), params("{}")).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput(
                "spread_cells = 8 needs a position per candidate, but there are 0 positions for 4 candidates".into()
            )
        );
        let mut nan = four();
        nan.probabilities.as_mut().unwrap().data[4] = f32::NAN;
        let err = UncertaintyQuery::select(nan, params(r#"{"spread_cells": 1}"#)).unwrap_err();
        assert_eq!(err, StageError::InvalidInput("candidate 1 has probability NaN".into()));
        let mut short = four();
        short.probabilities.as_mut().unwrap().data.pop();
        let err = UncertaintyQuery::select(short, params(r#"{"spread_cells": 1}"#)).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidInput(
                "probabilities are 11 values for 4 samples × 3 classes, expected 4 candidates × at least 1 class"
                    .into()
            )
        );
        let err = UncertaintyQuery::select(four(), params(r#"{"batch": 0}"#)).unwrap_err();
        assert_eq!(err, StageError::InvalidParams("batch must be at least 1".into()));
        assert!(UncertaintyQuery::parse_params(r#"{"strategy": "random"}"#).is_err());
    }
}

//! The transition model `A[i][j] = P(class j at t+1 | class i at t)` and the class prior
//! `π`, built from the parameters and laid out in the series' class order (which is the
//! host's, not the user's: every form that names classes is reordered here).

use crate::{Estimate, GivenMatrix, Transition};
use sitsflow_sdk::StageError;
use std::collections::BTreeMap;

/// How far a given matrix row may be from summing to 1 (TOML decimals like `0.1` are not
/// exact in binary; anything further off is a typo, not rounding).
pub const ROW_TOLERANCE: f64 = 1e-6;

fn invalid(message: String) -> StageError {
    StageError::InvalidParams(message)
}

fn codes(classes: &[u16]) -> String {
    classes.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

/// Position in the series of each class `given` names, in `given`'s order. Fails on a
/// duplicate or a class the series does not have; with `all`, also when a series class
/// is missing from `given`.
fn positions(series: &[u16], given: &[u16], what: &str, all: bool) -> Result<Vec<usize>, StageError> {
    let mut out = Vec::with_capacity(given.len());
    for (k, code) in given.iter().enumerate() {
        if given[..k].contains(code) {
            return Err(invalid(format!("{what} lists class {code} twice")));
        }
        let at = series.iter().position(|c| c == code).ok_or_else(|| {
            invalid(format!("{what} names class {code}, which the series does not have (series classes: {})", codes(series)))
        })?;
        out.push(at);
    }
    if all {
        let missing: Vec<u16> = series.iter().copied().filter(|c| !given.contains(c)).collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "{what} lacks series class(es) {}; it must name every class of the series ({})",
                codes(&missing),
                codes(series)
            )));
        }
    }
    Ok(out)
}

fn probability(value: f64, what: impl FnOnce() -> String) -> Result<f64, StageError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid(format!("{} is {value}; expected a finite number ≥ 0", what())))
    }
}

/// A `classes × classes` matrix whose rows are the `from` class, row-major, in series order.
pub fn build(series: &[u16], transition: &Transition) -> Result<Vec<f64>, StageError> {
    match transition {
        Transition::Stay(c) => change_prior(series, c.stay, c.to.as_ref(), "transition"),
        Transition::Matrix(m) => given(series, m),
        Transition::Estimate(e) => estimated(series, &e.estimate),
    }
}

/// The "change prior": keep the class with probability `stay`, and spread `1 − stay` over
/// the other classes, evenly or in proportion to the `to` weights (a class `to` leaves out
/// is never changed into).
pub fn change_prior(
    series: &[u16],
    stay: f64,
    to: Option<&BTreeMap<u16, f64>>,
    what: &str,
) -> Result<Vec<f64>, StageError> {
    if !(stay > 0.0 && stay <= 1.0) {
        return Err(invalid(format!("{what}: stay = {stay} is outside 0 < stay ≤ 1")));
    }
    let c = series.len();
    let mut weight = vec![1.0; c];
    if let Some(to) = to {
        let given: Vec<u16> = to.keys().copied().collect();
        weight.fill(0.0);
        for (at, code) in positions(series, &given, &format!("{what}.to"), false)?.into_iter().zip(&given) {
            weight[at] = probability(to[code], || format!("{what}.to weight of class {code}"))?;
        }
    }
    let mut a = vec![0.0; c * c];
    for i in 0..c {
        let row = &mut a[i * c..(i + 1) * c];
        let others: f64 = (0..c).filter(|&j| j != i).map(|j| weight[j]).sum();
        if c == 1 || stay == 1.0 {
            row[i] = 1.0;
            continue;
        }
        if others <= 0.0 {
            return Err(invalid(format!(
                "{what}.to gives no weight to any class other than {}, so a change from {} has nowhere to go; \
                 weight another class or set stay = 1",
                series[i], series[i]
            )));
        }
        for j in 0..c {
            row[j] = if j == i { stay } else { (1.0 - stay) * weight[j] / others };
        }
    }
    Ok(a)
}

fn square(rows: &[Vec<f64>], n: usize, what: &str) -> Result<(), StageError> {
    if rows.len() != n || rows.iter().any(|r| r.len() != n) {
        let widths: Vec<String> = rows.iter().map(|r| r.len().to_string()).collect();
        return Err(invalid(format!(
            "{what} must be {n} × {n} (one row and column per listed class); it has {} rows of lengths [{}]",
            rows.len(),
            widths.join(", ")
        )));
    }
    Ok(())
}

/// A full row-stochastic matrix in the user's class order, reordered to the series'.
pub fn given(series: &[u16], m: &GivenMatrix) -> Result<Vec<f64>, StageError> {
    let at = positions(series, &m.classes, "transition.classes", true)?;
    square(&m.matrix, m.classes.len(), "transition.matrix")?;
    let c = series.len();
    let mut a = vec![0.0; c * c];
    for (gi, row) in m.matrix.iter().enumerate() {
        let from = m.classes[gi];
        for (gj, &p) in row.iter().enumerate() {
            a[at[gi] * c + at[gj]] =
                probability(p, || format!("transition.matrix entry from {from} to {}", m.classes[gj]))?;
        }
        let sum: f64 = row.iter().sum();
        if (sum - 1.0).abs() > ROW_TOLERANCE {
            return Err(invalid(format!(
                "transition.matrix row of class {from} sums to {sum}, not 1 (±{ROW_TOLERANCE}); \
                 each row is P(next class | class {from})"
            )));
        }
        // Take the rounding out, so every row is a distribution to the last bit we can.
        a[at[gi] * c..(at[gi] + 1) * c].iter_mut().for_each(|p| *p /= sum);
    }
    Ok(a)
}

/// Posterior mean of each row under a Dirichlet prior centred on the change prior:
/// with counts `n[i][j]` of class i in one year followed by j the next, and the prior
/// `strength · A0[i][j]` pseudo-counts (`A0` = change prior with `stay_prior`),
/// `A[i][j] = (n[i][j] + strength · A0[i][j]) / (Σ_j n[i][j] + strength)`.
/// A row with few counts stays near the change prior; one with many follows the data.
/// Series classes the counts do not list have no counts (their rows are `A0`'s).
pub fn estimated(series: &[u16], e: &Estimate) -> Result<Vec<f64>, StageError> {
    let at = positions(series, &e.classes, "transition.estimate.classes", false)?;
    square(&e.counts, e.classes.len(), "transition.estimate.counts")?;
    if !(e.strength.is_finite() && e.strength >= 0.0) {
        return Err(invalid(format!("transition.estimate.strength = {} must be finite and ≥ 0", e.strength)));
    }
    let c = series.len();
    let mut counts = vec![0.0; c * c];
    for (gi, row) in e.counts.iter().enumerate() {
        for (gj, &n) in row.iter().enumerate() {
            counts[at[gi] * c + at[gj]] = probability(n, || {
                format!("transition.estimate.counts from {} to {}", e.classes[gi], e.classes[gj])
            })?;
        }
    }
    let mut a = change_prior(series, e.stay_prior, None, "transition.estimate")?;
    for i in 0..c {
        let row_counts = &counts[i * c..(i + 1) * c];
        let total: f64 = row_counts.iter().sum::<f64>() + e.strength;
        if total <= 0.0 {
            return Err(invalid(format!(
                "transition.estimate: class {} has no transition counts and strength = 0, so its row has no estimate; \
                 give strength > 0",
                series[i]
            )));
        }
        for (p, &n) in a[i * c..(i + 1) * c].iter_mut().zip(row_counts) {
            *p = (n + e.strength * *p) / total;
        }
    }
    Ok(a)
}

/// Explicit prior weights, normalised to sum to 1, in series order.
pub fn explicit_prior(series: &[u16], weights: &BTreeMap<u16, f64>) -> Result<Vec<f64>, StageError> {
    let given: Vec<u16> = weights.keys().copied().collect();
    let at = positions(series, &given, "prior.weights", true)?;
    let mut prior = vec![0.0; series.len()];
    for (&i, code) in at.iter().zip(&given) {
        prior[i] = probability(weights[code], || format!("prior.weights of class {code}"))?;
    }
    let sum: f64 = prior.iter().sum();
    if sum <= 0.0 {
        return Err(invalid("prior.weights are all 0".into()));
    }
    prior.iter_mut().for_each(|p| *p /= sum);
    Ok(prior)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn change_prior_spreads_evenly_or_by_weights() {
        close(&change_prior(&[1, 2, 3], 0.8, None, "t").unwrap(), &[0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.8]);
        // to = {2: 3, 3: 1}: from 1 the 0.2 of change goes 3:1 to 2 and 3; class 1 is never entered.
        let to = BTreeMap::from([(2, 3.0), (3, 1.0)]);
        close(
            &change_prior(&[1, 2, 3], 0.8, Some(&to), "t").unwrap(),
            &[0.8, 0.15, 0.05, 0.0, 0.8, 0.2, 0.0, 0.2, 0.8],
        );
        let only_self = BTreeMap::from([(2, 1.0)]);
        let err = change_prior(&[1, 2], 0.9, Some(&only_self), "transition").unwrap_err();
        assert!(err.to_string().contains("change from 2 has nowhere to go"), "{err}");
        assert!(change_prior(&[1, 2], 0.0, None, "transition").is_err());
        // One class: nothing to change into, whatever `stay` says.
        close(&change_prior(&[7], 0.9, None, "t").unwrap(), &[1.0]);
    }

    #[test]
    fn dirichlet_posterior_mean_by_hand() {
        // A0 = [[.9 .1] [.1 .9]], strength 10 → pseudo-counts [[9 1] [1 9]].
        // Row 5: counts 8, 2 → (8+9)/20, (2+1)/20. Row 6: no counts → A0's row.
        let e = Estimate { counts: vec![vec![8.0, 2.0], vec![0.0, 0.0]], classes: vec![5, 6], stay_prior: 0.9, strength: 10.0 };
        close(&estimated(&[5, 6], &e).unwrap(), &[0.85, 0.15, 0.1, 0.9]);
        // Counts in another order, and a series class (7) they do not list.
        let e = Estimate { counts: vec![vec![0.0, 0.0], vec![2.0, 8.0]], classes: vec![6, 5], stay_prior: 0.9, strength: 10.0 };
        let a = estimated(&[5, 6, 7], &e).unwrap();
        close(&a[0..3], &[(8.0 + 9.0) / 20.0, (2.0 + 0.5) / 20.0, 0.5 / 20.0]);
        close(&a[6..9], &[0.05, 0.05, 0.9]);
        let e = Estimate { counts: vec![vec![1.0, 0.0], vec![0.0, 0.0]], classes: vec![5, 6], stay_prior: 0.9, strength: 0.0 };
        let err = estimated(&[5, 6], &e).unwrap_err();
        assert!(err.to_string().contains("class 6 has no transition counts"), "{err}");
    }

    #[test]
    fn given_matrix_is_reordered_to_the_series() {
        // Given in order [31, 11, 21]; the series has [11, 21, 31].
        let m = GivenMatrix {
            classes: vec![31, 11, 21],
            matrix: vec![vec![0.7, 0.0, 0.3], vec![0.1, 0.8, 0.1], vec![0.2, 0.2, 0.6]],
        };
        close(&given(&[11, 21, 31], &m).unwrap(), &[0.8, 0.1, 0.1, 0.2, 0.6, 0.2, 0.0, 0.3, 0.7]);
    }

    #[test]
    fn given_matrix_errors_name_the_problem() {
        let m = |classes: Vec<u16>, matrix: Vec<Vec<f64>>| GivenMatrix { classes, matrix };
        let err = given(&[1, 2], &m(vec![1, 2], vec![vec![0.9, 0.0], vec![0.5, 0.5]])).unwrap_err();
        assert_eq!(
            err,
            StageError::InvalidParams(
                "transition.matrix row of class 1 sums to 0.9, not 1 (±0.000001); each row is P(next class | class 1)".into()
            )
        );
        let err = given(&[1, 2], &m(vec![1, 9], vec![vec![1.0, 0.0], vec![0.0, 1.0]])).unwrap_err();
        assert!(err.to_string().contains("names class 9, which the series does not have (series classes: 1, 2)"), "{err}");
        let err = given(&[1, 2, 3], &m(vec![1, 2], vec![vec![1.0, 0.0], vec![0.0, 1.0]])).unwrap_err();
        assert!(err.to_string().contains("lacks series class(es) 3"), "{err}");
        let err = given(&[1, 2], &m(vec![1, 1], vec![vec![1.0, 0.0], vec![0.0, 1.0]])).unwrap_err();
        assert!(err.to_string().contains("lists class 1 twice"), "{err}");
        let err = given(&[1, 2], &m(vec![1, 2], vec![vec![1.5, -0.5], vec![0.0, 1.0]])).unwrap_err();
        assert!(err.to_string().contains("from 1 to 2 is -0.5"), "{err}");
        let err = given(&[1, 2], &m(vec![1, 2], vec![vec![1.0], vec![0.0, 1.0]])).unwrap_err();
        assert!(err.to_string().contains("must be 2 × 2"), "{err}");
    }

    #[test]
    fn explicit_prior_is_normalised_and_complete() {
        close(&explicit_prior(&[1, 2], &BTreeMap::from([(2, 3.0), (1, 1.0)])).unwrap(), &[0.25, 0.75]);
        assert!(explicit_prior(&[1, 2], &BTreeMap::from([(1, 1.0)])).is_err());
        assert!(explicit_prior(&[1, 2], &BTreeMap::from([(1, 0.0), (2, 0.0)])).is_err());
    }
}

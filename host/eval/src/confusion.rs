//! Confusion matrices and the metrics derived from them.

use serde::Serialize;
use std::collections::BTreeMap;

/// Counts of (reference, map) class pairs. Rows are reference classes, columns map
/// classes, both in `classes` order (the union of the classes seen, ascending).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Confusion {
    /// The class codes of rows and columns, ascending.
    pub classes: Vec<u16>,
    /// `counts[r][m]`: pairs with reference class `classes[r]` and map class `classes[m]`.
    pub counts: Vec<Vec<u64>>,
}

/// Per-class figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// The class code.
    pub class: u16,
    /// Reference pixels of the class (row sum).
    pub support: u64,
    /// Producer's accuracy = recall: correct / reference total.
    pub producers_accuracy: f64,
    /// User's accuracy = precision: correct / map total.
    pub users_accuracy: f64,
    /// Harmonic mean of producer's and user's accuracy.
    pub f1: f64,
    /// Intersection over union: correct / (reference + map − correct).
    pub iou: f64,
}

/// Everything derived from one confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Pairs counted (the matrix total).
    pub samples: u64,
    /// Share of pairs where map and reference agree.
    pub overall_accuracy: f64,
    /// Cohen's kappa: agreement beyond what the marginals give by chance.
    pub kappa: f64,
    /// Mean F1 over the classes present in the reference or the map: scikit-learn's
    /// `f1_score(reference, map, average="macro", zero_division=0)` (a class the map
    /// predicts but the reference lacks counts, with F1 0).
    pub macro_f1: f64,
    /// Mean IoU over the classes present in the reference or the map: scikit-learn's
    /// `jaccard_score(reference, map, average="macro", zero_division=0)`.
    pub miou: f64,
    /// Per-class figures, in `Confusion::classes` order.
    pub classes: Vec<ClassMetrics>,
}

/// `a / b`, or 0 when `b` is 0 (scikit-learn's `zero_division=0`).
fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

impl Confusion {
    /// Counts pairs; a reference of 0 (no data) is skipped, a map of 0 counts as a
    /// class of its own (an unmapped pixel is an error, not a hole in the sample).
    pub fn from_pairs(reference: &[u16], map: &[u16]) -> Confusion {
        let mut pairs: BTreeMap<(u16, u16), u64> = BTreeMap::new();
        for (&r, &m) in reference.iter().zip(map) {
            if r != 0 {
                *pairs.entry((r, m)).or_default() += 1;
            }
        }
        let mut c = Confusion::default();
        c.add_counts(&pairs);
        c
    }

    /// Adds counted pairs (e.g. from another chunk).
    pub fn add_counts(&mut self, pairs: &BTreeMap<(u16, u16), u64>) {
        let mut classes: Vec<u16> = self.classes.clone();
        for &(r, m) in pairs.keys() {
            classes.push(r);
            classes.push(m);
        }
        classes.sort_unstable();
        classes.dedup();
        if classes != self.classes {
            let mut counts = vec![vec![0u64; classes.len()]; classes.len()];
            for (i, ci) in self.classes.iter().enumerate() {
                for (j, cj) in self.classes.iter().enumerate() {
                    let (a, b) = (classes.binary_search(ci).unwrap(), classes.binary_search(cj).unwrap());
                    counts[a][b] = self.counts[i][j];
                }
            }
            self.classes = classes;
            self.counts = counts;
        }
        for (&(r, m), &n) in pairs {
            let (i, j) = (self.classes.binary_search(&r).unwrap(), self.classes.binary_search(&m).unwrap());
            self.counts[i][j] += n;
        }
    }

    /// Adds another matrix.
    pub fn merge(&mut self, other: &Confusion) {
        let mut pairs = BTreeMap::new();
        for (i, r) in other.classes.iter().enumerate() {
            for (j, m) in other.classes.iter().enumerate() {
                if other.counts[i][j] > 0 {
                    pairs.insert((*r, *m), other.counts[i][j]);
                }
            }
        }
        self.add_counts(&pairs);
    }

    /// Number of pairs counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// OA, kappa, per-class PA/UA/F1/IoU, macro F1 and mIoU.
    pub fn metrics(&self) -> Metrics {
        let k = self.classes.len();
        let n = self.total() as f64;
        let row: Vec<f64> = self.counts.iter().map(|r| r.iter().sum::<u64>() as f64).collect();
        let col: Vec<f64> = (0..k).map(|j| self.counts.iter().map(|r| r[j]).sum::<u64>() as f64).collect();
        let diag: Vec<f64> = (0..k).map(|i| self.counts[i][i] as f64).collect();
        let correct: f64 = diag.iter().sum();
        let overall_accuracy = ratio(correct, n);
        // Cohen's kappa: (po − pe) / (1 − pe), pe from the marginals.
        let pe: f64 = (0..k).map(|i| row[i] * col[i]).sum::<f64>() / (n * n).max(1.0);
        let kappa = if (1.0 - pe).abs() < f64::EPSILON { if overall_accuracy == 1.0 { 1.0 } else { 0.0 } } else { (overall_accuracy - pe) / (1.0 - pe) };
        let classes: Vec<ClassMetrics> = (0..k)
            .map(|i| {
                let pa = ratio(diag[i], row[i]);
                let ua = ratio(diag[i], col[i]);
                ClassMetrics {
                    class: self.classes[i],
                    support: row[i] as u64,
                    producers_accuracy: pa,
                    users_accuracy: ua,
                    f1: ratio(2.0 * diag[i], row[i] + col[i]),
                    iou: ratio(diag[i], row[i] + col[i] - diag[i]),
                }
            })
            .collect();
        // Averages over the classes of the reference or the map: scikit-learn's default
        // labels (the matrix's classes are exactly those seen on either side).
        let present: Vec<&ClassMetrics> = (0..k).filter(|&i| row[i] > 0.0 || col[i] > 0.0).map(|i| &classes[i]).collect();
        let mean = |f: fn(&ClassMetrics) -> f64| ratio(present.iter().map(|c| f(c)).sum(), present.len() as f64);
        Metrics {
            samples: n as u64,
            overall_accuracy,
            kappa,
            macro_f1: mean(|c| c.f1),
            miou: mean(|c| c.iou),
            classes,
        }
    }
}

/// Year-to-year agreement per class: of the pixels of class c in `a`, the share that
/// are still c in `b`; plus the overall share of pixels with the same class. Pixels
/// that are 0 in either map are skipped. Returns (overall, per class).
pub fn agreement(a: &[u16], b: &[u16]) -> (f64, BTreeMap<u16, f64>) {
    let mut same = 0u64;
    let mut total = 0u64;
    let mut kept: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    for (&x, &y) in a.iter().zip(b) {
        if x == 0 || y == 0 {
            continue;
        }
        total += 1;
        let e = kept.entry(x).or_default();
        e.1 += 1;
        if x == y {
            same += 1;
            e.0 += 1;
        }
    }
    (ratio(same as f64, total as f64), kept.into_iter().map(|(c, (k, n))| (c, ratio(k as f64, n as f64))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_matrix_by_hand() {
        // reference: 1 1 1 2 2 3 ; map: 1 1 2 2 3 3 ; plus a no-data reference.
        let c = Confusion::from_pairs(&[1, 1, 1, 2, 2, 3, 0], &[1, 1, 2, 2, 3, 3, 1]);
        assert_eq!(c.classes, [1, 2, 3]);
        assert_eq!(c.counts, [[2, 1, 0], [0, 1, 1], [0, 0, 1]]);
        let m = c.metrics();
        assert!((m.overall_accuracy - 4.0 / 6.0).abs() < 1e-12);
        // pe = (3·2 + 2·2 + 1·2) / 36 = 1/3; kappa = (2/3 − 1/3) / (2/3) = 0.5
        assert!((m.kappa - 0.5).abs() < 1e-12);
        assert!((m.classes[0].producers_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.classes[0].users_accuracy - 1.0).abs() < 1e-12);
        assert!((m.classes[1].iou - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn merging_chunks_equals_counting_at_once() {
        let (r, m) = ([1u16, 2, 3, 3, 5, 1], [1u16, 3, 3, 5, 5, 2]);
        let mut a = Confusion::from_pairs(&r[..3], &m[..3]);
        a.merge(&Confusion::from_pairs(&r[3..], &m[3..]));
        assert_eq!(a, Confusion::from_pairs(&r, &m));
    }

    #[test]
    fn agreement_keeps_per_class_shares() {
        let (overall, per) = agreement(&[1, 1, 2, 2, 0], &[1, 2, 2, 2, 1]);
        assert!((overall - 0.75).abs() < 1e-12);
        assert_eq!(per[&1], 0.5);
        assert_eq!(per[&2], 1.0);
    }
}

//! The kernels: Viterbi (max-product) and forward-backward (sum-product) over the
//! `steps × classes` emissions of [`LANES`] pixels at once. Every pixel is its own chain;
//! running them side by side, one per SIMD lane (four vectors of two f64, [`Wide`]),
//! makes every inner-loop operation the same on all lanes with no horizontal reduction,
//! for any number of classes. Lanes
//! never mix, and each does the same IEEE operations in the same order as it would alone,
//! so a pixel's result does not depend on its neighbour or on where the chunk starts. The
//! buffers live in a [`Workspace`] made once per call, so decoding allocates nothing per
//! pixel.
//!
//! Viterbi runs in log space: scores are sums of logs, the max over the previous class is
//! an add, a compare and a select, and no path score can underflow however long the series.
//!
//! Forward-backward runs on probabilities normalised at every step (Rabiner's scaling),
//! which is log-sum-exp with one shift per step: `α̂_t = α_t / c_t`, `ln c_t` being the
//! shift. It needs no `exp` or `ln` at all, where log-sum-exp per `(step, class)` needs C²
//! `exp` per step (our first version, in logs with one shift per step, still spent a third
//! of its time in `exp` and `ln`). It is as stable: after normalisation the largest message
//! is at least 1/C, so a step's sum cannot underflow, and a single entry underflows only
//! when it is below ~1e-308 of the largest, where it does not change any posterior written
//! as f32 (`long_series_do_not_underflow` runs 3000 steps that would reach 1e-3000 unscaled).

use sitsflow_sdk::lanes::Wide;
use sitsflow_sdk::for_each_index;

/// Pixels decoded side by side: eight, four vectors of two f64 lanes (two pixels a loop
/// round left the sandbox's loops paying their per-round costs for one vector each).
pub const LANES: usize = 8;

/// The lanes as vectors.
type F2 = Wide<{ LANES / 2 }>;

/// One value per lane, as the caller reads and writes them.
pub type Lanes = [f64; LANES];

/// The transition model and class prior in the forms the kernels use.
pub struct Chain {
    classes: usize,
    /// `A[i][j]` row-major (`from` rows): the forward sums read rows.
    a: Vec<f64>,
    /// `A` transposed: the backward sums read it row by row.
    a_t: Vec<f64>,
    /// `ln A` row-major, for Viterbi.
    log_a: Vec<f64>,
    prior: Vec<f64>,
    log_prior: Vec<f64>,
}

/// Per-call buffers, reused for every block of pixels.
pub struct Workspace {
    steps: usize,
    /// Viterbi scores of the previous and the current step, `classes` each.
    delta: Vec<F2>,
    /// Viterbi backpointers, `steps × classes`, held as f64 (exact for any class count we
    /// can hold) so the compare and both selects work on the same lanes.
    back: Vec<F2>,
    /// Scaled backward messages `β̂`, `steps × classes`.
    beta: Vec<F2>,
    /// Scaled forward messages `α̂` of the previous and the current step.
    alpha: Vec<F2>,
    /// Emission × message of one step.
    weights: Vec<F2>,
}

impl Workspace {
    pub fn new(steps: usize, classes: usize) -> Self {
        let zero = F2::splat(0.0);
        Workspace {
            steps,
            delta: vec![zero; 2 * classes],
            back: vec![zero; steps * classes],
            beta: vec![zero; steps * classes],
            alpha: vec![zero; 2 * classes],
            weights: vec![zero; classes],
        }
    }
}

/// Per lane, the largest value over `values`.
fn lane_max(values: &[F2]) -> F2 {
    values.iter().fold(F2::splat(f64::NEG_INFINITY), |m, &v| m.max(v))
}

/// Scales each lane of `v` to sum to 1. Every lane's sum is positive: some path reaches
/// every step (see [`Chain::viterbi`]).
fn normalise(v: &mut [F2]) {
    let total = v.iter().fold(F2::splat(0.0), |t, &x| t.add(x));
    debug_assert!((0..LANES).all(|k| total.lane(k) > 0.0), "{total:?}");
    let inv = F2::splat(1.0).div(total);
    v.iter_mut().for_each(|x| *x = x.mul(inv));
}

impl Chain {
    /// `a`: row-stochastic `classes × classes`; `prior`: a distribution over the classes.
    /// Zeros are allowed in both (a forbidden transition or start).
    pub fn new(a: &[f64], prior: &[f64]) -> Self {
        let c = prior.len();
        debug_assert_eq!(a.len(), c * c);
        let mut a_t = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                a_t[j * c + i] = a[i * c + j];
            }
        }
        Chain {
            classes: c,
            a: a.to_vec(),
            a_t,
            log_a: a.iter().map(|p| p.ln()).collect(),
            prior: prior.to_vec(),
            log_prior: prior.iter().map(|p| p.ln()).collect(),
        }
    }

    /// The most probable class sequence of each lane (as class indices) given the log
    /// emissions `emission` (`steps × classes`, `ln e_t(c)`), into `path` (`steps` long).
    /// Ties go to the class listed first.
    ///
    /// Some path always has a finite score: every row of `A` has a positive entry, the prior
    /// has one, and emissions are finite (the floor sees to that).
    pub fn viterbi(&self, emission: &[Lanes], ws: &mut Workspace, path: &mut [[u32; LANES]]) {
        let (c, steps) = (self.classes, ws.steps);
        if steps == 0 {
            return;
        }
        let (mut prev, mut cur) = ws.delta.split_at_mut(c);
        for j in 0..c {
            prev[j] = F2::new(&emission[j]).add(F2::splat(self.log_prior[j]));
        }
        for t in 1..steps {
            // Row by row of ln A, so the max over `i` is a compare and two selects per lane.
            // Strict `>`: on a tie the first `i` stays.
            let back = &mut ws.back[t * c..(t + 1) * c];
            for j in 0..c {
                cur[j] = prev[0].add(F2::splat(self.log_a[j]));
                back[j] = F2::splat(0.0);
            }
            for (i, &d) in prev.iter().enumerate().skip(1) {
                let (from, row) = (F2::splat(i as f64), &self.log_a[i * c..(i + 1) * c]);
                let (cur, back) = (&mut *cur, &mut *back);
                for_each_index::<2>(c, |j| (cur[j], back[j]) = d.add(F2::splat(row[j])).keep_larger(from, cur[j], back[j]));
            }
            for (best, &e) in cur.iter_mut().zip(&emission[t * c..(t + 1) * c]) {
                *best = best.add(F2::new(&e));
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        let mut last = [0u32; LANES];
        for (k, last) in last.iter_mut().enumerate() {
            for j in 1..c {
                if prev[j].lane(k) > prev[*last as usize].lane(k) {
                    *last = j as u32;
                }
            }
        }
        path[steps - 1] = last;
        for t in (1..steps).rev() {
            let next = path[t];
            for (k, p) in path[t - 1].iter_mut().enumerate() {
                *p = ws.back[t * c + next[k] as usize].lane(k) as u32;
            }
        }
    }

    /// Smoothed posteriors `P(class at t | all steps)` of each lane (`steps × classes`, each
    /// step summing to 1) given the emissions `emission` (`steps × classes`, `e_t(c)`,
    /// positive), into `out`.
    pub fn smooth(&self, emission: &[Lanes], ws: &mut Workspace, out: &mut [Lanes]) {
        let (c, steps) = (self.classes, ws.steps);
        if steps == 0 {
            return;
        }
        // Backward: β̂_T−1 = 1; β̂_t(i) ∝ Σ_j A[i][j] e_t+1(j) β̂_t+1(j), scaled to a maximum of 1.
        ws.beta[(steps - 1) * c..].fill(F2::splat(1.0));
        for t in (0..steps - 1).rev() {
            let (now, next) = ws.beta.split_at_mut((t + 1) * c);
            let now = &mut now[t * c..];
            for ((w, &e), &b) in ws.weights.iter_mut().zip(&emission[(t + 1) * c..(t + 2) * c]).zip(&next[..c]) {
                *w = F2::new(&e).mul(b);
            }
            now.fill(F2::splat(0.0));
            for (j, &w) in ws.weights.iter().enumerate() {
                let row = &self.a_t[j * c..(j + 1) * c];
                let now = &mut *now;
                for_each_index::<2>(c, |k| now[k] = now[k].add(w.mul(F2::splat(row[k]))));
            }
            let top = lane_max(now);
            debug_assert!((0..LANES).all(|k| top.lane(k) > 0.0), "every row of A has mass and emissions are positive");
            let inv = F2::splat(1.0).div(top);
            now.iter_mut().for_each(|b| *b = b.mul(inv));
        }
        // Forward, one step at a time; each step's posterior is written as soon as its α̂
        // is known, so α needs no `steps × classes` buffer.
        let (mut prev, mut cur) = ws.alpha.split_at_mut(c);
        for j in 0..c {
            prev[j] = F2::new(&emission[j]).mul(F2::splat(self.prior[j]));
        }
        normalise(prev);
        posterior(prev, &ws.beta[..c], &mut ws.weights, &mut out[..c]);
        for t in 1..steps {
            cur.fill(F2::splat(0.0));
            for (i, &w) in prev.iter().enumerate() {
                let row = &self.a[i * c..(i + 1) * c];
                let cur = &mut *cur;
                for_each_index::<2>(c, |j| cur[j] = cur[j].add(w.mul(F2::splat(row[j]))));
            }
            for (a, &e) in cur.iter_mut().zip(&emission[t * c..(t + 1) * c]) {
                *a = a.mul(F2::new(&e));
            }
            normalise(cur);
            posterior(cur, &ws.beta[t * c..(t + 1) * c], &mut ws.weights, &mut out[t * c..(t + 1) * c]);
            std::mem::swap(&mut prev, &mut cur);
        }
    }
}

/// `γ(j) ∝ α̂(j) β̂(j)`, normalised per lane.
fn posterior(alpha: &[F2], beta: &[F2], scratch: &mut [F2], out: &mut [Lanes]) {
    for ((s, &a), &b) in scratch.iter_mut().zip(alpha).zip(beta) {
        *s = a.mul(b);
    }
    normalise(scratch);
    for (o, s) in out.iter_mut().zip(scratch.iter()) {
        s.write(o);
    }
}

//! One k-means run on a prepared matrix (finite values, mean-centred, optionally
//! standardised): initialisation, Lloyd or Elkan iterations, empty-cluster
//! relocation and the final labelling. Follows scikit-learn's `KMeans` step for step
//! (`_kmeans_plusplus`, `_kmeans_single_lloyd`, `_kmeans_single_elkan`,
//! `_relocate_empty_clusters_dense`) so that results are comparable with it.

use crate::kernel::Packed;
use crate::matrix::{Blocked, LANES};
use crate::rng::Rng;
use sitsflow_sdk::lanes::F4;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    KMeansPlusPlus,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Lloyd,
    Elkan,
}

pub struct Settings {
    pub k: usize,
    pub init: Init,
    pub algorithm: Algorithm,
    pub max_iter: usize,
    /// Absolute tolerance on the summed squared centre shift.
    pub tol: f64,
}

/// What one run ends with.
pub struct Run {
    /// `k × d`, in the prepared matrix's space.
    pub centres: Vec<f64>,
    pub inertia: f64,
    pub iterations: usize,
    pub converged: bool,
    pub sizes: Vec<u64>,
}

/// Buffers reused across the restarts of a fit.
#[derive(Default)]
pub struct Work {
    labels: Vec<u32>,
    closest: Vec<f32>,
    candidates: Vec<f32>,
    upper: Vec<f32>,
    lower: Vec<f32>,
}

pub fn run(x: &Blocked, s: &Settings, rng: &mut Rng, work: &mut Work) -> Run {
    let mut centres = match s.init {
        Init::KMeansPlusPlus => kmeans_plus_plus(x, s.k, rng, work),
        Init::Random => random_init(x, s.k, rng),
    };
    let (iterations, converged) = match s.algorithm {
        Algorithm::Lloyd => lloyd(x, s, &mut centres, work),
        Algorithm::Elkan => elkan(x, s, &mut centres, work),
    };
    // One labelling pass with the final centres, through the same kernel `assign`
    // uses, so the reported inertia and sizes are what `assign` reproduces.
    let packed = Packed::new(&centres, s.k, x.d);
    let mut inertia = 0.0;
    let mut sizes = vec![0u64; s.k];
    packed.for_each_nearest_block(x, |b, winners| {
        let d2 = x.block_sqdist(b, winners, &packed.rows);
        for (&c, d2) in winners.iter().zip(d2).take(x.n - b * LANES) {
            inertia += d2 as f64;
            sizes[c as usize] += 1;
        }
    });
    Run { centres, inertia, iterations, converged, sizes }
}

/// `k` distinct samples (Floyd's algorithm: exactly `k` draws, any `k ≤ n`).
fn random_init(x: &Blocked, k: usize, rng: &mut Rng) -> Vec<f64> {
    let mut chosen = BTreeSet::new();
    let mut order = Vec::with_capacity(k);
    for j in (x.n - k)..x.n {
        let t = rng.below(j as u64 + 1) as usize;
        let pick = if chosen.contains(&t) { j } else { t };
        chosen.insert(pick);
        order.push(pick);
    }
    order.into_iter().flat_map(|i| x.row_f64(i)).collect()
}

/// Greedy k-means++ (scikit-learn's `_kmeans_plusplus`): each new centre is the best,
/// by the potential it leaves, of `2 + ⌊ln k⌋` candidates drawn with probability
/// proportional to the squared distance to the nearest centre so far.
fn kmeans_plus_plus(x: &Blocked, k: usize, rng: &mut Rng, work: &mut Work) -> Vec<f64> {
    let (n, d) = (x.n, x.d);
    let trials = 2 + (k as f64).ln() as usize;
    let n_pad = x.padded_rows();

    let mut centres = Vec::with_capacity(k * d);
    let first = rng.below(n as u64) as usize;
    centres.extend(x.row_f64(first));

    // Padding rows start (and stay) at distance 0, so they are never drawn and add
    // nothing to the potential.
    let closest = &mut work.closest;
    closest.clear();
    closest.resize(n, f32::INFINITY);
    closest.resize(n_pad, 0.0);
    let cand_dist = &mut work.candidates;
    cand_dist.resize(trials * n_pad, 0.0);
    let mut pots = vec![0.0f64; trials];
    let first_row: Vec<f32> = x.row_f64(first).map(|v| v as f32).collect();
    candidate_distances(x, &first_row, closest, &mut cand_dist[..n_pad], &mut pots[..1]);
    closest.copy_from_slice(&cand_dist[..n_pad]);
    let mut pot = pots[0];

    let mut targets: Vec<(f64, usize)> = Vec::with_capacity(trials);
    let mut ids = vec![0usize; trials];
    let mut candidates = vec![0.0f32; trials * d];
    for _ in 1..k {
        // Inverse-CDF sampling of all candidates in one scan of the running sum
        // (numpy's `searchsorted(cumsum, v)`: the first point whose cumsum reaches v).
        targets.clear();
        targets.extend((0..trials).map(|t| (rng.uniform() * pot, t)));
        targets.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        ids.fill(n - 1);
        let mut next = 0;
        let mut cum = 0.0f64;
        for (i, &c) in closest[..n].iter().enumerate() {
            cum += c as f64;
            while next < trials && targets[next].0 <= cum {
                ids[targets[next].1] = i;
                next += 1;
            }
            if next == trials {
                break;
            }
        }
        for (c, &i) in candidates.chunks_exact_mut(d).zip(&ids) {
            for (j, v) in c.iter_mut().enumerate() {
                *v = x.get(i, j);
            }
        }
        candidate_distances(x, &candidates, closest, cand_dist, &mut pots);
        let best = (0..trials).fold(0, |b, t| if pots[t] < pots[b] { t } else { b });
        pot = pots[best];
        closest.copy_from_slice(&cand_dist[best * n_pad..(best + 1) * n_pad]);
        centres.extend(x.row_f64(ids[best]));
    }
    centres
}

/// For each candidate (`candidates`, `t × d`), every row's squared distance to it
/// min-ed with `closest`, into `out` (`t` planes of `padded_rows`), and the plane sums
/// (the potential each candidate would leave) into `pots`.
///
/// Distances as `‖x‖² + ‖c‖² − 2·x·c` (clamped at 0), as scikit-learn's k-means++ does
/// them: two operations per feature instead of three, and only sampling weights depend
/// on them. Sums in f32 per chunk of rows, f64 across chunks.
fn candidate_distances(x: &Blocked, candidates: &[f32], closest: &[f32], out: &mut [f32], pots: &mut [f64]) {
    let d = x.d;
    let n_pad = x.padded_rows();
    let t = candidates.len() / d;
    let neg2: Vec<F4> = candidates.iter().map(|&v| F4::splat(-2.0 * v)).collect();
    let norms: Vec<F4> = candidates
        .chunks_exact(d)
        .map(|c| F4::splat(c.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32))
        .collect();
    pots.fill(0.0);
    let xnorms = x.norms();
    let zero = F4::splat(0.0);
    const CHUNK: usize = 128; // blocks
    let mut sums = vec![zero; t];
    for (chunk, blocks) in x.raw().chunks(CHUNK * LANES * d).enumerate() {
        sums.fill(zero);
        for (b, block) in blocks.chunks_exact(LANES * d).enumerate() {
            let i = (chunk * CHUNK + b) * LANES;
            let (xn0, xn1) = (F4::load(&xnorms[i..]), F4::load(&xnorms[i + 4..]));
            let (cl0, cl1) = (F4::load(&closest[i..]), F4::load(&closest[i + 4..]));
            for (c, ((w, &cn), sum)) in neg2.chunks_exact(d).zip(&norms).zip(sums.iter_mut()).enumerate() {
                let (mut a0, mut a1) = (xn0.add(cn), xn1.add(cn));
                // Four features per loop round (one epoch check in the sandbox for
                // four, not one), each accumulator still taking them in order.
                let mut vs = block.chunks_exact(4 * LANES);
                let mut ws = w.chunks_exact(4);
                for (v, w) in (&mut vs).zip(&mut ws) {
                    for f in 0..4 {
                        a0 = a0.add(F4::load(&v[2 * f * 4..]).mul(w[f]));
                        a1 = a1.add(F4::load(&v[(2 * f + 1) * 4..]).mul(w[f]));
                    }
                }
                for (v, w) in vs.remainder().chunks_exact(LANES).zip(ws.remainder()) {
                    a0 = a0.add(F4::load(&v[..4]).mul(*w));
                    a1 = a1.add(F4::load(&v[4..]).mul(*w));
                }
                let (m0, m1) = (a0.max(zero).min(cl0), a1.max(zero).min(cl1));
                let o = &mut out[c * n_pad + i..c * n_pad + i + LANES];
                m0.store(&mut o[..4]);
                m1.store(&mut o[4..]);
                *sum = sum.add(m0.add(m1));
            }
        }
        for (p, s) in pots.iter_mut().zip(&sums) {
            let l = s.to_array();
            *p += ((l[0] + l[1]) + (l[2] + l[3])) as f64;
        }
    }
}

/// New centres from the sums and counts; a cluster left empty keeps its centre.
/// Returns the summed squared shift.
fn update_centres(centres: &mut [f64], sums: &[f64], counts: &[u64], d: usize) -> f64 {
    let mut shift = 0.0;
    for ((c, s), &m) in centres.chunks_exact_mut(d).zip(sums.chunks_exact(d)).zip(counts) {
        if m == 0 {
            continue;
        }
        let inv = 1.0 / m as f64;
        for (cv, sv) in c.iter_mut().zip(s) {
            let new = sv * inv;
            shift += (new - *cv) * (new - *cv);
            *cv = new;
        }
    }
    shift
}

/// Empty clusters take the points farthest from their (old) centres, as scikit-learn
/// relocates them: each such point moves from its cluster's sums into the empty one.
/// Unlike scikit-learn, a point is never taken from a cluster it is the last member of
/// (that would just empty another cluster). Returns how many clusters were refilled.
fn relocate_empty(x: &Blocked, old: &Packed, labels: &[u32], sums: &mut [f64], counts: &mut [u64]) -> usize {
    let empty: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return 0;
    }
    let d = x.d;
    // The farthest points, descending, ties by index; a few spare for the ones skipped.
    let want = 2 * empty.len() + 8;
    let mut far: Vec<(f32, usize)> = Vec::with_capacity(want + 1);
    for (i, &label) in labels.iter().enumerate().take(x.n) {
        let dist = x.sqdist(i, old.centre(label as usize));
        if far.len() == want && dist <= far[want - 1].0 {
            continue;
        }
        let at = far.partition_point(|&(v, _)| v >= dist);
        far.insert(at, (dist, i));
        far.truncate(want);
    }
    let mut far = far.into_iter();
    let mut refilled = 0;
    for &e in &empty {
        let Some(i) = far.by_ref().map(|(_, i)| i).find(|&i| counts[labels[i] as usize] > 1) else {
            break;
        };
        let from = labels[i] as usize;
        for (j, v) in x.row_f64(i).enumerate() {
            sums[from * d + j] -= v;
            sums[e * d + j] = v;
        }
        counts[from] -= 1;
        counts[e] = 1;
        refilled += 1;
    }
    refilled
}

/// Adds the first `labels.len()` rows of a block to the f32 sums of their clusters
/// (`part`, `k × d`) and counts them. Column by column: each column of the block is
/// contiguous, and every (cluster, feature) sum still takes its rows in order.
#[inline]
fn accumulate_block(block: &[f32], labels: &[u32], d: usize, part: &mut [f32], counts: &mut [u64]) {
    // Plain index loops: iterator zips here get vectorised into lane gathers, which
    // cost a fifth of a Lloyd iteration in the sandbox.
    let valid = labels.len();
    let mut offset = [0usize; LANES];
    for l in 0..valid {
        offset[l] = labels[l] as usize * d;
        counts[labels[l] as usize] += 1;
    }
    if valid == LANES {
        // Full blocks (all but the last): a fixed trip count unrolls the lanes, so in
        // the sandbox one epoch check covers two columns of eight adds instead of each
        // add (1.88× → 1.3–1.5× of native for a fit, `cargo bench --bench stages`).
        let mut pairs = block.chunks_exact(2 * LANES);
        let mut j = 0;
        for pair in &mut pairs {
            let pair: &[f32; 2 * LANES] = pair.try_into().expect("chunks of 2 × LANES");
            for l in 0..LANES {
                part[offset[l] + j] += pair[l];
            }
            for l in 0..LANES {
                part[offset[l] + j + 1] += pair[LANES + l];
            }
            j += 2;
        }
        let column = pairs.remainder();
        if !column.is_empty() {
            for l in 0..LANES {
                part[offset[l] + j] += column[l];
            }
        }
        return;
    }
    for (j, column) in block.chunks_exact(LANES).enumerate() {
        for l in 0..valid {
            part[offset[l] + j] += column[l];
        }
    }
}

/// Lloyd's iterations (`_kmeans_single_lloyd`): assign every point, average, stop when
/// no label changed or the squared centre shift is within `tol`.
fn lloyd(x: &Blocked, s: &Settings, centres: &mut [f64], work: &mut Work) -> (usize, bool) {
    let (k, d, n) = (s.k, x.d, x.n);
    let labels = &mut work.labels;
    labels.clear();
    labels.resize(x.padded_rows(), u32::MAX);
    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0u64; k];
    const CHUNK: usize = 256; // rows
    let mut chunk_labels = [0u32; CHUNK];
    let mut part = vec![0.0f32; k * d];
    for it in 0..s.max_iter {
        let packed = Packed::new(centres, k, d);
        sums.fill(0.0);
        counts.fill(0);
        let mut changed = 0usize;
        // Sums in f32 over a chunk of rows (cheap, and exact enough for ≤ CHUNK terms
        // of centred data), in f64 across chunks.
        for (ci, (blocks, old)) in x.raw().chunks(CHUNK * d).zip(labels.chunks_mut(CHUNK)).enumerate() {
            let new = &mut chunk_labels[..old.len()];
            packed.nearest_blocks(blocks, new);
            part.fill(0.0);
            let rows = old.len().min(n.saturating_sub(ci * CHUNK));
            let blocks = blocks.chunks_exact(LANES * d);
            let labels8 = new.chunks_exact(LANES).zip(old.chunks_exact_mut(LANES));
            for (b, (block, (new, old))) in blocks.zip(labels8).enumerate() {
                // Padding lanes of the last block are left out.
                let valid = LANES.min(rows.saturating_sub(b * LANES));
                for l in 0..valid {
                    changed += (old[l] != new[l]) as usize;
                    old[l] = new[l];
                }
                accumulate_block(block, &new[..valid], d, &mut part, &mut counts);
            }
            for (sv, p) in sums.iter_mut().zip(&part) {
                *sv += *p as f64;
            }
        }
        relocate_empty(x, &packed, labels, &mut sums, &mut counts);
        let shift = update_centres(centres, &sums, &counts, d);
        if changed == 0 || shift <= s.tol {
            return (it + 1, true);
        }
    }
    (s.max_iter, false)
}

/// Half the distances between centres (`k × k`) and, per centre, the smallest of them
/// to another centre (Elkan's `s(c)`).
fn centre_gaps(rows: &Packed) -> (Vec<f32>, Vec<f32>) {
    let k = rows.k;
    let mut half = vec![0.0f32; k * k];
    for a in 0..k {
        for b in a + 1..k {
            let h = rows.centre(a).iter().zip(rows.centre(b)).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt() / 2.0;
            half[a * k + b] = h;
            half[b * k + a] = h;
        }
    }
    let next = (0..k)
        .map(|a| (0..k).filter(|&b| b != a).map(|b| half[a * k + b]).fold(f32::INFINITY, f32::min))
        .collect();
    (half, next)
}

/// Euclidean distances of the eight rows of a block to every centre (`dists[c][lane]`).
/// Each lane does the same operations in the same order as [`Blocked::sqdist`], so the
/// values are identical to it.
fn block_distances(block: &[f32], centres: &Packed, dists: &mut [[f32; LANES]]) {
    let zero = F4::splat(0.0);
    for (c, out) in dists.iter_mut().enumerate() {
        let (mut a0, mut a1) = (zero, zero);
        for (column, &y) in block.chunks_exact(LANES).zip(centres.centre(c)) {
            let y = F4::splat(y);
            let (t0, t1) = (F4::load(&column[..4]).sub(y), F4::load(&column[4..]).sub(y));
            a0 = a0.add(t0.mul(t0));
            a1 = a1.add(t1.mul(t1));
        }
        out[..4].copy_from_slice(&a0.to_array());
        out[4..].copy_from_slice(&a1.to_array());
        for v in out.iter_mut() {
            *v = v.sqrt();
        }
    }
}

/// Elkan's algorithm (`_kmeans_single_elkan`): the same iterations as Lloyd's, with an
/// upper bound on each point's distance to its centre and a lower bound per centre,
/// kept valid through the centre shifts, so most distances are never computed once
/// the centres settle. Needs `n × k` f32 for the lower bounds.
fn elkan(x: &Blocked, s: &Settings, centres: &mut [f64], work: &mut Work) -> (usize, bool) {
    let (n, k, d) = (x.n, s.k, x.d);
    let dist = |i: usize, c: &[f32]| x.sqdist(i, c).sqrt();
    let mut packed = Packed::new(centres, k, d);
    let (mut half, mut next) = centre_gaps(&packed);
    let Work { labels, upper, lower, .. } = work;
    labels.clear();
    labels.resize(n, 0);
    upper.clear();
    upper.resize(n, 0.0);
    lower.clear();
    lower.resize(n * k, 0.0);

    // Initial bounds: the distance to every centre, eight rows at a time. scikit-learn
    // skips centres it can rule out here; with SIMD the full row is cheaper than the
    // branches, and exact lower bounds prune better in the iterations.
    let mut dists = vec![[0.0f32; LANES]; k];
    for (b, block) in x.raw().chunks_exact(LANES * d).enumerate() {
        block_distances(block, &packed, &mut dists);
        let first = b * LANES;
        for (l, i) in (first..(first + LANES).min(n)).enumerate() {
            let lb = &mut lower[i * k..(i + 1) * k];
            for (v, dc) in lb.iter_mut().zip(&dists) {
                *v = dc[l];
            }
            // The first of equal minima, as everywhere else.
            let best = (1..k).fold(0, |b, c| if lb[c] < lb[b] { c } else { b });
            labels[i] = best as u32;
            upper[i] = lb[best];
        }
    }

    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0u64; k];
    let mut shifts = vec![0.0f32; k];
    let mut old = vec![0.0f64; k * d];
    let mut part = vec![0.0f32; k * d];
    const CHUNK: usize = 32; // blocks, as Lloyd's 256 rows
    for it in 0..s.max_iter {
        sums.fill(0.0);
        counts.fill(0);
        let mut changed = 0usize;
        for (ci, chunk) in x.raw().chunks(CHUNK * LANES * d).enumerate() {
            part.fill(0.0);
            for (b, block) in chunk.chunks_exact(LANES * d).enumerate() {
                let first = (ci * CHUNK + b) * LANES;
                let rows = first..(first + LANES).min(n);
                for i in rows.clone() {
                    let lb = &mut lower[i * k..(i + 1) * k];
                    let before = labels[i] as usize;
                    let mut c = before;
                    let mut u = upper[i];
                    // A point nearer its centre than half the gap to any other centre
                    // stays put.
                    if u > next[c] {
                        let mut tight = false;
                        for j in 0..k {
                            if j != c && u > lb[j] && u > half[c * k + j] {
                                if !tight {
                                    u = dist(i, packed.centre(c));
                                    lb[c] = u;
                                    tight = true;
                                }
                                if u > lb[j] && u > half[c * k + j] {
                                    let dj = dist(i, packed.centre(j));
                                    lb[j] = dj;
                                    if dj < u {
                                        c = j;
                                        u = dj;
                                    }
                                }
                            }
                        }
                        labels[i] = c as u32;
                        upper[i] = u;
                    }
                    changed += (c != before) as usize;
                }
                accumulate_block(block, &labels[rows], d, &mut part, &mut counts);
            }
            for (sv, p) in sums.iter_mut().zip(&part) {
                *sv += *p as f64;
            }
        }
        relocate_empty(x, &packed, labels, &mut sums, &mut counts);
        old.copy_from_slice(centres);
        let shift = update_centres(centres, &sums, &counts, d);
        for ((sh, a), b) in shifts.iter_mut().zip(old.chunks_exact(d)).zip(centres.chunks_exact(d)) {
            *sh = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt() as f32;
        }
        // Move the bounds with the centres: the triangle inequality keeps them valid.
        for ((u, lb), &c) in upper.iter_mut().zip(lower.chunks_exact_mut(k)).zip(labels.iter()) {
            *u += shifts[c as usize];
            for (l, sh) in lb.iter_mut().zip(&shifts) {
                // A compare-and-select, not `f32::max`: Wasm's `max` has NaN rules that
                // cost several instructions a lane, and bounds are never NaN.
                let v = *l - sh;
                *l = if v > 0.0 { v } else { 0.0 };
            }
        }
        packed = Packed::new(centres, k, d);
        (half, next) = centre_gaps(&packed);
        // The first iteration compares with no labels at all in scikit-learn.
        if (it > 0 && changed == 0) || shift <= s.tol {
            return (it + 1, true);
        }
    }
    (s.max_iter, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1000 copies of one point and two stray points: random init picks three copies,
    /// two clusters come out empty and must take the strays.
    #[test]
    fn empty_clusters_take_the_farthest_points() {
        let mut data = vec![0.0f32; 1002 * 2];
        data[2000..].copy_from_slice(&[10.0, 0.0, 0.0, 10.0]);
        let x = &Blocked::plain(data.clone(), 2);
        for algorithm in [Algorithm::Lloyd, Algorithm::Elkan] {
            let s = Settings { k: 3, init: Init::Random, algorithm, max_iter: 50, tol: 0.0 };
            // A seed whose random init picks three copies of the crowded point.
            let seed = (0..100)
                .find(|&seed| {
                    let c = random_init(x, 3, &mut Rng::new(seed));
                    c.iter().all(|&v| v == 0.0)
                })
                .expect("some seed draws only the crowded point");
            let r = run(x, &s, &mut Rng::new(seed), &mut Work::default());
            let mut sizes = r.sizes.clone();
            sizes.sort();
            assert_eq!(sizes, [1, 1, 1000], "{algorithm:?}");
            assert_eq!(r.inertia, 0.0);
        }
    }

    #[test]
    fn block_distances_equal_the_scalar_ones_bit_for_bit() {
        let mut rng = Rng::new(8);
        let rows: Vec<f32> = (0..13 * 7).map(|_| (rng.uniform() * 20.0 - 10.0) as f32).collect();
        let x = Blocked::plain(rows.clone(), 7);
        let centres: Vec<f64> = (0..3 * 7).map(|_| rng.uniform() * 4.0).collect();
        let packed = Packed::new(&centres, 3, 7);
        let mut dists = vec![[0.0f32; LANES]; 3];
        for (b, block) in x.raw().chunks_exact(LANES * 7).enumerate() {
            block_distances(block, &packed, &mut dists);
            for i in b * LANES..((b + 1) * LANES).min(13) {
                for (c, dc) in dists.iter().enumerate() {
                    assert_eq!(dc[i % LANES], x.sqdist(i, packed.centre(c)).sqrt());
                }
            }
        }
    }

    #[test]
    fn random_init_draws_distinct_samples() {
        let data: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let x = &Blocked::plain(data.clone(), 1);
        for seed in 0..20 {
            let mut c = random_init(x, 20, &mut Rng::new(seed));
            c.sort_by(f64::total_cmp);
            assert_eq!(c, (0..20).map(|i| i as f64).collect::<Vec<_>>());
        }
    }
}

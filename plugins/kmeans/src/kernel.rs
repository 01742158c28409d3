//! The nearest-centre kernel every full assignment pass goes through (Lloyd's steps,
//! the final labelling of a fit, `assign`).
//!
//! It ranks centres by `‖c‖² − 2·x·c`, which orders them like `‖x − c‖²` without the
//! `‖x‖²` term: one multiply and one add per feature and centre. The eight rows of a
//! block ([`crate::matrix`]) fill two SIMD vectors per feature, so the running minimum and
//! its centre index stay per lane and no horizontal reduction is needed per row. The fit
//! runs on mean-centred data (as scikit-learn does), which keeps the cancellation in
//! that form small. Exact distances of the winners are computed apart, with
//! [`Blocked::block_sqdist`] (a block and its winners at a time), where they are needed.

use crate::matrix::{Blocked, LANES};
use crate::simd::F4;

/// Features per round of the distance loop. Four in both worlds: eight made LLVM's x86
/// code slower (1.5× on the stages bench), and in the sandbox, where each round's
/// back-edge costs an epoch check, eight now measures slower than four (fit 101–106
/// against 113–134 ms, assign 7.0–7.2 against 7.7–8.7 ms) and two is slower with
/// deadlines. Same sums whatever the round.
const ROUND: usize = 4;

/// Centres laid out for [`Packed::nearest_blocks`].
pub struct Packed {
    pub k: usize,
    pub d: usize,
    /// `k × d`: −2·c per centre and feature, in all four lanes.
    neg2: Vec<F4>,
    /// Per centre: ‖c‖² in all four lanes.
    norms: Vec<F4>,
    /// `k × d` centres as f32, for exact distances.
    pub rows: Vec<f32>,
}

impl Packed {
    /// `centres` is `k × d`, row-major.
    pub fn new(centres: &[f64], k: usize, d: usize) -> Self {
        assert_eq!(centres.len(), k * d);
        let rows: Vec<f32> = centres.iter().map(|&v| v as f32).collect();
        let neg2 = rows.iter().map(|&v| F4::splat(-2.0 * v)).collect();
        // The norm in f64 of the f32 centre: the scores are then off only by the
        // rounding of the dot product.
        let norms = rows
            .chunks_exact(d)
            .map(|c| F4::splat(c.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32))
            .collect();
        Packed { k, d, neg2, norms, rows }
    }

    /// The centre `c`.
    #[inline]
    pub fn centre(&self, c: usize) -> &[f32] {
        &self.rows[c * self.d..(c + 1) * self.d]
    }

    /// Nearest centre of the eight rows of a block (see [`crate::matrix`]). Ties go to
    /// the lowest centre index.
    #[inline(always)]
    fn nearest8(&self, block: &[f32]) -> [u32; 8] {
        let d = self.d;
        let mut best = [F4::splat(f32::INFINITY); 2];
        let mut best_id = [F4::splat(0.0); 2];
        // Two centres × two row vectors per pass over the features: four independent
        // add chains, and each vector loaded feeds two products.
        let mut pairs = self.neg2.chunks_exact(2 * d);
        let mut c = 0;
        for w in &mut pairs {
            let (w0, w1) = w.split_at(d);
            let (n0, n1) = (self.norms[c], self.norms[c + 1]);
            let (mut a00, mut a01, mut a10, mut a11) = (n0, n0, n1, n1);
            // `ROUND` features per loop round, then one: in the sandbox every loop
            // back-edge also checks the epoch deadline, which one feature per round
            // would pay d times. Each accumulator still takes its features in order
            // (bit-identical sums, whatever the round).
            let mut step = |x: &[f32], u: &[F4], v: &[F4]| {
                for f in 0..u.len() {
                    let (lo, hi) = (F4::load(&x[2 * f * 4..]), F4::load(&x[(2 * f + 1) * 4..]));
                    a00 = a00.add(lo.mul(u[f]));
                    a01 = a01.add(hi.mul(u[f]));
                    a10 = a10.add(lo.mul(v[f]));
                    a11 = a11.add(hi.mul(v[f]));
                }
            };
            let mut xs = block.chunks_exact(ROUND * LANES);
            let mut us = w0.chunks_exact(ROUND);
            let mut vs = w1.chunks_exact(ROUND);
            for ((x, u), v) in (&mut xs).zip(&mut us).zip(&mut vs) {
                step(x, &u[..ROUND], &v[..ROUND]);
            }
            for ((x, u), v) in xs.remainder().chunks_exact(LANES).zip(us.remainder()).zip(vs.remainder()) {
                let (lo, hi) = (F4::load(&x[..4]), F4::load(&x[4..]));
                a00 = a00.add(lo.mul(*u));
                a01 = a01.add(hi.mul(*u));
                a10 = a10.add(lo.mul(*v));
                a11 = a11.add(hi.mul(*v));
            }
            // Strict `<` in increasing c: the lowest index wins a tie, as numpy's argmin.
            let (i0, i1) = (F4::splat(c as f32), F4::splat((c + 1) as f32));
            (best[0], best_id[0]) = a00.keep_smaller(i0, best[0], best_id[0]);
            (best[1], best_id[1]) = a01.keep_smaller(i0, best[1], best_id[1]);
            (best[0], best_id[0]) = a10.keep_smaller(i1, best[0], best_id[0]);
            (best[1], best_id[1]) = a11.keep_smaller(i1, best[1], best_id[1]);
            c += 2;
        }
        if c < self.k {
            let (mut a0, mut a1) = (self.norms[c], self.norms[c]);
            for (x, u) in block.chunks_exact(LANES).zip(pairs.remainder()) {
                a0 = a0.add(F4::load(&x[..4]).mul(*u));
                a1 = a1.add(F4::load(&x[4..]).mul(*u));
            }
            let i = F4::splat(c as f32);
            (_, best_id[0]) = a0.keep_smaller(i, best[0], best_id[0]);
            (_, best_id[1]) = a1.keep_smaller(i, best[1], best_id[1]);
        }
        let (lo, hi) = (best_id[0].to_array(), best_id[1].to_array());
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]].map(|c| c as u32)
    }

    /// The nearest centre of every row of `blocks` (whole blocks of a [`Blocked`]),
    /// padding lanes included: `labels` holds `LANES` per block.
    pub fn nearest_blocks(&self, blocks: &[f32], labels: &mut [u32]) {
        let size = LANES * self.d;
        assert_eq!(blocks.len() / size * LANES, labels.len());
        for (block, out) in blocks.chunks_exact(size).zip(labels.chunks_exact_mut(LANES)) {
            out.copy_from_slice(&self.nearest8(block));
        }
    }

    /// Calls `f(block, nearest centres)` for every block of `x`, in order, with the
    /// nearest centre of each of its `LANES` rows (padding included). Blocks go through
    /// the kernel a chunk at a time, so `f` finds them still in cache.
    #[inline]
    pub fn for_each_nearest_block(&self, x: &Blocked, mut f: impl FnMut(usize, &[u32])) {
        const CHUNK: usize = 1024;
        let mut labels = [0u32; CHUNK];
        for (ci, blocks) in x.raw().chunks(CHUNK * self.d).enumerate() {
            let m = blocks.len() / self.d;
            self.nearest_blocks(blocks, &mut labels[..m]);
            for (k, winners) in labels[..m].chunks_exact(LANES).enumerate() {
                f(ci * (CHUNK / LANES) + k, winners);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's argmin against a brute-force one over exact distances, for k and d
    /// of several sizes and row counts that end in a partial block.
    #[test]
    fn nearest_agrees_with_brute_force() {
        let mut rng = crate::rng::Rng::new(3);
        for (k, d) in [(1, 1), (3, 2), (4, 5), (8, 10), (9, 3), (17, 7)] {
            let centres: Vec<f64> = (0..k * d).map(|_| rng.uniform() * 10.0 - 5.0).collect();
            let packed = Packed::new(&centres, k, d);
            for m in [1, 2, 3, 4, 7, 8, 9, 15, 257] {
                let rows: Vec<f32> = (0..m * d).map(|_| (rng.uniform() * 12.0 - 6.0) as f32).collect();
                let x = Blocked::from_rows(rows.clone(), d, |v, _| v);
                let mut seen = 0;
                packed.for_each_nearest_block(&x, |b, winners| {
                    for (i, &got) in (b * LANES..x.n.min((b + 1) * LANES)).zip(winners) {
                        let got = got as usize;
                        assert_eq!(i, seen);
                        seen += 1;
                        let dists: Vec<f32> = (0..k).map(|c| x.sqdist(i, packed.centre(c))).collect();
                        let brute = (0..k).fold(0, |b, c| if dists[c] < dists[b] { c } else { b });
                        // Near-ties may rank either way in f32; the winner must be as near.
                        assert!(dists[got] <= dists[brute] * (1.0 + 1e-5) + 1e-5, "k={k} d={d} m={m}: {got} vs {brute}");
                    }
                });
                assert_eq!(seen, m);
            }
        }
    }
}

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
use sitsflow_sdk::lanes::F4;

/// Centres per pass over a block's features (see [`Packed::group`]).
const GROUP: usize = 4;

/// Centres laid out for [`Packed::nearest_blocks`].
pub struct Packed {
    pub k: usize,
    pub d: usize,
    /// ⌈k / `GROUP`⌉ × d: per group of centres and feature, −2·c of each of the
    /// group's centres in its own lane (see [`Packed::new`]).
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
        // Per group of `GROUP` centres and feature, the group's −2·c in one vector (lane
        // `i` for centre `c0 + i`; a last, smaller group leaves lanes at zero): the
        // group starting at centre `c0` has feature `f` at `c0 / GROUP · d + f`.
        let mut neg2 = Vec::with_capacity(k.div_ceil(GROUP) * d);
        for c0 in (0..k).step_by(GROUP) {
            for f in 0..d {
                let mut w = [0.0f32; 4];
                for (i, w) in w.iter_mut().enumerate().take(k - c0) {
                    *w = -2.0 * rows[(c0 + i) * d + f];
                }
                neg2.push(F4::load(&w));
            }
        }
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
        let cols = block.as_chunks::<LANES>().0;
        assert_eq!(cols.len(), self.d);
        let mut best = [F4::splat(f32::INFINITY); 2];
        let mut best_id = [F4::splat(0.0); 2];
        let full = self.k / GROUP * GROUP;
        for c0 in (0..full).step_by(GROUP) {
            self.group::<GROUP>(c0, cols, &mut best, &mut best_id);
        }
        match self.k - full {
            1 => self.group::<1>(full, cols, &mut best, &mut best_id),
            2 => self.group::<2>(full, cols, &mut best, &mut best_id),
            3 => self.group::<3>(full, cols, &mut best, &mut best_id),
            _ => {}
        }
        let (lo, hi) = (best_id[0].to_array(), best_id[1].to_array());
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]].map(|c| c as u32)
    }

    /// Scores of the eight rows of `cols` for centres `c0 .. c0 + G`, folded into the
    /// running minimum `best` (and its centre `best_id`) in increasing centre order.
    ///
    /// Shaped for Cranelift, the sandbox's compiler, which (a) keeps a block's loads in
    /// place but moves its arithmetic down to where the result is needed, so every value
    /// a loop round loads is live at once, and (b) with deadlines spills every vector
    /// live across a loop header (the epoch check's slow path is a call), so the sums
    /// go to the stack and back once per round. A round here takes two features: per
    /// feature two vectors of rows and one vector of the group's weights (spread to the
    /// lanes by shuffles, which Cranelift places at their use), `8·G` multiply-adds; 6
    /// loads and 8 sums fit the 16 vector registers. (Two centres over four features a
    /// round loaded 16 vectors, spilled them, and spilled the sums too.)
    #[inline(always)]
    fn group<const G: usize>(&self, c0: usize, cols: &[[f32; LANES]], best: &mut [F4; 2], best_id: &mut [F4; 2]) {
        let d = cols.len();
        let w = &self.neg2[c0 / GROUP * d..(c0 / GROUP + 1) * d];
        let mut acc: [[F4; 2]; G] = std::array::from_fn(|i| [self.norms[c0 + i]; 2]);
        // Each sum takes its features in order, whatever the round.
        let mut step = |x: &[f32; LANES], w: F4| {
            let (lo, hi) = (F4::load(&x[..4]), F4::load(&x[4..]));
            let ws = [w.lane::<0>(), w.lane::<1>(), w.lane::<2>(), w.lane::<3>()];
            for i in 0..G {
                acc[i][0] = acc[i][0].add(lo.mul(ws[i]));
                acc[i][1] = acc[i][1].add(hi.mul(ws[i]));
            }
        };
        let (x2, x1) = cols.as_chunks::<2>();
        let (w2, w1) = w.as_chunks::<2>();
        for (x, w) in x2.iter().zip(w2) {
            step(&x[0], w[0]);
            step(&x[1], w[1]);
        }
        for (x, &w) in x1.iter().zip(w1) {
            step(x, w);
        }
        // Strict `<` in increasing c: the lowest index wins a tie, as numpy's argmin.
        for (i, [a0, a1]) in acc.into_iter().enumerate() {
            let id = F4::splat((c0 + i) as f32);
            (best[0], best_id[0]) = a0.keep_smaller(id, best[0], best_id[0]);
            (best[1], best_id[1]) = a1.keep_smaller(id, best[1], best_id[1]);
        }
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
                let x = Blocked::plain(rows.clone(), d);
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

//! The prepared sample: blocks of eight rows, feature-major inside a block (`block[j·8 +
//! lane]` is feature `j` of row `8·b + lane`). The distance kernels then read two SIMD
//! vectors per feature straight from memory instead of transposing rows on every pass;
//! laid out once per fit or `assign`, it is read a few dozen times.
//!
//! The last block is padded with copies of the last row; kernels compute the padding
//! lanes like any other and callers ignore them (`i < n`).

use crate::model::to_internal;
use sitsflow_sdk::lanes::{D2, F4};
use std::sync::OnceLock;

pub const LANES: usize = 8;

pub struct Blocked {
    data: Vec<f32>,
    /// ‖x‖² per row (padding included), for the k-means++ distances: computed when first
    /// asked for (`assign` never needs them).
    norms: OnceLock<Vec<f32>>,
    pub n: usize,
    pub d: usize,
}

impl Blocked {
    /// From `n × d` row-major values, standardised on the way
    /// ([`crate::model::to_internal`] with `mean[j]` and `inv_scale[j]` for feature `j`).
    /// Laid out in place: the eight rows of a block are contiguous in the row-major order
    /// too, so each block is transposed through a small scratch copy (no second matrix
    /// to allocate and fault in).
    pub fn from_rows(mut data: Vec<f32>, d: usize, mean: &[f64], inv_scale: &[f64]) -> Self {
        assert!(d > 0 && data.len().is_multiple_of(d));
        assert!(mean.len() == d && inv_scale.len() == d);
        let n = data.len() / d;
        let n_pad = n.div_ceil(LANES) * LANES;
        if n_pad > n {
            let last = data[(n - 1) * d..].to_vec();
            data.reserve_exact((n_pad - n) * d);
            for _ in n..n_pad {
                data.extend_from_slice(&last);
            }
        }
        let quads = d / 4;
        let (mean4, _) = mean.as_chunks::<4>();
        let (inv4, _) = inv_scale.as_chunks::<4>();
        let mut rows = vec![0.0f32; LANES * d];
        for block in data.chunks_exact_mut(LANES * d) {
            rows.copy_from_slice(block);
            let (columns, _) = block.as_chunks_mut::<LANES>();
            let row: [&[f32]; LANES] = std::array::from_fn(|l| &rows[l * d..(l + 1) * d]);
            // Four features of the eight rows per loop round (in the sandbox each
            // back-edge checks the deadline): two 4 × 4 transposes in registers, then
            // the standardisation of each feature's column, two f64 lanes at a time.
            for q in 0..quads {
                let quad = |l: usize| F4::load(&row[l][4 * q..4 * q + 4]);
                let lo = F4::transpose([quad(0), quad(1), quad(2), quad(3)]);
                let hi = F4::transpose([quad(4), quad(5), quad(6), quad(7)]);
                let (m, s) = ([D2::load(&mean4[q][..2]), D2::load(&mean4[q][2..])], [D2::load(&inv4[q][..2]), D2::load(&inv4[q][2..])]);
                let column = &mut columns[4 * q..4 * q + 4];
                let out = [
                    (lo[0].standardise::<0>(m[0], s[0]), hi[0].standardise::<0>(m[0], s[0])),
                    (lo[1].standardise::<1>(m[0], s[0]), hi[1].standardise::<1>(m[0], s[0])),
                    (lo[2].standardise::<2>(m[1], s[1]), hi[2].standardise::<2>(m[1], s[1])),
                    (lo[3].standardise::<3>(m[1], s[1]), hi[3].standardise::<3>(m[1], s[1])),
                ];
                for (column, (lo, hi)) in column.iter_mut().zip(out) {
                    lo.store(&mut column[..4]);
                    hi.store(&mut column[4..]);
                }
            }
            for j in 4 * quads..d {
                for l in 0..LANES {
                    columns[j][l] = to_internal(row[l][j], mean[j], inv_scale[j]);
                }
            }
        }
        Blocked { data, norms: OnceLock::new(), n, d }
    }

    /// From `n × d` row-major values as they are (tests).
    #[cfg(test)]
    pub fn plain(data: Vec<f32>, d: usize) -> Self {
        Self::from_rows(data, d, &vec![0.0; d], &vec![1.0; d])
    }

    /// Rows including the padding of the last block.
    pub fn padded_rows(&self) -> usize {
        self.n.div_ceil(LANES) * LANES
    }

    /// All blocks as one slice, `LANES × d` values each.
    pub fn raw(&self) -> &[f32] {
        &self.data
    }

    /// ‖x‖² per row, padding included, each row's squares summed in f64 in feature order.
    pub fn norms(&self) -> &[f32] {
        self.norms.get_or_init(|| {
            let mut norms = vec![0.0f32; self.padded_rows()];
            for (block, norm) in self.data.chunks_exact(LANES * self.d).zip(norms.chunks_exact_mut(LANES)) {
                let mut sum = [0.0f64; LANES];
                for column in block.chunks_exact(LANES) {
                    for l in 0..LANES {
                        sum[l] += column[l] as f64 * column[l] as f64;
                    }
                }
                for (norm, sum) in norm.iter_mut().zip(sum) {
                    *norm = sum as f32;
                }
            }
            norms
        })
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.data[(i / LANES) * LANES * self.d + j * LANES + i % LANES]
    }

    /// Row `i` as f64, for centres.
    pub fn row_f64(&self, i: usize) -> impl Iterator<Item = f64> + '_ {
        (0..self.d).map(move |j| self.get(i, j) as f64)
    }

    /// Squared distance of row `i` to `c`, summed feature by feature. The one definition
    /// of an exact distance (Elkan's bounds, relocation; [`Blocked::block_sqdist`], for
    /// the final labelling of a fit and for `assign`, sums the same way), so the fit and
    /// `assign` agree to the last bit.
    #[inline]
    pub fn sqdist(&self, i: usize, c: &[f32]) -> f32 {
        let size = LANES * self.d;
        let (block, lane) = (&self.data[(i / LANES) * size..(i / LANES + 1) * size], i % LANES);
        let mut s = 0.0f32;
        for (column, y) in block.chunks_exact(LANES).zip(c) {
            let t = column[lane] - y;
            s += t * t;
        }
        s
    }

    /// [`Blocked::sqdist`] of the eight rows of block `b`, row `8b + l` to the centre
    /// `winners[l]` (a row of `centres`, `k × d` row-major): the same sums, bit for bit.
    /// Four rows and four features per loop round: the four centres' quads of features
    /// transposed into one vector per feature (a gather would load each value alone).
    #[inline]
    pub fn block_sqdist(&self, b: usize, winners: &[u32], centres: &[f32]) -> [f32; LANES] {
        let d = self.d;
        let size = LANES * d;
        let (columns, _) = self.data[b * size..(b + 1) * size].as_chunks::<LANES>();
        let centre: [&[f32]; LANES] = std::array::from_fn(|l| &centres[winners[l] as usize * d..][..d]);
        let quads = d / 4;
        let mut out = [0.0f32; LANES];
        for half in 0..2 {
            let lanes = 4 * half..4 * half + 4;
            let c: [&[f32]; 4] = std::array::from_fn(|i| centre[lanes.start + i]);
            let mut s = F4::splat(0.0);
            for q in 0..quads {
                let quad = |i: usize| F4::load(&c[i][4 * q..4 * q + 4]);
                let by_feature = F4::transpose([quad(0), quad(1), quad(2), quad(3)]);
                for (f, y) in by_feature.into_iter().enumerate() {
                    let t = F4::load(&columns[4 * q + f][lanes.clone()]).sub(y);
                    s = s.add(t.mul(t));
                }
            }
            let mut s = s.to_array();
            for j in 4 * quads..d {
                for (i, s) in s.iter_mut().enumerate() {
                    let t = columns[j][lanes.start + i] - c[i][j];
                    *s += t * t;
                }
            }
            out[lanes].copy_from_slice(&s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_rows_transposed_and_padded() {
        let rows: Vec<f32> = (0..30).map(|v| v as f32).collect(); // 10 rows × 3
        let x = Blocked::from_rows(rows.clone(), 3, &[0.0, -100.0, -200.0], &[1.0; 3]);
        assert_eq!((x.n, x.d, x.padded_rows()), (10, 3, 16));
        assert_eq!(x.raw().len(), 2 * LANES * 3);
        for i in 0..10 {
            for j in 0..3 {
                assert_eq!(x.get(i, j), rows[i * 3 + j] + 100.0 * j as f32);
            }
        }
        // Padding repeats row 9.
        assert_eq!(x.get(15, 2), x.get(9, 2));
        assert_eq!(x.sqdist(4, &[12.0, 113.0, 214.0]), 0.0);
        assert_eq!(x.norms()[1], 3.0f32.powi(2) + 104.0f32.powi(2) + 205.0f32.powi(2));
    }

    /// Pseudo-random values of both signs and several magnitudes.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|i| ((rng.uniform() - 0.4) * [1.0, 7.3, 1e-3, 250.0][i % 4]) as f32).collect()
    }

    #[test]
    fn standardised_blocks_equal_to_internal_bit_for_bit() {
        // Feature counts with and without whole quads, rows ending in a partial block.
        for d in [1, 3, 4, 5, 8, 11, 25] {
            let n = 21;
            let rows = values(n * d, d as u64);
            let mean: Vec<f64> = (0..d).map(|j| j as f64 * 0.37 - 1.1).collect();
            let inv: Vec<f64> = (0..d).map(|j| 1.0 / (0.3 + j as f64)).collect();
            let x = Blocked::from_rows(rows.clone(), d, &mean, &inv);
            for i in 0..n {
                for j in 0..d {
                    let expect = to_internal(rows[i * d + j], mean[j], inv[j]);
                    assert_eq!(x.get(i, j).to_bits(), expect.to_bits(), "row {i}, feature {j} of {d}");
                }
            }
        }
    }

    #[test]
    fn block_distances_to_the_winners_equal_the_row_ones_bit_for_bit() {
        for d in [1, 3, 4, 5, 8, 11, 25] {
            let x = Blocked::plain(values(13 * d, 100 + d as u64), d);
            let centres = values(3 * d, 200 + d as u64);
            for b in 0..x.padded_rows() / LANES {
                let winners: Vec<u32> = (0..LANES as u32).map(|l| (l + b as u32) % 3).collect();
                let got = x.block_sqdist(b, &winners, &centres);
                for l in 0..LANES {
                    let c = winners[l] as usize;
                    let expect = x.sqdist(b * LANES + l, &centres[c * d..(c + 1) * d]);
                    assert_eq!(got[l].to_bits(), expect.to_bits(), "block {b}, lane {l}, {d} features");
                }
            }
        }
    }
}

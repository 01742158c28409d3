//! The prepared sample: blocks of eight rows, feature-major inside a block (`block[j·8 +
//! lane]` is feature `j` of row `8·b + lane`). The distance kernels then read two SIMD
//! vectors per feature straight from memory instead of transposing rows on every pass;
//! laid out once per fit or `assign`, it is read a few dozen times.
//!
//! The last block is padded with copies of the last row; kernels compute the padding
//! lanes like any other and callers ignore them (`i < n`).

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
    /// From `n × d` row-major values, each passed through `f(value, feature)`. Laid out
    /// in place: the eight rows of a block are contiguous in the row-major order too, so
    /// each block is transposed through a small scratch copy (no second matrix to
    /// allocate and fault in).
    pub fn from_rows(mut data: Vec<f32>, d: usize, f: impl Fn(f32, usize) -> f32) -> Self {
        assert!(d > 0 && data.len().is_multiple_of(d));
        let n = data.len() / d;
        let n_pad = n.div_ceil(LANES) * LANES;
        if n_pad > n {
            let last = data[(n - 1) * d..].to_vec();
            data.reserve_exact((n_pad - n) * d);
            for _ in n..n_pad {
                data.extend_from_slice(&last);
            }
        }
        let mut rows = vec![0.0f32; LANES * d];
        // A block at a time, one feature of its eight rows per loop round: in the sandbox
        // every loop back-edge also checks the deadline, which a round per value would pay
        // n·d times.
        for block in data.chunks_exact_mut(LANES * d) {
            rows.copy_from_slice(block);
            for (j, column) in block.chunks_exact_mut(LANES).enumerate() {
                for l in 0..LANES {
                    column[l] = f(rows[l * d + j], j);
                }
            }
        }
        Blocked { data, norms: OnceLock::new(), n, d }
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
    /// `winners[l]` (a row of `centres`, `k × d` row-major): the same sums, bit for bit,
    /// with one loop round per feature instead of per feature and row.
    #[inline]
    pub fn block_sqdist(&self, b: usize, winners: &[u32], centres: &[f32]) -> [f32; LANES] {
        let size = LANES * self.d;
        let block = &self.data[b * size..(b + 1) * size];
        let base: [usize; LANES] = std::array::from_fn(|l| winners[l] as usize * self.d);
        let mut s = [0.0f32; LANES];
        for (j, column) in block.chunks_exact(LANES).enumerate() {
            for l in 0..LANES {
                let t = column[l] - centres[base[l] + j];
                s[l] += t * t;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_rows_transposed_and_padded() {
        let rows: Vec<f32> = (0..30).map(|v| v as f32).collect(); // 10 rows × 3
        let x = Blocked::from_rows(rows.clone(), 3, |v, j| v + 100.0 * j as f32);
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

    #[test]
    fn block_distances_to_the_winners_equal_the_row_ones_bit_for_bit() {
        let rows: Vec<f32> = (0..13 * 5).map(|i| ((i * 37) % 23) as f32 * 0.37 - 4.0).collect();
        let x = Blocked::from_rows(rows.clone(), 5, |v, j| v * (1.0 + j as f32));
        let centres: Vec<f32> = (0..3 * 5).map(|i| ((i * 11) % 7) as f32 * 0.9 - 2.0).collect();
        for b in 0..x.padded_rows() / LANES {
            let winners: Vec<u32> = (0..LANES as u32).map(|l| (l + b as u32) % 3).collect();
            let got = x.block_sqdist(b, &winners, &centres);
            for l in 0..LANES {
                let c = winners[l] as usize;
                assert_eq!(got[l].to_bits(), x.sqdist(b * LANES + l, &centres[c * 5..(c + 1) * 5]).to_bits());
            }
        }
    }
}

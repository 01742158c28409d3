//! Plain Rust mirrors of the WIT data types, so stage methods run natively too.
//! Every array is flat and row-major; the field docs give the layout.

/// A chunk of an image time series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cube {
    /// ISO `YYYY-MM-DD`, ascending.
    pub dates: Vec<String>,
    pub bands: Vec<String>,
    pub rows: usize,
    pub cols: usize,
    /// `dates × bands × rows × cols`; NaN = missing.
    pub data: Vec<f32>,
    /// `dates × rows × cols` (1 usable, 0 not), or empty when all are usable.
    pub valid: Vec<u8>,
}

impl Cube {
    /// Pixels per band and date.
    #[inline]
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// Index of a band by name.
    pub fn band_index(&self, name: &str) -> Option<usize> {
        self.bands.iter().position(|b| b == name)
    }

    /// The `rows × cols` plane of one band at one date.
    #[inline]
    pub fn plane(&self, date: usize, band: usize) -> &[f32] {
        let n = self.pixels();
        let start = (date * self.bands.len() + band) * n;
        &self.data[start..start + n]
    }

    /// The validity plane of one date, if the chunk carries validity.
    #[inline]
    pub fn valid_plane(&self, date: usize) -> Option<&[u8]> {
        if self.valid.is_empty() {
            return None;
        }
        let n = self.pixels();
        Some(&self.valid[date * n..(date + 1) * n])
    }

    /// Checks that the arrays have the sizes the shape says.
    pub fn check(&self) -> Result<(), crate::StageError> {
        let expect = self.dates.len() * self.bands.len() * self.pixels();
        if self.data.len() != expect {
            return Err(crate::StageError::InvalidInput(format!(
                "cube data has {} values, expected {} dates × {} bands × {} rows × {} cols = {expect}",
                self.data.len(),
                self.dates.len(),
                self.bands.len(),
                self.rows,
                self.cols
            )));
        }
        let expect_valid = self.dates.len() * self.pixels();
        if !self.valid.is_empty() && self.valid.len() != expect_valid {
            return Err(crate::StageError::InvalidInput(format!(
                "cube validity has {} values, expected dates × rows × cols = {expect_valid}",
                self.valid.len()
            )));
        }
        Ok(())
    }
}

/// `samples × features`, row-major; NaN = missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMatrix {
    pub samples: usize,
    pub names: Vec<String>,
    pub data: Vec<f32>,
}

impl FeatureMatrix {
    /// The features of one sample.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        let f = self.names.len();
        &self.data[i * f..(i + 1) * f]
    }

    pub fn check(&self) -> Result<(), crate::StageError> {
        if self.data.len() != self.samples * self.names.len() {
            return Err(crate::StageError::InvalidInput(format!(
                "feature matrix has {} values, expected {} samples × {} features",
                self.data.len(),
                self.samples,
                self.names.len()
            )));
        }
        Ok(())
    }
}

/// `samples × classes` probabilities, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probabilities {
    pub samples: usize,
    pub classes: Vec<u16>,
    pub data: Vec<f32>,
}

/// A trained model in the stage's own versioned format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelBlob {
    /// e.g. `sitsflow-rf/1`.
    pub format: String,
    pub data: Vec<u8>,
}

// Types that only one stage kind uses live with that kind, under `kinds/`; they are
// re-exported here so `sitsflow_sdk::data::*` (and the prelude) still has all of them.
pub use crate::kinds::augmenter::{PatchBatch, ViewPair};
pub use crate::kinds::cloud_mask::{Mask, mask_class};
pub use crate::kinds::clusterer::{Assignment, Fitted};
pub use crate::kinds::decoder::{Decoded, PosteriorSeries};
pub use crate::kinds::labeller::Trained;
pub use crate::kinds::sampler::{SampleInput, Selection};

/// `f(i)` for every `i` in `0..n`, in order, `N` calls per loop round (the last few one
/// by one). In the sandbox every loop back-edge checks the deadline, and the vectors live
/// across it are stored and reloaded around the check: a loop whose round does little
/// (one sample of a scan, one class of a small matrix) pays that per item unless it takes
/// several per round.
#[inline(always)]
pub fn for_each_index<const N: usize>(n: usize, mut f: impl FnMut(usize)) {
    let mut i = 0;
    while i + N <= n {
        for k in 0..N {
            f(i + k);
        }
        i += N;
    }
    while i < n {
        f(i);
        i += 1;
    }
}

/// Whether every value of `values` is finite: sixteen values a loop round, on their bits
/// (exponent all ones is ±∞ or NaN) with no early exit. Natively LLVM vectorises it; in
/// the sandbox it is written in `simd128`, since LLVM's own vectorisation of it for Wasm
/// gathers lanes one by one, and each loop round also checks the deadline there.
#[inline]
pub fn all_finite(values: &[f32]) -> bool {
    let non_finite = |v: &f32| (v.to_bits() & 0x7fff_ffff >= 0x7f80_0000) as u32;
    let mut chunks = values.chunks_exact(16);
    #[cfg(target_arch = "wasm32")]
    let bad = {
        use core::arch::wasm32::*;
        let exponent = u32x4_splat(0x7f80_0000);
        let mut bad = u32x4_splat(0);
        for chunk in &mut chunks {
            let p = chunk.as_ptr() as *const v128;
            // SAFETY: the chunk holds 16 f32, four v128; Wasm loads need no alignment.
            let v = unsafe { [v128_load(p), v128_load(p.add(1)), v128_load(p.add(2)), v128_load(p.add(3))] };
            let hit = v.map(|x| i32x4_eq(v128_and(x, exponent), exponent));
            bad = v128_or(bad, v128_or(v128_or(hit[0], hit[1]), v128_or(hit[2], hit[3])));
        }
        v128_any_true(bad) as u32
    };
    #[cfg(not(target_arch = "wasm32"))]
    let bad = {
        let mut bad = 0u32;
        for chunk in &mut chunks {
            bad |= chunk.iter().map(non_finite).fold(0, |a, b| a | b);
        }
        bad
    };
    bad == 0 && chunks.remainder().iter().map(non_finite).fold(0, |a, b| a | b) == 0
}

#[cfg(test)]
mod rounds_tests {
    #[test]
    fn every_index_once_in_order() {
        for n in 0..11 {
            let mut seen = Vec::new();
            super::for_each_index::<4>(n, |i| seen.push(i));
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
}

#[cfg(test)]
mod finite_tests {
    #[test]
    fn all_finite_finds_nan_and_infinities_anywhere() {
        for len in [0, 1, 15, 16, 17, 40] {
            let v = vec![1.5f32; len];
            assert!(super::all_finite(&v));
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in 0..len {
                    let mut w = v.clone();
                    w[at] = bad;
                    assert!(!super::all_finite(&w), "{bad} at {at} of {len}");
                }
            }
        }
        assert!(super::all_finite(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-45]));
    }
}

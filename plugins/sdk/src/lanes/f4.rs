//! [`F4`]: four f32 lanes, for k-means' distance kernels (nearest centre, four centres
//! per pass) and the in-register transpose and standardisation of its sample matrix.
//! Wasm `simd128` inside the sandbox, a plain array natively, which LLVM lowers to SSE
//! on x86-64.
//!
//! Both implementations do the same IEEE operations lane by lane in the same order,
//! so a fit gives bit-identical results natively and in the sandbox.

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::lanes::D2;
    use core::arch::wasm32::*;

    /// Four f32 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct F4(v128);

    impl F4 {
        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            F4(f32x4_splat(x))
        }

        /// Four lanes from four values.
        pub fn new(a: f32, b: f32, c: f32, d: f32) -> Self {
            F4(f32x4(a, b, c, d))
        }

        /// The first four values of `s`.
        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 4);
            // SAFETY: four f32 are in bounds (checked above); Wasm loads need no alignment.
            F4(unsafe { v128_load(s.as_ptr() as *const v128) })
        }

        /// Writes the lanes into the first four values of `s`.
        #[inline(always)]
        pub fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 4);
            // SAFETY: as in `load`.
            unsafe { v128_store(s.as_mut_ptr() as *mut v128, self.0) }
        }

        /// Lane `L` in all four lanes (one shuffle).
        #[inline(always)]
        pub fn lane<const L: usize>(self) -> Self {
            F4(match L {
                0 => i32x4_shuffle::<0, 0, 0, 0>(self.0, self.0),
                1 => i32x4_shuffle::<1, 1, 1, 1>(self.0, self.0),
                2 => i32x4_shuffle::<2, 2, 2, 2>(self.0, self.0),
                _ => i32x4_shuffle::<3, 3, 3, 3>(self.0, self.0),
            })
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            F4(f32x4_add(self.0, o.0))
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            F4(f32x4_sub(self.0, o.0))
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            F4(f32x4_mul(self.0, o.0))
        }

        /// `o < self ? o : self` per lane (`pmin`: one `minps`, no NaN fix-up).
        #[inline(always)]
        pub fn min(self, o: Self) -> Self {
            F4(f32x4_pmin(self.0, o.0))
        }

        /// `self < o ? o : self` per lane (`pmax`: one `maxps`).
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            F4(f32x4_pmax(self.0, o.0))
        }

        /// Per lane: where `self < best`, take `(self, idx)`, else keep `(best, best_idx)`.
        /// Strict, so on a tie the earlier candidate stays.
        #[inline(always)]
        pub fn keep_smaller(self, idx: Self, best: Self, best_idx: Self) -> (Self, Self) {
            let m = f32x4_lt(self.0, best.0);
            (F4(v128_bitselect(self.0, best.0, m)), F4(v128_bitselect(idx.0, best_idx.0, m)))
        }

        /// `((v as f64 − mean) · inv) as f32` per lane (the standardisation of k-means'
        /// `model::to_internal`), with `mean` and `inv` lane `L` of four values held
        /// in two [`D2`]s: pass the one that holds lane `L` (the first for `L < 2`), whose
        /// lane `L % 2` is used.
        #[inline(always)]
        pub fn standardise<const L: usize>(self, means: D2, invs: D2) -> Self {
            let (m, s) = (means.lane::<L>().0, invs.lane::<L>().0);
            let lo = f64x2_mul(f64x2_sub(f64x2_promote_low_f32x4(self.0), m), s);
            let hi = f64x2_mul(f64x2_sub(f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(self.0, self.0)), m), s);
            F4(i64x2_shuffle::<0, 2>(f32x4_demote_f64x2_zero(lo), f32x4_demote_f64x2_zero(hi)))
        }

        /// Four vectors as the columns of a 4 × 4 matrix: lane `i` of result `j` is lane
        /// `j` of `r[i]`.
        #[inline(always)]
        pub fn transpose(r: [Self; 4]) -> [Self; 4] {
            let t0 = i32x4_shuffle::<0, 4, 1, 5>(r[0].0, r[1].0);
            let t1 = i32x4_shuffle::<2, 6, 3, 7>(r[0].0, r[1].0);
            let t2 = i32x4_shuffle::<0, 4, 1, 5>(r[2].0, r[3].0);
            let t3 = i32x4_shuffle::<2, 6, 3, 7>(r[2].0, r[3].0);
            [
                F4(i64x2_shuffle::<0, 2>(t0, t2)),
                F4(i64x2_shuffle::<1, 3>(t0, t2)),
                F4(i64x2_shuffle::<0, 2>(t1, t3)),
                F4(i64x2_shuffle::<1, 3>(t1, t3)),
            ]
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 4] {
            [
                f32x4_extract_lane::<0>(self.0),
                f32x4_extract_lane::<1>(self.0),
                f32x4_extract_lane::<2>(self.0),
                f32x4_extract_lane::<3>(self.0),
            ]
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::lanes::D2;

    /// Four f32 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct F4([f32; 4]);

    impl F4 {
        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            F4([x; 4])
        }

        /// Four lanes from four values.
        pub fn new(a: f32, b: f32, c: f32, d: f32) -> Self {
            F4([a, b, c, d])
        }

        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            F4([s[0], s[1], s[2], s[3]])
        }

        #[inline(always)]
        pub fn store(self, s: &mut [f32]) {
            s[..4].copy_from_slice(&self.0);
        }

        #[inline(always)]
        pub fn lane<const L: usize>(self) -> Self {
            F4([self.0[L]; 4])
        }

        #[inline(always)]
        fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
            F4([f(self.0[0], o.0[0]), f(self.0[1], o.0[1]), f(self.0[2], o.0[2]), f(self.0[3], o.0[3])])
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            self.zip(o, |a, b| a + b)
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            self.zip(o, |a, b| a - b)
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            self.zip(o, |a, b| a * b)
        }

        #[inline(always)]
        pub fn min(self, o: Self) -> Self {
            self.zip(o, |a, b| if b < a { b } else { a })
        }

        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            self.zip(o, |a, b| if a < b { b } else { a })
        }

        #[inline(always)]
        pub fn keep_smaller(self, idx: Self, best: Self, best_idx: Self) -> (Self, Self) {
            let mut v = best.0;
            let mut i = best_idx.0;
            for l in 0..4 {
                if self.0[l] < best.0[l] {
                    v[l] = self.0[l];
                    i[l] = idx.0[l];
                }
            }
            (F4(v), F4(i))
        }

        #[inline(always)]
        pub fn standardise<const L: usize>(self, means: D2, invs: D2) -> Self {
            let (m, s) = (means.0[L % 2], invs.0[L % 2]);
            F4(self.0.map(|v| ((v as f64 - m) * s) as f32))
        }

        #[inline(always)]
        pub fn transpose(r: [Self; 4]) -> [Self; 4] {
            std::array::from_fn(|j| F4(std::array::from_fn(|i| r[i].0[j])))
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 4] {
            self.0
        }
    }
}

pub use imp::F4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_and_max_per_lane() {
        let (a, b) = (F4::new(1.0, -2.0, 3.0, 0.0), F4::new(0.5, 0.0, 4.0, 0.0));
        assert_eq!(a.min(b).to_array(), [0.5, -2.0, 3.0, 0.0]);
        assert_eq!(a.max(b).to_array(), [1.0, 0.0, 4.0, 0.0]);
    }

    #[test]
    fn keep_smaller_keeps_the_earlier_candidate_on_ties() {
        let (v, i) = F4::new(1.0, 2.0, 3.0, 0.5).keep_smaller(
            F4::splat(9.0),
            F4::new(1.0, 5.0, 1.0, 1.0),
            F4::splat(4.0),
        );
        assert_eq!(v.to_array(), [1.0, 2.0, 1.0, 0.5]);
        assert_eq!(i.to_array(), [4.0, 9.0, 4.0, 9.0]);
    }
}

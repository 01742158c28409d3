//! A 4-lane f32 vector, so the distance kernels are written once: Wasm `simd128`
//! inside the sandbox (the workspace's `.cargo/config.toml` enables it), a plain
//! array natively, which LLVM lowers to SSE on x86-64.
//!
//! Both implementations do the same IEEE operations lane by lane in the same order,
//! so a fit gives bit-identical results natively and in the sandbox.

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::arch::wasm32::*;

    #[derive(Clone, Copy)]
    pub struct F4(v128);

    impl F4 {
        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            F4(f32x4_splat(x))
        }

        #[cfg(test)]
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
    #[derive(Clone, Copy)]
    pub struct F4([f32; 4]);

    impl F4 {
        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            F4([x; 4])
        }

        #[cfg(test)]
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

//! [`D4`]: four f64 lanes widened from four f32 features, for reliable-samples' column
//! sums and weighted distances, so they are written once: two Wasm `simd128` vectors
//! inside the sandbox (LLVM leaves these loops scalar for Wasm, and Cranelift then
//! spills their many f64 values), two SSE2 vectors natively on x86-64 (the same width,
//! so the bench compares like with like), a plain array elsewhere.
//!
//! Lane `l` of a `D4` loaded at feature `j` (a multiple of 4) always holds feature
//! `j + l`, and every operation is the same IEEE operation lane by lane, so all
//! implementations give the same bits as a scalar loop that adds feature `j` into
//! accumulator `j % 4`.

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::arch::wasm32::*;

    /// Four f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct D4(v128, v128);

    impl D4 {
        #[inline(always)]
        pub fn zero() -> Self {
            D4(f64x2_splat(0.0), f64x2_splat(0.0))
        }

        /// The first four values of `s`, widened to f64.
        #[inline(always)]
        pub fn widen(s: &[f32]) -> Self {
            assert!(s.len() >= 4);
            // SAFETY: four f32 are in bounds (checked above); Wasm loads need no alignment.
            let v = unsafe { v128_load(s.as_ptr() as *const v128) };
            D4(f64x2_promote_low_f32x4(v), f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(v, v)))
        }

        /// The first four values of `s`.
        #[inline(always)]
        pub fn load(s: &[f64]) -> Self {
            assert!(s.len() >= 4);
            let p = s.as_ptr() as *const v128;
            // SAFETY: as in `widen`: four f64, two v128, are in bounds.
            unsafe { D4(v128_load(p), v128_load(p.add(1))) }
        }

        /// Writes the lanes into the first four values of `s`.
        #[inline(always)]
        pub fn store(self, s: &mut [f64]) {
            assert!(s.len() >= 4);
            let p = s.as_mut_ptr() as *mut v128;
            // SAFETY: as in `load`.
            unsafe {
                v128_store(p, self.0);
                v128_store(p.add(1), self.1);
            }
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            D4(f64x2_add(self.0, o.0), f64x2_add(self.1, o.1))
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            D4(f64x2_sub(self.0, o.0), f64x2_sub(self.1, o.1))
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            D4(f64x2_mul(self.0, o.0), f64x2_mul(self.1, o.1))
        }

        #[inline(always)]
        pub fn to_array(self) -> [f64; 4] {
            [
                f64x2_extract_lane::<0>(self.0),
                f64x2_extract_lane::<1>(self.0),
                f64x2_extract_lane::<0>(self.1),
                f64x2_extract_lane::<1>(self.1),
            ]
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use core::arch::x86_64::*;

    /// Four f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct D4(__m128d, __m128d);

    // SAFETY (all blocks below): SSE2 is part of x86-64, so its intrinsics are always
    // available; loads are unaligned and in bounds (asserted).
    impl D4 {
        #[inline(always)]
        pub fn zero() -> Self {
            unsafe { D4(_mm_setzero_pd(), _mm_setzero_pd()) }
        }

        #[inline(always)]
        pub fn widen(s: &[f32]) -> Self {
            assert!(s.len() >= 4);
            unsafe {
                let v = _mm_loadu_ps(s.as_ptr());
                D4(_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v)))
            }
        }

        #[inline(always)]
        pub fn load(s: &[f64]) -> Self {
            assert!(s.len() >= 4);
            unsafe { D4(_mm_loadu_pd(s.as_ptr()), _mm_loadu_pd(s.as_ptr().add(2))) }
        }

        #[inline(always)]
        pub fn store(self, s: &mut [f64]) {
            assert!(s.len() >= 4);
            unsafe {
                _mm_storeu_pd(s.as_mut_ptr(), self.0);
                _mm_storeu_pd(s.as_mut_ptr().add(2), self.1);
            }
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            unsafe { D4(_mm_add_pd(self.0, o.0), _mm_add_pd(self.1, o.1)) }
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            unsafe { D4(_mm_sub_pd(self.0, o.0), _mm_sub_pd(self.1, o.1)) }
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            unsafe { D4(_mm_mul_pd(self.0, o.0), _mm_mul_pd(self.1, o.1)) }
        }

        #[inline(always)]
        pub fn to_array(self) -> [f64; 4] {
            let mut a = [0f64; 4];
            unsafe {
                _mm_storeu_pd(a.as_mut_ptr(), self.0);
                _mm_storeu_pd(a.as_mut_ptr().add(2), self.1);
            }
            a
        }
    }
}

#[cfg(not(any(target_arch = "wasm32", target_arch = "x86_64")))]
mod imp {
    /// Four f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct D4([f64; 4]);

    impl D4 {
        #[inline(always)]
        pub fn zero() -> Self {
            D4([0.0; 4])
        }

        #[inline(always)]
        pub fn widen(s: &[f32]) -> Self {
            D4([s[0] as f64, s[1] as f64, s[2] as f64, s[3] as f64])
        }

        #[inline(always)]
        pub fn load(s: &[f64]) -> Self {
            D4([s[0], s[1], s[2], s[3]])
        }

        #[inline(always)]
        pub fn store(self, s: &mut [f64]) {
            s[..4].copy_from_slice(&self.0);
        }

        #[inline(always)]
        fn zip(self, o: Self, f: impl Fn(f64, f64) -> f64) -> Self {
            D4([f(self.0[0], o.0[0]), f(self.0[1], o.0[1]), f(self.0[2], o.0[2]), f(self.0[3], o.0[3])])
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
        pub fn to_array(self) -> [f64; 4] {
            self.0
        }
    }
}

pub use imp::D4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hold_features_in_order() {
        let v = [1.5f32, -2.0, 3.25, f32::MAX, 9.0];
        assert_eq!(D4::widen(&v).to_array(), [1.5, -2.0, 3.25, f32::MAX as f64]);
        let c = [0.5, 1.0, 0.25, 0.0];
        let d = D4::widen(&v).sub(D4::load(&c));
        assert_eq!(d.mul(d).add(D4::zero()).to_array(), [1.0, 9.0, 9.0, (f32::MAX as f64).powi(2)]);
    }
}

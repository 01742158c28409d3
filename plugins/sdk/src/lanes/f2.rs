//! [`F2`]: two f64 lanes — two pixels decoded side by side — and [`Wide`], `N` of them,
//! for markov's Viterbi and forward-backward kernels, so they are written once: Wasm
//! `simd128` inside the sandbox, SSE2 on x86-64 (always present there), a plain pair
//! elsewhere. The vector operations are written out because the compiler, left to
//! itself, turns Viterbi's compare-and-select into branches and vectorises only part
//! of it.
//!
//! Every implementation does the same IEEE operations lane by lane, so the lanes never
//! mix and the arithmetic is the same natively and in the sandbox.

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::arch::wasm32::*;

    /// Two f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy, Debug)]
    pub struct F2(v128);

    impl F2 {
        #[inline(always)]
        pub fn splat(x: f64) -> Self {
            F2(f64x2_splat(x))
        }
        #[inline(always)]
        pub fn new(a: [f64; 2]) -> Self {
            F2(f64x2(a[0], a[1]))
        }
        #[inline(always)]
        pub fn to_array(self) -> [f64; 2] {
            [f64x2_extract_lane::<0>(self.0), f64x2_extract_lane::<1>(self.0)]
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            F2(f64x2_add(self.0, o.0))
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            F2(f64x2_mul(self.0, o.0))
        }
        #[inline(always)]
        pub fn div(self, o: Self) -> Self {
            F2(f64x2_div(self.0, o.0))
        }
        /// `self < o ? o : self` per lane.
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            F2(f64x2_pmax(self.0, o.0))
        }
        /// Per lane: where `self > best`, take `(self, tag)`, else keep `(best, best_tag)`.
        /// Strict, so on a tie the earlier candidate stays.
        #[inline(always)]
        pub fn keep_larger(self, tag: Self, best: Self, best_tag: Self) -> (Self, Self) {
            let m = f64x2_gt(self.0, best.0);
            (F2(v128_bitselect(self.0, best.0, m)), F2(v128_bitselect(tag.0, best_tag.0, m)))
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    //! SAFETY (every `unsafe` here): the intrinsics need SSE2, which every x86-64 CPU has
    //! (it is in the target's baseline); they touch no memory.
    use core::arch::x86_64::*;

    /// Two f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy, Debug)]
    pub struct F2(__m128d);

    impl F2 {
        #[inline(always)]
        pub fn splat(x: f64) -> Self {
            unsafe { F2(_mm_set1_pd(x)) }
        }
        #[inline(always)]
        pub fn new(a: [f64; 2]) -> Self {
            unsafe { F2(_mm_set_pd(a[1], a[0])) }
        }
        #[inline(always)]
        pub fn to_array(self) -> [f64; 2] {
            unsafe { [_mm_cvtsd_f64(self.0), _mm_cvtsd_f64(_mm_unpackhi_pd(self.0, self.0))] }
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            unsafe { F2(_mm_add_pd(self.0, o.0)) }
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            unsafe { F2(_mm_mul_pd(self.0, o.0)) }
        }
        #[inline(always)]
        pub fn div(self, o: Self) -> Self {
            unsafe { F2(_mm_div_pd(self.0, o.0)) }
        }
        /// `self < o ? o : self` per lane (`maxpd` returns its second operand when unordered
        /// or equal, hence the swap).
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            unsafe { F2(_mm_max_pd(o.0, self.0)) }
        }
        /// Per lane: where `self > best`, take `(self, tag)`, else keep `(best, best_tag)`.
        /// Strict, so on a tie the earlier candidate stays.
        #[inline(always)]
        pub fn keep_larger(self, tag: Self, best: Self, best_tag: Self) -> (Self, Self) {
            let m = unsafe { _mm_cmpgt_pd(self.0, best.0) };
            let pick = |a: __m128d, b: __m128d| unsafe { _mm_or_pd(_mm_and_pd(m, a), _mm_andnot_pd(m, b)) };
            (F2(pick(self.0, best.0)), F2(pick(tag.0, best_tag.0)))
        }
    }
}

#[cfg(not(any(target_arch = "wasm32", target_arch = "x86_64")))]
mod imp {
    /// Two f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy, Debug)]
    pub struct F2([f64; 2]);

    impl F2 {
        #[inline(always)]
        pub fn splat(x: f64) -> Self {
            F2([x; 2])
        }
        #[inline(always)]
        pub fn new(a: [f64; 2]) -> Self {
            F2(a)
        }
        #[inline(always)]
        pub fn to_array(self) -> [f64; 2] {
            self.0
        }
        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            F2([self.0[0] + o.0[0], self.0[1] + o.0[1]])
        }
        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            F2([self.0[0] * o.0[0], self.0[1] * o.0[1]])
        }
        #[inline(always)]
        pub fn div(self, o: Self) -> Self {
            F2([self.0[0] / o.0[0], self.0[1] / o.0[1]])
        }
        #[inline(always)]
        pub fn max(self, o: Self) -> Self {
            F2([0, 1].map(|k| if self.0[k] < o.0[k] { o.0[k] } else { self.0[k] }))
        }
        #[inline(always)]
        pub fn keep_larger(self, tag: Self, best: Self, best_tag: Self) -> (Self, Self) {
            let m = [0, 1].map(|k| self.0[k] > best.0[k]);
            (
                F2([0, 1].map(|k| if m[k] { self.0[k] } else { best.0[k] })),
                F2([0, 1].map(|k| if m[k] { tag.0[k] } else { best_tag.0[k] })),
            )
        }
    }
}

pub use imp::F2;

impl F2 {
    /// Lane `k` (0 or 1).
    #[inline(always)]
    pub fn lane(self, k: usize) -> f64 {
        self.to_array()[k]
    }
}

/// `2·N` lanes as `N` vectors of two, with the operations of [`F2`] on each: more pixels
/// per loop round, so the per-round costs (in the sandbox, a deadline check and reloading
/// what its slow path spilled) are shared by more work.
#[derive(Clone, Copy, Debug)]
pub struct Wide<const N: usize>([F2; N]);

impl<const N: usize> Wide<N> {
    #[inline(always)]
    pub fn splat(x: f64) -> Self {
        Wide([F2::splat(x); N])
    }
    /// From `2·N` values (`a.len()` must be `2·N`).
    #[inline(always)]
    pub fn new(a: &[f64]) -> Self {
        assert_eq!(a.len(), 2 * N);
        Wide(std::array::from_fn(|v| F2::new([a[2 * v], a[2 * v + 1]])))
    }
    /// Into `2·N` values.
    #[inline(always)]
    pub fn write(self, out: &mut [f64]) {
        assert_eq!(out.len(), 2 * N);
        for (v, o) in self.0.iter().zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&v.to_array());
        }
    }
    /// `f` on each pair of vectors.
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(F2, F2) -> F2) -> Self {
        Wide(std::array::from_fn(|v| f(self.0[v], o.0[v])))
    }
    #[inline(always)]
    pub fn add(self, o: Self) -> Self {
        self.zip(o, F2::add)
    }
    #[inline(always)]
    pub fn mul(self, o: Self) -> Self {
        self.zip(o, F2::mul)
    }
    #[inline(always)]
    pub fn div(self, o: Self) -> Self {
        self.zip(o, F2::div)
    }
    /// As [`F2::max`], lane by lane.
    #[inline(always)]
    pub fn max(self, o: Self) -> Self {
        self.zip(o, F2::max)
    }
    /// As [`F2::keep_larger`], lane by lane.
    #[inline(always)]
    pub fn keep_larger(self, tag: Self, best: Self, best_tag: Self) -> (Self, Self) {
        let mut out = (best, best_tag);
        for v in 0..N {
            (out.0.0[v], out.1.0[v]) = self.0[v].keep_larger(tag.0[v], best.0[v], best_tag.0[v]);
        }
        out
    }
    /// Lane `k` (below `2·N`).
    #[inline(always)]
    pub fn lane(self, k: usize) -> f64 {
        self.0[k / 2].lane(k % 2)
    }
}

#[cfg(test)]
mod tests {
    use super::F2;

    #[test]
    fn lanes_stay_apart() {
        let (a, b) = (F2::new([1.0, -2.0]), F2::new([3.0, 0.5]));
        assert_eq!(a.add(b).to_array(), [4.0, -1.5]);
        assert_eq!(a.mul(b).to_array(), [3.0, -1.0]);
        assert_eq!(a.div(b).to_array(), [1.0 / 3.0, -4.0]);
        assert_eq!(a.max(b).to_array(), [3.0, 0.5]);
        assert_eq!(F2::splat(f64::NEG_INFINITY).max(a).to_array(), [1.0, -2.0]);
        // Lane 0 is larger, lane 1 ties: the tie keeps the earlier (best) tag.
        let (best, tag) = F2::new([5.0, 0.5]).keep_larger(F2::splat(7.0), b, F2::splat(1.0));
        assert_eq!(best.to_array(), [5.0, 0.5]);
        assert_eq!(tag.to_array(), [7.0, 1.0]);
        assert_eq!(a.lane(1), -2.0);
    }
}

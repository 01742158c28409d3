//! [`D2`]: two f64 lanes, one 128-bit vector in the sandbox and a plain `[f64; 2]`
//! natively. The `indices` statistics keep their f64 sums in it (two of a
//! [`V4`](crate::lanes::V4)'s four pixels each); k-means loads its standardisation means
//! and scales into it for [`F4::standardise`](crate::lanes::F4::standardise).
//!
//! Both implementations do the same IEEE operations lane by lane in the same order.

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::arch::wasm32::*;

    /// Two f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct D2(pub(in crate::lanes) v128);

    impl D2 {
        #[inline(always)]
        pub fn new(a: f64, b: f64) -> Self {
            D2(f64x2(a, b))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            D2(f64x2_add(self.0, o.0))
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            D2(f64x2_sub(self.0, o.0))
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            D2(f64x2_mul(self.0, o.0))
        }

        /// `mask ? a : b` per lane.
        #[inline(always)]
        pub fn select(mask: Self, a: Self, b: Self) -> Self {
            D2(v128_bitselect(a.0, b.0, mask.0))
        }

        #[inline(always)]
        pub fn to_array(self) -> [f64; 2] {
            [f64x2_extract_lane::<0>(self.0), f64x2_extract_lane::<1>(self.0)]
        }

        /// The first two values of `s`.
        #[inline(always)]
        pub fn load(s: &[f64]) -> Self {
            assert!(s.len() >= 2);
            // SAFETY: two f64 are in bounds (checked above); Wasm loads need no alignment.
            D2(unsafe { v128_load(s.as_ptr() as *const v128) })
        }

        /// Lane `L` of four lanes held by two vectors: lane `L % 2` of `self` (the first
        /// two) or of the second.
        #[inline(always)]
        pub(in crate::lanes) fn lane<const L: usize>(self) -> Self {
            D2(match L % 2 {
                0 => i64x2_shuffle::<0, 0>(self.0, self.0),
                _ => i64x2_shuffle::<1, 1>(self.0, self.0),
            })
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    /// Two f64 lanes (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct D2(pub(in crate::lanes) [f64; 2]);

    impl D2 {
        #[inline(always)]
        pub fn new(a: f64, b: f64) -> Self {
            D2([a, b])
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            D2([self.0[0] + o.0[0], self.0[1] + o.0[1]])
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            D2([self.0[0] - o.0[0], self.0[1] - o.0[1]])
        }

        #[inline(always)]
        pub fn mul(self, o: Self) -> Self {
            D2([self.0[0] * o.0[0], self.0[1] * o.0[1]])
        }

        #[inline(always)]
        pub fn select(mask: Self, a: Self, b: Self) -> Self {
            let pick = |l: usize| if mask.0[l].to_bits() != 0 { a.0[l] } else { b.0[l] };
            D2([pick(0), pick(1)])
        }

        #[inline(always)]
        pub fn to_array(self) -> [f64; 2] {
            self.0
        }

        /// The first two values of `s`.
        #[inline(always)]
        pub fn load(s: &[f64]) -> Self {
            D2([s[0], s[1]])
        }
    }
}

pub use imp::D2;

#[cfg(test)]
mod tests {
    use super::D2;

    #[test]
    fn lanes_stay_apart_and_select_by_mask() {
        let (a, b) = (D2::load(&[1.5, -2.0, 9.0]), D2::new(0.5, 4.0));
        assert_eq!(a.add(b).to_array(), [2.0, 2.0]);
        assert_eq!(a.sub(b).to_array(), [1.0, -6.0]);
        assert_eq!(a.mul(b).to_array(), [0.75, -8.0]);
        // A mask lane is all ones or all zeros (as `V4::low_mask` makes them).
        let mask = D2::new(f64::from_bits(u64::MAX), 0.0);
        assert_eq!(D2::select(mask, a, b).to_array(), [1.5, 4.0]);
    }
}

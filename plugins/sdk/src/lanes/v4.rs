//! [`V4`]: four 32-bit lanes, one date of four pixels side by side, so the `indices`
//! temporal statistics are computed for four pixels at once: f32 values, their
//! total-order keys as i32, or lane masks; two of its lanes widen into a
//! [`D2`](crate::lanes::D2) for the f64 sums. Wasm `simd128` inside the sandbox, plain
//! arrays (of the lanes' bits) natively.
//!
//! Both implementations do the same IEEE operations lane by lane, so a pixel's
//! statistics are the same bits in the sandbox, natively, and as the indices stage's
//! scalar `stats_into` computes them one pixel at a time.

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::lanes::D2;
    use core::arch::wasm32::*;

    /// Four 32-bit lanes: values, keys or masks (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct V4(v128);

    impl V4 {
        /// The first four values of `s`.
        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 4);
            // SAFETY: four f32 are in bounds (checked above); Wasm loads need no alignment.
            V4(unsafe { v128_load(s.as_ptr() as *const v128) })
        }

        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            V4(f32x4_splat(x))
        }

        #[inline(always)]
        pub fn splat_bits(x: u32) -> Self {
            V4(u32x4_splat(x))
        }

        /// All ones where the lane is not NaN.
        #[inline(always)]
        pub fn valid(self) -> Self {
            V4(f32x4_eq(self.0, self.0))
        }

        /// `mask ? a : b` per lane.
        #[inline(always)]
        pub fn select(mask: Self, a: Self, b: Self) -> Self {
            V4(v128_bitselect(a.0, b.0, mask.0))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            V4(f32x4_add(self.0, o.0))
        }

        /// Total-order keys of f32 values (negative values' magnitude bits flipped),
        /// compared as i32; the key of a key is the value again.
        #[inline(always)]
        pub fn key(self) -> Self {
            V4(v128_xor(self.0, u32x4_shr(i32x4_shr(self.0, 31), 1)))
        }

        /// Lane-wise minimum and maximum of keys, as i32.
        #[inline(always)]
        pub fn min_max(self, o: Self) -> (Self, Self) {
            (V4(i32x4_min(self.0, o.0)), V4(i32x4_max(self.0, o.0)))
        }

        /// The lanes as f32.
        #[inline(always)]
        pub fn values(self) -> [f32; 4] {
            [
                f32x4_extract_lane::<0>(self.0),
                f32x4_extract_lane::<1>(self.0),
                f32x4_extract_lane::<2>(self.0),
                f32x4_extract_lane::<3>(self.0),
            ]
        }

        /// Lanes 0, 1 as f64 (values), or as 64-bit masks (masks).
        #[inline(always)]
        pub fn low(self) -> D2 {
            D2(f64x2_promote_low_f32x4(self.0))
        }

        #[inline(always)]
        pub fn high(self) -> D2 {
            D2(f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(self.0, self.0)))
        }

        #[inline(always)]
        pub fn low_mask(self) -> D2 {
            D2(i64x2_extend_low_i32x4(self.0))
        }

        #[inline(always)]
        pub fn high_mask(self) -> D2 {
            D2(i64x2_extend_high_i32x4(self.0))
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::lanes::D2;

    /// Four 32-bit lanes: values, keys or masks (see the [module](crate::lanes) docs).
    #[derive(Clone, Copy)]
    pub struct V4([u32; 4]);

    impl V4 {
        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            V4([s[0].to_bits(), s[1].to_bits(), s[2].to_bits(), s[3].to_bits()])
        }

        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            V4([x.to_bits(); 4])
        }

        #[inline(always)]
        pub fn splat_bits(x: u32) -> Self {
            V4([x; 4])
        }

        #[inline(always)]
        pub fn valid(self) -> Self {
            V4(self.0.map(|b| if f32::from_bits(b).is_nan() { 0 } else { u32::MAX }))
        }

        #[inline(always)]
        pub fn select(mask: Self, a: Self, b: Self) -> Self {
            V4(std::array::from_fn(|l| (a.0[l] & mask.0[l]) | (b.0[l] & !mask.0[l])))
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            V4(std::array::from_fn(|l| (f32::from_bits(self.0[l]) + f32::from_bits(o.0[l])).to_bits()))
        }

        #[inline(always)]
        pub fn key(self) -> Self {
            V4(self.0.map(|b| b ^ (((b as i32 >> 31) as u32) >> 1)))
        }

        #[inline(always)]
        pub fn min_max(self, o: Self) -> (Self, Self) {
            let (a, b) = (self.0.map(|v| v as i32), o.0.map(|v| v as i32));
            (V4(std::array::from_fn(|l| a[l].min(b[l]) as u32)), V4(std::array::from_fn(|l| a[l].max(b[l]) as u32)))
        }

        #[inline(always)]
        pub fn values(self) -> [f32; 4] {
            self.0.map(f32::from_bits)
        }

        #[inline(always)]
        pub fn low(self) -> D2 {
            D2([f32::from_bits(self.0[0]) as f64, f32::from_bits(self.0[1]) as f64])
        }

        #[inline(always)]
        pub fn high(self) -> D2 {
            D2([f32::from_bits(self.0[2]) as f64, f32::from_bits(self.0[3]) as f64])
        }

        #[inline(always)]
        pub fn low_mask(self) -> D2 {
            D2([f64::from_bits(self.0[0] as i32 as i64 as u64), f64::from_bits(self.0[1] as i32 as i64 as u64)])
        }

        #[inline(always)]
        pub fn high_mask(self) -> D2 {
            D2([f64::from_bits(self.0[2] as i32 as i64 as u64), f64::from_bits(self.0[3] as i32 as i64 as u64)])
        }
    }
}

pub use imp::V4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_values_totally() {
        let values = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                let (ka, kb) = (V4::splat(*a).key().values()[0].to_bits() as i32, V4::splat(*b).key().values()[0].to_bits() as i32);
                assert_eq!(ka.cmp(&kb), i.cmp(&j), "{a} vs {b}");
            }
            assert_eq!(V4::splat(*a).key().key().values()[0].to_bits(), a.to_bits());
        }
        // A NaN's validity mask is zero, a value's all ones.
        let v = V4::load(&[1.0, f32::NAN, -0.0, f32::INFINITY]).valid().values().map(f32::to_bits);
        assert_eq!(v, [u32::MAX, 0, u32::MAX, u32::MAX]);
    }
}

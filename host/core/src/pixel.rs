//! The value types of the rasters a run writes.

/// The value type of an output's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelType {
    /// Unsigned 8-bit, as cloud masks are (nodata 255).
    U8,
    /// Unsigned 16-bit, as class maps are (nodata 0).
    U16,
    /// Unsigned 32-bit, for from → to codes too wide for 16 bits (nodata 0).
    U32,
    /// 32-bit float, as features and probabilities are (nodata NaN).
    F32,
}

//! SIMD lane types: small fixed-width vectors with one implementation per target, so a
//! stage's hot loops are written once and give the same bits in the sandbox and natively.
//!
//! Each type wraps Wasm `simd128` vectors inside the sandbox (`core::arch::wasm32`; the
//! workspace's `.cargo/config.toml` builds components with `+simd128`) and a native twin:
//! SSE2 vectors on x86-64 where noted, plain arrays otherwise (LLVM lowers those to SSE
//! where it can). We write the vector operations out because LLVM leaves many of these
//! loops scalar for Wasm, or turns a compare-and-select into branches.
//!
//! | type | lanes | sandbox | native | used by |
//! |------|-------|---------|--------|---------|
//! | [`F4`] | 4 × f32 | one `v128` | `[f32; 4]` | kmeans: distance kernels, transpose and standardisation of the sample matrix |
//! | [`V4`] | 4 × 32 bits (f32 values, i32 total-order keys, masks) | one `v128` | `[u32; 4]` (the bits) | indices: temporal statistics of four pixels at once |
//! | [`D2`] | 2 × f64 | one `v128` | `[f64; 2]` | indices: f64 sums of two of a [`V4`]'s pixels; kmeans: means and scales for [`F4::standardise`] |
//! | [`D4`] | 4 × f64 (widened from f32) | two `v128` | two SSE2 `__m128d` on x86-64, `[f64; 4]` elsewhere | reliable-samples: column sums and weighted distances |
//! | [`F2`] | 2 × f64 | one `v128` | one SSE2 `__m128d` on x86-64, `[f64; 2]` elsewhere | markov: Viterbi and forward-backward, two pixels per vector |
//! | [`Wide<N>`](Wide) | 2·N × f64 | `N` × [`F2`] | `N` × [`F2`] | markov: more pixels per loop round |
//!
//! [`D2`] and [`F2`] both hold two f64 but are different types on purpose: natively `D2`
//! is an array and `F2` an SSE2 register with hand-picked instructions (`maxpd` with its
//! operands swapped, and-or selects), and their operation sets differ. Likewise [`F4`]
//! and [`V4`] (natively `[f32; 4]` against the lanes' bits in `[u32; 4]`).
//!
//! # Invariant
//!
//! Every implementation of a type does the same IEEE operations lane by lane in the same
//! order (lanes never mix except in the explicit shuffles, transposes and widenings,
//! which move values without rounding them), so a stage gives bit-identical results in
//! the sandbox and natively, and the same bits as the scalar loop it replaces. Do not
//! change an operation, its order, or the native twin of one without the other. The
//! workspace's sandbox-vs-native tests (`kmeans::sandbox_and_native_fits_are_identical`,
//! `sandbox::reliable_samples_select_the_same_pixels_in_the_sandbox_and_natively`,
//! `sandbox::indices_statistics_are_the_same_bits_in_the_sandbox_and_natively`), the
//! stages' unit tests against their scalar loops and this module's own tests check it.
//!
//! Every operation is `#[inline(always)]` (all but [`F4::new`], a constructor for
//! tests): the types live in this crate and are used from the stages' crates, and their
//! hot loops rely on each operation being one or two instructions in place, never a
//! call. Keep it on any operation added here.

// `add`, `mul`, … are named methods on purpose, one vector operation each, rather than
// `std::ops` impls; clippy flags them now that the types are public.
#![allow(clippy::should_implement_trait)]

mod d2;
mod d4;
mod f2;
mod f4;
mod v4;

pub use d2::D2;
pub use d4::D4;
pub use f2::{F2, Wide};
pub use f4::F4;
pub use v4::V4;

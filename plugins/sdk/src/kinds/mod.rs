//! The stage kinds, one file each: the kind's trait, the types only that kind uses, its
//! `export_<kind>_stage!` macro and its WIT world module (`world`). The crate root
//! re-exports the traits, [`data`](crate::data) the types, and `wit` the worlds under
//! their `<kind>_stage` names, so no public path depends on this layout.
//!
//! What all kinds share stays outside: [`Stage`](crate::Stage),
//! [`StageError`](crate::StageError), the shared data types, the WIT conversions in
//! `glue`, and the `cloud-mask-stage` world, which stays in `wit` because it carries the
//! `types` and `host` interfaces every other world reuses.
//!
//! A new kind is one file here (its `mod` line below, its re-exports at the crate root
//! and in `wit`), plus one arm in [`StageKind`](crate::StageKind) and one in
//! `glue::describe`: those two are the registries of kinds.

pub mod augmenter;
pub mod cloud_mask;
pub mod clusterer;
pub mod decoder;
pub mod features;
pub mod labeller;
pub mod sampler;

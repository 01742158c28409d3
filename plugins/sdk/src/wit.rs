//! Bindings generated from `wit/stage.wit`, one module per stage world. The shared
//! `types` and `host` interfaces are generated once (in `cloud_mask_stage`) and reused
//! by the other worlds, so conversions in `glue` are written once. Each kind's own world
//! is generated in its file under `kinds/` and re-exported here under its old name.

/// The `cloud-mask-stage` world; also home of the shared `types` and `host` interfaces.
///
/// It stays here rather than in `kinds/cloud_mask.rs` because generating it is what
/// generates the shared interfaces: every other world maps its `types` and `host` onto
/// these (see `world!` below), and `glue` and `host` use them. Moved, it would make one
/// kind's file the home of what all kinds share.
pub mod cloud_mask_stage {
    wit_bindgen::generate!({
        path: "wit",
        world: "cloud-mask-stage",
        pub_export_macro: true,
        export_macro_name: "export_cloud_mask_world",
        default_bindings_module: "sitsflow_sdk::wit::cloud_mask_stage",
    });
}

pub use cloud_mask_stage::sitsflow::stage::{host, types};

/// Generates a kind's world as `pub mod $module`, reusing the shared `types` and `host`
/// interfaces of [`cloud_mask_stage`]. Invoked from each file under `kinds/`.
macro_rules! world {
    ($module:ident, $world:literal, $macro_name:literal, $bindings:literal) => {
        #[doc = concat!("The `", $world, "` world.")]
        pub mod $module {
            wit_bindgen::generate!({
                path: "wit",
                world: $world,
                pub_export_macro: true,
                export_macro_name: $macro_name,
                default_bindings_module: $bindings,
                with: {
                    "sitsflow:stage/types@0.2.1": crate::wit::types,
                    "sitsflow:stage/host@0.2.1": crate::wit::host,
                },
            });
        }
    };
}
pub(crate) use world;

pub use crate::kinds::augmenter::world as augmenter_stage;
pub use crate::kinds::clusterer::world as clusterer_stage;
pub use crate::kinds::decoder::world as decoder_stage;
pub use crate::kinds::features::world as features_stage;
pub use crate::kinds::labeller::world as labeller_stage;
pub use crate::kinds::sampler::world as sampler_stage;

//! Bindings generated from `wit/stage.wit`, one module per stage world. The shared
//! `types` and `host` interfaces are generated once (in `cloud_mask_stage`) and reused
//! by the other worlds, so conversions in `glue` are written once.

/// The `cloud-mask-stage` world; also home of the shared `types` and `host` interfaces.
pub mod cloud_mask_stage {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "cloud-mask-stage",
        pub_export_macro: true,
        export_macro_name: "export_cloud_mask_world",
        default_bindings_module: "sitsflow_sdk::wit::cloud_mask_stage",
    });
}

pub use cloud_mask_stage::sitsflow::stage::{host, types};

macro_rules! world {
    ($module:ident, $world:literal, $macro_name:literal, $bindings:literal) => {
        #[doc = concat!("The `", $world, "` world.")]
        pub mod $module {
            wit_bindgen::generate!({
                path: "../../wit",
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

world!(features_stage, "features-stage", "export_features_world", "sitsflow_sdk::wit::features_stage");
world!(clusterer_stage, "clusterer-stage", "export_clusterer_world", "sitsflow_sdk::wit::clusterer_stage");
world!(labeller_stage, "labeller-stage", "export_labeller_world", "sitsflow_sdk::wit::labeller_stage");
world!(sampler_stage, "sampler-stage", "export_sampler_world", "sitsflow_sdk::wit::sampler_stage");
world!(decoder_stage, "decoder-stage", "export_decoder_world", "sitsflow_sdk::wit::decoder_stage");
world!(augmenter_stage, "augmenter-stage", "export_augmenter_world", "sitsflow_sdk::wit::augmenter_stage");

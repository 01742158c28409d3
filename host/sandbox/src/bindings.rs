//! The host's bindings to the stage contract — the only `bindgen!`s in the host.
//!
//! Generated for the `host-view` world, which imports `host` and exports every stage
//! interface. A plugin exports just one of them; the runtime looks up that one
//! interface per kind (`GuestIndices`), never the whole world.
//!
//! `plugins/sdk/wit/stage.wit` is the current contract (0.2.1; 0.2.0 plugins load through it, names
//! matching across patch versions); [`since_v0_1`] holds the bindings of
//! the frozen 0.1.1 contract (`wit/since_v0.1.1/`), through which plugins built against
//! any 0.1.x still load — like Zed's `since_vX` modules. Both share this module's
//! `types`, whose 0.1 records are unchanged in 0.2.

wasmtime::component::bindgen!({
    path: "../../plugins/sdk/wit",
    world: "sitsflow:stage/host-view",
    imports: { default: trappable },
});

pub use self::exports::sitsflow::stage as stages;
pub use self::sitsflow::stage::{host, types};

/// The WIT package the host implements.
pub const WIT_PACKAGE: &str = "sitsflow:stage@0.2.1";

/// The 0.1.x contract: plugins built against 0.1.0 or 0.1.1 (names match across patch
/// versions; what 0.1.1 added is optional).
pub mod since_v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.1",
        world: "sitsflow:stage/host-view",
        imports: { default: trappable },
        with: {
            "sitsflow:stage/types": crate::bindings::types,
        },
    });

    pub use self::exports::sitsflow::stage as stages;
    pub use self::sitsflow::stage::host;

    /// The newest 0.1 package, as the manifest records it for such a plugin.
    pub const WIT_PACKAGE: &str = "sitsflow:stage@0.1.1";
}

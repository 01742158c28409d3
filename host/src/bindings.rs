//! The host's bindings to `wit/stage.wit` — the only `bindgen!` in the host.
//!
//! Generated for the `host-view` world, which imports `host` and exports every stage
//! interface. A plugin exports just one of them; the runtime looks up that one
//! interface per kind (`GuestIndices`), never the whole world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sitsflow:stage/host-view",
    imports: { default: trappable },
});

pub use self::exports::sitsflow::stage as stages;
pub use self::sitsflow::stage::{host, types};

/// The WIT package the host implements. Plugins built against any `0.1.x` load: names
/// match across patch versions, and what 0.1.1 added is optional.
pub const WIT_PACKAGE: &str = "sitsflow:stage@0.1.1";

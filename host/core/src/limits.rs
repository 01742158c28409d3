//! A stage instance's default limits, which a pipeline may change per stage.

/// Default memory cap of a stage instance.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
/// Default deadline of one stage call.
pub const DEFAULT_DEADLINE_MS: u64 = 60_000;
/// The largest memory a 32-bit Wasm instance can address.
pub const MAX_MEMORY_MIB: u32 = 4096;

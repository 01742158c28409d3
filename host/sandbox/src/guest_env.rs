//! What a guest sees of time and randomness: deterministic, so that the same inputs and
//! run seed give the same bits whatever a plugin reads.
//!
//! - `wasi:random/random` and `insecure`: a ChaCha8 stream reseeded at every call from
//!   the run's seed, the stage id and the chunk (`seed_of`), so a call's draws do not
//!   depend on which pooled instance serves it or on what it served before;
//!   `insecure-seed` (which seeds hash maps) is a constant.
//! - the wall clock reads 2020-01-01T00:00:00Z and the monotonic clock 0 at the start of
//!   every call, each read advancing them by 1 µs: time moves forward, as code expects,
//!   but by the number of reads, not by how busy the machine is.
//! - sleeping (`subscribe-duration` / `subscribe-instant` of `wasi:clocks/monotonic-clock`,
//!   then `poll`) is virtual: the clocks jump forward and the pollable is ready at once.
//!   wasmtime-wasi's own sleeps wait in the host, where the epoch deadline cannot reach
//!   them: a plugin sleeping 25 s per call blocked the host for 25 s under a 1 s deadline,
//!   and a long sleep hung it. Nothing a guest can call now blocks (`link_virtual_sleep`).
//!
//! What else a pooled instance keeps between calls is its own memory (statics, caches);
//! README's sandbox section says so, and that a plugin's result must not depend on it.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The wall clock's reading at the start of every call: 2020-01-01T00:00:00Z.
pub const WALL_CLOCK_START: Duration = Duration::from_secs(1_577_836_800);
/// How far the clocks move per read.
const TICK_NANOS: u64 = 1_000;
/// `wasi:random/insecure-seed`.
pub const INSECURE_SEED: u128 = 0x5157_5f73_6974_7366_6c6f_775f_7365_6564;

/// The seed of one call: the run's seed, the stage and the chunk.
pub fn seed_of(run_seed: u64, stage: &str, chunk: &str) -> u64 {
    let digest = sitsflow_core::hash::sha256_hex(format!("guest:{run_seed}:{stage}:{chunk}").as_bytes());
    u64::from_str_radix(&digest[..16], 16).expect("hex")
}

/// The guest's random source, shared by its secure and insecure interfaces.
#[derive(Clone)]
pub struct GuestRandom(Arc<Mutex<ChaCha8Rng>>);

impl Default for GuestRandom {
    fn default() -> Self {
        GuestRandom(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(0))))
    }
}

impl GuestRandom {
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = ChaCha8Rng::seed_from_u64(seed);
    }

    fn with<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl rand_core_wasi::TryRng for GuestRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.with(|r| r.next_u32()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.with(|r| r.next_u64()))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.with(|r| r.fill_bytes(dst));
        Ok(())
    }
}

/// The guest's clocks: virtual time since the call started.
#[derive(Clone, Default)]
pub struct GuestClock(Arc<AtomicU64>);

impl GuestClock {
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Moves the clocks `nanos` forward (a virtual sleep).
    pub fn advance(&self, nanos: u64) {
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The monotonic reading, without moving it.
    fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn read(&self) -> u64 {
        self.0.fetch_add(TICK_NANOS, Ordering::Relaxed) + TICK_NANOS
    }
}

impl HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        TICK_NANOS
    }

    fn now(&self) -> u64 {
        self.read()
    }
}

impl HostWallClock for GuestClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(TICK_NANOS)
    }

    fn now(&self) -> Duration {
        WALL_CLOCK_START + Duration::from_nanos(self.read())
    }
}

/// A pollable that is ready at once: what a virtual sleep returns.
struct Ready;

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Replaces the monotonic clock's `subscribe-duration` and `subscribe-instant` that
/// `wasmtime_wasi::p2::add_to_linker_sync` linked by virtual sleeps on the guest's clock.
pub fn link_virtual_sleep(
    linker: &mut wasmtime::component::Linker<super::instance::StageState>,
) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    // The version wasmtime-wasi 48 links; guests of any 0.2.x resolve to it.
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
        let state: &mut super::instance::StageState = store.data_mut();
        state.clock().advance(nanos);
        state.ready_pollable().map(|p| (p,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
        let state: &mut super::instance::StageState = store.data_mut();
        let now = state.clock().peek();
        state.clock().advance(when.saturating_sub(now));
        state.ready_pollable().map(|p| (p,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// For the instance's state: a ready pollable in its resource table.
pub(crate) fn ready_pollable(table: &mut wasmtime::component::ResourceTable) -> wasmtime::Result<wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>> {
    let ready = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core_wasi::Rng as _;

    #[test]
    fn a_reseeded_source_repeats_and_calls_differ() {
        let mut r = GuestRandom::default();
        r.reseed(seed_of(7, "stage", "chunk 3"));
        let a: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        r.reseed(seed_of(7, "stage", "chunk 3"));
        let b: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(seed_of(7, "stage", "chunk 3"), seed_of(7, "stage", "chunk 4"));
        assert_ne!(seed_of(7, "stage", "chunk 3"), seed_of(8, "stage", "chunk 3"));
    }

    #[test]
    fn clocks_start_at_the_same_instant_every_call_and_move_forward() {
        let c = GuestClock::default();
        let (t0, t1) = (HostMonotonicClock::now(&c), HostMonotonicClock::now(&c));
        assert!(t1 > t0);
        c.reset();
        assert_eq!(HostMonotonicClock::now(&c), t0);
        assert!(HostWallClock::now(&c) > WALL_CLOCK_START);
    }
}

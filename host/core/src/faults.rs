//! Fault injection for the tests that kill a run at a named point and resume it.
//!
//! Built only with the `failpoints` feature (`scripts/test.sh` enables it); otherwise
//! `fail_point!` expands to nothing. With it, `FAILPOINTS="run::chunk_written=2*off->return"`
//! (the `fail` crate's syntax: here, the third time the point is reached) kills the
//! process with SIGKILL at that point: no destructor, no cleanup, as a power cut or
//! the OOM killer would. `…->return(hold)` instead parks the process at that point
//! (printing `failpoint <name>: holding` on stderr first), so a test can act on a run
//! it knows to be in progress — a second run against its lock, a signal — and kill it
//! itself: no test has to race a run that might finish first.

/// Marks a point where a test may kill the process (see the module doc).
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {
        $crate::fail::fail_point!($name, |action| $crate::faults::trigger($name, action))
    };
}

/// Reads `FAILPOINTS` (once, at start-up); a no-op without the `failpoints` feature.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// What a reached failpoint does: `hold` parks the process for good, anything else kills it.
pub fn trigger(point: &str, action: Option<String>) -> ! {
    match action.as_deref() {
        Some("hold") => hold(point),
        _ => die(point),
    }
}

/// Parks every caller at this point for good: the process stays alive (its lock held,
/// its journal as it is) until the test kills it.
pub fn hold(point: &str) -> ! {
    eprintln!("failpoint {point}: holding");
    loop {
        std::thread::park();
    }
}

/// Kills this process at once with SIGKILL.
pub fn die(point: &str) -> ! {
    eprintln!("failpoint {point}: killing the process (SIGKILL)");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}

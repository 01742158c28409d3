//! Fault injection for the tests that kill a run at a named point and resume it.
//!
//! Built only with the `failpoints` feature (`scripts/test.sh` enables it); otherwise
//! `fail_point!` expands to nothing. With it, `FAILPOINTS="run::chunk_written=2*off->return"`
//! (the `fail` crate's syntax: here, the third time the point is reached) kills the
//! process with SIGKILL at that point: no destructor, no cleanup, as a power cut or
//! the OOM killer would.

/// Marks a point where a test may kill the process (see the module doc).
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {
        ::fail::fail_point!($name, |_| $crate::faults::die($name))
    };
}

/// Reads `FAILPOINTS` (once, at start-up); a no-op without the `failpoints` feature.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
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

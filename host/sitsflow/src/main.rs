//! The `sitsflow` command: the only crate that reads argv and the environment's flags,
//! and prints; everything it runs lives in the library (`sitsflow`) and the crates
//! below it.

mod cli;

fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`sitsflow plugins list | head`) instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any
    // thread exists, has no other effect.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}

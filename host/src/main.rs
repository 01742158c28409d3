//! The `sitsflow` command; everything but argument parsing lives in the library.
fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`sitsflow plugins list | head`) instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any
    // thread exists, has no other effect.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    sitsflow::cli::main()
}

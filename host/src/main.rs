//! The `sitsflow` command; everything but argument parsing lives in the library.
fn main() -> std::process::ExitCode {
    sitsflow::cli::main()
}

//! `dpumesh`: the operator CLI. Logic lives in the library (src/lib.rs).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dpumesh_cli::Cli::parse();
    let result = dpumesh_cli::run(cli);
    dpumesh_cli::interrupt::wait_if_interrupted();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `dpumesh`: the operator CLI. Logic lives in the library (src/lib.rs).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dpumesh_cli::Cli::parse();
    match dpumesh_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

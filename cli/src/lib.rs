//! The `dpumesh` operator CLI. One module per subcommand.
#![forbid(unsafe_code)]

pub mod sim;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dpumesh", version, about = "dpumesh operator CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The local simulator: nodes, DPUs, VFs and a fabric made of network namespaces.
    Sim(sim::SimArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
    }
}

//! The `dpumesh` operator CLI. One module per subcommand.
#![forbid(unsafe_code)]

pub mod bench;
pub mod config_dump;
pub mod demo;
pub mod interrupt;
pub mod sim;
pub mod top;

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
    /// The demo: a simulated cluster with DPUs, the mesh components, traffic and results.
    Demo(demo::DemoArgs),
    #[command(name = "demo-app", hide = true)]
    DemoApp(demo::app::AppArgs),
    /// Live view of one DPU: per-pod rps, errors, latency, bytes, drops, steering; DPU CPU and memory.
    Top(top::TopArgs),
    /// A node's served config: `dpumesh config dump --node N` (NodeConfig + xDS sources).
    #[command(subcommand)]
    Config(config_dump::ConfigCommand),
    /// Side-by-side benchmarks (docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CNI ADD/DEL latency: dpumesh-cni vs the reference bridge plugin.
    Cni(bench::cni::CniArgs),
    /// dpu-proxy vs Envoy vs HAProxy vs no proxy: req/s, latency, CPU per request, RSS.
    Proxy(bench::proxy::ProxyArgs),
    /// eBPF dataplane: TC program cost per packet, pod->pod throughput and latency vs plain kernel forwarding.
    Dataplane(bench::dataplane::DataplaneArgs),
    /// No mesh vs Envoy sidecars vs dpumesh on a 2-node cluster: req/s, latency, host/DPU CPU, memory per pod.
    Mesh(bench::mesh::MeshArgs),
    /// HBONE (mTLS between DPUs) vs plaintext latency at a fixed rate, and the HBONE handshake rate.
    Mtls(bench::mtls::MtlsArgs),
    /// Adapter cost: NodeConfig build time/memory (200 pods, 5000 services), push latency to dpu-proxy, config size growth.
    Config(bench::config::ConfigArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoApp(args) => demo::app::run(args),
        Command::Config(c) => config_dump::run(c),
        Command::Top(args) => top::run(args),
        Command::Bench(BenchCommand::Cni(args)) => bench::cni::run(args),
        Command::Bench(BenchCommand::Proxy(args)) => bench::proxy::run(args),
        Command::Bench(BenchCommand::Dataplane(args)) => bench::dataplane::run(args),
        Command::Bench(BenchCommand::Mesh(args)) => bench::mesh::run(args),
        Command::Bench(BenchCommand::Mtls(args)) => bench::mtls::run(args),
        Command::Bench(BenchCommand::Config(args)) => bench::config::run(args),
    }
}

//! dpu-proxy: the shared per-node proxy on the DPU.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use dpu_proxy::config_store::ConfigStore;
use dpu_proxy::control::{self, ControlState};

#[derive(Debug, Parser)]
#[command(
    name = "dpu-proxy",
    version,
    about = "The shared per-node service mesh proxy on the DPU"
)]
struct Args {
    /// Name of the node this DPU belongs to (default: the hostname).
    #[arg(long, env = "DPUMESH_NODE")]
    node: Option<String>,
    /// Address of the control gRPC (ProxyConfig + Status): the DPU management address.
    #[arg(long, env = "DPU_PROXY_MGMT_ADDR", default_value = control::DEFAULT_ADDR)]
    mgmt_addr: SocketAddr,
    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. "info" or "dpu_proxy=debug").
    #[arg(long, env = "DPUMESH_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("--log-level {:?}", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let node = args.node.unwrap_or_else(hostname);

    // The control path runs on its own current-thread runtime; the data path
    // gets its own multi-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.mgmt_addr)
            .await
            .with_context(|| format!("binding the control address {}", args.mgmt_addr))?;
        tracing::info!(addr = %args.mgmt_addr, %node, "control gRPC listening");
        let state = ControlState::new(ConfigStore::new(), node);
        control::serve(listener, state, control::shutdown_signal())
            .await
            .context("control gRPC server")
    })?;
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

//! dpumesh-dataplane: the forwarding engine on the DPU.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dpumesh_dataplane::control::{self, ControlState};
use dpumesh_dataplane::registry::{MemoryBackend, PodRegistry, Representors};

#[derive(Debug, Parser)]
#[command(
    name = "dpumesh-dataplane",
    version,
    about = "The dpumesh forwarding engine on the DPU"
)]
struct Args {
    /// Name of the node this DPU belongs to (default: the hostname).
    #[arg(long, env = "DPUMESH_NODE")]
    node: Option<String>,
    /// Address of the control gRPC (Dataplane + Status): the DPU management address.
    #[arg(long, env = "DATAPLANE_MGMT_ADDR", default_value = control::DEFAULT_ADDR)]
    mgmt_addr: SocketAddr,
    /// VF representors: "auto" lists the netdevs named pf<P>vf<N> in this
    /// network namespace (at every AddPod), or a comma-separated list of names.
    #[arg(long, env = "DATAPLANE_REPRESENTORS", default_value = "auto")]
    representors: String,
    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. "info" or "dpumesh_dataplane=debug").
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
    let representors = match args.representors.trim() {
        "auto" => Representors::Discover,
        list => Representors::fixed(list.split(',').map(str::trim).filter(|s| !s.is_empty())),
    };
    let registry = Arc::new(PodRegistry::new(
        node.clone(),
        representors,
        MemoryBackend::new(),
    ));

    // The control path runs on its own current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.mgmt_addr)
            .await
            .with_context(|| format!("binding the control address {}", args.mgmt_addr))?;
        tracing::info!(addr = %args.mgmt_addr, %node, "control gRPC listening");
        control::serve(
            listener,
            ControlState::new(registry),
            control::shutdown_signal(),
        )
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

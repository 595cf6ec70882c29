//! dpumesh-dataplane: the forwarding engine on the DPU.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use dpumesh_dataplane::bpf::backend::EbpfBackend;
use dpumesh_dataplane::bpf::{BpfDataplane, PinDir};
use dpumesh_dataplane::control::{self, ControlState};
use dpumesh_dataplane::registry::{MemoryBackend, PodRegistry, Representors, SteeringBackend};
use dpumesh_dataplane::{admin, bpf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The TC eBPF programs (needs BPF, TC clsact and root in the DPU netns).
    Ebpf,
    /// Records the desired state and forwards nothing: for hosts without BPF
    /// and for testing the control API.
    Memory,
}

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
    /// Admin HTTP (/metrics, /ready, /pods).
    #[arg(long, env = "DATAPLANE_ADMIN_ADDR", default_value = admin::DEFAULT_ADDR)]
    admin_addr: SocketAddr,
    /// VF representors: "auto" lists the netdevs named pf<P>vf<N> in this
    /// network namespace (at every AddPod), or a comma-separated list of names.
    #[arg(long, env = "DATAPLANE_REPRESENTORS", default_value = "auto")]
    representors: String,
    /// Forwarding backend.
    #[arg(long, env = "DATAPLANE_BACKEND", value_enum, default_value = "ebpf")]
    backend: Backend,
    /// The DPU's uplink netdev (to the fabric).
    #[arg(long, env = "DATAPLANE_UPLINK", default_value = "p0")]
    uplink: String,
    /// Where bpffs is (or gets) mounted; maps are pinned in <root>/<node-id>/.
    #[arg(long, env = "DATAPLANE_BPF_PIN_ROOT", default_value = bpf::loader::BPFFS_ROOT)]
    bpf_pin_root: PathBuf,
    /// Name of this DPU's pin directory. Default: `<cluster>-n<i>` when running
    /// in the simulator's DPU netns `dm-<cluster>-n<i>-dpu` (so `sim down`
    /// removes the pins), else --node.
    #[arg(long, env = "DATAPLANE_NODE_ID")]
    node_id: Option<String>,
    /// After a restart, entries a previous run left in the maps keep
    /// forwarding until the control plane re-adds its pods; this long after
    /// the first SetNodeNetwork, whatever was not re-added is removed.
    #[arg(long, env = "DATAPLANE_RESTORE_GRACE_SECS", default_value_t = 30)]
    restore_grace_secs: u64,
    /// Measure the TC programs' per-packet cost with BPF_PROG_TEST_RUN
    /// (this many runs per path), print JSON and exit (for `dpumesh bench
    /// dataplane`; runs in the current netns, needs a netdev named by
    /// --prog-cost-peer).
    #[arg(long, hide = true)]
    prog_cost: Option<u32>,
    #[arg(long, hide = true, default_value = "pf0vf1")]
    prog_cost_peer: String,
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
    if let Some(repeat) = args.prog_cost {
        let costs = bpf::cost::program_costs(repeat, &args.prog_cost_peer)
            .context("measuring the TC programs")?;
        println!("{}", serde_json::to_string(&costs)?);
        return Ok(());
    }
    let node = args.node.clone().unwrap_or_else(hostname);
    let representors = match args.representors.trim() {
        "auto" => Representors::Discover,
        list => Representors::fixed(list.split(',').map(str::trim).filter(|s| !s.is_empty())),
    };
    let backend: Arc<dyn SteeringBackend> = match args.backend {
        Backend::Memory => MemoryBackend::new(),
        Backend::Ebpf => {
            // Fail before pinning anything when this is not a DPU netns.
            if nix::net::if_::if_nametoindex(args.uplink.as_str()).is_err() {
                anyhow::bail!(
                    "--backend ebpf: the uplink {:?} is not in this network namespace; run in the DPU's netns, pass --uplink, or use --backend memory",
                    args.uplink
                );
            }
            let node_id = args
                .node_id
                .clone()
                .or_else(sim_node_id)
                .unwrap_or_else(|| node.clone());
            let pin = PinDir::under(&args.bpf_pin_root, &node_id).context("--node-id")?;
            let dp = BpfDataplane::load(&pin).with_context(|| {
                format!(
                    "loading the eBPF dataplane (pins in {}); on a host without BPF use --backend memory",
                    pin.0.display()
                )
            })?;
            tracing::info!(pins = %pin.0.display(), leftovers = dp.restored_count(), uplink = %args.uplink, "eBPF programs loaded");
            Arc::new(EbpfBackend::new(dp, args.uplink.clone()))
        }
    };
    let registry = Arc::new(PodRegistry::new(node.clone(), representors, backend));
    let state = ControlState::new(registry.clone());

    // The control path runs on its own current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.mgmt_addr)
            .await
            .with_context(|| format!("binding the control address {}", args.mgmt_addr))?;
        let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
        tracing::info!(addr = %args.mgmt_addr, admin = %args.admin_addr, %node, backend = ?args.backend, "control gRPC listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let admin_stop = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let admin_task = tokio::spawn(admin::serve(admin_listener, state.clone(), admin_stop));
        tokio::spawn(reconcile_after_grace(
            registry,
            Duration::from_secs(args.restore_grace_secs),
        ));
        let served = control::serve(listener, state, control::shutdown_signal()).await;
        let _ = stop_tx.send(true);
        let _ = admin_task.await;
        served.context("control gRPC server")
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for the first SetNodeNetwork, then `grace`, then tells the backend
/// the registry is the whole desired state (leftovers of a previous run that
/// no one re-added are removed).
async fn reconcile_after_grace(registry: Arc<PodRegistry>, grace: Duration) {
    while registry.network().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(grace).await;
    let r = tokio::task::spawn_blocking(move || registry.reconcile()).await;
    match r {
        Ok(Ok(())) => tracing::info!("reconciled with the desired state"),
        Ok(Err(e)) => tracing::error!(error = %e, "reconcile failed"),
        Err(e) => tracing::error!(error = %e, "reconcile task failed"),
    }
}

/// `<cluster>-n<i>` when this process runs in the simulator's DPU netns
/// `dm-<cluster>-n<i>-dpu` (found in /run/netns by the netns inode).
fn sim_node_id() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    for entry in std::fs::read_dir("/run/netns").ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.ino() != ours.ino() || meta.dev() != ours.dev() {
            continue;
        }
        let name = entry.file_name().into_string().ok()?;
        let id = name.strip_prefix("dm-")?.strip_suffix("-dpu")?;
        let (cluster, node) = id.rsplit_once("-n")?;
        if !cluster.is_empty() && !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit()) {
            return Some(id.to_string());
        }
    }
    None
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

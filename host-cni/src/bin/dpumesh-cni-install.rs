//! dpumesh-cni-install: the CNI DaemonSet's container. Copies `dpumesh-cni`
//! into the node's CNI bin dir and writes (or chains) the conflist; with
//! `--uninstall` takes both back out. `--wait` keeps running after install and
//! uninstalls on SIGTERM/SIGINT (the DaemonSet pod going away).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dpumesh_cni::install::{self, ChainPosition, InstallConfig, Mode, PluginSettings};

#[derive(Debug, Parser)]
#[command(
    name = "dpumesh-cni-install",
    version,
    about = "Install the dpumesh CNI plugin on this node",
    args_override_self = true
)]
struct Args {
    /// CNI bin dir on the node (the runtime's `bin_dir`).
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// CNI conf dir on the node (the runtime's `conf_dir`).
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// File name of our conflist (standalone mode).
    #[arg(long, env = "CNI_CONFLIST_NAME", default_value = "10-dpumesh.conflist")]
    conflist_name: String,
    /// "standalone" (our own conflist) or "chained" (insert into the primary conflist).
    #[arg(long, env = "DPUMESH_CNI_MODE", default_value = "standalone")]
    mode: Mode,
    /// Chained: the conflist to chain into (default: the one the runtime loads).
    #[arg(long, env = "DPUMESH_CNI_CHAIN_INTO")]
    chain_into: Option<PathBuf>,
    /// Chained: "first" or "last" in the plugin list.
    #[arg(long, env = "DPUMESH_CNI_CHAIN_POSITION", default_value = "first")]
    chain_position: ChainPosition,
    /// The plugin binary to install (default: dpumesh-cni next to this program).
    #[arg(long, env = "DPUMESH_CNI_PLUGIN_BINARY")]
    plugin_binary: Option<PathBuf>,
    /// Network name (standalone conflist).
    #[arg(long, env = "DPUMESH_CNI_NETWORK", default_value = "dpumesh")]
    network_name: String,
    /// cniVersion of the standalone conflist.
    #[arg(long, env = "DPUMESH_CNI_VERSION", default_value = "1.0.0")]
    cni_version: String,
    /// The node's dataplane control API (DPU management address).
    #[arg(
        long,
        env = "DATAPLANE_MGMT_ADDR",
        default_value = "192.168.100.2:15081"
    )]
    dataplane: String,
    /// "sriov" (DPU) or "sim" (simulator).
    #[arg(long, env = "DPUMESH_VF_BACKEND", default_value = "sriov")]
    vf_backend: String,
    /// PF netdev whose VFs pods get (sriov).
    #[arg(long, env = "DPUMESH_PF")]
    pf: Option<String>,
    /// The node's pod CIDR (host-local range).
    #[arg(long, env = "DPUMESH_POD_CIDR")]
    pod_cidr: Option<ipnet::IpNet>,
    /// Pod gateway (default: the first address of the pod CIDR).
    #[arg(long, env = "DPUMESH_POD_GATEWAY")]
    gateway: Option<std::net::IpAddr>,
    /// MTU of the pod interface.
    #[arg(long, env = "DPUMESH_POD_MTU")]
    mtu: Option<u32>,
    /// Register pods unmeshed (no interception).
    #[arg(long)]
    unmeshed: bool,
    /// Plugin state dir (default: the plugin's, /var/lib/cni/dpumesh).
    #[arg(long, env = "DPUMESH_CNI_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// host-local data dir (default: host-local's, /var/lib/cni/networks).
    #[arg(long, env = "DPUMESH_IPAM_DATA_DIR")]
    ipam_data_dir: Option<PathBuf>,
    /// The kubeconfig (a path on the node) the plugin uses to write the pods' VF
    /// annotations, used as it is.
    #[arg(
        long,
        env = "DPUMESH_CNI_KUBECONFIG",
        conflicts_with = "kubeconfig_from_token_dir"
    )]
    kubeconfig: Option<PathBuf>,
    /// Write the plugin's kubeconfig into the conf dir (dpumesh-kubeconfig, 0600)
    /// from this service account token dir (`token`, `ca.crt`).
    #[arg(long, env = "DPUMESH_CNI_KUBECONFIG_TOKEN_DIR")]
    kubeconfig_from_token_dir: Option<PathBuf>,
    /// The API server for that kubeconfig (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "DPUMESH_KUBE_SERVER")]
    kube_server: Option<String>,
    /// The conf dir's path on the node, when this container mounts it elsewhere
    /// (default: --conf-dir); the plugin reads the kubeconfig from there.
    #[arg(long, env = "CNI_HOST_CONF_DIR")]
    host_conf_dir: Option<PathBuf>,
    /// Remove the binary and our config (restoring a chained conflist).
    #[arg(long)]
    uninstall: bool,
    /// After installing, keep running; uninstall on SIGTERM/SIGINT.
    #[arg(long)]
    wait: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DPUMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.uninstall {
        let r = install::uninstall(&args.bin_dir, &args.conf_dir, &args.conflist_name)?;
        log_report("uninstall", &r);
        return Ok(());
    }
    let cfg = config(&args)?;
    if !args.wait {
        let r = install::install(&cfg)?;
        log_report("install", &r);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: a SIGTERM right after the install must still uninstall.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let r = install::install(&cfg)?;
        log_report("install", &r);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    let r = install::uninstall(&args.bin_dir, &args.conf_dir, &args.conflist_name)?;
    log_report("uninstall", &r);
    Ok(())
}

fn config(args: &Args) -> anyhow::Result<InstallConfig> {
    let pod_cidr = args.pod_cidr.context(
        "--pod-cidr (or DPUMESH_POD_CIDR) is required: the node's pod CIDR for host-local",
    )?;
    let (kubeconfig_path, kubeconfig) = match (&args.kubeconfig, &args.kubeconfig_from_token_dir) {
        (Some(p), _) => (Some(p.clone()), None),
        (None, Some(dir)) => {
            let server = match &args.kube_server {
                Some(s) => s.clone(),
                None => {
                    let host = std::env::var("KUBERNETES_SERVICE_HOST").context(
                        "--kube-server (or DPUMESH_KUBE_SERVER) is required outside a pod: \
                         KUBERNETES_SERVICE_HOST is not set",
                    )?;
                    let port =
                        std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                    if host.contains(':') {
                        format!("https://[{host}]:{port}")
                    } else {
                        format!("https://{host}:{port}")
                    }
                }
            };
            let bytes = install::service_account_kubeconfig(dir, &server)?;
            let host_dir = args.host_conf_dir.as_ref().unwrap_or(&args.conf_dir);
            (Some(host_dir.join(install::KUBECONFIG_NAME)), Some(bytes))
        }
        (None, None) => (None, None),
    };
    let plugin = PluginSettings {
        vf_backend: args.vf_backend.clone(),
        pf: args.pf.clone(),
        dataplane: args.dataplane.clone(),
        pod_cidr,
        gateway: args.gateway,
        mtu: args.mtu,
        meshed: !args.unmeshed,
        state_dir: args.state_dir.clone(),
        ipam_data_dir: args.ipam_data_dir.clone(),
        kubeconfig: kubeconfig_path,
    }
    .entry()?;
    let plugin_binary = match &args.plugin_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name(install::PLUGIN_NAME),
    };
    Ok(InstallConfig {
        bin_dir: args.bin_dir.clone(),
        conf_dir: args.conf_dir.clone(),
        plugin_binary,
        conflist_name: args.conflist_name.clone(),
        mode: args.mode,
        chain_into: args.chain_into.clone(),
        chain_position: args.chain_position,
        network_name: args.network_name.clone(),
        cni_version: args.cni_version.clone(),
        plugin,
        kubeconfig,
    })
}

fn log_report(what: &str, r: &install::Report) {
    if !r.changed() {
        tracing::info!("{what}: nothing to change");
    }
    for p in &r.written {
        tracing::info!("{what}: wrote {}", p.display());
    }
    for p in &r.restored {
        tracing::info!("{what}: restored {}", p.display());
    }
    for p in &r.removed {
        tracing::info!("{what}: removed {}", p.display());
    }
}

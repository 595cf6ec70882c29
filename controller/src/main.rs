//! dpumesh-controller: `controller` (cluster-wide) and `adapter` (per node).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dpumesh_controller::inventory::Inventory;
use dpumesh_controller::inventory_client::{self, Received};
use dpumesh_controller::local;
use dpumesh_controller::node_network::Publisher as NetworkPublisher;
use dpumesh_controller::push::{Pushed, Pusher};
use dpumesh_controller::workload::{self, WorkloadSettings, XdsApi};
use dpumesh_controller::xds::ads::{self, AdsSettings, XdsVariant};

type InventoryRx = tokio::sync::watch::Receiver<Option<Arc<Received>>>;

#[derive(Debug, Parser)]
#[command(
    name = "dpumesh-controller",
    version,
    about = "dpumesh controller and per-node adapter"
)]
struct Args {
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "DPUMESH_LOG", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Cluster-wide controller: Kubernetes watchers → per-node inventory (docs/controller.md).
    Controller(ControllerArgs),
    /// Per-node adapter: xDS (istiod over ADS, or a local directory) → NodeConfig → dpu-proxy.
    Adapter(AdapterArgs),
}

#[derive(Debug, clap::Args)]
struct ControllerArgs {
    /// kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Write each node's inventory to DIR/<node>/ (node.yaml, pods.yaml, services.yaml, endpoints.yaml).
    #[arg(long, required_unless_present = "grpc_addr")]
    output_dir: Option<PathBuf>,
    /// Serve the inventory stream (gRPC dpumesh.controller.v1.Inventory) on this address.
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// Service CIDR(s) written into every node.yaml (repeat for several).
    #[arg(long = "service-cidr", default_values_t = ["10.96.0.0/16".to_string()])]
    service_cidrs: Vec<String>,
    /// Cluster DNS suffix (service hostnames are <name>.<ns>.svc.<dns-domain>).
    #[arg(long, default_value = "cluster.local")]
    dns_domain: String,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// DPU control address for nodes without the dpumesh.io/dpu-mgmt-addr annotation.
    #[arg(long, default_value = "192.168.100.2:15080")]
    dpu_mgmt_addr: String,
    /// VXLAN network identifier written into every network.yaml (0 = the dataplane's default).
    #[arg(long, default_value_t = 0)]
    vni: u32,
    /// Leader election on a Lease: only the leader writes (false: always write).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The Lease's namespace.
    #[arg(long, default_value = "dpumesh-system")]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "dpumesh-controller")]
    lease_name: String,
    /// This replica's identity in the Lease; default <hostname>-<pid>.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// leaseDurationSeconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Time between acquire/renew attempts, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    retry_period_ms: u64,
}

#[derive(Debug, clap::Args)]
struct AdapterArgs {
    /// Local mode: read xDS resources (and, without --inventory-addr, the inventory) from this directory and watch it.
    #[arg(long, conflicts_with = "xds_addr")]
    local_dir: Option<PathBuf>,
    /// ADS mode: istiod's xDS address (e.g. http://istiod.istio-system.svc:15010).
    #[arg(long)]
    xds_addr: Option<String>,
    /// ADS mode: directory with node.yaml, pods.yaml, services.yaml (read once).
    #[arg(long, conflicts_with_all = ["inventory_addr", "local_dir"])]
    inventory_dir: Option<PathBuf>,
    /// Subscribe to the controller's inventory stream (http://<controller>:<port>) for --node.
    #[arg(long)]
    inventory_addr: Option<String>,
    /// This node's name; must match node.yaml.
    #[arg(long, env = "DPUMESH_NODE")]
    node: String,
    /// dpu-proxy's control address.
    #[arg(long, default_value = "192.168.100.2:15080")]
    proxy_addr: String,
    /// The dataplane's control address, where the node network is set (default: node.yaml's dpuMgmtAddr host, port 15081).
    #[arg(long)]
    dataplane_addr: Option<String>,
    /// Local mode: build and push once, then exit (0 = ACKed or unchanged).
    #[arg(long)]
    once: bool,
    /// Local mode: how often to look for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Istio version announced to istiod.
    #[arg(long, default_value = "1.24.0")]
    istio_version: String,
    /// ADS mode: the xDS protocol variant (delta: incremental, Istio's default for proxies since 1.22; sotw: state of the world).
    #[arg(long, value_enum, default_value_t = XdsVariant::Delta)]
    xds_variant: XdsVariant,
    /// ADS mode: envoy (LDS/RDS/CDS/EDS, one stream per pod, as its sidecar) or workload (Istio's workload API, one stream per node, as ztunnel).
    #[arg(long, value_enum, default_value_t = XdsApi::Envoy)]
    xds_api: XdsApi,
    /// --xds-api workload: this adapter's pod name (in the ztunnel node id).
    #[arg(long, env = "POD_NAME", default_value = "dpumesh-adapter")]
    pod_name: String,
    /// --xds-api workload: this adapter's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pod_namespace: String,
    /// --xds-api workload: this adapter's IP (ztunnel's default when unknown: 1.1.1.1).
    #[arg(long, env = "INSTANCE_IP", default_value = "1.1.1.1")]
    instance_ip: String,
}

/// The xDS client of ADS mode, by `--xds-api`.
#[derive(Debug, Clone)]
enum XdsClient {
    Envoy(AdsSettings),
    Workload(WorkloadSettings),
}

impl XdsClient {
    async fn run(self, inventory: Inventory) {
        match self {
            XdsClient::Envoy(s) => ads::run(s, inventory).await,
            XdsClient::Workload(s) => workload::run(s, inventory).await,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("--log-level {:?}: {e}", args.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.role {
        Role::Controller(c) => runtime.block_on(controller(c)),
        Role::Adapter(a) => runtime.block_on(adapter(a)),
    }
}

async fn controller(c: ControllerArgs) -> ExitCode {
    use dpumesh_controller::k8s::{build::ClusterSettings, run};
    use dpumesh_controller::leader::LeaseSettings;
    if c.lease_duration_secs == 0 || c.retry_period_ms == 0 {
        eprintln!("--lease-duration-secs and --retry-period-ms must be positive");
        return ExitCode::from(2);
    }
    let lease_duration = Duration::from_secs(c.lease_duration_secs);
    let retry_period = Duration::from_millis(c.retry_period_ms);
    if retry_period >= lease_duration {
        eprintln!("--retry-period-ms must be shorter than --lease-duration-secs");
        return ExitCode::from(2);
    }
    let listener = match c.grpc_addr {
        Some(addr) => match run::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let client = match run::client(c.kubeconfig.as_deref()).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let identity = c.identity.unwrap_or_else(run::default_identity);
    let options = run::Options {
        output_dir: c.output_dir,
        grpc_addr: c.grpc_addr,
        settings: ClusterSettings {
            service_cidrs: c.service_cidrs,
            dns_domain: c.dns_domain,
            trust_domain: c.trust_domain,
            dpu_mgmt_addr: c.dpu_mgmt_addr,
            vni: c.vni,
        },
        lease: c.leader_elect.then(|| LeaseSettings {
            namespace: c.lease_namespace,
            name: c.lease_name,
            identity,
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period,
        }),
    };
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    match run::run(client, options, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn inventory_stream(a: &AdapterArgs) -> Result<Option<InventoryRx>, ExitCode> {
    let Some(addr) = a.inventory_addr.as_deref() else {
        return Ok(None);
    };
    match inventory_client::endpoint(addr) {
        Ok(endpoint) => Ok(Some(inventory_client::spawn(endpoint, a.node.clone()))),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Waits for the first good inventory of the stream (None: the stream task ended).
async fn first_inventory(rx: &mut InventoryRx) -> Option<Arc<Received>> {
    tracing::info!("waiting for the first inventory from the controller");
    let got = rx.wait_for(Option::is_some).await.ok()?;
    got.clone()
}

async fn adapter(a: AdapterArgs) -> ExitCode {
    let stream = match inventory_stream(&a) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let network = NetworkPublisher::spawn(a.dataplane_addr.clone());
    if let Some(dir) = a.local_dir.clone() {
        return local_mode(dir, a, stream, network).await;
    }
    let Some(xds_addr) = a.xds_addr.clone() else {
        eprintln!("adapter: give --local-dir DIR, or --xds-addr URL with --inventory-dir DIR or --inventory-addr URL");
        return ExitCode::from(2);
    };
    let settings = match a.xds_api {
        XdsApi::Envoy => XdsClient::Envoy(AdsSettings {
            xds_addr,
            proxy_addr: a.proxy_addr.clone(),
            istio_version: a.istio_version.clone(),
            variant: a.xds_variant,
        }),
        XdsApi::Workload => XdsClient::Workload(WorkloadSettings {
            xds_addr,
            proxy_addr: a.proxy_addr.clone(),
            istio_version: a.istio_version.clone(),
            pod_name: a.pod_name.clone(),
            pod_namespace: a.pod_namespace.clone(),
            instance_ip: a.instance_ip.clone(),
        }),
    };
    if let Some(rx) = stream {
        return ads_streamed(settings, rx, network).await;
    }
    let Some(dir) = a.inventory_dir.clone() else {
        eprintln!("adapter: --xds-addr needs --inventory-dir DIR or --inventory-addr URL");
        return ExitCode::from(2);
    };
    let inventory = match Inventory::load(&dir, Some(&a.node)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    network.publish(&inventory);
    tokio::select! {
        () = settings.run(inventory) => ExitCode::SUCCESS,
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}

/// One ADS session (every pod's xDS stream plus the aggregator) on its own
/// thread and runtime: stopping it drops the runtime, which closes all its
/// streams at once.
struct AdsSession {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdsSession {
    fn start(settings: XdsClient, inventory: Inventory) -> std::io::Result<AdsSession> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ads-session".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("cannot start the ADS session's runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        () = settings.run(inventory) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the pods' stream tasks.
            })?;
        Ok(AdsSession {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for AdsSession {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// ADS mode with the streamed inventory: a new ADS session (streams for exactly
/// the inventory's meshed pods) whenever the inventory changes (apart from its
/// network, which only goes to the dataplane).
async fn ads_streamed(
    settings: XdsClient,
    mut rx: InventoryRx,
    network: NetworkPublisher,
) -> ExitCode {
    let mut session = None;
    let mut current: Option<Inventory> = None;
    loop {
        let received = tokio::select! {
            r = first_inventory(&mut rx) => r,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let Some(received) = received else {
            tracing::error!("the inventory stream task ended");
            return ExitCode::FAILURE;
        };
        rx.mark_unchanged();
        network.publish(&received.inventory);
        if !current
            .as_ref()
            .is_some_and(|c| c.same_except_network(&received.inventory))
        {
            drop(session.take()); // closes the previous session's streams first
            tracing::info!(
                generation = received.generation,
                pods = received.inventory.pods.len(),
                "starting an ADS session for this inventory"
            );
            match AdsSession::start(settings.clone(), received.inventory.clone()) {
                Ok(s) => session = Some(s),
                Err(e) => {
                    tracing::error!("cannot start an ADS session: {e}");
                    return ExitCode::FAILURE;
                }
            }
            current = Some(received.inventory.clone());
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                tracing::error!("the inventory stream task ended");
                return ExitCode::FAILURE;
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

async fn local_mode(
    dir: PathBuf,
    a: AdapterArgs,
    mut stream: Option<InventoryRx>,
    network: NetworkPublisher,
) -> ExitCode {
    let mut pusher = Pusher::new(&a.proxy_addr);
    let mut seen = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(a.poll_ms.max(10)));
    let mut inventory: Option<Arc<Received>> = None;
    if let Some(rx) = stream.as_mut() {
        tokio::select! {
            r = first_inventory(rx) => match r {
                Some(r) => inventory = Some(r),
                None => {
                    tracing::error!("the inventory stream task ended");
                    return ExitCode::FAILURE;
                }
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
        rx.mark_unchanged();
    }
    let mut first = true;
    loop {
        let mut new_inventory = false;
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = ticker.tick() => {}
                r = async {
                    match stream.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match r {
                        Ok(()) => {
                            if let Some(rx) = stream.as_mut() {
                                inventory = rx.borrow_and_update().clone();
                            }
                            new_inventory = true;
                        }
                        Err(_) => {
                            tracing::error!("the inventory stream task ended");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            }
        }
        let mtime = local::newest_mtime(&dir);
        if mtime == seen && seen.is_some() && !new_inventory {
            continue;
        }
        seen = mtime;
        // --once pushes the proxy config only (it would exit before the dataplane answers).
        if !a.once {
            match &inventory {
                Some(r) => network.publish(&r.inventory),
                None => {
                    if let Ok(inv) = Inventory::load(&dir, Some(&a.node)) {
                        network.publish(&inv);
                    }
                }
            }
        }
        let built = match &inventory {
            Some(r) => {
                tracing::info!(
                    generation = r.generation,
                    "translating with the streamed inventory"
                );
                local::build_with(&dir, r.inventory.clone())
            }
            None => local::build(&dir, Some(&a.node)),
        };
        let ok = match built {
            Err(e) => {
                tracing::error!(dir = %dir.display(), "{e}; keeping the previous config");
                false
            }
            Ok(config) => match pusher.push(config).await {
                Ok(Pushed::Applied(v)) => {
                    tracing::info!(version = v, "dpu-proxy ACKed the config");
                    true
                }
                Ok(Pushed::Unchanged(v)) => {
                    tracing::info!(version = v, "no change");
                    true
                }
                Err(e) => {
                    tracing::error!("{e}");
                    if matches!(e, dpumesh_controller::push::PushError::Transport { .. }) {
                        seen = None; // try again on the next tick
                    }
                    false
                }
            },
        };
        if a.once {
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    }
}

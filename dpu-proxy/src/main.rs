//! dpu-proxy: the shared per-node proxy on the DPU.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use dpu_proxy::access_log::{AccessLog, Sink};
use dpu_proxy::admin::{self, Admin};
use dpu_proxy::config_store::{ConfigStore, Offer};
use dpu_proxy::control::{self, ControlState};
use dpu_proxy::identity::{CertIssuer, IstiodCa, IstiodCaConfig, SpiffeId};
use dpu_proxy::metrics::Metrics;
use dpu_proxy::proxy::{self, ConfigSource, Proxy, ProxySettings};
use dpumesh_api::NodeConfig;

/// mimalloc instead of glibc malloc: the proxy's per-request buffers (hyper's
/// read buffers, TLS records, h2 frames) are larger than glibc's per-thread
/// cache and went through its arena bins (docs/decisions.md §11).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Admin HTTP: /metrics, /ready, /config_dump, /stats.
    #[arg(long, env = "DPU_PROXY_ADMIN_ADDR", default_value = admin::DEFAULT_ADDR)]
    admin_addr: SocketAddr,
    /// Address of the transparent listeners (outbound 15001, inbound 15006).
    #[arg(long, env = "DPU_PROXY_LISTEN_IP", default_value = "0.0.0.0")]
    listen_ip: IpAddr,
    #[arg(long, default_value_t = proxy::OUTBOUND_PORT)]
    outbound_port: u16,
    #[arg(long, default_value_t = proxy::INBOUND_PORT)]
    inbound_port: u16,
    /// Initial NodeConfig (JSON, or YAML for .yaml/.yml), validated like a push.
    #[arg(long)]
    config: Option<PathBuf>,
    /// JSON access log: "off", "stdout", or a file to append to.
    #[arg(long, env = "DPU_PROXY_ACCESS_LOG", default_value = "off")]
    access_log: Sink,
    /// Worker threads of the data path (default: one per CPU). With 1, the
    /// data path runs on a single-threaded (current-thread) runtime on its
    /// own thread: no work-stealing machinery on the request path.
    #[arg(long)]
    workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// HBONE (mTLS HTTP/2 CONNECT) listener port on `--listen-ip`; 0 disables it.
    #[arg(long, default_value_t = dpu_proxy::hbone::HBONE_PORT)]
    hbone_port: u16,
    /// Trust domain of the workload identities (must equal the config's node.trustDomain).
    #[arg(long, env = "DPUMESH_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates (requested from istiod with
    /// --ca-addr, which may shorten it); renewed at half of it.
    #[arg(long, default_value_t = 24 * 3600)]
    workload_cert_ttl_seconds: u64,
    /// Root of the built-in CA shared by the nodes (created by the first
    /// proxy, loaded by the others); empty = a root of this process only.
    /// Not used with --ca-addr.
    #[arg(long, default_value = "/run/dpumesh/ca/root.pem")]
    ca_root_file: Option<PathBuf>,
    /// istiod's CA (IstioCertificateService/CreateCertificate over TLS), e.g.
    /// https://istiod.istio-system.svc:15012; when set, workload certificates
    /// come from it instead of the built-in CA.
    #[arg(long, env = "DPU_PROXY_CA_ADDR")]
    ca_addr: Option<String>,
    /// TLS server name (SNI) and gRPC authority for --ca-addr; default its host.
    #[arg(long)]
    ca_server_name: Option<String>,
    /// Projected service-account token (audience istio-ca) sent as
    /// `authorization: Bearer`; re-read at every request.
    #[arg(long, default_value = dpu_proxy::identity::istiod::DEFAULT_TOKEN_FILE)]
    ca_token_file: PathBuf,
    /// istiod's root certificate(s), PEM: verifies istiod and is the mesh's
    /// trust anchor for peers' workload certificates.
    #[arg(long, default_value = dpu_proxy::identity::istiod::DEFAULT_ROOT_FILE)]
    ca_trust_root_pem: PathBuf,
    /// Cluster ID sent to istiod (`clusterid` header).
    #[arg(long, default_value = dpu_proxy::identity::istiod::DEFAULT_CLUSTER_ID)]
    ca_cluster_id: String,
    /// dpu-proxy's own SPIFFE ID (its token's service account); requests for
    /// other identities name them in `ImpersonatedIdentity`.
    #[arg(long)]
    ca_own_identity: Option<String>,
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
    let node = args.node.clone().unwrap_or_else(hostname);

    let store = ConfigStore::new();
    if let Some(path) = &args.config {
        load_initial(&store, path)?;
    }
    let access_log = AccessLog::open(&args.access_log)
        .with_context(|| format!("--access-log {:?}", args.access_log))?;
    let source: Arc<dyn ConfigSource> = store.clone();
    let proxy = Proxy::with_telemetry(
        source,
        ProxySettings::default(),
        Arc::new(Metrics::default()),
        access_log,
    );

    // The data path: its own runtime. One worker: a current-thread runtime,
    // driven by a thread of its own once everything is set up (spawned
    // tasks wait until then); more: a multi-thread runtime.
    let single = args.workers.is_some_and(|n| n <= 1);
    let data = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("dpu-proxy-data")
            .build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all().thread_name("dpu-proxy-data");
        if let Some(n) = args.workers {
            b.worker_threads(n);
        }
        b.build()
    }
    .context("data path runtime")?;
    // A bad istiod CA setting stops the start, before anything listens.
    let istiod = istiod_ca(&data, &args)?;
    for spec in proxy::listeners_on(args.listen_ip, args.outbound_port, args.inbound_port) {
        let listener = {
            let _in_runtime = data.enter();
            Proxy::bind(&spec).with_context(|| {
                format!("binding the {:?} listener {}", spec.direction, spec.bind)
            })?
        };
        tracing::info!(addr = %spec.bind, direction = ?spec.direction, "listening");
        data.spawn(proxy.clone().serve(listener, spec));
    }

    // Identities + HBONE (client on the outbound path, server for tunnels
    // steered to the inbound listener, and the 15008 listener). Without
    // identities the proxy still serves plaintext.
    if let Err(e) = start_hbone(&data, &store, &proxy, &args, istiod) {
        tracing::error!(error = format!("{e:#}"), "HBONE disabled");
    }

    // The single-threaded data runtime gets its thread; it runs until the
    // control side below says stop.
    let data = std::sync::Arc::new(data);
    let (data_stop, data_stopped) = tokio::sync::oneshot::channel::<()>();
    let data_thread = if single {
        let rt = data.clone();
        Some(
            std::thread::Builder::new()
                .name("dpu-proxy-data".into())
                .spawn(move || {
                    rt.block_on(async {
                        let _ = data_stopped.await;
                    })
                })
                .context("starting the data path thread")?,
        )
    } else {
        None
    };

    // Control gRPC and admin: a current-thread runtime on this thread.
    let control_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    let drain = Duration::from_secs(args.drain_seconds);
    control_rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind(args.mgmt_addr)
            .await
            .with_context(|| format!("binding the control address {}", args.mgmt_addr))?;
        let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
        tracing::info!(addr = %args.mgmt_addr, %node, "control gRPC listening");
        tracing::info!(addr = %args.admin_addr, "admin HTTP listening");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let admin = Arc::new(Admin {
            store: store.clone(),
            proxy: proxy.clone(),
        });
        let mut admin_stop = stopped.clone();
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin, async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        }));
        let state = ControlState::new(store.clone(), node);
        let mut grpc_stop = stopped.clone();
        let grpc_task = tokio::spawn(control::serve(grpc, state, async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        }));
        control::shutdown_signal().await;
        // Stop accepting; let in-flight requests finish, up to the drain time.
        proxy.drain();
        if !proxy.drained(drain).await {
            tracing::warn!(
                open = proxy.stats.active_connections(),
                "drain time over, closing the remaining connections"
            );
        }
        let _ = stop.send(true);
        let _ = admin_task.await;
        match grpc_task.await {
            Ok(r) => r.context("control gRPC server"),
            Err(e) => Err(e.into()),
        }
    })?;
    let _ = data_stop.send(());
    if let Some(t) = data_thread {
        let _ = t.join();
    }
    if let Ok(data) = std::sync::Arc::try_unwrap(data) {
        data.shutdown_timeout(Duration::from_secs(1));
    }
    tracing::info!("stopped");
    Ok(())
}

/// istiod's CA client from `--ca-addr` and its files (checked now: files
/// readable, root PEM parses, token non-empty); `None` without `--ca-addr`.
fn istiod_ca(
    data: &tokio::runtime::Runtime,
    args: &Args,
) -> anyhow::Result<Option<Arc<dyn CertIssuer>>> {
    let Some(addr) = &args.ca_addr else {
        return Ok(None);
    };
    let mut cfg = IstiodCaConfig::new(addr, &args.ca_trust_root_pem, &args.ca_token_file)
        .context("checking --ca-addr, --ca-trust-root-pem and --ca-token-file")?;
    if let Some(name) = &args.ca_server_name {
        cfg.server_name = name.clone();
    }
    cfg.cluster_id = args.ca_cluster_id.clone();
    cfg.workload_ttl = Duration::from_secs(args.workload_cert_ttl_seconds.max(60));
    if let Some(own) = &args.ca_own_identity {
        cfg.own_identity = Some(SpiffeId::parse(own).context("--ca-own-identity")?);
    }
    tracing::info!(
        addr = %cfg.addr,
        server_name = %cfg.server_name,
        cluster_id = %cfg.cluster_id,
        root = %cfg.roots_file.display(),
        "workload certificates from istiod's CA"
    );
    // The client's gRPC channel lives on the data path runtime.
    let _in_runtime = data.enter();
    let ca = IstiodCa::new(cfg).context("--ca-addr/--ca-server-name")?;
    Ok(Some(Arc::new(ca)))
}

/// The built-in CA (under the shared root file if there is one).
fn builtin_issuer(args: &Args) -> anyhow::Result<Arc<dyn CertIssuer>> {
    use dpu_proxy::identity::{BuiltinCa, CaConfig};
    let mut ca = CaConfig::new(&args.trust_domain);
    ca.workload_ttl = Duration::from_secs(args.workload_cert_ttl_seconds.max(60));
    let ca = match &args.ca_root_file {
        Some(path) if !path.as_os_str().is_empty() => {
            match BuiltinCa::with_shared_root(ca.clone(), path) {
                Ok(ca) => {
                    tracing::info!(root = %path.display(), "built-in CA under the shared root");
                    ca
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared CA root unusable: this process gets a root of its own (other nodes will not trust it)");
                    BuiltinCa::new(ca).context("built-in CA")?
                }
            }
        }
        _ => BuiltinCa::new(ca).context("built-in CA")?,
    };
    Ok(Arc::new(ca))
}

/// Workload issuer → certificate store following the config → HBONE server
/// gated by the pods' inbound policies, all on the data path runtime.
fn start_hbone(
    data: &tokio::runtime::Runtime,
    store: &Arc<ConfigStore>,
    proxy: &Arc<Proxy>,
    args: &Args,
    istiod: Option<Arc<dyn CertIssuer>>,
) -> anyhow::Result<()> {
    use dpu_proxy::authz::{PolicyGate, PolicyIndex};
    use dpu_proxy::hbone::{HboneClient, HboneServer};
    use dpu_proxy::identity::{follow_config, CertStore};
    use dpu_proxy::proxy::TunnelsToProxy;

    let issuer = match istiod {
        Some(istiod) => istiod,
        None => builtin_issuer(args)?,
    };
    let certs = Arc::new(CertStore::new(&args.trust_domain, issuer).context("certificate store")?);
    let gate = Arc::new(PolicyGate::new(PolicyIndex::default()));
    let local = certs.clone();
    let server = Arc::new(
        HboneServer::new(
            certs.clone(),
            Arc::new(move |t: SocketAddr| local.identity_for_ip(t.ip()).is_some()),
        )
        .with_handler(Arc::new(TunnelsToProxy(proxy.clone()))),
    );
    proxy.enable_hbone_server(server.clone());
    proxy.enable_hbone_client(Arc::new(HboneClient::new(certs.clone())));
    data.spawn(follow_config(store.subscribe(), certs.clone(), gate));
    let rotation_certs = certs.clone();
    data.spawn(async move {
        let _rotation = rotation_certs.spawn_rotation(Duration::from_secs(30));
        std::future::pending::<()>().await
    });
    // The dedicated 15008 listener (tunnels steered to the inbound listener
    // work without it); a busy port (several proxies on one test host) only
    // disables it.
    if args.hbone_port != 0 {
        let addr = SocketAddr::new(args.listen_ip, args.hbone_port);
        let bound = {
            let _in_runtime = data.enter();
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
        };
        match bound {
            Ok(listener) => {
                tracing::info!(%addr, trust_domain = %args.trust_domain, "HBONE listening");
                data.spawn(async move {
                    if let Err(e) = server.serve(listener).await {
                        tracing::error!(error = %e, "HBONE listener failed");
                    }
                });
            }
            Err(e) => tracing::error!(%addr, error = %e, "HBONE listener disabled"),
        }
    }
    Ok(())
}

/// Reads `--config` and offers it like a push: refused means exit.
fn load_initial(store: &ConfigStore, path: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let config = if yaml {
        NodeConfig::from_yaml(&text)
    } else {
        NodeConfig::from_json(text.as_bytes())
    }
    .with_context(|| format!("--config {}", path.display()))?;
    match store.offer(config) {
        Offer::Accepted { version, .. } => {
            tracing::info!(version, path = %path.display(), "initial config loaded");
            Ok(())
        }
        Offer::Rejected { errors, .. } => {
            bail!(
                "--config {} refused:\n  {}",
                path.display(),
                errors.join("\n  ")
            )
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

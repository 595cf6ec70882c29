//! The controller's main loop: watchers → state → (leader only) per-node files
//! and the inventory stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::watch;

use super::build::{build, ClusterSettings};
use super::output::{render, write_all};
use super::serve::{proto::NodeInventory, InventoryService, Published};
use super::watch::{spawn_all, Shared};
use crate::leader::{Elector, Leadership, LeaseSettings};

#[derive(Debug, Clone)]
pub struct Options {
    /// Write `DIR/<node>/*.yaml`.
    pub output_dir: Option<PathBuf>,
    /// Serve the inventory stream (gRPC) here.
    pub grpc_addr: Option<SocketAddr>,
    pub settings: ClusterSettings,
    /// `None`: no leader election (this replica always writes and serves).
    pub lease: Option<LeaseSettings>,
}

/// A client from `kubeconfig`, or else from the environment (`$KUBECONFIG`,
/// `~/.kube/config`, the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// `<hostname>-<pid>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dpumesh-controller".to_string());
    format!("{host}-{}", std::process::id())
}

/// Debounce: changes arriving within this time are written together.
const SETTLE: Duration = Duration::from_millis(50);
/// Retry period after a failed write.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// Binds the gRPC listener now (so a bad address fails at start).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--grpc-addr {addr}: {e}"))
}

/// Runs until `shutdown` completes (then releases the lease if it holds it), or
/// until the watchers or the gRPC server stop (they do not, short of a panic or a
/// failing listener).
pub async fn run(
    client: Client,
    options: Options,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let mut shutdown = std::pin::pin!(shutdown);
    let state = Shared::default();
    let (changed_tx, mut changed) = watch::channel(0u64);
    let watchers = spawn_all(client.clone(), state.clone(), changed_tx);
    let (leading_tx, mut leadership) = watch::channel(Leadership {
        leading: options.lease.is_none(),
        holder: None,
    });
    let (_keep_sender, elector) = match options.lease.clone() {
        Some(lease) => (
            None,
            Some(tokio::spawn(
                Elector::new(client.clone(), lease).run(leading_tx),
            )),
        ),
        None => (Some(leading_tx), None),
    };
    let (published_tx, published_rx) = watch::channel(Arc::new(Published::default()));
    let mut server = match listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            tracing::info!(?addr, "serving the inventory stream");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let service = InventoryService::server(published_rx);
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming),
            ))
        }
        None => None,
    };
    let mut last_skipped: Vec<String> = Vec::new();
    let mut retry_write = false;
    let mut was_leading = false;
    let mut generation = 0u64;
    let mut rendered: BTreeMap<String, NodeInventory> = BTreeMap::new();
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            r = changed.changed() => if r.is_err() { break Err("the watchers stopped".to_string()); },
            r = leadership.changed() => if r.is_err() { break Err("the leader election stopped".to_string()); },
            _ = tokio::time::sleep(WRITE_RETRY), if retry_write => {},
            r = async { server.as_mut().expect("guarded").await }, if server.is_some() => {
                break Err(match r {
                    Ok(Ok(())) => "the gRPC server stopped".to_string(),
                    Ok(Err(e)) => format!("the gRPC server failed: {e}"),
                    Err(e) => format!("the gRPC server failed: {e}"),
                });
            }
        }
        tokio::time::sleep(SETTLE).await;
        changed.borrow_and_update();
        let lead = leadership.borrow_and_update().clone();
        if lead.leading != was_leading {
            tracing::info!(leading = lead.leading, holder = ?lead.holder, "leadership changed");
            was_leading = lead.leading;
        }
        let built = {
            let guard = match state.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            (lead.leading && guard.synced()).then(|| build(&guard, &options.settings))
        };
        let Some(built) = built else {
            retry_write = false;
            published_tx.send_replace(Arc::new(Published {
                serving: false,
                leader: lead.holder.clone().filter(|_| !lead.leading),
                nodes: BTreeMap::new(),
            }));
            continue;
        };
        if built.skipped != last_skipped {
            for line in built.skipped.iter().filter(|l| !last_skipped.contains(l)) {
                tracing::warn!("left out: {line}");
            }
            last_skipped = built.skipped.clone();
        }
        // The stream: a new generation for every node whose files changed.
        let mut next: BTreeMap<String, NodeInventory> = BTreeMap::new();
        for (name, node) in &built.nodes {
            let files = match render(node) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            let [node_yaml, pods_yaml, services_yaml, endpoints_yaml, network_yaml] = files;
            let mut inv = NodeInventory {
                node: name.clone(),
                generation: 0,
                node_yaml,
                pods_yaml,
                services_yaml,
                endpoints_yaml,
                network_yaml,
            };
            inv.generation = match rendered.get(name) {
                Some(old)
                    if NodeInventory {
                        generation: 0,
                        ..old.clone()
                    } == inv =>
                {
                    old.generation
                }
                _ => {
                    generation += 1;
                    generation
                }
            };
            next.insert(name.clone(), inv);
        }
        rendered = next;
        published_tx.send_replace(Arc::new(Published {
            serving: true,
            leader: lead.holder.clone(),
            nodes: rendered.clone(),
        }));
        let Some(dir) = &options.output_dir else {
            continue;
        };
        match write_all(dir, &built.nodes) {
            Ok(summary) => {
                retry_write = false;
                if !summary.written.is_empty() || !summary.removed.is_empty() {
                    tracing::info!(
                        written = ?summary.written,
                        removed = ?summary.removed,
                        nodes = built.nodes.len(),
                        "inventory written"
                    );
                }
            }
            Err(e) => {
                tracing::error!("writing the inventory: {e}; retrying");
                retry_write = true;
            }
        }
    };
    for w in watchers {
        w.abort();
    }
    if let Some(s) = server {
        s.abort();
    }
    if let (Some(elector), Some(lease)) = (elector, options.lease) {
        elector.abort();
        let _ = elector.await;
        match Elector::new(client, lease).release().await {
            Ok(true) => tracing::info!("released the lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not release the lease: {e}"),
        }
    }
    result
}

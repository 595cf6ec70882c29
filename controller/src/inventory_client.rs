//! The adapter's side of the inventory stream: subscribes to the controller's
//! `dpumesh.controller.v1.Inventory/WatchNode` for one node, decodes every
//! update with [`Inventory::parse`] (the decoder of the files) and publishes the
//! last good inventory on a watch channel. Reconnects with backoff when the
//! stream ends or fails (e.g. a follower's UNAVAILABLE during a leader change);
//! the last good inventory stays published meanwhile. Contract: `docs/adapter.md`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::inventory::{Inventory, InventoryError, InventoryTexts};
use crate::k8s::serve::proto::{
    inventory_client::InventoryClient, NodeInventory, WatchNodeRequest,
};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One accepted update.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The controller's generation number (per controller process).
    pub generation: u64,
    pub inventory: Inventory,
}

/// Checks `--inventory-addr` (an `http://host:port` URI).
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    if !addr.starts_with("http://") && !addr.starts_with("https://") {
        return Err(format!(
            "--inventory-addr {addr:?}: expected http://<host>:<port>"
        ));
    }
    Endpoint::from_shared(addr.to_string())
        .map(|e| e.connect_timeout(Duration::from_secs(5)))
        .map_err(|e| format!("--inventory-addr {addr:?}: {e}"))
}

/// Decodes one streamed update for `node`.
pub fn decode(msg: &NodeInventory, node: &str) -> Result<Inventory, InventoryError> {
    let g = msg.generation;
    let (n, p, s) = (
        format!("WatchNode({node}) generation {g}: node.yaml"),
        format!("WatchNode({node}) generation {g}: pods.yaml"),
        format!("WatchNode({node}) generation {g}: services.yaml"),
    );
    Inventory::parse(
        InventoryTexts {
            node_yaml: (&n, &msg.node_yaml),
            pods_yaml: (&p, &msg.pods_yaml),
            services_yaml: (&s, &msg.services_yaml),
        },
        Some(node),
    )
}

/// Starts the subscription task; the receiver holds `None` until the first good
/// inventory, then the last good one (changed only when the content changes).
pub fn spawn(endpoint: Endpoint, node: String) -> watch::Receiver<Option<Arc<Received>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(endpoint, node, tx));
    rx
}

async fn run(endpoint: Endpoint, node: String, tx: watch::Sender<Option<Arc<Received>>>) {
    let addr = endpoint.uri().to_string();
    let mut backoff = BACKOFF_START;
    loop {
        match one_stream(&endpoint, &node, &tx, &mut backoff).await {
            Ok(()) => tracing::warn!(%addr, %node, "inventory stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(%addr, %node, error = %e, "inventory stream failed; keeping the last good inventory")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn one_stream(
    endpoint: &Endpoint,
    node: &str,
    tx: &watch::Sender<Option<Arc<Received>>>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream = InventoryClient::new(channel)
        .watch_node(WatchNodeRequest {
            node: node.to_string(),
        })
        .await
        .map_err(|s| format!("WatchNode: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    tracing::info!(%node, "subscribed to the controller's inventory stream");
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("WatchNode: {:?}: {}", s.code(), s.message())),
        };
        *backoff = BACKOFF_START; // the stream works
        let generation = msg.generation;
        match decode(&msg, node) {
            Err(e) => tracing::error!(
                generation,
                "bad inventory update: {e}; keeping the last good inventory"
            ),
            Ok(inventory) => {
                let changed = tx.send_if_modified(|current| {
                    let same = current.as_ref().is_some_and(|c| c.inventory == inventory);
                    if !same {
                        *current = Some(Arc::new(Received {
                            generation,
                            inventory: inventory.clone(),
                        }));
                    }
                    !same
                });
                tracing::info!(
                    generation,
                    pods = inventory.pods.len(),
                    services = inventory.services.len(),
                    changed,
                    "inventory update"
                );
            }
        }
    }
}

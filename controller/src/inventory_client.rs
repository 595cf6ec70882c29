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
    let (n, p, s, e, w) = (
        format!("WatchNode({node}) generation {g}: node.yaml"),
        format!("WatchNode({node}) generation {g}: pods.yaml"),
        format!("WatchNode({node}) generation {g}: services.yaml"),
        format!("WatchNode({node}) generation {g}: endpoints.yaml"),
        format!("WatchNode({node}) generation {g}: network.yaml"),
    );
    Inventory::parse(
        InventoryTexts {
            node_yaml: (&n, &msg.node_yaml),
            pods_yaml: (&p, &msg.pods_yaml),
            services_yaml: (&s, &msg.services_yaml),
            endpoints_yaml: (&e, &msg.endpoints_yaml),
            network_yaml: (&w, &msg.network_yaml),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::k8s::serve::{InventoryService, Published};

    const NODE: &str = "name: node-1\nnetworkMode: underlay\npodCidr: 10.244.1.0/24\nserviceCidrs: [10.96.0.0/16]\ndpuMgmtAddr: 192.168.100.2:15080\n";

    fn pods(names: &[&str]) -> String {
        let mut s = String::from("pods:\n");
        for (i, n) in names.iter().enumerate() {
            s.push_str(&format!(
                "  - {{uid: u{i}, name: {n}, namespace: default, ips: [10.244.1.{}], mac: \"02:00:00:00:00:0{i}\", vfIndex: {}, representor: pf0vf{}}}\n",
                10 + i,
                i + 1,
                i + 1
            ));
        }
        s
    }

    fn published(serving: bool, generation: u64, pods_yaml: String) -> Arc<Published> {
        let inv = NodeInventory {
            node: "node-1".into(),
            generation,
            node_yaml: NODE.into(),
            pods_yaml,
            services_yaml: String::new(),
            endpoints_yaml: String::new(),
            network_yaml: String::new(),
        };
        Arc::new(Published {
            serving,
            leader: (!serving).then(|| "other-replica".to_string()),
            nodes: BTreeMap::from([("node-1".to_string(), inv)]),
        })
    }

    async fn wait_pods(rx: &mut watch::Receiver<Option<Arc<Received>>>, want: &[&str]) -> u64 {
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|r| {
                r.as_ref().is_some_and(|r| {
                    r.inventory
                        .pods
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        == want
                })
            }),
        )
        .await
        .expect("inventory in time")
        .expect("client task alive");
        got.as_ref().map(|r| r.generation).unwrap_or_default()
    }

    #[test]
    fn decode_names_the_update_and_the_document() {
        let mut msg = published(true, 7, "pods: [{name: x}]".into()).nodes["node-1"].clone();
        let e = decode(&msg, "node-1")
            .expect_err("missing fields")
            .to_string();
        assert!(e.contains("generation 7: pods.yaml"), "{e}");
        msg.pods_yaml = pods(&["a"]);
        assert_eq!(decode(&msg, "node-1").expect("good").pods.len(), 1);
        let e = decode(&msg, "node-2").expect_err("other node").to_string();
        assert!(e.contains("node.yaml") && e.contains("node-2"), "{e}");
        msg.node_yaml = String::new();
        assert!(decode(&msg, "node-1").is_err());
    }

    /// The real server of `k8s::serve` on a socket: good updates arrive, a bad
    /// one is skipped (the last good stays), a follower's UNAVAILABLE and the
    /// end of the stream are survived by reconnecting.
    #[tokio::test]
    async fn follows_the_stream_skips_bad_updates_and_reconnects() {
        let (pub_tx, pub_rx) = watch::channel(published(false, 0, String::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(InventoryService::server(pub_rx))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut rx = spawn(
            endpoint(&format!("http://{addr}")).expect("endpoint"),
            "node-1".into(),
        );
        // Not serving yet (UNAVAILABLE): retried until it is.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.borrow().is_none());
        pub_tx.send_replace(published(true, 1, pods(&["a"])));
        assert_eq!(wait_pods(&mut rx, &["a"]).await, 1);
        // A bad update (generation 2) is skipped; the next good one arrives.
        pub_tx.send_replace(published(true, 2, "pods: [{name: broken}]".into()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.borrow().as_ref().map(|r| r.generation), Some(1));
        pub_tx.send_replace(published(true, 3, pods(&["a", "b"])));
        assert_eq!(wait_pods(&mut rx, &["a", "b"]).await, 3);
        // Leadership lost: the stream ends; the last good stays; a new
        // generation (from a new leader, restarting at 1) arrives after reconnecting.
        pub_tx.send_replace(published(false, 3, pods(&["a", "b"])));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(rx.borrow().as_ref().map(|r| r.generation), Some(3));
        pub_tx.send_replace(published(true, 1, pods(&["b"])));
        assert_eq!(wait_pods(&mut rx, &["b"]).await, 1);
        server.abort();
    }

    #[test]
    fn endpoint_rejects_a_bare_address() {
        assert!(endpoint("127.0.0.1:1").is_err());
        assert!(endpoint("http://127.0.0.1:1").is_ok());
    }
}

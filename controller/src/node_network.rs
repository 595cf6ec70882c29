//! The adapter's push to the dataplane: the node network (`Dataplane.SetNodeNetwork`,
//! `docs/control-api.md`) from `node.yaml` (mode, pod CIDR, service CIDRs) and
//! `network.yaml` (underlay address, VNI, peers). Without it the dataplane
//! refuses every AddPod (FAILED_PRECONDITION "node network not set"), so the
//! CNI cannot attach pods.
//!
//! It runs as its own task beside the proxy pushes: a dataplane that is down
//! or refusing is retried with backoff without holding up dpu-proxy's config.
//! Contract: `docs/adapter.md` ("Outputs: the node network on the dataplane").

use std::net::SocketAddr;
use std::time::Duration;

use dpumesh_api::config::NetworkMode as ConfigMode;
use dpumesh_api::proto::v1::{
    dataplane_client::DataplaneClient, GetNodeNetworkRequest, NetworkMode, NodeNetwork, PeerNode,
    SetNodeNetworkRequest,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::inventory::Inventory;

/// The dataplane's control port (next to dpu-proxy's on the DPU management address).
pub const DATAPLANE_PORT: u16 = 15081;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a set network is checked to be still there (a restarted
/// dataplane starts without one).
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// What to set on which dataplane.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub addr: String,
    pub network: NodeNetwork,
}

/// The dataplane of a node whose dpu-proxy is at `dpu_mgmt_addr`: the same
/// host, port [`DATAPLANE_PORT`].
pub fn dataplane_addr(dpu_mgmt_addr: &str) -> Result<String, String> {
    let bad = |why: &str| format!("node.yaml: dpuMgmtAddr {dpu_mgmt_addr:?}: {why}");
    if let Ok(sa) = dpu_mgmt_addr.parse::<SocketAddr>() {
        return Ok(SocketAddr::new(sa.ip(), DATAPLANE_PORT).to_string());
    }
    let host = match dpu_mgmt_addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return Err(bad("expected host:port")),
        None => dpu_mgmt_addr,
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad("no host"));
    }
    Ok(format!("{host}:{DATAPLANE_PORT}"))
}

/// What the inventory asks of the dataplane: `None` without a network
/// document. `dataplane_addr` (`--dataplane-addr`) overrides the address
/// derived from `node.yaml`.
pub fn desired(
    inventory: &Inventory,
    dataplane_addr_flag: Option<&str>,
) -> Result<Option<Desired>, String> {
    let Some(net) = &inventory.network else {
        return Ok(None);
    };
    let node = &inventory.node;
    let addr = match dataplane_addr_flag {
        Some(a) => a.to_string(),
        None => dataplane_addr(&node.dpu_mgmt_addr)?,
    };
    let mode = match node.network_mode {
        ConfigMode::Underlay => NetworkMode::Underlay,
        ConfigMode::Overlay => NetworkMode::Overlay,
    };
    Ok(Some(Desired {
        addr,
        network: NodeNetwork {
            node_name: node.name.clone(),
            mode: mode as i32,
            pod_cidr: node.pod_cidr.clone(),
            service_cidrs: node.service_cidrs.clone(),
            underlay_ip: net.underlay_ip.to_string(),
            vni: net.vni,
            peers: net
                .peers
                .iter()
                .map(|p| PeerNode {
                    name: p.name.clone(),
                    pod_cidr: p.pod_cidr.clone(),
                    underlay_ip: p.underlay_ip.to_string(),
                })
                .collect(),
            // Empty: the dataplane's default, the pod CIDR's first host address.
            gateway_ip: String::new(),
        },
    }))
}

/// Hands each new inventory's network to the background task.
pub struct Publisher {
    tx: watch::Sender<Option<Desired>>,
    dataplane_addr: Option<String>,
}

impl Publisher {
    /// Starts the task on the current runtime.
    pub fn spawn(dataplane_addr: Option<String>) -> Publisher {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(run(rx));
        Publisher { tx, dataplane_addr }
    }

    /// The network of a new good inventory; nothing without a network document
    /// (the dataplane keeps what it has). An unchanged network is not re-sent.
    pub fn publish(&self, inventory: &Inventory) {
        match desired(inventory, self.dataplane_addr.as_deref()) {
            Ok(Some(d)) => {
                self.tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&d);
                    if changed {
                        *cur = Some(d);
                    }
                    changed
                });
            }
            Ok(None) => {
                tracing::debug!("no network document; the dataplane's node network is not set")
            }
            Err(e) => tracing::error!("node network not set on the dataplane: {e}"),
        }
    }
}

struct Client {
    addr: String,
    client: DataplaneClient<Channel>,
}

async fn client<'a>(slot: &'a mut Option<Client>, addr: &str) -> Result<&'a mut Client, String> {
    if slot.as_ref().is_some_and(|c| c.addr != addr) {
        *slot = None;
    }
    if slot.is_none() {
        let client = dpumesh_api::client::dataplane(addr)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(Client {
            addr: addr.to_string(),
            client,
        });
    }
    slot.as_mut().ok_or_else(|| "no client".to_string())
}

/// Sets the network; `Err((retry, reason))`.
async fn set(slot: &mut Option<Client>, want: &Desired) -> Result<bool, (bool, String)> {
    let c = client(slot, &want.addr).await.map_err(|e| (true, e))?;
    match c
        .client
        .set_node_network(SetNodeNetworkRequest {
            network: Some(want.network.clone()),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().changed),
        Err(s) => {
            let reason = format!("{:?}: {}", s.code(), s.message());
            match s.code() {
                // The same network will be refused again: wait for another one.
                tonic::Code::InvalidArgument => Err((false, reason)),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
                    *slot = None;
                    Err((true, reason))
                }
                _ => Err((true, reason)),
            }
        }
    }
}

/// Whether the dataplane still has a node network (`Err`: could not ask).
async fn still_set(slot: &mut Option<Client>, addr: &str) -> Result<bool, String> {
    let c = client(slot, addr).await?;
    match c.client.get_node_network(GetNodeNetworkRequest {}).await {
        Ok(r) => Ok(r.into_inner().network.is_some()),
        Err(s) => {
            *slot = None;
            Err(format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

async fn run(mut rx: watch::Receiver<Option<Desired>>) {
    let mut slot: Option<Client> = None;
    // The network the dataplane accepted last, and one it refused as invalid.
    let mut done: Option<Desired> = None;
    let mut refused: Option<Desired> = None;
    let mut backoff = BACKOFF_START;
    loop {
        let want = rx.borrow_and_update().clone();
        let Some(want) = want else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        if done.as_ref() == Some(&want) {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(CHECK_EVERY) => {
                    match still_set(&mut slot, &want.addr).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(addr = %want.addr, "the dataplane has no node network (restarted?); setting it again");
                            done = None;
                        }
                        Err(e) => tracing::debug!(addr = %want.addr, "checking the node network: {e}"),
                    }
                }
            }
            continue;
        }
        if refused.as_ref() == Some(&want) {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        match set(&mut slot, &want).await {
            Ok(changed) => {
                tracing::info!(
                    addr = %want.addr,
                    node = %want.network.node_name,
                    peers = want.network.peers.len(),
                    changed,
                    "node network set on the dataplane"
                );
                done = Some(want);
                backoff = BACKOFF_START;
            }
            Err((false, reason)) => {
                tracing::error!(addr = %want.addr, "the dataplane refused the node network: {reason}; waiting for another inventory");
                refused = Some(want);
            }
            Err((true, reason)) => {
                tracing::warn!(addr = %want.addr, retry_in = ?backoff, "setting the node network on the dataplane failed: {reason}");
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_address_from_the_proxys() {
        assert_eq!(
            dataplane_addr("192.168.100.2:15080").as_deref(),
            Ok("192.168.100.2:15081")
        );
        assert_eq!(
            dataplane_addr("[fd00::2]:15080").as_deref(),
            Ok("[fd00::2]:15081")
        );
        assert_eq!(
            dataplane_addr("dpu-1.local:15080").as_deref(),
            Ok("dpu-1.local:15081")
        );
        assert_eq!(
            dataplane_addr("dpu-1.local").as_deref(),
            Ok("dpu-1.local:15081")
        );
        let e = dataplane_addr(":15080").expect_err("no host");
        assert!(e.contains("dpuMgmtAddr \":15080\""), "{e}");
        let e = dataplane_addr("dpu:http").expect_err("bad port");
        assert!(e.contains("host:port"), "{e}");
    }
}

//! The inbound gate: PeerAuthentication + AuthorizationPolicy of the
//! destination pod applied to one HBONE tunnel (L4), with denies counted
//! under the policy's name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dpumesh_api::config::{InboundPolicy, NodeConfig};

use super::{admit_transport, authorize, effective_principal, AuthzRequest, Verdict};
use crate::hbone::{InboundGate, InboundTunnel};

/// Pod IP → the inbound policy governing it, built from a NodeConfig.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    by_ip: HashMap<IpAddr, Arc<InboundPolicy>>,
}

impl PolicyIndex {
    pub fn from_node_config(cfg: &NodeConfig) -> Self {
        let named: HashMap<&str, Arc<InboundPolicy>> = cfg
            .inbound_policies
            .iter()
            .map(|p| (p.name.as_str(), Arc::new(p.clone())))
            .collect();
        let mut by_ip = HashMap::new();
        for pod in &cfg.pods {
            let Some(policy) = pod.inbound_policy.as_deref().and_then(|n| named.get(n)) else {
                continue;
            };
            for ip in pod.ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                by_ip.insert(ip, policy.clone());
            }
        }
        Self { by_ip }
    }

    pub fn policy_for(&self, ip: IpAddr) -> Option<&Arc<InboundPolicy>> {
        self.by_ip.get(&ip)
    }
}

/// Applies the [`PolicyIndex`] to HBONE tunnels. The index is swapped whole
/// when the config changes.
#[derive(Debug, Default)]
pub struct PolicyGate {
    index: ArcSwap<PolicyIndex>,
    denied: Mutex<BTreeMap<String, u64>>,
}

impl PolicyGate {
    pub fn new(index: PolicyIndex) -> Self {
        Self {
            index: ArcSwap::from_pointee(index),
            denied: Mutex::default(),
        }
    }

    pub fn update(&self, index: PolicyIndex) {
        self.index.store(Arc::new(index));
    }

    /// Denies so far, per policy name.
    pub fn denied(&self) -> BTreeMap<String, u64> {
        self.denied.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn count(&self, policy: &str) {
        if let Ok(mut g) = self.denied.lock() {
            *g.entry(policy.to_string()).or_default() += 1;
        }
    }
}

impl InboundGate for PolicyGate {
    fn check(&self, t: &InboundTunnel) -> Result<(), String> {
        let index = self.index.load();
        let Some(policy) = index.policy_for(t.target.ip()) else {
            return Ok(());
        };
        let pa = &policy.peer_authentication;
        let port = t.target.port();
        // An HBONE tunnel is always mutual TLS.
        if let Err(why) = admit_transport(pa, port, true) {
            self.count(&policy.name);
            return Err(format!("{}: {why}", policy.name));
        }
        let req = AuthzRequest {
            source_ip: t.client.unwrap_or(t.peer_addr.ip()),
            source_principal: effective_principal(pa, port, Some(t.peer.as_str())),
            destination_ip: t.target.ip(),
            destination_port: port,
            http: None,
        };
        match authorize(&policy.authorization, &req) {
            Verdict::Allow { .. } => Ok(()),
            Verdict::Deny { policy, .. } => {
                self.count(&policy);
                Err(policy)
            }
        }
    }
}

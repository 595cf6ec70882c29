//! Keeps the node's identities and inbound policies in step with the served
//! NodeConfig.

use std::sync::Arc;

use tokio::sync::watch;

use super::CertStore;
use crate::authz::{PolicyGate, PolicyIndex};
use crate::config_store::Snapshot;

/// On every served config: issue/drop workload certificates for its pods and
/// swap the inbound policy index. Returns when the config store is gone.
pub async fn follow_config(
    mut changes: watch::Receiver<Snapshot>,
    store: Arc<CertStore>,
    gate: Arc<PolicyGate>,
) {
    loop {
        let served = changes.borrow_and_update().clone();
        if let Some(served) = served {
            let cfg = &served.config;
            // Policies first: they are cheap, and a pod must not be reachable
            // under a new identity with the old policy.
            gate.update(PolicyIndex::from_node_config(cfg));
            if cfg.node.trust_domain != store.trust_domain() {
                tracing::warn!(
                    config = %cfg.node.trust_domain,
                    ca = %store.trust_domain(),
                    "node.trustDomain differs from the CA's trust domain; identities not updated"
                );
            } else {
                match store.sync_node_config(cfg).await {
                    Ok(()) => tracing::info!(
                        version = cfg.version,
                        identities = store.snapshot().certs.len(),
                        "workload identities in step with the config"
                    ),
                    Err(e) => {
                        let snap = store.snapshot();
                        tracing::warn!(
                            version = cfg.version,
                            identities = snap.certs.len(),
                            without_certificate = snap.pending.len(),
                            error = %e,
                            "some workload identities have no certificate (retried with rotation)"
                        )
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

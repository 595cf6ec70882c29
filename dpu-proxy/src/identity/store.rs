//! The certificate store: one workload certificate per SPIFFE ID of the
//! pods this node serves, read lock-free from an `ArcSwap` snapshot on the
//! handshake path and renewed in the background before it expires.
//!
//! Rotation swaps the snapshot; TLS sessions already established keep the
//! key they were made with, so existing connections are never dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use dpumesh_api::config::NodeConfig;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::{IdentityError, SpiffeId, WorkloadCert};

pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCert, IdentityError>> + Send + 'a>>;

/// Something that signs workload certificates: the built-in CA
/// ([`super::BuiltinCa`]) or istiod's `CreateCertificate` ([`super::IstiodCa`]).
pub trait CertIssuer: Send + Sync {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Issue a fresh certificate (with a new key) for `id`.
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a>;
    /// Roots peers' chains must lead to.
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>>;
}

/// An immutable view of the store.
#[derive(Debug, Default)]
pub struct StoreSnapshot {
    pub certs: BTreeMap<SpiffeId, Arc<WorkloadCert>>,
    /// Pod IP → identity of the pod holding it (only identities that have
    /// a certificate: a pod without one is not served over HBONE).
    pub by_ip: HashMap<IpAddr, SpiffeId>,
    /// Identities of the config whose first issuance failed, with their pod
    /// IPs; retried by [`CertStore::retry_pending`] (the rotation loop).
    pub pending: BTreeMap<SpiffeId, Vec<IpAddr>>,
}

pub struct CertStore {
    trust_domain: String,
    issuer: Arc<dyn CertIssuer>,
    roots: Arc<RootCertStore>,
    snapshot: ArcSwap<StoreSnapshot>,
    /// Fraction of a certificate's lifetime after which it is renewed.
    refresh_fraction: f64,
    /// Serialises writers (sync and rotation); readers never take it.
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("trust_domain", &self.trust_domain)
            .field("issuer", &self.issuer.name())
            .field("identities", &self.snapshot.load().certs.len())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn new(trust_domain: &str, issuer: Arc<dyn CertIssuer>) -> Result<Self, IdentityError> {
        let mut roots = RootCertStore::empty();
        for anchor in issuer.trust_anchors() {
            roots
                .add(anchor)
                .map_err(|e| IdentityError::Parse(format!("trust anchor: {e}")))?;
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            issuer,
            roots: Arc::new(roots),
            snapshot: ArcSwap::from_pointee(StoreSnapshot::default()),
            refresh_fraction: 0.5,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Renew at this fraction of the lifetime (default 0.5, as Istio does).
    pub fn with_refresh_fraction(mut self, fraction: f64) -> Self {
        self.refresh_fraction = fraction.clamp(0.05, 0.95);
        self
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    pub fn snapshot(&self) -> Arc<StoreSnapshot> {
        self.snapshot.load_full()
    }

    pub fn get(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        self.snapshot.load().certs.get(id).cloned()
    }

    pub fn identity_for_ip(&self, ip: IpAddr) -> Option<SpiffeId> {
        self.snapshot.load().by_ip.get(&ip).cloned()
    }

    /// Make the store hold exactly the identities of `pods` (SPIFFE ID and
    /// the pod's IPs): issue what is missing, drop what is gone, keep the rest.
    /// An identity whose issuance fails is left out (no certificate, its IPs
    /// not served) and kept as pending; the others are stored anyway. The
    /// first failure is returned after the store is updated.
    pub async fn sync(&self, pods: &[(SpiffeId, Vec<IpAddr>)]) -> Result<(), IdentityError> {
        let _w = self.writer.lock().await;
        let old = self.snapshot.load_full();
        let mut wanted: BTreeMap<SpiffeId, Vec<IpAddr>> = BTreeMap::new();
        for (id, ips) in pods {
            wanted.entry(id.clone()).or_default().extend(ips);
        }
        let mut next = StoreSnapshot::default();
        let mut first_err = None;
        for (id, ips) in wanted {
            let cert = match old.certs.get(&id) {
                Some(c) => c.clone(),
                None => match self.issuer.issue(&id).await {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::warn!(identity = %id, issuer = self.issuer.name(), error = %e, "no certificate for this identity; its pods are not served over HBONE until it is issued");
                        first_err.get_or_insert(e);
                        next.pending.insert(id, ips);
                        continue;
                    }
                },
            };
            for ip in &ips {
                next.by_ip.insert(*ip, id.clone());
            }
            next.certs.insert(id, cert);
        }
        self.snapshot.store(Arc::new(next));
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Try again to issue the identities whose issuance failed; returns how
    /// many got a certificate.
    pub async fn retry_pending(&self) -> Result<usize, IdentityError> {
        let _w = self.writer.lock().await;
        let old = self.snapshot.load_full();
        if old.pending.is_empty() {
            return Ok(0);
        }
        let mut certs = old.certs.clone();
        let mut by_ip = old.by_ip.clone();
        let mut pending = BTreeMap::new();
        let mut first_err = None;
        let mut n = 0;
        for (id, ips) in &old.pending {
            match self.issuer.issue(id).await {
                Ok(c) => {
                    for ip in ips {
                        by_ip.insert(*ip, id.clone());
                    }
                    certs.insert(id.clone(), Arc::new(c));
                    n += 1;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    pending.insert(id.clone(), ips.clone());
                }
            }
        }
        self.snapshot.store(Arc::new(StoreSnapshot {
            certs,
            by_ip,
            pending,
        }));
        match first_err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// [`Self::sync`] with the pods of a NodeConfig. Pods whose IDs or IPs do
    /// not parse are named in the error.
    pub async fn sync_node_config(&self, cfg: &NodeConfig) -> Result<(), IdentityError> {
        let mut pods = Vec::with_capacity(cfg.pods.len());
        for pod in &cfg.pods {
            let id = SpiffeId::parse(&pod.spiffe_id(&cfg.node.trust_domain))?;
            let mut ips = Vec::new();
            for ip in &pod.ips {
                let ip: IpAddr = ip.parse().map_err(|_| IdentityError::Issuer {
                    id: id.to_string(),
                    reason: format!("pod {}/{} has invalid ip {ip:?}", pod.namespace, pod.name),
                })?;
                ips.push(ip);
            }
            pods.push((id, ips));
        }
        self.sync(&pods).await
    }

    /// Renew every certificate past its refresh point at `now`; returns how
    /// many were renewed. A failed renewal keeps the old certificate (still
    /// valid until `not_after`) and is reported.
    pub async fn rotate_due(&self, now: SystemTime) -> Result<usize, IdentityError> {
        let _w = self.writer.lock().await;
        let old = self.snapshot.load_full();
        let due: Vec<SpiffeId> = old
            .certs
            .iter()
            .filter(|(_, c)| c.refresh_at(self.refresh_fraction) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        self.replace(&old, &due).await
    }

    /// Renew one identity now, whatever its age.
    pub async fn rotate(&self, id: &SpiffeId) -> Result<(), IdentityError> {
        let _w = self.writer.lock().await;
        let old = self.snapshot.load_full();
        if !old.certs.contains_key(id) {
            return Err(IdentityError::Unknown(id.to_string()));
        }
        self.replace(&old, std::slice::from_ref(id))
            .await
            .map(|_| ())
    }

    async fn replace(&self, old: &StoreSnapshot, ids: &[SpiffeId]) -> Result<usize, IdentityError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut certs = old.certs.clone();
        let mut first_err = None;
        let mut n = 0;
        for id in ids {
            match self.issuer.issue(id).await {
                Ok(c) => {
                    certs.insert(id.clone(), Arc::new(c));
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(identity = %id, issuer = self.issuer.name(), error = %e, "certificate renewal failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        self.snapshot.store(Arc::new(StoreSnapshot {
            certs,
            by_ip: old.by_ip.clone(),
            pending: old.pending.clone(),
        }));
        match first_err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// Every `every`, until the store is dropped: renew what is due and
    /// retry identities that have no certificate yet.
    pub fn spawn_rotation(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match store.rotate_due(SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(renewed = n, "workload certificates rotated"),
                    Err(e) => tracing::warn!(error = %e, "certificate rotation failed"),
                }
                match store.retry_pending().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(issued = n, "pending workload certificates issued"),
                    Err(e) => {
                        tracing::warn!(error = %e, "pending workload certificates still not issued")
                    }
                }
            }
        })
    }
}

//! Workload identity: SPIFFE IDs, the certificates that prove them, the
//! issuers that sign them and the store that keeps them fresh.
//!
//! dpu-proxy acts for every pod on its node, so it holds one workload
//! certificate per SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) of the pods in
//! the served NodeConfig. Private keys are loaded straight into rustls signing
//! keys and never kept as bytes, printed or logged.

mod ca;
pub mod istiod;
mod node;
mod store;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

pub use ca::{BuiltinCa, CaConfig};
pub use istiod::{IstiodCa, IstiodCaConfig, IstiodCaError};
pub use node::follow_config;
pub use store::{CertIssuer, CertStore, IssueFuture, StoreSnapshot};

/// Errors of identity handling; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid SPIFFE ID {0:?}: {1}")]
    InvalidSpiffeId(String, &'static str),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("loading the private key into rustls failed: {0}")]
    Key(rustls::Error),
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeSan,
    #[error("no certificate for identity {0}")]
    Unknown(String),
    #[error("issuer failed for {id}: {reason}")]
    Issuer { id: String, reason: String },
    #[error("shared CA root {0}")]
    Ca(String),
    #[error("istiod CA: {0}")]
    IstiodConfig(String),
}

/// A parsed SPIFFE ID of the Istio form `spiffe://<td>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_end: usize,
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        Self::parse(&dpumesh_api::config::spiffe_id(
            trust_domain,
            namespace,
            service_account,
        ))
    }

    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = |why| IdentityError::InvalidSpiffeId(uri.to_string(), why);
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("missing spiffe:// scheme"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| bad("missing path"))?;
        if td.is_empty() {
            return Err(bad("empty trust domain"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 4
            || parts[0] != "ns"
            || parts[2] != "sa"
            || parts[1].is_empty()
            || parts[3].is_empty()
        {
            return Err(bad("path is not ns/<namespace>/sa/<service-account>"));
        }
        Ok(Self {
            uri: uri.to_string(),
            td_end: "spiffe://".len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.td_end]
    }

    fn path_part(&self, i: usize) -> &str {
        self.uri[self.td_end + 1..].split('/').nth(i).unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.path_part(1)
    }

    pub fn service_account(&self) -> &str {
        self.path_part(3)
    }

    /// Istio's "principal": the ID without the `spiffe://` scheme.
    pub fn principal(&self) -> &str {
        &self.uri["spiffe://".len()..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// One workload certificate: leaf + intermediates, and the signing key
/// already loaded into rustls. There is deliberately no way to get the key
/// bytes back out, and `Debug` prints only public facts.
pub struct WorkloadCert {
    pub identity: SpiffeId,
    /// Leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex serial of the leaf.
    pub serial: String,
    certified: Arc<CertifiedKey>,
}

impl WorkloadCert {
    /// Build from a chain and a PKCS#8 key; the key bytes are consumed.
    pub fn new(
        identity: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Parse("empty chain".into()))?;
        let info = tls::leaf_info(leaf)?;
        if info.spiffe_id != identity {
            return Err(IdentityError::Parse(format!(
                "certificate is for {}, expected {}",
                info.spiffe_id, identity
            )));
        }
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pkcs8.into());
        let signing = tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(IdentityError::Key)?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        Ok(Self {
            identity,
            chain,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
            certified,
        })
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The moment from which this certificate should be replaced:
    /// `fraction` of its lifetime after `not_before`.
    pub fn refresh_at(&self, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.as_str())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_parts() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
    }

    #[test]
    fn spiffe_id_rejects_malformed() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://td/xx/a/sa/b",
            "spiffe://td/ns/a/sa/b/extra",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

//! The built-in CA: a self-signed root and one intermediate, issuing
//! workload certificates. Used in the simulator and as the fallback when
//! istiod's CA is not reachable.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::store::{CertIssuer, IssueFuture};
use super::{IdentityError, SpiffeId, WorkloadCert};

/// Lifetimes of what the built-in CA issues.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: String,
    pub root_ttl: Duration,
    pub intermediate_ttl: Duration,
    /// Workload certificate lifetime (Istio's default is 24h).
    pub workload_ttl: Duration,
}

impl CaConfig {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_ttl: Duration::from_secs(365 * 24 * 3600),
            workload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Certificates are back-dated by this much to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

pub struct BuiltinCa {
    config: CaConfig,
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for BuiltinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&b)
}

fn ca_params(
    cn: String,
    td: &str,
    from: SystemTime,
    ttl: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = (from - BACKDATE).into();
    p.not_after = (from + ttl).into();
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

impl BuiltinCa {
    pub fn new(config: CaConfig) -> Result<Self, IdentityError> {
        let now = SystemTime::now();
        let td = config.trust_domain.clone();
        let root_key = KeyPair::generate()?;
        let root_params = ca_params(
            format!("dpumesh root CA {td}"),
            &td,
            now,
            config.root_ttl,
            None,
        );
        let root_cert = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate()?;
        let int_params = ca_params(
            format!("dpumesh intermediate CA {td}"),
            &td,
            now,
            config.intermediate_ttl,
            Some(0),
        );
        let int_cert = int_params.signed_by(&int_key, &root_issuer)?;
        Ok(Self {
            root: root_cert.der().clone(),
            intermediate: int_cert.der().clone(),
            issuer: Issuer::new(int_params, int_key),
            config,
        })
    }

    /// A CA whose root is shared through `path` (one PEM file: the root's
    /// PKCS#8 private key, then its certificate), so that several dpu-proxy
    /// processes (nodes) trust each other. The first process creates the
    /// file (atomically, mode 0600); the others load it. Each process makes
    /// its own intermediate under that root.
    pub fn with_shared_root(
        config: CaConfig,
        path: &std::path::Path,
    ) -> Result<Self, IdentityError> {
        let bad = |why: String| IdentityError::Ca(format!("{}: {why}", path.display()));
        let pem = match std::fs::read_to_string(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = SystemTime::now();
                let td = config.trust_domain.clone();
                let key = KeyPair::generate()?;
                let params = ca_params(
                    format!("dpumesh root CA {td}"),
                    &td,
                    now,
                    config.root_ttl,
                    None,
                );
                let cert = params.self_signed(&key)?;
                let pem = format!("{}{}", key.serialize_pem(), cert.pem());
                write_new(path, &pem).map_err(|e| bad(e.to_string()))?;
                std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let key = KeyPair::from_pem(&pem).map_err(|e| bad(format!("root key: {e}")))?;
        let cert_pem = pem
            .find("-----BEGIN CERTIFICATE-----")
            .map(|i| &pem[i..])
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?;
        let root_issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad(format!("root certificate: {e}")))?;
        let root = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("root certificate: {e}")))?;
        let now = SystemTime::now();
        let td = config.trust_domain.clone();
        let int_key = KeyPair::generate()?;
        let int_params = ca_params(
            format!("dpumesh intermediate CA {td}"),
            &td,
            now,
            config.intermediate_ttl,
            Some(0),
        );
        let int_cert = int_params.signed_by(&int_key, &root_issuer)?;
        Ok(Self {
            root,
            intermediate: int_cert.der().clone(),
            issuer: Issuer::new(int_params, int_key),
            config,
        })
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The trust anchor peers verify against.
    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// Issue a workload certificate valid for the configured TTL from now.
    pub fn issue_now(&self, id: &SpiffeId) -> Result<WorkloadCert, IdentityError> {
        let now = SystemTime::now();
        self.issue_with_validity(id, now - BACKDATE, now + self.config.workload_ttl)
    }

    /// Issue with an explicit validity window (tests use it for expired certs).
    /// The ID is signed as given, even outside this CA's trust domain, so
    /// tests can prove peers reject it.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, IdentityError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        // Istio workload certs carry an empty subject; the identity is the URI SAN.
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer)?;
        WorkloadCert::new(
            id.clone(),
            vec![cert.der().clone(), self.intermediate.clone()],
            key.serialize_der(),
        )
    }
}

impl CertIssuer for BuiltinCa {
    fn name(&self) -> &'static str {
        "builtin-ca"
    }

    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(async move { self.issue_now(id) })
    }

    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root.clone()]
    }
}

/// Writes `content` to `path` only if it does not exist yet: a temporary file
/// hard-linked into place (fails if another process got there first, which
/// is fine: the caller then reads theirs).
fn write_new(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

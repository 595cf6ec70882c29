//! rustls glue: SPIFFE-aware certificate verifiers and the client/server
//! configs HBONE uses.
//!
//! * Server side: the client must present a chain to our roots, valid now,
//!   with exactly one `spiffe://` URI SAN in our trust domain.
//! * Client side: the server's chain must lead to our roots and its SPIFFE ID
//!   must equal the identity the endpoint should have. Host names are not
//!   checked: workload certificates carry only the URI SAN.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::{CertStore, IdentityError, SpiffeId};

/// ALPN of HBONE (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The process-wide crypto provider (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Public facts of a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    pub spiffe_id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parse a leaf: its single `spiffe://` URI SAN and its validity.
pub fn leaf_info(der: &CertificateDer<'_>) -> Result<LeafInfo, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut ids = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    ids.push(SpiffeId::parse(uri)?);
                }
            }
        }
    }
    let spiffe_id = match ids.len() {
        1 => ids.remove(0),
        0 => return Err(IdentityError::NoSpiffeSan),
        _ => {
            return Err(IdentityError::Parse(
                "more than one spiffe:// URI SAN".into(),
            ))
        }
    };
    Ok(LeafInfo {
        spiffe_id,
        not_before: to_system_time(cert.validity().not_before),
        not_after: to_system_time(cert.validity().not_after),
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Why a peer identity was refused (carried inside rustls' error so the
/// handshake failure names it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityRejected(pub String);

fn reject(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        IdentityRejected(msg),
    ))))
}

/// Verifies client certificates for the HBONE server.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    pub fn new(roots: Arc<RootCertStore>, trust_domain: &str) -> Result<Self, rustls::Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        Ok(Self {
            inner,
            trust_domain: trust_domain.to_string(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = leaf_info(end_entity).map_err(|e| reject(format!("client certificate: {e}")))?;
        if info.spiffe_id.trust_domain() != self.trust_domain {
            return Err(reject(format!(
                "client identity {} is not in trust domain {}",
                info.spiffe_id, self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a server certificate must show, for [`ServerVerifier`].
pub trait ServerCertCheck: std::fmt::Debug + Send + Sync {
    /// `Ok` if `end_entity` (with `intermediates`), presented for
    /// `server_name`, is acceptable at `now`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// A rustls server certificate verifier: `C` decides on the certificate
/// (typically with [`verify_chain`]); handshake signatures are verified with
/// [`provider`]'s algorithms. Serves HBONE ([`SpiffeServerVerifier`]) and
/// TLS origination.
#[derive(Debug)]
pub struct ServerVerifier<C>(pub C);

impl<C: ServerCertCheck> ServerCertVerifier for ServerVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.check(end_entity, intermediates, server_name, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parses `end_entity` and verifies that its chain (through `intermediates`)
/// leads to `roots` and is valid at `now`, with [`provider`]'s algorithms.
/// Names are not checked.
pub fn verify_chain<'a>(
    end_entity: &'a CertificateDer<'a>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    now: UnixTime,
) -> Result<ParsedCertificate<'a>, rustls::Error> {
    let parsed = ParsedCertificate::try_from(end_entity)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider().signature_verification_algorithms.all,
    )?;
    Ok(parsed)
}

/// The HBONE server's chain must lead to `roots` and its SPIFFE ID must be
/// `expected`.
#[derive(Debug)]
pub struct ExpectedServerId {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
}

impl ServerCertCheck for ExpectedServerId {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        verify_chain(end_entity, intermediates, &self.roots, now)?;
        let info = leaf_info(end_entity).map_err(|e| reject(format!("server certificate: {e}")))?;
        if info.spiffe_id != self.expected {
            return Err(reject(format!(
                "server identity {} is not the expected {}",
                info.spiffe_id, self.expected
            )));
        }
        Ok(())
    }
}

/// Verifies the HBONE server holds the identity the endpoint should have.
pub type SpiffeServerVerifier = ServerVerifier<ExpectedServerId>;

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: SpiffeId) -> Self {
        ServerVerifier(ExpectedServerId { roots, expected })
    }
}

/// Presents the current certificate of one identity, read from the store at
/// each handshake so a rotation is picked up by the next connection.
#[derive(Debug)]
pub struct IdentityResolver {
    store: Arc<CertStore>,
    id: SpiffeId,
}

impl IdentityResolver {
    pub fn new(store: Arc<CertStore>, id: SpiffeId) -> Self {
        Self { store, id }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.store.get(&self.id).map(|c| c.certified_key())
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server config presenting `id` and requiring a client certificate from
/// our trust domain; ALPN h2.
pub fn server_config(
    store: &Arc<CertStore>,
    id: SpiffeId,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = SpiffeClientVerifier::new(store.roots(), store.trust_domain())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(IdentityResolver::new(store.clone(), id)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Client config presenting `src` and requiring the server to be `expected`.
pub fn client_config(
    store: &Arc<CertStore>,
    src: SpiffeId,
    expected: SpiffeId,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            store.roots(),
            expected,
        )))
        .with_client_cert_resolver(Arc::new(IdentityResolver::new(store.clone(), src)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

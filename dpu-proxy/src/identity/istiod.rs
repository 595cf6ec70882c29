//! istiod's CA as a [`CertIssuer`]: the same `IstioCertificateService/
//! CreateCertificate` exchange Istio ambient's node proxy (ztunnel) makes.
//!
//! For each identity: a fresh ECDSA P-256 key made in this process (it never
//! leaves it and is never logged), a CSR whose only SAN is the SPIFFE URI,
//! sent over TLS (istiod's certificate verified against the configured
//! roots) with `authorization: Bearer <token>` (the projected
//! service-account token, re-read from its file on every call so rotation of
//! the token works) and `clusterid: <cluster>`. Identities other than the
//! proxy's own carry `ImpersonatedIdentity = <SPIFFE ID>` in the request's
//! metadata Struct, as ztunnel does. The answer is checked before it is
//! used: a non-empty chain, a leaf that parses, whose URI SAN is the
//! requested ID, whose public key is ours, and which chains to the
//! configured roots. Anything else is an error naming what was wrong; the
//! store then keeps the old certificate (rotation) or serves no certificate
//! for that identity (first issue).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore};
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::store::{CertIssuer, IssueFuture};
use super::{tls, IdentityError, SpiffeId, WorkloadCert};

/// Generated from the vendored `proto/istio/security/v1alpha1/ca.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::IstioCertificateRequest;

/// Istio's default cluster ID (istiod's `CLUSTER_ID`).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// istiod's CA address inside a cluster.
pub const DEFAULT_ADDR: &str = "https://istiod.istio-system.svc:15012";
/// Where a pod gets the projected token with audience `istio-ca`.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-token";
/// istiod's root certificate (the `istio-ca-root-cert` ConfigMap, mounted).
pub const DEFAULT_ROOT_FILE: &str = "/var/run/secrets/istio/root-cert.pem";
/// The request metadata field naming the workload a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why istiod's CA did not give us a usable certificate.
#[derive(Debug, thiserror::Error)]
pub enum IstiodCaError {
    #[error("reading the CA token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("CA token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("CA token file {0} holds characters not allowed in a header")]
    TokenNotAscii(PathBuf),
    #[error("building the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("istiod refused the token (Unauthenticated): {0}")]
    Unauthenticated(String),
    #[error("istiod denied the request (PermissionDenied): {0}")]
    PermissionDenied(String),
    #[error("CreateCertificate failed ({code:?}): {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("istiod returned an empty certificate chain")]
    EmptyChain,
    #[error("certificate chain entry {index} is not PEM certificates: {reason}")]
    BadPem { index: usize, reason: String },
    #[error("the issued leaf certificate does not parse: {0}")]
    LeafParse(String),
    #[error("istiod issued a certificate for {got}, but {want} was requested")]
    WrongIdentity { got: String, want: String },
    #[error("the issued leaf certificate's public key is not the key of our CSR")]
    KeyMismatch,
    #[error("the issued chain does not lead to the configured CA root: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

/// How to reach istiod's CA and what to ask for.
#[derive(Debug, Clone)]
pub struct IstiodCaConfig {
    /// `https://host:port` (the host is resolved at each connect).
    pub addr: Uri,
    /// TLS server name (SNI, the name istiod's certificate must carry) and
    /// the gRPC `:authority`; default the host of `addr`.
    pub server_name: String,
    /// istiod's root(s): verify istiod's certificate and are the mesh's
    /// trust anchors for peers' workload certificates.
    pub roots: Vec<CertificateDer<'static>>,
    /// Where the root PEM came from (for messages).
    pub roots_file: PathBuf,
    /// The projected service-account token, read at every request.
    pub token_file: PathBuf,
    /// Sent as the `clusterid` header.
    pub cluster_id: String,
    /// The proxy's own SPIFFE ID (its token's service account): requests
    /// for it carry no `ImpersonatedIdentity`.
    pub own_identity: Option<SpiffeId>,
    /// Requested validity (`validity_duration`); istiod may shorten it.
    pub workload_ttl: Duration,
    /// Deadline of one CreateCertificate call (connect included).
    pub request_timeout: Duration,
}

impl IstiodCaConfig {
    /// Checks what can be checked without istiod: `addr` is an `https://`
    /// URI with a host, the root file holds at least one certificate and
    /// the token file is readable and non-empty. Every error names the flag
    /// value at fault.
    pub fn new(addr: &str, roots_file: &Path, token_file: &Path) -> Result<Self, IdentityError> {
        let bad = |why: String| IdentityError::IstiodConfig(why);
        let uri: Uri = addr
            .parse()
            .map_err(|e| bad(format!("CA address {addr:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(format!(
                "CA address {addr:?}: must be https://host:port (istiod's CA speaks TLS)"
            )));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad(format!("CA address {addr:?}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let roots = load_roots(roots_file)?;
        read_token(token_file).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            addr: uri,
            server_name: host,
            roots,
            roots_file: roots_file.to_path_buf(),
            token_file: token_file.to_path_buf(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            own_identity: None,
            workload_ttl: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(10),
        })
    }

    fn port(&self) -> u16 {
        self.addr.port_u16().unwrap_or(443)
    }

    fn host(&self) -> String {
        self.addr
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }
}

/// Reads every certificate of a PEM file (istiod's `root-cert.pem`).
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bad = |why: String| {
        IdentityError::IstiodConfig(format!("CA root file {}: {why}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| bad(format!("certificate {} does not parse: {e}", roots.len())))?;
        roots.push(cert);
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(roots)
}

/// The token, trimmed; never logged.
fn read_token(path: &Path) -> Result<String, IstiodCaError> {
    let raw = std::fs::read_to_string(path).map_err(|e| IstiodCaError::Token {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(IstiodCaError::EmptyToken(path.to_path_buf()));
    }
    Ok(token.to_string())
}

/// Dials istiod: TCP to the address's host and port, then TLS (ALPN h2)
/// verified against the configured roots under `server_name`.
#[derive(Clone)]
struct TlsDialer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

impl tonic::codegen::Service<Uri> for TlsDialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let d = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((d.host.as_str(), d.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(d.tls)
                .connect(d.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// istiod's CA. Cheap to share; the gRPC channel connects lazily and
/// reconnects by itself.
pub struct IstiodCa {
    config: IstiodCaConfig,
    client: IstioCertificateServiceClient<Channel>,
    /// Checks issued chains against the configured roots.
    chain_check: Arc<dyn ClientCertVerifier>,
    /// `clusterid` header value.
    cluster_id: tonic::metadata::AsciiMetadataValue,
}

impl std::fmt::Debug for IstiodCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstiodCa")
            .field("addr", &self.config.addr)
            .field("server_name", &self.config.server_name)
            .field("cluster_id", &self.config.cluster_id)
            .finish_non_exhaustive()
    }
}

impl IstiodCa {
    /// Needs a tokio runtime (the channel is created, not connected).
    pub fn new(config: IstiodCaConfig) -> Result<Self, IdentityError> {
        let bad = |why: String| IdentityError::IstiodConfig(why);
        let mut roots = RootCertStore::empty();
        for root in &config.roots {
            roots.add(root.clone()).map_err(|e| {
                bad(format!(
                    "CA root file {}: unusable root: {e}",
                    config.roots_file.display()
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let mut tls = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS to the CA: {e}")))?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|e| bad(format!("CA server name {:?}: {e}", config.server_name)))?;
        let dialer = TlsDialer {
            host: config.host(),
            port: config.port(),
            server_name,
            tls: Arc::new(tls),
        };
        // tonic (built without its TLS features) refuses https:// URIs for a
        // custom connector, so the endpoint says http:// and the origin
        // (:scheme, :authority) says https://<server name>:<port>.
        let authority = match config.server_name.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", config.server_name, config.port()),
            Err(_) => format!("{}:{}", config.server_name, config.port()),
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| bad(format!("CA address: {e}")))?
            .origin(
                format!("https://{authority}")
                    .parse()
                    .map_err(|e| bad(format!("CA server name: {e}")))?,
            )
            .connect_timeout(config.request_timeout)
            .timeout(config.request_timeout);
        let channel = endpoint.connect_with_connector_lazy(dialer);
        let cluster_id = config.cluster_id.parse().map_err(|_| {
            bad(format!(
                "cluster ID {:?} is not a valid header value",
                config.cluster_id
            ))
        })?;
        let chain_check = WebPkiClientVerifier::builder_with_provider(roots, tls::provider())
            .build()
            .map_err(|e| bad(format!("chain verifier: {e}")))?;
        Ok(Self {
            config,
            client: IstioCertificateServiceClient::new(channel),
            chain_check,
            cluster_id,
        })
    }

    pub fn config(&self) -> &IstiodCaConfig {
        &self.config
    }

    async fn create(&self, id: &SpiffeId) -> Result<WorkloadCert, IstiodCaError> {
        let token = read_token(&self.config.token_file)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;

        let metadata = if self.config.own_identity.as_ref() == Some(id) {
            None
        } else {
            Some(prost_types::Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY.to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                    },
                )]),
            })
        };
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.config.workload_ttl.as_secs())
                .unwrap_or(i64::MAX),
            metadata,
        });
        let mut bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| IstiodCaError::TokenNotAscii(self.config.token_file.clone()))?;
        bearer.set_sensitive(true);
        req.metadata_mut().insert("authorization", bearer);
        req.metadata_mut()
            .insert("clusterid", self.cluster_id.clone());
        req.set_timeout(self.config.request_timeout);

        let resp = self
            .client
            .clone()
            .create_certificate(req)
            .await
            .map_err(status_error)?
            .into_inner();
        self.accept(id, &key, resp.cert_chain)
    }

    /// Checks istiod's answer and turns it into a [`WorkloadCert`].
    fn accept(
        &self,
        id: &SpiffeId,
        key: &KeyPair,
        chain_pem: Vec<String>,
    ) -> Result<WorkloadCert, IstiodCaError> {
        if chain_pem.is_empty() {
            return Err(IstiodCaError::EmptyChain);
        }
        // Each entry is one PEM certificate (istiod), but a bundle is accepted.
        let mut chain: Vec<CertificateDer<'static>> = Vec::new();
        for (index, pem) in chain_pem.iter().enumerate() {
            let before = chain.len();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| IstiodCaError::BadPem {
                    index,
                    reason: e.to_string(),
                })?);
            }
            if chain.len() == before {
                return Err(IstiodCaError::BadPem {
                    index,
                    reason: "no CERTIFICATE block".into(),
                });
            }
        }
        // Present leaf + intermediates; the root (istiod sends it last) is
        // the peers' anchor already.
        while chain.len() > 1 && chain.last().is_some_and(|c| self.config.roots.contains(c)) {
            chain.pop();
        }
        let leaf = &chain[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| IstiodCaError::LeafParse(e.to_string()))?;
        let info = tls::leaf_info(leaf).map_err(|e| IstiodCaError::LeafParse(e.to_string()))?;
        if &info.spiffe_id != id {
            return Err(IstiodCaError::WrongIdentity {
                got: info.spiffe_id.to_string(),
                want: id.to_string(),
            });
        }
        if parsed
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref()
            != key.public_key_raw()
        {
            return Err(IstiodCaError::KeyMismatch);
        }
        self.chain_check
            .verify_client_cert(leaf, &chain[1..], UnixTime::now())
            .map_err(|e| IstiodCaError::Untrusted(e.to_string()))?;
        let cert = WorkloadCert::new(id.clone(), chain, key.serialize_der())?;
        tracing::info!(
            identity = %id,
            serial = %cert.serial,
            not_after = ?cert.not_after,
            "workload certificate issued by istiod"
        );
        Ok(cert)
    }
}

/// A gRPC status as a specific error; transport failures keep their cause.
fn status_error(s: tonic::Status) -> IstiodCaError {
    let mut message = s.message().to_string();
    let mut source = std::error::Error::source(&s);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    match s.code() {
        tonic::Code::Unauthenticated => IstiodCaError::Unauthenticated(message),
        tonic::Code::PermissionDenied => IstiodCaError::PermissionDenied(message),
        code => IstiodCaError::Rpc { code, message },
    }
}

impl CertIssuer for IstiodCa {
    fn name(&self) -> &'static str {
        "istiod"
    }

    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(async move {
            self.create(id).await.map_err(|e| IdentityError::Issuer {
                id: id.to_string(),
                reason: format!("istiod CA {}: {e}", self.config.addr),
            })
        })
    }

    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        self.config.roots.clone()
    }
}

//! A fake istiod CA for tests: a real tonic gRPC server over TLS serving
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`. It checks the
//! bearer token (Unauthenticated otherwise), that the CSR's only SAN is the
//! request's `ImpersonatedIdentity` (or the proxy's own identity without
//! it; PermissionDenied otherwise), signs with its own intermediate under its
//! own root and answers leaf + intermediate + root, as istiod does. It can
//! misbehave on purpose (`Mode`).
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use dpu_proxy::identity::istiod::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use dpu_proxy::identity::istiod::proto::{IstioCertificateRequest, IstioCertificateResponse};
use dpu_proxy::identity::{tls, IstiodCa, IstiodCaConfig, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

pub const TD: &str = "cluster.local";
/// The name istiod's serving certificate carries.
pub const ISTIOD_NAME: &str = "istiod.istio-system.svc";
/// The token the fake accepts at start.
pub const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.node-proxy-token.sig";
/// The proxy's own identity: asks without ImpersonatedIdentity.
pub const OWN: &str = "spiffe://cluster.local/ns/dpumesh-system/sa/dpu-proxy";

/// How the fake CA answers a valid request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Sign the CSR as istiod does.
    Sign,
    /// A certificate for another SPIFFE ID (with the CSR's key).
    WrongIdentity,
    /// The right ID, but for a key that is not the CSR's.
    OtherKey,
    /// Signed by a CA that is not under the root we hand out.
    OtherCa,
    /// An empty `cert_chain`.
    EmptyChain,
}

/// One request as istiod saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub authorized: bool,
    pub cluster_id: Option<String>,
    pub impersonated: Option<String>,
    pub csr_san: Option<String>,
    pub validity_duration: i64,
}

pub struct CaKeys {
    pub root_pem: String,
    pub intermediate_pem: String,
    pub intermediate: Issuer<'static, KeyPair>,
}

pub fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TD);
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
    p
}

/// A root and an intermediate under it (istiod's "plugged-in CA" layout).
pub fn make_ca(name: &str) -> CaKeys {
    let root_key = KeyPair::generate().expect("root key");
    let root_params = ca_params(&format!("{name} root"), None);
    let root_cert = root_params.self_signed(&root_key).expect("root");
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().expect("int key");
    let int_params = ca_params(&format!("{name} intermediate"), Some(0));
    let int_cert = int_params.signed_by(&int_key, &root).expect("intermediate");
    CaKeys {
        root_pem: root_cert.pem(),
        intermediate_pem: int_cert.pem(),
        intermediate: Issuer::new(int_params, int_key),
    }
}

pub struct FakeCa {
    ca: CaKeys,
    /// A CA nobody trusts (Mode::OtherCa).
    stranger: CaKeys,
    token: Mutex<String>,
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
}

pub fn workload_params(san: &str) -> Result<CertificateParams, Status> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(
        san.try_into()
            .map_err(|_| Status::invalid_argument("bad SAN"))?,
    )];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(3600)).into();
    Ok(p)
}

/// The gRPC service over the shared state.
pub struct CaSvc(Arc<FakeCa>);

#[tonic::async_trait]
impl IstioCertificateService for CaSvc {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let want = format!("Bearer {}", self.0.token.lock().expect("lock"));
        let authorized = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(want.as_str());
        let cluster_id = req
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let req = req.into_inner();
        let impersonated = req.metadata.as_ref().and_then(|m| {
            match m.fields.get("ImpersonatedIdentity")?.kind.as_ref()? {
                prost_types::value::Kind::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        });
        let csr = CertificateSigningRequestParams::from_pem(&req.csr)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        let sans: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        self.0.seen.lock().expect("lock").push(Seen {
            authorized,
            cluster_id,
            impersonated: impersonated.clone(),
            csr_san: sans.first().cloned(),
            validity_duration: req.validity_duration,
        });
        if !authorized {
            return Err(Status::unauthenticated(
                "request authenticate failure: no valid bearer token",
            ));
        }
        // istiod: the caller must be allowed every SAN; a node proxy may ask
        // for the workload it names in ImpersonatedIdentity, else only its own.
        let allowed = impersonated.as_deref().unwrap_or(OWN);
        if sans.len() != 1 || sans[0] != allowed {
            return Err(Status::permission_denied(format!(
                "CSR SANs {sans:?} are not {allowed}"
            )));
        }
        let mode = *self.0.mode.lock().expect("lock");
        let sign = |ca: &CaKeys, san: &str, other_key: bool| -> Result<String, Status> {
            let p = workload_params(san)?;
            let cert = if other_key {
                let k = KeyPair::generate().map_err(|e| Status::internal(e.to_string()))?;
                p.signed_by(&k, &ca.intermediate)
            } else {
                p.signed_by(&csr.public_key, &ca.intermediate)
            }
            .map_err(|e| Status::internal(e.to_string()))?;
            Ok(cert.pem())
        };
        let (leaf, ca) = match mode {
            Mode::Sign => (sign(&self.0.ca, &sans[0], false)?, &self.0.ca),
            Mode::WrongIdentity => (
                sign(
                    &self.0.ca,
                    "spiffe://cluster.local/ns/evil/sa/mallory",
                    false,
                )?,
                &self.0.ca,
            ),
            Mode::OtherKey => (sign(&self.0.ca, &sans[0], true)?, &self.0.ca),
            Mode::OtherCa => (sign(&self.0.stranger, &sans[0], false)?, &self.0.stranger),
            Mode::EmptyChain => {
                return Ok(Response::new(IstioCertificateResponse {
                    cert_chain: vec![],
                }))
            }
        };
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf, ca.intermediate_pem.clone(), ca.root_pem.clone()],
        }))
    }
}

/// A server-side TLS stream tonic can serve.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The running fake istiod; stops when dropped.
pub struct FakeIstiod {
    pub addr: SocketAddr,
    pub state: Arc<FakeCa>,
    pub dir: tempfile::TempDir,
    pub _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeIstiod {
    /// Serves on `ip` (any port), TLS with a serving certificate for
    /// `istiod.istio-system.svc` under its root.
    pub async fn start(ip: &str) -> Self {
        let l = std::net::TcpListener::bind((ip, 0)).expect("bind istiod");
        Self::start_on(vec![l]).await
    }

    /// Serves on already bound listeners (e.g. bound inside other network
    /// namespaces), all one CA; `addr` is the first one's.
    pub async fn start_on(listeners: Vec<std::net::TcpListener>) -> Self {
        let ca = make_ca("fake istiod");
        let serving_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![ISTIOD_NAME.to_string()]).expect("params");
        p.distinguished_name = DistinguishedName::new();
        let serving = p
            .signed_by(&serving_key, &ca.intermediate)
            .expect("serving cert");
        let int_der = CertificateDer::from_pem_slice(ca.intermediate_pem.as_bytes())
            .expect("intermediate der");
        let mut server_tls = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![serving.der().clone(), int_der],
                PrivateKeyDer::Pkcs8(serving_key.serialize_der().into()),
            )
            .expect("server tls");
        server_tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

        let state = Arc::new(FakeCa {
            ca,
            stranger: make_ca("stranger"),
            token: Mutex::new(TOKEN.to_string()),
            mode: Mutex::new(Mode::Sign),
            seen: Mutex::new(Vec::new()),
        });
        let addr = listeners[0].local_addr().expect("addr");
        let (conns_tx, conns_rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(16);
        for l in listeners {
            l.set_nonblocking(true).expect("nonblocking");
            let listener = TcpListener::from_std(l).expect("tokio listener");
            let acceptor = acceptor.clone();
            let conns_tx = conns_tx.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let tx = conns_tx.clone();
                    tokio::spawn(async move {
                        // A client that refuses our certificate just goes away.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = tx.send(Ok(TlsIo(tls))).await;
                        }
                    });
                }
            });
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = IstioCertificateServiceServer::new(CaSvc(state.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(conns_rx),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let me = Self {
            addr,
            state,
            dir,
            _stop: stop,
        };
        std::fs::write(me.root_file(), &me.state.ca.root_pem).expect("root file");
        me.write_token(TOKEN);
        me
    }

    /// istiod's root-cert.pem.
    pub fn root_file(&self) -> PathBuf {
        self.dir.path().join("root-cert.pem")
    }

    /// The projected token file the proxy reads.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("istio-token")
    }

    /// Replaces the token file (as the kubelet does: new file, rename).
    pub fn write_token(&self, token: &str) {
        let tmp = self.dir.path().join("istio-token.tmp");
        let mut f = std::fs::File::create(&tmp).expect("token tmp");
        f.write_all(token.as_bytes()).expect("write token");
        std::fs::rename(&tmp, self.token_file()).expect("rename token");
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().expect("lock") = m;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A client of this CA as dpu-proxy builds it.
    pub fn client(&self) -> Arc<IstiodCa> {
        let mut cfg = IstiodCaConfig::new(&self.url(), &self.root_file(), &self.token_file())
            .expect("CA config");
        cfg.server_name = ISTIOD_NAME.to_string();
        cfg.own_identity = Some(SpiffeId::parse(OWN).expect("own id"));
        cfg.workload_ttl = Duration::from_secs(3600);
        cfg.request_timeout = Duration::from_secs(5);
        Arc::new(IstiodCa::new(cfg).expect("istiod CA"))
    }
}

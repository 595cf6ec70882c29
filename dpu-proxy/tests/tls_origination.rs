//! TLS origination (`SIMPLE` / `MUTUAL` clusters) against a real TLS server:
//! a tokio-rustls server on a socket, with certificates made here, answering
//! HTTP/1.1 or HTTP/2 (by ALPN) with what it saw of the handshake (SNI, ALPN,
//! the client certificate). The client speaks plaintext HTTP to the proxy,
//! which originates TLS, as a sidecar does for an egress DestinationRule.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use dpu_proxy::proxy::Flag;
use support::{get, node_config, Client, TestProxy};

const HOST: &str = "api.example.com";
/// The address the client calls (a ServiceEntry VIP): plain HTTP on 80.
const VIP: &str = "240.240.0.1:80";
const VIP_H2: &str = "240.240.0.1:81";

/// A CA and the PEM of its certificate.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf for `names` (DNS SANs) with common name `cn`: (chain PEM, key PEM).
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("PEM key")
}

/// The external service: TLS with `leaf`, HTTP/1.1 or h2 by ALPN; with
/// `client_ca`, a client certificate signed by it is required. Each answer
/// carries `x-sni`, `x-alpn` and `x-client` (the client certificate's CN);
/// `seen` records each request's authority and ALPN.
struct TlsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    async fn start(leaf: &(String, String), client_ca: Option<&Ca>) -> TlsServer {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(certs(&ca.pem).remove(0)).expect("client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&leaf.0), key(&leaf.1))
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    // A failed handshake (the test's wrong-CA cases) just ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().unwrap_or("").to_string();
                    let alpn = conn
                        .alpn_protocol()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .unwrap_or_else(|| "none".into());
                    let client = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| common_name(c))
                        .unwrap_or_else(|| "none".into());
                    let h2 = alpn == "h2";
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                let h = req.headers().get(http::header::HOST)?;
                                Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
                            })
                            .unwrap_or_default();
                        log.lock().expect("log").push((authority, alpn.clone()));
                        let r = Response::builder()
                            .header("x-sni", sni.clone())
                            .header("x-alpn", alpn.clone())
                            .header("x-client", client.clone())
                            .body(Full::new(Bytes::from_static(b"hello over TLS")))
                            .expect("response");
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        TlsServer { addr, task, seen }
    }
}

fn common_name(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("client cert");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

/// The external service `api.example.com` (ports 80 HTTP/1.1 and 81 h2, both
/// to the server's port) with `clusters`, `secrets`.
fn config(
    server: SocketAddr,
    clusters: serde_json::Value,
    secrets: serde_json::Value,
) -> serde_json::Value {
    let mut c = node_config(
        json!([{
            "hostname": HOST, "namespace": "default", "vips": ["240.240.0.1"],
            "ports": [
                {"port": 80, "name": "http", "targetPort": server.port()},
                {"port": 81, "name": "http2", "targetPort": server.port()}
            ],
            "endpoints": [{"address": "127.0.0.1"}]
        }]),
        clusters,
        json!([]),
    );
    c["secrets"] = secrets;
    c
}

fn cluster(port: u16, tls: &str, origination: serde_json::Value) -> serde_json::Value {
    json!({"name": format!("outbound|{port}||{HOST}"), "service": HOST, "port": port,
           "tls": tls, "tlsOrigination": origination})
}

fn handshake_failures(p: &TestProxy, port: u16) -> u64 {
    let compiled = dpu_proxy::proxy::ConfigSource::snapshot(&*p.store).expect("served");
    let name = format!("outbound|{port}||{HOST}");
    compiled
        .cluster(&name)
        .expect("cluster")
        .state
        .tls_handshake_failures
        .load(Ordering::Relaxed)
}

#[tokio::test]
async fn simple_tls_verifies_the_server_and_sends_sni_and_alpn_by_protocol() {
    let ca = Ca::new("external CA");
    let server = TlsServer::start(&ca.leaf(HOST, &[HOST]), None).await;
    let secrets = json!([{"name": "kubernetes://default/api-cacert", "caCertificates": ca.pem}]);
    let origination = json!({"caCertificates": "kubernetes://default/api-cacert"});
    let cfg = config(
        server.addr,
        json!([
            cluster(80, "SIMPLE", origination.clone()),
            cluster(81, "SIMPLE", origination)
        ]),
        secrets,
    );
    let p = TestProxy::start(cfg, &[VIP, VIP_H2]).await;

    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.text(), "hello over TLS");
    assert_eq!(r.headers["x-sni"], HOST, "SNI defaults to the service host");
    assert_eq!(
        r.headers["x-alpn"], "none",
        "istiod sets no ALPN for HTTP/1.1"
    );
    assert_eq!(r.headers["x-client"], "none");

    // An HTTP/2 upstream offers ALPN h2 (istiod's ALPNH2Only).
    let mut c = Client::connect(p.addr(VIP_H2), false)
        .await
        .expect("connect");
    let r = c.get(HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.headers["x-alpn"], "h2");
    assert_eq!(handshake_failures(&p, 80) + handshake_failures(&p, 81), 0);
}

#[tokio::test]
async fn a_server_the_ca_does_not_vouch_for_is_503_uf_and_counted() {
    let ca = Ca::new("external CA");
    let other = Ca::new("some other CA");
    let server = TlsServer::start(&other.leaf(HOST, &[HOST]), None).await;
    let cfg = config(
        server.addr,
        json!([cluster(80, "SIMPLE", json!({"caCertificates": "ca"}))]),
        json!([{"name": "ca", "caCertificates": ca.pem}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    assert!(r.text().contains("UF"), "{}", r.text());
    assert_eq!(p.proxy.stats.flag_count(Flag::UpstreamConnectionFailure), 1);
    assert_eq!(handshake_failures(&p, 80), 1);
}

#[tokio::test]
async fn names_are_checked_sni_by_default_else_the_subject_alt_names() {
    let ca = Ca::new("external CA");
    // The certificate is for another name than the service host.
    let server = TlsServer::start(&ca.leaf("elsewhere", &["elsewhere.example.net"]), None).await;
    let secrets = json!([{"name": "ca", "caCertificates": ca.pem}]);
    let by_sni = config(
        server.addr,
        json!([cluster(80, "SIMPLE", json!({"caCertificates": "ca"}))]),
        secrets.clone(),
    );
    let p = TestProxy::start(by_sni, &[VIP]).await;
    assert_eq!(get(p.addr(VIP), HOST, "/", &[]).await.status.as_u16(), 503);
    assert_eq!(handshake_failures(&p, 80), 1);

    // subjectAltNames naming the certificate's SAN: accepted, SNI unchanged.
    let by_san = config(
        server.addr,
        json!([cluster(
            80,
            "SIMPLE",
            json!({"caCertificates": "ca",
            "subjectAltNames": ["elsewhere.example.net"]})
        )]),
        secrets.clone(),
    );
    let p = TestProxy::start(by_san, &[VIP]).await;
    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.headers["x-sni"], HOST);

    // An explicit sni is sent and checked.
    let by_explicit_sni = config(
        server.addr,
        json!([cluster(
            80,
            "SIMPLE",
            json!({"caCertificates": "ca",
            "sni": "elsewhere.example.net"})
        )]),
        secrets,
    );
    let p = TestProxy::start(by_explicit_sni, &[VIP]).await;
    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.headers["x-sni"], "elsewhere.example.net");

    // insecureSkipVerify: a server no CA vouches for is accepted.
    let untrusted = Ca::new("untrusted");
    let server = TlsServer::start(&untrusted.leaf(HOST, &[HOST]), None).await;
    let skip = config(
        server.addr,
        json!([cluster(80, "SIMPLE", json!({"insecureSkipVerify": true}))]),
        json!([]),
    );
    let p = TestProxy::start(skip, &[VIP]).await;
    assert_eq!(get(p.addr(VIP), HOST, "/", &[]).await.status.as_u16(), 200);
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_the_server_requires() {
    let server_ca = Ca::new("external CA");
    let client_ca = Ca::new("client CA");
    let server = TlsServer::start(&server_ca.leaf(HOST, &[HOST]), Some(&client_ca)).await;
    let (chain, key) = client_ca.leaf("dpumesh-egress-client", &["client.example.com"]);
    let secrets = json!([
        {"name": "kubernetes://default/api-cacert", "caCertificates": server_ca.pem},
        {"name": "kubernetes://default/api", "certificateChain": chain, "privateKey": key}
    ]);
    let cfg = config(
        server.addr,
        json!([
            cluster(
                80,
                "MUTUAL",
                json!({"caCertificates": "kubernetes://default/api-cacert",
                "clientCertificate": "kubernetes://default/api"})
            ),
            // The same server without a client certificate.
            cluster(
                81,
                "SIMPLE",
                json!({"caCertificates": "kubernetes://default/api-cacert"})
            )
        ]),
        secrets,
    );
    let p = TestProxy::start(cfg, &[VIP, VIP_H2]).await;
    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.headers["x-client"], "dpumesh-egress-client");

    // Without a client certificate the server refuses. In TLS 1.3 it does so
    // after the client's side of the handshake is done (as with Envoy): the
    // request fails as a reset, never reaching the server's handler.
    let r = get(p.addr(VIP_H2), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    assert!(
        r.text().contains("UR") || r.text().contains("UF"),
        "{}",
        r.text()
    );
    assert!(r.headers.get("x-client").is_none());
}

#[tokio::test]
async fn a_secret_not_provided_fails_closed() {
    let ca = Ca::new("external CA");
    let server = TlsServer::start(&ca.leaf(HOST, &[HOST]), None).await;
    // The control plane has not provided the CA: an entry without content.
    let cfg = config(
        server.addr,
        json!([cluster(
            80,
            "SIMPLE",
            json!({"caCertificates": "kubernetes://default/late-cacert"})
        )]),
        json!([{"name": "kubernetes://default/late-cacert"}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let r = get(p.addr(VIP), HOST, "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503, "never plaintext: {}", r.text());
    assert_eq!(handshake_failures(&p, 80), 1);
}

/// `autoSni` (istiod's `auto_sni` when a DestinationRule names no `sni`):
/// the SNI is each request's host without its port, connections are pooled
/// per SNI, and the server must be valid for that host.
#[tokio::test]
async fn auto_sni_sends_each_requests_host_and_checks_the_server_for_it() {
    let ca = Ca::new("external CA");
    let other = "other.example.com";
    let server = TlsServer::start(&ca.leaf(HOST, &[HOST, other]), None).await;
    let secrets = json!([{"name": "kubernetes://default/api-cacert", "caCertificates": ca.pem}]);
    let origination = json!({"caCertificates": "kubernetes://default/api-cacert", "autoSni": true});
    let cfg = config(
        server.addr,
        json!([cluster(80, "SIMPLE", origination)]),
        secrets,
    );
    let p = TestProxy::start(cfg, &[VIP]).await;

    // Alternating hosts on one downstream connection: each answer saw its own SNI.
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    for host in [HOST, other, HOST, "other.example.com:80"] {
        let r = c.get(host, "/", &[]).await;
        assert_eq!(r.status.as_u16(), 200, "{host}: {}", r.text());
        let want = host.split(':').next().unwrap_or(host);
        assert_eq!(r.headers["x-sni"], want, "{host}");
    }
    assert_eq!(handshake_failures(&p, 80), 0);

    // A host the server's certificate is not valid for: 503 UF, counted.
    let r = get(p.addr(VIP), "evil.example.com", "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    assert_eq!(handshake_failures(&p, 80), 1);
}

/// A mirror (VirtualService `mirror`) to a `SIMPLE` cluster originates TLS
/// with that cluster's settings, as Envoy's shadow does; it used to fail,
/// never in plaintext but never delivered either.
#[tokio::test]
async fn mirrored_requests_to_a_tls_cluster_originate_tls_with_its_settings() {
    let ca = Ca::new("external CA");
    let server = TlsServer::start(&ca.leaf(HOST, &[HOST]), None).await;
    let secrets = json!([{"name": "kubernetes://default/api-cacert", "caCertificates": ca.pem}]);
    let origination = json!({"caCertificates": "kubernetes://default/api-cacert"});
    let mut cfg = config(
        server.addr,
        json!([
            cluster(80, "SIMPLE", origination.clone()),
            cluster(81, "SIMPLE", origination)
        ]),
        secrets,
    );
    // Port 80 routes to its own cluster and mirrors everything to port 81's
    // (HTTP/2: the mirror also offers ALPN h2).
    cfg["services"][0]["ports"][0]["routeTable"] = json!("80");
    cfg["routeTables"] = json!([{"name": "80", "virtualHosts": [{
        "name": "api", "domains": ["*"],
        "routes": [{
            "action": {"forward": {"destinations": [{"cluster": format!("outbound|80||{HOST}")}]}},
            "mirror": {"cluster": format!("outbound|81||{HOST}"), "percent": 100.0}
        }]
    }]}]);
    let p = TestProxy::start(cfg, &[VIP]).await;

    for _ in 0..3 {
        let r = get(p.addr(VIP), HOST, "/", &[]).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        assert_eq!(r.text(), "hello over TLS");
    }
    let shadow = format!("{HOST}-shadow");
    let mut mirrored = 0;
    for _ in 0..200 {
        mirrored = server
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(authority, alpn)| authority == &shadow && alpn == "h2")
            .count();
        if mirrored >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = server.seen.lock().expect("seen").clone();
    assert_eq!(mirrored, 3, "three mirrors over TLS + h2: {seen:?}");
    assert_eq!(
        seen.iter().filter(|(a, _)| a == HOST).count(),
        3,
        "{seen:?}"
    );
    assert_eq!(p.proxy.stats.mirrored.load(Ordering::Relaxed), 3);
    assert_eq!(handshake_failures(&p, 80) + handshake_failures(&p, 81), 0);
}

#[test]
fn a_secret_that_does_not_parse_rejects_the_config_naming_it() {
    let ca = Ca::new("external CA");
    let (chain, _) = ca.leaf("client", &["client.example.com"]);
    let (_, other_key) = ca.leaf("other", &["other.example.com"]);
    let cfg = config(
        "127.0.0.1:1".parse().expect("addr"),
        json!([cluster(
            80,
            "MUTUAL",
            json!({"caCertificates": "ca", "clientCertificate": "client"})
        )]),
        json!([
            {"name": "ca", "caCertificates": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"},
            {"name": "client", "certificateChain": chain, "privateKey": other_key}
        ]),
    );
    let config: dpumesh_api::NodeConfig = serde_json::from_value(cfg).expect("parses");
    config.validate().expect("structurally valid");
    let store = dpu_proxy::config_store::ConfigStore::new();
    let offer = store.offer(config);
    let text = format!("{offer:?}");
    assert!(
        text.contains("clusters[0].tlsOrigination") && text.contains("secret \\\"ca\\\""),
        "{text}"
    );
}

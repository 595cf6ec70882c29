//! Identity, HBONE and inbound authorization over real sockets on loopback:
//! a built-in CA, one certificate store per "node", the HBONE server in
//! front of a real echo server, and the pooled HBONE client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dpu_proxy::authz::{PolicyGate, PolicyIndex};
use dpu_proxy::hbone::{HboneClient, HboneError, HboneServer, InboundGate, InboundTunnel};
use dpu_proxy::identity::{BuiltinCa, CaConfig, CertIssuer, CertStore, IssueFuture, SpiffeId};
use dpumesh_api::config::NodeConfig;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/hbone_peers.rs"]
mod hbone_peers;
use hbone_peers::{echo_server, Recorder};
use tokio::net::TcpListener;

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).expect("valid id")
}

fn ca(td: &str) -> Arc<BuiltinCa> {
    Arc::new(BuiltinCa::new(CaConfig::new(td)).expect("CA"))
}

async fn store(issuer: Arc<dyn CertIssuer>, pods: &[(SpiffeId, &str)]) -> Arc<CertStore> {
    let s = CertStore::new(TD, issuer).expect("store");
    let pods: Vec<(SpiffeId, Vec<IpAddr>)> = pods
        .iter()
        .map(|(i, ip)| (i.clone(), vec![ip.parse().expect("ip")]))
        .collect();
    s.sync(&pods).await.expect("sync");
    Arc::new(s)
}

struct Node {
    server: Arc<HboneServer>,
    hbone: SocketAddr,
    echo: SocketAddr,
}

/// A server node whose one pod (`pod_id` at `pod_ip`) runs an echo server.
async fn server_node(
    store: Arc<CertStore>,
    pod_ip: &str,
    gate: Option<Arc<dyn InboundGate>>,
) -> Node {
    let echo = echo_server(pod_ip).await;
    let local_ip: IpAddr = pod_ip.parse().expect("ip");
    let mut server = HboneServer::new(store, Arc::new(move |t: SocketAddr| t.ip() == local_ip));
    if let Some(g) = gate {
        server = server.with_gate(g);
    }
    let server = Arc::new(server);
    let l = TcpListener::bind((pod_ip, 0)).await.expect("bind hbone");
    let hbone = l.local_addr().expect("addr");
    tokio::spawn(server.clone().serve(l));
    Node {
        server,
        hbone,
        echo,
    }
}

/// The server records a refused handshake after the client may already have
/// seen the alert: wait for the `n`-th failure and return its reason.
async fn nth_failure(server: &HboneServer, n: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server
        .stats
        .handshakes_failed
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failure {n} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stats.last_failure().expect("failure recorded")
}

async fn roundtrip(s: &mut dpu_proxy::hbone::TunnelStream, msg: &str) -> String {
    s.write_all(msg.as_bytes()).await.expect("write");
    let want = format!("echo:{msg}");
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    String::from_utf8(got).expect("utf8")
}

#[tokio::test]
async fn hbone_round_trip_carries_both_identities() {
    let ca = ca(TD);
    let sleep = id("foo", "sleep");
    let productpage = id("foo", "productpage");
    let reviews = id("bar", "reviews");
    let client_store = store(
        ca.clone(),
        &[
            (sleep.clone(), "127.0.10.1"),
            (productpage.clone(), "127.0.10.2"),
        ],
    )
    .await;
    let server_store = store(ca.clone(), &[(reviews.clone(), "127.0.10.3")]).await;
    let rec = Arc::new(Recorder::default());
    let node = server_node(server_store, "127.0.10.3", Some(rec.clone())).await;
    let client = HboneClient::new(client_store);

    let mut a = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("sleep tunnel");
    let mut b = client
        .connect(&productpage, &reviews, node.hbone, node.echo)
        .await
        .expect("pp tunnel");
    assert_eq!(roundtrip(&mut a, "from-sleep").await, "echo:from-sleep");
    assert_eq!(roundtrip(&mut b, "from-pp").await, "echo:from-pp");
    // A second stream of the same source reuses the pooled connection.
    let mut a2 = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("second");
    assert_eq!(roundtrip(&mut a2, "again").await, "echo:again");
    assert_eq!(client.pooled().await, 2);
    assert_eq!(
        node.server
            .stats
            .handshakes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    let seen = rec.0.lock().expect("lock").clone();
    let peers: Vec<&str> = seen.iter().map(|t| t.peer.as_str()).collect();
    assert_eq!(peers.iter().filter(|p| **p == sleep.as_str()).count(), 2);
    assert_eq!(
        peers.iter().filter(|p| **p == productpage.as_str()).count(),
        1
    );
    assert!(seen
        .iter()
        .all(|t| t.local_identity == reviews && t.target == node.echo));

    // Half-close: the echo server sees EOF, closes, and the client reads EOF.
    a.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .expect("read");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn another_trust_domain_is_refused() {
    let ca_here = ca(TD);
    let reviews = id("bar", "reviews");
    let server_store = store(ca_here.clone(), &[(reviews.clone(), "127.0.11.3")]).await;
    let node = server_node(server_store, "127.0.11.3", None).await;

    // Same CA, but an identity of a foreign trust domain.
    let foreign = SpiffeId::new("evil.example", "foo", "sleep").expect("id");
    let s = CertStore::new(TD, ca_here.clone()).expect("store");
    s.sync(&[(foreign.clone(), vec![])]).await.expect("sync");
    let client = HboneClient::new(Arc::new(s));
    let err = client
        .connect(&foreign, &reviews, node.hbone, node.echo)
        .await;
    assert!(err.is_err(), "foreign trust domain accepted");
    let why = nth_failure(&node.server, 1).await;
    assert!(why.contains("not in trust domain cluster.local"), "{why}");

    // A certificate from another trust domain's CA: the chain does not lead to our root.
    let other_ca = ca("other.td");
    let sleep = id("foo", "sleep");
    let s = CertStore::new(TD, other_ca).expect("store");
    s.sync(&[(sleep.clone(), vec![])]).await.expect("sync");
    let client = HboneClient::new(Arc::new(s));
    assert!(client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .is_err());
    let why = nth_failure(&node.server, 2).await;
    assert!(
        why.to_lowercase().contains("unknown") || why.contains("issuer"),
        "{why}"
    );
    assert_eq!(
        node.server
            .stats
            .handshakes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// An issuer handing out certificates that expired an hour ago.
struct ExpiredIssuer(Arc<BuiltinCa>);

impl CertIssuer for ExpiredIssuer {
    fn name(&self) -> &'static str {
        "expired"
    }
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        let now = SystemTime::now();
        let r = self.0.issue_with_validity(
            id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        Box::pin(async move { r })
    }
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        self.0.trust_anchors()
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = ca(TD);
    let reviews = id("bar", "reviews");
    let sleep = id("foo", "sleep");
    let server_store = store(ca.clone(), &[(reviews.clone(), "127.0.12.3")]).await;
    let node = server_node(server_store, "127.0.12.3", None).await;
    let client_store = store(
        Arc::new(ExpiredIssuer(ca)),
        &[(sleep.clone(), "127.0.12.1")],
    )
    .await;
    let client = HboneClient::new(client_store);
    assert!(client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .is_err());
    let why = nth_failure(&node.server, 1).await;
    assert!(why.to_lowercase().contains("expired"), "{why}");
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    let ca = ca(TD);
    let reviews = id("bar", "reviews");
    let sleep = id("foo", "sleep");
    let server_store = store(
        Arc::new(ExpiredIssuer(ca.clone())),
        &[(reviews.clone(), "127.0.12.13")],
    )
    .await;
    let node = server_node(server_store, "127.0.12.13", None).await;
    let client = HboneClient::new(store(ca, &[(sleep.clone(), "127.0.12.11")]).await);
    let err = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect_err("accepted");
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn wrong_server_identity_is_refused_by_the_client() {
    let ca = ca(TD);
    let reviews = id("bar", "reviews");
    let ratings = id("bar", "ratings");
    let sleep = id("foo", "sleep");
    let server_store = store(ca.clone(), &[(reviews.clone(), "127.0.13.3")]).await;
    let node = server_node(server_store, "127.0.13.3", None).await;
    let client = HboneClient::new(store(ca, &[(sleep.clone(), "127.0.13.1")]).await);
    // The endpoint should be ratings, but the server proves reviews.
    let err = client
        .connect(&sleep, &ratings, node.hbone, node.echo)
        .await
        .expect_err("accepted");
    assert!(err.to_string().contains("is not the expected"), "{err}");
    // With the right expectation the same server is fine.
    let mut ok = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("tunnel");
    assert_eq!(roundtrip(&mut ok, "x").await, "echo:x");
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_ones_use_the_new_cert() {
    let mut cfg = CaConfig::new(TD);
    cfg.workload_ttl = Duration::from_secs(3600);
    let ca = Arc::new(BuiltinCa::new(cfg).expect("CA"));
    let reviews = id("bar", "reviews");
    let sleep = id("foo", "sleep");
    let server_store = store(ca.clone(), &[(reviews.clone(), "127.0.14.3")]).await;
    let client_store = store(ca.clone(), &[(sleep.clone(), "127.0.14.1")]).await;
    let node = server_node(server_store.clone(), "127.0.14.3", None).await;
    let client = HboneClient::new(client_store.clone());
    let mut open = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("tunnel");
    assert_eq!(roundtrip(&mut open, "before").await, "echo:before");

    let old_server = server_store.get(&reviews).expect("cert").serial.clone();
    let old_client = client_store.get(&sleep).expect("cert").serial.clone();
    // Nothing is due yet; at 60% of the lifetime (past the 50% refresh point) both are.
    assert_eq!(
        server_store
            .rotate_due(SystemTime::now())
            .await
            .expect("rotate"),
        0
    );
    let later = SystemTime::now() + Duration::from_secs(2200);
    assert_eq!(server_store.rotate_due(later).await.expect("rotate"), 1);
    assert_eq!(client_store.rotate_due(later).await.expect("rotate"), 1);
    assert_ne!(server_store.get(&reviews).expect("cert").serial, old_server);
    assert_ne!(client_store.get(&sleep).expect("cert").serial, old_client);

    // The open tunnel and its pooled connection keep working.
    assert_eq!(roundtrip(&mut open, "after").await, "echo:after");
    let mut second = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("pooled");
    assert_eq!(roundtrip(&mut second, "pooled").await, "echo:pooled");
    // A fresh client handshakes with the rotated certificates.
    let fresh = HboneClient::new(client_store);
    let mut third = fresh
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("fresh");
    assert_eq!(roundtrip(&mut third, "fresh").await, "echo:fresh");
    assert_eq!(
        node.server
            .stats
            .handshakes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn store_follows_the_node_config() {
    let ca = ca(TD);
    let mut cfg: NodeConfig = serde_json::from_value(json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": "10.244.1.0/24", "dpuMgmtAddr": "192.168.100.2:15080"},
        "pods": [
            {"uid": "u1", "name": "a", "namespace": "foo", "serviceAccount": "sleep", "ips": ["10.244.1.5"], "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1"},
            {"uid": "u2", "name": "b", "namespace": "foo", "ips": ["10.244.1.6"], "mac": "02:00:00:00:00:02", "vfIndex": 2, "representor": "pf0vf2"}
        ]
    }))
    .expect("config");
    let s = CertStore::new(TD, ca).expect("store");
    s.sync_node_config(&cfg).await.expect("sync");
    let sleep = id("foo", "sleep");
    let default = id("foo", "default");
    assert_eq!(
        s.identity_for_ip("10.244.1.5".parse().expect("ip")),
        Some(sleep.clone())
    );
    assert_eq!(
        s.identity_for_ip("10.244.1.6".parse().expect("ip")),
        Some(default.clone())
    );
    let serial = s.get(&sleep).expect("cert").serial.clone();
    // Debug never shows key material.
    let dbg = format!("{:?}", s.get(&sleep).expect("cert"));
    assert!(
        dbg.contains("spiffe://cluster.local/ns/foo/sa/sleep")
            && !dbg.to_lowercase().contains("key"),
        "{dbg}"
    );

    cfg.pods.truncate(1);
    s.sync_node_config(&cfg).await.expect("sync");
    assert!(s.get(&default).is_none());
    assert_eq!(
        s.get(&sleep).expect("kept").serial,
        serial,
        "unchanged identity re-issued"
    );
}

#[tokio::test]
async fn authorization_policy_gates_hbone_tunnels() {
    let ca = ca(TD);
    let reviews = id("bar", "reviews");
    let sleep = id("foo", "sleep");
    let admin = id("admin", "ops");
    let cfg: NodeConfig = serde_json::from_value(json!({
        "version": 1,
        "node": {"name": "n2", "networkMode": "underlay", "podCidr": "127.0.15.0/24", "dpuMgmtAddr": "192.168.100.2:15080"},
        "pods": [{"uid": "u1", "name": "reviews", "namespace": "bar", "serviceAccount": "reviews",
                  "ips": ["127.0.15.3"], "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1",
                  "inboundPolicy": "reviews"}],
        "inboundPolicies": [{"name": "reviews", "peerAuthentication": {"mode": "STRICT"}, "authorization": [
            {"name": "bar/allow-foo", "action": "ALLOW", "rules": [{"from": [{"namespaces": ["foo", "admin"]}]}]},
            {"name": "bar/deny-admin", "action": "DENY", "rules": [{"from": [{"principals": ["cluster.local/ns/admin/sa/ops"]}]}]}
        ]}]
    }))
    .expect("config");
    let gate = Arc::new(PolicyGate::new(PolicyIndex::from_node_config(&cfg)));
    let server_store = store(ca.clone(), &[(reviews.clone(), "127.0.15.3")]).await;
    let node = server_node(server_store, "127.0.15.3", Some(gate.clone())).await;
    let stranger = id("baz", "x");
    let client = HboneClient::new(
        store(
            ca,
            &[
                (sleep.clone(), "127.0.15.1"),
                (admin.clone(), "127.0.15.2"),
                (stranger.clone(), "127.0.15.4"),
            ],
        )
        .await,
    );

    let mut ok = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("allowed");
    assert_eq!(roundtrip(&mut ok, "hi").await, "echo:hi");
    // DENY beats the ALLOW that also matches admin.
    match client
        .connect(&admin, &reviews, node.hbone, node.echo)
        .await
    {
        Err(HboneError::Refused { status, .. }) => assert_eq!(status, http::StatusCode::FORBIDDEN),
        other => panic!("admin not refused: {other:?}"),
    }
    // Matches no ALLOW.
    assert!(matches!(
        client
            .connect(&stranger, &reviews, node.hbone, node.echo)
            .await,
        Err(HboneError::Refused { .. })
    ));
    let denied = gate.denied();
    assert_eq!(denied.get("bar/deny-admin"), Some(&1));
    assert_eq!(denied.get(dpu_proxy::authz::NO_ALLOW_MATCH), Some(&1));
    // A target that is not a local pod is refused too.
    let elsewhere: SocketAddr = "127.0.15.99:80".parse().expect("addr");
    assert!(matches!(
        client
            .connect(&sleep, &reviews, node.hbone, elsewhere)
            .await,
        Err(HboneError::Refused { .. })
    ));
}

#[tokio::test]
async fn served_config_drives_identities_and_policies() {
    use dpu_proxy::config_store::{ConfigStore, Offer};
    let ca = ca(TD);
    let certs = Arc::new(CertStore::new(TD, ca).expect("store"));
    let gate = Arc::new(PolicyGate::new(PolicyIndex::default()));
    let configs = ConfigStore::new();
    tokio::spawn(dpu_proxy::identity::follow_config(
        configs.subscribe(),
        certs.clone(),
        gate.clone(),
    ));
    let mut cfg = json!({
        "version": 1,
        "node": {"name": "n3", "networkMode": "underlay", "podCidr": "10.244.3.0/24", "dpuMgmtAddr": "192.168.100.2:15080"},
        "pods": [{"uid": "u1", "name": "a", "namespace": "foo", "serviceAccount": "sleep", "ips": ["10.244.3.5"],
                  "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1", "inboundPolicy": "strict"}],
        "inboundPolicies": [{"name": "strict", "authorization": [{"name": "foo/deny-all", "action": "DENY", "rules": [{}]}]}]
    });
    let offer =
        |v: &serde_json::Value| configs.offer(serde_json::from_value(v.clone()).expect("config"));
    assert!(matches!(offer(&cfg), Offer::Accepted { .. }));
    let sleep = id("foo", "sleep");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while certs.get(&sleep).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "identity never issued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tunnel = InboundTunnel {
        peer: id("bar", "x"),
        peer_addr: "192.0.2.12:40000".parse().expect("addr"),
        local_identity: sleep.clone(),
        target: "10.244.3.5:9080".parse().expect("addr"),
        client: None,
    };
    assert_eq!(gate.check(&tunnel), Err("foo/deny-all".to_string()));

    // The pod moves to another service account: the old identity goes.
    cfg["version"] = json!(2);
    cfg["pods"][0]["serviceAccount"] = json!("reviews");
    cfg["inboundPolicies"] = json!([{"name": "strict"}]);
    assert!(matches!(offer(&cfg), Offer::Accepted { .. }));
    let reviews = id("foo", "reviews");
    while certs.get(&reviews).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new identity never issued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(certs.get(&sleep).is_none());
    assert_eq!(gate.check(&tunnel), Ok(()));
}

// ---------------------------------------------------------------------------
// HBONE-terminated streams through dpu-proxy's inbound path: the server pod's
// policy sees the peer's verified principal, the pod sees the original client
// IP (from `Forwarded: for=`), L7 denies answer 403, metrics say mutual_tls.

/// A real HTTP/1.1 server in the pod answering "<peer ip> <xfp> <xfcc>".
async fn http_pod(ip: &str) -> SocketAddr {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = TcpListener::bind((ip, 0)).await.expect("bind pod");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let body = format!(
                            "{} {} {}",
                            peer.ip(),
                            h("x-forwarded-proto"),
                            h("x-forwarded-client-cert")
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 GET over a tunnel stream.
async fn get_over(io: dpu_proxy::hbone::TunnelStream, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .expect("h1 over the tunnel");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "reviews")
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn hbone_streams_go_through_the_inbound_policy_with_the_peer_principal() {
    use dpu_proxy::config_store::ConfigStore;
    use dpu_proxy::proxy::{ConfigSource, Proxy, ProxySettings, TunnelsToProxy};

    let pod_ip = "127.0.0.51";
    let pod = http_pod(pod_ip).await;
    let reviews = id("default", "reviews");
    let productpage = id("default", "productpage");
    let intruder = id("other", "intruder");
    let ca = ca(TD);
    let server_store = store(ca.clone(), &[(reviews.clone(), pod_ip)]).await;
    let client_store = store(
        ca.clone(),
        &[
            (productpage.clone(), "127.0.0.52"),
            (intruder.clone(), "127.0.0.53"),
        ],
    )
    .await;

    let cfg: NodeConfig = serde_json::from_value(json!({
        "version": 1,
        "node": {"name": "n2", "networkMode": "underlay", "podCidr": "127.0.0.0/8",
                 "dpuMgmtAddr": "192.168.100.2:15080"},
        "pods": [{"uid": "r1", "name": "reviews-v1", "namespace": "default",
                  "serviceAccount": "reviews", "ips": [pod_ip], "mac": "02:00:00:00:00:33",
                  "vfIndex": 3, "representor": "pf0vf3", "labels": {"app": "reviews"},
                  "inboundPolicy": "reviews-in"}],
        "services": [{"hostname": "reviews.default.svc.cluster.local", "namespace": "default",
                      "vips": ["10.96.0.40"], "ports": [{"port": 9080, "name": "http"}],
                      "endpoints": [{"address": pod_ip, "ports": {"http": pod.port()},
                                     "serviceAccount": "reviews", "node": "n2"}]}],
        "inboundPolicies": [{"name": "reviews-in",
            "peerAuthentication": {"mode": "STRICT"},
            "authorization": [
                {"name": "default/allow-productpage", "action": "ALLOW",
                 "rules": [{"from": [{"principals": ["cluster.local/ns/default/sa/productpage"]}]}]},
                {"name": "default/deny-admin", "action": "DENY",
                 "rules": [{"to": [{"paths": ["/admin"]}]}]}
            ]}]
    }))
    .expect("config parses");
    let config_store = ConfigStore::new();
    assert!(matches!(
        config_store.offer(cfg),
        dpu_proxy::config_store::Offer::Accepted { .. }
    ));
    let source: Arc<dyn ConfigSource> = config_store.clone();
    let proxy = Proxy::new(source, ProxySettings::default());
    let local_ip: IpAddr = pod_ip.parse().expect("ip");
    let server = Arc::new(
        HboneServer::new(
            server_store,
            Arc::new(move |t: SocketAddr| t.ip() == local_ip),
        )
        .with_handler(Arc::new(TunnelsToProxy(proxy.clone()))),
    );
    let l = TcpListener::bind((pod_ip, 0)).await.expect("bind hbone");
    let hbone = l.local_addr().expect("addr");
    tokio::spawn(server.clone().serve(l));

    let client = HboneClient::new(client_store);
    let client_ip: IpAddr = "127.0.0.52".parse().expect("ip");
    // Allowed principal: delivered from the original client IP, over "https".
    let io = client
        .connect_for(&productpage, &reviews, hbone, pod, Some(client_ip))
        .await
        .expect("tunnel opens");
    let (status, body) = get_over(io, "/reviews/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            "127.0.0.52 https By={};URI={}",
            reviews.as_str(),
            productpage.as_str()
        )
    );

    // DENY beats ALLOW for the same principal.
    let io = client
        .connect_for(&productpage, &reviews, hbone, pod, Some(client_ip))
        .await
        .expect("tunnel opens");
    let (status, body) = get_over(io, "/admin").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // Another principal: no ALLOW matches.
    let io = client
        .connect_for(&intruder, &reviews, hbone, pod, None)
        .await
        .expect("tunnel opens");
    let (status, body) = get_over(io, "/reviews/1").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // Plaintext to the same pod would be refused (STRICT); over HBONE it is
    // mutual TLS, and the metrics say so, with both principals.
    let mut text = String::new();
    proxy.metrics.encode(&mut text).expect("metrics");
    let line = |code: &str, principal: &str| {
        text.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains(&format!("source_principal=\"{principal}\""))
                && l.contains(&format!("destination_principal=\"{}\"", reviews.as_str()))
                && l.contains(&format!("response_code=\"{code}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(line("200", productpage.as_str()), "{text}");
    assert!(line("403", productpage.as_str()), "{text}");
    assert!(line("403", intruder.as_str()), "{text}");
    assert!(
        text.contains("dpumesh_authz_total{policy=\"default/deny-admin\",action=\"deny\""),
        "{text}"
    );
}

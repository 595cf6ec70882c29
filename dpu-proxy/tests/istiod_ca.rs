//! Workload certificates from istiod's CA over the real
//! `IstioCertificateService/CreateCertificate` gRPC. The test double
//! (`support/fake_istiod.rs`) is a real tonic server over TLS acting as
//! istiod's CA: it checks the bearer token (Unauthenticated otherwise),
//! checks that the CSR's SAN is the `ImpersonatedIdentity` of the request
//! (PermissionDenied otherwise), signs the CSR with its own intermediate
//! under its own root and returns leaf + intermediate + root, as istiod
//! does. It can also misbehave on purpose (another identity, another key,
//! another CA, empty chain).
//!
//! dpu-proxy's side is the real thing: `IstiodCa` in certificate stores
//! behind real HBONE servers and clients on loopback, and the real
//! `dpu-proxy` binary started with `--ca-addr`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dpu_proxy::hbone::{HboneClient, HboneServer};
use dpu_proxy::identity::{CertStore, IstiodCa, IstiodCaConfig, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "support/fake_istiod.rs"]
mod fake_istiod;

use fake_istiod::{make_ca, FakeIstiod, Mode, Seen, ISTIOD_NAME, OWN, TD, TOKEN};

#[path = "support/hbone_peers.rs"]
mod hbone_peers;
use hbone_peers::{echo_server, Recorder};

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).expect("valid id")
}

// ---------------------------------------------------------------------------
// HBONE around it (as in tests/mtls.rs).

struct Node {
    server: Arc<HboneServer>,
    hbone: SocketAddr,
    echo: SocketAddr,
    recorder: Arc<Recorder>,
}

/// An HBONE server for the pods of `store` in front of an echo "pod" at `pod_ip`.
async fn server_node(store: Arc<CertStore>, pod_ip: &str) -> Node {
    let echo = echo_server(pod_ip).await;
    let local = store.clone();
    let recorder = Arc::new(Recorder::default());
    let server = Arc::new(
        HboneServer::new(
            store,
            Arc::new(move |t: SocketAddr| local.identity_for_ip(t.ip()).is_some()),
        )
        .with_gate(recorder.clone()),
    );
    let l = TcpListener::bind((pod_ip, 0)).await.expect("bind hbone");
    let hbone = l.local_addr().expect("addr");
    tokio::spawn(server.clone().serve(l));
    Node {
        server,
        hbone,
        echo,
        recorder,
    }
}

async fn store_for(
    ca: Arc<IstiodCa>,
    pods: &[(SpiffeId, &str)],
) -> (Arc<CertStore>, Result<(), String>) {
    let s = Arc::new(CertStore::new(TD, ca).expect("store"));
    let pods: Vec<(SpiffeId, Vec<IpAddr>)> = pods
        .iter()
        .map(|(i, ip)| (i.clone(), vec![ip.parse().expect("ip")]))
        .collect();
    let r = s.sync(&pods).await.map_err(|e| e.to_string());
    (s, r)
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

fn issuer_cn(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("parses");
    c.issuer().to_string()
}

// ---------------------------------------------------------------------------
// (a) Two nodes with certificates from istiod talk HBONE.

#[tokio::test]
async fn two_nodes_get_certificates_from_istiod_and_talk_hbone() {
    let istiod = FakeIstiod::start("127.0.40.9").await;
    let sleep = id("foo", "sleep");
    let reviews = id("bar", "reviews");
    let (client_store, r) = store_for(istiod.client(), &[(sleep.clone(), "127.0.40.1")]).await;
    r.expect("client node identities");
    let (server_store, r) = store_for(istiod.client(), &[(reviews.clone(), "127.0.40.3")]).await;
    r.expect("server node identities");

    // What istiod saw: the token, the cluster ID, the impersonated
    // workload equal to the CSR's only SAN, the requested validity.
    let seen = istiod.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, want) in seen.iter().zip([&sleep, &reviews]) {
        assert!(s.authorized, "{s:?}");
        assert_eq!(s.cluster_id.as_deref(), Some("Kubernetes"), "{s:?}");
        assert_eq!(s.impersonated.as_deref(), Some(want.as_str()), "{s:?}");
        assert_eq!(s.csr_san.as_deref(), Some(want.as_str()), "{s:?}");
        assert_eq!(s.validity_duration, 3600, "{s:?}");
    }
    // The chain presented is leaf + istiod's intermediate (the root is the
    // peers' anchor, not sent).
    let cert = client_store.get(&sleep).expect("sleep cert");
    assert_eq!(cert.chain.len(), 2);
    assert!(
        issuer_cn(cert.chain[0].as_ref()).contains("fake istiod intermediate"),
        "{}",
        issuer_cn(cert.chain[0].as_ref())
    );

    let node = server_node(server_store, "127.0.40.3").await;
    let client = HboneClient::new(client_store);
    let mut t = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("tunnel with istiod-issued certificates");
    assert_eq!(roundtrip(&mut t, "via-istiod").await, "echo:via-istiod");
    let seen = node.recorder.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].peer, sleep, "server saw the client's SPIFFE ID");
    assert_eq!(seen[0].local_identity, reviews);
}

/// The proxy's own identity is asked for without ImpersonatedIdentity; a
/// CSR for someone else without it is refused by istiod (PermissionDenied).
#[tokio::test]
async fn own_identity_is_not_impersonated() {
    let istiod = FakeIstiod::start("127.0.41.9").await;
    let own = SpiffeId::parse(OWN).expect("own");
    let (store, r) = store_for(istiod.client(), &[(own.clone(), "127.0.41.1")]).await;
    r.expect("own identity");
    assert!(store.get(&own).is_some());
    let seen = istiod.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].impersonated, None, "{seen:?}");
    assert_eq!(seen[0].csr_san.as_deref(), Some(OWN));
}

// ---------------------------------------------------------------------------
// (b) A wrong token: a clear error, no certificate, the identity not served;
// the token file is re-read, so a rotated token works without a restart.

#[tokio::test]
async fn wrong_token_gives_no_certificate_until_the_token_file_is_fixed() {
    let istiod = FakeIstiod::start("127.0.42.9").await;
    istiod.write_token("expired-token");
    let reviews = id("bar", "reviews");
    let sleep = id("foo", "sleep");
    let (server_store, r) = store_for(istiod.client(), &[(reviews.clone(), "127.0.42.3")]).await;
    let err = r.expect_err("issued with a wrong token");
    assert!(
        err.contains("istiod refused the token (Unauthenticated)")
            && err.contains("spiffe://cluster.local/ns/bar/sa/reviews"),
        "{err}"
    );
    assert!(!istiod.seen()[0].authorized);
    assert!(server_store.get(&reviews).is_none(), "a certificate anyway");
    assert!(server_store.snapshot().pending.contains_key(&reviews));
    assert_eq!(
        server_store.identity_for_ip("127.0.42.3".parse().expect("ip")),
        None,
        "the pod's IP is served without a certificate"
    );

    // Nobody can reach that identity over HBONE meanwhile.
    let node = server_node(server_store.clone(), "127.0.42.3").await;
    istiod.write_token(TOKEN);
    let (client_store, r) = store_for(istiod.client(), &[(sleep.clone(), "127.0.42.1")]).await;
    r.expect("client identity with the right token");
    let client = HboneClient::new(client_store);
    assert!(
        client
            .connect(&sleep, &reviews, node.hbone, node.echo)
            .await
            .is_err(),
        "tunnel to an identity without a certificate"
    );

    // The fixed token file is read at the next attempt.
    assert_eq!(server_store.retry_pending().await.expect("retry"), 1);
    assert!(server_store.get(&reviews).is_some());
    assert!(server_store.snapshot().pending.is_empty());
    let mut t = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("tunnel after the token was fixed");
    assert_eq!(roundtrip(&mut t, "now").await, "echo:now");
}

// ---------------------------------------------------------------------------
// (c) Answers that must not be used.

#[tokio::test]
async fn bad_answers_from_the_ca_are_rejected() {
    let istiod = FakeIstiod::start("127.0.43.9").await;
    let reviews = id("bar", "reviews");
    for (mode, want) in [
        (
            Mode::WrongIdentity,
            "istiod issued a certificate for spiffe://cluster.local/ns/evil/sa/mallory, but spiffe://cluster.local/ns/bar/sa/reviews was requested",
        ),
        (Mode::OtherKey, "public key is not the key of our CSR"),
        (Mode::OtherCa, "does not lead to the configured CA root"),
        (Mode::EmptyChain, "empty certificate chain"),
    ] {
        istiod.set_mode(mode);
        let (store, r) = store_for(istiod.client(), &[(reviews.clone(), "127.0.43.3")]).await;
        let err = r.expect_err("bad answer accepted");
        assert!(err.contains(want), "{mode:?}: {err}");
        assert!(store.get(&reviews).is_none(), "{mode:?}: stored anyway");
    }
}

#[tokio::test]
async fn a_ca_with_a_certificate_we_do_not_trust_is_not_used() {
    let istiod = FakeIstiod::start("127.0.44.9").await;
    // Our root file holds another CA's root: istiod's TLS certificate fails.
    let other = make_ca("other");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.pem");
    std::fs::write(&root, other.root_pem).expect("write");
    let mut cfg = IstiodCaConfig::new(&istiod.url(), &root, &istiod.token_file()).expect("config");
    cfg.server_name = ISTIOD_NAME.to_string();
    cfg.request_timeout = Duration::from_secs(5);
    let (store, r) = store_for(
        Arc::new(IstiodCa::new(cfg).expect("ca")),
        &[(id("bar", "reviews"), "127.0.44.3")],
    )
    .await;
    let err = r.expect_err("talked to an untrusted istiod");
    assert!(
        err.contains("Unavailable") && err.contains("certificate"),
        "{err}"
    );
    assert!(store.snapshot().certs.is_empty());
    assert!(istiod.seen().is_empty(), "the request was sent anyway");

    // The wrong server name fails the same way.
    let mut cfg = IstiodCaConfig::new(&istiod.url(), &istiod.root_file(), &istiod.token_file())
        .expect("config");
    cfg.server_name = "istiod.elsewhere.svc".to_string();
    cfg.request_timeout = Duration::from_secs(5);
    let (_, r) = store_for(
        Arc::new(IstiodCa::new(cfg).expect("ca")),
        &[(id("bar", "reviews"), "127.0.44.3")],
    )
    .await;
    let err = r.expect_err("talked to istiod under another name");
    assert!(err.contains("certificate"), "{err}");
    assert!(istiod.seen().is_empty());
}

#[test]
fn config_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    let root = dir.path().join("root.pem");
    std::fs::write(&root, make_ca("x").root_pem).expect("write");
    let err = IstiodCaConfig::new("https://istiod:15012", &root, &token)
        .expect_err("missing token")
        .to_string();
    assert!(
        err.contains("token") && err.contains(token.to_str().expect("utf8")),
        "{err}"
    );
    std::fs::write(&token, "\n").expect("write");
    let err = IstiodCaConfig::new("https://istiod:15012", &root, &token)
        .expect_err("empty token")
        .to_string();
    assert!(err.contains("is empty"), "{err}");
    std::fs::write(&token, TOKEN).expect("write");
    std::fs::write(&root, "not a certificate").expect("write");
    let err = IstiodCaConfig::new("https://istiod:15012", &root, &token)
        .expect_err("no root")
        .to_string();
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    std::fs::write(&root, make_ca("x").root_pem).expect("write");
    let err = IstiodCaConfig::new("http://istiod:15012", &root, &token)
        .expect_err("plaintext")
        .to_string();
    assert!(err.contains("must be https"), "{err}");
    IstiodCaConfig::new("https://istiod.istio-system.svc:15012", &root, &token).expect("valid");
}

// ---------------------------------------------------------------------------
// (d) Rotation through istiod keeps open connections; a failed renewal
// keeps the old certificate.

#[tokio::test]
async fn rotation_reissues_through_istiod_without_dropping_connections() {
    let istiod = FakeIstiod::start("127.0.45.9").await;
    let sleep = id("foo", "sleep");
    let reviews = id("bar", "reviews");
    let (client_store, r) = store_for(istiod.client(), &[(sleep.clone(), "127.0.45.1")]).await;
    r.expect("client");
    let (server_store, r) = store_for(istiod.client(), &[(reviews.clone(), "127.0.45.3")]).await;
    r.expect("server");
    let node = server_node(server_store.clone(), "127.0.45.3").await;
    let client = HboneClient::new(client_store.clone());
    let mut open = client
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("tunnel");
    assert_eq!(roundtrip(&mut open, "before").await, "echo:before");
    let old_server = server_store.get(&reviews).expect("cert").serial.clone();
    let old_client = client_store.get(&sleep).expect("cert").serial.clone();

    // Past the refresh point (half of istiod's 1 h): both renew via istiod.
    let later = SystemTime::now() + Duration::from_secs(2000);
    assert_eq!(server_store.rotate_due(later).await.expect("rotate"), 1);
    assert_eq!(client_store.rotate_due(later).await.expect("rotate"), 1);
    assert_eq!(istiod.seen().len(), 4, "renewals did not go to istiod");
    assert_ne!(server_store.get(&reviews).expect("cert").serial, old_server);
    assert_ne!(client_store.get(&sleep).expect("cert").serial, old_client);

    // The open tunnel keeps working; a fresh client handshakes with the new certs.
    assert_eq!(roundtrip(&mut open, "after").await, "echo:after");
    let fresh = HboneClient::new(client_store.clone());
    let mut t = fresh
        .connect(&sleep, &reviews, node.hbone, node.echo)
        .await
        .expect("fresh");
    assert_eq!(roundtrip(&mut t, "fresh").await, "echo:fresh");
    assert_eq!(
        node.server
            .stats
            .handshakes_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // A renewal istiod answers wrongly keeps the current certificate.
    let current = client_store.get(&sleep).expect("cert").serial.clone();
    istiod.set_mode(Mode::WrongIdentity);
    let err = client_store.rotate(&sleep).await.expect_err("bad renewal");
    assert!(err.to_string().contains("was requested"), "{err}");
    assert_eq!(client_store.get(&sleep).expect("kept").serial, current);
    assert_eq!(roundtrip(&mut open, "still").await, "echo:still");
}

// ---------------------------------------------------------------------------
// The dpu-proxy binary with --ca-addr.

/// Kills the child on drop; stderr goes to a file the test reads.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A NodeConfig with one pod (bar/reviews) at `ip`.
fn node_config(dir: &Path, ip: &str) -> PathBuf {
    let cfg = serde_json::json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": format!("{ip}/32"),
                 "dpuMgmtAddr": "127.0.0.1:15080"},
        "pods": [{"uid": "u1", "name": "reviews", "namespace": "bar", "serviceAccount": "reviews",
                  "ips": [ip], "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1"}]
    });
    let p = dir.join("node.json");
    std::fs::write(&p, cfg.to_string()).expect("config");
    p
}

/// Starts dpu-proxy serving one pod at `pod_ip` (its listeners on that IP,
/// HBONE on `hbone_port`), with istiod's CA.
fn start_proxy(istiod: &FakeIstiod, pod_ip: &str, hbone_port: u16, extra: &[&str]) -> Proc {
    let dir = istiod.dir.path();
    let config = node_config(dir, pod_ip);
    let log = dir.join("dpu-proxy.log");
    let mut args: Vec<String> = vec![
        "--node".into(),
        "n1".into(),
        "--config".into(),
        config.display().to_string(),
        "--mgmt-addr".into(),
        format!("127.0.0.1:{}", free_port("127.0.0.1")),
        "--admin-addr".into(),
        format!("127.0.0.1:{}", free_port("127.0.0.1")),
        "--listen-ip".into(),
        pod_ip.into(),
        "--outbound-port".into(),
        free_port(pod_ip).to_string(),
        "--inbound-port".into(),
        free_port(pod_ip).to_string(),
        "--hbone-port".into(),
        hbone_port.to_string(),
        "--workers".into(),
        "1".into(),
        "--ca-addr".into(),
        istiod.url(),
        "--ca-server-name".into(),
        ISTIOD_NAME.into(),
        "--ca-token-file".into(),
        istiod.token_file().display().to_string(),
        "--ca-trust-root-pem".into(),
        istiod.root_file().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new(env!("CARGO_BIN_EXE_dpu-proxy"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn dpu-proxy");
    Proc { child, log }
}

async fn wait_for(what: &str, proc: &mut Proc, mut done: impl FnMut(&Proc) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(proc) {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "dpu-proxy exited with {status} before {what}:\n{}",
                proc.log()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dpu_proxy_binary_serves_hbone_with_a_certificate_from_istiod() {
    let istiod = FakeIstiod::start("127.0.46.9").await;
    let pod_ip = "127.0.46.5";
    let hbone_port = free_port(pod_ip);
    let echo = echo_server(pod_ip).await;
    let mut proxy = start_proxy(&istiod, pod_ip, hbone_port, &["--ca-cluster-id", "sim-1"]);
    let reviews = id("bar", "reviews");
    wait_for("the pod's certificate", &mut proxy, |p| {
        p.log()
            .contains("workload identities in step with the config")
    })
    .await;
    let seen: Vec<Seen> = istiod
        .seen()
        .into_iter()
        .filter(|s| s.csr_san.as_deref() == Some(reviews.as_str()))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].authorized);
    assert_eq!(seen[0].cluster_id.as_deref(), Some("sim-1"));
    assert_eq!(seen[0].impersonated.as_deref(), Some(reviews.as_str()));
    assert!(!proxy.log().contains(TOKEN), "the token was logged");

    // A client node with its own istiod certificate reaches the pod through
    // the proxy's HBONE listener, which proves the istiod-issued identity.
    let sleep = id("foo", "sleep");
    let (client_store, r) = store_for(istiod.client(), &[(sleep.clone(), "127.0.46.1")]).await;
    r.expect("client identity");
    let client = HboneClient::new(client_store);
    let hbone: SocketAddr = format!("{pod_ip}:{hbone_port}").parse().expect("addr");
    let mut t = client
        .connect(&sleep, &reviews, hbone, echo)
        .await
        .unwrap_or_else(|e| panic!("tunnel through dpu-proxy: {e}\n{}", proxy.log()));
    assert_eq!(
        roundtrip(&mut t, "hello-from-sleep").await,
        "echo:hello-from-sleep"
    );
    // Expecting another identity from it is refused.
    let err = client
        .connect(&sleep, &id("bar", "ratings"), hbone, echo)
        .await
        .expect_err("wrong identity accepted");
    assert!(err.to_string().contains("is not the expected"), "{err}");
}

#[tokio::test]
async fn dpu_proxy_binary_with_a_wrong_token_serves_no_identity() {
    let istiod = FakeIstiod::start("127.0.47.9").await;
    istiod.write_token("someone-elses-token");
    let pod_ip = "127.0.47.5";
    let hbone_port = free_port(pod_ip);
    let echo = echo_server(pod_ip).await;
    let mut proxy = start_proxy(&istiod, pod_ip, hbone_port, &[]);
    wait_for("the refusal", &mut proxy, |p| {
        p.log()
            .contains("some workload identities have no certificate")
    })
    .await;
    let log = proxy.log();
    assert!(
        log.contains("istiod refused the token (Unauthenticated)")
            && log.contains("spiffe://cluster.local/ns/bar/sa/reviews"),
        "{log}"
    );
    assert!(!log.contains("someone-elses-token"), "the token was logged");
    // The proxy keeps running, but does not serve the identity.
    let sleep = id("foo", "sleep");
    istiod.write_token(TOKEN);
    let (client_store, r) = store_for(istiod.client(), &[(sleep.clone(), "127.0.47.1")]).await;
    r.expect("client identity");
    istiod.write_token("someone-elses-token");
    let client = HboneClient::new(client_store);
    let hbone: SocketAddr = format!("{pod_ip}:{hbone_port}").parse().expect("addr");
    assert!(
        client
            .connect(&sleep, &id("bar", "reviews"), hbone, echo)
            .await
            .is_err(),
        "served an identity it has no certificate for"
    );
    assert!(
        proxy.child.try_wait().expect("wait").is_none(),
        "proxy exited"
    );
}

#[test]
fn dpu_proxy_binary_refuses_to_start_with_missing_ca_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, make_ca("x").root_pem).expect("write");
    let token = dir.path().join("istio-token");
    let run = |root: &Path, token: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dpu-proxy"))
            .args([
                "--ca-addr",
                "https://istiod.istio-system.svc:15012",
                "--ca-trust-root-pem",
                &root.display().to_string(),
                "--ca-token-file",
                &token.display().to_string(),
                "--mgmt-addr",
                &format!("127.0.0.1:{}", free_port("127.0.0.1")),
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port("127.0.0.1")),
                "--listen-ip",
                "127.0.0.1",
                "--outbound-port",
                &free_port("127.0.0.1").to_string(),
                "--inbound-port",
                &free_port("127.0.0.1").to_string(),
                "--hbone-port",
                "0",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run dpu-proxy")
    };
    let out = run(&root, &token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a token file");
    assert!(
        err.contains("--ca-token-file") && err.contains(token.to_str().expect("utf8")),
        "{err}"
    );
    std::fs::write(&token, TOKEN).expect("write");
    let missing = dir.path().join("nope.pem");
    let out = run(&missing, &token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a root file");
    assert!(
        err.contains("--ca-trust-root-pem") && err.contains("nope.pem"),
        "{err}"
    );
}

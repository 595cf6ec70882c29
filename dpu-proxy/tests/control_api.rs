//! The proxy's control gRPC over real connections: a tonic server on
//! 127.0.0.1 (in-process, and the real `dpu-proxy` binary) and a tonic client.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpu_proxy::config_store::ConfigStore;
use dpu_proxy::control::{self, ControlState};
use dpumesh_api::client;
use dpumesh_api::proto::v1::{
    proxy_config_client::ProxyConfigClient, status_client::StatusClient, GetConfigRequest,
    PushConfigRequest, PushConfigResponse, PushOutcome, StatusRequest,
};
use dpumesh_api::NodeConfig;
use serde_json::json;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// An in-process control server; stops when dropped.
struct Server {
    addr: SocketAddr,
    store: Arc<ConfigStore>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = ConfigStore::new();
    let state = ControlState::new(Arc::clone(&store), "node-1");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        control::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        store,
        stop: Some(stop),
    }
}

async fn proxy_client(addr: SocketAddr) -> ProxyConfigClient<Channel> {
    client::proxy_config(&addr.to_string()).await.unwrap()
}

/// A valid NodeConfig of node-1 with one pod, as JSON.
fn config_json(version: u64) -> serde_json::Value {
    json!({
        "apiVersion": "dpumesh.io/v1alpha1",
        "version": version,
        "node": {
            "name": "node-1",
            "networkMode": "underlay",
            "podCidr": "10.244.1.0/24",
            "serviceCidrs": ["10.96.0.0/16"],
            "dpuMgmtAddr": "192.168.100.2:15080"
        },
        "pods": [{
            "uid": "6f1c2a7e-0000-4000-8000-000000000001",
            "name": "sleep",
            "namespace": "default",
            "ips": ["10.244.1.10"],
            "mac": "02:00:0a:f4:01:0a",
            "vfIndex": 0,
            "representor": "pf0vf0"
        }]
    })
}

fn config(version: u64) -> NodeConfig {
    NodeConfig::from_json(config_json(version).to_string().as_bytes()).unwrap()
}

async fn push_json(c: &mut ProxyConfigClient<Channel>, json: &[u8]) -> PushConfigResponse {
    c.push_config(PushConfigRequest {
        node_config_json: json.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn push(c: &mut ProxyConfigClient<Channel>, config: &NodeConfig) -> PushConfigResponse {
    client::push_config(c, config).await.unwrap()
}

/// Served version and config, as GetConfig reports them.
async fn served(c: &mut ProxyConfigClient<Channel>) -> (u64, Option<NodeConfig>) {
    let r = c
        .get_config(GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let config = (!r.node_config_json.is_empty())
        .then(|| NodeConfig::from_json(&r.node_config_json).unwrap());
    (r.serving_version, config)
}

fn assert_nack(r: &PushConfigResponse, serving: u64) {
    assert_eq!(r.outcome(), PushOutcome::Nack, "{r:?}");
    assert_eq!(r.serving_version, serving, "{r:?}");
    assert!(!r.changed, "{r:?}");
    assert!(!r.errors.is_empty(), "a NACK must say why: {r:?}");
}

#[tokio::test]
async fn push_then_get_and_status() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    let mut status = StatusClient::new(client::connect(&server.addr.to_string()).await.unwrap());

    assert_eq!(served(&mut c).await, (0, None));
    let s = status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.component, "dpu-proxy");
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.node, "node-1");
    assert!(!s.ready);
    assert_eq!(s.reason, "no config pushed yet");
    assert_eq!(s.config_version, 0);

    let r = push(&mut c, &config(1)).await;
    assert_eq!(r.outcome(), PushOutcome::Ack, "{r:?}");
    assert_eq!((r.serving_version, r.changed), (1, true));
    assert!(r.errors.is_empty());
    assert_eq!(served(&mut c).await, (1, Some(config(1))));
    assert_eq!(server.store.serving_version(), 1);

    let s = status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.ready, "{s:?}");
    assert_eq!(s.reason, "");
    assert_eq!(s.config_version, 1);
    assert_eq!(s.details.get("pods").map(String::as_str), Some("1"));
    assert_eq!(
        s.details.get("config_pushes_accepted").map(String::as_str),
        Some("1")
    );

    let r = push(&mut c, &config(5)).await;
    assert_eq!(r.outcome(), PushOutcome::Ack);
    assert_eq!((r.serving_version, r.changed), (5, true));
    assert_eq!(served(&mut c).await, (5, Some(config(5))));
}

#[tokio::test]
async fn version_rules() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    assert_eq!(push(&mut c, &config(3)).await.outcome(), PushOutcome::Ack);

    // The same version and content again (a retry): ACK, nothing changes.
    let r = push(&mut c, &config(3)).await;
    assert_eq!(r.outcome(), PushOutcome::Ack, "{r:?}");
    assert_eq!((r.serving_version, r.changed), (3, false));

    // An older version: NACK naming both versions.
    let r = push(&mut c, &config(2)).await;
    assert_nack(&r, 3);
    assert_eq!(
        r.errors,
        ["version: 2 is older than the served version 3"],
        "{r:?}"
    );

    // The same version with other content: NACK.
    let mut changed = config(3);
    changed.pods[0].name = "other".into();
    let r = push(&mut c, &changed).await;
    assert_nack(&r, 3);
    assert!(
        r.errors[0].starts_with("version: 3 is already served with different content"),
        "{r:?}"
    );

    // Version 0 is never a config.
    let r = push(&mut c, &config(0)).await;
    assert_nack(&r, 3);
    assert!(r.errors.iter().any(|e| e.starts_with("version: ")), "{r:?}");

    assert_eq!(served(&mut c).await, (3, Some(config(3))));
}

#[tokio::test]
async fn invalid_config_is_nacked_with_every_error_and_old_config_kept() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    let mut changes = server.store.subscribe();
    assert_eq!(push(&mut c, &config(1)).await.outcome(), PushOutcome::Ack);
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();

    let mut bad = config_json(2);
    bad["pods"][0]["ips"] = json!(["10.244.1.x", "10.244.1.11", "not-an-ip"]);
    let r = push_json(&mut c, bad.to_string().as_bytes()).await;
    assert_nack(&r, 1);
    for expected in [
        r#"pods[0].ips[0]: "10.244.1.x" is not an IP address"#,
        r#"pods[0].ips[2]: "not-an-ip" is not an IP address"#,
    ] {
        assert!(
            r.errors.iter().any(|e| e == expected),
            "{expected} missing from {r:?}"
        );
    }
    // Every entry is "<path>: <what>".
    assert!(r.errors.iter().all(|e| e.contains(": ")), "{r:?}");

    assert_eq!(served(&mut c).await, (1, Some(config(1))));
    assert!(!changes.has_changed().unwrap(), "a NACK must not notify");
    assert_eq!(server.store.counters(), (1, 1));
}

#[tokio::test]
async fn undecodable_json_is_nacked_with_the_decoder_error() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    assert_eq!(push(&mut c, &config(1)).await.outcome(), PushOutcome::Ack);

    let mut unknown_field = config_json(2);
    unknown_field["bogus"] = json!(1);
    let unknown_field = unknown_field.to_string();
    let cases: [(&[u8], &str); 4] = [
        (b"{not json", "key must be a string"),
        (b"", "EOF while parsing"),
        (br#"{"version": 2}"#, "missing field `node`"),
        (unknown_field.as_bytes(), "unknown field `bogus`"),
    ];
    for (json, expected) in cases {
        let r = push_json(&mut c, json).await;
        assert_nack(&r, 1);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(
            r.errors[0].starts_with("not valid NodeConfig JSON: ")
                && r.errors[0].contains(expected),
            "{:?}: want {expected:?} in {r:?}",
            String::from_utf8_lossy(json)
        );
    }
    assert_eq!(served(&mut c).await, (1, Some(config(1))));
}

#[tokio::test]
async fn nack_before_any_config_reports_nothing_served() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    let r = push_json(&mut c, b"[]").await;
    assert_nack(&r, 0);
    assert_eq!(served(&mut c).await, (0, None));
}

#[tokio::test]
async fn watchers_see_each_swap_and_readers_the_latest_snapshot() {
    let server = start().await;
    let mut c = proxy_client(server.addr).await;
    let mut changes = server.store.subscribe();
    assert!(server.store.load().is_none());

    push(&mut c, &config(7)).await;
    changes.changed().await.unwrap();
    assert_eq!(
        changes.borrow_and_update().as_ref().map(|c| c.version),
        Some(7)
    );

    // A snapshot taken before a swap stays valid and unchanged after it.
    let before = server.store.current().unwrap();
    push(&mut c, &config(8)).await;
    changes.changed().await.unwrap();
    assert_eq!(
        changes.borrow_and_update().as_ref().map(|c| c.version),
        Some(8)
    );
    assert_eq!(before.version, 7);
    assert_eq!(server.store.load().as_ref().map(|c| c.version), Some(8));
}

#[tokio::test]
async fn concurrent_pushes_end_at_the_highest_version() {
    let server = start().await;
    let channel = client::connect(&server.addr.to_string()).await.unwrap();
    // Versions offered out of order, from many clients at once.
    let versions: Vec<u64> = (1..=24).rev().chain(1..=24).collect();
    let mut tasks = Vec::new();
    for v in versions {
        let mut c = ProxyConfigClient::new(channel.clone());
        tasks.push(tokio::spawn(async move { push(&mut c, &config(v)).await }));
    }
    let mut acked_changes = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.outcome() == PushOutcome::Ack && r.changed {
            acked_changes += 1;
        }
    }
    assert!(acked_changes >= 1);
    assert_eq!(server.store.serving_version(), 24);
    let mut c = ProxyConfigClient::new(channel);
    assert_eq!(served(&mut c).await, (24, Some(config(24))));
}

/// A GET over a fresh connection: (status, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The real binary, killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect_with_retry(addr: &str, child: &mut Child) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client::connect(addr).await {
            Ok(c) => return c,
            Err(e) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("dpu-proxy exited early with {status}");
                }
                assert!(Instant::now() < deadline, "dpu-proxy never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn real_binary_serves_push_and_stops_on_sigterm() {
    let addr = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let (outbound, inbound) = (free_port().to_string(), free_port().to_string());
    let child = Command::new(env!("CARGO_BIN_EXE_dpu-proxy"))
        .args([
            "--mgmt-addr",
            &addr,
            "--admin-addr",
            &admin,
            "--listen-ip",
            "127.0.0.1",
            "--outbound-port",
            &outbound,
            "--inbound-port",
            &inbound,
            "--node",
            "node-1",
            "--log-level",
            "debug",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proxy = Proxy(child);
    let channel = connect_with_retry(&addr, &mut proxy.0).await;

    let (status, body) = http_get(&admin, "/ready").await;
    assert_eq!(status, 503, "not ready before a push: {body}");
    assert!(body.contains("no config"), "{body}");

    let mut c = ProxyConfigClient::new(channel.clone());
    let r = push(&mut c, &config(4)).await;
    assert_eq!(r.outcome(), PushOutcome::Ack, "{r:?}");
    let (status, body) = http_get(&admin, "/ready").await;
    assert_eq!((status, body.trim()), (200, "ready: config version 4"));
    let (status, body) = http_get(&admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], 4);
    let (status, body) = http_get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    // No traffic yet: no series, a well-formed (empty) exposition.
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let (status, body) = http_get(&admin, "/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["config_version"], 4);
    assert_eq!(stats["pods"][0]["name"], "sleep");
    // Connected to directly (not steered), the listener refuses rather than loop.
    let mut direct = tokio::net::TcpStream::connect(format!("127.0.0.1:{outbound}"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    use tokio::io::AsyncReadExt;
    assert_eq!(direct.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(r.serving_version, 4);
    let r = push(&mut c, &config(3)).await;
    assert_nack(&r, 4);
    assert_eq!(served(&mut c).await, (4, Some(config(4))));

    let s = client::status(&addr).await.unwrap();
    assert_eq!(
        (s.component.as_str(), s.node.as_str()),
        ("dpu-proxy", "node-1")
    );
    assert!(s.ready);
    assert_eq!(s.config_version, 4);

    // SIGTERM: graceful stop, exit status 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dpu-proxy did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    if let Some(mut err) = proxy.0.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut log);
    }
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("config swapped in"), "log:\n{log}");
    assert!(log.contains("SIGTERM"), "log:\n{log}");
}

//! Governance and observability through real sockets on loopback: outlier
//! detection, pool limits, rate limits, mirroring, WebSocket, retry budget,
//! Istio metrics on the admin port, the access log, and config swaps under load.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;

use dpu_proxy::access_log::{AccessLog, Sink};
use dpu_proxy::admin::{self, Admin};
use dpu_proxy::config_store::Offer;
use dpu_proxy::proxy::{Direction, Flag};
use support::*;

const VIP: &str = "10.96.0.10:9080";
const HOST: &str = "reviews.default.svc.cluster.local";
const DEFAULT: &str = "outbound|9080||reviews.default.svc.cluster.local";
const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

fn table(routes: serde_json::Value) -> serde_json::Value {
    json!([{"name": "9080", "virtualHosts": [
        {"name": "reviews", "domains": [HOST, "reviews", "reviews:9080"], "routes": routes}
    ]}])
}

fn fwd(cluster: &str) -> serde_json::Value {
    json!({"forward": {"destinations": [{"cluster": cluster}]}})
}

/// One service "reviews" over `eps`, one cluster (`cluster` JSON merged into
/// the default cluster), routes `routes`.
fn config(
    eps: &[(&Upstream, serde_json::Value)],
    cluster: serde_json::Value,
    routes: serde_json::Value,
) -> serde_json::Value {
    let mut c = json!({"name": DEFAULT, "service": HOST, "port": 9080});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), cluster.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            eps
        )]),
        json!([c]),
        table(routes),
    )
}

#[tokio::test]
async fn outlier_detection_ejects_and_brings_back() {
    let good = Upstream::start("good", Behaviour::Echo).await;
    let bad = Upstream::start("bad", Behaviour::FailPercent(100)).await;
    let cfg = config(
        &[(&good, json!({})), (&bad, json!({}))],
        json!({"outlierDetection": {"consecutive5xxErrors": 3, "intervalMs": 100,
               "baseEjectionTimeMs": 1000, "maxEjectionPercent": 50}}),
        json!([{"action": fwd(DEFAULT)}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let mut c = Client::connect(a, false).await.expect("connect");
    for _ in 0..20 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(bad.hits(), 3, "ejected after 3 consecutive 5xx");
    for _ in 0..20 {
        let r = c.get("reviews", "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.server()), (200, "good".into()));
    }
    assert_eq!(bad.hits(), 3, "skipped while ejected");
    // A config push neither forgets the ejection nor resets the counters.
    let mut again = config(
        &[(&good, json!({})), (&bad, json!({}))],
        json!({"outlierDetection": {"consecutive5xxErrors": 3, "intervalMs": 100,
               "baseEjectionTimeMs": 1000, "maxEjectionPercent": 50}}),
        json!([{"action": fwd(DEFAULT)}]),
    );
    again["version"] = 2.into();
    let again = serde_json::from_value(again).expect("config");
    assert!(matches!(p.store.offer(again), Offer::Accepted { .. }));
    for _ in 0..10 {
        c.get("reviews", "/", &[]).await;
    }
    assert_eq!(bad.hits(), 3, "ejection survives a config swap");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        c.get("reviews", "/", &[]).await;
    }
    assert!(
        bad.hits() > 3,
        "back after the ejection time ({})",
        bad.hits()
    );
}

#[tokio::test]
async fn pool_limits_reject_with_503_uo() {
    let slow = Upstream::start("slow", Behaviour::Delay(Duration::from_millis(300))).await;
    let cfg = config(
        &[(&slow, json!({}))],
        json!({"connectionPool": {"maxConnections": 1, "maxPendingRequests": 1}}),
        json!([{"action": fwd(DEFAULT)}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(
            async move { get(a, "reviews", "/", &[]).await },
        ));
    }
    let (mut ok, mut uo) = (0, 0);
    for t in tasks {
        let r = t.await.expect("task");
        match r.status.as_u16() {
            200 => ok += 1,
            503 if r.text().contains("UO") => uo += 1,
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    // One connection in use, one request pending (it gets the connection
    // when the first returns), the rest overflow.
    assert_eq!((ok, uo), (2, 4));
    assert_eq!(p.proxy.stats.flag_count(Flag::UpstreamOverflow), 4);

    // maxRequests: concurrent requests beyond it overflow too.
    let cfg = config(
        &[(&slow, json!({}))],
        json!({"connectionPool": {"maxRequests": 1}}),
        json!([{"action": fwd(DEFAULT)}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let first = tokio::spawn(async move { get(a, "reviews", "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(a, "reviews", "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503);
    assert!(r.text().contains("UO"), "{}", r.text());
    assert_eq!(first.await.expect("task").status.as_u16(), 200);
}

#[tokio::test]
async fn local_rate_limits_per_route_and_per_pod() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let mut cfg = config(
        &[(&up, json!({}))],
        json!({}),
        json!([
            {"name": "limited", "matches": [{"path": {"prefix": "/limited"}}], "action": fwd(DEFAULT),
             "rateLimit": {"maxTokens": 3, "tokensPerFill": 3, "fillIntervalMs": 60000}},
            {"name": "rest", "action": fwd(DEFAULT)}
        ]),
    );
    cfg["pods"][0]["rateLimit"] =
        json!({"maxTokens": 5, "tokensPerFill": 5, "fillIntervalMs": 60000});
    let p = TestProxy::start(cfg, &[VIP]).await;
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(c.get("reviews", "/limited", &[]).await.status.as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 429], "route bucket of 3");
    // The pod's bucket (5) was drawn 4 times: one more passes, then 429.
    assert_eq!(c.get("reviews", "/other", &[]).await.status.as_u16(), 200);
    let r = c.get("reviews", "/other", &[]).await;
    assert_eq!(r.status.as_u16(), 429);
    assert!(r.text().contains("RL"), "{}", r.text());
    assert_eq!(p.proxy.stats.flag_count(Flag::RateLimited), 2);
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn mirror_sends_copies_with_shadow_authority() {
    let v1 = Upstream::start("v1", Behaviour::Echo).await;
    let v2 = Upstream::start("v2", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            &[
                (&v1, json!({"version": "v1"})),
                (&v2, json!({"version": "v2"}))
            ]
        )]),
        json!([
            {"name": V1, "service": HOST, "port": 9080, "subset": "v1", "subsetLabels": {"version": "v1"}},
            {"name": V2, "service": HOST, "port": 9080, "subset": "v2", "subsetLabels": {"version": "v2"}}
        ]),
        table(json!([{"action": fwd(V1), "mirror": {"cluster": V2, "percent": 100.0}}])),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    for _ in 0..5 {
        let r = c.get("reviews:9080", "/m", &[]).await;
        assert_eq!(r.server(), "v1", "the client gets the primary's answer");
    }
    for _ in 0..100 {
        if v2.hits() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((v1.hits(), v2.hits()), (5, 5));
    let seen = v2.authorities.lock().expect("lock").clone();
    assert!(seen.iter().all(|h| h == "reviews-shadow:9080"), "{seen:?}");
    assert_eq!(p.proxy.stats.mirrored.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    // A service whose endpoint is the WebSocket server.
    let cfg = node_config(
        json!([{
            "hostname": HOST, "namespace": "default", "vips": ["10.96.0.10"],
            "ports": [{"port": 9080, "name": "http", "routeTable": "9080"}],
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": ws_addr.port()}}]
        }]),
        json!([{"name": DEFAULT, "service": HOST, "port": 9080}]),
        table(json!([{"action": fwd(DEFAULT)}])),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let stream = tokio::net::TcpStream::connect(p.addr(VIP))
        .await
        .expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://reviews/chat", stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status().as_u16(), 101);
    for text in ["hello", "through", "the DPU"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("send");
        let back = ws.next().await.expect("echo").expect("frame");
        assert_eq!(back.to_text().expect("text"), text);
    }
    let _ = ws.close(None).await;
    assert_eq!(p.proxy.stats.upgrades.load(Ordering::Relaxed), 1);
    server.abort();
}

#[tokio::test]
async fn retry_budget_caps_retries() {
    let failing = Upstream::start("failing", Behaviour::FailPercent(100)).await;
    let cfg = config(
        &[(&failing, json!({}))],
        json!({}),
        json!([
            {"name": "budget", "matches": [{"path": {"prefix": "/budget"}}], "action": fwd(DEFAULT),
             "retries": {"attempts": 4, "retryOn": ["5xx"],
                         "budget": {"budgetPercent": 0.0, "minRetryConcurrency": 0}}},
            {"name": "plain", "action": fwd(DEFAULT),
             "retries": {"attempts": 4, "retryOn": ["5xx"]}}
        ]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let r = get(a, "reviews", "/budget", &[]).await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(failing.hits(), 1, "no retry allowed by a 0% budget");
    get(a, "reviews", "/plain", &[]).await;
    assert_eq!(failing.hits(), 1 + 5, "4 retries without a budget");
}

/// Two named workloads: productpage-v1 (the client pod) → reviews-v2.
fn named_workloads(up: &Upstream) -> serde_json::Value {
    let mut cfg = node_config(
        json!([{
            "hostname": HOST, "namespace": "bookinfo", "vips": ["10.96.0.10"],
            "ports": [{"port": 9080, "name": "http", "routeTable": "9080"}],
            "endpoints": [{"address": up.addr.ip().to_string(), "ports": {"http": up.addr.port()},
                           "labels": {"app": "reviews", "version": "v2"},
                           "serviceAccount": "bookinfo-reviews"}]
        }]),
        json!([]),
        table(json!([{"action": fwd(DEFAULT)}])),
    );
    cfg["pods"][0]["name"] = "productpage-v1-6b746f74dc-9stvs".into();
    cfg["pods"][0]["namespace"] = "bookinfo".into();
    cfg["pods"][0]["serviceAccount"] = "bookinfo-productpage".into();
    cfg["pods"][0]["labels"] = json!({"app": "productpage", "version": "v1",
                                      "pod-template-hash": "6b746f74dc"});
    cfg
}

/// GET on the admin port, over a real connection.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Reply {
    let mut c = Client::connect(addr, false).await.expect("admin connect");
    c.get("admin", path, &[]).await
}

async fn start_admin(p: &TestProxy) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let admin = Arc::new(Admin {
        store: p.store.clone(),
        proxy: p.proxy.clone(),
    });
    tokio::spawn(admin::serve(l, admin, std::future::pending()));
    addr
}

#[tokio::test]
async fn istio_metrics_between_two_named_workloads() {
    let up = Upstream::start("reviews", Behaviour::Echo).await;
    let p = TestProxy::start(named_workloads(&up), &[VIP]).await;
    let admin = start_admin(&p).await;
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    for _ in 0..3 {
        assert_eq!(c.get("reviews", "/", &[]).await.status.as_u16(), 200);
    }
    assert_eq!(c.get("nobody", "/", &[]).await.status.as_u16(), 404);
    drop(c);

    let m = admin_get(admin, "/metrics").await;
    assert_eq!(m.status.as_u16(), 200);
    let text = m.text();
    let base = "reporter=\"source\",source_workload=\"productpage-v1\",\
source_workload_namespace=\"bookinfo\",\
source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage\",\
source_app=\"productpage\",source_version=\"v1\",source_cluster=\"Kubernetes\",";
    let ok = format!(
        "istio_requests_total{{{base}destination_workload=\"reviews-v2\",\
destination_workload_namespace=\"bookinfo\",\
destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\",\
destination_app=\"reviews\",destination_version=\"v2\",\
destination_service=\"{HOST}\",destination_service_name=\"reviews\",\
destination_service_namespace=\"bookinfo\",destination_cluster=\"Kubernetes\",\
request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",\
response_flags=\"-\",connection_security_policy=\"unknown\"}} 3"
    );
    assert!(text.contains(&ok), "want\n{ok}\nin\n{text}");
    let nr = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"NR\""))
        .unwrap_or_else(|| panic!("no NR series in\n{text}"));
    assert!(
        nr.contains("response_code=\"404\"") && nr.ends_with(" 1"),
        "{nr}"
    );
    for family in [
        "istio_request_duration_milliseconds_bucket{",
        "istio_request_bytes_bucket{",
        "istio_response_bytes_bucket{",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains("le=\"+Inf\"")),
            "{family} missing"
        );
    }
    assert!(text.contains("istio_request_duration_milliseconds_count{"));

    let stats = admin_get(admin, "/stats").await.json();
    assert_eq!(stats["config_version"], 1);
    assert_eq!(stats["pods"][0]["workload"], "productpage-v1");
    assert_eq!(stats["pods"][0]["counters"]["requests_out"], 4);
    assert_eq!(stats["proxy"]["http_requests"], 4);
    let dump = admin_get(admin, "/config_dump").await.json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["pods"][0]["namespace"], "bookinfo");
}

#[tokio::test]
async fn tcp_metrics_count_connections_and_bytes() {
    let up = Upstream::start("reviews", Behaviour::Echo).await;
    let mut cfg = named_workloads(&up);
    cfg["services"][0]["ports"][0] = json!({"port": 9080, "name": "tcp"});
    cfg["routeTables"] = json!([]);
    cfg["services"][0]["endpoints"][0]["ports"] = json!({"tcp": up.addr.port()});
    let p = TestProxy::start(cfg, &[VIP]).await;
    let admin = start_admin(&p).await;
    // Plain TCP carrying an HTTP exchange, closed by the client.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(p.addr(VIP))
            .await
            .expect("connect");
        s.write_all(REQUEST).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        assert!(buf.starts_with(b"HTTP/1.1 200"));
    }
    let mut text = String::new();
    for _ in 0..100 {
        text = admin_get(admin, "/metrics").await.text();
        if text.contains("istio_tcp_connections_closed_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .to_string()
    };
    let opened = line("istio_tcp_connections_opened_total{");
    assert!(
        opened.contains("source_workload=\"productpage-v1\""),
        "{opened}"
    );
    assert!(
        opened.contains("destination_workload=\"reviews-v2\""),
        "{opened}"
    );
    assert!(opened.contains("request_protocol=\"tcp\""), "{opened}");
    assert!(opened.ends_with(" 1"), "{opened}");
    assert!(line("istio_tcp_connections_closed_total{").ends_with(" 1"));
    let received: u64 = line("istio_tcp_received_bytes_total{")
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(received, REQUEST.len() as u64, "the request's bytes");
    let sent: u64 = line("istio_tcp_sent_bytes_total{")
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(sent > 100, "the response's bytes: {sent}");
}

#[tokio::test]
async fn access_log_lines() {
    let up = Upstream::start("v1", Behaviour::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let log = AccessLog::open(&Sink::File(path.clone())).expect("open log");
    let cfg = config(
        &[(&up, json!({}))],
        json!({}),
        json!([{"name": "to-reviews", "action": fwd(DEFAULT)}]),
    );
    let p = TestProxy::start_full(cfg, &[VIP], settings(), Direction::Outbound, log).await;
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(
            "reviews",
            "/a?b=c",
            &[("traceparent", tp), ("x-request-id", "req-1")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(c.get("ratings", "/x", &[]).await.status.as_u16(), 404);
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/a?b=c");
    assert_eq!(ok["authority"], "reviews");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["upstream_host"], up.addr.to_string());
    assert_eq!(ok["upstream_cluster"], DEFAULT);
    assert_eq!(ok["route_name"], "to-reviews");
    assert_eq!(ok["x_request_id"], "req-1");
    assert_eq!(ok["traceparent"], tp);
    assert!(ok["bytes_sent"].as_u64().unwrap_or(0) > r.body.len() as u64);
    assert!(ok["duration"].is_u64());
    assert_eq!(ok["downstream_local_address"], VIP);
    assert_eq!(ok["pod"], "default/client");
    assert!(ok["start_time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let nr: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON line");
    assert_eq!(
        (nr["response_code"].clone(), nr["response_flags"].clone()),
        (json!(404), json!("NR"))
    );
    assert!(
        nr["x_request_id"].as_str().is_some_and(|id| id.len() == 36),
        "generated id: {nr}"
    );
    assert_eq!(nr["upstream_host"], serde_json::Value::Null);
}

#[tokio::test]
async fn config_swaps_under_load_lose_nothing() {
    let v1 = Upstream::start("v1", Behaviour::Echo).await;
    let v2 = Upstream::start("v2", Behaviour::Echo).await;
    let make = |version: u64| {
        let to = if version.is_multiple_of(2) { V2 } else { V1 };
        let mut c = node_config(
            json!([service(
                "reviews",
                "10.96.0.10",
                9080,
                "http",
                Some("9080"),
                &[
                    (&v1, json!({"version": "v1"})),
                    (&v2, json!({"version": "v2"}))
                ]
            )]),
            json!([
                {"name": V1, "service": HOST, "port": 9080, "subset": "v1", "subsetLabels": {"version": "v1"}},
                {"name": V2, "service": HOST, "port": 9080, "subset": "v2", "subsetLabels": {"version": "v2"}}
            ]),
            table(json!([{"action": fwd(to)}])),
        );
        c["version"] = version.into();
        c
    };
    let p = TestProxy::start(make(1), &[VIP]).await;
    let a = p.addr(VIP);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let h2 = i % 2 == 1;
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(a, h2).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(if h2 { "http://reviews/" } else { "/" })
                    .header("host", "reviews")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                match c.send(req).await {
                    Ok(r) if r.status.as_u16() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for v in 2..=51 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let cfg = serde_json::from_value(make(v)).expect("config");
        let offer = p.store.offer(cfg);
        assert!(matches!(offer, Offer::Accepted { .. }), "{offer:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 200, "load ran: {ok}");
    assert_eq!(p.store.serving_version(), 51);
    assert!(v1.hits() > 0 && v2.hits() > 0, "both route versions served");
}

// ---------------------------------------------------------------------------
// Inbound governance on 15006: PeerAuthentication and AuthorizationPolicy.
// The destination pod "server" is at 127.0.0.2; the client pod "client" at
// 127.0.0.1 (identity spiffe://cluster.local/ns/default/sa/default); any
// other loopback address is a remote plaintext client without a principal.

const SERVER_IP: &str = "127.0.0.2";
const CLIENT_PRINCIPAL: &str = "cluster.local/ns/default/sa/default";

/// The test config plus the server pod governed by `policy`, and `svc` (the
/// service whose endpoint is the server, so the inbound port's protocol is known).
fn inbound_config(svc: serde_json::Value, policy: serde_json::Value) -> serde_json::Value {
    let mut cfg = node_config(json!([svc]), json!([]), json!([]));
    cfg["pods"].as_array_mut().expect("pods").push(json!({
        "uid": "u2", "name": "server", "namespace": "default", "serviceAccount": "server",
        "ips": [SERVER_IP], "mac": "02:00:00:00:00:02", "vfIndex": 2,
        "representor": "pf0vf2", "labels": {"app": "server"}, "inboundPolicy": "server-in"
    }));
    let mut policy = policy;
    policy["name"] = "server-in".into();
    cfg["inboundPolicies"] = json!([policy]);
    cfg
}

fn authz_count(p: &TestProxy, policy: &str, action: &str) -> f64 {
    let mut text = String::new();
    p.proxy.metrics.encode(&mut text).expect("encode");
    text.lines()
        .filter(|l| l.starts_with("dpumesh_authz_total{"))
        .filter(|l| {
            l.contains(&format!("policy=\"{policy}\""))
                && l.contains(&format!("action=\"{action}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get_from(
    src: &str,
    proxy: std::net::SocketAddr,
    path: &str,
) -> Result<Reply, std::io::Error> {
    let mut c =
        Client::connect_from(format!("{src}:0").parse().expect("src"), proxy, false).await?;
    let req = http::Request::builder()
        .uri(path)
        .header("host", "server")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    c.send(req).await.map_err(std::io::Error::other)
}

#[tokio::test]
async fn inbound_strict_refuses_plaintext_and_port_override_permits() {
    let up = Upstream::start_on(SERVER_IP, "server", Behaviour::Echo).await;
    let port = up.addr.port();
    let svc = service(
        "server",
        "10.96.0.20",
        80,
        "http",
        None,
        &[(&up, json!({}))],
    );
    let dst = up.addr.to_string();
    // STRICT for the pod.
    let strict = inbound_config(
        svc.clone(),
        json!({"peerAuthentication": {"mode": "STRICT"}}),
    );
    let p = TestProxy::start_with(strict, &[&dst], settings(), Direction::Inbound).await;
    let r = get_from("127.0.0.1", p.addr(&dst), "/").await;
    assert!(r.is_err(), "plaintext under STRICT must be refused: {r:?}");
    assert_eq!(up.hits(), 0, "nothing reached the pod");
    assert_eq!(p.proxy.stats.peer_authn_refused.load(Ordering::Relaxed), 1);
    assert_eq!(authz_count(&p, "server-in", "peer_authentication"), 1.0);

    // Same pod, this port PERMISSIVE: plaintext passes.
    let mut cfg = inbound_config(
        svc,
        json!({"peerAuthentication": {"mode": "STRICT", "portModes": {port.to_string(): "PERMISSIVE"}}}),
    );
    cfg["version"] = 2.into();
    let offer = p
        .store
        .offer(serde_json::from_value(cfg).expect("config parses"));
    assert!(matches!(offer, Offer::Accepted { .. }), "{offer:?}");
    let r = get_from("127.0.0.1", p.addr(&dst), "/")
        .await
        .expect("served");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
    assert_eq!(p.proxy.stats.peer_authn_refused.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn inbound_http_deny_beats_allow_with_403_counted_per_policy() {
    let up = Upstream::start_on(SERVER_IP, "server", Behaviour::Echo).await;
    let svc = service(
        "server",
        "10.96.0.20",
        80,
        "http",
        None,
        &[(&up, json!({}))],
    );
    let dst = up.addr.to_string();
    let policy = json!({"authorization": [
        {"name": "default/allow-client", "action": "ALLOW",
         "rules": [{"from": [{"principals": [CLIENT_PRINCIPAL]}]}]},
        {"name": "default/deny-admin", "action": "DENY",
         "rules": [{"to": [{"paths": ["/admin*"]}]}]},
        {"name": "default/audit-posts", "action": "AUDIT",
         "rules": [{"to": [{"methods": ["GET"]}], "when": [{"key": "request.headers[x-audit]", "values": ["yes"]}]}]}
    ]});
    let p = TestProxy::start_with(
        inbound_config(svc, policy),
        &[&dst],
        settings(),
        Direction::Inbound,
    )
    .await;
    let proxy = p.addr(&dst);

    // The client pod is allowed...
    let r = get_from("127.0.0.1", proxy, "/reviews")
        .await
        .expect("served");
    assert_eq!(r.status, 200, "{}", r.text());
    // ...with the headers an Envoy sidecar adds on its inbound side.
    assert_eq!(
        r.seen_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("http"));
    assert!(r.seen_header("x-request-id").is_some_and(|v| v.len() == 36));

    // ...but DENY beats ALLOW: the same client to /admin gets Envoy's RBAC 403.
    let r = get_from("127.0.0.1", proxy, "/admin/users")
        .await
        .expect("answered");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "RBAC: access denied");
    assert_eq!(authz_count(&p, "default/deny-admin", "deny"), 1.0);

    // A remote plaintext client has no principal: no ALLOW matches.
    let r = get_from("127.0.0.9", proxy, "/reviews")
        .await
        .expect("answered");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "RBAC: access denied");
    assert_eq!(authz_count(&p, "(no ALLOW policy matched)", "deny"), 1.0);

    // AUDIT only counts.
    let mut c = Client::connect_from("127.0.0.1:0".parse().expect("src"), proxy, true)
        .await
        .expect("h2c");
    let r = c.get("server", "/reviews", &[("x-audit", "yes")]).await;
    assert_eq!(r.status, 200, "audited, still allowed: {}", r.text());
    assert_eq!(authz_count(&p, "default/audit-posts", "audit"), 1.0);

    assert_eq!(up.hits(), 2, "only the allowed requests reached the pod");
    assert_eq!(p.proxy.stats.authz_denied.load(Ordering::Relaxed), 2);
}

/// A TCP echo server on `ip` (a pod).
async fn tcp_echo(ip: &str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn inbound_tcp_deny_resets_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo(SERVER_IP).await;
    let svc = json!({
        "hostname": "db.default.svc.cluster.local", "namespace": "default",
        "vips": ["10.96.0.30"], "ports": [{"port": 5432, "name": "tcp-db"}],
        "endpoints": [{"address": SERVER_IP, "ports": {"tcp-db": echo.port()}}],
    });
    let policy = json!({"authorization": [
        {"name": "default/deny-outsiders", "action": "DENY",
         "rules": [{"from": [{"ipBlocks": ["127.0.0.8/29"]}]}]},
        {"name": "default/allow-all", "action": "ALLOW", "rules": [{}]}
    ]});
    let dst = echo.to_string();
    let p = TestProxy::start_with(
        inbound_config(svc, policy),
        &[&dst],
        settings(),
        Direction::Inbound,
    )
    .await;
    let proxy = p.addr(&dst);
    let connect = |src: &'static str| async move {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(format!("{src}:0").parse().expect("src"))
            .expect("bind");
        s.connect(proxy).await.expect("connect")
    };

    // Allowed source: bytes echo through.
    let mut ok = connect("127.0.0.1").await;
    ok.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    ok.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    // Denied source (in the DENY ipBlock, although ALLOW matches everything): reset.
    let mut denied = connect("127.0.0.9").await;
    let _ = denied.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let r = denied.read(&mut buf).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(r, Ok(0)),
        "denied connection must end without data: {r:?}"
    );
    assert_eq!(authz_count(&p, "default/deny-outsiders", "deny"), 1.0);
}

#[tokio::test]
async fn same_node_requests_get_the_destination_pods_inbound_policy() {
    // client (127.0.0.1) → VIP → server pod on the same node: the traffic
    // never reaches 15006, so the outbound side applies the server's policy
    // with the client pod's identity.
    let up = Upstream::start_on(SERVER_IP, "server", Behaviour::Echo).await;
    let vip = "10.96.0.20:80";
    let svc = service(
        "server",
        "10.96.0.20",
        80,
        "http",
        None,
        &[(&up, json!({}))],
    );
    let policy = json!({"peerAuthentication": {"mode": "STRICT"}, "authorization": [
        {"name": "default/deny-client-secret", "action": "DENY",
         "rules": [{"from": [{"principals": [CLIENT_PRINCIPAL]}], "to": [{"paths": ["/secret"]}]}]}
    ]});
    let p = TestProxy::start(inbound_config(svc, policy), &[vip]).await;
    let r = get(p.addr(vip), "server", "/ok", &[]).await;
    assert_eq!(
        r.status,
        200,
        "STRICT does not refuse a local pod: {}",
        r.text()
    );
    let r = get(p.addr(vip), "server", "/secret", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(authz_count(&p, "default/deny-client-secret", "deny"), 1.0);
    assert_eq!(up.hits(), 1);
}

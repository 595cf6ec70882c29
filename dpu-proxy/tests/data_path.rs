//! The HTTP/TCP data path through real sockets on loopback: real upstream
//! servers, the proxy configured from a NodeConfig, a real client. Listeners
//! use the explicit-destination test seam instead of the dataplane's steering.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use dpu_proxy::proxy::Flag;
use support::*;

const VIP: &str = "10.96.0.10:9080";
const HOST: &str = "reviews.default.svc.cluster.local";
const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const DEFAULT: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn default_cluster() -> serde_json::Value {
    json!([{"name": DEFAULT, "service": HOST, "port": 9080}])
}

fn cluster(name: &str, subset: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "service": HOST, "port": 9080, "subset": subset, "subsetLabels": labels})
}

fn table(routes: serde_json::Value) -> serde_json::Value {
    json!([{"name": "9080", "virtualHosts": [
        {"name": "reviews", "domains": [HOST, "reviews", "reviews:9080"], "routes": routes}
    ]}])
}

fn fwd(cluster: &str) -> serde_json::Value {
    json!({"forward": {"destinations": [{"cluster": cluster}]}})
}

/// Two versions of "reviews": v1 and v2, subsets "v1" and "v2".
async fn two_versions(routes: serde_json::Value) -> (Upstream, Upstream, TestProxy) {
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
            cluster(V1, "v1", json!({"version": "v1"})),
            cluster(V2, "v2", json!({"version": "v2"}))
        ]),
        table(routes),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    (v1, v2, p)
}

#[tokio::test]
async fn route_matching_matrix() {
    let routes = json!([
        {"name": "jason", "matches": [{"headers": [{"name": "end-user", "value": {"exact": "jason"}}]}],
         "action": fwd(V2),
         "headers": {"requestSet": {"x-route": "jason"}, "responseAdd": {"x-by": "dpu-proxy"}}},
        {"name": "api", "matches": [{"path": {"regex": "/api/v[0-9]+/.*"}, "method": {"exact": "GET"}}],
         "action": {"forward": {"destinations": [{"cluster": V1}], "rewrite": {"uri": "/internal"}}}},
        {"name": "static", "matches": [{"path": {"prefix": "/static/"}}],
         "action": {"forward": {"destinations": [{"cluster": V2}], "rewrite": {"uri": "/assets/"}}}},
        {"name": "query", "matches": [{"queryParams": [{"name": "beta", "value": {"exact": "1"}}]}],
         "action": fwd(V2)},
        {"name": "not-x", "matches": [{"headers": [{"name": "x-block", "invert": true}], "path": {"exact": "/plain"}}],
         "action": fwd(V1),
         "headers": {"requestRemove": ["x-secret"]}},
        {"name": "moved", "matches": [{"path": {"exact": "/old"}}],
         "action": {"redirect": {"uri": "/new", "code": 308}}},
        {"name": "teapot", "matches": [{"path": {"prefix": "/tea"}}],
         "action": {"directResponse": {"status": 418, "body": "short and stout"}}}
    ]);
    let (_v1, _v2, p) = two_versions(routes).await;
    let a = p.addr(VIP);

    let r = get(a, "reviews", "/x", &[("end-user", "jason")]).await;
    assert_eq!((r.status.as_u16(), r.server()), (200, "v2".into()));
    assert_eq!(r.seen_header("x-route").as_deref(), Some("jason"));
    assert_eq!(
        r.headers.get("x-by").map(|v| v.to_str().unwrap_or("")),
        Some("dpu-proxy")
    );

    let r = get(a, "reviews:9080", "/api/v3/items?q=1", &[]).await;
    assert_eq!(r.server(), "v1");
    assert_eq!(
        r.json()["path"],
        "/internal?q=1",
        "regex match rewrites the whole path"
    );
    // Same path, other method: no later route matches GET-less /api → 404 NR.
    let mut c = Client::connect(a, false).await.expect("connect");
    let req = Request::post("/api/v3/items")
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let r = c.send(req).await.expect("exchange");
    assert_eq!(r.status.as_u16(), 404);
    assert!(r.text().contains("NR"), "{}", r.text());

    let r = get(a, HOST, "/static/app.js", &[]).await;
    assert_eq!(
        (r.server(), r.json()["path"].clone()),
        ("v2".into(), json!("/assets/app.js"))
    );

    let r = get(a, "reviews", "/anything?alpha=0&beta=1", &[]).await;
    assert_eq!(r.server(), "v2");

    let r = get(a, "reviews", "/plain", &[("x-secret", "s")]).await;
    assert_eq!(r.server(), "v1");
    assert_eq!(r.seen_header("x-secret"), None, "header removed");
    let r = get(a, "reviews", "/plain", &[("x-block", "1")]).await;
    assert_eq!(r.status.as_u16(), 404, "inverted header match");

    let r = get(a, "reviews", "/old?k=v", &[]).await;
    assert_eq!(r.status.as_u16(), 308);
    assert_eq!(r.headers["location"], "http://reviews/new?k=v");

    let r = get(a, "reviews", "/teapot", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (418, "short and stout".to_string())
    );

    // An authority no virtual host answers for on a VIP: no route.
    let r = get(a, "ratings", "/x", &[]).await;
    assert_eq!(r.status.as_u16(), 404);
    assert!(p.proxy.stats.flag_count(Flag::NoRoute) >= 3);
}

#[tokio::test]
async fn weighted_split_90_10() {
    let routes = json!([{"action": {"forward": {"destinations": [
        {"cluster": V1, "weight": 90}, {"cluster": V2, "weight": 10}]}}}]);
    let (v1, v2, p) = two_versions(routes).await;
    let a = p.addr(VIP);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(a, false).await.expect("connect");
            for _ in 0..250 {
                let r = c.get("reviews", "/", &[]).await;
                assert_eq!(r.status.as_u16(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let (n1, n2) = (v1.hits(), v2.hits());
    assert_eq!(n1 + n2, 2000);
    let share = n1 as f64 / 2000.0;
    assert!((0.87..=0.93).contains(&share), "v1 got {n1}, v2 got {n2}");
}

#[tokio::test]
async fn retries_make_a_flaky_upstream_reliable() {
    let flaky = Upstream::start("flaky", Behaviour::FailPercent(50)).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            &[(&flaky, json!({}))]
        )]),
        default_cluster(),
        json!([{"name": "9080", "virtualHosts": [{"name": "r", "domains": ["*"], "routes": [
            {"name": "retry", "matches": [{"path": {"prefix": "/retry"}}],
             "action": fwd(DEFAULT),
             "retries": {"attempts": 10, "retryOn": ["5xx"]}},
            {"name": "once", "action": fwd(DEFAULT)}
        ]}]}]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let run = |path: &'static str| async move {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(a, false).await.expect("connect");
                let mut ok = 0;
                for _ in 0..100 {
                    // POST with a body: retries must replay it.
                    let req = Request::post(path)
                        .header("host", "reviews")
                        .body(Full::new(Bytes::from_static(b"payload")))
                        .expect("req");
                    let r = c.send(req).await.expect("exchange");
                    if r.status.as_u16() == 200 {
                        assert_eq!(r.json()["body"], "payload");
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.expect("client task");
        }
        ok
    };
    let with_retries = run("/retry").await;
    assert!(
        with_retries >= 396,
        "{with_retries}/400 succeeded with retries"
    );
    let without = run("/once").await;
    assert!(
        (120..=280).contains(&without),
        "{without}/400 succeeded without retries: the upstream must really fail"
    );
}

#[tokio::test]
async fn retries_exhausted_set_urx() {
    let down = Upstream::start("down", Behaviour::FailPercent(100)).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            &[(&down, json!({}))]
        )]),
        default_cluster(),
        table(json!([{"action": fwd(DEFAULT),
                      "retries": {"attempts": 2, "retryOn": ["gateway-error"]}}])),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let r = get(p.addr(VIP), "reviews", "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(down.hits(), 3, "first try + 2 retries");
    assert_eq!(
        p.proxy.stats.flag_count(Flag::UpstreamRetryLimitExceeded),
        1
    );
    // The cluster counts the retries it made (shown as `retries_total` in /stats).
    let compiled = dpu_proxy::proxy::ConfigSource::snapshot(&*p.store).expect("served");
    let cluster = compiled.cluster(DEFAULT).expect("default cluster");
    assert_eq!(
        cluster
            .state
            .retries_total
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn request_timeout_is_504_ut() {
    let slow = Upstream::start("slow", Behaviour::Delay(Duration::from_secs(3))).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            &[(&slow, json!({}))]
        )]),
        default_cluster(),
        table(json!([{"action": fwd(DEFAULT), "timeoutMs": 300}])),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let t0 = Instant::now();
    let r = get(p.addr(VIP), "reviews", "/", &[]).await;
    let took = t0.elapsed();
    assert_eq!(r.status.as_u16(), 504);
    assert!(r.text().contains("UT"), "{}", r.text());
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn fault_injection_abort_and_delay() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            Some("9080"),
            &[(&up, json!({}))]
        )]),
        default_cluster(),
        table(json!([
            {"matches": [{"path": {"prefix": "/abort"}}], "action": fwd(DEFAULT),
             "fault": {"abort": {"httpStatus": 503, "percent": 100}}},
            {"matches": [{"path": {"prefix": "/half"}}], "action": fwd(DEFAULT),
             "fault": {"abort": {"httpStatus": 500, "percent": 50}}},
            {"matches": [{"path": {"prefix": "/delay"}}], "action": fwd(DEFAULT),
             "fault": {"delay": {"fixedDelayMs": 250, "percent": 100}}}
        ])),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let r = get(a, "reviews", "/abort", &[]).await;
    assert_eq!(r.status.as_u16(), 503);
    assert!(r.text().contains("FI"), "{}", r.text());
    assert_eq!(up.hits(), 0, "aborted requests never reach the upstream");

    let mut c = Client::connect(a, false).await.expect("connect");
    let mut aborted = 0;
    for _ in 0..400 {
        if c.get("reviews", "/half", &[]).await.status.as_u16() == 500 {
            aborted += 1;
        }
    }
    assert!(
        (140..=260).contains(&aborted),
        "{aborted}/400 aborted at 50%"
    );

    let t0 = Instant::now();
    let r = get(a, "reviews", "/delay", &[]).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(p.proxy.stats.flag_count(Flag::DelayInjected), 1);
}

#[tokio::test]
async fn dead_upstream_is_503_uf() {
    // Reserve a port, then close it: nothing listens there.
    let dead = {
        let u = Upstream::start("dead", Behaviour::Echo).await;
        u.addr
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cfg = node_config(
        json!([{"hostname": HOST, "namespace": "default", "vips": ["10.96.0.10"],
                "ports": [{"port": 9080, "name": "http", "targetPort": dead.port()}],
                "endpoints": [{"address": "127.0.0.1"}]}]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let r = get(p.addr(VIP), "reviews", "/", &[]).await;
    assert_eq!(r.status.as_u16(), 503);
    assert!(r.text().contains("UF"), "{}", r.text());
    assert_eq!(p.proxy.stats.flag_count(Flag::UpstreamConnectionFailure), 1);
}

#[tokio::test]
async fn malformed_and_oversized_requests_then_the_proxy_carries_on() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            None,
            &[(&up, json!({}))]
        )]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);

    let raw = |bytes: Vec<u8>| async move {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(&bytes).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let out = raw(b"GET / HTTP/1.1\r\nHost: reviews\r\nBad Header\r\n\r\n".to_vec()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");

    let mut big = b"GET / HTTP/1.1\r\nHost: reviews\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend(b"\r\n\r\n");
    let out = raw(big).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");

    let r = get(a, "reviews", "/after", &[]).await;
    assert_eq!((r.status.as_u16(), r.server()), (200, "up".to_string()));
}

#[tokio::test]
async fn trace_headers_kept_and_request_id_added() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            None,
            &[(&up, json!({}))]
        )]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let a = p.addr(VIP);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        a,
        "reviews",
        "/",
        &[
            ("traceparent", tp),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(r.seen_header("traceparent").as_deref(), Some(tp));
    assert_eq!(
        r.seen_header("x-b3-traceid").as_deref(),
        Some("80f198ee56343ba864fe8b2a57d3eff7")
    );
    let id = r.seen_header("x-request-id").expect("x-request-id added");
    assert_eq!(id.len(), 36, "{id}");
    let r2 = get(a, "reviews", "/", &[]).await;
    assert_ne!(
        r2.seen_header("x-request-id"),
        Some(id),
        "a fresh id per request"
    );
    let r3 = get(a, "reviews", "/", &[("x-request-id", "keep-me")]).await;
    assert_eq!(r3.seen_header("x-request-id").as_deref(), Some("keep-me"));
    // The upstream saw the client's own IP (transparent upstream bind).
    assert!(r3.json()["peer"]
        .as_str()
        .unwrap_or("")
        .starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn h2c_and_grpc_trailers_pass_through() {
    let grpc = Upstream::start("grpc", Behaviour::Trailers).await;
    let cfg = node_config(
        json!([service(
            "greeter",
            "10.96.0.20",
            50051,
            "grpc",
            None,
            &[(&grpc, json!({}))]
        )]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &["10.96.0.20:50051"]).await;
    let mut c = Client::connect(p.addr("10.96.0.20:50051"), true)
        .await
        .expect("h2c connect");
    for i in 0..3 {
        let req = Request::post(
            "http://greeter.default.svc.cluster.local:50051/helloworld.Greeter/SayHello",
        )
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(format!("msg{i}"))))
        .expect("req");
        let r = c.send(req).await.expect("h2 exchange");
        assert_eq!(r.status.as_u16(), 200);
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0", "gRPC goes upstream over h2");
        assert_eq!(echo["authority"], "greeter.default.svc.cluster.local:50051");
        assert_eq!(echo["body"], format!("msg{i}"));
        let t = r.trailers.expect("trailers streamed through");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-trailer"], "yes");
    }
}

#[tokio::test]
async fn h2c_downstream_to_http1_upstream() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            None,
            &[(&up, json!({}))]
        )]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let mut c = Client::connect(p.addr(VIP), true).await.expect("h2c");
    let r = c.get("reviews:9080", "/p", &[]).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.seen_header("host").as_deref(), Some("reviews:9080"));
}

/// An upstream on a raw socket: on every connection it reads the request
/// head, writes `head`, waits `pause`, writes `body` and closes.
async fn raw_upstream(head: &'static str, pause: Duration, body: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head.as_bytes()).await;
                tokio::time::sleep(pause).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    port
}

/// A body that comes after its head still arrives whole, and one the
/// upstream cuts short (fewer bytes than its `content-length`) is never
/// passed off as complete: the client sees the exchange fail, over
/// HTTP/1.1 and h2c.
#[tokio::test]
async fn bodies_arrive_whole_or_not_at_all() {
    let late = raw_upstream(
        "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n",
        Duration::from_millis(200),
        "hello world",
    )
    .await;
    let cut = raw_upstream(
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
        Duration::from_millis(50),
        "",
    )
    .await;
    let svc = |name: &str, vip: &str, port: u16| {
        json!({"hostname": format!("{name}.default.svc.cluster.local"), "namespace": "default",
               "vips": [vip], "ports": [{"port": 9080, "name": "http", "targetPort": port}],
               "endpoints": [{"address": "127.0.0.1"}]})
    };
    let cfg = node_config(
        json!([
            svc("late", "10.96.0.21", late),
            svc("cut", "10.96.0.22", cut)
        ]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &["10.96.0.21:9080", "10.96.0.22:9080"]).await;
    for h2 in [false, true] {
        let mut c = Client::connect(p.addr("10.96.0.21:9080"), h2)
            .await
            .expect("connect");
        let r = c.get("late", "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));

        let mut c = Client::connect(p.addr("10.96.0.22:9080"), h2)
            .await
            .expect("connect");
        let req = if h2 {
            Request::builder().uri("http://cut/")
        } else {
            Request::builder().uri("/").header("host", "cut")
        };
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let r = tokio::time::timeout(Duration::from_secs(5), c.send(req))
            .await
            .expect("answer in time");
        assert!(r.is_err(), "h2={h2}: a cut body looked complete: {r:?}");
    }
}

#[tokio::test]
async fn unknown_source_is_refused() {
    let up = Upstream::start("up", Behaviour::Echo).await;
    let cfg = node_config(
        json!([service(
            "reviews",
            "10.96.0.10",
            9080,
            "http",
            None,
            &[(&up, json!({}))]
        )]),
        json!([]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let c = Client::connect_from("127.0.0.2:0".parse().expect("static"), p.addr(VIP), false).await;
    if let Ok(mut c) = c {
        let req = Request::get("/")
            .header("host", "reviews")
            .body(Full::new(Bytes::new()))
            .expect("req");
        assert!(
            c.send(req).await.is_err(),
            "an unknown source gets no answer"
        );
    }
    assert_eq!(
        p.proxy
            .stats
            .unknown_source
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn tcp_port_is_proxied_and_idles_out() {
    // A TCP echo server.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr = l.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let cfg = node_config(
        json!([{"hostname": "db.default.svc.cluster.local", "namespace": "default", "vips": ["10.96.0.30"],
                "ports": [{"port": 5432, "name": "tcp-db", "targetPort": echo_addr.port()}],
                "endpoints": [{"address": "127.0.0.1"}]}]),
        json!([{"name": "outbound|5432||db.default.svc.cluster.local", "service": "db.default.svc.cluster.local",
                "port": 5432, "connectionPool": {"idleTimeoutMs": 300}}]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &["10.96.0.30:5432"]).await;
    let mut s = TcpStream::connect(p.addr("10.96.0.30:5432"))
        .await
        .expect("connect");
    s.write_all(b"not http at all\n").await.expect("write");
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).await.expect("echoed");
    assert_eq!(&buf, b"not http at all\n");
    // Idle: the proxy closes after ~300 ms.
    let t0 = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(n.expect("clean close"), 0);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        p.proxy
            .stats
            .tcp_idle_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    echo.abort();
}

#[tokio::test]
async fn consistent_hash_by_header_is_sticky() {
    let ups = [
        Upstream::start("a", Behaviour::Echo).await,
        Upstream::start("b", Behaviour::Echo).await,
        Upstream::start("c", Behaviour::Echo).await,
    ];
    let eps: Vec<_> = ups.iter().map(|u| (u, json!({}))).collect();
    let cfg = node_config(
        json!([service("reviews", "10.96.0.10", 9080, "http", None, &eps)]),
        json!([{"name": "outbound|9080||reviews.default.svc.cluster.local", "service": HOST, "port": 9080,
                "lbPolicy": {"kind": "CONSISTENT_HASH", "hashKey": {"header": "x-user"}}}]),
        json!([]),
    );
    let p = TestProxy::start(cfg, &[VIP]).await;
    let mut c = Client::connect(p.addr(VIP), false).await.expect("connect");
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let u = format!("user-{user}");
        let first = c.get("reviews", "/", &[("x-user", &u)]).await.server();
        for _ in 0..3 {
            assert_eq!(
                c.get("reviews", "/", &[("x-user", &u)]).await.server(),
                first
            );
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "keys spread over endpoints: {seen:?}");
}

#[tokio::test]
async fn serves_from_the_config_store_and_swaps_routes() {
    use dpu_proxy::config_store::Offer;
    let (v1, v2) = (
        Upstream::start("v1", Behaviour::Echo).await,
        Upstream::start("v2", Behaviour::Echo).await,
    );
    let make = |version: u64, to: &str, path: serde_json::Value| {
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
                cluster(V1, "v1", json!({"version": "v1"})),
                cluster(V2, "v2", json!({"version": "v2"}))
            ]),
            table(json!([{"matches": [{"path": path}], "action": fwd(to)}])),
        );
        c["version"] = version.into();
        serde_json::from_value::<dpumesh_api::NodeConfig>(c).expect("config")
    };
    // No config yet: connections are closed at once.
    let p = TestProxy::start(serde_json::Value::Null, &[VIP]).await;
    let a = p.addr(VIP);
    assert!(Client::connect(a, false)
        .await
        .expect("connect")
        .send(
            Request::get("/")
                .header("host", "reviews")
                .body(Full::new(Bytes::new()))
                .expect("req")
        )
        .await
        .is_err());
    let store = &p.store;
    assert!(matches!(
        store.offer(make(1, V1, json!({"prefix": "/"}))),
        Offer::Accepted { .. }
    ));
    let mut c = Client::connect(a, false).await.expect("connect");
    assert_eq!(c.get("reviews", "/", &[]).await.server(), "v1");

    // A config that validates but does not compile (bad regex) is refused
    // with the field named, and the served one keeps serving on the same
    // keep-alive connection.
    let offer = store.offer(make(2, V2, json!({"regex": "(unclosed"})));
    let Offer::Rejected { serving, errors } = offer else {
        panic!("bad regex accepted: {offer:?}");
    };
    assert_eq!(serving, 1);
    assert!(
        errors
            .iter()
            .any(|e| e
                .starts_with("routeTables[0].virtualHosts[0].routes[0].matches[0].path.regex: ")),
        "{errors:?}"
    );
    assert_eq!(store.serving_version(), 1);
    assert_eq!(c.get("reviews", "/", &[]).await.server(), "v1");

    // A good config swaps in: the same connection sees it on its next request.
    assert!(matches!(
        store.offer(make(2, V2, json!({"prefix": "/"}))),
        Offer::Accepted { .. }
    ));
    assert_eq!(c.get("reviews", "/", &[]).await.server(), "v2");
    assert_eq!(store.serving_version(), 2);
}

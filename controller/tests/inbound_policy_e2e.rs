//! Inbound policies end to end: istiod-shaped inbound listeners
//! (`tests/fixtures/inbound/`) read by the real adapter binary in local mode,
//! pushed to the real dpu-proxy, which enforces them on traffic the real
//! dataplane (eBPF) steers to it, in one simulated node:
//!
//! ```text
//!  productpage 10.244.1.11 meshed, sa bookinfo-productpage ─┐ VIP 10.96.12.3:9080
//!  ratings     10.244.1.15 meshed, sa bookinfo-ratings ─────┤  (dpu-proxy applies
//!  legacy      10.244.1.20 unmeshed (plaintext) ────────────┤   reviews' policy)
//!  reviews-v1  10.244.1.13 meshed  HTTP server :9080 :9090 ◄┤
//!  reviews-v2  10.244.1.14 meshed  HTTP server :9080       ◄┘
//! ```
//!
//! reviews' listener says: STRICT (9090: PERMISSIVE); DENY `/admin*`; ALLOW
//! GET from productpage's principal, and GET `/metrics` on 9090 from anyone.
//! productpage's GET is served, its POST and `/admin` and ratings' GET are
//! 403 (counted per policy), legacy's plaintext to 9080 is refused before a
//! byte reaches reviews, and its plaintext GET `/metrics` on 9090 is served.
//!
//! Needs root and the workspace binaries (`cargo build --workspace --bins`).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard};
use dpumesh_testkit::{
    self as kit, admin, copy_dir, counter_sum, write_inventory, PodServer, SimPod,
};
use http::{Method, StatusCode};
use support::workspace_binary;

const NODE: &str = "node-1";
const REVIEWS_VIP: &str = "10.96.12.3:9080";

const PRODUCTPAGE: SimPod = SimPod {
    short: "pp",
    name: "productpage-v1-7d6cfb7dfd-x2x7k",
    service_account: "bookinfo-productpage",
    app: "productpage",
    vf: 0,
    ip: Ipv4Addr::new(10, 244, 1, 11),
    meshed: true,
};
const REVIEWS_V1: SimPod = SimPod {
    short: "rv1",
    name: "reviews-v1-86896b7648-bqzl6",
    service_account: "bookinfo-reviews",
    app: "reviews",
    vf: 1,
    ip: Ipv4Addr::new(10, 244, 1, 13),
    meshed: true,
};
const REVIEWS_V2: SimPod = SimPod {
    short: "rv2",
    name: "reviews-v2-b7dcd98fb-2hl8n",
    service_account: "bookinfo-reviews",
    app: "reviews",
    vf: 2,
    ip: Ipv4Addr::new(10, 244, 1, 14),
    meshed: true,
};
const RATINGS: SimPod = SimPod {
    short: "rt",
    name: "ratings-v1-5f9699cfdf-7tq9w",
    service_account: "bookinfo-ratings",
    app: "ratings",
    vf: 3,
    ip: Ipv4Addr::new(10, 244, 1, 15),
    meshed: true,
};
const LEGACY: SimPod = SimPod {
    short: "lg",
    name: "legacy",
    service_account: "default",
    app: "legacy",
    vf: 4,
    ip: Ipv4Addr::new(10, 244, 1, 20),
    meshed: false,
};
const PODS: [&SimPod; 5] = [&PRODUCTPAGE, &REVIEWS_V1, &REVIEWS_V2, &RATINGS, &LEGACY];

/// The adapter's directory: the fixture's services and xds, this node and its pods.
fn local_dir(dir: &Path, node: &Node, proxy_mgmt: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    copy_dir(&fixture.join("xds"), &dir.join("xds"));
    std::fs::copy(fixture.join("services.yaml"), dir.join("services.yaml")).expect("services");
    write_inventory(dir, NODE, node, proxy_mgmt, &PODS);
}

/// One HTTP/1.1 request from inside `ns`; panics if the exchange fails.
fn request(ns: &Netns, to: &str, host: &str, method: Method, path: &str) -> (StatusCode, String) {
    kit::request(ns, to.parse().expect("address"), host, method, path, false)
}

/// Sum of `dpumesh_authz_total` series whose labels include all of `want`.
fn authz_total(metrics: &str, want: &[(&str, &str)]) -> f64 {
    counter_sum(metrics, "dpumesh_authz_total", want)
}

#[test]
fn istiods_inbound_listener_is_enforced_by_dpu_proxy() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("inpol"))
            .with_nodes(1)
            .with_vfs(5),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let ns: Vec<Netns> = PODS.iter().map(|p| p.attach(&sim, &node)).collect();
    let (productpage, reviews_v1, reviews_v2, ratings, legacy) =
        (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4]);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_root = ca_dir.path().join("root.pem").display().to_string();
    let pods = PODS.iter().map(|p| p.steering(&node)).collect();
    let proxy_mgmt = kit::start_node(&sim, 1, NODE, pods, &["--ca-root-file", &ca_root]);

    // The real adapter, local mode, once: decode, translate, validate, push.
    let work = tempfile::tempdir().expect("tempdir");
    local_dir(work.path(), &node, &proxy_mgmt);
    let out = node
        .host
        .command(workspace_binary("dpumesh-controller").display().to_string())
        .args(["adapter", "--local-dir"])
        .arg(work.path())
        .args(["--node", NODE, "--proxy-addr", &proxy_mgmt, "--once"])
        .output()
        .expect("run the adapter");
    assert!(
        out.status.success(),
        "adapter: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v1 = PodServer::start_ports(reviews_v1, "reviews-v1", &[9080, 9090]);
    let v2 = PodServer::start(reviews_v2, "reviews-v2", 9080);
    let reviews_pod = format!("default/{}", REVIEWS_V1.name);

    // productpage's principal may GET (both reviews pods carry the policy).
    for i in 0..4 {
        let (status, body) = request(
            productpage,
            REVIEWS_VIP,
            "reviews:9080",
            Method::GET,
            &format!("/reviews/{i}"),
        );
        assert_eq!(status, StatusCode::OK, "productpage GET: {body}");
        assert!(body.starts_with("served by reviews-v"), "{body}");
    }
    // ...but not POST (no ALLOW rule matches), and nobody may reach /admin (DENY).
    let (status, body) = request(
        productpage,
        REVIEWS_VIP,
        "reviews:9080",
        Method::POST,
        "/reviews/0",
    );
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied"),
        "productpage POST"
    );
    let (status, body) = request(
        productpage,
        REVIEWS_VIP,
        "reviews:9080",
        Method::GET,
        "/admin/stats",
    );
    assert_eq!(status, StatusCode::FORBIDDEN, "productpage /admin: {body}");
    // ratings' principal is not allowed at all.
    for _ in 0..2 {
        let (status, body) = request(
            ratings,
            REVIEWS_VIP,
            "reviews:9080",
            Method::GET,
            "/reviews/0",
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "ratings GET: {body}");
    }
    let served: Vec<_> = v1.seen().into_iter().chain(v2.seen()).collect();
    assert_eq!(
        served.len(),
        4,
        "only productpage's GETs got through: {served:?}"
    );
    assert!(
        served
            .iter()
            .all(|(ip, port, m, _)| *ip == PRODUCTPAGE.ip && *port == 9080 && m == "GET"),
        "{served:?}"
    );

    // Counted per policy (the denies of both reviews pods together).
    let metrics = admin(&node.dpu, 15000, "/metrics");
    let deny = |policy: &str| {
        [
            ("policy", policy.to_string()),
            ("action", "deny".to_string()),
        ]
    };
    let count = |policy: &str| {
        let labels = deny(policy);
        let want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        authz_total(&metrics, &want)
    };
    assert_eq!(count("(no ALLOW policy matched)"), 3.0, "{metrics}");
    assert_eq!(count("default/deny-admin"), 1.0, "{metrics}");

    // STRICT on 9080: legacy's plaintext straight to reviews-v1 is refused
    // before a byte reaches it.
    let direct: SocketAddr = SocketAddr::new(REVIEWS_V1.ip.into(), 9080);
    let answer = legacy
        .run(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&direct, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(b"GET /reviews/0 HTTP/1.1\r\nhost: reviews\r\n\r\n");
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        })
        .expect("pod netns");
    if let Ok(got) = &answer {
        assert!(
            got.is_empty(),
            "plaintext answered under STRICT: {}",
            String::from_utf8_lossy(got)
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&node.dpu, 15000, "/stats")).expect("stats JSON");
    assert_eq!(
        stats["proxy"]["peer_authn_refused"], 1,
        "dpu-proxy refused the plaintext connection: {stats}"
    );
    assert!(
        v1.seen().iter().all(|(ip, ..)| *ip != LEGACY.ip),
        "{:?}",
        v1.seen()
    );

    // 9090 is PERMISSIVE: plaintext is accepted there, and the ALLOW rule for
    // GET /metrics on 9090 (no source) lets legacy in; other paths are 403.
    let metrics_port = format!("{}:9090", REVIEWS_V1.ip);
    let (status, body) = request(legacy, &metrics_port, "reviews", Method::GET, "/metrics");
    assert_eq!(
        status,
        StatusCode::OK,
        "plaintext GET /metrics on 9090: {body}"
    );
    let (status, body) = request(legacy, &metrics_port, "reviews", Method::GET, "/other");
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "plaintext GET /other on 9090: {body}"
    );
    assert_eq!(
        v1.seen()
            .iter()
            .filter(|(ip, port, ..)| *ip == LEGACY.ip && *port == 9090)
            .count(),
        1
    );
    let metrics = admin(&node.dpu, 15000, "/metrics");
    assert_eq!(
        authz_total(
            &metrics,
            &[
                ("policy", "(no ALLOW policy matched)"),
                ("destination_pod", &reviews_pod),
                ("protocol", "http"),
            ]
        ) + authz_total(
            &metrics,
            &[
                ("policy", "(no ALLOW policy matched)"),
                ("destination_pod", &format!("default/{}", REVIEWS_V2.name)),
            ]
        ),
        4.0,
        "ratings ×2, POST, and legacy's /other: {metrics}"
    );

    drop(v1);
    drop(v2);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

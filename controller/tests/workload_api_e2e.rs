//! The workload API end to end: the adapter binary (`--xds-api workload`, in
//! the node's host netns) gets services, workloads and an Authorization from
//! the fake ADS server (a real tonic server on a socket of the host netns),
//! pushes to the real dpu-proxy, which enforces the policy on traffic the
//! real dataplane (eBPF) steers to it, in one simulated node:
//!
//! ```text
//!  productpage 10.244.1.11 meshed, sa bookinfo-productpage ─┐ VIP 10.96.12.3:9080
//!  ratings     10.244.1.15 meshed, sa bookinfo-ratings ─────┤
//!  reviews-v1  10.244.1.13 meshed  HTTP server :9080       ◄┘
//! ```
//!
//! A DENY of ratings' principal, selected by reviews-v1's Workload: ratings'
//! request fails and never reaches reviews, productpage's is served; the DENY
//! withdrawn, ratings' request is served too.
//!
//! Needs root and the workspace binaries (`cargo build --workspace --bins`).
//! The simulator helpers are dpumesh-testkit's.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dpumesh_controller::workload::proto::security::{
    self as sec, string_match::MatchType, Group, Match, Rules, StringMatch,
};
use dpumesh_controller::workload::proto::workload::{
    self as wl, address::Type, NetworkAddress, Port, PortList,
};
use dpumesh_controller::workload::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard};
use dpumesh_testkit::{self as kit, write_inventory, PodServer, SimPod};
use envoy_types::pb::google::protobuf::Any;
use http::StatusCode;
use prost::Message;
use support::ads::FakeAds;
use support::{workspace_binary, Reaped};

const NODE: &str = "node-1";
const REVIEWS_VIP: &str = "10.96.12.3:9080";
const NODE_ID: &str =
    "ztunnel~10.0.0.5~dpumesh-adapter.istio-system~istio-system.svc.cluster.local";
const DENY: &str = "default/deny-ratings";

const PRODUCTPAGE: SimPod = SimPod {
    short: "productpage",
    name: "productpage-v1-7d6cfb7dfd-x2x7k",
    service_account: "bookinfo-productpage",
    app: "productpage",
    vf: 0,
    ip: Ipv4Addr::new(10, 244, 1, 11),
    meshed: true,
};
const REVIEWS_V1: SimPod = SimPod {
    short: "reviews",
    name: "reviews-v1-86896b7648-bqzl6",
    service_account: "bookinfo-reviews",
    app: "reviews",
    vf: 1,
    ip: Ipv4Addr::new(10, 244, 1, 13),
    meshed: true,
};
const RATINGS: SimPod = SimPod {
    short: "ratings",
    name: "ratings-v1-5f9699cfdf-7tq9w",
    service_account: "bookinfo-ratings",
    app: "ratings",
    vf: 2,
    ip: Ipv4Addr::new(10, 244, 1, 15),
    meshed: true,
};
const PODS: [&SimPod; 3] = [&PRODUCTPAGE, &REVIEWS_V1, &RATINGS];

fn any(type_url: &str, m: &impl Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// reviews (VIP 10.96.12.3:9080) and its one workload, reviews-v1, which
/// `policies` select.
fn addresses(policies: &[&str]) -> Vec<(String, Any)> {
    let host = "reviews.default.svc.cluster.local";
    let service = wl::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        hostname: host.into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 12, 3],
        }],
        ports: vec![Port {
            service_port: 9080,
            target_port: 9080,
        }],
        ..wl::Service::default()
    };
    let uid = format!("Kubernetes//Pod/default/{}", REVIEWS_V1.name);
    let workload = wl::Workload {
        uid: uid.clone(),
        name: REVIEWS_V1.name.into(),
        namespace: "default".into(),
        addresses: vec![REVIEWS_V1.ip.octets().to_vec()],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: REVIEWS_V1.service_account.into(),
        node: NODE.into(),
        services: [(
            format!("default/{host}"),
            PortList {
                ports: vec![Port {
                    service_port: 9080,
                    target_port: 9080,
                }],
            },
        )]
        .into_iter()
        .collect(),
        authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
        ..wl::Workload::default()
    };
    vec![
        (
            format!("default/{host}"),
            any(
                ADDRESS_TYPE,
                &wl::Address {
                    r#type: Some(Type::Service(service)),
                },
            ),
        ),
        (
            uid,
            any(
                ADDRESS_TYPE,
                &wl::Address {
                    r#type: Some(Type::Workload(workload)),
                },
            ),
        ),
    ]
}

/// What istiod makes of `action: DENY, rules: [{from: [{source: {principals:
/// [cluster.local/ns/default/sa/bookinfo-ratings]}}]}]` with a selector.
fn deny_ratings() -> (String, Any) {
    let a = sec::Authorization {
        name: "deny-ratings".into(),
        namespace: "default".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        groups: vec![Group {
            rules: vec![Rules {
                matches: vec![Match {
                    principals: vec![StringMatch {
                        match_type: Some(MatchType::Exact(
                            "cluster.local/ns/default/sa/bookinfo-ratings".into(),
                        )),
                    }],
                    ..Match::default()
                }],
            }],
        }],
    };
    (DENY.into(), any(AUTHORIZATION_TYPE, &a))
}

fn inventory_dir(dir: &Path, node: &Node, proxy_mgmt: &str) {
    write_inventory(dir, NODE, node, proxy_mgmt, &PODS);
    std::fs::write(dir.join("services.yaml"), "services: []\n").expect("services.yaml");
}

/// One HTTP/1.1 GET from inside `ns`: (status, body), or what failed.
fn request(ns: &Netns, to: &str, host: &str, path: &str) -> Result<(StatusCode, String), String> {
    kit::try_get(ns, to.parse().expect("address"), host, path, false)
}

/// Waits until `f` holds, else panics with `what`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_workload_api_deny_is_enforced_by_dpu_proxy() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("wlapi"))
            .with_nodes(1)
            .with_vfs(3),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let ns: Vec<Netns> = PODS.iter().map(|p| p.attach(&sim, &node)).collect();
    let (productpage, reviews_v1, ratings) = (&ns[0], &ns[1], &ns[2]);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_root = ca_dir.path().join("root.pem").display().to_string();
    let pods = PODS.iter().map(|p| p.steering(&node)).collect();
    let proxy_mgmt = kit::start_node(&sim, 1, NODE, pods, &["--ca-root-file", &ca_root]);

    // The fake istiod on a socket of the host netns, served by this runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let entered = rt.enter();
    let ads = FakeAds::new();
    ads.set(NODE_ID, ADDRESS_TYPE, addresses(&[DENY]));
    ads.set(NODE_ID, AUTHORIZATION_TYPE, vec![deny_ratings()]);
    let listener = node
        .host
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("host netns")
        .expect("bind the fake ADS server");
    let xds_addr = ads.serve_listener(listener);

    let work = tempfile::tempdir().expect("tempdir");
    inventory_dir(work.path(), &node, &proxy_mgmt);
    let _adapter = Reaped(
        node.host
            .command(workspace_binary("dpumesh-controller").display().to_string())
            .args(["adapter", "--xds-api", "workload", "--xds-addr", &xds_addr])
            .arg("--inventory-dir")
            .arg(work.path())
            .args(["--node", NODE, "--proxy-addr", &proxy_mgmt])
            .args([
                "--pod-name",
                "dpumesh-adapter",
                "--pod-namespace",
                "istio-system",
            ])
            .args(["--instance-ip", "10.0.0.5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the adapter"),
    );
    let acked = |t: &str| ads.log().iter().any(|r| r.type_url == t && r.is_ack());
    eventually("both types ACKed", || {
        acked(ADDRESS_TYPE) && acked(AUTHORIZATION_TYPE)
    });
    assert!(ads.log().iter().all(|r| !r.is_nack()), "{:#?}", ads.log());

    let server = PodServer::start(reviews_v1, "reviews-v1", 9080);
    // productpage is served once the config is in.
    eventually("productpage served through the VIP", || {
        matches!(
            request(productpage, REVIEWS_VIP, "reviews:9080", "/p"),
            Ok((StatusCode::OK, _))
        )
    });
    // ratings' principal is denied: no 200, and nothing reaches reviews.
    for _ in 0..2 {
        let r = request(ratings, REVIEWS_VIP, "reviews:9080", "/r");
        assert!(
            !matches!(r, Ok((StatusCode::OK, _))),
            "ratings was served: {r:?}"
        );
    }
    assert!(
        server.seen().iter().all(|(ip, ..)| *ip != RATINGS.ip),
        "{:?}",
        server.seen()
    );
    assert!(server.seen().iter().any(|(ip, ..)| *ip == PRODUCTPAGE.ip));

    // The DENY withdrawn: ratings is served too.
    ads.set(NODE_ID, AUTHORIZATION_TYPE, Vec::new());
    ads.set(NODE_ID, ADDRESS_TYPE, addresses(&[]));
    eventually("ratings served after the DENY is gone", || {
        matches!(
            request(ratings, REVIEWS_VIP, "reviews:9080", "/r2"),
            Ok((StatusCode::OK, _))
        )
    });
    assert!(server.seen().iter().any(|(ip, ..)| *ip == RATINGS.ip));

    drop(server);
    drop(_adapter);
    drop(entered);
    drop(rt);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

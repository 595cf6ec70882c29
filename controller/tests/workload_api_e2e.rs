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
//! The simulator helpers are those of `inbound_policy_e2e.rs` (to be moved
//! into `tests/support/` once both tests are in).

mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpumesh_api::proto::v1::{
    AddPodRequest, Interception, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_controller::workload::proto::security::{
    self as sec, string_match::MatchType, Group, Match, Rules, StringMatch,
};
use dpumesh_controller::workload::proto::workload::{
    self as wl, address::Type, NetworkAddress, Port, PortList,
};
use dpumesh_controller::workload::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use dpumesh_sim::{unique_cluster, Netns, Node, Place, SimConfig, SimGuard, SpawnSpec};
use envoy_types::pb::google::protobuf::Any;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use support::ads::FakeAds;
use support::{workspace_binary, Reaped};

const NODE: &str = "node-1";
const REVIEWS_VIP: &str = "10.96.12.3:9080";
const NODE_ID: &str =
    "ztunnel~10.0.0.5~dpumesh-adapter.istio-system~istio-system.svc.cluster.local";
const DENY: &str = "default/deny-ratings";

struct PodDef {
    name: &'static str,
    sa: &'static str,
    app: &'static str,
    vf: usize,
    ip: Ipv4Addr,
    meshed: bool,
}

const PRODUCTPAGE: PodDef = PodDef {
    name: "productpage-v1-7d6cfb7dfd-x2x7k",
    sa: "bookinfo-productpage",
    app: "productpage",
    vf: 0,
    ip: Ipv4Addr::new(10, 244, 1, 11),
    meshed: true,
};
const REVIEWS_V1: PodDef = PodDef {
    name: "reviews-v1-86896b7648-bqzl6",
    sa: "bookinfo-reviews",
    app: "reviews",
    vf: 1,
    ip: Ipv4Addr::new(10, 244, 1, 13),
    meshed: true,
};
const RATINGS: PodDef = PodDef {
    name: "ratings-v1-5f9699cfdf-7tq9w",
    sa: "bookinfo-ratings",
    app: "ratings",
    vf: 2,
    ip: Ipv4Addr::new(10, 244, 1, 15),
    meshed: true,
};
const PODS: [&PodDef; 3] = [&PRODUCTPAGE, &REVIEWS_V1, &RATINGS];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a command in `ns`; stdout, or a panic naming what failed.
fn exec(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the CNI does: the VF into a new pod netns as eth0, address, default route.
fn attach_pod(sim: &SimGuard, node: &Node, pod: &PodDef) -> Netns {
    let ns = sim.pod_add(pod.app).expect("pod netns");
    let vf_name = &node.vf(pod.vf).expect("vf").host_ifname;
    exec(
        &node.host,
        "ip",
        &["link", "set", vf_name, "netns", ns.name()],
    );
    exec(&ns, "ip", &["link", "set", vf_name, "name", "eth0"]);
    exec(
        &ns,
        "ip",
        &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
    );
    exec(&ns, "ip", &["link", "set", "eth0", "up"]);
    exec(
        &ns,
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            &node.pod_gateway.to_string(),
        ],
    );
    ns
}

fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .expect("netns");
        if up {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's dataplane (eBPF) and dpu-proxy in its DPU netns, the pods
/// registered with the dataplane; returns dpu-proxy's control address.
fn start_node(sim: &SimGuard, node: &Node, ca_root: &Path) -> String {
    let mgmt_ip = node.mgmt_dpu.addr();
    let dp_mgmt = format!("{mgmt_ip}:15081");
    let proxy_mgmt = format!("{mgmt_ip}:15080");
    sim.spawn_with(
        SpawnSpec::new(
            "dataplane-n1",
            node.netns(Place::Dpu).clone(),
            workspace_binary("dpumesh-dataplane").display().to_string(),
        )
        .args([
            "--node",
            NODE,
            "--node-id",
            &format!("{}-n1", sim.cluster()),
            "--mgmt-addr",
            &dp_mgmt,
            "--admin-addr",
            "127.0.0.1:15091",
            "--backend",
            "ebpf",
        ])
        .health(dp_mgmt.clone()),
    )
    .expect("spawn the dataplane");
    wait_listening(&node.host, dp_mgmt.parse().expect("addr"), "the dataplane");
    let network = NodeNetwork {
        node_name: NODE.into(),
        mode: NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        peers: Vec::new(),
        gateway_ip: String::new(),
    };
    let pods: Vec<PodSteering> = PODS
        .iter()
        .map(|p| {
            let v = node.vf(p.vf).expect("vf");
            PodSteering {
                pod_uid: format!("uid-{}", p.app),
                name: p.name.into(),
                namespace: "default".into(),
                container_id: format!("ctr-{}", p.app),
                ifname: "eth0".into(),
                vf_index: v.index as u32,
                representor: v.representor.clone(),
                ips: vec![p.ip.to_string()],
                mac: v.mac.to_string(),
                meshed: p.meshed,
                interception: Some(Interception::default()),
            }
        })
        .collect();
    let mgmt = dp_mgmt.clone();
    node.host
        .run(move || {
            runtime().block_on(async move {
                let mut dp = dpumesh_api::client::dataplane(&mgmt)
                    .await
                    .expect("dataplane client");
                dp.set_node_network(SetNodeNetworkRequest {
                    network: Some(network),
                })
                .await
                .expect("SetNodeNetwork");
                for pod in pods {
                    dp.add_pod(AddPodRequest { pod: Some(pod) })
                        .await
                        .expect("AddPod");
                }
            })
        })
        .expect("host netns");
    sim.spawn_with(
        SpawnSpec::new(
            "dpu-proxy-n1",
            node.netns(Place::Dpu).clone(),
            workspace_binary("dpu-proxy").display().to_string(),
        )
        .args([
            "--node",
            NODE,
            "--mgmt-addr",
            &proxy_mgmt,
            "--admin-addr",
            "127.0.0.1:15000",
            "--workers",
            "1",
            "--ca-root-file",
            &ca_root.display().to_string(),
        ])
        .health(proxy_mgmt.clone()),
    )
    .expect("spawn dpu-proxy");
    wait_listening(&node.host, proxy_mgmt.parse().expect("addr"), "dpu-proxy");
    proxy_mgmt
}

/// Requests a pod server received: (peer ip, port, method, path).
type Seen = Arc<Mutex<Vec<(std::net::IpAddr, u16, String, String)>>>;

/// An HTTP server in a pod: 200 `served by <name>`, every request recorded
/// as (peer ip, port, method, path).
struct Server {
    seen: Seen,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, name: &'static str, ports: &[u16]) -> Server {
        let listeners: Vec<std::net::TcpListener> = ports
            .iter()
            .map(|&port| {
                let l = ns
                    .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
                    .expect("netns")
                    .expect("bind the pod server");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                for l in listeners {
                    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Ok(x) = l.accept().await {
                            if tx.send(x).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = &mut stopped => return,
                        r = rx.recv() => match r { Some(x) => x, None => return },
                    };
                    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                    let record = record.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            if let Ok(mut s) = record.lock() {
                                s.push((
                                    peer.ip(),
                                    port,
                                    req.method().to_string(),
                                    req.uri().path().to_string(),
                                ));
                            }
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                    "served by {name}"
                                )))))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        });
        Server {
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(std::net::IpAddr, u16, String, String)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 request from inside `ns`: (status, body), or what failed.
fn request(ns: &Netns, to: &str, host: &str, path: &str) -> Result<(StatusCode, String), String> {
    let to: SocketAddr = to.parse().expect("address");
    let (host, path) = (host.to_string(), path.to_string());
    ns.run(move || {
        runtime().block_on(async move {
            let stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
                    .await
                    .map_err(|_| format!("connect to {to} timed out"))?
                    .map_err(|e| format!("connect to {to}: {e}"))?;
            let req = Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header("host", &host)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let exchange = async {
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let resp = send.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&body).into_owned()))
            };
            tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .map_err(|_| format!("{to}{path} timed out"))?
                .map_err(|e| format!("{to}{path}: {e}"))
        })
    })
    .expect("pod netns")
}

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
        service_account: REVIEWS_V1.sa.into(),
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
    std::fs::write(
        dir.join("node.yaml"),
        format!(
            "name: {NODE}\nnetworkMode: underlay\npodCidr: {}\nserviceCidrs: [10.96.0.0/16]\ndpuMgmtAddr: {proxy_mgmt}\n",
            node.pod_cidr
        ),
    )
    .expect("node.yaml");
    let mut pods = String::from("pods:\n");
    for p in PODS {
        let v = node.vf(p.vf).expect("vf");
        pods += &format!(
            "  - {{uid: uid-{}, name: {}, namespace: default, serviceAccount: {}, labels: {{app: {}}}, ips: [{}], mac: \"{}\", vfIndex: {}, representor: {}, meshed: {}}}\n",
            p.app, p.name, p.sa, p.app, p.ip, v.mac, v.index, v.representor, p.meshed
        );
    }
    std::fs::write(dir.join("pods.yaml"), pods).expect("pods.yaml");
    std::fs::write(dir.join("services.yaml"), "services: []\n").expect("services.yaml");
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
    let ns: Vec<Netns> = PODS.iter().map(|p| attach_pod(&sim, &node, p)).collect();
    let (productpage, reviews_v1, ratings) = (&ns[0], &ns[1], &ns[2]);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let proxy_mgmt = start_node(&sim, &node, &ca_dir.path().join("root.pem"));

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

    let server = Server::start(reviews_v1, "reviews-v1", &[9080]);
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

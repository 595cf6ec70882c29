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

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpumesh_api::proto::v1::{
    AddPodRequest, Interception, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_sim::{unique_cluster, Netns, Node, Place, SimConfig, SimGuard, SpawnSpec};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::workspace_binary;

const NODE: &str = "node-1";
const REVIEWS_VIP: &str = "10.96.12.3:9080";

struct PodDef {
    /// Short, unique: the pod's netns and uid.
    short: &'static str,
    name: &'static str,
    sa: &'static str,
    app: &'static str,
    vf: usize,
    ip: Ipv4Addr,
    meshed: bool,
}

const PRODUCTPAGE: PodDef = PodDef {
    short: "pp",
    name: "productpage-v1-7d6cfb7dfd-x2x7k",
    sa: "bookinfo-productpage",
    app: "productpage",
    vf: 0,
    ip: Ipv4Addr::new(10, 244, 1, 11),
    meshed: true,
};
const REVIEWS_V1: PodDef = PodDef {
    short: "rv1",
    name: "reviews-v1-86896b7648-bqzl6",
    sa: "bookinfo-reviews",
    app: "reviews",
    vf: 1,
    ip: Ipv4Addr::new(10, 244, 1, 13),
    meshed: true,
};
const REVIEWS_V2: PodDef = PodDef {
    short: "rv2",
    name: "reviews-v2-b7dcd98fb-2hl8n",
    sa: "bookinfo-reviews",
    app: "reviews",
    vf: 2,
    ip: Ipv4Addr::new(10, 244, 1, 14),
    meshed: true,
};
const RATINGS: PodDef = PodDef {
    short: "rt",
    name: "ratings-v1-5f9699cfdf-7tq9w",
    sa: "bookinfo-ratings",
    app: "ratings",
    vf: 3,
    ip: Ipv4Addr::new(10, 244, 1, 15),
    meshed: true,
};
const LEGACY: PodDef = PodDef {
    short: "lg",
    name: "legacy",
    sa: "default",
    app: "legacy",
    vf: 4,
    ip: Ipv4Addr::new(10, 244, 1, 20),
    meshed: false,
};
const PODS: [&PodDef; 5] = [&PRODUCTPAGE, &REVIEWS_V1, &REVIEWS_V2, &RATINGS, &LEGACY];

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
    let ns = sim.pod_add(pod.short).expect("pod netns");
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
                pod_uid: format!("uid-{}", p.short),
                name: p.name.into(),
                namespace: "default".into(),
                container_id: format!("ctr-{}", p.short),
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// The adapter's directory: the fixture's services and xds, this node and its pods.
fn local_dir(dir: &Path, node: &Node, proxy_mgmt: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    copy_dir(&fixture.join("xds"), &dir.join("xds"));
    std::fs::copy(fixture.join("services.yaml"), dir.join("services.yaml")).expect("services");
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
            p.short, p.name, p.sa, p.app, p.ip, v.mac, v.index, v.representor, p.meshed
        );
    }
    std::fs::write(dir.join("pods.yaml"), pods).expect("pods.yaml");
}

/// An HTTP server in a pod: 200 `served by <name>`, every request recorded
/// as (peer ip, port, method, path).
/// (peer ip, local port, method, path) of one request.
type Seen = (std::net::IpAddr, u16, String, String);

struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
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

    fn seen(&self) -> Vec<Seen> {
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

/// One HTTP/1.1 request from inside `ns`.
fn request(ns: &Netns, to: &str, host: &str, method: Method, path: &str) -> (StatusCode, String) {
    let to: SocketAddr = to.parse().expect("address");
    let (host, path) = (host.to_string(), path.to_string());
    ns.run(move || {
        runtime().block_on(async move {
            let stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
                    .await
                    .unwrap_or_else(|_| panic!("connect to {to} timed out"))
                    .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
            let req = Request::builder()
                .method(method)
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
                .unwrap_or_else(|_| panic!("{to}{path} timed out"))
                .unwrap_or_else(|e| panic!("{to}{path}: {e}"))
        })
    })
    .expect("pod netns")
}

/// `GET path` on an admin port inside the DPU netns.
fn admin(dpu: &Netns, addr: &str, path: &str) -> String {
    let (status, body) = request(dpu, addr, "admin", Method::GET, path);
    assert_eq!(status, StatusCode::OK, "admin {path}: {body}");
    body
}

/// Sum of `dpumesh_authz_total` series whose labels include all of `want`.
fn authz_total(metrics: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("dpumesh_authz_total{"))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
    let ns: Vec<Netns> = PODS.iter().map(|p| attach_pod(&sim, &node, p)).collect();
    let (productpage, reviews_v1, reviews_v2, ratings, legacy) =
        (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4]);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let proxy_mgmt = start_node(&sim, &node, &ca_dir.path().join("root.pem"));

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

    let v1 = Server::start(reviews_v1, "reviews-v1", &[9080, 9090]);
    let v2 = Server::start(reviews_v2, "reviews-v2", &[9080]);
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
    let metrics = admin(&node.dpu, "127.0.0.1:15000", "/metrics");
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
        serde_json::from_str(&admin(&node.dpu, "127.0.0.1:15000", "/stats")).expect("stats JSON");
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
    let metrics = admin(&node.dpu, "127.0.0.1:15000", "/metrics");
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

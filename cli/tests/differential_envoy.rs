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
//! `reset`: close the connection without an answer; `sleep-N`: answer after
//! N ms; `fail-on=a+b`: 503 from the pods named) and record every attempt
//! under the `x-case` header.
//!
//! The second test sends the scenarios of the services `lb` and `pool`
//! (load-balancing policies, route weights, consistent hashing, mirroring,
//! partial faults, outlier detection, circuit breaking) through both proxies
//! and compares the distributions and outcomes within stated tolerances:
//! each side against the configuration and against the other side.
//!
//! Needs root, the workspace binaries (`cargo build --workspace --bins`) and
//! Envoy (`scripts/setup.sh`, or `DPUMESH_ENVOY=/path/to/envoy`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpumesh_api::proto::v1::{Interception, PodSteering};
use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard, SpawnSpec};
use dpumesh_testkit::{
    self as kit, attach_pod, copy_dir, envoy_bin, log_tail, runtime, start_node, wait_for_listener,
    workspace_binary,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const RATINGS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// `lb` (all three pods, weights 1:1:2) and `pool` (all three, equal weights).
const LB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
const POOL_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);
/// `tcp`: a TCP service on port [`TCP_PORT`] (tcp_proxy, weighted clusters).
const TCP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 24);
const TCP_PORT: u16 = 9090;
/// `grpc`: one pod (reviews-v2) on a port named `grpc` (HTTP/2 upstream).
const GRPC_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 25);
/// `fo`: reviews-v1 in the node's zone (priority 0), ratings-v1 in the
/// failover region (priority 1).
const FO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 26);
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

/// `uid-<name>`, `ctr-<name>`; an unmeshed pod without interception.
fn steering(node: &Node, name: &str, vf: usize, ip: Ipv4Addr, meshed: bool) -> PodSteering {
    PodSteering {
        container_id: format!("ctr-{name}"),
        meshed,
        interception: meshed.then(Interception::default),
        ..kit::steering(&format!("uid-{name}"), name, node, vf, ip)
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/tests/fixtures/differential")
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
) -> Result<Response<ScriptBody>, std::io::Error> {
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
    if let Some(spec) = behave.strip_prefix("grpc-") {
        return Ok(grpc_answer(pod, spec, attempt));
    }
    let mut status = StatusCode::OK;
    match behave.as_str() {
        "fail" => status = StatusCode::SERVICE_UNAVAILABLE,
        "fail-once" if attempt == 1 => status = StatusCode::SERVICE_UNAVAILABLE,
        "reset" => return Err(std::io::Error::other("scripted reset")),
        "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
        "slow-once" if attempt == 1 => tokio::time::sleep(Duration::from_secs(2)).await,
        b if b.starts_with("sleep-") => {
            let ms = b["sleep-".len()..].parse::<u64>().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        b if b.starts_with("fail-on=") => {
            if b["fail-on=".len()..].split('+').any(|p| p == pod) {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
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
        .body(ScriptBody::data(Bytes::from(format!("{pod} {version}"))))
        .unwrap_or_else(|_| Response::new(ScriptBody::default())))
}

/// A gRPC answer (`x-behave: grpc-<code>[-once|-trailers]`): by default
/// trailers-only (`grpc-status` in the response headers, no body); `-once`:
/// only the first attempt of the case gets `<code>`, later ones 0;
/// `-trailers`: a message, then `grpc-status` in the trailers.
fn grpc_answer(pod: &str, spec: &str, attempt: usize) -> Response<ScriptBody> {
    let (code, mode) = spec.split_once('-').unwrap_or((spec, ""));
    let code = if mode == "once" && attempt > 1 {
        "0"
    } else {
        code
    };
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .header("x-served-by", pod);
    let answer = if mode == "trailers" {
        let mut trailers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(code) {
            trailers.insert("grpc-status", v);
        }
        // One empty, uncompressed gRPC message.
        builder.body(ScriptBody {
            data: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
            trailers: Some(trailers),
        })
    } else {
        builder
            .header("grpc-status", code)
            .body(ScriptBody::default())
    };
    answer.unwrap_or_else(|_| Response::new(ScriptBody::default()))
}

/// The scripted servers' response body: optional data, optional trailers.
#[derive(Default)]
struct ScriptBody {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl ScriptBody {
    fn data(b: Bytes) -> ScriptBody {
        ScriptBody {
            data: Some(b),
            trailers: None,
        }
    }
}

impl hyper::body::Body for ScriptBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = if let Some(d) = self.data.take() {
            Some(Ok(hyper::body::Frame::data(d)))
        } else {
            self.trailers
                .take()
                .map(|t| Ok(hyper::body::Frame::trailers(t)))
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
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

    /// The VIP a client would call for this host.
    fn vip(&self) -> SocketAddr {
        vip_of(self.host)
    }
}

/// The VIP a client would call for `host` (the reviews VIP by default).
fn vip_of(host: &str) -> SocketAddr {
    let ip = if host.starts_with("ratings") || host.starts_with("10.96.0.21") {
        RATINGS_VIP
    } else if host.starts_with("lb") {
        LB_VIP
    } else if host.starts_with("pool") {
        POOL_VIP
    } else if host.starts_with("grpc") {
        GRPC_VIP
    } else if host.starts_with("fo") {
        FO_VIP
    } else if host.starts_with("tcp") {
        return SocketAddr::from((TCP_VIP, TCP_PORT));
    } else {
        REVIEWS_VIP
    };
    SocketAddr::from((ip, PORT))
}

/// One request with owned parts (the matrix's [`Case`], or one of the
/// second test's scenarios).
#[derive(Debug, Clone)]
struct Req {
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    h2: bool,
}

impl Req {
    fn get(host: &str, path: &str) -> Req {
        Req {
            host: host.into(),
            path: path.into(),
            headers: Vec::new(),
            h2: false,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl From<&Case> for Req {
    fn from(c: &Case) -> Req {
        Req {
            host: c.host.into(),
            path: c.path.into(),
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            h2: c.h2,
        }
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
    /// A connection-pool limit refused the request (Envoy's flag UO): Envoy
    /// says so in `x-envoy-overloaded`, dpu-proxy in its local reply's body
    /// (`response_flags=UO`).
    overloaded: bool,
    /// From sending the request to the end of the answer's body.
    elapsed: Duration,
    /// `grpc-status` of the answer, from its headers or its trailers.
    grpc_status: Option<String>,
}

/// One request (HTTP/1.1, or h2c with prior knowledge) on a new connection
/// from inside `ns`.
fn send(ns: &Netns, to: SocketAddr, case: &Case, tag: String) -> Result<Reply, String> {
    let req = Req::from(case);
    ns.run(move || runtime().block_on(exchange(to, &req, tag)))
        .map_err(|e| format!("netns: {e}"))?
}

/// One request of a batch: what, its `x-case` tag, and how long after the
/// batch's start it may go.
struct Job {
    req: Req,
    tag: String,
    after: Duration,
}

/// Sends `jobs` from inside `ns`, at most `concurrency` at a time, each on
/// its own connection; the replies in the order of `jobs`.
fn send_all(
    ns: &Netns,
    to: SocketAddr,
    jobs: Vec<Job>,
    concurrency: usize,
) -> Vec<Result<Reply, String>> {
    let n = jobs.len();
    ns.run(move || {
        runtime().block_on(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
            let mut tasks = Vec::with_capacity(n);
            for job in jobs {
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(job.after).await;
                    let reply = exchange(to, &job.req, job.tag).await;
                    drop(permit);
                    reply
                }));
            }
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
            }
            out
        })
    })
    .unwrap_or_else(|e| (0..n).map(|_| Err(format!("netns: {e}"))).collect())
}

/// One request on a new connection (call from inside the client's netns).
async fn exchange(to: SocketAddr, case: &Req, tag: String) -> Result<Reply, String> {
    let start = Instant::now();
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
        .await
        .map_err(|_| format!("connect to {to} timed out"))?
        .map_err(|e| format!("connect to {to}: {e}"))?;
    let io = TokioIo::new(stream);
    let mut req = if case.h2 {
        Request::get(format!("http://{}{}", case.host, case.path))
    } else {
        Request::get(case.path.as_str()).header("host", case.host.as_str())
    }
    .header("x-case", tag);
    for (k, v) in &case.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = if case.h2 {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
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
        let mut reply = Reply {
            status: resp.status().as_u16(),
            served_by,
            seen,
            location: header("location"),
            resp_header: header("x-resp"),
            overloaded: header("x-envoy-overloaded").as_deref() == Some("true"),
            elapsed: Duration::ZERO,
            grpc_status: header("grpc-status"),
        };
        let collected = resp.into_body().collect().await?;
        if let Some(t) = collected.trailers().and_then(|t| t.get("grpc-status")) {
            reply.grpc_status = t.to_str().ok().map(str::to_string);
        }
        let body = collected.to_bytes();
        reply.overloaded |= String::from_utf8_lossy(&body).contains("response_flags=UO");
        reply.elapsed = start.elapsed();
        Ok::<_, hyper::Error>(reply)
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer in 20 s".to_string())?
        .map_err(|e| format!("exchange: {e}"))
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

/// One simulated node with the real dataplane and dpu-proxy, a meshed client
/// pod, Envoy in its own pod and the scripted servers, both proxies
/// configured from the fixture and warm. Dropped in field order: the
/// servers first, the simulator (processes, netns) last.
struct Harness {
    _servers: Vec<ScriptedServer>,
    seen: Attempts,
    client: Netns,
    envoy_pod: Netns,
    _work: TempDir,
    sim: SimGuard,
}

impl Harness {
    fn up(prefix: &str) -> Harness {
        let envoy = envoy_bin();
        let sim = SimGuard::up(
            SimConfig::new(unique_cluster(prefix))
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
        let root = work.0.join("ca-root.pem").display().to_string();
        let proxy_mgmt = start_node(&sim, 1, "n1", pods, &["--ca-root-file", &root]);

        // The adapter: the directory → NodeConfig → dpu-proxy, once.
        let out = node
            .host
            .command(workspace_binary("dpumesh-controller").display().to_string())
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
        wait_for_listener(
            &envoy_pod,
            envoy_addr,
            "Envoy",
            Duration::from_secs(30),
            Some(&envoy_log),
        );
        // Envoy is warm once every EDS file is loaded: a subset route answers.
        // Envoy is warm once every EDS file is loaded: a route to a subset of
        // each service answers (the probes go to servers that record them under
        // the tag "probe", which no comparison reads).
        let deadline = Instant::now() + Duration::from_secs(20);
        for (host, path) in [
            ("reviews", "/reviews/weighted"),
            ("lb", "/lb/hash-ip"),
            ("pool", "/pool/cb"),
            ("tcp", "/"),
        ] {
            let probe = Req::get(host, path);
            let to = SocketAddr::from(([127, 0, 0, 1], vip_of(host).port()));
            loop {
                let reply = envoy_pod
                    .run(|| runtime().block_on(exchange(to, &probe, "probe".into())))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match reply {
                    Ok(Reply { status: 200, .. }) => break,
                    other => assert!(
                        Instant::now() < deadline,
                        "Envoy never answered 200 for {host}{path}: {:?}{}",
                        other.map(|r| r.status),
                        log_tail(&envoy_log)
                    ),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        Harness {
            _servers,
            seen,
            client,
            envoy_pod,
            _work: work,
            sim,
        }
    }

    /// Stops everything and checks that nothing is left behind.
    fn finish(self) {
        let name = self.sim.cluster().to_string();
        drop(self);
        let left = dpumesh_sim::leftovers(&name).expect("leftovers");
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn envoy_and_dpu_proxy_route_the_same_resources_the_same_way() {
    let h = Harness::up("diff");
    let (client, envoy_pod, seen) = (&h.client, &h.envoy_pod, &h.seen);
    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], PORT));
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
            overloaded: false,
            elapsed: Duration::ZERO,
            grpc_status: None,
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
        let by_envoy = run(envoy_pod, envoy_addr, case, format!("envoy-{i}"));
        let by_dpu = run(client, case.vip(), case, format!("dpu-{i}"));
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

    h.finish();
}

/// One proxy under test, as the second test drives it.
struct Side<'a> {
    name: &'static str,
    ns: &'a Netns,
    /// Envoy is called on 127.0.0.1 whatever the host; dpu-proxy on the
    /// host's VIP, through the dataplane.
    via_envoy: bool,
    seen: &'a Attempts,
}

/// One request's fate on one side.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    served_by: Option<String>,
    overloaded: bool,
    elapsed: Duration,
    grpc_status: Option<String>,
    /// The pods that received it (mirrors included), in order.
    attempts: Vec<String>,
}

impl Side<'_> {
    /// Sends `reqs` (each after its delay), at most `concurrency` at a time;
    /// waits `settle` for stragglers (mirrors) before reading the attempts.
    fn send(
        &self,
        scenario: &str,
        reqs: Vec<(Req, Duration)>,
        concurrency: usize,
        settle: Duration,
    ) -> Vec<Got> {
        let Some((first, _)) = reqs.first() else {
            return Vec::new();
        };
        let to = if self.via_envoy {
            SocketAddr::from(([127, 0, 0, 1], vip_of(&first.host).port()))
        } else {
            vip_of(&first.host)
        };
        let tags: Vec<String> = (0..reqs.len())
            .map(|i| format!("{}-{scenario}-{i}", self.name))
            .collect();
        let jobs = reqs
            .into_iter()
            .zip(&tags)
            .map(|((req, after), tag)| Job {
                req,
                tag: tag.clone(),
                after,
            })
            .collect();
        let replies = send_all(self.ns, to, jobs, concurrency);
        std::thread::sleep(settle);
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        replies
            .into_iter()
            .zip(&tags)
            .map(|(r, tag)| {
                let attempts = seen.get(tag).cloned().unwrap_or_default();
                match r {
                    Ok(r) => Got {
                        status: r.status,
                        served_by: r.served_by,
                        overloaded: r.overloaded,
                        elapsed: r.elapsed,
                        grpc_status: r.grpc_status,
                        attempts,
                    },
                    Err(e) => Got {
                        status: 0,
                        served_by: Some(format!("(client error: {e})")),
                        overloaded: false,
                        elapsed: Duration::ZERO,
                        grpc_status: None,
                        attempts,
                    },
                }
            })
            .collect()
    }
}

/// Share of the answers each pod gave (of all answers).
fn shares(got: &[Got]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for g in got {
        let pod = g
            .served_by
            .clone()
            .unwrap_or_else(|| format!("({})", g.status));
        *out.entry(pod).or_insert(0.0) += 1.0 / got.len().max(1) as f64;
    }
    out
}

fn fmt_shares(s: &std::collections::BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = s
        .iter()
        .map(|(k, v)| format!("{k} {:.1}%", v * 100.0))
        .collect();
    parts.join(", ")
}

/// What both sides measured, per scenario, for the comparison table.
#[derive(Default)]
struct Findings {
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Findings {
    fn note(&mut self, line: String) {
        eprintln!("{line}");
        self.lines.push(line);
    }

    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            self.problems.push(what);
        }
    }
}

fn repeat(req: Req, n: usize) -> Vec<(Req, Duration)> {
    (0..n).map(|_| (req.clone(), Duration::ZERO)).collect()
}

/// Load balancing (round robin, random, least request; weighted endpoints;
/// route weights; TCP weighted clusters): each pod's share on both sides within `tol` of the
/// configured share, and the two sides within `tol` of each other.
fn distributions(sides: &[Side], f: &mut Findings) {
    let lb = |v1: f64, v2: f64, r: f64| [("reviews-v1", v1), ("reviews-v2", v2), ("ratings-v1", r)];
    // (scenario, host, path, requests, concurrency, expected, tolerance)
    // Tolerances are >= 3.5 standard deviations of the sampled share (none
    // for round robin, which is exact), and well below the gap between the
    // configured shares and an unweighted split (25/25/50 vs 33/33/33).
    let third = 1.0 / 3.0;
    let cases = [
        ("rr", "lb", "/lb/rr", 400, 8, lb(0.25, 0.25, 0.5), 0.03),
        // Envoy's random load balancer ignores endpoint weights.
        (
            "random",
            "lb",
            "/lb/random",
            800,
            8,
            lb(third, third, third),
            0.07,
        ),
        (
            "lr-weighted",
            "lb",
            "/lb/lr",
            800,
            1,
            lb(0.25, 0.25, 0.5),
            0.07,
        ),
        (
            "lr-equal",
            "pool",
            "/pool/lr",
            800,
            1,
            lb(third, third, third),
            0.07,
        ),
        (
            "split-30-70",
            "lb",
            "/lb/split",
            800,
            8,
            lb(0.3, 0.7, 0.0),
            0.07,
        ),
        // TCP (tcp_proxy weighted clusters 20/80): HTTP/1.1 over the relayed bytes.
        ("tcp-20-80", "tcp", "/", 600, 8, lb(0.2, 0.0, 0.8), 0.07),
    ];
    for (scenario, host, path, n, conc, want, tol) in cases {
        let mut measured = Vec::new();
        for side in sides {
            let got = side.send(
                scenario,
                repeat(Req::get(host, path), n),
                conc,
                Duration::ZERO,
            );
            let s = shares(&got);
            f.note(format!(
                "{scenario:<14} {:<9} {}",
                side.name,
                fmt_shares(&s)
            ));
            for (pod, share) in want {
                let have = s.get(pod).copied().unwrap_or(0.0);
                f.check(
                    (have - share).abs() <= tol,
                    format!(
                        "{scenario}: {} sent {:.1}% to {pod}, configured {:.1}% (± {:.0}%)",
                        side.name,
                        have * 100.0,
                        share * 100.0,
                        tol * 100.0
                    ),
                );
            }
            f.check(
                got.iter().all(|g| g.status == 200),
                format!(
                    "{scenario}: {} answered other than 200: {}",
                    side.name,
                    fmt_shares(&s)
                ),
            );
            measured.push(s);
        }
        if let [a, b] = &measured[..] {
            for (pod, _) in want {
                let (x, y) = (a.get(pod).unwrap_or(&0.0), b.get(pod).unwrap_or(&0.0));
                f.check(
                    (x - y).abs() <= tol * 1.3,
                    format!(
                        "{scenario}: {pod} got {:.1}% from Envoy, {:.1}% from dpu-proxy",
                        x * 100.0,
                        y * 100.0
                    ),
                );
            }
        }
    }
}

/// Consistent hashing (ring hash by header, cookie, source IP): on each
/// side every key sticks to one pod, and the keys spread over all pods
/// (the weight-2 pod taking about half of them).
fn hashing(sides: &[Side], f: &mut Findings) {
    const KEYS: usize = 90;
    for (scenario, path, key) in [
        ("hash-header", "/lb/hash-header", "x-user"),
        ("hash-cookie", "/lb/hash-cookie", "cookie"),
    ] {
        for side in sides {
            let reqs: Vec<(Req, Duration)> = (0..KEYS * 2)
                .map(|i| {
                    let k = i % KEYS;
                    let value = if key == "cookie" {
                        format!("session=s{k}; other=x")
                    } else {
                        format!("u{k}")
                    };
                    (Req::get("lb", path).header(key, &value), Duration::ZERO)
                })
                .collect();
            let got = side.send(scenario, reqs, 8, Duration::ZERO);
            let mut by_key: HashMap<usize, std::collections::BTreeSet<String>> = HashMap::new();
            for (i, g) in got.iter().enumerate() {
                by_key.entry(i % KEYS).or_default().insert(
                    g.served_by
                        .clone()
                        .unwrap_or_else(|| format!("({})", g.status)),
                );
            }
            let loose = by_key.values().filter(|pods| pods.len() != 1).count();
            let mut keys_per_pod: std::collections::BTreeMap<String, usize> = Default::default();
            for pods in by_key.values().filter(|p| p.len() == 1) {
                for p in pods {
                    *keys_per_pod.entry(p.clone()).or_default() += 1;
                }
            }
            f.note(format!(
                "{scenario:<14} {:<9} keys per pod {keys_per_pod:?}, {loose} keys on more than one pod",
                side.name
            ));
            f.check(
                loose == 0,
                format!(
                    "{scenario}: {}: {loose} of {KEYS} keys went to more than one pod",
                    side.name
                ),
            );
            for pod in ["reviews-v1", "reviews-v2", "ratings-v1"] {
                f.check(
                    keys_per_pod.get(pod).copied().unwrap_or(0) >= 8,
                    format!(
                        "{scenario}: {}: keys per pod {keys_per_pod:?}, too few on {pod}",
                        side.name
                    ),
                );
            }
            let heavy = keys_per_pod.get("ratings-v1").copied().unwrap_or(0) as f64 / KEYS as f64;
            f.check(
                (0.3..=0.7).contains(&heavy),
                format!(
                    "{scenario}: {}: the weight-2 pod got {:.0}% of the keys",
                    side.name,
                    heavy * 100.0
                ),
            );
        }
    }
    // One client address per side: every request on one pod.
    for side in sides {
        let got = side.send(
            "hash-ip",
            repeat(Req::get("lb", "/lb/hash-ip"), 30),
            4,
            Duration::ZERO,
        );
        let s = shares(&got);
        f.note(format!(
            "{:<14} {:<9} {}",
            "hash-ip",
            side.name,
            fmt_shares(&s)
        ));
        f.check(
            s.len() == 1 && got.iter().all(|g| g.status == 200),
            format!(
                "hash-ip: {} spread one source over {}",
                side.name,
                fmt_shares(&s)
            ),
        );
    }
}

/// Mirroring (100 % and 50 %) and partial faults (abort 40 %, delay 50 %).
fn mirrors_and_faults(sides: &[Side], f: &mut Findings) {
    let mut mirrored = Vec::new();
    for (scenario, path, n, want, tol) in [
        ("mirror-all", "/mirror/all", 40, 1.0, 0.0),
        ("mirror-half", "/mirror/half", 400, 0.5, 0.09),
    ] {
        for side in sides {
            let got = side.send(
                scenario,
                repeat(Req::get("lb", path), n),
                8,
                Duration::from_millis(500),
            );
            let copies = got
                .iter()
                .filter(|g| g.attempts.iter().filter(|p| *p == "ratings-v1").count() == 1)
                .count();
            let share = copies as f64 / n as f64;
            let wrong = got
                .iter()
                .filter(|g| {
                    g.status != 200
                        || g.served_by.as_deref() != Some("reviews-v1")
                        || g.attempts.iter().filter(|p| *p == "reviews-v1").count() != 1
                        || g.attempts.iter().filter(|p| *p == "ratings-v1").count() > 1
                })
                .count();
            f.note(format!(
                "{scenario:<14} {:<9} mirrored {:.1}%, {wrong} wrong answers",
                side.name,
                share * 100.0
            ));
            f.check(
                (share - want).abs() <= tol && wrong == 0,
                format!(
                    "{scenario}: {} mirrored {:.1}% (configured {:.0}%), {wrong} requests not \
                     answered once by reviews-v1 or copied more than once",
                    side.name,
                    share * 100.0,
                    want * 100.0
                ),
            );
            mirrored.push(share);
        }
        if let [a, b] = mirrored[..] {
            f.check(
                (a - b).abs() <= tol * 1.3,
                format!(
                    "{scenario}: Envoy mirrored {:.1}%, dpu-proxy {:.1}%",
                    a * 100.0,
                    b * 100.0
                ),
            );
        }
        mirrored.clear();
    }

    let mut aborted = Vec::new();
    for side in sides {
        let got = side.send(
            "abort-40",
            repeat(Req::get("lb", "/faults/abort"), 800),
            8,
            Duration::ZERO,
        );
        let n503 = got.iter().filter(|g| g.status == 503).count();
        let share = n503 as f64 / got.len() as f64;
        // An aborted request never reaches the upstream; the others do, once.
        let wrong = got
            .iter()
            .filter(|g| match g.status {
                503 => !g.attempts.is_empty(),
                200 => g.attempts != ["reviews-v1"],
                _ => true,
            })
            .count();
        f.note(format!(
            "{:<14} {:<9} aborted {:.1}%, {wrong} wrong",
            "abort-40",
            side.name,
            share * 100.0
        ));
        f.check(
            (share - 0.4).abs() <= 0.06 && wrong == 0,
            format!(
                "abort-40: {} aborted {:.1}% (configured 40 %), {wrong} wrong answers",
                side.name,
                share * 100.0
            ),
        );
        aborted.push(share);
    }
    if let [a, b] = aborted[..] {
        f.check(
            (a - b).abs() <= 0.08,
            format!(
                "abort-40: Envoy aborted {:.1}%, dpu-proxy {:.1}%",
                a * 100.0,
                b * 100.0
            ),
        );
    }

    let mut delayed = Vec::new();
    for side in sides {
        let got = side.send(
            "delay-50",
            repeat(Req::get("lb", "/faults/delay"), 300),
            30,
            Duration::ZERO,
        );
        // The delay is 400 ms; an undelayed request takes a few ms.
        let slow = got
            .iter()
            .filter(|g| g.elapsed >= Duration::from_millis(300))
            .count();
        let share = slow as f64 / got.len() as f64;
        let not_ok = got.iter().filter(|g| g.status != 200).count();
        f.note(format!(
            "{:<14} {:<9} delayed {:.1}%, {not_ok} not 200",
            "delay-50",
            side.name,
            share * 100.0
        ));
        f.check(
            (share - 0.5).abs() <= 0.1 && not_ok == 0,
            format!(
                "delay-50: {} delayed {:.1}% (configured 50 %), {not_ok} not 200",
                side.name,
                share * 100.0
            ),
        );
        delayed.push(share);
    }
    if let [a, b] = delayed[..] {
        f.check(
            (a - b).abs() <= 0.13,
            format!(
                "delay-50: Envoy delayed {:.1}%, dpu-proxy {:.1}%",
                a * 100.0,
                b * 100.0
            ),
        );
    }
}

/// Outlier detection (3 consecutive 5xx, 3 s base ejection, at most 50 %
/// ejected) and circuit breaking (1 connection, 1 pending request).
fn resilience(sides: &[Side], f: &mut Findings) {
    let od = |behave: &str, n: usize| {
        let req = Req::get("pool", "/pool/od");
        let req = if behave.is_empty() {
            req
        } else {
            req.header("x-behave", behave)
        };
        repeat(req, n)
    };
    let served = |got: &[Got], pod: &str| {
        got.iter()
            .filter(|g| g.served_by.as_deref() == Some(pod))
            .count()
    };
    // Phase 1: reviews-v2 fails: 3 errors eject it; then it gets nothing.
    let mut summaries: Vec<Vec<String>> = vec![Vec::new(); sides.len()];
    let mut phase1 = Vec::new();
    for side in sides {
        let got = side.send("od-fail", od("fail-on=reviews-v2", 30), 1, Duration::ZERO);
        phase1.push(got);
    }
    // Ejected for 3 s; Envoy looks every interval (1 s): back within 4 s.
    std::thread::sleep(Duration::from_secs(5));
    let mut phase2 = Vec::new();
    for side in sides {
        phase2.push(side.send("od-back", od("", 30), 1, Duration::ZERO));
    }
    // Phase 3: two of three fail; at most 50 % may be ejected.
    let mut phase3 = Vec::new();
    for side in sides {
        phase3.push(side.send(
            "od-two",
            od("fail-on=reviews-v1+ratings-v1", 45),
            1,
            Duration::ZERO,
        ));
    }
    for (k, side) in sides.iter().enumerate() {
        let (p1, p2, p3) = (&phase1[k], &phase2[k], &phase3[k]);
        let v2_total = served(p1, "reviews-v2");
        let v2_late = served(&p1[15..], "reviews-v2");
        let v2_back = served(p2, "reviews-v2");
        let late3: std::collections::BTreeSet<String> = p3[30..]
            .iter()
            .filter_map(|g| g.served_by.clone())
            .collect();
        let line = format!(
            "failing v2 served {v2_total} (last 15: {v2_late}), after 5 s {v2_back} of 30; \
             two failing: last 15 served by {late3:?}"
        );
        f.note(format!("{:<14} {:<9} {line}", "outlier", side.name));
        summaries[k].push(format!(
            "{v2_total} {v2_late} {} {}",
            v2_back >= 8,
            late3.len()
        ));
        f.check(
            v2_total == 3 && v2_late == 0,
            format!(
                "outlier: {}: the failing pod served {v2_total} (want 3), {v2_late} of the last 15",
                side.name
            ),
        );
        f.check(
            v2_back >= 8,
            format!(
                "outlier: {}: the ejected pod served {v2_back} of 30 after its ejection time",
                side.name
            ),
        );
        f.check(
            late3.len() == 2,
            format!(
                "outlier: {}: with two failing pods and max 50 % ejected, the last 15 were served by {late3:?} \
                 (want 2 pods: one of the failing ones is not ejected)",
                side.name
            ),
        );
    }

    // Circuit breaking: one slow request holds the only connection, the
    // second waits (the one pending request allowed), the third and fourth
    // overflow: 503 with UO, without reaching the pod.
    for (k, side) in sides.iter().enumerate() {
        let req = Req::get("pool", "/pool/cb").header("x-behave", "sleep-700");
        let reqs = [0, 150, 300, 350]
            .map(|ms| (req.clone(), Duration::from_millis(ms)))
            .to_vec();
        let got = side.send("cb", reqs, 4, Duration::ZERO);
        let view: Vec<String> = got
            .iter()
            .map(|g| {
                format!(
                    "{}{}/{}",
                    g.status,
                    if g.overloaded { " UO" } else { "" },
                    g.attempts.len()
                )
            })
            .collect();
        let ms: Vec<u128> = got.iter().map(|g| g.elapsed.as_millis()).collect();
        f.note(format!(
            "{:<14} {:<9} {view:?} after {ms:?} ms",
            "circuit-break", side.name
        ));
        f.check(
            view == ["200/1", "200/1", "503 UO/0", "503 UO/0"],
            format!(
                "circuit-break: {}: {view:?} (want 200, 200, then 503 UO twice without an attempt)",
                side.name
            ),
        );
        summaries[k].push(view.join(","));
    }
    if let [a, b] = &summaries[..] {
        f.check(
            a == b,
            format!("outlier/circuit-break: Envoy {a:?}, dpu-proxy {b:?}"),
        );
    }
}

/// gRPC over h2c (service `grpc`, one pod, `retry_on: cancelled,unavailable`,
/// 2 retries): the status (trailers-only, or in trailers after a message)
/// and the attempts must be equal, and Envoy's as configured.
fn grpc(sides: &[Side], f: &mut Findings) {
    let cases = [
        // (behaviour, Envoy's expected outcome: grpc-status and attempts)
        ("grpc-0", "0 x1"),
        ("grpc-14", "14 x3"),
        ("grpc-14-once", "0 x2"),
        ("grpc-1-once", "0 x2"),
        ("grpc-13", "13 x1"),
        ("grpc-14-trailers", "14 x1"),
    ];
    for (behave, want) in cases {
        let mut outcomes = Vec::new();
        for side in sides {
            let mut req = Req::get("grpc", "/test.Echo/Call")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-behave", behave);
            req.h2 = true;
            let got = side.send(behave, vec![(req, Duration::ZERO)], 1, Duration::ZERO);
            let view = got
                .first()
                .map(|g| {
                    format!(
                        "{} {} x{}",
                        g.status,
                        g.grpc_status.as_deref().unwrap_or("-"),
                        g.attempts.len()
                    )
                })
                .unwrap_or_default();
            f.note(format!("{behave:<16} {:<9} {view}", side.name));
            outcomes.push(view);
        }
        if let [envoy, dpu] = &outcomes[..] {
            f.check(
                envoy == dpu,
                format!("{behave}: Envoy {envoy}, dpu-proxy {dpu}"),
            );
            f.check(
                *envoy == format!("200 {want}"),
                format!("{behave}: Envoy {envoy}, the resources say 200 {want}"),
            );
        }
    }
}

/// Locality failover (service `fo`): all traffic to the local priority
/// while it is healthy; once outlier detection ejects it (3 failures), all
/// to the failover region.
fn failover(sides: &[Side], f: &mut Findings) {
    let mut views = Vec::new();
    for side in sides {
        let calm = side.send(
            "fo-calm",
            repeat(Req::get("fo", "/"), 20),
            1,
            Duration::ZERO,
        );
        let failing = side.send(
            "fo-fail",
            repeat(
                Req::get("fo", "/").header("x-behave", "fail-on=reviews-v1"),
                20,
            ),
            1,
            Duration::ZERO,
        );
        let by = |got: &[Got], pod: &str| {
            got.iter()
                .filter(|g| g.served_by.as_deref() == Some(pod))
                .count()
        };
        let view = format!(
            "calm: reviews-v1 {} ratings-v1 {}; failing: reviews-v1 {} ratings-v1 {} (last 10: {})",
            by(&calm, "reviews-v1"),
            by(&calm, "ratings-v1"),
            by(&failing, "reviews-v1"),
            by(&failing, "ratings-v1"),
            by(&failing[10..], "ratings-v1"),
        );
        f.note(format!("{:<14} {:<9} {view}", "failover", side.name));
        f.check(
            view == "calm: reviews-v1 20 ratings-v1 0; failing: reviews-v1 3 ratings-v1 17 (last 10: 10)",
            format!("failover: {}: {view} (want all local, then 3 failures and the rest in the failover region)", side.name),
        );
        views.push(view);
    }
    if let [a, b] = &views[..] {
        f.check(a == b, format!("failover: Envoy {a}; dpu-proxy {b}"));
    }
}

#[test]
fn envoy_and_dpu_proxy_balance_and_protect_the_same_way() {
    let h = Harness::up("difflb");
    let sides = [
        Side {
            name: "Envoy",
            ns: &h.envoy_pod,
            via_envoy: true,
            seen: &h.seen,
        },
        Side {
            name: "dpu-proxy",
            ns: &h.client,
            via_envoy: false,
            seen: &h.seen,
        },
    ];
    let mut f = Findings::default();
    resilience(&sides, &mut f);
    distributions(&sides, &mut f);
    hashing(&sides, &mut f);
    mirrors_and_faults(&sides, &mut f);
    grpc(&sides, &mut f);
    failover(&sides, &mut f);
    assert!(
        f.problems.is_empty(),
        "{} differences or departures from the configuration:\n{}\n\nmeasured:\n{}",
        f.problems.len(),
        f.problems.join("\n"),
        f.lines.join("\n")
    );
    h.finish();
}

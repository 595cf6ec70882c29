//! A scripted Kubernetes API server for the controller's tests: a real HTTP/1.1
//! server (hyper) on 127.0.0.1 that serves list and watch (chunked JSON watch
//! events) for Pods, Nodes, Services, Namespaces and EndpointSlices, and
//! GET/POST/PUT for Leases with resourceVersion conflicts (409). The test
//! changes objects through [`ApiServer`]; every change gets the next
//! resourceVersion and is sent to the open watches and kept in an event log that
//! a watch from an older resourceVersion replays. [`ApiServer::compact`] drops
//! the log: a watch from before it gets `410 Gone` (as an ERROR event, as the
//! real API server sends it). [`ApiServer::drop_watches`] cuts every open watch.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type Chunk = Result<Frame<Bytes>, std::io::Error>;

pub const PODS: &str = "/api/v1/pods";
pub const NODES: &str = "/api/v1/nodes";
pub const SERVICES: &str = "/api/v1/services";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

struct Kind {
    api_version: &'static str,
    kind: &'static str,
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object) since the last compaction.
    events: Vec<(u64, &'static str, Value)>,
    compacted: u64,
    watchers: Vec<mpsc::UnboundedSender<Chunk>>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    kinds: BTreeMap<&'static str, Kind>,
    /// `<ns>/<name>` → Lease.
    leases: BTreeMap<String, Value>,
    /// `"<METHOD> <path>?<query>"`, in arrival order.
    requests: Vec<String>,
    /// Lease writes answered 409.
    lease_conflicts: u64,
    /// The next Lease PUT races with another writer (who wins).
    lease_race: bool,
}

fn key_of(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn line(event_type: &str, object: &Value) -> Chunk {
    let mut text = serde_json::to_vec(&json!({"type": event_type, "object": object}))
        .expect("serialise event");
    text.push(b'\n');
    Ok(Frame::data(Bytes::from(text)))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("serialise"));
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(bytes).map_err(|e| match e {}).boxed())
        .expect("response")
}

impl Inner {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn publish(&mut self, path: &str, event_type: &'static str, obj: Value) {
        let kind = self.kinds.get_mut(path).expect("known kind");
        let rv: u64 = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("rv");
        kind.events.push((rv, event_type, obj.clone()));
        kind.watchers
            .retain(|w| w.send(line(event_type, &obj)).is_ok());
    }

    fn handle(&mut self, method: &Method, path: &str, query: &str, body: &[u8]) -> Response<Body> {
        self.requests.push(format!("{method} {path}?{query}"));
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        if let Some(kind) = self.kinds.get_mut(path) {
            if method != Method::GET {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &status(405, "MethodNotAllowed", "read only"),
                );
            }
            let watching = matches!(params.get("watch"), Some(&"true" | &"1"));
            if !watching {
                let items: Vec<Value> = kind.objects.values().cloned().collect();
                return respond(
                    StatusCode::OK,
                    &json!({"apiVersion": kind.api_version, "kind": format!("{}List", kind.kind),
                            "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                );
            }
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.rv);
            let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
            if from < kind.compacted {
                let gone = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", kind.compacted),
                );
                let _ = tx.send(line("ERROR", &gone));
                drop(tx);
            } else {
                for (rv, t, obj) in &kind.events {
                    if *rv > from {
                        let _ = tx.send(line(t, obj));
                    }
                }
                kind.watchers.push(tx);
            }
            let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response");
        }
        if let Some(rest) = path.strip_prefix(LEASES) {
            return self.lease(method, rest, body);
        }
        respond(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("no route for {path}")),
        )
    }

    fn lease(&mut self, method: &Method, rest: &str, body: &[u8]) -> Response<Body> {
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name) = match parts.as_slice() {
            [ns, "leases"] => (*ns, None),
            [ns, "leases", name] => (*ns, Some(*name)),
            _ => return respond(StatusCode::NOT_FOUND, &status(404, "NotFound", rest)),
        };
        let parsed = serde_json::from_slice::<Value>(body);
        match (method.clone(), name) {
            (Method::GET, Some(name)) => match self.leases.get(&format!("{ns}/{name}")) {
                Some(l) => respond(StatusCode::OK, l),
                None => respond(
                    StatusCode::NOT_FOUND,
                    &status(
                        404,
                        "NotFound",
                        &format!("leases.coordination.k8s.io \"{name}\" not found"),
                    ),
                ),
            },
            (Method::POST, None) => {
                let Ok(mut lease) = parsed else {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        &status(400, "BadRequest", "not JSON"),
                    );
                };
                let key = format!(
                    "{ns}/{}",
                    lease["metadata"]["name"].as_str().unwrap_or_default()
                );
                if self.leases.contains_key(&key) {
                    self.lease_conflicts += 1;
                    return respond(
                        StatusCode::CONFLICT,
                        &status(409, "AlreadyExists", "already exists"),
                    );
                }
                let rv = self.next_rv();
                lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                lease["metadata"]["namespace"] = json!(ns);
                self.leases.insert(key, lease.clone());
                respond(StatusCode::CREATED, &lease)
            }
            (Method::PUT, Some(name)) => {
                let Ok(mut lease) = parsed else {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        &status(400, "BadRequest", "not JSON"),
                    );
                };
                let key = format!("{ns}/{name}");
                if std::mem::take(&mut self.lease_race) {
                    // Another writer updated the Lease between this client's GET and PUT.
                    let rv = self.next_rv();
                    if let Some(stored) = self.leases.get_mut(&key) {
                        stored["metadata"]["resourceVersion"] = json!(rv.to_string());
                    }
                }
                let Some(stored) = self.leases.get(&key) else {
                    return respond(StatusCode::NOT_FOUND, &status(404, "NotFound", name));
                };
                if lease["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    self.lease_conflicts += 1;
                    return respond(
                        StatusCode::CONFLICT,
                        &status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
                    );
                }
                let rv = self.next_rv();
                lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                self.leases.insert(key, lease.clone());
                respond(StatusCode::OK, &lease)
            }
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", rest),
            ),
        }
    }
}

/// The running server; stopped on drop.
pub struct ApiServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A change made inside one [`ApiServer::batch`] (all under one lock).
pub struct Batch<'a>(&'a mut Inner);

impl Batch<'_> {
    /// Creates or replaces an object (ADDED / MODIFIED).
    pub fn apply(&mut self, path: &'static str, mut obj: Value) {
        let rv = self.0.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = self.0.kinds.get_mut(path).expect("known kind");
        obj["apiVersion"] = json!(kind.api_version);
        obj["kind"] = json!(kind.kind);
        let key = key_of(&obj);
        let t = if kind.objects.insert(key, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.0.publish(path, t, obj);
    }

    /// Deletes an object by `<ns>/<name>` or `<name>` (DELETED).
    pub fn delete(&mut self, path: &'static str, key: &str) {
        let rv = self.0.next_rv();
        let kind = self.0.kinds.get_mut(path).expect("known kind");
        let mut obj = kind.objects.remove(key).expect("object to delete exists");
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.0.publish(path, "DELETED", obj);
    }

    /// Cuts every open watch: `abrupt` ends the connection without the last
    /// chunk (a dropped connection), otherwise the response ends cleanly.
    pub fn drop_watches(&mut self, abrupt: bool) {
        for kind in self.0.kinds.values_mut() {
            for w in kind.watchers.drain(..) {
                if abrupt {
                    let _ = w.send(Err(std::io::Error::other("connection dropped")));
                }
            }
        }
    }

    /// Forgets the event log: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&mut self) {
        let rv = self.0.rv;
        for kind in self.0.kinds.values_mut() {
            kind.compacted = rv;
            kind.events.clear();
        }
    }

    /// The next Lease PUT loses a race: another writer updates the Lease (new
    /// resourceVersion, same content) just before it, so it gets 409 Conflict.
    pub fn race_next_lease_write(&mut self) {
        self.0.lease_race = true;
    }

    pub fn resource_version(&self) -> u64 {
        self.0.rv
    }
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let mut inner = Inner::default();
        for (path, api_version, kind) in [
            (PODS, "v1", "Pod"),
            (NODES, "v1", "Node"),
            (SERVICES, "v1", "Service"),
            (NAMESPACES, "v1", "Namespace"),
            (SLICES, "discovery.k8s.io/v1", "EndpointSlice"),
        ] {
            inner.kinds.insert(
                path,
                Kind {
                    api_version,
                    kind,
                    objects: BTreeMap::new(),
                    events: Vec::new(),
                    compacted: 0,
                    watchers: Vec::new(),
                },
            );
        }
        let inner = Arc::new(Mutex::new(inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let path = parts.uri.path().to_string();
                            let query = parts.uri.query().unwrap_or_default().to_string();
                            let mut inner = shared.lock().expect("lock");
                            Ok::<_, Infallible>(inner.handle(&parts.method, &path, &query, &body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiServer { addr, inner, task }
    }

    /// Runs `f` under the server's lock: its changes are atomic for the clients.
    pub fn batch<R>(&self, f: impl FnOnce(&mut Batch<'_>) -> R) -> R {
        let mut inner = self.inner.lock().expect("lock");
        f(&mut Batch(&mut inner))
    }

    pub fn apply(&self, path: &'static str, obj: Value) {
        self.batch(|b| b.apply(path, obj));
    }

    pub fn delete(&self, path: &'static str, key: &str) {
        self.batch(|b| b.delete(path, key));
    }

    /// Every request so far: `"<METHOD> <path>?<query>"`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().expect("lock").requests.clone()
    }

    /// List requests (not watches) for a collection.
    pub fn lists(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("GET {path}?")) && !r.contains("watch=true"))
            .count()
    }

    /// Watch requests for a collection.
    pub fn watches(&self, path: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with(&format!("GET {path}?")) && r.contains("watch=true"))
            .collect()
    }

    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .expect("lock")
            .leases
            .get(&format!("{ns}/{name}"))
            .cloned()
    }

    pub fn lease_conflicts(&self) -> u64 {
        self.inner.lock().expect("lock").lease_conflicts
    }

    /// A kubeconfig file pointing at this server (plain http, no credentials).
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: scripted\n  context:\n    cluster: scripted\n    user: test\n\
             current-context: scripted\nusers:\n- name: test\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

/// Waits up to 20 s for `cond`.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The controller binary, killed (by PID) on drop.
pub struct Controller {
    pub child: Child,
}

impl Controller {
    pub fn start(kubeconfig: &Path, out: &Path, extra: &[&str]) -> Controller {
        let child = Command::new(env!("CARGO_BIN_EXE_dpumesh-controller"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--output-dir")
            .arg(out)
            .args(extra)
            .env("DPUMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dpumesh-controller");
        Controller { child }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for the controller")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub use dpumesh_controller::k8s::serve::proto::{
    inventory_client::InventoryClient, NodeInventory, WatchNodeRequest,
};

/// Opens `WatchNode(node)` on the controller's gRPC address, retrying the
/// connection while the controller starts. `Err` is the RPC's status.
pub async fn watch_node(
    addr: &str,
    node: &str,
) -> Result<tonic::Streaming<NodeInventory>, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    InventoryClient::new(channel)
        .watch_node(WatchNodeRequest {
            node: node.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The next message of a stream (20 s at most).
pub async fn next(
    stream: &mut tonic::Streaming<NodeInventory>,
) -> Result<NodeInventory, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
        Ok(Err(s)) => Err(s),
        Err(_) => panic!("no message within 20 s"),
    }
}

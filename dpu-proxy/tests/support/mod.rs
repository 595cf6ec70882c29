//! Test harness for the data path: real upstream HTTP servers (hyper), a
//! proxy configured from a NodeConfig, and a real HTTP client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use dpu_proxy::access_log::AccessLog;
use dpu_proxy::config_store::{ConfigStore, Offer};
use dpu_proxy::proxy::{
    ConfigSource, Direction, ListenerSpec, OriginalDst, Proxy, ProxySettings, UpstreamSource,
};
use dpumesh_api::NodeConfig;

/// How a test upstream answers.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// 200 with a JSON echo of the request.
    Echo,
    /// 503 for this share (0..=100) of requests, else Echo.
    FailPercent(u32),
    /// Echo after a delay.
    Delay(Duration),
    /// Echo body, then trailers `grpc-status: 0`, `x-trailer: yes`.
    Trailers,
}

/// A response body with optional trailers.
pub struct TestBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A real HTTP server (HTTP/1.1 and h2c) on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// The authority (`:authority` or Host) of every request received.
    pub authorities: Arc<std::sync::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str, behaviour: Behaviour) -> Upstream {
        Upstream::start_on("127.0.0.1", name, behaviour).await
    }

    /// [`Upstream::start`] on another loopback address (a pod's IP).
    pub async fn start_on(ip: &str, name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let authorities = Arc::new(std::sync::Mutex::new(Vec::new()));
        let name: Arc<str> = name.into();
        let h = hits.clone();
        let seen = authorities.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let hits = h.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        hits.fetch_add(1, Ordering::Relaxed);
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        if let Ok(mut s) = seen.lock() {
                            s.push(authority);
                        }
                        async move { Ok::<_, Infallible>(answer(&name, behaviour, peer, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            authorities,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn answer(
    name: &str,
    behaviour: Behaviour,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<TestBody> {
    match behaviour {
        Behaviour::FailPercent(p) if rand::rng().random_range(0..100) < p => {
            let mut r = Response::new(TestBody {
                data: Some(Bytes::from_static(b"failing on purpose")),
                trailers: None,
            });
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        Behaviour::Delay(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let echo = serde_json::json!({
        "server": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "peer": peer.to_string(),
    });
    let trailers = matches!(behaviour, Behaviour::Trailers).then(|| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().expect("static"));
        t.insert("x-trailer", "yes".parse().expect("static"));
        t
    });
    let mut r = Response::new(TestBody {
        data: Some(Bytes::from(echo.to_string())),
        trailers,
    });
    r.headers_mut().insert(
        "x-server",
        name.parse().expect("server name is a header value"),
    );
    if matches!(behaviour, Behaviour::Trailers) {
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("static"));
    }
    r
}

/// A proxy serving one outbound listener per VIP:port (the explicit-destination
/// test seam standing in for the dataplane's steering).
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    /// The config store the proxy serves from (offer new configs here).
    pub store: Arc<ConfigStore>,
    listeners: HashMap<SocketAddr, SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn settings() -> ProxySettings {
    ProxySettings {
        upstream_source: UpstreamSource::ClientIp,
        retry_backoff: Duration::from_millis(2),
        ..ProxySettings::default()
    }
}

impl TestProxy {
    pub async fn start(config: serde_json::Value, dsts: &[&str]) -> TestProxy {
        TestProxy::start_with(config, dsts, settings(), Direction::Outbound).await
    }

    pub async fn start_with(
        config: serde_json::Value,
        dsts: &[&str],
        settings: ProxySettings,
        direction: Direction,
    ) -> TestProxy {
        TestProxy::start_full(config, dsts, settings, direction, AccessLog::default()).await
    }

    pub async fn start_full(
        config: serde_json::Value,
        dsts: &[&str],
        settings: ProxySettings,
        direction: Direction,
        access_log: AccessLog,
    ) -> TestProxy {
        let store = ConfigStore::new();
        if !config.is_null() {
            let config: NodeConfig =
                serde_json::from_value(config).expect("test NodeConfig parses");
            let offer = store.offer(config);
            assert!(
                matches!(offer, Offer::Accepted { .. }),
                "test NodeConfig accepted: {offer:?}"
            );
        }
        let source: Arc<dyn ConfigSource> = store.clone();
        let proxy = Proxy::with_telemetry(
            source,
            settings,
            Arc::new(dpu_proxy::metrics::Metrics::default()),
            access_log,
        );
        let mut listeners = HashMap::new();
        let mut tasks = Vec::new();
        for d in dsts {
            let dst: SocketAddr = d.parse().expect("destination");
            let spec = ListenerSpec {
                bind: "127.0.0.1:0".parse().expect("static"),
                direction,
                original_dst: OriginalDst::Fixed(dst),
                transparent: false,
            };
            let l = Proxy::bind(&spec).expect("bind proxy listener");
            listeners.insert(dst, l.local_addr().expect("addr"));
            tasks.push(tokio::spawn(proxy.clone().serve(l, spec)));
        }
        TestProxy {
            proxy,
            store,
            listeners,
            tasks,
        }
    }

    /// The proxy listener standing in for connections to `dst`.
    pub fn addr(&self, dst: &str) -> SocketAddr {
        let dst: SocketAddr = dst.parse().expect("destination");
        self.listeners[&dst]
    }
}

/// A finished exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Which upstream answered (its `x-server` header).
    pub fn server(&self) -> String {
        self.headers
            .get("x-server")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    }

    /// A request header as the upstream saw it.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

/// A real HTTP client: one connection (HTTP/1.1, or h2c with prior knowledge)
/// from `src` (an address on loopback) to the proxy.
pub struct Client {
    h1: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
}

impl Client {
    pub async fn connect(proxy: SocketAddr, h2: bool) -> std::io::Result<Client> {
        Client::connect_from("127.0.0.1:0".parse().expect("static"), proxy, h2).await
    }

    pub async fn connect_from(
        src: SocketAddr,
        proxy: SocketAddr,
        h2: bool,
    ) -> std::io::Result<Client> {
        let s = TcpSocket::new_v4()?;
        s.bind(src)?;
        let stream = s.connect(proxy).await?;
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Client {
                h1: None,
                h2: Some(send),
            })
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Client {
                h1: Some(send),
                h2: None,
            })
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let resp = if let Some(h2) = &mut self.h2 {
            h2.ready().await?;
            h2.send_request(req).await?
        } else if let Some(h1) = &mut self.h1 {
            h1.ready().await?;
            h1.send_request(req).await?
        } else {
            unreachable!("a client has one connection")
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// GET `path` with Host `host` and extra headers.
    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let h2 = self.h2.is_some();
        let mut b = Request::builder().method("GET");
        b = if h2 {
            b.uri(format!("http://{host}{path}"))
        } else {
            b.uri(path).header("host", host)
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).expect("request");
        self.send(req).await.expect("exchange completes")
    }
}

/// One request on a fresh connection.
pub async fn get(proxy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut c = Client::connect(proxy, false)
        .await
        .expect("connect to proxy");
    c.get(host, path, headers).await
}

/// The NodeConfig skeleton: node, one client pod at 127.0.0.1 (the tests'
/// client address), plus `services`, `clusters`, `routeTables`.
pub fn node_config(
    services: serde_json::Value,
    clusters: serde_json::Value,
    route_tables: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": "127.0.0.0/8",
                 "dpuMgmtAddr": "192.168.100.2:15080"},
        "pods": [{"uid": "u1", "name": "client", "namespace": "default", "ips": ["127.0.0.1"],
                  "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1",
                  "labels": {"app": "client"}}],
        "services": services,
        "clusters": clusters,
        "routeTables": route_tables,
    })
}

/// A service `<name>.default.svc.cluster.local` at `vip`:`port` whose
/// endpoints are the given upstreams (each with labels), port name `port_name`.
pub fn service(
    name: &str,
    vip: &str,
    port: u16,
    port_name: &str,
    route_table: Option<&str>,
    endpoints: &[(&Upstream, serde_json::Value)],
) -> serde_json::Value {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(u, labels)| {
            serde_json::json!({
                "address": u.addr.ip().to_string(),
                "ports": {port_name: u.addr.port()},
                "labels": labels,
            })
        })
        .collect();
    let mut p = serde_json::json!({"port": port, "name": port_name});
    if let Some(t) = route_table {
        p["routeTable"] = t.into();
    }
    serde_json::json!({
        "hostname": format!("{name}.default.svc.cluster.local"),
        "namespace": "default",
        "vips": [vip],
        "ports": [p],
        "endpoints": eps,
    })
}

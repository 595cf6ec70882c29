//! One HTTP request from inside a netns, admin pages, Prometheus sums.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dpumesh_sim::Netns;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::runtime;

/// One request from inside `ns` to `to` on a new connection: HTTP/1.1 with a
/// `host` header, or with `h2` h2c with prior knowledge (`http://<host><path>`).
/// (status, body), or `Err` describing a failed connect (5 s) or exchange
/// (reset, closed, 10 s timeout).
pub fn try_request(
    ns: &Netns,
    to: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    h2: bool,
) -> Result<(StatusCode, String), String> {
    let (host, path) = (host.to_string(), path.to_string());
    ns.run(move || {
        runtime().block_on(async move {
            let stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
                    .await
                    .map_err(|_| format!("connect to {to} timed out"))?
                    .map_err(|e| format!("connect to {to}: {e}"))?;
            let io = TokioIo::new(stream);
            let what = format!("{method} {to}{path}");
            let req = if h2 {
                Request::builder()
                    .method(method)
                    .uri(format!("http://{host}{path}"))
            } else {
                Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("host", &host)
            }
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{what}: {e}"))?;
            let exchange = async {
                let resp = if h2 {
                    let (mut send, conn) =
                        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                            .handshake(io)
                            .await?;
                    tokio::spawn(conn);
                    send.send_request(req).await?
                } else {
                    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(conn);
                    send.send_request(req).await?
                };
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&body).into_owned()))
            };
            tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .map_err(|_| format!("{what} timed out"))?
                .map_err(|e| format!("{what}: {e}"))
        })
    })
    .expect("netns")
}

/// [`try_request`], panicking with the error.
pub fn request(
    ns: &Netns,
    to: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    h2: bool,
) -> (StatusCode, String) {
    try_request(ns, to, host, method, path, h2).unwrap_or_else(|e| panic!("{e}"))
}

/// A GET with [`try_request`].
pub fn try_get(
    ns: &Netns,
    to: SocketAddr,
    host: &str,
    path: &str,
    h2: bool,
) -> Result<(StatusCode, String), String> {
    try_request(ns, to, host, Method::GET, path, h2)
}

/// A GET with [`request`] (panics if the exchange fails).
pub fn get(ns: &Netns, to: SocketAddr, host: &str, path: &str, h2: bool) -> (StatusCode, String) {
    request(ns, to, host, Method::GET, path, h2)
}

/// `GET path` on an admin port on 127.0.0.1 inside `ns` (dpu-proxy's 15000,
/// the dataplane's 15091, Envoy's); the body, or a panic unless 200.
pub fn admin(ns: &Netns, port: u16, path: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = get(ns, addr, "admin", path, false);
    assert_eq!(status, StatusCode::OK, "admin {path}: {body}");
    body
}

/// Sum of the values of the Prometheus series of metric `name` (text format)
/// whose labels include all of `want`.
pub fn counter_sum(metrics: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`counter_sum`] of `istio_requests_total`.
pub fn requests_total(metrics: &str, want: &[(&str, &str)]) -> f64 {
    counter_sum(metrics, "istio_requests_total", want)
}

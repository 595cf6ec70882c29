//! The admin HTTP port (15091): `/metrics` (Prometheus text, see
//! metrics.rs), `/ready` (200 when ready, else 503 with the reason) and
//! `/pods` (the registered pods with their counters, JSON). A small hyper
//! server on the control runtime; every answer is computed from the
//! registry and the backend at request time.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::control::{self, ControlState};

/// Default admin address (every address of the DPU netns, port 15091).
pub const DEFAULT_ADDR: &str = "0.0.0.0:15091";

/// Answers one admin request.
pub fn answer(state: &ControlState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(state),
        ),
        "/ready" => {
            let st = control::status(state);
            if st.ready {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", st.reason),
                )
            }
        }
        "/pods" => reply(StatusCode::OK, "application/json", pods_json(state)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found (try /metrics, /ready, /pods)\n".into(),
        ),
    }
}

fn pods_json(state: &ControlState) -> String {
    let backend = state.registry.backend();
    let pods: Vec<_> = state
        .registry
        .pods()
        .iter()
        .map(|p| {
            let stats = backend.pod_stats(&p.uid).map(|s| {
                json!({
                    "packets_out": s.packets_out,
                    "bytes_out": s.bytes_out,
                    "packets_in": s.packets_in,
                    "bytes_in": s.bytes_in,
                    "steered_outbound": s.steered_outbound,
                    "steered_inbound": s.steered_inbound,
                    "to_proxy_socket": s.to_proxy_socket,
                    "bypassed": s.bypassed,
                    "arp_replies": s.arp_replies,
                    "drops": s.drops.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                })
            });
            json!({
                "uid": p.uid,
                "name": p.name,
                "namespace": p.namespace,
                "representor": p.representor,
                "vf_index": p.vf_index,
                "ips": p.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "mac": p.mac.to_string(),
                "meshed": p.meshed,
                "counters": stats,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&json!({ "pods": pods }))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves the admin port until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: ControlState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = answer(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

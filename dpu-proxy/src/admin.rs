//! The admin HTTP port (15000): `/metrics` (Prometheus/OpenMetrics text),
//! `/ready`, `/config_dump`, `/stats`. A small hyper server of its own that
//! runs on the control runtime, never on the data path's.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config_store::ConfigStore;
use crate::proxy::{ConfigSource, Proxy};

/// Default admin address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:15000";

/// What the admin endpoints answer from.
pub struct Admin {
    pub store: Arc<ConfigStore>,
    pub proxy: Arc<Proxy>,
}

impl Admin {
    /// Answers one admin request.
    pub fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        match path {
            "/metrics" | "/stats/prometheus" => {
                let mut out = String::with_capacity(64 * 1024);
                if self.proxy.metrics.encode(&mut out).is_err() {
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "encoding failed\n",
                    );
                }
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                )
            }
            "/ready" | "/healthz/ready" => match self.store.serving_version() {
                0 => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no config pushed yet\n",
                ),
                v => reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: config version {v}\n"),
                ),
            },
            "/config_dump" => {
                let body = match self.store.current() {
                    Some(s) => serde_json::json!({"version": s.version, "config": &s.config}),
                    None => serde_json::json!({"version": 0, "config": null}),
                };
                reply(StatusCode::OK, "application/json", body.to_string())
            }
            "/stats" => reply(StatusCode::OK, "application/json", self.stats().to_string()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "endpoints: /metrics /ready /config_dump /stats\n",
            ),
        }
    }

    /// Internals: connections, config version, pool/outlier state per
    /// cluster, counters per pod.
    pub fn stats(&self) -> serde_json::Value {
        let (accepted, rejected) = self.store.counters();
        let mut proxy_stats = self.proxy.stats.to_json();
        proxy_stats["hbone_upstream"] = self.proxy.hbone_upstream().into();
        let mut v = serde_json::json!({
            "config_version": self.store.serving_version(),
            "config_pushes_accepted": accepted,
            "config_pushes_rejected": rejected,
            "access_log_dropped": self.proxy.access_log.dropped(),
            "proxy": proxy_stats,
        });
        let Some(cfg) = self.store.snapshot() else {
            return v;
        };
        let now = crate::compiled::state::now_ms();
        let pods: Vec<_> = cfg
            .pods()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "namespace": p.namespace,
                    "uid": p.uid,
                    "workload": p.workload.workload,
                    "counters": p.counters.to_json(),
                })
            })
            .collect();
        let mut clusters: Vec<_> = cfg
            .clusters()
            .map(|c| {
                let g = |a: &std::sync::atomic::AtomicU32| a.load(Ordering::Relaxed);
                let endpoints: Vec<_> = c
                    .priorities
                    .iter()
                    .enumerate()
                    .flat_map(|(level, p)| p.endpoints.iter().map(move |e| (level, e)))
                    .map(|(level, e)| {
                        serde_json::json!({
                            "address": e.addr.to_string(),
                            "priority": level,
                            "active_requests": e.active(),
                            "ejected": e.outlier.is_ejected(now),
                            "ejections": e.outlier.ejections.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": c.name,
                    "connections": g(&c.state.connections),
                    "pending_requests": g(&c.state.pending),
                    "active_requests": g(&c.state.requests),
                    "active_retries": g(&c.state.retries),
                    "retries_total": c.state.retries_total.load(Ordering::Relaxed),
                    "overflows": c.state.overflows.load(Ordering::Relaxed),
                    "tls_handshake_failures": c.state.tls_handshake_failures.load(Ordering::Relaxed),
                    "ejections_total": c.state.ejections_total.load(Ordering::Relaxed),
                    "endpoints": endpoints,
                })
            })
            .collect();
        clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        v["pods"] = pods.into();
        v["clusters"] = clusters.into();
        v
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves the admin port until `shutdown` completes.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
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
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = admin.answer(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

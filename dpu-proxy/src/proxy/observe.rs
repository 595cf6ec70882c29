//! What the data path reports about each request and TCP connection: the
//! Istio metrics (through the pair caches, see `metrics.rs`), the per-pod
//! counters and the JSON access log line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Request, Version};

use super::{ConnCtx, Direction, Flags, Proxy};
use crate::compiled::{ClusterRt, CompiledConfig, EndpointRt};
use crate::metrics::{
    rfc3339_millis, PairMetrics, PeerLabels, Reporter, RequestKey, RequestProtocol, SecurityPolicy,
    TcpKey, WorkloadLabels,
};

/// Filled in while a request is served: what it ran into and where it went.
#[derive(Default)]
pub(crate) struct Trail {
    pub flags: Flags,
    pub cfg: Option<Arc<CompiledConfig>>,
    pub cluster: Option<Arc<ClusterRt>>,
    pub endpoint: Option<Arc<EndpointRt>>,
    /// Upstream address when not an endpoint of a cluster (passthrough, inbound).
    pub upstream: Option<SocketAddr>,
    /// Route name, kept only when the access log is on.
    pub route: Option<String>,
}

/// The request fields of an access log line (captured only when logging).
pub(crate) struct RequestHead {
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    user_agent: Option<String>,
    request_id: Option<String>,
    traceparent: Option<String>,
}

impl RequestHead {
    pub fn capture<B>(req: &Request<B>) -> RequestHead {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        RequestHead {
            method: req.method().as_str().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| get("host"))
                .unwrap_or_default(),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: get("user-agent"),
            request_id: get("x-request-id"),
            traceparent: get("traceparent"),
        }
    }
}

/// Approximate wire size of a header block (name: value\r\n).
pub(crate) fn headers_size(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// The gRPC status in a header block (trailers, or a trailers-only response).
pub(crate) fn grpc_status(h: &HeaderMap) -> Option<u16> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Everything needed to report a request once its response has been sent.
pub(crate) struct Completion {
    pub proxy: Arc<Proxy>,
    pub ctx: ConnCtx,
    pub start: Instant,
    pub started_at: SystemTime,
    pub trail: Trail,
    pub head: Option<RequestHead>,
    pub request_bytes: u64,
    pub response_head_bytes: u64,
    pub status: u16,
    pub grpc: bool,
    pub grpc_status: Option<u16>,
}

impl Completion {
    /// Reports the request: `body_bytes` of response body were sent;
    /// `complete` is false when the downstream went away first (flag DC).
    pub fn finish(mut self, body_bytes: u64, grpc_trailer: Option<u16>, complete: bool) {
        if !complete {
            self.trail
                .flags
                .set(super::Flag::DownstreamConnectionTermination);
        }
        let duration = self.start.elapsed();
        let response_bytes = self.response_head_bytes + body_bytes;
        let grpc_status = grpc_trailer.or(self.grpc_status);
        let p = &self.proxy;
        let security = security_policy(&self.ctx);
        let key = RequestKey {
            protocol: if self.grpc {
                RequestProtocol::Grpc
            } else {
                RequestProtocol::Http
            },
            response_code: self.status,
            grpc_status: if self.grpc { grpc_status } else { None },
            flags: self.trail.flags,
            security,
        };
        if let Some(cfg) = &self.trail.cfg {
            let pair = pair_for(
                p,
                cfg,
                self.ctx,
                self.trail.cluster.as_deref(),
                self.trail.endpoint.as_deref(),
            );
            pair.record_request(
                &p.metrics,
                key,
                duration,
                self.request_bytes,
                response_bytes,
            );
            let pod_ip = match self.ctx.direction {
                Direction::Outbound => self.ctx.peer.ip(),
                Direction::Inbound => self.ctx.dst.ip(),
            };
            if let Some(pod) = cfg.pod_by_ip(pod_ip) {
                let c = &pod.counters;
                match self.ctx.direction {
                    Direction::Outbound => {
                        c.requests_out.fetch_add(1, Ordering::Relaxed);
                        c.bytes_out.fetch_add(self.request_bytes, Ordering::Relaxed);
                        c.bytes_in.fetch_add(response_bytes, Ordering::Relaxed);
                    }
                    Direction::Inbound => {
                        c.requests_in.fetch_add(1, Ordering::Relaxed);
                        c.bytes_in.fetch_add(self.request_bytes, Ordering::Relaxed);
                        c.bytes_out.fetch_add(response_bytes, Ordering::Relaxed);
                    }
                }
                if self.status >= 500 {
                    c.errors_5xx.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(head) = self.head.take() {
            p.access_log
                .write(self.log_line(head, duration, response_bytes));
        }
    }

    fn log_line(&self, head: RequestHead, duration: Duration, response_bytes: u64) -> String {
        let t = &self.trail;
        let upstream_host = t
            .endpoint
            .as_ref()
            .map(|e| e.addr)
            .or(t.upstream)
            .map(|a| a.to_string());
        let unix_ms = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let source = self.cfg_pod_name();
        serde_json::json!({
            "start_time": rfc3339_millis(unix_ms),
            "method": head.method,
            "path": head.path,
            "protocol": head.protocol,
            "response_code": self.status,
            "response_flags": t.flags.to_string(),
            "bytes_received": self.request_bytes,
            "bytes_sent": response_bytes,
            "duration": duration.as_millis() as u64,
            "upstream_host": upstream_host,
            "upstream_cluster": t.cluster.as_ref().map(|c| c.name.as_str()),
            "route_name": t.route,
            "authority": head.authority,
            "user_agent": head.user_agent,
            "x_request_id": head.request_id,
            "traceparent": head.traceparent,
            "downstream_remote_address": self.ctx.peer.to_string(),
            "downstream_local_address": self.ctx.dst.to_string(),
            "direction": match self.ctx.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            },
            "pod": source,
        })
        .to_string()
    }

    /// "namespace/name" of the local pod the request belongs to.
    fn cfg_pod_name(&self) -> Option<String> {
        let cfg = self.trail.cfg.as_ref()?;
        let ip = match self.ctx.direction {
            Direction::Outbound => self.ctx.peer.ip(),
            Direction::Inbound => self.ctx.dst.ip(),
        };
        cfg.pod_by_ip(ip)
            .map(|p| format!("{}/{}", p.namespace, p.name))
    }
}

/// `connection_security_policy`: `unknown` on the source side (as Istio),
/// `mutual_tls` inbound over HBONE, `none` for inbound plaintext.
fn security_policy(ctx: &ConnCtx) -> SecurityPolicy {
    match (ctx.direction, ctx.mtls) {
        (Direction::Outbound, _) => SecurityPolicy::Unknown,
        (Direction::Inbound, true) => SecurityPolicy::MutualTls,
        (Direction::Inbound, false) => SecurityPolicy::None,
    }
}

/// The metrics of the (source, destination) pair of a request or connection.
pub(crate) fn pair_for(
    proxy: &Proxy,
    cfg: &CompiledConfig,
    ctx: ConnCtx,
    cluster: Option<&ClusterRt>,
    endpoint: Option<&EndpointRt>,
) -> Arc<PairMetrics> {
    let m = &proxy.metrics;
    let unknown = || Arc::new(WorkloadLabels::unknown());
    // The service: the cluster's, else the one the destination belongs to.
    let svc = cfg.service_for(ctx.dst);
    let (svc_index, host, svc_ns) = match (cluster, svc) {
        (Some(c), _) => (c.service_index, c.hostname.as_str(), c.namespace.as_str()),
        (None, Some(s)) => (s.service_index, s.hostname.as_str(), s.namespace.as_str()),
        (None, None) => (u32::MAX, "PassthroughCluster", "unknown"),
    };
    let make = |reporter, source: Arc<WorkloadLabels>, destination: Arc<WorkloadLabels>| {
        let name = host.split('.').next().unwrap_or(host).to_string();
        PeerLabels {
            reporter,
            source,
            destination,
            destination_service: host.to_string(),
            destination_service_name: name,
            destination_service_namespace: svc_ns.to_string(),
            destination_cluster: m.cluster_id.clone(),
            source_cluster: m.cluster_id.clone(),
        }
    };
    match ctx.direction {
        Direction::Outbound => {
            let dst = endpoint
                .map(|e| (e.workload_id, e.workload.clone()))
                .or_else(|| cfg.workload_by_ip(ctx.dst.ip()).cloned());
            let dst_id = dst.as_ref().map_or(u32::MAX, |d| d.0);
            let key = (svc_index as u64) << 32 | dst_id as u64;
            let Some(pod) = cfg.pod_by_ip(ctx.peer.ip()) else {
                return m.unattributed.get_or_insert(key, || {
                    make(
                        Reporter::Source,
                        unknown(),
                        dst.map_or_else(unknown, |d| d.1),
                    )
                });
            };
            pod.outbound_pairs.get_or_insert(key, || {
                make(
                    Reporter::Source,
                    pod.workload.clone(),
                    dst.map_or_else(unknown, |d| d.1),
                )
            })
        }
        Direction::Inbound => {
            let mut src = cfg.workload_by_ip(ctx.peer.ip()).cloned();
            if let Some(principal) = ctx.principal {
                // Over mTLS the source is who the peer proved to be.
                if src.as_ref().is_none_or(|s| s.1.principal != principal) {
                    src = Some(peer_workload(principal));
                }
            }
            let src_id = src.as_ref().map_or(u32::MAX, |s| s.0);
            let key = (svc_index as u64) << 32 | src_id as u64;
            let Some(pod) = cfg.pod_by_ip(ctx.dst.ip()) else {
                return m.unattributed.get_or_insert(key ^ (1 << 63), || {
                    make(
                        Reporter::Destination,
                        src.map_or_else(unknown, |s| s.1),
                        unknown(),
                    )
                });
            };
            pod.inbound_pairs.get_or_insert(key, || {
                make(
                    Reporter::Destination,
                    src.map_or_else(unknown, |s| s.1),
                    pod.workload.clone(),
                )
            })
        }
    }
}

/// Labels of a peer known only by its verified SPIFFE ID (namespace from
/// the ID, workload unknown), with an id outside the config's interned ids.
fn peer_workload(principal: &str) -> (u32, Arc<WorkloadLabels>) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    principal.hash(&mut h);
    let id = 0x8000_0000 | (h.finish() as u32 & 0x7fff_fffe);
    let ns = principal
        .split("/ns/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("unknown");
    let w = WorkloadLabels::derive(None, ns, principal, &Default::default());
    (id, Arc::new(w))
}

/// TCP connection reporting: opened now, closed (with bytes) at the end.
pub(crate) struct TcpReport {
    pair: Arc<PairMetrics>,
    key: TcpKey,
}

impl TcpReport {
    pub fn open(
        proxy: &Proxy,
        cfg: &CompiledConfig,
        ctx: ConnCtx,
        cluster: Option<&ClusterRt>,
        endpoint: Option<&EndpointRt>,
        flags: Flags,
    ) -> TcpReport {
        let pair = pair_for(proxy, cfg, ctx, cluster, endpoint);
        let key = TcpKey {
            flags,
            security: security_policy(&ctx),
        };
        pair.tcp_opened(&proxy.metrics, key);
        TcpReport { pair, key }
    }

    /// `sent` = bytes to the downstream, `received` = from it.
    pub fn close(self, proxy: &Proxy, sent: u64, received: u64) {
        self.pair
            .tcp_closed(&proxy.metrics, self.key, sent, received);
    }
}

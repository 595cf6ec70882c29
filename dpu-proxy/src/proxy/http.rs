//! HTTP proxying: serve a downstream connection (HTTP/1.1 or h2c, detected by
//! hyper-util's auto server), route each request, forward it with retries,
//! timeouts and fault injection, and stream the response back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use dpumesh_api::config::{HashKey, LbKind, Protocol};

use super::upstream::{PoolKey, ReqBody, UpstreamBody, UpstreamError};
use super::{ConnCtx, Direction, Flag, Flags, Proxy, UpstreamSource};
use crate::compiled::{
    ActionRt, ActiveRequest, ClusterRt, ForwardRt, RedirectRt, RequestView, RetryRt, RouteRt,
    StrMatcher,
};
use crate::lb;

/// The body of a response to the downstream client.
pub enum RespBody {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Local(b) => b.is_none(),
            RespBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream(b) => b.size_hint(),
        }
    }
}

/// A response the proxy makes itself. The body names the flags, like
/// Envoy's local replies name their cause.
fn local_reply(status: StatusCode, what: &str, flags: Flags) -> Response<RespBody> {
    let body = Bytes::from(format!("{what} (response_flags={flags})\n"));
    let mut r = Response::new(RespBody::Local(Some(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(c) = h.get(header::CONNECTION) {
        // Headers the sender named as hop-by-hop too.
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

fn request_id() -> HeaderValue {
    let a = lb::random_u64();
    let b = lb::random_u64();
    // UUID v4 layout.
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// What of the request body the attempts can use.
enum Payload {
    /// Read completely: every attempt gets a copy.
    Replayable {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Streamed: one attempt only.
    Once(Option<ReqBody>),
}

impl Payload {
    fn replayable(&self) -> bool {
        matches!(self, Payload::Replayable { .. })
    }

    fn take(&mut self) -> ReqBody {
        match self {
            Payload::Replayable { data, trailers } => ReqBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            },
            Payload::Once(b) => b.take().unwrap_or_else(ReqBody::empty),
        }
    }
}

/// Reads the body up to `limit` bytes so it can be replayed; a larger body is
/// streamed (frames read so far first) and can be sent once only.
async fn buffer_body(mut body: Incoming, limit: usize) -> Result<Payload, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Payload::Replayable {
            data: None,
            trailers: None,
        });
    }
    let mut frames = VecDeque::new();
    let mut size = 0;
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            size += d.len();
            data.extend_from_slice(d);
        } else if let Some(t) = frame.trailers_ref() {
            trailers = Some(t.clone());
        }
        frames.push_back(frame);
        if size > limit {
            return Ok(Payload::Once(Some(ReqBody::Prefixed {
                prefix: frames,
                rest: body,
            })));
        }
    }
    Ok(Payload::Replayable {
        data: Some(data.freeze()),
        trailers,
    })
}

impl Proxy {
    pub(super) async fn serve_http(self: Arc<Self>, stream: TcpStream, ctx: ConnCtx) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .max_headers(self.settings.max_headers);
        builder
            .http2()
            .max_header_list_size(self.settings.max_header_bytes as u32);
        let proxy = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(ctx, req).await) }
        });
        if let Err(e) = builder
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            // Malformed requests end here after hyper answered 400/431.
            tracing::debug!(peer = %ctx.peer, error = %e, "downstream connection ended with an error");
        }
    }

    async fn handle(self: Arc<Self>, ctx: ConnCtx, req: Request<Incoming>) -> Response<RespBody> {
        self.stats.http_requests.fetch_add(1, Ordering::Relaxed);
        let mut flags = Flags::default();
        let version = req.version();
        let mut resp = self.route_request(ctx, req, &mut flags).await;
        self.stats.count_flags(flags);
        strip_hop_by_hop(resp.headers_mut());
        *resp.version_mut() = version;
        resp
    }

    async fn route_request(
        &self,
        ctx: ConnCtx,
        req: Request<Incoming>,
        flags: &mut Flags,
    ) -> Response<RespBody> {
        let Some(cfg) = self.snapshot() else {
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no config", *flags);
        };
        let (mut parts, body) = req.into_parts();
        let downstream_h2 = parts.version == Version::HTTP_2;
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        strip_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(&X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID.clone(), request_id());
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();

        let svc = cfg.service_for(ctx.dst);
        if ctx.direction == Direction::Inbound || svc.is_none() {
            // Inbound: deliver to the pod. Outbound to no known service: Istio's
            // PassthroughCluster (ALLOW_ANY), to the original destination.
            let h2 = upstream_h2(svc.and_then(|s| s.protocol), downstream_h2);
            let msg = Message {
                parts,
                authority,
                path_and_query,
                h2,
            };
            return self
                .passthrough(
                    ctx,
                    msg,
                    Payload::Once(Some(ReqBody::Streaming(body))),
                    flags,
                )
                .await;
        }
        let Some(svc) = svc else {
            return local_reply(StatusCode::NOT_FOUND, "no route", *flags);
        };
        let pod = cfg.pod_by_ip(ctx.peer.ip()).map(|p| &**p);
        let table = cfg.route_table(pod, svc);
        let vhost = table.select(&authority);
        let found = vhost.and_then(|vh| {
            let view = RequestView {
                method: &parts.method,
                path_and_query: &path_and_query,
                authority: &authority,
                headers: &parts.headers,
            };
            vh.routes
                .iter()
                .find_map(|r| r.match_request(&view).map(|m| (r, m)))
        });
        let Some((route, matched)) = found else {
            if vhost.is_none() && !cfg.is_vip(ctx.dst) {
                // A pod IP dialled with a host no virtual host knows: passthrough.
                let h2 = upstream_h2(svc.protocol, downstream_h2);
                let msg = Message {
                    parts,
                    authority,
                    path_and_query,
                    h2,
                };
                return self
                    .passthrough(
                        ctx,
                        msg,
                        Payload::Once(Some(ReqBody::Streaming(body))),
                        flags,
                    )
                    .await;
            }
            flags.set(Flag::NoRoute);
            return local_reply(StatusCode::NOT_FOUND, "no route", *flags);
        };

        if let Some(fault) = &route.fault {
            if let Some((delay, pct)) = fault.delay {
                if lb::chance(pct) {
                    flags.set(Flag::DelayInjected);
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((status, pct)) = fault.abort {
                if lb::chance(pct) {
                    flags.set(Flag::FaultInjected);
                    let mut r = local_reply(status, "fault filter abort", *flags);
                    route.headers.apply_response(r.headers_mut());
                    return r;
                }
            }
        }

        match &route.action {
            ActionRt::DirectResponse { status, body } => {
                let mut r = Response::new(RespBody::Local(Some(body.clone())));
                *r.status_mut() = *status;
                route.headers.apply_response(r.headers_mut());
                r
            }
            ActionRt::Redirect(rd) => {
                let mut r = redirect(rd, &authority, &path_and_query);
                route.headers.apply_response(r.headers_mut());
                r
            }
            ActionRt::Forward(fwd) => {
                let msg = Message {
                    parts,
                    authority,
                    path_and_query,
                    h2: downstream_h2,
                };
                let Some(t) = route.timeout else {
                    return self
                        .forward(ctx, route, matched, fwd, msg, body, flags)
                        .await;
                };
                let result = {
                    let fut = self.forward(ctx, route, matched, fwd, msg, body, flags);
                    tokio::time::timeout(t, fut).await
                };
                match result {
                    Ok(r) => r,
                    Err(_) => {
                        flags.set(Flag::UpstreamRequestTimeout);
                        local_reply(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream request timeout",
                            *flags,
                        )
                    }
                }
            }
        }
    }
}

/// A request on its way upstream.
struct Message {
    parts: http::request::Parts,
    authority: String,
    path_and_query: String,
    /// Speak HTTP/2 to the upstream.
    h2: bool,
}

impl Message {
    /// The request for one attempt: origin-form + Host for HTTP/1.1,
    /// absolute URI (→ `:authority`) for HTTP/2.
    fn build(&self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.headers_mut() = self.parts.headers.clone();
        let uri = if self.h2 {
            req.headers_mut().remove(header::HOST);
            Uri::builder()
                .scheme("http")
                .authority(self.authority.as_str())
                .path_and_query(self.path_and_query.as_str())
                .build()
        } else {
            if let Ok(v) = HeaderValue::from_str(&self.authority) {
                req.headers_mut().insert(header::HOST, v);
            }
            Uri::builder()
                .path_and_query(self.path_and_query.as_str())
                .build()
        };
        // The authority and path came from a parsed request or the config.
        *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
        req
    }
}

/// HTTP/2 upstream for h2/gRPC ports, HTTP/1.1 for HTTP ports, the
/// downstream's protocol when undeclared (Istio's USE_DOWNSTREAM_PROTOCOL).
fn upstream_h2(declared: Option<Protocol>, downstream_h2: bool) -> bool {
    match declared {
        Some(Protocol::Http2 | Protocol::Grpc) => true,
        Some(Protocol::Http | Protocol::GrpcWeb) => false,
        _ => downstream_h2,
    }
}

fn redirect(rd: &RedirectRt, authority: &str, path_and_query: &str) -> Response<RespBody> {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let host = rd.authority.as_deref().unwrap_or(authority);
    let path = match &rd.uri {
        // Envoy keeps the original query unless the new path brings one.
        Some(u) if u.contains('?') => u.clone(),
        Some(u) => match path_and_query.split_once('?') {
            Some((_, q)) => format!("{u}?{q}"),
            None => u.clone(),
        },
        None => path_and_query.to_string(),
    };
    let mut r = Response::new(RespBody::Local(None));
    *r.status_mut() = rd.code;
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn rewrite_path(route: &RouteRt, matched: Option<usize>, new: &str, pq: &str) -> String {
    let prefix = matched
        .and_then(|i| route.matches.get(i))
        .and_then(|m| match &m.path {
            Some(StrMatcher::Prefix(p)) => Some(p.as_str()),
            _ => None,
        });
    match prefix {
        Some(p) => format!("{new}{}", pq.get(p.len()..).unwrap_or_default()),
        None => match pq.split_once('?') {
            Some((_, q)) => format!("{new}?{q}"),
            None => new.to_string(),
        },
    }
}

fn hash_for(cluster: &ClusterRt, headers: &HeaderMap, peer: std::net::SocketAddr) -> Option<u64> {
    if cluster.lb_kind != LbKind::ConsistentHash {
        return None;
    }
    match cluster.hash_key.as_ref()? {
        HashKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| lb::stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| lb::stable_hash(v))
            }),
        HashKey::SourceIp => Some(lb::stable_hash(&peer.ip())),
    }
}

/// Whether an upstream response is one `retry` retries.
fn retriable_response<B>(retry: &RetryRt, resp: &Response<B>) -> bool {
    let s = resp.status().as_u16();
    let on = &retry.on;
    (on.on_5xx && s >= 500)
        || (on.gateway_error && matches!(s, 502..=504))
        || on.status_codes.contains(&s)
        || (!on.grpc_codes.is_empty()
            && resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|c| on.grpc_codes.contains(&c)))
}

fn retriable_error(retry: &RetryRt, e: &UpstreamError) -> bool {
    let on = &retry.on;
    match e {
        UpstreamError::Connect(_) => {
            on.connect_failure || on.on_5xx || on.gateway_error || on.reset
        }
        UpstreamError::Reset(_) => {
            on.reset || on.on_5xx || (on.refused_stream && e.is_refused_stream())
        }
    }
}

impl Proxy {
    fn source_ip(&self, ctx: ConnCtx) -> Option<std::net::IpAddr> {
        match self.settings.upstream_source {
            UpstreamSource::ClientIp => Some(ctx.peer.ip()),
            UpstreamSource::Kernel => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        ctx: ConnCtx,
        route: &RouteRt,
        matched: Option<usize>,
        fwd: &ForwardRt,
        mut msg: Message,
        body: Incoming,
        flags: &mut Flags,
    ) -> Response<RespBody> {
        let dest = fwd.pick();
        route.headers.apply_request(&mut msg.parts.headers);
        dest.headers.apply_request(&mut msg.parts.headers);
        if let Some(uri) = &fwd.rewrite_uri {
            msg.path_and_query = rewrite_path(route, matched, uri, &msg.path_and_query);
        }
        if let Some(a) = &fwd.rewrite_authority {
            msg.authority = a.to_str().unwrap_or_default().to_string();
        }
        let cluster = &dest.cluster;
        msg.h2 = upstream_h2(cluster.protocol, msg.h2);
        let hash = hash_for(cluster, &msg.parts.headers, ctx.peer);
        let retry = route.retries.as_ref().filter(|r| r.attempts > 0);
        let payload = if retry.is_some() {
            match buffer_body(body, self.settings.retry_buffer_bytes).await {
                Ok(p) => p,
                Err(_) => {
                    flags.set(Flag::DownstreamConnectionTermination);
                    return local_reply(StatusCode::BAD_REQUEST, "request body failed", *flags);
                }
            }
        } else {
            Payload::Once(Some(ReqBody::Streaming(body)))
        };
        let mut resp = self
            .attempts(ctx, cluster, hash, &msg, payload, retry, flags)
            .await;
        dest.headers.apply_response(resp.headers_mut());
        route.headers.apply_response(resp.headers_mut());
        resp
    }

    /// Tries the request on endpoints of `cluster` (a fresh pick each time)
    /// until a response that need not be retried, or the retries run out.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        ctx: ConnCtx,
        cluster: &ClusterRt,
        hash: Option<u64>,
        msg: &Message,
        mut payload: Payload,
        retry: Option<&RetryRt>,
        flags: &mut Flags,
    ) -> Response<RespBody> {
        let tries = match retry {
            Some(r) if payload.replayable() => 1 + r.attempts,
            _ => 1,
        };
        let src = self.source_ip(ctx);
        for n in 0..tries {
            if n > 0 {
                tokio::time::sleep(self.backoff(n)).await;
            }
            let Some(ep) = cluster.pick(hash) else {
                flags.set(Flag::NoHealthyUpstream);
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    *flags,
                );
            };
            let key = PoolKey {
                src,
                dst: ep.addr,
                h2: msg.h2,
            };
            let req = msg.build(payload.take());
            let send = self.pool.send(
                key,
                req,
                cluster.connect_timeout,
                Some(ActiveRequest::new(ep.clone())),
            );
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let outcome = match per_try {
                None => Some(send.await),
                Some(t) => tokio::time::timeout(t, send).await.ok(),
            };
            let last = n + 1 == tries;
            match outcome {
                Some(Ok(resp)) => {
                    if let Some(r) = retry {
                        if retriable_response(r, &resp) {
                            if !last {
                                continue;
                            }
                            flags.set(Flag::UpstreamRetryLimitExceeded);
                        }
                    }
                    return resp.map(RespBody::Upstream);
                }
                Some(Err(e)) => {
                    let retriable = retry.is_some_and(|r| retriable_error(r, &e));
                    if retriable && !last {
                        continue;
                    }
                    if retriable {
                        flags.set(Flag::UpstreamRetryLimitExceeded);
                    }
                    tracing::debug!(endpoint = %ep.addr, error = %e, "upstream failed");
                    return match e {
                        UpstreamError::Connect(_) => {
                            flags.set(Flag::UpstreamConnectionFailure);
                            local_reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "upstream connect error",
                                *flags,
                            )
                        }
                        UpstreamError::Reset(_) => {
                            flags.set(Flag::UpstreamRemoteReset);
                            local_reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "upstream reset before response",
                                *flags,
                            )
                        }
                    };
                }
                None => {
                    let retriable =
                        retry.is_some_and(|r| r.on.on_5xx || r.on.gateway_error || r.on.reset);
                    if retriable && !last {
                        continue;
                    }
                    if retriable {
                        flags.set(Flag::UpstreamRetryLimitExceeded);
                    }
                    flags.set(Flag::UpstreamRequestTimeout);
                    return local_reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream per-try timeout",
                        *flags,
                    );
                }
            }
        }
        // `tries` >= 1 and every iteration returns or continues before the last.
        local_reply(StatusCode::SERVICE_UNAVAILABLE, "no attempt made", *flags)
    }

    /// Envoy's back-off: uniform in [0, base·2^(n-1)), capped at 10·base.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.settings.retry_backoff;
        let cap = base.saturating_mul(10);
        let ceiling = base.saturating_mul(1 << (n - 1).min(16)).min(cap);
        let ms = ceiling.as_micros().max(1) as u64;
        Duration::from_micros(lb::random_below(ms))
    }

    /// Forwards to the original destination, unrouted.
    async fn passthrough(
        &self,
        ctx: ConnCtx,
        msg: Message,
        mut payload: Payload,
        flags: &mut Flags,
    ) -> Response<RespBody> {
        let key = PoolKey {
            src: self.source_ip(ctx),
            dst: ctx.dst,
            h2: msg.h2,
        };
        let req = msg.build(payload.take());
        match self
            .pool
            .send(key, req, PASSTHROUGH_CONNECT_TIMEOUT, None)
            .await
        {
            Ok(resp) => resp.map(RespBody::Upstream),
            Err(UpstreamError::Connect(_)) => {
                flags.set(Flag::UpstreamConnectionFailure);
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error",
                    *flags,
                )
            }
            Err(UpstreamError::Reset(_)) => {
                flags.set(Flag::UpstreamRemoteReset);
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response",
                    *flags,
                )
            }
        }
    }
}

const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

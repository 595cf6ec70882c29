//! HTTP proxying: serve a downstream connection (HTTP/1.1 or h2c, detected by
//! hyper-util's auto server), route each request, forward it with retries,
//! timeouts and fault injection, and stream the response back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use dpumesh_api::config::{HashKey, LbKind, Protocol};

use super::inbound::{Gate, Io};
use super::observe::{grpc_status, headers_size, Completion, RequestHead, Trail};
use super::upstream::{HboneTarget, PoolKey, ReqBody, UpstreamBody, UpstreamError};
use super::{ConnCtx, Direction, Flag, Flags, Proxy, UpstreamSource};
use crate::authz::HttpAttrs;
use crate::compiled::{
    ActionRt, ActiveRequest, ClusterRt, ForwardRt, RedirectRt, RequestView, RetryRt, RouteRt,
    StrMatcher, TryOutcome,
};
use crate::lb;

/// Where a response body comes from.
// The upstream body (with the pool key it returns its connection under) is
// the common case; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum RespKind {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// The body of a response to the downstream client. Counts what it sends and
/// reports the request (metrics, access log) when it has been sent — or
/// dropped early, when the client went away.
pub struct RespBody {
    kind: RespKind,
    sent: u64,
    grpc_trailer: Option<u16>,
    done: Option<Box<Completion>>,
}

impl RespBody {
    fn local(b: Option<Bytes>) -> RespBody {
        RespBody::new(RespKind::Local(b))
    }

    fn upstream(b: UpstreamBody) -> RespBody {
        RespBody::new(RespKind::Upstream(b))
    }

    fn new(kind: RespKind) -> RespBody {
        RespBody {
            kind,
            sent: 0,
            grpc_trailer: None,
            done: None,
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done.finish(self.sent, self.grpc_trailer, complete);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            RespKind::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream(b) => Pin::new(b).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    this.grpc_trailer = grpc_status(t);
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Local(b) => b.is_none(),
            RespKind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Upstream(b) => b.size_hint(),
        }
    }
}

/// A response the proxy makes itself. The body names the flags, like
/// Envoy's local replies name their cause.
fn local_reply(status: StatusCode, what: &str, flags: Flags) -> Response<RespBody> {
    let body = Bytes::from(format!("{what} (response_flags={flags})\n"));
    let mut r = Response::new(RespBody::local(Some(body)));
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
    // `Connection` is hop-by-hop itself: taken out first, so that the
    // headers it names can be removed by name without allocating.
    if let Some(c) = h.remove(header::CONNECTION) {
        // Headers the sender named as hop-by-hop too.
        for n in c.to_str().unwrap_or_default().split(',') {
            h.remove(n.trim());
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What an Envoy sidecar adds on its inbound side: the client's IP appended
/// to `x-forwarded-for`, `x-forwarded-proto` when absent (`https` over
/// mTLS, else `http`), and over mTLS `x-forwarded-client-cert` with the
/// verified peer (`By=<our identity>;URI=<peer identity>`, Istio's
/// APPEND_FORWARD).
fn forwarded_headers(h: &mut HeaderMap, ctx: &ConnCtx) {
    let ip = ctx.peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if ctx.mtls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let (true, Some(peer), Some(local)) = (ctx.mtls, ctx.principal, ctx.local_principal) {
        let entry = format!("By={local};URI={peer}");
        let value = match h
            .get(&X_FORWARDED_CLIENT_CERT)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.is_empty() => format!("{prev},{entry}"),
            _ => entry,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
    }
}

/// Envoy's RBAC filter answer to a denied request.
fn rbac_denied() -> Response<RespBody> {
    let mut r = Response::new(RespBody::local(Some(Bytes::from_static(
        b"RBAC: access denied",
    ))));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The request's attributes for authorization.
fn attrs_of(msg: &Message) -> HttpAttrs<'_> {
    HttpAttrs {
        host: &msg.authority,
        method: msg.parts.method.as_str(),
        path: msg.path_and_query.split('?').next().unwrap_or("/"),
        headers: &msg.parts.headers,
    }
}

fn request_id() -> HeaderValue {
    let a = lb::random_u64();
    let b = lb::random_u64();
    // UUID v4 layout, "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", written in
    // place (no format machinery, no String: once per request).
    let mut s = [b'-'; 36];
    hex_into(&mut s[0..8], a >> 32);
    hex_into(&mut s[9..13], (a >> 16) & 0xffff);
    s[14] = b'4';
    hex_into(&mut s[15..18], a & 0xfff);
    hex_into(&mut s[19..23], ((b >> 48) & 0x3fff) | 0x8000);
    hex_into(&mut s[24..36], b & 0xffff_ffff_ffff);
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Writes the low `out.len()` hex digits of `v` (lowercase, zero-padded).
fn hex_into(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
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
    pub(super) async fn serve_http(self: Arc<Self>, stream: Io, ctx: ConnCtx) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .max_headers(self.settings.max_headers);
        builder
            .http2()
            .max_header_list_size(self.settings.max_header_bytes as u32);
        let proxy = self.clone();
        // Boxed: a request's future is ≈ 6 KB (routing, retries and the
        // upstream exchange inline) and hyper moves the service future per
        // request (HTTP/1.1: into its in-flight slot; h2: into the stream's
        // task, then into the spawned task); boxed, a pointer moves instead.
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            Box::pin(async move { Ok::<_, Infallible>(proxy.handle(ctx, req).await) })
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut draining = self.draining.subscribe();
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = draining.wait_for(|d| *d).await; } => {
                // Finish what is in flight, then close (GOAWAY / Connection: close).
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            // Malformed requests end here after hyper answered 400/431.
            tracing::debug!(peer = %ctx.peer, error = %e, "downstream connection ended with an error");
        }
    }

    async fn handle(
        self: Arc<Self>,
        ctx: ConnCtx,
        mut req: Request<Incoming>,
    ) -> Response<RespBody> {
        let start = Instant::now();
        self.stats.http_requests.fetch_add(1, Ordering::Relaxed);
        if !req.headers().contains_key(&X_REQUEST_ID) {
            req.headers_mut().insert(X_REQUEST_ID.clone(), request_id());
        }
        let version = req.version();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let head = self
            .access_log
            .enabled()
            .then(|| RequestHead::capture(&req));
        let request_bytes = headers_size(req.headers())
            + req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        let upgrade = upgrade_of(&mut req);
        let mut trail = Trail::default();
        let mut resp = self.route_request(ctx, req, upgrade, &mut trail).await;
        self.stats.count_flags(trail.flags);
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(resp.headers_mut());
        }
        *resp.version_mut() = version;
        let done = Completion {
            proxy: self.clone(),
            ctx,
            start,
            started_at: SystemTime::now(),
            status: resp.status().as_u16(),
            grpc_status: grpc_status(resp.headers()),
            response_head_bytes: headers_size(resp.headers()),
            trail,
            head,
            request_bytes,
            grpc,
        };
        resp.body_mut().done = Some(Box::new(done));
        if resp.body().is_end_stream() {
            resp.body_mut().finish(true);
        }
        resp
    }

    async fn route_request(
        &self,
        ctx: ConnCtx,
        req: Request<Incoming>,
        upgrade: Option<Upgrade>,
        trail: &mut Trail,
    ) -> Response<RespBody> {
        let Some(cfg) = self.snapshot() else {
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no config", trail.flags);
        };
        trail.cfg = Some(cfg.clone());
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
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();

        let pod = match ctx.direction {
            Direction::Outbound => cfg.pod_by_ip(ctx.peer.ip()).map(|p| &**p),
            Direction::Inbound => None,
        };
        if let Some(bucket) = pod.and_then(|p| p.rate_limit.as_ref()) {
            if !bucket.try_take() {
                if let Some(p) = pod {
                    p.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                trail.flags.set(Flag::RateLimited);
                return local_reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    "local_rate_limited",
                    trail.flags,
                );
            }
        }

        if ctx.direction == Direction::Inbound {
            if let Some(policy) = Proxy::inbound_policy(&cfg, &ctx) {
                let path = path_and_query.split('?').next().unwrap_or("/");
                let attrs = HttpAttrs {
                    host: &authority,
                    method: parts.method.as_str(),
                    path,
                    headers: &parts.headers,
                };
                if let Gate::Deny(_) = self.gate_request(&cfg, &policy, &ctx, attrs) {
                    return rbac_denied();
                }
            }
            forwarded_headers(&mut parts.headers, &ctx);
        }
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
                upgrade,
            };
            return self.passthrough(ctx, msg, body, trail).await;
        }
        let Some(svc) = svc else {
            return local_reply(StatusCode::NOT_FOUND, "no route", trail.flags);
        };
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
                    upgrade,
                };
                return self.passthrough(ctx, msg, body, trail).await;
            }
            trail.flags.set(Flag::NoRoute);
            return local_reply(StatusCode::NOT_FOUND, "no route", trail.flags);
        };
        if self.access_log.enabled() {
            trail.route = Some(route.name.clone());
        }

        if let Some(bucket) = &route.rate_limit {
            if !bucket.try_take() {
                if let Some(p) = pod {
                    p.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                trail.flags.set(Flag::RateLimited);
                return local_reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    "local_rate_limited",
                    trail.flags,
                );
            }
        }

        if let Some(fault) = &route.fault {
            if let Some((delay, pct)) = fault.delay {
                if lb::chance(pct) {
                    trail.flags.set(Flag::DelayInjected);
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((status, pct)) = fault.abort {
                if lb::chance(pct) {
                    trail.flags.set(Flag::FaultInjected);
                    let mut r = local_reply(status, "fault filter abort", trail.flags);
                    route.headers.apply_response(r.headers_mut());
                    return r;
                }
            }
        }

        match &route.action {
            ActionRt::DirectResponse { status, body } => {
                let mut r = Response::new(RespBody::local(Some(body.clone())));
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
                    upgrade,
                };
                let Some(t) = route.timeout else {
                    return self
                        .forward(ctx, route, matched, fwd, msg, body, trail)
                        .await;
                };
                let result = {
                    let fut = self.forward(ctx, route, matched, fwd, msg, body, trail);
                    tokio::time::timeout(t, fut).await
                };
                match result {
                    Ok(r) => r,
                    Err(_) => {
                        trail.flags.set(Flag::UpstreamRequestTimeout);
                        local_reply(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream request timeout",
                            trail.flags,
                        )
                    }
                }
            }
        }
    }
}

/// An HTTP/1.1 Upgrade request (WebSocket...): the protocol asked for and
/// the downstream side of the future tunnel.
pub(super) struct Upgrade {
    protocol: HeaderValue,
    downstream: hyper::upgrade::OnUpgrade,
}

/// Takes the upgrade half of an HTTP/1.1 `Connection: upgrade` request.
fn upgrade_of(req: &mut Request<Incoming>) -> Option<Upgrade> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if !wants {
        return None;
    }
    Some(Upgrade {
        protocol,
        downstream: hyper::upgrade::on(req),
    })
}

/// A request on its way upstream.
struct Message {
    parts: http::request::Parts,
    authority: String,
    path_and_query: String,
    /// Speak HTTP/2 to the upstream.
    h2: bool,
    /// An HTTP/1.1 Upgrade (WebSocket) request: tunnelled, never pooled.
    upgrade: Option<Upgrade>,
}

impl Message {
    /// The request for one attempt: origin-form + Host for HTTP/1.1,
    /// absolute URI (→ `:authority`) for HTTP/2.
    fn build(&self, body: ReqBody) -> Request<ReqBody> {
        self.build_for(body, &self.authority)
    }

    /// `build` for the message's last use: its headers are moved, not
    /// copied (they are left empty).
    fn take_request(&mut self, body: ReqBody) -> Request<ReqBody> {
        let headers = std::mem::take(&mut self.parts.headers);
        self.build_with(headers, body, &self.authority)
    }

    fn build_for(&self, body: ReqBody, authority: &str) -> Request<ReqBody> {
        self.build_with(self.parts.headers.clone(), body, authority)
    }

    fn build_with(&self, headers: HeaderMap, body: ReqBody, authority: &str) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.headers_mut() = headers;
        if let Some(u) = &self.upgrade {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut()
                .insert(header::UPGRADE, u.protocol.clone());
        }
        let uri = if self.h2 {
            req.headers_mut().remove(header::HOST);
            Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(self.path_and_query.as_str())
                .build()
        } else {
            // Already the one Host header (HTTP/1.1 downstream): kept, not rebuilt.
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let first = hosts.next().map(HeaderValue::as_bytes);
            let same = first == Some(authority.as_bytes()) && hosts.next().is_none();
            if !same {
                if let Ok(v) = HeaderValue::from_str(authority) {
                    req.headers_mut().insert(header::HOST, v);
                }
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
    let mut r = Response::new(RespBody::local(None));
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
        // Envoy counts a reset as a 5xx, for `gateway-error` too
        // (`wouldRetryFromReset`); the differential test against Envoy checks it.
        UpstreamError::Reset(_) => {
            on.reset
                || on.on_5xx
                || on.gateway_error
                || (on.refused_stream && e.is_refused_stream())
        }
        UpstreamError::Overflow => false,
    }
}

/// Envoy's mirror authority: `host` → `host-shadow`, `host:port` → `host-shadow:port`.
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// What ended one try.
#[allow(clippy::large_enum_variant)] // short-lived, on the stack of one try
enum TryEnd {
    Response(Response<UpstreamBody>),
    Failed(UpstreamError),
    TimedOut,
}

/// A retry in flight, counted for the retry budget.
struct RetryInFlight<'a>(&'a ClusterRt);

impl<'a> RetryInFlight<'a> {
    fn new(c: &'a ClusterRt) -> Self {
        c.state.retries.fetch_add(1, Ordering::Relaxed);
        c.state.retries_total.fetch_add(1, Ordering::Relaxed);
        RetryInFlight(c)
    }
}

impl Drop for RetryInFlight<'_> {
    fn drop(&mut self) {
        self.0.state.retries.fetch_sub(1, Ordering::Relaxed);
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
        trail: &mut Trail,
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
        trail.cluster = Some(cluster.clone());
        msg.h2 = upstream_h2(cluster.protocol, msg.h2);
        if msg.upgrade.is_some() {
            // Boxed: rare; inline, it would enlarge every request's future.
            let mut resp = Box::pin(self.tunnel(ctx, Some(cluster), msg, trail)).await;
            dest.headers.apply_response(resp.headers_mut());
            route.headers.apply_response(resp.headers_mut());
            return resp;
        }
        let hash = hash_for(cluster, &msg.parts.headers, ctx.peer);
        let retry = route.retries.as_deref().filter(|r| r.attempts > 0);
        let mirror = route.mirror.as_ref().filter(|m| lb::chance(m.percent));
        let payload = if retry.is_some() || mirror.is_some() {
            match buffer_body(body, self.settings.retry_buffer_bytes).await {
                Ok(p) => p,
                Err(_) => {
                    trail.flags.set(Flag::DownstreamConnectionTermination);
                    return local_reply(
                        StatusCode::BAD_REQUEST,
                        "request body failed",
                        trail.flags,
                    );
                }
            }
        } else {
            Payload::Once(Some(ReqBody::Streaming(body)))
        };
        if let Some(m) = mirror {
            if let Payload::Replayable { data, trailers } = &payload {
                self.mirror(ctx, &m.cluster, &msg, data.clone(), trailers.clone());
            }
        }
        let mut resp = self
            .attempts(ctx, cluster, hash, &mut msg, payload, retry, trail)
            .await;
        dest.headers.apply_response(resp.headers_mut());
        route.headers.apply_response(resp.headers_mut());
        resp
    }

    /// Sends a copy of the request to `cluster` with the `-shadow` authority
    /// and forgets it: its response is read and dropped, its failure ignored.
    fn mirror(
        &self,
        ctx: ConnCtx,
        cluster: &Arc<ClusterRt>,
        msg: &Message,
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    ) {
        let Some(ep) = cluster.pick(None).cloned() else {
            return;
        };
        let h2 = upstream_h2(cluster.protocol, msg.h2);
        let authority = shadow_authority(&msg.authority);
        let mut req = msg.build_for(ReqBody::Buffered { data, trailers }, &authority);
        if h2 != msg.h2 {
            // Rebuild the target form for the mirror's protocol.
            let uri = if h2 {
                req.headers_mut().remove(header::HOST);
                Uri::builder()
                    .scheme("http")
                    .authority(authority.as_str())
                    .path_and_query(msg.path_and_query.as_str())
                    .build()
            } else {
                if let Ok(v) = HeaderValue::from_str(&authority) {
                    req.headers_mut().insert(header::HOST, v);
                }
                Uri::builder()
                    .path_and_query(msg.path_and_query.as_str())
                    .build()
            };
            *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
        }
        let key = PoolKey {
            src: self.source_ip(ctx),
            dst: ep.addr,
            h2,
            cluster: PoolKey::cluster_id(cluster),
            hbone: self
                .snapshot()
                .and_then(|cfg| HboneTarget::for_endpoint(&cfg, cluster, &ep, ctx.peer.ip())),
            tls: cluster.tls_origin.as_ref().map(|t| t.key_for(&authority)),
        };
        let pool = self.pool.clone();
        let cluster = cluster.clone();
        self.stats.mirrored.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let active = ActiveRequest::new(ep, None);
            // Through the mirror cluster's own settings, as Envoy's shadow:
            // its pool limits, and its TLS origination (never plaintext).
            if let Ok(resp) = pool
                .send(
                    key,
                    req,
                    cluster.connect_timeout,
                    Some(active),
                    Some(&cluster),
                )
                .await
            {
                let _ = resp.into_body().collect().await;
            }
        });
    }

    /// Tries the request on endpoints of `cluster` (a fresh pick each time)
    /// until a response that need not be retried, or the retries (or the
    /// retry budget) run out. Applies the pool limits and feeds outlier
    /// detection with every try's outcome.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        ctx: ConnCtx,
        cluster: &ClusterRt,
        hash: Option<u64>,
        msg: &mut Message,
        mut payload: Payload,
        retry: Option<&RetryRt>,
        trail: &mut Trail,
    ) -> Response<RespBody> {
        let limits = cluster.limits;
        if limits.max_requests > 0
            && cluster.state.requests.load(Ordering::Relaxed) >= limits.max_requests
        {
            return self.overflow(cluster, trail);
        }
        let tries = match retry {
            Some(r) if payload.replayable() => 1 + r.attempts,
            _ => 1,
        };
        let src = self.source_ip(ctx);
        let mut n = 0;
        loop {
            let _retrying = (n > 0).then(|| RetryInFlight::new(cluster));
            if n > 0 {
                tokio::time::sleep(self.backoff(n)).await;
            }
            let Some(ep) = cluster.pick(hash) else {
                trail.flags.set(Flag::NoHealthyUpstream);
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    trail.flags,
                );
            };
            trail.endpoint = Some(ep.clone());
            if let Some(cfg) = trail.cfg.clone() {
                if let Gate::Deny(_) = self.gate_local(&cfg, &ctx, ep.addr, Some(attrs_of(msg))) {
                    return rbac_denied();
                }
            }
            let key = PoolKey {
                src,
                dst: ep.addr,
                h2: msg.h2,
                cluster: PoolKey::cluster_id(cluster),
                hbone: trail
                    .cfg
                    .as_deref()
                    .and_then(|cfg| HboneTarget::for_endpoint(cfg, cluster, ep, ctx.peer.ip())),
                tls: cluster
                    .tls_origin
                    .as_ref()
                    .map(|t| t.key_for(&msg.authority)),
            };
            // The last try takes the headers; earlier ones get a copy.
            let req = if n + 1 >= tries {
                msg.take_request(payload.take())
            } else {
                msg.build(payload.take())
            };
            let send = self.pool.send(
                key,
                req,
                cluster.connect_timeout,
                Some(ActiveRequest::new(ep.clone(), Some(cluster.state.clone()))),
                Some(cluster),
            );
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let end = match per_try {
                None => match send.await {
                    Ok(r) => TryEnd::Response(r),
                    Err(e) => TryEnd::Failed(e),
                },
                Some(t) => match tokio::time::timeout(t, send).await {
                    Ok(Ok(r)) => TryEnd::Response(r),
                    Ok(Err(e)) => TryEnd::Failed(e),
                    Err(_) => TryEnd::TimedOut,
                },
            };
            let outcome = match &end {
                TryEnd::Response(r) if r.status().is_server_error() => TryOutcome::Error {
                    gateway: matches!(r.status().as_u16(), 502..=504),
                },
                TryEnd::Response(_) => TryOutcome::Success,
                TryEnd::Failed(UpstreamError::Overflow) => {
                    return self.overflow(cluster, trail);
                }
                TryEnd::Failed(UpstreamError::Connect(_)) | TryEnd::TimedOut => {
                    TryOutcome::Error { gateway: true }
                }
                TryEnd::Failed(UpstreamError::Reset(_)) => TryOutcome::Error { gateway: false },
            };
            cluster.report(ep, outcome);
            let retriable = retry.is_some_and(|r| match &end {
                TryEnd::Response(resp) => retriable_response(r, resp),
                TryEnd::Failed(e) => retriable_error(r, e),
                TryEnd::TimedOut => r.on.on_5xx || r.on.gateway_error || r.on.reset,
            });
            n += 1;
            let last = n >= tries;
            if retriable && !last {
                if retry.is_some_and(|r| self.retry_allowed(r, cluster)) {
                    continue;
                }
            } else if retriable {
                trail.flags.set(Flag::UpstreamRetryLimitExceeded);
            }
            return match end {
                TryEnd::Response(resp) => resp.map(RespBody::upstream),
                TryEnd::Failed(e) => {
                    tracing::debug!(endpoint = %ep.addr, error = %e, "upstream failed");
                    self.upstream_failure(e, trail)
                }
                TryEnd::TimedOut => {
                    trail.flags.set(Flag::UpstreamRequestTimeout);
                    local_reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream per-try timeout",
                        trail.flags,
                    )
                }
            };
        }
    }

    /// Envoy's retry budget: retries in flight may be at most `percent` of
    /// the cluster's active requests, but always `min` of them.
    fn retry_allowed(&self, retry: &RetryRt, cluster: &ClusterRt) -> bool {
        let Some((percent, min)) = retry.budget else {
            return true;
        };
        let active = cluster.state.requests.load(Ordering::Relaxed) as f64;
        let allowed = ((percent / 100.0) * active).ceil().max(min as f64);
        (cluster.state.retries.load(Ordering::Relaxed) as f64) < allowed
    }

    fn overflow(&self, cluster: &ClusterRt, trail: &mut Trail) -> Response<RespBody> {
        cluster.state.overflows.fetch_add(1, Ordering::Relaxed);
        trail.flags.set(Flag::UpstreamOverflow);
        local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            trail.flags,
        )
    }

    fn upstream_failure(&self, e: UpstreamError, trail: &mut Trail) -> Response<RespBody> {
        match e {
            UpstreamError::Connect(_) => {
                trail.flags.set(Flag::UpstreamConnectionFailure);
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error",
                    trail.flags,
                )
            }
            UpstreamError::Reset(_) => {
                trail.flags.set(Flag::UpstreamRemoteReset);
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response",
                    trail.flags,
                )
            }
            UpstreamError::Overflow => {
                trail.flags.set(Flag::UpstreamOverflow);
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "overflow", trail.flags)
            }
        }
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
        mut msg: Message,
        body: Incoming,
        trail: &mut Trail,
    ) -> Response<RespBody> {
        trail.upstream = Some(ctx.dst);
        if let Some(cfg) = trail.cfg.clone() {
            if let Gate::Deny(_) = self.gate_local(&cfg, &ctx, ctx.dst, Some(attrs_of(&msg))) {
                return rbac_denied();
            }
        }
        if msg.upgrade.is_some() {
            // Boxed: rare; inline, it would enlarge every request's future.
            return Box::pin(self.tunnel(ctx, None, msg, trail)).await;
        }
        let key = PoolKey {
            src: self.source_ip(ctx),
            dst: ctx.dst,
            h2: msg.h2,
            cluster: 0,
            hbone: None,
            tls: None,
        };
        let req = msg.take_request(ReqBody::Streaming(body));
        match self
            .pool
            .send(key, req, PASSTHROUGH_CONNECT_TIMEOUT, None, None)
            .await
        {
            Ok(resp) => resp.map(RespBody::upstream),
            Err(e) => self.upstream_failure(e, trail),
        }
    }

    /// An HTTP/1.1 Upgrade (WebSocket): the request goes to an endpoint of
    /// `cluster` (or the original destination) on a connection of its own;
    /// on `101 Switching Protocols` both sides are joined byte for byte
    /// until either closes. Any other answer is returned as is.
    async fn tunnel(
        &self,
        ctx: ConnCtx,
        cluster: Option<&Arc<ClusterRt>>,
        mut msg: Message,
        trail: &mut Trail,
    ) -> Response<RespBody> {
        let (addr, connect_timeout) = match cluster {
            Some(c) => match c.pick(hash_for(c, &msg.parts.headers, ctx.peer)) {
                Some(ep) => {
                    trail.endpoint = Some(ep.clone());
                    (ep.addr, c.connect_timeout)
                }
                None => {
                    trail.flags.set(Flag::NoHealthyUpstream);
                    return local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no healthy upstream",
                        trail.flags,
                    );
                }
            },
            None => (ctx.dst, PASSTHROUGH_CONNECT_TIMEOUT),
        };
        msg.h2 = false;
        let req = msg.build(ReqBody::empty());
        let Some(up) = msg.upgrade.take() else {
            return local_reply(StatusCode::BAD_REQUEST, "not an upgrade", trail.flags);
        };
        let mut resp =
            match super::upstream::send_upgrade(self.source_ip(ctx), addr, connect_timeout, req)
                .await
            {
                Ok(r) => r,
                Err(e) => return self.upstream_failure(e, trail),
            };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(RespBody::upstream);
        }
        let upstream = hyper::upgrade::on(&mut resp);
        self.stats.upgrades.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = (up.downstream.await, upstream.await) else {
                return;
            };
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
        resp.map(RespBody::upstream)
    }
}

const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::{RetryOn, RetryRt};
    use http_body_util::Empty;

    #[test]
    fn request_id_is_a_uuid_v4() {
        let v = request_id();
        let s = v.to_str().expect("ascii");
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{s}");
        assert!(s
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(groups[2].starts_with('4'), "{s}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{s}"
        );
        assert_ne!(request_id(), v, "fresh per call");
        let mut buf = [0u8; 6];
        hex_into(&mut buf, 0xab_cdef);
        assert_eq!(&buf, b"abcdef");
        hex_into(&mut buf[..4], 0x1f);
        assert_eq!(&buf[..4], b"001f");
    }

    /// A real `hyper::Error`: the upstream closes the connection before answering.
    async fn reset_error() -> UpstreamError {
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/").body(Empty::new()).expect("request");
        match send.send_request(req).await {
            Err(e) => UpstreamError::Reset(e),
            Ok(r) => panic!("answer from a closed connection: {r:?}"),
        }
    }

    #[tokio::test]
    async fn a_reset_is_retried_as_envoy_does() {
        let e = reset_error().await;
        let retry = |on: RetryOn| RetryRt {
            attempts: 1,
            per_try_timeout: None,
            on,
            budget: None,
        };
        for on in [
            RetryOn {
                on_5xx: true,
                ..RetryOn::default()
            },
            RetryOn {
                gateway_error: true,
                ..RetryOn::default()
            },
            RetryOn {
                reset: true,
                ..RetryOn::default()
            },
        ] {
            assert!(retriable_error(&retry(on), &e));
        }
        // Neither connect-failure nor status codes cover a reset.
        let on = RetryOn {
            connect_failure: true,
            status_codes: vec![503],
            ..RetryOn::default()
        };
        assert!(!retriable_error(&retry(on), &e));
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Foo ,bad name"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::TE));
    }
}

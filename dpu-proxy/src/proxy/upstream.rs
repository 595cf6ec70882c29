//! Upstream side: transparent connects, and a connection pool keyed by
//! (client IP, endpoint, protocol) so that one pod's connections are never
//! reused for another pod (the upstream sees each client's own IP).
//!
//! HTTP/1.1 connections are checked out exclusively and come back when the
//! response body has been read to its end; an HTTP/2 connection is shared by
//! every request with the same key. The pool's maps are sharded and locked
//! only for a push or pop, never across an await.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use dpumesh_api::config::TlsMode;

use super::inbound::Io;
use crate::compiled::state::ClusterState;
use crate::compiled::{ActiveRequest, ClusterRt, CompiledConfig, EndpointRt};
use crate::hbone::HboneClient;
use crate::identity::SpiffeId;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to `dst`; with `src`, from that (possibly foreign) address using
/// IP_TRANSPARENT, so the destination sees the original client's IP.
pub async fn connect(
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(src) = src {
        match src {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
    }
}

/// A request body towards the upstream.
pub enum ReqBody {
    /// Fully buffered (replayable for retries).
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Frames already read (while trying to buffer), then the rest of the stream.
    Prefixed {
        prefix: std::collections::VecDeque<Frame<Bytes>>,
        rest: Incoming,
    },
    Streaming(Incoming),
}

impl ReqBody {
    pub fn empty() -> ReqBody {
        ReqBody::Buffered {
            data: None,
            trailers: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Buffered { data, trailers } => {
                if let Some(d) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ReqBody::Prefixed { prefix, rest } => {
                if let Some(f) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
            ReqBody::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Buffered { data, trailers } => {
                data.as_ref().is_none_or(|d| d.is_empty()) && trailers.is_none()
            }
            ReqBody::Prefixed { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
            ReqBody::Streaming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Prefixed { .. } => SizeHint::default(),
            ReqBody::Streaming(b) => b.size_hint(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Option<IpAddr>,
    pub dst: SocketAddr,
    pub h2: bool,
    /// The cluster whose limits count the connection ([`PoolKey::cluster_id`];
    /// 0: none). Connections are pooled per cluster, as Envoy pools them, so
    /// one cluster never borrows a connection that counts against another's
    /// `maxConnections`.
    pub cluster: usize,
    /// Set: the connection is an HBONE tunnel to `dst` (mTLS to another node).
    pub hbone: Option<HboneTarget>,
    /// Set: TLS originated with these settings (the cluster's
    /// [`crate::tls_origination::TlsOrigin::key`]).
    pub tls: Option<u64>,
}

impl PoolKey {
    /// [`PoolKey::cluster`] of `c`: its counters, carried across config swaps.
    pub fn cluster_id(c: &crate::compiled::ClusterRt) -> usize {
        Arc::as_ptr(&c.state) as usize
    }
}

/// How to reach an endpoint on another node over HBONE: as the source pod's
/// identity, to `<endpoint ip>:15008`, which must prove the endpoint's identity.
///
/// The two SPIFFE IDs are interned (`compiled::intern`: one `&'static str`
/// per distinct ID), so a target compares and hashes them by address: the
/// pool hashes its key on every checkout and return.
#[derive(Debug, Clone, Copy, Eq)]
pub struct HboneTarget {
    /// SPIFFE ID of the source pod (interned).
    pub src: &'static str,
    /// SPIFFE ID the endpoint must prove (interned).
    pub dst: &'static str,
    pub dial: SocketAddr,
    /// The original client's IP, sent in `Forwarded: for=`.
    pub client: IpAddr,
}

impl PartialEq for HboneTarget {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.src, other.src)
            && std::ptr::eq(self.dst, other.dst)
            && self.dial == other.dial
            && self.client == other.client
    }
}

impl Hash for HboneTarget {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.src.as_ptr() as usize).hash(state);
        (self.dst.as_ptr() as usize).hash(state);
        self.dial.hash(state);
        self.client.hash(state);
    }
}

impl HboneTarget {
    /// HBONE is used when the cluster's TLS mode is `ISTIO_MUTUAL`, the
    /// endpoint is HBONE-eligible from this node ([`hbone_eligible`]: not on
    /// our node, and `hbone: true`, or `hbone` unset and `node` names another
    /// node), it has a service account (the identity to check), and the client
    /// is a local pod (the identity to present).
    ///
    /// [`hbone_eligible`]: dpumesh_api::config::hbone_eligible
    pub fn for_endpoint(
        cfg: &CompiledConfig,
        cluster: &ClusterRt,
        ep: &EndpointRt,
        client: IpAddr,
    ) -> Option<HboneTarget> {
        if cluster.tls != TlsMode::IstioMutual
            || !dpumesh_api::config::hbone_eligible(ep.hbone, &ep.node, &cfg.node_name)
        {
            return None;
        }
        let dst = ep.spiffe_id?;
        let src = cfg.pod_by_ip(client)?;
        Some(HboneTarget {
            src: src.spiffe_id,
            dst,
            dial: SocketAddr::new(ep.addr.ip(), crate::hbone::HBONE_PORT),
            client,
        })
    }
}

/// Why an upstream exchange failed before response headers arrived.
#[derive(Debug)]
pub enum UpstreamError {
    /// TCP connect (or the HTTP handshake) failed: Envoy's UF.
    Connect(io::Error),
    /// The connection or stream broke before the response: Envoy's UR/UC.
    Reset(hyper::Error),
    /// A connection-pool limit of the cluster refused the request: Envoy's UO.
    Overflow,
}

impl UpstreamError {
    /// Whether the peer refused the stream (h2 REFUSED_STREAM): safe to retry.
    pub fn is_refused_stream(&self) -> bool {
        let UpstreamError::Reset(e) = self else {
            return false;
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(h2e) = s.downcast_ref::<h2::Error>() {
                return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
            }
            source = s.source();
        }
        false
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connection failure: {e}"),
            UpstreamError::Reset(e) => write!(f, "reset before headers: {e}"),
            UpstreamError::Overflow => f.write_str("connection pool overflow"),
        }
    }
}

/// An idle HTTP/1.1 connection and the requests it has carried.
type IdleH1 = (http1::SendRequest<ReqBody>, u32);

enum Idle {
    H1(Vec<IdleH1>),
    H2(http2::SendRequest<ReqBody>),
}

const SHARDS: usize = 16;
/// Idle HTTP/1.1 connections kept per key.
const MAX_IDLE_PER_KEY: usize = 64;

pub struct Pool {
    shards: Vec<Mutex<HashMap<PoolKey, Idle>>>,
    /// The HBONE client for keys with `hbone` set; without it, such keys
    /// connect in plaintext (HBONE not enabled in this process).
    pub(crate) hbone: OnceLock<Arc<HboneClient>>,
    /// Tunnels opened through `hbone`.
    pub(crate) hbone_opened: std::sync::atomic::AtomicU64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hbone: OnceLock::new(),
            hbone_opened: Default::default(),
        }
    }
}

impl Pool {
    /// Connects to `dst`: through an HBONE tunnel when `hbone` is set and
    /// the client is enabled, else TCP (from `src` when given), with TLS
    /// originated when `tls` is given (offering ALPN h2 when its flag is set;
    /// the authority is the SNI's source for `auto_sni`).
    pub(crate) async fn connect_io(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
        hbone: Option<&HboneTarget>,
        tls: Option<(&ClusterRt, bool, Option<&str>)>,
        timeout: Duration,
    ) -> io::Result<Io> {
        if let Some((cluster, h2, authority)) = tls.filter(|(c, _, _)| c.tls_origin.is_some()) {
            return Box::pin(crate::tls_origination::connect(
                cluster, src, dst, h2, authority, timeout,
            ))
            .await;
        }
        let (Some(t), Some(client)) = (hbone, self.hbone.get()) else {
            return connect(src, dst, timeout).await.map(Io::Tcp);
        };
        let bad =
            |e: crate::identity::IdentityError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let src_id = SpiffeId::parse(t.src).map_err(bad)?;
        let dst_id = SpiffeId::parse(t.dst).map_err(bad)?;
        let fut = client.connect_for(&src_id, &dst_id, t.dial, dst, Some(t.client));
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(io)) => {
                self.hbone_opened.fetch_add(1, Ordering::Relaxed);
                Ok(Io::Tunnel {
                    io,
                    prefix: Bytes::new(),
                })
            }
            Ok(Err(e)) => {
                tracing::info!(%dst, via = %t.dial, error = %e, "HBONE upstream failed");
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                ))
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HBONE connect timeout",
            )),
        }
    }

    fn shard(&self, key: &PoolKey) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Idle>> {
        // The shard only spreads keys over the locks (the maps hash the
        // whole key with their own keyed hasher): the addresses, mixed by a
        // multiplication, instead of a second SipHash of the key per lookup.
        let ip = |a: IpAddr| match a {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        let x = ip(key.dst.ip())
            ^ (u64::from(key.dst.port()) << 32)
            ^ key.src.map_or(0, ip).rotate_left(17);
        let i = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS;
        // The maps hold no invariants a panic could break.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_h1(&self, key: &PoolKey) -> Option<IdleH1> {
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(Idle::H1(list)) => {
                while let Some(s) = list.pop() {
                    if !s.0.is_closed() {
                        return Some(s);
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn put_h1(&self, key: PoolKey, idle: IdleH1, max_uses: u32, state: Option<&ClusterState>) {
        // Over its request budget (maxRequestsPerConnection): dropped, which closes it.
        if idle.0.is_closed() || (max_uses > 0 && idle.1 >= max_uses) {
            return;
        }
        {
            let mut shard = self.shard(&key);
            match shard.entry(key).or_insert_with(|| Idle::H1(Vec::new())) {
                Idle::H1(list) if list.len() < MAX_IDLE_PER_KEY => list.push(idle),
                _ => {}
            }
        }
        if let Some(s) = state {
            s.slot_freed.notify_one();
        }
    }

    /// Opens a connection counted against the cluster's `maxConnections`:
    /// at the limit, the request waits (as one of `maxPendingRequests`) for
    /// an idle connection of its key or a free slot, up to `wait`. `Ok(None)`
    /// means an idle connection turned up instead.
    async fn open_slot(
        &self,
        key: &PoolKey,
        cluster: Option<&ClusterRt>,
        wait: Duration,
    ) -> Result<Option<IdleH1>, UpstreamError> {
        let Some(c) = cluster.filter(|c| c.limits.max_connections > 0) else {
            if let Some(c) = cluster {
                c.state.connections.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(None);
        };
        let (limits, state) = (c.limits, &c.state);
        let try_slot = || {
            state
                .connections
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limits.max_connections).then_some(n + 1)
                })
                .is_ok()
        };
        if try_slot() {
            return Ok(None);
        }
        let pending = state.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = Pending(state);
        if limits.max_pending_requests > 0 && pending >= limits.max_pending_requests {
            return Err(UpstreamError::Overflow);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = state.slot_freed.notified();
            if !key.h2 {
                if let Some(idle) = self.take_h1(key) {
                    return Ok(Some(idle));
                }
            }
            if try_slot() {
                return Ok(None);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(UpstreamError::Overflow);
            }
        }
    }

    fn get_h2(&self, key: &PoolKey) -> Option<http2::SendRequest<ReqBody>> {
        let shard = self.shard(key);
        match shard.get(key) {
            Some(Idle::H2(s)) if !s.is_closed() => Some(s.clone()),
            _ => None,
        }
    }

    /// Sends one request to `key.dst`, connecting (from `key.src`) when no
    /// pooled connection is usable, within the limits of `cluster`. `active`
    /// is held until the response body ends.
    pub async fn send(
        self: &Arc<Self>,
        key: PoolKey,
        mut req: Request<ReqBody>,
        connect_timeout: Duration,
        active: Option<ActiveRequest>,
        cluster: Option<&ClusterRt>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let state = cluster.map(|c| c.state.clone());
        let max_uses = cluster.map_or(0, |c| c.limits.max_requests_per_connection);
        // TLS origination needs the cluster's settings: never plaintext instead.
        let tls = match (key.tls, cluster) {
            (None, _) => None,
            (Some(_), Some(c)) => Some((c, key.h2)),
            (Some(_), None) => {
                return Err(UpstreamError::Connect(io::Error::other(
                    "TLS origination without its cluster",
                )))
            }
        };
        if key.h2 {
            *req.version_mut() = http::Version::HTTP_2;
            let mut sender = match self.get_h2(&key) {
                Some(s) => s,
                None => {
                    self.open_slot(&key, cluster, connect_timeout).await?;
                    let slot = Slot(state.clone());
                    // Boxed, as below: the connect (HBONE: TLS) and handshake
                    // futures would otherwise sit in every request's future.
                    let authority = tls.and_then(|_| request_authority(&req));
                    let tls = tls.map(|(c, h2)| (c, h2, authority.as_deref()));
                    let stream = Box::pin(self.connect_io(
                        key.src,
                        key.dst,
                        key.hbone.as_ref(),
                        tls,
                        connect_timeout,
                    ))
                    .await
                    .map_err(UpstreamError::Connect)?;
                    let (s, conn) = Box::pin(
                        http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)),
                    )
                    .await
                    .map_err(|e| UpstreamError::Connect(io::Error::other(e)))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(slot);
                    });
                    self.shard(&key).insert(key, Idle::H2(s.clone()));
                    s
                }
            };
            let resp = sender
                .send_request(req)
                .await
                .map_err(UpstreamError::Reset)?;
            return Ok(resp.map(|b| UpstreamBody::new(b, None, active)));
        }

        *req.version_mut() = http::Version::HTTP_11;
        // A pooled connection may have been closed by the server while idle:
        // when the request was not sent on it, try the next one.
        let mut idle = self.take_h1(&key);
        loop {
            while let Some((mut sender, uses)) = idle.take() {
                if sender.ready().await.is_ok() {
                    match sender.try_send_request(req).await {
                        Ok(resp) => {
                            return Ok(self.wrap_h1(key, sender, uses + 1, resp, active, cluster))
                        }
                        Err(mut e) => match e.take_message() {
                            Some(r) => req = r,
                            None => return Err(UpstreamError::Reset(e.into_error())),
                        },
                    }
                }
                idle = self.take_h1(&key);
            }
            // No usable idle connection: a new one, if the limits allow.
            match self.open_slot(&key, cluster, connect_timeout).await? {
                Some(found) => idle = Some(found),
                None => break,
            }
        }
        let slot = Slot(state);
        // A new connection is the rare path: its futures are boxed so that
        // the future of every request (moved by hyper per request) stays small.
        let authority = tls.and_then(|_| request_authority(&req));
        let tls = tls.map(|(c, h2)| (c, h2, authority.as_deref()));
        let stream =
            Box::pin(self.connect_io(key.src, key.dst, key.hbone.as_ref(), tls, connect_timeout))
                .await
                .map_err(UpstreamError::Connect)?;
        let (mut sender, conn) = Box::pin(http1::Builder::new().handshake(TokioIo::new(stream)))
            .await
            .map_err(|e| UpstreamError::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Reset)?;
        let _ = max_uses;
        Ok(self.wrap_h1(key, sender, 1, resp, active, cluster))
    }

    fn wrap_h1(
        self: &Arc<Self>,
        key: PoolKey,
        sender: http1::SendRequest<ReqBody>,
        uses: u32,
        resp: Response<Incoming>,
        active: Option<ActiveRequest>,
        cluster: Option<&ClusterRt>,
    ) -> Response<UpstreamBody> {
        let ret = Some(Return {
            pool: self.clone(),
            key,
            sender,
            uses,
            max_uses: cluster.map_or(0, |c| c.limits.max_requests_per_connection),
            state: cluster.map(|c| c.state.clone()),
        });
        resp.map(|b| UpstreamBody::new(b, ret, active))
    }
}

/// One open upstream connection counted against its cluster; released
/// (and a waiter woken) when the connection ends.
struct Slot(Option<Arc<ClusterState>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.connections.fetch_sub(1, Ordering::AcqRel);
            s.slot_freed.notify_one();
        }
    }
}

/// A request waiting for a connection.
struct Pending<'a>(&'a ClusterState);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The authority a request is for: its URI's (HTTP/2) or its `Host` (HTTP/1.1).
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// An Upgrade request on a connection of its own (never pooled): the
/// response, whose upgrade half carries the tunnel after a 101.
pub async fn send_upgrade(
    src: Option<IpAddr>,
    dst: SocketAddr,
    connect_timeout: Duration,
    mut req: Request<ReqBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let stream = connect(src, dst, connect_timeout)
        .await
        .map_err(UpstreamError::Connect)?;
    let (mut sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(io::Error::other(e)))?;
    tokio::spawn(conn.with_upgrades());
    let resp = sender
        .send_request(req)
        .await
        .map_err(UpstreamError::Reset)?;
    Ok(resp.map(|b| UpstreamBody::new(b, None, None)))
}

struct Return {
    pool: Arc<Pool>,
    key: PoolKey,
    sender: http1::SendRequest<ReqBody>,
    uses: u32,
    max_uses: u32,
    state: Option<Arc<ClusterState>>,
}

/// A response body from the upstream. Gives its HTTP/1.1 connection back to
/// the pool once read to the end (dropped early, the connection is closed).
pub struct UpstreamBody {
    inner: Incoming,
    ret: Option<Return>,
    _active: Option<ActiveRequest>,
}

impl UpstreamBody {
    fn new(inner: Incoming, ret: Option<Return>, active: Option<ActiveRequest>) -> UpstreamBody {
        let mut b = UpstreamBody {
            inner,
            ret,
            _active: active,
        };
        if b.inner.is_end_stream() {
            b.give_back();
        }
        b
    }

    fn give_back(&mut self) {
        if let Some(r) = self.ret.take() {
            r.pool
                .put_h1(r.key, (r.sender, r.uses), r.max_uses, r.state.as_deref());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            // A server stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpumesh_api::config::NodeConfig;
    use serde_json::json;

    /// One `ISTIO_MUTUAL` service on node `n1` whose endpoints cover the HBONE
    /// rule: `hbone` unset / true / false, `node` ours / another / unknown.
    fn compiled(tls: &str) -> Arc<CompiledConfig> {
        let ep = |addr: &str, node: &str, hbone: Option<bool>| {
            let mut e = json!({"address": addr, "node": node, "serviceAccount": "reviews"});
            if let Some(h) = hbone {
                e["hbone"] = json!(h);
            }
            e
        };
        let config: NodeConfig = serde_json::from_value(json!({
            "version": 1,
            "node": {"name": "n1", "networkMode": "underlay", "podCidr": "10.244.1.0/24",
                     "dpuMgmtAddr": "192.168.100.2:15080"},
            "pods": [{"uid": "u1", "name": "client", "namespace": "default", "ips": ["10.244.1.5"],
                      "mac": "02:00:00:00:00:01", "vfIndex": 1, "representor": "pf0vf1"}],
            "services": [{
                "hostname": "reviews.default.svc.cluster.local", "namespace": "default",
                "ports": [{"port": 9080, "name": "http"}],
                "endpoints": [
                    ep("10.244.2.1", "n2", None),
                    ep("10.244.2.2", "", None),
                    ep("10.244.2.3", "", Some(true)),
                    ep("10.244.2.4", "n2", Some(true)),
                    ep("10.244.1.6", "n1", Some(true)),
                    ep("10.244.2.5", "n2", Some(false)),
                    {"address": "10.244.2.6", "node": "n2"}
                ]
            }],
            "clusters": [{"name": "outbound|9080||reviews.default.svc.cluster.local",
                          "service": "reviews.default.svc.cluster.local", "port": 9080,
                          "tls": tls}]
        }))
        .expect("test config parses");
        CompiledConfig::compile(&config).expect("compiles")
    }

    fn hbone_dial(cfg: &CompiledConfig, addr: &str) -> Option<SocketAddr> {
        let cluster = cfg
            .cluster("outbound|9080||reviews.default.svc.cluster.local")
            .expect("cluster");
        let ep = cluster
            .priorities
            .iter()
            .flat_map(|p| &p.endpoints)
            .find(|e| e.addr.ip().to_string() == addr)
            .unwrap_or_else(|| panic!("no endpoint {addr}"));
        let client: IpAddr = "10.244.1.5".parse().expect("ip");
        HboneTarget::for_endpoint(cfg, cluster, ep, client).map(|t| t.dial)
    }

    #[test]
    fn hbone_follows_the_endpoint_mark_then_its_node() {
        let cfg = compiled("ISTIO_MUTUAL");
        let hbone = |a: &str| hbone_dial(&cfg, a).map(|d| d.to_string());
        // Unset: another named node → HBONE; unknown node → plaintext.
        assert_eq!(hbone("10.244.2.1").as_deref(), Some("10.244.2.1:15008"));
        assert_eq!(hbone("10.244.2.2"), None);
        // hbone: true → HBONE on another node, named or not; never on ours.
        assert_eq!(hbone("10.244.2.3").as_deref(), Some("10.244.2.3:15008"));
        assert_eq!(hbone("10.244.2.4").as_deref(), Some("10.244.2.4:15008"));
        assert_eq!(hbone("10.244.1.6"), None);
        // hbone: false (no Istio proxy) → plaintext even on another node.
        assert_eq!(hbone("10.244.2.5"), None);
        // No service account: no identity to check → plaintext.
        assert_eq!(hbone("10.244.2.6"), None);
    }

    /// Targets compare and hash their SPIFFE IDs by address (interned), so
    /// the same endpoint must give the same pool key every time, also from a
    /// config compiled anew (a push), or pooled tunnels would not be reused.
    #[test]
    fn an_endpoint_is_the_same_pool_key_across_compiles() {
        let target = |cfg: &CompiledConfig| {
            let cluster = cfg
                .cluster("outbound|9080||reviews.default.svc.cluster.local")
                .expect("cluster");
            let ep = cluster
                .priorities
                .iter()
                .flat_map(|p| &p.endpoints)
                .find(|e| e.addr.ip().to_string() == "10.244.2.1")
                .expect("endpoint");
            let client: IpAddr = "10.244.1.5".parse().expect("ip");
            HboneTarget::for_endpoint(cfg, cluster, ep, client).expect("hbone")
        };
        let (a, b) = (
            target(&compiled("ISTIO_MUTUAL")),
            target(&compiled("ISTIO_MUTUAL")),
        );
        assert_eq!(a, b);
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(a), hasher.hash_one(b));
        let c = HboneTarget {
            client: "10.244.1.9".parse().expect("ip"),
            ..a
        };
        assert_ne!(a, c);
    }

    #[test]
    fn no_hbone_unless_istio_mutual() {
        let cfg = compiled("DISABLE");
        assert_eq!(hbone_dial(&cfg, "10.244.2.3"), None);
        assert_eq!(hbone_dial(&cfg, "10.244.2.1"), None);
    }
}

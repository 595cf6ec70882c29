//! The data path: transparent listeners, protocol detection, HTTP proxying
//! (HTTP/1.1, h2c, gRPC) and plain TCP proxying. Contract: `docs/dpu-proxy.md`.
//!
//! Every connection and every request reads the current config snapshot
//! through [`ConfigSource`] (an atomic load); a request keeps the snapshot it
//! started with until it ends.

mod flags;
mod http;
mod inbound;
mod observe;
mod tcp;
pub mod upstream;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use flags::{Flag, Flags};
pub use inbound::{forwarded_for, TunnelsToProxy};

use crate::access_log::AccessLog;
use crate::compiled::CompiledConfig;
use crate::hbone::{HboneClient, HboneServer};
use crate::metrics::Metrics;
use inbound::Gate;
pub(crate) use inbound::Io;
use upstream::Pool;

/// Where the data path gets its config snapshot from.
pub trait ConfigSource: Send + Sync + 'static {
    /// The snapshot to serve with now; `None` before the first config.
    fn snapshot(&self) -> Option<Arc<CompiledConfig>>;
}

impl ConfigSource for ArcSwapOption<CompiledConfig> {
    fn snapshot(&self) -> Option<Arc<CompiledConfig>> {
        self.load_full()
    }
}

/// Which way connections on a listener go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a local pod to a service or pod (port 15001): routed by the config.
    Outbound,
    /// From another node to a local pod (port 15006): delivered to the original destination.
    Inbound,
}

/// How a listener learns a connection's original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginalDst {
    /// The accepted socket's local address (IP_TRANSPARENT listener that the
    /// dataplane steers connections to without rewriting them). The real path.
    LocalAddr,
    /// TEST SEAM: every connection on this listener is for this destination.
    /// Lets tests on loopback stand in for the dataplane's steering.
    Fixed(SocketAddr),
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub bind: SocketAddr,
    pub direction: Direction,
    pub original_dst: OriginalDst,
    /// Set IP_TRANSPARENT on the listening socket (needed to accept steered
    /// connections for foreign addresses; needs CAP_NET_ADMIN).
    pub transparent: bool,
}

/// How the proxy binds its upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamSource {
    /// From the client's own IP with IP_TRANSPARENT, so the destination sees
    /// the client (the DPU path).
    ClientIp,
    /// From whatever address the kernel picks.
    Kernel,
}

/// Limits and knobs of the data path.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Request line + headers of an HTTP/1.1 request (larger: 431). Envoy: 60 KiB.
    pub max_header_bytes: usize,
    /// Number of headers of an HTTP/1.1 request.
    pub max_headers: usize,
    /// Request bodies up to this size are buffered so retries can replay them.
    pub retry_buffer_bytes: usize,
    pub upstream_source: UpstreamSource,
    /// How long to wait for a client's first bytes to sniff its protocol when
    /// the port does not declare one; silent clients get plain TCP after it.
    pub sniff_timeout: Duration,
    /// Base interval of the jittered exponential retry back-off (Envoy: 25 ms).
    pub retry_backoff: Duration,
    /// Idle timeout of plain TCP connections that match no cluster (passthrough).
    pub passthrough_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            retry_buffer_bytes: 64 * 1024,
            upstream_source: UpstreamSource::ClientIp,
            sniff_timeout: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(25),
            passthrough_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Counters of the data path (the metrics module will export them).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    /// Outbound connections from an address that is no local pod: refused.
    pub unknown_source: AtomicU64,
    /// Connections refused because no config is served yet.
    pub no_config: AtomicU64,
    pub http_requests: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub tcp_bytes_to_upstream: AtomicU64,
    pub tcp_bytes_to_downstream: AtomicU64,
    /// TCP connections closed by the idle timeout.
    pub tcp_idle_timeouts: AtomicU64,
    /// Requests whose response carried each flag, indexed by [`Flag`].
    pub flags: [AtomicU64; flags::COUNT],
    /// Mirrored requests sent (fire and forget).
    pub mirrored: AtomicU64,
    /// WebSocket / Upgrade tunnels established.
    pub upgrades: AtomicU64,
    /// Inbound plaintext connections refused by PeerAuthentication STRICT.
    pub peer_authn_refused: AtomicU64,
    /// Inbound connections reset and requests answered 403 by AuthorizationPolicy.
    pub authz_denied: AtomicU64,
}

impl Stats {
    /// Downstream connections open now.
    pub fn active_connections(&self) -> u64 {
        let opened = self.connections_opened.load(Ordering::Relaxed);
        opened.saturating_sub(self.connections_closed.load(Ordering::Relaxed))
    }

    /// The counters as JSON (for `/stats`).
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut flags = serde_json::Map::new();
        for f in flags::ALL {
            flags.insert(f.short().into(), g(&self.flags[f as usize]).into());
        }
        serde_json::json!({
            "connections_active": self.active_connections(),
            "connections_opened": g(&self.connections_opened),
            "connections_closed": g(&self.connections_closed),
            "unknown_source": g(&self.unknown_source),
            "no_config": g(&self.no_config),
            "http_requests": g(&self.http_requests),
            "tcp_connections": g(&self.tcp_connections),
            "tcp_bytes_to_upstream": g(&self.tcp_bytes_to_upstream),
            "tcp_bytes_to_downstream": g(&self.tcp_bytes_to_downstream),
            "tcp_idle_timeouts": g(&self.tcp_idle_timeouts),
            "mirrored": g(&self.mirrored),
            "upgrades": g(&self.upgrades),
            "peer_authn_refused": g(&self.peer_authn_refused),
            "authz_denied": g(&self.authz_denied),
            "response_flags": flags,
        })
    }

    pub fn flag_count(&self, f: Flag) -> u64 {
        self.flags[f as usize].load(Ordering::Relaxed)
    }

    fn count_flags(&self, f: Flags) {
        for flag in f.iter() {
            self.flags[flag as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The proxy: shared by every listener and connection.
pub struct Proxy {
    config: Arc<dyn ConfigSource>,
    pub settings: ProxySettings,
    pub stats: Stats,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pool: Arc<Pool>,
    /// HBONE server that connections steered to `<pod ip>:15008` on the
    /// inbound listener are handed to (set once at start).
    hbone_server: std::sync::OnceLock<Arc<HboneServer>>,
    /// Set to true to drain: listeners stop accepting, HTTP connections
    /// finish their in-flight requests and close.
    draining: watch::Sender<bool>,
}

/// What is known about a downstream connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnCtx {
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub direction: Direction,
    /// Verified SPIFFE ID of the peer (HBONE tunnels), interned.
    pub principal: Option<&'static str>,
    /// Whether the connection arrived over mutual TLS (HBONE).
    pub mtls: bool,
    /// The identity this proxy proved to that peer (HBONE), interned.
    pub local_principal: Option<&'static str>,
}

impl Proxy {
    pub fn new(config: Arc<dyn ConfigSource>, settings: ProxySettings) -> Arc<Proxy> {
        Proxy::with_telemetry(config, settings, Arc::default(), AccessLog::default())
    }

    /// A proxy that counts into `metrics` and logs to `access_log`.
    pub fn with_telemetry(
        config: Arc<dyn ConfigSource>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            config,
            settings,
            stats: Stats::default(),
            metrics,
            access_log,
            pool: Arc::new(Pool::default()),
            hbone_server: Default::default(),
            draining: watch::Sender::new(false),
        })
    }

    /// Sends upstream connections to endpoints on other nodes whose cluster
    /// is `ISTIO_MUTUAL` over HBONE with `client` (once; later calls are ignored).
    pub fn enable_hbone_client(&self, client: Arc<HboneClient>) {
        let _ = self.pool.hbone.set(client);
    }

    /// Upstream connections (tunnels) opened over HBONE so far.
    pub fn hbone_upstream(&self) -> u64 {
        self.pool.hbone_opened.load(Ordering::Relaxed)
    }

    /// Connections the dataplane steers to `<local pod ip>:15008` arrive on
    /// the inbound listener; they are handed to `server` (once).
    pub fn enable_hbone_server(&self, server: Arc<HboneServer>) {
        let _ = self.hbone_server.set(server);
    }

    /// Starts draining (see [`Proxy::serve`]); [`Proxy::drained`] tells when done.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Waits until no downstream connection is open, or `timeout`.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.stats.active_connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Binds a listener (IP_TRANSPARENT when asked). Serve it with [`Proxy::serve`].
    pub fn bind(spec: &ListenerSpec) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(spec.bind), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if spec.transparent {
            match spec.bind.ip() {
                IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
            }
        }
        socket.set_nonblocking(true)?;
        socket.bind(&spec.bind.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    }

    /// Accepts connections, each on its own task, until [`Proxy::drain`].
    pub async fn serve(self: Arc<Self>, listener: TcpListener, spec: ListenerSpec) {
        let mut draining = self.draining.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = async { let _ = draining.wait_for(|d| *d).await; } => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of fds or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let dst = match spec.original_dst {
                OriginalDst::Fixed(d) => d,
                OriginalDst::LocalAddr => match stream.local_addr() {
                    // Dialled directly rather than steered: proxying it to its
                    // "original destination" would loop into this listener.
                    Ok(d)
                        if d.port() == spec.bind.port()
                            && (d.ip() == spec.bind.ip() || spec.bind.ip().is_unspecified()) =>
                    {
                        self.stats.unknown_source.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            let ctx = ConnCtx {
                peer: normalize(peer),
                dst: normalize(dst),
                direction: spec.direction,
                principal: None,
                mtls: false,
                local_principal: None,
            };
            if spec.direction == Direction::Inbound && ctx.dst.port() == crate::hbone::HBONE_PORT {
                if let Some(server) = self.hbone_server.get() {
                    let server = server.clone();
                    tokio::spawn(async move { server.accept_connection(stream, peer).await });
                    continue;
                }
            }
            let proxy = self.clone();
            tokio::spawn(async move {
                proxy
                    .stats
                    .connections_opened
                    .fetch_add(1, Ordering::Relaxed);
                proxy.clone().serve_connection(stream, ctx).await;
                proxy
                    .stats
                    .connections_closed
                    .fetch_add(1, Ordering::Relaxed);
            });
        }
    }

    pub(crate) fn snapshot(&self) -> Option<Arc<CompiledConfig>> {
        self.config.snapshot()
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, ctx: ConnCtx) {
        let _ = stream.set_nodelay(true);
        let Some(cfg) = self.snapshot() else {
            self.stats.no_config.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let declared = match ctx.direction {
            Direction::Outbound => {
                if cfg.pod_by_ip(ctx.peer.ip()).is_none() {
                    self.stats.unknown_source.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %ctx.peer, "outbound connection from an unknown source refused");
                    return;
                }
                cfg.service_for(ctx.dst).map(|s| s.protocol)
            }
            Direction::Inbound => cfg.service_for(ctx.dst).map(|s| s.protocol),
        };
        let policy = Proxy::inbound_policy(&cfg, &ctx);
        if let Some(p) = &policy {
            // PeerAuthentication first: STRICT refuses plaintext before a byte is read.
            if let Gate::Deny(_) = self.gate_connection(&cfg, p, &ctx, false) {
                Io::Tcp(stream).reset();
                return;
            }
        }
        drop(cfg);
        let is_http = match declared.flatten() {
            Some(p) => p.is_http(),
            None => sniff_http(&stream, self.settings.sniff_timeout).await,
        };
        self.serve_io(Io::Tcp(stream), ctx, is_http, policy, false)
            .await;
    }

    /// A CONNECT stream the HBONE server accepted (the peer's identity is
    /// verified and in `ctx`); declared TCP ports were authorized already.
    pub(crate) async fn serve_tunnel(
        self: Arc<Self>,
        mut io: crate::hbone::TunnelStream,
        ctx: ConnCtx,
    ) {
        let Some(cfg) = self.snapshot() else {
            self.stats.no_config.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let declared = cfg.service_for(ctx.dst).and_then(|s| s.protocol);
        let policy = Proxy::inbound_policy(&cfg, &ctx);
        drop(cfg);
        let (is_http, prefix) = match declared {
            Some(p) => (p.is_http(), bytes::Bytes::new()),
            None => inbound::sniff_tunnel(&mut io, self.settings.sniff_timeout).await,
        };
        let checked = declared.is_some();
        self.serve_io(Io::Tunnel { io, prefix }, ctx, is_http, policy, checked)
            .await;
    }

    async fn serve_io(
        self: Arc<Self>,
        io: Io,
        ctx: ConnCtx,
        is_http: bool,
        policy: Option<Arc<dpumesh_api::config::InboundPolicy>>,
        l4_checked: bool,
    ) {
        if is_http {
            self.serve_http(io, ctx).await;
            return;
        }
        if let (Some(p), false) = (&policy, l4_checked) {
            let denied = match self.snapshot() {
                Some(cfg) => matches!(self.gate_connection(&cfg, p, &ctx, true), Gate::Deny(_)),
                None => true,
            };
            if denied {
                io.reset();
                return;
            }
        }
        self.stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        self.proxy_tcp(io, ctx).await;
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// `Some(true)`: the first bytes are HTTP (a method or the h2 preface);
/// `Some(false)`: they are not; `None`: too few bytes to tell.
fn classify(seen: &[u8]) -> Option<bool> {
    if H2_PREFACE.starts_with(seen) && seen.len() < H2_PREFACE.len() {
        // Could still become the preface (or "PRI" of nothing): wait for more.
        None
    } else if seen.starts_with(H2_PREFACE) || METHODS.iter().any(|m| seen.starts_with(m)) {
        Some(true)
    } else if !METHODS.iter().any(|m| m.starts_with(seen)) {
        Some(false)
    } else {
        None
    }
}

/// Peeks at the client's first bytes: an HTTP/1.x method or the h2 preface
/// means HTTP. Nothing within `timeout` (a server-first protocol) means TCP.
async fn sniff_http(stream: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if let Some(http) = classify(&buf[..n]) {
            return http;
        }
        if n == last {
            // No new bytes yet: peek returns at once while data is queued.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
    }
}

/// The standard listeners on the DPU (ports from the project conventions):
/// outbound 15001 and inbound 15006, both IP_TRANSPARENT, the original
/// destination being the accepted socket's local address.
pub fn standard_listeners(ip: IpAddr) -> [ListenerSpec; 2] {
    listeners_on(ip, OUTBOUND_PORT, INBOUND_PORT)
}

/// [`standard_listeners`] on other ports (tests, several proxies in one netns).
pub fn listeners_on(ip: IpAddr, outbound: u16, inbound: u16) -> [ListenerSpec; 2] {
    [
        ListenerSpec {
            bind: SocketAddr::new(ip, outbound),
            direction: Direction::Outbound,
            original_dst: OriginalDst::LocalAddr,
            transparent: true,
        },
        ListenerSpec {
            bind: SocketAddr::new(ip, inbound),
            direction: Direction::Inbound,
            original_dst: OriginalDst::LocalAddr,
            transparent: true,
        },
    ]
}

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;

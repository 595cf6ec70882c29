//! Inbound governance: the destination pod's PeerAuthentication and
//! AuthorizationPolicy applied on 15006 and on HBONE-terminated streams,
//! plus the stream type shared by plain TCP and tunnelled connections.
//!
//! * Transport (PeerAuthentication): STRICT refuses plaintext; the
//!   connection is reset (RST) and counted.
//! * L4 (TCP, and HBONE tunnels to TCP ports): `authorize` without HTTP
//!   attributes; a deny resets the connection (or refuses the CONNECT).
//! * L7 (HTTP): `authorize` per request; a deny answers `403` with the body
//!   `RBAC: access denied`, like Envoy's RBAC filter.
//!
//! Denies and audits are counted under the policy's name
//! (`dpumesh_authz_total`, see `docs/identity.md`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use dpumesh_api::config::InboundPolicy;

use super::{ConnCtx, Direction, Proxy};
use crate::authz::{
    admit_transport, authorize, effective_principal, AuthzRequest, HttpAttrs, Verdict,
};
use crate::compiled::{intern, CompiledConfig};
use crate::hbone::{InboundTunnel, TunnelHandler, TunnelStream};

/// A downstream or upstream byte stream: a TCP socket, or one HBONE
/// CONNECT stream (bytes already read for sniffing first).
pub(crate) enum Io {
    Tcp(TcpStream),
    Tunnel {
        io: TunnelStream,
        prefix: Bytes,
    },
    /// TLS originated to the upstream (`SIMPLE`/`MUTUAL` clusters).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// Closes the connection with a reset where the transport has one (TCP:
    /// RST by SO_LINGER 0); a tunnel stream is dropped (its CONNECT stream ends).
    pub(crate) fn reset(self) {
        let tcp = match &self {
            Io::Tcp(s) => Some(s),
            Io::Tls(s) => Some(s.get_ref().0),
            Io::Tunnel { .. } => None,
        };
        if let Some(s) = tcp {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
        drop(self);
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tunnel { io, prefix } => {
                if !prefix.is_empty() {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                Pin::new(io).poll_read(cx, buf)
            }
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tunnel { io, .. } => Pin::new(io).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tunnel { io, .. } => Pin::new(io).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tunnel { io, .. } => Pin::new(io).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads a tunnel's first bytes (up to 24, or until `timeout`) to tell HTTP
/// from TCP; the bytes are kept as the stream's prefix.
pub(crate) async fn sniff_tunnel(io: &mut TunnelStream, timeout: Duration) -> (bool, Bytes) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(24);
    let mut chunk = [0u8; 24];
    loop {
        let want = 24 - buf.len();
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk[..want])).await {
            Ok(Ok(n)) => n,
            _ => return (false, Bytes::from(buf)),
        };
        if n == 0 {
            return (false, Bytes::from(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(http) = super::classify(&buf) {
            return (http, Bytes::from(buf));
        }
        if buf.len() >= 24 {
            return (false, Bytes::from(buf));
        }
    }
}

/// What to do with a connection or request after the inbound checks.
pub(crate) enum Gate {
    Pass,
    /// Refused under this policy name.
    Deny(String),
}

impl Proxy {
    /// The inbound policy of the pod a connection is for (`None`: no
    /// policy, or not inbound).
    pub(crate) fn inbound_policy(
        cfg: &CompiledConfig,
        ctx: &ConnCtx,
    ) -> Option<Arc<InboundPolicy>> {
        if ctx.direction != Direction::Inbound {
            return None;
        }
        cfg.pod_by_ip(ctx.dst.ip())?.inbound.clone()
    }

    /// The principal authorization sees for `ctx`: the verified mTLS peer;
    /// for plaintext, the local pod at the source IP (the dataplane binds
    /// pod IPs to their VFs); otherwise none.
    fn source_principal(cfg: &CompiledConfig, ctx: &ConnCtx) -> Option<&'static str> {
        if ctx.mtls {
            return ctx.principal;
        }
        cfg.pod_by_ip(ctx.peer.ip()).map(|p| p.spiffe_id)
    }

    /// PeerAuthentication, then (for TCP) AuthorizationPolicy at L4.
    pub(crate) fn gate_connection(
        &self,
        cfg: &CompiledConfig,
        policy: &InboundPolicy,
        ctx: &ConnCtx,
        l4: bool,
    ) -> Gate {
        let port = ctx.dst.port();
        if let Err(why) = admit_transport(&policy.peer_authentication, port, ctx.mtls) {
            tracing::info!(peer = %ctx.peer, dst = %ctx.dst, policy = %policy.name, why, "inbound connection refused");
            self.stats
                .peer_authn_refused
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.authz(
                &policy.name,
                "peer_authentication",
                &Self::pod_name(cfg, ctx),
                "tcp",
            );
            return Gate::Deny(policy.name.clone());
        }
        if !l4 {
            return Gate::Pass;
        }
        let principal = effective_principal(
            &policy.peer_authentication,
            port,
            Self::source_principal(cfg, ctx),
        );
        let req = AuthzRequest {
            source_ip: ctx.peer.ip(),
            source_principal: principal,
            destination_ip: ctx.dst.ip(),
            destination_port: port,
            http: None,
        };
        self.verdict(authorize(&policy.authorization, &req), cfg, "tcp", ctx)
    }

    /// AuthorizationPolicy at L7 for one request.
    pub(crate) fn gate_request(
        &self,
        cfg: &CompiledConfig,
        policy: &InboundPolicy,
        ctx: &ConnCtx,
        http: HttpAttrs<'_>,
    ) -> Gate {
        let port = ctx.dst.port();
        let principal = effective_principal(
            &policy.peer_authentication,
            port,
            Self::source_principal(cfg, ctx),
        );
        let req = AuthzRequest {
            source_ip: ctx.peer.ip(),
            source_principal: principal,
            destination_ip: ctx.dst.ip(),
            destination_port: port,
            http: Some(http),
        };
        self.verdict(authorize(&policy.authorization, &req), cfg, "http", ctx)
    }

    /// Same-node delivery through the outbound listener (a meshed local
    /// pod's connection or request to another local pod, steered to 15001,
    /// does not pass 15006 as well): the destination pod's inbound policy is
    /// applied on the outbound side, with the source pod's identity (the
    /// proxy itself vouches for it, as ztunnel's local path does). Same-node
    /// callers the dataplane does not steer to 15001 (unmeshed, or excluded
    /// outbound) reach 15006 and the plain inbound path.
    pub(crate) fn gate_local(
        &self,
        cfg: &CompiledConfig,
        ctx: &ConnCtx,
        dst: SocketAddr,
        http: Option<HttpAttrs<'_>>,
    ) -> Gate {
        if ctx.direction != Direction::Outbound {
            return Gate::Pass;
        }
        let Some(pod) = cfg.pod_by_ip(dst.ip()) else {
            return Gate::Pass;
        };
        let Some(policy) = pod.inbound.clone() else {
            return Gate::Pass;
        };
        let local = ConnCtx {
            peer: ctx.peer,
            dst,
            direction: Direction::Inbound,
            principal: cfg.pod_by_ip(ctx.peer.ip()).map(|p| p.spiffe_id),
            mtls: true,
            local_principal: Some(pod.spiffe_id),
        };
        match http {
            None => self.gate_connection(cfg, &policy, &local, true),
            Some(h) => self.gate_request(cfg, &policy, &local, h),
        }
    }

    /// Counts and logs a verdict. The pod label is built only when there is
    /// something to count (an audit or a deny), not for every allowed request.
    fn verdict(&self, v: Verdict, cfg: &CompiledConfig, protocol: &str, ctx: &ConnCtx) -> Gate {
        let (deny, audited) = match v {
            Verdict::Allow { audited_by } => (None, audited_by),
            Verdict::Deny { policy, audited_by } => (Some(policy), audited_by),
        };
        if deny.is_none() && audited.is_empty() {
            return Gate::Pass;
        }
        let pod = &Self::pod_name(cfg, ctx);
        for a in &audited {
            tracing::info!(peer = %ctx.peer, dst = %ctx.dst, policy = %a, denied = deny.is_some(), "authorization audit");
            self.metrics.authz(a, "audit", pod, protocol);
        }
        match deny {
            None => Gate::Pass,
            Some(policy) => {
                tracing::info!(peer = %ctx.peer, principal = ?ctx.principal, dst = %ctx.dst, %policy, "inbound denied by authorization policy");
                self.stats.authz_denied.fetch_add(1, Ordering::Relaxed);
                self.metrics.authz(&policy, "deny", pod, protocol);
                Gate::Deny(policy)
            }
        }
    }

    fn pod_name(cfg: &CompiledConfig, ctx: &ConnCtx) -> String {
        cfg.pod_by_ip(ctx.dst.ip())
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_else(|| "unknown".into())
    }
}

/// Hands HBONE tunnels to the inbound path: the proxy applies the pod's
/// policy with the peer's verified identity, then delivers from the
/// original client's IP.
pub struct TunnelsToProxy(pub Arc<Proxy>);

impl TunnelsToProxy {
    fn ctx(t: &InboundTunnel) -> ConnCtx {
        let client = t.client.unwrap_or(t.peer_addr.ip());
        ConnCtx {
            peer: SocketAddr::new(client, t.peer_addr.port()),
            dst: t.target,
            direction: Direction::Inbound,
            principal: Some(intern(t.peer.as_str())),
            mtls: true,
            local_principal: Some(intern(t.local_identity.as_str())),
        }
    }
}

impl TunnelHandler for TunnelsToProxy {
    fn admit(&self, t: &InboundTunnel) -> Result<(), String> {
        let Some(cfg) = self.0.snapshot() else {
            return Err("no config served yet".into());
        };
        let ctx = Self::ctx(t);
        let Some(policy) = Proxy::inbound_policy(&cfg, &ctx) else {
            return Ok(());
        };
        // Declared TCP ports are authorized before the tunnel opens (403 on
        // the CONNECT); HTTP and sniffed ports after it, per request.
        let declared_tcp = cfg
            .service_for(t.target)
            .and_then(|s| s.protocol)
            .is_some_and(|p| !p.is_http());
        match self.0.gate_connection(&cfg, &policy, &ctx, declared_tcp) {
            Gate::Pass => Ok(()),
            Gate::Deny(p) => Err(p),
        }
    }

    fn deliver(&self, t: InboundTunnel, io: TunnelStream) {
        let ctx = Self::ctx(&t);
        let proxy = self.0.clone();
        tokio::spawn(async move {
            proxy
                .stats
                .connections_opened
                .fetch_add(1, Ordering::Relaxed);
            proxy.clone().serve_tunnel(io, ctx).await;
            proxy
                .stats
                .connections_closed
                .fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Parses the client address out of a `Forwarded: for=...` value.
pub fn forwarded_for(value: &str) -> Option<IpAddr> {
    value.split([';', ',']).find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        let v = v
            .strip_prefix('[')
            .map_or(v, |r| r.split(']').next().unwrap_or(r));
        v.parse().ok()
    })
}

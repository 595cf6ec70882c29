//! HBONE server (port 15008): terminates mTLS for the pods of this node,
//! learns the client's SPIFFE ID, and proxies each CONNECT stream to its
//! target after the inbound gate (PeerAuthentication/AuthorizationPolicy)
//! agreed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{pipe, TunnelStream, CONN_WINDOW, STREAM_WINDOW};
use crate::identity::{tls, CertStore, SpiffeId};

/// One tunnelled connection as the inbound path sees it.
#[derive(Debug, Clone)]
pub struct InboundTunnel {
    /// The verified identity of the peer that opened the tunnel.
    pub peer: SpiffeId,
    /// The peer's socket address (the remote DPU).
    pub peer_addr: SocketAddr,
    /// The pod identity this server proved to the peer.
    pub local_identity: SpiffeId,
    /// `:authority` of the CONNECT.
    pub target: SocketAddr,
    /// The original client's IP from the CONNECT's `Forwarded: for=` header
    /// (trusted because the peer is authenticated), if sent.
    pub client: Option<std::net::IpAddr>,
}

/// Decides whether a tunnel may reach its target; `Err` carries the name of
/// the policy that refused it (counted and logged).
pub trait InboundGate: Send + Sync {
    fn check(&self, tunnel: &InboundTunnel) -> Result<(), String>;
}

/// Takes over tunnels instead of the server's own TCP connect: dpu-proxy's
/// inbound path (policy with the peer identity, delivery from the original
/// client IP, L7 governance and metrics).
pub trait TunnelHandler: Send + Sync {
    /// Before `200`: `Err(policy)` refuses the CONNECT with `403`.
    fn admit(&self, tunnel: &InboundTunnel) -> Result<(), String>;
    /// After `200`: serve the tunnel's bytes.
    fn deliver(&self, tunnel: InboundTunnel, io: TunnelStream);
}

/// Which targets the server may connect to (the pods of this node).
pub type TargetPolicy = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Counters of the HBONE server.
#[derive(Debug, Default)]
pub struct HboneStats {
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub streams_ok: AtomicU64,
    pub streams_refused: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl HboneStats {
    fn fail(&self, why: String) {
        tracing::info!(reason = %why, "HBONE connection refused");
        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last_failure.lock() {
            *g = Some(why);
        }
    }

    /// The reason of the most recent refused handshake.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|g| g.clone())
    }
}

pub struct HboneServer {
    store: Arc<CertStore>,
    targets: TargetPolicy,
    gate: Option<Arc<dyn InboundGate>>,
    handler: Option<Arc<dyn TunnelHandler>>,
    pub stats: Arc<HboneStats>,
}

impl HboneServer {
    /// `targets` says which CONNECT targets are local pods we may reach.
    pub fn new(store: Arc<CertStore>, targets: TargetPolicy) -> Self {
        Self {
            store,
            targets,
            gate: None,
            handler: None,
            stats: Arc::default(),
        }
    }

    pub fn with_gate(mut self, gate: Arc<dyn InboundGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Tunnels go to `handler` (which applies policy) instead of the gate
    /// and a direct TCP connect.
    pub fn with_handler(mut self, handler: Arc<dyn TunnelHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Serves one accepted connection (e.g. steered to the inbound
    /// listener for `<pod ip>:15008`).
    pub async fn accept_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        self.connection(tcp, peer).await
    }

    /// Accept connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, peer) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move { this.connection(tcp, peer).await });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        // The server proves the identity of the pod the peer dialled
        // (ambient: `<pod-ip>:15008`), found from the original destination.
        let local = match tcp.local_addr() {
            Ok(a) => a,
            Err(e) => return self.stats.fail(format!("{peer}: local address: {e}")),
        };
        let Some(local_id) = self.store.identity_for_ip(local.ip()) else {
            return self
                .stats
                .fail(format!("{peer}: no pod identity for {}", local.ip()));
        };
        let cfg = match tls::server_config(&self.store, local_id.clone()) {
            Ok(c) => c,
            Err(e) => return self.stats.fail(format!("{peer}: TLS config: {e}")),
        };
        let tls = match TlsAcceptor::from(Arc::new(cfg)).accept(tcp).await {
            Ok(t) => t,
            Err(e) => return self.stats.fail(format!("{peer}: TLS handshake: {e}")),
        };
        let peer_id = {
            let (_, conn) = tls.get_ref();
            match conn.peer_certificates().and_then(|c| c.first()) {
                Some(leaf) => match tls::leaf_info(leaf) {
                    Ok(i) => i.spiffe_id,
                    Err(e) => return self.stats.fail(format!("{peer}: client certificate: {e}")),
                },
                None => return self.stats.fail(format!("{peer}: no client certificate")),
            }
        };
        self.stats.handshakes_ok.fetch_add(1, Ordering::Relaxed);
        let mut h2 = match h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
        {
            Ok(h) => h,
            Err(e) => return tracing::debug!(%peer, error = %e, "HBONE h2 handshake failed"),
        };
        while let Some(next) = h2.accept().await {
            let (req, respond) = match next {
                Ok(r) => r,
                Err(e) => return tracing::debug!(%peer, error = %e, "HBONE connection ended"),
            };
            let this = self.clone();
            let tunnel_base = (peer_id.clone(), peer, local_id.clone());
            tokio::spawn(async move { this.stream(req, respond, tunnel_base).await });
        }
    }

    async fn stream(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        (peer, peer_addr, local_identity): (SpiffeId, SocketAddr, SpiffeId),
    ) {
        let refuse = |respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode| {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            let mut resp = Response::new(());
            *resp.status_mut() = status;
            let _ = respond.send_response(resp, true);
        };
        if req.method() != Method::CONNECT {
            return refuse(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        }
        let target: SocketAddr = match req.uri().authority().and_then(|a| a.as_str().parse().ok()) {
            Some(t) => t,
            None => return refuse(&mut respond, StatusCode::BAD_REQUEST),
        };
        if !(self.targets)(target) {
            tracing::info!(%peer, %target, "HBONE target is not a local pod");
            return refuse(&mut respond, StatusCode::FORBIDDEN);
        }
        let client = req
            .headers()
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::proxy::forwarded_for);
        let tunnel = InboundTunnel {
            peer,
            peer_addr,
            local_identity,
            target,
            client,
        };
        if let Some(handler) = &self.handler {
            if let Err(policy) = handler.admit(&tunnel) {
                tracing::info!(peer = %tunnel.peer, %target, %policy, "HBONE tunnel denied by policy");
                return refuse(&mut respond, StatusCode::FORBIDDEN);
            }
            let send = match respond.send_response(Response::new(()), false) {
                Ok(s) => s,
                Err(e) => return tracing::debug!(error = %e, "HBONE stream gone before 200"),
            };
            self.stats.streams_ok.fetch_add(1, Ordering::Relaxed);
            handler.deliver(tunnel, TunnelStream::new(send, req.into_body()));
            return;
        }
        if let Some(gate) = &self.gate {
            if let Err(policy) = gate.check(&tunnel) {
                tracing::info!(peer = %tunnel.peer, %target, %policy, "HBONE tunnel denied by policy");
                return refuse(&mut respond, StatusCode::FORBIDDEN);
            }
        }
        let upstream = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%target, error = %e, "HBONE target unreachable");
                return refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let _ = upstream.set_nodelay(true);
        let send = match respond.send_response(Response::new(()), false) {
            Ok(s) => s,
            Err(e) => return tracing::debug!(error = %e, "HBONE stream gone before 200"),
        };
        self.stats.streams_ok.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = pipe(send, req.into_body(), upstream).await {
            tracing::debug!(%target, error = %e, "HBONE stream ended with error");
        }
    }
}

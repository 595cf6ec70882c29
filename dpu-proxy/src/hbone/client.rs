//! HBONE client: one mTLS + HTTP/2 connection per (source identity,
//! destination identity, dial address), shared by every CONNECT stream
//! between them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Version};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{HboneError, TunnelStream, CONN_WINDOW, STREAM_WINDOW};
use crate::identity::{tls, CertStore, SpiffeId};

/// Connections are pooled per this key. The destination identity is part of
/// it because the server proves one identity per TLS session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: SpiffeId,
    pub dst: SpiffeId,
    pub addr: SocketAddr,
}

pub struct HboneClient {
    store: Arc<CertStore>,
    pool: tokio::sync::Mutex<HashMap<PoolKey, SendRequest<Bytes>>>,
}

impl std::fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneClient").finish_non_exhaustive()
    }
}

impl HboneClient {
    pub fn new(store: Arc<CertStore>) -> Self {
        Self {
            store,
            pool: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Number of pooled connections (for tests and the admin page).
    pub async fn pooled(&self) -> usize {
        self.pool.lock().await.len()
    }

    /// Open a tunnel from `src` to `target` through the HBONE server at
    /// `dial`, which must prove it is `dst`. The returned stream carries the
    /// connection's bytes; dropping or shutting it down half-closes.
    pub async fn connect(
        &self,
        src: &SpiffeId,
        dst: &SpiffeId,
        dial: SocketAddr,
        target: SocketAddr,
    ) -> Result<TunnelStream, HboneError> {
        self.connect_for(src, dst, dial, target, None).await
    }

    /// [`HboneClient::connect`] on behalf of the client at `client`, whose IP
    /// is sent as `Forwarded: for=<ip>` so the server can deliver from it.
    pub async fn connect_for(
        &self,
        src: &SpiffeId,
        dst: &SpiffeId,
        dial: SocketAddr,
        target: SocketAddr,
        client: Option<IpAddr>,
    ) -> Result<TunnelStream, HboneError> {
        let key = PoolKey {
            src: src.clone(),
            dst: dst.clone(),
            addr: dial,
        };
        let mut sender = self.sender(&key, false).await?;
        sender = match sender.ready().await {
            Ok(s) => s,
            // The pooled connection died (GOAWAY, reset, peer restart): redial once.
            Err(_) => self.sender(&key, true).await?.ready().await?,
        };
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(target.to_string());
        if let Some(ip) = client {
            let v = match ip {
                IpAddr::V4(v4) => format!("for={v4}"),
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            req = req.header("forwarded", v);
        }
        let req = req.body(())?;
        let (resp, send) = sender.send_request(req, false)?;
        let resp = resp.await?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                target,
                status: resp.status(),
            });
        }
        Ok(TunnelStream::new(send, resp.into_body()))
    }

    async fn sender(&self, key: &PoolKey, fresh: bool) -> Result<SendRequest<Bytes>, HboneError> {
        let mut pool = self.pool.lock().await;
        if !fresh {
            if let Some(s) = pool.get(key) {
                return Ok(s.clone());
            }
        }
        pool.remove(key);
        let s = self.dial(key).await?;
        pool.insert(key.clone(), s.clone());
        Ok(s)
    }

    async fn dial(&self, key: &PoolKey) -> Result<SendRequest<Bytes>, HboneError> {
        if self.store.get(&key.src).is_none() {
            return Err(HboneError::NoIdentity(key.src.to_string()));
        }
        let cfg = tls::client_config(&self.store, key.src.clone(), key.dst.clone())?;
        let tcp = TcpStream::connect(key.addr)
            .await
            .map_err(|source| HboneError::Connect {
                addr: key.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        // An IP server name: no SNI is sent, as ztunnel does; the server
        // picks its identity from the address it was reached on.
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::IpAddress(key.addr.ip().into()), tcp)
            .await
            .map_err(|source| HboneError::Tls {
                addr: key.addr,
                source,
            })?;
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake(tls)
            .await?;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HBONE client connection closed");
            }
        });
        Ok(sender)
    }
}

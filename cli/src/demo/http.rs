//! A minimal HTTP/1.1 client (hyper) shared by the demo application and the
//! demo's own traffic and metrics scrapes. One request per call on a new
//! connection, or many on a [`Conn`] kept alive.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

/// A kept-alive HTTP/1.1 connection to one address.
pub struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(to: SocketAddr, timeout: Duration) -> Result<Conn> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to))
            .await
            .map_err(|_| anyhow!("connecting to {to}: timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to {to}"))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {to}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send })
    }

    /// Whether the connection can carry another request.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    /// `GET path` with `Host: host` and extra headers.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Reply> {
        let mut req = Request::get(path).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("building GET {path}"))?;
        let exchange = async {
            self.send.ready().await?;
            let resp = self.send.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply {
                status: parts.status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow!("GET http://{host}{path}: no answer within {timeout:?}"))?
            .with_context(|| format!("GET http://{host}{path}"))
    }
}

/// One `GET` on a connection of its own.
pub async fn get(to: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<Reply> {
    let mut c = Conn::open(to, timeout).await?;
    c.get(host, path, &[], timeout).await
}

/// A current-thread runtime for a short piece of async work on this thread.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating a tokio runtime")
}

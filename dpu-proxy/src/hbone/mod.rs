//! HBONE: HTTP/2 CONNECT over mutual TLS on port 15008, Istio ambient's
//! tunnel between node proxies.
//!
//! Wire format: TCP → TLS 1.2/1.3 (both sides present SPIFFE workload
//! certificates, ALPN `h2`) → HTTP/2 → one `CONNECT` stream per proxied
//! connection, the target `ip:port` in `:authority`; `200` opens the tunnel,
//! then the stream's DATA frames carry the connection's bytes and END_STREAM
//! is the half-close.

mod client;
mod server;
mod stream;

pub use client::{HboneClient, PoolKey};
pub use server::{
    HboneServer, HboneStats, InboundGate, InboundTunnel, TargetPolicy, TunnelHandler,
};
pub use stream::TunnelStream;

use std::io;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 windows: larger than the 64 KiB default so one stream can fill a
/// fast link.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONN_WINDOW: u32 = 16 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("CONNECT {target} refused with status {status}")]
    Refused {
        target: std::net::SocketAddr,
        status: http::StatusCode,
    },
    #[error("no certificate for source identity {0}")]
    NoIdentity(String),
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 io"))
    } else {
        io::Error::other(e)
    }
}

/// Copy bytes both ways between a CONNECT stream and `io` until both
/// directions are closed. Returns (bytes stream→io, bytes io→stream).
pub(crate) async fn pipe<T>(
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    io: T,
) -> io::Result<(u64, u64)>
where
    T: AsyncRead + AsyncWrite + Send,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = async {
        let mut n = 0u64;
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_io)?;
            let len = chunk.len();
            wr.write_all(&chunk).await?;
            n += len as u64;
            let _ = recv.flow_control().release_capacity(len);
        }
        wr.shutdown().await?;
        Ok::<u64, io::Error>(n)
    };
    let outbound = async {
        let mut n = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let len = match rd.read(&mut buf).await {
                Ok(l) => l,
                Err(e) => {
                    send.send_reset(h2::Reason::CANCEL);
                    return Err(e);
                }
            };
            if len == 0 {
                send.send_data(Bytes::new(), true).map_err(h2_io)?;
                return Ok::<u64, io::Error>(n);
            }
            let mut off = 0;
            while off < len {
                send.reserve_capacity(len - off);
                let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(c) => c.map_err(h2_io)?,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "HBONE stream closed",
                        ))
                    }
                };
                if cap == 0 {
                    continue;
                }
                let take = cap.min(len - off);
                send.send_data(Bytes::copy_from_slice(&buf[off..off + take]), false)
                    .map_err(h2_io)?;
                off += take;
                n += take as u64;
            }
        }
    };
    // An error in either direction ends both; a clean close waits for both.
    tokio::try_join!(inbound, outbound)
}

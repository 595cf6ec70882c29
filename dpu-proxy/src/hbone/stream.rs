//! One HBONE CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`),
//! read and written directly by the task that uses it (hyper's connection,
//! the TCP copy): no copy task and no in-memory pipe in between, so a
//! request costs no extra task wake-up and no extra copy per direction.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_io;

pub struct TunnelStream {
    send: SendStream<Bytes>,
    /// `None` only while being dropped.
    recv: Option<RecvStream>,
    /// Received bytes not read yet (their window is released on receipt:
    /// nothing more is received until they are read).
    pending: Bytes,
    /// The peer ended its side (END_STREAM, or a reset with NO_ERROR).
    recv_done: bool,
    /// Our END_STREAM was sent.
    send_done: bool,
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> TunnelStream {
        TunnelStream {
            send,
            recv: Some(recv),
            pending: Bytes::new(),
            recv_done: false,
            send_done: false,
        }
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("pending", &self.pending.len())
            .field("recv_done", &self.recv_done)
            .field("send_done", &self.send_done)
            .finish_non_exhaustive()
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed")
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.recv_done {
                return Poll::Ready(Ok(()));
            }
            let Some(recv) = this.recv.as_mut() else {
                return Poll::Ready(Err(closed()));
            };
            match ready!(recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    this.pending = chunk;
                }
                None => this.recv_done = true,
                // The peer closed its side after everything it sent (an
                // h2 server answers RST_STREAM(NO_ERROR) once it has sent
                // END_STREAM): the end of the stream, not an error.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => this.recv_done = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send_done {
            return Poll::Ready(Err(closed()));
        }
        loop {
            // Flow control: write as much as the peer's windows allow now.
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(closed())),
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => {
                    let n = cap.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_io)?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes queued frames out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.send_done {
            this.send_done = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    /// Like closing a socket: our side ends (END_STREAM, not a reset); a
    /// peer that has not ended its side yet is read to its end in the
    /// background, and reset (CANCEL) if it sends more data.
    fn drop(&mut self) {
        if !self.send_done {
            self.send_done = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if self.recv_done || recv.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Data after our close: dropping `recv` resets the stream.
                let _ = recv.data().await;
            });
        }
    }
}

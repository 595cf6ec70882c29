//! Plain TCP proxying with an idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use dpumesh_api::config::LbKind;

use super::inbound::{Gate, Io};
use super::observe::TcpReport;
use super::upstream::HboneTarget;
use super::{ConnCtx, Direction, Flag, Flags, Proxy, UpstreamSource};
use crate::lb;

/// Bytes copied each way, and why the copy ended.
#[derive(Debug)]
pub struct TcpOutcome {
    pub to_upstream: u64,
    pub to_downstream: u64,
    pub idle_timeout: bool,
}

impl Proxy {
    pub(super) async fn proxy_tcp(&self, mut downstream: Io, ctx: ConnCtx) {
        let Some(cfg) = self.snapshot() else {
            return;
        };
        let src = match self.settings.upstream_source {
            UpstreamSource::ClientIp => Some(ctx.peer.ip()),
            UpstreamSource::Kernel => None,
        };
        let mut picked = None;
        let target = match (ctx.direction, cfg.service_for(ctx.dst)) {
            (Direction::Outbound, Some(svc)) => {
                let labels = cfg.pod_by_ip(ctx.peer.ip()).map(|p| &p.labels);
                let Some(route) = svc.tcp_routes.select(labels) else {
                    self.stats.flags[Flag::NoRoute as usize].fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let cluster = route.pick().cluster.clone();
                let hash = (cluster.lb_kind == LbKind::ConsistentHash)
                    .then(|| lb::stable_hash(&ctx.peer.ip()));
                let Some(ep) = cluster.pick(hash) else {
                    self.stats.flags[Flag::NoHealthyUpstream as usize]
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let t = (ep.addr, cluster.connect_timeout, cluster.idle_timeout);
                picked = Some((cluster.clone(), ep.clone()));
                t
            }
            _ => (
                ctx.dst,
                Duration::from_secs(10),
                self.settings.passthrough_idle_timeout,
            ),
        };
        let (addr, connect_timeout, idle) = target;
        let (cluster, ep) = match &picked {
            Some((c, e)) => (Some(&**c), Some(&**e)),
            None => (None, None),
        };
        let pod_ip = match ctx.direction {
            Direction::Outbound => ctx.peer.ip(),
            Direction::Inbound => ctx.dst.ip(),
        };
        let pod_counters = cfg.pod_by_ip(pod_ip).map(|p| p.counters.clone());
        if let Some(c) = &pod_counters {
            match ctx.direction {
                Direction::Outbound => c.tcp_out.fetch_add(1, Ordering::Relaxed),
                Direction::Inbound => c.tcp_in.fetch_add(1, Ordering::Relaxed),
            };
        }
        if let Gate::Deny(_) = self.gate_local(&cfg, &ctx, addr, None) {
            downstream.reset();
            return;
        }
        let hbone = match (cluster, ep) {
            (Some(c), Some(e)) => HboneTarget::for_endpoint(&cfg, c, e, ctx.peer.ip()),
            _ => None,
        };
        let mut upstream = match self
            .pool
            .connect_io(
                src,
                addr,
                hbone.as_ref(),
                cluster.map(|c| (c, false, None)),
                connect_timeout,
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(upstream = %addr, error = %e, "tcp upstream connect failed");
                if hbone.is_some() {
                    // Refused by the remote side (policy) or unreachable:
                    // the client sees a reset, as with a sidecar.
                    downstream.reset();
                }
                self.stats.flags[Flag::UpstreamConnectionFailure as usize]
                    .fetch_add(1, Ordering::Relaxed);
                let mut flags = Flags::default();
                flags.set(Flag::UpstreamConnectionFailure);
                TcpReport::open(self, &cfg, ctx, cluster, ep, flags).close(self, 0, 0);
                return;
            }
        };
        let report = TcpReport::open(self, &cfg, ctx, cluster, ep, Flags::default());
        drop(cfg);
        let outcome = copy_with_idle_timeout(&mut downstream, &mut upstream, idle).await;
        report.close(self, outcome.to_downstream, outcome.to_upstream);
        if let Some(c) = &pod_counters {
            let (out, inn) = match ctx.direction {
                Direction::Outbound => (outcome.to_upstream, outcome.to_downstream),
                Direction::Inbound => (outcome.to_downstream, outcome.to_upstream),
            };
            c.bytes_out.fetch_add(out, Ordering::Relaxed);
            c.bytes_in.fetch_add(inn, Ordering::Relaxed);
        }
        let s = &self.stats;
        s.tcp_bytes_to_upstream
            .fetch_add(outcome.to_upstream, Ordering::Relaxed);
        s.tcp_bytes_to_downstream
            .fetch_add(outcome.to_downstream, Ordering::Relaxed);
        if outcome.idle_timeout {
            s.tcp_idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies both ways until both sides close, an error, or `idle` passes
/// without a byte in either direction.
pub async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B, idle: Duration) -> TcpOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut ta = Activity {
        inner: a,
        start,
        last: last.clone(),
        read: 0,
    };
    let mut tb = Activity {
        inner: b,
        start,
        last: last.clone(),
        read: 0,
    };
    let watchdog = async {
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + seen + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let idle_timeout = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut ta, &mut tb) => false,
        _ = watchdog => true,
    };
    // Bytes read from one side are the bytes written to the other (an
    // error or the idle timeout may leave the last read unwritten).
    TcpOutcome {
        to_upstream: ta.read,
        to_downstream: tb.read,
        idle_timeout,
    }
}

/// Stamps the time of the last byte read.
struct Activity<'a, T> {
    inner: &'a mut T,
    start: Instant,
    last: Arc<AtomicU64>,
    read: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.read += (buf.filled().len() - before) as u64;
            let ms = self.start.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

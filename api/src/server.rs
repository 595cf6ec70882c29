//! What every control gRPC server of dpumesh shares: how it accepts
//! connections and when it stops.

use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// Accepted connections of a control server, with Nagle's algorithm off:
/// control RPCs are small request/response exchanges, and a reply held back
/// for a delayed ACK costs tens of milliseconds (it set the CNI's ADD p99).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on a control connection");
            }
        })
    })
}

/// Completes on SIGTERM or SIGINT (what a container runtime and an operator's
/// Ctrl-C send), so a server can drain and exit 0.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the signal's default action ends the process anyway.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT, shutting down"),
    }
}

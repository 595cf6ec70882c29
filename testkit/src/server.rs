//! A real HTTP server in a pod that records who reached it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dpumesh_sim::Netns;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::runtime;

/// One request a [`PodServer`] received: (peer ip, local port, method, path).
pub type Seen = (IpAddr, u16, String, String);

#[derive(Default)]
struct Log {
    connections: Vec<SocketAddr>,
    requests: Vec<Seen>,
}

/// A real HTTP/1.1 + h2c server (hyper, auto-detected) in a pod, on one or
/// more ports of 0.0.0.0: answers every request 200 with
/// `served by <name> to <peer ip>`, and records every accepted connection's
/// peer and every request. Stopped (and its thread joined) on drop.
pub struct PodServer {
    log: Arc<Mutex<Log>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodServer {
    /// Serves `port` in `ns`.
    pub fn start(ns: &Netns, name: &'static str, port: u16) -> PodServer {
        PodServer::start_ports(ns, name, &[port])
    }

    /// Serves every port of `ports` in `ns`; panics if one cannot be bound.
    pub fn start_ports(ns: &Netns, name: &'static str, ports: &[u16]) -> PodServer {
        let listeners: Vec<std::net::TcpListener> = ports
            .iter()
            .map(|&port| {
                let l = ns
                    .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
                    .expect("netns")
                    .expect("bind the pod server");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let log = Arc::new(Mutex::new(Log::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let record = log.clone();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                for l in listeners {
                    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        loop {
                            // Errors (e.g. too many open files) are retried.
                            let Ok(x) = l.accept().await else { continue };
                            if tx.send(x).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = &mut stopped => return,
                        r = rx.recv() => match r { Some(x) => x, None => return },
                    };
                    if let Ok(mut log) = record.lock() {
                        log.connections.push(peer);
                    }
                    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                    let record = record.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            if let Ok(mut log) = record.lock() {
                                log.requests.push((
                                    peer.ip(),
                                    port,
                                    req.method().to_string(),
                                    req.uri().path().to_string(),
                                ));
                            }
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                    "served by {name} to {}",
                                    peer.ip()
                                )))))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        });
        PodServer {
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// How many connections were accepted.
    pub fn hits(&self) -> usize {
        self.log.lock().map(|l| l.connections.len()).unwrap_or(0)
    }

    /// The peer address of every accepted connection, in order.
    pub fn peer_ips(&self) -> Vec<IpAddr> {
        self.log
            .lock()
            .map(|l| l.connections.iter().map(|a| a.ip()).collect())
            .unwrap_or_default()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.log
            .lock()
            .map(|l| l.requests.clone())
            .unwrap_or_default()
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

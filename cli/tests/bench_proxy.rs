//! `dpumesh bench proxy --quick --json` end to end: every case is measured
//! (each system carried real traffic) and the last line is the summary.

mod common;

use common::{quick_bench, Down};
use dpumesh_sim::{leftovers, unique_cluster};

#[test]
fn quick_proxy_bench_measures_every_case_and_ends_with_json() {
    let cluster = unique_cluster("bpxt");
    let _down = Down(cluster.clone());
    let run = quick_bench("proxy", &["--cluster", &cluster]);
    let (v, last, stdout) = (&run.summary, &run.last, &run.stdout);
    let cases = v["cases"].as_array().expect("cases");
    for name in ["direct", "dpumesh", "envoy", "haproxy"] {
        for protocol in ["http1", "http2"] {
            let c = cases
                .iter()
                .find(|c| c["name"] == name && c["protocol"] == protocol)
                .unwrap_or_else(|| panic!("case {name} {protocol} missing: {last}"));
            assert!(c["rps"].as_f64().is_some_and(|r| r > 0.0), "{c}");
            assert!(c["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{c}");
            assert!(c["connections"].as_u64().is_some_and(|n| n > 0), "{c}");
            if name == "direct" {
                assert!(c["cpu_s_per_req"].is_null() && c["rss_mb"].is_null(), "{c}");
            } else {
                assert!(c["cpu_s_per_req"].as_f64().is_some(), "{c}");
                assert!(c["rss_mb"].as_f64().is_some_and(|m| m > 0.0), "{c}");
            }
            if name == "dpumesh" {
                assert!(
                    c["rss_mb_100pods_1000svc"]
                        .as_f64()
                        .is_some_and(|m| m > 0.0),
                    "{c}"
                );
            }
        }
    }
    // The table came before the JSON.
    assert!(stdout.contains("req/s"), "{stdout}");
    let left = leftovers(&cluster).expect("list leftovers");
    assert!(left.is_empty(), "bench left behind: {left:?}");
}

/// A bench killed while its cluster is up (SIGTERM, as `kill` or a CI
/// timeout sends) tears the cluster down and exits 143: no netns, process or
/// pin is left behind.
#[test]
fn a_bench_killed_with_sigterm_leaves_nothing_behind() {
    let cluster = unique_cluster("bpxk");
    let _down = Down(cluster.clone());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dpumesh"))
        .args(["bench", "proxy", "--quick", "--cluster", &cluster])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the bench");
    // Wait until the cluster is up (its netns exist).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while leftovers(&cluster).expect("leftovers").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench never brought its cluster up"
        );
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the bench exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("tearing cluster"), "{stderr}");
    let left = leftovers(&cluster).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

//! `dpumesh bench proxy --quick --json` end to end: every case is measured
//! (each system carried real traffic) and the last line is the summary.

use std::process::Command;

use dpumesh_sim::{leftovers, unique_cluster};

const BIN: &str = env!("CARGO_BIN_EXE_dpumesh");

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = dpumesh_sim::down(&self.0) {
            eprintln!("cleanup of {} failed: {e}", self.0);
        }
    }
}

#[test]
fn quick_proxy_bench_measures_every_case_and_ends_with_json() {
    let cluster = unique_cluster("bpxt");
    let _down = Down(cluster.clone());
    let out = Command::new(BIN)
        .args(["bench", "proxy", "--quick", "--json", "--cluster", &cluster])
        .output()
        .expect("run dpumesh bench proxy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{stderr}\n(it needs the workspace binaries and the venv's Envoy: \
         cargo build --workspace --bins; scripts/setup.sh)"
    );
    let last = stdout.lines().last().expect("some output");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(v["scenario"], "proxy");
    assert!(v["machine"]["cpus"].as_u64().is_some_and(|n| n > 0), "{v}");
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

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

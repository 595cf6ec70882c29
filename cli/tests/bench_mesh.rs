//! `dpumesh bench mesh --quick --json` end to end: the three ways (no mesh,
//! Envoy sidecars, dpumesh) each carried real traffic on a 2-node simulated
//! cluster, and the last line is the summary of shared/brief/bench-json.md.

mod common;

use common::{quick_bench, Down};
use dpumesh_sim::{leftovers, unique_cluster};

#[test]
fn quick_mesh_bench_measures_the_three_ways_and_ends_with_json() {
    let cluster = unique_cluster("bmst");
    let _down = Down(cluster.clone());
    let run = quick_bench("mesh", &["--cluster", &cluster]);
    let (v, last) = (&run.summary, &run.last);
    assert!(
        v["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("dpumesh bench mesh")),
        "{v}"
    );
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3, "{last}");
    for name in ["direct", "envoy-sidecar", "dpumesh"] {
        let c = cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("case {name} missing: {last}"));
        assert!(c["rps"].as_f64().is_some_and(|r| r > 0.0), "{c}");
        for p in ["p50_ms", "p90_ms", "p99_ms"] {
            assert!(c[p].as_f64().is_some_and(|x| x > 0.0), "{p}: {c}");
        }
        for k in ["host_cpu_s", "dpu_cpu_s", "app_cpu_s"] {
            assert!(c[k].as_f64().is_some_and(|x| x >= 0.0), "{k}: {c}");
        }
        if name == "direct" {
            assert!(
                c["cpu_s_per_req"].is_null() && c["mem_per_pod_kb"].is_null(),
                "{c}"
            );
        } else {
            assert!(c["cpu_s_per_req"].as_f64().is_some(), "{c}");
            assert!(c["rss_mb"].as_f64().is_some_and(|m| m > 0.0), "{c}");
            assert!(c["mem_per_pod_kb"].as_f64().is_some(), "{c}");
        }
    }
    // The sidecars do their work on the host side; a sidecar costs megabytes.
    let sidecar = cases
        .iter()
        .find(|c| c["name"] == "envoy-sidecar")
        .expect("sidecar");
    assert!(
        sidecar["host_cpu_s"].as_f64().is_some_and(|x| x > 0.0),
        "{sidecar}"
    );
    assert!(
        sidecar["mem_per_pod_kb"]
            .as_f64()
            .is_some_and(|x| x > 1000.0),
        "{sidecar}"
    );
    let mesh = cases
        .iter()
        .find(|c| c["name"] == "dpumesh")
        .expect("dpumesh");
    assert!(mesh["goals"].is_object(), "{mesh}");
    assert!(mesh["proxy_rss_kb_by_pods"].is_object(), "{mesh}");
    assert!(leftovers(&cluster).expect("leftovers").is_empty());
}

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
    assert_eq!(mesh["dpumesh_layer"], "l7", "{mesh}");
    assert!(leftovers(&cluster).expect("leftovers").is_empty());
}

/// `--l4` declares the service `tcp` for the dpumesh way: the bench only
/// succeeds if node 2's dpu-proxy counted the inbound TCP connections under
/// mutual_tls (and no HTTP requests), and it says the comparison is not the
/// issue's.
#[test]
fn l4_mode_relays_the_dpumesh_way_at_l4_and_says_so() {
    let cluster = unique_cluster("bml4");
    let _down = Down(cluster.clone());
    let run = quick_bench("mesh", &["--l4", "--cluster", &cluster]);
    let v = &run.summary;
    assert!(
        v["command"].as_str().is_some_and(|c| c.contains(" --l4")),
        "{v}"
    );
    let cases = v["cases"].as_array().expect("cases");
    let mesh = cases
        .iter()
        .find(|c| c["name"] == "dpumesh")
        .expect("dpumesh");
    assert_eq!(mesh["dpumesh_layer"], "l4", "{mesh}");
    assert!(
        mesh["goals"].is_null(),
        "no goal verdicts for L4 vs L7: {mesh}"
    );
    assert!(mesh["rps"].as_f64().is_some_and(|r| r > 0.0), "{mesh}");
    assert!(
        run.stdout.contains("not the issue's comparison"),
        "{}",
        run.stdout
    );
    assert!(leftovers(&cluster).expect("leftovers").is_empty());
}

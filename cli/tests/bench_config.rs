//! `dpumesh bench config --quick --json`: the adapter's library builds a
//! NodeConfig from a synthetic istiod-shaped xDS set, the real adapter pushes
//! route-weight changes to a real dpu-proxy, and the NodeConfig grows with
//! pods + services, not pods x services. Checks behaviour, not timings.

mod common;

use common::quick_bench;
use serde_json::Value;

#[test]
fn quick_json_reports_build_push_and_sub_multiplicative_size() {
    let run = quick_bench("config", &[]);
    let case = |name: &str| run.case(name);
    let num = |c: &Value, f: &str| c[f].as_f64().unwrap_or(0.0);

    let build = case("dpumesh-build");
    for f in ["build_ms", "peak_rss_growth_mb", "config_bytes", "clusters"] {
        assert!(num(build, f) > 0.0, "{f} in {build}");
    }
    // 3 clusters (default, v1, v2) per service.
    assert_eq!(
        num(build, "clusters"),
        3.0 * num(build, "services"),
        "{build}"
    );

    let push = case("dpumesh-push");
    assert_eq!(push["pushes"], 20, "{push}");
    for f in ["push_p50_ms", "push_p99_ms"] {
        assert!(num(push, f) > 0.0, "{f} in {push}");
    }
    assert!(num(push, "push_p99_ms") >= num(push, "push_p50_ms"));

    let size = case("dpumesh-size");
    let grid = size["grid"].as_array().expect("grid");
    assert_eq!(grid.len(), 9, "{size}");
    let bytes = |p: u64, s: u64| {
        grid.iter()
            .find(|g| g["pods"] == p && g["services"] == s)
            .and_then(|g| g["config_bytes"].as_f64())
            .unwrap_or_else(|| panic!("no cell {p}x{s} in {size}"))
    };
    // Grows with both...
    assert!(bytes(40, 50) > bytes(10, 50));
    assert!(bytes(10, 200) > bytes(10, 100));
    // ...but not with their product: 4x the pods and 4x the services (16x the
    // product) make well under 16x the bytes, and the pods' extra bytes do not
    // depend on the number of services (additive, within 10 %).
    let growth = bytes(40, 200) / bytes(10, 50);
    assert!(growth < 8.0, "size grew x{growth}: {size}");
    let per_pods_small = bytes(40, 50) - bytes(10, 50);
    let per_pods_large = bytes(40, 200) - bytes(10, 200);
    assert!(
        (per_pods_large - per_pods_small).abs() <= 0.1 * per_pods_small,
        "the pods' bytes depend on the services: {per_pods_small} vs {per_pods_large}"
    );
}

//! `dpumesh bench mtls --quick --json` on a real two-node simulator cluster
//! (eBPF dataplane, dpu-proxy per DPU): both latency cases ran at a nonzero
//! rate, the mTLS case went over HBONE (tunnels opened, node 2 saw mutual_tls)
//! and the plaintext case did not; HBONE connections were opened.

mod common;

use common::quick_bench;

#[test]
fn quick_json_has_both_cases_and_mtls_went_over_hbone() {
    let run = quick_bench("mtls", &[]);
    let case = |name: &str| run.case(name);
    let plain = case("dpumesh-plaintext");
    let mtls = case("dpumesh-mtls");
    for c in [plain, mtls] {
        assert!(c["rps"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
        assert!(c["p99_ms"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
    }
    assert_eq!(plain["tls"], "DISABLE");
    assert_eq!(plain["hbone_upstream"], 0, "{plain}");
    assert_eq!(plain["connection_security_policy"], "none");
    assert!(plain["node2_inbound_requests"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(mtls["tls"], "ISTIO_MUTUAL");
    assert!(mtls["hbone_upstream"].as_u64().unwrap_or(0) > 0, "{mtls}");
    assert_eq!(mtls["connection_security_policy"], "mutual_tls");
    assert!(mtls["node2_inbound_requests"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(mtls["p99_overhead_pct"].is_number(), "{mtls}");
    let hs = case("dpumesh-hbone-handshake");
    assert!(hs["rps"].as_f64().unwrap_or(0.0) > 0.0, "{hs}");
    assert!(hs["handshakes_ok"].as_u64().unwrap_or(0) > 0, "{hs}");
}

//! `dpumesh bench mtls --quick --json` on a real two-node simulator cluster
//! (eBPF dataplane, dpu-proxy per DPU): both latency cases ran at a nonzero
//! rate, the mTLS case went over HBONE (tunnels opened, node 2 saw mutual_tls)
//! and the plaintext case did not; HBONE connections were opened.

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_json_has_both_cases_and_mtls_went_over_hbone() {
    let out = Command::new(env!("CARGO_BIN_EXE_dpumesh"))
        .args(["bench", "mtls", "--quick", "--json"])
        .output()
        .expect("run dpumesh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dpumesh bench mtls failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stdout.lines().last().expect("some output");
    let v: Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["scenario"], "mtls");
    let cases = v["cases"].as_array().expect("cases");
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {last}"))
    };
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

//! `dpumesh demo` end to end, non-interactively: it must succeed, show what it
//! promises, and leave nothing behind.

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
fn demo_runs_to_the_end_and_cleans_up() {
    let cluster = unique_cluster("demo");
    let _down = Down(cluster.clone());
    let out = Command::new(BIN)
        .args(["demo", "--cluster", &cluster])
        .output()
        .expect("run dpumesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{stderr}\n(the demo needs the workspace binaries: cargo build --workspace --bins)"
    );
    // Both components answered on both nodes, pushes were acknowledged, the
    // broken config was refused with its reasons.
    assert_eq!(stdout.matches("dataplane  ready=").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("dpu-proxy  ready=").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("-> Ack, serving version 1").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("NACK, still serving version 1"), "{stdout}");
    assert!(
        stdout.contains(r#"pods[0].ips[0]: "10.0.0.300" is not an IP address"#),
        "{stdout}"
    );
    assert!(stdout.contains("demo finished"), "{stdout}");
    let left = leftovers(&cluster).expect("list leftovers");
    assert!(left.is_empty(), "demo left behind: {left:?}");
}

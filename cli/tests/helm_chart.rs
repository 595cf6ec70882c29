//! The Helm chart (charts/dpumesh) linted and rendered by the real Helm v4 engine
//! (PyPI `helm-python-sdk`, installed into `.venv` by scripts/setup.sh) in both modes;
//! the checks themselves are in scripts/helm_check.py.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run scripts/setup.sh (it installs helm-python-sdk into .venv)",
        py.display()
    );
    py
}

#[test]
fn chart_lints_and_renders_in_dpu_and_host_mode() {
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("scripts/helm_check.py"))
        .arg(root.join("charts/dpumesh"))
        .output()
        .expect("running scripts/helm_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helm_check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("helm_check prints JSON");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert!(report["helm_sdk"]
        .as_str()
        .unwrap_or_default()
        .starts_with("v4"));
    assert!(
        report["objects_dpu"].as_u64().unwrap_or(0) > report["objects_host"].as_u64().unwrap_or(0)
    );
}

/// The checker is not a rubber stamp: a chart whose CNI installer runs the wrong binary
/// and whose ClusterRole lacks leases must fail it, naming both.
#[test]
fn chart_check_fails_on_a_broken_chart() {
    let root = repo_root();
    let tmp = std::env::temp_dir().join(format!("dpumesh-chart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("cp")
        .arg("-r")
        .arg(root.join("charts/dpumesh"))
        .arg(&tmp)
        .status()
        .expect("cp");
    assert!(status.success());
    let edit = |file: &str, from: &str, to: &str| {
        let p = tmp.join(file);
        let text = std::fs::read_to_string(&p).expect("read template");
        assert!(text.contains(from), "{file} lacks {from}");
        std::fs::write(&p, text.replace(from, to)).expect("write template");
    };
    edit("templates/controller.yaml", "[leases]", "[configmaps]");
    edit(
        "templates/node.yaml",
        "command: [\"dpumesh-cni-install\"]",
        "command: [\"dpumesh-cni\"]",
    );
    let out = Command::new(python())
        .arg(root.join("scripts/helm_check.py"))
        .arg(&tmp)
        .output()
        .expect("running scripts/helm_check.py");
    let _ = std::fs::remove_dir_all(&tmp);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a broken chart passed:\n{stdout}");
    assert!(stdout.contains("leases"), "{stdout}");
    assert!(stdout.contains("installer command"), "{stdout}");
}

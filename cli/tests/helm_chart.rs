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

/// Every flag and environment variable the chart gives a container exists in that
/// binary: checked against the real binaries' `--help` (built next to `dpumesh`).
#[test]
fn chart_flags_and_env_exist_in_the_binaries() {
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("scripts/helm_check.py"))
        .arg(root.join("charts/dpumesh"))
        .output()
        .expect("running scripts/helm_check.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("helm_check prints JSON");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_dpumesh"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let commands = report["commands"].as_array().expect("commands");
    assert!(commands.len() >= 10, "{commands:?}");
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut checked = 0;
    for c in commands {
        let what = format!("{} {} {}", c["mode"], c["object"], c["container"]);
        let command = strs(&c["command"]);
        let args = strs(&c["args"]);
        let program = bin_dir.join(command.first().expect("a command"));
        assert!(
            program.exists(),
            "{what}: {} missing: cargo build --workspace --bins",
            program.display()
        );
        // `dpumesh-controller --log-level=x controller ...`: the subcommand's help.
        let sub: Vec<&String> = args
            .iter()
            .filter(|a| !a.starts_with("--"))
            .take(1)
            .collect();
        let help = Command::new(&program)
            .args(sub.iter().map(|s| s.as_str()))
            .arg("--help")
            .output()
            .expect("--help");
        assert!(help.status.success(), "{what}: --help failed");
        let help = String::from_utf8_lossy(&help.stdout);
        for a in args.iter().filter(|a| a.starts_with("--")) {
            let flag = a.split('=').next().unwrap_or_default();
            assert!(
                has_flag(&help, flag),
                "{what}: {} has no {flag}:\n{help}",
                program.display()
            );
            checked += 1;
        }
        for e in strs(&c["env"]) {
            let used_in_args = args.iter().any(|a| a.contains(&format!("$({e})")));
            assert!(
                used_in_args || help.contains(&e),
                "{what}: env {e} is neither used in args nor read by {}",
                program.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} flags/env checked");
}

/// `flag` as a whole word of `help` (`--node` does not match `--node-id`).
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        !help[i + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn has_flag_matches_whole_flags_only() {
    let help = "  --node-id <ID>\n  --mgmt-addr <A>\n";
    assert!(has_flag(help, "--node-id"));
    assert!(has_flag(help, "--mgmt-addr"));
    assert!(!has_flag(help, "--node"));
    assert!(!has_flag(help, "--mgmt"));
}

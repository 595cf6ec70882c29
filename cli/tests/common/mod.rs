//! Shared by the bench tests: run `dpumesh bench <scenario> --quick --json`,
//! require success, and return its summary line (shared/brief/bench-json.md).
// Each test crate uses a part of it.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// Removes a simulator cluster when dropped, also when the test panics.
pub struct Down(pub String);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = dpumesh_sim::down(&self.0) {
            eprintln!("cleanup of {} failed: {e}", self.0);
        }
    }
}

/// What a quick bench run printed: the parsed last line, that line, all stdout.
pub struct BenchRun {
    pub summary: Value,
    pub last: String,
    pub stdout: String,
}

impl BenchRun {
    /// The case named `name` in the summary's `cases`.
    pub fn case(&self, name: &str) -> &Value {
        self.cases()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {}", self.last))
    }

    pub fn cases(&self) -> &Vec<Value> {
        self.summary["cases"].as_array().expect("cases")
    }
}

/// Runs `dpumesh bench <scenario> --quick --json <extra...>`; fails the test
/// unless it succeeds and its last line is the summary of `scenario`.
pub fn quick_bench(scenario: &str, extra: &[&str]) -> BenchRun {
    let out = Command::new(env!("CARGO_BIN_EXE_dpumesh"))
        .args(["bench", scenario, "--quick", "--json"])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run dpumesh bench {scenario}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dpumesh bench {scenario} failed:\n{stdout}\n{stderr}\n(it needs the workspace binaries \
         and the venv's Envoy: cargo build --workspace --bins; scripts/setup.sh)"
    );
    let last = stdout.lines().last().expect("some output").to_string();
    let summary: Value = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {last}"));
    assert_eq!(summary["scenario"], scenario);
    assert!(
        summary["machine"]["cpus"].as_u64().is_some_and(|n| n > 0),
        "{summary}"
    );
    BenchRun {
        summary,
        last,
        stdout,
    }
}

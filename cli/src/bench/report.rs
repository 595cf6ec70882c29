//! The benchmark summary: a table for people, and the one-line JSON object of
//! `shared/brief/bench-json.md` for scripts (always the last line of output).

use serde::Serialize;
use serde_json::{Map, Value};

/// One system carrying one workload (`direct`, `dpumesh`, `envoy`, `haproxy`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub name: String,
    pub protocol: String,
    pub connections: u32,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU seconds of the system under test (proxy) per request; `None` when no proxy.
    pub cpu_s_per_req: Option<f64>,
    /// Resident memory of the system under test, MB; `None` when no proxy.
    pub rss_mb: Option<f64>,
    /// Scenario-specific fields (e.g. `host_cpu_s`, `dpu_cpu_s`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub note: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus,
            kernel,
            note: "shared VM".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub machine: Machine,
    pub command: String,
    pub cases: Vec<Case>,
}

impl Summary {
    /// The single JSON line that ends `dpumesh bench <scenario> --json`.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A fixed-width table of the cases.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<16} {:<6} {:>5} {:>10} {:>8} {:>8} {:>8} {:>12} {:>8}\n",
            "case", "proto", "conns", "req/s", "p50 ms", "p90 ms", "p99 ms", "cpu µs/req", "rss MB"
        );
        let opt = |v: Option<f64>, scale: f64, prec: usize| match v {
            Some(v) => format!("{:.*}", prec, v * scale),
            None => "-".to_string(),
        };
        for c in &self.cases {
            out.push_str(&format!(
                "{:<16} {:<6} {:>5} {:>10.0} {:>8} {:>8} {:>8} {:>12} {:>8}\n",
                c.name,
                c.protocol,
                c.connections,
                c.rps,
                opt(c.p50_ms, 1.0, 3),
                opt(c.p90_ms, 1.0, 3),
                opt(c.p99_ms, 1.0, 3),
                opt(c.cpu_s_per_req, 1e6, 1),
                opt(c.rss_mb, 1.0, 1),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_documented_shape() {
        let s = Summary {
            scenario: "proxy".into(),
            machine: Machine {
                cpus: 2,
                kernel: "6.1".into(),
                note: "shared VM".into(),
            },
            command: "dpumesh bench proxy --json".into(),
            cases: vec![Case {
                name: "direct".into(),
                protocol: "http1".into(),
                connections: 16,
                rps: 61000.0,
                p50_ms: Some(0.21),
                p90_ms: Some(0.4),
                p99_ms: Some(0.88),
                cpu_s_per_req: None,
                rss_mb: None,
                extra: Map::new(),
            }],
        };
        let line = s.json_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["scenario"], "proxy");
        assert_eq!(v["machine"]["cpus"], 2);
        assert_eq!(v["cases"][0]["name"], "direct");
        assert!(v["cases"][0]["cpu_s_per_req"].is_null());
        assert_eq!(v["cases"][0]["p99_ms"], 0.88);
    }
}

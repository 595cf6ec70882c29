//! Closed-loop load generation with h2load (nghttp2), for HTTP/1.1 and HTTP/2 alike,
//! with latency percentiles computed from its per-request log.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    pub fn label(self) -> &'static str {
        match self {
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub url: String,
    pub version: HttpVersion,
    pub connections: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Run the client inside this network namespace (a pod's), if any.
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub succeeded_2xx: u64,
    /// Answers with a 3xx, 4xx or 5xx status.
    pub non_2xx: u64,
    pub failed: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// Runs h2load as described and returns throughput and latency percentiles.
pub fn run(spec: &LoadSpec, scratch: &Path) -> Result<LoadResult> {
    run_with(spec, scratch, &[])
}

/// [`run`] with more h2load arguments (e.g. `--rps=N` for a paced, open-loop rate).
pub(crate) fn run_with(spec: &LoadSpec, scratch: &Path, extra: &[String]) -> Result<LoadResult> {
    let log = scratch.join(format!("h2load-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "h2load"]);
            c
        }
        None => Command::new("h2load"),
    };
    if spec.version == HttpVersion::Http1 {
        cmd.arg("--h1");
    }
    cmd.arg(format!("--clients={}", spec.connections))
        .arg("--threads=1")
        .arg("--max-concurrent-streams=1")
        // h2load takes whole numbers with a unit ("0.3" is refused).
        .arg(format!("--duration={}ms", spec.duration.as_millis().max(1)))
        .arg(format!("--warm-up-time={}ms", spec.warmup.as_millis()))
        .arg(format!("--log-file={}", log.display()))
        .args(extra)
        .arg(&spec.url);
    let out = cmd
        .output()
        .context("running h2load (package nghttp2-client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load against {} failed: {}{}",
            spec.url,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut result = parse_summary(&stdout)?;
    let mut latencies_us = read_latencies(&log)?;
    let _ = std::fs::remove_file(&log);
    if latencies_us.is_empty() {
        bail!("h2load logged no requests against {}:\n{stdout}", spec.url);
    }
    latencies_us.sort_unstable();
    result.p50_ms = percentile(&latencies_us, 50.0) / 1000.0;
    result.p90_ms = percentile(&latencies_us, 90.0) / 1000.0;
    result.p99_ms = percentile(&latencies_us, 99.0) / 1000.0;
    Ok(result)
}

impl LoadResult {
    /// A measurement counts only if (nearly) every request got a 2xx: a proxy
    /// that answers errors fast must not look fast. Up to 0.1 % of
    /// non-2xx/failed requests are tolerated (a connection reset at the end).
    pub fn require_ok(&self) -> Result<()> {
        if self.succeeded_2xx == 0 || self.rps <= 0.0 {
            bail!("no successful request: {self:?}");
        }
        let bad = self.non_2xx + self.failed;
        let all = self.succeeded_2xx + bad;
        if bad as f64 > all as f64 * 0.001 {
            bail!(
                "{bad} of {all} requests failed or got a non-2xx answer \
                 ({} non-2xx, {} failed): {self:?}",
                self.non_2xx,
                self.failed
            );
        }
        Ok(())
    }
}

/// Parses h2load's summary: "finished in ..., N req/s, ..." and the request counts.
pub fn parse_summary(stdout: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut seen_rps = false;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            if let Some(rps) = rest
                .split(", ")
                .find_map(|f| f.strip_suffix(" req/s"))
                .and_then(|v| v.trim().parse::<f64>().ok())
            {
                r.rps = rps;
                seen_rps = true;
            }
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                let mut it = part.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "total" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.failed += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            for part in rest.split(", ") {
                let Some((n, class)) = part.trim().split_once(' ') else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match class {
                    "2xx" => r.succeeded_2xx = n,
                    "3xx" | "4xx" | "5xx" => r.non_2xx += n,
                    _ => {}
                }
            }
        }
    }
    if !seen_rps {
        bail!("could not read the request rate from h2load's output:\n{stdout}");
    }
    Ok(r)
}

/// Third column of h2load's log: microseconds until the end of the response.
fn read_latencies(log: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading h2load log {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split('\t').nth(2))
        .filter_map(|v| v.trim().parse().ok())
        .collect())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
finished in 35.65ms, 561.04 req/s, 25.64KB/s
requests: 20 total, 20 started, 18 done, 18 succeeded, 2 failed, 0 errored, 1 timeout
status codes: 17 2xx, 0 3xx, 0 4xx, 1 5xx
";

    #[test]
    fn parses_h2load_summary() {
        let r = parse_summary(SAMPLE).expect("parses");
        assert_eq!(r.rps, 561.04);
        assert_eq!(r.requests, 20);
        assert_eq!(r.failed, 3);
        assert_eq!(r.succeeded_2xx, 17);
        assert_eq!(r.non_2xx, 1);
        assert!(r.require_ok().is_err());
    }

    #[test]
    fn errors_fail_a_measurement() {
        let ok = parse_summary(
            "finished in 1s, 1000.00 req/s, 1KB/s\n\
             requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored, 0 timeout\n\
             status codes: 1000 2xx, 0 3xx, 0 4xx, 0 5xx\n",
        )
        .expect("parses");
        assert!(ok.require_ok().is_ok());
        let fast_503s = parse_summary(
            "finished in 1s, 9000.00 req/s, 1KB/s\n\
             requests: 9000 total, 9000 started, 9000 done, 9000 succeeded, 0 failed, 0 errored, 0 timeout\n\
             status codes: 1000 2xx, 0 3xx, 0 4xx, 8000 5xx\n",
        )
        .expect("parses");
        assert!(fast_503s.require_ok().is_err());
    }

    #[test]
    fn rejects_output_without_rate() {
        assert!(parse_summary("connect failed\n").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
    }
}

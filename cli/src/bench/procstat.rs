//! CPU time and memory of the processes under test, read from /proc.

use std::collections::BTreeSet;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) and resident set of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kb: u64,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status; `None` when the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / USER_HZ,
        rss_kb,
    })
}

/// (anonymous, file-backed) resident KB of one process (`RssAnon`,
/// `RssFile` of /proc/<pid>/status): heap and stacks vs the binary's and
/// libraries' pages.
pub fn rss_split_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("RssAnon:")?, field("RssFile:")?))
}

/// Sum over a set of processes (processes that exited count as zero).
pub fn sample_all(pids: &BTreeSet<u32>) -> ProcSample {
    pids.iter()
        .filter_map(|&p| sample(p))
        .fold(ProcSample::default(), |a, s| ProcSample {
            cpu_s: a.cpu_s + s.cpu_s,
            rss_kb: a.rss_kb + s.rss_kb,
        })
}

/// PIDs of every process whose network namespace is the named one (`ip netns pids`).
pub fn netns_pids(netns: &str) -> BTreeSet<u32> {
    std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        // Burn a little CPU so the counter is non-zero.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0);
        assert!(s.cpu_s > 0.0, "cpu {} after busy loop {x}", s.cpu_s);
        assert!(sample(u32::MAX).is_none());
    }
}

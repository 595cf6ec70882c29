//! RAII for tests: the cluster goes down when the guard drops, also on panic.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::SimConfig;
use crate::error::Result;
use crate::naming::{cluster_prefix, state_dir};
use crate::netns::list_netns;
use crate::Sim;

/// Owns a cluster for the length of a test. `Deref`s to [`Sim`].
#[derive(Debug)]
pub struct SimGuard {
    sim: Sim,
}

impl SimGuard {
    /// Builds the cluster; if building fails, what was built is removed before
    /// the error is returned.
    pub fn up(config: SimConfig) -> Result<SimGuard> {
        let guard = SimGuard {
            sim: Sim::plan(config)?,
        };
        Sim::up(guard.sim.config().clone())?;
        Ok(guard)
    }

    /// Takes ownership of an existing (possibly half-built) cluster: it goes
    /// down when the guard drops.
    pub fn adopt(sim: Sim) -> SimGuard {
        SimGuard { sim }
    }

    pub fn sim(&self) -> &Sim {
        &self.sim
    }
}

impl std::ops::Deref for SimGuard {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        if let Err(e) = self.sim.down() {
            eprintln!(
                "dpumesh-sim: down of cluster {} failed: {e}",
                self.sim.cluster()
            );
        }
    }
}

/// A cluster name no one on this machine uses right now: `prefix` (cut to 4
/// characters) plus 6 characters from the PID, the time and a counter. For
/// tests that run in parallel, within and across processes.
pub fn unique_cluster(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(4)
        .collect();
    let existing = list_netns().unwrap_or_default();
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut x = (std::process::id() as u64) << 32
            ^ (COUNTER.fetch_add(1, Ordering::Relaxed) as u64) << 20
            ^ nanos as u64;
        let mut suffix = String::new();
        for _ in 0..6 {
            let d = (x % 36) as u32;
            suffix.push(std::char::from_digit(d, 36).unwrap_or('0'));
            x /= 36;
        }
        let name = format!("{prefix}{suffix}");
        let p = cluster_prefix(&name);
        if !existing.iter().any(|n| n.starts_with(&p)) && !state_dir(&name).exists() {
            return name;
        }
    }
}

//! Teardown. Works from what exists, not from what `up` finished: the state
//! file (for recorded processes) plus every netns named `dm-<c>-*`, so it also
//! cleans after a crash or an interrupted `up`, and succeeds when nothing exists.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::validate_cluster;
use crate::error::{Result, SimError};
use crate::naming::*;
use crate::netns::{list_netns, Netns};
use crate::process::{self, Target, STOP_GRACE};
use crate::state::{read_state, StateLock};

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub clusters: Vec<String>,
    pub netns_deleted: Vec<String>,
    pub pids_killed: Vec<u32>,
    pub paths_removed: Vec<PathBuf>,
}

impl DownReport {
    fn merge(&mut self, o: DownReport) {
        self.clusters.extend(o.clusters);
        self.netns_deleted.extend(o.netns_deleted);
        self.pids_killed.extend(o.pids_killed);
        self.paths_removed.extend(o.paths_removed);
    }
}

/// Removes everything of cluster `cluster`: recorded processes and every
/// process inside a `dm-<c>-` netns (SIGTERM, SIGKILL after a grace), the
/// namespaces (and with them every veth), the BPF pin dirs
/// `/run/dpumesh/bpf/<c>-n*` and the state dir. Idempotent.
pub fn down(cluster: &str) -> Result<DownReport> {
    validate_cluster(cluster)?;
    let lock = StateLock::acquire_existing(cluster)?;
    let prefix = cluster_prefix(cluster);
    let namespaces: Vec<Netns> = list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(Netns::new)
        .collect();

    let mut targets = Vec::new();
    // A corrupt state file must not block teardown: the netns sweep still finds
    // every process that matters.
    match read_state(cluster) {
        Ok(Some(st)) => {
            for p in &st.processes {
                if p.is_alive() {
                    targets.push(Target {
                        pid: p.pid,
                        start_time: p.start_time,
                    });
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("ignoring state of cluster {cluster}: {e}"),
    }
    let mut report = DownReport {
        clusters: vec![cluster.to_string()],
        ..DownReport::default()
    };
    let mut found = sweep(&namespaces, targets, &mut report)?;

    // Pin dirs: /run/dpumesh/bpf/<c>-n<digits>.
    let pin_prefix = format!("{cluster}-n");
    if let Ok(dir) = std::fs::read_dir(BPFFS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_ours = name
                .strip_prefix(&pin_prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
            if is_ours {
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(|e| SimError::io("removing", &p, e))?;
                report.paths_removed.push(p);
            }
        }
    }

    let dir = state_dir(cluster);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| SimError::io("removing", &dir, e))?;
        report.paths_removed.push(dir);
    }
    drop(lock);

    found.retain(|n| n.exists());
    if !found.is_empty() {
        return Err(SimError::Conflict(format!(
            "namespaces still exist after down: {}",
            found
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(report)
}

/// Kills `targets` plus every process inside `namespaces`, then deletes the
/// namespaces. Returns the namespaces it tried to delete.
fn sweep(
    namespaces: &[Netns],
    mut targets: Vec<Target>,
    report: &mut DownReport,
) -> Result<Vec<Netns>> {
    for ns in namespaces {
        for pid in ns.pids()? {
            if let Some(t) = Target::current(pid) {
                targets.push(t);
            }
        }
    }
    targets.retain(|t| t.pid > 1 && t.pid != std::process::id());
    targets.sort_by_key(|t| t.pid);
    targets.dedup_by_key(|t| t.pid);
    let survivors = process::terminate(&targets, STOP_GRACE);
    report.pids_killed.extend(
        targets
            .iter()
            .map(|t| t.pid)
            .filter(|p| !survivors.contains(p)),
    );
    if !survivors.is_empty() {
        return Err(SimError::Conflict(format!(
            "processes survived SIGKILL: {survivors:?}"
        )));
    }
    for ns in namespaces {
        ns.delete()?;
        report.netns_deleted.push(ns.name().to_string());
    }
    Ok(namespaces.to_vec())
}

/// Tears down every simulator cluster on the machine: every cluster with a
/// `dm-<c>-*` netns or a `/run/dpumesh/<c>/state.json`, then any other `dm-*`
/// netns. Other users' clusters included: not for use in tests.
pub fn down_all() -> Result<DownReport> {
    let mut clusters = BTreeSet::new();
    for n in list_netns()? {
        if let Some(rest) = n.strip_prefix(NAME_PREFIX) {
            if let Some((c, _)) = rest.split_once('-') {
                if validate_cluster(c).is_ok() {
                    clusters.insert(c.to_string());
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(RUN_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if validate_cluster(&name).is_ok() && e.path().join("state.json").exists() {
                clusters.insert(name);
            }
        }
    }
    let mut report = DownReport::default();
    let mut errors = Vec::new();
    for c in &clusters {
        match down(c) {
            Ok(r) => report.merge(r),
            Err(e) => errors.push(format!("{c}: {e}")),
        }
    }
    let rest: Vec<Netns> = list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .map(Netns::new)
        .collect();
    if let Err(e) = sweep(&rest, Vec::new(), &mut report) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(SimError::Conflict(format!(
            "down --all failed: {}",
            errors.join("; ")
        )))
    }
}

/// What of cluster `cluster` still exists: `dm-<c>-*` namespaces, the state
/// dir, pin dirs. Empty after a successful [`down`]. For tests and `status`.
pub fn leftovers(cluster: &str) -> Result<Vec<String>> {
    validate_cluster(cluster)?;
    let prefix = cluster_prefix(cluster);
    let mut left: Vec<String> = list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    let dir = state_dir(cluster);
    if dir.exists() {
        left.push(format!("dir {}", dir.display()));
    }
    for i in 1..=crate::config::MAX_NODES {
        let p = bpf_pin_dir(cluster, i);
        if p.exists() {
            left.push(format!("dir {}", p.display()));
        }
    }
    Ok(left)
}

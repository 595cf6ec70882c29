//! What is there now, derived from the live namespaces (plus the state file for
//! the intended size and the processes).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::config::{validate_cluster, SimConfig};
use crate::error::Result;
use crate::naming::*;
use crate::netns::{list_netns, Netns};
use crate::pod::links_with_alias;
use crate::process::ProcessRecord;
use crate::state::read_state;
use crate::topology::Place;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VfState {
    /// `vf<k>` is in the host netns: the CNI may take it.
    Free,
    /// The pair exists but `vf<k>` left the host netns (it is in a pod).
    Used,
    /// The representor does not exist (pair never built, or destroyed).
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfStatus {
    pub index: usize,
    pub state: VfState,
    /// The pod whose netns holds the VF, when it is used and found.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub index: usize,
    pub host_netns: String,
    pub dpu_netns: String,
    pub host_present: bool,
    pub dpu_present: bool,
    pub vfs: Vec<VfStatus>,
    pub vfs_free: usize,
    pub vfs_used: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodStatus {
    pub name: String,
    pub netns: String,
    /// Aliases (`dm-<c>-n<i>-vf<k>`) of the VFs inside.
    pub vfs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    pub name: String,
    pub netns: String,
    pub node: Option<usize>,
    pub place: Option<Place>,
    pub pid: u32,
    pub alive: bool,
    pub health: Option<String>,
    /// Result of a TCP connect to `health` from inside `netns` (None: no health address).
    pub healthy: Option<bool>,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub cluster: String,
    /// "complete", "incomplete" (up interrupted or running) or "absent" (no state file).
    pub state: String,
    pub config: Option<SimConfig>,
    pub fabric_present: bool,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub processes: Vec<ProcessStatus>,
}

/// Status of cluster `cluster`, also when it has no state file (then derived
/// from the `dm-<c>-` namespaces alone).
pub fn status(cluster: &str) -> Result<Status> {
    status_of(cluster, None)
}

pub(crate) fn status_of(cluster: &str, config: Option<&SimConfig>) -> Result<Status> {
    validate_cluster(cluster)?;
    let state = read_state(cluster)?;
    let config = config
        .cloned()
        .or_else(|| state.as_ref().map(|s| s.config.clone()));
    let all: HashSet<String> = list_netns()?.into_iter().collect();

    let mut node_ids: BTreeSet<usize> = config
        .as_ref()
        .map(|c| (1..=c.nodes).collect())
        .unwrap_or_default();
    let node_prefix = format!("{}n", cluster_prefix(cluster));
    for n in &all {
        if let Some(rest) = n.strip_prefix(&node_prefix) {
            if let Some(i) = rest
                .strip_suffix("-host")
                .or_else(|| rest.strip_suffix("-dpu"))
                .and_then(|i| i.parse().ok())
            {
                node_ids.insert(i);
            }
        }
    }

    let pod_prefix = pod_netns_prefix(cluster);
    let mut pods = Vec::new();
    let mut pod_of_alias = std::collections::HashMap::new();
    let mut pod_names: Vec<&String> = all.iter().filter(|n| n.starts_with(&pod_prefix)).collect();
    pod_names.sort();
    for ns in pod_names {
        let name = ns[pod_prefix.len()..].to_string();
        let vfs: Vec<String> = links_with_alias(&Netns::new(ns.clone()))
            .unwrap_or_default()
            .into_iter()
            .map(|(_, alias)| alias)
            .filter(|a| a.starts_with(&node_prefix))
            .collect();
        for a in &vfs {
            pod_of_alias.insert(a.clone(), name.clone());
        }
        pods.push(PodStatus {
            name,
            netns: ns.clone(),
            vfs,
        });
    }

    let mut nodes = Vec::new();
    for i in node_ids {
        let host = host_netns_name(cluster, i);
        let dpu = dpu_netns_name(cluster, i);
        let host_links: HashSet<String> = if all.contains(&host) {
            Netns::new(host.clone()).links()?.into_iter().collect()
        } else {
            HashSet::new()
        };
        let dpu_links: Vec<String> = if all.contains(&dpu) {
            Netns::new(dpu.clone()).links()?
        } else {
            Vec::new()
        };
        let mut ks: BTreeSet<usize> = config
            .as_ref()
            .map(|c| (0..c.vfs).collect())
            .unwrap_or_default();
        let reps: HashSet<usize> = dpu_links
            .iter()
            .filter_map(|l| l.strip_prefix("pf0vf").and_then(|k| k.parse().ok()))
            .collect();
        ks.extend(reps.iter().copied());
        let vfs: Vec<VfStatus> = ks
            .into_iter()
            .map(|k| {
                let state = if !reps.contains(&k) {
                    VfState::Missing
                } else if host_links.contains(&vf_ifname(k)) {
                    VfState::Free
                } else {
                    VfState::Used
                };
                let pod = match state {
                    VfState::Used => pod_of_alias.get(&vf_alias(cluster, i, k)).cloned(),
                    _ => None,
                };
                VfStatus {
                    index: k,
                    state,
                    pod,
                }
            })
            .collect();
        nodes.push(NodeStatus {
            index: i,
            host_present: all.contains(&host),
            dpu_present: all.contains(&dpu),
            host_netns: host,
            dpu_netns: dpu,
            vfs_free: vfs.iter().filter(|v| v.state == VfState::Free).count(),
            vfs_used: vfs.iter().filter(|v| v.state == VfState::Used).count(),
            vfs,
        });
    }

    let processes = state
        .as_ref()
        .map(|s| s.processes.iter().map(process_status).collect())
        .unwrap_or_default();
    Ok(Status {
        cluster: cluster.to_string(),
        state: match &state {
            Some(s) if s.complete => "complete",
            Some(_) => "incomplete",
            None => "absent",
        }
        .to_string(),
        config,
        fabric_present: all.contains(&fabric_netns_name(cluster)),
        nodes,
        pods,
        processes,
    })
}

fn process_status(p: &ProcessRecord) -> ProcessStatus {
    let alive = p.is_alive();
    let healthy = p.health.as_ref().map(|h| alive && probe(&p.netns, h));
    ProcessStatus {
        name: p.name.clone(),
        netns: p.netns.clone(),
        node: p.node,
        place: p.place,
        pid: p.pid,
        alive,
        health: p.health.clone(),
        healthy,
        log: p.log.display().to_string(),
    }
}

/// TCP connect to `addr` from inside `netns`.
fn probe(netns: &str, addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    Netns::new(netns)
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        .unwrap_or(false)
}

impl Status {
    /// The human-readable table `dpumesh sim status` prints.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let size = self
            .config
            .as_ref()
            .map(|c| format!(" (nodes={} vfs={})", c.nodes, c.vfs))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "cluster {}: {}{}  fabric: {}",
            self.cluster,
            self.state,
            size,
            if self.fabric_present {
                "present"
            } else {
                "missing"
            }
        );
        let _ = writeln!(
            s,
            "\nNODE  HOST NETNS            DPU NETNS             VFS FREE  USED  USED BY"
        );
        for n in &self.nodes {
            let mark = |present: bool, name: &str| {
                if present {
                    name.to_string()
                } else {
                    format!("{name} (missing)")
                }
            };
            let used: Vec<String> = n
                .vfs
                .iter()
                .filter(|v| v.state == VfState::Used)
                .map(|v| format!("vf{}→{}", v.index, v.pod.as_deref().unwrap_or("?")))
                .collect();
            let _ = writeln!(
                s,
                "{:<5} {:<21} {:<21} {:<8} {:<5} {}",
                n.index,
                mark(n.host_present, &n.host_netns),
                mark(n.dpu_present, &n.dpu_netns),
                n.vfs_free,
                n.vfs_used,
                used.join(" ")
            );
        }
        let _ = writeln!(
            s,
            "\nPODS: {}",
            if self.pods.is_empty() {
                "none".into()
            } else {
                String::new()
            }
        );
        for p in &self.pods {
            let _ = writeln!(s, "  {:<20} {:<30} {}", p.name, p.netns, p.vfs.join(" "));
        }
        let _ = writeln!(
            s,
            "\nPROCESSES: {}",
            if self.processes.is_empty() {
                "none"
            } else {
                ""
            }
        );
        if !self.processes.is_empty() {
            let _ = writeln!(
                s,
                "  {:<20} {:<8} {:<22} {:<7} {:<10} LOG",
                "NAME", "PID", "NETNS", "ALIVE", "HEALTH"
            );
        }
        for p in &self.processes {
            let health = match (&p.health, p.healthy) {
                (Some(_), Some(true)) => "ok",
                (Some(_), _) => "failing",
                (None, _) => "-",
            };
            let _ = writeln!(
                s,
                "  {:<20} {:<8} {:<22} {:<7} {:<10} {}",
                p.name,
                p.pid,
                p.netns,
                if p.alive { "yes" } else { "NO" },
                health,
                p.log
            );
        }
        s
    }
}

//! Pod network namespaces, created and deleted as a container runtime would.

use crate::config::validate_pod_name;
use crate::error::Result;
use crate::naming::*;
use crate::netns::{list_netns, Netns};
use crate::process::{self, Target, STOP_GRACE};
use crate::Sim;

impl Sim {
    /// The handle of pod `name`'s netns `dm-<c>-pod-<name>` (may not exist).
    pub fn pod(&self, name: &str) -> Result<Netns> {
        validate_pod_name(name)?;
        Ok(Netns::new(pod_netns_name(self.cluster(), name)))
    }

    /// Creates pod `name`'s netns with `lo` up, as the runtime does before
    /// calling the CNI. Idempotent.
    pub fn pod_add(&self, name: &str) -> Result<Netns> {
        let ns = self.pod(name)?;
        Netns::create(ns.name())
    }

    /// Deletes pod `name`'s netns as the runtime does after the CNI DEL: kills
    /// what still runs inside, then, like the kernel does for a physical VF,
    /// returns any VF of this cluster still inside (found by its alias) to its
    /// node's host netns under its original name, and deletes the netns.
    /// Idempotent.
    pub fn pod_del(&self, name: &str) -> Result<()> {
        let ns = self.pod(name)?;
        if !ns.exists() {
            return Ok(());
        }
        let targets: Vec<Target> = ns.pids()?.into_iter().filter_map(Target::current).collect();
        let survivors = process::terminate(&targets, STOP_GRACE);
        if !survivors.is_empty() {
            return Err(crate::SimError::Conflict(format!(
                "processes in {ns} survived SIGKILL: {survivors:?}"
            )));
        }
        for (ifname, alias) in links_with_alias(&ns)? {
            if let Some((node, vf)) = self.vf_by_alias(&alias) {
                let host = self.node(node)?.host.clone();
                if host.exists() {
                    crate::cmd::ip(&[
                        "-n",
                        ns.name(),
                        "link",
                        "set",
                        &ifname,
                        "down",
                        "netns",
                        host.name(),
                        "name",
                        &vf_ifname(vf),
                    ])?;
                }
            }
        }
        ns.delete()
    }

    /// Names of the pods whose netns exists.
    pub fn pods(&self) -> Result<Vec<String>> {
        let prefix = pod_netns_prefix(self.cluster());
        Ok(list_netns()?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(String::from))
            .collect())
    }

    /// (node, vf) of the VF whose alias is `alias`.
    pub(crate) fn vf_by_alias(&self, alias: &str) -> Option<(usize, usize)> {
        self.nodes.iter().find_map(|n| {
            n.vfs
                .iter()
                .find(|v| v.alias == alias)
                .map(|v| (n.index, v.index))
        })
    }
}

/// (ifname, alias) of every link in `ns` that has an alias.
pub(crate) fn links_with_alias(ns: &Netns) -> Result<Vec<(String, String)>> {
    let out = crate::cmd::ip(&["-n", ns.name(), "-j", "link", "show"])?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    Ok(v.iter()
        .filter_map(|l| {
            let name = l.get("ifname")?.as_str()?;
            let alias = l.get("ifalias")?.as_str()?;
            Some((name.to_string(), alias.to_string()))
        })
        .collect())
}

//! The simulator's input: which cluster, how many nodes, how many VFs per node.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};

/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "sim";
/// Longest cluster name: keeps `dm-<c>-pod-<name>` and the state dir short.
pub const MAX_CLUSTER_LEN: usize = 10;
/// Node count bounds (inclusive).
pub const MAX_NODES: usize = 16;
/// VF count bounds per node (inclusive).
pub const MAX_VFS: usize = 64;
/// Longest pod name (netns `dm-<c>-pod-<name>` stays well below NAME_MAX).
pub const MAX_POD_NAME_LEN: usize = 63;
/// Longest process name (it becomes `logs/<name>.log`).
pub const MAX_PROCESS_NAME_LEN: usize = 64;

/// What `up` builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Cluster name `<c>`: `[a-z0-9]{1,10}`. Every netns is `dm-<c>-...`.
    pub cluster: String,
    /// Number of nodes, 1..=16. Nodes are numbered from 1.
    pub nodes: usize,
    /// VFs per node, 1..=64. VFs are numbered from 0.
    pub vfs: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cluster: DEFAULT_CLUSTER.to_string(),
            nodes: 2,
            vfs: 8,
        }
    }
}

impl SimConfig {
    /// A config with the default node and VF counts.
    pub fn new(cluster: impl Into<String>) -> Self {
        SimConfig {
            cluster: cluster.into(),
            ..SimConfig::default()
        }
    }

    pub fn with_nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    pub fn with_vfs(mut self, vfs: usize) -> Self {
        self.vfs = vfs;
        self
    }

    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        validate_cluster(&self.cluster)?;
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(SimError::invalid(
                "nodes",
                self.nodes,
                format!("must be between 1 and {MAX_NODES}"),
            ));
        }
        if !(1..=MAX_VFS).contains(&self.vfs) {
            return Err(SimError::invalid(
                "vfs",
                self.vfs,
                format!("must be between 1 and {MAX_VFS}"),
            ));
        }
        Ok(())
    }
}

/// A cluster name is `[a-z0-9]{1,10}`.
pub fn validate_cluster(cluster: &str) -> Result<()> {
    if cluster.is_empty() || cluster.len() > MAX_CLUSTER_LEN {
        return Err(SimError::invalid(
            "cluster",
            cluster,
            format!("must be 1 to {MAX_CLUSTER_LEN} characters"),
        ));
    }
    if let Some(c) = cluster
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(SimError::invalid(
            "cluster",
            cluster,
            format!("character {c:?} not allowed, use [a-z0-9]"),
        ));
    }
    Ok(())
}

/// A pod name is `[a-z0-9]([a-z0-9.-]*)`, at most 63 characters (a Kubernetes
/// DNS label, plus dots so `namespace.name` fits).
pub fn validate_pod_name(name: &str) -> Result<()> {
    check_name("pod name", name, MAX_POD_NAME_LEN, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
    })
}

/// A process name is `[A-Za-z0-9_.-]`, at most 64 characters, not starting with a dot.
pub fn validate_process_name(name: &str) -> Result<()> {
    check_name("process name", name, MAX_PROCESS_NAME_LEN, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
    })
}

fn check_name(
    field: &'static str,
    name: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(SimError::invalid(
            field,
            name,
            format!("must be 1 to {max} characters"),
        ));
    }
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return Err(SimError::invalid(
            field,
            name,
            format!("character {c:?} not allowed"),
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(SimError::invalid(
            field,
            name,
            "must start with a letter or digit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        SimConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_field_and_value() {
        let e = SimConfig::new("Bad_Name")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster") && e.contains("Bad_Name"), "{e}");
        let e = SimConfig::new("abcdefghijk")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster") && e.contains("1 to 10"), "{e}");
        let e = SimConfig::new("").validate().unwrap_err().to_string();
        assert!(e.contains("cluster"), "{e}");
        let e = SimConfig::new("ok")
            .with_nodes(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes") && e.contains('0'), "{e}");
        let e = SimConfig::new("ok")
            .with_nodes(17)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes") && e.contains("17"), "{e}");
        let e = SimConfig::new("ok")
            .with_vfs(65)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("vfs") && e.contains("65"), "{e}");
        SimConfig::new("a1")
            .with_nodes(16)
            .with_vfs(64)
            .validate()
            .unwrap();
        SimConfig::new("a")
            .with_nodes(1)
            .with_vfs(1)
            .validate()
            .unwrap();
    }

    #[test]
    fn pod_and_process_names() {
        validate_pod_name("web-1").unwrap();
        validate_pod_name("default.web-1").unwrap();
        assert!(validate_pod_name("").is_err());
        assert!(validate_pod_name("Web").is_err());
        assert!(validate_pod_name("a/b").is_err());
        assert!(validate_pod_name("-a").is_err());
        assert!(validate_pod_name(&"a".repeat(64)).is_err());
        validate_process_name("dpu-proxy_1.n1").unwrap();
        assert!(validate_process_name("../x").is_err());
        assert!(validate_process_name(".hidden").is_err());
        assert!(validate_process_name("a b").is_err());
    }
}

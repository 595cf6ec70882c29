//! The node's inventory: the node itself, its pods, and the services they can
//! reach. The controller will stream it to each adapter; until then (and in the
//! local mode) it is read from `node.yaml`, `pods.yaml` and `services.yaml`.
//! Format: `docs/adapter.md`.

use std::collections::BTreeMap;
use std::path::Path;

use dpumesh_api::config::{Interception, NodeInfo, Protocol};
use serde::{Deserialize, Serialize};

/// A pod on this node, as the CNI and controller know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
    pub mac: String,
    pub vf_index: u32,
    pub representor: String,
    #[serde(default)]
    pub spiffe_id: String,
    #[serde(default = "default_true")]
    pub meshed: bool,
    #[serde(default)]
    pub interception: Interception,
}

fn default_service_account() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

impl PodSpec {
    /// `<namespace>/<name>`: how the adapter keys a pod's proxy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Envoy node id istiod expects from this pod's sidecar:
    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<dns-domain>`.
    pub fn proxy_node_id(&self, dns_domain: &str) -> String {
        let ip = self.ips.first().map(String::as_str).unwrap_or("");
        format!(
            "sidecar~{ip}~{}.{}~{}.svc.{dns_domain}",
            self.name, self.namespace, self.namespace
        )
    }
}

/// A service: hostname, VIPs and ports. Endpoints come from EDS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub hostname: String,
    pub namespace: String,
    #[serde(default)]
    pub vips: Vec<String>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Everything the adapter knows about the node besides xDS.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub node: NodeInfo,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    #[serde(default)]
    pods: Vec<PodSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|e| InventoryError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Inventory {
    /// Reads `node.yaml`, `pods.yaml` and `services.yaml` from `dir`. `node`, when
    /// given, must equal the node's name in `node.yaml` (a guard against pointing
    /// an adapter at another node's directory).
    pub fn load(dir: &Path, node: Option<&str>) -> Result<Inventory, InventoryError> {
        let node_path = dir.join("node.yaml");
        let info: NodeInfo = read_yaml(&node_path)?;
        if let Some(expected) = node {
            if info.name != expected {
                return Err(InventoryError::Parse {
                    path: node_path.display().to_string(),
                    message: format!(
                        "name: {:?} is not this adapter's node {expected:?}",
                        info.name
                    ),
                });
            }
        }
        let pods_path = dir.join("pods.yaml");
        let pods = if pods_path.exists() {
            read_yaml::<PodsFile>(&pods_path)?.pods
        } else {
            Vec::new()
        };
        let services_path = dir.join("services.yaml");
        let services = if services_path.exists() {
            read_yaml::<ServicesFile>(&services_path)?.services
        } else {
            Vec::new()
        };
        Ok(Inventory {
            node: info,
            pods,
            services,
        })
    }
}

//! The node's inventory: the node itself, its pods, the services they can
//! reach, what the controller knows of endpoints cluster-wide, and the node's
//! network beyond `node.yaml` (its DPU's underlay address, the peer nodes):
//! `node.yaml`, `pods.yaml`, `services.yaml`, (optional) `endpoints.yaml` and
//! (optional) `network.yaml`, read from a directory or streamed by the
//! controller (`crate::inventory_client`); one decoder for both.
//! Format: `docs/adapter.md`.

use std::collections::BTreeMap;
use std::net::IpAddr;
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

/// What the controller knows about one endpoint address from the
/// EndpointSlices and the pods (`endpoints.yaml`): its node, and for a pod of a
/// dpumesh node its service account and whether it is meshed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownEndpoint {
    pub node: String,
    pub service_account: String,
    pub meshed: bool,
}

/// `network.yaml`: what the node's dataplane needs beyond `node.yaml` (which
/// has the mode, pod CIDR and service CIDRs): this DPU's uplink address, the
/// VXLAN id and the other nodes. The adapter sends both to the dataplane
/// (`SetNodeNetwork`, `crate::node_network`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// This node's DPU uplink (underlay) address.
    pub underlay_ip: IpAddr,
    /// VXLAN network identifier (overlay); 0 = the dataplane's default.
    #[serde(default)]
    pub vni: u32,
    /// Every other node with an underlay address, sorted by name.
    #[serde(default)]
    pub peers: Vec<PeerNodeSpec>,
}

/// Another node: where its pods are and how its DPU is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerNodeSpec {
    pub name: String,
    pub pod_cidr: String,
    pub underlay_ip: IpAddr,
}

/// Everything the adapter knows about the node besides xDS.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub node: NodeInfo,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
    /// Endpoint IP → what the controller knows of it, cluster-wide (from the
    /// optional `endpoints.yaml`; empty without it).
    pub endpoints: BTreeMap<String, KnownEndpoint>,
    /// From the optional `network.yaml` (`None` without it).
    pub network: Option<NetworkSpec>,
}

impl Inventory {
    /// Equal apart from `network`: what the proxy config is built from (a
    /// node joining the cluster changes only the peers).
    pub fn same_except_network(&self, other: &Inventory) -> bool {
        self.node == other.node
            && self.pods == other.pods
            && self.services == other.services
            && self.endpoints == other.endpoints
    }
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    #[serde(default)]
    pods: Vec<PodSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

/// `endpoints.yaml` as the controller writes it (`k8s::build::ServiceEndpoints`).
/// Only the fields the adapter uses are read; the others (`hostname`, `ports`,
/// `zone`, `pod`, `ready`) are the controller's business.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    endpoints: Vec<ServiceEndpointsDoc>,
}

#[derive(Deserialize)]
struct ServiceEndpointsDoc {
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointDoc {
    ip: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    meshed: bool,
}

/// Endpoint IP → what is known of it; the first entry of an IP wins (an IP
/// belongs to one pod, so its entries in several services agree).
fn known_endpoints(file: EndpointsFile) -> BTreeMap<String, KnownEndpoint> {
    let mut out = BTreeMap::new();
    for ep in file.endpoints.into_iter().flat_map(|s| s.endpoints) {
        out.entry(ep.ip).or_insert(KnownEndpoint {
            node: ep.node,
            service_account: ep.service_account,
            meshed: ep.meshed,
        });
    }
    out
}

fn parse_yaml<T: for<'de> Deserialize<'de> + Default>(
    text: &str,
    origin: &str,
) -> Result<T, InventoryError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml::from_str(text).map_err(|e| InventoryError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })
}

fn parse_network(text: &str, origin: &str) -> Result<Option<NetworkSpec>, InventoryError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_yaml::from_str(text)
        .map(Some)
        .map_err(|e| InventoryError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
}

fn read_text(path: &Path) -> Result<String, InventoryError> {
    std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The text of the inventory documents (files, or one streamed update),
/// each with a name for error messages.
#[derive(Debug, Clone, Copy)]
pub struct InventoryTexts<'a> {
    pub node_yaml: (&'a str, &'a str),
    pub pods_yaml: (&'a str, &'a str),
    pub services_yaml: (&'a str, &'a str),
    /// Optional: empty text = no endpoint knowledge.
    pub endpoints_yaml: (&'a str, &'a str),
    /// Optional: empty text = no network document.
    pub network_yaml: (&'a str, &'a str),
}

impl Inventory {
    /// Reads `node.yaml`, `pods.yaml` and `services.yaml` from `dir`. `node`, when
    /// given, must equal the node's name in `node.yaml` (a guard against pointing
    /// an adapter at another node's directory).
    pub fn load(dir: &Path, node: Option<&str>) -> Result<Inventory, InventoryError> {
        let node_path = dir.join("node.yaml");
        let node_text = read_text(&node_path)?;
        let pods_path = dir.join("pods.yaml");
        let pods_text = if pods_path.exists() {
            read_text(&pods_path)?
        } else {
            String::new()
        };
        let services_path = dir.join("services.yaml");
        let services_text = if services_path.exists() {
            read_text(&services_path)?
        } else {
            String::new()
        };
        let endpoints_path = dir.join("endpoints.yaml");
        let endpoints_text = if endpoints_path.exists() {
            read_text(&endpoints_path)?
        } else {
            String::new()
        };
        let network_path = dir.join("network.yaml");
        let network_text = if network_path.exists() {
            read_text(&network_path)?
        } else {
            String::new()
        };
        let (np, pp, sp, ep, wp) = (
            node_path.display().to_string(),
            pods_path.display().to_string(),
            services_path.display().to_string(),
            endpoints_path.display().to_string(),
            network_path.display().to_string(),
        );
        Inventory::parse(
            InventoryTexts {
                node_yaml: (&np, &node_text),
                pods_yaml: (&pp, &pods_text),
                services_yaml: (&sp, &services_text),
                endpoints_yaml: (&ep, &endpoints_text),
                network_yaml: (&wp, &network_text),
            },
            node,
        )
    }

    /// Decodes the documents (the one decoder for files and for the
    /// controller's stream). An empty pods/services text is an empty list, an
    /// empty endpoints/network text none; an empty node text is an error.
    pub fn parse(
        texts: InventoryTexts<'_>,
        node: Option<&str>,
    ) -> Result<Inventory, InventoryError> {
        let (node_origin, node_text) = texts.node_yaml;
        if node_text.trim().is_empty() {
            return Err(InventoryError::Parse {
                path: node_origin.to_string(),
                message: "empty (the node document is required)".to_string(),
            });
        }
        let info: NodeInfo =
            serde_yaml::from_str(node_text).map_err(|e| InventoryError::Parse {
                path: node_origin.to_string(),
                message: e.to_string(),
            })?;
        if let Some(expected) = node {
            if info.name != expected {
                return Err(InventoryError::Parse {
                    path: node_origin.to_string(),
                    message: format!(
                        "name: {:?} is not this adapter's node {expected:?}",
                        info.name
                    ),
                });
            }
        }
        let pods = parse_yaml::<PodsFile>(texts.pods_yaml.1, texts.pods_yaml.0)?.pods;
        let services =
            parse_yaml::<ServicesFile>(texts.services_yaml.1, texts.services_yaml.0)?.services;
        let endpoints = known_endpoints(parse_yaml::<EndpointsFile>(
            texts.endpoints_yaml.1,
            texts.endpoints_yaml.0,
        )?);
        let network = parse_network(texts.network_yaml.1, texts.network_yaml.0)?;
        Ok(Inventory {
            node: info,
            pods,
            services,
            endpoints,
            network,
        })
    }
}

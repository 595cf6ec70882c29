//! Cluster state → one inventory per node (pure; no I/O).

use std::collections::BTreeMap;
use std::net::IpAddr;

use dpumesh_api::config::{Interception, Locality, NetworkMode, NodeInfo, Protocol};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde::Serialize;

use super::annotations;
use super::state::ClusterState;
use crate::inventory::{Inventory, NetworkSpec, PeerNodeSpec, PodSpec, PortSpec, ServiceSpec};

/// Cluster-wide settings that are not in any Kubernetes object.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub service_cidrs: Vec<String>,
    pub dns_domain: String,
    pub trust_domain: String,
    /// Default DPU control address for nodes without the annotation.
    pub dpu_mgmt_addr: String,
    /// VXLAN network identifier in every `network.yaml` (0 = the dataplane's default).
    pub vni: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            service_cidrs: vec!["10.96.0.0/16".to_string()],
            dns_domain: "cluster.local".to_string(),
            trust_domain: "cluster.local".to_string(),
            dpu_mgmt_addr: "192.168.100.2:15080".to_string(),
            vni: 0,
        }
    }
}

/// One node's part of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInventory {
    pub inventory: Inventory,
    /// Endpoints of every service, from the EndpointSlices.
    pub endpoints: Vec<ServiceEndpoints>,
}

/// The endpoints of one service (merged over its EndpointSlices).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoints {
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<EndpointPortSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    pub ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// `<namespace>/<name>` of the pod behind it, when the slice says.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    pub ready: bool,
    /// The service account of the pod behind it, when the pod is known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// The pod is a meshed pod of a dpumesh node: its node's dpu-proxy
    /// terminates HBONE for it (the adapter marks such endpoints `hbone: true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub meshed: bool,
}

/// The result of one build: every node's inventory, and why objects were left out.
#[derive(Debug, Clone, Default)]
pub struct Built {
    pub nodes: BTreeMap<String, NodeInventory>,
    /// One line per object left out (`pod default/x: ...`), sorted.
    pub skipped: Vec<String>,
}

/// Builds every node's inventory from the cluster state.
pub fn build(state: &ClusterState, settings: &ClusterSettings) -> Built {
    let mut skipped = Vec::new();
    let services = services(state, settings, &mut skipped);
    let mut endpoints = endpoints(state, settings);
    let mut candidates: BTreeMap<String, Vec<(PodSpec, bool)>> = BTreeMap::new();
    for pod in state.pods.iter() {
        match pod_spec(pod, state, settings) {
            Ok(Some((node, spec))) => {
                let terminating = pod.metadata.deletion_timestamp.is_some();
                candidates
                    .entry(node)
                    .or_default()
                    .push((spec, terminating));
            }
            Ok(None) => {}
            Err(why) => skipped.push(format!(
                "pod {}/{}: {why}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            )),
        }
    }
    let pods_by_node: BTreeMap<String, Vec<PodSpec>> = candidates
        .into_iter()
        .map(|(node, pods)| (node, without_conflicts(pods, &mut skipped)))
        .collect();
    let mut pods_by_node = pods_by_node;
    // Endpoints carry their pod's identity, and whether it is a meshed pod of a
    // dpumesh node: istiod's EDS has neither (the adapter's HBONE decision,
    // docs/adapter.md).
    let dpumesh_pods: BTreeMap<String, bool> = pods_by_node
        .values()
        .flatten()
        .map(|p| (p.key(), p.meshed))
        .collect();
    let service_accounts: BTreeMap<String, String> = state
        .pods
        .iter()
        .map(|p| {
            let key = format!(
                "{}/{}",
                p.namespace().unwrap_or_else(|| "default".to_string()),
                p.name_any()
            );
            let sa = p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string());
            (key, sa)
        })
        .collect();
    for ep in endpoints.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
        if let Some(sa) = service_accounts.get(&ep.pod) {
            ep.service_account = sa.clone();
        }
        ep.meshed = dpumesh_pods.get(&ep.pod).copied().unwrap_or(false);
    }
    let mut nodes = BTreeMap::new();
    let mut underlays: BTreeMap<String, IpAddr> = BTreeMap::new();
    for node in state.nodes.iter() {
        let name = node.name_any();
        match node_info(node, settings) {
            Ok(info) => {
                match underlay_ip(node) {
                    Ok(ip) => {
                        underlays.insert(name.clone(), ip);
                    }
                    Err(why) => skipped.push(format!(
                        "node {name}: {why}: no network.yaml, and not a peer of the other nodes"
                    )),
                }
                let mut pods = pods_by_node.remove(&name).unwrap_or_default();
                pods.sort_by_key(PodSpec::key);
                nodes.insert(
                    name,
                    NodeInventory {
                        inventory: Inventory {
                            node: info,
                            pods,
                            services: services.clone(),
                            endpoints: BTreeMap::new(),
                            network: None,
                        },
                        endpoints: endpoints.clone(),
                    },
                );
            }
            Err(why) => skipped.push(format!("node {name}: {why}")),
        }
    }
    for (node, pods) in pods_by_node {
        for pod in pods {
            skipped.push(format!("pod {}: its node {node:?} is unknown", pod.key()));
        }
    }
    add_networks(&mut nodes, &underlays, settings);
    skipped.sort();
    Built { nodes, skipped }
}

/// The node's DPU uplink address: annotation `dpumesh.io/dpu-underlay-ip`,
/// else the Node's InternalIP (IPv4 first). An annotation that is not an IP is
/// an error, not a reason to fall back.
fn underlay_ip(node: &Node) -> Result<IpAddr, String> {
    if let Some(v) = node.annotations().get(annotations::DPU_UNDERLAY_IP) {
        return v.trim().parse().map_err(|_| {
            format!(
                "annotation {}: {v:?} is not an IP address",
                annotations::DPU_UNDERLAY_IP
            )
        });
    }
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
        .min_by_key(|ip| !ip.is_ipv4())
        .ok_or_else(|| {
            format!(
                "no underlay address (no annotation {}, no InternalIP in status.addresses)",
                annotations::DPU_UNDERLAY_IP
            )
        })
}

/// Every node with an underlay address gets its network: that address, the
/// VNI and every other such node as a peer.
fn add_networks(
    nodes: &mut BTreeMap<String, NodeInventory>,
    underlays: &BTreeMap<String, IpAddr>,
    settings: &ClusterSettings,
) {
    let peers: Vec<PeerNodeSpec> = nodes
        .iter()
        .filter_map(|(name, n)| {
            underlays.get(name).map(|ip| PeerNodeSpec {
                name: name.clone(),
                pod_cidr: n.inventory.node.pod_cidr.clone(),
                underlay_ip: *ip,
            })
        })
        .collect();
    for (name, node) in nodes.iter_mut() {
        if let Some(ip) = underlays.get(name) {
            node.inventory.network = Some(NetworkSpec {
                underlay_ip: *ip,
                vni: settings.vni,
                peers: peers.iter().filter(|p| &p.name != name).cloned().collect(),
            });
        }
    }
}

fn node_info(node: &Node, settings: &ClusterSettings) -> Result<NodeInfo, String> {
    let spec = node.spec.clone().unwrap_or_default();
    let pod_cidr = spec
        .pod_cidr
        .filter(|c| !c.is_empty())
        .or_else(|| spec.pod_cidrs.and_then(|c| c.into_iter().next()))
        .ok_or("spec.podCIDR is not set yet")?;
    let ann = node.annotations();
    let network_mode = match ann.get(annotations::NETWORK_MODE).map(String::as_str) {
        None | Some("underlay") => NetworkMode::Underlay,
        Some("overlay") => NetworkMode::Overlay,
        Some(other) => {
            return Err(format!(
                "annotation {}: {other:?} is neither \"underlay\" nor \"overlay\"",
                annotations::NETWORK_MODE
            ))
        }
    };
    let dpu_mgmt_addr = ann
        .get(annotations::DPU_MGMT_ADDR)
        .cloned()
        .unwrap_or_else(|| settings.dpu_mgmt_addr.clone());
    let labels = node.labels();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Ok(NodeInfo {
        name: node.name_any(),
        network_mode,
        pod_cidr,
        service_cidrs: settings.service_cidrs.clone(),
        dpu_mgmt_addr,
        trust_domain: settings.trust_domain.clone(),
        dns_domain: settings.dns_domain.clone(),
        locality: Locality {
            region: label("topology.kubernetes.io/region"),
            zone: label("topology.kubernetes.io/zone"),
            subzone: label("topology.istio.io/subzone"),
        },
    })
}

/// The pods of one node whose VF, MAC, representor and IPs are their own.
/// Stale annotations or addresses (a sandbox that died, a pod still
/// terminating while its VF or IP went to a new pod) would otherwise make the
/// node's NodeConfig invalid (each must be unique), and no config would reach
/// the node. Live pods that conflict with each other are all left out (which
/// one really holds the VF is unknown until the CNI rewrites the annotations);
/// a terminating pod is left out when a live one holds any of its keys.
fn without_conflicts(pods: Vec<(PodSpec, bool)>, skipped: &mut Vec<String>) -> Vec<PodSpec> {
    fn keys(p: &PodSpec) -> Vec<String> {
        let mut k = vec![
            format!("VF {}", p.vf_index),
            format!("MAC {}", p.mac),
            format!("representor {}", p.representor),
        ];
        k.extend(p.ips.iter().map(|ip| format!("IP {ip}")));
        k
    }
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, terminating) in &pods {
        if !terminating {
            for k in keys(p) {
                holders.entry(k).or_default().push(p.key());
            }
        }
    }
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut kept = Vec::new();
    let (live, dying): (Vec<_>, Vec<_>) = pods.into_iter().partition(|(_, t)| !t);
    for (p, _) in live {
        let clash: Vec<String> = keys(&p)
            .into_iter()
            .filter_map(|k| {
                let others: Vec<&String> = holders[&k].iter().filter(|o| **o != p.key()).collect();
                (!others.is_empty()).then(|| {
                    let names: Vec<&str> = others.iter().map(|o| o.as_str()).collect();
                    format!("{k} also claimed by {}", names.join(", "))
                })
            })
            .collect();
        if clash.is_empty() {
            for k in keys(&p) {
                taken.insert(k, p.key());
            }
            kept.push(p);
        } else {
            skipped.push(format!("pod {}: {}", p.key(), clash.join("; ")));
        }
    }
    for (p, _) in dying {
        let clash: Vec<String> = keys(&p)
            .into_iter()
            .filter_map(|k| taken.get(&k).map(|o| format!("{k} now held by {o}")))
            .collect();
        if clash.is_empty() {
            for k in keys(&p) {
                taken.insert(k, p.key());
            }
            kept.push(p);
        } else {
            skipped.push(format!(
                "pod {} (terminating): {}",
                p.key(),
                clash.join("; ")
            ));
        }
    }
    kept
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `Ok(None)`: a pod that is not (or not yet) on a VF: not scheduled, host
/// network, finished, no IP or no `dpumesh.io/vf-index` yet.
fn pod_spec(
    pod: &Pod,
    state: &ClusterState,
    settings: &ClusterSettings,
) -> Result<Option<(String, PodSpec)>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let Some(node) = spec.node_name.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if spec.host_network == Some(true) {
        return Ok(None);
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let ann = pod.annotations();
    let Some(vf) = ann.get(annotations::VF_INDEX) else {
        return Ok(None);
    };
    let vf_index: u32 = vf.trim().parse().map_err(|_| {
        format!(
            "annotation {}: {vf:?} is not a VF index",
            annotations::VF_INDEX
        )
    })?;
    let mac = ann
        .get(annotations::MAC)
        .ok_or_else(|| format!("annotation {} is missing", annotations::MAC))?
        .to_ascii_lowercase();
    if !valid_mac(&mac) {
        return Err(format!(
            "annotation {}: {mac:?} is not a MAC address",
            annotations::MAC
        ));
    }
    let representor = ann
        .get(annotations::REPRESENTOR)
        .cloned()
        .unwrap_or_else(|| format!("pf0vf{vf_index}"));
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.filter(|ip| !ip.is_empty()));
    }
    if ips.is_empty() {
        return Ok(None);
    }
    let namespace = pod.namespace().unwrap_or_else(|| "default".to_string());
    let service_account = spec
        .service_account_name
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let meshed = meshed(pod, state, &namespace);
    Ok(Some((
        node,
        PodSpec {
            uid: pod.uid().unwrap_or_default(),
            name: pod.name_any(),
            spiffe_id: format!(
                "spiffe://{}/ns/{namespace}/sa/{service_account}",
                settings.trust_domain
            ),
            namespace,
            service_account,
            labels: pod.labels().clone(),
            ips,
            mac,
            vf_index,
            representor,
            meshed,
            interception: Interception::default(),
        },
    )))
}

fn meshed(pod: &Pod, state: &ClusterState, namespace: &str) -> bool {
    let off = |v: Option<&String>| v.map(|v| v.eq_ignore_ascii_case("false")).unwrap_or(false);
    let ann = pod.annotations();
    if off(ann.get(annotations::MESHED))
        || off(ann.get("sidecar.istio.io/inject"))
        || off(pod.labels().get("sidecar.istio.io/inject"))
    {
        return false;
    }
    let ns_labels = state.namespaces.get(namespace).map(|n| n.labels().clone());
    let ns_labels = ns_labels.unwrap_or_default();
    !(ns_labels.get("istio-injection").map(String::as_str) == Some("disabled")
        || ns_labels.get(annotations::MESHED).map(String::as_str) == Some("false"))
}

fn hostname(name: &str, namespace: &str, settings: &ClusterSettings) -> String {
    format!("{name}.{namespace}.svc.{}", settings.dns_domain)
}

fn protocol(app_protocol: Option<&str>, name: &str) -> Option<Protocol> {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http") => Some(Protocol::Http),
        Some("http2" | "kubernetes.io/h2c") => Some(Protocol::Http2),
        Some("grpc") => Some(Protocol::Grpc),
        Some("grpc-web") => Some(Protocol::GrpcWeb),
        Some("tcp") => Some(Protocol::Tcp),
        Some("tls") => Some(Protocol::Tls),
        Some("https") => Some(Protocol::Https),
        _ => Protocol::from_port_name(name),
    }
}

fn services(
    state: &ClusterState,
    settings: &ClusterSettings,
    skipped: &mut Vec<String>,
) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for svc in state.services.iter() {
        let namespace = svc.namespace().unwrap_or_else(|| "default".to_string());
        if let Some(s) = service_spec(svc, &namespace, settings, skipped) {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    out
}

fn service_spec(
    svc: &Service,
    namespace: &str,
    settings: &ClusterSettings,
    skipped: &mut Vec<String>,
) -> Option<ServiceSpec> {
    let spec = svc.spec.clone().unwrap_or_default();
    let what = format!("service {namespace}/{}", svc.name_any());
    if spec.type_.as_deref() == Some("ExternalName") {
        skipped.push(format!(
            "{what}: ExternalName services are not in the mesh inventory"
        ));
        return None;
    }
    let mut vips: Vec<String> = spec.cluster_ips.unwrap_or_default();
    if vips.is_empty() {
        vips.extend(spec.cluster_ip);
    }
    vips.retain(|ip| !ip.is_empty() && ip != "None");
    let mut ports = Vec::new();
    for p in spec.ports.unwrap_or_default() {
        let name = p.name.clone().unwrap_or_default();
        if !matches!(p.protocol.as_deref(), None | Some("TCP")) {
            skipped.push(format!(
                "{what}: port {} ({}) is not TCP",
                p.port,
                p.protocol.unwrap_or_default()
            ));
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            skipped.push(format!("{what}: port {} is out of range", p.port));
            continue;
        };
        let target_port = match p.target_port {
            Some(IntOrString::Int(t)) => u16::try_from(t).ok(),
            _ => None,
        };
        ports.push(PortSpec {
            port,
            protocol: protocol(p.app_protocol.as_deref(), &name),
            name,
            target_port,
        });
    }
    Some(ServiceSpec {
        hostname: hostname(&svc.name_any(), namespace, settings),
        namespace: namespace.to_string(),
        vips,
        ports,
    })
}

fn endpoints(state: &ClusterState, settings: &ClusterSettings) -> Vec<ServiceEndpoints> {
    let mut by_service: BTreeMap<String, ServiceEndpoints> = BTreeMap::new();
    for slice in state.endpoint_slices.iter() {
        let Some(service) = slice.labels().get("kubernetes.io/service-name").cloned() else {
            continue;
        };
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let namespace = slice.namespace().unwrap_or_else(|| "default".to_string());
        let host = hostname(&service, &namespace, settings);
        let entry = by_service
            .entry(host.clone())
            .or_insert_with(|| ServiceEndpoints {
                hostname: host,
                namespace: namespace.clone(),
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        for p in slice.ports.clone().unwrap_or_default() {
            let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let port = EndpointPortSpec {
                name: p.name.unwrap_or_default(),
                port,
                protocol: p.protocol.unwrap_or_else(|| "TCP".to_string()),
            };
            if !entry.ports.contains(&port) {
                entry.ports.push(port);
            }
        }
        for ep in slice.endpoints.clone().unwrap_or_default() {
            let cond = ep.conditions.unwrap_or_default();
            let pod = ep
                .target_ref
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.namespace.unwrap_or_else(|| namespace.clone()),
                        r.name.unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            for ip in ep.addresses {
                if entry.endpoints.iter().any(|e| e.ip == ip) {
                    continue;
                }
                entry.endpoints.push(EndpointSpec {
                    ip,
                    node: ep.node_name.clone().unwrap_or_default(),
                    zone: ep.zone.clone().unwrap_or_default(),
                    pod: pod.clone(),
                    // Unset means ready (the EndpointSlice API's rule).
                    ready: cond.ready.unwrap_or(true),
                    service_account: String::new(),
                    meshed: false,
                });
            }
        }
    }
    let mut out: Vec<ServiceEndpoints> = by_service.into_values().collect();
    for s in &mut out {
        s.endpoints.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.ports
            .sort_by(|a, b| (a.port, &a.name).cmp(&(b.port, &b.name)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn state(objects: serde_json::Value) -> ClusterState {
        let mut s = ClusterState::default();
        let list = |key: &str| objects[key].as_array().cloned().unwrap_or_default();
        fn load<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).expect("k8s object")
        }
        s.nodes.apply(Event::Init);
        for n in list("nodes") {
            s.nodes.apply(Event::InitApply(load(n)));
        }
        s.nodes.apply(Event::InitDone);
        s.pods.apply(Event::Init);
        for p in list("pods") {
            s.pods.apply(Event::InitApply(load(p)));
        }
        s.pods.apply(Event::InitDone);
        s.services.apply(Event::Init);
        for v in list("services") {
            s.services.apply(Event::InitApply(load(v)));
        }
        s.services.apply(Event::InitDone);
        s.endpoint_slices.apply(Event::Init);
        for v in list("endpointSlices") {
            s.endpoint_slices.apply(Event::InitApply(load(v)));
        }
        s.endpoint_slices.apply(Event::InitDone);
        s
    }

    fn pod(name: &str, annotations: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
               "spec": {"nodeName": "n1", "containers": []},
               "status": {"podIP": "10.244.1.9"}})
    }

    #[test]
    fn bad_nodes_and_pods_are_left_out_with_a_reason() {
        let s = state(json!({
            "nodes": [
                {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}},
                {"metadata": {"name": "no-cidr"}, "spec": {}},
                {"metadata": {"name": "bad-mode", "annotations": {"dpumesh.io/network-mode": "mesh"}},
                 "spec": {"podCIDR": "10.244.3.0/24"}},
            ],
            "pods": [
                pod("ok", json!({"dpumesh.io/vf-index": "2", "dpumesh.io/mac": "02:AA:00:00:00:02",
                                 "sidecar.istio.io/inject": "false"})),
                pod("bad-mac", json!({"dpumesh.io/vf-index": "3", "dpumesh.io/mac": "02:aa"})),
                pod("no-mac", json!({"dpumesh.io/vf-index": "4"})),
                pod("no-vf", json!({})),
            ],
        }));
        let built = build(&s, &ClusterSettings::default());
        assert_eq!(built.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        let pods = &built.nodes["n1"].inventory.pods;
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].mac, "02:aa:00:00:00:02", "lower-cased");
        assert_eq!(pods[0].representor, "pf0vf2");
        assert!(!pods[0].meshed, "sidecar.istio.io/inject: false");
        assert_eq!(
            built.skipped,
            [
                "node bad-mode: annotation dpumesh.io/network-mode: \"mesh\" is neither \"underlay\" nor \"overlay\"",
                "node n1: no underlay address (no annotation dpumesh.io/dpu-underlay-ip, \
                 no InternalIP in status.addresses): no network.yaml, and not a peer of the other nodes",
                "node no-cidr: spec.podCIDR is not set yet",
                "pod default/bad-mac: annotation dpumesh.io/mac: \"02:aa\" is not a MAC address",
                "pod default/no-mac: annotation dpumesh.io/mac is missing",
            ]
        );
    }

    #[test]
    fn services_headless_udp_external_name() {
        let s = state(json!({
            "nodes": [{"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}],
            "services": [
                {"metadata": {"name": "headless", "namespace": "a"},
                 "spec": {"clusterIP": "None", "ports": [{"name": "grpc-x", "port": 7000},
                                                           {"name": "dns", "port": 53, "protocol": "UDP"}]}},
                {"metadata": {"name": "ext", "namespace": "a"},
                 "spec": {"type": "ExternalName", "externalName": "example.com"}},
                {"metadata": {"name": "h2", "namespace": "a"},
                 "spec": {"clusterIPs": ["10.96.0.5", "fd00::5"],
                          "ports": [{"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c", "targetPort": 8080}]}},
            ],
        }));
        let built = build(&s, &ClusterSettings::default());
        let svcs = &built.nodes["n1"].inventory.services;
        let hosts: Vec<&str> = svcs.iter().map(|s| s.hostname.as_str()).collect();
        assert_eq!(
            hosts,
            ["h2.a.svc.cluster.local", "headless.a.svc.cluster.local"]
        );
        assert_eq!(svcs[0].vips, ["10.96.0.5", "fd00::5"]);
        assert_eq!(svcs[0].ports[0].protocol, Some(Protocol::Http2));
        assert_eq!(svcs[0].ports[0].target_port, Some(8080));
        assert!(svcs[1].vips.is_empty(), "headless");
        assert_eq!(svcs[1].ports.len(), 1, "UDP port left out");
        assert_eq!(svcs[1].ports[0].protocol, Some(Protocol::Grpc));
        assert_eq!(
            built.skipped,
            [
                "node n1: no underlay address (no annotation dpumesh.io/dpu-underlay-ip, \
                 no InternalIP in status.addresses): no network.yaml, and not a peer of the other nodes",
                "service a/ext: ExternalName services are not in the mesh inventory",
                "service a/headless: port 53 (UDP) is not TCP",
            ]
        );
    }

    #[test]
    fn pods_claiming_the_same_vf_or_address_do_not_break_the_node() {
        let pod = |name: &str, vf: &str, mac: &str, ip: &str, deleting: bool| {
            let mut meta = json!({"name": name, "namespace": "default",
                "annotations": {"dpumesh.io/vf-index": vf, "dpumesh.io/mac": mac}});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-11-29T10:00:00Z");
            }
            json!({"metadata": meta, "spec": {"nodeName": "n1", "containers": []},
                   "status": {"podIP": ip}})
        };
        let s = state(json!({
            "nodes": [{"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}],
            "pods": [
                // Two live pods on one VF: which one holds it is unknown.
                pod("a", "2", "02:00:00:00:00:02", "10.244.1.5", false),
                pod("b", "2", "02:00:00:00:00:12", "10.244.1.6", false),
                // A terminating pod whose IP went to a new pod.
                pod("old", "3", "02:00:00:00:00:03", "10.244.1.7", true),
                pod("new", "4", "02:00:00:00:00:04", "10.244.1.7", false),
                // A terminating pod that conflicts with nobody stays.
                pod("going", "5", "02:00:00:00:00:05", "10.244.1.9", true),
            ],
        }));
        let built = build(&s, &ClusterSettings::default());
        let names: Vec<&str> = built.nodes["n1"]
            .inventory
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["going", "new"]);
        assert_eq!(
            built.skipped,
            [
                "node n1: no underlay address (no annotation dpumesh.io/dpu-underlay-ip, \
                 no InternalIP in status.addresses): no network.yaml, and not a peer of the other nodes",
                "pod default/a: VF 2 also claimed by default/b; \
                 representor pf0vf2 also claimed by default/b",
                "pod default/b: VF 2 also claimed by default/a; \
                 representor pf0vf2 also claimed by default/a",
                "pod default/old (terminating): IP 10.244.1.7 now held by default/new",
            ]
        );
    }

    #[test]
    fn endpoints_carry_the_pods_identity_and_dpumesh_membership() {
        let on = |name: &str, node: &str, ip: &str, sa: &str, ann: serde_json::Value| {
            json!({"metadata": {"name": name, "namespace": "default", "annotations": ann},
                   "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
                   "status": {"podIP": ip}})
        };
        let vf = |i: &str| json!({"dpumesh.io/vf-index": i, "dpumesh.io/mac": "02:00:00:00:00:02"});
        let target = |name: &str| json!({"kind": "Pod", "namespace": "default", "name": name});
        let s = state(json!({
            "nodes": [{"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}},
                      {"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"}}],
            "pods": [
                on("meshed", "n2", "10.244.2.7", "reviews", vf("2")),
                on("opted-out", "n2", "10.244.2.8", "legacy",
                   json!({"dpumesh.io/vf-index": "3", "dpumesh.io/mac": "02:00:00:00:00:03",
                          "sidecar.istio.io/inject": "false"})),
                on("no-vf", "n2", "10.244.2.9", "", json!({})),
            ],
            "endpointSlices": [{
                "metadata": {"name": "reviews-x", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.2.7"], "nodeName": "n2", "targetRef": target("meshed")},
                    {"addresses": ["10.244.2.8"], "nodeName": "n2", "targetRef": target("opted-out")},
                    {"addresses": ["10.244.2.9"], "nodeName": "n2", "targetRef": target("no-vf")},
                    {"addresses": ["10.0.0.1"]}
                ]
            }],
        }));
        let built = build(&s, &ClusterSettings::default());
        let eps = &built.nodes["n1"].endpoints[0].endpoints;
        let got: Vec<(&str, &str, &str, bool)> = eps
            .iter()
            .map(|e| {
                (
                    e.ip.as_str(),
                    e.node.as_str(),
                    e.service_account.as_str(),
                    e.meshed,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1", "", "", false),
                ("10.244.2.7", "n2", "reviews", true),
                ("10.244.2.8", "n2", "legacy", false),
                ("10.244.2.9", "n2", "default", false),
            ]
        );
        // The adapter decodes what the controller renders (files or stream).
        let [node_yaml, pods_yaml, services_yaml, endpoints_yaml, network_yaml] =
            crate::k8s::output::render(&built.nodes["n1"]).expect("render");
        assert_eq!(network_yaml, "", "n1 has no underlay address");
        let inv = Inventory::parse(
            crate::inventory::InventoryTexts {
                node_yaml: ("node.yaml", &node_yaml),
                pods_yaml: ("pods.yaml", &pods_yaml),
                services_yaml: ("services.yaml", &services_yaml),
                endpoints_yaml: ("endpoints.yaml", &endpoints_yaml),
                network_yaml: ("network.yaml", &network_yaml),
            },
            Some("n1"),
        )
        .expect("the adapter decodes the rendered inventory");
        let meshed = &inv.endpoints["10.244.2.7"];
        assert_eq!(
            (
                meshed.node.as_str(),
                meshed.service_account.as_str(),
                meshed.meshed
            ),
            ("n2", "reviews", true)
        );
        assert!(!inv.endpoints["10.244.2.8"].meshed);
        assert_eq!(inv.endpoints["10.0.0.1"].node, "");
    }

    #[test]
    fn every_node_with_an_underlay_address_gets_the_others_as_peers() {
        let node = |name: &str, cidr: &str, ann: serde_json::Value, addrs: serde_json::Value| {
            json!({"metadata": {"name": name, "annotations": ann},
                   "spec": {"podCIDR": cidr},
                   "status": {"addresses": addrs}})
        };
        let internal = |ip: &str| json!({"type": "InternalIP", "address": ip});
        let hostname = |h: &str| json!({"type": "Hostname", "address": h});
        let s = state(json!({
            "nodes": [
                // The annotation wins over the InternalIP.
                node("n1", "10.244.1.0/24",
                     json!({"dpumesh.io/dpu-underlay-ip": "192.0.2.11"}),
                     json!([internal("172.18.0.1")])),
                // No annotation: the InternalIP, IPv4 before IPv6.
                node("n2", "10.244.2.0/24", json!({"dpumesh.io/network-mode": "overlay"}),
                     json!([hostname("n2"), internal("fd00::12"), internal("172.18.0.2")])),
                // Neither: no network, no peer.
                node("n3", "10.244.3.0/24", json!({}), json!([hostname("n3")])),
                // A broken annotation is not replaced by the InternalIP.
                node("n4", "10.244.4.0/24",
                     json!({"dpumesh.io/dpu-underlay-ip": "dpu-4"}),
                     json!([internal("172.18.0.4")])),
                // No pod CIDR: not a node of the inventory, so no peer either.
                node("n5", "", json!({"dpumesh.io/dpu-underlay-ip": "192.0.2.15"}), json!([])),
            ],
        }));
        let settings = ClusterSettings {
            vni: 77,
            ..ClusterSettings::default()
        };
        let built = build(&s, &settings);
        let n1 = built.nodes["n1"]
            .inventory
            .network
            .clone()
            .expect("n1 network");
        assert_eq!(n1.underlay_ip.to_string(), "192.0.2.11");
        assert_eq!(n1.vni, 77);
        assert_eq!(
            n1.peers,
            [PeerNodeSpec {
                name: "n2".into(),
                pod_cidr: "10.244.2.0/24".into(),
                underlay_ip: "172.18.0.2".parse().expect("ip"),
            }]
        );
        let n2 = built.nodes["n2"]
            .inventory
            .network
            .clone()
            .expect("n2 network");
        assert_eq!(n2.underlay_ip.to_string(), "172.18.0.2");
        assert_eq!(
            n2.peers
                .iter()
                .map(|p| (
                    p.name.as_str(),
                    p.pod_cidr.as_str(),
                    p.underlay_ip.to_string()
                ))
                .collect::<Vec<_>>(),
            [("n1", "10.244.1.0/24", "192.0.2.11".to_string())]
        );
        assert_eq!(built.nodes["n3"].inventory.network, None);
        assert_eq!(built.nodes["n4"].inventory.network, None);
        assert!(!built.nodes.contains_key("n5"));
        assert_eq!(
            built.skipped,
            [
                "node n3: no underlay address (no annotation dpumesh.io/dpu-underlay-ip, \
                 no InternalIP in status.addresses): no network.yaml, and not a peer of the other nodes",
                "node n4: annotation dpumesh.io/dpu-underlay-ip: \"dpu-4\" is not an IP address: \
                 no network.yaml, and not a peer of the other nodes",
                "node n5: spec.podCIDR is not set yet",
            ]
        );
        // network.yaml as written and streamed, and the adapter's decoder of it.
        let files = crate::k8s::output::render(&built.nodes["n2"]).expect("render");
        assert_eq!(
            files[4],
            "underlayIp: 172.18.0.2\nvni: 77\npeers:\n- name: n1\n  podCidr: 10.244.1.0/24\n  underlayIp: 192.0.2.11\n"
        );
        assert_eq!(
            crate::k8s::output::render(&built.nodes["n3"]).expect("render")[4],
            ""
        );
        let inv = Inventory::parse(
            crate::inventory::InventoryTexts {
                node_yaml: ("node.yaml", &files[0]),
                pods_yaml: ("pods.yaml", &files[1]),
                services_yaml: ("services.yaml", &files[2]),
                endpoints_yaml: ("endpoints.yaml", &files[3]),
                network_yaml: ("network.yaml", &files[4]),
            },
            Some("n2"),
        )
        .expect("the adapter decodes network.yaml");
        assert_eq!(inv.network, Some(n2));
        // What the adapter sets on n2's dataplane.
        let want = crate::node_network::desired(&inv, None)
            .expect("desired")
            .expect("a network");
        assert_eq!(want.addr, "192.168.100.2:15081");
        assert_eq!(
            want.network.mode,
            dpumesh_api::proto::v1::NetworkMode::Overlay as i32
        );
        assert_eq!(want.network.pod_cidr, "10.244.2.0/24");
        assert_eq!(want.network.service_cidrs, ["10.96.0.0/16"]);
        assert_eq!(want.network.underlay_ip, "172.18.0.2");
        assert_eq!(want.network.vni, 77);
        assert_eq!(want.network.peers.len(), 1);
        assert_eq!(want.network.peers[0].underlay_ip, "192.0.2.11");
    }

    #[test]
    fn a_relist_replaces_the_whole_set() {
        let mut s = state(json!({"pods": [pod("x", json!({})), pod("y", json!({}))]}));
        assert_eq!(s.pods.len(), 2);
        // A relist (after 410): until InitDone the old set stays visible.
        assert!(!s.pods.apply(Event::Init));
        let y: Pod = serde_json::from_value(pod("y", json!({}))).expect("pod");
        assert!(!s.pods.apply(Event::InitApply(y)));
        assert_eq!(s.pods.len(), 2);
        assert!(s.pods.apply(Event::InitDone));
        assert_eq!(
            s.pods.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["y"]
        );
        assert_eq!(s.pods.lists(), 2);
    }
}

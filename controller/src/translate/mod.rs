//! Envoy v3 xDS of every local pod's proxy + the node inventory → one NodeConfig.
//!
//! The mapping, its defaults and what is not mapped are documented in
//! `docs/adapter.md`. Rules that shape the code:
//!
//! * Anything the adapter cannot use — an undecodable typed config, an unsupported
//!   feature that would change routing, a reference to a cluster or route config
//!   that does not exist — is a [`TranslateError`] naming the resource (type URL and
//!   name, and the pod whose proxy it came from). Nothing is half-translated.
//! * Shared things are stored once: clusters and services by name; route tables by
//!   content. For each HTTP port the route table most pods received is the shared
//!   one (`services[].ports[].routeTable`); a pod that received different content
//!   gets `routeOverrides["<port>"]` naming a content-addressed variant.

mod cluster;
mod endpoint;
mod inbound;
mod route;
pub mod tls;
mod util;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use dpumesh_api::config::{
    self as dp, cluster_name, Endpoint, EndpointHealth, HashKey, LbKind, Locality,
    LocalityFailover, LocalityLb, NodeConfig, Pod, Protocol, RouteTable, Service, ServicePort,
    TcpRoute, TcpRouteTable, WeightedDestination, API_VERSION,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, HealthStatus,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier as TcpClusterSpecifier, TcpProxy,
};
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Name;

use crate::inventory::{Inventory, PodSpec, ServiceSpec};
use crate::xds::{
    ProxyResources, ResourceRef, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
    SECRET_TYPE,
};

pub use cluster::parse_name as parse_cluster_name;
pub use route::{ENVOY_DEFAULT_ROUTE_TIMEOUT_MS, FAULT_FILTER};
use util::{filter_metadata, fnv1a, string_field, string_map};

/// A stable hash of bytes (FNV-1a 64), used to name content-addressed things.
pub fn content_hash(bytes: &[u8]) -> u64 {
    fnv1a(bytes)
}

/// A resource the adapter cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TranslateError {
    /// The resource at fault.
    pub resource: ResourceRef,
    /// `<namespace>/<name>` of the pod whose proxy received it.
    pub pod: Option<String>,
    pub message: String,
    /// Set when the fault is a reference to a resource not received (yet): the
    /// ADS client treats it as warming while that resource is still awaited.
    pub missing: Option<Box<ResourceRef>>,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resource)?;
        if let Some(pod) = &self.pod {
            write!(f, " (proxy of pod {pod})")?;
        }
        write!(f, ": {}", self.message)
    }
}

fn error(type_url: &str, name: &str, pod: &str, message: impl Into<String>) -> TranslateError {
    TranslateError {
        resource: ResourceRef::new(type_url, name),
        pod: (!pod.is_empty()).then(|| pod.to_string()),
        message: message.into(),
        missing: None,
    }
}

/// Capture listeners of a sidecar; their content is about interception, which
/// the DPU does by steering, not listeners.
fn is_capture_listener(name: &str, port: u32) -> bool {
    name.starts_with("virtual") || port == 15001 || port == 15006
}

/// Label the adapter gives endpoints of a subset whose DestinationRule selector it
/// cannot recover from EDS (see `subset_labels`).
pub fn synthetic_subset_label(port: u16, subset: &str) -> String {
    format!("p{port}.subset.dpumesh.io/{subset}")
}

struct ClusterEntry<'a> {
    config: dp::Cluster,
    envoy: &'a EnvoyCluster,
    pod: &'a str,
}

/// An HTTP or TCP listener binding of one pod's proxy.
struct Binding {
    port: u16,
    /// `None` for a wildcard (`0.0.0.0_<port>`) listener, else the VIP.
    vip: Option<String>,
    listener: String,
    kind: BindingKind,
}

enum BindingKind {
    Http {
        route: Box<RouteConfiguration>,
    },
    Tcp {
        destinations: Vec<WeightedDestination>,
    },
}

/// Translates the xDS of every pod's proxy (`proxies`, keyed `<ns>/<pod>`) and the
/// inventory into one NodeConfig (version 1; the pusher sets the real version).
///
/// `proxies` may hold the resource sets by value or shared (`Arc`): pods whose
/// listeners and route configurations are identical (the same shared set, or
/// equal content) are translated once and the result is used for all of them.
pub fn translate<P: Borrow<ProxyResources>>(
    inventory: &Inventory,
    proxies: &BTreeMap<String, P>,
) -> Result<NodeConfig, TranslateError> {
    let proxies: BTreeMap<&str, &ProxyResources> = proxies
        .iter()
        .map(|(pod, px)| (pod.as_str(), px.borrow()))
        .collect();
    let mut services: BTreeMap<String, Service> = inventory
        .services
        .iter()
        .map(|s| (s.hostname.clone(), service_from_spec(s)))
        .collect();

    // Clusters: union over pods; the first pod (in key order) wins a conflict.
    let mut clusters: BTreeMap<String, ClusterEntry<'_>> = BTreeMap::new();
    let mut secrets: BTreeMap<String, dp::Secret> = BTreeMap::new();
    for (&pod, &px) in &proxies {
        for (name, c) in &px.clusters {
            let Some((port, subset, host)) = cluster::parse_name(name) else {
                continue;
            };
            if clusters.contains_key(name) {
                continue;
            }
            ensure_service(&mut services, host, port, c, inventory)
                .map_err(|m| error(CLUSTER_TYPE, name, pod, m))?;
            let mut config = cluster::cluster(c, port, subset, host)
                .map_err(|m| error(CLUSTER_TYPE, name, pod, m))?;
            let (mode, origination, named) =
                tls::origination(c, &px.secrets).map_err(|e| match e {
                    tls::TlsError::Cluster(m) => error(CLUSTER_TYPE, name, pod, m),
                    tls::TlsError::Secret { name: s, message } => error(
                        SECRET_TYPE,
                        &s,
                        pod,
                        format!("{message} (named by cluster {name:?})"),
                    ),
                })?;
            let mut origination = origination;
            if let Some(o) = origination.as_mut() {
                o.auto_sni = cluster::auto_sni(c).map_err(|m| error(CLUSTER_TYPE, name, pod, m))?;
            }
            (config.tls, config.tls_origination) = (mode, origination);
            for s in named {
                // Stored once; a secret with content wins over a pod still waiting for it.
                match secrets.get(&s.name) {
                    Some(have) if !have.is_unavailable() || s.is_unavailable() => {}
                    _ => {
                        secrets.insert(s.name.clone(), s);
                    }
                }
            }
            clusters.insert(
                name.clone(),
                ClusterEntry {
                    config,
                    envoy: c,
                    pod,
                },
            );
        }
    }

    // Endpoints (EDS, or a cluster's inline load assignment), merged per service.
    let local_pods: BTreeMap<&str, &PodSpec> = inventory
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (ip.as_str(), p)))
        .collect();
    let mut endpoints: BTreeMap<String, BTreeMap<String, Endpoint>> = BTreeMap::new();
    let mut endpoint_ports: BTreeMap<(String, u16), BTreeMap<String, u16>> = BTreeMap::new();
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, entry) in clusters.iter_mut() {
        let cla = proxies
            .get(entry.pod)
            .and_then(|px| px.endpoints.get(name))
            .or_else(|| proxies.values().find_map(|px| px.endpoints.get(name)))
            .or(entry.envoy.load_assignment.as_ref());
        let Some(cla) = cla else { continue };
        let host = entry.config.service.clone();
        let port = entry.config.port;
        let by_address = endpoints.entry(host.clone()).or_default();
        let ports = endpoint_ports.entry((host, port)).or_default();
        let set = members.entry(name.clone()).or_default();
        let mut priorities: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for group in &cla.endpoints {
            let locality = group
                .locality
                .as_ref()
                .map(|l| Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    subzone: l.sub_zone.clone(),
                })
                .unwrap_or_default();
            priorities
                .entry(group.priority)
                .or_default()
                .insert(locality.region.clone());
            for lbe in &group.lb_endpoints {
                let Some(HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                    return Err(error(
                        ENDPOINT_TYPE,
                        name,
                        entry.pod,
                        "named endpoints are not supported",
                    ));
                };
                let Some((address, ep_port)) = endpoint::socket(ep, lbe.metadata.as_ref()) else {
                    return Err(error(
                        ENDPOINT_TYPE,
                        name,
                        entry.pod,
                        "endpoint without a socket address",
                    ));
                };
                if address.parse::<std::net::IpAddr>().is_err() {
                    // DNS endpoints (STRICT_DNS ServiceEntries) need a resolver on the DPU.
                    tracing::debug!(cluster = %name, %address, "skipping non-IP endpoint");
                    continue;
                }
                set.insert(address.clone());
                if let Ok(p) = u16::try_from(ep_port) {
                    ports.entry(address.clone()).or_insert(p);
                }
                let local = local_pods.get(address.as_str());
                let istio = filter_metadata(lbe.metadata.as_ref(), "istio");
                let labels = istio
                    .and_then(|m| string_map(m, "labels"))
                    .or_else(|| local.map(|p| p.labels.clone()))
                    .unwrap_or_default();
                let service_account = local
                    .map(|p| p.service_account.clone())
                    .or_else(|| {
                        istio
                            .and_then(|m| string_field(m, "service_account"))
                            .map(String::from)
                    })
                    .or_else(|| {
                        // The controller's view (pods of other dpumesh nodes).
                        inventory
                            .endpoints
                            .get(address.as_str())
                            .map(|k| k.service_account.clone())
                            .filter(|sa| !sa.is_empty())
                    })
                    .unwrap_or_default();
                let placement = endpoint::placement(
                    inventory,
                    &address,
                    local.is_some(),
                    endpoint::IstioMarks::of(lbe.metadata.as_ref()),
                    &service_account,
                );
                let health = match HealthStatus::try_from(lbe.health_status) {
                    Ok(HealthStatus::Unhealthy) | Ok(HealthStatus::Timeout) => {
                        EndpointHealth::Unhealthy
                    }
                    Ok(HealthStatus::Draining) => EndpointHealth::Draining,
                    _ => EndpointHealth::Healthy,
                };
                by_address
                    .entry(address.clone())
                    .or_insert_with(|| Endpoint {
                        address,
                        ports: BTreeMap::new(),
                        node: placement.node,
                        locality: locality.clone(),
                        weight: lbe
                            .load_balancing_weight
                            .as_ref()
                            .map(|w| w.value)
                            .filter(|w| *w > 0)
                            .unwrap_or(1),
                        health,
                        labels,
                        service_account,
                        hbone: placement.hbone,
                    });
            }
        }
        // Istio's locality failover shows in EDS as priorities by region.
        if priorities.keys().any(|p| *p > 0) {
            let mut failover = Vec::new();
            let levels: Vec<&BTreeSet<String>> = priorities.values().collect();
            for pair in levels.windows(2) {
                for from in pair[0] {
                    for to in pair[1] {
                        let f = LocalityFailover {
                            from: from.clone(),
                            to: to.clone(),
                        };
                        if from != to
                            && !from.is_empty()
                            && !to.is_empty()
                            && !failover.contains(&f)
                        {
                            failover.push(f);
                        }
                    }
                }
            }
            let lb = entry.config.locality_lb.get_or_insert(LocalityLb {
                enabled: true,
                failover: Vec::new(),
            });
            lb.failover = failover;
        }
    }

    // Target ports: when every endpoint of a port listens on the same other port,
    // that is the service's targetPort; otherwise per-endpoint ports by port name.
    for ((host, port), by_address) in &endpoint_ports {
        let Some(service) = services.get_mut(host) else {
            continue;
        };
        let Some(sp) = service.ports.iter_mut().find(|p| p.port == *port) else {
            continue;
        };
        let distinct: BTreeSet<u16> = by_address.values().copied().collect();
        if sp.target_port.is_none() && distinct.len() == 1 {
            let only = distinct.iter().next().copied().unwrap_or(*port);
            if only != *port {
                sp.target_port = Some(only);
            }
            continue;
        }
        let target = sp.target_port.unwrap_or(sp.port);
        if by_address.values().all(|p| *p == target) {
            continue;
        }
        if sp.name.is_empty() {
            sp.name = format!("port-{port}");
        }
        let port_name = sp.name.clone();
        if let Some(eps) = endpoints.get_mut(host) {
            for (address, p) in by_address {
                if *p != target {
                    if let Some(e) = eps.get_mut(address) {
                        e.ports.insert(port_name.clone(), *p);
                    }
                }
            }
        }
    }

    // Subset selectors.
    for (name, entry) in clusters.iter_mut() {
        let Some(subset) = entry.config.subset.clone() else {
            continue;
        };
        let in_subset = members.get(name).cloned().unwrap_or_default();
        let eps = endpoints.entry(entry.config.service.clone()).or_default();
        entry.config.subset_labels = subset_labels(eps, &in_subset, entry.config.port, &subset);
    }

    // Listeners → bindings, once per distinct (listeners, routes) content: pods
    // sharing one resource set (local mode) or receiving equal content get the
    // same bindings and route tables, so they are translated once. Groups are in
    // the order of their first pod, which is the pod a fault is reported for.
    let mut groups: Vec<(&ProxyResources, Vec<&str>)> = Vec::new();
    for (&pod, &px) in &proxies {
        match groups.iter_mut().find(|(rep, _)| same_bindings(rep, px)) {
            Some((_, pods)) => pods.push(pod),
            None => groups.push((px, vec![pod])),
        }
    }
    let mut bindings: Vec<(Vec<Binding>, Vec<&str>)> = Vec::with_capacity(groups.len());
    for (px, pods) in groups {
        let mut list = Vec::new();
        for (name, l) in &px.listeners {
            listener_bindings(name, l, px, pods[0], &mut list)?;
        }
        bindings.push((list, pods));
    }

    // Route tables.
    let mut facts = route::RouteFacts::default();
    let mut route_tables: BTreeMap<String, RouteTable> = BTreeMap::new();
    let mut overrides: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    let mut tcp_tables: BTreeMap<String, TcpRouteTable> = BTreeMap::new();
    // (port, vip) → content JSON → (table, pods)
    type Variants<'p> = BTreeMap<String, (RouteTable, Vec<&'p str>)>;
    let mut http: BTreeMap<(u16, Option<String>), Variants<'_>> = BTreeMap::new();
    for (list, group) in &bindings {
        let pod = group[0];
        for b in list {
            match &b.kind {
                BindingKind::Http { route } => {
                    let mut table_facts = route::RouteFacts::default();
                    let table = route::route_table(route, &mut table_facts)
                        .map_err(|m| error(ROUTE_TYPE, &route.name, pod, m))?;
                    for c in &table_facts.clusters {
                        if !cluster_exists(c, &clusters, &services) {
                            return Err(error(ROUTE_TYPE, &route.name, pod, format!("refers to cluster {c:?}, which is neither in CDS nor a service port's default cluster")));
                        }
                    }
                    for (c, key) in table_facts.hash_keys {
                        facts.hash_keys.entry(c).or_insert(key);
                    }
                    let content = serde_json::to_string(&table.virtual_hosts).unwrap_or_default();
                    let variants = http.entry((b.port, b.vip.clone())).or_default();
                    variants
                        .entry(content)
                        .or_insert_with(|| (table, Vec::new()))
                        .1
                        .extend(group.iter().copied());
                }
                BindingKind::Tcp { destinations } => {
                    for d in destinations {
                        if !cluster_exists(&d.cluster, &clusters, &services) {
                            return Err(error(LISTENER_TYPE, &b.listener, pod, format!("tcp_proxy refers to cluster {:?}, which is neither in CDS nor a service port's default cluster", d.cluster)));
                        }
                    }
                    bind_tcp(b, destinations, &mut services, &mut tcp_tables);
                }
            }
        }
    }
    for ((port, vip), variants) in http {
        // The most common content is shared; ties go to the first content in order.
        let mut ranked: Vec<(String, RouteTable, Vec<&str>)> = variants
            .into_iter()
            .map(|(content, (table, pods))| (content, table, pods))
            .collect();
        ranked.sort_by(|a, b| b.2.len().cmp(&a.2.len()).then_with(|| a.0.cmp(&b.0)));
        for (i, (content, mut table, pods)) in ranked.into_iter().enumerate() {
            let base = table.name.clone();
            let hashed = format!("{base}-{:08x}", fnv1a(content.as_bytes()) as u32);
            table.name = if i == 0
                && route_tables.get(&base).is_none_or(|t| {
                    t == &RouteTable {
                        name: base.clone(),
                        ..table.clone()
                    }
                }) {
                base
            } else {
                hashed
            };
            if i == 0 {
                bind_http(port, vip.as_deref(), &table.name, &mut services);
            } else if vip.is_none() {
                for pod in pods {
                    overrides
                        .entry(pod)
                        .or_default()
                        .insert(port.to_string(), table.name.clone());
                }
            } else {
                tracing::warn!(port, vip = ?vip, "pods differ on a VIP-bound HTTP listener; using the most common route config");
                continue;
            }
            route_tables.insert(table.name.clone(), table);
        }
    }

    // Consistent hashing: the key the routes ask for, else the source IP.
    let mut out_clusters = Vec::new();
    for (name, entry) in clusters {
        let mut c = entry.config;
        if c.lb_policy.kind == LbKind::ConsistentHash {
            c.lb_policy.hash_key = Some(
                facts
                    .hash_keys
                    .get(&name)
                    .cloned()
                    .unwrap_or(HashKey::SourceIp),
            );
        }
        out_clusters.push(c);
    }

    // Inbound policies from each pod's virtualInbound listener (inbound.rs).
    let mut inbound = inbound::inbound_policies(&proxies)?;
    let pods: Vec<Pod> = inventory
        .pods
        .iter()
        .map(|p| Pod {
            inbound_policy: inbound.by_pod.remove(&p.key()),
            ..pod_from_spec(p, overrides.remove(p.key().as_str()).unwrap_or_default())
        })
        .collect();
    inbound.policies.retain(|ip| {
        pods.iter()
            .any(|p| p.inbound_policy.as_ref() == Some(&ip.name))
    });
    let services = services
        .into_values()
        .map(|mut s| {
            s.endpoints = endpoints
                .remove(&s.hostname)
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            s
        })
        .collect();
    let mut sources = BTreeMap::new();
    for (pod, px) in &proxies {
        for (type_url, version) in &px.versions {
            sources.insert(
                format!("xds/{pod}/{}", crate::xds::resource::short_type(type_url)),
                version.clone(),
            );
        }
    }
    Ok(NodeConfig {
        api_version: API_VERSION.to_string(),
        version: 1,
        sources,
        node: inventory.node.clone(),
        pods,
        services,
        clusters: out_clusters,
        route_tables: route_tables.into_values().collect(),
        tcp_route_tables: tcp_tables.into_values().collect(),
        inbound_policies: inbound.policies,
        secrets: secrets.into_values().collect(),
    })
}

fn service_from_spec(s: &ServiceSpec) -> Service {
    Service {
        hostname: s.hostname.clone(),
        namespace: s.namespace.clone(),
        vips: s.vips.clone(),
        ports: s
            .ports
            .iter()
            .map(|p| ServicePort {
                port: p.port,
                name: p.name.clone(),
                protocol: p.protocol,
                target_port: p.target_port,
                route_table: None,
                tcp_route_table: None,
            })
            .collect(),
        endpoints: Vec::new(),
    }
}

fn pod_from_spec(p: &PodSpec, route_overrides: BTreeMap<String, String>) -> Pod {
    Pod {
        uid: p.uid.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        service_account: p.service_account.clone(),
        labels: p.labels.clone(),
        ips: p.ips.clone(),
        mac: p.mac.clone(),
        vf_index: p.vf_index,
        representor: p.representor.clone(),
        spiffe_id: p.spiffe_id.clone(),
        meshed: p.meshed,
        interception: p.interception.clone(),
        inbound_policy: None,
        route_overrides,
        rate_limit: None,
    }
}

/// Makes sure `host` is a service with `port`: services istiod knows but the
/// inventory does not (ServiceEntries, other clusters' services) are added from
/// the cluster's Istio metadata or its `<name>.<namespace>.svc.<domain>` name.
fn ensure_service(
    services: &mut BTreeMap<String, Service>,
    host: &str,
    port: u16,
    c: &EnvoyCluster,
    inventory: &Inventory,
) -> Result<(), String> {
    if !services.contains_key(host) {
        let namespace = metadata_namespace(c, host).or_else(|| {
            let suffix = format!(".svc.{}", inventory.node.dns_domain);
            host.strip_suffix(&suffix)
                .and_then(|rest| rest.split_once('.'))
                .map(|(_, ns)| ns.to_string())
        });
        let Some(namespace) = namespace else {
            return Err(format!("service {host:?} is not in the inventory and its namespace is unknown (no istio metadata)"));
        };
        services.insert(
            host.to_string(),
            Service {
                hostname: host.to_string(),
                namespace,
                vips: Vec::new(),
                ports: Vec::new(),
                endpoints: Vec::new(),
            },
        );
    }
    if let Some(s) = services.get_mut(host) {
        if !s.ports.iter().any(|p| p.port == port) {
            s.ports.push(ServicePort {
                port,
                name: String::new(),
                protocol: None,
                target_port: None,
                route_table: None,
                tcp_route_table: None,
            });
        }
    }
    Ok(())
}

/// `metadata.filter_metadata.istio.services[].{host,namespace}` of an istiod cluster.
fn metadata_namespace(c: &EnvoyCluster, host: &str) -> Option<String> {
    let istio = filter_metadata(c.metadata.as_ref(), "istio")?;
    let Some(Kind::ListValue(list)) = istio.fields.get("services").and_then(|v| v.kind.as_ref())
    else {
        return None;
    };
    list.values.iter().find_map(|v| match &v.kind {
        Some(Kind::StructValue(s)) if string_field(s, "host") == Some(host) => {
            string_field(s, "namespace").map(String::from)
        }
        _ => None,
    })
}

fn socket(address: Option<&Address>) -> Option<(String, u32)> {
    match address?.address.as_ref()? {
        AddressKind::SocketAddress(s) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => Some((s.address.clone(), 0)),
        },
        _ => None,
    }
}

fn cluster_exists(
    name: &str,
    clusters: &BTreeMap<String, ClusterEntry<'_>>,
    services: &BTreeMap<String, Service>,
) -> bool {
    if clusters.contains_key(name) {
        return true;
    }
    match cluster::parse_name(name) {
        Some((port, None, host)) => services
            .get(host)
            .is_some_and(|s| s.ports.iter().any(|p| p.port == port)),
        _ => false,
    }
}

/// The labels that select exactly the subset's EDS endpoints among the service's:
/// the labels all members share, when they select no one else; otherwise a
/// synthetic label given to the members.
fn subset_labels(
    endpoints: &mut BTreeMap<String, Endpoint>,
    in_subset: &BTreeSet<String>,
    port: u16,
    subset: &str,
) -> BTreeMap<String, String> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for address in in_subset {
        let labels = endpoints
            .get(address)
            .map(|e| e.labels.clone())
            .unwrap_or_default();
        common = Some(match common {
            None => labels,
            Some(c) => c
                .into_iter()
                .filter(|(k, v)| labels.get(k) == Some(v))
                .collect(),
        });
    }
    if let Some(common) = common.filter(|c| !c.is_empty()) {
        let selected: BTreeSet<&String> = endpoints
            .iter()
            .filter(|(_, e)| common.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .map(|(a, _)| a)
            .collect();
        if selected.len() == in_subset.len() && in_subset.iter().all(|a| selected.contains(a)) {
            return common;
        }
    }
    let key = synthetic_subset_label(port, subset);
    for address in in_subset {
        if let Some(e) = endpoints.get_mut(address) {
            e.labels.insert(key.clone(), "true".to_string());
        }
    }
    BTreeMap::from([(key, "true".to_string())])
}

fn listener_bindings(
    name: &str,
    l: &Listener,
    px: &ProxyResources,
    pod: &str,
    out: &mut Vec<Binding>,
) -> Result<(), TranslateError> {
    let Some((ip, port)) = socket(l.address.as_ref()) else {
        return Ok(());
    };
    if is_capture_listener(name, port) {
        return Ok(());
    }
    let port = u16::try_from(port).map_err(|_| {
        error(
            LISTENER_TYPE,
            name,
            pod,
            format!("port {port} is not a port"),
        )
    })?;
    let vip = (!matches!(ip.as_str(), "0.0.0.0" | "::")).then_some(ip);
    let chains = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref());
    let mut http_bound = false;
    for chain in chains {
        for f in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url() {
                let hcm: HttpConnectionManager =
                    util::unpack(any).map_err(|m| error(LISTENER_TYPE, name, pod, m))?;
                let route = match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => px
                        .routes
                        .get(&rds.route_config_name)
                        .cloned()
                        .ok_or_else(|| TranslateError {
                            missing: Some(Box::new(ResourceRef::new(
                                ROUTE_TYPE,
                                &rds.route_config_name,
                            ))),
                            ..error(
                                LISTENER_TYPE,
                                name,
                                pod,
                                format!(
                                    "refers to RouteConfiguration {:?}, which was not received",
                                    rds.route_config_name
                                ),
                            )
                        })?,
                    Some(RouteSpecifier::RouteConfig(mut inline)) => {
                        if inline.name.is_empty() {
                            inline.name = name.to_string();
                        }
                        inline
                    }
                    _ => {
                        return Err(error(
                            LISTENER_TYPE,
                            name,
                            pod,
                            "http_connection_manager: scoped routes are not supported",
                        ))
                    }
                };
                if !http_bound {
                    http_bound = true;
                    out.push(Binding {
                        port,
                        vip: vip.clone(),
                        listener: name.to_string(),
                        kind: BindingKind::Http {
                            route: Box::new(route),
                        },
                    });
                }
            } else if any.type_url == TcpProxy::type_url() {
                let tcp: TcpProxy =
                    util::unpack(any).map_err(|m| error(LISTENER_TYPE, name, pod, m))?;
                let destinations = match tcp.cluster_specifier {
                    Some(TcpClusterSpecifier::Cluster(c)) => vec![WeightedDestination {
                        cluster: c,
                        weight: 1,
                        headers: Default::default(),
                    }],
                    Some(TcpClusterSpecifier::WeightedClusters(w)) => w
                        .clusters
                        .into_iter()
                        .map(|c| WeightedDestination {
                            cluster: c.name,
                            weight: c.weight,
                            headers: Default::default(),
                        })
                        .collect(),
                    None => {
                        return Err(error(
                            LISTENER_TYPE,
                            name,
                            pod,
                            "tcp_proxy without a cluster",
                        ))
                    }
                };
                // Passthrough and blackhole chains are about unknown destinations.
                if destinations
                    .iter()
                    .all(|d| cluster::parse_name(&d.cluster).is_none())
                {
                    continue;
                }
                if !http_bound {
                    out.push(Binding {
                        port,
                        vip: vip.clone(),
                        listener: name.to_string(),
                        kind: BindingKind::Tcp { destinations },
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether two pods' proxies yield the same bindings and route tables: the same
/// shared set, or equal listeners and route configurations.
fn same_bindings(a: &ProxyResources, b: &ProxyResources) -> bool {
    std::ptr::eq(a, b)
        || (a.listeners.len() == b.listeners.len()
            && a.routes.len() == b.routes.len()
            && a.listeners == b.listeners
            && a.routes == b.routes)
}

/// The services an HTTP or TCP binding applies to.
fn bound_services<'a>(
    services: &'a mut BTreeMap<String, Service>,
    port: u16,
    vip: Option<&str>,
    host_hint: Option<&str>,
) -> Vec<&'a mut Service> {
    services
        .values_mut()
        .filter(|s| s.ports.iter().any(|p| p.port == port))
        .filter(|s| match vip {
            Some(v) => s.vips.iter().any(|x| x == v),
            None => host_hint.is_none_or(|h| s.hostname == h),
        })
        .collect()
}

fn bind_http(port: u16, vip: Option<&str>, table: &str, services: &mut BTreeMap<String, Service>) {
    for s in bound_services(services, port, vip, None) {
        if let Some(p) = s.ports.iter_mut().find(|p| p.port == port) {
            match p.effective_protocol() {
                Some(proto) if !proto.is_http() => continue, // istiod gives such ports a VIP-bound TCP listener
                Some(_) => {}
                None => p.protocol = Some(Protocol::Http),
            }
            p.route_table = Some(table.to_string());
        }
    }
}

fn bind_tcp(
    b: &Binding,
    destinations: &[WeightedDestination],
    services: &mut BTreeMap<String, Service>,
    tables: &mut BTreeMap<String, TcpRouteTable>,
) {
    let host_hint = destinations
        .first()
        .and_then(|d| cluster::parse_name(&d.cluster))
        .map(|(_, _, h)| h.to_string());
    for s in bound_services(services, b.port, b.vip.as_deref(), host_hint.as_deref()) {
        let hostname = s.hostname.clone();
        let Some(p) = s.ports.iter_mut().find(|p| p.port == b.port) else {
            continue;
        };
        match p.effective_protocol() {
            Some(proto) if proto.is_http() => continue,
            Some(_) => {}
            None => p.protocol = Some(Protocol::Tcp),
        }
        if p.tcp_route_table.is_some() {
            continue; // the first pod's TCP routing wins
        }
        let default = cluster_name(b.port, None, &hostname);
        if destinations.len() == 1 && destinations[0].cluster == default {
            continue; // the implicit default cluster needs no table
        }
        let name = format!("tcp-{}-{hostname}", b.port);
        tables.insert(
            name.clone(),
            TcpRouteTable {
                name: name.clone(),
                routes: vec![TcpRoute {
                    source_labels: BTreeMap::new(),
                    destinations: destinations.to_vec(),
                }],
            },
        );
        p.tcp_route_table = Some(name);
    }
}

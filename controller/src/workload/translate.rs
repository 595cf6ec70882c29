//! Workload API resources → NodeConfig.
//!
//! Each resource is checked and converted when it arrives ([`convert_address`],
//! [`convert_authorization`]): one that cannot be used is rejected on its own,
//! as ztunnel does (the others of the response are kept, the response is
//! NACKed naming it). [`build`] then makes the NodeConfig from everything held
//! and the inventory (node and pods).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dpumesh_api::config::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
    Endpoint, EndpointHealth, InboundPolicy, Locality, MtlsMode, NodeConfig, PeerAuthentication,
    Service, ServicePort,
};

use super::proto::security::{self as sec, string_match::MatchType};
use super::proto::workload::{self as wl, address::Type as AddressType};
use crate::inventory::Inventory;
use crate::translate::content_hash;
use crate::xds::ProxyResources;

/// A service of the workload API, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<String>,
    /// (service port, target port; 0 = resolved per workload).
    pub ports: Vec<(u16, u16)>,
}

impl ServiceEntry {
    /// `<namespace>/<hostname>`: how workloads name the services they back.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// A workload of the workload API, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEntry {
    pub namespace: String,
    pub name: String,
    /// Its first address (an endpoint has one address in NodeConfig); None for
    /// a hostname-only workload, which is not an endpoint here.
    pub address: Option<String>,
    /// Every address, to find the workload of a local pod.
    pub ips: Vec<String>,
    pub node: String,
    pub service_account: String,
    /// `tunnel_protocol: HBONE`: it accepts HBONE (mTLS) on port 15008.
    pub hbone: bool,
    pub locality: Locality,
    pub healthy: bool,
    pub weight: u32,
    /// `<namespace>/<hostname>` → service port → target port (0 = the service's).
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// `<namespace>/<name>` of the WORKLOAD_SELECTOR policies selecting it.
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AddressEntry {
    Workload(WorkloadEntry),
    Service(ServiceEntry),
}

/// Where an Authorization applies (`istio.security.Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

/// What an Authorization does to the pods it applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// istiod's form of PeerAuthentication STRICT (a DENY of connections
    /// without a peer identity): `peerAuthentication.mode: STRICT`, or per
    /// port (`portModes`) when it names ports.
    RequireMtls { ports: Vec<u16> },
    /// Any other policy: an `authorization[]` entry.
    Policy(AuthorizationPolicy),
}

/// An Authorization of the workload API, checked and translated.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyEntry {
    /// `<namespace>/<name>`.
    pub key: String,
    pub namespace: String,
    pub scope: Scope,
    pub effect: Effect,
}

/// Everything the stream holds, by xDS resource name.
#[derive(Debug, Clone, Default)]
pub struct WorkloadState {
    pub addresses: BTreeMap<String, AddressEntry>,
    pub authorizations: BTreeMap<String, PolicyEntry>,
}

/// A converted resource and what of it is ignored (logged by the caller).
#[derive(Debug)]
pub struct Converted<T> {
    pub entry: T,
    pub ignored: Vec<String>,
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).unwrap_or_default(),
        )),
        n => Err(format!(
            "an address of {n} bytes is neither IPv4 (4) nor IPv6 (16)"
        )),
    }
}

fn port(value: u32, what: &str, zero_ok: bool) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(0) if !zero_ok => Err(format!("{what} 0 is not a port")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{what} {value} is not a port (> 65535)")),
    }
}

fn ports(list: &[wl::Port], what: &str) -> Result<Vec<(u16, u16)>, String> {
    list.iter()
        .map(|p| {
            Ok((
                port(p.service_port, &format!("{what} service_port"), false)?,
                port(p.target_port, &format!("{what} target_port"), true)?,
            ))
        })
        .collect()
}

/// Checks and converts one `istio.workload.Address`.
pub fn convert_address(a: &wl::Address) -> Result<Converted<AddressEntry>, String> {
    match &a.r#type {
        None => Err("neither a workload nor a service".into()),
        Some(AddressType::Service(s)) => convert_service(s),
        Some(AddressType::Workload(w)) => convert_workload(w),
    }
}

fn convert_service(s: &wl::Service) -> Result<Converted<AddressEntry>, String> {
    if s.hostname.is_empty() || s.namespace.is_empty() {
        return Err("a service needs a hostname and a namespace".into());
    }
    let mut vips = Vec::new();
    for a in &s.addresses {
        let ip = ip_from_bytes(&a.address)
            .map_err(|e| format!("service addresses: {e}"))?
            .to_string();
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    let ports = ports(&s.ports, "ports")?;
    let mut ignored = Vec::new();
    if ports.is_empty() {
        ignored.push("the service has no ports: not listed".to_string());
    }
    if s.waypoint.is_some() {
        ignored.push(
            "waypoint: not used, its endpoints are reached directly (L7 policy of the waypoint is not applied)"
                .to_string(),
        );
    }
    if s.load_balancing.is_some() {
        ignored.push(
            "load_balancing: not mapped, the port's default cluster balances round robin".into(),
        );
    }
    Ok(Converted {
        entry: AddressEntry::Service(ServiceEntry {
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            vips,
            ports,
        }),
        ignored,
    })
}

fn convert_workload(w: &wl::Workload) -> Result<Converted<AddressEntry>, String> {
    let mut ips = Vec::new();
    for a in &w.addresses {
        ips.push(
            ip_from_bytes(a)
                .map_err(|e| format!("workload addresses: {e}"))?
                .to_string(),
        );
    }
    if ips.is_empty() && w.hostname.is_empty() {
        return Err("a workload needs addresses or a hostname".into());
    }
    let tunnel = wl::TunnelProtocol::try_from(w.tunnel_protocol)
        .map_err(|_| format!("tunnel_protocol {} is unknown", w.tunnel_protocol))?;
    let status = wl::WorkloadStatus::try_from(w.status)
        .map_err(|_| format!("status {} is unknown", w.status))?;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        match key.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
            _ => {
                return Err(format!(
                    "services key {key:?} is not <namespace>/<hostname>"
                ))
            }
        }
        let ports = ports(&list.ports, &format!("services[{key:?}]"))?;
        services.insert(key.clone(), ports.into_iter().collect());
    }
    let mut ignored = Vec::new();
    if ips.is_empty() {
        ignored.push(
            "a hostname-only workload is not an endpoint (DNS endpoints are not supported)".into(),
        );
    } else if ips.len() > 1 {
        ignored.push(format!(
            "addresses after the first ({}) are not endpoints",
            ips[1..].join(", ")
        ));
    }
    if w.waypoint.is_some() {
        ignored.push(
            "waypoint: not used, the workload is reached directly (L7 policy of the waypoint is not applied)"
                .into(),
        );
    }
    if w.network_gateway.is_some() {
        ignored.push("network_gateway: not used".into());
    }
    let locality = w.locality.clone().unwrap_or_default();
    Ok(Converted {
        entry: AddressEntry::Workload(WorkloadEntry {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            address: ips.first().cloned(),
            ips,
            node: w.node.clone(),
            service_account: if w.service_account.is_empty() {
                "default".into()
            } else {
                w.service_account.clone()
            },
            hbone: tunnel == wl::TunnelProtocol::Hbone,
            locality: Locality {
                region: locality.region,
                zone: locality.zone,
                subzone: locality.subzone,
            },
            healthy: status == wl::WorkloadStatus::Healthy,
            weight: w.capacity.as_ref().map_or(1, |c| c.value.max(1)),
            services,
            policies: w.authorization_policies.clone(),
        }),
        ignored,
    })
}

/// Checks and translates one `istio.security.Authorization`.
pub fn convert_authorization(a: &sec::Authorization) -> Result<PolicyEntry, String> {
    if a.name.is_empty() || a.namespace.is_empty() {
        return Err("an authorization needs a name and a namespace".into());
    }
    let scope = match sec::Scope::try_from(a.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(format!("scope {} is unknown", a.scope)),
    };
    let action = match sec::Action::try_from(a.action) {
        Ok(sec::Action::Allow) => AuthzAction::Allow,
        Ok(sec::Action::Deny) => AuthzAction::Deny,
        Err(_) => return Err(format!("action {} is unknown", a.action)),
    };
    let key = format!("{}/{}", a.namespace, a.name);
    let effect = match require_mtls(a, action) {
        Some(ports) => Effect::RequireMtls { ports },
        None => {
            let mut rules = Vec::new();
            for (g, group) in a.groups.iter().enumerate() {
                if let Some(rule) = group_rule(group).map_err(|e| format!("groups[{g}]: {e}"))? {
                    rules.push(rule);
                }
            }
            Effect::Policy(AuthorizationPolicy {
                name: key.clone(),
                action,
                rules,
            })
        }
    };
    Ok(PolicyEntry {
        key,
        namespace: a.namespace.clone(),
        scope,
        effect,
    })
}

fn is_presence(m: &sec::StringMatch) -> bool {
    matches!(m.match_type, Some(MatchType::Presence(_)))
}

/// istiod's PeerAuthentication STRICT (`istio_converted_static_strict`, and the
/// per-port form of a converted PeerAuthentication): a DENY whose every group
/// is one match of `not_principals: [presence]`, optionally with
/// `destination_ports`. Returns the ports (empty = all).
fn require_mtls(a: &sec::Authorization, action: AuthzAction) -> Option<Vec<u16>> {
    if action != AuthzAction::Deny || a.groups.is_empty() {
        return None;
    }
    let mut ports = BTreeSet::new();
    let mut all = false;
    for g in &a.groups {
        let [rules] = g.rules.as_slice() else {
            return None;
        };
        let [m] = rules.matches.as_slice() else {
            return None;
        };
        let only = sec::Match {
            not_principals: m.not_principals.clone(),
            destination_ports: m.destination_ports.clone(),
            ..sec::Match::default()
        };
        if &only != m || m.not_principals.len() != 1 || !is_presence(&m.not_principals[0]) {
            return None;
        }
        if m.destination_ports.is_empty() {
            all = true;
        }
        for p in &m.destination_ports {
            ports.insert(port(*p, "destination_ports", false).ok()?);
        }
    }
    Some(if all {
        Vec::new()
    } else {
        ports.into_iter().collect()
    })
}

/// Istio's wildcard string form of a StringMatch (`x`, `x*`, `*x`, `*`).
fn pattern(m: &sec::StringMatch) -> Result<String, String> {
    match &m.match_type {
        Some(MatchType::Exact(s)) if !s.is_empty() => Ok(s.clone()),
        Some(MatchType::Prefix(s)) => Ok(format!("{s}*")),
        Some(MatchType::Suffix(s)) => Ok(format!("*{s}")),
        Some(MatchType::Presence(_)) => Ok("*".into()),
        Some(MatchType::Exact(_)) => Err("an empty exact string match".into()),
        None => Err("a string match without a kind".into()),
    }
}

fn patterns(list: &[sec::StringMatch]) -> Result<Vec<String>, String> {
    list.iter().map(pattern).collect()
}

/// A service account match as a principal pattern (any trust domain).
fn sa_principals(list: &[sec::ServiceAccountMatch]) -> Result<Vec<String>, String> {
    list.iter()
        .map(|s| {
            if s.namespace.is_empty() || s.service_account.is_empty() {
                Err("a service account match needs a namespace and an account".to_string())
            } else {
                Ok(format!("*/ns/{}/sa/{}", s.namespace, s.service_account))
            }
        })
        .collect()
}

fn cidrs(list: &[sec::Address]) -> Result<Vec<String>, String> {
    list.iter()
        .map(|a| {
            let ip = ip_from_bytes(&a.address)?;
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            if a.length > bits {
                return Err(format!("prefix length {} is longer than {bits}", a.length));
            }
            Ok(format!("{ip}/{}", a.length))
        })
        .collect()
}

fn port_list(list: &[u32]) -> Result<Vec<u16>, String> {
    list.iter()
        .map(|p| port(*p, "destination port", false))
        .collect()
}

/// The fields a Match sets, each as `when` conditions (values OR-ed, the
/// conditions AND-ed: the Match's own semantics).
fn conditions(m: &sec::Match) -> Result<Vec<AuthzCondition>, String> {
    let mut sa = sa_principals(&m.service_accounts)?;
    let mut not_sa = sa_principals(&m.not_service_accounts)?;
    let mut out = Vec::new();
    let mut push = |key: &str, values: Vec<String>, not_values: Vec<String>| {
        if !values.is_empty() || !not_values.is_empty() {
            out.push(AuthzCondition {
                key: key.into(),
                values,
                not_values,
            });
        }
    };
    push(
        "source.namespace",
        patterns(&m.namespaces)?,
        patterns(&m.not_namespaces)?,
    );
    push(
        "source.principal",
        patterns(&m.principals)?,
        patterns(&m.not_principals)?,
    );
    // Service accounts are a field of their own (AND-ed with principals).
    push(
        "source.principal",
        std::mem::take(&mut sa),
        std::mem::take(&mut not_sa),
    );
    push(
        "source.ip",
        cidrs(&m.source_ips)?,
        cidrs(&m.not_source_ips)?,
    );
    push(
        "destination.ip",
        cidrs(&m.destination_ips)?,
        cidrs(&m.not_destination_ips)?,
    );
    let ports = |l: &[u32]| -> Result<Vec<String>, String> {
        Ok(port_list(l)?.iter().map(u16::to_string).collect())
    };
    push(
        "destination.port",
        ports(&m.destination_ports)?,
        ports(&m.not_destination_ports)?,
    );
    Ok(out)
}

/// A Match that only constrains the source, as an AuthzSource (None otherwise).
fn as_source(m: &sec::Match) -> Result<Option<AuthzSource>, String> {
    let source_only = sec::Match {
        namespaces: m.namespaces.clone(),
        not_namespaces: m.not_namespaces.clone(),
        principals: m.principals.clone(),
        not_principals: m.not_principals.clone(),
        service_accounts: m.service_accounts.clone(),
        not_service_accounts: m.not_service_accounts.clone(),
        source_ips: m.source_ips.clone(),
        not_source_ips: m.not_source_ips.clone(),
        ..sec::Match::default()
    };
    if &source_only != m {
        return Ok(None);
    }
    // Principals and service accounts are AND-ed; one AuthzSource field cannot hold both.
    if (!m.principals.is_empty() && !m.service_accounts.is_empty())
        || (!m.not_principals.is_empty() && !m.not_service_accounts.is_empty())
    {
        return Ok(None);
    }
    let mut principals = patterns(&m.principals)?;
    principals.extend(sa_principals(&m.service_accounts)?);
    let mut not_principals = patterns(&m.not_principals)?;
    not_principals.extend(sa_principals(&m.not_service_accounts)?);
    Ok(Some(AuthzSource {
        principals,
        not_principals,
        namespaces: patterns(&m.namespaces)?,
        not_namespaces: patterns(&m.not_namespaces)?,
        ip_blocks: cidrs(&m.source_ips)?,
        not_ip_blocks: cidrs(&m.not_source_ips)?,
    }))
}

/// A Match that only lists destination ports, as an AuthzOperation.
fn as_operation(m: &sec::Match) -> Result<Option<AuthzOperation>, String> {
    let ports_only = sec::Match {
        destination_ports: m.destination_ports.clone(),
        ..sec::Match::default()
    };
    if &ports_only != m {
        return Ok(None);
    }
    Ok(Some(AuthzOperation {
        ports: port_list(&m.destination_ports)?,
        ..AuthzOperation::default()
    }))
}

/// One Group (rules AND-ed, each an OR of matches) as one NodeConfig rule
/// (`from` any, `to` any, every `when`). None: the group can never match (a
/// rule without matches), so it adds nothing to the policy.
fn group_rule(group: &sec::Group) -> Result<Option<AuthzRule>, String> {
    let mut rule = AuthzRule::default();
    for (r, rules) in group.rules.iter().enumerate() {
        let matches = &rules.matches;
        if matches.is_empty() {
            return Ok(None);
        }
        // A match that sets nothing matches everything: the rule holds.
        if matches.iter().any(|m| m == &sec::Match::default()) {
            continue;
        }
        if rule.from.is_empty() {
            let sources: Option<Vec<AuthzSource>> =
                matches.iter().map(as_source).collect::<Result<_, _>>()?;
            if let Some(sources) = sources {
                rule.from = sources;
                continue;
            }
        }
        if rule.to.is_empty() {
            let ops: Option<Vec<AuthzOperation>> =
                matches.iter().map(as_operation).collect::<Result<_, _>>()?;
            if let Some(ops) = ops {
                rule.to = ops;
                continue;
            }
        }
        if let [m] = matches.as_slice() {
            rule.when.extend(conditions(m)?);
            continue;
        }
        // Several matches of one positive field of the same key: one condition
        // whose values are their union.
        let per_match: Vec<Vec<AuthzCondition>> =
            matches.iter().map(conditions).collect::<Result<_, _>>()?;
        let single_key = per_match
            .iter()
            .all(|c| c.len() == 1 && c[0].not_values.is_empty() && c[0].key == per_match[0][0].key);
        if !single_key {
            return Err(format!(
                "rules[{r}]: its {} matches combine fields in a way a NodeConfig rule cannot express",
                matches.len()
            ));
        }
        rule.when.push(AuthzCondition {
            key: per_match[0][0].key.clone(),
            values: per_match
                .into_iter()
                .flat_map(|c| c[0].values.clone())
                .collect(),
            not_values: Vec::new(),
        });
    }
    Ok(Some(rule))
}

/// The NodeConfig of the inventory's node and pods and the held resources.
pub fn build(inventory: &Inventory, state: &WorkloadState) -> Result<NodeConfig, String> {
    // Node and pods as the Envoy path makes them; services come from the API only.
    let mut pods_only = inventory.clone();
    pods_only.services.clear();
    let mut config =
        crate::translate::translate(&pods_only, &BTreeMap::<String, ProxyResources>::new())
            .map_err(|e| e.to_string())?;
    config.services = services(inventory, state);
    let (policies, assigned) = inbound_policies(inventory, state);
    config.inbound_policies = policies;
    for pod in &mut config.pods {
        pod.inbound_policy = assigned
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .cloned();
    }
    Ok(config)
}

fn services(inventory: &Inventory, state: &WorkloadState) -> Vec<Service> {
    let local: BTreeMap<&str, &crate::inventory::PodSpec> = inventory
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (ip.as_str(), p)))
        .collect();
    let mut backing: BTreeMap<&str, Vec<&WorkloadEntry>> = BTreeMap::new();
    for entry in state.addresses.values() {
        if let AddressEntry::Workload(w) = entry {
            for key in w.services.keys() {
                backing.entry(key.as_str()).or_default().push(w);
            }
        }
    }
    let mut list: Vec<&ServiceEntry> = state
        .addresses
        .values()
        .filter_map(|e| match e {
            AddressEntry::Service(s) if !s.ports.is_empty() => Some(s),
            _ => None,
        })
        .collect();
    list.sort_by(|a, b| {
        a.hostname
            .cmp(&b.hostname)
            .then(a.namespace.cmp(&b.namespace))
    });
    let mut out: Vec<Service> = Vec::with_capacity(list.len());
    for s in list {
        // NodeConfig hostnames are unique: the first namespace wins.
        if out.iter().any(|o| o.hostname == s.hostname) {
            tracing::warn!(hostname = %s.hostname, namespace = %s.namespace,
                "workload API: a service of this hostname in another namespace is listed; skipped");
            continue;
        }
        let key = s.key();
        // One endpoint per address, the first workload (by resource name) wins.
        let mut workloads: Vec<&WorkloadEntry> = Vec::new();
        for w in backing.get(key.as_str()).into_iter().flatten() {
            if w.address.is_some() && !workloads.iter().any(|o| o.address == w.address) {
                workloads.push(w);
            }
        }
        let mut ports = Vec::with_capacity(s.ports.len());
        let mut endpoint_ports: Vec<BTreeMap<String, u16>> = vec![BTreeMap::new(); workloads.len()];
        for &(port, target) in &s.ports {
            let each: Vec<u16> = workloads
                .iter()
                .map(|w| {
                    let own = w.services.get(&key).and_then(|m| m.get(&port)).copied();
                    match own.filter(|p| *p != 0) {
                        Some(p) => p,
                        None if target != 0 => target,
                        None => port,
                    }
                })
                .collect();
            let default = if target != 0 {
                target
            } else {
                most_common(&each).unwrap_or(port)
            };
            let differs = each.iter().any(|p| *p != default);
            let name = if differs {
                format!("p{port}")
            } else {
                String::new()
            };
            for (i, p) in each.iter().enumerate() {
                if *p != default {
                    endpoint_ports[i].insert(name.clone(), *p);
                }
            }
            ports.push(ServicePort {
                port,
                name,
                protocol: None,
                target_port: (default != port).then_some(default),
                route_table: None,
                tcp_route_table: None,
            });
        }
        let endpoints = workloads
            .iter()
            .zip(endpoint_ports)
            .filter_map(|(w, ports)| {
                let address = w.address.clone()?;
                let pod = local.get(address.as_str());
                let (node, hbone) = match pod {
                    // Our pod: never tunnelled to (dpu-proxy delivers it locally).
                    Some(_) => (inventory.node.name.clone(), None),
                    None => {
                        let meshed = inventory.endpoints.get(&address).is_some_and(|k| k.meshed);
                        (w.node.clone(), Some(w.hbone || meshed))
                    }
                };
                Some(Endpoint {
                    address,
                    ports,
                    node,
                    locality: w.locality.clone(),
                    weight: w.weight,
                    health: if w.healthy {
                        EndpointHealth::Healthy
                    } else {
                        EndpointHealth::Unhealthy
                    },
                    labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                    service_account: w.service_account.clone(),
                    hbone,
                })
            })
            .collect();
        out.push(Service {
            hostname: s.hostname.clone(),
            namespace: s.namespace.clone(),
            vips: s.vips.clone(),
            ports,
            endpoints,
        });
    }
    out
}

fn most_common(ports: &[u16]) -> Option<u16> {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for p in ports {
        *counts.entry(*p).or_default() += 1;
    }
    // Highest count; ties → the lowest port.
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(p, _)| p)
}

type PodKey = (String, String);

/// One InboundPolicy per distinct set of applicable policies (named by its
/// content's hash), and the pod → policy name assignment.
fn inbound_policies(
    inventory: &Inventory,
    state: &WorkloadState,
) -> (Vec<InboundPolicy>, BTreeMap<PodKey, String>) {
    let mut by_name: BTreeMap<String, InboundPolicy> = BTreeMap::new();
    let mut assigned = BTreeMap::new();
    for pod in inventory.pods.iter().filter(|p| p.meshed) {
        let workload = state.addresses.values().find_map(|e| match e {
            AddressEntry::Workload(w) if w.ips.iter().any(|ip| pod.ips.contains(ip)) => Some(w),
            _ => None,
        });
        let selected: BTreeSet<&str> = workload
            .map(|w| w.policies.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let applicable = state.authorizations.values().filter(|p| match p.scope {
            Scope::Global => true,
            Scope::Namespace => p.namespace == pod.namespace,
            Scope::WorkloadSelector => selected.contains(p.key.as_str()),
        });
        let mut peer = PeerAuthentication::default();
        let mut authorization: Vec<AuthorizationPolicy> = Vec::new();
        for p in applicable {
            match &p.effect {
                Effect::RequireMtls { ports } if ports.is_empty() => peer.mode = MtlsMode::Strict,
                Effect::RequireMtls { ports } => {
                    for port in ports {
                        peer.port_modes.insert(port.to_string(), MtlsMode::Strict);
                    }
                }
                Effect::Policy(a) => authorization.push(a.clone()),
            }
        }
        if peer.mode == MtlsMode::Strict {
            peer.port_modes.clear(); // every port is strict already
        }
        if peer == PeerAuthentication::default() && authorization.is_empty() {
            continue;
        }
        authorization.sort_by(|a, b| a.name.cmp(&b.name));
        let policy = InboundPolicy {
            name: String::new(),
            peer_authentication: peer,
            authorization,
        };
        let name = format!(
            "workload-{:016x}",
            content_hash(
                serde_json::to_string(&policy)
                    .unwrap_or_default()
                    .as_bytes()
            )
        );
        by_name.entry(name.clone()).or_insert(InboundPolicy {
            name: name.clone(),
            ..policy
        });
        assigned.insert((pod.namespace.clone(), pod.name.clone()), name);
    }
    (by_name.into_values().collect(), assigned)
}

#[cfg(test)]
mod tests;

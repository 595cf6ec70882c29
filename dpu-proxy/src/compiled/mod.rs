//! The runtime form of a [`NodeConfig`]: compiled once per config push into
//! immutable lookup structures that the data path reads without locks.
//!
//! [`CompiledConfig::compile`] resolves every name reference (route tables,
//! clusters, services), parses every address, header name and regex, and
//! reports each problem with the path of the offending field. A config that
//! compiles can be served without any per-request parsing or compilation.

mod cluster;
mod routes;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use dpumesh_api::config::{
    cluster_name, Cluster, InboundPolicy, Locality, NodeConfig, Protocol, ValidationError,
    ValidationErrors,
};

pub use cluster::{
    ActiveRequest, ClusterRt, EndpointRt, OutlierRt, PoolLimits, PriorityLevel, TryOutcome,
};
use state::{Carry, TokenBucket};

use crate::metrics::{PairCache, PodCounters, WorkloadLabels};
pub use routes::{
    ActionRt, DestinationRt, FaultRt, ForwardRt, HeaderOpsRt, KeyMatcher, MatchRt, MirrorRt,
    RedirectRt, RequestView, RetryOn, RetryRt, RouteRt, RouteTableRt, StrMatcher, TcpRouteRt,
    TcpRouteTableRt, VirtualHostRt,
};

/// SPIFFE identities, interned so that connection contexts stay `Copy`.
/// Pods' and endpoints' identities are interned when a config is compiled,
/// peers' verified identities once per HBONE tunnel: never per request. Grows
/// with the distinct identities ever seen (the mesh's service accounts).
pub(crate) fn intern(id: &str) -> &'static str {
    static IDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut ids = match IDS.get_or_init(Mutex::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(s) = ids.get(id) {
        return s;
    }
    let s: &'static str = Box::leak(id.to_string().into_boxed_str());
    ids.insert(s);
    s
}

/// A pod on this node, as the proxy needs it on the data path.
#[derive(Debug)]
pub struct PodRt {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// Interned at compile time (see [`intern`]): the data path copies it
    /// into [`crate::proxy::ConnCtx`] without a lookup.
    pub spiffe_id: &'static str,
    pub labels: BTreeMap<String, String>,
    /// Outbound route tables that replace the service port's table, by service port.
    pub route_overrides: HashMap<u16, Arc<RouteTableRt>>,
    /// Metric labels of the pod's workload, and its interned id.
    pub workload: Arc<WorkloadLabels>,
    pub workload_id: u32,
    /// Metrics of traffic from this pod (outbound) and to it (inbound), by peer.
    pub outbound_pairs: PairCache,
    pub inbound_pairs: PairCache,
    /// Counters shown by `/stats`, carried across swaps by UID.
    pub counters: Arc<PodCounters>,
    /// Local rate limit on everything the pod sends.
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// Inbound governance (PeerAuthentication + AuthorizationPolicy) of the
    /// pod, from `pods[].inboundPolicy`; `None` = PERMISSIVE, allow all.
    pub inbound: Option<Arc<InboundPolicy>>,
}

/// One port of one service: what a connection to `(VIP, port)` (or to an
/// endpoint of the service on its target port) is governed by.
#[derive(Debug)]
pub struct ServicePortRt {
    /// Index of the service in `NodeConfig.services`.
    pub service_index: u32,
    pub hostname: String,
    pub namespace: String,
    pub port: u16,
    pub port_name: String,
    /// Declared protocol; `None` means sniff.
    pub protocol: Option<Protocol>,
    /// The HTTP route table: the configured one, or a catch-all route to the
    /// default cluster `outbound|<port>||<hostname>`.
    pub routes: Arc<RouteTableRt>,
    /// The TCP routes: the configured ones, or one route to the default cluster.
    pub tcp_routes: Arc<TcpRouteTableRt>,
}

/// The compiled, immutable config snapshot. Shared as `Arc<CompiledConfig>`.
#[derive(Debug)]
pub struct CompiledConfig {
    pub version: u64,
    pub node_name: String,
    pub locality: Locality,
    pub trust_domain: String,
    pods_by_ip: HashMap<IpAddr, Arc<PodRt>>,
    services_by_vip: HashMap<SocketAddr, Arc<ServicePortRt>>,
    services_by_endpoint: HashMap<SocketAddr, Arc<ServicePortRt>>,
    clusters: HashMap<String, Arc<ClusterRt>>,
    /// Who is behind an IP (local pods and endpoints), for inbound metrics.
    workloads_by_ip: HashMap<IpAddr, (u32, Arc<WorkloadLabels>)>,
    pods: Vec<Arc<PodRt>>,
}

/// Interns workload label sets so that equal ones share an id (metric pair keys).
pub(crate) struct Workloads {
    trust_domain: String,
    ids: HashMap<WorkloadLabels, (u32, Arc<WorkloadLabels>)>,
}

impl Workloads {
    pub(crate) fn intern(&mut self, w: WorkloadLabels) -> (u32, Arc<WorkloadLabels>) {
        let next = self.ids.len() as u32;
        self.ids
            .entry(w.clone())
            .or_insert_with(|| (next, Arc::new(w)))
            .clone()
    }

    pub(crate) fn spiffe(&self, namespace: &str, service_account: &str) -> String {
        dpumesh_api::config::spiffe_id(&self.trust_domain, namespace, service_account)
    }
}

/// Collects compile errors, each with the path of the offending field.
#[derive(Default)]
pub(crate) struct Errors(Vec<ValidationError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl CompiledConfig {
    /// Compiles a config. Every error found is reported, each naming its field.
    pub fn compile(config: &NodeConfig) -> Result<Arc<CompiledConfig>, ValidationErrors> {
        CompiledConfig::compile_after(config, None)
    }

    /// Compiles a config that replaces `previous`: runtime state that must
    /// outlive a config swap (outlier ejections, pool counters, rate-limit
    /// buckets) is taken over from `previous` for the clusters, endpoints,
    /// routes and pods that are still there.
    pub fn compile_after(
        config: &NodeConfig,
        previous: Option<&CompiledConfig>,
    ) -> Result<Arc<CompiledConfig>, ValidationErrors> {
        let carry = previous.map(CompiledConfig::carry).unwrap_or_default();
        let mut errs = Errors::default();
        let locality = config.node.locality.clone();
        let mut workloads = Workloads {
            trust_domain: config.node.trust_domain.clone(),
            ids: HashMap::new(),
        };

        // Services first: clusters resolve their endpoints through them.
        let mut services_by_host = HashMap::new();
        for (i, svc) in config.services.iter().enumerate() {
            if services_by_host.insert(svc.hostname.as_str(), i).is_some() {
                errs.push(
                    format!("services[{i}].hostname"),
                    format!("{:?} is listed twice", svc.hostname),
                );
            }
        }

        // Clusters: the configured ones, plus a default cluster for every
        // service port that has none (Istio always has `outbound|<port>||<host>`).
        let mut clusters: HashMap<String, Arc<ClusterRt>> = HashMap::new();
        let secrets: HashMap<&str, &dpumesh_api::config::Secret> = config
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        for (i, c) in config.clusters.iter().enumerate() {
            let path = format!("clusters[{i}]");
            let Some(&si) = services_by_host.get(c.service.as_str()) else {
                errs.push(
                    format!("{path}.service"),
                    format!("{:?} names no entry of services", c.service),
                );
                continue;
            };
            if let Some(mut rt) = ClusterRt::compile(
                c,
                &config.services[si],
                si,
                &locality,
                &mut workloads,
                &carry,
                &path,
                &mut errs,
            ) {
                match crate::tls_origination::TlsOrigin::compile(c, &secrets) {
                    Ok(origin) => rt.tls_origin = origin.map(Arc::new),
                    Err(e) => errs.push(format!("{path}.tlsOrigination"), e),
                }
                if clusters.insert(c.name.clone(), Arc::new(rt)).is_some() {
                    errs.push(
                        format!("{path}.name"),
                        format!("{:?} is listed twice", c.name),
                    );
                }
            }
        }
        for (si, svc) in config.services.iter().enumerate() {
            for p in &svc.ports {
                let name = cluster_name(p.port, None, &svc.hostname);
                if clusters.contains_key(&name) {
                    continue;
                }
                let c = Cluster {
                    name: name.clone(),
                    service: svc.hostname.clone(),
                    port: p.port,
                    subset: None,
                    subset_labels: BTreeMap::new(),
                    lb_policy: Default::default(),
                    locality_lb: None,
                    connect_timeout_ms: 10_000,
                    connection_pool: Default::default(),
                    outlier_detection: None,
                    tls: Default::default(),
                    tls_origination: None,
                };
                let path = format!("services[{si}] (default cluster {name})");
                if let Some(rt) = ClusterRt::compile(
                    &c,
                    svc,
                    si,
                    &locality,
                    &mut workloads,
                    &carry,
                    &path,
                    &mut errs,
                ) {
                    clusters.insert(name, Arc::new(rt));
                }
            }
        }

        // Route tables, compiled once each and shared by reference.
        let mut route_tables: HashMap<&str, Arc<RouteTableRt>> = HashMap::new();
        for (i, t) in config.route_tables.iter().enumerate() {
            let path = format!("routeTables[{i}]");
            if let Some(rt) = RouteTableRt::compile(t, &clusters, &carry, &path, &mut errs) {
                if route_tables.insert(t.name.as_str(), Arc::new(rt)).is_some() {
                    errs.push(
                        format!("{path}.name"),
                        format!("{:?} is listed twice", t.name),
                    );
                }
            }
        }
        let mut tcp_tables: HashMap<&str, Arc<TcpRouteTableRt>> = HashMap::new();
        for (i, t) in config.tcp_route_tables.iter().enumerate() {
            let path = format!("tcpRouteTables[{i}]");
            if let Some(rt) = TcpRouteTableRt::compile(t, &clusters, &path, &mut errs) {
                tcp_tables.insert(t.name.as_str(), Arc::new(rt));
            }
        }

        // Service ports, reachable by VIP:port and by endpoint IP:target port.
        let mut services_by_vip = HashMap::new();
        let mut services_by_endpoint = HashMap::new();
        for (si, svc) in config.services.iter().enumerate() {
            let mut vips = Vec::new();
            for (vi, vip) in svc.vips.iter().enumerate() {
                match vip.parse::<IpAddr>() {
                    Ok(ip) => vips.push(ip),
                    Err(_) => errs.push(
                        format!("services[{si}].vips[{vi}]"),
                        format!("{vip:?} is not an IP address"),
                    ),
                }
            }
            for (pi, p) in svc.ports.iter().enumerate() {
                let path = format!("services[{si}].ports[{pi}]");
                let default_cluster = clusters
                    .get(&cluster_name(p.port, None, &svc.hostname))
                    .cloned();
                let routes = match &p.route_table {
                    Some(name) => match route_tables.get(name.as_str()) {
                        Some(t) => t.clone(),
                        None => {
                            errs.push(
                                format!("{path}.routeTable"),
                                format!("{name:?} names no entry of routeTables"),
                            );
                            continue;
                        }
                    },
                    None => match &default_cluster {
                        Some(c) => Arc::new(RouteTableRt::catch_all(&svc.hostname, c.clone())),
                        None => continue,
                    },
                };
                let tcp_routes = match &p.tcp_route_table {
                    Some(name) => match tcp_tables.get(name.as_str()) {
                        Some(t) => t.clone(),
                        None => {
                            errs.push(
                                format!("{path}.tcpRouteTable"),
                                format!("{name:?} names no entry of tcpRouteTables"),
                            );
                            continue;
                        }
                    },
                    None => match &default_cluster {
                        Some(c) => Arc::new(TcpRouteTableRt::single(c.clone())),
                        None => continue,
                    },
                };
                let rt = Arc::new(ServicePortRt {
                    service_index: si as u32,
                    hostname: svc.hostname.clone(),
                    namespace: svc.namespace.clone(),
                    port: p.port,
                    port_name: p.name.clone(),
                    protocol: p.effective_protocol(),
                    routes,
                    tcp_routes,
                });
                for ip in &vips {
                    services_by_vip.insert(SocketAddr::new(*ip, p.port), rt.clone());
                }
                let target = p.target_port.unwrap_or(p.port);
                for ep in &svc.endpoints {
                    let Ok(ip) = ep.address.parse::<IpAddr>() else {
                        continue; // reported by the cluster compile
                    };
                    let port = ep.ports.get(&p.name).copied().unwrap_or(target);
                    services_by_endpoint
                        .entry(SocketAddr::new(ip, port))
                        .or_insert_with(|| rt.clone());
                }
            }
        }

        // Endpoints' workloads by IP (pods, below, take precedence).
        let mut workloads_by_ip = HashMap::new();
        for c in clusters.values() {
            for ep in c.priorities.iter().flat_map(|p| &p.endpoints) {
                workloads_by_ip
                    .entry(ep.addr.ip())
                    .or_insert_with(|| (ep.workload_id, ep.workload.clone()));
            }
        }

        let inbound_policies: HashMap<&str, Arc<InboundPolicy>> = config
            .inbound_policies
            .iter()
            .map(|p| (p.name.as_str(), Arc::new(p.clone())))
            .collect();
        // Pods, by each of their IPs.
        let mut pods_by_ip = HashMap::new();
        let mut pods = Vec::new();
        for (i, pod) in config.pods.iter().enumerate() {
            let mut route_overrides = HashMap::new();
            for (port, table) in &pod.route_overrides {
                let path = format!("pods[{i}].routeOverrides.{port}");
                let Ok(port) = port.parse::<u16>() else {
                    errs.push(path, format!("{port:?} is not a port number"));
                    continue;
                };
                match route_tables.get(table.as_str()) {
                    Some(t) => {
                        route_overrides.insert(port, t.clone());
                    }
                    None => errs.push(path, format!("{table:?} names no entry of routeTables")),
                }
            }
            let spiffe_id = pod.spiffe_id(&config.node.trust_domain);
            let (workload_id, workload) = workloads.intern(WorkloadLabels::derive(
                Some(&pod.name),
                &pod.namespace,
                &spiffe_id,
                &pod.labels,
            ));
            let old = carry.pods.get(&pod.uid);
            let rt = Arc::new(PodRt {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                spiffe_id: intern(&spiffe_id),
                labels: pod.labels.clone(),
                route_overrides,
                workload_id,
                workload: workload.clone(),
                outbound_pairs: PairCache::default(),
                inbound_pairs: PairCache::default(),
                counters: old.map(|o| o.0.clone()).unwrap_or_default(),
                rate_limit: pod
                    .rate_limit
                    .as_ref()
                    .map(|rl| Carry::bucket(old.and_then(|o| o.1.as_ref()), rl)),
                inbound: match pod.inbound_policy.as_deref() {
                    None => None,
                    Some(name) => match inbound_policies.get(name) {
                        Some(p) => Some(p.clone()),
                        None => {
                            errs.push(
                                format!("pods[{i}].inboundPolicy"),
                                format!("{name:?} names no entry of inboundPolicies"),
                            );
                            None
                        }
                    },
                },
            });
            pods.push(rt.clone());
            for (j, ip) in pod.ips.iter().enumerate() {
                match ip.parse::<IpAddr>() {
                    Ok(ip) => {
                        workloads_by_ip.insert(ip, (workload_id, workload.clone()));
                        if pods_by_ip.insert(ip, rt.clone()).is_some() {
                            errs.push(
                                format!("pods[{i}].ips[{j}]"),
                                format!("{ip} belongs to two pods"),
                            );
                        }
                    }
                    Err(_) => errs.push(
                        format!("pods[{i}].ips[{j}]"),
                        format!("{ip:?} is not an IP address"),
                    ),
                }
            }
        }

        if !errs.0.is_empty() {
            return Err(ValidationErrors(errs.0));
        }
        Ok(Arc::new(CompiledConfig {
            version: config.version,
            node_name: config.node.name.clone(),
            locality,
            trust_domain: config.node.trust_domain.clone(),
            pods_by_ip,
            services_by_vip,
            services_by_endpoint,
            clusters,
            workloads_by_ip,
            pods,
        }))
    }

    /// The state a config compiled after this one takes over.
    fn carry(&self) -> Carry {
        let mut carry = Carry::default();
        for (name, c) in &self.clusters {
            carry.clusters.insert(name.clone(), c.state.clone());
            for ep in c.priorities.iter().flat_map(|p| &p.endpoints) {
                carry
                    .endpoints
                    .insert((name.clone(), ep.addr), ep.outlier.clone());
            }
        }
        for p in &self.pods {
            carry
                .pods
                .insert(p.uid.clone(), (p.counters.clone(), p.rate_limit.clone()));
        }
        let mut tables: Vec<&Arc<RouteTableRt>> = self
            .services_by_vip
            .values()
            .chain(self.services_by_endpoint.values())
            .map(|s| &s.routes)
            .chain(self.pods.iter().flat_map(|p| p.route_overrides.values()))
            .collect();
        tables.sort_by_key(|t| Arc::as_ptr(t));
        tables.dedup_by_key(|t| Arc::as_ptr(t));
        for t in tables {
            for (vi, vh) in t.vhosts.iter().enumerate() {
                for (ri, r) in vh.routes.iter().enumerate() {
                    if let Some(b) = &r.rate_limit {
                        carry
                            .routes
                            .insert((t.name.clone(), vi, ri, r.name.clone()), b.clone());
                    }
                }
            }
        }
        carry
    }

    /// The workload behind `ip` (a local pod or a known endpoint).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&(u32, Arc<WorkloadLabels>)> {
        self.workloads_by_ip.get(&ip)
    }

    /// The local pods.
    pub fn pods(&self) -> &[Arc<PodRt>] {
        &self.pods
    }

    /// Every cluster, for `/stats`.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRt>> {
        self.clusters.values()
    }

    /// The local pod that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Arc<PodRt>> {
        self.pods_by_ip.get(&ip)
    }

    /// The service port a connection to `dst` is for: by VIP first, then by
    /// endpoint address (a client dialling a pod IP directly).
    pub fn service_for(&self, dst: SocketAddr) -> Option<&Arc<ServicePortRt>> {
        self.services_by_vip
            .get(&dst)
            .or_else(|| self.services_by_endpoint.get(&dst))
    }

    /// Whether `dst` is a service VIP (as opposed to an endpoint or unknown address).
    pub fn is_vip(&self, dst: SocketAddr) -> bool {
        self.services_by_vip.contains_key(&dst)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterRt>> {
        self.clusters.get(name)
    }

    /// The HTTP route table for a request from `pod` (if known) to `svc`:
    /// the pod's override for the port, else the service port's table.
    pub fn route_table<'a>(
        &self,
        pod: Option<&'a PodRt>,
        svc: &'a ServicePortRt,
    ) -> &'a Arc<RouteTableRt> {
        pod.and_then(|p| p.route_overrides.get(&svc.port))
            .unwrap_or(&svc.routes)
    }

    pub fn pod_count(&self) -> usize {
        self.pods_by_ip.len()
    }

    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
}

#[cfg(test)]
mod tests;

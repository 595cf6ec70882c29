//! Validation of a [`NodeConfig`]: every error, each with its path.
//!
//! The checker walks the document once, in field order, and reports every
//! problem it finds as `<path>: <message>`, where the path uses the JSON field
//! names (`services[2].ports[0].routeTable`) and the message names the bad
//! value. Name → index maps of everything that can be referenced are built
//! once up front, so a check is a hash lookup and the whole walk is linear in
//! the size of the document. Paths are rendered only when an error is
//! reported: a valid config allocates no path strings at all.
//!
//! The rules are listed field by field in `docs/config-reference.md`.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{
    AuthorizationPolicy, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource, Cluster, Endpoint,
    HashKey, HeaderOps, InboundPolicy, Interception, LbKind, Locality, NodeConfig, NodeInfo, Pod,
    RateLimit, RetryPolicy, Route, RouteAction, RouteMatch, RouteTable, Secret, Service,
    StringMatch, TcpRouteTable, TlsMode, WeightedDestination, API_VERSION,
};

/// One problem found in a config, e.g. `pods[3].ips[0]: "10.0.0.300" is not an IP address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending value, e.g. `pods[3].ips[0]`.
    pub path: String,
    /// What is wrong with it, naming the value.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid NodeConfig ({} errors)", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    /// Each error as `<path>: <message>`.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// The `retryOn` conditions understood besides bare status codes: Istio's set
/// (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` values).
pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    "refused-stream",
    "unavailable",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "retriable-4xx",
    "internal",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

/// The plain `when` keys of an authorization rule (Istio's supported set);
/// `request.headers[<name>]` and `request.auth.claims[<name>]` are accepted too.
pub const AUTHZ_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

impl NodeConfig {
    /// Checks the whole config and reports every error found, not just the first,
    /// in document order.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut checker = Checker::new(self);
        checker.config();
        if checker.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(checker.errors))
        }
    }
}

// ---------------------------------------------------------------------------
// Paths, rendered lazily.

#[derive(Clone, Copy)]
enum Seg<'a> {
    Field(&'static str),
    Index(usize),
    Key(&'a str),
}

/// A path into the document as a chain of stack frames; costs nothing until rendered.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Option<Seg<'a>>,
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path {
        parent: None,
        seg: None,
    };

    fn f(&'a self, name: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Some(Seg::Field(name)),
        }
    }

    fn i(&'a self, index: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Some(Seg::Index(index)),
        }
    }

    fn k(&'a self, key: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Some(Seg::Key(key)),
        }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            if let Some(seg) = p.seg {
                segs.push(seg);
            }
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                Seg::Key(k) => {
                    let _ = write!(out, "[{k:?}]");
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The checker.

/// Index of the first entry with each name; later entries with the same name
/// are duplicates.
type FirstIndex<'c> = HashMap<&'c str, usize>;

fn first_index<'c, T>(items: &'c [T], key: impl Fn(&'c T) -> &'c str) -> FirstIndex<'c> {
    let mut map = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        map.entry(key(item)).or_insert(i);
    }
    map
}

struct Checker<'c> {
    cfg: &'c NodeConfig,
    errors: Vec<ValidationError>,
    pod_cidr: Option<IpNet>,
    services: FirstIndex<'c>,
    clusters: FirstIndex<'c>,
    route_tables: FirstIndex<'c>,
    tcp_route_tables: FirstIndex<'c>,
    inbound_policies: FirstIndex<'c>,
    secrets: FirstIndex<'c>,
    /// Every port of every service, for `routeOverrides` keys.
    service_ports: HashSet<u16>,
}

impl<'c> Checker<'c> {
    fn new(cfg: &'c NodeConfig) -> Checker<'c> {
        Checker {
            cfg,
            errors: Vec::new(),
            pod_cidr: None,
            services: first_index(&cfg.services, |s| s.hostname.as_str()),
            clusters: first_index(&cfg.clusters, |c| c.name.as_str()),
            route_tables: first_index(&cfg.route_tables, |t| t.name.as_str()),
            tcp_route_tables: first_index(&cfg.tcp_route_tables, |t| t.name.as_str()),
            inbound_policies: first_index(&cfg.inbound_policies, |p| p.name.as_str()),
            secrets: first_index(&cfg.secrets, |s| s.name.as_str()),
            service_ports: cfg
                .services
                .iter()
                .flat_map(|s| s.ports.iter().map(|p| p.port))
                .collect(),
        }
    }

    fn err(&mut self, path: &Path<'_>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.render(),
            message: message.into(),
        });
    }

    /// Reports an empty string; returns whether `value` is non-empty.
    fn non_empty(&mut self, path: &Path<'_>, value: &str) -> bool {
        if value.is_empty() {
            self.err(path, "must not be empty");
            false
        } else {
            true
        }
    }

    /// Reports a name that is not unique in its list, where `first` is the
    /// index of the first entry with that name and `what` the list's path.
    fn unique(&mut self, path: &Path<'_>, first: Option<usize>, name: &str, i: usize, what: &str) {
        if let Some(first) = first.filter(|&f| f != i) {
            self.err(path, format!("{name:?} duplicates {what}[{first}]"));
        }
    }

    fn config(&mut self) {
        let cfg = self.cfg;
        let root = Path::ROOT;
        if cfg.api_version != API_VERSION {
            self.err(
                &root.f("apiVersion"),
                format!(
                    "{:?} is not the supported apiVersion {API_VERSION:?}",
                    cfg.api_version
                ),
            );
        }
        if cfg.version == 0 {
            self.err(&root.f("version"), "must be > 0, got 0");
        }
        self.node(&root.f("node"), &cfg.node);

        let pods = root.f("pods");
        let mut seen = PodsSeen::default();
        for (i, pod) in cfg.pods.iter().enumerate() {
            self.pod(&pods.i(i), i, pod, &mut seen);
        }

        let services = root.f("services");
        let mut vip_ports: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (i, service) in cfg.services.iter().enumerate() {
            self.service(&services.i(i), i, service, &mut vip_ports);
        }

        let clusters = root.f("clusters");
        for (i, cluster) in cfg.clusters.iter().enumerate() {
            self.cluster(&clusters.i(i), i, cluster);
        }

        let tables = root.f("routeTables");
        for (i, table) in cfg.route_tables.iter().enumerate() {
            self.route_table(&tables.i(i), i, table);
        }

        let tables = root.f("tcpRouteTables");
        for (i, table) in cfg.tcp_route_tables.iter().enumerate() {
            self.tcp_route_table(&tables.i(i), i, table);
        }

        let policies = root.f("inboundPolicies");
        for (i, policy) in cfg.inbound_policies.iter().enumerate() {
            self.inbound_policy(&policies.i(i), i, policy);
        }

        let secrets = root.f("secrets");
        for (i, secret) in cfg.secrets.iter().enumerate() {
            self.secret(&secrets.i(i), i, secret);
        }
    }

    // -- node ---------------------------------------------------------------

    fn node(&mut self, p: &Path<'_>, node: &NodeInfo) {
        if self.non_empty(&p.f("name"), &node.name) && !is_dns1123_subdomain(&node.name) {
            self.err(
                &p.f("name"),
                format!("{:?} is not a DNS-1123 subdomain", node.name),
            );
        }
        self.pod_cidr = self.cidr(&p.f("podCidr"), &node.pod_cidr);
        let cidrs = p.f("serviceCidrs");
        for (i, cidr) in node.service_cidrs.iter().enumerate() {
            let path = cidrs.i(i);
            if let (Some(net), Some(pod_net)) = (self.cidr(&path, cidr), self.pod_cidr) {
                if net.contains(&pod_net.network()) || pod_net.contains(&net.network()) {
                    self.err(
                        &path,
                        format!("{cidr:?} overlaps node.podCidr {:?}", node.pod_cidr),
                    );
                }
            }
        }
        let addr = p.f("dpuMgmtAddr");
        match node.dpu_mgmt_addr.parse::<SocketAddr>() {
            Ok(sa) if sa.port() == 0 => {
                self.err(&addr, format!("{:?} has port 0", node.dpu_mgmt_addr));
            }
            Ok(_) => {}
            Err(_) => self.err(
                &addr,
                format!(
                    "{:?} is not an ip:port address (e.g. \"192.168.100.2:15080\")",
                    node.dpu_mgmt_addr
                ),
            ),
        }
        let td = p.f("trustDomain");
        if self.non_empty(&td, &node.trust_domain) && !is_trust_domain(&node.trust_domain) {
            self.err(
                &td,
                format!(
                    "{:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')",
                    node.trust_domain
                ),
            );
        }
        let dns = p.f("dnsDomain");
        if self.non_empty(&dns, &node.dns_domain) && !is_dns1123_subdomain(&node.dns_domain) {
            self.err(
                &dns,
                format!("{:?} is not a DNS-1123 subdomain", node.dns_domain),
            );
        }
        self.locality(&p.f("locality"), &node.locality);
    }

    /// Parses a CIDR with zero host bits.
    fn cidr(&mut self, p: &Path<'_>, value: &str) -> Option<IpNet> {
        match value.parse::<IpNet>() {
            Ok(net) if net.addr() != net.network() => {
                self.err(
                    p,
                    format!(
                        "{value:?} has host bits set (did you mean \"{}\"?)",
                        net.trunc()
                    ),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.err(
                    p,
                    format!("{value:?} is not a CIDR (e.g. \"10.244.1.0/24\")"),
                );
                None
            }
        }
    }

    fn locality(&mut self, p: &Path<'_>, locality: &Locality) {
        for (name, value) in [
            ("region", &locality.region),
            ("zone", &locality.zone),
            ("subzone", &locality.subzone),
        ] {
            if value.contains('/') {
                self.err(&p.f(name), format!("{value:?} must not contain '/'"));
            }
        }
    }

    fn labels(&mut self, p: &Path<'_>, labels: &std::collections::BTreeMap<String, String>) {
        for (key, value) in labels {
            let path = p.k(key);
            if !is_label_key(key) {
                self.err(&path, format!("{key:?} is not a valid label key"));
            }
            if !is_label_value(value) {
                self.err(&path, format!("{value:?} is not a valid label value"));
            }
        }
    }

    // -- pods ---------------------------------------------------------------

    fn pod(&mut self, p: &Path<'_>, i: usize, pod: &'c Pod, seen: &mut PodsSeen<'c>) {
        let td = self.cfg.node.trust_domain.as_str();

        let uid = p.f("uid");
        if self.non_empty(&uid, &pod.uid) {
            if let Some(first) = seen.uids.insert(&pod.uid, i) {
                self.err(&uid, format!("{:?} duplicates pods[{first}].uid", pod.uid));
                seen.uids.insert(&pod.uid, first);
            }
        }
        let name = p.f("name");
        if self.non_empty(&name, &pod.name) {
            if !is_dns1123_subdomain(&pod.name) {
                self.err(&name, format!("{:?} is not a DNS-1123 subdomain", pod.name));
            }
            if let Some(&first) = seen.names.get(&(pod.namespace.as_str(), pod.name.as_str())) {
                self.err(
                    &name,
                    format!(
                        "pod \"{}/{}\" duplicates pods[{first}]",
                        pod.namespace, pod.name
                    ),
                );
            } else {
                seen.names.insert((&pod.namespace, &pod.name), i);
            }
        }
        let ns = p.f("namespace");
        if self.non_empty(&ns, &pod.namespace) && !is_dns1123_label(&pod.namespace) {
            self.err(&ns, format!("{:?} is not a DNS-1123 label", pod.namespace));
        }
        let sa = p.f("serviceAccount");
        if self.non_empty(&sa, &pod.service_account) && !is_dns1123_subdomain(&pod.service_account)
        {
            self.err(
                &sa,
                format!("{:?} is not a DNS-1123 subdomain", pod.service_account),
            );
        }
        self.labels(&p.f("labels"), &pod.labels);

        let ips = p.f("ips");
        if pod.ips.is_empty() {
            self.err(&ips, "must list at least one IP address");
        }
        for (j, ip) in pod.ips.iter().enumerate() {
            let path = ips.i(j);
            let Ok(addr) = ip.parse::<IpAddr>() else {
                self.err(&path, format!("{ip:?} is not an IP address"));
                continue;
            };
            if let Some(net) = self.pod_cidr {
                let cidr = &self.cfg.node.pod_cidr;
                // IPv4 subnets below /31 reserve their first and last address.
                let reserved = matches!(net, IpNet::V4(n) if n.prefix_len() < 31);
                if !net.contains(&addr) {
                    self.err(&path, format!("{ip:?} is outside node.podCidr {cidr:?}"));
                } else if reserved && addr == net.network() {
                    self.err(
                        &path,
                        format!("{ip:?} is the network address of node.podCidr {cidr:?}"),
                    );
                } else if reserved && addr == net.broadcast() {
                    self.err(
                        &path,
                        format!("{ip:?} is the broadcast address of node.podCidr {cidr:?}"),
                    );
                }
            }
            match seen.ips.get(&addr) {
                Some(&(pi, pj)) => self.err(
                    &path,
                    format!("{ip:?} is already used by pods[{pi}].ips[{pj}]"),
                ),
                None => {
                    seen.ips.insert(addr, (i, j));
                }
            }
        }

        let mac = p.f("mac");
        match parse_mac(&pod.mac) {
            None => self.err(
                &mac,
                format!(
                    "{:?} is not a MAC address (e.g. \"02:00:00:00:00:01\")",
                    pod.mac
                ),
            ),
            Some(octets) if octets == [0; 6] => {
                self.err(&mac, format!("{:?} is the all-zero MAC address", pod.mac))
            }
            Some(octets) if octets[0] & 1 == 1 => self.err(
                &mac,
                format!(
                    "{:?} is a multicast MAC address, not a unicast one",
                    pod.mac
                ),
            ),
            Some(octets) => {
                if let Some(first) = seen.macs.insert(octets, i) {
                    self.err(
                        &mac,
                        format!("{:?} is already used by pods[{first}]", pod.mac),
                    );
                    seen.macs.insert(octets, first);
                }
            }
        }

        if let Some(first) = seen.vfs.insert(pod.vf_index, i) {
            self.err(
                &p.f("vfIndex"),
                format!("{} is already used by pods[{first}]", pod.vf_index),
            );
            seen.vfs.insert(pod.vf_index, first);
        }

        let repr = p.f("representor");
        if self.non_empty(&repr, &pod.representor) {
            if !is_netdev_name(&pod.representor) {
                self.err(
                    &repr,
                    format!(
                        "{:?} is not a network device name (at most 15 bytes, no '/', ':' or whitespace)",
                        pod.representor
                    ),
                );
            }
            if let Some(first) = seen.representors.insert(&pod.representor, i) {
                self.err(
                    &repr,
                    format!("{:?} is already used by pods[{first}]", pod.representor),
                );
                seen.representors.insert(&pod.representor, first);
            }
        }

        if !pod.spiffe_id.is_empty() {
            let prefix = format!("spiffe://{td}/");
            let ok = pod
                .spiffe_id
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.is_empty());
            if !ok {
                self.err(
                    &p.f("spiffeId"),
                    format!(
                        "{:?} is not a SPIFFE ID in trust domain {td:?} (must start with {prefix:?})",
                        pod.spiffe_id
                    ),
                );
            }
        }

        self.interception(&p.f("interception"), &pod.interception);

        if let Some(policy) = &pod.inbound_policy {
            if !self.inbound_policies.contains_key(policy.as_str()) {
                self.err(
                    &p.f("inboundPolicy"),
                    format!("{policy:?} is not the name of any inboundPolicies entry"),
                );
            }
        }

        let overrides = p.f("routeOverrides");
        for (port, table) in &pod.route_overrides {
            let path = overrides.k(port);
            match parse_port(port) {
                None => self.err(&path, format!("{port:?} is not a port number (1..=65535)")),
                Some(n) if !self.service_ports.contains(&n) => {
                    self.err(&path, format!("no service has port {n}"))
                }
                Some(_) => {}
            }
            if !self.route_tables.contains_key(table.as_str()) {
                self.err(
                    &path,
                    format!("{table:?} is not the name of any routeTables entry"),
                );
            }
        }

        if let Some(rl) = &pod.rate_limit {
            self.rate_limit(&p.f("rateLimit"), rl);
        }
    }

    fn interception(&mut self, p: &Path<'_>, ic: &Interception) {
        self.ports(&p.f("captureInboundPorts"), &ic.capture_inbound_ports);
        let exclude = p.f("excludeInboundPorts");
        self.ports(&exclude, &ic.exclude_inbound_ports);
        for (j, port) in ic.exclude_inbound_ports.iter().enumerate() {
            if *port != 0 && ic.capture_inbound_ports.contains(port) {
                self.err(
                    &exclude.i(j),
                    format!("{port} is also in captureInboundPorts"),
                );
            }
        }
        for (name, cidrs) in [
            ("captureOutboundCidrs", &ic.capture_outbound_cidrs),
            ("excludeOutboundCidrs", &ic.exclude_outbound_cidrs),
        ] {
            let path = p.f(name);
            for (j, cidr) in cidrs.iter().enumerate() {
                self.cidr(&path.i(j), cidr);
            }
        }
        self.ports(&p.f("excludeOutboundPorts"), &ic.exclude_outbound_ports);
    }

    /// Reports each zero port of a list.
    fn ports(&mut self, p: &Path<'_>, ports: &[u16]) {
        for (j, port) in ports.iter().enumerate() {
            if *port == 0 {
                self.err(&p.i(j), "0 is not a valid port");
            }
        }
    }

    fn rate_limit(&mut self, p: &Path<'_>, rl: &RateLimit) {
        if rl.max_tokens == 0 {
            self.err(&p.f("maxTokens"), "must be > 0, got 0");
        }
        if rl.tokens_per_fill == 0 {
            self.err(&p.f("tokensPerFill"), "must be > 0, got 0");
        }
        if rl.fill_interval_ms == 0 {
            self.err(&p.f("fillIntervalMs"), "must be > 0, got 0");
        }
    }

    // -- services -----------------------------------------------------------

    fn service(
        &mut self,
        p: &Path<'_>,
        i: usize,
        svc: &Service,
        vip_ports: &mut HashMap<(IpAddr, u16), usize>,
    ) {
        let host = p.f("hostname");
        if self.non_empty(&host, &svc.hostname) {
            if !is_hostname(&svc.hostname) {
                self.err(&host, format!("{:?} is not a DNS host name", svc.hostname));
            }
            let first = self.services.get(svc.hostname.as_str()).copied();
            self.unique(&host, first, &svc.hostname, i, "services");
        }
        let ns = p.f("namespace");
        if self.non_empty(&ns, &svc.namespace) && !is_dns1123_label(&svc.namespace) {
            self.err(&ns, format!("{:?} is not a DNS-1123 label", svc.namespace));
        }

        let vips = p.f("vips");
        for (j, vip) in svc.vips.iter().enumerate() {
            let path = vips.i(j);
            let Ok(addr) = vip.parse::<IpAddr>() else {
                self.err(&path, format!("{vip:?} is not an IP address"));
                continue;
            };
            // The proxy routes outbound traffic by original destination: one
            // VIP and port must name one service.
            let mut taken = Vec::new();
            for (k, port) in svc.ports.iter().enumerate() {
                if port.port == 0 || svc.ports[..k].iter().any(|q| q.port == port.port) {
                    continue;
                }
                match vip_ports.get(&(addr, port.port)) {
                    Some(&other) if other != i => taken.push((port.port, other)),
                    Some(_) => {}
                    None => {
                        vip_ports.insert((addr, port.port), i);
                    }
                }
            }
            for (port, other) in taken {
                self.err(
                    &path,
                    format!(
                        "{vip:?} port {port} is already served by services[{other}] ({:?})",
                        self.cfg.services[other].hostname
                    ),
                );
            }
        }

        let ports = p.f("ports");
        if svc.ports.is_empty() {
            self.err(&ports, "must list at least one port");
        }
        for (j, port) in svc.ports.iter().enumerate() {
            let pp = ports.i(j);
            if port.port == 0 {
                self.err(&pp.f("port"), "0 is not a valid port");
            } else if let Some(first) = svc.ports[..j].iter().position(|q| q.port == port.port) {
                self.err(
                    &pp.f("port"),
                    format!("{} duplicates ports[{first}].port", port.port),
                );
            }
            if !port.name.is_empty() {
                if !is_dns1123_label(&port.name) {
                    self.err(
                        &pp.f("name"),
                        format!("{:?} is not a DNS-1123 label", port.name),
                    );
                } else if let Some(first) = svc.ports[..j].iter().position(|q| q.name == port.name)
                {
                    self.err(
                        &pp.f("name"),
                        format!("{:?} duplicates ports[{first}].name", port.name),
                    );
                }
            }
            if port.target_port == Some(0) {
                self.err(&pp.f("targetPort"), "0 is not a valid port");
            }
            let protocol = port.effective_protocol();
            if let Some(table) = &port.route_table {
                let path = pp.f("routeTable");
                if !self.route_tables.contains_key(table.as_str()) {
                    self.err(
                        &path,
                        format!("{table:?} is not the name of any routeTables entry"),
                    );
                } else if let Some(proto) = protocol.filter(|pr| !pr.is_http()) {
                    self.err(
                        &path,
                        format!(
                            "{table:?} is an HTTP route table but port {} speaks {}",
                            port.port,
                            protocol_name(proto)
                        ),
                    );
                }
            }
            if let Some(table) = &port.tcp_route_table {
                let path = pp.f("tcpRouteTable");
                if !self.tcp_route_tables.contains_key(table.as_str()) {
                    self.err(
                        &path,
                        format!("{table:?} is not the name of any tcpRouteTables entry"),
                    );
                } else if let Some(proto) = protocol.filter(|pr| pr.is_http()) {
                    self.err(
                        &path,
                        format!(
                            "{table:?} is a TCP route table but port {} speaks {}",
                            port.port,
                            protocol_name(proto)
                        ),
                    );
                }
            }
        }

        let eps = p.f("endpoints");
        for (j, ep) in svc.endpoints.iter().enumerate() {
            self.endpoint(&eps.i(j), svc, ep);
        }
    }

    fn endpoint(&mut self, p: &Path<'_>, svc: &Service, ep: &Endpoint) {
        if ep.address.parse::<IpAddr>().is_err() {
            self.err(
                &p.f("address"),
                format!("{:?} is not an IP address", ep.address),
            );
        }
        let ports = p.f("ports");
        for (name, port) in &ep.ports {
            let path = ports.k(name);
            if !svc.ports.iter().any(|sp| &sp.name == name) {
                self.err(
                    &path,
                    format!("no port of service {:?} is named {name:?}", svc.hostname),
                );
            }
            if *port == 0 {
                self.err(&path, "0 is not a valid port");
            }
        }
        if !ep.node.is_empty() && !is_dns1123_subdomain(&ep.node) {
            self.err(
                &p.f("node"),
                format!("{:?} is not a DNS-1123 subdomain", ep.node),
            );
        }
        self.locality(&p.f("locality"), &ep.locality);
        if ep.weight == 0 {
            self.err(&p.f("weight"), "must be > 0, got 0");
        }
        self.labels(&p.f("labels"), &ep.labels);
        if !ep.service_account.is_empty() && !is_dns1123_subdomain(&ep.service_account) {
            self.err(
                &p.f("serviceAccount"),
                format!("{:?} is not a DNS-1123 subdomain", ep.service_account),
            );
        }
        if ep.hbone == Some(true) && ep.service_account.is_empty() {
            self.err(
                &p.f("hbone"),
                "true needs serviceAccount (the identity the endpoint must prove over HBONE)",
            );
        }
    }

    // -- clusters -----------------------------------------------------------

    fn cluster(&mut self, p: &Path<'_>, i: usize, c: &Cluster) {
        let cfg = self.cfg;
        let name = p.f("name");
        if self.non_empty(&name, &c.name) {
            let first = self.clusters.get(c.name.as_str()).copied();
            self.unique(&name, first, &c.name, i, "clusters");
            match parse_cluster_name(&c.name) {
                None => self.err(
                    &name,
                    format!(
                        "{:?} is not of the form \"outbound|<port>|<subset>|<hostname>\"",
                        c.name
                    ),
                ),
                Some((port, subset, host)) => {
                    if port != c.port {
                        self.err(
                            &name,
                            format!("{:?} names port {port} but port is {}", c.name, c.port),
                        );
                    }
                    let own_subset = c.subset.as_deref().unwrap_or("");
                    if subset != own_subset {
                        self.err(
                            &name,
                            format!(
                                "{:?} names subset {subset:?} but subset is {own_subset:?}",
                                c.name
                            ),
                        );
                    }
                    if host != c.service {
                        self.err(
                            &name,
                            format!(
                                "{:?} names host {host:?} but service is {:?}",
                                c.name, c.service
                            ),
                        );
                    }
                }
            }
        }

        let service = self
            .services
            .get(c.service.as_str())
            .map(|&j| &cfg.services[j]);
        match service {
            None => self.err(
                &p.f("service"),
                format!("{:?} is not the hostname of any services entry", c.service),
            ),
            Some(svc) => {
                if !svc.ports.iter().any(|sp| sp.port == c.port) {
                    self.err(
                        &p.f("port"),
                        format!("{} is not a port of service {:?}", c.port, c.service),
                    );
                }
            }
        }
        if c.port == 0 && service.is_none() {
            self.err(&p.f("port"), "0 is not a valid port");
        }

        if let Some(subset) = &c.subset {
            if subset.is_empty() {
                self.err(&p.f("subset"), "must not be empty when set");
            } else if !is_dns1123_label(subset) {
                self.err(
                    &p.f("subset"),
                    format!("{subset:?} is not a DNS-1123 label"),
                );
            }
        } else if !c.subset_labels.is_empty() {
            self.err(&p.f("subsetLabels"), "set, but the cluster has no subset");
        }
        self.labels(&p.f("subsetLabels"), &c.subset_labels);

        let lb = p.f("lbPolicy");
        match (&c.lb_policy.kind, &c.lb_policy.hash_key) {
            (LbKind::ConsistentHash, None) => {
                self.err(&lb.f("hashKey"), "must be set when kind is CONSISTENT_HASH")
            }
            (kind, Some(_)) if *kind != LbKind::ConsistentHash => self.err(
                &lb.f("hashKey"),
                format!(
                    "set, but kind is {} (only CONSISTENT_HASH uses it)",
                    lb_kind_name(*kind)
                ),
            ),
            _ => {}
        }
        if let Some(key) = &c.lb_policy.hash_key {
            let hk = lb.f("hashKey");
            match key {
                HashKey::Header(h) => {
                    if !is_header_name(h) {
                        self.err(
                            &hk.f("header"),
                            format!("{h:?} is not a valid HTTP header name"),
                        );
                    }
                }
                HashKey::Cookie(name) => {
                    if !is_token(name) {
                        self.err(
                            &hk.f("cookie"),
                            format!("{name:?} is not a valid cookie name"),
                        );
                    }
                }
                HashKey::SourceIp => {}
            }
        }

        if let Some(llb) = &c.locality_lb {
            let lp = p.f("localityLb");
            let fo = lp.f("failover");
            for (j, f) in llb.failover.iter().enumerate() {
                let path = fo.i(j);
                let from_ok = self.non_empty(&path.f("from"), &f.from);
                let to_ok = self.non_empty(&path.f("to"), &f.to);
                if from_ok && to_ok && f.from == f.to {
                    self.err(
                        &path.f("to"),
                        format!("{:?} is the same region as from", f.to),
                    );
                }
            }
        }

        if c.connect_timeout_ms == 0 {
            self.err(&p.f("connectTimeoutMs"), "must be > 0, got 0");
        }
        self.tls_origination(p, c);

        if let Some(od) = &c.outlier_detection {
            let path = p.f("outlierDetection");
            if od.interval_ms == 0 {
                self.err(&path.f("intervalMs"), "must be > 0, got 0");
            }
            if od.base_ejection_time_ms == 0 {
                self.err(&path.f("baseEjectionTimeMs"), "must be > 0, got 0");
            }
            if od.max_ejection_percent > 100 {
                self.err(
                    &path.f("maxEjectionPercent"),
                    format!("{} is out of range 0..=100", od.max_ejection_percent),
                );
            }
        }
    }

    /// `tlsOrigination` only on `SIMPLE`/`MUTUAL` clusters; `MUTUAL` needs a
    /// client certificate; secret references name an entry with the right parts.
    fn tls_origination(&mut self, p: &Path<'_>, c: &Cluster) {
        let originates = matches!(c.tls, TlsMode::Simple | TlsMode::Mutual);
        let tp = p.f("tlsOrigination");
        let Some(t) = &c.tls_origination else {
            if c.tls == TlsMode::Mutual {
                self.err(&tp.f("clientCertificate"), "must be set when tls is MUTUAL");
            }
            return;
        };
        if !originates {
            self.err(&tp, "set, but tls is not SIMPLE or MUTUAL");
        }
        if !t.sni.is_empty() && !is_hostname(&t.sni) && t.sni.parse::<IpAddr>().is_err() {
            self.err(
                &tp.f("sni"),
                format!("{:?} is not a host name or IP address", t.sni),
            );
        }
        let sans = tp.f("subjectAltNames");
        for (j, san) in t.subject_alt_names.iter().enumerate() {
            let path = sans.i(j);
            if self.non_empty(&path, san) && !is_hostname(san) && san.parse::<IpAddr>().is_err() {
                self.err(
                    &path,
                    format!("{san:?} is not a DNS name (optionally *.) or IP address"),
                );
            }
        }
        if let Some(name) = &t.ca_certificates {
            if let Some(s) = self.secret_ref(&tp.f("caCertificates"), name) {
                if s.ca_certificates.is_empty() && !s.is_unavailable() {
                    self.err(
                        &tp.f("caCertificates"),
                        format!("secret {name:?} has no caCertificates"),
                    );
                }
            }
        }
        match (&t.client_certificate, c.tls) {
            (None, TlsMode::Mutual) => {
                self.err(&tp.f("clientCertificate"), "must be set when tls is MUTUAL")
            }
            (Some(_), tls) if tls != TlsMode::Mutual => {
                self.err(&tp.f("clientCertificate"), "set, but tls is not MUTUAL")
            }
            (Some(name), _) => {
                if let Some(s) = self.secret_ref(&tp.f("clientCertificate"), name) {
                    if (s.certificate_chain.is_empty() || s.private_key.is_empty())
                        && !s.is_unavailable()
                    {
                        self.err(
                            &tp.f("clientCertificate"),
                            format!("secret {name:?} lacks certificateChain or privateKey"),
                        );
                    }
                }
            }
            (None, _) => {}
        }
    }

    fn secret_ref(&mut self, p: &Path<'_>, name: &str) -> Option<&'c Secret> {
        let cfg = self.cfg;
        match self.secrets.get(name) {
            Some(&j) => Some(&cfg.secrets[j]),
            None => {
                self.err(p, format!("{name:?} is not the name of any secrets entry"));
                None
            }
        }
    }

    /// A secret: a unique name, PEM blocks of the right kinds (their content
    /// is parsed by the consumer), a chain only with its key. One without
    /// any content is allowed: the control plane has not provided it.
    fn secret(&mut self, p: &Path<'_>, i: usize, s: &Secret) {
        let name = p.f("name");
        if self.non_empty(&name, &s.name) {
            let first = self.secrets.get(s.name.as_str()).copied();
            self.unique(&name, first, &s.name, i, "secrets");
        }
        for (field, pem) in [
            ("caCertificates", &s.ca_certificates),
            ("certificateChain", &s.certificate_chain),
        ] {
            if !pem.is_empty() && !pem.contains("-----BEGIN CERTIFICATE-----") {
                self.err(&p.f(field), "is not PEM: no \"BEGIN CERTIFICATE\" block");
            }
        }
        match (s.certificate_chain.is_empty(), s.private_key.is_empty()) {
            (false, true) => self.err(&p.f("privateKey"), "must be set with certificateChain"),
            (true, false) => self.err(&p.f("certificateChain"), "must be set with privateKey"),
            _ => {}
        }
        let key_pem =
            s.private_key.contains("-----BEGIN ") && s.private_key.contains("PRIVATE KEY-----");
        if !s.private_key.is_empty() && !key_pem {
            self.err(
                &p.f("privateKey"),
                "is not PEM: no \"BEGIN ... PRIVATE KEY\" block",
            );
        }
    }

    // -- HTTP route tables --------------------------------------------------

    fn route_table(&mut self, p: &Path<'_>, i: usize, table: &RouteTable) {
        let name = p.f("name");
        if self.non_empty(&name, &table.name) {
            let first = self.route_tables.get(table.name.as_str()).copied();
            self.unique(&name, first, &table.name, i, "routeTables");
        }
        let vhs = p.f("virtualHosts");
        let mut vh_names: HashMap<&str, usize> = HashMap::new();
        let mut domains: HashMap<String, usize> = HashMap::new();
        for (j, vh) in table.virtual_hosts.iter().enumerate() {
            let vp = vhs.i(j);
            let vname = vp.f("name");
            if self.non_empty(&vname, &vh.name) {
                if let Some(&first) = vh_names.get(vh.name.as_str()) {
                    self.err(
                        &vname,
                        format!("{:?} duplicates virtualHosts[{first}].name", vh.name),
                    );
                } else {
                    vh_names.insert(&vh.name, j);
                }
            }
            let dp = vp.f("domains");
            if vh.domains.is_empty() {
                self.err(&dp, "must list at least one domain");
            }
            for (k, domain) in vh.domains.iter().enumerate() {
                let path = dp.i(k);
                if !self.non_empty(&path, domain) {
                    continue;
                }
                if !is_domain_pattern(domain) {
                    self.err(
                        &path,
                        format!(
                            "{domain:?} is not a domain (a host[:port], '*' only as a whole or at one end)"
                        ),
                    );
                }
                let lower = domain.to_ascii_lowercase();
                match domains.get(&lower) {
                    Some(&other) if other == j => self.err(
                        &path,
                        format!("{domain:?} is listed twice in this virtual host"),
                    ),
                    Some(&other) => self.err(
                        &path,
                        format!("{domain:?} already appears in virtualHosts[{other}]"),
                    ),
                    None => {
                        domains.insert(lower, j);
                    }
                }
            }
            let rp = vp.f("routes");
            for (k, route) in vh.routes.iter().enumerate() {
                self.route(&rp.i(k), route);
            }
        }
    }

    fn route(&mut self, p: &Path<'_>, route: &Route) {
        let mp = p.f("matches");
        for (j, m) in route.matches.iter().enumerate() {
            self.route_match(&mp.i(j), m);
        }

        let ap = p.f("action");
        match &route.action {
            RouteAction::Forward(fw) => {
                let fp = ap.f("forward");
                self.destinations(&fp.f("destinations"), &fw.destinations);
                if let Some(rw) = &fw.rewrite {
                    let rp = fp.f("rewrite");
                    self.uri(&rp.f("uri"), rw.uri.as_deref(), true);
                    self.authority(&rp.f("authority"), rw.authority.as_deref());
                }
            }
            RouteAction::Redirect(r) => {
                let rp = ap.f("redirect");
                self.uri(&rp.f("uri"), r.uri.as_deref(), false);
                self.authority(&rp.f("authority"), r.authority.as_deref());
                if let Some(scheme) = &r.scheme {
                    if scheme != "http" && scheme != "https" {
                        self.err(
                            &rp.f("scheme"),
                            format!("{scheme:?} is not \"http\" or \"https\""),
                        );
                    }
                }
                if ![301, 302, 303, 307, 308].contains(&r.code) {
                    self.err(
                        &rp.f("code"),
                        format!(
                            "{} is not a redirect code (301, 302, 303, 307, 308)",
                            r.code
                        ),
                    );
                }
            }
            RouteAction::DirectResponse(d) => {
                if !(100..=599).contains(&d.status) {
                    self.err(
                        &ap.f("directResponse").f("status"),
                        format!("{} is out of range 100..=599", d.status),
                    );
                }
            }
        }

        self.header_ops(&p.f("headers"), &route.headers);

        if route.timeout_ms == Some(0) {
            self.err(&p.f("timeoutMs"), "must be > 0 when set, got 0");
        }
        if let Some(retries) = &route.retries {
            self.retries(&p.f("retries"), retries);
        }
        if let Some(fault) = &route.fault {
            let fp = p.f("fault");
            if fault.delay.is_none() && fault.abort.is_none() {
                self.err(&fp, "must set delay or abort");
            }
            if let Some(d) = &fault.delay {
                let dp = fp.f("delay");
                if d.fixed_delay_ms == 0 {
                    self.err(&dp.f("fixedDelayMs"), "must be > 0, got 0");
                }
                self.percent(&dp.f("percent"), d.percent);
            }
            if let Some(a) = &fault.abort {
                let abp = fp.f("abort");
                if !(200..=599).contains(&a.http_status) {
                    self.err(
                        &abp.f("httpStatus"),
                        format!("{} is out of range 200..=599", a.http_status),
                    );
                }
                self.percent(&abp.f("percent"), a.percent);
            }
        }
        if let Some(mirror) = &route.mirror {
            let mp = p.f("mirror");
            self.cluster_ref(&mp.f("cluster"), &mirror.cluster);
            self.percent(&mp.f("percent"), mirror.percent);
        }
        if let Some(rl) = &route.rate_limit {
            self.rate_limit(&p.f("rateLimit"), rl);
        }
    }

    fn route_match(&mut self, p: &Path<'_>, m: &RouteMatch) {
        if let Some(sm) = &m.authority {
            self.string_match(&p.f("authority"), sm);
        }
        if let Some(sm) = &m.path {
            let pp = p.f("path");
            match sm {
                StringMatch::Exact(s) | StringMatch::Prefix(s) if !s.starts_with('/') => {
                    let field = if matches!(sm, StringMatch::Exact(_)) {
                        "exact"
                    } else {
                        "prefix"
                    };
                    self.err(&pp.f(field), format!("{s:?} does not start with '/'"));
                }
                _ => self.string_match(&pp, sm),
            }
        }
        if let Some(sm) = &m.method {
            let mp = p.f("method");
            match sm {
                StringMatch::Exact(s) if !is_token(s) => {
                    self.err(&mp.f("exact"), format!("{s:?} is not an HTTP method"))
                }
                _ => self.string_match(&mp, sm),
            }
        }
        let hp = p.f("headers");
        for (j, h) in m.headers.iter().enumerate() {
            let path = hp.i(j);
            if !is_header_name(&h.name) {
                self.err(
                    &path.f("name"),
                    format!("{:?} is not a valid HTTP header name", h.name),
                );
            }
            if let Some(v) = &h.value {
                self.string_match(&path.f("value"), v);
            }
        }
        let qp = p.f("queryParams");
        for (j, q) in m.query_params.iter().enumerate() {
            let path = qp.i(j);
            self.non_empty(&path.f("name"), &q.name);
            if let Some(v) = &q.value {
                self.string_match(&path.f("value"), v);
            }
        }
    }

    /// Only regexes can be wrong in a StringMatch: they must compile. The
    /// match is a full match; consumers anchor it as `^(?:<regex>)$`.
    fn string_match(&mut self, p: &Path<'_>, sm: &StringMatch) {
        if let StringMatch::Regex(re) = sm {
            if let Err(e) = regex::Regex::new(re) {
                self.err(
                    &p.f("regex"),
                    format!(
                        "{re:?} is not a valid regular expression: {}",
                        regex_error_summary(&e)
                    ),
                );
            }
        }
    }

    fn destinations(&mut self, p: &Path<'_>, dests: &[WeightedDestination]) {
        if dests.is_empty() {
            self.err(p, "must list at least one destination");
            return;
        }
        let mut total: u64 = 0;
        for (j, d) in dests.iter().enumerate() {
            let path = p.i(j);
            self.cluster_ref(&path.f("cluster"), &d.cluster);
            total += u64::from(d.weight);
            self.header_ops(&path.f("headers"), &d.headers);
        }
        if total == 0 {
            self.err(p, "weights sum to 0");
        }
    }

    /// A cluster reference names an entry of `clusters`, or the implicit
    /// default cluster `outbound|<port>||<hostname>` of a service port (which
    /// consumers create with default settings when `clusters` has no entry).
    fn cluster_ref(&mut self, p: &Path<'_>, cluster: &str) {
        if self.clusters.contains_key(cluster) {
            return;
        }
        let cfg = self.cfg;
        let implicit = parse_cluster_name(cluster).is_some_and(|(port, subset, host)| {
            subset.is_empty()
                && self
                    .services
                    .get(host)
                    .is_some_and(|&i| cfg.services[i].ports.iter().any(|sp| sp.port == port))
        });
        if !implicit {
            self.err(
                p,
                format!(
                    "{cluster:?} is neither the name of a clusters entry nor the default cluster of a service port"
                ),
            );
        }
    }

    /// A path replacement: absolute when non-empty; empty only where allowed
    /// (a prefix rewrite may strip the prefix).
    fn uri(&mut self, p: &Path<'_>, uri: Option<&str>, empty_ok: bool) {
        match uri {
            Some("") if !empty_ok => self.err(p, "must not be empty when set"),
            Some(u) if !u.is_empty() && !u.starts_with('/') => {
                self.err(p, format!("{u:?} does not start with '/'"))
            }
            _ => {}
        }
    }

    /// A replacement `host[:port]`, when set.
    fn authority(&mut self, p: &Path<'_>, value: Option<&str>) {
        match value {
            Some("") => self.err(p, "must not be empty when set"),
            Some(a) if !is_authority(a) => {
                self.err(p, format!("{a:?} is not a valid authority (host[:port])"))
            }
            _ => {}
        }
    }

    fn header_ops(&mut self, p: &Path<'_>, ops: &HeaderOps) {
        if ops.is_empty() {
            return;
        }
        for (field, map, request) in [
            ("requestSet", &ops.request_set, true),
            ("requestAdd", &ops.request_add, true),
            ("responseSet", &ops.response_set, false),
            ("responseAdd", &ops.response_add, false),
        ] {
            let fp = p.f(field);
            for (name, value) in map {
                let path = fp.k(name);
                self.header_op_name(&path, name, request);
                if !is_header_value(value) {
                    self.err(&path, format!("{value:?} is not a valid HTTP header value"));
                }
            }
        }
        for (field, names, request) in [
            ("requestRemove", &ops.request_remove, true),
            ("responseRemove", &ops.response_remove, false),
        ] {
            let fp = p.f(field);
            for (j, name) in names.iter().enumerate() {
                self.header_op_name(&fp.i(j), name, request);
            }
        }
    }

    /// Pseudo-headers cannot be changed, nor the request's host (use
    /// `rewrite.authority`), as in Envoy.
    fn header_op_name(&mut self, p: &Path<'_>, name: &str, request: bool) {
        if !is_token(name) {
            self.err(p, format!("{name:?} is not a valid HTTP header name"));
        } else if request && name.eq_ignore_ascii_case("host") {
            self.err(
                p,
                format!("{name:?} cannot be changed here; use rewrite.authority"),
            );
        }
    }

    fn retries(&mut self, p: &Path<'_>, r: &RetryPolicy) {
        if r.per_try_timeout_ms == Some(0) {
            self.err(&p.f("perTryTimeoutMs"), "must be > 0 when set, got 0");
        }
        let ro = p.f("retryOn");
        for (j, cond) in r.retry_on.iter().enumerate() {
            let known = RETRY_ON_CONDITIONS.contains(&cond.as_str())
                || cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !known {
                self.err(
                    &ro.i(j),
                    format!(
                        "{cond:?} is not a retry condition (one of {}, or a status code 100..=599)",
                        RETRY_ON_CONDITIONS.join(", ")
                    ),
                );
            }
        }
        let codes = p.f("retriableStatusCodes");
        // Bare codes in retryOn are retriable status codes too (Istio).
        let bare_codes = r
            .retry_on
            .iter()
            .any(|c| c.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)));
        if r.retry_on.iter().any(|c| c == "retriable-status-codes")
            && r.retriable_status_codes.is_empty()
            && !bare_codes
        {
            self.err(
                &codes,
                "must not be empty when retryOn contains \"retriable-status-codes\" and no status code",
            );
        }
        for (j, code) in r.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                self.err(&codes.i(j), format!("{code} is out of range 100..=599"));
            }
        }
        if let Some(b) = &r.budget {
            self.percent(&p.f("budget").f("budgetPercent"), b.budget_percent);
        }
    }

    fn percent(&mut self, p: &Path<'_>, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.err(p, format!("{value} is out of range 0..=100"));
        }
    }

    // -- TCP route tables ---------------------------------------------------

    fn tcp_route_table(&mut self, p: &Path<'_>, i: usize, table: &TcpRouteTable) {
        let name = p.f("name");
        if self.non_empty(&name, &table.name) {
            let first = self.tcp_route_tables.get(table.name.as_str()).copied();
            self.unique(&name, first, &table.name, i, "tcpRouteTables");
        }
        let rp = p.f("routes");
        if table.routes.is_empty() {
            self.err(&rp, "must list at least one route");
        }
        for (j, route) in table.routes.iter().enumerate() {
            let path = rp.i(j);
            self.labels(&path.f("sourceLabels"), &route.source_labels);
            self.destinations(&path.f("destinations"), &route.destinations);
        }
    }

    // -- inbound policies ---------------------------------------------------

    fn inbound_policy(&mut self, p: &Path<'_>, i: usize, policy: &InboundPolicy) {
        let name = p.f("name");
        if self.non_empty(&name, &policy.name) {
            let first = self.inbound_policies.get(policy.name.as_str()).copied();
            self.unique(&name, first, &policy.name, i, "inboundPolicies");
        }
        let pa = p.f("peerAuthentication");
        let pm = pa.f("portModes");
        for port in policy.peer_authentication.port_modes.keys() {
            if parse_port(port).is_none() {
                self.err(
                    &pm.k(port),
                    format!("{port:?} is not a port number (1..=65535)"),
                );
            }
        }
        let ap = p.f("authorization");
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (j, authz) in policy.authorization.iter().enumerate() {
            self.authorization(&ap.i(j), j, authz, &mut names);
        }
    }

    fn authorization<'a>(
        &mut self,
        p: &Path<'_>,
        j: usize,
        authz: &'a AuthorizationPolicy,
        names: &mut HashMap<&'a str, usize>,
    ) {
        let name = p.f("name");
        if self.non_empty(&name, &authz.name) {
            if let Some(&first) = names.get(authz.name.as_str()) {
                self.err(
                    &name,
                    format!("{:?} duplicates authorization[{first}].name", authz.name),
                );
            } else {
                names.insert(&authz.name, j);
            }
            let ok = authz
                .name
                .split_once('/')
                .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'));
            if !ok {
                self.err(
                    &name,
                    format!("{:?} is not of the form \"<namespace>/<name>\"", authz.name),
                );
            }
        }
        let rp = p.f("rules");
        for (j, rule) in authz.rules.iter().enumerate() {
            self.authz_rule(&rp.i(j), rule);
        }
    }

    fn authz_rule(&mut self, p: &Path<'_>, rule: &AuthzRule) {
        let fp = p.f("from");
        for (j, src) in rule.from.iter().enumerate() {
            self.authz_source(&fp.i(j), src);
        }
        let tp = p.f("to");
        for (j, op) in rule.to.iter().enumerate() {
            self.authz_operation(&tp.i(j), op);
        }
        let wp = p.f("when");
        for (j, cond) in rule.when.iter().enumerate() {
            self.authz_condition(&wp.i(j), cond);
        }
    }

    fn authz_source(&mut self, p: &Path<'_>, s: &AuthzSource) {
        if s == &AuthzSource::default() {
            self.err(
                p,
                "must set at least one of principals, notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks",
            );
            return;
        }
        for (field, values) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
        ] {
            self.non_empty_items(&p.f(field), values);
        }
        for (field, values) in [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
        ] {
            let fp = p.f(field);
            for (j, v) in values.iter().enumerate() {
                if !is_ip_or_cidr(v) {
                    self.err(&fp.i(j), format!("{v:?} is not an IP address or CIDR"));
                }
            }
        }
    }

    fn authz_operation(&mut self, p: &Path<'_>, o: &AuthzOperation) {
        if o == &AuthzOperation::default() {
            self.err(
                p,
                "must set at least one of hosts, ports, methods, paths, notPaths",
            );
            return;
        }
        self.non_empty_items(&p.f("hosts"), &o.hosts);
        self.ports(&p.f("ports"), &o.ports);
        self.non_empty_items(&p.f("methods"), &o.methods);
        self.non_empty_items(&p.f("paths"), &o.paths);
        self.non_empty_items(&p.f("notPaths"), &o.not_paths);
    }

    fn non_empty_items(&mut self, p: &Path<'_>, values: &[String]) {
        for (j, v) in values.iter().enumerate() {
            self.non_empty(&p.i(j), v);
        }
    }

    fn authz_condition(&mut self, p: &Path<'_>, c: &AuthzCondition) {
        let key = c.key.as_str();
        let bracketed = |prefix: &str| {
            key.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']']))
        };
        let known = AUTHZ_CONDITION_KEYS.contains(&key)
            || bracketed("request.headers[")
            || bracketed("request.auth.claims[");
        if !known {
            self.err(
                &p.f("key"),
                format!(
                    "{key:?} is not a supported condition key (one of {}, request.headers[<name>], request.auth.claims[<name>])",
                    AUTHZ_CONDITION_KEYS.join(", ")
                ),
            );
        }
        if c.values.is_empty() && c.not_values.is_empty() {
            self.err(p, "must set values or notValues");
        }
        for (field, values) in [("values", &c.values), ("notValues", &c.not_values)] {
            let fp = p.f(field);
            for (j, v) in values.iter().enumerate() {
                let path = fp.i(j);
                match key {
                    "source.ip" | "remote.ip" | "destination.ip" if !is_ip_or_cidr(v) => {
                        self.err(&path, format!("{v:?} is not an IP address or CIDR"))
                    }
                    "destination.port" if parse_port(v).is_none() => {
                        self.err(&path, format!("{v:?} is not a port number (1..=65535)"))
                    }
                    _ => {
                        self.non_empty(&path, v);
                    }
                }
            }
        }
    }
}

/// What was seen of earlier pods, for uniqueness checks in document order.
#[derive(Default)]
struct PodsSeen<'c> {
    uids: HashMap<&'c str, usize>,
    names: HashMap<(&'c str, &'c str), usize>,
    ips: HashMap<IpAddr, (usize, usize)>,
    macs: HashMap<[u8; 6], usize>,
    vfs: HashMap<u32, usize>,
    representors: HashMap<&'c str, usize>,
}

// ---------------------------------------------------------------------------
// Lexical rules.

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A service host: a DNS-1123 subdomain, optionally with a leading `*.` (ServiceEntry).
fn is_hostname(s: &str) -> bool {
    is_dns1123_subdomain(s.strip_prefix("*.").unwrap_or(s))
}

/// SPIFFE trust domain name: lowercase letters, digits, '.', '-', '_'.
fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        })
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS-1123 subdomain.
fn is_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty() && is_label_value(s)
}

/// Kubernetes label value: empty, or up to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// RFC 9110 token (header names, methods, cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header name to match on: a token, or a pseudo-header such as `:authority`.
fn is_header_name(s: &str) -> bool {
    is_token(s.strip_prefix(':').unwrap_or(s))
}

/// Linux netdev name rules (`dev_valid_name`).
fn is_netdev_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A virtual host domain: `*`, or host[:port] with at most one `*` at either end.
fn is_domain_pattern(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let stars = s.matches('*').count();
    let chars_ok = s.bytes().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b':' | b'[' | b']' | b'*')
    });
    chars_ok && (stars == 0 || (stars == 1 && (s.starts_with('*') || s.ends_with('*'))))
}

/// A header value: visible ASCII, spaces, tabs and obs-text; no control characters.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|c| c == b'\t' || (c >= 0x20 && c != 0x7f))
}

/// `host[:port]` as an HTTP authority (no userinfo, path, query or whitespace).
fn is_authority(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || s.parse::<IpNet>().is_ok()
}

/// A port number 1..=65535 written as decimal digits.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `aa:bb:cc:dd:ee:ff` → octets.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for octet in &mut out {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `outbound|<port>|<subset>|<hostname>` → (port, subset, hostname).
fn parse_cluster_name(s: &str) -> Option<(u16, &str, &str)> {
    let mut parts = s.split('|');
    let (dir, port, subset, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || dir != "outbound" || host.is_empty() {
        return None;
    }
    Some((parse_port(port)?, subset, host))
}

fn regex_error_summary(e: &regex::Error) -> String {
    match e {
        // The syntax error is a multi-line drawing; its last line says what is wrong.
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or("syntax error")
            .to_string(),
        regex::Error::CompiledTooBig(limit) => {
            format!("compiled regex exceeds the size limit of {limit} bytes")
        }
        other => other.to_string(),
    }
}

fn lb_kind_name(kind: LbKind) -> &'static str {
    match kind {
        LbKind::RoundRobin => "ROUND_ROBIN",
        LbKind::LeastRequest => "LEAST_REQUEST",
        LbKind::Random => "RANDOM",
        LbKind::ConsistentHash => "CONSISTENT_HASH",
    }
}

fn protocol_name(p: super::Protocol) -> &'static str {
    use super::Protocol::*;
    match p {
        Http => "HTTP",
        Http2 => "HTTP2",
        Grpc => "GRPC",
        GrpcWeb => "GRPC-Web",
        Tcp => "TCP",
        Tls => "TLS",
        Https => "HTTPS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_with_json_names() {
        let root = Path::ROOT;
        let a = root.f("routeTables");
        let b = a.i(1);
        let c = b.f("virtualHosts");
        let d = c.i(0);
        let e = d.f("domains");
        assert_eq!(e.render(), "routeTables[1].virtualHosts[0].domains");
        let pods = root.f("pods");
        let pod = pods.i(3);
        let ov = pod.f("routeOverrides");
        assert_eq!(ov.k("9080").render(), "pods[3].routeOverrides[\"9080\"]");
    }

    #[test]
    fn lexical_rules() {
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("ip-10-0-0-1.ec2.internal"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("/name"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
        assert_eq!(parse_mac("02:00:0a:f4:01:05"), Some([2, 0, 10, 244, 1, 5]));
        assert_eq!(parse_mac("02:00:0a:f4:01"), None);
        assert_eq!(parse_mac("02:00:0a:f4:01:05:06"), None);
        assert_eq!(parse_mac("2:00:0a:f4:01:05"), None);
        assert_eq!(parse_port("080"), Some(80));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("+80"), None);
        assert_eq!(parse_port("65536"), None);
        assert!(is_domain_pattern("*.example.com"));
        assert!(is_domain_pattern("reviews:9080"));
        assert!(is_domain_pattern("foo.*"));
        assert!(!is_domain_pattern("a.*.com"));
        assert!(!is_domain_pattern("*.a.*"));
        assert!(is_netdev_name("pf0vf3"));
        assert!(!is_netdev_name("pf0vf3-too-long-a"));
        assert!(!is_netdev_name("a b"));
        assert_eq!(
            parse_cluster_name("outbound|9080|v1|reviews.default.svc.cluster.local"),
            Some((9080, "v1", "reviews.default.svc.cluster.local"))
        );
        assert_eq!(parse_cluster_name("inbound|9080||x"), None);
        assert_eq!(parse_cluster_name("outbound|9080|x"), None);
    }
}

//! NodeConfig: the node-level ("shared") mesh config for one node's DPU.
//!
//! It is the contract between the host side (adapter) and the DPU side
//! (dpu-proxy, dataplane). Shared parts — services, clusters, route tables,
//! inbound policies — are stored once and referenced by name from pods, so the
//! size grows with services + pods, not pods × services.
//!
//! Addresses, CIDRs and MACs are kept as strings on the wire so that
//! [`NodeConfig::validate`] can report *every* bad value with its path instead
//! of stopping at the first one a deserializer meets. Consumers validate once
//! and then compile the config into their own lookup structures.
//!
//! Field-by-field reference: `docs/config-reference.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod validate;

pub use validate::{ValidationError, ValidationErrors, AUTHZ_CONDITION_KEYS, RETRY_ON_CONDITIONS};

/// The schema version written in `apiVersion`.
pub const API_VERSION: &str = "dpumesh.io/v1alpha1";

/// The whole node-level config of one node. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Always [`API_VERSION`].
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Monotonic version of this config for this node; a push must increase it.
    pub version: u64,
    /// Where this config came from (e.g. xDS versions), informational.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
    pub node: NodeInfo,
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub route_tables: Vec<RouteTable>,
    #[serde(default)]
    pub tcp_route_tables: Vec<TcpRouteTable>,
    #[serde(default)]
    pub inbound_policies: Vec<InboundPolicy>,
    /// Certificates and keys for TLS origination, each stored once and named
    /// from `clusters[].tlsOrigination`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
}

fn default_api_version() -> String {
    API_VERSION.to_string()
}

/// The node this config is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    pub name: String,
    pub network_mode: NetworkMode,
    /// CIDR of the pods on this node, e.g. "10.244.1.0/24".
    pub pod_cidr: String,
    /// Cluster service CIDRs (VIP ranges), e.g. ["10.96.0.0/16"].
    #[serde(default)]
    pub service_cidrs: Vec<String>,
    /// The DPU's management address ("ip:port") where the control APIs are served.
    pub dpu_mgmt_addr: String,
    /// SPIFFE trust domain, default "cluster.local".
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Cluster DNS suffix, default "cluster.local".
    #[serde(default = "default_trust_domain")]
    pub dns_domain: String,
    /// This node's locality, used for locality-aware load balancing.
    #[serde(default)]
    pub locality: Locality,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Each node's pod CIDR is routed over the fabric.
    Underlay,
    /// VXLAN between the DPUs.
    Overlay,
}

/// Istio locality: region/zone/subzone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subzone: String,
}

/// A pod on this node, attached through one VF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's IP addresses, each inside `node.podCidr`.
    pub ips: Vec<String>,
    /// The VF's MAC, "aa:bb:cc:dd:ee:ff".
    pub mac: String,
    pub vf_index: u32,
    /// DPU-side representor netdev, e.g. "pf0vf3".
    pub representor: String,
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`; derived from the pod when empty.
    #[serde(default)]
    pub spiffe_id: String,
    /// Whether the pod's traffic is steered into dpu-proxy.
    #[serde(default = "default_true")]
    pub meshed: bool,
    #[serde(default)]
    pub interception: Interception,
    /// Name of an entry of `inboundPolicies` governing traffic to this pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_policy: Option<String>,
    /// Per-pod outbound route tables that differ from the shared default:
    /// service port (as a string, e.g. "9080") → name of an entry of `routeTables`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_overrides: BTreeMap<String, String>,
    /// Local rate limit for everything this pod sends through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn default_service_account() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

impl Pod {
    /// The pod's SPIFFE ID: the explicit one, or the one derived from its
    /// namespace and service account in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        if self.spiffe_id.is_empty() {
            spiffe_id(trust_domain, &self.namespace, &self.service_account)
        } else {
            self.spiffe_id.clone()
        }
    }
}

/// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// What of a pod's traffic is captured for the proxy (Istio's
/// `traffic.sidecar.istio.io/*` annotations, per pod).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interception {
    /// Inbound TCP ports captured; empty means every port.
    #[serde(default)]
    pub capture_inbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination CIDRs captured; empty means the service CIDRs and every pod CIDR.
    #[serde(default)]
    pub capture_outbound_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
}

/// A service the node's pods can reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Fully qualified host, e.g. "reviews.default.svc.cluster.local".
    pub hostname: String,
    pub namespace: String,
    /// Cluster IPs.
    #[serde(default)]
    pub vips: Vec<String>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// Port name; Istio's name prefixes ("http-", "grpc-", ...) set the protocol when
    /// `protocol` is absent.
    #[serde(default)]
    pub name: String,
    /// Declared protocol (from `appProtocol` or the name prefix); `None` means sniff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Port on the endpoints; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// HTTP route table (entry of `routeTables`) for this port; when absent, all
    /// requests go to the default cluster `outbound|<port>||<hostname>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table: Option<String>,
    /// TCP route table (entry of `tcpRouteTables`) for this port; when absent,
    /// connections go to the default cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_route_table: Option<String>,
}

impl ServicePort {
    /// The protocol this port speaks: the declared one, or the one Istio infers from
    /// the port name prefix, or `None` (sniff).
    pub fn effective_protocol(&self) -> Option<Protocol> {
        self.protocol
            .or_else(|| Protocol::from_port_name(&self.name))
    }
}

/// Istio's protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    #[serde(rename = "GRPC-Web")]
    GrpcWeb,
    Tcp,
    Tls,
    Https,
}

impl Protocol {
    /// Istio's port naming convention: `<protocol>[-<suffix>]`.
    pub fn from_port_name(name: &str) -> Option<Protocol> {
        let prefix = name
            .split('-')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match prefix.as_str() {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            "grpc-web" => Some(Protocol::GrpcWeb),
            "tcp" => Some(Protocol::Tcp),
            "tls" => Some(Protocol::Tls),
            "https" => Some(Protocol::Https),
            _ => None,
        }
    }

    /// Whether the proxy terminates the protocol as HTTP.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    /// Port name → port, when the endpoint's ports differ from `targetPort`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// Node the endpoint runs on.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub locality: Locality,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub health: EndpointHealth,
    /// Pod labels, used to select subsets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service account of the endpoint's pod: the identity it must prove over mTLS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// Whether the endpoint accepts HBONE (mTLS, `CONNECT` to `<address>:15008`):
    /// `true` for a meshed pod of a dpumesh node, an ambient pod or an
    /// HBONE-capable sidecar; `false` for a workload without an Istio proxy.
    /// Unset: derived from `node` (HBONE when it is set and not ours). With
    /// `true`, an empty `node` means "another node, name unknown".
    /// See [`Endpoint::uses_hbone_from`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbone: Option<bool>,
}

impl Endpoint {
    /// Whether a proxy on node `local_node` reaches this endpoint over HBONE
    /// (for an `ISTIO_MUTUAL` cluster, given the endpoint's identity is known):
    /// never on its own node; otherwise `hbone` when set, else whether `node`
    /// names another node.
    pub fn uses_hbone_from(&self, local_node: &str) -> bool {
        hbone_eligible(self.hbone, &self.node, local_node)
    }
}

/// [`Endpoint::uses_hbone_from`] on the fields, for runtimes that copy them.
pub fn hbone_eligible(hbone: Option<bool>, node: &str, local_node: &str) -> bool {
    if !node.is_empty() && node == local_node {
        return false;
    }
    match hbone {
        Some(capable) => capable,
        None => !node.is_empty(),
    }
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EndpointHealth {
    #[default]
    Healthy,
    Unhealthy,
    Draining,
}

/// An upstream cluster: a service port, optionally narrowed to a subset, with
/// its traffic policy (Istio DestinationRule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Istio's cluster name, `outbound|<port>|<subset>|<hostname>`.
    pub name: String,
    /// `hostname` of an entry of `services`.
    pub service: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Endpoint labels the subset selects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb: Option<LocalityLb>,
    /// TCP connect timeout, default 10 s (Istio's default).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: TlsMode,
    /// How TLS is originated for `SIMPLE` and `MUTUAL` (Istio
    /// `DestinationRule.trafficPolicy.tls`); absent = the defaults of
    /// [`TlsOrigination`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_origination: Option<TlsOrigination>,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// Istio's cluster name for a service port and subset.
pub fn cluster_name(port: u16, subset: Option<&str>, hostname: &str) -> String {
    format!("outbound|{port}|{}|{hostname}", subset.unwrap_or(""))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbPolicy {
    #[serde(default)]
    pub kind: LbKind,
    /// For `CONSISTENT_HASH`: what to hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbKind {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HashKey {
    /// Value of this request header.
    Header(String),
    /// Value of this cookie.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLb {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Failover order of regions: `from` region fails over to `to`.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

/// Istio `connectionPool`; 0 means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default)]
    pub max_connections: u32,
    #[serde(default)]
    pub max_pending_requests: u32,
    #[serde(default)]
    pub max_requests: u32,
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// Idle timeout of TCP (and upstream HTTP) connections; 0 = Istio's default 1 h.
    #[serde(default)]
    pub idle_timeout_ms: u64,
}

/// Istio `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (including gateway errors) before ejection; 0 disables.
    #[serde(default)]
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 or connect failures before ejection; 0 disables.
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_time_ms: u64,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_interval_ms() -> u64 {
    10_000
}

fn default_base_ejection_ms() -> u64 {
    30_000
}

fn default_max_ejection_percent() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext to the upstream.
    Disable,
    /// Istio mTLS (HBONE between DPUs) with the workload identity.
    #[default]
    IstioMutual,
    /// TLS originated to the upstream, the server verified (`tlsOrigination`).
    Simple,
    /// As `SIMPLE`, presenting a client certificate (`tlsOrigination.clientCertificate`).
    Mutual,
}

/// TLS origination settings of a `SIMPLE` or `MUTUAL` cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOrigination {
    /// SNI sent; empty = the cluster's service hostname. With `autoSni`, the
    /// fallback for a request without a host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    /// SNI from each request's host, without its port (Envoy's `auto_sni`,
    /// which istiod sets when a DestinationRule names no `sni`); connections
    /// are pooled per SNI. With no `subjectAltNames`, the server certificate
    /// must then be valid for that host (`auto_san_validation`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_sni: bool,
    /// The server certificate must carry one of these DNS/IP SANs; empty = it
    /// must be valid for the SNI (Envoy's `auto_san_validation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Name of the `secrets` entry whose `caCertificates` verify the server;
    /// absent = the DPU's system trust store (Istio's `VERIFY_CERTIFICATE_AT_CLIENT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Name of the `secrets` entry with the client `certificateChain` and
    /// `privateKey` (`MUTUAL` only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Do not verify the server at all (Istio `insecureSkipVerify`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Certificates and a key in PEM, named once and referenced by clusters
/// (an SDS `Secret`: `kubernetes://<credentialName>` and its `-cacert`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    /// Trusted CA certificates (PEM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// Certificate chain to present, leaf first (PEM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_chain: String,
    /// The chain's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
}

impl Secret {
    /// No content: the control plane has not provided this secret (yet).
    /// Clusters that need it fail their handshakes (never plaintext).
    pub fn is_unavailable(&self) -> bool {
        self.ca_certificates.is_empty()
            && self.certificate_chain.is_empty()
            && self.private_key.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    /// The private key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("ca_certificates", &self.ca_certificates.len())
            .field("certificate_chain", &self.certificate_chain.len())
            .field(
                "private_key",
                &(!self.private_key.is_empty()).then_some("<redacted>"),
            )
            .finish()
    }
}

/// An HTTP route table (Envoy RouteConfiguration; Istio VirtualServices of one port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// Authorities this host answers for ("reviews", "reviews:9080", "*.example.com", "*").
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

/// One HTTP route: the first whose match succeeds is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    /// Any one of these matches (OR); an empty list matches everything.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub headers: HeaderOps,
    /// Whole-request timeout; absent = none (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// All conditions of one match must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<KeyMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<KeyMatch>,
}

/// Istio StringMatch: exactly one of exact, prefix, regex (RE2 syntax, full match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A header or query parameter condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyMatch {
    pub name: String,
    /// Absent: the key must be present with any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatch>,
    /// Match when the condition does NOT hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteAction {
    /// Forward to weighted clusters.
    Forward(ForwardAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse(DirectResponse),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardAction {
    pub destinations: Vec<WeightedDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedDestination {
    /// Name of an entry of `clusters`, or the implicit default cluster
    /// `outbound|<port>||<hostname>` of a service port.
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub headers: HeaderOps,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for exact/regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// 301, 302, 303, 307 or 308; default 301.
    #[serde(default = "default_redirect_code")]
    pub code: u16,
}

fn default_redirect_code() -> u16 {
    301
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

/// Header changes (Istio `headers.request` / `headers.response`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self == &HeaderOps::default()
    }
}

/// Istio HTTPRetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio `attempts`).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Conditions: one of [`RETRY_ON_CONDITIONS`] (Istio's: "5xx",
    /// "gateway-error", "connect-failure", "reset", "retriable-status-codes",
    /// "refused-stream", the gRPC ones, ...), or a bare status code ("503").
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Retries may be at most this share of active requests (Envoy retry budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

fn default_retry_on() -> Vec<String> {
    // Istio's default retryOn.
    [
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "503",
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percentage of active requests that may be retries (0..=100).
    pub budget_percent: f64,
    /// Retries always allowed up to this many concurrent ones.
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

fn default_min_retry_concurrency() -> u32 {
    3
}

/// Istio HTTPFaultInjection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay_ms: u64,
    /// Share of requests delayed, 0..=100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    /// Share of requests aborted, 0..=100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, 0..=100; default 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
}

fn default_percent() -> f64 {
    100.0
}

/// Local token-bucket rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval_ms: u64,
}

/// TCP routes of one port (Istio VirtualService `tcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteTable {
    pub name: String,
    pub routes: Vec<TcpRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Source pod labels this route applies to; empty = every source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    pub destinations: Vec<WeightedDestination>,
}

/// Inbound governance of a pod (Istio PeerAuthentication + AuthorizationPolicy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPolicy {
    pub name: String,
    #[serde(default)]
    pub peer_authentication: PeerAuthentication,
    #[serde(default)]
    pub authorization: Vec<AuthorizationPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub mode: MtlsMode,
    /// Per-port overrides (port as a string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_modes: BTreeMap<String, MtlsMode>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    Strict,
    #[default]
    Permissive,
    Disable,
}

/// Istio AuthorizationPolicy (one policy, applied to the pod).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `<namespace>/<name>`, used in metrics and logs.
    pub name: String,
    pub action: AuthzAction,
    /// Any rule matching triggers the action; no rules = matches nothing for
    /// ALLOW/DENY/AUDIT except that an ALLOW policy with no rules denies all (Istio).
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    /// e.g. "request.headers[x-user]", "source.ip", "source.namespace",
    /// "source.principal", "destination.port", "request.auth.principal".
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Errors of reading a NodeConfig document.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid NodeConfig JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not valid NodeConfig YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

impl NodeConfig {
    /// Parses JSON without validating.
    pub fn from_json(bytes: &[u8]) -> Result<NodeConfig, ParseError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Parses YAML without validating.
    ///
    /// Enums are written as single-key maps (`action: {forward: ...}`,
    /// `path: {prefix: /}`), the same shape as in JSON, not as YAML tags
    /// (`!forward`): use this rather than `serde_yaml::from_str`.
    pub fn from_yaml(text: &str) -> Result<NodeConfig, ParseError> {
        Ok(serde_yaml::with::singleton_map_recursive::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )?)
    }

    /// Parses JSON and validates: the one entry point for config from outside.
    pub fn parse_json_validated(bytes: &[u8]) -> Result<NodeConfig, ParseError> {
        let config = NodeConfig::from_json(bytes)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// YAML with enums as single-key maps, like the JSON (see [`NodeConfig::from_yaml`]).
    pub fn to_yaml(&self) -> String {
        let mut out = Vec::new();
        let mut serializer = serde_yaml::Serializer::new(&mut out);
        if serde_yaml::with::singleton_map_recursive::serialize(self, &mut serializer).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod hbone_tests {
    use super::hbone_eligible;

    #[test]
    fn hbone_rule() {
        // Unset: derived from the node (the controller's Kubernetes path).
        assert!(hbone_eligible(None, "node-2", "node-1"));
        assert!(!hbone_eligible(None, "", "node-1"));
        assert!(!hbone_eligible(None, "node-1", "node-1"));
        // Explicit: another node (named or not) per the mark, never our own node.
        assert!(hbone_eligible(Some(true), "", "node-1"));
        assert!(hbone_eligible(Some(true), "node-2", "node-1"));
        assert!(!hbone_eligible(Some(true), "node-1", "node-1"));
        assert!(!hbone_eligible(Some(false), "node-2", "node-1"));
        assert!(!hbone_eligible(Some(false), "", "node-1"));
    }
}

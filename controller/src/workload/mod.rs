//! Istio's workload API — the compact alternative to per-pod Envoy xDS.
//!
//! In `--xds-api workload` mode the adapter opens ONE incremental ADS stream
//! for the whole node, as ztunnel does, and subscribes (wildcard) to
//! `istio.workload.Address` (services and workloads) and
//! `istio.security.Authorization` (L4 policies). [`translate`] turns what it
//! holds, plus the inventory's node and pods, into the NodeConfig:
//! services with their endpoints, and per-pod inbound policies. There are no
//! route tables: L7 is the waypoints' job in this API. Contract and mapping:
//! `docs/adapter.md`, "Workload API".

mod client;
pub mod proto;
pub mod translate;

pub use client::{node, run};

/// Type URL of workload API addresses (workloads and services).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of workload API authorization policies.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// Which xDS API the adapter speaks to istiod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdsApi {
    /// Envoy v3 LDS/RDS/CDS/EDS, one stream per local pod (as its sidecar).
    #[default]
    Envoy,
    /// Istio's workload API (Address + Authorization), one stream per node (as ztunnel).
    Workload,
}

/// The workload-API client's settings.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// istiod's xDS address, e.g. `http://istiod.istio-system.svc:15010`.
    pub xds_addr: String,
    /// dpu-proxy's control address.
    pub proxy_addr: String,
    /// Istio version announced in node metadata.
    pub istio_version: String,
    /// The adapter's own pod (node id `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: String,
}

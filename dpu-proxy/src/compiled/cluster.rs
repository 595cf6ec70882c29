//! Clusters: a service port (optionally a label subset) with its endpoints
//! grouped into locality priority levels, each with its load balancer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dpumesh_api::config::{
    Cluster, EndpointHealth, HashKey, LbKind, Locality, Protocol, Service, TlsMode,
};

use super::state::{now_ms, Carry, ClusterState, OutlierState};
use super::{Errors, Workloads};
use crate::lb::Picker;
use crate::metrics::WorkloadLabels;

/// One endpoint as the data path sees it.
#[derive(Debug)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub weight: u32,
    pub locality: Locality,
    /// Requests in flight to this endpoint (least-request LB).
    active: AtomicU32,
    /// Who the endpoint is (metric labels) and its interned id.
    pub workload: Arc<WorkloadLabels>,
    pub workload_id: u32,
    /// Outlier detection, carried across config swaps.
    pub outlier: Arc<OutlierState>,
    /// Node the endpoint runs on (`Endpoint.node`; empty = unknown).
    pub node: String,
    /// `Endpoint.hbone`: whether it accepts HBONE (unset = derived from `node`).
    pub hbone: Option<bool>,
    /// SPIFFE ID the endpoint must prove over mTLS (from its service account);
    /// `None` when the endpoint has no service account.
    /// Interned at compile time (see [`super::intern`]): no lookup per request.
    pub spiffe_id: Option<&'static str>,
}

impl EndpointRt {
    pub fn new(addr: SocketAddr, weight: u32, locality: Locality) -> EndpointRt {
        EndpointRt {
            addr,
            weight,
            locality,
            active: AtomicU32::new(0),
            workload: Arc::new(WorkloadLabels::unknown()),
            workload_id: u32::MAX,
            outlier: Arc::default(),
            node: String::new(),
            hbone: None,
            spiffe_id: None,
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight; pair with [`EndpointRt::end`] (see [`ActiveRequest`]).
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight to an endpoint (and its cluster), counted until dropped.
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointRt>, Option<Arc<ClusterState>>);

impl ActiveRequest {
    pub fn new(ep: Arc<EndpointRt>, cluster: Option<Arc<ClusterState>>) -> ActiveRequest {
        ep.begin();
        if let Some(c) = &cluster {
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
        ActiveRequest(ep, cluster)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.end();
        if let Some(c) = &self.1 {
            c.requests.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Istio `connectionPool` limits; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_requests_per_connection: u32,
}

/// Istio `outlierDetection`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct OutlierRt {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
}

/// How a try ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// Any response below 500.
    Success,
    /// A 5xx response, connect failure, reset or timeout; `gateway` for
    /// 502/503/504, connect failures and timeouts.
    Error { gateway: bool },
}

/// Endpoints of equal locality preference, with their picker.
#[derive(Debug)]
pub struct PriorityLevel {
    pub endpoints: Vec<Arc<EndpointRt>>,
    picker: Picker,
}

#[derive(Debug)]
pub struct ClusterRt {
    pub name: String,
    pub hostname: String,
    pub port: u16,
    /// The service port's declared protocol (decides HTTP/1.1 vs h2 upstream).
    pub protocol: Option<Protocol>,
    pub lb_kind: LbKind,
    pub hash_key: Option<HashKey>,
    pub connect_timeout: Duration,
    /// TCP idle timeout (Istio `connectionPool.tcp.idleTimeout`, default 1 h).
    pub idle_timeout: Duration,
    pub tls: TlsMode,
    /// TLS origination of a `SIMPLE`/`MUTUAL` cluster (set by the config compiler).
    pub tls_origin: Option<Arc<crate::tls_origination::TlsOrigin>>,
    /// Most preferred first; empty levels are left out.
    pub priorities: Vec<PriorityLevel>,
    /// Index of the service in `NodeConfig.services` (metric pair keys).
    pub service_index: u32,
    pub namespace: String,
    pub limits: PoolLimits,
    pub outlier: Option<OutlierRt>,
    /// Counters carried across config swaps.
    pub state: Arc<ClusterState>,
}

impl ClusterRt {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn compile(
        c: &Cluster,
        svc: &Service,
        svc_index: usize,
        node_locality: &Locality,
        workloads: &mut Workloads,
        carry: &Carry,
        path: &str,
        errs: &mut Errors,
    ) -> Option<ClusterRt> {
        let Some(port) = svc.ports.iter().find(|p| p.port == c.port) else {
            errs.push(
                format!("{path}.port"),
                format!("service {:?} has no port {}", svc.hostname, c.port),
            );
            return None;
        };
        if c.lb_policy.kind == LbKind::ConsistentHash && c.lb_policy.hash_key.is_none() {
            errs.push(
                format!("{path}.lbPolicy.hashKey"),
                "CONSISTENT_HASH needs a hashKey".to_string(),
            );
        }
        let target = port.target_port.unwrap_or(port.port);
        let mut endpoints = Vec::new();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let Ok(ip) = ep.address.parse::<IpAddr>() else {
                errs.push(
                    format!("services[{svc_index}].endpoints[{i}].address"),
                    format!("{:?} is not an IP address", ep.address),
                );
                continue;
            };
            if ep.health != EndpointHealth::Healthy {
                continue;
            }
            if !c
                .subset_labels
                .iter()
                .all(|(k, v)| ep.labels.get(k) == Some(v))
            {
                continue;
            }
            let port = ep.ports.get(&port.name).copied().unwrap_or(target);
            let addr = SocketAddr::new(ip, port);
            let principal = if ep.service_account.is_empty() {
                String::new()
            } else {
                workloads.spiffe(&svc.namespace, &ep.service_account)
            };
            let (workload_id, workload) = workloads.intern(WorkloadLabels::derive(
                None,
                &svc.namespace,
                &principal,
                &ep.labels,
            ));
            let mut rt = EndpointRt::new(addr, ep.weight, ep.locality.clone());
            rt.workload = workload;
            rt.workload_id = workload_id;
            rt.outlier = carry.endpoint(&c.name, addr);
            rt.node = ep.node.clone();
            rt.hbone = ep.hbone;
            rt.spiffe_id = (!principal.is_empty()).then(|| super::intern(&principal));
            endpoints.push(Arc::new(rt));
        }
        let groups = match &c.locality_lb {
            Some(l) if l.enabled => {
                let failover: Vec<&str> = l
                    .failover
                    .iter()
                    .filter(|f| f.from == node_locality.region)
                    .map(|f| f.to.as_str())
                    .collect();
                group_by_locality(endpoints, node_locality, &failover)
            }
            _ => vec![endpoints],
        };
        // Collected through a filter, the list would keep room for four.
        let mut priorities: Vec<PriorityLevel> = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|endpoints| PriorityLevel {
                picker: Picker::build(c.lb_policy.kind, &endpoints),
                endpoints,
            })
            .collect();
        priorities.shrink_to_fit();
        let idle_ms = match c.connection_pool.idle_timeout_ms {
            0 => 3_600_000,
            ms => ms,
        };
        Some(ClusterRt {
            name: c.name.clone(),
            hostname: svc.hostname.clone(),
            port: c.port,
            protocol: port.effective_protocol(),
            lb_kind: c.lb_policy.kind,
            hash_key: c.lb_policy.hash_key.clone(),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(idle_ms),
            tls: c.tls,
            tls_origin: None,
            priorities,
            service_index: svc_index as u32,
            namespace: svc.namespace.clone(),
            limits: PoolLimits {
                max_connections: c.connection_pool.max_connections,
                max_pending_requests: c.connection_pool.max_pending_requests,
                max_requests: c.connection_pool.max_requests,
                max_requests_per_connection: c.connection_pool.max_requests_per_connection,
            },
            outlier: c.outlier_detection.as_ref().and_then(|o| {
                (o.consecutive_5xx_errors > 0 || o.consecutive_gateway_errors > 0).then_some(
                    OutlierRt {
                        consecutive_5xx: o.consecutive_5xx_errors,
                        consecutive_gateway: o.consecutive_gateway_errors,
                        interval_ms: o.interval_ms.max(1),
                        base_ejection_ms: o.base_ejection_time_ms.max(1),
                        max_ejection_percent: o.max_ejection_percent.min(100),
                    },
                )
            }),
            state: carry.cluster(&c.name),
        })
    }

    /// Picks an endpoint: from the most preferred locality level that has one
    /// not ejected by outlier detection. `hash` feeds consistent hashing.
    /// When every endpoint is ejected, the LB's pick in the first level
    /// stands (Envoy's panic mode: better a suspect endpoint than none).
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<EndpointRt>> {
        let first = self.priorities.first()?;
        if self.outlier.is_none() {
            let i = first.picker.pick(&first.endpoints, hash);
            return first.endpoints.get(i);
        }
        let now = now_ms();
        for level in &self.priorities {
            let n = level.endpoints.len();
            let i = level.picker.pick(&level.endpoints, hash);
            // The LB's choice if it is in; else the next endpoint that is.
            if let Some(ep) = (0..n)
                .map(|k| &level.endpoints[(i + k) % n])
                .find(|e| !e.outlier.is_ejected(now))
            {
                return Some(ep);
            }
        }
        let i = first.picker.pick(&first.endpoints, hash);
        first.endpoints.get(i)
    }

    /// Feeds outlier detection with how a try on `ep` ended: consecutive
    /// errors past the threshold eject the endpoint for
    /// `base × ejections` (capped at 300 s or the base), unless one more
    /// ejection would exceed `max_ejection_percent` of the cluster (the
    /// first ejection always happens, as in Envoy).
    pub fn report(&self, ep: &EndpointRt, outcome: TryOutcome) {
        let Some(od) = &self.outlier else {
            return;
        };
        let o = &ep.outlier;
        let (c5, cg) = match outcome {
            TryOutcome::Success => {
                // Load first: a write per request would bounce the cache line.
                if o.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    o.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if o.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                    o.consecutive_gateway.store(0, Ordering::Relaxed);
                }
                return;
            }
            TryOutcome::Error { gateway } => {
                let c5 = o.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let cg = if gateway {
                    o.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    o.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                (c5, cg)
            }
        };
        let tripped = (od.consecutive_5xx > 0 && c5 >= od.consecutive_5xx)
            || (od.consecutive_gateway > 0 && cg >= od.consecutive_gateway);
        let now = now_ms();
        if !tripped || o.is_ejected(now) {
            return;
        }
        let total = self.endpoint_count();
        let ejected = self
            .priorities
            .iter()
            .flat_map(|p| &p.endpoints)
            .filter(|e| e.outlier.is_ejected(now))
            .count();
        // Envoy's rule: eject while (ejected + 1) / total stays within the
        // maximum, and always the first host, whatever the maximum.
        if total == 0
            || (ejected > 0 && (ejected + 1) * 100 > od.max_ejection_percent as usize * total)
        {
            return;
        }
        // Healthy intervals since the last ejection ended pay back ejections.
        let last_until = o.ejected_until.load(Ordering::Relaxed);
        let healthy_intervals = if last_until == 0 {
            0
        } else {
            (now.saturating_sub(last_until) / od.interval_ms) as u32
        };
        let prior = o.ejections.load(Ordering::Relaxed);
        let n = prior.saturating_sub(healthy_intervals) + 1;
        o.ejections.store(n, Ordering::Relaxed);
        let cap = od.base_ejection_ms.max(300_000);
        let time = od.base_ejection_ms.saturating_mul(n as u64).min(cap);
        o.ejected_until.store(now + time, Ordering::Relaxed);
        o.consecutive_5xx.store(0, Ordering::Relaxed);
        o.consecutive_gateway.store(0, Ordering::Relaxed);
        self.state.ejections_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name, endpoint = %ep.addr, ms = time, "outlier ejected");
    }

    pub fn endpoint_count(&self) -> usize {
        self.priorities.iter().map(|p| p.endpoints.len()).sum()
    }
}

/// Istio's locality priorities: same region/zone/subzone, same region/zone,
/// same region, then each failover region in order, then everything else.
fn group_by_locality(
    endpoints: Vec<Arc<EndpointRt>>,
    me: &Locality,
    failover: &[&str],
) -> Vec<Vec<Arc<EndpointRt>>> {
    let mut groups: Vec<Vec<Arc<EndpointRt>>> = vec![Vec::new(); 4 + failover.len()];
    for ep in endpoints {
        let l = &ep.locality;
        let level = if l.region == me.region {
            if l.zone == me.zone {
                if l.subzone == me.subzone {
                    0
                } else {
                    1
                }
            } else {
                2
            }
        } else if let Some(i) = failover.iter().position(|r| *r == l.region) {
            3 + i
        } else {
            3 + failover.len()
        };
        groups[level].push(ep);
    }
    groups
}

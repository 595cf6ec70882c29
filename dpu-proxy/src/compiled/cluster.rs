//! Clusters: a service port (optionally a label subset) with its endpoints
//! grouped into locality priority levels, each with its load balancer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dpumesh_api::config::{
    Cluster, EndpointHealth, HashKey, LbKind, Locality, Protocol, Service, TlsMode,
};

use super::Errors;
use crate::lb::Picker;

/// One endpoint as the data path sees it.
#[derive(Debug)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub weight: u32,
    pub locality: Locality,
    /// Requests in flight to this endpoint (least-request LB).
    active: AtomicU32,
}

impl EndpointRt {
    pub fn new(addr: SocketAddr, weight: u32, locality: Locality) -> EndpointRt {
        EndpointRt {
            addr,
            weight,
            locality,
            active: AtomicU32::new(0),
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

/// A request in flight to an endpoint, counted until dropped.
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointRt>);

impl ActiveRequest {
    pub fn new(ep: Arc<EndpointRt>) -> ActiveRequest {
        ep.begin();
        ActiveRequest(ep)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.end();
    }
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
    /// Most preferred first; empty levels are left out.
    pub priorities: Vec<PriorityLevel>,
}

impl ClusterRt {
    pub(super) fn compile(
        c: &Cluster,
        svc: &Service,
        svc_index: usize,
        node_locality: &Locality,
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
            endpoints.push(Arc::new(EndpointRt::new(
                SocketAddr::new(ip, port),
                ep.weight,
                ep.locality.clone(),
            )));
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
        let priorities = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|endpoints| PriorityLevel {
                picker: Picker::build(c.lb_policy.kind, &endpoints),
                endpoints,
            })
            .collect();
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
            priorities,
        })
    }

    /// Picks an endpoint: from the most preferred locality level that has one.
    /// `hash` feeds consistent hashing.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<EndpointRt>> {
        let level = self.priorities.first()?;
        let i = level.picker.pick(&level.endpoints, hash);
        level.endpoints.get(i)
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

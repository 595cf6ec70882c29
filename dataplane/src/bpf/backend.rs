//! The registry's [`SteeringBackend`] implemented with the eBPF programs.
//! Runs in the DPU netns (where the dataplane process lives), so map and
//! link operations need no namespace switching.
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;

use super::maps::{DropReason, PodCounters, MODE_OVERLAY, MODE_UNDERLAY};
use super::{BpfDataplane, InterceptionSpec, NetworkSpec, PodSpec, UnderlayPeer};
use dpumesh_api::config::NetworkMode;

use crate::registry::{BackendError, NodeNetworkSpec, PodEntry, PodStats, SteeringBackend};

pub struct EbpfBackend {
    dp: Mutex<BpfDataplane>,
    /// The uplink netdev ("p0").
    uplink: String,
}

impl EbpfBackend {
    pub fn new(dp: BpfDataplane, uplink: impl Into<String>) -> EbpfBackend {
        EbpfBackend {
            dp: Mutex::new(dp),
            uplink: uplink.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BpfDataplane> {
        self.dp.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn v4net(n: &IpNet, what: &str) -> Result<ipnet::Ipv4Net, BackendError> {
    match n {
        IpNet::V4(v) => Ok(*v),
        IpNet::V6(_) => Err(BackendError(format!(
            "{what} {n}: IPv6 is not supported by the eBPF backend yet"
        ))),
    }
}

/// The IPv4 and (dual stack) IPv6 CIDR of a pod CIDR pair.
fn dual(
    first: &IpNet,
    second: Option<&IpNet>,
    what: &str,
) -> Result<(ipnet::Ipv4Net, Option<ipnet::Ipv6Net>), BackendError> {
    match (first, second) {
        (IpNet::V4(a), None) => Ok((*a, None)),
        (IpNet::V4(a), Some(IpNet::V6(b))) | (IpNet::V6(b), Some(IpNet::V4(a))) => {
            Ok((*a, Some(*b)))
        }
        _ => Err(BackendError(format!(
            "{what} {first}: the eBPF backend needs an IPv4 pod CIDR (IPv6-only is not supported)"
        ))),
    }
}

fn v4nets(ns: &[IpNet], what: &str) -> Result<Vec<ipnet::Ipv4Net>, BackendError> {
    ns.iter().map(|n| v4net(n, what)).collect()
}

pub fn pod_spec(p: &PodEntry) -> Result<PodSpec, BackendError> {
    let ipv4 = p
        .ips
        .iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| BackendError(format!("pod {}: no IPv4 address", p.uid)))?;
    let mut v6 = p.ips.iter().filter_map(|ip| match ip {
        IpAddr::V6(v) => Some(*v),
        IpAddr::V4(_) => None,
    });
    let ipv6 = v6.next();
    if v6.next().is_some() {
        return Err(BackendError(format!(
            "pod {}: more than one IPv6 address (the eBPF backend takes one IPv4 and one IPv6)",
            p.uid
        )));
    }
    if p.ips.iter().filter(|ip| ip.is_ipv4()).count() > 1 {
        return Err(BackendError(format!(
            "pod {}: more than one IPv4 address (the eBPF backend takes one IPv4 and one IPv6)",
            p.uid
        )));
    }
    let i = &p.interception;
    Ok(PodSpec {
        uid: p.uid.clone(),
        representor: p.representor.clone(),
        vf_index: p.vf_index,
        ipv4,
        ipv6,
        mac: p.mac.0,
        meshed: p.meshed,
        interception: InterceptionSpec {
            capture_inbound_ports: i.capture_inbound_ports.clone(),
            exclude_inbound_ports: i.exclude_inbound_ports.clone(),
            capture_outbound_cidrs: v4nets(&i.capture_outbound_cidrs, "capture_outbound_cidrs")?,
            exclude_outbound_cidrs: v4nets(&i.exclude_outbound_cidrs, "exclude_outbound_cidrs")?,
            exclude_outbound_ports: i.exclude_outbound_ports.clone(),
        },
    })
}

pub fn network_spec(n: &NodeNetworkSpec, uplink: &str) -> Result<NetworkSpec, BackendError> {
    let underlay_ip = match n.underlay_ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => return Err(BackendError("IPv6 underlay is not supported yet".into())),
    };
    let mut peers = Vec::new();
    for p in &n.peers {
        let IpAddr::V4(ip) = p.underlay_ip else {
            return Err(BackendError(format!(
                "peer {}: IPv6 underlay is not supported yet",
                p.name
            )));
        };
        let (pod_cidr, pod_cidr6) =
            dual(&p.pod_cidr, p.pod_cidr_secondary.as_ref(), "peer pod_cidr")?;
        peers.push(UnderlayPeer {
            pod_cidr,
            pod_cidr6,
            underlay_ip: ip,
        });
    }
    let (pod_cidr, pod_cidr6) = dual(
        &n.pod_cidr,
        n.secondary.as_ref().map(|(c, _)| c),
        "pod_cidr",
    )?;
    Ok(NetworkSpec {
        mode: match n.mode {
            NetworkMode::Overlay => MODE_OVERLAY,
            NetworkMode::Underlay => MODE_UNDERLAY,
        },
        pod_cidr,
        pod_cidr6,
        service_cidrs: v4nets(&n.service_cidrs, "service_cidrs")?,
        uplink: uplink.to_string(),
        underlay_ip,
        vni: n.vni,
        peers,
    })
}

impl SteeringBackend for EbpfBackend {
    fn name(&self) -> &str {
        "ebpf"
    }

    fn apply_network(
        &self,
        network: &NodeNetworkSpec,
        pods: &[PodEntry],
    ) -> Result<(), BackendError> {
        let net = network_spec(network, &self.uplink)?;
        let specs = pods.iter().map(pod_spec).collect::<Result<Vec<_>, _>>()?;
        let mut dp = self.lock();
        dp.apply_network(&net)
            .map_err(|e| BackendError(e.to_string()))?;
        // Leftovers of a previous run stay until `reconcile`: pods the
        // control plane has not re-added yet keep forwarding meanwhile.
        for spec in &specs {
            dp.apply_pod(spec)
                .map_err(|e| BackendError(e.to_string()))?;
        }
        Ok(())
    }

    fn reconcile(
        &self,
        _network: Option<&NodeNetworkSpec>,
        pods: &[PodEntry],
    ) -> Result<(), BackendError> {
        let specs = pods.iter().map(pod_spec).collect::<Result<Vec<_>, _>>()?;
        let mut dp = self.lock();
        let before = dp.restored_count();
        dp.reconcile(&specs)
            .map_err(|e| BackendError(e.to_string()))?;
        tracing::info!(
            pods = specs.len(),
            leftovers_removed = before,
            "eBPF maps reconciled"
        );
        Ok(())
    }

    fn pod_stats(&self, uid: &str) -> Option<PodStats> {
        self.lock().pod_counters(uid).ok().flatten().map(stats)
    }

    fn unattributed_stats(&self) -> Option<PodStats> {
        self.lock().unattributed_counters().ok().map(stats)
    }

    fn apply_pod(
        &self,
        _network: &NodeNetworkSpec,
        pod: &PodEntry,
        _previous: Option<&PodEntry>,
    ) -> Result<(), BackendError> {
        let spec = pod_spec(pod)?;
        self.lock()
            .apply_pod(&spec)
            .map_err(|e| BackendError(e.to_string()))
    }

    fn remove_pod(&self, pod: &PodEntry) -> Result<(), BackendError> {
        self.lock()
            .remove_pod(&pod.uid)
            .map(|_| ())
            .map_err(|e| BackendError(e.to_string()))
    }

    fn details(&self) -> Vec<(String, String)> {
        let dp = self.lock();
        vec![
            ("bpf_pods".into(), dp.pod_uids().len().to_string()),
            ("bpf_leftovers".into(), dp.restored_count().to_string()),
        ]
    }
}

fn stats(c: PodCounters) -> PodStats {
    PodStats {
        packets_out: c.packets_out,
        bytes_out: c.bytes_out,
        packets_in: c.packets_in,
        bytes_in: c.bytes_in,
        steered_outbound: c.steered_outbound,
        steered_inbound: c.steered_inbound,
        to_proxy_socket: c.to_proxy_socket,
        bypassed: c.bypassed,
        arp_replies: c.arp_replies,
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), c.drop_count(*r)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MacAddr, PeerSpec};

    fn node(first: &str, second: Option<&str>) -> NodeNetworkSpec {
        let first: IpNet = first.parse().unwrap();
        NodeNetworkSpec {
            node_name: "n1".into(),
            mode: NetworkMode::Underlay,
            pod_cidr: first,
            gateway: "10.244.1.1".parse().unwrap(),
            secondary: second.map(|s| (s.parse().unwrap(), "fd00:10:244:1::1".parse().unwrap())),
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            underlay_ip: "192.0.2.11".parse().unwrap(),
            vni: 4242,
            peers: vec![PeerSpec {
                name: "n2".into(),
                pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                pod_cidr_secondary: Some("10.244.2.0/24".parse().unwrap()),
                underlay_ip: "192.0.2.12".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn dual_stack_networks_take_either_order_and_need_ipv4() {
        let n = network_spec(&node("10.244.1.0/24", Some("fd00:10:244:1::/64")), "p0").unwrap();
        assert_eq!(n.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(n.pod_cidr6.unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(n.gateway6().unwrap().to_string(), "fd00:10:244:1::1");
        // The peer listed its IPv6 CIDR first.
        assert_eq!(n.peers[0].pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(
            n.peers[0].pod_cidr6.unwrap().to_string(),
            "fd00:10:244:2::/64"
        );
        let n = network_spec(&node("fd00:10:244:1::/64", Some("10.244.1.0/24")), "p0").unwrap();
        assert_eq!(n.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(n.pod_cidr6.unwrap().to_string(), "fd00:10:244:1::/64");
        let e = network_spec(&node("fd00:10:244:1::/64", None), "p0").unwrap_err();
        assert!(e.0.contains("IPv6-only is not supported"), "{e}");
    }

    #[test]
    fn a_pod_has_one_ipv4_and_at_most_one_ipv6() {
        let mut p = PodEntry {
            uid: "u".into(),
            name: "p".into(),
            namespace: "ns".into(),
            container_id: String::new(),
            ifname: String::new(),
            vf_index: 0,
            representor: "pf0vf0".into(),
            ips: vec![
                "fd00:10:244:1::5".parse().unwrap(),
                "10.244.1.5".parse().unwrap(),
            ],
            mac: MacAddr([2, 0, 0, 0, 0, 5]),
            meshed: false,
            interception: Default::default(),
        };
        let s = pod_spec(&p).unwrap();
        assert_eq!(s.ipv4.to_string(), "10.244.1.5");
        assert_eq!(s.ipv6.unwrap().to_string(), "fd00:10:244:1::5");
        p.ips.push("fd00:10:244:1::6".parse().unwrap());
        let e = pod_spec(&p).unwrap_err();
        assert!(e.0.contains("more than one IPv6 address"), "{e}");
        p.ips = vec!["fd00:10:244:1::5".parse().unwrap()];
        let e = pod_spec(&p).unwrap_err();
        assert!(e.0.contains("no IPv4 address"), "{e}");
    }
}

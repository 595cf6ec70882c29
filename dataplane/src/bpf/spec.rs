//! What the BPF backend is asked to program, already validated by the
//! registry: typed, no strings to parse.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterceptionSpec {
    /// Empty = every port.
    pub capture_inbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Empty = the node-wide set (service CIDRs and every pod CIDR).
    pub capture_outbound_cidrs: Vec<Ipv4Net>,
    pub exclude_outbound_cidrs: Vec<Ipv4Net>,
    pub exclude_outbound_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Stable key of the pod (its uid).
    pub uid: String,
    /// DPU-side representor netdev, e.g. "pf0vf3".
    pub representor: String,
    pub vf_index: u32,
    pub ipv4: Ipv4Addr,
    pub mac: [u8; 6],
    pub meshed: bool,
    pub interception: InterceptionSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayPeer {
    pub pod_cidr: Ipv4Net,
    pub underlay_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// `maps::MODE_UNDERLAY` or `maps::MODE_OVERLAY` (overlay: not yet forwarded).
    pub mode: u8,
    pub pod_cidr: Ipv4Net,
    pub service_cidrs: Vec<Ipv4Net>,
    /// The uplink netdev, "p0".
    pub uplink: String,
    pub underlay_ip: Ipv4Addr,
    pub vni: u32,
    pub peers: Vec<UnderlayPeer>,
}

impl NetworkSpec {
    /// The pods' gateway: the first host address of the pod CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        let n = u32::from(self.pod_cidr.network());
        Ipv4Addr::from(n.wrapping_add(1))
    }
}

//! What the BPF backend is asked to program, already validated by the
//! registry: typed, no strings to parse.
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

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
    /// Dual-stack pods: the IPv6 address (forwarded, never steered: a meshed
    /// pod's IPv6 TCP that would be captured is refused, `mesh_ipv6`).
    pub ipv6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    pub meshed: bool,
    pub interception: InterceptionSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayPeer {
    pub pod_cidr: Ipv4Net,
    /// The peer's IPv6 pod CIDR (dual-stack), reached over the IPv4 underlay.
    pub pod_cidr6: Option<Ipv6Net>,
    pub underlay_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// `maps::MODE_UNDERLAY` or `maps::MODE_OVERLAY` (overlay: not yet forwarded).
    pub mode: u8,
    pub pod_cidr: Ipv4Net,
    /// Dual-stack: the IPv6 pod CIDR; its first address is the IPv6 gateway.
    pub pod_cidr6: Option<Ipv6Net>,
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

    /// The pods' IPv6 gateway: the first address after the IPv6 pod CIDR's
    /// network address (fd00:10:244:1::/64 -> fd00:10:244:1::1).
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.pod_cidr6
            .map(|c| Ipv6Addr::from(u128::from(c.network()).wrapping_add(1)))
    }
}

/// The IPv6 address the dataplane gives the uplink in underlay mode when the
/// node has IPv6 pods: [`UNDERLAY6_PREFIX`] + the IPv4 underlay address
/// (192.0.2.11 -> fd64:646d:7570::c000:20b). Every DPU derives its own and
/// its peers' the same way, so peers' IPv6 pod CIDRs are routed via an
/// address that neighbour discovery resolves on the fabric.
pub fn underlay6(v4: Ipv4Addr) -> Ipv6Addr {
    let mut o = UNDERLAY6_PREFIX.octets();
    o[12..].copy_from_slice(&v4.octets());
    Ipv6Addr::from(o)
}

/// The /96 of [`underlay6`] (a ULA: "dm" "up").
pub const UNDERLAY6_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd64, 0x646d, 0x7570, 0, 0, 0, 0, 0);
pub const UNDERLAY6_PREFIX_LEN: u8 = 96;

//! Rust mirrors of the map layouts in `ebpf/include/dm_layout.h`.
//!
//! The C header is the one definition; `tests/bpf_layout.rs` compiles it and
//! checks every size and field offset below against it. Addresses and ports
//! in fields named `*_be`/`ipv4`/`*_ports` are network byte order, as the
//! programs compare them against packet bytes directly.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const MAX_PODS: u32 = 4096;
pub const SLOT_UNATTRIBUTED: u32 = MAX_PODS;
pub const COUNTER_SLOTS: u32 = MAX_PODS + 1;
pub const MAX_PORTS: usize = 8;
pub const MAX_CIDRS: u32 = MAX_PODS * 8;
pub const MAX_PEERS: u32 = 1024;

pub const EP_MESHED: u16 = 1 << 0;
pub const EP_CUSTOM_OUT_CIDRS: u16 = 1 << 1;
pub const EP_IN_PORT_LIST: u16 = 1 << 2;
pub const EP_IPV6: u16 = 1 << 3;

pub const MODE_UNSET: u8 = 0;
pub const MODE_UNDERLAY: u8 = 1;
pub const MODE_OVERLAY: u8 = 2;

pub const CIDR_CAPTURE: u32 = 1;
pub const CIDR_EXCLUDE: u32 = 2;

/// Names of the maps, also their pin file names.
pub const MAP_EP_IFINDEX: &str = "dm_ep_ifindex";
pub const MAP_EP_IP: &str = "dm_ep_ip";
pub const MAP_NODE: &str = "dm_node";
pub const MAP_OUT_CIDRS: &str = "dm_out_cidrs";
pub const MAP_COUNTERS: &str = "dm_counters";
pub const MAP_TUNNELS: &str = "dm_tunnels";
pub const MAP_EP_IP6: &str = "dm_ep_ip6";
pub const MAP_TUNNELS6: &str = "dm_tunnels6";
pub const MAP_OUT_CIDRS6: &str = "dm_out_cidrs6";
pub const ALL_MAPS: [&str; 9] = [
    MAP_EP_IFINDEX,
    MAP_EP_IP,
    MAP_EP_IP6,
    MAP_TUNNELS6,
    MAP_NODE,
    MAP_OUT_CIDRS,
    MAP_OUT_CIDRS6,
    MAP_COUNTERS,
    MAP_TUNNELS,
];

/// `struct dm_endpoint`: a local pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ifindex: u32,
    /// Network byte order (the bytes of the address in memory order).
    pub ipv4: u32,
    pub mac: [u8; 6],
    pub flags: u16,
    pub slot: u32,
    pub vf_index: u32,
    pub in_capture_ports: [u16; MAX_PORTS],
    pub in_exclude_ports: [u16; MAX_PORTS],
    pub out_exclude_ports: [u16; MAX_PORTS],
    /// With [`EP_IPV6`]: the pod's IPv6 address (wire order).
    pub ipv6: [u8; 16],
}

/// `struct dm_node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub gateway_ipv4: u32,
    pub pod_cidr_ipv4: u32,
    pub pod_cidr_prefix: u32,
    pub gateway_mac: [u8; 6],
    pub mode: u8,
    pub ready: u8,
    pub uplink_ifindex: u32,
    pub underlay_ipv4: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub steer_mark: u32,
    pub vni: u32,
    pub tunnel_ifindex: u32,
    /// First address of the IPv6 pod CIDR; all zero when the node has none.
    pub gateway_ipv6: [u8; 16],
}

/// `struct dm_cidr_key` (what aya's `lpm_trie::Key<CidrData>` puts on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    pub prefixlen: u32,
    pub scope: u32,
    pub addr: u32,
}

/// The data part of [`CidrKey`], for aya's `LpmTrie`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrData {
    pub scope: u32,
    pub addr: u32,
}

/// `struct dm_cidr_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrValue {
    pub action: u32,
}

/// `struct dm_tunnel_key` (what aya's `lpm_trie::Key<u32>` puts on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelKey {
    pub prefixlen: u32,
    /// Network byte order.
    pub addr: u32,
}

/// `struct dm_ip6_key`: key of `dm_ep_ip6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ip6Key {
    pub addr: [u8; 16],
}

/// `struct dm_tunnel6_key` (what aya's `lpm_trie::Key<[u8; 16]>` puts on
/// the wire): a peer's IPv6 pod CIDR.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel6Key {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

/// `struct dm_tunnel`: where a peer's pod CIDR is reached in overlay mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// HOST byte order (as `bpf_skb_set_tunnel_key` takes it).
    pub remote_ipv4: u32,
    pub vni: u32,
}

/// `enum dm_drop_reason`, in index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    UnknownVf = 0,
    SpoofMac = 1,
    SpoofIp = 2,
    Malformed = 3,
    NotReady = 4,
    NoRoute = 5,
    LocalDst = 6,
    Unsupported = 7,
    NoProxy = 8,
    TtlExceeded = 9,
    MeshIpv6 = 10,
}

pub const DROP_MAX: usize = 11;

impl DropReason {
    pub const ALL: [DropReason; DROP_MAX] = [
        DropReason::UnknownVf,
        DropReason::SpoofMac,
        DropReason::SpoofIp,
        DropReason::Malformed,
        DropReason::NotReady,
        DropReason::NoRoute,
        DropReason::LocalDst,
        DropReason::Unsupported,
        DropReason::NoProxy,
        DropReason::TtlExceeded,
        DropReason::MeshIpv6,
    ];

    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownVf => "unknown_vf",
            DropReason::SpoofMac => "spoof_mac",
            DropReason::SpoofIp => "spoof_ip",
            DropReason::Malformed => "malformed",
            DropReason::NotReady => "not_ready",
            DropReason::NoRoute => "no_route",
            DropReason::LocalDst => "local_dst",
            DropReason::Unsupported => "unsupported",
            DropReason::NoProxy => "no_proxy",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::MeshIpv6 => "mesh_ipv6",
        }
    }
}

/// `struct dm_pod_counters` (one CPU's share; see [`PodCounters::sum`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub steered_outbound: u64,
    pub steered_inbound: u64,
    pub to_proxy_socket: u64,
    pub bypassed: u64,
    pub arp_replies: u64,
    pub drops: [u64; DROP_MAX],
}

impl PodCounters {
    /// Sum of the per-CPU values.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a PodCounters>) -> PodCounters {
        let mut t = PodCounters::default();
        for c in per_cpu {
            t.packets_out += c.packets_out;
            t.bytes_out += c.bytes_out;
            t.packets_in += c.packets_in;
            t.bytes_in += c.bytes_in;
            t.steered_outbound += c.steered_outbound;
            t.steered_inbound += c.steered_inbound;
            t.to_proxy_socket += c.to_proxy_socket;
            t.bypassed += c.bypassed;
            t.arp_replies += c.arp_replies;
            for (a, b) in t.drops.iter_mut().zip(c.drops.iter()) {
                *a += b;
            }
        }
        t
    }

    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

// SAFETY: all of these are #[repr(C)] plain integers/arrays with no padding
// (checked against the C layout by tests/bpf_layout.rs), so every bit pattern
// is a valid value and they can be copied to and from the kernel as bytes.
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for NodeConfig {}
unsafe impl aya::Pod for CidrKey {}
unsafe impl aya::Pod for CidrData {}
unsafe impl aya::Pod for CidrValue {}
unsafe impl aya::Pod for PodCounters {}
unsafe impl aya::Pod for TunnelKey {}
unsafe impl aya::Pod for Tunnel {}
unsafe impl aya::Pod for Ip6Key {}
unsafe impl aya::Pod for Tunnel6Key {}

/// An IPv4 address as the programs store it (network byte order in memory).
pub fn ipv4_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The inverse of [`ipv4_be`].
pub fn ipv4_from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// An IPv6 address as the programs store it (wire order).
pub fn ipv6_bytes(ip: Ipv6Addr) -> [u8; 16] {
    ip.octets()
}

/// A port as the programs store it (network byte order in memory).
pub fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// Fills a fixed port list; `None` when there are more than [`MAX_PORTS`].
pub fn port_list(ports: &[u16]) -> Option<[u16; MAX_PORTS]> {
    if ports.len() > MAX_PORTS {
        return None;
    }
    let mut out = [0u16; MAX_PORTS];
    for (o, p) in out.iter_mut().zip(ports) {
        *o = port_be(*p);
    }
    Some(out)
}

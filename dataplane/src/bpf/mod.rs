//! The eBPF backend of the dataplane: the TC programs in `ebpf/` (built by
//! build.rs, embedded here), their maps, and the code that loads, attaches and
//! programs them. Contract: docs/dataplane.md.
//!
//! Unsafe code in this module is limited to `maps.rs` (`aya::Pod` impls).

pub mod backend;
pub mod cost;
pub mod loader;
pub mod maps;
pub mod netcfg;
mod rtnl;
pub mod spec;

pub use loader::{BpfDataplane, BpfError, PinDir};
pub use spec::{InterceptionSpec, NetworkSpec, PodSpec, UnderlayPeer};

/// The compiled TC object (ebpf/dm_tc.c), aligned for the ELF parser.
pub static DM_TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dm_tc.o"));

/// Program names in the object.
pub const PROG_REP_INGRESS: &str = "dm_rep_ingress";
pub const PROG_REP_EGRESS: &str = "dm_rep_egress";
pub const PROG_UPLINK_INGRESS: &str = "dm_uplink_ingress";
pub const PROG_TUNNEL_INGRESS: &str = "dm_tunnel_ingress";

/// The collect_md ("external") VXLAN device the dataplane creates in its
/// netns for overlay mode, and its UDP port (IANA VXLAN).
pub const TUNNEL_IFNAME: &str = "dm-vxlan";
pub const VXLAN_PORT: u16 = 4789;

/// Locally administered MAC the dataplane answers ARP with for every pod's
/// gateway ("dgw"; outside the simulator's VF MAC range 02:64:6d:..).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x64, 0x67, 0x77, 0x00, 0x01];
/// dpu-proxy's transparent listeners.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
/// skb->mark of packets the programs hand to local sockets, and the policy
/// routing table that delivers them locally (see netcfg.rs).
pub const STEER_MARK: u32 = 0x4d44;
pub const STEER_TABLE: u32 = 0x4d44;
pub const STEER_RULE_PREF: u32 = 100;

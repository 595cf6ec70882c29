//! Names, paths and addresses fixed by the project's conventions (docs/simulator.md).

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Every netns the simulator creates starts with this.
pub const NAME_PREFIX: &str = "dm-";
/// State files and logs: `/run/dpumesh/<c>/`.
pub const RUN_DIR: &str = "/run/dpumesh";
/// bpffs mount for pins (not /sys/fs/bpf: `ip netns exec` remounts /sys).
pub const BPFFS_DIR: &str = "/run/dpumesh/bpf";
/// The host↔DPU management link, in both the host and the DPU netns.
pub const MGMT_IFNAME: &str = "tmfifo_net0";
/// The DPU uplink in the DPU netns.
pub const UPLINK_IFNAME: &str = "p0";
/// The bridge in the fabric netns (the top-of-rack switch).
pub const FABRIC_BRIDGE: &str = "br0";
/// Host end of the management link (BlueField default).
pub const MGMT_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// DPU end of the management link (BlueField default).
pub const MGMT_DPU_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const MGMT_PREFIX_LEN: u8 = 30;
/// The fabric subnet: node i's `p0` is 192.0.2.<10+i>/24.
pub const UPLINK_PREFIX_LEN: u8 = 24;
/// The cluster's service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// `dm-<c>-`: the prefix of every netns of cluster `c`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{NAME_PREFIX}{cluster}-")
}

/// `dm-<c>-n<i>-host`.
pub fn host_netns_name(cluster: &str, node: usize) -> String {
    format!("{NAME_PREFIX}{cluster}-n{node}-host")
}

/// `dm-<c>-n<i>-dpu`.
pub fn dpu_netns_name(cluster: &str, node: usize) -> String {
    format!("{NAME_PREFIX}{cluster}-n{node}-dpu")
}

/// `dm-<c>-fabric`.
pub fn fabric_netns_name(cluster: &str) -> String {
    format!("{NAME_PREFIX}{cluster}-fabric")
}

/// `dm-<c>-pod-`: prefix of the pod namespaces.
pub fn pod_netns_prefix(cluster: &str) -> String {
    format!("{NAME_PREFIX}{cluster}-pod-")
}

/// `dm-<c>-pod-<name>`.
pub fn pod_netns_name(cluster: &str, pod: &str) -> String {
    format!("{}{pod}", pod_netns_prefix(cluster))
}

/// `/run/dpumesh/<c>`.
pub fn state_dir(cluster: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(cluster)
}

/// `/run/dpumesh/<c>/state.json`.
pub fn state_file(cluster: &str) -> PathBuf {
    state_dir(cluster).join("state.json")
}

/// `/run/dpumesh/<c>/logs`.
pub fn log_dir(cluster: &str) -> PathBuf {
    state_dir(cluster).join("logs")
}

/// `/run/dpumesh/bpf/<c>-n<i>`.
pub fn bpf_pin_dir(cluster: &str, node: usize) -> PathBuf {
    PathBuf::from(BPFFS_DIR).join(format!("{cluster}-n{node}"))
}

/// `vf<k>`: the VF end in the host netns.
pub fn vf_ifname(vf: usize) -> String {
    format!("vf{vf}")
}

/// `pf0vf<k>`: the representor in the DPU netns.
pub fn representor_ifname(vf: usize) -> String {
    format!("pf0vf{vf}")
}

/// `dm-<c>-n<i>-vf<k>`: the interface alias set on the VF end. It survives
/// moves between namespaces and renames, so the VF stays identifiable inside a pod.
pub fn vf_alias(cluster: &str, node: usize, vf: usize) -> String {
    format!("{NAME_PREFIX}{cluster}-n{node}-vf{vf}")
}

/// `n<i>`: node i's port on the fabric bridge.
pub fn fabric_port_ifname(node: usize) -> String {
    format!("n{node}")
}

/// 192.0.2.<10+i>: node i's uplink address.
pub fn uplink_addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (10 + node) as u8)
}

/// 10.244.<i>.0/24: node i's pod CIDR.
pub fn pod_cidr(node: usize) -> ipnet::Ipv4Net {
    // Node indices are validated to 1..=16, so the prefix is always valid.
    ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, node as u8, 0), 24)
        .unwrap_or_else(|_| unreachable!("prefix 24 is valid"))
}

/// 10.244.<i>.1: node i's pod gateway (answered by the dataplane).
pub fn pod_gateway(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 1)
}

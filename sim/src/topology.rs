//! The planned topology: nodes, their namespaces, VFs and addresses. Pure data,
//! computed from a [`SimConfig`]; building it is in `up.rs`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::naming::*;
use crate::netns::Netns;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| format!("bad MAC {s:?}"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("bad MAC {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl MacAddr {
    /// VF k of node i: `02:64:6d:<i>:00:<k>` (locally administered, "dm").
    pub fn for_vf(node: usize, vf: usize) -> MacAddr {
        MacAddr([0x02, 0x64, 0x6d, node as u8, 0, vf as u8])
    }

    /// Representor of VF k of node i: `02:64:72:<i>:00:<k>`.
    pub fn for_representor(node: usize, vf: usize) -> MacAddr {
        MacAddr([0x02, 0x64, 0x72, node as u8, 0, vf as u8])
    }
}

/// One VF of a node: a veth pair whose `host_ifname` end starts in the host
/// netns and whose `representor` end stays in the DPU netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vf {
    /// k, from 0.
    pub index: usize,
    /// `vf<k>`: name in the host netns (the CNI may rename it inside the pod).
    pub host_ifname: String,
    /// `pf0vf<k>` in the DPU netns.
    pub representor: String,
    /// MAC of the VF end (what the pod sees).
    pub mac: MacAddr,
    /// MAC of the representor.
    pub representor_mac: MacAddr,
    /// Interface alias of the VF end, `dm-<c>-n<i>-vf<k>`; survives moves and renames.
    pub alias: String,
}

/// One simulated node: a host netns and a DPU netns joined by the management
/// link, the DPU uplink on the fabric, and a VF pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// i, from 1.
    pub index: usize,
    /// `dm-<c>-n<i>-host`: CNI, adapter, pods' runtime side.
    pub host: Netns,
    /// `dm-<c>-n<i>-dpu`: dataplane and dpu-proxy.
    pub dpu: Netns,
    pub vfs: Vec<Vf>,
    /// `tmfifo_net0` in both namespaces.
    pub mgmt_ifname: String,
    /// 192.168.100.1/30 on the host's `tmfifo_net0`.
    pub mgmt_host: Ipv4Net,
    /// 192.168.100.2/30 on the DPU's `tmfifo_net0`.
    pub mgmt_dpu: Ipv4Net,
    /// `p0` in the DPU netns.
    pub uplink_ifname: String,
    /// 192.0.2.<10+i>/24 on `p0`.
    pub uplink: Ipv4Net,
    /// `n<i>`: the peer of `p0` in the fabric netns, a port of `br0`.
    pub fabric_port: String,
    /// 10.244.<i>.0/24.
    pub pod_cidr: Ipv4Net,
    /// 10.244.<i>.1 (answered by the dataplane).
    pub pod_gateway: Ipv4Addr,
    /// `/run/dpumesh/bpf/<c>-n<i>`: where this node's dataplane pins maps.
    pub bpf_pin_dir: PathBuf,
}

fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).unwrap_or_else(|_| unreachable!("prefix lengths are constants <= 32"))
}

impl Node {
    pub(crate) fn plan(cluster: &str, index: usize, vfs: usize) -> Node {
        Node {
            index,
            host: Netns::new(host_netns_name(cluster, index)),
            dpu: Netns::new(dpu_netns_name(cluster, index)),
            vfs: (0..vfs)
                .map(|k| Vf {
                    index: k,
                    host_ifname: vf_ifname(k),
                    representor: representor_ifname(k),
                    mac: MacAddr::for_vf(index, k),
                    representor_mac: MacAddr::for_representor(index, k),
                    alias: vf_alias(cluster, index, k),
                })
                .collect(),
            mgmt_ifname: MGMT_IFNAME.to_string(),
            mgmt_host: net(MGMT_HOST_ADDR, MGMT_PREFIX_LEN),
            mgmt_dpu: net(MGMT_DPU_ADDR, MGMT_PREFIX_LEN),
            uplink_ifname: UPLINK_IFNAME.to_string(),
            uplink: net(uplink_addr(index), UPLINK_PREFIX_LEN),
            fabric_port: fabric_port_ifname(index),
            pod_cidr: pod_cidr(index),
            pod_gateway: pod_gateway(index),
            bpf_pin_dir: bpf_pin_dir(cluster, index),
        }
    }

    /// The namespace of a [`Place`].
    pub fn netns(&self, place: Place) -> &Netns {
        match place {
            Place::Host => &self.host,
            Place::Dpu => &self.dpu,
        }
    }

    /// VF k, if the node has it.
    pub fn vf(&self, index: usize) -> Option<&Vf> {
        self.vfs.get(index)
    }
}

/// Where on a node a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Host,
    Dpu,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::Host => "host",
            Place::Dpu => "dpu",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_plan_follows_conventions() {
        let n = Node::plan("c1", 2, 3);
        assert_eq!(n.host.name(), "dm-c1-n2-host");
        assert_eq!(n.dpu.name(), "dm-c1-n2-dpu");
        assert_eq!(n.vfs.len(), 3);
        assert_eq!(n.vfs[2].host_ifname, "vf2");
        assert_eq!(n.vfs[2].representor, "pf0vf2");
        assert_eq!(n.vfs[2].mac.to_string(), "02:64:6d:02:00:02");
        assert_eq!(n.vfs[2].alias, "dm-c1-n2-vf2");
        assert_eq!(n.mgmt_host.to_string(), "192.168.100.1/30");
        assert_eq!(n.mgmt_dpu.to_string(), "192.168.100.2/30");
        assert_eq!(n.uplink.to_string(), "192.0.2.12/24");
        assert_eq!(n.pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(n.pod_gateway.to_string(), "10.244.2.1");
        assert_eq!(n.bpf_pin_dir, PathBuf::from("/run/dpumesh/bpf/c1-n2"));
    }

    #[test]
    fn mac_roundtrip() {
        let m = MacAddr::for_vf(16, 63);
        assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        assert!("02:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("zz:00:00:00:00:00".parse::<MacAddr>().is_err());
    }
}

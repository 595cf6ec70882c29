//! Netlink, synchronously, in one network namespace.
//!
//! A [`Netlink`] talks to the netns of the thread that created it (the socket
//! stays bound to that netns). [`in_netns`] runs a closure on a fresh OS thread
//! that first `setns()`s into a pod netns: netns switches never happen on a
//! shared runtime thread.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage, LinkVfInfo, VfInfo,
    VfInfoMac, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::spec::{CniError, CniResult};

/// A link as seen in one netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub alias: Option<String>,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// What the PF is told about one VF (SR-IOV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfSettings {
    pub mac: [u8; 6],
    pub vlan: u16,
    pub spoofchk: bool,
    pub trust: bool,
}

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

/// The errno of a netlink NACK, if that is what `e` is.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::netlink(format!("netlink: {what} failed"), e.to_string())
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                info.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            LinkAttribute::IfAlias(s) => info.alias = Some(s.clone()),
            _ => {}
        }
    }
    info
}

impl Netlink {
    /// A netlink connection in the calling thread's netns.
    pub fn new() -> CniResult<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| nl_err("starting runtime", e))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| nl_err("opening socket", e))?;
            tokio::spawn(conn);
            Ok::<_, CniError>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    pub fn links(&self) -> CniResult<Vec<LinkInfo>> {
        self.rt.block_on(async {
            let msgs: Vec<LinkMessage> = self
                .handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_err("listing links", e))?;
            Ok(msgs.iter().map(link_info).collect())
        })
    }

    pub fn link(&self, name: &str) -> CniResult<Option<LinkInfo>> {
        self.rt.block_on(async {
            let r: Result<Vec<LinkMessage>, _> = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_collect()
                .await;
            match r {
                Ok(v) => Ok(v.first().map(link_info)),
                Err(e) if errno(&e) == Some(libc_enodev()) => Ok(None),
                Err(e) => Err(nl_err(format_args!("looking up link {name}"), e)),
            }
        })
    }

    fn set(&self, what: String, msg: LinkMessage) -> CniResult<()> {
        self.rt.block_on(async {
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| nl_err(what, e))
        })
    }

    pub fn set_down(&self, index: u32) -> CniResult<()> {
        self.set(
            format!("setting link {index} down"),
            LinkUnspec::new_with_index(index).down().build(),
        )
    }

    pub fn set_up(&self, index: u32) -> CniResult<()> {
        self.set(
            format!("setting link {index} up"),
            LinkUnspec::new_with_index(index).up().build(),
        )
    }

    pub fn rename(&self, index: u32, name: &str) -> CniResult<()> {
        self.set(
            format!("renaming link {index} to {name}"),
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
        )
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> CniResult<()> {
        self.set(
            format!("setting MTU {mtu} on link {index}"),
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    pub fn set_mac(&self, index: u32, mac: &[u8; 6]) -> CniResult<()> {
        self.set(
            format!("setting MAC {} on link {index}", format_mac(mac)),
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
    }

    pub fn set_alias(&self, index: u32, alias: &str) -> CniResult<()> {
        self.set(
            format!("setting alias {alias} on link {index}"),
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
                .build(),
        )
    }

    /// Moves link `index` into the netns `target` (an open netns file).
    pub fn move_to(&self, index: u32, target: &File) -> CniResult<()> {
        self.set(
            format!("moving link {index} to another netns"),
            LinkUnspec::new_with_index(index)
                .setns_by_fd(target.as_raw_fd())
                .build(),
        )
    }

    /// Sets a VF's MAC, VLAN, spoof check and trust on its PF.
    pub fn set_vf(&self, pf_index: u32, vf: u32, s: &VfSettings) -> CniResult<()> {
        let info = LinkVfInfo(vec![
            VfInfo::Mac(VfInfoMac::new(vf, &s.mac)),
            VfInfo::Vlan(VfInfoVlan::new(vf, u32::from(s.vlan), 0)),
            VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, s.spoofchk)),
            VfInfo::Trust(VfInfoTrust::new(vf, s.trust)),
        ]);
        self.set(
            format!("setting VF {vf} on PF link {pf_index}"),
            LinkUnspec::new_with_index(pf_index)
                .append_extra_attribute(LinkAttribute::VfInfoList(vec![info]))
                .build(),
        )
    }

    /// Creates veth `name` (MAC `mac`) here, with its peer `peer` (MAC
    /// `peer_mac`) created directly in netns `peer_ns`.
    pub fn add_veth(
        &self,
        name: &str,
        mac: &[u8; 6],
        peer: &str,
        peer_mac: &[u8; 6],
        peer_ns: &File,
    ) -> CniResult<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .address(mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.rt.block_on(async {
            self.handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| nl_err(format_args!("creating veth {name}/{peer}"), e))
        })
    }

    pub fn addresses(&self, index: u32) -> CniResult<Vec<IpNet>> {
        self.rt.block_on(async {
            let msgs: Vec<_> = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_err("listing addresses", e))?;
            let mut out = Vec::new();
            for m in msgs {
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        if let Ok(n) = IpNet::new(*ip, m.header.prefix_len) {
                            out.push(n);
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// Adds `addr` to link `index`; an address already there is fine.
    pub fn add_address(&self, index: u32, addr: IpNet) -> CniResult<()> {
        self.rt.block_on(async {
            match self
                .handle
                .address()
                .add(index, addr.addr(), addr.prefix_len())
                .execute()
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc_eexist()) => Ok(()),
                Err(e) => Err(nl_err(format_args!("adding address {addr}"), e)),
            }
        })
    }

    /// Adds a main-table route via link `index`; an identical route is fine.
    pub fn add_route(&self, index: u32, dst: IpNet, gw: Option<IpAddr>) -> CniResult<()> {
        let what = format!(
            "adding route {dst}{}",
            gw.map(|g| format!(" via {g}")).unwrap_or_default()
        );
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| nl_err(&what, e))?
            .output_interface(index);
        if let Some(g) = gw {
            b = b.gateway(g).map_err(|e| nl_err(&what, e))?;
        }
        let msg = b.build();
        self.rt.block_on(async {
            match self.handle.route().add(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc_eexist()) => Ok(()),
                Err(e) => Err(nl_err(&what, e)),
            }
        })
    }

    /// Main-table routes of both families.
    pub fn routes(&self) -> CniResult<Vec<RouteInfo>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            for msg in [
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            ] {
                let msgs: Vec<RouteMessage> = self
                    .handle
                    .route()
                    .get(msg)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(|e| nl_err("listing routes", e))?;
                for m in msgs {
                    if m.header.table != RouteHeader::RT_TABLE_MAIN {
                        continue;
                    }
                    let mut dst = None;
                    let mut gw = None;
                    let mut oif = None;
                    for a in &m.attributes {
                        match a {
                            RouteAttribute::Destination(d) => dst = route_ip(d),
                            RouteAttribute::Gateway(g) => gw = route_ip(g),
                            RouteAttribute::Oif(i) => oif = Some(*i),
                            _ => {}
                        }
                    }
                    let dst = dst.unwrap_or(
                        if m.header.address_family == netlink_packet_route::AddressFamily::Inet6 {
                            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
                        } else {
                            IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
                        },
                    );
                    if let Ok(dst) = IpNet::new(dst, m.header.destination_prefix_length) {
                        out.push(RouteInfo { dst, gw, oif });
                    }
                }
            }
            Ok(out)
        })
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}
fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// Opens a netns file (`/run/netns/x`, `/proc/<pid>/ns/net`). `Ok(None)` when
/// it no longer exists.
pub fn open_netns(path: &Path) -> CniResult<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(
            format!("cannot open netns {}", path.display()),
            e.to_string(),
        )),
    }
}

/// Runs `f` with a [`Netlink`] inside the netns `ns`, on a fresh OS thread.
pub fn in_netns<T, F>(ns: &File, f: F) -> CniResult<T>
where
    F: FnOnce(&Netlink) -> CniResult<T> + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::netlink("cannot enter the pod netns", e.to_string()))?;
            let nl = Netlink::new()?;
            f(&nl)
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("02:64:6d:01:00:0a").unwrap();
        assert_eq!(format_mac(&m), "02:64:6d:01:00:0a");
        assert!(parse_mac("02:64:6d:01:00").is_none());
        assert!(parse_mac("02:64:6d:01:00:0a:01").is_none());
        assert!(parse_mac("zz:64:6d:01:00:0a").is_none());
    }
}

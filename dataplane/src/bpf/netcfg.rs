//! Kernel network state the programs rely on, in the netns the dataplane runs
//! in (the DPU's): forwarding sysctls, the steering policy route, routes to
//! peers' pod CIDRs and per-pod host routes. Node-level setup is done with
//! iproute2 (`ip`), which is on every DPU image; the per-pod parts, which run on
//! every AddPod/RemovePod, over rtnetlink (`rtnl`). Everything we add carries
//! `proto` [`RT_PROTO`] so it can be found and swept without touching anyone
//! else's routes.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use ipnet::{Ipv4Net, Ipv6Net};

use super::rtnl;
use super::{STEER_MARK, STEER_RULE_PREF, STEER_TABLE};

/// Route protocol tag of dpumesh routes (`ip route ... proto 77`).
pub const RT_PROTO: &str = "77";
/// [`RT_PROTO`] as a number, for rtnetlink requests.
const RT_PROTO_NUM: u8 = 77;

#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {detail}")]
pub struct NetCfgError {
    pub args: String,
    pub detail: String,
}

fn ip(args: &[&str]) -> Result<String, NetCfgError> {
    let fail = |detail: String| NetCfgError {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(path: &str, value: &str) -> Result<(), NetCfgError> {
    std::fs::write(format!("/proc/sys/{path}"), value).map_err(|e| NetCfgError {
        args: format!("(sysctl {path}={value})"),
        detail: e.to_string(),
    })
}

/// Forwarding on, reverse-path filter off (pods' sources are checked by the
/// programs against their VF instead), and the steering rule:
/// `ip rule pref 100 fwmark 0x4d44 lookup 19780` +
/// `ip route local 0.0.0.0/0 dev lo table 19780`. Idempotent.
pub fn prepare_node() -> Result<(), NetCfgError> {
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl("net/ipv4/conf/all/rp_filter", "0")?;
    sysctl("net/ipv4/conf/default/rp_filter", "0")?;
    let mark = format!("{STEER_MARK:#x}");
    let table = STEER_TABLE.to_string();
    let pref = STEER_RULE_PREF.to_string();
    let rules = ip(&["-4", "rule", "show", "pref", &pref])?;
    if !rules.contains(&format!("fwmark {mark} lookup {table}")) {
        ip(&[
            "-4", "rule", "add", "pref", &pref, "fwmark", &mark, "lookup", &table,
        ])?;
    }
    ip(&[
        "-4",
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
        "proto",
        RT_PROTO,
    ])?;
    Ok(())
}

/// IPv6 forwarding on (dual-stack nodes): `bpf_fib_lookup` refuses IPv6
/// lookups on a device that does not forward.
pub fn prepare_node_ipv6() -> Result<(), NetCfgError> {
    sysctl("net/ipv6/conf/all/forwarding", "1")
}

/// The uplink's derived IPv6 underlay address (`spec::underlay6`): IPv6 on
/// for the uplink, the address added without DAD (it is unique by
/// construction). `None` removes a derived address it has.
pub fn set_underlay6(uplink: &str, addr: Option<Ipv6Addr>) -> Result<(), NetCfgError> {
    use super::spec::{UNDERLAY6_PREFIX, UNDERLAY6_PREFIX_LEN};
    let prefix = Ipv6Net::new(UNDERLAY6_PREFIX, UNDERLAY6_PREFIX_LEN).map_err(|e| NetCfgError {
        args: "(underlay IPv6 prefix)".into(),
        detail: e.to_string(),
    })?;
    if let Some(a) = addr {
        sysctl(&format!("net/ipv6/conf/{uplink}/disable_ipv6"), "0")?;
        ip(&[
            "-6",
            "addr",
            "replace",
            &format!("{a}/{UNDERLAY6_PREFIX_LEN}"),
            "dev",
            uplink,
            "nodad",
        ])?;
    }
    // Any other derived address (an old underlay IP) goes.
    let Ok(shown) = ip(&["-6", "-o", "addr", "show", "dev", uplink]) else {
        return Ok(());
    };
    for line in shown.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(cidr) = words
            .iter()
            .position(|w| *w == "inet6")
            .and_then(|i| words.get(i + 1))
        else {
            continue;
        };
        let Ok(net) = cidr.parse::<Ipv6Net>() else {
            continue;
        };
        if prefix.contains(&net.addr()) && Some(net.addr()) != addr {
            ip(&["-6", "addr", "del", cidr, "dev", uplink])?;
        }
    }
    Ok(())
}

/// Exactly these IPv6 routes to peers' IPv6 pod CIDRs, `via <next hop> dev
/// <uplink>` (underlay); an empty list removes them all (overlay, or no IPv6).
pub fn sync_peer_routes6(uplink: &str, peers: &[(Ipv6Net, Ipv6Addr)]) -> Result<(), NetCfgError> {
    for (cidr, nh) in peers {
        ip(&[
            "-6",
            "route",
            "replace",
            &cidr.to_string(),
            "via",
            &nh.to_string(),
            "dev",
            uplink,
            "proto",
            RT_PROTO,
        ])?;
    }
    for line in peer_routes6()? {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        if !peers.iter().any(|(c, _)| c.to_string() == dst) {
            ip(&["-6", "route", "del", dst, "proto", RT_PROTO])?;
        }
    }
    Ok(())
}

/// The dpumesh IPv6 peer routes, as `ip -6 route show` prints them. Empty
/// when the kernel has no IPv6.
pub fn peer_routes6() -> Result<Vec<String>, NetCfgError> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(Vec::new());
    }
    let shown = ip(&["-6", "route", "show", "proto", RT_PROTO])?;
    Ok(shown
        .lines()
        .filter(|l| l.contains(" via "))
        .map(|l| l.trim().to_string())
        .collect())
}

/// Makes the dpumesh IPv6 peer routes exactly `routes` (lines of
/// [`peer_routes6`]).
pub fn restore_peer_routes6(routes: &[String]) -> Result<(), NetCfgError> {
    let dst = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let keep: Vec<String> = routes.iter().map(|l| dst(l)).collect();
    for line in peer_routes6()? {
        let d = dst(&line);
        if !keep.contains(&d) {
            ip(&["-6", "route", "del", &d, "proto", RT_PROTO])?;
        }
    }
    for line in routes {
        let mut args = vec!["-6", "route", "replace"];
        args.extend(
            line.split_whitespace()
                .take_while(|w| *w != "metric" && *w != "pref"),
        );
        if !args.contains(&"proto") {
            args.extend(["proto", RT_PROTO]);
        }
        ip(&args)?;
    }
    Ok(())
}

/// Makes the interface up with rp_filter off (representors, uplink).
pub fn prepare_link(ifname: &str) -> Result<(), NetCfgError> {
    ip(&["link", "set", "dev", ifname, "up"])?;
    sysctl(&format!("net/ipv4/conf/{ifname}/rp_filter"), "0")
}

/// A representor: as [`prepare_link`], and no IPv6 on it, so the DPU does
/// not talk to the pod on its own (link-local address, DAD, MLD, router
/// solicitations). Without IPv6 in the kernel there is nothing to turn off.
pub fn prepare_representor(ifname: &str) -> Result<(), NetCfgError> {
    let _ = sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1");
    // Over rtnetlink, not `ip`: this runs on every AddPod.
    let fail = |e: std::io::Error| NetCfgError {
        args: format!("link set dev {ifname} up"),
        detail: e.to_string(),
    };
    let ifx = nix::net::if_::if_nametoindex(ifname)
        .map_err(|e| fail(std::io::Error::from_raw_os_error(e as i32)))?;
    rtnl::link_up(ifx).map_err(fail)
}

/// How peers' pod CIDRs are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRoutes<'a> {
    /// `via <peer underlay IP> dev <uplink>`.
    Underlay { uplink: &'a str },
    /// `encap ip id <vni> dst <peer underlay IP> dev <tunnel>`: a lightweight
    /// tunnel route through the collect_md VXLAN device, for what the DPU
    /// itself sends (dpu-proxy); pods' packets are encapsulated by the programs.
    Overlay { tunnel: &'a str, vni: u32 },
}

/// Exactly these routes to peers' pod CIDRs; stale dpumesh peer routes (of
/// either mode) are removed.
pub fn sync_peer_routes(
    how: PeerRoutes<'_>,
    peers: &[(Ipv4Net, Ipv4Addr)],
) -> Result<(), NetCfgError> {
    for (cidr, peer) in peers {
        let cidr = cidr.to_string();
        let peer = peer.to_string();
        match how {
            PeerRoutes::Underlay { uplink } => ip(&[
                "-4", "route", "replace", &cidr, "via", &peer, "dev", uplink, "proto", RT_PROTO,
            ])?,
            PeerRoutes::Overlay { tunnel, vni } => ip(&[
                "-4",
                "route",
                "replace",
                &cidr,
                "encap",
                "ip",
                "id",
                &vni.to_string(),
                "dst",
                &peer,
                "dev",
                tunnel,
                "proto",
                RT_PROTO,
            ])?,
        };
    }
    let shown = ip(&["-4", "route", "show", "proto", RT_PROTO])?;
    for line in shown.lines() {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        // Pod host routes (/32 on a representor) are managed per pod.
        if line.contains(" via ") || line.contains(" encap ") {
            let keep = peers.iter().any(|(c, _)| c.to_string() == dst);
            if !keep {
                ip(&["-4", "route", "del", dst, "proto", RT_PROTO])?;
            }
        }
    }
    Ok(())
}

/// The dpumesh peer routes (either mode) as `ip -4 route show` prints them,
/// for [`restore_peer_routes`].
pub fn peer_routes() -> Result<Vec<String>, NetCfgError> {
    let shown = ip(&["-4", "route", "show", "proto", RT_PROTO])?;
    Ok(shown
        .lines()
        .filter(|l| l.contains(" via ") || l.contains(" encap "))
        .map(|l| l.trim().to_string())
        .collect())
}

/// Makes the dpumesh peer routes exactly `routes` (lines of [`peer_routes`]):
/// the others are deleted, these are put back with `ip route replace`.
pub fn restore_peer_routes(routes: &[String]) -> Result<(), NetCfgError> {
    let dst = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let keep: Vec<String> = routes.iter().map(|l| dst(l)).collect();
    for line in peer_routes()? {
        let d = dst(&line);
        if !keep.contains(&d) {
            ip(&["-4", "route", "del", &d, "proto", RT_PROTO])?;
        }
    }
    for line in routes {
        let mut args = vec!["-4", "route", "replace"];
        args.extend(line.split_whitespace());
        // `show proto 77` leaves the protocol out of what it prints.
        if !args.contains(&"proto") {
            args.extend(["proto", RT_PROTO]);
        }
        ip(&args)?;
    }
    Ok(())
}

/// Creates the collect_md VXLAN device `name` (UDP `port`) if it is not
/// there, ARP off (the programs and the peer's tunnel program do not need
/// neighbours on it), up, rp_filter off. Its ifindex.
pub fn ensure_tunnel(name: &str, port: u16) -> Result<u32, NetCfgError> {
    if nix::net::if_::if_nametoindex(name).is_err() {
        ip(&[
            "link",
            "add",
            name,
            "type",
            "vxlan",
            "external",
            "dstport",
            &port.to_string(),
        ])?;
    }
    ip(&["link", "set", "dev", name, "arp", "off", "up"])?;
    sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "0")?;
    nix::net::if_::if_nametoindex(name).map_err(|e| NetCfgError {
        args: format!("(ifindex of {name})"),
        detail: e.to_string(),
    })
}

/// Deletes the VXLAN device (underlay mode has none); absent is fine.
pub fn remove_tunnel(name: &str) {
    if nix::net::if_::if_nametoindex(name).is_ok() {
        let _ = ip(&["link", "del", name]);
    }
}

/// Removes dpumesh pod host routes (and their neighbour entries) for any
/// address not in `keep`: leftovers of pods no longer installed.
pub fn sweep_pod_routes(keep: &[Ipv4Addr]) -> Result<(), NetCfgError> {
    let shown = ip(&["-4", "route", "show", "proto", RT_PROTO])?;
    for line in shown.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(addr) = words.first().and_then(|w| w.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        if keep.contains(&addr) || line.contains(" via ") || line.contains(" encap ") {
            continue;
        }
        let dev = words
            .iter()
            .position(|w| *w == "dev")
            .and_then(|i| words.get(i + 1))
            .copied()
            .unwrap_or("");
        remove_pod_route(addr, dev);
    }
    Ok(())
}

/// Route + permanent neighbour for a local pod, so that what the DPU itself
/// sends to the pod (dpu-proxy's connections) leaves through its representor.
/// Over rtnetlink (see `rtnl`): this runs on every AddPod.
pub fn add_pod_route(ip4: Ipv4Addr, representor: &str, mac: [u8; 6]) -> Result<(), NetCfgError> {
    let fail = |what: String, e: std::io::Error| NetCfgError {
        args: what,
        detail: e.to_string(),
    };
    let ifx = nix::net::if_::if_nametoindex(representor).map_err(|e| {
        fail(
            format!("link show {representor}"),
            std::io::Error::from_raw_os_error(e as i32),
        )
    })?;
    rtnl::route_replace(ip4, ifx, RT_PROTO_NUM).map_err(|e| {
        fail(
            format!("-4 route replace {ip4}/32 dev {representor} scope link proto {RT_PROTO}"),
            e,
        )
    })?;
    rtnl::neigh_replace(ip4, mac, ifx).map_err(|e| {
        fail(
            format!("-4 neigh replace {ip4} dev {representor} nud permanent"),
            e,
        )
    })?;
    Ok(())
}

/// Undoes [`add_pod_route`]; missing entries (or a representor already gone,
/// which takes its neighbours with it) are fine.
pub fn remove_pod_route(ip4: Ipv4Addr, representor: &str) {
    let _ = rtnl::route_del(ip4, RT_PROTO_NUM);
    if let Ok(ifx) = nix::net::if_::if_nametoindex(representor) {
        let _ = rtnl::neigh_del(ip4, ifx);
    }
}

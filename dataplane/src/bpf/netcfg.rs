//! Kernel network state the programs rely on, in the netns the dataplane runs
//! in (the DPU's): forwarding sysctls, the steering policy route, routes to
//! peers' pod CIDRs and per-pod host routes. Done with iproute2 (`ip`), which
//! is on every DPU image. Everything we add carries `proto` [`RT_PROTO`] so
//! it can be found and swept without touching anyone else's routes.
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

use super::{STEER_MARK, STEER_RULE_PREF, STEER_TABLE};

/// Route protocol tag of dpumesh routes (`ip route ... proto 77`).
pub const RT_PROTO: &str = "77";

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

/// Makes the interface up with rp_filter off (representors, uplink).
pub fn prepare_link(ifname: &str) -> Result<(), NetCfgError> {
    ip(&["link", "set", "dev", ifname, "up"])?;
    sysctl(&format!("net/ipv4/conf/{ifname}/rp_filter"), "0")
}

/// Underlay: exactly these routes to peers' pod CIDRs via their uplink
/// addresses, out of `uplink`; stale dpumesh routes are removed.
pub fn sync_peer_routes(uplink: &str, peers: &[(Ipv4Net, Ipv4Addr)]) -> Result<(), NetCfgError> {
    for (cidr, via) in peers {
        ip(&[
            "-4",
            "route",
            "replace",
            &cidr.to_string(),
            "via",
            &via.to_string(),
            "dev",
            uplink,
            "proto",
            RT_PROTO,
        ])?;
    }
    let shown = ip(&["-4", "route", "show", "proto", RT_PROTO])?;
    for line in shown.lines() {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        // Pod host routes (/32 on a representor) are managed per pod.
        if line.contains(" via ") {
            let keep = peers.iter().any(|(c, _)| c.to_string() == dst);
            if !keep {
                ip(&["-4", "route", "del", dst, "proto", RT_PROTO])?;
            }
        }
    }
    Ok(())
}

/// Route + permanent neighbour for a local pod, so that what the DPU itself
/// sends to the pod (dpu-proxy's connections) leaves through its representor.
pub fn add_pod_route(ip4: Ipv4Addr, representor: &str, mac: [u8; 6]) -> Result<(), NetCfgError> {
    let dst = format!("{ip4}/32");
    let lladdr = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ip(&[
        "-4",
        "route",
        "replace",
        &dst,
        "dev",
        representor,
        "scope",
        "link",
        "proto",
        RT_PROTO,
    ])?;
    ip(&[
        "-4",
        "neigh",
        "replace",
        &ip4.to_string(),
        "lladdr",
        &lladdr,
        "dev",
        representor,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Undoes [`add_pod_route`]; missing entries are fine.
pub fn remove_pod_route(ip4: Ipv4Addr, representor: &str) {
    let _ = ip(&[
        "-4",
        "route",
        "del",
        &format!("{ip4}/32"),
        "proto",
        RT_PROTO,
    ]);
    let _ = ip(&["-4", "neigh", "del", &ip4.to_string(), "dev", representor]);
}

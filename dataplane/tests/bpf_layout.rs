//! The Rust mirrors in src/bpf/maps.rs must match ebpf/include/dm_layout.h
//! byte for byte: this compiles a C program against the header that prints
//! every size and field offset, and compares them with the Rust side.
use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use dpumesh_dataplane::bpf::maps::{
    CidrKey, CidrValue, DropReason, Endpoint, Ip6Key, NodeConfig, PodCounters, Tunnel, Tunnel6Key,
    TunnelKey, COUNTER_SLOTS, DROP_MAX, EP_CUSTOM_OUT_CIDRS, EP_IN_PORT_LIST, EP_IPV6, EP_MESHED,
    MAX_PEERS, MAX_PODS, MAX_PORTS, SLOT_UNATTRIBUTED,
};

macro_rules! rust_layout {
    ($out:ident, $cname:literal, $ty:ty { $($field:ident),* $(,)? }) => {{
        $out.insert(format!("{}.sizeof", $cname), size_of::<$ty>());
        $(
            $out.insert(format!("{}.{}", $cname, stringify!($field)), offset_of!($ty, $field));
        )*
    }};
}

fn rust_side() -> HashMap<String, usize> {
    let mut m = HashMap::new();
    rust_layout!(
        m,
        "dm_endpoint",
        Endpoint {
            ifindex,
            ipv4,
            mac,
            flags,
            slot,
            vf_index,
            in_capture_ports,
            in_exclude_ports,
            out_exclude_ports,
            ipv6
        }
    );
    rust_layout!(
        m,
        "dm_node_config",
        NodeConfig {
            gateway_ipv4,
            pod_cidr_ipv4,
            pod_cidr_prefix,
            gateway_mac,
            mode,
            ready,
            uplink_ifindex,
            underlay_ipv4,
            outbound_port,
            inbound_port,
            steer_mark,
            vni,
            tunnel_ifindex,
            gateway_ipv6
        }
    );
    rust_layout!(
        m,
        "dm_cidr_key",
        CidrKey {
            prefixlen,
            scope,
            addr
        }
    );
    rust_layout!(m, "dm_cidr_value", CidrValue { action });
    rust_layout!(
        m,
        "dm_pod_counters",
        PodCounters {
            packets_out,
            bytes_out,
            packets_in,
            bytes_in,
            steered_outbound,
            steered_inbound,
            to_proxy_socket,
            bypassed,
            arp_replies,
            drops
        }
    );
    rust_layout!(m, "dm_tunnel_key", TunnelKey { prefixlen, addr });
    rust_layout!(m, "dm_tunnel", Tunnel { remote_ipv4, vni });
    rust_layout!(m, "dm_tunnel6_key", Tunnel6Key { prefixlen, addr });
    rust_layout!(m, "dm_ip6_key", Ip6Key { addr });
    m.insert("const.DM_EP_MESHED".into(), EP_MESHED as usize);
    m.insert(
        "const.DM_EP_CUSTOM_OUT_CIDRS".into(),
        EP_CUSTOM_OUT_CIDRS as usize,
    );
    m.insert("const.DM_EP_IN_PORT_LIST".into(), EP_IN_PORT_LIST as usize);
    m.insert("const.DM_EP_IPV6".into(), EP_IPV6 as usize);
    m.insert("const.DM_MAX_PEERS".into(), MAX_PEERS as usize);
    m.insert("const.DM_MAX_PODS".into(), MAX_PODS as usize);
    m.insert(
        "const.DM_SLOT_UNATTRIBUTED".into(),
        SLOT_UNATTRIBUTED as usize,
    );
    m.insert("const.DM_COUNTER_SLOTS".into(), COUNTER_SLOTS as usize);
    m.insert("const.DM_MAX_PORTS".into(), MAX_PORTS);
    m.insert("const.DM_DROP_MAX".into(), DROP_MAX);
    // Every drop reason: its C enum value is its Rust index, and its metric
    // label is the C name without the prefix (ttl_exceeded = DM_DROP_TTL_EXCEEDED).
    for r in DropReason::ALL {
        m.insert(
            format!("const.DM_DROP_{}", r.as_str().to_uppercase()),
            r as usize,
        );
    }
    m
}

fn c_program(keys: &[&String]) -> String {
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"dm_layout.h\"\nint main(void) {\n",
    );
    for k in keys {
        let (scope, field) = k.split_once('.').expect("key has a dot");
        let expr = if scope == "const" {
            format!("(size_t)({field})")
        } else if field == "sizeof" {
            format!("sizeof(struct {scope})")
        } else {
            format!("offsetof(struct {scope}, {field})")
        };
        src.push_str(&format!("  printf(\"%s %zu\\n\", \"{k}\", {expr});\n"));
    }
    src.push_str("  return 0;\n}\n");
    src
}

#[test]
fn map_layouts_match_the_c_header() {
    let rust = rust_side();
    let mut keys: Vec<&String> = rust.keys().collect();
    keys.sort();

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("layout.c");
    let bin = dir.path().join("layout");
    std::fs::write(&src, c_program(&keys)).expect("write layout.c");
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ebpf/include");
    let arch = std::env::consts::ARCH;
    let out = Command::new("clang")
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .arg("-Wall")
        .arg("-Werror")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("run clang");
    assert!(
        out.status.success(),
        "clang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().expect("run layout program");
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).expect("utf8");

    let mut c = HashMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').expect("key value");
        c.insert(k.to_string(), v.parse::<usize>().expect("number"));
    }
    let mut mismatches = Vec::new();
    for k in keys {
        if c.get(k) != rust.get(k) {
            mismatches.push(format!("{k}: C {:?} vs Rust {:?}", c.get(k), rust.get(k)));
        }
    }
    assert!(
        mismatches.is_empty(),
        "layout drift:\n{}",
        mismatches.join("\n")
    );
    // And nothing was compared vacuously.
    assert!(c.len() > 30, "only {} entries compared", c.len());
}

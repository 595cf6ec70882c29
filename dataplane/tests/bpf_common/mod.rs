//! Shared by the bpf_* tests: packet builders and namespace guards.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use dpumesh_sim::Netns;

/// A bare network namespace of our own (`dm-` prefix), deleted on drop.
pub struct NsGuard(pub Netns);

impl NsGuard {
    pub fn new(tag: &str) -> NsGuard {
        let name = format!("dm-{}-{tag}", dpumesh_sim::unique_cluster("bpft"));
        NsGuard(Netns::create(name).expect("create netns"))
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&proto.to_be_bytes());
    v
}

pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut v = eth([0xff; 6], mac, ETH_P_ARP);
    v.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    v.extend_from_slice(&ETH_P_IP.to_be_bytes());
    v.push(6);
    v.push(4);
    v.extend_from_slice(&1u16.to_be_bytes()); // request
    v.extend_from_slice(&mac);
    v.extend_from_slice(&ip.octets());
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target.octets());
    v.resize(60, 0);
    v
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h
}

pub fn udp(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut v = eth(dst_mac, src_mac, ETH_P_IP);
    let payload = b"hello";
    v.extend(ipv4_header(src, dst, 17, 8 + payload.len()));
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

pub fn tcp_syn(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut v = eth(dst_mac, src_mac, ETH_P_IP);
    v.extend(ipv4_header(src, dst, 6, 20));
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&1000u32.to_be_bytes()); // seq
    v.extend_from_slice(&0u32.to_be_bytes()); // ack
    v.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
    v.extend_from_slice(&64240u16.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    v
}

/// Runs `ip`/`ping`/... inside `ns`; Ok(stdout) or Err(stderr).
pub fn exec(ns: &Netns, program: &str, args: &[&str]) -> Result<String, String> {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} in {ns}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What the CNI will do (until host-cni lands): move VF `vf` of `node` from
/// the host netns into the pod netns as eth0, give it `ip`/24 and a default
/// route via `gateway`.
pub fn cni_attach(
    sim: &dpumesh_sim::Sim,
    node: usize,
    vf: usize,
    pod: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Netns {
    let n = sim.node(node).expect("node");
    let pod_ns = sim.pod_add(pod).expect("pod netns");
    let vf_name = &n.vf(vf).expect("vf").host_ifname;
    exec(
        &n.host,
        "ip",
        &["link", "set", vf_name, "netns", pod_ns.name()],
    )
    .expect("move vf");
    exec(&pod_ns, "ip", &["link", "set", vf_name, "name", "eth0"]).expect("rename");
    exec(
        &pod_ns,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    )
    .expect("addr");
    exec(&pod_ns, "ip", &["link", "set", "eth0", "up"]).expect("up");
    exec(
        &pod_ns,
        "ip",
        &["route", "add", "default", "via", &gateway.to_string()],
    )
    .expect("route");
    pod_ns
}

/// Runs an async block on a current-thread runtime on a thread inside `ns`
/// (sockets it opens live in `ns`).
pub fn block_in<F, Fut, T>(ns: &Netns, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .expect("netns")
}

/// GET `path` from the admin port on 127.0.0.1:15091 inside `ns` (the DPU
/// netns): (status code, body).
pub fn admin_get(ns: &Netns, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let path = path.to_string();
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:15091".parse().expect("addr"),
            std::time::Duration::from_secs(3),
        )
        .expect("connect to the admin port");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: dataplane\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (code, body.to_string())
    })
    .expect("netns")
}

/// The value of the sample `name{...}` whose labels include all of `labels`
/// (0 when there is no such sample). Panics if several samples match.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(x) => x,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            assert!(
                found.is_none(),
                "several samples of {name} match {labels:?}"
            );
            found = Some(value.trim().parse::<u64>().expect("integer sample"));
        }
    }
    found.unwrap_or(0)
}

/// The ones' complement sum of an IPv4 header (20 bytes, no options) in an
/// Ethernet frame: 0xffff when its checksum is right.
pub fn ipv4_header_sum(frame: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in frame[14..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `frame` (Ethernet + IPv4) with its TTL set to `ttl` and the header
/// checksum computed afresh.
pub fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[22] = ttl;
    frame[24..26].copy_from_slice(&[0, 0]);
    let csum = !ipv4_header_sum(&frame);
    frame[24..26].copy_from_slice(&csum.to_be_bytes());
    frame
}

pub const ETH_P_IPV6: u16 = 0x86dd;

/// Ethernet + IPv6 header (hop limit `hops`) + `payload`.
pub fn ipv6_packet(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next: u8,
    hops: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = eth(dst_mac, src_mac, ETH_P_IPV6);
    v.extend_from_slice(&[0x60, 0, 0, 0]);
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.push(next);
    v.push(hops);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(payload);
    v
}

/// A neighbour solicitation from `src` (MAC `mac`) for `target`, to its
/// solicited-node multicast address, with the source link-layer option.
pub fn neighbour_solicitation(
    mac: [u8; 6],
    src: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
) -> Vec<u8> {
    let t = target.octets();
    let dst = std::net::Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    ipv6_packet(
        [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        mac,
        src,
        dst,
        58,
        255,
        &icmp,
    )
}

/// The ones' complement sum of an ICMPv6 message in an Ethernet + IPv6
/// frame, pseudo-header included: 0xffff when its checksum is right.
pub fn icmp6_sum(frame: &[u8]) -> u16 {
    let msg = &frame[54..];
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let hi = c[0];
            let lo = c.get(1).copied().unwrap_or(0);
            sum += u32::from(u16::from_be_bytes([hi, lo]));
        }
    };
    add(&frame[22..54]); // source and destination
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

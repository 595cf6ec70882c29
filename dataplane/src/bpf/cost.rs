//! Per-packet cost of the TC programs, measured in the kernel with
//! `BPF_PROG_TEST_RUN` and a repeat count (the kernel reports the mean time
//! per run). Used by `dpumesh bench dataplane` through
//! `dpumesh-dataplane --prog-cost <repeat>`.
//!
//! Runs in the current netns with private (unpinned) maps: `lo` stands in
//! for the sending pod's representor (test runs use the netns's loopback),
//! `peer_representor` for the receiving pod's.

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::maps::MODE_UNDERLAY;
use super::{BpfDataplane, BpfError, InterceptionSpec, NetworkSpec, PodSpec, PROG_REP_INGRESS};

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct PathCost {
    /// `forward` (pod → local pod, redirected), `steer` (a meshed pod's SYN
    /// to a service: capture decision + listener lookup), `drop` (spoofed
    /// source IP).
    pub path: String,
    pub ns_per_packet: f64,
    /// The program's verdict (TC_ACT_*), to show the path was the one meant.
    pub verdict: u32,
    pub repeat: u32,
}

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x01, 0x00, 0x05];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x01, 0x00, 0x06];

fn frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + l4.len());
    v.extend_from_slice(&super::GATEWAY_MAC);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    v.extend(h);
    v.extend_from_slice(l4);
    v
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = [0u8; 18];
    let mut l4 = Vec::new();
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&9000u16.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&payload);
    frame(src, dst, 17, &l4)
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&40001u16.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&1000u32.to_be_bytes());
    l4.extend_from_slice(&0u32.to_be_bytes());
    l4.extend_from_slice(&[0x50, 0x02]);
    l4.extend_from_slice(&64240u16.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    frame(src, dst, 6, &l4)
}

/// Measures the representor ingress program on three paths, `repeat` runs each.
pub fn program_costs(repeat: u32, peer_representor: &str) -> Result<Vec<PathCost>, BpfError> {
    let mut dp = BpfDataplane::load_detached()?;
    let pod_cidr: Ipv4Net = "10.244.1.0/24"
        .parse()
        .map_err(|_| BpfError::Invalid("pod CIDR".into()))?;
    let services: Ipv4Net = "10.96.0.0/16"
        .parse()
        .map_err(|_| BpfError::Invalid("service CIDR".into()))?;
    dp.apply_network(&NetworkSpec {
        mode: MODE_UNDERLAY,
        pod_cidr,
        pod_cidr6: None,
        service_cidrs: vec![services],
        uplink: "lo".into(),
        underlay_ip: Ipv4Addr::new(192, 0, 2, 11),
        vni: 0,
        peers: vec![],
    })?;
    let pod = |uid: &str, rep: &str, ip, mac, meshed| PodSpec {
        uid: uid.into(),
        representor: rep.into(),
        vf_index: 0,
        ipv4: ip,
        ipv6: None,
        mac,
        meshed,
        interception: InterceptionSpec::default(),
    };
    dp.apply_pod(&pod("bench-b", peer_representor, POD_B, MAC_B, false))?;
    // The forward path rewrites the frame's MACs, and a repeated test run
    // feeds the rewritten buffer back in (it would turn into a spoofed-MAC
    // drop): every path is therefore run `repeat` times with repeat = 1,
    // and the kernel's own per-run times are averaged.
    let mut out = Vec::new();
    let mut measure = |dp: &mut BpfDataplane, path: &str, pkt: Vec<u8>| -> Result<(), BpfError> {
        let prog = dp.program(PROG_REP_INGRESS)?;
        let mut data_out = vec![0u8; pkt.len() + 256];
        let mut total_ns: u128 = 0;
        let mut verdict = 0;
        for _ in 0..repeat.max(1) {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(&pkt),
                data_out: Some(&mut data_out),
                repeat: 1,
                ..TestRunOptions::default()
            })?;
            total_ns += r.duration.as_nanos();
            verdict = r.return_value;
        }
        out.push(PathCost {
            path: path.into(),
            ns_per_packet: total_ns as f64 / f64::from(repeat.max(1)),
            verdict,
            repeat,
        });
        Ok(())
    };
    // A listener on the outbound port, so the steer path finds one (the
    // assignment itself fails under a test run: the verdict is a drop).
    let _listener = std::net::TcpListener::bind(("0.0.0.0", super::OUTBOUND_PORT)).ok();
    dp.apply_pod(&pod("bench-a", "lo", POD_A, MAC_A, false))?;
    measure(&mut dp, "forward", udp(POD_A, POD_B))?;
    dp.apply_pod(&pod("bench-a", "lo", POD_A, MAC_A, true))?;
    measure(
        &mut dp,
        "steer",
        syn(POD_A, Ipv4Addr::new(10, 96, 0, 10), 80),
    )?;
    measure(&mut dp, "drop", udp(Ipv4Addr::new(10, 244, 1, 99), POD_B))?;
    Ok(out)
}

//! `dpumesh bench dataplane`: what the eBPF dataplane costs on the bypass
//! path.
//!
//! 1. Per-packet cost of the representor program, measured in the kernel
//!    with `BPF_PROG_TEST_RUN` (`dpumesh-dataplane --prog-cost`): the
//!    forward (pod → local pod), steer (meshed SYN to a service) and drop
//!    (spoofed source) paths.
//! 2. Pod → pod on one simulated node (two VFs), in one run, alternating:
//!    `dpumesh-ebpf`: the real dataplane binary with its programs on the
//!    representors, pods registered over the control API, not meshed (the
//!    bypass path); `plain-kernel`: the same namespaces, veths and pods with
//!    the programs detached and the DPU netns routing as a plain Linux
//!    router (gateway address on `lo`, the /32 routes and neighbours the
//!    dataplane installed). Throughput with iperf3 (TCP, one stream);
//!    latency as 1-byte TCP ping-pong round trips.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_api::proto::v1::{
    AddPodRequest, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_sim::{unique_cluster, Netns, Node, Place, Sim, SimConfig, SimGuard};
use serde_json::{json, Map, Value};

use super::report::{Case, Machine, Summary};

#[derive(Debug, Args)]
pub struct DataplaneArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run (fit for CI): 1 round, 2 s of iperf3, 300 round trips.
    #[arg(long)]
    pub quick: bool,
}

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const CONTROL_PORT: u16 = 15081;
const IPERF_PORT: u16 = 5201;
const PINGPONG_PORT: u16 = 7000;

fn sibling(program: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dpumesh binary")?;
    let p = exe.with_file_name(program);
    if !p.exists() {
        bail!(
            "{program} not found next to {}: build the workspace first (cargo build --workspace --bins)",
            exe.display()
        );
    }
    Ok(p)
}

fn sh(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    ns.exec(program, args.iter().copied())
        .with_context(|| format!("{program} {} in {}", args.join(" "), ns.name()))
}

/// One round of one case.
#[derive(Debug, Clone, Copy)]
struct Round {
    gbps: f64,
    rtt_ms: Rtts,
}

#[derive(Debug, Clone, Copy)]
struct Rtts {
    p50: f64,
    p90: f64,
    p99: f64,
    per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// iperf3 -c from pod a to pod b for `secs`: Gbit/s received.
fn iperf(a: &Netns, b: &Netns, secs: u32) -> Result<f64> {
    let mut server = b
        .command("iperf3")
        .args(["-s", "-1", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 -s (apt install iperf3)")?;
    let mut out = None;
    // The server needs a moment to listen.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = a
            .command("iperf3")
            .args([
                "-c",
                &POD_B.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ])
            .output()
            .context("iperf3 -c")?;
        if o.status.success() {
            out = Some(o.stdout);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.context("iperf3 client never connected")?;
    let v: Value = serde_json::from_slice(&out).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// `n` 1-byte TCP round trips from pod a to an echo server in pod b.
fn pingpong(a: &Netns, b: &Netns, n: usize) -> Result<Rtts> {
    let listener = b
        .run(|| TcpListener::bind(("0.0.0.0", PINGPONG_PORT)))
        .context("pod b netns")?
        .context("bind the ping-pong server")?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b)? == 0 {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    });
    let to = SocketAddr::from((POD_B, PINGPONG_PORT));
    let mut s = a
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .context("pod a netns")?
        .context("connect to the ping-pong server")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [7u8; 1];
    // Warm-up, not recorded.
    for _ in 0..50 {
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
    }
    let mut rtts = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed().as_secs_f64();
    drop(s);
    let _ = server.join();
    rtts.sort_by(f64::total_cmp);
    Ok(Rtts {
        p50: percentile(&rtts, 50.0),
        p90: percentile(&rtts, 90.0),
        p99: percentile(&rtts, 99.0),
        per_s: n as f64 / total,
    })
}

/// Moves VF `vf` into pod `name` as eth0 with `ip`/24 via the node's gateway.
fn attach_pod(sim: &Sim, node: &Node, vf: usize, name: &str, ip: Ipv4Addr) -> Result<Netns> {
    let pod = sim.pod_add(name)?;
    let v = node.vf(vf).context("VF")?;
    sh(
        &node.host,
        "ip",
        &["link", "set", &v.host_ifname, "netns", pod.name()],
    )?;
    sh(&pod, "ip", &["link", "set", &v.host_ifname, "name", "eth0"])?;
    sh(
        &pod,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    )?;
    sh(&pod, "ip", &["link", "set", "eth0", "up"])?;
    sh(
        &pod,
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            &node.pod_gateway.to_string(),
        ],
    )?;
    Ok(pod)
}

/// Registers the network and both pods (not meshed) with the dataplane,
/// from the host netns as the CNI would.
fn register(node: &Node, mgmt: &str) -> Result<()> {
    let pods: Vec<PodSteering> = [(0usize, "a", POD_A), (1, "b", POD_B)]
        .iter()
        .map(|(vf, name, ip)| {
            let v = node.vf(*vf).context("VF")?;
            Ok(PodSteering {
                pod_uid: format!("bench-{name}"),
                name: (*name).into(),
                namespace: "bench".into(),
                vf_index: *vf as u32,
                ips: vec![ip.to_string()],
                mac: v.mac.to_string(),
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    let network = NodeNetwork {
        node_name: "node1".into(),
        mode: NetworkMode::Underlay.into(),
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        ..Default::default()
    };
    let mgmt = mgmt.to_string();
    node.host
        .run(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut c = loop {
                    match dpumesh_api::client::dataplane(&mgmt).await {
                        Ok(c) => break c,
                        Err(e) if Instant::now() > deadline => {
                            return Err(anyhow::Error::new(e).context("dataplane never listened"))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                c.set_node_network(SetNodeNetworkRequest {
                    network: Some(network),
                })
                .await
                .context("SetNodeNetwork")?;
                for p in pods {
                    c.add_pod(AddPodRequest { pod: Some(p) })
                        .await
                        .context("AddPod")?;
                }
                Ok(())
            })
        })
        .context("host netns")?
}

fn proxy_arp(node: &Node, on: &str) -> Result<()> {
    for rep in ["pf0vf0", "pf0vf1"] {
        sh(
            &node.dpu,
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{rep}.proxy_arp={on}")],
        )?;
    }
    Ok(())
}

/// The DPU as a plain router: no programs, the gateway on lo and proxy ARP
/// on the representors (answered by the kernel), the /32 routes and
/// neighbours the dataplane installed.
fn to_plain(node: &Node, pods: &[&Netns]) -> Result<()> {
    for link in ["pf0vf0", "pf0vf1", node.uplink_ifname.as_str()] {
        let _ = node.dpu.exec("tc", ["qdisc", "del", "dev", link, "clsact"]);
    }
    let gw = format!("{}/32", node.pod_gateway);
    let _ = node.dpu.exec("ip", ["addr", "add", &gw, "dev", "lo"]);
    // Pods have a /24 on eth0 and ARP for each other: answered by proxy
    // ARP, as the dataplane answers it.
    proxy_arp(node, "1")?;
    for p in pods {
        // Their ARP cache holds the dataplane's gateway MAC.
        sh(p, "ip", &["neigh", "flush", "all"])?;
    }
    Ok(())
}

/// Back to the dataplane: gateway off lo, programs attached by a fresh
/// dataplane process re-registering the pods.
fn to_ebpf(
    sim: &Sim,
    node: &Node,
    dataplane: &str,
    mgmt: &str,
    round: usize,
    pods: &[&Netns],
) -> Result<()> {
    let gw = format!("{}/32", node.pod_gateway);
    let _ = node.dpu.exec("ip", ["addr", "del", &gw, "dev", "lo"]);
    proxy_arp(node, "0")?;
    let _ = sim.stop("dataplane-n1");
    sim.spawn(
        1,
        Place::Dpu,
        "dataplane-n1",
        dataplane,
        [
            "--node",
            "node1",
            "--mgmt-addr",
            mgmt,
            "--log-level",
            "warn",
        ],
    )
    .with_context(|| format!("starting the dataplane (round {round})"))?;
    register(node, mgmt)?;
    for p in pods {
        sh(p, "ip", &["neigh", "flush", "all"])?;
    }
    Ok(())
}

fn measure(a: &Netns, b: &Netns, secs: u32, n: usize) -> Result<Round> {
    // Settle ARP first.
    sh(
        a,
        "busybox",
        &["ping", "-c", "1", "-W", "2", &POD_B.to_string()],
    )?;
    let gbps = iperf(a, b, secs)?;
    let rtt_ms = pingpong(a, b, n)?;
    Ok(Round { gbps, rtt_ms })
}

pub fn run(args: DataplaneArgs) -> Result<()> {
    let (rounds, secs, n, repeat) = if args.quick {
        (1, 2, 300, 20_000)
    } else {
        (3, 8, 3000, 200_000)
    };
    let dataplane = sibling("dpumesh-dataplane")?;
    let dataplane = dataplane.display().to_string();
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("bdp"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .context("starting the simulator cluster")?;
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let node = sim.node(1)?.clone();
    let mgmt = format!("{}:{CONTROL_PORT}", node.mgmt_dpu.addr());

    // 1. Program cost, in the DPU netns (pf0vf1 is the receiving representor).
    let out = node
        .dpu
        .command(&dataplane)
        .args([
            "--prog-cost",
            &repeat.to_string(),
            "--prog-cost-peer",
            "pf0vf1",
        ])
        .output()
        .context("dpumesh-dataplane --prog-cost")?;
    if !out.status.success() {
        bail!(
            "dpumesh-dataplane --prog-cost failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let costs: Value = serde_json::from_slice(&out.stdout).context("--prog-cost JSON")?;
    let cost = |path: &str| -> Option<f64> {
        costs.as_array()?.iter().find(|c| c["path"] == path)?["ns_per_packet"].as_f64()
    };

    // 2. Pod → pod, alternating the two cases.
    let pa = attach_pod(&sim, &node, 0, "a", POD_A)?;
    let pb = attach_pod(&sim, &node, 1, "b", POD_B)?;
    let pods = [&pa, &pb];
    let mut ebpf = Vec::new();
    let mut plain = Vec::new();
    for round in 1..=rounds {
        to_ebpf(&sim, &node, &dataplane, &mgmt, round, &pods)?;
        let r = measure(&pa, &pb, secs, n).context("dpumesh-ebpf round")?;
        eprintln!(
            "round {round} dpumesh-ebpf: {:.2} Gbit/s, rtt p50 {:.3} ms",
            r.gbps, r.rtt_ms.p50
        );
        ebpf.push(r);
        to_plain(&node, &pods)?;
        let r = measure(&pa, &pb, secs, n).context("plain-kernel round")?;
        eprintln!(
            "round {round} plain-kernel: {:.2} Gbit/s, rtt p50 {:.3} ms",
            r.gbps, r.rtt_ms.p50
        );
        plain.push(r);
    }
    let _ = sim.stop("dataplane-n1");

    let case = |name: &str, rs: &[Round], extra: Map<String, Value>| -> Case {
        let pick = |f: fn(&Round) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
        let mut extra = extra;
        extra.insert("gbps".into(), json!(pick(|r| r.gbps)));
        extra.insert("rounds".into(), json!(rs.len()));
        extra.insert("round_trips".into(), json!(n));
        extra.insert("iperf_seconds".into(), json!(secs));
        Case {
            name: name.into(),
            protocol: "tcp".into(),
            connections: 1,
            rps: pick(|r| r.rtt_ms.per_s),
            p50_ms: Some(pick(|r| r.rtt_ms.p50)),
            p90_ms: Some(pick(|r| r.rtt_ms.p90)),
            p99_ms: Some(pick(|r| r.rtt_ms.p99)),
            cpu_s_per_req: None,
            rss_mb: None,
            extra,
        }
    };
    let mut e = Map::new();
    e.insert("ns_per_packet".into(), json!(cost("forward")));
    e.insert("ns_per_packet_steer".into(), json!(cost("steer")));
    e.insert("ns_per_packet_drop".into(), json!(cost("drop")));
    e.insert("prog_test_runs".into(), json!(repeat));
    let mut p = Map::new();
    p.insert("ns_per_packet".into(), Value::Null);
    let cases = vec![
        case("dpumesh-ebpf", &ebpf, e),
        case("plain-kernel", &plain, p),
    ];
    let gbps = |c: &Case| c.extra["gbps"].as_f64().unwrap_or(0.0);
    let ratio_tput = gbps(&cases[0]) / gbps(&cases[1]).max(f64::MIN_POSITIVE);
    let ratio_p50 =
        cases[0].p50_ms.unwrap_or(0.0) / cases[1].p50_ms.unwrap_or(1.0).max(f64::MIN_POSITIVE);

    let command = format!(
        "dpumesh bench dataplane{}{}",
        if args.quick { " --quick" } else { "" },
        if args.json { " --json" } else { "" }
    );
    let summary = Summary {
        scenario: "dataplane".into(),
        machine: Machine::this(),
        command,
        cases,
    };
    println!("TC program cost (BPF_PROG_TEST_RUN, {repeat} runs each):");
    for path in ["forward", "steer", "drop"] {
        println!(
            "  {path:<8} {:>8.1} ns/packet",
            cost(path).unwrap_or(f64::NAN)
        );
    }
    println!();
    println!("pod -> pod on one node (median of {rounds} rounds; rps = round trips/s):");
    print!("{}", summary.table());
    for c in &summary.cases {
        println!("  {:<14} {:.2} Gbit/s", c.name, gbps(c));
    }
    println!(
        "dpumesh-ebpf / plain-kernel: throughput {:.1} %, p50 latency {:.1} % (goal: within 10 %)",
        ratio_tput * 100.0,
        ratio_p50 * 100.0
    );
    if args.json {
        println!("{}", summary.json_line());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}

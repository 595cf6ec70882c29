//! `dpumesh demo`: the whole product on the local simulator, step by step
//! (docs/demo.md).
//!
//! 1. a 2-node simulated cluster with DPUs;
//! 2. in each DPU: the dataplane (eBPF) and dpu-proxy, told the node network;
//! 3. the pods, created through the real `dpumesh-cni` (host-local IPAM), as a
//!    container runtime would;
//! 4. in each host: the adapter in local mode, fed with a directory of
//!    inventory + xDS (bookinfo with its policies) holding the real pod IPs;
//! 5. the application (`dpumesh demo-app`) in the pods;
//! 6. traffic from a client pod through the mesh;
//! 7. what happened, from the components' own metrics and the app's answers.

pub mod app;
pub mod bookinfo;
mod http;
mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dpumesh_api::proto::v1::{NodeNetwork, PeerNode, SetNodeNetworkRequest};
use dpumesh_sim::{Netns, Node, Place, Sim, SimConfig, SpawnSpec};
use serde_json::{json, Value};

use crate::bench::procstat;
use bookinfo::{PodInfo, PodPlan};
use metrics::Sample;

/// Port of dpu-proxy's control gRPC on the DPU management address.
const PROXY_CONTROL_PORT: u16 = 15080;
/// Port of the dataplane's control gRPC on the DPU management address.
const DATAPLANE_CONTROL_PORT: u16 = 15081;
/// dpu-proxy's admin HTTP (metrics).
const PROXY_ADMIN_PORT: u16 = 15000;
/// The dataplane's admin HTTP (metrics).
const DATAPLANE_ADMIN_PORT: u16 = 15091;
/// Where the reference CNI plugins (host-local) are installed.
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Time allowed for one request of the traffic step (the details delay and
/// retries included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulator cluster name.
    #[arg(short = 'c', long, env = "DPUMESH_CLUSTER", default_value = "demo")]
    pub cluster: String,
    /// VFs per node.
    #[arg(long, default_value_t = 8)]
    pub vfs: usize,
    /// Requests the client sends to productpage.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Client connections sending them at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Leave the cluster running afterwards (tear down with `dpumesh sim down -c <cluster>`).
    #[arg(long)]
    pub keep: bool,
    /// Also write the observed numbers as JSON to this file (for tests and scripts).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

/// The binaries the demo runs.
struct Bins {
    dpumesh: PathBuf,
    dataplane: PathBuf,
    proxy: PathBuf,
    cni: PathBuf,
    controller: PathBuf,
}

impl Bins {
    /// Everything next to this binary (one cargo target dir), plus host-local.
    fn locate() -> Result<Bins> {
        let exe = std::env::current_exe().context("locating the dpumesh binary")?;
        let dir = exe
            .parent()
            .map(Path::to_path_buf)
            .context("the dpumesh binary has no parent directory")?;
        let find = |program: &str| -> Result<PathBuf> {
            let p = dir.join(program);
            if !p.exists() {
                bail!(
                    "{program} not found next to {}: build the binaries first \
                     (cargo build -p dpumesh-cli -p dpumesh-cni -p dpu-proxy -p dpumesh-dataplane -p dpumesh-controller --bins)",
                    exe.display()
                );
            }
            Ok(p)
        };
        let host_local = Path::new(CNI_PLUGIN_DIR).join("host-local");
        if !host_local.exists() {
            bail!(
                "{} not found: the demo's IPAM is the reference host-local plugin \
                 (Debian/Ubuntu: apt-get install containernetworking-plugins)",
                host_local.display()
            );
        }
        Ok(Bins {
            dataplane: find("dpumesh-dataplane")?,
            proxy: find("dpu-proxy")?,
            cni: find("dpumesh-cni")?,
            controller: find("dpumesh-controller")?,
            dpumesh: exe,
        })
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if !(1..=64).contains(&args.concurrency) {
        bail!("--concurrency {}: must be 1..=64", args.concurrency);
    }
    let bins = Bins::locate()?;
    let config = SimConfig::new(args.cluster.clone())
        .with_nodes(2)
        .with_vfs(args.vfs);
    let on_node1 = bookinfo::plan().iter().filter(|p| p.node == 1).count();
    if args.vfs < on_node1 {
        bail!(
            "--vfs {}: the demo puts {on_node1} pods on node 1",
            args.vfs
        );
    }
    if Sim::attach(&args.cluster).is_ok() {
        bail!(
            "cluster {:?} is already up; tear it down first (dpumesh sim down -c {}) or pick another name with -c",
            args.cluster,
            args.cluster
        );
    }

    step(
        1,
        "bringing up the simulated cluster (2 nodes, each a host and a DPU)",
    );
    let sim = match Sim::up(config) {
        Ok(sim) => sim,
        Err(e) => {
            let _ = dpumesh_sim::down(&args.cluster);
            return Err(e).context("dpumesh sim up");
        }
    };
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let result = run_steps(&sim, &bins, &args);
    if let Err(e) = &result {
        eprintln!("\nthe demo failed: {e:#}");
        show_logs(&sim);
    }
    match (&result, args.keep) {
        (Ok(_), true) => print_explore(&sim),
        _ => {
            println!("\n[9] tearing the cluster down");
            let report = sim.down().context("dpumesh sim down")?;
            println!(
                "  removed {} network namespaces, stopped {} processes",
                report.netns_deleted.len(),
                report.pids_killed.len()
            );
        }
    }
    let summary = result?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_explore(sim: &Sim) {
    let c = sim.cluster();
    let client = sim
        .pod("client")
        .map(|n| n.name().to_string())
        .unwrap_or_default();
    let host1 = sim.nodes()[0].host.name().to_string();
    let mgmt = sim.nodes()[0].mgmt_dpu.addr();
    let dir = sim.state_dir().join("demo");
    println!("\nThe cluster is still running. Explore it:");
    let lines = [
        (
            format!("dpumesh sim status -c {c}"),
            "netns, VFs, pods, processes",
        ),
        (
            format!(
                "ip netns exec {client} curl -s -H 'Host: productpage' http://10.96.12.1:9080/"
            ),
            "a request through the mesh",
        ),
        (
            format!("dpumesh top -c {c} --node 1"),
            "live view of node 1's DPU",
        ),
        (
            format!("ip netns exec {host1} curl -s http://{mgmt}:{PROXY_ADMIN_PORT}/metrics"),
            "node 1's dpu-proxy, from its host",
        ),
        (
            format!("ip netns exec {host1} curl -s http://{mgmt}:{DATAPLANE_ADMIN_PORT}/metrics"),
            "node 1's dataplane",
        ),
        (
            format!("$EDITOR {}/node-1/xds/routes.json", dir.display()),
            "the adapter pushes every change",
        ),
        (format!("dpumesh sim down -c {c}"), "tear it all down"),
    ];
    let width = lines.iter().map(|(cmd, _)| cmd.len()).max().unwrap_or(0);
    for (cmd, what) in lines {
        println!("  {cmd:<width$}  # {what}");
    }
}

/// On failure: the end of every process log, so the reason is on screen.
fn show_logs(sim: &Sim) {
    let Ok(procs) = sim.processes() else { return };
    for p in procs {
        let Ok(text) = std::fs::read_to_string(&p.log) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(8)..];
        if tail.is_empty() {
            continue;
        }
        eprintln!(
            "--- {} ({}, {}) {}",
            p.name,
            if p.is_alive() { "running" } else { "exited" },
            p.netns,
            p.log.display()
        );
        for l in tail {
            eprintln!("    {l}");
        }
    }
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn node_name(node: &Node) -> String {
    format!("node-{}", node.index)
}

fn mgmt(node: &Node, port: u16) -> String {
    format!("{}:{port}", node.mgmt_dpu.addr())
}

/// What the demo started, for the CPU accounting.
#[derive(Default)]
struct Started {
    /// (node, component, pid) in the DPU netns.
    dpu: Vec<(usize, &'static str, u32)>,
    /// (node, pid) of the adapters, in the host netns.
    adapters: Vec<(usize, u32)>,
    /// pids of the application processes.
    apps: Vec<u32>,
    /// CPU seconds of the CNI invocations (and the IPAM plugin they ran).
    cni_cpu_s: f64,
    cni_calls: usize,
}

fn run_steps(sim: &Sim, bins: &Bins, args: &DemoArgs) -> Result<Value> {
    let mut started = Started::default();
    for node in sim.nodes() {
        println!(
            "  node {}: host netns {}, DPU netns {}, {} VFs, pod CIDR {}, uplink {}",
            node.index,
            node.host.name(),
            node.dpu.name(),
            node.vfs.len(),
            node.pod_cidr,
            node.uplink
        );
    }

    step(
        2,
        "starting the DPU side: dataplane (eBPF) and dpu-proxy in each DPU",
    );
    start_dpu_components(sim, bins, &mut started)?;

    step(
        3,
        "creating the pods through dpumesh-cni (CNI ADD, host-local IPAM), as the runtime would",
    );
    let pods = create_pods(sim, bins, &mut started)?;

    step(4, "starting the adapter (local mode) in each host: bookinfo xDS + policies -> NodeConfig -> dpu-proxy");
    start_adapters(sim, bins, &pods, &mut started)?;

    step(5, "starting the application in its pods (dpumesh demo-app)");
    start_apps(sim, bins, &pods, &mut started)?;

    step(
        6,
        &format!(
            "sending {} requests from pod client to productpage (10.96.12.1:9080) through the mesh",
            args.requests
        ),
    );
    let before = cpu_now(&started);
    let t0 = Instant::now();
    let replies = send_traffic(sim, args.requests, args.concurrency)?;
    let elapsed = t0.elapsed();
    let after = cpu_now(&started);
    println!(
        "  {} requests in {:.1} s ({:.0} req/s)",
        replies.len(),
        elapsed.as_secs_f64(),
        replies.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );

    step(
        7,
        "what happened (from dpu-proxy and dataplane metrics, and the app's answers)",
    );
    let scraped = scrape(sim)?;
    let summary = report(
        &pods, &replies, &scraped, &started, &before, &after, elapsed,
    );

    step(8, "cluster state");
    let status = sim.status().context("dpumesh sim status")?;
    let dead: Vec<_> = status.processes.iter().filter(|p| !p.alive).collect();
    println!(
        "  {} processes running, {} pods, {} nodes",
        status.processes.iter().filter(|p| p.alive).count(),
        status.pods.len(),
        status.nodes.len()
    );
    if !dead.is_empty() {
        bail!(
            "processes died during the demo: {}",
            dead.iter()
                .map(|p| format!("{} (log {})", p.name, p.log))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------
// Step 2: DPU components

fn start_dpu_components(sim: &Sim, bins: &Bins, started: &mut Started) -> Result<()> {
    for node in sim.nodes() {
        for (name, program, port) in [
            ("dataplane", &bins.dataplane, DATAPLANE_CONTROL_PORT),
            ("dpu-proxy", &bins.proxy, PROXY_CONTROL_PORT),
        ] {
            let mut spec = SpawnSpec::new(
                format!("{name}-n{}", node.index),
                node.netns(Place::Dpu).clone(),
                program.display().to_string(),
            )
            .args([
                "--node".to_string(),
                node_name(node),
                "--mgmt-addr".to_string(),
                mgmt(node, port),
            ])
            .health(mgmt(node, port));
            if name == "dpu-proxy" {
                // One built-in CA root for the cluster's nodes (so their HBONE
                // peers trust each other), kept in the cluster's state dir:
                // `sim down` removes it with the rest.
                let root = sim.state_dir().join("ca-root.pem");
                spec = spec.args(["--ca-root-file".to_string(), root.display().to_string()]);
            }
            spec.node = Some(node.index);
            spec.place = Some(Place::Dpu);
            let record = sim
                .spawn_with(spec)
                .with_context(|| format!("starting {name} on node {}", node.index))?;
            started.dpu.push((node.index, name, record.pid));
        }
    }
    for node in sim.nodes() {
        let network = node_network(sim, node);
        let dp = mgmt(node, DATAPLANE_CONTROL_PORT);
        in_netns(&node.host, move || async move {
            wait_status(&dp, false).await?;
            let mut client = dpumesh_api::client::dataplane(&dp).await?;
            client
                .set_node_network(SetNodeNetworkRequest {
                    network: Some(network),
                })
                .await
                .context("SetNodeNetwork")?;
            anyhow::Ok(())
        })?;
        for port in [DATAPLANE_CONTROL_PORT, PROXY_CONTROL_PORT] {
            let addr = mgmt(node, port);
            // The proxy is ready only once it has a config (step 4).
            let need_ready = port == DATAPLANE_CONTROL_PORT;
            let s = in_netns(&node.host, move || async move {
                wait_status(&addr, need_ready).await
            })?;
            println!(
                "  node {}: {:<10} pid {:<7} ready={:<5} on {} (reached from the host over the management link){}",
                node.index,
                s.component,
                started
                    .dpu
                    .iter()
                    .find(|(n, c, _)| *n == node.index && *c == s.component.as_str())
                    .map(|(_, _, p)| p.to_string())
                    .unwrap_or_default(),
                s.ready,
                mgmt(node, port),
                if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.reason)
                }
            );
        }
    }
    Ok(())
}

fn node_network(sim: &Sim, node: &Node) -> NodeNetwork {
    NodeNetwork {
        node_name: node_name(node),
        mode: dpumesh_api::proto::v1::NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".to_string()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        gateway_ip: node.pod_gateway.to_string(),
        peers: sim
            .nodes()
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| PeerNode {
                name: node_name(n),
                pod_cidr: n.pod_cidr.to_string(),
                underlay_ip: n.uplink.addr().to_string(),
            })
            .collect(),
    }
}

/// Runs an async client inside `ns`, on this thread with its own runtime.
fn in_netns<F, Fut, T>(ns: &Netns, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send,
{
    ns.run(move || http::runtime()?.block_on(f()))
        .with_context(|| format!("entering netns {ns}"))?
}

/// Polls a component's Status until it answers (and, with `ready`, says ready).
async fn wait_status(addr: &str, ready: bool) -> Result<dpumesh_api::proto::v1::ComponentStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match dpumesh_api::client::status(addr).await {
            Ok(s) if s.ready || !ready => return Ok(s),
            Ok(s) if Instant::now() > deadline => {
                bail!("{} at {addr} is not ready: {}", s.component, s.reason)
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("no answer from {addr}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Step 3: pods through the CNI

/// CPU seconds of this process's waited-for children so far (`cutime + cstime`).
fn children_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
    let ticks: u64 = [13, 14]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn cni_conf(sim: &Sim, node: &Node) -> Value {
    let dir = sim.state_dir().join("cni").join(node_name(node));
    json!({
        "cniVersion": "1.1.0",
        "name": "dpumesh",
        "type": "dpumesh-cni",
        "vfBackend": "sim",
        "dataplane": mgmt(node, DATAPLANE_CONTROL_PORT),
        "stateDir": dir.join("state"),
        "meshed": true,
        "ipam": {
            "type": "host-local",
            "dataDir": dir.join("ipam"),
            "ranges": [[{"subnet": node.pod_cidr.to_string(), "gateway": node.pod_gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

fn create_pods(sim: &Sim, bins: &Bins, started: &mut Started) -> Result<Vec<PodInfo>> {
    let cpu_before = children_cpu_s();
    let mut pods = Vec::new();
    println!(
        "  {:<14} {:<7} {:<12} {:<5} {:<18} {:>7}",
        "pod", "node", "IP", "VF", "MAC", "CNI ms"
    );
    for plan in bookinfo::plan() {
        let node = sim
            .node(plan.node)
            .with_context(|| format!("node {} of pod {}", plan.node, plan.name))?;
        let netns = sim
            .pod_add(plan.name)
            .with_context(|| format!("creating the netns of pod {}", plan.name))?;
        let t0 = Instant::now();
        let result = cni_add(bins, sim, node, &netns, &plan)?;
        started.cni_calls += 1;
        let pod = pod_from_result(node, plan, &result)?;
        println!(
            "  {:<14} {:<7} {:<12} {:<5} {:<18} {:>7.1}",
            pod.plan.name,
            node_name(node),
            pod.ip,
            format!("vf{}", pod.vf_index),
            pod.mac,
            t0.elapsed().as_secs_f64() * 1000.0
        );
        pods.push(pod);
    }
    started.cni_cpu_s = children_cpu_s() - cpu_before;
    // The dataplane registered every pod the CNI added.
    for node in sim.nodes() {
        let addr: SocketAddr = mgmt(node, DATAPLANE_ADMIN_PORT).parse()?;
        let body = in_netns(&node.host, move || async move {
            http::get(addr, "dataplane", "/pods", Duration::from_secs(5)).await
        })?;
        let v: Value = serde_json::from_str(&body.body).context("dataplane /pods is not JSON")?;
        let n = v["pods"].as_array().map(Vec::len).unwrap_or(0);
        let want = pods.iter().filter(|p| p.plan.node == node.index).count();
        if n != want {
            bail!(
                "node {}'s dataplane lists {n} pods, the CNI added {want}: {}",
                node.index,
                body.body
            );
        }
        println!(
            "  node {}: the dataplane has {n} pods registered by the CNI",
            node.index
        );
    }
    Ok(pods)
}

/// Execs `dpumesh-cni` with CNI_COMMAND=ADD in the node's host netns; its Result.
fn cni_add(bins: &Bins, sim: &Sim, node: &Node, netns: &Netns, plan: &PodPlan) -> Result<Value> {
    let conf = cni_conf(sim, node);
    let mut cmd = node.host.command(&bins.cni);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("demo-{}", plan.name))
        .env("CNI_NETNS", netns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID=demo-{}",
                bookinfo::NAMESPACE,
                plan.name,
                plan.name
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", bins.cni.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .context("writing the network config to dpumesh-cni")?;
    }
    let out = child
        .wait_with_output()
        .context("waiting for dpumesh-cni")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dpumesh-cni ADD for pod {} failed ({}): {}{}",
            plan.name,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_str(&stdout).with_context(|| {
        format!(
            "dpumesh-cni ADD for pod {}: result is not JSON: {stdout}",
            plan.name
        )
    })
}

/// The pod's IP and VF from the CNI Result (the VF is the one with the
/// interface's MAC).
fn pod_from_result(node: &Node, plan: PodPlan, result: &Value) -> Result<PodInfo> {
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|i| i["address"].as_str()))
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .with_context(|| format!("CNI result for {} has no IPv4 address: {result}", plan.name))?;
    let mac = result["interfaces"]
        .as_array()
        .and_then(|ifs| {
            ifs.iter()
                .find(|i| i["name"] == "eth0" && i.get("sandbox").is_some())
        })
        .and_then(|i| i["mac"].as_str())
        .with_context(|| {
            format!(
                "CNI result for {} has no eth0 interface: {result}",
                plan.name
            )
        })?
        .to_string();
    let vf = node
        .vfs
        .iter()
        .find(|v| v.mac.to_string().eq_ignore_ascii_case(&mac))
        .with_context(|| format!("no VF of node {} has MAC {mac}", node.index))?;
    Ok(PodInfo {
        uid: format!("demo-{}", plan.name),
        ip,
        mac,
        vf_index: vf.index,
        representor: vf.representor.clone(),
        plan,
    })
}

// ---------------------------------------------------------------------------
// Step 4: adapters

fn start_adapters(sim: &Sim, bins: &Bins, pods: &[PodInfo], started: &mut Started) -> Result<()> {
    println!(
        "  policies: reviews split {}; details fault: abort {}% (503), delay {}% ({} ms);",
        bookinfo::REVIEWS_SPLIT
            .iter()
            .map(|(v, w)| format!("{v} {w}%"))
            .collect::<Vec<_>>()
            .join(" / "),
        bookinfo::DETAILS_ABORT_PCT,
        bookinfo::DETAILS_DELAY_PCT,
        bookinfo::DETAILS_DELAY_MS
    );
    println!(
        "            ratings: {} retries on 5xx, outlier detection ({} consecutive 5xx -> ejected {} s); ratings-v1-b fails every request",
        bookinfo::RATINGS_RETRIES,
        bookinfo::OUTLIER_CONSECUTIVE_5XX,
        bookinfo::OUTLIER_EJECTION_S
    );
    for node in sim.nodes() {
        let dir = sim.state_dir().join("demo").join(node_name(node));
        let local: Vec<&PodInfo> = pods.iter().filter(|p| p.plan.node == node.index).collect();
        bookinfo::write_local_dir(
            &dir,
            bookinfo::node_yaml(
                &node_name(node),
                &node.pod_cidr.to_string(),
                &mgmt(node, PROXY_CONTROL_PORT),
            ),
            &local,
            pods,
        )?;
        let mut spec = SpawnSpec::new(
            format!("adapter-n{}", node.index),
            node.netns(Place::Host).clone(),
            bins.controller.display().to_string(),
        )
        .args([
            "adapter".to_string(),
            "--local-dir".into(),
            dir.display().to_string(),
            "--node".into(),
            node_name(node),
            "--proxy-addr".into(),
            mgmt(node, PROXY_CONTROL_PORT),
        ]);
        spec.node = Some(node.index);
        spec.place = Some(Place::Host);
        let rec = sim
            .spawn_with(spec)
            .with_context(|| format!("starting the adapter on node {}", node.index))?;
        started.adapters.push((node.index, rec.pid));
        println!(
            "  node {}: adapter pid {} watching {}",
            node.index,
            rec.pid,
            dir.display()
        );
    }
    for node in sim.nodes() {
        let addr = mgmt(node, PROXY_CONTROL_PORT);
        let rec = started
            .adapters
            .iter()
            .find(|(n, _)| *n == node.index)
            .map(|(_, p)| *p);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let a = addr.clone();
            let s = in_netns(&node.host, move || async move {
                dpumesh_api::client::status(&a)
                    .await
                    .map_err(anyhow::Error::from)
            });
            match s {
                Ok(s) if s.config_version > 0 => break s,
                _ if Instant::now() > deadline => bail!(
                    "node {}'s dpu-proxy got no config from the adapter within 30 s",
                    node.index
                ),
                _ => {}
            }
            if let Some(pid) = rec {
                if procstat::sample(pid).is_none() {
                    bail!("the adapter of node {} exited", node.index);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let dump = admin_get(node, PROXY_ADMIN_PORT, "/config_dump")?;
        let v: Value = serde_json::from_str(&dump).context("/config_dump is not JSON")?;
        let count = |k: &str| v["config"][k].as_array().map(Vec::len).unwrap_or(0);
        println!(
            "  node {}: dpu-proxy serves config version {} from the adapter: {} pods, {} services, {} clusters, {} route tables",
            node.index,
            status.config_version,
            count("pods"),
            count("services"),
            count("clusters"),
            count("routeTables")
        );
    }
    Ok(())
}

/// `GET path` on a DPU component's admin port, from the node's host over the
/// management link.
fn admin_get(node: &Node, port: u16, path: &str) -> Result<String> {
    let addr: SocketAddr = mgmt(node, port).parse()?;
    let p = path.to_string();
    let reply = in_netns(&node.host, move || async move {
        http::get(addr, "admin", &p, Duration::from_secs(5)).await
    })?;
    if !reply.status.is_success() {
        bail!(
            "http://{addr}{path} answered {}: {}",
            reply.status,
            reply.body
        );
    }
    Ok(reply.body)
}

// ---------------------------------------------------------------------------
// Step 5: the application

fn start_apps(sim: &Sim, bins: &Bins, pods: &[PodInfo], started: &mut Started) -> Result<()> {
    let vip = |s: &str| {
        bookinfo::vip(s)
            .map(|a| a.to_string())
            .ok_or_else(|| anyhow!("no service {s}"))
    };
    for pod in pods {
        let Some(role) = pod.plan.role else { continue };
        let mut args = vec![
            "demo-app".to_string(),
            "--role".into(),
            format!("{role:?}").to_lowercase(),
            "--version".into(),
            pod.plan.version.into(),
            "--pod".into(),
            pod.plan.name.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", bookinfo::PORT),
            "--fail-rate".into(),
            pod.plan.fail_rate.to_string(),
        ];
        match role {
            app::Role::Productpage => {
                args.extend(["--details".into(), vip("details")?]);
                args.extend(["--reviews".into(), vip("reviews")?]);
            }
            app::Role::Reviews => args.extend(["--ratings".into(), vip("ratings")?]),
            _ => {}
        }
        let netns = sim.pod(pod.plan.name)?;
        let mut spec = SpawnSpec::new(
            format!("app-{}", pod.plan.name),
            netns.clone(),
            bins.dpumesh.display().to_string(),
        )
        .args(args)
        .health(format!("{}:{}", pod.ip, bookinfo::PORT));
        spec.node = Some(pod.plan.node);
        let rec = sim
            .spawn_with(spec)
            .with_context(|| format!("starting the app of pod {}", pod.plan.name))?;
        started.apps.push(rec.pid);
        let addr = SocketAddr::from((pod.ip, bookinfo::PORT));
        let up = netns.run(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })?;
        if !up {
            bail!(
                "the app of pod {} does not listen on {addr} (log {})",
                pod.plan.name,
                rec.log.display()
            );
        }
        println!(
            "  {:<14} {:<12} {:<7} {} pid {}{}",
            pod.plan.name,
            format!("{role:?}").to_lowercase(),
            pod.plan.version,
            addr,
            rec.pid,
            if pod.plan.fail_rate > 0.0 {
                format!("  (fails {:.0}% of requests)", pod.plan.fail_rate * 100.0)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Step 6: traffic

/// One answer of productpage, as the client saw it.
#[derive(Debug, Clone, Default)]
struct Seen {
    status: u16,
    reviews_version: Option<String>,
    details_status: u16,
    ratings_status: Option<u16>,
    error: Option<String>,
}

fn send_traffic(sim: &Sim, n: usize, concurrency: usize) -> Result<Vec<Seen>> {
    let client = sim.pod("client")?;
    let to = bookinfo::vip("productpage").context("productpage VIP")?;
    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let done = done.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let tty = std::io::stdout().is_terminal();
        let handle = std::thread::spawn(move || {
            let mut last_line = 0;
            loop {
                let d = done.load(Ordering::Relaxed);
                let finished = s.load(Ordering::Relaxed);
                let bar = |d: usize| {
                    let w = 30;
                    let f = d * w / n.max(1);
                    format!("[{}{}] {d}/{n}", "#".repeat(f), ".".repeat(w - f))
                };
                if tty {
                    print!("\r  {}", bar(d));
                    let _ = std::io::stdout().flush();
                } else if d * 4 / n.max(1) > last_line || (finished && last_line < 4) {
                    last_line = d * 4 / n.max(1);
                    println!("  {}", bar(d));
                }
                if finished {
                    if tty {
                        println!();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        (stop, handle)
    };
    let d = done.clone();
    let result = client.run(move || {
        http::runtime()?.block_on(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (next, done) = (next.clone(), d.clone());
                tasks.push(tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut conn: Option<http::Conn> = None;
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        seen.push(one_request(&mut conn, to).await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    seen
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.context("traffic task")?);
            }
            anyhow::Ok(all)
        })
    });
    progress.0.store(true, Ordering::Relaxed);
    let _ = progress.1.join();
    let seen = result.context("entering the client pod's netns")??;
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    if failed.len() * 10 > seen.len() {
        bail!(
            "{} of {} requests to productpage failed; first: {:?}",
            failed.len(),
            seen.len(),
            failed[0]
        );
    }
    Ok(seen)
}

async fn one_request(conn: &mut Option<http::Conn>, to: SocketAddr) -> Seen {
    if conn.as_ref().is_none_or(|c| !c.is_open()) {
        match http::Conn::open(to, REQUEST_TIMEOUT).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                return Seen {
                    error: Some(format!("{e:#}")),
                    ..Seen::default()
                }
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return Seen::default();
    };
    match c
        .get("productpage:9080", "/productpage", &[], REQUEST_TIMEOUT)
        .await
    {
        Ok(reply) => {
            let v: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            let code = |v: &Value| v["status"].as_u64().unwrap_or(0) as u16;
            Seen {
                status: reply.status.as_u16(),
                reviews_version: v["reviews"]["version"].as_str().map(str::to_string),
                details_status: code(&v["details"]),
                ratings_status: v["reviews"]["ratings"]
                    .is_object()
                    .then(|| code(&v["reviews"]["ratings"])),
                error: None,
            }
        }
        Err(e) => {
            *conn = None;
            Seen {
                error: Some(format!("{e:#}")),
                ..Seen::default()
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Step 7: observations

/// What each node's components reported.
struct Scraped {
    /// Per node index: dpu-proxy /metrics, /stats, dataplane /metrics.
    nodes: Vec<(usize, Vec<Sample>, Value, Vec<Sample>)>,
}

impl Scraped {
    fn proxy_samples(&self) -> Vec<Sample> {
        self.nodes
            .iter()
            .flat_map(|(_, m, _, _)| m.iter().cloned())
            .collect()
    }
}

fn scrape(sim: &Sim) -> Result<Scraped> {
    let mut nodes = Vec::new();
    for node in sim.nodes() {
        let pm = admin_get(node, PROXY_ADMIN_PORT, "/metrics")?;
        let ps = admin_get(node, PROXY_ADMIN_PORT, "/stats")?;
        let dm = admin_get(node, DATAPLANE_ADMIN_PORT, "/metrics")?;
        nodes.push((
            node.index,
            metrics::parse(&pm),
            serde_json::from_str(&ps).context("dpu-proxy /stats is not JSON")?,
            metrics::parse(&dm),
        ));
    }
    Ok(Scraped { nodes })
}

/// CPU seconds of what the demo started: (host side, DPU side, app).
#[derive(Debug, Clone, Default)]
struct Cpu {
    host_s: f64,
    dpu_s: f64,
    dpu_rss_kb: u64,
    app_s: f64,
    per_dpu: BTreeMap<(usize, &'static str), (f64, u64)>,
}

fn cpu_now(started: &Started) -> Cpu {
    let mut c = Cpu::default();
    for &(_, pid) in &started.adapters {
        c.host_s += procstat::sample(pid).map(|s| s.cpu_s).unwrap_or(0.0);
    }
    for &(node, name, pid) in &started.dpu {
        let s = procstat::sample(pid).unwrap_or_default();
        c.dpu_s += s.cpu_s;
        c.dpu_rss_kb += s.rss_kb;
        c.per_dpu.insert((node, name), (s.cpu_s, s.rss_kb));
    }
    c.app_s = procstat::sample_all(&started.apps.iter().copied().collect::<BTreeSet<_>>()).cpu_s;
    c
}

/// A counter for display (metric values are floats; sums of nothing are -0.0).
fn n(x: f64) -> u64 {
    x.max(0.0).round() as u64
}

fn pct(n: f64, total: f64) -> f64 {
    if total > 0.0 {
        100.0 * n / total
    } else {
        0.0
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    pods: &[PodInfo],
    seen: &[Seen],
    scraped: &Scraped,
    started: &Started,
    before: &Cpu,
    after: &Cpu,
    elapsed: Duration,
) -> Value {
    let samples = scraped.proxy_samples();
    let ok = seen.iter().filter(|s| s.status == 200).count();
    println!(
        "\n  Requests: {} sent, {} answered 200 by productpage, {} failed{}",
        seen.len(),
        ok,
        seen.len() - ok,
        seen.iter()
            .find_map(|s| s.error.as_ref())
            .map(|e| format!(" (e.g. {e})"))
            .unwrap_or_default()
    );

    // Canary split: the app's answers vs dpu-proxy's metrics.
    let reviews_fqdn = bookinfo::fqdn("reviews");
    let by_client = |v: &str| {
        seen.iter()
            .filter(|s| s.reviews_version.as_deref() == Some(v))
            .count() as f64
    };
    let by_metrics = |v: &str| {
        metrics::sum(
            &samples,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("source_workload", "productpage-v1"),
                ("destination_service", reviews_fqdn.as_str()),
                ("destination_version", v),
            ],
        )
    };
    let client_total: f64 = bookinfo::REVIEWS_SPLIT
        .iter()
        .map(|(v, _)| by_client(v))
        .sum();
    let metric_total: f64 = bookinfo::REVIEWS_SPLIT
        .iter()
        .map(|(v, _)| by_metrics(v))
        .sum();
    println!("\n  Canary split of reviews (productpage -> reviews), configured vs observed:");
    println!(
        "    {:<8} {:>10} {:>22} {:>26}",
        "version", "configured", "seen in app answers", "dpu-proxy istio_requests"
    );
    let mut split = serde_json::Map::new();
    for (v, w) in bookinfo::REVIEWS_SPLIT {
        let (c, m) = (by_client(v), by_metrics(v));
        println!(
            "    {:<8} {:>9}% {:>8} = {:>5.1}%      {:>8} = {:>5.1}%",
            v,
            w,
            n(c),
            pct(c, client_total),
            n(m),
            pct(m, metric_total)
        );
        split.insert(
            v.to_string(),
            json!({"configured_pct": w, "app_pct": pct(c, client_total), "metrics_pct": pct(m, metric_total),
                   "app": c, "metrics": m}),
        );
    }

    // Fault injection on details.
    let details_fqdn = bookinfo::fqdn("details");
    let details_series: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "istio_requests_total"
                && s.label("reporter") == "source"
                && s.label("destination_service") == details_fqdn
        })
        .collect();
    let details_total: f64 = details_series.iter().map(|s| s.value).sum();
    let flagged = |f: &str| -> f64 {
        details_series
            .iter()
            .filter(|s| s.label("response_flags").split(',').any(|x| x == f))
            .map(|s| s.value)
            .sum()
    };
    let (aborted, delayed) = (flagged("FI"), flagged("DI"));
    let app_saw_503 = seen.iter().filter(|s| s.details_status == 503).count();
    println!("\n  Fault injection on details (productpage -> details):");
    println!(
        "    abort 503:    configured {:>3}%, observed {:>5.1}% ({} of {} requests flagged FI; productpage saw {app_saw_503} details 503s)",
        bookinfo::DETAILS_ABORT_PCT,
        pct(aborted, details_total),
        n(aborted),
        n(details_total)
    );
    println!(
        "    delay {} ms: configured {:>3}%, observed {:>5.1}% ({} flagged DI)",
        bookinfo::DETAILS_DELAY_MS,
        bookinfo::DETAILS_DELAY_PCT,
        pct(delayed, details_total),
        n(delayed)
    );

    // Retries and ejections: dpu-proxy's /stats per cluster.
    let ratings_fqdn = bookinfo::fqdn("ratings");
    let ip_to_pod: BTreeMap<String, &str> = pods
        .iter()
        .map(|p| (format!("{}:{}", p.ip, bookinfo::PORT), p.plan.name))
        .collect();
    let mut retries_total = 0u64;
    let mut ejections_total = 0u64;
    let mut ejected_pods = BTreeSet::new();
    let ratings_requests = metrics::sum(
        &samples,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", ratings_fqdn.as_str()),
        ],
    );
    let ratings_failed: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "istio_requests_total"
                && s.label("reporter") == "source"
                && s.label("destination_service") == ratings_fqdn
                && s.label("response_code").starts_with('5')
        })
        .map(|s| s.value)
        .sum();
    println!(
        "\n  Retries ({} on 5xx) and outlier detection on ratings, per dpu-proxy:",
        bookinfo::RATINGS_RETRIES
    );
    println!(
        "    {:<7} {:<48} {:>8} {:>10}  endpoints ejected",
        "node", "cluster", "retries", "ejections"
    );
    for (node, _, stats, _) in &scraped.nodes {
        for c in stats["clusters"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("");
            let r = c["retries_total"].as_u64().unwrap_or(0);
            let e = c["ejections_total"].as_u64().unwrap_or(0);
            retries_total += r;
            ejections_total += e;
            let ejected: Vec<String> = c["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|ep| ep["ejections"].as_u64().unwrap_or(0) > 0 || ep["ejected"] == true)
                .map(|ep| {
                    let addr = ep["address"].as_str().unwrap_or("?");
                    let pod = ip_to_pod.get(addr).copied().unwrap_or(addr);
                    ejected_pods.insert(pod.to_string());
                    format!(
                        "{pod} ({addr}{})",
                        if ep["ejected"] == true {
                            ", ejected now"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            if r == 0 && e == 0 && ejected.is_empty() {
                continue;
            }
            println!(
                "    node-{:<2} {:<48} {:>8} {:>10}  {}",
                node,
                name,
                r,
                e,
                if ejected.is_empty() {
                    "-".to_string()
                } else {
                    ejected.join(", ")
                }
            );
        }
    }
    let ratings_app_failures = seen
        .iter()
        .filter(|s| s.ratings_status.is_some_and(|c| c != 200))
        .count();
    println!(
        "    {retries_total} retries made; {} requests to ratings, {} still failed after retries \
         (reviews saw {ratings_app_failures} ratings errors); ejected: {}",
        n(ratings_requests),
        n(ratings_failed),
        if ejected_pods.is_empty() {
            "none".to_string()
        } else {
            ejected_pods.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    );

    // Per-service and per-pod numbers.
    println!("\n  Per service (dpu-proxy, reporter=source):");
    println!(
        "    {:<12} {:>9} {:>7} {:>7} {:>12}",
        "service", "requests", "2xx", "5xx", "mean ms"
    );
    for (svc, _) in bookinfo::SERVICES {
        let f = bookinfo::fqdn(svc);
        let want = [("reporter", "source"), ("destination_service", f.as_str())];
        let total = metrics::sum(&samples, "istio_requests_total", &want);
        let class = |p: char| -> f64 {
            samples
                .iter()
                .filter(|s| {
                    s.name == "istio_requests_total"
                        && want.iter().all(|(k, v)| s.label(k) == *v)
                        && s.label("response_code").starts_with(p)
                })
                .map(|s| s.value)
                .sum()
        };
        let dur_sum = metrics::sum(&samples, "istio_request_duration_milliseconds_sum", &want);
        let dur_n = metrics::sum(&samples, "istio_request_duration_milliseconds_count", &want);
        println!(
            "    {:<12} {:>9} {:>7} {:>7} {:>12.2}",
            svc,
            n(total),
            n(class('2')),
            n(class('5')),
            if dur_n > 0.0 { dur_sum / dur_n } else { 0.0 }
        );
    }

    println!("\n  Per pod (dpu-proxy /stats counters; dataplane packet counters):");
    println!(
        "    {:<14} {:<7} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "pod",
        "node",
        "req out",
        "req in",
        "5xx",
        "steered",
        "proxied",
        "bypassed",
        "pkts in",
        "drops"
    );
    let mut per_pod = serde_json::Map::new();
    for pod in pods {
        let Some((_, _, stats, dm)) = scraped.nodes.iter().find(|(n, ..)| *n == pod.plan.node)
        else {
            continue;
        };
        let counters = stats["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == pod.plan.name)
            .map(|p| p["counters"].clone())
            .unwrap_or(Value::Null);
        let c = |k: &str| counters[k].as_u64().unwrap_or(0);
        let d = |name: &str, extra: &[(&str, &str)]| {
            let mut want = vec![("pod", pod.plan.name)];
            want.extend_from_slice(extra);
            metrics::sum(dm, name, &want)
        };
        let steered = d("dpumesh_dataplane_pod_steered_connections_total", &[]);
        let proxied = d("dpumesh_dataplane_pod_proxy_socket_packets_total", &[]);
        let bypassed = d("dpumesh_dataplane_pod_bypassed_packets_total", &[]);
        let pkts_in = d(
            "dpumesh_dataplane_pod_packets_total",
            &[("direction", "in")],
        );
        let drops = d("dpumesh_dataplane_pod_drops_total", &[]);
        println!(
            "    {:<14} node-{:<2} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>6}",
            pod.plan.name,
            pod.plan.node,
            c("requests_out"),
            c("requests_in"),
            c("responses_5xx"),
            n(steered),
            n(proxied),
            n(bypassed),
            n(pkts_in),
            n(drops)
        );
        per_pod.insert(
            pod.plan.name.to_string(),
            json!({"requests_out": c("requests_out"), "requests_in": c("requests_in"),
                   "responses_5xx": c("responses_5xx"), "steered_connections": steered,
                   "proxy_socket_packets": proxied, "bypassed_packets": bypassed,
                   "packets_in": pkts_in, "drops": drops}),
        );
    }

    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for (_, _, _, dm) in &scraped.nodes {
        for s in dm
            .iter()
            .filter(|s| s.name == "dpumesh_dataplane_pod_drops_total")
        {
            *reasons.entry(s.label("reason").to_string()).or_default() += s.value;
        }
    }
    let reasons: Vec<String> = reasons
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(r, v)| format!("{r} {}", n(*v)))
        .collect();
    println!(
        "    req out = requests the pod sent through its node's proxy; req in = requests that reached it through the\n    \
         proxy's inbound side (from another node; same-node calls are counted once, as the sender's req out).\n    \
         steered = connections the dataplane handed to dpu-proxy; proxied = packets delivered to its sockets;\n    \
         bypassed = packets forwarded without it. Drops by reason: {}{}",
        if reasons.is_empty() { "none".to_string() } else { reasons.join(", ") },
        if reasons.iter().any(|r| r.starts_with("unsupported")) {
            " (unsupported: the pods' IPv6 neighbour discovery; the dataplane is IPv4-only)"
        } else {
            ""
        }
    );

    // CPU: host side vs DPU side.
    let secs = elapsed.as_secs_f64().max(1e-9);
    let host_traffic = after.host_s - before.host_s;
    let dpu_traffic = after.dpu_s - before.dpu_s;
    println!("\n  CPU the mesh cost (from /proc, user+system):");
    println!(
        "    {:<42} {:>14} {:>14}",
        "", "during traffic", "since start"
    );
    println!(
        "    {:<42} {:>12.2} s {:>12.2} s",
        "host side: adapters (control plane)", host_traffic, after.host_s
    );
    println!(
        "    {:<42} {:>14} {:>12.2} s",
        format!("host side: {} CNI ADDs (+ host-local)", started.cni_calls),
        "-",
        started.cni_cpu_s
    );
    for ((node, name), (cpu, rss)) in &after.per_dpu {
        let b = before
            .per_dpu
            .get(&(*node, *name))
            .map(|x| x.0)
            .unwrap_or(0.0);
        println!(
            "    {:<42} {:>12.2} s {:>12.2} s   RSS {} KiB",
            format!("DPU side: node-{node} {name}"),
            cpu - b,
            cpu,
            rss
        );
    }
    println!(
        "    => host side {:.2} s ({:.1}% of a core), DPU side {:.2} s ({:.1}% of a core) while serving {} requests",
        host_traffic,
        100.0 * host_traffic / secs,
        dpu_traffic,
        100.0 * dpu_traffic / secs,
        seen.len()
    );
    println!(
        "       (the application itself used {:.2} s; eBPF work runs in the DPU kernel and is not counted per process)",
        after.app_s - before.app_s
    );

    json!({
        "requests": seen.len(),
        "ok": ok,
        "split": split,
        "faults": {"details_requests": n(details_total), "aborted": n(aborted), "delayed": n(delayed),
                   "abort_pct": bookinfo::DETAILS_ABORT_PCT, "delay_pct": bookinfo::DETAILS_DELAY_PCT,
                   "app_saw_details_503": app_saw_503},
        "retries_total": retries_total,
        "ratings_requests": n(ratings_requests),
        "ratings_failed": n(ratings_failed),
        "ejections_total": ejections_total,
        "ejected_pods": ejected_pods.into_iter().collect::<Vec<_>>(),
        "pods": per_pod,
        "cpu": {"host_traffic_s": host_traffic, "host_total_s": after.host_s,
                "cni_s": started.cni_cpu_s, "dpu_traffic_s": dpu_traffic,
                "dpu_total_s": after.dpu_s, "dpu_rss_kb": after.dpu_rss_kb,
                "app_traffic_s": after.app_s - before.app_s, "seconds": secs},
    })
}

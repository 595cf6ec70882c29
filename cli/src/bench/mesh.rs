//! `dpumesh bench mesh`: the same two-node workload carried three ways, in
//! one run, on one simulator cluster.
//!
//! Topology: node 1 holds the client pods, node 2 the server pods; every pod
//! sits on its own VF, and the real eBPF dataplane runs in both DPU netns and
//! carries every packet between the nodes (fabric, underlay routing). Each
//! way has its own client/server pod pair, so nothing of one way runs in the
//! pods of another:
//!
//! * `direct` (no mesh): the pods are registered with the dataplane **not
//!   meshed**, so it forwards their packets in TC (no proxy, no capture); the
//!   client calls the server pod's IP (the simulator has no kube-proxy to
//!   resolve a ClusterIP without a mesh).
//! * `envoy-sidecar` (Istio-style): Envoy in both pods' netns, running as uid
//!   1337, with istio-init's iptables rules (nat OUTPUT → 15001, PREROUTING →
//!   15006, Envoy's own traffic excluded by `--uid-owner`/`--gid-owner`), and a
//!   static sidecar config (virtualOutbound 15001 with `use_original_dst`, the
//!   `0.0.0.0_80` HTTP listener routing to the service's cluster, virtualInbound
//!   15006 with `original_dst` and an ORIGINAL_DST inbound cluster bound to
//!   127.0.0.6). The client calls the service VIP; the pods are not meshed in
//!   the dataplane (plain forwarding between the sidecars).
//! * `dpumesh`: the pods are meshed; the dataplane steers the client's
//!   connections to the VIP onto dpu-proxy in node 1's DPU (15001), which
//!   connects to the server pod; node 2's dataplane steers that inbound
//!   connection onto node 2's dpu-proxy (15006), which hands it to the server.
//!
//! The load generator is h2load in the client pod (HTTP/1.1, keep-alive,
//! closed loop); the server is nginx. CPU is read from /proc over the measured
//! window and split by where a process runs: host side = processes in the
//! way's two pods and in both hosts' netns, minus the application (nginx,
//! reported apart) and the load generator (h2load, not counted); DPU side =
//! every process in both DPU netns (dataplane and dpu-proxy). Kernel work
//! (iptables, veth, the TC programs) is charged by the kernel to whichever
//! process was running, as on a real host.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_api::proto::v1::{
    AddPodRequest, NetworkMode, NodeNetwork, PeerNode, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_api::NodeConfig;
use dpumesh_sim::{unique_cluster, Netns, Node, Place, Sim, SimConfig, SimGuard, SpawnSpec};
use serde_json::{json, Map, Value};

use super::load::{self, HttpVersion, LoadSpec};
use super::procstat;
use super::proxy::{
    attach_pod, client_runtime, find_envoy, http_get, median, need, push_config, round, run_in,
    sibling, steering, wait_tcp, with_children,
};
use super::report::{Case, Machine, Summary};

/// The service the client calls in the sidecar and dpumesh ways.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE: &str = "web.bench.svc.cluster.local";
const APP_PORT: u16 = 80;
const DATAPLANE_PORT: u16 = 15081;
const PROXY_CONTROL_PORT: u16 = 15080;
/// Istio's sidecar ports and proxy uid.
const SIDECAR_OUTBOUND: u16 = 15001;
const SIDECAR_INBOUND: u16 = 15006;
const SIDECAR_ADMIN: u16 = 15000;
const PROXY_UID: u32 = 1337;
/// Pods added to dpu-proxy's NodeConfig, twice, to measure RSS per added pod.
const ADDED_PODS: usize = 100;
/// The issue's goals.
const HOST_CPU_ZERO_SHARE: f64 = 0.02;
const P99_ADDED_SHARE: f64 = 0.5;
const CPU_SHARE: f64 = 1.0 / 3.0;
const POD_KB_GOAL: f64 = 100.0;
const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "bench";

#[derive(Debug, Args)]
pub struct MeshArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run fit for CI: 2 s per way, one run.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of measurement per way (default 10, 2 with --quick).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Runs of every way; the median of each figure is reported (default 3, 1 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Concurrent client connections, comma-separated; each count is a case
    /// (default 1,16: unloaded latency and a saturating load; 16 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub connections: Option<Vec<u32>>,
    /// Simulator cluster name (default: a fresh unique one); it is torn down at the end.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The Envoy binary (default: the project venv's, from scripts/setup.sh).
    #[arg(long, env = "DPUMESH_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Carry the sidecar and dpumesh ways in plaintext. By default both use
    /// mTLS, as Istio does: Istio mTLS between the sidecars, HBONE between
    /// the DPUs, with certificates from one root.
    #[arg(long)]
    pub plaintext: bool,
    /// Declare the service's port `tcp` for the dpumesh way, so both
    /// dpu-proxies relay it at L4 (HBONE mTLS, L4 authorization, TCP
    /// metrics; Istio ambient without a waypoint). The sidecars stay L7.
    /// This is not the issue's comparison: it shows what the two DPU-side
    /// HTTP passes cost.
    #[arg(long)]
    pub l4: bool,
}

/// How the traffic is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Direct,
    Sidecar,
    Dpumesh,
}

impl Way {
    const ALL: [Way; 3] = [Way::Direct, Way::Sidecar, Way::Dpumesh];

    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Sidecar => "envoy-sidecar",
            Way::Dpumesh => "dpumesh",
        }
    }

    /// VF index on each node, and the pods' last address byte.
    fn vf(self) -> usize {
        match self {
            Way::Direct => 0,
            Way::Sidecar => 1,
            Way::Dpumesh => 2,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Sidecar => "sidecar",
            Way::Dpumesh => "mesh",
        }
    }

    fn client_pod(self) -> String {
        format!("cli-{}", self.short())
    }

    fn server_pod(self) -> String {
        format!("srv-{}", self.short())
    }

    fn client_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, 10 + self.vf() as u8)
    }

    fn server_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 2, 10 + self.vf() as u8)
    }

    fn target(self) -> SocketAddr {
        match self {
            Way::Direct => SocketAddr::from((self.server_ip(), APP_PORT)),
            Way::Sidecar | Way::Dpumesh => SocketAddr::from((VIP, APP_PORT)),
        }
    }
}

/// One measurement of one way.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    requests: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    /// Mesh processes in the pods' and hosts' netns (sidecars), CPU seconds.
    host_cpu_s: f64,
    /// Processes in the DPU netns (dataplane, dpu-proxy), CPU seconds.
    dpu_cpu_s: f64,
    /// The application (nginx in the server pod), CPU seconds.
    app_cpu_s: f64,
    /// RSS of the mesh's own processes (sidecars or dpu-proxies), KB.
    mesh_rss_kb: f64,
}

impl Sample {
    fn mesh_cpu_s(&self) -> f64 {
        self.host_cpu_s + self.dpu_cpu_s
    }
}

/// RSS of node 1's dpu-proxy with more pods in its NodeConfig.
#[derive(Debug, Clone, Default)]
struct PodMemory {
    /// (pods in the NodeConfig, RSS KB) after a push and some traffic.
    points: Vec<(usize, u64)>,
    /// Growth per added pod between the last two points, KB.
    kb_per_pod: f64,
}

pub fn run(args: MeshArgs) -> Result<()> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let duration = Duration::from_secs_f64(
        args.duration
            .unwrap_or(if args.quick { 2.0 } else { 10.0 })
            .max(0.2),
    );
    let warmup = if args.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let connections: Vec<u32> =
        args.connections
            .clone()
            .unwrap_or_else(|| if args.quick { vec![16] } else { vec![1, 16] });
    if connections.is_empty() || connections.contains(&0) {
        bail!("--connections: every count must be at least 1 (got {connections:?})");
    }
    need("h2load", "nghttp2-client")?;
    need("nginx", "nginx")?;
    need("iptables", "iptables")?;
    need("setpriv", "util-linux")?;
    let programs = Programs {
        dpu_proxy: sibling("dpu-proxy")?,
        dataplane: sibling("dpumesh-dataplane")?,
        envoy: find_envoy(args.envoy.clone())?,
    };
    let sim = SimGuard::up(
        SimConfig::new(
            args.cluster
                .clone()
                .unwrap_or_else(|| unique_cluster("bmsh")),
        )
        .with_nodes(2)
        .with_vfs(3),
    )
    .context("starting the simulator cluster")?;
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let mtls = !args.plaintext;
    let bench = Bench::setup(&sim, programs, mtls, args.l4)?;
    eprintln!(
        "cluster {}: clients on node 1, servers on node 2; ways: {}; {}{}",
        sim.cluster(),
        Way::ALL.map(Way::name).join(", "),
        if mtls {
            "mTLS on (Istio mTLS between the sidecars, HBONE between the DPUs)"
        } else {
            "plaintext"
        },
        if args.l4 {
            "; --l4: dpumesh relays the service at L4, the sidecars at L7"
        } else {
            ""
        }
    );

    let mut samples: Vec<((Way, u32), Vec<Sample>)> = connections
        .iter()
        .flat_map(|c| Way::ALL.iter().map(move |w| ((*w, *c), vec![])))
        .collect();
    for run in 0..runs {
        for ((way, conns), v) in samples.iter_mut() {
            let s = bench
                .measure(*way, *conns, duration, warmup)
                .with_context(|| format!("way {} c={conns} (run {})", way.name(), run + 1))?;
            eprintln!(
                "run {}/{runs} {:<14} c={conns:<3} {:>8.0} req/s p99 {:.3} ms host cpu {:.2} s dpu cpu {:.2} s",
                run + 1,
                way.name(),
                s.rps,
                s.p99,
                s.host_cpu_s,
                s.dpu_cpu_s
            );
            v.push(s);
        }
    }
    bench.check_sidecars_carried_traffic()?;
    bench.check_dpumesh_security()?;
    let sidecar_pod_kb = bench.sidecar_rss_per_pod_kb();
    let memory = bench
        .pod_memory(if args.quick { 0.5 } else { 2.0 })
        .context("dpu-proxy RSS with more pods")?;
    eprintln!(
        "dpu-proxy RSS by pods in its NodeConfig: {:?} → {:.1} KB per added pod",
        memory.points, memory.kb_per_pod
    );

    let mut cases = build_cases(&samples, duration, sidecar_pod_kb, &memory);
    for c in cases.iter_mut().filter(|c| c.name != Way::Direct.name()) {
        c.extra.insert("mtls".into(), json!(mtls));
    }
    for c in cases.iter_mut().filter(|c| c.name == Way::Dpumesh.name()) {
        c.extra.insert(
            "dpumesh_layer".into(),
            json!(if args.l4 { "l4" } else { "l7" }),
        );
        if args.l4 {
            // L4 against L7 is not the issue's comparison: no goal verdicts.
            if let Some(g) = c.extra.remove("goals") {
                c.extra.insert("goals_l4_vs_l7_not_the_issues".into(), g);
            }
        }
    }
    let command = format!(
        "dpumesh bench mesh{}{}{}{}{}{}{}",
        if args.json { " --json" } else { "" },
        if args.quick { " --quick" } else { "" },
        if args.plaintext { " --plaintext" } else { "" },
        if args.l4 { " --l4" } else { "" },
        args.duration
            .map(|d| format!(" --duration {d}"))
            .unwrap_or_default(),
        args.runs
            .map(|r| format!(" --runs {r}"))
            .unwrap_or_default(),
        args.connections
            .as_ref()
            .map(|c| format!(
                " --connections {}",
                c.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ))
            .unwrap_or_default(),
    );
    let summary = Summary {
        scenario: "mesh".into(),
        machine: Machine::this(),
        command,
        cases,
    };
    print!("{}", summary.table());
    print!("{}", cpu_table(&summary.cases));
    println!(
        "(median of {runs} run(s) of {:.1} s per way and connection count, HTTP/1.1, {}; \
         host cpu = sidecars (pods' + hosts' netns, nginx and h2load excluded), dpu cpu = \
         dataplane + dpu-proxy; cpu µs/req = host + dpu)",
        duration.as_secs_f64(),
        if mtls { "mTLS on" } else { "plaintext" },
    );
    for line in goals(&summary.cases) {
        println!("{line}");
    }
    if args.l4 {
        println!(
            "(--l4: dpumesh carried the service at L4 and the sidecars at L7, so these goal \
             lines are not the issue's comparison; run without --l4 for that)"
        );
    }
    drop(bench);
    drop(sim);
    if args.json {
        println!("{}", summary.json_line());
    }
    Ok(())
}

fn build_cases(
    samples: &[((Way, u32), Vec<Sample>)],
    duration: Duration,
    sidecar_pod_kb: Option<f64>,
    memory: &PodMemory,
) -> Vec<Case> {
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let mut cases = Vec::new();
    for ((way, connections), v) in samples {
        let direct_p99 = samples
            .iter()
            .find(|((w, c), _)| *w == Way::Direct && c == connections)
            .map(|(_, v)| med(v, |s| s.p99));
        let meshed = *way != Way::Direct;
        let p99 = med(v, |s| s.p99);
        let cpu_per_req = median(
            v.iter()
                .map(|s| s.mesh_cpu_s() / s.requests.max(1.0))
                .collect(),
        );
        let mut extra = Map::new();
        extra.insert("runs".into(), json!(v.len()));
        extra.insert("duration_s".into(), json!(duration.as_secs_f64()));
        extra.insert(
            "host_cpu_s".into(),
            json!(round(med(v, |s| s.host_cpu_s), 3)),
        );
        extra.insert("dpu_cpu_s".into(), json!(round(med(v, |s| s.dpu_cpu_s), 3)));
        extra.insert("app_cpu_s".into(), json!(round(med(v, |s| s.app_cpu_s), 3)));
        extra.insert(
            "mesh_cpu_s_per_1000_req".into(),
            json!(round(cpu_per_req * 1000.0, 6)),
        );
        extra.insert(
            "add_p99_ms".into(),
            match (meshed, direct_p99) {
                (true, Some(d)) => json!(round(p99 - d, 3)),
                _ => Value::Null,
            },
        );
        let per_pod = match way {
            Way::Direct => None,
            Way::Sidecar => sidecar_pod_kb,
            Way::Dpumesh => Some(memory.kb_per_pod),
        };
        extra.insert(
            "mem_per_pod_kb".into(),
            per_pod.map(|k| json!(round(k, 1))).unwrap_or(Value::Null),
        );
        if *way == Way::Dpumesh {
            extra.insert(
                "proxy_rss_kb_by_pods".into(),
                Value::Object(
                    memory
                        .points
                        .iter()
                        .map(|(pods, kb)| (pods.to_string(), json!(kb)))
                        .collect(),
                ),
            );
        }
        cases.push(Case {
            name: way.name().into(),
            protocol: HttpVersion::Http1.label().into(),
            connections: *connections,
            rps: round(med(v, |s| s.rps), 1),
            p50_ms: Some(round(med(v, |s| s.p50), 3)),
            p90_ms: Some(round(med(v, |s| s.p90), 3)),
            p99_ms: Some(round(p99, 3)),
            cpu_s_per_req: meshed.then(|| round(cpu_per_req, 9)),
            rss_mb: meshed.then(|| round(med(v, |s| s.mesh_rss_kb) / 1024.0, 2)),
            extra,
        });
    }
    let counts: BTreeSet<u32> = cases.iter().map(|c| c.connections).collect();
    for conns in counts {
        let goal_values = goal_checks(&cases, conns);
        let Some(c) = cases
            .iter_mut()
            .find(|c| c.name == Way::Dpumesh.name() && c.connections == conns)
        else {
            continue;
        };
        c.extra.insert(
            "goals".into(),
            Value::Object(
                goal_values
                    .iter()
                    .map(|g| (g.key.to_string(), json!(g.met)))
                    .collect(),
            ),
        );
    }
    cases
}

fn cpu_table(cases: &[Case]) -> String {
    let f = |c: &Case, k: &str| c.extra.get(k).and_then(Value::as_f64);
    let opt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    let mut out = format!(
        "{:<16} {:>5} {:>11} {:>10} {:>10} {:>16} {:>12} {:>12}\n",
        "way",
        "conns",
        "host cpu s",
        "dpu cpu s",
        "app cpu s",
        "mesh cpu s/1k rq",
        "+p99 ms",
        "KB per pod"
    );
    for c in cases {
        out.push_str(&format!(
            "{:<16} {:>5} {:>11} {:>10} {:>10} {:>16} {:>12} {:>12}\n",
            c.name,
            c.connections,
            opt(f(c, "host_cpu_s"), 3),
            opt(f(c, "dpu_cpu_s"), 3),
            opt(f(c, "app_cpu_s"), 3),
            opt(f(c, "mesh_cpu_s_per_1000_req"), 4),
            opt(f(c, "add_p99_ms"), 3),
            opt(f(c, "mem_per_pod_kb"), 1),
        ));
    }
    out
}

struct Goal {
    key: &'static str,
    text: String,
    met: bool,
}

/// The issue's four goals, dpumesh against the sidecars of the same run, at
/// `conns` connections.
fn goal_checks(cases: &[Case], conns: u32) -> Vec<Goal> {
    let find = |n: &str| cases.iter().find(|c| c.name == n && c.connections == conns);
    let (Some(mesh), Some(side)) = (find(Way::Dpumesh.name()), find(Way::Sidecar.name())) else {
        return Vec::new();
    };
    let f = |c: &Case, k: &str| c.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut out = Vec::new();
    let (mh, sh) = (f(mesh, "host_cpu_s"), f(side, "host_cpu_s"));
    out.push(Goal {
        key: "host_cpu_zero",
        text: format!(
            "mesh host-side CPU ≈ 0 (≤ {:.0} % of the sidecars'): {mh:.3} s vs {sh:.3} s",
            HOST_CPU_ZERO_SHARE * 100.0
        ),
        met: mh <= HOST_CPU_ZERO_SHARE * sh,
    });
    let (ma, sa) = (f(mesh, "add_p99_ms"), f(side, "add_p99_ms"));
    out.push(Goal {
        key: "p99_added_half",
        text: format!(
            "p99 added latency ≤ {:.0} % of the sidecars': +{ma:.3} ms vs +{sa:.3} ms",
            P99_ADDED_SHARE * 100.0
        ),
        met: ma <= P99_ADDED_SHARE * sa,
    });
    let (mc, sc) = (
        f(mesh, "mesh_cpu_s_per_1000_req"),
        f(side, "mesh_cpu_s_per_1000_req"),
    );
    out.push(Goal {
        key: "cpu_third",
        text: format!(
            "total mesh CPU per 1000 requests ≤ ⅓ of the sidecars': {mc:.4} s vs {sc:.4} s ({:.2}×)",
            mc / sc
        ),
        met: mc <= CPU_SHARE * sc,
    });
    let (mp, sp) = (f(mesh, "mem_per_pod_kb"), f(side, "mem_per_pod_kb"));
    out.push(Goal {
        key: "pod_100kb",
        text: format!(
            "each added pod ≤ {POD_KB_GOAL:.0} KB: {mp:.1} KB (dpu-proxy growth) vs {sp:.0} KB (one sidecar)"
        ),
        met: mp <= POD_KB_GOAL,
    });
    out
}

fn goals(cases: &[Case]) -> Vec<String> {
    let mut out = Vec::new();
    let counts: BTreeSet<u32> = cases.iter().map(|c| c.connections).collect();
    for conns in counts {
        out.push(format!(
            "goals (issue 7), dpumesh against the sidecars of this run, {conns} connection(s):"
        ));
        out.extend(
            goal_checks(cases, conns)
                .into_iter()
                .map(|g| format!("  {} — {}", g.text, if g.met { "met" } else { "NOT met" })),
        );
    }
    out
}

/// Starts dpu-proxy in each node's DPU netns (one worker, admin on
/// 127.0.0.1:15000, control on the management address) with `extra` flags
/// appended, and waits until each control port answers.
pub(crate) fn start_dpu_proxies(
    sim: &Sim,
    nodes: &[Node],
    dpu_proxy: &Path,
    extra: &[String],
) -> Result<()> {
    for node in nodes {
        let proxy_mgmt = mgmt(node, PROXY_CONTROL_PORT);
        sim.spawn_with(
            SpawnSpec::new(
                format!("dpu-proxy-n{}", node.index),
                node.netns(Place::Dpu).clone(),
                dpu_proxy.display().to_string(),
            )
            .args([
                "--node".to_string(),
                node_name(node),
                "--mgmt-addr".into(),
                proxy_mgmt.clone(),
                "--admin-addr".into(),
                "127.0.0.1:15000".into(),
                "--workers".into(),
                "1".into(),
                "--log-level".into(),
                "warn".into(),
            ])
            .args(extra.iter().cloned())
            .health(proxy_mgmt.clone()),
        )
        .context("starting dpu-proxy")?;
        wait_tcp(
            &node.host,
            proxy_mgmt.parse().context("proxy address")?,
            "dpu-proxy",
            Duration::from_secs(20),
        )?;
    }
    Ok(())
}

struct Programs {
    dpu_proxy: PathBuf,
    dataplane: PathBuf,
    envoy: PathBuf,
}

struct Bench<'a> {
    sim: &'a Sim,
    nodes: [Node; 2],
    /// (client pod, server pod) netns per way, in `Way::ALL` order.
    pods: Vec<(Netns, Netns)>,
    /// Sidecar process names (client's, server's).
    sidecars: [String; 2],
    work: PathBuf,
    /// The pushed NodeConfig version of each node's dpu-proxy.
    version: std::cell::Cell<u64>,
    /// Sidecars and DPU proxies talk mTLS (certificates from `ca_root`).
    mtls: bool,
    /// The dpumesh way's service port is declared `tcp` (`--l4`).
    l4: bool,
    /// The cluster's CA root (key + certificate), shared by both dpu-proxies
    /// and used to sign the sidecars' certificates.
    ca_root: PathBuf,
}

pub(crate) fn node_name(node: &Node) -> String {
    format!("n{}", node.index)
}

pub(crate) fn mgmt(node: &Node, port: u16) -> String {
    format!("{}:{port}", node.mgmt_dpu.addr())
}

impl<'a> Bench<'a> {
    fn setup(sim: &'a Sim, programs: Programs, mtls: bool, l4: bool) -> Result<Bench<'a>> {
        let nodes = [sim.node(1)?.clone(), sim.node(2)?.clone()];
        let work = sim.state_dir().join("bench-mesh");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut pods = Vec::new();
        let mut steerings: [Vec<PodSteering>; 2] = [vec![], vec![]];
        for way in Way::ALL {
            let c = attach_pod(sim, &nodes[0], way.vf(), &way.client_pod(), way.client_ip())?;
            let s = attach_pod(sim, &nodes[1], way.vf(), &way.server_pod(), way.server_ip())?;
            for (i, (pod, ip)) in [
                (way.client_pod(), way.client_ip()),
                (way.server_pod(), way.server_ip()),
            ]
            .into_iter()
            .enumerate()
            {
                let mut st = steering(&format!("uid-{pod}"), &pod, &nodes[i], way.vf(), ip)?;
                st.meshed = way == Way::Dpumesh;
                steerings[i].push(st);
            }
            pods.push((c, s));
        }
        for (i, node) in nodes.iter().enumerate() {
            start_dataplane(sim, node, &nodes, &programs.dataplane, steerings[i].clone())?;
        }
        for (way, (_, server)) in Way::ALL.iter().zip(&pods) {
            start_nginx(sim, &work, server, &way.server_pod(), way.server_ip())?;
        }
        let bench = Bench {
            sim,
            nodes,
            pods,
            sidecars: [
                format!("sidecar-{}", Way::Sidecar.client_pod()),
                format!("sidecar-{}", Way::Sidecar.server_pod()),
            ],
            ca_root: sim.state_dir().join("ca-root.pem"),
            work,
            version: std::cell::Cell::new(0),
            mtls,
            l4,
        };
        bench.start_sidecars(&programs.envoy)?;
        bench.start_proxies(&programs.dpu_proxy)?;
        for way in Way::ALL {
            bench.wait_ready(way)?;
        }
        Ok(bench)
    }

    fn pods_of(&self, way: Way) -> &(Netns, Netns) {
        &self.pods[way.vf()]
    }

    /// istio-init's rules in both sidecar pods, then Envoy as uid 1337.
    fn start_sidecars(&self, envoy: &Path) -> Result<()> {
        let (client, server) = self.pods_of(Way::Sidecar).clone();
        let pods = [Way::Sidecar.client_pod(), Way::Sidecar.server_pod()];
        let mut confs = Vec::new();
        for pod in &pods {
            let tls = if self.mtls {
                Some(SidecarTls::issue(&self.ca_root, &self.work, pod, &pods)?)
            } else {
                None
            };
            let conf = self.work.join(format!("sidecar-{pod}.yaml"));
            std::fs::write(&conf, sidecar_conf(Way::Sidecar.server_ip(), tls.as_ref()))
                .with_context(|| format!("writing {}", conf.display()))?;
            confs.push(conf);
        }
        for ((ns, name), conf) in [(&client, &self.sidecars[0]), (&server, &self.sidecars[1])]
            .into_iter()
            .zip(&confs)
        {
            for rule in istio_init_rules() {
                ns.exec("iptables", rule.iter().copied())
                    .with_context(|| format!("iptables {} in {}", rule.join(" "), ns.name()))?;
            }
            let uid = PROXY_UID.to_string();
            self.sim
                .spawn_with(SpawnSpec::new(name, ns.clone(), "setpriv").args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    envoy.display().to_string(),
                    "-c".into(),
                    conf.display().to_string(),
                    "--concurrency".into(),
                    "1".into(),
                    "--disable-hot-restart".into(),
                    "--log-level".into(),
                    "warn".into(),
                ]))
                .with_context(|| format!("starting {name}"))?;
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, SIDECAR_ADMIN));
            wait_tcp(ns, admin, name, Duration::from_secs(30)).map_err(|e| {
                let log = std::fs::read_to_string(self.sim.log_path(name)).unwrap_or_default();
                e.context(format!("{name} log:\n{log}"))
            })?;
        }
        Ok(())
    }

    fn start_proxies(&self, dpu_proxy: &Path) -> Result<()> {
        let extra = if self.mtls {
            vec![
                "--trust-domain".to_string(),
                TRUST_DOMAIN.into(),
                "--ca-root-file".into(),
                self.ca_root.display().to_string(),
            ]
        } else {
            vec![]
        };
        start_dpu_proxies(self.sim, &self.nodes, dpu_proxy, &extra)?;
        self.push_mesh_configs(0)
    }

    /// The dpumesh way's NodeConfig to both proxies; node 1's with `extra`
    /// more pods (each with its own IP, MAC and VF), for the memory figure.
    fn push_mesh_configs(&self, extra: usize) -> Result<()> {
        let version = self.version.get() + 1;
        self.version.set(version);
        for (i, node) in self.nodes.iter().enumerate() {
            let extra = if i == 0 { extra } else { 0 };
            let config = mesh_config(node, i, version, extra, self.mtls, self.l4)?;
            push_config(&node.host, &mgmt(node, PROXY_CONTROL_PORT), config)
                .with_context(|| format!("pushing the NodeConfig to node {}", node.index))?;
        }
        Ok(())
    }

    fn wait_ready(&self, way: Way) -> Result<()> {
        let (client, _) = self.pods_of(way);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(client, way.target(), SERVICE) {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{}: {} never answered 200 through {}: {last}",
            way.name(),
            way.server_pod(),
            way.target()
        )
    }

    fn measure(
        &self,
        way: Way,
        conns: u32,
        duration: Duration,
        warmup: Duration,
    ) -> Result<Sample> {
        let (client, server) = self.pods_of(way).clone();
        let spec = LoadSpec {
            url: format!("http://{}/", way.target()),
            version: HttpVersion::Http1,
            connections: conns,
            duration,
            warmup,
            netns: Some(client.name().to_string()),
        };
        let scratch = self.work.clone();
        let load = std::thread::spawn(move || load::run(&spec, &scratch));
        // CPU over the measured window only: after h2load's warm-up.
        std::thread::sleep(warmup);
        let mut host = BTreeSet::new();
        let mut app = BTreeSet::new();
        for ns in [&client, &server, &self.nodes[0].host, &self.nodes[1].host] {
            for pid in procstat::netns_pids(ns.name()) {
                match comm(pid).as_deref() {
                    Some("h2load") | None => {}
                    Some("nginx") => {
                        app.insert(pid);
                    }
                    Some(_) => {
                        host.insert(pid);
                    }
                }
            }
        }
        let dpu: BTreeSet<u32> = self
            .nodes
            .iter()
            .flat_map(|n| procstat::netns_pids(n.dpu.name()))
            .collect();
        let before = [&host, &dpu, &app].map(procstat::sample_all);
        let result = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let after = [&host, &dpu, &app].map(procstat::sample_all);
        result.require_ok()?;
        let cpu = |i: usize| (after[i].cpu_s - before[i].cpu_s).max(0.0);
        let mesh_rss_kb = match way {
            Way::Direct => 0.0,
            Way::Sidecar => self.sidecar_rss_kb().iter().sum::<u64>() as f64,
            Way::Dpumesh => self
                .proxy_pids()
                .iter()
                .map(|p| procstat::sample_all(&with_children(*p)).rss_kb)
                .sum::<u64>() as f64,
        };
        Ok(Sample {
            rps: result.rps,
            requests: if result.requests > 0 {
                result.requests as f64
            } else {
                result.rps * duration.as_secs_f64()
            },
            p50: result.p50_ms,
            p90: result.p90_ms,
            p99: result.p99_ms,
            host_cpu_s: cpu(0),
            dpu_cpu_s: cpu(1),
            app_cpu_s: cpu(2),
            mesh_rss_kb,
        })
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        self.sim
            .processes()
            .ok()?
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
    }

    fn proxy_pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| self.pid_of(&format!("dpu-proxy-n{}", n.index)))
            .collect()
    }

    fn sidecar_rss_kb(&self) -> Vec<u64> {
        self.sidecars
            .iter()
            .filter_map(|s| self.pid_of(s))
            .map(|p| procstat::sample_all(&with_children(p)).rss_kb)
            .collect()
    }

    /// What one pod's sidecar costs: the mean RSS of the two, after traffic.
    fn sidecar_rss_per_pod_kb(&self) -> Option<f64> {
        let v = self.sidecar_rss_kb();
        (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
    }

    /// Both sidecars must have handled HTTP requests (the redirect worked in
    /// both directions), read from their admin stats.
    fn check_sidecars_carried_traffic(&self) -> Result<()> {
        let (client, server) = self.pods_of(Way::Sidecar);
        for (ns, prefix) in [
            (client, "http.outbound_0.0.0.0_80."),
            (server, "http.inbound_0.0.0.0_80."),
        ] {
            let stats = http_body(
                ns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, SIDECAR_ADMIN)),
                "/stats?filter=downstream_rq_total",
            )?;
            let n: u64 = stats
                .lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|l| l.strip_prefix("downstream_rq_total: "))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum();
            if n == 0 {
                bail!(
                    "the sidecar in {} handled no request ({prefix}downstream_rq_total): {stats}",
                    ns.name()
                );
            }
        }
        // With mTLS, the server's sidecar must have completed TLS handshakes
        // on its inbound listener (and without, none).
        let ssl = http_body(
            server,
            SocketAddr::from((Ipv4Addr::LOCALHOST, SIDECAR_ADMIN)),
            "/stats?filter=listener.0.0.0.0_15006.ssl.handshake",
        )?;
        let handshakes: u64 = ssl
            .lines()
            .filter_map(|l| l.strip_prefix("listener.0.0.0.0_15006.ssl.handshake: "))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        if self.mtls != (handshakes > 0) {
            bail!(
                "the server's sidecar completed {handshakes} TLS handshake(s) with mTLS {}",
                if self.mtls { "on" } else { "off" }
            );
        }
        Ok(())
    }

    /// The dpumesh way went the configured way: node 2's dpu-proxy counted
    /// inbound requests (TCP connections with `--l4`) under
    /// `connection_security_policy="mutual_tls"` (HBONE) with mTLS on,
    /// `"none"` without, and none under the other; with `--l4`, no inbound
    /// HTTP requests at all.
    fn check_dpumesh_security(&self) -> Result<()> {
        let metrics = http_body(
            self.nodes[1].netns(Place::Dpu),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            "/metrics",
        )
        .context("node 2's dpu-proxy metrics")?;
        let (want, other) = if self.mtls {
            ("mutual_tls", "none")
        } else {
            ("none", "mutual_tls")
        };
        let (metric, what) = if self.l4 {
            ("istio_tcp_connections_opened_total", "TCP connection(s)")
        } else {
            ("istio_requests_total", "request(s)")
        };
        let count = |policy: &str| super::mtls::inbound_count(&metrics, metric, policy);
        if count(want) <= 0.0 || count(other) > 0.0 {
            bail!(
                "dpumesh: node 2 counted {} inbound {what} as {want} and {} as {other}",
                count(want),
                count(other)
            );
        }
        let http = super::mtls::inbound_count(&metrics, "istio_requests_total", want);
        if self.l4 && http > 0.0 {
            bail!(
                "dpumesh --l4: node 2 parsed {http} inbound HTTP request(s); it should relay at L4"
            );
        }
        Ok(())
    }

    /// RSS of node 1's dpu-proxy with the dpumesh way's pods, then with
    /// `ADDED_PODS` and `2 × ADDED_PODS` more in its NodeConfig, each after
    /// some traffic through it.
    fn pod_memory(&self, traffic_s: f64) -> Result<PodMemory> {
        let pid = self
            .pid_of("dpu-proxy-n1")
            .context("node 1's dpu-proxy is not running")?;
        let mut points = Vec::new();
        for extra in [0, ADDED_PODS, 2 * ADDED_PODS] {
            if extra > 0 {
                self.push_mesh_configs(extra)?;
            }
            self.wait_ready(Way::Dpumesh)?;
            let spec = LoadSpec {
                url: format!("http://{}/", Way::Dpumesh.target()),
                version: HttpVersion::Http1,
                connections: 16,
                duration: Duration::from_secs_f64(traffic_s),
                warmup: Duration::from_millis(100),
                netns: Some(self.pods_of(Way::Dpumesh).0.name().to_string()),
            };
            load::run(&spec, &self.work)?;
            let rss = procstat::sample(pid)
                .context("node 1's dpu-proxy exited")?
                .rss_kb;
            points.push((1 + extra, rss));
        }
        let kb_per_pod = match points.as_slice() {
            [.., (p1, r1), (p2, r2)] => (*r2 as f64 - *r1 as f64) / (*p2 - *p1) as f64,
            _ => 0.0,
        };
        Ok(PodMemory { points, kb_per_pod })
    }
}

/// /proc/<pid>/comm, without the newline.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// One HTTP/1.1 GET from inside `ns`; the body of a 200 answer.
pub(crate) fn http_body(ns: &Netns, to: SocketAddr, path: &str) -> Result<String> {
    let path = path.to_string();
    run_in(ns, move || -> Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .with_context(|| format!("reading the answer from {to}"))?;
        let text = String::from_utf8_lossy(&all).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP answer from {to}: {text:?}"))?;
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("{to}{path}: {head}");
        }
        Ok(body.to_string())
    })?
}

/// Node `node`'s dataplane (eBPF; underlay, the other node as its peer), with
/// `pods` registered over its control API from the host netns, as the CNI does.
pub(crate) fn start_dataplane(
    sim: &Sim,
    node: &Node,
    all: &[Node],
    program: &Path,
    pods: Vec<PodSteering>,
) -> Result<()> {
    let dp_mgmt = mgmt(node, DATAPLANE_PORT);
    sim.spawn_with(
        SpawnSpec::new(
            format!("dataplane-n{}", node.index),
            node.netns(Place::Dpu).clone(),
            program.display().to_string(),
        )
        .args([
            "--node".to_string(),
            node_name(node),
            // Pins under the simulator's per-node dir: `down` removes them.
            "--node-id".into(),
            format!("{}-n{}", sim.cluster(), node.index),
            "--mgmt-addr".into(),
            dp_mgmt.clone(),
            "--admin-addr".into(),
            "127.0.0.1:15091".into(),
            "--backend".into(),
            "ebpf".into(),
        ])
        .health(dp_mgmt.clone()),
    )
    .context("starting the dataplane")?;
    wait_tcp(
        &node.host,
        dp_mgmt.parse().context("dataplane address")?,
        "the dataplane",
        Duration::from_secs(20),
    )?;
    let network = NodeNetwork {
        node_name: node_name(node),
        mode: NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        peers: all
            .iter()
            .filter(|p| p.index != node.index)
            .map(|p| PeerNode {
                name: node_name(p),
                pod_cidr: p.pod_cidr.to_string(),
                underlay_ip: p.uplink.addr().to_string(),
            })
            .collect(),
        gateway_ip: String::new(),
    };
    run_in(&node.host, move || {
        client_runtime()?.block_on(async move {
            let mut dp = dpumesh_api::client::dataplane(&dp_mgmt)
                .await
                .with_context(|| format!("dataplane at {dp_mgmt}"))?;
            dp.set_node_network(SetNodeNetworkRequest {
                network: Some(network),
            })
            .await
            .context("SetNodeNetwork")?;
            for pod in pods {
                let uid = pod.pod_uid.clone();
                dp.add_pod(AddPodRequest { pod: Some(pod) })
                    .await
                    .with_context(|| format!("AddPod {uid}"))?;
            }
            anyhow::Ok(())
        })
    })?
}

pub(crate) fn start_nginx(
    sim: &Sim,
    work: &Path,
    ns: &Netns,
    pod: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    let dir = work.join(format!("nginx-{pod}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir))
        .with_context(|| format!("writing {}", conf.display()))?;
    sim.spawn_with(
        SpawnSpec::new(format!("nginx-{pod}"), ns.clone(), "nginx").args([
            "-c".to_string(),
            conf.display().to_string(),
            "-p".into(),
            dir.display().to_string(),
        ]),
    )
    .with_context(|| format!("starting nginx in {pod}"))?;
    wait_tcp(
        ns,
        SocketAddr::from((ip, APP_PORT)),
        "nginx",
        Duration::from_secs(10),
    )
}

/// The application: one nginx worker answering 200 "ok" on :80.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {APP_PORT};
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
    )
}

/// The dpumesh way's NodeConfig of node `i` (0: client's, 1: server's): its
/// local pod (plus `extra` more on node 1) and the service, whose endpoint is
/// the server pod on node 2.
fn mesh_config(
    node: &Node,
    i: usize,
    version: u64,
    extra: usize,
    mtls: bool,
    l4: bool,
) -> Result<NodeConfig> {
    let way = Way::Dpumesh;
    let (pod, ip) = if i == 0 {
        (way.client_pod(), way.client_ip())
    } else {
        (way.server_pod(), way.server_ip())
    };
    let v = node
        .vf(way.vf())
        .with_context(|| format!("node {} has no VF {}", node.index, way.vf()))?;
    let mut pods = vec![json!({
        "uid": format!("uid-{pod}"), "name": pod, "namespace": NAMESPACE, "serviceAccount": pod,
        "labels": {"app": pod}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
        "vfIndex": v.index, "representor": v.representor})];
    for k in 0..extra {
        // 10.244.<i>.20 and up; VFs past the simulator's (config only).
        let ip = Ipv4Addr::from(u32::from(node.pod_cidr.network()) + 20 + u32::try_from(k)?);
        pods.push(json!({
            "uid": format!("uid-extra-{k}"), "name": format!("extra-{k}"), "namespace": NAMESPACE,
            "serviceAccount": format!("app{}", k % 20),
            "labels": {"app": format!("app{}", k % 20), "version": "v1"},
            "ips": [ip.to_string()], "mac": format!("02:64:6d:02:{:02x}:{:02x}", k / 256, k % 256),
            "vfIndex": 100 + k, "representor": format!("pf0vf{}", 100 + k)}));
    }
    let cfg = json!({
        "version": version,
        "node": {"name": node_name(node), "networkMode": "underlay",
                 "podCidr": node.pod_cidr.to_string(), "serviceCidrs": ["10.96.0.0/16"],
                 "dpuMgmtAddr": mgmt(node, PROXY_CONTROL_PORT), "trustDomain": TRUST_DOMAIN},
        "pods": pods,
        "services": [{
            "hostname": SERVICE, "namespace": NAMESPACE, "vips": [VIP.to_string()],
            "ports": [{"port": APP_PORT, "name": if l4 { "tcp" } else { "http" },
                       "targetPort": APP_PORT}],
            "endpoints": [{"address": way.server_ip().to_string(), "node": "n2",
                           "labels": {"app": way.server_pod()},
                           "serviceAccount": way.server_pod()}],
        }],
        // ISTIO_MUTUAL: HBONE to node 2's DPU; DISABLE: plaintext.
        "clusters": [{"name": format!("outbound|{APP_PORT}||{SERVICE}"), "service": SERVICE,
                      "port": APP_PORT, "tls": if mtls { "ISTIO_MUTUAL" } else { "DISABLE" }}],
    });
    serde_json::from_value(cfg).context("the dpumesh NodeConfig")
}

/// The nat rules istio-init installs (default ports, uid/gid 1337), as
/// argument lists for `iptables`.
fn istio_init_rules() -> Vec<Vec<&'static str>> {
    let r = |s: &'static str| s.split(' ').collect::<Vec<_>>();
    vec![
        r("-t nat -N ISTIO_INBOUND"),
        r("-t nat -N ISTIO_REDIRECT"),
        r("-t nat -N ISTIO_IN_REDIRECT"),
        r("-t nat -N ISTIO_OUTPUT"),
        r("-t nat -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN"),
        r("-t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        r("-t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"),
        r("-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND"),
        r("-t nat -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN"),
        r("-t nat -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN"),
        r("-t nat -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN"),
        r("-t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"),
        r("-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT"),
        r("-t nat -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"),
        r("-t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT"),
        r("-t nat -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
        r("-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
    ]
}

/// One sidecar's mTLS material, as istio-agent hands it to Envoy over SDS:
/// its workload certificate (SPIFFE URI SAN) and key, the mesh root, and the
/// identity of the peer it talks to.
struct SidecarTls {
    chain: PathBuf,
    key: PathBuf,
    root: PathBuf,
    /// The peer's SPIFFE ID: the server's, which the client verifies.
    peer: String,
}

impl SidecarTls {
    /// Signs `pod`'s certificate with the cluster's CA root (created if
    /// missing, as dpu-proxy does) and writes it, its key and the root
    /// certificate under `work`. `pods` is (client, server).
    fn issue(ca_root: &Path, work: &Path, pod: &str, pods: &[String; 2]) -> Result<SidecarTls> {
        use rcgen::{
            CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        dpu_proxy::identity::BuiltinCa::with_shared_root(
            dpu_proxy::identity::CaConfig::new(TRUST_DOMAIN),
            ca_root,
        )
        .with_context(|| format!("the CA root {}", ca_root.display()))?;
        let pem = std::fs::read_to_string(ca_root)
            .with_context(|| format!("reading {}", ca_root.display()))?;
        let root_pem = pem
            .find("-----BEGIN CERTIFICATE-----")
            .map(|i| &pem[i..])
            .with_context(|| format!("{}: no certificate", ca_root.display()))?;
        let root_key = KeyPair::from_pem(&pem).context("the CA root's key")?;
        let issuer =
            Issuer::from_ca_cert_pem(root_pem, root_key).context("the CA root's certificate")?;
        let spiffe = |sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}");
        let key = KeyPair::generate().context("a sidecar key")?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(
            spiffe(pod).try_into().context("a SPIFFE URI")?,
        )];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&key, &issuer)
            .context("signing a sidecar certificate")?;
        let tls = SidecarTls {
            chain: work.join(format!("{pod}-cert.pem")),
            key: work.join(format!("{pod}-key.pem")),
            root: work.join("root-cert.pem"),
            peer: spiffe(&pods[1]),
        };
        // Envoy runs as uid 1337: the files must be readable by it.
        for (path, content) in [
            (&tls.chain, cert.pem()),
            (&tls.key, key.serialize_pem()),
            (&tls.root, root_pem.to_string()),
        ] {
            std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(tls)
    }

    /// The `common_tls_context` fields both directions share.
    fn common(&self, indent: usize, alpn: &str, peer_san: &str) -> String {
        let pad = " ".repeat(indent);
        format!(
            "{pad}alpn_protocols: {alpn}\n\
             {pad}tls_certificates:\n\
             {pad}- certificate_chain: {{filename: {}}}\n\
             {pad}  private_key: {{filename: {}}}\n\
             {pad}validation_context:\n\
             {pad}  trusted_ca: {{filename: {}}}\n\
             {pad}  match_typed_subject_alt_names:\n\
             {pad}  - san_type: URI\n\
             {pad}    matcher: {peer_san}\n",
            self.chain.display(),
            self.key.display(),
            self.root.display(),
        )
    }
}

/// A static sidecar config in the shape Istio gives every sidecar: the
/// virtual outbound listener (15001, `use_original_dst`, passthrough for
/// what matches nothing), the `0.0.0.0_80` HTTP listener for the service
/// (routes to its cluster, the server pod), and the virtual inbound listener
/// (15006, `original_dst`, HTTP on port 80, to the app from 127.0.0.6).
///
/// With `tls` (Istio's default, auto mTLS with PeerAuthentication
/// PERMISSIVE): the service's cluster originates mTLS with Istio's ALPN
/// (`istio-http/1.1`, `istio`) and SNI, and verifies the server's SPIFFE ID;
/// the inbound listener finds TLS with the TLS inspector, terminates it with
/// a client certificate required and checked against the mesh root and
/// trust domain, as Istio's inbound `tls` filter chain does.
fn sidecar_conf(server: Ipv4Addr, tls: Option<&SidecarTls>) -> String {
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    let sock = "envoy.transport_sockets.tls";
    let (upstream_tls, inspector, inbound_match, downstream_tls) = match tls {
        None => Default::default(),
        Some(t) => (
            format!(
                "    transport_socket:\n      name: {sock}\n      typed_config:\n        \
                 \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
                 sni: outbound_.{APP_PORT}_._.{SERVICE}\n        common_tls_context:\n{}",
                t.common(10, "[istio-http/1.1, istio]", &format!("{{exact: \"{}\"}}", t.peer))
            ),
            "    - name: envoy.filters.listener.tls_inspector\n      typed_config:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector\n"
                .to_string(),
            ", transport_protocol: tls, application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2]"
                .to_string(),
            format!(
                "      transport_socket:\n        name: {sock}\n        typed_config:\n          \
                 \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
                 require_client_certificate: true\n          common_tls_context:\n{}",
                t.common(
                    12,
                    "[h2, http/1.1]",
                    &format!("{{prefix: \"spiffe://{TRUST_DOMAIN}/\"}}")
                )
            ),
        ),
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {SIDECAR_ADMIN}}}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: {SIDECAR_OUTBOUND}}}}}
    use_original_dst: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: 0.0.0.0_{APP_PORT}
    address: {{socket_address: {{address: 0.0.0.0, port_value: {APP_PORT}}}}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: outbound_0.0.0.0_{APP_PORT}
          route_config:
            name: "{APP_PORT}"
            virtual_hosts:
            - name: "{SERVICE}:{APP_PORT}"
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: "outbound|{APP_PORT}||{SERVICE}"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {router}}}
  - name: virtualInbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: {SIDECAR_INBOUND}}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
{inspector}    filter_chains:
    - filter_chain_match: {{destination_port: {APP_PORT}{inbound_match}}}
{downstream_tls}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: inbound_0.0.0.0_{APP_PORT}
          route_config:
            name: "inbound|{APP_PORT}||"
            virtual_hosts:
            - name: inbound
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: "inbound|{APP_PORT}||"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {router}}}
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
  - name: "outbound|{APP_PORT}||{SERVICE}"
    type: STATIC
    connect_timeout: 2s
{upstream_tls}    load_assignment:
      cluster_name: "outbound|{APP_PORT}||{SERVICE}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {server}, port_value: {APP_PORT}}}}}}}
  - name: "inbound|{APP_PORT}||"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    upstream_bind_config: {{source_address: {{address: 127.0.0.6, port_value: 0}}}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(
        name: &str,
        p99: f64,
        host: f64,
        per1k: f64,
        pod_kb: Option<f64>,
        add: Option<f64>,
    ) -> Case {
        let mut extra = Map::new();
        extra.insert("host_cpu_s".into(), json!(host));
        extra.insert("mesh_cpu_s_per_1000_req".into(), json!(per1k));
        extra.insert("mem_per_pod_kb".into(), json!(pod_kb));
        extra.insert("add_p99_ms".into(), json!(add));
        Case {
            name: name.into(),
            protocol: "http1".into(),
            connections: 16,
            rps: 1000.0,
            p50_ms: Some(p99 / 2.0),
            p90_ms: Some(p99),
            p99_ms: Some(p99),
            cpu_s_per_req: None,
            rss_mb: None,
            extra,
        }
    }

    #[test]
    fn goals_compare_dpumesh_with_the_sidecars() {
        let good = [
            case("direct", 1.0, 0.0, 0.0, None, None),
            case("envoy-sidecar", 3.0, 4.0, 0.9, Some(40000.0), Some(2.0)),
            case("dpumesh", 1.5, 0.0, 0.2, Some(12.0), Some(0.5)),
        ];
        let g = goal_checks(&good, 16);
        assert_eq!(g.len(), 4);
        assert!(
            g.iter().all(|g| g.met),
            "{:?}",
            g.iter().map(|g| &g.text).collect::<Vec<_>>()
        );
        let bad = [
            case("envoy-sidecar", 3.0, 4.0, 0.9, Some(40000.0), Some(2.0)),
            case("dpumesh", 3.0, 0.5, 0.4, Some(150.0), Some(1.5)),
        ];
        let g = goal_checks(&bad, 16);
        assert!(goal_checks(&bad, 1).is_empty());
        assert!(g.iter().all(|g| !g.met));
        assert!(goals(&bad).join("\n").contains("NOT met"));
    }

    #[test]
    fn istio_rules_redirect_both_ways_and_exclude_the_proxy() {
        let rules: Vec<String> = istio_init_rules().iter().map(|r| r.join(" ")).collect();
        assert!(rules
            .iter()
            .any(|r| r.ends_with("REDIRECT --to-ports 15001")));
        assert!(rules
            .iter()
            .any(|r| r.ends_with("REDIRECT --to-ports 15006")));
        assert!(rules
            .iter()
            .any(|r| r.contains("--uid-owner 1337 -j RETURN")));
        assert_eq!(
            rules.last().map(String::as_str),
            Some("-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT")
        );
    }

    #[test]
    fn ways_have_distinct_pods_and_addresses() {
        let ips: BTreeSet<Ipv4Addr> = Way::ALL
            .iter()
            .flat_map(|w| [w.client_ip(), w.server_ip()])
            .collect();
        assert_eq!(ips.len(), 6);
        assert_eq!(
            Way::Direct.target().ip(),
            std::net::IpAddr::V4(Way::Direct.server_ip())
        );
        assert_eq!(Way::Dpumesh.target().ip(), std::net::IpAddr::V4(VIP));
        let conf = sidecar_conf(Way::Sidecar.server_ip(), None);
        assert!(conf.contains("use_original_dst: true"));
        assert!(conf.contains("10.244.2.11"));
        assert!(!conf.contains("transport_socket"));
    }

    #[test]
    fn sidecar_mtls_originates_with_istio_alpn_and_requires_client_certs() {
        let tls = SidecarTls {
            chain: "/w/c.pem".into(),
            key: "/w/k.pem".into(),
            root: "/w/r.pem".into(),
            peer: "spiffe://cluster.local/ns/bench/sa/server".into(),
        };
        let conf = sidecar_conf(Way::Sidecar.server_ip(), Some(&tls));
        assert!(conf.contains("UpstreamTlsContext"));
        assert!(conf.contains("alpn_protocols: [istio-http/1.1, istio]"));
        assert!(conf.contains("matcher: {exact: \"spiffe://cluster.local/ns/bench/sa/server\"}"));
        assert!(conf.contains("DownstreamTlsContext"));
        assert!(conf.contains("require_client_certificate: true"));
        assert!(conf.contains("transport_protocol: tls"));
        assert!(conf.contains("tls_inspector"));
        assert_eq!(
            conf.matches("certificate_chain: {filename: /w/c.pem}")
                .count(),
            2
        );
    }
}

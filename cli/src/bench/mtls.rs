//! `dpumesh bench mtls`: what HBONE (mTLS between the DPU proxies) costs.
//!
//! Topology (the `dpumesh` way of `bench mesh`, one pod pair): two simulator
//! nodes, the real eBPF dataplane and one dpu-proxy in each DPU, a meshed
//! client pod on node 1 and a meshed nginx pod on node 2. Both proxies share
//! one built-in CA root (`--ca-root-file` in the cluster's state dir).
//!
//! * Latency at a fixed rate: h2load in the client pod, HTTP/1.1 keep-alive,
//!   paced with `--rps` to `--rate` requests/s in total, to the service VIP.
//!   Two cases on the same topology, only the NodeConfig differs: the
//!   service's cluster with `tls: DISABLE` (plaintext between the DPUs) and
//!   with `tls: ISTIO_MUTUAL` (HBONE: HTTP/2 CONNECT over mTLS to node 2's
//!   15008). Each case checks it took its path: node 1's `/stats`
//!   `proxy.hbone_upstream` grew (mTLS) or did not (plaintext), and node 2's
//!   inbound `istio_requests_total` grew under
//!   `connection_security_policy="mutual_tls"` (mTLS) or `"none"` (plaintext).
//! * Handshake rate: new HBONE connections per second from node 1's DPU netns
//!   to the server pod's `<ip>:15008` on node 2 (steered by node 2's dataplane
//!   to its dpu-proxy), each a fresh TCP connection, a full mTLS handshake
//!   presenting the client pod's SPIFFE certificate (issued under the shared
//!   root, as node 1's proxy does) and checking the server's SPIFFE ID, then
//!   the HTTP/2 preface answered by the server's SETTINGS frame (which proves
//!   the server accepted the client certificate). No session resumption.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpu_proxy::identity::{tls::client_config, BuiltinCa, CaConfig, CertStore, SpiffeId};
use dpumesh_api::NodeConfig;
use dpumesh_sim::{unique_cluster, Netns, Node, Sim, SimConfig, SimGuard};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::load::{self, percentile, HttpVersion, LoadSpec};
use super::mesh::{http_body, mgmt, node_name, start_dataplane, start_dpu_proxies, start_nginx};
use super::procstat;
use super::proxy::{
    attach_pod, client_runtime, http_get, median, need, push_config, round, run_in, sibling,
    steering,
};
use super::report::{Case, Machine, Summary};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE: &str = "web.bench.svc.cluster.local";
const NAMESPACE: &str = "bench";
const TRUST_DOMAIN: &str = "cluster.local";
const APP_PORT: u16 = 80;
const HBONE_PORT: u16 = 15008;
const PROXY_CONTROL_PORT: u16 = 15080;
const PROXY_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const CLIENT_POD: &str = "mtls-client";
const SERVER_POD: &str = "mtls-server";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// The goal: HBONE adds at most this much to p99, in %.
const P99_OVERHEAD_GOAL_PCT: f64 = 15.0;
/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Debug, Args)]
pub struct MtlsArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run fit for CI: 3 s per case, one run, 1 s of handshakes.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of measurement per case (default 10, 3 with --quick).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Runs of both cases; the median of each figure is reported (default 3, 1 with --quick).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Total request rate of the latency cases, requests/s.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Client connections sharing that rate (each paced to rate/connections).
    #[arg(long, default_value_t = 10)]
    pub connections: u32,
    /// Concurrent handshakes in the handshake-rate measurement.
    #[arg(long, default_value_t = 4)]
    pub handshake_concurrency: u32,
    /// Simulator cluster name (default: a fresh unique one); it is torn down at the end.
    #[arg(long)]
    pub cluster: Option<String>,
}

/// The two transports between the DPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plaintext,
    Hbone,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Plaintext, Transport::Hbone];

    fn name(self) -> &'static str {
        match self {
            Transport::Plaintext => "dpumesh-plaintext",
            Transport::Hbone => "dpumesh-mtls",
        }
    }

    fn tls(self) -> &'static str {
        match self {
            Transport::Plaintext => "DISABLE",
            Transport::Hbone => "ISTIO_MUTUAL",
        }
    }

    /// node 2's inbound `connection_security_policy` for this transport.
    fn security_policy(self) -> &'static str {
        match self {
            Transport::Plaintext => "none",
            Transport::Hbone => "mutual_tls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    /// Processes in both DPU netns (dataplane, dpu-proxy), CPU seconds.
    dpu_cpu_s: f64,
    /// Tunnels node 1's proxy opened during the case (pooled ones of an
    /// earlier run of the same case may be reused: 0 is possible for mTLS).
    hbone_upstream: u64,
    /// node 2's inbound requests under the case's security policy.
    inbound_requests: f64,
}

#[derive(Debug, Clone, Default)]
struct Handshakes {
    count: u64,
    failed: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

pub fn run(args: MtlsArgs) -> Result<()> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let duration = Duration::from_secs_f64(
        args.duration
            .unwrap_or(if args.quick { 3.0 } else { 10.0 })
            .max(0.5),
    );
    let warmup = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let handshake_time = Duration::from_secs(if args.quick { 1 } else { 5 });
    if args.connections == 0 || args.rate < args.connections {
        bail!(
            "--rate ({}) must be at least --connections ({}), which must be at least 1",
            args.rate,
            args.connections
        );
    }
    if !args.rate.is_multiple_of(args.connections) {
        bail!(
            "--rate ({}) must be a multiple of --connections ({}): h2load paces each connection",
            args.rate,
            args.connections
        );
    }
    if args.handshake_concurrency == 0 {
        bail!("--handshake-concurrency must be at least 1");
    }
    need("h2load", "nghttp2-client")?;
    need("nginx", "nginx")?;
    let dpu_proxy = sibling("dpu-proxy")?;
    let dataplane = sibling("dpumesh-dataplane")?;
    let sim = SimGuard::up(
        SimConfig::new(
            args.cluster
                .clone()
                .unwrap_or_else(|| unique_cluster("bmtl")),
        )
        .with_nodes(2)
        .with_vfs(1),
    )
    .context("starting the simulator cluster")?;
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let bench = Bench::setup(&sim, &dpu_proxy, &dataplane)?;
    eprintln!(
        "cluster {}: {CLIENT_POD} on node 1 → {SERVICE} → {SERVER_POD} on node 2; {} req/s over {} connections",
        sim.cluster(),
        args.rate,
        args.connections
    );

    let mut samples: Vec<(Transport, Vec<Sample>)> =
        Transport::ALL.iter().map(|t| (*t, vec![])).collect();
    for run in 0..runs {
        for (t, v) in samples.iter_mut() {
            let s = bench
                .measure(*t, args.rate, args.connections, duration, warmup)
                .with_context(|| format!("case {} (run {})", t.name(), run + 1))?;
            eprintln!(
                "run {}/{runs} {:<18} {:>7.0} req/s p50 {:.3} p90 {:.3} p99 {:.3} ms, hbone tunnels {}, dpu cpu {:.2} s",
                run + 1,
                t.name(),
                s.rps,
                s.p50,
                s.p90,
                s.p99,
                s.hbone_upstream,
                s.dpu_cpu_s
            );
            v.push(s);
        }
    }
    let hs = bench
        .handshakes(args.handshake_concurrency, handshake_time)
        .context("handshake rate")?;
    let hs_rate = hs.count as f64 / hs.seconds.max(1e-9);
    eprintln!(
        "handshakes: {} ok, {} failed in {:.2} s ({:.0}/s, {} concurrent)",
        hs.count, hs.failed, hs.seconds, hs_rate, args.handshake_concurrency
    );
    if hs.count == 0 {
        bail!(
            "no HBONE connection completed against {SERVER_IP}:{HBONE_PORT}: {}",
            hs.first_error.as_deref().unwrap_or("no error recorded")
        );
    }

    let cases = build_cases(
        &samples,
        args.rate,
        args.connections,
        duration,
        &hs,
        args.handshake_concurrency,
    );
    let command = format!(
        "dpumesh bench mtls{}{}{}{}{}{}",
        if args.json { " --json" } else { "" },
        if args.quick { " --quick" } else { "" },
        args.duration
            .map(|d| format!(" --duration {d}"))
            .unwrap_or_default(),
        args.runs
            .map(|r| format!(" --runs {r}"))
            .unwrap_or_default(),
        if args.rate != 1000 {
            format!(" --rate {}", args.rate)
        } else {
            String::new()
        },
        if args.connections != 10 {
            format!(" --connections {}", args.connections)
        } else {
            String::new()
        },
    );
    let summary = Summary {
        scenario: "mtls".into(),
        machine: Machine::this(),
        command,
        cases,
    };
    print!("{}", summary.table());
    println!(
        "(median of {runs} run(s) of {:.1} s per case at {} req/s, HTTP/1.1 over {} connections; \
         handshakes: fresh TCP + mTLS (TLS 1.3, P-256 SPIFFE certificates) + HTTP/2 preface to \
         node 2's {SERVER_IP}:{HBONE_PORT} from node 1's DPU, {} concurrent, {:.1} s)",
        duration.as_secs_f64(),
        args.rate,
        args.connections,
        args.handshake_concurrency,
        hs.seconds
    );
    for line in goal_lines(&summary.cases) {
        println!("{line}");
    }
    drop(bench);
    drop(sim);
    if args.json {
        println!("{}", summary.json_line());
    }
    Ok(())
}

fn build_cases(
    samples: &[(Transport, Vec<Sample>)],
    rate: u32,
    conns: u32,
    duration: Duration,
    hs: &Handshakes,
    hs_concurrency: u32,
) -> Vec<Case> {
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let plain_p99 = samples
        .iter()
        .find(|(t, _)| *t == Transport::Plaintext)
        .map(|(_, v)| med(v, |s| s.p99));
    let mut cases = Vec::new();
    for (t, v) in samples {
        let p99 = med(v, |s| s.p99);
        let mut extra = Map::new();
        extra.insert("tls".into(), json!(t.tls()));
        extra.insert("target_rps".into(), json!(rate));
        extra.insert("runs".into(), json!(v.len()));
        extra.insert("duration_s".into(), json!(duration.as_secs_f64()));
        extra.insert("dpu_cpu_s".into(), json!(round(med(v, |s| s.dpu_cpu_s), 3)));
        extra.insert(
            "hbone_upstream".into(),
            json!(v.iter().map(|s| s.hbone_upstream).sum::<u64>()),
        );
        extra.insert(
            "node2_inbound_requests".into(),
            json!(v.iter().map(|s| s.inbound_requests).sum::<f64>()),
        );
        extra.insert(
            "connection_security_policy".into(),
            json!(t.security_policy()),
        );
        if *t == Transport::Hbone {
            let overhead = plain_p99.map(|p| overhead_pct(p, p99));
            extra.insert(
                "p99_overhead_pct".into(),
                overhead.map(|o| json!(round(o, 1))).unwrap_or(Value::Null),
            );
            extra.insert(
                "add_p99_ms".into(),
                plain_p99
                    .map(|p| json!(round(p99 - p, 3)))
                    .unwrap_or(Value::Null),
            );
            extra.insert("goal_p99_overhead_pct".into(), json!(P99_OVERHEAD_GOAL_PCT));
            extra.insert(
                "goal_met".into(),
                json!(overhead.is_some_and(|o| o <= P99_OVERHEAD_GOAL_PCT)),
            );
        }
        cases.push(Case {
            name: t.name().into(),
            protocol: HttpVersion::Http1.label().into(),
            connections: conns,
            rps: round(med(v, |s| s.rps), 1),
            p50_ms: Some(round(med(v, |s| s.p50), 3)),
            p90_ms: Some(round(med(v, |s| s.p90), 3)),
            p99_ms: Some(round(p99, 3)),
            cpu_s_per_req: None,
            rss_mb: None,
            extra,
        });
    }
    let mut lat = hs.latencies_us.clone();
    lat.sort_unstable();
    let ms = |p: f64| Some(round(percentile(&lat, p) / 1000.0, 3));
    let mut extra = Map::new();
    extra.insert(
        "measures".into(),
        json!("new HBONE connections/s from node 1's DPU to node 2's pod-ip:15008: TCP + mTLS handshake + HTTP/2 preface/SETTINGS; latencies are per connection"),
    );
    extra.insert("handshakes_ok".into(), json!(hs.count));
    extra.insert("handshakes_failed".into(), json!(hs.failed));
    extra.insert("duration_s".into(), json!(round(hs.seconds, 3)));
    cases.push(Case {
        name: "dpumesh-hbone-handshake".into(),
        protocol: "hbone".into(),
        connections: hs_concurrency,
        rps: round(hs.count as f64 / hs.seconds.max(1e-9), 1),
        p50_ms: ms(50.0),
        p90_ms: ms(90.0),
        p99_ms: ms(99.0),
        cpu_s_per_req: None,
        rss_mb: None,
        extra,
    });
    cases
}

/// How much `with` adds over `base`, in % of `base`.
fn overhead_pct(base: f64, with: f64) -> f64 {
    if base <= 0.0 {
        return f64::INFINITY;
    }
    (with - base) / base * 100.0
}

fn goal_lines(cases: &[Case]) -> Vec<String> {
    let Some(m) = cases.iter().find(|c| c.name == Transport::Hbone.name()) else {
        return vec![];
    };
    let o = m.extra.get("p99_overhead_pct").and_then(Value::as_f64);
    let met = m
        .extra
        .get("goal_met")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    vec![format!(
        "goal (issue 6): HBONE adds ≤ {P99_OVERHEAD_GOAL_PCT:.0} % to p99 at a fixed rate: {} — {}",
        o.map(|o| format!("{o:+.1} %"))
            .unwrap_or_else(|| "-".into()),
        if met { "met" } else { "NOT met" }
    )]
}

struct Bench<'a> {
    sim: &'a Sim,
    nodes: [Node; 2],
    client: Netns,
    work: PathBuf,
    ca_root: PathBuf,
    version: std::cell::Cell<u64>,
}

impl<'a> Bench<'a> {
    fn setup(sim: &'a Sim, dpu_proxy: &Path, dataplane: &Path) -> Result<Bench<'a>> {
        let nodes = [sim.node(1)?.clone(), sim.node(2)?.clone()];
        let work = sim.state_dir().join("bench-mtls");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let client = attach_pod(sim, &nodes[0], 0, CLIENT_POD, CLIENT_IP)?;
        let server = attach_pod(sim, &nodes[1], 0, SERVER_POD, SERVER_IP)?;
        for (i, (pod, ip)) in [(CLIENT_POD, CLIENT_IP), (SERVER_POD, SERVER_IP)]
            .into_iter()
            .enumerate()
        {
            let st = steering(&format!("uid-{pod}"), pod, &nodes[i], 0, ip)?;
            start_dataplane(sim, &nodes[i], &nodes, dataplane, vec![st])?;
        }
        start_nginx(sim, &work, &server, SERVER_POD, SERVER_IP)?;
        let bench = Bench {
            sim,
            nodes,
            client,
            ca_root: sim.state_dir().join("ca-root.pem"),
            work,
            version: std::cell::Cell::new(0),
        };
        bench.start_proxies(dpu_proxy)?;
        Ok(bench)
    }

    fn start_proxies(&self, dpu_proxy: &Path) -> Result<()> {
        let extra = [
            "--trust-domain".to_string(),
            TRUST_DOMAIN.into(),
            // One root for both nodes of this cluster, so they trust each other.
            "--ca-root-file".into(),
            self.ca_root.display().to_string(),
        ];
        start_dpu_proxies(self.sim, &self.nodes, dpu_proxy, &extra)
    }

    /// Both nodes' NodeConfig with the service's cluster in `transport`'s TLS mode.
    fn push_configs(&self, transport: Transport) -> Result<()> {
        let version = self.version.get() + 1;
        self.version.set(version);
        for (i, node) in self.nodes.iter().enumerate() {
            let config = node_config(node, i, version, transport)?;
            push_config(&node.host, &mgmt(node, PROXY_CONTROL_PORT), config)
                .with_context(|| format!("pushing the NodeConfig to node {}", node.index))?;
        }
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let target = SocketAddr::from((VIP, APP_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(&self.client, target, SERVICE) {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{SERVER_POD} never answered 200 through {target}: {last}")
    }

    fn admin(&self, node: usize, path: &str) -> Result<String> {
        http_body(&self.nodes[node].dpu, PROXY_ADMIN, path)
            .with_context(|| format!("node {}'s dpu-proxy {path}", node + 1))
    }

    fn hbone_upstream(&self) -> Result<u64> {
        let stats: Value = serde_json::from_str(&self.admin(0, "/stats")?)
            .context("node 1's /stats is not JSON")?;
        stats["proxy"]["hbone_upstream"]
            .as_u64()
            .context("node 1's /stats has no proxy.hbone_upstream")
    }

    /// node 2's inbound requests per connection_security_policy.
    fn inbound_requests(&self, policy: &str) -> Result<f64> {
        Ok(inbound_requests(&self.admin(1, "/metrics")?, policy))
    }

    fn measure(
        &self,
        t: Transport,
        rate: u32,
        conns: u32,
        duration: Duration,
        warmup: Duration,
    ) -> Result<Sample> {
        self.push_configs(t)?;
        self.wait_ready()?;
        let tunnels_before = self.hbone_upstream()?;
        let other = Transport::ALL
            .into_iter()
            .find(|o| *o != t)
            .unwrap_or(Transport::Plaintext);
        let before = [
            self.inbound_requests(t.security_policy())?,
            self.inbound_requests(other.security_policy())?,
        ];
        let spec = LoadSpec {
            url: format!("http://{VIP}:{APP_PORT}/"),
            version: HttpVersion::Http1,
            connections: conns,
            duration,
            warmup,
            netns: Some(self.client.name().to_string()),
        };
        let scratch = self.work.clone();
        let per_conn = format!("--rps={}", rate / conns);
        let load = std::thread::spawn(move || load::run_with(&spec, &scratch, &[per_conn]));
        std::thread::sleep(warmup);
        let dpu: BTreeSet<u32> = self
            .nodes
            .iter()
            .flat_map(|n| procstat::netns_pids(n.dpu.name()))
            .collect();
        let cpu_before = procstat::sample_all(&dpu).cpu_s;
        let result = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let cpu_after = procstat::sample_all(&dpu).cpu_s;
        result.require_ok()?;
        if result.failed > 0 {
            bail!("{} request(s) failed: {result:?}", result.failed);
        }
        let tunnels_total = self.hbone_upstream()?;
        let tunnels = tunnels_total.saturating_sub(tunnels_before);
        let after = [
            self.inbound_requests(t.security_policy())?,
            self.inbound_requests(other.security_policy())?,
        ];
        let (mine, others) = (after[0] - before[0], after[1] - before[1]);
        check_path(t, tunnels, tunnels_total, mine, others)?;
        Ok(Sample {
            rps: result.rps,
            p50: result.p50_ms,
            p90: result.p90_ms,
            p99: result.p99_ms,
            dpu_cpu_s: (cpu_after - cpu_before).max(0.0),
            hbone_upstream: tunnels,
            inbound_requests: mine,
        })
    }

    /// New HBONE connections from node 1's DPU to the server pod's 15008 for
    /// `time`, `concurrency` at a time, as the client pod's identity.
    fn handshakes(&self, concurrency: u32, time: Duration) -> Result<Handshakes> {
        // The server pod's identity must be served: any config will do.
        self.push_configs(Transport::Hbone)?;
        self.wait_ready()?;
        let root = self.ca_root.clone();
        let target = SocketAddr::from((SERVER_IP, HBONE_PORT));
        run_in(&self.nodes[0].dpu, move || {
            client_runtime()?.block_on(handshake_loop(root, target, concurrency, time))
        })?
    }
}

/// Fails unless the case's traffic took its transport: node 2's inbound
/// requests counted under the case's security policy only; no tunnel opened
/// in a plaintext case; HBONE tunnels opened by node 1's proxy for an mTLS
/// case (`total`: since start, as pooled tunnels of an earlier run are reused).
fn check_path(t: Transport, tunnels: u64, total: u64, mine: f64, others: f64) -> Result<()> {
    match t {
        Transport::Hbone if total == 0 => {
            bail!("mTLS case: node 1's proxy opened no HBONE tunnel (proxy.hbone_upstream is 0)")
        }
        Transport::Plaintext if tunnels > 0 => {
            bail!("plaintext case: node 1's proxy opened {tunnels} HBONE tunnel(s)")
        }
        _ => {}
    }
    if mine <= 0.0 {
        bail!(
            "{}: node 2 counted no inbound request with connection_security_policy=\"{}\"",
            t.name(),
            t.security_policy()
        );
    }
    if others > 0.0 {
        bail!(
            "{}: node 2 counted {others} inbound request(s) under the other security policy",
            t.name()
        );
    }
    Ok(())
}

/// Sum of node 2's `istio_requests_total` with `reporter="destination"` and
/// the given `connection_security_policy`, from Prometheus text.
pub(crate) fn inbound_requests(metrics: &str, policy: &str) -> f64 {
    inbound_count(metrics, "istio_requests_total", policy)
}

/// The sum of counter `metric` over its destination-reported series with
/// `connection_security_policy` = `policy`, in a Prometheus text page.
pub(crate) fn inbound_count(metrics: &str, metric: &str, policy: &str) -> f64 {
    let want = format!("connection_security_policy=\"{policy}\"");
    let series = format!("{metric}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter(|l| l.contains("reporter=\"destination\"") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn handshake_loop(
    root: PathBuf,
    target: SocketAddr,
    concurrency: u32,
    time: Duration,
) -> Result<Handshakes> {
    let ca = BuiltinCa::with_shared_root(CaConfig::new(TRUST_DOMAIN), &root)
        .with_context(|| format!("loading the shared CA root {}", root.display()))?;
    let store = Arc::new(CertStore::new(TRUST_DOMAIN, Arc::new(ca))?);
    let src = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, CLIENT_POD)?;
    let expected = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, SERVER_POD)?;
    store
        .sync(&[(src.clone(), vec![IpAddr::V4(CLIENT_IP)])])
        .await
        .context("issuing the client pod's certificate")?;
    let tls = Arc::new(client_config(&store, src, expected).context("TLS client config")?);
    let connector = tokio_rustls::TlsConnector::from(tls);
    let start = Instant::now();
    let end = start + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let connector = connector.clone();
        tasks.spawn(async move {
            let mut h = Handshakes::default();
            while Instant::now() < end {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    hbone_connect(&connector, target),
                )
                .await
                {
                    Ok(Ok(d)) => {
                        h.count += 1;
                        h.latencies_us.push(d.as_micros() as u64);
                    }
                    Ok(Err(e)) => {
                        h.failed += 1;
                        h.first_error.get_or_insert(format!("{e:#}"));
                    }
                    Err(_) => {
                        h.failed += 1;
                        h.first_error.get_or_insert("timed out after 5 s".into());
                    }
                }
            }
            h
        });
    }
    let mut all = Handshakes::default();
    while let Some(h) = tasks.join_next().await {
        let h = h.context("a handshake task panicked")?;
        all.count += h.count;
        all.failed += h.failed;
        all.latencies_us.extend(h.latencies_us);
        if all.first_error.is_none() {
            all.first_error = h.first_error;
        }
    }
    all.seconds = start.elapsed().as_secs_f64();
    Ok(all)
}

/// One new HBONE connection: TCP, mTLS (ALPN h2), the HTTP/2 preface and
/// SETTINGS, until the server's first frame (its SETTINGS) arrives.
async fn hbone_connect(
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
) -> Result<Duration> {
    let t0 = Instant::now();
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("mTLS handshake")?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        bail!("the server did not select ALPN h2");
    }
    tls.write_all(H2_PREFACE).await.context("HTTP/2 preface")?;
    let mut head = [0u8; 9];
    tls.read_exact(&mut head)
        .await
        .context("reading the server's first HTTP/2 frame (refused client certificate?)")?;
    if head[3] != 0x4 {
        bail!(
            "the server's first HTTP/2 frame is type {}, not SETTINGS",
            head[3]
        );
    }
    let took = t0.elapsed();
    let _ = tls.shutdown().await;
    Ok(took)
}

/// Node `i`'s (0: client's, 1: server's) NodeConfig: its pod and the
/// service, whose endpoint is the server pod on node 2, with its cluster in
/// `transport`'s TLS mode.
fn node_config(node: &Node, i: usize, version: u64, transport: Transport) -> Result<NodeConfig> {
    let (pod, ip) = if i == 0 {
        (CLIENT_POD, CLIENT_IP)
    } else {
        (SERVER_POD, SERVER_IP)
    };
    let v = node
        .vf(0)
        .with_context(|| format!("node {} has no VF 0", node.index))?;
    let cfg = json!({
        "version": version,
        "node": {"name": node_name(node), "networkMode": "underlay",
                 "podCidr": node.pod_cidr.to_string(), "serviceCidrs": ["10.96.0.0/16"],
                 "dpuMgmtAddr": mgmt(node, PROXY_CONTROL_PORT), "trustDomain": TRUST_DOMAIN},
        "pods": [{
            "uid": format!("uid-{pod}"), "name": pod, "namespace": NAMESPACE, "serviceAccount": pod,
            "labels": {"app": pod}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
            "vfIndex": v.index, "representor": v.representor}],
        "services": [{
            "hostname": SERVICE, "namespace": NAMESPACE, "vips": [VIP.to_string()],
            "ports": [{"port": APP_PORT, "name": "http", "targetPort": APP_PORT}],
            "endpoints": [{"address": SERVER_IP.to_string(), "node": "n2",
                           "labels": {"app": SERVER_POD}, "serviceAccount": SERVER_POD}],
        }],
        "clusters": [{"name": format!("outbound|{APP_PORT}||{SERVICE}"), "service": SERVICE,
                      "port": APP_PORT, "tls": transport.tls()}],
    });
    serde_json::from_value(cfg).context("the bench's NodeConfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inbound_requests_per_security_policy() {
        let m = "# TYPE istio_requests_total counter\n\
istio_requests_total{reporter=\"destination\",source_workload=\"x\",connection_security_policy=\"mutual_tls\"} 7\n\
istio_requests_total{reporter=\"destination\",connection_security_policy=\"none\"} 2\n\
istio_requests_total{reporter=\"source\",connection_security_policy=\"unknown\"} 9\n\
istio_requests_total{reporter=\"destination\",response_code=\"503\",connection_security_policy=\"mutual_tls\"} 1\n";
        assert_eq!(inbound_requests(m, "mutual_tls"), 8.0);
        assert_eq!(inbound_requests(m, "none"), 2.0);
        assert_eq!(inbound_requests(m, "unknown"), 0.0);
    }

    #[test]
    fn a_case_that_took_the_wrong_path_fails() {
        assert!(check_path(Transport::Hbone, 3, 3, 10.0, 0.0).is_ok());
        assert!(check_path(Transport::Hbone, 0, 3, 10.0, 0.0).is_ok());
        assert!(check_path(Transport::Hbone, 0, 0, 10.0, 0.0).is_err());
        assert!(check_path(Transport::Hbone, 3, 3, 0.0, 10.0).is_err());
        assert!(check_path(Transport::Hbone, 3, 3, 10.0, 1.0).is_err());
        assert!(check_path(Transport::Plaintext, 0, 5, 10.0, 0.0).is_ok());
        assert!(check_path(Transport::Plaintext, 1, 5, 10.0, 0.0).is_err());
        assert!(check_path(Transport::Plaintext, 0, 5, 10.0, 1.0).is_err());
    }

    #[test]
    fn overhead_and_goal() {
        assert_eq!(overhead_pct(1.0, 1.1).round(), 10.0);
        let s = |p99| Sample {
            rps: 1000.0,
            p50: 0.5,
            p90: 0.8,
            p99,
            ..Sample::default()
        };
        let hs = Handshakes {
            count: 10,
            seconds: 1.0,
            latencies_us: vec![1000; 10],
            ..Handshakes::default()
        };
        let cases = build_cases(
            &[
                (Transport::Plaintext, vec![s(1.0)]),
                (Transport::Hbone, vec![s(1.3)]),
            ],
            1000,
            10,
            Duration::from_secs(1),
            &hs,
            4,
        );
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[1].extra["p99_overhead_pct"], json!(30.0));
        assert_eq!(cases[1].extra["goal_met"], json!(false));
        assert!(goal_lines(&cases)[0].contains("NOT met"));
        assert_eq!(cases[2].rps, 10.0);
        assert_eq!(cases[2].p99_ms, Some(1.0));
    }
}

//! `dpumesh bench cni`: ADD and DEL latency of the real `dpumesh-cni` binary
//! (simulator VF backend, real host-local, the real dataplane in the DPU netns),
//! side by side with the reference `bridge` plugin + host-local on a plain
//! veth, in one fresh simulator cluster. Cycles of the two alternate, so both
//! see the same machine load. Each invocation is timed from spawn to exit, as
//! the runtime sees it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_api::proto::v1::{NetworkMode, NodeNetwork, SetNodeNetworkRequest};
use dpumesh_sim::{unique_cluster, Netns, Place, SimConfig, SimGuard, SpawnSpec};
use serde_json::{json, Map, Value};

use super::report::{Case, Machine, Summary};

const DATAPLANE_PORT: u16 = 15081;
const PLUGINS: &str = "/usr/lib/cni";
/// The issue's goal for ADD p99.
const ADD_P99_GOAL_MS: f64 = 50.0;

#[derive(Debug, Args)]
pub struct CniArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run (fit for CI).
    #[arg(long)]
    pub quick: bool,
    /// ADD/DEL cycles per plugin (default 300, 40 with --quick).
    #[arg(long)]
    pub cycles: Option<usize>,
}

/// Latencies of one plugin, in milliseconds.
#[derive(Debug, Default)]
struct Samples {
    add: Vec<f64>,
    del: Vec<f64>,
}

/// p50/p90/p99 (nearest rank) and mean of `v`, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

pub fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
        s[i]
    };
    Some(Stats {
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One plugin under test: its binary, its network config, its pod netns.
struct Subject {
    name: &'static str,
    program: PathBuf,
    conf: Vec<u8>,
    netns: Netns,
    cni_path: String,
    samples: Samples,
}

impl Subject {
    /// Runs one CNI command; `Ok(elapsed)` or an error with the plugin's output.
    fn invoke(&self, command: &str, id: &str) -> Result<(Duration, String)> {
        let mut c = Command::new(&self.program);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id};K8S_POD_UID=uid-{id}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(&self.conf).context("plugin stdin")?;
        }
        let out = child.wait_with_output().context("waiting for the plugin")?;
        let elapsed = t0.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{} {command} {id} failed: {stdout} {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((elapsed, stdout))
    }

    /// ADD then DEL of attachment `id`; records both when `record`.
    fn cycle(&mut self, id: &str, record: bool) -> Result<()> {
        let (add, result) = self.invoke("ADD", id)?;
        let r: Value = serde_json::from_str(&result)
            .with_context(|| format!("{} ADD result is not JSON: {result}", self.name))?;
        if r["ips"].as_array().is_none_or(|a| a.is_empty()) {
            bail!("{} ADD returned no IP: {result}", self.name);
        }
        let (del, _) = self.invoke("DEL", id)?;
        if record {
            self.samples.add.push(add.as_secs_f64() * 1e3);
            self.samples.del.push(del.as_secs_f64() * 1e3);
        }
        Ok(())
    }
}

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

/// Addresses host-local still holds in `data_dir/<network>`.
fn leases(data_dir: &Path, network: &str) -> usize {
    std::fs::read_dir(data_dir.join(network))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

pub fn run(args: CniArgs) -> Result<()> {
    let cycles = args.cycles.unwrap_or(if args.quick { 40 } else { 300 });
    if cycles == 0 {
        bail!("--cycles 0: need at least one cycle");
    }
    let cni = sibling("dpumesh-cni")?;
    let dataplane = sibling("dpumesh-dataplane")?;
    for p in ["host-local", "bridge"] {
        if !Path::new(PLUGINS).join(p).exists() {
            bail!("{PLUGINS}/{p} missing: install containernetworking-plugins");
        }
    }

    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("bcni"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .context("starting the simulator cluster")?;
    crate::interrupt::tear_down_on_signal(sim.cluster().to_string());
    let node = sim.node(1)?.clone();
    let mgmt = format!("{}:{DATAPLANE_PORT}", node.mgmt_dpu.addr());
    eprintln!(
        "cluster {}: 1 node, 2 VFs; dataplane in {}",
        sim.cluster(),
        node.dpu.name()
    );
    sim.spawn_with(
        SpawnSpec::new(
            "dataplane-n1",
            node.netns(Place::Dpu).clone(),
            dataplane.display().to_string(),
        )
        .args([
            "--node".to_string(),
            "node1".into(),
            "--mgmt-addr".into(),
            mgmt.clone(),
        ])
        .health(mgmt.clone()),
    )
    .context("starting the dataplane")?;
    set_node_network(
        &node.host,
        &mgmt,
        &node.pod_cidr.to_string(),
        &node.uplink.addr().to_string(),
    )?;

    // Plugin state and IPAM leases live in the cluster's state dir: `down` removes them.
    let work = sim.state_dir().join("bench-cni");
    let (state, ipam) = (work.join("cni-state"), work.join("ipam"));
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let dm_conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench-dpumesh",
        "type": "dpumesh-cni",
        "vfBackend": "sim",
        "dataplane": mgmt,
        "stateDir": state,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam,
            "ranges": [[{"subnet": node.pod_cidr.to_string(), "gateway": node.pod_gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    });
    let br_conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench-bridge",
        "type": "bridge",
        "bridge": "cnibench0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam,
            "ranges": [[{"subnet": "10.245.0.0/24", "gateway": "10.245.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    });
    let mut subjects = vec![
        Subject {
            name: "dpumesh-cni",
            program: cni,
            conf: serde_json::to_vec(&dm_conf)?,
            netns: sim.pod_add("bench-dm")?,
            cni_path: PLUGINS.into(),
            samples: Samples::default(),
        },
        Subject {
            name: "bridge-cni",
            program: Path::new(PLUGINS).join("bridge"),
            conf: serde_json::to_vec(&br_conf)?,
            netns: sim.pod_add("bench-br")?,
            cni_path: PLUGINS.into(),
            samples: Samples::default(),
        },
    ];

    // Every plugin runs from a thread inside the node's host netns, as the
    // runtime on that node would exec it (no `ip netns exec` in the timing).
    let warmup = 3;
    eprintln!("{cycles} ADD/DEL cycles per plugin (+{warmup} warm-up), alternating");
    let t0 = Instant::now();
    let host = node.host.clone();
    subjects = host
        .run(move || -> Result<Vec<Subject>> {
            for i in 0..warmup + cycles {
                for s in subjects.iter_mut() {
                    s.cycle(&format!("bench{i}"), i >= warmup)?;
                }
            }
            Ok(subjects)
        })
        .context("entering the host netns")??;
    let wall = t0.elapsed();

    // Nothing may leak: every VF back, no lease, no dataplane entry.
    let free = sim.free_vfs(1)?.len();
    let leaked = leases(&ipam, "bench-dpumesh") + leases(&ipam, "bench-bridge");
    let entries = list_pods(&node.host, &mgmt)?;
    if free != 2 || leaked != 0 || entries != 0 {
        bail!(
            "leak after the run: {free}/2 VFs free, {leaked} leases, {entries} dataplane entries"
        );
    }

    let mut cases = Vec::new();
    for s in &subjects {
        let (Some(add), Some(del)) = (stats(&s.samples.add), stats(&s.samples.del)) else {
            bail!("{}: no samples", s.name);
        };
        let mut extra = Map::new();
        extra.insert("cycles".into(), json!(s.samples.add.len()));
        extra.insert("add_p50_ms".into(), json!(round3(add.p50)));
        extra.insert("add_p99_ms".into(), json!(round3(add.p99)));
        extra.insert("add_mean_ms".into(), json!(round3(add.mean)));
        extra.insert("del_p50_ms".into(), json!(round3(del.p50)));
        extra.insert("del_p99_ms".into(), json!(round3(del.p99)));
        extra.insert("del_mean_ms".into(), json!(round3(del.mean)));
        if s.name == "dpumesh-cni" {
            extra.insert("add_p99_goal_ms".into(), json!(ADD_P99_GOAL_MS));
        }
        let cycle_ms: f64 = s.samples.add.iter().chain(&s.samples.del).sum();
        cases.push(Case {
            name: s.name.to_string(),
            protocol: "cni".into(),
            connections: 1,
            // ADD+DEL cycles per second of plugin time.
            rps: round3(s.samples.add.len() as f64 / (cycle_ms / 1e3)),
            p50_ms: Some(round3(add.p50)),
            p90_ms: Some(round3(add.p90)),
            p99_ms: Some(round3(add.p99)),
            cpu_s_per_req: None,
            rss_mb: None,
            extra,
        });
    }

    println!(
        "{:<12} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "plugin", "cycles", "ADD p50", "ADD p99", "ADD mean", "DEL p50", "DEL p99", "DEL mean"
    );
    let ms = |c: &Case, k: &str| c.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    for c in &cases {
        println!(
            "{:<12} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            c.name,
            c.extra.get("cycles").and_then(Value::as_u64).unwrap_or(0),
            ms(c, "add_p50_ms"),
            ms(c, "add_p99_ms"),
            ms(c, "add_mean_ms"),
            ms(c, "del_p50_ms"),
            ms(c, "del_p99_ms"),
            ms(c, "del_mean_ms"),
        );
    }
    if let Some(c) = cases.first() {
        let p99 = ms(c, "add_p99_ms");
        println!(
            "(ms, spawn to exit; {:.1} s wall) dpumesh-cni ADD p99 {p99:.2} ms: goal < {ADD_P99_GOAL_MS} ms {}",
            wall.as_secs_f64(),
            if p99 < ADD_P99_GOAL_MS { "met" } else { "NOT met" }
        );
    }
    if args.json {
        let summary = Summary {
            scenario: "cni".into(),
            machine: Machine::this(),
            command: format!(
                "dpumesh bench cni --json{}{}",
                if args.quick { " --quick" } else { "" },
                args.cycles
                    .map(|c| format!(" --cycles {c}"))
                    .unwrap_or_default()
            ),
            cases,
        };
        println!("{}", summary.json_line());
    }
    drop(sim);
    Ok(())
}

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")
}

/// Waits for the dataplane, then gives it the node's network (AddPod needs it).
fn set_node_network(host: &Netns, mgmt: &str, pod_cidr: &str, underlay: &str) -> Result<()> {
    let (mgmt, pod_cidr, underlay) = (mgmt.to_string(), pod_cidr.to_string(), underlay.to_string());
    host.run(move || {
        client_runtime()?.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut client = loop {
                match dpumesh_api::client::dataplane(&mgmt).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        return Err(anyhow::Error::new(e).context(format!("dataplane at {mgmt}")))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            client
                .set_node_network(SetNodeNetworkRequest {
                    network: Some(NodeNetwork {
                        node_name: "node1".into(),
                        mode: NetworkMode::Underlay as i32,
                        pod_cidr,
                        service_cidrs: vec!["10.96.0.0/16".into()],
                        underlay_ip: underlay,
                        vni: 0,
                        peers: vec![],
                        gateway_ip: String::new(),
                    }),
                })
                .await
                .context("SetNodeNetwork")?;
            anyhow::Ok(())
        })
    })
    .context("entering the host netns")?
}

fn list_pods(host: &Netns, mgmt: &str) -> Result<usize> {
    let mgmt = mgmt.to_string();
    host.run(move || {
        client_runtime()?.block_on(async move {
            let mut c = dpumesh_api::client::dataplane(&mgmt).await?;
            let pods = c
                .list_pods(dpumesh_api::proto::v1::ListPodsRequest {})
                .await
                .context("ListPods")?
                .into_inner()
                .pods;
            anyhow::Ok(pods.len())
        })
    })
    .context("entering the host netns")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = stats(&v).expect("stats");
        assert_eq!((s.p50, s.p90, s.p99), (50.0, 90.0, 99.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        let one = stats(&[7.0]).expect("stats");
        assert_eq!((one.p50, one.p99, one.mean), (7.0, 7.0, 7.0));
        assert!(stats(&[]).is_none());
        // Order does not matter.
        let s2 = stats(&[3.0, 1.0, 2.0]).expect("stats");
        assert_eq!(s2.p50, 2.0);
    }
}

//! `dpumesh demo`: the whole product on the local simulator, step by step.
//!
//! What it shows grows as components land. Today: a 2-node cluster with DPUs,
//! the DPU-side components started inside each DPU, their control APIs reached
//! from the host over the management link, a NodeConfig pushed and acknowledged,
//! a broken one refused while the good one keeps serving, and the cluster's state.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_api::config::{NetworkMode, NodeConfig, NodeInfo, Pod, API_VERSION};
use dpumesh_api::proto::v1::{NodeNetwork, PeerNode, PushOutcome, SetNodeNetworkRequest};
use dpumesh_sim::{Node, Place, Sim, SimConfig, SpawnSpec};

/// Port of dpu-proxy's control gRPC on the DPU management address.
const PROXY_CONTROL_PORT: u16 = 15080;
/// Port of the dataplane's control gRPC on the DPU management address.
const DATAPLANE_CONTROL_PORT: u16 = 15081;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulator cluster name.
    #[arg(short = 'c', long, env = "DPUMESH_CLUSTER", default_value = "demo")]
    pub cluster: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// VFs per node.
    #[arg(long, default_value_t = 8)]
    pub vfs: usize,
    /// Leave the cluster running afterwards (tear down with `dpumesh sim down -c <cluster>`).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let bin_dir = sibling_bin_dir()?;
    let config = SimConfig::new(args.cluster.clone())
        .with_nodes(args.nodes)
        .with_vfs(args.vfs);

    step(1, "bringing up the simulated cluster");
    let sim = Sim::up(config).context("dpumesh sim up")?;
    let result = run_steps(&sim, &bin_dir);
    match (&result, args.keep) {
        (Ok(()), true) => {
            println!();
            println!("The cluster is still running. Explore it with:");
            println!("  dpumesh sim status -c {}", sim.cluster());
            println!(
                "  ip netns exec {} ss -ltnp      # the DPU's listeners",
                sim.nodes()[0].dpu.name()
            );
            println!(
                "  dpumesh sim down -c {}        # tear it all down",
                sim.cluster()
            );
        }
        _ => {
            step(9, "tearing the cluster down");
            sim.down().context("dpumesh sim down")?;
        }
    }
    result?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_steps(sim: &Sim, bin_dir: &Path) -> Result<()> {
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
        "starting the DPU components (dataplane, dpu-proxy) inside each DPU",
    );
    for node in sim.nodes() {
        let mgmt = node.mgmt_dpu.addr();
        let node_name = node_name(node);
        for (name, program, port) in [
            ("dataplane", "dpumesh-dataplane", DATAPLANE_CONTROL_PORT),
            ("dpu-proxy", "dpu-proxy", PROXY_CONTROL_PORT),
        ] {
            let program = bin_dir.join(program);
            let spec = SpawnSpec::new(
                format!("{name}-n{}", node.index),
                node.netns(Place::Dpu).clone(),
                program.display().to_string(),
            )
            .args([
                "--node".to_string(),
                node_name.clone(),
                "--mgmt-addr".to_string(),
                format!("{mgmt}:{port}"),
            ])
            .health(format!("{mgmt}:{port}"));
            let record = sim
                .spawn_with(spec)
                .with_context(|| format!("starting {name} on node {}", node.index))?;
            println!(
                "  node {}: {name} pid {} on {mgmt}:{port}",
                node.index, record.pid
            );
        }
    }

    step(
        3,
        "checking each component over the management link (from the host)",
    );
    for node in sim.nodes() {
        for port in [DATAPLANE_CONTROL_PORT, PROXY_CONTROL_PORT] {
            let addr = format!("{}:{port}", node.mgmt_dpu.addr());
            let status = in_host(node, {
                let addr = addr.clone();
                move || async move { wait_status(&addr).await }
            })?;
            println!(
                "  node {}: {:<10} ready={} version={} config_version={} {}",
                node.index,
                status.component,
                status.ready,
                status.version,
                status.config_version,
                if status.reason.is_empty() {
                    String::new()
                } else {
                    format!("({})", status.reason)
                }
            );
        }
    }

    step(4, "creating pods as the container runtime would");
    let mut pods = Vec::new();
    for node in sim.nodes() {
        for k in 0..2 {
            let name = format!("app{}-{k}", node.index);
            sim.pod_add(&name)
                .with_context(|| format!("creating pod netns {name}"))?;
            pods.push((node.index, k, name));
        }
    }
    println!("  {} pod network namespaces", pods.len());

    step(5, "setting each node's network on its dataplane");
    for node in sim.nodes() {
        let network = node_network(sim, node);
        let addr = format!("{}:{DATAPLANE_CONTROL_PORT}", node.mgmt_dpu.addr());
        in_host(node, move || async move {
            let mut client = dpumesh_api::client::dataplane(&addr).await?;
            client
                .set_node_network(SetNodeNetworkRequest {
                    network: Some(network),
                })
                .await
                .context("SetNodeNetwork")?;
            anyhow::Ok(())
        })?;
        println!(
            "  node {}: underlay, pod CIDR {}, {} peer(s)",
            node.index,
            node.pod_cidr,
            sim.nodes().len() - 1
        );
    }

    step(6, "pushing a NodeConfig to each dpu-proxy");
    for node in sim.nodes() {
        let config = node_config(node, 1, &pods);
        let addr = format!("{}:{PROXY_CONTROL_PORT}", node.mgmt_dpu.addr());
        let response = push(node, &addr, &config)?;
        println!(
            "  node {}: version {} -> {:?}, serving version {}",
            node.index,
            config.version,
            PushOutcome::try_from(response.outcome).unwrap_or(PushOutcome::Unspecified),
            response.serving_version
        );
        if response.outcome != PushOutcome::Ack as i32 {
            bail!(
                "node {} refused a valid config: {:?}",
                node.index,
                response.errors
            );
        }
    }

    step(
        7,
        "pushing a broken NodeConfig: it must be refused and change nothing",
    );
    let node = &sim.nodes()[0];
    let mut broken = node_config(node, 2, &pods);
    if let Some(pod) = broken.pods.first_mut() {
        pod.ips = vec!["10.0.0.300".to_string()];
        pod.mac = "not-a-mac".to_string();
    }
    let addr = format!("{}:{PROXY_CONTROL_PORT}", node.mgmt_dpu.addr());
    let response = push(node, &addr, &broken)?;
    if response.outcome != PushOutcome::Nack as i32 || response.serving_version != 1 {
        bail!(
            "a broken config was not refused (outcome {}, serving {})",
            response.outcome,
            response.serving_version
        );
    }
    println!(
        "  node {}: NACK, still serving version {}; reasons:",
        node.index, response.serving_version
    );
    for e in &response.errors {
        println!("    - {e}");
    }

    step(8, "cluster state");
    let status = sim.status().context("dpumesh sim status")?;
    print!("{}", status.render_table());
    let dead: Vec<_> = status.processes.iter().filter(|p| !p.alive).collect();
    if !dead.is_empty() {
        bail!(
            "processes died during the demo: {}",
            dead.iter()
                .map(|p| format!("{} (log {})", p.name, p.log))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn node_name(node: &Node) -> String {
    format!("node-{}", node.index)
}

/// Runs an async client inside the node's host netns, on its own thread and runtime.
fn in_host<F, Fut, T>(node: &Node, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send,
{
    node.netns(Place::Host)
        .run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("client runtime")?;
            runtime.block_on(f())
        })
        .context("entering the host netns")?
}

async fn wait_status(addr: &str) -> Result<dpumesh_api::proto::v1::ComponentStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match dpumesh_api::client::status(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("no answer from {addr}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn push(
    node: &Node,
    addr: &str,
    config: &NodeConfig,
) -> Result<dpumesh_api::proto::v1::PushConfigResponse> {
    let addr = addr.to_string();
    let config = config.clone();
    in_host(node, move || async move {
        let mut client = dpumesh_api::client::proxy_config(&addr).await?;
        dpumesh_api::client::push_config(&mut client, &config)
            .await
            .context("PushConfig")
    })
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

/// The node's NodeConfig: the node and the pods placed on it (VF k for pod k).
fn node_config(node: &Node, version: u64, pods: &[(usize, usize, String)]) -> NodeConfig {
    let base = u32::from(node.pod_cidr.network());
    let pods = pods
        .iter()
        .filter(|(n, _, _)| *n == node.index)
        .filter_map(|(_, k, name)| {
            let vf = node.vf(*k)?;
            let ip = std::net::Ipv4Addr::from(base + 10 + *k as u32);
            Some(Pod {
                uid: format!("demo-{name}"),
                name: name.clone(),
                namespace: "default".to_string(),
                service_account: "default".to_string(),
                labels: [("app".to_string(), name.clone())].into(),
                ips: vec![ip.to_string()],
                mac: vf.mac.to_string(),
                vf_index: vf.index as u32,
                representor: vf.representor.clone(),
                spiffe_id: String::new(),
                meshed: true,
                interception: Default::default(),
                inbound_policy: None,
                route_overrides: Default::default(),
                rate_limit: None,
            })
        })
        .collect();
    NodeConfig {
        api_version: API_VERSION.to_string(),
        version,
        sources: [("source".to_string(), "dpumesh demo".to_string())].into(),
        node: NodeInfo {
            name: node_name(node),
            network_mode: NetworkMode::Underlay,
            pod_cidr: node.pod_cidr.to_string(),
            service_cidrs: vec!["10.96.0.0/16".to_string()],
            dpu_mgmt_addr: format!("{}:{PROXY_CONTROL_PORT}", node.mgmt_dpu.addr()),
            trust_domain: "cluster.local".to_string(),
            dns_domain: "cluster.local".to_string(),
            locality: Default::default(),
        },
        pods,
        services: vec![],
        clusters: vec![],
        route_tables: vec![],
        tcp_route_tables: vec![],
        inbound_policies: vec![],
    }
}

/// The directory holding the other dpumesh binaries: the one this binary runs from.
fn sibling_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dpumesh binary")?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("the dpumesh binary has no parent directory")?;
    for program in ["dpumesh-dataplane", "dpu-proxy"] {
        if !dir.join(program).exists() {
            bail!(
                "{program} not found next to {}: build the workspace first (cargo build --workspace --bins)",
                exe.display()
            );
        }
    }
    Ok(dir)
}

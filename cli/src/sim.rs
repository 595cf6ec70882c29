//! `dpumesh sim ...`: a thin shell over the `dpumesh-sim` library.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use dpumesh_sim::{Sim, SimConfig, UpStage};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Cluster name ([a-z0-9]{1,10}); every netns is named dm-<cluster>-...
    #[arg(long, short = 'c', global = true, env = "DPUMESH_CLUSTER", default_value = dpumesh_sim::config::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SimCommand,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Build the cluster (or complete a half-built one). Idempotent.
    Up {
        /// Number of nodes (1..=16).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// VFs per node (1..=64).
        #[arg(long, default_value_t = 8)]
        vfs: usize,
        /// Test hook: after this stage (state, namespaces, links, complete),
        /// print "paused at <stage>" and sleep until killed.
        #[arg(long, hide = true)]
        pause_after: Option<UpStage>,
    },
    /// Remove everything the cluster made: processes, namespaces, links, pins, state. Idempotent.
    Down {
        /// Sweep every simulator cluster and every dm-* netns on the machine.
        #[arg(long)]
        all: bool,
    },
    /// Nodes, VFs (free/used), pods and processes.
    Status,
    /// Pod network namespaces, as a container runtime makes them.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create netns dm-<cluster>-pod-<name> with lo up.
    Add { name: String },
    /// Delete it (processes inside are killed; VFs inside return to the host netns).
    Del { name: String },
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let cluster = args.cluster;
    let mut out = std::io::stdout().lock();
    match args.command {
        SimCommand::Up {
            nodes,
            vfs,
            pause_after,
        } => {
            let config = SimConfig {
                cluster: cluster.clone(),
                nodes,
                vfs,
            };
            let start = Instant::now();
            let sim = Sim::up_with(config, |stage| {
                if Some(stage) == pause_after {
                    println!("paused at {stage:?}");
                    let _ = std::io::stdout().flush();
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                true
            })
            .with_context(|| format!("sim up of cluster {cluster:?}"))?;
            let elapsed = start.elapsed();
            if args.json {
                let v = serde_json::json!({
                    "cluster": sim.cluster(),
                    "elapsed_ms": elapsed.as_millis() as u64,
                    "nodes": sim.nodes(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "cluster {} up: {} nodes x {} VFs in {} ms",
                    sim.cluster(),
                    sim.config().nodes,
                    sim.config().vfs,
                    elapsed.as_millis()
                )?;
                for n in sim.nodes() {
                    writeln!(
                        out,
                        "  node {}: host {} ({}), dpu {} ({}, uplink {}), pods {} via {}",
                        n.index,
                        n.host,
                        n.mgmt_host,
                        n.dpu,
                        n.mgmt_dpu,
                        n.uplink,
                        n.pod_cidr,
                        n.pod_gateway
                    )?;
                }
            }
        }
        SimCommand::Down { all } => {
            let report = if all {
                dpumesh_sim::down_all().context("sim down --all")?
            } else {
                dpumesh_sim::down(&cluster)
                    .with_context(|| format!("sim down of cluster {cluster:?}"))?
            };
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(
                    out,
                    "down {}: {} namespaces deleted, {} processes killed, {} paths removed",
                    if all { "(all)".to_string() } else { cluster },
                    report.netns_deleted.len(),
                    report.pids_killed.len(),
                    report.paths_removed.len()
                )?;
            }
        }
        SimCommand::Status => {
            let st = dpumesh_sim::status(&cluster)
                .with_context(|| format!("sim status of cluster {cluster:?}"))?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
            } else {
                write!(out, "{}", st.render_table())?;
            }
        }
        SimCommand::Pod { command } => {
            let sim = Sim::attach(&cluster)?;
            match command {
                PodCommand::Add { name } => {
                    let ns = sim.pod_add(&name)?;
                    if args.json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({ "pod": name, "netns": ns.name() })
                        )?;
                    } else {
                        writeln!(out, "{}", ns.name())?;
                    }
                }
                PodCommand::Del { name } => {
                    sim.pod_del(&name)?;
                    if args.json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({ "pod": name, "deleted": true })
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

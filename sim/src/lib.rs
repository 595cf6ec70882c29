//! The dpumesh simulator: N nodes, each a host netns and a DPU netns with a VF
//! pool (veth pairs), a management link and an uplink into a shared fabric
//! netns. This is the project's one topology library: the CLI's `dpumesh sim`,
//! the demo and every other crate's tests build namespaces through it.
//! Contract and diagrams: docs/simulator.md.
#![forbid(unsafe_code)]

mod cmd;
pub mod config;
mod down;
pub mod error;
mod guard;
pub mod naming;
pub mod netns;
mod pod;
pub mod process;
pub mod state;
mod status;
pub mod topology;
mod up;

use std::path::PathBuf;

pub use config::SimConfig;
pub use down::{down, down_all, leftovers, DownReport};
pub use error::{Result, SimError};
pub use guard::{unique_cluster, SimGuard};
pub use netns::{list_netns, Netns};
pub use process::{ProcessRecord, SpawnSpec};
pub use status::{status, NodeStatus, PodStatus, ProcessStatus, Status, VfState, VfStatus};
pub use topology::{MacAddr, Node, Place, Vf};
pub use up::UpStage;

/// A simulated cluster: a handle computed from its config. Creating the handle
/// builds nothing ([`Sim::plan`]); [`Sim::up`] builds, [`Sim::down`] removes.
#[derive(Debug, Clone)]
pub struct Sim {
    config: SimConfig,
    nodes: Vec<Node>,
    fabric: Netns,
}

impl Sim {
    /// Validates the config and computes names and addresses. Touches nothing.
    pub fn plan(config: SimConfig) -> Result<Sim> {
        config.validate()?;
        let nodes = (1..=config.nodes)
            .map(|i| Node::plan(&config.cluster, i, config.vfs))
            .collect();
        let fabric = Netns::new(naming::fabric_netns_name(&config.cluster));
        Ok(Sim {
            config,
            nodes,
            fabric,
        })
    }

    /// A handle to a cluster that is (or was partly) up, from its state file.
    pub fn attach(cluster: &str) -> Result<Sim> {
        config::validate_cluster(cluster)?;
        match state::read_state(cluster)? {
            Some(s) => Sim::plan(s.config),
            None => Err(SimError::NotFound(format!(
                "cluster {cluster:?} is not up (no {})",
                naming::state_file(cluster).display()
            ))),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn cluster(&self) -> &str {
        &self.config.cluster
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index` (from 1).
    pub fn node(&self, index: usize) -> Result<&Node> {
        index
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| {
                SimError::invalid(
                    "node",
                    index,
                    format!(
                        "cluster {:?} has nodes 1..={}",
                        self.cluster(),
                        self.nodes.len()
                    ),
                )
            })
    }

    /// `dm-<c>-fabric`, holding bridge `br0` with ports `n<i>`.
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    /// `/run/dpumesh/<c>`.
    pub fn state_dir(&self) -> PathBuf {
        naming::state_dir(self.cluster())
    }

    /// `/run/dpumesh/<c>/logs/<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        naming::log_dir(self.cluster()).join(format!("{name}.log"))
    }

    /// Removes everything of this cluster (see [`down`]).
    pub fn down(&self) -> Result<DownReport> {
        down(self.cluster())
    }

    /// Starts `program args..` detached in node `node`'s host or DPU netns,
    /// output to `logs/<name>.log`, and records it in the state file.
    pub fn spawn<I, S>(
        &self,
        node: usize,
        place: Place,
        name: &str,
        program: &str,
        args: I,
    ) -> Result<ProcessRecord>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let n = self.node(node)?;
        let mut spec = SpawnSpec::new(name, n.netns(place).clone(), program).args(args);
        spec.node = Some(node);
        spec.place = Some(place);
        self.spawn_with(spec)
    }

    /// [`Sim::spawn`] in its general form (any netns of this cluster, env, health address).
    pub fn spawn_with(&self, spec: SpawnSpec) -> Result<ProcessRecord> {
        config::validate_process_name(&spec.name)?;
        if !spec
            .netns
            .name()
            .starts_with(&naming::cluster_prefix(self.cluster()))
        {
            return Err(SimError::invalid(
                "netns",
                spec.netns.name(),
                format!("is not a namespace of cluster {:?}", self.cluster()),
            ));
        }
        if !spec.netns.exists() {
            return Err(SimError::NotFound(format!(
                "netns {} does not exist",
                spec.netns
            )));
        }
        let lock = state::StateLock::acquire(self.cluster())?;
        let mut st = lock
            .read()?
            .ok_or_else(|| SimError::NotFound(format!("cluster {:?} is not up", self.cluster())))?;
        if let Some(old) = st.processes.iter().find(|p| p.name == spec.name) {
            if old.is_alive() {
                return Err(SimError::Conflict(format!(
                    "process {:?} is already running (pid {})",
                    spec.name, old.pid
                )));
            }
        }
        let dir = naming::log_dir(self.cluster());
        std::fs::create_dir_all(&dir).map_err(|e| SimError::io("creating", &dir, e))?;
        let rec = process::start(&spec, self.log_path(&spec.name))?;
        st.processes.retain(|p| p.name != spec.name);
        st.processes.push(rec.clone());
        lock.write(&st)?;
        Ok(rec)
    }

    /// Stops process `name` (SIGTERM, SIGKILL after [`process::STOP_GRACE`])
    /// and forgets it. Returns whether it was known. Unknown names are not an error.
    pub fn stop(&self, name: &str) -> Result<bool> {
        let Some(lock) = state::StateLock::acquire_existing(self.cluster())? else {
            return Ok(false);
        };
        let Some(mut st) = lock.read()? else {
            return Ok(false);
        };
        let Some(pos) = st.processes.iter().position(|p| p.name == name) else {
            return Ok(false);
        };
        let rec = st.processes.remove(pos);
        if rec.is_alive() {
            let left = process::terminate(
                &[process::Target {
                    pid: rec.pid,
                    start_time: rec.start_time,
                }],
                process::STOP_GRACE,
            );
            if !left.is_empty() {
                return Err(SimError::Conflict(format!(
                    "process {name:?} (pid {}) survived SIGKILL",
                    rec.pid
                )));
            }
        }
        lock.write(&st)?;
        Ok(true)
    }

    /// The processes recorded in the state file.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>> {
        Ok(state::read_state(self.cluster())?
            .map(|s| s.processes)
            .unwrap_or_default())
    }

    /// The VFs of node `node` whose `vf<k>` end is in the host netns now
    /// (derived from the kernel, not stored).
    pub fn free_vfs(&self, node: usize) -> Result<Vec<Vf>> {
        let n = self.node(node)?;
        let links: std::collections::HashSet<String> = n.host.links()?.into_iter().collect();
        Ok(n.vfs
            .iter()
            .filter(|v| links.contains(&v.host_ifname))
            .cloned()
            .collect())
    }

    /// Status of this cluster (see [`status`]).
    pub fn status(&self) -> Result<Status> {
        status::status_of(self.cluster(), Some(&self.config))
    }
}

//! Building the topology. Every step first looks at what exists and only adds
//! what is missing, so `up` on a complete cluster changes nothing and `up` after
//! an interrupted one completes it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::cmd::ip_batch;
use crate::config::SimConfig;
use crate::error::{Result, SimError};
use crate::naming::*;
use crate::netns::{list_netns, Netns};
use crate::state::{State, StateLock};
use crate::Sim;

/// Points in `up` after which a hook is called ([`Sim::up_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpStage {
    /// The state file exists (complete = false); nothing else yet.
    StateWritten,
    /// All namespaces exist; no links yet.
    Namespaces,
    /// All links exist; nothing is up or addressed yet.
    Links,
    /// Everything is built and the state file says complete.
    Complete,
}

impl std::str::FromStr for UpStage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "state" => Ok(UpStage::StateWritten),
            "namespaces" => Ok(UpStage::Namespaces),
            "links" => Ok(UpStage::Links),
            "complete" => Ok(UpStage::Complete),
            _ => Err(format!(
                "unknown stage {s:?} (state, namespaces, links, complete)"
            )),
        }
    }
}

impl Sim {
    /// Builds (or completes) the cluster described by `config`. Idempotent.
    /// If the cluster exists with a different node/VF count, this is an error:
    /// run `down` first.
    pub fn up(config: SimConfig) -> Result<Sim> {
        Sim::up_with(config, |_| true)
    }

    /// [`Sim::up`] that calls `hook` after each [`UpStage`]; when the hook
    /// returns false, `up` stops there and returns, leaving a half-built
    /// cluster behind (for tests of teardown and recovery).
    pub fn up_with(config: SimConfig, mut hook: impl FnMut(UpStage) -> bool) -> Result<Sim> {
        let sim = Sim::plan(config)?;
        let c = sim.cluster().to_string();
        let lock = StateLock::acquire(&c)?;
        let mut st = match lock.read()? {
            Some(s) if s.config != sim.config => {
                return Err(SimError::Conflict(format!(
                    "cluster {c:?} is already up with nodes={} vfs={}; run `dpumesh sim down --cluster {c}` first",
                    s.config.nodes, s.config.vfs
                )))
            }
            Some(s) => s,
            None => State::new(sim.config.clone()),
        };
        st.complete = false;
        lock.write(&st)?;
        if !hook(UpStage::StateWritten) {
            return Ok(sim);
        }

        ensure_bpffs()?;
        for n in &sim.nodes {
            std::fs::create_dir_all(&n.bpf_pin_dir)
                .map_err(|e| SimError::io("creating", &n.bpf_pin_dir, e))?;
        }

        // Namespaces.
        let existing: HashSet<String> = list_netns()?.into_iter().collect();
        let mut all_ns: Vec<&Netns> = vec![&sim.fabric];
        for n in &sim.nodes {
            all_ns.push(&n.host);
            all_ns.push(&n.dpu);
        }
        let add_ns: Vec<String> = all_ns
            .iter()
            .filter(|ns| !existing.contains(ns.name()))
            .map(|ns| format!("netns add {}", ns.name()))
            .collect();
        ip_batch(None, &add_ns)?;
        if !hook(UpStage::Namespaces) {
            return Ok(sim);
        }

        // Links, created directly inside their namespaces (never in the root netns).
        let mut links: HashMap<String, HashSet<String>> = HashMap::new();
        for ns in &all_ns {
            let l = if existing.contains(ns.name()) {
                ns.links()?.into_iter().collect()
            } else {
                HashSet::new()
            };
            links.insert(ns.name().to_string(), l);
        }
        let has = |ns: &Netns, ifname: &str| links[ns.name()].contains(ifname);
        let fab = sim.fabric.name();
        let mut add = Vec::new();
        let mut created: Vec<(String, String)> = Vec::new();
        if !has(&sim.fabric, FABRIC_BRIDGE) {
            add.push(format!("link add {FABRIC_BRIDGE} netns {fab} type bridge"));
        }
        for n in &sim.nodes {
            let (h, d) = (n.host.name(), n.dpu.name());
            if !has(&n.host, MGMT_IFNAME) {
                add.push(format!(
                    "link add {MGMT_IFNAME} netns {h} type veth peer name {MGMT_IFNAME} netns {d}"
                ));
            }
            if !has(&n.dpu, UPLINK_IFNAME) {
                add.push(format!(
                    "link add {UPLINK_IFNAME} netns {d} type veth peer name {} netns {fab}",
                    n.fabric_port
                ));
            }
            for vf in &n.vfs {
                // The representor never leaves the DPU netns: it tells whether the pair exists.
                if !has(&n.dpu, &vf.representor) {
                    add.push(format!(
                        "link add {} address {} netns {h} type veth peer name {} address {} netns {d}",
                        vf.host_ifname, vf.mac, vf.representor, vf.representor_mac
                    ));
                    created.push((h.to_string(), vf.host_ifname.clone()));
                }
            }
        }
        ip_batch(None, &add)?;
        for (ns, ifname) in created {
            links.entry(ns).or_default().insert(ifname);
        }
        if !hook(UpStage::Links) {
            return Ok(sim);
        }

        // Addresses and link state, one batch per namespace.
        let mut fabric_cmds = vec![
            "link set lo up".to_string(),
            format!("link set {FABRIC_BRIDGE} up"),
        ];
        for n in &sim.nodes {
            let mut host = vec![
                "link set lo up".to_string(),
                format!("address replace {} dev {MGMT_IFNAME}", n.mgmt_host),
                format!("link set {MGMT_IFNAME} up"),
            ];
            for vf in &n.vfs {
                // A VF the CNI moved into a pod is left alone.
                if links[n.host.name()].contains(&vf.host_ifname) {
                    host.push(format!("link set {} alias {} up", vf.host_ifname, vf.alias));
                }
            }
            let mut dpu = vec![
                "link set lo up".to_string(),
                format!("address replace {} dev {MGMT_IFNAME}", n.mgmt_dpu),
                format!("link set {MGMT_IFNAME} up"),
                format!("address replace {} dev {}", n.uplink, n.uplink_ifname),
                format!("link set {} up", n.uplink_ifname),
            ];
            for vf in &n.vfs {
                dpu.push(format!("link set {} up", vf.representor));
            }
            fabric_cmds.push(format!(
                "link set {} master {FABRIC_BRIDGE} up",
                n.fabric_port
            ));
            ip_batch(Some(n.host.name()), &host)?;
            ip_batch(Some(n.dpu.name()), &dpu)?;
            n.dpu.run(|| {
                let p = Path::new("/proc/sys/net/ipv4/ip_forward");
                std::fs::write(p, "1").map_err(|e| SimError::io("writing", p, e))
            })??;
        }
        ip_batch(Some(fab), &fabric_cmds)?;

        st.complete = true;
        lock.write(&st)?;
        hook(UpStage::Complete);
        Ok(sim)
    }
}

/// Mounts bpffs at /run/dpumesh/bpf unless a bpffs is already there. Serialised
/// by a lock on /run/dpumesh: two racing mounts would stack, hiding the pins of
/// the lower one.
fn ensure_bpffs() -> Result<()> {
    let run = Path::new(RUN_DIR);
    std::fs::create_dir_all(BPFFS_DIR).map_err(|e| SimError::io("creating", BPFFS_DIR, e))?;
    let dir = File::open(run).map_err(|e| SimError::io("opening", run, e))?;
    let _lock = Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| SimError::io("locking", run, e.into()))?;
    if bpffs_mounted()? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_DIR,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| SimError::io("mounting bpffs on", BPFFS_DIR, e.into()))
}

fn bpffs_mounted() -> Result<bool> {
    let p = "/proc/self/mountinfo";
    let info = std::fs::read_to_string(p).map_err(|e| SimError::io("reading", p, e))?;
    Ok(info.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let left = halves.next().unwrap_or("");
        let fstype = halves.next().and_then(|r| r.split(' ').next());
        left.split(' ').nth(4) == Some(BPFFS_DIR) && fstype == Some("bpf")
    }))
}

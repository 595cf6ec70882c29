//! Processes the simulator starts inside its namespaces, and how it stops them.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};
use crate::netns::Netns;
use crate::topology::Place;

/// How long `stop`/`down` wait after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// One process started by [`crate::Sim::spawn`], as kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Unique within the cluster; also the log file name.
    pub name: String,
    /// The netns it was started in.
    pub netns: String,
    /// The node, when started on a node's host or DPU.
    pub node: Option<usize>,
    pub place: Option<Place>,
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot): tells the
    /// process from a later one that reuses the PID.
    pub start_time: u64,
    pub program: String,
    pub args: Vec<String>,
    /// stdout+stderr, appended.
    pub log: PathBuf,
    /// `ip:port` probed by `status` (TCP connect inside `netns`).
    pub health: Option<String>,
}

impl ProcessRecord {
    /// True while this very process (same PID and start time) runs (zombies count as dead).
    pub fn is_alive(&self) -> bool {
        is_same_process_alive(self.pid, self.start_time)
    }
}

/// What to start and where: the general form behind [`crate::Sim::spawn`]
/// (e.g. to run a server inside a pod netns).
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub name: String,
    pub netns: Netns,
    pub node: Option<usize>,
    pub place: Option<Place>,
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment variables (the child inherits the caller's environment too).
    pub env: Vec<(String, String)>,
    /// `ip:port` for `status` to probe.
    pub health: Option<String>,
}

impl SpawnSpec {
    pub fn new(name: impl Into<String>, netns: Netns, program: impl Into<String>) -> SpawnSpec {
        SpawnSpec {
            name: name.into(),
            netns,
            node: None,
            place: None,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            health: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> SpawnSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> SpawnSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn health(mut self, addr: impl Into<String>) -> SpawnSpec {
        self.health = Some(addr.into());
        self
    }
}

/// Starts the process: `ip netns exec <ns> setsid <program> <args>`. `ip` and
/// `setsid` both exec (no fork) so the PID is the program's. The child gets its
/// own session (no signals from the caller's terminal) and a reaper thread in
/// this process, so no zombie stays behind while the caller lives.
pub(crate) fn start(spec: &SpawnSpec, log: PathBuf) -> Result<ProcessRecord> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| SimError::io("opening log", &log, e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| SimError::io("opening log", &log, e))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", spec.netns.name(), "setsid", &spec.program])
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let mut child = cmd.spawn().map_err(|e| SimError::Command {
        command: crate::cmd::describe(&cmd),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    let pid = child.id();
    // Read before the reaper can reap it; the start time survives exec.
    let start_time = proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
    wait_until_in_netns(pid, start_time, &spec.netns);
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(|e| SimError::io("spawning reaper thread for", &log, e))?;
    Ok(ProcessRecord {
        name: spec.name.clone(),
        netns: spec.netns.name().to_string(),
        node: spec.node,
        place: spec.place,
        pid,
        start_time,
        program: spec.program.clone(),
        args: spec.args.clone(),
        log,
        health: spec.health.clone(),
    })
}

/// Waits (up to 2 s) until `pid` has entered `netns`, so that when `spawn`
/// returns the process is where it belongs (or already dead).
fn wait_until_in_netns(pid: u32, start_time: u64, netns: &Netns) {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(netns.path()).map(|m| (m.dev(), m.ino())) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && is_same_process_alive(pid, start_time) {
        let here = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| (m.dev(), m.ino()));
        if here.is_ok_and(|h| h == target) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parens: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Alive and not a zombie; when `start_time` is non-zero it must match.
pub(crate) fn is_same_process_alive(pid: u32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some(s) => {
            s.state != 'Z' && s.state != 'X' && (start_time == 0 || s.start_time == start_time)
        }
        None => false,
    }
}

/// A process found to kill: PID plus the start time seen when it was found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub pid: u32,
    pub start_time: u64,
}

impl Target {
    /// The process as it is now, unless it is gone or is ourselves/init.
    pub(crate) fn current(pid: u32) -> Option<Target> {
        if pid <= 1 || pid == std::process::id() {
            return None;
        }
        let st = proc_stat(pid)?;
        Some(Target {
            pid,
            start_time: st.start_time,
        })
    }
}

/// SIGTERM all, wait up to `grace`, SIGKILL the rest, wait a little more.
/// Returns the PIDs that are still alive at the end (should be none).
pub(crate) fn terminate(targets: &[Target], grace: Duration) -> Vec<u32> {
    let alive = |t: &&Target| is_same_process_alive(t.pid, t.start_time);
    for t in targets.iter().filter(alive) {
        let _ = kill(Pid::from_raw(t.pid as i32), Signal::SIGTERM);
    }
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while targets.iter().any(|t| alive(&t)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(grace);
    for t in targets.iter().filter(alive) {
        let _ = kill(Pid::from_raw(t.pid as i32), Signal::SIGKILL);
    }
    wait(Duration::from_secs(2));
    targets.iter().filter(alive).map(|t| t.pid).collect()
}

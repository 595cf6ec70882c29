//! A named network namespace (`/run/netns/<name>`, as `ip netns` manages them).

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::error::{Result, SimError};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// A handle to a named network namespace. Creating the handle creates nothing;
/// see [`Netns::create`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Netns {
    name: String,
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates the namespace (if missing) with `lo` up. Idempotent.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let ns = Netns::new(name);
        if !ns.exists() {
            cmd::ip(&["netns", "add", &ns.name])?;
        }
        cmd::ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes the namespace; nothing happens if it does not exist. Processes
    /// still inside keep it alive (without its name): kill them first.
    pub fn delete(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        match cmd::ip(&["netns", "delete", &self.name]) {
            Ok(_) => Ok(()),
            // Lost a race with another deleter.
            Err(_) if !self.exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on a fresh OS thread that first enters this namespace, and
    /// returns its result. Sockets created inside `f` belong to the namespace
    /// (and keep belonging to it after `f` returns). Never runs on the caller's
    /// thread, so it is safe to call from async code (it blocks, though: use
    /// `spawn_blocking`). A panic inside `f` is resumed on the caller.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        let file = File::open(&path).map_err(|e| SimError::io("opening netns", &path, e))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| SimError::io("entering netns", &path, e.into()))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A `Command` that runs `program` inside this namespace
    /// (`ip netns exec <name> <program>`); add args and spawn it yourself.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args..` inside this namespace and returns its stdout.
    /// A non-zero exit is an error naming the command and its stderr.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = cmd::run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = cmd::ip(&["-n", &self.name, "-j", "link", "show"])?;
        let v: Vec<serde_json::Value> =
            serde_json::from_str(&out).map_err(|e| SimError::Command {
                command: format!("ip -n {} -j link show", self.name),
                status: "unparsable output".into(),
                stderr: e.to_string(),
            })?;
        Ok(v.iter()
            .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()).map(String::from))
            .collect())
    }

    /// PIDs of the processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<u32>> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let out = match cmd::ip(&["netns", "pids", &self.name]) {
            Ok(o) => o,
            Err(_) if !self.exists() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

/// Names of all named network namespaces (`/run/netns/*`), sorted.
pub fn list_netns() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SimError::io("listing", NETNS_DIR, e)),
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

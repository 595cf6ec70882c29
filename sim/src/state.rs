//! The state file `/run/dpumesh/<c>/state.json` and its lock.
//!
//! Only what cannot be derived from the kernel is stored: the config (so `down`
//! and `status` know the intended size) and the processes started (PID plus
//! start time, so a recycled PID is never killed). VF use, pods and links are
//! always derived from the live namespaces.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::SimConfig;
use crate::error::{Result, SimError};
use crate::naming::{state_dir, state_file};
use crate::process::ProcessRecord;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version, currently 1.
    pub version: u32,
    pub config: SimConfig,
    /// Seconds since the Unix epoch when `up` first ran.
    pub created_unix: u64,
    /// false while `up` is in progress (or was interrupted).
    pub complete: bool,
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
}

impl State {
    pub fn new(config: SimConfig) -> State {
        State {
            version: STATE_VERSION,
            config,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            complete: false,
            processes: Vec::new(),
        }
    }
}

/// An exclusive lock on the cluster's state dir (flock on the directory). All
/// read-modify-write of the state file happens under it, across processes.
pub(crate) struct StateLock {
    cluster: String,
    _lock: Flock<File>,
}

impl StateLock {
    /// Creates the state dir if needed and locks it.
    pub(crate) fn acquire(cluster: &str) -> Result<StateLock> {
        let dir = state_dir(cluster);
        loop {
            std::fs::create_dir_all(&dir).map_err(|e| SimError::io("creating", &dir, e))?;
            if let Some(lock) = Self::try_existing(cluster)? {
                return Ok(lock);
            }
        }
    }

    /// Locks the state dir if it exists; `None` if it does not.
    pub(crate) fn acquire_existing(cluster: &str) -> Result<Option<StateLock>> {
        Self::try_existing(cluster)
    }

    fn try_existing(cluster: &str) -> Result<Option<StateLock>> {
        let dir = state_dir(cluster);
        let file = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SimError::io("opening", &dir, e)),
        };
        let ino = file
            .metadata()
            .map_err(|e| SimError::io("stat", &dir, e))?
            .ino();
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| SimError::io("locking", &dir, e.into()))?;
        // `down` removes the dir while holding the lock; if it did so while we
        // waited, our lock is on a deleted dir.
        match std::fs::metadata(&dir) {
            Ok(m) if m.ino() == ino => Ok(Some(StateLock {
                cluster: cluster.to_string(),
                _lock: lock,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SimError::io("stat", &dir, e)),
        }
    }

    /// Reads the state file; `None` if there is none.
    pub(crate) fn read(&self) -> Result<Option<State>> {
        read_state(&self.cluster)
    }

    /// Writes the state file atomically (temp file + rename).
    pub(crate) fn write(&self, state: &State) -> Result<()> {
        let path = state_file(&self.cluster);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(state).map_err(|e| SimError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(|e| SimError::io("creating", &tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| SimError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| SimError::io("renaming to", &path, e))?;
        Ok(())
    }
}

/// Reads the state file without locking; `None` if there is none.
pub fn read_state(cluster: &str) -> Result<Option<State>> {
    let path: PathBuf = state_file(cluster);
    let body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SimError::io("reading", &path, e)),
    };
    let state: State = serde_json::from_slice(&body).map_err(|e| SimError::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(SimError::State {
            path,
            reason: format!("version {} (expected {STATE_VERSION})", state.version),
        });
    }
    if state.config.cluster != cluster {
        return Err(SimError::State {
            path,
            reason: format!("names cluster {:?}", state.config.cluster),
        });
    }
    Ok(Some(state))
}

//! The state cache directory: who holds which VF, and the locks that make
//! allocation safe when many CNI processes run at once or one dies midway.
//!
//! Layout (default root `/var/lib/cni/dpumesh`, config `stateDir`):
//!
//! ```text
//! <root>/vfs/<pool>-<k>.lock   flock held while a command works on VF k
//! <root>/vfs/<pool>-<k>.json   the claim: which attachment holds VF k (absent = free)
//! <root>/locks/att-<nn>.lock   flock per attachment hash bucket (serialises
//!                              commands for the same containerID/ifname)
//! <root>/pending/<id>_<if>.json  dataplane deregistrations not yet delivered
//! ```
//!
//! Every file is written to a temp name and renamed, so readers see the old or
//! the new content, never half of it. The flocks die with their process, so a
//! `kill -9` leaves a claim (phase `adding`) but no lock: DEL or GC of that
//! attachment cleans it up.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::spec::{CniError, CniResult};

const ATTACHMENT_BUCKETS: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// ADD started and has not finished (or crashed).
    Adding,
    /// ADD returned a result.
    Ready,
}

/// What the pool knows about one VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfRecord {
    pub index: u32,
    /// The VF's netdev name in the host netns (restored on DEL).
    pub netdev: String,
    /// PCI address (SR-IOV only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
    /// DPU-side representor, e.g. "pf0vf3".
    pub representor: String,
    /// The MAC the pod gets ("aa:bb:cc:dd:ee:ff").
    pub mac: String,
    /// The netdev alias (the simulator tags its VFs with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// One attachment's hold on a VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub phase: Phase,
    pub vf: VfRecord,
    /// Addresses configured on the pod interface (filled once IPAM ran).
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// IPAM ran ADD for this attachment (so DEL must release).
    #[serde(default)]
    pub ipam_allocated: bool,
    /// The dataplane was asked to register the pod.
    #[serde(default)]
    pub registered: bool,
    #[serde(default)]
    pub pod_uid: String,
    pub pid: u32,
}

/// A dataplane deregistration that could not be delivered during DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRemoval {
    pub container_id: String,
    pub ifname: String,
    pub dataplane: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive flock; released on drop (and by the kernel if we die).
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::io(
        format!("state dir: {what} {}", path.display()),
        format!(
            "{e}; check that the state dir (config \"stateDir\") is a writable local directory"
        ),
    )
}

impl StateDir {
    pub fn open(root: &Path) -> CniResult<StateDir> {
        for sub in ["vfs", "locks", "pending"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err("creating", &p, e))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn vf_base(&self, pool: &str, index: u32) -> PathBuf {
        self.root.join("vfs").join(format!("{pool}-{index}"))
    }

    fn lock_file(path: &Path, block: bool) -> CniResult<Option<Lock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_err("opening lock", path, e))?;
        let arg = if block {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(file, arg) {
            Ok(f) => Ok(Some(Lock { _flock: f })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !block => Ok(None),
            Err((_, e)) => Err(io_err("locking", path, e)),
        }
    }

    /// Waits for VF `index`'s lock.
    pub fn lock_vf(&self, pool: &str, index: u32) -> CniResult<Lock> {
        let p = self.vf_base(pool, index).with_extension("lock");
        Self::lock_file(&p, true)?.ok_or_else(|| io_err("locking", &p, "lock not granted"))
    }

    /// Takes VF `index`'s lock if nobody holds it.
    pub fn try_lock_vf(&self, pool: &str, index: u32) -> CniResult<Option<Lock>> {
        Self::lock_file(&self.vf_base(pool, index).with_extension("lock"), false)
    }

    /// Serialises commands for one attachment (hash bucket: the lock files
    /// stay bounded however many containers come and go).
    pub fn lock_attachment(&self, container_id: &str, ifname: &str) -> CniResult<Lock> {
        // FNV-1a: stable across runs and processes.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        let p = self
            .root
            .join("locks")
            .join(format!("att-{:02}.lock", h % ATTACHMENT_BUCKETS));
        Self::lock_file(&p, true)?.ok_or_else(|| io_err("locking", &p, "lock not granted"))
    }

    pub fn read_claim(&self, pool: &str, index: u32) -> CniResult<Option<Claim>> {
        read_json(&self.vf_base(pool, index).with_extension("json"))
    }

    /// Writes (atomically) the claim of VF `claim.vf.index`; hold its lock.
    pub fn write_claim(&self, pool: &str, claim: &Claim) -> CniResult<()> {
        write_json(
            &self.vf_base(pool, claim.vf.index).with_extension("json"),
            claim,
        )
    }

    pub fn remove_claim(&self, pool: &str, index: u32) -> CniResult<()> {
        remove(&self.vf_base(pool, index).with_extension("json"))
    }

    /// Every claim of `pool`, in VF order.
    pub fn claims(&self, pool: &str) -> CniResult<Vec<Claim>> {
        let dir = self.root.join("vfs");
        let prefix = format!("{pool}-");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))? {
            let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(idx) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(c) = self.read_claim(pool, idx)? {
                out.push(c);
            }
        }
        out.sort_by_key(|c| c.vf.index);
        Ok(out)
    }

    /// The claim of attachment (container_id, ifname) on `network`, if any.
    pub fn find_claim(
        &self,
        pool: &str,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Option<Claim>> {
        Ok(self
            .claims(pool)?
            .into_iter()
            .find(|c| c.network == network && c.container_id == container_id && c.ifname == ifname))
    }

    fn pending_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.root
            .join("pending")
            .join(format!("{container_id}_{ifname}.json"))
    }

    pub fn add_pending(&self, p: &PendingRemoval) -> CniResult<()> {
        write_json(&self.pending_path(&p.container_id, &p.ifname), p)
    }

    pub fn remove_pending(&self, container_id: &str, ifname: &str) -> CniResult<()> {
        remove(&self.pending_path(container_id, ifname))
    }

    pub fn pending(&self) -> CniResult<Vec<PendingRemoval>> {
        let dir = self.root.join("pending");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))? {
            let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
            if entry.path().extension().is_some_and(|e| e == "json") {
                if let Some(p) = read_json::<PendingRemoval>(&entry.path())? {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> CniResult<Option<T>> {
    match fs::read(path) {
        // Files are not fsync'd (see write_json): after a power loss a file
        // whose data never reached the disk reads empty. Every pod died with
        // the node, so it holds nothing worth keeping.
        Ok(bytes) if bytes.is_empty() => {
            tracing::warn!(path = %path.display(), "empty state file (lost in a power loss?): ignored and removed");
            let _ = fs::remove_file(path);
            Ok(None)
        }
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err("decoding", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path, e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> CniResult<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io_err("encoding", path, e))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        // No fsync: the rename is atomic for every reader, and a process
        // crash (kill -9) loses nothing that reached the page cache. Only a
        // power loss can lose a write, and then every pod is gone too (the
        // runtime re-runs DEL/GC; empty files are ignored, see read_json).
        // An fsync per write cost 0.5-3 ms each, five times per ADD.
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("writing", path, e)
    })
}

fn remove(path: &Path) -> CniResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(idx: u32, id: &str) -> Claim {
        Claim {
            network: "net".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: None,
            phase: Phase::Adding,
            vf: VfRecord {
                index: idx,
                netdev: format!("vf{idx}"),
                pci: None,
                representor: format!("pf0vf{idx}"),
                mac: "02:00:00:00:00:01".into(),
                alias: None,
            },
            ips: vec![],
            ipam_allocated: false,
            registered: false,
            pod_uid: String::new(),
            pid: 1,
        }
    }

    #[test]
    fn empty_claim_left_by_a_power_loss_is_ignored_but_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.write_claim("sim", &claim(4, "a")).unwrap();
        let path = dir.path().join("vfs").join("sim-4.json");
        std::fs::write(&path, b"").unwrap();
        assert!(s.read_claim("sim", 4).unwrap().is_none());
        assert!(!path.exists(), "the empty file is removed");
        std::fs::write(&path, b"{not json").unwrap();
        let e = s.read_claim("sim", 4).unwrap_err();
        assert!(
            e.details.contains("sim-4.json") || e.msg.contains("sim-4.json"),
            "{e:?}"
        );
    }

    #[test]
    fn claims_roundtrip_and_locks_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.write_claim("sim", &claim(3, "a")).unwrap();
        s.write_claim("sim", &claim(1, "b")).unwrap();
        s.write_claim("other", &claim(2, "c")).unwrap();
        let all = s.claims("sim").unwrap();
        assert_eq!(
            all.iter().map(|c| c.vf.index).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            s.find_claim("sim", "net", "a", "eth0")
                .unwrap()
                .unwrap()
                .vf
                .index,
            3
        );
        assert!(s.find_claim("sim", "net", "a", "eth1").unwrap().is_none());
        s.remove_claim("sim", 3).unwrap();
        s.remove_claim("sim", 3).unwrap();
        assert_eq!(s.claims("sim").unwrap().len(), 1);

        let held = s.try_lock_vf("sim", 1).unwrap();
        assert!(held.is_some());
        // flock is per open file description: a second open conflicts even in-process.
        assert!(s.try_lock_vf("sim", 1).unwrap().is_none());
        drop(held);
        assert!(s.try_lock_vf("sim", 1).unwrap().is_some());
    }
}

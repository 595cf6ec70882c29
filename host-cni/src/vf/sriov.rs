//! SR-IOV VFs of a PF, discovered in sysfs:
//!
//! ```text
//! <sysfs>/class/net/<pf>/device/sriov_numvfs       how many VFs are enabled
//! <sysfs>/class/net/<pf>/device/virtfn<N>  ->  ../<VF PCI address>
//! <sysfs>/class/net/<pf>/device/virtfn<N>/net/<netdev>/address
//! <sysfs>/bus/pci/devices/<VF PCI address>/net/<netdev>
//! ```
//!
//! A VF moved into a pod netns has no `net/` entry in the host's sysfs: that is
//! how "in the host netns" is read. MAC, VLAN, spoof check and trust are set on
//! the PF through netlink (`IFLA_VFINFO_LIST`), behind [`PfControl`] so that
//! tests against a fake sysfs tree can check the intended calls.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Vf, VfPool};
use crate::netlink::{parse_mac, LinkInfo, Netlink, VfSettings};
use crate::spec::{code, CniError, CniResult};
use crate::state::VfRecord;

/// The PF-side VF settings, through netlink in production.
pub trait PfControl: Send + Sync {
    fn set_vf(&self, pf: &str, vf: u32, settings: &VfSettings) -> CniResult<()>;
}

/// [`PfControl`] over rtnetlink, in the host netns.
pub struct NetlinkPf;

impl PfControl for NetlinkPf {
    fn set_vf(&self, pf: &str, vf: u32, settings: &VfSettings) -> CniResult<()> {
        // Runs on its own thread: callers may hold a runtime of their own.
        std::thread::scope(|s| {
            s.spawn(|| {
                let nl = Netlink::new()?;
                let link = nl.link(pf)?.ok_or_else(|| {
                    CniError::new(
                        code::VF_BACKEND,
                        format!("PF {pf} not found"),
                        "config \"pf\" must name the PF netdev in the host netns",
                    )
                })?;
                nl.set_vf(link.index, vf, settings)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

pub struct SriovPool {
    pf: String,
    sysfs: PathBuf,
    vlan: u16,
    spoofchk: bool,
    trust: bool,
    control: Box<dyn PfControl>,
}

fn backend_err(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::VF_BACKEND, msg, details)
}

impl SriovPool {
    pub fn new(
        pf: String,
        sysfs: PathBuf,
        vlan: u16,
        spoofchk: bool,
        trust: bool,
        control: Box<dyn PfControl>,
    ) -> SriovPool {
        SriovPool {
            pf,
            sysfs,
            vlan,
            spoofchk,
            trust,
            control,
        }
    }

    fn device_dir(&self) -> PathBuf {
        self.sysfs.join("class/net").join(&self.pf).join("device")
    }

    /// `sriov_numvfs` of the PF.
    pub fn num_vfs(&self) -> CniResult<u32> {
        let p = self.device_dir().join("sriov_numvfs");
        let s = fs::read_to_string(&p).map_err(|e| {
            backend_err(
                format!("PF {} has no SR-IOV ({}: {e})", self.pf, p.display()),
                "config \"pf\" must name an SR-IOV capable PF with VFs enabled (echo N > sriov_numvfs)",
            )
        })?;
        s.trim().parse().map_err(|_| {
            backend_err(
                format!("unreadable {}: {s:?}", p.display()),
                "sriov_numvfs must hold a number",
            )
        })
    }

    /// (VF index, PCI address) of every enabled VF.
    pub fn vf_addresses(&self) -> CniResult<Vec<(u32, String)>> {
        let n = self.num_vfs()?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let link = self.device_dir().join(format!("virtfn{i}"));
            let target = fs::read_link(&link).map_err(|e| {
                backend_err(
                    format!("cannot read {}: {e}", link.display()),
                    "sriov_numvfs announces more VFs than sysfs shows",
                )
            })?;
            let pci = target
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((i, pci));
        }
        Ok(out)
    }

    fn netdev_in(dir: &Path) -> Option<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("net"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.into_iter().next()
    }

    fn vf_at(&self, index: u32, pci: &str) -> Option<Vf> {
        let dir = self.device_dir().join(format!("virtfn{index}"));
        let netdev = Self::netdev_in(&dir)?;
        let mac = fs::read_to_string(dir.join("net").join(&netdev).join("address"))
            .ok()
            .and_then(|s| parse_mac(s.trim()))
            .unwrap_or([0; 6]);
        Some(Vf {
            index,
            netdev,
            pci: Some(pci.to_string()),
            representor: format!("pf0vf{index}"),
            mac,
            alias: None,
        })
    }

    /// The VFs whose netdev is visible in (this netns's) sysfs.
    pub fn sysfs_host_vfs(&self) -> CniResult<Vec<Vf>> {
        Ok(self
            .vf_addresses()?
            .into_iter()
            .filter_map(|(i, pci)| self.vf_at(i, &pci))
            .collect())
    }

    pub fn sysfs_by_device_id(&self, pci: &str) -> CniResult<Vf> {
        let (i, _) = self
            .vf_addresses()?
            .into_iter()
            .find(|(_, a)| a == pci)
            .ok_or_else(|| {
                CniError::config(
                    format!("deviceID {pci} is not a VF of PF {}", self.pf),
                    "the device plugin's resource must map to VFs of the configured \"pf\"",
                )
            })?;
        self.vf_at(i, pci).ok_or_else(|| {
            CniError::try_later(
                format!("VF {pci} has no netdev in the host netns"),
                "it is still in another pod's netns or its driver is not bound; retry later",
            )
        })
    }

    /// The VF's netdev name now, found through its PCI address.
    pub fn sysfs_netdev_of(&self, pci: &str) -> Option<String> {
        Self::netdev_in(&self.sysfs.join("bus/pci/devices").join(pci))
    }

    /// A stable locally administered MAC for VFs that have none.
    fn generated_mac(&self, index: u32) -> [u8; 6] {
        let mut h: u32 = 0x811c9dc5;
        for b in self.pf.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
        }
        let [a, b, ..] = h.to_be_bytes();
        let [.., c, d] = index.to_be_bytes();
        [0x02, 0x64, a, b, c, d]
    }
}

impl VfPool for SriovPool {
    fn id(&self) -> String {
        format!("sriov-{}", self.pf)
    }

    fn host_vfs(&self, _nl: &Netlink) -> CniResult<Vec<Vf>> {
        self.sysfs_host_vfs()
    }

    fn by_device_id(&self, _nl: &Netlink, pci: &str) -> CniResult<Vf> {
        self.sysfs_by_device_id(pci)
    }

    fn prepare(&self, vf: &mut Vf) -> CniResult<()> {
        if vf.mac == [0; 6] {
            vf.mac = self.generated_mac(vf.index);
        }
        self.control.set_vf(
            &self.pf,
            vf.index,
            &VfSettings {
                mac: vf.mac,
                vlan: self.vlan,
                spoofchk: self.spoofchk,
                trust: self.trust,
            },
        )
    }

    fn reset(&self, rec: &VfRecord) -> CniResult<()> {
        // Keep the MAC (it is the VF's identity on the DPU), drop the VLAN and
        // trust a new pod should not inherit.
        let mac = parse_mac(&rec.mac).unwrap_or([0; 6]);
        self.control.set_vf(
            &self.pf,
            rec.index,
            &VfSettings {
                mac,
                vlan: 0,
                spoofchk: true,
                trust: false,
            },
        )
    }

    fn locate(&self, nl: &Netlink, rec: &VfRecord) -> CniResult<Option<LinkInfo>> {
        let name = rec
            .pci
            .as_deref()
            .and_then(|p| self.sysfs_netdev_of(p))
            .unwrap_or_else(|| rec.netdev.clone());
        nl.link(&name)
    }

    fn recreate(&self, _nl: &Netlink, _rec: &VfRecord) -> CniResult<bool> {
        // A physical VF never disappears: the kernel returns it to the host
        // netns when its pod netns dies.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<(String, u32, VfSettings)>>>);
    impl PfControl for Recorder {
        fn set_vf(&self, pf: &str, vf: u32, s: &VfSettings) -> CniResult<()> {
            self.0.lock().unwrap().push((pf.to_string(), vf, *s));
            Ok(())
        }
    }

    /// A PF "p0" with 3 VFs; VF 1 is in a pod (no net/ entry); VF 2 has no MAC.
    fn fake_sysfs(root: &Path) {
        let dev = root.join("class/net/p0/device");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("sriov_numvfs"), "3\n").unwrap();
        for (i, pci, netdev, mac) in [
            (0, "0000:03:00.2", Some("enp3s0f0v0"), "02:11:22:33:44:00"),
            (1, "0000:03:00.3", None, ""),
            (2, "0000:03:00.4", Some("enp3s0f0v2"), "00:00:00:00:00:00"),
        ] {
            let vf = root.join("bus/pci/devices").join(pci);
            fs::create_dir_all(&vf).unwrap();
            if let Some(n) = netdev {
                fs::create_dir_all(vf.join("net").join(n)).unwrap();
                fs::write(vf.join("net").join(n).join("address"), format!("{mac}\n")).unwrap();
            }
            symlink(&vf, dev.join(format!("virtfn{i}"))).unwrap();
        }
    }

    fn pool(root: &Path, rec: &Recorder) -> SriovPool {
        SriovPool::new(
            "p0".into(),
            root.to_path_buf(),
            100,
            true,
            false,
            Box::new(rec.clone()),
        )
    }

    #[test]
    fn reads_vfs_from_sysfs_and_sets_them_on_the_pf() {
        let dir = tempfile::tempdir().unwrap();
        fake_sysfs(dir.path());
        let rec = Recorder::default();
        let p = pool(dir.path(), &rec);
        assert_eq!(p.num_vfs().unwrap(), 3);
        let vfs = p.sysfs_host_vfs().unwrap();
        assert_eq!(
            vfs.iter()
                .map(|v| (v.index, v.netdev.as_str()))
                .collect::<Vec<_>>(),
            vec![(0, "enp3s0f0v0"), (2, "enp3s0f0v2")]
        );
        assert_eq!(vfs[0].pci.as_deref(), Some("0000:03:00.2"));
        assert_eq!(vfs[0].representor, "pf0vf0");
        assert_eq!(vfs[0].mac, [0x02, 0x11, 0x22, 0x33, 0x44, 0x00]);

        // deviceID picks exactly that VF; one in a pod is "try again later".
        assert_eq!(p.sysfs_by_device_id("0000:03:00.4").unwrap().index, 2);
        assert_eq!(
            p.sysfs_by_device_id("0000:03:00.3").unwrap_err().code,
            code::TRY_AGAIN_LATER
        );
        assert_eq!(
            p.sysfs_by_device_id("0000:09:00.1").unwrap_err().code,
            code::INVALID_CONFIG
        );

        // prepare: the VF's own MAC is kept; a zero MAC gets a stable one.
        let mut v0 = vfs[0].clone();
        p.prepare(&mut v0).unwrap();
        let mut v2 = vfs[1].clone();
        p.prepare(&mut v2).unwrap();
        assert_ne!(v2.mac, [0; 6]);
        assert_eq!(v2.mac[0] & 0x03, 0x02, "locally administered unicast");
        let calls = rec.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].0, "p0");
        assert_eq!(calls[0].1, 0);
        assert_eq!(
            calls[0].2,
            VfSettings {
                mac: v0.mac,
                vlan: 100,
                spoofchk: true,
                trust: false
            }
        );
        assert_eq!(calls[1].1, 2);
        assert_eq!(calls[1].2.mac, v2.mac);

        // reset keeps the MAC and clears the VLAN.
        p.reset(&v2.record()).unwrap();
        let last = rec.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!((last.1, last.2.vlan, last.2.mac), (2, 0, v2.mac));

        // a VF that came back from a dead pod netns under another name is found by PCI.
        assert_eq!(
            p.sysfs_netdev_of("0000:03:00.2").as_deref(),
            Some("enp3s0f0v0")
        );
        assert_eq!(p.sysfs_netdev_of("0000:03:00.3"), None);
    }

    #[test]
    fn missing_sriov_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), &Recorder::default());
        let e = p.num_vfs().unwrap_err();
        assert_eq!(e.code, code::VF_BACKEND);
        assert!(e.msg.contains("p0"), "{e}");
    }
}

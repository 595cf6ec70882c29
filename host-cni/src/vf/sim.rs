//! Simulator VFs: veth `vf<k>` in the host netns, peer `pf0vf<k>` (the
//! representor) in the DPU netns, alias `dm-<c>-n<i>-vf<k>` (see
//! docs/simulator.md). The alias survives moves and renames, which is how a
//! VF is recognised wherever it is, and it names the DPU netns so a VF
//! destroyed with its pod netns can be rebuilt.

use std::path::PathBuf;

use dpumesh_sim::{naming, MacAddr};

use super::{Vf, VfPool};
use crate::netlink::{open_netns, parse_mac, LinkInfo, Netlink};
use crate::spec::{code, CniError, CniResult};
use crate::state::VfRecord;

/// 50 ms apart: up to 3 s for the kernel to finish a netns cleanup.
const RECREATE_TRIES: u32 = 60;

pub struct SimPool {
    /// Overrides the DPU netns derived from the VF alias.
    dpu_netns: Option<String>,
}

/// `vf<k>` → k.
pub fn vf_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("vf")?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

/// `dm-<c>-n<i>-vf<k>` → (c, i, k).
pub fn parse_alias(alias: &str) -> Option<(String, usize, usize)> {
    let rest = alias.strip_prefix("dm-")?;
    let (head, k) = rest.rsplit_once("-vf")?;
    let (c, i) = head.rsplit_once("-n")?;
    Some((c.to_string(), i.parse().ok()?, k.parse().ok()?))
}

impl SimPool {
    pub fn new(dpu_netns: Option<String>) -> SimPool {
        SimPool { dpu_netns }
    }

    fn vf_of(link: &LinkInfo) -> Option<Vf> {
        let index = vf_index(&link.name)?;
        Some(Vf {
            index,
            netdev: link.name.clone(),
            pci: None,
            representor: naming::representor_ifname(index as usize),
            mac: link.mac?,
            alias: link.alias.clone(),
        })
    }
}

impl VfPool for SimPool {
    fn id(&self) -> String {
        "sim".into()
    }

    fn host_vfs(&self, nl: &Netlink) -> CniResult<Vec<Vf>> {
        let mut v: Vec<Vf> = nl.links()?.iter().filter_map(Self::vf_of).collect();
        v.sort_by_key(|vf| vf.index);
        Ok(v)
    }

    fn by_device_id(&self, _nl: &Netlink, pci: &str) -> CniResult<Vf> {
        Err(CniError::config(
            format!("deviceID {pci:?} given, but vfBackend \"sim\" has no PCI devices"),
            "drop deviceID/runtimeConfig.deviceID, or use vfBackend \"sriov\"",
        ))
    }

    fn prepare(&self, _vf: &mut Vf) -> CniResult<()> {
        Ok(())
    }

    fn reset(&self, _rec: &VfRecord) -> CniResult<()> {
        Ok(())
    }

    fn locate(&self, nl: &Netlink, rec: &VfRecord) -> CniResult<Option<LinkInfo>> {
        let links = nl.links()?;
        if let Some(alias) = &rec.alias {
            if let Some(l) = links.iter().find(|l| l.alias.as_ref() == Some(alias)) {
                return Ok(Some(l.clone()));
            }
        }
        Ok(links.into_iter().find(|l| l.name == rec.netdev))
    }

    fn recreate(&self, nl: &Netlink, rec: &VfRecord) -> CniResult<bool> {
        let Some((cluster, node, k)) = rec.alias.as_deref().and_then(parse_alias) else {
            return Ok(false);
        };
        let dpu = self
            .dpu_netns
            .clone()
            .unwrap_or_else(|| naming::dpu_netns_name(&cluster, node));
        let Some(dpu_ns) = open_netns(&PathBuf::from(dpumesh_sim::netns::NETNS_DIR).join(&dpu))?
        else {
            return Ok(false);
        };
        let mac = parse_mac(&rec.mac).ok_or_else(|| {
            CniError::new(
                code::VF_BACKEND,
                "corrupt VF record",
                format!(
                    "recorded MAC {:?} of VF {} is not a MAC",
                    rec.mac, rec.index
                ),
            )
        })?;
        let rep_mac = MacAddr::for_representor(node, k).0;
        // The kernel destroys a dead netns's veths asynchronously (cleanup_net
        // workqueue): the old representor may linger for a moment.
        let mut tries = 0;
        loop {
            match nl.add_veth(&rec.netdev, &mac, &rec.representor, &rep_mac, &dpu_ns) {
                Ok(()) => break,
                Err(e) if e.details.contains("File exists") && tries < RECREATE_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if e.details.contains("File exists") => {
                    return Err(CniError::try_later(
                        format!(
                            "cannot re-create VF {}: {} still exists",
                            rec.netdev, rec.representor
                        ),
                        "the old veth pair is still being destroyed; retry DEL",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        let link = nl
            .link(&rec.netdev)?
            .ok_or_else(|| CniError::netlink("re-created VF vanished", rec.netdev.clone()))?;
        if let Some(alias) = &rec.alias {
            nl.set_alias(link.index, alias)?;
        }
        nl.set_up(link.index)?;
        let rep = rec.representor.clone();
        crate::netlink::in_netns(&dpu_ns, move |dnl| {
            if let Some(l) = dnl.link(&rep)? {
                dnl.set_up(l.index)?;
            }
            Ok(())
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(vf_index("vf0"), Some(0));
        assert_eq!(vf_index("vf12"), Some(12));
        assert_eq!(vf_index("vf01"), None);
        assert_eq!(vf_index("vfx"), None);
        assert_eq!(vf_index("pf0vf1"), None);
        assert_eq!(parse_alias("dm-c1-n2-vf3"), Some(("c1".into(), 2, 3)));
        assert_eq!(parse_alias("dm-a-b-n10-vf0"), Some(("a-b".into(), 10, 0)));
        assert_eq!(parse_alias("eth0"), None);
    }
}

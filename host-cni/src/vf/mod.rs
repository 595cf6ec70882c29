//! The VF pool: which VFs exist, which are free in the host netns, and what
//! the backend must do around handing one to a pod.
//!
//! Two backends: [`sriov::SriovPool`] (sysfs + netlink on the PF) and
//! [`sim::SimPool`] (the simulator's veth pairs). Which VF is *taken* is not
//! the backend's business: that is the claim files of [`crate::state`].

pub mod sim;
pub mod sriov;

use crate::netlink::{LinkInfo, Netlink};
use crate::spec::{Backend, CniResult};
use crate::state::VfRecord;

/// A VF the backend offers, with its netdev in the host netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    pub index: u32,
    pub netdev: String,
    pub pci: Option<String>,
    pub representor: String,
    pub mac: [u8; 6],
    pub alias: Option<String>,
}

impl Vf {
    pub fn record(&self) -> VfRecord {
        VfRecord {
            index: self.index,
            netdev: self.netdev.clone(),
            pci: self.pci.clone(),
            representor: self.representor.clone(),
            mac: crate::netlink::format_mac(&self.mac),
            alias: self.alias.clone(),
        }
    }
}

pub trait VfPool {
    /// Names this pool in the state dir (claims of different pools never mix).
    fn id(&self) -> String;

    /// The VFs whose netdev sits in the host netns now, in index order.
    fn host_vfs(&self, nl: &Netlink) -> CniResult<Vec<Vf>>;

    /// The VF with PCI address `pci` (the device plugin's choice), if present
    /// in the host netns.
    fn by_device_id(&self, nl: &Netlink, pci: &str) -> CniResult<Vf>;

    /// Readies `vf` for a pod (SR-IOV: MAC, VLAN, spoof check and trust on the
    /// PF; a zero MAC is replaced by a stable generated one).
    fn prepare(&self, vf: &mut Vf) -> CniResult<()>;

    /// Undoes [`VfPool::prepare`] after the pod is gone.
    fn reset(&self, rec: &VfRecord) -> CniResult<()>;

    /// Finds the VF's netdev in the host netns, whatever it is called now
    /// (a physical VF comes back from a dead pod netns under its pod name).
    fn locate(&self, nl: &Netlink, rec: &VfRecord) -> CniResult<Option<LinkInfo>>;

    /// Rebuilds a VF that no longer exists anywhere (a simulator veth is
    /// destroyed with its pod netns). Returns false when it cannot.
    fn recreate(&self, nl: &Netlink, rec: &VfRecord) -> CniResult<bool>;
}

/// The pool for a network config.
pub fn pool_for(backend: &Backend) -> Box<dyn VfPool> {
    match backend {
        Backend::Sim { dpu_netns } => Box::new(sim::SimPool::new(dpu_netns.clone())),
        Backend::Sriov {
            pf,
            sysfs_root,
            vlan,
            spoofchk,
            trust,
        } => Box::new(sriov::SriovPool::new(
            pf.clone(),
            sysfs_root.clone(),
            *vlan,
            *spoofchk,
            *trust,
            Box::new(sriov::NetlinkPf),
        )),
    }
}

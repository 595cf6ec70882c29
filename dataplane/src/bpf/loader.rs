//! Loads the TC programs with aya, pins and reuses their maps, attaches them
//! to representors and the uplink, and turns desired pod/network state into
//! map entries (plus the few routes the programs rely on, see netcfg.rs).
//!
//! Restart without interruption: maps are pinned under the node's pin dir and
//! reopened as they are; the TC filters are attached through netlink (clsact,
//! fixed priority/handle) so they stay in the kernel when the process exits,
//! and a new process replaces them in place. Nothing is flushed: [`BpfDataplane::reconcile`]
//! adopts entries that match the desired state and removes only the rest.
use std::collections::{BTreeSet, HashMap as StdHashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use ipnet::{Ipv4Net, Ipv6Net};

use super::maps::{
    self, CidrData, CidrValue, Endpoint, Ip6Key, NodeConfig, PodCounters, Tunnel, CIDR_CAPTURE,
    CIDR_EXCLUDE, COUNTER_SLOTS, EP_IPV6, MAX_PODS,
};
use super::netcfg::{self, NetCfgError, PeerRoutes};
use super::spec::{underlay6, NetworkSpec, PodSpec};
use super::{
    DM_TC_OBJ, GATEWAY_MAC, INBOUND_PORT, OUTBOUND_PORT, PROG_REP_EGRESS, PROG_REP_INGRESS,
    PROG_TUNNEL_INGRESS, PROG_UPLINK_INGRESS, STEER_MARK, TUNNEL_IFNAME, VXLAN_PORT,
};

/// Where bpffs is mounted for dpumesh (not /sys/fs/bpf: `ip netns exec`
/// remounts /sys).
pub const BPFFS_ROOT: &str = "/run/dpumesh/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Our TC filters: clsact, this priority and handle, on ingress and egress.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF map: {0}")]
    Map(#[from] MapError),
    #[error("eBPF program: {0}")]
    Program(#[from] ProgramError),
    #[error(transparent)]
    NetCfg(#[from] NetCfgError),
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: String,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("representor {0:?} does not exist in this netns")]
    UnknownRepresentor(String),
    #[error("interface {0:?} does not exist in this netns")]
    UnknownInterface(String),
    #[error("all {MAX_PODS} pod slots are in use")]
    Full,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

/// The node's pin directory, `<bpffs root>/<node-id>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/run/dpumesh/bpf/<node-id>/`.
    pub fn for_node(node_id: &str) -> Result<PinDir, BpfError> {
        PinDir::under(Path::new(BPFFS_ROOT), node_id)
    }

    /// `<root>/<node-id>/`; `root` is (or becomes) a bpffs mount.
    pub fn under(root: &Path, node_id: &str) -> Result<PinDir, BpfError> {
        let ok = !node_id.is_empty()
            && node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && node_id != "."
            && node_id != "..";
        if !ok {
            return Err(BpfError::Invalid(format!(
                "node id {node_id:?}: must be non-empty [A-Za-z0-9._-]"
            )));
        }
        Ok(PinDir(root.join(node_id)))
    }

    /// Mounts bpffs at the parent dir if it is not one yet, and creates the dir.
    pub fn ensure(&self) -> Result<(), BpfError> {
        let root = self.0.parent().unwrap_or(Path::new(BPFFS_ROOT));
        ensure_bpffs(root)?;
        std::fs::create_dir_all(&self.0).map_err(|e| io_err("creating", &self.0, e))
    }

    /// Removes the pins (the maps live on while programs use them).
    pub fn remove(&self) -> Result<(), BpfError> {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &self.0, e)),
        }
    }
}

fn io_err(what: &'static str, path: &Path, e: impl std::fmt::Display) -> BpfError {
    BpfError::Io {
        what,
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

fn ensure_bpffs(root: &Path) -> Result<(), BpfError> {
    std::fs::create_dir_all(root).map_err(|e| io_err("creating", root, e))?;
    let fs = nix::sys::statfs::statfs(root).map_err(|e| io_err("statfs", root, e))?;
    #[allow(clippy::unnecessary_cast)]
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| io_err("mounting bpffs at", root, e))
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// A pod as installed in the maps.
#[derive(Clone)]
struct Installed {
    spec: PodSpec,
    ifindex: u32,
    slot: u32,
    cidrs: Vec<(Key<CidrData>, CidrValue)>,
}

/// A pod entry found in the pinned maps at load that no pod has claimed
/// yet: it keeps forwarding until a pod adopts it or [`BpfDataplane::reconcile`]
/// sweeps it.
#[derive(Clone)]
struct Restored {
    ep: Endpoint,
    cidrs: Vec<(Key<CidrData>, CidrValue)>,
}

/// One map write of [`BpfDataplane::apply_pod`] and what it replaced, so a
/// half-way failure can be undone.
enum Undo {
    EpIp(u32, Option<Endpoint>),
    EpIp6(Ip6Key, Option<Endpoint>),
    EpIfindex(u32, Option<Endpoint>),
    Cidr(Key<CidrData>, Option<CidrValue>),
}

/// Sizes of the per-pod state in the maps (for tests and status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapUsage {
    pub endpoints_by_ifindex: usize,
    pub endpoints_by_ip: usize,
    pub endpoints_by_ip6: usize,
    /// Per-pod outbound CIDR entries (scope != 0).
    pub pod_cidrs: usize,
    /// Node-wide captured CIDRs (scope 0).
    pub node_cidrs: usize,
    /// Pod counter slots with any non-zero value (the unattributed slot aside).
    pub used_counter_slots: usize,
}

/// The loaded programs and their maps.
pub struct BpfDataplane {
    ebpf: Ebpf,
    /// Attach programs and install routes; off for `BPF_PROG_TEST_RUN` tests,
    /// which only need the programs and maps.
    kernel: bool,
    ep_ifindex: HashMap<MapData, u32, Endpoint>,
    ep_ip: HashMap<MapData, u32, Endpoint>,
    ep_ip6: HashMap<MapData, Ip6Key, Endpoint>,
    node: Array<MapData, NodeConfig>,
    out_cidrs: LpmTrie<MapData, CidrData, CidrValue>,
    /// Node-wide IPv6 destinations the IPv4 rules would capture (the IPv6
    /// pod CIDRs): refused for meshed pods, as dpu-proxy has no IPv6 yet.
    out_cidrs6: LpmTrie<MapData, [u8; 16], CidrValue>,
    counters: PerCpuArray<MapData, PodCounters>,
    tunnels: LpmTrie<MapData, u32, Tunnel>,
    tunnels6: LpmTrie<MapData, [u8; 16], Tunnel>,
    pods: StdHashMap<String, Installed>,
    /// Leftovers of a previous run, by representor ifindex (see [`Restored`]).
    restored: StdHashMap<u32, Restored>,
    free_slots: BTreeSet<u32>,
    attached: HashSet<(String, bool)>,
    network: Option<NetworkSpec>,
    /// Test hook: fail apply_pod after its map writes (checks the rollback).
    fail_after_map_writes: bool,
    /// Test hook: fail apply_network after its routes and map writes.
    fail_network_after_writes: bool,
}

/// What [`BpfDataplane::apply_network`] may change, as it was before the
/// call, so a failure half-way can put it back.
struct NetworkBefore {
    tunnels: Vec<(Key<u32>, Tunnel)>,
    tunnels6: Vec<(Key<[u8; 16]>, Tunnel)>,
    node_cidrs: Vec<(Key<CidrData>, CidrValue)>,
    node_cidrs6: Vec<(Key<[u8; 16]>, CidrValue)>,
    node: Option<NodeConfig>,
    /// Kernel mode: the dpumesh peer routes (`netcfg::peer_routes`).
    peer_routes: Option<Vec<String>>,
    peer_routes6: Option<Vec<String>>,
    tunnel_existed: bool,
}

impl BpfDataplane {
    /// Loads the programs with maps pinned in (and reused from) `pin`, ready
    /// to attach. Call [`BpfDataplane::reconcile`] next.
    pub fn load(pin: &PinDir) -> Result<BpfDataplane, BpfError> {
        pin.ensure()?;
        let mut loader = EbpfLoader::new();
        for name in maps::ALL_MAPS {
            loader.map_pin_path(name, pin.0.join(name));
        }
        let ebpf = loader.load(DM_TC_OBJ)?;
        let mut dp = BpfDataplane::from_ebpf(ebpf, true)?;
        dp.restore()?;
        Ok(dp)
    }

    /// Loads the programs with private, unpinned maps and never touches
    /// links or routes: for running the programs with `BPF_PROG_TEST_RUN`.
    pub fn load_detached() -> Result<BpfDataplane, BpfError> {
        let ebpf = EbpfLoader::new().load(DM_TC_OBJ)?;
        BpfDataplane::from_ebpf(ebpf, false)
    }

    fn from_ebpf(mut ebpf: Ebpf, kernel: bool) -> Result<BpfDataplane, BpfError> {
        for name in [
            PROG_REP_INGRESS,
            PROG_REP_EGRESS,
            PROG_UPLINK_INGRESS,
            PROG_TUNNEL_INGRESS,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing("TC program"))?
                .try_into()?;
            prog.load()?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(BpfError::Missing("map"));
        let ep_ifindex = HashMap::try_from(take(maps::MAP_EP_IFINDEX)?)?;
        let ep_ip = HashMap::try_from(take(maps::MAP_EP_IP)?)?;
        let ep_ip6 = HashMap::try_from(take(maps::MAP_EP_IP6)?)?;
        let node = Array::try_from(take(maps::MAP_NODE)?)?;
        let out_cidrs = LpmTrie::try_from(take(maps::MAP_OUT_CIDRS)?)?;
        let out_cidrs6 = LpmTrie::try_from(take(maps::MAP_OUT_CIDRS6)?)?;
        let counters = PerCpuArray::try_from(take(maps::MAP_COUNTERS)?)?;
        let tunnels = LpmTrie::try_from(take(maps::MAP_TUNNELS)?)?;
        let tunnels6 = LpmTrie::try_from(take(maps::MAP_TUNNELS6)?)?;
        Ok(BpfDataplane {
            ebpf,
            kernel,
            ep_ifindex,
            ep_ip,
            ep_ip6,
            node,
            out_cidrs,
            out_cidrs6,
            counters,
            tunnels,
            tunnels6,
            pods: StdHashMap::new(),
            restored: StdHashMap::new(),
            free_slots: (0..MAX_PODS).collect(),
            attached: HashSet::new(),
            network: None,
            fail_after_map_writes: false,
            fail_network_after_writes: false,
        })
    }

    /// Takes stock of the pod entries a previous run left in the pinned
    /// maps. They keep forwarding (nothing is flushed) and their counter
    /// slots are reserved until a pod adopts them ([`BpfDataplane::apply_pod`]
    /// with the same representor, IP and MAC keeps slot and counters) or
    /// [`BpfDataplane::reconcile`] sweeps them.
    fn restore(&mut self) -> Result<(), BpfError> {
        let existing: Vec<(u32, Endpoint)> =
            self.ep_ifindex.iter().filter_map(Result::ok).collect();
        let all_cidrs: Vec<(Key<CidrData>, CidrValue)> =
            self.out_cidrs.iter().filter_map(Result::ok).collect();
        for (ifx, ep) in existing {
            if ep.slot < MAX_PODS && self.free_slots.remove(&ep.slot) {
                let cidrs = all_cidrs
                    .iter()
                    .filter(|(k, _)| k.data().scope == ep.slot + 1)
                    .copied()
                    .collect();
                self.restored.insert(ifx, Restored { ep, cidrs });
            } else {
                // A slot out of range or used twice: not ours to trust.
                remove_ok(self.ep_ifindex.remove(&ifx))?;
            }
        }
        Ok(())
    }

    /// Number of leftover entries not adopted yet.
    pub fn restored_count(&self) -> usize {
        self.restored.len()
    }

    /// Test hook: make [`BpfDataplane::apply_pod`] fail after it wrote the
    /// maps, as a failing route or attach would, to check its rollback.
    #[doc(hidden)]
    pub fn fail_after_map_writes(&mut self, on: bool) {
        self.fail_after_map_writes = on;
    }

    /// Test hook: make [`BpfDataplane::apply_network`] fail after it changed
    /// routes and maps, as a failing attach would, to check its rollback.
    #[doc(hidden)]
    pub fn fail_network_after_writes(&mut self, on: bool) {
        self.fail_network_after_writes = on;
    }

    /// One of the loaded programs (e.g. for `BPF_PROG_TEST_RUN`).
    pub fn program(&self, name: &str) -> Result<&SchedClassifier, BpfError> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or(BpfError::Missing("TC program"))?
            .try_into()?)
    }

    /// Attaches `prog` to `ifname` as our clsact filter, replacing the one a
    /// previous run left there (atomically, so no packet sees no program).
    /// The filter stays attached after this process exits.
    fn attach(&mut self, prog: &str, ifname: &str, ty: TcAttachType) -> Result<(), BpfError> {
        let key = (ifname.to_string(), ty == TcAttachType::Ingress);
        if !self.kernel || self.attached.contains(&key) {
            return Ok(());
        }
        // Fails with EEXIST when the qdisc is there already, which is fine;
        // a real problem shows up in the attach below.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .ok_or(BpfError::Missing("TC program"))?
            .try_into()?;
        let opts = || {
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                ..Default::default()
            })
        };
        let id = match p.attach_with_options(ifname, ty, opts()) {
            Ok(id) => id,
            Err(create_err) => {
                let link = SchedClassifierLink::attached(ifname, ty, TC_PRIORITY, TC_HANDLE, None)
                    .map_err(|_| BpfError::UnknownInterface(ifname.to_string()))?;
                p.attach_to_link(link).map_err(|_| create_err)?
            }
        };
        let link = p.take_link(id)?;
        // Dropping the link would detach it; the filter must outlive us.
        std::mem::forget(link);
        self.attached.insert(key);
        Ok(())
    }

    /// Sets the node's network: node config map, node-wide captured CIDRs,
    /// overlay peers, and (kernel mode) sysctls, steering rule, peer routes,
    /// the VXLAN device (overlay), the uplink and tunnel programs.
    ///
    /// All or nothing: when a step fails, the maps (node config, node-wide
    /// CIDRs, tunnels), the dpumesh peer routes and the VXLAN device are put
    /// back as they were before the call. Idempotent kernel settings
    /// (forwarding sysctls, the steering rule, the uplink up) and a program
    /// already attached stay.
    pub fn apply_network(&mut self, net: &NetworkSpec) -> Result<(), BpfError> {
        if net.mode != maps::MODE_UNDERLAY && net.mode != maps::MODE_OVERLAY {
            return Err(BpfError::Invalid(format!("unknown mode {}", net.mode)));
        }
        let uplink_ifindex = match ifindex(&net.uplink) {
            Some(i) => i,
            None if !self.kernel => 0,
            None => return Err(BpfError::UnknownInterface(net.uplink.clone())),
        };
        let before = NetworkBefore {
            tunnels: self.tunnels.iter().collect::<Result<_, _>>()?,
            tunnels6: self.tunnels6.iter().collect::<Result<_, _>>()?,
            node_cidrs: self
                .out_cidrs
                .iter()
                .filter(|r| r.as_ref().map_or(true, |(k, _)| k.data().scope == 0))
                .collect::<Result<_, _>>()?,
            node_cidrs6: self.out_cidrs6.iter().collect::<Result<_, _>>()?,
            node: self.node.get(&0, 0).ok(),
            peer_routes: if self.kernel {
                Some(netcfg::peer_routes()?)
            } else {
                None
            },
            peer_routes6: if self.kernel {
                Some(netcfg::peer_routes6()?)
            } else {
                None
            },
            tunnel_existed: ifindex(TUNNEL_IFNAME).is_some(),
        };
        match self.write_network(net, uplink_ifindex) {
            Ok(()) => {
                if self.kernel && net.mode != maps::MODE_OVERLAY {
                    // Only now: a rollback never has to recreate it.
                    netcfg::remove_tunnel(TUNNEL_IFNAME);
                    self.attached.remove(&(TUNNEL_IFNAME.to_string(), true));
                }
                self.network = Some(net.clone());
                Ok(())
            }
            Err(e) => {
                self.rollback_network(before);
                Err(e)
            }
        }
    }

    /// Puts back what [`BpfDataplane::write_network`] may have changed.
    fn rollback_network(&mut self, before: NetworkBefore) {
        let warn = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "rollback of the node network: {what}");
        };
        if let Some(cfg) = before.node {
            if let Err(e) = self.node.set(0, cfg, 0) {
                warn("node config", &e);
            }
        }
        let have: Vec<Key<u32>> = self.tunnels.keys().filter_map(Result::ok).collect();
        for k in have {
            if !before
                .tunnels
                .iter()
                .any(|(b, _)| b.prefix_len() == k.prefix_len() && b.data() == k.data())
            {
                if let Err(e) = remove_ok(self.tunnels.remove(&k)) {
                    warn("tunnel entry", &e);
                }
            }
        }
        for (k, v) in &before.tunnels {
            if let Err(e) = self.tunnels.insert(k, *v, 0) {
                warn("tunnel entry", &e);
            }
        }
        let have: Vec<Key<[u8; 16]>> = self.tunnels6.keys().filter_map(Result::ok).collect();
        for k in have {
            if !before
                .tunnels6
                .iter()
                .any(|(b, _)| b.prefix_len() == k.prefix_len() && b.data() == k.data())
            {
                if let Err(e) = remove_ok(self.tunnels6.remove(&k)) {
                    warn("IPv6 tunnel entry", &e);
                }
            }
        }
        for (k, v) in &before.tunnels6 {
            if let Err(e) = self.tunnels6.insert(k, *v, 0) {
                warn("IPv6 tunnel entry", &e);
            }
        }
        let have: Vec<Key<CidrData>> = self
            .out_cidrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().scope == 0)
            .collect();
        for k in have {
            if !before.node_cidrs.iter().any(|(b, _)| same_key(b, &k)) {
                if let Err(e) = remove_ok(self.out_cidrs.remove(&k)) {
                    warn("node CIDR", &e);
                }
            }
        }
        for (k, v) in &before.node_cidrs {
            if let Err(e) = self.out_cidrs.insert(k, *v, 0) {
                warn("node CIDR", &e);
            }
        }
        let have: Vec<Key<[u8; 16]>> = self.out_cidrs6.keys().filter_map(Result::ok).collect();
        for k in have {
            if !before
                .node_cidrs6
                .iter()
                .any(|(b, _)| b.prefix_len() == k.prefix_len() && b.data() == k.data())
            {
                if let Err(e) = remove_ok(self.out_cidrs6.remove(&k)) {
                    warn("node IPv6 CIDR", &e);
                }
            }
        }
        for (k, v) in &before.node_cidrs6 {
            if let Err(e) = self.out_cidrs6.insert(k, *v, 0) {
                warn("node IPv6 CIDR", &e);
            }
        }
        if let Some(routes) = &before.peer_routes {
            if let Err(e) = netcfg::restore_peer_routes(routes) {
                warn("peer routes", &e);
            }
        }
        if let Some(routes) = &before.peer_routes6 {
            if let Err(e) = netcfg::restore_peer_routes6(routes) {
                warn("IPv6 peer routes", &e);
            }
        }
        if self.kernel && !before.tunnel_existed {
            netcfg::remove_tunnel(TUNNEL_IFNAME);
            self.attached.remove(&(TUNNEL_IFNAME.to_string(), true));
        }
    }

    /// The steps of [`BpfDataplane::apply_network`] that can fail.
    fn write_network(&mut self, net: &NetworkSpec, uplink_ifindex: u32) -> Result<(), BpfError> {
        let overlay = net.mode == maps::MODE_OVERLAY;
        let mut tunnel_ifindex = 0;
        if self.kernel {
            netcfg::prepare_node()?;
            netcfg::prepare_link(&net.uplink)?;
            let peers: Vec<(Ipv4Net, Ipv4Addr)> = net
                .peers
                .iter()
                .map(|p| (p.pod_cidr, p.underlay_ip))
                .collect();
            if overlay {
                tunnel_ifindex = netcfg::ensure_tunnel(TUNNEL_IFNAME, VXLAN_PORT)?;
                netcfg::sync_peer_routes(
                    PeerRoutes::Overlay {
                        tunnel: TUNNEL_IFNAME,
                        vni: net.vni,
                    },
                    &peers,
                )?;
            } else {
                netcfg::sync_peer_routes(
                    PeerRoutes::Underlay {
                        uplink: &net.uplink,
                    },
                    &peers,
                )?;
            }
            // Dual stack. Underlay: peers' IPv6 pod CIDRs via their derived
            // underlay IPv6 address (spec::underlay6), ours on the uplink.
            // Overlay: the programs tunnel IPv6 themselves, no routes.
            let v6_underlay = net.pod_cidr6.is_some() && !overlay;
            let peers6: Vec<(Ipv6Net, Ipv6Addr)> = if v6_underlay {
                net.peers
                    .iter()
                    .filter_map(|p| p.pod_cidr6.map(|c| (c, underlay6(p.underlay_ip))))
                    .collect()
            } else {
                Vec::new()
            };
            if net.pod_cidr6.is_some() {
                netcfg::prepare_node_ipv6()?;
            }
            if v6_underlay {
                netcfg::set_underlay6(&net.uplink, Some(underlay6(net.underlay_ip)))?;
                netcfg::sync_peer_routes6(&net.uplink, &peers6)?;
            } else if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                netcfg::sync_peer_routes6(&net.uplink, &[])?;
                netcfg::set_underlay6(&net.uplink, None)?;
            }
        }

        // Overlay peers: exactly the peers' pod CIDRs (none in underlay mode).
        let want_tunnels: StdHashMap<(u32, u32), Tunnel> = if overlay {
            net.peers
                .iter()
                .map(|p| {
                    (
                        (
                            u32::from(p.pod_cidr.prefix_len()),
                            maps::ipv4_be(p.pod_cidr.network()),
                        ),
                        Tunnel {
                            remote_ipv4: u32::from(p.underlay_ip),
                            vni: net.vni,
                        },
                    )
                })
                .collect()
        } else {
            StdHashMap::new()
        };
        for (&(plen, addr), t) in &want_tunnels {
            self.tunnels.insert(&Key::new(plen, addr), *t, 0)?;
        }
        let have: Vec<Key<u32>> = self.tunnels.keys().filter_map(Result::ok).collect();
        for k in have {
            if !want_tunnels.contains_key(&(k.prefix_len(), k.data())) {
                remove_ok(self.tunnels.remove(&k))?;
            }
        }
        // The same for peers' IPv6 pod CIDRs (IPv6 inside, IPv4 outside).
        let want_tunnels6: StdHashMap<(u32, [u8; 16]), Tunnel> = if overlay {
            net.peers
                .iter()
                .filter_map(|p| {
                    let c = p.pod_cidr6?;
                    Some((
                        (u32::from(c.prefix_len()), c.network().octets()),
                        Tunnel {
                            remote_ipv4: u32::from(p.underlay_ip),
                            vni: net.vni,
                        },
                    ))
                })
                .collect()
        } else {
            StdHashMap::new()
        };
        for (&(plen, addr), t) in &want_tunnels6 {
            self.tunnels6.insert(&Key::new(plen, addr), *t, 0)?;
        }
        let have: Vec<Key<[u8; 16]>> = self.tunnels6.keys().filter_map(Result::ok).collect();
        for k in have {
            if !want_tunnels6.contains_key(&(k.prefix_len(), k.data())) {
                remove_ok(self.tunnels6.remove(&k))?;
            }
        }

        // Node-wide captured destinations: services and every pod CIDR.
        let mut want: StdHashMap<(u32, u32), CidrValue> = StdHashMap::new();
        let capture = CidrValue {
            action: CIDR_CAPTURE,
        };
        for c in net
            .service_cidrs
            .iter()
            .chain(std::iter::once(&net.pod_cidr))
            .chain(net.peers.iter().map(|p| &p.pod_cidr))
        {
            want.insert(
                (u32::from(c.prefix_len()), maps::ipv4_be(c.network())),
                capture,
            );
        }
        let have: Vec<Key<CidrData>> = self
            .out_cidrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().scope == 0)
            .collect();
        for (&(plen, addr), v) in &want {
            self.out_cidrs.insert(&cidr_key(0, plen, addr), *v, 0)?;
        }
        for k in have {
            let plen = k.prefix_len() - 32;
            if !want.contains_key(&(plen, k.data().addr)) {
                remove_ok(self.out_cidrs.remove(&k))?;
            }
        }
        // Their IPv6 counterpart: this node's and every peer's IPv6 pod
        // CIDR. The programs refuse a meshed pod's IPv6 TCP to them (there is
        // no IPv6 service CIDR: service CIDRs are IPv4).
        let want6: StdHashMap<(u32, [u8; 16]), CidrValue> = net
            .pod_cidr6
            .iter()
            .chain(net.peers.iter().filter_map(|p| p.pod_cidr6.as_ref()))
            .map(|c| ((u32::from(c.prefix_len()), c.network().octets()), capture))
            .collect();
        for (&(plen, addr), v) in &want6 {
            self.out_cidrs6.insert(&Key::new(plen, addr), *v, 0)?;
        }
        let have6: Vec<Key<[u8; 16]>> = self.out_cidrs6.keys().filter_map(Result::ok).collect();
        for k in have6 {
            if !want6.contains_key(&(k.prefix_len(), k.data())) {
                remove_ok(self.out_cidrs6.remove(&k))?;
            }
        }

        let cfg = NodeConfig {
            gateway_ipv4: maps::ipv4_be(net.gateway()),
            pod_cidr_ipv4: maps::ipv4_be(net.pod_cidr.network()),
            pod_cidr_prefix: u32::from(net.pod_cidr.prefix_len()),
            gateway_mac: GATEWAY_MAC,
            mode: net.mode,
            ready: 1,
            uplink_ifindex,
            underlay_ipv4: maps::ipv4_be(net.underlay_ip),
            outbound_port: maps::port_be(OUTBOUND_PORT),
            inbound_port: maps::port_be(INBOUND_PORT),
            steer_mark: STEER_MARK,
            vni: net.vni,
            tunnel_ifindex,
            gateway_ipv6: net.gateway6().map(|g| g.octets()).unwrap_or_default(),
        };
        self.node.set(0, cfg, 0)?;
        if self.fail_network_after_writes {
            return Err(BpfError::Invalid(
                "injected failure after the node network writes".into(),
            ));
        }
        if self.kernel {
            self.attach(PROG_UPLINK_INGRESS, &net.uplink, TcAttachType::Ingress)?;
            if overlay {
                self.attach(PROG_TUNNEL_INGRESS, TUNNEL_IFNAME, TcAttachType::Ingress)?;
            }
        }
        Ok(())
    }

    /// Detaches every program this dataplane attached (and any it finds
    /// from an earlier run on these links): the links then forward as plain
    /// kernel devices. Maps and pins are left alone. For benchmarks and
    /// teardown.
    pub fn detach_all(&mut self, links: &[&str]) -> Result<(), BpfError> {
        for link in links {
            for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
                if let Ok(l) = SchedClassifierLink::attached(link, ty, TC_PRIORITY, TC_HANDLE, None)
                {
                    let _ = aya::programs::links::Link::detach(l);
                }
                self.attached
                    .remove(&(link.to_string(), ty == TcAttachType::Ingress));
            }
        }
        Ok(())
    }

    /// Attaches the representor programs to `ifname` without a pod behind it:
    /// everything it sends is dropped (unknown VF) until a pod is applied.
    pub fn attach_representor(&mut self, ifname: &str) -> Result<(), BpfError> {
        if ifindex(ifname).is_none() {
            return Err(BpfError::UnknownRepresentor(ifname.to_string()));
        }
        if self.kernel {
            netcfg::prepare_representor(ifname)?;
        }
        self.attach(PROG_REP_INGRESS, ifname, TcAttachType::Ingress)?;
        self.attach(PROG_REP_EGRESS, ifname, TcAttachType::Egress)
    }

    /// Installs or updates one pod. Same spec again = no change.
    ///
    /// All or nothing: a failure half-way (a map write, the representor's
    /// program, its route) undoes what this call wrote, so the maps hold
    /// what they held before. A pod of a previous run left on the same
    /// representor with the same IP and MAC is adopted in place: no gap in
    /// forwarding, counters kept.
    pub fn apply_pod(&mut self, spec: &PodSpec) -> Result<(), BpfError> {
        let ifx = ifindex(&spec.representor)
            .ok_or_else(|| BpfError::UnknownRepresentor(spec.representor.clone()))?;
        for (uid, other) in &self.pods {
            if uid == &spec.uid {
                continue;
            }
            if other.ifindex == ifx {
                return Err(BpfError::Conflict(format!(
                    "representor {} is held by pod {uid}",
                    spec.representor
                )));
            }
            if other.spec.ipv4 == spec.ipv4 {
                return Err(BpfError::Conflict(format!(
                    "IP {} is held by pod {uid}",
                    spec.ipv4
                )));
            }
            if let Some(v6) = spec.ipv6.filter(|v6| other.spec.ipv6 == Some(*v6)) {
                return Err(BpfError::Conflict(format!("IP {v6} is held by pod {uid}")));
            }
        }
        let i = &spec.interception;
        let too_many =
            |what: &str| BpfError::Invalid(format!("more than {} {what}", maps::MAX_PORTS));
        let in_capture = maps::port_list(&i.capture_inbound_ports)
            .ok_or_else(|| too_many("capture_inbound_ports"))?;
        let in_exclude = maps::port_list(&i.exclude_inbound_ports)
            .ok_or_else(|| too_many("exclude_inbound_ports"))?;
        let out_exclude = maps::port_list(&i.exclude_outbound_ports)
            .ok_or_else(|| too_many("exclude_outbound_ports"))?;

        // What this pod replaces: its own older spec, or a leftover of a
        // previous run on the same representor (adopted).
        let mut old = self.pods.get(&spec.uid).cloned();
        let mut adopted = None;
        if old.is_none() {
            if let Some(r) = self.restored.get(&ifx) {
                let same = r.ep.ipv4 == maps::ipv4_be(spec.ipv4) && r.ep.mac == spec.mac;
                adopted = Some((r.ep.slot, same));
                old = Some(Installed {
                    spec: PodSpec {
                        ipv4: maps::ipv4_from_be(r.ep.ipv4),
                        ipv6: endpoint_ipv6(&r.ep),
                        ..spec.clone()
                    },
                    ifindex: ifx,
                    slot: r.ep.slot,
                    cidrs: r.cidrs.clone(),
                });
            }
        }
        let (slot, new_slot) = match &old {
            Some(o) => (o.slot, false),
            None => (*self.free_slots.first().ok_or(BpfError::Full)?, true),
        };
        // A different pod on a leftover's VF starts from zero.
        let reset_counters = new_slot || matches!(adopted, Some((_, false)));
        let mut flags = 0u16;
        if spec.meshed {
            flags |= maps::EP_MESHED;
        }
        if !i.capture_outbound_cidrs.is_empty() {
            flags |= maps::EP_CUSTOM_OUT_CIDRS;
        }
        if !i.capture_inbound_ports.is_empty() {
            flags |= maps::EP_IN_PORT_LIST;
        }
        if spec.ipv6.is_some() {
            flags |= EP_IPV6;
        }
        let ep = Endpoint {
            ifindex: ifx,
            ipv4: maps::ipv4_be(spec.ipv4),
            mac: spec.mac,
            flags,
            slot,
            vf_index: spec.vf_index,
            in_capture_ports: in_capture,
            in_exclude_ports: in_exclude,
            out_exclude_ports: out_exclude,
            ipv6: spec.ipv6.map(|a| a.octets()).unwrap_or_default(),
        };

        // Per-pod CIDRs; the longest prefix decides, an exclude beats an
        // equal capture.
        let scope = slot + 1;
        let mut cidrs: StdHashMap<(u32, u32), CidrValue> = StdHashMap::new();
        for c in &i.capture_outbound_cidrs {
            cidrs.insert(
                (u32::from(c.prefix_len()), maps::ipv4_be(c.network())),
                CidrValue {
                    action: CIDR_CAPTURE,
                },
            );
        }
        for c in &i.exclude_outbound_cidrs {
            cidrs.insert(
                (u32::from(c.prefix_len()), maps::ipv4_be(c.network())),
                CidrValue {
                    action: CIDR_EXCLUDE,
                },
            );
        }
        let cidrs: Vec<(Key<CidrData>, CidrValue)> = cidrs
            .into_iter()
            .map(|((plen, addr), v)| (cidr_key(scope, plen, addr), v))
            .collect();

        let mut undo = Vec::new();
        if let Err(e) = self.write_pod(spec, &ep, &cidrs, old.as_ref(), reset_counters, &mut undo) {
            self.rollback(undo, spec, old.as_ref());
            return Err(e);
        }

        // Committed: drop the stale parts of what it replaced.
        if let Some(o) = &old {
            if o.spec.ipv4 != spec.ipv4 {
                remove_ok(self.ep_ip.remove(&maps::ipv4_be(o.spec.ipv4)))?;
                if self.kernel {
                    netcfg::remove_pod_route(o.spec.ipv4, &o.spec.representor);
                }
            }
            if let Some(v6) = o.spec.ipv6.filter(|v6| spec.ipv6 != Some(*v6)) {
                remove_ok(self.ep_ip6.remove(&ip6_key(v6)))?;
            }
            if o.ifindex != ifx {
                remove_ok(self.ep_ifindex.remove(&o.ifindex))?;
            }
            for (k, _) in &o.cidrs {
                if !cidrs.iter().any(|(n, _)| same_key(n, k)) {
                    remove_ok(self.out_cidrs.remove(k))?;
                }
            }
        }
        if new_slot {
            self.free_slots.remove(&slot);
        }
        if adopted.is_some() {
            self.restored.remove(&ifx);
        }
        self.pods.insert(
            spec.uid.clone(),
            Installed {
                spec: spec.clone(),
                ifindex: ifx,
                slot,
                cidrs,
            },
        );
        // A leftover elsewhere with this pod's IP is stale now (swept after
        // the pod is recorded, so the sweep keeps the IP entries it owns).
        let stale: Vec<u32> = self
            .restored
            .iter()
            .filter(|(_, r)| {
                r.ep.ipv4 == ep.ipv4 || (spec.ipv6.is_some() && endpoint_ipv6(&r.ep) == spec.ipv6)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.sweep_restored_one(k)?;
        }
        Ok(())
    }

    /// The writes of [`BpfDataplane::apply_pod`], each recorded in `undo`
    /// with what it replaced. Order: the IP entry and CIDRs first, the
    /// ifindex entry (which makes the pod's own packets pass) last.
    fn write_pod(
        &mut self,
        spec: &PodSpec,
        ep: &Endpoint,
        cidrs: &[(Key<CidrData>, CidrValue)],
        old: Option<&Installed>,
        reset_counters: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<(), BpfError> {
        if reset_counters {
            // Zero before use; a slot that is not in use holds zeros anyway,
            // so this needs no undo.
            self.zero_counters(ep.slot)?;
        }
        let prev = self.ep_ip.get(&ep.ipv4, 0).ok();
        undo.push(Undo::EpIp(ep.ipv4, prev));
        self.ep_ip.insert(ep.ipv4, *ep, 0)?;
        if let Some(v6) = spec.ipv6 {
            let k = ip6_key(v6);
            let prev = self.ep_ip6.get(&k, 0).ok();
            undo.push(Undo::EpIp6(k, prev));
            self.ep_ip6.insert(k, *ep, 0)?;
        }
        for (k, v) in cidrs {
            let prev = old
                .and_then(|o| o.cidrs.iter().find(|(ok, _)| same_key(ok, k)))
                .map(|(_, v)| *v);
            undo.push(Undo::Cidr(*k, prev));
            self.out_cidrs.insert(k, *v, 0)?;
        }
        let prev = self.ep_ifindex.get(&ep.ifindex, 0).ok();
        undo.push(Undo::EpIfindex(ep.ifindex, prev));
        self.ep_ifindex.insert(ep.ifindex, *ep, 0)?;
        if self.fail_after_map_writes {
            return Err(BpfError::Invalid(
                "injected failure after the map writes".into(),
            ));
        }
        if self.kernel {
            self.attach_representor(&spec.representor)?;
            netcfg::add_pod_route(spec.ipv4, &spec.representor, spec.mac)?;
        }
        Ok(())
    }

    /// Undoes `undo` (newest first) and restores the route `old` had.
    fn rollback(&mut self, undo: Vec<Undo>, spec: &PodSpec, old: Option<&Installed>) {
        for u in undo.into_iter().rev() {
            let r = match u {
                Undo::EpIp(k, Some(v)) => self.ep_ip.insert(k, v, 0),
                Undo::EpIp(k, None) => self.ep_ip.remove(&k),
                Undo::EpIp6(k, Some(v)) => self.ep_ip6.insert(k, v, 0),
                Undo::EpIp6(k, None) => self.ep_ip6.remove(&k),
                Undo::EpIfindex(k, Some(v)) => self.ep_ifindex.insert(k, v, 0),
                Undo::EpIfindex(k, None) => self.ep_ifindex.remove(&k),
                Undo::Cidr(k, Some(v)) => self.out_cidrs.insert(&k, v, 0),
                Undo::Cidr(k, None) => self.out_cidrs.remove(&k),
            };
            if let Err(e) = remove_ok(r) {
                tracing::warn!(error = %e, pod = %spec.uid, "rollback of a map write failed");
            }
        }
        if self.kernel {
            let had_route = old.is_some_and(|o| {
                o.spec.ipv4 == spec.ipv4 && o.spec.representor == spec.representor
            });
            if !had_route {
                netcfg::remove_pod_route(spec.ipv4, &spec.representor);
            }
            if let Some(o) = old {
                if o.spec.ipv4 == spec.ipv4 && o.spec.representor != spec.representor {
                    let _ = netcfg::add_pod_route(o.spec.ipv4, &o.spec.representor, o.spec.mac);
                }
            }
        }
    }

    /// Removes exactly this pod's entries. False when it was not installed.
    pub fn remove_pod(&mut self, uid: &str) -> Result<bool, BpfError> {
        let Some(p) = self.pods.remove(uid) else {
            return Ok(false);
        };
        // The ifindex entry first: from then on the VF's packets are dropped.
        remove_ok(self.ep_ifindex.remove(&p.ifindex))?;
        remove_ok(self.ep_ip.remove(&maps::ipv4_be(p.spec.ipv4)))?;
        if let Some(v6) = p.spec.ipv6 {
            remove_ok(self.ep_ip6.remove(&ip6_key(v6)))?;
        }
        for (k, _) in &p.cidrs {
            remove_ok(self.out_cidrs.remove(k))?;
        }
        self.zero_counters(p.slot)?;
        self.free_slots.insert(p.slot);
        if self.kernel {
            netcfg::remove_pod_route(p.spec.ipv4, &p.spec.representor);
        }
        Ok(true)
    }

    /// Removes one leftover of a previous run.
    fn sweep_restored_one(&mut self, ifx: u32) -> Result<(), BpfError> {
        let Some(r) = self.restored.remove(&ifx) else {
            return Ok(());
        };
        remove_ok(self.ep_ifindex.remove(&ifx))?;
        let ip = maps::ipv4_from_be(r.ep.ipv4);
        if let Some(v6) = endpoint_ipv6(&r.ep) {
            if !self.pods.values().any(|p| p.spec.ipv6 == Some(v6)) {
                remove_ok(self.ep_ip6.remove(&ip6_key(v6)))?;
            }
        }
        let owned = self.pods.values().any(|p| p.spec.ipv4 == ip);
        if !owned {
            remove_ok(self.ep_ip.remove(&r.ep.ipv4))?;
            if self.kernel {
                let dev = nix::net::if_::if_indextoname(ifx)
                    .ok()
                    .and_then(|n| n.into_string().ok())
                    .unwrap_or_default();
                netcfg::remove_pod_route(ip, &dev);
            }
        }
        for (k, _) in &r.cidrs {
            remove_ok(self.out_cidrs.remove(k))?;
        }
        self.zero_counters(r.ep.slot)?;
        self.free_slots.insert(r.ep.slot);
        Ok(())
    }

    /// Makes the maps hold exactly `desired` (plus what apply_network
    /// writes): every desired pod is applied (adopting a matching leftover
    /// in place, so established flows never see a gap), then every pod not
    /// desired and every leftover of a previous run is removed, with its IP
    /// entry, per-pod CIDRs, counters and host route.
    pub fn reconcile(&mut self, desired: &[PodSpec]) -> Result<(), BpfError> {
        let unwanted: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !desired.iter().any(|d| &d.uid == *uid))
            .cloned()
            .collect();
        for uid in unwanted {
            self.remove_pod(&uid)?;
        }
        for d in desired {
            self.apply_pod(d)?;
        }
        let leftovers: Vec<u32> = self.restored.keys().copied().collect();
        for ifx in leftovers {
            self.sweep_restored_one(ifx)?;
        }
        // Entries no pod accounts for (e.g. a run killed between two writes).
        let owned_ips: HashSet<u32> = self
            .pods
            .values()
            .map(|p| maps::ipv4_be(p.spec.ipv4))
            .collect();
        let ips: Vec<u32> = self.ep_ip.keys().filter_map(Result::ok).collect();
        for ip in ips {
            if !owned_ips.contains(&ip) {
                remove_ok(self.ep_ip.remove(&ip))?;
            }
        }
        let owned_ip6: HashSet<Ip6Key> = self
            .pods
            .values()
            .filter_map(|p| p.spec.ipv6.map(ip6_key))
            .collect();
        let ip6s: Vec<Ip6Key> = self.ep_ip6.keys().filter_map(Result::ok).collect();
        for k in ip6s {
            if !owned_ip6.contains(&k) {
                remove_ok(self.ep_ip6.remove(&k))?;
            }
        }
        let owned_ifx: HashSet<u32> = self.pods.values().map(|p| p.ifindex).collect();
        let ifxs: Vec<u32> = self.ep_ifindex.keys().filter_map(Result::ok).collect();
        for ifx in ifxs {
            if !owned_ifx.contains(&ifx) {
                remove_ok(self.ep_ifindex.remove(&ifx))?;
            }
        }
        let owned_scopes: HashSet<u32> = self.pods.values().map(|p| p.slot + 1).collect();
        let cidr_keys: Vec<Key<CidrData>> = self.out_cidrs.keys().filter_map(Result::ok).collect();
        for k in cidr_keys {
            let scope = k.data().scope;
            if scope != 0 && !owned_scopes.contains(&scope) {
                remove_ok(self.out_cidrs.remove(&k))?;
            }
        }
        for slot in self.free_slots.clone() {
            self.zero_counters(slot)?;
        }
        if self.kernel {
            let keep: Vec<Ipv4Addr> = self.pods.values().map(|p| p.spec.ipv4).collect();
            netcfg::sweep_pod_routes(&keep)?;
        }
        Ok(())
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), BpfError> {
        let n = aya::util::nr_cpus().map_err(|(what, e)| io_err("reading", Path::new(what), e))?;
        let zero = PerCpuValues::try_from(vec![PodCounters::default(); n]).map_err(|e| {
            io_err(
                "sizing per-CPU values for",
                Path::new(maps::MAP_COUNTERS),
                e,
            )
        })?;
        self.counters.set(slot, zero, 0)?;
        Ok(())
    }

    /// Counters of a counter slot, summed over CPUs.
    pub fn slot_counters(&self, slot: u32) -> Result<PodCounters, BpfError> {
        if slot >= COUNTER_SLOTS {
            return Err(BpfError::Invalid(format!(
                "counter slot {slot} out of range"
            )));
        }
        let v = self.counters.get(&slot, 0)?;
        Ok(PodCounters::sum(v.iter()))
    }

    /// A pod's counters (None when it is not installed).
    pub fn pod_counters(&self, uid: &str) -> Result<Option<PodCounters>, BpfError> {
        match self.pods.get(uid) {
            Some(p) => self.slot_counters(p.slot).map(Some),
            None => Ok(None),
        }
    }

    /// Traffic that no pod can be charged with (unknown VFs).
    pub fn unattributed_counters(&self) -> Result<PodCounters, BpfError> {
        self.slot_counters(maps::SLOT_UNATTRIBUTED)
    }

    /// The counter slot of an installed pod.
    pub fn pod_slot(&self, uid: &str) -> Option<u32> {
        self.pods.get(uid).map(|p| p.slot)
    }

    pub fn pod_uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// What the per-pod maps hold right now, read from the kernel.
    pub fn usage(&self) -> Result<MapUsage, BpfError> {
        let cidr_keys: Vec<Key<CidrData>> = self.out_cidrs.keys().filter_map(Result::ok).collect();
        let mut used = 0;
        for slot in 0..MAX_PODS {
            if self.slot_counters(slot)? != PodCounters::default() {
                used += 1;
            }
        }
        Ok(MapUsage {
            endpoints_by_ifindex: self.ep_ifindex.keys().count(),
            endpoints_by_ip: self.ep_ip.keys().count(),
            endpoints_by_ip6: self.ep_ip6.keys().count(),
            pod_cidrs: cidr_keys.iter().filter(|k| k.data().scope != 0).count(),
            node_cidrs: cidr_keys.iter().filter(|k| k.data().scope == 0).count(),
            used_counter_slots: used,
        })
    }

    /// The node config as the programs see it.
    pub fn node_config(&self) -> Result<NodeConfig, BpfError> {
        Ok(self.node.get(&0, 0)?)
    }
}

fn ip6_key(ip: Ipv6Addr) -> Ip6Key {
    Ip6Key { addr: ip.octets() }
}

/// The IPv6 address of an endpoint entry, if it has one.
fn endpoint_ipv6(ep: &Endpoint) -> Option<Ipv6Addr> {
    (ep.flags & EP_IPV6 != 0).then(|| Ipv6Addr::from(ep.ipv6))
}

fn cidr_key(scope: u32, plen: u32, addr: u32) -> Key<CidrData> {
    Key::new(32 + plen, CidrData { scope, addr })
}

fn same_key(a: &Key<CidrData>, b: &Key<CidrData>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

/// Removing what is already gone is success.
fn remove_ok(r: Result<(), MapError>) -> Result<(), BpfError> {
    match r {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A read-only look at a node's pinned maps, without loading programs:
/// what the kernel holds right now (tests, status tools).
pub struct PinnedView {
    ep_ifindex: HashMap<MapData, u32, Endpoint>,
    ep_ip: HashMap<MapData, u32, Endpoint>,
    out_cidrs: LpmTrie<MapData, CidrData, CidrValue>,
    counters: PerCpuArray<MapData, PodCounters>,
    tunnels: LpmTrie<MapData, u32, Tunnel>,
}

impl PinnedView {
    pub fn open(pin: &PinDir) -> Result<PinnedView, BpfError> {
        let open = |name: &str| -> Result<aya::maps::Map, BpfError> {
            let data = MapData::from_pin(pin.0.join(name))?;
            Ok(aya::maps::Map::from_map_data(data)?)
        };
        Ok(PinnedView {
            ep_ifindex: HashMap::try_from(open(maps::MAP_EP_IFINDEX)?)?,
            ep_ip: HashMap::try_from(open(maps::MAP_EP_IP)?)?,
            out_cidrs: LpmTrie::try_from(open(maps::MAP_OUT_CIDRS)?)?,
            counters: PerCpuArray::try_from(open(maps::MAP_COUNTERS)?)?,
            tunnels: LpmTrie::try_from(open(maps::MAP_TUNNELS)?)?,
        })
    }

    /// Endpoints by representor ifindex, sorted by ifindex.
    pub fn endpoints(&self) -> Vec<(u32, Endpoint)> {
        let mut v: Vec<(u32, Endpoint)> = self.ep_ifindex.iter().filter_map(Result::ok).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Pod IPs in the IP map, sorted.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .ep_ip
            .keys()
            .filter_map(Result::ok)
            .map(maps::ipv4_from_be)
            .collect();
        v.sort();
        v
    }

    /// Number of per-pod (scope != 0) capture/exclude CIDR entries.
    pub fn pod_cidrs(&self) -> usize {
        self.out_cidrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().scope != 0)
            .count()
    }

    /// Overlay peers: (pod CIDR, remote underlay address, VNI), sorted.
    pub fn tunnels(&self) -> Vec<(Ipv4Net, Ipv4Addr, u32)> {
        let mut v: Vec<(Ipv4Net, Ipv4Addr, u32)> = self
            .tunnels
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, t)| {
                let net = Ipv4Net::new(maps::ipv4_from_be(k.data()), k.prefix_len() as u8).ok()?;
                Some((net, Ipv4Addr::from(t.remote_ipv4), t.vni))
            })
            .collect();
        v.sort();
        v
    }

    /// A counter slot's counters, summed over CPUs.
    pub fn slot_counters(&self, slot: u32) -> Result<PodCounters, BpfError> {
        let v = self.counters.get(&slot, 0)?;
        Ok(PodCounters::sum(v.iter()))
    }
}

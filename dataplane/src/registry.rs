//! The dataplane's desired state: the node network and the pods attached
//! through VFs, as registered over the `Dataplane` control API.
//!
//! [`PodRegistry`] validates every request whole before changing anything and
//! hands each accepted change to a [`SteeringBackend`], which programs it (the
//! eBPF backend writes BPF maps; [`MemoryBackend`] only records it). A
//! request that fails validation, or that the backend refuses, leaves both the
//! registry and the backend as they were.
//!
//! Error kinds (mapped to gRPC codes by `control`):
//! * [`RegistryError::InvalidArgument`]: a malformed value (IP, MAC, CIDR,
//!   port, mode) or a pod IP outside the node's pod CIDR; every problem is
//!   reported, each as `<field>: <what is wrong>`;
//! * [`RegistryError::NotFound`]: the pod's representor is not on this DPU;
//! * [`RegistryError::AlreadyExists`]: an IP, VF or CNI attachment is held by
//!   another pod;
//! * [`RegistryError::FailedPrecondition`]: AddPod before SetNodeNetwork, or a
//!   new node network that would leave a registered pod outside its pod CIDR;
//! * [`RegistryError::Backend`]: the backend could not program the change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use dpumesh_api::config::NetworkMode;
use dpumesh_api::proto::v1 as pb;
use ipnet::IpNet;

/// VXLAN network identifier used when SetNodeNetwork leaves `vni` at 0.
pub const DEFAULT_VNI: u32 = 4242;
const MAX_VNI: u32 = (1 << 24) - 1;

// ---------------------------------------------------------------------------
// Typed state
// ---------------------------------------------------------------------------

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = ();

    /// Six colon-separated hex octets, e.g. "02:00:0a:f4:01:05".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 {
                return Err(());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The node's network, as accepted by SetNodeNetwork (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetworkSpec {
    pub node_name: String,
    pub mode: NetworkMode,
    pub pod_cidr: IpNet,
    /// The pods' default gateway, answered by the dataplane.
    pub gateway: IpAddr,
    /// Dual stack: the pod CIDR of the other IP family (the second entry of
    /// `pod_cidr`, e.g. "10.244.1.0/24,fd00:10:244:1::/64") and its gateway.
    pub secondary: Option<(IpNet, IpAddr)>,
    pub service_cidrs: Vec<IpNet>,
    /// This DPU's uplink address.
    pub underlay_ip: IpAddr,
    /// VXLAN network identifier (used in overlay mode).
    pub vni: u32,
    pub peers: Vec<PeerSpec>,
}

/// Another node: where its pod CIDR is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub pod_cidr: IpNet,
    /// Dual stack: the peer's pod CIDR of the other family.
    pub pod_cidr_secondary: Option<IpNet>,
    pub underlay_ip: IpAddr,
}

/// One pod attached through one VF, as accepted by AddPod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// CNI attachment that owns the entry (both empty when not registered by the CNI).
    pub container_id: String,
    pub ifname: String,
    pub vf_index: u32,
    /// DPU-side representor netdev, e.g. "pf0vf3".
    pub representor: String,
    /// The only source addresses accepted from the VF.
    pub ips: Vec<IpAddr>,
    /// The only source MAC accepted from the VF.
    pub mac: MacAddr,
    /// Whether the pod's traffic is steered into dpu-proxy.
    pub meshed: bool,
    pub interception: InterceptionSpec,
}

/// Which of a meshed pod's traffic is steered into the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterceptionSpec {
    /// Empty: every port.
    pub capture_inbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Empty: the service CIDRs and every pod CIDR.
    pub capture_outbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_ports: Vec<u16>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a request was refused; nothing changed. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", .0.join("; "))]
    InvalidArgument(Vec<String>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("steering backend: {0}")]
    Backend(String),
}

/// The backend could not program a change (and undid its part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// Programs accepted state into the forwarding engine.
///
/// The registry calls these one at a time (under its lock), only with
/// validated state, and only when something changed. Each call must be all
/// or nothing: on `Err` the backend is left as it was before the call.
pub trait SteeringBackend: Send + Sync + 'static {
    /// Short name for status and logs, e.g. "memory", "ebpf".
    fn name(&self) -> &str;
    /// The node network was set or changed; `pods` are the registered pods.
    fn apply_network(
        &self,
        network: &NodeNetworkSpec,
        pods: &[PodEntry],
    ) -> Result<(), BackendError>;
    /// A pod was added, or replaced `previous` (same uid, different spec).
    fn apply_pod(
        &self,
        network: &NodeNetworkSpec,
        pod: &PodEntry,
        previous: Option<&PodEntry>,
    ) -> Result<(), BackendError>;
    /// A pod was removed.
    fn remove_pod(&self, pod: &PodEntry) -> Result<(), BackendError>;
    /// The registry's pods are now the complete desired state (e.g. after a
    /// restart, once the control plane had time to re-add its pods): remove
    /// whatever the backend still holds beyond them, such as leftovers of a
    /// previous run. A backend that keeps nothing across runs has nothing to do.
    fn reconcile(
        &self,
        _network: Option<&NodeNetworkSpec>,
        _pods: &[PodEntry],
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// A pod's traffic counters, when the backend counts.
    fn pod_stats(&self, _uid: &str) -> Option<PodStats> {
        None
    }
    /// Traffic that no pod can be charged with (e.g. from a VF with no pod).
    fn unattributed_stats(&self) -> Option<PodStats> {
        None
    }
    /// Whether the backend can forward now (e.g. programs attached); `Err` says why not.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Facts for `Status.details`.
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Traffic counters of one pod (one VF), as the backend counted them since
/// the pod was installed. "out" = sent by the pod, "in" = delivered to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStats {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Connections (SYNs) handed to the proxy's outbound / inbound listener.
    pub steered_outbound: u64,
    pub steered_inbound: u64,
    /// Packets of established proxy connections.
    pub to_proxy_socket: u64,
    /// Packets forwarded without the proxy.
    pub bypassed: u64,
    pub arp_replies: u64,
    /// Drops by reason (every reason the backend knows, zeros included).
    pub drops: Vec<(&'static str, u64)>,
}

/// A backend that programs nothing and remembers what it was given: the
/// stand-in until a forwarding backend is plugged in, and a way for tests to
/// see exactly what reached the backend.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    programmed: Mutex<Programmed>,
}

/// What a [`MemoryBackend`] was asked to program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programmed {
    pub network: Option<NodeNetworkSpec>,
    pub pods: BTreeMap<String, PodEntry>,
    /// Number of calls that changed something.
    pub calls: u64,
}

impl MemoryBackend {
    pub fn new() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::default())
    }

    pub fn programmed(&self) -> Programmed {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Programmed> {
        self.programmed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SteeringBackend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }

    fn apply_network(
        &self,
        network: &NodeNetworkSpec,
        _pods: &[PodEntry],
    ) -> Result<(), BackendError> {
        let mut p = self.lock();
        p.network = Some(network.clone());
        p.calls += 1;
        Ok(())
    }

    fn apply_pod(
        &self,
        _network: &NodeNetworkSpec,
        pod: &PodEntry,
        _previous: Option<&PodEntry>,
    ) -> Result<(), BackendError> {
        let mut p = self.lock();
        p.pods.insert(pod.uid.clone(), pod.clone());
        p.calls += 1;
        Ok(())
    }

    fn remove_pod(&self, pod: &PodEntry) -> Result<(), BackendError> {
        let mut p = self.lock();
        p.pods.remove(&pod.uid);
        p.calls += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Representors
// ---------------------------------------------------------------------------

/// Where the representors present on this DPU come from.
#[derive(Debug, Clone)]
pub enum Representors {
    /// Exactly these netdev names (tests, or `--representors pf0vf0,pf0vf1`).
    Fixed(BTreeSet<String>),
    /// The netdevs named `pf<P>vf<N>` in the current network namespace,
    /// listed again at every lookup so that VFs created later are found.
    Discover,
}

impl Representors {
    pub fn fixed<I, S>(names: I) -> Representors
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Representors::Fixed(names.into_iter().map(Into::into).collect())
    }

    /// The representors present now.
    pub fn list(&self) -> Result<BTreeSet<String>, String> {
        match self {
            Representors::Fixed(names) => Ok(names.clone()),
            Representors::Discover => {
                let interfaces = nix::net::if_::if_nameindex()
                    .map_err(|e| format!("listing network interfaces: {e}"))?;
                Ok(interfaces
                    .iter()
                    .filter_map(|i| i.name().to_str().ok())
                    .filter(|name| representor_vf(name).is_some())
                    .map(str::to_string)
                    .collect())
            }
        }
    }
}

/// The VF number of a representor name `pf<P>vf<N>`, or `None` for any other name.
pub fn representor_vf(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("pf")?;
    let (pf, vf) = rest.split_once("vf")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pf) || !digits(vf) {
        return None;
    }
    vf.parse().ok()
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

/// The desired state of this DPU's dataplane. See the module docs.
pub struct PodRegistry {
    /// Node this dataplane serves; SetNodeNetwork for another node is refused.
    /// Empty: accept any node name.
    node: String,
    representors: Representors,
    backend: Arc<dyn SteeringBackend>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    network: Option<NodeNetworkSpec>,
    pods: BTreeMap<String, PodEntry>,
    /// Incremented on every accepted change.
    generation: u64,
}

/// How a pod is named in RemovePod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodKey {
    Uid(String),
    /// The CNI attachment: (container_id, ifname).
    Attachment(String, String),
}

impl PodRegistry {
    pub fn new(
        node: impl Into<String>,
        representors: Representors,
        backend: Arc<dyn SteeringBackend>,
    ) -> PodRegistry {
        PodRegistry {
            node: node.into(),
            representors,
            backend,
            state: Mutex::new(State::default()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn backend(&self) -> &Arc<dyn SteeringBackend> {
        &self.backend
    }

    pub fn representors(&self) -> &Representors {
        &self.representors
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is replaced only after every check passed, so a panic while
        // holding the lock cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node network, once set.
    pub fn network(&self) -> Option<NodeNetworkSpec> {
        self.lock().network.clone()
    }

    /// Every registered pod, sorted by namespace, name, uid.
    pub fn pods(&self) -> Vec<PodEntry> {
        let mut pods: Vec<PodEntry> = self.lock().pods.values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        pods
    }

    /// Number of accepted changes so far.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Sets the node network. `Ok(false)`: exactly this network was already set.
    pub fn set_node_network(
        &self,
        network: Option<&pb::NodeNetwork>,
    ) -> Result<bool, RegistryError> {
        let spec = parse_network(network, &self.node)?;
        let mut state = self.lock();
        if state.network.as_ref() == Some(&spec) {
            return Ok(false);
        }
        for pod in state.pods.values() {
            for ip in &pod.ips {
                if let Err(why) = check_pod_ip(&spec, *ip) {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "network.pod_cidr: registered pod {} (uid {}) has IP {ip}, which {why}; remove the pod first",
                        pod_display(pod),
                        pod.uid
                    )));
                }
            }
        }
        let pods: Vec<PodEntry> = state.pods.values().cloned().collect();
        self.backend
            .apply_network(&spec, &pods)
            .map_err(|e| RegistryError::Backend(e.0))?;
        tracing::info!(node = %spec.node_name, mode = ?spec.mode, pod_cidr = %spec.pod_cidrs(), peers = spec.peers.len(), "node network set");
        state.network = Some(spec);
        state.generation += 1;
        Ok(true)
    }

    /// Tells the backend that the registered pods are the complete desired
    /// state, so it removes anything beyond them (see
    /// [`SteeringBackend::reconcile`]).
    pub fn reconcile(&self) -> Result<(), RegistryError> {
        let state = self.lock();
        let pods: Vec<PodEntry> = state.pods.values().cloned().collect();
        self.backend
            .reconcile(state.network.as_ref(), &pods)
            .map_err(|e| RegistryError::Backend(e.0))
    }

    /// Registers a pod. `Ok(false)`: exactly this spec was already registered.
    pub fn add_pod(&self, pod: Option<&pb::PodSteering>) -> Result<bool, RegistryError> {
        let entry = parse_pod(pod)?;
        let mut state = self.lock();
        let Some(network) = state.network.clone() else {
            return Err(RegistryError::FailedPrecondition(
                "node network not set: SetNodeNetwork must succeed before AddPod".into(),
            ));
        };
        let errors: Vec<String> = entry
            .ips
            .iter()
            .enumerate()
            .filter_map(|(i, ip)| {
                check_pod_ip(&network, *ip)
                    .err()
                    .map(|why| format!("pod.ips[{i}]: {ip} {why}"))
            })
            .collect();
        if !errors.is_empty() {
            return Err(RegistryError::InvalidArgument(errors));
        }
        let present = self.representors.list().map_err(RegistryError::Backend)?;
        if !present.contains(&entry.representor) {
            return Err(RegistryError::NotFound(format!(
                "pod.representor: {:?} (VF {}) is not a representor on this DPU (present: {})",
                entry.representor,
                entry.vf_index,
                summarize(&present)
            )));
        }
        let previous = state.pods.get(&entry.uid).cloned();
        if previous.as_ref() == Some(&entry) {
            return Ok(false);
        }
        for other in state.pods.values().filter(|p| p.uid != entry.uid) {
            let held_by = || format!("pod {} (uid {})", pod_display(other), other.uid);
            for (i, ip) in entry.ips.iter().enumerate() {
                if other.ips.contains(ip) {
                    return Err(RegistryError::AlreadyExists(format!(
                        "pod.ips[{i}]: {ip} is already used by {}",
                        held_by()
                    )));
                }
            }
            if other.vf_index == entry.vf_index || other.representor == entry.representor {
                return Err(RegistryError::AlreadyExists(format!(
                    "pod.vf_index: VF {} ({}) is already used by {}",
                    entry.vf_index,
                    entry.representor,
                    held_by()
                )));
            }
            if !entry.container_id.is_empty()
                && other.container_id == entry.container_id
                && other.ifname == entry.ifname
            {
                return Err(RegistryError::AlreadyExists(format!(
                    "pod.container_id: attachment {}/{} is already used by {}",
                    entry.container_id,
                    entry.ifname,
                    held_by()
                )));
            }
        }
        self.backend
            .apply_pod(&network, &entry, previous.as_ref())
            .map_err(|e| RegistryError::Backend(e.0))?;
        tracing::info!(
            pod = %pod_display(&entry),
            uid = %entry.uid,
            vf = entry.vf_index,
            ips = ?entry.ips,
            replaced = previous.is_some(),
            "pod registered"
        );
        state.pods.insert(entry.uid.clone(), entry);
        state.generation += 1;
        Ok(true)
    }

    /// Removes a pod; `Ok(None)` when nothing was registered under `key`.
    pub fn remove_pod(&self, key: &PodKey) -> Result<Option<PodEntry>, RegistryError> {
        let mut state = self.lock();
        let uid = match key {
            PodKey::Uid(uid) => state.pods.contains_key(uid).then(|| uid.clone()),
            PodKey::Attachment(container_id, ifname) => state
                .pods
                .values()
                .find(|p| &p.container_id == container_id && &p.ifname == ifname)
                .map(|p| p.uid.clone()),
        };
        let Some(uid) = uid else {
            return Ok(None);
        };
        let Some(entry) = state.pods.get(&uid).cloned() else {
            return Ok(None);
        };
        self.backend
            .remove_pod(&entry)
            .map_err(|e| RegistryError::Backend(e.0))?;
        tracing::info!(pod = %pod_display(&entry), uid = %entry.uid, "pod removed");
        state.pods.remove(&uid);
        state.generation += 1;
        Ok(Some(entry))
    }
}

impl PodKey {
    /// The key of a RemovePod request: the uid, or else the attachment.
    pub fn from_request(r: &pb::RemovePodRequest) -> Result<PodKey, RegistryError> {
        if !r.pod_uid.is_empty() {
            Ok(PodKey::Uid(r.pod_uid.clone()))
        } else if !r.container_id.is_empty() && !r.ifname.is_empty() {
            Ok(PodKey::Attachment(r.container_id.clone(), r.ifname.clone()))
        } else {
            Err(RegistryError::InvalidArgument(vec![
                "pod_uid: empty, and container_id/ifname not both given: name the pod by uid or by its CNI attachment".into(),
            ]))
        }
    }
}

fn pod_display(p: &PodEntry) -> String {
    if p.name.is_empty() {
        format!("<unnamed {}>", p.uid)
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

fn summarize(names: &BTreeSet<String>) -> String {
    const SHOWN: usize = 8;
    if names.is_empty() {
        return "none".into();
    }
    let mut s: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    let more;
    if names.len() > SHOWN {
        more = format!("... {} more", names.len() - SHOWN);
        s.push(&more);
    }
    s.join(", ")
}

// ---------------------------------------------------------------------------
// Validation: proto -> typed state
// ---------------------------------------------------------------------------

/// Collects every problem of one request.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, path: impl fmt::Display, what: impl fmt::Display) {
        self.0.push(format!("{path}: {what}"));
    }

    fn ip(&mut self, path: &str, value: &str) -> Option<IpAddr> {
        if value.is_empty() {
            self.push(path, "required (an IP address)");
            return None;
        }
        match value.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.push(path, format_args!("{value:?} is not an IP address"));
                None
            }
        }
    }

    /// A CIDR with no host bits set.
    fn cidr(&mut self, path: &str, value: &str) -> Option<IpNet> {
        if value.is_empty() {
            self.push(path, "required (a CIDR such as 10.244.1.0/24)");
            return None;
        }
        match value.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => {
                self.push(
                    path,
                    format_args!(
                        "{value:?} has host bits set (did you mean {}?)",
                        net.trunc()
                    ),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.push(path, format_args!("{value:?} is not a CIDR"));
                None
            }
        }
    }

    fn ports(&mut self, path: &str, values: &[u32]) -> Vec<u16> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| match u16::try_from(p) {
                Ok(port) if port != 0 => Some(port),
                _ => {
                    self.push(
                        format_args!("{path}[{i}]"),
                        format_args!("{p} is not a port (1-65535)"),
                    );
                    None
                }
            })
            .collect()
    }

    fn cidrs(&mut self, path: &str, values: &[String]) -> Vec<IpNet> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.cidr(&format!("{path}[{i}]"), v))
            .collect()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, RegistryError> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(RegistryError::InvalidArgument(self.0)),
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first host address of a network (its conventional gateway).
fn first_host(net: &IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

/// Why `ip` cannot be a pod address in `network`, if it cannot.
fn check_pod_ip(network: &NodeNetworkSpec, ip: IpAddr) -> Result<(), String> {
    let (cidr, gateway) = match network.secondary {
        Some((c, g)) if c.network().is_ipv4() == ip.is_ipv4() => (c, g),
        _ => (network.pod_cidr, network.gateway),
    };
    if !cidr.contains(&ip) {
        Err(format!(
            "is outside the node's pod CIDR {}",
            network.pod_cidrs()
        ))
    } else if ip == gateway {
        Err(format!("is the pods' gateway of {cidr}"))
    } else if ip == cidr.network() {
        Err(format!("is the network address of {cidr}"))
    } else if ip.is_ipv4() && ip == cidr.broadcast() {
        Err(format!("is the broadcast address of {cidr}"))
    } else {
        Ok(())
    }
}

impl NodeNetworkSpec {
    /// The pod CIDRs as the API spells them: "v4", or "first,second".
    pub fn pod_cidrs(&self) -> String {
        match self.secondary {
            Some((c, _)) => format!("{},{c}", self.pod_cidr),
            None => self.pod_cidr.to_string(),
        }
    }

    /// The gateways, in the order of [`NodeNetworkSpec::pod_cidrs`].
    pub fn gateways(&self) -> String {
        match self.secondary {
            Some((_, g)) => format!("{},{g}", self.gateway),
            None => self.gateway.to_string(),
        }
    }
}

impl PeerSpec {
    /// Every pod CIDR of the peer.
    pub fn pod_cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        std::iter::once(self.pod_cidr).chain(self.pod_cidr_secondary)
    }
}

/// A pod CIDR field: one CIDR, or two of different IP families separated by
/// a comma (dual stack, as Kubernetes' `--cluster-cidr`).
fn dual_cidr(p: &mut Problems, path: &str, value: &str) -> Option<(IpNet, Option<IpNet>)> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [one] => p.cidr(path, one).map(|c| (c, None)),
        [a, b] => {
            let (a, b) = (p.cidr(path, a)?, p.cidr(path, b)?);
            if a.network().is_ipv4() == b.network().is_ipv4() {
                p.push(
                    path,
                    format_args!(
                        "{a} and {b} are of one IP family (dual stack: one IPv4 and one IPv6 CIDR)"
                    ),
                );
                return None;
            }
            Some((a, Some(b)))
        }
        _ => {
            p.push(
                path,
                format_args!("{value:?}: at most two CIDRs (one IPv4, one IPv6)"),
            );
            None
        }
    }
}

/// The gateway of `cidr`: the entry of `given` of its family, else its
/// first host address.
fn gateway_of(p: &mut Problems, cidr: IpNet, given: &[IpAddr]) -> IpAddr {
    let Some(&ip) = given
        .iter()
        .find(|ip| ip.is_ipv4() == cidr.network().is_ipv4())
    else {
        return first_host(&cidr);
    };
    if !cidr.contains(&ip) || ip == cidr.network() || (ip.is_ipv4() && ip == cidr.broadcast()) {
        p.push(
            "network.gateway_ip",
            format_args!("{ip} is not a host address of the pod CIDR {cidr}"),
        );
    }
    ip
}

fn parse_network(
    network: Option<&pb::NodeNetwork>,
    our_node: &str,
) -> Result<NodeNetworkSpec, RegistryError> {
    let Some(n) = network else {
        return Err(RegistryError::InvalidArgument(vec![
            "network: required".into()
        ]));
    };
    let mut p = Problems::default();
    if n.node_name.is_empty() {
        p.push("network.node_name", "required");
    } else if !our_node.is_empty() && n.node_name != our_node {
        p.push(
            "network.node_name",
            format_args!(
                "{:?} is not this dataplane's node {our_node:?}",
                n.node_name
            ),
        );
    }
    let mode = match pb::NetworkMode::try_from(n.mode) {
        Ok(pb::NetworkMode::Unspecified) => {
            p.push("network.mode", "unspecified (want UNDERLAY or OVERLAY)");
            None
        }
        Ok(m) => NetworkMode::try_from(m).ok(),
        Err(_) => {
            p.push(
                "network.mode",
                format_args!("unknown network mode {}", n.mode),
            );
            None
        }
    };
    let cidrs = dual_cidr(&mut p, "network.pod_cidr", &n.pod_cidr);
    let pod_cidr = cidrs.map(|(c, _)| c);
    let own_cidrs: Vec<IpNet> = cidrs
        .map(|(a, b)| std::iter::once(a).chain(b).collect())
        .unwrap_or_default();
    for c in &own_cidrs {
        if c.max_prefix_len() - c.prefix_len() < 2 {
            p.push(
                "network.pod_cidr",
                format_args!("{c} is too small for a gateway and pods"),
            );
        }
    }
    // Comma-separated too: at most one per pod CIDR, of its family.
    let mut given: Vec<IpAddr> = Vec::new();
    let mut gateway_ok = true;
    for part in n.gateway_ip.split(',').map(str::trim) {
        if n.gateway_ip.is_empty() {
            break;
        }
        match p.ip("network.gateway_ip", part) {
            Some(ip) => given.push(ip),
            None => gateway_ok = false,
        }
    }
    let gateway = pod_cidr
        .filter(|_| gateway_ok)
        .map(|c| gateway_of(&mut p, c, &given));
    let secondary = cidrs
        .and_then(|(_, b)| b)
        .map(|c| (c, gateway_of(&mut p, c, &given)));
    if !own_cidrs.is_empty() {
        for (i, g) in given.iter().enumerate() {
            let family = own_cidrs
                .iter()
                .filter(|c| c.network().is_ipv4() == g.is_ipv4())
                .count();
            let again = given[..i].iter().any(|x| x.is_ipv4() == g.is_ipv4());
            if family == 0 || again {
                p.push(
                    "network.gateway_ip",
                    format_args!("{g}: one gateway per pod CIDR, of its IP family"),
                );
            }
        }
    }
    let service_cidrs = p.cidrs("network.service_cidrs", &n.service_cidrs);
    for &c in &own_cidrs {
        for (i, s) in service_cidrs.iter().enumerate() {
            if overlaps(&c, s) {
                p.push(
                    format_args!("network.service_cidrs[{i}]"),
                    format_args!("{s} overlaps the pod CIDR {c}"),
                );
            }
        }
    }
    let underlay_ip = p.ip("network.underlay_ip", &n.underlay_ip);
    let vni = match n.vni {
        0 => DEFAULT_VNI,
        v if v > MAX_VNI => {
            p.push(
                "network.vni",
                format_args!("{v} is not a VXLAN id (1-{MAX_VNI})"),
            );
            0
        }
        v => v,
    };
    let mut peers = Vec::with_capacity(n.peers.len());
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut peer_cidrs: Vec<(usize, &str, IpNet)> = Vec::new();
    for (i, peer) in n.peers.iter().enumerate() {
        let path = format!("network.peers[{i}]");
        if peer.name.is_empty() {
            p.push(format_args!("{path}.name"), "required");
        } else if let Some(j) = names.insert(&peer.name, i) {
            p.push(
                format_args!("{path}.name"),
                format_args!("{:?} is also network.peers[{j}]", peer.name),
            );
        } else if peer.name == n.node_name {
            p.push(
                format_args!("{path}.name"),
                format_args!("{:?} is this node", peer.name),
            );
        }
        let peer_dual = dual_cidr(&mut p, &format!("{path}.pod_cidr"), &peer.pod_cidr);
        let peer_cidr = peer_dual.map(|(c, _)| c);
        for pc in peer_dual
            .map(|(a, b)| std::iter::once(a).chain(b).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(c) = own_cidrs.iter().find(|c| overlaps(c, &pc)) {
                p.push(
                    format_args!("{path}.pod_cidr"),
                    format_args!("{pc} overlaps this node's pod CIDR {c}"),
                );
            }
            for (j, name, q) in &peer_cidrs {
                if overlaps(q, &pc) {
                    p.push(
                        format_args!("{path}.pod_cidr"),
                        format_args!(
                            "{pc} overlaps network.peers[{j}].pod_cidr {q} (node {name:?})"
                        ),
                    );
                }
            }
            peer_cidrs.push((i, peer.name.as_str(), pc));
        }
        let peer_ip = p.ip(&format!("{path}.underlay_ip"), &peer.underlay_ip);
        if let (Some(ip), Some(own)) = (peer_ip, underlay_ip) {
            if ip == own {
                p.push(
                    format_args!("{path}.underlay_ip"),
                    format_args!("{ip} is this node's own underlay_ip"),
                );
            }
        }
        if let (Some(pod_cidr), Some(underlay_ip)) = (peer_cidr, peer_ip) {
            peers.push(PeerSpec {
                name: peer.name.clone(),
                pod_cidr,
                pod_cidr_secondary: peer_dual.and_then(|(_, b)| b),
                underlay_ip,
            });
        }
    }
    let spec = match (mode, pod_cidr, gateway, underlay_ip) {
        (Some(mode), Some(pod_cidr), Some(gateway), Some(underlay_ip)) => Some(NodeNetworkSpec {
            node_name: n.node_name.clone(),
            mode,
            pod_cidr,
            gateway,
            secondary,
            service_cidrs,
            underlay_ip,
            vni,
            peers,
        }),
        _ => None,
    };
    p.finish(spec)
}

fn parse_pod(pod: Option<&pb::PodSteering>) -> Result<PodEntry, RegistryError> {
    let Some(pod) = pod else {
        return Err(RegistryError::InvalidArgument(vec!["pod: required".into()]));
    };
    let mut p = Problems::default();
    if pod.pod_uid.is_empty() {
        p.push("pod.pod_uid", "required");
    }
    if pod.container_id.is_empty() != pod.ifname.is_empty() {
        p.push(
            "pod.ifname",
            format_args!(
                "container_id {:?} and ifname {:?} must be given together",
                pod.container_id, pod.ifname
            ),
        );
    }
    let representor = if pod.representor.is_empty() {
        format!("pf0vf{}", pod.vf_index)
    } else {
        if let Some(vf) = representor_vf(&pod.representor).filter(|&vf| vf != pod.vf_index) {
            p.push(
                "pod.representor",
                format_args!(
                    "{:?} is the representor of VF {vf}, not of vf_index {}",
                    pod.representor, pod.vf_index
                ),
            );
        }
        pod.representor.clone()
    };
    if pod.ips.is_empty() {
        p.push("pod.ips", "at least one IP address is required");
    }
    let mut ips: Vec<IpAddr> = Vec::with_capacity(pod.ips.len());
    for (i, ip) in pod.ips.iter().enumerate() {
        if let Some(ip) = p.ip(&format!("pod.ips[{i}]"), ip) {
            if let Some(j) = ips.iter().position(|x| *x == ip) {
                p.push(
                    format_args!("pod.ips[{i}]"),
                    format_args!("{ip} repeats pod.ips[{j}]"),
                );
            } else {
                ips.push(ip);
            }
        }
    }
    let mac = if pod.mac.is_empty() {
        p.push("pod.mac", "required (the VF's MAC address)");
        None
    } else {
        match pod.mac.parse::<MacAddr>() {
            Ok(m) if m.is_multicast() => {
                p.push(
                    "pod.mac",
                    format_args!("{:?} is a multicast MAC address", pod.mac),
                );
                None
            }
            Ok(m) if m.0 == [0; 6] => {
                p.push(
                    "pod.mac",
                    format_args!("{:?} is the all-zero MAC address", pod.mac),
                );
                None
            }
            Ok(m) => Some(m),
            Err(()) => {
                p.push(
                    "pod.mac",
                    format_args!(
                        "{:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)",
                        pod.mac
                    ),
                );
                None
            }
        }
    };
    let i = pod.interception.clone().unwrap_or_default();
    let interception = InterceptionSpec {
        capture_inbound_ports: p.ports(
            "pod.interception.capture_inbound_ports",
            &i.capture_inbound_ports,
        ),
        exclude_inbound_ports: p.ports(
            "pod.interception.exclude_inbound_ports",
            &i.exclude_inbound_ports,
        ),
        capture_outbound_cidrs: p.cidrs(
            "pod.interception.capture_outbound_cidrs",
            &i.capture_outbound_cidrs,
        ),
        exclude_outbound_cidrs: p.cidrs(
            "pod.interception.exclude_outbound_cidrs",
            &i.exclude_outbound_cidrs,
        ),
        exclude_outbound_ports: p.ports(
            "pod.interception.exclude_outbound_ports",
            &i.exclude_outbound_ports,
        ),
    };
    let entry = mac.map(|mac| PodEntry {
        uid: pod.pod_uid.clone(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        container_id: pod.container_id.clone(),
        ifname: pod.ifname.clone(),
        vf_index: pod.vf_index,
        representor,
        ips,
        mac,
        meshed: pod.meshed,
        interception,
    });
    p.finish(entry)
}

// ---------------------------------------------------------------------------
// Typed state -> proto
// ---------------------------------------------------------------------------

impl From<&NodeNetworkSpec> for pb::NodeNetwork {
    fn from(n: &NodeNetworkSpec) -> Self {
        pb::NodeNetwork {
            node_name: n.node_name.clone(),
            mode: pb::NetworkMode::from(n.mode).into(),
            pod_cidr: n.pod_cidrs(),
            service_cidrs: n.service_cidrs.iter().map(ToString::to_string).collect(),
            underlay_ip: n.underlay_ip.to_string(),
            vni: n.vni,
            peers: n
                .peers
                .iter()
                .map(|p| pb::PeerNode {
                    name: p.name.clone(),
                    pod_cidr: p
                        .pod_cidrs()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    underlay_ip: p.underlay_ip.to_string(),
                })
                .collect(),
            gateway_ip: n.gateways(),
        }
    }
}

impl From<&PodEntry> for pb::PodSteering {
    fn from(p: &PodEntry) -> Self {
        let strings = |v: &[IpNet]| v.iter().map(ToString::to_string).collect();
        let ports = |v: &[u16]| v.iter().map(|&p| u32::from(p)).collect();
        let i = &p.interception;
        pb::PodSteering {
            pod_uid: p.uid.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            container_id: p.container_id.clone(),
            ifname: p.ifname.clone(),
            vf_index: p.vf_index,
            representor: p.representor.clone(),
            ips: p.ips.iter().map(ToString::to_string).collect(),
            mac: p.mac.to_string(),
            meshed: p.meshed,
            interception: Some(pb::Interception {
                capture_inbound_ports: ports(&i.capture_inbound_ports),
                exclude_inbound_ports: ports(&i.exclude_inbound_ports),
                capture_outbound_cidrs: strings(&i.capture_outbound_cidrs),
                exclude_outbound_cidrs: strings(&i.exclude_outbound_cidrs),
                exclude_outbound_ports: ports(&i.exclude_outbound_ports),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let m: MacAddr = "02:00:0A:f4:01:05".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:f4:01:05");
        for bad in [
            "",
            "02:00:0a:f4:01",
            "02:00:0a:f4:01:05:06",
            "02-00-0a-f4-01-05",
            "0g:00:0a:f4:01:05",
            "2:00:0a:f4:01:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
    }

    #[test]
    fn representor_names() {
        assert_eq!(representor_vf("pf0vf3"), Some(3));
        assert_eq!(representor_vf("pf1vf12"), Some(12));
        for other in [
            "pf0vf",
            "pfvf1",
            "p0",
            "vf3",
            "pf0hpf",
            "pf0vf3x",
            "tmfifo_net0",
        ] {
            assert_eq!(representor_vf(other), None, "{other}");
        }
    }

    #[test]
    fn gateways() {
        assert_eq!(
            first_host(&"10.244.1.0/24".parse().unwrap()).to_string(),
            "10.244.1.1"
        );
        assert_eq!(
            first_host(&"fd00:1::/64".parse().unwrap()).to_string(),
            "fd00:1::1"
        );
    }

    #[test]
    fn discovery_lists_only_representors() {
        // The test process's netns has at least "lo", which is no representor.
        let found = Representors::Discover.list().unwrap();
        assert!(
            found.iter().all(|n| representor_vf(n).is_some()),
            "{found:?}"
        );
    }
}

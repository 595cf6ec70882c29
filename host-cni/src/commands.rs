//! What each CNI command does (docs/host-cni.md, "Commands").

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dpumesh_api::proto::v1::{Interception, PodSteering};
use ipnet::IpNet;
use serde_json::json;

use crate::dataplane::{Dataplane, DpError};
use crate::ipam::Ipam;
use crate::k8s::{PodAnnotator, VfAnnotations};
use crate::netlink::{format_mac, in_netns, open_netns, parse_mac, Netlink};
use crate::spec::config::peek_version;
use crate::spec::{
    code, AddResult, CniEnv, CniError, CniResult, Command, Interface, NetConf, Route,
    LATEST_VERSION, SUPPORTED_VERSIONS,
};
use crate::state::{Claim, Lock, PendingRemoval, Phase, StateDir};
use crate::vf::{pool_for, Vf, VfPool};

/// How often DEL tries to reach the dataplane before leaving the
/// deregistration pending.
const DEL_DATAPLANE_ATTEMPTS: u32 = 3;
const DEL_DATAPLANE_BACKOFF: Duration = Duration::from_millis(200);

/// Runs one invocation: the environment and stdin in, stdout text out. On
/// error, also returns the cniVersion to write the error in.
pub fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Result<String, (CniError, String)> {
    let version = peek_version(stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let fail = |e: CniError| (e, version.clone());
    let env = CniEnv::from_vars(vars).map_err(fail)?;
    if env.command == Command::Version {
        return Ok(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf = NetConf::parse(stdin, env.command).map_err(fail)?;
    let out = match env.command {
        Command::Add => Node::new(env, conf)
            .and_then(|n| n.add())
            .map(|r| serde_json::to_string(&r).unwrap_or_default()),
        Command::Del => Node::new(env, conf)
            .and_then(|n| n.del())
            .map(|()| String::new()),
        Command::Check => Node::new(env, conf)
            .and_then(|n| n.check())
            .map(|()| String::new()),
        Command::Gc => Node::new(env, conf)
            .and_then(|n| n.gc())
            .map(|()| String::new()),
        Command::Status => status(&conf).map(|()| String::new()),
        Command::Version => unreachable!("handled above"),
    };
    out.map_err(fail)
}

/// STATUS: ready only while the dataplane answers and says it is ready.
fn status(conf: &NetConf) -> CniResult<()> {
    let dp = Dataplane::new(&conf.dataplane, conf.dataplane_timeout)?;
    match dp.status() {
        Ok(s) if s.ready => Ok(()),
        Ok(s) => Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!("dataplane at {} is not ready: {}", conf.dataplane, s.reason),
            "pods cannot be added until the dataplane is ready (node network set, programs attached)",
        )),
        Err(DpError::Rejected(s)) if s.code() == tonic::Code::Unimplemented => {
            dp.list_pods().map(|_| ()).map_err(|e| not_available(conf, e))
        }
        Err(e) => Err(not_available(conf, e)),
    }
}

fn not_available(conf: &NetConf, e: DpError) -> CniError {
    let why = match e {
        DpError::Unreachable(s) => s,
        DpError::Rejected(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    CniError::new(
        code::PLUGIN_NOT_AVAILABLE,
        format!("dataplane at {} cannot be reached", conf.dataplane),
        format!("{why}; start dpumesh-dataplane on the DPU or fix config \"dataplane\""),
    )
}

/// One invocation's view of the node: config, state dir, VF pool, host netns.
struct Node {
    env: CniEnv,
    conf: NetConf,
    state: StateDir,
    pool: Box<dyn VfPool>,
    pool_id: String,
    host_ns: File,
    nl: Netlink,
    dp: Dataplane,
}

impl Node {
    fn new(env: CniEnv, conf: NetConf) -> CniResult<Node> {
        let state = StateDir::open(&conf.state_dir)?;
        let pool = pool_for(&conf.backend);
        let pool_id = pool.id();
        let host_ns = File::open("/proc/thread-self/ns/net")
            .map_err(|e| CniError::io("cannot open the host netns", e.to_string()))?;
        let nl = Netlink::new()?;
        let dp = Dataplane::new(&conf.dataplane, conf.dataplane_timeout)?;
        Ok(Node {
            env,
            conf,
            state,
            pool,
            pool_id,
            host_ns,
            nl,
            dp,
        })
    }

    fn netns(&self) -> CniResult<Option<File>> {
        match &self.env.netns {
            Some(p) => open_netns(p),
            None => Ok(None),
        }
    }

    // ------------------------------------------------------------------ ADD

    fn add(&self) -> CniResult<AddResult> {
        let netns_path = self.env.netns.clone().unwrap_or_default();
        let pod_ns = self.netns()?.ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("CNI_NETNS {} does not exist", netns_path.display()),
                "the runtime must create the pod netns before ADD",
            )
        })?;
        let _att = self
            .state
            .lock_attachment(&self.env.container_id, &self.env.ifname)?;

        // A repeated ADD (e.g. after a crash) starts from a clean slate.
        if let Some(old) = self.state.find_claim(
            &self.pool_id,
            &self.conf.name,
            &self.env.container_id,
            &self.env.ifname,
        )? {
            tracing::warn!(
                vf = old.vf.index,
                "ADD for an attachment that holds a VF: releasing it first"
            );
            let _vf_lock = self.state.lock_vf(&self.pool_id, old.vf.index)?;
            self.teardown(&old, self.netns()?.as_ref(), &self.env)?;
        }

        // Find the IPAM plugin and read the kubeconfig before taking a VF: a
        // config error costs nothing.
        let ipam = Ipam::new(&self.conf, &self.env)?;
        let annotator = self.annotator()?;
        let (mut vf, _vf_lock) = self.allocate()?;
        self.pool.prepare(&mut vf)?;
        let mut claim = Claim {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
            netns: Some(netns_path.to_string_lossy().into_owned()),
            phase: Phase::Adding,
            vf: vf.record(),
            ips: vec![],
            ipam_allocated: false,
            registered: false,
            pod_uid: self.pod_uid(),
            pid: std::process::id(),
        };
        self.state.write_claim(&self.pool_id, &claim)?;

        match self.setup(&vf, &mut claim, &pod_ns, &ipam, annotator.as_ref()) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(error = %e, "ADD failed, rolling back");
                if let Err(re) = self.teardown(&claim, Some(&pod_ns), &self.env) {
                    tracing::error!(error = %re, "rollback incomplete; DEL or GC will finish it");
                }
                Err(e)
            }
        }
    }

    /// The Kubernetes client and the pod's namespace and name, when the
    /// config has `kubernetes` and the runtime named the pod (`CNI_ARGS`).
    fn annotator(&self) -> CniResult<Option<(PodAnnotator, String, String)>> {
        let Some(k) = &self.conf.kubernetes else {
            return Ok(None);
        };
        let (Some(namespace), Some(name)) = (&self.env.pod.namespace, &self.env.pod.name) else {
            tracing::info!(
                "no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, no annotations"
            );
            return Ok(None);
        };
        let client = PodAnnotator::new(&k.kubeconfig, k.timeout)?;
        Ok(Some((client, namespace.clone(), name.clone())))
    }

    /// DEL: the pod's VF annotations come off (best effort: DEL succeeds
    /// anyway; the controller ignores annotations of a pod without an IP and
    /// of finished pods, and a new sandbox's ADD overwrites them).
    fn clear_annotations(&self, container_id: &str) {
        let r = self.annotator().and_then(|a| match a {
            Some((k, namespace, name)) => k.clear(&namespace, &name, container_id),
            None => Ok(()),
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "DEL: the pod's VF annotations stay");
        }
    }

    fn pod_uid(&self) -> String {
        self.env
            .pod
            .uid
            .clone()
            .unwrap_or_else(|| self.env.container_id.clone())
    }

    /// A free VF (the device plugin's one when it chose), locked and unclaimed.
    fn allocate(&self) -> CniResult<(Vf, Lock)> {
        let candidates = match &self.conf.device_id {
            Some(pci) => vec![self.pool.by_device_id(&self.nl, pci)?],
            None => self.pool.host_vfs(&self.nl)?,
        };
        let seen = candidates.len();
        let mut busy = Vec::new();
        for vf in candidates {
            let Some(lock) = self.state.try_lock_vf(&self.pool_id, vf.index)? else {
                busy.push(vf);
                continue;
            };
            if self.state.read_claim(&self.pool_id, vf.index)?.is_some() {
                continue;
            }
            return Ok((vf, lock));
        }
        // Every unclaimed VF is locked by a command in flight; one releasing
        // a VF (a DEL, a rolled-back ADD) leaves it free: wait for them.
        for vf in busy {
            if self.state.read_claim(&self.pool_id, vf.index)?.is_some() {
                continue;
            }
            let lock = self.state.lock_vf(&self.pool_id, vf.index)?;
            if self.state.read_claim(&self.pool_id, vf.index)?.is_none()
                && self.nl.link(&vf.netdev)?.is_some()
            {
                return Ok((vf, lock));
            }
        }
        let held = self.state.claims(&self.pool_id)?.len();
        Err(CniError::try_later(
            format!("no free VF in pool {}", self.pool_id),
            format!(
                "{seen} VF(s) in the host netns, all taken or being taken; {held} claimed in {}; \
                 retry when a pod is deleted, or enable more VFs",
                self.state.root().display()
            ),
        ))
    }

    /// Moves the VF into the pod netns, renames it to CNI_IFNAME, sets its
    /// MAC and MTU and brings it up: (ifindex, MTU) in the pod netns.
    fn move_into_pod(&self, vf: &Vf, pod_ns: &File) -> CniResult<(u32, Option<u32>)> {
        let link = self.nl.link(&vf.netdev)?.ok_or_else(|| {
            CniError::try_later(
                format!("VF netdev {} vanished from the host netns", vf.netdev),
                "another process took it; retry",
            )
        })?;
        self.nl.set_down(link.index)?;
        self.nl.move_to(link.index, pod_ns)?;
        let ifname = self.env.ifname.clone();
        let mtu = self.conf.mtu;
        let netdev = vf.netdev.clone();
        let mac = vf.mac;
        in_netns(pod_ns, move |nl| {
            let l = nl.link(&netdev)?.ok_or_else(|| {
                CniError::netlink(
                    "VF not found in the pod netns after the move",
                    netdev.clone(),
                )
            })?;
            if nl.link(&ifname)?.is_some() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("interface {ifname} already exists in the pod netns"),
                    "choose another CNI_IFNAME or remove the existing interface",
                ));
            }
            nl.rename(l.index, &ifname)?;
            if l.mac != Some(mac) {
                nl.set_mac(l.index, &mac)?;
            }
            if let Some(m) = mtu {
                nl.set_mtu(l.index, m)?;
            }
            nl.set_up(l.index)?;
            let now = nl.link(&ifname)?;
            Ok((l.index, now.and_then(|n| n.mtu)))
        })
    }

    fn setup(
        &self,
        vf: &Vf,
        claim: &mut Claim,
        pod_ns: &File,
        ipam: &Ipam,
        annotator: Option<&(PodAnnotator, String, String)>,
    ) -> CniResult<AddResult> {
        // IPAM runs while the VF moves: host-local only writes its files, and
        // the move mostly waits on the kernel (an RCU grace period). The claim
        // says "allocated" before the plugin starts, so a crash from here on
        // has DEL/GC release the address.
        claim.ipam_allocated = true;
        self.state.write_claim(&self.pool_id, claim)?;
        let pending = ipam.start_add(&self.conf, &self.env)?;
        self.dp.prewarm();
        let moved = self.move_into_pod(vf, pod_ns);
        // Always collect the plugin, also when the move failed: the rollback's
        // IPAM DEL must come after its ADD.
        let ipr = pending.finish();
        let (if_index, if_mtu) = moved?;
        let ipr = ipr?;
        if ipr.ips.is_empty() {
            return Err(CniError::new(
                code::IPAM,
                format!("IPAM plugin {} returned no address", ipam.name),
                "check the \"ipam\" ranges",
            ));
        }
        let mut routes: Vec<Route> = ipr.routes.clone();
        for ip in &ipr.ips {
            let Some(gw) = ip.gateway else { continue };
            let default = IpNet::new(unspecified(gw), 0).expect("prefix 0 is valid");
            if !routes.iter().any(|r| r.dst == default) {
                routes.push(Route {
                    dst: default,
                    gw: Some(gw),
                    extra: Default::default(),
                });
            }
        }
        let addrs: Vec<IpNet> = ipr.ips.iter().map(|i| i.address).collect();
        let gateways: Vec<IpAddr> = ipr.ips.iter().filter_map(|i| i.gateway).collect();
        let plan: Vec<(IpNet, Option<IpAddr>)> = routes
            .iter()
            .map(|r| {
                let gw = r.gw.or_else(|| {
                    gateways
                        .iter()
                        .copied()
                        .find(|g| g.is_ipv4() == r.dst.addr().is_ipv4())
                });
                (r.dst, gw)
            })
            .collect();
        let a2 = addrs.clone();
        in_netns(pod_ns, move |nl| {
            for a in &a2 {
                nl.add_address(if_index, *a)?;
            }
            for (dst, gw) in &plan {
                nl.add_route(if_index, *dst, *gw)?;
            }
            Ok(())
        })?;
        claim.ips = addrs.clone();
        self.state.write_claim(&self.pool_id, claim)?;

        // The dataplane.
        self.flush_pending();
        claim.registered = true;
        self.state.write_claim(&self.pool_id, claim)?;
        self.dp
            .add_pod(self.steering(claim))
            .map_err(|e| e.into_cni("AddPod", self.dp.addr()))?;
        // Last: the annotations tell the controller the pod is on this VF, so
        // they must not be written for an attachment that is rolled back.
        if let Some((k, namespace, name)) = annotator {
            k.annotate(
                namespace,
                name,
                &VfAnnotations {
                    vf_index: claim.vf.index,
                    mac: claim.vf.mac.clone(),
                    representor: claim.vf.representor.clone(),
                    sandbox: claim.container_id.clone(),
                },
            )?;
        }
        claim.phase = Phase::Ready;
        self.state.write_claim(&self.pool_id, claim)?;

        // The result: prevResult's content, then ours.
        let prev = self.conf.prev_result.clone().unwrap_or_default();
        let mut result = AddResult {
            cni_version: self.conf.cni_version.clone(),
            interfaces: prev.interfaces,
            ips: prev.ips,
            routes: prev.routes,
            dns: prev.dns,
        };
        let idx = result.interfaces.len();
        result.interfaces.push(Interface {
            name: self.env.ifname.clone(),
            mac: format_mac(&vf.mac),
            mtu: if_mtu,
            sandbox: Some(claim.netns.clone().unwrap_or_default()),
            pci_id: vf.pci.clone(),
        });
        result.ips.extend(ipr.ips.into_iter().map(|mut i| {
            i.interface = Some(idx);
            i
        }));
        result.routes.extend(routes);
        if !ipr.dns.is_empty() {
            result.dns = ipr.dns;
        } else if !self.conf.dns.is_empty() {
            result.dns = self.conf.dns.clone();
        }
        Ok(result.for_version(&self.conf.cni_version))
    }

    fn steering(&self, claim: &Claim) -> PodSteering {
        let i = &self.conf.interception;
        let pod = &self.env.pod;
        PodSteering {
            pod_uid: claim.pod_uid.clone(),
            name: pod
                .name
                .clone()
                .unwrap_or_else(|| claim.container_id.clone()),
            namespace: pod.namespace.clone().unwrap_or_default(),
            container_id: claim.container_id.clone(),
            ifname: claim.ifname.clone(),
            vf_index: claim.vf.index,
            representor: claim.vf.representor.clone(),
            ips: claim.ips.iter().map(|a| a.addr().to_string()).collect(),
            mac: claim.vf.mac.clone(),
            meshed: self.conf.meshed,
            interception: Some(Interception {
                capture_inbound_ports: i.capture_inbound_ports.iter().map(|&p| p.into()).collect(),
                exclude_inbound_ports: i.exclude_inbound_ports.iter().map(|&p| p.into()).collect(),
                capture_outbound_cidrs: i
                    .capture_outbound_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                exclude_outbound_cidrs: i
                    .exclude_outbound_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                exclude_outbound_ports: i
                    .exclude_outbound_ports
                    .iter()
                    .map(|&p| p.into())
                    .collect(),
            }),
        }
    }

    // ------------------------------------------------------------------ DEL

    fn del(&self) -> CniResult<()> {
        let _att = self
            .state
            .lock_attachment(&self.env.container_id, &self.env.ifname)?;
        let pod_ns = self.netns()?;
        match self.state.find_claim(
            &self.pool_id,
            &self.conf.name,
            &self.env.container_id,
            &self.env.ifname,
        )? {
            Some(claim) => {
                let _vf_lock = self.state.lock_vf(&self.pool_id, claim.vf.index)?;
                // Re-read under the VF lock: a concurrent GC may have finished it.
                match self.state.read_claim(&self.pool_id, claim.vf.index)? {
                    Some(c) if c == claim => {
                        self.teardown(&claim, pod_ns.as_ref(), &self.env)?;
                        self.clear_annotations(&claim.container_id);
                        Ok(())
                    }
                    _ => self.release_unclaimed(&self.env),
                }
            }
            // Nothing of ours on this node (already deleted, or ADD never got
            // as far as a VF): still release what others may hold.
            None => self.release_unclaimed(&self.env),
        }
    }

    /// DEL of an attachment without a claim: the dataplane entry and the IP
    /// may still exist (both releases are idempotent).
    fn release_unclaimed(&self, env: &CniEnv) -> CniResult<()> {
        self.deregister(&env.container_id, &env.ifname);
        if self.conf.ipam.is_some() {
            Ipam::new(&self.conf, env)?.del(&self.conf, env)?;
        }
        Ok(())
    }

    /// Undoes an attachment in reverse order of ADD. Used by DEL, by ADD's
    /// rollback and by GC. Hold the attachment's VF lock.
    fn teardown(&self, claim: &Claim, pod_ns: Option<&File>, env: &CniEnv) -> CniResult<()> {
        self.deregister(&claim.container_id, &claim.ifname);
        let ipam = match &self.conf.ipam {
            Some(_) if claim.ipam_allocated => {
                Ipam::new(&self.conf, env).and_then(|i| i.del(&self.conf, env))
            }
            _ => Ok(()),
        };
        self.return_vf(claim, pod_ns)?;
        self.pool.reset(&claim.vf)?;
        // Keep the claim while the address is not released: a retried DEL
        // (or GC) finds it and tries again.
        ipam?;
        self.state.remove_claim(&self.pool_id, claim.vf.index)
    }

    /// RemovePod, retried briefly; an unreachable dataplane does not fail
    /// DEL: the removal is kept pending and delivered by the next ADD or GC.
    fn deregister(&self, container_id: &str, ifname: &str) {
        let mut last = String::new();
        for attempt in 0..DEL_DATAPLANE_ATTEMPTS {
            match self.dp.remove_pod(container_id, ifname) {
                Ok(_) => {
                    let _ = self.state.remove_pending(container_id, ifname);
                    return;
                }
                Err(DpError::Rejected(s)) => {
                    tracing::warn!(code = ?s.code(), msg = s.message(), "dataplane refused RemovePod");
                    return;
                }
                Err(DpError::Unreachable(e)) => last = e,
            }
            if attempt + 1 < DEL_DATAPLANE_ATTEMPTS {
                std::thread::sleep(DEL_DATAPLANE_BACKOFF);
            }
        }
        tracing::warn!(
            dataplane = self.dp.addr(),
            error = %last,
            "dataplane unreachable: RemovePod left pending"
        );
        let _ = self.state.add_pending(&PendingRemoval {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            dataplane: self.dp.addr().to_string(),
        });
    }

    /// Delivers pending removals (best effort).
    fn flush_pending(&self) {
        let Ok(pending) = self.state.pending() else {
            return;
        };
        for p in pending
            .into_iter()
            .filter(|p| p.dataplane == self.dp.addr())
        {
            if self.dp.remove_pod(&p.container_id, &p.ifname).is_ok() {
                let _ = self.state.remove_pending(&p.container_id, &p.ifname);
            }
        }
    }

    /// Brings the VF back to the host netns under its own name, wherever it is.
    fn return_vf(&self, claim: &Claim, pod_ns: Option<&File>) -> CniResult<()> {
        let rec = claim.vf.clone();
        if let Some(ns) = pod_ns {
            let ifname = claim.ifname.clone();
            let r = rec.clone();
            let host = &self.host_ns;
            in_netns(ns, move |nl| {
                let links = nl.links()?;
                let mac = parse_mac(&r.mac);
                // Ours: tagged with our alias, or named ifname with our MAC,
                // or still under its host name (ADD died before the rename).
                let mine = links.iter().find(|l| {
                    (r.alias.is_some() && l.alias == r.alias)
                        || (l.name == ifname && mac.is_some() && l.mac == mac)
                        || l.name == r.netdev
                });
                if let Some(l) = mine {
                    nl.set_down(l.index)?;
                    if l.name != r.netdev {
                        nl.rename(l.index, &r.netdev)?;
                    }
                    nl.move_to(l.index, host)?;
                }
                Ok(())
            })?;
        }
        match self.pool.locate(&self.nl, &rec)? {
            Some(l) => {
                if l.name != rec.netdev {
                    self.nl.set_down(l.index)?;
                    self.nl.rename(l.index, &rec.netdev)?;
                }
                if let Some(a) = &rec.alias {
                    if l.alias.as_ref() != Some(a) {
                        self.nl.set_alias(l.index, a)?;
                    }
                }
                if self.pool_id == "sim" {
                    // Simulator VFs wait in the host netns link-up, as built.
                    self.nl.set_up(l.index)?;
                }
            }
            None => {
                if !self.pool.recreate(&self.nl, &rec)? {
                    tracing::warn!(
                        vf = rec.index,
                        netdev = rec.netdev,
                        "VF not found and cannot be re-created"
                    );
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ CHECK

    fn check(&self) -> CniResult<()> {
        let prev = self.conf.prev_result.clone().ok_or_else(|| {
            CniError::config(
                "invalid network config: CHECK needs \"prevResult\"",
                "the runtime passes the ADD result as prevResult on CHECK",
            )
        })?;
        let mismatch = |m: String| {
            CniError::new(
                code::CHECK_MISMATCH,
                m,
                "the attachment drifted from what ADD set up; delete and re-create the pod",
            )
        };
        let pod_ns = self.netns()?.ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "CNI_NETNS does not exist",
                "CHECK needs the pod netns",
            )
        })?;
        let claim = self
            .state
            .find_claim(
                &self.pool_id,
                &self.conf.name,
                &self.env.container_id,
                &self.env.ifname,
            )?
            .filter(|c| c.phase == Phase::Ready)
            .ok_or_else(|| {
                mismatch(format!(
                    "no VF is attached to {}/{}",
                    self.env.container_id, self.env.ifname
                ))
            })?;

        let my_idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == self.env.ifname && i.sandbox.is_some());
        let want_ips: Vec<IpNet> = prev
            .ips
            .iter()
            .filter(|i| my_idx.is_none() || i.interface == my_idx)
            .map(|i| i.address)
            .collect();
        let want_routes: Vec<Route> = prev.routes.clone();
        let ifname = self.env.ifname.clone();
        let mac = parse_mac(&claim.vf.mac);
        let problems = in_netns(&pod_ns, move |nl| {
            let mut p = Vec::new();
            let Some(l) = nl.link(&ifname)? else {
                p.push(format!("interface {ifname} is missing from the pod netns"));
                return Ok(p);
            };
            if l.mac != mac {
                p.push(format!(
                    "interface {ifname} has MAC {:?}, want {:?}",
                    l.mac.map(|m| format_mac(&m)),
                    mac.map(|m| format_mac(&m))
                ));
            }
            if !l.up {
                p.push(format!("interface {ifname} is down"));
            }
            let have = nl.addresses(l.index)?;
            for a in &want_ips {
                if !have.contains(a) {
                    p.push(format!("address {a} is missing on {ifname}"));
                }
            }
            let routes = nl.routes()?;
            for r in &want_routes {
                if !routes
                    .iter()
                    .any(|x| x.dst == r.dst && (r.gw.is_none() || x.gw == r.gw))
                {
                    p.push(format!("route {} is missing", r.dst));
                }
            }
            Ok(p)
        })?;
        if !problems.is_empty() {
            return Err(mismatch(problems.join("; ")));
        }
        if self.conf.ipam.is_some() {
            Ipam::new(&self.conf, &self.env)?.check(&self.conf, &self.env, &prev)?;
        }
        let pods = self
            .dp
            .list_pods()
            .map_err(|e| e.into_cni("ListPods", self.dp.addr()))?;
        let entry = pods
            .iter()
            .find(|p| p.container_id == claim.container_id && p.ifname == claim.ifname)
            .ok_or_else(|| mismatch("the dataplane has no entry for this attachment".into()))?;
        let want = self.steering(&claim);
        let ips = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
        if entry.vf_index != want.vf_index
            || entry.representor != want.representor
            || !entry.mac.eq_ignore_ascii_case(&want.mac)
            || ips(&entry.ips) != ips(&want.ips)
        {
            return Err(mismatch(format!(
                "the dataplane entry differs: has vf {} {} mac {} ips {:?}, want vf {} {} mac {} ips {:?}",
                entry.vf_index, entry.representor, entry.mac, entry.ips,
                want.vf_index, want.representor, want.mac, want.ips
            )));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ GC

    fn gc(&self) -> CniResult<()> {
        let valid: BTreeSet<(String, String)> = self
            .conf
            .valid_attachments
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let is_valid = |id: &str, ifn: &str| valid.contains(&(id.to_string(), ifn.to_string()));
        let mut errors = Vec::new();

        // VFs (with their IPs and dataplane entries).
        for claim in self.state.claims(&self.pool_id)? {
            if claim.network != self.conf.name || is_valid(&claim.container_id, &claim.ifname) {
                continue;
            }
            let _att = self
                .state
                .lock_attachment(&claim.container_id, &claim.ifname)?;
            // An ADD in flight holds the VF lock: leave it alone.
            let Some(_vf_lock) = self.state.try_lock_vf(&self.pool_id, claim.vf.index)? else {
                continue;
            };
            if self
                .state
                .read_claim(&self.pool_id, claim.vf.index)?
                .as_ref()
                != Some(&claim)
            {
                continue;
            }
            let env = self.env_for(&claim.container_id, &claim.ifname, claim.netns.as_deref());
            let ns = claim
                .netns
                .as_deref()
                .map(|p| open_netns(Path::new(p)))
                .transpose()?
                .flatten();
            if let Err(e) = self.teardown(&claim, ns.as_ref(), &env) {
                errors.push(format!("{}/{}: {e}", claim.container_id, claim.ifname));
            }
        }

        // Dataplane entries without a valid attachment.
        self.flush_pending();
        match self.dp.list_pods() {
            Ok(pods) => {
                for p in pods {
                    if !p.container_id.is_empty() && !is_valid(&p.container_id, &p.ifname) {
                        self.deregister(&p.container_id, &p.ifname);
                    }
                }
            }
            Err(e) => errors.push(e.into_cni("ListPods", self.dp.addr()).to_string()),
        }

        // Addresses host-local still holds for attachments that are gone
        // (host-local 1.1 has no GC of its own).
        if self
            .conf
            .ipam
            .as_ref()
            .is_some_and(|i| i.plugin == "host-local")
        {
            for (id, ifn) in self.host_local_holders() {
                if !is_valid(&id, &ifn) && crate::spec::env::validate_container_id(&id).is_ok() {
                    let env = self.env_for(&id, &ifn, None);
                    if let Err(e) =
                        Ipam::new(&self.conf, &env).and_then(|i| i.del(&self.conf, &env))
                    {
                        errors.push(format!("host-local release of {id}/{ifn}: {e}"));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::try_later("GC incomplete", errors.join("; ")))
        }
    }

    fn env_for(&self, container_id: &str, ifname: &str, netns: Option<&str>) -> CniEnv {
        let mut env = self.env.clone();
        env.container_id = container_id.to_string();
        env.ifname = ifname.to_string();
        env.netns = netns.map(PathBuf::from);
        env
    }

    /// (containerID, ifname) of every address host-local reserved on this
    /// network: files `<dataDir>/<network>/<ip>` holding "id\r\nifname".
    fn host_local_holders(&self) -> Vec<(String, String)> {
        let data_dir = self
            .conf
            .raw
            .get("ipam")
            .and_then(|i| i.get("dataDir"))
            .and_then(|d| d.as_str())
            .unwrap_or("/var/lib/cni/networks");
        let dir = Path::new(data_dir).join(&self.conf.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut out = BTreeSet::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_err() {
                continue;
            }
            let Ok(content) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let mut lines = content.lines().map(str::trim);
            let id = lines.next().unwrap_or("").to_string();
            let ifn = lines.next().unwrap_or("eth0").to_string();
            if !id.is_empty() {
                out.insert((id, ifn));
            }
        }
        out.into_iter().collect()
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

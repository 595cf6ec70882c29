//! Pods declared once by a test, for the dataplane (steering) and for the
//! adapter's inventory files (`node.yaml`, `pods.yaml` of `--local-dir` /
//! `--inventory-dir`).

use std::net::Ipv4Addr;

use dpumesh_api::proto::v1::PodSteering;
use dpumesh_sim::{Netns, Node, SimGuard};

use crate::node::{attach_pod, steering};

/// A pod of a simulated node, in namespace `default`.
#[derive(Clone, Copy, Debug)]
pub struct SimPod {
    /// Short and unique: the pod's netns, uid (`uid-<short>`) and container
    /// id (`ctr-<short>`).
    pub short: &'static str,
    pub name: &'static str,
    pub service_account: &'static str,
    /// Its `app` label.
    pub app: &'static str,
    /// Index of its VF on the node.
    pub vf: usize,
    pub ip: Ipv4Addr,
    pub meshed: bool,
}

impl SimPod {
    /// `uid-<short>`.
    pub fn uid(&self) -> String {
        format!("uid-{}", self.short)
    }

    /// Its VF moved into a new pod netns, as [`attach_pod`] does.
    pub fn attach(&self, sim: &SimGuard, node: &Node) -> Netns {
        attach_pod(sim, node, self.vf, self.short, self.ip)
    }

    /// The dataplane's record of it (default interception, also when not meshed).
    pub fn steering(&self, node: &Node) -> PodSteering {
        PodSteering {
            container_id: format!("ctr-{}", self.short),
            meshed: self.meshed,
            ..steering(&self.uid(), self.name, node, self.vf, self.ip)
        }
    }

    /// Its entry in the adapter's `pods.yaml` (one flow-style list item).
    pub fn inventory_entry(&self, node: &Node) -> String {
        let v = node.vf(self.vf).expect("vf");
        format!(
            "  - {{uid: {}, name: {}, namespace: default, serviceAccount: {}, labels: {{app: {}}}, ips: [{}], mac: \"{}\", vfIndex: {}, representor: {}, meshed: {}}}\n",
            self.uid(), self.name, self.service_account, self.app, self.ip, v.mac, v.index, v.representor, self.meshed
        )
    }
}

/// Writes the adapter's `node.yaml` (underlay, services in 10.96.0.0/16,
/// dpu-proxy at `proxy_mgmt`) and `pods.yaml` (`pods`) into `dir`.
pub fn write_inventory(
    dir: &std::path::Path,
    node_name: &str,
    node: &Node,
    proxy_mgmt: &str,
    pods: &[&SimPod],
) {
    std::fs::write(
        dir.join("node.yaml"),
        format!(
            "name: {node_name}\nnetworkMode: underlay\npodCidr: {}\nserviceCidrs: [10.96.0.0/16]\ndpuMgmtAddr: {proxy_mgmt}\n",
            node.pod_cidr
        ),
    )
    .expect("node.yaml");
    let mut text = String::from("pods:\n");
    for p in pods {
        text += &p.inventory_entry(node);
    }
    std::fs::write(dir.join("pods.yaml"), text).expect("pods.yaml");
}

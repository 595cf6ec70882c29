//! The cluster-wide controller: Kubernetes watchers on Pods, Nodes, Services,
//! EndpointSlices and Namespaces keep a cluster state ([`state::ClusterState`]);
//! [`build`] turns it into one inventory per node (the shape the adapter reads:
//! `node.yaml`, `pods.yaml`, `services.yaml`, plus `endpoints.yaml`) and
//! [`output`] writes those to a directory per node. Contract: `docs/controller.md`.

pub mod build;
pub mod output;
pub mod run;
pub mod serve;
pub mod state;
pub mod watch;

/// Pod annotations the controller reads (written by the CNI or an operator).
pub mod annotations {
    /// Index of the pod's VF on its node's DPU (`"3"`). Required for a pod to be
    /// part of its node's inventory.
    pub const VF_INDEX: &str = "dpumesh.io/vf-index";
    /// The pod interface's MAC (`"02:64:6d:01:00:03"`). Required.
    pub const MAC: &str = "dpumesh.io/mac";
    /// The VF's representor on the DPU; default `pf0vf<vf-index>`.
    pub const REPRESENTOR: &str = "dpumesh.io/representor";
    /// `"false"` takes the pod out of the mesh (also `sidecar.istio.io/inject: "false"`).
    pub const MESHED: &str = "dpumesh.io/meshed";
    /// Node annotation: `underlay` (default) or `overlay`.
    pub const NETWORK_MODE: &str = "dpumesh.io/network-mode";
    /// Node annotation: the DPU's control address (`ip:port`); default the
    /// controller's `--dpu-mgmt-addr`.
    pub const DPU_MGMT_ADDR: &str = "dpumesh.io/dpu-mgmt-addr";
    /// Node annotation: the DPU's uplink (underlay) address; default the
    /// Node's InternalIP.
    pub const DPU_UNDERLAY_IP: &str = "dpumesh.io/dpu-underlay-ip";
}

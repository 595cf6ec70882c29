//! Generated gRPC types and services of `dpumesh.v1` (see `proto/dpumesh/v1/control.proto`),
//! and the conversions between them and the config model.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dpumesh.v1");
}

pub use v1::*;

use crate::config;

impl From<config::NetworkMode> for v1::NetworkMode {
    fn from(mode: config::NetworkMode) -> Self {
        match mode {
            config::NetworkMode::Underlay => v1::NetworkMode::Underlay,
            config::NetworkMode::Overlay => v1::NetworkMode::Overlay,
        }
    }
}

impl TryFrom<v1::NetworkMode> for config::NetworkMode {
    /// The wire value had no config counterpart (`NETWORK_MODE_UNSPECIFIED`).
    type Error = v1::NetworkMode;

    fn try_from(mode: v1::NetworkMode) -> Result<Self, Self::Error> {
        match mode {
            v1::NetworkMode::Underlay => Ok(config::NetworkMode::Underlay),
            v1::NetworkMode::Overlay => Ok(config::NetworkMode::Overlay),
            other => Err(other),
        }
    }
}

impl From<&config::Interception> for v1::Interception {
    fn from(i: &config::Interception) -> Self {
        let ports = |p: &[u16]| p.iter().map(|&p| u32::from(p)).collect();
        v1::Interception {
            capture_inbound_ports: ports(&i.capture_inbound_ports),
            exclude_inbound_ports: ports(&i.exclude_inbound_ports),
            capture_outbound_cidrs: i.capture_outbound_cidrs.clone(),
            exclude_outbound_cidrs: i.exclude_outbound_cidrs.clone(),
            exclude_outbound_ports: ports(&i.exclude_outbound_ports),
        }
    }
}

impl v1::PodSteering {
    /// The steering entry of a NodeConfig pod. The CNI attachment
    /// (`container_id`, `ifname`) is not part of a NodeConfig and is left empty.
    pub fn from_config_pod(pod: &config::Pod) -> Self {
        v1::PodSteering {
            pod_uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            container_id: String::new(),
            ifname: String::new(),
            vf_index: pod.vf_index,
            representor: pod.representor.clone(),
            ips: pod.ips.clone(),
            mac: pod.mac.clone(),
            meshed: pod.meshed,
            interception: Some((&pod.interception).into()),
        }
    }
}

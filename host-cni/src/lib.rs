//! dpumesh-cni: the CNI plugin that gives each pod a DPU VF.
//! Contract: docs/host-cni.md.
#![forbid(unsafe_code)]

pub mod commands;
pub mod dataplane;
pub mod install;
pub mod ipam;
pub mod k8s;
pub mod netlink;
pub mod spec;
pub mod state;
pub mod vf;

//! dpumesh-controller: the cluster-wide controller and the per-node adapter.
//!
//! The adapter turns istiod's per-proxy Envoy v3 xDS (one proxy per local pod)
//! plus the node's pod/service inventory into one [`dpumesh_api::NodeConfig`] and
//! pushes it to the node's dpu-proxy. Contract: `docs/adapter.md`.
#![forbid(unsafe_code)]

pub mod inventory;
pub mod inventory_client;
pub mod k8s;
pub mod leader;
pub mod local;
pub mod node_network;
pub mod push;
pub mod translate;
pub mod workload;
pub mod xds;

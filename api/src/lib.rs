//! Shared contracts of dpumesh, depended on by every component and depending on
//! nothing of ours:
//!
//! * [`config`]: the node-level mesh config ([`config::NodeConfig`]) that the
//!   adapter pushes to one node's DPU, and its validation;
//! * [`proto`]: the gRPC control APIs (adapter → dpu-proxy, CNI → dataplane,
//!   status of every component), generated from `proto/dpumesh/v1/control.proto`;
//! * [`client`]: connecting to those APIs (addresses, timeouts, small call helpers).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod proto;
pub mod server;

pub use config::NodeConfig;

//! dpu-proxy: the shared per-node L4/L7 proxy running on the DPU.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod compiled;
pub mod config_store;
pub mod control;
pub mod hbone;
pub mod identity;
pub mod lb;
pub mod metrics;
pub mod proxy;
pub mod tls_origination;

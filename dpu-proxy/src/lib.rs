//! dpu-proxy: the shared per-node L4/L7 proxy running on the DPU.
#![forbid(unsafe_code)]

pub mod config_store;
pub mod control;

//! dpumesh-dataplane

pub mod admin;
pub mod bpf;
pub mod control;
pub mod metrics;
pub mod registry;

//! dpumesh-dataplane

pub mod bpf;
pub mod control;
pub mod registry;

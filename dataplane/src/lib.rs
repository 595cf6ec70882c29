//! dpumesh-dataplane

pub mod control;
pub mod registry;

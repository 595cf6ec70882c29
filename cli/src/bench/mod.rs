//! `dpumesh bench <scenario>`: side-by-side benchmarks (see docs/benchmarks.md).
//! This module holds the shared machinery: load generation, process accounting and
//! the summary format of `shared/brief/bench-json.md`.

pub mod cni;
pub mod config;
pub mod dataplane;
pub mod load;
pub mod mesh;
pub mod mtls;
pub mod procstat;
pub mod proxy;
pub mod report;

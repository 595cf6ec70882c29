//! Generated prost types of Istio's workload API (`proto/istio/`).
#![allow(clippy::all, missing_docs)]

pub mod workload {
    tonic::include_proto!("istio.workload");
}

pub mod security {
    tonic::include_proto!("istio.security");
}

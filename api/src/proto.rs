//! Generated gRPC types and services of `dpumesh.v1` (see `proto/dpumesh/v1/control.proto`).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("dpumesh.v1");
}

pub use v1::*;

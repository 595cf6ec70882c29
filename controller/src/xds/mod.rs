//! Envoy v3 xDS resources: decoding (protobuf for ADS, proto3 JSON/YAML for the
//! local mode — both end in the same typed decode) and the ADS client (state of
//! the world and incremental).

pub mod ads;
mod delta;
pub mod descriptors;
pub mod resource;

pub use resource::{
    DecodeError, ProxyResources, Resource, ResourceRef, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE,
    ROUTE_TYPE, SECRET_TYPE, TYPE_URLS,
};

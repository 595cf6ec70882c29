//! Envoy v3 xDS resources: decoding (protobuf for ADS, proto3 JSON/YAML for the
//! local mode — both end in the same typed decode) and the ADS client.

pub mod descriptors;

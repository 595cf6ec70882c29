//! The protobuf descriptors of the Envoy v3 types the local mode reads as JSON/YAML.
//!
//! `envoy-types` ships prost structs but no serde support; its crate source holds
//! the full descriptor set (`src/generated/types.bin`, 3.3 MB) without exporting it.
//! We keep a pruned copy (`envoy_descriptors.bin`: the xDS resource types, the
//! extensions istiod puts inside them, and their imports) and decode proto3 JSON
//! with `prost-reflect` against it. `tests/descriptors.rs` regenerates the pruned
//! set from the crate source and checks that the committed copy is identical.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorSet;

/// The committed pruned descriptor set.
pub const ENVOY_DESCRIPTORS: &[u8] = include_bytes!("envoy_descriptors.bin");

/// Proto packages kept whole (with their imports), besides the xDS resource types.
pub const KEPT_PACKAGES: &[&str] = &[
    "envoy.config.listener.v3",
    "envoy.config.route.v3",
    "envoy.config.cluster.v3",
    "envoy.config.endpoint.v3",
    "envoy.service.discovery.v3",
    "envoy.extensions.filters.http.",
    "envoy.extensions.filters.network.",
    "envoy.extensions.filters.listener.",
    "envoy.extensions.transport_sockets.",
    "envoy.extensions.upstreams.",
    "envoy.extensions.load_balancing_policies.",
    "envoy.extensions.access_loggers.",
    "envoy.extensions.retry.",
    "envoy.extensions.http.",
    "envoy.extensions.network.",
    "envoy.extensions.clusters.",
    "envoy.extensions.tracers.",
    "envoy.config.trace.v3",
    "envoy.extensions.stat_sinks.",
    "envoy.extensions.rbac.",
    "envoy.config.rbac.v3",
    "google.protobuf",
];

fn kept(package: &str) -> bool {
    KEPT_PACKAGES.iter().any(|p| {
        if p.ends_with('.') {
            package.starts_with(p)
        } else {
            package == *p
        }
    })
}

/// Reduces a full `FileDescriptorSet` (envoy-types' `types.bin`) to the files of
/// [`KEPT_PACKAGES`] and everything they import, in the original (dependency) order.
pub fn prune(full: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    let set = FileDescriptorSet::decode(full)?;
    let by_name: HashMap<&str, &prost_types::FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut needed = BTreeSet::new();
    let mut stack: Vec<&str> = set
        .file
        .iter()
        .filter(|f| kept(f.package()))
        .map(|f| f.name())
        .collect();
    while let Some(name) = stack.pop() {
        if needed.insert(name.to_string()) {
            if let Some(file) = by_name.get(name) {
                stack.extend(file.dependency.iter().map(String::as_str));
            }
        }
    }
    let pruned = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| needed.contains(f.name()))
            .cloned()
            .map(|mut f| {
                // Comments are a third of the size and never needed to decode.
                f.source_code_info = None;
                f
            })
            .collect(),
    };
    Ok(pruned.encode_to_vec())
}

/// The descriptor pool of [`ENVOY_DESCRIPTORS`], built once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The committed bytes are checked by tests/descriptors.rs; a failure here
        // is a build defect, not input from outside.
        DescriptorPool::decode(ENVOY_DESCRIPTORS)
            .unwrap_or_else(|e| panic!("controller/src/xds/envoy_descriptors.bin is corrupt: {e}"))
    })
}

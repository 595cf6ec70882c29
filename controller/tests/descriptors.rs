//! The committed pruned Envoy descriptor set equals what `prune` makes from the
//! envoy-types crate source. Regenerate with `DPUMESH_REGENERATE=1 cargo test -p
//! dpumesh-controller --test descriptors`.

use std::path::PathBuf;

use dpumesh_controller::xds::descriptors::{pool, prune, ENVOY_DESCRIPTORS};

/// envoy-types' `src/generated/types.bin` in the cargo registry source cache.
fn envoy_types_bin() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("neither CARGO_HOME nor HOME is set");
    let src = cargo_home.join("registry").join("src");
    let mut found = Vec::new();
    for index in std::fs::read_dir(&src).expect("cargo registry src dir") {
        let candidate = index
            .expect("registry entry")
            .path()
            .join("envoy-types-0.7.7/src/generated/types.bin");
        if candidate.is_file() {
            found.push(candidate);
        }
    }
    found
        .pop()
        .unwrap_or_else(|| panic!("envoy-types-0.7.7 source not found under {}", src.display()))
}

#[test]
fn committed_descriptors_match_envoy_types() {
    let full = std::fs::read(envoy_types_bin()).expect("read types.bin");
    let pruned = prune(&full).expect("types.bin decodes");
    if std::env::var_os("DPUMESH_REGENERATE").is_some() {
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/xds/envoy_descriptors.bin");
        std::fs::write(&out, &pruned).expect("write descriptors");
        return;
    }
    assert!(
        pruned == ENVOY_DESCRIPTORS,
        "src/xds/envoy_descriptors.bin is stale: regenerate it (see the test's doc comment)"
    );
}

#[test]
fn pool_has_every_type_we_decode() {
    for name in [
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "google.protobuf.Duration",
    ] {
        assert!(pool().get_message_by_name(name).is_some(), "{name} missing");
    }
}

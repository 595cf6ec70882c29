//! Where an EDS endpoint runs and whether dpu-proxy may reach it over HBONE
//! (`Endpoint.node`, `Endpoint.hbone`): from the inventory (our pods; the
//! controller's `endpoints.yaml`: node, service account, dpumesh membership of
//! every EndpointSlice address) and from istiod's endpoint metadata.
//!
//! istiod's markers (`pilot/pkg/networking/util` and
//! `pilot/pkg/xds/endpoints/endpoint_builder.go`, `buildEnvoyLbEndpoint`):
//! * `filter_metadata["envoy.transport_socket_match"].tlsMode == "istio"`: the
//!   endpoint runs an Istio proxy (the pod's `security.istio.io/tlsMode` label);
//! * an HBONE-capable endpoint (ambient, or a sidecar when HBONE is preferred)
//!   comes as an `envoy_internal_address` (`server_listener_name:
//!   connect_originate`, `endpoint_id: "<ip>:<port>"`) with
//!   `filter_metadata["envoy.filters.listener.original_dst"].local =
//!   "<ip>:<port>"` and `filter_metadata["envoy.transport_socket_match"].tunnel
//!   == "http"`.
//!
//! Contract: `docs/adapter.md` (Endpoints), rule in dpu-proxy: `docs/identity.md`.

use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Metadata,
};
use envoy_types::pb::envoy::config::endpoint::v3::Endpoint as EnvoyEndpoint;

use super::util::{filter_metadata, string_field};
use crate::inventory::Inventory;

/// `filter_metadata` key of istiod's per-endpoint transport socket markers.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// `filter_metadata` key of the tunnel target of an HBONE endpoint.
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";

/// The endpoint's IP (or host name) and port: a socket address, or istiod's
/// HBONE form (an internal address whose `endpoint_id`, else the
/// `original_dst` metadata's `local`, is `<ip>:<port>`). `None`: neither.
pub fn socket(ep: &EnvoyEndpoint, metadata: Option<&Metadata>) -> Option<(String, u32)> {
    match ep.address.as_ref()?.address.as_ref()? {
        AddressKind::SocketAddress(s) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => Some((s.address.clone(), 0)),
        },
        AddressKind::EnvoyInternalAddress(internal) => split_host_port(&internal.endpoint_id)
            .or_else(|| {
                filter_metadata(metadata, ORIGINAL_DST)
                    .and_then(|m| string_field(m, "local"))
                    .and_then(split_host_port)
            }),
        _ => None,
    }
}

/// `10.0.0.1:80` / `[fd00::1]:80` → (`10.0.0.1` / `fd00::1`, 80).
fn split_host_port(s: &str) -> Option<(String, u32)> {
    let addr: std::net::SocketAddr = s.parse().ok()?;
    Some((addr.ip().to_string(), u32::from(addr.port())))
}

/// What istiod's metadata says about the endpoint's proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IstioMarks {
    /// `tlsMode: istio`: an Istio proxy (sidecar) runs in front of it.
    pub istio_proxy: bool,
    /// `tunnel: http`: it accepts HBONE (ambient, HBONE-capable sidecar).
    pub tunnel: bool,
}

impl IstioMarks {
    pub fn of(metadata: Option<&Metadata>) -> IstioMarks {
        let m = filter_metadata(metadata, TRANSPORT_SOCKET_MATCH);
        IstioMarks {
            istio_proxy: m.and_then(|m| string_field(m, "tlsMode")) == Some("istio"),
            tunnel: m.and_then(|m| string_field(m, "tunnel")) == Some("http"),
        }
    }
}

/// `Endpoint.node` and `Endpoint.hbone` of a remote or local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub hbone: Option<bool>,
}

/// Decides node and HBONE eligibility of the endpoint at `address`:
/// * a pod of our node: our node, `hbone` unset (never tunnelled to);
/// * otherwise the node the controller reports for the address (empty when
///   unknown), and `hbone: true` when the endpoint is mesh-capable (a meshed
///   dpumesh pod per the controller, istiod's `tlsMode: istio` or `tunnel:
///   http`) and its identity (`service_account`) is known; `hbone: false` when
///   it is not mesh-capable but its node is known (plaintext, as Istio's
///   auto-mTLS does); unset when nothing is known (plaintext by the node rule).
pub fn placement(
    inventory: &Inventory,
    address: &str,
    is_local_pod: bool,
    marks: IstioMarks,
    service_account: &str,
) -> Placement {
    if is_local_pod {
        return Placement {
            node: inventory.node.name.clone(),
            hbone: None,
        };
    }
    let known = inventory.endpoints.get(address);
    let node = known.map(|k| k.node.clone()).unwrap_or_default();
    if node == inventory.node.name {
        // Our node, not one of our VF pods (e.g. host network): no tunnel.
        return Placement { node, hbone: None };
    }
    let mesh_capable = marks.istio_proxy || marks.tunnel || known.is_some_and(|k| k.meshed);
    if mesh_capable && !service_account.is_empty() {
        return Placement {
            node,
            hbone: Some(true),
        };
    }
    if mesh_capable {
        tracing::warn!(
            %address,
            "endpoint has a mesh proxy but no known service account: reached in plaintext \
             (no identity to check over HBONE)"
        );
    }
    let hbone = (!node.is_empty()).then_some(false);
    Placement { node, hbone }
}

//! Inbound policies from istiod's sidecar inbound listener (`virtualInbound`):
//! the Bookinfo-shaped set in `tests/fixtures/inbound/` (per-pod listeners as
//! istiod builds them for a namespace STRICT PeerAuthentication, a port-level
//! PERMISSIVE, an ALLOW policy for reviews from productpage's principal on GET
//! and a DENY policy), read through the local-mode loader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dpumesh_api::config::{InboundPolicy, MtlsMode, NodeConfig, PeerAuthentication};
use dpumesh_controller::local;
use dpumesh_controller::translate::translate;
use dpumesh_controller::xds::{ProxyResources, Resource};
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound")
}

fn build() -> NodeConfig {
    let config = local::build(&fixture(), Some("node-1")).unwrap_or_else(|e| panic!("{e}"));
    config.validate().unwrap_or_else(|e| panic!("{e}"));
    config
}

const REVIEWS_V1: &str = "reviews-v1-86896b7648-bqzl6";
const REVIEWS_V2: &str = "reviews-v2-b7dcd98fb-2hl8n";
const PRODUCTPAGE: &str = "productpage-v1-7d6cfb7dfd-x2x7k";
const RATINGS: &str = "ratings-v1-5f9699cfdf-7tq9w";
const DETAILS: &str = "details-v1-5f4d584748-9lq2d";

fn policy_of<'c>(config: &'c NodeConfig, pod: &str) -> Option<&'c InboundPolicy> {
    let p = config
        .pods
        .iter()
        .find(|p| p.name == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"));
    let name = p.inbound_policy.as_ref()?;
    Some(
        config
            .inbound_policies
            .iter()
            .find(|ip| &ip.name == name)
            .unwrap_or_else(|| panic!("{pod} names {name:?}, which is not in inboundPolicies")),
    )
}

/// What istiod's reviews listener says, in NodeConfig's terms.
fn reviews_expected(name: &str) -> InboundPolicy {
    serde_json::from_value(json!({
        "name": name,
        "peerAuthentication": {"mode": "STRICT", "portModes": {"9090": "PERMISSIVE"}},
        "authorization": [
            {"name": "default/deny-admin", "action": "DENY",
             "rules": [{"to": [{"paths": ["/admin*"]}]}]},
            {"name": "default/reviews-viewer", "action": "ALLOW",
             "rules": [
                {"from": [{"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}],
                 "to": [{"methods": ["GET"]}]},
                {"to": [{"ports": [9090], "methods": ["GET"], "paths": ["/metrics"]}]}
             ]}
        ]
    }))
    .expect("expected policy parses")
}

#[test]
fn each_pod_gets_the_policy_its_inbound_listener_says() {
    let c = build();
    let reviews = policy_of(&c, REVIEWS_V1).expect("reviews-v1 has a policy");
    assert_eq!(reviews, &reviews_expected(&reviews.name));
    assert!(reviews.name.starts_with("inbound-"), "{}", reviews.name);

    let strict = policy_of(&c, PRODUCTPAGE).expect("productpage has a policy");
    assert_eq!(
        strict.peer_authentication,
        PeerAuthentication {
            mode: MtlsMode::Strict,
            port_modes: BTreeMap::new()
        }
    );
    assert!(strict.authorization.is_empty());

    // Same listener content → the same stored policy; no listener → none.
    assert_eq!(policy_of(&c, REVIEWS_V2), Some(reviews));
    assert_eq!(policy_of(&c, RATINGS), Some(strict));
    assert_eq!(policy_of(&c, DETAILS), None);
    assert_eq!(c.inbound_policies.len(), 2, "{:#?}", c.inbound_policies);

    // The outbound side is untouched by the inbound listeners.
    assert_eq!(c.route_tables.len(), 1);
    assert_eq!(c.clusters.len(), 3);
}

/// The config grows with pods + distinct policies, not their product: 60 pods,
/// each with its own copy of one of two inbound listeners (as over ADS, where
/// no two pods share an object), give two policies.
#[test]
fn policies_are_stored_once_whatever_the_number_of_pods() {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture");
    let reviews = state.proxies[&format!("default/{REVIEWS_V1}")].clone();
    let strict = state.proxies[&format!("default/{PRODUCTPAGE}")].clone();
    let mut inventory = state.inventory.clone();
    let template = inventory.pods[0].clone();
    inventory.pods.clear();
    let mut proxies: BTreeMap<String, ProxyResources> = BTreeMap::new();
    for i in 0..60u32 {
        let mut p = template.clone();
        p.name = format!("pod-{i}");
        p.uid = format!("uid-{i}");
        p.ips = vec![format!("10.244.1.{}", 100 + i)];
        p.mac = format!("02:00:0a:f4:01:{:02x}", 100 + i);
        p.vf_index = 10 + i;
        p.representor = format!("pf0vf{}", 10 + i);
        let px = if i % 2 == 0 { &reviews } else { &strict };
        proxies.insert(p.key(), px.clone());
        inventory.pods.push(p);
    }
    let config = translate(&inventory, &proxies).expect("translate");
    config.validate().expect("valid");
    assert_eq!(config.inbound_policies.len(), 2);
    assert!(config.pods.iter().all(|p| p.inbound_policy.is_some()));
}

fn with_listener(edit: impl Fn(&mut Listener)) -> NodeConfig {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture");
    let mut proxies = state.proxies.clone();
    let key = format!("default/{REVIEWS_V1}");
    let mut l = proxies[&key].listeners["virtualInbound"].clone();
    edit(&mut l);
    proxies
        .get_mut(&key)
        .expect("reviews-v1")
        .insert(Resource::Listener(l));
    let config = translate(&state.inventory, &proxies).unwrap_or_else(|e| panic!("{e}"));
    config.validate().expect("valid");
    config
}

fn is_tls(chain: &FilterChain) -> bool {
    chain.transport_socket.is_some()
}

fn port(chain: &FilterChain) -> Option<u32> {
    chain
        .filter_chain_match
        .as_ref()
        .and_then(|m| m.destination_port.as_ref())
        .map(|p| p.value)
}

/// PERMISSIVE is "mTLS chain and plaintext chain", DISABLE "plaintext only";
/// ports whose chains say something else than the catch-all get `portModes`.
#[test]
fn chains_give_the_mtls_mode_per_port() {
    // Plaintext catch-all chains added (namespace PERMISSIVE): 9080 stays
    // STRICT (a port-level override), 9090 now equals the default.
    let c = with_listener(|l| {
        let plain: Vec<_> = l
            .filter_chains
            .iter()
            .filter(|c| port(c) == Some(9090) && !is_tls(c))
            .cloned()
            .map(|mut c| {
                if let Some(m) = c.filter_chain_match.as_mut() {
                    m.destination_port = None;
                }
                c
            })
            .collect();
        l.filter_chains.extend(plain);
    });
    let p = policy_of(&c, REVIEWS_V1).expect("policy");
    assert_eq!(p.peer_authentication.mode, MtlsMode::Permissive);
    assert_eq!(
        p.peer_authentication.port_modes,
        BTreeMap::from([("9080".to_string(), MtlsMode::Strict)])
    );

    // No TLS chain at all: DISABLE everywhere (the catch-all gets 9090's
    // plaintext chain without its port).
    let c = with_listener(|l| {
        l.filter_chains.retain(|c| !is_tls(c));
        let plain = l
            .filter_chains
            .iter()
            .find(|c| port(c) == Some(9090))
            .cloned()
            .map(|mut c| {
                if let Some(m) = c.filter_chain_match.as_mut() {
                    m.destination_port = None;
                }
                c
            });
        l.filter_chains.extend(plain);
    });
    let p = policy_of(&c, REVIEWS_V1).expect("policy");
    assert_eq!(p.peer_authentication.mode, MtlsMode::Disable);
    assert!(p.peer_authentication.port_modes.is_empty(), "{p:?}");
}

/// Chains that disagree on the RBAC filters cannot be one pod's policy set:
/// the listener is refused, naming both chains and the pod (here the 9080
/// chain lost its DENY filter).
#[test]
fn chains_with_different_rbac_are_an_error_naming_them() {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture");
    let mut proxies = state.proxies.clone();
    let key = format!("default/{REVIEWS_V1}");
    let mut l = proxies[&key].listeners["virtualInbound"].clone();
    let idx = l
        .filter_chains
        .iter()
        .position(|c| port(c) == Some(9080))
        .expect("a 9080 chain");
    // Drop the DENY filter from the 9080 chain's HCM by re-encoding it.
    for f in l.filter_chains[idx].filters.iter_mut() {
        if let Some(ConfigType::TypedConfig(any)) = f.config_type.as_mut() {
            if any.type_url.ends_with("HttpConnectionManager") {
                let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
                let at = hcm
                    .http_filters
                    .iter()
                    .position(|h| h.name == "envoy.filters.http.rbac")
                    .expect("rbac filter");
                hcm.http_filters.remove(at);
                any.value = hcm.encode_to_vec();
            }
        }
    }
    proxies
        .get_mut(&key)
        .expect("pod")
        .insert(Resource::Listener(l));
    let err = translate(&state.inventory, &proxies).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("Listener \"virtualInbound\"")
            && msg.contains(REVIEWS_V1)
            && msg.contains("carry different RBAC filters")
            && msg.contains("0.0.0.0_9080"),
        "{msg}"
    );
}

//! Inbound policies over ADS: the fake ADS server (state of the world) serves
//! `tests/fixtures/inbound/` per sidecar node id, the virtualInbound listeners
//! included; the adapter pushes to the real dpu-proxy the same inbound
//! policies as local mode; an inbound listener it cannot map (two enforcing
//! ALLOW RBAC filters) is NACKed naming the listener and the pod, and
//! dpu-proxy keeps the last good config.

mod support;

use std::time::{Duration, Instant};

use dpumesh_controller::local;
use dpumesh_controller::xds::ads::{self, AdsSettings, XdsVariant};
use dpumesh_controller::xds::{Resource, LISTENER_TYPE};
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use prost::Message;
use support::ads::{anys, FakeAds, Recorded};
use support::DpuProxy;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound")
}

async fn wait_for(ads: &FakeAds, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = ads.log();
        if pred(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listener with every HTTP DENY RBAC filter turned into an ALLOW one.
fn with_two_allow_filters(mut l: Listener) -> Listener {
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            for hf in &mut hcm.http_filters {
                if let Some(http_filter::ConfigType::TypedConfig(rbac)) = hf.config_type.as_mut() {
                    if rbac.type_url.ends_with("filters.http.rbac.v3.RBAC") {
                        let mut r = HttpRbac::decode(rbac.value.as_slice()).expect("rbac");
                        if let Some(rules) = r.rules.as_mut() {
                            rules.action = Action::Allow as i32;
                        }
                        rbac.value = r.encode_to_vec();
                    }
                }
            }
            any.value = hcm.encode_to_vec();
        }
    }
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_listeners_over_ads_reach_dpu_proxy_and_a_bad_one_is_nacked() {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture");
    let expected = local::build(&fixture(), Some("node-1")).expect("local build");
    let ads = FakeAds::new();
    let node_ids = ads.set_pods(&state);
    let xds_addr = ads.serve().await;
    let proxy = DpuProxy::start().await;
    let settings = AdsSettings {
        xds_addr,
        proxy_addr: proxy.mgmt_addr.clone(),
        istio_version: "1.24.0".into(),
        variant: XdsVariant::Sotw,
    };
    let adapter = tokio::spawn(ads::run(settings, state.inventory.clone()));

    // The same policies as local mode, each pod naming the same entry.
    let served = proxy.wait_version(1).await;
    assert_eq!(served.inbound_policies, expected.inbound_policies);
    for (got, want) in served.pods.iter().zip(&expected.pods) {
        assert_eq!(
            (&got.name, &got.inbound_policy),
            (&want.name, &want.inbound_policy)
        );
    }
    let good_version = proxy.config().await.0;

    // reviews-v1's listener with two enforcing ALLOW filters: NACKed, named.
    let (pod, id) = node_ids
        .iter()
        .find(|(p, _)| p.contains("reviews-v1"))
        .expect("reviews-v1");
    let mut listeners = anys(&state.proxies[pod], LISTENER_TYPE);
    let bad = with_two_allow_filters(state.proxies[pod].listeners["virtualInbound"].clone());
    for (name, any) in listeners.iter_mut() {
        if name == "virtualInbound" {
            *any = Resource::Listener(bad.clone()).to_any();
        }
    }
    ads.set(id, LISTENER_TYPE, listeners);
    let log = wait_for(&ads, "a NACK of the inbound listener", |log| {
        log.iter()
            .any(|r| &r.node_id == id && r.type_url == LISTENER_TYPE && r.is_nack())
    })
    .await;
    let nack = log
        .iter()
        .find(|r| &r.node_id == id && r.is_nack())
        .expect("nack");
    let message = nack.error.clone().unwrap_or_default();
    assert!(
        message.contains("Listener \"virtualInbound\"")
            && message.contains(pod.as_str())
            && message.contains("more than one enforcing ALLOW"),
        "{message}"
    );
    assert_eq!(
        proxy.config().await.0,
        good_version,
        "dpu-proxy keeps the last good config"
    );
    adapter.abort();
}

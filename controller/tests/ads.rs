//! The ADS client (state of the world) against a fake ADS server (a real tonic
//! server) serving the Bookinfo resource set, pushing to the real dpu-proxy
//! binary. The incremental variant: `ads_delta.rs`.

mod support;

use std::time::{Duration, Instant};

use dpumesh_controller::local;
use dpumesh_controller::xds::ads::{self, AdsSettings, XdsVariant};
use dpumesh_controller::xds::{Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use support::ads::{anys, FakeAds, Recorded};
use support::DpuProxy;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_good_config_nacks_a_broken_resource_and_keeps_the_last_good() {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture");
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

    // Every pod's proxy subscribes, is served, ACKs; the node config arrives.
    let served = proxy.wait_version(1).await;
    let log = wait_for(&ads, "ACKs of all four types from every pod", |log| {
        node_ids.iter().all(|(_, id)| {
            [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
                .iter()
                .all(|t| {
                    log.iter()
                        .any(|r| &r.node_id == id && r.type_url == *t && r.is_ack())
                })
        })
    })
    .await;
    assert!(log.iter().all(|r| !r.is_nack()), "{log:#?}");
    // EDS and RDS were asked for by name (the clusters' and listeners' references).
    let eds = log
        .iter()
        .find(|r| r.type_url == ENDPOINT_TYPE)
        .expect("EDS request");
    assert!(
        eds.resource_names
            .contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_string()),
        "{eds:?}"
    );
    let rds = log
        .iter()
        .find(|r| r.type_url == ROUTE_TYPE)
        .expect("RDS request");
    assert_eq!(rds.resource_names, ["9080"]);
    let first = proxy.wait_version(served.version).await;
    assert_eq!(first.clusters.len(), 9);
    assert_eq!(first.route_tables.len(), 2);
    assert!(first
        .pods
        .iter()
        .any(|p| p.name.starts_with("reviews-v2") && p.route_overrides.contains_key("9080")));
    let good_version = proxy.config().await.0;

    // A route config that refers to a cluster nobody serves: NACKed, named.
    let (details_pod, details_id) = &node_ids[1];
    let mut broken = state.proxies[details_pod].routes["9080"].clone();
    if let Some(Action::Route(a)) = broken.virtual_hosts[0].routes[0].action.as_mut() {
        a.cluster_specifier = Some(ClusterSpecifier::Cluster(
            "outbound|9080|v9|reviews.default.svc.cluster.local".into(),
        ));
    }
    let version = {
        ads.set(
            details_id,
            ROUTE_TYPE,
            vec![("9080".into(), Resource::Route(broken).to_any())],
        );
        ads.version()
    };
    let log = wait_for(&ads, "a NACK of the broken route config", |log| {
        log.iter()
            .any(|r| &r.node_id == details_id && r.type_url == ROUTE_TYPE && r.is_nack())
    })
    .await;
    let nack = log.iter().find(|r| r.is_nack()).expect("nack");
    let message = nack.error.clone().unwrap_or_default();
    assert!(
        message.contains(ROUTE_TYPE) && message.contains("\"9080\"") && message.contains("v9"),
        "{message}"
    );
    assert_ne!(
        nack.version_info, version,
        "a NACK carries the previous version"
    );
    assert_eq!(
        proxy.config().await.0,
        good_version,
        "dpu-proxy keeps the last good config"
    );

    // A resource that does not decode at all: NACKed with its type.
    let (ratings_pod, ratings_id) = &node_ids[4];
    let garbage = Any {
        type_url: CLUSTER_TYPE.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let mut clusters = anys(&state.proxies[ratings_pod], CLUSTER_TYPE);
    clusters.push(("garbage".into(), garbage));
    ads.set(ratings_id, CLUSTER_TYPE, clusters);
    let log = wait_for(&ads, "a NACK of the undecodable cluster", |log| {
        log.iter()
            .any(|r| &r.node_id == ratings_id && r.type_url == CLUSTER_TYPE && r.is_nack())
    })
    .await;
    let nack = log
        .iter()
        .rev()
        .find(|r| &r.node_id == ratings_id && r.is_nack())
        .expect("nack");
    assert!(
        nack.error
            .as_deref()
            .unwrap_or_default()
            .contains("not a valid protobuf message"),
        "{nack:?}"
    );
    assert_eq!(proxy.config().await.0, good_version);

    // Fixed resources with a real change: a new version reaches dpu-proxy.
    ads.set(
        ratings_id,
        CLUSTER_TYPE,
        anys(&state.proxies[ratings_pod], CLUSTER_TYPE),
    );
    let mut fixed = state.proxies[details_pod].routes["9080"].clone();
    if let Some(Action::Route(a)) = fixed.virtual_hosts[1].routes[0].action.as_mut() {
        a.timeout = Some(PbDuration {
            seconds: 7,
            nanos: 0,
        });
    }
    for (pod, id) in &node_ids {
        let mut r = state.proxies[pod].routes["9080"].clone();
        if pod != &node_ids[3].0 {
            r = fixed.clone();
        }
        ads.set(
            id,
            ROUTE_TYPE,
            vec![("9080".into(), Resource::Route(r).to_any())],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (v, c) = proxy.config().await;
        let seven = c.as_ref().is_some_and(|c| {
            c.route_tables.iter().any(|t| {
                t.name == "9080"
                    && t.virtual_hosts
                        .iter()
                        .any(|v| v.routes.iter().any(|r| r.timeout_ms == Some(7000)))
            })
        });
        if v > good_version && seven {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed config never arrived (serving {v})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    adapter.abort();
}

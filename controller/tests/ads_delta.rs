//! The incremental (delta) ADS client against the fake ADS server speaking
//! `DeltaAggregatedResources` (a real tonic server, `tests/support/ads.rs`),
//! pushing to the real dpu-proxy binary. The Bookinfo set is served per pod.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dpumesh_api::NodeConfig;
use dpumesh_controller::local::{self, LocalState};
use dpumesh_controller::xds::ads::{self, AdsSettings, XdsVariant};
use dpumesh_controller::xds::{Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use support::ads::{anys, resource_version, FakeAds, Recorded, Sent};
use support::DpuProxy;

const TYPES: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
const MYSQL_V1: &str = "outbound|3306|v1|mysqldb.default.svc.cluster.local";
const MYSQL_LISTENER: &str = "10.96.12.5_3306";

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo")
}

/// The fake ADS server serving Bookinfo, a dpu-proxy, and the adapter between them.
struct Mesh {
    state: LocalState,
    ads: FakeAds,
    proxy: DpuProxy,
    /// (pod key, its sidecar node id)
    pods: Vec<(String, String)>,
    adapter: tokio::task::JoinHandle<()>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.adapter.abort();
    }
}

impl Mesh {
    async fn start(variant: XdsVariant) -> Mesh {
        let state = local::load(&fixture(), Some("node-1")).expect("fixture");
        let ads = FakeAds::new();
        let pods = ads.set_pods(&state);
        let xds_addr = ads.serve().await;
        let proxy = DpuProxy::start().await;
        let settings = AdsSettings {
            xds_addr,
            proxy_addr: proxy.mgmt_addr.clone(),
            istio_version: "1.24.0".into(),
            variant,
        };
        let adapter = tokio::spawn(ads::run(settings, state.inventory.clone()));
        Mesh {
            state,
            ads,
            proxy,
            pods,
            adapter,
        }
    }

    /// Every pod ACKed every type; no NACK.
    async fn synced(&self) -> Vec<Recorded> {
        let log = wait_for("ACKs of all four types from every pod", || {
            let log = self.ads.log();
            let done = self.pods.iter().all(|(_, id)| {
                TYPES.iter().all(|t| {
                    log.iter()
                        .any(|r| &r.node_id == id && r.type_url == *t && r.is_ack())
                })
            });
            done.then_some(log)
        })
        .await;
        assert!(log.iter().all(|r| !r.is_nack()), "{log:#?}");
        log
    }

    /// Serves `f(pod's resources)` as every pod's resources of `type_url`.
    fn set_all(&self, type_url: &str, f: impl Fn(Vec<(String, Any)>) -> Vec<(String, Any)>) {
        for (pod, id) in &self.pods {
            self.ads
                .set(id, type_url, f(anys(&self.state.proxies[pod], type_url)));
        }
    }

    /// The served config once `pred` holds for it.
    async fn config_where(&self, what: &str, pred: impl Fn(&NodeConfig) -> bool) -> NodeConfig {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let (_, Some(c)) = self.proxy.config().await {
                if pred(&c) {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "dpu-proxy never served a config with {what}; log: {:#?}",
                self.ads.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ratings cluster with another connect timeout.
fn ratings_timeout(list: Vec<(String, Any)>, seconds: i64) -> Vec<(String, Any)> {
    list.into_iter()
        .map(|(name, any)| {
            if name != RATINGS {
                return (name, any);
            }
            let Ok(Resource::Cluster(mut c)) = Resource::from_any(&any, CLUSTER_TYPE, &name) else {
                panic!("{name} decodes as a cluster");
            };
            c.connect_timeout = Some(PbDuration { seconds, nanos: 0 });
            (name, Resource::Cluster(c).to_any())
        })
        .collect()
}

fn connect_timeout_ms(c: &NodeConfig, cluster: &str) -> Option<u64> {
    c.clusters
        .iter()
        .find(|x| x.name == cluster)
        .map(|x| x.connect_timeout_ms)
}

/// The config without what differs by protocol and timing (versions).
fn content(mut c: NodeConfig) -> NodeConfig {
    c.version = 0;
    c.sources = BTreeMap::new();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_initial_sync_gives_the_same_node_config_as_sotw() {
    let delta = Mesh::start(XdsVariant::Delta).await;
    let sotw = Mesh::start(XdsVariant::Sotw).await;
    let log = delta.synced().await;
    let sotw_log = sotw.synced().await;
    assert!(log.iter().all(|r| r.delta), "{log:#?}");
    assert!(sotw_log.iter().all(|r| !r.delta), "{sotw_log:#?}");

    // CDS and LDS as wildcards (a first request naming nothing), EDS and RDS by name.
    for (_, id) in &delta.pods {
        let first = |t: &str| {
            log.iter()
                .find(|r| &r.node_id == id && r.type_url == t)
                .unwrap_or_else(|| panic!("{id} never requested {t}"))
                .clone()
        };
        for t in [CLUSTER_TYPE, LISTENER_TYPE] {
            let r = first(t);
            assert!(
                r.resource_names.is_empty() && r.response_nonce.is_empty(),
                "{r:?}"
            );
            assert!(r.initial_resource_versions.is_empty(), "{r:?}");
        }
        let eds = first(ENDPOINT_TYPE);
        assert!(
            eds.resource_names
                .contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_string()),
            "{eds:?}"
        );
        assert_eq!(first(ROUTE_TYPE).resource_names, ["9080"]);
    }

    let d = delta.proxy.wait_version(1).await;
    let s = sotw.proxy.wait_version(1).await;
    assert_eq!(d.clusters.len(), 9);
    assert_eq!(
        d.sources.keys().collect::<Vec<_>>(),
        s.sources.keys().collect::<Vec<_>>()
    );
    assert_eq!(content(d), content(s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_update_sends_only_the_changed_resource_and_removals_disappear() {
    let mesh = Mesh::start(XdsVariant::Delta).await;
    mesh.synced().await;
    let first = mesh.proxy.wait_version(1).await;
    assert_eq!(connect_timeout_ms(&first, RATINGS), Some(1000));

    // One cluster changes: only it is sent, and the node config follows.
    let before = mesh.ads.sent().len();
    mesh.set_all(CLUSTER_TYPE, |l| ratings_timeout(l, 3));
    let changed = mesh
        .config_where("ratings' connect timeout 3 s", |c| {
            connect_timeout_ms(c, RATINGS) == Some(3000)
        })
        .await;
    assert!(changed.version > first.version);
    assert_eq!(
        content(first.clone()).clusters.len(),
        changed.clusters.len()
    );
    let sent: Vec<Sent> = mesh.ads.sent()[before..].to_vec();
    assert_eq!(
        sent.len(),
        mesh.pods.len(),
        "one response per pod: {sent:#?}"
    );
    for s in &sent {
        assert_eq!(s.type_url, CLUSTER_TYPE, "{s:?}");
        assert_eq!(s.resources, [RATINGS], "{s:?}");
        assert!(s.removed.is_empty(), "{s:?}");
    }
    // ...and ACKed by nonce.
    wait_for("ACKs of the cluster update", || {
        let log = mesh.ads.log();
        sent.iter()
            .all(|s| {
                log.iter()
                    .any(|r| r.response_nonce == s.nonce && r.is_ack() && r.node_id == s.node_id)
            })
            .then_some(())
    })
    .await;

    // A listener removed: sent as removed_resources; its TCP route table goes.
    assert!(changed
        .tcp_route_tables
        .iter()
        .any(|t| t.name.contains("mysqldb")));
    let before = mesh.ads.sent().len();
    mesh.set_all(LISTENER_TYPE, |l| {
        l.into_iter().filter(|(n, _)| n != MYSQL_LISTENER).collect()
    });
    let no_listener = mesh
        .config_where("no mysqldb TCP route table", |c| {
            !c.tcp_route_tables
                .iter()
                .any(|t| t.name.contains("mysqldb"))
        })
        .await;
    let sent: Vec<Sent> = mesh.ads.sent()[before..].to_vec();
    assert!(!sent.is_empty());
    for s in &sent {
        assert_eq!(s.type_url, LISTENER_TYPE, "{s:?}");
        assert!(s.resources.is_empty(), "{s:?}");
        assert_eq!(s.removed, [MYSQL_LISTENER], "{s:?}");
    }

    // The cluster it used removed: gone from the node config, its EDS name unsubscribed.
    assert!(no_listener.clusters.iter().any(|c| c.name == MYSQL_V1));
    mesh.set_all(CLUSTER_TYPE, |l| {
        ratings_timeout(l, 3)
            .into_iter()
            .filter(|(n, _)| n != MYSQL_V1)
            .collect()
    });
    let no_cluster = mesh
        .config_where("no mysqldb v1 cluster", |c| {
            !c.clusters.iter().any(|x| x.name == MYSQL_V1)
        })
        .await;
    assert_eq!(no_cluster.clusters.len(), changed.clusters.len() - 1);
    assert_eq!(connect_timeout_ms(&no_cluster, RATINGS), Some(3000));
    wait_for("EDS unsubscribes from the removed cluster", || {
        let log = mesh.ads.log();
        mesh.pods
            .iter()
            .all(|(_, id)| {
                log.iter().any(|r| {
                    &r.node_id == id
                        && r.type_url == ENDPOINT_TYPE
                        && r.unsubscribe == [MYSQL_V1]
                        && r.resource_names.is_empty()
                })
            })
            .then_some(())
    })
    .await;
    assert!(mesh.ads.log().iter().all(|r| !r.is_nack()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nacks_a_bad_resource_and_keeps_the_last_good_config() {
    let mesh = Mesh::start(XdsVariant::Delta).await;
    mesh.synced().await;
    let good = mesh.proxy.wait_version(1).await;
    let good_version = mesh.proxy.config().await.0;

    // A route config that refers to a cluster nobody serves: NACKed, named.
    let (details_pod, details_id) = mesh.pods[1].clone();
    let mut broken = mesh.state.proxies[&details_pod].routes["9080"].clone();
    if let Some(Action::Route(a)) = broken.virtual_hosts[0].routes[0].action.as_mut() {
        a.cluster_specifier = Some(ClusterSpecifier::Cluster(
            "outbound|9080|v9|reviews.default.svc.cluster.local".into(),
        ));
    }
    mesh.ads.set(
        &details_id,
        ROUTE_TYPE,
        vec![("9080".into(), Resource::Route(broken).to_any())],
    );
    let nack = wait_for("a NACK of the broken route config", || {
        mesh.ads
            .log()
            .into_iter()
            .find(|r| r.node_id == details_id && r.type_url == ROUTE_TYPE && r.is_nack())
    })
    .await;
    let message = nack.error.clone().unwrap_or_default();
    assert!(
        message.contains(ROUTE_TYPE) && message.contains("\"9080\"") && message.contains("v9"),
        "{message}"
    );
    let sent = mesh.ads.sent();
    let answered = sent
        .iter()
        .find(|s| s.nonce == nack.response_nonce)
        .expect("the NACK names the response's nonce");
    assert_eq!(answered.resources, ["9080"]);
    assert_eq!(mesh.proxy.config().await.0, good_version);

    // A cluster that does not decode: NACKed with its name.
    let (_, ratings_id) = mesh.pods[4].clone();
    let mut clusters = anys(&mesh.state.proxies[&mesh.pods[4].0], CLUSTER_TYPE);
    clusters.push((
        "garbage".into(),
        Any {
            type_url: CLUSTER_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        },
    ));
    mesh.ads.set(&ratings_id, CLUSTER_TYPE, clusters);
    let nack = wait_for("a NACK of the undecodable cluster", || {
        mesh.ads
            .log()
            .into_iter()
            .find(|r| r.node_id == ratings_id && r.type_url == CLUSTER_TYPE && r.is_nack())
    })
    .await;
    let message = nack.error.clone().unwrap_or_default();
    assert!(
        message.contains("\"garbage\"") && message.contains("not a valid protobuf message"),
        "{message}"
    );
    let (version, config) = mesh.proxy.config().await;
    assert_eq!(
        version, good_version,
        "dpu-proxy keeps the last good config"
    );
    assert_eq!(config.map(content), Some(content(good.clone())));

    // The rejected state was not kept: the next good delta (only the changed
    // ratings cluster; the server does not resend what it sent) is accepted on
    // top of the last good state, and the node config changes.
    let before = mesh.ads.sent().len();
    mesh.set_all(CLUSTER_TYPE, |l| ratings_timeout(l, 4));
    let fixed = mesh
        .config_where("ratings' connect timeout 4 s", |c| {
            connect_timeout_ms(c, RATINGS) == Some(4000)
        })
        .await;
    assert!(fixed.version > good_version);
    let sent = mesh.ads.sent()[before..].to_vec();
    assert!(sent.iter().all(|s| s.resources == [RATINGS]), "{sent:#?}");
    // The details pod's rejected route stayed rejected: served routes are the good ones.
    assert_eq!(
        content(fixed).route_tables,
        content(good).route_tables,
        "the NACKed route config was not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_sends_initial_resource_versions_and_resumes() {
    let mesh = Mesh::start(XdsVariant::Delta).await;
    mesh.synced().await;
    let first = mesh.proxy.wait_version(1).await;
    // What each pod holds now, as the server versions it.
    let held: Vec<BTreeMap<String, String>> = mesh
        .pods
        .iter()
        .map(|(pod, _)| {
            anys(&mesh.state.proxies[pod], CLUSTER_TYPE)
                .iter()
                .map(|(n, a)| (n.clone(), resource_version(a)))
                .collect()
        })
        .collect();

    // The server goes away; a cluster changes meanwhile; the server comes back.
    mesh.ads.pause().await;
    let (log_mark, sent_mark) = (mesh.ads.log().len(), mesh.ads.sent().len());
    mesh.set_all(CLUSTER_TYPE, |l| ratings_timeout(l, 5));
    mesh.ads.resume();

    let resumed = mesh
        .config_where("ratings' connect timeout 5 s", |c| {
            connect_timeout_ms(c, RATINGS) == Some(5000)
        })
        .await;
    assert!(resumed.version > first.version);
    let log = mesh.ads.log()[log_mark..].to_vec();
    for ((_, id), held) in mesh.pods.iter().zip(&held) {
        let cds = log
            .iter()
            .find(|r| &r.node_id == id && r.type_url == CLUSTER_TYPE)
            .unwrap_or_else(|| panic!("{id}: no CDS request after the reconnect: {log:#?}"));
        assert!(cds.response_nonce.is_empty() && cds.resource_names.is_empty());
        assert_eq!(&cds.initial_resource_versions, held, "{id}");
        // EDS and RDS resume with their names and versions, without waiting for CDS.
        for t in [ENDPOINT_TYPE, ROUTE_TYPE] {
            let r = log
                .iter()
                .find(|r| &r.node_id == id && r.type_url == t)
                .unwrap_or_else(|| panic!("{id}: no {t} request after the reconnect"));
            assert!(!r.resource_names.is_empty(), "{r:?}");
            assert_eq!(
                r.initial_resource_versions.len(),
                r.resource_names.len(),
                "{r:?}"
            );
        }
    }
    // The server sent only what changed while the adapter was away.
    let sent = mesh.ads.sent()[sent_mark..].to_vec();
    for s in &sent {
        if s.type_url == CLUSTER_TYPE {
            assert_eq!(s.resources, [RATINGS], "{s:?}");
        } else {
            assert!(s.resources.is_empty() && s.removed.is_empty(), "{s:?}");
        }
    }
    assert!(mesh.ads.log().iter().all(|r| !r.is_nack()));
    assert_eq!(
        content(resumed).clusters.len(),
        content(first).clusters.len()
    );
}

//! The translator against a Bookinfo-shaped istiod resource set
//! (`tests/fixtures/bookinfo/`, read through the local-mode loader).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dpumesh_api::config::{
    EndpointHealth, HashKey, LbKind, NodeConfig, Protocol, RouteAction, StringMatch, TlsMode,
};
use dpumesh_controller::local;
use dpumesh_controller::translate::{synthetic_subset_label, translate};
use dpumesh_controller::xds::{ProxyResources, Resource, CLUSTER_TYPE, ROUTE_TYPE};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo")
}

fn bookinfo() -> NodeConfig {
    let config = local::build(&fixture(), Some("node-1")).unwrap_or_else(|e| panic!("{e}"));
    config.validate().unwrap_or_else(|e| panic!("{e}"));
    config
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn clusters_carry_destination_rule_policy() {
    let c = bookinfo();
    let names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(
        !names.contains(&"PassthroughCluster") && !names.contains(&"BlackHoleCluster"),
        "{names:?}"
    );
    assert_eq!(names.len(), 9, "{names:?}");
    let get = |n: &str| {
        c.clusters
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };

    let v1 = get("outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(v1.service, REVIEWS);
    assert_eq!(v1.subset.as_deref(), Some("v1"));
    assert_eq!(
        v1.subset_labels,
        BTreeMap::from([
            ("app".into(), "reviews".into()),
            ("version".into(), "v1".into())
        ])
    );
    assert_eq!(v1.lb_policy.kind, LbKind::LeastRequest);
    assert_eq!(v1.connection_pool.max_connections, 100);
    assert_eq!(v1.connection_pool.max_pending_requests, 10);
    assert_eq!(
        v1.connection_pool.max_requests, 0,
        "u32::MAX is istiod's unlimited"
    );
    assert_eq!(v1.connection_pool.max_requests_per_connection, 10);
    assert_eq!(v1.connection_pool.idle_timeout_ms, 600_000);
    let od = v1.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(
        (
            od.consecutive_5xx_errors,
            od.consecutive_gateway_errors,
            od.interval_ms,
            od.base_ejection_time_ms,
            od.max_ejection_percent
        ),
        (3, 2, 1000, 30_000, 50)
    );
    assert_eq!(v1.tls, TlsMode::IstioMutual);

    let v2 = get("outbound|9080|v2|reviews.default.svc.cluster.local");
    assert_eq!(
        v2.outlier_detection
            .as_ref()
            .map(|o| o.consecutive_gateway_errors),
        Some(0),
        "gateway errors are not enforced by default"
    );
    assert_eq!(v2.tls, TlsMode::Disable, "no transport socket = plaintext");
    assert_eq!(
        v2.connection_pool.max_connections, 1024,
        "Envoy's default circuit breaker"
    );

    let ratings = get("outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(ratings.lb_policy.kind, LbKind::ConsistentHash);
    assert_eq!(
        ratings.lb_policy.hash_key,
        Some(HashKey::Header("x-user".into()))
    );
    assert_eq!(ratings.connect_timeout_ms, 1000);

    let details = get("outbound|9080||details.default.svc.cluster.local");
    let lb = details.locality_lb.as_ref().expect("locality lb");
    assert!(lb.enabled);
    assert_eq!(lb.failover.len(), 1);
    assert_eq!(
        (lb.failover[0].from.as_str(), lb.failover[0].to.as_str()),
        ("eu-west", "eu-central")
    );

    // mysqldb's EDS carries no labels: the subset is recognised by membership.
    let mysql = get("outbound|3306|v1|mysqldb.default.svc.cluster.local");
    let key = synthetic_subset_label(3306, "v1");
    assert_eq!(
        mysql.subset_labels,
        BTreeMap::from([(key.clone(), "true".into())])
    );
    let svc = c
        .services
        .iter()
        .find(|s| s.hostname == "mysqldb.default.svc.cluster.local")
        .expect("mysqldb");
    let labelled: Vec<&str> = svc
        .endpoints
        .iter()
        .filter(|e| e.labels.contains_key(&key))
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(labelled, ["10.244.2.16"]);
}

#[test]
fn endpoints_have_locality_weight_health_labels() {
    let c = bookinfo();
    let reviews = c
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .expect("reviews");
    assert_eq!(reviews.vips, ["10.96.12.3"]);
    let ep = |a: &str| {
        reviews
            .endpoints
            .iter()
            .find(|e| e.address == a)
            .unwrap_or_else(|| panic!("no {a}"))
    };
    assert_eq!(reviews.endpoints.len(), 4);
    // Local pod: labels and identity from the inventory.
    let local = ep("10.244.1.13");
    assert_eq!(local.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(local.service_account, "bookinfo-reviews");
    assert_eq!(local.node, "node-1");
    assert_eq!(local.locality.zone, "eu-west-1a");
    // Remote: labels from istio metadata.
    let remote = ep("10.244.2.14");
    assert_eq!(remote.weight, 2);
    assert_eq!(remote.labels.get("version").map(String::as_str), Some("v3"));
    assert_eq!(remote.node, "");
    assert_eq!(ep("10.244.2.13").health, EndpointHealth::Draining);
}

#[test]
fn routes_carry_virtual_service_behaviour() {
    let c = bookinfo();
    let table = c
        .route_tables
        .iter()
        .find(|t| t.name == "9080")
        .expect("route table 9080");
    let hosts: Vec<&str> = table
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        !hosts.contains(&"allow_any"),
        "passthrough host dropped: {hosts:?}"
    );
    let vh = |n: &str| {
        table
            .virtual_hosts
            .iter()
            .find(|v| v.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };

    let reviews = vh("reviews.default.svc.cluster.local:9080");
    assert!(reviews.domains.contains(&"reviews:9080".to_string()));
    let jason = &reviews.routes[0];
    assert_eq!(jason.matches[0].headers[0].name, "end-user");
    assert_eq!(
        jason.matches[0].headers[0].value,
        Some(StringMatch::Exact("jason".into()))
    );
    assert_eq!(jason.timeout_ms, None, "0s = no timeout");
    let split = &reviews.routes[1];
    assert_eq!(
        split.matches[0].path,
        Some(StringMatch::Regex("/reviews/[0-9]+".into()))
    );
    assert_eq!(
        split.matches[0].method,
        Some(StringMatch::Exact("GET".into()))
    );
    let RouteAction::Forward(fwd) = &split.action else {
        panic!("forward expected")
    };
    let weights: Vec<(&str, u32)> = fwd
        .destinations
        .iter()
        .map(|d| (d.cluster.as_str(), d.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 80),
            ("outbound|9080|v2|reviews.default.svc.cluster.local", 10),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 10),
        ]
    );
    assert_eq!(
        fwd.destinations[2]
            .headers
            .response_set
            .get("x-reviews-version")
            .map(String::as_str),
        Some("v3")
    );
    assert_eq!(split.timeout_ms, Some(10_000));
    let retries = split.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout_ms, Some(3000));
    assert_eq!(
        retries.retry_on,
        ["5xx", "connect-failure", "retriable-status-codes"]
    );
    assert_eq!(retries.retriable_status_codes, [409]);
    let mirror = split.mirror.as_ref().expect("mirror");
    assert_eq!(
        (mirror.cluster.as_str(), mirror.percent),
        ("outbound|9080|v3|reviews.default.svc.cluster.local", 5.0)
    );
    assert_eq!(
        split.headers.request_set.get("x-mesh").map(String::as_str),
        Some("dpumesh")
    );
    assert_eq!(split.headers.response_remove, ["server"]);
    assert_eq!(reviews.routes[2].matches[0].query_params[0].name, "debug");

    let details = vh("details.default.svc.cluster.local:9080");
    let RouteAction::Forward(fwd) = &details.routes[0].action else {
        panic!("forward expected")
    };
    assert_eq!(
        fwd.rewrite.as_ref().and_then(|r| r.uri.as_deref()),
        Some("/details")
    );
    assert_eq!(details.routes[0].timeout_ms, Some(2000));
    assert_eq!(
        details.routes[0].matches[0].path,
        Some(StringMatch::Prefix("/v1/details".into()))
    );

    let ratings = vh("ratings.default.svc.cluster.local:9080");
    let abort = ratings.routes[0]
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!((abort.http_status, abort.percent), (503, 10.0));

    let legacy = vh("legacy");
    assert!(
        matches!(&legacy.routes[0].action, RouteAction::DirectResponse(d) if d.status == 403 && d.body == "debug is off")
    );
    assert!(
        matches!(&legacy.routes[1].action, RouteAction::Redirect(r) if r.code == 308 && r.uri.as_deref() == Some("/productpage"))
    );

    let productpage = vh("productpage.default.svc.cluster.local:9080");
    let r = productpage.routes[0]
        .retries
        .as_ref()
        .expect("istio default retries");
    assert_eq!(
        (r.attempts, r.retriable_status_codes.as_slice()),
        (2, &[503u16][..])
    );
}

#[test]
fn listeners_set_port_protocols_and_tables() {
    let c = bookinfo();
    for s in &c.services {
        for p in &s.ports {
            if p.port == 9080 {
                assert_eq!(p.route_table.as_deref(), Some("9080"), "{}", s.hostname);
                assert_eq!(p.effective_protocol(), Some(Protocol::Http));
            }
        }
    }
    let mysql = c
        .services
        .iter()
        .find(|s| s.hostname == "mysqldb.default.svc.cluster.local")
        .expect("mysqldb");
    let port = &mysql.ports[0];
    assert_eq!(port.effective_protocol(), Some(Protocol::Tcp));
    let table_name = port
        .tcp_route_table
        .as_deref()
        .expect("tcp route table (subset destination)");
    let table = c
        .tcp_route_tables
        .iter()
        .find(|t| t.name == table_name)
        .expect("tcp table");
    assert_eq!(
        table.routes[0].destinations[0].cluster,
        "outbound|3306|v1|mysqldb.default.svc.cluster.local"
    );
    assert_eq!(
        port.target_port, None,
        "endpoints listen on the service port"
    );
}

#[test]
fn route_tables_are_shared_and_a_differing_pod_gets_an_override() {
    let c = bookinfo();
    // 5 pods: 4 received the same RDS "9080", reviews-v2 another one.
    assert_eq!(
        c.route_tables.len(),
        2,
        "{:?}",
        c.route_tables.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    let overridden: Vec<(&str, &BTreeMap<String, String>)> = c
        .pods
        .iter()
        .filter(|p| !p.route_overrides.is_empty())
        .map(|p| (p.name.as_str(), &p.route_overrides))
        .collect();
    assert_eq!(overridden.len(), 1, "{overridden:?}");
    assert_eq!(overridden[0].0, "reviews-v2-b7dcd98fb-2hl8n");
    let variant = &overridden[0].1["9080"];
    assert!(variant.starts_with("9080-"), "{variant}");
    let table = c
        .route_tables
        .iter()
        .find(|t| &t.name == variant)
        .expect("variant table");
    let ratings = table
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with("ratings"))
        .expect("ratings");
    let delay = ratings.routes[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!((delay.fixed_delay_ms, delay.percent), (2000, 100.0));
}

/// Three pods with identical xDS share everything; the output size does not
/// depend on how many pods received the same config.
#[test]
fn identical_proxies_dedupe_to_one_table() {
    let state = local::load(&fixture(), None).expect("fixture");
    let common = state.proxies["default/productpage-v1-7d6cfb7dfd-x2x7k"].clone();
    let mut inventory = state.inventory.clone();
    inventory.pods.truncate(3);
    let proxies: BTreeMap<String, ProxyResources> = inventory
        .pods
        .iter()
        .map(|p| (p.key(), common.clone()))
        .collect();
    let config = translate(&inventory, &proxies).expect("translate");
    config.validate().expect("valid");
    assert_eq!(config.route_tables.len(), 1);
    assert!(config.pods.iter().all(|p| p.route_overrides.is_empty()));
    assert_eq!(config.clusters.len(), 9);
}

fn with_resource(
    state: &local::LocalState,
    pod: &str,
    r: Resource,
) -> BTreeMap<String, ProxyResources> {
    let mut proxies = state.proxies.clone();
    proxies.get_mut(pod).expect("pod").insert(r);
    proxies
}

#[test]
fn a_route_to_a_missing_cluster_is_an_error_naming_the_route_config() {
    let state = local::load(&fixture(), None).expect("fixture");
    let pod = "default/details-v1-5f4d584748-9lq2d";
    let mut rc = state.proxies[pod].routes["9080"].clone();
    if let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(a)) =
        rc.virtual_hosts[0].routes[0].action.as_mut()
    {
        a.cluster_specifier = Some(
            envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                "outbound|9080|v9|reviews.default.svc.cluster.local".into(),
            ),
        );
    }
    let proxies = with_resource(&state, pod, Resource::Route(rc));
    let err = translate(&state.inventory, &proxies).expect_err("must fail");
    assert_eq!(err.resource.type_url, ROUTE_TYPE);
    assert_eq!(err.resource.name, "9080");
    assert_eq!(err.pod.as_deref(), Some(pod));
    assert!(
        err.to_string().contains("outbound|9080|v9|reviews"),
        "{err}"
    );
}

#[test]
fn an_unusable_cluster_is_an_error_naming_it() {
    let state = local::load(&fixture(), None).expect("fixture");
    let pod = "default/details-v1-5f4d584748-9lq2d";
    let mut c =
        state.proxies[pod].clusters["outbound|9080||details.default.svc.cluster.local"].clone();
    c.lb_policy = 6; // CLUSTER_PROVIDED
    let proxies = with_resource(&state, pod, Resource::Cluster(c));
    let err = translate(&state.inventory, &proxies).expect_err("must fail");
    assert_eq!(err.resource.type_url, CLUSTER_TYPE);
    assert_eq!(
        err.resource.name,
        "outbound|9080||details.default.svc.cluster.local"
    );
}

#[test]
fn json_decoding_names_the_bad_resource() {
    let text = r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|80||a.default.svc.cluster.local", "connect_timeout": "ten seconds"}]}"#;
    let err = dpumesh_controller::xds::resource::parse_documents(text, "x.json")
        .expect_err("bad duration");
    assert_eq!(err.resource.type_url, CLUSTER_TYPE);
    assert_eq!(
        err.resource.name,
        "outbound|80||a.default.svc.cluster.local"
    );
    let text = r#"{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c", "no_such_field": 1}"#;
    let err = dpumesh_controller::xds::resource::parse_documents(text, "y.json")
        .expect_err("unknown field");
    assert!(err.to_string().contains("no_such_field"), "{err}");
}

/// `tests/fixtures/hbone/`: node-1's adapter with the controller's
/// `endpoints.yaml` and istiod's EDS markers (tlsMode, the HBONE form).
fn hbone_fixture() -> NodeConfig {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hbone");
    let config = local::build(&dir, Some("node-1")).unwrap_or_else(|e| panic!("{e}"));
    config.validate().unwrap_or_else(|e| panic!("{e}"));
    config
}

#[test]
fn endpoints_get_their_node_and_hbone_eligibility() {
    let c = hbone_fixture();
    let reviews = c
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .expect("reviews");
    let cluster = c
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
        .expect("cluster");
    assert_eq!(cluster.tls, TlsMode::IstioMutual);
    // (address, node, hbone, serviceAccount, dpu-proxy on node-1 tunnels to it)
    let got: Vec<(&str, &str, Option<bool>, &str, bool)> = reviews
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.as_str(),
                e.node.as_str(),
                e.hbone,
                e.service_account.as_str(),
                e.uses_hbone_from("node-1") && !e.service_account.is_empty(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // Local pod: our node, never tunnelled to.
            ("10.244.1.13", "node-1", None, "bookinfo-reviews", false),
            // Meshed pod of another dpumesh node (the controller says so).
            (
                "10.244.2.14",
                "node-2",
                Some(true),
                "bookinfo-reviews",
                true
            ),
            // No proxy on another node: plaintext, as Istio's auto-mTLS.
            ("10.244.2.20", "node-2", Some(false), "reviews-plain", false),
            // Sidecar (tlsMode istio) on a non-dpumesh node.
            ("10.244.3.5", "node-3", Some(true), "reviews-sidecar", true),
            // Ambient pod in istiod's HBONE form (internal address, tunnel: http).
            ("10.244.3.6", "node-3", Some(true), "reviews-ambient", true),
            // Sidecar whose node name nobody knows: hbone with an empty node.
            ("10.244.4.7", "", Some(true), "reviews-ext", true),
            // Sidecar without a known identity: nothing to verify, plaintext.
            ("10.244.5.8", "", None, "", false),
            // Unknown, no proxy: plaintext.
            ("10.244.5.9", "", None, "", false),
        ]
    );
    // The HBONE form's endpoint_id port is the endpoint's port (= service port).
    assert_eq!(reviews.ports[0].target_port.unwrap_or(9080), 9080);
    assert!(reviews.endpoints.iter().all(|e| e.ports.is_empty()));
}

#[test]
fn without_the_controllers_endpoints_only_istio_markers_count() {
    // The same xDS without endpoints.yaml (a --local-dir without it): remote
    // endpoints have no node and no identity, so nothing can be tunnelled to,
    // and the local pod still gets our node.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hbone");
    let dir = std::env::temp_dir().join(format!("dpumesh-hbone-{}", std::process::id()));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(dir.join("xds")).expect("mkdir");
    for f in [
        "node.yaml",
        "pods.yaml",
        "services.yaml",
        "xds/clusters.yaml",
        "xds/endpoints.yaml",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy fixture");
    }
    let c = local::build(&dir, Some("node-1")).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    let reviews = c
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .expect("reviews");
    for e in &reviews.endpoints {
        if e.address == "10.244.1.13" {
            assert_eq!((e.node.as_str(), e.hbone), ("node-1", None));
        } else {
            assert_eq!((e.node.as_str(), e.hbone), ("", None), "{}", e.address);
            assert!(!e.uses_hbone_from("node-1") || e.service_account.is_empty());
        }
    }
}

//! NodeConfig: fixtures validate (or fail with exactly the expected errors),
//! JSON and YAML round-trip, parse errors are clear, size is additive.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpumesh_api::config::{
    cluster_name, Cluster, ConnectionPool, Endpoint, EndpointHealth, ForwardAction, Interception,
    LbPolicy, Locality, NetworkMode, NodeConfig, NodeInfo, ParseError, Pod, Route, RouteAction,
    RouteTable, Service, ServicePort, TlsMode, VirtualHost, WeightedDestination, API_VERSION,
};

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(kind)
}

/// Every `*.yaml` of a fixture folder, sorted, so failures are reproducible.
fn yaml_files(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(fixtures(kind))
        .expect("fixture folder exists")
        .map(|e| e.expect("readable fixture folder").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> NodeConfig {
    let text = fs::read_to_string(path).expect("readable fixture");
    NodeConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn good_fixtures_validate() {
    let files = yaml_files("good");
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for required in ["minimal.yaml", "bookinfo.yaml"] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
    for path in files {
        let config = load(&path);
        if let Err(e) = config.validate() {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn good_fixtures_roundtrip_through_json_and_yaml() {
    for path in yaml_files("good") {
        let config = load(&path);

        let json = config.to_json_pretty();
        let from_json = NodeConfig::parse_json_validated(json.as_bytes())
            .unwrap_or_else(|e| panic!("{}: JSON roundtrip: {e}\n{json}", path.display()));
        assert_eq!(from_json, config, "{}: JSON roundtrip", path.display());
        let compact = NodeConfig::from_json(config.to_json().as_bytes()).expect("compact JSON");
        assert_eq!(
            compact,
            config,
            "{}: compact JSON roundtrip",
            path.display()
        );

        let yaml = config.to_yaml();
        let from_yaml = NodeConfig::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("{}: YAML roundtrip: {e}\n{yaml}", path.display()));
        assert_eq!(from_yaml, config, "{}: YAML roundtrip", path.display());

        // The two encodings describe the same document.
        let as_value: serde_json::Value = serde_json::from_str(&json).expect("JSON value");
        let yaml_value: serde_json::Value =
            serde_yaml::from_str(&yaml).expect("YAML as a JSON value");
        assert_eq!(yaml_value, as_value, "{}: JSON vs YAML", path.display());
    }
}

#[test]
fn bookinfo_fixture_has_what_it_claims() {
    let config = load(&fixtures("good").join("bookinfo.yaml"));
    let reviews_split: Vec<u32> = config
        .route_tables
        .iter()
        .flat_map(|t| &t.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .filter_map(|r| match &r.action {
            RouteAction::Forward(f) if f.destinations.len() == 3 => {
                Some(f.destinations.iter().map(|d| d.weight).collect())
            }
            _ => None,
        })
        .next()
        .expect("a three-way split");
    assert_eq!(reviews_split, vec![80, 10, 10]);
    let routes: Vec<&Route> = config
        .route_tables
        .iter()
        .flat_map(|t| &t.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .collect();
    assert!(routes.iter().any(|r| r.retries.is_some()));
    assert!(routes.iter().any(|r| r.timeout_ms.is_some()));
    assert!(routes.iter().any(|r| r.fault.is_some()));
    assert!(config
        .clusters
        .iter()
        .any(|c| c.outlier_detection.is_some()));
    assert!(config.pods.iter().any(|p| !p.route_overrides.is_empty()));
    assert!(!config.tcp_route_tables.is_empty());
    let actions: Vec<_> = config
        .inbound_policies
        .iter()
        .flat_map(|p| &p.authorization)
        .map(|a| a.action)
        .collect();
    use dpumesh_api::config::{AuthzAction, MtlsMode};
    assert!(actions.contains(&AuthzAction::Allow) && actions.contains(&AuthzAction::Deny));
    assert!(config
        .inbound_policies
        .iter()
        .any(|p| p.peer_authentication.mode == MtlsMode::Strict));
}

/// The expected errors of a bad fixture: one `<path>: <message>` per line;
/// blank lines and lines starting with `#` are ignored.
fn expected_errors(path: &Path) -> Vec<String> {
    let sidecar = path.with_extension("errors");
    let text =
        fs::read_to_string(&sidecar).unwrap_or_else(|e| panic!("{}: {e}", sidecar.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_fixtures_report_exactly_the_expected_errors() {
    let files = yaml_files("bad");
    assert!(files.len() >= 5, "too few bad fixtures: {files:?}");
    let mut failures = Vec::new();
    for path in files {
        let expected = expected_errors(&path);
        assert!(
            !expected.is_empty(),
            "{}: no expected errors",
            path.display()
        );
        let config = load(&path);
        let actual = match config.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.messages(),
        };
        // Validation errors also survive the trip through JSON unchanged.
        let via_json = NodeConfig::from_json(config.to_json().as_bytes())
            .expect("JSON of a parsed config")
            .validate()
            .err()
            .map(|e| e.messages())
            .unwrap_or_default();
        assert_eq!(via_json, actual, "{}: via JSON", path.display());
        if actual != expected {
            let missing: Vec<_> = expected.iter().filter(|e| !actual.contains(e)).collect();
            let unexpected: Vec<_> = actual.iter().filter(|a| !expected.contains(a)).collect();
            failures.push(format!(
                "{}:\n  missing: {missing:#?}\n  unexpected: {unexpected:#?}\n  actual (in order):\n{}",
                path.display(),
                actual.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn validation_errors_display_every_error() {
    let path = fixtures("bad").join("pods.yaml");
    let err = load(&path).validate().expect_err("bad fixture");
    let text = err.to_string();
    assert!(text.starts_with(&format!("invalid NodeConfig ({} errors)", err.0.len())));
    for line in expected_errors(&path) {
        assert!(text.contains(&line), "{line} not in {text}");
    }
    // The validated entry point refuses it with the same errors.
    let json = load(&path).to_json();
    match NodeConfig::parse_json_validated(json.as_bytes()) {
        Err(ParseError::Invalid(e)) => assert_eq!(e, err),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn malformed_json_names_line_and_column() {
    let err =
        NodeConfig::from_json(b"{\"apiVersion\": \"dpumesh.io/v1alpha1\",\n \"version\": 1,,}")
            .expect_err("malformed");
    let msg = err.to_string();
    assert!(msg.starts_with("not valid NodeConfig JSON: "), "{msg}");
    assert!(msg.contains("line 2 column"), "{msg}");
}

#[test]
fn malformed_yaml_names_line() {
    let err = NodeConfig::from_yaml("version: 1\nnode: [unclosed\n").expect_err("malformed");
    let msg = err.to_string();
    assert!(msg.starts_with("not valid NodeConfig YAML: "), "{msg}");
    assert!(msg.contains("line "), "{msg}");
}

#[test]
fn unknown_field_is_named() {
    let text = fs::read_to_string(fixtures("good").join("minimal.yaml")).expect("fixture");
    let typo = text.replace("    vfIndex: 0", "    vfIndex: 0\n    vfIdx: 1");
    assert_ne!(typo, text);
    let msg = NodeConfig::from_yaml(&typo)
        .expect_err("unknown field")
        .to_string();
    assert!(msg.contains("unknown field `vfIdx`"), "{msg}");
    assert!(msg.contains("pods[0]"), "{msg}");
    assert!(msg.contains("vfIndex"), "lists the expected fields: {msg}");

    let mut value: serde_json::Value =
        serde_json::from_str(&load(&fixtures("good").join("minimal.yaml")).to_json())
            .expect("JSON");
    value["node"]["podCIDR"] = "10.244.1.0/24".into();
    let msg = NodeConfig::from_json(value.to_string().as_bytes())
        .expect_err("unknown field")
        .to_string();
    assert!(msg.contains("unknown field `podCIDR`"), "{msg}");
    assert!(msg.contains("podCidr"), "lists the expected fields: {msg}");
}

#[test]
fn missing_required_field_is_named() {
    let text = fs::read_to_string(fixtures("good").join("minimal.yaml")).expect("fixture");
    let without = text.replace("    representor: pf0vf0\n", "");
    let msg = NodeConfig::from_yaml(&without)
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("missing field `representor`"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let text = fs::read_to_string(fixtures("good").join("minimal.yaml")).expect("fixture");
    let bad = text.replace("vfIndex: 0", "vfIndex: -1");
    let msg = NodeConfig::from_yaml(&bad)
        .expect_err("negative")
        .to_string();
    assert!(msg.contains("pods[0].vfIndex"), "{msg}");
}

#[test]
fn defaults_are_filled_in() {
    let config = load(&fixtures("good").join("minimal.yaml"));
    assert_eq!(config.api_version, API_VERSION);
    assert_eq!(config.node.trust_domain, "cluster.local");
    assert_eq!(config.node.dns_domain, "cluster.local");
    let pod = &config.pods[0];
    assert_eq!(pod.service_account, "default");
    assert!(pod.meshed);
    assert_eq!(
        pod.spiffe_id(&config.node.trust_domain),
        "spiffe://cluster.local/ns/default/sa/default"
    );
}

// ---------------------------------------------------------------------------
// Generated configs: size and speed.

/// A config with `pods` pods and `services` services, each service with one
/// HTTP port, a route table, a default and a subset cluster, two endpoints;
/// every pod has an inbound policy and one route override.
fn generated(pods: usize, services: usize) -> NodeConfig {
    let mut config = NodeConfig {
        api_version: API_VERSION.to_string(),
        version: 1,
        sources: BTreeMap::new(),
        node: NodeInfo {
            name: "node-1".into(),
            network_mode: NetworkMode::Overlay,
            pod_cidr: "10.244.0.0/16".into(),
            service_cidrs: vec!["10.96.0.0/16".into()],
            dpu_mgmt_addr: "192.168.100.2:15080".into(),
            trust_domain: "cluster.local".into(),
            dns_domain: "cluster.local".into(),
            locality: Locality::default(),
        },
        pods: Vec::new(),
        services: Vec::new(),
        clusters: Vec::new(),
        route_tables: Vec::new(),
        tcp_route_tables: Vec::new(),
        inbound_policies: Vec::new(),
        secrets: Vec::new(),
    };
    for s in 0..services {
        let host = format!("svc-{s}.ns-{}.svc.cluster.local", s % 10);
        let table = format!("svc-{s}-8080");
        config.services.push(Service {
            hostname: host.clone(),
            namespace: format!("ns-{}", s % 10),
            vips: vec![format!("10.96.{}.{}", s / 250, s % 250 + 1)],
            ports: vec![ServicePort {
                port: 8080,
                name: "http".into(),
                protocol: None,
                target_port: None,
                route_table: Some(table.clone()),
                tcp_route_table: None,
            }],
            endpoints: (0..2)
                .map(|e| Endpoint {
                    address: format!("10.245.{}.{}", s / 125, (s % 125) * 2 + e + 1),
                    ports: BTreeMap::new(),
                    node: "node-2".into(),
                    locality: Locality::default(),
                    weight: 1,
                    health: EndpointHealth::Healthy,
                    labels: BTreeMap::from([("version".into(), format!("v{}", e + 1))]),
                    service_account: "default".into(),
                    hbone: None,
                })
                .collect(),
        });
        for subset in [None, Some("v1")] {
            config.clusters.push(Cluster {
                name: cluster_name(8080, subset, &host),
                service: host.clone(),
                port: 8080,
                subset: subset.map(str::to_owned),
                subset_labels: subset
                    .map(|v| BTreeMap::from([("version".to_string(), v.to_string())]))
                    .unwrap_or_default(),
                lb_policy: LbPolicy::default(),
                locality_lb: None,
                connect_timeout_ms: 10_000,
                connection_pool: ConnectionPool::default(),
                outlier_detection: None,
                tls: TlsMode::IstioMutual,
                tls_origination: None,
            });
        }
        config.route_tables.push(RouteTable {
            name: table,
            virtual_hosts: vec![VirtualHost {
                name: format!("{host}:8080"),
                domains: vec![host.clone(), format!("{host}:8080")],
                routes: vec![Route {
                    name: "default".into(),
                    matches: Vec::new(),
                    action: RouteAction::Forward(ForwardAction {
                        destinations: vec![WeightedDestination {
                            cluster: cluster_name(8080, Some("v1"), &host),
                            weight: 1,
                            headers: Default::default(),
                        }],
                        rewrite: None,
                    }),
                    headers: Default::default(),
                    timeout_ms: Some(5_000),
                    retries: None,
                    fault: None,
                    mirror: None,
                    rate_limit: None,
                }],
            }],
        });
    }
    config
        .inbound_policies
        .push(dpumesh_api::config::InboundPolicy {
            name: "default".into(),
            peer_authentication: Default::default(),
            authorization: Vec::new(),
        });
    for p in 0..pods {
        let mut overrides = BTreeMap::new();
        if services > 0 {
            overrides.insert("8080".to_string(), format!("svc-{}-8080", p % services));
        }
        config.pods.push(Pod {
            uid: format!("00000000-0000-4000-8000-{p:012}"),
            name: format!("pod-{p}"),
            namespace: format!("ns-{}", p % 10),
            service_account: "default".into(),
            labels: BTreeMap::from([("app".into(), format!("app-{p}"))]),
            ips: vec![format!("10.244.{}.{}", p / 250, p % 250 + 2)],
            mac: format!("02:00:00:00:{:02x}:{:02x}", p / 256, p % 256),
            vf_index: p as u32,
            representor: format!("pf0vf{p}"),
            spiffe_id: String::new(),
            meshed: true,
            interception: Interception::default(),
            inbound_policy: Some("default".into()),
            route_overrides: overrides,
            rate_limit: None,
        });
    }
    config
}

#[test]
fn generated_configs_are_valid() {
    for (pods, services) in [(0, 0), (1, 1), (10, 50), (200, 100)] {
        let config = generated(pods, services);
        if let Err(e) = config.validate() {
            panic!("{pods} pods × {services} services: {e}");
        }
    }
}

/// Shared parts are stored once: the bytes a pod adds do not depend on how
/// many services there are, and the bytes a service adds do not depend on
/// how many pods there are. With per-pod copies of the service config
/// (pods × services) the per-pod cost would grow tenfold below.
#[test]
fn size_grows_with_pods_plus_services_not_their_product() {
    let len = |pods, services| generated(pods, services).to_json().len() as f64;

    let per_pod_few_services = (len(200, 10) - len(100, 10)) / 100.0;
    let per_pod_many_services = (len(200, 100) - len(100, 100)) / 100.0;
    let per_service_few_pods = (len(10, 200) - len(10, 100)) / 100.0;
    let per_service_many_pods = (len(100, 200) - len(100, 100)) / 100.0;

    // Names grow by a digit or so between the sizes; allow 10%.
    let close = |a: f64, b: f64| (a - b).abs() <= 0.1 * a.max(b);
    assert!(
        close(per_pod_few_services, per_pod_many_services),
        "per-pod bytes {per_pod_few_services} with 10 services vs {per_pod_many_services} with 100"
    );
    assert!(
        close(per_service_few_pods, per_service_many_pods),
        "per-service bytes {per_service_few_pods} with 10 pods vs {per_service_many_pods} with 100"
    );

    // And overall: the size is (almost exactly) a + b·pods + c·services.
    let base = len(0, 0);
    let predicted = base + 200.0 * per_pod_many_services + 1000.0 * per_service_many_pods;
    let actual = len(200, 1000);
    assert!(
        close(actual - base, predicted - base),
        "200 pods × 1000 services: {actual} bytes, linear prediction {predicted}"
    );
}

/// Validation runs on every push; the brief's budget is well under 100 ms for
/// 200 pods × 5000 services in a release build. Test builds are slower and the
/// machine is shared, so this checks a generous bound and prints the time.
#[test]
fn validating_a_large_config_is_fast() {
    let config = generated(200, 5000);
    config.validate().expect("valid");
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        config.validate().expect("valid");
        best = best.min(start.elapsed());
    }
    eprintln!(
        "validate: 200 pods × 5000 services ({} clusters, {} route tables, {} bytes of JSON) in {best:?}",
        config.clusters.len(),
        config.route_tables.len(),
        config.to_json().len()
    );
    assert!(best < Duration::from_millis(100), "took {best:?}");
}

/// Maps whose keys are data (label names, ports, header names), not field names.
const DATA_MAPS: &[&str] = &[
    "sources",
    "labels",
    "routeOverrides",
    "portModes",
    "ports",
    "subsetLabels",
    "sourceLabels",
    "requestSet",
    "requestAdd",
    "responseSet",
    "responseAdd",
];

fn field_names(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                out.insert(key.clone());
                if !(DATA_MAPS.contains(&key.as_str()) && child.is_object()) {
                    field_names(child, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| field_names(v, out)),
        _ => {}
    }
}

/// Every field name used by any fixture (with defaults written out) is
/// documented in docs/config-reference.md.
#[test]
fn reference_doc_names_every_field() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-reference.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/config-reference.md");
    let mut names = std::collections::BTreeSet::new();
    for path in yaml_files("good").into_iter().chain(yaml_files("bad")) {
        let json = load(&path).to_json();
        field_names(&serde_json::from_str(&json).expect("JSON"), &mut names);
    }
    assert!(names.len() > 80, "too few field names seen: {names:?}");
    let undocumented: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in the reference: {undocumented:?}"
    );
}

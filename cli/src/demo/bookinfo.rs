//! The demo's application and policies: a bookinfo-like app on two nodes, and
//! the adapter's local directory for it (inventory + xDS resources as istiod
//! would serve them), generated with the pods' real addresses.
//!
//! Policies (the VirtualServices / DestinationRules of the demo):
//! * reviews: canary split v1 / v2 / v3 by weight ([`REVIEWS_SPLIT`]);
//! * details: fault injection, an abort ([`DETAILS_ABORT_PCT`] % → 503) and a
//!   delay ([`DETAILS_DELAY_PCT`] % → [`DETAILS_DELAY_MS`] ms);
//! * ratings: retries on 5xx ([`RATINGS_RETRIES`]) and outlier detection
//!   ([`OUTLIER_CONSECUTIVE_5XX`] consecutive 5xx → ejected for
//!   [`OUTLIER_EJECTION_S`] s); one of its two replicas fails every request.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::app::Role;

pub const NAMESPACE: &str = "default";
pub const PORT: u16 = 9080;
pub const REVIEWS_SPLIT: [(&str, u32); 3] = [("v1", 50), ("v2", 30), ("v3", 20)];
pub const DETAILS_ABORT_PCT: u32 = 10;
pub const DETAILS_DELAY_PCT: u32 = 20;
pub const DETAILS_DELAY_MS: u32 = 100;
pub const RATINGS_RETRIES: u32 = 2;
pub const OUTLIER_CONSECUTIVE_5XX: u32 = 3;
pub const OUTLIER_EJECTION_S: u32 = 30;

/// A service of the app: name and ClusterIP.
pub const SERVICES: [(&str, Ipv4Addr); 4] = [
    ("productpage", Ipv4Addr::new(10, 96, 12, 1)),
    ("details", Ipv4Addr::new(10, 96, 12, 2)),
    ("reviews", Ipv4Addr::new(10, 96, 12, 3)),
    ("ratings", Ipv4Addr::new(10, 96, 12, 4)),
];

/// One pod to create: where, what it runs.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub name: &'static str,
    /// Simulator node index (1-based).
    pub node: usize,
    pub app: &'static str,
    pub version: &'static str,
    /// `None`: no server (the traffic client).
    pub role: Option<Role>,
    pub fail_rate: f64,
}

/// The pods, spread so that traffic crosses nodes: productpage (node 1) →
/// reviews v2/v3 (node 2) → ratings (both nodes).
pub fn plan() -> Vec<PodPlan> {
    let p = |name, node, app, version, role, fail_rate| PodPlan {
        name,
        node,
        app,
        version,
        role,
        fail_rate,
    };
    vec![
        p("client", 1, "client", "v1", None, 0.0),
        p(
            "productpage-v1",
            1,
            "productpage",
            "v1",
            Some(Role::Productpage),
            0.0,
        ),
        p("details-v1", 1, "details", "v1", Some(Role::Details), 0.0),
        p("reviews-v1", 1, "reviews", "v1", Some(Role::Reviews), 0.0),
        p("ratings-v1-a", 1, "ratings", "v1", Some(Role::Ratings), 0.0),
        p("reviews-v2", 2, "reviews", "v2", Some(Role::Reviews), 0.0),
        p("reviews-v3", 2, "reviews", "v3", Some(Role::Reviews), 0.0),
        // The broken replica: every answer is a 503.
        p("ratings-v1-b", 2, "ratings", "v1", Some(Role::Ratings), 1.0),
    ]
}

/// A pod once the CNI gave it its network.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub plan: PodPlan,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub vf_index: usize,
    pub representor: String,
}

pub fn fqdn(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

pub fn vip(service: &str) -> Option<SocketAddr> {
    SERVICES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, ip)| SocketAddr::from((*ip, PORT)))
}

fn cluster(service: &str, subset: &str) -> String {
    format!("outbound|{PORT}|{subset}|{}", fqdn(service))
}

fn service_account(app: &str) -> String {
    format!("bookinfo-{app}")
}

/// `node.yaml`: the node the adapter serves.
pub fn node_yaml(node_name: &str, pod_cidr: &str, dpu_mgmt_addr: &str) -> Value {
    json!({
        "name": node_name,
        "networkMode": "underlay",
        "podCidr": pod_cidr,
        "serviceCidrs": ["10.96.0.0/16"],
        "dpuMgmtAddr": dpu_mgmt_addr,
    })
}

/// `pods.yaml`: the node's pods as the CNI registered them.
pub fn pods_yaml(pods: &[&PodInfo]) -> Value {
    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "uid": p.uid,
                "name": p.plan.name,
                "namespace": NAMESPACE,
                "serviceAccount": service_account(p.plan.app),
                "labels": {"app": p.plan.app, "version": p.plan.version},
                "ips": [p.ip.to_string()],
                "mac": p.mac,
                "vfIndex": p.vf_index,
                "representor": p.representor,
                "meshed": true,
            })
        })
        .collect();
    json!({ "pods": pods })
}

/// `services.yaml`: the Kubernetes Services.
pub fn services_yaml() -> Value {
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|(name, ip)| {
            json!({
                "hostname": fqdn(name),
                "namespace": NAMESPACE,
                "vips": [ip.to_string()],
                "ports": [{"port": PORT, "name": "http"}],
            })
        })
        .collect();
    json!({ "services": services })
}

/// `xds/*.json`: CDS, EDS, LDS, RDS as istiod would serve them to every pod.
pub fn xds(pods: &[PodInfo]) -> Vec<(&'static str, Value)> {
    let eds = |name: &str| json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name});
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let mut subsets: Vec<(&str, &str)> = SERVICES.iter().map(|(s, _)| (*s, "")).collect();
    subsets.extend(REVIEWS_SPLIT.iter().map(|(v, _)| ("reviews", *v)));
    for (service, subset) in subsets {
        let name = cluster(service, subset);
        let mut c = json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "EDS",
            "eds_cluster_config": eds(&name),
            "connect_timeout": "1s",
            "metadata": {"filter_metadata": {"istio": {"services": [
                {"host": fqdn(service), "name": service, "namespace": NAMESPACE}
            ]}}},
        });
        if service == "ratings" {
            c["outlier_detection"] = json!({
                "consecutive_5xx": OUTLIER_CONSECUTIVE_5XX,
                "interval": "1s",
                "base_ejection_time": format!("{OUTLIER_EJECTION_S}s"),
                "max_ejection_percent": 50,
            });
        }
        clusters.push(c);
        let lb_endpoints: Vec<Value> = pods
            .iter()
            .filter(|p| p.plan.app == service && (subset.is_empty() || p.plan.version == subset))
            .map(|p| {
                json!({
                    "endpoint": {"address": {"socket_address": {
                        "address": p.ip.to_string(), "port_value": PORT}}},
                    "health_status": "HEALTHY",
                    "metadata": {"filter_metadata": {"istio": {"labels": {
                        "app": p.plan.app, "version": p.plan.version}}}},
                })
            })
            .collect();
        endpoints.push(json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": lb_endpoints}],
        }));
    }

    let listener = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": format!("0.0.0.0_{PORT}"),
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": PORT}},
        "traffic_direction": "OUTBOUND",
        "bind_to_port": false,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("outbound_0.0.0.0_{PORT}"),
                "rds": {"route_config_name": PORT.to_string(),
                        "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [
                    {"name": "envoy.filters.http.fault", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    });

    let pct = |n: u32| json!({"numerator": n, "denominator": "HUNDRED"});
    let vhost = |service: &str, routes: Value| {
        let ip = vip(service).map(|a| a.ip().to_string()).unwrap_or_default();
        json!({
            "name": format!("{}:{PORT}", fqdn(service)),
            "domains": [fqdn(service), service, format!("{service}:{PORT}"), ip, format!("{ip}:{PORT}")],
            "routes": routes,
        })
    };
    let weighted: Vec<Value> = REVIEWS_SPLIT
        .iter()
        .map(|(v, w)| json!({"name": cluster("reviews", v), "weight": w}))
        .collect();
    let routes = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": PORT.to_string(),
        "validate_clusters": false,
        "virtual_hosts": [
            vhost("productpage", json!([{"name": "default", "match": {"prefix": "/"},
                "route": {"cluster": cluster("productpage", ""), "timeout": "15s"}}])),
            vhost("details", json!([{"name": "fault", "match": {"prefix": "/"},
                "route": {"cluster": cluster("details", ""), "timeout": "5s"},
                "typed_per_filter_config": {"envoy.filters.http.fault": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": pct(DETAILS_ABORT_PCT)},
                    "delay": {"fixed_delay": format!("{:.3}s", f64::from(DETAILS_DELAY_MS) / 1000.0),
                              "percentage": pct(DETAILS_DELAY_PCT)},
                }}}])),
            vhost("reviews", json!([{"name": "canary", "match": {"prefix": "/"},
                "route": {"weighted_clusters": {"clusters": weighted}, "timeout": "10s"}}])),
            vhost("ratings", json!([{"name": "retry", "match": {"prefix": "/"},
                "route": {"cluster": cluster("ratings", ""), "timeout": "5s",
                          "retry_policy": {"retry_on": "5xx", "num_retries": RATINGS_RETRIES}}}])),
        ],
    });

    let wrap = |resources: Vec<Value>| json!({ "resources": resources });
    vec![
        ("clusters.json", wrap(clusters)),
        ("endpoints.json", wrap(endpoints)),
        ("listeners.json", wrap(vec![listener])),
        ("routes.json", wrap(vec![routes])),
    ]
}

/// Writes the adapter's local directory for one node.
pub fn write_local_dir(
    dir: &Path,
    node: Value,
    local_pods: &[&PodInfo],
    all_pods: &[PodInfo],
) -> Result<()> {
    let xds_dir = dir.join("xds");
    std::fs::create_dir_all(&xds_dir).with_context(|| format!("creating {}", xds_dir.display()))?;
    let write = |path: &Path, v: &Value| -> Result<()> {
        let text = serde_json::to_string_pretty(v).context("encoding JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    };
    // JSON is YAML: the inventory files are written in its flow style.
    write(&dir.join("node.yaml"), &node)?;
    write(&dir.join("pods.yaml"), &pods_yaml(local_pods))?;
    write(&dir.join("services.yaml"), &services_yaml())?;
    for (name, v) in xds(all_pods) {
        write(&xds_dir.join(name), &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<PodInfo> {
        plan()
            .into_iter()
            .enumerate()
            .map(|(i, plan)| PodInfo {
                uid: format!("uid-{i}"),
                ip: Ipv4Addr::new(10, 244, plan.node as u8, 2 + i as u8),
                mac: format!("02:64:6d:0{}:00:0{i}", plan.node),
                vf_index: i,
                representor: format!("pf0vf{i}"),
                plan,
            })
            .collect()
    }

    #[test]
    fn the_split_adds_up_and_every_cluster_has_endpoints() {
        assert_eq!(REVIEWS_SPLIT.iter().map(|(_, w)| w).sum::<u32>(), 100);
        let x = xds(&pods());
        let eds = &x[1].1["resources"];
        for cla in eds.as_array().unwrap() {
            assert!(
                !cla["endpoints"][0]["lb_endpoints"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "{cla}"
            );
        }
        assert_eq!(x[0].1["resources"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn pods_spread_over_both_nodes() {
        let p = plan();
        assert!(p.iter().any(|p| p.node == 1) && p.iter().any(|p| p.node == 2));
        let ratings: Vec<_> = p.iter().filter(|p| p.app == "ratings").collect();
        assert_eq!(ratings.len(), 2);
        assert!(ratings.iter().any(|p| p.fail_rate == 1.0));
        assert!(ratings.iter().any(|p| p.fail_rate == 0.0));
    }
}

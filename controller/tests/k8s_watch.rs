//! The controller binary against a scripted Kubernetes API server: the initial
//! lists become per-node inventories; adds, modifies and deletes arrive over the
//! watch; a dropped watch resumes from the last resourceVersion (no relist); a
//! watch from a compacted resourceVersion gets 410 Gone and the controller lists
//! again (and so notices a deletion it never saw as an event).

mod k8s_support;

use std::path::Path;

use dpumesh_api::config::NetworkMode;
use dpumesh_controller::inventory::Inventory;
use k8s_support::{
    free_port, next, wait_for, watch_node, ApiServer, Controller, NAMESPACES, NODES, PODS,
    SERVICES, SLICES,
};
use serde_json::{json, Value};

fn node(name: &str, cidr: &str, annotations: Value) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-{name}"),
            "labels": {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": format!("eu-{name}")},
            "annotations": annotations},
           "spec": {"podCIDR": cidr}})
}

fn pod(name: &str, ns: &str, node: &str, ip: &str, vf: Option<&str>) -> Value {
    let mut annotations = json!({});
    if let Some(vf) = vf {
        // Each VF has its own MAC (pods of one node may not share one).
        annotations = json!({"dpumesh.io/vf-index": vf, "dpumesh.io/mac": format!("02:64:6d:01:00:{vf:0>2}")});
    }
    json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
            "labels": {"app": name.split('-').next().unwrap_or(name), "version": "v1"},
            "annotations": annotations},
           "spec": {"nodeName": node, "serviceAccountName": format!("sa-{name}"),
                    "containers": [{"name": "app", "image": "busybox"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn service(name: &str, vip: &str, ports: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-svc-{name}")},
           "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ports": ports}})
}

fn load(out: &Path, node: &str) -> Option<Inventory> {
    Inventory::load(&out.join(node), Some(node)).ok()
}

fn pod_names(out: &Path, node: &str) -> Vec<String> {
    load(out, node)
        .map(|i| i.pods.iter().map(|p| p.key()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_lists_resumes_and_relists() {
    let server = ApiServer::start().await;
    server.batch(|b| {
        b.apply(NAMESPACES, json!({"metadata": {"name": "default"}}));
        b.apply(NAMESPACES, json!({"metadata": {"name": "legacy", "labels": {"istio-injection": "disabled"}}}));
        b.apply(NODES, node("node-1", "10.244.1.0/24", json!({})));
        b.apply(NODES, node("node-2", "10.244.2.0/24",
            json!({"dpumesh.io/network-mode": "overlay", "dpumesh.io/dpu-mgmt-addr": "192.168.100.6:15080"})));
        b.apply(PODS, pod("reviews-v1", "default", "node-1", "10.244.1.5", Some("1")));
        b.apply(PODS, pod("productpage-v1", "default", "node-2", "10.244.2.7", Some("3")));
        b.apply(PODS, pod("old-v1", "legacy", "node-2", "10.244.2.8", Some("4")));
        // Not (yet) on a VF, not scheduled, a bad annotation: left out.
        b.apply(PODS, pod("novf-v1", "default", "node-1", "10.244.1.9", None));
        b.apply(PODS, pod("pending-v1", "default", "", "", Some("5")));
        b.apply(PODS, pod("bad-v1", "default", "node-1", "10.244.1.10", Some("x")));
        b.apply(SERVICES, service("reviews", "10.96.0.10",
            json!([{"name": "http", "port": 9080, "protocol": "TCP", "targetPort": 9080}])));
        b.apply(SERVICES, service("db", "10.96.0.11",
            json!([{"name": "db", "port": 5432, "appProtocol": "tcp", "targetPort": "pg"}])));
        b.apply(SLICES, json!({"metadata": {"name": "reviews-abc", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node-1",
                           "targetRef": {"kind": "Pod", "name": "reviews-v1", "namespace": "default"}}],
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]}));
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let kubeconfig = server.kubeconfig(tmp.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let _controller = Controller::start(
        &kubeconfig,
        &out,
        &["--leader-elect=false", "--grpc-addr", &grpc],
    );

    // Initial lists → one directory per node, in the adapter's format.
    wait_for("node-1 and node-2 inventories", || {
        load(&out, "node-1").is_some() && load(&out, "node-2").is_some()
    })
    .await;
    let n1 = load(&out, "node-1").expect("node-1");
    assert_eq!(n1.node.pod_cidr, "10.244.1.0/24");
    assert_eq!(n1.node.network_mode, NetworkMode::Underlay);
    assert_eq!(n1.node.service_cidrs, vec!["10.96.0.0/16".to_string()]);
    assert_eq!(n1.node.dpu_mgmt_addr, "192.168.100.2:15080");
    assert_eq!(n1.node.locality.zone, "eu-node-1");
    assert_eq!(pod_names(&out, "node-1"), vec!["default/reviews-v1"]);
    let reviews = &n1.pods[0];
    assert_eq!(reviews.vf_index, 1);
    assert_eq!(reviews.representor, "pf0vf1");
    assert_eq!(reviews.mac, "02:64:6d:01:00:01");
    assert_eq!(reviews.ips, vec!["10.244.1.5".to_string()]);
    assert_eq!(reviews.service_account, "sa-reviews-v1");
    assert_eq!(
        reviews.spiffe_id,
        "spiffe://cluster.local/ns/default/sa/sa-reviews-v1"
    );
    assert_eq!(
        reviews.labels.get("app").map(String::as_str),
        Some("reviews")
    );
    assert!(reviews.meshed);
    let hosts: Vec<&str> = n1.services.iter().map(|s| s.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        vec![
            "db.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    let svc = &n1.services[1];
    assert_eq!(svc.vips, vec!["10.96.0.10".to_string()]);
    assert_eq!(svc.ports[0].port, 9080);
    assert_eq!(svc.ports[0].target_port, Some(9080));
    assert_eq!(
        svc.ports[0].protocol,
        Some(dpumesh_api::config::Protocol::Http)
    );
    assert_eq!(
        n1.services[0].ports[0].protocol,
        Some(dpumesh_api::config::Protocol::Tcp)
    );
    assert_eq!(
        n1.services[0].ports[0].target_port, None,
        "named targetPort"
    );
    let endpoints =
        std::fs::read_to_string(out.join("node-1/endpoints.yaml")).expect("endpoints.yaml");
    assert!(
        endpoints.contains("10.244.1.5") && endpoints.contains("pod: default/reviews-v1"),
        "{endpoints}"
    );

    let n2 = load(&out, "node-2").expect("node-2");
    assert_eq!(n2.node.network_mode, NetworkMode::Overlay);
    assert_eq!(n2.node.dpu_mgmt_addr, "192.168.100.6:15080");
    assert_eq!(
        pod_names(&out, "node-2"),
        vec!["default/productpage-v1", "legacy/old-v1"]
    );
    assert!(
        !n2.pods[1].meshed,
        "namespace with istio-injection=disabled"
    );

    // The stream serves the same text as the files.
    let mut stream = watch_node(&grpc, "node-1").await.expect("WatchNode");
    let first = next(&mut stream).await.expect("first inventory");
    let file = |f: &str| std::fs::read_to_string(out.join("node-1").join(f)).expect("file");
    assert_eq!(first.node, "node-1");
    assert_eq!(first.node_yaml, file("node.yaml"));
    assert_eq!(first.pods_yaml, file("pods.yaml"));
    assert_eq!(first.services_yaml, file("services.yaml"));
    assert_eq!(first.endpoints_yaml, file("endpoints.yaml"));
    let status = watch_node(&grpc, "").await.expect_err("empty node");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Watch: add, modify, delete.
    server.apply(
        PODS,
        pod("reviews-v2", "default", "node-1", "10.244.1.6", Some("2")),
    );
    server.apply(
        SERVICES,
        service(
            "reviews",
            "10.96.0.10",
            json!([
        {"name": "http", "port": 9080, "targetPort": 9080},
        {"name": "tls-secure", "port": 9443, "targetPort": 9443}]),
        ),
    );
    wait_for("reviews-v2 and the new port", || {
        pod_names(&out, "node-1") == ["default/reviews-v1", "default/reviews-v2"]
            && load(&out, "node-1").is_some_and(|i| i.services[1].ports.len() == 2)
    })
    .await;
    // The stream sends newer generations until it has both changes.
    let mut last = first.generation;
    loop {
        let m = next(&mut stream).await.expect("an update");
        assert!(m.generation > last, "generations increase");
        last = m.generation;
        if m.pods_yaml.contains("name: reviews-v2") && m.services_yaml.contains("port: 9443") {
            break;
        }
    }
    server.delete(PODS, "default/reviews-v1");
    wait_for("reviews-v1 deleted", || {
        pod_names(&out, "node-1") == ["default/reviews-v2"]
    })
    .await;
    assert_eq!(
        server.lists(PODS),
        1,
        "so far one list: {:?}",
        server.requests()
    );

    // A dropped connection: the watch resumes from the last resourceVersion and
    // gets the event made while it was down from the server's log; no relist.
    let rv_before = server.batch(|b| {
        let rv = b.resource_version();
        b.drop_watches(true);
        b.apply(
            PODS,
            pod("ratings-v1", "default", "node-2", "10.244.2.9", Some("5")),
        );
        rv
    });
    wait_for("ratings-v1 after the resume", || {
        pod_names(&out, "node-2").contains(&"default/ratings-v1".to_string())
    })
    .await;
    assert_eq!(
        server.lists(PODS),
        1,
        "resumed, not relisted: {:?}",
        server.watches(PODS)
    );
    let resumed = server.watches(PODS);
    assert!(resumed.len() >= 2, "{resumed:?}");
    assert!(
        resumed
            .iter()
            .skip(1)
            .any(|w| w.contains(&format!("resourceVersion={rv_before}&"))
                || w.ends_with(&format!("resourceVersion={rv_before}"))),
        "a watch resumed from resourceVersion {rv_before}: {resumed:?}"
    );

    // 410 Gone: a deletion while the watch is down, then the log is compacted;
    // the resumed watch gets 410, the controller lists again and drops the pod.
    server.batch(|b| {
        b.drop_watches(false);
        b.delete(PODS, "default/reviews-v2");
        b.apply(
            PODS,
            pod("details-v1", "default", "node-1", "10.244.1.11", Some("6")),
        );
        b.compact();
    });
    wait_for("relist after 410", || {
        pod_names(&out, "node-1") == ["default/details-v1"]
    })
    .await;
    assert!(
        server.lists(PODS) >= 2,
        "relisted after 410: {:?}",
        server.requests()
    );

    // A node goes away: its directory goes away.
    server.delete(NODES, "node-2");
    wait_for("node-2 directory removed", || !out.join("node-2").exists()).await;
    assert!(load(&out, "node-1").is_some());
}

//! The adapter with `--inventory-addr`: the real controller binary (against the
//! scripted Kubernetes API server) streams node-1's inventory; the real adapter
//! binary (local mode, Bookinfo xDS directory without inventory files) translates
//! it and pushes to the real dpu-proxy binary. A pod added through the API server
//! shows up in dpu-proxy's config, a deleted one goes; when the controller is
//! gone the proxy keeps the last config, and the adapter reconnects to a new one.

mod k8s_support;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_api::NodeConfig;
use dpumesh_controller::local;
use dpumesh_testkit::copy_dir;
use k8s_support::{free_port, ApiServer, Controller, NAMESPACES, NODES, PODS, SERVICES, SLICES};
use serde_json::{json, Value};
use support::ads::FakeAds;
use support::{workspace_binary, DpuProxy, Reaped};

fn pod(name: &str, app: &str, ip: &str, vf: u32) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": app, "version": "v1"},
            "annotations": {"dpumesh.io/vf-index": vf.to_string(),
                            "dpumesh.io/mac": format!("02:64:6d:01:00:{vf:02x}")}},
           "spec": {"nodeName": "node-1", "serviceAccountName": format!("bookinfo-{app}"),
                    "containers": [{"name": "app", "image": "busybox"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn service(name: &str, vip: &str, port: u16, port_name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-svc-{name}")},
           "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                    "ports": [{"name": port_name, "port": port, "protocol": "TCP", "targetPort": port}]}})
}

fn pod_names(c: &NodeConfig) -> Vec<String> {
    let mut names: Vec<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

/// Waits until dpu-proxy serves a config whose pods are `want` (sorted).
async fn wait_pods(proxy: &DpuProxy, adapter: &mut Reaped, want: &[&str]) -> (u64, NodeConfig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (v, c) = proxy.config().await;
        if let Some(c) = c {
            if pod_names(&c) == want {
                return (v, c);
            }
        }
        if let Ok(Some(status)) = adapter.0.try_wait() {
            panic!("adapter exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "dpu-proxy never served pods {want:?}; it serves {:?}",
            proxy.config().await.1.as_ref().map(pod_names)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cluster_setup(server: &ApiServer) {
    server.batch(|b| {
        b.apply(NAMESPACES, json!({"metadata": {"name": "default"}}));
        b.apply(
            NODES,
            json!({"metadata": {"name": "node-1", "uid": "uid-node-1"},
                              "spec": {"podCIDR": "10.244.1.0/24"}}),
        );
        b.apply(SERVICES, service("productpage", "10.96.12.1", 9080, "http"));
        b.apply(SERVICES, service("details", "10.96.12.2", 9080, "http"));
        b.apply(SERVICES, service("reviews", "10.96.12.3", 9080, "http"));
        b.apply(SERVICES, service("ratings", "10.96.12.4", 9080, "http"));
        b.apply(
            SERVICES,
            service("mysqldb", "10.96.12.5", 3306, "tcp-mysql"),
        );
        b.apply(PODS, pod("productpage-v1", "productpage", "10.244.1.11", 1));
    });
}

/// ADS mode: a pod added to the streamed inventory gets its own xDS stream
/// (its sidecar node id subscribes at the ADS server) and reaches dpu-proxy;
/// removed, it leaves dpu-proxy's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_mode_opens_a_stream_for_an_added_pod() {
    let server = ApiServer::start().await;
    cluster_setup(&server);
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let _controller = Controller::start(
        &kubeconfig,
        &tmp.path().join("out"),
        &["--leader-elect=false", "--grpc-addr", grpc.as_str()],
    );
    // The common Bookinfo resources, served to both pods' sidecar node ids.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo");
    let state = local::load(&fixture, Some("node-1")).expect("fixture");
    let common = &state.proxies["default/productpage-v1-7d6cfb7dfd-x2x7k"];
    let ads = FakeAds::new();
    let productpage_id = "sidecar~10.244.1.11~productpage-v1.default~default.svc.cluster.local";
    let ratings_id = "sidecar~10.244.1.15~ratings-v1.default~default.svc.cluster.local";
    for id in [productpage_id, ratings_id] {
        ads.set_proxy(id, common);
    }
    let xds_addr = ads.serve().await;
    let proxy = DpuProxy::start().await;
    let mut adapter = Reaped(
        Command::new(workspace_binary("dpumesh-controller"))
            .args(["adapter", "--xds-addr", &xds_addr, "--node", "node-1"])
            .args(["--proxy-addr", &proxy.mgmt_addr])
            .args(["--inventory-addr", &format!("http://{grpc}")])
            .env("DPUMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn adapter"),
    );
    let (v1, c) = wait_pods(&proxy, &mut adapter, &["productpage-v1"]).await;
    assert_eq!(c.clusters.len(), 9);
    assert!(ads.log().iter().all(|r| r.node_id != ratings_id));

    server.apply(PODS, pod("ratings-v1", "ratings", "10.244.1.15", 5));
    let (v2, _) = wait_pods(&proxy, &mut adapter, &["productpage-v1", "ratings-v1"]).await;
    assert!(v2 > v1, "{v2} > {v1}");
    assert!(
        ads.log()
            .iter()
            .any(|r| r.node_id == ratings_id && r.is_ack()),
        "ratings-v1's sidecar never subscribed and ACKed"
    );

    server.delete(PODS, "default/ratings-v1");
    let (v3, _) = wait_pods(&proxy, &mut adapter, &["productpage-v1"]).await;
    assert!(v3 > v2, "{v3} > {v2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_inventory_adds_and_removes_pods_and_survives_a_controller_restart() {
    let server = ApiServer::start().await;
    cluster_setup(&server);
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let controller_args = ["--leader-elect=false", "--grpc-addr", grpc.as_str()];
    let mut controller = Controller::start(&kubeconfig, &tmp.path().join("out"), &controller_args);

    // The adapter's directory: only xDS resources (the per-pod directory names a
    // pod the cluster does not have: skipped); no node/pods/services files.
    let dir = tmp.path().join("adapter");
    let proxy = DpuProxy::start().await;
    let mut adapter = local_adapter_on_the_stream(&dir, &grpc, &proxy);

    // The first inventory: one pod, translated with the directory's xDS.
    let (v1, c) = wait_pods(&proxy, &mut adapter, &["productpage-v1"]).await;
    assert_eq!(c.node.name, "node-1");
    assert_eq!(c.node.pod_cidr, "10.244.1.0/24");
    assert_eq!(c.clusters.len(), 9);
    let pp = &c.pods[0];
    assert_eq!(pp.vf_index, 1);
    assert_eq!(pp.mac, "02:64:6d:01:00:01");

    // A pod added in the API server reaches dpu-proxy as a new version.
    server.apply(PODS, pod("ratings-v1", "ratings", "10.244.1.15", 5));
    let (v2, c) = wait_pods(&proxy, &mut adapter, &["productpage-v1", "ratings-v1"]).await;
    assert!(v2 > v1, "{v2} > {v1}");
    let ratings = c
        .pods
        .iter()
        .find(|p| p.name == "ratings-v1")
        .expect("ratings");
    assert_eq!(ratings.vf_index, 5);
    assert_eq!(ratings.representor, "pf0vf5");

    // Deleted: gone from dpu-proxy's config.
    server.delete(PODS, "default/ratings-v1");
    let (v3, _) = wait_pods(&proxy, &mut adapter, &["productpage-v1"]).await;
    assert!(v3 > v2, "{v3} > {v2}");

    // The controller goes away: the adapter keeps serving the last config (no push).
    controller.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.config().await.0, v3);
    assert!(
        adapter.0.try_wait().expect("try_wait").is_none(),
        "adapter exited"
    );

    // A new controller on the same address: the adapter reconnects; a change
    // made meanwhile arrives.
    server.apply(PODS, pod("details-v1", "details", "10.244.1.12", 2));
    let _controller = Controller::start(&kubeconfig, &tmp.path().join("out2"), &controller_args);
    let (v4, _) = wait_pods(&proxy, &mut adapter, &["details-v1", "productpage-v1"]).await;
    assert!(v4 > v3, "{v4} > {v3}");
}

/// The controller's `endpoints_yaml` reaches the adapter's EDS translation: a
/// meshed pod of node-2 (a dpumesh VF) becomes an HBONE endpoint with its node
/// and service account in dpu-proxy's config, a proxy-less pod of node-2 is
/// marked plaintext, an address the cluster does not know stays unmarked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_endpoints_give_remote_endpoints_their_node_and_hbone_mark() {
    let server = ApiServer::start().await;
    cluster_setup(&server);
    let on_node_2 = |name: &str, ip: &str, sa: &str, annotations: Value| {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": name}, "annotations": annotations},
               "spec": {"nodeName": "node-2", "serviceAccountName": sa,
                        "containers": [{"name": "app", "image": "busybox"}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    let slice = |service: &str, ip: &str, pod: &str| {
        json!({"metadata": {"name": format!("{service}-x"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-2",
                              "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}],
               "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]})
    };
    server.batch(|b| {
        b.apply(
            NODES,
            json!({"metadata": {"name": "node-2", "uid": "uid-node-2"},
                   "spec": {"podCIDR": "10.244.2.0/24"}}),
        );
        b.apply(
            PODS,
            on_node_2(
                "reviews-v3",
                "10.244.2.14",
                "bookinfo-reviews",
                json!({"dpumesh.io/vf-index": "3", "dpumesh.io/mac": "02:64:6d:02:00:03"}),
            ),
        );
        b.apply(
            PODS,
            on_node_2("details-plain", "10.244.2.12", "legacy", json!({})),
        );
        b.apply(SLICES, slice("reviews", "10.244.2.14", "reviews-v3"));
        b.apply(SLICES, slice("details", "10.244.2.12", "details-plain"));
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let controller_args = ["--leader-elect=false", "--grpc-addr", grpc.as_str()];
    let _controller = Controller::start(&kubeconfig, &tmp.path().join("out"), &controller_args);
    let dir = tmp.path().join("adapter");
    let proxy = DpuProxy::start().await;
    let mut adapter = local_adapter_on_the_stream(&dir, &grpc, &proxy);
    let (_, c) = wait_pods(&proxy, &mut adapter, &["productpage-v1"]).await;
    let endpoint = |host: &str, address: &str| {
        let svc = c
            .services
            .iter()
            .find(|s| s.hostname == host)
            .unwrap_or_else(|| panic!("no service {host}"));
        let ep = svc
            .endpoints
            .iter()
            .find(|e| e.address == address)
            .unwrap_or_else(|| panic!("no endpoint {address} of {host}"));
        (ep.node.clone(), ep.hbone, ep.service_account.clone())
    };
    assert_eq!(
        endpoint("reviews.default.svc.cluster.local", "10.244.2.14"),
        (
            "node-2".to_string(),
            Some(true),
            "bookinfo-reviews".to_string()
        ),
        "a meshed pod of another dpumesh node is reached over HBONE"
    );
    assert_eq!(
        endpoint("details.default.svc.cluster.local", "10.244.2.12"),
        ("node-2".to_string(), Some(false), "legacy".to_string()),
        "a proxy-less pod stays plaintext"
    );
    assert_eq!(
        endpoint("reviews.default.svc.cluster.local", "10.244.2.13"),
        (String::new(), None, String::new()),
        "an address the cluster does not know"
    );
}

/// The adapter binary for node-1: Bookinfo's xDS from `dir/xds` (copied from
/// the fixtures), its inventory from the controller's stream at `grpc`,
/// pushing to `proxy`.
fn local_adapter_on_the_stream(dir: &Path, grpc: &str, proxy: &DpuProxy) -> Reaped {
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo/xds"),
        &dir.join("xds"),
    );
    Reaped(
        Command::new(workspace_binary("dpumesh-controller"))
            .args(["adapter", "--local-dir"])
            .arg(dir)
            .args([
                "--node",
                "node-1",
                "--proxy-addr",
                &proxy.mgmt_addr,
                "--inventory-addr",
                &format!("http://{grpc}"),
                "--poll-ms",
                "100",
            ])
            .env("DPUMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn adapter"),
    )
}

//! The node network from the cluster to the dataplane: the real controller
//! binary (against the scripted Kubernetes API server) writes and streams
//! node-1's `network.yaml` (underlay address from the Node annotation, peers
//! from the other Nodes' annotation or InternalIP); the real adapter binary
//! (`--inventory-addr`, local mode with Bookinfo's xDS) sets it on the real
//! dataplane binary (`--backend memory`). A node joining or leaving the
//! cluster changes the peers the dataplane has. In ADS mode such a change
//! (only the network differs) does not start a new ADS session.

mod k8s_support;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_api::proto::v1::{GetNodeNetworkRequest, NetworkMode, NodeNetwork};
use dpumesh_controller::local;
use dpumesh_controller::xds::CLUSTER_TYPE;
use dpumesh_testkit::copy_dir;
use k8s_support::{free_port, ApiServer, Controller, NAMESPACES, NODES, PODS};
use serde_json::{json, Value};
use support::ads::FakeAds;
use support::{workspace_binary, DpuProxy, Reaped};

fn node(name: &str, cidr: &str, annotations: Value, internal_ip: Option<&str>) -> Value {
    let addresses: Vec<Value> = internal_ip
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .into_iter()
        .chain([json!({"type": "Hostname", "address": name})])
        .collect();
    json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "annotations": annotations},
           "spec": {"podCIDR": cidr},
           "status": {"addresses": addresses}})
}

async fn node_network(addr: &str) -> Option<NodeNetwork> {
    let mut c = dpumesh_api::client::dataplane(addr).await.ok()?;
    c.get_node_network(GetNodeNetworkRequest {})
        .await
        .ok()?
        .into_inner()
        .network
}

type Peer = (String, String, String);

fn peer(name: &str, cidr: &str, ip: &str) -> Peer {
    (name.into(), cidr.into(), ip.into())
}

/// Waits until the dataplane's peers are `want`; returns its network.
async fn wait_peers(addr: &str, want: &[Peer]) -> NodeNetwork {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = node_network(addr).await;
        if let Some(n) = &got {
            let peers: Vec<Peer> = n
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.pod_cidr.clone(), p.underlay_ip.clone()))
                .collect();
            if peers == want {
                return n.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the dataplane never got peers {want:?}; it has {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_nodes_reach_the_dataplane_as_peers() {
    let server = ApiServer::start().await;
    server.batch(|b| {
        b.apply(NAMESPACES, json!({"metadata": {"name": "default"}}));
        b.apply(
            NODES,
            node(
                "node-1",
                "10.244.1.0/24",
                json!({"dpumesh.io/dpu-underlay-ip": "192.0.2.11"}),
                Some("172.18.0.1"),
            ),
        );
        b.apply(
            NODES,
            node("node-2", "10.244.2.0/24", json!({}), Some("172.18.0.2")),
        );
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let out = tmp.path().join("out");
    let grpc = format!("127.0.0.1:{}", free_port());
    let _controller = Controller::start(
        &kubeconfig,
        &out,
        &["--leader-elect=false", "--grpc-addr", &grpc, "--vni", "9"],
    );
    // The file, as the stream carries it.
    k8s_support::wait_for("node-1/network.yaml", || {
        out.join("node-1/network.yaml").exists()
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(out.join("node-1/network.yaml")).expect("network.yaml"),
        "underlayIp: 192.0.2.11\nvni: 9\npeers:\n- name: node-2\n  podCidr: 10.244.2.0/24\n  underlayIp: 172.18.0.2\n"
    );

    let dir = tmp.path().join("adapter");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo/xds"),
        &dir.join("xds"),
    );
    let proxy = DpuProxy::start().await;
    let dp_addr = format!("127.0.0.1:{}", free_port());
    let _dataplane = Reaped(
        Command::new(workspace_binary("dpumesh-dataplane"))
            .args(["--backend", "memory", "--node", "node-1"])
            .args(["--mgmt-addr", &dp_addr])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dpumesh-dataplane (cargo build -p dpumesh-dataplane)"),
    );
    let _adapter = Reaped(
        Command::new(workspace_binary("dpumesh-controller"))
            .args(["adapter", "--local-dir"])
            .arg(&dir)
            .args(["--node", "node-1", "--proxy-addr", &proxy.mgmt_addr])
            .args(["--inventory-addr", &format!("http://{grpc}")])
            .args(["--dataplane-addr", &dp_addr, "--poll-ms", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn adapter"),
    );

    let n = wait_peers(&dp_addr, &[peer("node-2", "10.244.2.0/24", "172.18.0.2")]).await;
    assert_eq!(n.node_name, "node-1");
    assert_eq!(n.mode, NetworkMode::Underlay as i32);
    assert_eq!(n.pod_cidr, "10.244.1.0/24");
    assert_eq!(n.service_cidrs, ["10.96.0.0/16"]);
    assert_eq!(
        n.underlay_ip, "192.0.2.11",
        "the annotation, not the InternalIP"
    );
    assert_eq!(n.vni, 9);

    // A node joins (underlay address by annotation), one without any address
    // is no peer.
    server.batch(|b| {
        b.apply(
            NODES,
            node(
                "node-3",
                "10.244.3.0/24",
                json!({"dpumesh.io/dpu-underlay-ip": "192.0.2.13"}),
                None,
            ),
        );
        b.apply(NODES, node("node-4", "10.244.4.0/24", json!({}), None));
    });
    wait_peers(
        &dp_addr,
        &[
            peer("node-2", "10.244.2.0/24", "172.18.0.2"),
            peer("node-3", "10.244.3.0/24", "192.0.2.13"),
        ],
    )
    .await;
    assert!(!out.join("node-4/network.yaml").exists());
    assert!(out.join("node-4/node.yaml").exists());

    // A node leaves.
    server.delete(NODES, "node-2");
    wait_peers(&dp_addr, &[peer("node-3", "10.244.3.0/24", "192.0.2.13")]).await;
}

fn start_dataplane(addr: &str) -> Reaped {
    Reaped(
        Command::new(workspace_binary("dpumesh-dataplane"))
            .args(["--backend", "memory", "--node", "node-1"])
            .args(["--mgmt-addr", addr])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dpumesh-dataplane (cargo build -p dpumesh-dataplane)"),
    )
}

/// ADS mode: the network reaches the dataplane, and a node joining (a new
/// inventory that differs only in its network) keeps the pod's xDS stream:
/// no new subscription reaches the ADS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_mode_sets_the_network_without_a_new_ads_session() {
    let server = ApiServer::start().await;
    server.batch(|b| {
        b.apply(NAMESPACES, json!({"metadata": {"name": "default"}}));
        b.apply(
            NODES,
            node("node-1", "10.244.1.0/24", json!({}), Some("172.18.0.1")),
        );
        b.apply(
            NODES,
            node("node-2", "10.244.2.0/24", json!({}), Some("172.18.0.2")),
        );
        b.apply(
            PODS,
            json!({"metadata": {"name": "productpage-v1", "namespace": "default", "uid": "uid-pp",
                                "labels": {"app": "productpage", "version": "v1"},
                                "annotations": {"dpumesh.io/vf-index": "1",
                                                "dpumesh.io/mac": "02:64:6d:01:00:01"}},
                   "spec": {"nodeName": "node-1", "serviceAccountName": "bookinfo-productpage",
                            "containers": [{"name": "app", "image": "busybox"}]},
                   "status": {"phase": "Running", "podIP": "10.244.1.11",
                              "podIPs": [{"ip": "10.244.1.11"}]}}),
        );
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let grpc = format!("127.0.0.1:{}", free_port());
    let _controller = Controller::start(
        &kubeconfig,
        &tmp.path().join("out"),
        &["--leader-elect=false", "--grpc-addr", &grpc],
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo");
    let state = local::load(&fixture, Some("node-1")).expect("fixture");
    let common = &state.proxies["default/productpage-v1-7d6cfb7dfd-x2x7k"];
    let ads = FakeAds::new();
    let id = "sidecar~10.244.1.11~productpage-v1.default~default.svc.cluster.local";
    ads.set_proxy(id, common);
    let xds_addr = ads.serve().await;
    let proxy = DpuProxy::start().await;
    let dp_addr = format!("127.0.0.1:{}", free_port());
    let _dataplane = start_dataplane(&dp_addr);
    let _adapter = Reaped(
        Command::new(workspace_binary("dpumesh-controller"))
            .args(["adapter", "--xds-addr", &xds_addr, "--node", "node-1"])
            .args(["--proxy-addr", &proxy.mgmt_addr])
            .args(["--inventory-addr", &format!("http://{grpc}")])
            .args(["--dataplane-addr", &dp_addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn adapter"),
    );
    let n = wait_peers(&dp_addr, &[peer("node-2", "10.244.2.0/24", "172.18.0.2")]).await;
    assert_eq!(n.underlay_ip, "172.18.0.1", "node-1's InternalIP");
    let config = proxy.wait_version(1).await;
    assert_eq!(config.pods.len(), 1);
    // A new stream's first CDS request carries no nonce.
    let opened = || {
        ads.log()
            .iter()
            .filter(|r| {
                r.node_id == id && r.type_url == CLUSTER_TYPE && r.response_nonce.is_empty()
            })
            .count()
    };
    assert_eq!(opened(), 1);

    server.apply(
        NODES,
        node("node-3", "10.244.3.0/24", json!({}), Some("172.18.0.3")),
    );
    wait_peers(
        &dp_addr,
        &[
            peer("node-2", "10.244.2.0/24", "172.18.0.2"),
            peer("node-3", "10.244.3.0/24", "172.18.0.3"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(opened(), 1, "the ADS session was not restarted");
    assert_eq!(proxy.config().await.0, 1, "nothing new for dpu-proxy");
}

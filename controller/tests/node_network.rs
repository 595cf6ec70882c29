//! The adapter sets the node network on the dataplane: the adapter binary in
//! local mode (watching a directory with `network.yaml`) against the real
//! dataplane binary's control API (`--backend memory`, on 127.0.0.1) and the
//! real dpu-proxy. The dataplane comes up after the adapter (retried, while
//! dpu-proxy already got its config), a changed peer list is sent again, a
//! refused network (FAILED_PRECONDITION) is retried until the dataplane takes
//! it, and a restarted dataplane (which starts without a network) gets it again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_api::proto::v1::{
    AddPodRequest, GetNodeNetworkRequest, NetworkMode, NodeNetwork, PodSteering, RemovePodRequest,
};
use dpumesh_testkit::copy_dir;
use support::{free_port, workspace_binary, DpuProxy, Reaped};

/// The real dataplane binary with the memory backend (the control API and the
/// registry are the real ones; nothing is forwarded). Killed on drop.
fn start_dataplane(addr: &str, log: &Path) -> Reaped {
    let log = std::fs::File::create(log).expect("dataplane log");
    let child = Command::new(workspace_binary("dpumesh-dataplane"))
        .args([
            "--backend",
            "memory",
            "--node",
            "node-1",
            "--representors",
            "pf0vf1",
            "--mgmt-addr",
            addr,
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn dpumesh-dataplane (cargo build -p dpumesh-dataplane)");
    Reaped(child)
}

async fn node_network(addr: &str) -> Option<NodeNetwork> {
    let mut c = dpumesh_api::client::dataplane(addr).await.ok()?;
    c.get_node_network(GetNodeNetworkRequest {})
        .await
        .ok()?
        .into_inner()
        .network
}

/// Waits until the dataplane's network satisfies `ok`.
async fn wait_network(addr: &str, what: &str, ok: impl Fn(&NodeNetwork) -> bool) -> NodeNetwork {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(n) = node_network(addr).await {
            if ok(&n) {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the dataplane never got {what}; it has {:?}",
            node_network(addr).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peers(n: &NodeNetwork) -> Vec<(String, String, String)> {
    n.peers
        .iter()
        .map(|p| (p.name.clone(), p.pod_cidr.clone(), p.underlay_ip.clone()))
        .collect()
}

fn peer(name: &str, cidr: &str, ip: &str) -> (String, String, String) {
    (name.into(), cidr.into(), ip.into())
}

fn wait_log(path: &PathBuf, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the adapter never logged {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NETWORK_ONE_PEER: &str = "underlayIp: 192.0.2.11\npeers:\n- {name: node-2, podCidr: 10.244.2.0/24, underlayIp: 192.0.2.12}\n";
const NETWORK_TWO_PEERS: &str = "underlayIp: 192.0.2.11\nvni: 7\npeers:\n- {name: node-2, podCidr: 10.244.2.0/24, underlayIp: 192.0.2.12}\n- {name: node-3, podCidr: 10.244.3.0/24, underlayIp: 192.0.2.13}\n";

/// The adapter in local mode on `dir` (polling every 100 ms), pushing to the
/// proxy at `proxy_addr` and setting the network on the dataplane at `dp_addr`;
/// its stderr goes to `log`.
fn start_adapter(dir: &Path, proxy_addr: &str, dp_addr: &str, log: &Path) -> Reaped {
    Reaped(
        Command::new(workspace_binary("dpumesh-controller"))
            .args(["adapter", "--local-dir"])
            .arg(dir)
            .args([
                "--node",
                "node-1",
                "--proxy-addr",
                proxy_addr,
                "--dataplane-addr",
                dp_addr,
                "--poll-ms",
                "100",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("adapter log"))
            .spawn()
            .expect("spawn adapter"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_sets_the_node_network_on_the_dataplane() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bookinfo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo"),
        &dir,
    );
    std::fs::write(dir.join("network.yaml"), NETWORK_ONE_PEER).expect("network.yaml");
    let proxy = DpuProxy::start().await;
    let dp_addr = format!("127.0.0.1:{}", free_port());
    let adapter_log = tmp.path().join("adapter.log");

    // The adapter first, the dataplane not up yet.
    let _adapter = start_adapter(&dir, &proxy.mgmt_addr, &dp_addr, &adapter_log);
    // dpu-proxy gets its config while the dataplane is unreachable.
    let config = proxy.wait_version(1).await;
    assert_eq!(config.node.name, "node-1");
    let log = wait_log(
        &adapter_log,
        "setting the node network on the dataplane failed",
    );
    assert!(
        log.contains(&dp_addr),
        "the failure names the address:\n{log}"
    );

    // The dataplane comes up late: the adapter's retry sets the network.
    let dp_log = tmp.path().join("dataplane.log");
    let mut dataplane = start_dataplane(&dp_addr, &dp_log);
    let n = wait_network(&dp_addr, "the network", |_| true).await;
    assert_eq!(n.node_name, "node-1");
    assert_eq!(n.mode, NetworkMode::Underlay as i32);
    assert_eq!(n.pod_cidr, "10.244.1.0/24");
    assert_eq!(n.service_cidrs, ["10.96.0.0/16"]);
    assert_eq!(n.underlay_ip, "192.0.2.11");
    assert_eq!(n.gateway_ip, "10.244.1.1", "the dataplane's default");
    assert_eq!(peers(&n), [peer("node-2", "10.244.2.0/24", "192.0.2.12")]);

    // A changed peer list (and VNI) is sent again.
    std::fs::write(dir.join("network.yaml"), NETWORK_TWO_PEERS).expect("network.yaml");
    let n = wait_network(&dp_addr, "two peers", |n| n.peers.len() == 2).await;
    assert_eq!(
        peers(&n),
        [
            peer("node-2", "10.244.2.0/24", "192.0.2.12"),
            peer("node-3", "10.244.3.0/24", "192.0.2.13"),
        ]
    );
    assert_eq!(n.vni, 7);

    // A pod registered in the old pod CIDR makes the dataplane refuse a new
    // pod CIDR (FAILED_PRECONDITION): retried until the pod is gone.
    let mut dp = dpumesh_api::client::dataplane(&dp_addr)
        .await
        .expect("dataplane client");
    dp.add_pod(AddPodRequest {
        pod: Some(PodSteering {
            pod_uid: "uid-stale".into(),
            name: "stale".into(),
            namespace: "default".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            vf_index: 1,
            representor: "pf0vf1".into(),
            ips: vec!["10.244.1.50".into()],
            mac: "02:00:00:00:00:50".into(),
            meshed: false,
            interception: None,
        }),
    })
    .await
    .expect("AddPod");
    let node_yaml = std::fs::read_to_string(dir.join("node.yaml")).expect("node.yaml");
    std::fs::write(
        dir.join("node.yaml"),
        node_yaml.replace("10.244.1.0/24", "10.244.9.0/24"),
    )
    .expect("node.yaml");
    let log = wait_log(&adapter_log, "FailedPrecondition");
    assert!(log.contains("uid-stale"), "the reason is logged:\n{log}");
    assert_eq!(
        node_network(&dp_addr).await.map(|n| n.pod_cidr).as_deref(),
        Some("10.244.1.0/24"),
        "refused: the old network stays"
    );
    dp.remove_pod(RemovePodRequest {
        pod_uid: "uid-stale".into(),
        ..Default::default()
    })
    .await
    .expect("RemovePod");
    let n = wait_network(&dp_addr, "the new pod CIDR", |n| {
        n.pod_cidr == "10.244.9.0/24"
    })
    .await;
    assert_eq!(n.gateway_ip, "10.244.9.1");
    assert_eq!(n.peers.len(), 2);

    // A restarted dataplane starts without a network: the adapter sets it again.
    drop(dataplane);
    dataplane = start_dataplane(&dp_addr, &dp_log);
    let n = wait_network(&dp_addr, "the network after a restart", |_| true).await;
    assert_eq!(n.pod_cidr, "10.244.9.0/24");
    assert_eq!(n.peers.len(), 2);
    wait_log(&adapter_log, "the dataplane has no node network");
    drop(dataplane);
}

/// The adapter decodes a broken network.yaml as a bad inventory: logged naming
/// the file, nothing is set; fixed, it is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_network_document_is_reported_and_not_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bookinfo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo"),
        &dir,
    );
    std::fs::write(
        dir.join("network.yaml"),
        "underlayIp: not-an-ip\npeers: []\n",
    )
    .expect("network.yaml");
    let proxy = DpuProxy::start().await;
    let dp_addr = format!("127.0.0.1:{}", free_port());
    let _dataplane = start_dataplane(&dp_addr, &tmp.path().join("dataplane.log"));
    let adapter_log = tmp.path().join("adapter.log");
    let _adapter = start_adapter(&dir, &proxy.mgmt_addr, &dp_addr, &adapter_log);
    let log = wait_log(&adapter_log, "network.yaml");
    assert!(log.contains("underlayIp"), "the field is named:\n{log}");
    // Wait until the dataplane answers, then check that nothing was set.
    let deadline = Instant::now() + Duration::from_secs(20);
    while dpumesh_api::client::dataplane(&dp_addr).await.is_err() {
        assert!(Instant::now() < deadline, "the dataplane never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_network(&dp_addr).await, None);
    std::fs::write(dir.join("network.yaml"), NETWORK_ONE_PEER).expect("network.yaml");
    let n = wait_network(&dp_addr, "the fixed network", |_| true).await;
    assert_eq!(peers(&n), [peer("node-2", "10.244.2.0/24", "192.0.2.12")]);
}

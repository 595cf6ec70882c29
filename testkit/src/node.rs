//! A simulated node as the CNI and the node agent set it up: pods on VFs, the
//! dataplane (eBPF) and dpu-proxy in the DPU netns, configs pushed to the proxy.

use std::net::Ipv4Addr;
use std::time::Duration;

use dpumesh_api::proto::v1::{
    AddPodRequest, Interception, NetworkMode, NodeNetwork, PeerNode, PodSteering,
    SetNodeNetworkRequest,
};
use dpumesh_api::NodeConfig;
use dpumesh_sim::{Netns, Node, Place, SimGuard, SpawnSpec};

use crate::{exec, runtime, wait_for_listener, workspace_binary};

/// How long a spawned dataplane or dpu-proxy may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the CNI does: VF `vf` of `node` into a new pod netns named `pod`
/// (see [`dpumesh_sim::Sim::pod_add`]) as eth0, with `ip`/24 and a default
/// route via the node's pod gateway (answered by the dataplane).
pub fn attach_pod(sim: &SimGuard, node: &Node, vf: usize, pod: &str, ip: Ipv4Addr) -> Netns {
    let ns = sim.pod_add(pod).expect("pod netns");
    let vf_name = &node.vf(vf).expect("vf").host_ifname;
    exec(
        &node.host,
        "ip",
        &["link", "set", vf_name, "netns", ns.name()],
    );
    exec(&ns, "ip", &["link", "set", vf_name, "name", "eth0"]);
    let cidr = format!("{ip}/24");
    exec(&ns, "ip", &["addr", "add", &cidr, "dev", "eth0"]);
    exec(&ns, "ip", &["link", "set", "eth0", "up"]);
    let gw = node.pod_gateway.to_string();
    exec(&ns, "ip", &["route", "add", "default", "via", &gw]);
    ns
}

/// The dataplane's record of a meshed pod in namespace `default` on VF `vf`
/// (container id `ctr-<uid>`, eth0, default interception). Other cases with
/// struct update syntax: `PodSteering { meshed: false, ..steering(..) }`.
pub fn steering(uid: &str, name: &str, node: &Node, vf: usize, ip: Ipv4Addr) -> PodSteering {
    let v = node.vf(vf).expect("vf");
    PodSteering {
        pod_uid: uid.into(),
        name: name.into(),
        namespace: "default".into(),
        container_id: format!("ctr-{uid}"),
        ifname: "eth0".into(),
        vf_index: v.index as u32,
        representor: v.representor.clone(),
        ips: vec![ip.to_string()],
        mac: v.mac.to_string(),
        meshed: true,
        interception: Some(Interception::default()),
    }
}

/// Node `i`'s network as its dataplane is told: underlay, services in
/// 10.96.0.0/16, every other node of `sim` a peer.
pub fn underlay_network(sim: &SimGuard, i: usize, node_name: &str) -> NodeNetwork {
    let node = sim.node(i).expect("node");
    let peers = sim
        .nodes()
        .iter()
        .filter(|p| p.index != i)
        .map(|p| PeerNode {
            name: format!("n{}", p.index),
            pod_cidr: p.pod_cidr.to_string(),
            underlay_ip: p.uplink.addr().to_string(),
        })
        .collect();
    NodeNetwork {
        node_name: node_name.into(),
        mode: NetworkMode::Underlay as i32,
        pod_cidr: node.pod_cidr.to_string(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: node.uplink.addr().to_string(),
        vni: 0,
        peers,
        gateway_ip: String::new(),
    }
}

/// Registers the node network and the pods with the dataplane at `mgmt`, over
/// its gRPC API from the host netns (as the CNI does).
pub fn register(host: &Netns, mgmt: String, network: NodeNetwork, pods: Vec<PodSteering>) {
    host.run(move || {
        runtime().block_on(async move {
            let mut dp = dpumesh_api::client::dataplane(&mgmt)
                .await
                .expect("dataplane client");
            dp.set_node_network(SetNodeNetworkRequest {
                network: Some(network),
            })
            .await
            .expect("SetNodeNetwork");
            for pod in pods {
                let uid = pod.pod_uid.clone();
                dp.add_pod(AddPodRequest { pod: Some(pod) })
                    .await
                    .unwrap_or_else(|e| panic!("AddPod {uid}: {e}"));
            }
        })
    })
    .expect("host netns");
}

/// Starts node `i`'s dataplane (`dataplane-n<i>`, eBPF backend, node id
/// `<cluster>-n<i>`, control API on `<mgmt ip>:15081`, then `extra` flags) in
/// its DPU netns, waits for it (30 s; a failure shows its log), and registers
/// [`underlay_network`] and `pods`; returns the dataplane's control address.
pub fn start_dataplane(
    sim: &SimGuard,
    i: usize,
    node_name: &str,
    pods: Vec<PodSteering>,
    extra: &[&str],
) -> String {
    let node = sim.node(i).expect("node").clone();
    let dp_mgmt = format!("{}:15081", node.mgmt_dpu.addr());
    let node_id = format!("{}-n{i}", sim.cluster());
    let args = [
        "--node",
        node_name,
        "--node-id",
        &node_id,
        "--mgmt-addr",
        &dp_mgmt,
        "--backend",
        "ebpf",
    ];
    // Pins under the simulator's per-node dir (removed by `down`).
    sim.spawn_with(
        SpawnSpec::new(
            format!("dataplane-n{i}"),
            node.netns(Place::Dpu).clone(),
            workspace_binary("dpumesh-dataplane").display().to_string(),
        )
        .args(args.iter().chain(extra).map(|a| a.to_string()))
        .health(dp_mgmt.clone()),
    )
    .expect("spawn the dataplane");
    wait_for_listener(
        &node.host,
        dp_mgmt.parse().expect("addr"),
        "the dataplane",
        START_TIMEOUT,
        Some(&sim.log_path(&format!("dataplane-n{i}"))),
    );
    register(
        &node.host,
        dp_mgmt.clone(),
        underlay_network(sim, i, node_name),
        pods,
    );
    dp_mgmt
}

/// Starts node `i`'s dpu-proxy (`dpu-proxy-n<i>`, control API on
/// `<mgmt ip>:15080`, then `extra` flags) in its DPU netns and waits for it
/// (30 s; a failure shows its log); returns the proxy's control address.
pub fn start_proxy(sim: &SimGuard, i: usize, node_name: &str, extra: &[&str]) -> String {
    let node = sim.node(i).expect("node").clone();
    let proxy_mgmt = format!("{}:15080", node.mgmt_dpu.addr());
    let args = ["--node", node_name, "--mgmt-addr", &proxy_mgmt];
    sim.spawn_with(
        SpawnSpec::new(
            format!("dpu-proxy-n{i}"),
            node.netns(Place::Dpu).clone(),
            workspace_binary("dpu-proxy").display().to_string(),
        )
        .args(args.iter().chain(extra).map(|a| a.to_string()))
        .health(proxy_mgmt.clone()),
    )
    .expect("spawn dpu-proxy");
    wait_for_listener(
        &node.host,
        proxy_mgmt.parse().expect("addr"),
        "dpu-proxy",
        START_TIMEOUT,
        Some(&sim.log_path(&format!("dpu-proxy-n{i}"))),
    );
    proxy_mgmt
}

/// Node `i` as most tests want it: [`start_dataplane`] (admin on
/// 127.0.0.1:15091 in the DPU netns) with `pods` registered, then
/// [`start_proxy`] (admin on 127.0.0.1:15000, one worker, then `proxy_extra`,
/// e.g. `--ca-root-file`); returns the proxy's control address.
pub fn start_node(
    sim: &SimGuard,
    i: usize,
    node_name: &str,
    pods: Vec<PodSteering>,
    proxy_extra: &[&str],
) -> String {
    start_dataplane(
        sim,
        i,
        node_name,
        pods,
        &["--admin-addr", "127.0.0.1:15091"],
    );
    let args = ["--admin-addr", "127.0.0.1:15000", "--workers", "1"];
    let args: Vec<&str> = args.iter().chain(proxy_extra).copied().collect();
    start_proxy(sim, i, node_name, &args)
}

/// Pushes `config` to the proxy at `mgmt` from the host netns; panics unless
/// it is acknowledged (no errors, serving `config.version`).
pub fn push(host: &Netns, mgmt: String, config: NodeConfig) {
    host.run(move || {
        runtime().block_on(async move {
            let mut c = dpumesh_api::client::proxy_config(&mgmt)
                .await
                .expect("proxy control client");
            let r = dpumesh_api::client::push_config(&mut c, &config)
                .await
                .expect("PushConfig");
            assert!(
                r.errors.is_empty() && r.serving_version == config.version,
                "push refused: {r:?}"
            );
        })
    })
    .expect("host netns");
}

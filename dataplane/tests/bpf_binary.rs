//! The real `dpumesh-dataplane` binary with the eBPF backend, spawned in a
//! simulated DPU netns and driven over its control gRPC from the host netns
//! (as the CNI does): Prometheus counters that match the traffic sent, the
//! admin endpoints, and a restart after `kill -9` that reconciles leftovers
//! against a different desired set.
mod bpf_common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bpf_common::*;
use dpumesh_api::client;
use dpumesh_api::proto::v1::{
    AddPodRequest, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_dataplane::bpf::loader::PinnedView;
use dpumesh_dataplane::bpf::PinDir;
use dpumesh_sim::{Netns, Place, ProcessRecord, Sim, SimConfig, SimGuard};

const CONTROL: &str = "192.168.100.2:15081";

/// The binary, with its pin dir derived from the netns it runs in
/// (`dm-<c>-n1-dpu` → `<c>-n1`, which `sim down` removes).
fn spawn_dataplane(sim: &Sim, name: &str) -> ProcessRecord {
    let p = sim
        .spawn(
            1,
            Place::Dpu,
            name,
            env!("CARGO_BIN_EXE_dpumesh-dataplane"),
            [
                "--node",
                "node-1",
                "--mgmt-addr",
                CONTROL,
                "--restore-grace-secs",
                "2",
            ],
        )
        .expect("spawn dataplane");
    // Ready to serve once the control port answers (from the host netns).
    let host = sim.node(1).unwrap().host.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = block_in(&host, || async { client::status(CONTROL).await.is_ok() });
        if up {
            return p;
        }
        assert!(p.is_alive(), "dataplane exited; log: {}", log(sim, name));
        assert!(Instant::now() < deadline, "dataplane never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log(sim: &Sim, name: &str) -> String {
    std::fs::read_to_string(sim.log_path(name)).unwrap_or_default()
}

fn network() -> NodeNetwork {
    NodeNetwork {
        node_name: "node-1".into(),
        mode: NetworkMode::Underlay.into(),
        pod_cidr: "10.244.1.0/24".into(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: "192.0.2.11".into(),
        ..Default::default()
    }
}

fn pod(sim: &Sim, vf: usize, name: &str, ip: Ipv4Addr) -> PodSteering {
    let v = sim.node(1).unwrap().vf(vf).unwrap();
    PodSteering {
        pod_uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "default".into(),
        vf_index: vf as u32,
        ips: vec![ip.to_string()],
        mac: v.mac.to_string(),
        ..Default::default()
    }
}

/// What the CNI and adapter would send: the node network, then these pods.
fn register(host: &Netns, pods: Vec<PodSteering>) {
    block_in(host, move || async move {
        let mut c = client::dataplane(CONTROL).await.expect("connect");
        c.set_node_network(SetNodeNetworkRequest {
            network: Some(network()),
        })
        .await
        .expect("SetNodeNetwork");
        for p in pods {
            c.add_pod(AddPodRequest { pod: Some(p) })
                .await
                .expect("AddPod");
        }
    })
}

fn ping(from: &Netns, to: Ipv4Addr, count: u32) -> Result<String, String> {
    exec(
        from,
        "busybox",
        &["ping", "-c", &count.to_string(), "-W", "2", &to.to_string()],
    )
}

fn pod_metric(text: &str, name: &str, pod: &str, extra: &[(&str, &str)]) -> u64 {
    let mut labels = vec![("pod", pod), ("namespace", "default")];
    labels.extend_from_slice(extra);
    metric(text, name, &labels)
}

#[test]
fn binary_counts_traffic_in_metrics_and_reconciles_leftovers_after_kill_9() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfb"))
            .with_nodes(1)
            .with_vfs(3),
    )
    .expect("sim up");
    let n1 = sim.node(1).unwrap().clone();
    let pin = PinDir(n1.bpf_pin_dir.clone());
    let gw = n1.pod_gateway;
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 1, 7),
    );
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw);
    let pb = cni_attach(&sim, 1, 1, "b", ip_b, gw);
    let pc = cni_attach(&sim, 1, 2, "c", ip_c, gw);

    let first = spawn_dataplane(&sim, "dataplane");
    let (code, body) = admin_get(&n1.dpu, "/ready");
    assert_eq!(code, 503, "not ready before SetNodeNetwork: {body}");
    register(
        &n1.host,
        vec![pod(&sim, 0, "a", ip_a), pod(&sim, 1, "b", ip_b)],
    );
    let (code, body) = admin_get(&n1.dpu, "/ready");
    assert_eq!(code, 200, "{body}");

    // Counters match the traffic: after one ping to settle ARP, N pings are
    // N echo requests from a and N replies from b, all bypassing the proxy.
    ping(&pa, ip_b, 1).expect("a -> b");
    let (code, before) = admin_get(&n1.dpu, "/metrics");
    assert_eq!(code, 200);
    const N: u64 = 5;
    ping(&pa, ip_b, N as u32).expect("a -> b");
    let (_, after) = admin_get(&n1.dpu, "/metrics");
    let delta = |pod: &str, name: &str, extra: &[(&str, &str)]| {
        pod_metric(&after, name, pod, extra) - pod_metric(&before, name, pod, extra)
    };
    let prefix = "dpumesh_dataplane_";
    let packets = format!("{prefix}pod_packets_total");
    let bytes = format!("{prefix}pod_bytes_total");
    let bypassed = format!("{prefix}pod_bypassed_packets_total");
    let arp = format!("{prefix}pod_arp_replies_total");
    assert_eq!(delta("a", &bypassed, &[]), N, "{after}");
    assert_eq!(delta("b", &bypassed, &[]), N, "{after}");
    // Anything else a pod sent meanwhile can only be an ARP request
    // (answered) or IPv6 (dropped as unsupported).
    let drops = format!("{prefix}pod_drops_total");
    let arp_a = delta("a", &arp, &[]);
    let v6_a = delta("a", &drops, &[("reason", "unsupported")]);
    assert_eq!(
        delta("a", &packets, &[("direction", "out")]),
        N + arp_a + v6_a
    );
    if v6_a == 0 {
        // busybox ping: 56 data bytes = 98-byte frames; an ARP request is 42.
        assert_eq!(
            delta("a", &bytes, &[("direction", "out")]),
            98 * N + 42 * arp_a
        );
    }
    let arp_b = delta("b", &arp, &[]);
    assert_eq!(delta("b", &packets, &[("direction", "in")]), N + arp_b);
    assert_eq!(
        pod_metric(
            &after,
            &format!("{prefix}pod_drops_total"),
            "a",
            &[("reason", "spoof_ip")]
        ),
        0
    );
    assert!(after.contains("representor=\"pf0vf0\""), "{after}");
    assert_eq!(metric(&after, &format!("{prefix}pods"), &[]), 2);
    assert_eq!(metric(&after, &format!("{prefix}ready"), &[]), 1);
    let (code, pods) = admin_get(&n1.dpu, "/pods");
    assert_eq!(code, 200);
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("JSON");
    assert_eq!(pods["pods"].as_array().map(Vec::len), Some(2), "{pods}");
    assert_eq!(pods["pods"][0]["name"], "a");
    assert!(pods["pods"][0]["counters"]["bypassed"].as_u64() >= Some(N + 1));

    // kill -9: the programs and maps stay; forwarding goes on without a process.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.is_alive() {
        assert!(Instant::now() < deadline, "still alive after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    ping(&pa, ip_b, 1).expect("a -> b with no dataplane process");
    let view = PinnedView::open(&pin).expect("pinned maps");
    assert_eq!(view.ips(), vec![ip_a, ip_b]);
    let a_slot = view.endpoints()[0].1.slot;
    let a_out_before = view.slot_counters(a_slot).unwrap().packets_out;

    // Start again; the control plane now wants a and c, not b.
    spawn_dataplane(&sim, "dataplane2");
    register(
        &n1.host,
        vec![pod(&sim, 0, "a", ip_a), pod(&sim, 2, "c", ip_c)],
    );
    // During the grace period b's leftover entry still forwards.
    let view = PinnedView::open(&pin).expect("pinned maps");
    assert_eq!(view.ips(), vec![ip_a, ip_b, ip_c], "b kept during grace");
    ping(&pc, ip_a, 1).expect("c -> a");
    // After it, exactly the desired pods are left.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ips = PinnedView::open(&pin).expect("pinned maps").ips();
        if ips == vec![ip_a, ip_c] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leftover b never swept: {ips:?}; log: {}",
            log(&sim, "dataplane2")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let view = PinnedView::open(&pin).expect("pinned maps");
    let eps = view.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let a = eps
        .iter()
        .find(|(_, e)| e.ipv4 == u32::from_ne_bytes(ip_a.octets()))
        .expect("a");
    assert_eq!(a.1.slot, a_slot, "a adopted in place");
    assert!(
        view.slot_counters(a_slot).unwrap().packets_out >= a_out_before,
        "a's counters kept"
    );
    let routes = exec(&n1.dpu, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    assert!(!routes.contains("10.244.1.6 "), "b's route swept: {routes}");
    assert!(routes.contains("10.244.1.7 "), "c's route: {routes}");
    ping(&pc, ip_a, 1).expect("c -> a after reconcile");
    assert!(ping(&pb, ip_a, 1).is_err(), "b is gone");
    let (_, text) = admin_get(&n1.dpu, "/metrics");
    assert!(!text.contains("pod=\"b\""), "{text}");
    assert!(
        metric(
            &text,
            "dpumesh_dataplane_unattributed_drops_total",
            &[("reason", "unknown_vf")]
        ) >= 1,
        "b's packets dropped as from an unknown VF: {text}"
    );
}

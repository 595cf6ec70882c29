//! The dataplane's control gRPC over real connections: a tonic server on
//! 127.0.0.1 (in-process, and the real `dpumesh-dataplane` binary) and a
//! tonic client. Every refused request must leave the registry and the
//! backend exactly as they were.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpumesh_api::client;
use dpumesh_api::proto::v1::{
    dataplane_client::DataplaneClient, status_client::StatusClient, AddPodRequest,
    GetNodeNetworkRequest, Interception, ListPodsRequest, NetworkMode, NodeNetwork, PeerNode,
    PodSteering, RemovePodRequest, RemovePodResponse, SetNodeNetworkRequest, StatusRequest,
};
use dpumesh_dataplane::control::{self, ControlState};
use dpumesh_dataplane::registry::{
    BackendError, MemoryBackend, NodeNetworkSpec, PodEntry, PodRegistry, Programmed, Representors,
    SteeringBackend,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

/// A backend that records like [`MemoryBackend`] and refuses every call
/// while `fail` is set, as a forwarding engine does when e.g. a map is full.
#[derive(Default)]
struct FlakyBackend {
    memory: MemoryBackend,
    fail: AtomicBool,
}

impl FlakyBackend {
    fn check(&self) -> Result<(), BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(BackendError("map full".into()))
        } else {
            Ok(())
        }
    }
}

impl SteeringBackend for FlakyBackend {
    fn name(&self) -> &str {
        "flaky"
    }
    fn apply_network(&self, n: &NodeNetworkSpec, pods: &[PodEntry]) -> Result<(), BackendError> {
        self.check()?;
        self.memory.apply_network(n, pods)
    }
    fn apply_pod(
        &self,
        n: &NodeNetworkSpec,
        pod: &PodEntry,
        previous: Option<&PodEntry>,
    ) -> Result<(), BackendError> {
        self.check()?;
        self.memory.apply_pod(n, pod, previous)
    }
    fn remove_pod(&self, pod: &PodEntry) -> Result<(), BackendError> {
        self.check()?;
        self.memory.remove_pod(pod)
    }
    fn health(&self) -> Result<(), String> {
        self.check().map_err(|e| e.0)
    }
}

/// An in-process control server; stops when dropped.
struct Server {
    backend: Arc<FlakyBackend>,
    dp: DataplaneClient<Channel>,
    status: StatusClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Representors present on the test "DPU".
const REPRESENTORS: [&str; 4] = ["pf0vf0", "pf0vf1", "pf0vf2", "pf0vf3"];

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(FlakyBackend::default());
    let registry = PodRegistry::new(
        "node-1",
        Representors::fixed(REPRESENTORS),
        Arc::clone(&backend) as Arc<dyn SteeringBackend>,
    );
    let state = ControlState::new(Arc::new(registry));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        control::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = client::connect(&addr.to_string()).await.unwrap();
    Server {
        backend,
        dp: DataplaneClient::new(channel.clone()),
        status: StatusClient::new(channel),
        stop: Some(stop),
    }
}

fn network() -> NodeNetwork {
    NodeNetwork {
        node_name: "node-1".into(),
        mode: NetworkMode::Underlay.into(),
        pod_cidr: "10.244.1.0/24".into(),
        service_cidrs: vec!["10.96.0.0/16".into()],
        underlay_ip: "192.0.2.11".into(),
        vni: 0,
        peers: vec![
            PeerNode {
                name: "node-2".into(),
                pod_cidr: "10.244.2.0/24".into(),
                underlay_ip: "192.0.2.12".into(),
            },
            PeerNode {
                name: "node-3".into(),
                pod_cidr: "10.244.3.0/24".into(),
                underlay_ip: "192.0.2.13".into(),
            },
        ],
        gateway_ip: String::new(),
    }
}

fn pod(n: u32) -> PodSteering {
    PodSteering {
        pod_uid: format!("uid-{n}"),
        name: format!("pod-{n}"),
        namespace: "default".into(),
        container_id: format!("ctr-{n}"),
        ifname: "eth0".into(),
        vf_index: n,
        representor: format!("pf0vf{n}"),
        ips: vec![format!("10.244.1.{}", 10 + n)],
        mac: format!("02:00:0a:f4:01:{:02x}", 10 + n),
        meshed: true,
        interception: Some(Interception {
            capture_inbound_ports: vec![],
            exclude_inbound_ports: vec![15021],
            capture_outbound_cidrs: vec![],
            exclude_outbound_cidrs: vec!["169.254.0.0/16".into()],
            exclude_outbound_ports: vec![],
        }),
    }
}

impl Server {
    async fn set_network(&mut self, n: NodeNetwork) -> Result<bool, tonic::Status> {
        let r = self
            .dp
            .set_node_network(SetNodeNetworkRequest { network: Some(n) })
            .await?;
        Ok(r.into_inner().changed)
    }

    async fn get_network(&mut self) -> Option<NodeNetwork> {
        self.dp
            .get_node_network(GetNodeNetworkRequest {})
            .await
            .unwrap()
            .into_inner()
            .network
    }

    async fn add(&mut self, p: PodSteering) -> Result<bool, tonic::Status> {
        let r = self.dp.add_pod(AddPodRequest { pod: Some(p) }).await?;
        Ok(r.into_inner().changed)
    }

    async fn remove(&mut self, r: RemovePodRequest) -> Result<RemovePodResponse, tonic::Status> {
        Ok(self.dp.remove_pod(r).await?.into_inner())
    }

    async fn list(&mut self) -> Vec<PodSteering> {
        self.dp
            .list_pods(ListPodsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pods
    }

    /// What the API shows and what reached the backend, to compare around a refused call.
    async fn snapshot(&mut self) -> (Option<NodeNetwork>, Vec<PodSteering>, Programmed) {
        (
            self.get_network().await,
            self.list().await,
            self.backend.memory.programmed(),
        )
    }

    /// `call` must fail with `code` and a message containing `needle`, and change nothing.
    async fn refused<F, Fut, T>(&mut self, code: Code, needle: &str, call: F)
    where
        F: FnOnce(DataplaneClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
        T: std::fmt::Debug,
    {
        let before = self.snapshot().await;
        let result = call(self.dp.clone()).await;
        match result {
            Ok(v) => panic!("expected {code:?} containing {needle:?}, got Ok({v:?})"),
            Err(s) => {
                assert_eq!(s.code(), code, "{s:?}");
                assert!(
                    s.message().contains(needle),
                    "want {needle:?} in {:?}",
                    s.message()
                );
            }
        }
        assert_eq!(
            self.snapshot().await,
            before,
            "a refused call changed state"
        );
    }
}

async fn add_err(p: PodSteering, mut c: DataplaneClient<Channel>) -> Result<(), tonic::Status> {
    c.add_pod(AddPodRequest { pod: Some(p) }).await.map(|_| ())
}

async fn set_err(n: NodeNetwork, mut c: DataplaneClient<Channel>) -> Result<(), tonic::Status> {
    c.set_node_network(SetNodeNetworkRequest { network: Some(n) })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn node_network_round_trip_and_status() {
    let mut s = start().await;
    assert_eq!(s.get_network().await, None);
    let st = s
        .status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.component, "dataplane");
    assert_eq!(st.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(st.node, "node-1");
    assert!(!st.ready);
    assert_eq!(st.reason, "node network not set (SetNodeNetwork)");
    assert_eq!(st.config_version, 0);
    assert_eq!(
        st.details.get("representors").map(String::as_str),
        Some("4")
    );

    assert!(s.set_network(network()).await.unwrap());
    // Defaults are filled in and reported.
    let mut effective = network();
    effective.vni = 4242;
    effective.gateway_ip = "10.244.1.1".into();
    assert_eq!(s.get_network().await, Some(effective.clone()));
    // The same network again changes nothing.
    assert!(!s.set_network(network()).await.unwrap());
    assert_eq!(s.backend.memory.programmed().calls, 1);

    // Overlay with an explicit gateway and VNI.
    let mut overlay = network();
    overlay.mode = NetworkMode::Overlay.into();
    overlay.vni = 77;
    overlay.gateway_ip = "10.244.1.254".into();
    assert!(s.set_network(overlay.clone()).await.unwrap());
    assert_eq!(s.get_network().await, Some(overlay));
    let programmed = s.backend.memory.programmed().network.unwrap();
    assert_eq!(programmed.vni, 77);
    assert_eq!(programmed.gateway.to_string(), "10.244.1.254");

    let st = s
        .status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.ready, "{st:?}");
    assert_eq!(st.reason, "");
    assert_eq!(st.config_version, 2);
    assert_eq!(
        st.details.get("network_mode").map(String::as_str),
        Some("overlay")
    );
    assert_eq!(st.details.get("pods").map(String::as_str), Some("0"));
    assert_eq!(st.details.get("backend").map(String::as_str), Some("flaky"));
}

#[tokio::test]
async fn node_network_errors() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();

    type Edit = fn(&mut NodeNetwork);
    let cases: Vec<(Edit, &str)> = vec![
        (|n| n.mode = 0, "network.mode: unspecified (want UNDERLAY or OVERLAY)"),
        (|n| n.mode = 7, "network.mode: unknown network mode 7"),
        (|n| n.pod_cidr = "10.244.1.0/33".into(), r#"network.pod_cidr: "10.244.1.0/33" is not a CIDR"#),
        (|n| n.pod_cidr = "".into(), "network.pod_cidr: required"),
        (
            |n| n.pod_cidr = "10.244.1.7/24".into(),
            r#"network.pod_cidr: "10.244.1.7/24" has host bits set (did you mean 10.244.1.0/24?)"#,
        ),
        (|n| n.pod_cidr = "10.244.1.0/31".into(), "network.pod_cidr: 10.244.1.0/31 is too small"),
        (
            |n| n.gateway_ip = "10.244.9.1".into(),
            "network.gateway_ip: 10.244.9.1 is not a host address of the pod CIDR 10.244.1.0/24",
        ),
        (
            |n| n.service_cidrs.push("10.244.0.0/16".into()),
            "network.service_cidrs[1]: 10.244.0.0/16 overlaps the pod CIDR 10.244.1.0/24",
        ),
        (|n| n.service_cidrs[0] = "10.96.0.0".into(), r#"network.service_cidrs[0]: "10.96.0.0" is not a CIDR"#),
        (|n| n.underlay_ip = "192.0.2.x".into(), r#"network.underlay_ip: "192.0.2.x" is not an IP address"#),
        (|n| n.underlay_ip = "".into(), "network.underlay_ip: required"),
        (|n| n.vni = 1 << 24, "network.vni: 16777216 is not a VXLAN id"),
        (
            |n| n.node_name = "node-9".into(),
            r#"network.node_name: "node-9" is not this dataplane's node "node-1""#,
        ),
        (
            |n| n.peers[0].pod_cidr = "10.244.1.128/25".into(),
            "network.peers[0].pod_cidr: 10.244.1.128/25 overlaps this node's pod CIDR 10.244.1.0/24",
        ),
        (
            |n| n.peers[1].pod_cidr = "10.244.0.0/16".into(),
            "network.peers[1].pod_cidr: 10.244.0.0/16 overlaps network.peers[0].pod_cidr 10.244.2.0/24 (node \"node-2\")",
        ),
        (|n| n.peers[1].underlay_ip = "nope".into(), r#"network.peers[1].underlay_ip: "nope" is not an IP address"#),
        (
            |n| n.peers[0].underlay_ip = "192.0.2.11".into(),
            "network.peers[0].underlay_ip: 192.0.2.11 is this node's own underlay_ip",
        ),
        (|n| n.peers[1].name = "node-2".into(), r#"network.peers[1].name: "node-2" is also network.peers[0]"#),
        (|n| n.peers[1].name = "".into(), "network.peers[1].name: required"),
        (
            |n| n.pod_cidr = "10.244.1.0/24,10.245.1.0/24".into(),
            "network.pod_cidr: 10.244.1.0/24 and 10.245.1.0/24 are of one IP family",
        ),
        (
            |n| n.pod_cidr = "10.244.1.0/24,fd00:1::/64,fd00:2::/64".into(),
            "network.pod_cidr: \"10.244.1.0/24,fd00:1::/64,fd00:2::/64\": at most two CIDRs",
        ),
        (
            |n| n.gateway_ip = "fd00:1::1".into(),
            "network.gateway_ip: fd00:1::1: one gateway per pod CIDR, of its IP family",
        ),
        (
            |n| {
                n.pod_cidr = "10.244.1.0/24,fd00:10:244:2::/64".into();
                n.peers[0].pod_cidr = "10.244.2.0/24,fd00:10:244:2::/64".into();
            },
            "network.peers[0].pod_cidr: fd00:10:244:2::/64 overlaps this node's pod CIDR fd00:10:244:2::/64",
        ),
    ];
    for (edit, needle) in cases {
        let mut n = network();
        n.gateway_ip = String::new();
        edit(&mut n);
        s.refused(Code::InvalidArgument, needle, |c| set_err(n, c))
            .await;
    }

    // Every problem of one request is reported, not just the first.
    let mut n = network();
    n.mode = 9;
    n.underlay_ip = "x".into();
    s.refused(
        Code::InvalidArgument,
        r#"network.mode: unknown network mode 9; network.underlay_ip: "x" is not an IP address"#,
        |c| set_err(n, c),
    )
    .await;
    s.refused(
        Code::InvalidArgument,
        "network: required",
        |mut c| async move {
            c.set_node_network(SetNodeNetworkRequest { network: None })
                .await
        },
    )
    .await;
}

#[tokio::test]
async fn add_pod_round_trip_idempotence_and_listing() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    assert!(s.add(pod(2)).await.unwrap());
    assert!(s.add(pod(1)).await.unwrap());
    let mut other_ns = pod(3);
    other_ns.namespace = "alpha".into();
    assert!(s.add(other_ns.clone()).await.unwrap());

    // Sorted by namespace, then name.
    let listed = s.list().await;
    assert_eq!(listed, vec![other_ns, pod(1), pod(2)]);

    // The identical spec again: OK, nothing changes.
    let calls = s.backend.memory.programmed().calls;
    assert!(!s.add(pod(1)).await.unwrap());
    assert_eq!(s.backend.memory.programmed().calls, calls);

    // Normalised on the way in: an upper-case MAC and an omitted representor.
    let mut loose = pod(0);
    loose.mac = "02:00:0A:F4:01:0A".into();
    loose.representor = String::new();
    assert!(s.add(loose).await.unwrap());
    let listed = s.list().await;
    let p0 = listed.iter().find(|p| p.pod_uid == "uid-0").unwrap();
    assert_eq!(p0, &pod(0));
    assert!(
        !s.add(pod(0)).await.unwrap(),
        "same spec after normalisation"
    );

    // The backend holds exactly what the API lists.
    let programmed = s.backend.memory.programmed();
    assert_eq!(programmed.pods.len(), 4);
    let entry = &programmed.pods["uid-2"];
    assert_eq!(entry.representor, "pf0vf2");
    assert_eq!(
        entry.ips,
        vec!["10.244.1.12".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(entry.interception.exclude_inbound_ports, vec![15021]);

    let st = s
        .status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.details.get("pods").map(String::as_str), Some("4"));
}

#[tokio::test]
async fn add_pod_before_node_network_fails_precondition() {
    let mut s = start().await;
    s.refused(
        Code::FailedPrecondition,
        "node network not set: SetNodeNetwork must succeed before AddPod",
        |c| add_err(pod(1), c),
    )
    .await;
}

#[tokio::test]
async fn add_pod_invalid_arguments() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    s.add(pod(1)).await.unwrap();

    type Edit = fn(&mut PodSteering);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |p| p.ips = vec!["10.244.1.20".into(), "10.1.1.x".into()],
            r#"pod.ips[1]: "10.1.1.x" is not an IP address"#,
        ),
        (
            |p| p.ips.clear(),
            "pod.ips: at least one IP address is required",
        ),
        (
            |p| p.ips = vec!["10.244.1.20".into(), "10.244.1.20".into()],
            "pod.ips[1]: 10.244.1.20 repeats pod.ips[0]",
        ),
        (
            |p| p.ips[0] = "10.9.0.5".into(),
            "pod.ips[0]: 10.9.0.5 is outside the node's pod CIDR 10.244.1.0/24",
        ),
        (
            |p| p.ips[0] = "fd00::5".into(),
            "pod.ips[0]: fd00::5 is outside the node's pod CIDR 10.244.1.0/24",
        ),
        (
            |p| p.ips[0] = "10.244.1.1".into(),
            "pod.ips[0]: 10.244.1.1 is the pods' gateway of 10.244.1.0/24",
        ),
        (
            |p| p.ips[0] = "10.244.1.0".into(),
            "pod.ips[0]: 10.244.1.0 is the network address of 10.244.1.0/24",
        ),
        (
            |p| p.ips[0] = "10.244.1.255".into(),
            "pod.ips[0]: 10.244.1.255 is the broadcast address of 10.244.1.0/24",
        ),
        (
            |p| p.mac = "02:00:0a:f4:01".into(),
            r#"pod.mac: "02:00:0a:f4:01" is not a MAC address (want aa:bb:cc:dd:ee:ff)"#,
        ),
        (
            |p| p.mac = "01:00:5e:00:00:01".into(),
            r#"pod.mac: "01:00:5e:00:00:01" is a multicast MAC address"#,
        ),
        (
            |p| p.mac = "00:00:00:00:00:00".into(),
            "is the all-zero MAC address",
        ),
        (|p| p.mac = String::new(), "pod.mac: required"),
        (|p| p.pod_uid = String::new(), "pod.pod_uid: required"),
        (|p| p.ifname = String::new(), "must be given together"),
        (
            |p| p.representor = "pf0vf3".into(),
            r#"pod.representor: "pf0vf3" is the representor of VF 3, not of vf_index 2"#,
        ),
        (
            |p| p.interception.as_mut().unwrap().capture_inbound_ports = vec![80, 70000],
            "pod.interception.capture_inbound_ports[1]: 70000 is not a port (1-65535)",
        ),
        (
            |p| p.interception.as_mut().unwrap().exclude_outbound_ports = vec![0],
            "pod.interception.exclude_outbound_ports[0]: 0 is not a port (1-65535)",
        ),
        (
            |p| {
                p.interception.as_mut().unwrap().capture_outbound_cidrs =
                    vec!["10.96.0.0/99".into()]
            },
            r#"pod.interception.capture_outbound_cidrs[0]: "10.96.0.0/99" is not a CIDR"#,
        ),
    ];
    for (edit, needle) in cases {
        let mut p = pod(2);
        edit(&mut p);
        s.refused(Code::InvalidArgument, needle, |c| add_err(p, c))
            .await;
    }
    s.refused(Code::InvalidArgument, "pod: required", |mut c| async move {
        c.add_pod(AddPodRequest { pod: None }).await
    })
    .await;
    // The same errors also refuse a change to an already registered pod.
    let mut p = pod(1);
    p.mac = "zz".into();
    s.refused(Code::InvalidArgument, r#"pod.mac: "zz""#, |c| add_err(p, c))
        .await;
    assert_eq!(s.list().await, vec![pod(1)]);
}

#[tokio::test]
async fn add_pod_unknown_representor_is_not_found() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    let mut p = pod(9);
    p.ips[0] = "10.244.1.50".into();
    s.refused(
        Code::NotFound,
        r#"pod.representor: "pf0vf9" (VF 9) is not a representor on this DPU (present: pf0vf0, pf0vf1, pf0vf2, pf0vf3)"#,
        |c| add_err(p, c),
    )
    .await;
}

#[tokio::test]
async fn add_pod_conflicts_already_exist() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    s.add(pod(1)).await.unwrap();

    let mut same_ip = pod(2);
    same_ip.ips = vec!["10.244.1.30".into(), "10.244.1.11".into()];
    s.refused(
        Code::AlreadyExists,
        "pod.ips[1]: 10.244.1.11 is already used by pod default/pod-1 (uid uid-1)",
        |c| add_err(same_ip, c),
    )
    .await;

    let mut same_vf = pod(2);
    same_vf.vf_index = 1;
    same_vf.representor = "pf0vf1".into();
    s.refused(
        Code::AlreadyExists,
        "pod.vf_index: VF 1 (pf0vf1) is already used by pod default/pod-1 (uid uid-1)",
        |c| add_err(same_vf, c),
    )
    .await;

    let mut same_attachment = pod(2);
    same_attachment.container_id = "ctr-1".into();
    s.refused(
        Code::AlreadyExists,
        "pod.container_id: attachment ctr-1/eth0 is already used by pod default/pod-1",
        |c| add_err(same_attachment, c),
    )
    .await;
}

#[tokio::test]
async fn re_adding_a_pod_uid_with_another_spec_replaces_it() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    s.add(pod(1)).await.unwrap();

    // A new sandbox of the same pod: new container, new VF, new IP.
    let mut again = pod(1);
    again.container_id = "ctr-1b".into();
    again.vf_index = 3;
    again.representor = "pf0vf3".into();
    again.ips = vec!["10.244.1.99".into()];
    assert!(s.add(again.clone()).await.unwrap());
    assert_eq!(s.list().await, vec![again.clone()]);
    assert_eq!(s.backend.memory.programmed().pods["uid-1"].vf_index, 3);

    // A late DEL of the old sandbox does not remove the new one.
    let r = s
        .remove(RemovePodRequest {
            pod_uid: String::new(),
            container_id: "ctr-1".into(),
            ifname: "eth0".into(),
        })
        .await
        .unwrap();
    assert!(!r.removed);
    assert_eq!(s.list().await, vec![again.clone()]);

    // The old VF and IP are free again.
    let mut other = pod(1);
    other.pod_uid = "uid-other".into();
    other.container_id = "ctr-other".into();
    assert!(s.add(other).await.unwrap());
}

#[tokio::test]
async fn remove_pod_by_uid_or_attachment() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    for n in 0..3 {
        s.add(pod(n)).await.unwrap();
    }

    let r = s
        .remove(RemovePodRequest {
            pod_uid: "uid-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.removed);
    assert_eq!(r.pod, Some(pod(1)));

    let r = s
        .remove(RemovePodRequest {
            pod_uid: String::new(),
            container_id: "ctr-2".into(),
            ifname: "eth0".into(),
        })
        .await
        .unwrap();
    assert!(r.removed);
    assert_eq!(r.pod, Some(pod(2)));
    assert_eq!(s.list().await, vec![pod(0)]);
    assert_eq!(
        s.backend
            .memory
            .programmed()
            .pods
            .keys()
            .collect::<Vec<_>>(),
        ["uid-0"]
    );

    // Unknown pods: OK, removed=false, nothing changes (DEL is idempotent).
    for unknown in [
        RemovePodRequest {
            pod_uid: "uid-1".into(),
            ..Default::default()
        },
        RemovePodRequest {
            pod_uid: String::new(),
            container_id: "ctr-0".into(),
            ifname: "net1".into(),
        },
    ] {
        let before = s.snapshot().await;
        let r = s.remove(unknown).await.unwrap();
        assert!(!r.removed);
        assert_eq!(r.pod, None);
        assert_eq!(s.snapshot().await, before);
    }

    s.refused(
        Code::InvalidArgument,
        "pod_uid: empty",
        |mut c| async move {
            c.remove_pod(RemovePodRequest {
                pod_uid: String::new(),
                container_id: "ctr-0".into(),
                ifname: String::new(),
            })
            .await
        },
    )
    .await;
}

#[tokio::test]
async fn node_network_change_may_not_orphan_a_pod() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    s.add(pod(1)).await.unwrap();

    let mut moved = network();
    moved.pod_cidr = "10.244.7.0/24".into();
    s.refused(
        Code::FailedPrecondition,
        "network.pod_cidr: registered pod default/pod-1 (uid uid-1) has IP 10.244.1.11, which is outside the node's pod CIDR 10.244.7.0/24",
        |c| set_err(moved.clone(), c),
    )
    .await;

    let mut gateway_on_pod = network();
    gateway_on_pod.gateway_ip = "10.244.1.11".into();
    s.refused(
        Code::FailedPrecondition,
        "has IP 10.244.1.11, which is the pods' gateway",
        |c| set_err(gateway_on_pod, c),
    )
    .await;

    // Once the pod is gone the network may move.
    s.remove(RemovePodRequest {
        pod_uid: "uid-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(s.set_network(moved).await.unwrap());
}

#[tokio::test]
async fn backend_failure_is_internal_and_changes_nothing() {
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    s.add(pod(1)).await.unwrap();
    s.backend.fail.store(true, Ordering::SeqCst);

    s.refused(Code::Internal, "steering backend: map full", |c| {
        add_err(pod(2), c)
    })
    .await;
    let mut changed = network();
    changed.vni = 9;
    s.refused(Code::Internal, "steering backend: map full", |c| {
        set_err(changed, c)
    })
    .await;
    s.refused(
        Code::Internal,
        "steering backend: map full",
        |mut c| async move {
            c.remove_pod(RemovePodRequest {
                pod_uid: "uid-1".into(),
                ..Default::default()
            })
            .await
        },
    )
    .await;

    let st = s
        .status
        .get_status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.ready);
    assert_eq!(st.reason, "backend flaky: map full");

    s.backend.fail.store(false, Ordering::SeqCst);
    assert!(s.add(pod(2)).await.unwrap());
}

/// The real binary, killed when dropped.
struct Dataplane(Child);

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn real_binary_serves_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_dpumesh-dataplane"))
        .args([
            "--backend",
            "memory",
            "--mgmt-addr",
            &addr,
            "--node",
            "node-1",
            "--representors",
            "pf0vf0,pf0vf1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dp = Dataplane(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match client::connect(&addr).await {
            Ok(c) => break c,
            Err(e) => {
                if let Some(status) = dp.0.try_wait().unwrap() {
                    panic!("dataplane exited early with {status}");
                }
                assert!(Instant::now() < deadline, "dataplane never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut c = DataplaneClient::new(channel);
    c.set_node_network(SetNodeNetworkRequest {
        network: Some(network()),
    })
    .await
    .unwrap();
    c.add_pod(AddPodRequest { pod: Some(pod(1)) })
        .await
        .unwrap();
    let err = c
        .add_pod(AddPodRequest { pod: Some(pod(2)) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let pods = c
        .list_pods(ListPodsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(pods, vec![pod(1)]);
    let st = client::status(&addr).await.unwrap();
    assert_eq!(
        (st.component.as_str(), st.node.as_str()),
        ("dataplane", "node-1")
    );
    assert!(st.ready);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dp.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = dp.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dataplane did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status}");
}

/// A network namespace named for this test (made by the simulator library,
/// the project's one topology builder), deleted when dropped.
struct Netns(dpumesh_sim::Netns);

impl Netns {
    fn create(name: String) -> Netns {
        let ns = dpumesh_sim::Netns::new(name);
        ns.delete().expect("remove a leftover namespace");
        Netns(dpumesh_sim::Netns::create(ns.name()).expect("create namespace"))
    }

    fn ip(&self, args: &[&str]) {
        self.0
            .exec("ip", args)
            .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e}", self.0.name()));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

/// `--representors auto`: the registry finds the `pf<P>vf<N>` netdevs of the
/// network namespace it runs in, including ones created after it started.
#[test]
fn discovered_representors_come_from_the_netns() {
    let ns = Netns::create(format!("dm-ctl{}-dpu", std::process::id()));
    // VFs are veth pairs in the simulator: the representor and the VF end.
    ns.ip(&[
        "link", "add", "pf0vf3", "type", "veth", "peer", "name", "vf3",
    ]);
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "n1"]);

    // The listener is made here, in the test's netns, so the client can
    // reach it; the server then runs on a thread that entered the DPU netns.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let netns_path = ns.0.path();
    let server = std::thread::spawn(move || {
        let file = std::fs::File::open(netns_path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let registry = PodRegistry::new("node-1", Representors::Discover, MemoryBackend::new());
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            control::serve(listener, ControlState::new(Arc::new(registry)), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut c = client::dataplane(&addr).await.unwrap();
        c.set_node_network(SetNodeNetworkRequest {
            network: Some(network()),
        })
        .await
        .unwrap();
        c.add_pod(AddPodRequest { pod: Some(pod(3)) })
            .await
            .unwrap();
        let err = c
            .add_pod(AddPodRequest { pod: Some(pod(2)) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(
            err.message().ends_with("(present: pf0vf3)"),
            "{}",
            err.message()
        );
        // A VF whose representor appears later is found without a restart.
        ns.ip(&[
            "link", "add", "pf0vf2", "type", "veth", "peer", "name", "vf2",
        ]);
        c.add_pod(AddPodRequest { pod: Some(pod(2)) })
            .await
            .unwrap();
        let st = client::status(&addr).await.unwrap();
        assert_eq!(
            st.details.get("representors").map(String::as_str),
            Some("2")
        );
    });
    // Dropping the client runtime closes its connections, which the
    // server's graceful shutdown waits for.
    drop(runtime);
    let _ = stop.send(());
    server.join().unwrap();
}

#[tokio::test]
async fn dual_stack_pod_cidrs_and_pod_ips() {
    let mut s = start().await;
    let mut n = network();
    n.pod_cidr = "10.244.1.0/24,fd00:10:244:1::/64".into();
    n.peers[0].pod_cidr = "10.244.2.0/24,fd00:10:244:2::/64".into();
    assert!(s.set_network(n.clone()).await.unwrap());
    let mut effective = n.clone();
    effective.vni = 4242;
    effective.gateway_ip = "10.244.1.1,fd00:10:244:1::1".into();
    assert_eq!(s.get_network().await, Some(effective));
    let programmed = s.backend.memory.programmed().network.unwrap();
    assert_eq!(
        programmed
            .secondary
            .map(|(c, g)| (c.to_string(), g.to_string())),
        Some(("fd00:10:244:1::/64".into(), "fd00:10:244:1::1".into()))
    );
    assert_eq!(
        programmed.peers[0]
            .pod_cidr_secondary
            .map(|c| c.to_string()),
        Some("fd00:10:244:2::/64".into())
    );

    // A given IPv6 gateway must lie in the IPv6 pod CIDR.
    let mut bad = n.clone();
    bad.gateway_ip = "10.244.1.1,fd00:9::1".into();
    s.refused(
        Code::InvalidArgument,
        "network.gateway_ip: fd00:9::1 is not a host address of the pod CIDR fd00:10:244:1::/64",
        |c| set_err(bad, c),
    )
    .await;
    let mut custom = n.clone();
    custom.gateway_ip = "fd00:10:244:1::fe".into();
    assert!(s.set_network(custom).await.unwrap());
    assert_eq!(
        s.get_network().await.unwrap().gateway_ip,
        "10.244.1.1,fd00:10:244:1::fe"
    );
    assert!(s.set_network(n.clone()).await.unwrap());

    // A dual-stack pod: one address of each family.
    let mut p = pod(1);
    p.ips.push("fd00:10:244:1::b".into());
    assert!(s.add(p.clone()).await.unwrap());
    assert_eq!(s.list().await, vec![p]);

    // An IPv6 address outside the IPv6 pod CIDR, or its gateway, is refused.
    let mut p = pod(2);
    p.ips.push("fd00:10:244:9::b".into());
    s.refused(
        Code::InvalidArgument,
        "pod.ips[1]: fd00:10:244:9::b is outside the node's pod CIDR 10.244.1.0/24,fd00:10:244:1::/64",
        |c| add_err(p, c),
    )
    .await;
    let mut p = pod(2);
    p.ips.push("fd00:10:244:1::1".into());
    s.refused(
        Code::InvalidArgument,
        "pod.ips[1]: fd00:10:244:1::1 is the pods' gateway of fd00:10:244:1::/64",
        |c| add_err(p, c),
    )
    .await;

    // Without an IPv6 pod CIDR, IPv6 pod addresses are refused.
    let mut s = start().await;
    s.set_network(network()).await.unwrap();
    let mut p = pod(3);
    p.ips.push("fd00:10:244:1::c".into());
    s.refused(
        Code::InvalidArgument,
        "pod.ips[1]: fd00:10:244:1::c is outside the node's pod CIDR 10.244.1.0/24",
        |c| add_err(p, c),
    )
    .await;
}

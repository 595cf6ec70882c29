//! The real client: containerd's CRI plugin (Debian's containerd 1.6 + runc)
//! invokes dpumesh-cni exactly as it does for kubelet. The test drives
//! RunPodSandbox / StopPodSandbox / RemovePodSandbox over the CRI v1 gRPC API
//! and checks the pod netns, host-local's leases and the dataplane's registry.
//!
//! containerd runs inside the simulated node's host netns (so the VFs are
//! there), in its own mount namespace, with config, root, state and socket under
//! a tempdir; the CNI dirs are written by the real installer.

mod common;
mod cri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dpumesh_api::proto::v1::{
    ListPodsRequest, NetworkMode, NodeNetwork, PodSteering, SetNodeNetworkRequest,
};
use dpumesh_sim::{Netns, Place, SimConfig, SimGuard, SpawnSpec};
use k8s_cri::v1 as cri_api;
use serde_json::Value;

use common::{DataplaneServer, CNI, PLUGINS};
use cri::{sh, Containerd, PAUSE_IMAGE};

const INSTALLER: &str = env!("CARGO_BIN_EXE_dpumesh-cni-install");
const DATAPLANE_ADDR: &str = "192.168.100.2:15081";

/// The dataplane of node 1: the real `dpumesh-dataplane` binary in the DPU
/// netns when it is built (`cargo build -p dpumesh-dataplane`, or any
/// workspace-wide build), else the same control server in-process.
enum Dataplane {
    Binary,
    InProcess(#[allow(dead_code)] DataplaneServer),
}

fn dataplane_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DPUMESH_DATAPLANE_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/containerd-<hash> → target/<profile>/dpumesh-dataplane
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("dpumesh-dataplane");
    p.exists().then_some(p)
}

/// Runs `f` on a current-thread runtime on a thread inside `ns`.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .expect("netns")
}

fn start_dataplane(sim: &SimGuard) -> Dataplane {
    let node = sim.node(1).expect("node 1");
    let Some(bin) = dataplane_binary() else {
        eprintln!("dpumesh-dataplane not built: serving the control API in-process");
        return Dataplane::InProcess(DataplaneServer::start(
            &node.dpu,
            &node.pod_cidr.to_string(),
        ));
    };
    let spec = SpawnSpec::new(
        "dataplane-n1",
        node.netns(Place::Dpu).clone(),
        bin.display().to_string(),
    )
    .args(["--node", "node1", "--mgmt-addr", DATAPLANE_ADDR])
    .health(DATAPLANE_ADDR);
    sim.spawn_with(spec).expect("spawn dataplane");
    let cidr = node.pod_cidr.to_string();
    let log = sim.log_path("dataplane-n1");
    in_netns(&node.host, move || {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut client = loop {
                match dpumesh_api::client::dataplane(DATAPLANE_ADDR).await {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "dataplane not reachable: {e}; log: {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            client
                .set_node_network(SetNodeNetworkRequest {
                    network: Some(NodeNetwork {
                        node_name: "node1".into(),
                        mode: NetworkMode::Underlay as i32,
                        pod_cidr: cidr,
                        service_cidrs: vec!["10.96.0.0/16".into()],
                        underlay_ip: "192.0.2.11".into(),
                        vni: 0,
                        peers: vec![],
                        gateway_ip: String::new(),
                    }),
                })
                .await
                .expect("SetNodeNetwork");
        })
    });
    Dataplane::Binary
}

fn dp_pods(host: &Netns) -> Vec<PodSteering> {
    in_netns(host, || {
        Box::pin(async {
            let mut c = dpumesh_api::client::dataplane(DATAPLANE_ADDR)
                .await
                .expect("dataplane");
            c.list_pods(ListPodsRequest {})
                .await
                .expect("ListPods")
                .into_inner()
                .pods
        })
    })
}

fn host_vfs(host: &Netns) -> Vec<String> {
    let mut v: Vec<String> = host
        .links()
        .expect("links")
        .into_iter()
        .filter(|l| l.starts_with("vf"))
        .collect();
    v.sort();
    v
}

fn leases(ipam_dir: &Path, network: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ipam_dir.join(network))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `ip -j <args>` inside the netns of process `pid`.
fn ip_in_pid(pid: u64, args: &[&str]) -> Value {
    let out = sh(Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-j"])
        .args(args));
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

async fn wait_image(c: &Containerd) {
    let mut images = c.images().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = images
            .image_status(cri_api::ImageStatusRequest {
                image: Some(cri_api::ImageSpec {
                    image: PAUSE_IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus");
        if r.into_inner().image.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRI never saw the imported pause image"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_network_ready(
    rt: &mut cri_api::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = rt
            .status(cri_api::StatusRequest { verbose: true })
            .await
            .expect("Status")
            .into_inner();
        let conds = st.status.map(|s| s.conditions).unwrap_or_default();
        if conds.iter().any(|c| c.r#type == "NetworkReady" && c.status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRI network never ready: {conds:?} {:?}",
            st.info
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sandbox_config(name: &str, uid: &str, log_dir: &Path) -> cri_api::PodSandboxConfig {
    cri_api::PodSandboxConfig {
        metadata: Some(cri_api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "shop".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(cri_api::LinuxPodSandboxConfig {
            security_context: Some(cri_api::LinuxSandboxSecurityContext {
                namespace_options: Some(cri_api::NamespaceOption {
                    network: cri_api::NamespaceMode::Pod as i32,
                    pid: cri_api::NamespaceMode::Container as i32,
                    ipc: cri_api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn containerd_cri_runs_the_plugin_like_kubelet() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("cri"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let _dataplane = start_dataplane(&sim);

    let work = tempfile::tempdir().expect("tempdir");
    let t = work.path();
    let (bin, conf, ipam, state, logs) = (
        t.join("cni-bin"),
        t.join("cni-conf"),
        t.join("ipam"),
        t.join("cni-state"),
        t.join("pod-logs"),
    );
    for d in [&bin, &conf, &logs] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // The CNI dirs, as the DaemonSet's installer writes them on a node.
    sh(Command::new(INSTALLER)
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--plugin-binary")
        .arg(CNI)
        .args([
            "--vf-backend",
            "sim",
            "--pod-cidr",
            &node.pod_cidr.to_string(),
            "--dataplane",
            DATAPLANE_ADDR,
            "--mtu",
            "1450",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--ipam-data-dir")
        .arg(&ipam));
    for p in ["host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new(PLUGINS).join(p), bin.join(p)).expect("symlink");
    }
    let image = cri::build_pause_image(t);

    let ctrd_dir = t.join("containerd");
    std::fs::create_dir_all(&ctrd_dir).expect("mkdir");
    let mut ctrd = Containerd::start(&ctrd_dir, &bin, &conf, &node.host);
    ctrd.import(&image);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let host = node.host.clone();
    rt.block_on(async {
        wait_image(&ctrd).await;
        let mut crt = ctrd.runtime().await;
        wait_network_ready(&mut crt).await;

        // RunPodSandbox: containerd makes the netns, runs loopback and our conflist.
        let t0 = Instant::now();
        let run = crt
            .run_pod_sandbox(cri_api::RunPodSandboxRequest {
                config: Some(sandbox_config("web-0", "uid-web-0", &logs)),
                runtime_handler: String::new(),
            })
            .await;
        let id = match run {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\ncontainerd log:\n{}", ctrd.log_tail()),
        };
        eprintln!("RunPodSandbox took {:?}", t0.elapsed());

        let st = crt
            .pod_sandbox_status(cri_api::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let status = st.status.expect("status");
        assert_eq!(status.state, cri_api::PodSandboxState::SandboxReady as i32);
        let pod_ip: std::net::IpAddr = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default()
            .parse()
            .expect("CRI reports the pod IP");
        assert!(node.pod_cidr.contains(&match pod_ip {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => panic!("v6 pod IP {pod_ip}"),
        }));
        let info: Value =
            serde_json::from_str(st.info.get("info").expect("verbose info")).expect("info JSON");
        let pid = info["pid"].as_u64().expect("sandbox pid");

        // The pod netns: the VF as eth0 (its alias names the VF), MTU, the IP, default route.
        let links = ip_in_pid(pid, &["link", "show", "eth0"]);
        let eth0 = &links[0];
        let alias = eth0["ifalias"].as_str().unwrap_or_default().to_string();
        assert!(
            alias.starts_with(&format!("dm-{}-n1-vf", sim.cluster())),
            "eth0 is not a VF of node 1: {eth0}"
        );
        let vf_name = format!("vf{}", alias.rsplit("-vf").next().expect("vf index"));
        assert_eq!(eth0["mtu"], 1450);
        let addrs = ip_in_pid(pid, &["addr", "show", "eth0"]);
        let has_ip = addrs[0]["addr_info"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["local"] == pod_ip.to_string() && i["prefixlen"] == 24)
        });
        assert!(has_ip, "eth0 lacks {pod_ip}/24: {addrs}");
        let routes = ip_in_pid(pid, &["route", "show", "default"]);
        assert_eq!(
            routes[0]["gateway"],
            node.pod_gateway.to_string(),
            "{routes}"
        );
        // The VF left the host netns; host-local holds the lease; the dataplane has the pod.
        assert!(
            !host_vfs(&host).contains(&vf_name),
            "{vf_name} still in the host"
        );
        assert_eq!(leases(&ipam, "dpumesh"), vec![pod_ip.to_string()]);
        let pods = dp_pods(&host);
        assert_eq!(pods.len(), 1, "{pods:?}");
        let p = &pods[0];
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str(), p.pod_uid.as_str()),
            ("web-0", "shop", "uid-web-0")
        );
        assert_eq!(p.container_id, id);
        assert_eq!(p.ifname, "eth0");
        assert_eq!(p.ips, vec![pod_ip.to_string()]);
        assert_eq!(p.representor, vf_name.replace("vf", "pf0vf"));

        // A second pod takes the other VF.
        let id2 = crt
            .run_pod_sandbox(cri_api::RunPodSandboxRequest {
                config: Some(sandbox_config("web-1", "uid-web-1", &logs)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox 2: {e}\n{}", ctrd.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        assert!(host_vfs(&host).is_empty());
        assert_eq!(dp_pods(&host).len(), 2);
        assert_eq!(leases(&ipam, "dpumesh").len(), 2);

        // StopPodSandbox: CNI DEL. VF back in the host, lease and entry gone.
        for sid in [&id, &id2] {
            crt.stop_pod_sandbox(cri_api::StopPodSandboxRequest {
                pod_sandbox_id: sid.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", ctrd.log_tail()));
        }
        assert_eq!(host_vfs(&host), vec!["vf0", "vf1"]);
        assert!(leases(&ipam, "dpumesh").is_empty());
        assert!(dp_pods(&host).is_empty());

        // RemovePodSandbox: gone from the runtime.
        for sid in [&id, &id2] {
            crt.remove_pod_sandbox(cri_api::RemovePodSandboxRequest {
                pod_sandbox_id: sid.clone(),
            })
            .await
            .expect("RemovePodSandbox");
        }
        let left = crt
            .list_pod_sandbox(cri_api::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(left.is_empty(), "{left:?}");
        // No claim left in the plugin's state dir.
        let claims = std::fs::read_dir(state.join("vfs"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(claims, 0);
    });

    ctrd.stop();
    // containerd's mounts lived in its own mount namespace only.
    assert!(
        cri::mounts_under(t).is_empty(),
        "{:?}",
        cri::mounts_under(t)
    );
    // The installer takes itself out again.
    sh(Command::new(INSTALLER)
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--uninstall"));
    assert!(!bin.join("dpumesh-cni").exists());
}

//! Shared fixtures: a one-node simulator cluster, the real dataplane control
//! server running in its DPU netns, and the plugin exec'd as a runtime does.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use dpumesh_api::proto::v1::{NetworkMode, NodeNetwork};
use dpumesh_dataplane::control::{self, ControlState};
use dpumesh_dataplane::registry::{MemoryBackend, PodEntry, PodRegistry, Representors};
use dpumesh_sim::{unique_cluster, Netns, SimConfig, SimGuard};
use serde_json::{json, Value};

pub const CNI: &str = env!("CARGO_BIN_EXE_dpumesh-cni");
pub const PLUGINS: &str = "/usr/lib/cni";

/// The real dataplane control server, in-process on a thread inside the DPU
/// netns, bound to the DPU management address. Stops on drop.
pub struct DataplaneServer {
    pub registry: Arc<PodRegistry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DataplaneServer {
    pub fn start(dpu: &Netns, pod_cidr: &str) -> DataplaneServer {
        let registry = Arc::new(PodRegistry::new(
            "node1",
            Representors::Discover,
            MemoryBackend::new(),
        ));
        Self::start_with(dpu, pod_cidr, registry)
    }

    /// Serves `registry` (e.g. the one of a server that was stopped: a restart).
    pub fn start_with(dpu: &Netns, pod_cidr: &str, registry: Arc<PodRegistry>) -> DataplaneServer {
        registry
            .set_node_network(Some(&NodeNetwork {
                node_name: "node1".into(),
                mode: NetworkMode::Underlay as i32,
                pod_cidr: pod_cidr.into(),
                service_cidrs: vec!["10.96.0.0/16".into()],
                underlay_ip: "192.0.2.11".into(),
                vni: 0,
                peers: vec![],
                gateway_ip: String::new(),
            }))
            .expect("node network");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = std::fs::File::open(dpu.path()).expect("dpu netns");
        let reg = registry.clone();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns dpu");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("192.168.100.2:15081")
                    .await
                    .expect("bind dataplane control");
                ready_tx.send(()).expect("ready");
                let _ = control::serve(l, ControlState::new(reg), async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        ready_rx.recv().expect("dataplane server did not start");
        DataplaneServer {
            registry,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn pods(&self) -> Vec<PodEntry> {
        self.registry.pods()
    }
}

impl Cluster {
    /// Starts the dataplane server (again), keeping `registry` if given.
    pub fn start_dataplane(&mut self, registry: Option<Arc<PodRegistry>>) {
        let n = self.sim.node(1).expect("node 1");
        let cidr = n.pod_cidr.to_string();
        self.dataplane = Some(match registry {
            Some(r) => DataplaneServer::start_with(&n.dpu, &cidr, r),
            None => DataplaneServer::start(&n.dpu, &cidr),
        });
    }

    /// Stops the dataplane server, returning its registry.
    pub fn stop_dataplane(&mut self) -> Option<Arc<PodRegistry>> {
        self.dataplane.take().map(|d| d.registry.clone())
    }

    pub fn dp_pods(&self) -> Vec<PodEntry> {
        self.dataplane.as_ref().expect("dataplane running").pods()
    }
}

impl Drop for DataplaneServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }
    /// The spec error code (panics if the call succeeded).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got success: {}", self.stdout);
        self.json()["code"].as_u64().expect("error has a code")
    }
}

pub struct Cluster {
    pub sim: SimGuard,
    pub dataplane: Option<DataplaneServer>,
    pub state_dir: tempfile::TempDir,
    pub ipam_dir: tempfile::TempDir,
    pub network: String,
    pub cni_path: Vec<PathBuf>,
    pub vfs: usize,
}

impl Cluster {
    pub fn new(prefix: &str, vfs: usize, with_dataplane: bool) -> Cluster {
        let cluster = unique_cluster(prefix);
        let sim = SimGuard::up(SimConfig::new(cluster.clone()).with_nodes(1).with_vfs(vfs))
            .expect("sim up");
        let dataplane = with_dataplane.then(|| {
            let n = sim.node(1).expect("node 1");
            DataplaneServer::start(&n.dpu, &n.pod_cidr.to_string())
        });
        Cluster {
            network: format!("net-{cluster}"),
            sim,
            dataplane,
            state_dir: tempfile::tempdir().expect("tempdir"),
            ipam_dir: tempfile::tempdir().expect("tempdir"),
            cni_path: vec![PathBuf::from(PLUGINS)],
            vfs,
        }
    }

    pub fn host(&self) -> Netns {
        self.sim.node(1).expect("node").host.clone()
    }

    pub fn dpu(&self) -> Netns {
        self.sim.node(1).expect("node").dpu.clone()
    }

    /// The network config for the sim backend; `extra` keys override.
    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": self.network,
            "type": "dpumesh-cni",
            "vfBackend": "sim",
            "stateDir": self.state_dir.path(),
            "dataplaneTimeoutMs": 500,
            "mtu": 1450,
            "interception": {"excludeInboundPorts": [15021]},
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir.path(),
                "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        c
    }

    /// Runs the plugin in the node's host netns, as the runtime on that host would.
    pub fn cni(
        &self,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        stdin: &Value,
    ) -> Out {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".to_string(), command.to_string());
        if !id.is_empty() {
            env.insert("CNI_CONTAINERID".into(), id.into());
        }
        if let Some(n) = netns {
            env.insert("CNI_NETNS".into(), n.display().to_string());
        }
        if !ifname.is_empty() {
            env.insert("CNI_IFNAME".into(), ifname.into());
        }
        env.insert(
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{id};K8S_POD_UID=uid-{id};K8S_POD_INFRA_CONTAINER_ID={id}"),
        );
        env.insert(
            "CNI_PATH".into(),
            self.cni_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        );
        self.cni_env(&env, &serde_json::to_vec(stdin).expect("json"))
    }

    pub fn spawn_cni(&self, env: &BTreeMap<String, String>, stdin: &[u8]) -> Child {
        let mut c = self.host().command(CNI);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn plugin");
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(stdin).expect("write stdin");
        drop(si);
        child
    }

    pub fn cni_env(&self, env: &BTreeMap<String, String>, stdin: &[u8]) -> Out {
        let out = self
            .spawn_cni(env, stdin)
            .wait_with_output()
            .expect("plugin ran");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Names of the `vf<k>` links in the host netns.
    pub fn host_vfs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .host()
            .links()
            .expect("links")
            .into_iter()
            .filter(|l| l.starts_with("vf"))
            .collect();
        v.sort();
        v
    }

    /// Addresses host-local holds for this network.
    pub fn ipam_leases(&self) -> Vec<String> {
        let dir = self.ipam_dir.path().join(&self.network);
        let mut v: Vec<String> = std::fs::read_dir(dir)
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

    /// Claim files in the state dir.
    pub fn claims(&self) -> usize {
        std::fs::read_dir(self.state_dir.path().join("vfs"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// `ip -j` of something inside a netns, parsed.
pub fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let out = ns.exec("ip", &a).expect("ip");
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

pub fn run_ok(c: &mut Command) {
    let s = c.status().expect("command");
    assert!(s.success(), "{c:?} failed");
}

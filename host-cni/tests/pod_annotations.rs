//! The plugin writes the pod's VF annotations through the Kubernetes API on
//! ADD and takes them off on DEL (docs/host-cni.md "Pod annotations").
//! The API server is a scripted one: real HTTP on loopback in the node's host
//! netns (where the plugin runs), holding pods and applying JSON merge
//! patches with resourceVersion preconditions, as the real one does.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use dpumesh_sim::Netns;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    authorization: String,
    body: Value,
}

#[derive(Default)]
struct ApiState {
    /// `namespace/name` → annotations.
    pods: BTreeMap<String, Map<String, Value>>,
    resource_version: u64,
    /// Answer every request with this status.
    fail_with: Option<u16>,
    seen: Vec<Seen>,
}

struct ApiServer {
    state: Arc<Mutex<ApiState>>,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn pod_json(key: &str, ann: &Map<String, Value>, rv: u64) -> Response<Full<Bytes>> {
    let (ns, name) = key.split_once('/').expect("key");
    let body = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(),
                     "annotations": ann},
        "spec": {"containers": [{"name": "app", "image": "app"}]}});
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn handle(state: &Mutex<ApiState>, seen: Seen) -> Response<Full<Bytes>> {
    let mut st = state.lock().expect("state");
    st.seen.push(seen.clone());
    if let Some(code) = st.fail_with {
        return status(code, "InternalError", "scripted failure");
    }
    let key = match seen
        .path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|r| r.split_once("/pods/"))
    {
        Some((ns, name)) => format!("{ns}/{name}"),
        None => return status(404, "NotFound", "no such path"),
    };
    let rv = st.resource_version;
    let Some(ann) = st.pods.get(&key).cloned() else {
        return status(404, "NotFound", &format!("pods {key:?} not found"));
    };
    match seen.method.as_str() {
        "GET" => pod_json(&key, &ann, rv),
        "PATCH" => {
            if seen.content_type != "application/merge-patch+json" {
                return status(415, "UnsupportedMediaType", "want a merge patch");
            }
            let meta = &seen.body["metadata"];
            if let Some(want) = meta["resourceVersion"].as_str() {
                if want != rv.to_string() {
                    return status(409, "Conflict", "the object has been modified");
                }
            }
            let mut ann = ann;
            if let Some(patch) = meta["annotations"].as_object() {
                for (k, v) in patch {
                    if v.is_null() {
                        ann.remove(k);
                    } else {
                        ann.insert(k.clone(), v.clone());
                    }
                }
            }
            st.resource_version += 1;
            let rv = st.resource_version;
            st.pods.insert(key.clone(), ann.clone());
            pod_json(&key, &ann, rv)
        }
        _ => status(405, "MethodNotAllowed", "only GET and PATCH"),
    }
}

impl ApiServer {
    /// Listens on 127.0.0.1 inside `ns`.
    fn start(ns: &Netns) -> ApiServer {
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("enter netns")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(ApiState {
            resource_version: 100,
            ..Default::default()
        }));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => {
                            let Ok((sock, _)) = acc else { continue };
                            let st = st.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                                    let st = st.clone();
                                    async move {
                                        let header = |n: &str| {
                                            req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
                                        };
                                        let method = req.method().to_string();
                                        let path = req.uri().path().to_string();
                                        let content_type = header("content-type");
                                        let authorization = header("authorization");
                                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                        let seen = Seen { method, path, content_type, authorization, body };
                                        Ok::<_, Infallible>(handle(&st, seen))
                                    }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        ApiServer {
            state,
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn add_pod(&self, namespace: &str, name: &str, ann: Value) {
        let ann = ann.as_object().cloned().unwrap_or_default();
        let mut st = self.state.lock().expect("state");
        st.pods.insert(format!("{namespace}/{name}"), ann);
        st.resource_version += 1;
    }

    fn annotations(&self, namespace: &str, name: &str) -> Map<String, Value> {
        let st = self.state.lock().expect("state");
        st.pods
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .unwrap_or_default()
    }

    fn set_annotation(&self, namespace: &str, name: &str, key: &str, value: &str) {
        let mut st = self.state.lock().expect("state");
        st.resource_version += 1;
        if let Some(a) = st.pods.get_mut(&format!("{namespace}/{name}")) {
            a.insert(key.to_string(), Value::String(value.to_string()));
        }
    }

    fn remove_pod(&self, namespace: &str, name: &str) {
        let mut st = self.state.lock().expect("state");
        st.pods.remove(&format!("{namespace}/{name}"));
    }

    fn fail_with(&self, code: Option<u16>) {
        self.state.lock().expect("state").fail_with = code;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    /// A kubeconfig for this server with a bearer token, written into `dir`.
    fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        write_kubeconfig(dir, &format!("http://127.0.0.1:{}", self.port))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("dpumesh-kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: {server}\n\
         users:\n- name: dpumesh-cni\n  user:\n    token: test-token\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: dpumesh-cni\n\
         current-context: test\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

fn k8s_conf(c: &Cluster, kubeconfig: &Path) -> Value {
    c.conf(json!({"kubernetes": {"kubeconfig": kubeconfig, "timeoutMs": 2000}}))
}

/// A one-node cluster, the scripted API server holding pod `default/pod-ctr1`,
/// a plugin config with a kubeconfig for that server, and a pod netns.
struct Fixture {
    c: Cluster,
    api: ApiServer,
    conf: Value,
    pod: Netns,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let c = Cluster::new(prefix, 2, true);
        let api = ApiServer::start(&c.host());
        api.add_pod("default", "pod-ctr1", json!({}));
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = k8s_conf(&c, &api.kubeconfig(dir.path()));
        let pod = c.sim.pod_add("web").expect("pod netns");
        Fixture {
            c,
            api,
            conf,
            pod,
            _dir: dir,
        }
    }

    /// `command` for sandbox `id` of pod `pod-<id>`.
    fn cni(&self, command: &str, id: &str) -> Out {
        self.c
            .cni(command, id, Some(&self.pod.path()), "eth0", &self.conf)
    }

    fn cni_ok(&self, command: &str, id: &str) -> Out {
        let out = self.cni(command, id);
        assert!(out.ok, "{command} failed: {} {}", out.stdout, out.stderr);
        out
    }
}

/// Everything the ADD took is back: VFs in the host, no claim, no lease,
/// nothing registered with the dataplane.
fn assert_nothing_held(c: &Cluster) {
    assert_eq!(c.host_vfs().len(), c.vfs, "every VF is back in the host");
    assert_eq!(c.claims(), 0, "no claim left");
    assert!(c.ipam_leases().is_empty(), "no address held");
    assert!(
        c.dataplane.as_ref().expect("dataplane").pods().is_empty(),
        "nothing registered"
    );
}

#[test]
fn add_writes_the_vf_annotations_and_del_takes_them_off() {
    let f = Fixture::new("cnik");
    f.api.set_annotation("default", "pod-ctr1", "team", "web");
    let out = f.cni_ok("ADD", "ctr1");
    let mac = out.json()["interfaces"][0]["mac"]
        .as_str()
        .expect("mac")
        .to_string();
    let dp = f.c.dataplane.as_ref().expect("dataplane").pods();
    assert_eq!(dp.len(), 1);
    let ann = f.api.annotations("default", "pod-ctr1");
    assert_eq!(
        ann["dpumesh.io/vf-index"],
        json!(dp[0].vf_index.to_string())
    );
    assert_eq!(ann["dpumesh.io/mac"], json!(mac));
    assert_eq!(ann["dpumesh.io/representor"], json!(dp[0].representor));
    assert_eq!(ann["dpumesh.io/sandbox"], json!("ctr1"));
    assert_eq!(ann["team"], json!("web"), "other annotations stay");
    let patches: Vec<Seen> = f
        .api
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "one patch on ADD");
    assert_eq!(patches[0].path, "/api/v1/namespaces/default/pods/pod-ctr1");
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert_eq!(patches[0].authorization, "Bearer test-token");

    f.cni_ok("DEL", "ctr1");
    let ann = f.api.annotations("default", "pod-ctr1");
    assert_eq!(
        ann.keys().collect::<Vec<_>>(),
        ["team"],
        "DEL takes off exactly the VF annotations"
    );
    assert_nothing_held(&f.c);
}

#[test]
fn del_leaves_a_newer_sandboxs_annotations_alone() {
    let f = Fixture::new("cnikn");
    f.cni_ok("ADD", "ctr1");
    // A new sandbox of the same pod has written its own VF meanwhile.
    f.api
        .set_annotation("default", "pod-ctr1", "dpumesh.io/sandbox", "ctr9");
    f.cni_ok("DEL", "ctr1");
    let ann = f.api.annotations("default", "pod-ctr1");
    assert_eq!(ann["dpumesh.io/sandbox"], json!("ctr9"));
    assert!(ann.contains_key("dpumesh.io/vf-index"));
    assert_nothing_held(&f.c);
}

#[test]
fn api_server_errors_fail_add_with_the_right_code_and_roll_back() {
    let f = Fixture::new("cnike");

    // 500: try again later (11); nothing kept.
    f.api.fail_with(Some(500));
    let out = f.cni("ADD", "ctr1");
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(out.json()["msg"]
        .as_str()
        .unwrap_or("")
        .contains("pod default/pod-ctr1"));
    assert_nothing_held(&f.c);

    // 403: ours (105), and the details say which permission is missing.
    f.api.fail_with(Some(403));
    let out = f.cni("ADD", "ctr1");
    assert_eq!(out.code(), 105, "{}", out.stdout);
    assert!(
        out.json()["details"]
            .as_str()
            .unwrap_or("")
            .contains("patch on pods"),
        "{}",
        out.stdout
    );
    assert_nothing_held(&f.c);

    // The pod does not exist (404): ours (105).
    f.api.fail_with(None);
    let out = f.cni("ADD", "ctr2");
    assert_eq!(out.code(), 105, "{}", out.stdout);
    assert_nothing_held(&f.c);

    // And once the server is fine, the same ADD works.
    f.cni_ok("ADD", "ctr1");
    assert_eq!(
        f.api.annotations("default", "pod-ctr1")["dpumesh.io/sandbox"],
        json!("ctr1")
    );
    f.cni_ok("DEL", "ctr1");
}

#[test]
fn an_unreachable_api_server_is_try_again_later_on_add_and_not_a_del_failure() {
    let c = Cluster::new("cnikd", 2, true);
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on in the host netns.
    let closed = {
        let api = ApiServer::start(&c.host());
        api.port
    };
    let kc = write_kubeconfig(dir.path(), &format!("http://127.0.0.1:{closed}"));
    let conf = k8s_conf(&c, &kc);
    let pod = c.sim.pod_add("web").expect("pod netns");
    let out = c.cni("ADD", "ctr1", Some(&pod.path()), "eth0", &conf);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{}",
        out.stdout
    );
    assert_nothing_held(&c);

    // ADD without annotations, then DEL with the API server down: DEL succeeds.
    let plain = c.conf(json!({}));
    let out = c.cni("ADD", "ctr1", Some(&pod.path()), "eth0", &plain);
    assert!(out.ok, "ADD failed: {} {}", out.stdout, out.stderr);
    let out = c.cni("DEL", "ctr1", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "DEL failed: {} {}", out.stdout, out.stderr);
    assert_nothing_held(&c);
}

#[test]
fn del_of_a_pod_the_api_no_longer_has_succeeds() {
    let f = Fixture::new("cnikg");
    f.cni_ok("ADD", "ctr1");
    f.api.remove_pod("default", "pod-ctr1");
    f.cni_ok("DEL", "ctr1");
    assert_nothing_held(&f.c);
}

#[test]
fn a_bad_kubernetes_section_is_a_config_error_before_a_vf_is_taken() {
    let c = Cluster::new("cnikc", 2, true);
    let pod = c.sim.pod_add("web").expect("pod netns");
    let cases = [
        (
            json!({"kubeconfig": "/nonexistent/kubeconfig"}),
            "kubernetes.kubeconfig",
        ),
        (
            json!({"kubeconfig": "relative/kubeconfig"}),
            "kubernetes.kubeconfig",
        ),
        (json!({}), "kubernetes.kubeconfig"),
        (
            json!({"kubeconfig": "/etc/kubeconfig", "timeoutMs": 0}),
            "kubernetes.timeoutMs",
        ),
        (
            json!({"kubeconfig": "/etc/kubeconfig", "server": "x"}),
            "kubernetes",
        ),
    ];
    for (section, field) in cases {
        let conf = c.conf(json!({ "kubernetes": section }));
        let out = c.cni("ADD", "ctr1", Some(&pod.path()), "eth0", &conf);
        assert_eq!(out.code(), 7, "{section}: {}", out.stdout);
        assert!(
            out.json()["msg"].as_str().unwrap_or("").contains(field),
            "{section}: {}",
            out.stdout
        );
        assert_nothing_held(&c);
    }
}

#[test]
fn without_the_pod_in_cni_args_nothing_is_written() {
    let c = Cluster::new("cnika", 2, true);
    let api = ApiServer::start(&c.host());
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = k8s_conf(&c, &api.kubeconfig(dir.path()));
    let pod = c.sim.pod_add("web").expect("pod netns");
    let mut env = BTreeMap::new();
    env.insert("CNI_COMMAND".to_string(), "ADD".to_string());
    env.insert("CNI_CONTAINERID".into(), "ctr1".into());
    env.insert("CNI_NETNS".into(), pod.path().display().to_string());
    env.insert("CNI_IFNAME".into(), "eth0".into());
    env.insert("CNI_PATH".into(), PLUGINS.into());
    let stdin = serde_json::to_vec(&conf).expect("json");
    let out = c.cni_env(&env, &stdin);
    assert!(out.ok, "ADD failed: {} {}", out.stdout, out.stderr);
    assert!(api.seen().is_empty(), "no request without K8S_POD_NAME");
    env.insert("CNI_COMMAND".into(), "DEL".into());
    let out = c.cni_env(&env, &stdin);
    assert!(out.ok, "DEL failed: {} {}", out.stdout, out.stderr);
    assert!(api.seen().is_empty());
    assert_nothing_held(&c);
}

#[test]
fn the_installers_kubeconfig_is_what_the_plugin_uses() {
    let c = Cluster::new("cnikt", 2, true);
    let api = ApiServer::start(&c.host());
    api.add_pod("default", "pod-ctr1", json!({}));
    // A service account token dir as the chart's Secret volume has it.
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = dir.path().join("sa");
    std::fs::create_dir_all(&sa).expect("sa");
    std::fs::write(sa.join("token"), "sa-token-7\n").expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let ca = rcgen::CertificateParams::new(vec!["kubernetes".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(sa.join("ca.crt"), ca.pem()).expect("ca");
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dpumesh-cni-install"))
        .env_clear()
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--plugin-binary")
        .arg(CNI)
        .args(["--pod-cidr", "10.244.1.0/24", "--vf-backend", "sim"])
        .arg("--kubeconfig-from-token-dir")
        .arg(&sa)
        .args(["--kube-server", &format!("http://127.0.0.1:{}", api.port)])
        .output()
        .expect("installer ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The installed plugin entry's `kubernetes` section, in our test config.
    let list: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-dpumesh.conflist")).expect("conflist"))
            .expect("json");
    let conf = c.conf(json!({"kubernetes": list["plugins"][0]["kubernetes"].clone()}));
    let pod = c.sim.pod_add("web").expect("pod netns");
    let out = c.cni("ADD", "ctr1", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "ADD failed: {} {}", out.stdout, out.stderr);
    let patch = api
        .seen()
        .into_iter()
        .find(|s| s.method == "PATCH")
        .expect("a patch");
    assert_eq!(patch.authorization, "Bearer sa-token-7");
    assert_eq!(
        api.annotations("default", "pod-ctr1")["dpumesh.io/sandbox"],
        json!("ctr1")
    );
    let out = c.cni("DEL", "ctr1", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "DEL failed: {} {}", out.stdout, out.stderr);
    assert_nothing_held(&c);
}

//! `dpumesh top` and the Grafana dashboard against the real components.
//!
//! A 1-node simulated cluster; the real `dpumesh-dataplane` (eBPF backend) and
//! `dpu-proxy` binaries in the DPU netns; two pods on VFs (a client and an HTTP
//! server) registered with the dataplane and in a NodeConfig pushed to the proxy;
//! a service VIP whose `/fail` path the proxy answers 503 (fault injection).
//! Traffic goes client pod → VIP → dataplane steering → proxy → server pod.
//!
//! * `dpumesh top --once` must show both pods, the client's rps, error rate and
//!   latency, steered traffic, and the DPU process rows (CPU, memory).
//! * every PromQL query of charts/dpumesh/dashboards/dpumesh-dpu.json must name a
//!   metric that the live /metrics of dpu-proxy or the dataplane offers.
//!
//! Needs the workspace binaries next to `dpumesh`:
//! `cargo build -p dpumesh-cli -p dpu-proxy -p dpumesh-dataplane --bins`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpumesh_api::NodeConfig;
use dpumesh_cli::top::{http_get, promql};
use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard};
use dpumesh_testkit::{attach_pod, push, start_dataplane, start_proxy, steering, PodServer};
use serde_json::json;

const VIP: &str = "10.96.0.10";
const SERVER_PORT: u16 = 8080;
const HOST: &str = "web.default.svc.cluster.local";
/// A plain-TCP port of the same service (the proxy's TCP path and metrics).
const TCP_PORT: u16 = 9000;
/// The metrics of the dashboard's CPU/memory panels come from the kubelet's
/// cAdvisor (the components export no process metrics): the only names allowed
/// that the components do not expose themselves.
const CADVISOR: &[&str] = &[
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
];

fn node_config(node: &Node, a: Ipv4Addr, b: Ipv4Addr, mgmt: &str) -> NodeConfig {
    let pod = |uid: &str, name: &str, app: &str, vf: usize, ip: Ipv4Addr| {
        let v = node.vf(vf).expect("vf");
        json!({"uid": uid, "name": name, "namespace": "default", "serviceAccount": name,
               "labels": {"app": app}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
               "vfIndex": v.index, "representor": v.representor})
    };
    let cluster = format!("outbound|80||{HOST}");
    let forward = json!({"forward": {"destinations": [{"cluster": cluster}]}});
    serde_json::from_value(json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": node.pod_cidr.to_string(),
                 "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": mgmt},
        "pods": [pod("uid-a", "client-a", "client", 0, a), pod("uid-b", "server-b", "server", 1, b)],
        "services": [{
            "hostname": HOST, "namespace": "default", "vips": [VIP],
            "ports": [{"port": 80, "name": "http", "targetPort": SERVER_PORT, "routeTable": "80"},
                      {"port": TCP_PORT, "name": "tcp-raw", "protocol": "TCP", "targetPort": SERVER_PORT}],
            "endpoints": [{"address": b.to_string(), "node": "n1",
                           "labels": {"app": "server"}, "serviceAccount": "server-b"}],
        }],
        "clusters": [{"name": cluster, "service": HOST, "port": 80}],
        "routeTables": [{"name": "80", "virtualHosts": [{
            "name": "web", "domains": ["*"],
            "routes": [
                {"name": "fail", "matches": [{"path": {"prefix": "/fail"}}], "action": forward,
                 "fault": {"abort": {"httpStatus": 503, "percent": 100}}},
                {"name": "default", "action": forward}
            ]
        }]}],
    }))
    .expect("test NodeConfig parses")
}

/// Client traffic from a pod to the VIP until dropped: every 4th request to `/fail`,
/// every 10th over the plain-TCP port.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(ns: &Netns) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (stopped, count, ns) = (stop.clone(), ok.clone(), ns.clone());
        let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
        let tcp: SocketAddr = format!("{VIP}:{TCP_PORT}").parse().expect("vip");
        let thread = std::thread::spawn(move || {
            ns.run(move || {
                let mut n = 0u64;
                while !stopped.load(Ordering::Relaxed) {
                    n += 1;
                    let path = if n.is_multiple_of(4) { "/fail" } else { "/" };
                    // Every 10th exchange over the service's plain-TCP port.
                    let to = if n % 10 == 5 { tcp } else { vip };
                    if http_get(to, path).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .expect("client pod netns");
        });
        Traffic {
            stop,
            ok,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The simulated node with dataplane, proxy, two pods, server and client traffic.
struct Mesh {
    // Dropped in this order: traffic, server, then the cluster.
    traffic: Traffic,
    _server: PodServer,
    node: Node,
    sim: SimGuard,
}

fn start_mesh(prefix: &str) -> Mesh {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster(prefix))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6));
    let pod_a = attach_pod(&sim, &node, 0, "client-a", ip_a);
    let pod_b = attach_pod(&sim, &node, 1, "server-b", ip_b);
    let pods = vec![
        steering("uid-a", "client-a", &node, 0, ip_a),
        steering("uid-b", "server-b", &node, 1, ip_b),
    ];
    start_dataplane(&sim, 1, "n1", pods, &[]);
    let proxy_mgmt = start_proxy(&sim, 1, "n1", &["--workers", "1"]);
    let config = node_config(&node, ip_a, ip_b, &proxy_mgmt);
    push(&node.host, proxy_mgmt.clone(), config);

    let server = PodServer::start(&pod_b, "server-b", SERVER_PORT);
    let traffic = Traffic::start(&pod_a);
    // Wait until requests go through end to end.
    let deadline = Instant::now() + Duration::from_secs(20);
    while traffic.ok.load(Ordering::Relaxed) < 5 {
        assert!(
            Instant::now() < deadline,
            "no request went through client-a → VIP → proxy → server-b"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Mesh {
        traffic,
        _server: server,
        node,
        sim,
    }
}

fn dpumesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dpumesh"))
        .args(args)
        .output()
        .expect("run dpumesh")
}

/// The row of `pod` in a frame, as columns.
fn row<'a>(frame: &'a str, pod: &str) -> Vec<&'a str> {
    frame
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pod))
        .unwrap_or_else(|| panic!("no row for {pod} in:\n{frame}"))
        .split_whitespace()
        .collect()
}

fn number(col: &str, what: &str, frame: &str) -> f64 {
    col.parse()
        .unwrap_or_else(|_| panic!("{what}: {col:?} is not a number in:\n{frame}"))
}

#[test]
fn top_once_shows_live_pod_traffic_and_dpu_processes() {
    let mesh = start_mesh("top");
    let cluster = mesh.sim.cluster().to_string();
    let out = dpumesh(&["top", "-c", &cluster, "--node", "1", "--once"]);
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dpumesh top failed: {frame}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{frame}");
    assert!(mesh.traffic.ok.load(Ordering::Relaxed) > 0);
    assert!(frame.contains("config version 1"), "{frame}");
    assert!(frame.contains("backend ebpf"), "{frame}");
    // POD NAMESPACE RPS ERR% P50 P99 IN OUT DROPS STEER/s CONN/s BYPASS/s
    let a = row(&frame, "client-a");
    assert_eq!(a.len(), 12, "{frame}");
    assert_eq!(a[1], "default");
    assert!(number(a[2], "client-a rps", &frame) > 0.0, "{frame}");
    let err = number(a[3], "client-a err%", &frame);
    assert!(err > 0.0 && err < 100.0, "1 in 4 requests fails: {frame}");
    let p50 = number(a[4], "client-a p50", &frame);
    let p99 = number(a[5], "client-a p99", &frame);
    assert!(p50 > 0.0 && p99 >= p50, "{frame}");
    assert!(number(a[7], "client-a out B/s", &frame) > 0.0, "{frame}");
    assert!(
        number(a[10], "client-a steered conn/s", &frame) > 0.0,
        "{frame}"
    );
    let b = row(&frame, "server-b");
    assert_eq!(b[1], "default");
    // The DPU's processes, with CPU and memory read from /proc.
    for name in ["dataplane-n1", "dpu-proxy-n1"] {
        let p = row(&frame, name);
        let rss = number(p[4], "rss", &frame);
        assert!(rss > 0.0, "{frame}");
        number(p[3], "cpu", &frame);
    }
    let proxy = row(&frame, "dpu-proxy-n1");
    assert!(
        number(proxy[3], "proxy cpu", &frame) > 0.0,
        "the proxy serves traffic: {frame}"
    );

    // Errors are specific.
    let out = dpumesh(&["top", "-c", &cluster, "--node", "7", "--once"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nodes 1..=1"));
    let out = dpumesh(&["top", "-c", &cluster, "--once", "--interval", "3parsecs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));

    // A component that goes away: the view goes on with what still answers...
    assert!(mesh.sim.stop("dataplane-n1").expect("stop the dataplane"));
    let out = dpumesh(&["top", "-c", &cluster, "--once", "--interval", "200ms"]);
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{frame}");
    assert!(frame.contains("dataplane: unreachable"), "{frame}");
    assert!(frame.contains("config version 1"), "{frame}");
    let a = row(&frame, "client-a");
    assert!(number(a[2], "client-a rps", &frame) >= 0.0);
    assert_eq!(a[6], "-", "no dataplane, no packet columns: {frame}");
    assert!(!frame.contains("dataplane-n1"), "{frame}");
    // ...and fails when nothing answers.
    assert!(mesh.sim.stop("dpu-proxy-n1").expect("stop the proxy"));
    let out = dpumesh(&["top", "-c", &cluster, "--once", "--interval", "200ms"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("dpu-proxy: unreachable"));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("neither dpu-proxy nor the dataplane answered"));
    drop(mesh);
}

/// Every string under a key named `expr` (panel targets) or a template query.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("label_values") => {
                        out.push(s.clone())
                    }
                    _ => queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_name_metrics_the_components_expose() {
    let mesh = start_mesh("dash");
    let mgmt = mesh.node.mgmt_dpu.addr();
    let (proxy, dataplane) = mesh
        .node
        .host
        .run(move || {
            (
                http_get(SocketAddr::from((mgmt, 15000)), "/metrics").expect("proxy /metrics"),
                http_get(SocketAddr::from((mgmt, 15091)), "/metrics").expect("dataplane /metrics"),
            )
        })
        .expect("host netns");
    let mut exposed = promql::exposed_names(&proxy);
    exposed.extend(promql::exposed_names(&dataplane));
    // Live series, not only declarations, for the request metrics.
    for live in [
        "istio_requests_total{",
        "istio_request_duration_milliseconds_bucket{",
        "dpumesh_dataplane_pod_steered_connections_total{",
        "istio_tcp_connections_opened_total{",
    ] {
        assert!(
            proxy.contains(live) || dataplane.contains(live),
            "no {live} series"
        );
    }

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/dpumesh/dashboards/dpumesh-dpu.json");
    let text = std::fs::read_to_string(&path).expect("dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut qs = Vec::new();
    queries(&dashboard, &mut qs);
    assert!(qs.len() >= 20, "only {} queries found", qs.len());
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for q in &qs {
        let names = promql::metric_names(q);
        assert!(!names.is_empty(), "query names no metric: {q}");
        for n in names {
            if !exposed.contains(&n) && !CADVISOR.contains(&n.as_str()) {
                missing.push(format!("{n} (in {q})"));
            }
            used.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard names unknown metrics:\n{}",
        missing.join("\n")
    );
    // It covers both components.
    assert!(used.iter().any(|n| n.starts_with("istio_")));
    assert!(used.iter().any(|n| n.starts_with("dpumesh_dataplane_")));

    // The check is not vacuous: wrong names and wrong suffixes are caught.
    for wrong in [
        "sum(rate(istio_request_total[1m]))",
        "rate(istio_request_duration_milliseconds_total[1m])",
        "istio_requests_total_bucket",
        "dpumesh_dataplane_pod_packets",
    ] {
        let names = promql::metric_names(wrong);
        assert!(
            names.iter().any(|n| !exposed.contains(n)),
            "{wrong} should name a missing metric"
        );
    }
    drop(mesh);
}

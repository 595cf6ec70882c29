//! `dpumesh bench config`: the adapter's cost (issue 5's benchmark).
//!
//! 1. Build: a synthetic, istiod-shaped xDS set (CDS/EDS/LDS/RDS like the bookinfo
//!    fixture, scaled to N services with subsets v1/v2, weighted routes, retries)
//!    and an inventory of P pods are written as a local-mode directory; the
//!    adapter's own library (`dpumesh_controller::local::build`: decode →
//!    translate → validate) builds the NodeConfig in-process. Time is wall clock;
//!    memory is the growth of this process's peak RSS (VmHWM, reset through
//!    `/proc/self/clear_refs` before the build) over its RSS before it.
//! 2. Push: the real adapter binary in local mode against a real dpu-proxy
//!    (loopback, HBONE off); a route weight is changed N times (atomic rename into
//!    `xds/`) and the time from the rename to dpu-proxy's `/ready` reporting the
//!    new version is measured. It includes the adapter's poll interval.
//! 3. Size: NodeConfig JSON bytes over a grid of pods × services.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use super::cni::stats;
use super::report::{Case, Machine, Summary};

/// The goal for push p99.
const PUSH_P99_GOAL_MS: f64 = 100.0;
/// Ports the synthetic services spread over (one listener + route config each).
const PORTS: u16 = 10;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// End with the one-line JSON summary.
    #[arg(long)]
    pub json: bool,
    /// A short run (fit for CI): small sizes.
    #[arg(long)]
    pub quick: bool,
    /// Route-weight changes to time (default 100, 20 with --quick).
    #[arg(long)]
    pub pushes: Option<usize>,
    /// Pods on the node in the push case.
    #[arg(long, default_value_t = 20)]
    pub push_pods: usize,
    /// Services in the push case.
    #[arg(long, default_value_t = 100)]
    pub push_services: usize,
    /// The adapter's --poll-ms (it enforces at least 10).
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Memory budget of one build, MB. A build costs ~EST_KB_PER_SERVICE per
    /// service plus ~EST_KB_PER_POD per pod (pods with the same xDS share one
    /// copy); sizes over the budget run with fewer pods (reported).
    #[arg(long, default_value_t = 4096)]
    pub max_mem_mb: u64,
}

/// Measured peak-RSS cost of one service in a local-mode build (200 pods x 5000
/// services grew the peak RSS by ~415 MB), with margin.
const EST_KB_PER_SERVICE: u64 = 96;
/// Per pod (its inventory entry and per-pod output), with margin.
const EST_KB_PER_POD: u64 = 16;

/// Estimated peak-RSS growth of one build, KB.
fn est_build_kb(pods: usize, services: usize) -> u64 {
    services as u64 * EST_KB_PER_SERVICE + pods as u64 * EST_KB_PER_POD
}

/// The most pods (at most `pods`, at least 1) whose build fits `max_mem_mb`.
fn fit_pods(pods: usize, services: usize, max_mem_mb: u64) -> usize {
    let budget_kb = max_mem_mb * 1024;
    let left = budget_kb.saturating_sub(services as u64 * EST_KB_PER_SERVICE);
    let fit = (left / EST_KB_PER_POD) as usize;
    pods.min(fit).max(1)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let p =
            std::env::temp_dir().join(format!("dpumesh-bench-config-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("xds")).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host(i: usize) -> String {
    format!("svc{i}.ns{}.svc.cluster.local", i % 20)
}

fn port_of(i: usize) -> u16 {
    9000 + (i as u16 % PORTS)
}

fn vip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn pod_ip(j: usize) -> String {
    format!("10.244.1.{}", j + 2)
}

fn cluster_json(i: usize, subset: &str) -> Value {
    let name = format!("outbound|{}|{subset}|{}", port_of(i), host(i));
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name},
        "connect_timeout": "10s",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u64, "max_pending_requests": 4294967295u64, "max_requests": 4294967295u64}]},
        "metadata": {"filter_metadata": {"istio": {"services": [{"host": host(i), "name": format!("svc{i}"), "namespace": format!("ns{}", i % 20)}]}}}
    });
    if !subset.is_empty() {
        c["outlier_detection"] =
            json!({"consecutive_5xx": 3, "interval": "1s", "max_ejection_percent": 50});
    }
    c
}

/// Endpoints of service `i`: two remote (v1, v2), plus local pod `i` (v1) when
/// it exists.
fn endpoints_json(i: usize, subset: &str, pods: usize) -> Value {
    let name = format!("outbound|{}|{subset}|{}", port_of(i), host(i));
    let remote = |v: usize| {
        json!({
            "endpoint": {"address": {"socket_address": {"address": format!("10.{}.{}.{}", 100 + v, (i / 250) % 256, i % 250 + 1), "port_value": 8080}}},
            "health_status": "HEALTHY",
            "metadata": {"filter_metadata": {"istio": {"labels": {"app": format!("svc{i}"), "version": format!("v{v}")}}}}
        })
    };
    let mut lb = Vec::new();
    if subset.is_empty() || subset == "v1" {
        lb.push(remote(1));
        if i < pods {
            lb.push(json!({"endpoint": {"address": {"socket_address": {"address": pod_ip(i), "port_value": 8080}}}}));
        }
    }
    if subset.is_empty() || subset == "v2" {
        lb.push(remote(2));
    }
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": name,
        "endpoints": [{"locality": {"region": "eu-west", "zone": "eu-west-1a"}, "lb_endpoints": lb}]
    })
}

fn vhost_json(i: usize, v2_weight: u32) -> Value {
    let p = port_of(i);
    let h = host(i);
    let c = |s: &str| format!("outbound|{p}|{s}|{h}");
    json!({
        "name": format!("{h}:{p}"),
        "domains": [h, format!("svc{i}"), format!("svc{i}:{p}"), vip(i), format!("{}:{p}", vip(i))],
        "routes": [
            {"name": "canary-user", "match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "canary"}}]},
             "route": {"cluster": c("v2"), "timeout": "0s"}},
            {"name": "split", "match": {"prefix": "/"},
             "route": {"weighted_clusters": {"clusters": [
                 {"name": c("v1"), "weight": 100 - v2_weight},
                 {"name": c("v2"), "weight": v2_weight}]},
               "timeout": "10s",
               "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": 2, "per_try_timeout": "3s"}}}
        ]
    })
}

fn resources(items: Vec<Value>) -> Value {
    json!({ "resources": items })
}

/// RDS for all ports; service 0's v2 weight is `v2_weight`.
fn routes_doc(services: usize, v2_weight: u32) -> Value {
    let mut out = Vec::new();
    for p in 0..PORTS {
        let port = 9000 + p;
        let vhosts: Vec<Value> = (0..services)
            .filter(|&i| port_of(i) == port)
            .map(|i| vhost_json(i, if i == 0 { v2_weight } else { 10 }))
            .collect();
        if vhosts.is_empty() {
            continue;
        }
        out.push(json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": port.to_string(),
            "validate_clusters": false,
            "virtual_hosts": vhosts
        }));
    }
    resources(out)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec(v)?)
        .with_context(|| format!("write {}", path.display()))
}

/// Writes a local-mode directory: `pods` pods on node-1, `services` services.
fn write_dir(dir: &Path, pods: usize, services: usize) -> Result<()> {
    std::fs::write(
        dir.join("node.yaml"),
        "name: node-1\nnetworkMode: underlay\npodCidr: 10.244.1.0/24\nserviceCidrs: [10.96.0.0/16]\n\
         dpuMgmtAddr: 192.168.100.2:15080\nlocality: {region: eu-west, zone: eu-west-1a}\n",
    )?;
    if pods > 250 {
        bail!("at most 250 pods fit the node's /24");
    }
    let pod_list: Vec<Value> = (0..pods)
        .map(|j| {
            json!({"uid": format!("00000000-0000-4000-8000-{j:012}"), "name": format!("svc{}-v1-{j}", j % services.max(1)),
                   "namespace": format!("ns{}", j % services.max(1) % 20), "serviceAccount": format!("sa{}", j % services.max(1)),
                   "labels": {"app": format!("svc{}", j % services.max(1)), "version": "v1"},
                   "ips": [pod_ip(j)], "mac": format!("02:00:0a:f4:{:02x}:{:02x}", j / 256, j % 256),
                   "vfIndex": j + 1, "representor": format!("pf0vf{}", j + 1)})
        })
        .collect();
    write_json(&dir.join("pods.yaml"), &json!({ "pods": pod_list }))?;
    let svc_list: Vec<Value> = (0..services)
        .map(|i| json!({"hostname": host(i), "namespace": format!("ns{}", i % 20), "vips": [vip(i)], "ports": [{"port": port_of(i), "name": "http"}]}))
        .collect();
    write_json(&dir.join("services.yaml"), &json!({ "services": svc_list }))?;
    let subsets = ["", "v1", "v2"];
    let clusters: Vec<Value> = (0..services)
        .flat_map(|i| subsets.iter().map(move |s| cluster_json(i, s)))
        .collect();
    write_json(&dir.join("xds/clusters.json"), &resources(clusters))?;
    let eps: Vec<Value> = (0..services)
        .flat_map(|i| subsets.iter().map(move |s| endpoints_json(i, s, pods)))
        .collect();
    write_json(&dir.join("xds/endpoints.json"), &resources(eps))?;
    let listeners: Vec<Value> = (0..PORTS.min(services as u16))
        .map(|p| {
            let port = 9000 + p;
            json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": format!("0.0.0.0_{port}"),
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
                "traffic_direction": "OUTBOUND",
                "bind_to_port": false,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("outbound_0.0.0.0_{port}"),
                        "rds": {"route_config_name": port.to_string(), "config_source": {"ads": {}, "resource_api_version": "V3"}},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]
            })
        })
        .collect();
    write_json(&dir.join("xds/listeners.json"), &resources(listeners))?;
    write_json(&dir.join("xds/routes.json"), &routes_doc(services, 10))?;
    Ok(())
}

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Built {
    ms: f64,
    peak_growth_mb: f64,
    bytes: usize,
    clusters: usize,
    route_tables: usize,
}

/// Builds the NodeConfig of `dir` with the adapter's library, timed.
fn build(dir: &Path) -> Result<Built> {
    // Reset VmHWM to the current RSS (Linux >= 4.0), so the peak below is this build's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let config = dpumesh_controller::local::build(dir, Some("node-1"))
        .map_err(|e| anyhow::anyhow!("building the NodeConfig of {}: {e}", dir.display()))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let peak = status_kb("VmHWM:").unwrap_or(0);
    let bytes = serde_json::to_vec(&config)?.len();
    Ok(Built {
        ms,
        peak_growth_mb: peak.saturating_sub(before) as f64 / 1024.0,
        bytes,
        clusters: config.clusters.len(),
        route_tables: config.route_tables.len(),
    })
}

fn sibling(program: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dpumesh binary")?;
    let p = exe.with_file_name(program);
    if !p.exists() {
        bail!(
            "{program} not found next to {}: build it first (cargo build -p {program} --bins)",
            exe.display()
        );
    }
    Ok(p)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// dpu-proxy's serving version from its admin `/ready` (0 = none yet).
fn ready_version(admin: SocketAddr) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if let Some(pos) = body.find("config version ") {
        return body[pos + 15..].trim().parse().ok();
    }
    Some(0)
}

struct Push {
    samples_ms: Vec<f64>,
}

/// The push benchmark over the directory `dir` (already written).
fn push(dir: &Path, services: usize, pushes: usize, poll_ms: u64) -> Result<Push> {
    let proxy_bin = sibling("dpu-proxy")?;
    let adapter_bin = sibling("dpumesh-controller")?;
    let mgmt = format!("127.0.0.1:{}", free_port()?);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let _proxy = Reaped(
        Command::new(proxy_bin)
            .args(["--node", "node-1", "--mgmt-addr", &mgmt])
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--listen-ip",
                "127.0.0.1",
            ])
            .args(["--outbound-port", &free_port()?.to_string()])
            .args(["--inbound-port", &free_port()?.to_string()])
            .args(["--hbone-port", "0", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn dpu-proxy")?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_version(admin).is_none() {
        if Instant::now() > deadline {
            bail!("dpu-proxy never served its admin port {admin}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut adapter = Reaped(
        Command::new(adapter_bin)
            .args(["--log-level", "warn", "adapter", "--local-dir"])
            .arg(dir)
            .args(["--node", "node-1", "--proxy-addr", &mgmt])
            .args(["--poll-ms", &poll_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn dpumesh-controller adapter")?,
    );
    let wait_for = |adapter: &mut Reaped, v: u64, secs: u64| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if ready_version(admin).unwrap_or(0) >= v {
                return Ok(());
            }
            if let Ok(Some(status)) = adapter.0.try_wait() {
                bail!("the adapter exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("dpu-proxy never reached config version {v}");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    wait_for(&mut adapter, 1, 60)?;
    let base = ready_version(admin).unwrap_or(1);
    let tmp = dir.join("routes.json.tmp");
    let target = dir.join("xds/routes.json");
    let mut samples = Vec::with_capacity(pushes);
    for k in 0..pushes {
        // v2 weight of service 0 cycles through 11..=60 (never the initial 10 twice in a row).
        let weight = 11 + (k as u32 % 50);
        write_json(&tmp, &routes_doc(services, weight))?;
        let t = Instant::now();
        std::fs::rename(&tmp, &target).context("rename routes")?;
        wait_for(&mut adapter, base + k as u64 + 1, 30)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        // Desynchronise from the adapter's poll ticker.
        std::thread::sleep(Duration::from_millis(3 + (k as u64 * 7) % 17));
    }
    Ok(Push {
        samples_ms: samples,
    })
}

fn case(name: &str, extra: Map<String, Value>) -> Case {
    Case {
        name: name.to_string(),
        protocol: "xds".to_string(),
        connections: 0,
        rps: 0.0,
        p50_ms: None,
        p90_ms: None,
        p99_ms: None,
        cpu_s_per_req: None,
        rss_mb: None,
        extra,
    }
}

pub fn run(args: ConfigArgs) -> Result<()> {
    let (requested_pods, build_services) = if args.quick { (50, 500) } else { (200, 5000) };
    let build_pods = fit_pods(requested_pods, build_services, args.max_mem_mb);
    if build_pods < requested_pods {
        eprintln!(
            "build: {requested_pods} pods x {build_services} services would need ~{} MB (> --max-mem-mb {}); running {build_pods} pods",
            est_build_kb(requested_pods, build_services) / 1024,
            args.max_mem_mb
        );
    }
    let (push_pods, push_services) = (args.push_pods, args.push_services);
    if push_services == 0 {
        bail!("--push-services 0: the route change needs at least one service");
    }
    if fit_pods(push_pods, push_services, args.max_mem_mb) < push_pods {
        bail!(
            "--push-pods {push_pods} x --push-services {push_services} is over --max-mem-mb {}",
            args.max_mem_mb
        );
    }
    let pushes = args.pushes.unwrap_or(if args.quick { 20 } else { 100 });
    if pushes == 0 {
        bail!("--pushes 0: need at least one push");
    }
    let (pod_grid, svc_grid): (&[usize], &[usize]) = if args.quick {
        (&[10, 20, 40], &[50, 100, 200])
    } else {
        (&[50, 100, 200], &[500, 1000, 2000, 5000])
    };
    let mut cases = Vec::new();

    // 1. Build time and memory.
    eprintln!("build: {build_pods} pods, {build_services} services ...");
    let scratch = Scratch::new("build")?;
    write_dir(&scratch.0, build_pods, build_services)?;
    let mut runs = Vec::new();
    for _ in 0..if args.quick { 1 } else { 3 } {
        runs.push(build(&scratch.0)?);
    }
    drop(scratch);
    runs.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    let median = &runs[runs.len() / 2];
    let peak = runs.iter().map(|r| r.peak_growth_mb).fold(0.0, f64::max);
    let mut extra = Map::new();
    extra.insert("pods".into(), build_pods.into());
    extra.insert("pods_requested".into(), requested_pods.into());
    extra.insert("services".into(), build_services.into());
    extra.insert("build_ms".into(), json!(median.ms));
    extra.insert("build_runs".into(), runs.len().into());
    extra.insert("peak_rss_growth_mb".into(), json!(peak));
    extra.insert(
        "memory_method".into(),
        "VmHWM after minus VmRSS before (clear_refs 5 resets VmHWM), max over runs".into(),
    );
    extra.insert("config_bytes".into(), median.bytes.into());
    extra.insert("clusters".into(), median.clusters.into());
    extra.insert("route_tables".into(), median.route_tables.into());
    let mut c = case("dpumesh-build", extra);
    c.rss_mb = Some(peak);
    cases.push(c);

    // 2. Push latency.
    eprintln!(
        "push: {push_pods} pods, {push_services} services, {pushes} route-weight changes ..."
    );
    let scratch = Scratch::new("push")?;
    write_dir(&scratch.0, push_pods, push_services)?;
    let p = push(&scratch.0, push_services, pushes, args.poll_ms)?;
    drop(scratch);
    let s = stats(&p.samples_ms).context("no push samples")?;
    let mut extra = Map::new();
    extra.insert("pods".into(), push_pods.into());
    extra.insert("services".into(), push_services.into());
    extra.insert("pushes".into(), p.samples_ms.len().into());
    extra.insert("poll_ms".into(), args.poll_ms.max(10).into());
    extra.insert("push_p50_ms".into(), json!(s.p50));
    extra.insert("push_p99_ms".into(), json!(s.p99));
    extra.insert("push_mean_ms".into(), json!(s.mean));
    extra.insert("push_p99_goal_ms".into(), json!(PUSH_P99_GOAL_MS));
    extra.insert(
        "measured".into(),
        "file rename in xds/ -> dpu-proxy /ready reports the new version; includes the poll interval".into(),
    );
    let mut c = case("dpumesh-push", extra);
    c.p50_ms = Some(s.p50);
    c.p90_ms = Some(s.p90);
    c.p99_ms = Some(s.p99);
    c.rps = p.samples_ms.len() as f64 / (p.samples_ms.iter().sum::<f64>() / 1e3);
    cases.push(c);

    // 3. Size grid.
    let mut grid = Vec::new();
    for &pods in pod_grid {
        for &services in svc_grid {
            if fit_pods(pods, services, args.max_mem_mb) < pods {
                eprintln!("size: {pods} pods x {services} services skipped (over --max-mem-mb)");
                continue;
            }
            eprintln!("size: {pods} pods x {services} services ...");
            let scratch = Scratch::new("size")?;
            write_dir(&scratch.0, pods, services)?;
            let b = build(&scratch.0)?;
            grid.push(json!({"pods": pods, "services": services, "config_bytes": b.bytes}));
        }
    }
    // Sub-multiplicative: bytes(maxP, maxS) / bytes(minP, minS) vs (maxP*maxS)/(minP*minS).
    let bytes_at = |p: usize, s: usize| {
        grid.iter()
            .find(|g| g["pods"] == p && g["services"] == s)
            .and_then(|g| g["config_bytes"].as_u64())
            .unwrap_or(0) as f64
    };
    let (p0, p1) = (pod_grid[0], pod_grid[pod_grid.len() - 1]);
    let (s0, s1) = (svc_grid[0], svc_grid[svc_grid.len() - 1]);
    let growth = bytes_at(p1, s1) / bytes_at(p0, s0).max(1.0);
    let product = (p1 * s1) as f64 / (p0 * s0) as f64;
    let mut extra = Map::new();
    extra.insert("grid".into(), Value::Array(grid.clone()));
    extra.insert("size_growth".into(), json!(growth));
    extra.insert("product_growth".into(), json!(product));
    extra.insert("config_bytes".into(), json!(bytes_at(p1, s1)));
    cases.push(case("dpumesh-size", extra));

    let summary = Summary {
        scenario: "config".to_string(),
        machine: Machine::this(),
        command: format!(
            "dpumesh bench config{}{}",
            if args.json { " --json" } else { "" },
            if args.quick { " --quick" } else { "" }
        ),
        cases,
    };
    println!(
        "build: {build_pods} pods x {build_services} services: {:.1} ms (median of {}), peak RSS growth {:.1} MB, NodeConfig {} bytes, {} clusters",
        median.ms, runs.len(), peak, median.bytes, median.clusters
    );
    println!(
        "push ({push_pods} pods x {push_services} services, {} changes, poll {} ms): p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms (goal p99 < {PUSH_P99_GOAL_MS} ms: {})",
        p.samples_ms.len(),
        args.poll_ms.max(10),
        s.p50,
        s.p90,
        s.p99,
        if s.p99 < PUSH_P99_GOAL_MS { "met" } else { "NOT met" }
    );
    println!("NodeConfig JSON bytes (rows: pods, columns: services)");
    print!("{:>6}", "pods");
    for s in svc_grid {
        print!(" {s:>10}");
    }
    println!();
    for &p in pod_grid {
        print!("{p:>6}");
        for &s in svc_grid {
            print!(" {:>10}", bytes_at(p, s) as u64);
        }
        println!();
    }
    println!(
        "size growth {p0}x{s0} -> {p1}x{s1}: x{growth:.2} (pods x services grew x{product:.0})"
    );
    if args.json {
        println!("{}", summary.json_line());
    }
    Ok(())
}

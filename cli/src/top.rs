//! `dpumesh top`: a live view of one DPU of a simulated cluster.
//!
//! Every interval it scrapes dpu-proxy's admin port (`/metrics`, `/stats`) and
//! the dataplane's admin port (`/metrics`) over the management link, from the
//! node's host netns (as an operator on the host would; never from the root
//! netns), reads `/proc` for the CPU and memory of the processes the simulator
//! started in the DPU netns, and prints per pod and per process what changed
//! between the last two scrapes. See docs/operations.md.

pub mod calc;
pub mod prom;
pub mod promql;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dpumesh_sim::{Node, Place, Sim};

use calc::{buckets_delta, buckets_where, counter_delta, histogram_quantile, sum_where};
use prom::Sample;

/// dpu-proxy's admin port.
pub const PROXY_ADMIN_PORT: u16 = 15000;
/// The dataplane's admin port.
pub const DATAPLANE_ADMIN_PORT: u16 = 15091;
/// Linux reports process times in /proc in USER_HZ, 100 on every architecture we run on.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Simulator cluster name.
    #[arg(short = 'c', long, env = "DPUMESH_CLUSTER", default_value = "demo")]
    pub cluster: String,
    /// Node whose DPU to show (from 1).
    #[arg(long, default_value_t = 1)]
    pub node: usize,
    /// Print one frame (two scrapes, one interval apart) and exit.
    #[arg(long)]
    pub once: bool,
    /// Refresh interval, e.g. `1s`, `500ms`, `2.5s` (at least 100ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

/// Parses `1s`, `500ms`, `2.5s`, `1m`.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m), e.g. 1s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m)")),
    };
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: the interval must be between 100ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: TopArgs) -> Result<()> {
    let sim = Sim::attach(&args.cluster)
        .with_context(|| format!("dpumesh top: cluster {:?}", args.cluster))?;
    let node = sim.node(args.node).context("dpumesh top")?.clone();
    let mut prev = scrape(&sim, &node)?;
    loop {
        std::thread::sleep(args.interval);
        let cur = scrape(&sim, &node)?;
        let frame = Frame::build(&sim, &node, &prev, &cur);
        if args.once {
            print!("{}", frame.render());
            if cur.proxy.is_err() && cur.dataplane.is_err() {
                bail!("neither dpu-proxy nor the dataplane answered (see above)");
            }
            return Ok(());
        }
        // Clear the screen, cursor home, then the frame.
        print!("\x1b[2J\x1b[H{}", frame.render());
        std::io::stdout().flush().ok();
        prev = cur;
    }
}

/// What one scrape of a DPU found.
pub struct Scrape {
    pub at: Instant,
    /// dpu-proxy: `/metrics` samples and `/stats` JSON.
    pub proxy: Result<(Vec<Sample>, serde_json::Value), String>,
    /// dataplane: `/metrics` samples.
    pub dataplane: Result<Vec<Sample>, String>,
    /// The simulator's processes in the DPU netns.
    pub procs: Vec<ProcSample>,
}

#[derive(Debug, Clone)]
pub struct ProcSample {
    pub name: String,
    pub program: String,
    pub pid: u32,
    /// utime + stime, in USER_HZ ticks (None: the process is gone).
    pub cpu_ticks: Option<u64>,
    pub rss_kib: Option<u64>,
}

/// Scrapes both admin ports from the node's host netns and reads /proc.
pub fn scrape(sim: &Sim, node: &Node) -> Result<Scrape> {
    let mgmt = node.mgmt_dpu.addr();
    let proxy_addr = SocketAddr::from((mgmt, PROXY_ADMIN_PORT));
    let dp_addr = SocketAddr::from((mgmt, DATAPLANE_ADMIN_PORT));
    let (proxy, dataplane) = node
        .netns(Place::Host)
        .run(move || {
            let proxy = http_get(proxy_addr, "/metrics")
                .and_then(|m| prom::parse(&m))
                .and_then(|m| {
                    let stats = http_get(proxy_addr, "/stats")?;
                    let stats: serde_json::Value =
                        serde_json::from_str(&stats).context("dpu-proxy /stats is not JSON")?;
                    Ok((m, stats))
                })
                .map_err(|e| format!("dpu-proxy {proxy_addr}: {e:#}"));
            let dataplane = http_get(dp_addr, "/metrics")
                .and_then(|m| prom::parse(&m))
                .map_err(|e| format!("dataplane {dp_addr}: {e:#}"));
            (proxy, dataplane)
        })
        .with_context(|| format!("entering {}", node.host.name()))?;
    let mut procs: Vec<ProcSample> = sim
        .processes()
        .context("reading the simulator's process records")?
        .into_iter()
        .filter(|p| p.netns == node.dpu.name() && p.is_alive())
        .map(|p| ProcSample {
            cpu_ticks: proc_cpu_ticks(p.pid),
            rss_kib: proc_rss_kib(p.pid),
            name: p.name,
            program: p.program,
            pid: p.pid,
        })
        .collect();
    procs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Scrape {
        at: Instant::now(),
        proxy,
        dataplane,
        procs,
    })
}

/// A plain HTTP/1.1 GET (`Connection: close`): the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path}: no end of headers in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("GET {path}: {status_line:?}");
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).with_context(|| format!("GET {path}: bad chunked body"))?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).with_context(|| format!("GET {path}: body is not UTF-8"))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("no chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("chunk of {size} bytes cut short");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One pod's row.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRow {
    pub name: String,
    pub namespace: String,
    pub workload: Option<String>,
    pub rps: Option<f64>,
    pub error_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_bps: Option<f64>,
    pub out_bps: Option<f64>,
    pub drops: Option<f64>,
    pub steered_pps: Option<f64>,
    pub steered_cps: Option<f64>,
    pub bypassed_pps: Option<f64>,
}

/// One DPU process's row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub name: String,
    pub program: String,
    pub pid: u32,
    pub cpu_pct: Option<f64>,
    pub rss_mib: Option<f64>,
}

/// What `dpumesh top` shows for one interval.
#[derive(Debug, Clone)]
pub struct Frame {
    pub title: String,
    pub header: Vec<String>,
    pub pods: Vec<PodRow>,
    pub procs: Vec<ProcRow>,
}

impl Frame {
    pub fn build(sim: &Sim, node: &Node, prev: &Scrape, cur: &Scrape) -> Frame {
        let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let mgmt = node.mgmt_dpu.addr();
        let title = format!(
            "dpumesh top - cluster {}, node {} (DPU netns {}), {:.1}s interval",
            sim.cluster(),
            node.index,
            node.dpu.name(),
            dt
        );
        let mut header = Vec::new();
        match &cur.proxy {
            Ok((_, stats)) => header.push(format!(
                "dpu-proxy {mgmt}:{PROXY_ADMIN_PORT}: config version {}, pushes {} accepted / {} refused",
                stats["config_version"], stats["config_pushes_accepted"], stats["config_pushes_rejected"]
            )),
            Err(e) => header.push(format!("dpu-proxy: unreachable: {e}")),
        }
        match &cur.dataplane {
            Ok(m) => {
                let info = m.iter().find(|s| s.name == "dpumesh_dataplane_info");
                header.push(format!(
                    "dataplane {mgmt}:{DATAPLANE_ADMIN_PORT}: backend {}, mode {}, ready {}, pods {}, changes accepted {}",
                    info.map(|s| s.label("backend")).unwrap_or("?"),
                    info.map(|s| s.label("mode")).unwrap_or("?"),
                    sum_where(m, "dpumesh_dataplane_ready", |_| true),
                    sum_where(m, "dpumesh_dataplane_pods", |_| true),
                    sum_where(m, "dpumesh_dataplane_accepted_changes_total", |_| true),
                ));
            }
            Err(e) => header.push(format!("dataplane: unreachable: {e}")),
        }
        Frame {
            title,
            header,
            pods: pod_rows(prev, cur, dt),
            procs: proc_rows(prev, cur, dt),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.title);
        out.push('\n');
        for h in &self.header {
            out.push_str(h);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<20} {:<10} {:>8} {:>6} {:>8} {:>8} {:>10} {:>10} {:>7} {:>9} {:>8} {:>10}\n",
            "POD",
            "NAMESPACE",
            "RPS",
            "ERR%",
            "P50(ms)",
            "P99(ms)",
            "IN(B/s)",
            "OUT(B/s)",
            "DROPS",
            "STEER/s",
            "CONN/s",
            "BYPASS/s"
        ));
        if self.pods.is_empty() {
            out.push_str("(no pods)\n");
        }
        for p in &self.pods {
            out.push_str(&format!(
                "{:<20} {:<10} {:>8} {:>6} {:>8} {:>8} {:>10} {:>10} {:>7} {:>9} {:>8} {:>10}\n",
                p.name,
                p.namespace,
                num(p.rps, 1),
                num(p.error_pct, 1),
                num(p.p50_ms, 2),
                num(p.p99_ms, 2),
                num(p.in_bps, 0),
                num(p.out_bps, 0),
                num(p.drops, 0),
                num(p.steered_pps, 1),
                num(p.steered_cps, 1),
                num(p.bypassed_pps, 1),
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<20} {:<20} {:>8} {:>7} {:>9}\n",
            "PROCESS (DPU)", "PROGRAM", "PID", "CPU%", "RSS(MiB)"
        ));
        if self.procs.is_empty() {
            out.push_str("(no processes recorded in the DPU netns)\n");
        }
        for p in &self.procs {
            out.push_str(&format!(
                "{:<20} {:<20} {:>8} {:>7} {:>9}\n",
                p.name,
                p.program,
                p.pid,
                num(p.cpu_pct, 1),
                num(p.rss_mib, 1)
            ));
        }
        out
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_string(),
    }
}

/// Does a proxy request/TCP series belong to the pod of workload `w` in `ns`?
/// Outbound: the proxy reports as `source` for the pod that sent it; inbound:
/// as `destination` for the pod that received it.
fn proxy_series_of(s: &Sample, w: &str, ns: &str) -> bool {
    match s.label("reporter") {
        "source" => s.label("source_workload") == w && s.label("source_workload_namespace") == ns,
        "destination" => {
            s.label("destination_workload") == w && s.label("destination_workload_namespace") == ns
        }
        _ => false,
    }
}

fn pod_rows(prev: &Scrape, cur: &Scrape, dt: f64) -> Vec<PodRow> {
    // Pods: the dataplane's (per-pod series) and the proxy's (served config).
    let mut pods: Vec<(String, String, Option<String>)> = Vec::new();
    if let Ok(m) = &cur.dataplane {
        for s in m
            .iter()
            .filter(|s| s.name == "dpumesh_dataplane_pod_packets_total")
        {
            let key = (s.label("pod").to_string(), s.label("namespace").to_string());
            if !pods.iter().any(|(n, ns, _)| (n, ns) == (&key.0, &key.1)) {
                pods.push((key.0, key.1, None));
            }
        }
    }
    if let Ok((_, stats)) = &cur.proxy {
        for p in stats["pods"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let ns = p["namespace"].as_str().unwrap_or_default().to_string();
            let workload = p["workload"].as_str().map(str::to_string);
            match pods
                .iter_mut()
                .find(|(n, n_ns, _)| *n == name && *n_ns == ns)
            {
                Some(entry) => entry.2 = workload,
                None => pods.push((name, ns, workload)),
            }
        }
    }
    pods.sort();

    let proxy = match (&prev.proxy, &cur.proxy) {
        (Ok((a, _)), Ok((b, _))) => Some((a, b)),
        _ => None,
    };
    let dataplane = match (&prev.dataplane, &cur.dataplane) {
        (Ok(a), Ok(b)) => Some((a, b)),
        _ => None,
    };
    pods.into_iter()
        .map(|(name, namespace, workload)| {
            let mut row = PodRow {
                name: name.clone(),
                namespace: namespace.clone(),
                workload: workload.clone(),
                rps: None,
                error_pct: None,
                p50_ms: None,
                p99_ms: None,
                in_bps: None,
                out_bps: None,
                drops: None,
                steered_pps: None,
                steered_cps: None,
                bypassed_pps: None,
            };
            if let (Some((a, b)), Some(w)) = (proxy, workload.as_deref()) {
                let mine = |s: &Sample| proxy_series_of(s, w, &namespace);
                let err = |s: &Sample| mine(s) && s.label("response_code").starts_with('5');
                let reqs = counter_delta(
                    sum_where(a, "istio_requests_total", mine),
                    sum_where(b, "istio_requests_total", mine),
                );
                let errs = counter_delta(
                    sum_where(a, "istio_requests_total", err),
                    sum_where(b, "istio_requests_total", err),
                );
                row.rps = Some(reqs / dt);
                row.error_pct = (reqs > 0.0).then(|| 100.0 * errs / reqs);
                let d = buckets_delta(
                    &buckets_where(a, "istio_request_duration_milliseconds", mine),
                    &buckets_where(b, "istio_request_duration_milliseconds", mine),
                );
                row.p50_ms = histogram_quantile(0.5, &d);
                row.p99_ms = histogram_quantile(0.99, &d);
            }
            if let Some((a, b)) = dataplane {
                let mine = |s: &Sample| s.label("pod") == name && s.label("namespace") == namespace;
                let rate = |metric: &str, extra: &dyn Fn(&Sample) -> bool| {
                    counter_delta(
                        sum_where(a, metric, |s| mine(s) && extra(s)),
                        sum_where(b, metric, |s| mine(s) && extra(s)),
                    ) / dt
                };
                if b.iter()
                    .any(|s| s.name == "dpumesh_dataplane_pod_packets_total" && mine(s))
                {
                    row.in_bps = Some(rate("dpumesh_dataplane_pod_bytes_total", &|s| {
                        s.label("direction") == "in"
                    }));
                    row.out_bps = Some(rate("dpumesh_dataplane_pod_bytes_total", &|s| {
                        s.label("direction") == "out"
                    }));
                    row.drops = Some(sum_where(b, "dpumesh_dataplane_pod_drops_total", mine));
                    row.steered_pps = Some(rate(
                        "dpumesh_dataplane_pod_proxy_socket_packets_total",
                        &|_| true,
                    ));
                    row.steered_cps = Some(rate(
                        "dpumesh_dataplane_pod_steered_connections_total",
                        &|_| true,
                    ));
                    row.bypassed_pps = Some(rate(
                        "dpumesh_dataplane_pod_bypassed_packets_total",
                        &|_| true,
                    ));
                }
            }
            row
        })
        .collect()
}

fn proc_rows(prev: &Scrape, cur: &Scrape, dt: f64) -> Vec<ProcRow> {
    cur.procs
        .iter()
        .map(|p| {
            let before = prev
                .procs
                .iter()
                .find(|q| q.pid == p.pid)
                .and_then(|q| q.cpu_ticks);
            let cpu_pct = match (before, p.cpu_ticks) {
                (Some(a), Some(b)) if b >= a => Some(100.0 * (b - a) as f64 / USER_HZ / dt),
                _ => None,
            };
            ProcRow {
                name: p.name.clone(),
                program: std::path::Path::new(&p.program)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.program.clone()),
                pid: p.pid,
                cpu_pct,
                rss_mib: p.rss_kib.map(|k| k as f64 / 1024.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "s", "1h", "10ms", "abc", "-1s", "1.2.3s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    fn scrape_of(proxy: &str, dataplane: &str, at: Instant) -> Scrape {
        let stats = serde_json::json!({
            "config_version": 3, "config_pushes_accepted": 3, "config_pushes_rejected": 1,
            "pods": [{"name": "web-0", "namespace": "shop", "workload": "web"}]
        });
        Scrape {
            at,
            proxy: Ok((prom::parse(proxy).unwrap(), stats)),
            dataplane: Ok(prom::parse(dataplane).unwrap()),
            procs: vec![],
        }
    }

    #[test]
    fn pod_rows_join_proxy_and_dataplane_by_pod_and_workload() {
        let t0 = Instant::now();
        let series = |code: &str, n: u32| {
            format!("istio_requests_total{{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"shop\",response_code=\"{code}\"}} {n}\n\
                     istio_requests_total{{reporter=\"destination\",source_workload=\"web\",source_workload_namespace=\"shop\",destination_workload=\"db\",destination_workload_namespace=\"shop\",response_code=\"200\"}} 1000\n")
        };
        let hist = |fast: u32, slow: u32| {
            format!("istio_request_duration_milliseconds_bucket{{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"shop\",le=\"1\"}} {fast}\n\
                     istio_request_duration_milliseconds_bucket{{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"shop\",le=\"10\"}} {}\n\
                     istio_request_duration_milliseconds_bucket{{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"shop\",le=\"+Inf\"}} {}\n", fast + slow, fast + slow)
        };
        let dp = |pkts: u32, bytes: u32, byp: u32| {
            format!("dpumesh_dataplane_pod_packets_total{{pod=\"web-0\",namespace=\"shop\",representor=\"pf0vf0\",direction=\"out\"}} {pkts}\n\
                     dpumesh_dataplane_pod_bytes_total{{pod=\"web-0\",namespace=\"shop\",representor=\"pf0vf0\",direction=\"out\"}} {bytes}\n\
                     dpumesh_dataplane_pod_bytes_total{{pod=\"web-0\",namespace=\"shop\",representor=\"pf0vf0\",direction=\"in\"}} 0\n\
                     dpumesh_dataplane_pod_drops_total{{pod=\"web-0\",namespace=\"shop\",representor=\"pf0vf0\",reason=\"spoof_ip\"}} 4\n\
                     dpumesh_dataplane_pod_bypassed_packets_total{{pod=\"web-0\",namespace=\"shop\",representor=\"pf0vf0\"}} {byp}\n\
                     dpumesh_dataplane_pod_packets_total{{pod=\"other\",namespace=\"shop\",representor=\"pf0vf1\",direction=\"out\"}} 1\n")
        };
        let prev = scrape_of(
            &(series("200", 100) + &series("503", 0) + &hist(100, 0)),
            &dp(10, 1000, 5),
            t0,
        );
        // 2 s later: +18 OK, +2 errors, 20 requests all in (1,10] ms.
        let cur = scrape_of(
            &(series("200", 118) + &series("503", 2) + &hist(100, 20)),
            &dp(30, 5000, 25),
            t0 + Duration::from_secs(2),
        );
        let rows = pod_rows(&prev, &cur, 2.0);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["other", "web-0"]);
        let web = &rows[1];
        assert_eq!(web.workload.as_deref(), Some("web"));
        // The inbound series of workload db is not web's.
        assert_eq!(web.rps, Some(10.0));
        assert_eq!(web.error_pct, Some(10.0));
        let p50 = web.p50_ms.unwrap();
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        assert_eq!(web.out_bps, Some(2000.0));
        assert_eq!(web.in_bps, Some(0.0));
        assert_eq!(web.drops, Some(4.0));
        assert_eq!(web.bypassed_pps, Some(10.0));
        // A pod only the dataplane knows: no proxy columns.
        assert_eq!(rows[0].rps, None);
        let text = Frame {
            title: "t".into(),
            header: vec![],
            pods: rows,
            procs: vec![],
        }
        .render();
        assert!(text.contains("web-0"), "{text}");
    }
}

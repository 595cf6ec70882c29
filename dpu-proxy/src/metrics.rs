//! Istio's standard metrics, counted by the data path and exported in the
//! Prometheus/OpenMetrics text format on the admin port (`/metrics`).
//!
//! Names and labels are Istio's (telemetry v2), so existing dashboards work:
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`.
//!
//! Hot path: a request resolves its (source, destination) pair once through a
//! [`PairCache`] (lock-free read of a copy-on-write map held by the pod in the
//! compiled config) to a [`PairMetrics`], whose series for the request's
//! (code, flags, protocol) are found by a linear scan of a copy-on-write list.
//! Recording is then atomic adds only. Label sets are built (allocated) only
//! the first time a combination is seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::proxy::Flags;

/// Istio's (Envoy's default) histogram buckets, used for all three histograms.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's default `destination_cluster`/`source_cluster` (the mesh's
/// Kubernetes cluster ID, not an Envoy cluster).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The identity labels of one workload (source or destination side).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
}

impl WorkloadLabels {
    pub fn unknown() -> WorkloadLabels {
        let u = || "unknown".to_string();
        WorkloadLabels {
            workload: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
        }
    }

    /// Istio names a workload after the pod's owner (the Deployment). The
    /// NodeConfig carries no owner references, so: the `app.kubernetes.io/name`
    /// (else `app`) label, suffixed with `-<version label>` when there is one
    /// (Bookinfo's `reviews-v1`); without such a label, the pod name with the
    /// ReplicaSet suffixes (`-<pod-template-hash>-<5 chars>`) or a StatefulSet
    /// ordinal stripped; else "unknown".
    pub fn derive(
        pod_name: Option<&str>,
        namespace: &str,
        principal: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkloadLabels {
        let app = labels
            .get("app.kubernetes.io/name")
            .or_else(|| labels.get("app"))
            .cloned();
        let version = labels
            .get("app.kubernetes.io/version")
            .or_else(|| labels.get("version"))
            .cloned();
        let workload = match (&app, &version) {
            (Some(a), Some(v)) => format!("{a}-{v}"),
            (Some(a), None) => a.clone(),
            (None, _) => pod_name
                .map(|n| owner_name(n, labels.get("pod-template-hash").map(String::as_str)))
                .unwrap_or_else(|| "unknown".to_string()),
        };
        let or_unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                s.to_string()
            }
        };
        WorkloadLabels {
            workload,
            namespace: or_unknown(namespace),
            principal: or_unknown(principal),
            app: app.unwrap_or_else(|| "unknown".to_string()),
            version: version.unwrap_or_else(|| "unknown".to_string()),
        }
    }
}

/// `reviews-v1-7d4c8f9b6-x2x7k` (with hash 7d4c8f9b6) → `reviews-v1`;
/// `db-0` → `db`; anything else unchanged.
fn owner_name(pod: &str, template_hash: Option<&str>) -> String {
    if let Some(h) = template_hash {
        if let Some((base, _)) = pod.rsplit_once('-') {
            if let Some(owner) = base.strip_suffix(h).and_then(|b| b.strip_suffix('-')) {
                return owner.to_string();
            }
        }
    }
    if let Some((base, ord)) = pod.rsplit_once('-') {
        if !base.is_empty() && !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit()) {
            return base.to_string();
        }
    }
    pod.to_string()
}

/// Who reports: `source` for outbound (the client side), `destination` for inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The labels fixed for one (source, destination) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    pub reporter: Reporter,
    pub source: Arc<WorkloadLabels>,
    pub destination: Arc<WorkloadLabels>,
    /// FQDN of the destination service (`reviews.default.svc.cluster.local`).
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub source_cluster: String,
}

impl PeerLabels {
    fn encode_into(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.source;
        let d = &self.destination;
        let pairs: [(&str, &str); 16] = [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &s.workload),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_version", &s.version),
            ("source_cluster", &self.source_cluster),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_version", &d.version),
            ("destination_service", &self.destination_service),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("destination_cluster", &self.destination_cluster),
        ];
        for (k, v) in pairs {
            (k, v).encode(enc.encode_label())?;
        }
        Ok(())
    }
}

/// `request_protocol` of an HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    Http,
    Grpc,
}

/// `connection_security_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// What Istio reports on the source side.
    Unknown,
    /// Plaintext (inbound without mTLS).
    None,
    MutualTls,
}

impl SecurityPolicy {
    fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::Unknown => "unknown",
            SecurityPolicy::None => "none",
            SecurityPolicy::MutualTls => "mutual_tls",
        }
    }
}

/// The per-request part of the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub protocol: RequestProtocol,
    pub response_code: u16,
    /// gRPC status from `grpc-status`; `None` for non-gRPC (label "").
    pub grpc_status: Option<u16>,
    pub flags: Flags,
    pub security: SecurityPolicy,
}

/// Label set of the request metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    peer: Arc<PeerLabels>,
    key: RequestKey,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.peer.encode_into(enc)?;
        let k = &self.key;
        let protocol = match k.protocol {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        };
        ("request_protocol", protocol).encode(enc.encode_label())?;
        ("response_code", k.response_code).encode(enc.encode_label())?;
        let grpc = k.grpc_status.map(|g| g.to_string()).unwrap_or_default();
        ("grpc_response_status", grpc.as_str()).encode(enc.encode_label())?;
        ("response_flags", k.flags.to_string().as_str()).encode(enc.encode_label())?;
        ("connection_security_policy", k.security.as_str()).encode(enc.encode_label())
    }
}

/// The per-connection part of the TCP labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpKey {
    pub flags: Flags,
    pub security: SecurityPolicy,
}

/// Label set of the TCP metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    peer: Arc<PeerLabels>,
    key: TcpKey,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.peer.encode_into(enc)?;
        ("request_protocol", "tcp").encode(enc.encode_label())?;
        ("response_flags", self.key.flags.to_string().as_str()).encode(enc.encode_label())?;
        ("connection_security_policy", self.key.security.as_str()).encode(enc.encode_label())
    }
}

/// A histogram over [`BUCKETS`] made of atomics only (prometheus-client's own
/// takes a lock per observation). Observations are integers in units of
/// 1/`SCALE` of the exported unit (µs for milliseconds: `SCALE` = 1000).
#[derive(Debug, Clone, Default)]
pub struct AtomicHistogram<const SCALE: u64>(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    /// One per bucket, plus +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const SCALE: u64> AtomicHistogram<SCALE> {
    pub fn observe(&self, scaled: u64) {
        let v = scaled as f64 / SCALE as f64;
        let i = BUCKETS.partition_point(|b| *b < v);
        let h = &self.0;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum.fetch_add(scaled, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.0.sum.load(Ordering::Relaxed) as f64 / SCALE as f64
    }
}

impl<const SCALE: u64> TypedMetric for AtomicHistogram<SCALE> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<const SCALE: u64> EncodeMetric for AtomicHistogram<SCALE> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Millis = AtomicHistogram<1000>;
type Bytes = AtomicHistogram<1>;

/// Series handles of one (pair, request key).
#[derive(Debug)]
struct RequestSeries {
    requests: Counter,
    duration: Millis,
    request_bytes: Bytes,
    response_bytes: Bytes,
}

#[derive(Debug)]
struct TcpSeries {
    sent: Counter,
    received: Counter,
    opened: Counter,
    closed: Counter,
}

/// The metric families, registered in one registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Millis>,
    request_bytes: Family<RequestLabels, Bytes>,
    response_bytes: Family<RequestLabels, Bytes>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    /// Inbound policy decisions that refused or audited something, by policy.
    authz: Family<Vec<(&'static str, String)>, Counter>,
    /// Pairs of traffic whose local pod is not in the config (inbound to an
    /// address the config does not know).
    pub unattributed: PairCache,
    pub cluster_id: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_CLUSTER_ID)
    }
}

impl Metrics {
    pub fn new(cluster_id: &str) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Millis>::default();
        let request_bytes = Family::<RequestLabels, Bytes>::default();
        let response_bytes = Family::<RequestLabels, Bytes>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let authz = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "dpumesh_authz",
            "Inbound policy decisions counted under the policy's name: action deny \
             (AuthorizationPolicy), peer_authentication (plaintext under STRICT) or audit",
            authz.clone(),
        );
        registry.register(
            "istio_requests",
            "Requests, by source and destination workload, response code and flags",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration (until the response has been sent)",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request size: headers and body",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response size: headers and body",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream on TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream on TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            authz,
            unattributed: PairCache::default(),
            cluster_id: cluster_id.to_string(),
        }
    }

    /// Counts one inbound policy decision: `action` is `deny`,
    /// `peer_authentication` or `audit`; `pod` is `namespace/name` of the
    /// destination pod; `protocol` `tcp` or `http`.
    pub fn authz(&self, policy: &str, action: &str, pod: &str, protocol: &str) {
        let labels = vec![
            ("policy", policy.to_string()),
            ("action", action.to_string()),
            ("destination_pod", pod.to_string()),
            ("protocol", protocol.to_string()),
        ];
        self.authz.get_or_create(&labels).inc();
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }

    fn request_series(&self, peer: &Arc<PeerLabels>, key: RequestKey) -> Arc<RequestSeries> {
        let labels = RequestLabels {
            peer: peer.clone(),
            key,
        };
        Arc::new(RequestSeries {
            requests: self.requests.get_or_create_owned(&labels),
            duration: self.duration.get_or_create_owned(&labels),
            request_bytes: self.request_bytes.get_or_create_owned(&labels),
            response_bytes: self.response_bytes.get_or_create_owned(&labels),
        })
    }

    fn tcp_series(&self, peer: &Arc<PeerLabels>, key: TcpKey) -> Arc<TcpSeries> {
        let labels = TcpLabels {
            peer: peer.clone(),
            key,
        };
        Arc::new(TcpSeries {
            sent: self.tcp_sent.get_or_create_owned(&labels),
            received: self.tcp_received.get_or_create_owned(&labels),
            opened: self.tcp_opened.get_or_create_owned(&labels),
            closed: self.tcp_closed.get_or_create_owned(&labels),
        })
    }
}

/// The metrics of one (source, destination) pair.
#[derive(Debug)]
pub struct PairMetrics {
    pub peer: Arc<PeerLabels>,
    requests: ArcSwap<Vec<(RequestKey, Arc<RequestSeries>)>>,
    tcp: ArcSwap<Vec<(TcpKey, Arc<TcpSeries>)>>,
}

impl PairMetrics {
    pub fn new(peer: PeerLabels) -> PairMetrics {
        PairMetrics {
            peer: Arc::new(peer),
            requests: ArcSwap::from_pointee(Vec::new()),
            tcp: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Counts one finished request.
    pub fn record_request(
        &self,
        m: &Metrics,
        key: RequestKey,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let record = |s: &RequestSeries| {
            s.requests.inc();
            s.duration.observe(duration.as_micros() as u64);
            s.request_bytes.observe(request_bytes);
            s.response_bytes.observe(response_bytes);
        };
        if let Some((_, s)) = self.requests.load().iter().find(|(k, _)| *k == key) {
            return record(s);
        }
        let series = m.request_series(&self.peer, key);
        self.requests.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(k, _)| *k == key) {
                list.push((key, series.clone()));
            }
            list
        });
        record(&series);
    }

    fn tcp(&self, m: &Metrics, key: TcpKey) -> Arc<TcpSeries> {
        if let Some((_, s)) = self.tcp.load().iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let series = m.tcp_series(&self.peer, key);
        self.tcp.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(k, _)| *k == key) {
                list.push((key, series.clone()));
            }
            list
        });
        series
    }

    pub fn tcp_opened(&self, m: &Metrics, key: TcpKey) {
        self.tcp(m, key).opened.inc();
    }

    /// Counts a closed connection and its bytes (`sent` = to the downstream).
    pub fn tcp_closed(&self, m: &Metrics, key: TcpKey, sent: u64, received: u64) {
        let s = self.tcp(m, key);
        s.closed.inc();
        s.sent.inc_by(sent);
        s.received.inc_by(received);
    }
}

/// (source, destination) → [`PairMetrics`], filled lazily, read without locks.
#[derive(Debug, Default)]
pub struct PairCache(ArcSwap<HashMap<u64, Arc<PairMetrics>>>);

impl PairCache {
    pub fn get_or_insert(&self, key: u64, make: impl FnOnce() -> PeerLabels) -> Arc<PairMetrics> {
        if let Some(p) = self.0.load().get(&key) {
            return p.clone();
        }
        let pair = Arc::new(PairMetrics::new(make()));
        let mut out = pair.clone();
        self.0.rcu(|map| {
            let mut map = HashMap::clone(map);
            out = map.entry(key).or_insert_with(|| pair.clone()).clone();
            map
        });
        out
    }
}

/// Per-pod counters shown by `/stats` (kept across config swaps by pod UID).
#[derive(Debug, Default)]
pub struct PodCounters {
    pub requests_out: AtomicU64,
    pub requests_in: AtomicU64,
    pub tcp_out: AtomicU64,
    pub tcp_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub rate_limited: AtomicU64,
    pub errors_5xx: AtomicU64,
}

impl PodCounters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "requests_out": g(&self.requests_out),
            "requests_in": g(&self.requests_in),
            "tcp_out": g(&self.tcp_out),
            "tcp_in": g(&self.tcp_in),
            "bytes_out": g(&self.bytes_out),
            "bytes_in": g(&self.bytes_in),
            "rate_limited": g(&self.rate_limited),
            "responses_5xx": g(&self.errors_5xx),
        })
    }
}

/// Formats a Unix time in ms as RFC 3339 UTC with milliseconds (Envoy's
/// `%START_TIME%`), without a date library.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        unix_ms % 1000
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names() {
        let l = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let w = WorkloadLabels::derive(
            Some("reviews-v1-7d4c8f9b6-x2x7k"),
            "default",
            "spiffe://cluster.local/ns/default/sa/reviews",
            &l(&[("app", "reviews"), ("version", "v1")]),
        );
        assert_eq!(
            (w.workload.as_str(), w.app.as_str()),
            ("reviews-v1", "reviews")
        );
        let w = WorkloadLabels::derive(
            Some("web-7d4c8f9b6-x2x7k"),
            "default",
            "",
            &l(&[("pod-template-hash", "7d4c8f9b6")]),
        );
        assert_eq!(
            (w.workload.as_str(), w.app.as_str(), w.principal.as_str()),
            ("web", "unknown", "unknown")
        );
        assert_eq!(owner_name("db-0", None), "db");
        assert_eq!(owner_name("standalone", None), "standalone");
    }

    #[test]
    fn histogram_buckets_and_time_format() {
        let h = Millis::default();
        h.observe(400); // 0.4 ms
        h.observe(1_000); // 1 ms: le="1"
        h.observe(7_200_000_000); // 2 h: +Inf
        assert_eq!(h.count(), 3);
        assert_eq!(h.0.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.0.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(h.0.buckets[BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}

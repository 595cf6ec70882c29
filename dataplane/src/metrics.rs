//! The dataplane's Prometheus metrics, all under the prefix
//! `dpumesh_dataplane_` (names and labels: docs/dataplane.md).
//!
//! The counters live in the backend (per-CPU BPF maps for the eBPF backend),
//! so every scrape reads them afresh into a new registry: nothing is cached
//! and a removed pod's series disappear with it.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::control::{self, ControlState};
use crate::registry::PodStats;

pub const PREFIX: &str = "dpumesh_dataplane";

type Labels = Vec<(String, String)>;

fn with(base: &Labels, key: &str, value: &str) -> Labels {
    let mut l = base.clone();
    l.push((key.to_string(), value.to_string()));
    l
}

/// The per-pod counter families.
struct PodFamilies {
    packets: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    steered: Family<Labels, Counter>,
    proxy_socket: Family<Labels, Counter>,
    bypassed: Family<Labels, Counter>,
    arp_replies: Family<Labels, Counter>,
}

impl PodFamilies {
    fn new(registry: &mut Registry) -> PodFamilies {
        let f = PodFamilies {
            packets: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
            steered: Family::default(),
            proxy_socket: Family::default(),
            bypassed: Family::default(),
            arp_replies: Family::default(),
        };
        registry.register(
            "pod_packets",
            "Packets of a pod's VF, direction=out (sent by the pod, drops included) or in (delivered to it)",
            f.packets.clone(),
        );
        registry.register(
            "pod_bytes",
            "Bytes of a pod's VF, direction=out or in (as pod_packets)",
            f.bytes.clone(),
        );
        registry.register(
            "pod_drops",
            "Packets from a pod dropped by the dataplane, by reason",
            f.drops.clone(),
        );
        registry.register(
            "pod_steered_connections",
            "Connections (SYNs) steered into dpu-proxy, listener=outbound (15001, from the pod) or inbound (15006, to the pod)",
            f.steered.clone(),
        );
        registry.register(
            "pod_proxy_socket_packets",
            "Packets of established dpu-proxy connections delivered to the proxy's sockets",
            f.proxy_socket.clone(),
        );
        registry.register(
            "pod_bypassed_packets",
            "Packets forwarded without the proxy (to a local pod, a peer node or the FIB)",
            f.bypassed.clone(),
        );
        registry.register(
            "pod_arp_replies",
            "ARP requests of the pod answered by the dataplane",
            f.arp_replies.clone(),
        );
        f
    }

    fn record(&self, base: &Labels, s: &PodStats) {
        let set = |family: &Family<Labels, Counter>, labels: Labels, v: u64| {
            family.get_or_create(&labels).inc_by(v);
        };
        set(&self.packets, with(base, "direction", "out"), s.packets_out);
        set(&self.packets, with(base, "direction", "in"), s.packets_in);
        set(&self.bytes, with(base, "direction", "out"), s.bytes_out);
        set(&self.bytes, with(base, "direction", "in"), s.bytes_in);
        for (reason, n) in &s.drops {
            set(&self.drops, with(base, "reason", reason), *n);
        }
        set(
            &self.steered,
            with(base, "listener", "outbound"),
            s.steered_outbound,
        );
        set(
            &self.steered,
            with(base, "listener", "inbound"),
            s.steered_inbound,
        );
        set(&self.proxy_socket, base.clone(), s.to_proxy_socket);
        set(&self.bypassed, base.clone(), s.bypassed);
        set(&self.arp_replies, base.clone(), s.arp_replies);
    }
}

/// The metrics text (Prometheus/OpenMetrics text format) now.
pub fn render(state: &ControlState) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    let status = control::status(state);
    let reg = &state.registry;
    let backend = reg.backend();

    let info: Family<Labels, Gauge> = Family::default();
    registry.register(
        "info",
        "Constant 1, labelled with the node, backend and network mode",
        info.clone(),
    );
    let mode = reg
        .network()
        .map(|n| format!("{:?}", n.mode).to_lowercase())
        .unwrap_or_else(|| "unset".into());
    info.get_or_create(&vec![
        ("node".to_string(), reg.node().to_string()),
        ("backend".to_string(), backend.name().to_string()),
        ("mode".to_string(), mode),
    ])
    .set(1);
    let ready: Gauge = Gauge::default();
    registry.register(
        "ready",
        "1 when the node network is set and the backend is healthy",
        ready.clone(),
    );
    ready.set(i64::from(status.ready));
    let pods = reg.pods();
    let pod_count: Gauge = Gauge::default();
    registry.register(
        "pods",
        "Pods registered with the dataplane",
        pod_count.clone(),
    );
    pod_count.set(i64::try_from(pods.len()).unwrap_or(i64::MAX));
    let changes: Counter = Counter::default();
    registry.register(
        "accepted_changes",
        "Accepted control API changes (node network and pods) since start",
        changes.clone(),
    );
    changes.inc_by(reg.generation());

    let families = PodFamilies::new(&mut registry);
    for pod in &pods {
        if let Some(s) = backend.pod_stats(&pod.uid) {
            let base = vec![
                ("pod".to_string(), pod.name.clone()),
                ("namespace".to_string(), pod.namespace.clone()),
                ("representor".to_string(), pod.representor.clone()),
            ];
            families.record(&base, &s);
        }
    }
    let unattributed: Family<Labels, Counter> = Family::default();
    registry.register(
        "unattributed_drops",
        "Packets dropped that no pod can be charged with (e.g. from a VF with no pod), by reason",
        unattributed.clone(),
    );
    if let Some(s) = backend.unattributed_stats() {
        for (reason, n) in &s.drops {
            unattributed
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .inc_by(*n);
        }
    }

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

//! The ADS client: one stream per local pod to istiod, speaking as that pod's
//! sidecar, in either xDS variant ([`XdsVariant`]: state of the world here,
//! incremental in [`super::delta`]); an aggregator that translates the union of
//! every pod's resources and pushes the result to dpu-proxy. Both variants feed
//! the aggregator the same decoded resources.
//!
//! ACK/NACK rules (`docs/adapter.md`): a response is NACKed (previous
//! `version_info`, its nonce, `error_detail` naming the resource) when a resource
//! in it does not decode, when translating with it fails, when the resulting
//! NodeConfig does not validate, or when dpu-proxy refuses it; the pod's
//! resources of that type then stay as they were. Otherwise it is ACKed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use prost::{Message, Name};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::resource::{
    Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE, TYPE_URLS,
};
use super::ProxyResources;
use crate::inventory::{Inventory, PodSpec};
use crate::push::{PushError, Pushed, Pusher};
use crate::translate;

/// gRPC code INVALID_ARGUMENT, used in `error_detail` of a NACK.
pub(super) const INVALID_ARGUMENT: i32 = 3;
pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Which ADS protocol the adapter speaks to istiod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdsVariant {
    /// Incremental xDS (`DeltaAggregatedResources`): what Envoy sidecars speak to
    /// istiod by default since Istio 1.22.
    #[default]
    Delta,
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
}

impl std::fmt::Display for XdsVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdsVariant::Delta => "delta",
            XdsVariant::Sotw => "sotw",
        })
    }
}

/// What one accepted-or-not response would change in a pod's resources of one type.
#[derive(Debug, Clone)]
pub(super) enum Update {
    /// State of the world: these are all the resources of the type.
    Replace(Vec<Resource>),
    /// Incremental: these resources are added or replaced (by name), those removed.
    Delta {
        updated: Vec<Resource>,
        removed: Vec<String>,
    },
}

/// The aggregator's answer to one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ack,
    Nack(String),
}

pub(super) enum Event {
    /// A stream (re)subscribed to `type_url`; until a response arrives the pod is warming.
    Subscribed { pod: String, type_url: String },
    /// A response to judge (and keep, if it is good). A stream that ends leaves
    /// the pod's state as it was until it reconnects.
    Response {
        pod: String,
        type_url: String,
        version: String,
        update: Update,
        reply: oneshot::Sender<Verdict>,
    },
}

/// The ADS client's settings.
#[derive(Debug, Clone)]
pub struct AdsSettings {
    /// istiod's xDS address, e.g. `http://istiod.istio-system.svc:15010`.
    pub xds_addr: String,
    /// dpu-proxy's control address.
    pub proxy_addr: String,
    /// Istio version announced in node metadata.
    pub istio_version: String,
    /// State of the world or incremental.
    pub variant: XdsVariant,
}

/// Runs the adapter against an ADS server until the process ends.
pub async fn run(settings: AdsSettings, inventory: Inventory) {
    let (tx, rx) = mpsc::channel(64);
    for pod in inventory.pods.iter().filter(|p| p.meshed) {
        let node = proxy_node(pod, &inventory, &settings.istio_version);
        let (addr, key, events) = (settings.xds_addr.clone(), pod.key(), tx.clone());
        match settings.variant {
            XdsVariant::Sotw => tokio::spawn(pod_stream(addr, key, node, events)),
            XdsVariant::Delta => tokio::spawn(super::delta::pod_stream(addr, key, node, events)),
        };
    }
    drop(tx);
    aggregate(rx, inventory, Pusher::new(&settings.proxy_addr)).await;
}

/// The Envoy node a pod's sidecar would present to istiod.
pub fn proxy_node(pod: &PodSpec, inventory: &Inventory, istio_version: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let labels = Struct {
        fields: pod.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
    };
    let fields = [
        ("NAME", s(&pod.name)),
        ("NAMESPACE", s(&pod.namespace)),
        ("SERVICE_ACCOUNT", s(&pod.service_account)),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
        ("INSTANCE_IPS", s(&pod.ips.join(","))),
        ("CLUSTER_ID", s("Kubernetes")),
        ("ISTIO_VERSION", s(istio_version)),
        ("INTERCEPTION_MODE", s("REDIRECT")),
        ("NODE_NAME", s(&inventory.node.name)),
        (
            "PROXY_CONFIG",
            Value {
                kind: Some(Kind::StructValue(Struct::default())),
            },
        ),
        (
            "ISTIO_META_DPUMESH",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![s("shared-proxy")],
                })),
            },
        ),
    ];
    Node {
        id: pod.proxy_node_id(&inventory.node.dns_domain),
        cluster: format!(
            "{}.{}",
            pod.labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| pod.name.clone()),
            pod.namespace
        ),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        user_agent_name: "dpumesh-adapter".to_string(),
        ..Node::default()
    }
}

/// The EDS name an EDS cluster needs (its service name, else its name).
pub fn cluster_eds_name(c: &Cluster) -> Option<String> {
    if c.cluster_discovery_type != Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
        return None;
    }
    let service = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .unwrap_or_default();
    Some(if service.is_empty() {
        c.name.clone()
    } else {
        service
    })
}

/// The RDS names a listener refers to.
pub fn listener_rds_names(l: &Listener) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for chain in l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
    {
        for f in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names
}

/// EDS names a set of clusters needs (EDS clusters' service names).
pub fn eds_names(resources: &[Resource]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::Cluster(c) => cluster_eds_name(c),
            _ => None,
        })
        .collect()
}

/// RDS names a set of listeners refers to.
pub fn rds_names(resources: &[Resource]) -> BTreeSet<String> {
    resources
        .iter()
        .flat_map(|r| match r {
            Resource::Listener(l) => listener_rds_names(l),
            _ => BTreeSet::new(),
        })
        .collect()
}

/// The SDS names a cluster asks for on the ADS stream (as Envoy does:
/// `translate::tls::ads_secret_names`).
pub fn cluster_secret_names(c: &Cluster) -> BTreeSet<String> {
    translate::tls::ads_secret_names(c)
}

/// The types whose names resources of `type_url` refer to: clusters → EDS
/// and SDS, listeners → RDS.
pub(super) fn children(type_url: &str) -> &'static [&'static str] {
    match type_url {
        CLUSTER_TYPE => &[ENDPOINT_TYPE, SECRET_TYPE],
        LISTENER_TYPE => &[ROUTE_TYPE],
        _ => &[],
    }
}

/// The names of type `child` that one resource refers to.
pub(super) fn references(r: &Resource, child: &str) -> BTreeSet<String> {
    match (r, child) {
        (Resource::Cluster(c), ENDPOINT_TYPE) => cluster_eds_name(c).into_iter().collect(),
        (Resource::Cluster(c), SECRET_TYPE) => cluster_secret_names(c),
        (Resource::Listener(l), ROUTE_TYPE) => listener_rds_names(l),
        _ => BTreeSet::new(),
    }
}

/// The EDS, SDS or RDS names (`child` type) that a pod's current clusters or listeners need.
fn needed_names(px: &ProxyResources, child: &str) -> BTreeSet<String> {
    match child {
        ENDPOINT_TYPE => px.clusters.values().filter_map(cluster_eds_name).collect(),
        SECRET_TYPE => px
            .clusters
            .values()
            .flat_map(cluster_secret_names)
            .collect(),
        _ => px.listeners.values().flat_map(listener_rds_names).collect(),
    }
}

/// Per-type subscription state of one stream.
#[derive(Default)]
struct Subscription {
    names: BTreeSet<String>,
    accepted_version: String,
    last_nonce: String,
}

async fn pod_stream(addr: String, pod: String, node: Node, events: mpsc::Sender<Event>) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        match one_stream(&addr, &pod, &node, &events).await {
            Ok(()) => tracing::info!(%pod, "xDS stream closed by the server"),
            Err(e) => tracing::warn!(%pod, error = %e, "xDS stream failed"),
        }
        if events.is_closed() {
            return;
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_START; // it had been working: retry soon
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn one_stream(
    addr: &str,
    pod: &str,
    node: &Node,
    events: &mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(addr.to_string()).await?;
    let (req_tx, req_rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut subs: BTreeMap<&'static str, Subscription> = BTreeMap::new();
    let mut first = true;
    let request = |first: &mut bool,
                   type_url: &str,
                   sub: &Subscription,
                   error: Option<String>,
                   nonce: &str| {
        let node = if std::mem::take(first) {
            Some(node.clone())
        } else {
            None
        };
        DiscoveryRequest {
            version_info: sub.accepted_version.clone(),
            node,
            resource_names: sub.names.iter().cloned().collect(),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        }
    };
    // Wildcard subscriptions first, as a sidecar does: CDS, then LDS.
    for type_url in [CLUSTER_TYPE, LISTENER_TYPE] {
        let sub = subs.entry(type_url).or_default();
        events
            .send(Event::Subscribed {
                pod: pod.to_string(),
                type_url: type_url.to_string(),
            })
            .await?;
        req_tx
            .send(request(&mut first, type_url, sub, None, ""))
            .await?;
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    while let Some(response) = inbound.message().await? {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = response;
        let Some(type_key) = TYPE_URLS.into_iter().find(|t| *t == type_url) else {
            tracing::warn!(%pod, %type_url, "response for a type never requested; ignored");
            continue;
        };
        let decoded: Result<Vec<Resource>, _> = resources
            .iter()
            .enumerate()
            .map(|(i, any)| Resource::from_any(any, type_key, &format!("#{i}")))
            .collect();
        let verdict = match decoded {
            Err(e) => (Verdict::Nack(e.to_string()), Vec::new()),
            Ok(list) => {
                let (reply, answer) = oneshot::channel();
                events
                    .send(Event::Response {
                        pod: pod.to_string(),
                        type_url: type_url.clone(),
                        version: version_info.clone(),
                        update: Update::Replace(list.clone()),
                        reply,
                    })
                    .await?;
                (
                    answer
                        .await
                        .unwrap_or(Verdict::Nack("adapter shutting down".into())),
                    list,
                )
            }
        };
        let sub = subs.entry(type_key).or_default();
        sub.last_nonce = nonce.clone();
        match verdict.0 {
            Verdict::Ack => {
                sub.accepted_version = version_info;
                req_tx
                    .send(request(&mut first, type_key, sub, None, &nonce))
                    .await?;
                tracing::debug!(%pod, type_url = type_key, version = %sub.accepted_version, "ACK");
                // Follow the references: clusters → EDS and SDS, listeners → RDS.
                for &child in children(type_key) {
                    let names: BTreeSet<String> = verdict
                        .1
                        .iter()
                        .flat_map(|r| references(r, child))
                        .collect();
                    let sub = subs.entry(child).or_default();
                    // An empty list would read as a wildcard: keep the last names instead.
                    if sub.names != names && !names.is_empty() {
                        if sub.names.is_empty() {
                            events
                                .send(Event::Subscribed {
                                    pod: pod.to_string(),
                                    type_url: child.to_string(),
                                })
                                .await?;
                        }
                        sub.names = names;
                        let nonce = sub.last_nonce.clone();
                        req_tx
                            .send(request(&mut first, child, sub, None, &nonce))
                            .await?;
                    }
                }
            }
            Verdict::Nack(message) => {
                tracing::warn!(%pod, type_url = type_key, %version_info, error = %message, "NACK");
                req_tx
                    .send(request(&mut first, type_key, sub, Some(message), &nonce))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Aggregated state across pods and the push loop.
struct Aggregator {
    inventory: Inventory,
    proxies: BTreeMap<String, ProxyResources>,
    /// Types a pod subscribed to and has not received yet.
    warming: BTreeMap<String, BTreeSet<String>>,
    pusher: Pusher,
    /// A good config could not be delivered (dpu-proxy unreachable): retry.
    undelivered: bool,
}

async fn aggregate(mut rx: mpsc::Receiver<Event>, inventory: Inventory, pusher: Pusher) {
    let mut agg = Aggregator {
        inventory,
        proxies: BTreeMap::new(),
        warming: BTreeMap::new(),
        pusher,
        undelivered: false,
    };
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                match event {
                    Event::Subscribed { pod, type_url } => {
                        agg.warming.entry(pod).or_default().insert(type_url);
                    }
                    Event::Response { pod, type_url, version, update, reply } => {
                        let verdict = agg.apply(&pod, &type_url, version, update).await;
                        let _ = reply.send(verdict);
                    }
                }
            }
            _ = retry.tick(), if agg.undelivered => {
                if let Ok(config) = agg.translate() {
                    agg.deliver(config).await.ok();
                }
            }
        }
    }
}

impl Aggregator {
    fn translate(&self) -> Result<dpumesh_api::NodeConfig, translate::TranslateError> {
        translate::translate(&self.inventory, &self.proxies)
    }

    fn is_warming(&self) -> bool {
        self.warming.values().any(|w| !w.is_empty())
    }

    /// Ok(true) delivered, Ok(false) undeliverable now, Err(reason) refused.
    async fn deliver(&mut self, config: dpumesh_api::NodeConfig) -> Result<bool, String> {
        match self.pusher.push(config).await {
            Ok(Pushed::Applied(v)) => {
                tracing::info!(version = v, "dpu-proxy ACKed the config");
                self.undelivered = false;
                Ok(true)
            }
            Ok(Pushed::Unchanged(_)) => {
                self.undelivered = false;
                Ok(true)
            }
            Err(e @ PushError::Nacked { .. }) => Err(e.to_string()),
            Err(e @ PushError::Transport { .. }) => {
                tracing::warn!(error = %e, "push failed; retrying");
                self.undelivered = true;
                Ok(false)
            }
        }
    }

    async fn apply(
        &mut self,
        pod: &str,
        type_url: &str,
        version: String,
        update: Update,
    ) -> Verdict {
        let previous = self.proxies.get(pod).cloned();
        let was_warming = self.warming.get(pod).cloned().unwrap_or_default();
        let px = self.proxies.entry(pod.to_string()).or_default();
        let delta = matches!(update, Update::Delta { .. });
        match update {
            Update::Replace(resources) => px.replace_type(type_url, resources),
            Update::Delta { updated, removed } => px.apply_delta(type_url, updated, &removed),
        }
        // References to resources not received yet make the pod warm until they arrive.
        for &child in children(type_url) {
            let names = needed_names(px, child);
            if delta {
                // The delta stream unsubscribes from names no longer needed and,
                // as Envoy does, forgets them: the server sends no removal for them.
                match child {
                    ENDPOINT_TYPE => px.endpoints.retain(|n, _| names.contains(n)),
                    SECRET_TYPE => px.secrets.retain(|n, _| names.contains(n)),
                    _ => px.routes.retain(|n, _| names.contains(n)),
                }
            }
            let have = |n: &String| match child {
                ENDPOINT_TYPE => px.endpoints.contains_key(n),
                SECRET_TYPE => px.secrets.contains_key(n),
                _ => px.routes.contains_key(n),
            };
            // A secret that is not sent does not hold the pod back after the
            // first SDS answer (the stream's subscription warms it once): its
            // cluster is pushed with the secret "not available" instead.
            if child != SECRET_TYPE && !names.iter().all(have) {
                self.warming
                    .entry(pod.to_string())
                    .or_default()
                    .insert(child.to_string());
            }
        }
        px.versions.insert(type_url.to_string(), version);
        if let Some(w) = self.warming.get_mut(pod) {
            w.remove(type_url);
        }
        let outcome = match self.translate() {
            Err(e)
                if e.missing
                    .as_ref()
                    .is_some_and(|m| self.awaited(e.pod.as_deref(), &m.type_url)) =>
            {
                return Verdict::Ack
            }
            Err(e) => Err(e.to_string()),
            Ok(config) => match config.validate() {
                Err(errors) => Err(format!("the resulting NodeConfig is invalid: {errors}")),
                Ok(()) if self.is_warming() => return Verdict::Ack,
                Ok(()) => self
                    .deliver(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            },
        };
        match outcome {
            Ok(()) => Verdict::Ack,
            Err(message) => {
                match previous {
                    Some(p) => self.proxies.insert(pod.to_string(), p),
                    None => self.proxies.remove(pod),
                };
                self.warming.insert(pod.to_string(), was_warming);
                Verdict::Nack(message)
            }
        }
    }

    fn awaited(&self, pod: Option<&str>, type_url: &str) -> bool {
        pod.and_then(|p| self.warming.get(p))
            .is_some_and(|w| w.contains(type_url))
    }
}

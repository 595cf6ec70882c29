//! A fake ADS server: a real tonic server implementing Envoy's
//! AggregatedDiscoveryService, state of the world and incremental (delta). It
//! serves a resource set per node id, pushes a new version to every subscribed
//! stream when the set changes (delta: only the resources whose content changed,
//! and the removed names), and records every request (ACKs and NACKs) and every
//! delta response sent.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use dpumesh_controller::local::LocalState;
use dpumesh_controller::xds::{
    ProxyResources, Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A proxy's resources of one type as the fake serves them: (name, Any).
pub fn anys(px: &ProxyResources, type_url: &str) -> Vec<(String, Any)> {
    let list: Vec<Resource> = match type_url {
        CLUSTER_TYPE => px
            .clusters
            .values()
            .cloned()
            .map(Resource::Cluster)
            .collect(),
        ENDPOINT_TYPE => px
            .endpoints
            .values()
            .cloned()
            .map(Resource::Endpoints)
            .collect(),
        LISTENER_TYPE => px
            .listeners
            .values()
            .cloned()
            .map(Resource::Listener)
            .collect(),
        SECRET_TYPE => px.secrets.values().cloned().map(Resource::Secret).collect(),
        _ => px.routes.values().cloned().map(Resource::Route).collect(),
    };
    list.iter()
        .map(|r| (r.name().to_string(), r.to_any()))
        .collect()
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub node_id: String,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    /// SotW: `resource_names`; delta: `resource_names_subscribe`.
    pub resource_names: Vec<String>,
    pub error: Option<String>,
    /// A DeltaDiscoveryRequest (the fields below are delta only).
    pub delta: bool,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
}

/// One DeltaDiscoveryResponse as sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub node_id: String,
    pub type_url: String,
    /// Names of the resources it carried.
    pub resources: Vec<String>,
    pub removed: Vec<String>,
    pub nonce: String,
}

/// The version the fake gives a resource in delta responses: a hash of its
/// content, so unchanged resources keep their version.
pub fn resource_version(any: &Any) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &any.value {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What one delta stream is subscribed to, and what the client holds.
#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → version the client has (sent, or declared in initial_resource_versions).
    has: BTreeMap<String, String>,
}

impl Recorded {
    pub fn is_nack(&self) -> bool {
        self.error.is_some()
    }
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error.is_none()
    }
}

/// Resources: node id → type URL → (name, Any), and the version they are served as.
#[derive(Default)]
struct State {
    resources: BTreeMap<String, BTreeMap<String, Vec<(String, Any)>>>,
    version: u64,
    log: Vec<Recorded>,
    sent: Vec<Sent>,
    nonce: u64,
    /// Delta streams open now.
    live: usize,
}

#[derive(Clone)]
pub struct FakeAds {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    /// While true, delta streams are closed and new ones refused (UNAVAILABLE).
    paused: watch::Sender<bool>,
}

/// Counts a live delta stream; uncounts it when the stream's task ends.
struct Live(Arc<Mutex<State>>);

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.live -= 1;
        }
    }
}

impl FakeAds {
    pub fn new() -> FakeAds {
        FakeAds {
            state: Arc::default(),
            changed: watch::channel(0).0,
            paused: watch::channel(false).0,
        }
    }

    /// Delta responses sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().expect("state").sent.clone()
    }

    /// Closes every delta stream (waits until they are gone) and refuses new
    /// ones until [`FakeAds::resume`]: the server "goes away".
    pub async fn pause(&self) {
        self.paused.send_replace(true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.state.lock().expect("state").live > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "delta streams did not close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// The delta response for one subscription: the resources whose version the
    /// client does not have, the names it has that are gone. None when there is
    /// nothing to send, unless `always` (the answer to a request).
    fn delta_response(
        &self,
        node_id: &str,
        type_url: &str,
        sub: &mut DeltaSub,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let mut s = self.state.lock().expect("state");
        let current: Vec<(String, Any)> = s
            .resources
            .get(node_id)
            .and_then(|t| t.get(type_url))
            .map(|list| {
                list.iter()
                    .filter(|(name, _)| sub.wildcard || sub.names.contains(name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut resources = Vec::new();
        for (name, any) in &current {
            let version = resource_version(any);
            if sub.has.get(name) != Some(&version) {
                sub.has.insert(name.clone(), version.clone());
                resources.push(DeltaResource {
                    name: name.clone(),
                    version,
                    resource: Some(any.clone()),
                    ..DeltaResource::default()
                });
            }
        }
        let present: BTreeSet<&String> = current.iter().map(|(n, _)| n).collect();
        let removed: Vec<String> = sub
            .has
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for n in &removed {
            sub.has.remove(n);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        s.nonce += 1;
        let nonce = format!("d{}", s.nonce);
        s.sent.push(Sent {
            node_id: node_id.to_string(),
            type_url: type_url.to_string(),
            resources: resources.iter().map(|r| r.name.clone()).collect(),
            removed: removed.clone(),
            nonce: nonce.clone(),
        });
        Some(DeltaDiscoveryResponse {
            system_version_info: s.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..DeltaDiscoveryResponse::default()
        })
    }

    /// Replaces the whole resource set of `node_id` for `type_url` and pushes it.
    pub fn set(&self, node_id: &str, type_url: &str, resources: Vec<(String, Any)>) {
        let version = {
            let mut s = self.state.lock().expect("state");
            s.resources
                .entry(node_id.to_string())
                .or_default()
                .insert(type_url.to_string(), resources);
            s.version += 1;
            s.version
        };
        self.changed.send_replace(version);
    }

    /// Serves `px`'s clusters, endpoints, listeners and routes to `node_id`.
    pub fn set_proxy(&self, node_id: &str, px: &ProxyResources) {
        for t in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
            self.set(node_id, t, anys(px, t));
        }
    }

    /// Serves every pod of `state` its own resources under its sidecar node
    /// id, as istiod would; returns `(pod key, node id)` of each.
    pub fn set_pods(&self, state: &LocalState) -> Vec<(String, String)> {
        let ids: Vec<(String, String)> = state
            .inventory
            .pods
            .iter()
            .map(|p| (p.key(), p.proxy_node_id("cluster.local")))
            .collect();
        for (pod, node_id) in &ids {
            self.set_proxy(node_id, &state.proxies[pod]);
        }
        ids
    }

    pub fn version(&self) -> String {
        self.state.lock().expect("state").version.to_string()
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().expect("state").log.clone()
    }

    /// Serves on a listener bound elsewhere (e.g. inside a simulator netns,
    /// where the socket stays); returns the `http://` address.
    pub fn serve_listener(&self, listener: std::net::TcpListener) -> String {
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        format!("http://{addr}")
    }

    /// Serves on 127.0.0.1:<free port>; returns the `http://` address.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        format!("http://{addr}")
    }

    fn response(
        &self,
        node_id: &str,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> DiscoveryResponse {
        let mut s = self.state.lock().expect("state");
        s.nonce += 1;
        let resources = s
            .resources
            .get(node_id)
            .and_then(|t| t.get(type_url))
            .map(|list| {
                list.iter()
                    .filter(|(name, _)| names.is_empty() || names.contains(name))
                    .map(|(_, any)| any.clone())
                    .collect()
            })
            .unwrap_or_default();
        DiscoveryResponse {
            version_info: s.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce: s.nonce.to_string(),
            ..DiscoveryResponse::default()
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.clone();
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let mut node_id = String::new();
            // type URL → subscribed names (empty = wildcard)
            let mut subscribed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            loop {
                tokio::select! {
                    req = inbound.message() => {
                        let Ok(Some(req)) = req else { return };
                        if let Some(node) = &req.node {
                            node_id = node.id.clone();
                        }
                        server.state.lock().expect("state").log.push(Recorded {
                            node_id: node_id.clone(),
                            type_url: req.type_url.clone(),
                            version_info: req.version_info.clone(),
                            response_nonce: req.response_nonce.clone(),
                            resource_names: req.resource_names.clone(),
                            error: req.error_detail.as_ref().map(|s| s.message.clone()),
                            delta: false,
                            unsubscribe: Vec::new(),
                            initial_resource_versions: BTreeMap::new(),
                        });
                        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        let new_subscription = subscribed.get(&req.type_url) != Some(&names);
                        // A first request or a changed subscription gets a response;
                        // an ACK or NACK of the current one does not.
                        if req.response_nonce.is_empty() || new_subscription {
                            subscribed.insert(req.type_url.clone(), names.clone());
                            let r = server.response(&node_id, &req.type_url, &names);
                            if tx.send(Ok(r)).await.is_err() { return; }
                        }
                    }
                    c = changed.changed() => {
                        if c.is_err() { return; }
                        for (type_url, names) in &subscribed {
                            let r = server.response(&node_id, type_url, names);
                            if tx.send(Ok(r)).await.is_err() { return; }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if *self.paused.borrow() {
            return Err(Status::unavailable("the fake ADS server is paused"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.clone();
        let mut changed = self.changed.subscribe();
        let mut paused = self.paused.subscribe();
        self.state.lock().expect("state").live += 1;
        let live = Live(self.state.clone());
        tokio::spawn(async move {
            let _live = live;
            let mut node_id = String::new();
            let mut subs: BTreeMap<String, DeltaSub> = BTreeMap::new();
            loop {
                tokio::select! {
                    biased;
                    p = paused.changed() => {
                        if p.is_err() || *paused.borrow() { return; }
                    }
                    req = inbound.message() => {
                        let Ok(Some(req)) = req else { return };
                        if let Some(node) = &req.node {
                            node_id = node.id.clone();
                        }
                        server.state.lock().expect("state").log.push(Recorded {
                            node_id: node_id.clone(),
                            type_url: req.type_url.clone(),
                            version_info: String::new(),
                            response_nonce: req.response_nonce.clone(),
                            resource_names: req.resource_names_subscribe.clone(),
                            error: req.error_detail.as_ref().map(|s| s.message.clone()),
                            delta: true,
                            unsubscribe: req.resource_names_unsubscribe.clone(),
                            initial_resource_versions: req
                                .initial_resource_versions
                                .clone()
                                .into_iter()
                                .collect(),
                        });
                        let first = !subs.contains_key(&req.type_url);
                        let change = !req.resource_names_subscribe.is_empty()
                            || !req.resource_names_unsubscribe.is_empty();
                        // An ACK or NACK gets no response.
                        if !first && !change {
                            continue;
                        }
                        let sub = subs.entry(req.type_url.clone()).or_insert_with(|| DeltaSub {
                            // The legacy wildcard: a first request naming nothing.
                            wildcard: req.resource_names_subscribe.is_empty(),
                            names: BTreeSet::new(),
                            has: req.initial_resource_versions.clone().into_iter().collect(),
                        });
                        for n in &req.resource_names_subscribe {
                            if n == "*" {
                                sub.wildcard = true;
                            } else {
                                sub.names.insert(n.clone());
                            }
                        }
                        for n in &req.resource_names_unsubscribe {
                            if n == "*" {
                                sub.wildcard = false;
                            }
                            sub.names.remove(n);
                            sub.has.remove(n);
                        }
                        if let Some(r) = server.delta_response(&node_id, &req.type_url, sub, true) {
                            if tx.send(Ok(r)).await.is_err() { return; }
                        }
                    }
                    c = changed.changed() => {
                        if c.is_err() { return; }
                        for (type_url, sub) in subs.iter_mut() {
                            if let Some(r) = server.delta_response(&node_id, type_url, sub, false) {
                                if tx.send(Ok(r)).await.is_err() { return; }
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

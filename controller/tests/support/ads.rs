//! A fake ADS server: a real tonic server implementing Envoy's
//! AggregatedDiscoveryService (state of the world). It serves a resource set per
//! node id, pushes a new version to every subscribed stream when the set
//! changes, and records every request (ACKs and NACKs).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub node_id: String,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    pub error: Option<String>,
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
    nonce: u64,
}

#[derive(Clone)]
pub struct FakeAds {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
}

impl FakeAds {
    pub fn new() -> FakeAds {
        FakeAds {
            state: Arc::default(),
            changed: watch::channel(0).0,
        }
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

    pub fn version(&self) -> String {
        self.state.lock().expect("state").version.to_string()
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().expect("state").log.clone()
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
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the fake ADS server speaks state of the world only",
        ))
    }
}

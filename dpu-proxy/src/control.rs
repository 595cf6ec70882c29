//! The proxy's control gRPC (port 15080 on the DPU management address):
//! `ProxyConfig` (the adapter pushes NodeConfig versions) and `Status`.
//!
//! Contract: `docs/control-api.md`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dpumesh_api::proto::v1::{
    proxy_config_server::{ProxyConfig, ProxyConfigServer},
    status_server::{Status as StatusApi, StatusServer},
    ComponentStatus, GetConfigRequest, GetConfigResponse, PushConfigRequest, PushConfigResponse,
    PushOutcome, StatusRequest,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config_store::{ConfigStore, Offer};

/// Name this component reports in `Status`.
pub const COMPONENT: &str = "dpu-proxy";
/// Default control address: the BlueField's management address, port 15080.
pub const DEFAULT_ADDR: &str = "192.168.100.2:15080";
/// Largest accepted request: a NodeConfig of a big node is a few MiB of JSON.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The state the control services answer from.
#[derive(Clone)]
pub struct ControlState {
    pub store: Arc<ConfigStore>,
    /// Name of the node this proxy serves.
    pub node: String,
    pub started: Instant,
}

impl ControlState {
    pub fn new(store: Arc<ConfigStore>, node: impl Into<String>) -> Self {
        ControlState {
            store,
            node: node.into(),
            started: Instant::now(),
        }
    }
}

/// `ProxyConfig` over a [`ConfigStore`].
pub struct ProxyConfigService {
    state: ControlState,
}

#[tonic::async_trait]
impl ProxyConfig for ProxyConfigService {
    async fn push_config(
        &self,
        request: Request<PushConfigRequest>,
    ) -> Result<Response<PushConfigResponse>, Status> {
        let json = request.into_inner().node_config_json;
        let response = match self.state.store.offer_json(&json) {
            Offer::Accepted { version, changed } => PushConfigResponse {
                outcome: PushOutcome::Ack.into(),
                serving_version: version,
                errors: Vec::new(),
                changed,
            },
            Offer::Rejected { serving, errors } => PushConfigResponse {
                outcome: PushOutcome::Nack.into(),
                serving_version: serving,
                errors,
                changed: false,
            },
        };
        Ok(Response::new(response))
    }

    async fn get_config(
        &self,
        _request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let response = match self.state.store.current() {
            Some(config) => GetConfigResponse {
                serving_version: config.version,
                node_config_json: config.to_json().into_bytes(),
            },
            None => GetConfigResponse::default(),
        };
        Ok(Response::new(response))
    }
}

/// `Status` of the proxy: ready once it serves a config.
pub struct StatusService {
    state: ControlState,
}

#[tonic::async_trait]
impl StatusApi for StatusService {
    async fn get_status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<ComponentStatus>, Status> {
        Ok(Response::new(status(&self.state)))
    }
}

/// The proxy's status now.
pub fn status(state: &ControlState) -> ComponentStatus {
    let config = state.store.current();
    let (accepted, rejected) = state.store.counters();
    let mut details = std::collections::HashMap::new();
    details.insert("config_pushes_accepted".into(), accepted.to_string());
    details.insert("config_pushes_rejected".into(), rejected.to_string());
    if let Some(c) = &config {
        details.insert("pods".into(), c.pods.len().to_string());
        details.insert("services".into(), c.services.len().to_string());
        details.insert("clusters".into(), c.clusters.len().to_string());
        details.insert("config_node".into(), c.node.name.clone());
    }
    ComponentStatus {
        component: COMPONENT.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: state.node.clone(),
        ready: config.is_some(),
        reason: if config.is_some() {
            String::new()
        } else {
            "no config pushed yet".into()
        },
        uptime_seconds: state.started.elapsed().as_secs(),
        config_version: config.map_or(0, |c| c.version),
        details,
    }
}

/// The control services, ready to be served.
pub fn router(state: ControlState) -> tonic::transport::server::Router {
    let proxy_config = ProxyConfigServer::new(ProxyConfigService {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(proxy_config)
        .add_service(StatusServer::new(StatusService { state }))
}

/// Serves the control gRPC on `listener` until `shutdown` completes, then
/// lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    state: ControlState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router(state)
        .serve_with_incoming_shutdown(dpumesh_api::server::incoming(listener), shutdown)
        .await
}

pub use dpumesh_api::server::shutdown_signal;

//! The dataplane's control gRPC (port 15081 on the DPU management address):
//! `Dataplane` (the CNI and adapter register pods and the node network) and
//! `Status`.
//!
//! Contract: `docs/control-api.md`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dpumesh_api::proto::v1::{
    dataplane_server::{Dataplane, DataplaneServer},
    status_server::{Status as StatusApi, StatusServer},
    AddPodRequest, AddPodResponse, ComponentStatus, GetNodeNetworkRequest, GetNodeNetworkResponse,
    ListPodsRequest, ListPodsResponse, PodSteering, RemovePodRequest, RemovePodResponse,
    SetNodeNetworkRequest, SetNodeNetworkResponse, StatusRequest,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::registry::{PodKey, PodRegistry, RegistryError};

/// Name this component reports in `Status`.
pub const COMPONENT: &str = "dataplane";
/// Default control address: the BlueField's management address, port 15081.
pub const DEFAULT_ADDR: &str = "192.168.100.2:15081";

/// The state the control services answer from.
#[derive(Clone)]
pub struct ControlState {
    pub registry: Arc<PodRegistry>,
    pub started: Instant,
}

impl ControlState {
    pub fn new(registry: Arc<PodRegistry>) -> Self {
        ControlState {
            registry,
            started: Instant::now(),
        }
    }
}

/// The gRPC status of a refused request.
pub fn to_status(e: RegistryError) -> Status {
    let message = e.to_string();
    match e {
        RegistryError::InvalidArgument(_) => Status::invalid_argument(message),
        RegistryError::NotFound(_) => Status::not_found(message),
        RegistryError::AlreadyExists(_) => Status::already_exists(message),
        RegistryError::FailedPrecondition(_) => Status::failed_precondition(message),
        RegistryError::Backend(_) => Status::internal(message),
    }
}

/// `Dataplane` over a [`PodRegistry`].
pub struct DataplaneService {
    state: ControlState,
}

#[tonic::async_trait]
impl Dataplane for DataplaneService {
    async fn add_pod(
        &self,
        request: Request<AddPodRequest>,
    ) -> Result<Response<AddPodResponse>, Status> {
        let request = request.into_inner();
        let changed = self
            .state
            .registry
            .add_pod(request.pod.as_ref())
            .map_err(|e| {
                tracing::warn!(error = %e, "AddPod refused");
                to_status(e)
            })?;
        Ok(Response::new(AddPodResponse { changed }))
    }

    async fn remove_pod(
        &self,
        request: Request<RemovePodRequest>,
    ) -> Result<Response<RemovePodResponse>, Status> {
        let key = PodKey::from_request(request.get_ref()).map_err(to_status)?;
        let removed = self.state.registry.remove_pod(&key).map_err(to_status)?;
        Ok(Response::new(RemovePodResponse {
            removed: removed.is_some(),
            pod: removed.as_ref().map(PodSteering::from),
        }))
    }

    async fn list_pods(
        &self,
        _request: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsResponse>, Status> {
        let pods = self.state.registry.pods();
        Ok(Response::new(ListPodsResponse {
            pods: pods.iter().map(PodSteering::from).collect(),
        }))
    }

    async fn set_node_network(
        &self,
        request: Request<SetNodeNetworkRequest>,
    ) -> Result<Response<SetNodeNetworkResponse>, Status> {
        let request = request.into_inner();
        let changed = self
            .state
            .registry
            .set_node_network(request.network.as_ref())
            .map_err(|e| {
                tracing::warn!(error = %e, "SetNodeNetwork refused");
                to_status(e)
            })?;
        Ok(Response::new(SetNodeNetworkResponse { changed }))
    }

    async fn get_node_network(
        &self,
        _request: Request<GetNodeNetworkRequest>,
    ) -> Result<Response<GetNodeNetworkResponse>, Status> {
        Ok(Response::new(GetNodeNetworkResponse {
            network: self.state.registry.network().as_ref().map(Into::into),
        }))
    }
}

/// `Status` of the dataplane: ready once the node network is set and the
/// backend is healthy.
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

/// The dataplane's status now.
pub fn status(state: &ControlState) -> ComponentStatus {
    let registry = &state.registry;
    let network = registry.network();
    let backend = registry.backend();
    let mut details = std::collections::HashMap::new();
    details.insert("pods".to_string(), registry.pods().len().to_string());
    details.insert("backend".to_string(), backend.name().to_string());
    match registry.representors().list() {
        Ok(r) => details.insert("representors".to_string(), r.len().to_string()),
        Err(e) => details.insert("representors".to_string(), format!("error: {e}")),
    };
    if let Some(n) = &network {
        details.insert(
            "network_mode".to_string(),
            format!("{:?}", n.mode).to_lowercase(),
        );
        details.insert("pod_cidr".to_string(), n.pod_cidr.to_string());
        details.insert("peers".to_string(), n.peers.len().to_string());
    }
    details.extend(backend.details());
    let not_ready = match (backend.health(), &network) {
        (Err(why), _) => Some(format!("backend {}: {why}", backend.name())),
        (Ok(()), None) => Some("node network not set (SetNodeNetwork)".to_string()),
        (Ok(()), Some(_)) => None,
    };
    ComponentStatus {
        component: COMPONENT.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node: registry.node().to_string(),
        ready: not_ready.is_none(),
        reason: not_ready.unwrap_or_default(),
        uptime_seconds: state.started.elapsed().as_secs(),
        config_version: registry.generation(),
        details,
    }
}

/// The control services, ready to be served.
pub fn router(state: ControlState) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(DataplaneServer::new(DataplaneService {
            state: state.clone(),
        }))
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

//! Small helpers for clients of the control APIs (CNI, adapter, CLI, tests).
//!
//! The control APIs are plain-text gRPC (HTTP/2 without TLS) on the DPU's
//! management link; see `docs/control-api.md`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::NodeConfig;
use crate::proto::v1::{
    dataplane_client::DataplaneClient, proxy_config_client::ProxyConfigClient,
    status_client::StatusClient, ComponentStatus, PushConfigRequest, PushConfigResponse,
    StatusRequest,
};

/// How long connecting to a control endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one control RPC may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid control address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The endpoint for `addr`, given as "host:port" (e.g. "192.168.100.2:15080")
/// or as a URI ("http://192.168.100.2:15080"), with the default timeouts.
pub fn endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| ConnectError::Address {
        addr: addr.to_string(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT))
}

/// Connects to a control endpoint now (fails fast when nothing listens).
pub async fn connect(addr: &str) -> Result<Channel, ConnectError> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// A `ProxyConfig` client (dpu-proxy, port 15080).
pub async fn proxy_config(addr: &str) -> Result<ProxyConfigClient<Channel>, ConnectError> {
    Ok(ProxyConfigClient::new(connect(addr).await?))
}

/// A `Dataplane` client (dataplane, port 15081).
pub async fn dataplane(addr: &str) -> Result<DataplaneClient<Channel>, ConnectError> {
    Ok(DataplaneClient::new(connect(addr).await?))
}

/// Offers `config` to a dpu-proxy. An `Err` is a transport or server failure;
/// a refused config is an `Ok` with `outcome == NACK` and the reasons in `errors`.
pub async fn push_config(
    client: &mut ProxyConfigClient<Channel>,
    config: &NodeConfig,
) -> Result<PushConfigResponse, tonic::Status> {
    let request = PushConfigRequest {
        node_config_json: config.to_json().into_bytes(),
    };
    Ok(client.push_config(request).await?.into_inner())
}

/// A failed call: the endpoint was unreachable, or the RPC itself failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
}

/// The status of whatever component serves `addr`.
pub async fn status(addr: &str) -> Result<ComponentStatus, CallError> {
    let channel = connect(addr).await?;
    let status = StatusClient::new(channel)
        .get_status(StatusRequest {})
        .await?
        .into_inner();
    Ok(status)
}

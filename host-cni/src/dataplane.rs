//! The node's dataplane, over its gRPC control API (`dpumesh.v1.Dataplane`,
//! see api/proto/dpumesh/v1/control.proto), on a one-worker runtime.

use std::time::Duration;

use dpumesh_api::proto::v1::{
    dataplane_client::DataplaneClient, status_client::StatusClient, AddPodRequest, ComponentStatus,
    ListPodsRequest, PodSteering, RemovePodRequest, StatusRequest,
};
use tonic::transport::Channel;

use crate::spec::{code, CniError, CniResult};

pub struct Dataplane {
    addr: String,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    /// A connection being opened ahead of the first call (see [`Dataplane::prewarm`]).
    warm: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Channel, DpError>>>>,
}

/// Why a call failed: the difference matters for DEL and STATUS.
#[derive(Debug)]
pub enum DpError {
    /// Nothing answered (connect failure, timeout, UNAVAILABLE).
    Unreachable(String),
    /// The dataplane answered with an error.
    Rejected(tonic::Status),
}

impl DpError {
    pub fn into_cni(self, what: &str, addr: &str) -> CniError {
        match self {
            DpError::Unreachable(e) => CniError::try_later(
                format!("dataplane at {addr} unreachable during {what}"),
                format!("{e}; check that dpumesh-dataplane runs on the DPU and that config \"dataplane\" is its control address"),
            ),
            DpError::Rejected(s) if s.code() == tonic::Code::FailedPrecondition => CniError::try_later(
                format!("dataplane not ready for {what}: {}", s.message()),
                "the node network is not set on the dataplane yet (the adapter sets it); retry later",
            ),
            DpError::Rejected(s) => CniError::new(
                code::DATAPLANE_REJECTED,
                format!("dataplane refused {what}: {:?}: {}", s.code(), s.message()),
                "the pod's VF, representor, IPs or MAC conflict with the dataplane's state; see the message",
            ),
        }
    }
}

fn classify(s: tonic::Status) -> DpError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            DpError::Unreachable(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => DpError::Rejected(s),
    }
}

async fn connect(ep: tonic::transport::Endpoint) -> Result<Channel, DpError> {
    ep.connect()
        .await
        .map_err(|e| DpError::Unreachable(format!("{e}: {:?}", std::error::Error::source(&e))))
}

impl Dataplane {
    pub fn new(addr: &str, timeout: Duration) -> CniResult<Dataplane> {
        // One worker thread, so that a prewarmed connect progresses while the
        // calling thread does other work. It is started here, in the host netns.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| CniError::io("cannot start the gRPC runtime", e.to_string()))?;
        Ok(Dataplane {
            addr: addr.to_string(),
            timeout,
            rt,
            warm: std::sync::Mutex::new(None),
        })
    }

    /// Starts connecting in the background, so that the next call finds the
    /// HTTP/2 connection open (ADD calls this before its slow netns move).
    /// A failed prewarm costs nothing: the call connects again.
    pub fn prewarm(&self) {
        let Ok(ep) = self.endpoint() else {
            return;
        };
        let task = self.rt.spawn(async move { connect(ep).await });
        if let Ok(mut w) = self.warm.lock() {
            *w = Some(task);
        }
    }

    fn endpoint(&self) -> Result<tonic::transport::Endpoint, DpError> {
        Ok(dpumesh_api::client::endpoint(&self.addr)
            .map_err(|e| DpError::Unreachable(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn channel(&self) -> Result<Channel, DpError> {
        let warm = self.warm.lock().ok().and_then(|mut w| w.take());
        if let Some(Ok(Ok(channel))) = match warm {
            Some(task) => Some(task.await),
            None => None,
        } {
            return Ok(channel);
        }
        connect(self.endpoint()?).await
    }

    pub fn add_pod(&self, pod: PodSteering) -> Result<bool, DpError> {
        self.rt.block_on(async {
            let mut c = DataplaneClient::new(self.channel().await?);
            let r = c
                .add_pod(AddPodRequest { pod: Some(pod) })
                .await
                .map_err(classify)?;
            Ok(r.into_inner().changed)
        })
    }

    /// Removes the entry of (container_id, ifname). Ok(false): none existed.
    pub fn remove_pod(&self, container_id: &str, ifname: &str) -> Result<bool, DpError> {
        self.rt.block_on(async {
            let mut c = DataplaneClient::new(self.channel().await?);
            let r = c
                .remove_pod(RemovePodRequest {
                    pod_uid: String::new(),
                    container_id: container_id.to_string(),
                    ifname: ifname.to_string(),
                })
                .await
                .map_err(classify)?;
            Ok(r.into_inner().removed)
        })
    }

    pub fn list_pods(&self) -> Result<Vec<PodSteering>, DpError> {
        self.rt.block_on(async {
            let mut c = DataplaneClient::new(self.channel().await?);
            let r = c.list_pods(ListPodsRequest {}).await.map_err(classify)?;
            Ok(r.into_inner().pods)
        })
    }

    pub fn status(&self) -> Result<ComponentStatus, DpError> {
        self.rt.block_on(async {
            let mut c = StatusClient::new(self.channel().await?);
            let r = c.get_status(StatusRequest {}).await.map_err(classify)?;
            Ok(r.into_inner())
        })
    }
}

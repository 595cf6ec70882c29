//! The node's dataplane, over its gRPC control API (`dpumesh.v1.Dataplane`,
//! see api/proto/dpumesh/v1/control.proto), on a current-thread runtime of
//! the calling thread.

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

impl Dataplane {
    pub fn new(addr: &str, timeout: Duration) -> CniResult<Dataplane> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::io("cannot start the gRPC runtime", e.to_string()))?;
        Ok(Dataplane {
            addr: addr.to_string(),
            timeout,
            rt,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn channel(&self) -> Result<Channel, DpError> {
        let ep = dpumesh_api::client::endpoint(&self.addr)
            .map_err(|e| DpError::Unreachable(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        ep.connect()
            .await
            .map_err(|e| DpError::Unreachable(format!("{e}: {:?}", std::error::Error::source(&e))))
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

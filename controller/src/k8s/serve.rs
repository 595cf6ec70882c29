//! The inventory stream: gRPC `dpumesh.controller.v1.Inventory/WatchNode`
//! (`controller/proto/dpumesh/controller/v1/inventory.proto`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Generated types of `dpumesh.controller.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("dpumesh.controller.v1");
}

use proto::inventory_server::{Inventory, InventoryServer};
use proto::{NodeInventory, WatchNodeRequest};

/// What the streams serve: set by the main loop.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// False on a follower (and before the first full list): streams are refused/ended.
    pub serving: bool,
    /// The lease holder when known (for the follower's error message).
    pub leader: Option<String>,
    pub nodes: BTreeMap<String, NodeInventory>,
}

pub struct InventoryService {
    published: watch::Receiver<Arc<Published>>,
}

impl InventoryService {
    pub fn server(published: watch::Receiver<Arc<Published>>) -> InventoryServer<Self> {
        InventoryServer::new(InventoryService { published })
    }
}

fn not_serving(p: &Published) -> Status {
    match &p.leader {
        Some(leader) => Status::unavailable(format!(
            "this replica is not the leader (the leader is {leader:?})"
        )),
        None => Status::unavailable(
            "this replica is not serving the inventory (not the leader, or not synced yet)",
        ),
    }
}

type NodeStream = Pin<Box<dyn Stream<Item = Result<NodeInventory, Status>> + Send>>;

struct StreamState {
    rx: watch::Receiver<Arc<Published>>,
    node: String,
    last: Option<u64>,
    done: bool,
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    type WatchNodeStream = NodeStream;

    async fn watch_node(
        &self,
        request: Request<WatchNodeRequest>,
    ) -> Result<Response<NodeStream>, Status> {
        let node = request.into_inner().node;
        if node.is_empty() {
            return Err(Status::invalid_argument("node: empty"));
        }
        let mut rx = self.published.clone();
        {
            let now = rx.borrow_and_update();
            if !now.serving {
                return Err(not_serving(&now));
            }
        }
        rx.mark_changed();
        let state = StreamState {
            rx,
            node,
            last: None,
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if st.rx.changed().await.is_err() {
                    return None;
                }
                let now = st.rx.borrow_and_update().clone();
                if !now.serving {
                    st.done = true;
                    return Some((Err(not_serving(&now)), st));
                }
                if let Some(inv) = now.nodes.get(&st.node) {
                    if Some(inv.generation) != st.last {
                        st.last = Some(inv.generation);
                        return Some((Ok(inv.clone()), st));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

//! One kube-runtime watcher per kind, feeding the shared [`ClusterState`].
//!
//! The watcher lists (in pages of 500), then watches from the list's
//! resourceVersion; when a watch ends (the server closed it, the connection
//! dropped) it watches again from the last resourceVersion it saw; on `410 Gone`
//! (that version was compacted) it lists again, and [`Store`] swaps the new list in
//! whole. Errors are retried after a backoff (100 ms doubling to 10 s).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

use super::state::{ClusterState, Store};

/// The cluster state shared by the watchers and their readers.
pub type Shared = Arc<Mutex<ClusterState>>;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts the five watchers. `changed` is bumped after every change of the
/// visible state (an applied event, a deletion, a completed (re)list).
pub fn spawn_all(
    client: Client,
    state: Shared,
    changed: tokio_watch::Sender<u64>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run::<Pod>(
            Api::all(client.clone()),
            "pods",
            state.clone(),
            changed.clone(),
            |s| &mut s.pods,
        )),
        tokio::spawn(run::<Node>(
            Api::all(client.clone()),
            "nodes",
            state.clone(),
            changed.clone(),
            |s| &mut s.nodes,
        )),
        tokio::spawn(run::<Service>(
            Api::all(client.clone()),
            "services",
            state.clone(),
            changed.clone(),
            |s| &mut s.services,
        )),
        tokio::spawn(run::<EndpointSlice>(
            Api::all(client.clone()),
            "endpointslices",
            state.clone(),
            changed.clone(),
            |s| &mut s.endpoint_slices,
        )),
        tokio::spawn(run::<Namespace>(
            Api::all(client),
            "namespaces",
            state,
            changed,
            |s| &mut s.namespaces,
        )),
    ]
}

async fn run<K>(
    api: Api<K>,
    kind: &'static str,
    state: Shared,
    changed: tokio_watch::Sender<u64>,
    select: fn(&mut ClusterState) -> &mut Store<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
    let mut backoff = MIN_BACKOFF;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                backoff = MIN_BACKOFF;
                let is_done = matches!(event, watcher::Event::InitDone);
                let (did_change, count) = {
                    let mut guard = match state.lock() {
                        Ok(g) => g,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    let store = select(&mut guard);
                    (store.apply(event), store.len())
                };
                if is_done {
                    tracing::info!(kind, objects = count, "listed");
                }
                if did_change {
                    changed.send_modify(|g| *g += 1);
                }
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(kind, "watch: {} (410 Gone); listing again", status.message);
            }
            Err(e) => {
                tracing::warn!(kind, "watch: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

//! What the watchers know: the objects of each watched kind, keyed by
//! `<namespace>/<name>` (or `<name>` for cluster-scoped kinds).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use kube::ResourceExt;

/// The objects of one kind. A relist (`Init` … `InitDone`, after a 410 Gone or at
/// start) is buffered and replaces the whole set at `InitDone`, so objects deleted
/// while the watch was down disappear and nothing is half-replaced.
#[derive(Debug, Clone)]
pub struct Store<K> {
    items: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
    synced: bool,
    relists: u64,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            items: BTreeMap::new(),
            relisting: None,
            synced: false,
            relists: 0,
        }
    }
}

fn key<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

impl<K: ResourceExt> Store<K> {
    /// Applies one watcher event. Returns true when the visible set changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Apply(obj) => {
                self.items.insert(key(&obj), obj);
                true
            }
            Event::Delete(obj) => self.items.remove(&key(&obj)).is_some(),
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&obj), obj);
                false
            }
            Event::InitDone => {
                self.items = self.relisting.take().unwrap_or_default();
                self.synced = true;
                self.relists += 1;
                true
            }
        }
    }

    /// True once a first full list has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many full lists have been applied (1 after the start; +1 per relist).
    pub fn lists(&self) -> u64 {
        self.relists
    }

    pub fn get(&self, key: &str) -> Option<&K> {
        self.items.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Everything the watchers keep.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub namespaces: Store<Namespace>,
}

impl ClusterState {
    /// True once every kind has been listed.
    pub fn synced(&self) -> bool {
        self.pods.synced()
            && self.nodes.synced()
            && self.services.synced()
            && self.endpoint_slices.synced()
            && self.namespaces.synced()
    }
}

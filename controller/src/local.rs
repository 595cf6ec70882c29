//! Local mode: xDS resources and the inventory from a directory (no cluster, no
//! istiod). Layout (`docs/adapter.md`):
//!
//! ```text
//! DIR/node.yaml  DIR/pods.yaml  DIR/services.yaml
//! DIR/xds/*.yaml|*.yml|*.json            resources every pod's proxy receives
//! DIR/xds/<namespace>.<pod>/*.yaml ...    resources only that pod's proxy receives
//!                                         (replacing common ones of the same type + name)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::inventory::{Inventory, InventoryError};
use crate::translate::{self, TranslateError};
use crate::xds::resource::parse_documents;
use crate::xds::{DecodeError, ProxyResources, Resource};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {error}")]
    Decode {
        path: String,
        error: Box<DecodeError>,
    },
    #[error(
        "{path}: no pod {pod:?} in pods.yaml (directories under xds/ are named <namespace>.<pod>)"
    )]
    UnknownPod { path: String, pod: String },
    #[error(transparent)]
    Translate(#[from] Box<TranslateError>),
    #[error("the translated NodeConfig is invalid:\n{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn is_resource_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        entries.push(entry.map_err(io(dir))?.path());
    }
    entries.sort();
    Ok(entries)
}

fn read_resources(path: &Path, text_hash: &mut u64) -> Result<Vec<Resource>, LocalError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    *text_hash ^= crate::translate::content_hash(text.as_bytes()).rotate_left(7);
    parse_documents(&text, &path.display().to_string()).map_err(|error| LocalError::Decode {
        path: path.display().to_string(),
        error: Box::new(error),
    })
}

/// Everything read from a local directory.
#[derive(Debug, Clone)]
pub struct LocalState {
    pub inventory: Inventory,
    pub proxies: BTreeMap<String, ProxyResources>,
}

/// Reads the directory. Every pod in `pods.yaml` gets the common resources plus
/// its own directory's.
pub fn load(dir: &Path, node: Option<&str>) -> Result<LocalState, LocalError> {
    let inventory = Inventory::load(dir, node)?;
    load_xds(dir, inventory, UnknownPodDirs::Error)
}

/// What to do with `xds/<namespace>.<pod>/` when the inventory has no such pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPodDirs {
    /// An error (the inventory is the directory's own `pods.yaml`).
    Error,
    /// Skipped (the inventory is streamed by the controller; pods come and go).
    Skip,
}

/// Reads `dir/xds/` for the pods of `inventory` (which may come from elsewhere
/// than `dir`, e.g. the controller's stream).
pub fn load_xds(
    dir: &Path,
    inventory: Inventory,
    unknown: UnknownPodDirs,
) -> Result<LocalState, LocalError> {
    let shared = load_shared(dir, inventory, unknown)?;
    Ok(LocalState {
        inventory: shared.inventory,
        proxies: shared
            .proxies
            .into_iter()
            .map(|(pod, px)| (pod, Arc::unwrap_or_clone(px)))
            .collect(),
    })
}

/// Like [`LocalState`], but pods without their own `xds/<namespace>.<pod>/`
/// directory share one resource set (memory grows with pods + resources, not
/// pods × resources).
struct SharedState {
    inventory: Inventory,
    proxies: BTreeMap<String, Arc<ProxyResources>>,
}

fn load_shared(
    dir: &Path,
    inventory: Inventory,
    unknown: UnknownPodDirs,
) -> Result<SharedState, LocalError> {
    let xds = dir.join("xds");
    let mut hash = 0u64;
    let mut common = Vec::new();
    let mut per_pod: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    if xds.is_dir() {
        for path in sorted_entries(&xds)? {
            if path.is_dir() {
                let dir_name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let key = dir_name.replacen('.', "/", 1);
                if !inventory.pods.iter().any(|p| p.key() == key) {
                    if unknown == UnknownPodDirs::Skip {
                        tracing::debug!(dir = %path.display(), "no such pod in the inventory; skipped");
                        continue;
                    }
                    return Err(LocalError::UnknownPod {
                        path: path.display().to_string(),
                        pod: key,
                    });
                }
                let own = per_pod.entry(key).or_default();
                for file in sorted_entries(&path)? {
                    if file.is_file() && is_resource_file(&file) {
                        own.extend(read_resources(&file, &mut hash)?);
                    }
                }
            } else if is_resource_file(&path) {
                common.extend(read_resources(&path, &mut hash)?);
            }
        }
    }
    let version = format!("local-{hash:016x}");
    let with_common = |own: Vec<Resource>| {
        let mut px = ProxyResources::default();
        for r in common.iter().cloned().chain(own) {
            px.insert(r);
        }
        px.versions.insert("local".to_string(), version.clone());
        Arc::new(px)
    };
    let mut shared: Option<Arc<ProxyResources>> = None;
    let mut proxies = BTreeMap::new();
    for pod in inventory.pods.iter().filter(|p| p.meshed) {
        let px = match per_pod.remove(&pod.key()) {
            Some(own) => with_common(own),
            None => shared
                .get_or_insert_with(|| with_common(Vec::new()))
                .clone(),
        };
        proxies.insert(pod.key(), px);
    }
    Ok(SharedState { inventory, proxies })
}

/// Reads, translates and validates: the NodeConfig to push (version 1; the
/// pusher numbers it).
pub fn build(dir: &Path, node: Option<&str>) -> Result<dpumesh_api::NodeConfig, LocalError> {
    let inventory = Inventory::load(dir, node)?;
    translate_state(load_shared(dir, inventory, UnknownPodDirs::Error)?)
}

/// Like [`build`], with an inventory from elsewhere (the controller's stream);
/// `xds/<namespace>.<pod>/` directories of pods not in it are skipped.
pub fn build_with(dir: &Path, inventory: Inventory) -> Result<dpumesh_api::NodeConfig, LocalError> {
    translate_state(load_shared(dir, inventory, UnknownPodDirs::Skip)?)
}

fn translate_state(state: SharedState) -> Result<dpumesh_api::NodeConfig, LocalError> {
    let config = translate::translate(&state.inventory, &state.proxies).map_err(Box::new)?;
    config
        .validate()
        .map_err(|e| LocalError::Invalid(e.to_string()))?;
    Ok(config)
}

/// The newest modification time under `dir` (files and directories), to notice changes.
pub fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

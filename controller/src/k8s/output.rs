//! Writes each node's inventory to `<dir>/<node>/` — `node.yaml`, `pods.yaml`,
//! `services.yaml` (what `Inventory::load` and the adapter's `--inventory-dir` /
//! `--local-dir` read), `endpoints.yaml` and, for a node with an underlay
//! address, `network.yaml`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::build::{NodeInventory, ServiceEndpoints};
use crate::inventory::{PodSpec, ServiceSpec};

/// The files of one node directory.
pub const FILES: [&str; 5] = [
    "node.yaml",
    "pods.yaml",
    "services.yaml",
    "endpoints.yaml",
    "network.yaml",
];

#[derive(Serialize)]
struct PodsFile<'a> {
    pods: &'a [PodSpec],
}

#[derive(Serialize)]
struct ServicesFile<'a> {
    services: &'a [ServiceSpec],
}

#[derive(Serialize)]
struct EndpointsFile<'a> {
    endpoints: &'a [ServiceEndpoints],
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot render {what}: {message}")]
    Render { what: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The files' contents for one node, in [`FILES`] order; an empty text is a
/// file that is not there (`network.yaml` of a node without an underlay address).
pub fn render(node: &NodeInventory) -> Result<[String; 5], OutputError> {
    let yaml = |what: &str, v: Result<String, serde_yaml::Error>| {
        v.map_err(|e| OutputError::Render {
            what: format!("{what} of node {}", node.inventory.node.name),
            message: e.to_string(),
        })
    };
    let inv = &node.inventory;
    Ok([
        yaml("node.yaml", serde_yaml::to_string(&inv.node))?,
        yaml(
            "pods.yaml",
            serde_yaml::to_string(&PodsFile { pods: &inv.pods }),
        )?,
        yaml(
            "services.yaml",
            serde_yaml::to_string(&ServicesFile {
                services: &inv.services,
            }),
        )?,
        yaml(
            "endpoints.yaml",
            serde_yaml::to_string(&EndpointsFile {
                endpoints: &node.endpoints,
            }),
        )?,
        match &inv.network {
            Some(network) => yaml("network.yaml", serde_yaml::to_string(network))?,
            None => String::new(),
        },
    ])
}

/// A node name usable as one path component.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

/// What one [`write_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Files whose content changed (`<node>/<file>`).
    pub written: Vec<String>,
    /// Node directories removed (nodes that no longer exist).
    pub removed: Vec<String>,
}

/// Makes `dir` hold exactly `nodes`: writes a file only when its content changed
/// (write to a temporary file, then rename, so readers never see half a file),
/// and removes the directories (those holding a `node.yaml`) of nodes that are gone.
pub fn write_all(
    dir: &Path,
    nodes: &BTreeMap<String, NodeInventory>,
) -> Result<WriteSummary, OutputError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut summary = WriteSummary::default();
    for (name, node) in nodes {
        if !safe_name(name) {
            tracing::warn!(node = %name, "node name is not a usable directory name; skipped");
            continue;
        }
        let node_dir = dir.join(name);
        std::fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
        for (file, content) in FILES.iter().zip(render(node)?) {
            let path = node_dir.join(file);
            if content.is_empty() {
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                    summary.written.push(format!("{name}/{file} (removed)"));
                }
                continue;
            }
            if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
                continue;
            }
            let tmp: PathBuf = node_dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, content.as_bytes()).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            summary.written.push(format!("{name}/{file}"));
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() || nodes.contains_key(&name) || !path.join("node.yaml").exists() {
            continue;
        }
        for file in FILES {
            let f = path.join(file);
            if f.exists() {
                std::fs::remove_file(&f).map_err(io_err(&f))?;
            }
        }
        // Leaves the directory when someone else put other files in it.
        let _ = std::fs::remove_dir(&path);
        summary.removed.push(name);
    }
    Ok(summary)
}

//! The installer (`dpumesh-cni-install`, the DaemonSet's container): puts the
//! plugin binary into the node's CNI bin dir and our network config into the
//! CNI conf dir, or chains our plugin into the node's existing primary conflist;
//! `--uninstall` takes both back out. Contract: docs/host-cni.md, "Installer".
//!
//! Every write is a temp file in the target directory, then a rename: a runtime
//! reading the directory sees the old file or the new one, never a half one.
//! Everything is read and checked before anything is written, so a bad input
//! (a malformed existing conflist, a missing binary) changes nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Key set on the plugin entry we write, so uninstall and re-install find it.
pub const MARKER_KEY: &str = "dpumesh.io/installed-by";
pub const MARKER_VALUE: &str = "dpumesh-cni-install";
/// Suffix of the backup of a conflist we chained into. Not a CNI extension
/// (`.conf`, `.conflist`, `.json`), so runtimes never load it.
pub const BACKUP_SUFFIX: &str = ".dpumesh-orig";
/// Name of the plugin binary in the CNI bin dir.
pub const PLUGIN_NAME: &str = "dpumesh-cni";
/// The kubeconfig the installer writes into the CNI conf dir (no CNI
/// extension, so runtimes never load it as a network config).
pub const KUBECONFIG_NAME: &str = "dpumesh-kubeconfig";
/// First line of a kubeconfig we wrote: uninstall removes only such a file.
const KUBECONFIG_MARKER: &str = "# written by dpumesh-cni-install";

/// A kubeconfig for the plugin (docs/host-cni.md "Pod annotations") from a
/// service account token directory (`token`, `ca.crt`, as a
/// `kubernetes.io/service-account-token` Secret volume has them) and the API
/// server URL. The token is inline: the file is mode 0600.
pub fn service_account_kubeconfig(token_dir: &Path, server: &str) -> Result<Vec<u8>, InstallError> {
    use base64::Engine as _;
    if !(server.starts_with("https://") || server.starts_with("http://"))
        || server.contains(char::is_whitespace)
    {
        return Err(InstallError::Invalid {
            field: "kube-server",
            value: server.to_string(),
            reason: "expected an https:// URL of the Kubernetes API server".into(),
        });
    }
    let token_path = token_dir.join("token");
    let token = fs::read_to_string(&token_path)
        .map_err(io("reading the service account token", &token_path))?;
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(InstallError::BadConfig {
            path: token_path,
            reason: "the service account token is empty or not one word".into(),
        });
    }
    let ca_path = token_dir.join("ca.crt");
    let ca = fs::read(&ca_path).map_err(io("reading the cluster CA", &ca_path))?;
    if !ca.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Err(InstallError::BadConfig {
            path: ca_path,
            reason: "not a PEM certificate".into(),
        });
    }
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    Ok(format!(
        "{KUBECONFIG_MARKER}; the dpumesh CNI plugin annotates pods with it\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: dpumesh-cni\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: dpumesh-cni\n  context:\n    cluster: local\n    user: dpumesh-cni\n\
         current-context: dpumesh-cni\n"
    )
    .into_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable CNI config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{field} = {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("no primary CNI config (*.conflist) in {0} to chain into: install the primary CNI first, pass --chain-into, or use --mode standalone")]
    NoPrimary(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our own conflist, `<conf_dir>/<conflist_name>`.
    Standalone,
    /// Our entry inserted into the primary conflist already on the node.
    Chained,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "standalone" => Ok(Mode::Standalone),
            "chained" => Ok(Mode::Chained),
            _ => Err(format!("{s:?}: expected \"standalone\" or \"chained\"")),
        }
    }
}

/// Where our entry goes in a chained conflist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPosition {
    /// Before the existing plugins: ours makes the interface, the primary's
    /// meta plugins (portmap, bandwidth, tuning, ...) then see our result.
    First,
    /// After the existing plugins (ours gets their result as prevResult).
    Last,
}

impl std::str::FromStr for ChainPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<ChainPosition, String> {
        match s {
            "first" => Ok(ChainPosition::First),
            "last" => Ok(ChainPosition::Last),
            _ => Err(format!("{s:?}: expected \"first\" or \"last\"")),
        }
    }
}

/// Everything the installer needs, already parsed (the binary builds it from
/// flags and environment).
#[derive(Debug, Clone)]
pub struct InstallConfig {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The plugin binary to copy.
    pub plugin_binary: PathBuf,
    /// File name of our conflist (standalone).
    pub conflist_name: String,
    pub mode: Mode,
    /// Chained: the conflist to chain into; `None` = the one the runtime loads
    /// (the first `*.conflist` in name order, ours excluded).
    pub chain_into: Option<PathBuf>,
    pub chain_position: ChainPosition,
    /// Network name of our conflist (standalone).
    pub network_name: String,
    /// `cniVersion` of our conflist (standalone). 1.0.0 by default: containerd
    /// 1.6 and CRI-O 1.2x ship libcni 1.1, which knows no 1.1.0 results.
    pub cni_version: String,
    /// Our plugin entry (without `cniVersion`/`name`, which the list carries).
    pub plugin: Value,
    /// Written to `<conf_dir>/dpumesh-kubeconfig` (mode 0600) when set
    /// ([`service_account_kubeconfig`]); when not, a kubeconfig we wrote
    /// before is removed.
    pub kubeconfig: Option<Vec<u8>>,
}

/// The plugin entry from the usual knobs.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub vf_backend: String,
    pub pf: Option<String>,
    pub dataplane: String,
    pub pod_cidr: ipnet::IpNet,
    pub gateway: Option<std::net::IpAddr>,
    pub mtu: Option<u32>,
    pub meshed: bool,
    pub state_dir: Option<PathBuf>,
    pub ipam_data_dir: Option<PathBuf>,
    /// The plugin's `kubernetes.kubeconfig` (a path on the node).
    pub kubeconfig: Option<PathBuf>,
}

impl PluginSettings {
    pub fn entry(&self) -> Result<Value, InstallError> {
        if !matches!(self.vf_backend.as_str(), "sriov" | "sim") {
            return Err(InstallError::Invalid {
                field: "vf-backend",
                value: self.vf_backend.clone(),
                reason: "expected \"sriov\" or \"sim\"".into(),
            });
        }
        if self.vf_backend == "sriov" && self.pf.as_deref().unwrap_or("").is_empty() {
            return Err(InstallError::Invalid {
                field: "pf",
                value: String::new(),
                reason: "the sriov backend needs the PF netdev whose VFs pods get".into(),
            });
        }
        if self.dataplane.parse::<std::net::SocketAddr>().is_err() && !self.dataplane.contains(':')
        {
            return Err(InstallError::Invalid {
                field: "dataplane",
                value: self.dataplane.clone(),
                reason: "expected HOST:PORT".into(),
            });
        }
        let gateway = match self.gateway {
            Some(g) => g,
            None => first_host(&self.pod_cidr).ok_or_else(|| InstallError::Invalid {
                field: "pod-cidr",
                value: self.pod_cidr.to_string(),
                reason: "too small to hold a gateway and pods".into(),
            })?,
        };
        if !self.pod_cidr.contains(&gateway) {
            return Err(InstallError::Invalid {
                field: "gateway",
                value: gateway.to_string(),
                reason: format!("not inside the pod CIDR {}", self.pod_cidr),
            });
        }
        let default_dst = if self.pod_cidr.addr().is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        let mut ipam = json!({
            "type": "host-local",
            "ranges": [[{"subnet": self.pod_cidr.trunc().to_string(), "gateway": gateway.to_string()}]],
            "routes": [{"dst": default_dst}],
        });
        if let Some(d) = &self.ipam_data_dir {
            ipam["dataDir"] = json!(d);
        }
        let mut e = json!({
            "type": PLUGIN_NAME,
            "vfBackend": self.vf_backend,
            "dataplane": self.dataplane,
            "meshed": self.meshed,
            "ipam": ipam,
        });
        if let Some(pf) = &self.pf {
            e["pf"] = json!(pf);
        }
        if let Some(m) = self.mtu {
            e["mtu"] = json!(m);
        }
        if let Some(s) = &self.state_dir {
            e["stateDir"] = json!(s);
        }
        if let Some(k) = &self.kubeconfig {
            if !k.is_absolute() {
                return Err(InstallError::Invalid {
                    field: "kubeconfig",
                    value: k.display().to_string(),
                    reason: "must be an absolute path on the node".into(),
                });
            }
            e["kubernetes"] = json!({"kubeconfig": k});
        }
        Ok(e)
    }
}

fn first_host(net: &ipnet::IpNet) -> Option<std::net::IpAddr> {
    let mut hosts = net.trunc().hosts();
    let first = hosts.next()?;
    // A /31 or /32 leaves nothing for pods.
    hosts.next().map(|_| first)
}

/// What a run changed, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files written (binary, conflist, backup).
    pub written: Vec<PathBuf>,
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// Files restored from a backup.
    pub restored: Vec<PathBuf>,
}

impl Report {
    pub fn changed(&self) -> bool {
        !(self.written.is_empty() && self.removed.is_empty() && self.restored.is_empty())
    }
}

/// One planned write, computed before anything touches the disk.
struct Write1 {
    path: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
    /// Puts back a conflist we chained into.
    restore: bool,
}

/// Installs (idempotently): a second run with the same config changes nothing.
pub fn install(cfg: &InstallConfig) -> Result<Report, InstallError> {
    validate_file_name("conflist-name", &cfg.conflist_name)?;
    let binary = fs::read(&cfg.plugin_binary)
        .map_err(io("reading the plugin binary", &cfg.plugin_binary))?;
    let mut plan: Vec<Write1> = Vec::new();
    let mut remove: Vec<PathBuf> = Vec::new();

    let bin_target = cfg.bin_dir.join(PLUGIN_NAME);
    if !same_file_content(&bin_target, &binary, 0o755) {
        plan.push(Write1 {
            path: bin_target,
            bytes: binary,
            mode: 0o755,
            restore: false,
        });
    }

    // The kubeconfig before the conflist that names it.
    let kubeconfig = cfg.conf_dir.join(KUBECONFIG_NAME);
    match &cfg.kubeconfig {
        Some(bytes) if !same_file_content(&kubeconfig, bytes, 0o600) => plan.push(Write1 {
            path: kubeconfig,
            bytes: bytes.clone(),
            mode: 0o600,
            restore: false,
        }),
        Some(_) => {}
        None if is_our_kubeconfig(&kubeconfig) => remove.push(kubeconfig),
        None => {}
    }

    let own = cfg.conf_dir.join(&cfg.conflist_name);
    match cfg.mode {
        Mode::Standalone => {
            let list = json!({
                "cniVersion": cfg.cni_version,
                "name": cfg.network_name,
                "plugins": [marked(&cfg.plugin)],
            });
            push_json(&mut plan, &own, &list);
            // Switching from chained to standalone: take our entry back out.
            for (target, backup) in chained_targets(&cfg.conf_dir)? {
                plan_unchain(&mut plan, &mut remove, &target, &backup)?;
            }
        }
        Mode::Chained => {
            let target = match &cfg.chain_into {
                Some(t) => t.clone(),
                None => primary_conflist(&cfg.conf_dir, &cfg.conflist_name)?,
            };
            let backup = backup_path(&target);
            // The original is the backup if we chained before, else the file.
            let original = match fs::read(&backup) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let current =
                        fs::read(&target).map_err(io("reading the primary conflist", &target))?;
                    let parsed = parse_conflist(&target, &current)?;
                    if has_marker(&parsed) {
                        // Ours is in, the backup is gone: the original is the
                        // file without our entry.
                        serialize(&without_ours(parsed))
                    } else {
                        current
                    }
                }
                Err(e) => return Err(io("reading the backup", &backup)(e)),
            };
            let chained = chain(&target, &original, &cfg.plugin, cfg.chain_position)?;
            if !backup.exists() {
                plan.push(Write1 {
                    path: backup,
                    bytes: original,
                    mode: file_mode(&target).unwrap_or(0o644),
                    restore: false,
                });
            }
            let mode = file_mode(&target).unwrap_or(0o644);
            if fs::read(&target).ok().as_deref() != Some(chained.as_slice()) {
                plan.push(Write1 {
                    path: target.clone(),
                    bytes: chained,
                    mode,
                    restore: false,
                });
            }
            // Switching from standalone to chained: our own conflist goes.
            if own != target && is_ours(&own) {
                remove.push(own);
            }
            // Chained into a different file before: undo that one.
            for (t, b) in chained_targets(&cfg.conf_dir)? {
                if t != target {
                    plan_unchain(&mut plan, &mut remove, &t, &b)?;
                }
            }
        }
    }
    apply(plan, remove)
}

/// Removes the binary and our conflist, and restores every conflist we chained
/// into (byte for byte from the backup when nobody changed it since).
pub fn uninstall(
    bin_dir: &Path,
    conf_dir: &Path,
    conflist_name: &str,
) -> Result<Report, InstallError> {
    validate_file_name("conflist-name", conflist_name)?;
    let mut plan = Vec::new();
    let mut remove = Vec::new();
    let own = conf_dir.join(conflist_name);
    if is_ours(&own) {
        remove.push(own);
    }
    for (target, backup) in chained_targets(conf_dir)? {
        plan_unchain(&mut plan, &mut remove, &target, &backup)?;
    }
    let bin = bin_dir.join(PLUGIN_NAME);
    if bin.exists() {
        remove.push(bin);
    }
    let kubeconfig = conf_dir.join(KUBECONFIG_NAME);
    if is_our_kubeconfig(&kubeconfig) {
        remove.push(kubeconfig);
    }
    apply(plan, remove)
}

fn is_our_kubeconfig(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| b.starts_with(KUBECONFIG_MARKER.as_bytes()))
}

fn validate_file_name(field: &'static str, name: &str) -> Result<(), InstallError> {
    let ok = !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
        && (name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json"));
    if ok {
        Ok(())
    } else {
        Err(InstallError::Invalid {
            field,
            value: name.into(),
            reason: "a file name ending in .conflist (or .conf/.json), without '/'".into(),
        })
    }
}

fn marked(plugin: &Value) -> Value {
    let mut p = plugin.clone();
    if let Some(o) = p.as_object_mut() {
        o.insert(MARKER_KEY.into(), json!(MARKER_VALUE));
    }
    p
}

fn has_marker(list: &Map<String, Value>) -> bool {
    plugins(list).iter().any(is_our_entry)
}

fn is_our_entry(p: &Value) -> bool {
    p.get(MARKER_KEY).and_then(Value::as_str) == Some(MARKER_VALUE)
}

fn plugins(list: &Map<String, Value>) -> &[Value] {
    list.get("plugins")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn without_ours(mut list: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::Array(ps)) = list.get_mut("plugins") {
        ps.retain(|p| !is_our_entry(p));
    }
    list
}

/// A file we wrote: a conflist whose entries carry our marker.
fn is_ours(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .is_some_and(|l| has_marker(&l))
}

/// Checks that `bytes` is a conflist we can chain into.
fn parse_conflist(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, InstallError> {
    let bad = |reason: String| InstallError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Value::Object(list) = v else {
        return Err(bad("expected a JSON object".into()));
    };
    match list.get("plugins") {
        Some(Value::Array(ps)) => {
            if ps.is_empty() {
                return Err(bad("\"plugins\" is empty".into()));
            }
            for (i, p) in ps.iter().enumerate() {
                if p.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(bad(format!("plugins[{i}] has no \"type\"")));
                }
            }
        }
        Some(_) => return Err(bad("\"plugins\" is not an array".into())),
        None if list.contains_key("type") => {
            return Err(bad(
                "a single-plugin config (no \"plugins\" list): chaining needs a .conflist".into(),
            ))
        }
        None => return Err(bad("no \"plugins\" list".into())),
    }
    for key in ["cniVersion", "name"] {
        if list
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad(format!("no \"{key}\"")));
        }
    }
    Ok(list)
}

fn serialize(v: &Map<String, Value>) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

/// The original conflist with our entry inserted.
fn chain(
    path: &Path,
    original: &[u8],
    plugin: &Value,
    pos: ChainPosition,
) -> Result<Vec<u8>, InstallError> {
    let mut list = without_ours(parse_conflist(path, original)?);
    if let Some(Value::Array(ps)) = list.get_mut("plugins") {
        if ps
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME))
        {
            return Err(InstallError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("already holds a {PLUGIN_NAME} entry not written by the installer: remove it or use --mode standalone"),
            });
        }
        match pos {
            ChainPosition::First => ps.insert(0, marked(plugin)),
            ChainPosition::Last => ps.push(marked(plugin)),
        }
    }
    Ok(serialize(&list))
}

fn push_json(plan: &mut Vec<Write1>, path: &Path, v: &Value) {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    if !same_file_content(path, &bytes, 0o644) {
        plan.push(Write1 {
            path: path.to_path_buf(),
            bytes,
            mode: 0o644,
            restore: false,
        });
    }
}

fn backup_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

/// `(conflist, backup)` for every backup in the conf dir.
fn chained_targets(conf_dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, InstallError> {
    let rd = match fs::read_dir(conf_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io("listing the CNI conf dir", conf_dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(orig) = name.strip_suffix(BACKUP_SUFFIX) {
            out.push((conf_dir.join(orig), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Undo a chaining: restore the backup when the file is exactly what we made
/// of it; when someone rewrote it since, only take our entry out of their
/// version (restoring would lose their change).
fn plan_unchain(
    plan: &mut Vec<Write1>,
    remove: &mut Vec<PathBuf>,
    target: &Path,
    backup: &Path,
) -> Result<(), InstallError> {
    let original = fs::read(backup).map_err(io("reading the backup", backup))?;
    let mode = file_mode(backup).unwrap_or(0o644);
    match fs::read(target) {
        Ok(current) => {
            let parsed = serde_json::from_slice::<Map<String, Value>>(&current).ok();
            match parsed {
                Some(list) if has_marker(&list) => {
                    let back = without_ours(list);
                    let orig_list = serde_json::from_slice::<Map<String, Value>>(&original).ok();
                    let bytes = if orig_list.as_ref() == Some(&back) {
                        original
                    } else {
                        serialize(&back)
                    };
                    plan.push(Write1 {
                        path: target.to_path_buf(),
                        bytes,
                        mode,
                        restore: true,
                    });
                }
                // Rewritten without our entry (or unreadable): theirs now.
                _ => {}
            }
        }
        // Gone: whoever removed it meant it; do not resurrect it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading a chained conflist", target)(e)),
    }
    remove.push(backup.to_path_buf());
    Ok(())
}

/// The conflist the runtime loads: libcni sorts the conf dir by name and takes
/// the first `.conflist`/`.conf`/`.json`.
fn primary_conflist(conf_dir: &Path, own: &str) -> Result<PathBuf, InstallError> {
    let rd = match fs::read_dir(conf_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::NoPrimary(conf_dir.to_path_buf()))
        }
        Err(e) => return Err(io("listing the CNI conf dir", conf_dir)(e)),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n != own && (n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
        })
        .collect();
    names.sort();
    names
        .first()
        .map(|n| conf_dir.join(n))
        .ok_or_else(|| InstallError::NoPrimary(conf_dir.to_path_buf()))
}

fn file_mode(p: &Path) -> Option<u32> {
    fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn same_file_content(path: &Path, bytes: &[u8], mode: u32) -> bool {
    file_mode(path) == Some(mode) && fs::read(path).ok().as_deref() == Some(bytes)
}

fn apply(plan: Vec<Write1>, remove: Vec<PathBuf>) -> Result<Report, InstallError> {
    let mut report = Report::default();
    for w in plan {
        write_atomic(&w.path, &w.bytes, w.mode)?;
        if w.restore {
            report.restored.push(w.path);
        } else {
            report.written.push(w.path);
        }
    }
    for r in remove {
        match fs::remove_file(&r) {
            Ok(()) => report.removed.push(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &r)(e)),
        }
    }
    Ok(report)
}

/// Temp file in the same directory (same filesystem), mode set, fsync'd, renamed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating the directory", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot-name without a CNI extension: runtimes skip it.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", path)(e));
    }
    Ok(())
}

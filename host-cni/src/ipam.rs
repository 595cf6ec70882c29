//! IPAM delegation: exec the configured IPAM plugin (e.g. `host-local`) from
//! `CNI_PATH` with our environment and our config on stdin, as libcni does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{code, AddResult, CniEnv, CniError, CniResult, NetConf};

/// A located IPAM plugin and the spec version it will be spoken to in.
pub struct Ipam {
    pub plugin: PathBuf,
    pub name: String,
    version: String,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

#[derive(Deserialize, Serialize, PartialEq, Debug)]
#[serde(rename_all = "camelCase")]
struct VersionInfo {
    #[serde(default)]
    supported_versions: Vec<String>,
}

/// `name` in the first `CNI_PATH` directory that has it.
pub fn find_plugin(name: &str, paths: &[PathBuf]) -> CniResult<PathBuf> {
    paths
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::config(
                format!("IPAM plugin {name:?} not found in CNI_PATH"),
                format!(
                    "install {name} into one of {:?} or fix \"ipam.type\"",
                    paths
                ),
            )
        })
}

impl Ipam {
    /// Locates the plugin of `conf.ipam` and negotiates the spec version: ours
    /// if it speaks it, else the newest it speaks that we do too (host-local
    /// 1.1.x stops at 1.0.0; 1.0.0 and 1.1.0 results are the same shape).
    pub fn new(conf: &NetConf, env: &CniEnv) -> CniResult<Ipam> {
        let ipam = conf.ipam.as_ref().ok_or_else(|| {
            CniError::config(
                "invalid network config: \"ipam\" is missing",
                "add an \"ipam\" section",
            )
        })?;
        let plugin = find_plugin(&ipam.plugin, &env.path)?;
        let mut me = Ipam {
            plugin,
            name: ipam.plugin.clone(),
            version: conf.cni_version.clone(),
        };
        let cache = VersionCache::new(&conf.state_dir, &me.plugin);
        let info = match cache.as_ref().and_then(VersionCache::load) {
            Some(info) => info,
            None => {
                let out = me.exec(
                    env,
                    "VERSION",
                    &serde_json::json!({"cniVersion": conf.cni_version}),
                )?;
                let info: VersionInfo = serde_json::from_slice(&out).unwrap_or(VersionInfo {
                    supported_versions: vec![],
                });
                if let Some(c) = &cache {
                    c.store(&info);
                }
                info
            }
        };
        if !info.supported_versions.contains(&conf.cni_version) {
            let ours = crate::spec::SUPPORTED_VERSIONS;
            let best = ours
                .iter()
                .rev()
                .filter(|v| version_le(v, &conf.cni_version))
                .find(|v| info.supported_versions.iter().any(|s| s == *v));
            me.version = best.map(|s| s.to_string()).ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("IPAM plugin {} speaks no CNI version we do", ipam.plugin),
                    format!(
                        "it supports {:?}, this plugin {ours:?}",
                        info.supported_versions
                    ),
                )
            })?;
        }
        Ok(me)
    }

    fn stdin_for(&self, conf: &NetConf, prev: Option<&AddResult>) -> Value {
        let mut v = conf.raw.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("cniVersion".into(), Value::String(self.version.clone()));
            o.remove("prevResult");
            if let Some(p) = prev {
                if let Ok(pv) = serde_json::to_value(p.clone().for_version(&self.version)) {
                    o.insert("prevResult".into(), pv);
                }
            }
        }
        v
    }

    pub fn add(&self, conf: &NetConf, env: &CniEnv) -> CniResult<AddResult> {
        self.start_add(conf, env)?.finish()
    }

    /// Starts the plugin's ADD and returns without waiting for it, so that the
    /// caller can overlap the allocation with other work (the VF's netns move,
    /// which mostly waits on the kernel). [`PendingAdd::finish`] collects it.
    pub fn start_add(&self, conf: &NetConf, env: &CniEnv) -> CniResult<PendingAdd<'_>> {
        Ok(PendingAdd {
            ipam: self,
            run: self.start(env, "ADD", &self.stdin_for(conf, None))?,
        })
    }

    pub fn del(&self, conf: &NetConf, env: &CniEnv) -> CniResult<()> {
        self.exec(env, "DEL", &self.stdin_for(conf, None))
            .map(|_| ())
    }

    pub fn check(&self, conf: &NetConf, env: &CniEnv, prev: &AddResult) -> CniResult<()> {
        self.exec(env, "CHECK", &self.stdin_for(conf, Some(prev)))
            .map(|_| ())
    }

    /// Runs the plugin. Its JSON error becomes ours: "try again later" stays
    /// code 11, anything else is code 101 with the plugin's own code and text.
    pub fn exec(&self, env: &CniEnv, command: &str, stdin: &Value) -> CniResult<Vec<u8>> {
        self.start(env, command, stdin)?.finish()
    }

    /// Spawns the plugin with its input written; [`Running::finish`] waits.
    fn start(&self, env: &CniEnv, command: &str, stdin: &Value) -> CniResult<Running<'_>> {
        let path_var = env
            .path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let args = env
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let mut cmd = Process::new(&self.plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &env.container_id)
            .env("CNI_IFNAME", &env.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path_var)
            .env("CNI_NETNS", env.netns.as_deref().unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fail = |e: std::io::Error| {
            CniError::new(
                code::IPAM,
                format!("cannot run IPAM plugin {}", self.plugin.display()),
                e.to_string(),
            )
        };
        let mut child = cmd.spawn().map_err(fail)?;
        let input = serde_json::to_vec(stdin).unwrap_or_default();
        if let Some(mut s) = child.stdin.take() {
            // A plugin may exit without reading (VERSION); a broken pipe is fine.
            // The config is far below the pipe's buffer, so this does not block.
            let _ = s.write_all(&input);
        }
        Ok(Running {
            ipam: self,
            command: command.to_string(),
            child,
        })
    }
}

/// A plugin process started by [`Ipam::start`].
struct Running<'a> {
    ipam: &'a Ipam,
    command: String,
    child: std::process::Child,
}

/// An IPAM ADD in flight (see [`Ipam::start_add`]).
pub struct PendingAdd<'a> {
    ipam: &'a Ipam,
    run: Running<'a>,
}

impl PendingAdd<'_> {
    /// Waits for the plugin and parses its result.
    pub fn finish(self) -> CniResult<AddResult> {
        let name = self.ipam.name.clone();
        let out = self.run.finish()?;
        serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::IPAM,
                format!("IPAM plugin {name} returned an unreadable result"),
                format!("{e}: {}", String::from_utf8_lossy(&out)),
            )
        })
    }
}

impl Running<'_> {
    /// Waits for the plugin: its stdout, or its JSON error turned into ours.
    fn finish(self) -> CniResult<Vec<u8>> {
        let Running {
            ipam,
            command,
            child,
        } = self;
        let out = child.wait_with_output().map_err(|e| {
            CniError::new(
                code::IPAM,
                format!("cannot run IPAM plugin {}", ipam.plugin.display()),
                e.to_string(),
            )
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let (c, msg, details) = match serde_json::from_slice::<WireError>(&out.stdout) {
            Ok(w) => (w.code, w.msg, w.details),
            Err(_) => (
                0,
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ),
        };
        let code = if c == code::TRY_AGAIN_LATER {
            code::TRY_AGAIN_LATER
        } else {
            code::IPAM
        };
        Err(CniError::new(
            code,
            format!("IPAM plugin {} {command} failed: {msg}", ipam.name),
            format!(
                "plugin error code {c}{}; check the \"ipam\" section and the plugin's state",
                if details.is_empty() {
                    String::new()
                } else {
                    format!(", details: {details}")
                }
            ),
        ))
    }
}

/// The IPAM plugin's `VERSION` answer, cached in the state dir so that ADD and
/// DEL do not pay one extra plugin process each (≈ 5 ms). The entry is keyed by
/// the plugin's path and identified by its inode, size and mtime: replacing or
/// upgrading the binary invalidates it. Any problem reading or writing the cache
/// only means asking the plugin again.
struct VersionCache {
    file: PathBuf,
    plugin: String,
    stamp: String,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedVersion {
    plugin: String,
    stamp: String,
    #[serde(flatten)]
    info: VersionInfo,
}

impl VersionCache {
    fn new(state_dir: &Path, plugin: &Path) -> Option<VersionCache> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(plugin).ok()?;
        let stamp = format!(
            "{}:{}:{}.{}",
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        // One file per plugin path, named by an FNV-1a hash of the path.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in plugin.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        Some(VersionCache {
            file: state_dir
                .join("ipam-versions")
                .join(format!("{h:016x}.json")),
            plugin: plugin.display().to_string(),
            stamp,
        })
    }

    fn load(&self) -> Option<VersionInfo> {
        let bytes = std::fs::read(&self.file).ok()?;
        let cached: CachedVersion = serde_json::from_slice(&bytes).ok()?;
        (cached.plugin == self.plugin
            && cached.stamp == self.stamp
            && !cached.info.supported_versions.is_empty())
        .then_some(cached.info)
    }

    fn store(&self, info: &VersionInfo) {
        if info.supported_versions.is_empty() {
            return;
        }
        let Some(dir) = self.file.parent() else {
            return;
        };
        let entry = CachedVersion {
            plugin: self.plugin.clone(),
            stamp: self.stamp.clone(),
            info: VersionInfo {
                supported_versions: info.supported_versions.clone(),
            },
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else {
            return;
        };
        // Write-then-rename: concurrent ADDs never read a torn file.
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        let ok = std::fs::create_dir_all(dir).is_ok()
            && std::fs::write(&tmp, bytes).is_ok()
            && std::fs::rename(&tmp, &self.file).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// a <= b for dotted versions.
fn version_le(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(a) <= p(b)
}

#[cfg(test)]
mod tests {
    use super::{VersionCache, VersionInfo};

    #[test]
    fn version_cache_is_invalidated_when_the_plugin_changes() {
        let dir = std::env::temp_dir().join(format!("dm-ipam-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let plugin = dir.join("host-local");
        std::fs::write(&plugin, b"v1").expect("plugin file");
        let info = VersionInfo {
            supported_versions: vec!["0.4.0".into(), "1.0.0".into()],
        };
        let cache = VersionCache::new(&dir, &plugin).expect("cache");
        assert_eq!(cache.load(), None, "nothing cached yet");
        cache.store(&info);
        assert_eq!(
            VersionCache::new(&dir, &plugin).and_then(|c| c.load()),
            Some(info)
        );
        // A replaced binary (new inode/size) must be asked again.
        std::fs::remove_file(&plugin).expect("remove");
        std::fs::write(&plugin, b"version 2").expect("plugin file");
        assert_eq!(
            VersionCache::new(&dir, &plugin).and_then(|c| c.load()),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn version_order() {
        assert!(super::version_le("1.0.0", "1.1.0"));
        assert!(super::version_le("0.4.0", "1.0.0"));
        assert!(!super::version_le("1.1.0", "1.0.0"));
    }
}

//! IPAM delegation: exec the configured IPAM plugin (e.g. `host-local`) from
//! `CNI_PATH` with our environment and our config on stdin, as libcni does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde::Deserialize;
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

#[derive(Deserialize)]
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
        let out = me.exec(
            env,
            "VERSION",
            &serde_json::json!({"cniVersion": conf.cni_version}),
        )?;
        let info: VersionInfo = serde_json::from_slice(&out).unwrap_or(VersionInfo {
            supported_versions: vec![],
        });
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
        let out = self.exec(env, "ADD", &self.stdin_for(conf, None))?;
        serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::IPAM,
                format!("IPAM plugin {} returned an unreadable result", self.name),
                format!("{e}: {}", String::from_utf8_lossy(&out)),
            )
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
            let _ = s.write_all(&input);
        }
        let out = child.wait_with_output().map_err(fail)?;
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
            format!("IPAM plugin {} {command} failed: {msg}", self.name),
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

/// a <= b for dotted versions.
fn version_le(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(a) <= p(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_order() {
        assert!(super::version_le("1.0.0", "1.1.0"));
        assert!(super::version_le("0.4.0", "1.0.0"));
        assert!(!super::version_le("1.1.0", "1.0.0"));
    }
}

//! The network configuration on stdin: the spec's fields plus ours.
//! Parsed once into [`NetConf`]; the rest of the crate never sees raw JSON
//! except to hand it on to the IPAM plugin.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::env::Command;
use super::error::{code, CniError, CniResult};
use super::result::{AddResult, Dns};

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The newest one, used when the input names none we can use.
pub const LATEST_VERSION: &str = "1.1.0";

pub const DEFAULT_DATAPLANE: &str = "192.168.100.2:15081";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/dpumesh";
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
pub const DEFAULT_DATAPLANE_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_KUBERNETES_TIMEOUT_MS: u64 = 3000;

/// Which VF pool to draw from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SR-IOV VFs of `pf`, found in sysfs under `sysfs_root`.
    Sriov {
        pf: String,
        sysfs_root: PathBuf,
        vlan: u16,
        spoofchk: bool,
        trust: bool,
    },
    /// The simulator's veth "VFs" `vf<k>` in the host netns; their peers
    /// `pf0vf<k>` live in `dpu_netns` (needed only to re-create a VF whose
    /// pod netns was deleted before DEL).
    Sim { dpu_netns: Option<String> },
}

/// Per-pod interception defaults sent to the dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterceptionConf {
    #[serde(default)]
    pub capture_inbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    #[serde(default)]
    pub capture_outbound_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
}

/// `kubernetes`: where the plugin writes the pod's VF annotations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubernetesWire {
    kubeconfig: Option<PathBuf>,
    timeout_ms: Option<u64>,
}

/// The parsed `kubernetes` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConf {
    pub kubeconfig: PathBuf,
    pub timeout: Duration,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The IPAM section: its plugin type plus everything else, untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub ipam: Option<IpamConf>,
    pub dns: Dns,
    pub prev_result: Option<AddResult>,
    /// VF PCI address chosen by the device plugin (`runtimeConfig.deviceID`
    /// wins over the top-level `deviceID`).
    pub device_id: Option<String>,
    pub backend: Backend,
    pub dataplane: String,
    pub dataplane_timeout: Duration,
    pub mtu: Option<u32>,
    pub meshed: bool,
    pub interception: InterceptionConf,
    pub state_dir: PathBuf,
    /// Where to write the pod's VF annotations; `None`: nowhere.
    pub kubernetes: Option<KubernetesConf>,
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole input, handed to the IPAM plugin.
    pub raw: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    ipam: Option<Value>,
    #[serde(default)]
    dns: Dns,
    prev_result: Option<AddResult>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    vf_backend: Option<String>,
    pf: Option<String>,
    sysfs_root: Option<PathBuf>,
    vlan: Option<u16>,
    spoofchk: Option<bool>,
    trust: Option<bool>,
    sim_dpu_netns: Option<String>,
    dataplane: Option<String>,
    dataplane_timeout_ms: Option<u64>,
    mtu: Option<u32>,
    meshed: Option<bool>,
    interception: Option<InterceptionConf>,
    state_dir: Option<PathBuf>,
    kubernetes: Option<KubernetesWire>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
}

/// Reads only `cniVersion` (for VERSION and for errors raised before the
/// config is fully parsed). Anything unreadable yields `None`.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(String::from)
}

fn invalid(field: &str, value: impl std::fmt::Debug, fix: impl Into<String>) -> CniError {
    CniError::config(
        format!("invalid network config: field {field:?} = {value:?}"),
        fix,
    )
}

impl NetConf {
    /// Parses and validates the config for `command`.
    pub fn parse(stdin: &[u8], command: Command) -> CniResult<NetConf> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network config on stdin",
                format!("stdin must be one JSON object (the network config): {e}"),
            )
        })?;
        if !raw.is_object() {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network config on stdin",
                "stdin must be a JSON object, not an array or scalar",
            ));
        }
        let w: Wire = serde_json::from_value(raw.clone()).map_err(|e| {
            // serde does not say which field: find it by decoding each alone.
            let field = raw.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, v)| {
                        let one = serde_json::json!({ (*k).clone(): (*v).clone() });
                        serde_json::from_value::<Wire>(one).is_err()
                    })
                    .map(|(k, _)| k.clone())
            });
            match field {
                Some(f) => CniError::config(
                    format!("invalid network config: field {f:?}"),
                    format!("{e} (fields and types: docs/host-cni.md)"),
                ),
                None => CniError::config(
                    "invalid network config",
                    format!("{e} (fields and types: docs/host-cni.md)"),
                ),
            }
        })?;

        let cni_version = w.cni_version.ok_or_else(|| {
            CniError::config(
                "invalid network config: \"cniVersion\" is missing",
                format!("set \"cniVersion\" to one of {SUPPORTED_VERSIONS:?}"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {cni_version:?}"),
                format!("this plugin supports {SUPPORTED_VERSIONS:?}"),
            ));
        }
        if matches!(command, Command::Status | Command::Gc) && cni_version != "1.1.0" {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs cniVersion 1.1.0, got {cni_version:?}",
                    command.as_str()
                ),
                "STATUS and GC exist only in CNI spec 1.1.0",
            ));
        }

        let name = w.name.ok_or_else(|| {
            CniError::config(
                "invalid network config: \"name\" is missing",
                "set \"name\" to the network name (letters, digits, '_', '.', '-')",
            )
        })?;
        let name_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(invalid(
                "name",
                &name,
                "the network name must start with a letter or digit and hold only letters, digits, '_', '.', '-'",
            ));
        }
        let plugin_type = w.plugin_type.unwrap_or_default();

        let ipam = match w.ipam {
            None => None,
            Some(v) => {
                let plugin = v.get("type").and_then(Value::as_str).unwrap_or("");
                if plugin.is_empty() || plugin.contains('/') || plugin.starts_with('.') {
                    return Err(invalid(
                        "ipam.type",
                        plugin,
                        "set \"ipam\": {\"type\": \"host-local\", ...} naming an IPAM plugin found in CNI_PATH",
                    ));
                }
                Some(IpamConf {
                    plugin: plugin.to_string(),
                })
            }
        };
        if ipam.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(CniError::config(
                "invalid network config: \"ipam\" is missing",
                "add an \"ipam\" section, e.g. {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.244.1.0/24\"}]], \"routes\": [{\"dst\": \"0.0.0.0/0\"}]}",
            ));
        }

        let backend = match w.vf_backend.as_deref().unwrap_or("sriov") {
            "sriov" => {
                let pf = w.pf.filter(|p| !p.is_empty()).ok_or_else(|| {
                    CniError::config(
                        "invalid network config: \"pf\" is missing",
                        "vfBackend \"sriov\" needs \"pf\": the PF netdev whose VFs pods get (e.g. \"p0\")",
                    )
                })?;
                if pf.len() > 15 || pf.contains('/') || pf.starts_with('.') {
                    return Err(invalid("pf", &pf, "\"pf\" must be a netdev name"));
                }
                if let Some(vlan) = w.vlan {
                    if vlan > 4094 {
                        return Err(invalid("vlan", vlan, "\"vlan\" must be 0 (none) to 4094"));
                    }
                }
                Backend::Sriov {
                    pf,
                    sysfs_root: w.sysfs_root.unwrap_or_else(|| DEFAULT_SYSFS_ROOT.into()),
                    vlan: w.vlan.unwrap_or(0),
                    spoofchk: w.spoofchk.unwrap_or(true),
                    trust: w.trust.unwrap_or(false),
                }
            }
            "sim" => Backend::Sim {
                dpu_netns: w.sim_dpu_netns.filter(|n| !n.is_empty()),
            },
            other => {
                return Err(invalid(
                    "vfBackend",
                    other,
                    "\"vfBackend\" must be \"sriov\" (real DPU) or \"sim\" (simulator veths)",
                ))
            }
        };

        let dataplane = w.dataplane.unwrap_or_else(|| DEFAULT_DATAPLANE.into());
        if !valid_host_port(&dataplane) {
            return Err(invalid(
                "dataplane",
                &dataplane,
                "\"dataplane\" must be HOST:PORT of the dataplane control API, e.g. \"192.168.100.2:15081\"",
            ));
        }
        let timeout_ms = w
            .dataplane_timeout_ms
            .unwrap_or(DEFAULT_DATAPLANE_TIMEOUT_MS);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(invalid(
                "dataplaneTimeoutMs",
                timeout_ms,
                "\"dataplaneTimeoutMs\" must be 1..=60000",
            ));
        }
        if let Some(mtu) = w.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid("mtu", mtu, "\"mtu\" must be 68..=65535"));
            }
        }
        let interception = w.interception.unwrap_or_default();
        for (field, ports) in [
            (
                "interception.captureInboundPorts",
                &interception.capture_inbound_ports,
            ),
            (
                "interception.excludeInboundPorts",
                &interception.exclude_inbound_ports,
            ),
            (
                "interception.excludeOutboundPorts",
                &interception.exclude_outbound_ports,
            ),
        ] {
            if ports.contains(&0) {
                return Err(invalid(field, ports, "ports must be 1..=65535"));
            }
        }
        let state_dir = w.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if !state_dir.is_absolute() {
            return Err(invalid(
                "stateDir",
                &state_dir,
                "\"stateDir\" must be an absolute path",
            ));
        }

        let kubernetes = match w.kubernetes {
            None => None,
            Some(k) => {
                let kubeconfig = k.kubeconfig.ok_or_else(|| {
                    CniError::config(
                        "invalid network config: \"kubernetes.kubeconfig\" is missing",
                        "set it to the kubeconfig the plugin uses to annotate pods, or drop \"kubernetes\"",
                    )
                })?;
                if !kubeconfig.is_absolute() {
                    return Err(invalid(
                        "kubernetes.kubeconfig",
                        &kubeconfig,
                        "\"kubernetes.kubeconfig\" must be an absolute path",
                    ));
                }
                let ms = k.timeout_ms.unwrap_or(DEFAULT_KUBERNETES_TIMEOUT_MS);
                if !(1..=60_000).contains(&ms) {
                    return Err(invalid(
                        "kubernetes.timeoutMs",
                        ms,
                        "\"kubernetes.timeoutMs\" must be 1..=60000",
                    ));
                }
                Some(KubernetesConf {
                    kubeconfig,
                    timeout: Duration::from_millis(ms),
                })
            }
        };

        let device_id = w
            .runtime_config
            .device_id
            .or(w.device_id)
            .filter(|d| !d.is_empty());
        if let Some(d) = &device_id {
            if !is_pci_address(d) {
                return Err(invalid(
                    "deviceID",
                    d,
                    "\"deviceID\" (or runtimeConfig.deviceID) must be a VF PCI address like 0000:03:00.2",
                ));
            }
        }

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            ipam,
            dns: w.dns,
            prev_result: w.prev_result,
            device_id,
            backend,
            dataplane,
            dataplane_timeout: Duration::from_millis(timeout_ms),
            mtu: w.mtu,
            meshed: w.meshed.unwrap_or(true),
            interception,
            state_dir,
            kubernetes,
            valid_attachments: w.valid_attachments,
            raw,
        })
    }
}

fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// `DDDD:BB:DD.F` in hex.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = r#"{"cniVersion":"1.1.0","name":"dpumesh","type":"dpumesh-cni","vfBackend":"sim",
        "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}}"#;

    #[test]
    fn defaults() {
        let c = NetConf::parse(SIM.as_bytes(), Command::Add).unwrap();
        assert_eq!(c.dataplane, DEFAULT_DATAPLANE);
        assert!(c.meshed);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.backend, Backend::Sim { dpu_netns: None });
        assert_eq!(c.ipam.unwrap().plugin, "host-local");
    }

    #[test]
    fn errors_have_spec_codes() {
        let e = |s: &str, cmd| NetConf::parse(s.as_bytes(), cmd).unwrap_err();
        assert_eq!(e("{nope", Command::Add).code, code::DECODE_FAILURE);
        assert_eq!(e("[1]", Command::Add).code, code::DECODE_FAILURE);
        assert_eq!(
            e(&SIM.replace("1.1.0", "9.9.9"), Command::Add).code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            e(&SIM.replace("\"name\":\"dpumesh\",", ""), Command::Add).code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            e(&SIM.replace("\"sim\"", "\"dpdk\""), Command::Add).code,
            code::INVALID_CONFIG
        );
        let no_pf = SIM.replace("\"vfBackend\":\"sim\",", "");
        assert!(e(&no_pf, Command::Add).details.contains("\"pf\""));
        assert_eq!(
            e(
                &SIM.replace("\"vfBackend\"", "\"mtu\":\"x\",\"vfBackend\""),
                Command::Add
            )
            .code,
            code::INVALID_CONFIG
        );
        let gc04 = SIM.replace("1.1.0", "1.0.0");
        assert_eq!(e(&gc04, Command::Gc).code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn runtime_device_id_wins() {
        let s = SIM.replace(
            "\"vfBackend\"",
            "\"deviceID\":\"0000:03:00.2\",\"runtimeConfig\":{\"deviceID\":\"0000:03:00.5\"},\"vfBackend\"",
        );
        let c = NetConf::parse(s.as_bytes(), Command::Add).unwrap();
        assert_eq!(c.device_id.as_deref(), Some("0000:03:00.5"));
        assert!(!is_pci_address("03:00.2"));
    }
}

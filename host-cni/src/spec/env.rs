//! The runtime's environment variables (CNI spec, "Parameters").

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{code, CniError, CniResult};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The Kubernetes identity the runtime passes in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// Every `CNI_*` variable, parsed and checked for the command at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Empty for DEL when the runtime no longer has a netns.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// Raw `CNI_ARGS` pairs, in order.
    pub args: Vec<(String, String)>,
    pub pod: PodArgs,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<PathBuf>,
}

/// `CNI_ARGS` keys this plugin understands.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
];

impl CniEnv {
    /// Parses the environment given as a map (the process environment in
    /// `main`, a literal map in tests).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> CniResult<CniEnv> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let command_raw = get("CNI_COMMAND").ok_or_else(|| {
            CniError::env(
                "CNI_COMMAND is not set",
                "set CNI_COMMAND to one of ADD, DEL, CHECK, VERSION, STATUS, GC",
            )
        })?;
        let command = Command::parse(command_raw).ok_or_else(|| {
            CniError::env(
                format!("unknown CNI_COMMAND {command_raw:?}"),
                "CNI_COMMAND must be one of ADD, DEL, CHECK, VERSION, STATUS, GC",
            )
        })?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |k: &str| -> CniResult<String> {
            get(k).map(String::from).ok_or_else(|| {
                CniError::env(
                    format!("{k} is not set"),
                    format!("CNI_COMMAND={} needs {k}", command.as_str()),
                )
            })
        };

        let (container_id, ifname) = if needs_attachment {
            let id = required("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };

        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            // DEL must work without a netns (the pod may be gone).
            Command::Del => get("CNI_NETNS").map(PathBuf::from),
            _ => None,
        };

        let path: Vec<PathBuf> = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        if path.is_empty()
            && matches!(
                command,
                Command::Add | Command::Del | Command::Check | Command::Gc
            )
        {
            return Err(CniError::env(
                "CNI_PATH is not set",
                format!(
                    "CNI_COMMAND={} delegates IPAM and needs CNI_PATH, the ':'-separated directories holding the IPAM plugin (e.g. /opt/cni/bin)",
                    command.as_str()
                ),
            ));
        }

        let (args, pod) = parse_args(get("CNI_ARGS").unwrap_or(""))?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            pod,
            path,
        })
    }
}

/// Parses `K1=V1;K2=V2`. Unknown keys are an error (code 2) unless
/// `IgnoreUnknown=1|true` is among them, as with libcni's plugins.
pub fn parse_args(raw: &str) -> CniResult<(Vec<(String, String)>, PodArgs)> {
    let mut pairs = Vec::new();
    for part in raw.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::env(
                format!("CNI_ARGS entry {part:?} is not KEY=VALUE"),
                "CNI_ARGS must be ';'-separated KEY=VALUE pairs, e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            )
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(CniError::env(
                format!("CNI_ARGS entry {part:?} has an empty key"),
                "CNI_ARGS must be ';'-separated KEY=VALUE pairs",
            ));
        }
        pairs.push((k.to_string(), v.trim().to_string()));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    let mut pod = PodArgs::default();
    for (k, v) in &pairs {
        let val = (!v.is_empty()).then(|| v.clone());
        match k.as_str() {
            "K8S_POD_NAMESPACE" => pod.namespace = val,
            "K8S_POD_NAME" => pod.name = val,
            "K8S_POD_UID" => pod.uid = val,
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = val,
            _ if KNOWN_ARGS.contains(&k.as_str()) || ignore_unknown => {}
            _ => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("unsupported CNI_ARGS key {k:?} (value {v:?})"),
                    format!(
                        "known keys: {}; add IgnoreUnknown=1 to CNI_ARGS to ignore others",
                        KNOWN_ARGS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok((pairs, pod))
}

/// The spec's rule: non-empty, starting alphanumeric, then alphanumerics,
/// '_', '.' or '-'. The ID also names state files, so this rule keeps paths safe.
pub fn validate_container_id(id: &str) -> CniResult<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            format!("invalid CNI_CONTAINERID {id:?}"),
            "CNI_CONTAINERID must start with a letter or digit and hold only letters, digits, '_', '.', '-' (at most 256 characters)",
        ))
    }
}

/// The kernel's rule for interface names.
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::env(
            format!("invalid CNI_IFNAME {name:?}"),
            "CNI_IFNAME must be 1-15 characters without '/', ':' or whitespace, and not '.' or '..'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_needs_netns_and_path() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        let e = CniEnv::from_vars(&vars(&base)).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let mut v = vars(&base);
        v.insert("CNI_NETNS".into(), "/run/netns/x".into());
        let e = CniEnv::from_vars(&v).unwrap_err();
        assert!(e.msg.contains("CNI_PATH"), "{e}");
        v.insert("CNI_PATH".into(), "/a:/b".into());
        v.insert(
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=abc;FOO=bar".into(),
        );
        let env = CniEnv::from_vars(&v).unwrap();
        assert_eq!(env.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(env.pod.name.as_deref(), Some("web"));
        assert_eq!(env.pod.namespace.as_deref(), Some("ns"));
        assert_eq!(env.pod.uid.as_deref(), Some("u1"));
        assert_eq!(env.pod.infra_container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn del_works_without_netns() {
        let v = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        assert_eq!(CniEnv::from_vars(&v).unwrap().netns, None);
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            parse_args("FOO=1").unwrap_err().code,
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(parse_args("garbage").unwrap_err().code, code::INVALID_ENV);
        assert!(validate_container_id("../etc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_ifname("eth0:1").is_err());
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        let e = CniEnv::from_vars(&vars(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(CniEnv::from_vars(&vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }
}

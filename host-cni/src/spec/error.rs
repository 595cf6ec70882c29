//! The spec's error form: `{"cniVersion", "code", "msg", "details"}` on stdout,
//! with a non-zero exit status.

use serde::Serialize;

/// Well-known error codes (CNI spec, "Error" section). 100+ are ours.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration (or CNI_ARGS).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADD).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADD because IP addresses are exhausted.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// A netlink operation on the VF or in the pod netns failed.
    pub const NETLINK: u32 = 100;
    /// The IPAM plugin failed (its own error is in `details`).
    pub const IPAM: u32 = 101;
    /// The dataplane refused the registration (bad or conflicting pod data).
    pub const DATAPLANE_REJECTED: u32 = 102;
    /// CHECK found the attachment different from what ADD set up.
    pub const CHECK_MISMATCH: u32 = 103;
    /// The VF backend (sysfs / simulator links) is not usable.
    pub const VF_BACKEND: u32 = 104;
    /// The Kubernetes API server refused the pod annotation (RBAC, no such pod).
    pub const KUBERNETES: u32 = 105;
}

/// A spec error. `msg` is a short summary, `details` says what is wrong and
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON the spec wants on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }

    pub fn env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg, details)
    }
    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg, details)
    }
    pub fn try_later(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg, details)
    }
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, msg, details)
    }
    pub fn netlink(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::NETLINK, msg, details)
    }
}

pub type CniResult<T> = std::result::Result<T, CniError>;

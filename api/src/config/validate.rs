//! Validation of a [`NodeConfig`]: every error, each with its path.

use std::fmt;

use super::NodeConfig;

/// One problem found in a config, e.g. `pods[3].ips[0]: "10.0.0.300" is not an IP address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending value, e.g. "pods[3].ips[0]".
    pub path: String,
    /// What is wrong with it, naming the value.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid NodeConfig ({} errors)", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    /// Each error as "<path>: <message>".
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl NodeConfig {
    /// Checks the whole config and reports every error found, not just the first.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            for (j, ip) in pod.ips.iter().enumerate() {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    errors.push(ValidationError {
                        path: format!("pods[{i}].ips[{j}]"),
                        message: format!("{ip:?} is not an IP address"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

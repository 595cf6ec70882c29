//! Errors of the simulator. Every error names what failed: the config field and
//! value, the command line and its stderr, or the path.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = SimError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A [`crate::SimConfig`] field (or another input such as a pod or process
    /// name) is invalid.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// An external command (usually `ip`) failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A filesystem or syscall operation failed.
    #[error("{context} {path}: {source}", path = path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be understood.
    #[error("state file {path} is corrupt: {reason}", path = path.display())]
    State { path: PathBuf, reason: String },
    /// Something that should exist does not.
    #[error("{0}")]
    NotFound(String),
    /// Something conflicts with what already exists.
    #[error("{0}")]
    Conflict(String),
}

impl SimError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SimError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        reason: impl ToString,
    ) -> Self {
        SimError::Invalid {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

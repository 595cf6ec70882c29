//! The CNI spec layer: environment, network config, results and errors.
//! Own types rather than a CNI crate: see docs/host-cni.md ("Why own spec types").

pub mod config;
pub mod env;
pub mod error;
pub mod result;

pub use config::{Backend, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS};
pub use env::{CniEnv, Command, PodArgs};
pub use error::{code, CniError, CniResult};
pub use result::{AddResult, Dns, Interface, IpConfig, Route};

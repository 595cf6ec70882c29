//! Test helpers: the real dpu-proxy binary on loopback ports, and a fake ADS
//! server (a real tonic server speaking Envoy's ADS).
#![allow(dead_code)]

pub mod ads;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_api::proto::v1::{proxy_config_client::ProxyConfigClient, GetConfigRequest};
use dpumesh_api::NodeConfig;

/// `target/<profile>/<name>`, next to this test's `deps/` directory.
pub use dpumesh_testkit::workspace_binary;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running dpu-proxy, killed (by PID) on drop.
pub struct DpuProxy {
    child: Child,
    pub mgmt_addr: String,
}

impl DpuProxy {
    pub async fn start() -> DpuProxy {
        let mgmt_addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let (outbound, inbound) = (free_port().to_string(), free_port().to_string());
        let child = Command::new(workspace_binary("dpu-proxy"))
            .args([
                "--mgmt-addr",
                &mgmt_addr,
                "--admin-addr",
                &admin,
                "--listen-ip",
                "127.0.0.1",
                "--outbound-port",
                &outbound,
                "--inbound-port",
                &inbound,
                "--node",
                "node-1",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dpu-proxy");
        let mut proxy = DpuProxy { child, mgmt_addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if dpumesh_api::client::proxy_config(&proxy.mgmt_addr)
                .await
                .is_ok()
            {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("dpu-proxy exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dpu-proxy never listened on {}",
                proxy.mgmt_addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (serving version, served config).
    pub async fn config(&self) -> (u64, Option<NodeConfig>) {
        let mut c: ProxyConfigClient<_> = dpumesh_api::client::proxy_config(&self.mgmt_addr)
            .await
            .expect("connect");
        let r = c
            .get_config(GetConfigRequest {})
            .await
            .expect("GetConfig")
            .into_inner();
        let config = (!r.node_config_json.is_empty())
            .then(|| NodeConfig::from_json(&r.node_config_json).expect("served config parses"));
        (r.serving_version, config)
    }

    /// Waits until the proxy serves at least `version`.
    pub async fn wait_version(&self, version: u64) -> NodeConfig {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let (v, Some(c)) = self.config().await {
                if v >= version {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "dpu-proxy never reached version {version}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DpuProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (by PID) on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

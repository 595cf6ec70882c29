//! Pushing NodeConfig versions to dpu-proxy (control API `ProxyConfig`,
//! `docs/control-api.md`): one version per changed config, ACK or NACK.

use dpumesh_api::client;
use dpumesh_api::proto::v1::{
    proxy_config_client::ProxyConfigClient, GetConfigRequest, PushOutcome,
};
use dpumesh_api::NodeConfig;
use tonic::transport::Channel;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// dpu-proxy serves this new version.
    Applied(u64),
    /// The config equals the one served (this version); nothing was sent.
    Unchanged(u64),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    #[error("dpu-proxy at {addr} unreachable: {message}")]
    Transport { addr: String, message: String },
    #[error("dpu-proxy refused version {version} (still serving {serving}): {}", errors.join("; "))]
    Nacked {
        version: u64,
        serving: u64,
        errors: Vec<String>,
    },
}

/// Pushes to one dpu-proxy, numbering versions above whatever it serves.
pub struct Pusher {
    addr: String,
    client: Option<ProxyConfigClient<Channel>>,
    /// The version dpu-proxy serves (0 = unknown / none).
    serving: u64,
    /// The content last acknowledged, with `version` zeroed and `sources` cleared.
    acked: Option<NodeConfig>,
}

impl Pusher {
    pub fn new(addr: &str) -> Pusher {
        Pusher {
            addr: addr.to_string(),
            client: None,
            serving: 0,
            acked: None,
        }
    }

    pub fn serving_version(&self) -> u64 {
        self.serving
    }

    fn transport(&self, message: impl ToString) -> PushError {
        PushError::Transport {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    async fn client(&mut self) -> Result<&mut ProxyConfigClient<Channel>, PushError> {
        if self.client.is_none() {
            let mut c = client::proxy_config(&self.addr)
                .await
                .map_err(|e| self.transport(e))?;
            // A restarted adapter continues above what the proxy serves.
            let current = c
                .get_config(GetConfigRequest {})
                .await
                .map_err(|e| self.transport(e))?
                .into_inner();
            self.serving = self.serving.max(current.serving_version);
            // ... and does not re-push what is already served.
            if self.acked.is_none() {
                if let Ok(mut served) = NodeConfig::from_json(&current.node_config_json) {
                    served.version = 0;
                    served.sources.clear();
                    self.acked = Some(served);
                }
            }
            self.client = Some(c);
        }
        self.client.as_mut().ok_or_else(|| PushError::Transport {
            addr: String::new(),
            message: "no client".into(),
        })
    }

    /// Offers `config` (its `version` is replaced) unless it equals the last ACKed
    /// one. `sources` (the xDS versions) is informational and does not count as a
    /// change: istiod re-sends unchanged resources under new versions, and each
    /// would otherwise cost a config swap on the DPU. The served `sources` are
    /// those of the last real change.
    pub async fn push(&mut self, mut config: NodeConfig) -> Result<Pushed, PushError> {
        config.version = 0;
        let mut content = config.clone();
        content.sources.clear();
        let _ = self.client().await?;
        if self.acked.as_ref() == Some(&content) {
            return Ok(Pushed::Unchanged(self.serving));
        }
        let serving = {
            let _ = self.client().await?;
            self.serving
        };
        let version = serving + 1;
        config.version = version;
        let addr = self.addr.clone();
        let client = self.client().await?;
        let reply = match client::push_config(client, &config).await {
            Ok(r) => r,
            Err(status) => {
                self.client = None; // reconnect next time
                return Err(PushError::Transport {
                    addr,
                    message: status.to_string(),
                });
            }
        };
        if reply.outcome == PushOutcome::Ack as i32 {
            self.serving = reply.serving_version.max(version);
            self.acked = Some(content);
            Ok(Pushed::Applied(version))
        } else {
            self.serving = reply.serving_version;
            Err(PushError::Nacked {
                version,
                serving: reply.serving_version,
                errors: reply.errors,
            })
        }
    }
}

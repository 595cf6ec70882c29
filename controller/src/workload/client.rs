//! The node's one workload-API stream to istiod (`DeltaAggregatedResources`,
//! as ztunnel opens it) and the push of what it yields.
//!
//! Both types are subscribed as wildcards with the first request. A response's
//! resources are checked one by one: those that do not decode or cannot be
//! used are rejected (the previous version of each stays) while the others are
//! applied, and the response is NACKed naming every rejected resource — what
//! ztunnel does. The NodeConfig built from the result must validate and be
//! accepted by dpu-proxy, otherwise nothing of the response is kept and it is
//! NACKed with that error. Accepted resources (name → version) outlive the
//! stream: a reconnect offers them as `initial_resource_versions`.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::proto::{security, workload};
use super::translate::{self, AddressEntry, PolicyEntry, WorkloadState};
use super::{WorkloadSettings, ADDRESS_TYPE, AUTHORIZATION_TYPE};
use crate::inventory::Inventory;
use crate::push::{PushError, Pushed, Pusher};

const TYPES: [&str; 2] = [ADDRESS_TYPE, AUTHORIZATION_TYPE];
const INVALID_ARGUMENT: i32 = 3;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The node ztunnel presents: id `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`,
/// metadata `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, plus
/// `CLUSTER_ID` and `ISTIO_VERSION` (ztunnel's proxy metadata).
pub fn node(settings: &WorkloadSettings, node_name: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let fields = [
        ("NAME", s(&settings.pod_name)),
        ("NAMESPACE", s(&settings.pod_namespace)),
        ("INSTANCE_IPS", s(&settings.instance_ip)),
        ("NODE_NAME", s(node_name)),
        ("CLUSTER_ID", s("Kubernetes")),
        ("ISTIO_VERSION", s(&settings.istio_version)),
    ];
    Node {
        id: format!(
            "ztunnel~{}~{}.{}~{}.svc.cluster.local",
            settings.instance_ip, settings.pod_name, settings.pod_namespace, settings.pod_namespace
        ),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        user_agent_name: "dpumesh-adapter".to_string(),
        ..Node::default()
    }
}

/// What the node's stream holds; kept across reconnects.
struct Held {
    state: WorkloadState,
    /// Type → accepted resource name → version.
    versions: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Type → `system_version_info` of the last accepted response (`sources`).
    sources: BTreeMap<&'static str, String>,
    pusher: Pusher,
    /// A good config could not be delivered (dpu-proxy unreachable): retry.
    undelivered: bool,
}

/// Runs the workload-API client until the process ends.
pub async fn run(settings: WorkloadSettings, inventory: Inventory) {
    let node = node(&settings, &inventory.node.name);
    let mut held = Held {
        state: WorkloadState::default(),
        versions: BTreeMap::new(),
        sources: BTreeMap::new(),
        pusher: Pusher::new(&settings.proxy_addr),
        undelivered: false,
    };
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        match one_stream(&settings.xds_addr, &node, &inventory, &mut held).await {
            Ok(()) => tracing::info!("workload xDS stream closed by the server"),
            Err(e) => tracing::warn!(error = %e, "workload xDS stream failed"),
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_START; // it had been working: retry soon
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn one_stream(
    addr: &str,
    node: &Node,
    inventory: &Inventory,
    held: &mut Held,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(addr.to_string()).await?;
    let (req_tx, req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for type_url in TYPES {
        req_tx
            .send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.to_string(),
                initial_resource_versions: held
                    .versions
                    .get(type_url)
                    .map(|v| v.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                ..DeltaDiscoveryRequest::default()
            })
            .await?;
    }
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let response = tokio::select! {
            r = inbound.message() => match r? {
                Some(r) => r,
                None => return Ok(()),
            },
            _ = retry.tick(), if held.undelivered => {
                if let Ok(config) = config_of(inventory, held, &held.state) {
                    let _ = deliver(held, config).await;
                }
                continue;
            }
        };
        let Some(type_url) = TYPES.into_iter().find(|t| *t == response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "response for a type never requested; ignored");
            continue;
        };
        let error = handle(type_url, &response, inventory, held).await;
        let mut reply = DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        };
        match error {
            Some(message) => {
                tracing::warn!(type_url, error = %message, "NACK");
                reply.error_detail = Some(Status {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                });
            }
            None => tracing::debug!(type_url, "ACK"),
        }
        req_tx.send(reply).await?;
    }
}

/// One resource of a response, checked: (name, version, what it becomes).
enum Checked {
    Address(String, String, AddressEntry),
    Authorization(String, String, PolicyEntry),
}

fn check(
    type_url: &str,
    r: &envoy_types::pb::envoy::service::discovery::v3::Resource,
) -> Result<Checked, String> {
    let Some(any) = &r.resource else {
        return Err("the response carries no resource body".into());
    };
    if any.type_url != type_url {
        return Err(format!("the resource inside is a {}", any.type_url));
    }
    match type_url {
        ADDRESS_TYPE => {
            let a = workload::Address::decode(any.value.as_slice())
                .map_err(|e| format!("not a valid protobuf message: {e}"))?;
            let converted = translate::convert_address(&a)?;
            for reason in &converted.ignored {
                tracing::info!(resource = %r.name, "workload API: {reason}");
            }
            Ok(Checked::Address(
                r.name.clone(),
                r.version.clone(),
                converted.entry,
            ))
        }
        _ => {
            let a = security::Authorization::decode(any.value.as_slice())
                .map_err(|e| format!("not a valid protobuf message: {e}"))?;
            let entry = translate::convert_authorization(&a)?;
            Ok(Checked::Authorization(
                r.name.clone(),
                r.version.clone(),
                entry,
            ))
        }
    }
}

fn config_of(
    inventory: &Inventory,
    held: &Held,
    state: &WorkloadState,
) -> Result<dpumesh_api::NodeConfig, String> {
    let mut config = translate::build(inventory, state)?;
    for (type_url, version) in &held.sources {
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        config
            .sources
            .insert(format!("xds/workload/{short}"), version.clone());
    }
    config
        .validate()
        .map_err(|errors| format!("the resulting NodeConfig is invalid: {errors}"))?;
    Ok(config)
}

/// Ok: delivered or undeliverable now (retried); Err: dpu-proxy refused it.
async fn deliver(held: &mut Held, config: dpumesh_api::NodeConfig) -> Result<(), String> {
    match held.pusher.push(config).await {
        Ok(Pushed::Applied(v)) => {
            tracing::info!(version = v, "dpu-proxy ACKed the config");
            held.undelivered = false;
            Ok(())
        }
        Ok(Pushed::Unchanged(_)) => {
            held.undelivered = false;
            Ok(())
        }
        Err(e @ PushError::Nacked { .. }) => Err(e.to_string()),
        Err(e @ PushError::Transport { .. }) => {
            tracing::warn!(error = %e, "push failed; retrying");
            held.undelivered = true;
            Ok(())
        }
    }
}

/// Applies one response; the NACK message, if any.
async fn handle(
    type_url: &'static str,
    response: &DeltaDiscoveryResponse,
    inventory: &Inventory,
    held: &mut Held,
) -> Option<String> {
    let mut state = held.state.clone();
    let mut versions = held.versions.get(type_url).cloned().unwrap_or_default();
    let mut rejected = Vec::new();
    for (i, r) in response.resources.iter().enumerate() {
        if r.name.is_empty() {
            rejected.push(format!("{type_url} #{i}: a resource without a name"));
            continue;
        }
        match check(type_url, r) {
            Err(e) => rejected.push(format!("{type_url} {:?}: {e}", r.name)),
            Ok(Checked::Address(name, version, entry)) => {
                state.addresses.insert(name.clone(), entry);
                versions.insert(name, version);
            }
            Ok(Checked::Authorization(name, version, entry)) => {
                state.authorizations.insert(name.clone(), entry);
                versions.insert(name, version);
            }
        }
    }
    let removed = response
        .removed_resources
        .iter()
        .chain(response.removed_resource_names.iter().map(|n| &n.name));
    for name in removed {
        versions.remove(name);
        match type_url {
            ADDRESS_TYPE => state.addresses.remove(name).map(|_| ()),
            _ => state.authorizations.remove(name).map(|_| ()),
        };
    }
    let system_version = if response.system_version_info.is_empty() {
        response.nonce.clone()
    } else {
        response.system_version_info.clone()
    };
    let previous_source = held.sources.insert(type_url, system_version);
    let warming = TYPES
        .iter()
        .any(|t| *t != type_url && !held.versions.contains_key(t));
    let outcome = match config_of(inventory, held, &state) {
        Err(e) => Err(e),
        // Until both types have been answered once, nothing is pushed.
        Ok(_) if warming => Ok(()),
        Ok(config) => deliver(held, config).await,
    };
    match outcome {
        Err(message) => {
            match previous_source {
                Some(v) => held.sources.insert(type_url, v),
                None => held.sources.remove(type_url),
            };
            rejected.push(message);
            Some(rejected.join("; "))
        }
        Ok(()) => {
            held.state = state;
            held.versions.insert(type_url, versions);
            (!rejected.is_empty()).then(|| rejected.join("; "))
        }
    }
}

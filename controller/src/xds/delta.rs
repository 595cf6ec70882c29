//! The incremental ADS client: one `DeltaAggregatedResources` stream per local
//! pod, as Envoy sidecars (and ztunnel) speak it to istiod.
//!
//! Per type the stream subscribes once — CDS and LDS as wildcards (an empty
//! first `resource_names_subscribe`), EDS, SDS and RDS to the names the accepted
//! clusters and listeners refer to, changed by `resource_names_subscribe` /
//! `resource_names_unsubscribe` as those change. A response's `resources` are
//! added or replaced by name and its `removed_resources` dropped; the aggregator
//! judges the result exactly as it judges a state-of-the-world response
//! (`super::ads`), and the stream ACKs (`response_nonce`) or NACKs
//! (`response_nonce` + `error_detail`: nothing of that response is kept). What
//! was accepted (name → version) outlives the stream: a reconnect sends it as
//! `initial_resource_versions`, so the server sends only what changed meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::ads::{
    children, references, Event, Update, Verdict, BACKOFF_MAX, BACKOFF_START, INVALID_ARGUMENT,
};
use super::resource::{
    Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};

/// The order of the first requests on a stream: wildcards first, as a sidecar does.
const REQUEST_ORDER: [&str; 5] = [
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
];

/// What a pod's stream knows of one type; kept across reconnects.
#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed names (EDS, SDS, RDS); the wildcard types (CDS, LDS) keep none.
    names: BTreeSet<String>,
    /// Accepted resources: name → version (`initial_resource_versions` on reconnect).
    versions: BTreeMap<String, String>,
    /// CDS/LDS: accepted resource → the (type, name) of the EDS/SDS/RDS
    /// resources it refers to.
    refs: BTreeMap<String, BTreeSet<(&'static str, String)>>,
    /// A response of this type was accepted once: the aggregator holds the
    /// pod's resources of it, so a new subscription does not make the pod warm.
    received: bool,
    /// Requested on the current stream.
    requested: bool,
}

type Types = BTreeMap<&'static str, TypeState>;

fn is_wildcard(type_url: &str) -> bool {
    matches!(type_url, CLUSTER_TYPE | LISTENER_TYPE)
}

pub(super) async fn pod_stream(addr: String, pod: String, node: Node, events: mpsc::Sender<Event>) {
    let mut types = Types::new();
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        match one_stream(&addr, &pod, &node, &events, &mut types).await {
            Ok(()) => tracing::info!(%pod, "delta xDS stream closed by the server"),
            Err(e) => tracing::warn!(%pod, error = %e, "delta xDS stream failed"),
        }
        if events.is_closed() {
            return;
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_START; // it had been working: retry soon
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A response's resources (each with its version) and the names it removes.
type Decoded = (Vec<(String, Resource)>, Vec<String>);

fn decode(response: &DeltaDiscoveryResponse, type_url: &str) -> Result<Decoded, String> {
    let mut updated = Vec::with_capacity(response.resources.len());
    for (i, r) in response.resources.iter().enumerate() {
        let label = if r.name.is_empty() {
            format!("#{i}")
        } else {
            r.name.clone()
        };
        let Some(any) = &r.resource else {
            return Err(format!(
                "{type_url} {label:?}: the response carries no resource body"
            ));
        };
        let resource = Resource::from_any(any, type_url, &label).map_err(|e| e.to_string())?;
        if !r.name.is_empty() && resource.name() != r.name {
            return Err(format!(
                "{type_url} {:?}: the resource inside is named {:?}",
                r.name,
                resource.name()
            ));
        }
        updated.push((r.version.clone(), resource));
    }
    let removed = response
        .removed_resources
        .iter()
        .cloned()
        .chain(
            response
                .removed_resource_names
                .iter()
                .map(|n| n.name.clone()),
        )
        .collect();
    Ok((updated, removed))
}

/// Records an accepted response in the stream's state.
fn commit(st: &mut TypeState, updated: &[(String, Resource)], removed: &[String]) {
    for name in removed {
        st.versions.remove(name);
        st.refs.remove(name);
    }
    for (version, r) in updated {
        let name = r.name().to_string();
        let kinds = children(r.type_url());
        if !kinds.is_empty() {
            let refs = kinds
                .iter()
                .flat_map(|&child| references(r, child).into_iter().map(move |n| (child, n)))
                .collect();
            st.refs.insert(name.clone(), refs);
        }
        st.versions.insert(name, version.clone());
    }
    st.received = true;
}

fn nack_status(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

async fn one_stream(
    addr: &str,
    pod: &str,
    node: &Node,
    events: &mpsc::Sender<Event>,
    types: &mut Types,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(addr.to_string()).await?;
    let (req_tx, req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut node = Some(node.clone()); // only the first request carries it
    for type_url in REQUEST_ORDER {
        let st = types.entry(type_url).or_default();
        st.requested = false;
        // A first request with no names is a wildcard: EDS/RDS wait for their names.
        if !is_wildcard(type_url) && st.names.is_empty() {
            continue;
        }
        if !st.received {
            events
                .send(Event::Subscribed {
                    pod: pod.to_string(),
                    type_url: type_url.to_string(),
                })
                .await?;
        }
        req_tx
            .send(DeltaDiscoveryRequest {
                node: node.take(),
                type_url: type_url.to_string(),
                resource_names_subscribe: st.names.iter().cloned().collect(),
                initial_resource_versions: st
                    .versions
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
                ..DeltaDiscoveryRequest::default()
            })
            .await?;
        st.requested = true;
    }
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    while let Some(response) = inbound.message().await? {
        let Some(type_url) = REQUEST_ORDER.into_iter().find(|t| *t == response.type_url) else {
            tracing::warn!(%pod, type_url = %response.type_url, "response for a type never requested; ignored");
            continue;
        };
        let nonce = response.nonce.clone();
        let version = if response.system_version_info.is_empty() {
            nonce.clone()
        } else {
            response.system_version_info.clone()
        };
        let verdict = match decode(&response, type_url) {
            Err(message) => Verdict::Nack(message),
            Ok((updated, removed)) => {
                let (reply, answer) = oneshot::channel();
                events
                    .send(Event::Response {
                        pod: pod.to_string(),
                        type_url: type_url.to_string(),
                        version,
                        update: Update::Delta {
                            updated: updated.iter().map(|(_, r)| r.clone()).collect(),
                            removed: removed.clone(),
                        },
                        reply,
                    })
                    .await?;
                let verdict = answer
                    .await
                    .unwrap_or(Verdict::Nack("adapter shutting down".into()));
                if verdict == Verdict::Ack {
                    commit(types.entry(type_url).or_default(), &updated, &removed);
                }
                verdict
            }
        };
        let mut ack = DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce,
            ..DeltaDiscoveryRequest::default()
        };
        match verdict {
            Verdict::Nack(message) => {
                tracing::warn!(%pod, type_url, error = %message, "NACK");
                ack.error_detail = Some(nack_status(message));
                req_tx.send(ack).await?;
            }
            Verdict::Ack => {
                tracing::debug!(%pod, type_url, "ACK");
                req_tx.send(ack).await?;
                for &child in children(type_url) {
                    follow(pod, type_url, child, types, events, &req_tx).await?;
                }
            }
        }
    }
    Ok(())
}

/// Brings the EDS/SDS/RDS subscription in line with what the accepted
/// clusters or listeners refer to.
async fn follow(
    pod: &str,
    parent: &str,
    child: &'static str,
    types: &mut Types,
    events: &mpsc::Sender<Event>,
    req_tx: &mpsc::Sender<DeltaDiscoveryRequest>,
) -> anyhow::Result<()> {
    let names: BTreeSet<String> = types
        .get(parent)
        .map(|st| {
            st.refs
                .values()
                .flatten()
                .filter(|(t, _)| *t == child)
                .map(|(_, n)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let st = types.entry(child).or_default();
    if names == st.names {
        return Ok(());
    }
    let subscribe: Vec<String> = names.difference(&st.names).cloned().collect();
    let unsubscribe: Vec<String> = st.names.difference(&names).cloned().collect();
    // Unsubscribed resources are forgotten (the aggregator drops them too).
    st.versions.retain(|n, _| names.contains(n));
    st.refs.retain(|n, _| names.contains(n));
    st.names = names;
    let request = if st.requested {
        DeltaDiscoveryRequest {
            type_url: child.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..DeltaDiscoveryRequest::default()
        }
    } else {
        // The first request of the type on this stream: an empty one would be a wildcard.
        if st.names.is_empty() {
            return Ok(());
        }
        if !st.received {
            events
                .send(Event::Subscribed {
                    pod: pod.to_string(),
                    type_url: child.to_string(),
                })
                .await?;
        }
        st.requested = true;
        DeltaDiscoveryRequest {
            type_url: child.to_string(),
            resource_names_subscribe: st.names.iter().cloned().collect(),
            initial_resource_versions: st
                .versions
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            ..DeltaDiscoveryRequest::default()
        }
    };
    tracing::debug!(%pod, type_url = child, subscribe = ?request.resource_names_subscribe,
        unsubscribe = ?request.resource_names_unsubscribe, "subscription change");
    req_tx.send(request).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{Resource as Wrapper, ResourceName};

    fn cluster(name: &str) -> Resource {
        Resource::Cluster(Cluster {
            name: name.to_string(),
            ..Cluster::default()
        })
    }

    fn response(resources: Vec<Wrapper>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: CLUSTER_TYPE.to_string(),
            resources,
            removed_resources: vec!["gone-1".into()],
            removed_resource_names: vec![ResourceName {
                name: "gone-2".into(),
                ..ResourceName::default()
            }],
            ..DeltaDiscoveryResponse::default()
        }
    }

    #[test]
    fn decodes_resources_with_versions_and_both_removal_lists() {
        let r = response(vec![Wrapper {
            name: "a".into(),
            version: "v1".into(),
            resource: Some(cluster("a").to_any()),
            ..Wrapper::default()
        }]);
        let (updated, removed) = decode(&r, CLUSTER_TYPE).expect("decodes");
        assert_eq!(updated, [("v1".to_string(), cluster("a"))]);
        assert_eq!(removed, ["gone-1", "gone-2"]);
    }

    #[test]
    fn a_wrapper_without_body_or_with_another_name_is_an_error_naming_it() {
        let empty = response(vec![Wrapper {
            name: "a".into(),
            ..Wrapper::default()
        }]);
        let e = decode(&empty, CLUSTER_TYPE).expect_err("no body");
        assert!(e.contains("\"a\"") && e.contains("no resource body"), "{e}");
        let renamed = response(vec![Wrapper {
            name: "a".into(),
            resource: Some(cluster("b").to_any()),
            ..Wrapper::default()
        }]);
        let e = decode(&renamed, CLUSTER_TYPE).expect_err("name mismatch");
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
        let wrong_type = response(vec![Wrapper {
            name: "a".into(),
            resource: Some(cluster("a").to_any()),
            ..Wrapper::default()
        }]);
        let e = decode(&wrong_type, LISTENER_TYPE).expect_err("type mismatch");
        assert!(e.contains(CLUSTER_TYPE), "{e}");
    }

    #[test]
    fn commit_tracks_versions_and_references_and_forgets_removed() {
        let mut st = TypeState::default();
        let eds = Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Cluster::default()
        };
        commit(
            &mut st,
            &[
                ("1".into(), Resource::Cluster(eds)),
                ("2".into(), cluster("static")),
            ],
            &[],
        );
        assert!(st.received);
        assert_eq!(st.versions.get("c").map(String::as_str), Some("1"));
        assert_eq!(
            st.refs["c"],
            BTreeSet::from([(ENDPOINT_TYPE, "c".to_string())])
        );
        assert!(st.refs["static"].is_empty());
        commit(&mut st, &[], &["c".into()]);
        assert!(!st.versions.contains_key("c") && !st.refs.contains_key("c"));
        assert_eq!(st.versions.len(), 1);
    }
}

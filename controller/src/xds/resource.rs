//! The xDS resource types the adapter consumes, and their decoders.
//!
//! Both inputs end in [`Resource::decode`]: ADS hands it the protobuf bytes of an
//! `Any`; the local mode first turns proto3 JSON (or YAML) into those bytes with
//! the Envoy descriptors ([`super::descriptors`]) and then calls the same function.

use std::collections::BTreeMap;
use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::Value;

use super::descriptors::pool;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// SDS: certificates named by clusters' TLS contexts (`kubernetes://<credentialName>`).
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The types in the order istiod sends them (and the order we subscribe).
pub const TYPE_URLS: [&str; 5] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
];

/// Short name of a type URL for messages ("Cluster", "Listener", ...).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// A resource the adapter understands.
#[allow(clippy::large_enum_variant)] // short-lived; boxing would only add noise
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Listener(Listener),
    Route(RouteConfiguration),
    Cluster(Cluster),
    Endpoints(ClusterLoadAssignment),
    Secret(Secret),
}

/// Which resource an error is about: type URL and name (or position when the
/// name could not be read).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub type_url: String,
    pub name: String,
}

impl ResourceRef {
    pub fn new(type_url: &str, name: &str) -> ResourceRef {
        ResourceRef {
            type_url: type_url.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.type_url, self.name)
    }
}

/// A resource that could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct DecodeError {
    pub resource: ResourceRef,
    pub message: String,
}

impl Resource {
    pub fn type_url(&self) -> &'static str {
        match self {
            Resource::Listener(_) => LISTENER_TYPE,
            Resource::Route(_) => ROUTE_TYPE,
            Resource::Cluster(_) => CLUSTER_TYPE,
            Resource::Endpoints(_) => ENDPOINT_TYPE,
            Resource::Secret(_) => SECRET_TYPE,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Listener(r) => &r.name,
            Resource::Route(r) => &r.name,
            Resource::Cluster(r) => &r.name,
            Resource::Endpoints(r) => &r.cluster_name,
            Resource::Secret(r) => &r.name,
        }
    }

    /// Decodes the protobuf encoding of a resource of `type_url`. `label` names
    /// the resource in errors when its name cannot be read (e.g. `"#3"`).
    pub fn decode(type_url: &str, bytes: &[u8], label: &str) -> Result<Resource, DecodeError> {
        let fail = |message: String| DecodeError {
            resource: ResourceRef::new(type_url, label),
            message,
        };
        let resource = match type_url {
            LISTENER_TYPE => Listener::decode(bytes).map(Resource::Listener),
            ROUTE_TYPE => RouteConfiguration::decode(bytes).map(Resource::Route),
            CLUSTER_TYPE => Cluster::decode(bytes).map(Resource::Cluster),
            ENDPOINT_TYPE => ClusterLoadAssignment::decode(bytes).map(Resource::Endpoints),
            SECRET_TYPE => Secret::decode(bytes).map(Resource::Secret),
            other => return Err(fail(format!("unsupported resource type {other:?}"))),
        }
        .map_err(|e| fail(format!("not a valid protobuf message: {e}")))?;
        if resource.name().is_empty() {
            return Err(fail("resource has no name".to_string()));
        }
        Ok(resource)
    }

    /// The resource as an `Any` (what an xDS server puts in a DiscoveryResponse).
    pub fn to_any(&self) -> envoy_types::pb::google::protobuf::Any {
        let value = match self {
            Resource::Listener(r) => r.encode_to_vec(),
            Resource::Route(r) => r.encode_to_vec(),
            Resource::Cluster(r) => r.encode_to_vec(),
            Resource::Endpoints(r) => r.encode_to_vec(),
            Resource::Secret(r) => r.encode_to_vec(),
        };
        envoy_types::pb::google::protobuf::Any {
            type_url: self.type_url().to_string(),
            value,
        }
    }

    /// Decodes an `Any` as found in a DiscoveryResponse.
    pub fn from_any(
        any: &envoy_types::pb::google::protobuf::Any,
        expected_type: &str,
        label: &str,
    ) -> Result<Resource, DecodeError> {
        if any.type_url != expected_type {
            return Err(DecodeError {
                resource: ResourceRef::new(&any.type_url, label),
                message: format!(
                    "resource of type {:?} in a response for {expected_type:?}",
                    any.type_url
                ),
            });
        }
        Resource::decode(&any.type_url, &any.value, label)
    }

    /// Decodes one resource in proto3 JSON form (as Envoy's YAML/JSON configs and
    /// config dumps write it): an object with `"@type"` and the message's fields.
    /// Field names may be `snake_case` or `lowerCamelCase`; unknown fields are errors.
    pub fn from_json(value: &Value, label: &str) -> Result<Resource, DecodeError> {
        let Some(object) = value.as_object() else {
            return Err(DecodeError {
                resource: ResourceRef::new("(unknown type)", label),
                message: "a resource must be an object with \"@type\"".to_string(),
            });
        };
        let type_url = object
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = object
            .get("name")
            .or_else(|| object.get("cluster_name"))
            .or_else(|| object.get("clusterName"))
            .and_then(Value::as_str)
            .unwrap_or(label)
            .to_string();
        let fail = |message: String| DecodeError {
            resource: ResourceRef::new(
                if type_url.is_empty() {
                    "(no @type)"
                } else {
                    &type_url
                },
                &name,
            ),
            message,
        };
        if !TYPE_URLS.contains(&type_url.as_str()) {
            return Err(fail(format!(
                "\"@type\" must be one of {}",
                TYPE_URLS.join(", ")
            )));
        }
        let message_name = type_url.trim_start_matches("type.googleapis.com/");
        let descriptor = pool()
            .get_message_by_name(message_name)
            .ok_or_else(|| fail("type missing from the descriptor pool".to_string()))?;
        let mut body = Value::Object(object.clone());
        if let Value::Object(map) = &mut body {
            map.remove("@type");
        }
        wrap_unknown_any(&mut body);
        let options = DeserializeOptions::new();
        let dynamic = DynamicMessage::deserialize_with_options(descriptor, body, &options)
            .map_err(|e| fail(format!("not valid proto3 JSON: {e}")))?;
        Resource::decode(&type_url, &dynamic.encode_to_vec(), &name).map_err(|mut e| {
            e.resource.name = name.clone();
            e
        })
    }
}

/// Istio puts its own filter configs (`istio.metadata_exchange`, `istio.stats`,
/// ...) inside listeners; their types are not in our pool. Any typed config of an
/// unknown type is kept as a `google.protobuf.Struct` so that the rest still
/// decodes; where the adapter does read a typed config, it checks the type URL,
/// so a misspelt type there is still an error naming the resource.
fn wrap_unknown_any(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(type_url)) = map.get("@type") {
                let name = type_url.rsplit('/').next().unwrap_or_default();
                if pool().get_message_by_name(name).is_none() {
                    let mut original = std::mem::take(map);
                    original.remove("@type");
                    map.insert(
                        "@type".to_string(),
                        Value::String("type.googleapis.com/google.protobuf.Struct".into()),
                    );
                    map.insert("value".to_string(), Value::Object(original));
                    return;
                }
            }
            for v in map.values_mut() {
                wrap_unknown_any(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(wrap_unknown_any),
        _ => {}
    }
}

/// One proxy's (one pod's) current resources, by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    /// SDS secrets by name (only those the clusters name for ADS).
    pub secrets: BTreeMap<String, Secret>,
    /// Accepted `version_info` per type URL (ADS), or file versions (local mode).
    pub versions: BTreeMap<String, String>,
}

impl ProxyResources {
    /// Adds or replaces one resource.
    pub fn insert(&mut self, resource: Resource) {
        match resource {
            Resource::Listener(r) => {
                self.listeners.insert(r.name.clone(), r);
            }
            Resource::Route(r) => {
                self.routes.insert(r.name.clone(), r);
            }
            Resource::Cluster(r) => {
                self.clusters.insert(r.name.clone(), r);
            }
            Resource::Endpoints(r) => {
                self.endpoints.insert(r.cluster_name.clone(), r);
            }
            Resource::Secret(r) => {
                self.secrets.insert(r.name.clone(), r);
            }
        }
    }

    /// Replaces every resource of `type_url` (state-of-the-world semantics).
    pub fn replace_type(&mut self, type_url: &str, resources: Vec<Resource>) {
        match type_url {
            LISTENER_TYPE => self.listeners.clear(),
            ROUTE_TYPE => self.routes.clear(),
            CLUSTER_TYPE => self.clusters.clear(),
            ENDPOINT_TYPE => self.endpoints.clear(),
            SECRET_TYPE => self.secrets.clear(),
            _ => {}
        }
        for r in resources {
            self.insert(r);
        }
    }

    /// Adds or replaces `updated` and removes the resources named in `removed`
    /// (incremental semantics); names not present are ignored.
    pub fn apply_delta(&mut self, type_url: &str, updated: Vec<Resource>, removed: &[String]) {
        for name in removed {
            match type_url {
                LISTENER_TYPE => {
                    self.listeners.remove(name);
                }
                ROUTE_TYPE => {
                    self.routes.remove(name);
                }
                CLUSTER_TYPE => {
                    self.clusters.remove(name);
                }
                ENDPOINT_TYPE => {
                    self.endpoints.remove(name);
                }
                SECRET_TYPE => {
                    self.secrets.remove(name);
                }
                _ => {}
            }
        }
        for r in updated {
            self.insert(r);
        }
    }
}

/// Reads the resources of one YAML or JSON document set. A document is either a
/// resource (an object with `"@type"`), or an object with a `resources` list
/// (the shape of a DiscoveryResponse and of Envoy's filesystem xDS files), or a
/// list of resources. YAML may hold several documents separated by `---`.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Resource>, DecodeError> {
    let file_error = |message: String| DecodeError {
        resource: ResourceRef::new("(file)", file),
        message,
    };
    let mut values = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| file_error(format!("not valid YAML/JSON: {e}")))?;
        if !value.is_null() {
            values.push(value);
        }
    }
    let mut out = Vec::new();
    for value in values {
        let items = match value {
            Value::Array(items) => items,
            Value::Object(ref map)
                if map.contains_key("resources") && !map.contains_key("@type") =>
            {
                match map.get("resources") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => return Err(file_error("\"resources\" must be a list".to_string())),
                }
            }
            other => vec![other],
        };
        for (i, item) in items.iter().enumerate() {
            out.push(Resource::from_json(item, &format!("{file}#{i}"))?);
        }
    }
    Ok(out)
}

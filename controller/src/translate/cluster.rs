//! CDS Cluster → NodeConfig Cluster (traffic policy only; endpoints come from EDS).

use dpumesh_api::config::{
    self as dp, ConnectionPool, LbKind, LbPolicy, LocalityLb, OutlierDetection, TlsMode,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{common_lb_config::LocalityConfigSpecifier, LbPolicy as EnvoyLb},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;

use super::util::{millis, unpack};

/// Envoy's connect timeout when a cluster sets none.
const ENVOY_DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Envoy's circuit-breaker limits when a cluster sets none.
const ENVOY_DEFAULT_LIMIT: u32 = 1024;
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `outbound|<port>|<subset>|<host>` → (port, subset, host); `None` for other names.
pub fn parse_name(name: &str) -> Option<(u16, Option<&str>, &str)> {
    let mut parts = name.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    if parts.next().is_some() || host.is_empty() {
        return None;
    }
    Some((port, (!subset.is_empty()).then_some(subset), host))
}

/// Whether the cluster takes its upstream SNI from each request's host:
/// Envoy's `auto_sni` in the `HttpProtocolOptions` extension, which istiod
/// sets for TLS origination when the DestinationRule names no `sni`.
pub fn auto_sni(c: &Cluster) -> Result<bool, String> {
    let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY) else {
        return Ok(false);
    };
    let options: HttpProtocolOptions = unpack(any)
        .map_err(|e| format!("typed_extension_protocol_options[{HTTP_OPTIONS_KEY:?}]: {e}"))?;
    Ok(options
        .upstream_http_protocol_options
        .is_some_and(|u| u.auto_sni))
}

/// The cluster's traffic policy; `service`, `port`, `subset` from its name.
/// `subsetLabels` and the consistent-hash key are filled in by the caller.
pub fn cluster(
    c: &Cluster,
    port: u16,
    subset: Option<&str>,
    host: &str,
) -> Result<dp::Cluster, String> {
    let kind = match EnvoyLb::try_from(c.lb_policy) {
        Ok(EnvoyLb::RoundRobin) => LbKind::RoundRobin,
        Ok(EnvoyLb::LeastRequest) => LbKind::LeastRequest,
        Ok(EnvoyLb::Random) => LbKind::Random,
        Ok(EnvoyLb::RingHash) | Ok(EnvoyLb::Maglev) => LbKind::ConsistentHash,
        Ok(EnvoyLb::LoadBalancingPolicyConfig) => typed_lb_policy(c)?,
        Ok(EnvoyLb::ClusterProvided) | Err(_) => {
            return Err(format!("lb_policy {} is not supported", c.lb_policy))
        }
    };
    let mut pool = ConnectionPool {
        max_connections: ENVOY_DEFAULT_LIMIT,
        max_pending_requests: ENVOY_DEFAULT_LIMIT,
        max_requests: ENVOY_DEFAULT_LIMIT,
        ..ConnectionPool::default()
    };
    if let Some(cb) = &c.circuit_breakers {
        if let Some(t) = cb
            .thresholds
            .iter()
            .find(|t| t.priority == RoutingPriority::Default as i32)
        {
            let limit = |v: Option<u32>| match v {
                None => ENVOY_DEFAULT_LIMIT,
                Some(u32::MAX) => 0, // istiod's "unlimited"
                Some(n) => n,
            };
            pool.max_connections = limit(t.max_connections.as_ref().map(|v| v.value));
            pool.max_pending_requests = limit(t.max_pending_requests.as_ref().map(|v| v.value));
            pool.max_requests = limit(t.max_requests.as_ref().map(|v| v.value));
        }
    }
    #[allow(deprecated)]
    if let Some(n) = &c.max_requests_per_connection {
        pool.max_requests_per_connection = n.value;
    }
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY) {
        let options: HttpProtocolOptions = unpack(any)
            .map_err(|e| format!("typed_extension_protocol_options[{HTTP_OPTIONS_KEY:?}]: {e}"))?;
        if let Some(common) = &options.common_http_protocol_options {
            if let Some(n) = &common.max_requests_per_connection {
                pool.max_requests_per_connection = n.value;
            }
            if let Some(d) = &common.idle_timeout {
                pool.idle_timeout_ms = millis(d);
            }
        }
    }
    let outlier_detection = c.outlier_detection.as_ref().map(|o| {
        let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
            v.as_ref().map(|v| v.value).unwrap_or(default)
        };
        // Envoy enforces consecutive 5xx by default (100 %) and gateway errors not at all.
        let five_xx = if value(&o.enforcing_consecutive_5xx, 100) > 0 {
            value(&o.consecutive_5xx, 5)
        } else {
            0
        };
        let gateway = if value(&o.enforcing_consecutive_gateway_failure, 0) > 0 {
            value(&o.consecutive_gateway_failure, 5)
        } else {
            0
        };
        OutlierDetection {
            consecutive_5xx_errors: five_xx,
            consecutive_gateway_errors: gateway,
            interval_ms: o
                .interval
                .as_ref()
                .map(millis)
                .filter(|ms| *ms > 0)
                .unwrap_or(10_000),
            base_ejection_time_ms: o
                .base_ejection_time
                .as_ref()
                .map(millis)
                .filter(|ms| *ms > 0)
                .unwrap_or(30_000),
            max_ejection_percent: value(&o.max_ejection_percent, 10).min(100),
        }
    });
    let locality_lb =
        c.common_lb_config
            .as_ref()
            .and_then(|l| match &l.locality_config_specifier {
                Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
                | Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => Some(LocalityLb {
                    enabled: true,
                    failover: Vec::new(),
                }),
                None => None,
            });
    Ok(dp::Cluster {
        name: c.name.clone(),
        service: host.to_string(),
        port,
        subset: subset.map(String::from),
        subset_labels: Default::default(),
        lb_policy: LbPolicy {
            kind,
            hash_key: None,
        },
        locality_lb,
        connect_timeout_ms: c
            .connect_timeout
            .as_ref()
            .map(millis)
            .filter(|ms| *ms > 0)
            .unwrap_or(ENVOY_DEFAULT_CONNECT_TIMEOUT_MS),
        connection_pool: pool,
        outlier_detection,
        // Set from the transport socket by `super::tls::origination`.
        tls: TlsMode::Disable,
        tls_origination: None,
    })
}

fn typed_lb_policy(c: &Cluster) -> Result<LbKind, String> {
    let type_url = c
        .load_balancing_policy
        .as_ref()
        .and_then(|p| p.policies.first())
        .and_then(|p| p.typed_extension_config.as_ref())
        .and_then(|t| t.typed_config.as_ref())
        .map(|a| a.type_url.as_str())
        .unwrap_or_default();
    let package = type_url
        .trim_start_matches("type.googleapis.com/envoy.extensions.load_balancing_policies.");
    Ok(match package.split('.').next().unwrap_or_default() {
        "round_robin" => LbKind::RoundRobin,
        "least_request" => LbKind::LeastRequest,
        "random" => LbKind::Random,
        "ring_hash" | "maglev" => LbKind::ConsistentHash,
        _ => {
            return Err(format!(
                "load_balancing_policy {type_url:?} is not supported"
            ))
        }
    })
}

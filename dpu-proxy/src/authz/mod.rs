//! Istio PeerAuthentication and AuthorizationPolicy, evaluated as pure
//! functions over one connection or request.
//!
//! Semantics follow Istio's:
//! * DENY policies are checked first and win; then, if any ALLOW policy
//!   exists, one of them must match or the request is denied. AUDIT policies
//!   only record that they matched.
//! * A rule matches when each of its parts does: some `from` source, some
//!   `to` operation, every `when` condition. An absent part matches; a policy
//!   with no rules matches nothing (so a rule-less ALLOW denies everything).
//! * Inside a source/operation every set field must match; `notX` fields
//!   exclude. String values take Istio's forms: exact, `prefix*`, `*suffix`
//!   and `*` (any value, but it must be present).
//! * On TCP, fields only HTTP has (hosts, methods, paths, `request.*` keys)
//!   make an ALLOW/AUDIT rule match nothing, and are ignored in a DENY rule,
//!   which therefore denies more — Istio's fail-closed choice.

mod gate;

pub use gate::{PolicyGate, PolicyIndex};

use std::net::IpAddr;

use dpumesh_api::config::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
    MtlsMode, PeerAuthentication,
};

/// The name a deny is counted under when ALLOW policies exist and none matched.
pub const NO_ALLOW_MATCH: &str = "(no ALLOW policy matched)";

/// HTTP attributes of a request; absent for TCP.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    pub host: &'a str,
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// What authorization sees of one connection or request.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    pub source_ip: IpAddr,
    /// Full SPIFFE ID of the authenticated peer; `None` for plaintext or
    /// when PeerAuthentication is DISABLE.
    pub source_principal: Option<&'a str>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub http: Option<HttpAttrs<'a>>,
}

impl AuthzRequest<'_> {
    fn principal(&self) -> Option<&str> {
        self.source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
    }

    fn namespace(&self) -> Option<&str> {
        let p = self.principal()?;
        let mut it = p.split('/');
        it.next()?; // trust domain
        match (it.next(), it.next()) {
            (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
            _ => None,
        }
    }
}

/// Result of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        audited_by: Vec<String>,
    },
    Deny {
        policy: String,
        audited_by: Vec<String>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// Evaluate the policies that apply to the destination workload.
pub fn authorize(policies: &[AuthorizationPolicy], req: &AuthzRequest<'_>) -> Verdict {
    let audited_by: Vec<String> = policies
        .iter()
        .filter(|p| p.action == AuthzAction::Audit && policy_matches(p, req))
        .map(|p| p.name.clone())
        .collect();
    if let Some(p) = policies
        .iter()
        .find(|p| p.action == AuthzAction::Deny && policy_matches(p, req))
    {
        return Verdict::Deny {
            policy: p.name.clone(),
            audited_by,
        };
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == AuthzAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Verdict::Allow { audited_by };
    }
    if allows.any(|p| policy_matches(p, req)) {
        Verdict::Allow { audited_by }
    } else {
        Verdict::Deny {
            policy: NO_ALLOW_MATCH.to_string(),
            audited_by,
        }
    }
}

/// The mTLS mode in force for `port` (a per-port override wins).
pub fn mtls_mode(pa: &PeerAuthentication, port: u16) -> MtlsMode {
    pa.port_modes
        .get(&port.to_string())
        .copied()
        .unwrap_or(pa.mode)
}

/// Transport check of PeerAuthentication. STRICT refuses plaintext;
/// PERMISSIVE accepts both; DISABLE accepts both but the peer identity is
/// not used (see [`effective_principal`]).
pub fn admit_transport(
    pa: &PeerAuthentication,
    port: u16,
    mutual_tls: bool,
) -> Result<(), &'static str> {
    match (mtls_mode(pa, port), mutual_tls) {
        (MtlsMode::Strict, false) => Err("plaintext refused: PeerAuthentication STRICT"),
        _ => Ok(()),
    }
}

/// The principal authorization may rely on under the port's mTLS mode.
pub fn effective_principal<'a>(
    pa: &PeerAuthentication,
    port: u16,
    principal: Option<&'a str>,
) -> Option<&'a str> {
    match mtls_mode(pa, port) {
        MtlsMode::Disable => None,
        _ => principal,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpOnlyOnTcp {
    /// ALLOW/AUDIT: the rule cannot match.
    NoMatch,
    /// DENY: the HTTP-only field is dropped from the rule.
    Ignore,
}

fn policy_matches(p: &AuthorizationPolicy, req: &AuthzRequest<'_>) -> bool {
    let mode = if p.action == AuthzAction::Deny {
        HttpOnlyOnTcp::Ignore
    } else {
        HttpOnlyOnTcp::NoMatch
    };
    p.rules.iter().any(|r| rule_matches(r, req, mode))
}

fn rule_matches(r: &AuthzRule, req: &AuthzRequest<'_>, mode: HttpOnlyOnTcp) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, req)))
        && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, req, mode)))
        && r.when.iter().all(|c| condition_matches(c, req, mode))
}

/// Istio string match: exact, `prefix*`, `*suffix`, or `*` (any, present).
fn str_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

fn str_match_ci(pattern: &str, value: &str) -> bool {
    str_match(&pattern.to_ascii_lowercase(), &value.to_ascii_lowercase())
}

fn principal_match(pattern: &str, value: &str) -> bool {
    str_match(pattern.strip_prefix("spiffe://").unwrap_or(pattern), value)
}

fn ip_match(block: &str, ip: IpAddr) -> bool {
    if let Ok(net) = block.parse::<ipnet::IpNet>() {
        return net.contains(&ip);
    }
    block.parse::<IpAddr>().is_ok_and(|b| b == ip)
}

/// `values` (if set) must match the attribute, `not_values` must not.
fn field<F: Fn(&str, &str) -> bool>(
    values: &[String],
    not_values: &[String],
    attr: Option<&str>,
    m: F,
) -> bool {
    if !values.is_empty() {
        match attr {
            Some(a) if values.iter().any(|v| m(v, a)) => {}
            _ => return false,
        }
    }
    match attr {
        Some(a) => !not_values.iter().any(|v| m(v, a)),
        None => true,
    }
}

fn source_matches(s: &AuthzSource, req: &AuthzRequest<'_>) -> bool {
    let ip = req.source_ip.to_string();
    field(
        &s.principals,
        &s.not_principals,
        req.principal(),
        principal_match,
    ) && field(&s.namespaces, &s.not_namespaces, req.namespace(), str_match)
        && field(&s.ip_blocks, &s.not_ip_blocks, Some(&ip), |b, _| {
            ip_match(b, req.source_ip)
        })
}

fn operation_matches(o: &AuthzOperation, req: &AuthzRequest<'_>, mode: HttpOnlyOnTcp) -> bool {
    if !o.ports.is_empty() && !o.ports.contains(&req.destination_port) {
        return false;
    }
    let http_only = !o.hosts.is_empty()
        || !o.methods.is_empty()
        || !o.paths.is_empty()
        || !o.not_paths.is_empty();
    match req.http {
        None if http_only => mode == HttpOnlyOnTcp::Ignore,
        None => true,
        Some(h) => {
            field(&o.hosts, &[], Some(h.host), str_match_ci)
                && field(&o.methods, &[], Some(h.method), str_match)
                && field(&o.paths, &o.not_paths, Some(h.path), str_match)
        }
    }
}

fn condition_matches(c: &AuthzCondition, req: &AuthzRequest<'_>, mode: HttpOnlyOnTcp) -> bool {
    let key = c.key.as_str();
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        let Some(h) = req.http else {
            return mode == HttpOnlyOnTcp::Ignore;
        };
        let value = h.headers.get(name).and_then(|v| v.to_str().ok());
        return field(&c.values, &c.not_values, value, str_match);
    }
    match key {
        "source.ip" | "remote.ip" => field(&c.values, &c.not_values, Some(""), |b, _| {
            ip_match(b, req.source_ip)
        }),
        "destination.ip" => field(&c.values, &c.not_values, Some(""), |b, _| {
            ip_match(b, req.destination_ip)
        }),
        "destination.port" => {
            let port = req.destination_port.to_string();
            field(&c.values, &c.not_values, Some(&port), |v, a| v == a)
        }
        "source.principal" => field(&c.values, &c.not_values, req.principal(), principal_match),
        "source.namespace" => field(&c.values, &c.not_values, req.namespace(), str_match),
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
            // No JWT authentication yet: the attribute is absent.
            if req.http.is_none() {
                return mode == HttpOnlyOnTcp::Ignore;
            }
            field(&c.values, &c.not_values, None, str_match)
        }
        // Istio refuses policies with unknown keys; fail closed the same way:
        // an ALLOW cannot match through it, a DENY always does.
        _ => mode == HttpOnlyOnTcp::Ignore,
    }
}

#[cfg(test)]
mod tests;

//! The inbound listener istiod gives each sidecar (`virtualInbound`, port
//! 15006) → `inboundPolicies[]` and `pods[].inboundPolicy`.
//!
//! istiod has already selected the PeerAuthentications and AuthorizationPolicies
//! that apply to the pod and compiled them into that listener:
//!
//! * **PeerAuthentication** shows in the filter chains: per port (chains with
//!   `filter_chain_match.destination_port`) and for every other port (the
//!   catch-all chains without one), a chain that terminates TLS with
//!   `require_client_certificate` accepts mTLS; a chain without a TLS transport
//!   socket (`raw_buffer`, or TLS passed through) accepts connections without a
//!   mesh identity. Both → PERMISSIVE, mTLS only → STRICT, plaintext only →
//!   DISABLE. The catch-all chains give `mode`; ports that differ, `portModes`.
//! * **AuthorizationPolicy** shows as RBAC filters: `envoy.filters.http.rbac` in
//!   the HTTP chains (taken when present, as they carry the whole rule), else
//!   `envoy.filters.network.rbac` in the TCP chains. Each RBAC policy is one rule
//!   of one Istio policy, named `ns[<ns>]-policy[<name>]-rule[<i>]`; `rules.action`
//!   ALLOW/DENY/LOG is the policy's ALLOW/DENY/AUDIT. A policy's `permissions` and
//!   `principals` (and/or/not trees of field matchers) are turned into rules of
//!   `from` / `to` / `when` (one rule per combination of their alternatives).
//!
//! What NodeConfig cannot express exactly is approximated on the safe side, as
//! Istio does for fields it cannot use: in a DENY policy the unexpressible
//! matcher is dropped (the rule matches more, so it denies more); in an ALLOW
//! (or AUDIT) policy the alternative that needs it is dropped (it matches less,
//! so it allows less). Each approximation is logged. Shapes that have no safe
//! reading (two enforcing ALLOW filters, chains with different RBAC) are errors.
//!
//! Identical inbound policies are stored once, named by a hash of their content,
//! and pods with identical inbound listeners are translated once.

use std::collections::BTreeMap;

use dpumesh_api::config::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
    InboundPolicy, MtlsMode, PeerAuthentication,
};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::Rule, principal::Identifier, rbac::Action, Permission, Policy, Principal,
    Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, path_matcher,
    string_matcher::MatchPattern, value_matcher, MetadataMatcher, StringMatcher,
};
use prost::Name;

use super::{error, socket, util, TranslateError};
use crate::xds::{ProxyResources, LISTENER_TYPE};

/// istiod's name for a sidecar's inbound capture listener.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// The capture port of that listener.
const INBOUND_CAPTURE_PORT: u32 = 15006;
/// Alternatives (rules) one RBAC policy may expand into before it is refused.
const MAX_ALTERNATIVES: usize = 1024;

/// The inbound policies of a node: each distinct one once, and which pod uses which.
#[derive(Debug, Default)]
pub struct Inbound {
    pub policies: Vec<InboundPolicy>,
    /// `<namespace>/<pod>` → `inboundPolicies[].name`.
    pub by_pod: BTreeMap<String, String>,
}

/// The pod's inbound capture listener, if its proxy received one.
fn inbound_listener(px: &ProxyResources) -> Option<&Listener> {
    px.listeners.get(VIRTUAL_INBOUND).or_else(|| {
        px.listeners.values().find(|l| {
            l.traffic_direction == TrafficDirection::Inbound as i32
                && socket(l.address.as_ref()).is_some_and(|(_, p)| p == INBOUND_CAPTURE_PORT)
        })
    })
}

/// Every pod's inbound policy from its proxy's inbound listener. A pod whose
/// proxy has none, or whose listener says PERMISSIVE without authorization
/// (NodeConfig's default), names no policy.
pub fn inbound_policies(
    proxies: &BTreeMap<&str, &ProxyResources>,
) -> Result<Inbound, TranslateError> {
    // Distinct listeners (by identity first, then content), each translated once.
    let mut distinct: Vec<(&Listener, Option<String>)> = Vec::new();
    let mut policies: BTreeMap<String, InboundPolicy> = BTreeMap::new();
    let mut by_pod = BTreeMap::new();
    for (&pod, &px) in proxies {
        let Some(listener) = inbound_listener(px) else {
            continue;
        };
        let known = distinct
            .iter()
            .find(|(l, _)| std::ptr::eq(*l, listener) || *l == listener);
        let name = match known {
            Some((_, name)) => name.clone(),
            None => {
                let policy = policy_of(listener, pod)
                    .map_err(|m| error(LISTENER_TYPE, &listener.name, pod, m))?;
                let name = policy.map(|mut p| {
                    let content = serde_json::to_string(&p).unwrap_or_default();
                    p.name = format!("inbound-{:016x}", util::fnv1a(content.as_bytes()));
                    let name = p.name.clone();
                    policies.entry(name.clone()).or_insert(p);
                    name
                });
                distinct.push((listener, name.clone()));
                name
            }
        };
        if let Some(name) = name {
            by_pod.insert(pod.to_string(), name);
        }
    }
    Ok(Inbound {
        policies: policies.into_values().collect(),
        by_pod,
    })
}

/// The inbound policy a listener expresses (without its name), or `None` when it
/// is NodeConfig's default.
fn policy_of(l: &Listener, pod: &str) -> Result<Option<InboundPolicy>, String> {
    let own_port = socket(l.address.as_ref()).map(|(_, p)| p);
    let mut chains: Vec<(Option<u16>, &FilterChain)> = Vec::new();
    for chain in l.filter_chains.iter() {
        let port = chain
            .filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port.as_ref())
            .map(|p| p.value);
        if port.is_some() && port == own_port {
            continue; // virtualInbound-blackhole: connections to 15006 itself
        }
        let port = port
            .map(|p| {
                u16::try_from(p).map_err(|_| {
                    format!(
                        "filter chain {:?}: destination_port {p} is not a port",
                        chain.name
                    )
                })
            })
            .transpose()?;
        chains.push((port, chain));
    }
    if let Some(chain) = &l.default_filter_chain {
        chains.push((None, chain));
    }
    let peer_authentication = peer_authentication(&chains)?;
    let authorization = authorization(&chains, pod)?;
    let policy = InboundPolicy {
        name: String::new(),
        peer_authentication,
        authorization,
    };
    let default = policy.peer_authentication == PeerAuthentication::default()
        && policy.authorization.is_empty();
    Ok((!default).then_some(policy))
}

// -- PeerAuthentication --------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Accepts {
    mtls: bool,
    plain: bool,
}

/// Whether a chain terminates mTLS (a TLS transport socket requiring a client
/// certificate) or takes connections without a mesh identity.
fn accepts(chain: &FilterChain) -> Result<Accepts, String> {
    let Some(ts) = &chain.transport_socket else {
        return Ok(Accepts {
            mtls: false,
            plain: true,
        });
    };
    let tls = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any))
            if any.type_url == DownstreamTlsContext::type_url() =>
        {
            let ctx: DownstreamTlsContext = util::unpack(any)
                .map_err(|m| format!("filter chain {:?}: transport_socket: {m}", chain.name))?;
            Some(ctx)
        }
        _ => None,
    };
    match tls {
        Some(ctx) if ctx.require_client_certificate.is_some_and(|b| b.value) => Ok(Accepts {
            mtls: true,
            plain: false,
        }),
        // TLS without a client certificate authenticates nobody.
        Some(_) => Ok(Accepts {
            mtls: false,
            plain: true,
        }),
        None if ts.name == "envoy.transport_sockets.raw_buffer" => Ok(Accepts {
            mtls: false,
            plain: true,
        }),
        None => Err(format!(
            "filter chain {:?}: transport socket {:?} is neither TLS (DownstreamTlsContext) nor raw_buffer",
            chain.name, ts.name
        )),
    }
}

fn mode_of(a: Accepts) -> MtlsMode {
    match (a.mtls, a.plain) {
        (true, true) => MtlsMode::Permissive,
        (false, true) => MtlsMode::Disable,
        // mTLS only; or no chain at all, where Envoy refuses every connection:
        // STRICT is the closest NodeConfig has.
        _ => MtlsMode::Strict,
    }
}

fn peer_authentication(
    chains: &[(Option<u16>, &FilterChain)],
) -> Result<PeerAuthentication, String> {
    let mut ports: BTreeMap<Option<u16>, Accepts> = BTreeMap::new();
    for (port, chain) in chains {
        let a = accepts(chain)?;
        let e = ports.entry(*port).or_default();
        e.mtls |= a.mtls;
        e.plain |= a.plain;
    }
    let mode = mode_of(ports.get(&None).copied().unwrap_or_default());
    let port_modes = ports
        .iter()
        .filter_map(|(port, a)| Some((port.as_ref()?, mode_of(*a))))
        .filter(|(_, m)| *m != mode)
        .map(|(p, m)| (p.to_string(), m))
        .collect();
    Ok(PeerAuthentication { mode, port_modes })
}

// -- AuthorizationPolicy -----------------------------------------------------------

/// The RBAC filters of one chain, in filter order.
#[derive(PartialEq)]
enum RbacFilter {
    Http(HttpRbac),
    Network(NetworkRbac),
}

impl RbacFilter {
    fn parts(&self) -> (Option<&RbacRules>, bool, Option<&RbacRules>, &str) {
        match self {
            RbacFilter::Http(f) => (
                f.rules.as_ref(),
                f.matcher.is_some() || f.shadow_matcher.is_some(),
                f.shadow_rules.as_ref(),
                &f.shadow_rules_stat_prefix,
            ),
            RbacFilter::Network(f) => (
                f.rules.as_ref(),
                f.matcher.is_some() || f.shadow_matcher.is_some(),
                f.shadow_rules.as_ref(),
                &f.shadow_rules_stat_prefix,
            ),
        }
    }
}

fn chain_rbac(chain: &FilterChain) -> Result<(Vec<RbacFilter>, Vec<RbacFilter>), String> {
    let mut http = Vec::new();
    let mut network = Vec::new();
    let at = |m: String| format!("filter chain {:?}: {m}", chain.name);
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url == NetworkRbac::type_url() {
            network.push(RbacFilter::Network(util::unpack(any).map_err(at)?));
        } else if any.type_url == HttpConnectionManager::type_url() {
            let hcm: HttpConnectionManager = util::unpack(any).map_err(at)?;
            for hf in &hcm.http_filters {
                match &hf.config_type {
                    Some(http_filter::ConfigType::TypedConfig(any))
                        if any.type_url == HttpRbac::type_url() && !hf.disabled =>
                    {
                        http.push(RbacFilter::Http(util::unpack(any).map_err(at)?));
                    }
                    Some(http_filter::ConfigType::ConfigDiscovery(_))
                        if hf.name.contains("rbac") =>
                    {
                        return Err(at(format!(
                            "http filter {:?} comes from ECDS, which the adapter does not read",
                            hf.name
                        )));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok((http, network))
}

/// The RBAC filters every chain that has some agrees on: the HTTP filters when
/// any chain has them, else the network filters.
fn authorization(
    chains: &[(Option<u16>, &FilterChain)],
    pod: &str,
) -> Result<Vec<AuthorizationPolicy>, String> {
    let mut http: Option<(Vec<RbacFilter>, &str)> = None;
    let mut network: Option<(Vec<RbacFilter>, &str)> = None;
    for (_, chain) in chains {
        let (h, n) = chain_rbac(chain)?;
        for (found, slot) in [(h, &mut http), (n, &mut network)] {
            if found.is_empty() {
                continue;
            }
            match slot {
                None => *slot = Some((found, &chain.name)),
                Some((first, name)) if *first != found => {
                    return Err(format!(
                        "filter chains {name:?} and {:?} carry different RBAC filters; dpumesh applies one policy set per pod",
                        chain.name
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let Some((filters, _)) = http.or(network) else {
        return Ok(Vec::new());
    };
    policies_of(&filters, pod)
}

fn policies_of(filters: &[RbacFilter], pod: &str) -> Result<Vec<AuthorizationPolicy>, String> {
    let mut out: BTreeMap<String, (AuthzAction, BTreeMap<u32, Vec<AuthzRule>>)> = BTreeMap::new();
    let mut enforcing_allow = 0;
    for f in filters {
        let (rules, has_matcher, shadow, shadow_prefix) = f.parts();
        if has_matcher {
            return Err(
                "RBAC with the matcher API (matcher / shadow_matcher) is not supported".into(),
            );
        }
        if let Some(rules) = rules {
            let action = match Action::try_from(rules.action) {
                Ok(Action::Allow) => {
                    enforcing_allow += 1;
                    AuthzAction::Allow
                }
                Ok(Action::Deny) => AuthzAction::Deny,
                Ok(Action::Log) => AuthzAction::Audit,
                Err(_) => return Err(format!("RBAC action {} is unknown", rules.action)),
            };
            if enforcing_allow > 1 {
                // Envoy requires every ALLOW filter to match; NodeConfig's ALLOW
                // policies are alternatives.
                return Err("more than one enforcing ALLOW RBAC filter".into());
            }
            add_policies(&mut out, rules, action, "", pod)?;
            if action == AuthzAction::Allow && rules.policies.is_empty() {
                // An ALLOW filter without policies denies everything.
                out.entry("envoy/allow-nothing".into())
                    .or_insert((AuthzAction::Allow, BTreeMap::new()));
            }
        }
        // CUSTOM (ext_authz): the shadow rules select the requests the external
        // authorizer must check. dpumesh has no external authorizer, so those
        // requests are denied (safe side). Other shadow rules are dry-run
        // policies, which never change a decision: not mapped.
        if let Some(shadow) = shadow {
            if shadow_prefix.starts_with("istio_ext_authz") {
                add_policies(&mut out, shadow, AuthzAction::Deny, "istio-ext-authz-", pod)?;
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(name, (action, rules))| AuthorizationPolicy {
            name,
            action,
            rules: rules.into_values().flatten().collect(),
        })
        .collect())
}

/// `ns[<ns>]-policy[<name>]-rule[<i>]` → (`<ns>/<name>`, i).
fn istio_policy_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("ns[")?;
    let (ns, rest) = rest.split_once("]-policy[")?;
    let (policy, rest) = rest.rsplit_once("]-rule[")?;
    let i = rest.strip_suffix(']')?.parse().ok()?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(ns) && ok(policy)).then(|| (format!("{ns}/{policy}"), i))
}

fn add_policies(
    out: &mut BTreeMap<String, (AuthzAction, BTreeMap<u32, Vec<AuthzRule>>)>,
    rules: &RbacRules,
    action: AuthzAction,
    strip: &str,
    pod: &str,
) -> Result<(), String> {
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    for key in names {
        let policy = &rules.policies[key];
        let bare = key.strip_prefix(strip).unwrap_or(key);
        let (name, index) = istio_policy_name(bare)
            .unwrap_or_else(|| (format!("envoy/{}", bare.replace('/', "_")), 0));
        let mut notes = Vec::new();
        let converted = policy_rules(policy, action, &mut notes)
            .map_err(|m| format!("RBAC policy {key:?}: {m}"))?;
        for note in &notes {
            tracing::warn!(%pod, policy = %key, ?action, "{note}");
        }
        let entry = out
            .entry(name.clone())
            .or_insert_with(|| (action, BTreeMap::new()));
        if entry.0 != action {
            return Err(format!(
                "RBAC policies of {name:?} appear with actions {:?} and {action:?}",
                entry.0
            ));
        }
        entry.1.entry(index).or_default().extend(converted);
    }
    Ok(())
}

// -- one RBAC policy → rules ----------------------------------------------------

/// The attribute an atom tests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Principal,
    Namespace,
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Host,
    Method,
    Path,
    Header(String),
    Sni,
    /// `request.auth.principal`, `request.auth.claims[iss]`, ...
    RequestAuth(String),
}

/// `key` matches one of `values` (Istio's string forms), or with `negated` none.
#[derive(Debug, Clone, PartialEq)]
struct Atom {
    key: Key,
    values: Vec<String>,
    negated: bool,
}

/// Disjunctive normal form: any conjunction; an empty conjunction is true, no
/// conjunctions false.
type Dnf = Vec<Vec<Atom>>;

fn always() -> Dnf {
    vec![Vec::new()]
}

/// Direction of approximation: `over` = the result may match more than the
/// RBAC (DENY), else less (ALLOW, AUDIT).
struct Approx<'n> {
    over: bool,
    notes: &'n mut Vec<String>,
}

impl Approx<'_> {
    /// An unexpressible matcher (under `negated` NOTs): the whole of it becomes
    /// true (over) or false (under).
    fn unsupported(&mut self, what: String) -> Dnf {
        let side = if self.over {
            "dropped from the DENY rule (it denies more)"
        } else {
            "the rule alternative using it never matches (it allows less)"
        };
        self.notes.push(format!("{what}: not expressible; {side}"));
        if self.over {
            always()
        } else {
            Vec::new()
        }
    }
}

fn atom(key: Key, value: String, negated: bool) -> Dnf {
    vec![vec![Atom {
        key,
        values: vec![value],
        negated,
    }]]
}

fn product(a: Dnf, b: Dnf) -> Result<Dnf, String> {
    if a.len().saturating_mul(b.len()) > MAX_ALTERNATIVES {
        return Err(format!(
            "expands into more than {MAX_ALTERNATIVES} alternatives"
        ));
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            out.push(x.iter().chain(y).cloned().collect());
        }
    }
    Ok(out)
}

fn union(mut a: Dnf, b: Dnf) -> Result<Dnf, String> {
    a.extend(b);
    if a.len() > MAX_ALTERNATIVES {
        return Err(format!(
            "expands into more than {MAX_ALTERNATIVES} alternatives"
        ));
    }
    Ok(a)
}

/// An OR of one-atom alternatives on one attribute is one atom with all the
/// values (istiod's `or_rules` over the values of one field); an alternative
/// that is always true makes the whole OR true.
fn merge_or(d: Dnf) -> Dnf {
    let mut out: Dnf = Vec::new();
    for conj in d {
        if conj.is_empty() {
            return always();
        }
        if let [a] = conj.as_slice() {
            if !a.negated {
                let same = out
                    .iter_mut()
                    .find(|c| matches!(c.as_slice(), [p] if !p.negated && p.key == a.key));
                if let Some(prev) = same {
                    for v in &a.values {
                        if !prev[0].values.contains(v) {
                            prev[0].values.push(v.clone());
                        }
                    }
                    continue;
                }
            }
        }
        out.push(conj);
    }
    out
}

/// AND (`all`) or OR of sub-expressions, with the negation pushed inside
/// (De Morgan: NOT of an AND is an OR of NOTs).
fn combine<T>(
    items: &[T],
    all: bool,
    negated: bool,
    mut each: impl FnMut(&T) -> Result<Dnf, String>,
) -> Result<Dnf, String> {
    let conjunction = all != negated;
    let mut acc = if conjunction { always() } else { Vec::new() };
    for item in items {
        let d = each(item)?;
        acc = if conjunction {
            product(acc, d)?
        } else {
            merge_or(union(acc, d)?)
        };
    }
    Ok(acc)
}

fn permission(p: &Permission, negated: bool, ap: &mut Approx<'_>) -> Result<Dnf, String> {
    #[allow(deprecated)]
    let rule = match &p.rule {
        Some(r) => r,
        None => return Ok(ap.unsupported("an empty permission".into())),
    };
    #[allow(deprecated)]
    Ok(match rule {
        Rule::AndRules(set) => combine(&set.rules, true, negated, |r| permission(r, negated, ap))?,
        Rule::OrRules(set) => combine(&set.rules, false, negated, |r| permission(r, negated, ap))?,
        Rule::Any(true) => {
            if negated {
                Vec::new()
            } else {
                always()
            }
        }
        Rule::NotRule(inner) => permission(inner, !negated, ap)?,
        Rule::Header(h) => header(h, negated, ap),
        Rule::UrlPath(pm) => match &pm.rule {
            Some(path_matcher::Rule::Path(sm)) if !sm.ignore_case => match pattern(sm) {
                Some(v) => atom(Key::Path, v, negated),
                None => ap.unsupported(format!("url_path {sm:?}")),
            },
            _ => ap.unsupported(format!("url_path {pm:?}")),
        },
        Rule::DestinationIp(c) => match cidr(c) {
            Some(v) => atom(Key::DestinationIp, v, negated),
            None => ap.unsupported(format!("destination_ip {c:?}")),
        },
        Rule::DestinationPort(port) => match u16::try_from(*port) {
            Ok(p) if p != 0 => atom(Key::DestinationPort, p.to_string(), negated),
            _ => ap.unsupported(format!("destination_port {port}")),
        },
        Rule::RequestedServerName(sm) if !sm.ignore_case => match pattern(sm) {
            Some(v) => atom(Key::Sni, v, negated),
            None => ap.unsupported(format!("requested_server_name {sm:?}")),
        },
        Rule::Metadata(m) => metadata(m, negated, ap),
        other => ap.unsupported(format!("permission {}", variant_name(other))),
    })
}

fn principal(p: &Principal, negated: bool, ap: &mut Approx<'_>) -> Result<Dnf, String> {
    let Some(id) = &p.identifier else {
        return Ok(ap.unsupported("an empty principal".into()));
    };
    #[allow(deprecated)]
    Ok(match id {
        Identifier::AndIds(set) => combine(&set.ids, true, negated, |i| principal(i, negated, ap))?,
        Identifier::OrIds(set) => combine(&set.ids, false, negated, |i| principal(i, negated, ap))?,
        Identifier::Any(true) => {
            if negated {
                Vec::new()
            } else {
                always()
            }
        }
        Identifier::NotId(inner) => principal(inner, !negated, ap)?,
        Identifier::Authenticated(a) => match &a.principal_name {
            None => atom(Key::Principal, "*".into(), negated),
            Some(sm) => peer_principal(sm, negated, ap),
        },
        Identifier::FilterState(fs) if fs.key == "io.istio.peer_principal" => match &fs.matcher {
            Some(
                envoy_types::pb::envoy::r#type::matcher::v3::filter_state_matcher::Matcher::StringMatch(sm),
            ) => peer_principal(sm, negated, ap),
            _ => ap.unsupported(format!("filter_state {fs:?}")),
        },
        Identifier::DirectRemoteIp(c) | Identifier::SourceIp(c) => match cidr(c) {
            Some(v) => atom(Key::SourceIp, v, negated),
            None => ap.unsupported(format!("direct_remote_ip {c:?}")),
        },
        Identifier::RemoteIp(c) => match cidr(c) {
            Some(v) => atom(Key::RemoteIp, v, negated),
            None => ap.unsupported(format!("remote_ip {c:?}")),
        },
        Identifier::Header(h) => header(h, negated, ap),
        Identifier::UrlPath(pm) => match &pm.rule {
            Some(path_matcher::Rule::Path(sm)) if !sm.ignore_case => match pattern(sm) {
                Some(v) => atom(Key::Path, v, negated),
                None => ap.unsupported(format!("url_path {sm:?}")),
            },
            _ => ap.unsupported(format!("url_path {pm:?}")),
        },
        Identifier::Metadata(m) => metadata(m, negated, ap),
        other => ap.unsupported(format!("principal {}", id_variant_name(other))),
    })
}

fn variant_name(r: &Rule) -> String {
    let s = format!("{r:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

fn id_variant_name(r: &Identifier) -> String {
    let s = format!("{r:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

/// An Envoy string matcher as an Istio value (`v`, `v*`, `*v`, `*`), when that
/// form means exactly the same.
fn pattern(sm: &StringMatcher) -> Option<String> {
    let wild = |s: &str| s.starts_with('*') || s.ends_with('*');
    match sm.match_pattern.as_ref()? {
        MatchPattern::Exact(s) if !s.is_empty() && !wild(s) => Some(s.clone()),
        MatchPattern::Prefix(s) if !s.starts_with('*') => Some(format!("{s}*")),
        MatchPattern::Suffix(s) if !s.ends_with('*') => Some(format!("*{s}")),
        MatchPattern::SafeRegex(r) if r.regex == ".+" || r.regex == ".*" => Some("*".into()),
        _ => None,
    }
}

/// A regex that is a literal (metacharacters escaped with `\`), unescaped.
fn regex_literal(re: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                if next.is_ascii_alphanumeric() {
                    return None; // \d, \w, ... are classes, not literals
                }
                out.push(next);
            }
            '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '{' | '}' | '|' | '^' | '$' => {
                return None
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// A regex `[.*]literal[.*]` as an Istio value.
fn regex_value(re: &str) -> Option<String> {
    if re == ".*" || re == ".+" {
        return Some("*".into());
    }
    let (lead, rest) = match re.strip_prefix(".*") {
        Some(r) => (true, r),
        None => (false, re),
    };
    let (trail, core) = match rest.strip_suffix(".*") {
        Some(r) if !r.ends_with('\\') => (true, r),
        _ => (false, rest),
    };
    if lead && trail {
        return None; // "contains" has no Istio form
    }
    let lit = regex_literal(core)?;
    if lit.is_empty() || lit.starts_with('*') || lit.ends_with('*') {
        return None;
    }
    Some(match (lead, trail) {
        (true, _) => format!("*{lit}"),
        (_, true) => format!("{lit}*"),
        _ => lit,
    })
}

/// The peer's SPIFFE ID matcher istiod generates for `principals` (exact /
/// prefix `spiffe://…`, `spiffe://.*<suffix>`, `.+`) and `namespaces`
/// (`.*/ns/<ns>/.*`).
fn peer_principal(sm: &StringMatcher, negated: bool, ap: &mut Approx<'_>) -> Dnf {
    const SPIFFE: &str = "spiffe://";
    let wild = |s: &str| s.starts_with('*') || s.ends_with('*');
    if sm.ignore_case {
        return ap.unsupported(format!("principal matcher {sm:?} (ignore_case)"));
    }
    let value = match &sm.match_pattern {
        Some(MatchPattern::Exact(s)) => s
            .strip_prefix(SPIFFE)
            .filter(|v| !v.is_empty() && !wild(v))
            .map(|v| (Key::Principal, v.to_string())),
        Some(MatchPattern::Prefix(s)) => s
            .strip_prefix(SPIFFE)
            .filter(|v| !v.starts_with('*'))
            .map(|v| (Key::Principal, format!("{v}*"))),
        Some(MatchPattern::SafeRegex(r)) => {
            let re = r.regex.as_str();
            if re == ".+" {
                Some((Key::Principal, "*".into()))
            } else if let Some(suffix) = re.strip_prefix("spiffe://.*") {
                regex_literal(suffix)
                    .filter(|s| !s.is_empty() && !wild(s))
                    .map(|s| (Key::Principal, format!("*{s}")))
            } else if let Some(ns) = re
                .strip_prefix(".*/ns/")
                .and_then(|r| r.strip_suffix("/.*"))
            {
                namespace_value(ns).map(|v| (Key::Namespace, v))
            } else {
                None
            }
        }
        _ => None,
    };
    match value {
        Some((key, v)) => atom(key, v, negated),
        None => ap.unsupported(format!("principal matcher {sm:?}")),
    }
}

/// istiod writes a namespace `a*b` as the regex `a.*b` (names are DNS labels).
fn namespace_value(re: &str) -> Option<String> {
    let v = re.replace(".*", "*");
    let label = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let ok = match v.as_str() {
        "*" => true,
        s => {
            let core = s.strip_prefix('*').unwrap_or(s);
            let core = core.strip_suffix('*').unwrap_or(core);
            !core.is_empty() && label(core) && !(s.starts_with('*') && s.ends_with('*'))
        }
    };
    ok.then_some(v)
}

fn cidr(c: &CidrRange) -> Option<String> {
    let ip: std::net::IpAddr = c.address_prefix.parse().ok()?;
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    let full = if ip.is_ipv4() { 32 } else { 128 };
    if len > full {
        return None;
    }
    Some(if len == full {
        ip.to_string()
    } else {
        format!("{ip}/{len}")
    })
}

/// istiod's header value regex `^v$|^v,.*|.*,v,.*|.*,v$` (any of the
/// comma-separated values is `v`), `v` being `[.*]literal[.*]`.
fn header_list_regex(re: &str) -> Option<String> {
    let first = re.split('|').next()?;
    let v = first.strip_prefix('^')?.strip_suffix('$')?;
    if re != format!("^{v}$|^{v},.*|.*,{v},.*|.*,{v}$") {
        return None;
    }
    regex_value(v)
}

fn header(h: &HeaderMatcher, negated: bool, ap: &mut Approx<'_>) -> Dnf {
    let name = h.name.to_ascii_lowercase();
    let key = match name.as_str() {
        ":method" => Key::Method,
        ":authority" | "host" => Key::Host,
        n if n.starts_with(':') => {
            return ap.unsupported(format!("header {n:?}"));
        }
        n => Key::Header(n.to_string()),
    };
    let host = key == Key::Host;
    #[allow(deprecated)]
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::PresentMatch(present)) => {
            // Presence, inverted when `present == invert_match`.
            let negate = *present == h.invert_match;
            return atom(key, "*".into(), negated != negate);
        }
        _ if h.invert_match || h.treat_missing_header_as_empty => None,
        Some(HeaderMatchSpecifier::ExactMatch(s)) if !host => pattern(&StringMatcher {
            match_pattern: Some(MatchPattern::Exact(s.clone())),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) if !host => pattern(&StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(s.clone())),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) if !host => pattern(&StringMatcher {
            match_pattern: Some(MatchPattern::Suffix(s.clone())),
            ignore_case: false,
        }),
        // dpu-proxy compares hosts case-insensitively, as istiod asks Envoy to.
        Some(HeaderMatchSpecifier::StringMatch(sm)) if sm.ignore_case == host => pattern(sm),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) if !host => header_list_regex(&r.regex),
        _ => None,
    };
    match value {
        Some(v) => atom(key, v, negated),
        None => ap.unsupported(format!("header matcher {h:?}")),
    }
}

/// istiod's JWT attributes: metadata of filter `istio_authn`.
fn metadata(m: &MetadataMatcher, negated: bool, ap: &mut Approx<'_>) -> Dnf {
    let keys: Vec<&str> = m
        .path
        .iter()
        .filter_map(|s| s.segment.as_ref())
        .map(|Segment::Key(k)| k.as_str())
        .collect();
    let key = match keys.as_slice() {
        [k @ ("request.auth.principal" | "request.auth.audiences" | "request.auth.presenter")] => {
            Some(k.to_string())
        }
        ["request.auth.claims", claim] => Some(format!("request.auth.claims[{claim}]")),
        _ => None,
    };
    let value = m.value.as_ref().and_then(|v| match &v.match_pattern {
        Some(value_matcher::MatchPattern::StringMatch(sm)) if !sm.ignore_case => pattern(sm),
        Some(value_matcher::MatchPattern::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(one)) => match &one.match_pattern {
                Some(value_matcher::MatchPattern::StringMatch(sm)) if !sm.ignore_case => {
                    pattern(sm)
                }
                _ => None,
            },
            None => None,
        },
        _ => None,
    });
    match (m.filter.as_str(), key, value, m.invert) {
        ("istio_authn", Some(k), Some(v), invert) => {
            atom(Key::RequestAuth(k), v, negated != invert)
        }
        _ => ap.unsupported(format!("metadata matcher {m:?}")),
    }
}

/// One RBAC policy (one Istio rule) → the NodeConfig rules that together match
/// what it matches (or, where inexpressible, the safe side of it).
fn policy_rules(
    policy: &Policy,
    action: AuthzAction,
    notes: &mut Vec<String>,
) -> Result<Vec<AuthzRule>, String> {
    let mut ap = Approx {
        over: action == AuthzAction::Deny,
        notes,
    };
    let mut permissions = Vec::new();
    for p in &policy.permissions {
        permissions = merge_or(union(permissions, permission(p, false, &mut ap)?)?);
    }
    let mut principals = Vec::new();
    for p in &policy.principals {
        principals = merge_or(union(principals, principal(p, false, &mut ap)?)?);
    }
    let conditional = policy.condition.is_some() || policy.checked_condition.is_some();
    if !conditional {
        if let Some(rule) = structured_rule(&permissions, &principals) {
            return Ok(vec![rule]);
        }
    }
    let mut dnf = product(permissions, principals)?;
    if conditional {
        dnf = product(dnf, ap.unsupported("a CEL condition".into()))?;
    }
    let mut rules: Vec<AuthzRule> = Vec::new();
    for conj in dnf {
        if let Some(rule) = rule_of(conj, &mut ap) {
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    Ok(rules)
}

/// istiod's shape: every permission alternative is one operation and every
/// principal alternative one source, so the policy is one rule
/// `{from: [sources], to: [operations]}` (any source and any operation).
fn structured_rule(permissions: &Dnf, principals: &Dnf) -> Option<AuthzRule> {
    let mut quiet = Vec::new();
    let mut ap = Approx {
        over: false,
        notes: &mut quiet,
    };
    let mut to = Vec::new();
    let mut any_op = false;
    for conj in permissions {
        let r = rule_of(conj.clone(), &mut ap)?;
        match (r.from.is_empty(), r.when.is_empty(), r.to.as_slice()) {
            (true, true, []) => any_op = true,
            (true, true, [op]) => to.push(op.clone()),
            _ => return None,
        }
    }
    let mut from = Vec::new();
    let mut any_source = false;
    for conj in principals {
        let r = rule_of(conj.clone(), &mut ap)?;
        match (r.to.is_empty(), r.when.is_empty(), r.from.as_slice()) {
            (true, true, []) => any_source = true,
            (true, true, [src]) => from.push(src.clone()),
            _ => return None,
        }
    }
    if !quiet.is_empty() || permissions.is_empty() || principals.is_empty() {
        return None;
    }
    Some(AuthzRule {
        from: if any_source { Vec::new() } else { from },
        to: if any_op { Vec::new() } else { to },
        when: Vec::new(),
    })
}

/// One conjunction → one rule: each atom into its `from`/`to` field, else a
/// `when` condition; `None` when the conjunction is dropped (ALLOW side).
fn rule_of(conj: Vec<Atom>, ap: &mut Approx<'_>) -> Option<AuthzRule> {
    // NOT a AND NOT b = NOT (a OR b): negated atoms of one key merge.
    let mut atoms: Vec<Atom> = Vec::new();
    for a in conj {
        if atoms.contains(&a) {
            continue;
        }
        if a.negated {
            if let Some(prev) = atoms.iter_mut().find(|p| p.negated && p.key == a.key) {
                prev.values.extend(a.values);
                continue;
            }
        }
        atoms.push(a);
    }
    let mut src = AuthzSource::default();
    let mut op = AuthzOperation::default();
    let mut when: Vec<AuthzCondition> = Vec::new();
    for a in atoms {
        let slot: Option<&mut Vec<String>> = match (&a.key, a.negated) {
            (Key::Principal, false) => Some(&mut src.principals),
            (Key::Principal, true) => Some(&mut src.not_principals),
            (Key::Namespace, false) => Some(&mut src.namespaces),
            (Key::Namespace, true) => Some(&mut src.not_namespaces),
            (Key::SourceIp, false) => Some(&mut src.ip_blocks),
            (Key::SourceIp, true) => Some(&mut src.not_ip_blocks),
            (Key::Host, false) => Some(&mut op.hosts),
            (Key::Method, false) => Some(&mut op.methods),
            (Key::Path, false) => Some(&mut op.paths),
            (Key::Path, true) => Some(&mut op.not_paths),
            _ => None,
        };
        if let Some(slot) = slot.filter(|s| s.is_empty()) {
            *slot = a.values;
            continue;
        }
        if a.key == Key::DestinationPort && !a.negated && op.ports.is_empty() {
            op.ports = a.values.iter().filter_map(|v| v.parse().ok()).collect();
            continue;
        }
        let key = match &a.key {
            Key::Principal => "source.principal".to_string(),
            Key::Namespace => "source.namespace".into(),
            Key::SourceIp => "source.ip".into(),
            Key::RemoteIp => "remote.ip".into(),
            Key::DestinationIp => "destination.ip".into(),
            Key::DestinationPort => "destination.port".into(),
            Key::Sni => "connection.sni".into(),
            Key::Header(n) => format!("request.headers[{n}]"),
            Key::RequestAuth(k) => k.clone(),
            Key::Host | Key::Method | Key::Path => {
                // No `when` key for these: a second or negated host/method.
                let what = format!(
                    "{}{:?} {:?}",
                    if a.negated { "not " } else { "" },
                    a.key,
                    a.values
                );
                let dropped = ap.unsupported(what);
                if dropped.is_empty() {
                    return None; // ALLOW side: this alternative never matches
                }
                continue; // DENY side: the matcher is left out
            }
        };
        let (values, not_values) = if a.negated {
            (Vec::new(), a.values)
        } else {
            (a.values, Vec::new())
        };
        when.push(AuthzCondition {
            key,
            values,
            not_values,
        });
    }
    let from = if src == AuthzSource::default() {
        Vec::new()
    } else {
        vec![src]
    };
    let to = if op == AuthzOperation::default() {
        Vec::new()
    } else {
        vec![op]
    };
    Some(AuthzRule { from, to, when })
}

#[cfg(test)]
mod tests;

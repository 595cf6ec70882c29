//! RDS RouteConfiguration → NodeConfig RouteTable.

use std::collections::BTreeMap;

use dpumesh_api::config::{
    self as dp, DirectResponse, Fault, FaultAbort, FaultDelay, ForwardAction, HashKey, HeaderOps,
    KeyMatch, Mirror, Redirect, Rewrite, RouteAction, RouteMatch, RouteTable, StringMatch,
    VirtualHost, WeightedDestination, RETRY_ON_CONDITIONS,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    self as rt,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::hash_policy::PolicySpecifier,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
    RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::ErrorType, HttpFault,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::util::{millis, percent, unpack};

/// Envoy's route timeout when a route sets none.
pub const ENVOY_DEFAULT_ROUTE_TIMEOUT_MS: u64 = 15_000;
/// Envoy's retries when a retry policy does not set `num_retries`.
const ENVOY_DEFAULT_NUM_RETRIES: u32 = 1;
/// The name under which istiod configures the fault filter per route.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Clusters that are not services: traffic to them is not mesh-routed.
pub const PASSTHROUGH_CLUSTERS: &[&str] = &[
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// What a route table translation learns besides the table.
#[derive(Debug, Default)]
pub struct RouteFacts {
    /// Hash keys the routes ask of their destination clusters (ring hash / maglev).
    pub hash_keys: BTreeMap<String, HashKey>,
    /// Every cluster the table references.
    pub clusters: Vec<String>,
}

/// Translates one RouteConfiguration. Errors are messages; the caller names the resource.
pub fn route_table(rc: &RouteConfiguration, facts: &mut RouteFacts) -> Result<RouteTable, String> {
    let mut virtual_hosts = Vec::new();
    for vh in &rc.virtual_hosts {
        let mut routes = Vec::new();
        for (i, r) in vh.routes.iter().enumerate() {
            let label = if r.name.is_empty() {
                format!("#{i}")
            } else {
                format!("{:?}", r.name)
            };
            if let Some(route) = route(r, vh, facts)
                .map_err(|e| format!("virtual host {:?}, route {label}: {e}", vh.name))?
            {
                routes.push(route);
            }
        }
        // A host whose every route passes traffic through (istiod's "allow_any")
        // is left out: unmatched traffic is not mesh-routed (docs/adapter.md).
        if !routes.is_empty() {
            virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                routes,
            });
        }
    }
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
    })
}

fn route(
    r: &rt::Route,
    vh: &rt::VirtualHost,
    facts: &mut RouteFacts,
) -> Result<Option<dp::Route>, String> {
    let matches = match &r.r#match {
        Some(m) => route_match(m)?,
        None => Vec::new(),
    };
    let mut headers = header_ops(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
    )?;
    // Virtual-host header changes apply to every route; the route's own win.
    let vh_ops = header_ops(
        &vh.request_headers_to_add,
        &vh.request_headers_to_remove,
        &vh.response_headers_to_add,
        &vh.response_headers_to_remove,
    )?;
    merge_ops(&mut headers, vh_ops);
    let fault = match r.typed_per_filter_config.get(FAULT_FILTER) {
        Some(any) => {
            fault(any).map_err(|e| format!("typed_per_filter_config[{FAULT_FILTER:?}]: {e}"))?
        }
        None => None,
    };
    let mut out = dp::Route {
        name: r.name.clone(),
        matches,
        action: RouteAction::DirectResponse(DirectResponse {
            status: 404,
            body: String::new(),
        }),
        headers,
        timeout_ms: None,
        retries: None,
        fault,
        mirror: None,
        rate_limit: None,
    };
    match &r.action {
        Some(Action::Route(action)) => {
            let mut destinations = Vec::new();
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => {
                    if PASSTHROUGH_CLUSTERS.contains(&name.as_str()) {
                        return Ok(None);
                    }
                    if name == BLACKHOLE_CLUSTER {
                        out.action = blackhole();
                        return Ok(Some(out));
                    }
                    destinations.push(WeightedDestination {
                        cluster: name.clone(),
                        weight: 1,
                        headers: HeaderOps::default(),
                    });
                }
                Some(ClusterSpecifier::WeightedClusters(wc)) => {
                    for c in &wc.clusters {
                        if c.name.is_empty() {
                            return Err(
                                "weighted cluster without a name (cluster_header is not supported)"
                                    .into(),
                            );
                        }
                        if PASSTHROUGH_CLUSTERS.contains(&c.name.as_str())
                            || c.name == BLACKHOLE_CLUSTER
                        {
                            return Err(format!(
                                "weighted cluster {:?} is not a service cluster",
                                c.name
                            ));
                        }
                        destinations.push(WeightedDestination {
                            cluster: c.name.clone(),
                            weight: c.weight.as_ref().map(|w| w.value).unwrap_or(0),
                            headers: header_ops(
                                &c.request_headers_to_add,
                                &c.request_headers_to_remove,
                                &c.response_headers_to_add,
                                &c.response_headers_to_remove,
                            )?,
                        });
                    }
                }
                Some(ClusterSpecifier::ClusterHeader(_)) => {
                    return Err("cluster_header is not supported".into())
                }
                Some(_) => return Err("cluster specifier plugins are not supported".into()),
                None => return Err("route action without a cluster".into()),
            }
            let mut rewrite = Rewrite::default();
            if !action.prefix_rewrite.is_empty() {
                rewrite.uri = Some(action.prefix_rewrite.clone());
            }
            if let Some(rr) = &action.regex_rewrite {
                // istiod writes a whole-path replacement for non-prefix matches.
                let pattern = rr
                    .pattern
                    .as_ref()
                    .map(|p| p.regex.as_str())
                    .unwrap_or_default();
                if !matches!(pattern, "\\S+" | ".*" | "^.*$" | "^/.*$" | "/.*") {
                    return Err(format!("regex_rewrite with pattern {pattern:?} is not supported (only whole-path replacement)"));
                }
                rewrite.uri = Some(rr.substitution.clone());
            }
            match &action.host_rewrite_specifier {
                Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => {
                    rewrite.authority = Some(host.clone())
                }
                Some(HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => {}
                Some(_) => {
                    return Err("only host_rewrite_literal is supported among host rewrites".into())
                }
                None => {}
            }
            // The first policy decides, as Envoy does when it yields a hash.
            if let Some(hp) = action.hash_policy.first() {
                let key = match &hp.policy_specifier {
                    Some(PolicySpecifier::Header(h)) => {
                        HashKey::Header(h.header_name.to_ascii_lowercase())
                    }
                    Some(PolicySpecifier::Cookie(c)) => HashKey::Cookie(c.name.clone()),
                    Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => {
                        HashKey::SourceIp
                    }
                    _ => {
                        return Err(
                            "hash_policy: only header, cookie and source_ip are supported".into(),
                        )
                    }
                };
                for d in &destinations {
                    facts
                        .hash_keys
                        .entry(d.cluster.clone())
                        .or_insert_with(|| key.clone());
                }
            }
            out.timeout_ms = match &action.timeout {
                Some(d) if millis(d) == 0 => None,
                Some(d) => Some(millis(d)),
                None => Some(ENVOY_DEFAULT_ROUTE_TIMEOUT_MS),
            };
            let retry = action.retry_policy.as_ref().or(vh.retry_policy.as_ref());
            if let Some(policy) = retry {
                out.retries = retry_policy(policy)?;
            }
            if let Some(mirror) = action.request_mirror_policies.first() {
                if mirror.cluster.is_empty() {
                    return Err("request_mirror_policies: cluster_header is not supported".into());
                }
                let share = mirror
                    .runtime_fraction
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref())
                    .map(percent)
                    .unwrap_or(100.0);
                facts.clusters.push(mirror.cluster.clone());
                out.mirror = Some(Mirror {
                    cluster: mirror.cluster.clone(),
                    percent: share,
                });
            }
            facts
                .clusters
                .extend(destinations.iter().map(|d| d.cluster.clone()));
            out.action = RouteAction::Forward(ForwardAction {
                destinations,
                rewrite: (rewrite != Rewrite::default()).then_some(rewrite),
            });
        }
        Some(Action::Redirect(redirect)) => {
            out.action = RouteAction::Redirect(redirect_action(redirect)?)
        }
        Some(Action::DirectResponse(dr)) => {
            let body = match dr.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => String::new(),
                Some(Specifier::InlineString(s)) => s.clone(),
                Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                    .map_err(|_| "direct_response body is not UTF-8".to_string())?,
                Some(_) => return Err("direct_response body must be inline".into()),
            };
            let status = u16::try_from(dr.status).map_err(|_| {
                format!("direct_response status {} is not a status code", dr.status)
            })?;
            out.action = RouteAction::DirectResponse(DirectResponse { status, body });
        }
        Some(_) => {
            return Err("only route, redirect and direct_response actions are supported".into())
        }
        None => return Err("route has no action".into()),
    }
    Ok(Some(out))
}

/// What Envoy answers for istiod's BlackHoleCluster (REGISTRY_ONLY).
fn blackhole() -> RouteAction {
    RouteAction::DirectResponse(DirectResponse {
        status: 502,
        body: String::new(),
    })
}

fn route_match(m: &rt::RouteMatch) -> Result<Vec<RouteMatch>, String> {
    if m.runtime_fraction.is_some() {
        return Err("match.runtime_fraction is not supported".into());
    }
    let case_insensitive = m.case_sensitive.as_ref().is_some_and(|b| !b.value);
    let path = match &m.path_specifier {
        None => None,
        Some(PathSpecifier::Prefix(p)) if p.is_empty() || (p == "/" && !case_insensitive) => {
            if p.is_empty() {
                None
            } else {
                Some(StringMatch::Prefix(p.clone()))
            }
        }
        Some(PathSpecifier::Prefix(p)) => {
            Some(string_match(MatchKind::Prefix, p, case_insensitive))
        }
        Some(PathSpecifier::Path(p)) => Some(string_match(MatchKind::Exact, p, case_insensitive)),
        Some(PathSpecifier::SafeRegex(r)) => Some(StringMatch::Regex(r.regex.clone())),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            Some(StringMatch::Regex(format!("{}(/.*)?", regex::escape(p))))
        }
        Some(_) => {
            return Err(
                "match: only prefix, path, safe_regex and path_separated_prefix are supported"
                    .into(),
            )
        }
    };
    let mut out = RouteMatch {
        path,
        ..RouteMatch::default()
    };
    for h in &m.headers {
        let (value, invert) = header_value(h).map_err(|e| format!("header {:?}: {e}", h.name))?;
        match h.name.as_str() {
            ":authority" | "host" if !invert && value.is_some() && out.authority.is_none() => {
                out.authority = value
            }
            ":method" if !invert && value.is_some() && out.method.is_none() => out.method = value,
            _ => {
                // Envoy: a value matcher never matches an absent header, even
                // inverted (unless `treat_missing_header_as_empty`), while an
                // inverted NodeConfig condition holds for an absent key: the
                // header must then also be present.
                if invert && value.is_some() && !h.treat_missing_header_as_empty {
                    out.headers.push(KeyMatch {
                        name: h.name.clone(),
                        value: None,
                        invert: false,
                    });
                }
                out.headers.push(KeyMatch {
                    name: h.name.clone(),
                    value,
                    invert,
                })
            }
        }
    }
    for q in &m.query_parameters {
        let value = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => Some(matcher(s)?),
            Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
        };
        out.query_params.push(KeyMatch {
            name: q.name.clone(),
            value,
            invert: false,
        });
    }
    Ok(vec![out])
}

enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Contains,
}

fn string_match(kind: MatchKind, s: &str, ignore_case: bool) -> StringMatch {
    let escaped = regex::escape(s);
    match (kind, ignore_case) {
        (MatchKind::Exact, false) => StringMatch::Exact(s.to_string()),
        (MatchKind::Prefix, false) => StringMatch::Prefix(s.to_string()),
        (MatchKind::Exact, true) => StringMatch::Regex(format!("(?i){escaped}")),
        (MatchKind::Prefix, true) => StringMatch::Regex(format!("(?i){escaped}.*")),
        (MatchKind::Suffix, ic) => {
            StringMatch::Regex(format!("{}.*{escaped}", if ic { "(?i)" } else { "" }))
        }
        (MatchKind::Contains, ic) => {
            StringMatch::Regex(format!("{}.*{escaped}.*", if ic { "(?i)" } else { "" }))
        }
    }
}

fn matcher(s: &StringMatcher) -> Result<StringMatch, String> {
    Ok(match &s.match_pattern {
        Some(MatchPattern::Exact(v)) => string_match(MatchKind::Exact, v, s.ignore_case),
        Some(MatchPattern::Prefix(v)) => string_match(MatchKind::Prefix, v, s.ignore_case),
        Some(MatchPattern::Suffix(v)) => string_match(MatchKind::Suffix, v, s.ignore_case),
        Some(MatchPattern::Contains(v)) => string_match(MatchKind::Contains, v, s.ignore_case),
        Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(r.regex.clone()),
        Some(MatchPattern::Custom(_)) | None => {
            return Err("custom or empty string matchers are not supported".into())
        }
    })
}

/// (value condition, invert) of a header matcher. istiod still sends the
/// deprecated `*_match` fields in places; both forms are read.
///
/// `present_match: p` with `invert_match: i` matches (p == present) != i, that
/// is an absent header when p == i (`present_match: true` alone: present).
/// `treat_missing_header_as_empty` with a value matcher that matches the empty
/// string cannot be expressed (it would match an absent header): an error.
#[allow(deprecated)]
fn header_value(h: &rt::HeaderMatcher) -> Result<(Option<StringMatch>, bool), String> {
    let invert = h.invert_match;
    let out = match &h.header_match_specifier {
        None => (None, invert),
        Some(HeaderMatchSpecifier::PresentMatch(present)) => (None, invert == *present),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => (Some(StringMatch::Exact(v.clone())), invert),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => {
            (Some(StringMatch::Prefix(v.clone())), invert)
        }
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => {
            (Some(string_match(MatchKind::Suffix, v, false)), invert)
        }
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
            (Some(string_match(MatchKind::Contains, v, false)), invert)
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            (Some(StringMatch::Regex(r.regex.clone())), invert)
        }
        Some(HeaderMatchSpecifier::StringMatch(s)) => (Some(matcher(s)?), invert),
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err("range_match is not supported".into())
        }
    };
    if h.treat_missing_header_as_empty {
        if let (Some(value), _) = &out {
            if matches_empty(value)? {
                return Err(
                    "treat_missing_header_as_empty with a value matcher that matches the empty \
                     string is not supported"
                        .into(),
                );
            }
        }
    }
    Ok(out)
}

/// Whether a value condition holds for the empty string (regexes full-match).
fn matches_empty(m: &StringMatch) -> Result<bool, String> {
    Ok(match m {
        StringMatch::Exact(s) | StringMatch::Prefix(s) => s.is_empty(),
        StringMatch::Regex(r) => regex::Regex::new(&format!("^(?:{r})$"))
            .map_err(|e| format!("regex {r:?}: {e}"))?
            .is_match(""),
    })
}

#[allow(deprecated)] // `append` is deprecated but still sent
fn header_ops(
    request_add: &[HeaderValueOption],
    request_remove: &[String],
    response_add: &[HeaderValueOption],
    response_remove: &[String],
) -> Result<HeaderOps, String> {
    let mut ops = HeaderOps::default();
    for (options, set, add) in [
        (request_add, &mut ops.request_set, &mut ops.request_add),
        (response_add, &mut ops.response_set, &mut ops.response_add),
    ] {
        for o in options {
            let Some(h) = &o.header else { continue };
            let value = if h.value.is_empty() && !h.raw_value.is_empty() {
                String::from_utf8(h.raw_value.clone())
                    .map_err(|_| format!("header {:?}: value is not UTF-8", h.key))?
            } else {
                h.value.clone()
            };
            let appends = match &o.append {
                Some(b) => b.value,
                None => matches!(
                    HeaderAppendAction::try_from(o.append_action),
                    Ok(HeaderAppendAction::AppendIfExistsOrAdd)
                        | Ok(HeaderAppendAction::AddIfAbsent)
                ),
            };
            let key = h.key.to_ascii_lowercase();
            if appends {
                add.insert(key, value);
            } else {
                set.insert(key, value);
            }
        }
    }
    ops.request_remove = request_remove
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    ops.response_remove = response_remove
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    Ok(ops)
}

fn merge_ops(route: &mut HeaderOps, vh: HeaderOps) {
    for (k, v) in vh.request_set {
        route.request_set.entry(k).or_insert(v);
    }
    for (k, v) in vh.request_add {
        route.request_add.entry(k).or_insert(v);
    }
    for (k, v) in vh.response_set {
        route.response_set.entry(k).or_insert(v);
    }
    for (k, v) in vh.response_add {
        route.response_add.entry(k).or_insert(v);
    }
    for k in vh.request_remove {
        if !route.request_remove.contains(&k) {
            route.request_remove.push(k);
        }
    }
    for k in vh.response_remove {
        if !route.response_remove.contains(&k) {
            route.response_remove.push(k);
        }
    }
}

fn retry_policy(p: &rt::RetryPolicy) -> Result<Option<dp::RetryPolicy>, String> {
    let retry_on: Vec<String> = p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if retry_on.is_empty() {
        return Ok(None);
    }
    for condition in &retry_on {
        if !RETRY_ON_CONDITIONS.contains(&condition.as_str()) {
            return Err(format!(
                "retry_on: {condition:?} is not a supported retry condition"
            ));
        }
    }
    let mut codes = Vec::new();
    for c in &p.retriable_status_codes {
        codes.push(
            u16::try_from(*c)
                .map_err(|_| format!("retriable_status_codes: {c} is not a status code"))?,
        );
    }
    Ok(Some(dp::RetryPolicy {
        attempts: p
            .num_retries
            .as_ref()
            .map(|n| n.value)
            .unwrap_or(ENVOY_DEFAULT_NUM_RETRIES),
        per_try_timeout_ms: p.per_try_timeout.as_ref().map(millis).filter(|ms| *ms > 0),
        retry_on,
        retriable_status_codes: codes,
        budget: None,
    }))
}

fn fault(any: &Any) -> Result<Option<Fault>, String> {
    let fault: HttpFault = if any.type_url == rt::FilterConfig::type_url() {
        let wrapper: rt::FilterConfig = unpack(any)?;
        match wrapper.config {
            Some(inner) => unpack(&inner)?,
            None => return Ok(None),
        }
    } else {
        unpack(any)?
    };
    let mut out = Fault::default();
    if let Some(d) = &fault.delay {
        let fixed = match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(duration)) => millis(duration),
            _ => return Err("delay: only fixed_delay is supported".into()),
        };
        out.delay = Some(FaultDelay {
            fixed_delay_ms: fixed,
            percent: d.percentage.as_ref().map(percent).unwrap_or(100.0),
        });
    }
    if let Some(a) = &fault.abort {
        let status = match &a.error_type {
            Some(ErrorType::HttpStatus(s)) => {
                u16::try_from(*s).map_err(|_| format!("abort: {s} is not a status code"))?
            }
            _ => return Err("abort: only http_status is supported".into()),
        };
        out.abort = Some(FaultAbort {
            http_status: status,
            percent: a.percentage.as_ref().map(percent).unwrap_or(100.0),
        });
    }
    Ok((out.delay.is_some() || out.abort.is_some()).then_some(out))
}

fn redirect_action(r: &rt::RedirectAction) -> Result<Redirect, String> {
    let mut out = Redirect {
        code: match RedirectResponseCode::try_from(r.response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => 301,
            Ok(RedirectResponseCode::Found) => 302,
            Ok(RedirectResponseCode::SeeOther) => 303,
            Ok(RedirectResponseCode::TemporaryRedirect) => 307,
            Ok(RedirectResponseCode::PermanentRedirect) => 308,
            Err(_) => {
                return Err(format!(
                    "redirect: unknown response_code {}",
                    r.response_code
                ))
            }
        },
        ..Redirect::default()
    };
    if !r.host_redirect.is_empty() {
        out.authority = Some(if r.port_redirect != 0 {
            format!("{}:{}", r.host_redirect, r.port_redirect)
        } else {
            r.host_redirect.clone()
        });
    } else if r.port_redirect != 0 {
        return Err("redirect: port_redirect without host_redirect is not supported".into());
    }
    match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => out.scheme = Some("https".into()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            out.scheme = Some(s.clone())
        }
        _ => {}
    }
    match &r.path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) if !p.is_empty() => out.uri = Some(p.clone()),
        Some(PathRewriteSpecifier::PathRedirect(_)) | None => {}
        Some(_) => return Err("redirect: only path_redirect is supported".into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: &str) -> rt::HeaderMatcher {
        let mut h: rt::HeaderMatcher = rt::HeaderMatcher {
            name: "x-h".into(),
            ..Default::default()
        };
        match kind {
            "present" => h.header_match_specifier = Some(HeaderMatchSpecifier::PresentMatch(true)),
            "absent" => h.header_match_specifier = Some(HeaderMatchSpecifier::PresentMatch(false)),
            v => {
                h.header_match_specifier = Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(v.into())),
                    ..Default::default()
                }))
            }
        }
        h
    }

    fn conditions(h: rt::HeaderMatcher) -> Vec<(Option<StringMatch>, bool)> {
        let m = rt::RouteMatch {
            headers: vec![h],
            ..Default::default()
        };
        let out = route_match(&m).expect("translates");
        out[0]
            .headers
            .iter()
            .map(|k| (k.value.clone(), k.invert))
            .collect()
    }

    /// Envoy's semantics, as the differential test against Envoy found them.
    #[test]
    fn header_presence_and_inversion_follow_envoy() {
        // present_match: true → the header is present (not inverted).
        assert_eq!(conditions(header("present")), vec![(None, false)]);
        // present_match: false → absent; inverted present_match: true → absent.
        assert_eq!(conditions(header("absent")), vec![(None, true)]);
        let mut h = header("present");
        h.invert_match = true;
        assert_eq!(conditions(h), vec![(None, true)]);
        // An inverted value matcher does not match an absent header: presence
        // is required too.
        let mut h = header("prod");
        h.invert_match = true;
        assert_eq!(
            conditions(h),
            vec![
                (None, false),
                (Some(StringMatch::Exact("prod".into())), true)
            ]
        );
        // ... unless a missing header counts as empty ("" is not "prod").
        let mut h = header("prod");
        h.invert_match = true;
        h.treat_missing_header_as_empty = true;
        assert_eq!(
            conditions(h),
            vec![(Some(StringMatch::Exact("prod".into())), true)]
        );
        // Not inverted: one condition, which an absent header fails.
        assert_eq!(
            conditions(header("prod")),
            vec![(Some(StringMatch::Exact("prod".into())), false)]
        );
        // A missing header as empty with a matcher that takes "": refused.
        let mut h = header("");
        h.treat_missing_header_as_empty = true;
        let m = rt::RouteMatch {
            headers: vec![h],
            ..Default::default()
        };
        assert!(route_match(&m).is_err());
    }
}

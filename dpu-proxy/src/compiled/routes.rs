//! HTTP and TCP route tables: virtual host selection by authority, route
//! matching, and the compiled route actions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use regex::Regex;

use dpumesh_api::config::{
    HeaderOps, KeyMatch, Route, RouteAction, RouteMatch, RouteTable, StringMatch, TcpRouteTable,
    WeightedDestination,
};

use super::state::{Carry, TokenBucket};
use super::{ClusterRt, Errors};

/// A string condition, regexes compiled once and anchored (full match).
#[derive(Debug)]
pub enum StrMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StrMatcher {
    fn compile(m: &StringMatch, path: &str, errs: &mut Errors) -> Option<StrMatcher> {
        Some(match m {
            StringMatch::Exact(s) => StrMatcher::Exact(s.clone()),
            StringMatch::Prefix(s) => StrMatcher::Prefix(s.clone()),
            StringMatch::Regex(r) => match Regex::new(&format!("^(?:{r})$")) {
                Ok(re) => StrMatcher::Regex(re),
                Err(e) => {
                    errs.push(
                        format!("{path}.regex"),
                        format!("{r:?} is not a valid regex: {e}"),
                    );
                    return None;
                }
            },
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            StrMatcher::Exact(e) => s == e,
            StrMatcher::Prefix(p) => s.starts_with(p.as_str()),
            StrMatcher::Regex(re) => re.is_match(s),
        }
    }
}

/// A header or query parameter condition.
#[derive(Debug)]
pub struct KeyMatcher {
    pub name: String,
    header: Option<HeaderName>,
    /// `None`: presence only.
    pub value: Option<StrMatcher>,
    pub invert: bool,
}

impl KeyMatcher {
    fn compile(k: &KeyMatch, is_header: bool, path: &str, errs: &mut Errors) -> Option<KeyMatcher> {
        let header = if is_header {
            match HeaderName::from_bytes(k.name.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) if k.name.starts_with(':') => None,
                Err(_) => {
                    errs.push(
                        format!("{path}.name"),
                        format!("{:?} is not a header name", k.name),
                    );
                    return None;
                }
            }
        } else {
            None
        };
        let value = match &k.value {
            Some(v) => Some(StrMatcher::compile(v, &format!("{path}.value"), errs)?),
            None => None,
        };
        Some(KeyMatcher {
            name: k.name.clone(),
            header,
            value,
            invert: k.invert,
        })
    }

    fn holds(&self, value: Option<&str>) -> bool {
        let ok = match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        };
        ok != self.invert
    }
}

/// What a route match looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Full `:path` including the query.
    pub path_and_query: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }

    fn header(&self, m: &KeyMatcher) -> Option<std::borrow::Cow<'_, str>> {
        let Some(name) = &m.header else {
            return match m.name.as_str() {
                ":authority" => Some(self.authority.into()),
                ":path" => Some(self.path_and_query.into()),
                ":method" => Some(self.method.as_str().into()),
                _ => None,
            };
        };
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?.to_str().ok()?;
        match values.next() {
            None => Some(first.into()),
            // Envoy matches multiple values joined with ','.
            Some(second) => {
                let mut joined = format!("{first},{}", second.to_str().ok()?);
                for v in values {
                    joined.push(',');
                    joined.push_str(v.to_str().ok()?);
                }
                Some(joined.into())
            }
        }
    }
}

/// All conditions of one match (AND).
#[derive(Debug, Default)]
pub struct MatchRt {
    pub authority: Option<StrMatcher>,
    pub path: Option<StrMatcher>,
    pub method: Option<StrMatcher>,
    pub headers: Box<[KeyMatcher]>,
    pub query_params: Box<[KeyMatcher]>,
}

impl MatchRt {
    fn compile(m: &RouteMatch, path: &str, errs: &mut Errors) -> Option<MatchRt> {
        let opt = |s: &Option<StringMatch>, field: &str, errs: &mut Errors| match s {
            Some(s) => StrMatcher::compile(s, &format!("{path}.{field}"), errs).map(Some),
            None => Some(None),
        };
        let authority = opt(&m.authority, "authority", errs);
        let path_m = opt(&m.path, "path", errs);
        let method = opt(&m.method, "method", errs);
        let headers: Option<Box<[_]>> = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, k)| KeyMatcher::compile(k, true, &format!("{path}.headers[{i}]"), errs))
            .collect();
        let query_params: Option<Box<[_]>> = m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, k)| KeyMatcher::compile(k, false, &format!("{path}.queryParams[{i}]"), errs))
            .collect();
        Some(MatchRt {
            authority: authority?,
            path: path_m?,
            method: method?,
            headers: headers?,
            query_params: query_params?,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.path {
            // Envoy: prefix looks at the whole :path, exact and regex at the path without query.
            let ok = match m {
                StrMatcher::Prefix(_) => m.matches(req.path_and_query),
                _ => m.matches(req.path()),
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.authority {
            if !m.matches(req.authority) {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|h| h.holds(req.header(h).as_deref()))
        {
            return false;
        }
        if !self.query_params.is_empty() {
            let query = req.query();
            for q in &self.query_params {
                let value = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == q.name).then_some(v)
                });
                if !q.holds(value) {
                    return false;
                }
            }
        }
        true
    }
}

/// Header changes, names and values parsed once. Most routes and
/// destinations change no header: those hold no allocation (one pointer
/// instead of six lists inline, in every route and destination).
#[derive(Debug, Default)]
pub struct HeaderOpsRt(Option<Box<HeaderOpsList>>);

#[derive(Debug, Default)]
struct HeaderOpsList {
    request_set: Box<[(HeaderName, HeaderValue)]>,
    request_add: Box<[(HeaderName, HeaderValue)]>,
    request_remove: Box<[HeaderName]>,
    response_set: Box<[(HeaderName, HeaderValue)]>,
    response_add: Box<[(HeaderName, HeaderValue)]>,
    response_remove: Box<[HeaderName]>,
}

impl HeaderOpsList {
    fn is_empty(&self) -> bool {
        self.request_set.is_empty()
            && self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_set.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

impl HeaderOpsRt {
    fn compile(h: &HeaderOps, path: &str, errs: &mut Errors) -> HeaderOpsRt {
        let pairs =
            |m: &std::collections::BTreeMap<String, String>, field: &str, errs: &mut Errors| {
                let mut out = Vec::new();
                for (k, v) in m {
                    match (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        (Ok(k), Ok(v)) => out.push((k, v)),
                        _ => errs.push(
                            format!("{path}.{field}.{k}"),
                            format!("{k:?}: {v:?} is not a valid header"),
                        ),
                    }
                }
                out
            };
        let names = |l: &[String], field: &str, errs: &mut Errors| {
            let mut out = Vec::new();
            for (i, k) in l.iter().enumerate() {
                match HeaderName::from_bytes(k.as_bytes()) {
                    Ok(k) => out.push(k),
                    Err(_) => errs.push(
                        format!("{path}.{field}[{i}]"),
                        format!("{k:?} is not a header name"),
                    ),
                }
            }
            out
        };
        let list = HeaderOpsList {
            request_set: pairs(&h.request_set, "requestSet", errs).into(),
            request_add: pairs(&h.request_add, "requestAdd", errs).into(),
            request_remove: names(&h.request_remove, "requestRemove", errs).into(),
            response_set: pairs(&h.response_set, "responseSet", errs).into(),
            response_add: pairs(&h.response_add, "responseAdd", errs).into(),
            response_remove: names(&h.response_remove, "responseRemove", errs).into(),
        };
        HeaderOpsRt((!list.is_empty()).then(|| Box::new(list)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn apply_request(&self, h: &mut HeaderMap) {
        if let Some(l) = &self.0 {
            apply(h, &l.request_remove, &l.request_set, &l.request_add);
        }
    }

    pub fn apply_response(&self, h: &mut HeaderMap) {
        if let Some(l) = &self.0 {
            apply(h, &l.response_remove, &l.response_set, &l.response_add);
        }
    }
}

fn apply(
    h: &mut HeaderMap,
    remove: &[HeaderName],
    set: &[(HeaderName, HeaderValue)],
    add: &[(HeaderName, HeaderValue)],
) {
    for k in remove {
        h.remove(k);
    }
    for (k, v) in set {
        h.insert(k.clone(), v.clone());
    }
    for (k, v) in add {
        h.append(k.clone(), v.clone());
    }
}

#[derive(Debug)]
pub struct DestinationRt {
    pub cluster: Arc<ClusterRt>,
    pub weight: u32,
    pub headers: HeaderOpsRt,
}

#[derive(Debug)]
pub struct ForwardRt {
    pub destinations: Box<[DestinationRt]>,
    pub weights: Box<[u32]>,
    pub total_weight: u32,
    pub rewrite_uri: Option<String>,
    pub rewrite_authority: Option<HeaderValue>,
}

impl ForwardRt {
    /// Per-request weighted pick of a destination.
    pub fn pick(&self) -> &DestinationRt {
        &self.destinations[crate::lb::pick_weighted(&self.weights, self.total_weight)]
    }
}

#[derive(Debug)]
pub struct RedirectRt {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub code: StatusCode,
}

#[derive(Debug)]
pub enum ActionRt {
    Forward(ForwardRt),
    Redirect(RedirectRt),
    DirectResponse { status: StatusCode, body: Bytes },
}

/// Retry conditions (Envoy `retry_on`), parsed once.
#[derive(Debug, Default, Clone)]
pub struct RetryOn {
    pub on_5xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    pub refused_stream: bool,
    /// Retry these response codes (`retriable-status-codes` or numeric entries).
    pub status_codes: Vec<u16>,
    /// gRPC status codes (from `grpc-status` of a trailers-only response).
    pub grpc_codes: Vec<u32>,
}

#[derive(Debug)]
pub struct RetryRt {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// Envoy retry budget: (percent of active requests, minimum concurrent retries).
    pub budget: Option<(f64, u32)>,
}

impl RetryRt {
    fn compile(r: &dpumesh_api::config::RetryPolicy, path: &str, errs: &mut Errors) -> RetryRt {
        let mut on = RetryOn::default();
        let mut status_codes_listed = false;
        for (i, cond) in r.retry_on.iter().enumerate() {
            match cond.trim() {
                "5xx" => on.on_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => status_codes_listed = true,
                "cancelled" => on.grpc_codes.push(1),
                "deadline-exceeded" => on.grpc_codes.push(4),
                "resource-exhausted" => on.grpc_codes.push(8),
                "internal" => on.grpc_codes.push(13),
                "unavailable" => on.grpc_codes.push(14),
                // Envoy-only conditions we accept and do not need to act on.
                "retriable-4xx" => on.status_codes.push(409),
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
                other => match other.parse::<u16>() {
                    Ok(code) if (100..600).contains(&code) => on.status_codes.push(code),
                    _ => errs.push(
                        format!("{path}.retryOn[{i}]"),
                        format!("{other:?} is not a retry condition"),
                    ),
                },
            }
        }
        if status_codes_listed {
            on.status_codes.extend(&r.retriable_status_codes);
        }
        RetryRt {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout_ms.map(Duration::from_millis),
            on,
            budget: r
                .budget
                .as_ref()
                .map(|b| (b.budget_percent.clamp(0.0, 100.0), b.min_retry_concurrency)),
        }
    }
}

#[derive(Debug)]
pub struct FaultRt {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(StatusCode, f64)>,
}

/// Traffic mirroring (Istio `mirror` + `mirrorPercentage`).
#[derive(Debug)]
pub struct MirrorRt {
    pub cluster: Arc<ClusterRt>,
    pub percent: f64,
}

#[derive(Debug)]
pub struct RouteRt {
    pub name: String,
    pub matches: Box<[MatchRt]>,
    pub action: ActionRt,
    pub headers: HeaderOpsRt,
    pub timeout: Option<Duration>,
    /// Boxed, as `fault`: most routes have neither.
    pub retries: Option<Box<RetryRt>>,
    pub fault: Option<Box<FaultRt>>,
    pub mirror: Option<MirrorRt>,
    /// Local rate limit of this route (shared by every pod using the route).
    pub rate_limit: Option<Arc<TokenBucket>>,
}

impl RouteRt {
    /// Index of the first match that holds (`Some(None)` for a route without matches).
    pub fn match_request(&self, req: &RequestView<'_>) -> Option<Option<usize>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().position(|m| m.matches(req)).map(Some)
    }

    fn compile(
        r: &Route,
        clusters: &HashMap<String, Arc<ClusterRt>>,
        old_bucket: Option<&Arc<TokenBucket>>,
        path: &str,
        errs: &mut Errors,
    ) -> Option<RouteRt> {
        let mirror = match &r.mirror {
            Some(m) => match clusters.get(&m.cluster) {
                Some(c) => Some(MirrorRt {
                    cluster: c.clone(),
                    percent: m.percent,
                }),
                None => {
                    errs.push(
                        format!("{path}.mirror.cluster"),
                        format!("{:?} names no entry of clusters", m.cluster),
                    );
                    return None;
                }
            },
            None => None,
        };
        let matches: Option<Box<[_]>> = r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| MatchRt::compile(m, &format!("{path}.matches[{i}]"), errs))
            .collect();
        let action = match &r.action {
            RouteAction::Forward(f) => {
                let apath = format!("{path}.action.forward");
                if f.destinations.is_empty() {
                    errs.push(
                        format!("{apath}.destinations"),
                        "a forward route needs at least one destination".to_string(),
                    );
                    return None;
                }
                let destinations = compile_destinations(
                    &f.destinations,
                    clusters,
                    &format!("{apath}.destinations"),
                    errs,
                )?;
                let weights: Box<[u32]> = destinations.iter().map(|d| d.weight).collect();
                let total_weight = weights.iter().sum();
                let rewrite_authority = match f.rewrite.as_ref().and_then(|r| r.authority.as_ref())
                {
                    Some(a) => match HeaderValue::from_str(a) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            errs.push(
                                format!("{apath}.rewrite.authority"),
                                format!("{a:?} is not a valid authority"),
                            );
                            None
                        }
                    },
                    None => None,
                };
                ActionRt::Forward(ForwardRt {
                    destinations: destinations.into(),
                    weights,
                    total_weight,
                    rewrite_uri: f.rewrite.as_ref().and_then(|r| r.uri.clone()),
                    rewrite_authority,
                })
            }
            RouteAction::Redirect(rd) => {
                let code = match rd.code {
                    301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(rd.code).ok(),
                    _ => None,
                };
                let Some(code) = code else {
                    errs.push(
                        format!("{path}.action.redirect.code"),
                        format!(
                            "{} is not a redirect status (301, 302, 303, 307, 308)",
                            rd.code
                        ),
                    );
                    return None;
                };
                ActionRt::Redirect(RedirectRt {
                    uri: rd.uri.clone(),
                    authority: rd.authority.clone(),
                    scheme: rd.scheme.clone(),
                    code,
                })
            }
            RouteAction::DirectResponse(d) => {
                let Some(status) = StatusCode::from_u16(d.status)
                    .ok()
                    .filter(|s| s.as_u16() >= 200)
                else {
                    errs.push(
                        format!("{path}.action.directResponse.status"),
                        format!("{} is not a final HTTP status", d.status),
                    );
                    return None;
                };
                ActionRt::DirectResponse {
                    status,
                    body: Bytes::from(d.body.clone()),
                }
            }
        };
        let fault = r.fault.as_ref().map(|f| FaultRt {
            delay: f
                .delay
                .as_ref()
                .map(|d| (Duration::from_millis(d.fixed_delay_ms), d.percent)),
            abort: f
                .abort
                .as_ref()
                .and_then(|a| match StatusCode::from_u16(a.http_status) {
                    Ok(s) => Some((s, a.percent)),
                    Err(_) => {
                        errs.push(
                            format!("{path}.fault.abort.httpStatus"),
                            format!("{} is not an HTTP status", a.http_status),
                        );
                        None
                    }
                }),
        });
        Some(RouteRt {
            name: r.name.clone(),
            matches: matches?,
            action,
            headers: HeaderOpsRt::compile(&r.headers, &format!("{path}.headers"), errs),
            timeout: r.timeout_ms.filter(|t| *t > 0).map(Duration::from_millis),
            retries: r
                .retries
                .as_ref()
                .map(|rp| Box::new(RetryRt::compile(rp, &format!("{path}.retries"), errs))),
            fault: fault.map(Box::new),
            mirror,
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|rl| Carry::bucket(old_bucket, rl)),
        })
    }
}

fn compile_destinations(
    dests: &[WeightedDestination],
    clusters: &HashMap<String, Arc<ClusterRt>>,
    path: &str,
    errs: &mut Errors,
) -> Option<Vec<DestinationRt>> {
    let mut out = Vec::with_capacity(dests.len());
    let mut ok = true;
    for (i, d) in dests.iter().enumerate() {
        let Some(cluster) = clusters.get(&d.cluster) else {
            errs.push(
                format!("{path}[{i}].cluster"),
                format!("{:?} names no entry of clusters", d.cluster),
            );
            ok = false;
            continue;
        };
        out.push(DestinationRt {
            cluster: cluster.clone(),
            weight: d.weight,
            headers: HeaderOpsRt::compile(&d.headers, &format!("{path}[{i}].headers"), errs),
        });
    }
    if ok && out.iter().all(|d| d.weight == 0) {
        errs.push(path, "destination weights sum to 0".to_string());
        ok = false;
    }
    ok.then_some(out)
}

#[derive(Debug)]
pub struct VirtualHostRt {
    pub name: String,
    pub routes: Box<[RouteRt]>,
}

/// Virtual hosts of one route table, indexed by domain the way Envoy selects
/// them: exact, then longest suffix wildcard (`*.x`), then longest prefix
/// wildcard (`x.*`), then `*`.
#[derive(Debug)]
pub struct RouteTableRt {
    pub name: String,
    pub vhosts: Vec<VirtualHostRt>,
    exact: HashMap<String, usize>,
    /// (suffix without '*', vhost), longest first.
    suffixes: Vec<(String, usize)>,
    /// (prefix without '*', vhost), longest first.
    prefixes: Vec<(String, usize)>,
    catch_all: Option<usize>,
}

impl RouteTableRt {
    pub(super) fn compile(
        t: &RouteTable,
        clusters: &HashMap<String, Arc<ClusterRt>>,
        carry: &Carry,
        path: &str,
        errs: &mut Errors,
    ) -> Option<RouteTableRt> {
        let mut table = RouteTableRt::empty(&t.name);
        let before = errs.0.len();
        for (vi, vh) in t.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtualHosts[{vi}]");
            let routes: Box<[RouteRt]> = vh
                .routes
                .iter()
                .enumerate()
                .filter_map(|(ri, r)| {
                    let old = carry.routes.get(&(t.name.clone(), vi, ri, r.name.clone()));
                    RouteRt::compile(r, clusters, old, &format!("{vpath}.routes[{ri}]"), errs)
                })
                .collect();
            let index = table.vhosts.len();
            for (di, d) in vh.domains.iter().enumerate() {
                if let Err(msg) = table.add_domain(d, index) {
                    errs.push(format!("{vpath}.domains[{di}]"), msg);
                }
            }
            table.vhosts.push(VirtualHostRt {
                name: vh.name.clone(),
                routes,
            });
        }
        table.vhosts.shrink_to_fit();
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
            .prefixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        (errs.0.len() == before).then_some(table)
    }

    fn empty(name: &str) -> RouteTableRt {
        RouteTableRt {
            name: name.to_string(),
            vhosts: Vec::new(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            catch_all: None,
        }
    }

    fn add_domain(&mut self, d: &str, index: usize) -> Result<(), String> {
        let d = d.to_ascii_lowercase();
        let dup = if d == "*" {
            self.catch_all.replace(index).is_some()
        } else if let Some(suffix) = d.strip_prefix('*') {
            self.suffixes.iter().any(|(s, _)| s == suffix) || {
                self.suffixes.push((suffix.to_string(), index));
                false
            }
        } else if let Some(prefix) = d.strip_suffix('*') {
            self.prefixes.iter().any(|(s, _)| s == prefix) || {
                self.prefixes.push((prefix.to_string(), index));
                false
            }
        } else if d.is_empty() || d.contains('*') {
            return Err(format!("{d:?} is not a domain"));
        } else {
            self.exact.insert(d.clone(), index).is_some()
        };
        if dup {
            Err(format!("{d:?} is listed by two virtual hosts"))
        } else {
            Ok(())
        }
    }

    /// A table that sends everything to one cluster (a service port without routes).
    pub(super) fn catch_all(hostname: &str, cluster: Arc<ClusterRt>) -> RouteTableRt {
        let mut t = RouteTableRt::empty(&cluster.name);
        t.catch_all = Some(0);
        t.vhosts = vec![VirtualHostRt {
            name: hostname.to_string(),
            routes: Box::new([RouteRt {
                name: "default".to_string(),
                matches: Box::default(),
                action: ActionRt::Forward(ForwardRt {
                    destinations: Box::new([DestinationRt {
                        cluster,
                        weight: 1,
                        headers: HeaderOpsRt::default(),
                    }]),
                    weights: Box::new([1]),
                    total_weight: 1,
                    rewrite_uri: None,
                    rewrite_authority: None,
                }),
                headers: HeaderOpsRt::default(),
                timeout: None,
                retries: None,
                fault: None,
                mirror: None,
                rate_limit: None,
            }]),
        }];
        t
    }

    /// The virtual host for an authority, as given (port included), as Envoy
    /// does without `strip_port_mode` (istiod sets none on sidecars: its
    /// domains list `host` and `host:port` for the listener's port, so
    /// `reviews:80` on port 9080 finds no virtual host). Case-insensitive.
    pub fn select(&self, authority: &str) -> Option<&VirtualHostRt> {
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        let i = self.find_specific(authority).or(self.catch_all)?;
        self.vhosts.get(i)
    }

    /// Exact, then suffix, then prefix wildcards; not the catch-all.
    fn find_specific(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        // Envoy: a wildcard must match at least one character.
        if let Some((_, i)) = self
            .suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            return Some(*i);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }
}

/// One TCP route (Istio VirtualService `tcp`).
#[derive(Debug)]
pub struct TcpRouteRt {
    pub source_labels: Box<[(String, String)]>,
    pub destinations: Box<[DestinationRt]>,
    pub weights: Box<[u32]>,
    pub total_weight: u32,
}

impl TcpRouteRt {
    pub fn pick(&self) -> &DestinationRt {
        &self.destinations[crate::lb::pick_weighted(&self.weights, self.total_weight)]
    }
}

#[derive(Debug)]
pub struct TcpRouteTableRt {
    pub routes: Box<[TcpRouteRt]>,
}

impl TcpRouteTableRt {
    pub(super) fn compile(
        t: &TcpRouteTable,
        clusters: &HashMap<String, Arc<ClusterRt>>,
        path: &str,
        errs: &mut Errors,
    ) -> Option<TcpRouteTableRt> {
        let mut routes = Vec::new();
        for (i, r) in t.routes.iter().enumerate() {
            let destinations = compile_destinations(
                &r.destinations,
                clusters,
                &format!("{path}.routes[{i}].destinations"),
                errs,
            )?;
            let weights: Box<[u32]> = destinations.iter().map(|d| d.weight).collect();
            routes.push(TcpRouteRt {
                source_labels: r
                    .source_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                total_weight: weights.iter().sum(),
                weights,
                destinations: destinations.into(),
            });
        }
        Some(TcpRouteTableRt {
            routes: routes.into(),
        })
    }

    pub(super) fn single(cluster: Arc<ClusterRt>) -> TcpRouteTableRt {
        TcpRouteTableRt {
            routes: Box::new([TcpRouteRt {
                source_labels: Box::default(),
                destinations: Box::new([DestinationRt {
                    cluster,
                    weight: 1,
                    headers: HeaderOpsRt::default(),
                }]),
                weights: Box::new([1]),
                total_weight: 1,
            }]),
        }
    }

    /// The first route whose source labels the source pod carries.
    pub fn select(
        &self,
        source_labels: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Option<&TcpRouteRt> {
        self.routes.iter().find(|r| {
            r.source_labels
                .iter()
                .all(|(k, v)| source_labels.and_then(|l| l.get(k)) == Some(v))
        })
    }
}

use std::collections::BTreeMap;

use dpumesh_api::config::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
    MtlsMode, PeerAuthentication,
};
use serde_json::json;

use super::*;

const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const ADMIN: &str = "spiffe://cluster.local/ns/admin/sa/ops";

fn policy(v: serde_json::Value) -> AuthorizationPolicy {
    serde_json::from_value(v).expect("policy json")
}

struct Req {
    principal: Option<&'static str>,
    src: &'static str,
    port: u16,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: http::HeaderMap,
}

impl Req {
    fn tcp(principal: Option<&'static str>) -> Self {
        Self {
            principal,
            src: "10.244.2.7",
            port: 9080,
            http: None,
            headers: http::HeaderMap::new(),
        }
    }
    fn http(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Self {
        Self {
            http: Some(("reviews.foo.svc.cluster.local", method, path)),
            ..Self::tcp(principal)
        }
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn src(mut self, s: &'static str) -> Self {
        self.src = s;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.insert(k, http::HeaderValue::from_static(v));
        self
    }
    fn eval(&self, policies: &[AuthorizationPolicy]) -> Verdict {
        let req = AuthzRequest {
            source_ip: self.src.parse().expect("ip"),
            source_principal: self.principal,
            destination_ip: "10.244.1.5".parse().expect("ip"),
            destination_port: self.port,
            http: self.http.map(|(host, method, path)| HttpAttrs {
                host,
                method,
                path,
                headers: &self.headers,
            }),
        };
        authorize(policies, &req)
    }
    fn allowed(&self, policies: &[AuthorizationPolicy]) -> bool {
        self.eval(policies).is_allow()
    }
}

#[test]
fn no_policies_allow_everything() {
    assert!(Req::tcp(None).allowed(&[]));
}

#[test]
fn allow_with_no_rules_denies_all_and_empty_rule_allows_all() {
    let deny_all = policy(json!({"name": "foo/deny-all", "action": "ALLOW"}));
    assert_eq!(
        Req::tcp(Some(SLEEP)).eval(std::slice::from_ref(&deny_all)),
        Verdict::Deny {
            policy: NO_ALLOW_MATCH.into(),
            audited_by: vec![]
        }
    );
    let allow_all = policy(json!({"name": "foo/allow-all", "action": "ALLOW", "rules": [{}]}));
    assert!(Req::tcp(None).allowed(&[deny_all, allow_all]));
    // A DENY without rules matches nothing.
    let deny_none = policy(json!({"name": "foo/d", "action": "DENY"}));
    assert!(Req::tcp(None).allowed(&[deny_none]));
}

#[test]
fn deny_beats_allow() {
    let allow = policy(json!({"name": "foo/allow-sleep", "action": "ALLOW",
        "rules": [{"from": [{"principals": ["cluster.local/ns/foo/sa/sleep"]}]}]}));
    let deny = policy(json!({"name": "foo/deny-get", "action": "DENY",
        "rules": [{"to": [{"methods": ["GET"]}]}]}));
    let both = [allow.clone(), deny];
    assert!(Req::http(Some(SLEEP), "POST", "/").allowed(&both));
    assert_eq!(
        Req::http(Some(SLEEP), "GET", "/").eval(&both),
        Verdict::Deny {
            policy: "foo/deny-get".into(),
            audited_by: vec![]
        }
    );
    // ALLOW present, not matched → denied.
    assert!(!Req::http(Some(ADMIN), "POST", "/").allowed(&[allow]));
}

#[test]
fn principals_accept_istio_and_spiffe_forms_and_wildcards() {
    for pattern in [
        "cluster.local/ns/foo/sa/sleep",
        "spiffe://cluster.local/ns/foo/sa/sleep",
        "cluster.local/ns/foo/*",
        "*/sa/sleep",
        "*",
    ] {
        let p = policy(
            json!({"name": "p", "action": "ALLOW", "rules": [{"from": [{"principals": [pattern]}]}]}),
        );
        assert!(
            Req::tcp(Some(SLEEP)).allowed(std::slice::from_ref(&p)),
            "{pattern}"
        );
        assert!(
            !Req::tcp(Some(ADMIN)).allowed(std::slice::from_ref(&p)) || pattern == "*",
            "{pattern}"
        );
        // `*` requires an authenticated peer.
        assert!(!Req::tcp(None).allowed(&[p]), "{pattern} matched plaintext");
    }
}

#[test]
fn not_principals_star_selects_plaintext() {
    let p = policy(json!({"name": "foo/deny-plaintext", "action": "DENY",
        "rules": [{"from": [{"notPrincipals": ["*"]}]}]}));
    assert!(!Req::tcp(None).allowed(std::slice::from_ref(&p)));
    assert!(Req::tcp(Some(SLEEP)).allowed(&[p]));
}

#[test]
fn namespaces_and_not_namespaces() {
    let p = policy(json!({"name": "p", "action": "ALLOW",
        "rules": [{"from": [{"namespaces": ["foo", "adm*"], "notNamespaces": ["admin"]}]}]}));
    assert!(Req::tcp(Some(SLEEP)).allowed(std::slice::from_ref(&p)));
    assert!(!Req::tcp(Some(ADMIN)).allowed(std::slice::from_ref(&p)));
    assert!(!Req::tcp(None).allowed(&[p]));
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let p = policy(json!({"name": "p", "action": "ALLOW",
        "rules": [{"from": [{"ipBlocks": ["10.244.0.0/16", "192.0.2.11"], "notIpBlocks": ["10.244.3.0/24"]}]}]}));
    assert!(Req::tcp(None)
        .src("10.244.2.7")
        .allowed(std::slice::from_ref(&p)));
    assert!(Req::tcp(None)
        .src("192.0.2.11")
        .allowed(std::slice::from_ref(&p)));
    assert!(!Req::tcp(None)
        .src("10.244.3.7")
        .allowed(std::slice::from_ref(&p)));
    assert!(!Req::tcp(None).src("172.16.0.1").allowed(&[p]));
}

#[test]
fn sources_are_ored_and_fields_anded() {
    let p = policy(json!({"name": "p", "action": "ALLOW", "rules": [{"from": [
        {"principals": [SLEEP], "ipBlocks": ["10.0.0.0/8"]},
        {"namespaces": ["admin"]}
    ]}]}));
    assert!(Req::tcp(Some(SLEEP))
        .src("10.244.2.7")
        .allowed(std::slice::from_ref(&p)));
    assert!(!Req::tcp(Some(SLEEP))
        .src("172.16.0.1")
        .allowed(std::slice::from_ref(&p)));
    assert!(Req::tcp(Some(ADMIN)).src("172.16.0.1").allowed(&[p]));
}

#[test]
fn operations_hosts_ports_methods_paths() {
    let p = policy(json!({"name": "p", "action": "ALLOW", "rules": [{"to": [{
        "hosts": ["*.foo.svc.cluster.local"], "ports": [9080], "methods": ["GET", "HEAD"],
        "paths": ["/api/*", "*.json", "/exact"], "notPaths": ["/api/admin*"]
    }]}]}));
    let ok = |m, path| Req::http(None, m, path).allowed(std::slice::from_ref(&p));
    assert!(ok("GET", "/api/v1/reviews"));
    assert!(ok("HEAD", "/exact"));
    assert!(ok("GET", "/data/x.json"));
    assert!(!ok("GET", "/exact/more"));
    assert!(!ok("POST", "/api/v1/reviews"));
    assert!(!ok("GET", "/api/admin/users"));
    assert!(!Req::http(None, "GET", "/api/v1")
        .port(9081)
        .allowed(std::slice::from_ref(&p)));
    let mut other_host = Req::http(None, "GET", "/api/v1");
    other_host.http = Some(("ratings.bar.svc.cluster.local", "GET", "/api/v1"));
    assert!(!other_host.allowed(std::slice::from_ref(&p)));
    // Hosts compare case-insensitively.
    let mut upper = Req::http(None, "GET", "/api/v1");
    upper.http = Some(("REVIEWS.FOO.SVC.CLUSTER.LOCAL", "GET", "/api/v1"));
    assert!(upper.allowed(&[p]));
}

#[test]
fn http_only_fields_on_tcp_allow_never_matches_deny_ignores_them() {
    let allow = policy(json!({"name": "foo/allow-get", "action": "ALLOW",
        "rules": [{"to": [{"methods": ["GET"], "ports": [9080]}]}]}));
    assert!(!Req::tcp(Some(SLEEP)).allowed(std::slice::from_ref(&allow)));
    let deny = policy(json!({"name": "foo/deny-get", "action": "DENY",
        "rules": [{"to": [{"methods": ["GET"], "ports": [9080]}]}]}));
    // The DENY on TCP loses its method and denies every connection to 9080 …
    assert!(!Req::tcp(Some(SLEEP)).allowed(std::slice::from_ref(&deny)));
    // … but only on that port.
    assert!(Req::tcp(Some(SLEEP)).port(9081).allowed(&[deny]));
}

#[test]
fn when_conditions() {
    let p = policy(json!({"name": "p", "action": "ALLOW", "rules": [{"when": [
        {"key": "request.headers[x-user]", "values": ["alice", "bob*"]},
        {"key": "source.namespace", "notValues": ["admin"]},
        {"key": "destination.port", "values": ["9080"]},
        {"key": "source.ip", "values": ["10.244.0.0/16"]}
    ]}]}));
    let ps = std::slice::from_ref(&p);
    assert!(Req::http(Some(SLEEP), "GET", "/")
        .header("x-user", "alice")
        .allowed(ps));
    assert!(Req::http(Some(SLEEP), "GET", "/")
        .header("x-user", "bobby")
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "GET", "/")
        .header("x-user", "eve")
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "GET", "/").allowed(ps));
    assert!(!Req::http(Some(ADMIN), "GET", "/")
        .header("x-user", "alice")
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "GET", "/")
        .header("x-user", "alice")
        .port(1)
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "GET", "/")
        .header("x-user", "alice")
        .src("1.2.3.4")
        .allowed(ps));
    let principal = policy(json!({"name": "p", "action": "ALLOW", "rules": [{"when": [
        {"key": "source.principal", "values": ["cluster.local/ns/foo/*"]}]}]}));
    assert!(Req::tcp(Some(SLEEP)).allowed(std::slice::from_ref(&principal)));
    assert!(!Req::tcp(Some(ADMIN)).allowed(&[principal]));
}

#[test]
fn unknown_when_key_fails_closed() {
    let allow = policy(
        json!({"name": "a", "action": "ALLOW", "rules": [{"when": [{"key": "bogus.key", "values": ["x"]}]}]}),
    );
    assert!(!Req::tcp(Some(SLEEP)).allowed(&[allow]));
    let deny = policy(
        json!({"name": "d", "action": "DENY", "rules": [{"when": [{"key": "bogus.key", "values": ["x"]}]}]}),
    );
    assert!(!Req::tcp(Some(SLEEP)).allowed(&[deny]));
    // No JWT yet: request.auth.principal is absent, so an ALLOW on it never matches.
    let jwt = policy(
        json!({"name": "j", "action": "ALLOW", "rules": [{"when": [{"key": "request.auth.principal", "values": ["*"]}]}]}),
    );
    assert!(!Req::http(Some(SLEEP), "GET", "/").allowed(&[jwt]));
}

#[test]
fn audit_is_recorded_but_does_not_decide() {
    let audit = policy(
        json!({"name": "foo/audit-get", "action": "AUDIT", "rules": [{"to": [{"methods": ["GET"]}]}]}),
    );
    let deny = policy(
        json!({"name": "foo/deny-admin", "action": "DENY", "rules": [{"from": [{"namespaces": ["admin"]}]}]}),
    );
    assert_eq!(
        Req::http(Some(SLEEP), "GET", "/").eval(&[audit.clone(), deny.clone()]),
        Verdict::Allow {
            audited_by: vec!["foo/audit-get".into()]
        }
    );
    assert_eq!(
        Req::http(Some(ADMIN), "GET", "/").eval(&[audit, deny]),
        Verdict::Deny {
            policy: "foo/deny-admin".into(),
            audited_by: vec!["foo/audit-get".into()]
        }
    );
}

#[test]
fn rule_parts_are_anded() {
    let p = AuthorizationPolicy {
        name: "p".into(),
        action: AuthzAction::Allow,
        rules: vec![AuthzRule {
            from: vec![AuthzSource {
                namespaces: vec!["foo".into()],
                ..Default::default()
            }],
            to: vec![AuthzOperation {
                methods: vec!["GET".into()],
                ..Default::default()
            }],
            when: vec![AuthzCondition {
                key: "request.headers[x-env]".into(),
                values: vec!["prod".into()],
                not_values: vec![],
            }],
        }],
    };
    let ps = std::slice::from_ref(&p);
    assert!(Req::http(Some(SLEEP), "GET", "/")
        .header("x-env", "prod")
        .allowed(ps));
    assert!(!Req::http(Some(ADMIN), "GET", "/")
        .header("x-env", "prod")
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "PUT", "/")
        .header("x-env", "prod")
        .allowed(ps));
    assert!(!Req::http(Some(SLEEP), "GET", "/")
        .header("x-env", "dev")
        .allowed(ps));
}

#[test]
fn peer_authentication_modes_and_port_overrides() {
    let pa = PeerAuthentication {
        mode: MtlsMode::Strict,
        port_modes: BTreeMap::from([
            ("8080".into(), MtlsMode::Permissive),
            ("9090".into(), MtlsMode::Disable),
        ]),
    };
    assert!(admit_transport(&pa, 9080, false).is_err());
    assert!(admit_transport(&pa, 9080, true).is_ok());
    assert!(admit_transport(&pa, 8080, false).is_ok());
    assert!(admit_transport(&pa, 8080, true).is_ok());
    assert!(admit_transport(&pa, 9090, false).is_ok());
    assert_eq!(effective_principal(&pa, 9090, Some(SLEEP)), None);
    assert_eq!(effective_principal(&pa, 9080, Some(SLEEP)), Some(SLEEP));
    let default = PeerAuthentication::default();
    assert_eq!(mtls_mode(&default, 1), MtlsMode::Permissive);
    assert!(admit_transport(&default, 1, false).is_ok());
}

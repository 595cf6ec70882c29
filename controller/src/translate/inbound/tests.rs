//! RBAC shapes istiod generates (pilot/pkg/security/authz/builder testdata)
//! and the safe-side approximations.

use serde_json::{json, Value};

use super::*;
use crate::xds::Resource;

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// A one-chain inbound listener whose HCM has `http_filters`.
fn chain(http_filters: Value) -> FilterChain {
    let v = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "filter_chains": [{"name": "virtualInbound-catchall-http", "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": HCM, "stat_prefix": "x", "route_config": {"name": "x"},
                             "http_filters": http_filters}}]}]
    });
    match Resource::from_json(&v, "test listener").expect("decodes") {
        Resource::Listener(l) => l.filter_chains[0].clone(),
        other => panic!("not a listener: {other:?}"),
    }
}

fn rbac(action: &str, policies: Value) -> Value {
    json!({"name": "envoy.filters.http.rbac",
           "typed_config": {"@type": HTTP_RBAC, "rules": {"action": action, "policies": policies}}})
}

fn authz(filters: Vec<Value>) -> Result<Vec<AuthorizationPolicy>, String> {
    let c = chain(Value::Array(filters));
    authorization(&[(None, &c)], "default/pod")
}

fn expect(v: Value) -> Vec<AuthorizationPolicy> {
    serde_json::from_value(v).expect("expected policies parse")
}

fn any_id() -> Value {
    json!([{"and_ids": {"ids": [{"any": true}]}}])
}

fn auth(m: Value) -> Value {
    json!({"authenticated": {"principal_name": m}})
}

fn header(name: &str, m: Value) -> Value {
    let mut h = json!({"name": name});
    for (k, v) in m.as_object().expect("object") {
        h[k] = v.clone();
    }
    json!({"header": h})
}

#[test]
fn istio_policy_names_parse() {
    assert_eq!(
        istio_policy_name("ns[default]-policy[reviews-viewer]-rule[2]"),
        Some(("default/reviews-viewer".into(), 2))
    );
    assert_eq!(istio_policy_name("custom"), None);
    assert_eq!(istio_policy_name("ns[]-policy[x]-rule[0]"), None);
}

/// Every field istiod generates (its all-fields golden, the parts NodeConfig
/// has), back to Istio's form.
#[test]
fn every_istio_field_maps_back() {
    let h_or = |name: &str, ms: Vec<Value>| json!({"or_rules": {"rules": ms.into_iter().map(|m| header(name, m)).collect::<Vec<_>>()}});
    let path = |m: Value| json!({"url_path": {"path": m}});
    let cidr = |k: &str, a: &str, l: u32| json!({k: {"address_prefix": a, "prefix_len": l}});
    let re = |r: &str| json!({"safe_regex": {"regex": r}});
    let policies = json!({"ns[foo]-policy[httpbin-1]-rule[0]": {
        "permissions": [{"and_rules": {"rules": [
            h_or(":authority", vec![
                json!({"string_match": {"exact": "exact.com", "ignore_case": true}}),
                json!({"string_match": {"suffix": ".suffix.com", "ignore_case": true}}),
                json!({"string_match": {"prefix": "prefix.", "ignore_case": true}}),
                json!({"present_match": true})]),
            h_or(":method", vec![
                json!({"exact_match": "method"}), json!({"prefix_match": "method-prefix-"}),
                json!({"suffix_match": "-suffix-method"}), json!({"present_match": true})]),
            {"or_rules": {"rules": [path(json!({"exact": "/exact"})), path(json!({"prefix": "/prefix/"})),
                                    path(json!({"suffix": "/suffix"})), path(re(".+"))]}},
            {"not_rule": {"or_rules": {"rules": [path(json!({"exact": "/not-exact"})),
                                                 path(json!({"prefix": "/not-prefix/"}))]}}},
            {"or_rules": {"rules": [{"destination_port": 80}, {"destination_port": 90}]}},
            {"not_rule": {"or_rules": {"rules": [{"destination_port": 8000}, {"destination_port": 9000}]}}},
            {"or_rules": {"rules": [cidr("destination_ip", "10.10.10.10", 32),
                                    cidr("destination_ip", "192.168.10.0", 24)]}}
        ]}}],
        "principals": [{"and_ids": {"ids": [
            {"or_ids": {"ids": [auth(json!({"exact": "spiffe://principal"})),
                                auth(json!({"prefix": "spiffe://principal-prefix-"})),
                                auth(re("spiffe://.*-suffix-principal")), auth(re(".+"))]}},
            {"not_id": {"or_ids": {"ids": [auth(json!({"exact": "spiffe://not-principal"}))]}}},
            {"or_ids": {"ids": [auth(re(".*/ns/ns/.*")), auth(re(".*/ns/ns-prefix-.*/.*")),
                                auth(re(".*/ns/.*-ns-suffix/.*")), auth(re(".*/ns/.*/.*"))]}},
            {"not_id": {"or_ids": {"ids": [auth(re(".*/ns/not-ns/.*"))]}}},
            {"or_ids": {"ids": [cidr("remote_ip", "1.2.3.4", 32), cidr("remote_ip", "5.6.0.0", 16)]}},
            {"or_ids": {"ids": [cidr("direct_remote_ip", "1.2.3.4", 32),
                                cidr("direct_remote_ip", "5.6.0.0", 16)]}},
            {"not_id": {"or_ids": {"ids": [cidr("direct_remote_ip", "9.0.0.1", 32)]}}},
            {"or_ids": {"ids": [
                header("X-header", json!({"safe_regex_match": {"regex": "^header$|^header,.*|.*,header,.*|.*,header$"}})),
                header("X-header", json!({"safe_regex_match": {"regex": "^header-prefix-.*$|^header-prefix-.*,.*|.*,header-prefix-.*,.*|.*,header-prefix-.*$"}})),
                header("X-header", json!({"present_match": true}))]}},
            {"not_id": {"or_ids": {"ids": [
                header("X-header", json!({"safe_regex_match": {"regex": "^not-header$|^not-header,.*|.*,not-header,.*|.*,not-header$"}}))]}}},
            {"or_ids": {"ids": [{"metadata": {"filter": "istio_authn",
                "path": [{"key": "request.auth.principal"}],
                "value": {"string_match": {"exact": "requestPrincipals"}}}}]}},
            {"or_ids": {"ids": [{"metadata": {"filter": "istio_authn",
                "path": [{"key": "request.auth.claims"}, {"key": "iss"}],
                "value": {"list_match": {"one_of": {"string_match": {"prefix": "iss-prefix-"}}}}}}]}}
        ]}}]
    }});
    let got = authz(vec![rbac("ALLOW", policies)]).expect("maps");
    let want = expect(
        json!([{"name": "foo/httpbin-1", "action": "ALLOW", "rules": [{
        "from": [{
            "principals": ["principal", "principal-prefix-*", "*-suffix-principal", "*"],
            "notPrincipals": ["not-principal"],
            "namespaces": ["ns", "ns-prefix-*", "*-ns-suffix", "*"],
            "notNamespaces": ["not-ns"],
            "ipBlocks": ["1.2.3.4", "5.6.0.0/16"],
            "notIpBlocks": ["9.0.0.1"]}],
        "to": [{
            "hosts": ["exact.com", "*.suffix.com", "prefix.*", "*"],
            "methods": ["method", "method-prefix-*", "*-suffix-method", "*"],
            "paths": ["/exact", "/prefix/*", "*/suffix", "*"],
            "notPaths": ["/not-exact", "/not-prefix/*"],
            "ports": [80, 90]}],
        "when": [
            {"key": "destination.port", "notValues": ["8000", "9000"]},
            {"key": "destination.ip", "values": ["10.10.10.10", "192.168.10.0/24"]},
            {"key": "remote.ip", "values": ["1.2.3.4", "5.6.0.0/16"]},
            {"key": "request.headers[x-header]", "values": ["header", "header-prefix-*", "*"]},
            {"key": "request.headers[x-header]", "notValues": ["not-header"]},
            {"key": "request.auth.principal", "values": ["requestPrincipals"]},
            {"key": "request.auth.claims[iss]", "values": ["iss-prefix-*"]}
        ]}]}]),
    );
    assert_eq!(
        got,
        want,
        "{}",
        serde_json::to_string_pretty(&got).unwrap_or_default()
    );
}

/// Several `from` and `to` entries of one rule: istiod's permission and
/// principal lists become the rule's `to` and `from` lists.
#[test]
fn several_sources_and_operations_stay_one_rule() {
    let policies = json!({"ns[default]-policy[p]-rule[0]": {
        "permissions": [
            {"and_rules": {"rules": [{"or_rules": {"rules": [header(":method", json!({"exact_match": "GET"}))]}}]}},
            {"and_rules": {"rules": [{"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/api/"}}}]}}]}}],
        "principals": [
            {"and_ids": {"ids": [{"or_ids": {"ids": [auth(json!({"exact": "spiffe://cluster.local/ns/a/sa/x"}))]}}]}},
            {"and_ids": {"ids": [{"or_ids": {"ids": [auth(json!({"safe_regex": {"regex": ".*/ns/b/.*"}}))]}}]}}]
    }});
    let got = authz(vec![rbac("ALLOW", policies)]).expect("maps");
    assert_eq!(
        got,
        expect(json!([{"name": "default/p", "action": "ALLOW", "rules": [{
            "from": [{"principals": ["cluster.local/ns/a/sa/x"]}, {"namespaces": ["b"]}],
            "to": [{"methods": ["GET"]}, {"paths": ["/api/*"]}]}]}]))
    );
}

/// A matcher NodeConfig cannot express (here `contains`, also under a NOT):
/// a DENY rule loses the matcher (denies more), an ALLOW rule the alternative
/// (allows less; a policy left without rules allows nothing).
#[test]
fn inexpressible_matchers_fall_on_the_safe_side() {
    let contains = json!({"url_path": {"path": {"contains": "/secret"}}});
    let post = header(":method", json!({"exact_match": "POST"}));
    for (name, m) in [
        ("plain", contains.clone()),
        ("negated", json!({"not_rule": contains.clone()})),
    ] {
        let policies = json!({"ns[default]-policy[p]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [m, post.clone()]}}],
            "principals": any_id()}});
        let deny = authz(vec![rbac("DENY", policies.clone())]).expect("maps");
        assert_eq!(
            deny,
            expect(json!([{"name": "default/p", "action": "DENY",
                           "rules": [{"to": [{"methods": ["POST"]}]}]}])),
            "{name}"
        );
        let allow = authz(vec![rbac("ALLOW", policies)]).expect("maps");
        assert_eq!(
            allow,
            expect(json!([{"name": "default/p", "action": "ALLOW", "rules": []}])),
            "{name}"
        );
    }
    // Only the alternative that needs it goes: an OR keeps its other branch.
    let policies = json!({"ns[default]-policy[p]-rule[0]": {
        "permissions": [{"or_rules": {"rules": [contains, post]}}],
        "principals": any_id()}});
    assert_eq!(
        authz(vec![rbac("ALLOW", policies.clone())]).expect("maps"),
        expect(json!([{"name": "default/p", "action": "ALLOW",
                       "rules": [{"to": [{"methods": ["POST"]}]}]}]))
    );
    // ...while in a DENY the OR becomes "always".
    assert_eq!(
        authz(vec![rbac("DENY", policies)]).expect("maps"),
        expect(json!([{"name": "default/p", "action": "DENY", "rules": [{}]}]))
    );
}

/// istiod's ALLOW policy without rules ("allow nothing") is an explicit
/// never-matching RBAC policy: an ALLOW policy without rules.
#[test]
fn allow_nothing_matches_nothing() {
    let policies = json!({"ns[default]-policy[allow-nothing]-rule[0]": {
        "permissions": [{"not_rule": {"any": true}}],
        "principals": [{"not_id": {"any": true}}]}});
    assert_eq!(
        authz(vec![rbac("ALLOW", policies)]).expect("maps"),
        expect(json!([{"name": "default/allow-nothing", "action": "ALLOW", "rules": []}]))
    );
}

/// LOG is AUDIT; CUSTOM's shadow rules (ext_authz) are denied; dry-run shadow
/// rules never decide and are left out; foreign policy names keep their name.
#[test]
fn audit_custom_dry_run_and_foreign_names() {
    let rule = |path: &str| {
        json!({"permissions": [{"and_rules": {"rules": [{"url_path": {"path": {"exact": path}}}]}}],
               "principals": any_id()})
    };
    let filters = vec![
        json!({"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC,
            "shadow_rules": {"action": "ALLOW", "policies": {
                "istio-ext-authz-ns[default]-policy[ext]-rule[0]": rule("/ext")}},
            "shadow_rules_stat_prefix": "istio_ext_authz_"}}),
        json!({"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC,
            "shadow_rules": {"action": "DENY", "policies": {
                "ns[default]-policy[dry]-rule[0]": rule("/dry")}},
            "shadow_rules_stat_prefix": "istio_dry_run_deny_"}}),
        rbac(
            "LOG",
            json!({"ns[default]-policy[audit]-rule[0]": rule("/audit")}),
        ),
        rbac("DENY", json!({"custom-policy": rule("/custom")})),
    ];
    assert_eq!(
        authz(filters).expect("maps"),
        expect(json!([
            {"name": "default/audit", "action": "AUDIT", "rules": [{"to": [{"paths": ["/audit"]}]}]},
            {"name": "default/ext", "action": "DENY", "rules": [{"to": [{"paths": ["/ext"]}]}]},
            {"name": "envoy/custom-policy", "action": "DENY", "rules": [{"to": [{"paths": ["/custom"]}]}]}
        ]))
    );
}

/// Envoy requires every enforcing ALLOW filter to pass; NodeConfig's ALLOW
/// policies are alternatives: two ALLOW filters are refused.
#[test]
fn two_allow_filters_are_refused() {
    let p = |n: &str| {
        json!({format!("ns[default]-policy[{n}]-rule[0]"): {
        "permissions": [{"any": true}], "principals": any_id()}})
    };
    let err = authz(vec![rbac("ALLOW", p("a")), rbac("ALLOW", p("b"))]).expect_err("refused");
    assert!(err.contains("more than one enforcing ALLOW"), "{err}");
}

#[test]
fn regex_forms() {
    assert_eq!(regex_value("foo"), Some("foo".into()));
    assert_eq!(regex_value("foo.*"), Some("foo*".into()));
    assert_eq!(regex_value(".*foo"), Some("*foo".into()));
    assert_eq!(regex_value(".*"), Some("*".into()));
    assert_eq!(regex_value("a\\.b"), Some("a.b".into()));
    assert_eq!(
        regex_value("a.b"),
        None,
        "an unescaped dot is any character"
    );
    assert_eq!(regex_value(".*foo.*"), None, "contains has no Istio form");
    assert_eq!(namespace_value("default"), Some("default".into()));
    assert_eq!(namespace_value("ns-prefix-.*"), Some("ns-prefix-*".into()));
    assert_eq!(namespace_value("a|b"), None);
}

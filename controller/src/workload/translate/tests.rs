use super::*;
use crate::workload::proto::security::{Group, Match, Presence, Rules, StringMatch};
use crate::workload::proto::workload::{NetworkAddress, Port, PortList};

fn exact(s: &str) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Presence(Presence {})),
    }
}

fn group(rules: Vec<Vec<Match>>) -> Group {
    Group {
        rules: rules.into_iter().map(|matches| Rules { matches }).collect(),
    }
}

fn authz(
    name: &str,
    ns: &str,
    scope: sec::Scope,
    action: sec::Action,
    groups: Vec<Group>,
) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        groups,
    }
}

fn static_strict() -> sec::Authorization {
    authz(
        "istio_converted_static_strict",
        "istio-system",
        sec::Scope::WorkloadSelector,
        sec::Action::Deny,
        vec![group(vec![vec![Match {
            not_principals: vec![presence()],
            ..Match::default()
        }]])],
    )
}

#[test]
fn istiods_strict_forms_become_peer_authentication() {
    let p = convert_authorization(&static_strict()).expect("converts");
    assert_eq!(p.key, "istio-system/istio_converted_static_strict");
    assert_eq!(p.effect, Effect::RequireMtls { ports: vec![] });
    // Per-port STRICT of a converted PeerAuthentication: one group per port.
    let per_port = authz(
        "converted_peer_authentication_pa",
        "default",
        sec::Scope::WorkloadSelector,
        sec::Action::Deny,
        vec![group(vec![vec![Match {
            not_principals: vec![presence()],
            destination_ports: vec![9080],
            ..Match::default()
        }]])],
    );
    let p = convert_authorization(&per_port).expect("converts");
    assert_eq!(p.effect, Effect::RequireMtls { ports: vec![9080] });
    // STRICT with a PERMISSIVE port (rules AND-ed): a DENY rule, same meaning.
    let exempt = authz(
        "converted_peer_authentication_pa",
        "default",
        sec::Scope::WorkloadSelector,
        sec::Action::Deny,
        vec![group(vec![
            vec![Match {
                not_principals: vec![presence()],
                ..Match::default()
            }],
            vec![Match {
                not_destination_ports: vec![8080],
                ..Match::default()
            }],
        ])],
    );
    let Effect::Policy(p) = convert_authorization(&exempt).expect("converts").effect else {
        panic!("not a policy");
    };
    assert_eq!(p.action, AuthzAction::Deny);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].from[0].not_principals, ["*"]);
    assert_eq!(
        p.rules[0].when,
        [AuthzCondition {
            key: "destination.port".into(),
            values: vec![],
            not_values: vec!["8080".into()],
        }]
    );
}

#[test]
fn an_authorization_policy_rule_becomes_from_to_when() {
    // What istiod makes of `to: [{ports: [9080]}], from: [{principals: [..]},
    // {namespaces: [test-*]}], when: [{key: source.ip, values: [10.0.0.0/8]}]`.
    let a = authz(
        "allow-productpage",
        "default",
        sec::Scope::Namespace,
        sec::Action::Allow,
        vec![group(vec![
            vec![Match {
                destination_ports: vec![9080],
                ..Match::default()
            }],
            vec![
                Match {
                    principals: vec![exact("cluster.local/ns/default/sa/bookinfo-productpage")],
                    ..Match::default()
                },
                Match {
                    namespaces: vec![StringMatch {
                        match_type: Some(MatchType::Prefix("test-".into())),
                    }],
                    ..Match::default()
                },
            ],
            vec![Match {
                source_ips: vec![sec::Address {
                    address: vec![10, 0, 0, 0],
                    length: 8,
                }],
                ..Match::default()
            }],
        ])],
    );
    let p = convert_authorization(&a).expect("converts");
    assert_eq!(p.scope, Scope::Namespace);
    let Effect::Policy(p) = p.effect else {
        panic!("not a policy")
    };
    assert_eq!(p.name, "default/allow-productpage");
    let rule = &p.rules[0];
    assert_eq!(rule.to[0].ports, [9080]);
    assert_eq!(rule.from.len(), 2);
    assert_eq!(
        rule.from[0].principals,
        ["cluster.local/ns/default/sa/bookinfo-productpage"]
    );
    assert_eq!(rule.from[1].namespaces, ["test-*"]);
    assert_eq!(rule.when[0].key, "source.ip");
    assert_eq!(rule.when[0].values, ["10.0.0.0/8"]);
    // A group that can never match (a rule without matches) adds nothing;
    // an ALLOW without groups denies, as in Istio.
    let never = authz(
        "n",
        "default",
        sec::Scope::Global,
        sec::Action::Allow,
        vec![group(vec![vec![]])],
    );
    let Effect::Policy(p) = convert_authorization(&never).expect("converts").effect else {
        panic!("not a policy")
    };
    assert!(p.rules.is_empty());
}

#[test]
fn what_a_rule_cannot_express_is_an_error_naming_the_group() {
    let mixed = |ports: Vec<u32>| Match {
        principals: vec![exact("cluster.local/ns/a/sa/b")],
        destination_ports: ports,
        ..Match::default()
    };
    let a = authz(
        "x",
        "default",
        sec::Scope::Namespace,
        sec::Action::Deny,
        vec![group(vec![vec![mixed(vec![80]), mixed(vec![81])]])],
    );
    let e = convert_authorization(&a).expect_err("two multi-field matches OR-ed");
    assert!(e.contains("groups[0]") && e.contains("rules[0]"), "{e}");
    let bad_ip = authz(
        "x",
        "default",
        sec::Scope::Namespace,
        sec::Action::Deny,
        vec![group(vec![vec![Match {
            source_ips: vec![sec::Address {
                address: vec![1, 2, 3],
                length: 8,
            }],
            ..Match::default()
        }]])],
    );
    let e = convert_authorization(&bad_ip).expect_err("3-byte address");
    assert!(e.contains("3 bytes"), "{e}");
    let e = convert_address(&wl::Address { r#type: None }).expect_err("empty");
    assert!(e.contains("neither"), "{e}");
}

fn inventory() -> Inventory {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo");
    Inventory::load(&dir, Some("node-1")).expect("bookinfo inventory")
}

fn workload(
    name: &str,
    ip: [u8; 4],
    node: &str,
    tunnel: wl::TunnelProtocol,
    target: u32,
    policies: &[&str],
) -> AddressEntry {
    let w = wl::Workload {
        uid: format!("Kubernetes//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: tunnel as i32,
        service_account: "bookinfo-reviews".into(),
        node: node.into(),
        services: [(
            "default/reviews.default.svc.cluster.local".to_string(),
            PortList {
                ports: vec![Port {
                    service_port: 9080,
                    target_port: target,
                }],
            },
        )]
        .into_iter()
        .collect(),
        authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
        ..wl::Workload::default()
    };
    convert_address(&wl::Address {
        r#type: Some(AddressType::Workload(w)),
    })
    .expect("workload converts")
    .entry
}

#[test]
fn services_endpoints_and_policies_per_pod() {
    let inventory = inventory();
    let mut state = WorkloadState::default();
    let svc = wl::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        hostname: "reviews.default.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 20],
        }],
        ports: vec![Port {
            service_port: 9080,
            target_port: 0,
        }],
        ..wl::Service::default()
    };
    let svc = convert_address(&wl::Address {
        r#type: Some(AddressType::Service(svc)),
    })
    .expect("service converts")
    .entry;
    state
        .addresses
        .insert("default/reviews.default.svc.cluster.local".into(), svc);
    let strict = "istio-system/istio_converted_static_strict";
    for (name, entry) in [
        (
            "v1",
            workload(
                "reviews-v1-86896b7648-bqzl6",
                [10, 244, 1, 13],
                "node-1",
                wl::TunnelProtocol::Hbone,
                9080,
                &[strict],
            ),
        ),
        (
            "v2",
            workload(
                "reviews-v2-remote",
                [10, 244, 2, 7],
                "node-2",
                wl::TunnelProtocol::Hbone,
                9080,
                &[],
            ),
        ),
        (
            "v3",
            workload(
                "reviews-v3-plain",
                [10, 244, 3, 9],
                "node-3",
                wl::TunnelProtocol::None,
                9081,
                &[],
            ),
        ),
    ] {
        state.addresses.insert(name.into(), entry);
    }
    state.authorizations.insert(
        strict.into(),
        convert_authorization(&static_strict()).expect("converts"),
    );
    let deny = authz(
        "deny-test",
        "default",
        sec::Scope::Namespace,
        sec::Action::Deny,
        vec![group(vec![vec![Match {
            namespaces: vec![exact("test")],
            ..Match::default()
        }]])],
    );
    state.authorizations.insert(
        "default/deny-test".into(),
        convert_authorization(&deny).expect("converts"),
    );
    let config = build(&inventory, &state).expect("builds");
    config.validate().expect("valid");
    assert_eq!(config.services.len(), 1);
    let s = &config.services[0];
    assert_eq!(s.vips, ["10.96.0.20"]);
    // Two of three listen on 9080: the port's target; the third's own port by name.
    assert_eq!(s.ports[0].target_port, None);
    assert_eq!(s.ports[0].name, "p9080");
    let ep = |ip: &str| s.endpoints.iter().find(|e| e.address == ip).expect(ip);
    assert_eq!(ep("10.244.1.13").node, "node-1");
    assert_eq!(
        ep("10.244.1.13").hbone,
        None,
        "a local pod is never tunnelled to"
    );
    assert_eq!(ep("10.244.1.13").labels["version"], "v1");
    assert_eq!(ep("10.244.2.7").hbone, Some(true));
    assert_eq!(ep("10.244.2.7").node, "node-2");
    assert_eq!(ep("10.244.3.9").hbone, Some(false));
    assert_eq!(ep("10.244.3.9").ports["p9080"], 9081);
    assert_eq!(ep("10.244.3.9").service_account, "bookinfo-reviews");
    // reviews-v1: STRICT and the namespace DENY; the four other pods share one policy.
    assert_eq!(
        config.inbound_policies.len(),
        2,
        "{:#?}",
        config.inbound_policies
    );
    let policy_of = |pod: &str| {
        let name = config
            .pods
            .iter()
            .find(|p| p.name.starts_with(pod))
            .and_then(|p| p.inbound_policy.clone())
            .expect(pod);
        config
            .inbound_policies
            .iter()
            .find(|p| p.name == name)
            .expect("named policy")
            .clone()
    };
    let v1 = policy_of("reviews-v1");
    assert_eq!(v1.peer_authentication.mode, MtlsMode::Strict);
    assert_eq!(v1.authorization.len(), 1);
    assert_eq!(v1.authorization[0].name, "default/deny-test");
    let details = policy_of("details");
    assert_eq!(details.peer_authentication.mode, MtlsMode::Permissive);
    assert_eq!(details.name, policy_of("ratings").name);
}

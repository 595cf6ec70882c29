//! `--xds-api workload`: the adapter binary against the fake ADS server
//! (`tests/support/ads.rs`, a real tonic server speaking delta ADS) serving
//! Istio's workload API types for the adapter's ztunnel node id, pushing to the
//! real dpu-proxy binary. Inventory: the Bookinfo node and pods.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpumesh_api::config::MtlsMode;
use dpumesh_api::NodeConfig;
use dpumesh_controller::workload::proto::security::{
    self as sec, string_match::MatchType, Group, Match, Presence, Rules, StringMatch,
};
use dpumesh_controller::workload::proto::workload::{
    self as wl, address::Type, NetworkAddress, Port, PortList,
};
use dpumesh_controller::workload::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use support::ads::{FakeAds, Recorded};
use support::{workspace_binary, DpuProxy, Reaped};

const NODE_ID: &str =
    "ztunnel~10.0.0.5~dpumesh-adapter-x1.istio-system~istio-system.svc.cluster.local";
const STRICT: &str = "istio-system/istio_converted_static_strict";
const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo")
}

fn any(type_url: &str, m: &impl Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn service(host: &str, vip: [u8; 4], port: u32) -> (String, Any) {
    let s = wl::Service {
        name: host.split('.').next().unwrap_or(host).into(),
        namespace: "default".into(),
        hostname: host.into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ports: vec![Port {
            service_port: port,
            target_port: port,
        }],
        ..wl::Service::default()
    };
    (
        format!("default/{host}"),
        any(
            ADDRESS_TYPE,
            &wl::Address {
                r#type: Some(Type::Service(s)),
            },
        ),
    )
}

fn workload(
    name: &str,
    address: Vec<u8>,
    node: &str,
    hbone: bool,
    host: &str,
    port: u32,
    policies: &[&str],
) -> (String, Any) {
    let uid = format!("Kubernetes//Pod/default/{name}");
    let w = wl::Workload {
        uid: uid.clone(),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![address],
        tunnel_protocol: if hbone {
            wl::TunnelProtocol::Hbone as i32
        } else {
            wl::TunnelProtocol::None as i32
        },
        service_account: "bookinfo-reviews".into(),
        node: node.into(),
        services: [(
            format!("default/{host}"),
            PortList {
                ports: vec![Port {
                    service_port: port,
                    target_port: port,
                }],
            },
        )]
        .into_iter()
        .collect(),
        authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
        ..wl::Workload::default()
    };
    (
        uid,
        any(
            ADDRESS_TYPE,
            &wl::Address {
                r#type: Some(Type::Workload(w)),
            },
        ),
    )
}

fn authz(
    ns: &str,
    name: &str,
    scope: sec::Scope,
    action: sec::Action,
    matches: Vec<Vec<Match>>,
) -> (String, Any) {
    let a = sec::Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        groups: vec![Group {
            rules: matches
                .into_iter()
                .map(|matches| Rules { matches })
                .collect(),
        }],
    };
    (format!("{ns}/{name}"), any(AUTHORIZATION_TYPE, &a))
}

fn static_strict() -> (String, Any) {
    authz(
        "istio-system",
        "istio_converted_static_strict",
        sec::Scope::WorkloadSelector,
        sec::Action::Deny,
        vec![vec![Match {
            not_principals: vec![StringMatch {
                match_type: Some(MatchType::Presence(Presence {})),
            }],
            ..Match::default()
        }]],
    )
}

fn deny_from_namespace(ns: &str) -> (String, Any) {
    authz(
        "default",
        "deny-test",
        sec::Scope::Namespace,
        sec::Action::Deny,
        vec![vec![Match {
            namespaces: vec![StringMatch {
                match_type: Some(MatchType::Exact(ns.into())),
            }],
            ..Match::default()
        }]],
    )
}

fn addresses() -> Vec<(String, Any)> {
    vec![
        service(REVIEWS, [10, 96, 0, 20], 9080),
        workload(
            "reviews-v1-86896b7648-bqzl6",
            vec![10, 244, 1, 13],
            "node-1",
            true,
            REVIEWS,
            9080,
            &[STRICT],
        ),
        workload(
            "reviews-v3-remote",
            vec![10, 244, 2, 7],
            "node-2",
            true,
            REVIEWS,
            9080,
            &[],
        ),
        workload(
            "reviews-plain",
            vec![10, 244, 3, 9],
            "node-3",
            false,
            REVIEWS,
            9080,
            &[],
        ),
    ]
}

struct Node {
    ads: FakeAds,
    proxy: DpuProxy,
    adapter: Reaped,
}

impl Node {
    async fn start() -> Node {
        let ads = FakeAds::new();
        ads.set(NODE_ID, ADDRESS_TYPE, addresses());
        ads.set(
            NODE_ID,
            AUTHORIZATION_TYPE,
            vec![static_strict(), deny_from_namespace("test")],
        );
        let xds_addr = ads.serve().await;
        let proxy = DpuProxy::start().await;
        let fixture = fixture();
        let adapter = Reaped(
            Command::new(workspace_binary("dpumesh-controller"))
                .args(["adapter", "--xds-api", "workload", "--xds-addr", &xds_addr])
                .args(["--node", "node-1", "--proxy-addr", &proxy.mgmt_addr])
                .args(["--inventory-dir", &fixture.display().to_string()])
                .args([
                    "--pod-name",
                    "dpumesh-adapter-x1",
                    "--pod-namespace",
                    "istio-system",
                ])
                .args(["--instance-ip", "10.0.0.5"])
                .env("DPUMESH_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn adapter"),
        );
        Node {
            ads,
            proxy,
            adapter,
        }
    }

    /// The served config once `pred` holds for it.
    async fn config_where(
        &mut self,
        what: &str,
        pred: impl Fn(&NodeConfig) -> bool,
    ) -> (u64, NodeConfig) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let (v, Some(c)) = self.proxy.config().await {
                if pred(&c) {
                    return (v, c);
                }
            }
            if let Ok(Some(status)) = self.adapter.0.try_wait() {
                panic!("adapter exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dpu-proxy never served a config with {what}; log: {:#?}",
                self.ads.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first request answering a response sent after `after` requests were logged.
    async fn reply(&self, type_url: &str, after: usize) -> Recorded {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.ads.log();
            if let Some(r) = log
                .iter()
                .skip(after)
                .find(|r| r.type_url == type_url && !r.response_nonce.is_empty())
            {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no reply for {type_url}: {log:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn policy_of<'a>(
    c: &'a NodeConfig,
    pod_prefix: &str,
) -> Option<&'a dpumesh_api::config::InboundPolicy> {
    let name = c
        .pods
        .iter()
        .find(|p| p.name.starts_with(pod_prefix))
        .and_then(|p| p.inbound_policy.as_ref())?;
    c.inbound_policies.iter().find(|p| &p.name == name)
}

#[tokio::test]
async fn workload_api_gives_services_endpoints_and_inbound_policies() {
    let mut node = Node::start().await;
    let (_, c) = node
        .config_where("the reviews service", |c| {
            c.services.iter().any(|s| s.hostname == REVIEWS)
        })
        .await;
    // One stream, as ztunnel: both types subscribed as wildcards with the node id.
    let log = node.ads.log();
    for t in [ADDRESS_TYPE, AUTHORIZATION_TYPE] {
        let first = log
            .iter()
            .find(|r| r.type_url == t && r.response_nonce.is_empty())
            .unwrap_or_else(|| panic!("no subscription to {t}: {log:#?}"));
        assert_eq!(first.node_id, NODE_ID);
        assert!(first.resource_names.is_empty(), "wildcard: {first:?}");
        assert!(
            log.iter().any(|r| r.type_url == t && r.is_ack()),
            "{log:#?}"
        );
    }
    assert!(log.iter().all(|r| !r.is_nack()), "{log:#?}");
    assert!(c.route_tables.is_empty() && c.clusters.is_empty());
    let reviews = c
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .expect("reviews");
    assert_eq!(reviews.vips, ["10.96.0.20"]);
    let ep = |ip: &str| {
        reviews
            .endpoints
            .iter()
            .find(|e| e.address == ip)
            .expect(ip)
    };
    assert_eq!(
        (ep("10.244.1.13").node.as_str(), ep("10.244.1.13").hbone),
        ("node-1", None)
    );
    assert_eq!(
        (ep("10.244.2.7").node.as_str(), ep("10.244.2.7").hbone),
        ("node-2", Some(true))
    );
    assert_eq!(ep("10.244.3.9").hbone, Some(false));
    assert_eq!(ep("10.244.2.7").service_account, "bookinfo-reviews");
    // reviews-v1 selected the converted STRICT policy; every default pod has the DENY.
    let v1 = policy_of(&c, "reviews-v1").expect("reviews-v1 policy");
    assert_eq!(v1.peer_authentication.mode, MtlsMode::Strict);
    assert_eq!(v1.authorization[0].name, "default/deny-test");
    assert_eq!(v1.authorization[0].rules[0].from[0].namespaces, ["test"]);
    let details = policy_of(&c, "details").expect("details policy");
    assert_eq!(details.peer_authentication.mode, MtlsMode::Permissive);
    assert_eq!(
        details.name,
        policy_of(&c, "ratings").expect("ratings").name,
        "stored once"
    );
    assert_eq!(c.inbound_policies.len(), 2);

    // The DENY removed: only reviews-v1 keeps a policy (STRICT).
    node.ads
        .set(NODE_ID, AUTHORIZATION_TYPE, vec![static_strict()]);
    let (_, c) = node
        .config_where("no DENY", |c| c.inbound_policies.len() == 1)
        .await;
    assert!(policy_of(&c, "details").is_none());
    assert!(policy_of(&c, "reviews-v1").is_some_and(|p| p.authorization.is_empty()));

    // A workload added: a new endpoint; only it is sent (delta).
    let mut more = addresses();
    more.push(workload(
        "reviews-v4",
        vec![10, 244, 2, 8],
        "node-2",
        true,
        REVIEWS,
        9080,
        &[],
    ));
    node.ads.set(NODE_ID, ADDRESS_TYPE, more.clone());
    node.config_where("the fourth endpoint", |c| {
        c.services
            .iter()
            .any(|s| s.endpoints.iter().any(|e| e.address == "10.244.2.8"))
    })
    .await;
    let sent = node.ads.sent();
    let last = sent
        .iter()
        .rev()
        .find(|s| s.type_url == ADDRESS_TYPE)
        .expect("sent");
    assert_eq!(last.resources, ["Kubernetes//Pod/default/reviews-v4"]);

    // The server goes away; meanwhile a workload leaves. The reconnect offers
    // the held versions and gets only the removal.
    node.ads.pause().await;
    let before = node.ads.log().len();
    node.ads.set(NODE_ID, ADDRESS_TYPE, addresses());
    node.ads.resume();
    node.config_where("the fourth endpoint gone", |c| {
        c.services
            .iter()
            .all(|s| s.endpoints.iter().all(|e| e.address != "10.244.2.8"))
    })
    .await;
    let log = node.ads.log();
    let resubscribe = log
        .iter()
        .skip(before)
        .find(|r| r.type_url == ADDRESS_TYPE && r.response_nonce.is_empty())
        .expect("resubscription");
    assert_eq!(resubscribe.initial_resource_versions.len(), more.len());
    let last = node
        .ads
        .sent()
        .into_iter()
        .rev()
        .find(|s| s.type_url == ADDRESS_TYPE)
        .expect("sent");
    assert!(last.resources.is_empty());
    assert_eq!(last.removed, ["Kubernetes//Pod/default/reviews-v4"]);
}

#[tokio::test]
async fn unusable_resources_are_nacked_naming_them() {
    let mut node = Node::start().await;
    let (v1, _) = node
        .config_where("the reviews service", |c| {
            c.services.iter().any(|s| s.hostname == REVIEWS)
        })
        .await;

    // A workload with a 3-byte address beside a good new service: the bad one is
    // rejected and named, the good one applied (as ztunnel does).
    let after = node.ads.log().len();
    let mut set = addresses();
    set.push(workload(
        "broken",
        vec![10, 244, 9],
        "node-2",
        true,
        REVIEWS,
        9080,
        &[],
    ));
    set.push(service(RATINGS, [10, 96, 0, 30], 9080));
    node.ads.set(NODE_ID, ADDRESS_TYPE, set.clone());
    let nack = node.reply(ADDRESS_TYPE, after).await;
    let e = nack.error.as_deref().expect("NACK");
    assert!(
        e.contains("Kubernetes//Pod/default/broken") && e.contains("3 bytes"),
        "{e}"
    );
    let (v2, _) = node
        .config_where("ratings", |c| {
            c.services.iter().any(|s| s.hostname == RATINGS)
        })
        .await;
    assert!(v2 > v1);

    // An Authorization a NodeConfig rule cannot express: NACK naming it; the
    // policies served stay.
    let after = node.ads.log().len();
    let two_fields = |p: u32| Match {
        namespaces: vec![StringMatch {
            match_type: Some(MatchType::Exact("a".into())),
        }],
        destination_ports: vec![p],
        ..Match::default()
    };
    node.ads.set(
        NODE_ID,
        AUTHORIZATION_TYPE,
        vec![
            static_strict(),
            authz(
                "default",
                "odd",
                sec::Scope::Namespace,
                sec::Action::Deny,
                vec![vec![two_fields(1), two_fields(2)]],
            ),
        ],
    );
    let nack = node.reply(AUTHORIZATION_TYPE, after).await;
    let e = nack.error.as_deref().expect("NACK");
    assert!(
        e.contains("\"default/odd\"") && e.contains("groups[0]"),
        "{e}"
    );

    // A set whose NodeConfig is invalid (two services on one VIP and port): NACK
    // with the validation error, nothing of it kept, dpu-proxy keeps its version.
    let (before, served) = node.proxy.config().await;
    let after = node.ads.log().len();
    set.push(service(
        "clash.default.svc.cluster.local",
        [10, 96, 0, 30],
        9080,
    ));
    node.ads.set(NODE_ID, ADDRESS_TYPE, set);
    let nack = node.reply(ADDRESS_TYPE, after).await;
    let e = nack.error.as_deref().expect("NACK");
    assert!(e.contains("invalid") && e.contains("10.96.0.30"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (now, config) = node.proxy.config().await;
    assert_eq!(now, before);
    assert_eq!(config, served);
}

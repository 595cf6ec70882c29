//! SDS and TLS origination: istiod's `UpstreamTlsContext`s and `Secret`s
//! (`tests/fixtures/sds/`) → NodeConfig `tls`, `tlsOrigination`, `secrets`;
//! in local mode, and over ADS (both variants) against the fake ADS server,
//! pushing to the real dpu-proxy binary.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dpumesh_api::config::{TlsMode, TlsOrigination};
use dpumesh_controller::local::{self, LocalState};
use dpumesh_controller::translate::translate;
use dpumesh_controller::xds::ads::{self, AdsSettings, XdsVariant};
use dpumesh_controller::xds::resource::parse_documents;
use dpumesh_controller::xds::{CLUSTER_TYPE, LISTENER_TYPE, SECRET_TYPE};
use support::ads::{anys, FakeAds, Recorded};
use support::DpuProxy;

const MUTUAL: &str = "outbound|443||api.example.com";
const CA: &str = "kubernetes://api-cred-cacert";
const CERT: &str = "kubernetes://api-cred";

fn fixture() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sds")
}

fn load() -> (LocalState, String) {
    let state = local::load(&fixture(), Some("node-1")).expect("fixture loads");
    let pod = state.proxies.keys().next().expect("a pod").clone();
    (state, pod)
}

/// Replaces resources of the pod with those of `yaml` (same names).
fn replace(state: &mut LocalState, pod: &str, yaml: &str) {
    let px = state.proxies.get_mut(pod).expect("pod");
    for r in parse_documents(yaml, "test").expect("test resources decode") {
        px.insert(r);
    }
}

fn origination(config: &dpumesh_api::NodeConfig, name: &str) -> (TlsMode, Option<TlsOrigination>) {
    let c = config
        .clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"));
    (c.tls, c.tls_origination.clone())
}

#[test]
fn tls_contexts_and_secrets_map_to_tls_origination() {
    let config = local::build(&fixture(), Some("node-1")).expect("builds");
    config.validate().expect("valid");
    // credentialName, MUTUAL: both SDS names, sni and SANs as given.
    assert_eq!(
        origination(&config, MUTUAL),
        (
            TlsMode::Mutual,
            Some(TlsOrigination {
                sni: "api.example.com".into(),
                subject_alt_names: vec!["api.example.com".into()],
                ca_certificates: Some(CA.into()),
                client_certificate: Some(CERT.into()),
                insecure_skip_verify: false,
                auto_sni: false,
            })
        )
    );
    // SIMPLE without a CA (file-root:system): the system roots, verified;
    // no sni, so the request's host (istiod's auto_sni).
    assert_eq!(
        origination(&config, "outbound|8443||api.example.com"),
        (
            TlsMode::Simple,
            Some(TlsOrigination {
                auto_sni: true,
                ..TlsOrigination::default()
            })
        )
    );
    // insecureSkipVerify: an empty validation context.
    let (mode, skip) = origination(&config, "outbound|9443||api.example.com");
    assert_eq!(mode, TlsMode::Simple);
    assert!(skip.expect("origination").insecure_skip_verify);
    // Auto mTLS with the agent's default/ROOTCA: the workload identity, no secret.
    assert_eq!(
        origination(&config, "outbound|9080||reviews.default.svc.cluster.local"),
        (TlsMode::IstioMutual, None)
    );
    // The two secrets, once each, with their PEM.
    let names: Vec<&str> = config.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [CERT, CA]);
    assert!(config.secrets[0]
        .certificate_chain
        .contains("BEGIN CERTIFICATE"));
    assert!(config.secrets[0].private_key.contains("PRIVATE KEY"));
    assert!(config.secrets[1]
        .ca_certificates
        .contains("BEGIN CERTIFICATE"));
    assert!(config.secrets.iter().all(|s| !s.is_unavailable()));
}

#[test]
fn a_secret_not_received_is_carried_as_not_available() {
    let (mut state, pod) = load();
    state.proxies.get_mut(&pod).expect("pod").secrets.remove(CA);
    let config = translate(&state.inventory, &state.proxies).expect("translates");
    config
        .validate()
        .expect("valid: the cluster fails closed in dpu-proxy");
    let ca = config.secrets.iter().find(|s| s.name == CA).expect("entry");
    assert!(ca.is_unavailable());
}

#[test]
fn pod_files_and_unfit_secrets_are_errors_naming_them() {
    // DestinationRule caCertificates as a file in the pod: not readable here.
    let (mut state, pod) = load();
    let clusters = std::fs::read_to_string(fixture().join("xds/clusters.yaml")).expect("fixture");
    replace(
        &mut state,
        &pod,
        &clusters.replace(
            "name: file-root:system",
            "name: file-root:/etc/certs/ca.pem",
        ),
    );
    let e = translate(&state.inventory, &state.proxies)
        .expect_err("a pod file")
        .to_string();
    assert!(
        e.contains(CLUSTER_TYPE)
            && e.contains("outbound|8443||api.example.com")
            && e.contains("file-root:/etc/certs/ca.pem")
            && e.contains("credentialName"),
        "{e}"
    );

    // The CA name holds a certificate instead of a validation context.
    let (mut state, pod) = load();
    let wrong_kind = format!(
        r#""@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
name: "{CA}"
tls_certificate:
  certificate_chain: {{inline_string: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"}}
  private_key: {{inline_string: "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n"}}
"#
    );
    replace(&mut state, &pod, &wrong_kind);
    let e = translate(&state.inventory, &state.proxies)
        .expect_err("wrong kind")
        .to_string();
    assert!(
        e.contains(SECRET_TYPE)
            && e.contains(CA)
            && e.contains("validation_context")
            && e.contains(MUTUAL),
        "{e}"
    );

    // A file on the proxy's host, and text that is not PEM.
    for (trusted_ca, reason) in [
        ("{filename: /etc/ssl/ca.pem}", "/etc/ssl/ca.pem"),
        ("{inline_string: garbage}", "not PEM"),
    ] {
        let (mut state, pod) = load();
        replace(
            &mut state,
            &pod,
            &format!(
                "\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n\
                 name: \"{CA}\"\nvalidation_context: {{trusted_ca: {trusted_ca}}}\n"
            ),
        );
        let e = translate(&state.inventory, &state.proxies)
            .expect_err("bad data source")
            .to_string();
        assert!(e.contains(CA) && e.contains(reason), "{e}");
    }
}

async fn wait_for(ads: &FakeAds, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = ads.log();
        if pred(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fake ADS server serves the clusters and their secrets; the adapter
/// asks for exactly the `kubernetes://` names over ADS, ACKs, and pushes
/// them; a broken secret is NACKed naming it and dpu-proxy keeps the last
/// good config.
async fn secrets_over_ads(variant: XdsVariant) {
    let (state, pod) = load();
    let node_id = state.inventory.pods[0].proxy_node_id("cluster.local");
    let ads = FakeAds::new();
    for t in [CLUSTER_TYPE, LISTENER_TYPE, SECRET_TYPE] {
        ads.set(&node_id, t, anys(&state.proxies[&pod], t));
    }
    let xds_addr = ads.serve().await;
    let proxy = DpuProxy::start().await;
    let settings = AdsSettings {
        xds_addr,
        proxy_addr: proxy.mgmt_addr.clone(),
        istio_version: "1.24.0".into(),
        variant,
    };
    let adapter = tokio::spawn(ads::run(settings, state.inventory.clone()));

    let served = proxy.wait_version(1).await;
    let (mode, tls) = origination(&served, MUTUAL);
    assert_eq!(mode, TlsMode::Mutual);
    assert_eq!(
        tls.and_then(|t| t.client_certificate).as_deref(),
        Some(CERT)
    );
    let names: Vec<&str> = served.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [CERT, CA]);
    assert!(
        served.secrets.iter().all(|s| !s.is_unavailable()),
        "{:?}",
        served.secrets
    );
    let log = wait_for(&ads, "an ACK of the secrets", |log| {
        log.iter().any(|r| r.type_url == SECRET_TYPE && r.is_ack())
    })
    .await;
    let request = log
        .iter()
        .find(|r| r.type_url == SECRET_TYPE)
        .expect("SDS request");
    let mut asked = request.resource_names.clone();
    asked.sort();
    assert_eq!(
        asked,
        [CERT, CA],
        "only the ADS names, not default/ROOTCA/file-root"
    );
    assert!(log.iter().all(|r| !r.is_nack()), "{log:#?}");
    let good = proxy.config().await.0;

    // The CA secret now names a file: NACKed, naming the secret.
    let mut broken = state.proxies[&pod].clone();
    for r in parse_documents(
        &format!(
            "\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n\
             name: \"{CA}\"\nvalidation_context: {{trusted_ca: {{filename: /etc/ssl/ca.pem}}}}\n"
        ),
        "test",
    )
    .expect("decodes")
    {
        broken.insert(r);
    }
    ads.set(&node_id, SECRET_TYPE, anys(&broken, SECRET_TYPE));
    let log = wait_for(&ads, "a NACK of the broken secret", |log| {
        log.iter().any(|r| r.type_url == SECRET_TYPE && r.is_nack())
    })
    .await;
    let nack = log.iter().find(|r| r.is_nack()).expect("nack");
    let message = nack.error.clone().unwrap_or_default();
    assert!(
        message.contains(SECRET_TYPE)
            && message.contains(CA)
            && message.contains("/etc/ssl/ca.pem"),
        "{message}"
    );
    assert_eq!(
        proxy.config().await.0,
        good,
        "dpu-proxy keeps the last good config"
    );

    // The server stops sending the CA: the cluster is pushed with the CA
    // "not available" (fails closed); sent again, it is pushed again.
    let mut without_ca = state.proxies[&pod].clone();
    without_ca.secrets.remove(CA);
    ads.set(&node_id, SECRET_TYPE, anys(&without_ca, SECRET_TYPE));
    let gone = proxy.wait_version(good + 1).await;
    let ca = gone
        .secrets
        .iter()
        .find(|s| s.name == CA)
        .expect("CA entry");
    assert!(ca.is_unavailable(), "{ca:?}");
    ads.set(
        &node_id,
        SECRET_TYPE,
        anys(&state.proxies[&pod], SECRET_TYPE),
    );
    let back = proxy.wait_version(good + 2).await;
    assert!(
        back.secrets.iter().all(|s| !s.is_unavailable()),
        "{:?}",
        back.secrets
    );
    adapter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_ads_state_of_the_world() {
    secrets_over_ads(XdsVariant::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_ads_delta() {
    secrets_over_ads(XdsVariant::Delta).await;
}

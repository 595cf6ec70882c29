//! Inbound authorization compared with a real Envoy 1.40: one set of RBAC
//! filters in istiod's shape (DENY and ALLOW `envoy.filters.http.rbac`) is
//! served by Envoy on a plaintext listener (route: a direct 200), and the same
//! filters, as a pod's `virtualInbound` listener, go through the adapter's
//! local-mode translation into `inboundPolicies`, evaluated by dpu-proxy's
//! `authz::authorize`. A matrix of requests (methods × paths × hosts × a
//! header) must get the same allow/deny from both — except where the RBAC uses
//! a matcher NodeConfig cannot express (`contains` in an ALLOW rule), where
//! dpu-proxy may only deny more, never allow more. A second test puts Envoy
//! behind mTLS (client certificates with SPIFFE IDs) and compares policies on
//! the peer's principal and namespace.
//!
//! Needs Envoy (`scripts/setup.sh`, or `DPUMESH_ENVOY=/path/to/envoy`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpu_proxy::authz::{authorize, AuthzRequest, HttpAttrs};
use dpumesh_testkit::envoy_bin;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Envoy with `bootstrap` (written to `<dir>/<name>.json`, its log to
/// `<dir>/<name>.log`), once it listens on 127.0.0.1:`port`.
fn run_envoy(dir: &Path, name: &str, bootstrap: &Value, port: u16) -> Envoy {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(bootstrap).expect("json"),
    )
    .expect("write");
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn envoy");
    let mut envoy = Envoy(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = envoy.0.try_wait() {
            panic!(
                "envoy exited ({status}): {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "envoy never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    envoy
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "dpumesh-inbound-envoy-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Envoy, killed by PID on drop.
struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn header(name: &str, m: Value) -> Value {
    let mut h = json!({ "name": name });
    for (k, v) in m.as_object().expect("object") {
        h[k] = v.clone();
    }
    json!({ "header": h })
}

fn path(m: Value) -> Value {
    json!({"url_path": {"path": m}})
}

fn any_id() -> Value {
    json!([{"and_ids": {"ids": [{"any": true}]}}])
}

/// The RBAC filters under test (istiod's generator shapes), `port` being the
/// destination port the requests use.
fn rbac_filters(port: u16) -> Vec<Value> {
    let rbac = |action: &str, policies: Value| {
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    };
    let deny = json!({
        // DENY POST to /admin*
        "ns[t]-policy[deny-admin]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [
                {"or_rules": {"rules": [path(json!({"prefix": "/admin"}))]}},
                {"or_rules": {"rules": [header(":method", json!({"exact_match": "POST"}))]}}]}}],
            "principals": any_id()},
        // DENY x-user: bad (request.headers[x-user], istiod's list regex)
        "ns[t]-policy[deny-user]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [header("x-user",
                json!({"safe_regex_match": {"regex": "^bad$|^bad,.*|.*,bad,.*|.*,bad$"}}))]}}]}}]}
    });
    let allow = json!({
        // GET/HEAD of /api/* or /health
        "ns[t]-policy[read]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [
                {"or_rules": {"rules": [header(":method", json!({"exact_match": "GET"})),
                                        header(":method", json!({"exact_match": "HEAD"}))]}},
                {"or_rules": {"rules": [path(json!({"prefix": "/api/"})), path(json!({"exact": "/health"}))]}}]}}],
            "principals": any_id()},
        // hosts reviews / *.example.com, except /api/private*, for callers with x-user
        "ns[t]-policy[read]-rule[1]": {
            "permissions": [{"and_rules": {"rules": [
                {"or_rules": {"rules": [
                    header(":authority", json!({"string_match": {"exact": "reviews", "ignore_case": true}})),
                    header(":authority", json!({"string_match": {"suffix": ".example.com", "ignore_case": true}}))]}},
                {"not_rule": {"or_rules": {"rules": [path(json!({"prefix": "/api/private"}))]}}}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [
                header("x-user", json!({"present_match": true}))]}}]}}]},
        // anything on this port to /port
        "ns[t]-policy[port]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [
                {"or_rules": {"rules": [{"destination_port": port}]}},
                {"or_rules": {"rules": [path(json!({"exact": "/port"}))]}}]}}],
            "principals": any_id()},
        // inexpressible in NodeConfig: a path containing "secret"
        "ns[t]-policy[contains]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [path(json!({"contains": "secret"}))]}}],
            "principals": any_id()}
    });
    vec![rbac("DENY", deny), rbac("ALLOW", allow)]
}

fn hcm(filters: Vec<Value>) -> Value {
    let mut http_filters = filters;
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"name": "inbound", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": http_filters}})
}

/// The adapter's view: the filters in a pod's virtualInbound listener
/// (catch-all plaintext chain), translated in local mode.
fn dpumesh_policies(dir: &Path, port: u16) -> Vec<dpumesh_api::config::AuthorizationPolicy> {
    dpumesh_policies_of(dir, rbac_filters(port))
}

fn dpumesh_policies_of(
    dir: &Path,
    filters: Vec<Value>,
) -> Vec<dpumesh_api::config::AuthorizationPolicy> {
    std::fs::write(
        dir.join("node.yaml"),
        "name: node-1\nnetworkMode: underlay\npodCidr: 10.244.1.0/24\nserviceCidrs: [10.96.0.0/16]\ndpuMgmtAddr: 127.0.0.1:15080\n",
    )
    .expect("node.yaml");
    std::fs::write(
        dir.join("pods.yaml"),
        "pods:\n  - {uid: u1, name: server, namespace: t, ips: [10.244.1.10], mac: \"02:00:0a:f4:01:0a\", vfIndex: 0, representor: pf0vf0}\n",
    )
    .expect("pods.yaml");
    std::fs::write(dir.join("services.yaml"), "services: []\n").expect("services.yaml");
    let pod_dir = dir.join("xds/t.server");
    std::fs::create_dir_all(&pod_dir).expect("xds dir");
    let listener = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "filter_chains": [{"name": "virtualInbound-catchall-http",
                           "filter_chain_match": {"transport_protocol": "raw_buffer"},
                           "filters": [hcm(filters)]}]
    });
    std::fs::write(
        pod_dir.join("inbound.json"),
        serde_json::to_string_pretty(&listener).expect("json"),
    )
    .expect("listener");
    let config = dpumesh_controller::local::build(dir, Some("node-1"))
        .unwrap_or_else(|e| panic!("adapter translation: {e}"));
    config.validate().expect("valid NodeConfig");
    let policy = config.inbound_policies.first().expect("an inbound policy");
    policy.authorization.clone()
}

fn start_envoy(dir: &Path, port: u16) -> Envoy {
    let bootstrap = json!({
        "static_resources": {"listeners": [{
            "name": "inbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm(rbac_filters(port))]}]}]}
    });
    run_envoy(dir, "envoy", &bootstrap, port)
}

/// One request to Envoy; its status.
async fn envoy_status(
    port: u16,
    method: &Method,
    host: &str,
    path: &str,
    user: Option<&str>,
) -> StatusCode {
    let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("connect to envoy");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", host);
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_the_translated_policies_decide_alike() {
    let scratch = Scratch::new();
    let port = free_port();
    let policies = dpumesh_policies(&scratch.0, port);
    let _envoy = start_envoy(&scratch.0, port);

    let methods = [Method::GET, Method::HEAD, Method::POST, Method::DELETE];
    let paths = [
        "/api/x",
        "/api/private/y",
        "/health",
        "/admin",
        "/admin/z",
        "/port",
        "/secret",
        "/x/secret/y",
        "/other",
    ];
    let hosts = ["reviews", "REVIEWS", "a.example.com", "other"];
    let users = [None, Some("good"), Some("bad")];
    let mut differences = Vec::new();
    let mut unsafe_differences = Vec::new();
    let (mut allowed, mut total) = (0, 0);
    for method in &methods {
        for path in paths {
            for host in hosts {
                for user in users {
                    let envoy = envoy_status(port, method, host, path, user).await;
                    assert!(
                        envoy == StatusCode::OK || envoy == StatusCode::FORBIDDEN,
                        "envoy answered {envoy} to {method} {host}{path}"
                    );
                    let mut headers = HeaderMap::new();
                    if let Some(u) = user {
                        headers.insert("x-user", HeaderValue::from_static(u));
                    }
                    let req = AuthzRequest {
                        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        source_principal: None,
                        destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        destination_port: port,
                        http: Some(HttpAttrs {
                            host,
                            method: method.as_str(),
                            path,
                            headers: &headers,
                        }),
                    };
                    let ours = authorize(&policies, &req).is_allow();
                    let theirs = envoy == StatusCode::OK;
                    total += 1;
                    allowed += usize::from(theirs);
                    if ours != theirs {
                        let case = format!(
                            "{method} {host}{path} x-user={user:?}: envoy {}, dpu-proxy {}",
                            if theirs { "allow" } else { "deny" },
                            if ours { "allow" } else { "deny" }
                        );
                        if ours || !path.contains("secret") {
                            unsafe_differences.push(case);
                        } else {
                            differences.push(case);
                        }
                    }
                }
            }
        }
    }
    assert!(
        unsafe_differences.is_empty(),
        "{} of {total} decisions differ beyond the documented approximation:\n{}",
        unsafe_differences.len(),
        unsafe_differences.join("\n")
    );
    // The matrix exercises both outcomes, and the approximation is visible.
    assert!(
        allowed > 20 && allowed < total - 20,
        "allowed {allowed} of {total}"
    );
    assert!(
        !differences.is_empty(),
        "the `contains` rule should make dpu-proxy deny more"
    );
    eprintln!(
        "{total} requests, {allowed} allowed by Envoy; {} denied by dpu-proxy only (contains \"secret\")",
        differences.len()
    );
}

// -- with mTLS: principals and namespaces ----------------------------------------

const TD: &str = "spiffe://cluster.local";

/// Policies on the peer's identity (istiod's shapes for `principals`,
/// `namespaces`, `notPrincipals`, a principal prefix and suffix).
fn identity_rbac_filters() -> Vec<Value> {
    let rbac = |action: &str, policies: Value| {
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    };
    let auth = |m: Value| json!({"authenticated": {"principal_name": m}});
    let ids = |list: Vec<Value>| json!([{"and_ids": {"ids": list}}]);
    let or_ids = |list: Vec<Value>| json!({"or_ids": {"ids": list}});
    let perms = |list: Vec<Value>| json!([{"and_rules": {"rules": list}}]);
    let or_rules = |list: Vec<Value>| json!({"or_rules": {"rules": list}});
    let deny = json!({
        "ns[default]-policy[deny-admin]-rule[0]": {
            "permissions": perms(vec![or_rules(vec![path(json!({"prefix": "/admin"}))])]),
            "principals": any_id()},
        "ns[default]-policy[deny-ratings]-rule[0]": {
            "permissions": perms(vec![or_rules(vec![path(json!({"exact": "/deny-me"}))])]),
            "principals": ids(vec![or_ids(vec![auth(json!({"exact": format!("{TD}/ns/default/sa/bookinfo-ratings")}))])])}
    });
    let allow = json!({
        "ns[default]-policy[reviews-viewer]-rule[0]": {
            "permissions": perms(vec![or_rules(vec![header(":method", json!({"exact_match": "GET"}))])]),
            "principals": ids(vec![or_ids(vec![auth(json!({"exact": format!("{TD}/ns/default/sa/bookinfo-productpage")}))])])},
        "ns[default]-policy[trusted]-rule[0]": {
            "permissions": perms(vec![or_rules(vec![path(json!({"prefix": "/ns/"}))])]),
            "principals": ids(vec![
                or_ids(vec![auth(json!({"safe_regex": {"regex": ".*/ns/trusted/.*"}}))]),
                json!({"not_id": or_ids(vec![auth(json!({"exact": format!("{TD}/ns/trusted/sa/intruder")}))])})])},
        "ns[default]-policy[admins]-rule[0]": {
            "permissions": [{"any": true}],
            "principals": ids(vec![or_ids(vec![auth(json!({"safe_regex": {"regex": "spiffe://.*/sa/admin"}}))])])},
        "ns[default]-policy[ops]-rule[0]": {
            "permissions": perms(vec![
                or_rules(vec![header(":method", json!({"exact_match": "GET"})),
                              header(":method", json!({"exact_match": "POST"}))]),
                or_rules(vec![path(json!({"prefix": "/ops"}))])]),
            "principals": ids(vec![or_ids(vec![auth(json!({"prefix": format!("{TD}/ns/ops/")}))])])}
    });
    vec![rbac("DENY", deny), rbac("ALLOW", allow)]
}

struct Pki {
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).expect("CA");
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// (certificate PEM, certificate DER, PKCS#8 key) for a SPIFFE ID.
    fn leaf(
        &self,
        id: &str,
    ) -> (
        String,
        rustls::pki_types::CertificateDer<'static>,
        Vec<u8>,
        String,
    ) {
        use rcgen::{
            CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.try_into().expect("URI SAN"))];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).expect("leaf");
        (
            cert.pem(),
            cert.der().clone(),
            key.serialize_der(),
            key.serialize_pem(),
        )
    }
}

fn start_mtls_envoy(dir: &Path, port: u16, pki: &Pki) -> Envoy {
    let (cert_pem, _, _, key_pem) = pki.leaf(&format!("{TD}/ns/default/sa/bookinfo-reviews"));
    for (name, text) in [
        ("ca.pem", &pki.ca_pem),
        ("cert.pem", &cert_pem),
        ("key.pem", &key_pem),
    ] {
        std::fs::write(dir.join(name), text).expect("write PEM");
    }
    let file = |n: &str| json!({"filename": dir.join(n).display().to_string()});
    let bootstrap = json!({
        "static_resources": {"listeners": [{
            "name": "inbound-mtls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "filters": [hcm(identity_rbac_filters())],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificates": [{"certificate_chain": file("cert.pem"),
                                              "private_key": file("key.pem")}],
                        "validation_context": {"trusted_ca": file("ca.pem")}}}}}]}]}
    });
    run_envoy(dir, "envoy-mtls", &bootstrap, port)
}

/// Requests over one mTLS connection presenting `id`; their statuses.
async fn mtls_statuses(
    port: u16,
    pki: &Pki,
    id: &str,
    requests: &[(Method, &str)],
) -> Vec<StatusCode> {
    use dpu_proxy::identity::{tls::SpiffeServerVerifier, SpiffeId};
    let (_, leaf_der, key, _) = pki.leaf(id);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("root");
    let verifier = SpiffeServerVerifier::new(
        std::sync::Arc::new(roots),
        SpiffeId::parse(&format!("{TD}/ns/default/sa/bookinfo-reviews")).expect("id"),
    );
    let cfg = rustls::ClientConfig::builder_with_provider(dpu_proxy::identity::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_client_auth_cert(
            vec![leaf_der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .expect("client cert");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let mut out = Vec::new();
    // One connection per request: Envoy may close a connection after a 403.
    for (method, path) in requests {
        let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("connect");
        let tls = connector
            .connect(
                rustls::pki_types::ServerName::try_from("reviews").expect("name"),
                tcp,
            )
            .await
            .expect("mTLS handshake with envoy");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(*path)
            .header("host", "reviews")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        out.push(resp.status());
        let _ = resp.into_body().collect().await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_principals_and_namespaces_decide_alike() {
    let scratch = Scratch::new();
    let port = free_port();
    // The adapter's translation of the same filters.
    let listener_dir = scratch.0.join("adapter");
    std::fs::create_dir_all(&listener_dir).expect("dir");
    let policies = dpumesh_policies_of(&listener_dir, identity_rbac_filters());
    let pki = Pki::new();
    let _envoy = start_mtls_envoy(&scratch.0, port, &pki);

    let callers = [
        "ns/default/sa/bookinfo-productpage",
        "ns/default/sa/bookinfo-ratings",
        "ns/trusted/sa/x",
        "ns/trusted/sa/intruder",
        "ns/team/sa/admin",
        "ns/ops/sa/runner",
        "ns/other/sa/y",
    ];
    let mut requests = Vec::new();
    for m in [Method::GET, Method::POST] {
        for p in [
            "/reviews/1",
            "/admin",
            "/ns/a",
            "/ops/x",
            "/deny-me",
            "/other",
        ] {
            requests.push((m.clone(), p));
        }
    }
    let mut differ = Vec::new();
    let (mut allowed, mut total) = (0, 0);
    for caller in callers {
        let id = format!("{TD}/{caller}");
        let statuses = mtls_statuses(port, &pki, &id, &requests).await;
        for ((method, path), envoy) in requests.iter().zip(statuses) {
            assert!(
                envoy == StatusCode::OK || envoy == StatusCode::FORBIDDEN,
                "envoy answered {envoy} to {caller} {method} {path}"
            );
            let headers = HeaderMap::new();
            let req = AuthzRequest {
                source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                source_principal: Some(&id),
                destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                destination_port: port,
                http: Some(HttpAttrs {
                    host: "reviews",
                    method: method.as_str(),
                    path,
                    headers: &headers,
                }),
            };
            let ours = authorize(&policies, &req).is_allow();
            let theirs = envoy == StatusCode::OK;
            total += 1;
            allowed += usize::from(theirs);
            if ours != theirs {
                differ.push(format!(
                    "{caller} {method} {path}: envoy {theirs}, dpu-proxy {ours}"
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {total} decisions differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    assert!(
        allowed > 5 && allowed < total - 5,
        "allowed {allowed} of {total}"
    );
    eprintln!("{total} mTLS requests from 7 identities, {allowed} allowed by both");
}

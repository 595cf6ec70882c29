//! dpu-proxy end to end in the simulator, with nothing standing in: the real
//! `dpumesh-dataplane` binary (eBPF backend) and the real `dpu-proxy` binary
//! in the DPU netns, pods on VFs, a service VIP, a real HTTP server in the
//! destination pod and a real HTTP client in the source pod. Traffic reaches
//! the proxy only through the dataplane's steering (`bpf_sk_assign` onto the
//! transparent 15001 listener), and leaves it from the client's own IP.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`): the
//! dataplane is another package's binary, found next to `dpu-proxy`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dpumesh_api::proto::v1::PodSteering;
use dpumesh_api::NodeConfig;
use dpumesh_sim::{unique_cluster, Netns, Node, SimConfig, SimGuard, SpawnSpec};
use dpumesh_testkit::{
    self as kit, attach_pod, exec, get, push, requests_total, runtime, steering, wait_listening,
    PodServer,
};
use http::StatusCode;
use serde_json::json;

const VIP: &str = "10.96.0.10";
const SERVER_PORT: u16 = 8080;
const HOST: &str = "web.default.svc.cluster.local";

fn node_config(node: &Node, a: Ipv4Addr, b: Ipv4Addr, mgmt: &str) -> NodeConfig {
    let pod = |uid: &str, name: &str, app: &str, vf: usize, ip: Ipv4Addr| {
        let v = node.vf(vf).expect("vf");
        json!({"uid": uid, "name": name, "namespace": "default", "serviceAccount": name,
               "labels": {"app": app}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
               "vfIndex": v.index, "representor": v.representor})
    };
    let default_cluster = format!("outbound|80||{HOST}");
    let cfg = json!({
        "version": 1,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": node.pod_cidr.to_string(),
                 "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": mgmt},
        "pods": [pod("uid-a", "client-a", "client", 0, a), pod("uid-b", "server-b", "server", 1, b)],
        "services": [{
            "hostname": HOST, "namespace": "default", "vips": [VIP],
            "ports": [{"port": 80, "name": "http", "targetPort": SERVER_PORT, "routeTable": "80"}],
            "endpoints": [{"address": b.to_string(), "node": "n1",
                           "labels": {"app": "server"}, "serviceAccount": "server-b"}],
        }],
        "clusters": [{"name": default_cluster, "service": HOST, "port": 80}],
        "routeTables": [{"name": "80", "virtualHosts": [{
            "name": "web", "domains": ["*"],
            "routes": [
                {"name": "abort", "matches": [{"path": {"prefix": "/abort"}}],
                 "action": {"forward": {"destinations": [{"cluster": default_cluster}]}},
                 "fault": {"abort": {"httpStatus": 418, "percent": 100}}},
                {"name": "default",
                 "action": {"forward": {"destinations": [{"cluster": default_cluster}]}}}
            ]
        }]}],
    });
    serde_json::from_value(cfg).expect("test NodeConfig parses")
}

/// `GET path` on the proxy's admin port, from inside the DPU netns.
fn admin(dpu: &Netns, path: &str) -> String {
    kit::admin(dpu, 15000, path)
}

/// Starts node `i` (`n<i>`): its dataplane (eBPF; peers: every other node,
/// underlay) and dpu-proxy in its DPU netns, `pods` registered with the
/// dataplane; returns the proxy's control address.
fn start_node(
    sim: &SimGuard,
    i: usize,
    pods: Vec<PodSteering>,
    ca_root: &std::path::Path,
) -> String {
    // One CA root for the test's nodes, so their proxies trust each other.
    let ca = ["--ca-root-file".to_string(), ca_root.display().to_string()];
    start_node_with(sim, i, pods, &ca)
}

/// [`start_node`] with the given CA flags for dpu-proxy.
fn start_node_with(sim: &SimGuard, i: usize, pods: Vec<PodSteering>, ca: &[String]) -> String {
    let ca: Vec<&str> = ca.iter().map(String::as_str).collect();
    kit::start_node(sim, i, &format!("n{i}"), pods, &ca)
}

#[test]
fn pod_to_service_through_the_dataplane_and_the_proxy() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxe2e"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6));
    let pod_a = attach_pod(&sim, &node, 0, "client-a", ip_a);
    let pod_b = attach_pod(&sim, &node, 1, "server-b", ip_b);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let proxy_mgmt = start_node(
        &sim,
        1,
        vec![
            steering("uid-a", "client-a", &node, 0, ip_a),
            steering("uid-b", "server-b", &node, 1, ip_b),
        ],
        &ca_dir.path().join("root.pem"),
    );
    push(
        &node.host,
        proxy_mgmt.clone(),
        node_config(&node, ip_a, ip_b, &proxy_mgmt),
    );
    assert!(admin(&node.dpu, "/ready").contains("config version 1"));

    let server = PodServer::start(&pod_b, "server-b", SERVER_PORT);
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");

    // Through the VIP: only the proxy can answer (nothing owns 10.96.0.10).
    for h2 in [false, true] {
        let (status, body) = get(&pod_a, vip, "web", "/hello", h2);
        assert_eq!(status, StatusCode::OK, "h2={h2}: {body}");
        assert_eq!(
            body,
            format!("served by server-b to {ip_a}"),
            "h2={h2}: the server saw the client pod's own IP"
        );
    }
    assert!(
        server.peer_ips().iter().all(|ip| *ip == ip_a) && !server.peer_ips().is_empty(),
        "server peers: {:?}",
        server.peer_ips()
    );

    // Fault injection: aborted by the proxy, never reaching the server.
    let before = server.peer_ips().len();
    let (status, body) = get(&pod_a, vip, "web", "/abort/me", false);
    assert_eq!(status.as_u16(), 418, "{body}");
    assert!(body.contains("FI"), "{body}");
    assert_eq!(
        server.peer_ips().len(),
        before,
        "the abort reached the server"
    );

    // Istio metrics, labelled with both workloads.
    let metrics = admin(&node.dpu, "/metrics");
    let pair = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_workload_namespace", "default"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/client-a",
        ),
        ("destination_workload", "server"),
        ("destination_service", HOST),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/server-b",
        ),
    ];
    let ok: Vec<_> = pair
        .iter()
        .copied()
        .chain([("response_code", "200")])
        .collect();
    assert_eq!(requests_total(&metrics, &ok), 2.0, "{metrics}");
    // An abort picks no endpoint: the destination workload is unknown (as Istio
    // reports it), the service is known.
    let aborted: Vec<_> = pair
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("destination_") || *k == "destination_service")
        .chain([
            ("destination_workload", "unknown"),
            ("response_code", "418"),
            ("response_flags", "FI"),
        ])
        .collect();
    assert_eq!(requests_total(&metrics, &aborted), 1.0, "{metrics}");

    // Nothing else was refused along the way.
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&node.dpu, "/stats")).expect("stats JSON");
    assert_eq!(stats["proxy"]["unknown_source"], 0, "{stats}");

    drop(server);
    let sim_name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&sim_name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// NodeConfig of node `i` of the two-node test: its one local pod, and the
/// service `web` whose endpoint is pod c on node 2.
fn cross_node_config(
    node: &Node,
    i: usize,
    local: (&str, &str, &str, Ipv4Addr),
    c: Ipv4Addr,
    mgmt: &str,
) -> NodeConfig {
    let (uid, name, app, ip) = local;
    let v = node.vf(0).expect("vf 0");
    let cfg = json!({
        "version": 1,
        "node": {"name": format!("n{i}"), "networkMode": "underlay",
                 "podCidr": node.pod_cidr.to_string(), "serviceCidrs": ["10.96.0.0/16"],
                 "dpuMgmtAddr": mgmt},
        "pods": [{"uid": uid, "name": name, "namespace": "default", "serviceAccount": name,
                  "labels": {"app": app}, "ips": [ip.to_string()], "mac": v.mac.to_string(),
                  "vfIndex": v.index, "representor": v.representor}],
        "services": [{
            "hostname": HOST, "namespace": "default", "vips": [VIP],
            "ports": [{"port": 80, "name": "http", "targetPort": SERVER_PORT}],
            "endpoints": [{"address": c.to_string(), "node": "n2",
                           "labels": {"app": "server"}, "serviceAccount": "server-c"}],
        }],
    });
    serde_json::from_value(cfg).expect("test NodeConfig parses")
}

/// Waits until `n` dpu-proxies of `sim` logged that their workload
/// certificates are in step with the pushed config (issuance follows a push
/// asynchronously).
fn wait_for_identities(sim: &SimGuard, n: usize) {
    let logs: Vec<PathBuf> = sim
        .processes()
        .expect("processes")
        .into_iter()
        .filter(|p| p.name.starts_with("dpu-proxy-n"))
        .map(|p| p.log)
        .collect();
    assert_eq!(logs.len(), n, "{logs:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for log in &logs {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("workload identities in step with the config") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no workload certificates ({}):\n{text}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn pod_to_service_on_another_node_through_both_proxies() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxe2x"))
            .with_nodes(2)
            .with_vfs(1),
    )
    .expect("sim up");
    let (n1, n2) = (
        sim.node(1).expect("node 1").clone(),
        sim.node(2).expect("node 2").clone(),
    );
    let (ip_a, ip_c) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7));
    let pod_a = attach_pod(&sim, &n1, 0, "client-a", ip_a);
    let pod_c = attach_pod(&sim, &n2, 0, "server-c", ip_c);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_root = ca_dir.path().join("root.pem");
    let m1 = start_node(
        &sim,
        1,
        vec![steering("uid-a", "client-a", &n1, 0, ip_a)],
        &ca_root,
    );
    let m2 = start_node(
        &sim,
        2,
        vec![steering("uid-c", "server-c", &n2, 0, ip_c)],
        &ca_root,
    );
    push(
        &n1.host,
        m1.clone(),
        cross_node_config(&n1, 1, ("uid-a", "client-a", "client", ip_a), ip_c, &m1),
    );
    push(
        &n2.host,
        m2.clone(),
        cross_node_config(&n2, 2, ("uid-c", "server-c", "server", ip_c), ip_c, &m2),
    );
    let server = PodServer::start(&pod_c, "server-c", SERVER_PORT);
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    wait_for_identities(&sim, 2);

    // a → VIP: node 1's proxy (outbound, 15001) → HBONE (mTLS, CONNECT
    // 10.244.2.7:8080 to 10.244.2.7:15008, steered by node 2's dataplane to
    // its proxy) → c; c sees a's own IP.
    for h2 in [false, true] {
        let (status, body) = get(&pod_a, vip, "web", "/x", h2);
        assert_eq!(status, StatusCode::OK, "h2={h2}: {body}");
        assert_eq!(body, format!("served by server-c to {ip_a}"), "h2={h2}");
    }
    // (Node 2's proxy may reuse one pooled upstream connection for both.)
    let peers = server.peer_ips();
    assert!(
        !peers.is_empty() && peers.iter().all(|ip| *ip == ip_a),
        "server peers: {peers:?}"
    );

    // Each side counted it, from its own point of view.
    let out = admin(&n1.dpu, "/metrics");
    let sent = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service", HOST),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/server-c",
        ),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&out, &sent), 2.0, "{out}");
    let inb = admin(&n2.dpu, "/metrics");
    let received = [
        ("reporter", "destination"),
        ("destination_workload", "server"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/server-c",
        ),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/client-a",
        ),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&inb, &received), 2.0, "{inb}");
    // Node 1 went over HBONE (h1 and h2 each keep their own pooled tunnel).
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&n1.dpu, "/stats")).expect("stats JSON");
    assert!(
        stats["proxy"]["hbone_upstream"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );

    // STRICT on node 2: plaintext from a pod of node 1 straight to c's IP on
    // a port no service has (node 1 passes it through in plaintext) is
    // refused by node 2's proxy (counted); the HBONE path still works, and
    // node 2 applies its L7 policy with the client's principal.
    let mut strict = cross_node_config(&n2, 2, ("uid-c", "server-c", "server", ip_c), ip_c, &m2);
    strict.version = 2;
    strict.inbound_policies = serde_json::from_value(json!([{
        "name": "server-c-in", "peerAuthentication": {"mode": "STRICT"},
        "authorization": [{"name": "default/deny-admin", "action": "DENY",
                           "rules": [{"to": [{"paths": ["/admin"]}]}]}]
    }]))
    .expect("policies parse");
    strict.pods[0].inbound_policy = Some("server-c-in".into());
    push(&n2.host, m2.clone(), strict);
    let (status, body) = get(&pod_a, vip, "web", "/x", false);
    assert_eq!(status, StatusCode::OK, "over HBONE under STRICT: {body}");
    let (status, body) = get(&pod_a, vip, "web", "/admin", false);
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied"),
        "L7 deny on node 2 with the client's principal"
    );
    let direct: SocketAddr = SocketAddr::new(ip_c.into(), 9090);
    // Node 2 resets node 1's plaintext upstream connection: node 1 answers
    // 503 UR (reset before the response), and nothing reached c.
    let before = server.peer_ips().len();
    let (status, body) = get(&pod_a, direct, "c", "/", false);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // (UR or UF depending on whether the RST beats the request bytes.)
    assert!(
        body.contains("UR") || body.contains("UF"),
        "reset by node 2: {body}"
    );
    assert_eq!(server.peer_ips().len(), before);
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&n2.dpu, "/stats")).expect("stats JSON");
    assert_eq!(
        stats["proxy"]["peer_authn_refused"], 1,
        "node 2 refused the plaintext connection: {stats}"
    );

    drop(server);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Identity is bound to the VF: a pod that sends with another pod's source
/// address (and then also its MAC) is dropped by the dataplane before the
/// proxy, so it never gets the other pod's certificate on the HBONE hop and
/// never passes a policy that only the other pod passes.
#[test]
fn a_spoofed_source_never_reaches_the_proxy_as_another_pods_identity() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxspf"))
            .with_nodes(2)
            .with_vfs(2),
    )
    .expect("sim up");
    let (n1, n2) = (
        sim.node(1).expect("node 1").clone(),
        sim.node(2).expect("node 2").clone(),
    );
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 2, 7),
    );
    let pod_a = attach_pod(&sim, &n1, 0, "client-a", ip_a);
    let pod_b = attach_pod(&sim, &n1, 1, "trusted-b", ip_b);
    let pod_c = attach_pod(&sim, &n2, 0, "server-c", ip_c);
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_root = ca_dir.path().join("root.pem");
    let m1 = start_node(
        &sim,
        1,
        vec![
            steering("uid-a", "client-a", &n1, 0, ip_a),
            steering("uid-b", "trusted-b", &n1, 1, ip_b),
        ],
        &ca_root,
    );
    let m2 = start_node(
        &sim,
        2,
        vec![steering("uid-c", "server-c", &n2, 0, ip_c)],
        &ca_root,
    );
    // Node 1: both clients (their own service accounts).
    let mut c1 = cross_node_config(&n1, 1, ("uid-a", "client-a", "client", ip_a), ip_c, &m1);
    let vb = n1.vf(1).expect("vf 1");
    c1.pods.push(
        serde_json::from_value(json!({
            "uid": "uid-b", "name": "trusted-b", "namespace": "default",
            "serviceAccount": "trusted-b", "labels": {"app": "trusted"},
            "ips": [ip_b.to_string()], "mac": vb.mac.to_string(),
            "vfIndex": vb.index, "representor": vb.representor}))
        .expect("pod parses"),
    );
    push(&n1.host, m1.clone(), c1);
    // Node 2: the server lets only trusted-b's principal in, mTLS only.
    let mut c2 = cross_node_config(&n2, 2, ("uid-c", "server-c", "server", ip_c), ip_c, &m2);
    c2.inbound_policies = serde_json::from_value(json!([{
        "name": "server-c-in", "peerAuthentication": {"mode": "STRICT"},
        "authorization": [{"name": "default/only-trusted", "action": "ALLOW",
                           "rules": [{"from": [{"principals":
                               ["cluster.local/ns/default/sa/trusted-b"]}]}]}]
    }]))
    .expect("policies parse");
    c2.pods[0].inbound_policy = Some("server-c-in".into());
    push(&n2.host, m2.clone(), c2);
    let server = PodServer::start(&pod_c, "server-c", SERVER_PORT);
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");

    // The policy tells the two identities apart.
    let (status, body) = get(&pod_b, vip, "web", "/x", false);
    assert_eq!(status, StatusCode::OK, "trusted-b: {body}");
    let (status, body) = get(&pod_a, vip, "web", "/x", false);
    assert_eq!(status, StatusCode::FORBIDDEN, "client-a: {body}");
    let trusted_in = [
        ("reporter", "destination"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/trusted-b",
        ),
    ];
    assert_eq!(
        requests_total(&admin(&n2.dpu, "/metrics"), &trusted_in),
        1.0
    );
    let peers_before = server.peer_ips().len();

    // a sends as b: b's address on a's VF, then b's MAC too.
    exec(
        &pod_a,
        "ip",
        &["addr", "add", &format!("{ip_b}/32"), "dev", "eth0"],
    );
    let spoofed_connect = |pod: &Netns| {
        pod.run(move || {
            runtime().block_on(async move {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(SocketAddr::new(ip_b.into(), 0))
                    .expect("bind b's IP");
                tokio::time::timeout(Duration::from_secs(2), sock.connect(vip)).await
            })
        })
        .expect("pod netns")
    };
    let r = spoofed_connect(&pod_a);
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a connection from b's IP on a's VF was established: {r:?}"
    );
    exec(&pod_a, "ip", &["link", "set", "eth0", "down"]);
    exec(
        &pod_a,
        "ip",
        &["link", "set", "eth0", "address", &vb.mac.to_string()],
    );
    exec(&pod_a, "ip", &["link", "set", "eth0", "up"]);
    exec(
        &pod_a,
        "ip",
        &[
            "route",
            "replace",
            "default",
            "via",
            &n1.pod_gateway.to_string(),
        ],
    );
    let r = spoofed_connect(&pod_a);
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a connection from b's IP and MAC on a's VF was established: {r:?}"
    );

    // The dataplane dropped them on a's VF and charged a with it...
    let dp = get(
        &n1.dpu,
        "127.0.0.1:15091".parse().expect("static"),
        "dataplane",
        "/metrics",
        false,
    )
    .1;
    let drops: f64 = dp
        .lines()
        .filter(|l| l.starts_with("dpumesh_dataplane_pod_drops_total{"))
        .filter(|l| l.contains("pod=\"client-a\""))
        .filter(|l| l.contains("reason=\"spoof_ip\"") || l.contains("reason=\"spoof_mac\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(drops >= 2.0, "spoof drops charged to client-a: {dp}");
    // ...so neither proxy ever saw b's identity again, and c saw nothing.
    let out = admin(&n1.dpu, "/metrics");
    assert_eq!(
        requests_total(&out, &[("source_workload", "trusted")]),
        1.0,
        "{out}"
    );
    assert_eq!(
        requests_total(&admin(&n2.dpu, "/metrics"), &trusted_in),
        1.0
    );
    assert_eq!(server.peer_ips().len(), peers_before);

    drop(server);
    let name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[path = "support/fake_istiod.rs"]
mod fake_istiod;

/// The cross-node path with certificates from istiod's CA instead of the
/// built-in one: a fake istiod (real gRPC over TLS, `support/fake_istiod.rs`)
/// listens at the host end of each node's management link (one CA behind
/// both listeners); each dpu-proxy runs with `--ca-addr` and asks it, with
/// the bearer token and `ImpersonatedIdentity`, for its pod's certificate.
/// The request then crosses HBONE and node 2 sees the client's principal.
#[test]
fn pod_to_service_on_another_node_with_certificates_from_istiod() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxica"))
            .with_nodes(2)
            .with_vfs(1),
    )
    .expect("sim up");
    let (n1, n2) = (
        sim.node(1).expect("node 1").clone(),
        sim.node(2).expect("node 2").clone(),
    );
    let (ip_a, ip_c) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7));
    let pod_a = attach_pod(&sim, &n1, 0, "client-a", ip_a);
    let pod_c = attach_pod(&sim, &n2, 0, "server-c", ip_c);

    let istiod_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("istiod runtime");
    let listeners = [&n1, &n2]
        .map(|n| {
            let addr = SocketAddr::new(n.mgmt_host.addr().into(), 15012);
            n.host
                .run(move || std::net::TcpListener::bind(addr))
                .expect("netns")
                .expect("bind istiod on the management link")
        })
        .into();
    let istiod = istiod_rt.block_on(fake_istiod::FakeIstiod::start_on(listeners));
    let ca_flags = |n: &Node| -> Vec<String> {
        vec![
            "--ca-addr".into(),
            format!("https://{}:15012", n.mgmt_host.addr()),
            "--ca-server-name".into(),
            fake_istiod::ISTIOD_NAME.into(),
            "--ca-token-file".into(),
            istiod.token_file().display().to_string(),
            "--ca-trust-root-pem".into(),
            istiod.root_file().display().to_string(),
            "--ca-cluster-id".into(),
            "sim-cluster".into(),
            "--ca-own-identity".into(),
            fake_istiod::OWN.into(),
        ]
    };
    let m1 = start_node_with(
        &sim,
        1,
        vec![steering("uid-a", "client-a", &n1, 0, ip_a)],
        &ca_flags(&n1),
    );
    let m2 = start_node_with(
        &sim,
        2,
        vec![steering("uid-c", "server-c", &n2, 0, ip_c)],
        &ca_flags(&n2),
    );
    push(
        &n1.host,
        m1.clone(),
        cross_node_config(&n1, 1, ("uid-a", "client-a", "client", ip_a), ip_c, &m1),
    );
    push(
        &n2.host,
        m2.clone(),
        cross_node_config(&n2, 2, ("uid-c", "server-c", "server", ip_c), ip_c, &m2),
    );
    let server = PodServer::start(&pod_c, "server-c", SERVER_PORT);
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");

    // Issuance follows the push asynchronously.
    let client_id = "spiffe://cluster.local/ns/default/sa/client-a";
    let server_id = "spiffe://cluster.local/ns/default/sa/server-c";
    wait_for_identities(&sim, 2);
    let seen = istiod.seen();
    for id in [client_id, server_id] {
        assert!(
            seen.iter().any(|s| s.csr_san.as_deref() == Some(id)),
            "istiod was not asked for {id}: {seen:?}"
        );
    }
    for s in istiod.seen() {
        assert!(s.authorized, "{s:?}");
        assert_eq!(s.cluster_id.as_deref(), Some("sim-cluster"), "{s:?}");
        assert_eq!(s.impersonated, s.csr_san, "{s:?}");
    }

    // a → VIP → node 1's proxy → HBONE (both sides prove istiod-issued
    // identities) → node 2's proxy → c, which sees a's own IP.
    for h2 in [false, true] {
        let (status, body) = get(&pod_a, vip, "web", "/x", h2);
        assert_eq!(status, StatusCode::OK, "h2={h2}: {body}");
        assert_eq!(body, format!("served by server-c to {ip_a}"), "h2={h2}");
    }
    let inb = admin(&n2.dpu, "/metrics");
    let received = [
        ("reporter", "destination"),
        ("destination_principal", server_id),
        ("source_principal", client_id),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&inb, &received), 2.0, "{inb}");
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&n1.dpu, "/stats")).expect("stats JSON");
    assert!(
        stats["proxy"]["hbone_upstream"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );

    drop(server);
    let name = sim.cluster().to_string();
    drop(sim);
    drop(istiod);
    drop(istiod_rt);
    let left = dpumesh_sim::leftovers(&name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// NodeConfig of the same-node inbound test: the meshed server pod b (VF 1)
/// with an inbound policy in `mode`; the unmeshed caller is no mesh pod.
fn local_inbound_config(
    node: &Node,
    b: Ipv4Addr,
    mgmt: &str,
    version: u64,
    mode: &str,
) -> NodeConfig {
    let v = node.vf(1).expect("vf 1");
    let cfg = json!({
        "version": version,
        "node": {"name": "n1", "networkMode": "underlay", "podCidr": node.pod_cidr.to_string(),
                 "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": mgmt},
        "pods": [{"uid": "uid-b", "name": "server-b", "namespace": "default",
                  "serviceAccount": "server-b", "labels": {"app": "server"},
                  "ips": [b.to_string()], "mac": v.mac.to_string(), "vfIndex": v.index,
                  "representor": v.representor, "inboundPolicy": "server-b-in"}],
        "inboundPolicies": [{"name": "server-b-in", "peerAuthentication": {"mode": mode}}],
    });
    serde_json::from_value(cfg).expect("test NodeConfig parses")
}

/// Sum of the dataplane's `steered_connections_total` series for `pod` and `listener`.
fn steered(dataplane_metrics: &str, pod: &str, listener: &str) -> u64 {
    dataplane_metrics
        .lines()
        .filter(|l| l.starts_with("dpumesh_dataplane_pod_steered_connections_total{"))
        .filter(|l| {
            l.contains(&format!("pod=\"{pod}\"")) && l.contains(&format!("listener=\"{listener}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A caller on the server's own node meets the server's inbound policy: an
/// unmeshed pod's plaintext connection to a meshed pod on the same node is
/// steered by the dataplane to dpu-proxy's inbound listener (15006). Under
/// STRICT the proxy refuses it and the server sees nothing; under
/// PERMISSIVE it is served, and reported by the destination as plaintext.
#[test]
fn an_unmeshed_caller_on_the_same_node_meets_the_meshed_pods_inbound_policy() {
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxloc"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let (ip_u, ip_b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6));
    let pod_u = attach_pod(&sim, &node, 0, "caller-u", ip_u);
    let pod_b = attach_pod(&sim, &node, 1, "server-b", ip_b);
    let mut u = steering("uid-u", "caller-u", &node, 0, ip_u);
    u.meshed = false;
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let proxy_mgmt = start_node(
        &sim,
        1,
        vec![u, steering("uid-b", "server-b", &node, 1, ip_b)],
        &ca_dir.path().join("root.pem"),
    );
    push(
        &node.host,
        proxy_mgmt.clone(),
        local_inbound_config(&node, ip_b, &proxy_mgmt, 1, "STRICT"),
    );
    let server = PodServer::start(&pod_b, "server-b", SERVER_PORT);
    let direct = SocketAddr::new(ip_b.into(), SERVER_PORT);

    // STRICT: the proxy accepts the steered connection and resets it before
    // reading a byte; no answer, nothing reaches b.
    let answer = pod_u
        .run(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&direct, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // A write may already meet the reset.
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: server-b\r\n\r\n");
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        })
        .expect("pod netns");
    match &answer {
        Err(_) => {}
        Ok(got) => assert!(
            got.is_empty(),
            "plaintext answered under STRICT: {}",
            String::from_utf8_lossy(got)
        ),
    }
    assert!(
        server.peer_ips().is_empty(),
        "the server saw {:?}",
        server.peer_ips()
    );
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&node.dpu, "/stats")).expect("stats JSON");
    assert_eq!(
        stats["proxy"]["peer_authn_refused"], 1,
        "dpu-proxy refused the plaintext connection: {stats}"
    );
    let (status, dp_metrics) = get(
        &node.dpu,
        "127.0.0.1:15091".parse().expect("static"),
        "dataplane",
        "/metrics",
        false,
    );
    assert_eq!(status, StatusCode::OK, "{dp_metrics}");
    assert_eq!(
        steered(&dp_metrics, "server-b", "inbound"),
        1,
        "{dp_metrics}"
    );

    // PERMISSIVE: the same call is served through the proxy, from u's own
    // address, and reported by the destination side as plaintext.
    push(
        &node.host,
        proxy_mgmt.clone(),
        local_inbound_config(&node, ip_b, &proxy_mgmt, 2, "PERMISSIVE"),
    );
    let (status, body) = get(&pod_u, direct, "server-b", "/ok", false);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("served by server-b to {ip_u}"));
    let metrics = admin(&node.dpu, "/metrics");
    let received = [
        ("reporter", "destination"),
        ("destination_workload", "server"),
        ("connection_security_policy", "none"),
        ("response_code", "200"),
    ];
    assert_eq!(requests_total(&metrics, &received), 1.0, "{metrics}");
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&node.dpu, "/stats")).expect("stats JSON");
    assert_eq!(stats["proxy"]["peer_authn_refused"], 1, "{stats}");

    drop(server);
    let sim_name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&sim_name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A CA made for a test: its PEM and what signs leaves.
fn test_ca(cn: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(p, key))
}

/// A leaf for `name` signed by `ca`: (certificate PEM, key PEM).
fn test_leaf(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let p = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    let cert = p.signed_by(&key, ca).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

/// Egress TLS origination end to end: a meshed pod calls an external service
/// (a ServiceEntry VIP) in plain HTTP; dpu-proxy originates TLS to it
/// (`SIMPLE`, then `MUTUAL`). The external server is OpenSSL's `s_server`
/// (`-www`) in an unmeshed pod on the same node, so the TLS peer is not ours.
#[test]
fn a_pod_reaches_an_external_tls_service_through_tls_originated_by_the_proxy() {
    const EXT_VIP: &str = "10.96.0.20";
    const EXT_HOST: &str = "api.example.com";
    let sim = SimGuard::up(
        SimConfig::new(unique_cluster("pxtls"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let node = sim.node(1).expect("node 1").clone();
    let (ip_a, ip_ext) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6));
    let pod_a = attach_pod(&sim, &node, 0, "client-a", ip_a);
    let pod_ext = attach_pod(&sim, &node, 1, "external", ip_ext);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ext_steering = steering("uid-ext", "external", &node, 1, ip_ext);
    ext_steering.meshed = false;
    let proxy_mgmt = start_node(
        &sim,
        1,
        vec![steering("uid-a", "client-a", &node, 0, ip_a), ext_steering],
        &dir.path().join("root.pem"),
    );

    // The external server's certificates, and OpenSSL on 8443 (server
    // authentication) and 9443 (also requires a client certificate).
    let (server_ca, server_issuer) = test_ca("external server CA");
    let (client_ca, client_issuer) = test_ca("egress client CA");
    let (leaf, leaf_key) = test_leaf(&server_issuer, EXT_HOST);
    let (client, client_key) = test_leaf(&client_issuer, "egress.example.com");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let (cert_file, key_file) = (file("leaf.pem", &leaf), file("leaf.key", &leaf_key));
    let client_ca_file = file("client-ca.pem", &client_ca);
    for (name, port, extra) in [
        ("s-server-8443", "8443", vec![]),
        (
            "s-server-9443",
            "9443",
            vec![
                "-Verify".to_string(),
                "1".into(),
                "-CAfile".into(),
                client_ca_file.clone(),
            ],
        ),
    ] {
        sim.spawn_with(
            SpawnSpec::new(name, pod_ext.clone(), "/usr/bin/openssl")
                .args([
                    "s_server", "-accept", port, "-www", "-cert", &cert_file, "-key", &key_file,
                ])
                .args(extra),
        )
        .expect("spawn openssl s_server");
        let addr = SocketAddr::new(ip_ext.into(), port.parse().expect("port"));
        wait_listening(&pod_ext, addr, "openssl s_server");
    }

    let config = |version: u64, ca_pem: &str| -> NodeConfig {
        let pod = |uid: &str, name: &str, vf: usize, ip: Ipv4Addr, meshed: bool| {
            let v = node.vf(vf).expect("vf");
            json!({"uid": uid, "name": name, "namespace": "default", "serviceAccount": name,
                   "ips": [ip.to_string()], "mac": v.mac.to_string(), "meshed": meshed,
                   "vfIndex": v.index, "representor": v.representor})
        };
        serde_json::from_value(json!({
            "version": version,
            "node": {"name": "n1", "networkMode": "underlay",
                     "podCidr": node.pod_cidr.to_string(),
                     "serviceCidrs": ["10.96.0.0/16"], "dpuMgmtAddr": proxy_mgmt},
            "pods": [pod("uid-a", "client-a", 0, ip_a, true),
                     pod("uid-ext", "external", 1, ip_ext, false)],
            "services": [{
                "hostname": EXT_HOST, "namespace": "default", "vips": [EXT_VIP],
                "ports": [{"port": 80, "name": "http", "targetPort": 8443},
                          {"port": 81, "name": "http-mtls", "targetPort": 9443}],
                "endpoints": [{"address": ip_ext.to_string(), "hbone": false}],
            }],
            "clusters": [
                {"name": format!("outbound|80||{EXT_HOST}"), "service": EXT_HOST, "port": 80,
                 "tls": "SIMPLE", "tlsOrigination": {"caCertificates": "kubernetes://default/ext-cacert"}},
                {"name": format!("outbound|81||{EXT_HOST}"), "service": EXT_HOST, "port": 81,
                 "tls": "MUTUAL", "tlsOrigination": {"caCertificates": "kubernetes://default/ext-cacert",
                                                     "clientCertificate": "kubernetes://default/ext"}}
            ],
            "secrets": [
                {"name": "kubernetes://default/ext-cacert", "caCertificates": ca_pem},
                {"name": "kubernetes://default/ext", "certificateChain": client,
                 "privateKey": client_key}
            ],
        }))
        .expect("test NodeConfig parses")
    };
    push(&node.host, proxy_mgmt.clone(), config(1, &server_ca));
    assert!(admin(&node.dpu, "/ready").contains("config version 1"));

    // SIMPLE: the pod's plain GET arrives over TLS; s_server's -www status page.
    let simple: SocketAddr = format!("{EXT_VIP}:80").parse().expect("vip");
    let (status, body) = get(&pod_a, simple, EXT_HOST, "/", false);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("s_server"), "{body}");
    // MUTUAL: the server that demands a client certificate answers too.
    let mutual: SocketAddr = format!("{EXT_VIP}:81").parse().expect("vip");
    let (status, body) = get(&pod_a, mutual, EXT_HOST, "/", false);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("s_server"), "{body}");

    // Another CA: the server is not trusted → 503 UF, counted, nothing in plaintext.
    let (other_ca, _) = test_ca("some other CA");
    push(&node.host, proxy_mgmt.clone(), config(2, &other_ca));
    assert!(admin(&node.dpu, "/ready").contains("config version 2"));
    let (status, body) = get(&pod_a, simple, EXT_HOST, "/", false);
    assert_eq!(status.as_u16(), 503, "{body}");
    assert!(body.contains("UF"), "{body}");
    let stats: serde_json::Value =
        serde_json::from_str(&admin(&node.dpu, "/stats")).expect("stats JSON");
    let failures: u64 = stats["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter(|c| c["name"] == format!("outbound|80||{EXT_HOST}"))
        .filter_map(|c| c["tls_handshake_failures"].as_u64())
        .sum();
    assert!(failures >= 1, "{stats}");

    let sim_name = sim.cluster().to_string();
    drop(sim);
    let left = dpumesh_sim::leftovers(&sim_name).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

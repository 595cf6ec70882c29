//! The eBPF dataplane in the simulator, in the real kernel: two nodes, pods
//! attached as the CNI would, the BPF backend programming each DPU.
mod bpf_common;

use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::time::Duration;

use bpf_common::*;
use dpumesh_dataplane::bpf::maps::{DropReason, PodCounters, MODE_OVERLAY, MODE_UNDERLAY};
use dpumesh_dataplane::bpf::{
    BpfDataplane, InterceptionSpec, NetworkSpec, PinDir, PodSpec, UnderlayPeer,
};
use dpumesh_sim::{Netns, Sim, SimConfig, SimGuard};

struct Pins(Vec<PinDir>);
impl Drop for Pins {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = p.remove();
        }
    }
}

fn network_in(sim: &Sim, node: usize, mode: u8) -> NetworkSpec {
    let n = sim.node(node).unwrap();
    NetworkSpec {
        mode,
        pod_cidr: n.pod_cidr,
        pod_cidr6: None,
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        uplink: n.uplink_ifname.clone(),
        underlay_ip: n.uplink.addr(),
        vni: 4242,
        peers: sim
            .nodes()
            .iter()
            .filter(|p| p.index != node)
            .map(|p| UnderlayPeer {
                pod_cidr: p.pod_cidr,
                pod_cidr6: None,
                underlay_ip: p.uplink.addr(),
            })
            .collect(),
    }
}

fn pod_spec(sim: &Sim, node: usize, vf: usize, uid: &str, ip: Ipv4Addr, meshed: bool) -> PodSpec {
    let v = sim.node(node).unwrap().vf(vf).unwrap().clone();
    PodSpec {
        uid: uid.into(),
        representor: v.representor,
        vf_index: vf as u32,
        ipv4: ip,
        ipv6: None,
        mac: v.mac.0,
        meshed,
        interception: InterceptionSpec::default(),
    }
}

/// Loads (or reloads, reusing pins) node `node`'s dataplane in its DPU netns.
fn start_dataplane(sim: &Sim, node: usize, pods: &[PodSpec]) -> BpfDataplane {
    start_dataplane_in(sim, node, pods, MODE_UNDERLAY)
}

fn start_dataplane_in(sim: &Sim, node: usize, pods: &[PodSpec], mode: u8) -> BpfDataplane {
    let n = sim.node(node).unwrap();
    let pin = PinDir(n.bpf_pin_dir.clone());
    let net = network_in(sim, node, mode);
    n.dpu
        .run(|| {
            let mut dp = BpfDataplane::load(&pin).expect("load");
            dp.apply_network(&net).expect("network");
            dp.reconcile(pods).expect("reconcile");
            dp
        })
        .expect("dpu netns")
}

fn counters(dp: &BpfDataplane, uid: &str) -> PodCounters {
    dp.pod_counters(uid).unwrap().expect("pod installed")
}

fn ping(from: &Netns, to: Ipv4Addr) -> Result<String, String> {
    // iputils ping is not installed here; busybox-static is.
    exec(
        from,
        "busybox",
        &["ping", "-c", "3", "-W", "2", &to.to_string()],
    )
}

/// A TCP echo server on `addr` in `ns`, serving one connection on a thread.
fn echo_server(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let l = ns
        .run(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind"))
        .expect("netns");
    std::thread::spawn(move || {
        if let Some(mut s) = accept_timeout(&l) {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    })
}

/// Accepts one connection within 10 s (a hung test is worse than a failed one).
fn accept_timeout(l: &TcpListener) -> Option<TcpStream> {
    l.set_nonblocking(true).ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                return Some(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    None
}

fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    ns.run(|| {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    })
    .expect("netns")
}

/// A UDP echo of one datagram: a server in `server` on `port`, a client in
/// `client` sending to `ip:port` until the echo comes back (ARP may eat the
/// first datagram).
fn udp_roundtrip(client: &Netns, server: &Netns, ip: Ipv4Addr, port: u16) {
    let srv = server
        .run(move || UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind"))
        .expect("netns");
    srv.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Echo until the client stops sending (read times out).
        let mut served = 0;
        srv.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while let Ok((n, from)) = srv.recv_from(&mut buf) {
            srv.send_to(&buf[..n], from).expect("echo");
            served += 1;
        }
        served
    });
    let c = client
        .run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"))
        .expect("netns");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let msg = b"udp through the dataplane";
    let mut got = None;
    for _ in 0..10 {
        c.send_to(msg, (ip, port)).expect("send");
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = c.recv_from(&mut buf) {
            got = Some((buf[..n].to_vec(), from));
            break;
        }
    }
    let (data, from) = got.unwrap_or_else(|| panic!("no UDP echo from {ip}:{port}"));
    assert_eq!(data, msg);
    assert_eq!(from, SocketAddr::from((ip, port)));
    assert!(echo.join().unwrap() >= 1);
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("read echo");
    assert_eq!(got, msg);
}

#[test]
fn pods_talk_through_the_dataplane_spoofing_is_dropped_and_captured_tcp_reaches_the_proxy() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfs"))
            .with_nodes(2)
            .with_vfs(3),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 2, 7),
    );
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let pb = cni_attach(&sim, 1, 1, "b", ip_b, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    let mut pods1 = vec![
        pod_spec(&sim, 1, 0, "uid-a", ip_a, false),
        pod_spec(&sim, 1, 1, "uid-b", ip_b, false),
    ];
    let pods2 = vec![pod_spec(&sim, 2, 0, "uid-c", ip_c, false)];
    let dp1 = start_dataplane(&sim, 1, &pods1);
    let _dp2 = start_dataplane(&sim, 2, &pods2);

    // Same node: ping and TCP.
    eprintln!("step: same-node ping");
    let out = ping(&pa, ip_b).expect("a -> b ping");
    // The reply left b with TTL 64 and crossed one routing hop (the DPU).
    assert!(out.contains("ttl=63"), "one hop on the same node: {out}");
    eprintln!("step: same-node tcp");
    let srv = echo_server(&pb, 8080);
    let mut s = connect(&pa, SocketAddr::from((ip_b, 8080)));
    roundtrip(&mut s, b"same node");
    drop(s);
    srv.join().unwrap();
    let a = counters(&dp1, "uid-a");
    let b = counters(&dp1, "uid-b");
    assert!(a.bypassed >= 3 && a.packets_out >= a.bypassed, "a: {a:?}");
    assert!(b.packets_in >= 3 && b.bytes_in > 0, "b: {b:?}");
    assert!(
        a.arp_replies >= 1,
        "a resolved b through the dataplane's ARP: {a:?}"
    );

    // Across nodes, underlay.
    eprintln!("step: cross-node ping");
    let out = ping(&pa, ip_c).expect("a -> c ping across nodes");
    assert!(
        out.contains("ttl=62"),
        "two hops across nodes (both DPUs): {out}"
    );
    eprintln!("step: cross-node tcp");
    let srv = echo_server(&pc, 8081);
    let mut s = connect(&pa, SocketAddr::from((ip_c, 8081)));
    roundtrip(&mut s, b"cross node");
    drop(s);
    srv.join().unwrap();
    eprintln!("step: udp same node and cross node");
    udp_roundtrip(&pa, &pb, ip_b, 9001);
    udp_roundtrip(&pa, &pc, ip_c, 9002);

    eprintln!("step: spoofing");
    // Spoofing: a sends as another IP; nothing arrives, drops are counted.
    let before = counters(&dp1, "uid-a").drop_count(DropReason::SpoofIp);
    exec(&pa, "ip", &["addr", "add", "10.244.1.99/32", "dev", "eth0"]).unwrap();
    assert!(exec(
        &pa,
        "busybox",
        &[
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "10.244.1.99",
            &ip_b.to_string()
        ]
    )
    .is_err());
    let after = counters(&dp1, "uid-a").drop_count(DropReason::SpoofIp);
    assert!(
        after >= before + 2,
        "spoofed pings counted: {before} -> {after}"
    );

    eprintln!("step: captured tcp");
    // Captured TCP: a becomes meshed; its connection to a service VIP lands on
    // a transparent listener on 15001 in the DPU netns, with the original
    // destination as the local address.
    pods1[0].meshed = true;
    let dpu1 = sim.node(1).unwrap().dpu.clone();
    let mut dp1 = dp1;
    dpu1.run(|| dp1.apply_pod(&pods1[0]))
        .unwrap()
        .expect("mesh a");
    let listener = dpu1
        .run(|| {
            let l =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            l.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
            l.set_reuse_address(true).unwrap();
            l.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15001).into())
                .expect("bind");
            l.listen(16).unwrap();
            TcpListener::from(l)
        })
        .unwrap();
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let client = std::thread::spawn({
        let pa = pa.clone();
        move || {
            let mut s = connect(&pa, vip);
            roundtrip(&mut s, b"via the proxy");
        }
    });
    let Some(mut conn) = accept_timeout(&listener) else {
        let dpu_state = ["rule", "route show table all", "neigh"]
            .map(|c| exec(&dpu1, "sh", &["-c", &format!("ip {c}; nstat -az 2>/dev/null | grep -i -E 'TcpExt|InNoRoutes|Listen' | head -30")]));
        panic!(
            "no connection on 15001; a = {:?}\n{dpu_state:#?}",
            counters(&dp1, "uid-a")
        );
    };
    let peer = conn.peer_addr().unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(ip_a),
        "client address preserved"
    );
    assert_eq!(
        conn.local_addr().unwrap(),
        vip,
        "original destination preserved"
    );
    let mut buf = [0u8; 13];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(&buf).unwrap();
    client.join().expect("client");
    let a = counters(&dp1, "uid-a");
    assert_eq!(a.steered_outbound, 1, "{a:?}");
    assert!(
        a.to_proxy_socket >= 3,
        "rest of the flow went to the socket: {a:?}"
    );

    eprintln!("step: excluded port");
    // Unmeshed traffic of a meshed pod to a non-captured port still bypasses.
    pods1[0].interception.exclude_outbound_ports = vec![8082];
    dpu1.run(|| dp1.apply_pod(&pods1[0]))
        .unwrap()
        .expect("exclude port");
    let srv = echo_server(&pb, 8082);
    let mut s = connect(&pa, SocketAddr::from((ip_b, 8082)));
    roundtrip(&mut s, b"excluded");
    drop(s);
    srv.join().unwrap();

    eprintln!("step: restart");
    // Restart: a long-lived flow survives the dataplane going away and coming
    // back (pins reused, filters replaced in place).
    // (From b, which is not meshed: a's flows to c are captured now.)
    drop(conn);
    drop(listener);
    let srv = echo_server(&pc, 8083);
    let mut long = connect(&pb, SocketAddr::from((ip_c, 8083)));
    roundtrip(&mut long, b"before restart");
    let before = counters(&dp1, "uid-b");
    drop(dp1);
    eprintln!("step: restart: dataplane down");
    let filters = exec(&dpu1, "tc", &["filter", "show", "dev", "pf0vf0", "ingress"]).unwrap();
    assert!(
        filters.contains("dm_rep_ingress"),
        "filter stays attached: {filters}"
    );
    roundtrip(&mut long, b"while the dataplane is down");
    let dp1 = start_dataplane(&sim, 1, &pods1);
    eprintln!("step: restart: dataplane up again");
    roundtrip(&mut long, b"after restart");
    let after = counters(&dp1, "uid-b");
    assert!(
        after.packets_out > before.packets_out,
        "counters kept across restart"
    );
    drop(long);
    srv.join().unwrap();
    drop(dp1);
}

#[test]
fn a_thousand_pod_add_remove_cycles_leave_the_maps_empty() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfc"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let _pins = Pins(vec![PinDir(sim.node(1).unwrap().bpf_pin_dir.clone())]);
    let mut dp = start_dataplane(&sim, 1, &[]);
    let dpu = sim.node(1).unwrap().dpu.clone();
    let mut spec = pod_spec(&sim, 1, 0, "uid-x", Ipv4Addr::new(10, 244, 1, 9), true);
    spec.interception.exclude_outbound_cidrs = vec!["10.96.7.0/24".parse().unwrap()];
    spec.interception.exclude_outbound_ports = vec![22];
    dpu.run(|| {
        for i in 0..1000u32 {
            spec.uid = format!("uid-{i}");
            spec.ipv4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 1, 10)) + (i % 200));
            dp.apply_pod(&spec).expect("apply");
            assert!(dp.remove_pod(&spec.uid).expect("remove"));
        }
    })
    .unwrap();
    let u = dp.usage().unwrap();
    assert_eq!(u.endpoints_by_ifindex, 0);
    assert_eq!(u.endpoints_by_ip, 0);
    assert_eq!(u.pod_cidrs, 0);
    assert_eq!(u.used_counter_slots, 0);
    assert_eq!(u.node_cidrs, 2, "node-wide entries stay");
    let routes = exec(&dpu, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    assert!(
        !routes.contains("10.244.1."),
        "no pod routes left: {routes}"
    );
}

#[test]
fn a_pod_update_that_fails_half_way_is_rolled_back() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfr"))
            .with_nodes(1)
            .with_vfs(2),
    )
    .expect("sim up");
    let pin = PinDir(sim.node(1).unwrap().bpf_pin_dir.clone());
    let _pins = Pins(vec![pin.clone()]);
    let mut dp = start_dataplane(&sim, 1, &[]);
    let dpu = sim.node(1).unwrap().dpu.clone();
    let mut a = pod_spec(&sim, 1, 0, "uid-a", Ipv4Addr::new(10, 244, 1, 9), true);
    a.interception.exclude_outbound_cidrs = vec!["10.96.7.0/24".parse().unwrap()];
    let b = pod_spec(&sim, 1, 1, "uid-b", Ipv4Addr::new(10, 244, 1, 10), false);
    let view = || dpumesh_dataplane::bpf::loader::PinnedView::open(&pin).expect("view");
    let routes = || exec(&dpu, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    dpu.run(|| dp.apply_pod(&a)).unwrap().expect("apply a");
    let eps_before = view().endpoints();
    let (ips_before, cidrs_before, routes_before) = (view().ips(), view().pod_cidrs(), routes());

    // An update of a (new IP, other CIDRs) and a new pod b both fail after
    // their map writes: the maps are as before.
    let mut a2 = a.clone();
    a2.ipv4 = Ipv4Addr::new(10, 244, 1, 19);
    a2.interception.exclude_outbound_cidrs = vec!["10.96.8.0/24".parse().unwrap()];
    dp.fail_after_map_writes(true);
    dpu.run(|| dp.apply_pod(&a2))
        .unwrap()
        .expect_err("injected failure");
    dpu.run(|| dp.apply_pod(&b))
        .unwrap()
        .expect_err("injected failure");
    assert_eq!(view().endpoints(), eps_before);
    assert_eq!(view().ips(), ips_before);
    assert_eq!(view().pod_cidrs(), cidrs_before);
    assert_eq!(routes(), routes_before);
    assert_eq!(dp.pod_uids(), vec!["uid-a".to_string()]);

    // Without the failure both go through.
    dp.fail_after_map_writes(false);
    dpu.run(|| dp.apply_pod(&a2)).unwrap().expect("a2");
    dpu.run(|| dp.apply_pod(&b)).unwrap().expect("b");
    assert_eq!(
        view().ips(),
        vec![Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 19)]
    );
    assert_eq!(view().pod_cidrs(), 1);
}

/// SetNodeNetwork is all or nothing: a change that fails after it rewrote
/// routes and maps leaves the node config, node-wide CIDRs, tunnels, peer
/// routes and the VXLAN device as they were, from underlay and from overlay.
#[test]
fn a_network_change_that_fails_half_way_is_rolled_back() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfn"))
            .with_nodes(2)
            .with_vfs(1),
    )
    .expect("sim up");
    let pin = PinDir(sim.node(1).unwrap().bpf_pin_dir.clone());
    let _pins = Pins(vec![pin.clone()]);
    let mut dp = start_dataplane(&sim, 1, &[]);
    let dpu = sim.node(1).unwrap().dpu.clone();
    let view = || dpumesh_dataplane::bpf::loader::PinnedView::open(&pin).expect("view");
    let routes = || exec(&dpu, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    let has_vxlan = || exec(&dpu, "ip", &["link", "show", "dm-vxlan"]).is_ok();
    let state = |dp: &BpfDataplane| {
        (
            dp.node_config().unwrap(),
            dp.usage().unwrap().node_cidrs,
            view().tunnels(),
            routes(),
            has_vxlan(),
        )
    };

    // A different network: another mode, another peer, one more service CIDR.
    let changed = |mode: u8| {
        let mut n = network_in(&sim, 1, mode);
        n.service_cidrs.push("10.97.0.0/16".parse().unwrap());
        n.peers.push(UnderlayPeer {
            pod_cidr: "10.244.9.0/24".parse().unwrap(),
            pod_cidr6: None,
            underlay_ip: n.peers[0].underlay_ip,
        });
        n.vni = 77;
        n
    };

    for start_mode in [MODE_UNDERLAY, MODE_OVERLAY] {
        dp.fail_network_after_writes(false);
        dpu.run(|| dp.apply_network(&network_in(&sim, 1, start_mode)))
            .unwrap()
            .expect("network");
        let before = state(&dp);
        assert!(
            before.3.contains(" via ") || before.3.contains(" encap "),
            "{}",
            before.3
        );
        assert_eq!(before.4, start_mode == MODE_OVERLAY);

        dp.fail_network_after_writes(true);
        for mode in [MODE_UNDERLAY, MODE_OVERLAY] {
            dpu.run(|| dp.apply_network(&changed(mode)))
                .unwrap()
                .expect_err("injected failure");
            assert_eq!(
                state(&dp),
                before,
                "from mode {start_mode}, a failed change to mode {mode} left a trace"
            );
        }
        // Without the failure the change goes through.
        dp.fail_network_after_writes(false);
        let want = changed(start_mode);
        dpu.run(|| dp.apply_network(&want))
            .unwrap()
            .expect("change");
        let after = state(&dp);
        assert_eq!(after.1, before.1 + 2, "one more service CIDR and pod CIDR");
        assert!(after.3.contains("10.244.9.0/24"), "{}", after.3);
        assert_eq!(after.0.vni, 77);
    }
}

/// The first packet to a peer whose underlay neighbour is not resolved
/// (`bpf_fib_lookup` says NO_NEIGH) is queued by `bpf_redirect_neigh` while
/// ARP resolves, not lost. Every round flushes every neighbour on the way
/// (the pods' gateway entries and both DPUs' uplink entries), then one UDP
/// datagram and its one echo must make it.
#[test]
fn the_first_packet_to_an_unresolved_neighbour_is_not_lost() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfq"))
            .with_nodes(2)
            .with_vfs(1),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (ip_a, ip_c) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7));
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    let mut dps = [
        start_dataplane(&sim, 1, &[pod_spec(&sim, 1, 0, "uid-a", ip_a, false)]),
        start_dataplane(&sim, 2, &[pod_spec(&sim, 2, 0, "uid-c", ip_c, false)]),
    ];
    let srv = pc
        .run(|| UdpSocket::bind("0.0.0.0:7000").expect("bind"))
        .expect("netns");
    srv.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let cli = pa
        .run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"))
        .expect("netns");
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let flush = || {
        for pod in [&pa, &pc] {
            exec(pod, "ip", &["neigh", "flush", "dev", "eth0"]).expect("flush pod");
        }
        for n in [1, 2] {
            let node = sim.node(n).unwrap();
            exec(
                &node.dpu,
                "ip",
                &["neigh", "flush", "dev", &node.uplink_ifname],
            )
            .expect("flush dpu");
            let left = exec(
                &node.dpu,
                "ip",
                &["neigh", "show", "dev", &node.uplink_ifname],
            )
            .expect("neigh show");
            assert!(!left.contains("lladdr"), "node {n} still has {left}");
        }
    };
    let peer2 = sim.node(2).unwrap().uplink.addr().to_string();
    for mode in [MODE_UNDERLAY, MODE_OVERLAY] {
        for (i, dp) in dps.iter_mut().enumerate() {
            let net = network_in(&sim, i + 1, mode);
            sim.node(i + 1)
                .unwrap()
                .dpu
                .run(|| dp.apply_network(&net))
                .unwrap()
                .expect("network");
        }
        for round in 0..5 {
            let round = format!("mode {mode} round {round}");
            flush();
            let msg = format!("round {round}");
            cli.send_to(msg.as_bytes(), (ip_c, 7000)).expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = srv
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: the first packet a -> c was lost: {e}"));
            assert_eq!(&buf[..n], msg.as_bytes());
            // DPU 1 resolved its peer by ARP for this very packet.
            let node1 = sim.node(1).unwrap();
            let learnt = exec(
                &node1.dpu,
                "ip",
                &["neigh", "show", "dev", &node1.uplink_ifname],
            )
            .expect("neigh show");
            assert!(
                learnt.contains(&peer2) && learnt.contains("lladdr"),
                "{learnt}"
            );
            flush();
            srv.send_to(&buf[..n], from).expect("echo");
            let (n, _) = cli
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: the first packet c -> a was lost: {e}"));
            assert_eq!(&buf[..n], msg.as_bytes());
        }
    }
}

/// A transparent listener on `port` in `ns` (as dpu-proxy binds 15001/15006).
fn transparent_listener(ns: &Netns, port: u16) -> TcpListener {
    ns.run(|| {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
        l.set_reuse_address(true).unwrap();
        l.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
            .expect("bind");
        l.listen(16).unwrap();
        TcpListener::from(l)
    })
    .unwrap()
}

/// A connection from `client` to `dst` must land on `listener` (in the
/// server node's DPU) with the original destination and the client's
/// address, and carry data both ways.
fn captured_inbound(listener: &TcpListener, client: &Netns, client_ip: Ipv4Addr, dst: SocketAddr) {
    let c = std::thread::spawn({
        let client = client.clone();
        move || {
            let mut s = connect(&client, dst);
            roundtrip(&mut s, b"inbound via the proxy");
        }
    });
    let mut conn = accept_timeout(listener).expect("no connection on the inbound listener");
    assert_eq!(conn.local_addr().unwrap(), dst, "original destination");
    assert_eq!(
        conn.peer_addr().unwrap().ip(),
        std::net::IpAddr::V4(client_ip),
        "client address"
    );
    let mut buf = [0u8; 21];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(&buf).unwrap();
    c.join().expect("client");
}

#[test]
fn overlay_vxlan_carries_ping_tcp_udp_and_inbound_capture_across_nodes() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfo"))
            .with_nodes(2)
            .with_vfs(2),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 2, 7),
    );
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let _pb = cni_attach(&sim, 1, 1, "b", ip_b, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    let mut pods1 = vec![
        pod_spec(&sim, 1, 0, "uid-a", ip_a, false),
        pod_spec(&sim, 1, 1, "uid-b", ip_b, false),
    ];
    let pods2 = vec![pod_spec(&sim, 2, 0, "uid-c", ip_c, false)];
    let mut dp1 = start_dataplane_in(&sim, 1, &pods1, MODE_OVERLAY);
    let dp2 = start_dataplane_in(&sim, 2, &pods2, MODE_OVERLAY);
    let dpu1 = sim.node(1).unwrap().dpu.clone();
    let dpu2 = sim.node(2).unwrap().dpu.clone();

    // The overlay is in place: a VXLAN device, LWT routes, no underlay routes.
    let routes = exec(&dpu1, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    assert!(
        routes.contains("10.244.2.0/24") && routes.contains("encap ip id 4242"),
        "{routes}"
    );
    assert!(!routes.contains(" via "), "{routes}");
    let vx = exec(&dpu1, "ip", &["-d", "link", "show", "dm-vxlan"]).unwrap();
    assert!(vx.contains("external"), "{vx}");
    let tx_packets = |ns: &Netns| -> u64 {
        let s = exec(
            ns,
            "cat",
            &["/sys/class/net/dm-vxlan/statistics/tx_packets"],
        )
        .unwrap();
        s.trim().parse().unwrap()
    };
    let tx_before = tx_packets(&dpu1) + tx_packets(&dpu2);

    eprintln!("step: overlay ping");
    ping(&pa, ip_c).expect("a -> c over VXLAN");
    ping(&pc, ip_a).expect("c -> a over VXLAN");
    eprintln!("step: overlay tcp");
    let srv = echo_server(&pc, 8081);
    let mut s = connect(&pa, SocketAddr::from((ip_c, 8081)));
    roundtrip(&mut s, b"overlay tcp");
    drop(s);
    srv.join().unwrap();
    eprintln!("step: overlay udp");
    udp_roundtrip(&pa, &pc, ip_c, 9003);
    udp_roundtrip(&pc, &pa, ip_a, 9004);
    let tx_after = tx_packets(&dpu1) + tx_packets(&dpu2);
    assert!(
        tx_after >= tx_before + 12,
        "traffic went through the tunnel: {tx_before} -> {tx_after}"
    );
    let a = counters(&dp1, "uid-a");
    let c = counters(&dp2, "uid-c");
    assert!(a.bypassed >= 6 && c.bypassed >= 6, "a: {a:?} c: {c:?}");

    eprintln!("step: overlay inbound capture");
    // b is meshed: c's connection to b arrives through the tunnel and is
    // steered to the inbound listener on node 1's DPU.
    pods1[1].meshed = true;
    dpu1.run(|| dp1.apply_pod(&pods1[1]))
        .unwrap()
        .expect("mesh b");
    let listener = transparent_listener(&dpu1, 15006);
    captured_inbound(&listener, &pc, ip_c, SocketAddr::from((ip_b, 8080)));
    let b = counters(&dp1, "uid-b");
    assert_eq!(b.steered_inbound, 1, "{b:?}");
    assert!(b.to_proxy_socket >= 2, "{b:?}");

    // Back to underlay: the tunnel goes, peer routes return, traffic flows.
    dpu1.run(|| dp1.apply_network(&network_in(&sim, 1, MODE_UNDERLAY)))
        .unwrap()
        .expect("underlay 1");
    let mut dp2 = dp2;
    dpu2.run(|| dp2.apply_network(&network_in(&sim, 2, MODE_UNDERLAY)))
        .unwrap()
        .expect("underlay 2");
    assert!(exec(&dpu1, "ip", &["link", "show", "dm-vxlan"]).is_err());
    let routes = exec(&dpu1, "ip", &["-4", "route", "show", "proto", "77"]).unwrap();
    assert!(
        routes.contains(" via 192.0.2.12") && !routes.contains("encap"),
        "{routes}"
    );
    ping(&pa, ip_c).expect("a -> c over the underlay again");
}

#[test]
fn underlay_inbound_capture_from_another_node_reaches_the_inbound_listener() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfi"))
            .with_nodes(2)
            .with_vfs(1),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (ip_b, ip_c) = (Ipv4Addr::new(10, 244, 1, 6), Ipv4Addr::new(10, 244, 2, 7));
    let pb = cni_attach(&sim, 1, 0, "b", ip_b, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    let mut b = pod_spec(&sim, 1, 0, "uid-b", ip_b, true);
    // Capture only 8080; 8081 stays direct.
    b.interception.capture_inbound_ports = vec![8080];
    let dp1 = start_dataplane(&sim, 1, &[b]);
    let _dp2 = start_dataplane(&sim, 2, &[pod_spec(&sim, 2, 0, "uid-c", ip_c, false)]);
    let dpu1 = sim.node(1).unwrap().dpu.clone();

    // Settle the neighbours on the way (ping is not captured).
    ping(&pc, ip_b).expect("c -> b");
    // No listener yet: the proxy is down, captured SYNs are dropped (fail closed).
    let refused = pc.run(move || {
        TcpStream::connect_timeout(&SocketAddr::from((ip_b, 8080)), Duration::from_millis(700))
    });
    let refused = refused.unwrap();
    assert!(
        refused.is_err(),
        "captured port reachable without the proxy"
    );
    let got = counters(&dp1, "uid-b");
    assert!(
        got.drop_count(DropReason::NoProxy) >= 1,
        "{refused:?} {got:?} {:?}",
        counters(&_dp2, "uid-c")
    );

    let listener = transparent_listener(&dpu1, 15006);
    captured_inbound(&listener, &pc, ip_c, SocketAddr::from((ip_b, 8080)));
    let got = counters(&dp1, "uid-b");
    assert_eq!(got.steered_inbound, 1, "{got:?}");
    assert!(
        got.to_proxy_socket >= 2,
        "rest of the flow to the socket: {got:?}"
    );

    // HBONE (15008) reaches the proxy although the list names only 8080.
    captured_inbound(&listener, &pc, ip_c, SocketAddr::from((ip_b, 15008)));
    assert_eq!(counters(&dp1, "uid-b").steered_inbound, 2);

    // A port not in the capture list goes straight to the pod.
    let srv = echo_server(&pb, 8081);
    let mut s = connect(&pc, SocketAddr::from((ip_b, 8081)));
    roundtrip(&mut s, b"not captured");
    drop(s);
    srv.join().unwrap();
    assert_eq!(counters(&dp1, "uid-b").steered_inbound, 2);
}

/// The hops `busybox traceroute` (or `traceroute6`) prints: the address of
/// each hop, `*` when none answered.
fn traceroute(from: &Netns, to: IpAddr) -> Vec<String> {
    let tool = if to.is_ipv6() {
        "traceroute6"
    } else {
        "traceroute"
    };
    let out = exec(
        from,
        "busybox",
        &[tool, "-n", "-q", "1", "-w", "2", "-m", "5", &to.to_string()],
    )
    .expect(tool);
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()?.parse::<u32>().ok()?;
            w.next().map(str::to_string)
        })
        .collect()
}

#[test]
fn ttl_exceeded_is_answered_with_icmp_time_exceeded_so_traceroute_sees_the_dpus() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfh"))
            .with_nodes(2)
            .with_vfs(2),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 2, 7),
    );
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let _pb = cni_attach(&sim, 1, 1, "b", ip_b, gw1);
    let _pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    let pods1 = vec![
        pod_spec(&sim, 1, 0, "uid-a", ip_a, false),
        pod_spec(&sim, 1, 1, "uid-b", ip_b, false),
    ];
    let pods2 = vec![pod_spec(&sim, 2, 0, "uid-c", ip_c, false)];
    let mut dps = [
        start_dataplane(&sim, 1, &pods1),
        start_dataplane(&sim, 2, &pods2),
    ];

    // Same node: the DPU is the one hop between a and b.
    let hops = traceroute(&pa, ip_b.into());
    assert_eq!(hops, [gw1.to_string(), ip_b.to_string()], "a -> b");

    for mode in [MODE_UNDERLAY, MODE_OVERLAY] {
        for (i, dp) in dps.iter_mut().enumerate() {
            let net = network_in(&sim, i + 1, mode);
            sim.node(i + 1)
                .unwrap()
                .dpu
                .run(|| dp.apply_network(&net))
                .unwrap()
                .expect("network");
        }
        let a_before = counters(&dps[0], "uid-a").drop_count(DropReason::TtlExceeded);
        let c_before = counters(&dps[1], "uid-c").drop_count(DropReason::TtlExceeded);
        // Across nodes: DPU 1 (TTL 1 from a), DPU 2 (TTL 1 on arrival from
        // the fabric, answered back across the fabric), then c itself.
        let hops = traceroute(&pa, ip_c.into());
        assert_eq!(
            hops,
            [gw1.to_string(), gw2.to_string(), ip_c.to_string()],
            "a -> c, mode {mode}"
        );
        // The drops stay counted: on the sender for DPU 1, on the
        // destination pod for DPU 2.
        let a_after = counters(&dps[0], "uid-a").drop_count(DropReason::TtlExceeded);
        let c_after = counters(&dps[1], "uid-c").drop_count(DropReason::TtlExceeded);
        assert!(a_after > a_before, "mode {mode}: a {a_before} -> {a_after}");
        assert!(c_after > c_before, "mode {mode}: c {c_before} -> {c_after}");
    }
}

// ---------------------------------------------------------------- IPv6

/// Node `i`'s IPv6 pod CIDR in these tests.
fn pod_cidr6(node: usize) -> ipnet::Ipv6Net {
    format!("fd00:10:244:{node}::/64").parse().unwrap()
}

fn pod_ip6(node: usize, host: u16) -> Ipv6Addr {
    let mut s = pod_cidr6(node).network().segments();
    s[7] = host;
    Ipv6Addr::from(s)
}

/// As [`network_in`], dual stack: every node also has an IPv6 pod CIDR.
fn network6_in(sim: &Sim, node: usize, mode: u8) -> NetworkSpec {
    let mut n = network_in(sim, node, mode);
    n.pod_cidr6 = Some(pod_cidr6(node));
    for (p, peer) in n
        .peers
        .iter_mut()
        .zip(sim.nodes().iter().filter(|p| p.index != node))
    {
        p.pod_cidr6 = Some(pod_cidr6(peer.index));
    }
    n
}

/// The pod's IPv6 address (/64, no DAD) and its default route via the
/// node's IPv6 gateway, as a dual-stack CNI would configure it.
fn add_ipv6(pod: &Netns, ip: Ipv6Addr, gateway: Ipv6Addr) {
    exec(
        pod,
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .expect("IPv6 address");
    exec(
        pod,
        "ip",
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
            "dev",
            "eth0",
        ],
    )
    .expect("IPv6 default route");
}

fn ping6(from: &Netns, to: Ipv6Addr) -> Result<String, String> {
    exec(
        from,
        "busybox",
        &["ping6", "-c", "3", "-W", "2", &to.to_string()],
    )
}

fn echo_server6(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let l = ns
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).expect("bind [::]"))
        .expect("netns");
    std::thread::spawn(move || {
        if let Some(mut s) = accept_timeout(&l) {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    })
}

fn tcp6_roundtrip(client: &Netns, server: &Netns, ip: Ipv6Addr, port: u16, msg: &[u8]) {
    let srv = echo_server6(server, port);
    let mut s = connect(client, SocketAddr::from((ip, port)));
    roundtrip(&mut s, msg);
    drop(s);
    srv.join().unwrap();
}

#[test]
fn dual_stack_pods_talk_ipv6_through_the_dataplane_on_a_node_and_across_nodes() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpf6"))
            .with_nodes(2)
            .with_vfs(2),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (gw6_1, gw6_2) = (pod_ip6(1, 1), pod_ip6(2, 1));
    let (ip_a, ip_b, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 2, 7),
    );
    let (ip6_a, ip6_b, ip6_c) = (pod_ip6(1, 5), pod_ip6(1, 6), pod_ip6(2, 7));
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let pb = cni_attach(&sim, 1, 1, "b", ip_b, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    add_ipv6(&pa, ip6_a, gw6_1);
    add_ipv6(&pb, ip6_b, gw6_1);
    add_ipv6(&pc, ip6_c, gw6_2);
    let with6 = |mut p: PodSpec, ip: Ipv6Addr| {
        p.ipv6 = Some(ip);
        p
    };
    let pods1 = vec![
        with6(pod_spec(&sim, 1, 0, "uid-a", ip_a, false), ip6_a),
        with6(pod_spec(&sim, 1, 1, "uid-b", ip_b, false), ip6_b),
    ];
    let pods2 = vec![with6(pod_spec(&sim, 2, 0, "uid-c", ip_c, false), ip6_c)];
    let mut dps = [1, 2].map(|i| {
        let n = sim.node(i).unwrap();
        let pin = PinDir(n.bpf_pin_dir.clone());
        let net = network6_in(&sim, i, MODE_UNDERLAY);
        let pods = if i == 1 { pods1.clone() } else { pods2.clone() };
        n.dpu
            .run(|| {
                let mut dp = BpfDataplane::load(&pin).expect("load");
                dp.apply_network(&net).expect("network");
                dp.reconcile(&pods).expect("reconcile");
                dp
            })
            .expect("dpu netns")
    });
    let dpu1 = sim.node(1).unwrap().dpu.clone();
    let dpu2 = sim.node(2).unwrap().dpu.clone();

    eprintln!("step: same-node ping6 and neighbour discovery");
    let before = counters(&dps[0], "uid-a");
    ping6(&pa, ip6_b).expect("a -> b ping6");
    let a = counters(&dps[0], "uid-a");
    assert!(
        a.arp_replies > before.arp_replies,
        "a's neighbour solicitation was answered: {a:?}"
    );
    assert!(a.bypassed >= before.bypassed + 3, "a: {a:?}");
    // b is on a's /64: a resolved it directly, to the dataplane's gateway MAC.
    let neigh = exec(&pa, "ip", &["-6", "neigh", "show", "dev", "eth0"]).unwrap();
    assert!(
        neigh.lines().any(|l| l.starts_with(&format!("{ip6_b} "))
            && l.contains("02:64:67:77:00:01")
            && l.contains("router")),
        "b resolved by ND: {neigh}"
    );
    eprintln!("step: same-node tcp over IPv6");
    tcp6_roundtrip(&pa, &pb, ip6_b, 8090, b"same node v6");

    eprintln!("step: cross-node (underlay) ping6 and tcp");
    let routes = exec(&dpu1, "ip", &["-6", "route", "show", "proto", "77"]).unwrap();
    assert!(
        routes.contains("fd00:10:244:2::/64 via fd64:646d:7570::c000:20c"),
        "IPv6 peer route via the derived underlay address: {routes}"
    );
    let out = ping6(&pa, ip6_c).expect("a -> c ping6 across nodes (underlay)");
    assert!(out.contains("3 packets received"), "{out}");
    tcp6_roundtrip(&pa, &pc, ip6_c, 8091, b"cross node v6 underlay");
    tcp6_roundtrip(&pc, &pa, ip6_a, 8092, b"cross node v6 underlay back");
    // And IPv4 still works beside it.
    ping(&pa, ip_c).expect("a -> c IPv4 beside IPv6");

    eprintln!("step: traceroute6 (ICMPv6 time exceeded from both DPUs)");
    let hops = traceroute(&pa, ip6_c.into());
    assert_eq!(
        hops,
        [gw6_1.to_string(), gw6_2.to_string(), ip6_c.to_string()],
        "a -> c over IPv6"
    );
    let c = counters(&dps[1], "uid-c");
    assert!(c.drop_count(DropReason::TtlExceeded) >= 1, "c: {c:?}");

    eprintln!("step: spoofed IPv6 source");
    let before = counters(&dps[0], "uid-a").drop_count(DropReason::SpoofIp);
    exec(
        &pa,
        "ip",
        &[
            "-6",
            "addr",
            "add",
            "fd00:10:244:1::99/128",
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .unwrap();
    let spoofed = exec(
        &pa,
        "busybox",
        &[
            "ping6",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "fd00:10:244:1::99",
            &ip6_b.to_string(),
        ],
    );
    assert!(
        spoofed.is_err(),
        "a spoofed source got through: {spoofed:?}"
    );
    let after = counters(&dps[0], "uid-a").drop_count(DropReason::SpoofIp);
    assert!(
        after >= before + 2,
        "spoofed IPv6 pings counted: {before} -> {after}"
    );
    // (Gone again, so that source selection picks a's own address below.)
    exec(
        &pa,
        "ip",
        &["-6", "addr", "del", "fd00:10:244:1::99/128", "dev", "eth0"],
    )
    .unwrap();

    eprintln!("step: overlay");
    for (i, dp) in dps.iter_mut().enumerate() {
        let net = network6_in(&sim, i + 1, MODE_OVERLAY);
        sim.node(i + 1)
            .unwrap()
            .dpu
            .run(|| dp.apply_network(&net))
            .unwrap()
            .expect("overlay");
    }
    let routes = exec(&dpu1, "ip", &["-6", "route", "show", "proto", "77"]).unwrap();
    assert!(
        !routes.contains(" via "),
        "no IPv6 peer routes in overlay: {routes}"
    );
    let tx = |ns: &Netns| -> u64 {
        exec(
            ns,
            "cat",
            &["/sys/class/net/dm-vxlan/statistics/tx_packets"],
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    let tx_before = tx(&dpu1) + tx(&dpu2);
    if let Err(e) = ping6(&pa, ip6_c) {
        panic!(
            "a -> c ping6 over VXLAN: {e}\n{:?}\n{:?}\na: {:?}\nc: {:?}\ntx {} -> {}",
            exec(
                &dpu1,
                "bpftool",
                &[
                    "map",
                    "dump",
                    "pinned",
                    &format!("{}/dm_tunnels6", sim.node(1).unwrap().bpf_pin_dir.display())
                ]
            ),
            exec(
                &dpu1,
                "sh",
                &["-c", "ip -6 route; ip -6 addr; ip -s link show dm-vxlan"]
            ),
            counters(&dps[0], "uid-a"),
            counters(&dps[1], "uid-c"),
            tx_before,
            tx(&dpu1) + tx(&dpu2)
        );
    }
    tcp6_roundtrip(&pa, &pc, ip6_c, 8093, b"cross node v6 overlay");
    tcp6_roundtrip(&pc, &pa, ip6_a, 8094, b"cross node v6 overlay back");
    let tx_after = tx(&dpu1) + tx(&dpu2);
    assert!(
        tx_after >= tx_before + 6,
        "IPv6 went through the tunnel: {tx_before} -> {tx_after}"
    );
    let hops = traceroute(&pa, ip6_c.into());
    assert_eq!(
        hops,
        [gw6_1.to_string(), gw6_2.to_string(), ip6_c.to_string()],
        "a -> c over IPv6 in overlay"
    );
    let c = counters(&dps[1], "uid-c");
    assert!(c.bypassed >= 6, "c counts IPv6 too: {c:?}");
}

/// A TCP connection from `client` to `ip:port` that must not get through:
/// `server` listens there (so a forwarded SYN would connect), the client's
/// connect times out and the listener accepted nothing.
fn tcp6_refused(client: &Netns, server: &Netns, ip: Ipv6Addr, port: u16) {
    let l = server
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).expect("bind [::]"))
        .expect("netns");
    let r = client
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2)))
        .expect("netns");
    assert!(r.is_err(), "[{ip}]:{port} connected: {r:?}");
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "[{ip}]:{port} accepted a connection");
}

/// dpu-proxy has no IPv6 listeners: a meshed pod's IPv6 TCP that the IPv4
/// rules would capture is refused (`mesh_ipv6`), never forwarded past the
/// mesh. Unmeshed pods, excluded ports, ICMPv6 and UDP are forwarded.
#[test]
fn meshed_pods_ipv6_tcp_is_refused_not_bypassed_unmeshed_ipv6_still_forwarded() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfm6"))
            .with_nodes(2)
            .with_vfs(3),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw1 = sim.node(1).unwrap().pod_gateway;
    let gw2 = sim.node(2).unwrap().pod_gateway;
    let (gw6_1, gw6_2) = (pod_ip6(1, 1), pod_ip6(2, 1));
    let (ip_a, ip_b, ip_u, ip_c) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 1, 7),
        Ipv4Addr::new(10, 244, 2, 8),
    );
    let (ip6_a, ip6_b, ip6_u, ip6_c) = (pod_ip6(1, 5), pod_ip6(1, 6), pod_ip6(1, 7), pod_ip6(2, 8));
    // a, b: meshed, on node 1. u: unmeshed, node 1. c: unmeshed, node 2.
    let pa = cni_attach(&sim, 1, 0, "a", ip_a, gw1);
    let pb = cni_attach(&sim, 1, 1, "b", ip_b, gw1);
    let pu = cni_attach(&sim, 1, 2, "u", ip_u, gw1);
    let pc = cni_attach(&sim, 2, 0, "c", ip_c, gw2);
    add_ipv6(&pa, ip6_a, gw6_1);
    add_ipv6(&pb, ip6_b, gw6_1);
    add_ipv6(&pu, ip6_u, gw6_1);
    add_ipv6(&pc, ip6_c, gw6_2);
    let with6 = |mut p: PodSpec, ip: Ipv6Addr| {
        p.ipv6 = Some(ip);
        p
    };
    let mut spec_a = with6(pod_spec(&sim, 1, 0, "uid-a", ip_a, true), ip6_a);
    spec_a.interception.exclude_outbound_ports = vec![9000];
    let mut spec_b = with6(pod_spec(&sim, 1, 1, "uid-b", ip_b, true), ip6_b);
    spec_b.interception.exclude_inbound_ports = vec![9000];
    let pods1 = vec![
        spec_a,
        spec_b,
        with6(pod_spec(&sim, 1, 2, "uid-u", ip_u, false), ip6_u),
    ];
    let pods2 = vec![with6(pod_spec(&sim, 2, 0, "uid-c", ip_c, false), ip6_c)];
    let dps = [1, 2].map(|i| {
        let n = sim.node(i).unwrap();
        let pin = PinDir(n.bpf_pin_dir.clone());
        let net = network6_in(&sim, i, MODE_UNDERLAY);
        let pods = if i == 1 { pods1.clone() } else { pods2.clone() };
        n.dpu
            .run(|| {
                let mut dp = BpfDataplane::load(&pin).expect("load");
                dp.apply_network(&net).expect("network");
                dp.reconcile(&pods).expect("reconcile");
                dp
            })
            .expect("dpu netns")
    });
    let mesh6 = |dp: &BpfDataplane, uid: &str| counters(dp, uid).drop_count(DropReason::MeshIpv6);

    eprintln!("step: ping6 between meshed pods is forwarded");
    ping6(&pa, ip6_b).expect("a -> b ping6 (meshed, ICMPv6 is not captured)");
    ping6(&pa, ip6_c).expect("a -> c ping6 across nodes");

    eprintln!("step: meshed -> meshed IPv6 TCP on one node is refused, counted on the sender");
    let before = mesh6(&dps[0], "uid-a");
    tcp6_refused(&pa, &pb, ip6_b, 8080);
    let after = mesh6(&dps[0], "uid-a");
    assert!(
        after > before,
        "a's refused SYNs counted as mesh_ipv6: {before} -> {after}"
    );
    assert_eq!(counters(&dps[0], "uid-a").steered_outbound, 0);

    eprintln!("step: meshed -> unmeshed pod on another node (captured pod CIDR) is refused");
    let before = mesh6(&dps[0], "uid-a");
    tcp6_refused(&pa, &pc, ip6_c, 8081);
    assert!(
        mesh6(&dps[0], "uid-a") > before,
        "a -> c refused and counted"
    );

    eprintln!("step: unmeshed -> meshed local pod is refused on b's inbound side");
    let before = mesh6(&dps[0], "uid-u");
    tcp6_refused(&pu, &pb, ip6_b, 8082);
    assert!(
        mesh6(&dps[0], "uid-u") > before,
        "u -> b refused, counted on u"
    );

    eprintln!("step: from the uplink to a meshed pod is refused, counted on the pod");
    let before = mesh6(&dps[0], "uid-b");
    tcp6_refused(&pc, &pb, ip6_b, 8083);
    assert!(
        mesh6(&dps[0], "uid-b") > before,
        "c -> b refused, counted on b"
    );

    eprintln!("step: the excluded port still bypasses, as for IPv4");
    tcp6_roundtrip(&pa, &pb, ip6_b, 9000, b"excluded port v6");

    eprintln!("step: unmeshed pods' IPv6 TCP is forwarded both ways, across nodes");
    tcp6_roundtrip(&pu, &pc, ip6_c, 8084, b"unmeshed v6 u -> c");
    tcp6_roundtrip(&pc, &pu, ip6_u, 8085, b"unmeshed v6 c -> u");

    eprintln!("step: IPv6 UDP of a meshed pod is forwarded");
    let srv = pb
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 8086)).expect("bind udp [::]"))
        .expect("netns");
    srv.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let cli = pa
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("bind udp client"))
        .expect("netns");
    let mut got = false;
    for _ in 0..5 {
        cli.send_to(b"udp v6", SocketAddr::from((ip6_b, 8086)))
            .unwrap();
        let mut buf = [0u8; 16];
        if let Ok((n, _)) = srv.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"udp v6");
            got = true;
            break;
        }
    }
    assert!(got, "a -> b IPv6 UDP datagram arrived");
}

/// Connects from `client` to `dst`; the connection must fail (the SYN is
/// dropped) within a short timeout.
fn tcp_refused(client: &Netns, dst: SocketAddr) {
    let r = client
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_millis(700)))
        .expect("netns");
    assert!(r.is_err(), "{dst} reachable without the proxy: {r:?}");
}

/// A caller on the destination's own node must meet the destination's
/// inbound policy too: an unmeshed pod's SYN (or a meshed pod's SYN its
/// outbound rule does not capture) to a meshed local pod on a captured port
/// goes to the inbound listener 15006, as from the fabric. Excluded inbound
/// ports go direct; the proxy's own upstream connection (from the DPU
/// stack) is not captured again.
#[test]
fn same_node_callers_of_a_meshed_pod_are_steered_to_the_inbound_listener() {
    let sim = SimGuard::up(
        SimConfig::new(dpumesh_sim::unique_cluster("bpfl"))
            .with_nodes(1)
            .with_vfs(3),
    )
    .expect("sim up");
    let _pins = Pins(
        sim.nodes()
            .iter()
            .map(|n| PinDir(n.bpf_pin_dir.clone()))
            .collect(),
    );
    let gw = sim.node(1).unwrap().pod_gateway;
    let (ip_u, ip_a, ip_b) = (
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 1, 6),
        Ipv4Addr::new(10, 244, 1, 7),
    );
    // u: unmeshed. a: meshed, excludes 8080 outbound. b: meshed, every port
    // captured inbound but 9000.
    let pu = cni_attach(&sim, 1, 0, "u", ip_u, gw);
    let pa = cni_attach(&sim, 1, 1, "a", ip_a, gw);
    let pb = cni_attach(&sim, 1, 2, "b", ip_b, gw);
    let mut spec_a = pod_spec(&sim, 1, 1, "uid-a", ip_a, true);
    spec_a.interception.exclude_outbound_ports = vec![8080];
    let mut spec_b = pod_spec(&sim, 1, 2, "uid-b", ip_b, true);
    spec_b.interception.exclude_inbound_ports = vec![9000];
    let pods = vec![pod_spec(&sim, 1, 0, "uid-u", ip_u, false), spec_a, spec_b];
    let dp = start_dataplane(&sim, 1, &pods);
    let dpu = sim.node(1).unwrap().dpu.clone();

    // Settle the neighbours (ping is not captured).
    ping(&pu, ip_b).expect("u -> b");
    ping(&pa, ip_b).expect("a -> b");

    eprintln!("step: no inbound listener: u -> b:8080 is dropped (fail closed)");
    let srv = pb
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)).expect("bind 8080"))
        .expect("netns");
    tcp_refused(&pu, SocketAddr::from((ip_b, 8080)));
    srv.set_nonblocking(true).unwrap();
    assert!(srv.accept().is_err(), "b's server saw the bypassing SYN");
    drop(srv);
    let u = counters(&dp, "uid-u");
    assert!(u.drop_count(DropReason::NoProxy) >= 1, "{u:?}");
    assert_eq!(counters(&dp, "uid-b").steered_inbound, 0);

    let listener = transparent_listener(&dpu, 15006);

    eprintln!("step: unmeshed u -> meshed b:8080 reaches 15006");
    captured_inbound(&listener, &pu, ip_u, SocketAddr::from((ip_b, 8080)));
    let b = counters(&dp, "uid-b");
    assert_eq!(b.steered_inbound, 1, "{b:?}");
    let u = counters(&dp, "uid-u");
    assert_eq!(u.steered_outbound, 0, "{u:?}");
    assert!(
        u.to_proxy_socket >= 2,
        "the rest of u's flow went to the proxy's socket: {u:?}"
    );

    eprintln!("step: HBONE 15008 is captured from the same node too");
    captured_inbound(&listener, &pu, ip_u, SocketAddr::from((ip_b, 15008)));
    assert_eq!(counters(&dp, "uid-b").steered_inbound, 2);

    eprintln!("step: b's excluded inbound port 9000 goes direct");
    let srv = echo_server(&pb, 9000);
    let mut s = connect(&pu, SocketAddr::from((ip_b, 9000)));
    roundtrip(&mut s, b"excluded inbound port");
    drop(s);
    srv.join().unwrap();
    assert_eq!(counters(&dp, "uid-b").steered_inbound, 2);

    eprintln!("step: meshed a excluding 8080 outbound -> b:8080 reaches 15006");
    captured_inbound(&listener, &pa, ip_a, SocketAddr::from((ip_b, 8080)));
    assert_eq!(counters(&dp, "uid-b").steered_inbound, 3);
    let a = counters(&dp, "uid-a");
    assert_eq!(a.steered_outbound, 0, "{a:?}");

    eprintln!("step: the proxy's own upstream connection (DPU stack, as u) is not captured");
    let srv = echo_server(&pb, 8080);
    let mut up = dpu
        .run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
            s.bind(&SocketAddrV4::new(ip_u, 0).into())
                .expect("bind u's address");
            s.connect_timeout(
                &SocketAddr::from((ip_b, 8080)).into(),
                Duration::from_secs(3),
            )
            .expect("proxy upstream connect");
            let s = TcpStream::from(s);
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .expect("dpu netns");
    roundtrip(&mut up, b"proxy upstream");
    drop(up);
    srv.join().unwrap();
    assert_eq!(counters(&dp, "uid-b").steered_inbound, 3);
    drop(listener);
}

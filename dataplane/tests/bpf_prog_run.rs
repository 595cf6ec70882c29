//! The TC programs run in the kernel with BPF_PROG_TEST_RUN on crafted
//! packets: anti-spoofing, the ARP responder, steering decisions. Each test
//! uses its own netns, where `lo` (ifindex 1, the device test runs use)
//! stands in for a pod's representor.
mod bpf_common;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use bpf_common::*;
use dpumesh_dataplane::bpf::maps::{DropReason, MODE_UNDERLAY};
use dpumesh_dataplane::bpf::{
    BpfDataplane, InterceptionSpec, NetworkSpec, PodSpec, GATEWAY_MAC, PROG_REP_INGRESS,
    PROG_UPLINK_INGRESS,
};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x01, 0x00, 0x05];
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn network() -> NetworkSpec {
    NetworkSpec {
        mode: MODE_UNDERLAY,
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        pod_cidr6: None,
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        uplink: "lo".into(),
        underlay_ip: Ipv4Addr::new(192, 0, 2, 11),
        vni: 0,
        peers: vec![],
    }
}

fn pod(meshed: bool) -> PodSpec {
    PodSpec {
        uid: "uid-a".into(),
        representor: "lo".into(),
        vf_index: 0,
        ipv4: POD_IP,
        ipv6: None,
        mac: POD_MAC,
        meshed,
        interception: InterceptionSpec::default(),
    }
}

struct Run {
    ret: u32,
    data: Vec<u8>,
}

fn run(dp: &BpfDataplane, pkt: &[u8]) -> Run {
    run_prog(dp, PROG_REP_INGRESS, pkt)
}

fn run_prog(dp: &BpfDataplane, name: &str, pkt: &[u8]) -> Run {
    let prog = dp.program(name).expect("program");
    let mut out = vec![0u8; pkt.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    Run {
        ret: r.return_value,
        data: out,
    }
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_gateway_mac() {
    let ns = NsGuard::new("arp");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(false)).expect("pod");

        let r = run(&dp, &arp_request(POD_MAC, POD_IP, GATEWAY));
        assert_eq!(
            r.ret, TC_ACT_REDIRECT,
            "reply goes back out of the representor"
        );
        let d = &r.data;
        assert_eq!(&d[0..6], &POD_MAC, "eth dst = asker");
        assert_eq!(&d[6..12], &GATEWAY_MAC, "eth src = gateway");
        assert_eq!(u16::from_be_bytes([d[20], d[21]]), 2, "op = reply");
        assert_eq!(&d[22..28], &GATEWAY_MAC, "sender hw = gateway MAC");
        assert_eq!(&d[28..32], &GATEWAY.octets(), "sender ip = gateway");
        assert_eq!(&d[32..38], &POD_MAC, "target hw = pod");
        assert_eq!(&d[38..42], &POD_IP.octets(), "target ip = pod");

        // Proxy ARP: any other address resolves to the gateway too.
        let r = run(
            &dp,
            &arp_request(POD_MAC, POD_IP, Ipv4Addr::new(10, 244, 1, 9)),
        );
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_eq!(&r.data[28..32], &[10, 244, 1, 9]);
        // Gratuitous ARP for its own address: no answer.
        let r = run(&dp, &arp_request(POD_MAC, POD_IP, POD_IP));
        assert_eq!(r.ret, TC_ACT_SHOT);

        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.arp_replies, 2);
        assert_eq!(c.packets_out, 3);
    })
    .expect("netns");
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let ns = NsGuard::new("spoof");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(false)).expect("pod");
        let other_mac = [0x02, 0, 0, 0x01, 0, 0x06];
        let other_ip = Ipv4Addr::new(10, 244, 1, 6);
        let dst = Ipv4Addr::new(10, 244, 2, 7);

        let r = run(&dp, &udp(GATEWAY_MAC, other_mac, POD_IP, dst, 1000, 53));
        assert_eq!(r.ret, TC_ACT_SHOT, "foreign source MAC");
        for _ in 0..2 {
            let r = run(&dp, &udp(GATEWAY_MAC, POD_MAC, other_ip, dst, 1000, 53));
            assert_eq!(r.ret, TC_ACT_SHOT, "foreign source IP");
        }
        let r = run(&dp, &arp_request(POD_MAC, other_ip, GATEWAY));
        assert_eq!(r.ret, TC_ACT_SHOT, "ARP as another IP");

        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.drop_count(DropReason::SpoofMac), 1);
        assert_eq!(c.drop_count(DropReason::SpoofIp), 3);
        assert_eq!(c.packets_out, 4);
        assert_eq!(c.arp_replies, 0);

        // Once the pod is gone its VF is unknown: dropped, charged to no pod.
        assert!(dp.remove_pod("uid-a").unwrap());
        let r = run(&dp, &udp(GATEWAY_MAC, POD_MAC, POD_IP, dst, 1000, 53));
        assert_eq!(r.ret, TC_ACT_SHOT);
        let u = dp.unattributed_counters().unwrap();
        assert_eq!(u.drop_count(DropReason::UnknownVf), 1);
    })
    .expect("netns");
}

#[test]
fn nothing_passes_before_the_node_network_is_set() {
    let ns = NsGuard::new("notready");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_pod(&pod(false)).expect("pod");
        let r = run(&dp, &arp_request(POD_MAC, POD_IP, GATEWAY));
        assert_eq!(r.ret, TC_ACT_SHOT);
        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.drop_count(DropReason::NotReady), 1);
    })
    .expect("netns");
}

/// The capture decision. (bpf_sk_assign only works at real TC ingress, not
/// in a test run, so assignment to a listener is tested in bpf_sim.rs; here
/// the absence of a listener makes a captured SYN visible as a NoProxy drop,
/// and a bypassed one as a NoRoute drop, since this netns has no routes.)
#[test]
fn capture_decision_follows_mesh_flag_cidrs_and_excluded_ports() {
    let ns = NsGuard::new("steer");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(true)).expect("pod");
        let syn =
            |dst: Ipv4Addr, port: u16| tcp_syn(GATEWAY_MAC, POD_MAC, POD_IP, dst, 40000, port);
        let drops = |dp: &BpfDataplane| {
            let c = dp.pod_counters("uid-a").unwrap().unwrap();
            (
                c.drop_count(DropReason::NoProxy),
                c.drop_count(DropReason::NoRoute),
            )
        };

        // Service CIDR and pod CIDR are captured: no proxy, fail closed.
        assert_eq!(run(&dp, &syn(SERVICE_IP, 80)).ret, TC_ACT_SHOT);
        assert_eq!(
            run(&dp, &syn(Ipv4Addr::new(10, 244, 1, 77), 80)).ret,
            TC_ACT_SHOT
        );
        assert_eq!(drops(&dp), (2, 0));
        // Outside the captured set: bypass (and no route here).
        assert_eq!(
            run(&dp, &syn(Ipv4Addr::new(8, 8, 8, 8), 80)).ret,
            TC_ACT_SHOT
        );
        assert_eq!(drops(&dp), (2, 1));
        // UDP is never captured.
        let u = udp(GATEWAY_MAC, POD_MAC, POD_IP, SERVICE_IP, 40000, 53);
        assert_eq!(run(&dp, &u).ret, TC_ACT_SHOT);
        assert_eq!(drops(&dp), (2, 2));

        // Excluded port and excluded CIDR are not captured.
        let mut p = pod(true);
        p.interception.exclude_outbound_ports = vec![80];
        p.interception.exclude_outbound_cidrs = vec!["10.96.5.0/24".parse().unwrap()];
        dp.apply_pod(&p).expect("pod update");
        run(&dp, &syn(SERVICE_IP, 80));
        run(&dp, &syn(Ipv4Addr::new(10, 96, 5, 1), 443));
        assert_eq!(drops(&dp), (2, 4));
        run(&dp, &syn(SERVICE_IP, 443));
        assert_eq!(drops(&dp), (3, 4));

        // Custom capture list replaces the node-wide set.
        let mut p = pod(true);
        p.interception.capture_outbound_cidrs = vec!["8.8.8.0/24".parse().unwrap()];
        dp.apply_pod(&p).expect("pod update");
        run(&dp, &syn(Ipv4Addr::new(8, 8, 8, 8), 80));
        run(&dp, &syn(SERVICE_IP, 80));
        assert_eq!(drops(&dp), (4, 5));

        // A non-meshed pod is never captured.
        dp.apply_pod(&pod(false)).expect("pod update");
        run(&dp, &syn(SERVICE_IP, 80));
        assert_eq!(drops(&dp), (4, 6));
        // And the per-pod CIDR entries of the older specs are gone.
        let u = dp.usage().unwrap();
        assert_eq!(u.pod_cidrs, 0);
        assert_eq!(u.node_cidrs, 2);
    })
    .expect("netns");
}

/// The inbound side of same-node traffic: a SYN from a pod's representor
/// that its own outbound rule leaves alone, to a meshed pod on this node on
/// a port that pod captures inbound, is for the inbound listener (here: no
/// listener, so a NoProxy drop on the sender); other ports, other SYNs and
/// unmeshed destinations are forwarded to the pod (redirect).
#[test]
fn same_node_syn_to_a_meshed_pod_follows_its_inbound_capture() {
    let ns = NsGuard::new("inl");
    exec(
        &ns.0,
        "ip",
        &[
            "link", "add", "rep-b", "type", "veth", "peer", "name", "vf-b",
        ],
    )
    .expect("veth pair");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(false)).expect("pod a");
        let b_mac = [0x02, 0, 0, 0x01, 0, 0x07];
        let b_ip = Ipv4Addr::new(10, 244, 1, 7);
        let mut b = PodSpec {
            uid: "uid-b".into(),
            representor: "rep-b".into(),
            vf_index: 1,
            ipv4: b_ip,
            ipv6: None,
            mac: b_mac,
            meshed: true,
            interception: InterceptionSpec::default(),
        };
        b.interception.exclude_inbound_ports = vec![9000];
        dp.apply_pod(&b).expect("pod b");
        let syn = |port: u16| tcp_syn(GATEWAY_MAC, POD_MAC, POD_IP, b_ip, 40000, port);
        let no_proxy = |dp: &BpfDataplane| {
            dp.pod_counters("uid-a")
                .unwrap()
                .unwrap()
                .drop_count(DropReason::NoProxy)
        };

        // Unmeshed a -> meshed b: every port but the excluded one is b's.
        assert_eq!(run(&dp, &syn(8080)).ret, TC_ACT_SHOT, "8080 captured");
        assert_eq!(run(&dp, &syn(15008)).ret, TC_ACT_SHOT, "15008 captured");
        assert_eq!(no_proxy(&dp), 2);
        let r = run(&dp, &syn(9000));
        assert_eq!(r.ret, TC_ACT_REDIRECT, "excluded port 9000 goes to b");
        assert_eq!(&r.data[0..6], &b_mac);
        // Not a SYN (a flow older than the mesh): forwarded.
        let mut ack = syn(8080);
        ack[47] = 0x10;
        assert_eq!(run(&dp, &ack).ret, TC_ACT_REDIRECT, "ACK forwarded");
        assert_eq!(no_proxy(&dp), 2);

        // A capture list: only its ports and 15008.
        b.interception.capture_inbound_ports = vec![8080];
        dp.apply_pod(&b).expect("pod b update");
        assert_eq!(run(&dp, &syn(8081)).ret, TC_ACT_REDIRECT, "8081 not listed");
        assert_eq!(run(&dp, &syn(8080)).ret, TC_ACT_SHOT);
        assert_eq!(run(&dp, &syn(15008)).ret, TC_ACT_SHOT);
        assert_eq!(no_proxy(&dp), 4);

        // A meshed sender whose outbound rule excludes the port: still b's.
        let mut a = pod(true);
        a.interception.exclude_outbound_ports = vec![8080];
        dp.apply_pod(&a).expect("pod a meshed");
        assert_eq!(run(&dp, &syn(8080)).ret, TC_ACT_SHOT);
        assert_eq!(no_proxy(&dp), 5);

        // An unmeshed destination: forwarded.
        b.meshed = false;
        dp.apply_pod(&b).expect("pod b unmeshed");
        dp.apply_pod(&pod(false)).expect("pod a unmeshed");
        assert_eq!(run(&dp, &syn(8080)).ret, TC_ACT_REDIRECT);
        assert_eq!(no_proxy(&dp), 5);
        let b = dp.pod_counters("uid-b").unwrap().unwrap();
        assert_eq!(b.steered_inbound, 0, "nothing reached a listener: {b:?}");
    })
    .expect("netns");
}

/// Routing is a hop: pod -> pod (representor ingress) and fabric -> pod
/// (uplink ingress) decrement the TTL with a correct header checksum, and a
/// packet whose TTL would reach 0 is dropped and counted as `ttl_exceeded`.
#[test]
fn routed_packets_lose_one_ttl_and_expiring_ones_are_dropped() {
    let ns = NsGuard::new("ttl");
    // A second "representor" for pod b: one end of a veth pair in this netns.
    exec(
        &ns.0,
        "ip",
        &[
            "link", "add", "rep-b", "type", "veth", "peer", "name", "vf-b",
        ],
    )
    .expect("veth pair");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(false)).expect("pod a");
        let b_mac = [0x02, 0, 0, 0x01, 0, 0x07];
        let b_ip = Ipv4Addr::new(10, 244, 1, 7);
        dp.apply_pod(&PodSpec {
            uid: "uid-b".into(),
            representor: "rep-b".into(),
            vf_index: 1,
            ipv4: b_ip,
            ipv6: None,
            mac: b_mac,
            meshed: false,
            interception: InterceptionSpec::default(),
        })
        .expect("pod b");

        for ttl in [5u8, 2, 255] {
            let pkt = with_ttl(udp(GATEWAY_MAC, POD_MAC, POD_IP, b_ip, 1000, 53), ttl);
            assert_eq!(ipv4_header_sum(&pkt), 0xffff, "crafted checksum");
            let r = run(&dp, &pkt);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "a -> b is forwarded (TTL {ttl})");
            assert_eq!(&r.data[0..6], &b_mac, "eth dst = pod b");
            assert_eq!(r.data[22], ttl - 1, "TTL decremented once");
            assert_eq!(
                ipv4_header_sum(&r.data),
                0xffff,
                "valid checksum (TTL {ttl})"
            );
            assert_eq!(&r.data[26..], &pkt[26..], "addresses and payload unchanged");
        }

        // TTL 1 (and 0) would reach 0 here: dropped, counted on the sender,
        // and answered with ICMP time exceeded from the gateway, back to a.
        for ttl in [1u8, 0] {
            let pkt = with_ttl(udp(GATEWAY_MAC, POD_MAC, POD_IP, b_ip, 1000, 53), ttl);
            let r = run(&dp, &pkt);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "TTL {ttl}: the answer goes back");
            let icmp = &r.data;
            assert_eq!(icmp.len(), 14 + 20 + 8 + 28, "TTL {ttl}: {icmp:02x?}");
            assert_eq!(&icmp[0..6], &POD_MAC, "to a");
            assert_eq!(&icmp[6..12], &GATEWAY_MAC, "from the gateway MAC");
            assert_eq!(ipv4_header_sum(icmp), 0xffff, "IPv4 header checksum");
            assert_eq!(icmp[23], 1, "ICMP");
            assert_eq!(&icmp[26..30], &GATEWAY.octets(), "from the gateway");
            assert_eq!(&icmp[30..34], &POD_IP.octets(), "to a");
            assert_eq!((icmp[34], icmp[35]), (11, 0), "time exceeded in transit");
            let mut sum: u32 = icmp[34..]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "ICMP checksum");
            assert_eq!(&icmp[42..], &pkt[14..42], "quotes the IP header + 8 bytes");
        }
        // No ICMP error about an ICMP error: dropped silently.
        let mut err = with_ttl(udp(GATEWAY_MAC, POD_MAC, POD_IP, b_ip, 1000, 53), 1);
        err[23] = 1; // protocol ICMP, type 3 (destination unreachable)
        err[34] = 3;
        let err = with_ttl(err, 1);
        assert_eq!(run(&dp, &err).ret, TC_ACT_SHOT, "no error about an error");
        let a = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(a.drop_count(DropReason::TtlExceeded), 3);
        assert_eq!(a.bypassed, 3, "answers are not the pod's traffic");

        // From the fabric to pod b: the same, charged to pod b.
        let from_peer = Ipv4Addr::new(10, 244, 2, 9);
        let peer_mac = [0x02, 0, 0, 0x02, 0, 0x09];
        let pkt = with_ttl(udp(GATEWAY_MAC, peer_mac, from_peer, b_ip, 1000, 53), 5);
        let r = run_prog(&dp, PROG_UPLINK_INGRESS, &pkt);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "fabric -> b is forwarded");
        assert_eq!(r.data[22], 4);
        assert_eq!(ipv4_header_sum(&r.data), 0xffff);
        let pkt = with_ttl(udp(GATEWAY_MAC, peer_mac, from_peer, b_ip, 1000, 53), 1);
        assert_eq!(run_prog(&dp, PROG_UPLINK_INGRESS, &pkt).ret, TC_ACT_SHOT);
        let b = dp.pod_counters("uid-b").unwrap().unwrap();
        assert_eq!(b.drop_count(DropReason::TtlExceeded), 1);
        assert_eq!(b.bypassed, 1);
    })
    .expect("netns");
}

const POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);

/// The link-local address a VF with `mac` derives (modified EUI-64).
fn eui64_ll(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Proxy ND: a pod's neighbour solicitation is answered with an
/// advertisement of the gateway MAC (bytes and checksum checked); DAD, the
/// pod's own address and a foreign source get none; IPv6 from a foreign
/// source is dropped as spoofed, the pod's link-local noise as unsupported.
#[test]
fn neighbour_solicitations_are_answered_and_ipv6_sources_checked() {
    let ns = NsGuard::new("nd");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        let mut net = network();
        net.pod_cidr6 = Some("fd00:10:244:1::/64".parse().unwrap());
        dp.apply_network(&net).expect("network");
        let mut p = pod(false);
        p.ipv6 = Some(POD_IP6);
        dp.apply_pod(&p).expect("pod");

        for (src, target) in [
            (POD_IP6, GATEWAY6),
            (eui64_ll(POD_MAC), "fe80::1".parse().unwrap()),
            (POD_IP6, Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 9)),
        ] {
            let r = run(&dp, &neighbour_solicitation(POD_MAC, src, target));
            assert_eq!(r.ret, TC_ACT_REDIRECT, "NS {src} for {target}");
            let d = &r.data;
            assert_eq!(d.len(), 14 + 40 + 32, "{d:02x?}");
            assert_eq!(&d[0..6], &POD_MAC, "eth dst = pod");
            assert_eq!(&d[6..12], &GATEWAY_MAC, "eth src = gateway");
            assert_eq!(&d[12..14], &ETH_P_IPV6.to_be_bytes());
            assert_eq!(d[14] >> 4, 6);
            assert_eq!(&d[18..20], &32u16.to_be_bytes(), "payload length");
            assert_eq!((d[20], d[21]), (58, 255), "ICMPv6, hop limit 255");
            assert_eq!(&d[22..38], &target.octets(), "from the target");
            assert_eq!(&d[38..54], &src.octets(), "to the solicitor");
            assert_eq!((d[54], d[55]), (136, 0), "neighbour advertisement");
            assert_eq!(d[58], 0xe0, "router, solicited, override");
            assert_eq!(&d[62..78], &target.octets(), "target");
            assert_eq!(&d[78..80], &[2, 1], "target link-layer address option");
            assert_eq!(&d[80..86], &GATEWAY_MAC);
            assert_eq!(icmp6_sum(d), 0xffff, "ICMPv6 checksum");
        }
        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.arp_replies, 3);

        // DAD and the pod's own address: no answer, unsupported.
        let dad = neighbour_solicitation(POD_MAC, Ipv6Addr::UNSPECIFIED, POD_IP6);
        assert_eq!(run(&dp, &dad).ret, TC_ACT_SHOT);
        let own = neighbour_solicitation(POD_MAC, eui64_ll(POD_MAC), POD_IP6);
        assert_eq!(run(&dp, &own).ret, TC_ACT_SHOT);
        // A solicitation from an address that is not the pod's: spoofed.
        let foreign = neighbour_solicitation(
            POD_MAC,
            Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x99),
            GATEWAY6,
        );
        assert_eq!(run(&dp, &foreign).ret, TC_ACT_SHOT);
        // Forwarded traffic from a foreign source: spoofed; the pod's own
        // link-local multicast (an MLD-like packet): unsupported.
        let udp6 = |src: Ipv6Addr, dst: Ipv6Addr| {
            ipv6_packet(GATEWAY_MAC, POD_MAC, src, dst, 17, 64, &[0; 16])
        };
        let peer: Ipv6Addr = "fd00:10:244:2::7".parse().unwrap();
        let spoofed = udp6("fd00:10:244:1::99".parse().unwrap(), peer);
        assert_eq!(run(&dp, &spoofed).ret, TC_ACT_SHOT);
        let mld = udp6(eui64_ll(POD_MAC), "ff02::16".parse().unwrap());
        assert_eq!(run(&dp, &mld).ret, TC_ACT_SHOT);
        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.arp_replies, 3);
        assert_eq!(c.drop_count(DropReason::Unsupported), 3, "{c:?}");
        assert_eq!(c.drop_count(DropReason::SpoofIp), 2, "{c:?}");
        assert_eq!(c.packets_out, 8);

        // Hop limit 1 from the pod: dropped, answered with ICMPv6 time
        // exceeded from the IPv6 gateway, back to the pod.
        let probe = ipv6_packet(GATEWAY_MAC, POD_MAC, POD_IP6, peer, 17, 1, &[7; 24]);
        let r = run(&dp, &probe);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        let d = &r.data;
        assert_eq!(d.len(), 14 + 40 + 8 + 128, "{d:02x?}");
        assert_eq!(&d[0..6], &POD_MAC);
        assert_eq!(&d[22..38], &GATEWAY6.octets(), "from the IPv6 gateway");
        assert_eq!(&d[38..54], &POD_IP6.octets());
        assert_eq!((d[54], d[55]), (3, 0), "time exceeded in transit");
        assert_eq!(icmp6_sum(d), 0xffff, "ICMPv6 checksum");
        assert_eq!(&d[62..62 + probe.len() - 14], &probe[14..], "quote");
        let c = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(c.drop_count(DropReason::TtlExceeded), 1);
    })
    .expect("netns");
}

/// ICMP errors are rate-limited per CPU (a burst of 50, then 1000 a
/// second): a flood of expiring packets from one CPU gets the burst
/// answered and then mostly plain drops, every one still counted.
#[test]
fn icmp_time_exceeded_answers_are_rate_limited() {
    let ns = NsGuard::new("icmprl");
    ns.0.run(|| {
        // One CPU, one bucket.
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin");
        let mut dp = BpfDataplane::load_detached().expect("load");
        dp.apply_network(&network()).expect("network");
        dp.apply_pod(&pod(false)).expect("pod");
        let b_ip = Ipv4Addr::new(10, 244, 1, 7);
        let pkt = with_ttl(udp(GATEWAY_MAC, POD_MAC, POD_IP, b_ip, 1000, 53), 1);
        const FLOOD: u64 = 300;
        let answered = (0..FLOOD)
            .filter(|_| run(&dp, &pkt).ret == TC_ACT_REDIRECT)
            .count() as u64;
        assert!(answered >= 50, "the burst is answered: {answered}");
        assert!(answered < FLOOD, "not every packet is answered: {answered}");
        let a = dp.pod_counters("uid-a").unwrap().unwrap();
        assert_eq!(a.drop_count(DropReason::TtlExceeded), FLOOD);
    })
    .expect("netns");
}

/// A TCP header (no options) from port 40000 to `dport` with `flags`.
fn tcp6_header(dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// dpu-proxy has no IPv6 listeners: a meshed pod's IPv6 SYN that the IPv4
/// rules would capture is dropped as `mesh_ipv6` (outbound from the pod, and
/// inbound from the fabric to it), also behind extension headers, and a
/// header chain too long to find the TCP header in is refused. Non-SYN TCP,
/// UDP, excluded ports, destinations outside the IPv6 pod CIDRs and
/// unmeshed pods are not.
#[test]
fn meshed_ipv6_tcp_that_would_be_captured_is_refused() {
    let ns = NsGuard::new("mesh6");
    ns.0.run(|| {
        let mut dp = BpfDataplane::load_detached().expect("load");
        let mut net = network();
        net.pod_cidr6 = Some("fd00:10:244:1::/64".parse().unwrap());
        net.peers = vec![dpumesh_dataplane::bpf::UnderlayPeer {
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            pod_cidr6: Some("fd00:10:244:2::/64".parse().unwrap()),
            underlay_ip: Ipv4Addr::new(192, 0, 2, 12),
        }];
        dp.apply_network(&net).expect("network");
        let mut p = pod(true);
        p.ipv6 = Some(POD_IP6);
        p.interception.exclude_outbound_ports = vec![9000];
        p.interception.exclude_inbound_ports = vec![9001];
        dp.apply_pod(&p).expect("pod");
        let peer: Ipv6Addr = "fd00:10:244:2::7".parse().unwrap();
        let outside: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let from_pod = |dst: Ipv6Addr, next: u8, payload: &[u8]| {
            ipv6_packet(GATEWAY_MAC, POD_MAC, POD_IP6, dst, next, 64, payload)
        };
        let mesh6 = |dp: &BpfDataplane| {
            dp.pod_counters("uid-a")
                .unwrap()
                .unwrap()
                .drop_count(DropReason::MeshIpv6)
        };

        // A SYN to a peer's IPv6 pod CIDR: refused.
        let syn = from_pod(peer, 6, &tcp6_header(80, TCP_SYN));
        assert_eq!(run(&dp, &syn).ret, TC_ACT_SHOT);
        assert_eq!(mesh6(&dp), 1);
        // Behind a destination options header (8 bytes, next = TCP): too.
        let mut opts = vec![6, 0, 1, 4, 0, 0, 0, 0];
        opts.extend(tcp6_header(80, TCP_SYN));
        assert_eq!(run(&dp, &from_pod(peer, 60, &opts)).ret, TC_ACT_SHOT);
        assert_eq!(mesh6(&dp), 2);
        // Five destination options headers: the TCP header is not looked
        // for that far, so the packet is refused (fail closed).
        let mut chain = Vec::new();
        for i in 0..5 {
            chain.extend([if i < 4 { 60 } else { 6 }, 0, 1, 4, 0, 0, 0, 0]);
        }
        chain.extend(tcp6_header(80, TCP_SYN));
        assert_eq!(run(&dp, &from_pod(peer, 60, &chain)).ret, TC_ACT_SHOT);
        assert_eq!(mesh6(&dp), 3);
        // Not captured, forwarded (to the FIB, which has no route here):
        // an ACK, UDP, the excluded port, a destination outside the pod
        // CIDRs, a fragment other than the first.
        let mut frag = vec![6, 0, 0, 8, 0, 0, 0, 1]; // offset 1 (x 8 bytes)
        frag.extend([0; 20]);
        for pkt in [
            from_pod(peer, 6, &tcp6_header(80, TCP_ACK)),
            from_pod(peer, 6, &tcp6_header(80, TCP_SYN | TCP_ACK)),
            from_pod(peer, 17, &[0; 16]),
            from_pod(peer, 6, &tcp6_header(9000, TCP_SYN)),
            from_pod(outside, 6, &tcp6_header(80, TCP_SYN)),
            from_pod(peer, 44, &frag),
        ] {
            run(&dp, &pkt);
        }
        assert_eq!(mesh6(&dp), 3, "none of those refused");

        // Inbound from the fabric to the meshed pod: refused on a captured
        // port, counted on the pod; the excluded port goes through.
        let from_fabric = |dport: u16| {
            ipv6_packet(
                GATEWAY_MAC,
                [0x02, 0, 0, 0, 0, 0x99],
                peer,
                POD_IP6,
                6,
                64,
                &tcp6_header(dport, TCP_SYN),
            )
        };
        let r = run_prog(&dp, PROG_UPLINK_INGRESS, &from_fabric(8080));
        assert_eq!(r.ret, TC_ACT_SHOT);
        assert_eq!(mesh6(&dp), 4);
        let r = run_prog(&dp, PROG_UPLINK_INGRESS, &from_fabric(9001));
        assert_eq!(r.ret, TC_ACT_REDIRECT, "excluded inbound port: to the pod");
        assert_eq!(mesh6(&dp), 4);

        // An unmeshed pod: nothing refused either way.
        let mut p = pod(false);
        p.ipv6 = Some(POD_IP6);
        dp.apply_pod(&p).expect("pod update");
        run(&dp, &syn);
        let r = run_prog(&dp, PROG_UPLINK_INGRESS, &from_fabric(8080));
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_eq!(mesh6(&dp), 4);
    })
    .expect("netns");
}

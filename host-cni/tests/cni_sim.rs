//! ADD / CHECK / DEL with the simulator, real host-local and the real
//! dataplane control server.

mod common;

use common::*;
use serde_json::json;

#[test]
fn add_check_del() {
    let c = Cluster::new("cnia", 4, true);
    let pod = c.sim.pod_add("web").expect("pod netns");
    let conf = c.conf(json!({}));

    let out = c.cni("ADD", "ctr1", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "ADD failed: {} {}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(
        r["interfaces"][0]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(r["interfaces"][0]["mtu"], 1450);
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert_eq!(mac, "02:64:6d:01:00:00", "the VF keeps its own MAC");
    assert_eq!(r["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert!(r["ips"][0].get("version").is_none());
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");

    // The pod netns has the VF, renamed, up, with its address and default route.
    let links = ip_json(&pod, &["link", "show", "eth0"]);
    assert_eq!(links[0]["address"], mac);
    assert_eq!(links[0]["mtu"], 1450);
    assert!(links[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));
    assert_eq!(
        links[0]["ifalias"],
        format!("dm-{}-n1-vf0", c.sim.cluster())
    );
    let addrs = ip_json(&pod, &["addr", "show", "eth0"]);
    assert!(addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "10.244.1.2" && a["prefixlen"] == 24));
    let routes = ip_json(&pod, &["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.244.1.1");
    assert_eq!(routes[0]["dev"], "eth0");
    assert!(!c.host_vfs().contains(&"vf0".to_string()));

    // The dataplane lists the pod with its VF, representor, IP and MAC.
    let pods = c.dataplane.as_ref().unwrap().pods();
    assert_eq!(pods.len(), 1);
    let p = &pods[0];
    assert_eq!(
        (p.container_id.as_str(), p.ifname.as_str()),
        ("ctr1", "eth0")
    );
    assert_eq!(
        (p.uid.as_str(), p.name.as_str(), p.namespace.as_str()),
        ("uid-ctr1", "pod-ctr1", "default")
    );
    assert_eq!((p.vf_index, p.representor.as_str()), (0, "pf0vf0"));
    assert_eq!(
        p.ips,
        vec!["10.244.1.2".parse::<std::net::IpAddr>().unwrap()]
    );

    // CHECK passes with the ADD result as prevResult ...
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.clone();
    let out = c.cni("CHECK", "ctr1", Some(&pod.path()), "eth0", &with_prev);
    assert!(out.ok, "CHECK failed: {} {}", out.stdout, out.stderr);
    // ... and fails once the address is gone.
    pod.exec("ip", ["addr", "del", "10.244.1.2/24", "dev", "eth0"])
        .unwrap();
    let out = c.cni("CHECK", "ctr1", Some(&pod.path()), "eth0", &with_prev);
    assert_eq!(out.code(), 103, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("10.244.1.2"));

    // DEL: everything back, twice (idempotent).
    for _ in 0..2 {
        let out = c.cni("DEL", "ctr1", Some(&pod.path()), "eth0", &with_prev);
        assert!(out.ok, "DEL failed: {} {}", out.stdout, out.stderr);
        assert_eq!(out.stdout, "");
    }
    assert!(c.host_vfs().contains(&"vf0".to_string()));
    assert!(ip_json(&pod, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] == "lo"));
    assert!(c.ipam_leases().is_empty());
    assert!(c.dataplane.as_ref().unwrap().pods().is_empty());
    assert_eq!(c.claims(), 0);
    let vf0 = ip_json(&c.host(), &["link", "show", "vf0"]);
    assert_eq!(vf0[0]["address"], "02:64:6d:01:00:00");
    assert_eq!(vf0[0]["ifalias"], format!("dm-{}-n1-vf0", c.sim.cluster()));
}

#[test]
fn del_after_netns_deleted() {
    let c = Cluster::new("cnid", 2, true);
    let conf = c.conf(json!({}));
    // (a) The runtime deletes the netns the way the sim models a physical VF:
    //     the VF comes back to the host under its own name.
    let pod = c.sim.pod_add("a").unwrap();
    assert!(c.cni("ADD", "ida", Some(&pod.path()), "eth0", &conf).ok);
    c.sim.pod_del("a").unwrap();
    let out = c.cni("DEL", "ida", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);

    // (b) A plain `ip netns delete`: the veth pair dies with the netns; DEL
    //     rebuilds it (same MACs, alias, representor in the DPU netns).
    let pod = c.sim.pod_add("b").unwrap();
    assert!(c.cni("ADD", "idb", Some(&pod.path()), "eth0", &conf).ok);
    pod.delete().unwrap();
    assert_eq!(c.host_vfs(), vec!["vf1"]);
    let out = c.cni("DEL", "idb", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    // without CNI_NETNS at all, DEL still succeeds
    let out = c.cni("DEL", "idb", None, "eth0", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);
    let rep = ip_json(&c.dpu(), &["link", "show", "pf0vf0"]);
    assert_eq!(rep[0]["address"], "02:64:72:01:00:00");
    assert!(rep[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));
    assert!(c.ipam_leases().is_empty());
    assert!(c.dataplane.as_ref().unwrap().pods().is_empty());
    assert_eq!(c.claims(), 0);
}

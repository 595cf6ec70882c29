//! Spec conformance: every command and error path, exec'ing the plugin
//! exactly as a runtime does (environment + stdin, JSON on stdout).

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn version_and_input_errors() {
    // Input errors need no dataplane; the cluster gives a host netns to run in.
    let c = Cluster::new("cnic", 1, false);
    let conf = c.conf(json!({}));
    let stdin = serde_json::to_vec(&conf).unwrap();

    // VERSION, with and without a config.
    for input in [&b""[..], &br#"{"cniVersion":"1.0.0"}"#[..]] {
        let out = c.cni_env(&env(&[("CNI_COMMAND", "VERSION")]), input);
        assert!(out.ok, "{}", out.stdout);
        let v = out.json();
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
    let out = c.cni_env(
        &env(&[("CNI_COMMAND", "VERSION")]),
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(out.json()["cniVersion"], "1.0.0");

    let pod = c.sim.pod_add("p").unwrap();
    let p = pod.path();
    let add = |c: &Cluster, stdin: &serde_json::Value| c.cni("ADD", "id1", Some(&p), "eth0", stdin);

    // 6: not JSON.
    let mut e = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "id1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", PLUGINS),
    ]);
    e.insert("CNI_NETNS".into(), p.display().to_string());
    let out = c.cni_env(&e, b"{not json");
    assert_eq!(out.code(), 6);
    assert!(!out.json()["details"].as_str().unwrap().is_empty());

    // 1: unknown cniVersion; the error itself is in a version we speak.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("2.0.0");
    let out = add(&c, &bad);
    assert_eq!(out.code(), 1);
    assert_eq!(out.json()["cniVersion"], "1.1.0");
    assert!(out.json()["details"].as_str().unwrap().contains("1.0.0"));

    // 7: missing fields, wrong types, bad values.
    for (field, value) in [
        ("name", json!(null)),
        ("cniVersion", json!(null)),
        ("ipam", json!(null)),
        ("mtu", json!("big")),
        ("vfBackend", json!("dpdk")),
        ("dataplane", json!("nohostport")),
        ("ipam", json!({"type": "no-such-ipam"})),
    ] {
        let mut bad = conf.clone();
        if value.is_null() {
            bad.as_object_mut().unwrap().remove(field);
        } else {
            bad[field] = value.clone();
        }
        let out = add(&c, &bad);
        assert_eq!(out.code(), 7, "{field}={value}: {}", out.stdout);
        let j = out.json();
        let text = format!("{} {}", j["msg"], j["details"]);
        let expect = if field == "ipam" && !value.is_null() {
            "no-such-ipam"
        } else {
            field
        };
        assert!(
            text.contains(expect),
            "{field}: error does not name it: {text}"
        );
    }

    // 4: missing CNI_NETNS / CNI_COMMAND / CNI_CONTAINERID, bad CNI_IFNAME.
    let mut no_netns = e.clone();
    no_netns.remove("CNI_NETNS");
    let out = c.cni_env(&no_netns, &stdin);
    assert_eq!(out.code(), 4);
    assert!(out.json()["msg"].as_str().unwrap().contains("CNI_NETNS"));
    let mut no_cmd = e.clone();
    no_cmd.remove("CNI_COMMAND");
    assert_eq!(c.cni_env(&no_cmd, &stdin).code(), 4);
    let mut no_id = e.clone();
    no_id.remove("CNI_CONTAINERID");
    assert_eq!(c.cni_env(&no_id, &stdin).code(), 4);
    let mut bad_if = e.clone();
    bad_if.insert("CNI_IFNAME".into(), "much-too-long-ifname".into());
    assert_eq!(c.cni_env(&bad_if, &stdin).code(), 4);

    // 2: an unknown CNI_ARGS key without IgnoreUnknown.
    let mut args = e.clone();
    args.insert("CNI_ARGS".into(), "K8S_POD_NAME=x;FOO=bar".into());
    let out = c.cni_env(&args, &stdin);
    assert_eq!(out.code(), 2);
    assert!(out.json()["msg"].as_str().unwrap().contains("FOO"));

    // 3: the netns does not exist.
    let gone = std::path::Path::new("/run/netns/dm-no-such-netns");
    assert_eq!(c.cni("ADD", "id1", Some(gone), "eth0", &conf).code(), 3);

    // CHECK without prevResult: 7.
    assert_eq!(c.cni("CHECK", "id1", Some(&p), "eth0", &conf).code(), 7);

    // STATUS and GC need 1.1.0.
    let mut v100 = conf.clone();
    v100["cniVersion"] = json!("1.0.0");
    assert_eq!(c.cni("STATUS", "", None, "", &v100).code(), 1);

    // Nothing above left state behind.
    assert_eq!(c.claims(), 0);
    assert!(c.ipam_leases().is_empty());
    assert_eq!(c.host_vfs(), vec!["vf0"]);
}

#[test]
fn status_follows_the_dataplane() {
    let mut c = Cluster::new("cnis", 1, false);
    let conf = c.conf(json!({}));
    let out = c.cni("STATUS", "", None, "", &conf);
    assert_eq!(out.code(), 50, "{}", out.stdout);
    assert!(out.json()["msg"]
        .as_str()
        .unwrap()
        .contains("192.168.100.2:15081"));
    c.start_dataplane(None);
    let out = c.cni("STATUS", "", None, "", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    c.stop_dataplane();
    assert_eq!(c.cni("STATUS", "", None, "", &conf).code(), 50);
}

#[test]
fn exhausted_pool_is_try_again_later_and_leaves_nothing() {
    let c = Cluster::new("cnix", 1, true);
    let conf = c.conf(json!({}));
    let a = c.sim.pod_add("a").unwrap();
    let b = c.sim.pod_add("b").unwrap();
    assert!(c.cni("ADD", "ida", Some(&a.path()), "eth0", &conf).ok);
    let out = c.cni("ADD", "idb", Some(&b.path()), "eth0", &conf);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("no free VF"));
    assert_eq!(c.ipam_leases().len(), 1);
    assert_eq!(c.dp_pods().len(), 1);
    // The runtime calls DEL after a failed ADD: fine, and touches nothing of a's.
    assert!(c.cni("DEL", "idb", Some(&b.path()), "eth0", &conf).ok);
    assert_eq!(c.ipam_leases().len(), 1);
    assert_eq!(c.dp_pods().len(), 1);
    assert!(c.cni("DEL", "ida", Some(&a.path()), "eth0", &conf).ok);
    // Now b fits.
    assert!(c.cni("ADD", "idb", Some(&b.path()), "eth0", &conf).ok);
    assert!(c.cni("DEL", "idb", Some(&b.path()), "eth0", &conf).ok);
}

#[test]
fn old_version_and_chained_results() {
    let c = Cluster::new("cniv", 2, true);
    let pod = c.sim.pod_add("p").unwrap();

    // 0.4.0: accepted, result in 0.4.0 form (host-local spoken to in 0.4.0 too).
    let conf04 = c.conf(json!({"cniVersion": "0.4.0"}));
    let out = c.cni("ADD", "id04", Some(&pod.path()), "eth0", &conf04);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    assert!(c.cni("DEL", "id04", Some(&pod.path()), "eth0", &conf04).ok);

    // Chained after a plugin that made an interface: ours comes after it.
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0", "sandbox": pod.path()}],
        "ips": [{"address": "192.0.2.50/32", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let conf = c.conf(json!({"cniVersion": "1.0.0", "prevResult": prev}));
    let out = c.cni("ADD", "idc", Some(&pod.path()), "net1", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["interfaces"][0]["name"], "lo0");
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert_eq!(r["ips"][0]["address"], "192.0.2.50/32");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    assert!(ip_json(&pod, &["link", "show", "net1"])
        .as_array()
        .is_some_and(|a| a.len() == 1));
    assert!(c.cni("DEL", "idc", Some(&pod.path()), "net1", &conf).ok);
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);
}

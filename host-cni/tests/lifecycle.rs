//! Crashes, outages, GC and load: nothing may leak.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use dpumesh_api::proto::v1::{AddPodRequest, Interception, PodSteering};
use serde_json::json;

fn wait_for(path: &std::path::Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn del_after_kill_9_in_the_middle_of_add() {
    let mut c = Cluster::new("cnik", 2, true);
    // An IPAM plugin that reserves the address, then hangs: ADD is stuck after
    // the VF moved and the IP was taken, but before the dataplane heard of it.
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("stall-ipam");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ] && [ -n \"$DM_STALL_FILE\" ]; then\n  out=$(/usr/lib/cni/host-local) || { echo \"$out\"; exit 1; }\n  echo $$ > \"$DM_STALL_FILE.tmp\" && mv \"$DM_STALL_FILE.tmp\" \"$DM_STALL_FILE\"\n  exec sleep 30\nfi\nexec /usr/lib/cni/host-local\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.cni_path.insert(0, bin.path().to_path_buf());
    let mut conf = c.conf(json!({}));
    conf["ipam"]["type"] = json!("stall-ipam");

    let pod = c.sim.pod_add("k").unwrap();
    let stall = bin.path().join("stalled.pid");
    let env: BTreeMap<String, String> = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "idk".into()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", format!("{}:{PLUGINS}", bin.path().display())),
        ("DM_STALL_FILE", stall.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut child = c.spawn_cni(&env, &serde_json::to_vec(&conf).unwrap());
    assert!(
        wait_for(&stall, Duration::from_secs(10)),
        "ADD never reached IPAM"
    );
    let ipam_pid: i32 = std::fs::read_to_string(&stall)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    kill(child.id() as i32);
    let _ = child.wait();
    kill(ipam_pid);

    // Mid-ADD state: VF in the pod, address leased, a claim, no dataplane entry.
    assert!(!c.host_vfs().contains(&"vf0".to_string()));
    assert_eq!(c.ipam_leases().len(), 1);
    assert_eq!(c.claims(), 1);
    assert!(c.dp_pods().is_empty());

    // The runtime's DEL cleans everything up.
    let out = c.cni("DEL", "idk", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);
    assert!(c.ipam_leases().is_empty());
    assert_eq!(c.claims(), 0);
    assert!(c.dp_pods().is_empty());
    // And the VF is usable again.
    c.cni_path.remove(0);
    let conf = c.conf(json!({}));
    assert!(c.cni("ADD", "idk2", Some(&pod.path()), "eth0", &conf).ok);
    assert!(c.cni("DEL", "idk2", Some(&pod.path()), "eth0", &conf).ok);
}

#[test]
fn gc_reclaims_everything_not_valid() {
    let c = Cluster::new("cnig", 4, true);
    let conf = c.conf(json!({}));
    let mut pods = Vec::new();
    for id in ["g1", "g2", "g3"] {
        let p = c.sim.pod_add(id).unwrap();
        let out = c.cni("ADD", id, Some(&p.path()), "eth0", &conf);
        assert!(out.ok, "{} {}", out.stdout, out.stderr);
        pods.push(p);
    }
    // A lease host-local holds for an attachment we never saw ...
    let mut cmd = c.host().command(format!("{PLUGINS}/host-local"));
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "orphan")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_PATH", PLUGINS);
    let mut v100 = conf.clone();
    v100["cniVersion"] = json!("1.0.0");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        &serde_json::to_vec(&v100).unwrap(),
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(c.ipam_leases().len(), 4);
    // ... and a dataplane entry of an attachment that is gone.
    let dp = c.dataplane.as_ref().unwrap();
    // (added over the real API from the host, as the CNI would have)
    let ghost = PodSteering {
        pod_uid: "ghost".into(),
        name: "ghost".into(),
        namespace: "default".into(),
        container_id: "ghost".into(),
        ifname: "eth0".into(),
        vf_index: 3,
        representor: "pf0vf3".into(),
        ips: vec!["10.244.1.200".into()],
        mac: "02:64:6d:01:00:03".into(),
        meshed: true,
        interception: Some(Interception::default()),
    };
    c.host()
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut client = dpumesh_api::client::dataplane("192.168.100.2:15081")
                    .await
                    .unwrap();
                client
                    .add_pod(AddPodRequest { pod: Some(ghost) })
                    .await
                    .map(|_| ())
            })
        })
        .unwrap()
        .expect("ghost entry");
    assert_eq!(dp.pods().len(), 4);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g2", "ifname": "eth0"}]);
    let out = c.cni("GC", "", None, "", &gc);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);

    assert_eq!(c.claims(), 1);
    let left = dp.pods();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, "g2");
    assert_eq!(c.ipam_leases().len(), 1);
    assert_eq!(c.host_vfs(), vec!["vf0", "vf2", "vf3"]);
    // g2 is untouched.
    assert!(ip_json(&pods[1], &["link", "show", "eth0"])
        .as_array()
        .is_some_and(|a| a.len() == 1));

    // GC with an empty list releases the rest.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(c.cni("GC", "", None, "", &gc).ok);
    assert_eq!(c.claims(), 0);
    assert!(c.ipam_leases().is_empty());
    assert!(dp.pods().is_empty());
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1", "vf2", "vf3"]);
}

#[test]
fn dataplane_outage() {
    let mut c = Cluster::new("cnio", 2, false);
    let conf = c.conf(json!({}));
    let pod = c.sim.pod_add("o").unwrap();

    // ADD without a dataplane: 11, rolled back.
    let out = c.cni("ADD", "ido", Some(&pod.path()), "eth0", &conf);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("dataplane"));
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);
    assert!(c.ipam_leases().is_empty());
    assert_eq!(c.claims(), 0);

    // DEL while the dataplane is down: succeeds, the removal waits ...
    c.start_dataplane(None);
    assert!(c.cni("ADD", "ido", Some(&pod.path()), "eth0", &conf).ok);
    let registry = c.stop_dataplane().unwrap();
    let out = c.cni("DEL", "ido", Some(&pod.path()), "eth0", &conf);
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("pending"),
        "warning logged: {}",
        out.stderr
    );
    assert_eq!(c.host_vfs(), vec!["vf0", "vf1"]);
    assert!(c.ipam_leases().is_empty());
    assert_eq!(registry.pods().len(), 1);
    assert_eq!(
        std::fs::read_dir(c.state_dir.path().join("pending"))
            .unwrap()
            .count(),
        1
    );

    // ... and is delivered by the next ADD once the dataplane is back.
    c.start_dataplane(Some(registry));
    let pod2 = c.sim.pod_add("o2").unwrap();
    assert!(c.cni("ADD", "ido2", Some(&pod2.path()), "eth0", &conf).ok);
    let pods = c.dp_pods();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].container_id, "ido2");
    assert_eq!(
        std::fs::read_dir(c.state_dir.path().join("pending"))
            .unwrap()
            .count(),
        0
    );
    assert!(c.cni("DEL", "ido2", Some(&pod2.path()), "eth0", &conf).ok);
}

#[test]
fn five_hundred_cycles_eight_at_a_time() {
    const WORKERS: usize = 8;
    const CYCLES: usize = 63; // 8 x 63 = 504
    let c = Cluster::new("cnil", 10, true);
    let conf = c.conf(json!({}));
    let pods: Vec<_> = (0..WORKERS)
        .map(|w| c.sim.pod_add(&format!("w{w}")).unwrap())
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, pod) in pods.iter().enumerate() {
            let c = &c;
            let conf = &conf;
            s.spawn(move || {
                for i in 0..CYCLES {
                    let id = format!("s{w}-{i}");
                    let out = c.cni("ADD", &id, Some(&pod.path()), "eth0", conf);
                    assert!(out.ok, "ADD {id}: {} {}", out.stdout, out.stderr);
                    let out = c.cni("DEL", &id, Some(&pod.path()), "eth0", conf);
                    assert!(out.ok, "DEL {id}: {} {}", out.stdout, out.stderr);
                }
            });
        }
    });
    let took = start.elapsed();
    eprintln!("{} ADD/DEL cycles in {took:?}", WORKERS * CYCLES);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(c.host_vfs().len(), 10);
    assert!(c.ipam_leases().is_empty());
    assert_eq!(c.claims(), 0);
    assert!(c.dp_pods().is_empty());
    for p in &pods {
        let links = ip_json(p, &["link", "show"]);
        assert!(links
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] == "lo"));
    }
}

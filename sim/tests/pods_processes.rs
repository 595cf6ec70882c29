//! Pods (netns as a runtime makes them), VF accounting, processes, Netns helpers.

mod common;

use std::time::{Duration, Instant};

use common::{assert_clean, process_netns_is};
use dpumesh_sim::{Netns, Place, SimConfig, SimError, SimGuard, SpawnSpec, VfState};

#[test]
fn pods_and_vf_accounting() {
    let c = unique();
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(2).with_vfs(4)).expect("up");
    let pod = sim.pod_add("web-1").unwrap();
    assert_eq!(pod.name(), format!("dm-{c}-pod-web-1"));
    assert_eq!(sim.pod_add("web-1").unwrap(), pod, "pod_add is idempotent");
    assert_eq!(sim.pods().unwrap(), vec!["web-1".to_string()]);
    let lo = pod.exec("ip", ["-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "{lo}");

    // The CNI's job, done by hand: move VF 2 of node 2 into the pod, renamed.
    let n2 = sim.node(2).unwrap();
    n2.host
        .exec(
            "ip",
            ["link", "set", "vf2", "netns", pod.name(), "name", "eth0"],
        )
        .unwrap();
    let st = sim.status().unwrap();
    let node2 = &st.nodes[1];
    assert_eq!((node2.vfs_free, node2.vfs_used), (3, 1));
    assert_eq!(node2.vfs[2].state, VfState::Used);
    assert_eq!(node2.vfs[2].pod.as_deref(), Some("web-1"));
    assert_eq!((st.nodes[0].vfs_free, st.nodes[0].vfs_used), (4, 0));
    assert_eq!(st.pods[0].vfs, vec![format!("dm-{c}-n2-vf2")]);
    let free: Vec<usize> = sim.free_vfs(2).unwrap().iter().map(|v| v.index).collect();
    assert_eq!(free, vec![0, 1, 3]);
    assert_eq!(sim.free_vfs(1).unwrap().len(), 4);
    let table = st.render_table();
    assert!(table.contains("vf2→web-1"), "{table}");

    // A process inside the pod; deleting the pod kills it and returns the VF.
    let rec = sim
        .spawn_with(SpawnSpec::new("app", pod.clone(), "sleep").args(["300"]))
        .unwrap();
    assert!(process_netns_is(rec.pid, &pod));
    sim.pod_del("web-1").unwrap();
    assert!(!pod.exists());
    assert!(!rec.is_alive());
    let st = sim.status().unwrap();
    assert_eq!((st.nodes[1].vfs_free, st.nodes[1].vfs_used), (4, 0));
    assert!(n2.host.links().unwrap().contains(&"vf2".to_string()));
    sim.pod_del("web-1").unwrap();
    assert!(sim.pods().unwrap().is_empty());

    for bad in ["", "Web", "a/b", "-x"] {
        let err = sim.pod_add(bad).unwrap_err();
        assert!(err.to_string().contains("pod name"), "{err}");
    }
    drop(sim);
    assert_clean(&c, &[rec.pid]);
}

#[test]
fn down_removes_pods_with_vfs_inside() {
    let c = unique();
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(1).with_vfs(2)).expect("up");
    let pod = sim.pod_add("a").unwrap();
    sim.node(1)
        .unwrap()
        .host
        .exec("ip", ["link", "set", "vf0", "netns", pod.name()])
        .unwrap();
    let mut stray = pod.command("sleep").arg("300").spawn().unwrap();
    let report = sim.down().unwrap();
    assert!(report.netns_deleted.contains(&pod.name().to_string()));
    assert!(report.pids_killed.contains(&stray.id()));
    let _ = stray.wait();
    drop(sim);
    assert_clean(&c, &[stray.id()]);
}

#[test]
fn spawn_stop_logs_and_health() {
    let c = unique();
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(1).with_vfs(1)).expect("up");
    let n = sim.node(1).unwrap();
    let rec = sim
        .spawn(
            1,
            Place::Dpu,
            "talker",
            "sh",
            ["-c", "echo hello-from-$0; exec sleep 300"],
        )
        .unwrap();
    assert!(rec.is_alive());
    assert!(process_netns_is(rec.pid, &n.dpu));
    assert_eq!(rec.log, sim.log_path("talker"));
    wait_for(|| std::fs::read_to_string(&rec.log).is_ok_and(|l| l.contains("hello-from-sh")));
    // Its own session: not in the test's process group.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        rec.pid.to_string(),
        "session id is its own pid: {stat}"
    );

    let err = sim
        .spawn(1, Place::Host, "talker", "sleep", ["1"])
        .unwrap_err();
    assert!(matches!(err, SimError::Conflict(_)), "{err}");
    let err = sim
        .spawn(1, Place::Host, "../evil", "sleep", ["1"])
        .unwrap_err();
    assert!(err.to_string().contains("process name"), "{err}");
    let err = sim.spawn(3, Place::Host, "x", "sleep", ["1"]).unwrap_err();
    assert!(err.to_string().contains("node"), "{err}");
    let err = sim
        .spawn_with(SpawnSpec::new("y", Netns::new("dm-other-n1-host"), "sleep"))
        .unwrap_err();
    assert!(err.to_string().contains("netns"), "{err}");

    assert!(sim.stop("talker").unwrap());
    assert!(!rec.is_alive());
    assert!(
        !sim.stop("talker").unwrap(),
        "stop of an unknown name is Ok(false)"
    );
    assert!(sim.processes().unwrap().is_empty());

    // Health: a TCP connect from inside the netns to the recorded address.
    let addr = format!("{}:15091", n.mgmt_dpu.addr());
    let srv = sim
        .spawn_with(
            SpawnSpec::new("web", n.dpu.clone(), "python3")
                .args([
                    "-m",
                    "http.server",
                    "--bind",
                    &n.mgmt_dpu.addr().to_string(),
                    "15091",
                ])
                .health(addr.clone()),
        )
        .unwrap();
    let healthy = || {
        sim.status()
            .unwrap()
            .processes
            .iter()
            .find(|p| p.name == "web")
            .and_then(|p| p.healthy)
    };
    wait_for(|| healthy() == Some(true));
    // The probe runs inside the process's netns: stopping the server makes it fail.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(|| healthy() == Some(false));
    drop(sim);
    assert_clean(&c, &[rec.pid, srv.pid]);
}

#[test]
fn netns_run_and_exec() {
    let c = unique();
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(1).with_vfs(2)).expect("up");
    let n = sim.node(1).unwrap();
    // Inside: the host netns's interfaces; outside: not.
    let inside = n
        .host
        .run(|| nix::net::if_::if_nametoindex("tmfifo_net0").is_ok())
        .unwrap();
    assert!(inside);
    assert!(nix::net::if_::if_nametoindex("tmfifo_net0").is_err());
    let addrs = n.host.exec("ip", ["-o", "-4", "addr"]).unwrap();
    assert!(addrs.contains("192.168.100.1/30"), "{addrs}");
    let err = n
        .host
        .exec("ip", ["link", "show", "nosuchdev"])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ip netns exec") && msg.contains("nosuchdev"),
        "{msg}"
    );
    let panicked = std::panic::catch_unwind(|| n.dpu.run(|| panic!("boom")));
    assert!(panicked.is_err());
    let missing = Netns::new(format!("dm-{c}-nope"));
    let err = missing.run(|| ()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("/run/netns/dm-{c}-nope")),
        "{err}"
    );
}

fn unique() -> String {
    dpumesh_sim::unique_cluster("pp")
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

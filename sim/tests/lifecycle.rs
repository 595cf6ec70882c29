//! up/down of real namespaces: what up builds, that up is idempotent, and that
//! down removes everything, also after crashes and interrupted ups.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{assert_clean, process_netns_is};
use dpumesh_sim::{
    down, leftovers, list_netns, status, unique_cluster, Place, Sim, SimConfig, SimError, SimGuard,
    UpStage, VfState,
};

#[test]
fn up_builds_the_topology_and_down_removes_everything() {
    let c = unique_cluster("ud");
    let start = Instant::now();
    let sim = Sim::up(SimConfig::new(&c).with_nodes(2).with_vfs(8)).expect("up");
    println!(
        "up --nodes 2 --vfs 8 took {} ms",
        start.elapsed().as_millis()
    );
    let guard = SimGuard::adopt(sim.clone());

    let mut ns: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("dm-{c}-")))
        .collect();
    ns.sort();
    let mut want = vec![
        format!("dm-{c}-fabric"),
        format!("dm-{c}-n1-dpu"),
        format!("dm-{c}-n1-host"),
        format!("dm-{c}-n2-dpu"),
        format!("dm-{c}-n2-host"),
    ];
    want.sort();
    assert_eq!(ns, want);

    for n in sim.nodes() {
        let host = n.host.links().unwrap();
        let dpu = n.dpu.links().unwrap();
        for vf in &n.vfs {
            assert!(
                host.contains(&vf.host_ifname),
                "{} missing in {}",
                vf.host_ifname,
                n.host
            );
            assert!(
                dpu.contains(&vf.representor),
                "{} missing in {}",
                vf.representor,
                n.dpu
            );
            let shown = n
                .host
                .exec("ip", ["link", "show", &vf.host_ifname])
                .unwrap();
            assert!(shown.contains(&vf.mac.to_string()), "{shown}");
            assert!(shown.contains(&vf.alias), "{shown}");
            assert!(shown.contains("UP"), "{shown}");
        }
        assert!(host.contains(&"tmfifo_net0".to_string()));
        assert!(dpu.contains(&"tmfifo_net0".to_string()) && dpu.contains(&"p0".to_string()));
        let fwd = n
            .dpu
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
            .unwrap();
        assert_eq!(fwd.trim(), "1");
        assert!(n.bpf_pin_dir.is_dir());
        let br = sim
            .fabric()
            .exec("ip", ["link", "show", &n.fabric_port])
            .unwrap();
        assert!(br.contains("master br0") && br.contains("UP"), "{br}");
    }

    // The management link and the fabric carry traffic.
    let n1 = sim.node(1).unwrap().clone();
    let n2 = sim.node(2).unwrap().clone();
    let listener = n2
        .dpu
        .run(move || TcpListener::bind((n2.uplink.addr(), 15999)).unwrap())
        .unwrap();
    let mgmt = n1
        .dpu
        .run(move || TcpListener::bind((n1.mgmt_dpu.addr(), 15998)).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        for l in [listener, mgmt] {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
    });
    let (n1, n2) = (sim.node(1).unwrap(), sim.node(2).unwrap());
    let to = (n2.uplink.addr(), 15999);
    let echoed = n1
        .dpu
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).unwrap();
            s.write_all(b"hello").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            b
        })
        .unwrap();
    assert_eq!(&echoed, b"hello");
    let to = (n1.mgmt_dpu.addr(), 15998);
    let echoed = n1
        .host
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).unwrap();
            s.write_all(b"mgmt!").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            b
        })
        .unwrap();
    assert_eq!(&echoed, b"mgmt!");
    server.join().unwrap();

    // A recorded process and an unrecorded one, both inside the cluster.
    let rec = sim
        .spawn(1, Place::Dpu, "sleeper", "sleep", ["300"])
        .unwrap();
    assert!(process_netns_is(rec.pid, &sim.node(1).unwrap().dpu));
    let mut stray = sim
        .node(2)
        .unwrap()
        .host
        .command("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let stray_pid = stray.id();

    let report = sim.down().expect("down");
    assert_eq!(report.netns_deleted.len(), 5);
    assert!(report.pids_killed.contains(&rec.pid), "{report:?}");
    assert!(report.pids_killed.contains(&stray_pid), "{report:?}");
    let _ = stray.wait();
    assert_clean(&c, &[rec.pid, stray_pid]);
    // down is idempotent, also through the guard's drop.
    down(&c).expect("second down");
    drop(guard);
    assert_clean(&c, &[]);
}

#[test]
fn up_twice_is_harmless() {
    let c = unique_cluster("tw");
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(1).with_vfs(4)).expect("up");
    let n = sim.node(1).unwrap();
    // Identity of each link: a recreated link gets a new ifindex (and MAC).
    let ifindexes = |ns: &dpumesh_sim::Netns| {
        let out = ns.exec("ip", ["-j", "link", "show"]).unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        v.iter()
            .map(|l| format!("{} {} {}", l["ifindex"], l["ifname"], l["address"]))
            .collect::<Vec<_>>()
    };
    let pod = sim.pod_add("p1").unwrap();
    n.host
        .exec(
            "ip",
            ["link", "set", "vf1", "netns", pod.name(), "name", "eth0"],
        )
        .unwrap();
    let before = (
        ifindexes(&n.host),
        ifindexes(&n.dpu),
        ifindexes(sim.fabric()),
    );

    let start = Instant::now();
    Sim::up(SimConfig::new(&c).with_nodes(1).with_vfs(4)).expect("second up");
    println!("second up took {} ms", start.elapsed().as_millis());
    let after = (
        ifindexes(&n.host),
        ifindexes(&n.dpu),
        ifindexes(sim.fabric()),
    );
    assert_eq!(before, after, "second up changed links");
    let st = sim.status().unwrap();
    assert_eq!(st.state, "complete");
    assert_eq!(st.nodes[0].vfs_used, 1);
    assert_eq!(st.nodes[0].vfs[1].state, VfState::Used);
    assert_eq!(st.nodes[0].vfs[1].pod.as_deref(), Some("p1"));

    // A different size is refused, naming what is there.
    let err = Sim::up(SimConfig::new(&c).with_nodes(2).with_vfs(4)).unwrap_err();
    assert!(matches!(err, SimError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("nodes=1"), "{err}");
}

#[test]
fn down_completes_after_an_interrupted_up() {
    for stage in [UpStage::StateWritten, UpStage::Namespaces, UpStage::Links] {
        let c = unique_cluster("iu");
        let cfg = SimConfig::new(&c).with_nodes(2).with_vfs(3);
        let sim = Sim::up_with(cfg.clone(), |s| s != stage).expect("partial up");
        let _guard = SimGuard::adopt(sim);
        let st = status(&c).unwrap();
        assert_eq!(st.state, "incomplete", "{stage:?}");
        down(&c).unwrap_or_else(|e| panic!("down after {stage:?}: {e}"));
        assert_clean(&c, &[]);

        // An interrupted up is completed by the next up.
        Sim::up_with(cfg.clone(), |s| s != stage).expect("partial up");
        let sim = Sim::up(cfg).expect("completing up");
        let st = sim.status().unwrap();
        assert_eq!(st.state, "complete", "{stage:?}");
        assert!(st.fabric_present);
        for n in &st.nodes {
            assert_eq!(n.vfs_free, 3, "{stage:?}: {n:?}");
        }
        sim.down().unwrap();
        assert_clean(&c, &[]);
    }
}

#[test]
fn down_without_state_file_sweeps_by_prefix() {
    let c = unique_cluster("ns");
    let sim = Sim::up(SimConfig::new(&c).with_nodes(1).with_vfs(2)).expect("up");
    let _guard = SimGuard::adopt(sim.clone());
    let mut stray = sim
        .node(1)
        .unwrap()
        .dpu
        .command("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    std::fs::remove_dir_all(sim.state_dir()).unwrap();
    let st = status(&c).unwrap();
    assert_eq!(st.state, "absent");
    assert_eq!(st.nodes.len(), 1, "nodes derived from namespaces");
    assert_eq!(st.nodes[0].vfs_free, 2, "VFs derived from representors");
    let report = down(&c).unwrap();
    assert!(report.pids_killed.contains(&stray.id()));
    let _ = stray.wait();
    assert_clean(&c, &[stray.id()]);
}

#[test]
fn down_after_kill9_and_never_kills_a_reused_pid() {
    let c = unique_cluster("k9");
    let sim = SimGuard::up(SimConfig::new(&c).with_nodes(1).with_vfs(1)).expect("up");
    let victim = sim
        .spawn(1, Place::Host, "victim", "sleep", ["300"])
        .unwrap();
    let other = sim.spawn(1, Place::Dpu, "other", "sleep", ["300"]).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while victim.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = sim.status().unwrap();
    let alive: Vec<(String, bool)> = st
        .processes
        .iter()
        .map(|p| (p.name.clone(), p.alive))
        .collect();
    assert!(alive.contains(&("victim".to_string(), false)), "{alive:?}");
    assert!(alive.contains(&("other".to_string(), true)), "{alive:?}");

    // A record whose PID now belongs to an unrelated process (outside the
    // cluster, different start time) must not be killed.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let path = dpumesh_sim::naming::state_file(&c);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for p in state["processes"].as_array_mut().unwrap() {
        if p["name"] == "victim" {
            p["pid"] = bystander.id().into();
        }
    }
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let report = sim.down().expect("down");
    assert!(report.pids_killed.contains(&other.pid));
    assert!(!report.pids_killed.contains(&bystander.id()), "{report:?}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "bystander was killed"
    );
    bystander.kill().unwrap();
    let _ = bystander.wait();
    assert_clean(&c, &[victim.pid, other.pid]);
}

#[test]
fn invalid_config_builds_nothing() {
    let c = unique_cluster("iv");
    for (cfg, field) in [
        (SimConfig::new(&c).with_nodes(0), "nodes"),
        (SimConfig::new(&c).with_nodes(17), "nodes"),
        (SimConfig::new(&c).with_vfs(0), "vfs"),
        (SimConfig::new(&c).with_vfs(65), "vfs"),
        (SimConfig::new("UPPER"), "cluster"),
        (SimConfig::new("waytoolongname"), "cluster"),
        (SimConfig::new("dm-x"), "cluster"),
    ] {
        let err = Sim::up(cfg.clone()).unwrap_err();
        assert!(matches!(err, SimError::Invalid { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(field), "{msg}");
        assert!(SimGuard::up(cfg).is_err());
    }
    assert!(leftovers(&c).unwrap().is_empty());
    assert!(down("Bad/Name").is_err());
}

//! `dpumesh sim ...` end to end: the real binary against real namespaces.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use dpumesh_sim::{leftovers, unique_cluster};

const BIN: &str = env!("CARGO_BIN_EXE_dpumesh");

/// Takes the cluster down on drop, also when the test panics.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = dpumesh_sim::down(&self.0) {
            eprintln!("cleanup of {} failed: {e}", self.0);
        }
    }
}

fn dpumesh(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DPUMESH_CLUSTER")
        .output()
        .expect("run dpumesh")
}

fn ok(args: &[&str]) -> String {
    let out = dpumesh(args);
    assert!(
        out.status.success(),
        "dpumesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(c: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["sim", "status", "--cluster", c, "--json"])).expect("status json")
}

#[test]
fn up_status_pod_down() {
    let c = unique_cluster("cli");
    let _down = Down(c.clone());
    let out = ok(&["sim", "up", "--cluster", &c, "--nodes", "1", "--vfs", "2"]);
    assert!(out.contains(&format!("cluster {c} up")), "{out}");
    ok(&["sim", "up", "--cluster", &c, "--nodes", "1", "--vfs", "2"]);

    let st = status_json(&c);
    assert_eq!(st["state"], "complete");
    assert_eq!(st["nodes"][0]["vfs_free"], 2);
    assert_eq!(st["nodes"][0]["host_netns"], format!("dm-{c}-n1-host"));

    let out = ok(&["sim", "pod", "add", "web", "--cluster", &c]);
    assert_eq!(out.trim(), format!("dm-{c}-pod-web"));
    let st = status_json(&c);
    assert_eq!(st["pods"][0]["name"], "web");
    let table = ok(&["sim", "status", "--cluster", &c]);
    assert!(table.contains("NODE") && table.contains("web"), "{table}");

    ok(&["sim", "pod", "del", "web", "--cluster", &c]);
    assert_eq!(status_json(&c)["pods"].as_array().map(|a| a.len()), Some(0));

    let out = ok(&["sim", "down", "--cluster", &c]);
    assert!(out.contains("3 namespaces deleted"), "{out}");
    assert!(leftovers(&c).unwrap().is_empty());
    let out = ok(&["sim", "down", "--cluster", &c]);
    assert!(out.contains("0 namespaces deleted"), "{out}");
    assert_eq!(status_json(&c)["state"], "absent");
}

#[test]
fn sigkill_during_up_then_down_and_up_recover() {
    let c = unique_cluster("kil");
    let _down = Down(c.clone());
    let mut child = Command::new(BIN)
        .args(["sim", "up", "--cluster", &c, "--nodes", "2", "--vfs", "4"])
        .args(["--pause-after", "links"])
        .env_remove("DPUMESH_CLUSTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dpumesh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "paused at Links");
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let st = status_json(&c);
    assert_eq!(st["state"], "incomplete");
    assert_eq!(st["fabric_present"], true);
    // Links exist but nothing was configured yet.
    let out = Command::new("ip")
        .args(["-n", &format!("dm-{c}-n1-host"), "-o", "-4", "addr"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("192.168.100.1"));

    // A second up completes it.
    ok(&["sim", "up", "--cluster", &c, "--nodes", "2", "--vfs", "4"]);
    let st = status_json(&c);
    assert_eq!(st["state"], "complete");
    assert_eq!(st["nodes"][1]["vfs_free"], 4);

    // And an interrupted up followed by down leaves nothing.
    ok(&["sim", "down", "--cluster", &c]);
    let mut child = Command::new(BIN)
        .args(["sim", "up", "--cluster", &c, "--pause-after", "namespaces"])
        .env_remove("DPUMESH_CLUSTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dpumesh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "paused at Namespaces");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(!leftovers(&c).unwrap().is_empty());
    ok(&["sim", "down", "--cluster", &c]);
    assert!(leftovers(&c).unwrap().is_empty(), "{:?}", leftovers(&c));
}

#[test]
fn bad_input_is_a_clear_error() {
    let c = unique_cluster("bad");
    for (args, words) in [
        (
            vec!["sim", "up", "--cluster", &c, "--nodes", "0"],
            vec!["nodes", "0"],
        ),
        (
            vec!["sim", "up", "--cluster", &c, "--vfs", "99"],
            vec!["vfs", "99"],
        ),
        (
            vec!["sim", "up", "--cluster", "No_Good"],
            vec!["cluster", "No_Good"],
        ),
        (
            vec!["sim", "pod", "add", "x", "--cluster", &c],
            vec!["not up"],
        ),
    ] {
        let out = dpumesh(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    }
    assert!(leftovers(&c).unwrap().is_empty());
}

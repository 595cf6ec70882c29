//! Checks shared by the simulator's integration tests.
#![allow(dead_code)]

use std::process::Command;

use dpumesh_sim::{leftovers, Netns};

/// Names of links in the root netns that look like the simulator's.
pub fn sim_like_root_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .expect("ip link");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v.iter()
        .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()))
        .filter(|n| {
            n.starts_with("pf0vf")
                || n.strip_prefix("vf")
                    .is_some_and(|k| k.parse::<u32>().is_ok())
                || *n == "tmfifo_net0"
                || *n == "p0"
                || n.starts_with("dm-")
        })
        .map(String::from)
        .collect()
}

/// Fails unless nothing of `cluster` exists and none of `pids` runs.
pub fn assert_clean(cluster: &str, pids: &[u32]) {
    let left = leftovers(cluster).expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
    let root = sim_like_root_links();
    assert!(root.is_empty(), "links in the root netns: {root:?}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        assert!(
            stat.is_empty() || state == Some("Z"),
            "process {pid} still runs: {stat}"
        );
    }
}

/// Inode of a netns file, to tell which netns a process is in.
pub fn netns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat netns").ino()
}

pub fn process_netns_is(pid: u32, ns: &Netns) -> bool {
    netns_inode(&format!("/proc/{pid}/ns/net")) == netns_inode(&ns.path().to_string_lossy())
}

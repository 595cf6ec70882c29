//! The installer binary (`dpumesh-cni-install`) against temp CNI dirs.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const INSTALLER: &str = env!("CARGO_BIN_EXE_dpumesh-cni-install");
const PLUGIN: &str = env!("CARGO_BIN_EXE_dpumesh-cni");

struct Dirs {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path().join("bin");
        let conf = tmp.path().join("net.d");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(&conf).expect("conf");
        Dirs {
            _tmp: tmp,
            bin,
            conf,
        }
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut c = Command::new(INSTALLER);
        c.env_clear()
            .arg("--bin-dir")
            .arg(&self.bin)
            .arg("--conf-dir")
            .arg(&self.conf)
            .arg("--plugin-binary")
            .arg(PLUGIN)
            .args(["--pod-cidr", "10.244.1.0/24", "--vf-backend", "sim"])
            .args(extra);
        c.output().expect("installer ran")
    }

    fn ok(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "installer {extra:?} failed: {stderr}");
        stderr
    }

    /// Every file in both dirs: content, mode, inode (a rewrite changes it).
    fn snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32, u64)> {
        let mut m = BTreeMap::new();
        for d in [&self.bin, &self.conf] {
            for e in std::fs::read_dir(d).expect("readdir").flatten() {
                let md = e.metadata().expect("metadata");
                m.insert(
                    e.path(),
                    (
                        std::fs::read(e.path()).expect("read"),
                        md.permissions().mode() & 0o7777,
                        md.ino(),
                    ),
                );
            }
        }
        m
    }

    fn names(&self, d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("JSON")
}

const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
"#;

#[test]
fn standalone_install_reinstall_uninstall() {
    let d = Dirs::new();
    d.ok(&["--dataplane", "192.168.100.2:15081", "--mtu", "1450"]);

    // The binary: same bytes, 0755.
    let bin = d.bin.join("dpumesh-cni");
    assert_eq!(
        std::fs::read(&bin).expect("binary"),
        std::fs::read(PLUGIN).expect("plugin")
    );
    assert_eq!(
        std::fs::metadata(&bin).expect("md").permissions().mode() & 0o7777,
        0o755
    );
    // The conflist, and nothing else (no temp files left).
    assert_eq!(d.names(&d.conf), vec!["10-dpumesh.conflist"]);
    assert_eq!(d.names(&d.bin), vec!["dpumesh-cni"]);
    let list = json_file(&d.conf.join("10-dpumesh.conflist"));
    assert_eq!(list["cniVersion"], "1.0.0");
    assert_eq!(list["name"], "dpumesh");
    let p = &list["plugins"][0];
    assert_eq!(p["type"], "dpumesh-cni");
    assert_eq!(p["vfBackend"], "sim");
    assert_eq!(p["dataplane"], "192.168.100.2:15081");
    assert_eq!(p["mtu"], 1450);
    assert_eq!(p["ipam"]["type"], "host-local");
    assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(p["ipam"]["ranges"][0][0]["gateway"], "10.244.1.1");

    // Again: nothing rewritten (same inodes).
    let before = d.snapshot();
    let log = d.ok(&["--dataplane", "192.168.100.2:15081", "--mtu", "1450"]);
    assert!(log.contains("nothing to change"), "{log}");
    assert_eq!(d.snapshot(), before);

    // A changed setting rewrites the conflist only.
    d.ok(&["--dataplane", "192.168.100.2:15081", "--mtu", "1400"]);
    let after = d.snapshot();
    assert_eq!(after[&bin], before[&bin]);
    assert_eq!(
        json_file(&d.conf.join("10-dpumesh.conflist"))["plugins"][0]["mtu"],
        1400
    );

    // Uninstall removes both; twice is fine.
    d.ok(&["--uninstall"]);
    assert!(d.names(&d.conf).is_empty());
    assert!(d.names(&d.bin).is_empty());
    d.ok(&["--uninstall"]);
}

#[test]
fn chained_into_existing_conflist_and_restored_byte_for_byte() {
    let d = Dirs::new();
    let primary = d.conf.join("05-primary.conflist");
    std::fs::write(&primary, PRIMARY).expect("write primary");
    std::fs::set_permissions(&primary, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A later file the runtime would not load: must stay untouched.
    let other = d.conf.join("99-other.conflist");
    std::fs::write(&other, PRIMARY.replace("k8s-pod-network", "other")).expect("write other");

    d.ok(&["--mode", "chained"]);
    let list = json_file(&primary);
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, vec!["dpumesh-cni", "portmap", "bandwidth"]);
    assert_eq!(list["name"], "k8s-pod-network");
    assert_eq!(list["plugins"][1]["snat"], true);
    // Mode kept; a backup that runtimes do not load; no conflist of our own.
    assert_eq!(
        std::fs::metadata(&primary)
            .expect("md")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        d.names(&d.conf),
        vec![
            "05-primary.conflist",
            "05-primary.conflist.dpumesh-orig",
            "99-other.conflist"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(d.conf.join("05-primary.conflist.dpumesh-orig")).expect("backup"),
        PRIMARY
    );

    // Re-install: no change.
    let before = d.snapshot();
    d.ok(&["--mode", "chained"]);
    assert_eq!(d.snapshot(), before);

    // Position "last" moves our entry, still one entry.
    d.ok(&["--mode", "chained", "--chain-position", "last"]);
    let list = json_file(&primary);
    assert_eq!(list["plugins"].as_array().map(Vec::len), Some(3));
    assert_eq!(list["plugins"][2]["type"], "dpumesh-cni");

    // Uninstall: the original bytes and mode, backup and binary gone.
    d.ok(&["--uninstall"]);
    assert_eq!(std::fs::read_to_string(&primary).expect("primary"), PRIMARY);
    assert_eq!(
        std::fs::metadata(&primary)
            .expect("md")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        d.names(&d.conf),
        vec!["05-primary.conflist", "99-other.conflist"]
    );
    assert!(d.names(&d.bin).is_empty());
    assert_eq!(
        std::fs::read_to_string(&other).expect("other"),
        PRIMARY.replace("k8s-pod-network", "other")
    );
}

#[test]
fn uninstall_keeps_a_primary_rewritten_since() {
    let d = Dirs::new();
    let primary = d.conf.join("05-primary.conflist");
    std::fs::write(&primary, PRIMARY).expect("write primary");
    d.ok(&["--mode", "chained"]);
    // The primary CNI adds a plugin to the (chained) file.
    let mut list = json_file(&primary);
    list["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(serde_json::json!({"type": "tuning"}));
    std::fs::write(&primary, serde_json::to_vec(&list).expect("json")).expect("rewrite");

    d.ok(&["--uninstall"]);
    // Their change stays, our entry is gone.
    let list = json_file(&primary);
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, vec!["portmap", "bandwidth", "tuning"]);
    assert_eq!(d.names(&d.conf), vec!["05-primary.conflist"]);
}

#[test]
fn malformed_or_missing_primary_is_a_clear_error_and_changes_nothing() {
    let d = Dirs::new();
    let broken = d.conf.join("05-broken.conflist");
    std::fs::write(&broken, "{\"cniVersion\": \"1.0.0\", \"plugins\": [").expect("write");
    let before = d.snapshot();
    let out = d.run(&["--mode", "chained"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("05-broken.conflist") && err.contains("invalid JSON"),
        "{err}"
    );
    assert_eq!(d.snapshot(), before, "nothing may change");

    // Valid JSON, but not a conflist we can chain into.
    for (body, want) in [
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
            "single-plugin",
        ),
        (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"x":1}]}"#,
            "plugins[0] has no \"type\"",
        ),
        (r#"[1,2]"#, "JSON object"),
    ] {
        std::fs::write(&broken, body).expect("write");
        let before = d.snapshot();
        let out = d.run(&["--mode", "chained"]);
        assert!(!out.status.success(), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{body}: {err}");
        assert_eq!(d.snapshot(), before, "{body}: nothing may change");
    }

    // No primary at all.
    std::fs::remove_file(&broken).expect("rm");
    let out = d.run(&["--mode", "chained"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no primary CNI config"));
    assert!(d.names(&d.bin).is_empty() && d.names(&d.conf).is_empty());

    // Bad flags name the field.
    let out = d.run(&["--vf-backend", "sriov"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pf"));
    let out = d.run(&["--gateway", "10.9.9.9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway"));
    let out = d.run(&["--conflist-name", "../x.conflist"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflist-name"));
    assert!(d.names(&d.bin).is_empty() && d.names(&d.conf).is_empty());
}

#[test]
fn switching_modes_leaves_one_entry() {
    let d = Dirs::new();
    let primary = d.conf.join("20-primary.conflist");
    std::fs::write(&primary, PRIMARY).expect("write primary");
    d.ok(&[]);
    // Standalone sorts first (10- < 20-): the runtime loads ours.
    assert_eq!(
        d.names(&d.conf),
        vec!["10-dpumesh.conflist", "20-primary.conflist"]
    );
    d.ok(&["--mode", "chained"]);
    assert_eq!(
        d.names(&d.conf),
        vec!["20-primary.conflist", "20-primary.conflist.dpumesh-orig"]
    );
    d.ok(&[]);
    assert_eq!(
        d.names(&d.conf),
        vec!["10-dpumesh.conflist", "20-primary.conflist"]
    );
    assert_eq!(std::fs::read_to_string(&primary).expect("primary"), PRIMARY);
    d.ok(&["--uninstall"]);
    assert_eq!(d.names(&d.conf), vec!["20-primary.conflist"]);
}

#[test]
fn wait_mode_uninstalls_on_sigterm() {
    let d = Dirs::new();
    let mut child = Command::new(INSTALLER)
        .env_clear()
        .arg("--bin-dir")
        .arg(&d.bin)
        .arg("--conf-dir")
        .arg(&d.conf)
        .arg("--plugin-binary")
        .arg(PLUGIN)
        .args([
            "--pod-cidr",
            "10.244.1.0/24",
            "--vf-backend",
            "sim",
            "--wait",
        ])
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.names(&d.conf).is_empty() {
        assert!(std::time::Instant::now() < deadline, "never installed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Installed; still running until told to stop.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(child.try_wait().expect("wait").is_none());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success());
    assert!(d.names(&d.conf).is_empty() && d.names(&d.bin).is_empty());
}

/// A service account token dir as a `kubernetes.io/service-account-token`
/// Secret volume has it.
fn token_dir(dir: &Path, token: &str, ca: &str) -> PathBuf {
    let d = dir.join("sa");
    std::fs::create_dir_all(&d).expect("sa dir");
    std::fs::write(d.join("token"), token).expect("token");
    std::fs::write(d.join("ca.crt"), ca).expect("ca");
    d
}

const CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTest\n-----END CERTIFICATE-----\n";

#[test]
fn kubeconfig_from_a_service_account_is_written_named_and_removed() {
    let d = Dirs::new();
    let sa = token_dir(d._tmp.path(), "tok-123\n", CA);
    let args = [
        "--kubeconfig-from-token-dir",
        sa.to_str().expect("utf-8"),
        "--kube-server",
        "https://10.96.0.1:443",
        "--host-conf-dir",
        "/etc/cni/net.d",
    ];
    d.ok(&args);
    let kc = d.conf.join("dpumesh-kubeconfig");
    let text = std::fs::read_to_string(&kc).expect("kubeconfig written");
    let mode = std::fs::metadata(&kc).expect("md").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the token is inline: owner only");
    assert!(text.contains("server: https://10.96.0.1:443"), "{text}");
    assert!(text.contains("token: tok-123\n"), "{text}");
    use base64::Engine as _;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(CA);
    assert!(
        text.contains(&format!("certificate-authority-data: {ca_b64}")),
        "{text}"
    );
    // The plugin reads it at its path on the node.
    let list = json_file(&d.conf.join("10-dpumesh.conflist"));
    assert_eq!(
        list["plugins"][0]["kubernetes"]["kubeconfig"],
        "/etc/cni/net.d/dpumesh-kubeconfig"
    );

    // Idempotent; a rotated token rewrites only the kubeconfig.
    let before = d.snapshot();
    d.ok(&args);
    assert_eq!(before, d.snapshot(), "a re-install changes nothing");
    std::fs::write(sa.join("token"), "tok-456").expect("rotate");
    d.ok(&args);
    let after = d.snapshot();
    let changed: Vec<&PathBuf> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(changed, [&kc]);

    // Dropping the option takes the file and the plugin setting out again.
    d.ok(&[]);
    assert!(!kc.exists());
    let list = json_file(&d.conf.join("10-dpumesh.conflist"));
    assert!(list["plugins"][0].get("kubernetes").is_none());
    d.ok(&args);
    assert!(kc.exists());
    d.ok(&["--uninstall"]);
    assert!(
        d.names(&d.conf).is_empty(),
        "uninstall removes our kubeconfig"
    );

    // Someone else's file of that name is not ours to remove.
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\n").expect("theirs");
    d.ok(&["--uninstall"]);
    assert!(kc.exists());
}

#[test]
fn kubeconfig_options_are_checked_before_anything_is_written() {
    let d = Dirs::new();
    let empty = token_dir(d._tmp.path(), "  ", CA);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--kubeconfig-from-token-dir".into(),
                "/nonexistent".into(),
                "--kube-server".into(),
                "https://k:443".into(),
            ],
            "reading the service account token",
        ),
        (
            vec![
                "--kubeconfig-from-token-dir".into(),
                empty.display().to_string(),
                "--kube-server".into(),
                "https://k:443".into(),
            ],
            "empty",
        ),
        (
            vec![
                "--kubeconfig-from-token-dir".into(),
                empty.display().to_string(),
            ],
            "KUBERNETES_SERVICE_HOST",
        ),
        (
            vec![
                "--kubeconfig-from-token-dir".into(),
                empty.display().to_string(),
                "--kube-server".into(),
                "k:443".into(),
            ],
            "kube-server",
        ),
        (vec!["--kubeconfig".into(), "relative".into()], "kubeconfig"),
        (
            vec![
                "--kubeconfig".into(),
                "/k".into(),
                "--kubeconfig-from-token-dir".into(),
                "/d".into(),
            ],
            "cannot be used with",
        ),
    ];
    for (args, want) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.run(&refs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(d.names(&d.conf).is_empty(), "{args:?} wrote something");
        assert!(d.names(&d.bin).is_empty(), "{args:?} wrote something");
    }
}

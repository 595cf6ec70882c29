//! The real client: Debian's containerd (with runc) run by the test, on its own
//! config, root, state and socket under a tempdir, inside a simulated node's
//! host netns; a pause image built here; a CRI v1 client over its socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub const PAUSE_IMAGE: &str = "localhost/dpumesh/pause:1";

/// Runs a command, returning stdout; panics with its stderr on failure.
pub fn sh(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Stores `bytes` as a blob of the OCI layout at `dir`; (digest hex, size).
fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, bytes).expect("write blob");
    let d = sha256(&tmp);
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&d)).expect("rename blob");
    (d, bytes.len())
}

/// Builds the pause image as an OCI image-layout tarball: one layer holding a
/// static `/pause` (compiled here from ten lines of C) that sleeps until
/// SIGTERM/SIGINT. Returns the tarball path.
pub fn build_pause_image(work: &Path) -> PathBuf {
    let src = work.join("pause.c");
    std::fs::write(
        &src,
        "#include <signal.h>\n#include <unistd.h>\n\
         static void bye(int s) { (void)s; _exit(0); }\n\
         int main(void) {\n  signal(SIGTERM, bye);\n  signal(SIGINT, bye);\n  for (;;) pause();\n}\n",
    )
    .expect("write pause.c");
    let rootfs = work.join("pause-rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    sh(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(rootfs.join("pause"))
        .arg(&src));
    let layer = work.join("layer.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("pause"));

    let layout = work.join("pause-layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let layer_bytes = std::fs::read(&layer).expect("layer");
    let (ld, ls) = blob(&layout, &layer_bytes);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{ld}")]},
    });
    let (cd, cs) = blob(&layout, &serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{cd}"), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{ld}"), "size": ls}],
    });
    let (md, ms) = blob(&layout, &serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{md}"), "size": ms,
                       "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                                       "org.opencontainers.image.ref.name": "1"}}],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let tarball = work.join("pause-image.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .args(["oci-layout", "index.json", "blobs"]));
    tarball
}

/// Runs containerd in its own mount namespace: a fresh tmpfs on /run (so the
/// shims' hard-coded `/run/containerd/s/` sockets and runc's state never touch
/// the machine's), with /run/netns and /run/dpumesh bound back in; a tmpfs on
/// /var/lib (libcni's cache, `/var/lib/cni`); a sysfs of the node's netns with
/// the cgroup hierarchy bound back in (`ip netns exec` would remount /sys
/// without it, and runc fails with "no cgroup mount found in mountinfo"). Every mount containerd makes
/// (overlay rootfs, shm, the pods' netns) lives and dies with that namespace.
const WRAPPER: &str = r#"set -e
T="$1"
mount --make-rslave /
mkdir -p "$T/hostrun"
mount --rbind /run "$T/hostrun"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/containerd /run/netns /run/dpumesh
mount --rbind "$T/hostrun/netns" /run/netns
if [ -d "$T/hostrun/dpumesh" ]; then mount --rbind "$T/hostrun/dpumesh" /run/dpumesh; fi
umount -l "$T/hostrun"
# sysfs of the node's netns (its net devices), keeping the cgroup mounts runc needs.
mkdir -p "$T/cgroup"
mount --rbind /sys/fs/cgroup "$T/cgroup"
mount -t sysfs sysfs /sys
mount --rbind "$T/cgroup" /sys/fs/cgroup
umount -l "$T/cgroup"
mount -t tmpfs -o mode=755 tmpfs /var/lib
mkdir -p /var/lib/cni
exec containerd --config "$T/config.toml"
"#;

/// containerd owned by the test: killed (with its shims and their pause
/// processes) on drop, also when the test fails.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// `dir` holds everything: config, root, state, socket, log. `bin_dir` and
    /// `conf_dir` are the CRI plugin's CNI dirs. `netns` runs it (the node's host).
    pub fn start(
        dir: &Path,
        bin_dir: &Path,
        conf_dir: &Path,
        netns: &dpumesh_sim::Netns,
    ) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{img}"
    netns_mounts_under_state_dir = true
    disable_apparmor = true
    enable_selinux = false
    # The sandbox asks for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE,
    # which this machine's root lacks (runc: "failed to update
    # /proc/self/oom_score_adj: Permission denied"). Clamp to containerd's own.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{bin}"
      conf_dir = "{conf}"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
"#,
            d = dir.display(),
            img = PAUSE_IMAGE,
            bin = bin_dir.display(),
            conf = conf_dir.display(),
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = dir.join("containerd.log");
        let logf = std::fs::File::create(&log).expect("log");
        // nsenter, not `ip netns exec`: the wrapper does its own /sys.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                WRAPPER,
                "sh",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            log,
            child: Some(child),
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ch) = self.child.as_mut() {
                if let Ok(Some(st)) = ch.try_wait() {
                    panic!("containerd exited ({st}): {}", self.log_tail());
                }
            }
            if self.socket.exists()
                && Command::new("ctr")
                    .arg("-a")
                    .arg(&self.socket)
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `ctr -n k8s.io images import`.
    pub fn import(&self, tarball: &Path) {
        sh(Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tarball));
    }

    pub async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("CRI socket")
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// PIDs of the shims serving this containerd (their command line names our
    /// socket) and of everything they started (pause processes).
    fn shim_tree(&self) -> Vec<i32> {
        let needle = self.dir.display().to_string();
        let mut shims = Vec::new();
        let mut parents: Vec<(i32, i32)> = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                shims.push(pid);
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                parents.push((pid, ppid));
            }
        }
        let mut all = shims.clone();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            all.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        all
    }

    /// Stops containerd, its shims and their containers.
    pub fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for pid in self.shim_tree().into_iter().rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut ch) = self.child.take() {
            let _ = kill(Pid::from_raw(ch.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = ch.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = ch.kill();
            let _ = ch.wait();
        }
        // Shims started after the first sweep (a racing RunPodSandbox).
        for pid in self.shim_tree().into_iter().rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points under `dir` visible from the test's mount namespace: none may
/// exist (containerd's mounts live only in its own namespace).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&needle))
        .map(str::to_string)
        .collect()
}

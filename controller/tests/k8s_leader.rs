//! Two controller replicas against one scripted API server and its Lease: one
//! leads and writes; the other only follows (writes nothing, does not steal a
//! live lease); a concurrent Lease write makes the leader's renewal fail with
//! 409 Conflict and it recovers its lease; when the leader dies the follower
//! takes over after the lease expires and writes from then on.

mod k8s_support;

use std::path::Path;

use dpumesh_controller::inventory::Inventory;
use k8s_support::{
    free_port, next, wait_for, watch_node, ApiServer, Controller, NAMESPACES, NODES, PODS,
    SERVICES, SLICES,
};
use serde_json::json;

const NS: &str = "dpumesh-system";
const LEASE: &str = "dpumesh-controller";

fn holder(server: &ApiServer) -> Option<String> {
    server
        .lease(NS, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

fn pods(out: &Path) -> Vec<String> {
    Inventory::load(&out.join("node-1"), Some("node-1"))
        .map(|i| i.pods.iter().map(|p| p.key()).collect())
        .unwrap_or_default()
}

fn pod(name: &str, ip: &str, vf: u32) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "annotations": {"dpumesh.io/vf-index": vf.to_string(), "dpumesh.io/mac": format!("02:64:6d:01:00:{vf:02x}")}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "busybox"}]},
           "status": {"phase": "Running", "podIPs": [{"ip": ip}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_the_other_takes_over() {
    let server = ApiServer::start().await;
    server.batch(|b| {
        b.apply(NAMESPACES, json!({"metadata": {"name": "default"}}));
        b.apply(NODES, json!({"metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.1.0/24"}}));
        b.apply(PODS, pod("a-v1", "10.244.1.5", 1));
        b.apply(SERVICES, json!({"metadata": {"name": "a", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}));
        b.apply(SLICES, json!({"metadata": {"name": "a-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "a"}}, "addressType": "IPv4", "endpoints": []}));
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(tmp.path());
    let out = |id: &str| tmp.path().join(format!("out-{id}"));
    let grpc_a = format!("127.0.0.1:{}", free_port());
    let grpc_b = format!("127.0.0.1:{}", free_port());
    let grpc = |id: &str| {
        if id == "a" {
            grpc_a.clone()
        } else {
            grpc_b.clone()
        }
    };
    let args = |id: &'static str, grpc: &str| {
        [
            "--identity",
            id,
            "--lease-namespace",
            NS,
            "--lease-name",
            LEASE,
            "--lease-duration-secs",
            "2",
            "--retry-period-ms",
            "200",
            "--grpc-addr",
            grpc,
        ]
        .map(str::to_string)
    };
    let start = |id: &'static str| {
        let args = args(id, &grpc(id));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Controller::start(&kubeconfig, &out(id), &args)
    };
    let mut a = start("a");
    let mut b = start("b");

    wait_for("a leader", || holder(&server).is_some()).await;
    let leader = holder(&server).expect("holder");
    let follower = if leader == "a" { "b" } else { "a" };
    wait_for("the leader's inventory", || {
        pods(&out(&leader)) == ["default/a-v1"]
    })
    .await;
    // Only the leader serves the stream; the follower names the leader.
    let mut stream = watch_node(&grpc(&leader), "node-1")
        .await
        .expect("leader serves");
    let first = next(&mut stream).await.expect("inventory");
    assert!(
        first.pods_yaml.contains("name: a-v1"),
        "{}",
        first.pods_yaml
    );
    // (Once the follower has read the Lease it names the leader.)
    let mut refused = watch_node(&grpc(follower), "node-1")
        .await
        .expect_err("follower refuses");
    for _ in 0..100 {
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        if refused.message().contains(&format!("{leader:?}")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        refused = watch_node(&grpc(follower), "node-1")
            .await
            .expect_err("follower refuses");
    }
    assert!(
        refused.message().contains(&format!("{leader:?}")),
        "{}",
        refused.message()
    );

    // A concurrent write to the Lease: the leader's next renewal is refused (409);
    // it reads the Lease again and renews; the follower still does not take it.
    let conflicts = server.lease_conflicts();
    server.batch(|bt| bt.race_next_lease_write());
    wait_for("a 409 on the leader's renewal", || {
        server.lease_conflicts() > conflicts
    })
    .await;
    let renewed_from =
        server.lease(NS, LEASE).expect("lease")["metadata"]["resourceVersion"].clone();
    wait_for("the leader renews again", || {
        server.lease(NS, LEASE).expect("lease")["metadata"]["resourceVersion"] != renewed_from
    })
    .await;
    assert_eq!(holder(&server).as_deref(), Some(leader.as_str()));
    // Several renewals later the follower has written nothing.
    let rv =
        |s: &ApiServer| s.lease(NS, LEASE).expect("lease")["metadata"]["resourceVersion"].clone();
    for _ in 0..5 {
        let seen = rv(&server);
        wait_for("a renewal", || rv(&server) != seen).await;
    }
    assert_eq!(holder(&server).as_deref(), Some(leader.as_str()));
    assert!(
        !out(follower).join("node-1").exists(),
        "the follower wrote an inventory"
    );
    assert_eq!(
        server.lease(NS, LEASE).expect("lease")["spec"]["leaseTransitions"],
        0
    );

    // The leader dies without releasing the lease: after it expires the follower
    // takes over (one transition) and writes; the dead leader's output stays stale.
    if leader == "a" {
        a.kill()
    } else {
        b.kill()
    }
    wait_for("the follower takes over", || {
        holder(&server).as_deref() == Some(follower)
    })
    .await;
    assert_eq!(
        server.lease(NS, LEASE).expect("lease")["spec"]["leaseTransitions"],
        1
    );
    wait_for("the new leader's inventory", || {
        pods(&out(follower)) == ["default/a-v1"]
    })
    .await;
    let mut stream = watch_node(&grpc(follower), "node-1")
        .await
        .expect("new leader serves");
    assert!(next(&mut stream)
        .await
        .expect("inventory")
        .pods_yaml
        .contains("name: a-v1"));
    server.apply(PODS, pod("b-v1", "10.244.1.6", 2));
    wait_for("the new leader follows changes", || {
        pods(&out(follower)) == ["default/a-v1", "default/b-v1"]
    })
    .await;
    assert_eq!(pods(&out(&leader)), ["default/a-v1"]);

    // A third replica joins; the leader is stopped with SIGTERM: it exits 0 and
    // releases the lease on the way out (holder cleared), so the new replica takes
    // over without waiting for the lease to expire.
    let mut c = Controller::start(
        &kubeconfig,
        &out("c"),
        &args("c", &format!("127.0.0.1:{}", free_port()))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let seen = rv(&server);
    wait_for("a renewal", || rv(&server) != seen).await;
    let stopping = if follower == "a" { &mut a } else { &mut b };
    let status = stopping.terminate();
    assert!(status.success(), "SIGTERM → exit 0, got {status}");
    let after = holder(&server);
    assert!(
        after.is_none() || after.as_deref() == Some("c"),
        "the stopped leader released the lease: holder {after:?}"
    );
    wait_for("c takes over", || holder(&server).as_deref() == Some("c")).await;
    assert_eq!(
        server.lease(NS, LEASE).expect("lease")["spec"]["leaseTransitions"],
        2
    );
    wait_for("c's inventory", || {
        pods(&out("c")) == ["default/a-v1", "default/b-v1"]
    })
    .await;
    c.kill();
}

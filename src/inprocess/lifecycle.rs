//! Create, build, control and delete, and what each leaves behind.

use crate::testing::Rig;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_builds_and_a_delete_leaves_nothing() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.create("web1", 1000, SPEC).await.unwrap();
    rig.wait_status("web1", "running").await;
    let n1 = rig.node("n1");
    assert!(n1.domains().iter().any(|(n, _)| n == "web1"));
    assert!(n1.volumes().contains(&"web1.disk.qcow2".to_string()));
    assert_eq!(rig.read("instances/web1/ip").unwrap(), "192.168.122.10\n");
    assert!(
        rig.read("instances/web1/ssh_key")
            .unwrap()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );
    rig.rmdir("web1", 1000).await.unwrap();
    assert!(rig.status("web1").is_none());
    assert!(n1.domains().is_empty());
    assert_eq!(n1.volumes(), vec!["debian-12.qcow2".to_string()]);
}

/// A node whose first poll fails says it was never read, rather than looking like an empty
/// node; once it answers it reads online with what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_read_says_so() {
    let n1 = crate::hv::mem::MemNode::new("n1", 4, 8192);
    n1.add_foreign_domain("legacy", 1, 512, true);
    n1.set_down(true);
    let rig = Rig::on_nodes(vec![n1.clone()], crate::testing::TIMING, "").await;
    let status = rig.read("nodes/n1/status").unwrap();
    assert!(status.starts_with("offline: not read yet: "), "{status}");
    assert!(
        rig.read("status")
            .unwrap()
            .starts_with("degraded: 1 of 1 nodes offline")
    );
    n1.set_down(false);
    rig.wait_for("the node to answer", |r| {
        r.read("nodes/n1/status").is_ok_and(|s| s == "online\n")
    })
    .await;
    assert!(
        rig.status("legacy")
            .is_some_and(|s| s.starts_with("running"))
    );
}

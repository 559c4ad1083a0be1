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

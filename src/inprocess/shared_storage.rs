//! Builds, undos, `rmdir` and `/status` with a shared storage (an in-memory share,
//! `storage::mem`): disks and seeds are files there, never volumes of the node's pool, and
//! whatever a build made there is removed from there (docs/SEMANTICS.md: "Build", "The
//! domain", "The shared storage failing").

use std::sync::Arc;

use crate::hv::mem::Call;
use crate::storage::mem::{MemShare, ShareOp};
use crate::testing::Rig;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
const IMAGE: &str = "debian-12.qcow2";
const OWNER: u32 = 1000;

fn share_with_image() -> Arc<MemShare> {
    Arc::new(MemShare::with_files(&[IMAGE]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_and_seeds_go_to_the_share_and_rmdir_removes_them_there() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    let pool_before = rig.node("n1").volumes();
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    rig.wait_status("vm1", "running").await;
    assert_eq!(share.files(), [IMAGE, "vm1.disk.qcow2", "vm1.seed.iso"]);
    assert_eq!(rig.node("n1").volumes(), pool_before, "nothing in the pool");
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.made.to_string(), "domain,disk,seed,shared");
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert_eq!(share.files(), [IMAGE]);
    assert_eq!(rig.node("n1").volumes(), pool_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_needs_no_pool_copy_and_a_missing_shared_image_fails_cleanly() {
    let share = Arc::new(MemShare::default());
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    let spec = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"image":"elsewhere.qcow2"}"#;
    rig.create("vm1", OWNER, spec).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(
        status,
        "failed: image elsewhere.qcow2 is not on the shared storage mem://st/cloud"
    );
    assert!(share.files().is_empty());
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert!(row.made.is_empty() && row.node.is_none(), "{}", row.made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_removes_what_it_made_on_the_share() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    // The seed fails: the disk made before it goes.
    share.fail(ShareOp::Upload, 1);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(
        status,
        "failed: storage mem://st/cloud: Upload failed (injected)"
    );
    assert_eq!(share.files(), [IMAGE]);
    // The domain fails to start: both files go.
    rig.node("n1").fail_nth(Call::DefineAndStart, 1);
    rig.write("instances/vm1/spec.json", OWNER, SPEC)
        .await
        .unwrap();
    rig.wait_status("vm1", "failed: ").await;
    assert_eq!(share.files(), [IMAGE]);
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert!(row.made.is_empty(), "{}", row.made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_already_on_the_share_is_left_alone() {
    let share = Arc::new(MemShare::with_files(&[IMAGE, "vm1.seed.iso"]));
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(
        status,
        "failed: storage mem://st/cloud: vm1.seed.iso is already there; it is left alone"
    );
    // The disk kvmfs made is gone; the seed it did not make stays.
    assert_eq!(share.files(), [IMAGE, "vm1.seed.iso"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_the_undo_could_not_remove_stay_recorded_as_shared_until_removed() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    rig.node("n1").fail_nth(Call::DefineAndStart, 1);
    share.fail(ShareOp::Delete, 2);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    rig.wait_status("vm1", "failed: ").await;
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.made.to_string(), "disk,seed,shared");
    assert_eq!(share.files(), [IMAGE, "vm1.disk.qcow2", "vm1.seed.iso"]);
    // rmdir removes them from the share, not the pool.
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert_eq!(share.files(), [IMAGE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_share_degrades_status_and_builds_fail_having_made_nothing() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    assert_eq!(rig.read("status").unwrap(), "ok\n");
    share.set_silent(true);
    rig.wait_for("a degraded /status", |r| {
        r.read("status").unwrap()
            == "degraded: storage mem://st/cloud did not answer within 1s (used by n1)\n"
    })
    .await;
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(
        status,
        "failed: storage mem://st/cloud did not answer within 1s"
    );
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert!(row.made.is_empty(), "{}", row.made);
    share.set_silent(false);
    rig.wait_for("/status ok again", |r| r.read("status").unwrap() == "ok\n")
        .await;
}

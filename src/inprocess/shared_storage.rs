//! Builds, undos, `rmdir`, `/status` and `/images` with a shared storage (an in-memory
//! share, `storage::mem`): disks and seeds are files there, never volumes of the node's
//! pool, whatever a build made there is removed from there, and the images are the share's
//! files (docs/SEMANTICS.md: "Paths", "Build", "The domain", "The shared storage failing").

use std::sync::Arc;

use super::{action_error, error_file, names_in};
use crate::cluster::actions::ActionError;
use crate::hv::mem::Call;
use crate::model::InstanceState;
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
async fn placement_needs_no_pool_copy_and_a_missing_shared_image_is_refused_at_commit() {
    let share = Arc::new(MemShare::default());
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    let spec = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"image":"elsewhere.qcow2"}"#;
    let want = "image elsewhere.qcow2 is not on the shared storage mem://st/cloud (see /images)";
    let e = action_error(rig.create("vm1", OWNER, spec).await);
    assert_eq!(e, ActionError::Invalid(want.into()));
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(error_file(&rig, "vm1"), format!("{want}\n"));
    assert!(share.files().is_empty());
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.state, InstanceState::Draft);
    assert!(row.made.is_empty() && row.node.is_none(), "{}", row.made);
    // Copied there since the last listing: the commit looks on the share itself. No node's
    // pool holds it, and none needs to.
    share.fail(ShareOp::List, u32::MAX);
    share.put("elsewhere.qcow2", 1 << 30);
    rig.write("instances/vm1/spec.json", OWNER, spec)
        .await
        .unwrap();
    rig.wait_status("vm1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_gone_between_commit_and_build_fails_the_build_cleanly() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    // The listing still has it (listings fail from now on); the share no longer does.
    share.fail(ShareOp::List, u32::MAX);
    share.take(IMAGE);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(
        status,
        "failed: image debian-12.qcow2 is not on the shared storage mem://st/cloud"
    );
    assert!(share.files().is_empty());
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert!(row.made.is_empty() && row.node.is_none(), "{}", row.made);
}

fn images(rig: &Rig) -> Vec<String> {
    names_in(rig, rig.ino("images").unwrap())
}

fn json(rig: &Rig, path: &str) -> serde_json::Value {
    let text = rig.read(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_the_shares_files_not_the_pools_nor_instances_parts() {
    let share = Arc::new(MemShare::default());
    share.put(IMAGE, 300 << 20);
    share.put("alpine-3.qcow2", 50 << 20);
    share.put(".hidden.qcow2", 1);
    let rig = Rig::with_share(&[("n1", 4, 8192), ("n2", 4, 8192)], share.clone()).await;
    // In a pool only: not an image with a shared storage (builds never use the pools).
    rig.node("n2").add_volume("centos-7.qcow2", 3 << 30);
    // Listed before the mount: the first `ls` has them.
    assert_eq!(images(&rig), ["alpine-3.qcow2", IMAGE]);

    rig.create("vm1", OWNER, SPEC).await.unwrap();
    rig.wait_status("vm1", "running").await;
    rig.create("vm2", OWNER, r#"{"image":"centos-7.qcow2"}"#)
        .await
        .unwrap_err();
    // Listed again: vm1's disk and seed are there, and are no images.
    rig.wait_for("the listing with vm1's files", |r| {
        r.cluster
            .view()
            .share_files
            .as_ref()
            .is_some_and(|f| f.len() == 4)
    })
    .await;
    assert_eq!(images(&rig), ["alpine-3.qcow2", IMAGE]);
    assert_eq!(
        rig.ino("images/vm1.disk.qcow2").unwrap_err().errno(),
        libc::ENOENT
    );
    let e = action_error(
        rig.create("vm3", OWNER, r#"{"image":"vm1.disk.qcow2"}"#)
            .await,
    );
    assert_eq!(
        e,
        ActionError::Invalid(
            "image vm1.disk.qcow2 is instance vm1's own disk or seed, not an image".into()
        )
    );

    let info = json(&rig, &format!("images/{IMAGE}/info.json"));
    assert_eq!(
        info,
        serde_json::json!({
            "name": IMAGE,
            "size_bytes": 300u64 << 20,
            "size_gb": 0.29,
            "storage": "shared",
            "protocol": "nfs",
            "host": "st",
            "path": "/cloud/debian-12.qcow2",
            "nodes": [
                {"node": "n1", "size_bytes": 300u64 << 20, "path": "/cloud/debian-12.qcow2"},
                {"node": "n2", "size_bytes": 300u64 << 20, "path": "/cloud/debian-12.qcow2"},
            ],
        })
    );
    assert_eq!(
        rig.read(&format!("images/{IMAGE}/nodes")).unwrap(),
        "n1\nn2\n"
    );
    assert_eq!(
        rig.read("images/alpine-3.qcow2/size").unwrap(),
        format!("{}\n", 50u64 << 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_copied_to_or_removed_from_the_share_show_at_the_next_listing() {
    let share = share_with_image();
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    let before = rig.cluster.view().images[IMAGE].clone();
    share.put("new.qcow2", 4096);
    rig.wait_for("new.qcow2", |r| {
        images(r) == ["debian-12.qcow2", "new.qcow2"]
    })
    .await;
    // What did not change is the same object (nothing for the kernel to forget).
    assert!(Arc::ptr_eq(&before, &rig.cluster.view().images[IMAGE]));
    share.put("new.qcow2", 8192);
    rig.wait_for("new.qcow2 grown", |r| {
        r.read("images/new.qcow2/size").ok().as_deref() == Some("8192\n")
    })
    .await;
    share.take("new.qcow2");
    rig.wait_for("new.qcow2 gone", |r| images(r) == [IMAGE])
        .await;
    // A listing that fails keeps the last one.
    share.fail(ShareOp::List, u32::MAX);
    share.put("later.qcow2", 1);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(images(&rig), [IMAGE]);
    share.fail(ShareOp::List, 0);
    rig.wait_for("later.qcow2", |r| images(r) == [IMAGE, "later.qcow2"])
        .await;
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

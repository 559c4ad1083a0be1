//! Snapshots through the tree (docs/SEMANTICS.md, "Snapshots"): `mkdir` and `rmdir` in
//! `instances/<i>/snapshots/`, `revert NAME` in `ctl`, `info.json`, and every refusal —
//! not the owner, not ready, a bad or taken name, an unknown snapshot, a network disk of a
//! stopped domain, a node that fails — each leaving nothing half-made.

use std::ffi::OsStr;
use std::time::Duration;

use super::{action_error, error_file, names_in};
use crate::cluster::actions::ActionError;
use crate::hv::DomainState;
use crate::hv::mem::Call;
use crate::testing::Rig;
use crate::tree::TreeError;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
const OWNER: u32 = 1000;
const OTHER: u32 = 1001;
const ROOT: u32 = 0;

async fn built(rig: &Rig, name: &str) {
    rig.create(name, OWNER, SPEC).await.unwrap();
    rig.wait_status(name, "running").await;
}

fn snapshots_dir(rig: &Rig, name: &str) -> u64 {
    rig.ino(&format!("instances/{name}/snapshots")).unwrap()
}

async fn mkdir_snap(rig: &Rig, name: &str, snap: &str, uid: u32) -> Result<(), TreeError> {
    rig.tree
        .mkdir(snapshots_dir(rig, name), OsStr::new(snap), uid)
        .await
        .map(|_| ())
}

async fn rmdir_snap(rig: &Rig, name: &str, snap: &str, uid: u32) -> Result<(), TreeError> {
    rig.tree
        .rmdir(snapshots_dir(rig, name), OsStr::new(snap), uid)
        .await
}

fn info(rig: &Rig, name: &str, snap: &str) -> serde_json::Value {
    let text = rig
        .read(&format!("instances/{name}/snapshots/{snap}/info.json"))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_takes_a_snapshot_listed_with_its_info_and_rmdir_deletes_it() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    assert!(names_in(&rig, rig.ino("instances/vm1").unwrap()).contains(&"snapshots".into()));
    assert!(names_in(&rig, snapshots_dir(&rig, "vm1")).is_empty());

    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();
    // Shown as the mkdir returns, from the picture: no call per read.
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);
    let lists = n1.calls(Call::ListSnapshots);
    let i = info(&rig, "vm1", "s1");
    assert_eq!(i["name"], "s1");
    assert_eq!(i["instance"], "vm1");
    assert_eq!(i["state"], "running");
    assert_eq!(i["current"], true);
    assert!(i["parent"].is_null());
    assert!(i["size_bytes"].is_null());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - i["created_at"].as_i64().unwrap()).abs() < 60, "{i}");
    assert_eq!(n1.calls(Call::ListSnapshots), lists);
    let snap_dir = rig.ino("instances/vm1/snapshots/s1").unwrap();
    assert_eq!(names_in(&rig, snap_dir), ["info.json"]);
    let attr = rig.tree.getattr(snap_dir).unwrap();
    assert_eq!(attr.uid, OWNER);

    // A second one has the first as parent and is current.
    rig.node("n1").set_domain_state("vm1", DomainState::Shutoff);
    rig.wait_status("vm1", "shutoff").await;
    mkdir_snap(&rig, "vm1", "s2", ROOT).await.unwrap();
    let i2 = info(&rig, "vm1", "s2");
    assert_eq!(i2["parent"], "s1");
    assert_eq!(i2["state"], "shutoff");
    assert_eq!(i2["current"], true);
    assert_eq!(info(&rig, "vm1", "s1")["current"], false);

    rmdir_snap(&rig, "vm1", "s2", OWNER).await.unwrap();
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);
    assert_eq!(n1.snapshots("vm1"), ["s1"]);
    assert!(matches!(
        rig.ino("instances/vm1/snapshots/s2"),
        Err(TreeError::NotFound)
    ));
    // Deleting an unknown one is ENOENT, and not recorded.
    let e = action_error(rmdir_snap(&rig, "vm1", "s2", OWNER).await);
    assert!(matches!(e, ActionError::NotFound(_)), "{e:?}");
    assert_eq!(error_file(&rig, "vm1"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_brings_back_the_state_of_the_snapshot() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    mkdir_snap(&rig, "vm1", "up", OWNER).await.unwrap();
    rig.write("instances/vm1/ctl", OWNER, "destroy\n")
        .await
        .unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    mkdir_snap(&rig, "vm1", "down", OWNER).await.unwrap();

    rig.write("instances/vm1/ctl", OWNER, "revert up\n")
        .await
        .unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "running");
    assert_eq!(info(&rig, "vm1", "up")["current"], true);
    assert_eq!(info(&rig, "vm1", "down")["current"], false);
    rig.write("instances/vm1/ctl", ROOT, "revert down")
        .await
        .unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    assert_eq!(n1.calls(Call::RevertSnapshot), 2);

    // An unknown snapshot: EINVAL on the write, the reason in `error`, no call.
    let e = action_error(rig.write("instances/vm1/ctl", OWNER, "revert nope").await);
    assert_eq!(
        e,
        ActionError::Invalid("instance vm1 has no snapshot nope to revert to".into())
    );
    assert_eq!(
        error_file(&rig, "vm1"),
        "instance vm1 has no snapshot nope to revert to\n"
    );
    // A bad name: EINVAL too.
    let e = action_error(rig.write("instances/vm1/ctl", OWNER, "revert ../x").await);
    assert!(matches!(e, ActionError::Invalid(_)), "{e:?}");
    assert_eq!(n1.calls(Call::RevertSnapshot), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_root_may_take_delete_or_revert_and_anyone_may_read() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();

    let e = action_error(mkdir_snap(&rig, "vm1", "s2", OTHER).await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    let e = action_error(rmdir_snap(&rig, "vm1", "s1", OTHER).await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    // The other user cannot even open ctl for writing.
    let ino = rig.ino("instances/vm1/ctl").unwrap();
    assert!(matches!(
        rig.tree.open(ino, true, OTHER),
        Err(TreeError::Action(ActionError::NotOwner(_)))
    ));
    let e = action_error(
        rig.cluster
            .snapshot_revert(
                "vm1",
                rig.cluster.view().instances["vm1"].incarnation(),
                OTHER,
                &crate::model::SnapshotName::new("s1").unwrap(),
            )
            .await
            .map_err(TreeError::from),
    );
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    // Refusals for not being the owner are not recorded on the instance.
    assert_eq!(error_file(&rig, "vm1"), "");
    assert_eq!(n1.calls(Call::CreateSnapshot), 1);
    assert_eq!(n1.calls(Call::DeleteSnapshot), 0);
    assert_eq!(n1.calls(Call::RevertSnapshot), 0);
    // Reading is everyone's.
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);
    let ino = rig.ino("instances/vm1/snapshots/s1/info.json").unwrap();
    let (fh, _) = rig.tree.open(ino, false, OTHER).unwrap();
    rig.tree.release(fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_taken_names_are_refused_before_the_node_is_asked() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();
    for bad in ["Upper", "-x", "a_b", "a.b", &"x".repeat(64)] {
        let e = action_error(mkdir_snap(&rig, "vm1", bad, OWNER).await);
        assert!(matches!(e, ActionError::Invalid(_)), "{bad}: {e:?}");
    }
    assert!(error_file(&rig, "vm1").starts_with("snapshot invalid name"));
    // A name taken: EEXIST from the picture, or from the node when the picture lags.
    let e = action_error(mkdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert_eq!(
        e,
        ActionError::Exists("instance vm1 has a snapshot s1 already".into())
    );
    assert_eq!(n1.calls(Call::CreateSnapshot), 1);
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);
    // A bad name in rmdir names nothing.
    assert!(matches!(
        rmdir_snap(&rig, "vm1", "A!", OWNER).await,
        Err(TreeError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_is_not_ready_refuses_with_ebusy() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    rig.mkdir("draft1", OWNER).await.unwrap();
    let e = action_error(mkdir_snap(&rig, "draft1", "s1", OWNER).await);
    assert_eq!(
        e,
        ActionError::Busy("instance draft1 is draft; snapshots need it ready".into())
    );
    assert_eq!(
        error_file(&rig, "draft1"),
        "instance draft1 is draft; snapshots need it ready\n"
    );

    n1.set_delay(Duration::from_millis(400));
    rig.create("slow1", OWNER, SPEC).await.unwrap();
    rig.wait_status("slow1", "building").await;
    let e = action_error(mkdir_snap(&rig, "slow1", "s1", OWNER).await);
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    n1.set_delay(Duration::ZERO);
    rig.wait_status("slow1", "running").await;
    assert_eq!(n1.calls(Call::CreateSnapshot), 0);

    // A failed build.
    n1.fail_nth(Call::DefineAndStart, 1);
    rig.create("bad1", OWNER, SPEC).await.unwrap();
    rig.wait_status("bad1", "failed: ").await;
    let e = action_error(mkdir_snap(&rig, "bad1", "s1", OWNER).await);
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    assert_eq!(n1.calls(Call::CreateSnapshot), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_leaves_no_snapshot_and_says_why() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    n1.fail_nth(Call::CreateSnapshot, 1);
    let e = action_error(mkdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert!(matches!(e, ActionError::Backend(_)), "{e:?}");
    assert!(n1.snapshots("vm1").is_empty());
    assert!(names_in(&rig, snapshots_dir(&rig, "vm1")).is_empty());
    let err = error_file(&rig, "vm1");
    assert!(
        err.contains("snapshot s1") && err.contains("injected"),
        "{err}"
    );
    // The same name works once the node does.
    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();

    n1.fail_nth(Call::DeleteSnapshot, 1);
    let e = action_error(rmdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert!(matches!(e, ActionError::Backend(_)), "{e:?}");
    assert_eq!(n1.snapshots("vm1"), ["s1"]);
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);

    n1.fail_nth(Call::RevertSnapshot, 1);
    rig.write("instances/vm1/ctl", OWNER, "destroy")
        .await
        .unwrap();
    let e = action_error(rig.write("instances/vm1/ctl", OWNER, "revert s1").await);
    assert!(matches!(e, ActionError::Backend(_)), "{e:?}");
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");

    // An offline node: EIO, and nothing asked of it.
    n1.set_down(true);
    rig.wait_status("vm1", "unknown: node n1 is offline").await;
    let before = n1.calls(Call::CreateSnapshot);
    let e = action_error(mkdir_snap(&rig, "vm1", "s2", OWNER).await);
    assert!(matches!(e, ActionError::Backend(_)), "{e:?}");
    assert_eq!(n1.calls(Call::CreateSnapshot), before);
}

/// Makes vm1's disks network disks (NFS, as on the shared storage) and waits for the picture.
async fn on_nfs(rig: &Rig, name: &str) {
    rig.node("n1").set_network_disks(name);
    rig.wait_for("the network disk", |r| {
        r.cluster.view().instances[name]
            .domain
            .as_ref()
            .is_some_and(|d| d.devices.disks.iter().any(|d| d.network))
    })
    .await;
}

fn eopnotsupp(r: Result<(), TreeError>) -> String {
    assert_eq!(
        crate::fs::errno(r.as_ref().unwrap_err()),
        fuser::Errno::from_i32(libc::EOPNOTSUPP)
    );
    match action_error(r) {
        ActionError::Unsupported(why) => why,
        e => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_disks_are_snapshotted_while_the_domain_runs() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    on_nfs(&rig, "vm1").await;
    // Running: taken, reverted to and deleted by the node as on a local disk.
    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();
    mkdir_snap(&rig, "vm1", "s2", OWNER).await.unwrap();
    rig.write("instances/vm1/ctl", OWNER, "revert s1\n")
        .await
        .unwrap();
    assert_eq!(info(&rig, "vm1", "s1")["current"], true);
    rmdir_snap(&rig, "vm1", "s2", OWNER).await.unwrap();
    assert_eq!(n1.snapshots("vm1"), ["s1"]);
    assert_eq!(error_file(&rig, "vm1"), "");

    // Shut off: taking and deleting are refused with the reason, nothing asked of the node.
    rig.write("instances/vm1/ctl", OWNER, "destroy\n")
        .await
        .unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    let (creates, deletes) = (
        n1.calls(Call::CreateSnapshot),
        n1.calls(Call::DeleteSnapshot),
    );
    let why = eopnotsupp(mkdir_snap(&rig, "vm1", "s3", OWNER).await);
    assert_eq!(
        why,
        "instance vm1 is shutoff and its disk vda is a network disk (nfs on nfs1): \
         libvirt takes snapshots of a network disk only while the domain runs (QEMU's \
         internal snapshots); start it first"
    );
    assert_eq!(error_file(&rig, "vm1"), format!("{why}\n"));
    let why = eopnotsupp(rmdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert!(why.contains("libvirt deletes snapshots"), "{why}");
    assert_eq!(n1.calls(Call::CreateSnapshot), creates);
    assert_eq!(n1.calls(Call::DeleteSnapshot), deletes);
    assert_eq!(n1.snapshots("vm1"), ["s1"]);
    assert_eq!(names_in(&rig, snapshots_dir(&rig, "vm1")), ["s1"]);
    // An unknown name is still ENOENT for rmdir, and a taken one EEXIST for mkdir.
    let e = action_error(rmdir_snap(&rig, "vm1", "nope", OWNER).await);
    assert!(matches!(e, ActionError::NotFound(_)), "{e:?}");
    let e = action_error(mkdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert!(matches!(e, ActionError::Exists(_)), "{e:?}");

    // A revert to a snapshot taken running starts it again from there; then all works.
    rig.write("instances/vm1/ctl", OWNER, "revert s1\n")
        .await
        .unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "running");
    rmdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();
    assert!(n1.snapshots("vm1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_disk_is_not_reverted_to_a_snapshot_taken_shut_off() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    // Taken shut off while the disk was local; the disk is on the share since.
    rig.write("instances/vm1/ctl", OWNER, "destroy\n")
        .await
        .unwrap();
    mkdir_snap(&rig, "vm1", "down", OWNER).await.unwrap();
    rig.write("instances/vm1/ctl", OWNER, "start\n")
        .await
        .unwrap();
    on_nfs(&rig, "vm1").await;
    // libvirt would stop the running domain and then fail: kvmfs refuses first.
    let why = eopnotsupp(rig.write("instances/vm1/ctl", OWNER, "revert down\n").await);
    assert_eq!(
        why,
        "instance vm1: snapshot down was taken shutoff and its disk vda is a network disk \
         (nfs on nfs1): libvirt reverts a network disk only to a snapshot taken while the \
         domain ran"
    );
    assert_eq!(n1.calls(Call::RevertSnapshot), 0);
    assert_eq!(rig.status("vm1").unwrap(), "running");
    // Deleting it is fine while the domain runs.
    rmdir_snap(&rig, "vm1", "down", OWNER).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_disk_whose_domain_stopped_unseen_is_refused_with_the_reason() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    on_nfs(&rig, "vm1").await;
    // The picture says running; the node knows better and refuses as libvirt does.
    n1.set_domain_state_silently("vm1", DomainState::Shutoff);
    let why = eopnotsupp(mkdir_snap(&rig, "vm1", "s1", OWNER).await);
    assert!(
        why.starts_with("instance vm1 is shutoff and its disk vda"),
        "{why}"
    );
    assert_eq!(n1.calls(Call::CreateSnapshot), 1);
    assert!(n1.snapshots("vm1").is_empty());
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_snapshots_is_deleted_whole_and_rm_r_works() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    mkdir_snap(&rig, "vm1", "s1", OWNER).await.unwrap();
    mkdir_snap(&rig, "vm1", "s2", OWNER).await.unwrap();
    // `rm -r` empties `snapshots` (each rmdir deletes one), removes the folder (which
    // changes nothing), then removes the instance.
    let snaps = snapshots_dir(&rig, "vm1");
    rig.tree
        .rmdir(snaps, OsStr::new("s1"), OWNER)
        .await
        .unwrap();
    let folder = rig.ino("instances/vm1").unwrap();
    rig.tree
        .rmdir(folder, OsStr::new("snapshots"), OWNER)
        .await
        .unwrap();
    let e = action_error(rig.tree.rmdir(folder, OsStr::new("snapshots"), OTHER).await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    assert_eq!(n1.snapshots("vm1"), ["s2"]);
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(n1.domains().is_empty());
    assert_eq!(n1.volumes(), ["debian-12.qcow2"]);
    assert!(rig.status("vm1").is_none());
    // Old snapshot inodes are stale, the name is free, and a new incarnation has none.
    assert!(matches!(rig.tree.getattr(snaps), Err(TreeError::Stale)));
    built(&rig, "vm1").await;
    assert!(names_in(&rig, snapshots_dir(&rig, "vm1")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_instances_have_no_snapshots_folder() {
    let n1 = crate::hv::mem::MemNode::new("n1", 4, 8192);
    n1.add_foreign_domain("legacy", 1, 512, true);
    let rig = Rig::on_nodes(vec![n1], crate::testing::TIMING, "").await;
    rig.wait_status("legacy", "running").await;
    assert!(matches!(
        rig.ino("instances/legacy/snapshots"),
        Err(TreeError::NotFound)
    ));
    assert!(!names_in(&rig, rig.ino("instances/legacy").unwrap()).contains(&"snapshots".into()));
}

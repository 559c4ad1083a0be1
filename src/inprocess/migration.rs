//! Moving instances between nodes (docs/SEMANTICS.md, "Moving an instance", "Draining a
//! node"): `echo NODE > instances/<i>/node`, live or by definition, with the row, the
//! addresses and the snapshots following; every refusal, each leaving the instance where
//! it was; a move that fails; a crash at every step, settled by the reconciliation into one
//! domain on one node; and `echo drain > nodes/<n>/ctl`.

use std::sync::Arc;

use super::{action_error, error_file};
use crate::cluster::actions::ActionError;
use crate::db::{InstanceRecord, InstanceState};
use crate::hv::mem::{Call, MemNode};
use crate::hv::{DomainState, NodeBackend};
use crate::storage::mem::MemShare;
use crate::testing::Rig;

const IMAGE: &str = "debian-12.qcow2";
const OWNER: u32 = 1000;
const OTHER: u32 = 1001;
const ROOT: u32 = 0;

fn spec_on(node: &str) -> String {
    format!(r#"{{"vcpus":1,"ram_mb":512,"disk_gb":1,"node":"{node}"}}"#)
}

/// Two nodes whose pools are one shared storage, and `vm1` running on n1.
async fn two_nodes_with_vm1() -> Rig {
    let rig = Rig::with_shared_pools(&[("n1", 4, 8192), ("n2", 4, 8192)]).await;
    rig.create("vm1", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm1", "running").await;
    rig
}

async fn row(rig: &Rig, name: &str) -> InstanceRecord {
    rig.cluster.db().get_vm(name).await.unwrap().unwrap()
}

fn domains_named(node: &MemNode, name: &str) -> Vec<DomainState> {
    node.domains()
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, s)| s)
        .collect()
}

/// Where domain `name` is: (node, state) for every copy on the rig's nodes.
fn copies(rig: &Rig, name: &str) -> Vec<(String, DomainState)> {
    rig.nodes
        .iter()
        .flat_map(|n| {
            domains_named(n, name)
                .into_iter()
                .map(|s| (n.name().to_string(), s))
        })
        .collect()
}

async fn move_to(
    rig: &Rig,
    name: &str,
    uid: u32,
    node: &str,
) -> Result<(), crate::tree::TreeError> {
    rig.write(&format!("instances/{name}/node"), uid, &format!("{node}\n"))
        .await
}

/// Takes snapshot `name` of `vm1`, as its owner.
async fn snapshot(rig: &Rig, name: &str) {
    let ino = rig.ino("instances/vm1/snapshots").unwrap();
    rig.tree
        .mkdir(ino, std::ffi::OsStr::new(name), OWNER)
        .await
        .unwrap();
}

/// Builds `vm1` on n1 and moves it to n2, where it then runs, alone.
async fn built_and_moved(rig: &Rig) {
    rig.create("vm1", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm1", "running").await;
    move_to(rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(
        copies(rig, "vm1"),
        [("n2".to_string(), DomainState::Running)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_moves_live_with_its_row_addresses_and_snapshots() {
    let rig = two_nodes_with_vm1().await;
    let ip = rig.read("instances/vm1/ip").unwrap();
    snapshot(&rig, "s1").await;
    snapshot(&rig, "s2").await;
    let attr = rig
        .tree
        .getattr(rig.ino("instances/vm1/node").unwrap())
        .unwrap();
    assert_eq!(attr.perm, 0o644, "the owner may write node");

    move_to(&rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(rig.read("instances/vm1/node").unwrap(), "n2\n");
    assert!(rig.status("vm1").unwrap().starts_with("running"));
    assert_eq!(
        copies(&rig, "vm1"),
        [("n2".to_string(), DomainState::Running)]
    );
    assert_eq!(
        rig.read("instances/vm1/ip").unwrap(),
        ip,
        "its address follows"
    );
    let r = row(&rig, "vm1").await;
    assert_eq!(
        (r.state, r.node.as_deref()),
        (InstanceState::Ready, Some("n2"))
    );
    assert!(r.migrate_to.is_none() && r.saved_snapshots.is_none() && r.error.is_none());
    // The snapshots are defined again on n2, with the same parent and the same current one.
    assert_eq!(rig.node("n2").snapshots("vm1"), ["s1", "s2"]);
    assert!(rig.node("n1").snapshots("vm1").is_empty());
    let info: serde_json::Value =
        serde_json::from_str(&rig.read("instances/vm1/snapshots/s2/info.json").unwrap()).unwrap();
    assert_eq!(info["parent"], "s1");
    assert_eq!(info["current"], true);
    assert_eq!(error_file(&rig, "vm1"), "");
    // Its node shows it, the old one no longer does.
    assert!(rig.ino("nodes/n2/instances/vm1").is_ok());
    assert!(rig.ino("nodes/n1/instances/vm1").is_err());

    // Writing the node it is on does nothing.
    let moves = rig.node("n2").calls(Call::Migrate);
    move_to(&rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(rig.node("n2").calls(Call::Migrate), moves);
    // And back, by root.
    move_to(&rig, "vm1", ROOT, "n1").await.unwrap();
    assert_eq!(
        copies(&rig, "vm1"),
        [("n1".to_string(), DomainState::Running)]
    );
    assert_eq!(rig.node("n1").snapshots("vm1"), ["s1", "s2"]);
    // rmdir after the moves removes everything it made.
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(copies(&rig, "vm1").is_empty());
    for n in ["n1", "n2"] {
        assert!(!rig.node(n).volumes().iter().any(|v| v.starts_with("vm1.")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_the_shared_storage_move_and_are_removed_from_it() {
    let share = Arc::new(MemShare::with_files(&[IMAGE]));
    let rig = Rig::with_share(&[("n1", 4, 8192), ("n2", 4, 8192)], share.clone()).await;
    built_and_moved(&rig).await;
    assert_eq!(share.files(), [IMAGE, "vm1.disk.qcow2", "vm1.seed.iso"]);
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert_eq!(share.files(), [IMAGE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_moves_by_its_definition() {
    let rig = two_nodes_with_vm1().await;
    rig.write("instances/vm1/ctl", OWNER, "destroy")
        .await
        .unwrap();
    rig.wait_status("vm1", "shutoff").await;
    move_to(&rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(
        copies(&rig, "vm1"),
        [("n2".to_string(), DomainState::Shutoff)]
    );
    assert_eq!(rig.read("instances/vm1/node").unwrap(), "n2\n");
    rig.write("instances/vm1/ctl", OWNER, "start")
        .await
        .unwrap();
    rig.wait_status("vm1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_errno_and_reason_and_leaves_it_where_it_was() {
    let share = Arc::new(MemShare::with_files(&[IMAGE]));
    let rig = Rig::with_share(
        &[
            ("n1", 4, 8192),
            ("n2", 4, 8192),
            ("small", 1, 256),
            ("n4", 4, 8192),
        ],
        share,
    )
    .await;
    rig.create("vm1", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm1", "running").await;
    let before = row(&rig, "vm1").await;

    // Not the owner: refused by the open itself.
    let e = action_error(move_to(&rig, "vm1", OTHER, "n2").await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    for (text, errno, why) in [
        ("nowhere", libc::EINVAL, "node nowhere is not configured"),
        ("Bad Name", libc::EINVAL, "node:"),
        ("small", libc::ENOSPC, "small has"),
    ] {
        let e = action_error(move_to(&rig, "vm1", OWNER, text).await);
        assert_eq!(e.errno(), errno, "{text}: {e}");
        assert!(e.to_string().contains(why), "{text}: {e}");
        assert!(error_file(&rig, "vm1").contains(why), "{text}");
    }
    rig.node("n4").set_down(true);
    rig.wait_for("n4 offline", |r| {
        r.read("nodes/n4/status").unwrap().starts_with("offline")
    })
    .await;
    let e = action_error(move_to(&rig, "vm1", OWNER, "n4").await);
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(error_file(&rig, "vm1").contains("node n4 is offline"));
    rig.write("nodes/n2/ctl", ROOT, "drain").await.unwrap();
    let e = action_error(move_to(&rig, "vm1", OWNER, "n2").await);
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(e.to_string().contains("drained"), "{e}");

    // Nothing moved, nothing was recorded but the errors.
    let after = row(&rig, "vm1").await;
    assert_eq!(
        (after.state, after.node.clone(), after.migrate_to.clone()),
        (before.state, before.node.clone(), None)
    );
    assert_eq!(
        copies(&rig, "vm1"),
        [("n1".to_string(), DomainState::Running)]
    );
    assert_eq!(rig.node("n1").calls(Call::Migrate), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_in_a_node_pool_move_only_between_netfs_pools_of_one_source_or_declared_shared() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.create("vm1", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm1", "running").await;
    let e = action_error(move_to(&rig, "vm1", OWNER, "n2").await);
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}");
    assert!(e.to_string().contains("own pool"), "{e}");

    // netfs pools of different sources are not one storage; of the same source they are.
    rig.node("n1").set_pool_source(Some("storage:/cloud"));
    rig.node("n2").set_pool_source(Some("storage:/other"));
    rig.wait_for("the pools' sources", |r| {
        r.read("nodes/n2/info.json")
            .is_ok_and(|i| i.contains("storage:/other"))
    })
    .await;
    let e = action_error(move_to(&rig, "vm1", OWNER, "n2").await);
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}");
    rig.node("n2").set_pool_source(Some("storage:/cloud"));
    rig.wait_for("the same source", |r| {
        r.read("nodes/n2/info.json")
            .is_ok_and(|i| i.contains("storage:/cloud"))
    })
    .await;
    move_to(&rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(
        copies(&rig, "vm1"),
        [("n2".to_string(), DomainState::Running)]
    );
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(
        !rig.node("n1")
            .volumes()
            .iter()
            .any(|v| v.starts_with("vm1."))
    );

    let rig = Rig::with_shared_pools(&[("n1", 4, 8192), ("n2", 4, 8192)]).await;
    built_and_moved(&rig).await;
    // Its volumes were made through n1; rmdir through n2 finds them in the shared pool.
    rig.rmdir("vm1", OWNER).await.unwrap();
    for n in ["n1", "n2"] {
        assert!(
            !rig.node(n).volumes().iter().any(|v| v.starts_with("vm1.")),
            "{n}: {:?}",
            rig.node(n).volumes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_leaves_it_running_where_it_was_with_its_snapshots() {
    let rig = two_nodes_with_vm1().await;
    snapshot(&rig, "s1").await;
    rig.node("n1").fail_nth(Call::Migrate, 1);
    let e = action_error(move_to(&rig, "vm1", OWNER, "n2").await);
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_eq!(
        copies(&rig, "vm1"),
        [("n1".to_string(), DomainState::Running)]
    );
    assert_eq!(rig.node("n1").snapshots("vm1"), ["s1"]);
    assert_eq!(rig.read("instances/vm1/node").unwrap(), "n1\n");
    assert!(rig.status("vm1").unwrap().starts_with("running"));
    let err = error_file(&rig, "vm1");
    assert!(
        err.contains("migration to n2 failed") && err.contains("stays on n1"),
        "{err}"
    );
    let r = row(&rig, "vm1").await;
    assert_eq!(
        (r.state, r.node.as_deref()),
        (InstanceState::Ready, Some("n1"))
    );
    // A later move goes through and clears the error.
    move_to(&rig, "vm1", OWNER, "n2").await.unwrap();
    assert_eq!(error_file(&rig, "vm1"), "");
}

/// The states a daemon killed during a move leaves, each settled by the reconciliation into
/// exactly one domain, on the node the row names, with its snapshots there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_of_a_move_ends_with_one_domain_on_the_node_the_row_names() {
    #[derive(Debug, Clone, Copy)]
    enum Cut {
        /// Recorded; nothing done on a node.
        Recorded,
        /// Snapshots stored in the row and taken off the source.
        SnapshotsForgotten,
        /// The target has an incoming copy (paused); the source runs.
        Incoming,
        /// The target runs; the source still has its copy (paused after the last copy).
        BothAfterSwitch,
        /// Moved; the snapshots not yet defined again.
        Moved,
    }
    for cut in [
        Cut::Recorded,
        Cut::SnapshotsForgotten,
        Cut::Incoming,
        Cut::BothAfterSwitch,
        Cut::Moved,
    ] {
        let rig = two_nodes_with_vm1().await;
        snapshot(&rig, "s1").await;
        let (n1, n2) = (rig.node("n1").clone(), rig.node("n2").clone());
        let inc = row(&rig, "vm1").await.incarnation;
        {
            let _claim = rig.cluster.claim("vm1").unwrap();
            let db = rig.cluster.db();
            db.begin_migration::<crate::db::DbError>("vm1", &inc, "n1", "dead", &[], |_| {
                Ok("n2".into())
            })
            .await
            .unwrap();
            if !matches!(cut, Cut::Recorded) {
                let saved = n1.saved_snapshots("vm1").unwrap();
                let json = serde_json::to_string(&saved).unwrap();
                db.set_migration_step("vm1", "saving snapshots", Some(&json))
                    .await
                    .unwrap();
                n1.forget_snapshots("vm1").unwrap();
            }
            match cut {
                Cut::Recorded | Cut::SnapshotsForgotten => {}
                Cut::Incoming => n1.copy_domain_to("vm1", &n2, DomainState::Paused),
                Cut::BothAfterSwitch => {
                    n1.copy_domain_to("vm1", &n2, DomainState::Running);
                    n1.set_domain_state("vm1", DomainState::Paused);
                }
                Cut::Moved => {
                    n1.copy_domain_to("vm1", &n2, DomainState::Running);
                    n1.remove_domain("vm1").unwrap();
                }
            }
            rig.cluster.refresh_row("vm1").await;
        }
        let arrived = matches!(cut, Cut::BothAfterSwitch | Cut::Moved);
        let want = if arrived { "n2" } else { "n1" };
        rig.wait_for(&format!("{cut:?}: settled"), |r| {
            r.status("vm1").is_some_and(|s| !s.starts_with("migrating"))
        })
        .await;
        let r = row(&rig, "vm1").await;
        assert_eq!(
            (r.state, r.node.as_deref()),
            (InstanceState::Ready, Some(want)),
            "{cut:?}"
        );
        assert!(
            r.migrate_to.is_none() && r.saved_snapshots.is_none(),
            "{cut:?}"
        );
        let kept = copies(&rig, "vm1");
        assert_eq!(kept.len(), 1, "{cut:?}: {kept:?}");
        assert_eq!(kept[0].0, want, "{cut:?}");
        assert_eq!(rig.node(want).snapshots("vm1"), ["s1"], "{cut:?}");
        if !arrived {
            let err = error_file(&rig, "vm1");
            assert!(err.contains("stays on n1"), "{cut:?}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_instance_off_and_keeps_placement_away_until_undrained() {
    let share = Arc::new(MemShare::with_files(&[IMAGE]));
    let rig = Rig::with_share(&[("n1", 4, 8192), ("n2", 4, 8192), ("n3", 4, 8192)], share).await;
    for i in 0..3 {
        rig.create(&format!("vm{i}"), OWNER, &spec_on("n1"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        rig.wait_status(&format!("vm{i}"), "running").await;
    }
    // Only root drains.
    let e = action_error(rig.write("nodes/n1/ctl", OWNER, "drain").await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    let e = action_error(rig.write("nodes/n1/ctl", ROOT, "explode").await);
    assert_eq!(e.errno(), libc::EINVAL);
    rig.write("nodes/n1/ctl", ROOT, "drain").await.unwrap();
    assert_eq!(rig.read("nodes/n1/status").unwrap(), "online, drained\n");
    rig.wait_for("n1 empty", |r| {
        (0..3).all(|i| {
            r.read(&format!("instances/vm{i}/node"))
                .is_ok_and(|n| n.trim() != "n1")
        })
    })
    .await;
    for i in 0..3 {
        let name = format!("vm{i}");
        let kept = copies(&rig, &name);
        assert_eq!(kept.len(), 1, "{name}: {kept:?}");
        assert_ne!(kept[0].0, "n1");
        assert!(rig.status(&name).unwrap().starts_with("running"));
    }
    // Placement passes the drained node by, even when asked for it.
    let e = action_error(rig.create("vm9", OWNER, &spec_on("n1")).await);
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(e.to_string().contains("n1 is drained"), "{e}");
    rig.rmdir("vm9", OWNER).await.unwrap();
    rig.write("nodes/n1/ctl", ROOT, "undrain").await.unwrap();
    assert_eq!(rig.read("nodes/n1/status").unwrap(), "online\n");
    rig.create("vm9", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm9", "running").await;
}

/// A migration past `migrate_timeout_ms` is aborted, and still waited for before both nodes
/// are asked where the domain is: settled midway, the copy still on the source would be
/// taken for where it stayed while the call went on to move it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_past_its_bound_is_aborted_and_settled_only_once_libvirt_returns() {
    let timing = format!("{}migrate_timeout_ms = 300\n", crate::testing::TIMING);
    let rig = Rig::with_shared_pools_and_timing(&[("n1", 4, 8192), ("n2", 4, 8192)], &timing).await;
    rig.create("vm1", OWNER, &spec_on("n1")).await.unwrap();
    rig.wait_status("vm1", "running").await;
    let n1 = rig.node("n1");
    // The in-memory node ignores the abort: its migration goes on and moves the domain.
    n1.set_migrate_delay(std::time::Duration::from_millis(1500));
    let calls = n1.calls(Call::Migrate);
    let _ = move_to(&rig, "vm1", OWNER, "n2").await;
    rig.wait_for("the move to end", |r| {
        r.status("vm1").is_some_and(|s| !s.starts_with("migrating"))
    })
    .await;
    assert!(
        n1.calls(Call::Migrate) >= calls + 2,
        "the migration was aborted"
    );
    let r = row(&rig, "vm1").await;
    assert_eq!(
        (r.state, r.node.as_deref()),
        (InstanceState::Ready, Some("n2"))
    );
    assert_eq!(
        copies(&rig, "vm1"),
        [("n2".to_string(), DomainState::Running)]
    );
}

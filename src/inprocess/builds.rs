//! Builds and what a failed one leaves (nothing), `ctl` by domain state, `rmdir` by instance
//! state and node reachability, address pools, and `EINPROGRESS` (docs/SEMANTICS.md:
//! "Build", "Addresses", "ctl", "rmdir", "Errors of the lifecycle").

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{action_error, error_file};
use crate::cluster::actions::ActionError;
use crate::db::InstanceState;
use crate::hv::DomainState;
use crate::hv::mem::Call;
use crate::testing::Rig;
use crate::tree::TreeError;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
const IMAGE: &str = "debian-12.qcow2";
const OWNER: u32 = 1000;

/// Builds `name` (owned by `OWNER`) on the rig and waits until it runs.
async fn built(rig: &Rig, name: &str) {
    rig.create(name, OWNER, SPEC).await.unwrap();
    rig.wait_status(name, "running").await;
}

/// Writes one command to `ctl` as `uid`.
async fn ctl(rig: &Rig, name: &str, uid: u32, word: &str) -> Result<(), TreeError> {
    rig.write(&format!("instances/{name}/ctl"), uid, word).await
}

/// The addresses the database holds for `name`: (pool, address).
async fn addresses_of(rig: &Rig, name: &str) -> Vec<(String, String)> {
    rig.cluster
        .db()
        .list_ip_allocations()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, _, vm)| vm == name)
        .map(|(pool, addr, _)| (pool, addr))
        .collect()
}

fn domain_state(rig: &Rig, node: &str, name: &str) -> Option<DomainState> {
    rig.node(node)
        .domains()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

fn volumes_of(rig: &Rig, node: &str, name: &str) -> Vec<String> {
    rig.node(node)
        .volumes()
        .into_iter()
        .filter(|v| v.starts_with(&format!("{name}.")))
        .collect()
}

async fn wait_node(rig: &Rig, node: &str, prefix: &str) {
    let path = format!("nodes/{node}/status");
    rig.wait_for(&format!("{node} {prefix}"), |r| {
        r.read(&path).unwrap_or_default().starts_with(prefix)
    })
    .await;
}

/// Waits for instance `name`'s build to fail and checks the documented aftermath: status
/// and `error` give `reason`, nothing of it is left on node n1, its addresses are released,
/// its node, addresses and keys are cleared (no `ssh_key` file); then a new `spec.json`
/// builds it.
async fn failed_and_clean_then_rebuilds(rig: &Rig, name: &str, reason: &str) {
    let status = rig.wait_status(name, "failed: ").await;
    assert_eq!(status, format!("failed: {reason}"));
    assert_eq!(error_file(rig, name), format!("{reason}\n"));
    assert_eq!(domain_state(rig, "n1", name), None, "domain left behind");
    assert_eq!(
        rig.node("n1").volumes(),
        vec![IMAGE.to_string()],
        "volumes left behind"
    );
    assert!(addresses_of(rig, name).await.is_empty(), "addresses held");
    let row = rig.cluster.db().get_vm(name).await.unwrap().expect("row");
    assert_eq!(row.state, InstanceState::Failed);
    assert_eq!(row.error.as_deref(), Some(reason));
    assert_eq!(row.node, None);
    assert_eq!((row.ip_eth0, row.ip_eth1), (None, None));
    assert!(row.sealed_key.is_none(), "private key kept");
    assert!(row.made.is_empty(), "made: {}", row.made);
    assert_eq!(rig.read(&format!("instances/{name}/node")).unwrap(), "");
    assert_eq!(rig.read(&format!("instances/{name}/ip")).unwrap(), "");
    assert!(matches!(
        rig.read(&format!("instances/{name}/ssh_key")),
        Err(TreeError::NotFound)
    ));
    // spec.json shows the failed spec and takes a new one.
    assert_eq!(
        rig.read(&format!("instances/{name}/spec.json")).unwrap(),
        SPEC
    );
    rig.write(&format!("instances/{name}/spec.json"), OWNER, SPEC)
        .await
        .unwrap();
    rig.wait_status(name, "running").await;
    assert_eq!(domain_state(rig, "n1", name), Some(DomainState::Running));
    assert_eq!(
        volumes_of(rig, "n1", name),
        vec![format!("{name}.disk.qcow2"), format!("{name}.seed.iso")]
    );
    assert_eq!(
        rig.read(&format!("instances/{name}/ip")).unwrap(),
        "192.168.122.10\n"
    );
}

/// Makes instance `name` on n1 with its build failing at the `nth` call of `call`, and
/// waits until it reads `failed: …`.
async fn build_failing_at(rig: &Rig, name: &str, call: Call, nth: u32) {
    rig.node("n1").fail_nth(call, nth);
    rig.create(name, OWNER, SPEC).await.unwrap();
    rig.wait_status(name, "failed: ").await;
}

// ---------------------------------------------------------------------------------------
// A build failing at each step

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_to_find_the_image_path_leaves_nothing() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    n1.fail_nth(Call::VolumePath, 1);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    failed_and_clean_then_rebuilds(&rig, "vm1", "node n1: VolumePath failed (injected)").await;
    // The failing build made nothing: it never reached the volume calls.
    assert_eq!(
        n1.calls(Call::CreateVolume),
        2,
        "only the rebuild's two volumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_to_create_the_disk_leaves_nothing() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    n1.fail_nth(Call::CreateVolume, 1);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    failed_and_clean_then_rebuilds(&rig, "vm1", "node n1: CreateVolume failed (injected)").await;
    assert_eq!(
        n1.calls(Call::DefineAndStart),
        1,
        "only the rebuild's domain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_to_create_the_seed_removes_the_disk() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    build_failing_at(&rig, "vm1", Call::CreateVolume, 2).await;
    // The disk was made, then deleted by the undo.
    assert!(n1.calls(Call::DeleteVolume) >= 1);
    failed_and_clean_then_rebuilds(&rig, "vm1", "node n1: CreateVolume failed (injected)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_to_upload_the_seed_removes_both_volumes() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.node("n1").fail_nth(Call::UploadVolume, 1);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    failed_and_clean_then_rebuilds(&rig, "vm1", "node n1: UploadVolume failed (injected)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_to_start_the_domain_removes_both_volumes() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    build_failing_at(&rig, "vm1", Call::DefineAndStart, 1).await;
    assert_eq!(n1.calls(Call::DeleteVolume), 2, "disk and seed undone");
    failed_and_clean_then_rebuilds(&rig, "vm1", "node n1: DefineAndStart failed (injected)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_that_cannot_remove_a_part_keeps_it_recorded_until_it_is_removed() {
    // "Build", Failure: a part the undo cannot remove stays recorded on its node (`node`
    // still names it) and is removed before a new spec is placed; addresses and keys are
    // released at once.
    let rig = Rig::with_timing(
        &[("n1", 4, 8192)],
        "[timing]\nrefresh_ms = 50\nlibvirt_timeout_ms = 1000\nreconcile_ms = 600000\n",
        "",
    )
    .await;
    let n1 = rig.node("n1");
    n1.fail_nth(Call::DefineAndStart, 1);
    n1.fail_nth(Call::DeleteVolume, 1);
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("vm1", "failed: ").await;
    assert_eq!(status, "failed: node n1: DefineAndStart failed (injected)");
    assert_eq!(rig.read("instances/vm1/node").unwrap(), "n1\n");
    assert_eq!(rig.read("instances/vm1/ip").unwrap(), "");
    assert!(addresses_of(&rig, "vm1").await.is_empty());
    assert!(
        n1.volumes().contains(&"vm1.disk.qcow2".to_string()),
        "the part left"
    );
    rig.write("instances/vm1/spec.json", OWNER, SPEC)
        .await
        .unwrap();
    rig.wait_status("vm1", "running").await;
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.made.to_string(), "domain,disk,seed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_git_repository_fails_the_build_before_anything_is_made() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    let spec =
        r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"purpose":"web","git":"http://127.0.0.1:1/x.git"}"#;
    rig.create("site", OWNER, spec).await.unwrap();
    let status = rig.wait_status("site", "failed: ").await;
    let reason = "git repository http://127.0.0.1:1/x.git is not reachable: ";
    assert!(status.starts_with(&format!("failed: {reason}")), "{status}");
    assert!(error_file(&rig, "site").starts_with(reason));
    for call in [
        Call::VolumePath,
        Call::CreateVolume,
        Call::UploadVolume,
        Call::DefineAndStart,
    ] {
        assert_eq!(n1.calls(call), 0, "{call:?} made");
    }
    assert!(
        rig.cluster
            .db()
            .list_ip_allocations()
            .await
            .unwrap()
            .is_empty()
    );
    let row = rig.cluster.db().get_vm("site").await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.node, row.ip_eth0),
        (InstanceState::Failed, None, None)
    );
    assert_eq!(rig.read("instances/site/spec.json").unwrap(), spec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_shows_its_steps_in_order_and_ip_and_key_from_generating_key() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.node("n1").set_delay(Duration::from_millis(300));
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    let order = [
        "building: placed",
        "building: allocating addresses",
        "building: generating key",
        "building: creating disk",
        "building: writing seed",
        "building: starting",
        "running",
    ];
    let mut seen: Vec<String> = Vec::new();
    let mut ip_while_creating_disk = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = rig.status("vm1").unwrap_or_default();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "building: creating disk" && ip_while_creating_disk.is_none() {
            ip_while_creating_disk = Some(rig.read("instances/vm1/ip").unwrap());
            assert!(rig.ino("instances/vm1/ssh_key").is_ok(), "no ssh_key yet");
        }
        if s == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("unexpected status {s:?} in {seen:?}"))
        })
        .collect();
    assert!(positions.is_sorted(), "out of order: {seen:?}");
    // The slow steps (each waits on the node) are seen.
    for step in &order[2..] {
        assert!(
            seen.iter().any(|s| s == step),
            "{step} not seen in {seen:?}"
        );
    }
    assert_eq!(ip_while_creating_disk.as_deref(), Some("192.168.122.10\n"));
}

// ---------------------------------------------------------------------------------------
// ctl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_on_a_running_domain_refuses_start_and_takes_reboot_and_stop() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;

    let e = action_error(ctl(&rig, "vm1", OWNER, "start\n").await);
    assert_eq!(
        e,
        ActionError::Busy("instance vm1 is already running".into())
    );
    assert_eq!(error_file(&rig, "vm1"), "instance vm1 is already running\n");
    assert_eq!(n1.calls(Call::DomainOp), 0);

    ctl(&rig, "vm1", OWNER, "reboot\n").await.unwrap();
    assert_eq!(n1.calls(Call::DomainOp), 1);
    assert_eq!(rig.status("vm1").unwrap(), "running");

    ctl(&rig, "vm1", OWNER, "stop\n").await.unwrap();
    // The domain is re-read before the write returns.
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Shutoff));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_on_a_shutoff_domain_refuses_stop_reboot_destroy_and_takes_start() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    n1.set_domain_state("vm1", DomainState::Shutoff);
    rig.wait_status("vm1", "shutoff").await;

    for (word, text) in [
        ("stop", "instance vm1 is shutoff, not running"),
        ("reboot", "instance vm1 is shutoff, not running"),
        ("destroy", "instance vm1 is not running"),
    ] {
        let e = action_error(ctl(&rig, "vm1", OWNER, word).await);
        assert_eq!(e, ActionError::Busy(text.into()), "{word}");
        assert_eq!(error_file(&rig, "vm1"), format!("{text}\n"), "{word}");
    }
    assert_eq!(n1.calls(Call::DomainOp), 0);
    ctl(&rig, "vm1", OWNER, "start").await.unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "running");
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_destroy_powers_off_a_running_domain() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    built(&rig, "vm1").await;
    ctl(&rig, "vm1", OWNER, "  destroy \n").await.unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Shutoff));
    // Still a built instance: its row, volumes and address stay.
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.state, InstanceState::Ready);
    assert_eq!(volumes_of(&rig, "n1", "vm1").len(), 2);
    assert_eq!(addresses_of(&rig, "vm1").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_on_a_paused_domain_takes_only_destroy() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    n1.set_domain_state("vm1", DomainState::Paused);
    rig.wait_status("vm1", "paused").await;
    for (word, text) in [
        ("start", "instance vm1 is already paused"),
        ("stop", "instance vm1 is paused, not running"),
        ("reboot", "instance vm1 is paused, not running"),
    ] {
        let e = action_error(ctl(&rig, "vm1", OWNER, word).await);
        assert_eq!(e, ActionError::Busy(text.into()), "{word}");
    }
    assert_eq!(n1.calls(Call::DomainOp), 0);
    ctl(&rig, "vm1", OWNER, "destroy").await.unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Shutoff));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_refuses_unknown_text_with_einval_and_records_it() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    for (text, quoted) in [
        ("explode\n", "explode"),
        ("start stop", "start stop"),
        ("\n", ""),
    ] {
        let e = action_error(ctl(&rig, "vm1", OWNER, text).await);
        let want = format!(
            "unknown command {quoted:?}; ctl takes one of: start stop destroy reboot revert NAME"
        );
        assert_eq!(e, ActionError::Invalid(want.clone()), "{text:?}");
        assert_eq!(error_file(&rig, "vm1"), format!("{want}\n"));
    }
    assert_eq!(n1.calls(Call::DomainOp), 0);
    assert_eq!(rig.status("vm1").unwrap(), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_and_rmdir_by_another_user_are_eacces_and_not_recorded() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    let e = action_error(ctl(&rig, "vm1", 2000, "stop").await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    let e = action_error(rig.rmdir("vm1", 2000).await);
    assert!(matches!(e, ActionError::NotOwner(_)), "{e:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(error_file(&rig, "vm1"), "");
    assert_eq!(n1.calls(Call::DomainOp), 0);
    assert_eq!(n1.calls(Call::RemoveDomain), 0);
    assert_eq!(rig.status("vm1").unwrap(), "running");
    // Root may.
    ctl(&rig, "vm1", 0, "stop").await.unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "shutoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_before_an_instance_is_ready_is_ebusy() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    rig.mkdir("draft1", OWNER).await.unwrap();
    let e = action_error(ctl(&rig, "draft1", OWNER, "start").await);
    assert_eq!(e, ActionError::Busy("instance draft1 is draft".into()));
    assert_eq!(error_file(&rig, "draft1"), "instance draft1 is draft\n");

    build_failing_at(&rig, "bad1", Call::DefineAndStart, 1).await;
    let e = action_error(ctl(&rig, "bad1", OWNER, "start").await);
    assert_eq!(e, ActionError::Busy("instance bad1 is failed".into()));

    n1.set_delay(Duration::from_millis(400));
    rig.create("slow1", OWNER, SPEC).await.unwrap();
    rig.wait_status("slow1", "building").await;
    let e = action_error(ctl(&rig, "slow1", OWNER, "start").await);
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    assert!(rig.status("slow1").unwrap().starts_with("building"));
    assert_eq!(n1.calls(Call::DomainOp), 0);
    n1.set_delay(Duration::ZERO);
    rig.wait_status("slow1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_on_an_offline_node_is_eio_and_recorded() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    n1.set_down(true);
    rig.wait_status("vm1", "unknown: node n1 is offline").await;
    let e = action_error(ctl(&rig, "vm1", OWNER, "stop").await);
    assert!(
        matches!(&e, ActionError::Backend(m) if m.contains("n1 is offline")),
        "{e:?}"
    );
    assert_eq!(error_file(&rig, "vm1"), format!("{e}\n"));
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Running));
    n1.set_down(false);
    rig.wait_status("vm1", "running").await;
    ctl(&rig, "vm1", OWNER, "stop").await.unwrap();
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Shutoff));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_through_a_file_opened_before_rmdir_is_estale_and_reaches_nothing() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    let ino = rig.ino("instances/vm1/ctl").unwrap();
    let (fh, _) = rig.tree.open(ino, true, OWNER).unwrap();
    rig.rmdir("vm1", OWNER).await.unwrap();
    built(&rig, "vm1").await; // the name made again: a new incarnation
    let r = rig.tree.write(fh, 0, b"destroy", OWNER).await;
    rig.tree.release(fh);
    assert!(
        matches!(
            r,
            Err(TreeError::Stale) | Err(TreeError::Action(ActionError::Stale(_)))
        ),
        "{r:?}"
    );
    assert_eq!(n1.calls(Call::DomainOp), 0);
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Running));
    assert_eq!(error_file(&rig, "vm1"), "");
}

// ---------------------------------------------------------------------------------------
// rmdir

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_deletes_drafts_and_failed_instances_without_touching_the_node() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    rig.mkdir("draft1", OWNER).await.unwrap();
    build_failing_at(&rig, "bad1", Call::DefineAndStart, 1).await;
    let (removes, deletes) = (n1.calls(Call::RemoveDomain), n1.calls(Call::DeleteVolume));

    rig.rmdir("draft1", OWNER).await.unwrap();
    rig.rmdir("bad1", OWNER).await.unwrap();
    for name in ["draft1", "bad1"] {
        assert!(rig.status(name).is_none(), "{name} still listed");
        assert!(rig.cluster.db().get_vm(name).await.unwrap().is_none());
        assert!(matches!(
            rig.ino(&format!("instances/{name}")),
            Err(TreeError::NotFound)
        ));
    }
    assert_eq!(n1.calls(Call::RemoveDomain), removes);
    assert_eq!(n1.calls(Call::DeleteVolume), deletes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_of_a_ready_instance_removes_everything_and_frees_the_name() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    built(&rig, "vm1").await;
    assert_eq!(
        addresses_of(&rig, "vm1").await,
        vec![("default".to_string(), "192.168.122.10".to_string())]
    );
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(rig.status("vm1").is_none());
    assert!(rig.cluster.db().get_vm("vm1").await.unwrap().is_none());
    assert_eq!(domain_state(&rig, "n1", "vm1"), None);
    assert_eq!(rig.node("n1").volumes(), vec![IMAGE.to_string()]);
    assert!(
        rig.cluster
            .db()
            .list_ip_allocations()
            .await
            .unwrap()
            .is_empty()
    );
    // Gone: a second rmdir is ENOENT; the name can be made again.
    let e = action_error(rig.rmdir("vm1", OWNER).await);
    assert!(matches!(e, ActionError::NotFound(_)), "{e:?}");
    rig.mkdir("vm1", OWNER).await.unwrap();
    assert_eq!(rig.status("vm1").unwrap(), "draft: waiting for spec.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_while_building_is_ebusy_and_the_build_finishes() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    n1.set_delay(Duration::from_millis(400));
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    rig.wait_status("vm1", "building").await;
    let e = action_error(rig.rmdir("vm1", OWNER).await);
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    assert!(rig.status("vm1").unwrap().starts_with("building"));
    assert_eq!(n1.calls(Call::RemoveDomain), 0);
    rig.wait_status("vm1", "running").await;
    n1.set_delay(Duration::ZERO);
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(rig.status("vm1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_through_another_daemon_while_building_is_ebusy() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    let other = rig.another_daemon("w2").await;
    n1.set_delay(Duration::from_millis(400));
    rig.create("vm1", OWNER, SPEC).await.unwrap();
    rig.wait_status("vm1", "building").await;
    let e = action_error(other.rmdir("vm1", OWNER).await);
    assert!(
        matches!(&e, ActionError::Busy(m) if m.contains("instance vm1 is being built")),
        "{e:?}"
    );
    rig.wait_status("vm1", "running").await;
    n1.set_delay(Duration::ZERO);
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Running));
    other.rmdir("vm1", OWNER).await.unwrap();
    assert!(rig.cluster.db().get_vm("vm1").await.unwrap().is_none());
    assert_eq!(domain_state(&rig, "n1", "vm1"), None);
    rig.wait_for("vm1 gone from the first mount", |r| {
        r.status("vm1").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_on_an_offline_node_is_eio_and_removes_nothing_until_it_answers() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    build_failing_at(&rig, "bad1", Call::DefineAndStart, 1).await;

    n1.set_down(true);
    wait_node(&rig, "n1", "offline").await;
    let e = action_error(rig.rmdir("vm1", OWNER).await);
    assert!(
        matches!(&e, ActionError::Backend(m) if m.contains("offline")),
        "{e:?}"
    );
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.state, InstanceState::Ready);
    assert_eq!(domain_state(&rig, "n1", "vm1"), Some(DomainState::Running));
    assert_eq!(volumes_of(&rig, "n1", "vm1").len(), 2);
    assert_eq!(addresses_of(&rig, "vm1").await.len(), 1);
    assert_eq!(n1.calls(Call::RemoveDomain), 0);
    assert_eq!(rig.status("vm1").unwrap(), "unknown: node n1 is offline");
    // A failed instance has nothing on the node: it goes even now.
    rig.rmdir("bad1", OWNER).await.unwrap();
    assert!(rig.cluster.db().get_vm("bad1").await.unwrap().is_none());

    n1.set_down(false);
    rig.wait_status("vm1", "running").await;
    rig.rmdir("vm1", OWNER).await.unwrap();
    assert!(rig.status("vm1").is_none());
    assert_eq!(domain_state(&rig, "n1", "vm1"), None);
    assert_eq!(rig.node("n1").volumes(), vec![IMAGE.to_string()]);
    assert!(addresses_of(&rig, "vm1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_rmdir_finishes_a_removal_the_node_cut_short() {
    let rig = Arc::new(Rig::new(&[("n1", 4, 8192)], "").await);
    let n1 = rig.node("n1").clone();
    built(&rig, "vm1").await;
    // The node goes down in the middle of the delete: once the domain is gone, the
    // remaining volume calls are refused.
    n1.set_delay(Duration::from_millis(400));
    let r2 = rig.clone();
    let first = tokio::spawn(async move { r2.rmdir("vm1", OWNER).await });
    rig.wait_for("the domain removed", |r| {
        domain_state(r, "n1", "vm1").is_none()
    })
    .await;
    n1.set_down(true);
    let e = action_error(first.await.unwrap());
    assert!(
        matches!(&e, ActionError::Backend(m)
            if m.contains("cannot remove its") && m.contains("seed")
                && m.contains("rmdir again")),
        "{e:?}"
    );
    // Left `deleting`, with what is left recorded; the addresses are still held.
    assert_eq!(rig.status("vm1").unwrap(), "deleting");
    let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
    assert_eq!(row.state, InstanceState::Deleting);
    assert!(row.made.seed && !row.made.domain, "made: {}", row.made);
    assert!(volumes_of(&rig, "n1", "vm1").contains(&"vm1.seed.iso".to_string()));
    assert_eq!(addresses_of(&rig, "vm1").await.len(), 1);

    // While the node is down, a repeated rmdir is EIO and changes nothing.
    wait_node(&rig, "n1", "offline").await;
    let e = action_error(rig.rmdir("vm1", OWNER).await);
    assert!(matches!(e, ActionError::Backend(_)), "{e:?}");
    assert_eq!(rig.status("vm1").unwrap(), "deleting");

    n1.set_delay(Duration::ZERO);
    n1.set_down(false);
    wait_node(&rig, "n1", "online").await;
    // The reconciliation may finish it first (then the name is gone: ENOENT).
    match rig.rmdir("vm1", OWNER).await {
        Ok(()) => {}
        Err(TreeError::Action(ActionError::NotFound(_))) => {}
        other => panic!("repeated rmdir: {other:?}"),
    }
    assert!(rig.status("vm1").is_none());
    assert!(rig.cluster.db().get_vm("vm1").await.unwrap().is_none());
    assert_eq!(n1.volumes(), vec![IMAGE.to_string()]);
    assert!(
        rig.cluster
            .db()
            .list_ip_allocations()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_on_a_slow_node_answers_einprogress_and_finishes_in_the_background() {
    let rig = Arc::new(Rig::new(&[("n1", 4, 8192)], "").await);
    let n1 = rig.node("n1").clone();
    built(&rig, "vm1").await;
    // Three removals and two re-reads at 0.8 s each: well past op_timeout (3 s), while
    // each call stays within the poll deadline (1 s).
    n1.set_delay(Duration::from_millis(800));
    let r2 = rig.clone();
    let started = tokio::time::Instant::now();
    let rmdir = tokio::spawn(async move { r2.rmdir("vm1", OWNER).await });
    rig.wait_status("vm1", "deleting").await;
    let r = rmdir.await.unwrap();
    assert!(matches!(r, Err(TreeError::InProgress)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(3750),
        "{:?}",
        started.elapsed()
    );
    rig.wait_for("vm1 gone", |r| r.status("vm1").is_none())
        .await;
    rig.wait_for("the operation ended", |r| r.cluster.claimed().is_empty())
        .await;
    n1.set_delay(Duration::ZERO);
    assert!(rig.cluster.db().get_vm("vm1").await.unwrap().is_none());
    assert_eq!(domain_state(&rig, "n1", "vm1"), None);
    assert_eq!(n1.volumes(), vec![IMAGE.to_string()]);
    assert!(
        rig.cluster
            .db()
            .list_ip_allocations()
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------
// Addresses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_get_distinct_addresses() {
    let rig = Arc::new(Rig::new(&[("n1", 16, 16384)], "").await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let r = rig.clone();
        tasks.spawn(async move { r.create(&format!("c{i}"), OWNER, SPEC).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    for i in 0..10 {
        rig.wait_status(&format!("c{i}"), "running").await;
    }
    let allocs = rig.cluster.db().list_ip_allocations().await.unwrap();
    assert_eq!(allocs.len(), 10, "{allocs:?}");
    let addresses: BTreeSet<String> = allocs.iter().map(|(_, a, _)| a.clone()).collect();
    let expected: BTreeSet<String> = (10..20).map(|n| format!("192.168.122.{n}")).collect();
    assert_eq!(addresses, expected);
    let owners: BTreeSet<&str> = allocs.iter().map(|(_, _, vm)| vm.as_str()).collect();
    assert_eq!(owners.len(), 10);
    for (pool, addr, vm) in &allocs {
        assert_eq!(pool, "default");
        assert_eq!(
            rig.read(&format!("instances/{vm}/ip")).unwrap(),
            format!("{addr}\n")
        );
        let row = rig.cluster.db().get_vm(vm).await.unwrap().unwrap();
        assert_eq!(row.ip_eth0.as_deref(), Some(addr.as_str()));
    }
}

const TWO_ADDRESSES: &str = "[[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
                             first = '192.168.122.10'\nlast = '192.168.122.11'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_the_build_until_an_address_is_freed() {
    let rig = Rig::new(&[("n1", 8, 8192)], TWO_ADDRESSES).await;
    built(&rig, "a1").await;
    built(&rig, "a2").await;
    rig.create("a3", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("a3", "failed: ").await;
    assert_eq!(status, "failed: address pool default is exhausted");
    assert_eq!(
        error_file(&rig, "a3"),
        "address pool default is exhausted\n"
    );
    assert!(volumes_of(&rig, "n1", "a3").is_empty());
    assert_eq!(domain_state(&rig, "n1", "a3"), None);
    assert!(addresses_of(&rig, "a3").await.is_empty());
    assert_eq!(
        rig.node("n1").calls(Call::CreateVolume),
        4,
        "only a1's and a2's"
    );

    rig.rmdir("a1", OWNER).await.unwrap();
    rig.write("instances/a3/spec.json", OWNER, SPEC)
        .await
        .unwrap();
    rig.wait_status("a3", "running").await;
    assert_eq!(rig.read("instances/a3/ip").unwrap(), "192.168.122.10\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_on_the_second_network_releases_the_first_address() {
    let extra = "[[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
                 first = '192.168.122.10'\nlast = '192.168.122.250'\n\
                 [[network]]\nname = 'overlay'\ncidr = '172.16.123.0/24'\n\
                 first = '172.16.123.10'\nlast = '172.16.123.10'\n";
    let rig = Rig::new(&[("n1", 8, 8192)], extra).await;
    built(&rig, "b1").await;
    assert_eq!(
        rig.read("instances/b1/ip").unwrap(),
        "192.168.122.10\n172.16.123.10\n"
    );
    let row = rig.cluster.db().get_vm("b1").await.unwrap().unwrap();
    assert_eq!(row.ip_eth1.as_deref(), Some("172.16.123.10"));

    rig.create("b2", OWNER, SPEC).await.unwrap();
    let status = rig.wait_status("b2", "failed: ").await;
    assert_eq!(status, "failed: address pool overlay is exhausted");
    assert!(addresses_of(&rig, "b2").await.is_empty());
    assert_eq!(
        rig.cluster.db().list_ip_allocations().await.unwrap().len(),
        2
    );
    assert_eq!(rig.read("instances/b2/ip").unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_addresses_are_taken_again_lowest_first() {
    let rig = Rig::new(&[("n1", 8, 8192)], "").await;
    built(&rig, "d1").await;
    built(&rig, "d2").await;
    built(&rig, "d3").await;
    assert_eq!(rig.read("instances/d2/ip").unwrap(), "192.168.122.11\n");
    rig.rmdir("d2", OWNER).await.unwrap();
    rig.rmdir("d1", OWNER).await.unwrap();
    built(&rig, "d4").await;
    built(&rig, "d5").await;
    built(&rig, "d6").await;
    for (name, ip) in [
        ("d3", "192.168.122.12"),
        ("d4", "192.168.122.10"),
        ("d5", "192.168.122.11"),
        ("d6", "192.168.122.13"),
    ] {
        assert_eq!(
            rig.read(&format!("instances/{name}/ip")).unwrap(),
            format!("{ip}\n"),
            "{name}"
        );
    }
}

/// A node that delivers domain events is polled for its own numbers only, and its domains
/// follow the events; it is listed whole again when its events connection changes (events
/// may have been missed), so a change no event told of shows then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_events_domains_follow_them_and_a_new_connection_lists_the_node_again() {
    let timing = format!("{}full_poll_ms = 600000\n", crate::testing::TIMING);
    let rig = Rig::with_timing(&[("n1", 4, 8192)], &timing, "").await;
    let n1 = rig.node("n1");
    built(&rig, "vm1").await;
    n1.set_events(Some(1));
    let polls_from = |n: u32| move |_: &Rig| n1.calls(Call::Probe) >= n;
    // A whole listing for the new connection, then polls of the node's numbers only.
    rig.wait_for("three polls", polls_from(n1.calls(Call::Probe) + 3))
        .await;

    n1.set_domain_state_silently("vm1", DomainState::Shutoff);
    rig.wait_for("five more polls", polls_from(n1.calls(Call::Probe) + 5))
        .await;
    assert_eq!(
        rig.status("vm1").unwrap(),
        "running",
        "no event, and no listing of the domains while events are trusted"
    );

    n1.set_domain_state("vm1", DomainState::Paused);
    rig.wait_status("vm1", "paused").await;

    n1.set_domain_state_silently("vm1", DomainState::Running);
    n1.set_events(Some(2));
    rig.wait_status("vm1", "running").await;

    // Without events, every poll lists the domains again.
    n1.set_events(None);
    n1.set_domain_state_silently("vm1", DomainState::Shutoff);
    rig.wait_status("vm1", "shutoff").await;
}

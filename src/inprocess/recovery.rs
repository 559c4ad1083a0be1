//! Crash recovery and several daemons on one database: what the reconciliation finishes,
//! undoes, releases and leaves alone (docs/SEMANTICS.md "Crash recovery", "rmdir"), and how
//! a second daemon's `rmdir`, `ctl` and creates act on the database's rows.
//!
//! A daemon that died is simulated by writing, through the database, the rows it would have
//! left (`building` at some step with its parts recorded in `made`, or `deleting`) under a
//! worker id that no live daemon has, and by making the parts on the in-memory node. While
//! such a row is being written the rigs hold its claim, so no reconciliation sees it half
//! written, until the picture holds it as written (but see
//! `a_finished_build_is_recognised_through_a_lagging_picture`). Every rig reconciles in the background as well (every 200 ms): where a test
//! needs the outcome it reconciles until the row shows it, and checks the row, the node and
//! the addresses rather than which round did the work.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Claim;
use crate::cluster::actions::{ActionError, Control};
use crate::cluster::reconcile::Report;
use crate::db::{BuildRow, Db, DbError, InstanceRecord, InstanceState, Made, Step, UserQuota};
use crate::hv::xml::{DiskSource, DomainDef, overlay_volume_xml, raw_volume_xml};
use crate::hv::{DomainState, NodeBackend};
use crate::model::{disk_volume, seed_volume};
use crate::secrets::{KeyRing, row_binding};
use crate::testing::Rig;
use crate::tree::TreeError;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
const UID: u32 = 1000;
const BASE_IMAGE: &str = "debian-12.qcow2";
const FIRST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 122, 10);
const LAST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 122, 250);
/// The rig's `worker_lease_ms`, in the seconds heartbeats are written in.
const LEASE_SECS: i64 = 3;

const ALL: Made = Made {
    domain: true,
    disk: true,
    seed: true,
    shared: false,
};
const DISK: Made = Made {
    domain: false,
    disk: true,
    seed: false,
    shared: false,
};

fn db(rig: &Rig) -> &Db {
    rig.cluster.db()
}

async fn row(rig: &Rig, name: &str) -> Option<InstanceRecord> {
    db(rig).get_vm(name).await.expect("get_vm")
}

/// The addresses `ip_alloc` holds for `name`.
async fn addresses_of(rig: &Rig, name: &str) -> Vec<String> {
    db(rig)
        .list_ip_allocations()
        .await
        .expect("list_ip_allocations")
        .into_iter()
        .filter(|(_, _, vm)| vm == name)
        .map(|(_, address, _)| address)
        .collect()
}

fn has_domain(rig: &Rig, name: &str) -> bool {
    rig.node("n1").domains().iter().any(|(n, _)| n == name)
}

fn domain_state(rig: &Rig, name: &str) -> Option<DomainState> {
    rig.node("n1")
        .domains()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

/// The instance volumes of `name` on n1.
fn volumes_of(rig: &Rig, name: &str) -> Vec<String> {
    let mine = [disk_volume(name), seed_volume(name)];
    rig.node("n1")
        .volumes()
        .into_iter()
        .filter(|v| mine.contains(v))
        .collect()
}

/// The domain kvmfs would define for `name` (it carries kvmfs's metadata).
fn domain_xml(name: &str) -> String {
    DomainDef {
        name: name.to_string(),
        domain_type: "kvm".into(),
        vcpus: 1,
        ram_mb: 512,
        disk: DiskSource::File(format!("/mem/n1/{}", disk_volume(name))),
        seed: Some(DiskSource::File(format!("/mem/n1/{}", seed_volume(name)))),
        interfaces: vec![("default".into(), "52:54:00:00:00:01".into())],
        kernel: None,
        initrd: None,
        cmdline: None,
        owner_uid: UID,
    }
    .to_xml()
}

/// Makes `parts` of instance `name` on n1, as a build would have.
fn make_parts(rig: &Rig, name: &str, parts: Made) {
    let n1 = rig.node("n1");
    if parts.disk {
        n1.create_volume(&overlay_volume_xml(
            &disk_volume(name),
            1,
            &format!("/mem/n1/{BASE_IMAGE}"),
        ))
        .expect("disk");
    }
    if parts.seed {
        n1.create_volume(&raw_volume_xml(&seed_volume(name), 4096))
            .expect("seed");
        n1.upload_volume(&seed_volume(name), b"seed")
            .expect("seed upload");
    }
    if parts.domain {
        n1.define_and_start(&domain_xml(name)).expect("domain");
    }
}

/// Claims `name` on every rig, so no reconciliation looks at it while a test writes it.
fn hold(rigs: &[&Rig], name: &str) -> Vec<Claim> {
    rigs.iter()
        .map(|r| r.cluster.claim(name).expect("nothing else works on it yet"))
        .collect()
}

/// Writes, through the database, a draft of `name` owned by `UID` (unless there is one) and
/// its placement on n1 (state `building`, step `placed`) by daemon `worker`.
async fn placed_row(rig: &Rig, name: &str, worker: &str) -> InstanceRecord {
    let db = db(rig);
    let draft = match row(rig, name).await {
        Some(draft) => draft,
        None => db
            .insert_draft(name, UID, &UserQuota::default())
            .await
            .expect("draft"),
    };
    let build = BuildRow {
        vcpus: 1,
        ram_mb: 512,
        disk_gb: 1,
        image: BASE_IMAGE,
        purpose: "custom",
        git: None,
        spec: SPEC,
    };
    db.begin_build(
        name,
        &draft.incarnation,
        UID,
        &UserQuota::default(),
        worker,
        &build,
        &[],
        |_| Ok::<String, DbError>("n1".into()),
    )
    .await
    .expect("begin_build");
    row(rig, name).await.expect("the placed row")
}

/// What a daemon `worker` that died in the middle of building `name` left behind: the row
/// in `building` at `step`, its address and sealed key stored, `made` recorded, and the
/// parts `on_node` made on n1. The caller holds the instance's claim on every rig.
async fn dead_build(
    rig: &Rig,
    name: &str,
    worker: &str,
    step: Step,
    made: Made,
    on_node: Made,
) -> InstanceRecord {
    let placed = placed_row(rig, name, worker).await;
    let db = db(rig);
    db.set_step(name, Step::AllocatingAddresses.word())
        .await
        .expect("step");
    let ip = db
        .allocate_ip("default", FIRST, LAST, name)
        .await
        .expect("address");
    let sealed = KeyRing::from_bytes(&[42u8; 32])
        .seal(
            &row_binding(name, &placed.incarnation),
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )
        .expect("seal");
    db.set_addresses_and_keys(
        name,
        Step::GeneratingKey.word(),
        Some(&ip.to_string()),
        None,
        "ssh-ed25519 AAAA kvmfs-test",
        &sealed,
    )
    .await
    .expect("keys");
    db.set_step_and_made(name, step.word(), made)
        .await
        .expect("step and made");
    make_parts(rig, name, on_node);
    let left = row(rig, name).await.expect("the row left");
    assert_eq!(left.state, InstanceState::Building);
    assert_eq!(left.worker.as_deref(), Some(worker));
    left
}

/// `dead_build` under the claim of `rig`, the only daemon running.
async fn abandoned_build(
    rig: &Rig,
    name: &str,
    worker: &str,
    step: Step,
    made: Made,
    on_node: Made,
) -> InstanceRecord {
    let _claim = hold(&[rig], name);
    let left = dead_build(rig, name, worker, step, made, on_node).await;
    caught_up(rig, &left).await;
    left
}

/// Waits until `rig`'s picture holds `row` as the database does. The reconciliation looks
/// for an abandoned build's domain through the picture's row (see
/// `a_finished_build_is_recognised_through_a_lagging_picture`).
async fn caught_up(rig: &Rig, row: &InstanceRecord) {
    rig.wait_for("the picture to hold the row", |r| {
        r.cluster
            .view()
            .instances
            .get(&row.name)
            .and_then(|i| i.row.as_deref().cloned())
            .as_ref()
            == Some(row)
    })
    .await;
}

fn merge(into: &mut Report, r: Report) {
    into.finished.extend(r.finished);
    into.undone.extend(r.undone);
    into.deleted.extend(r.deleted);
    into.released.extend(r.released);
    into.waiting.extend(r.waiting);
    into.noticed.extend(r.noticed);
}

/// Reconciles through `rig` until the row of `name` (`None`: gone) satisfies `done`, at
/// most 10 s; returns the row and what these rounds did (merged).
async fn reconcile_until(
    rig: &Rig,
    name: &str,
    done: impl Fn(Option<&InstanceRecord>) -> bool,
) -> (Option<InstanceRecord>, Report) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut all = Report::default();
    loop {
        merge(&mut all, rig.cluster.reconcile().await);
        let r = row(rig, name).await;
        if done(r.as_ref()) {
            return (r, all);
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{name} never got there; it is {r:?}; the rounds did {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_state(state: InstanceState) -> impl Fn(Option<&InstanceRecord>) -> bool {
    move |r| r.is_some_and(|r| r.state == state)
}

/// Whether a round's report names `name` in anything it did or left for later.
fn mentions(r: &Report, name: &str) -> bool {
    [&r.finished, &r.undone, &r.deleted, &r.waiting]
        .into_iter()
        .flatten()
        .any(|n| n == name)
        || r.released.iter().any(|s| s.ends_with(&format!("({name})")))
}

/// `building` at `creating disk` with the disk made, by a daemon that never beat: undone —
/// the disk removed, the address and key released, the node cleared, the status
/// `failed: interrupted during step …` — and the instance takes a new spec.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_build_before_its_domain_is_undone() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    abandoned_build(&rig, "web1", "dead", Step::CreatingDisk, DISK, DISK).await;
    assert_eq!(volumes_of(&rig, "web1"), vec![disk_volume("web1")]);
    assert_eq!(addresses_of(&rig, "web1").await, vec!["192.168.122.10"]);

    let (r, all) = reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    let r = r.unwrap();
    assert!(!all.finished.contains(&"web1".to_string()), "{all:?}");
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(!has_domain(&rig, "web1"));
    assert!(addresses_of(&rig, "web1").await.is_empty());
    assert_eq!(r.node, None);
    assert_eq!(r.ip_eth0, None);
    assert_eq!(r.sealed_key, None);
    assert!(r.made.is_empty(), "{}", r.made);
    assert_eq!(r.worker.as_deref(), Some("w1"), "taken over by the rig");
    let status = rig.wait_status("web1", "failed: ").await;
    assert!(
        status.starts_with("failed: interrupted during step "),
        "{status}"
    );
    assert!(
        status.ends_with(
            "kvmfs stopped before the build finished; what it made was removed; \
             write spec.json again"
        ),
        "{status}"
    );

    rig.write("instances/web1/spec.json", UID, SPEC)
        .await
        .unwrap();
    rig.wait_status("web1", "running").await;
    assert_eq!(addresses_of(&rig, "web1").await, vec!["192.168.122.10"]);
    assert_eq!(volumes_of(&rig, "web1").len(), 2);
}

/// The reason names the step the build was cut off in, as `status` documents it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undone_build_names_its_step_as_documented() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let made = Made {
        domain: false,
        disk: true,
        seed: true,
        shared: false,
    };
    abandoned_build(&rig, "web1", "dead", Step::WritingSeed, made, made).await;
    reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    assert_eq!(
        rig.wait_status("web1", "failed: ").await,
        "failed: interrupted during step \"writing seed\": kvmfs stopped before the build \
         finished; what it made was removed; write spec.json again"
    );
}

/// `building` at `starting` with the domain made and running: the crash came after the
/// domain started, so the build is finished — `ready`, parts and address kept, and `ctl`
/// works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_build_whose_domain_runs_is_finished() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    abandoned_build(&rig, "web1", "dead", Step::Starting, ALL, ALL).await;

    let (r, all) = reconcile_until(&rig, "web1", is_state(InstanceState::Ready)).await;
    let r = r.unwrap();
    assert!(!all.undone.contains(&"web1".to_string()), "{all:?}");
    assert_eq!(r.node.as_deref(), Some("n1"));
    assert_eq!(r.ip_eth0.as_deref(), Some("192.168.122.10"));
    assert_eq!(r.worker.as_deref(), Some("w1"));
    assert_eq!(r.step, Step::None);
    assert_eq!(addresses_of(&rig, "web1").await, vec!["192.168.122.10"]);
    assert_eq!(volumes_of(&rig, "web1").len(), 2);
    assert_eq!(domain_state(&rig, "web1"), Some(DomainState::Running));
    rig.wait_status("web1", "running").await;

    rig.write("instances/web1/ctl", UID, "destroy")
        .await
        .unwrap();
    rig.wait_status("web1", "shutoff").await;
}

/// The same, with the rounds coming right after the dead daemon's last write, before the
/// reconciling daemon's picture (polled every 50 ms) has caught up with the row: the
/// documented outcome depends on the row and the node, so it must still be `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_build_is_recognised_through_a_lagging_picture() {
    let rig = Rig::new(&[("n1", 8, 16384)], "").await;
    let names = ["web1", "web2", "web3", "web4", "web5"];
    for name in names {
        // The draft made through this daemon, so its picture holds it; the rest written by
        // another daemon, which dies at once: the round comes before the next poll.
        rig.mkdir(name, UID).await.unwrap();
        let claim = hold(&[&rig], name);
        dead_build(&rig, name, "dead", Step::Starting, ALL, ALL).await;
        drop(claim);
        rig.cluster.reconcile().await;
    }
    for name in names {
        let (r, _) = reconcile_until(&rig, name, |r| {
            r.is_some_and(|r| r.state != InstanceState::Building)
        })
        .await;
        assert_eq!(r.unwrap().state, InstanceState::Ready, "{name}");
        assert_eq!(
            domain_state(&rig, name),
            Some(DomainState::Running),
            "{name}"
        );
    }
}

/// `building` with the domain made but not active (shut off): not a finished build, so it
/// is undone like any other, the domain included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_build_whose_domain_is_off_is_undone() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    {
        let _claim = hold(&[&rig], "web1");
        let left = dead_build(&rig, "web1", "dead", Step::Starting, ALL, ALL).await;
        rig.node("n1")
            .set_domain_state("web1", DomainState::Shutoff);
        caught_up(&rig, &left).await;
    }
    let (r, all) = reconcile_until(&rig, "web1", |r| {
        r.is_some_and(|r| r.state != InstanceState::Building)
    })
    .await;
    assert_eq!(r.unwrap().state, InstanceState::Failed, "{all:?}");
    assert!(!has_domain(&rig, "web1"));
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(addresses_of(&rig, "web1").await.is_empty());
}

/// `made` lists what a build was about to make, a superset of what exists: a crash before
/// the calls ran leaves less on the node, and the undo tolerates the missing parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_tolerates_parts_that_were_never_made() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    abandoned_build(&rig, "web1", "dead", Step::Starting, ALL, DISK).await;
    let (r, _) = reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    let r = r.unwrap();
    assert!(r.made.is_empty(), "left {}", r.made);
    assert_eq!(r.node, None);
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(addresses_of(&rig, "web1").await.is_empty());
    assert_eq!(
        rig.node("n1").volumes(),
        vec![BASE_IMAGE.to_string()],
        "the base image stays"
    );
}

/// A domain of the instance's name that kvmfs did not make (no kvmfs metadata) is never
/// removed by an undo, even though `made` lists a domain: the row is failed with the domain
/// still recorded (for a later rmdir), the node kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_leaves_a_foreign_domain_alone() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.node("n1").add_foreign_domain("web1", 1, 512, false);
    abandoned_build(&rig, "web1", "dead", Step::Starting, ALL, DISK).await;
    let (r, _) = reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    let r = r.unwrap();
    assert_eq!(domain_state(&rig, "web1"), Some(DomainState::Shutoff));
    assert!(r.made.domain, "the domain stays recorded: {}", r.made);
    assert!(!r.made.disk && !r.made.seed, "{}", r.made);
    assert_eq!(r.node.as_deref(), Some("n1"));
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(addresses_of(&rig, "web1").await.is_empty());
    for _ in 0..5 {
        rig.cluster.reconcile().await;
    }
    assert!(has_domain(&rig, "web1"), "still not removed");
}

/// A `deleting` row left by a dead daemon, which had removed the domain already: the
/// delete is finished — volumes, addresses and row gone — and the folder goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_delete_is_finished() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.create("web1", UID, SPEC).await.unwrap();
    rig.wait_status("web1", "running").await;
    {
        let _claim = hold(&[&rig], "web1");
        let r = row(&rig, "web1").await.unwrap();
        db(&rig).begin_delete("web1", "dead", r.rev).await.unwrap();
        rig.node("n1").remove_domain("web1").unwrap();
        db(&rig)
            .set_made(
                "web1",
                Made {
                    domain: false,
                    disk: true,
                    seed: true,
                    shared: false,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            row(&rig, "web1").await.unwrap().state,
            InstanceState::Deleting
        );
    }
    let (r, _) = reconcile_until(&rig, "web1", |r| r.is_none()).await;
    assert!(r.is_none());
    assert!(addresses_of(&rig, "web1").await.is_empty());
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(!has_domain(&rig, "web1"));
    rig.wait_for("the folder to go", |r| r.status("web1").is_none())
        .await;
}

/// A build whose daemon wrote its heartbeat is left alone for the lease, then taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_is_taken_over_only_once_its_daemons_lease_ran_out() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let started = tokio::time::Instant::now();
    db(&rig)
        .heartbeat("peer", "a daemon that dies")
        .await
        .unwrap();
    abandoned_build(&rig, "web1", "peer", Step::CreatingDisk, DISK, DISK).await;
    // Heartbeats are in whole seconds: within 2.5 s of it, no clock reading puts it more
    // than the lease (3 s) in the past.
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        let report = rig.cluster.reconcile().await;
        let r = row(&rig, "web1").await.unwrap();
        if started.elapsed() < Duration::from_millis(2500) {
            assert!(!mentions(&report, "web1"), "{report:?}");
            assert_eq!(r.state, InstanceState::Building);
            assert_eq!(r.worker.as_deref(), Some("peer"));
            assert_eq!(volumes_of(&rig, "web1"), vec![disk_volume("web1")]);
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rounds > 3);
    let (r, _) = reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(LEASE_SECS as u64),
        "taken over after {:?}, within the lease",
        started.elapsed()
    );
    assert_eq!(r.unwrap().worker.as_deref(), Some("w1"));
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(addresses_of(&rig, "web1").await.is_empty());
}

/// A build under way on a live daemon (A, its heartbeat fresh) is never touched by another
/// daemon's reconciliation, and ends as A's build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_daemons_build_is_left_alone_by_another() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    let b = a.another_daemon("w2").await;
    a.node("n1").set_delay(Duration::from_millis(300));
    a.create("slow", UID, SPEC).await.unwrap();
    let mut rounds = 0;
    loop {
        let report = b.cluster.reconcile().await;
        let r = row(&b, "slow").await.unwrap();
        if r.state != InstanceState::Building {
            break;
        }
        assert!(!mentions(&report, "slow"), "{report:?}");
        assert_eq!(r.worker.as_deref(), Some("w1"));
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.node("n1").set_delay(Duration::ZERO);
    assert!(
        rounds >= 2,
        "the build ended before B looked ({rounds} rounds)"
    );
    let r = row(&a, "slow").await.unwrap();
    assert_eq!(r.state, InstanceState::Ready, "{:?}", r.error);
    assert_eq!(r.worker.as_deref(), Some("w1"));
    a.wait_status("slow", "running").await;
    assert_eq!(volumes_of(&a, "slow").len(), 2);
}

/// `rmdir` through daemon B of an instance daemon A is building is `EBUSY`, and the build
/// goes on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmdir_through_another_daemon_of_a_build_under_way_is_busy() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    let b = a.another_daemon("w2").await;
    a.node("n1").set_delay(Duration::from_millis(300));
    a.create("slow", UID, SPEC).await.unwrap();
    let r = b.cluster.delete("slow", UID).await;
    let still = row(&a, "slow").await.unwrap();
    a.node("n1").set_delay(Duration::ZERO);
    assert_eq!(
        still.state,
        InstanceState::Building,
        "the build ended too soon"
    );
    match r {
        Err(ActionError::Busy(m)) => assert!(m.contains("being built"), "{m}"),
        other => panic!("rmdir of a build under way: {other:?}"),
    }
    a.wait_status("slow", "running").await;
    assert!(has_domain(&a, "slow"));
    assert_eq!(addresses_of(&a, "slow").await.len(), 1);
}

/// A daemon restarted with its old id (here `w7`, whose heartbeat is fresh, so no other
/// daemon may touch its rows) recovers its own abandoned rows at once, without waiting for
/// any lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_recovers_its_own_rows_at_once() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    db(&a).heartbeat("w7", "before the crash").await.unwrap();
    abandoned_build(&a, "web1", "w7", Step::WritingSeed, ALL, DISK).await;
    for _ in 0..3 {
        let report = a.cluster.reconcile().await;
        assert!(!mentions(&report, "web1"), "{report:?}");
    }
    assert_eq!(
        row(&a, "web1").await.unwrap().state,
        InstanceState::Building
    );

    let started = tokio::time::Instant::now();
    let w7 = a.another_daemon("w7").await;
    let (r, _) = reconcile_until(&w7, "web1", is_state(InstanceState::Failed)).await;
    assert!(
        started.elapsed() < Duration::from_secs(LEASE_SECS as u64),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        r.unwrap().worker.as_deref(),
        Some("w7"),
        "w7 did it, not w1"
    );
    assert!(volumes_of(&a, "web1").is_empty());
    assert!(addresses_of(&a, "web1").await.is_empty());
}

/// An abandoned build on an offline node waits for the node (reported as waiting,
/// nothing changed), and is undone once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_build_on_an_offline_node_waits_for_it() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    {
        let _claim = hold(&[&rig], "web1");
        let left = dead_build(&rig, "web1", "dead", Step::CreatingDisk, DISK, DISK).await;
        caught_up(&rig, &left).await;
        rig.node("n1").set_down(true);
    }
    // A round of the rig's own may hold the claim when ours looks: ask a few times.
    let mut waiting = false;
    for _ in 0..50 {
        let report = rig.cluster.reconcile().await;
        assert!(!report.undone.contains(&"web1".to_string()), "{report:?}");
        waiting = report.waiting.contains(&"web1".to_string());
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waiting, "never reported as waiting for its node");
    let r = row(&rig, "web1").await.unwrap();
    assert_eq!(r.state, InstanceState::Building);
    assert_eq!(r.worker.as_deref(), Some("dead"));
    assert_eq!(volumes_of(&rig, "web1"), vec![disk_volume("web1")]);
    assert_eq!(addresses_of(&rig, "web1").await.len(), 1);

    rig.node("n1").set_down(false);
    reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    assert!(volumes_of(&rig, "web1").is_empty());
    assert!(addresses_of(&rig, "web1").await.is_empty());
}

/// Addresses held for a name with no row, or for a draft, are released and handed out
/// again; those of a built instance are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_addresses_are_released_and_handed_out_again() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.create("keep", UID, SPEC).await.unwrap();
    rig.wait_status("keep", "running").await;
    rig.mkdir("drafty", UID).await.unwrap();
    let (ghost, drafty) = {
        let _claims = (hold(&[&rig], "ghost"), hold(&[&rig], "drafty"));
        let db = db(&rig);
        let g = db
            .allocate_ip("default", FIRST, LAST, "ghost")
            .await
            .unwrap();
        let d = db
            .allocate_ip("default", FIRST, LAST, "drafty")
            .await
            .unwrap();
        (g.to_string(), d.to_string())
    };
    assert_eq!(
        (ghost.as_str(), drafty.as_str()),
        ("192.168.122.11", "192.168.122.12")
    );

    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        rig.cluster.reconcile().await;
        let all = db(&rig).list_ip_allocations().await.unwrap();
        if all.len() == 1 {
            assert_eq!(all[0].1, "192.168.122.10");
            assert_eq!(all[0].2, "keep");
            break;
        }
        assert!(tokio::time::Instant::now() < until, "still held: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        row(&rig, "drafty").await.unwrap().state,
        InstanceState::Draft,
        "the draft itself stays"
    );
    rig.create("next", UID, SPEC).await.unwrap();
    rig.wait_status("next", "running").await;
    assert_eq!(addresses_of(&rig, "next").await, vec!["192.168.122.11"]);
    rig.write("instances/drafty/spec.json", UID, SPEC)
        .await
        .unwrap();
    rig.wait_status("drafty", "running").await;
    assert_eq!(addresses_of(&rig, "drafty").await, vec!["192.168.122.12"]);
}

/// A domain kvmfs made that has no row, a volume named like an instance's with no row, and
/// a `ready` row whose domain is gone: reported, and never touched (nor is a domain kvmfs
/// did not make reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreements_are_reported_and_left_alone() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    n1.define_and_start(&domain_xml("orphan")).unwrap();
    n1.add_volume(&disk_volume("stray"), 1 << 30);
    n1.add_foreign_domain("manual", 1, 256, true);
    {
        let _claim = hold(&[&rig], "lost");
        placed_row(&rig, "lost", "w1").await;
        db(&rig).finish_build("lost").await.unwrap();
    }

    let wanted = [
        "domain orphan on node n1",
        "volume stray.disk.qcow2 on node n1",
        "instance lost is ready but has no domain on node n1",
    ];
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = rig.cluster.reconcile().await;
        if wanted
            .iter()
            .all(|w| report.noticed.iter().any(|n| n.contains(w)))
        {
            break report;
        }
        assert!(tokio::time::Instant::now() < until, "{report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report.noticed.len(), 3, "{report:?}");
    assert!(
        !report.noticed.iter().any(|n| n.contains("manual")),
        "{report:?}"
    );
    for name in ["orphan", "stray", "lost", "manual"] {
        assert!(!mentions(&report, name), "{report:?}");
    }

    for _ in 0..5 {
        let report = rig.cluster.reconcile().await;
        assert!(!report.changed_anything(), "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(domain_state(&rig, "orphan"), Some(DomainState::Running));
    assert_eq!(domain_state(&rig, "manual"), Some(DomainState::Running));
    assert!(n1.volumes().contains(&disk_volume("stray")));
    assert_eq!(row(&rig, "lost").await.unwrap().state, InstanceState::Ready);
    rig.wait_status("lost", "missing: no domain on node n1")
        .await;
    // Nor does rmdir delete a domain that has no row.
    rig.wait_for("orphan listed", |r| r.status("orphan").is_some())
        .await;
    assert!(matches!(
        rig.rmdir("orphan", 0).await,
        Err(TreeError::Action(ActionError::NotOwner(_)))
    ));
    assert!(has_domain(&rig, "orphan"));
}

/// `rmdir` through daemon B of an instance A has just built acts on the database's row,
/// whatever B's picture shows: domain, volumes, addresses and row go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmdir_through_a_lagging_daemon_removes_everything() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    let b = a.another_daemon("w2").await;
    a.create("web1", UID, SPEC).await.unwrap();
    a.wait_status("web1", "running").await;
    b.rmdir("web1", UID).await.unwrap();
    assert!(row(&a, "web1").await.is_none());
    assert!(addresses_of(&a, "web1").await.is_empty());
    assert!(!has_domain(&a, "web1"));
    assert!(volumes_of(&a, "web1").is_empty());
    assert!(b.status("web1").is_none());
    a.wait_for("A to drop it", |r| r.status("web1").is_none())
        .await;
    assert_eq!(
        b.rmdir("web1", UID).await,
        Err(TreeError::Action(ActionError::NotFound(
            "instance web1 not found".into()
        ))),
        "deleting it again"
    );
}

/// `ctl` through daemon B on an incarnation A has since deleted and made again is
/// `ESTALE` and reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_through_another_daemon_on_an_old_incarnation_is_stale() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    let b = a.another_daemon("w2").await;
    a.create("web1", UID, SPEC).await.unwrap();
    a.wait_status("web1", "running").await;
    let old = row(&a, "web1").await.unwrap().incarnation;
    b.wait_for("B to see it running", |r| {
        r.status("web1").as_deref() == Some("running")
    })
    .await;

    a.rmdir("web1", UID).await.unwrap();
    a.create("web1", UID, SPEC).await.unwrap();
    a.wait_status("web1", "running").await;
    let new = row(&a, "web1").await.unwrap().incarnation;
    assert_ne!(old, new);

    let r = b.cluster.control("web1", &old, UID, Control::Destroy).await;
    assert!(matches!(r, Err(ActionError::Stale(_))), "{r:?}");
    assert_eq!(domain_state(&a, "web1"), Some(DomainState::Running));
    // The new incarnation is B's to command.
    b.wait_for("B to see the new one running", |r| {
        r.cluster.view().instances.get("web1").is_some_and(|i| {
            i.row.as_ref().is_some_and(|r| r.incarnation == new) && i.status() == "running"
        })
    })
    .await;
    b.cluster
        .control("web1", &new, UID, Control::Destroy)
        .await
        .unwrap();
    assert_eq!(domain_state(&a, "web1"), Some(DomainState::Shutoff));
}

/// Creates through two daemons at once: the placement lock keeps them from overbooking
/// the node (4 vCPUs of room: 1 CPU × cpu_overcommit 4), and no address goes to two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_two_daemons_share_nothing() {
    let a = Arc::new(Rig::new(&[("n1", 1, 8192)], "").await);
    let b = Arc::new(a.another_daemon("w2").await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        for (rig, tag) in [(a.clone(), "a"), (b.clone(), "b")] {
            tasks.spawn(async move {
                let name = format!("{tag}{i}");
                let r = rig.create(&name, UID, SPEC).await;
                (name, r)
            });
        }
    }
    let mut placed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (name, r) = done.unwrap();
        match r {
            Ok(()) => placed.push(name),
            Err(TreeError::Action(ActionError::NoCapacity(_))) => {}
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
    placed.sort();
    assert_eq!(placed.len(), 4, "placed {placed:?}");
    for name in &placed {
        let rig = if name.starts_with('a') { &a } else { &b };
        rig.wait_status(name, "running").await;
    }
    let rows = db(&a).list_vms().await.unwrap();
    let holding: Vec<&InstanceRecord> = rows.iter().filter(|r| r.state.holds_room()).collect();
    assert_eq!(holding.len(), 4, "{rows:?}");
    let mut ips: Vec<&str> = holding
        .iter()
        .map(|r| r.ip_eth0.as_deref().expect("an address"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "{ips:?}");
    let allocs = db(&a).list_ip_allocations().await.unwrap();
    assert_eq!(allocs.len(), 4, "{allocs:?}");
    for r in &holding {
        assert!(
            allocs
                .iter()
                .any(|(_, ip, vm)| *vm == r.name && Some(ip.as_str()) == r.ip_eth0.as_deref()),
            "{} holds {:?}: {allocs:?}",
            r.name,
            r.ip_eth0
        );
    }
    assert_eq!(a.node("n1").domains().len(), 4);
}

/// A delete another live daemon runs (its claim held, the row `deleting` with its id) is
/// `EBUSY` for this daemon's `rmdir`; the other daemon then finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmdir_of_a_delete_a_live_daemon_runs_is_busy() {
    let a = Rig::new(&[("n1", 4, 8192)], "").await;
    let b = a.another_daemon("w2").await;
    a.create("web1", UID, SPEC).await.unwrap();
    a.wait_status("web1", "running").await;
    let claim = a.cluster.claim("web1").unwrap();
    let r = row(&a, "web1").await.unwrap();
    db(&a).begin_delete("web1", "w1", r.rev).await.unwrap();

    let refused = b.cluster.delete("web1", UID).await;
    assert!(
        matches!(&refused, Err(ActionError::Busy(m)) if m.contains("another kvmfs")),
        "{refused:?}"
    );
    for _ in 0..3 {
        let report = b.cluster.reconcile().await;
        assert!(!mentions(&report, "web1"), "{report:?}");
    }
    let still = row(&a, "web1").await.unwrap();
    assert_eq!(still.state, InstanceState::Deleting);
    assert_eq!(still.worker.as_deref(), Some("w1"));
    assert!(has_domain(&a, "web1"));

    drop(claim);
    let (r, _) = reconcile_until(&a, "web1", |r| r.is_none()).await;
    assert!(r.is_none());
    assert!(!has_domain(&a, "web1"));
    assert!(volumes_of(&a, "web1").is_empty());
    assert!(addresses_of(&a, "web1").await.is_empty());
}

/// A build abandoned after making its disk and seed on the shared storage: the
/// reconciliation removes them from the share, where `vm.made` says they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_build_on_the_shared_storage_is_undone_there() {
    let share = Arc::new(crate::storage::mem::MemShare::with_files(&[
        BASE_IMAGE,
        "web1.disk.qcow2",
        "web1.seed.iso",
    ]));
    let rig = Rig::with_share(&[("n1", 4, 8192)], share.clone()).await;
    let made = Made {
        domain: false,
        disk: true,
        seed: true,
        shared: true,
    };
    let pool = rig.node("n1").volumes();
    abandoned_build(
        &rig,
        "web1",
        "dead",
        Step::WritingSeed,
        made,
        Made::default(),
    )
    .await;
    let (r, _) = reconcile_until(&rig, "web1", is_state(InstanceState::Failed)).await;
    let r = r.expect("the failed row");
    assert!(r.made.is_empty(), "left {}", r.made);
    assert_eq!(share.files(), [BASE_IMAGE]);
    assert_eq!(rig.node("n1").volumes(), pool, "the pool is untouched");
}

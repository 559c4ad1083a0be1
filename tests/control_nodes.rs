//! Several control nodes: three kvmfs daemons, each in a network namespace of its own (a
//! control node on the LAN), on one MariaDB reached over that LAN and one node (a real
//! libvirtd serving the test driver). They see each other's instances, reconcile once
//! between them, and one takes over what a killed one left half-done.

mod common;

use std::time::Duration;

use common::lan::Lan;
use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";
const SPEC: &str = r#"{"vcpus":1,"ram_mb":128,"disk_gb":1}"#;
const LEADS: &str = "this daemon now reconciles for every daemon";

fn config(db: &MariaDb, lan: &Lan, node: &Libvirtd) -> String {
    format!(
        "[database]\nurl = '{}'\n\
         [timing]\nrefresh_ms = 200\nreconcile_ms = 500\nworker_lease_ms = 2000\n\
         libvirt_timeout_ms = 5000\n\
         [instances]\ndefault_image = '{IMAGE}'\n\
         [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
         first = '192.168.122.10'\nlast = '192.168.122.60'\n\
         [[node]]\nname = 'n1'\nuri = '{}'\npool = 'default-pool'\n",
        db.url_at(&lan.host()),
        node.uri()
    )
}

/// The worker id of a daemon (its state dir's `worker-id`).
fn worker(d: &Mounted) -> String {
    read(d.state.path().join("worker-id")).trim().to_string()
}

/// The daemon the database names as holding the reconciliation lease.
fn lease_holder(db: &MariaDb) -> String {
    db.sql("SELECT holder FROM kvmfs.reconcile_lease")
        .trim()
        .to_string()
}

/// How many of `daemons`' logs contain `text`.
fn logs_with(daemons: &[&Mounted], text: &str) -> usize {
    daemons.iter().filter(|d| d.log().contains(text)).count()
}

#[test]
fn three_control_nodes_share_the_work_and_one_takes_over_a_killed_ones() {
    let lan = Lan::new(3);
    let db = MariaDb::start_listening_on(&lan.host(), &lan.host_pattern());
    let node = Libvirtd::start(IMAGE);
    let cfg = config(&db, &lan, &node);

    // The first daemon takes the reconciliation lease; it will die at a step of a build.
    let mut d0 = Mounted::with_config_env_in_netns(
        &cfg,
        &[("KVMFS_CRASH_AT", "create:disk made")],
        lan.netns(0),
    );
    wait_for(Duration::from_secs(20), "the first daemon to lead", || {
        d0.log().contains(LEADS)
    });
    let d1 = Mounted::with_config_in_netns(&cfg, lan.netns(1));
    let d2 = Mounted::with_config_in_netns(&cfg, lan.netns(2));
    for d in [&d0, &d1, &d2] {
        wait_online(d, &["n1"]);
    }

    // Each sees the others' instances.
    for (name, d) in [("k1", &d1), ("k2", &d2)] {
        std::fs::create_dir(d.path(&format!("instances/{name}"))).unwrap();
        write_spec(d, name, SPEC).unwrap();
    }
    for d in [&d0, &d1, &d2] {
        for name in ["k1", "k2"] {
            wait_status(d, name, "running");
        }
    }

    // A stray address is released once, by the daemon holding the lease.
    db.sql(
        "INSERT INTO kvmfs.ip_alloc (pool, address, vmname) \
         VALUES ('default', '192.168.122.59', 'ghost')",
    );
    wait_for(Duration::from_secs(20), "the stray address to go", || {
        db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc WHERE vmname = 'ghost'") == "0\n"
    });
    let released = "reconciliation: released a stray address";
    assert!(d0.log().contains(released), "{}", d0.log());
    assert_eq!(logs_with(&[&d1, &d2], released), 0);
    assert_eq!(logs_with(&[&d1, &d2], LEADS), 0, "one leader at a time");
    assert_eq!(lease_holder(&db), worker(&d0));

    // The leader dies in the middle of a build; after its lease another daemon leads and
    // undoes the build.
    std::fs::create_dir(d0.path("instances/cut")).unwrap();
    let _ = write_spec(&d0, "cut", SPEC);
    let st = d0.wait_died(Duration::from_secs(30));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{}",
        d0.log()
    );
    let status = d1.path("instances/cut/status");
    wait_for(Duration::from_secs(30), "the build to be undone", || {
        std::fs::read_to_string(&status).is_ok_and(|s| s.starts_with("failed: interrupted"))
    });
    assert_eq!(logs_with(&[&d1, &d2], LEADS), 1, "one new leader");
    let holder = lease_holder(&db);
    assert!(holder == worker(&d1) || holder == worker(&d2), "{holder}");
    assert_eq!(
        logs_with(&[&d1, &d2], "reconciliation: undid an interrupted build"),
        1,
        "undone once"
    );
    assert!(
        !node.volumes().iter().any(|v| v.starts_with("cut.")),
        "{:?}",
        node.volumes()
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc WHERE vmname = 'cut'"),
        "0\n"
    );
    // The survivors go on.
    std::fs::create_dir(d2.path("instances/k3")).unwrap();
    write_spec(&d2, "k3", SPEC).unwrap();
    wait_status(&d1, "k3", "running");
}

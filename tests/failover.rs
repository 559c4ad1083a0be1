//! Database failover, with real replication: a MariaDB primary and a replica applying its
//! binary log (semi-synchronously), the primary killed with SIGKILL, the replica promoted as
//! an operator would. Checked through the mount and in both databases.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

fn write_spec(m: &Mounted, name: &str, spec: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path(&format!("instances/{name}/spec.json")))?;
    f.write_all(spec.as_bytes())
}

fn wait_status(m: &Mounted, name: &str, prefix: &str) {
    let p = m.path(&format!("instances/{name}/status"));
    wait_for(
        Duration::from_secs(30),
        &format!("{name} to be {prefix}"),
        || std::fs::read_to_string(&p).is_ok_and(|s| s.starts_with(prefix)),
    );
}

fn config(primary: &MariaDb, replica: &MariaDb, node: &str) -> String {
    format!(
        "[database]\nurl = '{}'\nreplica_url = '{}'\n[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'n1'\nuri = '{node}'\n",
        primary.url(),
        replica.url()
    )
}

fn rows(db: &MariaDb) -> String {
    db.sql("SELECT vmname, state FROM kvmfs.vm ORDER BY vmname")
}

fn addresses(db: &MariaDb) -> String {
    db.sql("SELECT DISTINCT vmname FROM kvmfs.ip_alloc ORDER BY vmname")
}

#[test]
fn the_promoted_replica_takes_over_and_nothing_acknowledged_is_lost() {
    let (mut primary, replica) = MariaDb::pair(false);
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(16, 32768));
    let cfg = config(&primary, &replica, &n1);
    let m = Mounted::with_config(&cfg);

    // Acknowledged on the primary: two built instances, a draft, two deletions.
    for n in ["a1", "a2", "a3", "d1"] {
        std::fs::create_dir(m.path(&format!("instances/{n}"))).unwrap();
    }
    for n in ["a1", "a2"] {
        write_spec(&m, n, r#"{"flavor":"m1.small"}"#).unwrap();
    }
    for n in ["a1", "a2"] {
        wait_status(&m, n, "running");
    }
    std::fs::remove_dir(m.path("instances/a2")).unwrap();
    std::fs::remove_dir(m.path("instances/a3")).unwrap();
    let expected = "a1\tready\nd1\tdraft\n";
    assert_eq!(rows(&primary), expected);

    // Killed right after the last acknowledged change, without waiting for the replica:
    // semi-synchronous replication means the replica had received every one of them.
    primary.kill();
    wait_for(
        Duration::from_secs(10),
        "the replica to apply what it received",
        || rows(&replica) == expected,
    );
    assert_eq!(addresses(&replica), "a1\n");
    // Until the replica is promoted, changes fail with EIO and say why; reads go on.
    let mp = m.mnt.path().to_path_buf();
    let e = within(Duration::from_secs(10), "mkdir", {
        let p = mp.join("instances/x1");
        move || std::fs::create_dir(p)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = within(Duration::from_secs(10), "writing spec.json", {
        let m = mp.clone();
        move || std::fs::write(m.join("instances/d1/spec.json"), r#"{"flavor":"m1.small"}"#)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let err = read(m.path("instances/d1/error"));
    assert!(
        err.contains("read-only (not promoted yet)"),
        "the reason names the replica's state: {err}"
    );
    assert!(read(m.path("instances/a1/status")).starts_with("running"));
    wait_for(Duration::from_secs(10), "/status to say degraded", || {
        read(m.path("status")).starts_with("degraded: database")
    });
    assert!(!m.path("instances/x1").exists());

    replica.promote();
    wait_for(
        Duration::from_secs(20),
        "kvmfs to move to the replica",
        || read(m.path("status")) == "ok\n",
    );
    assert!(m.log().contains("database failover"), "{}", m.log());
    // Writes go on against the replica.
    write_spec(&m, "d1", r#"{"flavor":"m1.small"}"#).unwrap();
    std::fs::create_dir(m.path("instances/b1")).unwrap();
    write_spec(&m, "b1", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "d1", "running");
    wait_status(&m, "b1", "running");
    std::fs::remove_dir(m.path("instances/a1")).unwrap();
    assert_eq!(list(m.path("instances")), ["b1", "d1"]);
    // Every acknowledged create and delete is in the replica; the refused ones are not.
    assert_eq!(rows(&replica), "b1\tready\nd1\tready\n");
    assert_eq!(addresses(&replica), "b1\nd1\n");
    assert!(
        replica
            .sql("SELECT from_url FROM kvmfs.db_failover")
            .contains(&format!("127.0.0.1:{}/kvmfs", primary.port)),
        "the failover is recorded on the replica"
    );

    // The old primary comes back with its old rows: kvmfs does not go back to it.
    primary.restart();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::create_dir(m.path("instances/c1")).unwrap();
    assert_eq!(rows(&replica), "b1\tready\nc1\tdraft\nd1\tready\n");
    assert_eq!(
        rows(&primary),
        "a1\tready\nd1\tdraft\n",
        "nothing written there"
    );

    // A kvmfs started now, with the same configuration, finds the record and uses the
    // replica too, although the primary answers.
    let m2 = Mounted::with_config(&cfg);
    assert_eq!(list(m2.path("instances")), ["b1", "c1", "d1"]);
    std::fs::create_dir(m2.path("instances/e1")).unwrap();
    assert!(rows(&replica).contains("e1\tdraft"));
    assert!(!rows(&primary).contains("e1"));
    for log in [m.log(), m2.log()] {
        assert!(!log.contains("kvmfs-test-pw"), "a password reached the log");
    }
    for pid in [m.pid(), m2.pid()] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("kvmfs-test-pw"),
            "a password is on the daemon's command line"
        );
    }
}

#[test]
fn a_writable_replica_is_written_only_once_the_primary_is_gone() {
    let (mut primary, replica) = MariaDb::pair(true);
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(16, 32768));
    let m = Mounted::with_config(&config(&primary, &replica, &n1));

    std::fs::create_dir(m.path("instances/w1")).unwrap();
    write_spec(&m, "w1", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "w1", "running");
    std::fs::create_dir(m.path("instances/w2")).unwrap();
    // Written on the primary only: the replica has it through replication, and its
    // replication never hit a row kvmfs wrote there itself.
    wait_for(Duration::from_secs(10), "the replica to apply it", || {
        rows(&replica) == "w1\tready\nw2\tdraft\n"
    });
    // (A row kvmfs had written to the replica would stop its SQL thread with a duplicate.)
    assert_eq!(
        replica.sql("SHOW GLOBAL STATUS LIKE 'Slave_running'"),
        "Slave_running\tON\n"
    );
    // A primary that answers with an error (a wrong password) is a mistake to fix, not a
    // reason to fail over for good.
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, cfg) = (tmp.path().join("mnt"), tmp.path().join("bad.toml"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(
        &cfg,
        config(&primary, &replica, &n1).replacen("kvmfs-test-pw", "wrong-pw", 1),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = within(
        Duration::from_secs(30),
        "a mount with a wrong password",
        move || kvmfs_mount(&mnt, &cfg, &tmp.path().join("state")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");
    assert_eq!(replica.sql("SELECT COUNT(*) FROM kvmfs.db_failover"), "0\n");

    primary.kill();
    // No promotion needed: kvmfs moves once the primary has failed its checks.
    wait_for(
        Duration::from_secs(20),
        "a write to succeed on the replica",
        || std::fs::create_dir(m.path("instances/w3")).is_ok(),
    );
    std::fs::remove_dir(m.path("instances/w1")).unwrap();
    write_spec(&m, "w2", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "w2", "running");
    assert_eq!(rows(&replica), "w2\tready\nw3\tdraft\n");
    assert_eq!(addresses(&replica), "w2\n");
    drop(m);

    // Starting with the primary dead and no failover record: a read-only replica is not
    // taken over (the mount fails and says why); a writable one is.
    replica.sql("DELETE FROM kvmfs.db_failover; SET GLOBAL read_only = ON;");
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = tmp.path().join("k.toml");
    std::fs::write(&cfg, config(&primary, &replica, &n1)).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = within(Duration::from_secs(30), "a mount on a dead primary", {
        let (mnt, cfg, st) = (mnt.clone(), cfg.clone(), tmp.path().join("state"));
        move || kvmfs_mount(&mnt, &cfg, &st)
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the primary is unreachable at start")
            && err.contains("read-only (not promoted yet)"),
        "{err}"
    );
    assert_eq!(replica.sql("SELECT COUNT(*) FROM kvmfs.db_failover"), "0\n");
    replica.sql("SET GLOBAL read_only = OFF;");
    let m = Mounted::with_config(&config(&primary, &replica, &n1));
    assert_eq!(list(m.path("instances")), ["w2", "w3"]);
    std::fs::remove_dir(m.path("instances/w3")).unwrap();
    assert_eq!(rows(&replica), "w2\tready\n");
    assert_eq!(replica.sql("SELECT COUNT(*) FROM kvmfs.db_failover"), "1\n");
}

/// `kvmfs mount MNT --config CFG --state-dir STATE` in the background, as a user runs it.
fn kvmfs_mount(mnt: &Path, cfg: &Path, state: &Path) -> std::process::Output {
    std::process::Command::new(KVMFS)
        .arg("mount")
        .arg(mnt)
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

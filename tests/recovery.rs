//! Crash recovery, for real: kvmfs is killed with SIGKILL at every step of a create and of
//! a delete (its crash points, `KVMFS_CRASH_AT`), started again, and the reconciliation must
//! finish or undo each operation — checked through the mount, in MariaDB and on the node,
//! a libvirtd whose state outlives the killed daemon.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";

struct Rig {
    db: MariaDb,
    node: Libvirtd,
    _git: tempfile::TempDir,
    git: String,
}

impl Rig {
    fn new() -> Rig {
        let git_dir = tempfile::tempdir().unwrap();
        let git = git_repo(git_dir.path(), "<h1>recovered</h1>");
        Rig {
            db: MariaDb::start(),
            node: Libvirtd::start(IMAGE),
            _git: git_dir,
            git,
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[database]\nurl = '{}'\n\
             [timing]\nrefresh_ms = 200\nlibvirt_timeout_ms = 5000\nreconcile_ms = 300\n\
             worker_lease_ms = 3000\n{extra}\n\
             [instances]\ndefault_image = '{IMAGE}'\n\
             [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
             first = '192.168.122.10'\nlast = '192.168.122.30'\n\
             [[node]]\nname = 'n1'\nuri = '{}'\npool = 'default-pool'\n",
            self.db.url(),
            self.node.uri()
        )
    }

    fn spec(&self) -> String {
        format!(
            r#"{{"vcpus":1,"ram_mb":128,"purpose":"web","git":"{}"}}"#,
            self.git
        )
    }

    fn sql(&self, q: &str) -> String {
        self.db.sql(&format!("USE kvmfs; {q}"))
    }

    /// What the database and the node hold for instance `name`.
    fn traces(&self, name: &str) -> Traces {
        Traces {
            row: self
                .sql(&format!(
                    "SELECT state, COALESCE(hostname,'-'), made FROM vm WHERE vmname = '{name}'"
                ))
                .trim()
                .to_string(),
            addresses: self
                .sql(&format!(
                    "SELECT address FROM ip_alloc WHERE vmname = '{name}'"
                ))
                .lines()
                .map(str::to_string)
                .collect(),
            domain: self.node.domains().iter().any(|d| d == name),
            volumes: self
                .node
                .volumes()
                .into_iter()
                .filter(|v| v.starts_with(&format!("{name}.")))
                .collect(),
        }
    }
}

#[derive(Debug)]
struct Traces {
    row: String,
    addresses: BTreeSet<String>,
    domain: bool,
    volumes: BTreeSet<String>,
}

impl Traces {
    fn nothing(&self) -> bool {
        self.row.is_empty() && self.addresses.is_empty() && !self.domain && self.volumes.is_empty()
    }
}

fn crash_env(point: &str) -> [(&str, &str); 1] {
    [("KVMFS_CRASH_AT", point)]
}

/// Waits until the (re)started daemon sees its node: an operation refused for an offline
/// node would never reach its crash point.
fn node_online(m: &Mounted) {
    wait_online(m, &["n1"]);
}

/// Waits until an instance's status starts with one of `prefixes`.
fn wait_any(m: &Mounted, name: &str, prefixes: &[&str], limit: Duration) -> String {
    let p = m.path(&format!("instances/{name}/status"));
    let start = std::time::Instant::now();
    loop {
        let s = std::fs::read_to_string(&p).unwrap_or_default();
        if prefixes.iter().any(|x| s.starts_with(x)) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{name} reads {s:?}, not one of {prefixes:?}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The crash points of one operation (`create` or `delete`), in the order it reaches them.
fn points(op: &str) -> Vec<&'static str> {
    let prefix = format!("{op}:");
    kvmfs::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

#[test]
fn a_crash_at_every_step_of_a_create_is_finished_or_undone() {
    let rig = Rig::new();
    let cfg = rig.config("");
    let create = points("create");
    assert_eq!(create.len(), 11);
    let mut m = Mounted::with_config_env(&cfg, &crash_env(create[0]));
    for (i, point) in create.iter().enumerate() {
        if i > 0 {
            m.restart(&crash_env(point));
        }
        node_online(&m);
        let name = format!("c{i}");
        std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
        // The daemon dies during or after this write: its result says nothing.
        let _ = write_spec(&m, &name, &rig.spec());
        m.wait_killed_at(point);

        m.restart(&[]);
        let last = *point == "create:domain made";
        let status = wait_any(
            &m,
            &name,
            &["running", "failed: interrupted"],
            Duration::from_secs(20),
        );
        let t = rig.traces(&name);
        if last {
            // The domain was up when the daemon died: the build is finished.
            assert!(status.starts_with("running"), "{point}: {status}");
            assert!(t.row.starts_with("ready\tn1\t"), "{point}: {t:?}");
            assert!(t.domain, "{point}: {t:?}");
            assert_eq!(t.volumes.len(), 2, "{point}: {t:?}");
            assert_eq!(t.addresses.len(), 1, "{point}: {t:?}");
            assert_eq!(
                read(m.path(&format!("instances/{name}/ip"))).trim(),
                t.addresses.iter().next().unwrap()
            );
        } else {
            // Undone: the row is a failed instance that holds nothing anywhere.
            assert!(status.contains("during step"), "{point}: {status}");
            assert_eq!(t.row, "failed\t-", "{point}: {t:?}");
            assert!(
                t.addresses.is_empty() && !t.domain && t.volumes.is_empty(),
                "{point} left {t:?}"
            );
            assert!(
                read(m.path(&format!("instances/{name}/error"))).contains("interrupted"),
                "{point}"
            );
            // A failed instance takes a new spec, and builds.
            write_spec(&m, &name, &rig.spec()).unwrap();
            wait_status(&m, &name, "running");
        }
        assert!(
            m.log().contains("reconciliation"),
            "{point}: nothing in the log"
        );
        std::fs::remove_dir(m.path(&format!("instances/{name}"))).unwrap();
        let t = rig.traces(&name);
        assert!(t.nothing(), "{point}: rmdir left {t:?}");
        m.kill9();
    }
    assert_eq!(rig.sql("SELECT COUNT(*) FROM ip_alloc").trim(), "0");
}

#[test]
fn a_crash_at_every_step_of_a_delete_is_finished() {
    let rig = Rig::new();
    let cfg = rig.config("");
    let mut m = Mounted::with_config(&cfg);
    let delete = points("delete");
    assert_eq!(delete.len(), 4);
    for (i, point) in delete.iter().enumerate() {
        let name = format!("d{i}");
        std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
        write_spec(&m, &name, &rig.spec()).unwrap();
        wait_status(&m, &name, "running");
        m.kill9();
        m.restart(&crash_env(point));
        node_online(&m);
        wait_status(&m, &name, "running");

        let _ = std::fs::remove_dir(m.path(&format!("instances/{name}")));
        m.wait_killed_at(point);
        let t = rig.traces(&name);
        assert!(t.row.starts_with("deleting"), "{point}: {t:?}");

        m.restart(&[]);
        wait_for(Duration::from_secs(20), "the delete to be finished", || {
            !list(m.path("instances")).contains(&name)
        });
        let t = rig.traces(&name);
        assert!(t.nothing(), "{point} left {t:?}\n{}", m.log());
    }
    assert_eq!(rig.sql("SELECT COUNT(*) FROM ip_alloc").trim(), "0");
}

#[test]
fn another_daemon_takes_over_once_the_dead_one_s_lease_ends() {
    let rig = Rig::new();
    let cfg = rig.config("");
    let mut a = Mounted::with_config_env(&cfg, &crash_env("create:disk made"));
    node_online(&a);
    let b = Mounted::with_config(&cfg);
    std::fs::create_dir(a.path("instances/t1")).unwrap();
    let _ = write_spec(&a, "t1", &rig.spec());
    a.wait_died(Duration::from_secs(30));
    // The other daemon leaves it while the dead one's lease lasts, then undoes it.
    wait_any(&b, "t1", &["building"], Duration::from_secs(5));
    wait_any(&b, "t1", &["failed: interrupted"], Duration::from_secs(20));
    let t = rig.traces("t1");
    assert!(
        t.addresses.is_empty() && !t.domain && t.volumes.is_empty(),
        "{t:?}"
    );
    std::fs::remove_dir(b.path("instances/t1")).unwrap();
    assert!(rig.traces("t1").nothing());
}

#[test]
fn stray_addresses_are_released_and_foreign_volumes_are_reported_not_touched() {
    let rig = Rig::new();
    rig.node.virsh(&[
        "vol-create-as",
        "default-pool",
        "ghost.disk.qcow2",
        "1G",
        "--format",
        "qcow2",
    ]);
    let m = Mounted::with_config(&rig.config(""));
    rig.sql(
        "INSERT INTO ip_alloc (pool, address, vmname) VALUES ('default', '192.168.122.10', 'gone')",
    );
    wait_for(Duration::from_secs(10), "the stray address to go", || {
        rig.sql("SELECT COUNT(*) FROM ip_alloc").trim() == "0"
    });
    wait_for(
        Duration::from_secs(10),
        "the foreign volume in the log",
        || m.log().contains("ghost.disk.qcow2"),
    );
    assert!(rig.node.volumes().contains(&"ghost.disk.qcow2".to_string()));
    // Released addresses are handed out again.
    std::fs::create_dir(m.path("instances/s1")).unwrap();
    write_spec(&m, "s1", r#"{"vcpus":1,"ram_mb":128}"#).unwrap();
    wait_status(&m, "s1", "running");
    assert_eq!(read(m.path("instances/s1/ip")), "192.168.122.10\n");
}

//! Faults injected for real: a node's libvirtd killed or frozen with SIGSTOP, the daemon
//! stopped with SIGTERM or unmounted while the mount is busy and a build is under way.
//! Every check goes through the mount, and through MariaDB and the node.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";

fn config(db: &MariaDb, nodes: &[(&str, &Libvirtd)], extra: &str) -> String {
    let mut s = format!(
        "[database]\nurl = '{}'\n\
         [timing]\nrefresh_ms = 200\nlibvirt_timeout_ms = 2000\nreconcile_ms = 500\n{extra}\n\
         [instances]\ndefault_image = '{IMAGE}'\n\
         [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
         first = '192.168.122.10'\nlast = '192.168.122.60'\n",
        db.url()
    );
    for (name, d) in nodes {
        s.push_str(&format!(
            "[[node]]\nname = '{name}'\nuri = '{}'\npool = 'default-pool'\n",
            d.uri()
        ));
    }
    s
}

/// Mounts kvmfs on `nodes` and waits until it sees every one of them (a loaded machine can
/// make a first poll miss its deadline).
fn mount(db: &MariaDb, nodes: &[(&str, &Libvirtd)]) -> Mounted {
    let m = Mounted::with_config(&config(db, nodes, ""));
    let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    wait_online(&m, &names);
    m
}

const SMALL: &str = r#"{"vcpus":1,"ram_mb":128}"#;

fn create(m: &Mounted, name: &str, spec: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(m, name, spec).unwrap();
    wait_status(m, name, "running");
}

/// Every kind of read and a listing, each bounded: a hang detector, not a timing test.
fn reads_answer(m: &Mounted, what: &str) {
    let root = m.mnt.path().to_path_buf();
    within(Duration::from_secs(5), what, move || {
        for dir in ["nodes", "instances", "networks"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                for f in std::fs::read_dir(&p).unwrap() {
                    let f = f.unwrap().path();
                    if f.is_file() {
                        let _ = std::fs::read(&f);
                    }
                }
            }
        }
        let _ = std::fs::read(root.join("status"));
    });
}

#[test]
fn a_killed_node_reads_offline_is_skipped_and_comes_back() {
    let db = MariaDb::start();
    let mut n1 = Libvirtd::start(IMAGE);
    let n2 = Libvirtd::start(IMAGE);
    let m = mount(&db, &[("n1", &n1), ("n2", &n2)]);
    create(&m, "a1", r#"{"vcpus":1,"ram_mb":128,"node":"n1"}"#);

    n1.kill();
    wait_for(Duration::from_secs(10), "n1 to read offline", || {
        read(m.path("nodes/n1/status")).starts_with("offline")
    });
    assert_eq!(
        read(m.path("instances/a1/status")),
        "unknown: node n1 is offline\n"
    );
    reads_answer(&m, "reads with a dead node");

    // Placement skips it; forcing it is refused with the reason.
    create(&m, "a2", SMALL);
    assert_eq!(read(m.path("instances/a2/node")), "n2\n");
    std::fs::create_dir(m.path("instances/a3")).unwrap();
    let e = write_spec(&m, "a3", r#"{"vcpus":1,"ram_mb":128,"node":"n1"}"#).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC);
    assert!(read(m.path("instances/a3/error")).contains("n1 is offline"));

    // Its instances can't be deleted meanwhile, and nothing is lost trying.
    let e = std::fs::remove_dir(m.path("instances/a1")).unwrap_err();
    assert_eq!(errno(&e), libc::EIO);
    assert!(read(m.path("instances/a1/error")).contains("offline"));
    assert_eq!(
        db.sql("SELECT state FROM kvmfs.vm WHERE vmname = 'a1'")
            .trim(),
        "ready"
    );

    n1.restart(IMAGE);
    wait_for(Duration::from_secs(15), "n1 to come back", || {
        read(m.path("nodes/n1/status")) == "online\n"
    });
    // The test driver forgot its domains with its daemon: the row says so, loudly.
    assert!(read(m.path("instances/a1/status")).starts_with("missing"));
    std::fs::remove_dir(m.path("instances/a1")).unwrap();
    std::fs::remove_dir(m.path("instances/a2")).unwrap();
    std::fs::remove_dir(m.path("instances/a3")).unwrap();
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.vm").trim(), "0");
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc").trim(), "0");
}

#[test]
fn a_frozen_node_blocks_nothing_and_thaws_with_its_instances() {
    let db = MariaDb::start();
    let n1 = Libvirtd::start(IMAGE);
    let n2 = Libvirtd::start(IMAGE);
    let m = mount(&db, &[("n1", &n1), ("n2", &n2)]);
    create(&m, "f1", r#"{"vcpus":1,"ram_mb":128,"node":"n1"}"#);

    n1.freeze();
    wait_for(Duration::from_secs(10), "n1 to read offline", || {
        read(m.path("nodes/n1/status")).starts_with("offline")
    });
    assert!(read(m.path("instances/f1/status")).starts_with("unknown"));
    // Again and again while it stays frozen: reads, a create elsewhere, a refused ctl.
    for round in 0..3 {
        reads_answer(&m, "reads with a frozen node");
        let name = format!("g{round}");
        let mp = m.mnt.path().to_path_buf();
        within(
            Duration::from_secs(10),
            "a create beside a frozen node",
            move || {
                std::fs::create_dir(mp.join(format!("instances/{name}"))).unwrap();
                std::fs::write(mp.join(format!("instances/{name}/spec.json")), SMALL).unwrap();
            },
        );
        let mp = m.mnt.path().to_path_buf();
        let e = within(Duration::from_secs(5), "ctl on a frozen node", move || {
            std::fs::write(mp.join("instances/f1/ctl"), "stop").unwrap_err()
        });
        assert_eq!(errno(&e), libc::EIO);
    }
    for round in 0..3 {
        let name = format!("g{round}");
        wait_status(&m, &name, "running");
        assert_eq!(read(m.path(&format!("instances/{name}/node"))), "n2\n");
    }

    n1.thaw();
    wait_for(Duration::from_secs(20), "n1 to come back", || {
        read(m.path("nodes/n1/status")) == "online\n"
    });
    wait_status(&m, "f1", "running");
    std::fs::write(m.path("instances/f1/ctl"), "destroy").unwrap();
    wait_status(&m, "f1", "shutoff");
}

/// A git URL whose server accepts and never answers: the build waits in `checking git`.
fn silent_git(s: &SilentServer) -> String {
    format!("git://127.0.0.1:{}/site.git", s.port)
}

#[test]
fn sigterm_lets_a_build_under_way_end_and_leaves_no_mount() {
    let db = MariaDb::start();
    let n1 = Libvirtd::start(IMAGE);
    let silent = SilentServer::start();
    let mut m = mount(&db, &[("n1", &n1)]);
    std::fs::create_dir(m.path("instances/s1")).unwrap();
    let spec = format!(
        r#"{{"vcpus":1,"ram_mb":128,"purpose":"web","git":"{}"}}"#,
        silent_git(&silent)
    );
    write_spec(&m, "s1", &spec).unwrap();
    wait_status(&m, "s1", "building: checking git");

    // A shell sits inside the mount: unmounting must not leave a dead mount behind.
    let mut shell = Command::new("sleep")
        .arg("600")
        .current_dir(m.path("instances"))
        .spawn()
        .unwrap();
    let pid = m.pid();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let mnt: PathBuf = m.mnt.path().to_path_buf();
    wait_for(Duration::from_secs(5), "the mount to go", || {
        !is_kvmfs_mount(&mnt)
    });
    // The daemon waits for the build, which gives up on the silent server and undoes
    // itself, then exits.
    let st = m.wait_died(Duration::from_secs(40));
    assert_eq!(st.code(), Some(0), "{st}\n{}", m.log());
    assert!(
        m.log().contains("waiting for operations under way"),
        "{}",
        m.log()
    );
    let row = db.sql("SELECT state FROM kvmfs.vm WHERE vmname = 's1'");
    assert_eq!(row.trim(), "failed", "{row}");
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc").trim(), "0");
    let _ = shell.kill();
    let _ = shell.wait();
    let stale = Command::new("grep")
        .arg(mnt.to_string_lossy().as_ref())
        .arg("/proc/self/mountinfo")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(!stale.success(), "a mount is left at {}", mnt.display());
}

#[test]
fn unmount_while_busy_is_refused_and_a_lazy_one_ends_the_daemon_cleanly() {
    let db = MariaDb::start();
    let n1 = Libvirtd::start(IMAGE);
    let mut m = mount(&db, &[("n1", &n1)]);
    create(&m, "u1", SMALL);
    let mut shell = Command::new("sleep")
        .arg("600")
        .current_dir(m.path("instances/u1"))
        .spawn()
        .unwrap();
    let busy = Command::new("fusermount3")
        .arg("-u")
        .arg(m.mnt.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!busy.success(), "unmounting a busy mount succeeded");
    assert_eq!(read(m.path("instances/u1/status")), "running: booted\n");

    let start = Instant::now();
    let lazy = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(m.mnt.path())
        .status()
        .unwrap();
    assert!(lazy.success());
    assert!(!is_kvmfs_mount(m.mnt.path()));
    let _ = shell.kill();
    let _ = shell.wait();
    let st = m.wait_died(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{st} after {:?}", start.elapsed());
    assert!(st.signal().is_none());
    // Nothing was lost: the instance is still there for the next mount.
    let m2 = mount(&db, &[("n1", &n1)]);
    assert_eq!(read(m2.path("instances/u1/status")), "running: booted\n");
}

#[test]
fn a_copy_of_the_mount_in_another_namespace_does_not_keep_the_daemon_alive() {
    // Any process that makes a mount namespace (a service with a private /tmp, a libvirtd of
    // a test) copies every mount, this one too; the FUSE session then outlives an unmount
    // here, and only the daemon's own watch tells it that its mount is gone.
    let mut m = Mounted::demo();
    let mut other_ns = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "600"])
        .spawn()
        .unwrap();
    // The copy exists once the child runs `sleep` in a mount namespace of its own.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    wait_for(Duration::from_secs(10), "the other mount namespace", || {
        let pid = other_ns.id().to_string();
        ns(&pid).is_some()
            && ns(&pid) != ns("self")
            && read(format!("/proc/{pid}/comm")).trim() == "sleep"
    });
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(m.mnt.path())
        .status()
        .unwrap();
    assert!(st.success());
    let st = m.wait_died(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{st}\n{}", m.log());
    assert!(m.log().contains("the mount is gone"), "{}", m.log());
    let _ = other_ns.kill();
    let _ = other_ns.wait();
}

//! Freshness with the kernel's caches on: names, attributes and file pages are cached by the
//! kernel for `kernel_cache_ms` (60 s by default), so each test here waits far less than that
//! and fails if kvmfs did not invalidate what changed — through this mount, through another
//! mount's database rows, or on the node itself (a domain event from libvirtd).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";

fn write(p: impl AsRef<Path>, s: &str) -> std::io::Result<()> {
    std::fs::write(p, s)
}

/// Reads `p` until it starts with `prefix`, at most `limit`; returns what it read last.
fn wait_read(p: &Path, prefix: &str, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        if s.starts_with(prefix) || t.elapsed() > limit {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn changes_through_the_mount_are_read_back_at_once() {
    let nodes = tempfile::tempdir().unwrap();
    let uri = sim_node(nodes.path(), "kvm1", &SimNode::new(8, 8192));
    let m = Mounted::with_config(&format!(
        "[timing]\nrefresh_ms = 60000\n[[node]]\nname = 'kvm1'\nuri = '{uri}'\n"
    ));
    std::fs::create_dir(m.path("instances/x")).unwrap();
    let status = m.path("instances/x/status");
    // Read (and so cache) the draft's files before each change.
    assert_eq!(read(&status), "draft: waiting for spec.json\n");
    assert_eq!(read(m.path("instances/x/node")), "");
    let before = std::fs::metadata(&status).unwrap();
    write(
        m.path("instances/x/spec.json"),
        r#"{"vcpus":1,"ram_mb":128}"#,
    )
    .unwrap();
    // The node's poll is a minute away: `running` comes from the build itself.
    assert_eq!(
        wait_read(&status, "running", Duration::from_secs(20)),
        "running: booted\n"
    );
    assert_eq!(read(m.path("instances/x/node")), "kvm1\n");
    let after = std::fs::metadata(&status).unwrap();
    assert_eq!(
        after.len(),
        "running: booted\n".len() as u64,
        "stat agrees with read"
    );
    assert!(after.mtime_nsec() != before.mtime_nsec() || after.mtime() != before.mtime());

    // ctl answers once the change is visible: the very next read shows it.
    write(m.path("instances/x/ctl"), "destroy").unwrap();
    assert_eq!(read(&status), "shutoff: destroyed\n");
    assert_eq!(
        std::fs::metadata(&status).unwrap().len(),
        "shutoff: destroyed\n".len() as u64
    );
    write(m.path("instances/x/ctl"), "start").unwrap();
    assert_eq!(read(&status), "running: booted\n");

    // A refused spec shows in `error` at once.
    std::fs::create_dir(m.path("instances/y")).unwrap();
    assert_eq!(read(m.path("instances/y/error")), "");
    let e = write(m.path("instances/y/spec.json"), r#"{"flavor":"m9.huge"}"#).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);
    assert!(read(m.path("instances/y/error")).contains("unknown flavor"));

    // Gone at once, names included.
    std::fs::remove_dir(m.path("instances/x")).unwrap();
    let e = std::fs::metadata(&status).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert!(!list(m.path("instances")).contains(&"x".to_string()));
    assert!(list(m.path("nodes/kvm1/instances")).is_empty());
}

#[test]
fn another_mounts_changes_reach_this_mounts_cached_files() {
    let shared = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let uri = sim_node(nodes.path(), "kvm1", &SimNode::new(8, 8192));
    let cfg = format!(
        "[database]\nurl = 'sqlite://{}/k.db'\n[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'kvm1'\nuri = '{uri}'\n",
        shared.path().display()
    );
    let a = Mounted::with_config(&cfg);
    let b = Mounted::with_config(&cfg);
    std::fs::create_dir(a.path("instances/y")).unwrap();
    let in_b = b.path("instances/y/status");
    wait_for(Duration::from_secs(10), "b to list y", || {
        list(b.path("instances")).contains(&"y".to_string())
    });
    assert_eq!(read(&in_b), "draft: waiting for spec.json\n");
    let size_before = std::fs::metadata(&in_b).unwrap().len();

    // Built by a: b has the row at its next database poll, and its cached page and size go.
    write(
        a.path("instances/y/spec.json"),
        r#"{"vcpus":1,"ram_mb":128}"#,
    )
    .unwrap();
    assert_eq!(
        wait_read(
            &a.path("instances/y/status"),
            "running",
            Duration::from_secs(20)
        ),
        "running: booted\n"
    );
    // b's own connection to the test node has no such domain (the test driver keeps a node
    // per connection), so b shows the row's node without a domain.
    let s = wait_read(&in_b, "missing", Duration::from_secs(10));
    assert_eq!(s, "missing: no domain on node kvm1\n");
    let m = std::fs::metadata(&in_b).unwrap();
    assert_eq!(m.len(), s.len() as u64);
    assert_ne!(m.len(), size_before);

    // Deleted by a: gone from b without waiting for b's cached name to expire.
    std::fs::remove_dir(a.path("instances/y")).unwrap();
    wait_for(Duration::from_secs(10), "y to leave b", || {
        std::fs::metadata(&in_b).is_err() && !list(b.path("instances")).contains(&"y".into())
    });
}

/// Defines a domain `extra` on `d` behind kvmfs's back, waits until `m` shows it, and
/// returns the path of its `status`.
fn define_extra(d: &Libvirtd, m: &Mounted) -> std::path::PathBuf {
    let xml = d.dir.path().join("extra.xml");
    std::fs::write(
        &xml,
        "<domain type='test'><name>extra</name><memory>131072</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os></domain>",
    )
    .unwrap();
    d.virsh(&["define", xml.to_str().unwrap()]);
    let extra = m.path("instances/extra/status");
    assert_eq!(
        wait_read(&extra, "shutoff", Duration::from_secs(10)),
        "shutoff\n"
    );
    extra
}

#[test]
fn status_follows_a_domain_change_made_outside_kvmfs() {
    let d = Libvirtd::start(IMAGE);
    d.virsh(&["start", "test"]);
    // Polled every ten minutes: only the domain event can bring the change within the test.
    let m = Mounted::with_config(&format!(
        "[timing]\nrefresh_ms = 600000\n[[node]]\nname = 'n1'\nuri = '{}'\npool = 'default-pool'\n",
        d.uri()
    ));
    let status = m.path("instances/test/status");
    assert_eq!(read(&status), "running: booted\n");
    assert!(read(m.path("nodes/n1/info.json")).contains("\"active_instances\": 1"));

    // Another client of the same libvirtd changes the domain.
    d.virsh(&["destroy", "test"]);
    let s = wait_read(&status, "shutoff", Duration::from_secs(10));
    assert_eq!(s, "shutoff: destroyed\n", "{}", m.log());
    assert_eq!(std::fs::metadata(&status).unwrap().len(), s.len() as u64);
    d.virsh(&["start", "test"]);
    assert_eq!(
        wait_read(&status, "running", Duration::from_secs(10)),
        "running: booted\n"
    );

    // A domain defined and undefined outside kvmfs comes and goes.
    let extra = define_extra(&d, &m);
    d.virsh(&["undefine", "extra"]);
    wait_for(Duration::from_secs(10), "extra to go", || {
        std::fs::metadata(&extra).is_err()
    });
}

/// A node's daemon that dies and comes back lost every event in between: kvmfs learns of the
/// lost connection (libvirt's close callback, or the next call failing), and lists the node
/// whole on the new connection, so what changed meanwhile shows although the node is
/// otherwise listed whole only every ten minutes.
#[test]
fn a_node_daemon_that_died_is_listed_whole_on_the_new_connection() {
    let mut d = Libvirtd::start(IMAGE);
    let m = Mounted::with_config(&format!(
        "[timing]\nrefresh_ms = 200\nfull_poll_ms = 600000\n\
         [[node]]\nname = 'n1'\nuri = '{}'\npool = 'default-pool'\n",
        d.uri()
    ));
    let extra = define_extra(&d, &m);
    // The new daemon starts from the test driver's initial state, without `extra`; no
    // event ever says it went.
    d.restart(IMAGE);
    wait_for(Duration::from_secs(20), "extra to go", || {
        std::fs::metadata(&extra).is_err()
    });
    assert!(!list(m.path("instances")).contains(&"extra".to_string()));
}

//! Moving instances and draining nodes as hostile and careless users would, through the
//! kernel (docs/SEMANTICS.md, "Moving an instance", "Draining a node"): two mounts moving
//! one instance at the same moment, a move racing an `rmdir` on another mount, a target
//! node frozen under a move, a write through a descriptor of a deleted incarnation, a drain
//! with an instance that cannot move, and garbage written to `node` and `nodes/N/ctl`. Real
//! libvirtds serving the test driver (pools declared one shared storage) and MariaDB; the
//! test driver moves a domain by its definition, at once.

mod common;

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::nodes::*;
use common::rig::errno_of;
use common::users::HeldOpen;
use common::*;

/// Waits until mount `m` shows `name` running on `node`, managed (its `node` writable: a
/// mount may list a domain a poll before the row another mount wrote).
fn seen_on(m: &Mounted, name: &str, node: &str) {
    use std::os::unix::fs::PermissionsExt;
    wait_for(Duration::from_secs(20), "the mount to see it", || {
        std::fs::metadata(m.path(&format!("instances/{name}/node")))
            .is_ok_and(|md| md.permissions().mode() & 0o200 != 0)
            && std::fs::read_to_string(m.path(&format!("instances/{name}/node")))
                .is_ok_and(|n| n.trim() == node)
            && std::fs::read_to_string(m.path(&format!("instances/{name}/status")))
                .is_ok_and(|s| s.starts_with("running"))
    });
}

/// Runs `a` and `b` on two threads released together; their results.
fn at_once<A: Send + 'static, B: Send + 'static>(
    a: impl FnOnce() -> A + Send + 'static,
    b: impl FnOnce() -> B + Send + 'static,
) -> (A, B) {
    let go = Arc::new(Barrier::new(2));
    let g = go.clone();
    let ta = std::thread::spawn(move || {
        g.wait();
        a()
    });
    go.wait();
    let rb = b();
    (ta.join().unwrap(), rb)
}

#[test]
fn two_mounts_moving_one_instance_at_once_move_it_once() {
    let nodes = Nodes::new(3);
    let cfg = nodes.config();
    let a = Mounted::with_config(&cfg);
    let b = Mounted::with_config(&cfg);
    for m in [&a, &b] {
        wait_online(m, &["n1", "n2", "n3"]);
    }
    // Several rounds: each a fresh instance on n1, moved to n2 on one mount and to n3 on
    // the other at the same moment.
    for round in 0..4 {
        let name = format!("race{round}");
        built_on(&a, &name, "n1");
        seen_on(&b, &name, "n1");
        let (pa, pb) = (
            a.path(&format!("instances/{name}/node")),
            b.path(&format!("instances/{name}/node")),
        );
        let (ra, rb) = at_once(
            move || std::fs::write(pa, "n2\n"),
            move || std::fs::write(pb, "n3\n"),
        );
        let (ea, eb) = (errno_of(ra), errno_of(rb));
        for m in [&a, &b] {
            settled(m, &name);
        }
        let at = nodes.one_where_the_row_says(&name, &a);
        match (ea, eb) {
            // One move; the other was refused while it ran.
            (0, libc::EBUSY) => assert_eq!(at, "n2", "{round}"),
            (libc::EBUSY, 0) => assert_eq!(at, "n3", "{round}"),
            // One after the other: the second moved it on.
            (0, 0) => assert!(at == "n2" || at == "n3", "{round}: {at}"),
            other => panic!("{round}: errnos {other:?}\n{}\n{}", a.log(), b.log()),
        }
        for m in [&a, &b] {
            wait_for(Duration::from_secs(20), "both mounts to agree", || {
                std::fs::read_to_string(m.path(&format!("instances/{name}/node")))
                    .is_ok_and(|n| n.trim() == at)
            });
        }
    }

    // A move on one mount while the other removes the instance.
    for round in 0..3 {
        let name = format!("gone{round}");
        built_on(&a, &name, "n1");
        seen_on(&b, &name, "n1");
        let pa = a.path(&format!("instances/{name}/node"));
        let pb = b.path(&format!("instances/{name}"));
        let (mv, rm) = at_once(
            move || std::fs::write(pa, "n2\n"),
            move || std::fs::remove_dir(pb),
        );
        let (emv, erm) = (errno_of(mv), errno_of(rm));
        if erm == 0 {
            // Removed (before the move, or after it): nothing of it anywhere.
            assert!(
                matches!(emv, 0 | libc::ESTALE | libc::ENOENT | libc::EBUSY),
                "{round}: move {emv}"
            );
            assert!(nodes.copies(&name).is_empty(), "{round}\n{}", b.log());
            assert_eq!(nodes.row(&name), "", "{round}");
        } else {
            // The rmdir was refused while it moved; it moved (or stayed) whole.
            assert_eq!(erm, libc::EBUSY, "{round}: rmdir\n{}", b.log());
            assert!(matches!(emv, 0 | libc::EBUSY), "{round}: move {emv}");
            settled(&a, &name);
            let at = nodes.one_where_the_row_says(&name, &a);
            if emv == 0 {
                assert_eq!(at, "n2");
            }
            std::fs::remove_dir(a.path(&format!("instances/{name}"))).unwrap();
            assert!(nodes.copies(&name).is_empty());
        }
    }
}

/// Every read-side file op on the instance, its nodes and the roots answers within `limit`.
fn all_answer(m: &Mounted, name: &str, limit: Duration) {
    let paths: Vec<std::path::PathBuf> = [
        format!("instances/{name}/status"),
        format!("instances/{name}/node"),
        format!("instances/{name}/info.json"),
        format!("instances/{name}/error"),
        "nodes/n1/status".into(),
        "nodes/n2/status".into(),
        "nodes/n2/info.json".into(),
    ]
    .iter()
    .map(|p| m.path(p))
    .collect();
    let dirs: Vec<std::path::PathBuf> = ["instances", "nodes/n1/instances", "nodes/n2/instances"]
        .iter()
        .map(|p| m.path(p))
        .collect();
    within(limit, "reads while a node is frozen", move || {
        for p in &paths {
            let _ = std::fs::read(p);
        }
        for d in &dirs {
            let _ = std::fs::read_dir(d).map(|r| r.count());
        }
    });
}

#[test]
fn a_frozen_target_keeps_every_answer_bounded_and_the_move_settles_after_thaw() {
    let nodes = Nodes::new(2);
    // A short migration bound, so that the move also gives up while the node is frozen.
    let m = Mounted::with_config(&nodes.config_with("migrate_timeout_ms = 3000"));
    wait_online(&m, &["n1", "n2"]);
    // op_timeout_ms (1.8 s) + 0.25 s is the hard bound of a write; slack for a busy machine.
    let bound = Duration::from_millis(1800 + 250 + 3000);

    // Frozen before the move, and known to be: refused, nothing changes.
    built_on(&m, "web1", "n1");
    nodes.node("n2").freeze();
    wait_for(Duration::from_secs(30), "n2 to read offline", || {
        read(m.path("nodes/n2/status")).starts_with("offline")
    });
    let p = m.path("instances/web1/node");
    let r = within(bound, "a move to a frozen node", move || {
        std::fs::write(p, "n2\n")
    });
    assert_eq!(errno_of(r), libc::EIO);
    assert!(error_of(&m, "web1").contains("n2 is offline"));
    all_answer(&m, "web1", bound);
    assert!(read(m.path("instances/web1/status")).starts_with("running"));
    nodes.node("n2").thaw();
    wait_online(&m, &["n1", "n2"]);
    assert_eq!(nodes.one_where_the_row_says("web1", &m), "n1");

    // Frozen right before the move, not yet known: the move is recorded and hangs in
    // libvirt. Every answer stays bounded; status says it is moving or where it runs.
    for round in 0..3 {
        let from = nodes.one_where_the_row_says("web1", &m);
        let to = if from == "n1" { "n2" } else { "n1" };
        nodes.node(to).freeze();
        let p = m.path("instances/web1/node");
        let t = to.to_string();
        let r = within(bound, "a move to a node just frozen", move || {
            std::fs::write(p, format!("{t}\n"))
        });
        // Success (it goes on), or EIO (the node was seen offline first).
        let e = errno_of(r);
        assert!(matches!(e, 0 | libc::EIO), "{round}: {e}");
        all_answer(&m, "web1", bound);
        let status = read(m.path("instances/web1/status"));
        assert!(
            status.starts_with("migrating") || status.starts_with("running"),
            "{round}: {status}"
        );
        for (what, path, text) in [
            ("rmdir", "instances/web1", None),
            ("ctl", "instances/web1/ctl", Some("reboot\n")),
            ("node", "instances/web1/node", Some("n1\n")),
        ] {
            let p = m.path(path);
            let r = within(bound, what, move || match text {
                None => std::fs::remove_dir(p),
                Some(t) => std::fs::write(p, t),
            });
            if status.starts_with("migrating") {
                assert!(
                    matches!(errno_of(r), libc::EBUSY | libc::EIO),
                    "{round}: {what} while it moves"
                );
            }
        }
        // Once the move passed its bound and was aborted (its call still waited for, the
        // instance `migrating` until it returns), or could not tell where it is, the node
        // thaws.
        if e == 0 {
            wait_for(Duration::from_secs(30), "the move to be aborted", || {
                m.log()
                    .matches("cannot tell where the migration left it")
                    .count()
                    > round
                    || m.log().matches("migration past its bound").count() > round
            });
            let status = read(m.path("instances/web1/status"));
            assert!(status.starts_with("migrating"), "{round}: {status}");
        }
        nodes.node(to).thaw();
        wait_online(&m, &["n1", "n2"]);
        let status = settled(&m, "web1");
        assert!(status.starts_with("running"), "{round}: {status}");
        // Whatever the abandoned libvirt call does after the thaw, one domain is left, where
        // the row says; the reconciliation had its say by then.
        wait_for(
            Duration::from_secs(30),
            "one domain where the row says",
            || {
                let c = nodes.copies("web1");
                c.len() == 1 && nodes.row("web1") == format!("ready\t{}", c[0])
            },
        );
        let at = nodes.one_where_the_row_says("web1", &m);
        wait_for(Duration::from_secs(20), "the mount to show it", || {
            read(m.path("instances/web1/node")).trim() == at
        });
    }
}

#[test]
fn a_write_through_a_descriptor_of_a_deleted_incarnation_moves_nothing() {
    let nodes = Nodes::new(2);
    let m = Mounted::with_config(&nodes.config());
    wait_online(&m, &["n1", "n2"]);
    built_on(&m, "web1", "n1");
    let old = HeldOpen::open(None, &m.path("instances/web1/node"), libc::O_WRONLY).unwrap();
    let old_rw = HeldOpen::open(None, &m.path("instances/web1/node"), libc::O_RDWR).unwrap();
    std::fs::remove_dir(m.path("instances/web1")).unwrap();
    built_on(&m, "web1", "n1");
    assert_eq!(old.pwrite(b"n2\n"), Err(libc::ESTALE));
    assert_eq!(old_rw.pwrite(b"n2"), Err(libc::ESTALE));
    assert_eq!(old_rw.pread(), Err(libc::ESTALE));
    assert_eq!(nodes.one_where_the_row_says("web1", &m), "n1");
    assert_eq!(read(m.path("instances/web1/node")), "n1\n");
    assert_eq!(error_of(&m, "web1"), "", "the new one is not blamed");
    // Deleted and not made again: ESTALE too.
    drop(old);
    let old = HeldOpen::open(None, &m.path("instances/web1/node"), libc::O_WRONLY).unwrap();
    std::fs::remove_dir(m.path("instances/web1")).unwrap();
    assert_eq!(old.pwrite(b"n2\n"), Err(libc::ESTALE));
    assert!(nodes.copies("web1").is_empty());
}

#[test]
fn a_drain_leaves_what_cannot_move_with_its_reason_and_moves_nothing_twice() {
    let nodes = Nodes::new(2);
    let m = Mounted::with_config(&nodes.config());
    wait_online(&m, &["n1", "n2"]);
    let info = read_json(m.path("nodes/n2/info.json"));
    // Half the node's memory and a bit: two of these never fit on one node.
    let total = info["capacity_ram_mb"]
        .as_u64()
        .unwrap_or_else(|| panic!("{info}"));
    let big = total / 2 + 64;
    built_with(&m, "filler", &spec("n2", big));
    built_with(&m, "big", &spec("n1", big));
    for name in ["s1", "s2"] {
        built_on(&m, name, "n1");
    }
    std::fs::write(m.path("nodes/n1/ctl"), "drain\n").unwrap();
    // A second drain while the first runs, and a third through `echo`: nothing moves twice.
    std::fs::write(m.path("nodes/n1/ctl"), "drain\n").unwrap();
    std::fs::write(m.path("nodes/n1/ctl"), "drain").unwrap();
    for name in ["s1", "s2"] {
        wait_for(Duration::from_secs(60), "the small ones to move", || {
            nodes.row(name) == "ready\tn2"
        });
        assert_eq!(nodes.one_where_the_row_says(name, &m), "n2");
    }
    wait_for(Duration::from_secs(30), "big's error to say why", || {
        error_of(&m, "big").contains("no node can take this instance")
    });
    assert_eq!(nodes.one_where_the_row_says("big", &m), "n1");
    assert!(read(m.path("instances/big/status")).starts_with("running"));
    // Each small one moved exactly once: one "migrated" line each.
    for name in ["s1", "s2"] {
        let moves = m
            .log()
            .lines()
            .filter(|l| l.contains(" migrated") && l.contains(&format!("\"{name}\"")))
            .count();
        assert_eq!(moves, 1, "{name}\n{}", m.log());
    }
    // Undrain: big stays, and n1 takes instances again.
    std::fs::write(m.path("nodes/n1/ctl"), "undrain\n").unwrap();
    assert_eq!(read(m.path("nodes/n1/status")), "online\n");
    std::fs::write(m.path("instances/s1/node"), "n1\n").unwrap();
    assert_eq!(nodes.one_where_the_row_says("s1", &m), "n1");
    assert_eq!(nodes.one_where_the_row_says("big", &m), "n1");

    // Its only target drained too: n2 drained first moves s2 to n1 (filler does not fit
    // beside big), then n1 drained has nowhere to send anything.
    std::fs::write(m.path("nodes/n2/ctl"), "drain\n").unwrap();
    wait_for(Duration::from_secs(60), "s2 to leave n2", || {
        nodes.row("s2") == "ready\tn1"
    });
    std::fs::write(m.path("nodes/n1/ctl"), "drain\n").unwrap();
    for name in ["s1", "s2"] {
        wait_for(Duration::from_secs(30), "the error to say why", || {
            error_of(&m, name).contains("n2 is drained")
        });
        assert_eq!(nodes.one_where_the_row_says(name, &m), "n1");
    }
    assert_eq!(nodes.one_where_the_row_says("big", &m), "n1");
    assert_eq!(nodes.one_where_the_row_says("filler", &m), "n2");
    // Undrained, n2 takes them again at the next reconciliation, and nothing is lost.
    std::fs::write(m.path("nodes/n2/ctl"), "undrain\n").unwrap();
    wait_for(Duration::from_secs(60), "s1 and s2 to leave n1", || {
        nodes.row("s1") == "ready\tn2" && nodes.row("s2") == "ready\tn2"
    });
    for name in ["s1", "s2", "filler"] {
        assert_eq!(nodes.one_where_the_row_says(name, &m), "n2");
    }
    assert_eq!(nodes.one_where_the_row_says("big", &m), "n1");
    std::fs::write(m.path("nodes/n1/ctl"), "undrain\n").unwrap();
}

/// A write of `data` at `offset` through a file opened with `flags`; its errno.
fn write_raw(path: &Path, flags: i32, offset: Option<u64>, data: &[u8]) -> i32 {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) => return errno(&e),
    };
    let r = match offset {
        Some(o) => f.write_at(data, o).map(|_| ()),
        None => f.write_all(data),
    };
    r.err().map_or(0, |e| errno(&e))
}

#[test]
fn garbage_written_to_node_and_to_a_node_ctl_is_einval_and_changes_nothing() {
    let nodes = Nodes::new(2);
    let m = Mounted::with_config(&nodes.config());
    wait_online(&m, &["n1", "n2"]);
    built_on(&m, "web1", "n1");
    let node = m.path("instances/web1/node");
    let ctl = m.path("nodes/n1/ctl");
    let long = "n2".repeat(100_000);
    let mut binary: Vec<u8> = (0..=255u8).collect();
    binary.extend_from_slice(b"n2\n");
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("binary", binary),
        ("NUL inside", b"n2\0\n".to_vec()),
        ("invalid UTF-8", b"n\xff2\n".to_vec()),
        ("two names", b"n2\nn1\n".to_vec()),
        ("long", long.clone().into_bytes()),
        ("long name", format!("n{}\n", "2".repeat(300)).into_bytes()),
        ("blank", b"\n".to_vec()),
        ("spaces inside", b"n 2\n".to_vec()),
    ];
    for (what, data) in &garbage {
        assert_eq!(
            write_raw(&node, libc::O_TRUNC, None, data),
            libc::EINVAL,
            "node: {what}"
        );
        assert_eq!(
            write_raw(&ctl, libc::O_TRUNC, None, data),
            libc::EINVAL,
            "ctl: {what}"
        );
    }
    for (what, data) in [
        ("drain twice", b"drain\ndrain\n".to_vec()),
        ("drain and more", b"drain now\n".to_vec()),
        ("DRAIN", b"DRAIN\n".to_vec()),
        ("long", "drain ".repeat(50_000).into_bytes()),
    ] {
        assert_eq!(
            write_raw(&ctl, libc::O_TRUNC, None, &data),
            libc::EINVAL,
            "ctl: {what}"
        );
    }
    // Partial writes: a name in pieces, each piece on its own is no node.
    for piece in [&b"n"[..], b"2", b"\n"] {
        assert_eq!(write_raw(&node, 0, Some(0), piece), libc::EINVAL);
    }
    for piece in [&b"dr"[..], b"ain\n"] {
        assert_eq!(write_raw(&ctl, 0, Some(0), piece), libc::EINVAL);
    }
    // A name followed by more than the kernel sends in one request: the first request
    // holds the name, the next only blanks; the whole write is refused, nothing moves.
    let padded = format!("n2{}", " ".repeat(4_000_000));
    assert_eq!(write_raw(&node, 0, None, padded.as_bytes()), libc::EINVAL);
    let padded = format!("drain{}", " ".repeat(4_000_000));
    assert_eq!(write_raw(&ctl, 0, None, padded.as_bytes()), libc::EINVAL);
    // Nothing changed.
    assert_eq!(nodes.one_where_the_row_says("web1", &m), "n1");
    assert_eq!(read(m.path("nodes/n1/status")), "online\n");
    assert_eq!(read(m.path("nodes/n2/status")), "online\n");
    assert_eq!(read(m.path("instances/web1/node")), "n1\n");
    assert_eq!(read(&ctl), "drain undrain\n");
    assert!(read(m.path("instances/web1/status")).starts_with("running"));
    // And what is right still works: each write(2) is read on its own, at any offset
    // (`echo n2 >> node` too), as a `ctl` command is.
    assert_eq!(write_raw(&node, libc::O_APPEND, None, b"n2\n"), 0);
    assert_eq!(nodes.one_where_the_row_says("web1", &m), "n2");
    assert_eq!(write_raw(&node, 0, Some(7), b"n1"), 0);
    assert_eq!(nodes.one_where_the_row_says("web1", &m), "n1");
}

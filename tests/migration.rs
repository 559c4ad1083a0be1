//! Moving instances between nodes through the kernel (docs/SEMANTICS.md, "Moving an
//! instance", "Draining a node"), against two real libvirtds serving the test driver whose
//! pools are declared one shared storage, with MariaDB: `echo NODE > node` (seen by `virsh`
//! on both nodes, snapshots kept), every refusal with its errno from a shell and from
//! another user, `echo drain > nodes/N/ctl`, and `kill -9` at every step of a move, after
//! which exactly one domain is left, on the node the row names. The live path on real QEMU
//! is the lab's (tests/e2e.rs): the test driver has no migration, and its domains move by
//! definition.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nodes::*;
use common::rig::errno_of;
use common::users::{Op, User, as_user};
use common::*;

/// A spec of a small instance forced onto `node`.
fn spec_of(node: &str) -> String {
    spec(node, 128)
}

/// `echo TEXT > PATH` in a shell: its exit status and what it printed.
fn echo_into(path: &std::path::Path, text: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo '{text}' > '{}'", path.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_instance_moves_between_libvirt_nodes_with_its_snapshots_and_refusals_are_clear() {
    let two = Nodes::new(2);
    let m = Mounted::with_config_args(&two.config(), &["--allow-other"]);
    wait_online(&m, &["n1", "n2"]);
    built_on(&m, "web1", "n1");
    let ip = read(m.path("instances/web1/ip"));
    std::fs::create_dir(m.path("instances/web1/snapshots/s1")).unwrap();
    assert_eq!(two.node("n1").snapshots("web1"), ["s1"]);

    let (ok, err) = echo_into(&m.path("instances/web1/node"), "n2");
    assert!(ok, "{err}\n{}", m.log());
    assert!(settled(&m, "web1").starts_with("running"));
    assert_eq!(read(m.path("instances/web1/node")), "n2\n");
    assert_eq!(
        two.copies_with_state("web1"),
        [("n2".to_string(), "running".to_string())]
    );
    assert_eq!(two.node("n2").snapshots("web1"), ["s1"], "snapshots follow");
    assert_eq!(read(m.path("instances/web1/ip")), ip);
    assert_eq!(two.row("web1"), "ready\tn2");
    // (The test driver's own domain `test` is on both: one is `test@n2`.)
    let mine = |n: &str| -> Vec<String> {
        let mut l = list(m.path(&format!("nodes/{n}/instances")));
        l.retain(|i| !i.starts_with("test"));
        l
    };
    assert_eq!(mine("n2"), ["web1"]);
    assert!(mine("n1").is_empty());
    assert_eq!(read(m.path("instances/web1/error")), "");

    // Refusals, from a shell: each with its errno and its reason in `error`.
    for (text, errno, why) in [
        ("n9", libc::EINVAL, "node n9 is not configured"),
        ("no such node", libc::EINVAL, "node:"),
    ] {
        let r = std::fs::write(m.path("instances/web1/node"), format!("{text}\n"));
        assert_eq!(errno_of(r), errno, "{text}");
        assert!(read(m.path("instances/web1/error")).contains(why), "{text}");
        let (ok, _) = echo_into(&m.path("instances/web1/node"), text);
        assert!(!ok, "{text}");
    }
    // Another user may read where it is, not move it; only root drains.
    let bob = User::create("mb");
    assert_eq!(as_user(&bob, Op::Read(&m.path("instances/web1/node"))), 0);
    assert_eq!(
        as_user(&bob, Op::Write(&m.path("instances/web1/node"), "n1\n")),
        libc::EACCES
    );
    assert_eq!(
        as_user(&bob, Op::Write(&m.path("nodes/n2/ctl"), "drain\n")),
        libc::EACCES
    );
    assert_eq!(
        two.copies_with_state("web1"),
        [("n2".to_string(), "running".to_string())]
    );

    // A stopped instance moves by its definition.
    std::fs::write(m.path("instances/web1/ctl"), "destroy\n").unwrap();
    wait_status(&m, "web1", "shutoff");
    std::fs::write(m.path("instances/web1/node"), "n1\n").unwrap();
    assert!(settled(&m, "web1").starts_with("shutoff"));
    assert_eq!(
        two.copies_with_state("web1"),
        [("n1".to_string(), "shut off".to_string())]
    );
    assert_eq!(two.node("n1").snapshots("web1"), ["s1"]);

    // rmdir after the moves leaves nothing on either node.
    std::fs::remove_dir(m.path("instances/web1")).unwrap();
    assert!(two.copies_with_state("web1").is_empty());
    assert_eq!(two.row("web1"), "");
    for n in ["n1", "n2"] {
        let left: Vec<String> = two
            .node(n)
            .volumes()
            .into_iter()
            .filter(|v| v.starts_with("web1."))
            .collect();
        assert!(left.is_empty(), "{n}: {left:?}");
    }
}

#[test]
fn drain_empties_a_node_and_keeps_placement_away_until_undrained() {
    let two = Nodes::new(2);
    let m = Mounted::with_config(&two.config());
    wait_online(&m, &["n1", "n2"]);
    for name in ["d1", "d2"] {
        built_on(&m, name, "n1");
    }
    assert_eq!(read(m.path("nodes/n1/ctl")), "drain undrain\n");
    let (ok, err) = echo_into(&m.path("nodes/n1/ctl"), "drain");
    assert!(ok, "{err}");
    assert_eq!(read(m.path("nodes/n1/status")), "online, drained\n");
    assert_eq!(read_json(m.path("nodes/n1/info.json"))["drained"], true);
    let mut left = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        // The test driver's own domain `test` is no instance of kvmfs's: it stays.
        left = list(m.path("nodes/n1/instances"));
        left.retain(|n| n != "test");
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        left.is_empty(),
        "left on n1: {left:?}, n1 has {:?}\n{}",
        two.node("n1").domains(),
        m.log()
    );
    for name in ["d1", "d2"] {
        assert!(settled(&m, name).starts_with("running"));
        assert_eq!(
            two.copies_with_state(name),
            [("n2".to_string(), "running".to_string())]
        );
        assert_eq!(two.row(name), "ready\tn2");
    }
    // Placement passes it by, even when a spec asks for it; a move there is refused.
    std::fs::create_dir(m.path("instances/d3")).unwrap();
    assert_eq!(errno_of(write_spec(&m, "d3", &spec_of("n1"))), libc::ENOSPC);
    assert!(read(m.path("instances/d3/error")).contains("n1 is drained"));
    assert_eq!(
        errno_of(std::fs::write(m.path("instances/d1/node"), "n1\n")),
        libc::ENOSPC
    );
    assert_eq!(
        errno_of(std::fs::write(m.path("nodes/n1/ctl"), "maintain\n")),
        libc::EINVAL
    );
    // (dash's `echo` says "I/O error" for any failed write; the exit status is what counts.)
    let (ok, _) = echo_into(&m.path("nodes/n1/ctl"), "maintain");
    assert!(!ok);
    let (ok, err) = echo_into(&m.path("nodes/n1/ctl"), "undrain");
    assert!(ok, "{err}\n{}", m.log());
    assert_eq!(read(m.path("nodes/n1/status")), "online\n");
    write_spec(&m, "d3", &spec_of("n1")).unwrap();
    wait_status(&m, "d3", "running");
}

/// The crash points of a move, in the order it reaches them.
fn move_points() -> Vec<&'static str> {
    kvmfs::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("migrate:"))
        .collect()
}

#[test]
fn a_kill_at_every_step_of_a_move_leaves_one_domain_on_the_node_the_row_names() {
    let two = Nodes::new(2);
    let cfg = two.config();
    let points = move_points();
    assert_eq!(points.len(), 5);
    let mut m = Mounted::with_config(&cfg);
    wait_online(&m, &["n1", "n2"]);
    built_on(&m, "mv", "n1");
    std::fs::create_dir(m.path("instances/mv/snapshots/s1")).unwrap();
    let mut at = "n1".to_string();
    for point in points {
        m.kill9();
        m.restart(&[("KVMFS_CRASH_AT", point)]);
        wait_online(&m, &["n1", "n2"]);
        let to = if at == "n1" { "n2" } else { "n1" };
        // The daemon dies during or after this write: its result says nothing.
        let _ = std::fs::write(m.path("instances/mv/node"), format!("{to}\n"));
        m.wait_killed_at(point);
        m.restart(&[]);
        let status = settled(&m, "mv");
        let copies = two.copies_with_state("mv");
        assert_eq!(copies.len(), 1, "{point}: {copies:?}\n{}", m.log());
        let (node, state) = &copies[0];
        assert_eq!(state, "running", "{point}: {status}");
        assert!(status.starts_with("running"), "{point}: {status}");
        assert_eq!(two.row("mv"), format!("ready\t{node}"), "{point}");
        assert_eq!(read(m.path("instances/mv/node")).trim(), node, "{point}");
        assert_eq!(
            two.node(node).snapshots("mv"),
            ["s1"],
            "{point}: snapshots kept"
        );
        // Recorded but not moved: it stays, and `error` says why.
        let moved = matches!(point, "migrate:moved" | "migrate:snapshots restored");
        assert_eq!(node, if moved { to } else { at.as_str() }, "{point}");
        if !moved {
            assert!(
                read(m.path("instances/mv/error")).contains("stopped before the migration"),
                "{point}"
            );
        }
        at = node.clone();
    }
}

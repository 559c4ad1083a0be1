//! Load: 500 creates and deletes from 16 concurrent writers through the mount, against
//! MariaDB and three libvirtd-served nodes, while one node freezes and thaws and another
//! dies and comes back. Afterwards the database, the nodes and the tree must agree exactly:
//! nothing left, no address ever held twice, every acknowledged operation done.
//!
//! The figures it prints (operations, errors by kind, wall time) are reported in
//! docs/RELIABILITY.md; nothing here asserts on time.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";
const TOTAL: usize = 500;
const WRITERS: usize = 16;
const SPEC: &str = r#"{"vcpus":1,"ram_mb":128}"#;

#[derive(Default)]
struct Tally {
    created: usize,
    deleted: usize,
    /// Refusals and failures seen on the way, by errno or status, with a count.
    errors: BTreeMap<String, usize>,
    /// Address → the live instance holding it.
    held: HashMap<String, String>,
    duplicates: Vec<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// Retries `op` until it succeeds, counting each refusal; `EIO` (a node offline) and
/// `EBUSY` are what the chaos causes, anything else fails the test.
fn until_ok(tally: &Mutex<Tally>, what: &str, mut op: impl FnMut() -> std::io::Result<()>) {
    let start = Instant::now();
    loop {
        match op() {
            Ok(()) => return,
            Err(e) if matches!(errno(&e), libc::EIO | libc::EBUSY | libc::ENOSPC) => {
                tally.lock().unwrap().error(format!(
                    "{what}: {}",
                    std::io::Error::from_raw_os_error(errno(&e))
                ));
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "{what} kept failing: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One writer: plain file calls under the mount's root, nothing else of the fixture, so a
/// failing writer never keeps the mount (and its daemon) alive past the test.
fn writer(root: PathBuf, next: Arc<AtomicUsize>, tally: Arc<Mutex<Tally>>) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= TOTAL {
            return;
        }
        let name = format!("soak{n}");
        let dir = root.join(format!("instances/{name}"));
        std::fs::create_dir(&dir).unwrap();
        until_ok(&tally, "spec.json", || {
            std::fs::write(dir.join("spec.json"), SPEC)
        });
        // Built, or failed because its node went away under it (then undone), or built on
        // the node that is restarted empty before this writer looked (its domain is gone:
        // `missing`; on a loaded machine the writer can look that late).
        let start = Instant::now();
        let status = loop {
            let s = std::fs::read_to_string(dir.join("status")).unwrap();
            if ["running", "failed", "missing"]
                .iter()
                .any(|p| s.starts_with(p))
            {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name} stuck at {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        {
            let mut t = tally.lock().unwrap();
            t.created += 1;
            if status.starts_with("failed") {
                t.error(format!("build failed: {}", status.trim()));
            } else if status.starts_with("missing") {
                t.error(format!("domain lost with its node: {}", status.trim()));
            } else {
                let ip = std::fs::read_to_string(dir.join("ip")).unwrap();
                let ip = ip.trim().to_string();
                if let Some(other) = t.held.insert(ip.clone(), name.clone()) {
                    t.duplicates.push(format!("{ip}: {other} and {name}"));
                }
            }
        }
        // Its address is free for others from the moment the delete may release it: an
        // rmdir answered EINPROGRESS or EIO may still be finished in the background (by
        // the reconciliation) before this writer looks again.
        tally.lock().unwrap().held.retain(|_, v| v != &name);
        until_ok(&tally, "rmdir", || match std::fs::remove_dir(&dir) {
            // Accepted, and still going on past the time a FUSE call may take.
            Err(e) if errno(&e) == libc::EINPROGRESS => {
                tally.lock().unwrap().error("rmdir: in progress".into());
                wait_for(Duration::from_secs(120), "an rmdir in progress", || {
                    !dir.exists()
                });
                Ok(())
            }
            // Finished by the reconciliation after an EIO, before this retry.
            Err(e) if errno(&e) == libc::ENOENT => {
                tally
                    .lock()
                    .unwrap()
                    .error("rmdir: finished in the background".into());
                Ok(())
            }
            r => r,
        });
        tally.lock().unwrap().deleted += 1;
    }
}

#[test]
fn five_hundred_creates_and_deletes_with_nodes_failing_leave_everything_consistent() {
    let db = MariaDb::start();
    let n1 = Libvirtd::start(IMAGE);
    let n2 = Libvirtd::start(IMAGE);
    let mut n3 = Libvirtd::start(IMAGE);
    let mut cfg = format!(
        "[database]\nurl = '{}'\n\
         [timing]\nrefresh_ms = 250\nlibvirt_timeout_ms = 1000\nreconcile_ms = 2000\n\
         [instances]\ndefault_image = '{IMAGE}'\n\
         [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
         first = '192.168.122.10'\nlast = '192.168.122.250'\n",
        db.url()
    );
    for (name, d) in [("n1", &n1), ("n2", &n2), ("n3", &n3)] {
        cfg.push_str(&format!(
            "[[node]]\nname = '{name}'\nuri = '{}'\npool = 'default-pool'\n",
            d.uri()
        ));
    }
    let m = Mounted::with_config(&cfg);
    wait_online(&m, &["n1", "n2", "n3"]);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (root, next, tally) = (m.mnt.path().to_path_buf(), next.clone(), tally.clone());
            std::thread::spawn(move || writer(root, next, tally))
        })
        .collect();

    // The chaos: n2 freezes for a while, then n3 dies and comes back empty.
    let wait_until = |count: usize| {
        while next.load(Ordering::SeqCst) < count {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until(TOTAL / 4);
    n2.freeze();
    wait_for(Duration::from_secs(10), "n2 to read offline", || {
        read(m.path("nodes/n2/status")).starts_with("offline")
    });
    std::thread::sleep(Duration::from_secs(3));
    n2.thaw();
    wait_until(TOTAL / 2);
    n3.kill();
    wait_for(Duration::from_secs(10), "n3 to read offline", || {
        read(m.path("nodes/n3/status")).starts_with("offline")
    });
    std::thread::sleep(Duration::from_secs(2));
    n3.restart(IMAGE);

    for w in writers {
        w.join().expect("a writer failed");
    }
    let elapsed = started.elapsed();
    let t = tally.lock().unwrap();
    println!(
        "soak: {} creates and {} deletes by {WRITERS} writers in {:.1} s ({:.1} operations/s)",
        t.created,
        t.deleted,
        elapsed.as_secs_f64(),
        (t.created + t.deleted) as f64 / elapsed.as_secs_f64()
    );
    for (what, n) in &t.errors {
        println!("soak: {n} × {what}");
    }
    assert_eq!((t.created, t.deleted), (TOTAL, TOTAL));
    assert!(
        t.duplicates.is_empty(),
        "addresses held twice: {:?}",
        t.duplicates
    );

    // Database, nodes and tree agree: nothing of the soak is left anywhere.
    wait_online(&m, &["n1", "n2", "n3"]);
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.vm").trim(), "0");
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc").trim(), "0");
    for (name, node) in [("n1", &n1), ("n2", &n2), ("n3", &n3)] {
        let doms: Vec<String> = node
            .domains()
            .into_iter()
            .filter(|d| d.starts_with("soak"))
            .collect();
        assert!(doms.is_empty(), "{name} still has {doms:?}");
        assert_eq!(node.volumes(), vec![IMAGE.to_string()], "{name}");
    }
    wait_for(
        Duration::from_secs(5),
        "the tree to show no instance",
        || {
            !list(m.path("instances"))
                .iter()
                .any(|n| n.starts_with("soak"))
        },
    );
}

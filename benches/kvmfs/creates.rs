//! Create throughput: 16 writers, `mkdir` + `spec.json` to `running`.

use std::time::{Duration, Instant};

use crate::common::{MariaDb, Mounted};
use crate::*;

pub struct CreateRow {
    pub db: String,
    /// Instances there before the run.
    pub present: usize,
    pub n: usize,
    pub elapsed: Duration,
    pub delete: Duration,
}

pub fn creates(opts: &Opts) -> Vec<CreateRow> {
    let mut rows = Vec::new();
    // Five nodes: libvirt's test driver gives every pool 100 GiB, and each create takes a
    // 1 GiB disk.
    let lab = Lab::new(5, 0);
    {
        let m = Mounted::for_bench(&lab.config(""));
        rows.push(create_run(&m, "SQLite", 0, opts.creates));
    }
    {
        let db = MariaDb::start();
        let m = Mounted::for_bench(&lab.config(&format!("[database]\nurl = '{}'\n", db.url())));
        rows.push(create_run(&m, "MariaDB", 0, opts.creates));
    }
    // The same with many instances there already (managed, with their volumes).
    let per_node = if opts.quick { 200 } else { 2000 };
    let lab = Lab::new(5, per_node);
    // The test driver runs inside the daemon: a poll of thousands of domains and volumes
    // takes it longer than the default deadline on a loaded machine.
    let m = Mounted::for_bench(&lab.config("[timing]\nlibvirt_timeout_ms = 30000\n"));
    adopt_domains(&m, 5, per_node);
    rows.push(create_run(&m, "SQLite", 5 * per_node, opts.creates));
    rows
}

/// 16 writers each create their share: `mkdir`, write `spec.json`, wait for `running`.
pub fn create_run(m: &Mounted, db: &str, present: usize, n: usize) -> CreateRow {
    let writers = 16;
    let root = m.path("instances");
    let t = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in (w..n).step_by(writers) {
                    let d = root.join(format!("b{i:05}"));
                    std::fs::create_dir(&d).expect("mkdir");
                    std::fs::write(
                        d.join("spec.json"),
                        r#"{"vcpus":1,"ram_mb":128,"disk_gb":1}"#,
                    )
                    .expect("spec.json");
                    let status = d.join("status");
                    let t = Instant::now();
                    loop {
                        let s = std::fs::read_to_string(&status).unwrap_or_default();
                        if s.starts_with("running") {
                            break;
                        }
                        assert!(!s.starts_with("failed"), "b{i:05}: {s}");
                        assert!(t.elapsed() < Duration::from_secs(120), "b{i:05} stuck: {s}");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let elapsed = t.elapsed();
    let t = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in (w..n).step_by(writers) {
                    std::fs::remove_dir(root.join(format!("b{i:05}"))).expect("rmdir");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("deleter");
    }
    CreateRow {
        db: db.into(),
        present,
        n,
        elapsed,
        delete: t.elapsed(),
    }
}

//! kvmfs's own counters: what the daemon did since it started, counted where it happens (the
//! FUSE glue, the controller, the database layer) and shown in `/metrics/kvmfs.prom` by the
//! tree. Shared by the layers like `model` and `config`, and importing none of them.
//!
//! Invariants: every counter is an atomic that only grows, so counting never takes a lock
//! and never blocks a FUSE thread; histograms have fixed buckets chosen here, so the series
//! a scrape sees are the same from the first scrape on (no series appears with the first
//! observation of a kind). The node list is fixed at start (the configured nodes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A count that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) of a backend call: libvirt answers in milliseconds; the
/// deadline is seconds, an action's call up to a minute.
pub const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds (seconds) of a build: seconds on the test driver, minutes with images.
pub const BUILD_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Bucket bounds (seconds) of a database poll (a fingerprint, sometimes the whole table).
pub const DB_POLL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Durations in fixed buckets (Prometheus's cumulative `le` buckets are computed when read).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, and one more for everything above the last (`+Inf`); not cumulative.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations ≤ bound)`, cumulative, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The cumulative buckets, the count and the sum. Read without a lock, so an
    /// observation made meanwhile may be in the count and not yet in a bucket; the count
    /// is taken as the total of the buckets, which keeps `+Inf` equal to `_count`.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            acc += c.load(Ordering::Relaxed);
            buckets.push((*b, acc));
        }
        let inf = self
            .buckets
            .last()
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0);
        HistogramSnapshot {
            buckets,
            count: acc + inf,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The FUSE operations kvmfs serves, as counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mkdir,
    Mknod,
    Create,
    Unlink,
    Rename,
    Rmdir,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsync,
    Statfs,
    Ioctl,
    Access,
}

impl FuseOp {
    pub const ALL: [FuseOp; 23] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Setattr,
        FuseOp::Readlink,
        FuseOp::Mkdir,
        FuseOp::Mknod,
        FuseOp::Create,
        FuseOp::Unlink,
        FuseOp::Rename,
        FuseOp::Rmdir,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Write,
        FuseOp::Flush,
        FuseOp::Release,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Readdirplus,
        FuseOp::Releasedir,
        FuseOp::Fsync,
        FuseOp::Statfs,
        FuseOp::Ioctl,
        FuseOp::Access,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Setattr => "setattr",
            FuseOp::Readlink => "readlink",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Mknod => "mknod",
            FuseOp::Create => "create",
            FuseOp::Unlink => "unlink",
            FuseOp::Rename => "rename",
            FuseOp::Rmdir => "rmdir",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Write => "write",
            FuseOp::Flush => "flush",
            FuseOp::Release => "release",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Readdirplus => "readdirplus",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Fsync => "fsync",
            FuseOp::Statfs => "statfs",
            FuseOp::Ioctl => "ioctl",
            FuseOp::Access => "access",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The errnos kvmfs answers (`TreeError::errno`, `ActionError::errno`, and the FUSE glue's
/// own), by name: always shown, so an alert on one has a series from the start.
pub const KNOWN_ERRNOS: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EBADF, "EBADF"),
    (libc::EACCES, "EACCES"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::EXDEV, "EXDEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::ENOTEMPTY, "ENOTEMPTY"),
    (libc::ESTALE, "ESTALE"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::EINPROGRESS, "EINPROGRESS"),
];

/// Errno values counted one by one; anything above is counted as the last.
const ERRNO_SLOTS: usize = 256;

/// What one configured node's calls and builds took.
#[derive(Debug)]
pub struct NodeMetrics {
    pub name: String,
    /// Every bounded call to the node's backend (polls, re-reads, actions' calls), until
    /// it returned or its deadline passed.
    pub backend_calls: Histogram,
    /// Builds placed on the node, from the commit to ready or failed.
    pub builds: Histogram,
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    fuse_ops: Vec<Counter>,
    errors: Vec<Counter>,
    /// Instances made (`mkdir` in `/instances` that made a draft).
    pub instances_created: Counter,
    /// Instances deleted (`rmdir` and the reconciliation, row gone).
    pub instances_deleted: Counter,
    /// Builds that failed (and were undone).
    pub builds_failed: Counter,
    /// Migrations that arrived, from the write of `node` to ready on the target.
    pub migrations: Histogram,
    /// Migrations that left the instance where it was.
    pub migrations_failed: Counter,
    /// Database polls (the fingerprint, and the table when it moved).
    pub db_poll: Histogram,
    /// What the reconciliation repaired: builds finished or undone, deletes finished,
    /// stray addresses released.
    pub reconcile_repairs: Counter,
    /// Moves from the primary database to the replica (at most one per process: the move
    /// is sticky). Shared with the database layer, which makes the move.
    db_failovers: Arc<Counter>,
    nodes: Vec<NodeMetrics>,
}

impl Metrics {
    /// Counters for a daemon over `nodes` (the configured nodes, in order), whose database
    /// counts its failovers in `db_failovers`.
    pub fn new(nodes: impl IntoIterator<Item = String>, db_failovers: Arc<Counter>) -> Metrics {
        Metrics {
            fuse_ops: FuseOp::ALL.iter().map(|_| Counter::new()).collect(),
            errors: (0..ERRNO_SLOTS).map(|_| Counter::new()).collect(),
            instances_created: Counter::new(),
            instances_deleted: Counter::new(),
            builds_failed: Counter::new(),
            migrations: Histogram::new(BUILD_BUCKETS),
            migrations_failed: Counter::new(),
            db_poll: Histogram::new(DB_POLL_BUCKETS),
            reconcile_repairs: Counter::new(),
            db_failovers,
            nodes: nodes
                .into_iter()
                .map(|name| NodeMetrics {
                    name,
                    backend_calls: Histogram::new(CALL_BUCKETS),
                    builds: Histogram::new(BUILD_BUCKETS),
                })
                .collect(),
        }
    }

    /// Counts one FUSE operation.
    pub fn op(&self, op: FuseOp) {
        if let Some(c) = self.fuse_ops.get(op.index()) {
            c.inc();
        }
    }

    pub fn ops(&self, op: FuseOp) -> u64 {
        self.fuse_ops.get(op.index()).map_or(0, Counter::get)
    }

    /// Counts one operation answered with `errno`.
    pub fn error(&self, errno: i32) {
        let i = usize::try_from(errno)
            .unwrap_or(0)
            .min(ERRNO_SLOTS.saturating_sub(1));
        if let Some(c) = self.errors.get(i) {
            c.inc();
        }
    }

    /// `(errno, name, count)`: every known errno, and any other that was answered (named
    /// by its number).
    pub fn errors(&self) -> Vec<(i32, String, u64)> {
        let mut out: Vec<(i32, String, u64)> = KNOWN_ERRNOS
            .iter()
            .map(|(e, n)| (*e, (*n).to_string(), self.errors_of(*e)))
            .collect();
        for (i, c) in self.errors.iter().enumerate() {
            let e = i32::try_from(i).unwrap_or(i32::MAX);
            if c.get() > 0 && !KNOWN_ERRNOS.iter().any(|(k, _)| *k == e) {
                out.push((e, format!("E{e}"), c.get()));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    pub fn errors_of(&self, errno: i32) -> u64 {
        usize::try_from(errno)
            .ok()
            .and_then(|i| self.errors.get(i))
            .map_or(0, Counter::get)
    }

    pub fn db_failovers(&self) -> u64 {
        self.db_failovers.get()
    }

    /// The configured nodes' histograms, in configuration order.
    pub fn nodes(&self) -> &[NodeMetrics] {
        &self.nodes
    }

    /// Node `i`'s (configuration order), if configured.
    pub fn node(&self, i: usize) -> Option<&NodeMetrics> {
        self.nodes.get(i)
    }
}

/// This build's version and the commit it was built from (`unknown` outside a git
/// checkout; see `build.rs`).
pub fn build_info() -> (&'static str, &'static str) {
    (env!("CARGO_PKG_VERSION"), env!("KVMFS_COMMIT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_what_they_hold() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [1, 5, 50, 500, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.01, 2), (0.1, 3), (1.0, 4)]);
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 5.556).abs() < 1e-9, "{}", s.sum_seconds);
        // A bound is inclusive (`le`).
        h.observe(Duration::from_millis(100));
        assert_eq!(h.snapshot().buckets[1], (0.1, 4));
    }

    #[test]
    fn errors_are_counted_by_errno_and_unknown_ones_show_by_number() {
        let m = Metrics::new(["n1".to_string()], Arc::new(Counter::new()));
        m.error(libc::ENOENT);
        m.error(libc::ENOENT);
        m.error(libc::EROFS);
        let errors = m.errors();
        let get = |name: &str| errors.iter().find(|e| e.1 == name).map(|e| e.2);
        assert_eq!(get("ENOENT"), Some(2));
        assert_eq!(get("EIO"), Some(0), "known errnos show from the start");
        assert_eq!(get(&format!("E{}", libc::EROFS)), Some(1));
        m.op(FuseOp::Read);
        assert_eq!(m.ops(FuseOp::Read), 1);
        assert_eq!(m.ops(FuseOp::Write), 0);
        assert_eq!(m.nodes()[0].name, "n1");
    }

    #[test]
    fn every_fuse_op_has_its_own_slot() {
        for (i, op) in FuseOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}

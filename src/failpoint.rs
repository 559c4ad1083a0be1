//! Crash points for the crash-recovery tests: `KVMFS_CRASH_AT=NAME[,NAME…]` in the daemon's
//! environment makes it kill itself with SIGKILL — exactly what `kill -9` does — the first
//! time it reaches a point of that name. The names are the moments between two durable
//! records of an operation (`create:placed`, `create:disk made`, `delete:domain removed`, …;
//! `POINTS` lists them all), so a test can stop the daemon at every step of a create and of
//! a delete and check that the reconciliation at the next start finishes or undoes it.
//!
//! Without the variable every point is a single relaxed load of an empty list.

use std::sync::OnceLock;

/// The environment variable that arms crash points.
pub const ENV: &str = "KVMFS_CRASH_AT";

/// Every crash point, in the order an operation reaches them.
pub const POINTS: &[&str] = &[
    "create:placed",
    "create:checking git",
    "create:allocating addresses",
    "create:addresses allocated",
    "create:keys stored",
    "create:disk recorded",
    "create:disk made",
    "create:seed recorded",
    "create:seed made",
    "create:domain recorded",
    "create:domain made",
    "delete:deleting",
    "delete:domain removed",
    "delete:disk removed",
    "delete:seed removed",
    "migrate:recorded",
    "migrate:snapshots saved",
    "migrate:snapshots forgotten",
    "migrate:moved",
    "migrate:snapshots restored",
];

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Kills the process with SIGKILL if `point` is armed.
pub fn hit(point: &str) {
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    if armed().iter().any(|p| p == point) {
        tracing::error!(point, "crash point reached: killing the daemon (SIGKILL)");
        // SAFETY: kill and getpid have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_points_do_nothing() {
        for p in POINTS {
            hit(p);
        }
    }
}

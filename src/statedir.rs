//! The daemon's state directory: an exclusive lock that keeps two daemons off one directory,
//! and the daemon's stable worker id.
//!
//! The worker id names this daemon in the database (`vm.worker`, the `worker` heartbeats).
//! It is kept in `STATE_DIR/worker-id`, so a daemon restarted after a crash has the id of
//! the one that died and knows, at once, that rows carrying it were cut off mid-operation:
//! the lock guarantees no other live daemon carries that id.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot use state dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state dir {0} is in use by another kvmfs daemon{1}; give this one its own --state-dir"
    )]
    InUse(PathBuf, String),
}

/// A locked state directory; the lock lasts as long as this value.
pub struct StateDir {
    _lock: File,
    worker_id: String,
}

impl StateDir {
    /// Creates `dir` if needed, takes its lock and reads (or makes) the worker id.
    pub fn lock(dir: &Path) -> Result<StateDir, StateDirError> {
        let io = |source| StateDirError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock_path = dir.join("kvmfs.lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; it has no memory-safety preconditions.
        let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                };
                return Err(StateDirError::InUse(dir.to_path_buf(), who));
            }
            return Err(io(err));
        }
        lock.set_len(0).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;

        let id_path = dir.join("worker-id");
        let worker_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if valid_id(s.trim()) => s.trim().to_string(),
            _ => {
                let id = new_id().map_err(io)?;
                let tmp = dir.join("worker-id.tmp");
                std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
                std::fs::rename(&tmp, &id_path).map_err(io)?;
                id
            }
        };
        Ok(StateDir {
            _lock: lock,
            worker_id,
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
}

fn valid_id(s: &str) -> bool {
    (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 16 random bytes from the kernel, in hex.
fn new_id() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_daemon_per_dir_and_a_stable_id() {
        let d = tempfile::tempdir().unwrap();
        let a = StateDir::lock(d.path()).unwrap();
        let id = a.worker_id().to_string();
        assert!(valid_id(&id));
        let e = StateDir::lock(d.path()).err().expect("second lock refused");
        assert!(
            e.to_string().contains("in use by another kvmfs daemon"),
            "{e}"
        );
        drop(a);
        let b = StateDir::lock(d.path()).unwrap();
        assert_eq!(b.worker_id(), id);
    }
}

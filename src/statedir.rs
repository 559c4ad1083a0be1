//! The daemon's state directory: an exclusive lock that keeps two daemons off one directory,
//! and the daemon's stable worker id.
//!
//! The worker id names this daemon in the database (`vm.worker`, the `worker` heartbeats).
//! It is kept in `STATE_DIR/worker-id`, so a daemon restarted after a crash has the id of
//! the one that died and knows, at once, that rows carrying it were cut off mid-operation:
//! the lock guarantees no other live daemon carries that id.
//!
//! The directory holds the SQLite database (every instance's row, with its sealed private
//! key), the key file that opens those keys, and the log: it is private to the daemon's
//! user (0700, files 0600). A directory left with wider modes, by an earlier kvmfs or by
//! hand, is narrowed at start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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
    /// Another user could read or replace what kvmfs keeps there.
    #[error("state dir: {path} {why}; refusing to use it (give kvmfs a folder of its own)")]
    NotOurs { path: PathBuf, why: String },
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
        create_private_dir(dir).map_err(io)?;
        check_ours(dir)?;
        make_private(dir).map_err(io)?;
        let lock_path = dir.join("kvmfs.lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        lock_now(&mut lock, dir)?.map_err(io)?;
        lock.set_len(0).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;

        let id_path = dir.join("worker-id");
        let worker_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if valid_id(s.trim()) => s.trim().to_string(),
            _ => {
                let id = crate::random::hex(16).map_err(io)?;
                let tmp = dir.join("worker-id.tmp");
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
                std::fs::rename(&tmp, &id_path).map_err(io)?;
                id
            }
        };
        Ok(StateDir {
            _lock: lock,
            worker_id,
        })
    }

    /// Refuses a state dir another daemon holds, without taking it: `kvmfs mount` checks
    /// this before it starts a daemon (or aborts anything for it).
    pub fn check_free(dir: &Path) -> Result<(), StateDirError> {
        let Ok(mut lock) = File::open(dir.join("kvmfs.lock")) else {
            return Ok(());
        };
        // Any other failure to lock is the daemon's to report when it opens the dir.
        let _ = lock_now(&mut lock, dir)?;
        // The lock goes with the descriptor.
        Ok(())
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
}

/// Creates `dir` (and missing parents) as 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The files kvmfs keeps in a state directory: none may be a symbolic link.
const OWN_FILES: &[&str] = &[
    "kvmfs.db",
    "kvmfs.db-wal",
    "kvmfs.db-shm",
    "kvmfs.db-journal",
    "kvmfs.log",
    "kvmfs.lock",
    "secret.key",
    "worker-id",
    "worker-id.tmp",
];

/// Refuses a state directory that another user owns, or that holds a file or folder
/// another user owns, or a symbolic link where kvmfs keeps one of its files: that user
/// could read the database and the key, or have the daemon write where they point.
pub fn check_ours(dir: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let not_ours = |path: &Path, why: String| StateDirError::NotOurs {
        path: path.to_path_buf(),
        why,
    };
    let io = |source| StateDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let m = std::fs::metadata(dir).map_err(io)?;
    if m.uid() != me {
        return Err(not_ours(
            dir,
            format!("belongs to uid {}, not to uid {me}", m.uid()),
        ));
    }
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let path = e.path();
        let m = path.symlink_metadata().map_err(io)?;
        let name = e.file_name();
        if m.file_type().is_symlink() {
            if OWN_FILES.iter().any(|f| name == *f) {
                return Err(not_ours(&path, "is a symbolic link".into()));
            }
            continue;
        }
        if m.uid() != me {
            return Err(not_ours(
                &path,
                format!("belongs to uid {}, not to uid {me}", m.uid()),
            ));
        }
        if m.is_dir() {
            check_ours(&path)?;
        }
    }
    Ok(())
}

/// Narrows `dir` to 0700 and everything in it (and in its folders) to its owner: files
/// lose every group and other bit, folders become 0700. Symlinks are left alone.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let narrow = |p: &Path, m: &std::fs::Metadata| -> std::io::Result<()> {
        let mode = m.permissions().mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { mode & 0o700 };
        if mode != want {
            tracing::warn!(path = %p.display(), from = format!("{mode:04o}"), to = format!("{want:04o}"), "state dir: narrowing permissions");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))?;
        }
        Ok(())
    };
    narrow(dir, &std::fs::metadata(dir)?)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        if m.file_type().is_symlink() {
            continue;
        }
        if m.is_dir() {
            make_private(&e.path())?;
        } else {
            narrow(&e.path(), &m)?;
        }
    }
    Ok(())
}

/// Takes the exclusive lock on `lock` (the state dir `dir`'s lock file) without waiting:
/// `InUse`, naming the pid written in the file, when another process holds it; any other
/// failure to lock as the inner error.
fn lock_now(lock: &mut File, dir: &Path) -> Result<std::io::Result<()>, StateDirError> {
    // SAFETY: flock on a descriptor we own; it has no memory-safety preconditions.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Ok(()));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Ok(Err(err));
    }
    let mut pid = String::new();
    let _ = lock.read_to_string(&mut pid);
    let who = match pid.trim() {
        "" => String::new(),
        pid => format!(" (pid {pid})"),
    };
    Err(StateDirError::InUse(dir.to_path_buf(), who))
}

fn valid_id(s: &str) -> bool {
    (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
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

    #[test]
    fn a_state_dir_with_a_planted_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("kvmfs.log")).unwrap();
        let e = StateDir::lock(&dir).err().expect("refused");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // Files of other users are refused too (only root can make them here).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::fs::remove_file(dir.join("kvmfs.log")).unwrap();
            std::fs::write(dir.join("kvmfs.db"), "").unwrap();
            std::os::unix::fs::chown(dir.join("kvmfs.db"), Some(65534), None).unwrap();
            let e = StateDir::lock(&dir).err().expect("refused");
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
    }

    #[test]
    fn a_state_dir_with_wide_modes_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("demo")).unwrap();
        for (f, m) in [
            ("kvmfs.db", 0o644),
            ("kvmfs.db-wal", 0o666),
            ("demo/kvm1.xml", 0o755),
        ] {
            std::fs::write(dir.join(f), "x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _s = StateDir::lock(&dir).unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("demo"), 0o700);
        assert_eq!(mode("kvmfs.db"), 0o600);
        assert_eq!(mode("kvmfs.db-wal"), 0o600);
        assert_eq!(mode("demo/kvm1.xml"), 0o700);
        assert_eq!(mode("worker-id"), 0o600);
        assert_eq!(mode("kvmfs.lock") & 0o077, 0);
    }
}

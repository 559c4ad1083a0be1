//! The virtual tree: what each inode of the mount is and shows, answered from one
//! `Arc<View>` of the cluster, and the open files and writes through it. A front module over
//! one room per concern:
//!
//! - `ino`: inode numbers (`id << 8 | tag`) and the ids interned for them — per incarnation
//!   for instances, so a name made again never shares a number with its predecessor;
//! - `resolve`: from an inode to what it shows in a view — entries, attributes, content;
//!   an object gone is `Stale`;
//! - `render`: the text of every file;
//! - `handles`: open files, and reads through them (checked against what they were opened
//!   on);
//! - `write`: `spec.json` and `ctl` writes, `mkdir`/`rmdir`, scratch files and renames;
//! - `scratch`: the editors' files kept in memory;
//! - `snapshots`: `instances/<i>/snapshots/`, its folders, their `info.json`, and their
//!   `mkdir`/`rmdir`;
//! - `invalidate`: what each new view makes wrong in the kernel's caches, and `settle`.
//!
//! Every reply is computed from one `Arc<View>`: sizes at `getattr` (so `stat` agrees with
//! `read`), contents at `read`. With the kernel's caching on, the kernel keeps names,
//! attributes and file pages, and `invalidations` says which of them a new view makes wrong;
//! the FUSE layer tells the kernel, and operations that change something wait (briefly) until
//! it has been told (`settle`), so a change made through the mount is visible in it as soon
//! as the operation returns. With caching off, a file's content is rendered once at `open`.

mod handles;
mod ino;
mod invalidate;
mod prom;
mod render;
mod resolve;
mod scratch;
mod snapshots;
mod write;
mod zabbix;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::cluster::actions::ActionError;
use crate::cluster::view as cluster_view;

use handles::Handle;
pub use ino::Ino;
use ino::Names;
pub use invalidate::Invalidations;
pub use prom::SERIES_PER_INSTANCE;
pub use render::{FileKind, MetricsFile};
pub use zabbix::AGENT_FILE_LIMIT;

/// Errors the tree reports; the FUSE layer maps each to one errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("not a symbolic link")]
    NotSymlink,
    #[error(transparent)]
    Action(#[from] ActionError),
    /// The operation goes on in the background past the time a FUSE call may take.
    #[error("still in progress")]
    InProgress,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("cannot move files between folders")]
    CrossDevice,
    /// The inode or handle names an object that is gone, or whose name now belongs to
    /// another incarnation (`ESTALE`: the kernel then looks the path up again).
    #[error("stale: what this names is gone")]
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// Attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: SystemTime,
    /// Whether the kernel may cache this inode's name and attributes: kvmfs's own inodes,
    /// which `invalidations` covers; not scratch files, which change on every write.
    pub cacheable: bool,
}

/// How an open file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Through the kernel's page cache, kept across opens (kvmfs invalidates it).
    Cached,
    /// Every read and write goes to kvmfs.
    Direct,
}

/// One directory entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: EntryKind,
    pub name: String,
}

impl TreeError {
    /// The errno the caller gets. No catch-all arm: a new variant forces a choice.
    pub fn errno(&self) -> i32 {
        match self {
            TreeError::NotFound => libc::ENOENT,
            TreeError::NotDir => libc::ENOTDIR,
            TreeError::IsDir => libc::EISDIR,
            TreeError::ReadOnly(_) => libc::EACCES,
            TreeError::BadHandle => libc::EBADF,
            TreeError::NotSymlink => libc::EINVAL,
            TreeError::InProgress => libc::EINPROGRESS,
            TreeError::NotPermitted(_) => libc::EPERM,
            TreeError::CrossDevice => libc::EXDEV,
            TreeError::Stale => libc::ESTALE,
            TreeError::Action(a) => a.errno(),
        }
    }
}

/// Bytes rendered from a view, with the view's version.
type Rendered = (u64, Arc<Vec<u8>>);

/// Who owns what the daemon itself presents (the mount's owner).
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The tree over a running cluster.
pub struct Tree {
    cluster: Arc<Cluster>,
    names: Mutex<Names>,
    scratch: Mutex<scratch::Store>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    owner: Owner,
    started: SystemTime,
    /// Whether the kernel caches what the tree answers (`[timing] kernel_cache_ms` > 0).
    kernel_cache: bool,
    /// The newest view version whose invalidations the kernel has been told; set by
    /// whoever follows the views (`mark_invalidated`), 0 while nobody does.
    invalidated: tokio::sync::watch::Sender<u64>,
    following: std::sync::atomic::AtomicBool,
    /// What `/metrics` renders from a view (the view's part of `kvmfs.prom`, the discovery
    /// files), with the view version it was rendered from: the `lookup`, `getattr` and
    /// `open` of one `cat` render the cluster once per view.
    metrics_cache: Mutex<HashMap<MetricsFile, Rendered>>,
}

impl Tree {
    pub fn new(cluster: Arc<Cluster>, owner: Owner) -> Tree {
        let scratch = scratch::Store::new(
            usize::try_from(cluster.config().quotas.scratch_bytes).unwrap_or(usize::MAX),
        );
        let kernel_cache = cluster.config().timing.kernel_cache_ms > 0;
        Tree {
            cluster,
            names: Mutex::new(Names::default()),
            scratch: Mutex::new(scratch),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            owner,
            started: SystemTime::now(),
            kernel_cache,
            invalidated: tokio::sync::watch::channel(0).0,
            following: std::sync::atomic::AtomicBool::new(false),
            metrics_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The daemon's counters (the FUSE layer counts its operations there).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.cluster.metrics()
    }

    /// What `f` renders from `view` (for `kvmfs.prom`, its view part), kept per view.
    pub(super) fn rendered_from_view(
        &self,
        view: &cluster_view::View,
        f: MetricsFile,
    ) -> Arc<Vec<u8>> {
        let cached = self
            .metrics_cache
            .lock()
            .get(&f)
            .filter(|(version, _)| *version == view.version)
            .map(|(_, bytes)| bytes.clone());
        if let Some(bytes) = cached {
            return bytes;
        }
        // Rendered outside the lock: other readers are not held up behind it.
        let bytes = Arc::new(match f {
            MetricsFile::Prom => prom::view_part(view).into_bytes(),
            MetricsFile::ZabbixNodes | MetricsFile::ZabbixInstances => render::zabbix_file(view, f),
        });
        let mut cache = self.metrics_cache.lock();
        if cache.get(&f).is_none_or(|(v, _)| *v < view.version) {
            cache.insert(f, (view.version, bytes.clone()));
        }
        bytes
    }

    /// A file of `/metrics` as of `view` (and, for `kvmfs.prom`, the counters now).
    pub(super) fn metrics_file(&self, view: &cluster_view::View, f: MetricsFile) -> Vec<u8> {
        let part = self.rendered_from_view(view, f);
        if f != MetricsFile::Prom {
            return part.to_vec();
        }
        let daemon = prom::daemon_part(self.metrics());
        let mut out = Vec::with_capacity(part.len() + daemon.len());
        out.extend_from_slice(&part);
        out.extend_from_slice(daemon.as_bytes());
        out
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Whether the kernel may cache what the tree answers.
    pub fn kernel_cache(&self) -> bool {
        self.kernel_cache
    }
}

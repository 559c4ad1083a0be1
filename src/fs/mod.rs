//! FUSE glue: each operation resolves its inode through the `Tree`, calls one function, and
//! replies. No libvirt and no SQL here. `errno` is the one mapping from errors to errno
//! values; it has no catch-all arm, so a new error variant forces a decision.
//!
//! With the kernel's caching on (`[timing] kernel_cache_ms` > 0), names and attributes are
//! given that TTL, read-only files are opened through the page cache and kept across opens,
//! and `follow_views` tells the kernel what each new view makes wrong (`Notifier`), so the
//! caches never serve what kvmfs no longer shows. With it off, every TTL is 0 and files are
//! opened with `direct_io`.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::cluster::actions::ActionError;
use crate::metrics::FuseOp;
use crate::tree::{Attr, EntryKind, OpenMode, Tree, TreeError};

/// This daemon's mount, as the FUSE layer sees its end.
pub struct OwnMount {
    pub path: std::path::PathBuf,
    /// Notified when the session ends (see `KvmFs::destroy`).
    pub session_over: tokio::sync::Notify,
}

impl OwnMount {
    pub fn new(path: std::path::PathBuf) -> Arc<OwnMount> {
        Arc::new(OwnMount {
            path,
            session_over: tokio::sync::Notify::new(),
        })
    }
}

/// The filesystem handed to `fuser`.
pub struct KvmFs {
    tree: Arc<Tree>,
    own: Arc<OwnMount>,
    rt: tokio::runtime::Handle,
    /// Upper bound for an operation that waits on a backend.
    op_timeout: Duration,
    /// How long the kernel may keep names and attributes (zero: caching off).
    ttl: Duration,
}

impl KvmFs {
    pub fn new(
        tree: Arc<Tree>,
        own: Arc<OwnMount>,
        rt: tokio::runtime::Handle,
        op_timeout: Duration,
    ) -> KvmFs {
        let ttl = if tree.kernel_cache() {
            tree.cluster().config().timing.kernel_cache()
        } else {
            Duration::ZERO
        };
        KvmFs {
            tree,
            own,
            rt,
            op_timeout,
            ttl,
        }
    }

    /// The TTL for an inode's name and attributes.
    fn ttl(&self, a: &Attr) -> Duration {
        if a.cacheable {
            self.ttl
        } else {
            Duration::ZERO
        }
    }

    /// Runs an operation that waits on a backend on the runtime, so FUSE threads stay free,
    /// and replies within `op_timeout` (plus a margin for the tree's own, inner deadline to
    /// answer first) whatever the backend does.
    fn spawn<T: Send + 'static>(
        &self,
        op: impl FnOnce(
            Arc<Tree>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, TreeError>> + Send>,
        > + Send
        + 'static,
        reply: impl FnOnce(Result<T, TreeError>) + Send + 'static,
    ) {
        let tree = self.tree.clone();
        let limit = self.op_timeout + Duration::from_millis(250);
        self.rt.spawn(async move {
            let work = async {
                let r = op(tree.clone()).await;
                // What the operation changed must not be hidden by the kernel's caches
                // when the caller looks right after.
                tree.settle().await;
                r
            };
            let r = match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => Err(TreeError::Action(ActionError::Backend(format!(
                    "no answer within {limit:?}"
                )))),
            };
            if let Err(e) = &r {
                tree.metrics().error(e.errno());
            }
            reply(r);
        });
    }
}

impl KvmFs {
    /// The errno for `e`, counted (`kvmfs_fuse_errors_total`).
    fn fail(&self, e: &TreeError) -> Errno {
        self.tree.metrics().error(e.errno());
        errno(e)
    }
}

/// The errno for each tree error (decided beside each error: `TreeError::errno`,
/// `ActionError::errno`).
pub fn errno(e: &TreeError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for KvmFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags;
        // Lookups in one folder need not wait for each other.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.ttl > Duration::ZERO {
            // `ls -l` gets names and attributes in one reply; a file's pages are dropped
            // whenever its attributes come back with another mtime or size.
            for cap in [
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
                InitFlags::FUSE_AUTO_INVAL_DATA,
            ] {
                if let Err(missing) = config.add_capabilities(cap) {
                    tracing::info!(?missing, "the kernel lacks a FUSE capability");
                }
            }
        }
        Ok(())
    }

    /// The session ends (unmounted, or the connection aborted). `fuser` then unmounts the
    /// mountpoint by its path, which may hold another daemon's mount by now (once this one
    /// stopped answering, `kvmfs mount` aborts its connection and mounts anew there; device
    /// numbers are reused, so they cannot tell the two apart). So this lets it go on only
    /// when a dead mount is what is there (`ENOTCONN`: this daemon's, left mounted after an
    /// abort); otherwise this thread never returns, and the daemon stops without it.
    fn destroy(&mut self) {
        self.own.session_over.notify_one();
        if !crate::mount::dead_mount_at(&self.own.path) {
            loop {
                std::thread::park();
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.tree.metrics().op(FuseOp::Lookup);
        match self.tree.lookup(parent.0, name) {
            Ok(a) => reply.entry(&self.ttl(&a), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.tree.metrics().op(FuseOp::Getattr);
        match self.tree.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.tree.metrics().op(FuseOp::Setattr);
        // A truncation of a writable file, and modes and owners of scratch files, are
        // changes kvmfs takes; timestamps that tools set after writing (touch, cp -p) are
        // accepted and ignored.
        let r = match (mode, uid, gid, size) {
            (None, None, None, Some(size)) => {
                self.tree.truncate(ino.0, fh.map(|f| f.0), size, req.uid())
            }
            (None, None, None, None) => self.tree.getattr(ino.0),
            (_, _, _, None) => self.tree.set_attr(ino.0, mode, uid, gid, req.uid()),
            _ => Err(TreeError::NotPermitted(
                "change the size and the mode or owner in separate calls",
            )),
        };
        match r {
            Ok(a) => reply.attr(&self.ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.tree.metrics().op(FuseOp::Readlink);
        match self.tree.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.tree.metrics().op(FuseOp::Mkdir);
        let (name, uid, ttl) = (name.to_owned(), req.uid(), self.ttl);
        self.spawn(
            move |t| Box::pin(async move { t.mkdir(parent.0, &name, uid).await }),
            move |r| match r {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.tree.metrics().op(FuseOp::Mknod);
        reply.error(self.fail(&self.tree.refuse_create(parent.0)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.tree.metrics().op(FuseOp::Create);
        let mode = (mode & !umask & 0o7777) as u16;
        match self.tree.create(parent.0, name, mode, req.uid(), req.gid()) {
            Ok((a, fh)) => reply.created(
                &self.ttl(&a),
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.tree.metrics().op(FuseOp::Unlink);
        match self.tree.unlink(parent.0, name, req.uid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.tree.metrics().op(FuseOp::Rename);
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            self.tree.metrics().error(libc::EINVAL);
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname, uid) = (name.to_owned(), newname.to_owned(), req.uid());
        self.spawn(
            move |t| {
                Box::pin(async move {
                    t.rename(parent.0, &name, newparent.0, &newname, no_replace, uid)
                        .await
                })
            },
            move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.tree.metrics().op(FuseOp::Rmdir);
        let (name, uid) = (name.to_owned(), req.uid());
        self.spawn(
            move |t| Box::pin(async move { t.rmdir(parent.0, &name, uid).await }),
            move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.tree.metrics().op(FuseOp::Open);
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        match self.tree.open(ino.0, write, req.uid()) {
            // Pages stay cached across opens (kvmfs invalidates them when the file changes),
            // and closing a file that was only read has nothing to flush.
            Ok((fh, OpenMode::Cached)) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            // direct_io: every read and write reaches kvmfs, never cut to a cached size.
            Ok((fh, OpenMode::Direct)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.tree.metrics().op(FuseOp::Read);
        match self.tree.read(fh.0, ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.tree.metrics().op(FuseOp::Write);
        let (data, uid) = (data.to_vec(), req.uid());
        self.spawn(
            move |t| Box::pin(async move { t.write(fh.0, offset, &data, uid).await }),
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.tree.metrics().op(FuseOp::Flush);
        let uid = req.uid();
        self.spawn(
            move |t| Box::pin(async move { t.flush(fh.0, uid).await }),
            move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree.metrics().op(FuseOp::Release);
        self.tree.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.tree.metrics().op(FuseOp::Opendir);
        match self.tree.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.tree.metrics().op(FuseOp::Readdir);
        let entries = match self.tree.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(self.fail(&e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        self.tree.metrics().op(FuseOp::Readdirplus);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let r = self
            .tree
            .visit_entries_with_attrs(fh.0, start, |i, e, attr| {
                let (ttl, attr) = match attr {
                    Some(a) => (self.ttl(a), file_attr(a)),
                    // `.` and `..`: the kernel skips their attributes.
                    None => (
                        Duration::ZERO,
                        file_attr(&Attr {
                            ino: e.ino,
                            kind: e.kind,
                            size: 0,
                            perm: 0o555,
                            uid: 0,
                            gid: 0,
                            nlink: 2,
                            mtime: std::time::UNIX_EPOCH,
                            cacheable: false,
                        }),
                    ),
                };
                reply.add(
                    INodeNo(e.ino),
                    (i + 1) as u64,
                    &e.name,
                    &ttl,
                    &attr,
                    Generation(0),
                )
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tree.metrics().op(FuseOp::Releasedir);
        self.tree.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        self.tree.metrics().op(FuseOp::Fsync);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        self.tree.metrics().op(FuseOp::Statfs);
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.tree.metrics().op(FuseOp::Ioctl);
        // Not a terminal, not a device: what a regular file answers.
        self.tree.metrics().error(libc::ENOTTY);
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.tree.metrics().op(FuseOp::Access);
        // Permission bits are enforced by the kernel (default_permissions); only existence
        // is checked here.
        match self.tree.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(self.fail(&e)),
        }
    }
}

/// Follows the cluster's views on a thread of its own and tells the kernel what each new
/// view makes wrong in its caches: the attributes of every inode that changed or is gone.
/// Only attributes: the kernel then asks again, and drops a file's cached pages itself when
/// the answer has another mtime or size (`FUSE_AUTO_INVAL_DATA`), in the reader's context.
/// The thread never waits on anything a filesystem request holds (dropping pages would wait
/// for page locks held by reads in flight; dropping names, for the folder lock a `mkdir` or
/// `rmdir` holds), so a daemon killed at any moment can exit and close `/dev/fuse`; names
/// that are gone answer `ESTALE` instead (see `Tree::invalidations`). Operations may wait for
/// it (see `Tree::settle`). Must start before the session serves requests, so the kernel
/// holds nothing older than the first view followed. The thread ends when the filesystem is
/// unmounted.
pub fn follow_views(tree: Arc<Tree>, notifier: fuser::Notifier, rt: tokio::runtime::Handle) {
    if !tree.kernel_cache() {
        return;
    }
    let mut changes = tree.cluster().subscribe();
    let mut last = tree.cluster().view();
    tree.mark_invalidated(last.version);
    let spawned = std::thread::Builder::new()
        .name("kvmfs-inval".into())
        .spawn(move || {
            loop {
                if rt.block_on(changes.changed()).is_err() {
                    return;
                }
                let v = tree.cluster().view();
                if v.version == last.version {
                    continue;
                }
                let inv = tree.invalidations(&last, &v);
                for ino in &inv.inodes {
                    // Offset -1: attributes only, no page locks (see above).
                    if let Err(e) = notifier.inval_inode(INodeNo(*ino), -1, 0) {
                        if gone(&e) {
                            return;
                        }
                        tracing::debug!(ino, error = %e, "cannot invalidate an inode");
                    }
                }
                tree.mark_invalidated(v.version);
                tree.forget_instances(&inv.gone_instances);
                last = v;
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cache invalidation thread");
    }
}

/// Whether a notification failed because the filesystem is no longer mounted.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::EBADF) | Some(libc::ENOTCONN)
    )
}

//! FUSE glue: each operation resolves its inode through the `Tree`, calls one function, and
//! replies. No libvirt and no SQL here. `errno` is the one mapping from errors to errno
//! values; it has no catch-all arm, so a new error variant forces a decision.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::cluster::actions::ActionError;
use crate::tree::{Attr, EntryKind, Tree, TreeError};

/// Everything is live: the kernel must ask again on every access.
const TTL: Duration = Duration::ZERO;

/// The filesystem handed to `fuser`.
pub struct KvmFs {
    tree: Arc<Tree>,
    rt: tokio::runtime::Handle,
    /// Upper bound for an operation that waits on a backend.
    op_timeout: Duration,
}

impl KvmFs {
    pub fn new(tree: Arc<Tree>, rt: tokio::runtime::Handle, op_timeout: Duration) -> KvmFs {
        KvmFs {
            tree,
            rt,
            op_timeout,
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
            let r = match tokio::time::timeout(limit, op(tree)).await {
                Ok(r) => r,
                Err(_) => Err(TreeError::Action(ActionError::Backend(format!(
                    "no answer within {limit:?}"
                )))),
            };
            reply(r);
        });
    }
}

/// The errno for each tree error.
pub fn errno(e: &TreeError) -> Errno {
    match e {
        TreeError::NotFound => Errno::ENOENT,
        TreeError::NotDir => Errno::ENOTDIR,
        TreeError::IsDir => Errno::EISDIR,
        TreeError::ReadOnly(_) => Errno::EACCES,
        TreeError::BadHandle => Errno::EBADF,
        TreeError::NotSymlink => Errno::EINVAL,
        TreeError::InProgress => Errno::from_i32(libc::EINPROGRESS),
        TreeError::NotPermitted(_) => Errno::EPERM,
        TreeError::CrossDevice => Errno::EXDEV,
        TreeError::Action(a) => match a {
            ActionError::Invalid(_) => Errno::EINVAL,
            ActionError::Exists(_) => Errno::EEXIST,
            ActionError::NotFound(_) => Errno::ENOENT,
            ActionError::NoCapacity(_) => Errno::ENOSPC,
            ActionError::Busy(_) => Errno::EBUSY,
            ActionError::NotOwner(_) => Errno::EACCES,
            ActionError::TooBig(_) => Errno::EFBIG,
            ActionError::Backend(_) => Errno::EIO,
        },
    }
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
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> std::io::Result<()> {
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
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
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
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
        let (name, uid) = (name.to_owned(), req.uid());
        self.spawn(
            move |t| Box::pin(async move { t.mkdir(parent.0, &name, uid).await }),
            move |r| match r {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
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
        reply.error(errno(&self.tree.refuse_create(parent.0)));
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
        let mode = (mode & !umask & 0o7777) as u16;
        match self.tree.create(parent.0, name, mode, req.uid(), req.gid()) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
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
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
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
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        match self.tree.open(ino.0, write, req.uid()) {
            // direct_io: contents are computed, so reads must not be cut to a cached size.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
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
        self.tree.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
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
        let entries = match self.tree.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tree.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
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
        // Not a terminal, not a device: what a regular file answers.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission bits are enforced by the kernel (default_permissions); only existence
        // is checked here.
        match self.tree.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

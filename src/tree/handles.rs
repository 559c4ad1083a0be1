//! Open files: the handle table, opening (who may open what, and how: through the page
//! cache or directly), reading through a handle (checked against the object it was opened
//! on), and releasing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::ino::Ino;
use super::{DirEntry, FileKind, OpenMode, Tree, TreeError};
use crate::cluster::actions::ActionError;

pub(super) enum Handle {
    Dir(Arc<Vec<DirEntry>>),
    /// A file's content at `open` (caching off).
    File(Arc<Vec<u8>>),
    /// `spec.json` or `ctl` opened for writing.
    Write(WriteHandle),
    /// A scratch file, read and written in place.
    Scratch(u64),
    /// A node's `ctl` opened for writing (root only): the node's name.
    NodeCtl(String),
}

#[derive(Clone)]
pub(super) struct WriteHandle {
    pub(super) instance: String,
    /// The incarnation of the instance this file was opened on (`InstanceRecord::incarnation`): a
    /// commit or command through it never reaches another instance of the same name.
    pub(super) incarnation: String,
    pub(super) kind: FileKind,
    pub(super) buf: Vec<u8>,
    /// Written since the last commit.
    pub(super) dirty: bool,
    /// This handle's document was committed; only trailing whitespace may follow.
    pub(super) committed: bool,
}

/// The file handle of read-only opens served from the current view (cached mode): no
/// per-open state, so opening costs no allocation. Allocated handles start at 1.
pub(super) const LIVE_FH: u64 = 0;

impl Tree {
    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    /// Opens a file. `spec.json` and `ctl` may be opened for writing by the instance's
    /// owner. A read-only open of kvmfs's own files is served from the current view at each
    /// read (cached mode, through the kernel's page cache) or from the content of this moment
    /// (caching off).
    pub fn open(&self, ino: u64, write: bool, uid: u32) -> Result<(u64, OpenMode), TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        if let Ino::Scratch(id) = r.ino {
            // Permission bits were checked by the kernel (default_permissions).
            return Ok((self.new_handle(Handle::Scratch(id)), OpenMode::Direct));
        }
        let name = r.name.clone().unwrap_or_default();
        if let Ino::NodeFile(_, FileKind::Ctl) = r.ino
            && write
        {
            if uid != 0 {
                return Err(ActionError::NotOwner(format!("only root drains node {name}")).into());
            }
            return Ok((self.new_handle(Handle::NodeCtl(name)), OpenMode::Direct));
        }
        if let Ino::InstanceFile(
            _,
            f @ (FileKind::SshKey | FileKind::Spec | FileKind::Ctl | FileKind::Node),
        ) = r.ino
        {
            let private = f == FileKind::SshKey || write;
            if private && !self.owns(&view, &name, uid) {
                return Err(ActionError::NotOwner(format!("instance {name} is not yours")).into());
            }
        }
        if write {
            let Ino::InstanceFile(_, kind @ (FileKind::Spec | FileKind::Ctl | FileKind::Node)) =
                r.ino
            else {
                return Err(TreeError::ReadOnly("this file cannot be written"));
            };
            let inst = view.instances.get(&name).ok_or(TreeError::Stale)?;
            if kind == FileKind::Node && !inst.managed() {
                return Err(TreeError::ReadOnly(
                    "instances kvmfs does not manage stay where they are",
                ));
            }
            if kind == FileKind::Spec && !inst.takes_spec() {
                return Err(ActionError::Busy(format!(
                    "instance {name} is already committed; its spec.json is read-only"
                ))
                .into());
            }
            // Both files take whole documents: a writer always starts from empty, however
            // it opened the file (the kernel may strip O_TRUNC and truncate separately).
            let incarnation = inst.incarnation().to_string();
            let fh = self.new_handle(Handle::Write(WriteHandle {
                instance: name,
                incarnation,
                kind,
                buf: Vec::new(),
                dirty: false,
                committed: false,
            }));
            return Ok((fh, OpenMode::Direct));
        }
        if self.kernel_cache {
            // Refuse what a read would refuse (a folder, a vanished file) now.
            match r.ino {
                Ino::NodeFile(..)
                | Ino::InstanceFile(..)
                | Ino::NetworkFile(..)
                | Ino::ImageFile(..)
                | Ino::FlavorFile(..)
                | Ino::SnapshotInfo(_)
                | Ino::RootStatus => return Ok((LIVE_FH, OpenMode::Cached)),
                _ => {}
            }
        }
        let content = self.content(&r)?;
        Ok((
            self.new_handle(Handle::File(Arc::new(content))),
            OpenMode::Direct,
        ))
    }

    pub(super) fn write_handle(&self, fh: u64) -> Result<WriteHandle, TreeError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Write(w)) => Ok(w.clone()),
            _ => Err(TreeError::BadHandle),
        }
    }

    pub(super) fn store_write_handle(&self, fh: u64, w: WriteHandle) {
        if let Some(h @ Handle::Write(_)) = self.handles.lock().get_mut(&fh) {
            *h = Handle::Write(w);
        }
    }

    /// Reads from an open file. A cached-mode handle reads `ino` as the current view shows
    /// it, so the kernel's page cache never takes in content older than the newest view.
    /// Every read checks that what the handle was opened on is still there (the same
    /// incarnation): afterwards it is `ESTALE`, never the bytes of whatever has its name now.
    pub fn read(&self, fh: u64, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        let slice = |content: &[u8]| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(content.len());
            let end = start.saturating_add(size as usize).min(content.len());
            content[start..end].to_vec()
        };
        if fh == LIVE_FH {
            return Ok(slice(&self.content(&r)?));
        }
        let content = match self.handles.lock().get(&fh) {
            Some(Handle::File(c)) => c.clone(),
            Some(Handle::Write(w)) => return Ok(slice(&w.buf)),
            Some(Handle::Scratch(id)) => {
                let store = self.scratch.lock();
                let f = store.get(*id).ok_or(TreeError::Stale)?;
                return Ok(slice(&f.data));
            }
            Some(Handle::NodeCtl(_)) => return Ok(Vec::new()),
            _ => return Err(TreeError::BadHandle),
        };
        Ok(slice(&content))
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }
}

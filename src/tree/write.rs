//! The write side: `spec.json` and `ctl` writes (buffered, committed on a complete
//! document, rolled back when refused), `mkdir` and `rmdir` in `/instances` (and in
//! `snapshots/`, handed to `snapshots`), scratch files
//! (create, unlink, rename — onto `spec.json` a commit), modes and owners. Everything that
//! waits on a backend runs as a detached action.

use std::ffi::OsStr;

use super::handles::{Handle, WriteHandle};
use super::ino::{Ino, instance_key};
use super::{Attr, FileKind, Tree, TreeError, render};
use crate::cluster::actions::{ActionError, Control, NodeControl};
use crate::spec::{MAX_SPEC_BYTES, is_incomplete};

/// An instance folder that takes scratch files: a managed instance's incarnation.
pub(super) struct Folder {
    /// The tree's id of the incarnation.
    pub(super) id: u64,
    pub(super) name: String,
    /// Its row's incarnation.
    pub(super) incarnation: String,
}

impl Tree {
    /// Writes to `spec.json` (buffered; a complete document is checked at once so the
    /// writer gets EINVAL) or `ctl` (the command runs now). A write that is refused leaves
    /// nothing behind: the buffer is what it was before it.
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        uid: u32,
    ) -> Result<u32, TreeError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let node_ctl = match self.handles.lock().get(&fh) {
            Some(Handle::Scratch(id)) => {
                self.scratch.lock().write(*id, offset, data)?;
                return Ok(len);
            }
            Some(Handle::NodeCtl(node)) => Some(node.clone()),
            _ => None,
        };
        if let Some(node) = node_ctl {
            let cmd = NodeControl::parse(data)?;
            let c = self.cluster.clone();
            return self
                .detached(async move { c.node_control(&node, uid, cmd).await })
                .await
                .map(|()| len);
        }
        let mut w = self.write_handle(fh)?;
        // Nothing through a file opened on an instance that is gone, or made again.
        if !self.is_current(&w) {
            return Err(TreeError::Stale);
        }
        match w.kind {
            FileKind::Ctl => {
                let cmd = match Control::parse(data) {
                    Ok(c) => c,
                    Err(e) => {
                        self.record_error_later(&w, &e);
                        return Err(e.into());
                    }
                };
                let (c, name, inc) = (
                    self.cluster.clone(),
                    w.instance.clone(),
                    w.incarnation.clone(),
                );
                let r = self
                    .detached(async move { c.control(&name, &inc, uid, cmd).await })
                    .await;
                self.record_failure(&w, &r);
                r.map(|_| len)
            }
            FileKind::Node => {
                let (c, name, inc, text) = (
                    self.cluster.clone(),
                    w.instance.clone(),
                    w.incarnation.clone(),
                    data.to_vec(),
                );
                let started = tokio::time::Instant::now();
                let moving = self
                    .detached(async move { c.migrate(&name, &inc, uid, &text).await })
                    .await;
                // The move records its refusals and failures itself (a drain moves without
                // a file), so only a panicked task is recorded here.
                let r = match moving {
                    // Its outcome if it ends within the operation bound; past that the
                    // write is done and `status` follows the move.
                    Ok(Some(task)) => {
                        let bound = self.cluster.config().timing.op_timeout();
                        match tokio::time::timeout_at(started + bound, task).await {
                            Ok(Ok(r)) => r.map_err(TreeError::from),
                            Ok(Err(e)) => {
                                let r =
                                    Err(ActionError::Backend(format!("migration failed: {e}"))
                                        .into());
                                self.record_failure(&w, &r);
                                r
                            }
                            Err(_) => Ok(()),
                        }
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                r.map(|()| len)
            }
            _ if w.committed => {
                // `echo` may send its newline in a write of its own after the document.
                if data.iter().all(u8::is_ascii_whitespace) {
                    Ok(len)
                } else {
                    Err(ActionError::Busy(format!(
                        "instance {}: spec.json was already committed",
                        w.instance
                    ))
                    .into())
                }
            }
            _ => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(data.len());
                if end > MAX_SPEC_BYTES {
                    let e = ActionError::TooBig(format!(
                        "spec.json is limited to {MAX_SPEC_BYTES} bytes"
                    ));
                    self.record_error_later(&w, &e);
                    return Err(e.into());
                }
                if start > w.buf.len() {
                    // Bytes that are never written would read as zeros: no document has them.
                    let e = ActionError::Invalid(format!(
                        "spec.json: a write at byte {start} leaves a gap after the {} bytes \
                         written so far; write the document from its start, in order",
                        w.buf.len()
                    ));
                    self.record_error_later(&w, &e);
                    return Err(e.into());
                }
                let before = w.clone();
                if w.buf.len() < end {
                    w.buf.resize(end, 0);
                }
                w.buf[start..end].copy_from_slice(data);
                w.dirty = true;
                self.store_write_handle(fh, w.clone());
                // A complete document is committed now, not at close: shells ignore close()
                // errors, so only a write can tell `echo … > spec.json` what went wrong.
                if !is_incomplete(&w.buf) {
                    match self.commit(fh, w, uid).await {
                        Ok(()) => {}
                        // Still going: it may yet be committed, so its bytes stay.
                        Err(e @ TreeError::InProgress) => return Err(e),
                        Err(e) => {
                            self.store_write_handle(fh, before);
                            return Err(e);
                        }
                    }
                }
                Ok(len)
            }
        }
    }

    /// Records why an action on an instance its owner may act on failed (not a refusal
    /// because the caller is not the owner, or the instance is gone).
    /// Whether the instance `w` was opened on is still there (the same incarnation).
    fn is_current(&self, w: &WriteHandle) -> bool {
        self.cluster
            .view()
            .instances
            .get(&w.instance)
            .is_some_and(|i| i.incarnation() == w.incarnation)
    }

    pub(super) fn record_failure<T>(&self, w: &WriteHandle, r: &Result<T, TreeError>) {
        if let Err(TreeError::Action(e)) = r
            && !matches!(
                e,
                ActionError::NotOwner(_) | ActionError::NotFound(_) | ActionError::Stale(_)
            )
        {
            self.record_error_later(w, e);
        }
    }

    /// Records a refusal for the `error` file of the incarnation `w` was opened on, without
    /// making the caller wait for the database.
    pub(super) fn record_error_later(&self, w: &WriteHandle, e: &ActionError) {
        self.cluster
            .record_error(&w.instance, Some(&w.incarnation), e);
    }

    pub(super) async fn commit(
        &self,
        fh: u64,
        mut w: WriteHandle,
        uid: u32,
    ) -> Result<(), TreeError> {
        w.dirty = false;
        self.store_write_handle(fh, w.clone());
        let c = self.cluster.clone();
        let (name, inc, buf) = (w.instance.clone(), w.incarnation.clone(), w.buf.clone());
        self.detached(async move { c.commit_spec(&name, &inc, uid, &buf).await })
            .await?;
        w.committed = true;
        self.store_write_handle(fh, w);
        Ok(())
    }

    /// Truncates a writable file (`> spec.json` truncates before it writes).
    pub fn truncate(
        &self,
        ino: u64,
        fh: Option<u64>,
        size: u64,
        uid: u32,
    ) -> Result<Attr, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        let name = r.name.clone().unwrap_or_default();
        if let Ino::Scratch(id) = r.ino {
            self.scratch.lock().set_len(id, size)?;
            return self.attr(&r);
        }
        match r.ino {
            Ino::InstanceFile(_, FileKind::Spec | FileKind::Ctl | FileKind::Node)
                if self.owns(&view, &name, uid) => {}
            Ino::InstanceFile(_, FileKind::Spec | FileKind::Ctl | FileKind::Node) => {
                return Err(ActionError::NotOwner(format!("instance {name} is not yours")).into());
            }
            Ino::NodeFile(_, FileKind::Ctl) if uid == 0 => return self.attr(&r),
            _ => return Err(TreeError::ReadOnly("this file cannot be changed")),
        }
        if let Some(fh) = fh
            && let Ok(mut w) = self.write_handle(fh)
        {
            w.buf.truncate(usize::try_from(size).unwrap_or(usize::MAX));
            w.dirty = true;
            self.store_write_handle(fh, w);
        }
        self.attr(&r)
    }

    /// Commits what was written to `spec.json` and not committed yet (an incomplete
    /// document, which then fails with the parser's reason) when its writer closes it.
    pub async fn flush(&self, fh: u64, uid: u32) -> Result<(), TreeError> {
        let Ok(w) = self.write_handle(fh) else {
            return Ok(());
        };
        if !self.is_current(&w) {
            return Err(TreeError::Stale);
        }
        if w.kind != FileKind::Spec || !w.dirty || w.buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.commit(fh, w, uid).await
    }

    /// `mkdir` in `/instances`: a new draft instance owned by `uid`; in an instance's
    /// `snapshots`: a snapshot (see `snapshots`).
    pub async fn mkdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<Attr, TreeError> {
        if let Some(Ino::Snapshots(_)) = Ino::decode(parent) {
            return self.snapshot_mkdir(parent, name, uid).await;
        }
        if Ino::decode(parent) != Some(Ino::InstancesDir) {
            return Err(self.refuse_create(parent));
        }
        let n = name
            .to_str()
            .ok_or_else(|| ActionError::Invalid("instance names are ASCII".into()))?;
        let (c, n) = (self.cluster.clone(), n.to_string());
        self.detached(async move { c.create_draft(&n, uid).await })
            .await?;
        self.lookup(parent, name)
    }

    /// `rmdir` in `/instances`: deletes the instance and everything it holds; in an
    /// instance's `snapshots`: deletes a snapshot (see `snapshots`).
    pub async fn rmdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<(), TreeError> {
        match Ino::decode(parent) {
            Some(Ino::Snapshots(_)) => return self.snapshot_rmdir(parent, name, uid).await,
            Some(Ino::Instance(_)) if name == super::snapshots::SNAPSHOTS_DIR => {
                return self.snapshots_dir_rmdir(parent, uid);
            }
            _ => {}
        }
        if Ino::decode(parent) != Some(Ino::InstancesDir) {
            return Err(self.refuse_create(parent));
        }
        let n = name.to_str().ok_or(TreeError::NotFound)?.to_string();
        let id = self.cluster.view().instances.get(&n).and_then(|i| {
            self.names
                .lock()
                .instances
                .get(&instance_key(&n, &i.identity()))
        });
        let (c, nn) = (self.cluster.clone(), n.clone());
        let r = self.detached(async move { c.delete(&nn, uid).await }).await;
        if r.is_ok()
            && let Some(id) = id
        {
            self.scratch.lock().forget_instance(id);
        }
        if let Err(TreeError::Action(e)) = &r
            && !matches!(e, ActionError::NotOwner(_) | ActionError::NotFound(_))
        {
            self.cluster.record_error(&n, None, e);
        }
        r
    }

    /// Runs an action to completion on its own task, even if the caller stops waiting (an
    /// action cut in the middle would leave a half-made or half-deleted instance), and waits
    /// for it at most `op_timeout`; past that the caller hears `InProgress`.
    pub(super) async fn detached<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ActionError>> + Send + 'static,
    ) -> Result<T, TreeError> {
        let task = tokio::spawn(fut);
        match tokio::time::timeout(self.cluster.config().timing.op_timeout(), task).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(ActionError::Backend(format!("action failed: {e}")).into()),
            Err(_) => Err(TreeError::InProgress),
        }
    }

    /// The managed instance whose folder `parent` is, for creating and removing scratch
    /// files in it.
    pub(super) fn scratch_parent(&self, parent: u64) -> Result<Folder, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(parent, &view)?;
        match r.ino {
            Ino::Instance(id) => {
                let name = r.name.unwrap_or_default();
                match view.instances.get(&name).filter(|i| i.managed()) {
                    Some(i) => Ok(Folder {
                        id,
                        incarnation: i.incarnation().to_string(),
                        name,
                    }),
                    None => Err(TreeError::ReadOnly(
                        "instances kvmfs does not manage take no files",
                    )),
                }
            }
            _ => Err(self.refuse_create(parent)),
        }
    }

    /// `create` in an instance folder: a scratch file (an editor's swap or backup file,
    /// or a file a tool writes and renames onto `spec.json`).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u16,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64), TreeError> {
        let folder = self.scratch_parent(parent)?;
        let name = name
            .to_str()
            .ok_or(TreeError::ReadOnly("file names here are UTF-8"))?;
        if render::is_reserved_instance_name(name) {
            return Err(TreeError::ReadOnly("that name belongs to a kvmfs file"));
        }
        let id = self
            .scratch
            .lock()
            .create(folder.id, name, mode & 0o7777, uid, gid)?;
        let attr = self.getattr(Ino::Scratch(id).encode())?;
        Ok((attr, self.new_handle(Handle::Scratch(id))))
    }

    /// `unlink` in an instance folder: a scratch file is removed. One of kvmfs's own files
    /// is not, but its owner's (or root's) unlink succeeds and changes nothing, so that
    /// `rm -r`, `find -delete` and file managers, which empty a folder before they remove
    /// it, come to the folder's `rmdir`, which deletes the instance.
    pub fn unlink(&self, parent: u64, name: &OsStr, uid: u32) -> Result<(), TreeError> {
        if let Some(Ino::Snapshot(_)) = Ino::decode(parent) {
            return self.snapshot_unlink(parent, name, uid);
        }
        let folder = self.scratch_parent(parent)?;
        let name = name.to_str().ok_or(TreeError::NotFound)?;
        {
            let mut store = self.scratch.lock();
            if let Some(id) = store.find(folder.id, name) {
                store.remove(id);
                return Ok(());
            }
        }
        let view = self.cluster.view();
        let r = self.resolve(parent, &view)?;
        match self.child(&r, name)? {
            Ino::InstanceFile(..) if self.owns(&view, &folder.name, uid) => Ok(()),
            Ino::InstanceFile(..) => {
                Err(ActionError::NotOwner(format!("instance {} is not yours", folder.name)).into())
            }
            _ => Err(TreeError::NotFound),
        }
    }

    /// `rename` within an instance folder: scratch files move freely; a scratch file renamed
    /// onto `spec.json` commits its content as the spec (how editors and scripts save a
    /// file atomically); `spec.json` renamed to a scratch name copies it (an editor's
    /// backup), and `spec.json` itself stays.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
        uid: u32,
    ) -> Result<(), TreeError> {
        let folder = self.scratch_parent(parent)?;
        if self.scratch_parent(new_parent)?.id != folder.id {
            return Err(TreeError::CrossDevice);
        }
        let (Some(from), Some(to)) = (name.to_str(), new_name.to_str()) else {
            return Err(TreeError::NotFound);
        };
        let spec = FileKind::Spec.file_name();
        let instance = folder.name.clone();
        let source = self.scratch.lock().find(folder.id, from);
        match source {
            Some(id) if to == spec => {
                let data = self
                    .scratch
                    .lock()
                    .get(id)
                    .map(|f| f.data.clone())
                    .ok_or(TreeError::NotFound)?;
                let view = self.cluster.view();
                if !self.owns(&view, &instance, uid) {
                    return Err(
                        ActionError::NotOwner(format!("instance {instance} is not yours")).into(),
                    );
                }
                if no_replace {
                    return Err(ActionError::Exists(format!("{spec} exists")).into());
                }
                // An editor putting back its backup after a failed save: nothing changes.
                let current = view
                    .instances
                    .get(&instance)
                    .map(|i| render::instance_file(i, FileKind::Spec))
                    .unwrap_or_default();
                if data == current {
                    self.scratch.lock().remove(id);
                    return Ok(());
                }
                let (c, n, inc) = (self.cluster.clone(), instance.clone(), folder.incarnation);
                self.detached(async move { c.commit_spec(&n, &inc, uid, &data).await })
                    .await?;
                self.scratch.lock().remove(id);
                Ok(())
            }
            Some(_) if render::is_reserved_instance_name(to) => {
                Err(TreeError::ReadOnly("that name belongs to a kvmfs file"))
            }
            Some(id) => {
                let mut store = self.scratch.lock();
                if no_replace && store.find(folder.id, to).is_some() {
                    return Err(ActionError::Exists(format!("{to} exists")).into());
                }
                store.rename(id, to);
                Ok(())
            }
            None if from == spec && !render::is_reserved_instance_name(to) => {
                let view = self.cluster.view();
                let inst = view.instances.get(&instance).ok_or(TreeError::NotFound)?;
                let data = render::instance_file(inst, FileKind::Spec);
                let mut store = self.scratch.lock();
                if no_replace && store.find(folder.id, to).is_some() {
                    return Err(ActionError::Exists(format!("{to} exists")).into());
                }
                let id = store.create(folder.id, to, 0o644, uid, self.owner.gid)?;
                store.set_len(id, 0)?;
                store.write(id, 0, &data)?;
                Ok(())
            }
            None if render::is_reserved_instance_name(from) => {
                Err(TreeError::ReadOnly("kvmfs's files cannot be renamed"))
            }
            None => Err(TreeError::NotFound),
        }
    }

    /// `chmod`/`chown`: scratch files take them (a new owner only from root); kvmfs's own
    /// files accept only the owner and group they already have, and the mode they already
    /// have — except that a managed instance's files take any mode from its owner (and root)
    /// without changing: copy tools (`mc`, `cp -p`, `gio copy`) set the source's mode on
    /// the `spec.json` they just wrote, which a committed spec has made read-only.
    pub fn set_attr(
        &self,
        ino: u64,
        mode: Option<u32>,
        new_uid: Option<u32>,
        new_gid: Option<u32>,
        caller: u32,
    ) -> Result<Attr, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        let current = self.attr(&r)?;
        let mode = mode.map(|m| (m & 0o7777) as u16);
        if let Ino::Scratch(id) = r.ino {
            if caller != 0 && (new_uid.is_some_and(|u| u != current.uid) || current.uid != caller) {
                return Err(TreeError::NotPermitted(
                    "only the owner may change this file",
                ));
            }
            self.scratch.lock().set_attr(id, mode, new_uid, new_gid);
            return self.getattr(ino);
        }
        let mode_ignored = matches!(r.ino, Ino::InstanceFile(..))
            && r.name.as_deref().is_some_and(|n| {
                view.instances.get(n).is_some_and(|i| i.managed()) && self.owns(&view, n, caller)
            });
        let same = mode.is_none_or(|m| m == current.perm || mode_ignored)
            && new_uid.is_none_or(|u| u == current.uid)
            && new_gid.is_none_or(|g| g == current.gid);
        if same {
            Ok(current)
        } else {
            Err(TreeError::NotPermitted(
                "kvmfs decides the owner and mode of its files",
            ))
        }
    }

    /// Whether `ino` is a directory that can hold new entries of the user's making.
    pub fn refuse_create(&self, parent: u64) -> TreeError {
        let view = self.cluster.view();
        match self.resolve(parent, &view) {
            Ok(r) => match r.ino {
                Ino::NodeFile(..)
                | Ino::InstanceFile(..)
                | Ino::NetworkFile(..)
                | Ino::MetricsFile(_) => TreeError::NotDir,
                _ => TreeError::ReadOnly("nothing can be created here"),
            },
            Err(e) => e,
        }
    }
}

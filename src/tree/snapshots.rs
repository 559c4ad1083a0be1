//! `instances/<i>/snapshots/`: a managed instance's snapshots as folders, each holding an
//! `info.json`, read from the domain's snapshots in the view (no backend call per read);
//! `mkdir` takes a snapshot and `rmdir` deletes one (both detached actions, see `write`).
//! Unmanaged instances have no `snapshots` folder. A snapshot's inodes belong to one
//! instance incarnation and one snapshot name (`ino::snapshot_key`); a snapshot gone from
//! the view answers `ESTALE`.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ino::{Ino, Names, snapshot_key, split_instance_key, split_snapshot_key};
use super::{Attr, DirEntry, EntryKind, FileKind, Tree, TreeError, render};
use crate::cluster::actions::ActionError;
use crate::cluster::view::{InstanceView, SnapshotView, View};
use crate::model::SnapshotName;

/// The folder's name in an instance folder.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// The managed instance incarnation of tree id `id`, if `view` still has it.
fn instance<'v>(names: &Names, view: &'v View, id: u64) -> Result<&'v InstanceView, TreeError> {
    let key = names.instances.name(id).ok_or(TreeError::NotFound)?;
    let (n, identity) = split_instance_key(key);
    view.instances
        .get(n)
        .filter(|i| i.managed() && i.identity() == identity)
        .map(|i| &**i)
        .ok_or(TreeError::Stale)
}

/// The instance incarnation's id and the snapshot's name of snapshot id `sid`.
fn snapshot_of(names: &Names, sid: u64) -> Result<(u64, String), TreeError> {
    let key = names.snapshots.name(sid).ok_or(TreeError::NotFound)?;
    let (id, snap) = split_snapshot_key(key).ok_or(TreeError::NotFound)?;
    Ok((id, snap.to_string()))
}

/// A snapshot of an instance as the view shows it.
fn find<'i>(i: &'i InstanceView, snap: &str) -> Option<&'i SnapshotView> {
    i.domain.as_ref()?.snapshots.iter().find(|s| s.name == snap)
}

/// Resolves a snapshot inode in `view` to its instance's name (what `Resolved::name` holds).
pub(super) fn resolve(names: &Names, ino: Ino, view: &View) -> Result<String, TreeError> {
    match ino {
        Ino::Snapshots(id) => Ok(instance(names, view, id)?.name.clone()),
        Ino::Snapshot(sid) | Ino::SnapshotInfo(sid) => {
            let (id, snap) = snapshot_of(names, sid)?;
            let i = instance(names, view, id)?;
            find(i, &snap).ok_or(TreeError::Stale)?;
            Ok(i.name.clone())
        }
        _ => Err(TreeError::NotFound),
    }
}

/// The entries of a snapshot folder inode.
pub(super) fn children(names: &mut Names, ino: Ino, view: &View) -> Vec<DirEntry> {
    match ino {
        Ino::Snapshots(id) => {
            let Ok(i) = instance(names, view, id) else {
                return Vec::new();
            };
            let list = i.domain.as_ref().map(|d| d.snapshots.clone());
            list.iter()
                .flat_map(|l| l.iter())
                .map(|s| DirEntry {
                    ino: Ino::Snapshot(names.snapshots.id(&snapshot_key(id, &s.name))).encode(),
                    kind: EntryKind::Dir,
                    name: s.name.clone(),
                })
                .collect()
        }
        Ino::Snapshot(sid) => vec![DirEntry {
            ino: Ino::SnapshotInfo(sid).encode(),
            kind: EntryKind::File,
            name: FileKind::Info.file_name().to_string(),
        }],
        _ => Vec::new(),
    }
}

/// The inode of `name` in snapshot folder `parent`.
pub(super) fn child(
    names: &mut Names,
    parent: Ino,
    name: &str,
    view: &View,
) -> Result<Ino, TreeError> {
    match parent {
        Ino::Snapshots(id) => {
            let i = instance(names, view, id)?;
            find(i, name).ok_or(TreeError::NotFound)?;
            Ok(Ino::Snapshot(names.snapshots.id(&snapshot_key(id, name))))
        }
        Ino::Snapshot(sid) if name == FileKind::Info.file_name() => Ok(Ino::SnapshotInfo(sid)),
        Ino::Snapshot(_) => Err(TreeError::NotFound),
        _ => Err(TreeError::NotDir),
    }
}

/// `info.json` of a snapshot.
pub(super) fn info_json(instance: &str, s: &SnapshotView) -> Vec<u8> {
    let v = serde_json::json!({
        "name": s.name,
        "instance": instance,
        "created_at": s.created_at,
        "state": s.state.word(),
        "size_bytes": s.size_bytes,
        "parent": s.parent,
        "current": s.current,
    });
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

fn created(s: &SnapshotView) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s.created_at).unwrap_or(0))
}

impl Tree {
    /// The content of a snapshot's `info.json`.
    pub(super) fn snapshot_content(&self, ino: Ino, view: &View) -> Result<Vec<u8>, TreeError> {
        let Ino::SnapshotInfo(sid) = ino else {
            return Err(TreeError::IsDir);
        };
        let names = self.names.lock();
        let (id, snap) = snapshot_of(&names, sid)?;
        let i = instance(&names, view, id)?;
        let s = find(i, &snap).ok_or(TreeError::Stale)?;
        Ok(info_json(&i.name, s))
    }

    /// Attributes of a snapshot inode: folders and `info.json` of the instance's owner
    /// (so the kernel, too, lets only the owner and root make and remove snapshots); a
    /// snapshot's folder has its creation time as mtime (what `ls -l` shows).
    pub(super) fn snapshot_attr(
        &self,
        ino: Ino,
        view: &View,
        base: Attr,
    ) -> Result<Attr, TreeError> {
        let (i, snap) = {
            let names = self.names.lock();
            match ino {
                Ino::Snapshots(id) => (instance(&names, view, id)?, None),
                Ino::Snapshot(sid) | Ino::SnapshotInfo(sid) => {
                    let (id, snap) = snapshot_of(&names, sid)?;
                    (instance(&names, view, id)?, Some(snap))
                }
                _ => return Err(TreeError::NotFound),
            }
        };
        let uid = render::instance_uid(i, self.owner.uid);
        let s = match &snap {
            Some(snap) => Some(find(i, snap).ok_or(TreeError::Stale)?),
            None => None,
        };
        Ok(match ino {
            Ino::SnapshotInfo(_) => Attr {
                kind: EntryKind::File,
                size: s.map_or(0, |s| info_json(&i.name, s).len() as u64),
                perm: 0o444,
                uid,
                nlink: 1,
                mtime: i.changed_at,
                ..base
            },
            _ => Attr {
                perm: 0o755,
                uid,
                mtime: s.map_or(i.changed_at, created),
                ..base
            },
        })
    }

    /// The parent folder's inode of a snapshot inode.
    pub(super) fn snapshot_parent(&self, ino: Ino) -> u64 {
        let names = self.names.lock();
        match ino {
            Ino::Snapshots(id) => Ino::Instance(id).encode(),
            Ino::Snapshot(sid) => snapshot_of(&names, sid)
                .map(|(id, _)| Ino::Snapshots(id).encode())
                .unwrap_or(Ino::InstancesDir.encode()),
            Ino::SnapshotInfo(sid) => Ino::Snapshot(sid).encode(),
            _ => Ino::InstancesDir.encode(),
        }
    }

    /// The instance name and incarnation whose `snapshots` folder `parent` is.
    fn snapshots_folder(&self, parent: u64) -> Result<(String, String), TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(parent, &view)?;
        let name = r.name.unwrap_or_default();
        let i = view.instances.get(&name).ok_or(TreeError::Stale)?;
        Ok((name, i.incarnation().to_string()))
    }

    /// `mkdir snapshots/SNAP`: takes a snapshot.
    pub(super) async fn snapshot_mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        uid: u32,
    ) -> Result<Attr, TreeError> {
        let (instance, inc) = self.snapshots_folder(parent)?;
        let snap = name
            .to_str()
            .ok_or_else(|| ActionError::Invalid("snapshot names are ASCII".into()))
            .and_then(|n| {
                SnapshotName::new(n).map_err(|e| ActionError::Invalid(format!("snapshot {e}")))
            });
        let r = match snap {
            Ok(snap) => {
                let (c, n, i) = (self.cluster.clone(), instance.clone(), inc.clone());
                self.detached(async move { c.snapshot_create(&n, &i, uid, &snap).await })
                    .await
            }
            Err(e) => Err(e.into()),
        };
        self.record_snapshot_failure(&instance, &inc, &r);
        r?;
        self.lookup(parent, name)
    }

    /// `rmdir snapshots/SNAP`: deletes a snapshot.
    pub(super) async fn snapshot_rmdir(
        &self,
        parent: u64,
        name: &OsStr,
        uid: u32,
    ) -> Result<(), TreeError> {
        let (instance, inc) = self.snapshots_folder(parent)?;
        // A name no snapshot can have names none.
        let snap = name
            .to_str()
            .and_then(|n| SnapshotName::new(n).ok())
            .ok_or(TreeError::NotFound)?;
        let (c, n, i) = (self.cluster.clone(), instance.clone(), inc.clone());
        let r = self
            .detached(async move { c.snapshot_delete(&n, &i, uid, &snap).await })
            .await;
        self.record_snapshot_failure(&instance, &inc, &r);
        r
    }

    /// `rmdir snapshots` in an instance folder: changes nothing, for the owner (or root),
    /// so that `rm -r` of an instance folder comes to the folder's `rmdir`.
    pub(super) fn snapshots_dir_rmdir(&self, parent: u64, uid: u32) -> Result<(), TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(parent, &view)?;
        let name = r.name.unwrap_or_default();
        if !view.instances.get(&name).is_some_and(|i| i.managed()) {
            return Err(TreeError::NotFound);
        }
        if !self.owns(&view, &name, uid) {
            return Err(ActionError::NotOwner(format!("instance {name} is not yours")).into());
        }
        Ok(())
    }

    /// `unlink` of a snapshot's `info.json`: changes nothing, for the owner (or root), so
    /// that `rm -r` comes to the snapshot's `rmdir`.
    pub(super) fn snapshot_unlink(
        &self,
        parent: u64,
        name: &OsStr,
        uid: u32,
    ) -> Result<(), TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(parent, &view)?;
        let instance = r.name.clone().unwrap_or_default();
        match name.to_str().map(|n| self.child(&r, n)) {
            Some(Ok(Ino::SnapshotInfo(_))) if self.owns(&view, &instance, uid) => Ok(()),
            Some(Ok(Ino::SnapshotInfo(_))) => {
                Err(ActionError::NotOwner(format!("instance {instance} is not yours")).into())
            }
            _ => Err(TreeError::NotFound),
        }
    }

    /// Records in the instance's `error` file why a snapshot operation its owner asked for
    /// failed (not that the caller is not the owner, or that the instance is gone).
    fn record_snapshot_failure<T>(&self, instance: &str, inc: &str, r: &Result<T, TreeError>) {
        if let Err(TreeError::Action(e)) = r
            && !matches!(
                e,
                ActionError::NotOwner(_) | ActionError::NotFound(_) | ActionError::Stale(_)
            )
        {
            self.cluster.record_error(instance, Some(inc), e);
        }
    }
}

//! What a new view makes wrong in the kernel's caches (attributes of the inodes whose object
//! changed or is gone; names are never invalidated, see `Tree::invalidations`), and the wait
//! of operations until the kernel has been told (`settle`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::ino::{Ino, instance_key, snapshot_key};
use super::{Tree, render};
use crate::cluster::view::{InstanceMap, InstanceView, View};

/// What a new view makes wrong in the kernel's caches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidations {
    /// Inodes whose attributes or content changed, or that are gone.
    pub inodes: Vec<u64>,
    /// Instance incarnations (tree ids) that are gone: deleted, or their name taken by
    /// another incarnation.
    pub gone_instances: Vec<u64>,
}

/// How long a change waits for the kernel's caches to be invalidated before it answers.
pub(super) const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How one object differs between two views.
pub(super) enum Change<'a, T> {
    Gone(&'a T),
    Changed(&'a T, &'a T),
}

/// The names whose object is not the same `Arc` in `new` as in `old` (changed or gone); names
/// only in `new` are new to the kernel as well, so nothing of theirs can be cached.
pub(super) fn diff<'a, T>(
    old: &'a std::collections::BTreeMap<String, Arc<T>>,
    new: &'a std::collections::BTreeMap<String, Arc<T>>,
) -> Vec<(&'a str, Change<'a, T>)> {
    old.iter()
        .filter_map(|(name, o)| match new.get(name) {
            None => Some((name.as_str(), Change::Gone(&**o))),
            Some(n) if !Arc::ptr_eq(o, n) => Some((name.as_str(), Change::Changed(&**o, &**n))),
            Some(_) => None,
        })
        .collect()
}

/// What changed between two views' instances, by name: those gone, and those whose `Arc`
/// changed. The maps share what did not change, and the diff skips it.
pub(super) fn diff_instances<'a>(
    old: &'a InstanceMap,
    new: &'a InstanceMap,
) -> Vec<(&'a str, Change<'a, InstanceView>)> {
    old.diff(new)
        .filter_map(|item| match item {
            imbl::ordmap::DiffItem::Remove(name, o) => Some((name.as_str(), Change::Gone(&**o))),
            imbl::ordmap::DiffItem::Update {
                old: (name, o),
                new: (_, n),
            } if !Arc::ptr_eq(o, n) => Some((name.as_str(), Change::Changed(&**o, &**n))),
            _ => None,
        })
        .collect()
}

impl Tree {
    /// What the kernel may hold from view `old` that view `new` makes wrong: the inodes of
    /// every node, instance, network and image whose object changed (or is gone). Names the
    /// kernel never saw (no inode number yet) are skipped.
    ///
    /// Names that are gone are not dropped from the kernel's cache here: dropping one takes
    /// its folder's lock, which a `mkdir` or `rmdir` in that folder holds while it waits for
    /// kvmfs, and a daemon killed at that moment could never exit. Instead every inode of
    /// something gone answers `ESTALE`, and the kernel then looks the path up again.
    pub fn invalidations(&self, old: &View, new: &View) -> Invalidations {
        let mut out = Invalidations::default();
        let names = self.names.lock();
        if old.instances_changed_at != new.instances_changed_at {
            out.inodes.push(Ino::InstancesDir.encode());
        }
        if old.status_changed_at != new.status_changed_at {
            out.inodes.push(Ino::RootStatus.encode());
        }
        if !old.instances.ptr_eq(&new.instances) {
            for (name, change) in diff_instances(&old.instances, &new.instances) {
                let before = match change {
                    Change::Gone(before) | Change::Changed(before, _) => before,
                };
                let Some(id) = names.instances.get(&instance_key(name, &before.identity())) else {
                    continue;
                };
                out.inodes.push(Ino::Instance(id).encode());
                out.inodes.push(Ino::InstanceLink(id).encode());
                for f in render::INSTANCE_FILE_KINDS {
                    out.inodes.push(Ino::InstanceFile(id, *f).encode());
                }
                out.inodes.push(Ino::Snapshots(id).encode());
                for s in before.domain.iter().flat_map(|d| d.snapshots.iter()) {
                    if let Some(sid) = names.snapshots.get(&snapshot_key(id, &s.name)) {
                        out.inodes.push(Ino::Snapshot(sid).encode());
                        out.inodes.push(Ino::SnapshotInfo(sid).encode());
                    }
                }
                let gone = match change {
                    Change::Gone(_) => true,
                    Change::Changed(before, after) => before.identity() != after.identity(),
                };
                if gone {
                    out.gone_instances.push(id);
                }
            }
        }
        for (name, _) in diff(&old.nodes, &new.nodes) {
            let Some(id) = names.nodes.get(name) else {
                continue;
            };
            out.inodes.push(Ino::Node(id).encode());
            out.inodes.push(Ino::NodeInstances(id).encode());
            for f in render::NODE_FILES {
                out.inodes.push(Ino::NodeFile(id, *f).encode());
            }
        }
        for (name, _) in diff(&old.networks, &new.networks) {
            let Some(id) = names.networks.get(name) else {
                continue;
            };
            out.inodes.push(Ino::Network(id).encode());
            for f in render::NETWORK_FILES {
                out.inodes.push(Ino::NetworkFile(id, *f).encode());
            }
        }
        for (name, _) in diff(&old.images, &new.images) {
            let Some(id) = names.images.get(name) else {
                continue;
            };
            out.inodes.push(Ino::Image(id).encode());
            for f in render::IMAGE_FILES {
                out.inodes.push(Ino::ImageFile(id, *f).encode());
            }
        }
        out
    }

    /// Drops what the tree keeps for instance incarnations that are gone (their scratch
    /// files): called by whoever follows the views, with `Invalidations::gone_instances`.
    pub fn forget_instances(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut store = self.scratch.lock();
        for id in ids {
            store.forget_instance(*id);
        }
    }

    /// Records that the kernel has been told what views up to `version` made wrong; a
    /// follower calls it for every view it handled (see `settle`).
    pub fn mark_invalidated(&self, version: u64) {
        self.following.store(true, Ordering::Release);
        self.invalidated.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    /// Waits until the kernel has been told what the current view changed, so what this
    /// operation changed is what the next read through the mount sees. Bounded: the kernel
    /// is told from a thread of its own, which nothing here can block for long.
    pub async fn settle(&self) {
        if !self.kernel_cache || !self.following.load(Ordering::Acquire) {
            return;
        }
        let target = self.cluster.view().version;
        let mut rx = self.invalidated.subscribe();
        let _ = tokio::time::timeout(SETTLE_LIMIT, rx.wait_for(|v| *v >= target)).await;
    }
}

//! From inode numbers to what they show: resolving an inode in a view (an object gone, or
//! replaced by another incarnation, is `Stale`), the entries of a folder, the attributes and
//! the content of a file.

use std::ffi::OsStr;
use std::sync::Arc;

use super::ino::{Ino, instance_key, split_instance_key};
use super::{Attr, DirEntry, EntryKind, FileKind, Handle, MetricsFile, Tree, TreeError, render};
use crate::cluster::view::View;

/// What a resolved inode is, with the view it was resolved in.
pub(super) struct Resolved<'v> {
    pub(super) ino: Ino,
    pub(super) view: &'v View,
    pub(super) name: Option<String>,
}

impl Tree {
    /// Decodes `ino` and checks that what it names still exists in `view`.
    pub(super) fn resolve<'v>(&self, ino: u64, view: &'v View) -> Result<Resolved<'v>, TreeError> {
        let i = Ino::decode(ino).ok_or(TreeError::NotFound)?;
        let names = self.names.lock();
        let name = match i {
            Ino::Root
            | Ino::NodesDir
            | Ino::InstancesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir
            | Ino::RootStatus
            | Ino::MetricsDir
            | Ino::ZabbixDir
            | Ino::MetricsFile(_) => None,
            Ino::Node(id) | Ino::NodeInstances(id) | Ino::NodeFile(id, _) => {
                let n = names.nodes.name(id).ok_or(TreeError::NotFound)?;
                view.nodes.get(n).ok_or(TreeError::Stale)?;
                Some(n.to_string())
            }
            Ino::Instance(id) | Ino::InstanceFile(id, _) | Ino::InstanceLink(id) => {
                let key = names.instances.name(id).ok_or(TreeError::NotFound)?;
                let (n, identity) = split_instance_key(key);
                // Gone, or the name now belongs to another incarnation: never answer for it.
                let inst = view.instances.get(n).ok_or(TreeError::Stale)?;
                if inst.identity() != identity {
                    return Err(TreeError::Stale);
                }
                if let Ino::InstanceFile(_, f) = i
                    && !render::instance_files(inst).contains(&f)
                {
                    return Err(TreeError::Stale);
                }
                Some(n.to_string())
            }
            Ino::Network(id) | Ino::NetworkFile(id, _) => {
                let n = names.networks.name(id).ok_or(TreeError::NotFound)?;
                view.networks.get(n).ok_or(TreeError::Stale)?;
                Some(n.to_string())
            }
            Ino::Image(id) | Ino::ImageFile(id, _) => {
                let n = names.images.name(id).ok_or(TreeError::NotFound)?;
                view.images.get(n).ok_or(TreeError::Stale)?;
                if let Ino::ImageFile(_, f) = i
                    && !render::IMAGE_FILES.contains(&f)
                {
                    return Err(TreeError::NotFound);
                }
                Some(n.to_string())
            }
            Ino::Flavor(id) | Ino::FlavorFile(id, _) => {
                let n = names.flavors.name(id).ok_or(TreeError::NotFound)?;
                self.cluster
                    .config()
                    .flavors
                    .get(n)
                    .ok_or(TreeError::NotFound)?;
                if let Ino::FlavorFile(_, f) = i
                    && !render::FLAVOR_FILES.contains(&f)
                {
                    return Err(TreeError::NotFound);
                }
                Some(n.to_string())
            }
            Ino::Snapshots(_) | Ino::Snapshot(_) | Ino::SnapshotInfo(_) => {
                Some(super::snapshots::resolve(&names, i, view)?)
            }
            Ino::Scratch(id) => {
                let instance = self
                    .scratch
                    .lock()
                    .get(id)
                    .ok_or(TreeError::Stale)?
                    .instance;
                let key = names.instances.name(instance).ok_or(TreeError::Stale)?;
                let (n, identity) = split_instance_key(key);
                view.instances
                    .get(n)
                    .filter(|i| i.managed() && i.identity() == identity)
                    .ok_or(TreeError::Stale)?;
                Some(n.to_string())
            }
        };
        Ok(Resolved { ino: i, view, name })
    }

    /// The entries of a directory inode, in a stable order, without `.` and `..`.
    pub(super) fn children(&self, r: &Resolved<'_>) -> Result<Vec<DirEntry>, TreeError> {
        let v = r.view;
        let mut names = self.names.lock();
        let dir = |ino: Ino, name: &str| DirEntry {
            ino: ino.encode(),
            kind: EntryKind::Dir,
            name: name.to_string(),
        };
        let file = |ino: Ino, f: FileKind| DirEntry {
            ino: ino.encode(),
            kind: EntryKind::File,
            name: f.file_name().to_string(),
        };
        let metrics_file = |f: MetricsFile| DirEntry {
            ino: Ino::MetricsFile(f).encode(),
            kind: EntryKind::File,
            name: f.file_name().to_string(),
        };
        let entries = match r.ino {
            Ino::Root => vec![
                dir(Ino::FlavorsDir, "flavors"),
                dir(Ino::ImagesDir, "images"),
                dir(Ino::InstancesDir, "instances"),
                dir(Ino::MetricsDir, "metrics"),
                dir(Ino::NetworksDir, "networks"),
                dir(Ino::NodesDir, "nodes"),
                DirEntry {
                    ino: Ino::RootStatus.encode(),
                    kind: EntryKind::File,
                    name: "status".into(),
                },
            ],
            Ino::NodesDir => v
                .nodes
                .keys()
                .map(|n| dir(Ino::Node(names.nodes.id(n)), n))
                .collect(),
            Ino::InstancesDir => v
                .instances
                .iter()
                .map(|(n, i)| {
                    let id = names.instances.id(&instance_key(n, &i.identity()));
                    dir(Ino::Instance(id), n)
                })
                .collect(),
            Ino::NetworksDir => v
                .networks
                .keys()
                .map(|n| dir(Ino::Network(names.networks.id(n)), n))
                .collect(),
            Ino::ImagesDir => v
                .images
                .keys()
                .map(|n| dir(Ino::Image(names.images.id(n)), n))
                .collect(),
            Ino::FlavorsDir => self
                .cluster
                .config()
                .flavors
                .keys()
                .map(|n| dir(Ino::Flavor(names.flavors.id(n)), n))
                .collect(),
            Ino::Node(id) => {
                let mut e: Vec<DirEntry> = render::NODE_FILES
                    .iter()
                    .map(|f| file(Ino::NodeFile(id, *f), *f))
                    .collect();
                e.push(dir(Ino::NodeInstances(id), "instances"));
                e
            }
            Ino::NodeInstances(_) => {
                let node = r.name.as_deref().and_then(|n| v.nodes.get(n));
                node.iter()
                    .flat_map(|n| n.instance_names.iter())
                    .filter_map(|i| {
                        let identity = v.instances.get(i)?.identity();
                        Some(DirEntry {
                            ino: Ino::InstanceLink(names.instances.id(&instance_key(i, &identity)))
                                .encode(),
                            kind: EntryKind::Symlink,
                            name: i.clone(),
                        })
                    })
                    .collect()
            }
            Ino::Instance(id) => {
                let name = r.name.as_deref().unwrap_or("");
                let inst = v.instances.get(name).ok_or(TreeError::NotFound)?;
                let mut e: Vec<DirEntry> = render::instance_files(inst)
                    .iter()
                    .map(|f| file(Ino::InstanceFile(id, *f), *f))
                    .collect();
                e.extend(
                    self.scratch
                        .lock()
                        .list(id)
                        .into_iter()
                        .map(|(n, sid)| DirEntry {
                            ino: Ino::Scratch(sid).encode(),
                            kind: EntryKind::File,
                            name: n,
                        }),
                );
                if inst.managed() {
                    e.push(dir(Ino::Snapshots(id), super::snapshots::SNAPSHOTS_DIR));
                }
                e.sort_by(|a, b| a.name.cmp(&b.name));
                e
            }
            Ino::Snapshots(_) | Ino::Snapshot(_) => {
                super::snapshots::children(&mut names, r.ino, v)
            }
            Ino::Network(id) => render::NETWORK_FILES
                .iter()
                .map(|f| file(Ino::NetworkFile(id, *f), *f))
                .collect(),
            Ino::Image(id) => render::IMAGE_FILES
                .iter()
                .map(|f| file(Ino::ImageFile(id, *f), *f))
                .collect(),
            Ino::Flavor(id) => render::FLAVOR_FILES
                .iter()
                .map(|f| file(Ino::FlavorFile(id, *f), *f))
                .collect(),
            Ino::MetricsDir => {
                let mut e: Vec<DirEntry> = MetricsFile::IN_METRICS
                    .iter()
                    .map(|f| metrics_file(*f))
                    .collect();
                e.push(dir(Ino::ZabbixDir, "zabbix"));
                e
            }
            Ino::ZabbixDir => MetricsFile::IN_ZABBIX
                .iter()
                .map(|f| metrics_file(*f))
                .collect(),
            Ino::MetricsFile(_)
            | Ino::NodeFile(..)
            | Ino::InstanceFile(..)
            | Ino::NetworkFile(..)
            | Ino::ImageFile(..)
            | Ino::FlavorFile(..)
            | Ino::RootStatus
            | Ino::Scratch(_)
            | Ino::SnapshotInfo(_)
            | Ino::InstanceLink(_) => return Err(TreeError::NotDir),
        };
        Ok(entries)
    }

    /// The inode of entry `name` in directory `r`, found without listing the directory.
    pub(super) fn child(&self, r: &Resolved<'_>, name: &str) -> Result<Ino, TreeError> {
        let v = r.view;
        let own = r.name.as_deref().unwrap_or("");
        let file_in = |files: &[FileKind]| {
            files
                .iter()
                .copied()
                .find(|f| f.file_name() == name)
                .ok_or(TreeError::NotFound)
        };
        let metrics_in = |files: &[MetricsFile]| {
            files
                .iter()
                .copied()
                .find(|f| f.file_name() == name)
                .map(Ino::MetricsFile)
                .ok_or(TreeError::NotFound)
        };
        let mut names = self.names.lock();
        let ino = match r.ino {
            Ino::Root => match name {
                "nodes" => Ino::NodesDir,
                "instances" => Ino::InstancesDir,
                "networks" => Ino::NetworksDir,
                "images" => Ino::ImagesDir,
                "flavors" => Ino::FlavorsDir,
                "metrics" => Ino::MetricsDir,
                "status" => Ino::RootStatus,
                _ => return Err(TreeError::NotFound),
            },
            Ino::NodesDir if v.nodes.contains_key(name) => Ino::Node(names.nodes.id(name)),
            Ino::InstancesDir if v.instances.contains_key(name) => {
                let identity = v
                    .instances
                    .get(name)
                    .map(|i| i.identity())
                    .unwrap_or_default();
                Ino::Instance(names.instances.id(&instance_key(name, &identity)))
            }
            Ino::NetworksDir if v.networks.contains_key(name) => {
                Ino::Network(names.networks.id(name))
            }
            Ino::ImagesDir if v.images.contains_key(name) => Ino::Image(names.images.id(name)),
            Ino::FlavorsDir if self.cluster.config().flavors.contains_key(name) => {
                Ino::Flavor(names.flavors.id(name))
            }
            Ino::NodesDir
            | Ino::InstancesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir => return Err(TreeError::NotFound),
            Ino::Node(id) if name == "instances" => Ino::NodeInstances(id),
            Ino::Node(id) => Ino::NodeFile(id, file_in(render::NODE_FILES)?),
            Ino::NodeInstances(_) => {
                let listed = v
                    .nodes
                    .get(own)
                    .is_some_and(|n| n.instance_names.contains(name));
                let Some(inst) = v.instances.get(name).filter(|_| listed) else {
                    return Err(TreeError::NotFound);
                };
                Ino::InstanceLink(names.instances.id(&instance_key(name, &inst.identity())))
            }
            Ino::Instance(id) => {
                let inst = v.instances.get(own).ok_or(TreeError::NotFound)?;
                if name == super::snapshots::SNAPSHOTS_DIR && inst.managed() {
                    return Ok(Ino::Snapshots(id));
                }
                match file_in(render::instance_files(inst)) {
                    Ok(f) => Ino::InstanceFile(id, f),
                    Err(e) => match self.scratch.lock().find(id, name) {
                        Some(sid) => Ino::Scratch(sid),
                        None => return Err(e),
                    },
                }
            }
            Ino::Network(id) => Ino::NetworkFile(id, file_in(render::NETWORK_FILES)?),
            Ino::Image(id) => Ino::ImageFile(id, file_in(render::IMAGE_FILES)?),
            Ino::Flavor(id) => Ino::FlavorFile(id, file_in(render::FLAVOR_FILES)?),
            Ino::MetricsDir if name == "zabbix" => Ino::ZabbixDir,
            Ino::MetricsDir => metrics_in(MetricsFile::IN_METRICS)?,
            Ino::ZabbixDir => metrics_in(MetricsFile::IN_ZABBIX)?,
            Ino::Snapshots(_) | Ino::Snapshot(_) | Ino::SnapshotInfo(_) => {
                super::snapshots::child(&mut names, r.ino, name, v)?
            }
            Ino::MetricsFile(_)
            | Ino::NodeFile(..)
            | Ino::InstanceFile(..)
            | Ino::NetworkFile(..)
            | Ino::ImageFile(..)
            | Ino::FlavorFile(..)
            | Ino::RootStatus
            | Ino::Scratch(_)
            | Ino::InstanceLink(_) => return Err(TreeError::NotDir),
        };
        Ok(ino)
    }

    pub(super) fn content(&self, r: &Resolved<'_>) -> Result<Vec<u8>, TreeError> {
        let v = r.view;
        let name = r.name.as_deref().unwrap_or("");
        match r.ino {
            Ino::NodeFile(_, f) => {
                let n = v.nodes.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::node_file(n, f))
            }
            Ino::InstanceFile(_, FileKind::SshKey) => {
                let i = v.instances.get(name).ok_or(TreeError::NotFound)?;
                // Kept sealed in the row; opened for each read.
                Ok(self.cluster.private_key(i)?)
            }
            Ino::InstanceFile(_, f) => {
                let i = v.instances.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::instance_file(i, f))
            }
            Ino::NetworkFile(_, f) => {
                let n = v.networks.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::network_file(n, f))
            }
            Ino::ImageFile(_, f) => {
                let i = v.images.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::image_file(i, f))
            }
            Ino::FlavorFile(_, f) => {
                let fl = self
                    .cluster
                    .config()
                    .flavors
                    .get(name)
                    .ok_or(TreeError::NotFound)?;
                Ok(render::flavor_file(name, fl, f))
            }
            Ino::RootStatus => Ok(render::root_status(v)),
            // Rendered from the view and the counters at each read: no backend call.
            Ino::MetricsFile(f) => Ok(self.metrics_file(v, f)),
            Ino::Scratch(id) => self
                .scratch
                .lock()
                .get(id)
                .map(|f| f.data.clone())
                .ok_or(TreeError::NotFound),
            Ino::InstanceLink(_) => Err(TreeError::NotFound),
            Ino::SnapshotInfo(_) => self.snapshot_content(r.ino, v),
            _ => Err(TreeError::IsDir),
        }
    }

    pub(super) fn attr(&self, r: &Resolved<'_>) -> Result<Attr, TreeError> {
        let v = r.view;
        let name = r.name.as_deref().unwrap_or("");
        let base = Attr {
            ino: r.ino.encode(),
            kind: EntryKind::Dir,
            size: 0,
            perm: 0o555,
            uid: self.owner.uid,
            gid: self.owner.gid,
            nlink: 2,
            mtime: self.started,
            cacheable: true,
        };
        let node_mtime = || v.nodes.get(name).map(|n| n.changed_at);
        let instance = || v.instances.get(name).ok_or(TreeError::NotFound);
        let network_mtime = || v.networks.get(name).map(|n| n.changed_at);
        let image_mtime = || v.images.get(name).map(|i| i.changed_at);
        let attr = match r.ino {
            Ino::Root
            | Ino::NodesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir
            | Ino::MetricsDir
            | Ino::ZabbixDir => base,
            // Live counters: never cached by the kernel (TTL 0, opened with direct_io), so
            // every `stat` and `cat` asks kvmfs; the mtime is that moment.
            Ino::MetricsFile(_) => Attr {
                kind: EntryKind::File,
                size: self.content(r)?.len() as u64,
                perm: 0o444,
                nlink: 1,
                mtime: std::time::SystemTime::now(),
                cacheable: false,
                ..base
            },
            // World-writable: anyone may create an instance. Not sticky: the kernel's sticky
            // rule would answer EPERM before kvmfs is asked; kvmfs itself lets only an
            // instance's owner (or root) remove it (EACCES), and takes no other entries here.
            Ino::InstancesDir => Attr {
                perm: 0o777,
                mtime: v.instances_changed_at,
                ..base
            },
            Ino::Node(_) | Ino::NodeInstances(_) => Attr {
                mtime: node_mtime().unwrap_or(base.mtime),
                ..base
            },
            Ino::Network(_) => Attr {
                mtime: network_mtime().unwrap_or(base.mtime),
                ..base
            },
            Ino::Image(_) => Attr {
                mtime: image_mtime().unwrap_or(base.mtime),
                ..base
            },
            Ino::Flavor(_) => base,
            Ino::Snapshots(_) | Ino::Snapshot(_) | Ino::SnapshotInfo(_) => {
                self.snapshot_attr(r.ino, v, base)?
            }
            Ino::Instance(_) => {
                let i = instance()?;
                Attr {
                    perm: 0o755,
                    uid: render::instance_uid(i, self.owner.uid),
                    mtime: i.changed_at,
                    ..base
                }
            }
            Ino::InstanceLink(_) => Attr {
                kind: EntryKind::Symlink,
                size: render::link_target(name).len() as u64,
                perm: 0o777,
                nlink: 1,
                mtime: instance().map(|i| i.changed_at).unwrap_or(base.mtime),
                ..base
            },
            Ino::Scratch(id) => {
                let store = self.scratch.lock();
                let f = store.get(id).ok_or(TreeError::NotFound)?;
                Attr {
                    kind: EntryKind::File,
                    size: f.data.len() as u64,
                    perm: f.mode,
                    uid: f.uid,
                    gid: f.gid,
                    nlink: 1,
                    mtime: f.mtime,
                    cacheable: false,
                    ..base
                }
            }
            Ino::NodeFile(..)
            | Ino::NetworkFile(..)
            | Ino::InstanceFile(..)
            | Ino::ImageFile(..)
            | Ino::FlavorFile(..)
            | Ino::RootStatus => {
                let size = self.content(r)?.len() as u64;
                let (perm, uid, mtime) = match r.ino {
                    Ino::InstanceFile(_, f) => {
                        let i = instance()?;
                        (
                            render::instance_perm(i, f),
                            render::instance_uid(i, self.owner.uid),
                            i.changed_at,
                        )
                    }
                    // `info.json` shows the poll time: its mtime follows it (the kernel
                    // keeps a file's pages until its mtime or size moves).
                    Ino::NodeFile(_, FileKind::Info) => (
                        0o444,
                        base.uid,
                        v.nodes
                            .get(name)
                            .map(|n| n.info_changed_at())
                            .unwrap_or(base.mtime),
                    ),
                    Ino::NodeFile(_, FileKind::Ctl) => (0o644, 0, base.mtime),
                    Ino::NodeFile(..) => (0o444, base.uid, node_mtime().unwrap_or(base.mtime)),
                    Ino::NetworkFile(..) => {
                        (0o444, base.uid, network_mtime().unwrap_or(base.mtime))
                    }
                    Ino::ImageFile(..) => (0o444, base.uid, image_mtime().unwrap_or(base.mtime)),
                    Ino::RootStatus => (0o444, base.uid, v.status_changed_at),
                    _ => (0o444, base.uid, base.mtime),
                };
                Attr {
                    kind: EntryKind::File,
                    size,
                    perm,
                    uid,
                    nlink: 1,
                    mtime,
                    ..base
                }
            }
        };
        Ok(attr)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        self.attr(&r)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, TreeError> {
        let view = self.cluster.view();
        let p = self.resolve(parent, &view)?;
        let name = name.to_str().ok_or(TreeError::NotFound)?;
        let child = self.child(&p, name)?;
        let r = self.resolve(child.encode(), &view)?;
        self.attr(&r)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        match r.ino {
            Ino::InstanceLink(_) => {
                Ok(render::link_target(r.name.as_deref().unwrap_or("")).into_bytes())
            }
            _ => Err(TreeError::NotSymlink),
        }
    }

    /// Hands `visit` the entries of a directory snapshot from `offset` on, each with its
    /// attributes in the current view (for `readdirplus`), until it returns `true` (the
    /// reply is full). Entries gone meanwhile are left out, and `.` and `..` are not given
    /// attributes (the kernel does not want them). Only the entries the reply takes are
    /// resolved, so listing a folder of n entries costs O(n), not O(n²/batch).
    pub fn visit_entries_with_attrs(
        &self,
        fh: u64,
        offset: usize,
        mut visit: impl FnMut(usize, &DirEntry, Option<&Attr>) -> bool,
    ) -> Result<(), TreeError> {
        let entries = self.dir_entries(fh)?;
        let view = self.cluster.view();
        for (i, e) in entries.iter().enumerate().skip(offset) {
            let full = if e.name == "." || e.name == ".." {
                visit(i, e, None)
            } else {
                let Some(a) = self
                    .resolve(e.ino, &view)
                    .ok()
                    .and_then(|r| self.attr(&r).ok())
                else {
                    continue;
                };
                visit(i, e, Some(&a))
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    /// Snapshots a directory's entries (with `.` and `..`) for stable `readdir` offsets.
    pub fn opendir(&self, ino: u64) -> Result<u64, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: EntryKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: self.parent_of(r.ino),
                kind: EntryKind::Dir,
                name: "..".into(),
            },
        ];
        entries.extend(self.children(&r)?);
        Ok(self.new_handle(Handle::Dir(Arc::new(entries))))
    }

    pub(super) fn parent_of(&self, ino: Ino) -> u64 {
        match ino {
            Ino::Root
            | Ino::NodesDir
            | Ino::InstancesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir
            | Ino::RootStatus
            | Ino::MetricsDir => Ino::Root.encode(),
            Ino::ZabbixDir | Ino::MetricsFile(MetricsFile::Prom) => Ino::MetricsDir.encode(),
            Ino::MetricsFile(_) => Ino::ZabbixDir.encode(),
            Ino::Image(_) => Ino::ImagesDir.encode(),
            Ino::ImageFile(id, _) => Ino::Image(id).encode(),
            Ino::Flavor(_) => Ino::FlavorsDir.encode(),
            Ino::FlavorFile(id, _) => Ino::Flavor(id).encode(),
            Ino::Scratch(id) => {
                let instance = self.scratch.lock().get(id).map(|f| f.instance);
                instance
                    .map(|id| Ino::Instance(id).encode())
                    .unwrap_or(Ino::InstancesDir.encode())
            }
            Ino::Node(_) => Ino::NodesDir.encode(),
            Ino::NodeInstances(id) | Ino::NodeFile(id, _) => Ino::Node(id).encode(),
            Ino::Instance(_) => Ino::InstancesDir.encode(),
            Ino::InstanceFile(id, _) => Ino::Instance(id).encode(),
            Ino::InstanceLink(_) => Ino::NodesDir.encode(),
            Ino::Network(_) => Ino::NetworksDir.encode(),
            Ino::NetworkFile(id, _) => Ino::Network(id).encode(),
            Ino::Snapshots(_) | Ino::Snapshot(_) | Ino::SnapshotInfo(_) => {
                self.snapshot_parent(ino)
            }
        }
    }

    /// The snapshot taken at `opendir`.
    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>, TreeError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(e)) => Ok(e.clone()),
            _ => Err(TreeError::BadHandle),
        }
    }

    /// Whether `uid` may use instance `name`'s private files (its owner, or root).
    pub(super) fn owns(&self, view: &View, name: &str, uid: u32) -> bool {
        crate::model::may_act(view.instances.get(name).and_then(|i| i.owner()), uid)
    }
}

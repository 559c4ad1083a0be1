//! The virtual tree: maps inode numbers to paths of the cluster view, renders file contents,
//! and keeps directory snapshots and open-file contents per handle.
//!
//! Inode numbers are `id << 8 | tag`: the tag says what the inode is (the `/nodes` folder, a
//! node's `info.json`, an instance's `status`, …) and the id which node, instance or network
//! (interned by name, never reused while the daemon runs). An inode therefore stays the same
//! for the same path, needs no table of its own, and decodes without a lookup.
//!
//! Every read is served from one `Arc<View>`: contents are rendered at `open` (so a reader
//! sees one consistent version) and sizes at `getattr` (so `stat` agrees with `read`).

mod render;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::cluster::actions::{ActionError, Control};
use crate::cluster::view::View;
use crate::spec::{MAX_SPEC_BYTES, is_incomplete};

pub use render::FileKind;

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
}

/// What an inode is, decoded from its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ino {
    Root,
    NodesDir,
    InstancesDir,
    NetworksDir,
    Node(u64),
    NodeInstances(u64),
    NodeFile(u64, FileKind),
    Instance(u64),
    InstanceFile(u64, FileKind),
    /// `nodes/<n>/instances/<i>`, a symlink to the instance's folder.
    InstanceLink(u64),
    Network(u64),
    NetworkFile(u64, FileKind),
}

const TAG_ROOT: u64 = 1;
const TAG_NODES: u64 = 2;
const TAG_INSTANCES: u64 = 3;
const TAG_NETWORKS: u64 = 4;
const TAG_NODE: u64 = 16;
const TAG_NODE_INSTANCES: u64 = 17;
const TAG_NODE_FILE: u64 = 24; // 24..32: node files by FileKind index
const TAG_INSTANCE: u64 = 32;
const TAG_INSTANCE_LINK: u64 = 33;
const TAG_INSTANCE_FILE: u64 = 40; // 40..64
const TAG_NETWORK: u64 = 64;
const TAG_NETWORK_FILE: u64 = 72; // 72..80

impl Ino {
    pub fn encode(self) -> u64 {
        match self {
            Ino::Root => TAG_ROOT,
            Ino::NodesDir => TAG_NODES,
            Ino::InstancesDir => TAG_INSTANCES,
            Ino::NetworksDir => TAG_NETWORKS,
            Ino::Node(id) => id << 8 | TAG_NODE,
            Ino::NodeInstances(id) => id << 8 | TAG_NODE_INSTANCES,
            Ino::NodeFile(id, f) => id << 8 | (TAG_NODE_FILE + f.index()),
            Ino::Instance(id) => id << 8 | TAG_INSTANCE,
            Ino::InstanceLink(id) => id << 8 | TAG_INSTANCE_LINK,
            Ino::InstanceFile(id, f) => id << 8 | (TAG_INSTANCE_FILE + f.index()),
            Ino::Network(id) => id << 8 | TAG_NETWORK,
            Ino::NetworkFile(id, f) => id << 8 | (TAG_NETWORK_FILE + f.index()),
        }
    }

    pub fn decode(ino: u64) -> Option<Ino> {
        let (id, tag) = (ino >> 8, ino & 0xff);
        let with_id = |i: Ino| (id != 0).then_some(i);
        match tag {
            TAG_ROOT if id == 0 => Some(Ino::Root),
            TAG_NODES if id == 0 => Some(Ino::NodesDir),
            TAG_INSTANCES if id == 0 => Some(Ino::InstancesDir),
            TAG_NETWORKS if id == 0 => Some(Ino::NetworksDir),
            TAG_NODE => with_id(Ino::Node(id)),
            TAG_NODE_INSTANCES => with_id(Ino::NodeInstances(id)),
            TAG_INSTANCE => with_id(Ino::Instance(id)),
            TAG_INSTANCE_LINK => with_id(Ino::InstanceLink(id)),
            TAG_NETWORK => with_id(Ino::Network(id)),
            t if (TAG_NODE_FILE..TAG_NODE_FILE + 8).contains(&t) => {
                FileKind::from_index(t - TAG_NODE_FILE).and_then(|f| with_id(Ino::NodeFile(id, f)))
            }
            t if (TAG_INSTANCE_FILE..TAG_INSTANCE_FILE + 24).contains(&t) => {
                FileKind::from_index(t - TAG_INSTANCE_FILE)
                    .and_then(|f| with_id(Ino::InstanceFile(id, f)))
            }
            t if (TAG_NETWORK_FILE..TAG_NETWORK_FILE + 8).contains(&t) => {
                FileKind::from_index(t - TAG_NETWORK_FILE)
                    .and_then(|f| with_id(Ino::NetworkFile(id, f)))
            }
            _ => None,
        }
    }
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
}

/// One directory entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: EntryKind,
    pub name: String,
}

/// Name ↔ id tables for one kind of object.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u64>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u64 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u64;
        self.ids.insert(name.to_string(), id);
        id
    }

    fn name(&self, id: u64) -> Option<&str> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.names.get(i).map(String::as_str)
    }
}

#[derive(Default)]
struct Names {
    nodes: Interner,
    instances: Interner,
    networks: Interner,
}

enum Handle {
    Dir(Arc<Vec<DirEntry>>),
    File(Arc<Vec<u8>>),
    /// `spec.json` or `ctl` opened for writing.
    Write(WriteHandle),
}

#[derive(Clone)]
struct WriteHandle {
    instance: String,
    kind: FileKind,
    buf: Vec<u8>,
    /// Written since the last commit.
    dirty: bool,
    /// This handle's document was committed; only trailing whitespace may follow.
    committed: bool,
}

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
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    owner: Owner,
    started: SystemTime,
}

/// What a resolved inode is, with the view it was resolved in.
struct Resolved<'v> {
    ino: Ino,
    view: &'v View,
    name: Option<String>,
}

impl Tree {
    pub fn new(cluster: Arc<Cluster>, owner: Owner) -> Tree {
        Tree {
            cluster,
            names: Mutex::new(Names::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            owner,
            started: SystemTime::now(),
        }
    }

    /// Decodes `ino` and checks that what it names still exists in `view`.
    fn resolve<'v>(&self, ino: u64, view: &'v View) -> Result<Resolved<'v>, TreeError> {
        let i = Ino::decode(ino).ok_or(TreeError::NotFound)?;
        let names = self.names.lock();
        let name = match i {
            Ino::Root | Ino::NodesDir | Ino::InstancesDir | Ino::NetworksDir => None,
            Ino::Node(id) | Ino::NodeInstances(id) | Ino::NodeFile(id, _) => {
                let n = names.nodes.name(id).ok_or(TreeError::NotFound)?;
                view.nodes.get(n).ok_or(TreeError::NotFound)?;
                Some(n.to_string())
            }
            Ino::Instance(id) | Ino::InstanceFile(id, _) | Ino::InstanceLink(id) => {
                let n = names.instances.name(id).ok_or(TreeError::NotFound)?;
                let inst = view.instances.get(n).ok_or(TreeError::NotFound)?;
                if let Ino::InstanceFile(_, f) = i
                    && !render::instance_files(inst).contains(&f)
                {
                    return Err(TreeError::NotFound);
                }
                Some(n.to_string())
            }
            Ino::Network(id) | Ino::NetworkFile(id, _) => {
                let n = names.networks.name(id).ok_or(TreeError::NotFound)?;
                view.networks.get(n).ok_or(TreeError::NotFound)?;
                Some(n.to_string())
            }
        };
        Ok(Resolved { ino: i, view, name })
    }

    /// The entries of a directory inode, in a stable order, without `.` and `..`.
    fn children(&self, r: &Resolved<'_>) -> Result<Vec<DirEntry>, TreeError> {
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
        let entries = match r.ino {
            Ino::Root => vec![
                dir(Ino::NodesDir, "nodes"),
                dir(Ino::InstancesDir, "instances"),
                dir(Ino::NetworksDir, "networks"),
            ],
            Ino::NodesDir => v
                .nodes
                .keys()
                .map(|n| dir(Ino::Node(names.nodes.id(n)), n))
                .collect(),
            Ino::InstancesDir => v
                .instances
                .keys()
                .map(|n| dir(Ino::Instance(names.instances.id(n)), n))
                .collect(),
            Ino::NetworksDir => v
                .networks
                .keys()
                .map(|n| dir(Ino::Network(names.networks.id(n)), n))
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
                node.map(|n| n.instance_names.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|i| DirEntry {
                        ino: Ino::InstanceLink(names.instances.id(i)).encode(),
                        kind: EntryKind::Symlink,
                        name: i.clone(),
                    })
                    .collect()
            }
            Ino::Instance(id) => {
                let inst = r
                    .name
                    .as_deref()
                    .and_then(|n| v.instances.get(n))
                    .ok_or(TreeError::NotFound)?;
                render::instance_files(inst)
                    .iter()
                    .map(|f| file(Ino::InstanceFile(id, *f), *f))
                    .collect()
            }
            Ino::Network(id) => render::NETWORK_FILES
                .iter()
                .map(|f| file(Ino::NetworkFile(id, *f), *f))
                .collect(),
            Ino::NodeFile(..) | Ino::InstanceFile(..) | Ino::NetworkFile(..) => {
                return Err(TreeError::NotDir);
            }
            Ino::InstanceLink(_) => return Err(TreeError::NotDir),
        };
        Ok(entries)
    }

    fn content(&self, r: &Resolved<'_>) -> Result<Vec<u8>, TreeError> {
        let v = r.view;
        let name = r.name.as_deref().unwrap_or("");
        match r.ino {
            Ino::NodeFile(_, f) => {
                let n = v.nodes.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::node_file(n, f))
            }
            Ino::InstanceFile(_, f) => {
                let i = v.instances.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::instance_file(i, f))
            }
            Ino::NetworkFile(_, f) => {
                let n = v.networks.get(name).ok_or(TreeError::NotFound)?;
                Ok(render::network_file(n, f))
            }
            Ino::InstanceLink(_) => Err(TreeError::NotFound),
            _ => Err(TreeError::IsDir),
        }
    }

    fn attr(&self, r: &Resolved<'_>) -> Result<Attr, TreeError> {
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
            mtime: v.built_at.unwrap_or(self.started),
        };
        let attr = match r.ino {
            Ino::Root | Ino::NodesDir | Ino::NetworksDir => Attr {
                mtime: self.started,
                ..base
            },
            // Sticky and world-writable like /tmp: anyone may create an instance; only its
            // owner (or root) may remove it.
            Ino::InstancesDir => Attr {
                perm: 0o1777,
                ..base
            },
            Ino::Node(_) | Ino::NodeInstances(_) => Attr {
                mtime: v
                    .nodes
                    .get(name)
                    .map(|n| n.changed_at)
                    .unwrap_or(base.mtime),
                ..base
            },
            Ino::Network(_) => base,
            Ino::Instance(_) => {
                let i = v.instances.get(name).ok_or(TreeError::NotFound)?;
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
                ..base
            },
            Ino::NodeFile(..) | Ino::NetworkFile(..) | Ino::InstanceFile(..) => {
                let size = self.content(r)?.len() as u64;
                let (perm, uid, mtime) = match r.ino {
                    Ino::InstanceFile(_, f) => {
                        let i = v.instances.get(name).ok_or(TreeError::NotFound)?;
                        (
                            render::instance_perm(i, f),
                            render::instance_uid(i, self.owner.uid),
                            i.changed_at,
                        )
                    }
                    Ino::NodeFile(..) => (
                        0o444,
                        base.uid,
                        v.nodes
                            .get(name)
                            .map(|n| n.changed_at)
                            .unwrap_or(base.mtime),
                    ),
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
        let child = self
            .children(&p)?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or(TreeError::NotFound)?;
        let r = self.resolve(child.ino, &view)?;
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

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
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

    fn parent_of(&self, ino: Ino) -> u64 {
        match ino {
            Ino::Root | Ino::NodesDir | Ino::InstancesDir | Ino::NetworksDir => Ino::Root.encode(),
            Ino::Node(_) => Ino::NodesDir.encode(),
            Ino::NodeInstances(id) | Ino::NodeFile(id, _) => Ino::Node(id).encode(),
            Ino::Instance(_) => Ino::InstancesDir.encode(),
            Ino::InstanceFile(id, _) => Ino::Instance(id).encode(),
            Ino::InstanceLink(_) => Ino::NodesDir.encode(),
            Ino::Network(_) => Ino::NetworksDir.encode(),
            Ino::NetworkFile(id, _) => Ino::Network(id).encode(),
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
    fn owns(&self, view: &View, name: &str, uid: u32) -> bool {
        uid == 0
            || view
                .instances
                .get(name)
                .is_some_and(|i| render::instance_uid(i, self.owner.uid) == uid)
    }

    /// Opens a file. Reads see the content of this moment; `spec.json` and `ctl` may be
    /// opened for writing by the instance's owner.
    pub fn open(&self, ino: u64, write: bool, uid: u32) -> Result<u64, TreeError> {
        let view = self.cluster.view();
        let r = self.resolve(ino, &view)?;
        let name = r.name.clone().unwrap_or_default();
        if let Ino::InstanceFile(_, f @ (FileKind::SshKey | FileKind::Spec | FileKind::Ctl)) = r.ino
        {
            let private = f == FileKind::SshKey || write;
            if private && !self.owns(&view, &name, uid) {
                return Err(ActionError::NotOwner(format!("instance {name} is not yours")).into());
            }
        }
        if write {
            let Ino::InstanceFile(_, kind @ (FileKind::Spec | FileKind::Ctl)) = r.ino else {
                return Err(TreeError::ReadOnly("this file cannot be written"));
            };
            let inst = view.instances.get(&name).ok_or(TreeError::NotFound)?;
            if kind == FileKind::Spec && !render::takes_spec(inst) {
                return Err(ActionError::Busy(format!(
                    "instance {name} is already committed; its spec.json is read-only"
                ))
                .into());
            }
            // Both files take whole documents: a writer always starts from empty, however
            // it opened the file (the kernel may strip O_TRUNC and truncate separately).
            return Ok(self.new_handle(Handle::Write(WriteHandle {
                instance: name,
                kind,
                buf: Vec::new(),
                dirty: false,
                committed: false,
            })));
        }
        let content = self.content(&r)?;
        Ok(self.new_handle(Handle::File(Arc::new(content))))
    }

    fn write_handle(&self, fh: u64) -> Result<WriteHandle, TreeError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Write(w)) => Ok(w.clone()),
            _ => Err(TreeError::BadHandle),
        }
    }

    fn store_write_handle(&self, fh: u64, w: WriteHandle) {
        if let Some(h @ Handle::Write(_)) = self.handles.lock().get_mut(&fh) {
            *h = Handle::Write(w);
        }
    }

    /// Writes to `spec.json` (buffered; a complete document is checked at once so the
    /// writer gets EINVAL) or `ctl` (the command runs now).
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        uid: u32,
    ) -> Result<u32, TreeError> {
        let mut w = self.write_handle(fh)?;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match w.kind {
            FileKind::Ctl => {
                let cmd = match Control::parse(data) {
                    Ok(c) => c,
                    Err(e) => {
                        self.record_error_later(&w.instance, &e);
                        return Err(e.into());
                    }
                };
                let c = self.cluster.clone();
                self.detached(async move { c.control(&w.instance, uid, cmd).await })
                    .await?;
                Ok(len)
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
                    self.record_error_later(&w.instance, &e);
                    return Err(e.into());
                }
                if w.buf.len() < end {
                    w.buf.resize(end, 0);
                }
                w.buf[start..end].copy_from_slice(data);
                w.dirty = true;
                self.store_write_handle(fh, w.clone());
                // A complete document is committed now, not at close: shells ignore close()
                // errors, so only a write can tell `echo … > spec.json` what went wrong.
                if !is_incomplete(&w.buf) {
                    self.commit(fh, w, uid).await?;
                }
                Ok(len)
            }
        }
    }

    /// Records a refusal for the `error` file without making the caller wait for the
    /// database.
    fn record_error_later(&self, instance: &str, e: &ActionError) {
        let (c, name, e) = (self.cluster.clone(), instance.to_string(), e.clone());
        tokio::spawn(async move { c.record_error(&name, &e).await });
    }

    async fn commit(&self, fh: u64, mut w: WriteHandle, uid: u32) -> Result<(), TreeError> {
        w.dirty = false;
        self.store_write_handle(fh, w.clone());
        let c = self.cluster.clone();
        let (name, buf) = (w.instance.clone(), w.buf.clone());
        self.detached(async move { c.commit_spec(&name, uid, &buf).await })
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
        match r.ino {
            Ino::InstanceFile(_, FileKind::Spec | FileKind::Ctl)
                if self.owns(&view, &name, uid) => {}
            Ino::InstanceFile(_, FileKind::Spec | FileKind::Ctl) => {
                return Err(ActionError::NotOwner(format!("instance {name} is not yours")).into());
            }
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
        if w.kind != FileKind::Spec || !w.dirty || w.buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.commit(fh, w, uid).await
    }

    /// `mkdir` in `/instances`: a new draft instance owned by `uid`.
    pub async fn mkdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<Attr, TreeError> {
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

    /// `rmdir` in `/instances`: deletes the instance and everything it holds.
    pub async fn rmdir(&self, parent: u64, name: &OsStr, uid: u32) -> Result<(), TreeError> {
        if Ino::decode(parent) != Some(Ino::InstancesDir) {
            return Err(self.refuse_create(parent));
        }
        let n = name.to_str().ok_or(TreeError::NotFound)?.to_string();
        let c = self.cluster.clone();
        self.detached(async move { c.delete(&n, uid).await }).await
    }

    /// Runs an action to completion on its own task, even if the caller stops waiting (an
    /// action cut in the middle would leave a half-made or half-deleted instance), and waits
    /// for it at most `op_timeout`; past that the caller hears `InProgress`.
    async fn detached<T: Send + 'static>(
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

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, TreeError> {
        let content = match self.handles.lock().get(&fh) {
            Some(Handle::File(c)) => c.clone(),
            Some(Handle::Write(w)) => Arc::new(w.buf.clone()),
            _ => return Err(TreeError::BadHandle),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        Ok(content[start..end].to_vec())
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// Whether `ino` is a directory that can hold new entries of the user's making.
    pub fn refuse_create(&self, parent: u64) -> TreeError {
        let view = self.cluster.view();
        match self.resolve(parent, &view) {
            Ok(r) => match r.ino {
                Ino::NodeFile(..) | Ino::InstanceFile(..) | Ino::NetworkFile(..) => {
                    TreeError::NotDir
                }
                _ => TreeError::ReadOnly("nothing can be created here"),
            },
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        let all = [
            Ino::Root,
            Ino::NodesDir,
            Ino::InstancesDir,
            Ino::NetworksDir,
            Ino::Node(3),
            Ino::NodeInstances(3),
            Ino::NodeFile(3, FileKind::Info),
            Ino::NodeFile(3, FileKind::Status),
            Ino::Instance(1 << 40),
            Ino::InstanceLink(7),
            Ino::InstanceFile(9, FileKind::Ip),
            Ino::InstanceFile(9, FileKind::Error),
            Ino::Network(2),
            Ino::NetworkFile(2, FileKind::Status),
        ];
        for i in all {
            assert_eq!(Ino::decode(i.encode()), Some(i), "{i:?}");
        }
        assert_eq!(Ino::Root.encode(), 1, "FUSE's root inode is 1");
        assert_eq!(Ino::decode(0), None);
        assert_eq!(Ino::decode(TAG_NODE), None, "id 0 is reserved");
        assert_eq!(Ino::decode(1 << 8 | 200), None);
    }

    #[test]
    fn interner_ids_are_stable() {
        let mut i = Interner::default();
        assert_eq!(i.id("a"), 1);
        assert_eq!(i.id("b"), 2);
        assert_eq!(i.id("a"), 1);
        assert_eq!(i.name(2), Some("b"));
        assert_eq!(i.name(0), None);
        assert_eq!(i.name(3), None);
    }
}

//! The virtual tree: maps inode numbers to paths of the cluster view, renders file contents,
//! and keeps directory snapshots and open-file contents per handle.
//!
//! Inode numbers are `id << 8 | tag`: the tag says what the inode is (the `/nodes` folder, a
//! node's `info.json`, an instance's `status`, …) and the id which node, instance or network
//! (interned by name, never reused while the daemon runs). An inode therefore stays the same
//! for the same path, needs no table of its own, and decodes without a lookup.
//!
//! Every reply is computed from one `Arc<View>`: sizes at `getattr` (so `stat` agrees with
//! `read`), contents at `read`. With the kernel's caching on, the kernel keeps names,
//! attributes and file pages, and `invalidations` says which of them a new view makes wrong;
//! the FUSE layer tells the kernel, and operations that change something wait (briefly) until
//! it has been told (`settle`), so a change made through the mount is visible in it as soon
//! as the operation returns. With caching off, a file's content is rendered once at `open`.

mod render;
mod scratch;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::cluster::actions::{ActionError, Control};
use crate::cluster::view::{InstanceMap, InstanceView, View};
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
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("cannot move files between folders")]
    CrossDevice,
    /// The inode or handle names an object that is gone, or whose name now belongs to
    /// another incarnation (`ESTALE`: the kernel then looks the path up again).
    #[error("stale: what this names is gone")]
    Stale,
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
    ImagesDir,
    FlavorsDir,
    /// `/status`: the health of the whole cloud in one line.
    RootStatus,
    Image(u64),
    ImageFile(u64, FileKind),
    Flavor(u64),
    FlavorFile(u64, FileKind),
    /// An editor's or tool's file in an instance folder (see `scratch`).
    Scratch(u64),
}

const TAG_ROOT: u64 = 1;
const TAG_NODES: u64 = 2;
const TAG_INSTANCES: u64 = 3;
const TAG_NETWORKS: u64 = 4;
const TAG_IMAGES: u64 = 5;
const TAG_FLAVORS: u64 = 6;
const TAG_ROOT_STATUS: u64 = 7;
const TAG_NODE: u64 = 16;
const TAG_NODE_INSTANCES: u64 = 17;
const TAG_NODE_FILE: u64 = 24; // 24..32: node files by FileKind index
const TAG_INSTANCE: u64 = 32;
const TAG_INSTANCE_LINK: u64 = 33;
const TAG_INSTANCE_FILE: u64 = 40; // 40..64
const TAG_NETWORK: u64 = 64;
const TAG_NETWORK_FILE: u64 = 72; // 72..80
const TAG_IMAGE: u64 = 80;
const TAG_FLAVOR: u64 = 81;
const TAG_SCRATCH: u64 = 82;
const TAG_IMAGE_FILE: u64 = 128; // 128..144
const TAG_FLAVOR_FILE: u64 = 144; // 144..160

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
            Ino::ImagesDir => TAG_IMAGES,
            Ino::FlavorsDir => TAG_FLAVORS,
            Ino::RootStatus => TAG_ROOT_STATUS,
            Ino::Image(id) => id << 8 | TAG_IMAGE,
            Ino::ImageFile(id, f) => id << 8 | (TAG_IMAGE_FILE + f.index()),
            Ino::Flavor(id) => id << 8 | TAG_FLAVOR,
            Ino::FlavorFile(id, f) => id << 8 | (TAG_FLAVOR_FILE + f.index()),
            Ino::Scratch(id) => id << 8 | TAG_SCRATCH,
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
            TAG_IMAGES if id == 0 => Some(Ino::ImagesDir),
            TAG_FLAVORS if id == 0 => Some(Ino::FlavorsDir),
            TAG_ROOT_STATUS if id == 0 => Some(Ino::RootStatus),
            TAG_IMAGE => with_id(Ino::Image(id)),
            TAG_FLAVOR => with_id(Ino::Flavor(id)),
            TAG_SCRATCH => with_id(Ino::Scratch(id)),
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
            t if (TAG_IMAGE_FILE..TAG_IMAGE_FILE + 16).contains(&t) => {
                FileKind::from_index(t - TAG_IMAGE_FILE)
                    .and_then(|f| with_id(Ino::ImageFile(id, f)))
            }
            t if (TAG_FLAVOR_FILE..TAG_FLAVOR_FILE + 16).contains(&t) => {
                FileKind::from_index(t - TAG_FLAVOR_FILE)
                    .and_then(|f| with_id(Ino::FlavorFile(id, f)))
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

/// What a new view makes wrong in the kernel's caches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidations {
    /// Inodes whose attributes or content changed, or that are gone.
    pub inodes: Vec<u64>,
    /// Instance incarnations (tree ids) that are gone: deleted, or their name taken by
    /// another incarnation.
    pub gone_instances: Vec<u64>,
}

/// The file handle of read-only opens served from the current view (cached mode): no
/// per-open state, so opening costs no allocation. Allocated handles start at 1.
const LIVE_FH: u64 = 0;
/// How long a change waits for the kernel's caches to be invalidated before it answers.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

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

    /// The id of `name` if it has one (the kernel can only know names that have one).
    fn get(&self, name: &str) -> Option<u64> {
        self.ids.get(name).copied()
    }
}

/// The interner key of one incarnation of an instance: its name and identity
/// (`InstanceView::identity`). A name made again gets a new id, so a new inode number.
fn instance_key(name: &str, identity: &str) -> String {
    format!("{name}\0{identity}")
}

/// The name and identity of an instance key.
fn split_instance_key(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or((key, ""))
}

#[derive(Default)]
struct Names {
    nodes: Interner,
    /// Instance incarnations (`instance_key`), not bare names.
    instances: Interner,
    networks: Interner,
    images: Interner,
    flavors: Interner,
}

enum Handle {
    Dir(Arc<Vec<DirEntry>>),
    /// A file's content at `open` (caching off).
    File(Arc<Vec<u8>>),
    /// `spec.json` or `ctl` opened for writing.
    Write(WriteHandle),
    /// A scratch file, read and written in place.
    Scratch(u64),
}

#[derive(Clone)]
struct WriteHandle {
    instance: String,
    /// The incarnation of the instance this file was opened on (`InstanceRecord::incarnation`): a
    /// commit or command through it never reaches another instance of the same name.
    incarnation: String,
    kind: FileKind,
    buf: Vec<u8>,
    /// Written since the last commit.
    dirty: bool,
    /// This handle's document was committed; only trailing whitespace may follow.
    committed: bool,
}

/// An instance folder that takes scratch files: a managed instance's incarnation.
struct Folder {
    /// The tree's id of the incarnation.
    id: u64,
    name: String,
    /// Its row's incarnation.
    incarnation: String,
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
}

/// What a resolved inode is, with the view it was resolved in.
struct Resolved<'v> {
    ino: Ino,
    view: &'v View,
    name: Option<String>,
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
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Whether the kernel may cache what the tree answers.
    pub fn kernel_cache(&self) -> bool {
        self.kernel_cache
    }

    /// Decodes `ino` and checks that what it names still exists in `view`.
    fn resolve<'v>(&self, ino: u64, view: &'v View) -> Result<Resolved<'v>, TreeError> {
        let i = Ino::decode(ino).ok_or(TreeError::NotFound)?;
        let names = self.names.lock();
        let name = match i {
            Ino::Root
            | Ino::NodesDir
            | Ino::InstancesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir
            | Ino::RootStatus => None,
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
                dir(Ino::FlavorsDir, "flavors"),
                dir(Ino::ImagesDir, "images"),
                dir(Ino::InstancesDir, "instances"),
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
                e.sort_by(|a, b| a.name.cmp(&b.name));
                e
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
            Ino::NodeFile(..)
            | Ino::InstanceFile(..)
            | Ino::NetworkFile(..)
            | Ino::ImageFile(..)
            | Ino::FlavorFile(..)
            | Ino::RootStatus
            | Ino::Scratch(_)
            | Ino::InstanceLink(_) => return Err(TreeError::NotDir),
        };
        Ok(entries)
    }

    /// The inode of entry `name` in directory `r`, found without listing the directory.
    fn child(&self, r: &Resolved<'_>, name: &str) -> Result<Ino, TreeError> {
        let v = r.view;
        let own = r.name.as_deref().unwrap_or("");
        let file_in = |files: &[FileKind]| {
            files
                .iter()
                .copied()
                .find(|f| f.file_name() == name)
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
            Ino::NodeFile(..)
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

    fn content(&self, r: &Resolved<'_>) -> Result<Vec<u8>, TreeError> {
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
            Ino::Scratch(id) => self
                .scratch
                .lock()
                .get(id)
                .map(|f| f.data.clone())
                .ok_or(TreeError::NotFound),
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
            mtime: self.started,
            cacheable: true,
        };
        let node_mtime = || v.nodes.get(name).map(|n| n.changed_at);
        let instance = || v.instances.get(name).ok_or(TreeError::NotFound);
        let network_mtime = || v.networks.get(name).map(|n| n.changed_at);
        let image_mtime = || v.images.get(name).map(|i| i.changed_at);
        let attr = match r.ino {
            Ino::Root | Ino::NodesDir | Ino::NetworksDir | Ino::ImagesDir | Ino::FlavorsDir => base,
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
            Ino::Root
            | Ino::NodesDir
            | Ino::InstancesDir
            | Ino::NetworksDir
            | Ino::ImagesDir
            | Ino::FlavorsDir
            | Ino::RootStatus => Ino::Root.encode(),
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
        crate::model::may_act(view.instances.get(name).and_then(|i| i.owner()), uid)
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
            let inst = view.instances.get(&name).ok_or(TreeError::Stale)?;
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
        if let Some(Handle::Scratch(id)) = self.handles.lock().get(&fh) {
            self.scratch.lock().write(*id, offset, data)?;
            return Ok(len);
        }
        let mut w = self.write_handle(fh)?;
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
    fn record_failure<T>(&self, w: &WriteHandle, r: &Result<T, TreeError>) {
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
    fn record_error_later(&self, w: &WriteHandle, e: &ActionError) {
        self.cluster
            .record_error(&w.instance, Some(&w.incarnation), e);
    }

    async fn commit(&self, fh: u64, mut w: WriteHandle, uid: u32) -> Result<(), TreeError> {
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
            _ => return Err(TreeError::BadHandle),
        };
        Ok(slice(&content))
    }

    /// The managed instance whose folder `parent` is, for creating and removing scratch
    /// files in it.
    fn scratch_parent(&self, parent: u64) -> Result<Folder, TreeError> {
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

    /// `unlink`: removes a scratch file; kvmfs's own files cannot be removed.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), TreeError> {
        let folder = self.scratch_parent(parent)?;
        let name = name.to_str().ok_or(TreeError::NotFound)?;
        let mut store = self.scratch.lock();
        match store.find(folder.id, name) {
            Some(id) => {
                store.remove(id);
                Ok(())
            }
            None if render::is_reserved_instance_name(name) => Err(TreeError::ReadOnly(
                "kvmfs's files cannot be removed; rmdir the instance",
            )),
            None => Err(TreeError::NotFound),
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
    /// files accept only what they already have (editors restore modes after saving).
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
        let same = mode.is_none_or(|m| m == current.perm)
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

/// How one object differs between two views.
enum Change<'a, T> {
    Gone(&'a T),
    Changed(&'a T, &'a T),
}

/// The names whose object is not the same `Arc` in `new` as in `old` (changed or gone); names
/// only in `new` are new to the kernel as well, so nothing of theirs can be cached.
fn diff<'a, T>(
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
fn diff_instances<'a>(
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

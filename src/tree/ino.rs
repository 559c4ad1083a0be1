//! Inode numbers: `id << 8 | tag`. The tag says what the inode is (the `/nodes` folder, a
//! node's `info.json`, an instance's `status`, …) and the id which node, instance or network,
//! interned by name — for instances by name and identity, so each incarnation of a name has
//! numbers of its own — and never reused while the daemon runs. An inode therefore stays
//! the same for the same object, needs no table of its own, and decodes without a lookup.

use std::collections::HashMap;

use super::{FileKind, MetricsFile};

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
    /// `/metrics`: files for monitoring agents.
    MetricsDir,
    /// `/metrics/zabbix`: Zabbix low-level discovery.
    ZabbixDir,
    /// `/metrics/kvmfs.prom`, `/metrics/zabbix/nodes.json`, `…/instances.json`.
    MetricsFile(MetricsFile),
    /// `instances/<i>/snapshots`, by the instance incarnation's id.
    Snapshots(u64),
    /// `instances/<i>/snapshots/<s>`, by the snapshot's id (`snapshot_key`).
    Snapshot(u64),
    /// `instances/<i>/snapshots/<s>/info.json`.
    SnapshotInfo(u64),
}

pub(super) const TAG_ROOT: u64 = 1;

pub(super) const TAG_NODES: u64 = 2;

pub(super) const TAG_INSTANCES: u64 = 3;

pub(super) const TAG_NETWORKS: u64 = 4;

pub(super) const TAG_IMAGES: u64 = 5;

pub(super) const TAG_FLAVORS: u64 = 6;

pub(super) const TAG_ROOT_STATUS: u64 = 7;

pub(super) const TAG_METRICS: u64 = 8;

pub(super) const TAG_ZABBIX: u64 = 9;

pub(super) const TAG_METRICS_FILE: u64 = 10; // 10..16: by MetricsFile index

pub(super) const TAG_NODE: u64 = 16;

pub(super) const TAG_NODE_INSTANCES: u64 = 17;

pub(super) const TAG_NODE_FILE: u64 = 24; // 24..32: node files by FileKind index

pub(super) const TAG_INSTANCE: u64 = 32;

pub(super) const TAG_INSTANCE_LINK: u64 = 33;

pub(super) const TAG_INSTANCE_FILE: u64 = 40; // 40..64

pub(super) const TAG_NETWORK: u64 = 64;

pub(super) const TAG_NETWORK_FILE: u64 = 72; // 72..80

pub(super) const TAG_IMAGE: u64 = 80;

pub(super) const TAG_FLAVOR: u64 = 81;

pub(super) const TAG_SCRATCH: u64 = 82;

pub(super) const TAG_SNAPSHOTS: u64 = 83;

pub(super) const TAG_SNAPSHOT: u64 = 84;

pub(super) const TAG_SNAPSHOT_INFO: u64 = 85;

pub(super) const TAG_IMAGE_FILE: u64 = 128; // 128..144

pub(super) const TAG_FLAVOR_FILE: u64 = 144; // 144..160

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
            Ino::MetricsDir => TAG_METRICS,
            Ino::ZabbixDir => TAG_ZABBIX,
            Ino::MetricsFile(f) => TAG_METRICS_FILE + f.index(),
            Ino::Snapshots(id) => id << 8 | TAG_SNAPSHOTS,
            Ino::Snapshot(id) => id << 8 | TAG_SNAPSHOT,
            Ino::SnapshotInfo(id) => id << 8 | TAG_SNAPSHOT_INFO,
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
            TAG_METRICS if id == 0 => Some(Ino::MetricsDir),
            TAG_ZABBIX if id == 0 => Some(Ino::ZabbixDir),
            t if id == 0 && (TAG_METRICS_FILE..TAG_METRICS_FILE + 6).contains(&t) => {
                MetricsFile::from_index(t - TAG_METRICS_FILE).map(Ino::MetricsFile)
            }
            TAG_IMAGE => with_id(Ino::Image(id)),
            TAG_FLAVOR => with_id(Ino::Flavor(id)),
            TAG_SCRATCH => with_id(Ino::Scratch(id)),
            TAG_SNAPSHOTS => with_id(Ino::Snapshots(id)),
            TAG_SNAPSHOT => with_id(Ino::Snapshot(id)),
            TAG_SNAPSHOT_INFO => with_id(Ino::SnapshotInfo(id)),
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

/// Name ↔ id tables for one kind of object.
#[derive(Default)]
pub(super) struct Interner {
    pub(super) ids: HashMap<String, u64>,
    pub(super) names: Vec<String>,
}

impl Interner {
    pub(super) fn id(&mut self, name: &str) -> u64 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u64;
        self.ids.insert(name.to_string(), id);
        id
    }

    pub(super) fn name(&self, id: u64) -> Option<&str> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.names.get(i).map(String::as_str)
    }

    /// The id of `name` if it has one (the kernel can only know names that have one).
    pub(super) fn get(&self, name: &str) -> Option<u64> {
        self.ids.get(name).copied()
    }
}

/// The interner key of one incarnation of an instance: its name and identity
/// (`InstanceView::identity`). A name made again gets a new id, so a new inode number.
pub(super) fn instance_key(name: &str, identity: &str) -> String {
    format!("{name}\0{identity}")
}

/// The interner key of one snapshot of one instance incarnation (its tree id): a snapshot
/// of the same name on a later incarnation is another object with other inode numbers.
pub(super) fn snapshot_key(instance: u64, snapshot: &str) -> String {
    format!("{instance}/{snapshot}")
}

/// The instance incarnation's id and the snapshot's name in a snapshot key.
pub(super) fn split_snapshot_key(key: &str) -> Option<(u64, &str)> {
    let (id, name) = key.split_once('/')?;
    Some((id.parse().ok()?, name))
}

/// The name and identity of an instance key.
pub(super) fn split_instance_key(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or((key, ""))
}

#[derive(Default)]
pub(super) struct Names {
    pub(super) nodes: Interner,
    /// Instance incarnations (`instance_key`), not bare names.
    pub(super) instances: Interner,
    pub(super) networks: Interner,
    pub(super) images: Interner,
    pub(super) flavors: Interner,
    /// Snapshots (`snapshot_key`).
    pub(super) snapshots: Interner,
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
            Ino::MetricsDir,
            Ino::ZabbixDir,
            Ino::MetricsFile(MetricsFile::Prom),
            Ino::MetricsFile(MetricsFile::ZabbixNodes),
            Ino::MetricsFile(MetricsFile::ZabbixInstances),
            Ino::Snapshots(4),
            Ino::Snapshot(5),
            Ino::SnapshotInfo(5),
        ];
        for i in all {
            assert_eq!(Ino::decode(i.encode()), Some(i), "{i:?}");
        }
        assert_eq!(Ino::Root.encode(), 1, "FUSE's root inode is 1");
        assert_eq!(Ino::decode(0), None);
        assert_eq!(Ino::decode(TAG_NODE), None, "id 0 is reserved");
        assert_eq!(Ino::decode(1 << 8 | 200), None);
        assert_eq!(split_snapshot_key(&snapshot_key(7, "s1")), Some((7, "s1")));
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

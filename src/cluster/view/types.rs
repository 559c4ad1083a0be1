//! The view's types: what every read is served from — nodes with their capacity and score,
//! instances (a domain, a row, or both), networks and images merged over the nodes — and the
//! text of their status lines and `info.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::db::{InstanceRecord, InstanceState};
use crate::hv::{DomainProbe, NetworkProbe, NodeProbe, VolumeProbe, Volumes};
use crate::storage::ShareLocation;

/// Reachability of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    /// Not polled yet.
    Connecting,
    Online,
    Offline(String),
}

impl NodeStatus {
    pub fn is_online(&self) -> bool {
        matches!(self, NodeStatus::Online)
    }
    pub fn line(&self) -> String {
        match self {
            NodeStatus::Connecting => "offline: connecting".into(),
            NodeStatus::Online => "online".into(),
            NodeStatus::Offline(r) => format!("offline: {r}"),
        }
    }
}

/// What the poller knows of one node: the last successful probe and the current status.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub uri: String,
    pub status: NodeStatus,
    pub last_error: Option<String>,
    pub probe: Option<Arc<NodeProbe>>,
    pub domains: Vec<Arc<DomainProbe>>,
    /// Share of CPU time busy between the last two probes, 0.0–1.0.
    pub cpu_usage: Option<f64>,
    pub updated_at: Option<SystemTime>,
    /// Bumped when some domains were re-read on their own (events, actions): a full poll
    /// that started before must not replace them with its older list.
    pub domains_epoch: u64,
    /// Successful polls so far (the pool is listed every `POOL_EVERY` of them).
    pub polls: u64,
    /// The node's events connection (`NodeBackend::events`) at the last full poll, and when
    /// that poll was: with events, a node is listed whole again only when its connection
    /// changed or `full_poll_ms` passed.
    pub full_poll: Option<(Option<u64>, std::time::Instant)>,
    /// Drained (`host.drained`, read with every database poll): it takes no instances.
    pub drained: bool,
}

/// A node as shown under `/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub uri: String,
    pub status: String,
    pub online: bool,
    /// Drained (`echo drain > ctl`): placement and migrations pass it by.
    pub drained: bool,
    pub last_error: Option<String>,
    pub hostname: Option<String>,
    pub cpus: u32,
    pub mhz: u32,
    pub cpu_model: String,
    pub cpu_usage: Option<f64>,
    pub memory_total_mb: u64,
    pub memory_used_mb: u64,
    pub memory_free_mb: u64,
    /// `measured` (the node reports free memory) or `committed` (total minus domains' RAM).
    pub memory_source: &'static str,
    pub committed_vcpus: u64,
    pub committed_ram_mb: u64,
    pub capacity_vcpus: u64,
    pub capacity_ram_mb: u64,
    pub instances: usize,
    pub active_instances: usize,
    pub free_cpu_share: f64,
    pub free_ram_share: f64,
    /// Placement score: cpu_weight × free_cpu_share + ram_weight × free_ram_share.
    pub score: f64,
    pub updated_at: Option<u64>,
    /// Volumes in the node's storage pool (base images and instance disks), shown by name
    /// as `pool_volumes`; `None` when the pool is missing.
    #[serde(rename = "pool_volumes", serialize_with = "volume_names")]
    pub volumes: Option<Volumes>,
    /// `HOST:/dir` when the node's pool is a `netfs` pool (see `NodeProbe::pool_source`).
    pub pool_source: Option<String>,
    /// The names of the node's instances (shared with the previous view while they stay).
    #[serde(skip)]
    pub instance_names: imbl::OrdSet<String>,
    /// Active domains kvmfs does not manage, in instance name order: placement counts them
    /// on top of what the database says kvmfs instances hold.
    #[serde(skip)]
    pub unmanaged_load: Arc<Vec<UnmanagedLoad>>,
    /// The volumes of the pool that are no instance's disk or seed (see `image_candidates`)...
    #[serde(skip)]
    pub image_candidates: Arc<Vec<VolumeProbe>>,
    /// ...and of those, the ones no domain of the node uses: its images.
    #[serde(skip)]
    pub images: Arc<Vec<VolumeProbe>>,
    #[serde(skip)]
    pub changed_at: SystemTime,
}

/// `pool_volumes` in a node's `info.json`: the names of its pool's volumes.
pub(super) fn volume_names<S: serde::Serializer>(
    v: &Option<Volumes>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().flat_map(|v| v.iter()).map(|v| v.name.as_str()))
}

impl NodeView {
    /// When `info.json` last changed: its content apart from the poll time, or the poll time
    /// it shows (to the second). The kernel keeps a file's pages until its mtime or size
    /// moves, so this moves whenever a byte of the file does.
    pub fn info_changed_at(&self) -> SystemTime {
        let polled = self
            .updated_at
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        polled.map_or(self.changed_at, |p| p.max(self.changed_at))
    }

    /// Whether `self` shows what `other` shows, apart from the poll time (`updated_at`).
    pub(super) fn same_as(&self, other: &NodeView) -> bool {
        self.status == other.status
            && self.online == other.online
            && self.drained == other.drained
            && self.last_error == other.last_error
            && self.hostname == other.hostname
            && self.cpus == other.cpus
            && self.mhz == other.mhz
            && self.cpu_model == other.cpu_model
            && self.cpu_usage == other.cpu_usage
            && self.memory_total_mb == other.memory_total_mb
            && self.memory_free_mb == other.memory_free_mb
            && self.memory_source == other.memory_source
            && self.committed_vcpus == other.committed_vcpus
            && self.committed_ram_mb == other.committed_ram_mb
            && self.capacity_vcpus == other.capacity_vcpus
            && self.capacity_ram_mb == other.capacity_ram_mb
            && self.instances == other.instances
            && self.active_instances == other.active_instances
            && self.score == other.score
            && (self.instance_names.ptr_eq(&other.instance_names)
                || self.instance_names == other.instance_names)
            && self.unmanaged_load == other.unmanaged_load
            && self.volumes == other.volumes
            && self.pool_source == other.pool_source
    }
}

/// An active domain on a node that kvmfs does not manage, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedLoad {
    /// Its name under `/instances` (`name`, or `name@node` when the name is taken).
    pub instance: String,
    /// Its domain's name on the node.
    pub domain: String,
    pub vcpus: u64,
    pub ram_mb: u64,
}

/// An instance as shown under `/instances`: a domain, a `vm` row, or both.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub name: String,
    pub node: Option<String>,
    pub node_online: bool,
    pub domain: Option<Arc<DomainProbe>>,
    pub row: Option<Arc<InstanceRecord>>,
    pub changed_at: SystemTime,
}

/// Two instances are equal when they were built from the very same row and domain objects
/// (the pollers keep an unchanged row or domain as the same `Arc`), for the same node and
/// reachability, with the same change time: what views compare to tell what changed.
impl PartialEq for InstanceView {
    fn eq(&self, other: &InstanceView) -> bool {
        self.name == other.name
            && self.node == other.node
            && self.node_online == other.node_online
            && same_arc(&self.row, &other.row)
            && same_arc(&self.domain, &other.domain)
            && self.changed_at == other.changed_at
    }
}

impl Eq for InstanceView {}

impl InstanceView {
    pub fn managed(&self) -> bool {
        self.row.is_some()
    }

    /// The uid that owns it: its row's creator (`None` for an unmanaged instance, which is
    /// nobody's to change).
    pub fn owner(&self) -> Option<u32> {
        self.row.as_ref().map(|r| r.owner_uid)
    }

    /// Whether its `spec.json` takes a (new) spec.
    pub fn takes_spec(&self) -> bool {
        self.row.as_ref().is_some_and(|r| r.state.takes_spec())
    }

    /// Whether its build made a private key (`ssh_key` exists).
    pub fn has_private_key(&self) -> bool {
        self.row.as_ref().is_some_and(|r| r.sealed_key.is_some())
    }

    /// The committed spec, as written.
    pub fn spec_text(&self) -> Option<&str> {
        self.row.as_ref().and_then(|r| r.spec.as_deref())
    }

    /// The last error recorded for it, if any.
    pub fn error_text(&self) -> Option<&str> {
        self.row
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .filter(|e| !e.is_empty())
    }

    /// The incarnation of its row (`""` for an unmanaged instance).
    pub fn incarnation(&self) -> &str {
        self.row.as_ref().map_or("", |r| r.incarnation.as_str())
    }

    /// What tells this instance from any other that had or will have its name: its row's
    /// incarnation for a managed instance, its domain's UUID otherwise. Inode numbers and
    /// open handles belong to one identity.
    pub fn identity(&self) -> String {
        match (&self.row, &self.domain) {
            (Some(r), _) => format!("r:{}", r.identity()),
            (None, Some(d)) => format!("d:{}", d.uuid),
            (None, None) => String::new(),
        }
    }

    /// The one-line `status`: a domain state word, or the step of a kvmfs operation,
    /// followed by `: reason` when there is one.
    pub fn status(&self) -> String {
        if let Some(row) = &self.row {
            match row.state {
                InstanceState::Draft => return "draft: waiting for spec.json".into(),
                InstanceState::Building => return format!("building: {}", row.step),
                InstanceState::Deleting => return InstanceState::Deleting.word().into(),
                InstanceState::Migrating => {
                    return format!(
                        "migrating: from {} to {}",
                        row.node.as_deref().unwrap_or("?"),
                        row.migrate_to.as_deref().unwrap_or("?")
                    );
                }
                InstanceState::Failed => {
                    return format!(
                        "failed: {}",
                        row.error.as_deref().unwrap_or("unknown error")
                    );
                }
                InstanceState::Ready => {}
            }
        }
        if !self.node_online {
            return match &self.node {
                Some(n) => format!("unknown: node {n} is offline"),
                None => "unknown".into(),
            };
        }
        match &self.domain {
            Some(d) => match d.reason {
                Some(r) => format!("{}: {r}", d.state.word()),
                None => d.state.word().to_string(),
            },
            None => match &self.node {
                Some(n) => format!("missing: no domain on node {n}"),
                None => "missing: no domain".into(),
            },
        }
    }

    /// The first word of `status` (`running`, `building`, `unknown`, …): one of
    /// `INSTANCE_STATES`, what the metrics count instances by.
    pub fn state_word(&self) -> &'static str {
        if let Some(row) = &self.row {
            match row.state {
                InstanceState::Draft => return "draft",
                InstanceState::Building => return "building",
                InstanceState::Deleting => return "deleting",
                InstanceState::Migrating => return "migrating",
                InstanceState::Failed => return "failed",
                InstanceState::Ready => {}
            }
        }
        if !self.node_online {
            return "unknown";
        }
        match &self.domain {
            Some(d) => d.state.word(),
            None => "missing",
        }
    }

    /// vCPUs: the domain's, else the row's (0 when neither says).
    pub fn vcpus(&self) -> u64 {
        match (&self.domain, &self.row) {
            (Some(d), _) => u64::from(d.vcpus),
            (None, Some(r)) => r.vcpus.and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
            (None, None) => 0,
        }
    }

    /// Memory in bytes: the domain's maximum, else the row's `ram_mb` (0 when neither says).
    pub fn memory_bytes(&self) -> u64 {
        match (&self.domain, &self.row) {
            (Some(d), _) => d.max_memory_kib.saturating_mul(1024),
            (None, Some(r)) => r
                .ram_mb
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0)
                .saturating_mul(1 << 20),
            (None, None) => 0,
        }
    }

    /// Addresses: the database's static addresses for managed instances.
    pub fn addresses(&self) -> Vec<String> {
        let Some(row) = self.row.as_deref() else {
            return Vec::new();
        };
        [&row.ip_eth0, &row.ip_eth1]
            .into_iter()
            .flatten()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect()
    }

    pub fn info_json(&self) -> serde_json::Value {
        let d = self.domain.as_deref();
        let r = self.row.as_deref();
        serde_json::json!({
            "name": self.name,
            "node": self.node,
            "status": self.status(),
            "state": d.map(|d| d.state.word()),
            "reason": d.and_then(|d| d.reason),
            "managed": self.managed(),
            "uuid": d.map(|d| d.uuid.as_str()),
            "vcpus": d.map(|d| i64::from(d.vcpus)).or(r.and_then(|r| r.vcpus)),
            "ram_mb": d.map(|d| i64::try_from(d.max_memory_kib / 1024).unwrap_or(i64::MAX))
                .or(r.and_then(|r| r.ram_mb)),
            "disks": d.map(|d| &d.devices.disks),
            "interfaces": d.map(|d| &d.devices.interfaces),
            "addresses": self.addresses(),
            "ip_eth0": r.and_then(|r| r.ip_eth0.as_deref()),
            "ip_eth1": r.and_then(|r| r.ip_eth1.as_deref()),
            "image": r.and_then(|r| r.image.as_deref()),
            "purpose": r.and_then(|r| r.purpose.as_deref()),
            "git": r.and_then(|r| r.git_url.as_deref()),
            "disk_gb": r.and_then(|r| r.disk_gb),
            "owner_uid": r.map(|r| r.owner_uid),
            "created_at": r.map(|r| r.created_at),
            "error": r.and_then(|r| r.error.as_deref()),
        })
    }
}

/// Every word `InstanceView::state_word` gives: kvmfs's operations, `unknown` (node
/// offline), the domain's state words, and `missing` (a row without its domain).
pub const INSTANCE_STATES: &[&str] = &[
    "draft",
    "building",
    "deleting",
    "migrating",
    "failed",
    "unknown",
    "missing",
    "running",
    "blocked",
    "paused",
    "shutdown",
    "shutoff",
    "crashed",
    "pmsuspended",
    "nostate",
];

/// A network, merged over the nodes that define it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub name: String,
    pub per_node: Vec<(String, NetworkProbe)>,
    /// When what the network's files show last changed.
    pub changed_at: SystemTime,
}

impl NetworkView {
    pub fn status(&self) -> String {
        let active: Vec<&str> = self
            .per_node
            .iter()
            .filter(|(_, n)| n.active)
            .map(|(node, _)| node.as_str())
            .collect();
        if active.len() == self.per_node.len() {
            "active".into()
        } else if active.is_empty() {
            "inactive".into()
        } else {
            let inactive: Vec<&str> = self
                .per_node
                .iter()
                .filter(|(_, n)| !n.active)
                .map(|(node, _)| node.as_str())
                .collect();
            format!("partial: inactive on {}", inactive.join(", "))
        }
    }

    pub fn info_json(&self) -> serde_json::Value {
        let first = self.per_node.first().map(|(_, n)| n);
        serde_json::json!({
            "name": self.name,
            "status": self.status(),
            "bridge": first.and_then(|n| n.bridge.as_deref()),
            "forward": first.and_then(|n| n.forward.as_deref()),
            "active": self.per_node.iter().all(|(_, n)| n.active),
            "autostart": self.per_node.iter().all(|(_, n)| n.autostart),
            "addresses": first.map(|n| &n.addresses),
            "nodes": self.per_node.iter().map(|(node, n)| serde_json::json!({
                "node": node,
                "bridge": n.bridge,
                "active": n.active,
                "autostart": n.autostart,
                "persistent": n.persistent,
                "addresses": n.addresses,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A base image, which a spec's `image` may name. Without a shared storage: a volume in
/// the nodes' pools that no instance uses as its own disk or seed; with one (`[storage]`):
/// a file of the share's top folder that is no instance's disk or seed, which every node
/// reaches.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub name: String,
    /// (node, size in bytes, path) for every node that holds it (in its pool) or reaches
    /// it (on the share: the path is the file's on the server).
    pub per_node: Vec<(String, u64, Option<String>)>,
    /// Where it is on the shared storage; `None` for a volume of the nodes' pools.
    pub shared: Option<ShareLocation>,
    /// When what the image's files show last changed.
    pub changed_at: SystemTime,
}

impl ImageView {
    /// The largest size over the nodes (they normally agree).
    pub fn size_bytes(&self) -> u64 {
        self.per_node.iter().map(|(_, c, _)| *c).max().unwrap_or(0)
    }

    /// Whether it shows what `other` shows (all but the change time).
    pub fn same_as(&self, other: &ImageView) -> bool {
        self.name == other.name && self.per_node == other.per_node && self.shared == other.shared
    }

    pub fn info_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name,
            "size_bytes": self.size_bytes(),
            "size_gb": (self.size_bytes() as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0,
            "storage": if self.shared.is_some() { "shared" } else { "node" },
            "nodes": self.per_node.iter().map(|(n, c, p)| serde_json::json!({
                "node": n,
                "size_bytes": c,
                "path": p,
            })).collect::<Vec<_>>(),
        });
        if let Some(l) = &self.shared {
            v["protocol"] = l.protocol.into();
            v["host"] = l.host.clone().into();
            v["path"] = l.path.clone().into();
        }
        v
    }
}

/// A file of the shared storage's top folder, as its last listing found it, and where the
/// nodes' QEMU reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub name: String,
    pub size_bytes: u64,
    pub location: ShareLocation,
}

/// The shared storage's last listing, in name order: what `/images` shows with a
/// `[storage]`. A listing that found what the previous one found is the previous one's
/// `Arc`, so a view keeps its images while the share does not change.
pub type SharedFiles = Arc<Vec<SharedFile>>;

/// The instances of a view, by name: a persistent map, so a view that changes a few
/// instances shares the rest of the map with the previous view (clone and update cost
/// O(log n), and diffing two views skips the parts they share).
pub type InstanceMap = imbl::OrdMap<String, Arc<InstanceView>>;

/// What changed in the poller inputs since the last build, as far as instances go.
#[derive(Debug, Clone, Default)]
pub struct Changed {
    /// Anything may have changed (the first build, a node's reachability): every instance
    /// is built again.
    pub all: bool,
    /// The names whose row or domain (on any node) changed.
    pub names: BTreeSet<String>,
}

impl Changed {
    /// Everything changed.
    pub fn all() -> Changed {
        Changed {
            all: true,
            names: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty()
    }

    pub fn name(&mut self, name: &str) {
        if !self.all && !self.names.contains(name) {
            self.names.insert(name.to_string());
        }
    }

    pub fn everything(&mut self) {
        self.all = true;
        self.names.clear();
    }
}

/// One consistent picture of the cluster.
#[derive(Debug, Clone)]
pub struct View {
    /// Counts the views a cluster built, from 0: a later view has a higher number.
    pub version: u64,
    pub nodes: BTreeMap<String, Arc<NodeView>>,
    pub instances: InstanceMap,
    pub networks: BTreeMap<String, Arc<NetworkView>>,
    pub images: BTreeMap<String, Arc<ImageView>>,
    /// The shared storage's listing the images were made from, with a `[storage]`.
    pub share_files: Option<SharedFiles>,
    /// Whether the last database poll succeeded, and why not.
    pub db_error: Option<String>,
    /// Why the shared storage did not answer its last probe; every node's instances have
    /// their disks there.
    pub storage_error: Option<String>,
    pub built_at: Option<SystemTime>,
    /// When the list of names of `/instances`, `/networks` and `/images` last changed.
    pub instances_changed_at: SystemTime,
    pub networks_changed_at: SystemTime,
    pub images_changed_at: SystemTime,
    /// When the line of `/status` last changed.
    pub status_changed_at: SystemTime,
}

impl Default for View {
    fn default() -> View {
        let epoch = std::time::UNIX_EPOCH;
        View {
            version: 0,
            nodes: BTreeMap::new(),
            instances: InstanceMap::new(),
            networks: BTreeMap::new(),
            images: BTreeMap::new(),
            share_files: None,
            db_error: None,
            storage_error: None,
            built_at: None,
            instances_changed_at: epoch,
            networks_changed_at: epoch,
            images_changed_at: epoch,
            status_changed_at: epoch,
        }
    }
}

/// The rows of the `vm` table by name, each shared with the views built from it.
pub type RowMap = BTreeMap<String, Arc<InstanceRecord>>;

impl View {
    /// The line of `/status` (without the newline): `ok`, or `degraded: ` and what is wrong.
    pub fn root_status(&self) -> String {
        let mut problems = Vec::new();
        if let Some(e) = &self.db_error {
            problems.push(e.clone());
        }
        if let Some(e) = &self.storage_error {
            let users: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            problems.push(format!("{e} (used by {})", users.join(", ")));
        }
        let offline: Vec<&str> = self
            .nodes
            .values()
            .filter(|n| !n.online)
            .map(|n| n.name.as_str())
            .collect();
        if !offline.is_empty() {
            problems.push(format!(
                "{} of {} nodes offline ({})",
                offline.len(),
                self.nodes.len(),
                offline.join(", ")
            ));
        }
        if problems.is_empty() {
            "ok".into()
        } else {
            format!("degraded: {}", problems.join("; "))
        }
    }
}

/// Whether two optional objects are the very same one (or both absent).
pub(super) fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

//! The assembled, immutable picture of the cluster that every read is served from: nodes with
//! capacity and score, every domain on every node (managed or not), and the networks. A new
//! `View` is built whenever a node poll, a domain event or a database poll brings news; readers
//! hold an `Arc` to one view, so a listing never sees half an update.
//!
//! Views share what did not change: every node, instance, network and image is an `Arc`, and
//! `build` reuses the previous view's `Arc` when its inputs are the same objects (rows and
//! domain probes are `Arc`s too, reused by the pollers when equal). The instances are a
//! persistent map, and the pollers say which names changed (`Changed`), so a rebuild builds
//! those instances again and adjusts the nodes' totals by them: its cost follows what changed,
//! not the number of instances. "Did this instance change?" is a pointer comparison — which is
//! how the tree decides what to invalidate in the kernel's caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::PlacementConfig;
use crate::db::{InstanceRecord, InstanceState};
use crate::hv::{DomainProbe, NetworkProbe, NodeProbe, VolumeProbe, Volumes};

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
}

/// A node as shown under `/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub uri: String,
    pub status: String,
    pub online: bool,
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
fn volume_names<S: serde::Serializer>(v: &Option<Volumes>, s: S) -> Result<S::Ok, S::Error> {
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
    fn same_as(&self, other: &NodeView) -> bool {
        self.status == other.status
            && self.online == other.online
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

/// A base image: a volume in the storage pools that no instance uses as its own disk or
/// seed, which a spec's `image` may name.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub name: String,
    /// (node, capacity in bytes, path) for every node whose pool holds it.
    pub per_node: Vec<(String, u64, Option<String>)>,
    /// When what the image's files show last changed.
    pub changed_at: SystemTime,
}

impl ImageView {
    /// The largest capacity over the nodes (they normally agree).
    pub fn size_bytes(&self) -> u64 {
        self.per_node.iter().map(|(_, c, _)| *c).max().unwrap_or(0)
    }

    pub fn info_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "size_bytes": self.size_bytes(),
            "size_gb": (self.size_bytes() as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0,
            "nodes": self.per_node.iter().map(|(n, c, p)| serde_json::json!({
                "node": n,
                "size_bytes": c,
                "path": p,
            })).collect::<Vec<_>>(),
        })
    }
}

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
    /// Whether the last database poll succeeded, and why not.
    pub db_error: Option<String>,
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
            db_error: None,
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

fn mb(kib: u64) -> u64 {
    kib / 1024
}

fn share_free(used: f64, capacity: f64) -> f64 {
    if capacity <= 0.0 {
        0.0
    } else {
        (1.0 - used / capacity).clamp(0.0, 1.0)
    }
}

/// Builds a view from node states and `vm` rows. `previous` carries change times forward so
/// a file's mtime moves only when its content does, and lends its `Arc`s to whatever did not
/// change. `changed` says which instances may differ from `previous`: with none, the previous
/// instances are taken as they are (only node numbers moved: a poll time, CPU counters); with
/// a few names, only those are built again, and the nodes' totals are adjusted by what they
/// changed (see `update_instances`), so a build costs what changed, not the cluster's size.
pub fn build(
    nodes: &[NodeState],
    rows: &RowMap,
    db_error: Option<String>,
    placement: &PlacementConfig,
    previous: &View,
    now: SystemTime,
    changed: &Changed,
) -> View {
    let instances_unchanged = changed.is_empty();
    // The instances, and, when they were updated in place, what changed: (before, after).
    let in_place = if instances_unchanged {
        Some((previous.instances.clone(), Vec::new()))
    } else if changed.all || previous.version == 0 {
        None
    } else {
        update_instances(nodes, rows, &previous.instances, &changed.names, now)
    };
    let (instances, updates) = match in_place {
        Some((map, updates)) => (map, Some(updates)),
        None => (build_instances(nodes, rows, &previous.instances, now), None),
    };
    let instances_changed_at = match &updates {
        Some(u) if u.iter().all(|(b, a)| b.is_some() == a.is_some()) => {
            previous.instances_changed_at
        }
        Some(_) => now,
        None if same_keys(&instances, &previous.instances) => previous.instances_changed_at,
        None => now,
    };

    // Each node's instances, in name order, in one pass (unless they are updated in place).
    let mut by_node: HashMap<&str, Vec<&InstanceView>> = HashMap::new();
    if updates.is_none() {
        for i in instances.values() {
            if let Some(n) = i.node.as_deref() {
                by_node.entry(n).or_default().push(i);
            }
        }
    }

    let mut node_views = BTreeMap::new();
    let mut networks: BTreeMap<String, NetworkView> = BTreeMap::new();
    for n in nodes {
        let held = match (previous.nodes.get(&n.name), &updates) {
            (Some(prev), Some(updates)) => {
                let mut held = Held::of_view(prev);
                for (before, after) in updates {
                    held.update(&n.name, before.as_deref(), after.as_deref());
                }
                held
            }
            _ => {
                let mine = by_node
                    .get(n.name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let mut held = Held::of(mine);
                held.add_unlisted(n, mine);
                held
            }
        };
        let mut nv = node_view(n, held, placement, now);
        let prev = previous.nodes.get(&n.name);
        let updates = updates.as_deref();
        nv.image_candidates = match prev {
            Some(p) if !candidates_stale(p, &nv, &previous.instances, &instances, updates) => {
                p.image_candidates.clone()
            }
            _ => Arc::new(image_candidates(&nv, &instances)),
        };
        nv.images = match prev {
            Some(p)
                if Arc::ptr_eq(&p.image_candidates, &nv.image_candidates)
                    && !use_changed(&nv, updates) =>
            {
                p.images.clone()
            }
            _ => Arc::new(images_of(&nv, &instances)),
        };
        let nv = match prev {
            // Same content and poll time: the same object, so nothing to invalidate.
            Some(prev)
                if prev.same_as(&nv)
                    && Arc::ptr_eq(&prev.image_candidates, &nv.image_candidates)
                    && Arc::ptr_eq(&prev.images, &nv.images)
                    && prev.updated_at == nv.updated_at =>
            {
                prev.clone()
            }
            // The poll time alone is no change of mtime.
            Some(prev) if prev.same_as(&nv) => Arc::new(NodeView {
                changed_at: prev.changed_at,
                ..nv
            }),
            _ => Arc::new(nv),
        };
        if let Some(p) = n.probe.as_deref() {
            for net in &p.networks {
                networks
                    .entry(net.name.clone())
                    .or_insert_with(|| NetworkView {
                        name: net.name.clone(),
                        per_node: Vec::new(),
                        changed_at: now,
                    })
                    .per_node
                    .push((n.name.clone(), net.clone()));
            }
        }
        node_views.insert(n.name.clone(), nv);
    }
    networks.retain(|name, _| is_listable(name));
    let networks: BTreeMap<String, Arc<NetworkView>> = networks
        .into_iter()
        .map(|(name, nv)| {
            let nv = match previous.networks.get(&name) {
                Some(prev) if prev.per_node == nv.per_node => prev.clone(),
                _ => Arc::new(nv),
            };
            (name, nv)
        })
        .collect();
    // Images: each node's own list, kept while nothing it depends on moved.
    let images_unchanged = node_views.len() == previous.nodes.len()
        && node_views.iter().all(|(name, nv)| {
            previous
                .nodes
                .get(name)
                .is_some_and(|p| Arc::ptr_eq(&p.images, &nv.images))
        });
    let images: BTreeMap<String, Arc<ImageView>> = if images_unchanged {
        previous.images.clone()
    } else {
        let mut out: BTreeMap<String, ImageView> = BTreeMap::new();
        for nv in node_views.values() {
            for v in nv.images.iter() {
                out.entry(v.name.clone())
                    .or_insert_with(|| ImageView {
                        name: v.name.clone(),
                        per_node: Vec::new(),
                        changed_at: now,
                    })
                    .per_node
                    .push((nv.name.clone(), v.capacity_bytes, v.path.clone()));
            }
        }
        out.into_iter()
            .map(|(name, iv)| {
                let iv = match previous.images.get(&name) {
                    Some(prev) if prev.per_node == iv.per_node => prev.clone(),
                    _ => Arc::new(iv),
                };
                (name, iv)
            })
            .collect()
    };

    let mut v = View {
        version: previous.version + 1,
        networks_changed_at: if same_keys_btree(&networks, &previous.networks) {
            previous.networks_changed_at
        } else {
            now
        },
        images_changed_at: if same_keys_btree(&images, &previous.images) {
            previous.images_changed_at
        } else {
            now
        },
        nodes: node_views,
        instances,
        networks,
        images,
        db_error,
        built_at: Some(now),
        instances_changed_at,
        status_changed_at: now,
    };
    v.status_changed_at = if v.root_status() == previous.root_status() {
        previous.status_changed_at
    } else {
        now
    };
    if previous.version == 0 {
        // The first view: what it shows appeared now, not in 1970.
        v.instances_changed_at = now;
        v.networks_changed_at = now;
        v.images_changed_at = now;
        v.status_changed_at = now;
    }
    v
}

impl View {
    /// The line of `/status` (without the newline): `ok`, or `degraded: ` and what is wrong.
    pub fn root_status(&self) -> String {
        let mut problems = Vec::new();
        if let Some(e) = &self.db_error {
            problems.push(e.clone());
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

fn same_keys(a: &InstanceMap, b: &InstanceMap) -> bool {
    a.ptr_eq(b) || (a.len() == b.len() && a.keys().eq(b.keys()))
}

fn same_keys_btree<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> bool {
    a.len() == b.len() && a.keys().eq(b.keys())
}

/// Whether two optional objects are the very same one (or both absent).
fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Turns a freshly assembled instance into the view's `Arc`: the previous one when it was
/// built from the very same row, domain and node reachability, otherwise a new one whose
/// change time moves only if what its files show changed.
fn settle(previous: Option<&Arc<InstanceView>>, mut iv: InstanceView) -> Arc<InstanceView> {
    let Some(prev) = previous else {
        return Arc::new(iv);
    };
    if same_arc(&prev.row, &iv.row)
        && same_arc(&prev.domain, &iv.domain)
        && prev.node == iv.node
        && prev.node_online == iv.node_online
    {
        return prev.clone();
    }
    let key = |i: &InstanceView| {
        i.domain
            .as_ref()
            .map(|d| (d.uuid.clone(), d.vcpus, d.max_memory_kib, d.devices.clone()))
    };
    if prev.status() == iv.status()
        && prev.node == iv.node
        && prev.row == iv.row
        && key(prev) == key(&iv)
    {
        iv.changed_at = prev.changed_at;
    }
    Arc::new(iv)
}

/// Whether node `name` is online (unknown nodes are not).
fn node_online(nodes: &[NodeState], name: &str) -> bool {
    nodes
        .iter()
        .find(|n| n.name == name)
        .is_some_and(|n| n.status.is_online())
}

/// A managed instance: its row, and its domain if the row's node has one.
fn managed(
    nodes: &[NodeState],
    row: &Arc<InstanceRecord>,
    domain: Option<Arc<DomainProbe>>,
    now: SystemTime,
) -> InstanceView {
    InstanceView {
        name: row.name.clone(),
        node: row.node.clone(),
        node_online: row
            .node
            .as_deref()
            .map(|h| node_online(nodes, h))
            .unwrap_or(true),
        domain,
        row: Some(row.clone()),
        changed_at: now,
    }
}

/// The instances: rows first (managed), then every domain no row claims (unmanaged). An
/// instance whose row, domain and node reachability are the very objects of the previous
/// view is the previous `Arc`.
fn build_instances(
    nodes: &[NodeState],
    rows: &RowMap,
    previous: &InstanceMap,
    now: SystemTime,
) -> InstanceMap {
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
    for r in rows.values() {
        instances.insert(r.name.clone(), managed(nodes, r, None, now));
    }
    for n in nodes {
        for d in n.domains.iter() {
            if let Some(row) = rows.get(d.name.as_str())
                && row.node.as_deref() == Some(n.name.as_str())
            {
                if let Some(iv) = instances.get_mut(&d.name) {
                    iv.domain = Some(d.clone());
                }
                continue;
            }
            // Unmanaged: shown under its own name unless that is taken, then as name@node.
            let name = if instances.contains_key(&d.name) || !is_listable(&d.name) {
                format!("{}@{}", d.name, n.name)
            } else {
                d.name.clone()
            };
            if !is_listable(&name) || instances.contains_key(&name) {
                continue;
            }
            instances.insert(
                name.clone(),
                InstanceView {
                    name,
                    node: Some(n.name.clone()),
                    node_online: n.status.is_online(),
                    domain: Some(d.clone()),
                    row: None,
                    changed_at: now,
                },
            );
        }
    }
    instances
        .into_iter()
        .map(|(name, iv)| {
            let shared = settle(previous.get(&name), iv);
            (name, shared)
        })
        .collect()
}

/// Before and after of one instance that an in-place update changed (`None`: absent).
type Update = (Option<Arc<InstanceView>>, Option<Arc<InstanceView>>);

/// `previous` with the instances named in `names` built again, and what changed; `None` when
/// a name cannot be built on its own and everything must be built again (`build_instances`):
/// where a name is shared — a row and a domain of that name on another node, the same
/// domain name on two nodes, a name with `@` — which instance gets which name depends on the
/// others. Otherwise a name's instance depends only on its own row and domains, found by
/// binary search in each node's domain list (kept in name order).
fn update_instances(
    nodes: &[NodeState],
    rows: &RowMap,
    previous: &InstanceMap,
    names: &BTreeSet<String>,
    now: SystemTime,
) -> Option<(InstanceMap, Vec<Update>)> {
    let mut map = previous.clone();
    let mut updates = Vec::new();
    for name in names {
        let suffixed = format!("{name}@");
        if name.contains('@')
            || map
                .range(suffixed.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&suffixed))
        {
            return None;
        }
        let mut domains = nodes.iter().filter_map(|n| {
            n.domains
                .binary_search_by(|d| d.name.as_str().cmp(name))
                .ok()
                .map(|i| (n, &n.domains[i]))
        });
        let iv = match rows.get(name.as_str()) {
            Some(row) => {
                let mut domain = None;
                for (n, d) in domains {
                    if row.node.as_deref() != Some(n.name.as_str()) {
                        return None;
                    }
                    domain = Some(d.clone());
                }
                Some(managed(nodes, row, domain, now))
            }
            None => match (domains.next(), domains.next()) {
                (None, _) => None,
                (Some((n, d)), None) if is_listable(name) => Some(InstanceView {
                    name: name.clone(),
                    node: Some(n.name.clone()),
                    node_online: n.status.is_online(),
                    domain: Some(d.clone()),
                    row: None,
                    changed_at: now,
                }),
                _ => return None,
            },
        };
        let before = map.get(name.as_str()).cloned();
        let after = iv.map(|iv| settle(before.as_ref(), iv));
        if same_arc(&before, &after) {
            continue;
        }
        match &after {
            Some(a) => map.insert(name.clone(), a.clone()),
            None => map.remove(name.as_str()),
        };
        updates.push((before, after));
    }
    Some((map, updates))
}

/// What a node's instances hold and show, for its `NodeView`.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    names: imbl::OrdSet<String>,
    committed: (u64, u64),
    active: usize,
    unmanaged_load: Arc<Vec<UnmanagedLoad>>,
}

fn is_active(i: &InstanceView) -> bool {
    i.domain.as_ref().is_some_and(|d| d.state.is_active())
}

/// What an unmanaged instance that counts against its node adds to its `unmanaged_load`.
fn unmanaged_load(i: &InstanceView) -> Option<UnmanagedLoad> {
    if i.row.is_some() || !counts_against_node(i) {
        return None;
    }
    let (vcpus, ram_mb) = instance_resources(i);
    i.domain.as_ref().map(|d| UnmanagedLoad {
        instance: i.name.clone(),
        domain: d.name.clone(),
        vcpus,
        ram_mb,
    })
}

impl Held {
    /// From the node's instances (in name order).
    fn of(instances: &[&InstanceView]) -> Held {
        Held {
            names: instances.iter().map(|i| i.name.clone()).collect(),
            committed: instances.iter().filter(|i| counts_against_node(i)).fold(
                (0u64, 0u64),
                |(c, m), i| {
                    let (v, r) = instance_resources(i);
                    (c + v, m + r)
                },
            ),
            active: instances.iter().filter(|i| is_active(i)).count(),
            unmanaged_load: Arc::new(instances.iter().filter_map(|i| unmanaged_load(i)).collect()),
        }
    }

    /// Adds the active domains of node `n` that no instance shows (their name and their
    /// `name@node` fallback both taken, or not file names): hidden from `/instances`, they
    /// still hold room on the node. Only a full build meets them: a change of such a name
    /// always makes the build a full one (see `update_instances`).
    fn add_unlisted(&mut self, n: &NodeState, mine: &[&InstanceView]) {
        let shown: std::collections::HashSet<*const DomainProbe> = mine
            .iter()
            .filter_map(|i| i.domain.as_ref().map(Arc::as_ptr))
            .collect();
        for d in n.domains.iter() {
            if shown.contains(&Arc::as_ptr(d)) || !d.state.is_active() {
                continue;
            }
            let (vcpus, ram_mb) = (u64::from(d.vcpus), mb(d.max_memory_kib));
            self.committed = (self.committed.0 + vcpus, self.committed.1 + ram_mb);
            // Named apart from every instance (no file name holds a NUL), in order.
            let u = UnmanagedLoad {
                instance: format!("{}\0{}", d.name, n.name),
                domain: d.name.clone(),
                vcpus,
                ram_mb,
            };
            let at = self
                .unmanaged_load
                .partition_point(|x| x.instance.as_str() < u.instance.as_str());
            Arc::make_mut(&mut self.unmanaged_load).insert(at, u);
        }
    }

    /// As the previous view had it.
    fn of_view(prev: &NodeView) -> Held {
        Held {
            names: prev.instance_names.clone(),
            committed: (prev.committed_vcpus, prev.committed_ram_mb),
            active: prev.active_instances,
            unmanaged_load: prev.unmanaged_load.clone(),
        }
    }

    /// Takes an instance of node `node` that changed from `before` to `after` into account.
    fn update<'a>(
        &mut self,
        node: &str,
        before: Option<&'a InstanceView>,
        after: Option<&'a InstanceView>,
    ) {
        let on = |i: Option<&'a InstanceView>| i.filter(|i| i.node.as_deref() == Some(node));
        if let Some(b) = on(before) {
            self.names.remove(&b.name);
            if counts_against_node(b) {
                let (v, r) = instance_resources(b);
                self.committed = (self.committed.0 - v, self.committed.1 - r);
            }
            self.active -= usize::from(is_active(b));
            if unmanaged_load(b).is_some()
                && let Ok(at) = self
                    .unmanaged_load
                    .binary_search_by(|u| u.instance.as_str().cmp(&b.name))
            {
                Arc::make_mut(&mut self.unmanaged_load).remove(at);
            }
        }
        if let Some(a) = on(after) {
            self.names.insert(a.name.clone());
            if counts_against_node(a) {
                let (v, r) = instance_resources(a);
                self.committed = (self.committed.0 + v, self.committed.1 + r);
            }
            self.active += usize::from(is_active(a));
            if let Some(u) = unmanaged_load(a) {
                let at = self
                    .unmanaged_load
                    .partition_point(|x| x.instance.as_str() < u.instance.as_str());
                Arc::make_mut(&mut self.unmanaged_load).insert(at, u);
            }
        }
    }
}

/// One node as shown, from its poll state and what its instances hold.
fn node_view(n: &NodeState, held: Held, placement: &PlacementConfig, now: SystemTime) -> NodeView {
    let Held {
        names,
        committed,
        active,
        unmanaged_load,
    } = held;
    let probe = n.probe.as_deref();
    let cpus = probe.map(|p| p.cpus).unwrap_or(0);
    let total_mb = probe.map(|p| mb(p.memory_kib)).unwrap_or(0);
    let (free_mb, source) = match probe.and_then(|p| p.free_memory_kib) {
        Some(f) => (mb(f), "measured"),
        None => (total_mb.saturating_sub(committed.1), "committed"),
    };
    let room = Room::new(cpus, total_mb, committed, placement);
    let score = if n.status.is_online() {
        room.score
    } else {
        0.0
    };
    NodeView {
        name: n.name.clone(),
        uri: n.uri.clone(),
        status: n.status.line(),
        online: n.status.is_online(),
        last_error: n.last_error.clone(),
        hostname: probe.and_then(|p| p.hostname.clone()),
        cpus,
        mhz: probe.map(|p| p.mhz).unwrap_or(0),
        cpu_model: probe.map(|p| p.model.clone()).unwrap_or_default(),
        cpu_usage: n.cpu_usage.map(|u| (u * 1000.0).round() / 1000.0),
        memory_total_mb: total_mb,
        memory_used_mb: total_mb.saturating_sub(free_mb),
        memory_free_mb: free_mb,
        memory_source: source,
        committed_vcpus: committed.0,
        committed_ram_mb: committed.1,
        capacity_vcpus: room.capacity_vcpus,
        capacity_ram_mb: room.capacity_ram_mb,
        instances: names.len(),
        active_instances: active,
        free_cpu_share: round4(room.free_cpu_share),
        free_ram_share: round4(room.free_ram_share),
        score: round4(score),
        updated_at: n
            .updated_at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        instance_names: names,
        unmanaged_load,
        volumes: probe.and_then(|p| p.volumes.clone()),
        image_candidates: Arc::new(Vec::new()),
        images: Arc::new(Vec::new()),
        changed_at: now,
    }
}

/// A node's capacity under the overcommit ratios, what is free of it, and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub capacity_vcpus: u64,
    pub capacity_ram_mb: u64,
    pub free_cpu_share: f64,
    pub free_ram_share: f64,
    /// cpu_weight × free_cpu_share + ram_weight × free_ram_share: the original rule.
    pub score: f64,
}

impl Room {
    /// `committed` is (vCPUs, RAM MB) held by instances on the node.
    pub fn new(cpus: u32, total_mb: u64, committed: (u64, u64), p: &PlacementConfig) -> Room {
        let capacity_vcpus = (f64::from(cpus) * p.cpu_overcommit).floor() as u64;
        let capacity_ram_mb = (total_mb as f64 * p.ram_overcommit).floor() as u64;
        let free_cpu_share = share_free(committed.0 as f64, capacity_vcpus as f64);
        let free_ram_share = share_free(committed.1 as f64, capacity_ram_mb as f64);
        Room {
            capacity_vcpus,
            capacity_ram_mb,
            free_cpu_share,
            free_ram_share,
            score: p.cpu_weight * free_cpu_share + p.ram_weight * free_ram_share,
        }
    }
}

/// The volumes of a node's pool that may be images: listable, and not a kvmfs instance's
/// disk or seed (of an instance on any node).
fn image_candidates(nv: &NodeView, instances: &InstanceMap) -> Vec<VolumeProbe> {
    let Some(vols) = &nv.volumes else {
        return Vec::new();
    };
    vols.iter()
        .filter(|v| {
            is_listable(&v.name)
                && !crate::model::instance_of_volume(&v.name)
                    .is_some_and(|i| instances.contains_key(i))
        })
        .cloned()
        .collect()
}

/// A node's images: its image candidates that no domain of the node uses as a disk.
fn images_of(nv: &NodeView, instances: &InstanceMap) -> Vec<VolumeProbe> {
    let mut images: Vec<VolumeProbe> = nv.image_candidates.to_vec();
    if images.is_empty() {
        return images;
    }
    for iname in nv.instance_names.iter() {
        if let Some(d) = instances.get(iname).and_then(|i| i.domain.as_ref()) {
            for disk in d.devices.disks.iter().filter_map(|d| d.source.as_deref()) {
                images.retain(|v| v.path.as_deref() != Some(disk));
            }
        }
    }
    images
}

/// Whether a domain of node `nv` that changed uses (or used) one of its image candidates as
/// a disk: then which candidates are in use may have changed.
fn use_changed(nv: &NodeView, updates: Option<&[Update]>) -> bool {
    let Some(updates) = updates else {
        return true;
    };
    if nv.image_candidates.is_empty() {
        return false;
    }
    let uses_candidate = |i: &Option<Arc<InstanceView>>| {
        i.as_ref()
            .filter(|i| i.node.as_deref() == Some(nv.name.as_str()))
            .and_then(|i| i.domain.as_ref())
            .is_some_and(|d| {
                d.devices.disks.iter().any(|disk| {
                    nv.image_candidates
                        .iter()
                        .any(|v| v.path.is_some() && v.path == disk.source)
                })
            })
    };
    updates.iter().any(|(b, a)| {
        let same = match (b, a) {
            (Some(b), Some(a)) => same_arc(&b.domain, &a.domain) && b.node == a.node,
            _ => false,
        };
        !same && (uses_candidate(b) || uses_candidate(a))
    })
}

/// Whether a node's pool changed only in volumes that are instances' disks or seeds, before
/// and after (which are never images): the volumes added are of instances in `now`, those
/// removed were of instances in `before`, those changed of both.
fn only_instance_parts_changed(
    before: &Option<Volumes>,
    after: &Option<Volumes>,
    old: &InstanceMap,
    now: &InstanceMap,
) -> bool {
    let (a, b) = match (before, after) {
        (Some(a), Some(b)) if Arc::ptr_eq(a, b) => return true,
        (Some(a), Some(b)) => (a, b),
        (None, None) => return true,
        _ => return false,
    };
    let own = |v: &VolumeProbe, map: &InstanceMap| {
        crate::model::instance_of_volume(&v.name).is_some_and(|i| map.contains_key(i))
    };
    // Both lists are in name order.
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.name == y.name => {
                if x != y && !(own(x, old) && own(y, now)) {
                    return false;
                }
                i += 1;
                j += 1;
            }
            (Some(x), y) if y.is_none_or(|y| x.name < y.name) => {
                if !own(x, old) {
                    return false;
                }
                i += 1;
            }
            (_, Some(y)) => {
                if !own(y, now) {
                    return false;
                }
                j += 1;
            }
            (Some(_), None) => unreachable!("the arm above takes a volume with nothing after it"),
        }
    }
}

/// Whether a node's image candidates may differ from `prev`'s (whose instances were `old`;
/// they are `now`): its pool changed in a volume that is not an instance's part, or an
/// instance whose disk or seed is in its pool came or went.
fn candidates_stale(
    prev: &NodeView,
    nv: &NodeView,
    old: &InstanceMap,
    now: &InstanceMap,
    updates: Option<&[Update]>,
) -> bool {
    let Some(updates) = updates else {
        return true;
    };
    let in_pool = |name: String| {
        nv.volumes
            .as_ref()
            .is_some_and(|v| v.binary_search_by(|x| x.name.as_str().cmp(&name)).is_ok())
    };
    !only_instance_parts_changed(&prev.volumes, &nv.volumes, old, now)
        || updates.iter().any(|(b, a)| {
            let name = b
                .as_ref()
                .or(a.as_ref())
                .map(|i| i.name.as_str())
                .unwrap_or("");
            b.is_some() != a.is_some()
                && (in_pool(crate::model::disk_volume(name))
                    || in_pool(crate::model::seed_volume(name)))
        })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A managed instance holds its resources on its node in any state (it can be started at
/// any time); an unmanaged domain only while it runs.
fn counts_against_node(i: &InstanceView) -> bool {
    match (&i.row, &i.domain) {
        (Some(r), _) => r.state.holds_room(),
        (None, Some(d)) => d.state.is_active(),
        (None, None) => false,
    }
}

/// (vCPUs, RAM MB) an instance holds.
fn instance_resources(i: &InstanceView) -> (u64, u64) {
    if let Some(d) = &i.domain {
        return (u64::from(d.vcpus), mb(d.max_memory_kib));
    }
    let r = i.row.as_ref();
    (
        r.and_then(|r| r.vcpus)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        r.and_then(|r| r.ram_mb)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
    )
}

/// Whether a name can be a directory entry.
fn is_listable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::{DomainDevices, DomainState};

    fn dom(name: &str, vcpus: u32, mib: u64, state: DomainState) -> Arc<DomainProbe> {
        Arc::new(DomainProbe {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state,
            reason: None,
            vcpus,
            max_memory_kib: mib * 1024,
            memory_kib: mib * 1024,
            devices: Arc::new(DomainDevices::default()),
        })
    }

    fn node(name: &str, cpus: u32, mib: u64, domains: Vec<Arc<DomainProbe>>) -> NodeState {
        NodeState {
            name: name.into(),
            uri: "test:///x".into(),
            status: NodeStatus::Online,
            last_error: None,
            probe: Some(Arc::new(NodeProbe {
                hostname: None,
                cpus,
                mhz: 1,
                model: "x".into(),
                memory_kib: mib * 1024,
                free_memory_kib: None,
                cpu_times: None,
                domains: Vec::new(),
                networks: Vec::new(),
                volumes: None,
            })),
            domains,
            cpu_usage: None,
            updated_at: None,
            domains_epoch: 0,
            polls: 0,
        }
    }

    #[test]
    fn score_follows_the_7_3_rule() {
        let nodes = vec![
            node("a", 4, 4096, vec![dom("x", 8, 2048, DomainState::Running)]),
            node("b", 2, 4096, vec![dom("y", 1, 512, DomainState::Shutoff)]),
        ];
        let v = build(
            &nodes,
            &RowMap::new(),
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
            &Changed::all(),
        );
        let a = &v.nodes["a"];
        // 8 of 16 vCPUs, 2048 of 4096 MB committed.
        assert_eq!(a.free_cpu_share, 0.5);
        assert_eq!(a.free_ram_share, 0.5);
        assert_eq!(a.score, 0.5);
        // A shut-off unmanaged domain holds nothing.
        assert_eq!(v.nodes["b"].score, 1.0);
        assert_eq!(v.instances["y"].status(), "shutoff");
    }

    #[test]
    fn clashing_unmanaged_names_get_the_node_suffix() {
        let nodes = vec![
            node("a", 1, 1024, vec![dom("x", 1, 1, DomainState::Running)]),
            node("b", 1, 1024, vec![dom("x", 1, 1, DomainState::Running)]),
        ];
        let v = build(
            &nodes,
            &RowMap::new(),
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
            &Changed::all(),
        );
        assert!(v.instances.contains_key("x"));
        assert!(v.instances.contains_key("x@b"));
        assert_eq!(
            v.nodes["b"].instance_names.iter().collect::<Vec<_>>(),
            vec!["x@b"]
        );
    }

    #[test]
    fn offline_node_instances_read_unknown() {
        let mut n = node("a", 1, 1024, vec![dom("x", 1, 1, DomainState::Running)]);
        n.status = NodeStatus::Offline("no answer".into());
        let v = build(
            &[n],
            &RowMap::new(),
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
            &Changed::all(),
        );
        assert_eq!(v.instances["x"].status(), "unknown: node a is offline");
        assert_eq!(v.nodes["a"].status, "offline: no answer");
        assert_eq!(v.nodes["a"].score, 0.0);
    }

    /// A change to the inputs, as the pollers and the actions make them.
    #[derive(Debug, Clone)]
    enum Op {
        Row {
            name: usize,
            node: Option<usize>,
            state: usize,
            vcpus: i64,
        },
        NoRow(usize),
        Domain {
            node: usize,
            name: usize,
            running: bool,
            vcpus: u32,
        },
        NoDomain {
            node: usize,
            name: usize,
        },
        Online {
            node: usize,
            online: bool,
        },
        Volume {
            node: usize,
            volume: usize,
            present: bool,
        },
    }

    // Volumes, in name order as pools list them: instance parts (of names above), a base
    // image, and a disk domain `c` uses.
    const VOLUMES: [&str; 5] = [
        "a.disk.qcow2",
        "b.seed.iso",
        "c-root.qcow2",
        "c.disk.qcow2",
        "img.qcow2",
    ];

    fn volume(name: &str) -> VolumeProbe {
        VolumeProbe {
            name: name.into(),
            capacity_bytes: 1 << 30,
            path: Some(format!("/pool/{name}")),
        }
    }

    // Names that collide across nodes and with rows, and one with `@`, so every way a name
    // can depend on others comes up.
    const NAMES: [&str; 5] = ["a", "b", "c", "d", "a@n1"];
    const STATES: [InstanceState; 5] = InstanceState::ALL;

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..NAMES.len(), proptest::option::of(0..2usize), 0..STATES.len(), 1..4i64)
                .prop_map(|(name, node, state, vcpus)| Op::Row { name, node, state, vcpus }),
            1 => (0..NAMES.len()).prop_map(Op::NoRow),
            4 => (0..2usize, 0..NAMES.len(), any::<bool>(), 1..4u32)
                .prop_map(|(node, name, running, vcpus)| Op::Domain { node, name, running, vcpus }),
            2 => (0..2usize, 0..NAMES.len()).prop_map(|(node, name)| Op::NoDomain { node, name }),
            1 => (0..2usize, any::<bool>()).prop_map(|(node, online)| Op::Online { node, online }),
            2 => (0..2usize, 0..VOLUMES.len(), any::<bool>())
                .prop_map(|(node, volume, present)| Op::Volume { node, volume, present }),
        ]
    }

    fn row(name: &str, node: Option<&str>, state: InstanceState, vcpus: i64) -> InstanceRecord {
        InstanceRecord {
            name: name.into(),
            node: node.map(str::to_string),
            ip_eth0: None,
            ram_mb: Some(256),
            ip_eth1: None,
            vcpus: Some(vcpus),
            disk_gb: None,
            image: None,
            purpose: None,
            git_url: None,
            state,
            step: crate::db::Step::None,
            error: None,
            owner_uid: 0,
            created_at: 0,
            updated_at: 0,
            spec: None,
            sealed_key: None,
            made: crate::db::Made::default(),
            worker: None,
            rev: 0,
            incarnation: format!("inc-{name}"),
        }
    }

    proptest::proptest! {
        /// Building only the instances that changed gives the view building all of them
        /// gives, step after step (each step starting from the last in-place build, so any
        /// drift in the nodes' totals would add up and show).
        #[test]
        fn building_what_changed_equals_building_everything(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let placement = PlacementConfig::default();
            let mut nodes = vec![node("n1", 8, 8192, Vec::new()), node("n2", 8, 8192, Vec::new())];
            for n in &mut nodes {
                let mut p = NodeProbe::clone(n.probe.as_deref().unwrap());
                p.volumes = Some(Arc::new(VOLUMES.iter().map(|v| volume(v)).collect()));
                n.probe = Some(Arc::new(p));
            }
            let mut rows = RowMap::new();
            let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
            let mut prev = build(&nodes, &rows, None, &placement, &View::default(), t0, &Changed::all());
            for (step, op) in ops.into_iter().enumerate() {
                let mut changed = Changed::default();
                match op {
                    Op::Row { name, node, state, vcpus } => {
                        let node = node.map(|i| nodes[i].name.clone());
                        let r = row(NAMES[name], node.as_deref(), STATES[state], vcpus);
                        rows.insert(NAMES[name].to_string(), Arc::new(r));
                        changed.name(NAMES[name]);
                    }
                    Op::NoRow(name) => {
                        rows.remove(NAMES[name]);
                        changed.name(NAMES[name]);
                    }
                    Op::Domain { node, name, running, vcpus } => {
                        let state = if running { DomainState::Running } else { DomainState::Shutoff };
                        let mut d = DomainProbe::clone(&dom(NAMES[name], vcpus, 128, state));
                        d.uuid = format!("{node}-{name}-{step}");
                        if NAMES[name] == "c" {
                            d.devices = Arc::new(crate::hv::DomainDevices {
                                disks: vec![crate::hv::DiskInfo {
                                    target: "vda".into(),
                                    device: "disk".into(),
                                    source: Some("/pool/c-root.qcow2".into()),
                                }],
                                ..DomainDevices::default()
                            });
                        }
                        let list = &mut nodes[node].domains;
                        match list.binary_search_by(|x| x.name.as_str().cmp(NAMES[name])) {
                            Ok(i) => list[i] = Arc::new(d),
                            Err(i) => list.insert(i, Arc::new(d)),
                        }
                        changed.name(NAMES[name]);
                    }
                    Op::NoDomain { node, name } => {
                        let list = &mut nodes[node].domains;
                        if let Ok(i) = list.binary_search_by(|x| x.name.as_str().cmp(NAMES[name])) {
                            list.remove(i);
                        }
                        changed.name(NAMES[name]);
                    }
                    Op::Online { node, online } => {
                        nodes[node].status = if online {
                            NodeStatus::Online
                        } else {
                            NodeStatus::Offline("gone".into())
                        };
                        changed.everything();
                    }
                    Op::Volume { node, volume: v, present } => {
                        let n = &mut nodes[node];
                        let mut p = NodeProbe::clone(n.probe.as_deref().unwrap());
                        let mut vols: Vec<VolumeProbe> = p.volumes.as_deref().unwrap().clone();
                        vols.retain(|x| x.name != VOLUMES[v]);
                        if present {
                            vols.push(volume(VOLUMES[v]));
                        }
                        vols.sort_by(|a, b| a.name.cmp(&b.name));
                        p.volumes = Some(Arc::new(vols));
                        n.probe = Some(Arc::new(p));
                    }
                }
                let now = t0 + std::time::Duration::from_secs(step as u64 + 1);
                let part = build(&nodes, &rows, None, &placement, &prev, now, &changed);
                let whole = build(&nodes, &rows, None, &placement, &prev, now, &Changed::all());
                proptest::prop_assert_eq!(
                    part.instances.iter().collect::<Vec<_>>(),
                    whole.instances.iter().collect::<Vec<_>>()
                );
                proptest::prop_assert_eq!(part.instances_changed_at, whole.instances_changed_at);
                for (name, w) in &whole.nodes {
                    let p = &part.nodes[name];
                    proptest::prop_assert_eq!(Held::of_view(p), Held::of_view(w), "node {}", name);
                    proptest::prop_assert_eq!(p.score, w.score);
                }
                let images = |v: &View| {
                    v.images
                        .values()
                        .map(|i| (i.name.clone(), i.per_node.clone()))
                        .collect::<Vec<_>>()
                };
                proptest::prop_assert_eq!(images(&part), images(&whole));
                prev = part;
            }
        }
    }
}

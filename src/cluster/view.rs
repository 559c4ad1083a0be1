//! The assembled, immutable picture of the cluster that every read is served from: nodes with
//! capacity and score, every domain on every node (managed or not), and the networks. A new
//! `View` is built whenever a node poll, a domain event or a database poll brings news; readers
//! hold an `Arc` to one view, so a listing never sees half an update.
//!
//! Views share what did not change: every node, instance, network and image is an `Arc`, and
//! `build` reuses the previous view's `Arc` when its inputs are the same objects (rows and
//! domain probes are `Arc`s too, reused by the pollers when equal). So a rebuild costs one pass
//! over the names, and "did this instance change?" is a pointer comparison — which is how the
//! tree decides what to invalidate in the kernel's caches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::PlacementConfig;
use crate::db::VmRow;
use crate::hv::{DomainProbe, NetworkProbe, NodeProbe, Volumes};

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
    #[serde(skip)]
    pub instance_names: Arc<Vec<String>>,
    /// Active domains kvmfs does not manage, with (vCPUs, RAM MB): placement counts them on
    /// top of what the database says kvmfs instances hold.
    #[serde(skip)]
    pub unmanaged_load: Vec<(String, u64, u64)>,
    #[serde(skip)]
    pub changed_at: SystemTime,
}

/// `pool_volumes` in a node's `info.json`: the names of its pool's volumes.
fn volume_names<S: serde::Serializer>(v: &Option<Volumes>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().flat_map(|v| v.iter()).map(|v| v.name.as_str()))
}

impl NodeView {
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
            && self.instance_names == other.instance_names
            && self.unmanaged_load == other.unmanaged_load
            && self.volumes == other.volumes
    }
}

/// An instance as shown under `/instances`: a domain, a `vm` row, or both.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub name: String,
    pub node: Option<String>,
    pub node_online: bool,
    pub domain: Option<Arc<DomainProbe>>,
    pub row: Option<Arc<VmRow>>,
    pub changed_at: SystemTime,
}

impl InstanceView {
    pub fn managed(&self) -> bool {
        self.row.is_some()
    }

    /// The one-line `status`: a domain state word, or the step of a kvmfs operation,
    /// followed by `: reason` when there is one.
    pub fn status(&self) -> String {
        if let Some(row) = &self.row {
            match row.state.as_str() {
                "draft" => return "draft: waiting for spec.json".into(),
                "building" => return format!("building: {}", row.step),
                "deleting" => return "deleting".into(),
                "failed" => {
                    return format!(
                        "failed: {}",
                        row.error.as_deref().unwrap_or("unknown error")
                    );
                }
                _ => {}
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
        [&row.vmip, &row.ip_eth1]
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
                .or(r.and_then(|r| r.ram)),
            "disks": d.map(|d| &d.devices.disks),
            "interfaces": d.map(|d| &d.devices.interfaces),
            "addresses": self.addresses(),
            "ip_eth0": r.and_then(|r| r.vmip.as_deref()),
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

/// The instances of a view, by name; shared between views when no instance changed.
pub type InstanceMap = BTreeMap<String, Arc<InstanceView>>;

/// One consistent picture of the cluster.
#[derive(Debug, Clone)]
pub struct View {
    /// Counts the views a cluster built, from 0: a later view has a higher number.
    pub version: u64,
    pub nodes: BTreeMap<String, Arc<NodeView>>,
    pub instances: Arc<InstanceMap>,
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
            instances: Arc::new(BTreeMap::new()),
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
pub type RowMap = BTreeMap<String, Arc<VmRow>>;

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
/// change. With `instances_unchanged` (only node numbers moved: a poll time, CPU counters) the
/// previous instances are taken as they are.
pub fn build(
    nodes: &[NodeState],
    rows: &RowMap,
    db_error: Option<String>,
    placement: &PlacementConfig,
    previous: &View,
    now: SystemTime,
    instances_unchanged: bool,
) -> View {
    let instances = if instances_unchanged {
        previous.instances.clone()
    } else {
        build_instances(nodes, rows, &previous.instances, now)
    };
    let instances_changed_at = if instances_unchanged || same_keys(&instances, &previous.instances)
    {
        previous.instances_changed_at
    } else {
        now
    };

    // Each node's instances, in name order, in one pass (unless they are the previous ones).
    let mut by_node: HashMap<&str, Vec<&InstanceView>> = HashMap::new();
    if !instances_unchanged {
        for i in instances.values() {
            if let Some(n) = i.node.as_deref() {
                by_node.entry(n).or_default().push(i);
            }
        }
    }

    let mut node_views = BTreeMap::new();
    let mut networks: BTreeMap<String, NetworkView> = BTreeMap::new();
    for n in nodes {
        let held = match previous.nodes.get(&n.name) {
            Some(prev) if instances_unchanged => Held::of_view(prev),
            _ => Held::of(
                by_node
                    .get(n.name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            ),
        };
        let nv = node_view(n, held, placement, now);
        let nv = match previous.nodes.get(&n.name) {
            // Same content and poll time: the same object, so nothing to invalidate.
            Some(prev) if prev.same_as(&nv) && prev.updated_at == nv.updated_at => prev.clone(),
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
    // Images follow the pools and the instances' disks: when neither moved, they are the same.
    let pools_unchanged = node_views.iter().all(|(name, nv)| {
        previous
            .nodes
            .get(name)
            .is_some_and(|p| p.volumes == nv.volumes)
    }) && node_views.len() == previous.nodes.len();
    let images: BTreeMap<String, Arc<ImageView>> = if instances_unchanged && pools_unchanged {
        previous.images.clone()
    } else {
        images(&node_views, &instances, now)
            .into_iter()
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
        networks_changed_at: if same_keys(&networks, &previous.networks) {
            previous.networks_changed_at
        } else {
            now
        },
        images_changed_at: if same_keys(&images, &previous.images) {
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

fn same_keys<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> bool {
    a.len() == b.len() && a.keys().eq(b.keys())
}

/// The instances: rows first (managed), then every domain no row claims (unmanaged). An
/// instance whose row, domain and node reachability are the very objects of the previous
/// view is the previous `Arc`.
fn build_instances(
    nodes: &[NodeState],
    rows: &RowMap,
    previous: &InstanceMap,
    now: SystemTime,
) -> Arc<InstanceMap> {
    let online: HashMap<&str, bool> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.status.is_online()))
        .collect();
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();

    for r in rows.values() {
        let node_online = r
            .hostname
            .as_deref()
            .map(|h| online.get(h).copied().unwrap_or(false))
            .unwrap_or(true);
        instances.insert(
            r.vmname.clone(),
            InstanceView {
                name: r.vmname.clone(),
                node: r.hostname.clone(),
                node_online,
                domain: None,
                row: Some(r.clone()),
                changed_at: now,
            },
        );
    }
    for n in nodes {
        for d in n.domains.iter() {
            if let Some(row) = rows.get(d.name.as_str())
                && row.hostname.as_deref() == Some(n.name.as_str())
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
    let same_ptr = |a: &Option<Arc<VmRow>>, b: &Option<Arc<VmRow>>| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let same_dom = |a: &Option<Arc<DomainProbe>>, b: &Option<Arc<DomainProbe>>| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let map = instances
        .into_iter()
        .map(|(name, iv)| {
            let shared = match previous.get(&name) {
                Some(prev)
                    if same_ptr(&prev.row, &iv.row)
                        && same_dom(&prev.domain, &iv.domain)
                        && prev.node == iv.node
                        && prev.node_online == iv.node_online =>
                {
                    prev.clone()
                }
                Some(prev) => {
                    let mut iv = iv;
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
                None => Arc::new(iv),
            };
            (name, shared)
        })
        .collect();
    Arc::new(map)
}

/// What a node's instances hold and show, for its `NodeView`.
struct Held {
    names: Arc<Vec<String>>,
    committed: (u64, u64),
    active: usize,
    unmanaged_load: Vec<(String, u64, u64)>,
}

impl Held {
    /// From the node's instances (in name order).
    fn of(instances: &[&InstanceView]) -> Held {
        Held {
            names: Arc::new(instances.iter().map(|i| i.name.clone()).collect()),
            committed: instances.iter().filter(|i| counts_against_node(i)).fold(
                (0u64, 0u64),
                |(c, m), i| {
                    let (v, r) = instance_resources(i);
                    (c + v, m + r)
                },
            ),
            active: instances
                .iter()
                .filter(|i| i.domain.as_ref().is_some_and(|d| d.state.is_active()))
                .count(),
            unmanaged_load: instances
                .iter()
                .filter(|i| i.row.is_none() && counts_against_node(i))
                .filter_map(|i| {
                    let (v, r) = instance_resources(i);
                    i.domain.as_ref().map(|d| (d.name.clone(), v, r))
                })
                .collect(),
        }
    }

    /// As the previous view had it, when the instances did not change.
    fn of_view(prev: &NodeView) -> Held {
        Held {
            names: prev.instance_names.clone(),
            committed: (prev.committed_vcpus, prev.committed_ram_mb),
            active: prev.active_instances,
            unmanaged_load: prev.unmanaged_load.clone(),
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

/// The volumes of every pool that are not an instance's own: not a kvmfs instance's disk or
/// seed, and not a disk any domain on that node uses.
fn images(
    nodes: &BTreeMap<String, Arc<NodeView>>,
    instances: &InstanceMap,
    now: SystemTime,
) -> BTreeMap<String, ImageView> {
    let mut out: BTreeMap<String, ImageView> = BTreeMap::new();
    for n in nodes.values() {
        let Some(vols) = &n.volumes else { continue };
        let mut in_use: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for iname in n.instance_names.iter() {
            let Some(i) = instances.get(iname) else {
                continue;
            };
            if let Some(d) = &i.domain {
                in_use.extend(d.devices.disks.iter().filter_map(|d| d.source.as_deref()));
            }
        }
        for v in vols.iter() {
            let own = crate::model::instance_of_volume(&v.name)
                .is_some_and(|i| instances.contains_key(i));
            let used = v.path.as_deref().is_some_and(|p| in_use.contains(p));
            if own || used || !is_listable(&v.name) {
                continue;
            }
            out.entry(v.name.clone())
                .or_insert_with(|| ImageView {
                    name: v.name.clone(),
                    per_node: Vec::new(),
                    changed_at: now,
                })
                .per_node
                .push((n.name.clone(), v.capacity_bytes, v.path.clone()));
        }
    }
    out
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A managed instance holds its resources on its node in any state (it can be started at
/// any time); an unmanaged domain only while it runs.
fn counts_against_node(i: &InstanceView) -> bool {
    match (&i.row, &i.domain) {
        (Some(r), _) => matches!(r.state.as_str(), "building" | "ready" | "deleting"),
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
        r.and_then(|r| r.ram)
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
            false,
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
            false,
        );
        assert!(v.instances.contains_key("x"));
        assert!(v.instances.contains_key("x@b"));
        assert_eq!(*v.nodes["b"].instance_names, vec!["x@b".to_string()]);
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
            false,
        );
        assert_eq!(v.instances["x"].status(), "unknown: node a is offline");
        assert_eq!(v.nodes["a"].status, "offline: no answer");
        assert_eq!(v.nodes["a"].score, 0.0);
    }
}

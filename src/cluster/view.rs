//! The assembled, immutable picture of the cluster that every read is served from: nodes with
//! capacity and score, every domain on every node (managed or not), and the networks. A new
//! `View` is built whenever a node poll or a database poll brings news; readers hold an `Arc`
//! to one view, so a listing never sees half an update.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::PlacementConfig;
use crate::db::VmRow;
use crate::hv::{DomainProbe, NetworkProbe, NodeProbe, VolumeProbe};

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
}

/// A node as shown under `/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Volumes in the node's storage pool (base images and instance disks).
    pub pool_volumes: Vec<String>,
    #[serde(skip)]
    pub instance_names: Vec<String>,
    /// Active domains kvmfs does not manage, with (vCPUs, RAM MB): placement counts them on
    /// top of what the database says kvmfs instances hold.
    #[serde(skip)]
    pub unmanaged_load: Vec<(String, u64, u64)>,
    #[serde(skip)]
    pub volumes: Option<Vec<VolumeProbe>>,
    #[serde(skip)]
    pub changed_at: SystemTime,
}

/// An instance as shown under `/instances`: a domain, a `vm` row, or both.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub name: String,
    pub node: Option<String>,
    pub node_online: bool,
    pub domain: Option<Arc<DomainProbe>>,
    pub row: Option<VmRow>,
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
        let Some(row) = &self.row else {
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
        let r = self.row.as_ref();
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    pub name: String,
    /// (node, capacity in bytes, path) for every node whose pool holds it.
    pub per_node: Vec<(String, u64, Option<String>)>,
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

/// One consistent picture of the cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub nodes: BTreeMap<String, NodeView>,
    pub instances: BTreeMap<String, InstanceView>,
    pub networks: BTreeMap<String, NetworkView>,
    pub images: BTreeMap<String, ImageView>,
    /// Whether the last database poll succeeded, and why not.
    pub db_error: Option<String>,
    pub built_at: Option<SystemTime>,
}

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
/// a file's mtime moves only when its content does.
pub fn build(
    nodes: &[NodeState],
    rows: &[VmRow],
    db_error: Option<String>,
    placement: &PlacementConfig,
    previous: &View,
    now: SystemTime,
) -> View {
    let rows_by_name: HashMap<&str, &VmRow> = rows.iter().map(|r| (r.vmname.as_str(), r)).collect();
    let online: HashMap<&str, bool> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.status.is_online()))
        .collect();
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();

    for r in rows {
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
        for d in &n.domains {
            if let Some(row) = rows_by_name.get(d.name.as_str())
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
    for iv in instances.values_mut() {
        if let Some(prev) = previous.instances.get(&iv.name)
            && prev.status() == iv.status()
            && prev.node == iv.node
            && prev.row == iv.row
            && prev
                .domain
                .as_ref()
                .map(|d| (&d.uuid, d.vcpus, d.max_memory_kib))
                == iv
                    .domain
                    .as_ref()
                    .map(|d| (&d.uuid, d.vcpus, d.max_memory_kib))
        {
            iv.changed_at = prev.changed_at;
        }
    }

    let mut node_views = BTreeMap::new();
    let mut networks: BTreeMap<String, NetworkView> = BTreeMap::new();
    for n in nodes {
        let mut names: Vec<String> = instances
            .values()
            .filter(|i| i.node.as_deref() == Some(n.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        names.sort();
        let committed = names
            .iter()
            .filter_map(|name| instances.get(name))
            .filter(|i| counts_against_node(i))
            .fold((0u64, 0u64), |(c, m), i| {
                let (v, r) = instance_resources(i);
                (c + v, m + r)
            });
        let active = names
            .iter()
            .filter_map(|name| instances.get(name))
            .filter(|i| i.domain.as_ref().is_some_and(|d| d.state.is_active()))
            .count();
        let probe = n.probe.as_deref();
        let cpus = probe.map(|p| p.cpus).unwrap_or(0);
        let total_mb = probe.map(|p| mb(p.memory_kib)).unwrap_or(0);
        let (free_mb, source) = match probe.and_then(|p| p.free_memory_kib) {
            Some(f) => (mb(f), "measured"),
            None => (total_mb.saturating_sub(committed.1), "committed"),
        };
        let unmanaged_load: Vec<(String, u64, u64)> = names
            .iter()
            .filter_map(|name| instances.get(name))
            .filter(|i| i.row.is_none() && counts_against_node(i))
            .filter_map(|i| {
                let (v, r) = instance_resources(i);
                i.domain.as_ref().map(|d| (d.name.clone(), v, r))
            })
            .collect();
        let room = Room::new(cpus, total_mb, committed, placement);
        let score = if n.status.is_online() {
            room.score
        } else {
            0.0
        };
        let mut nv = NodeView {
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
            pool_volumes: probe
                .and_then(|p| p.volumes.as_ref())
                .map(|v| v.iter().map(|v| v.name.clone()).collect())
                .unwrap_or_default(),
            volumes: probe.and_then(|p| p.volumes.clone()),
            changed_at: now,
        };
        if let Some(prev) = previous.nodes.get(&n.name) {
            // The poll time alone is no change: compare everything else.
            let (updated_at, changed_at) = (nv.updated_at, nv.changed_at);
            nv.updated_at = prev.updated_at;
            nv.changed_at = prev.changed_at;
            if *prev != nv {
                nv.changed_at = changed_at;
            }
            nv.updated_at = updated_at;
        }
        node_views.insert(n.name.clone(), nv);
        if let Some(p) = probe {
            for net in &p.networks {
                networks
                    .entry(net.name.clone())
                    .or_insert_with(|| NetworkView {
                        name: net.name.clone(),
                        per_node: Vec::new(),
                    })
                    .per_node
                    .push((n.name.clone(), net.clone()));
            }
        }
    }
    networks.retain(|name, _| is_listable(name));
    let images = images(&node_views, &instances);

    View {
        nodes: node_views,
        instances,
        networks,
        images,
        db_error,
        built_at: Some(now),
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
    nodes: &BTreeMap<String, NodeView>,
    instances: &BTreeMap<String, InstanceView>,
) -> BTreeMap<String, ImageView> {
    let mut out: BTreeMap<String, ImageView> = BTreeMap::new();
    for n in nodes.values() {
        let Some(vols) = &n.volumes else { continue };
        let mut in_use: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for iname in &n.instance_names {
            let Some(i) = instances.get(iname) else {
                continue;
            };
            if let Some(d) = &i.domain {
                in_use.extend(d.devices.disks.iter().filter_map(|d| d.source.as_deref()));
            }
        }
        for v in vols {
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
            &[],
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
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
            &[],
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
        );
        assert!(v.instances.contains_key("x"));
        assert!(v.instances.contains_key("x@b"));
        assert_eq!(v.nodes["b"].instance_names, vec!["x@b".to_string()]);
    }

    #[test]
    fn offline_node_instances_read_unknown() {
        let mut n = node("a", 1, 1024, vec![dom("x", 1, 1, DomainState::Running)]);
        n.status = NodeStatus::Offline("no answer".into());
        let v = build(
            &[n],
            &[],
            None,
            &PlacementConfig::default(),
            &View::default(),
            SystemTime::now(),
        );
        assert_eq!(v.instances["x"].status(), "unknown: node a is offline");
        assert_eq!(v.nodes["a"].status, "offline: no answer");
        assert_eq!(v.nodes["a"].score, 0.0);
    }
}

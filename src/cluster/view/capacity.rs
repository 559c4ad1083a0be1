//! What each node holds and has free: committed vCPUs and RAM (instances that hold room,
//! active domains kvmfs does not manage), capacities under the overcommit ratios, and the
//! placement score (the original 7:3 rule).

use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::config::PlacementConfig;
use crate::hv::DomainProbe;

pub(super) fn mb(kib: u64) -> u64 {
    kib / 1024
}

pub(super) fn share_free(used: f64, capacity: f64) -> f64 {
    if capacity <= 0.0 {
        0.0
    } else {
        (1.0 - used / capacity).clamp(0.0, 1.0)
    }
}

/// What a node's instances hold and show, for its `NodeView`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Held {
    pub(super) names: imbl::OrdSet<String>,
    pub(super) committed: (u64, u64),
    pub(super) active: usize,
    pub(super) unmanaged_load: Arc<Vec<UnmanagedLoad>>,
}

pub(super) fn is_active(i: &InstanceView) -> bool {
    i.domain.as_ref().is_some_and(|d| d.state.is_active())
}

/// What an unmanaged instance that counts against its node adds to its `unmanaged_load`.
pub(super) fn unmanaged_load(i: &InstanceView) -> Option<UnmanagedLoad> {
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
    pub(super) fn of(instances: &[&InstanceView]) -> Held {
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
    pub(super) fn add_unlisted(&mut self, n: &NodeState, mine: &[&InstanceView]) {
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
    pub(super) fn of_view(prev: &NodeView) -> Held {
        Held {
            names: prev.instance_names.clone(),
            committed: (prev.committed_vcpus, prev.committed_ram_mb),
            active: prev.active_instances,
            unmanaged_load: prev.unmanaged_load.clone(),
        }
    }

    /// Takes an instance of node `node` that changed from `before` to `after` into account.
    pub(super) fn update<'a>(
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
pub(super) fn node_view(
    n: &NodeState,
    held: Held,
    placement: &PlacementConfig,
    now: SystemTime,
) -> NodeView {
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
        status: match (n.drained, n.status.is_online()) {
            (true, true) => "online, drained".into(),
            (true, false) => format!("{}, drained", n.status.line()),
            (false, _) => n.status.line(),
        },
        online: n.status.is_online(),
        drained: n.drained,
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
        pool_source: probe.and_then(|p| p.pool_source.clone()),
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

pub(super) fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A managed instance holds its resources on its node in any state (it can be started at
/// any time); an unmanaged domain only while it runs.
pub(super) fn counts_against_node(i: &InstanceView) -> bool {
    match (&i.row, &i.domain) {
        (Some(r), _) => r.state.holds_room(),
        (None, Some(d)) => d.state.is_active(),
        (None, None) => false,
    }
}

/// (vCPUs, RAM MB) an instance holds.
pub(super) fn instance_resources(i: &InstanceView) -> (u64, u64) {
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

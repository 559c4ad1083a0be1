//! Building a view from the pollers' inputs: instances (domains matched with rows, names
//! given), each node's totals, networks and images — incrementally, building again only
//! what changed and sharing every `Arc` that did not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use super::capacity::{Held, node_view};
use super::*;
use crate::config::PlacementConfig;
use crate::db::{InstanceRecord, InstanceState};
use crate::hv::{DomainProbe, VolumeProbe, Volumes};

/// What the backends besides the nodes said went wrong at their last poll.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Why the last database poll failed.
    pub database: Option<String>,
    /// Why the shared storage did not answer its last probe.
    pub storage: Option<String>,
}

/// Builds a view from node states and `vm` rows. `previous` carries change times forward so
/// a file's mtime moves only when its content does, and lends its `Arc`s to whatever did not
/// change. `changed` says which instances may differ from `previous`: with none, the previous
/// instances are taken as they are (only node numbers moved: a poll time, CPU counters); with
/// a few names, only those are built again, and the nodes' totals are adjusted by what they
/// changed (see `update_instances`), so a build costs what changed, not the cluster's size.
/// `share` is the shared storage's last listing when a `[storage]` is configured (empty
/// until one succeeds): the images are then its files, not the pools' volumes.
#[allow(clippy::too_many_arguments)]
pub fn build(
    nodes: &[NodeState],
    rows: &RowMap,
    faults: Faults,
    share: Option<&SharedFiles>,
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
    let images = match share {
        Some(files) => shared_images(
            files,
            &node_views,
            &instances,
            updates.as_deref(),
            previous,
            now,
        ),
        None => pool_images(&node_views, previous, now),
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
        share_files: share.cloned(),
        db_error: faults.database,
        storage_error: faults.storage,
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

/// Without a shared storage, the images are the nodes' own (`NodeView::images`) merged by
/// name; kept whole while no node's list moved.
fn pool_images(
    node_views: &BTreeMap<String, Arc<NodeView>>,
    previous: &View,
    now: SystemTime,
) -> BTreeMap<String, Arc<ImageView>> {
    let images_unchanged = node_views.len() == previous.nodes.len()
        && node_views.iter().all(|(name, nv)| {
            previous
                .nodes
                .get(name)
                .is_some_and(|p| Arc::ptr_eq(&p.images, &nv.images))
        });
    if images_unchanged {
        previous.images.clone()
    } else {
        let mut out: BTreeMap<String, ImageView> = BTreeMap::new();
        for nv in node_views.values() {
            for v in nv.images.iter() {
                out.entry(v.name.clone())
                    .or_insert_with(|| ImageView {
                        name: v.name.clone(),
                        per_node: Vec::new(),
                        shared: None,
                        changed_at: now,
                    })
                    .per_node
                    .push((nv.name.clone(), v.capacity_bytes, v.path.clone()));
            }
        }
        out.into_iter()
            .map(|(name, iv)| {
                let iv = match previous.images.get(&name) {
                    Some(prev) if prev.same_as(&iv) => prev.clone(),
                    _ => Arc::new(iv),
                };
                (name, iv)
            })
            .collect()
    }
}

/// With a shared storage, the images are the files of its top folder that are no
/// instance's disk or seed (of an instance on any node), each reached by every node. Kept
/// whole while the listing is the previous view's, the nodes are, and no instance with a
/// file there came or went.
fn shared_images(
    files: &SharedFiles,
    node_views: &BTreeMap<String, Arc<NodeView>>,
    instances: &InstanceMap,
    updates: Option<&[Update]>,
    previous: &View,
    now: SystemTime,
) -> BTreeMap<String, Arc<ImageView>> {
    let on_share = |name: &str| {
        [
            crate::model::disk_volume(name),
            crate::model::seed_volume(name),
        ]
        .iter()
        .any(|f| {
            files
                .binary_search_by(|x| x.name.as_str().cmp(f.as_str()))
                .is_ok()
        })
    };
    let unchanged = previous
        .share_files
        .as_ref()
        .is_some_and(|p| Arc::ptr_eq(p, files))
        && same_keys_btree(node_views, &previous.nodes)
        && updates.is_some_and(|u| {
            u.iter().all(|(b, a)| {
                b.is_some() == a.is_some()
                    || b.as_ref()
                        .or(a.as_ref())
                        .is_some_and(|i| !on_share(&i.name))
            })
        });
    if unchanged {
        return previous.images.clone();
    }
    files
        .iter()
        .filter(|f| {
            is_listable(&f.name)
                && !crate::model::instance_of_volume(&f.name)
                    .is_some_and(|i| instances.contains_key(i))
        })
        .map(|f| {
            let iv = ImageView {
                name: f.name.clone(),
                per_node: node_views
                    .keys()
                    .map(|n| (n.clone(), f.size_bytes, Some(f.location.path.clone())))
                    .collect(),
                shared: Some(f.location.clone()),
                changed_at: now,
            };
            let iv = match previous.images.get(&f.name) {
                Some(prev) if prev.same_as(&iv) => prev.clone(),
                _ => Arc::new(iv),
            };
            (f.name.clone(), iv)
        })
        .collect()
}

pub(super) fn same_keys(a: &InstanceMap, b: &InstanceMap) -> bool {
    a.ptr_eq(b) || (a.len() == b.len() && a.keys().eq(b.keys()))
}

pub(super) fn same_keys_btree<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> bool {
    a.len() == b.len() && a.keys().eq(b.keys())
}

/// Turns a freshly assembled instance into the view's `Arc`: the previous one when it was
/// built from the very same row, domain and node reachability, otherwise a new one whose
/// change time moves only if what its files show changed.
pub(super) fn settle(
    previous: Option<&Arc<InstanceView>>,
    mut iv: InstanceView,
) -> Arc<InstanceView> {
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
pub(super) fn node_online(nodes: &[NodeState], name: &str) -> bool {
    nodes
        .iter()
        .find(|n| n.name == name)
        .is_some_and(|n| n.status.is_online())
}

/// A managed instance: its row, and its domain if the row's node has one.
pub(super) fn managed(
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
pub(super) fn build_instances(
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
            if let Some(row) = rows.get(d.name.as_str()) {
                if row.node.as_deref() == Some(n.name.as_str()) {
                    if let Some(iv) = instances.get_mut(&d.name) {
                        iv.domain = Some(d.clone());
                    }
                    continue;
                }
                // Arriving there: the instance's, not a stranger of the same name.
                if row.state == InstanceState::Migrating
                    && row.migrate_to.as_deref() == Some(n.name.as_str())
                {
                    continue;
                }
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
pub(super) type Update = (Option<Arc<InstanceView>>, Option<Arc<InstanceView>>);

/// `previous` with the instances named in `names` built again, and what changed; `None` when
/// a name cannot be built on its own and everything must be built again (`build_instances`):
/// where a name is shared — a row and a domain of that name on another node, the same
/// domain name on two nodes, a name with `@` — which instance gets which name depends on the
/// others. Otherwise a name's instance depends only on its own row and domains, found by
/// binary search in each node's domain list (kept in name order).
pub(super) fn update_instances(
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
        // A migrating instance's domain may be on two nodes, one of them not its own (see
        // `build_instances`, and the unlisted load of `Held::add_unlisted`): rare, and built
        // with everything, as is the change that ends it.
        let migrating =
            |r: Option<&InstanceRecord>| r.is_some_and(|r| r.state == InstanceState::Migrating);
        if migrating(rows.get(name.as_str()).map(|r| &**r))
            || migrating(map.get(name.as_str()).and_then(|i| i.row.as_deref()))
        {
            return None;
        }
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

/// The volumes of a node's pool that may be images: listable, and not a kvmfs instance's
/// disk or seed (of an instance on any node).
pub(super) fn image_candidates(nv: &NodeView, instances: &InstanceMap) -> Vec<VolumeProbe> {
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
pub(super) fn images_of(nv: &NodeView, instances: &InstanceMap) -> Vec<VolumeProbe> {
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
pub(super) fn use_changed(nv: &NodeView, updates: Option<&[Update]>) -> bool {
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
pub(super) fn only_instance_parts_changed(
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
pub(super) fn candidates_stale(
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

/// Whether a name can be a directory entry.
pub(super) fn is_listable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

//! Placement: the filters a real scheduler applies (node online, image present, networks
//! present and active, room for the vCPUs and RAM under the overcommit ratios), then the
//! original `getresource.sh` rule — the best score, 0.7 × free-CPU share + 0.3 × free-RAM
//! share — with ties going to the node named first.
//!
//! What an instance holds is counted from the database at the moment of placement (`Loads`:
//! the sums per node, read under the placement lock, so other kvmfs mounts' instances count
//! too), plus the active domains on each node that kvmfs does not manage (unless the
//! database, asked about each of them under the same lock, says it is an instance).

use crate::config::PlacementConfig;
use crate::db::Loads;

use super::view::{NodeView, Room, View};

/// What an instance needs from a node.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub vcpus: u32,
    pub ram_mb: u64,
    pub image: &'a str,
    /// The image is on the shared storage (`[storage]`), where the build looks for it: no
    /// node's pool need hold it.
    pub image_shared: bool,
    pub networks: &'a [&'a str],
    /// A node the user forced with `"node"` in the spec.
    pub node: Option<&'a str>,
    /// The nodes it may go to, if not every node (a move: those sharing its storage).
    pub among: Option<&'a [String]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("node {0} is not configured")]
    UnknownNode(String),
    #[error("no node can take this instance: {0}")]
    NoRoom(String),
}

/// (vCPUs, RAM MB) held on each node.
pub struct Committed<'a> {
    loads: &'a Loads,
}

impl<'a> Committed<'a> {
    /// From the database: every kvmfs instance that holds resources, on any mount.
    pub fn from_loads(loads: &'a Loads) -> Committed<'a> {
        Committed { loads }
    }

    /// The active domains of `view` that placement counts on top of the database's
    /// instances unless the database says they are instances: (node, domain name).
    pub fn domains_to_check(view: &View) -> Vec<(&str, &str)> {
        view.nodes
            .values()
            .flat_map(|n| {
                n.unmanaged_load
                    .iter()
                    .map(move |u| (n.name.as_str(), u.domain.as_str()))
            })
            .collect()
    }

    /// What `node` holds: its kvmfs instances, and its active domains that are not one.
    fn of(&self, node: &NodeView) -> (u64, u64) {
        let (mut v, mut r) = self
            .loads
            .by_node
            .get(node.name.as_str())
            .copied()
            .unwrap_or_default();
        for u in node.unmanaged_load.iter() {
            if !self
                .loads
                .managed
                .contains(&(node.name.clone(), u.domain.clone()))
            {
                v += u.vcpus;
                r += u.ram_mb;
            }
        }
        (v, r)
    }
}

/// Why `node` cannot take `need`, or `None` if it can.
fn refusal(view: &View, node: &NodeView, need: &Need<'_>, held: (u64, u64)) -> Option<String> {
    if !node.online {
        return Some(format!("{} is offline", node.name));
    }
    if node.drained {
        return Some(format!("{} is drained", node.name));
    }
    if need.among.is_some_and(|a| !a.contains(&node.name)) {
        return Some(format!("{} does not share its storage", node.name));
    }
    let has_image = node
        .volumes
        .as_ref()
        .is_some_and(|v| v.iter().any(|v| v.name == need.image));
    if !has_image && !need.image_shared {
        return Some(format!("{} has no image {}", node.name, need.image));
    }
    for net in need.networks {
        let state = view
            .networks
            .get(*net)
            .and_then(|n| n.per_node.iter().find(|(nn, _)| nn == &node.name))
            .map(|(_, p)| p.active);
        match state {
            None => return Some(format!("{} has no network {net}", node.name)),
            Some(false) => return Some(format!("{}: network {net} is inactive", node.name)),
            Some(true) => {}
        }
    }
    if held.0 + u64::from(need.vcpus) > node.capacity_vcpus {
        return Some(format!(
            "{} has {} of {} vCPUs free, {} needed",
            node.name,
            node.capacity_vcpus.saturating_sub(held.0),
            node.capacity_vcpus,
            need.vcpus
        ));
    }
    if held.1 + need.ram_mb > node.capacity_ram_mb {
        return Some(format!(
            "{} has {} of {} MB RAM free, {} needed",
            node.name,
            node.capacity_ram_mb.saturating_sub(held.1),
            node.capacity_ram_mb,
            need.ram_mb
        ));
    }
    None
}

/// The node to build on: the filters, then the best score on what each node holds now.
pub fn choose(
    view: &View,
    need: &Need<'_>,
    committed: &Committed<'_>,
    p: &PlacementConfig,
) -> Result<String, PlaceError> {
    if let Some(forced) = need.node {
        let node = view
            .nodes
            .get(forced)
            .ok_or_else(|| PlaceError::UnknownNode(forced.to_string()))?;
        return match refusal(view, node, need, committed.of(node)) {
            None => Ok(forced.to_string()),
            Some(why) => Err(PlaceError::NoRoom(why)),
        };
    }
    let mut best: Option<(&NodeView, f64)> = None;
    let mut reasons = Vec::new();
    for node in view.nodes.values() {
        let held = committed.of(node);
        match refusal(view, node, need, held) {
            Some(why) => reasons.push(why),
            None => {
                let score = Room::new(node.cpus, node.memory_total_mb, held, p).score;
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((node, score));
                }
            }
        }
    }
    match best {
        Some((n, _)) => Ok(n.name.clone()),
        None if reasons.is_empty() => Err(PlaceError::NoRoom("no nodes are configured".into())),
        None => Err(PlaceError::NoRoom(reasons.join("; "))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::view::{NodeState, fixtures};
    use crate::hv::{NetworkProbe, NodeProbe, VolumeProbe};

    fn node(name: &str, cpus: u32, mib: u64, net_active: bool) -> NodeState {
        let probe = NodeProbe {
            networks: vec![NetworkProbe {
                name: "default".into(),
                bridge: None,
                active: net_active,
                autostart: true,
                persistent: true,
                forward: None,
                addresses: Vec::new(),
            }],
            volumes: Some(Arc::new(vec![VolumeProbe {
                name: "img".into(),
                capacity_bytes: 1,
                path: None,
            }])),
            ..fixtures::probe(cpus, mib)
        };
        fixtures::online(name, probe, Vec::new())
    }

    fn need(node: Option<&str>) -> Need<'_> {
        Need {
            vcpus: 1,
            ram_mb: 1024,
            image: "img",
            image_shared: false,
            networks: &["default"],
            node,
            among: None,
        }
    }

    /// What the database says the nodes hold: (node, vCPUs, RAM MB).
    fn loads(held: &[(&str, u64, u64)]) -> Loads {
        Loads {
            by_node: held
                .iter()
                .map(|(n, v, r)| (n.to_string(), (*v, *r)))
                .collect(),
            managed: Default::default(),
        }
    }

    #[test]
    fn the_best_score_wins_on_what_the_database_says_is_held() {
        let v = fixtures::view_of(&[node("a", 4, 4096, true), node("b", 4, 4096, true)]);
        let p = PlacementConfig::default();
        let none = loads(&[]);
        assert_eq!(
            choose(&v, &need(None), &Committed::from_loads(&none), &p),
            Ok("a".into())
        );
        // Another mount's instances on `a` (which this view has not seen) count.
        let held = loads(&[("a", 8, 2048)]);
        assert_eq!(
            choose(&v, &need(None), &Committed::from_loads(&held), &p),
            Ok("b".into())
        );
        // Full: 4096 MB of RAM held on both.
        let held = loads(&[("a", 1, 4096), ("b", 1, 4096)]);
        let e = choose(&v, &need(None), &Committed::from_loads(&held), &p).unwrap_err();
        assert!(
            matches!(e, PlaceError::NoRoom(ref m) if m.contains("MB RAM free")),
            "{e}"
        );
    }

    #[test]
    fn an_inactive_network_filters_the_node_out() {
        let v = fixtures::view_of(&[node("a", 8, 8192, false), node("b", 2, 4096, true)]);
        let p = PlacementConfig::default();
        let none = loads(&[]);
        let held = Committed::from_loads(&none);
        assert_eq!(choose(&v, &need(None), &held, &p), Ok("b".into()));
        let e = choose(&v, &need(Some("a")), &held, &p).unwrap_err();
        assert!(e.to_string().contains("network default is inactive"), "{e}");
        assert!(matches!(
            choose(&v, &need(Some("zz")), &held, &p),
            Err(PlaceError::UnknownNode(_))
        ));
    }

    #[test]
    fn an_image_on_the_shared_storage_needs_no_pool_copy() {
        let v = fixtures::view_of(&[node("a", 4, 4096, true)]);
        let p = PlacementConfig::default();
        let none = loads(&[]);
        let held = Committed::from_loads(&none);
        let mut n = need(None);
        n.image = "on-the-share.qcow2";
        let e = choose(&v, &n, &held, &p).unwrap_err();
        assert!(
            e.to_string().contains("has no image on-the-share.qcow2"),
            "{e}"
        );
        n.image_shared = true;
        assert_eq!(choose(&v, &n, &held, &p), Ok("a".into()));
    }

    #[test]
    fn a_silent_shared_storage_degrades_the_status_naming_its_nodes() {
        let mut v = fixtures::view_of(&[node("a", 4, 4096, true), node("b", 4, 4096, true)]);
        assert_eq!(v.root_status(), "ok");
        v.storage_error = Some("storage nfs://st/cloud did not answer within 1.5s".into());
        assert_eq!(
            v.root_status(),
            "degraded: storage nfs://st/cloud did not answer within 1.5s (used by a, b)"
        );
    }
}

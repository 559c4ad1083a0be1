//! Placement: the filters a real scheduler applies (node online, image present, networks
//! present, room for the vCPUs and RAM under the overcommit ratios), then the original
//! `getresource.sh` rule — the best score, 0.7 × free-CPU share + 0.3 × free-RAM share — with
//! ties going to the node named first.

use super::view::{NodeView, View};

/// What an instance needs from a node.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub vcpus: u32,
    pub ram_mb: u64,
    pub image: &'a str,
    pub networks: &'a [&'a str],
    /// A node the user forced with `"node"` in the spec.
    pub node: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("node {0} is not configured")]
    UnknownNode(String),
    #[error("no node can take this instance: {0}")]
    NoRoom(String),
}

impl From<PlaceError> for super::actions::ActionError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::UnknownNode(_) => super::actions::ActionError::Invalid(e.to_string()),
            PlaceError::NoRoom(_) => super::actions::ActionError::NoCapacity(e.to_string()),
        }
    }
}

/// Why `node` cannot take `need`, or `None` if it can.
pub fn refusal(view: &View, node: &NodeView, need: &Need<'_>) -> Option<String> {
    if !node.online {
        return Some(format!("{} is offline", node.name));
    }
    let has_image = node
        .volumes
        .as_ref()
        .is_some_and(|v| v.iter().any(|v| v.name == need.image));
    if !has_image {
        return Some(format!("{} has no image {}", node.name, need.image));
    }
    for net in need.networks {
        let has = view
            .networks
            .get(*net)
            .is_some_and(|n| n.per_node.iter().any(|(nn, _)| nn == &node.name));
        if !has {
            return Some(format!("{} has no network {net}", node.name));
        }
    }
    if node.committed_vcpus + u64::from(need.vcpus) > node.capacity_vcpus {
        return Some(format!(
            "{} has {} of {} vCPUs free, {} needed",
            node.name,
            node.capacity_vcpus.saturating_sub(node.committed_vcpus),
            node.capacity_vcpus,
            need.vcpus
        ));
    }
    if node.committed_ram_mb + need.ram_mb > node.capacity_ram_mb {
        return Some(format!(
            "{} has {} of {} MB RAM free, {} needed",
            node.name,
            node.capacity_ram_mb.saturating_sub(node.committed_ram_mb),
            node.capacity_ram_mb,
            need.ram_mb
        ));
    }
    None
}

/// The node to build on.
pub fn choose(view: &View, need: &Need<'_>) -> Result<String, PlaceError> {
    if let Some(forced) = need.node {
        let node = view
            .nodes
            .get(forced)
            .ok_or_else(|| PlaceError::UnknownNode(forced.to_string()))?;
        return match refusal(view, node, need) {
            None => Ok(forced.to_string()),
            Some(why) => Err(PlaceError::NoRoom(why)),
        };
    }
    let mut best: Option<&NodeView> = None;
    let mut reasons = Vec::new();
    for node in view.nodes.values() {
        match refusal(view, node, need) {
            Some(why) => reasons.push(why),
            None => {
                if best.is_none_or(|b| node.score > b.score) {
                    best = Some(node);
                }
            }
        }
    }
    match best {
        Some(n) => Ok(n.name.clone()),
        None if reasons.is_empty() => Err(PlaceError::NoRoom("no nodes are configured".into())),
        None => Err(PlaceError::NoRoom(reasons.join("; "))),
    }
}

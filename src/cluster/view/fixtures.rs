//! Nodes and domains as the view's and the scheduler's tests need them: online, read once,
//! with what a test asks for and nothing else.
use std::sync::Arc;

use std::time::SystemTime;

use super::{Changed, Faults, NodeState, NodeStatus, RowMap, View, build};
use crate::config::PlacementConfig;
use crate::hv::{DomainDevices, DomainProbe, DomainState, NodeProbe};

/// A domain of `vcpus` and `mib` MiB in `state`.
pub fn domain(name: &str, vcpus: u32, mib: u64, state: DomainState) -> Arc<DomainProbe> {
    Arc::new(DomainProbe {
        name: name.into(),
        uuid: format!("uuid-{name}"),
        state,
        reason: None,
        vcpus,
        max_memory_kib: mib * 1024,
        memory_kib: mib * 1024,
        devices: Arc::new(DomainDevices::default()),
        snapshots: Arc::default(),
    })
}

/// What a poll reads of a node of `cpus` CPUs and `mib` MiB with no networks or volumes.
pub fn probe(cpus: u32, mib: u64) -> NodeProbe {
    NodeProbe {
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
        pool_source: None,
    }
}

/// An online node that was read as `probe`, running `domains`.
pub fn online(name: &str, probe: NodeProbe, domains: Vec<Arc<DomainProbe>>) -> NodeState {
    NodeState {
        name: name.into(),
        uri: "test:///x".into(),
        status: NodeStatus::Online,
        last_error: None,
        probe: Some(Arc::new(probe)),
        domains,
        cpu_usage: None,
        updated_at: None,
        domains_epoch: 0,
        polls: 0,
        full_poll: None,
        drained: false,
    }
}

/// The first view of `nodes`, with no database rows and the default placement settings.
pub fn view_of(nodes: &[NodeState]) -> View {
    build(
        nodes,
        &RowMap::new(),
        Faults::default(),
        None,
        &PlacementConfig::default(),
        &View::default(),
        SystemTime::now(),
        &Changed::all(),
    )
}

//! The view's tests: names given to domains and rows, status lines, the score, and that
//! building only what changed gives what building everything gives.
use std::sync::Arc;

use super::build::*;
use super::capacity::*;
use super::*;
use crate::config::PlacementConfig;
use crate::db::{InstanceRecord, InstanceState};
use crate::hv::{DomainDevices, DomainState};
use crate::hv::{DomainProbe, NodeProbe, VolumeProbe};

fn dom(name: &str, vcpus: u32, mib: u64, state: DomainState) -> Arc<DomainProbe> {
    fixtures::domain(name, vcpus, mib, state)
}

fn node(name: &str, cpus: u32, mib: u64, domains: Vec<Arc<DomainProbe>>) -> NodeState {
    fixtures::online(name, fixtures::probe(cpus, mib), domains)
}

#[test]
fn score_follows_the_7_3_rule() {
    let nodes = vec![
        node("a", 4, 4096, vec![dom("x", 8, 2048, DomainState::Running)]),
        node("b", 2, 4096, vec![dom("y", 1, 512, DomainState::Shutoff)]),
    ];
    let v = fixtures::view_of(&nodes);
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
    let v = fixtures::view_of(&nodes);
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
    let v = fixtures::view_of(&[n]);
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
const STATES: [InstanceState; 6] = InstanceState::ALL;

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
        // A migrating row is on its way to the other node, whose copy of the domain is then
        // the row's and no stranger's.
        migrate_to: (state == InstanceState::Migrating)
            .then(|| if node == Some("n1") { "n2" } else { "n1" }.to_string()),
        saved_snapshots: None,
    }
}

proptest::proptest! {
    /// Building only the instances that changed gives the view building all of them
    /// gives, step after step (each step starting from the last in-place build, so any
    /// drift in the nodes' totals would add up and show). With `shared`, the images are a
    /// shared storage's files: node `n1`'s pool stands for its listing.
    #[test]
    fn building_what_changed_equals_building_everything(
        ops in proptest::collection::vec(op(), 1..60),
        shared in proptest::bool::ANY,
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
        let listing = |n: &NodeState| -> SharedFiles {
            Arc::new(n.probe.as_deref().unwrap().volumes.as_deref().unwrap().iter().map(|v| SharedFile {
                name: v.name.clone(),
                size_bytes: v.capacity_bytes,
                location: crate::storage::ShareLocation {
                    protocol: "nfs",
                    host: "st".into(),
                    path: format!("/cloud/{}", v.name),
                },
            }).collect())
        };
        let mut files = listing(&nodes[0]);
        let share = |files: &SharedFiles| shared.then(|| files.clone());
        let mut prev = build(&nodes, &rows, Faults::default(), share(&files).as_ref(), &placement, &View::default(), t0, &Changed::all());
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
                                storage: "node",
                                protocol: None,
                                host: None,
                                network: false,
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
                    if node == 0 {
                        files = listing(&nodes[0]);
                    }
                }
            }
            let now = t0 + std::time::Duration::from_secs(step as u64 + 1);
            let share = share(&files);
            let part = build(&nodes, &rows, Faults::default(), share.as_ref(), &placement, &prev, now, &changed);
            let whole = build(&nodes, &rows, Faults::default(), share.as_ref(), &placement, &prev, now, &Changed::all());
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
                    .map(|i| (i.name.clone(), i.per_node.clone(), i.shared.clone()))
                    .collect::<Vec<_>>()
            };
            proptest::prop_assert_eq!(images(&part), images(&whole));
            prev = part;
        }
    }
}

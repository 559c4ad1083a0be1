//! In-process workloads: placement over 100 nodes, view builds; timed, or counted by
//! callgrind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::*;

/// How `micro` measures its workloads: the median of timed runs, or one run of the named
/// workload inside `cg_run`, for callgrind to count (`callgrind_micro`).
#[derive(Clone, Copy)]
pub enum Measure<'a> {
    Time,
    Callgrind(&'a str),
}

pub struct Micro {
    pub place_100: Duration,
    pub build_10k: Duration,
    pub rebuild_10k_nodes_only: Duration,
    pub rebuild_10k_one_changed: Duration,
    pub rebuild_10k_all_changed: Duration,
}

/// The workloads of `micro`, by the names `callgrind_micro` asks for.
pub const MICRO_WORKLOADS: [(&str, &str); 5] = [
    ("placement", "Placement of one instance over 100 nodes"),
    ("build", "Building a view of 10,000 instances from scratch"),
    (
        "rebuild-nodes-only",
        "Rebuilding it when only node numbers moved",
    ),
    ("rebuild-one", "Rebuilding it when one domain changed"),
    (
        "rebuild-all",
        "Rebuilding every instance after one domain changed",
    ),
];

/// The one function callgrind collects in (`--toggle-collect=*cg_run*`).
#[inline(never)]
pub fn cg_run(f: &mut dyn FnMut()) {
    f();
    std::hint::black_box(());
}

pub fn micro(opts: &Opts, how: Measure<'_>) -> Micro {
    use kvmfs::cluster::placement::{Committed, Need, choose};
    use kvmfs::cluster::view::{Changed, NodeState, NodeStatus, RowMap, View, build};
    use kvmfs::hv::{DomainDevices, DomainProbe, DomainState, NetworkProbe, NodeProbe};
    let placement = kvmfs::config::PlacementConfig::default();
    let node = |k: usize, domains: usize| NodeState {
        name: format!("n{k:03}"),
        uri: "test:///x".into(),
        status: NodeStatus::Online,
        last_error: None,
        probe: Some(Arc::new(NodeProbe {
            hostname: None,
            cpus: 64,
            mhz: 2400,
            model: "x86_64".into(),
            memory_kib: 256 << 20,
            free_memory_kib: None,
            cpu_times: None,
            domains: Vec::new(),
            networks: vec![NetworkProbe {
                name: "default".into(),
                bridge: Some("virbr0".into()),
                active: true,
                autostart: true,
                persistent: true,
                forward: Some("nat".into()),
                addresses: vec!["10.0.0.1/24".into()],
            }],
            volumes: Some(Arc::new(vec![kvmfs::hv::VolumeProbe {
                name: "debian-12.qcow2".into(),
                capacity_bytes: 2 << 30,
                path: Some("/var/lib/libvirt/images/debian-12.qcow2".into()),
            }])),
            pool_source: None,
        })),
        domains: (0..domains)
            .map(|i| {
                Arc::new(DomainProbe {
                    name: format!("d{k:03}-{i:05}"),
                    uuid: format!("{k:08}-0000-0000-0000-{i:012}"),
                    state: DomainState::Running,
                    reason: None,
                    vcpus: 1,
                    max_memory_kib: 512 * 1024,
                    memory_kib: 512 * 1024,
                    devices: Arc::new(DomainDevices::default()),
                    snapshots: Arc::default(),
                })
            })
            .collect(),
        cpu_usage: None,
        updated_at: Some(SystemTime::now()),
        domains_epoch: 0,
        polls: 0,
        full_poll: None,
        drained: false,
    };
    let runs = if opts.quick { 200 } else { 2000 };
    let measure = |name: &str, runs: usize, f: &mut dyn FnMut()| match how {
        Measure::Time => median(runs, f),
        Measure::Callgrind(w) => {
            if w == name {
                cg_run(f);
            }
            Duration::ZERO
        }
    };
    let nodes: Vec<NodeState> = (0..100).map(|k| node(k, 10)).collect();
    let v = build(
        &nodes,
        &RowMap::new(),
        kvmfs::cluster::view::Faults::default(),
        None,
        &placement,
        &View::default(),
        SystemTime::now(),
        &Changed::all(),
    );
    let networks = ["default"];
    let need = Need {
        vcpus: 2,
        ram_mb: 2048,
        image: "debian-12.qcow2",
        image_shared: false,
        networks: &networks,
        node: None,
        among: None,
    };
    let none = kvmfs::db::Loads::default();
    let committed = Committed::from_loads(&none);
    let place_100 = measure("placement", runs, &mut || {
        choose(&v, &need, &committed, &placement).expect("a node");
    });
    let big: Vec<NodeState> = (0..3).map(|k| node(k, 3334)).collect();
    let first = build(
        &big,
        &RowMap::new(),
        kvmfs::cluster::view::Faults::default(),
        None,
        &placement,
        &View::default(),
        SystemTime::now(),
        &Changed::all(),
    );
    let r = if opts.quick { 3 } else { 11 };
    // Building a view of `nodes` on `previous` with `changed`, measured as `name`.
    let time_build = |name: &str, nodes: &[NodeState], previous: &View, changed: &Changed| {
        measure(name, r, &mut || {
            build(
                nodes,
                &RowMap::new(),
                kvmfs::cluster::view::Faults::default(),
                None,
                &placement,
                previous,
                SystemTime::now(),
                changed,
            );
        })
    };
    let build_10k = time_build("build", &big, &View::default(), &Changed::all());
    let rebuild_10k_nodes_only =
        time_build("rebuild-nodes-only", &big, &first, &Changed::default());
    // One domain changed its state (an event, a build step): only it is built again.
    let mut one = big.clone();
    let d = one[0].domains[17].clone();
    one[0].domains[17] = Arc::new(DomainProbe {
        state: DomainState::Shutoff,
        ..DomainProbe::clone(&d)
    });
    let mut changed = Changed::default();
    changed.name(&d.name);
    let rebuild_10k_one_changed = time_build("rebuild-one", &one, &first, &changed);
    let rebuild_10k_all_changed = time_build("rebuild-all", &one, &first, &Changed::all());
    Micro {
        place_100,
        build_10k,
        rebuild_10k_nodes_only,
        rebuild_10k_one_changed,
        rebuild_10k_all_changed,
    }
}

/// Runs each of `micro`'s workloads once in a child of this benchmark under valgrind's
/// callgrind, counting instructions only inside `cg_run`; returns (workload, instructions).
pub fn callgrind_micro(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (name, what) in MICRO_WORKLOADS {
        let out = dir.join(format!("callgrind-{name}.out"));
        let st = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--toggle-collect=*cg_run*")
            .arg(&exe)
            .args(["--bench", "--callgrind-workload", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("valgrind: {e}"))?;
        if !st.success() {
            return Err(format!("valgrind on {name}: {st}"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let n: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no instruction total in {}", out.display()))?;
        rows.push((what, group_thousands(n)));
    }
    Ok(rows)
}

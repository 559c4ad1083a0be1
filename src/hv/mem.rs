//! An in-memory node for in-process tests: a `NodeBackend` that keeps its domains, networks
//! and pool volumes in memory, understands the XML kvmfs writes, and fails on request —
//! down (every call refused), slow (every call sleeps), or refusing the n-th call of one
//! kind — so the controller's rules (placement, builds and their undo, deletes, `ctl`, the
//! reconciliation, claims) can be tested without libvirt, a mount or root.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    CpuTimes, DomainDevices, DomainOp, DomainProbe, DomainState, EventSink, HvError, MigrateHow,
    NetworkProbe, NodeBackend, NodeProbe, ProbeScope, SavedSnapshot, SnapshotProbe, VolumeProbe,
    Volumes,
};

/// The kinds of call a fault can be set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    Probe,
    CreateVolume,
    UploadVolume,
    VolumePath,
    DeleteVolume,
    DefineAndStart,
    DomainOp,
    RemoveDomain,
    CreateSnapshot,
    ListSnapshots,
    RevertSnapshot,
    DeleteSnapshot,
    Migrate,
}

#[derive(Debug, Clone)]
struct MemDomain {
    uuid: String,
    state: DomainState,
    vcpus: u32,
    memory_kib: u64,
    devices: Arc<DomainDevices>,
    /// By name; `current` set on at most one.
    snapshots: BTreeMap<String, SnapshotProbe>,
}

#[derive(Default)]
struct State {
    domains: BTreeMap<String, MemDomain>,
    networks: Vec<NetworkProbe>,
    volumes: BTreeMap<String, VolumeProbe>,
    next_uuid: u64,
}

impl State {
    /// A UUID no domain of this node has had.
    fn new_uuid(&mut self) -> String {
        self.next_uuid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_uuid)
    }
}

#[derive(Default)]
struct Faults {
    down: bool,
    delay: Duration,
    /// Calls of a kind that fail, counted from now: the n-th next call fails (1: the next).
    fail_on: BTreeMap<Call, u32>,
    /// Calls made so far, by kind.
    calls: BTreeMap<Call, u32>,
}

/// See the module note.
pub struct MemNode {
    name: String,
    cpus: u32,
    memory_kib: u64,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    /// Every daemon watching this node (the in-memory node is shared by the daemons of
    /// one test, as a real node is).
    sinks: Mutex<Vec<EventSink>>,
    /// What `events` answers: `None` (polls only) unless a test says the node delivers
    /// events (`set_events`).
    events: Mutex<Option<u64>>,
    /// What `NodeProbe::pool_source` says (`set_pool_source`).
    pool_source: Mutex<Option<String>>,
    /// How long a migration from this node takes (`set_migrate_delay`).
    migrate_delay: Mutex<Duration>,
}

impl MemNode {
    /// A node with `cpus` CPUs, `memory_mb` of RAM, the networks `default` and `overlay`
    /// (active) and an image `debian-12.qcow2` in its pool.
    pub fn new(name: &str, cpus: u32, memory_mb: u64) -> Arc<MemNode> {
        let node = MemNode {
            name: name.to_string(),
            cpus,
            memory_kib: memory_mb * 1024,
            state: Mutex::new(State::default()),
            faults: Mutex::new(Faults::default()),
            sinks: Mutex::new(Vec::new()),
            events: Mutex::new(None),
            pool_source: Mutex::new(None),
            migrate_delay: Mutex::new(Duration::ZERO),
        };
        for net in ["default", "overlay"] {
            node.add_network(net, true);
        }
        node.add_volume("debian-12.qcow2", 2 << 30);
        Arc::new(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn add_network(&self, name: &str, active: bool) {
        let mut st = self.state.lock();
        st.networks.retain(|n| n.name != name);
        st.networks.push(NetworkProbe {
            name: name.to_string(),
            bridge: Some(format!("br-{name}")),
            active,
            autostart: true,
            persistent: true,
            forward: Some("nat".into()),
            addresses: Vec::new(),
        });
    }

    pub fn add_volume(&self, name: &str, bytes: u64) {
        self.state.lock().volumes.insert(
            name.to_string(),
            VolumeProbe {
                name: name.to_string(),
                capacity_bytes: bytes,
                path: Some(format!("/mem/{}/{name}", self.name)),
            },
        );
    }

    /// A domain kvmfs did not make (no kvmfs metadata), running or not.
    pub fn add_foreign_domain(&self, name: &str, vcpus: u32, memory_mb: u64, running: bool) {
        let mut st = self.state.lock();
        let uuid = st.new_uuid();
        st.domains.insert(
            name.to_string(),
            MemDomain {
                uuid,
                state: if running {
                    DomainState::Running
                } else {
                    DomainState::Shutoff
                },
                vcpus,
                memory_kib: memory_mb * 1024,
                devices: Arc::new(DomainDevices::default()),
                snapshots: BTreeMap::new(),
            },
        );
    }

    /// Puts a copy of domain `name` of this node on `dest` in `state` (with no snapshot
    /// metadata), as a migration cut off midway leaves it: the reconciliation's input.
    pub fn copy_domain_to(&self, name: &str, dest: &MemNode, state: DomainState) {
        let Some(mut d) = self.state.lock().domains.get(name).cloned() else {
            return;
        };
        d.state = state;
        d.snapshots.clear();
        dest.state.lock().domains.insert(name.to_string(), d);
    }

    /// Makes every migration from this node take `delay` before it moves the domain (the
    /// other calls are not slowed).
    pub fn set_migrate_delay(&self, delay: Duration) {
        *self.migrate_delay.lock() = delay;
    }

    /// Makes the node's pool a `netfs` pool of `source` (`HOST:/dir`), or not.
    pub fn set_pool_source(&self, source: Option<&str>) {
        *self.pool_source.lock() = source.map(str::to_string);
    }

    /// Every call fails (as a node whose libvirtd is down) while `down`.
    pub fn set_down(&self, down: bool) {
        self.faults.lock().down = down;
    }

    /// Every call sleeps this long first (as a slow node).
    pub fn set_delay(&self, delay: Duration) {
        self.faults.lock().delay = delay;
    }

    /// The `n`-th next call of kind `call` fails (1: the very next).
    pub fn fail_nth(&self, call: Call, n: u32) {
        self.faults.lock().fail_on.insert(call, n);
    }

    /// Calls of kind `call` made so far.
    pub fn calls(&self, call: Call) -> u32 {
        self.faults.lock().calls.get(&call).copied().unwrap_or(0)
    }

    /// The node's domains, by name, with their state.
    pub fn domains(&self) -> Vec<(String, DomainState)> {
        self.state
            .lock()
            .domains
            .iter()
            .map(|(n, d)| (n.clone(), d.state))
            .collect()
    }

    /// The names of the pool's volumes.
    pub fn volumes(&self) -> Vec<String> {
        self.state.lock().volumes.keys().cloned().collect()
    }

    /// Sets a domain's state behind kvmfs's back (a guest that powered itself off, say).
    pub fn set_domain_state(&self, name: &str, state: DomainState) {
        if let Some(d) = self.state.lock().domains.get_mut(name) {
            d.state = state;
        }
        self.event(name);
    }

    /// Makes every disk of a domain a network disk (as `<disk type='network'>` on NFS,
    /// which libvirt snapshots only while the domain runs).
    pub fn set_network_disks(&self, name: &str) {
        if let Some(d) = self.state.lock().domains.get_mut(name) {
            let mut devices = DomainDevices::clone(&d.devices);
            for disk in &mut devices.disks {
                disk.network = true;
                disk.protocol = Some("nfs".into());
                disk.host = Some("nfs1".into());
            }
            d.devices = Arc::new(devices);
        }
        self.event(name);
    }

    /// The names of a domain's snapshots (empty when the domain is gone).
    pub fn snapshots(&self, name: &str) -> Vec<String> {
        self.state
            .lock()
            .domains
            .get(name)
            .map(|d| d.snapshots.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Says the node delivers events on connection `epoch` (`Some`), or that it does not.
    pub fn set_events(&self, epoch: Option<u64>) {
        *self.events.lock() = epoch;
    }

    /// Changes a domain's state behind kvmfs's back with no event (one a lost connection
    /// missed).
    pub fn set_domain_state_silently(&self, name: &str, state: DomainState) {
        if let Some(d) = self.state.lock().domains.get_mut(name) {
            d.state = state;
        }
    }

    fn event(&self, name: &str) {
        let sinks = self.sinks.lock().clone();
        for sink in sinks {
            sink(super::DomainEvent {
                name: name.to_string(),
            });
        }
    }

    /// Counts a call, applies the faults set for it, and says whether it fails.
    fn enter(&self, call: Call) -> Result<(), HvError> {
        let delay = {
            let mut f = self.faults.lock();
            *f.calls.entry(call).or_insert(0) += 1;
            if f.down {
                return Err(HvError::Connect {
                    node: self.name.clone(),
                    uri: format!("mem://{}", self.name),
                    message: "the node is down".into(),
                });
            }
            if let Some(n) = f.fail_on.get_mut(&call) {
                *n -= 1;
                if *n == 0 {
                    f.fail_on.remove(&call);
                    return Err(HvError::Call {
                        node: self.name.clone(),
                        message: format!("{call:?} failed (injected)"),
                    });
                }
            }
            f.delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(())
    }

    fn probe_domain(name: &str, d: &MemDomain) -> DomainProbe {
        DomainProbe {
            name: name.to_string(),
            uuid: d.uuid.clone(),
            state: d.state,
            reason: None,
            vcpus: d.vcpus,
            max_memory_kib: d.memory_kib,
            memory_kib: d.memory_kib,
            devices: d.devices.clone(),
            snapshots: Arc::new(d.snapshots.values().cloned().collect()),
        }
    }

    /// Runs `f` on domain `name`, or says it is not there.
    fn with_domain<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut MemDomain) -> T,
    ) -> Result<T, HvError> {
        let mut st = self.state.lock();
        match st.domains.get_mut(name) {
            Some(d) => Ok(f(d)),
            None => Err(self.not_found(format!("domain {name}"))),
        }
    }

    fn not_found(&self, what: String) -> HvError {
        HvError::NotFound {
            node: self.name.clone(),
            what,
        }
    }

    fn call_err(&self, message: &str) -> HvError {
        HvError::Call {
            node: self.name.clone(),
            message: message.to_string(),
        }
    }
}

/// The target of a domain's first writable network disk: libvirt refuses, as this node
/// does, to take, delete or revert to a snapshot of one without a running QEMU.
fn network_disk(d: &MemDomain) -> Option<String> {
    d.devices
        .disks
        .iter()
        .find(|disk| disk.network && disk.device != "cdrom")
        .map(|disk| disk.target.clone())
}

/// The text of the first element called `tag` in `doc`.
fn text_of<'a>(doc: &'a roxmltree::Document, tag: &str) -> Option<&'a str> {
    doc.descendants()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
}

/// A size element (`<capacity unit='G'>10</capacity>`) in bytes.
fn bytes_of(doc: &roxmltree::Document, tag: &str) -> u64 {
    let Some(node) = doc.descendants().find(|n| n.has_tag_name(tag)) else {
        return 0;
    };
    let n: u64 = node.text().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    match node.attribute("unit").unwrap_or("bytes") {
        "K" | "KiB" => n << 10,
        "M" | "MiB" => n << 20,
        "G" | "GiB" => n << 30,
        _ => n,
    }
}

impl NodeBackend for MemNode {
    fn probe(&self, scope: ProbeScope) -> Result<NodeProbe, HvError> {
        self.enter(Call::Probe)?;
        let st = self.state.lock();
        Ok(NodeProbe {
            pool_source: self.pool_source.lock().clone(),
            hostname: Some(self.name.clone()),
            cpus: self.cpus,
            mhz: 2000,
            model: "mem".into(),
            memory_kib: self.memory_kib,
            free_memory_kib: None,
            cpu_times: Some(CpuTimes { busy: 0, total: 0 }),
            domains: if scope.domains {
                st.domains
                    .iter()
                    .map(|(n, d)| Self::probe_domain(n, d))
                    .collect()
            } else {
                Vec::new()
            },
            networks: st.networks.clone(),
            volumes: scope
                .pool
                .then(|| Arc::new(st.volumes.values().cloned().collect())),
        })
    }

    fn probe_named(&self, names: &[String]) -> Result<Vec<(String, Option<DomainProbe>)>, HvError> {
        self.enter(Call::Probe)?;
        let st = self.state.lock();
        Ok(names
            .iter()
            .map(|n| {
                let d = st.domains.get(n).map(|d| Self::probe_domain(n, d));
                (n.clone(), d)
            })
            .collect())
    }

    fn probe_pool(&self) -> Result<Option<Volumes>, HvError> {
        self.enter(Call::Probe)?;
        Ok(Some(Arc::new(
            self.state.lock().volumes.values().cloned().collect(),
        )))
    }

    fn probe_volumes_named(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Option<VolumeProbe>)>, HvError> {
        self.enter(Call::Probe)?;
        let st = self.state.lock();
        Ok(names
            .iter()
            .map(|n| (n.clone(), st.volumes.get(n).cloned()))
            .collect())
    }

    fn watch(&self, sink: EventSink) {
        self.sinks.lock().push(sink);
    }

    fn events(&self) -> Option<u64> {
        *self.events.lock()
    }

    fn domain_type(&self, configured: &str) -> String {
        configured.to_string()
    }

    fn create_volume(&self, xml: &str) -> Result<String, HvError> {
        self.enter(Call::CreateVolume)?;
        let doc = roxmltree::Document::parse(xml).map_err(|e| HvError::Call {
            node: self.name.clone(),
            message: format!("bad volume XML: {e}"),
        })?;
        let name = text_of(&doc, "name").unwrap_or_default().to_string();
        let mut st = self.state.lock();
        if st.volumes.contains_key(&name) {
            return Err(HvError::Call {
                node: self.name.clone(),
                message: format!("volume {name} exists already"),
            });
        }
        let path = format!("/mem/{}/{name}", self.name);
        st.volumes.insert(
            name.clone(),
            VolumeProbe {
                name,
                capacity_bytes: bytes_of(&doc, "capacity"),
                path: Some(path.clone()),
            },
        );
        Ok(path)
    }

    fn upload_volume(&self, name: &str, _data: &[u8]) -> Result<(), HvError> {
        self.enter(Call::UploadVolume)?;
        if self.state.lock().volumes.contains_key(name) {
            Ok(())
        } else {
            Err(self.not_found(format!("volume {name}")))
        }
    }

    fn volume_path(&self, name: &str) -> Result<Option<String>, HvError> {
        self.enter(Call::VolumePath)?;
        Ok(self
            .state
            .lock()
            .volumes
            .get(name)
            .and_then(|v| v.path.clone()))
    }

    fn delete_volume(&self, name: &str) -> Result<bool, HvError> {
        self.enter(Call::DeleteVolume)?;
        Ok(self.state.lock().volumes.remove(name).is_some())
    }

    fn define_and_start(&self, xml: &str) -> Result<(), HvError> {
        self.enter(Call::DefineAndStart)?;
        let doc = roxmltree::Document::parse(xml).map_err(|e| HvError::Call {
            node: self.name.clone(),
            message: format!("bad domain XML: {e}"),
        })?;
        let name = text_of(&doc, "name").unwrap_or_default().to_string();
        let vcpus = text_of(&doc, "vcpu")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1);
        let memory_kib = bytes_of(&doc, "memory") >> 10;
        let devices = Arc::new(super::libvirt::parse_domain_devices(xml));
        {
            let mut st = self.state.lock();
            if st.domains.contains_key(&name) {
                return Err(HvError::Call {
                    node: self.name.clone(),
                    message: format!("domain {name} exists already"),
                });
            }
            let uuid = st.new_uuid();
            st.domains.insert(
                name.clone(),
                MemDomain {
                    uuid,
                    state: DomainState::Running,
                    vcpus,
                    memory_kib,
                    devices,
                    snapshots: BTreeMap::new(),
                },
            );
        }
        self.event(&name);
        Ok(())
    }

    fn domain_op(&self, name: &str, op: DomainOp) -> Result<(), HvError> {
        self.enter(Call::DomainOp)?;
        {
            let mut st = self.state.lock();
            let Some(d) = st.domains.get_mut(name) else {
                return Err(self.not_found(format!("domain {name}")));
            };
            let wrong = |message: &str| HvError::WrongState {
                node: self.name.clone(),
                message: format!("domain {name} {message}"),
            };
            d.state = match (op, d.state.is_active()) {
                (DomainOp::Start, false) => DomainState::Running,
                (DomainOp::Start, true) => return Err(wrong("is already running")),
                (DomainOp::Shutdown | DomainOp::Destroy, true) => DomainState::Shutoff,
                (DomainOp::Reboot, true) => DomainState::Running,
                (DomainOp::Resume, true) if d.state == DomainState::Paused => DomainState::Running,
                (DomainOp::Resume, true) => return Err(wrong("is not paused")),
                (_, false) => return Err(wrong("is not running")),
            };
        }
        self.event(name);
        Ok(())
    }

    fn remove_domain(&self, name: &str) -> Result<bool, HvError> {
        self.enter(Call::RemoveDomain)?;
        let removed = {
            let mut st = self.state.lock();
            match st.domains.get(name) {
                None => return Ok(false),
                Some(d) if d.devices.kvmfs_owner.is_none() => {
                    return Err(HvError::Foreign {
                        node: self.name.clone(),
                        what: format!("domain {name}"),
                    });
                }
                Some(_) => st.domains.remove(name).is_some(),
            }
        };
        self.event(name);
        Ok(removed)
    }

    fn create_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        self.enter(Call::CreateSnapshot)?;
        {
            let mut st = self.state.lock();
            let Some(d) = st.domains.get_mut(name) else {
                return Err(self.not_found(format!("domain {name}")));
            };
            if d.snapshots.contains_key(snapshot) {
                return Err(HvError::WrongState {
                    node: self.name.clone(),
                    message: format!("domain {name} has a snapshot {snapshot} already"),
                });
            }
            if !d.state.is_active() && network_disk(d).is_some() {
                return Err(self.call_err(
                    "internal error: internal inactive snapshots are not supported on \
                     'network' disks using 'nfs' protocol",
                ));
            }
            let mut parent = None;
            for s in d.snapshots.values_mut() {
                if s.current {
                    s.current = false;
                    parent = Some(s.name.clone());
                }
            }
            let created_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
            d.snapshots.insert(
                snapshot.to_string(),
                SnapshotProbe {
                    name: snapshot.to_string(),
                    created_at,
                    state: d.state,
                    parent,
                    current: true,
                    size_bytes: None,
                },
            );
        }
        self.event(name);
        Ok(())
    }

    fn list_snapshots(&self, name: &str) -> Result<Vec<SnapshotProbe>, HvError> {
        self.enter(Call::ListSnapshots)?;
        self.with_domain(name, |d| d.snapshots.values().cloned().collect())
    }

    fn revert_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        self.enter(Call::RevertSnapshot)?;
        {
            let mut st = self.state.lock();
            let Some(d) = st.domains.get_mut(name) else {
                return Err(self.not_found(format!("domain {name}")));
            };
            let Some(state) = d.snapshots.get(snapshot).map(|s| s.state) else {
                return Err(self.not_found(format!("snapshot {snapshot} of domain {name}")));
            };
            if !state.is_active()
                && let Some(disk) = network_disk(d)
            {
                // As libvirt does: the running domain is stopped first, then the revert
                // of its network disk fails.
                d.state = DomainState::Shutoff;
                drop(st);
                self.event(name);
                return Err(self.call_err(&format!(
                    "Requested operation is not valid: can't manipulate inactive snapshots \
                     of disk '{disk}'"
                )));
            }
            for s in d.snapshots.values_mut() {
                s.current = s.name == snapshot;
            }
            d.state = state;
        }
        self.event(name);
        Ok(())
    }

    fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<bool, HvError> {
        self.enter(Call::DeleteSnapshot)?;
        {
            let mut st = self.state.lock();
            let Some(d) = st.domains.get_mut(name) else {
                return Err(self.not_found(format!("domain {name}")));
            };
            if !d.state.is_active()
                && d.snapshots.contains_key(snapshot)
                && let Some(disk) = network_disk(d)
            {
                return Err(self.call_err(&format!(
                    "Requested operation is not valid: can't manipulate inactive snapshots \
                     of disk '{disk}'"
                )));
            }
            let Some(gone) = d.snapshots.remove(snapshot) else {
                return Ok(false);
            };
            for s in d.snapshots.values_mut() {
                if s.parent.as_deref() == Some(snapshot) {
                    s.parent = gone.parent.clone();
                }
            }
            if gone.current
                && let Some(p) = gone.parent.as_ref().and_then(|p| d.snapshots.get_mut(p))
            {
                p.current = true;
            }
        }
        self.event(name);
        Ok(true)
    }

    fn saved_snapshots(&self, name: &str) -> Result<Vec<SavedSnapshot>, HvError> {
        self.enter(Call::ListSnapshots)?;
        let xml = |s: &SnapshotProbe| {
            format!(
                "<domainsnapshot><name>{}</name><state>{}</state>\
                 <creationTime>{}</creationTime>{}</domainsnapshot>",
                s.name,
                s.state.word(),
                s.created_at,
                s.parent
                    .as_ref()
                    .map(|p| format!("<parent><name>{p}</name></parent>"))
                    .unwrap_or_default()
            )
        };
        self.with_domain(name, |d| {
            // Parents first: creation order.
            let mut all: Vec<&SnapshotProbe> = d.snapshots.values().collect();
            all.sort_by_key(|s| s.created_at);
            all.into_iter()
                .map(|s| SavedSnapshot {
                    name: s.name.clone(),
                    xml: xml(s),
                    current: s.current,
                })
                .collect()
        })
    }

    fn forget_snapshots(&self, name: &str) -> Result<(), HvError> {
        self.enter(Call::DeleteSnapshot)?;
        self.with_domain(name, |d| d.snapshots.clear())
    }

    fn redefine_snapshots(&self, name: &str, snapshots: &[SavedSnapshot]) -> Result<(), HvError> {
        self.enter(Call::CreateSnapshot)?;
        self.with_domain(name, |d| {
            for s in snapshots {
                if d.snapshots.contains_key(&s.name) {
                    continue;
                }
                let (state, created_at, parent) = super::libvirt::parse_snapshot_xml(&s.xml);
                if s.current {
                    for o in d.snapshots.values_mut() {
                        o.current = false;
                    }
                }
                d.snapshots.insert(
                    s.name.clone(),
                    SnapshotProbe {
                        name: s.name.clone(),
                        created_at,
                        state,
                        parent,
                        current: s.current,
                        size_bytes: None,
                    },
                );
            }
        })?;
        self.event(name);
        Ok(())
    }

    fn migrate(&self, name: &str, dest: &dyn NodeBackend, how: MigrateHow) -> Result<(), HvError> {
        self.enter(Call::Migrate)?;
        let Some(dest) = dest.as_any().downcast_ref::<MemNode>() else {
            return Err(HvError::Call {
                node: self.name.clone(),
                message: "cannot migrate to a node of another kind".into(),
            });
        };
        dest.enter(Call::Migrate)?;
        let delay = *self.migrate_delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let d = {
            let st = self.state.lock();
            let d = st
                .domains
                .get(name)
                .ok_or_else(|| self.not_found(format!("domain {name}")))?;
            if !d.snapshots.is_empty() {
                // As libvirt: the metadata must go first.
                return Err(HvError::Call {
                    node: self.name.clone(),
                    message: format!("cannot migrate domain with {} snapshots", d.snapshots.len()),
                });
            }
            if how.live != d.state.is_active() {
                return Err(HvError::WrongState {
                    node: self.name.clone(),
                    message: format!("domain {name} is {}", d.state.word()),
                });
            }
            d.clone()
        };
        {
            let mut dst = dest.state.lock();
            if dst.domains.contains_key(name) {
                return Err(HvError::Call {
                    node: dest.name.clone(),
                    message: format!("domain {name} already exists"),
                });
            }
            dst.domains.insert(name.to_string(), d);
        }
        self.state.lock().domains.remove(name);
        self.event(name);
        dest.event(name);
        Ok(())
    }

    fn abort_job(&self, _name: &str) -> Result<(), HvError> {
        self.enter(Call::Migrate)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn reset(&self) {}
}

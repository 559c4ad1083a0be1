//! `NodeBackend` on libvirt through the `virt` crate. One long-lived connection per node:
//! the test driver keeps a node's state inside its connection, and real daemons are spared a
//! handshake per poll. Domain device lists come from the domain XML, which is fetched only
//! when a domain is first seen or its definition may have changed.
//!
//! Domain lifecycle events: `start_event_loop` runs libvirt's default event loop on a thread
//! of its own (the `virt` crate has no safe wrapper, so this uses `virt::sys`), and every
//! connection a watched node opens registers a lifecycle callback that hands the domain's
//! name to the node's `EventSink`; the callback is deregistered when the connection is
//! dropped. Every `unsafe` call into libvirt is in `ffi`.

mod ffi;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

pub use ffi::start_event_loop;
use ffi::{
    all_domain_stats, close, node_cpu_times, node_free_memory, raw_state, register_close,
    register_events, uuid_of,
};

use super::{
    DiskInfo, DomainDevices, DomainOp, DomainProbe, DomainState, EventSink, HvError, InterfaceInfo,
    MigrateHow, NetworkProbe, NodeBackend, NodeProbe, ProbeScope, SavedSnapshot, SnapshotProbe,
    Snapshots, VolumeProbe, Volumes,
};

/// What is read once per domain definition: at the domain id it was read at, the device
/// list, and (vCPUs, maximum memory, memory) for drivers whose bulk stats lack them.
#[derive(Clone)]
struct Cached {
    id: Option<u32>,
    devices: Arc<DomainDevices>,
    sizes: (u32, u64, u64),
}

/// A pool volume's capacity and path as last read, and when.
#[derive(Clone)]
struct VolumeDetails {
    capacity: u64,
    path: Option<String>,
    read_at: Instant,
}

/// What `probe_volumes` knows of the pool between listings.
#[derive(Default)]
struct VolumeCache {
    details: HashMap<String, VolumeDetails>,
    /// The last listing returned; returned again while nothing in it changed.
    last: Option<Volumes>,
}

/// Reads a volume's capacity and path; `None` if it is gone (deleted since it was listed or
/// looked up).
fn volume_details(
    v: &virt::storage_vol::StorageVol,
) -> Result<Option<VolumeDetails>, virt::error::Error> {
    match v.info() {
        Ok(info) => Ok(Some(VolumeDetails {
            capacity: info.capacity,
            path: v.path().ok(),
            read_at: Instant::now(),
        })),
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL => Ok(None),
        Err(e) => Err(e),
    }
}

/// A volume's details are read again once they are this old...
const VOLUME_DETAILS_TTL: Duration = Duration::from_secs(60);
/// ...at most this many per pool listing, so a pool of thousands of volumes costs one
/// listing call per poll, not two calls per volume (the listing itself names them all).
const VOLUME_REFRESH_PER_LISTING: usize = 64;

/// A domain's snapshots as last read, and when.
#[derive(Clone)]
struct SnapshotsRead {
    list: Snapshots,
    read_at: Instant,
}

/// A domain's snapshots are read again in whole listings once they are this old (an
/// action through kvmfs and a domain event re-read them at once)...
const SNAPSHOTS_TTL: Duration = Duration::from_secs(60);
/// ...at most this many domains' per listing, so a listing stays one call per node plus a
/// bounded few.
const SNAPSHOT_REFRESH_PER_LISTING: usize = 64;

/// A domain's snapshots; a driver without snapshots has none.
fn all_snapshots(
    d: &Domain,
) -> Result<Vec<virt::domain_snapshot::DomainSnapshot>, virt::error::Error> {
    match d.list_all_snapshots(0) {
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => Ok(Vec::new()),
        other => other,
    }
}

/// Reads a domain's snapshots, in name order.
fn read_snapshots(d: &Domain) -> Result<Vec<SnapshotProbe>, virt::error::Error> {
    let all = all_snapshots(d)?;
    let mut out = Vec::with_capacity(all.len());
    for s in all {
        let name = s.name()?;
        let (state, created_at, parent) = parse_snapshot_xml(&s.xml_desc(0)?);
        out.push(SnapshotProbe {
            name,
            created_at,
            state,
            parent,
            current: s.is_current(0).unwrap_or(false),
            size_bytes: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The state, creation time and parent's name in a snapshot's XML.
pub fn parse_snapshot_xml(xml: &str) -> (DomainState, i64, Option<String>) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return (DomainState::NoState, 0, None);
    };
    let root = doc.root_element();
    let child = |tag: &str| root.children().find(|n| n.has_tag_name(tag));
    let state = match child("state").and_then(|n| n.text()).unwrap_or("") {
        "running" => DomainState::Running,
        "blocked" => DomainState::Blocked,
        "paused" => DomainState::Paused,
        "shutdown" => DomainState::Shutdown,
        "shutoff" | "disk-snapshot" => DomainState::Shutoff,
        "crashed" => DomainState::Crashed,
        "pmsuspended" => DomainState::PmSuspended,
        _ => DomainState::NoState,
    };
    let created = child("creationTime")
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let parent = child("parent")
        .and_then(|p| p.children().find(|n| n.has_tag_name("name")))
        .and_then(|n| n.text())
        .map(str::to_string);
    (state, created, parent)
}

/// An open connection and the id of its event callback, if one is registered.
struct Conn {
    c: Connect,
    /// The lifecycle callback registered on it.
    callback: Option<i32>,
    /// Set by the connection's close callback (when registered: `close_callback`) when
    /// libvirt finds the connection lost.
    lost: Arc<AtomicBool>,
    close_callback: bool,
}

impl Conn {
    /// A new connection, with the lifecycle callback when there is a sink, and then a close
    /// callback, so that a lost connection ends the trust in its events at once.
    fn open(node: &str, c: Connect, sink: Option<EventSink>) -> Conn {
        let mut conn = Conn {
            c,
            callback: None,
            lost: Arc::new(AtomicBool::new(false)),
            close_callback: false,
        };
        if let Some(sink) = sink {
            conn.watch(node, sink);
        }
        conn
    }

    /// Registers the lifecycle callback (and then the close callback) on a connection that
    /// has none; whether it now delivers events.
    fn watch(&mut self, node: &str, sink: EventSink) -> bool {
        if self.callback.is_some() {
            return false;
        }
        self.callback = register_events(node, &self.c, sink);
        if self.callback.is_some() {
            self.close_callback = register_close(&self.c, self.lost.clone());
        }
        self.callback.is_some()
    }

    fn delivers_events(&self) -> bool {
        self.callback.is_some() && !self.lost.load(Ordering::Acquire)
    }
}

/// One KVM node reached through a libvirt URI.
pub struct LibvirtNode {
    name: String,
    uri: String,
    pool: String,
    conn: Mutex<Option<Conn>>,
    /// Where domain events go, once the controller asked for them.
    sink: Mutex<Option<EventSink>>,
    /// Device lists (and sizes) by domain UUID, with the domain id they were read at: a
    /// restarted or redefined domain gets a new id and is read again; an event re-reads it.
    devices: Mutex<HashMap<String, Cached>>,
    /// Snapshots by domain UUID (see `snapshots_of`).
    snapshots: Mutex<HashMap<String, SnapshotsRead>>,
    /// Capacity and path of every volume of the pool, by name, and the last listing built
    /// from them (see `probe_volumes`).
    volumes: Mutex<VolumeCache>,
    /// Whether the driver answers `virConnectGetAllDomainStats`; cleared at its first refusal.
    bulk_stats: AtomicBool,
    /// Connections stored so far that deliver events (see `NodeBackend::events`).
    event_connections: AtomicU64,
    /// The pool's `netfs` source, read with its volumes (`NodeProbe::pool_source`).
    pool_source: Mutex<Option<String>>,
}

/// Silences libvirt's default error printer (it writes every error to stderr); errors are
/// reported through return values and the log instead. Idempotent.
pub fn quiet_libvirt_errors() {
    virt::error::clear_error_callback();
}

impl LibvirtNode {
    pub fn new(name: &str, uri: &str, pool: &str) -> LibvirtNode {
        LibvirtNode {
            name: name.to_string(),
            uri: uri.to_string(),
            pool: pool.to_string(),
            conn: Mutex::new(None),
            sink: Mutex::new(None),
            devices: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            volumes: Mutex::new(VolumeCache::default()),
            bulk_stats: AtomicBool::new(true),
            event_connections: AtomicU64::new(0),
            pool_source: Mutex::new(None),
        }
    }

    /// libvirt's test driver, in this process (`test:///…`) or served by a libvirtd
    /// (`test+unix:///…`): its domains are of type `test` and its volumes take no uploads.
    fn is_test_driver(&self) -> bool {
        self.uri.starts_with("test:") || self.uri.starts_with("test+")
    }

    /// The test driver in this process keeps the node's whole state in the connection: it
    /// must never be dropped and reopened.
    fn state_in_connection(&self) -> bool {
        self.uri.starts_with("test:")
    }

    /// The node's connection, opened on first use. The lock is never held while opening:
    /// a wedged open must not block `reset` or a later attempt. If two opens race, the first
    /// stored wins and the other is dropped, so the test driver never splits its state.
    fn connection(&self) -> Result<Connect, HvError> {
        if let Some(c) = self.conn.lock().as_ref() {
            return Ok(c.c.clone());
        }
        let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connect {
            node: self.name.clone(),
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        let sink = self.sink.lock().clone();
        let new = Conn::open(&self.name, c.clone(), sink);
        let mut guard = self.conn.lock();
        match guard.as_ref() {
            Some(existing) => {
                let kept = existing.c.clone();
                drop(guard);
                close(new);
                Ok(kept)
            }
            None => {
                if new.callback.is_some() {
                    self.event_connections.fetch_add(1, Ordering::AcqRel);
                }
                *guard = Some(new);
                Ok(c)
            }
        }
    }

    fn call_err(&self, e: virt::error::Error) -> HvError {
        HvError::Call {
            node: self.name.clone(),
            message: e.message().to_string(),
        }
    }

    /// Runs `f` on the connection; a failure on a connection that is no longer alive drops
    /// it so the next call reconnects.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, virt::error::Error>,
    ) -> Result<T, HvError> {
        let c = self.connection()?;
        match f(&c) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !self.state_in_connection() && !c.is_alive().unwrap_or(false) {
                    let old = self.conn.lock().take();
                    if let Some(old) = old {
                        std::thread::spawn(move || close(old));
                    }
                }
                Err(self.call_err(e))
            }
        }
    }

    /// Reads one domain with a call per value (and its XML when its definition is new to us),
    /// refreshing what is cached of it. Its snapshots are read now when it is read on its own
    /// (`snapshot_budget` `None`), or as a listing allows (see `snapshots_of`).
    fn probe_domain(
        &self,
        d: &Domain,
        snapshot_budget: Option<&mut usize>,
    ) -> Result<DomainProbe, virt::error::Error> {
        let name = d.name()?;
        let uuid = d.uuid_string()?;
        let info = d.info()?;
        let (state, reason) = raw_state(d)?;
        let id = d.id();
        let sizes = (info.nr_virt_cpu, info.max_mem, info.memory);
        let devices = self.devices_of(d, &uuid, id, sizes)?;
        let mut unlimited = usize::MAX;
        let snapshots = match snapshot_budget {
            Some(budget) => self.snapshots_of(d, &uuid, budget, false)?,
            None => self.snapshots_of(d, &uuid, &mut unlimited, true)?,
        };
        Ok(domain_probe(
            name, uuid, state, reason, sizes, devices, snapshots,
        ))
    }

    /// A domain's snapshots: read now when `fresh` (a domain read on its own: an event, an
    /// action), when first seen, or when older than `SNAPSHOTS_TTL` while `budget` lasts;
    /// otherwise as last read. An unchanged list stays the same `Arc`.
    fn snapshots_of(
        &self,
        d: &Domain,
        uuid: &str,
        budget: &mut usize,
        fresh: bool,
    ) -> Result<Snapshots, virt::error::Error> {
        let cached = self.snapshots.lock().get(uuid).cloned();
        if let Some(c) = &cached
            && !fresh
            && (c.read_at.elapsed() < SNAPSHOTS_TTL || *budget == 0)
        {
            return Ok(c.list.clone());
        }
        if cached.is_some() && !fresh {
            *budget = budget.saturating_sub(1);
        }
        let read = read_snapshots(d)?;
        let list = match cached {
            Some(c) if *c.list == read => c.list,
            _ => Arc::new(read),
        };
        self.snapshots.lock().insert(
            uuid.to_string(),
            SnapshotsRead {
                list: list.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(list)
    }

    /// The cached device list of a domain, read from its XML when its id changed.
    fn devices_of(
        &self,
        d: &Domain,
        uuid: &str,
        id: Option<u32>,
        sizes: (u32, u64, u64),
    ) -> Result<Arc<DomainDevices>, virt::error::Error> {
        let cached = self.devices.lock().get(uuid).cloned();
        let devices = match cached {
            Some(c) if c.id == id && c.sizes == sizes => return Ok(c.devices),
            Some(c) if c.id == id => c.devices,
            _ => Arc::new(parse_domain_devices(&d.xml_desc(0)?)),
        };
        self.devices.lock().insert(
            uuid.to_string(),
            Cached {
                id,
                devices: devices.clone(),
                sizes,
            },
        );
        Ok(devices)
    }

    /// Every domain of the node from one `virConnectGetAllDomainStats` call (one round trip
    /// to a remote daemon, however many domains): state, reason, vCPUs and memory. Where the
    /// driver leaves vCPUs or memory out (libvirt's test driver), they come from what was
    /// read when the domain was first seen, restarted, redefined or reported by an event.
    /// `None` when the driver has no bulk stats.
    fn probe_bulk(&self, c: &Connect) -> Result<Option<Vec<DomainProbe>>, virt::error::Error> {
        if !self.bulk_stats.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let records = match all_domain_stats(c) {
            Ok(r) => r,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => {
                self.bulk_stats.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(records.n);
        let mut budget = SNAPSHOT_REFRESH_PER_LISTING;
        for (d, st) in records.iter() {
            let name = d.name()?;
            let uuid = uuid_of(&d)?;
            let id = d.id();
            let cached = self.devices.lock().get(&uuid).cloned();
            let sizes = match (st.vcpus, st.max_mem_kib, cached) {
                (Some(v), Some(m), _) => (v, m, st.mem_kib.unwrap_or(m)),
                (_, _, Some(c)) if c.id == id => c.sizes,
                _ => match d.info() {
                    Ok(i) => (i.nr_virt_cpu, i.max_mem, i.memory),
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => continue,
                    Err(e) => return Err(e),
                },
            };
            let devices = match self.devices_of(&d, &uuid, id, sizes) {
                Ok(devs) => devs,
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => continue,
                Err(e) => return Err(e),
            };
            let snapshots = match self.snapshots_of(&d, &uuid, &mut budget, false) {
                Ok(s) => s,
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => continue,
                Err(e) => return Err(e),
            };
            out.push(domain_probe(
                name, uuid, st.state, st.reason, sizes, devices, snapshots,
            ));
        }
        Ok(Some(out))
    }

    fn probe_networks(&self, c: &Connect) -> Result<Vec<NetworkProbe>, virt::error::Error> {
        let mut out = Vec::new();
        for n in c.list_all_networks(0)? {
            let xml = n.xml_desc(0)?;
            let (forward, addresses) = parse_network_xml(&xml);
            out.push(NetworkProbe {
                name: n.name()?,
                bridge: n.bridge_name().ok().filter(|b| !b.is_empty()),
                active: n.is_active()?,
                autostart: n.autostart().unwrap_or(false),
                persistent: n.is_persistent().unwrap_or(false),
                forward,
                addresses,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The pool's volumes, from one listing call. A volume's capacity and path (a call each
    /// on a remote node) are read when it is first seen, and again once they are
    /// `VOLUME_DETAILS_TTL` old, at most `VOLUME_REFRESH_PER_LISTING` of those per listing.
    /// When nothing changed, the previous listing's `Arc` is returned.
    fn probe_volumes(&self, c: &Connect) -> Result<Option<Volumes>, virt::error::Error> {
        let pool = match c.lookup_storage_pool_by_name(&self.pool) {
            Ok(p) => p,
            Err(_) => {
                *self.pool_source.lock() = None;
                return Ok(None);
            }
        };
        *self.pool_source.lock() = pool.xml_desc(0).ok().and_then(|x| netfs_source(&x));
        let mut listed = Vec::new();
        for v in pool.list_all_volumes(0)? {
            listed.push((v.name()?, v));
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        // Which volumes need their details read; no lock is held across calls to the node,
        // so a wedged call cannot block the others.
        let mut due: Vec<usize> = Vec::new();
        {
            let cache = self.volumes.lock();
            let mut refreshes = 0;
            for (i, (name, _)) in listed.iter().enumerate() {
                match cache.details.get(name) {
                    Some(d) if d.read_at.elapsed() < VOLUME_DETAILS_TTL => {}
                    Some(_) if refreshes >= VOLUME_REFRESH_PER_LISTING => {}
                    Some(_) => {
                        refreshes += 1;
                        due.push(i);
                    }
                    None => due.push(i),
                }
            }
        }
        let mut read: HashMap<usize, Option<VolumeDetails>> = HashMap::with_capacity(due.len());
        for i in due {
            read.insert(i, volume_details(&listed[i].1)?);
        }
        let mut cache = self.volumes.lock();
        let mut out = Vec::with_capacity(listed.len());
        for (i, (name, _)) in listed.into_iter().enumerate() {
            let d = match read.remove(&i) {
                Some(Some(d)) => {
                    cache.details.insert(name.clone(), d.clone());
                    d
                }
                Some(None) => continue,
                None => match cache.details.get(&name) {
                    Some(d) => d.clone(),
                    // Dropped meanwhile (a delete through kvmfs): read at the next listing.
                    None => continue,
                },
            };
            out.push(VolumeProbe {
                name,
                capacity_bytes: d.capacity,
                path: d.path,
            });
        }
        if cache.details.len() > out.len() {
            let names: std::collections::HashSet<&str> =
                out.iter().map(|v| v.name.as_str()).collect();
            cache.details.retain(|n, _| names.contains(n.as_str()));
        }
        let volumes = match &cache.last {
            Some(last) if **last == out => last.clone(),
            _ => Arc::new(out),
        };
        cache.last = Some(volumes.clone());
        Ok(Some(volumes))
    }
}

impl LibvirtNode {
    /// libvirt's test driver has no migration: its domains move by definition (the XML
    /// defined on `dest`, started there if it ran here, then removed here), which is what
    /// a migration leaves behind, without the memory copy there is nothing to make.
    fn move_definition(
        &self,
        name: &str,
        dest: &LibvirtNode,
        how: MigrateHow,
    ) -> Result<(), HvError> {
        let xml = self.with_conn(|c| {
            c.lookup_domain_by_name(name)?
                .xml_desc(sys::VIR_DOMAIN_XML_SECURE | sys::VIR_DOMAIN_XML_INACTIVE)
        })?;
        dest.with_conn(|c| {
            let d = c.define_domain_xml(&xml)?;
            if how.live
                && let Err(e) = d.create()
            {
                let _ = d.undefine();
                return Err(e);
            }
            Ok(())
        })?;
        let removed = self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            let active = d.is_active()?;
            d.undefine()?;
            if active {
                match d.destroy() {
                    Ok(()) => {}
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        if let Err(e) = removed {
            // Back as it was, if it still is here: the domain here only.
            if self
                .probe_named(&[name.to_string()])
                .is_ok_and(|f| f.iter().any(|(_, d)| d.is_some()))
            {
                let _ = dest.remove_domain(name);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// `HOST:/dir` of a `netfs` pool's XML (`<pool type='netfs'><source><host name=…/><dir
/// path=…/>`); `None` for any other pool.
pub fn netfs_source(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if root.attribute("type") != Some("netfs") {
        return None;
    }
    let source = root.children().find(|n| n.has_tag_name("source"))?;
    let attr = |tag: &str, a: &str| {
        source
            .children()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.attribute(a))
    };
    let (host, dir) = (attr("host", "name")?, attr("dir", "path")?);
    Some(format!("{host}:{}", dir.trim_end_matches('/')))
}

/// Snapshots ordered so that each comes after its parent (what redefining needs).
fn parents_first(mut left: Vec<SavedSnapshot>) -> Vec<SavedSnapshot> {
    let mut out: Vec<SavedSnapshot> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            let (_, _, parent) = parse_snapshot_xml(&left[i].xml);
            let ready = parent.is_none_or(|p| {
                out.iter().any(|o| o.name == p) || !left.iter().any(|l| l.name == p)
            });
            if ready {
                out.push(left.remove(i));
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            // A cycle cannot come from libvirt; keep whatever is left as it came.
            out.append(&mut left);
        }
    }
    out
}

/// The URI QEMU's migration stream goes to for a node reached at `uri`: `tcp://HOST` for a
/// remote URI (`qemu+tcp://HOST/system`, `qemu+ssh://user@HOST:22/system`), or `None`
/// (libvirt's own choice) for a local one.
fn migration_uri(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => host.split(':').next()?.to_string(),
    };
    (!host.is_empty()).then(|| format!("tcp://{host}"))
}

impl LibvirtNode {
    /// Every domain of the node, sorted by name; forgets what was cached of domains gone.
    fn probe_all_domains(&self, c: &Connect) -> Result<Vec<DomainProbe>, virt::error::Error> {
        let mut probes = match self.probe_bulk(c)? {
            Some(p) => p,
            None => {
                let domains = c.list_all_domains(0)?;
                let mut probes = Vec::with_capacity(domains.len());
                let mut budget = SNAPSHOT_REFRESH_PER_LISTING;
                for d in &domains {
                    match self.probe_domain(d, Some(&mut budget)) {
                        Ok(p) => probes.push(p),
                        // A domain undefined between the listing and this call is gone.
                        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {}
                        Err(e) => return Err(e),
                    }
                }
                probes
            }
        };
        probes.sort_by(|a, b| a.name.cmp(&b.name));
        let live: std::collections::HashSet<&str> =
            probes.iter().map(|p| p.uuid.as_str()).collect();
        self.devices
            .lock()
            .retain(|uuid, _| live.contains(uuid.as_str()));
        self.snapshots
            .lock()
            .retain(|uuid, _| live.contains(uuid.as_str()));
        Ok(probes)
    }
}

impl NodeBackend for LibvirtNode {
    fn probe(&self, scope: ProbeScope) -> Result<NodeProbe, HvError> {
        self.with_conn(|c| {
            let info = c.node_info()?;
            let hostname = c.hostname().ok();
            let probes = if scope.domains {
                self.probe_all_domains(c)?
            } else {
                Vec::new()
            };
            Ok(NodeProbe {
                hostname,
                cpus: info.cpus,
                mhz: info.mhz,
                model: info.model,
                memory_kib: info.memory,
                free_memory_kib: node_free_memory(c),
                cpu_times: node_cpu_times(c),
                networks: self.probe_networks(c)?,
                volumes: if scope.pool {
                    self.probe_volumes(c)?
                } else {
                    None
                },
                pool_source: self.pool_source.lock().clone(),
                domains: probes,
            })
        })
    }

    fn domain_type(&self, configured: &str) -> String {
        if self.is_test_driver() {
            "test".into()
        } else {
            configured.to_string()
        }
    }

    fn create_volume(&self, xml: &str) -> Result<String, HvError> {
        self.with_conn(|c| {
            let pool = c.lookup_storage_pool_by_name(&self.pool)?;
            let vol = virt::storage_vol::StorageVol::create_xml(&pool, xml, 0)?;
            vol.path()
        })
    }

    fn upload_volume(&self, name: &str, data: &[u8]) -> Result<(), HvError> {
        let r = self.with_conn(|c| {
            let pool = c.lookup_storage_pool_by_name(&self.pool)?;
            let vol = pool.lookup_storage_vol_by_name(name)?;
            let stream = virt::stream::Stream::new(c, 0)?;
            vol.upload(&stream, 0, data.len() as u64, 0)?;
            let mut sent = 0;
            while sent < data.len() {
                let n = stream.send(&data[sent..])?;
                sent += usize::try_from(n).unwrap_or(0).max(1);
            }
            stream.finish()
        });
        match r {
            Err(HvError::Call { message, .. })
                if self.is_test_driver() && message.contains("not supported") =>
            {
                tracing::debug!(node = %self.name, volume = name, "test driver: upload skipped");
                Ok(())
            }
            other => other,
        }
    }

    fn volume_path(&self, name: &str) -> Result<Option<String>, HvError> {
        self.with_conn(|c| {
            let pool = c.lookup_storage_pool_by_name(&self.pool)?;
            match pool.lookup_storage_vol_by_name(name) {
                Ok(v) => v.path().map(Some),
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn delete_volume(&self, name: &str) -> Result<bool, HvError> {
        self.with_conn(|c| {
            let pool = c.lookup_storage_pool_by_name(&self.pool)?;
            // A volume made again under this name is read anew at the next listing.
            self.volumes.lock().details.remove(name);
            let absent = |e: &virt::error::Error| e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL;
            match pool.lookup_storage_vol_by_name(name) {
                Ok(v) => v.delete(0).map(|_| true),
                Err(e) if absent(&e) => {
                    // A shared pool lists a file another node made only once refreshed.
                    if pool.refresh(0).is_err() {
                        return Ok(false);
                    }
                    match pool.lookup_storage_vol_by_name(name) {
                        Ok(v) => v.delete(0).map(|_| true),
                        Err(e) if absent(&e) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn define_and_start(&self, xml: &str) -> Result<(), HvError> {
        self.with_conn(|c| {
            let d = c.define_domain_xml(xml)?;
            if let Err(e) = d.create() {
                let _ = d.undefine();
                return Err(e);
            }
            Ok(())
        })
    }

    fn domain_op(&self, name: &str, op: DomainOp) -> Result<(), HvError> {
        let r = self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            match op {
                DomainOp::Start => d.create(),
                DomainOp::Shutdown => d.shutdown(),
                DomainOp::Destroy => d.destroy(),
                DomainOp::Reboot => d.reboot(0),
                DomainOp::Resume => d.resume(),
            }
        });
        match r {
            Err(HvError::Call { node, message })
                if message.contains("not running") || message.contains("already running") =>
            {
                Err(HvError::WrongState { node, message })
            }
            other => other,
        }
    }

    fn remove_domain(&self, name: &str) -> Result<bool, HvError> {
        enum Outcome {
            Absent,
            Removed,
            Foreign,
        }
        let r = self.with_conn(|c| {
            let d = match c.lookup_domain_by_name(name) {
                Ok(d) => d,
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {
                    return Ok(Outcome::Absent);
                }
                Err(e) => return Err(e),
            };
            if parse_domain_devices(&d.xml_desc(0)?).kvmfs_owner.is_none() {
                return Ok(Outcome::Foreign);
            }
            // Undefined first, then stopped: a `start` racing this (another mount's `ctl`)
            // then finds no domain, or a transient running one that the destroy below
            // removes. The other order left a window where a start brought the domain back
            // between the destroy and the undefine, which then left it running, transient,
            // with nothing to delete it.
            // With its snapshots' metadata: libvirt refuses to undefine a stopped domain
            // that has snapshots, and leaves their metadata behind for a running one.
            let gone = |e: &virt::error::Error| e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN;
            match d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA) {
                Ok(()) => {}
                Err(e) if gone(&e) => return Ok(Outcome::Removed),
                Err(e) => return Err(e),
            }
            match d.is_active() {
                Ok(true) => match d.destroy() {
                    Ok(()) => Ok(Outcome::Removed),
                    Err(e) if gone(&e) => Ok(Outcome::Removed),
                    Err(_) if d.is_active().is_ok_and(|a| !a) => Ok(Outcome::Removed),
                    Err(e) => Err(e),
                },
                Ok(false) => Ok(Outcome::Removed),
                Err(e) if gone(&e) => Ok(Outcome::Removed),
                Err(e) => Err(e),
            }
        })?;
        match r {
            Outcome::Absent => Ok(false),
            Outcome::Removed => Ok(true),
            Outcome::Foreign => Err(HvError::Foreign {
                node: self.name.clone(),
                what: format!("domain {name}"),
            }),
        }
    }

    fn create_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        let xml = format!(
            "<domainsnapshot><name>{}</name></domainsnapshot>",
            super::xml::xml_escape(snapshot)
        );
        let r = self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            d.create_snapshot_xml(&xml, 0).map(|_| ())
        });
        match r {
            Err(HvError::Call { node, message }) if message.contains("already exists") => {
                Err(HvError::WrongState { node, message })
            }
            other => other,
        }
    }

    fn list_snapshots(&self, name: &str) -> Result<Vec<SnapshotProbe>, HvError> {
        self.with_conn(|c| read_snapshots(&c.lookup_domain_by_name(name)?))
    }

    fn revert_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        let r = self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            match Domain::lookup_snapshot_by_name(&d, snapshot, 0) {
                Ok(s) => s.revert(0).map(|()| true),
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        if r {
            Ok(())
        } else {
            Err(HvError::NotFound {
                node: self.name.clone(),
                what: format!("snapshot {snapshot} of domain {name}"),
            })
        }
    }

    fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<bool, HvError> {
        self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            match Domain::lookup_snapshot_by_name(&d, snapshot, 0) {
                Ok(s) => s.delete(0).map(|()| true),
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn reset(&self) {
        if self.state_in_connection() {
            return;
        }
        let old = self.conn.lock().take();
        if let Some(c) = old {
            // Closing a remote connection is an RPC, which a wedged server never answers:
            // close it where nobody waits for it.
            std::thread::spawn(move || close(c));
        }
    }

    fn probe_named(&self, names: &[String]) -> Result<Vec<(String, Option<DomainProbe>)>, HvError> {
        self.with_conn(|c| {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let probe = match c.lookup_domain_by_name(name) {
                    Ok(d) => match self.probe_domain(&d, None) {
                        Ok(p) => Some(p),
                        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => None,
                        Err(e) => return Err(e),
                    },
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => None,
                    Err(e) => return Err(e),
                };
                out.push((name.clone(), probe));
            }
            Ok(out)
        })
    }

    fn probe_pool(&self) -> Result<Option<Volumes>, HvError> {
        self.with_conn(|c| self.probe_volumes(c))
    }

    fn probe_volumes_named(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Option<VolumeProbe>)>, HvError> {
        self.with_conn(|c| {
            let Ok(pool) = c.lookup_storage_pool_by_name(&self.pool) else {
                return Ok(names.iter().map(|n| (n.clone(), None)).collect());
            };
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let found = match pool.lookup_storage_vol_by_name(name) {
                    Ok(v) => volume_details(&v)?,
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL => None,
                    Err(e) => return Err(e),
                };
                let mut cache = self.volumes.lock();
                match &found {
                    Some(d) => cache.details.insert(name.clone(), d.clone()),
                    None => cache.details.remove(name),
                };
                out.push((
                    name.clone(),
                    found.map(|d| VolumeProbe {
                        name: name.clone(),
                        capacity_bytes: d.capacity,
                        path: d.path,
                    }),
                ));
            }
            Ok(out)
        })
    }

    fn watch(&self, sink: EventSink) {
        if !start_event_loop() {
            return;
        }
        *self.sink.lock() = Some(sink.clone());
        // A connection opened before this call gets its callbacks now.
        let mut guard = self.conn.lock();
        if let Some(conn) = guard.as_mut()
            && conn.watch(&self.name, sink)
        {
            self.event_connections.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn events(&self) -> Option<u64> {
        let guard = self.conn.lock();
        let conn = guard.as_ref()?;
        conn.delivers_events()
            .then(|| self.event_connections.load(Ordering::Acquire))
    }

    fn saved_snapshots(&self, name: &str) -> Result<Vec<SavedSnapshot>, HvError> {
        self.with_conn(|c| {
            let all = all_snapshots(&c.lookup_domain_by_name(name)?)?;
            let mut saved = Vec::with_capacity(all.len());
            for s in all {
                saved.push(SavedSnapshot {
                    name: s.name()?,
                    xml: s.xml_desc(sys::VIR_DOMAIN_SNAPSHOT_XML_SECURE)?,
                    current: s.is_current(0).unwrap_or(false),
                });
            }
            Ok(parents_first(saved))
        })
    }

    fn forget_snapshots(&self, name: &str) -> Result<(), HvError> {
        self.with_conn(|c| {
            let all = all_snapshots(&c.lookup_domain_by_name(name)?)?;
            // The test driver's snapshots are metadata only, and it takes no flags.
            let flags = if self.is_test_driver() {
                0
            } else {
                sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
            };
            for s in all {
                match s.delete(flags) {
                    Ok(()) => {}
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN_SNAPSHOT => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    fn redefine_snapshots(&self, name: &str, snapshots: &[SavedSnapshot]) -> Result<(), HvError> {
        self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            for s in snapshots {
                if Domain::lookup_snapshot_by_name(&d, &s.name, 0).is_ok() {
                    continue;
                }
                let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
                if s.current {
                    flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
                }
                d.create_snapshot_xml(&s.xml, flags)?;
            }
            Ok(())
        })
    }

    fn migrate(&self, name: &str, dest: &dyn NodeBackend, how: MigrateHow) -> Result<(), HvError> {
        let Some(dest) = dest.as_any().downcast_ref::<LibvirtNode>() else {
            return Err(HvError::Call {
                node: self.name.clone(),
                message: "cannot migrate to a node of another kind".into(),
            });
        };
        if self.is_test_driver() || dest.is_test_driver() {
            return self.move_definition(name, dest, how);
        }
        let dconn = dest.connection()?;
        let mut flags = sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        let mut params = virt::domain::MigrateParameters::default();
        if how.live {
            flags |= sys::VIR_MIGRATE_LIVE;
            // QEMU's migration stream goes to the address kvmfs reaches the node at.
            params.uri = migration_uri(&dest.uri);
        } else {
            flags |= sys::VIR_MIGRATE_OFFLINE;
        }
        if how.declared_shared {
            flags |= sys::VIR_MIGRATE_UNSAFE;
        }
        self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            d.migrate3(&dconn, params, flags).map(|_| ())
        })
    }

    fn abort_job(&self, name: &str) -> Result<(), HvError> {
        self.with_conn(|c| {
            let d = c.lookup_domain_by_name(name)?;
            match ffi::abort_job(&d) {
                Ok(()) => Ok(()),
                // No job (it ended meanwhile), or a driver without jobs.
                Err(e)
                    if e.code().to_raw() == sys::VIR_ERR_OPERATION_INVALID
                        || e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn domain_probe(
    name: String,
    uuid: String,
    state: i32,
    reason: i32,
    sizes: (u32, u64, u64),
    devices: Arc<DomainDevices>,
    snapshots: Snapshots,
) -> DomainProbe {
    let state = DomainState::from_raw(state);
    DomainProbe {
        name,
        uuid,
        state,
        reason: state.reason_word(reason),
        vcpus: sizes.0,
        max_memory_kib: sizes.1,
        memory_kib: sizes.2,
        devices,
        snapshots,
    }
}

/// Disks and network interfaces of a domain XML. A malformed document yields no devices
/// rather than an error: the listing must not fail because one domain is odd.
pub fn parse_domain_devices(xml: &str) -> DomainDevices {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return DomainDevices::default();
    };
    let mut out = DomainDevices {
        kvmfs_owner: doc
            .descendants()
            .find(|n| n.tag_name().namespace() == Some(super::xml::METADATA_NS))
            .map(|n| {
                n.attribute("owner")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0)
            }),
        ..DomainDevices::default()
    };
    let Some(devices) = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("devices"))
    else {
        return out;
    };
    for dev in devices.children().filter(|n| n.is_element()) {
        let child = |tag: &str| dev.children().find(|n| n.has_tag_name(tag));
        if dev.has_tag_name("disk") {
            let src = child("source");
            let source = src.and_then(|s| {
                s.attribute("file")
                    .or(s.attribute("dev"))
                    .or(s.attribute("volume"))
                    .or(s.attribute("name"))
                    .map(str::to_string)
            });
            let network = dev.attribute("type") == Some("network");
            out.disks.push(DiskInfo {
                target: child("target")
                    .and_then(|t| t.attribute("dev"))
                    .unwrap_or("")
                    .to_string(),
                device: dev.attribute("device").unwrap_or("disk").to_string(),
                source,
                storage: if network { "shared" } else { "node" },
                protocol: src
                    .filter(|_| network)
                    .and_then(|s| s.attribute("protocol"))
                    .map(str::to_string),
                host: src
                    .and_then(|s| s.children().find(|n| n.has_tag_name("host")))
                    .and_then(|h| h.attribute("name"))
                    .map(str::to_string),
                network,
            });
        } else if dev.has_tag_name("interface") {
            let src = child("source");
            out.interfaces.push(InterfaceInfo {
                mac: child("mac")
                    .and_then(|m| m.attribute("address"))
                    .map(str::to_string),
                network: src.and_then(|s| s.attribute("network")).map(str::to_string),
                bridge: src.and_then(|s| s.attribute("bridge")).map(str::to_string),
            });
        }
    }
    out
}

/// Forward mode and `address/prefix` list of a network XML.
pub fn parse_network_xml(xml: &str) -> (Option<String>, Vec<String>) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return (None, Vec::new());
    };
    let root = doc.root_element();
    let forward = root
        .children()
        .find(|n| n.has_tag_name("forward"))
        .map(|f| f.attribute("mode").unwrap_or("nat").to_string());
    let addresses = root
        .children()
        .filter(|n| n.has_tag_name("ip"))
        .filter_map(|ip| {
            let addr = ip.attribute("address")?;
            let prefix = ip
                .attribute("prefix")
                .map(str::to_string)
                .or_else(|| ip.attribute("netmask").and_then(netmask_prefix))
                .unwrap_or_else(|| "24".into());
            Some(format!("{addr}/{prefix}"))
        })
        .collect();
    (forward, addresses)
}

fn netmask_prefix(mask: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = mask.parse().ok()?;
    Some(u32::from(ip).count_ones().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_devices_from_xml() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><source file='/seed.iso'/><target dev='hdc'/></disk>\
            <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>\
            </devices></domain>";
        let d = parse_domain_devices(xml);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[1].device, "cdrom");
        assert_eq!(d.disks[0].source.as_deref(), Some("/a.qcow2"));
        assert_eq!(d.interfaces[0].network.as_deref(), Some("default"));
        assert_eq!(parse_domain_devices("<not xml"), DomainDevices::default());
    }

    #[test]
    fn uuids_read_as_libvirt_writes_them() {
        quiet_libvirt_errors();
        let c = Connect::open(Some("test:///default")).unwrap();
        let d = c.lookup_domain_by_name("test").unwrap();
        assert_eq!(uuid_of(&d).unwrap(), d.uuid_string().unwrap());
    }

    #[test]
    fn snapshots_on_the_test_driver() {
        quiet_libvirt_errors();
        let dir = tempfile::tempdir().unwrap();
        let uri = crate::testnode::SimNode::new(4, 4096)
            .domain("a", 1, 512, true)
            .write(&dir.path().join("n.xml"))
            .unwrap();
        let node = LibvirtNode::new("n", &uri, "default");
        node.create_snapshot("a", "s1").unwrap();
        assert!(matches!(
            node.create_snapshot("a", "s1"),
            Err(HvError::WrongState { .. })
        ));
        node.domain_op("a", DomainOp::Destroy).unwrap();
        node.create_snapshot("a", "s2").unwrap();
        let l = node.list_snapshots("a").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].state, l[0].current), (DomainState::Running, false));
        assert_eq!(l[1].parent.as_deref(), Some("s1"));
        assert_eq!((l[1].state, l[1].current), (DomainState::Shutoff, true));
        assert!(l[0].created_at > 1_700_000_000);
        // A domain read on its own carries its snapshots.
        let p = node.probe_named(&["a".into()]).unwrap();
        assert_eq!(p[0].1.as_ref().unwrap().snapshots.len(), 2);
        node.revert_snapshot("a", "s1").unwrap();
        let p = node.probe_named(&["a".into()]).unwrap();
        assert_eq!(p[0].1.as_ref().unwrap().state, DomainState::Running);
        assert!(matches!(
            node.revert_snapshot("a", "nope"),
            Err(HvError::NotFound { .. })
        ));
        assert!(node.delete_snapshot("a", "s2").unwrap());
        assert!(!node.delete_snapshot("a", "s2").unwrap());
        let names: Vec<String> = node
            .list_snapshots("a")
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["s1"]);
    }

    #[test]
    fn snapshot_xml() {
        let (state, at, parent) = parse_snapshot_xml(
            "<domainsnapshot><name>s2</name><state>shutoff</state>\
             <parent><name>s1</name></parent><creationTime>1796596217</creationTime>\
             <domain><name>x</name></domain></domainsnapshot>",
        );
        assert_eq!(
            (state, at, parent.as_deref()),
            (DomainState::Shutoff, 1796596217, Some("s1"))
        );
        assert_eq!(parse_snapshot_xml("<bad"), (DomainState::NoState, 0, None));
    }

    #[test]
    fn migration_streams_go_where_the_node_is_reached() {
        assert_eq!(
            migration_uri("qemu+tcp://10.99.0.2/system").as_deref(),
            Some("tcp://10.99.0.2")
        );
        assert_eq!(
            migration_uri("qemu+ssh://root@kvm2:2222/system?keyfile=/k").as_deref(),
            Some("tcp://kvm2")
        );
        assert_eq!(
            migration_uri("qemu+tcp://[fd00::2]:16509/system").as_deref(),
            Some("tcp://[fd00::2]")
        );
        assert_eq!(migration_uri("qemu:///system"), None);
    }

    #[test]
    fn netfs_pools_are_told_by_their_source() {
        let netfs = "<pool type='netfs'><name>cloud</name><source><host name='storage'/>\
                     <dir path='/cloud/'/><format type='nfs'/></source>\
                     <target><path>/remote</path></target></pool>";
        assert_eq!(netfs_source(netfs).as_deref(), Some("storage:/cloud"));
        let dir = "<pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images\
                   </path></target></pool>";
        assert_eq!(netfs_source(dir), None);
        assert_eq!(netfs_source("<pool type='netfs'><source/></pool>"), None);
    }

    #[test]
    fn snapshots_are_redefined_parents_first() {
        let snap = |name: &str, parent: Option<&str>| SavedSnapshot {
            name: name.into(),
            xml: format!(
                "<domainsnapshot><name>{name}</name>{}</domainsnapshot>",
                parent
                    .map(|p| format!("<parent><name>{p}</name></parent>"))
                    .unwrap_or_default()
            ),
            current: false,
        };
        let order: Vec<String> = parents_first(vec![
            snap("c", Some("b")),
            snap("b", Some("a")),
            snap("a", None),
            snap("d", Some("a")),
        ])
        .into_iter()
        .map(|s| s.name)
        .collect();
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert_eq!(order.len(), 4);
        assert!(
            at("a") < at("b") && at("b") < at("c") && at("a") < at("d"),
            "{order:?}"
        );
    }

    #[test]
    fn network_addresses() {
        let (f, a) = parse_network_xml(
            "<network><forward mode='nat'/><ip address='10.0.0.1' netmask='255.255.255.0'/>\
             <ip address='10.1.0.1' prefix='16'/></network>",
        );
        assert_eq!(f.as_deref(), Some("nat"));
        assert_eq!(a, vec!["10.0.0.1/24", "10.1.0.1/16"]);
    }

    #[test]
    fn probes_a_simulated_node() {
        quiet_libvirt_errors();
        let dir = tempfile::tempdir().unwrap();
        let uri = crate::testnode::SimNode::new(4, 4096)
            .domain("a", 2, 1024, true)
            .domain("b", 1, 512, false)
            .write(&dir.path().join("n.xml"))
            .unwrap();
        let node = LibvirtNode::new("n", &uri, "default");
        let p = node.probe(ProbeScope::ALL).unwrap();
        assert_eq!(p.cpus, 4);
        assert_eq!(p.memory_kib, 4096 * 1024);
        assert_eq!(p.domains.len(), 2);
        assert_eq!(p.domains[0].name, "a");
        assert_eq!(p.domains[0].state, DomainState::Running);
        assert_eq!(p.domains[1].state, DomainState::Shutoff);
        assert_eq!(p.domains[0].devices.disks.len(), 1);
        assert_eq!(p.networks[0].name, "default");
        assert_eq!(p.volumes.as_ref().unwrap()[0].name, "debian-12.qcow2");
        assert!(p.cpu_times.is_some());
    }
}

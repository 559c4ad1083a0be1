//! `NodeBackend` on libvirt through the `virt` crate. One long-lived connection per node:
//! the test driver keeps a node's state inside its connection, and real daemons are spared a
//! handshake per poll. Domain device lists come from the domain XML, which is fetched only
//! when a domain is first seen or its definition may have changed.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Arc;

use parking_lot::Mutex;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{
    CpuTimes, DiskInfo, DomainDevices, DomainOp, DomainProbe, DomainState, HvError, InterfaceInfo,
    NetworkProbe, NodeBackend, NodeProbe, VolumeProbe,
};

/// A domain's device list and the domain id it was read at.
type CachedDevices = (Option<u32>, Arc<DomainDevices>);

/// One KVM node reached through a libvirt URI.
pub struct LibvirtNode {
    name: String,
    uri: String,
    pool: String,
    conn: Mutex<Option<Connect>>,
    /// Device lists by domain UUID, with the domain id they were read at: a restarted or
    /// redefined domain gets a new id and is read again.
    devices: Mutex<HashMap<String, CachedDevices>>,
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
            devices: Mutex::new(HashMap::new()),
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
            return Ok(c.clone());
        }
        let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connect {
            node: self.name.clone(),
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        let mut guard = self.conn.lock();
        match guard.as_ref() {
            Some(existing) => Ok(existing.clone()),
            None => {
                *guard = Some(c.clone());
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
                    *self.conn.lock() = None;
                }
                Err(self.call_err(e))
            }
        }
    }

    fn probe_domain(&self, d: &Domain) -> Result<DomainProbe, virt::error::Error> {
        let name = d.name()?;
        let uuid = d.uuid_string()?;
        let info = d.info()?;
        let (state, reason) = raw_state(d)?;
        let id = d.id();
        let cached = self.devices.lock().get(&uuid).cloned();
        let devices = match cached {
            Some((cached_id, devs)) if cached_id == id => devs,
            _ => {
                let devs = Arc::new(parse_domain_devices(&d.xml_desc(0)?));
                self.devices.lock().insert(uuid.clone(), (id, devs.clone()));
                devs
            }
        };
        let state = DomainState::from_raw(state);
        Ok(DomainProbe {
            name,
            uuid,
            state,
            reason: state.reason_word(reason),
            vcpus: info.nr_virt_cpu,
            max_memory_kib: info.max_mem,
            memory_kib: info.memory,
            devices,
        })
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

    fn probe_volumes(&self, c: &Connect) -> Result<Option<Vec<VolumeProbe>>, virt::error::Error> {
        let pool = match c.lookup_storage_pool_by_name(&self.pool) {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        let mut out = Vec::new();
        for v in pool.list_all_volumes(0)? {
            let info = v.info()?;
            out.push(VolumeProbe {
                name: v.name()?,
                capacity_bytes: info.capacity,
                path: v.path().ok(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }
}

impl NodeBackend for LibvirtNode {
    fn probe(&self) -> Result<NodeProbe, HvError> {
        self.with_conn(|c| {
            let info = c.node_info()?;
            let hostname = c.hostname().ok();
            let domains = c.list_all_domains(0)?;
            let mut probes = Vec::with_capacity(domains.len());
            for d in &domains {
                match self.probe_domain(d) {
                    Ok(p) => probes.push(p),
                    // A domain undefined between the listing and this call is simply gone.
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {}
                    Err(e) => return Err(e),
                }
            }
            probes.sort_by(|a, b| a.name.cmp(&b.name));
            let live: std::collections::HashSet<&str> =
                probes.iter().map(|p| p.uuid.as_str()).collect();
            self.devices
                .lock()
                .retain(|uuid, _| live.contains(uuid.as_str()));
            Ok(NodeProbe {
                hostname,
                cpus: info.cpus,
                mhz: info.mhz,
                model: info.model,
                memory_kib: info.memory,
                free_memory_kib: node_free_memory(c),
                cpu_times: node_cpu_times(c),
                networks: self.probe_networks(c)?,
                volumes: self.probe_volumes(c)?,
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
            match pool.lookup_storage_vol_by_name(name) {
                Ok(v) => v.delete(0).map(|_| true),
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL => Ok(false),
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
            if d.is_active()?
                && let Err(e) = d.destroy()
                && d.is_active()?
            {
                return Err(e);
            }
            match d.undefine() {
                Ok(()) => Ok(Outcome::Removed),
                Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => Ok(Outcome::Removed),
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

    fn reset(&self) {
        if self.state_in_connection() {
            return;
        }
        let old = self.conn.lock().take();
        if let Some(c) = old {
            // Closing a remote connection is an RPC, which a wedged server never answers:
            // close it where nobody waits for it.
            std::thread::spawn(move || drop(c));
        }
    }
}

/// State and reason codes; the `virt` wrapper returns nested enums that are harder to map.
fn raw_state(d: &Domain) -> Result<(i32, i32), virt::error::Error> {
    let mut state: libc::c_int = -1;
    let mut reason: libc::c_int = -1;
    // SAFETY: `d` holds a valid domain reference for the duration of the call; the two
    // out-pointers point to live stack integers.
    let rc = unsafe { sys::virDomainGetState(d.as_ptr(), &mut state, &mut reason, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok((state, reason))
}

/// Reads `virNodeGetMemoryStats` (free + buffers + cached) where the driver supports it.
fn node_free_memory(c: &Connect) -> Option<u64> {
    let fields = typed_stats(c, |conn, params, n| {
        // SAFETY: `conn` is a live connection; `params` is null (count query) or points to
        // `*n` initialised elements owned by the caller.
        unsafe {
            sys::virNodeGetMemoryStats(
                conn,
                sys::VIR_NODE_MEMORY_STATS_ALL_CELLS,
                params as *mut sys::virNodeMemoryStats,
                n,
                0,
            )
        }
    })?;
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| *v);
    Some(get("free")? + get("buffers").unwrap_or(0) + get("cached").unwrap_or(0))
}

/// Reads the cumulative CPU counters of `virNodeGetCPUStats` for all CPUs.
fn node_cpu_times(c: &Connect) -> Option<CpuTimes> {
    let fields = typed_stats(c, |conn, params, n| {
        // SAFETY: as in `node_free_memory`; the CPU and memory stats structs share one layout
        // (80-byte field name, u64 value), which `typed_stats` relies on.
        unsafe {
            sys::virNodeGetCPUStats(
                conn,
                sys::VIR_NODE_CPU_STATS_ALL_CPUS,
                params as *mut sys::virNodeCPUStats,
                n,
                0,
            )
        }
    })?;
    let total: u64 = fields.iter().map(|(_, v)| *v).sum();
    let idle: u64 = fields
        .iter()
        .filter(|(f, _)| f == "idle" || f == "iowait")
        .map(|(_, v)| *v)
        .sum();
    (total > 0).then_some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Calls a libvirt "stats" function twice, first for the count, then for the values.
fn typed_stats(
    c: &Connect,
    call: impl Fn(sys::virConnectPtr, *mut sys::virNodeCPUStats, *mut libc::c_int) -> libc::c_int,
) -> Option<Vec<(String, u64)>> {
    // SAFETY: the pointer is only used during this function, while `c` keeps the
    // connection referenced.
    let conn = unsafe { c.as_ptr() };
    let mut n: libc::c_int = 0;
    if call(conn, std::ptr::null_mut(), &mut n) < 0 || n <= 0 {
        return None;
    }
    let empty = sys::virNodeCPUStats {
        field: [0; 80],
        value: 0,
    };
    let mut params = vec![empty; usize::try_from(n).ok()?];
    if call(conn, params.as_mut_ptr(), &mut n) < 0 {
        return None;
    }
    params.truncate(usize::try_from(n).ok()?);
    Some(
        params
            .iter()
            .map(|p| {
                // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
                let f = unsafe { CStr::from_ptr(p.field.as_ptr()) };
                (f.to_string_lossy().into_owned(), p.value)
            })
            .collect(),
    )
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
            let source = child("source").and_then(|s| {
                s.attribute("file")
                    .or(s.attribute("dev"))
                    .or(s.attribute("volume"))
                    .map(str::to_string)
            });
            out.disks.push(DiskInfo {
                target: child("target")
                    .and_then(|t| t.attribute("dev"))
                    .unwrap_or("")
                    .to_string(),
                device: dev.attribute("device").unwrap_or("disk").to_string(),
                source,
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
        let p = node.probe().unwrap();
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

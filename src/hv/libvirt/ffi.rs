//! Every call into libvirt that the `virt` crate does not wrap, and so every `unsafe` block of
//! the libvirt backend, in one place: the default event loop and lifecycle callbacks
//! (`virConnectDomainEventRegisterAny`), UUIDs read as bytes, the bulk domain stats
//! (`virConnectGetAllDomainStats`), domain states with reasons, node memory and CPU
//! counters, aborting a job, and closing a connection with its callback. Each block carries its `// SAFETY:`.

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::Conn;
use crate::hv::{CpuTimes, DomainEvent, EventSink};

/// Deregisters a connection's event callback and closes it (blocking: call it where nobody
/// waits for it when the server may be wedged).
pub(super) fn close(conn: Conn) {
    if conn.close_callback {
        // SAFETY: `conn.c` is a live connection with `on_close` registered on it; libvirt
        // frees its opaque data (`free_lost`).
        unsafe {
            sys::virConnectUnregisterCloseCallback(conn.c.as_ptr(), Some(on_close));
        }
    }
    if let Some(id) = conn.callback {
        // SAFETY: `conn.c` is a live connection and `id` a callback registered on it; libvirt
        // frees the callback's opaque data (`free_sink`) once it is no longer in use.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(conn.c.as_ptr(), id);
        }
    }
    drop(conn.c);
}

pub(super) static EVENT_LOOP: std::sync::Once = std::sync::Once::new();

pub(super) static EVENT_LOOP_RUNNING: AtomicBool = AtomicBool::new(false);

/// Starts libvirt's default event loop (once per process) on a thread of its own, so
/// connections can deliver domain events. Returns whether it runs. Connections opened
/// before it started cannot deliver events; `watch` registers them on later connections.
pub fn start_event_loop() -> bool {
    EVENT_LOOP.call_once(|| {
        // SAFETY: registers libvirt's built-in event loop implementation; takes no
        // arguments and is called once.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            tracing::warn!("libvirt's event loop is unavailable; domain changes are polled");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    // SAFETY: runs one iteration of the event loop registered above; it is
                    // only ever run from this thread.
                    if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            });
        match spawned {
            Ok(_) => EVENT_LOOP_RUNNING.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "cannot start libvirt's event thread"),
        }
    });
    EVENT_LOOP_RUNNING.load(Ordering::Acquire)
}

/// The C signature libvirt calls for `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
type LifecycleCallback = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    libc::c_int,
    libc::c_int,
    *mut libc::c_void,
);

/// Registers the lifecycle callback on `c`; returns its id, or `None` (logged) if the
/// driver refuses it.
pub(super) fn register_events(node: &str, c: &Connect, sink: EventSink) -> Option<i32> {
    let opaque = Box::into_raw(Box::new(sink)).cast::<libc::c_void>();
    let lifecycle: LifecycleCallback = on_lifecycle;
    // SAFETY: libvirt calls the callback of an event id with that event's own signature;
    // the generic type is only how the C API passes it (C's VIR_DOMAIN_EVENT_CALLBACK cast).
    let generic = unsafe {
        std::mem::transmute::<
            LifecycleCallback,
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut libc::c_void),
        >(lifecycle)
    };
    // SAFETY: `c` is a live connection; `opaque` is a leaked `Box<EventSink>` that libvirt
    // hands back to `free_sink` when the callback is deregistered or the connection closes.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            c.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as libc::c_int,
            Some(generic),
            opaque,
            Some(free_sink),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take `opaque`; it is ours to free.
        unsafe { free_sink(opaque) };
        tracing::info!(node, "domain events unavailable; domain changes are polled");
        return None;
    }
    Some(id)
}

/// The lifecycle callback: hands the domain's name to the node's sink.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: libc::c_int,
    _detail: libc::c_int,
    opaque: *mut libc::c_void,
) {
    // SAFETY: `dom` is valid for the duration of the callback; the name belongs to it and
    // is copied before returning.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            return;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    // SAFETY: `opaque` is the `Box<EventSink>` registered with this callback, alive until
    // libvirt calls `free_sink` after the callback can no longer run.
    let sink = unsafe { &*opaque.cast::<EventSink>() };
    // A panic must not unwind into libvirt's C frames.
    let delivered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(DomainEvent { name })));
    if delivered.is_err() {
        tracing::error!("a domain event handler panicked; the event is dropped");
    }
}

/// Registers `on_close` on `c`: when libvirt finds the connection lost (the daemon died, the
/// network went), it sets `lost`. Whether the driver took it (the remote driver does; the
/// test driver in this process, which cannot lose its connection, may not).
pub(super) fn register_close(c: &Connect, lost: Arc<AtomicBool>) -> bool {
    let opaque = Box::into_raw(Box::new(lost)).cast::<libc::c_void>();
    // SAFETY: `c` is a live connection; `opaque` is a leaked `Box<Arc<AtomicBool>>` that
    // libvirt hands back to `free_lost` when the callback is unregistered or replaced.
    let r = unsafe {
        sys::virConnectRegisterCloseCallback(c.as_ptr(), Some(on_close), opaque, Some(free_lost))
    };
    if r < 0 {
        // SAFETY: registration failed, so libvirt did not take `opaque`; it is ours to free.
        unsafe { free_lost(opaque) };
        return false;
    }
    true
}

/// The close callback: marks the connection lost (no allocation, no lock, cannot panic).
unsafe extern "C" fn on_close(
    _conn: sys::virConnectPtr,
    _reason: libc::c_int,
    opaque: *mut libc::c_void,
) {
    // SAFETY: `opaque` is the `Box<Arc<AtomicBool>>` registered with this callback, alive
    // until libvirt calls `free_lost`.
    let lost = unsafe { &*opaque.cast::<Arc<AtomicBool>>() };
    lost.store(true, Ordering::Release);
}

/// Frees the flag handed to libvirt with the close callback.
unsafe extern "C" fn free_lost(opaque: *mut libc::c_void) {
    // SAFETY: `opaque` came from `Box::into_raw` in `register_close` and is freed once.
    drop(unsafe { Box::from_raw(opaque.cast::<Arc<AtomicBool>>()) });
}

/// Frees the sink handed to libvirt at registration.
unsafe extern "C" fn free_sink(opaque: *mut libc::c_void) {
    // SAFETY: `opaque` came from `Box::into_raw` in `register_events` and is freed once.
    drop(unsafe { Box::from_raw(opaque.cast::<EventSink>()) });
}

/// A domain's UUID as text, formatted here: libvirt's own formatting goes through printf,
/// which at thousands of domains per poll is most of a poll's cost.
pub(super) fn uuid_of(d: &Domain) -> Result<String, virt::error::Error> {
    let mut raw = [0u8; 16];
    // SAFETY: `d` is a live domain; libvirt writes exactly VIR_UUID_BUFLEN (16) bytes.
    if unsafe { sys::virDomainGetUUID(d.as_ptr(), raw.as_mut_ptr()) } < 0 {
        return Err(virt::error::Error::last_error());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(out)
}

/// One domain's bulk stats: what `virConnectGetAllDomainStats` gave of the fields kvmfs uses.
#[derive(Debug, Default)]
pub(super) struct BulkStats {
    pub(super) state: i32,
    pub(super) reason: i32,
    pub(super) vcpus: Option<u32>,
    pub(super) max_mem_kib: Option<u64>,
    pub(super) mem_kib: Option<u64>,
}

/// The records of one `virConnectGetAllDomainStats` call, freed (with the references to
/// their domains the list holds) when dropped.
pub(super) struct StatsRecords {
    pub(super) records: *mut sys::virDomainStatsRecordPtr,
    pub(super) n: usize,
}

impl Drop for StatsRecords {
    fn drop(&mut self) {
        // SAFETY: `records` is the list libvirt allocated in `all_domain_stats`, freed once.
        unsafe { sys::virDomainStatsRecordListFree(self.records) };
    }
}

/// A domain of a `StatsRecords` list, borrowed: no reference of its own is taken or dropped
/// (each `virDomainRef` and `virDomainFree` formats the domain's UUID for libvirt's debug
/// log, which at thousands of domains per poll was a good part of a poll's cost).
pub(super) struct RecordDomain<'a> {
    pub(super) d: std::mem::ManuallyDrop<Domain>,
    pub(super) _list: std::marker::PhantomData<&'a StatsRecords>,
}

impl std::ops::Deref for RecordDomain<'_> {
    type Target = Domain;
    fn deref(&self) -> &Domain {
        &self.d
    }
}

impl StatsRecords {
    pub(super) fn iter(&self) -> impl Iterator<Item = (RecordDomain<'_>, BulkStats)> + '_ {
        (0..self.n).map(move |i| {
            // SAFETY: `records` holds `n` valid record pointers; each record's `params` array
            // holds `nparams` initialised typed parameters and its `dom` a domain the list
            // holds a reference to, all valid until the list is freed (after `self`'s
            // borrow, which `RecordDomain` carries, ends). `ManuallyDrop` keeps the borrowed
            // domain from being freed by `Domain`'s drop.
            unsafe {
                let r = &**self.records.add(i);
                let mut st = BulkStats::default();
                for j in 0..usize::try_from(r.nparams).unwrap_or(0) {
                    let p = &*r.params.add(j);
                    let field = CStr::from_ptr(p.field.as_ptr()).to_bytes();
                    let uint = |p: &sys::virTypedParameter| -> Option<u64> {
                        match p.type_ as u32 {
                            sys::VIR_TYPED_PARAM_INT => u64::try_from(p.value.i).ok(),
                            sys::VIR_TYPED_PARAM_UINT => Some(u64::from(p.value.ui)),
                            sys::VIR_TYPED_PARAM_LLONG => u64::try_from(p.value.l).ok(),
                            sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul),
                            _ => None,
                        }
                    };
                    let v = uint(p);
                    match field {
                        b"state.state" => {
                            st.state = v.and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
                        }
                        b"state.reason" => {
                            st.reason = v.and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
                        }
                        b"balloon.maximum" => st.max_mem_kib = v,
                        b"balloon.current" => st.mem_kib = v,
                        b"vcpu.current" => st.vcpus = v.and_then(|v| u32::try_from(v).ok()),
                        _ => {}
                    }
                }
                let d = RecordDomain {
                    d: std::mem::ManuallyDrop::new(Domain::from_ptr(r.dom)),
                    _list: std::marker::PhantomData,
                };
                (d, st)
            }
        })
    }
}

/// State, vCPUs and memory of every domain of the node, in one call.
pub(super) fn all_domain_stats(c: &Connect) -> Result<StatsRecords, virt::error::Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    let groups =
        sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_BALLOON | sys::VIR_DOMAIN_STATS_VCPU;
    // SAFETY: `c` is a live connection; on success libvirt stores a NULL-terminated array of
    // records in `records`, which `StatsRecords` frees.
    let n = unsafe { sys::virConnectGetAllDomainStats(c.as_ptr(), groups, &mut records, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(StatsRecords {
        records,
        n: usize::try_from(n).unwrap_or(0),
    })
}

/// State and reason codes; the `virt` wrapper returns nested enums that are harder to map.
pub(super) fn raw_state(d: &Domain) -> Result<(i32, i32), virt::error::Error> {
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

/// Aborts the domain's current job (a migration under way): `virDomainAbortJob`.
pub(super) fn abort_job(d: &Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `d` holds a valid domain reference for the duration of the call.
    let rc = unsafe { sys::virDomainAbortJob(d.as_ptr()) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// Reads `virNodeGetMemoryStats` (free + buffers + cached) where the driver supports it.
pub(super) fn node_free_memory(c: &Connect) -> Option<u64> {
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
pub(super) fn node_cpu_times(c: &Connect) -> Option<CpuTimes> {
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
pub(super) fn typed_stats(
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

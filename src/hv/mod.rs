//! The hypervisor backend: the only code that talks to libvirt. `NodeBackend` is what the
//! controller needs from one KVM node; `libvirt::LibvirtNode` implements it with the `virt`
//! crate. Every method blocks (libvirt calls are synchronous): callers run them on blocking
//! threads under a deadline and never from a FUSE thread.

pub mod libvirt;
#[cfg(test)]
pub mod mem;
pub mod xml;

use std::sync::Arc;

/// Errors from one node's hypervisor. Messages are lowercase and name the node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HvError {
    #[error("node {node}: cannot connect to {uri}: {message}")]
    Connect {
        node: String,
        uri: String,
        message: String,
    },
    #[error("node {node}: {message}")]
    Call { node: String, message: String },
    #[error("node {node}: {what} not found")]
    NotFound { node: String, what: String },
    #[error("node {node}: {message}")]
    WrongState { node: String, message: String },
    /// Something of the name kvmfs wanted to remove is not kvmfs's: it is left alone.
    #[error("node {node}: {what} was not made by kvmfs; it is left alone")]
    Foreign { node: String, what: String },
}

/// The lifecycle state of a domain, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    NoState,
    Running,
    Blocked,
    Paused,
    Shutdown,
    Shutoff,
    Crashed,
    PmSuspended,
}

impl DomainState {
    pub fn from_raw(state: i32) -> DomainState {
        match state {
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::Shutdown,
            5 => DomainState::Shutoff,
            6 => DomainState::Crashed,
            7 => DomainState::PmSuspended,
            _ => DomainState::NoState,
        }
    }

    /// The word shown in `status` files.
    pub fn word(self) -> &'static str {
        match self {
            DomainState::NoState => "nostate",
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutdown",
            DomainState::Shutoff => "shutoff",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
        }
    }

    /// Whether the domain holds its vCPUs and RAM on the node.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::Shutoff | DomainState::NoState)
    }

    /// Words for libvirt's per-state reason codes (`virsh domstate --reason`); `None` for
    /// "unknown", which is not worth showing.
    pub fn reason_word(self, reason: i32) -> Option<&'static str> {
        let table: &[&str] = match self {
            DomainState::Running => &[
                "",
                "booted",
                "migrated",
                "restored",
                "from snapshot",
                "unpaused",
                "migration canceled",
                "save canceled",
                "woken up",
                "crashed",
                "post-copy",
                "post-copy failed",
            ],
            DomainState::Paused => &[
                "",
                "user",
                "migrating",
                "saving",
                "dumping",
                "i/o error",
                "watchdog",
                "from snapshot",
                "shutting down",
                "creating snapshot",
                "crashed",
                "starting up",
                "post-copy",
                "post-copy failed",
                "api error",
            ],
            DomainState::Shutdown => &["", "user"],
            DomainState::Shutoff => &[
                "",
                "shutdown",
                "destroyed",
                "crashed",
                "migrated",
                "saved",
                "failed",
                "from snapshot",
                "daemon",
            ],
            DomainState::Crashed => &["", "panicked"],
            _ => &[""],
        };
        usize::try_from(reason)
            .ok()
            .and_then(|i| table.get(i))
            .copied()
            .filter(|w| !w.is_empty())
    }
}

/// What the domain XML says about devices; fetched once per domain definition, not per poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DomainDevices {
    pub disks: Vec<DiskInfo>,
    pub interfaces: Vec<InterfaceInfo>,
    /// The owner uid in kvmfs's `<metadata>`, for domains kvmfs defined.
    #[serde(skip)]
    pub kvmfs_owner: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskInfo {
    pub target: String,
    pub device: String,
    /// The file on the node, or for a network disk its path on the server.
    pub source: Option<String>,
    /// `node` (a file the node opens) or `shared` (a network disk: QEMU opens it on a
    /// server every node may reach).
    pub storage: &'static str,
    /// The network disk's protocol (`nfs`, `rbd`, …).
    pub protocol: Option<String>,
    /// The network disk's server.
    pub host: Option<String>,
    /// A `<disk type='network'>` (NFS, RBD, iSCSI…): QEMU opens it itself, and libvirt
    /// snapshots it only through a running QEMU (see `cluster::actions::snapshot`).
    #[serde(skip)]
    pub network: bool,
}

/// One snapshot of a domain, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProbe {
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// The domain's state when it was taken (what a revert brings back).
    pub state: DomainState,
    pub parent: Option<String>,
    /// Whether it is the domain's current snapshot (the last taken or reverted to).
    pub current: bool,
    /// Bytes it holds, where the driver tells (libvirt does not for internal snapshots).
    pub size_bytes: Option<u64>,
}

/// A snapshot's definition, kept while a migration moves its domain: libvirt does not
/// migrate a domain that has snapshot metadata, so the metadata is taken off the source
/// (`NodeBackend::forget_snapshots`) and defined again on the node the domain ends up on
/// (`NodeBackend::redefine_snapshots`); the snapshot's data stays in the disk images.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedSnapshot {
    pub name: String,
    /// libvirt's `<domainsnapshot>` XML of it.
    pub xml: String,
    /// Whether it was the domain's current snapshot.
    pub current: bool,
}

/// How a domain moves (`NodeBackend::migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateHow {
    /// It runs: move it live (memory copied while it runs). Otherwise only its definition
    /// moves.
    pub live: bool,
    /// Its disks are files that libvirt cannot tell are shared (a pool declared shared):
    /// migrate without libvirt's check for a shared filesystem (`VIR_MIGRATE_UNSAFE`).
    pub declared_shared: bool,
}

/// A domain's snapshots in name order; shared like `Volumes`.
pub type Snapshots = Arc<Vec<SnapshotProbe>>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InterfaceInfo {
    pub mac: Option<String>,
    pub network: Option<String>,
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DomainProbe {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub reason: Option<&'static str>,
    pub vcpus: u32,
    pub max_memory_kib: u64,
    pub memory_kib: u64,
    pub devices: Arc<DomainDevices>,
    /// Its snapshots (see `NodeBackend::list_snapshots` for when they are read).
    pub snapshots: Snapshots,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetworkProbe {
    pub name: String,
    pub bridge: Option<String>,
    pub active: bool,
    pub autostart: bool,
    pub persistent: bool,
    pub forward: Option<String>,
    /// Addresses of the network on this node, `address/prefix`.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VolumeProbe {
    pub name: String,
    pub capacity_bytes: u64,
    pub path: Option<String>,
}

/// Cumulative CPU time counters of a node, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Everything one poll of a node learns.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProbe {
    pub hostname: Option<String>,
    pub cpus: u32,
    pub mhz: u32,
    pub model: String,
    pub memory_kib: u64,
    /// Measured free memory (free + buffers + cached), where the driver reports it.
    pub free_memory_kib: Option<u64>,
    pub cpu_times: Option<CpuTimes>,
    pub domains: Vec<DomainProbe>,
    pub networks: Vec<NetworkProbe>,
    /// Volumes of the node's configured storage pool; `None` if the pool is missing.
    pub volumes: Option<Volumes>,
    /// Where the node's pool is, when it is a libvirt `netfs` pool: `HOST:/dir` of its
    /// `<source>` (as last read with the pool's volumes). Nodes whose pools have the same
    /// source share their storage.
    pub pool_source: Option<String>,
}

/// The volumes of a pool, in name order. Shared: a listing that finds the same volumes as
/// the last one returns the same `Arc`, so everything built from it is shared too.
pub type Volumes = Arc<Vec<VolumeProbe>>;

/// A change of a domain's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainOp {
    Start,
    /// Graceful: asks the guest to power off.
    Shutdown,
    /// Hard power-off.
    Destroy,
    Reboot,
    /// Resumes a paused domain (one a migration cut off left paused).
    Resume,
}

/// A domain changed on a node (started, stopped, defined, undefined, …): the node said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub name: String,
}

/// Where a backend delivers its domain events. Called on the backend's event thread: it
/// must not block.
pub type EventSink = Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// What one `NodeBackend::probe` reads besides the node's own numbers (capacity, memory,
/// CPU counters, networks), which it always reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeScope {
    /// Every domain (without it, `NodeProbe::domains` is empty: the caller keeps its own).
    pub domains: bool,
    /// The pool's volumes (without it, `NodeProbe::volumes` is `None`).
    pub pool: bool,
}

impl ProbeScope {
    pub const ALL: ProbeScope = ProbeScope {
        domains: true,
        pool: true,
    };
}

/// What the controller needs from one KVM node. Blocking; see the module note.
pub trait NodeBackend: Send + Sync + 'static {
    /// Reads the node's capacity and networks, and what `scope` asks for of its domains and
    /// its pool's volumes (what it leaves out is empty or `None`: the caller keeps what it
    /// read before).
    fn probe(&self, scope: ProbeScope) -> Result<NodeProbe, HvError>;
    /// Reads the named domains only; `None` for a name with no domain on the node.
    fn probe_named(&self, names: &[String]) -> Result<Vec<(String, Option<DomainProbe>)>, HvError>;
    /// Reads the volumes of the node's storage pool (`None` if the pool is missing).
    fn probe_pool(&self) -> Result<Option<Volumes>, HvError>;
    /// Reads the named volumes of the pool only; `None` for a name with no volume (or no
    /// pool).
    fn probe_volumes_named(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Option<VolumeProbe>)>, HvError>;
    /// Asks the node to report every change of a domain to `sink`, on every connection it
    /// opens from now on. Without events (or if registering fails) nothing is reported and
    /// the periodic polls alone keep the picture fresh.
    fn watch(&self, sink: EventSink);
    /// `Some(n)` while the node delivers domain events on its connection, `n` counting the
    /// connections that did: a new `n` means events may have been missed in between (the
    /// connection was lost, the close callback said so, or it was opened again). `None`
    /// without events: only polls tell of changes.
    fn events(&self) -> Option<u64>;
    /// The domain type instances get on this node (`test` on the test driver).
    fn domain_type(&self, configured: &str) -> String;
    /// Creates a volume in the node's pool from XML; returns its path.
    fn create_volume(&self, xml: &str) -> Result<String, HvError>;
    /// Writes `data` into a volume. Drivers without uploads (the test driver) accept and
    /// drop the data.
    fn upload_volume(&self, name: &str, data: &[u8]) -> Result<(), HvError>;
    /// The path of a volume in the node's pool, if it exists.
    fn volume_path(&self, name: &str) -> Result<Option<String>, HvError>;
    /// Deletes a volume; `false` if it was not there.
    fn delete_volume(&self, name: &str) -> Result<bool, HvError>;
    /// Defines a domain and starts it.
    fn define_and_start(&self, xml: &str) -> Result<(), HvError>;
    /// Changes a domain's run state.
    fn domain_op(&self, name: &str, op: DomainOp) -> Result<(), HvError>;
    /// Stops (hard) and undefines a domain, with its snapshots' metadata; `false` if it was
    /// not there.
    fn remove_domain(&self, name: &str) -> Result<bool, HvError>;
    /// Takes a snapshot `snapshot` of domain `name` (disks and, if it runs, memory).
    /// A snapshot of that name already there is `HvError::WrongState`.
    fn create_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError>;
    /// Reads a domain's snapshots. Probes carry them too: read when a domain is read on
    /// its own (`probe_named`: events, after actions) and, in whole listings, when first
    /// seen and then at most once a minute per domain.
    fn list_snapshots(&self, name: &str) -> Result<Vec<SnapshotProbe>, HvError>;
    /// Brings domain `name` back to snapshot `snapshot`: its disks, and its state then.
    fn revert_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError>;
    /// Deletes a snapshot (its children stay, re-parented); `false` if it was not there.
    fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<bool, HvError>;
    /// The definitions of a domain's snapshots, parents before children.
    fn saved_snapshots(&self, name: &str) -> Result<Vec<SavedSnapshot>, HvError>;
    /// Takes a domain's snapshot metadata off the node (the snapshots' data stays in the
    /// disks), so that libvirt lets the domain migrate.
    fn forget_snapshots(&self, name: &str) -> Result<(), HvError>;
    /// Defines snapshots again on the domain `name` of this node (parents first); a
    /// snapshot it has already is left as it is.
    fn redefine_snapshots(&self, name: &str, snapshots: &[SavedSnapshot]) -> Result<(), HvError>;
    /// Moves domain `name` from this node to `dest` (a backend of the same kind): live if
    /// `how.live`, else its definition only. Its disks must be where `dest` reaches them
    /// (shared storage): nothing is copied. On success the domain is defined (and running,
    /// if it was) on `dest` only; on failure it is left on this node as it was, as far as
    /// the hypervisor can tell.
    fn migrate(&self, name: &str, dest: &dyn NodeBackend, how: MigrateHow) -> Result<(), HvError>;
    /// Aborts the job under way on domain `name` (a migration past its bound); nothing to
    /// abort is fine.
    fn abort_job(&self, name: &str) -> Result<(), HvError>;
    /// This backend as `Any`, so `migrate` can reach the other node's connection.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Forgets the current connection so the next call opens a fresh one; used after a
    /// call timed out and the connection may be wedged.
    fn reset(&self);
}

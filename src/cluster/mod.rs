//! The controller: owns the node backends and the database, keeps the live `View` fresh with
//! one poller per node and one for the database, and runs actions (`actions`).
//!
//! Invariants: a FUSE thread never waits on libvirt or SQL to read — reads take the current
//! `Arc<View>`. Every backend call runs on a blocking thread under a deadline; a call that
//! misses it marks the node offline, and at most `MAX_STUCK_CALLS` calls per node may be left
//! hanging in the background before polling of that node pauses.

pub mod actions;
mod calls;
mod keys;
pub mod placement;
mod pollers;
pub mod reconcile;
mod rows;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::config::Config;
use crate::db::Db;
use crate::hv::libvirt::LibvirtNode;
use crate::hv::{CpuTimes, NodeBackend};
use view::{Changed, NodeState, NodeStatus, RowMap, View};

pub use calls::CallError;
use rows::PendingError;

/// One configured node and its backend.
pub struct NodeHandle {
    pub name: String,
    pub uri: String,
    pub backend: Arc<dyn NodeBackend>,
    /// Calls that missed their deadline and have not returned yet.
    overdue: Arc<AtomicUsize>,
}

struct Inputs {
    nodes: Vec<NodeState>,
    prev_cpu: Vec<Option<CpuTimes>>,
    rows: RowMap,
    /// Which instances may show something new (a row, a domain, a node's reachability)
    /// since the last build; with none, a build only recomputes the nodes.
    changed: Changed,
    /// Bumped by every local row change.
    rows_epoch: u64,
    /// The `rows_epoch` of each name's last local change: a database read that began before
    /// it keeps that name's local row (newer than what the read saw) and takes the rest.
    /// Names are dropped once a read that began after their change has been taken.
    local_since: HashMap<String, u64>,
    /// When the rows were last read whole (see `poll_db`).
    rows_read: Option<Instant>,
    db_error: Option<String>,
    /// Why the shared storage did not answer its last probe (`storage_loop`).
    storage_error: Option<String>,
    /// The shared storage's last listing (`list_share`); empty until one succeeds.
    share_files: view::SharedFiles,
    /// Errors shown in `error` files that the database has not stored yet, laid over the
    /// rows every poll brings until it has.
    pending_errors: HashMap<String, PendingError>,
}

/// The running controller.
pub struct Cluster {
    cfg: Arc<Config>,
    db: Db,
    nodes: Vec<NodeHandle>,
    inputs: Mutex<Inputs>,
    view: RwLock<Arc<View>>,
    /// Counts changes of the inputs (under their lock); `built` is the count the published
    /// view was built from. When they differ, the next `view()` builds anew.
    input_seq: AtomicU64,
    built_seq: AtomicU64,
    /// Bumped on every change of the inputs, for whoever follows changes as they happen
    /// (the kernel cache invalidation); they then call `view()`.
    changes: watch::Sender<u64>,
    /// Serialises placement with the reservation it leads to, so concurrent creates
    /// cannot overbook a node.
    place_lock: tokio::sync::Mutex<()>,
    /// Errors to store, in the order they happened (see `set_local_error`).
    errors_tx: tokio::sync::mpsc::UnboundedSender<(String, PendingError)>,
    errors_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, PendingError)>>>,
    /// Domain events from the nodes: (node index, domain name).
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(usize, String)>>>,
    /// This daemon's name in `vm.worker` and the heartbeats (see `statedir`).
    worker_id: String,
    /// Instances an operation of this daemon is working on (a build, a delete, a `ctl`,
    /// the reconciliation): one operation per instance at a time (see `claim`).
    claims: Arc<Mutex<HashSet<String>>>,
    /// Wakes `drain` when a claim ends.
    claims_changed: Arc<tokio::sync::Notify>,
    /// Seals and opens instances' private keys (see `secrets`).
    keys: Arc<crate::secrets::KeyRing>,
    /// When a refusal was last logged per instance, and how many since (`log_refusal`).
    refusals_logged: Mutex<HashMap<String, (Instant, u32)>>,
    /// What this daemon did, counted (`/metrics/kvmfs.prom`).
    metrics: Arc<crate::metrics::Metrics>,
    /// The shared storage of `[storage]`, where instances' disks and seeds go.
    storage: Option<Arc<dyn crate::storage::Share>>,
    /// Drained nodes this daemon is moving instances off now (see `actions::migrate`).
    evacuating: Mutex<HashSet<String>>,
}

/// One operation's hold on an instance; released when dropped.
pub struct Claim {
    name: String,
    claims: Arc<Mutex<HashSet<String>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.lock().remove(&self.name);
        self.changed.notify_waiters();
    }
}

impl Cluster {
    /// Builds the controller for `cfg` with libvirt backends.
    pub fn new(
        cfg: Arc<Config>,
        db: Db,
        worker_id: String,
        keys: Arc<crate::secrets::KeyRing>,
    ) -> Arc<Cluster> {
        crate::hv::libvirt::quiet_libvirt_errors();
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| NodeHandle {
                name: n.name.to_string(),
                uri: n.uri.clone(),
                backend: Arc::new(LibvirtNode::new(n.name.as_str(), &n.uri, &n.pool)),
                overdue: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        Self::with_nodes(cfg, db, nodes, None, worker_id, keys)
    }

    /// Builds the controller over the given backends, one per configured node in the
    /// configuration's order: the seam in-process tests use (in-memory nodes, `hv::mem`).
    pub fn with_backends(
        cfg: Arc<Config>,
        db: Db,
        backends: Vec<Arc<dyn NodeBackend>>,
        worker_id: String,
        keys: Arc<crate::secrets::KeyRing>,
    ) -> Arc<Cluster> {
        Self::with_backends_and_share(cfg, db, backends, None, worker_id, keys)
    }

    /// As `with_backends`, with `share` as the shared storage instead of the one the
    /// configuration names (`None`: the configuration's, if any): in-process tests give an
    /// in-memory share (`storage::mem`).
    pub fn with_backends_and_share(
        cfg: Arc<Config>,
        db: Db,
        backends: Vec<Arc<dyn NodeBackend>>,
        share: Option<Arc<dyn crate::storage::Share>>,
        worker_id: String,
        keys: Arc<crate::secrets::KeyRing>,
    ) -> Arc<Cluster> {
        let nodes = cfg
            .nodes
            .iter()
            .zip(backends)
            .map(|(n, backend)| NodeHandle {
                name: n.name.to_string(),
                uri: n.uri.clone(),
                backend,
                overdue: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        Self::with_nodes(cfg, db, nodes, share, worker_id, keys)
    }

    fn with_nodes(
        cfg: Arc<Config>,
        db: Db,
        nodes: Vec<NodeHandle>,
        share: Option<Arc<dyn crate::storage::Share>>,
        worker_id: String,
        keys: Arc<crate::secrets::KeyRing>,
    ) -> Arc<Cluster> {
        // Every node reports its domain changes here; `start` follows them.
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, n) in nodes.iter().enumerate() {
            let tx = events_tx.clone();
            n.backend.watch(Arc::new(move |e: crate::hv::DomainEvent| {
                let _ = tx.send((i, e.name));
            }));
        }
        let states = nodes
            .iter()
            .map(|n| NodeState {
                name: n.name.clone(),
                uri: n.uri.clone(),
                status: NodeStatus::Connecting,
                last_error: None,
                probe: None,
                domains: Vec::new(),
                cpu_usage: None,
                updated_at: None,
                domains_epoch: 0,
                polls: 0,
                full_poll: None,
                drained: false,
            })
            .collect();
        let (changes, _) = watch::channel(0);
        let (errors_tx, errors_rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg_storage = share.or_else(|| {
            cfg.storage.as_ref().map(|s| {
                Arc::new(crate::storage::nfs::NfsShare::new(s)) as Arc<dyn crate::storage::Share>
            })
        });
        let metrics = Arc::new(crate::metrics::Metrics::new(
            nodes.iter().map(|n| n.name.clone()),
            db.failovers(),
        ));
        Arc::new(Cluster {
            inputs: Mutex::new(Inputs {
                prev_cpu: vec![None; nodes.len()],
                nodes: states,
                rows: RowMap::new(),
                changed: Changed::all(),
                rows_epoch: 0,
                local_since: HashMap::new(),
                rows_read: None,
                db_error: None,
                storage_error: None,
                share_files: Arc::default(),
                pending_errors: HashMap::new(),
            }),
            cfg,
            db,
            nodes,
            view: RwLock::new(Arc::new(View::default())),
            input_seq: AtomicU64::new(1),
            built_seq: AtomicU64::new(0),
            changes,
            place_lock: tokio::sync::Mutex::new(()),
            errors_tx,
            errors_rx: Mutex::new(Some(errors_rx)),
            events_rx: Mutex::new(Some(events_rx)),
            worker_id,
            claims: Arc::new(Mutex::new(HashSet::new())),
            claims_changed: Arc::new(tokio::sync::Notify::new()),
            keys,
            refusals_logged: Mutex::new(HashMap::new()),
            metrics,
            storage: cfg_storage,
            evacuating: Mutex::new(HashSet::new()),
        })
    }

    /// The shared storage, if one is configured.
    pub fn storage(&self) -> Option<&Arc<dyn crate::storage::Share>> {
        self.storage.as_ref()
    }

    /// This daemon's counters.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Takes instance `name` for one operation; `None` while another holds it.
    pub fn claim(&self, name: &str) -> Option<Claim> {
        if !self.claims.lock().insert(name.to_string()) {
            return None;
        }
        Some(Claim {
            name: name.to_string(),
            claims: self.claims.clone(),
            changed: self.claims_changed.clone(),
        })
    }

    /// Takes instance `name`, waiting at most `wait` for the operation holding it to end.
    pub async fn claim_within(&self, name: &str, wait: Duration) -> Option<Claim> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.claims_changed.notified();
            if let Some(c) = self.claim(name) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.claim(name);
            }
        }
    }

    /// Instances operations are working on right now, sorted.
    pub fn claimed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.claims.lock().iter().cloned().collect();
        v.sort();
        v
    }

    /// Waits until no operation holds an instance, or `grace` passes; returns the instances
    /// still held. At shutdown: whatever is cut off is recorded in its row (`vm.step`,
    /// `vm.made`, `vm.worker`) for the reconciliation at the next start.
    pub async fn drain(&self, grace: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.claims_changed.notified();
            let left = self.claimed();
            if left.is_empty() {
                return left;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.claimed();
            }
        }
    }

    /// The current picture; cheap (an `Arc` clone), never blocks on a backend. When the
    /// inputs changed since the last build, it is built first, so a caller always sees the
    /// changes made before the call.
    pub fn view(&self) -> Arc<View> {
        if self.built_seq.load(Ordering::Acquire) < self.input_seq.load(Ordering::Acquire) {
            self.rebuild();
        }
        self.view.read().clone()
    }

    /// Follows changes of the inputs: the value moves whenever `view()` would show
    /// something new.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers every node in `host` and starts the pollers. Returns once every node has
    /// answered or missed its first deadline, so the first listing is already populated.
    pub async fn start(self: &Arc<Self>) -> Result<(), crate::db::DbError> {
        for n in &self.cfg.nodes {
            let ip = n.ip.clone().unwrap_or_else(|| pollers::uri_host(&n.uri));
            self.db.register_host(n.name.as_str(), &ip, &n.uri).await?;
        }
        let first_round: Vec<_> = (0..self.nodes.len())
            .map(|i| {
                let c = self.clone();
                tokio::spawn(async move { c.poll_node(i).await })
            })
            .collect();
        let c = self.clone();
        let db_first = tokio::spawn(async move { c.poll_db().await });
        // The shared storage's first listing, under the deadline a node's first poll has, so
        // the first `ls /images` is populated too (a slow share is listed again later).
        let c = self.clone();
        let share_first = tokio::spawn(async move {
            let within = c.cfg.timing.libvirt_timeout();
            match tokio::time::timeout(within, c.list_share()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot list the shared storage"),
                Err(_) => tracing::warn!(?within, "the shared storage's first listing is late"),
            }
        });
        for h in first_round {
            let _ = h.await;
        }
        let _ = db_first.await;
        let _ = share_first.await;
        for i in 0..self.nodes.len() {
            let c = self.clone();
            tokio::spawn(async move { c.node_loop(i).await });
        }
        let c = self.clone();
        tokio::spawn(async move { c.db_loop().await });
        if self.storage.is_some() {
            let c = self.clone();
            tokio::spawn(async move { c.storage_loop().await });
        }
        if let Some(rx) = self.errors_rx.lock().take() {
            let c = self.clone();
            tokio::spawn(async move { c.error_writer(rx).await });
        }
        if let Some(rx) = self.events_rx.lock().take() {
            let c = self.clone();
            tokio::spawn(async move { c.follow_events(rx).await });
        }
        let c = self.clone();
        tokio::spawn(async move { c.worker_loop().await });
        Ok(())
    }

    /// Notes that the inputs changed (what instances show, in `Inputs::changed`), so the next
    /// `view()` builds anew, and tells the followers of `subscribe`. Takes the inputs to
    /// show that it is called under their lock.
    fn mark_dirty(&self, _inputs: &mut Inputs) {
        self.input_seq.fetch_add(1, Ordering::AcqRel);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Assembles a new view from the current inputs and publishes it, if they changed since
    /// the last build. Builds run one at a time, under the inputs' lock, so views are
    /// published in order and a build sees every change marked before it.
    fn rebuild(&self) {
        let mut inputs = self.inputs.lock();
        // Changes are only marked under this lock, so this is every change so far.
        let seq = self.input_seq.load(Ordering::Acquire);
        if self.built_seq.load(Ordering::Acquire) >= seq {
            return;
        }
        let prev = self.view.read().clone();
        let v = view::build(
            &inputs.nodes,
            &inputs.rows,
            view::Faults {
                database: inputs.db_error.clone(),
                storage: inputs.storage_error.clone(),
            },
            self.storage.is_some().then_some(&inputs.share_files),
            &self.cfg.placement,
            &prev,
            SystemTime::now(),
            &inputs.changed,
        );
        inputs.changed = Changed::default();
        *self.view.write() = Arc::new(v);
        self.built_seq.store(seq, Ordering::Release);
    }
}

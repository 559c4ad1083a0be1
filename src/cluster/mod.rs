//! The controller: owns the node backends and the database, keeps the live `View` fresh with
//! one poller per node and one for the database, and runs actions (`actions`).
//!
//! Invariants: a FUSE thread never waits on libvirt or SQL to read — reads take the current
//! `Arc<View>`. Every backend call runs on a blocking thread under a deadline; a call that
//! misses it marks the node offline, and at most `MAX_STUCK_CALLS` calls per node may be left
//! hanging in the background before polling of that node pauses.

pub mod actions;
pub mod placement;
pub mod reconcile;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::config::Config;
use crate::db::{Db, InstanceRecord, VmFingerprint};
use crate::hv::libvirt::LibvirtNode;
use crate::hv::{CpuTimes, DomainProbe, HvError, NodeBackend};
use view::{Changed, NodeState, NodeStatus, RowMap, View};

/// Calls per node allowed to hang past their deadline before polling that node pauses.
const MAX_STUCK_CALLS: usize = 3;
/// A database poll reads every row at least every this many polls, whatever the
/// fingerprint says (see `poll_db`).
const FULL_READ_EVERY: u32 = 10;
/// A node poll lists the storage pool every this many polls (and the first time); actions
/// re-read the volumes they make or remove by name, so the listing only has to catch what
/// others did to the pool.
const POOL_EVERY: u64 = 10;
/// An instance's refusals are stored in the database, and logged, at most once per this
/// (the `error` file shows every one at once).
const ERROR_STORE_INTERVAL: Duration = Duration::from_secs(1);
/// After a timed-out call, wait this long before trying the node again.
const RETRY_AFTER_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// Errors shown in `error` files that the database has not stored yet, laid over the
    /// rows every poll brings until it has.
    pending_errors: HashMap<String, PendingError>,
}

/// An error shown in an instance's `error` file that the database has not stored yet; it
/// belongs to one incarnation of the name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingError {
    incarnation: String,
    message: String,
}

impl PendingError {
    /// Lays the error over `row` if it is the row it belongs to.
    fn apply(&self, row: &mut InstanceRecord) {
        if row.incarnation == self.incarnation {
            row.error = Some(self.message.clone());
        }
    }
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
        Self::with_nodes(cfg, db, nodes, worker_id, keys)
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
        Self::with_nodes(cfg, db, nodes, worker_id, keys)
    }

    fn with_nodes(
        cfg: Arc<Config>,
        db: Db,
        nodes: Vec<NodeHandle>,
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
            })
            .collect();
        let (changes, _) = watch::channel(0);
        let (errors_tx, errors_rx) = tokio::sync::mpsc::unbounded_channel();
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
        })
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

    /// Instance `i`'s SSH private key, opened from its sealed form in the row.
    pub fn private_key(&self, i: &view::InstanceView) -> Result<Vec<u8>, actions::ActionError> {
        let Some(row) = i.row.as_deref() else {
            return Ok(Vec::new());
        };
        let Some(stored) = row.sealed_key.as_deref() else {
            return Ok(Vec::new());
        };
        self.keys
            .open(
                &crate::secrets::row_binding(&row.name, &row.incarnation),
                stored,
            )
            .map_err(|e| {
                tracing::error!(instance = %row.name, error = %e, "cannot open the private key");
                actions::ActionError::Backend(format!(
                    "instance {}: cannot open its private key: {e}",
                    row.name
                ))
            })
    }

    /// Seals every private key the database holds in the clear (an earlier kvmfs stored
    /// them so) or under a key being rotated out. Returns how many it sealed.
    pub async fn seal_keys_at_rest(&self) -> Result<usize, crate::db::DbError> {
        let mut sealed = 0;
        for (name, incarnation, stored) in self.db.private_keys().await? {
            if !self.keys.needs_reseal(&stored) {
                continue;
            }
            let binding = crate::secrets::row_binding(&name, &incarnation);
            let plain = match self.keys.open(&binding, &stored) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(instance = %name, error = %e, "cannot open a private key to seal it again");
                    continue;
                }
            };
            let new = self
                .keys
                .seal(&binding, &plain)
                .map_err(|e| crate::db::DbError::Query(e.to_string()))?;
            if self.db.replace_private_key(&name, &stored, &new).await? {
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::info!(
                keys = sealed,
                key = self.keys.current_id(),
                "sealed private keys at rest"
            );
        }
        Ok(sealed)
    }

    /// The ids of the keys the database's private keys are sealed with that this daemon
    /// does not hold, with how many rows each.
    pub async fn foreign_key_ids(&self) -> Result<Vec<(String, usize)>, crate::db::DbError> {
        let mut ids: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, _, stored) in self.db.private_keys().await? {
            if let Some(id) = crate::secrets::key_id_of(&stored)
                && !self.keys.holds(id)
            {
                *ids.entry(id.to_string()).or_default() += 1;
            }
        }
        Ok(ids.into_iter().collect())
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
            let ip = n.ip.clone().unwrap_or_else(|| uri_host(&n.uri));
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
        for h in first_round {
            let _ = h.await;
        }
        let _ = db_first.await;
        for i in 0..self.nodes.len() {
            let c = self.clone();
            tokio::spawn(async move { c.node_loop(i).await });
        }
        let c = self.clone();
        tokio::spawn(async move { c.db_loop().await });
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

    /// Re-reads the domains the nodes report as changed, a batch at a time: what is waiting
    /// when one batch ends makes the next, so a burst of events costs a few probes.
    async fn follow_events(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
    ) {
        while let Some((i, name)) = rx.recv().await {
            let mut batch: std::collections::BTreeMap<usize, std::collections::BTreeSet<String>> =
                std::collections::BTreeMap::new();
            batch.entry(i).or_default().insert(name);
            while let Ok((i, name)) = rx.try_recv() {
                batch.entry(i).or_default().insert(name);
            }
            for (i, names) in batch {
                tracing::debug!(node = i, domains = names.len(), "domain events");
                self.refresh_domains(i, names.into_iter().collect()).await;
            }
        }
    }

    /// After an action made or removed things on node `i`: re-reads the instance's domain
    /// and its two volumes (disk and seed), without the cost of a whole poll or even of a
    /// listing of the pool, whose size grows with the number of instances.
    pub(crate) async fn refresh_after_action(&self, i: usize, name: &str) {
        self.refresh_domains(i, vec![name.to_string()]).await;
        let names = vec![
            crate::model::disk_volume(name),
            crate::model::seed_volume(name),
        ];
        match self
            .node_call(i, move |b| b.probe_volumes_named(&names))
            .await
        {
            Ok(found) => {
                let mut inputs = self.inputs.lock();
                let st = &mut inputs.nodes[i];
                let Some(p) = &st.probe else { return };
                let Some(old) = &p.volumes else { return };
                let mut volumes = old.to_vec();
                if !patch_by_name(&mut volumes, |v| &v.name, found).is_empty() {
                    let mut p = crate::hv::NodeProbe::clone(p);
                    p.volumes = Some(Arc::new(volumes));
                    st.probe = Some(Arc::new(p));
                    self.mark_dirty(&mut inputs);
                }
            }
            Err(e) => tracing::debug!(node = i, error = %e, "cannot re-read the volumes"),
        }
    }

    /// Re-reads the named domains of node `i` (after a domain event, or after an action
    /// changed them) and puts them in the picture at once.
    pub(crate) async fn refresh_domains(&self, i: usize, names: Vec<String>) {
        let r = self.node_call(i, move |b| b.probe_named(&names)).await;
        let found = match r {
            Ok(f) => f,
            Err(e) => {
                // The next poll tells the whole story (and marks the node if it is down).
                tracing::debug!(node = i, error = %e, "cannot re-read domains");
                return;
            }
        };
        let mut inputs = self.inputs.lock();
        let inputs = &mut *inputs;
        let st = &mut inputs.nodes[i];
        let found = found
            .into_iter()
            .map(|(name, d)| (name, d.map(Arc::new)))
            .collect();
        let changed = patch_by_name(&mut st.domains, |d| &d.name, found);
        for name in &changed {
            inputs.changed.name(name);
        }
        if !changed.is_empty() {
            // A poll that began before this re-read must not put older domains back.
            st.domains_epoch += 1;
            self.mark_dirty(inputs);
        }
    }

    /// Stores the errors `set_local_error` shows. The `error` file shows each at once; the
    /// database gets the last one of each instance, at most once every
    /// `ERROR_STORE_INTERVAL`, so a user writing garbage to `ctl` as fast as they can costs
    /// the database one statement a second, not one per write.
    async fn error_writer(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, PendingError)>,
    ) {
        let mut due: HashMap<String, PendingError> = HashMap::new();
        let mut stored_at: HashMap<String, Instant> = HashMap::new();
        loop {
            if due.is_empty() {
                match rx.recv().await {
                    Some((name, p)) => {
                        due.insert(name, p);
                    }
                    None => return,
                }
            } else {
                tokio::time::sleep(ERROR_STORE_INTERVAL / 5).await;
            }
            while let Ok((name, p)) = rx.try_recv() {
                due.insert(name, p);
            }
            stored_at.retain(|_, t| t.elapsed() < ERROR_STORE_INTERVAL);
            let ready: Vec<String> = due
                .keys()
                .filter(|n| !stored_at.contains_key(*n))
                .cloned()
                .collect();
            for name in ready {
                let Some(pending) = due.remove(&name) else {
                    continue;
                };
                // Replaced by a later error, or cleared by a commit: nothing to store.
                if self.inputs.lock().pending_errors.get(&name) != Some(&pending) {
                    continue;
                }
                stored_at.insert(name.clone(), Instant::now());
                let stored = self
                    .db
                    .set_error(&name, &pending.incarnation, Some(&pending.message))
                    .await;
                match stored {
                    Ok(rev) => {
                        let mut inputs = self.inputs.lock();
                        if inputs.pending_errors.get(&name) == Some(&pending) {
                            inputs.pending_errors.remove(&name);
                        }
                        // The row shows the error already; only its stamp moved.
                        if let Some(row) = inputs.rows.get_mut(&name)
                            && row.incarnation == pending.incarnation
                        {
                            Arc::make_mut(row).rev = rev;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(instance = %name, error = %e, "cannot store the error")
                    }
                }
            }
        }
    }

    /// Logs a refusal of an action on `name`, at most once every `ERROR_STORE_INTERVAL` per
    /// instance (with the count of those left out since), so no user can flood the log.
    pub(crate) fn log_refusal(&self, name: &str, error: &dyn std::fmt::Display) {
        let mut logged = self.refusals_logged.lock();
        let now = Instant::now();
        let entry = logged.entry(name.to_string()).or_insert((now, 0));
        if entry.1 > 0 && now.duration_since(entry.0) < ERROR_STORE_INTERVAL {
            entry.1 += 1;
            return;
        }
        let left_out = entry.1.saturating_sub(1);
        *entry = (now, 1);
        if left_out > 0 {
            tracing::warn!(instance = name, error = %error, left_out, "refused (and more not logged)");
        } else {
            tracing::warn!(instance = name, error = %error, "refused");
        }
        if logged.len() > 4096 {
            logged.retain(|_, (t, _)| now.duration_since(*t) < ERROR_STORE_INTERVAL);
        }
    }

    async fn node_loop(self: Arc<Self>, i: usize) {
        let mut tick = tokio::time::interval(self.cfg.timing.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(wait) = self.poll_node(i).await {
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn db_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.timing.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll_db().await;
        }
    }

    /// Runs a blocking backend call for node `i` under the libvirt deadline.
    pub async fn node_call<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&dyn NodeBackend) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, CallError> {
        self.node_call_within(i, self.cfg.timing.libvirt_timeout(), f)
            .await
    }

    /// Runs a blocking backend call for node `i` under `deadline`.
    pub async fn node_call_within<T: Send + 'static>(
        &self,
        i: usize,
        deadline: Duration,
        f: impl FnOnce(&dyn NodeBackend) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, CallError> {
        let node = &self.nodes[i];
        if node.overdue.load(Ordering::SeqCst) >= MAX_STUCK_CALLS {
            return Err(CallError::Stuck);
        }
        let backend = node.backend.clone();
        // Whoever comes second — the call returning or the deadline passing — settles the
        // overdue count, under this lock, so a call is counted overdue exactly while it is.
        let state = Arc::new(Mutex::new(CallState::Running));
        let (st, overdue) = (state.clone(), node.overdue.clone());
        let handle = tokio::task::spawn_blocking(move || {
            let r = f(backend.as_ref());
            let mut s = st.lock();
            if *s == CallState::Overdue {
                overdue.fetch_sub(1, Ordering::SeqCst);
            }
            *s = CallState::Done;
            r
        });
        match tokio::time::timeout(deadline, handle).await {
            Ok(Ok(r)) => r.map_err(CallError::Hv),
            Ok(Err(join)) => Err(CallError::Panicked(join.to_string())),
            Err(_) => {
                let mut s = state.lock();
                if *s == CallState::Running {
                    *s = CallState::Overdue;
                    node.overdue.fetch_add(1, Ordering::SeqCst);
                }
                drop(s);
                node.backend.reset();
                Err(CallError::Timeout(deadline))
            }
        }
    }

    /// Polls node `i` once; returns how long to back off when the node timed out.
    pub(crate) async fn poll_node(&self, i: usize) -> Option<Duration> {
        let started = Instant::now();
        let (epoch, with_pool) = {
            let inputs = self.inputs.lock();
            let st = &inputs.nodes[i];
            let listed = st.probe.as_ref().is_some_and(|p| p.volumes.is_some());
            (
                st.domains_epoch,
                !listed || st.polls.is_multiple_of(POOL_EVERY),
            )
        };
        let result = self.node_call(i, move |b| b.probe(with_pool)).await;
        let mut backoff = None;
        {
            let mut inputs = self.inputs.lock();
            let inputs = &mut *inputs;
            let prev_cpu = inputs.prev_cpu[i];
            let st = &mut inputs.nodes[i];
            // Every instance shows its node's reachability.
            let mut reachability_changed = false;
            let mut node_changed = false;
            match result {
                Ok(mut probe) => {
                    if !with_pool {
                        probe.volumes = st.probe.as_ref().and_then(|p| p.volumes.clone());
                    }
                    st.polls += 1;
                    reachability_changed |= st.status != NodeStatus::Online;
                    st.status = NodeStatus::Online;
                    st.cpu_usage = match (prev_cpu, probe.cpu_times) {
                        (Some(a), Some(b)) if b.total > a.total => Some(
                            (b.busy.saturating_sub(a.busy)) as f64 / (b.total - a.total) as f64,
                        ),
                        _ => st.cpu_usage,
                    };
                    let cpu = probe.cpu_times;
                    let domains = std::mem::take(&mut probe.domains);
                    // The node's own numbers, or the poll time to the second, moved.
                    let secs = |t: Option<SystemTime>| {
                        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs())
                    };
                    let now = SystemTime::now();
                    node_changed |= st.probe.as_deref() != Some(&probe)
                        || secs(st.updated_at) != secs(Some(now))
                        || st.cpu_usage.is_some() && cpu != prev_cpu;
                    // Domains re-read while this poll ran are newer than its list: keep them;
                    // the next poll brings a list from after them.
                    if st.domains_epoch == epoch {
                        for name in merge_domains(&mut st.domains, domains) {
                            inputs.changed.name(&name);
                            node_changed = true;
                        }
                    }
                    st.probe = Some(Arc::new(probe));
                    st.updated_at = Some(now);
                    inputs.prev_cpu[i] = cpu;
                }
                Err(e) => {
                    if matches!(e, CallError::Timeout(_) | CallError::Stuck) {
                        backoff = Some(RETRY_AFTER_TIMEOUT);
                    }
                    // A node never read shows nothing: say so, or it looks empty.
                    let msg = match &st.probe {
                        Some(_) => e.to_string(),
                        None => format!("not read yet: {e}"),
                    };
                    if st.status != NodeStatus::Offline(msg.clone()) {
                        tracing::warn!(node = %st.name, error = %msg, "node offline");
                        reachability_changed |= st.status.is_online();
                    }
                    node_changed |= st.last_error.as_deref() != Some(msg.as_str());
                    st.last_error = Some(msg.clone());
                    st.status = NodeStatus::Offline(msg);
                }
            }
            if reachability_changed {
                inputs.changed.everything();
            }
            if reachability_changed || node_changed {
                self.mark_dirty(inputs);
            }
        }
        tracing::trace!(node = i, elapsed = ?started.elapsed(), "polled");
        backoff
    }

    /// Reads the `vm` table, unless its fingerprint is the one the rows this daemon holds
    /// give (`VmFingerprint::of`): every write of every kvmfs moves it, and this daemon's
    /// own writes move the rows it holds alike (they keep the stamp written), so only
    /// another daemon's writes make it read. Every `FULL_READ_EVERY` polls it reads anyway:
    /// rows changed by hand, with SQL, move no stamp.
    async fn poll_db(&self) {
        let epoch = self.inputs.lock().rows_epoch;
        let fingerprint = self.db.vm_fingerprint().await;
        if let Ok(fp) = &fingerprint {
            let inputs = self.inputs.lock();
            let full_due = self.cfg.timing.refresh() * FULL_READ_EVERY;
            if inputs.db_error.is_none()
                && inputs.rows_read.is_some_and(|at| at.elapsed() < full_due)
                && VmFingerprint::of(inputs.rows.values().map(|r| &**r)) == *fp
            {
                return;
            }
        }
        let r = match fingerprint {
            Ok(_) => self.db.list_vms().await,
            Err(e) => Err(e),
        };
        let mut inputs = self.inputs.lock();
        match r {
            Ok(rows) => {
                inputs.rows_read = Some(Instant::now());
                let inputs = &mut *inputs;
                if inputs.db_error.is_some() {
                    tracing::info!("database reachable again");
                    inputs.db_error = None;
                    self.mark_dirty(inputs);
                }
                // Rows changed here while the read ran are newer than what it saw.
                let local_since = &inputs.local_since;
                let newer = |name: &str| local_since.get(name).is_some_and(|e| *e > epoch);
                let mut rows: Vec<InstanceRecord> =
                    rows.into_iter().filter(|r| !newer(&r.name)).collect();
                for r in &mut rows {
                    if let Some(e) = inputs.pending_errors.get(&r.name) {
                        e.apply(r);
                    }
                }
                let kept = inputs.rows.keys().filter(|n| newer(n)).count();
                let unchanged = rows.len() + kept == inputs.rows.len()
                    && rows
                        .iter()
                        .all(|r| inputs.rows.get(&r.name).is_some_and(|old| **old == *r));
                if !unchanged {
                    let mut fresh = RowMap::new();
                    for r in rows {
                        // An unchanged row stays the same object, so nothing downstream moves.
                        let row = match inputs.rows.remove(&r.name) {
                            Some(old) if *old == r => old,
                            _ => {
                                inputs.changed.name(&r.name);
                                Arc::new(r)
                            }
                        };
                        fresh.insert(row.name.clone(), row);
                    }
                    // What is left of the old rows is gone from the table, unless changed here
                    // since the read began.
                    for (name, row) in std::mem::replace(&mut inputs.rows, fresh) {
                        if newer(&name) {
                            inputs.rows.insert(name, row);
                        } else {
                            inputs.changed.name(&name);
                        }
                    }
                    self.mark_dirty(inputs);
                }
                inputs.local_since.retain(|_, e| *e > epoch);
            }
            Err(e) => {
                if inputs.db_error.is_none() {
                    tracing::warn!(error = %e, "database poll failed; serving last known rows");
                }
                let msg = Some(e.to_string());
                if inputs.db_error != msg {
                    inputs.db_error = msg;
                    self.mark_dirty(&mut inputs);
                }
            }
        }
    }

    /// Replaces (or with `None` removes) one row in the inputs, so the caller's change is
    /// visible at once rather than at the next poll.
    pub(crate) fn set_local_row(&self, name: &str, row: Option<InstanceRecord>) {
        let mut inputs = self.inputs.lock();
        inputs.rows_epoch += 1;
        let e = inputs.rows_epoch;
        inputs.local_since.insert(name.to_string(), e);
        match row {
            Some(mut r) => {
                if let Some(e) = inputs.pending_errors.get(name) {
                    e.apply(&mut r);
                }
                inputs.rows.insert(name.to_string(), Arc::new(r));
            }
            None => {
                inputs.rows.remove(name);
                inputs.pending_errors.remove(name);
            }
        }
        inputs.changed.name(name);
        self.mark_dirty(&mut inputs);
    }

    /// Changes one row in the inputs in place (when the caller knows exactly what it wrote
    /// to the database, there is no need to read the row back).
    pub(crate) fn patch_local_row(&self, name: &str, patch: impl FnOnce(&mut InstanceRecord)) {
        let mut inputs = self.inputs.lock();
        let Some(row) = inputs.rows.get(name) else {
            return;
        };
        let mut r = InstanceRecord::clone(row);
        patch(&mut r);
        inputs.rows_epoch += 1;
        let e = inputs.rows_epoch;
        inputs.local_since.insert(name.to_string(), e);
        inputs.rows.insert(name.to_string(), Arc::new(r));
        inputs.changed.name(name);
        self.mark_dirty(&mut inputs);
    }

    /// Notes that the inputs changed (what instances show, in `Inputs::changed`), so the next
    /// `view()` builds anew, and tells the followers of `subscribe`. Takes the inputs to
    /// show that it is called under their lock.
    fn mark_dirty(&self, _inputs: &mut Inputs) {
        self.input_seq.fetch_add(1, Ordering::AcqRel);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Shows `error` in instance `name`'s `error` file at once (only in incarnation
    /// `incarnation` when given), and has it stored in the database in the background (in
    /// order, so the last error is the one kept). Until it is stored — the database may be
    /// down — it is laid over every poll's rows of that incarnation.
    pub(crate) fn set_local_error(&self, name: &str, incarnation: Option<&str>, error: &str) {
        let pending = {
            let mut inputs = self.inputs.lock();
            let Some(row) = inputs.rows.get(name) else {
                return;
            };
            if incarnation.is_some_and(|i| i != row.incarnation) {
                return;
            }
            let pending = PendingError {
                incarnation: row.incarnation.clone(),
                message: error.to_string(),
            };
            let mut r = InstanceRecord::clone(row);
            r.error = Some(error.to_string());
            inputs.rows.insert(name.to_string(), Arc::new(r));
            inputs
                .pending_errors
                .insert(name.to_string(), pending.clone());
            inputs.changed.name(name);
            self.mark_dirty(&mut inputs);
            pending
        };
        let _ = self.errors_tx.send((name.to_string(), pending));
    }

    /// Forgets an error not stored yet: the instance's state moved on (a commit clears it).
    pub(crate) fn clear_pending_error(&self, name: &str) {
        self.inputs.lock().pending_errors.remove(name);
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
            inputs.db_error.clone(),
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

/// Puts what was re-read of some names (`None`: gone) into `list`, which is in name order:
/// replaced, removed or inserted in place. Returns the names that changed.
fn patch_by_name<T: PartialEq>(
    list: &mut Vec<T>,
    name_of: impl Fn(&T) -> &String,
    found: Vec<(String, Option<T>)>,
) -> Vec<String> {
    let mut changed = Vec::new();
    for (name, item) in found {
        match (list.binary_search_by(|x| name_of(x).cmp(&name)), item) {
            (Ok(at), Some(x)) if list[at] != x => list[at] = x,
            (Ok(_), Some(_)) | (Err(_), None) => continue,
            (Ok(at), None) => {
                list.remove(at);
            }
            (Err(at), Some(x)) => list.insert(at, x),
        }
        changed.push(name);
    }
    changed
}

/// Takes a new probe's domains into `current`, keeping the `Arc` of every domain that did not
/// change (so views built from it share their instances). Returns the names of the domains
/// that changed, came or went. Both lists are in name order, so when nothing changed the
/// domains are found at the same positions.
fn merge_domains(current: &mut Vec<Arc<DomainProbe>>, new: Vec<DomainProbe>) -> Vec<String> {
    if current.len() == new.len() && current.iter().zip(&new).all(|(a, b)| **a == *b) {
        return Vec::new();
    }
    let old: HashMap<&str, &Arc<DomainProbe>> =
        current.iter().map(|d| (d.uuid.as_str(), d)).collect();
    let mut changed: Vec<String> = Vec::new();
    let merged: Vec<Arc<DomainProbe>> = new
        .into_iter()
        .map(|d| match old.get(d.uuid.as_str()) {
            Some(o) if ***o == d => Arc::clone(o),
            _ => {
                changed.push(d.name.clone());
                Arc::new(d)
            }
        })
        .collect();
    // Gone: in the old list, not kept in the new one.
    let kept: std::collections::HashSet<*const DomainProbe> =
        merged.iter().map(Arc::as_ptr).collect();
    changed.extend(
        current
            .iter()
            .filter(|d| !kept.contains(&Arc::as_ptr(d)))
            .map(|d| d.name.clone()),
    );
    *current = merged;
    changed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Running,
    Overdue,
    Done,
}

/// Why a bounded backend call did not return a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Hv(HvError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("earlier calls are still hanging; not trying again yet")]
    Stuck,
    #[error("backend call panicked: {0}")]
    Panicked(String),
}

/// The host part of a libvirt URI, for the `host.ip` column (`qemu+ssh://root@kvm1/system`
/// → `kvm1`); `localhost` for local URIs.
fn uri_host(uri: &str) -> String {
    let Some((_, rest)) = uri.split_once("://") else {
        return "localhost".into();
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    if host.is_empty() {
        "localhost".into()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_read_names_are_patched_into_a_name_ordered_list() {
        let mut list: Vec<String> = ["a", "c", "e"].iter().map(|s| s.to_string()).collect();
        let found = vec![
            ("b".to_string(), Some("b".to_string())),
            ("c".to_string(), Some("c".to_string())),
            ("e".to_string(), None),
            ("z".to_string(), None),
        ];
        let changed = patch_by_name(&mut list, |s| s, found);
        assert_eq!(list, ["a", "b", "c"]);
        assert_eq!(changed, ["b", "e"]);
    }

    #[test]
    fn uri_hosts() {
        assert_eq!(uri_host("qemu+ssh://root@kvm1/system"), "kvm1");
        assert_eq!(uri_host("qemu+tcp://10.0.0.5:16509/system"), "10.0.0.5");
        assert_eq!(uri_host("test:///tmp/n.xml"), "localhost");
        assert_eq!(uri_host("qemu:///system"), "localhost");
    }
}

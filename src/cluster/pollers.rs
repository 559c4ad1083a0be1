//! Keeping the picture fresh: one poller per node and one for the database, the domain
//! events the nodes send, and the re-reads after actions. Each puts what it read into the
//! inputs (unchanged objects kept as the same `Arc`) and marks what changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Cluster;
use super::calls::CallError;
use super::view::{NodeStatus, RowMap, SharedFile};
use crate::db::{InstanceRecord, VmFingerprint};
use crate::hv::{DomainProbe, ProbeScope};

/// A node poll lists the storage pool every this many polls (and the first time); actions
/// re-read the volumes they make or remove by name, so the listing only has to catch what
/// others did to the pool.
pub(super) const POOL_EVERY: u64 = 10;

/// What a poll of a node reads. A node without events (or asked `whole`) lists its domains
/// every poll and its pool every `POOL_EVERY` polls, as ever. A node that delivers domain
/// events is listed whole only when its events connection is not the one of its last whole
/// listing (the first, or events may have been missed since), or `full_poll` has passed
/// since: the consistency check; between, the poll reads its own numbers only.
pub(super) fn scope_of(
    st: &super::view::NodeState,
    events: Option<u64>,
    whole: bool,
    full_poll: Duration,
) -> ProbeScope {
    let listed = st.probe.as_ref().is_some_and(|p| p.volumes.is_some());
    let due = match (events, st.full_poll) {
        (None, _) | (_, None) => true,
        (Some(e), Some((at_last, when))) => at_last != Some(e) || when.elapsed() >= full_poll,
    };
    if whole || !listed || (due && events.is_some()) {
        return ProbeScope::ALL;
    }
    ProbeScope {
        domains: due,
        pool: due && st.polls.is_multiple_of(POOL_EVERY),
    }
}

/// After a timed-out call, wait this long before trying the node again.
pub(super) const RETRY_AFTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Puts what was re-read of some names (`None`: gone) into `list`, which is in name order:
/// replaced, removed or inserted in place. Returns the names that changed.
pub(super) fn patch_by_name<T: PartialEq>(
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
pub(super) fn merge_domains(
    current: &mut Vec<Arc<DomainProbe>>,
    new: Vec<DomainProbe>,
) -> Vec<String> {
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

/// The host part of a libvirt URI, for the `host.ip` column (`qemu+ssh://root@kvm1/system`
/// → `kvm1`); `localhost` for local URIs.
pub(super) fn uri_host(uri: &str) -> String {
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

impl Cluster {
    /// Re-reads the domains the nodes report as changed, a batch at a time: what is waiting
    /// when one batch ends makes the next, so a burst of events costs a few probes.
    pub(super) async fn follow_events(
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

    pub(super) async fn node_loop(self: Arc<Self>, i: usize) {
        let mut tick = tokio::time::interval(self.cfg.timing.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(wait) = self.poll_node(i).await {
                tokio::time::sleep(wait).await;
            }
        }
    }

    pub(super) async fn db_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.timing.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = std::time::Instant::now();
            self.poll_db().await;
            self.metrics.db_poll.observe(started.elapsed());
        }
    }

    /// Probes the shared storage every refresh, as a node is polled: a share that does not
    /// answer within the libvirt deadline (the bound a node gets) makes `/status` degraded,
    /// naming the nodes whose instances' disks are there (all of them). Beside the probes,
    /// lists it every `POOL_EVERY` refreshes, as a node's pool (`share_list_loop`).
    pub(super) async fn storage_loop(self: Arc<Self>) {
        let Some(share) = self.storage.clone() else {
            return;
        };
        let lister = self.clone();
        tokio::spawn(async move { lister.share_list_loop().await });
        let mut tick = tokio::time::interval(self.cfg.timing.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = share.probe(self.cfg.timing.libvirt_timeout()).await;
            let msg = r.err().map(|e| e.to_string());
            let mut inputs = self.inputs.lock();
            if inputs.storage_error != msg {
                match &msg {
                    Some(e) => tracing::warn!(error = %e, "shared storage does not answer"),
                    None => tracing::info!(storage = %share.describe(), "shared storage answers"),
                }
                inputs.storage_error = msg;
                self.mark_dirty(&mut inputs);
            }
        }
    }

    /// Lists the shared storage every `POOL_EVERY` refreshes (the first listing was made by
    /// `start`), in a task of its own: a listing is bounded by `[storage] timeout_ms`, which
    /// may be long, and must not hold up the probes `/status` follows. A failed listing
    /// keeps the last one; the log says so once per new error.
    async fn share_list_loop(self: Arc<Self>) {
        let every = self.cfg.timing.refresh() * POOL_EVERY as u32;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let error = self.list_share().await.err().map(|e| e.to_string());
            if error != last_error {
                match &error {
                    Some(e) => tracing::warn!(error = %e, "cannot list the shared storage"),
                    None => tracing::info!("shared storage listed again"),
                }
                last_error = error;
            }
        }
    }

    /// Reads the shared storage's files into the inputs: what `/images` shows. An unchanged
    /// listing changes nothing (the view keeps its images).
    pub(super) async fn list_share(&self) -> Result<(), crate::storage::StorageError> {
        let Some(share) = &self.storage else {
            return Ok(());
        };
        let files: Vec<SharedFile> = share
            .list()
            .await?
            .into_iter()
            .map(|f| SharedFile {
                location: share.location(&f.name),
                name: f.name,
                size_bytes: f.size_bytes,
            })
            .collect();
        let mut inputs = self.inputs.lock();
        if *inputs.share_files != files {
            inputs.share_files = Arc::new(files);
            self.mark_dirty(&mut inputs);
        }
        Ok(())
    }

    /// Polls node `i` once, whole or for its own numbers only (see `scope_of`); returns how
    /// long to back off when the node timed out.
    pub(crate) async fn poll_node(&self, i: usize) -> Option<Duration> {
        self.poll_node_as(i, false).await
    }

    /// Polls node `i` once, listing its domains and pool whatever the events say.
    pub(crate) async fn poll_node_whole(&self, i: usize) -> Option<Duration> {
        self.poll_node_as(i, true).await
    }

    async fn poll_node_as(&self, i: usize, whole: bool) -> Option<Duration> {
        let started = Instant::now();
        let events = self.nodes[i].backend.events();
        let (epoch, scope) = {
            let inputs = self.inputs.lock();
            let st = &inputs.nodes[i];
            let scope = scope_of(st, events, whole, self.cfg.timing.full_poll());
            (st.domains_epoch, scope)
        };
        let result = self.node_call(i, move |b| b.probe(scope)).await;
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
                    if !scope.pool {
                        probe.volumes = st.probe.as_ref().and_then(|p| p.volumes.clone());
                    }
                    if scope.domains {
                        st.full_poll = Some((events, Instant::now()));
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
                    if scope.domains && st.domains_epoch == epoch {
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
    /// another daemon's writes make it read. Every `full_poll_ms` it reads anyway (the
    /// consistency check, as for the nodes): rows changed by hand, with SQL, move no stamp.
    /// Takes the drained nodes as the database lists them.
    pub(crate) fn set_drained(&self, drained: &[String]) {
        let mut inputs = self.inputs.lock();
        let mut changed = false;
        for n in &mut inputs.nodes {
            let d = drained.contains(&n.name);
            if n.drained != d {
                n.drained = d;
                changed = true;
            }
        }
        if changed {
            self.mark_dirty(&mut inputs);
        }
    }

    pub(super) async fn poll_db(&self) {
        if let Ok(drained) = self.db.drained_nodes().await {
            self.set_drained(&drained);
        }
        let epoch = self.inputs.lock().rows_epoch;
        let fingerprint = self.db.vm_fingerprint().await;
        if let Ok(fp) = &fingerprint {
            let inputs = self.inputs.lock();
            let full_due = self.cfg.timing.full_poll();
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
    fn a_node_with_events_is_listed_whole_only_when_its_connection_changed_or_it_is_due() {
        use crate::cluster::view::fixtures::{online, probe};
        let every = Duration::from_secs(60);
        let mut listed = probe(2, 1024);
        listed.volumes = Some(Arc::new(Vec::new()));
        let mut st = online("n1", listed, Vec::new());
        let domains_only = ProbeScope {
            domains: true,
            pool: false,
        };
        let numbers_only = ProbeScope {
            domains: false,
            pool: false,
        };
        // Without events: domains every poll, the pool every POOL_EVERY polls.
        st.polls = 3;
        assert_eq!(scope_of(&st, None, false, every), domains_only);
        st.polls = POOL_EVERY;
        assert_eq!(scope_of(&st, None, false, every), ProbeScope::ALL);
        // With events: whole at first, then the node's numbers only…
        st.polls = 3;
        assert_eq!(scope_of(&st, Some(1), false, every), ProbeScope::ALL);
        st.full_poll = Some((Some(1), Instant::now()));
        assert_eq!(scope_of(&st, Some(1), false, every), numbers_only);
        // …whole again on a new connection (events may have been missed), when due, when
        // asked, and when events stop.
        assert_eq!(scope_of(&st, Some(2), false, every), ProbeScope::ALL);
        assert_eq!(scope_of(&st, Some(1), true, every), ProbeScope::ALL);
        assert_eq!(
            scope_of(&st, Some(1), false, Duration::ZERO),
            ProbeScope::ALL
        );
        assert_eq!(scope_of(&st, None, false, every), domains_only);
        // A node whose pool was never listed is listed whole.
        let mut fresh = online("n2", probe(2, 1024), Vec::new());
        fresh.full_poll = Some((Some(1), Instant::now()));
        assert_eq!(scope_of(&fresh, Some(1), false, every), ProbeScope::ALL);
    }

    #[test]
    fn uri_hosts() {
        assert_eq!(uri_host("qemu+ssh://root@kvm1/system"), "kvm1");
        assert_eq!(uri_host("qemu+tcp://10.0.0.5:16509/system"), "10.0.0.5");
        assert_eq!(uri_host("test:///tmp/n.xml"), "localhost");
        assert_eq!(uri_host("qemu:///system"), "localhost");
    }
}

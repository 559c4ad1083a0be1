//! Crash recovery: finishes or undoes the operations a dead daemon left half-done, and
//! reports what the database and the nodes disagree on.
//!
//! A build or a delete records, before each step, what it is about to do: the row's state
//! (`building`, `deleting`) and step, the parts it is about to make (`vm.made`) and the
//! daemon doing it (`vm.worker`). A row in `building` or `deleting` is *abandoned* when no
//! operation of this daemon holds it (`Cluster::claim`) and its worker is this daemon (so
//! it died and was restarted: the state-dir lock guarantees no other live daemon has the
//! id) or a daemon whose heartbeat is older than the lease. For each abandoned row:
//!
//! - `building` whose domain was made and is active on its node: the crash came after the
//!   domain started, so the build is finished (`ready`);
//! - any other `building`: undone like a failed build — the parts in `made` are removed,
//!   the addresses released, the row reads `failed: interrupted …` and takes a new spec;
//! - `deleting`: the delete is finished (parts removed, row and addresses deleted);
//! - `migrating`: both nodes are asked where the domain is, exactly one copy is kept, its
//!   snapshots are defined again there and the row names that node (see
//!   `actions::migrate`); it waits while either node does not answer.
//!
//! Rows on an offline node wait for the node. Addresses held for a name with no row (or a
//! row that holds none) are released. Domains kvmfs made that have no row, volumes named
//! like an instance's that has no row, and `ready` rows whose domain is gone are never
//! touched (they may be another kvmfs's, or a user's), but are logged once each.
//!
//! It runs once at start and then every `timing.reconcile_ms`; the heartbeat is written
//! every sixth of the lease (`timing.worker_lease_ms`).
//!
//! Several daemons on one database reconcile once, not once each: the one holding the
//! reconciliation lease (table `reconcile_lease`, renewed with the heartbeat, taken by
//! another once it is a lease old) does all of the above. The others only finish their own
//! abandoned operations (after a restart), which no other daemon would take while they
//! beat.

use std::collections::HashSet;
use std::sync::Arc;

use crate::db::{DbError, InstanceRecord, InstanceState};
use crate::model::instance_of_volume;

use super::Cluster;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Builds found complete and marked ready.
    pub finished: Vec<String>,
    /// Builds undone.
    pub undone: Vec<String>,
    /// Deletes finished.
    pub deleted: Vec<String>,
    /// Migrations ended: `name → node` where it now is.
    pub migrations: Vec<String>,
    /// Addresses released: `pool/address (instance)`.
    pub released: Vec<String>,
    /// Abandoned operations left for a later round (node offline, a call failed).
    pub waiting: Vec<String>,
    /// Disagreements reported but left alone.
    pub noticed: Vec<String>,
}

impl Report {
    pub fn changed_anything(&self) -> bool {
        !(self.finished.is_empty()
            && self.undone.is_empty()
            && self.deleted.is_empty()
            && self.migrations.is_empty()
            && self.released.is_empty())
    }
}

impl Cluster {
    /// Writes the heartbeat and reconciles, once now and then periodically; never returns.
    pub(super) async fn worker_loop(self: Arc<Self>) {
        let description = format!(
            "pid {} state_dir {}",
            std::process::id(),
            self.cfg.state_dir.display()
        );
        let period = self.cfg.timing.reconcile();
        let heartbeat = self.cfg.timing.worker_lease() / 6;
        let mut next_reconcile = tokio::time::Instant::now();
        let mut noticed_before = HashSet::new();
        let lease = i64::try_from(self.cfg.timing.worker_lease().as_secs()).unwrap_or(i64::MAX);
        let mut leading = false;
        loop {
            if let Err(e) = self.db.heartbeat(&self.worker_id, &description).await {
                tracing::debug!(error = %e, "cannot write the heartbeat");
            }
            let leads = match self.db.hold_reconcile_lease(&self.worker_id, lease).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot renew the reconciliation lease");
                    false
                }
            };
            if leads != leading {
                tracing::info!(
                    worker = %self.worker_id,
                    "{}",
                    if leads {
                        "this daemon now reconciles for every daemon on the database"
                    } else {
                        "another daemon reconciles now; this one finishes only its own work"
                    }
                );
                leading = leads;
            }
            if tokio::time::Instant::now() >= next_reconcile {
                let report = self.reconcile_as(leads).await;
                log_report(&report, &mut noticed_before);
                next_reconcile = tokio::time::Instant::now() + period;
            }
            let until = next_reconcile.min(tokio::time::Instant::now() + heartbeat);
            tokio::time::sleep_until(until).await;
        }
    }

    /// Whether daemon `worker` has written its heartbeat within the lease.
    pub(super) async fn worker_is_live(&self, worker: &str) -> Result<bool, DbError> {
        let beats = self.db.heartbeats().await?;
        let lease = i64::try_from(self.cfg.timing.worker_lease().as_secs()).unwrap_or(i64::MAX);
        Ok(beats
            .get(worker)
            .is_some_and(|t| crate::db::unix_now() - t <= lease))
    }

    /// One reconciliation round as the lease holder (see the module note).
    pub async fn reconcile(self: &Arc<Self>) -> Report {
        self.reconcile_as(true).await
    }

    /// One reconciliation round; without the lease (`leading` false), only of this
    /// daemon's own abandoned operations.
    pub async fn reconcile_as(self: &Arc<Self>, leading: bool) -> Report {
        let mut report = Report::default();
        let (rows, beats) = match (self.db.list_vms().await, self.db.heartbeats().await) {
            (Ok(r), Ok(b)) => (r, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "reconciliation skipped: database unavailable");
                return report;
            }
        };
        let now = crate::db::unix_now();
        let lease = i64::try_from(self.cfg.timing.worker_lease().as_secs()).unwrap_or(i64::MAX);
        let dead = |row: &InstanceRecord| match row.worker.as_deref() {
            Some(w) if w == self.worker_id => true,
            _ if !leading => false,
            Some(w) => beats.get(w).is_none_or(|t| now - t > lease),
            None => now - row.updated_at > lease,
        };
        let mut polled = HashSet::new();
        for row in &rows {
            if !row.state.in_operation() || !dead(row) {
                continue;
            }
            let Some(_claim) = self.claim(&row.name) else {
                continue;
            };
            if let Err(e) = self.recover(row, &mut polled, &mut report).await {
                tracing::warn!(instance = %row.name, error = %e, "cannot recover the interrupted operation yet");
                report.waiting.push(row.name.clone());
            }
        }
        if !leading {
            return report;
        }
        // What failed builds could not remove, once their nodes answer.
        for row in rows
            .iter()
            .filter(|r| r.state == InstanceState::Failed && !r.made.is_empty())
        {
            let Some(_claim) = self.claim(&row.name) else {
                continue;
            };
            if let Err(e) = self.remove_leftovers(row).await {
                tracing::debug!(instance = %row.name, error = %e, "leftovers stay for now");
                report.waiting.push(row.name.clone());
            }
        }
        self.release_strays(&mut report).await;
        // Drains begun by a daemon that stopped, and instances a drain could not move yet.
        let view = self.view();
        for n in view.nodes.values().filter(|n| n.drained) {
            let holds = rows.iter().any(|r| {
                r.state == InstanceState::Ready && r.node.as_deref() == Some(n.name.as_str())
            });
            if holds {
                self.start_evacuation(&n.name);
            }
        }
        // Keys another (older) kvmfs on the database stored in the clear.
        if let Err(e) = self.seal_keys_at_rest().await {
            tracing::debug!(error = %e, "cannot seal private keys yet");
        }
        self.notice_disagreements(&rows, &mut report);
        let repairs = report.finished.len()
            + report.undone.len()
            + report.deleted.len()
            + report.migrations.len()
            + report.released.len();
        self.metrics
            .reconcile_repairs
            .add(u64::try_from(repairs).unwrap_or(u64::MAX));
        report
    }

    /// Finishes or undoes one abandoned operation.
    async fn recover(
        self: &Arc<Self>,
        row: &InstanceRecord,
        polled: &mut HashSet<usize>,
        report: &mut Report,
    ) -> Result<(), String> {
        let name = row.name.as_str();
        let node = row.node.as_deref();
        let ni = node.and_then(|n| self.node_index(n));
        if let (Some(n), None) = (node, ni)
            && !row.made.is_empty()
        {
            return Err(format!("node {n} is not configured"));
        }
        if let Some(i) = ni
            && !row.made.is_empty()
        {
            // Decide on the node's state now, not on a poll from before the crash.
            if polled.insert(i) {
                self.poll_node_whole(i).await;
            }
            if !self
                .view()
                .nodes
                .get(&self.nodes[i].name)
                .is_some_and(|n| n.online)
            {
                return Err(format!("node {} is offline", self.nodes[i].name));
            }
        }
        let took = self
            .db
            .take_over(name, row.state, row.worker.as_deref(), &self.worker_id)
            .await
            .map_err(|e| e.to_string())?;
        if !took {
            return Ok(());
        }
        match row.state {
            InstanceState::Migrating => {
                let landing = self.recover_migration(row).await?;
                let node = match landing {
                    super::actions::Landing::Target => row.migrate_to.as_deref(),
                    super::actions::Landing::Source => row.node.as_deref(),
                };
                tracing::info!(instance = name, node = ?node, "reconciliation: ended an interrupted migration");
                report
                    .migrations
                    .push(format!("{name} → {}", node.unwrap_or("?")));
            }
            InstanceState::Deleting => {
                self.finish_delete(name, node, row.made, None)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    instance = name,
                    "reconciliation: finished an interrupted delete"
                );
                report.deleted.push(name.to_string());
            }
            _ => {
                // Asked of the node itself, by the row's name: the picture may not match
                // this row with its domain yet (it may still hold an older row).
                let active = match ni {
                    Some(i) if row.made.domain => {
                        let n = vec![name.to_string()];
                        match self.node_call(i, move |b| b.probe_named(&n)).await {
                            Ok(found) => found
                                .into_iter()
                                .any(|(_, d)| d.is_some_and(|d| d.state.is_active())),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    _ => false,
                };
                if row.made.domain && active {
                    self.db
                        .finish_build(name)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(
                        instance = name,
                        "reconciliation: the interrupted build had started its domain; ready"
                    );
                    report.finished.push(name.to_string());
                } else {
                    let left = match node {
                        Some(n) => self.remove_parts(name, n, row.made, None).await,
                        None => row.made,
                    };
                    let reason = format!(
                        "interrupted during step \"{}\": kvmfs stopped before the build \
                         finished; what it made was removed; write spec.json again",
                        row.step
                    );
                    self.db
                        .fail_build(name, &reason, left)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !left.is_empty() {
                        tracing::warn!(instance = name, left = %left, "reconciliation: could not remove everything; will retry on rmdir");
                    }
                    tracing::info!(instance = name, step = %row.step, "reconciliation: undid an interrupted build");
                    report.undone.push(name.to_string());
                }
                self.refresh_row(name).await;
                if let Some(i) = ni {
                    self.poll_node_whole(i).await;
                }
            }
        }
        Ok(())
    }

    /// Releases addresses held for instances that hold none.
    async fn release_strays(&self, report: &mut Report) {
        let strays = match self.db.stray_addresses().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list stray addresses");
                return;
            }
        };
        for (pool, address, vm) in strays {
            let Some(_claim) = self.claim(&vm) else {
                continue;
            };
            match self.db.release_stray_address(&pool, &address, &vm).await {
                Ok(true) => {
                    tracing::info!(pool = %pool, address = %address, instance = %vm, "reconciliation: released a stray address");
                    report.released.push(format!("{pool}/{address} ({vm})"));
                }
                Ok(false) => {}
                Err(DbError::Timeout(_) | DbError::Unavailable(_)) => return,
                Err(e) => tracing::warn!(error = %e, "cannot release a stray address"),
            }
        }
    }

    /// Lists what the nodes and the database disagree on and reconciliation leaves alone.
    fn notice_disagreements(&self, rows: &[InstanceRecord], report: &mut Report) {
        let view = self.view();
        let named: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for node in view.nodes.values().filter(|n| n.online) {
            for v in node.volumes.iter().flat_map(|v| v.iter()) {
                if let Some(i) = instance_of_volume(&v.name)
                    && !named.contains(i)
                {
                    report.noticed.push(format!(
                        "volume {} on node {} looks like an instance's, but instance {i} has \
                         no row: left alone",
                        v.name, node.name
                    ));
                }
            }
        }
        for inst in view.instances.values() {
            let Some(dom) = &inst.domain else {
                continue;
            };
            if inst.row.is_none() && dom.devices.kvmfs_owner.is_some() {
                report.noticed.push(format!(
                    "domain {} on node {} was made by kvmfs but has no row: left alone",
                    dom.name,
                    inst.node.as_deref().unwrap_or("?")
                ));
            }
        }
        for row in rows.iter().filter(|r| r.state == InstanceState::Ready) {
            let Some(node) = row.node.as_deref() else {
                continue;
            };
            let online = view.nodes.get(node).is_some_and(|n| n.online);
            let has_domain = view
                .instances
                .get(&row.name)
                .is_some_and(|i| i.domain.is_some());
            if online && !has_domain {
                report.noticed.push(format!(
                    "instance {} is ready but has no domain on node {node}",
                    row.name
                ));
            }
        }
    }
}

/// Logs what a round did, and each disagreement once (until it goes away and comes back).
fn log_report(report: &Report, noticed_before: &mut HashSet<String>) {
    if report.changed_anything() {
        tracing::info!(
            finished = ?report.finished,
            undone = ?report.undone,
            deleted = ?report.deleted,
            migrations = ?report.migrations,
            released = ?report.released,
            "reconciliation fixed interrupted operations"
        );
    }
    let now: HashSet<String> = report.noticed.iter().cloned().collect();
    for n in now.difference(noticed_before) {
        tracing::warn!("reconciliation: {n}");
    }
    *noticed_before = now;
}

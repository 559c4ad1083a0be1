//! Moving an instance to another node: `echo NODE > instances/NAME/node` (`migrate`), and
//! every instance of a drained node (`drain_node`, `echo drain > nodes/NODE/ctl`).
//!
//! A move is recorded before anything happens on a node, and each step after it, so that a
//! crash at any point is settled by the reconciliation into exactly one domain on one node
//! with the row naming it:
//!
//! 1. under the placement lock, the row goes `ready` → `migrating` with `migrate_to` (the
//!    target holds its room from then on, as the source still does);
//! 2. if it has snapshots, their XML is stored in the row (`saving snapshots`) and their
//!    metadata taken off the source — libvirt does not migrate a domain with snapshot
//!    metadata; their data stays in the disk images, which move with the domain;
//! 3. `moving`: libvirt migrates it — live if it runs (its disks are shared: nothing is
//!    copied), its definition only if it is stopped;
//! 4. whatever libvirt answered, both nodes are asked where the domain is now
//!    (`settle_migration`): a domain running on the target, or there and no longer on
//!    the source, has arrived (a copy left on the source is removed); otherwise it is on
//!    the source (a paused copy on the target is removed, a source a cut-off migration
//!    left paused resumed);
//! 5. the snapshots are defined again where it is, and the row goes back to `ready` on
//!    that node, with the reason in `error` if it stayed.
//!
//! The reconciliation runs step 4 and 5 for a `migrating` row whose daemon died.

use std::sync::Arc;

use super::{ActionError, Claim, one_word, too_long, unknown_command};
use crate::cluster::Cluster;
use crate::cluster::placement::{self, Committed, Need};
use crate::db::InstanceState;
use crate::failpoint;
use crate::hv::{DomainOp, DomainProbe, DomainState, MigrateHow, SavedSnapshot};
use crate::model::NodeName;

/// Where a move left an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    /// On the target: it arrived.
    Target,
    /// Still (or again) on the source.
    Source,
}

/// A move recorded in the database, for the steps that follow.
struct Move {
    name: String,
    from: usize,
    to: usize,
    how: MigrateHow,
}

impl Cluster {
    /// `echo NODE > instances/NAME/node`: checks the move and records it (the instance is
    /// `migrating` when this returns), then runs it on its own task, whose result the
    /// returned handle gives. Writing the node it is on does nothing (`None`). Refusals
    /// (but `EACCES`, `ENOENT`, `ESTALE`) go to the instance's `error` here, and a move
    /// that fails records why itself: the caller records nothing.
    pub async fn migrate(
        self: &Arc<Self>,
        name: &str,
        incarnation: &str,
        uid: u32,
        text: &[u8],
    ) -> Result<Option<tokio::task::JoinHandle<Result<(), ActionError>>>, ActionError> {
        let r = self.begin_move(name, incarnation, uid, text).await;
        if let Err(e) = &r
            && !matches!(
                e,
                ActionError::NotOwner(_) | ActionError::NotFound(_) | ActionError::Stale(_)
            )
        {
            self.record_error(name, Some(incarnation), e);
        }
        let Some((mv, claim)) = r? else {
            return Ok(None);
        };
        let c = self.clone();
        Ok(Some(tokio::spawn(
            async move { c.run_move(mv, claim).await },
        )))
    }

    /// `migrate` up to the move recorded.
    async fn begin_move(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        text: &[u8],
    ) -> Result<Option<(Move, Claim)>, ActionError> {
        let word = one_word(text)
            .ok_or_else(|| ActionError::Invalid(too_long("node", text.len())))?
            .trim();
        let target = NodeName::new(word)
            .map_err(|e| ActionError::Invalid(format!("node: {e}; write a node's name")))?;
        self.check_owner(name, Some(incarnation), uid)?;
        let claim = self.claim_for(name).await?;
        let row = self.current_row(name, incarnation, uid).await?;
        if row.node.as_deref() == Some(target.as_str()) && row.state == InstanceState::Ready {
            return Ok(None);
        }
        let mv = self.record_move(&row, Some(target.as_str())).await?;
        Ok(Some((mv, claim)))
    }

    /// Moves `row` to `target`, or to the best node that shares its storage: step 1 of a
    /// move, after its rules — a ready instance whose node and domain are there, a
    /// configured, online, undrained target with room for it, and disks on storage both
    /// nodes share.
    async fn record_move(
        &self,
        row: &crate::db::InstanceRecord,
        target: Option<&str>,
    ) -> Result<Move, ActionError> {
        let name = row.name.as_str();
        if row.state != InstanceState::Ready {
            return Err(ActionError::Busy(format!(
                "instance {name} is {}; only a built instance moves",
                row.state
            )));
        }
        let from_name = row.node.clone().unwrap_or_default();
        let from = self.node_index(&from_name).ok_or_else(|| {
            ActionError::Backend(format!("its node {from_name} is not configured"))
        })?;
        let view = self.view();
        let online = |n: &str| view.nodes.get(n).is_some_and(|v| v.online);
        if let Some(t) = target {
            if self.node_index(t).is_none() {
                return Err(ActionError::Invalid(format!("node {t} is not configured")));
            }
            if !online(t) {
                return Err(ActionError::Backend(format!("node {t} is offline")));
            }
            if view.nodes.get(t).is_some_and(|v| v.drained) {
                return Err(ActionError::NoCapacity(format!(
                    "node {t} is drained: it takes no instances"
                )));
            }
        }
        if !online(&from_name) {
            return Err(ActionError::Backend(format!(
                "instance {name}: its node {from_name} is offline"
            )));
        }
        let Some(domain) = view.instances.get(name).and_then(|i| i.domain.clone()) else {
            return Err(ActionError::Busy(format!(
                "instance {name} has no domain on node {from_name}"
            )));
        };
        // Where it may go without copying its disks.
        let among: Vec<String> = (0..self.nodes.len())
            .filter(|&i| i != from && (row.made.shared || self.pools_shared(from, i)))
            .map(|i| self.nodes[i].name.clone())
            .collect();
        if target.is_some_and(|t| !among.iter().any(|a| a == t)) {
            return Err(ActionError::Unsupported(format!(
                "instance {name}: its disks are in node {from_name}'s own pool; kvmfs moves \
                 only instances on shared storage ([storage], pools declared pool_shared on \
                 both nodes, or netfs pools of the same source), without copying disks"
            )));
        }
        let networks: Vec<&str> = self.cfg.networks.iter().map(|n| n.name.as_str()).collect();
        let need = Need {
            vcpus: row.vcpus.and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            ram_mb: row.ram_mb.and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
            // Its disk exists already: no image is needed where it goes.
            image: "",
            image_shared: true,
            networks: &networks,
            node: target,
            among: Some(&among),
        };
        let recorded = {
            let _guard = self.place_lock.lock().await;
            self.db
                .begin_migration(
                    name,
                    &row.incarnation,
                    &from_name,
                    &self.worker_id,
                    &Committed::domains_to_check(&view),
                    |loads| {
                        placement::choose(
                            &view,
                            &need,
                            &Committed::from_loads(loads),
                            &self.cfg.placement,
                        )
                        .map_err(ActionError::from)
                    },
                )
                .await
        };
        self.refresh_row(name).await;
        let (to_name, _) = recorded?;
        let to = self
            .node_index(&to_name)
            .ok_or_else(|| ActionError::Invalid(format!("node {to_name} is not configured")))?;
        tracing::info!(instance = name, from = %from_name, to = %to_name, live = domain.state.is_active(), "migrating");
        failpoint::hit("migrate:recorded");
        Ok(Move {
            name: name.to_string(),
            from,
            to,
            how: MigrateHow {
                live: domain.state.is_active(),
                // libvirt tells an NFS mount (a netfs pool) is shared by itself; a pool
                // declared shared may be a filesystem it cannot tell.
                declared_shared: !row.made.shared && self.pool_shared(from),
            },
        })
    }

    /// Whether node `i`'s pool is declared shared storage.
    fn pool_shared(&self, i: usize) -> bool {
        self.cfg
            .nodes
            .iter()
            .find(|n| n.name.as_str() == self.nodes[i].name)
            .is_some_and(|n| n.pool_shared)
    }

    /// Whether the pools of nodes `a` and `b` are one storage: both declared shared
    /// (`pool_shared`), or both `netfs` pools of the same source (as last listed).
    pub(crate) fn pools_shared(&self, a: usize, b: usize) -> bool {
        if self.pool_shared(a) && self.pool_shared(b) {
            return true;
        }
        let view = self.view();
        let source = |i: usize| {
            view.nodes
                .get(&self.nodes[i].name)
                .and_then(|n| n.pool_source.clone())
        };
        matches!((source(a), source(b)), (Some(x), Some(y)) if x == y)
    }

    /// `echo drain > nodes/NODE/ctl` (root only): the node takes no instances from now on
    /// (placement and moves pass it by, on every daemon of the database), and its instances
    /// are moved, one at a time, to the best nodes that share their storage; one that
    /// cannot move stays, with the reason in its `error`. `undrain` ends it.
    pub async fn node_control(
        self: &Arc<Self>,
        node: &str,
        uid: u32,
        cmd: NodeControl,
    ) -> Result<(), ActionError> {
        if uid != 0 {
            return Err(ActionError::NotOwner(format!(
                "only root drains node {node}"
            )));
        }
        if self.node_index(node).is_none() {
            return Err(ActionError::NotFound(format!(
                "node {node} is not configured"
            )));
        }
        let drained = cmd == NodeControl::Drain;
        let set = match self.db.gate() {
            Ok(()) => self.db.set_drained(node, drained).await,
            Err(e) => Err(e),
        };
        if let Err(e) = set {
            tracing::warn!(node, drained, error = %e, "cannot change the node's drain");
            return Err(e.into());
        }
        if let Ok(all) = self.db.drained_nodes().await {
            self.set_drained(&all);
        }
        tracing::info!(node, drained, "node drain changed");
        if drained {
            self.start_evacuation(node);
        }
        Ok(())
    }

    /// Moves the instances off drained node `node` on a task of its own, unless this
    /// daemon is at it already. Also called by every reconciliation of the lease holder
    /// for each drained node that still has instances, so a drain outlives the daemon
    /// that began it, and instances that could not move are tried again.
    pub(crate) fn start_evacuation(self: &Arc<Self>, node: &str) {
        if !self.evacuating.lock().insert(node.to_string()) {
            return;
        }
        let c = self.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            let left = c.evacuate(&node).await;
            c.evacuating.lock().remove(&node);
            if left > 0 {
                tracing::warn!(node, left, "drain: instances that cannot move stay for now");
            }
        });
    }

    /// Moves every ready instance off drained node `node`, one at a time, while it stays
    /// drained. Returns how many are left there.
    async fn evacuate(self: &Arc<Self>, node: &str) -> usize {
        let mut tried = std::collections::HashSet::new();
        loop {
            let view = self.view();
            if !view.nodes.get(node).is_some_and(|n| n.drained) {
                return 0;
            }
            let left: Vec<_> = view
                .instances
                .values()
                .filter_map(|i| i.row.clone())
                .filter(|r| r.node.as_deref() == Some(node) && r.state == InstanceState::Ready)
                .collect();
            let Some(row) = left.iter().find(|r| !tried.contains(&r.name)) else {
                return left.len();
            };
            tried.insert(row.name.clone());
            let Some(claim) = self.claim(&row.name) else {
                continue;
            };
            let row = match self.db.get_vm(&row.name).await {
                Ok(Some(r)) if r.node.as_deref() == Some(node) => r,
                _ => continue,
            };
            match self.record_move(&row, None).await {
                Ok(mv) => {
                    if let Err(e) = self.clone().run_move(mv, claim).await {
                        tracing::warn!(instance = %row.name, node, error = %e, "drain: it stays");
                    }
                }
                Err(e) => {
                    self.record_error(&row.name, Some(&row.incarnation), &e);
                    tracing::warn!(instance = %row.name, node, error = %e, "drain: it cannot move")
                }
            }
        }
    }

    /// Steps 2 to 5 of a recorded move. The error is why the instance stayed where it was.
    async fn run_move(self: Arc<Self>, mv: Move, _claim: Claim) -> Result<(), ActionError> {
        let name = mv.name.clone();
        let started = std::time::Instant::now();
        let (from, to) = (mv.from, mv.to);
        let n = name.clone();
        let saved = match self.action_call(from, move |b| b.saved_snapshots(&n)).await {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot read its snapshots on the source: {e}");
                return self.end_move(&mv, Landing::Source, &[], Some(why)).await;
            }
        };
        let mut failure = None;
        if !saved.is_empty() {
            let json = serde_json::to_string(&saved).unwrap_or_default();
            if let Err(e) = self
                .db
                .set_migration_step(&name, "saving snapshots", Some(&json))
                .await
            {
                let why = format!("cannot store its snapshots' definitions: {e}");
                return self.end_move(&mv, Landing::Source, &[], Some(why)).await;
            }
            failpoint::hit("migrate:snapshots saved");
            let n = name.clone();
            if let Err(e) = self
                .action_call(from, move |b| b.forget_snapshots(&n))
                .await
            {
                failure = Some(format!("cannot take its snapshots off the source: {e}"));
            } else {
                failpoint::hit("migrate:snapshots forgotten");
            }
        }
        if failure.is_none() {
            match self.db.set_migration_step(&name, "moving", None).await {
                Ok(_) => match self.call_migrate(&name, from, to, mv.how).await {
                    Ok(()) => failpoint::hit("migrate:moved"),
                    Err(e) => failure = Some(e),
                },
                Err(e) => failure = Some(format!("cannot record the move: {e}")),
            }
        }
        // Wherever libvirt says it is, the nodes have the last word.
        let landing = loop {
            match self.settle_migration(&name, from, to).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "cannot tell where the migration left it yet");
                    if started.elapsed() > self.cfg.timing.migrate_timeout() {
                        // The reconciliation settles it once both nodes answer.
                        return Err(ActionError::Backend(format!(
                            "instance {name}: where the migration left it is not known yet \
                             ({e}); it is settled once both nodes answer"
                        )));
                    }
                    tokio::time::sleep(self.cfg.timing.refresh()).await;
                }
            }
        };
        let failure = match landing {
            Landing::Target => None,
            Landing::Source => Some(failure.unwrap_or_else(|| "libvirt did not move it".into())),
        };
        let r = self.end_move(&mv, landing, &saved, failure).await;
        match landing {
            Landing::Target => self.metrics.migrations.observe(started.elapsed()),
            Landing::Source => self.metrics.migrations_failed.inc(),
        }
        r
    }

    /// Step 3: libvirt's migration, on a blocking thread. Past `migrate_timeout_ms` libvirt
    /// is asked to abort it, and the call is still waited for: where the domain ends up is
    /// asked of the nodes only once libvirt no longer moves it, or a copy found midway
    /// could be taken for a leftover. (The instance stays claimed, `migrating`, meanwhile:
    /// a node that never answers keeps it so, as it keeps its other calls.)
    async fn call_migrate(
        &self,
        name: &str,
        from: usize,
        to: usize,
        how: MigrateHow,
    ) -> Result<(), String> {
        let (n, source, dest) = (
            name.to_string(),
            self.nodes[from].backend.clone(),
            self.nodes[to].backend.clone(),
        );
        let mut call = tokio::task::spawn_blocking(move || source.migrate(&n, dest.as_ref(), how));
        let bound = self.cfg.timing.migrate_timeout();
        let joined = match tokio::time::timeout(bound, &mut call).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!(
                    instance = name,
                    ?bound,
                    "migration past its bound: aborting it"
                );
                let n = name.to_string();
                if let Err(e) = self.action_call(from, move |b| b.abort_job(&n)).await {
                    tracing::warn!(instance = name, error = %e, "cannot abort the migration");
                }
                let _ = call.await;
                return Err(format!(
                    "libvirt did not finish it within {bound:?}; it was aborted"
                ));
            }
        };
        match joined {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the migration call panicked: {e}")),
        }
    }

    /// Step 5: the snapshots defined again where it is, the row `ready` there.
    async fn end_move(
        &self,
        mv: &Move,
        landing: Landing,
        saved: &[SavedSnapshot],
        failure: Option<String>,
    ) -> Result<(), ActionError> {
        let name = mv.name.as_str();
        let at = match landing {
            Landing::Target => mv.to,
            Landing::Source => mv.from,
        };
        let node = self.nodes[at].name.clone();
        let mut note = failure.map(|f| {
            format!(
                "migration to {} failed: {f}; it stays on {node}",
                self.nodes[mv.to].name
            )
        });
        if !saved.is_empty() {
            let (n, s) = (name.to_string(), saved.to_vec());
            match self
                .action_call(at, move |b| b.redefine_snapshots(&n, &s))
                .await
            {
                Ok(()) => failpoint::hit("migrate:snapshots restored"),
                Err(e) => {
                    tracing::warn!(instance = name, error = %e, "cannot define its snapshots again");
                    let lost = format!("its snapshots could not be defined again on {node}: {e}");
                    note = Some(match note {
                        Some(n) => format!("{n}; {lost}"),
                        None => lost,
                    });
                }
            }
        }
        let r = self.db.end_migration(name, &node, note.as_deref()).await;
        self.refresh_row(name).await;
        for i in [mv.from, mv.to] {
            self.refresh_domains(i, vec![name.to_string()]).await;
        }
        if let Err(e) = r {
            // The row stays `migrating`; the reconciliation ends it.
            return Err(ActionError::from(e));
        }
        match (landing, note) {
            (Landing::Target, None) => {
                tracing::info!(instance = name, node = %node, "migrated");
                Ok(())
            }
            (_, Some(why)) => {
                tracing::warn!(instance = name, "{why}");
                Err(ActionError::Backend(format!("instance {name}: {why}")))
            }
            (Landing::Source, None) => Ok(()),
        }
    }

    /// Step 4: asks both nodes where domain `name` is and leaves exactly one (see the module
    /// note). `Err` while a node does not answer.
    pub(crate) async fn settle_migration(
        &self,
        name: &str,
        from: usize,
        to: usize,
    ) -> Result<Landing, String> {
        let probe = |i: usize| {
            let n = vec![name.to_string()];
            async move {
                self.node_call(i, move |b| b.probe_named(&n))
                    .await
                    .map(|found| found.into_iter().find_map(|(_, d)| d))
                    .map_err(|e| format!("node {}: {e}", self.nodes[i].name))
            }
        };
        let (source, target) = (probe(from).await?, probe(to).await?);
        let running = |d: &Option<DomainProbe>| {
            d.as_ref()
                .is_some_and(|d| d.state.is_active() && d.state != DomainState::Paused)
        };
        let landing = if running(&target) || (target.is_some() && source.is_none()) {
            Landing::Target
        } else {
            Landing::Source
        };
        // (node, domain) of the copy kept and of the one left over.
        let ((kept, kept_domain), (stale, stale_domain)) = match landing {
            Landing::Target => ((to, &target), (from, &source)),
            Landing::Source => ((from, &source), (to, &target)),
        };
        if stale_domain.is_some() {
            let n = name.to_string();
            self.action_call(stale, move |b| b.remove_domain(&n))
                .await
                .map_err(|e| {
                    format!(
                        "cannot remove the copy left on node {}: {e}",
                        self.nodes[stale].name
                    )
                })?;
        }
        // A live move cut off while the source was paused for its last copy: run it again.
        // (A domain its user paused says so, `paused: user`, and stays paused.)
        if let Some(d) = kept_domain
            && d.state == DomainState::Paused
            && d.reason == Some("migrating")
        {
            let n = name.to_string();
            if let Err(e) = self
                .action_call(kept, move |b| b.domain_op(&n, DomainOp::Resume))
                .await
            {
                tracing::warn!(instance = name, error = %e, "cannot resume it after the migration");
            }
        }
        Ok(landing)
    }

    /// The reconciliation of a `migrating` row whose daemon died: settles the move and
    /// ends it (see the module note). `Err` while a node does not answer.
    pub(crate) async fn recover_migration(
        &self,
        row: &crate::db::InstanceRecord,
    ) -> Result<Landing, String> {
        let name = row.name.as_str();
        let index = |n: Option<&str>| {
            n.and_then(|n| self.node_index(n))
                .ok_or_else(|| format!("node {} is not configured", n.unwrap_or("?")))
        };
        let from = index(row.node.as_deref())?;
        let to = index(row.migrate_to.as_deref())?;
        let saved: Vec<SavedSnapshot> = row
            .saved_snapshots
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let landing = self.settle_migration(name, from, to).await?;
        let mv = Move {
            name: name.to_string(),
            from,
            to,
            how: MigrateHow {
                live: false,
                declared_shared: false,
            },
        };
        let why = (landing == Landing::Source)
            .then(|| "kvmfs stopped before the migration finished".to_string());
        match self.end_move(&mv, landing, &saved, why).await {
            Ok(()) | Err(ActionError::Backend(_)) => Ok(landing),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A command written to a node's `ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeControl {
    /// Move every instance off the node and keep placement away from it.
    Drain,
    /// Take instances again.
    Undrain,
}

impl NodeControl {
    pub const WORDS: &'static str = "drain undrain";

    pub fn parse(text: &[u8]) -> Result<NodeControl, ActionError> {
        let Some(text) = one_word(text) else {
            return Err(ActionError::Invalid(too_long("a node's ctl", text.len())));
        };
        match text.trim() {
            "drain" => Ok(NodeControl::Drain),
            "undrain" => Ok(NodeControl::Undrain),
            other => Err(unknown_command(other, "a node's ctl", NodeControl::WORDS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_WORD_WRITE;
    use super::*;
    use crate::hv::mem::MemNode;
    use crate::testing::Rig;

    const OWNER: u32 = 1000;

    #[test]
    fn a_write_longer_than_a_word_is_refused_whole() {
        let padded = format!("drain{}", " ".repeat(MAX_WORD_WRITE));
        assert!(NodeControl::parse(padded.as_bytes()).is_err());
        let padded = format!("drain{}", " ".repeat(MAX_WORD_WRITE - 6));
        assert_eq!(
            NodeControl::parse(padded.as_bytes()).unwrap(),
            NodeControl::Drain
        );
    }

    fn copies(rig: &Rig, name: &str) -> Vec<String> {
        rig.nodes
            .iter()
            .filter(|n| n.domains().iter().any(|(d, _)| d == name))
            .map(|n: &Arc<MemNode>| n.name().to_string())
            .collect()
    }

    /// Two mounts move one instance: the second read the row (ready on n1) before the first
    /// moved it to n2, and records its move after that one ended. Its move from n1 must not
    /// be recorded: the instance is no longer there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_move_checked_on_a_row_read_before_another_mount_moved_it_is_refused() {
        let rig =
            Rig::with_shared_pools(&[("n1", 4, 8192), ("n2", 4, 8192), ("n3", 4, 8192)]).await;
        let spec = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"node":"n1"}"#;
        rig.create("vm1", OWNER, spec).await.unwrap();
        rig.wait_status("vm1", "running").await;
        let other = rig.another_daemon("other").await;
        other
            .wait_for("the other mount to see it", |r| {
                r.status("vm1").is_some_and(|s| s.starts_with("running"))
                    && ["n1", "n2", "n3"].iter().all(|n| {
                        r.read(&format!("nodes/{n}/status"))
                            .is_ok_and(|s| s.starts_with("online"))
                    })
            })
            .await;
        let read_before = other.cluster.db().get_vm("vm1").await.unwrap().unwrap();
        rig.write("instances/vm1/node", OWNER, "n2\n")
            .await
            .unwrap();
        assert_eq!(copies(&rig, "vm1"), ["n2"]);
        // Its picture has caught up (the domain is there, on n2): only the row it read is
        // old, as when its read came just before the other move and its update just after.
        other
            .wait_for("the other mount to see the move", |r| {
                r.read("instances/vm1/node").is_ok_and(|n| n == "n2\n")
            })
            .await;

        let e = other
            .cluster
            .record_move(&read_before, Some("n3"))
            .await
            .err()
            .expect("a move from where it no longer is");
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
        let row = rig.cluster.db().get_vm("vm1").await.unwrap().unwrap();
        assert_eq!(
            (row.state, row.node.as_deref()),
            (InstanceState::Ready, Some("n2"))
        );
        assert_eq!(copies(&rig, "vm1"), ["n2"]);
    }
}

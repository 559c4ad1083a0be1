//! `rmdir`: on the row as the database holds it, marked `deleting` if unchanged since it was
//! read; the parts it lists removed from its node, then the row and its addresses.

use std::sync::Arc;

use super::{ActionError, owner_may};
use crate::cluster::Cluster;
use crate::db::{DbError, InstanceState, Made, Part, Step};
use crate::failpoint;
use crate::model::{disk_volume, seed_volume};

impl Cluster {
    /// Removes the parts of instance `name` listed in `made` from `node`, each one
    /// tolerant of being gone already; returns what could not be removed. `crash_points`
    /// names the operation whose crash points (`failpoint`) each removal passes.
    pub(crate) async fn remove_parts(
        &self,
        name: &str,
        node: &str,
        mut made: Made,
        crash_points: Option<&str>,
    ) -> Made {
        let Some(ni) = self.node_index(node) else {
            return made;
        };
        for part in [Part::Domain, Part::Disk, Part::Seed] {
            if !made.has(part) {
                continue;
            }
            let n = name.to_string();
            let r = if made.shared && part != Part::Domain {
                self.remove_shared_file(name, part).await
            } else if part != Part::Domain
                && (0..self.nodes.len()).any(|j| j != ni && self.pools_shared(ni, j))
            {
                self.remove_shared_pool_volume(ni, name, part).await
            } else {
                self.action_call(ni, move |b| match part {
                    Part::Domain => b.remove_domain(&n).map(|_| ()),
                    Part::Disk => b.delete_volume(&disk_volume(&n)).map(|_| ()),
                    Part::Seed => b.delete_volume(&seed_volume(&n)).map(|_| ()),
                })
                .await
                .map_err(|e| e.to_string())
            };
            match r {
                Ok(()) => {
                    made = made.with(part, false);
                    if let Some(op) = crash_points {
                        failpoint::hit(&format!("{op}:{} removed", part.word()));
                    }
                }
                Err(e) => tracing::warn!(instance = name, ?part, error = %e, "cannot remove"),
            }
        }
        made
    }

    /// Deletes an instance's disk or seed from a pool declared shared: through node `ni`
    /// (the instance's), and if that node does not list it (a netfs pool shows a file
    /// another node made only after a refresh), through the other nodes of the shared
    /// pool that answer. Gone everywhere is fine.
    async fn remove_shared_pool_volume(
        &self,
        ni: usize,
        name: &str,
        part: Part,
    ) -> Result<(), String> {
        let vol = match part {
            Part::Disk => disk_volume(name),
            _ => seed_volume(name),
        };
        let others = (0..self.nodes.len()).filter(|&i| i != ni && self.pools_shared(ni, i));
        for i in std::iter::once(ni).chain(others) {
            let v = vol.clone();
            match self.action_call(i, move |b| b.delete_volume(&v)).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if i == ni => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Deletes an instance's disk or seed file from the shared storage (gone already is
    /// fine). Without a `[storage]` any more it stays recorded: kvmfs cannot reach it.
    async fn remove_shared_file(&self, name: &str, part: Part) -> Result<(), String> {
        let Some(share) = self.storage() else {
            return Err(format!(
                "its {} is on a shared storage that is no longer configured",
                part.word()
            ));
        };
        let file = match part {
            Part::Disk => disk_volume(name),
            _ => seed_volume(name),
        };
        share
            .delete(&file)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `rmdir`: destroys the domain, deletes its volumes, releases its addresses and deletes
    /// its row. Safe to repeat; safe when the domain is already gone.
    ///
    /// It acts on the row as the database holds it, read under this daemon's claim and
    /// marked `deleting` only if unchanged since (`Db::begin_delete`), never on this mount's
    /// picture, which may be a poll old: another mount may have built the instance, be
    /// building or deleting it, or have made the name again meanwhile.
    pub async fn delete(self: &Arc<Self>, name: &str, uid: u32) -> Result<(), ActionError> {
        let _claim = self.claim_for(name).await?;
        self.db.gate()?;
        for _ in 0..3 {
            let Some(row) = self.db.get_vm(name).await? else {
                // Not (or no longer) in the database: forget what the picture still shows.
                self.set_local_row(name, None);
                return Err(match self.view().instances.get(name) {
                    Some(i) if i.domain.is_some() => ActionError::NotOwner(format!(
                        "instance {name} is not managed by kvmfs; it is left alone"
                    )),
                    _ => ActionError::NotFound(format!("instance {name} not found")),
                });
            };
            owner_may(name, &row, uid)?;
            self.check_deletable(&row).await?;
            if let Some(node) = &row.node
                && !row.made.is_empty()
                && !self.view().nodes.get(node).is_some_and(|n| n.online)
            {
                return Err(ActionError::Backend(format!(
                    "node {node} is offline; instance {name} is left as it is: rmdir again \
                     when the node answers"
                )));
            }
            let rev = match self.db.begin_delete(name, &self.worker_id, row.rev).await {
                Ok(rev) => rev,
                // Changed since it was read (another mount): read it again.
                Err(DbError::State(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            failpoint::hit("delete:deleting");
            let mut deleting = row.clone();
            deleting.state = InstanceState::Deleting;
            deleting.step = Step::Deleting;
            deleting.worker = Some(self.worker_id.clone());
            deleting.updated_at = crate::db::unix_now();
            deleting.rev = rev;
            self.set_local_row(name, Some(deleting));
            self.finish_delete(name, row.node.as_deref(), row.made, Some("delete"))
                .await?;
            tracing::info!(instance = name, "deleted");
            return Ok(());
        }
        Err(ActionError::Busy(format!(
            "instance {name} keeps changing under another kvmfs; try again"
        )))
    }

    /// Refuses to delete a row another operation owns: a build (here or on any mount), or
    /// a delete that a live daemon runs. A delete whose daemon is this one or has stopped
    /// beating is taken over and finished.
    pub(crate) async fn check_deletable(
        &self,
        row: &crate::db::InstanceRecord,
    ) -> Result<(), ActionError> {
        let name = &row.name;
        match row.state {
            InstanceState::Building => Err(ActionError::Busy(format!(
                "instance {name} is being built ({}); delete it when the build ends",
                row.step
            ))),
            InstanceState::Migrating => Err(ActionError::Busy(format!(
                "instance {name} is migrating to {}; delete it when it has arrived",
                row.migrate_to.as_deref().unwrap_or("?")
            ))),
            InstanceState::Deleting => match row.worker.as_deref() {
                Some(w) if w != self.worker_id && self.worker_is_live(w).await? => {
                    Err(ActionError::Busy(format!(
                        "instance {name} is being deleted by another kvmfs (worker {w})"
                    )))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Removes what a failed build could not (`made` of a `failed` row, on its node): before
    /// a new spec is placed (which would otherwise forget them) and at every
    /// reconciliation. `Backend` while some part is still there.
    pub(crate) async fn remove_leftovers(
        &self,
        row: &crate::db::InstanceRecord,
    ) -> Result<(), ActionError> {
        if row.state != InstanceState::Failed || row.made.is_empty() {
            return Ok(());
        }
        let name = row.name.as_str();
        let node = row.node.clone().unwrap_or_default();
        if !self.view().nodes.get(&node).is_some_and(|n| n.online) {
            return Err(ActionError::Backend(format!(
                "instance {name}: its failed build left its {} on node {node}, which is \
                 offline; try again when it answers",
                row.made
            )));
        }
        let left = self.remove_parts(name, &node, row.made, None).await;
        let rev = self.db.set_leftovers(name, &row.incarnation, left).await?;
        self.patch_local_row(name, |r| {
            if r.incarnation == row.incarnation {
                r.made = left;
                if left.is_empty() {
                    r.node = None;
                }
                r.rev = rev;
            }
        });
        if left.is_empty() {
            tracing::info!(instance = name, node = %node, "removed what a failed build had left");
            Ok(())
        } else {
            Err(ActionError::Backend(format!(
                "instance {name}: cannot remove the {left} its failed build left on node \
                 {node}; try again when the node answers"
            )))
        }
    }

    /// The rest of a delete once the row reads `deleting`: removes what `made` lists from
    /// `node`, then deletes the row and its addresses. Shared with the reconciliation, which
    /// finishes deletes a crash cut off.
    pub(crate) async fn finish_delete(
        &self,
        name: &str,
        node: Option<&str>,
        made: Made,
        crash_points: Option<&str>,
    ) -> Result<(), ActionError> {
        if let Some(node) = node
            && !made.is_empty()
        {
            if self.node_index(node).is_none() {
                return Err(ActionError::Backend(format!(
                    "node {node} is not configured"
                )));
            }
            let left = self.remove_parts(name, node, made, crash_points).await;
            if left != made {
                let rev = self.db.set_made(name, left).await?;
                self.patch_local_row(name, |r| {
                    r.made = left;
                    r.rev = rev;
                });
            }
            if !left.is_empty() {
                return Err(ActionError::Backend(format!(
                    "instance {name}: cannot remove its {left} from node {node}; \
                     rmdir again when the node answers"
                )));
            }
        }
        self.db.delete_vm(name).await?;
        self.metrics.instances_deleted.inc();
        self.set_local_row(name, None);
        // Re-read the domain and the pool so the gone domain does not linger as an
        // unmanaged one.
        if let Some(ni) = node.and_then(|n| self.node_index(n)) {
            self.refresh_after_action(ni, name).await;
        }
        Ok(())
    }
}

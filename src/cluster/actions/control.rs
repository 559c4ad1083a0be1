//! `ctl`: start, stop, destroy, reboot (and `revert NAME`, in `snapshot`), on the row as the database holds it (the picture's
//! while the database cannot be reached) and the domain's state in the picture.

use super::{ACTION_CALL_TIMEOUT, ActionError, Control, owner_may};
use crate::cluster::{CallError, Cluster};
use crate::db::{DbError, InstanceState};
use crate::hv::DomainOp;

impl Cluster {
    /// The row of incarnation `incarnation` of `name` as the database holds it now, checked
    /// for `uid`: this mount's picture may be a poll old (another mount may have deleted the
    /// instance, made the name again, or begun deleting it). While the database cannot be
    /// reached, no mount can change a row, so the picture's row is used instead.
    pub(crate) async fn current_row(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
    ) -> Result<crate::db::InstanceRecord, ActionError> {
        let read = match self.db.gate() {
            Ok(()) => self.db.get_vm(name).await,
            Err(e) => Err(e),
        };
        let row = match read {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.set_local_row(name, None);
                return Err(ActionError::Stale(format!("instance {name} was deleted")));
            }
            Err(DbError::Unavailable(_) | DbError::Timeout(_)) => {
                return self.check_owner(name, Some(incarnation), uid);
            }
            Err(e) => return Err(e.into()),
        };
        if row.incarnation != incarnation {
            return Err(ActionError::Stale(format!(
                "instance {name} was deleted and made again since this file was opened"
            )));
        }
        owner_may(name, &row, uid)?;
        Ok(row)
    }

    /// `ctl`: start, stop (graceful), destroy (hard) or reboot; the wrong state is `Busy`.
    pub async fn control(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        cmd: Control,
    ) -> Result<(), ActionError> {
        if let Control::Revert(snapshot) = &cmd {
            return self.snapshot_revert(name, incarnation, uid, snapshot).await;
        }
        self.check_owner(name, Some(incarnation), uid)?;
        let _claim = self.claim_for(name).await?;
        let row = self.current_row(name, incarnation, uid).await?;
        let busy = |m: String| Err(ActionError::Busy(m));
        if row.state != InstanceState::Ready {
            return busy(format!("instance {name} is {}", row.state));
        }
        let view = self.view();
        let inst = view
            .instances
            .get(name)
            .ok_or_else(|| ActionError::NotFound(format!("instance {name} not found")))?;
        if !inst.node_online {
            return Err(ActionError::Backend(format!(
                "node {} is offline",
                inst.node.as_deref().unwrap_or("?")
            )));
        }
        let Some(dom) = &inst.domain else {
            return busy(format!("instance {name} has no domain on its node"));
        };
        let active = dom.state.is_active();
        let running = dom.state == crate::hv::DomainState::Running;
        let op = match cmd {
            Control::Start if active => {
                return busy(format!("instance {name} is already {}", dom.state.word()));
            }
            Control::Start => DomainOp::Start,
            Control::Stop | Control::Reboot if !running => {
                return busy(format!(
                    "instance {name} is {}, not running",
                    dom.state.word()
                ));
            }
            Control::Stop => DomainOp::Shutdown,
            Control::Reboot => DomainOp::Reboot,
            Control::Destroy if !active => return busy(format!("instance {name} is not running")),
            Control::Destroy => DomainOp::Destroy,
            // Taken by `snapshot_revert` above, under its own claim.
            Control::Revert(_) => {
                return Err(ActionError::Invalid("revert takes a snapshot name".into()));
            }
        };
        let node = row.node.clone().unwrap_or_default();
        let ni = self
            .node_index(&node)
            .ok_or_else(|| ActionError::Backend(format!("node {node} is not configured")))?;
        let n = name.to_string();
        match self
            .node_call_within(ni, ACTION_CALL_TIMEOUT, move |b| b.domain_op(&n, op))
            .await
        {
            Ok(()) => {}
            Err(CallError::Hv(crate::hv::HvError::WrongState { message, .. })) => {
                return Err(ActionError::Busy(message));
            }
            Err(e) => return Err(ActionError::Backend(e.to_string())),
        }
        tracing::info!(instance = name, command = ?cmd, "control");
        // Show the new state without waiting for the next poll.
        self.refresh_domains(ni, vec![name.to_string()]).await;
        Ok(())
    }
}

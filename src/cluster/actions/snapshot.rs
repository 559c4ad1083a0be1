//! Snapshots of an instance: `mkdir snapshots/NAME` takes one, `rmdir snapshots/NAME`
//! deletes one, `revert NAME` written to `ctl` brings one back. All three act on one
//! incarnation (the one the folder or file was resolved on), only for its owner or root,
//! only while it is `ready`, under its claim, and re-read the domain (with its snapshots)
//! afterwards so the tree shows the result as the operation returns. Whether a snapshot
//! exists is first answered from the picture and then by the node, which has the last word.

use super::{ActionError, Claim};
use crate::cluster::{CallError, Cluster};
use crate::db::InstanceState;
use crate::hv::{DomainProbe, HvError};
use crate::model::SnapshotName;

/// The three snapshot operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotOp {
    Create,
    Delete,
    Revert,
}

/// What a snapshot operation works on once every rule let it through.
struct Target {
    _claim: Claim,
    node: usize,
    domain: std::sync::Arc<DomainProbe>,
}

impl Cluster {
    /// `mkdir /instances/NAME/snapshots/SNAP`: takes a snapshot of the instance's domain.
    pub async fn snapshot_create(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        snapshot: &SnapshotName,
    ) -> Result<(), ActionError> {
        self.snapshot_op(name, incarnation, uid, snapshot, SnapshotOp::Create)
            .await
    }

    /// `rmdir /instances/NAME/snapshots/SNAP`: deletes a snapshot.
    pub async fn snapshot_delete(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        snapshot: &SnapshotName,
    ) -> Result<(), ActionError> {
        self.snapshot_op(name, incarnation, uid, snapshot, SnapshotOp::Delete)
            .await
    }

    /// `revert SNAP` in `ctl`: brings the instance back to a snapshot (its disks, and the
    /// state it was in then: running or shut off).
    pub async fn snapshot_revert(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        snapshot: &SnapshotName,
    ) -> Result<(), ActionError> {
        self.snapshot_op(name, incarnation, uid, snapshot, SnapshotOp::Revert)
            .await
    }

    async fn snapshot_op(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        snapshot: &SnapshotName,
        op: SnapshotOp,
    ) -> Result<(), ActionError> {
        let t = self.snapshot_target(name, incarnation, uid).await?;
        let snap = snapshot.as_str();
        let known = t.domain.snapshots.iter().any(|s| s.name == snap);
        match op {
            SnapshotOp::Create if known => {
                return Err(ActionError::Exists(format!(
                    "instance {name} has a snapshot {snap} already"
                )));
            }
            SnapshotOp::Create => {
                if let Some(d) = t.domain.devices.disks.iter().find(|d| d.network) {
                    return Err(ActionError::Unsupported(format!(
                        "instance {name}: its disk {} is a network disk (<disk \
                         type='network'>), which libvirt cannot snapshot",
                        d.target
                    )));
                }
            }
            SnapshotOp::Delete if !known => {
                return Err(ActionError::NotFound(format!(
                    "instance {name} has no snapshot {snap}"
                )));
            }
            SnapshotOp::Revert if !known => {
                return Err(ActionError::Invalid(format!(
                    "instance {name} has no snapshot {snap} to revert to"
                )));
            }
            SnapshotOp::Delete | SnapshotOp::Revert => {}
        }
        let (n, s) = (name.to_string(), snap.to_string());
        let r = self
            .action_call(t.node, move |b| match op {
                SnapshotOp::Create => b.create_snapshot(&n, &s).map(|()| true),
                SnapshotOp::Delete => b.delete_snapshot(&n, &s),
                SnapshotOp::Revert => b.revert_snapshot(&n, &s).map(|()| true),
            })
            .await;
        // Whatever happened, show what the node has now.
        self.refresh_domains(t.node, vec![name.to_string()]).await;
        match (op, r) {
            (_, Ok(true)) => {}
            (_, Ok(false)) => {
                return Err(ActionError::NotFound(format!(
                    "instance {name} has no snapshot {snap}"
                )));
            }
            (SnapshotOp::Create, Err(CallError::Hv(HvError::WrongState { .. }))) => {
                return Err(ActionError::Exists(format!(
                    "instance {name} has a snapshot {snap} already"
                )));
            }
            (SnapshotOp::Revert, Err(CallError::Hv(HvError::NotFound { .. }))) => {
                return Err(ActionError::Invalid(format!(
                    "instance {name} has no snapshot {snap} to revert to"
                )));
            }
            (_, Err(CallError::Hv(HvError::WrongState { message, .. }))) => {
                return Err(ActionError::Busy(message));
            }
            (_, Err(e)) => {
                return Err(ActionError::Backend(format!(
                    "instance {name}: snapshot {snap}: {e}"
                )));
            }
        }
        tracing::info!(instance = name, snapshot = snap, op = ?op, "snapshot");
        Ok(())
    }

    /// The rules every snapshot operation shares: the caller owns this incarnation (or is
    /// root), no other operation holds it, its row is `ready`, its node is online and has its
    /// domain.
    async fn snapshot_target(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
    ) -> Result<Target, ActionError> {
        self.check_owner(name, Some(incarnation), uid)?;
        let claim = self.claim_for(name).await?;
        let row = self.current_row(name, incarnation, uid).await?;
        if row.state != InstanceState::Ready {
            return Err(ActionError::Busy(format!(
                "instance {name} is {}; snapshots need it ready",
                row.state
            )));
        }
        let view = self.view();
        let inst = view
            .instances
            .get(name)
            .ok_or_else(|| ActionError::NotFound(format!("instance {name} not found")))?;
        let node = row.node.clone().unwrap_or_default();
        if !inst.node_online {
            return Err(ActionError::Backend(format!("node {node} is offline")));
        }
        let Some(domain) = inst.domain.clone() else {
            return Err(ActionError::Busy(format!(
                "instance {name} has no domain on its node"
            )));
        };
        let ni = self
            .node_index(&node)
            .ok_or_else(|| ActionError::Backend(format!("node {node} is not configured")))?;
        Ok(Target {
            _claim: claim,
            node: ni,
            domain,
        })
    }
}

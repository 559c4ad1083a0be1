//! Snapshots of an instance: `mkdir snapshots/NAME` takes one, `rmdir snapshots/NAME`
//! deletes one, `revert NAME` written to `ctl` brings one back. All three act on one
//! incarnation (the one the folder or file was resolved on), only for its owner or root,
//! only while it is `ready`, under its claim, and re-read the domain (with its snapshots)
//! afterwards so the tree shows the result as the operation returns. Whether a snapshot
//! exists is first answered from the picture and then by the node, which has the last word.
//!
//! A network disk (`<disk type='network'>`: how instances on the shared NFS storage run) is
//! opened by QEMU, not by libvirt, so libvirt snapshots it only through a running QEMU
//! (`savevm`, `loadvm`, `delvm` on the qcow2, whatever the protocol): with such a disk,
//! taking and deleting need the domain active, and a revert needs a snapshot taken while it
//! was. libvirt refuses the rest; a revert it refuses has already stopped the domain, so
//! kvmfs refuses first, with the reason (`network_disk_refusal`), and asks nothing of the
//! node. Doing those with `qemu-img snapshot` on the `nfs://` URL is left out: it would race
//! a domain started meanwhile, and libvirt's metadata would have to be redefined by hand.

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
            SnapshotOp::Create | SnapshotOp::Delete | SnapshotOp::Revert => {}
        }
        if let Some(why) = network_disk_refusal(name, snap, op, &t.domain) {
            return Err(ActionError::Unsupported(why));
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
                // The picture lagged (the domain stopped just before): say why, as if it
                // had not.
                let now = self
                    .view()
                    .instances
                    .get(name)
                    .and_then(|i| i.domain.clone());
                if let Some(why) = now.and_then(|d| network_disk_refusal(name, snap, op, &d)) {
                    return Err(ActionError::Unsupported(why));
                }
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

/// Why libvirt would refuse `op` on this domain for its network disk, if it would (see the
/// module's header). Only a writable disk counts: a read-only cdrom (the seed) is left out
/// of every snapshot.
fn network_disk_refusal(
    name: &str,
    snap: &str,
    op: SnapshotOp,
    domain: &DomainProbe,
) -> Option<String> {
    let disk = domain
        .devices
        .disks
        .iter()
        .find(|d| d.network && d.device != "cdrom")?;
    let what = format!(
        "its disk {} is a network disk ({} on {})",
        disk.target,
        disk.protocol.as_deref().unwrap_or("network"),
        disk.host.as_deref().unwrap_or("a server")
    );
    match op {
        SnapshotOp::Create | SnapshotOp::Delete if !domain.state.is_active() => {
            let verb = if op == SnapshotOp::Create {
                "takes"
            } else {
                "deletes"
            };
            Some(format!(
                "instance {name} is {} and {what}: libvirt {verb} snapshots of a network \
                 disk only while the domain runs (QEMU's internal snapshots); start it first",
                domain.state.word()
            ))
        }
        SnapshotOp::Create | SnapshotOp::Delete => None,
        SnapshotOp::Revert => {
            let s = domain.snapshots.iter().find(|s| s.name == snap)?;
            (!s.state.is_active()).then(|| {
                format!(
                    "instance {name}: snapshot {snap} was taken {} and {what}: libvirt \
                     reverts a network disk only to a snapshot taken while the domain ran",
                    s.state.word()
                )
            })
        }
    }
}

//! The actions that change an instance: a front module over one file per action —
//! `create` (`mkdir`, the commit of `spec.json`), `build` (the background build and its
//! undo), `delete` (`rmdir`), `control` (`ctl`), `snapshot` (`mkdir`/`rmdir` in
//! `snapshots/`, `revert NAME` in `ctl`). Here: the error every action answers with
//! (one variant per errno), the `ctl` words, and what the actions share (the owner rule, the
//! claim, bounded node calls, recorded refusals).

mod build;
mod control;
mod create;
mod delete;
mod migrate;

pub(crate) use migrate::Landing;
pub use migrate::NodeControl;
mod snapshot;

use std::time::Duration;

use crate::db::DbError;
use crate::spec::SpecError;

use super::placement::PlaceError;
use super::{CallError, Claim, Cluster};

/// Deadline for one hypervisor call made by an action (creating a volume, starting a
/// domain); longer than a poll's, since QEMU start-up takes real time.
pub(super) const ACTION_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an operation waits for another one on the same instance to end.
pub(super) const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// Why an action was refused or failed. Each maps to one errno in the FUSE layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotOwner(String),
    #[error("{0}")]
    TooBig(String),
    #[error("{0}")]
    Backend(String),
    /// The instance a handle was opened on is gone, or its name belongs to another one now.
    #[error("{0}")]
    Stale(String),
    /// A per-user limit (`[quotas]`) refuses it.
    #[error("{0}")]
    Quota(String),
    /// The instance's node or storage cannot do it (a snapshot of a network disk).
    #[error("{0}")]
    Unsupported(String),
}

impl ActionError {
    /// The errno the caller gets. No catch-all arm: a new variant forces a choice.
    pub fn errno(&self) -> i32 {
        match self {
            ActionError::Invalid(_) => libc::EINVAL,
            ActionError::Exists(_) => libc::EEXIST,
            ActionError::NotFound(_) => libc::ENOENT,
            ActionError::NoCapacity(_) => libc::ENOSPC,
            ActionError::Busy(_) => libc::EBUSY,
            ActionError::NotOwner(_) => libc::EACCES,
            ActionError::TooBig(_) => libc::EFBIG,
            ActionError::Backend(_) => libc::EIO,
            ActionError::Stale(_) => libc::ESTALE,
            ActionError::Quota(_) => libc::EDQUOT,
            ActionError::Unsupported(_) => libc::EOPNOTSUPP,
        }
    }
}

impl From<DbError> for ActionError {
    fn from(e: DbError) -> Self {
        match e.clone() {
            DbError::Conflict(m) => ActionError::Exists(m),
            DbError::State(m) => ActionError::Busy(m),
            DbError::NotFound(m) => ActionError::NotFound(format!("{m} not found")),
            DbError::PoolExhausted(p) => {
                ActionError::NoCapacity(format!("address pool {p} is exhausted"))
            }
            DbError::Quota(m) => ActionError::Quota(m),
            DbError::Replaced(m) => ActionError::Stale(m),
            DbError::Timeout(_) => ActionError::Backend(format!(
                "{e}: a change sent to it may still be applied when it answers; the \
                 instance's status shows what happened"
            )),
            other => ActionError::Backend(other.to_string()),
        }
    }
}

impl From<PlaceError> for ActionError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::UnknownNode(_) => ActionError::Invalid(e.to_string()),
            PlaceError::NoRoom(_) => ActionError::NoCapacity(e.to_string()),
        }
    }
}

impl From<SpecError> for ActionError {
    fn from(e: SpecError) -> Self {
        ActionError::Invalid(e.to_string())
    }
}

/// A control command written to `ctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Start,
    Stop,
    Destroy,
    Reboot,
    /// `revert NAME`: back to snapshot NAME (see `snapshot`).
    Revert(crate::model::SnapshotName),
}

impl Control {
    pub const WORDS: &'static str = "start stop destroy reboot revert NAME";

    pub fn parse(text: &[u8]) -> Result<Control, ActionError> {
        let word = one_word(text)
            .ok_or_else(|| ActionError::Invalid(too_long("ctl", text.len())))?
            .trim();
        if let Some(arg) = word.strip_prefix("revert ") {
            return crate::model::SnapshotName::new(arg.trim())
                .map(Control::Revert)
                .map_err(|e| ActionError::Invalid(format!("revert: snapshot {e}")));
        }
        match word {
            "start" => Ok(Control::Start),
            "stop" => Ok(Control::Stop),
            "destroy" => Ok(Control::Destroy),
            "reboot" => Ok(Control::Reboot),
            _ => Err(unknown_command(word, "ctl", Control::WORDS)),
        }
    }
}

/// The longest write to `ctl`, `node` or a node's `ctl` that is read: a command, a name or
/// a word, and room for blanks around it.
pub const MAX_WORD_WRITE: usize = 256;

/// The text of a write to `ctl`, `node` or a node's `ctl` (`""` if not UTF-8), `None` past
/// `MAX_WORD_WRITE` bytes. A longer write reaches kvmfs in several requests when it is
/// longer than the kernel sends at once: its first one must not act on a word the rest
/// then turns into garbage (`n2` and a megabyte of blanks moved the instance, then failed).
pub(super) fn one_word(text: &[u8]) -> Option<&str> {
    (text.len() <= MAX_WORD_WRITE).then(|| std::str::from_utf8(text).unwrap_or(""))
}

/// A word `file` does not take (quoted, at most 40 characters of it), and the ones it does.
pub(super) fn unknown_command(word: &str, file: &str, words: &str) -> ActionError {
    ActionError::Invalid(format!(
        "unknown command {:?}; {file} takes one of: {words}",
        word.chars().take(40).collect::<String>()
    ))
}

pub(super) fn too_long(file: &str, len: usize) -> String {
    format!("{file}: a write of {len} bytes is no word; at most {MAX_WORD_WRITE} are read")
}

/// Whether `uid` may change an instance whose row is `row`: its owner, or root.
pub(super) fn owner_may(
    name: &str,
    row: &crate::db::InstanceRecord,
    uid: u32,
) -> Result<(), ActionError> {
    if !crate::model::may_act(Some(row.owner_uid), uid) {
        return Err(ActionError::NotOwner(format!(
            "instance {name} belongs to uid {}",
            row.owner_uid
        )));
    }
    Ok(())
}

impl Cluster {
    pub(crate) fn node_index(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == node)
    }

    /// Reloads one `vm` row into the inputs and republishes the view.
    pub(crate) async fn refresh_row(&self, name: &str) {
        match self.db.get_vm(name).await {
            Ok(row) => self.set_local_row(name, row),
            Err(e) => tracing::warn!(instance = name, error = %e, "cannot reload row"),
        }
    }

    /// Checks that `uid` may change instance `name` (its owner, or root), as this mount's
    /// picture shows it; with `incarnation`, only that incarnation of the name (the one a
    /// file was opened on).
    pub(crate) fn check_owner(
        &self,
        name: &str,
        incarnation: Option<&str>,
        uid: u32,
    ) -> Result<crate::db::InstanceRecord, ActionError> {
        let view = self.view();
        let Some(inst) = view.instances.get(name) else {
            return Err(match incarnation {
                Some(_) => ActionError::Stale(format!("instance {name} was deleted")),
                None => ActionError::NotFound(format!("instance {name} not found")),
            });
        };
        let Some(row) = inst.row.as_deref().cloned() else {
            // A file opened on a managed instance whose row is gone: that incarnation was
            // deleted, whatever domain of the name a node shows now.
            return Err(match incarnation {
                Some(_) => ActionError::Stale(format!("instance {name} was deleted")),
                None => ActionError::NotOwner(format!(
                    "instance {name} is not managed by kvmfs; it is left alone"
                )),
            });
        };
        if incarnation.is_some_and(|i| i != row.incarnation) {
            return Err(ActionError::Stale(format!(
                "instance {name} was deleted and made again since this file was opened"
            )));
        }
        owner_may(name, &row, uid)?;
        Ok(row)
    }

    /// Records why a spec, command or delete was refused or failed, for the instance's
    /// `error` file (and the log). The reason shows at once; storing it in the database
    /// happens in the background, so a dead database delays nothing.
    pub fn record_error(&self, name: &str, incarnation: Option<&str>, err: &ActionError) {
        self.log_refusal(name, err);
        self.set_local_error(name, incarnation, &err.to_string());
    }

    /// Claims instance `name` for an operation. An operation that is just ending (a build
    /// publishing its result, the reconciliation) is waited for, at most `CLAIM_WAIT`;
    /// past that another one is under way.
    pub(crate) async fn claim_for(&self, name: &str) -> Result<Claim, ActionError> {
        self.claim_within(name, CLAIM_WAIT).await.ok_or_else(|| {
            ActionError::Busy(format!(
                "instance {name} is busy: another operation on it is under way"
            ))
        })
    }

    pub(crate) async fn action_call<T: Send + 'static>(
        &self,
        node: usize,
        f: impl FnOnce(&dyn crate::hv::NodeBackend) -> Result<T, crate::hv::HvError> + Send + 'static,
    ) -> Result<T, CallError> {
        self.node_call_within(node, ACTION_CALL_TIMEOUT, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_words() {
        assert_eq!(Control::parse(b"start\n").unwrap(), Control::Start);
        assert_eq!(Control::parse(b"  destroy ").unwrap(), Control::Destroy);
        assert!(Control::parse(b"explode").is_err());
        assert!(Control::parse(&[0xff, 0xfe]).is_err());
        assert_eq!(
            Control::parse(b"revert before-upgrade\n").unwrap(),
            Control::Revert(crate::model::SnapshotName::new("before-upgrade").unwrap())
        );
        assert!(Control::parse(b"revert\n").is_err());
        assert!(Control::parse(b"revert ../x\n").is_err());
        assert!(Control::parse(b"revert a b\n").is_err());
        // A long write is refused whole: its first piece must not act on its own.
        let padded = format!("destroy{}", " ".repeat(MAX_WORD_WRITE));
        assert!(Control::parse(padded.as_bytes()).is_err());
    }
}

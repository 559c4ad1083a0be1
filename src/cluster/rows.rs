//! Rows changed here, put in the picture as written (no read back), and the errors shown in
//! `error` files: at once in the picture, stored in the database in the background, at most
//! once a second per instance, and logged likewise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::db::InstanceRecord;

/// An instance's refusals are stored in the database, and logged, at most once per this
/// (the `error` file shows every one at once).
pub(super) const ERROR_STORE_INTERVAL: Duration = Duration::from_secs(1);

/// An error shown in an instance's `error` file that the database has not stored yet; it
/// belongs to one incarnation of the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PendingError {
    pub(super) incarnation: String,
    pub(super) message: String,
}

impl PendingError {
    /// Lays the error over `row` if it is the row it belongs to.
    pub(super) fn apply(&self, row: &mut InstanceRecord) {
        if row.incarnation == self.incarnation {
            row.error = Some(self.message.clone());
        }
    }
}

impl Cluster {
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

    /// Stores the errors `set_local_error` shows. The `error` file shows each at once; the
    /// database gets the last one of each instance, at most once every
    /// `ERROR_STORE_INTERVAL`, so a user writing garbage to `ctl` as fast as they can costs
    /// the database a write and a read of the row a second, not one per write.
    pub(super) async fn error_writer(
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
                    Ok(_) => {
                        {
                            let mut inputs = self.inputs.lock();
                            if inputs.pending_errors.get(&name) == Some(&pending) {
                                inputs.pending_errors.remove(&name);
                            }
                        }
                        // Read back, not patched: the row this mount shows may be older
                        // than the one the error went into (another mount moved the
                        // instance while this one refused it), and giving it the new stamp
                        // would hide the difference from the polls' fingerprint.
                        self.refresh_row(&name).await;
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
}

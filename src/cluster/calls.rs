//! Bounded backend calls: every call to a node runs on a blocking thread under a deadline,
//! and a node with too many calls hanging past theirs is not called again until they return.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;

use super::Cluster;
use crate::hv::{HvError, NodeBackend};

/// Calls per node allowed to hang past their deadline before polling that node pauses.
pub(super) const MAX_STUCK_CALLS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallState {
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

impl Cluster {
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
        let started = std::time::Instant::now();
        let latency = |m: &crate::metrics::Metrics| {
            if let Some(n) = m.node(i) {
                n.backend_calls.observe(started.elapsed());
            }
        };
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
        let r = tokio::time::timeout(deadline, handle).await;
        latency(&self.metrics);
        match r {
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
}

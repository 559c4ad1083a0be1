//! Failover from the primary database to its replica (`[database] replica_url`).
//!
//! kvmfs writes to one database at a time. It starts on the primary and moves to the replica
//! only when both hold: the primary has failed two checks in a row (no connection, or no
//! answer within the deadline), and the replica takes a write (it was promoted: `read_only`
//! is off). That write is the failover record, a row in the replica's `db_failover` table
//! naming the primary it replaces. The move is sticky: kvmfs never goes back to the primary
//! by itself, and another kvmfs (or this one, started again) that finds the record on the
//! replica moves to the replica too, even if the old primary answers again. So a primary
//! that comes back with data the replica never saw, or without what was written to the
//! replica, is never written to next to it.
//!
//! The switch happens inside the one connection pool every statement uses, so the rest of
//! the code does not see it: the pool's connect options are pointed at the replica, every
//! connection opened before the switch is discarded when it is next taken from the pool,
//! and every connection opened after it must reach the replica's server (`@@server_id`),
//! so no statement after the switch can reach the old primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{DbError, unix_now};

/// Consecutive failed checks of the primary before kvmfs moves to the replica: one failed
/// statement may be a cut connection the pool replaces.
const FAILURES_BEFORE_FAILOVER: u32 = 2;

/// What the last check of the replica found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReplicaState {
    Unchecked,
    Unreachable(String),
    /// It answers but refuses writes (`read_only`): not promoted.
    ReadOnly,
    Writable,
    /// It is unusable for another reason (say, kvmfs's tables are missing).
    Unusable(String),
}

struct State {
    on_replica: bool,
    /// When this daemon moved to the replica (to discard connections opened before).
    switched_at: Option<Instant>,
    switched_unix: i64,
    replica_server_id: Option<i64>,
    primary_server_id: Option<i64>,
    replica: ReplicaState,
    primary_failures: u32,
}

/// The failover state one `Db` shares with its pool's connection hooks.
pub(super) struct Failover {
    pub(super) primary_url: String,
    pub(super) replica_url: String,
    replica_options: AnyConnectOptions,
    /// A small pool to the replica, for the checks and the failover record.
    replica: AnyPool,
    /// One connection to the primary for its checks, apart from the pool the statements
    /// use: a pool busy with statements must not look like a dead primary.
    primary: AnyPool,
    timeout: Duration,
    state: Mutex<State>,
    /// Wakes the watcher when a statement finds the primary unreachable.
    wake: tokio::sync::Notify,
    /// One check at a time (the watcher's and the start-up one).
    checking: tokio::sync::Mutex<()>,
    /// Counts the moves to the replica (`/metrics/kvmfs.prom`).
    pub(super) failovers: Arc<crate::metrics::Counter>,
}

fn is_unreachable(e: &DbError) -> bool {
    matches!(e, DbError::Unavailable(_) | DbError::Timeout(_))
}

/// What went wrong, without the "database unreachable" the caller's message starts with.
fn detail(e: &DbError) -> String {
    match e {
        DbError::Unavailable(m) => m.clone(),
        DbError::Timeout(d) => format!("no answer within {d:?}"),
        other => other.to_string(),
    }
}

/// MariaDB's "table doesn't exist": the replica has not received kvmfs's tables yet.
fn is_missing_table(e: &DbError) -> bool {
    let m = e.to_string();
    m.contains("1146") || m.contains("doesn't exist")
}

impl Failover {
    pub(super) fn new(
        primary_url: String,
        replica_url: String,
        primary_options: AnyConnectOptions,
        replica_options: AnyConnectOptions,
        timeout: Duration,
    ) -> Failover {
        let small = |max, o: AnyConnectOptions| {
            sqlx::any::AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(timeout)
                .connect_lazy_with(o)
        };
        Failover {
            primary_url,
            replica_url,
            replica: small(2, replica_options.clone()),
            primary: small(1, primary_options),
            replica_options,
            timeout,
            state: Mutex::new(State {
                on_replica: false,
                switched_at: None,
                switched_unix: 0,
                replica_server_id: None,
                primary_server_id: None,
                replica: ReplicaState::Unchecked,
                primary_failures: 0,
            }),
            wake: tokio::sync::Notify::new(),
            checking: tokio::sync::Mutex::new(()),
            failovers: Arc::default(),
        }
    }

    pub(super) fn on_replica(&self) -> bool {
        self.state.lock().on_replica
    }

    /// `before_acquire`: a connection opened before the switch may lead to the old primary.
    pub(super) fn connection_is_current(&self, age: Duration) -> bool {
        super::opened_after(self.state.lock().switched_at, age)
    }

    /// `after_connect`: after the switch, a new connection must reach the replica's server.
    pub(super) async fn check_new_connection(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<(), sqlx::Error> {
        let (on_replica, want) = {
            let s = self.state.lock();
            (s.on_replica, s.replica_server_id)
        };
        if !on_replica {
            return Ok(());
        }
        let id = server_id(&mut *conn).await?;
        if Some(id) == want {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!(
                "a new connection reached server {id}, not the replica (server {want:?}); \
                 dropped, since kvmfs failed over"
            )))
        }
    }

    /// Adds what is known about the replica to an error of the active database, and wakes
    /// the watcher when the primary seems gone.
    pub(super) fn explain(&self, e: DbError) -> DbError {
        if !is_unreachable(&e) {
            return e;
        }
        let s = self.state.lock();
        let replica = &self.replica_url;
        let e = detail(&e);
        let msg = if s.on_replica {
            format!(
                "replica {replica} (in use since kvmfs failed over from the primary at unix \
                 time {}): {e}",
                s.switched_unix
            )
        } else {
            self.wake.notify_one();
            let why = match &s.replica {
                ReplicaState::Unchecked => "not checked yet".to_string(),
                ReplicaState::Unreachable(m) => format!("unreachable too: {m}"),
                ReplicaState::ReadOnly => {
                    "read-only (not promoted yet), so kvmfs does not write there".to_string()
                }
                ReplicaState::Writable => "writable; kvmfs is moving to it".to_string(),
                ReplicaState::Unusable(m) => format!("not usable: {m}"),
            };
            format!(
                "primary {}: {e}; the replica {replica} is {why}",
                self.primary_url
            )
        };
        DbError::Unavailable(msg)
    }

    /// Whether the replica holds a failover record for this primary (made by any kvmfs).
    async fn replica_has_record(&self) -> Result<Option<i64>, DbError> {
        let q = sqlx::query("SELECT failed_over_at FROM db_failover WHERE from_url = ?")
            .bind(&self.primary_url)
            .fetch_optional(&self.replica);
        match tokio::time::timeout(self.timeout, q).await {
            Ok(Ok(r)) => Ok(r.map(|r| r.try_get::<i64, _>(0)).transpose()?),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DbError::Timeout(self.timeout)),
        }
    }

    /// Reads the replica's `read_only` flag and its failover record into the state.
    async fn check_replica(&self) -> Option<i64> {
        let work = async {
            let ro: i64 = sqlx::query("SELECT CAST(@@global.read_only AS SIGNED)")
                .fetch_one(&self.replica)
                .await?
                .try_get(0)?;
            Ok::<_, sqlx::Error>(ro)
        };
        let ro = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r.map_err(DbError::from),
            Err(_) => Err(DbError::Timeout(self.timeout)),
        };
        let record = match &ro {
            Ok(_) => self.replica_has_record().await,
            Err(_) => Ok(None),
        };
        let state = match (ro, &record) {
            (Err(e), _) => ReplicaState::Unreachable(detail(&e)),
            // Before the first mount's migrations have reached it.
            (Ok(_), Err(e)) if is_missing_table(e) => ReplicaState::Unchecked,
            (Ok(_), Err(e)) => ReplicaState::Unusable(e.to_string()),
            (Ok(0), Ok(_)) => ReplicaState::Writable,
            (Ok(_), Ok(_)) => ReplicaState::ReadOnly,
        };
        let mut s = self.state.lock();
        // Logged when the kind of state changes, not at every new wording of an error.
        if std::mem::discriminant(&s.replica) != std::mem::discriminant(&state) {
            match &state {
                ReplicaState::Writable | ReplicaState::ReadOnly | ReplicaState::Unchecked => {
                    tracing::info!(replica = %self.replica_url, state = ?state, "replica checked");
                }
                ReplicaState::Unreachable(_) | ReplicaState::Unusable(_) => {
                    tracing::warn!(replica = %self.replica_url, state = ?state,
                        "the replica cannot take over if the primary fails");
                }
            }
        }
        s.replica = state;
        record.ok().flatten()
    }

    /// Takes the replica over: writes the failover record there (which fails on a
    /// read-only replica) and learns its server id. Does not switch the pool.
    async fn take_over(&self) -> Result<i64, String> {
        let work = async {
            let mut tx = self.replica.begin().await?;
            let r = sqlx::query(
                "INSERT INTO db_failover (from_url, failed_over_at, by_host) VALUES (?, ?, ?)",
            )
            .bind(&self.primary_url)
            .bind(unix_now())
            .bind(hostname())
            .execute(&mut *tx)
            .await;
            match r {
                Ok(_) => {}
                // Another kvmfs took it over first: the same decision.
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {}
                Err(e) => return Err(e),
            }
            let id = server_id(&mut *tx).await?;
            tx.commit().await?;
            Ok(id)
        };
        let id = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                let msg = e.to_string();
                let read_only = msg.contains("1290") || msg.contains("read-only");
                self.state.lock().replica = if read_only {
                    ReplicaState::ReadOnly
                } else {
                    ReplicaState::Unusable(super::redact_message(&msg))
                };
                return Err(if read_only {
                    "it is read-only (not promoted yet)".to_string()
                } else {
                    super::redact_message(&msg)
                });
            }
            Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
        };
        if self.state.lock().primary_server_id == Some(id) {
            return Err(format!(
                "it is the same server as the primary (server_id {id}); not failing over"
            ));
        }
        Ok(id)
    }

    /// Points the pool at the replica for good.
    fn switch(&self, pool: &AnyPool, replica_server_id: i64, why: &str) {
        {
            let mut s = self.state.lock();
            if s.on_replica {
                return;
            }
            s.on_replica = true;
            s.switched_at = Some(Instant::now());
            s.switched_unix = unix_now();
            s.replica_server_id = Some(replica_server_id);
        }
        self.failovers.inc();
        pool.set_connect_options(self.replica_options.clone());
        tracing::error!(
            primary = %self.primary_url,
            replica = %self.replica_url,
            reason = why,
            "database failover: kvmfs now reads and writes the replica, and will not go back \
             to the primary by itself"
        );
    }

    /// One round of checks while on the primary; moves to the replica when it must.
    pub(super) async fn check(&self, pool: &AnyPool) {
        let _one = self.checking.lock().await;
        if self.on_replica() {
            return;
        }
        let record = self.check_replica().await;
        if let Some(at) = record {
            match self.take_over().await {
                Ok(id) => self.switch(
                    pool,
                    id,
                    &format!("the replica records a failover from this primary at unix time {at}"),
                ),
                Err(why) => tracing::warn!(replica = %self.replica_url, error = %why,
                    "the replica records a failover but cannot take writes"),
            }
            return;
        }
        let probe = server_id(&self.primary);
        let primary = match tokio::time::timeout(self.timeout, probe).await {
            Ok(r) => r.map_err(DbError::from),
            Err(_) => Err(DbError::Timeout(self.timeout)),
        };
        let failures = {
            let mut s = self.state.lock();
            match &primary {
                Ok(id) => {
                    s.primary_server_id = Some(*id);
                    s.primary_failures = 0;
                }
                Err(e) if is_unreachable(e) => s.primary_failures += 1,
                // It answered, with an error: it is there.
                Err(_) => s.primary_failures = 0,
            }
            s.primary_failures
        };
        if failures < FAILURES_BEFORE_FAILOVER {
            return;
        }
        let reason = primary.err().map(|e| detail(&e)).unwrap_or_default();
        match self.take_over().await {
            Ok(id) => self.switch(pool, id, &format!("the primary is unreachable: {reason}")),
            Err(why) => {
                tracing::warn!(primary = %self.primary_url, replica = %self.replica_url,
                    error = %why, "the primary is unreachable and the replica cannot take over")
            }
        }
    }

    /// At start: when the replica already records a failover from this primary, or the
    /// primary (whose server id is `primary`) does not answer and the replica is writable,
    /// start on the replica.
    pub(super) async fn start(
        &self,
        pool: &AnyPool,
        primary: Result<i64, DbError>,
    ) -> Result<(), DbError> {
        let _one = self.checking.lock().await;
        if let Ok(id) = &primary {
            self.state.lock().primary_server_id = Some(*id);
        }
        let record = self.check_replica().await;
        let why = match (record, primary) {
            (Some(at), _) => {
                format!("the replica records a failover from this primary at unix time {at}")
            }
            (None, Ok(_)) => return Ok(()),
            (None, Err(e)) if is_unreachable(&e) => {
                format!("the primary is unreachable at start: {}", detail(&e))
            }
            // It answered, with an error (a wrong password, a missing database): a mistake to
            // fix, not a reason to leave it for good.
            (None, Err(e)) => {
                return Err(DbError::Unavailable(format!("{}: {e}", self.primary_url)));
            }
        };
        match self.take_over().await {
            Ok(id) => {
                self.switch(pool, id, &why);
                Ok(())
            }
            Err(e) if record.is_some() => Err(DbError::Unavailable(format!(
                "the replica {} records a failover from the primary {} but cannot take \
                 writes: {e}; kvmfs does not go back to the primary by itself",
                self.replica_url, self.primary_url
            ))),
            Err(e) => Err(DbError::Unavailable(format!(
                "{why} ({}); the replica {} cannot take over: {e}",
                self.primary_url, self.replica_url
            ))),
        }
    }

    /// Checks every `every`, and at once when a statement found the primary unreachable,
    /// until kvmfs is on the replica or the pool is closed.
    pub(super) async fn watch(self: Arc<Self>, pool: AnyPool, every: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
            }
            if pool.is_closed() || self.on_replica() {
                return;
            }
            self.check(&pool).await;
        }
    }

    pub(super) async fn close(&self) {
        self.replica.close().await;
        self.primary.close().await;
    }
}

/// The server's `@@server_id`, which tells a primary from its replica.
async fn server_id<'c, E>(conn: E) -> Result<i64, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query("SELECT CAST(@@server_id AS SIGNED)")
        .fetch_one(conn)
        .await?
        .try_get(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover() -> Failover {
        sqlx::any::install_default_drivers();
        let o = |u: &str| u.parse::<AnyConnectOptions>().unwrap();
        Failover::new(
            "mysql://k:***@127.0.0.1:1/kvmfs".into(),
            "mysql://k:***@127.0.0.1:2/kvmfs".into(),
            o("mysql://k:pw@127.0.0.1:1/kvmfs"),
            o("mysql://k:pw@127.0.0.1:2/kvmfs"),
            Duration::from_millis(200),
        )
    }

    #[tokio::test]
    async fn errors_say_what_the_replica_can_do() {
        let f = failover();
        let e = f.explain(DbError::Timeout(Duration::from_secs(1)));
        assert!(e.to_string().contains("is not checked yet"), "{e}");
        f.state.lock().replica = ReplicaState::ReadOnly;
        let e = f
            .explain(DbError::Unavailable("connection refused".into()))
            .to_string();
        assert!(
            e.starts_with("database unreachable: primary mysql://k:***@127.0.0.1:1/kvmfs: connection refused; the replica mysql://k:***@127.0.0.1:2/kvmfs is read-only (not promoted yet)"),
            "{e}"
        );
        // Errors of a database that answered are not about reachability.
        let e = f.explain(DbError::Conflict("taken".into()));
        assert_eq!(e.to_string(), "already exists: taken");
        let pool = sqlx::any::AnyPoolOptions::new()
            .connect_lazy_with("mysql://k:pw@127.0.0.1:1/kvmfs".parse().unwrap());
        f.switch(&pool, 2, "test");
        let e = f.explain(DbError::Unavailable("reset".into())).to_string();
        assert!(
            e.contains("replica mysql://k:***@127.0.0.1:2/kvmfs (in use since kvmfs failed over"),
            "{e}"
        );
        assert!(pool.connect_options().database_url.as_str().contains(":2/"));
    }

    #[tokio::test]
    async fn connections_older_than_the_switch_are_dropped() {
        let f = failover();
        assert!(f.connection_is_current(Duration::from_secs(3600)));
        let pool = sqlx::any::AnyPoolOptions::new()
            .connect_lazy_with("mysql://k:pw@127.0.0.1:1/kvmfs".parse().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        f.switch(&pool, 2, "test");
        assert!(!f.connection_is_current(Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(f.connection_is_current(Duration::from_millis(5)));
        assert!(f.on_replica());
    }
}

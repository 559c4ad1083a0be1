//! Equivalent servers of one Galera cluster (`[database] urls`).
//!
//! Every server of a Galera cluster takes writes, so there is nothing to promote: kvmfs uses
//! one server at a time (the first that answers, in the configured order) and moves to the
//! next that answers when its server stops answering or leaves the cluster's primary
//! component (`wsrep_ready` off: such a server refuses statements with error 1047). A
//! server that answers is never left for another, so the daemons of a site stay where they
//! are until their server fails.
//!
//! The move happens inside the one connection pool every statement uses, as a failover to a
//! replica does (see `failover`): the pool's connect options are pointed at the new server
//! and every connection opened before the move is discarded when it is next taken. A
//! transaction in flight at the moment of the move fails (`EIO` to its caller, nothing
//! half-made: it was rolled back); the next one runs on the new server.
//!
//! What Galera changes for the statements themselves is in `Db::transaction`: a conflict
//! with a transaction committed on another server is reported at commit (error 1213,
//! SQLSTATE 40001), and the transaction is run again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyPool, Row};

use super::DbError;

struct State {
    /// Index into `Servers::urls` of the server in use.
    current: usize,
    /// When this daemon last moved (to discard connections opened before).
    switched_at: Option<Instant>,
}

/// The servers of one Galera cluster and the one in use.
pub(super) struct Servers {
    /// Their URLs without passwords, in the configured order.
    urls: Vec<String>,
    options: Vec<AnyConnectOptions>,
    /// One connection per server for the checks, apart from the pool the statements use.
    probes: Vec<AnyPool>,
    timeout: Duration,
    state: Mutex<State>,
    /// Wakes the watcher when a statement finds the server in use unreachable.
    wake: tokio::sync::Notify,
    /// One check at a time.
    checking: tokio::sync::Mutex<()>,
    /// Moves to another server (`kvmfs_database_failovers_total`).
    pub(super) moves: std::sync::Arc<crate::metrics::Counter>,
}

impl Servers {
    /// `servers`: (URL without password, connect options), in the configured order.
    pub(super) fn new(servers: Vec<(String, AnyConnectOptions)>, timeout: Duration) -> Servers {
        let (urls, options): (Vec<_>, Vec<_>) = servers.into_iter().unzip();
        let probes = options
            .iter()
            .map(|o| {
                sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(o.clone())
            })
            .collect();
        Servers {
            urls,
            options,
            probes,
            timeout,
            state: Mutex::new(State {
                current: 0,
                switched_at: None,
            }),
            wake: tokio::sync::Notify::new(),
            checking: tokio::sync::Mutex::new(()),
            moves: Default::default(),
        }
    }

    /// The connect options of the first server, which the pool starts on.
    pub(super) fn first_options(&self) -> AnyConnectOptions {
        self.options[0].clone()
    }

    /// The URL (without password) of the server in use.
    pub(super) fn current_url(&self) -> &str {
        &self.urls[self.state.lock().current]
    }

    /// `before_acquire`: a connection opened before the last move leads to the old server.
    pub(super) fn connection_is_current(&self, age: Duration) -> bool {
        super::opened_after(self.state.lock().switched_at, age)
    }

    /// Names the server an unreachable-database error came from, and wakes the watcher.
    pub(super) fn explain(&self, e: DbError) -> DbError {
        let detail = match &e {
            DbError::Unavailable(m) => m.clone(),
            DbError::Timeout(d) => format!("no answer within {d:?}"),
            _ => return e,
        };
        self.wake.notify_one();
        let current = self.state.lock().current;
        DbError::Unavailable(format!(
            "server {} ({} of {}): {detail}; kvmfs moves to the next server that answers",
            self.urls[current],
            current + 1,
            self.urls.len()
        ))
    }

    /// Whether server `i` answers and is in the cluster's primary component.
    async fn probe(&self, i: usize) -> Result<(), String> {
        let work = async {
            // On a Galera server, whether it is in the primary component; on a server
            // without Galera, no row (it may be used).
            let row = sqlx::query("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
                .fetch_optional(&self.probes[i])
                .await?;
            match row {
                None => Ok::<_, sqlx::Error>(None),
                Some(r) => Ok(Some(r.try_get::<String, _>(1)?)),
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Err(super::redact_message(&DbError::from(e).to_string())),
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(v))) if v.eq_ignore_ascii_case("ON") => Ok(()),
            Ok(Ok(Some(v))) => Err(format!(
                "wsrep_ready is {v}: the server is not in the cluster's primary component"
            )),
        }
    }

    /// Points the pool at server `to`.
    fn switch(&self, pool: &AnyPool, to: usize, why: &str) {
        let from = {
            let mut s = self.state.lock();
            let from = s.current;
            s.current = to;
            s.switched_at = Some(Instant::now());
            from
        };
        pool.set_connect_options(self.options[to].clone());
        self.moves.inc();
        tracing::error!(
            from = %self.urls[from],
            to = %self.urls[to],
            reason = why,
            "database server changed: kvmfs now uses another server of the cluster"
        );
    }

    /// Checks the server in use; when it fails, moves to the next one that answers, in the
    /// configured order after it.
    pub(super) async fn check(&self, pool: &AnyPool) {
        let _one = self.checking.lock().await;
        let current = self.state.lock().current;
        let why = match self.probe(current).await {
            Ok(()) => return,
            Err(why) => why,
        };
        let n = self.urls.len();
        let mut seen = Vec::new();
        for k in 1..n {
            let next = (current + k) % n;
            match self.probe(next).await {
                Ok(()) => {
                    self.switch(pool, next, &format!("{}: {why}", self.urls[current]));
                    return;
                }
                Err(e) => seen.push(format!("{}: {e}", self.urls[next])),
            }
        }
        tracing::warn!(server = %self.urls[current], error = %why, others = ?seen,
            "the database server in use fails and no other server of the cluster answers");
    }

    /// At start: uses the first server, in the configured order, that answers and is ready.
    /// An error names what each server said when none is.
    pub(super) async fn start(&self, pool: &AnyPool) -> Result<(), DbError> {
        let _one = self.checking.lock().await;
        let mut seen = Vec::new();
        for i in 0..self.urls.len() {
            match self.probe(i).await {
                Ok(()) if i == 0 => return Ok(()),
                Ok(()) => {
                    self.switch(pool, i, &format!("at start: {}", seen.join("; ")));
                    return Ok(());
                }
                Err(e) => seen.push(format!("{}: {e}", self.urls[i])),
            }
        }
        Err(DbError::Unavailable(format!(
            "no server of the cluster answers: {}",
            seen.join("; ")
        )))
    }

    /// Checks every `every`, and at once when a statement found the server unreachable,
    /// until the pool is closed.
    pub(super) async fn watch(self: std::sync::Arc<Self>, pool: AnyPool, every: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
            }
            if pool.is_closed() {
                return;
            }
            self.check(&pool).await;
        }
    }

    pub(super) async fn close(&self) {
        for p in &self.probes {
            p.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Servers {
        sqlx::any::install_default_drivers();
        let s = |port: u16| {
            (
                format!("mysql://k:***@127.0.0.1:{port}/kvmfs"),
                format!("mysql://k:pw@127.0.0.1:{port}/kvmfs")
                    .parse::<AnyConnectOptions>()
                    .unwrap(),
            )
        };
        Servers::new(vec![s(1), s(2), s(3)], Duration::from_millis(200))
    }

    #[tokio::test]
    async fn errors_name_the_server_and_moves_follow_the_order() {
        let s = servers();
        let e = s
            .explain(DbError::Unavailable("connection refused".into()))
            .to_string();
        assert_eq!(
            e,
            "database unreachable: server mysql://k:***@127.0.0.1:1/kvmfs (1 of 3): \
             connection refused; kvmfs moves to the next server that answers"
        );
        assert_eq!(
            s.explain(DbError::Conflict("taken".into())).to_string(),
            "already exists: taken"
        );
        let pool = sqlx::any::AnyPoolOptions::new().connect_lazy_with(s.first_options());
        assert!(s.connection_is_current(Duration::from_secs(3600)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.switch(&pool, 2, "test");
        assert_eq!(s.current_url(), "mysql://k:***@127.0.0.1:3/kvmfs");
        assert!(pool.connect_options().database_url.as_str().contains(":3/"));
        assert_eq!(s.moves.get(), 1);
        assert!(!s.connection_is_current(Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.connection_is_current(Duration::from_millis(5)));
    }

    #[tokio::test]
    async fn with_no_server_answering_start_says_what_each_said() {
        let s = servers();
        let pool = sqlx::any::AnyPoolOptions::new().connect_lazy_with(s.first_options());
        let e = s.start(&pool).await.unwrap_err().to_string();
        assert!(e.contains("no server of the cluster answers"), "{e}");
        for port in 1..=3 {
            assert!(e.contains(&format!("127.0.0.1:{port}/kvmfs: ")), "{e}");
        }
        assert!(!e.contains(":pw@"), "{e}");
        assert_eq!(s.current_url(), "mysql://k:***@127.0.0.1:1/kvmfs");
    }
}

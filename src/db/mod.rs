//! The database: the only code that imports `sqlx`. One `AnyPool` serves MariaDB/MySQL (the
//! production database of the original design) and SQLite (the embedded default); the SQL
//! here is written to run unchanged on both. Migrations in `migrations/` run at start.
//! Every statement runs under the configured deadline, so a dead server costs a bounded wait.

mod addresses;
mod failover;
mod galera;
#[macro_use]
mod rows;
mod vm;
mod workers;

pub use rows::{BuildRow, InstanceRecord, Loads, UserQuota, VmFingerprint};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use crate::model::{InstanceState, Made, Part, Step};

/// Errors from the database layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("database unreachable: {0}")]
    Unavailable(String),
    #[error("database timed out after {0:?}")]
    Timeout(Duration),
    #[error("database error: {0}")]
    Query(String),
    /// The server refused a statement (not for a uniqueness constraint: that is
    /// `Conflict`); `code` is its SQLSTATE, e.g. `40001` for a deadlock or a Galera
    /// certification conflict, which is worth retrying.
    #[error("database error: {message}")]
    Refused {
        code: Option<String>,
        message: String,
    },
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// A uniqueness constraint refused the write (name or address taken).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The row is not in a state that allows the change.
    #[error("{0}")]
    State(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("address pool {0} is exhausted")]
    PoolExhausted(String),
    /// A per-user limit refuses the change (see `UserQuota`).
    #[error("{0}")]
    Quota(String),
    /// The row the change was for is gone, or its name now belongs to another incarnation.
    #[error("{0}")]
    Replaced(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                DbError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(ref d) if d.is_unique_violation() => {
                DbError::Conflict(d.message().to_string())
            }
            // Error 1047: a Galera server out of the cluster's primary component takes no
            // statements; to kvmfs it is as good as gone.
            sqlx::Error::Database(ref d) if d.code().as_deref() == Some("08S01") => {
                DbError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(ref d) => DbError::Refused {
                code: d.code().map(|c| c.into_owned()),
                message: e.to_string(),
            },
            other => DbError::Query(other.to_string()),
        }
    }
}

impl DbError {
    /// A deadlock, or a Galera certification conflict with a transaction committed on
    /// another server (error 1213, SQLSTATE 40001): the transaction was rolled back and
    /// may simply run again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Refused { code: Some(c), .. } if c == "40001")
    }
}

/// How many times a transaction runs when it keeps conflicting (see `Db::transaction`);
/// every attempt also counts against the one deadline of the call.
const TX_ATTEMPTS: u32 = 10;

/// Whether a connection `age` old was opened after `switched` (a move of the pool to
/// another server), so that it cannot lead to the server before.
fn opened_after(switched: Option<std::time::Instant>, age: Duration) -> bool {
    let Some(switched) = switched else {
        return true;
    };
    std::time::Instant::now()
        .checked_sub(age)
        .is_some_and(|opened| opened > switched)
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// Migrations may run longer than one statement; they still must not hang start-up.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection pool with a per-statement deadline.
#[derive(Clone)]
pub struct Db {
    /// Every statement goes through this pool; after a failover it leads to the replica.
    pool: AnyPool,
    timeout: Duration,
    /// Serialises this daemon's address allocations: concurrent builds would otherwise all
    /// pick the same lowest free address and retry against each other.
    alloc_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The URL without its password, for messages and logs.
    display_url: String,
    /// Set when a replica is configured (see `failover`).
    failover: Option<Arc<failover::Failover>>,
    /// Set when the servers of a Galera cluster are configured (see `galera`).
    galera: Option<Arc<galera::Servers>>,
    /// The last `vm.rev` stamp this daemon wrote or saw (see `next_rev`).
    rev_clock: Arc<AtomicI64>,
    /// Set while statements cannot reach the database (see `gate`).
    down: Arc<parking_lot::Mutex<Option<Down>>>,
    /// Counts the moves to the replica (shared with the failover, and with the metrics).
    failovers: Arc<crate::metrics::Counter>,
}

/// Why the database could not be reached, and when a change may try it again.
struct Down {
    reason: String,
    retry_at: std::time::Instant,
}

impl Db {
    /// Opens a pool to `url` (creating a SQLite file and its folder if needed).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Db, DbError> {
        install_default_drivers();
        let display_url = redact_url(url);
        let url = prepare_sqlite(url)?;
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 8 })
            .acquire_timeout(timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets readers run beside the writer; busy_timeout makes a
                        // writer wait for the lock instead of failing at once. Under WAL,
                        // synchronous=NORMAL syncs at checkpoints rather than at every commit:
                        // a crash of kvmfs loses nothing, a crash of the machine may lose the
                        // last commits but never corrupts the file.
                        sqlx::query("PRAGMA journal_mode=WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous=NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout=1000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url);
        let pool = match tokio::time::timeout(timeout * 2, pool).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(DbError::Unavailable(format!(
                    "{display_url}: {}",
                    redact_message(&e.to_string())
                )));
            }
            Err(_) => {
                return Err(DbError::Unavailable(format!(
                    "{display_url}: no answer within {:?}",
                    timeout * 2
                )));
            }
        };
        if let Some(path) = sqlite_path(&url) {
            make_private(&path);
        }
        Ok(Db {
            pool,
            timeout,
            alloc_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            display_url,
            failover: None,
            galera: None,
            rev_clock: Arc::new(AtomicI64::new(0)),
            down: Arc::default(),
            failovers: Arc::default(),
        })
    }

    /// Opens a pool to the MariaDB/MySQL primary `url` that fails over to `replica_url`
    /// (see `failover`): at start when the primary does not answer or the replica records a
    /// failover already, and later when a watcher, checking every `every`, finds the
    /// primary gone and the replica promoted.
    pub async fn connect_with_replica(
        url: &str,
        replica_url: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<Db, DbError> {
        install_default_drivers();
        let display_url = redact_url(url);
        let fo = Arc::new(failover::Failover::new(
            display_url.clone(),
            redact_url(replica_url),
            options(url)?,
            options(replica_url)?,
            timeout,
        ));
        let (f1, f2) = (fo.clone(), fo.clone());
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(timeout)
            .after_connect(move |conn, _meta| {
                let f = f1.clone();
                Box::pin(async move { f.check_new_connection(conn).await })
            })
            .before_acquire(move |_conn, meta| {
                let current = f2.connection_is_current(meta.age);
                Box::pin(async move { Ok(current) })
            })
            .connect_lazy_with(options(url)?);
        let probe = async {
            let mut conn = pool.acquire().await?;
            sqlx::query("SELECT CAST(@@server_id AS SIGNED)")
                .fetch_one(&mut *conn)
                .await?
                .try_get::<i64, _>(0)
        };
        let primary = match tokio::time::timeout(timeout * 2, probe).await {
            Ok(r) => r.map_err(|e| match DbError::from(e) {
                DbError::Unavailable(m) => DbError::Unavailable(redact_message(&m)),
                DbError::Query(m) => DbError::Query(redact_message(&m)),
                other => other,
            }),
            Err(_) => Err(DbError::Timeout(timeout * 2)),
        };
        fo.start(&pool, primary).await?;
        tokio::spawn(fo.clone().watch(pool.clone(), every));
        Ok(Db {
            pool,
            timeout,
            alloc_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            display_url,
            failovers: fo.failovers.clone(),
            failover: Some(fo),
            galera: None,
            rev_clock: Arc::new(AtomicI64::new(0)),
            down: Arc::default(),
        })
    }

    /// Opens a pool to the servers of one Galera cluster, `urls` in order of preference
    /// (see `galera`): the first that answers, and later the next that answers when a
    /// watcher, checking every `every` and at once when a statement finds the server gone,
    /// finds it failing.
    pub async fn connect_cluster(
        urls: &[String],
        timeout: Duration,
        every: Duration,
    ) -> Result<Db, DbError> {
        install_default_drivers();
        let servers = urls
            .iter()
            .map(|u| Ok((redact_url(u), options(u)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let servers = Arc::new(galera::Servers::new(servers, timeout));
        let s = servers.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(timeout)
            .before_acquire(move |_conn, meta| {
                let current = s.connection_is_current(meta.age);
                Box::pin(async move { Ok(current) })
            })
            .connect_lazy_with(servers.first_options());
        servers.start(&pool).await?;
        tokio::spawn(servers.clone().watch(pool.clone(), every));
        Ok(Db {
            pool,
            timeout,
            alloc_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            display_url: redact_url(&urls[0]),
            failover: None,
            failovers: servers.moves.clone(),
            galera: Some(servers),
            rev_clock: Arc::new(AtomicI64::new(0)),
            down: Arc::default(),
        })
    }

    /// The count of moves to the replica (0 or 1: a move is for good), or to another server
    /// of a Galera cluster.
    pub fn failovers(&self) -> Arc<crate::metrics::Counter> {
        self.failovers.clone()
    }

    /// Whether this database failed over to its replica.
    pub fn on_replica(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| f.on_replica())
    }

    /// An error of the active database, with what is known about the replica.
    fn explain(&self, e: DbError) -> DbError {
        match (&self.failover, &self.galera) {
            (Some(f), _) => f.explain(e),
            (None, Some(g)) => g.explain(e),
            (None, None) => e,
        }
    }

    /// The URL of the database in use (the replica after a failover), without its password.
    pub fn display_url(&self) -> &str {
        match (&self.failover, &self.galera) {
            (Some(f), _) if f.on_replica() => &f.replica_url,
            (_, Some(g)) => g.current_url(),
            _ => &self.display_url,
        }
    }

    /// Runs the migrations in `migrations/` (idempotent), within a bounded time.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let limit = MIGRATION_TIMEOUT.max(self.timeout);
        match tokio::time::timeout(limit, MIGRATOR.run(&self.pool)).await {
            Ok(r) => r.map_err(|e| DbError::Migrate(e.to_string())),
            Err(_) => Err(DbError::Timeout(limit)),
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, DbError> {
        self.within_deadline(async { fut.await.map_err(DbError::from) })
            .await
    }

    /// Runs `fut` under the deadline; its error (or the timeout) says what is known of the
    /// database (`explain`), and the gate learns whether it was reached (`note`).
    async fn within_deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.explain(e)),
            Err(_) => Err(self.explain(DbError::Timeout(self.timeout))),
        };
        self.note(&r);
        r
    }

    /// Runs one transaction, `attempt`, within the deadline, and again when it conflicts with
    /// another (a deadlock, or on Galera a conflict with a transaction committed on another
    /// server, reported at commit): at most `TX_ATTEMPTS` times, after a short random pause
    /// that grows, so that two daemons placing at once settle rather than collide again.
    /// `attempt` must be a whole transaction: a rolled-back attempt leaves nothing behind.
    async fn transaction<T, F, Fut>(&self, mut attempt: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let work = async {
            let mut tries = 1;
            loop {
                match attempt().await {
                    Err(e) if e.is_retryable() && tries < TX_ATTEMPTS => {
                        tracing::debug!(error = %e, attempt = tries, "transaction conflicted; running it again");
                        tokio::time::sleep(conflict_pause(tries)).await;
                        tries += 1;
                    }
                    r => return r,
                }
            }
        };
        self.within_deadline(work).await
    }

    /// Notes whether a statement reached the database (see `gate`).
    fn note<T, E>(&self, r: &Result<T, E>)
    where
        E: std::borrow::Borrow<DbError>,
    {
        let mut down = self.down.lock();
        match r {
            Ok(_) => *down = None,
            Err(e) => match e.borrow() {
                e @ (DbError::Unavailable(_) | DbError::Timeout(_)) => {
                    *down = Some(Down {
                        reason: e.to_string(),
                        retry_at: std::time::Instant::now() + self.timeout,
                    });
                }
                // The database answered, if only to refuse.
                _ => *down = None,
            },
        }
    }

    /// Lets a change try the database, or refuses it at once while the database is known
    /// to be unreachable: after a statement could not reach it, changes are refused
    /// without waiting until one of them, let through every `db_timeout_ms`, or any
    /// statement (the poller reads every `refresh_ms`) reaches it again. So a frozen
    /// database costs one caller its deadline, not every caller in turn (the kernel runs
    /// `mkdir`s and `rmdir`s in one folder one at a time).
    pub fn gate(&self) -> Result<(), DbError> {
        let mut down = self.down.lock();
        let Some(d) = down.as_mut() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if now >= d.retry_at {
            // This one tries; the others keep failing fast until it knows.
            d.retry_at = now + self.timeout;
            return Ok(());
        }
        Err(DbError::Unavailable(format!(
            "{} (refused at once while the database does not answer; tried again within {:?})",
            d.reason.trim_start_matches("database unreachable: "),
            d.retry_at - now
        )))
    }

    /// A stamp for a `vm` write: above every stamp this daemon wrote or saw, and otherwise
    /// the clock in microseconds, so stamps grow across daemons too (see `vm_fingerprint`).
    fn next_rev(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut last = self.rev_clock.load(AtomicOrdering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self.rev_clock.compare_exchange_weak(
                last,
                next,
                AtomicOrdering::Relaxed,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(f) = &self.failover {
            f.close().await;
        }
        if let Some(g) = &self.galera {
            g.close().await;
        }
    }
}

/// The connect options of a MariaDB/MySQL URL; an error without its password.
fn options(url: &str) -> Result<AnyConnectOptions, DbError> {
    url.parse::<AnyConnectOptions>().map_err(|e| {
        DbError::Unavailable(format!(
            "{}: {}",
            redact_url(url),
            redact_message(&e.to_string())
        ))
    })
}

/// The pause before attempt `tries + 1` of a conflicting transaction: random, up to
/// 2^tries ms (at most 256 ms).
fn conflict_pause(tries: u32) -> Duration {
    let mut b = [0u8; 2];
    let r = crate::random::fill(&mut b).map_or(0, |()| u64::from(u16::from_le_bytes(b)));
    let most = 1u64 << tries.min(8);
    Duration::from_millis(1 + r % most)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The file of a `sqlite://PATH?…` URL (not `:memory:`).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (path != ":memory:" && !path.is_empty()).then(|| std::path::PathBuf::from(path))
}

/// Takes every group and other bit off a SQLite database and its journal files: they hold
/// every instance's row. (New files are private already: the daemon's umask is 077.)
fn make_private(db: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if let Ok(m) = std::fs::metadata(&p) {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %p.display(), mode = format!("{mode:04o}"), "database file readable by others; making it private");
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700));
            }
        }
    }
}

/// Creates the folder of a SQLite database and asks the driver to create the file.
fn prepare_sqlite(url: &str) -> Result<String, DbError> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    else {
        return Ok(url.to_string());
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        crate::statedir::create_private_dir(dir)
            .map_err(|e| DbError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// `mysql://user:secret@host/db` → `mysql://user:***@host/db`: passwords never reach a log.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(p) => p,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Driver messages can quote the URL; strip anything that looks like credentials.
fn redact_message(m: &str) -> String {
    m.split_whitespace()
        .map(|w| {
            if w.contains("://") {
                redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:s3cret@127.0.0.1:3306/kvmfs"),
            "mysql://root:***@127.0.0.1:3306/kvmfs"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/x.db"),
            "sqlite:///var/lib/x.db"
        );
        assert!(!redact_message("bad url mysql://a:pw@h/d").contains("pw"));
    }

    #[test]
    fn sqlite_urls_create_files() {
        assert_eq!(
            prepare_sqlite("sqlite:///tmp/kvmfs-test-x/a.db").unwrap(),
            "sqlite:///tmp/kvmfs-test-x/a.db?mode=rwc"
        );
        assert_eq!(prepare_sqlite("mysql://h/d").unwrap(), "mysql://h/d");
    }

    #[tokio::test]
    async fn sqlite_migrates_and_registers_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let db = Db::connect(&url, Duration::from_secs(2)).await.unwrap();
        db.migrate().await.unwrap();
        db.migrate().await.unwrap();
        db.register_host("kvm1", "10.0.0.1", "test:///default")
            .await
            .unwrap();
        db.register_host("kvm1", "10.0.0.2", "test:///default")
            .await
            .unwrap();
        assert_eq!(
            db.list_hosts().await.unwrap(),
            vec![("kvm1".to_string(), "10.0.0.2".to_string())]
        );
        assert!(db.list_vms().await.unwrap().is_empty());
    }

    /// The rows kvmfs puts in its picture without reading them back are the rows the
    /// database holds, and every write moves the fingerprint away from the one the poller
    /// last read.
    #[tokio::test]
    async fn rows_as_written_match_the_database_and_every_write_moves_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let db = Db::connect(&url, Duration::from_secs(2)).await.unwrap();
        db.migrate().await.unwrap();
        let first = db.vm_fingerprint().await.unwrap();
        // The fingerprint alone, with no write, stays.
        assert_eq!(db.vm_fingerprint().await.unwrap(), first);
        let mut last = first;
        let mut moved = async |fp: VmFingerprint, what: &str| {
            assert_ne!(fp, last, "{what} did not move the fingerprint");
            last = fp;
            // The table's fingerprint is the one its rows give.
            let rows = db.list_vms().await.unwrap();
            assert_eq!(VmFingerprint::of(&rows), fp, "after {what}");
        };

        let draft = db
            .insert_draft("web1", 1000, &UserQuota::default())
            .await
            .unwrap();
        assert_eq!(Some(&draft), db.get_vm("web1").await.unwrap().as_ref());
        moved(db.vm_fingerprint().await.unwrap(), "insert_draft").await;

        let b = BuildRow {
            vcpus: 2,
            ram_mb: 2048,
            disk_gb: 10,
            image: "debian-12.qcow2",
            purpose: "web",
            git: Some("https://example.org/site.git"),
            spec: "{}",
        };
        let (node, rev) = db
            .begin_build(
                "web1",
                &draft.incarnation,
                1000,
                &UserQuota::default(),
                "w1",
                &b,
                &[],
                |_| Ok::<_, DbError>("kvm1".to_string()),
            )
            .await
            .unwrap();
        let mut built = draft.clone();
        b.apply(&mut built, &node, "w1", rev);
        let mut stored = db.get_vm("web1").await.unwrap().unwrap();
        stored.updated_at = built.updated_at;
        assert_eq!(built, stored);
        moved(db.vm_fingerprint().await.unwrap(), "begin_build").await;

        db.set_step("web1", "allocating addresses").await.unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "set_step").await;
        db.set_addresses_and_keys(
            "web1",
            "generating key",
            Some("10.0.0.5"),
            None,
            "pub",
            "priv",
        )
        .await
        .unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "set_addresses_and_keys").await;
        let made = Made::default().with(Part::Disk, true);
        db.set_step_and_made("web1", "creating disk", made)
            .await
            .unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "set_step_and_made").await;
        db.set_made("web1", Made::default()).await.unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "set_made").await;
        db.finish_build("web1").await.unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "finish_build").await;
        db.set_error("web1", &draft.incarnation, Some("refused"))
            .await
            .unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "set_error").await;
        let read = db.get_vm("web1").await.unwrap().unwrap();
        assert!(
            matches!(
                db.begin_delete("web1", "w1", read.rev - 1).await,
                Err(DbError::State(_))
            ),
            "a row changed since it was read is not marked"
        );
        let rev = db.begin_delete("web1", "w1", read.rev).await.unwrap();
        let row = db.get_vm("web1").await.unwrap().unwrap();
        assert_eq!(
            (row.state, row.step, row.worker.as_deref(), row.rev),
            (InstanceState::Deleting, Step::Deleting, Some("w1"), rev)
        );
        moved(db.vm_fingerprint().await.unwrap(), "begin_delete").await;
        assert!(
            db.take_over("web1", InstanceState::Deleting, Some("w1"), "w2")
                .await
                .unwrap()
        );
        moved(db.vm_fingerprint().await.unwrap(), "take_over").await;
        db.delete_vm("web1").await.unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "delete_vm").await;

        let web2 = db
            .insert_draft("web2", 0, &UserQuota::default())
            .await
            .unwrap();
        // Placement sees what every instance holds, and which domains are instances.
        let web3 = db
            .insert_draft("web3", 0, &UserQuota::default())
            .await
            .unwrap();
        db.begin_build(
            "web3",
            &web3.incarnation,
            0,
            &UserQuota::default(),
            "w1",
            &b,
            &[],
            |_| Ok::<_, DbError>("kvm2".to_string()),
        )
        .await
        .unwrap();
        let asked = [("kvm2", "web3"), ("kvm1", "web3"), ("kvm2", "legacy")];
        let node = db
            .begin_build(
                "web2",
                &web2.incarnation,
                0,
                &UserQuota::default(),
                "w1",
                &b,
                &asked,
                |loads| {
                    assert_eq!(
                        loads.by_node,
                        [("kvm2".to_string(), (2, 2048))].into_iter().collect()
                    );
                    assert_eq!(
                        loads.managed,
                        [("kvm2".to_string(), "web3".to_string())]
                            .into_iter()
                            .collect()
                    );
                    Ok::<_, DbError>("kvm1".to_string())
                },
            )
            .await
            .unwrap();
        assert_eq!(node.0, "kvm1");
        moved(db.vm_fingerprint().await.unwrap(), "a second build").await;
        db.fail_build("web2", "it broke", Made::default())
            .await
            .unwrap();
        moved(db.vm_fingerprint().await.unwrap(), "fail_build").await;
    }

    /// Per-user limits are checked by the statements that would go past them; root has none.
    #[tokio::test]
    async fn quotas_refuse_what_would_go_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let db = Db::connect(&url, Duration::from_secs(2)).await.unwrap();
        db.migrate().await.unwrap();
        let q = UserQuota {
            drafts: 2,
            instances: 1,
            vcpus: 2,
            ram_mb: 4096,
        };
        let a = db.insert_draft("a", 1000, &q).await.unwrap();
        let b = db.insert_draft("b", 1000, &q).await.unwrap();
        assert!(matches!(
            db.insert_draft("c", 1000, &q).await,
            Err(DbError::Quota(_))
        ));
        // Another user, and root, are not held back by uid 1000's drafts.
        db.insert_draft("d", 1001, &q).await.unwrap();
        for i in 0..5 {
            db.insert_draft(&format!("r{i}"), 0, &q).await.unwrap();
        }
        let build = |vcpus| BuildRow {
            vcpus,
            ram_mb: 1024,
            disk_gb: 10,
            image: "i",
            purpose: "custom",
            git: None,
            spec: "{}",
        };
        let place = |_: &Loads| Ok::<_, DbError>("kvm1".to_string());
        // Three vCPUs: past the vCPU limit, whatever else.
        let e = db
            .begin_build("a", &a.incarnation, 1000, &q, "w", &build(3), &[], place)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DbError::Quota(m) if m.contains("vcpus")),
            "{e}"
        );
        db.begin_build("a", &a.incarnation, 1000, &q, "w", &build(1), &[], place)
            .await
            .unwrap();
        let e = db
            .begin_build("b", &b.incarnation, 1000, &q, "w", &build(1), &[], place)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DbError::Quota(m) if m.contains("instances")),
            "{e}"
        );
        // The drafts limit counts drafts only: a built instance left room for one more.
        db.insert_draft("c", 1000, &q).await.unwrap();
        // A commit through an older incarnation of a name changes nothing.
        assert!(matches!(
            db.begin_build("b", "not-b", 0, &q, "w", &build(1), &[], place)
                .await,
            Err(DbError::Replaced(_))
        ));
    }
}

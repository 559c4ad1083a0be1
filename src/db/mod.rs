//! The database: the only code that imports `sqlx`. One `AnyPool` serves MariaDB/MySQL (the
//! production database of the original design) and SQLite (the embedded default); the SQL
//! here is written to run unchanged on both. Migrations in `migrations/` run at start.
//! Every statement runs under the configured deadline, so a dead server costs a bounded wait.

mod failover;

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

/// What one user may hold, checked by the database in the statement or transaction that
/// would go past it (0: no limit). Root (uid 0) has no limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserQuota {
    /// Rows in `draft` or `failed` (a name, nothing on a node).
    pub drafts: u64,
    /// Rows that hold room on a node (`building`, `ready`, `deleting`).
    pub instances: u64,
    pub vcpus: u64,
    pub ram_mb: u64,
}

/// A limit as a bound for SQL: 0 (none) and root's rows get the largest number.
fn limit(value: u64, owner: i64) -> i64 {
    if value == 0 || owner == 0 {
        i64::MAX
    } else {
        i64::try_from(value).unwrap_or(i64::MAX)
    }
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
            sqlx::Error::Database(ref d) => DbError::Refused {
                code: d.code().map(|c| c.into_owned()),
                message: e.to_string(),
            },
            other => DbError::Query(other.to_string()),
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// Migrations may run longer than one statement; they still must not hang start-up.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// One instance's row of the `vm` table, converted: typed state and step, the original
/// columns under the names the rest of kvmfs uses (`vmname` → `name`, `hostname` → `node`,
/// `vmip` → `ip_eth0`, `ram` → `ram_mb`, `ssh_private_key` → `sealed_key`). Nothing above
/// `db` sees a column.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub name: String,
    /// The node it is placed on (`vm.hostname`).
    pub node: Option<String>,
    /// The address on the first network (`vm.vmip`).
    pub ip_eth0: Option<String>,
    pub ram_mb: Option<i64>,
    /// The address on the second network (`vm.ip_eth1`).
    pub ip_eth1: Option<String>,
    pub vcpus: Option<i64>,
    pub disk_gb: Option<i64>,
    pub image: Option<String>,
    pub purpose: Option<String>,
    pub git_url: Option<String>,
    pub state: InstanceState,
    pub step: Step,
    pub error: Option<String>,
    /// The uid that made it (`mkdir`).
    pub owner_uid: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub spec: Option<String>,
    /// The OpenSSH private key, sealed (see `secrets`); never printed (see `Debug`).
    pub sealed_key: Option<String>,
    /// What kvmfs made (or was about to make) on the node for this instance.
    pub made: Made,
    /// The daemon running the row's build or delete (see `Cluster::worker_id`).
    pub worker: Option<String>,
    /// The stamp of the row's last write (see `Db::next_rev`).
    pub rev: i64,
    /// Random id given when the row was made: tells this row from an earlier or later one
    /// of the same name (see `InstanceRecord::identity`).
    pub incarnation: String,
}

/// What the instances of every kvmfs on the database hold, read under the placement lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    /// (vCPUs, RAM MB) that instances in `building`, `ready` or `deleting` hold, per node.
    pub by_node: std::collections::HashMap<String, (u64, u64)>,
    /// Of the (node, domain) pairs asked about, those that are such an instance.
    pub managed: std::collections::HashSet<(String, String)>,
}

impl std::fmt::Debug for InstanceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRecord")
            .field("name", &self.name)
            .field("node", &self.node)
            .field("state", &self.state)
            .field("step", &self.step)
            .field("ip_eth0", &self.ip_eth0)
            .field("ip_eth1", &self.ip_eth1)
            .field("owner_uid", &self.owner_uid)
            .field(
                "sealed_key",
                &self.sealed_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// `SELECT` of every `vm` column `vm_row` reads, followed by `$tail` (a literal, so the
/// statement stays a static string).
macro_rules! select_vm {
    ($tail:literal) => {
        concat!(
            "SELECT vmname, hostname, vmip, ram, ip_eth1, vcpus, disk_gb, image, purpose, ",
            "git_url, state, step, error, owner_uid, created_at, updated_at, spec, ",
            "ssh_private_key, made, worker, rev, incarnation FROM vm",
            $tail
        )
    };
}

impl InstanceRecord {
    /// The row `insert_draft` writes.
    fn draft(name: &str, owner: u32, now: i64, rev: i64, incarnation: String) -> InstanceRecord {
        InstanceRecord {
            name: name.to_string(),
            node: None,
            ip_eth0: None,
            ram_mb: None,
            ip_eth1: None,
            vcpus: None,
            disk_gb: None,
            image: None,
            purpose: None,
            git_url: None,
            state: InstanceState::Draft,
            step: Step::None,
            error: None,
            owner_uid: owner,
            created_at: now,
            updated_at: now,
            spec: None,
            sealed_key: None,
            made: Made::default(),
            worker: None,
            rev,
            incarnation,
        }
    }

    /// What tells this row from any other row that had or will have its name: its
    /// incarnation, or for rows made before incarnations existed, its creation time.
    pub fn identity(&self) -> String {
        if self.incarnation.is_empty() {
            format!("legacy-{}", self.created_at)
        } else {
            self.incarnation.clone()
        }
    }
}

/// See `Db::vm_fingerprint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmFingerprint {
    rows: i64,
    max_rev: i64,
    rev_sum: i64,
}

/// The prime `vm_fingerprint` sums the stamps modulo.
const REV_MODULUS: i64 = 1_000_003;

impl VmFingerprint {
    /// The fingerprint the table would have if it held exactly `rows`: compared with the
    /// database's, it tells whether a picture of the table is still whole.
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a InstanceRecord>) -> VmFingerprint {
        let mut fp = VmFingerprint {
            rows: 0,
            max_rev: 0,
            rev_sum: 0,
        };
        for r in rows {
            fp.rows += 1;
            fp.max_rev = fp.max_rev.max(r.rev);
            fp.rev_sum += r.rev % REV_MODULUS;
        }
        fp
    }
}

/// What `begin_build` writes.
pub struct BuildRow<'a> {
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub image: &'a str,
    pub purpose: &'a str,
    pub git: Option<&'a str>,
    pub spec: &'a str,
}

impl BuildRow<'_> {
    /// Changes `row` as `begin_build` changed it in the database, placed on `node` and
    /// worked on by `worker`, so the caller need not read it back.
    pub fn apply(&self, row: &mut InstanceRecord, node: &str, worker: &str, rev: i64) {
        row.rev = rev;
        let n = |v: u64| Some(i64::try_from(v).unwrap_or(i64::MAX));
        row.state = InstanceState::Building;
        row.step = Step::Placed;
        row.node = Some(node.to_string());
        row.ram_mb = n(self.ram_mb);
        row.vcpus = Some(i64::from(self.vcpus));
        row.disk_gb = n(self.disk_gb);
        row.image = Some(self.image.to_string());
        row.purpose = Some(self.purpose.to_string());
        row.git_url = self.git.map(str::to_string);
        row.spec = Some(self.spec.to_string());
        row.error = None;
        row.made = Made::default();
        row.worker = Some(worker.to_string());
        row.updated_at = unix_now();
    }
}

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
    /// The last `vm.rev` stamp this daemon wrote or saw (see `next_rev`).
    rev_clock: Arc<AtomicI64>,
    /// Set while statements cannot reach the database (see `gate`).
    down: Arc<parking_lot::Mutex<Option<Down>>>,
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
            rev_clock: Arc::new(AtomicI64::new(0)),
            down: Arc::default(),
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
        let options = |u: &str| {
            u.parse::<AnyConnectOptions>().map_err(|e| {
                DbError::Unavailable(format!(
                    "{}: {}",
                    redact_url(u),
                    redact_message(&e.to_string())
                ))
            })
        };
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
            failover: Some(fo),
            rev_clock: Arc::new(AtomicI64::new(0)),
            down: Arc::default(),
        })
    }

    /// Whether this database failed over to its replica.
    pub fn on_replica(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| f.on_replica())
    }

    /// An error of the active database, with what is known about the replica.
    fn explain(&self, e: DbError) -> DbError {
        match &self.failover {
            Some(f) => f.explain(e),
            None => e,
        }
    }

    fn sql_err(&self, e: sqlx::Error) -> DbError {
        self.explain(DbError::from(e))
    }

    /// The URL of the database in use (the replica after a failover), without its password.
    pub fn display_url(&self) -> &str {
        match &self.failover {
            Some(f) if f.on_replica() => &f.replica_url,
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
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.sql_err(e)),
            Err(_) => Err(self.explain(DbError::Timeout(self.timeout))),
        };
        self.note(&r);
        r
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

    /// Records a configured node in `host`, as the original `makevm.sh` did on first use.
    pub async fn register_host(&self, hostname: &str, ip: &str, uri: &str) -> Result<(), DbError> {
        let now = unix_now();
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let updated = sqlx::query("UPDATE host SET ip = ?, uri = ? WHERE hostname = ?")
                .bind(ip)
                .bind(uri)
                .bind(hostname)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                sqlx::query(
                    "INSERT INTO host (hostname, ip, uri, registered_at) VALUES (?, ?, ?, ?)",
                )
                .bind(hostname)
                .bind(ip)
                .bind(uri)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
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

    /// A fingerprint of the `vm` table that moves with every write kvmfs makes to it, read
    /// with one aggregate instead of every row: the row count (inserts, deletes), the highest
    /// stamp, and a sum of every stamp modulo a prime (an update by any kvmfs gives its row a
    /// new stamp, which moves the sum even where it is not the highest). Taking it also moves
    /// this daemon's stamps above every one seen.
    pub async fn vm_fingerprint(&self) -> Result<VmFingerprint, DbError> {
        let row = self
            .bounded(
                sqlx::query(
                    "SELECT COUNT(*), CAST(COALESCE(MAX(rev), 0) AS SIGNED), \
                     CAST(COALESCE(SUM(rev % 1000003), 0) AS SIGNED) FROM vm",
                )
                .fetch_one(&self.pool),
            )
            .await?;
        let get = |i: usize| row.try_get::<i64, _>(i).map_err(DbError::from);
        let fp = VmFingerprint {
            rows: get(0)?,
            max_rev: get(1)?,
            rev_sum: get(2)?,
        };
        self.rev_clock
            .fetch_max(fp.max_rev, AtomicOrdering::Relaxed);
        Ok(fp)
    }

    /// Every `vm` row.
    pub async fn list_vms(&self) -> Result<Vec<InstanceRecord>, DbError> {
        let rows = self
            .bounded(sqlx::query(select_vm!("")).fetch_all(&self.pool))
            .await?;
        rows.iter().map(vm_row).collect()
    }

    /// Hostnames registered in `host`.
    pub async fn list_hosts(&self) -> Result<Vec<(String, String)>, DbError> {
        let rows = self
            .bounded(
                sqlx::query("SELECT hostname, ip FROM host ORDER BY hostname")
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Reserves `name` for `owner` as a draft, and returns the row as written. A taken name
    /// is `Conflict`; an owner who already holds `quota.drafts` drafts and failed instances
    /// is `Quota`. The count is read just before the insert, without a lock (a locking
    /// read would make concurrent inserts deadlock): concurrent `mkdir`s of one user can go
    /// past the limit by at most the ones that overlap.
    pub async fn insert_draft(
        &self,
        name: &str,
        owner: u32,
        quota: &UserQuota,
    ) -> Result<InstanceRecord, DbError> {
        let now = unix_now();
        let owner_id = i64::from(owner);
        let max = limit(quota.drafts, owner_id);
        if max < i64::MAX {
            let held: i64 = self
                .bounded(
                    sqlx::query(
                        "SELECT COUNT(*) FROM vm WHERE owner_uid = ? \
                         AND state IN ('draft', 'failed')",
                    )
                    .bind(owner_id)
                    .fetch_one(&self.pool),
                )
                .await?
                .try_get(0)?;
            if held >= max {
                return Err(DbError::Quota(format!(
                    "uid {owner} holds {held} drafts and failed instances; the limit is {} \
                     ([quotas] drafts): build or delete some first",
                    quota.drafts
                )));
            }
        }
        let rev = self.next_rev();
        let incarnation = crate::random::hex(8)
            .map_err(|e| DbError::Query(format!("cannot make an incarnation id: {e}")))?;
        self.bounded(
            sqlx::query(
                "INSERT INTO vm (vmname, state, step, owner_uid, created_at, updated_at, rev, \
                 incarnation) VALUES (?, 'draft', '', ?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(owner_id)
            .bind(now)
            .bind(now)
            .bind(rev)
            .bind(&incarnation)
            .execute(&self.pool),
        )
        .await?;
        Ok(InstanceRecord::draft(name, owner, now, rev, incarnation))
    }

    /// Places a draft (or failed) instance and moves it to `building` with its spec, as one
    /// transaction that holds the placement lock: `choose` sees the resources every instance
    /// in the database holds (including those of other kvmfs mounts), per node, and which of
    /// the `domains` (node, domain name: the active domains this mount does not know as
    /// instances) are instances after all, and names the node. The lock is held for two
    /// aggregate reads and a lookup per such domain, not for a read of every row.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin_build<E: From<DbError>>(
        &self,
        name: &str,
        incarnation: &str,
        owner: u32,
        quota: &UserQuota,
        worker: &str,
        b: &BuildRow<'_>,
        domains: &[(&str, &str)],
        choose: impl FnOnce(&Loads) -> Result<String, E>,
    ) -> Result<(String, i64), E> {
        let owner = i64::from(owner);
        let work = async {
            let mut tx = self.pool.begin().await.map_err(|e| self.sql_err(e))?;
            sqlx::query("UPDATE placement_lock SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.sql_err(e))?;
            let rows = sqlx::query(
                "SELECT hostname, CAST(SUM(COALESCE(vcpus, 0)) AS SIGNED), \
                 CAST(SUM(COALESCE(ram, 0)) AS SIGNED) FROM vm WHERE hostname IS NOT NULL \
                 AND state IN ('building', 'ready', 'deleting') GROUP BY hostname",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.sql_err(e))?;
            let mut loads = Loads::default();
            for r in &rows {
                let n = |i: usize| -> Result<u64, DbError> {
                    Ok(
                        u64::try_from(r.try_get::<i64, _>(i).map_err(|e| self.sql_err(e))?)
                            .unwrap_or(0),
                    )
                };
                let node: String = r.try_get(0).map_err(|e| self.sql_err(e))?;
                loads.by_node.insert(node, (n(1)?, n(2)?));
            }
            for (node, domain) in domains {
                let found = sqlx::query(
                    "SELECT 1 FROM vm WHERE vmname = ? AND hostname = ? \
                     AND state IN ('building', 'ready', 'deleting')",
                )
                .bind(*domain)
                .bind(*node)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.sql_err(e))?;
                if found.is_some() {
                    loads.managed.insert((node.to_string(), domain.to_string()));
                }
            }
            // Root, and a configuration without limits, need no count.
            if owner != 0 && (quota.instances | quota.vcpus | quota.ram_mb) != 0 {
                let held = sqlx::query(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS SIGNED), \
                     CAST(COALESCE(SUM(ram), 0) AS SIGNED) FROM vm WHERE owner_uid = ? \
                     AND state IN ('building', 'ready', 'deleting')",
                )
                .bind(owner)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.sql_err(e))?;
                let mut sums = [0i64; 3];
                for (i, v) in sums.iter_mut().enumerate() {
                    *v = held.try_get::<i64, _>(i).map_err(|e| self.sql_err(e))?;
                }
                check_quota(owner, quota, sums, b)?;
            }
            // A refusal of `choose` is an answer of the database's, not a failure to reach it.
            let node = match choose(&loads) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let rev = self.next_rev();
            let n = sqlx::query(
                "UPDATE vm SET rev = ?, state = 'building', step = 'placed', hostname = ?, ram = ?, \
                 vcpus = ?, disk_gb = ?, image = ?, purpose = ?, git_url = ?, spec = ?, \
                 error = NULL, made = '', worker = ?, updated_at = ? \
                 WHERE vmname = ? AND incarnation = ? AND state IN ('draft', 'failed') \
                 AND made = ''",
            )
            .bind(rev)
            .bind(node.as_str())
            .bind(i64::try_from(b.ram_mb).unwrap_or(i64::MAX))
            .bind(i64::from(b.vcpus))
            .bind(i64::try_from(b.disk_gb).unwrap_or(i64::MAX))
            .bind(b.image)
            .bind(b.purpose)
            .bind(b.git)
            .bind(b.spec)
            .bind(worker)
            .bind(unix_now())
            .bind(name)
            .bind(incarnation)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.sql_err(e))?;
            if n.rows_affected() == 0 {
                let now = sqlx::query("SELECT incarnation FROM vm WHERE vmname = ?")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.sql_err(e))?;
                let same = match &now {
                    Some(r) => {
                        r.try_get::<String, _>(0).map_err(|e| self.sql_err(e))? == incarnation
                    }
                    None => false,
                };
                return Err(if same {
                    DbError::State(format!(
                        "instance {name} is not a draft (already committed, or being deleted)"
                    ))
                } else {
                    DbError::Replaced(format!(
                        "instance {name} was deleted (or deleted and made again) since this \
                         file was opened"
                    ))
                });
            }
            tx.commit().await.map_err(|e| self.sql_err(e))?;
            Ok(Ok((node, rev)))
        };
        let r: Result<Result<(String, i64), E>, DbError> =
            match tokio::time::timeout(self.timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(self.explain(DbError::Timeout(self.timeout))),
            };
        self.note(&r);
        r.map_err(E::from)?
    }

    /// Records that `part` of instance `name` exists (or may exist) on its node, or that it
    /// is gone.
    pub async fn set_made(&self, name: &str, made: Made) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query("UPDATE vm SET rev = ?, made = ?, updated_at = ? WHERE vmname = ?")
                .bind(rev)
                .bind(made.to_string())
                .bind(unix_now())
                .bind(name)
                .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Records the step a build is in together with the parts it is about to make (one
    /// statement for both: the step names the part).
    pub async fn set_step_and_made(
        &self,
        name: &str,
        step: &str,
        made: Made,
    ) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query(
                "UPDATE vm SET rev = ?, step = ?, made = ?, updated_at = ? WHERE vmname = ?",
            )
            .bind(rev)
            .bind(step)
            .bind(made.to_string())
            .bind(unix_now())
            .bind(name)
            .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Records the step an operation is in, so a crash can be finished or undone.
    pub async fn set_step(&self, name: &str, step: &str) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query("UPDATE vm SET rev = ?, step = ?, updated_at = ? WHERE vmname = ?")
                .bind(rev)
                .bind(step)
                .bind(unix_now())
                .bind(name)
                .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Allocates the lowest free address of `pool` in `first..=last` to `name`. The primary
    /// key on (pool, address) decides races between writers; the loser tries the next one.
    pub async fn allocate_ip(
        &self,
        pool: &str,
        first: std::net::Ipv4Addr,
        last: std::net::Ipv4Addr,
        name: &str,
    ) -> Result<std::net::Ipv4Addr, DbError> {
        // Other daemons on the same database still race; the primary key settles that.
        let _one_at_a_time = self.alloc_lock.lock().await;
        for _ in 0..16 {
            let rows = self
                .bounded(
                    sqlx::query("SELECT address FROM ip_alloc WHERE pool = ?")
                        .bind(pool)
                        .fetch_all(&self.pool),
                )
                .await?;
            let used: std::collections::HashSet<u32> = rows
                .iter()
                .filter_map(|r| r.try_get::<String, _>(0).ok())
                .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
                .map(u32::from)
                .collect();
            let Some(free) = (u32::from(first)..=u32::from(last)).find(|a| !used.contains(a))
            else {
                return Err(DbError::PoolExhausted(pool.to_string()));
            };
            let addr = std::net::Ipv4Addr::from(free);
            let r = self
                .bounded(
                    sqlx::query("INSERT INTO ip_alloc (pool, address, vmname) VALUES (?, ?, ?)")
                        .bind(pool)
                        .bind(addr.to_string())
                        .bind(name)
                        .execute(&self.pool),
                )
                .await;
            match r {
                Ok(_) => return Ok(addr),
                Err(DbError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DbError::Conflict(format!(
            "address pool {pool}: too many concurrent allocations"
        )))
    }

    /// Stores the instance's addresses in the original columns and its key pair, with the
    /// build's step.
    pub async fn set_addresses_and_keys(
        &self,
        name: &str,
        step: &str,
        vmip: Option<&str>,
        ip_eth1: Option<&str>,
        public_key: &str,
        private_key: &str,
    ) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query(
                "UPDATE vm SET rev = ?, step = ?, vmip = ?, ip_eth1 = ?, ssh_public_key = ?, \
                 ssh_private_key = ?, updated_at = ? WHERE vmname = ?",
            )
            .bind(rev)
            .bind(step)
            .bind(vmip)
            .bind(ip_eth1)
            .bind(public_key)
            .bind(private_key)
            .bind(unix_now())
            .bind(name)
            .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    pub async fn finish_build(&self, name: &str) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query(
                "UPDATE vm SET rev = ?, state = 'ready', step = '', updated_at = ? WHERE vmname = ?",
            )
            .bind(rev)
            .bind(unix_now())
            .bind(name)
            .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Undoes a failed build in the database: addresses released, node and keys cleared,
    /// the reason kept in `error`. The instance can be given a new spec.
    pub async fn fail_build(&self, name: &str, error: &str, left: Made) -> Result<(), DbError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            release_addresses(&mut tx, name).await?;
            sqlx::query(
                "UPDATE vm SET rev = ?, state = 'failed', step = '', error = ?, made = ?, \
                 hostname = CASE WHEN ? = '' THEN NULL ELSE hostname END, vmip = NULL, ip_eth1 = NULL, ssh_public_key = NULL, ssh_private_key = NULL, \
                 updated_at = ? WHERE vmname = ?",
            )
            .bind(self.next_rev())
            .bind(error)
            .bind(left.to_string())
            .bind(left.to_string())
            .bind(unix_now())
            .bind(name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
        .await
    }

    /// Records what is left of a failed build's parts (`left`) after another attempt to
    /// remove them; with nothing left, the instance no longer names a node.
    pub async fn set_leftovers(
        &self,
        name: &str,
        incarnation: &str,
        left: Made,
    ) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query(
                "UPDATE vm SET rev = ?, made = ?, \
                 hostname = CASE WHEN ? = '' THEN NULL ELSE hostname END, updated_at = ? \
                 WHERE vmname = ? AND incarnation = ? AND state = 'failed'",
            )
            .bind(rev)
            .bind(left.to_string())
            .bind(left.to_string())
            .bind(unix_now())
            .bind(name)
            .bind(incarnation)
            .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Records a refused spec or command without changing the state, on incarnation
    /// `incarnation` of `name` only.
    pub async fn set_error(
        &self,
        name: &str,
        incarnation: &str,
        error: Option<&str>,
    ) -> Result<i64, DbError> {
        let rev = self.next_rev();
        self.bounded(
            sqlx::query(
                "UPDATE vm SET rev = ?, error = ?, updated_at = ? \
                 WHERE vmname = ? AND incarnation = ?",
            )
            .bind(rev)
            .bind(error)
            .bind(unix_now())
            .bind(name)
            .bind(incarnation)
            .execute(&self.pool),
        )
        .await
        .map(|_| rev)
    }

    /// Marks an instance as being deleted by `worker`, if its row is still the one read
    /// (stamp `read_rev`) and not being built: a delete acts on the row as the database
    /// holds it, never on an older picture. `State` when it changed meanwhile.
    pub async fn begin_delete(
        &self,
        name: &str,
        worker: &str,
        read_rev: i64,
    ) -> Result<i64, DbError> {
        let rev = self.next_rev();
        let n = self
            .bounded(
                sqlx::query(
                    "UPDATE vm SET rev = ?, state = 'deleting', step = 'deleting', worker = ?, \
                     updated_at = ? WHERE vmname = ? AND rev = ? \
                     AND state IN ('draft', 'ready', 'failed', 'deleting')",
                )
                .bind(rev)
                .bind(worker)
                .bind(unix_now())
                .bind(name)
                .bind(read_rev)
                .execute(&self.pool),
            )
            .await?;
        if n.rows_affected() == 0 {
            return Err(DbError::State(format!(
                "instance {name} changed while it was being deleted"
            )));
        }
        Ok(rev)
    }

    /// Deletes the row and releases its addresses, in one transaction.
    pub async fn delete_vm(&self, name: &str) -> Result<(), DbError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            release_addresses(&mut tx, name).await?;
            sqlx::query("DELETE FROM vm WHERE vmname = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }

    pub async fn get_vm(&self, name: &str) -> Result<Option<InstanceRecord>, DbError> {
        let r = self
            .bounded(
                sqlx::query(select_vm!(" WHERE vmname = ?"))
                    .bind(name)
                    .fetch_optional(&self.pool),
            )
            .await?;
        r.as_ref().map(vm_row).transpose()
    }

    /// Every stored private key: (name, incarnation, stored form).
    pub async fn private_keys(&self) -> Result<Vec<(String, String, String)>, DbError> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT vmname, incarnation, ssh_private_key FROM vm \
                     WHERE ssh_private_key IS NOT NULL",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        triples(&rows)
    }

    /// Replaces instance `name`'s stored private key `old` with `new` (sealed again), if it
    /// is still `old`. `true` if replaced.
    pub async fn replace_private_key(
        &self,
        name: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .bounded(
                sqlx::query(
                    "UPDATE vm SET rev = ?, ssh_private_key = ? \
                     WHERE vmname = ? AND ssh_private_key = ?",
                )
                .bind(self.next_rev())
                .bind(new)
                .bind(name)
                .bind(old)
                .execute(&self.pool),
            )
            .await?;
        Ok(n.rows_affected() == 1)
    }

    /// Addresses allocated per pool, for consistency checks.
    pub async fn list_ip_allocations(&self) -> Result<Vec<(String, String, String)>, DbError> {
        let rows = self
            .bounded(
                sqlx::query("SELECT pool, address, vmname FROM ip_alloc ORDER BY pool, address")
                    .fetch_all(&self.pool),
            )
            .await?;
        triples(&rows)
    }

    /// Records that daemon `id` is alive (its `worker` row, created on first use).
    pub async fn heartbeat(&self, id: &str, description: &str) -> Result<(), DbError> {
        let now = unix_now();
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let updated = sqlx::query("UPDATE worker SET heartbeat_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                sqlx::query(
                    "INSERT INTO worker (id, description, started_at, heartbeat_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(id)
                .bind(description)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// The last heartbeat (unix seconds) of every daemon that ever ran on this database.
    pub async fn heartbeats(&self) -> Result<std::collections::HashMap<String, i64>, DbError> {
        let rows = self
            .bounded(sqlx::query("SELECT id, heartbeat_at FROM worker").fetch_all(&self.pool))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Makes daemon `to` the worker of an interrupted build or delete, if the row is still
    /// in `state` with worker `from` (`None`: no worker recorded). `false` when another
    /// daemon took it first or the row moved on.
    pub async fn take_over(
        &self,
        name: &str,
        state: InstanceState,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .bounded(
                sqlx::query(
                    "UPDATE vm SET rev = ?, worker = ? \
                     WHERE vmname = ? AND state = ? AND COALESCE(worker, '') = ?",
                )
                .bind(self.next_rev())
                .bind(to)
                .bind(name)
                .bind(state.word())
                .bind(from.unwrap_or(""))
                .execute(&self.pool),
            )
            .await?;
        Ok(n.rows_affected() == 1)
    }

    /// Addresses held for an instance that has no row, or whose row holds none (a draft or
    /// a failed build): (pool, address, vmname).
    pub async fn stray_addresses(&self) -> Result<Vec<(String, String, String)>, DbError> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT a.pool, a.address, a.vmname FROM ip_alloc a \
                     LEFT JOIN vm v ON v.vmname = a.vmname \
                     WHERE v.vmname IS NULL OR v.state IN ('draft', 'failed') \
                     ORDER BY a.pool, a.address",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        triples(&rows)
    }

    /// Releases one stray address, unless its instance has meanwhile come to hold it (a
    /// build that began after `stray_addresses` looked). `true` if it was released.
    pub async fn release_stray_address(
        &self,
        pool: &str,
        address: &str,
        vmname: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .bounded(
                sqlx::query(
                    "DELETE FROM ip_alloc WHERE pool = ? AND address = ? AND vmname = ? \
                     AND NOT EXISTS (SELECT 1 FROM vm WHERE vm.vmname = ? \
                     AND vm.state IN ('building', 'ready', 'deleting'))",
                )
                .bind(pool)
                .bind(address)
                .bind(vmname)
                .bind(vmname)
                .execute(&self.pool),
            )
            .await?;
        Ok(n.rows_affected() == 1)
    }

    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(f) = &self.failover {
            f.close().await;
        }
    }
}

/// Refuses a build that would take `owner` past `quota`, given what it holds now
/// (`held`: instances, vCPUs, RAM MB).
fn check_quota(owner: i64, q: &UserQuota, held: [i64; 3], b: &BuildRow<'_>) -> Result<(), DbError> {
    let over = |what: &str, have: i64, add: u64, max: u64| {
        let bound = limit(max, owner);
        let want = i64::try_from(add).unwrap_or(i64::MAX).saturating_add(have);
        (want > bound).then(|| {
            DbError::Quota(format!(
                "uid {owner} would hold {want} {what} (holds {have}); the limit is {max} \
                 ([quotas] {what})"
            ))
        })
    };
    match over("instances", held[0], 1, q.instances)
        .or_else(|| over("vcpus", held[1], u64::from(b.vcpus), q.vcpus))
        .or_else(|| over("ram_mb", held[2], b.ram_mb, q.ram_mb))
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Rows of three text columns, as tuples.
fn triples(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(String, String, String)>, DbError> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// Releases every address held by instance `name`.
async fn release_addresses(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ip_alloc WHERE vmname = ?")
        .bind(name)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

fn vm_row(r: &sqlx::any::AnyRow) -> Result<InstanceRecord, DbError> {
    let f = || -> Result<InstanceRecord, sqlx::Error> {
        let state: String = r.try_get("state")?;
        let mut error: Option<String> = r.try_get("error")?;
        // A state kvmfs does not know (written by hand): shown as a failure that says so,
        // and holding nothing.
        let state = InstanceState::from_word(&state).unwrap_or_else(|| {
            error = Some(format!("unknown state {state:?} in the database"));
            InstanceState::Failed
        });
        let owner: i64 = r.try_get("owner_uid")?;
        Ok(InstanceRecord {
            name: r.try_get("vmname")?,
            node: r.try_get("hostname")?,
            ip_eth0: r.try_get("vmip")?,
            ram_mb: r.try_get("ram")?,
            ip_eth1: r.try_get("ip_eth1")?,
            vcpus: r.try_get("vcpus")?,
            disk_gb: r.try_get("disk_gb")?,
            image: r.try_get("image")?,
            purpose: r.try_get("purpose")?,
            git_url: r.try_get("git_url")?,
            state,
            step: Step::from_word(&r.try_get::<String, _>("step")?),
            error,
            owner_uid: u32::try_from(owner).unwrap_or(u32::MAX),
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            spec: r.try_get("spec")?,
            sealed_key: r.try_get("ssh_private_key")?,
            made: Made::parse(&r.try_get::<String, _>("made")?),
            worker: r.try_get("worker")?,
            rev: r.try_get("rev")?,
            incarnation: r.try_get("incarnation")?,
        })
    };
    f().map_err(DbError::from)
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

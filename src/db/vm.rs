//! The statements on `vm` rows: drafts, the placement transaction, build steps, failures,
//! deletes, errors, keys and take-overs. Each writes a new `rev` stamp.

use std::sync::atomic::Ordering as AtomicOrdering;

use sqlx::Row;
use sqlx::any::AnyArguments;

/// A statement with its arguments bound so far.
type AnyQuery = sqlx::query::Query<'static, sqlx::Any, AnyArguments>;

use super::addresses::release_addresses;
use super::rows::{
    BuildRow, InstanceRecord, Loads, UserQuota, VmFingerprint, check_quota, limit, triples, vm_row,
};
use super::{Db, DbError, InstanceState, Made, unix_now};

impl Db {
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
        choose: impl Fn(&Loads) -> Result<String, E>,
    ) -> Result<(String, i64), E> {
        let owner = i64::from(owner);
        let choose = &choose;
        // One attempt of the transaction; `transaction` runs it again on a conflict.
        let attempt = move || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE placement_lock SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let loads = read_loads(&mut tx, domains).await?;
            // Root, and a configuration without limits, need no count.
            if owner != 0 && (quota.instances | quota.vcpus | quota.ram_mb) != 0 {
                let held = sqlx::query(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS SIGNED), \
                     CAST(COALESCE(SUM(ram), 0) AS SIGNED) FROM vm WHERE owner_uid = ? \
                     AND state IN ('building', 'ready', 'deleting', 'migrating')",
                )
                .bind(owner)
                .fetch_one(&mut *tx)
                .await?;
                let mut sums = [0i64; 3];
                for (i, v) in sums.iter_mut().enumerate() {
                    *v = held.try_get::<i64, _>(i)?;
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
            ?;
            if n.rows_affected() == 0 {
                let now = sqlx::query("SELECT incarnation FROM vm WHERE vmname = ?")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let same = match &now {
                    Some(r) => r.try_get::<String, _>(0)? == incarnation,
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
            tx.commit().await?;
            Ok::<Result<(String, i64), E>, DbError>(Ok((node, rev)))
        };
        self.transaction(attempt).await.map_err(E::from)?
    }

    /// Records that `part` of instance `name` exists (or may exist) on its node, or that it
    /// is gone.
    pub async fn set_made(&self, name: &str, made: Made) -> Result<i64, DbError> {
        let made = made.to_string();
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, made = ? WHERE vmname = ?",
            |q| q.bind(made).bind(name),
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Records the step a build is in together with the parts it is about to make (one
    /// statement for both: the step names the part).
    pub async fn set_step_and_made(
        &self,
        name: &str,
        step: &str,
        made: Made,
    ) -> Result<i64, DbError> {
        let made = made.to_string();
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, step = ?, made = ? WHERE vmname = ?",
            |q| q.bind(step).bind(made).bind(name),
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Records the step an operation is in, so a crash can be finished or undone.
    pub async fn set_step(&self, name: &str, step: &str) -> Result<i64, DbError> {
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, step = ? WHERE vmname = ?",
            |q| q.bind(step).bind(name),
        )
        .await
        .map(|(rev, _)| rev)
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
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, step = ?, vmip = ?, ip_eth1 = ?, \
             ssh_public_key = ?, ssh_private_key = ? WHERE vmname = ?",
            |q| {
                q.bind(step)
                    .bind(vmip)
                    .bind(ip_eth1)
                    .bind(public_key)
                    .bind(private_key)
                    .bind(name)
            },
        )
        .await
        .map(|(rev, _)| rev)
    }

    pub async fn finish_build(&self, name: &str) -> Result<i64, DbError> {
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, state = 'ready', step = '' WHERE vmname = ?",
            |q| q.bind(name),
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Undoes a failed build in the database: addresses released, node and keys cleared,
    /// the reason kept in `error`. The instance can be given a new spec.
    pub async fn fail_build(&self, name: &str, error: &str, left: Made) -> Result<(), DbError> {
        let left = left.to_string();
        let left = left.as_str();
        self.transaction(move || async move {
            let mut tx = self.pool.begin().await?;
            release_addresses(&mut tx, name).await?;
            sqlx::query(
                "UPDATE vm SET rev = ?, state = 'failed', step = '', error = ?, made = ?, \
                 hostname = CASE WHEN ? = '' THEN NULL ELSE hostname END, vmip = NULL, ip_eth1 = NULL, ssh_public_key = NULL, ssh_private_key = NULL, \
                 updated_at = ? WHERE vmname = ?",
            )
            .bind(self.next_rev())
            .bind(error)
            .bind(left)
            .bind(left)
            .bind(unix_now())
            .bind(name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await.map_err(DbError::from)
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
        let left = left.to_string();
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, made = ?, \
             hostname = CASE WHEN ? = '' THEN NULL ELSE hostname END \
             WHERE vmname = ? AND incarnation = ? AND state = 'failed'",
            |q| q.bind(left.clone()).bind(left).bind(name).bind(incarnation),
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Records a refused spec or command without changing the state, on incarnation
    /// `incarnation` of `name` only.
    pub async fn set_error(
        &self,
        name: &str,
        incarnation: &str,
        error: Option<&str>,
    ) -> Result<i64, DbError> {
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, error = ? \
             WHERE vmname = ? AND incarnation = ?",
            |q| q.bind(error).bind(name).bind(incarnation),
        )
        .await
        .map(|(rev, _)| rev)
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
        let (rev, changed) = self
            .stamp_vm(
                "UPDATE vm SET rev = ?, updated_at = ?, state = 'deleting', step = 'deleting', \
                 worker = ? WHERE vmname = ? AND rev = ? \
                 AND state IN ('draft', 'ready', 'failed', 'deleting')",
                |q| q.bind(worker).bind(name).bind(read_rev),
            )
            .await?;
        if changed == 0 {
            return Err(DbError::State(format!(
                "instance {name} changed while it was being deleted"
            )));
        }
        Ok(rev)
    }

    /// Deletes the row and releases its addresses, in one transaction.
    pub async fn delete_vm(&self, name: &str) -> Result<(), DbError> {
        self.transaction(move || async move {
            let mut tx = self.pool.begin().await?;
            release_addresses(&mut tx, name).await?;
            sqlx::query("DELETE FROM vm WHERE vmname = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await.map_err(DbError::from)
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
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, ssh_private_key = ? \
             WHERE vmname = ? AND ssh_private_key = ?",
            |q| q.bind(new).bind(name).bind(old),
        )
        .await
        .map(|(_, changed)| changed == 1)
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
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, worker = ? \
             WHERE vmname = ? AND state = ? AND COALESCE(worker, '') = ?",
            |q| {
                q.bind(to)
                    .bind(name)
                    .bind(state.word())
                    .bind(from.unwrap_or(""))
            },
        )
        .await
        .map(|(_, changed)| changed == 1)
    }

    /// Moves a `ready` instance to `migrating` (run by `worker`), as one transaction that
    /// holds the placement lock, like `begin_build`: `choose` sees what every instance in
    /// the database holds per node (the instance itself on its own node only) and names the
    /// node it goes to, or refuses. `State` when the row is no longer this incarnation's
    /// `ready` row on node `from`, the node the move was checked for: another mount may
    /// have moved it since its row was read.
    pub async fn begin_migration<E: From<DbError>>(
        &self,
        name: &str,
        incarnation: &str,
        from: &str,
        worker: &str,
        domains: &[(&str, &str)],
        choose: impl Fn(&Loads) -> Result<String, E>,
    ) -> Result<(String, i64), E> {
        let choose = &choose;
        let attempt = move || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE placement_lock SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let loads = read_loads(&mut tx, domains).await?;
            let to = match choose(&loads) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let rev = self.next_rev();
            let n = sqlx::query(
                "UPDATE vm SET rev = ?, updated_at = ?, state = 'migrating', step = 'moving', \
                 migrate_to = ?, snapshots = NULL, worker = ?, error = NULL \
                 WHERE vmname = ? AND incarnation = ? AND state = 'ready' AND hostname = ?",
            )
            .bind(rev)
            .bind(unix_now())
            .bind(to.as_str())
            .bind(worker)
            .bind(name)
            .bind(incarnation)
            .bind(from)
            .execute(&mut *tx)
            .await?;
            if n.rows_affected() == 0 {
                return Err(DbError::State(format!(
                    "instance {name} is no longer ready on node {from} (another operation \
                     changed it)"
                )));
            }
            tx.commit().await?;
            Ok::<Result<(String, i64), E>, DbError>(Ok((to, rev)))
        };
        self.transaction(attempt).await.map_err(E::from)?
    }

    /// Records a migrating instance's step, and the XML of its snapshots while their
    /// metadata is off its nodes (`None` leaves what is stored).
    pub async fn set_migration_step(
        &self,
        name: &str,
        step: &str,
        snapshots: Option<&str>,
    ) -> Result<i64, DbError> {
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, step = ?, \
             snapshots = COALESCE(?, snapshots) WHERE vmname = ? AND state = 'migrating'",
            |q| {
                q.bind(step.to_string())
                    .bind(snapshots.map(str::to_string))
                    .bind(name)
            },
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Ends a migration with the instance `ready` on `node` (its target, or where it was),
    /// with `error` (why it stayed) or none.
    pub async fn end_migration(
        &self,
        name: &str,
        node: &str,
        error: Option<&str>,
    ) -> Result<i64, DbError> {
        self.stamp_vm(
            "UPDATE vm SET rev = ?, updated_at = ?, state = 'ready', step = '', hostname = ?, \
             migrate_to = NULL, snapshots = NULL, error = ? \
             WHERE vmname = ? AND state = 'migrating'",
            |q| {
                q.bind(node.to_string())
                    .bind(error.map(str::to_string))
                    .bind(name)
            },
        )
        .await
        .map(|(rev, _)| rev)
    }

    /// Nodes drained (`echo drain > nodes/NODE/ctl`), in name order.
    pub async fn drained_nodes(&self) -> Result<Vec<String>, DbError> {
        let rows = self
            .bounded(
                sqlx::query("SELECT hostname FROM host WHERE drained <> 0 ORDER BY hostname")
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
    }

    /// Drains node `node` or ends its drain (`false`). Stamps the placement lock, so a
    /// placement that read the old flag conflicts with this change (on Galera) or waits
    /// for it (on one server).
    pub async fn set_drained(&self, node: &str, drained: bool) -> Result<(), DbError> {
        self.transaction(move || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE placement_lock SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("UPDATE host SET drained = ? WHERE hostname = ?")
                .bind(i64::from(drained))
                .bind(node)
                .execute(&mut *tx)
                .await?;
            if n.rows_affected() == 0 {
                sqlx::query(
                    "INSERT INTO host (hostname, ip, uri, registered_at, drained) \
                     VALUES (?, '', '', ?, ?)",
                )
                .bind(node)
                .bind(unix_now())
                .bind(i64::from(drained))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await.map_err(DbError::from)
        })
        .await
    }

    /// Runs one UPDATE of `vm` rows that gives them a new stamp: `sql` begins
    /// `UPDATE vm SET rev = ?, updated_at = ?`, those two are bound here, and `bind` binds
    /// the rest in order. The stamp and how many rows changed.
    async fn stamp_vm(
        &self,
        sql: &'static str,
        bind: impl FnOnce(AnyQuery) -> AnyQuery,
    ) -> Result<(i64, u64), DbError> {
        let rev = self.next_rev();
        let query = bind(sqlx::query(sql).bind(rev).bind(unix_now()));
        let done = self.bounded(query.execute(&self.pool)).await?;
        Ok((rev, done.rows_affected()))
    }
}

/// What every instance holds per node, read under the placement lock (see `Loads`), and
/// which of `domains` (node, domain name) are such instances (a migrating one also on its
/// target).
async fn read_loads(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    domains: &[(&str, &str)],
) -> Result<Loads, DbError> {
    let mut loads = Loads::default();
    let held = sqlx::query(
        "SELECT hostname, CAST(SUM(COALESCE(vcpus, 0)) AS SIGNED), \
         CAST(SUM(COALESCE(ram, 0)) AS SIGNED) FROM vm WHERE hostname IS NOT NULL \
         AND state IN ('building', 'ready', 'deleting', 'migrating') GROUP BY hostname",
    )
    .fetch_all(&mut **tx)
    .await?;
    let arriving = sqlx::query(
        "SELECT migrate_to, CAST(SUM(COALESCE(vcpus, 0)) AS SIGNED), \
         CAST(SUM(COALESCE(ram, 0)) AS SIGNED) FROM vm WHERE migrate_to IS NOT NULL \
         AND state = 'migrating' GROUP BY migrate_to",
    )
    .fetch_all(&mut **tx)
    .await?;
    for r in held.iter().chain(&arriving) {
        let n = |i: usize| -> Result<u64, DbError> {
            Ok(u64::try_from(r.try_get::<i64, _>(i)?).unwrap_or(0))
        };
        let node: String = r.try_get(0)?;
        let e = loads.by_node.entry(node).or_default();
        e.0 += n(1)?;
        e.1 += n(2)?;
    }
    for (node, domain) in domains {
        let found = sqlx::query(
            "SELECT 1 FROM vm WHERE vmname = ? AND (hostname = ? OR migrate_to = ?) \
             AND state IN ('building', 'ready', 'deleting', 'migrating')",
        )
        .bind(*domain)
        .bind(*node)
        .bind(*node)
        .fetch_optional(&mut **tx)
        .await?;
        if found.is_some() {
            loads.managed.insert((node.to_string(), domain.to_string()));
        }
    }
    Ok(loads)
}

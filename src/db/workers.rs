//! The `host` table (the configured nodes) and the `worker` heartbeats of the daemons.

use sqlx::Row;

use super::{Db, DbError, unix_now};

impl Db {
    /// Records a configured node in `host`, as the original `makevm.sh` did on first use.
    pub async fn register_host(&self, hostname: &str, ip: &str, uri: &str) -> Result<(), DbError> {
        let now = unix_now();
        self.transaction(move || async move {
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
            tx.commit().await.map_err(DbError::from)
        })
        .await
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

    /// Records that daemon `id` is alive (its `worker` row, created on first use).
    pub async fn heartbeat(&self, id: &str, description: &str) -> Result<(), DbError> {
        let now = unix_now();
        self.transaction(move || async move {
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
            tx.commit().await.map_err(DbError::from)
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

    /// Takes or renews the reconciliation lease for daemon `id` until `lease_secs` from
    /// now: it is free, expired, or already `id`'s. Whether `id` holds it.
    pub async fn hold_reconcile_lease(&self, id: &str, lease_secs: i64) -> Result<bool, DbError> {
        self.transaction(move || async move {
            let now = unix_now();
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE reconcile_lease SET holder = ?, expires_at = ? \
                 WHERE id = 1 AND (holder = ? OR expires_at < ?)",
            )
            .bind(id)
            .bind(now.saturating_add(lease_secs))
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let holder: String = sqlx::query("SELECT holder FROM reconcile_lease WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            tx.commit().await?;
            Ok::<bool, DbError>(holder == id)
        })
        .await
    }

    /// The daemon holding the reconciliation lease and until when (unix seconds).
    pub async fn reconcile_lease(&self) -> Result<(String, i64), DbError> {
        let row = self
            .bounded(
                sqlx::query("SELECT holder, expires_at FROM reconcile_lease WHERE id = 1")
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok((
            row.try_get(0).map_err(DbError::from)?,
            row.try_get(1).map_err(DbError::from)?,
        ))
    }
}

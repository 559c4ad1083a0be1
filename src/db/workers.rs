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
}

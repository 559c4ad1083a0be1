//! Static addresses (`ip_alloc`): allocation of the lowest free one (the primary key decides
//! races), and stray addresses held for instances that hold none.

use sqlx::Row;

use super::rows::triples;
use super::{Db, DbError};

/// Releases every address held by instance `name`.
pub(super) async fn release_addresses(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ip_alloc WHERE vmname = ?")
        .bind(name)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

impl Db {
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
                Err(e) if e.is_retryable() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DbError::Conflict(format!(
            "address pool {pool}: too many concurrent allocations"
        )))
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
                     AND vm.state IN ('building', 'ready', 'deleting', 'migrating'))",
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
}

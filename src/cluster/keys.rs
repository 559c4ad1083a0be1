//! Instances' private keys at rest: opened for `ssh_key`, sealed again when stored in the
//! clear or under a key being rotated out, and the keys the database holds that this daemon
//! does not (see `secrets`).

use super::{Cluster, actions, view};

impl Cluster {
    /// Instance `i`'s SSH private key, opened from its sealed form in the row.
    pub fn private_key(&self, i: &view::InstanceView) -> Result<Vec<u8>, actions::ActionError> {
        let Some(row) = i.row.as_deref() else {
            return Ok(Vec::new());
        };
        let Some(stored) = row.sealed_key.as_deref() else {
            return Ok(Vec::new());
        };
        self.keys
            .open(
                &crate::secrets::row_binding(&row.name, &row.incarnation),
                stored,
            )
            .map_err(|e| {
                tracing::error!(instance = %row.name, error = %e, "cannot open the private key");
                actions::ActionError::Backend(format!(
                    "instance {}: cannot open its private key: {e}",
                    row.name
                ))
            })
    }

    /// Seals every private key the database holds in the clear (an earlier kvmfs stored
    /// them so) or under a key being rotated out. Returns how many it sealed.
    pub async fn seal_keys_at_rest(&self) -> Result<usize, crate::db::DbError> {
        let mut sealed = 0;
        for (name, incarnation, stored) in self.db.private_keys().await? {
            if !self.keys.needs_reseal(&stored) {
                continue;
            }
            let binding = crate::secrets::row_binding(&name, &incarnation);
            let plain = match self.keys.open(&binding, &stored) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(instance = %name, error = %e, "cannot open a private key to seal it again");
                    continue;
                }
            };
            let new = self
                .keys
                .seal(&binding, &plain)
                .map_err(|e| crate::db::DbError::Query(e.to_string()))?;
            if self.db.replace_private_key(&name, &stored, &new).await? {
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::info!(
                keys = sealed,
                key = self.keys.current_id(),
                "sealed private keys at rest"
            );
        }
        Ok(sealed)
    }

    /// The ids of the keys the database's private keys are sealed with that this daemon
    /// does not hold, with how many rows each.
    pub async fn foreign_key_ids(&self) -> Result<Vec<(String, usize)>, crate::db::DbError> {
        let mut ids: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, _, stored) in self.db.private_keys().await? {
            if let Some(id) = crate::secrets::key_id_of(&stored)
                && !self.keys.holds(id)
            {
                *ids.entry(id.to_string()).or_default() += 1;
            }
        }
        Ok(ids.into_iter().collect())
    }
}

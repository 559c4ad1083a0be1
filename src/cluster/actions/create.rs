//! `mkdir` (a draft) and the commit of `spec.json`: the spec parsed, the instance placed
//! under the placement lock, the reservation written, and the build started.

use std::sync::Arc;

use super::ActionError;
use super::build::Target;
use crate::cluster::Cluster;
use crate::cluster::placement::{self, Committed, Need};
use crate::db::{BuildRow, DbError};
use crate::failpoint;
use crate::model::InstanceName;
use crate::spec::Spec;

impl Cluster {
    /// `mkdir /instances/NAME`: reserves the name as a draft owned by `uid`.
    pub async fn create_draft(&self, name: &str, uid: u32) -> Result<(), ActionError> {
        let name = InstanceName::new(name).map_err(|e| {
            tracing::warn!(error = %e, "mkdir refused");
            ActionError::Invalid(e.to_string())
        })?;
        if self.view().instances.contains_key(name.as_str()) {
            return Err(ActionError::Exists(format!(
                "instance {name} already exists"
            )));
        }
        self.db.gate()?;
        match self
            .db
            .insert_draft(name.as_str(), uid, &self.cfg.quotas.user_quota())
            .await
        {
            Ok(row) => self.set_local_row(name.as_str(), Some(row)),
            Err(DbError::Conflict(_)) => {
                return Err(ActionError::Exists(format!(
                    "instance {name} already exists"
                )));
            }
            Err(e) => {
                let e = ActionError::from(e);
                tracing::warn!(instance = %name, uid, error = %e, "mkdir refused");
                return Err(e);
            }
        }
        self.metrics.instances_created.inc();
        tracing::info!(instance = %name, uid, "draft created");
        Ok(())
    }

    /// Checks a complete `spec.json` without committing it.
    pub fn check_spec(&self, text: &[u8]) -> Result<Spec, ActionError> {
        Ok(Spec::parse(text, &self.cfg)?)
    }

    /// Commits `spec.json`: places the instance and starts its build in the background.
    pub async fn commit_spec(
        self: &Arc<Self>,
        name: &str,
        incarnation: &str,
        uid: u32,
        text: &[u8],
    ) -> Result<(), ActionError> {
        let row = self.check_owner(name, Some(incarnation), uid)?;
        if !row.state.takes_spec() {
            return Err(ActionError::Busy(format!(
                "instance {name} is {}; its spec can no longer change",
                row.state
            )));
        }
        let spec = match self.check_spec(text) {
            Ok(s) => s,
            Err(e) => {
                self.record_error(name, Some(incarnation), &e);
                return Err(e);
            }
        };
        if let Err(e) = self.check_shared_image(&spec.image).await {
            self.record_error(name, Some(incarnation), &e);
            return Err(e);
        }
        let networks: Vec<&str> = self.cfg.networks.iter().map(|n| n.name.as_str()).collect();
        let need = Need {
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            image: &spec.image,
            image_shared: self.storage().is_some(),
            networks: &networks,
            node: spec.node.as_ref().map(|n| n.as_str()),
            among: None,
        };
        let spec_text = String::from_utf8_lossy(text).into_owned();
        let build = BuildRow {
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            disk_gb: spec.disk_gb,
            image: &spec.image,
            purpose: spec.purpose.as_str(),
            git: spec.git.as_ref().map(|g| g.as_str()),
            spec: &spec_text,
        };
        let claim = self.claim_for(name).await?;
        // What a failed build could not remove goes first: the new placement would forget it.
        if let Err(e) = self.remove_leftovers(&row).await {
            self.record_error(name, Some(incarnation), &e);
            return Err(e);
        }
        if let Err(e) = self.db.gate() {
            let e = ActionError::from(e);
            self.record_error(name, Some(incarnation), &e);
            return Err(e);
        }
        let placed = {
            // Local creates queue here rather than on the database's placement lock.
            let _guard = self.place_lock.lock().await;
            let view = self.view();
            let placed = self
                .db
                .begin_build(
                    name,
                    incarnation,
                    row.owner_uid,
                    &self.cfg.quotas.user_quota(),
                    &self.worker_id,
                    &build,
                    &Committed::domains_to_check(&view),
                    |loads| {
                        let held = Committed::from_loads(loads);
                        placement::choose(&view, &need, &held, &self.cfg.placement)
                            .map_err(ActionError::from)
                    },
                )
                .await;
            if let Ok((node, rev)) = &placed {
                self.clear_pending_error(name);
                // Published before the lock is released, so the next placement sees it.
                self.patch_local_row(name, |r| build.apply(r, node, &self.worker_id, *rev));
            }
            placed
        };
        let node = match placed {
            Ok((n, _)) => n,
            Err(e) => {
                self.record_error(name, Some(incarnation), &e);
                return Err(e);
            }
        };
        failpoint::hit("create:placed");
        tracing::info!(instance = name, node = %node, "placed; building");
        let c = self.clone();
        let target = Target {
            name: name.to_string(),
            incarnation: incarnation.to_string(),
            node,
        };
        tokio::spawn(async move { c.build(target, spec, uid, claim).await });
        Ok(())
    }

    /// With a shared storage, refuses a spec whose image is not one (`EINVAL`): `/images`
    /// first (the share's last listing), then, for a name it lacks, the share itself (an
    /// image copied there since the listing). A share that does not answer refuses nothing
    /// here: the build looks the image up again and fails in its step, as it does when the
    /// image goes between the commit and the build.
    async fn check_shared_image(&self, image: &str) -> Result<(), ActionError> {
        let Some(share) = &self.storage else {
            return Ok(());
        };
        let view = self.view();
        if view.images.contains_key(image) {
            return Ok(());
        }
        if let Some(i) =
            crate::model::instance_of_volume(image).filter(|i| view.instances.contains_key(*i))
        {
            return Err(ActionError::Invalid(format!(
                "image {image} is instance {i}'s own disk or seed, not an image"
            )));
        }
        let within = self.cfg.timing.libvirt_timeout();
        match tokio::time::timeout(within, share.exists(image)).await {
            Ok(Ok(false)) => Err(ActionError::Invalid(format!(
                "image {image} is not on the shared storage {} (see /images)",
                share.describe()
            ))),
            Ok(Ok(true)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(image, error = %e, "image not checked at commit");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}

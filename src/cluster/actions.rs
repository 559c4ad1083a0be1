//! Instance lifecycle: draft (`mkdir`), commit (`spec.json`), background build, control
//! (`ctl`) and delete (`rmdir`). Each step of a build is recorded in `vm.step` before it runs,
//! and a failed build undoes what it made in reverse order, so nothing is left half-made.

use std::sync::Arc;
use std::time::Duration;

use crate::cloudinit::{self, Nic};
use crate::db::{BuildRow, DbError, InstanceState, Made, Part, Step};
use crate::failpoint;
use crate::hv::DomainOp;
use crate::hv::xml::{DomainDef, overlay_volume_xml, raw_volume_xml};
use crate::model::{InstanceName, disk_volume, seed_volume};
use crate::spec::{Spec, SpecError};

use super::placement::{self, Committed, Need};
use super::{CallError, Claim, Cluster};

/// Deadline for one hypervisor call made by an action (creating a volume, starting a
/// domain); longer than a poll's, since QEMU start-up takes real time.
const ACTION_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an operation waits for another one on the same instance to end.
const CLAIM_WAIT: Duration = Duration::from_secs(1);
/// Deadline for the git reachability check.
const GIT_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an action was refused or failed. Each maps to one errno in the FUSE layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotOwner(String),
    #[error("{0}")]
    TooBig(String),
    #[error("{0}")]
    Backend(String),
    /// The instance a handle was opened on is gone, or its name belongs to another one now.
    #[error("{0}")]
    Stale(String),
    /// A per-user limit (`[quotas]`) refuses it.
    #[error("{0}")]
    Quota(String),
}

impl From<DbError> for ActionError {
    fn from(e: DbError) -> Self {
        match e.clone() {
            DbError::Conflict(m) => ActionError::Exists(m),
            DbError::State(m) => ActionError::Busy(m),
            DbError::NotFound(m) => ActionError::NotFound(format!("{m} not found")),
            DbError::PoolExhausted(p) => {
                ActionError::NoCapacity(format!("address pool {p} is exhausted"))
            }
            DbError::Quota(m) => ActionError::Quota(m),
            DbError::Replaced(m) => ActionError::Stale(m),
            DbError::Timeout(_) => ActionError::Backend(format!(
                "{e}: a change sent to it may still be applied when it answers; the \
                 instance's status shows what happened"
            )),
            other => ActionError::Backend(other.to_string()),
        }
    }
}

impl From<SpecError> for ActionError {
    fn from(e: SpecError) -> Self {
        ActionError::Invalid(e.to_string())
    }
}

/// A control command written to `ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Start,
    Stop,
    Destroy,
    Reboot,
}

impl Control {
    pub const WORDS: &'static str = "start stop destroy reboot";

    pub fn parse(text: &[u8]) -> Result<Control, ActionError> {
        let word = std::str::from_utf8(text).unwrap_or("").trim();
        match word {
            "start" => Ok(Control::Start),
            "stop" => Ok(Control::Stop),
            "destroy" => Ok(Control::Destroy),
            "reboot" => Ok(Control::Reboot),
            _ => Err(ActionError::Invalid(format!(
                "unknown command {:?}; ctl takes one of: {}",
                word.chars().take(40).collect::<String>(),
                Control::WORDS
            ))),
        }
    }
}

/// The instance a build works on: one incarnation of a name, placed on a node.
struct Target {
    name: String,
    incarnation: String,
    node: String,
}

/// Whether `uid` may change an instance whose row is `row`: its owner, or root.
fn owner_may(name: &str, row: &crate::db::InstanceRecord, uid: u32) -> Result<(), ActionError> {
    if !crate::model::may_act(Some(row.owner_uid), uid) {
        return Err(ActionError::NotOwner(format!(
            "instance {name} belongs to uid {}",
            row.owner_uid
        )));
    }
    Ok(())
}

fn random_mac() -> String {
    let mut b = [0u8; 3];
    if crate::random::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = [(t >> 16) as u8, (t >> 8) as u8, t as u8];
    }
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

impl Cluster {
    pub(super) fn node_index(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == node)
    }

    /// Reloads one `vm` row into the inputs and republishes the view.
    pub(super) async fn refresh_row(&self, name: &str) {
        match self.db.get_vm(name).await {
            Ok(row) => self.set_local_row(name, row),
            Err(e) => tracing::warn!(instance = name, error = %e, "cannot reload row"),
        }
    }

    /// Checks that `uid` may change instance `name` (its owner, or root), as this mount's
    /// picture shows it; with `incarnation`, only that incarnation of the name (the one a
    /// file was opened on).
    fn check_owner(
        &self,
        name: &str,
        incarnation: Option<&str>,
        uid: u32,
    ) -> Result<crate::db::InstanceRecord, ActionError> {
        let view = self.view();
        let Some(inst) = view.instances.get(name) else {
            return Err(match incarnation {
                Some(_) => ActionError::Stale(format!("instance {name} was deleted")),
                None => ActionError::NotFound(format!("instance {name} not found")),
            });
        };
        let Some(row) = inst.row.as_deref().cloned() else {
            return Err(ActionError::NotOwner(format!(
                "instance {name} is not managed by kvmfs; it is left alone"
            )));
        };
        if incarnation.is_some_and(|i| i != row.incarnation) {
            return Err(ActionError::Stale(format!(
                "instance {name} was deleted and made again since this file was opened"
            )));
        }
        owner_may(name, &row, uid)?;
        Ok(row)
    }

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
        tracing::info!(instance = %name, uid, "draft created");
        Ok(())
    }

    /// Checks a complete `spec.json` without committing it.
    pub fn check_spec(&self, text: &[u8]) -> Result<Spec, ActionError> {
        Ok(Spec::parse(text, &self.cfg)?)
    }

    /// Records why a spec, command or delete was refused or failed, for the instance's
    /// `error` file (and the log). The reason shows at once; storing it in the database
    /// happens in the background, so a dead database delays nothing.
    pub fn record_error(&self, name: &str, incarnation: Option<&str>, err: &ActionError) {
        self.log_refusal(name, err);
        self.set_local_error(name, incarnation, &err.to_string());
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
        let networks: Vec<&str> = self.cfg.networks.iter().map(|n| n.name.as_str()).collect();
        let need = Need {
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            image: &spec.image,
            networks: &networks,
            node: spec.node.as_ref().map(|n| n.as_str()),
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

    /// Claims instance `name` for an operation. An operation that is just ending (a build
    /// publishing its result, the reconciliation) is waited for, at most `CLAIM_WAIT`;
    /// past that another one is under way.
    async fn claim_for(&self, name: &str) -> Result<Claim, ActionError> {
        self.claim_within(name, CLAIM_WAIT).await.ok_or_else(|| {
            ActionError::Busy(format!(
                "instance {name} is busy: another operation on it is under way"
            ))
        })
    }

    async fn step(&self, name: &str, step: Step) -> Result<(), String> {
        let rev = self
            .db
            .set_step(name, step.word())
            .await
            .map_err(|e| e.to_string())?;
        failpoint::hit(&format!("create:{step}"));
        // What was written is known: show it without reading the row back.
        self.patch_local_row(name, |r| {
            r.step = step;
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });
        Ok(())
    }

    async fn action_call<T: Send + 'static>(
        &self,
        node: usize,
        f: impl FnOnce(&dyn crate::hv::NodeBackend) -> Result<T, crate::hv::HvError> + Send + 'static,
    ) -> Result<T, String> {
        self.node_call_within(node, ACTION_CALL_TIMEOUT, f)
            .await
            .map_err(|e: CallError| e.to_string())
    }

    /// Makes one part of an instance on its node, in build step `step`. The part is recorded
    /// in `vm.made` (with the step) before the call, so an undo, `rmdir` or reconciliation
    /// knows it may exist; a call the node refused outright made nothing (say, a volume of
    /// that name was already there, which is then left alone) and is unrecorded.
    async fn make_part<T: Send + 'static>(
        &self,
        name: &str,
        node: usize,
        made: &mut Made,
        (part, step): (Part, Step),
        make: impl FnOnce(&dyn crate::hv::NodeBackend) -> Result<T, crate::hv::HvError> + Send + 'static,
    ) -> Result<T, String> {
        *made = made.with(part, true);
        let rev = self
            .db
            .set_step_and_made(name, step.word(), *made)
            .await
            .map_err(|e| e.to_string())?;
        failpoint::hit(&format!("create:{} recorded", part.word()));
        let m = *made;
        self.patch_local_row(name, |r| {
            r.step = step;
            r.made = m;
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });
        match self.node_call_within(node, ACTION_CALL_TIMEOUT, make).await {
            Ok(v) => {
                failpoint::hit(&format!("create:{} made", part.word()));
                Ok(v)
            }
            Err(CallError::Hv(e)) => {
                *made = made.with(part, false);
                match self.db.set_made(name, *made).await {
                    Ok(rev) => {
                        let m = *made;
                        self.patch_local_row(name, |r| {
                            r.made = m;
                            r.rev = rev;
                        });
                    }
                    Err(de) => {
                        tracing::warn!(instance = name, error = %de, "cannot unrecord a part")
                    }
                }
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a build to its end, holding `_claim` (the instance) until then.
    async fn build(self: Arc<Self>, target: Target, spec: Spec, uid: u32, _claim: Claim) {
        let mut made = Made::default();
        let r = self.build_steps(&target, &spec, uid, &mut made).await;
        let Target { name, node, .. } = target;
        if let Some(ni) = self.node_index(&node) {
            self.refresh_after_action(ni, &name).await;
        }
        match r {
            Ok(()) => match self.db.finish_build(&name).await {
                Ok(rev) => {
                    tracing::info!(instance = %name, node = %node, "built and started");
                    self.patch_local_row(&name, |r| {
                        r.state = InstanceState::Ready;
                        r.step = Step::None;
                        r.updated_at = crate::db::unix_now();
                        r.rev = rev;
                    });
                }
                Err(e) => {
                    tracing::error!(instance = %name, error = %e, "cannot record the finished build");
                    self.refresh_row(&name).await;
                }
            },
            Err(msg) => {
                tracing::warn!(instance = %name, node = %node, error = %msg, "build failed; undoing");
                let left = self.remove_parts(&name, &node, made, None).await;
                if let Err(e) = self.db.fail_build(&name, &msg, left).await {
                    tracing::error!(instance = %name, error = %e, "cannot record the failed build");
                }
                self.refresh_row(&name).await;
            }
        }
    }

    async fn build_steps(
        &self,
        target: &Target,
        spec: &Spec,
        uid: u32,
        made: &mut Made,
    ) -> Result<(), String> {
        let (name, node) = (target.name.as_str(), target.node.as_str());
        let ni = self
            .node_index(node)
            .ok_or_else(|| format!("node {node} is not configured"))?;
        if let Some(git) = &spec.git {
            self.step(name, Step::CheckingGit).await?;
            check_git(git.as_str()).await?;
        }

        self.step(name, Step::AllocatingAddresses).await?;
        let mut nics = Vec::new();
        for (i, net) in self.cfg.networks.iter().enumerate() {
            let addr = self
                .db
                .allocate_ip(&net.name, net.first, net.last, name)
                .await
                .map_err(|e| e.to_string())?;
            failpoint::hit("create:addresses allocated");
            nics.push(Nic {
                name: format!("eth{i}"),
                mac: random_mac(),
                address: addr,
                prefix: net.prefix(),
                gateway: net.gateway,
                dns: net.dns.clone(),
            });
        }

        // The key is made in memory and stored only sealed; the step is recorded with it.
        let (public, private) = generate_key(name)?;
        let private = self
            .keys
            .seal(
                &crate::secrets::row_binding(name, &target.incarnation),
                private.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        let ip = |i: usize| nics.get(i).map(|n| n.address.to_string());
        let (ip0, ip1) = (ip(0), ip(1));
        let rev = self
            .db
            .set_addresses_and_keys(
                name,
                Step::GeneratingKey.word(),
                ip0.as_deref(),
                ip1.as_deref(),
                &public,
                &private,
            )
            .await
            .map_err(|e| e.to_string())?;
        failpoint::hit("create:keys stored");
        self.patch_local_row(name, |r| {
            r.step = Step::GeneratingKey;
            r.ip_eth0 = ip0;
            r.ip_eth1 = ip1;
            r.sealed_key = Some(private);
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });

        let image = spec.image.clone();
        let base = self
            .action_call(ni, move |b| b.volume_path(&image))
            .await?
            .ok_or_else(|| format!("image {} is not in the pool of node {node}", spec.image))?;
        let xml = overlay_volume_xml(&disk_volume(name), spec.disk_gb, &base);
        let disk_path = self
            .make_part(name, ni, made, (Part::Disk, Step::CreatingDisk), move |b| {
                b.create_volume(&xml)
            })
            .await?;

        let meta = cloudinit::meta_data(name, &format!("{name}-{}", crate::db::unix_now()));
        let user = cloudinit::user_data(name, spec, &public, &self.cfg.instances);
        let netcfg = cloudinit::network_config(&nics);
        let iso = cloudinit::build_iso(&meta, &user, &netcfg).map_err(|e| e.to_string())?;
        let seed_name = seed_volume(name);
        let xml = raw_volume_xml(&seed_name, iso.len() as u64);
        let seed_path = self
            .make_part(name, ni, made, (Part::Seed, Step::WritingSeed), move |b| {
                let path = b.create_volume(&xml)?;
                b.upload_volume(&seed_name, &iso)?;
                Ok(path)
            })
            .await?;

        let inst = &self.cfg.instances;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let kernel = nonempty(&inst.kernel);
        let domain_type = self.nodes[ni].backend.domain_type(&inst.domain_type);
        let def = DomainDef {
            name: name.to_string(),
            domain_type,
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            disk_path,
            seed_path: Some(seed_path),
            interfaces: self
                .cfg
                .networks
                .iter()
                .zip(&nics)
                .map(|(n, nic)| (n.name.clone(), nic.mac.clone()))
                .collect(),
            initrd: kernel.as_ref().and_then(|_| nonempty(&inst.initrd)),
            cmdline: kernel.as_ref().and_then(|_| nonempty(&inst.kernel_cmdline)),
            kernel,
            owner_uid: uid,
        };
        let xml = def.to_xml();
        self.make_part(name, ni, made, (Part::Domain, Step::Starting), move |b| {
            b.define_and_start(&xml)
        })
        .await?;
        Ok(())
    }

    /// Removes the parts of instance `name` listed in `made` from `node`, each one
    /// tolerant of being gone already; returns what could not be removed. `crash_points`
    /// names the operation whose crash points (`failpoint`) each removal passes.
    pub(super) async fn remove_parts(
        &self,
        name: &str,
        node: &str,
        mut made: Made,
        crash_points: Option<&str>,
    ) -> Made {
        let Some(ni) = self.node_index(node) else {
            return made;
        };
        for part in [Part::Domain, Part::Disk, Part::Seed] {
            if !made.has(part) {
                continue;
            }
            let n = name.to_string();
            let r = self
                .action_call(ni, move |b| match part {
                    Part::Domain => b.remove_domain(&n).map(|_| ()),
                    Part::Disk => b.delete_volume(&disk_volume(&n)).map(|_| ()),
                    Part::Seed => b.delete_volume(&seed_volume(&n)).map(|_| ()),
                })
                .await;
            match r {
                Ok(()) => {
                    made = made.with(part, false);
                    if let Some(op) = crash_points {
                        failpoint::hit(&format!("{op}:{} removed", part.word()));
                    }
                }
                Err(e) => tracing::warn!(instance = name, ?part, error = %e, "cannot remove"),
            }
        }
        made
    }

    /// `rmdir`: destroys the domain, deletes its volumes, releases its addresses and deletes
    /// its row. Safe to repeat; safe when the domain is already gone.
    ///
    /// It acts on the row as the database holds it, read under this daemon's claim and
    /// marked `deleting` only if unchanged since (`Db::begin_delete`), never on this mount's
    /// picture, which may be a poll old: another mount may have built the instance, be
    /// building or deleting it, or have made the name again meanwhile.
    pub async fn delete(self: &Arc<Self>, name: &str, uid: u32) -> Result<(), ActionError> {
        let _claim = self.claim_for(name).await?;
        self.db.gate()?;
        for _ in 0..3 {
            let Some(row) = self.db.get_vm(name).await? else {
                // Not (or no longer) in the database: forget what the picture still shows.
                self.set_local_row(name, None);
                return Err(match self.view().instances.get(name) {
                    Some(i) if i.domain.is_some() => ActionError::NotOwner(format!(
                        "instance {name} is not managed by kvmfs; it is left alone"
                    )),
                    _ => ActionError::NotFound(format!("instance {name} not found")),
                });
            };
            owner_may(name, &row, uid)?;
            self.check_deletable(&row).await?;
            if let Some(node) = &row.node
                && !row.made.is_empty()
                && !self.view().nodes.get(node).is_some_and(|n| n.online)
            {
                return Err(ActionError::Backend(format!(
                    "node {node} is offline; instance {name} is left as it is: rmdir again \
                     when the node answers"
                )));
            }
            let rev = match self.db.begin_delete(name, &self.worker_id, row.rev).await {
                Ok(rev) => rev,
                // Changed since it was read (another mount): read it again.
                Err(DbError::State(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            failpoint::hit("delete:deleting");
            let mut deleting = row.clone();
            deleting.state = InstanceState::Deleting;
            deleting.step = Step::Deleting;
            deleting.worker = Some(self.worker_id.clone());
            deleting.updated_at = crate::db::unix_now();
            deleting.rev = rev;
            self.set_local_row(name, Some(deleting));
            self.finish_delete(name, row.node.as_deref(), row.made, Some("delete"))
                .await?;
            tracing::info!(instance = name, "deleted");
            return Ok(());
        }
        Err(ActionError::Busy(format!(
            "instance {name} keeps changing under another kvmfs; try again"
        )))
    }

    /// Refuses to delete a row another operation owns: a build (here or on any mount), or
    /// a delete that a live daemon runs. A delete whose daemon is this one or has stopped
    /// beating is taken over and finished.
    async fn check_deletable(&self, row: &crate::db::InstanceRecord) -> Result<(), ActionError> {
        let name = &row.name;
        match row.state {
            InstanceState::Building => Err(ActionError::Busy(format!(
                "instance {name} is being built ({}); delete it when the build ends",
                row.step
            ))),
            InstanceState::Deleting => match row.worker.as_deref() {
                Some(w) if w != self.worker_id && self.worker_is_live(w).await? => {
                    Err(ActionError::Busy(format!(
                        "instance {name} is being deleted by another kvmfs (worker {w})"
                    )))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The rest of a delete once the row reads `deleting`: removes what `made` lists from
    /// `node`, then deletes the row and its addresses. Shared with the reconciliation, which
    /// finishes deletes a crash cut off.
    pub(super) async fn finish_delete(
        &self,
        name: &str,
        node: Option<&str>,
        made: Made,
        crash_points: Option<&str>,
    ) -> Result<(), ActionError> {
        if let Some(node) = node
            && !made.is_empty()
        {
            if self.node_index(node).is_none() {
                return Err(ActionError::Backend(format!(
                    "node {node} is not configured"
                )));
            }
            let left = self.remove_parts(name, node, made, crash_points).await;
            if left != made {
                let rev = self.db.set_made(name, left).await?;
                self.patch_local_row(name, |r| {
                    r.made = left;
                    r.rev = rev;
                });
            }
            if !left.is_empty() {
                return Err(ActionError::Backend(format!(
                    "instance {name}: cannot remove its {left} from node {node}; \
                     rmdir again when the node answers"
                )));
            }
        }
        self.db.delete_vm(name).await?;
        self.set_local_row(name, None);
        // Re-read the domain and the pool so the gone domain does not linger as an
        // unmanaged one.
        if let Some(ni) = node.and_then(|n| self.node_index(n)) {
            self.refresh_after_action(ni, name).await;
        }
        Ok(())
    }

    /// The row of incarnation `incarnation` of `name` as the database holds it now, checked
    /// for `uid`: this mount's picture may be a poll old (another mount may have deleted the
    /// instance, made the name again, or begun deleting it). While the database cannot be
    /// reached, no mount can change a row, so the picture's row is used instead.
    async fn current_row(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
    ) -> Result<crate::db::InstanceRecord, ActionError> {
        let read = match self.db.gate() {
            Ok(()) => self.db.get_vm(name).await,
            Err(e) => Err(e),
        };
        let row = match read {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.set_local_row(name, None);
                return Err(ActionError::Stale(format!("instance {name} was deleted")));
            }
            Err(DbError::Unavailable(_) | DbError::Timeout(_)) => {
                return self.check_owner(name, Some(incarnation), uid);
            }
            Err(e) => return Err(e.into()),
        };
        if row.incarnation != incarnation {
            return Err(ActionError::Stale(format!(
                "instance {name} was deleted and made again since this file was opened"
            )));
        }
        owner_may(name, &row, uid)?;
        Ok(row)
    }

    /// `ctl`: start, stop (graceful), destroy (hard) or reboot; the wrong state is `Busy`.
    pub async fn control(
        &self,
        name: &str,
        incarnation: &str,
        uid: u32,
        cmd: Control,
    ) -> Result<(), ActionError> {
        self.check_owner(name, Some(incarnation), uid)?;
        let _claim = self.claim_for(name).await?;
        let row = self.current_row(name, incarnation, uid).await?;
        let busy = |m: String| Err(ActionError::Busy(m));
        if row.state != InstanceState::Ready {
            return busy(format!("instance {name} is {}", row.state));
        }
        let view = self.view();
        let inst = view
            .instances
            .get(name)
            .ok_or_else(|| ActionError::NotFound(format!("instance {name} not found")))?;
        if !inst.node_online {
            return Err(ActionError::Backend(format!(
                "node {} is offline",
                inst.node.as_deref().unwrap_or("?")
            )));
        }
        let Some(dom) = &inst.domain else {
            return busy(format!("instance {name} has no domain on its node"));
        };
        let active = dom.state.is_active();
        let running = dom.state == crate::hv::DomainState::Running;
        let op = match cmd {
            Control::Start if active => {
                return busy(format!("instance {name} is already {}", dom.state.word()));
            }
            Control::Start => DomainOp::Start,
            Control::Stop | Control::Reboot if !running => {
                return busy(format!(
                    "instance {name} is {}, not running",
                    dom.state.word()
                ));
            }
            Control::Stop => DomainOp::Shutdown,
            Control::Reboot => DomainOp::Reboot,
            Control::Destroy if !active => return busy(format!("instance {name} is not running")),
            Control::Destroy => DomainOp::Destroy,
        };
        let node = row.node.clone().unwrap_or_default();
        let ni = self
            .node_index(&node)
            .ok_or_else(|| ActionError::Backend(format!("node {node} is not configured")))?;
        let n = name.to_string();
        match self
            .node_call_within(ni, ACTION_CALL_TIMEOUT, move |b| b.domain_op(&n, op))
            .await
        {
            Ok(()) => {}
            Err(CallError::Hv(crate::hv::HvError::WrongState { message, .. })) => {
                return Err(ActionError::Busy(message));
            }
            Err(e) => return Err(ActionError::Backend(e.to_string())),
        }
        tracing::info!(instance = name, command = ?cmd, "control");
        // Show the new state without waiting for the next poll.
        self.refresh_domains(ni, vec![name.to_string()]).await;
        Ok(())
    }
}

/// Generates an ed25519 key pair: (OpenSSH public line, OpenSSH private PEM).
fn generate_key(name: &str) -> Result<(String, String), String> {
    use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| e.to_string())?;
    key.set_comment(format!("kvmfs-{name}"));
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| e.to_string())?
        .to_string();
    let public = key.public_key().to_openssh().map_err(|e| e.to_string())?;
    Ok((public, private))
}

/// Checks that a git repository answers before anything is built. The URL is passed after
/// `--`, with remote helpers and terminal prompts disabled.
async fn check_git(url: &str) -> Result<(), String> {
    let child = tokio::process::Command::new("git")
        .args([
            "-c",
            "protocol.ext.allow=never",
            "ls-remote",
            "--exit-code",
            "--",
            url,
            "HEAD",
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    match tokio::time::timeout(GIT_CHECK_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "git repository {url} did not answer within {GIT_CHECK_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("git: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("no HEAD").trim().to_string();
            Err(format!("git repository {url} is not reachable: {first}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_words() {
        assert_eq!(Control::parse(b"start\n").unwrap(), Control::Start);
        assert_eq!(Control::parse(b"  destroy ").unwrap(), Control::Destroy);
        assert!(Control::parse(b"explode").is_err());
        assert!(Control::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn keys_are_openssh() {
        let (public, private) = generate_key("web1").unwrap();
        assert!(public.starts_with("ssh-ed25519 "));
        assert!(public.ends_with(" kvmfs-web1"));
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    }

    #[test]
    fn macs_are_local() {
        let m = random_mac();
        assert!(m.starts_with("52:54:00:"));
        assert_eq!(m.len(), 17);
    }
}

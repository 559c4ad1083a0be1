//! The build, in the background after a commit: each step recorded before it runs, each
//! part recorded before it is made, and a failed build undone in reverse order.

use std::sync::Arc;
use std::time::Duration;

use super::ACTION_CALL_TIMEOUT;
use crate::cloudinit::{self, Nic};
use crate::cluster::{CallError, Claim, Cluster};
use crate::db::{InstanceState, Made, Part, Step};
use crate::failpoint;
use crate::hv::xml::{DiskSource, DomainDef, overlay_volume_xml, raw_volume_xml};
use crate::model::{disk_volume, seed_volume};
use crate::spec::Spec;
use crate::storage::{Share, ShareFuture, StorageError};

/// Why a build failed: what the instance's status and `error` then say
/// (`failed: <this>`), with the cause kept.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error(transparent)]
    Node(#[from] CallError),
    #[error("node {0} is not configured")]
    UnknownNode(String),
    #[error("image {image} is not in the pool of node {node}")]
    NoImage { image: String, node: String },
    #[error("image {image} is not on the shared storage {share}")]
    NoSharedImage { image: String, share: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot run git: {0}")]
    GitSpawn(#[source] std::io::Error),
    #[error("git: {0}")]
    GitWait(#[source] std::io::Error),
    #[error("git repository {url} did not answer within {after:?}")]
    GitSilent { url: String, after: Duration },
    #[error("git repository {url} is not reachable: {reason}")]
    GitUnreachable { url: String, reason: String },
    #[error("cannot make a key pair: {0}")]
    Key(#[source] ssh_key::Error),
    #[error(transparent)]
    Seal(#[from] crate::secrets::SecretError),
    #[error("cannot make the seed image: {0}")]
    Seed(String),
}

/// Deadline for the git reachability check.
pub(super) const GIT_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// The instance a build works on: one incarnation of a name, placed on a node.
pub(super) struct Target {
    pub(super) name: String,
    pub(super) incarnation: String,
    pub(super) node: String,
}

pub(super) fn random_mac() -> String {
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

/// Generates an ed25519 key pair: (OpenSSH public line, OpenSSH private PEM).
pub(super) fn generate_key(name: &str) -> Result<(String, String), BuildError> {
    use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(BuildError::Key)?;
    key.set_comment(format!("kvmfs-{name}"));
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(BuildError::Key)?
        .to_string();
    let public = key.public_key().to_openssh().map_err(BuildError::Key)?;
    Ok((public, private))
}

/// Checks that a git repository answers before anything is built. The URL is passed after
/// `--`, with remote helpers and terminal prompts disabled.
pub(super) async fn check_git(url: &str) -> Result<(), BuildError> {
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
        .map_err(BuildError::GitSpawn)?;
    match tokio::time::timeout(GIT_CHECK_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(BuildError::GitSilent {
            url: url.to_string(),
            after: GIT_CHECK_TIMEOUT,
        }),
        Ok(Err(e)) => Err(BuildError::GitWait(e)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("no HEAD").trim().to_string();
            Err(BuildError::GitUnreachable {
                url: url.to_string(),
                reason: first,
            })
        }
    }
}

impl Cluster {
    pub(super) async fn step(&self, name: &str, step: Step) -> Result<(), BuildError> {
        let rev = self.db.set_step(name, step.word()).await?;
        failpoint::hit(&format!("create:{step}"));
        // What was written is known: show it without reading the row back.
        self.patch_local_row(name, |r| {
            r.step = step;
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });
        Ok(())
    }

    /// Makes one part of an instance on its node, in build step `step`. The part is recorded
    /// in `vm.made` (with the step) before the call, so an undo, `rmdir` or reconciliation
    /// knows it may exist; a call the node refused outright made nothing (say, a volume of
    /// that name was already there, which is then left alone) and is unrecorded.
    pub(super) async fn make_part<T: Send + 'static>(
        &self,
        name: &str,
        node: usize,
        made: &mut Made,
        (part, step): (Part, Step),
        make: impl FnOnce(&dyn crate::hv::NodeBackend) -> Result<T, crate::hv::HvError> + Send + 'static,
    ) -> Result<T, BuildError> {
        self.record_part(name, made, part, step, false).await?;
        match self.node_call_within(node, ACTION_CALL_TIMEOUT, make).await {
            Ok(v) => {
                failpoint::hit(&format!("create:{} made", part.word()));
                Ok(v)
            }
            Err(CallError::Hv(e)) => {
                self.unrecord_part(name, made, part).await;
                Err(CallError::Hv(e).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `make_part` for a file on the shared storage: recorded (with `shared`) before it is
    /// made. A refusal that made nothing (the name is taken, a bad name) unrecords it; any
    /// other failure (a timeout, `qemu-img` failing half-way) leaves it recorded, for the
    /// undo to remove whatever is there.
    async fn make_shared_part(
        &self,
        name: &str,
        made: &mut Made,
        (part, step): (Part, Step),
        make: ShareFuture<'_, ()>,
    ) -> Result<(), BuildError> {
        self.record_part(name, made, part, step, true).await?;
        match make.await {
            Ok(()) => {
                failpoint::hit(&format!("create:{} made", part.word()));
                Ok(())
            }
            Err(e @ (StorageError::Exists { .. } | StorageError::BadName(_))) => {
                self.unrecord_part(name, made, part).await;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records `part` in `vm.made` (and the step) before it is made.
    async fn record_part(
        &self,
        name: &str,
        made: &mut Made,
        part: Part,
        step: Step,
        shared: bool,
    ) -> Result<(), BuildError> {
        *made = made.with(part, true);
        made.shared |= shared;
        let rev = self.db.set_step_and_made(name, step.word(), *made).await?;
        failpoint::hit(&format!("create:{} recorded", part.word()));
        let m = *made;
        self.patch_local_row(name, |r| {
            r.step = step;
            r.made = m;
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });
        Ok(())
    }

    /// Takes back the record of a part whose making was refused outright (nothing made).
    async fn unrecord_part(&self, name: &str, made: &mut Made, part: Part) {
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
    }

    /// Runs a build to its end, holding `_claim` (the instance) until then.
    pub(super) async fn build(
        self: Arc<Self>,
        target: Target,
        spec: Spec,
        uid: u32,
        _claim: Claim,
    ) {
        let started = std::time::Instant::now();
        let mut made = Made::default();
        let r = self.build_steps(&target, &spec, uid, &mut made).await;
        let Target { name, node, .. } = target;
        let node_metrics = self.node_index(&node).and_then(|ni| self.metrics.node(ni));
        if let Some(m) = node_metrics {
            m.builds.observe(started.elapsed());
        }
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
            Err(e) => {
                let msg = e.to_string();
                self.metrics.builds_failed.inc();
                tracing::warn!(instance = %name, node = %node, error = %msg, "build failed; undoing");
                let left = self.remove_parts(&name, &node, made, None).await;
                if let Err(e) = self.db.fail_build(&name, &msg, left).await {
                    tracing::error!(instance = %name, error = %e, "cannot record the failed build");
                }
                self.refresh_row(&name).await;
            }
        }
    }

    pub(super) async fn build_steps(
        &self,
        target: &Target,
        spec: &Spec,
        uid: u32,
        made: &mut Made,
    ) -> Result<(), BuildError> {
        let (name, node) = (target.name.as_str(), target.node.as_str());
        let ni = self
            .node_index(node)
            .ok_or_else(|| BuildError::UnknownNode(node.to_string()))?;
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
                .await?;
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
        let private = self.keys.seal(
            &crate::secrets::row_binding(name, &target.incarnation),
            private.as_bytes(),
        )?;
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
            .await?;
        failpoint::hit("create:keys stored");
        self.patch_local_row(name, |r| {
            r.step = Step::GeneratingKey;
            r.ip_eth0 = ip0;
            r.ip_eth1 = ip1;
            r.sealed_key = Some(private);
            r.updated_at = crate::db::unix_now();
            r.rev = rev;
        });

        let meta = cloudinit::meta_data(name, &format!("{name}-{}", crate::db::unix_now()));
        let user = cloudinit::user_data(name, spec, &public, &self.cfg.instances);
        let netcfg = cloudinit::network_config(&nics);
        let iso = cloudinit::build_iso(&meta, &user, &netcfg)
            .map_err(|e| BuildError::Seed(e.to_string()))?;
        let (disk, seed) = match self.storage() {
            Some(share) => {
                let share = share.clone();
                self.make_shared_disks(name, spec, made, share.as_ref(), iso)
                    .await?
            }
            None => self.make_pool_disks(name, ni, spec, made, iso).await?,
        };

        let inst = &self.cfg.instances;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let kernel = nonempty(&inst.kernel);
        let domain_type = self.nodes[ni].backend.domain_type(&inst.domain_type);
        let def = DomainDef {
            name: name.to_string(),
            domain_type,
            vcpus: spec.vcpus,
            ram_mb: spec.ram_mb,
            disk,
            seed: Some(seed),
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

    /// The disk (an overlay of the image) and the seed as volumes of the node's pool.
    async fn make_pool_disks(
        &self,
        name: &str,
        ni: usize,
        spec: &Spec,
        made: &mut Made,
        iso: Vec<u8>,
    ) -> Result<(DiskSource, DiskSource), BuildError> {
        let node = self.nodes[ni].name.clone();
        let image = spec.image.clone();
        let base = self
            .action_call(ni, move |b| b.volume_path(&image))
            .await?
            .ok_or_else(|| BuildError::NoImage {
                image: spec.image.clone(),
                node,
            })?;
        let xml = overlay_volume_xml(&disk_volume(name), spec.disk_gb, &base);
        let disk_path = self
            .make_part(name, ni, made, (Part::Disk, Step::CreatingDisk), move |b| {
                b.create_volume(&xml)
            })
            .await?;
        let seed_name = seed_volume(name);
        let xml = raw_volume_xml(&seed_name, iso.len() as u64);
        let seed_path = self
            .make_part(name, ni, made, (Part::Seed, Step::WritingSeed), move |b| {
                b.create_volume(&xml)
            })
            .await?;
        // A call of its own: the volume exists (and stays recorded for the undo) whether or
        // not the upload goes through.
        self.action_call(ni, move |b| b.upload_volume(&seed_name, &iso))
            .await?;
        Ok((DiskSource::File(disk_path), DiskSource::File(seed_path)))
    }

    /// The disk (an overlay of the image, both on the share) and the seed as files of the
    /// shared storage, which the node's QEMU opens over the network.
    async fn make_shared_disks(
        &self,
        name: &str,
        spec: &Spec,
        made: &mut Made,
        share: &dyn Share,
        iso: Vec<u8>,
    ) -> Result<(DiskSource, DiskSource), BuildError> {
        if !share.exists(&spec.image).await? {
            return Err(BuildError::NoSharedImage {
                image: spec.image.clone(),
                share: share.describe(),
            });
        }
        let disk_name = disk_volume(name);
        self.make_shared_part(
            name,
            made,
            (Part::Disk, Step::CreatingDisk),
            share.create_overlay(&disk_name, &spec.image, spec.disk_gb),
        )
        .await?;
        let seed_name = seed_volume(name);
        self.make_shared_part(
            name,
            made,
            (Part::Seed, Step::WritingSeed),
            share.upload(&seed_name, iso),
        )
        .await?;
        let at = |file: &str| {
            let l = share.location(file);
            DiskSource::Nfs {
                host: l.host,
                path: l.path,
            }
        };
        Ok((at(&disk_name), at(&seed_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

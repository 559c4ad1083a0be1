//! The `vm` row as the rest of kvmfs sees it (`InstanceRecord`, converted once here from the
//! columns), what a build writes (`BuildRow`), the table's fingerprint, and the per-user
//! limits the statements check.

use sqlx::Row;

use super::{DbError, InstanceState, Made, Step, unix_now};

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
pub(super) fn limit(value: u64, owner: i64) -> i64 {
    if value == 0 || owner == 0 {
        i64::MAX
    } else {
        i64::try_from(value).unwrap_or(i64::MAX)
    }
}

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
    /// Where a `migrating` instance is going (`vm.migrate_to`).
    pub migrate_to: Option<String>,
    /// Its snapshots' XML while a migration has them off both nodes (`vm.snapshots`, the
    /// JSON of `hv::SavedSnapshot`s).
    pub saved_snapshots: Option<String>,
}

/// What the instances of every kvmfs on the database hold, read under the placement lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    /// (vCPUs, RAM MB) that instances in `building`, `ready`, `deleting` or `migrating`
    /// hold, per node (a migrating one on its target too).
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
            "ssh_private_key, made, worker, rev, incarnation, migrate_to, snapshots FROM vm",
            $tail
        )
    };
}

impl InstanceRecord {
    /// The row `insert_draft` writes.
    pub(super) fn draft(
        name: &str,
        owner: u32,
        now: i64,
        rev: i64,
        incarnation: String,
    ) -> InstanceRecord {
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
            migrate_to: None,
            saved_snapshots: None,
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
    pub(super) rows: i64,
    pub(super) max_rev: i64,
    pub(super) rev_sum: i64,
}

/// The prime `vm_fingerprint` sums the stamps modulo.
pub(super) const REV_MODULUS: i64 = 1_000_003;

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

/// Refuses a build that would take `owner` past `quota`, given what it holds now
/// (`held`: instances, vCPUs, RAM MB).
pub(super) fn check_quota(
    owner: i64,
    q: &UserQuota,
    held: [i64; 3],
    b: &BuildRow<'_>,
) -> Result<(), DbError> {
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

pub(super) fn vm_row(r: &sqlx::any::AnyRow) -> Result<InstanceRecord, DbError> {
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
            migrate_to: r.try_get("migrate_to")?,
            saved_snapshots: r.try_get("snapshots")?,
        })
    };
    f().map_err(DbError::from)
}

/// Rows of three text columns, as tuples.
pub(super) fn triples(
    rows: &[sqlx::any::AnyRow],
) -> Result<Vec<(String, String, String)>, DbError> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

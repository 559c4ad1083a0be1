//! Configuration: the TOML file a user writes, its documented defaults, and the embedded
//! demo used when no file is given. Everything else in the daemon receives a parsed,
//! validated `Config`; nothing reads the file twice. `docs/CONFIGURATION.md` is the
//! user-facing description of every key here and must change with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::NodeName;

/// Errors while loading the configuration; each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error(
        "config file {path} holds a database password but other users can read it (mode \
         {mode:04o}); refusing to start. Make it private: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot write demo files under {path}: {source}")]
    Demo {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub database: DatabaseConfig,
    pub nodes: Vec<NodeConfig>,
    pub placement: PlacementConfig,
    pub timing: TimingConfig,
    pub flavors: BTreeMap<String, Flavor>,
    pub instances: InstancesConfig,
    pub networks: Vec<NetworkConfig>,
    pub quotas: QuotasConfig,
    pub secrets: SecretsConfig,
    /// The shared storage every node reaches (`[storage]`), if any: instances' disks and
    /// seeds go there instead of the nodes' pools.
    pub storage: Option<StorageConfig>,
}

/// `[storage]` as written: the export as `HOST:/path` or `nfs://HOST/path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorageConfig {
    #[serde(default)]
    nfs: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A shared NFS export every node reaches, parsed: a host and an absolute export path whose
/// characters are safe in an `nfs://` URL, a libvirt `<source name>` and a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    host: String,
    export: String,
    /// Bound on one operation on the share (making a disk, writing a seed, deleting).
    pub timeout: Duration,
}

/// Default bound on one operation on the shared storage.
const STORAGE_TIMEOUT_MS: u64 = 60_000;

impl StorageConfig {
    /// Parses `HOST:/path` or `nfs://HOST/path` (no user, port or query: QEMU and libvirt
    /// get the host and path on their own).
    pub fn parse_nfs(text: &str, timeout: Duration) -> Result<StorageConfig, ConfigError> {
        let bad = |why: &str| {
            ConfigError::Invalid(format!(
                "storage: {text:?} {why}; write nfs = \"HOST:/export\" or url = \"nfs://HOST/export\""
            ))
        };
        let (host, export) = if let Some(rest) = text.strip_prefix("nfs://") {
            let (h, p) = rest
                .split_once('/')
                .ok_or_else(|| bad("has no export path"))?;
            (h, format!("/{p}"))
        } else {
            let (h, p) = text.split_once(':').ok_or_else(|| bad("has no HOST:"))?;
            (h, p.to_string())
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with(['-', '.'])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !host_ok {
            return Err(bad("names no valid host (a name or an IPv4 address)"));
        }
        let export = export.trim_end_matches('/').to_string();
        let segments_ok = export.starts_with('/')
            && export[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            });
        if !segments_ok {
            return Err(bad(
                "needs an absolute export path of letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(StorageConfig {
            host: host.to_string(),
            export,
            timeout,
        })
    }

    fn from_raw(raw: RawStorageConfig) -> Result<StorageConfig, ConfigError> {
        let timeout = Duration::from_millis(raw.timeout_ms.unwrap_or(STORAGE_TIMEOUT_MS));
        if timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.timeout_ms must be > 0".into(),
            ));
        }
        match (raw.nfs, raw.url) {
            (Some(t), None) | (None, Some(t)) => StorageConfig::parse_nfs(&t, timeout),
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "storage: set nfs (HOST:/export) or url (nfs://HOST/export), not both".into(),
            )),
            (None, None) => Err(ConfigError::Invalid(
                "storage: name the share with nfs = \"HOST:/export\" or url = \"nfs://HOST/export\""
                    .into(),
            )),
        }
    }

    /// The NFS server's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The export's path on the server, absolute, without a trailing `/`.
    pub fn export(&self) -> &str {
        &self.export
    }

    /// `nfs://HOST/export` (what QEMU opens, with a file name after it).
    pub fn url(&self) -> String {
        format!("nfs://{}{}", self.host, self.export)
    }
}

/// What one user (uid) may hold; root is not limited. 0 means no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Drafts and failed instances (names with nothing on a node).
    pub drafts: u64,
    /// Instances that hold room on a node (building, ready, deleting).
    pub instances: u64,
    /// vCPUs of those instances together.
    pub vcpus: u64,
    /// RAM (MiB) of those instances together.
    pub ram_mb: u64,
    /// Bytes of scratch files (editors' swap and backup files) in instance folders.
    pub scratch_bytes: u64,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig {
            drafts: 32,
            instances: 64,
            vcpus: 128,
            ram_mb: 256 * 1024,
            scratch_bytes: 4 << 20,
        }
    }
}

impl QuotasConfig {
    /// The limits the database checks.
    pub fn user_quota(&self) -> crate::db::UserQuota {
        crate::db::UserQuota {
            drafts: self.drafts,
            instances: self.instances,
            vcpus: self.vcpus,
            ram_mb: self.ram_mb,
        }
    }
}

/// The key that seals instances' SSH private keys in the database (see `secrets`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The key file (32 random bytes as 64 hex digits). Default: `STATE_DIR/secret.key`,
    /// made on first start when missing.
    pub key_file: Option<PathBuf>,
    /// Keys being rotated out: rows sealed with them are read, and sealed again with
    /// `key_file` at start.
    pub previous_key_files: Vec<PathBuf>,
}

impl Config {
    /// The key file in use.
    pub fn key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("secret.key"))
    }
}

/// Defaults and guest settings for instances kvmfs creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesConfig {
    /// Base image volume used when a spec names none.
    pub default_image: String,
    /// Flavor used when a spec names neither a flavor nor vcpus + ram_mb.
    pub default_flavor: String,
    pub default_disk_gb: u64,
    /// libvirt domain type: `kvm`, or `qemu` for software emulation (TCG). Nodes on the
    /// test driver always get `test`.
    pub domain_type: String,
    /// Kernel and initrd paths on the nodes for direct kernel boot; empty boots the disk.
    pub kernel: String,
    pub initrd: String,
    pub kernel_cmdline: String,
    /// Web server package installed and started on `web` instances.
    pub web_package: String,
    /// Whether cloud-init installs `web_package` and `git` on `web` instances (its
    /// `packages:`, which runs `apt-get update` first and so needs a mirror). `false` for
    /// images that already carry both.
    pub install_web_packages: bool,
    /// Document root the git repository is cloned into on `web` instances.
    pub web_root: String,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            default_image: "debian-12.qcow2".into(),
            default_flavor: "m1.small".into(),
            default_disk_gb: 10,
            domain_type: "kvm".into(),
            kernel: String::new(),
            initrd: String::new(),
            kernel_cmdline: "console=ttyS0 root=/dev/vda rw net.ifnames=0".into(),
            web_package: "nginx".into(),
            install_web_packages: true,
            web_root: "/var/www/html".into(),
        }
    }
}

/// A virtual network every instance gets an interface on, with its static address pool.
/// The first configured network is the instance's `eth0` (`vm.ip_eth0`), the second `eth1`
/// (`vm.ip_eth1`), as in the original design.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// libvirt network name on the nodes (an instance can only go to nodes that have it).
    pub name: String,
    /// The subnet, e.g. `192.168.122.0/24`.
    pub cidr: String,
    /// First and last address handed out (inclusive).
    pub first: std::net::Ipv4Addr,
    pub last: std::net::Ipv4Addr,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
}

impl NetworkConfig {
    pub fn prefix(&self) -> u8 {
        self.cidr
            .split_once('/')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(24)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let (net, prefix) = self.cidr.split_once('/').ok_or_else(|| {
            ConfigError::Invalid(format!("network {}: cidr must be a.b.c.d/nn", self.name))
        })?;
        let net: std::net::Ipv4Addr = net.parse().map_err(|_| {
            ConfigError::Invalid(format!("network {}: bad cidr address", self.name))
        })?;
        let prefix: u32 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                ConfigError::Invalid(format!("network {}: bad prefix", self.name))
            })?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let inside = |a: std::net::Ipv4Addr| u32::from(a) & mask == u32::from(net) & mask;
        if !inside(self.first) || !inside(self.last) || u32::from(self.first) > u32::from(self.last)
        {
            return Err(ConfigError::Invalid(format!(
                "network {}: first..last must lie inside {} in order",
                self.name, self.cidr
            )));
        }
        Ok(())
    }
}

fn default_networks() -> Vec<NetworkConfig> {
    vec![NetworkConfig {
        name: "default".into(),
        cidr: "192.168.122.0/24".into(),
        first: std::net::Ipv4Addr::new(192, 168, 122, 10),
        last: std::net::Ipv4Addr::new(192, 168, 122, 250),
        gateway: Some(std::net::Ipv4Addr::new(192, 168, 122, 1)),
        dns: vec![std::net::Ipv4Addr::new(192, 168, 122, 1)],
    }]
}

/// The demo's two networks: `default` as eth0 and `overlay` as eth1 (only on kvm1, kvm2).
fn demo_networks() -> Vec<NetworkConfig> {
    let mut n = default_networks();
    n.push(NetworkConfig {
        name: "overlay".into(),
        cidr: "172.16.123.0/24".into(),
        first: std::net::Ipv4Addr::new(172, 16, 123, 10),
        last: std::net::Ipv4Addr::new(172, 16, 123, 250),
        gateway: None,
        dns: Vec::new(),
    });
    n
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `mysql://user:pass@host:3306/db` or `sqlite:///abs/path.db`. With `urls`, the first
    /// of them.
    #[serde(default)]
    pub url: String,
    /// The servers of one Galera cluster, in order of preference (see `db::galera`): kvmfs
    /// uses one and moves to the next that answers when it fails.
    #[serde(default)]
    pub urls: Vec<String>,
    /// A MariaDB/MySQL replica of `url` that kvmfs fails over to when the primary is gone
    /// and the replica is promoted (see `db::failover`).
    #[serde(default)]
    pub replica_url: Option<String>,
}

impl DatabaseConfig {
    /// Whether a URL here carries a password (`scheme://user:password@host/…`).
    pub fn holds_password(&self) -> bool {
        std::iter::once(&self.url)
            .chain(&self.urls)
            .chain(&self.replica_url)
            .any(|u| url_password(u).is_some_and(|p| !p.is_empty()))
    }
}

/// The password of `scheme://user:password@host/…`, if any.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    // Up to the query; a password may hold a `/` or `@` (the last `@` ends it).
    let before_query = rest.split('?').next().unwrap_or("");
    let (userinfo, _) = before_query.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Never prints a password: the configuration may be logged.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |u: &str| match url_password(u) {
            Some(p) if !p.is_empty() => u.replacen(&format!(":{p}@"), ":***@", 1),
            _ => u.to_string(),
        };
        f.debug_struct("DatabaseConfig")
            .field("url", &hide(&self.url))
            .field(
                "urls",
                &self.urls.iter().map(|u| hide(u)).collect::<Vec<_>>(),
            )
            .field("replica_url", &self.replica_url.as_deref().map(hide))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: NodeName,
    /// Any libvirt URI: `qemu+ssh://root@kvm1/system`, `qemu+tcp://…`, `test:///path.xml`.
    pub uri: String,
    /// The address recorded in the `host` table (`host.ip`); defaults to the URI's host.
    #[serde(default)]
    pub ip: Option<String>,
    /// Storage pool holding base images and instance disks on this node.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The pool is shared storage (a libvirt `netfs` pool of the same export, a cluster
    /// filesystem): every node whose pool is declared shared sees the same volumes at the
    /// same paths, so an instance moves between such nodes without copying its disks.
    #[serde(default)]
    pub pool_shared: bool,
}

fn default_pool() -> String {
    "default".to_string()
}

/// Placement rule of the original `getresource.sh`: score = cpu_weight × free-CPU share +
/// ram_weight × free-RAM share, over nodes that pass the filters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    pub cpu_weight: f64,
    pub ram_weight: f64,
    /// vCPUs that may be committed per physical CPU.
    pub cpu_overcommit: f64,
    /// RAM that may be committed per byte of physical RAM.
    pub ram_overcommit: f64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            cpu_weight: 0.7,
            ram_weight: 0.3,
            cpu_overcommit: 4.0,
            ram_overcommit: 1.0,
        }
    }
}

/// Bounds on how stale state may be and how long anything may wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// How often each node is polled for its domains and capacity.
    pub refresh_ms: u64,
    /// Deadline for one libvirt call; past it the node reads `offline`.
    pub libvirt_timeout_ms: u64,
    /// Deadline for one database statement or connection.
    pub db_timeout_ms: u64,
    /// Upper bound for any FUSE operation that has to wait on a backend.
    pub op_timeout_ms: u64,
    /// How long the kernel may keep names, attributes and file contents without asking
    /// again; kvmfs invalidates them itself when they change, so this is only a backstop.
    /// 0 turns the kernel's caching off (every access asks kvmfs).
    pub kernel_cache_ms: u64,
    /// How often the reconciliation looks for operations a dead daemon left half-done (it
    /// also runs once at start).
    pub reconcile_ms: u64,
    /// A daemon whose heartbeat is older than this is taken for dead, and the builds and
    /// deletes it was running for abandoned (another daemon on the database takes them
    /// over). It writes its own heartbeat every sixth of this.
    pub worker_lease_ms: u64,
    /// How often a node that delivers domain events is still listed whole (its domains and
    /// its pool): a consistency check. Between, it is polled for its own numbers only and
    /// its domains follow the events.
    pub full_poll_ms: u64,
    /// Bound on one migration (`echo NODE > instances/NAME/node`): past it kvmfs stops
    /// waiting for libvirt and settles the move by what the two nodes show.
    pub migrate_timeout_ms: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            refresh_ms: 500,
            libvirt_timeout_ms: 1500,
            db_timeout_ms: 1500,
            op_timeout_ms: 1800,
            kernel_cache_ms: 60_000,
            reconcile_ms: 30_000,
            worker_lease_ms: 30_000,
            full_poll_ms: 60_000,
            migrate_timeout_ms: 600_000,
        }
    }
}

impl TimingConfig {
    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms)
    }
    pub fn libvirt_timeout(&self) -> Duration {
        Duration::from_millis(self.libvirt_timeout_ms)
    }
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }
    pub fn kernel_cache(&self) -> Duration {
        Duration::from_millis(self.kernel_cache_ms)
    }
    pub fn reconcile(&self) -> Duration {
        Duration::from_millis(self.reconcile_ms)
    }
    pub fn worker_lease(&self) -> Duration {
        Duration::from_millis(self.worker_lease_ms)
    }
    pub fn full_poll(&self) -> Duration {
        Duration::from_millis(self.full_poll_ms)
    }
    pub fn migrate_timeout(&self) -> Duration {
        Duration::from_millis(self.migrate_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    pub vcpus: u32,
    pub ram_mb: u64,
}

/// The flavors of the original menu (`m1.small` 1 vCPU/1 GiB, `m1.medium` 2/2 GiB,
/// `m1.large` 4/8 GiB).
fn default_flavors() -> BTreeMap<String, Flavor> {
    [
        ("m1.small", 1, 1024),
        ("m1.medium", 2, 2048),
        ("m1.large", 4, 8192),
    ]
    .into_iter()
    .map(|(n, vcpus, ram_mb)| (n.to_string(), Flavor { vcpus, ram_mb }))
    .collect()
}

/// The file as written: every section optional except what has no sane default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    state_dir: Option<PathBuf>,
    database: Option<DatabaseConfig>,
    #[serde(default, rename = "node")]
    nodes: Vec<NodeConfig>,
    #[serde(default)]
    placement: PlacementConfig,
    #[serde(default)]
    timing: TimingConfig,
    #[serde(default)]
    flavors: Option<BTreeMap<String, Flavor>>,
    #[serde(default)]
    instances: InstancesConfig,
    #[serde(default, rename = "network")]
    networks: Option<Vec<NetworkConfig>>,
    #[serde(default)]
    quotas: QuotasConfig,
    #[serde(default)]
    secrets: SecretsConfig,
    #[serde(default)]
    storage: Option<RawStorageConfig>,
}

/// `p` as named in the config file at `config`: relative paths are relative to its folder.
fn beside(config: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(p),
        _ => p,
    }
}

/// Where state lives when neither the file nor the command line says.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return PathBuf::from("/var/lib/kvmfs");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("kvmfs");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/kvmfs"),
        None => PathBuf::from("/tmp/kvmfs"),
    }
}

impl Config {
    /// Parses a config file; `state_dir` from the command line wins over the file's.
    pub fn load(path: &Path, state_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse(&text, path, state_dir)?;
        if cfg.database.holds_password() {
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .mode()
                & 0o7777;
            // Group or others may read it: the password is theirs too.
            if mode & 0o044 != 0 {
                return Err(ConfigError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        Ok(cfg)
    }

    fn parse(text: &str, path: &Path, state_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let state_dir = state_dir
            .or(file.state_dir)
            .unwrap_or_else(default_state_dir);
        let database = match file.database {
            Some(mut d) => {
                if let Some(first) = d.urls.first() {
                    if !d.url.is_empty() {
                        return Err(ConfigError::Invalid(
                            "database: set url (one server) or urls (the servers of a Galera \
                             cluster), not both"
                                .into(),
                        ));
                    }
                    d.url = first.clone();
                }
                d
            }
            None => DatabaseConfig {
                url: sqlite_url(&state_dir.join("kvmfs.db")),
                urls: Vec::new(),
                replica_url: None,
            },
        };
        let cfg = Config {
            state_dir,
            database,
            nodes: file.nodes,
            placement: file.placement,
            timing: file.timing,
            flavors: file.flavors.unwrap_or_else(default_flavors),
            instances: file.instances,
            networks: file.networks.unwrap_or_else(default_networks),
            quotas: file.quotas,
            secrets: SecretsConfig {
                // Relative to the file that names them, whatever the daemon's directory.
                key_file: file.secrets.key_file.map(|k| beside(path, k)),
                previous_key_files: file
                    .secrets
                    .previous_key_files
                    .into_iter()
                    .map(|k| beside(path, k))
                    .collect(),
            },
            storage: file.storage.map(StorageConfig::from_raw).transpose()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded demo's configuration (see `demo::config`): the given simulated nodes,
    /// SQLite in `state_dir`, the demo's two networks, defaults for the rest.
    pub fn demo(state_dir: PathBuf, nodes: Vec<NodeConfig>) -> Result<Config, ConfigError> {
        let cfg = Config {
            database: DatabaseConfig {
                url: sqlite_url(&state_dir.join("kvmfs.db")),
                urls: Vec::new(),
                replica_url: None,
            },
            state_dir,
            nodes,
            placement: PlacementConfig::default(),
            timing: TimingConfig::default(),
            flavors: default_flavors(),
            instances: InstancesConfig::default(),
            networks: demo_networks(),
            quotas: QuotasConfig::default(),
            secrets: SecretsConfig::default(),
            storage: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration with defaults and one unreachable node, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Config {
        Config::from_toml(
            "[[node]]\nname = 'kvm1'\nuri = 'test:///default'\n",
            "/nonexistent",
        )
        .expect("the test config is valid")
    }

    /// Parses configuration text as if read from a file in `state_dir`, for in-process
    /// tests.
    #[cfg(test)]
    pub(crate) fn from_toml(
        text: &str,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Some(state_dir.into()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[node]] is configured; name at least one node".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !seen.insert(n.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "node {} is configured twice",
                    n.name
                )));
            }
            if n.uri.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "node {} has an empty uri",
                    n.name
                )));
            }
        }
        let p = &self.placement;
        for (k, v) in [("cpu_weight", p.cpu_weight), ("ram_weight", p.ram_weight)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "placement.{k} must be a number >= 0"
                )));
            }
        }
        for (k, v) in [
            ("cpu_overcommit", p.cpu_overcommit),
            ("ram_overcommit", p.ram_overcommit),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "placement.{k} must be a number > 0"
                )));
            }
        }
        let t = &self.timing;
        if t.refresh_ms == 0
            || t.libvirt_timeout_ms == 0
            || t.db_timeout_ms == 0
            || t.op_timeout_ms == 0
            || t.reconcile_ms == 0
            || t.full_poll_ms == 0
            || t.migrate_timeout_ms == 0
            || t.worker_lease_ms < 1000
        {
            return Err(ConfigError::Invalid(
                "timing values must be > 0 (worker_lease_ms at least 1000)".into(),
            ));
        }
        if self.database.url.is_empty() {
            return Err(ConfigError::Invalid(
                "database: url (or urls) is needed; leave [database] out for the embedded \
                 SQLite database"
                    .into(),
            ));
        }
        if !self.database.urls.is_empty() {
            let mysql = |u: &str| u.starts_with("mysql://") || u.starts_with("mariadb://");
            if !self.database.urls.iter().all(|u| mysql(u)) {
                return Err(ConfigError::Invalid(
                    "database.urls must all start with mysql:// or mariadb:// (the servers \
                     of one Galera cluster)"
                        .into(),
                ));
            }
            let distinct: std::collections::HashSet<&String> = self.database.urls.iter().collect();
            if distinct.len() != self.database.urls.len() {
                return Err(ConfigError::Invalid(
                    "database.urls names a server twice".into(),
                ));
            }
            if self.database.replica_url.is_some() {
                return Err(ConfigError::Invalid(
                    "database: replica_url is for a primary and its replica; the servers of a \
                     Galera cluster (urls) need no failover"
                        .into(),
                ));
            }
        }
        if !(self.database.url.starts_with("mysql://")
            || self.database.url.starts_with("mariadb://")
            || self.database.url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid(
                "database.url must start with mysql://, mariadb:// or sqlite:".into(),
            ));
        }
        if let Some(replica) = &self.database.replica_url {
            let mysql = |u: &str| u.starts_with("mysql://") || u.starts_with("mariadb://");
            if !mysql(replica) {
                return Err(ConfigError::Invalid(
                    "database.replica_url must start with mysql:// or mariadb://".into(),
                ));
            }
            if !mysql(&self.database.url) {
                return Err(ConfigError::Invalid(
                    "database.replica_url needs a MariaDB/MySQL database.url to replicate".into(),
                ));
            }
            if replica == &self.database.url {
                return Err(ConfigError::Invalid(
                    "database.replica_url must name another server than database.url".into(),
                ));
            }
        }
        let mut nets = std::collections::HashSet::new();
        for n in &self.networks {
            n.validate()?;
            if !nets.insert(n.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "network {} is configured twice",
                    n.name
                )));
            }
        }
        if self.networks.len() > 2 {
            return Err(ConfigError::Invalid(
                "at most two networks (eth0 and eth1) are supported".into(),
            ));
        }
        for (name, f) in &self.flavors {
            if f.vcpus == 0 || f.ram_mb == 0 {
                return Err(ConfigError::Invalid(format!(
                    "flavor {name} needs vcpus and ram_mb > 0"
                )));
            }
        }
        Ok(())
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let text = r#"
            [database]
            url = "mysql://u:p@127.0.0.1:3306/kvmfs"
            [[node]]
            name = "kvm1"
            uri = "test:///default"
        "#;
        let c = Config::parse(text, Path::new("x.toml"), Some("/tmp/s".into())).unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].pool, "default");
        assert_eq!(c.placement.cpu_weight, 0.7);
        assert_eq!(c.flavors["m1.large"].ram_mb, 8192);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let bad_key =
            "[database]\nurl='sqlite:///x'\nfoo=1\n[[node]]\nname='a'\nuri='test:///default'";
        assert!(Config::parse(bad_key, Path::new("x"), None).is_err());
        let bad_name = "[[node]]\nname='a/b'\nuri='test:///default'";
        assert!(Config::parse(bad_name, Path::new("x"), None).is_err());
        let dup =
            "[[node]]\nname='a'\nuri='test:///default'\n[[node]]\nname='a'\nuri='test:///default'";
        assert!(Config::parse(dup, Path::new("x"), None).is_err());
        let none = "[database]\nurl='sqlite:///x'";
        assert!(Config::parse(none, Path::new("x"), None).is_err());
    }

    #[test]
    fn galera_urls_are_checked_and_passwords_never_printed() {
        let base = "[[node]]\nname='a'\nuri='test:///default'\n";
        let ok = format!(
            "[database]\nurls=['mysql://k:pw1@g1/kvmfs', 'mysql://k:pw2@g2/kvmfs']\n{base}"
        );
        let c = Config::parse(&ok, Path::new("x"), None).unwrap();
        assert_eq!(c.database.url, "mysql://k:pw1@g1/kvmfs");
        assert_eq!(c.database.urls.len(), 2);
        assert!(c.database.holds_password());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pw1") && !dbg.contains("pw2"), "{dbg}");
        for (bad, says) in [
            ("url='mysql://g0/k'\nurls=['mysql://g1/k']", "not both"),
            ("urls=['mysql://g1/k', 'sqlite:///x.db']", "database.urls"),
            ("urls=['mysql://g1/k', 'mysql://g1/k']", "twice"),
            (
                "urls=['mysql://g1/k', 'mysql://g2/k']\nreplica_url='mysql://r/k'",
                "replica_url",
            ),
            ("replica_url='mysql://r/k'", "url (or urls) is needed"),
        ] {
            let e = Config::parse(&format!("[database]\n{bad}\n{base}"), Path::new("x"), None)
                .unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn replica_urls_are_checked_and_passwords_never_printed() {
        let base = "[[node]]\nname='a'\nuri='test:///default'\n";
        let ok = format!(
            "[database]\nurl='mysql://k:pw1@h1/kvmfs'\nreplica_url='mysql://k:pw2@h2/kvmfs'\n{base}"
        );
        let c = Config::parse(&ok, Path::new("x"), None).unwrap();
        assert!(c.database.holds_password());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pw1") && !dbg.contains("pw2"), "{dbg}");
        assert!(dbg.contains("mysql://k:***@h1/kvmfs"), "{dbg}");
        for bad in [
            "[database]\nurl='sqlite:///x.db'\nreplica_url='mysql://h2/kvmfs'\n",
            "[database]\nurl='mysql://h1/kvmfs'\nreplica_url='sqlite:///x.db'\n",
            "[database]\nurl='mysql://h1/kvmfs'\nreplica_url='mysql://h1/kvmfs'\n",
        ] {
            let e = Config::parse(&format!("{bad}{base}"), Path::new("x"), None).unwrap_err();
            assert!(e.to_string().contains("replica_url"), "{e}");
        }
        for (url, pw) in [
            ("mysql://u:p@h/d", true),
            ("mysql://u@h/d", false),
            ("mysql://u:@h/d", false),
            ("mysql://h/d?x=a:b@c", false),
            ("mysql://u:p/w@h/d", true),
            ("sqlite:///var/lib/k.db", false),
        ] {
            let d = DatabaseConfig {
                url: url.into(),
                urls: Vec::new(),
                replica_url: None,
            };
            assert_eq!(d.holds_password(), pw, "{url}");
        }
    }

    #[test]
    fn a_config_holding_a_password_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        let with_pw = "[database]\nurl='mysql://k:secret@h/kvmfs'\n[[node]]\nname='a'\nuri='test:///default'\n";
        std::fs::write(&path, with_pw).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o644, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = Config::load(&path, Some("/s".into()));
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                let m = e.to_string();
                assert!(
                    m.contains("holds a database password") && m.contains("chmod 600"),
                    "{m}"
                );
                assert!(!m.contains("secret"), "{m}");
            }
        }
        // Without a password the mode does not matter.
        std::fs::write(&path, "[[node]]\nname='a'\nuri='test:///default'\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path, Some("/s".into())).is_ok());
    }

    #[test]
    fn storage_is_parsed_in_both_spellings_and_checked() {
        let base = "[[node]]\nname='a'\nuri='test:///default'\n";
        let parse = |storage: &str| {
            Config::parse(
                &format!("{base}[storage]\n{storage}\n"),
                Path::new("x"),
                None,
            )
        };
        for ok in [
            "nfs = '10.99.0.5:/cloud'",
            "url = 'nfs://10.99.0.5/cloud/'",
            "nfs = '10.99.0.5:/cloud'\ntimeout_ms = 60000",
        ] {
            let c = parse(ok).unwrap();
            let s = c.storage.expect("storage");
            assert_eq!((s.host(), s.export()), ("10.99.0.5", "/cloud"), "{ok}");
            assert_eq!(s.url(), "nfs://10.99.0.5/cloud");
            assert_eq!(s.timeout, Duration::from_secs(60));
        }
        let s = parse("nfs = 'store-1.lan:/srv/kvm_cloud'")
            .unwrap()
            .storage
            .unwrap();
        assert_eq!(s.url(), "nfs://store-1.lan/srv/kvm_cloud");
        for (bad, says) in [
            ("nfs = 'h:/a'\nurl = 'nfs://h/a'", "not both"),
            ("timeout_ms = 5", "name the share"),
            ("nfs = 'h:/a'\ntimeout_ms = 0", "timeout_ms"),
            ("nfs = '/cloud'", "HOST:"),
            ("nfs = 'h:cloud'", "absolute export path"),
            ("nfs = 'h:/'", "absolute export path"),
            ("nfs = 'h:/a/../b'", "absolute export path"),
            ("nfs = 'h:/a b'", "absolute export path"),
            ("nfs = \"h:/a'b\"", "absolute export path"),
            ("url = 'nfs://h'", "no export path"),
            ("url = 'nfs://u@h/a'", "valid host"),
            ("url = 'nfs://h:2049/a'", "valid host"),
            ("url = 'nfs://-o/a'", "valid host"),
            ("url = 'nfs://h/a?x=1'", "absolute export path"),
            ("nfs = ':/a'", "valid host"),
            ("bogus = 1", "unknown field"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(
            Config::parse(base, Path::new("x"), None)
                .unwrap()
                .storage
                .is_none()
        );
    }

    #[test]
    fn database_defaults_to_sqlite_in_state_dir() {
        let text = "[[node]]\nname='a'\nuri='test:///default'";
        let c = Config::parse(text, Path::new("x"), Some("/s".into())).unwrap();
        assert_eq!(c.database.url, "sqlite:///s/kvmfs.db");
    }
}

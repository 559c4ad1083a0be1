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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `mysql://user:pass@host:3306/db` or `sqlite:///abs/path.db`.
    pub url: String,
    /// A second server written to when the primary is unreachable (MariaDB replica).
    #[serde(default)]
    pub replica_url: Option<String>,
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
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            refresh_ms: 500,
            libvirt_timeout_ms: 1500,
            db_timeout_ms: 1500,
            op_timeout_ms: 1800,
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
        Self::parse(&text, path, state_dir)
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
            Some(d) => d,
            None => DatabaseConfig {
                url: sqlite_url(&state_dir.join("kvmfs.db")),
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
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The embedded demo: three simulated nodes on libvirt's test driver and SQLite,
    /// written under `state_dir/demo`.
    pub fn demo(state_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
        let state_dir = state_dir.unwrap_or_else(default_state_dir);
        let nodes = crate::demo::write_demo_nodes(&state_dir.join("demo")).map_err(|source| {
            ConfigError::Demo {
                path: state_dir.join("demo"),
                source,
            }
        })?;
        let cfg = Config {
            database: DatabaseConfig {
                url: sqlite_url(&state_dir.join("kvmfs.db")),
                replica_url: None,
            },
            state_dir,
            nodes,
            placement: PlacementConfig::default(),
            timing: TimingConfig::default(),
            flavors: default_flavors(),
        };
        cfg.validate()?;
        Ok(cfg)
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
                return Err(ConfigError::Invalid(format!("node {} has an empty uri", n.name)));
            }
        }
        let p = &self.placement;
        for (k, v) in [
            ("cpu_weight", p.cpu_weight),
            ("ram_weight", p.ram_weight),
        ] {
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
        if t.refresh_ms == 0 || t.libvirt_timeout_ms == 0 || t.db_timeout_ms == 0 {
            return Err(ConfigError::Invalid("timing values must be > 0".into()));
        }
        if !(self.database.url.starts_with("mysql://")
            || self.database.url.starts_with("mariadb://")
            || self.database.url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid(
                "database.url must start with mysql://, mariadb:// or sqlite:".into(),
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
        let bad_key = "[database]\nurl='sqlite:///x'\nfoo=1\n[[node]]\nname='a'\nuri='test:///default'";
        assert!(Config::parse(bad_key, Path::new("x"), None).is_err());
        let bad_name = "[[node]]\nname='a/b'\nuri='test:///default'";
        assert!(Config::parse(bad_name, Path::new("x"), None).is_err());
        let dup = "[[node]]\nname='a'\nuri='test:///default'\n[[node]]\nname='a'\nuri='test:///default'";
        assert!(Config::parse(dup, Path::new("x"), None).is_err());
        let none = "[database]\nurl='sqlite:///x'";
        assert!(Config::parse(none, Path::new("x"), None).is_err());
    }

    #[test]
    fn database_defaults_to_sqlite_in_state_dir() {
        let text = "[[node]]\nname='a'\nuri='test:///default'";
        let c = Config::parse(text, Path::new("x"), Some("/s".into())).unwrap();
        assert_eq!(c.database.url, "sqlite:///s/kvmfs.db");
    }
}

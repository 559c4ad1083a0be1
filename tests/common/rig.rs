//! A MariaDB server and one node (a real libvirtd serving the test driver, so two mounts,
//! or a daemon and its successor, see the same domains), with what the tests ask of them.

use super::libvirtd::Libvirtd;
use super::{MariaDb, errno};

/// The base image the rig's node holds.
pub const IMAGE: &str = "base.qcow2";

/// A MariaDB server and a node (a real libvirtd serving the test driver, so two mounts, or
/// a daemon and its successor, see the same domains).
pub struct Rig {
    pub db: MariaDb,
    pub node: Libvirtd,
}

impl Rig {
    pub fn new() -> Rig {
        Rig {
            db: MariaDb::start(),
            node: Libvirtd::start(IMAGE),
        }
    }

    /// A configuration on this rig; `timing` and `extra` are more TOML lines.
    pub fn config(&self, timing: &str, extra: &str) -> String {
        format!(
            "[database]\nurl = '{}'\n\
             [timing]\nlibvirt_timeout_ms = 5000\n{timing}\n\
             [instances]\ndefault_image = '{IMAGE}'\n\
             [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
             first = '192.168.122.10'\nlast = '192.168.122.60'\n\
             [[node]]\nname = 'n1'\nuri = '{}'\npool = 'default-pool'\n{extra}\n",
            self.db.url(),
            self.node.uri()
        )
    }

    pub fn sql(&self, q: &str) -> String {
        self.db.sql(&format!("USE kvmfs; {q}"))
    }

    /// The node's domains but the test driver's own `test`.
    pub fn domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .node
            .domains()
            .into_iter()
            .filter(|d| d != "test")
            .collect();
        d.sort();
        d
    }

    /// Whether anything of instance `name` is left: a row, an address, a domain, a volume.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let mut left = Vec::new();
        let row = self.sql(&format!("SELECT state FROM vm WHERE vmname = '{name}'"));
        if !row.trim().is_empty() {
            left.push(format!("row ({})", row.trim()));
        }
        let ips = self.sql(&format!(
            "SELECT address FROM ip_alloc WHERE vmname = '{name}'"
        ));
        if !ips.trim().is_empty() {
            left.push(format!("addresses {}", ips.trim()));
        }
        if self.node.domains().iter().any(|d| d == name) {
            left.push("domain".into());
        }
        for v in self.node.volumes() {
            if v.starts_with(&format!("{name}.")) {
                left.push(format!("volume {v}"));
            }
        }
        left
    }
}

/// The errno of an operation's result (0 for success).
pub fn errno_of(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => errno(&e),
    }
}

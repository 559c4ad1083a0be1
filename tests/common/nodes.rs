//! Several nodes (real libvirtds serving the test driver, their pools declared one shared
//! storage) and a MariaDB server, for the tests of moves and drains, with what they ask of
//! them: where an instance's domains are, its row, and waiting for a move to settle.

use std::time::Duration;

use super::libvirtd::Libvirtd;
use super::rig::IMAGE;
use super::{MariaDb, Mounted, wait_status, write_spec};

/// A MariaDB server and `n` nodes, `n1`…
pub struct Nodes {
    pub db: MariaDb,
    pub nodes: Vec<Libvirtd>,
}

impl Nodes {
    pub fn new(n: usize) -> Nodes {
        Nodes {
            db: MariaDb::start(),
            nodes: (0..n).map(|_| Libvirtd::start(IMAGE)).collect(),
        }
    }

    pub fn names(&self) -> Vec<String> {
        (1..=self.nodes.len()).map(|i| format!("n{i}")).collect()
    }

    /// The configuration, with `timing` lines added to its `[timing]`.
    pub fn config_with(&self, timing: &str) -> String {
        let mut c = format!(
            "[database]\nurl = '{}'\n\
             [timing]\nlibvirt_timeout_ms = 2000\nrefresh_ms = 200\nreconcile_ms = 500\n{timing}\n\
             [instances]\ndefault_image = '{IMAGE}'\n\
             [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
             first = '192.168.122.10'\nlast = '192.168.122.60'\n",
            self.db.url()
        );
        for (name, n) in self.names().iter().zip(&self.nodes) {
            c += &format!(
                "[[node]]\nname = '{name}'\nuri = '{}'\npool = 'default-pool'\n\
                 pool_shared = true\n",
                n.uri()
            );
        }
        c
    }

    pub fn config(&self) -> String {
        self.config_with("")
    }

    pub fn node(&self, n: &str) -> &Libvirtd {
        let i: usize = n[1..].parse().expect("a node name nN");
        &self.nodes[i - 1]
    }

    /// The nodes holding a domain `name`.
    pub fn copies(&self, name: &str) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| self.node(n).domains().iter().any(|d| d == name))
            .collect()
    }

    /// The row's state and node, `""` without a row.
    pub fn row(&self, name: &str) -> String {
        self.db
            .sql(&format!(
                "USE kvmfs; SELECT state, hostname FROM vm WHERE vmname = '{name}'"
            ))
            .trim()
            .to_string()
    }

    /// Exactly one domain `name`, on the node its row names, `ready` there; that node.
    pub fn one_where_the_row_says(&self, name: &str, m: &Mounted) -> String {
        let copies = self.copies(name);
        assert_eq!(copies.len(), 1, "copies of {name}: {copies:?}\n{}", m.log());
        assert_eq!(
            self.row(name),
            format!("ready\t{}", copies[0]),
            "the row of {name}\n{}",
            m.log()
        );
        copies[0].clone()
    }
    /// (node, `virsh domstate`) of every copy of domain `name`.
    pub fn copies_with_state(&self, name: &str) -> Vec<(String, String)> {
        self.copies(name)
            .into_iter()
            .map(|n| {
                let state = self.node(&n).virsh(&["domstate", name]).trim().to_string();
                (n, state)
            })
            .collect()
    }
}

pub fn spec(node: &str, ram_mb: u64) -> String {
    format!(r#"{{"vcpus":1,"ram_mb":{ram_mb},"disk_gb":1,"node":"{node}"}}"#)
}

pub fn built_on(m: &Mounted, name: &str, node: &str) {
    built_with(m, name, &spec(node, 128));
}

pub fn built_with(m: &Mounted, name: &str, spec: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(m, name, spec).unwrap();
    wait_status(m, name, "running");
}

/// Waits until `name`'s status no longer says it is moving, and returns it.
pub fn settled(m: &Mounted, name: &str) -> String {
    let p = m.path(&format!("instances/{name}/status"));
    let start = std::time::Instant::now();
    loop {
        let last = std::fs::read_to_string(&p).unwrap_or_default();
        if !last.is_empty() && !last.starts_with("migrating") {
            return last;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not settle: {last:?}, error {:?}\n{}",
            error_of(m, name),
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn error_of(m: &Mounted, name: &str) -> String {
    std::fs::read_to_string(m.path(&format!("instances/{name}/error"))).unwrap_or_default()
}

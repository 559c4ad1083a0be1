//! A MariaDB Galera cluster of three servers on this machine, each on ports of its own, run
//! as the `mysql` user (as root, a joining server's rsync state transfer drops to `nobody`
//! and cannot write the data directory).

use std::time::Duration;

use super::{MariaDb, free_port, spawn_mariadbd, wait_for};

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// A joining server copies the first one's data directory (rsync), then replays.
const JOIN_WAIT: Duration = Duration::from_secs(120);

pub struct Galera {
    pub servers: Vec<MariaDb>,
}

impl Galera {
    /// Starts `n` servers, the first one bootstrapping the cluster, the others joining it one
    /// after the other, and makes the `kvmfs` database and user (which replicate to all).
    pub fn start(n: usize) -> Galera {
        assert!(
            std::path::Path::new(PROVIDER).exists(),
            "{PROVIDER} is missing: install galera-4 (scripts/install-deps.sh)"
        );
        let gcomm: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster = gcomm
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<MariaDb> = Vec::new();
        for (i, base) in gcomm.iter().enumerate() {
            let mut args = vec![
                "--user=mysql".to_string(),
                "--skip-log-bin".into(),
                "--binlog-format=ROW".into(),
                "--innodb-autoinc-lock-mode=2".into(),
                "--wsrep-on=ON".into(),
                format!("--wsrep-provider={PROVIDER}"),
                "--wsrep-cluster-name=kvmfs-test".into(),
                format!("--wsrep-cluster-address=gcomm://{cluster}"),
                format!("--wsrep-node-address=127.0.0.1:{base}"),
                format!("--wsrep-node-name=g{}", i + 1),
                format!(
                    "--wsrep-provider-options=base_port={base};gcache.size=16M;\
                     ist.recv_addr=127.0.0.1:{}",
                    free_port()
                ),
                "--wsrep-sst-method=rsync".into(),
                format!("--wsrep-sst-receive-address=127.0.0.1:{}", free_port()),
            ];
            if i == 0 {
                args.push("--wsrep-new-cluster".into());
            }
            let server = MariaDb::install_as("mysql", args);
            server.wait_synced("a Galera server to join and sync");
            if i == 0 {
                server.create_kvmfs();
                // The bootstrap option is for the first start only: a restart joins.
                let mut s = server;
                s.args.retain(|a| a != "--wsrep-new-cluster");
                servers.push(s);
            } else {
                servers.push(server);
            }
        }
        let g = Galera { servers };
        g.wait_size(n);
        for s in &g.servers {
            wait_for(JOIN_WAIT, "the kvmfs user on every server", || {
                s.sql_try("SELECT COUNT(*) FROM mysql.user WHERE user = 'kvmfs'")
                    .is_ok_and(|c| c.trim() == "1")
            });
        }
        g
    }

    /// Waits until every running server counts `n` members and is synced.
    pub fn wait_size(&self, n: usize) {
        wait_for(
            JOIN_WAIT,
            &format!("a cluster of {n} synced servers"),
            || {
                self.servers.iter().filter(|s| s.is_running()).all(|s| {
                    s.synced()
                        && s.sql_try("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'")
                            .is_ok_and(|r| r.trim().ends_with(&format!("\t{n}")))
                })
            },
        );
    }
}

impl MariaDb {
    /// Whether this Galera server is synced with its cluster and takes statements.
    pub fn synced(&self) -> bool {
        self.sql_try("SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'")
            .is_ok_and(|r| r.trim().ends_with("\tSynced"))
            && self
                .sql_try("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
                .is_ok_and(|r| r.trim().ends_with("\tON"))
    }

    /// Whether the server process runs (`kill` reaps it, so its pid is gone).
    pub fn is_running(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(self.child.id() as libc::pid_t, 0) == 0 }
    }

    /// Starts a killed server again on its data and ports; a Galera server rejoins its
    /// cluster (and is waited for until synced).
    pub fn rejoin(&mut self) {
        self.child = spawn_mariadbd(self.dir.path(), self.port, &self.args);
        self.wait_synced("the Galera server to rejoin and sync");
    }

    /// Waits until the server is synced; on a timeout, shows the end of its log.
    fn wait_synced(&self, what: &str) {
        let start = std::time::Instant::now();
        while !self.synced() {
            if start.elapsed() > JOIN_WAIT {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "timed out after {JOIN_WAIT:?} waiting for {what}; its log:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

//! The in-process test rig: a controller over in-memory nodes (`hv::mem::MemNode`) and a
//! SQLite database in a temporary folder, with the tree on top, driven by plain calls — no
//! kernel, no mount, no root, no MariaDB. The mount tests in `tests/` cover the FUSE glue
//! and the real parts; these cover the rules of the lifecycle and of the tree in seconds.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::db::Db;
use crate::hv::NodeBackend;
use crate::hv::mem::MemNode;
use crate::secrets::KeyRing;
use crate::storage::mem::MemShare;
use crate::tree::{Ino, Owner, Tree, TreeError};

/// The rig's timing: quick polls and deadlines, so tests wait little.
pub const TIMING: &str = "[timing]\nrefresh_ms = 50\nlibvirt_timeout_ms = 1000\n\
                      db_timeout_ms = 2000\nop_timeout_ms = 3000\nreconcile_ms = 200\n\
                      worker_lease_ms = 3000\n";

/// A running controller and tree over in-memory nodes.
pub struct Rig {
    pub cluster: Arc<Cluster>,
    pub tree: Arc<Tree>,
    pub nodes: Vec<Arc<MemNode>>,
    /// The database file and key; a second rig (`another_daemon`) shares them.
    pub dir: Arc<tempfile::TempDir>,
    config: String,
    /// The in-memory shared storage, for rigs made `with_share`.
    pub share: Option<Arc<MemShare>>,
}

impl Rig {
    /// A rig with nodes `(name, cpus, memory MB)` and more configuration `extra` (TOML:
    /// `[quotas]`, `[placement]`, more `[[network]]`s…; `[timing]` is the rig's).
    pub async fn new(nodes: &[(&str, u32, u64)], extra: &str) -> Rig {
        Self::with_timing(nodes, TIMING, extra).await
    }

    /// As `new`, with `timing` (a whole `[timing]` table) instead of the rig's.
    pub async fn with_timing(nodes: &[(&str, u32, u64)], timing: &str, extra: &str) -> Rig {
        let mems: Vec<Arc<MemNode>> = nodes
            .iter()
            .map(|(n, cpus, mb)| MemNode::new(n, *cpus, *mb))
            .collect();
        Self::on_nodes(mems, timing, extra).await
    }

    /// A rig on nodes made (and perhaps broken) beforehand: what the first poll meets.
    pub async fn on_nodes(mems: Vec<Arc<MemNode>>, timing: &str, extra: &str) -> Rig {
        Self::on_nodes_with(mems, timing, extra, None, false).await
    }

    /// A rig whose nodes' pools are declared one shared storage (`pool_shared`).
    pub async fn with_shared_pools(nodes: &[(&str, u32, u64)]) -> Rig {
        Self::with_shared_pools_and_timing(nodes, TIMING).await
    }

    /// As `with_shared_pools`, with `timing` (a whole `[timing]` table).
    pub async fn with_shared_pools_and_timing(nodes: &[(&str, u32, u64)], timing: &str) -> Rig {
        let mems: Vec<Arc<MemNode>> = nodes
            .iter()
            .map(|(n, cpus, mb)| MemNode::new(n, *cpus, *mb))
            .collect();
        Self::on_nodes_with(mems, timing, "", None, true).await
    }

    async fn on_nodes_with(
        mems: Vec<Arc<MemNode>>,
        timing: &str,
        extra: &str,
        share: Option<Arc<MemShare>>,
        pools_shared: bool,
    ) -> Rig {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));

        let mut config = format!(
            "[database]\nurl = 'sqlite://{}/kvmfs.db'\n{timing}\n{extra}\n",
            dir.path().display()
        );
        for m in &mems {
            let n = m.name();
            config.push_str(&format!(
                "[[node]]\nname = '{n}'\nuri = 'mem://{n}'\npool_shared = {pools_shared}\n"
            ));
        }
        Self::start(dir, mems, config, share, "w1").await
    }

    /// A rig whose instances' disks and seeds go to `share` (a shared storage).
    pub async fn with_share(nodes: &[(&str, u32, u64)], share: Arc<MemShare>) -> Rig {
        let mems: Vec<Arc<MemNode>> = nodes
            .iter()
            .map(|(n, cpus, mb)| MemNode::new(n, *cpus, *mb))
            .collect();
        Self::on_nodes_with(mems, TIMING, "", Some(share), false).await
    }

    /// Another daemon on the same database and nodes (a second control node, or the same
    /// one started again after a crash with `worker` its old id).
    pub async fn another_daemon(&self, worker: &str) -> Rig {
        Self::start(
            self.dir.clone(),
            self.nodes.clone(),
            self.config.clone(),
            self.share.clone(),
            worker,
        )
        .await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        nodes: Vec<Arc<MemNode>>,
        config: String,
        share: Option<Arc<MemShare>>,
        worker: &str,
    ) -> Rig {
        let cfg = Arc::new(Config::from_toml(&config, dir.path()).expect("rig config"));
        let db = Db::connect(&cfg.database.url, cfg.timing.db_timeout())
            .await
            .expect("sqlite");
        db.migrate().await.expect("migrations");
        let keys = KeyRing::from_bytes(&[42u8; 32]);
        let backends: Vec<Arc<dyn NodeBackend>> = nodes
            .iter()
            .map(|n| n.clone() as Arc<dyn NodeBackend>)
            .collect();
        let cluster = Cluster::with_backends_and_share(
            cfg,
            db,
            backends,
            share.clone().map(|s| s as Arc<dyn crate::storage::Share>),
            worker.to_string(),
            Arc::new(keys),
        );
        cluster.start().await.expect("cluster start");
        let tree = Arc::new(Tree::new(cluster.clone(), Owner { uid: 0, gid: 0 }));
        Rig {
            cluster,
            tree,
            nodes,
            dir,
            config,
            share,
        }
    }

    pub fn node(&self, name: &str) -> &Arc<MemNode> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .expect("a node of the rig")
    }

    /// The status line of an instance, as the picture shows it now.
    pub fn status(&self, name: &str) -> Option<String> {
        self.cluster.view().instances.get(name).map(|i| i.status())
    }

    /// Waits (at most 10 s) until an instance's status starts with `prefix`.
    pub async fn wait_status(&self, name: &str, prefix: &str) -> String {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status(name).unwrap_or_default();
            if s.starts_with(prefix) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{name} is {s:?}, not {prefix}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most 10 s) until `cond` holds.
    pub async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(tokio::time::Instant::now() < until, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The inode of `path` (relative to the mount's root), looked up name by name.
    pub fn ino(&self, path: &str) -> Result<u64, TreeError> {
        let mut ino = Ino::Root.encode();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.tree.lookup(ino, OsStr::new(part))?.ino;
        }
        Ok(ino)
    }

    /// Reads a whole file as the kernel would, through an open handle.
    pub fn read(&self, path: &str) -> Result<String, TreeError> {
        let ino = self.ino(path)?;
        let (fh, _) = self.tree.open(ino, false, 0)?;
        let data = self.tree.read(fh, ino, 0, 1 << 20);
        self.tree.release(fh);
        Ok(String::from_utf8_lossy(&data?).into_owned())
    }

    /// `mkdir /instances/NAME` as `uid`.
    pub async fn mkdir(&self, name: &str, uid: u32) -> Result<(), TreeError> {
        self.tree
            .mkdir(Ino::InstancesDir.encode(), OsStr::new(name), uid)
            .await
            .map(|_| ())
    }

    /// `rmdir /instances/NAME` as `uid`.
    pub async fn rmdir(&self, name: &str, uid: u32) -> Result<(), TreeError> {
        self.tree
            .rmdir(Ino::InstancesDir.encode(), OsStr::new(name), uid)
            .await
    }

    /// Opens `path` for writing as `uid`, writes `text` in one write, and closes it (the
    /// write's error first, then the close's).
    pub async fn write(&self, path: &str, uid: u32, text: &str) -> Result<(), TreeError> {
        let ino = self.ino(path)?;
        let (fh, _) = self.tree.open(ino, true, uid)?;
        let w = self.tree.write(fh, 0, text.as_bytes(), uid).await;
        let f = self.tree.flush(fh, uid).await;
        self.tree.release(fh);
        w.map(|_| ())?;
        f
    }

    /// `mkdir`, then `spec.json`, as `uid`.
    pub async fn create(&self, name: &str, uid: u32, spec: &str) -> Result<(), TreeError> {
        self.mkdir(name, uid).await?;
        self.write(&format!("instances/{name}/spec.json"), uid, spec)
            .await
    }
}

//! Simulated nodes for the benchmark (test-driver node files), adopting their domains as
//! instances, and a tmpfs copy of the same tree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::common::Mounted;
use crate::*;

pub struct Lab {
    /// Holds the node files for as long as the lab lives.
    pub _dir: tempfile::TempDir,
    pub uris: Vec<String>,
}

impl Lab {
    /// `nodes` test-driver nodes holding `per_node` domains each (two of three running),
    /// each node big enough for every create of the run.
    pub fn new(nodes: usize, per_node: usize) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-bench")
            .tempdir()
            .expect("tempdir");
        let uris = (1..=nodes)
            .map(|k| {
                // Room for every instance of the run: 4,096 vCPUs and 4 TiB under the
                // default overcommit.
                let mut n = SimNode::new(1024, 4 << 20);
                n.domains = (0..per_node)
                    .map(|i| kvmfs::testnode::SimDomain {
                        name: format!("vm{k}-{i:05}"),
                        vcpus: 1,
                        memory_mib: 512,
                        running: i % 3 != 0,
                    })
                    .collect();
                // Each instance's disk and seed in the pool, as kvmfs's builds leave them (of
                // no size: the test driver counts volumes against its pool of 100 GiB).
                for d in &n.domains {
                    n.volumes.push((kvmfs::model::disk_volume(&d.name), 0));
                    n.volumes.push((kvmfs::model::seed_volume(&d.name), 0));
                }
                n.write(&dir.path().join(format!("kvm{k}.xml")))
                    .expect("node xml")
            })
            .collect();
        Lab { _dir: dir, uris }
    }

    pub fn config(&self, extra: &str) -> String {
        let mut c = String::new();
        c.push_str(extra);
        c.push_str(
            "\n[[network]]\nname = 'default'\ncidr = '10.50.0.0/16'\n\
             first = '10.50.0.10'\nlast = '10.50.255.250'\ngateway = '10.50.0.1'\n",
        );
        for (i, u) in self.uris.iter().enumerate() {
            let _ = write!(c, "\n[[node]]\nname = 'kvm{}'\nuri = '{u}'\n", i + 1);
        }
        c
    }
}

/// Makes every domain of the lab a managed instance: a `ready` row per domain, as kvmfs's
/// own builds leave them, then waits until the mount shows them.
pub fn adopt_domains(m: &Mounted, nodes: usize, per_node: usize) {
    let url = m.sqlite_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("sqlite");
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut tx = pool.begin().await.expect("tx");
        for k in 1..=nodes {
            for i in 0..per_node {
                sqlx::query(
                    "INSERT INTO vm (vmname, hostname, state, step, vcpus, ram, disk_gb, image, \
                     purpose, owner_uid, created_at, updated_at, made) \
                     VALUES (?, ?, 'ready', '', 1, 512, 10, 'debian-12.qcow2', 'custom', 0, ?, ?, \
                     'domain,disk,seed')",
                )
                .bind(format!("vm{k}-{i:05}"))
                .bind(format!("kvm{k}"))
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .expect("insert");
            }
        }
        tx.commit().await.expect("commit");
        pool.close().await;
    });
    let probe = m.path("instances/vm1-00000/info.json");
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(&probe).unwrap_or_default();
        if s.contains("\"managed\": true") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "rows never showed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs holding a copy of a mount's `/instances`.
pub struct TmpfsCopy {
    pub dir: tempfile::TempDir,
}

impl TmpfsCopy {
    pub fn of(src: &Path) -> TmpfsCopy {
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-bench-tmpfs")
            .tempdir()
            .expect("tempdir");
        run_quiet(
            Command::new("mount")
                .args(["-t", "tmpfs", "kvmfs-bench-tmpfs"])
                .arg(dir.path()),
        );
        let dst = dir.path().join("instances");
        std::fs::create_dir(&dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            let d = dst.join(e.file_name());
            std::fs::create_dir(&d).expect("mkdir");
            for f in std::fs::read_dir(e.path()).expect("read_dir") {
                let f = f.expect("entry");
                if f.file_name() == "ssh_key" {
                    continue;
                }
                // The instance's `snapshots` folder (empty here): a folder in the copy too.
                if f.file_type().expect("file type").is_dir() {
                    std::fs::create_dir(d.join(f.file_name())).expect("mkdir");
                    continue;
                }
                let data = std::fs::read(f.path()).expect("read");
                std::fs::write(d.join(f.file_name()), data).expect("write");
            }
        }
        TmpfsCopy { dir }
    }

    pub fn instances(&self) -> PathBuf {
        self.dir.path().join("instances")
    }
}

impl Drop for TmpfsCopy {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

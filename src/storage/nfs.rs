//! The NFS share of `[storage]`, reached from userspace: `qemu-img` (QEMU's libnfs driver,
//! Debian's `qemu-block-extra`) makes disks as overlays of base images with absolute
//! `nfs://` backing URLs, and writes seeds by converting a private temporary file to
//! `nfs://`; `rpc` looks names up, removes them and lists the export's top folder. Every operation runs under the share's
//! timeout, and a `qemu-img` that outlives it is killed.

use std::time::Duration;

use super::rpc::{self, Op};
use super::{Share, ShareFile, ShareFuture, ShareLocation, StorageError, check_name};
use crate::config::StorageConfig;

/// The shared NFS export.
pub struct NfsShare {
    cfg: StorageConfig,
}

impl NfsShare {
    pub fn new(cfg: &StorageConfig) -> NfsShare {
        NfsShare { cfg: cfg.clone() }
    }

    fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.cfg.url())
    }

    fn failed(&self, message: impl Into<String>) -> StorageError {
        StorageError::Failed {
            share: self.cfg.url(),
            message: message.into(),
        }
    }

    /// Runs `op` under the share's timeout.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.cfg.timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Timeout {
                share: self.cfg.url(),
                after: self.cfg.timeout,
            }),
        }
    }

    async fn lookup(&self, name: &str) -> Result<bool, StorageError> {
        check_name(name)?;
        rpc::name_op(self.cfg.host(), self.cfg.export(), name, Op::Lookup)
            .await
            .map_err(|e| self.failed(e.to_string()))
    }

    /// Refuses to make `name` if something of that name is there already.
    async fn must_be_new(&self, name: &str) -> Result<(), StorageError> {
        if self.lookup(name).await? {
            return Err(StorageError::Exists {
                share: self.cfg.url(),
                file: name.to_string(),
            });
        }
        Ok(())
    }

    /// Runs `qemu-img ARGS -- FILES…`. The files are `nfs://` URLs kvmfs composed from
    /// the checked configuration and checked names, and a path of its own temporary file;
    /// after `--` none of them can be read as an option. Killed when dropped (timeout).
    async fn qemu_img(&self, args: &[&str], files: &[&str]) -> Result<(), StorageError> {
        let out = tokio::process::Command::new("qemu-img")
            .args(args)
            .arg("--")
            .args(files)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| self.failed(format!("cannot run qemu-img: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        Err(self.failed(format!("qemu-img {}: {first}", args.first().unwrap_or(&""))))
    }
}

impl Share for NfsShare {
    fn describe(&self) -> String {
        self.cfg.url()
    }

    fn location(&self, name: &str) -> ShareLocation {
        ShareLocation {
            protocol: "nfs",
            host: self.cfg.host().to_string(),
            path: format!("{}/{name}", self.cfg.export()),
        }
    }

    fn exists<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool> {
        Box::pin(self.bounded(self.lookup(name)))
    }

    fn create_overlay<'a>(&'a self, name: &'a str, base: &'a str, gib: u64) -> ShareFuture<'a, ()> {
        Box::pin(self.bounded(async move {
            check_name(name)?;
            check_name(base)?;
            self.must_be_new(name).await?;
            // QEMU resolves a relative backing name against nothing useful over NFS: the
            // backing URL must be absolute.
            let backing = self.url_of(base);
            let size = format!("{gib}G");
            self.qemu_img(
                &["create", "-q", "-f", "qcow2", "-b", &backing, "-F", "qcow2"],
                &[&self.url_of(name), &size],
            )
            .await
        }))
    }

    fn upload<'a>(&'a self, name: &'a str, data: Vec<u8>) -> ShareFuture<'a, ()> {
        Box::pin(self.bounded(async move {
            check_name(name)?;
            self.must_be_new(name).await?;
            let tmp = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::io::Write as _;
                let mut f = tempfile::NamedTempFile::new()?;
                f.write_all(&data)?;
                f.flush()?;
                Ok(f)
            })
            .await
            .map_err(|e| self.failed(format!("cannot write the seed: {e}")))?
            .map_err(|e| self.failed(format!("cannot write the seed: {e}")))?;
            let local = tmp.path().to_string_lossy().into_owned();
            self.qemu_img(
                &["convert", "-q", "-f", "raw", "-O", "raw"],
                &[&local, &self.url_of(name)],
            )
            .await
        }))
    }

    fn list(&self) -> ShareFuture<'_, Vec<ShareFile>> {
        Box::pin(self.bounded(async move {
            let entries = rpc::list(self.cfg.host(), self.cfg.export())
                .await
                .map_err(|e| self.failed(e.to_string()))?;
            let mut files: Vec<ShareFile> = entries
                .into_iter()
                .filter_map(|e| match e.attr {
                    Some(a) if a.kind == rpc::NF3REG && check_name(&e.name).is_ok() => {
                        Some(ShareFile {
                            name: e.name,
                            size_bytes: a.size,
                        })
                    }
                    _ => None,
                })
                .collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(files)
        }))
    }

    fn probe(&self, within: Duration) -> ShareFuture<'_, ()> {
        Box::pin(async move {
            // `.` names the export's folder itself: present whenever the share answers.
            let look = rpc::name_op(self.cfg.host(), self.cfg.export(), ".", Op::Lookup);
            match tokio::time::timeout(within, look).await {
                Err(_) => Err(StorageError::Timeout {
                    share: self.cfg.url(),
                    after: within,
                }),
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(self.failed("the export's folder is gone")),
                Ok(Err(e)) => Err(self.failed(e.to_string())),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool> {
        Box::pin(self.bounded(async move {
            check_name(name)?;
            rpc::name_op(self.cfg.host(), self.cfg.export(), name, Op::Remove)
                .await
                .map_err(|e| self.failed(e.to_string()))
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Against a real NFS server: nfs-ganesha (VFS backend) with rpcbind, in a network
    //! namespace of this test's own (unshared by one thread, which starts the servers and
    //! runs the client, so all of them share it and nothing leaves it).

    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    fn ganesha_conf(dir: &Path, export: &Path) -> String {
        format!(
            "NFS_CORE_PARAM {{ Protocols = 3, 4; NFS_Port = 2049; MNT_Port = 20048; \
             Mount_Path_Pseudo = true; Enable_NLM = false; Enable_RQUOTA = false; \
             Enable_UDP = false; Plugins_Dir = \"/usr/lib/x86_64-linux-gnu/ganesha\"; }}\n\
             NFS_KRB5 {{ Active_krb5 = false; }}\n\
             NFSv4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = \"{}\"; }}\n\
             EXPORT {{ Export_Id = 1; Path = \"{}\"; Pseudo = \"/cloud\"; Access_Type = RW; \
             Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP; \
             FSAL {{ Name = VFS; }} }}\n",
            dir.join("recovery").display(),
            export.display()
        )
    }

    struct Servers(Vec<Child>);

    impl Drop for Servers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
            // rpcbind's socket and lock are host-wide, whatever the namespace.
            let _ = std::fs::remove_file("/run/rpcbind.sock");
            let _ = std::fs::remove_file("/run/rpcbind.lock");
        }
    }

    /// rpcbind's socket and lock are host-wide: one server of these tests at a time.
    static SERVERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs `body` on a thread in a new network namespace holding a ganesha server that
    /// exports a temporary folder as `127.0.0.1:/cloud`.
    fn with_share(body: impl FnOnce(&Path, &tokio::runtime::Runtime) + Send + 'static) {
        with_share_holding(|_| {}, body)
    }

    /// As `with_share`, the folder filled by `prepare` before the server starts (so its
    /// caches cannot miss what was put there behind its back).
    fn with_share_holding(
        prepare: impl FnOnce(&Path) + Send + 'static,
        body: impl FnOnce(&Path, &tokio::runtime::Runtime) + Send + 'static,
    ) {
        let _one_at_a_time = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        in_new_netns(move |rt| {
            let dir = tempfile::tempdir().unwrap();
            let export = dir.path().join("cloud");
            std::fs::create_dir_all(&export).unwrap();
            prepare(&export);
            std::fs::create_dir_all(dir.path().join("recovery")).unwrap();
            let conf = dir.path().join("ganesha.conf");
            std::fs::write(&conf, ganesha_conf(dir.path(), &export)).unwrap();
            let mut servers = Servers(Vec::new());
            servers.0.push(
                Command::new("rpcbind")
                    .arg("-f")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("rpcbind (apt-get install rpcbind)"),
            );
            std::thread::sleep(Duration::from_millis(300));
            servers.0.push(
                Command::new("ganesha.nfsd")
                    .arg("-F")
                    .arg("-f")
                    .arg(&conf)
                    .arg("-L")
                    .arg(dir.path().join("ganesha.log"))
                    .arg("-p")
                    .arg(dir.path().join("ganesha.pid"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("ganesha.nfsd (apt-get install nfs-ganesha nfs-ganesha-vfs)"),
            );
            let started = Instant::now();
            loop {
                let probe = rpc::name_op("127.0.0.1", "/cloud", "probe", Op::Lookup);
                let r = rt
                    .block_on(async { tokio::time::timeout(Duration::from_secs(2), probe).await });
                let r = r
                    .map_err(|_| "no answer")
                    .map(|r| r.map_err(|e| e.to_string()));
                match r {
                    Ok(Ok(false)) => break,
                    r if started.elapsed() > Duration::from_secs(30) => {
                        let log = std::fs::read_to_string(dir.path().join("ganesha.log"))
                            .unwrap_or_default();
                        panic!("ganesha did not answer: {r:?}\n{log}");
                    }
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
            body(&export, rt);
            drop(servers);
        });
    }

    /// Runs `body` on a thread of its own in a new network namespace (only loopback, up),
    /// with a runtime of that thread: what it connects to and starts stays in there.
    fn in_new_netns(body: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: unshare changes only this thread's network namespace; no memory.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let ok = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(ok.success());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            body(&rt);
        })
        .join()
        .expect("the test thread");
    }

    fn share(timeout: Duration) -> NfsShare {
        NfsShare::new(&StorageConfig::parse_nfs("127.0.0.1:/cloud", timeout).unwrap())
    }

    #[test]
    fn disks_and_seeds_are_made_and_removed_on_a_real_nfs_server() {
        with_share(|export, rt| {
            let s = share(Duration::from_secs(30));
            // A base image, put there as a user would (a qcow2 file, copied whole).
            let local = tempfile::tempdir().unwrap();
            let base = local.path().join("base.qcow2");
            let ok = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&base)
                .arg("1G")
                .status()
                .unwrap();
            assert!(ok.success());
            let bytes = std::fs::read(&base).unwrap();
            rt.block_on(s.upload("base.qcow2", bytes)).unwrap();
            assert!(rt.block_on(s.exists("base.qcow2")).unwrap());
            rt.block_on(s.probe(Duration::from_secs(5))).unwrap();
            assert!(!rt.block_on(s.exists("nothing.qcow2")).unwrap());

            rt.block_on(s.create_overlay("vm1.disk.qcow2", "base.qcow2", 2))
                .unwrap();
            let info = Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(export.join("vm1.disk.qcow2"))
                .output()
                .unwrap();
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(info["format"], "qcow2");
            assert_eq!(info["virtual-size"], 2u64 << 30);
            assert_eq!(info["backing-filename"], "nfs://127.0.0.1/cloud/base.qcow2");

            // Nothing is made over a file already there, and the file stays as it was.
            let before = std::fs::read(export.join("vm1.disk.qcow2")).unwrap();
            let e = rt
                .block_on(s.create_overlay("vm1.disk.qcow2", "base.qcow2", 5))
                .unwrap_err();
            assert!(matches!(e, StorageError::Exists { .. }), "{e}");
            assert_eq!(
                std::fs::read(export.join("vm1.disk.qcow2")).unwrap(),
                before
            );
            // A missing base image makes nothing.
            let e = rt
                .block_on(s.create_overlay("vm2.disk.qcow2", "nothing.qcow2", 1))
                .unwrap_err();
            assert!(e.to_string().contains("qemu-img create"), "{e}");

            let seed: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            rt.block_on(s.upload("vm1.seed.iso", seed.clone())).unwrap();
            assert_eq!(std::fs::read(export.join("vm1.seed.iso")).unwrap(), seed);
            assert!(rt.block_on(s.upload("vm1.seed.iso", vec![1; 512])).is_err());

            assert_eq!(
                s.location("vm1.disk.qcow2"),
                ShareLocation {
                    protocol: "nfs",
                    host: "127.0.0.1".into(),
                    path: "/cloud/vm1.disk.qcow2".into(),
                }
            );
            for f in ["vm1.disk.qcow2", "vm1.seed.iso"] {
                assert!(rt.block_on(s.delete(f)).unwrap(), "{f}");
                assert!(!export.join(f).exists(), "{f}");
                assert!(!rt.block_on(s.delete(f)).unwrap(), "{f} again");
            }
            assert!(export.join("base.qcow2").exists());
            assert!(matches!(
                rt.block_on(s.delete("../base.qcow2")),
                Err(StorageError::BadName(_))
            ));
        });
    }

    #[test]
    fn the_top_folder_is_listed_with_sizes_on_a_real_nfs_server() {
        use std::os::unix::ffi::OsStrExt;
        // Enough files, with long names, for many pages of READDIRPLUS.
        let image = |i: usize| format!("image-{i:04}-{}.qcow2", "x".repeat(40));
        let prepare = move |export: &Path| {
            for i in 0..1500 {
                std::fs::write(export.join(image(i)), vec![7u8; i]).unwrap();
            }
            // None of these is a file a spec could name.
            std::fs::write(export.join(".hidden.qcow2"), b"h").unwrap();
            std::fs::write(export.join("-rf"), b"r").unwrap();
            std::fs::write(
                export.join(std::ffi::OsStr::from_bytes(b"bad\xff.qcow2")),
                b"b",
            )
            .unwrap();
            std::fs::create_dir(export.join("sub.qcow2")).unwrap();
            std::fs::write(export.join("sub.qcow2/inner.qcow2"), b"i").unwrap();
            std::os::unix::fs::symlink(image(1), export.join("link.qcow2")).unwrap();
            let big = std::fs::File::create(export.join("big.qcow2")).unwrap();
            big.set_len(5 << 30).unwrap(); // sparse: its length, not what it uses
        };
        with_share_holding(prepare, move |_export, rt| {
            let s = share(Duration::from_secs(30));
            let files = rt.block_on(s.list()).unwrap();
            assert_eq!(files.len(), 1501, "{:?}", &files[..3]);
            assert_eq!(
                files[0],
                ShareFile {
                    name: "big.qcow2".into(),
                    size_bytes: 5 << 30
                }
            );
            for (i, f) in files[1..].iter().enumerate() {
                assert_eq!(
                    (f.name.as_str(), f.size_bytes),
                    (image(i).as_str(), i as u64)
                );
            }
            // What kvmfs writes there shows at the next listing, and goes with it.
            rt.block_on(s.upload("a.seed.iso", vec![1; 4096])).unwrap();
            let files = rt.block_on(s.list()).unwrap();
            assert_eq!(files.len(), 1502);
            assert_eq!(
                files[0],
                ShareFile {
                    name: "a.seed.iso".into(),
                    size_bytes: 4096
                }
            );
            assert!(rt.block_on(s.delete("a.seed.iso")).unwrap());
            assert_eq!(rt.block_on(s.list()).unwrap().len(), 1501);
            // The raw listing has every entry, `.` and `..` too, with its type.
            let raw = rt.block_on(rpc::list("127.0.0.1", "/cloud")).unwrap();
            assert_eq!(
                raw.len(),
                1501 + 7,
                "{:?}",
                raw.iter().map(|e| &e.name).collect::<Vec<_>>()
            );
            let sub = raw.iter().find(|e| e.name == "sub.qcow2").unwrap();
            assert_eq!(sub.attr.map(|a| a.kind), Some(2), "a folder (NF3DIR)");
        });
    }

    #[test]
    fn a_silent_server_is_an_error_within_the_timeout() {
        in_new_netns(|rt| {
            // Something on the portmapper's port that never answers.
            let listener = std::net::TcpListener::bind("127.0.0.3:111").unwrap();
            let silent = NfsShare::new(
                &StorageConfig::parse_nfs("127.0.0.3:/cloud", Duration::from_millis(500)).unwrap(),
            );
            let started = Instant::now();
            for r in [
                rt.block_on(silent.exists("a")).map(|_| ()),
                rt.block_on(silent.delete("a")).map(|_| ()),
                rt.block_on(silent.create_overlay("a", "b", 1)),
                rt.block_on(silent.upload("a", vec![0; 512])),
                rt.block_on(silent.probe(Duration::from_millis(500))),
                rt.block_on(silent.list()).map(|_| ()),
            ] {
                assert!(matches!(r, Err(StorageError::Timeout { .. })), "{r:?}");
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            drop(listener);
            // Nothing listening at all: refused at once, a plain failure.
            let gone = NfsShare::new(
                &StorageConfig::parse_nfs("127.0.0.4:/cloud", Duration::from_secs(5)).unwrap(),
            );
            let e = rt.block_on(gone.exists("a")).unwrap_err();
            assert!(e.to_string().contains("portmapper"), "{e}");
        });
    }
}

//! Test harness: real parts only. A throwaway MariaDB server per test (temp dir, private
//! port), simulated KVM nodes on libvirt's test driver written to temp files, and kvmfs
//! itself mounted through the kernel and used with `std::fs`.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod galera;
pub mod lan;
pub mod libvirtd;
pub mod nodes;
pub mod rig;
pub mod tmux;
pub mod users;

pub use kvmfs::testnode::SimNode;

pub const KVMFS: &str = env!("CARGO_BIN_EXE_kvmfs");

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Makes a spawned server die with the test thread that started it, even if the test
/// panics before its guard is dropped.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs `f` on another thread and fails the test if it does not finish in `limit`: a hang
/// detector for "never blocks" properties, not a performance assertion.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}: it hangs"),
    }
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn read_json(p: impl AsRef<Path>) -> serde_json::Value {
    let p = p.as_ref();
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

pub fn list(p: impl AsRef<Path>) -> Vec<String> {
    let p = p.as_ref();
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A throwaway MariaDB server.
pub struct MariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// Server options beyond the defaults (binary log, server id, read-only…), kept for
    /// restarts.
    args: Vec<String>,
}

/// The password of the replication user the primary of a `MariaDb::pair` creates.
const REPL_PASSWORD: &str = "kvmfs-repl-pw";

impl MariaDb {
    /// Starts a server with a `kvmfs` database and a `kvmfs` user.
    pub fn start() -> MariaDb {
        let db = Self::install(vec!["--skip-log-bin".into()]);
        db.create_kvmfs();
        db
    }

    /// A primary and a replica that applies the primary's binary log (real replication,
    /// semi-synchronous: the primary acknowledges a commit only once the replica has
    /// received it, so a crash of the primary loses no acknowledged write). The `kvmfs`
    /// database and user are made on the primary and reach the replica through the log.
    /// The replica is read-only, as replicas are, unless `writable_replica`.
    pub fn pair(writable_replica: bool) -> (MariaDb, MariaDb) {
        let primary = Self::install(vec![
            "--server-id=1".into(),
            "--log-bin=binlog".into(),
            "--binlog-format=ROW".into(),
        ]);
        primary.sql(&format!(
            "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}'; \
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';"
        ));
        primary.create_kvmfs();
        primary.sql(
            "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'; \
             SET GLOBAL rpl_semi_sync_master_timeout = 30000; \
             SET GLOBAL rpl_semi_sync_master_enabled = ON;",
        );
        let replica = Self::install(vec![
            "--server-id=2".into(),
            "--skip-log-bin".into(),
            format!(
                "--read-only={}",
                if writable_replica { "OFF" } else { "ON" }
            ),
            "--rpl-semi-sync-slave-enabled=ON".into(),
            "--skip-slave-start".into(),
        ]);
        let first_log = primary.sql("SHOW BINARY LOGS");
        let first_log = first_log
            .lines()
            .next()
            .and_then(|l| l.split('\t').next())
            .expect("the primary has a binary log")
            .to_string();
        replica.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
             MASTER_USER = 'repl', MASTER_PASSWORD = '{REPL_PASSWORD}', \
             MASTER_LOG_FILE = '{first_log}', MASTER_LOG_POS = 4, MASTER_CONNECT_RETRY = 1; \
             START SLAVE;",
            primary.port
        ));
        wait_for(
            Duration::from_secs(30),
            "the replica to apply the primary's log",
            || {
                replica
                    .sql_try("SELECT COUNT(*) FROM mysql.user WHERE user = 'kvmfs'")
                    .is_ok_and(|n| n.trim() == "1")
                    && primary
                        .sql_try("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
                        .is_ok_and(|s| s.trim().ends_with("\t1"))
            },
        );
        (primary, replica)
    }

    /// Installs a data directory and starts a server on it with `args`.
    fn install(args: Vec<String>) -> MariaDb {
        let db = Self::install_as("root", args);
        wait_for(
            Duration::from_secs(30),
            "mariadbd to accept connections",
            || db.sql_try("SELECT 1").is_ok(),
        );
        db
    }

    /// Installs a data directory owned by `user` and starts a server on it with `args`
    /// (which name `--user` unless it is root), without waiting for it.
    fn install_as(user: &str, args: Vec<String>) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-mariadb")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        // A private tmpdir: parallel bootstraps in a shared /tmp clash on temp tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmpdir");
        let chown = |what: &str| {
            if user == "root" {
                return;
            }
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let ok = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:{user}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown {what}");
        };
        chown("the new server's folder");
        let out = Command::new("mariadb-install-db")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect(
                "mariadb-install-db (install the mariadb-server package: scripts/install-deps.sh)",
            );
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        chown("the new server's data");
        let port = free_port();
        let child = spawn_mariadbd(dir.path(), port, &args);
        MariaDb {
            dir,
            port,
            child,
            args,
        }
    }

    /// Starts a server that also listens on `addr`, whose `kvmfs` user may also connect
    /// from the hosts `pattern` matches (e.g. `10.79.3.%`).
    pub fn start_listening_on(addr: &str, pattern: &str) -> MariaDb {
        let db = Self::install(vec![
            "--skip-log-bin".into(),
            format!("--bind-address=127.0.0.1,{addr}"),
        ]);
        db.create_kvmfs();
        db.sql(&format!(
            "CREATE USER 'kvmfs'@'{pattern}' IDENTIFIED BY 'kvmfs-test-pw'; \
             GRANT ALL ON kvmfs.* TO 'kvmfs'@'{pattern}';"
        ));
        db
    }

    /// `url` with the server reached at `addr`.
    pub fn url_at(&self, addr: &str) -> String {
        format!("mysql://kvmfs:kvmfs-test-pw@{addr}:{}/kvmfs", self.port)
    }

    fn create_kvmfs(&self) {
        self.sql(
            "CREATE DATABASE kvmfs; \
             CREATE USER 'kvmfs'@'127.0.0.1' IDENTIFIED BY 'kvmfs-test-pw'; \
             GRANT ALL ON kvmfs.* TO 'kvmfs'@'127.0.0.1';",
        );
    }

    /// Promotes a replica as an operator would once its primary is dead: replication
    /// stopped and forgotten, writes allowed.
    pub fn promote(&self) {
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;");
    }

    pub fn url(&self) -> String {
        format!("mysql://kvmfs:kvmfs-test-pw@127.0.0.1:{}/kvmfs", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    /// A `mariadb` session as root that stays open: statements sent with `HeldSession::run`
    /// run in it, in order, so a lock it takes lasts until it is released or the session
    /// ends (when dropped).
    pub fn session(&self) -> HeldSession {
        let mut child = Command::new("mariadb")
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-N", "-B", "--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadb client");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        HeldSession {
            child,
            stdout,
            marks: 0,
        }
    }

    /// Kills the server (a crash: connections are cut at once).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_mariadbd(self.dir.path(), self.port, &self.args);
        wait_for(
            Duration::from_secs(30),
            "mariadbd to accept connections again",
            || self.sql_try("SELECT 1").is_ok(),
        );
    }

    pub fn sql_try(&self, sql: &str) -> Result<String, String> {
        let mut child = Command::new("mariadb")
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .arg("-N")
            .arg("-B")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as root (statements on stdin, never on a command line) and returns the rows
    /// tab-separated.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_try(sql)
            .unwrap_or_else(|e| panic!("sql {sql:?}: {e}"))
    }
}

/// See `MariaDb::session`.
pub struct HeldSession {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    marks: u32,
}

impl HeldSession {
    /// Runs `sql` in the session and waits until it has run.
    pub fn run(&mut self, sql: &str) {
        use std::io::BufRead;
        self.marks += 1;
        let mark = format!("kvmfs-test-mark-{}", self.marks);
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql};\nSELECT '{mark}';").expect("send sql");
        stdin.flush().expect("flush");
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("read");
            assert!(n > 0, "the mariadb session ended running {sql:?}");
            if line.trim() == mark {
                return;
            }
        }
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mariadbd` on the data under `dir`, listening on loopback `port`, with `args`.
fn spawn_mariadbd(dir: &Path, port: u16, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log");
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults");
    // mariadbd keeps the first --user it is given.
    if !args.iter().any(|a| a.starts_with("--user=")) {
        cmd.arg("--user=root");
    }
    cmd.arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg("--innodb-buffer-pool-size=32M")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log);
    die_with_parent(&mut cmd);
    cmd.spawn().expect("start mariadbd")
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The key file every test mount shares (made once per machine, 0600): mounts on one
/// database must hold the key its private keys are sealed with.
pub fn shared_key_file() -> PathBuf {
    let path = std::env::temp_dir().join("kvmfs-tests-secret.key");
    if !path.exists() {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .expect("random key");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // Written aside and renamed, so a test running beside never reads half a key.
        let tmp =
            std::env::temp_dir().join(format!("kvmfs-tests-secret.key.{}", std::process::id()));
        std::fs::write(&tmp, format!("{hex}\n")).expect("write key");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        // Another test may have made it meanwhile: either key is fine, one wins.
        let _ = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
    }
    path
}

/// A kvmfs daemon mounted on a temp dir, running in the foreground as our child.
pub struct Mounted {
    pub mnt: tempfile::TempDir,
    pub state: tempfile::TempDir,
    child: Option<Child>,
    /// More `kvmfs mount` arguments, given again at every restart.
    args: Vec<String>,
    /// The network namespace the daemon runs in, if not this one.
    netns: Option<String>,
    /// How long the daemon may take to mount.
    wait: Duration,
}

impl Mounted {
    /// The embedded demo.
    pub fn demo() -> Mounted {
        Self::start(None)
    }

    /// The embedded demo, with more `kvmfs mount` arguments.
    pub fn demo_with_args(args: &[&str]) -> Mounted {
        Self::start_with(None, args, &[], None)
    }

    /// Mounts with a config file holding `toml`.
    pub fn with_config(toml: &str) -> Mounted {
        Self::start(Some(toml))
    }

    /// Mounts with a config file holding `toml` and extra environment for the daemon.
    pub fn with_config_env(toml: &str, env: &[(&str, &str)]) -> Mounted {
        Self::start_with(Some(toml), &[], env, None)
    }

    /// Mounts with a config file holding `toml` and more `kvmfs mount` arguments.
    pub fn with_config_args(toml: &str, args: &[&str]) -> Mounted {
        Self::start_with(Some(toml), args, &[], None)
    }

    /// Mounts with a config file holding `toml`, the daemon running in network namespace
    /// `netns` (`/run/netns/NAME`). Only the network namespace is entered (`nsenter --net`,
    /// which then execs kvmfs): `ip netns exec` would also give the daemon a mount namespace
    /// of its own, and its FUSE mount would be invisible here.
    pub fn with_config_in_netns(toml: &str, netns: &str) -> Mounted {
        Self::start_with(Some(toml), &[], &[], Some(netns))
    }

    /// As `with_config_in_netns`, with more environment for the daemon.
    pub fn with_config_env_in_netns(toml: &str, env: &[(&str, &str)], netns: &str) -> Mounted {
        Self::start_with(Some(toml), &[], env, Some(netns))
    }

    fn start(toml: Option<&str>) -> Mounted {
        Self::start_with(toml, &[], &[], None)
    }

    /// For the benchmark: the daemon logs only warnings, and may take minutes to mount
    /// (its first poll of 10,000 domains on the test driver, on a loaded machine).
    pub fn for_bench(toml: &str) -> Mounted {
        let mut m = Self::prepare(Some(toml), &[], None, Duration::from_secs(300));
        m.spawn(&[("KVMFS_LOG", "warn")]);
        m
    }

    /// The URL of the SQLite database in the state dir (a config without `[database]`).
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/kvmfs.db", self.state.path().display())
    }

    fn start_with(
        toml: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
    ) -> Mounted {
        let mut m = Self::prepare(toml, args, netns, Duration::from_secs(30));
        m.spawn(env);
        m
    }

    /// The mountpoint, state dir and configuration, with no daemon yet.
    fn prepare(toml: Option<&str>, args: &[&str], netns: Option<&str>, wait: Duration) -> Mounted {
        let mnt = tempfile::Builder::new()
            .prefix("kvmfs-mnt")
            .tempdir()
            .expect("tempdir");
        let state = tempfile::Builder::new()
            .prefix("kvmfs-state")
            .tempdir()
            .expect("tempdir");
        if let Some(t) = toml {
            let cfg = state.path().join("kvmfs.toml");
            // Every mount of the tests shares one key for the private keys, as the control
            // nodes of one site do, unless the test names its own.
            let t = if t.contains("[secrets]") {
                t.to_string()
            } else {
                format!(
                    "{t}\n[secrets]\nkey_file = '{}'\n",
                    shared_key_file().display()
                )
            };
            std::fs::write(&cfg, t).expect("write config");
            // It may hold a database password: only its owner may read it.
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600))
                .expect("chmod config");
        }
        Mounted {
            mnt,
            state,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: netns.map(str::to_string),
            wait,
        }
    }

    /// Starts the daemon on this mountpoint, state dir and config, and waits for the mount.
    fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut cmd = match &self.netns {
            None => Command::new(KVMFS),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(KVMFS);
                c
            }
        };
        cmd.arg("mount")
            .arg(self.mnt.path())
            .arg("--foreground")
            .arg("--state-dir")
            .arg(self.state.path());
        let cfg = self.state.path().join("kvmfs.toml");
        if cfg.exists() {
            cmd.arg("--config").arg(&cfg);
        }
        cmd.args(&self.args);
        cmd.envs(env.iter().copied());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("daemon.log"))
            .expect("log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn kvmfs"));
        let start = Instant::now();
        loop {
            if is_kvmfs_mount(self.mnt.path()) {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("kvmfs exited ({status}) before mounting:\n{}", self.log());
            }
            if start.elapsed() > self.wait {
                panic!(
                    "kvmfs did not mount within {:?}:\n{}",
                    self.wait,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to die on its own (a crash point) and returns how it ended.
    pub fn wait_died(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        wait_exit(&mut child, limit)
    }

    /// Waits for the daemon to die of crash point `point`'s SIGKILL (see `failpoint`), and
    /// fails if it ended otherwise.
    pub fn wait_killed_at(&mut self, point: &str) {
        let st = self.wait_died(Duration::from_secs(30));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "the daemon did not stop at {point}: {st}\n{}",
            self.log()
        );
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the daemon with SIGKILL and waits at most `limit` for the process to be gone:
    /// a thread stuck in the kernel would keep it (and its FUSE connection) alive.
    pub fn kill9_within(&mut self, limit: Duration) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if start.elapsed() > limit {
                let stuck = std::fs::read_dir(format!("/proc/{}/task", child.id()))
                    .map(|d| {
                        d.filter_map(|t| t.ok())
                            .map(|t| {
                                let stack = std::fs::read_to_string(t.path().join("stack"))
                                    .unwrap_or_default();
                                format!("{}:\n{stack}", t.file_name().to_string_lossy())
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                panic!("the killed daemon is still there after {limit:?}:\n{stuck}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again after it died, on the same mountpoint and state (the stale
    /// mount it left is cleared by the daemon itself).
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn(env);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.state.path().join("daemon.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("daemon running")
    }

    /// Unmounts from outside and returns the daemon's exit status.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(self.mnt.path())
            .status()
            .expect("fusermount3");
        assert!(st.success(), "fusermount3 -u failed");
        let mut child = self.child.take().expect("daemon running");
        wait_exit(&mut child, Duration::from_secs(10))
    }
}

/// Waits for a child to exit, killing it if it does not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("kvmfs did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("the daemon's log ends with:");
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
        }
        // Also when the daemon is gone: a killed daemon leaves a dead mount behind.
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(self.mnt.path())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `path` is a kvmfs mount answering `stat`.
pub fn is_kvmfs_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&want.as_ref())
            && (l.contains(" - fuse kvmfs ") || l.contains(" - fuse.kvmfs kvmfs "))
    }) && answers_statfs(path)
}

/// Whether a FUSE filesystem at `path` answers `statfs`, which (unlike `stat`, served from
/// the kernel's attribute cache) always reaches the daemon: a mount whose daemon died answers
/// `ENOTCONN`. The answer must come from FUSE: a crashed daemon's mount, listed in
/// `mountinfo` a moment ago, may have been cleared by the new daemon since, and the bare
/// folder under it answers `statfs` too.
pub fn answers_statfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path and `buf` a writable statfs struct.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type == FUSE_SUPER_MAGIC
    }
}

/// A TCP socket that accepts connections and never says a word: a node whose libvirt
/// endpoint is wedged.
pub struct SilentServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s2.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((sock, _)) = l.accept() {
                    held.push(sock);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SilentServer { port, stop }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Writes a simulated node into `dir` and returns its URI.
pub fn sim_node(dir: &Path, name: &str, node: &SimNode) -> String {
    node.write(&dir.join(format!("{name}.xml")))
        .expect("write node xml")
}

/// The errno of an I/O error, for assertions.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A git repository with an `index.html`, served as `file://`.
pub fn git_repo(dir: &Path, body: &str) -> String {
    let repo = dir.join("site");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("index.html"), body).unwrap();
    for args in [
        vec!["init", "-q"],
        vec!["add", "index.html"],
        vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "site",
        ],
    ] {
        let st = Command::new("git")
            .args(&args)
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }
    format!("file://{}", repo.display())
}

/// Writes `spec` to an instance's `spec.json` the way a program would.
/// Runs `cmd` (stdin empty) and fails the test unless it succeeds; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_spec(m: &Mounted, name: &str, spec: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path(&format!("instances/{name}/spec.json")))?;
    f.write_all(spec.as_bytes())?;
    drop(f);
    Ok(())
}

/// Waits (at most 20 s) for an instance's status to start with `prefix`.
pub fn wait_status(m: &Mounted, name: &str, prefix: &str) -> String {
    let p = m.path(&format!("instances/{name}/status"));
    let start = std::time::Instant::now();
    loop {
        let last = std::fs::read_to_string(&p).unwrap_or_default();
        if last.starts_with(prefix) {
            return last;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let err = std::fs::read_to_string(m.path(&format!("instances/{name}/error")));
            panic!(
                "{name} is {last:?}, not {prefix} (error: {err:?})\n{}",
                m.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 20 s) until every node in `nodes` reads `online`: a first poll can miss its
/// deadline on a loaded machine, and an operation refused for an offline node proves nothing.
pub fn wait_online(m: &Mounted, nodes: &[&str]) {
    wait_for(Duration::from_secs(20), "every node to read online", || {
        nodes
            .iter()
            .all(|n| read(m.path(&format!("nodes/{n}/status"))) == "online\n")
    });
}

//! A real `libvirtd` serving libvirt's test driver over its unix socket: a simulated KVM
//! node whose state lives in another process, so it outlives a kvmfs that is killed, and
//! whose daemon a test can kill, freeze (SIGSTOP) and thaw like a real node's.
//!
//! Each daemon runs in a private mount namespace with private tmpfs over libvirt's run
//! and state folders (and a cache shared between them), so several run side by side; only its sockets, config and log
//! live in a temp dir visible to the test. Its URI is
//! `test+unix:///default?socket=DIR/libvirt-sock`. The test driver's `default` state is
//! shared by every connection to the daemon and dropped when the last one closes, so the
//! fixture keeps a `virsh` session open for the daemon's whole life.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{die_with_parent, wait_for};

/// The folders libvirtd writes outside its config; each daemon gets private ones.
const PRIVATE_DIRS: &[&str] = &["/run/libvirt", "/var/lib/libvirt"];
/// Shared by every test daemon, over `/var/cache/libvirt`: the QEMU driver spends about
/// 15 s probing the emulators' capabilities into it, once per machine rather than once per
/// daemon.
const SHARED_CACHE: &str = "/var/tmp/kvmfs-tests-libvirt-cache";

pub struct Libvirtd {
    pub dir: tempfile::TempDir,
    child: Child,
    keeper: Option<Child>,
}

/// libvirtd's QEMU driver refuses to load without its user and groups, and the daemon then
/// refuses to start at all; a clean machine has neither until the first libvirtd runs.
fn ensure_libvirt_users() {
    let has = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for g in ["kvm", "libvirt-qemu"] {
        if !has("group", g) {
            let _ = Command::new("groupadd").args(["-r", g]).status();
        }
    }
    if !has("passwd", "libvirt-qemu") {
        let _ = Command::new("useradd")
            .args([
                "-r",
                "-g",
                "libvirt-qemu",
                "-G",
                "kvm",
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ])
            .status();
    }
}

impl Libvirtd {
    /// Starts a daemon and prepares its node: the test driver's running `test` domain is
    /// destroyed (it would hold more RAM than the node has) and `image` is created in
    /// `default-pool`.
    pub fn start(image: &str) -> Libvirtd {
        ensure_libvirt_users();
        for d in PRIVATE_DIRS
            .iter()
            .chain(&["/var/cache/libvirt", "/etc/libvirt", SHARED_CACHE])
        {
            std::fs::create_dir_all(d).expect("libvirt folder");
        }
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-libvirtd")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{d}\"\nunix_sock_rw_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{d}/libvirtd.log\"\n",
                d = dir.path().display()
            ),
        )
        .expect("write libvirtd.conf");
        // QEMU as root: the capabilities probed (as root) then stay valid for the QEMU
        // user, so the shared cache is used instead of probed again at every start (on
        // hosts whose /dev/kvm the `libvirt-qemu` user cannot open). QEMU's output goes to
        // a file: the daemon runs no virtlogd, and a guest started on its QEMU driver
        // (tests/snapshots.rs) would otherwise fail to start.
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\nstdio_handler = \"file\"\n",
        )
        .expect("write qemu.conf");
        let child = spawn(dir.path());
        let mut d = Libvirtd {
            dir,
            child,
            keeper: None,
        };
        d.wait_ready(image);
        d
    }

    pub fn uri(&self) -> String {
        format!(
            "test+unix:///default?socket={}",
            self.dir.path().join("libvirt-sock").display()
        )
    }

    /// Waits for the daemon, opens the keeper session and prepares the node (see `start`).
    fn wait_ready(&mut self, image: &str) {
        let sock = self.dir.path().join("libvirt-sock");
        wait_for(Duration::from_secs(30), "libvirtd to listen", || {
            sock.exists()
                && Command::new("virsh")
                    .args(["-c", &self.uri(), "version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        let mut keeper = Command::new("virsh");
        keeper
            .args(["-c", &self.uri()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut keeper);
        self.keeper = Some(keeper.spawn().expect("virsh session"));
        // The session must hold its connection before anything is changed.
        std::thread::sleep(Duration::from_millis(300));
        self.virsh(&["destroy", "test"]);
        self.virsh(&[
            "vol-create-as",
            "default-pool",
            image,
            "1G",
            "--format",
            "qcow2",
        ]);
    }

    /// Runs `virsh` against the daemon; panics if it fails.
    pub fn virsh(&self, args: &[&str]) -> String {
        self.virsh_try(args)
            .unwrap_or_else(|e| panic!("virsh {args:?}: {e}"))
    }

    pub fn virsh_try(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Names of every domain on the node.
    pub fn domains(&self) -> Vec<String> {
        lines(&self.virsh(&["list", "--all", "--name"]))
    }

    /// The snapshots libvirt has of domain `name`, sorted.
    pub fn snapshots(&self, name: &str) -> Vec<String> {
        let mut v = lines(&self.virsh(&["snapshot-list", name, "--name"]));
        v.sort();
        v
    }

    /// Names of every volume in `default-pool`.
    pub fn volumes(&self) -> Vec<String> {
        self.virsh(&["pool-refresh", "default-pool"]);
        lines(&self.virsh(&["vol-list", "default-pool"]))
            .into_iter()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Freezes the daemon: calls to it hang, as to a wedged node.
    pub fn freeze(&self) {
        signal(self.child.id(), libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        signal(self.child.id(), libc::SIGCONT);
    }

    /// Kills the daemon (the node goes down and its test-driver state with it).
    pub fn kill(&mut self) {
        signal(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut k) = self.keeper.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
    }

    /// Starts the daemon again on the same socket (with a fresh test-driver state).
    pub fn restart(&mut self, image: &str) {
        self.kill();
        for f in ["libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock"] {
            let _ = std::fs::remove_file(self.dir.path().join(f));
        }
        self.child = spawn(self.dir.path());
        self.wait_ready(image);
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("libvirtd.log")
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn spawn(dir: &Path) -> Child {
    let mounts: String = PRIVATE_DIRS
        .iter()
        .map(|d| format!("mount -t tmpfs tmpfs {d} && "))
        .collect();
    let script = format!(
        "{mounts}mount --bind {SHARED_CACHE} /var/cache/libvirt && \
         mount --bind {d}/etc /etc/libvirt && \
         exec libvirtd --config {d}/libvirtd.conf --pid-file {d}/libvirtd.pid",
        d = dir.display()
    );
    let log = std::fs::File::create(dir.join("stderr.log")).expect("log");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .expect("start libvirtd (apt-get install libvirt-daemon)")
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.kill();
    }
}

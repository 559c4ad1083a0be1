//! `virsh list --all` against the same nodes and against a private libvirtd.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Mounted;
use crate::*;

pub struct Virsh {
    pub per_node: Option<Duration>,
    pub three_nodes: Option<Duration>,
    pub libvirtd: Result<Duration, String>,
    pub kvmfs_walk: Duration,
}

pub fn virsh(opts: &Opts) -> Virsh {
    let lab = Lab::new(3, 100);
    let m = Mounted::for_bench(&lab.config(""));
    let dir = m.path("instances");
    let runs = opts.runs();
    let uris = lab.uris.clone();
    let u0 = uris[0].clone();
    let mut one = || run_quiet(Command::new("virsh").args(["-c", &u0, "list", "--all"]));
    let mut three = || {
        for u in &uris {
            run_quiet(Command::new("virsh").args(["-c", u, "list", "--all"]));
        }
    };
    let mut w = || {
        walk(&dir);
    };
    let t = interleaved(runs, &mut [&mut one, &mut three, &mut w]);
    let libvirtd = daemon_list(runs);
    Virsh {
        per_node: Some(t[0]),
        three_nodes: Some(t[1]),
        libvirtd,
        kvmfs_walk: t[2],
    }
}

/// `virsh list --all` through a private libvirtd holding 300 domains, the way the original
/// reached its nodes (over a socket to a daemon). The daemon serves a test-driver node file
/// of 300 domains: the qemu driver would spend minutes here probing QEMU's capabilities
/// under TCG before it defines anything.
pub fn daemon_list(runs: usize) -> Result<Duration, String> {
    let d = PrivateLibvirtd::start()?;
    let mut node = SimNode::new(256, 1 << 20);
    node.domains = (0..300)
        .map(|i| kvmfs::testnode::SimDomain {
            name: format!("d{i:03}"),
            vcpus: 1,
            memory_mib: 512,
            running: i % 3 != 0,
        })
        .collect();
    let file = d.dir.path().join("node300.xml");
    node.write(&file).map_err(|e| e.to_string())?;
    let uri = format!(
        "test+unix://{}?socket={}",
        file.display(),
        d.dir.path().join("sock/libvirt-sock").display()
    );
    let listed = Command::new("virsh")
        .args(["-c", &uri, "list", "--all", "--name"])
        .output()
        .map_err(|e| e.to_string())?;
    let n = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    if n != 300 {
        return Err(format!(
            "the private libvirtd lists {n} domains, not 300: {}",
            String::from_utf8_lossy(&listed.stderr)
        ));
    }
    Ok(median(runs, || {
        run_quiet(Command::new("virsh").args(["-c", &uri, "list", "--all"]))
    }))
}

/// A libvirtd of our own: private mount and network namespaces, tmpfs over its state
/// folders, its socket in a temporary folder.
pub struct PrivateLibvirtd {
    pub dir: tempfile::TempDir,
    pub child: Child,
}

impl PrivateLibvirtd {
    pub fn start() -> Result<PrivateLibvirtd, String> {
        for (what, cmd) in [
            ("group kvm", "getent group kvm || groupadd -r kvm"),
            (
                "group libvirt-qemu",
                "getent group libvirt-qemu || groupadd -r libvirt-qemu",
            ),
            (
                "user libvirt-qemu",
                "id libvirt-qemu || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt \
                 -s /usr/sbin/nologin libvirt-qemu",
            ),
        ] {
            let ok = Command::new("sh")
                .args(["-c", cmd])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(format!("cannot create {what}"));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-bench-libvirtd")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).map_err(|e| e.to_string())?;
        let conf = dir.path().join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{}\"\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\n\
                 auth_unix_ro = \"none\"\n",
                sock.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let script = format!(
            "set -e; for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do \
             mkdir -p $d; mount -t tmpfs kvmfs-bench-libvirt $d; done; \
             exec libvirtd -f {} -p {}",
            conf.display(),
            dir.path().join("pid").display()
        );
        let child = Command::new("unshare")
            .args(["-m", "-n", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("libvirtd.log"))
                    .map_err(|e| e.to_string())?,
            )
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        let d = PrivateLibvirtd { dir, child };
        let uri = format!(
            "test+unix:///default?socket={}",
            d.dir.path().join("sock/libvirt-sock").display()
        );
        let t = Instant::now();
        loop {
            let ok = Command::new("virsh")
                .args(["-c", &uri, "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(d);
            }
            if t.elapsed() > Duration::from_secs(60) {
                let log =
                    std::fs::read_to_string(d.dir.path().join("libvirtd.log")).unwrap_or_default();
                return Err(format!("the private libvirtd did not answer: {log}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; libvirtd cleans up on SIGTERM.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

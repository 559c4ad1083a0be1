//! End to end on real parts: the lab of `scripts/lab.sh` (two libvirtd + QEMU nodes reached
//! over qemu+tcp, a storage node serving NFS from userspace, MariaDB, a git daemon, bridges,
//! all in network namespaces of its own) and
//! the guest image of `scripts/lab-image.sh` (Debian with real cloud-init, built once and
//! cached). kvmfs is mounted on the lab's configuration and driven with plain file calls;
//! the guests are checked from the outside: HTTP, SSH, QEMU processes, the share's and the
//! pools' folders, rows. The guests' disks and seeds are on the storage node, and QEMU opens
//! them over NFS itself, so a running guest moves live between the nodes
//! (`echo kvm2 > node`) while a client keeps requesting its page.
//!
//! The waits are hang detectors (guests boot under software emulation, slowly), never timing
//! assertions. With `KVMFS_E2E_TIMINGS=FILE` the measured times are written to FILE as JSON
//! (`scripts/bench-e2e.sh` does that for docs/BENCHMARKS.md). With `KVMFS_E2E_KEEP=1` a
//! failed run leaves the lab up for a look (`scripts/lab.sh down --prefix …` removes it).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Bounds on the slow parts (hang detectors).
const LAB_UP: Duration = Duration::from_secs(30 * 60);
const BOOT_TO_HTTP: Duration = Duration::from_secs(8 * 60);
const SSH_READY: Duration = Duration::from_secs(3 * 60);
const POWER_OFF: Duration = Duration::from_secs(5 * 60);
const SHORT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One lab per checkout: the prefix is a hash of the checkout's path, so two checkouts can
/// run this test at once, and a lab left by a killed run of this one is replaced by `up`.
fn lab_prefix() -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in repo().to_string_lossy().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("e2e{h:08x}")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lab, torn down when dropped (also when the test fails).
struct Lab {
    prefix: String,
    env: HashMap<String, String>,
}

impl Lab {
    fn up() -> Lab {
        let prefix = lab_prefix();
        let out = Command::new("timeout")
            .arg(LAB_UP.as_secs().to_string())
            .arg(repo().join("scripts/lab.sh"))
            .args(["up", "--prefix", &prefix])
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/lab.sh");
        // From here on, whatever happens, the lab is torn down.
        let mut lab = Lab {
            prefix: prefix.clone(),
            env: HashMap::new(),
        };
        assert!(
            out.status.success(),
            "scripts/lab.sh up failed:\n{}",
            text(&out)
        );
        let env_file = format!("/var/tmp/kvmfs-lab-{prefix}/lab.env");
        lab.env = read(&env_file)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        lab
    }

    fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("lab.env has no {k}"))
    }

    /// `k=v k=v` values of lab.env.
    fn map(&self, k: &str) -> HashMap<String, String> {
        self.var(k)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// A command run in the lab's control namespace (network only).
    fn ctl(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.var("LAB_CTL_NETNS")))
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// SQL as root on the lab's MariaDB, rows tab-separated.
    fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B", "kvmfs"])
            .arg(format!("--socket={}", self.var("LAB_DB_SOCKET")))
            .arg("-e")
            .arg(sql)
            .output()
            .expect("mariadb");
        assert!(out.status.success(), "sql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// PIDs of QEMU processes running guest `name` in the lab's node namespaces.
    fn qemu_pids(&self, name: &str) -> Vec<u32> {
        let needle = format!("guest={name},");
        let mut pids = Vec::new();
        for ns in self.var("LAB_NODE_NETNS").split_whitespace() {
            let out = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .expect("ip netns pids");
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains("qemu-system") && cmdline.contains(&needle) {
                    pids.push(pid.parse().expect("pid"));
                }
            }
        }
        pids
    }

    /// The files of node `node`'s storage pool.
    fn pool_files(&self, node: &str) -> Vec<String> {
        list(&self.map("LAB_POOLS")[node])
    }

    /// The files of the storage node's export.
    fn share_files(&self) -> Vec<String> {
        list(self.var("LAB_SHARE_DIR"))
    }

    /// `virsh` against node `node` over qemu+tcp, from the control namespace.
    fn virsh(&self, node: &str, args: &[&str]) -> String {
        let uri = &self.map("LAB_NODE_URIS")[node];
        let out = self
            .ctl("virsh")
            .args(["-q", "-c", uri])
            .args(args)
            .output()
            .expect("virsh");
        assert!(out.status.success(), "virsh {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// GET http://ip/ from the control namespace: (status, body), or None if nothing answered.
    fn http_get(&self, ip: &str) -> Option<(u16, String)> {
        let out = self
            .ctl("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://{ip}/"))
            .output()
            .expect("curl");
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// Runs `cmd` in the guest over SSH as `debian` with `key`.
    fn ssh(&self, key: &Path, ip: &str, cmd: &str) -> Result<String, String> {
        let out = self
            .ctl("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("debian@{ip}"))
            .arg(cmd)
            .output()
            .expect("ssh");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    /// Best effort, for failure messages: the guest's cloud-init output, read from its disk
    /// (qemu-img may read a disk in use with -U; debugfs reads ext4 without mounting).
    /// The disk is on the share, its backing file an `nfs://` URL that only the lab's
    /// namespaces reach: qemu-img runs in the control namespace.
    fn guest_log(&self, _node: &str, name: &str) -> String {
        let share = PathBuf::from(self.var("LAB_SHARE_DIR"));
        let raw = tempfile::NamedTempFile::new().expect("temp file");
        let conv = self
            .ctl("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(share.join(format!("{name}.disk.qcow2")))
            .arg(raw.path())
            .output();
        match conv {
            Ok(o) if o.status.success() => {}
            Ok(o) => return format!("(cannot read the disk: {})", text(&o)),
            Err(e) => return format!("(cannot run qemu-img: {e})"),
        }
        let out = Command::new("debugfs")
            .arg("-R")
            .arg("cat /var/log/cloud-init-output.log")
            .arg(raw.path())
            .output();
        match out {
            Ok(o) => {
                let s = String::from_utf8_lossy(&o.stdout).into_owned();
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            }
            Err(e) => format!("(cannot run debugfs: {e})"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("KVMFS_E2E_KEEP").is_some() {
            eprintln!(
                "KVMFS_E2E_KEEP: the lab stays up; remove it with: scripts/lab.sh down --prefix {}",
                self.prefix
            );
            return;
        }
        let out = Command::new(repo().join("scripts/lab.sh"))
            .args(["down", "--prefix", &self.prefix])
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!("scripts/lab.sh down failed:\n{}", text(&o));
        }
    }
}

/// Polls `f` every 0.2 s (the resolution of the recorded timings) until it gives a value or
/// `limit` passes; then panics with what `why` says about the state of things.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}\n{}", why());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A git repository with a unique `index.html`, served by the lab's git daemon.
fn site(lab: &Lab, name: &str, body: &str) -> String {
    let repo = Path::new(lab.var("LAB_GIT_DIR")).join(name);
    std::fs::create_dir_all(&repo).expect("repo folder");
    std::fs::write(repo.join("index.html"), body).expect("index.html");
    for args in [
        vec!["init", "-q"],
        vec!["add", "index.html"],
        vec![
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@kvmfs",
            "commit",
            "-qm",
            "site",
        ],
    ] {
        let out = Command::new("git")
            .args(&args)
            .current_dir(&repo)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }
    format!("{}/{name}", lab.var("LAB_GIT_URL"))
}

/// The node placement should choose: the best score, ties to the first name.
fn best_node(m: &Mounted) -> (String, HashMap<String, f64>) {
    let mut scores = HashMap::new();
    let mut best: Option<(String, f64)> = None;
    for n in list(m.path("nodes")) {
        let s = read_json(m.path(&format!("nodes/{n}/info.json")))["score"]
            .as_f64()
            .expect("score");
        scores.insert(n.clone(), s);
        if best.as_ref().is_none_or(|(_, b)| s > *b) {
            best = Some((n, s));
        }
    }
    (best.expect("nodes").0, scores)
}

/// Writes a whole file with one write; `EINPROGRESS` (the work goes on) counts as done.
fn write_file(p: PathBuf, content: &str) {
    match std::fs::write(&p, content) {
        Ok(()) => {}
        Err(e) if errno(&e) == libc::EINPROGRESS => {}
        Err(e) => panic!("write {}: {e}", p.display()),
    }
}

/// Writes `node` of instance `name`: a move, which answers within `op_timeout_ms` (and goes
/// on if it is not done by then). Refused because a node read offline (a poll missed its
/// deadline on a loaded machine: guests under TCG take the CPUs), it is written again once
/// the nodes answer, as a user would; any other refusal or failure fails the test.
fn move_to(lab: &Lab, m: &Mounted, name: &str, node: &str) {
    let start = Instant::now();
    loop {
        let e = match std::fs::write(
            m.path(&format!("instances/{name}/node")),
            format!("{node}\n"),
        ) {
            Ok(()) => return,
            Err(e) => e,
        };
        let error = read(m.path(&format!("instances/{name}/error")));
        if errno(&e) != libc::EIO || !error.contains("is offline") || start.elapsed() > SHORT {
            panic!("move {name} to {node}: {e}\n{}", describe(lab, m, name));
        }
        eprintln!(
            "move {name} to {node}: {}; again once the nodes answer",
            error.trim()
        );
        wait_online(m, &["kvm1", "kvm2"]);
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// What a slow or failed instance looks like, for failure messages.
fn describe(lab: &Lab, m: &Mounted, name: &str) -> String {
    let f = |file: &str| std::fs::read_to_string(m.path(&format!("instances/{name}/{file}")));
    let node = f("node").unwrap_or_default().trim().to_string();
    let log = m.log();
    let log: Vec<&str> = log.lines().collect();
    format!(
        "instance {name}: status {:?}, error {:?}, node {node:?}, ip {:?}\n\
         kvmfs log (last lines):\n{}\nguest's cloud-init output:\n{}",
        f("status"),
        f("error"),
        f("ip"),
        log[log.len().saturating_sub(20)..].join("\n"),
        if node.is_empty() {
            "(no node)".to_string()
        } else {
            lab.guest_log(&node, name)
        }
    )
}

/// Timings of one instance, seconds from its `mkdir`.
#[derive(Debug, serde::Serialize)]
struct Timing {
    node: String,
    running_s: f64,
    http_200_s: f64,
}

/// The lab's configuration with the pool form of shared storage instead of the NFS share:
/// no `[storage]`, and both nodes on their pool `shared`, declared `pool_shared`.
fn pool_shared_config(lab_toml: &str) -> String {
    let mut out = String::new();
    let mut in_storage = false;
    for line in lab_toml.lines() {
        if line.starts_with('[') {
            in_storage = line.trim() == "[storage]";
        }
        if in_storage {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("uri = ") {
            out.push_str("pool = \"shared\"\npool_shared = true\n");
        }
    }
    out
}

/// A live migration as the lab measured it.
#[derive(serde::Serialize)]
struct MigrationTiming {
    from: String,
    to: String,
    /// From the write of `node` to `status` reading `running` with `node` the target.
    migrate_s: f64,
    /// The longest time between two answered requests of the poller around it.
    longest_gap_s: f64,
    sent: u64,
    answered: u64,
}

/// What an HTTP client polling a guest saw.
#[derive(Debug)]
struct Polled {
    sent: u64,
    answered: u64,
    longest_gap_s: f64,
    last_answered: bool,
}

/// An HTTP client in the control namespace requesting a guest's page every 50 ms (each
/// request bounded at 1 s), on a thread of its own, timing the answers.
struct HttpPoller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Polled>,
}

impl HttpPoller {
    fn start(lab: &Lab, ip: &str) -> HttpPoller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let netns = lab.var("LAB_CTL_NETNS").to_string();
        let url = format!("http://{ip}/");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut p = Polled {
                sent: 0,
                answered: 0,
                longest_gap_s: 0.0,
                last_answered: false,
            };
            let mut last_ok = Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .args(["curl", "-s", "-o", "/dev/null"])
                    .args(["-m", "1", "-w", "%{http_code}", &url])
                    .output();
                p.sent += 1;
                let ok = out.is_ok_and(|o| o.stdout == b"200");
                if ok {
                    p.answered += 1;
                    p.longest_gap_s = p.longest_gap_s.max(last_ok.elapsed().as_secs_f64());
                    last_ok = Instant::now();
                }
                p.last_answered = ok;
                std::thread::sleep(Duration::from_millis(50));
            }
            p
        });
        HttpPoller { stop, thread }
    }

    fn stop(self) -> Polled {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("poller")
    }
}

/// Creates web instance `name` serving `url`, waits for its page over HTTP and for SSH;
/// returns its node, eth0 address and timings.
fn create_web(
    lab: &Lab,
    m: &Mounted,
    name: &str,
    url: &str,
    body: &str,
) -> (String, String, Timing) {
    let dir = m.path(&format!("instances/{name}"));
    let t0 = Instant::now();
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
    write_file(
        dir.join("spec.json"),
        &format!(r#"{{"purpose":"web","git":"{url}","flavor":"m1.small"}}"#),
    );
    let status = |m: &Mounted| read(m.path(&format!("instances/{name}/status")));
    wait_until(
        SHORT,
        &format!("{name} to be built"),
        || {
            let s = status(m);
            assert!(!s.starts_with("failed"), "{}", describe(lab, m, name));
            s.starts_with("running").then_some(())
        },
        || describe(lab, m, name),
    );
    let running_s = t0.elapsed().as_secs_f64();
    let node = read(dir.join("node")).trim().to_string();
    let ip = first_line(&read(dir.join("ip")));
    assert!(!ip.is_empty(), "{name} has no address");
    let (code, got) = wait_until(
        BOOT_TO_HTTP,
        &format!("{name}'s page at http://{ip}/"),
        || lab.http_get(&ip).filter(|(c, _)| *c == 200),
        || describe(lab, m, name),
    );
    let http_200_s = t0.elapsed().as_secs_f64();
    assert_eq!(code, 200);
    assert_eq!(got, body, "{name} serves another page");
    // The instance's own key logs in as cloud-init's default user.
    let key = dir.join("ssh_key");
    let hostname = wait_until(
        SSH_READY,
        &format!("ssh -i {} debian@{ip}", key.display()),
        || lab.ssh(&key, &ip, "hostname").ok(),
        || format!("{:?}", lab.ssh(&key, &ip, "hostname")),
    );
    assert_eq!(hostname, name);
    eprintln!(
        "{name} on {node} ({ip}): running after {running_s:.1} s, HTTP 200 after {http_200_s:.1} s"
    );
    (
        node.clone(),
        ip,
        Timing {
            node,
            running_s,
            http_200_s,
        },
    )
}

#[test]
fn web_instances_boot_on_real_nodes_serve_their_page_and_go_away() {
    let lab = Lab::up();
    // Nodes listed whole once an hour only: what the domains do between reaches kvmfs by
    // libvirt's domain events alone (a power-off after `stop`, a `virsh destroy` below).
    // Operations on the share bounded at 20 s, for step 8.
    let toml = format!(
        "{}\n[timing]\nfull_poll_ms = 3600000\n",
        read(lab.var("LAB_CONFIG")).replace("[storage]\n", "[storage]\ntimeout_ms = 20000\n")
    );
    let m = Mounted::with_config_in_netns(&toml, lab.var("LAB_CTL_NETNS"));

    // 1. Both real nodes online, with real CPU and memory figures; the base image is on the
    //    storage node only.
    assert_eq!(lab.share_files(), ["debian-12.qcow2"]);
    assert_eq!(list(m.path("nodes")), ["kvm1", "kvm2"]);
    for n in ["kvm1", "kvm2"] {
        let info = read_json(m.path(&format!("nodes/{n}/info.json")));
        assert_eq!(info["status"], "online", "{info}");
        assert!(info["cpus"].as_u64().unwrap() >= 1, "{info}");
        assert!(info["mhz"].as_u64().unwrap() > 0, "{info}");
        assert!(info["memory_total_mb"].as_u64().unwrap() > 256, "{info}");
        assert_eq!(info["memory_source"], "measured", "{info}");
        assert!(info["memory_free_mb"].as_u64().unwrap() > 0, "{info}");
        assert!(
            info["uri"].as_str().unwrap().starts_with("qemu+tcp://"),
            "{info}"
        );
        assert_eq!(info["pool_volumes"], serde_json::json!([]), "{info}");
        assert_eq!(info["committed_vcpus"], 0, "{info}");
    }
    for net in ["external", "overlay"] {
        assert_eq!(read(m.path(&format!("networks/{net}/status"))), "active\n");
    }

    // 2. + 3. A web instance on the better node serves its own page; its key logs in.
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let body1 = format!("<!doctype html><p>kvmfs e2e web1 {token}</p>\n");
    let url1 = site(&lab, "site1", &body1);
    let (expected1, scores1) = best_node(&m);
    let (node1, ip1, t1) = create_web(&lab, &m, "web1", &url1, &body1);
    assert_eq!(
        node1, expected1,
        "web1 did not go to the best node: {scores1:?}"
    );
    assert_eq!(lab.qemu_pids("web1").len(), 1, "one QEMU runs web1");
    // Its disk and seed are files on the storage node, which QEMU opens over NFS: nothing
    // of it is in the node's pool, and info.json says where each disk lives.
    assert_eq!(
        lab.share_files(),
        ["debian-12.qcow2", "web1.disk.qcow2", "web1.seed.iso"]
    );
    assert_eq!(lab.pool_files(&node1), Vec::<String>::new());
    let host = lab
        .var("LAB_STORAGE")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let disks = &read_json(m.path("instances/web1/info.json"))["disks"];
    assert_eq!(
        disks,
        &serde_json::json!([
            {"target": "vda", "device": "disk", "source": "/cloud/web1.disk.qcow2",
             "storage": "shared", "protocol": "nfs", "host": host},
            {"target": "hdc", "device": "cdrom", "source": "/cloud/web1.seed.iso",
             "storage": "shared", "protocol": "nfs", "host": host},
        ]),
    );

    // 4. The first instance's vCPU and RAM now count on its node, so the second goes to
    //    the other one; both have their own addresses from the database's pools.
    let info1 = read_json(m.path(&format!("nodes/{node1}/info.json")));
    assert_eq!(info1["committed_vcpus"], 1, "{info1}");
    assert_eq!(info1["committed_ram_mb"], 1024, "{info1}");
    let (expected2, scores2) = best_node(&m);
    assert_ne!(expected2, node1, "scores after web1: {scores2:?}");
    assert!(
        scores2[&node1] < scores1[&node1],
        "{scores1:?} then {scores2:?}"
    );
    let body2 = format!("<!doctype html><p>kvmfs e2e web2 {token}</p>\n");
    let url2 = site(&lab, "site2", &body2);
    let (node2, ip2, t2) = create_web(&lab, &m, "web2", &url2, &body2);
    assert_eq!(
        node2, expected2,
        "web2 did not go to the best node: {scores2:?}"
    );
    assert_ne!(ip1, ip2);
    let ips1 = read(m.path("instances/web1/ip"));
    let ips2 = read(m.path("instances/web2/ip"));
    assert_eq!(ips1.lines().count(), 2, "{ips1}");
    assert_eq!(ips2.lines().count(), 2, "{ips2}");
    assert!(
        ips1.lines().all(|a| !ips2.lines().any(|b| a == b)),
        "{ips1} / {ips2}"
    );
    let rows = lab.sql("SELECT vmname, hostname, vmip, ip_eth1 FROM vm ORDER BY vmname");
    assert_eq!(
        rows,
        format!(
            "web1\t{node1}\t{}\t{}\nweb2\t{node2}\t{}\t{}",
            ip1,
            ips1.lines().nth(1).unwrap(),
            ip2,
            ips2.lines().nth(1).unwrap()
        )
    );
    assert_eq!(lab.sql("SELECT COUNT(*) FROM ip_alloc"), "4");

    // 5. A snapshot of web2, whose disk is on NFS: taken while it runs (QEMU's internal
    //    snapshot, inside the qcow2 on the share), a file changed in the guest afterwards,
    //    and `revert` brings the file back as it was.
    let key2 = m.path("instances/web2/ssh_key");
    let mark = "/home/debian/kvmfs-e2e-mark";
    lab.ssh(&key2, &ip2, &format!("echo before > {mark} && sync"))
        .expect("write the mark in web2");
    let snap_dir = m.path("instances/web2/snapshots/before");
    let t_snap = Instant::now();
    match std::fs::create_dir(&snap_dir) {
        Ok(()) => {}
        // Saving the guest's RAM over NFS takes seconds: it goes on in the background.
        Err(e) if errno(&e) == libc::EINPROGRESS => {}
        Err(e) => panic!(
            "mkdir snapshots/before: {e}\n{}",
            describe(&lab, &m, "web2")
        ),
    }
    // libvirt lists the snapshot while QEMU still saves it (not yet current, the guest
    // paused): it is taken once it is the current one.
    let snap = wait_until(
        SHORT,
        "web2's snapshot `before` to be taken (current)",
        || {
            std::fs::read_to_string(snap_dir.join("info.json"))
                .ok()
                .map(|t| serde_json::from_str::<serde_json::Value>(&t).expect("info.json"))
                .filter(|v| v["current"] == true)
        },
        || {
            format!(
                "info.json: {:?}\n{}",
                std::fs::read_to_string(snap_dir.join("info.json")),
                describe(&lab, &m, "web2")
            )
        },
    );
    let snap_s = t_snap.elapsed().as_secs_f64();
    assert_eq!(snap["state"], "running", "{snap}");
    assert_eq!(
        lab.virsh(&node2, &["snapshot-list", "web2", "--name"]),
        "before"
    );
    assert!(
        lab.virsh(&node2, &["snapshot-info", "web2", "before"])
            .contains("internal"),
        "not an internal snapshot"
    );
    wait_until(
        SHORT,
        "web2 to run again after its snapshot",
        || {
            read(m.path("instances/web2/status"))
                .starts_with("running")
                .then_some(())
        },
        || describe(&lab, &m, "web2"),
    );
    let changed = wait_until(
        SSH_READY,
        "the mark changed in web2 over ssh",
        || {
            lab.ssh(
                &key2,
                &ip2,
                &format!("echo after > {mark} && sync && cat {mark}"),
            )
            .ok()
        },
        || format!("{:?}", lab.ssh(&key2, &ip2, "true")),
    );
    assert_eq!(changed, "after");
    let t_revert = Instant::now();
    write_file(m.path("instances/web2/ctl"), "revert before\n");
    wait_until(
        SHORT,
        "web2 to run from its snapshot",
        || {
            read(m.path("instances/web2/status"))
                .starts_with("running: from snapshot")
                .then_some(())
        },
        || describe(&lab, &m, "web2"),
    );
    let revert_s = t_revert.elapsed().as_secs_f64();
    let back = wait_until(
        SSH_READY,
        "the mark in web2 over ssh after the revert",
        || lab.ssh(&key2, &ip2, &format!("cat {mark}")).ok(),
        || format!("{:?}", lab.ssh(&key2, &ip2, "true")),
    );
    assert_eq!(back, "before", "the revert did not bring the file back");
    eprintln!(
        "web2 on {node2}: snapshot of its NFS disk taken after {snap_s:.1} s, reverted after \
         {revert_s:.1} s; the file changed since is back"
    );
    assert_eq!(read(m.path("instances/web2/error")), "");
    assert_eq!(lab.http_get(&ip2).map(|(c, _)| c), Some(200));
    assert_eq!(lab.qemu_pids("web2").len(), 1, "one QEMU runs web2");

    // 6. ctl on the real domain: a graceful stop powers the guest off, start boots it again.
    let qemu_before = lab.qemu_pids("web1");
    write_file(m.path("instances/web1/ctl"), "stop\n");
    wait_until(
        POWER_OFF,
        "web1 to power off after `stop`",
        || {
            read(m.path("instances/web1/status"))
                .starts_with("shutoff")
                .then_some(())
        },
        || describe(&lab, &m, "web1"),
    );
    assert!(
        lab.qemu_pids("web1").is_empty(),
        "QEMU still runs web1 after stop"
    );
    assert_eq!(lab.virsh(&node1, &["domstate", "web1"]), "shut off");
    write_file(m.path("instances/web1/ctl"), "start\n");
    wait_until(
        SHORT,
        "web1 to run after `start`",
        || {
            read(m.path("instances/web1/status"))
                .starts_with("running")
                .then_some(())
        },
        || describe(&lab, &m, "web1"),
    );
    let qemu_after = lab.qemu_pids("web1");
    assert_eq!(qemu_after.len(), 1);
    assert_ne!(qemu_after, qemu_before, "a new QEMU process runs web1");
    // The restarted guest serves its page again (nginx was enabled at first boot).
    let (_, again) = wait_until(
        BOOT_TO_HTTP,
        "web1's page after `start`",
        || lab.http_get(&ip1).filter(|(c, _)| *c == 200),
        || describe(&lab, &m, "web1"),
    );
    assert_eq!(again, body1);

    // 6b. Live migration while an HTTP client polls: `echo OTHER > node` moves the running
    //     guest (its disks are on the share: nothing is copied but memory); the page is
    //     served before, during (but for the switch-over) and after, by one QEMU.
    let other = if node1 == "kvm1" { "kvm2" } else { "kvm1" }.to_string();
    let poller = HttpPoller::start(&lab, &ip1);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    move_to(&lab, &m, "web1", &other);
    wait_until(
        SHORT,
        "web1 to run on the other node",
        || {
            let s = read(m.path("instances/web1/status"));
            assert!(!s.starts_with("failed"), "{}", describe(&lab, &m, "web1"));
            (s.starts_with("running") && read(m.path("instances/web1/node")).trim() == other)
                .then_some(())
        },
        || describe(&lab, &m, "web1"),
    );
    let migrate_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let polled = poller.stop();
    assert_eq!(lab.virsh(&other, &["domstate", "web1"]), "running");
    assert_eq!(
        lab.virsh(&node1, &["list", "--all", "--name"]),
        "",
        "left on {node1}"
    );
    assert_eq!(lab.qemu_pids("web1").len(), 1, "one QEMU runs web1");
    assert_eq!(
        read(m.path("instances/web1/ip")),
        ips1,
        "its addresses follow it"
    );
    assert_eq!(
        lab.sql("SELECT state, hostname FROM vm WHERE vmname = 'web1'"),
        format!("ready\t{other}")
    );
    assert_eq!(read(m.path("instances/web1/error")), "");
    let (_, after) = wait_until(
        SHORT,
        "web1's page after the migration",
        || lab.http_get(&ip1).filter(|(c, _)| *c == 200),
        || describe(&lab, &m, "web1"),
    );
    assert_eq!(after, body1);
    assert!(polled.answered > 0 && polled.last_answered, "{polled:?}");
    eprintln!(
        "web1 {node1} → {other}: running there after {migrate_s:.1} s; longest gap between \
         answered requests {:.2} s ({} of {} requests answered)",
        polled.longest_gap_s, polled.answered, polled.sent
    );
    let migration = MigrationTiming {
        from: node1.clone(),
        to: other.clone(),
        migrate_s,
        longest_gap_s: polled.longest_gap_s,
        sent: polled.sent,
        answered: polled.answered,
    };

    // web2 moves too, to the node web1 left, with its snapshot: its metadata is taken off
    // the source and defined again on the target; its data is in the qcow2 on the share.
    move_to(&lab, &m, "web2", &node1);
    wait_until(
        SHORT,
        "web2 to run on the node web1 left",
        || {
            let s = read(m.path("instances/web2/status"));
            assert!(!s.starts_with("failed"), "{}", describe(&lab, &m, "web2"));
            (s.starts_with("running") && read(m.path("instances/web2/node")).trim() == node1)
                .then_some(())
        },
        || describe(&lab, &m, "web2"),
    );
    assert_eq!(
        lab.virsh(&node1, &["snapshot-list", "web2", "--name"]),
        "before"
    );
    assert!(
        !lab.virsh(&node2, &["list", "--all", "--name"])
            .lines()
            .any(|d| d == "web2"),
        "web2 left on {node2}"
    );
    assert_eq!(list(m.path("instances/web2/snapshots")), ["before"]);
    let (_, again2) = wait_until(
        SHORT,
        "web2's page after its migration",
        || lab.http_get(&ip2).filter(|(c, _)| *c == 200),
        || describe(&lab, &m, "web2"),
    );
    assert_eq!(again2, body2);
    let node1 = other;

    // A domain destroyed behind kvmfs's back, on the node itself: the event tells.
    lab.virsh(&node1, &["destroy", "web1"]);
    wait_until(
        SHORT,
        "web1 to read shutoff after a virsh destroy on its node",
        || {
            read(m.path("instances/web1/status"))
                .starts_with("shutoff: destroyed")
                .then_some(())
        },
        || describe(&lab, &m, "web1"),
    );
    // Shut off, its NFS disk cannot be snapshotted (libvirt needs QEMU running for that):
    // refused with the reason, and nothing is left on the node.
    let r = std::fs::create_dir(m.path("instances/web1/snapshots/off"));
    assert_eq!(
        r.as_ref().map_err(errno),
        Err(libc::EOPNOTSUPP),
        "mkdir a snapshot of shut-off web1: {r:?}"
    );
    let err = read(m.path("instances/web1/error"));
    assert!(
        err.starts_with("instance web1 is shutoff and its disk vda is a network disk (nfs on ")
            && err.contains("start it first"),
        "{err}"
    );
    assert_eq!(lab.virsh(&node1, &["snapshot-list", "web1", "--name"]), "");

    // 7. rmdir: QEMU gone, files gone from the share, rows and addresses gone (web2 with
    //    its snapshot: it lived in its disk).
    for name in ["web1", "web2"] {
        let dir = m.path(&format!("instances/{name}"));
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EINPROGRESS => {}
            Err(e) => panic!("rmdir {name}: {e}"),
        }
    }
    wait_until(
        SHORT,
        "both instance folders to disappear",
        || {
            (!list(m.path("instances"))
                .iter()
                .any(|n| n.starts_with("web")))
            .then_some(())
        },
        || format!("{:?}\n{}", list(m.path("instances")), m.log()),
    );
    for name in ["web1", "web2"] {
        assert!(lab.qemu_pids(name).is_empty(), "QEMU still runs {name}");
    }
    assert_eq!(lab.share_files(), ["debian-12.qcow2"], "files on the share");
    for n in ["kvm1", "kvm2"] {
        assert_eq!(lab.pool_files(n), Vec::<String>::new(), "pool of {n}");
        assert_eq!(
            lab.virsh(n, &["list", "--all", "--name"]),
            "",
            "domains on {n}"
        );
        assert_eq!(
            lab.virsh(n, &["vol-list", "default"])
                .lines()
                .filter(|l| l.contains("web"))
                .count(),
            0,
            "volumes on {n}"
        );
    }
    wait_until(
        SHORT,
        "the pools' volumes in info.json",
        || {
            ["kvm1", "kvm2"]
                .iter()
                .all(|n| {
                    read_json(m.path(&format!("nodes/{n}/info.json")))["pool_volumes"]
                        == serde_json::json!([])
                })
                .then_some(())
        },
        String::new,
    );
    assert_eq!(lab.sql("SELECT COUNT(*) FROM vm"), "0");
    assert_eq!(lab.sql("SELECT COUNT(*) FROM ip_alloc"), "0");

    // 7b. The other form of shared storage: a pool at the same path on both nodes (`dir`
    //     pools `shared` over one folder, as a `netfs` pool of one export mounted on each
    //     node would be), declared `pool_shared`, and no `[storage]`. A second mount on the
    //     same database with that configuration builds a web instance there, moves it live
    //     while the client polls, and removes it: its disk is in the shared folder, once.
    let shared_toml = pool_shared_config(&read(lab.var("LAB_CONFIG")));
    let m2 = Mounted::with_config_in_netns(&shared_toml, lab.var("LAB_CTL_NETNS"));
    let shared_dir = lab.var("LAB_SHARED_POOL").to_string();
    let body3 = format!("<!doctype html><p>kvmfs e2e pool1 {token}</p>\n");
    let url3 = site(&lab, "site3", &body3);
    let (node3, ip3, _) = create_web(&lab, &m2, "pool1", &url3, &body3);
    assert_eq!(
        list(&shared_dir),
        ["debian-12.qcow2", "pool1.disk.qcow2", "pool1.seed.iso"],
        "pool1's disk and seed are in the shared pool"
    );
    assert_eq!(
        lab.share_files(),
        ["debian-12.qcow2"],
        "nothing on the NFS share"
    );
    let to3 = if node3 == "kvm1" { "kvm2" } else { "kvm1" }.to_string();
    let poller = HttpPoller::start(&lab, &ip3);
    std::thread::sleep(Duration::from_millis(500));
    move_to(&lab, &m2, "pool1", &to3);
    wait_until(
        SHORT,
        "pool1 to run on the other node",
        || {
            let s = read(m2.path("instances/pool1/status"));
            assert!(!s.starts_with("failed"), "{}", describe(&lab, &m2, "pool1"));
            (s.starts_with("running") && read(m2.path("instances/pool1/node")).trim() == to3)
                .then_some(())
        },
        || describe(&lab, &m2, "pool1"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let polled3 = poller.stop();
    assert!(polled3.answered > 0 && polled3.last_answered, "{polled3:?}");
    assert_eq!(lab.virsh(&to3, &["domstate", "pool1"]), "running");
    assert_eq!(lab.qemu_pids("pool1").len(), 1, "one QEMU runs pool1");
    let (_, page3) = wait_until(
        SHORT,
        "pool1's page after its migration",
        || lab.http_get(&ip3).filter(|(c, _)| *c == 200),
        || describe(&lab, &m2, "pool1"),
    );
    assert_eq!(page3, body3);
    eprintln!(
        "pool1 (pool_shared) {node3} → {to3}: longest gap between answered requests {:.2} s",
        polled3.longest_gap_s
    );
    match std::fs::remove_dir(m2.path("instances/pool1")) {
        Ok(()) => {}
        Err(e) if errno(&e) == libc::EINPROGRESS => {}
        Err(e) => panic!("rmdir pool1: {e}"),
    }
    wait_until(
        SHORT,
        "pool1's files to leave the shared pool",
        || (list(&shared_dir) == ["debian-12.qcow2"]).then_some(()),
        || format!("{:?}\n{}", list(&shared_dir), m2.log()),
    );
    assert!(lab.qemu_pids("pool1").is_empty(), "QEMU still runs pool1");
    assert_eq!(lab.sql("SELECT COUNT(*) FROM vm"), "0");
    drop(m2);

    // 8. The storage node falls silent (its NFS server and portmapper frozen): /status says
    //    so and names the nodes that use it, a build fails within the share's bound having
    //    made nothing, and all is well again once it answers.
    let frozen: Vec<String> = {
        let out = Command::new("ip")
            .args(["netns", "pids", lab.var("LAB_STORAGE_NETNS")])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(!frozen.is_empty(), "no storage node processes");
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .arg(sig)
            .args(&frozen)
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {frozen:?}");
    };
    signal("-STOP");
    let status = wait_until(
        SHORT,
        "/status to name the silent storage",
        || Some(read(m.path("status"))).filter(|s| s.contains("storage nfs://")),
        || read(m.path("status")),
    );
    assert!(
        status.starts_with("degraded: storage nfs://") && status.contains("(used by kvm1, kvm2)"),
        "{status}"
    );
    let dir = m.path("instances/web3");
    std::fs::create_dir(&dir).expect("mkdir web3");
    write_file(dir.join("spec.json"), r#"{"flavor":"m1.small"}"#);
    let failed = wait_until(
        SHORT,
        "web3's build to fail on the silent storage",
        || Some(read(dir.join("status"))).filter(|s| s.starts_with("failed")),
        || describe(&lab, &m, "web3"),
    );
    assert!(failed.contains("did not answer within 20s"), "{failed}");
    assert_eq!(lab.sql("SELECT made FROM vm WHERE vmname = 'web3'"), "");
    assert!(lab.qemu_pids("web3").is_empty());
    signal("-CONT");
    wait_until(
        SHORT,
        "/status to be ok again",
        || (read(m.path("status")) == "ok\n").then_some(()),
        || read(m.path("status")),
    );
    std::fs::remove_dir(&dir).expect("rmdir web3");
    assert_eq!(lab.share_files(), ["debian-12.qcow2"], "files on the share");

    if let Some(out) = std::env::var_os("KVMFS_E2E_TIMINGS") {
        let t = serde_json::json!({ "web1": t1, "web2": t2, "migration": migration });
        std::fs::write(out, format!("{t:#}\n")).expect("write timings");
    }
    drop(m);
}

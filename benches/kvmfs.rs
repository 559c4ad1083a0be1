//! The benchmark command: `scripts/bench.sh` (which runs `cargo bench --bench kvmfs`).
//!
//! It mounts kvmfs (the release build) on simulated nodes of libvirt's test driver, builds an
//! identical tree on tmpfs, and measures, in the same run and interleaved:
//!
//! - the listing walk (`ls -l /instances` and a stat of every `status` file) and reading every
//!   `status` file, on kvmfs (kernel caching on and off) and on tmpfs, in-process and as the
//!   `ls`/`stat`/`cat` commands;
//! - `virsh list --all` against the same nodes, and against a private libvirtd (qemu driver)
//!   holding 300 defined domains;
//! - how the walk and the daemon's memory grow up to 10,000 instances;
//! - create throughput (`mkdir` + `spec.json` to `running`, 16 writers) on SQLite and MariaDB;
//! - placement over 100 nodes, and building a view of 10,000 instances;
//! - optionally, where the daemon's CPU goes, sampled with `perf` (`--profile`).
//!
//! Wall-clock numbers are medians of several runs; the machine is shared, so they are noisy.
//! It writes `docs/BENCHMARKS.md` (or `--out FILE`). Nothing here asserts on time.
//!
//! Under `cargo test --all-targets` it is built and does nothing (it only runs with `--bench`).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kvmfs::testnode::SimNode;

const KVMFS: &str = env!("CARGO_BIN_EXE_kvmfs");

struct Opts {
    quick: bool,
    /// Only these sections (`--only listing,creates`); all when empty.
    only: Vec<String>,
    out: PathBuf,
    profile: bool,
    /// Where `--profile` keeps its `perf.data` files (`--perf-dir DIR`), for `perf report`.
    perf_dir: Option<PathBuf>,
    /// Set when this run is the child that valgrind's callgrind counts: it runs this one
    /// workload of `micro` once and writes nothing (`--callgrind-workload NAME`).
    callgrind_workload: Option<String>,
    scales: Vec<usize>,
    creates: usize,
}

impl Opts {
    fn parse() -> Option<Opts> {
        let args: Vec<String> = std::env::args().collect();
        if !args.iter().any(|a| a == "--bench") {
            return None;
        }
        let quick = args.iter().any(|a| a == "--quick");
        let value = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Some(Opts {
            quick,
            only: value("--only")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            out: value("--out")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("docs/BENCHMARKS.md")),
            profile: args.iter().any(|a| a == "--profile"),
            perf_dir: value("--perf-dir").map(PathBuf::from),
            callgrind_workload: value("--callgrind-workload"),
            scales: if quick {
                vec![300, 1000]
            } else {
                vec![300, 1000, 3000, 10_000]
            },
            creates: value("--creates")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if quick { 64 } else { 400 }),
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    fn runs(&self) -> usize {
        if self.quick { 5 } else { 15 }
    }
}

fn main() {
    let Some(opts) = Opts::parse() else {
        println!("kvmfs benchmark: run it with scripts/bench.sh (cargo bench --bench kvmfs)");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark mounts filesystems and starts servers: run it as root");
        std::process::exit(1);
    }
    if let Some(w) = &opts.callgrind_workload {
        micro(&opts, Measure::Callgrind(w));
        return;
    }
    let mut doc = Doc::default();
    let started = Instant::now();
    let load_before = loadavg();

    // The report is rewritten after every section, so a section that fails keeps the others.
    let save = |doc: &mut Doc| {
        doc.load = (load_before.clone(), loadavg());
        doc.elapsed = started.elapsed();
        let old = std::fs::read_to_string(&opts.out).unwrap_or_default();
        std::fs::write(&opts.out, splice(&old, &doc.render(&opts)))
            .expect("write the benchmark report");
    };
    if opts.wants("listing") {
        doc.listing = section("listing and reading, 300 instances", || listing(&opts));
        save(&mut doc);
    }
    if opts.wants("virsh") {
        doc.virsh = section("virsh list --all", || virsh(&opts));
        save(&mut doc);
    }
    if opts.wants("scale") {
        doc.scale = section("scale", || scale(&opts));
        save(&mut doc);
    }
    if opts.wants("creates") {
        doc.creates = section("creates", || creates(&opts));
        save(&mut doc);
    }
    if opts.wants("micro") {
        doc.micro = Some(section("placement and view building", || {
            micro(&opts, Measure::Time)
        }));
        save(&mut doc);
    }
    if opts.profile {
        doc.profile = section("profile", || profile(&opts));
        save(&mut doc);
    }
    println!("wrote {}", opts.out.display());
}

fn section<T>(what: &str, f: impl FnOnce() -> T) -> T {
    eprintln!("bench: {what} ...");
    let t = Instant::now();
    let r = f();
    eprintln!("bench: {what} done in {:.1} s", t.elapsed().as_secs_f64());
    r
}

// ---------------------------------------------------------------------------------------
// Measuring

/// Median of `runs` timed calls of `f`, after one untimed warm-up call.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// Medians of several workloads measured in turns (a, b, c, a, b, c, …), so a burst of load
/// from elsewhere hits all of them alike.
fn interleaved(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    for f in fs.iter_mut() {
        f();
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); fs.len()];
    for _ in 0..runs {
        for (i, f) in fs.iter_mut().enumerate() {
            let t = Instant::now();
            f();
            times[i].push(t.elapsed());
        }
    }
    times
        .into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

/// `ls -l` of the folder plus a `stat` of every `NAME/status`: what a listing tool does.
fn walk(dir: &Path) -> usize {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::symlink_metadata(e.path()).expect("lstat");
        names.push(e.file_name());
    }
    for n in &names {
        std::fs::metadata(dir.join(n).join("status")).expect("stat status");
    }
    names.len()
}

/// Open, read to the end and close every `NAME/status`.
fn read_all(paths: &[PathBuf]) -> usize {
    let mut total = 0;
    let mut buf = Vec::with_capacity(256);
    for p in paths {
        buf.clear();
        let mut f = std::fs::File::open(p).expect("open status");
        total += f.read_to_end(&mut buf).expect("read status");
    }
    total
}

fn status_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path().join("status"))
        .collect();
    v.sort();
    v
}

fn run_quiet(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run a command");
    assert!(st.success(), "{cmd:?} failed");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// A kvmfs mount on simulated nodes

struct Lab {
    /// Holds the node files for as long as the lab lives.
    _dir: tempfile::TempDir,
    uris: Vec<String>,
}

impl Lab {
    /// `nodes` test-driver nodes holding `per_node` domains each (two of three running),
    /// each node big enough for every create of the run.
    fn new(nodes: usize, per_node: usize) -> Lab {
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

    fn config(&self, extra: &str) -> String {
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

struct Mount {
    mnt: tempfile::TempDir,
    state: tempfile::TempDir,
    child: Option<Child>,
}

impl Mount {
    fn start(config: &str) -> Mount {
        Self::start_with(config, None)
    }

    /// Mounts with `config`; with `wrapper`, the daemon runs under that command (valgrind).
    fn start_with(config: &str, wrapper: Option<&[String]>) -> Mount {
        let mnt = tempfile::Builder::new()
            .prefix("kvmfs-bench-mnt")
            .tempdir()
            .expect("tempdir");
        let state = tempfile::Builder::new()
            .prefix("kvmfs-bench-state")
            .tempdir()
            .expect("tempdir");
        let cfg = state.path().join("kvmfs.toml");
        std::fs::write(&cfg, config).expect("config");
        // It may hold a database password: kvmfs refuses a config others can read.
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("config mode");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(KVMFS);
                c
            }
            None => Command::new(KVMFS),
        };
        cmd.arg("mount")
            .arg(mnt.path())
            .arg("--foreground")
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(state.path())
            .env("KVMFS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.path().join("daemon.log")).expect("log"));
        let child = cmd.spawn().expect("start kvmfs");
        let mut m = Mount {
            mnt,
            state,
            child: Some(child),
        };
        let t = Instant::now();
        while !mounted(m.mnt.path()) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "kvmfs exited ({st}): {}",
                    std::fs::read_to_string(m.state.path().join("daemon.log")).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "kvmfs did not mount: {}",
                std::fs::read_to_string(m.state.path().join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn db_url(&self) -> String {
        format!("sqlite://{}/kvmfs.db", self.state.path().display())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.state.path().join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("bench: the daemon's log ends with:");
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.mnt.path())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
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

fn mounted(p: &Path) -> bool {
    let want = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
        && std::fs::metadata(p).is_ok()
}

/// Makes every domain of the lab a managed instance: a `ready` row per domain, as kvmfs's
/// own builds leave them, then waits until the mount shows them.
fn adopt_domains(m: &Mount, nodes: usize, per_node: usize) {
    let url = m.db_url();
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
struct TmpfsCopy {
    dir: tempfile::TempDir,
}

impl TmpfsCopy {
    fn of(src: &Path) -> TmpfsCopy {
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
                let data = std::fs::read(f.path()).expect("read");
                std::fs::write(d.join(f.file_name()), data).expect("write");
            }
        }
        TmpfsCopy { dir }
    }

    fn instances(&self) -> PathBuf {
        self.dir.path().join("instances")
    }
}

impl Drop for TmpfsCopy {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// ---------------------------------------------------------------------------------------
// Workloads

#[derive(Default)]
struct Listing {
    rows: Vec<(String, Duration, Duration, Duration)>,
    daemon_rss_kib: u64,
}

fn listing(opts: &Opts) -> Listing {
    let lab = Lab::new(3, 100);
    let cached = Mount::start(&lab.config(""));
    adopt_domains(&cached, 3, 100);
    let uncached = Mount::start(&lab.config("[timing]\nkernel_cache_ms = 0\n"));
    let tmp = TmpfsCopy::of(&cached.path("instances"));
    let dirs = [
        ("kvmfs", cached.path("instances")),
        ("kvmfs, kernel cache off", uncached.path("instances")),
        ("tmpfs", tmp.instances()),
    ];
    for (_, d) in &dirs {
        assert_eq!(walk(d), 300, "{} holds 300 instances", d.display());
    }
    let paths: Vec<Vec<PathBuf>> = dirs.iter().map(|(_, d)| status_paths(d)).collect();
    let runs = opts.runs();
    let mut out = Listing::default();

    let (d0, d1, d2) = (dirs[0].1.clone(), dirs[1].1.clone(), dirs[2].1.clone());
    let walks = interleaved(
        runs,
        &mut [
            &mut || {
                walk(&d0);
            },
            &mut || {
                walk(&d1);
            },
            &mut || {
                walk(&d2);
            },
        ],
    );
    let (p0, p1, p2) = (paths[0].clone(), paths[1].clone(), paths[2].clone());
    let reads = interleaved(
        runs,
        &mut [
            &mut || {
                read_all(&p0);
            },
            &mut || {
                read_all(&p1);
            },
            &mut || {
                read_all(&p2);
            },
        ],
    );
    // The same as commands: `ls -l DIR` plus `stat` of every status file, and `cat` of them.
    let cmd = |dir: &Path, paths: &[PathBuf]| {
        let (dir, paths) = (dir.to_path_buf(), paths.to_vec());
        move || {
            run_quiet(Command::new("ls").arg("-l").arg(&dir));
            run_quiet(Command::new("stat").arg("-c").arg("%s").args(&paths));
        }
    };
    let cat = |paths: &[PathBuf]| {
        let paths = paths.to_vec();
        move || run_quiet(Command::new("cat").args(&paths))
    };
    let (mut c0, mut c1, mut c2) = (
        cmd(&dirs[0].1, &paths[0]),
        cmd(&dirs[1].1, &paths[1]),
        cmd(&dirs[2].1, &paths[2]),
    );
    let cmds = interleaved(runs, &mut [&mut c0, &mut c1, &mut c2]);
    let (mut k0, mut k1, mut k2) = (cat(&paths[0]), cat(&paths[1]), cat(&paths[2]));
    let cats = interleaved(runs, &mut [&mut k0, &mut k1, &mut k2]);
    for i in 0..3 {
        out.rows.push((
            format!("walk: {}", dirs[i].0),
            walks[i],
            cmds[i],
            walks[i] / 300,
        ));
    }
    for i in 0..3 {
        out.rows.push((
            format!("read: {}", dirs[i].0),
            reads[i],
            cats[i],
            reads[i] / 300,
        ));
    }
    out.daemon_rss_kib = rss_kib(cached.pid());
    out
}

struct Virsh {
    per_node: Option<Duration>,
    three_nodes: Option<Duration>,
    libvirtd: Result<Duration, String>,
    kvmfs_walk: Duration,
}

fn virsh(opts: &Opts) -> Virsh {
    let lab = Lab::new(3, 100);
    let m = Mount::start(&lab.config(""));
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
fn daemon_list(runs: usize) -> Result<Duration, String> {
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
struct PrivateLibvirtd {
    dir: tempfile::TempDir,
    child: Child,
}

impl PrivateLibvirtd {
    fn start() -> Result<PrivateLibvirtd, String> {
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

struct ScaleRow {
    instances: usize,
    /// Where the simulated nodes live: in the daemon (libvirt's test driver in-process) or
    /// behind a private libvirtd (so the daemon's memory is its own).
    nodes: &'static str,
    walk: Duration,
    read: Duration,
    rss_kib: u64,
    idle_cpu: f64,
    mount_secs: f64,
}

fn scale(opts: &Opts) -> Vec<ScaleRow> {
    let mut rows = Vec::new();
    let biggest = opts.scales.iter().copied().max().unwrap_or(0);
    for &n in &opts.scales {
        rows.push(scale_row(opts, n, None));
        if n == biggest {
            match PrivateLibvirtd::start() {
                Ok(d) => rows.push(scale_row(opts, n, Some(&d))),
                Err(e) => eprintln!("bench: scale behind libvirtd not measured: {e}"),
            }
        }
    }
    rows
}

/// A mount of `n` managed instances on 3 nodes, in the daemon or behind `daemon`; returns
/// the lab (which must outlive the mount) and how long mounting and adopting took.
fn scale_mount(n: usize, daemon: Option<&PrivateLibvirtd>) -> (Lab, Mount, f64) {
    let per_node = n / 3;
    let mut lab = Lab::new(3, per_node);
    let mut extra = String::new();
    if let Some(d) = daemon {
        let sock = d.dir.path().join("sock/libvirt-sock");
        lab.uris = lab
            .uris
            .iter()
            .map(|u| {
                let file = u.trim_start_matches("test://");
                format!("test+unix://{file}?socket={}", sock.display())
            })
            .collect();
        // The first poll reads every domain once, one round trip each.
        extra.push_str("[timing]\nlibvirt_timeout_ms = 30000\n");
    }
    let t = Instant::now();
    let m = Mount::start(&lab.config(&extra));
    adopt_domains(&m, 3, per_node);
    (lab, m, t.elapsed().as_secs_f64())
}

fn scale_row(opts: &Opts, n: usize, daemon: Option<&PrivateLibvirtd>) -> ScaleRow {
    let per_node = n / 3;
    let (_lab, m, mount_secs) = scale_mount(n, daemon);
    let dir = m.path("instances");
    let paths = status_paths(&dir);
    let runs = if n >= 3000 { 5 } else { opts.runs() };
    let w = median(runs, || {
        walk(&dir);
    });
    let r = median(runs, || {
        read_all(&paths);
    });
    // Idle CPU: what the pollers cost with nothing changing, over 5 seconds.
    let c0 = cpu_ticks(m.pid());
    std::thread::sleep(Duration::from_secs(5));
    let c1 = cpu_ticks(m.pid());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ScaleRow {
        instances: per_node * 3,
        nodes: if daemon.is_some() {
            "behind libvirtd"
        } else {
            "in the daemon"
        },
        walk: w,
        read: r,
        rss_kib: rss_kib(m.pid()),
        idle_cpu: (c1 - c0) as f64 / hz / 5.0,
        mount_secs,
    }
}

struct CreateRow {
    db: String,
    /// Instances there before the run.
    present: usize,
    n: usize,
    elapsed: Duration,
    delete: Duration,
}

fn creates(opts: &Opts) -> Vec<CreateRow> {
    let mut rows = Vec::new();
    // Five nodes: libvirt's test driver gives every pool 100 GiB, and each create takes a
    // 1 GiB disk.
    let lab = Lab::new(5, 0);
    {
        let m = Mount::start(&lab.config(""));
        rows.push(create_run(&m, "SQLite", 0, opts.creates));
    }
    match MariaDb::start() {
        Ok(db) => {
            let m = Mount::start(&lab.config(&format!("[database]\nurl = '{}'\n", db.url())));
            rows.push(create_run(&m, "MariaDB", 0, opts.creates));
        }
        Err(e) => eprintln!("bench: MariaDB not measured: {e}"),
    }
    // The same with many instances there already (managed, with their volumes).
    let per_node = if opts.quick { 200 } else { 2000 };
    let lab = Lab::new(5, per_node);
    // The test driver runs inside the daemon: a poll of thousands of domains and volumes
    // takes it longer than the default deadline on a loaded machine.
    let m = Mount::start(&lab.config("[timing]\nlibvirt_timeout_ms = 30000\n"));
    adopt_domains(&m, 5, per_node);
    rows.push(create_run(&m, "SQLite", 5 * per_node, opts.creates));
    rows
}

/// 16 writers each create their share: `mkdir`, write `spec.json`, wait for `running`.
fn create_run(m: &Mount, db: &str, present: usize, n: usize) -> CreateRow {
    let writers = 16;
    let root = m.path("instances");
    let t = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in (w..n).step_by(writers) {
                    let d = root.join(format!("b{i:05}"));
                    std::fs::create_dir(&d).expect("mkdir");
                    std::fs::write(
                        d.join("spec.json"),
                        r#"{"vcpus":1,"ram_mb":128,"disk_gb":1}"#,
                    )
                    .expect("spec.json");
                    let status = d.join("status");
                    let t = Instant::now();
                    loop {
                        let s = std::fs::read_to_string(&status).unwrap_or_default();
                        if s.starts_with("running") {
                            break;
                        }
                        assert!(!s.starts_with("failed"), "b{i:05}: {s}");
                        assert!(t.elapsed() < Duration::from_secs(120), "b{i:05} stuck: {s}");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let elapsed = t.elapsed();
    let t = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in (w..n).step_by(writers) {
                    std::fs::remove_dir(root.join(format!("b{i:05}"))).expect("rmdir");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("deleter");
    }
    CreateRow {
        db: db.into(),
        present,
        n,
        elapsed,
        delete: t.elapsed(),
    }
}

/// A throwaway MariaDB server.
struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl MariaDb {
    fn start() -> Result<MariaDb, String> {
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-bench-mariadb")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| e.to_string())?;
        let out = Command::new("mariadb-install-db")
            .arg("--user=root")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--skip-log-bin")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let db = MariaDb { dir, port, child };
        let t = Instant::now();
        loop {
            if db.sql("SELECT 1").is_ok() {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("mariadbd did not start".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        db.sql(
            "CREATE DATABASE kvmfs; CREATE USER 'kvmfs'@'127.0.0.1' IDENTIFIED BY 'bench'; \
             GRANT ALL ON kvmfs.* TO 'kvmfs'@'127.0.0.1';",
        )?;
        Ok(db)
    }

    fn url(&self) -> String {
        format!("mysql://kvmfs:bench@127.0.0.1:{}/kvmfs", self.port)
    }

    fn sql(&self, sql: &str) -> Result<(), String> {
        use std::io::Write;
        let mut c = Command::new("mariadb")
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        c.stdin
            .take()
            .map(|mut i| i.write_all(sql.as_bytes()))
            .transpose()
            .map_err(|e| e.to_string())?;
        let st = c.wait().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err("sql failed".into())
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Micro {
    place_100: Duration,
    build_10k: Duration,
    rebuild_10k_nodes_only: Duration,
    rebuild_10k_one_changed: Duration,
    rebuild_10k_all_changed: Duration,
}

/// How `micro` measures its workloads: the median of timed runs, or one run of the named
/// workload inside `cg_run`, for callgrind to count (`callgrind_micro`).
#[derive(Clone, Copy)]
enum Measure<'a> {
    Time,
    Callgrind(&'a str),
}

/// The workloads of `micro`, by the names `callgrind_micro` asks for.
const MICRO_WORKLOADS: [(&str, &str); 5] = [
    ("placement", "Placement of one instance over 100 nodes"),
    ("build", "Building a view of 10,000 instances from scratch"),
    (
        "rebuild-nodes-only",
        "Rebuilding it when only node numbers moved",
    ),
    ("rebuild-one", "Rebuilding it when one domain changed"),
    (
        "rebuild-all",
        "Rebuilding every instance after one domain changed",
    ),
];

/// The one function callgrind collects in (`--toggle-collect=*cg_run*`).
#[inline(never)]
fn cg_run(f: &mut dyn FnMut()) {
    f();
    std::hint::black_box(());
}

fn micro(opts: &Opts, how: Measure<'_>) -> Micro {
    use kvmfs::cluster::placement::{Committed, Need, choose};
    use kvmfs::cluster::view::{Changed, NodeState, NodeStatus, RowMap, View, build};
    use kvmfs::hv::{DomainDevices, DomainProbe, DomainState, NetworkProbe, NodeProbe};
    let placement = kvmfs::config::PlacementConfig::default();
    let node = |k: usize, domains: usize| NodeState {
        name: format!("n{k:03}"),
        uri: "test:///x".into(),
        status: NodeStatus::Online,
        last_error: None,
        probe: Some(Arc::new(NodeProbe {
            hostname: None,
            cpus: 64,
            mhz: 2400,
            model: "x86_64".into(),
            memory_kib: 256 << 20,
            free_memory_kib: None,
            cpu_times: None,
            domains: Vec::new(),
            networks: vec![NetworkProbe {
                name: "default".into(),
                bridge: Some("virbr0".into()),
                active: true,
                autostart: true,
                persistent: true,
                forward: Some("nat".into()),
                addresses: vec!["10.0.0.1/24".into()],
            }],
            volumes: Some(Arc::new(vec![kvmfs::hv::VolumeProbe {
                name: "debian-12.qcow2".into(),
                capacity_bytes: 2 << 30,
                path: Some("/var/lib/libvirt/images/debian-12.qcow2".into()),
            }])),
        })),
        domains: (0..domains)
            .map(|i| {
                Arc::new(DomainProbe {
                    name: format!("d{k:03}-{i:05}"),
                    uuid: format!("{k:08}-0000-0000-0000-{i:012}"),
                    state: DomainState::Running,
                    reason: None,
                    vcpus: 1,
                    max_memory_kib: 512 * 1024,
                    memory_kib: 512 * 1024,
                    devices: Arc::new(DomainDevices::default()),
                })
            })
            .collect(),
        cpu_usage: None,
        updated_at: Some(SystemTime::now()),
        domains_epoch: 0,
        polls: 0,
    };
    let runs = if opts.quick { 200 } else { 2000 };
    let measure = |name: &str, runs: usize, f: &mut dyn FnMut()| match how {
        Measure::Time => median(runs, f),
        Measure::Callgrind(w) => {
            if w == name {
                cg_run(f);
            }
            Duration::ZERO
        }
    };
    let nodes: Vec<NodeState> = (0..100).map(|k| node(k, 10)).collect();
    let v = build(
        &nodes,
        &RowMap::new(),
        None,
        &placement,
        &View::default(),
        SystemTime::now(),
        &Changed::all(),
    );
    let networks = ["default"];
    let need = Need {
        vcpus: 2,
        ram_mb: 2048,
        image: "debian-12.qcow2",
        networks: &networks,
        node: None,
    };
    let none = kvmfs::db::Loads::default();
    let committed = Committed::from_loads(&none);
    let place_100 = measure("placement", runs, &mut || {
        choose(&v, &need, &committed, &placement).expect("a node");
    });
    let big: Vec<NodeState> = (0..3).map(|k| node(k, 3334)).collect();
    let first = build(
        &big,
        &RowMap::new(),
        None,
        &placement,
        &View::default(),
        SystemTime::now(),
        &Changed::all(),
    );
    let r = if opts.quick { 3 } else { 11 };
    // Building a view of `nodes` on `previous` with `changed`, measured as `name`.
    let time_build = |name: &str, nodes: &[NodeState], previous: &View, changed: &Changed| {
        measure(name, r, &mut || {
            build(
                nodes,
                &RowMap::new(),
                None,
                &placement,
                previous,
                SystemTime::now(),
                changed,
            );
        })
    };
    let build_10k = time_build("build", &big, &View::default(), &Changed::all());
    let rebuild_10k_nodes_only =
        time_build("rebuild-nodes-only", &big, &first, &Changed::default());
    // One domain changed its state (an event, a build step): only it is built again.
    let mut one = big.clone();
    let d = one[0].domains[17].clone();
    one[0].domains[17] = Arc::new(DomainProbe {
        state: DomainState::Shutoff,
        ..DomainProbe::clone(&d)
    });
    let mut changed = Changed::default();
    changed.name(&d.name);
    let rebuild_10k_one_changed = time_build("rebuild-one", &one, &first, &changed);
    let rebuild_10k_all_changed = time_build("rebuild-all", &one, &first, &Changed::all());
    Micro {
        place_100,
        build_10k,
        rebuild_10k_nodes_only,
        rebuild_10k_one_changed,
        rebuild_10k_all_changed,
    }
}

/// Where the daemon's CPU goes while the walk and the read repeat, during creates and while
/// idle: `perf` samples of the daemon (callgrind cannot run a FUSE daemon: valgrind holds its
/// lock across the daemon's `stat` of its own mountpoint, which only the daemon can answer),
/// and its CPU time per operation; and callgrind's instruction counts of the in-process
/// workloads of `micro` (placement, view builds).
fn profile(opts: &Opts) -> Result<String, String> {
    let lab = Lab::new(3, 100);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.perf_dir.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for (label, extra) in [
        ("kernel cache on", ""),
        ("kernel cache off", "[timing]\nkernel_cache_ms = 0\n"),
    ] {
        let m = Mount::start(&lab.config(extra));
        let d = m.path("instances");
        let paths = status_paths(&d);
        walk(&d);
        read_all(&paths);
        let rounds = if opts.quick { 20 } else { 100 };
        let data = dir.join(format!("perf-{}.data", label.replace(' ', "-")));
        let (cpu, top) = perf_sample(m.pid(), &data, || {
            for _ in 0..rounds {
                walk(&d);
                read_all(&paths);
            }
        })?;
        let per_round = cpu / rounds as f64;
        let _ = writeln!(
            out,
            "{label}: daemon CPU {:.2} ms per round (walk + read of 300 instances), {} per file\n\n```\n{}\n```\n",
            per_round * 1000.0,
            us(Duration::from_secs_f64(per_round / 300.0)),
            top.join("\n")
        );
    }
    // Creates: the same run as the creates section, on SQLite, sampled as a whole.
    let lab = Lab::new(5, 0);
    let m = Mount::start(&lab.config(""));
    let n = if opts.quick { 64 } else { 200 };
    let data = dir.join("perf-creates.data");
    let (cpu, top) = perf_sample(m.pid(), &data, || {
        create_run(&m, "SQLite", 0, n);
    })?;
    let _ = writeln!(
        out,
        "creates (SQLite, 16 writers, {n} instances created and deleted): daemon CPU {:.2} ms \
         per instance (create and delete)\n\n```\n{}\n```\n",
        cpu * 1000.0 / n as f64,
        top.join("\n")
    );
    // Unmounted before the next sample, which it would share the CPU with.
    drop(m);
    // Creates with 10,000 instances there already, nodes in the daemon.
    let per_node = if opts.quick { 600 } else { 2000 };
    let lab = Lab::new(5, per_node);
    let m = Mount::start(&lab.config("[timing]\nlibvirt_timeout_ms = 30000\n"));
    adopt_domains(&m, 5, per_node);
    let n = if opts.quick { 64 } else { 200 };
    let data = dir.join("perf-creates-at-scale.data");
    let (cpu, top) = perf_sample(m.pid(), &data, || {
        create_run(&m, "SQLite", 5 * per_node, n);
    })?;
    let _ = writeln!(
        out,
        "creates with {} instances there before (SQLite, 16 writers, {n} instances created \
         and deleted, nodes in the daemon): daemon CPU {:.2} ms per instance (create and \
         delete)\n\n```\n{}\n```\n",
        5 * per_node,
        cpu * 1000.0 / n as f64,
        top.join("\n")
    );
    drop(m);
    match callgrind_micro(dir) {
        Ok(rows) => {
            let _ = writeln!(
                out,
                "Instructions of the in-process workloads, counted by valgrind's callgrind, once \
                 each (unlike times, the counts do not depend on the machine's load; they move \
                 by a few hundred between runs with hash seeds and clock readings):\n\n\
                 | Workload | Instructions |\n|---|---|"
            );
            for (what, n) in rows {
                let _ = writeln!(out, "| {what} | {n} |");
            }
            let _ = writeln!(out);
        }
        Err(e) => {
            let _ = writeln!(out, "Instruction counts not measured: {e}\n");
        }
    }
    // Idle at scale: what the pollers cost with nothing changing, nodes behind a libvirtd.
    let n = if opts.quick { 3000 } else { 9999 };
    let d = PrivateLibvirtd::start()?;
    let (_lab, m, _) = scale_mount(n, Some(&d));
    std::thread::sleep(Duration::from_secs(2));
    let secs = 5;
    let data = dir.join("perf-idle.data");
    let (cpu, top) = perf_sample(m.pid(), &data, || {
        std::thread::sleep(Duration::from_secs(secs));
    })?;
    let _ = writeln!(
        out,
        "idle, {n} instances on 3 nodes behind a libvirtd: daemon CPU {:.0} % of a core\n\n\
         ```\n{}\n```\n",
        cpu * 100.0 / secs as f64,
        top.join("\n")
    );
    Ok(out)
}

/// Runs each of `micro`'s workloads once in a child of this benchmark under valgrind's
/// callgrind, counting instructions only inside `cg_run`; returns (workload, instructions).
fn callgrind_micro(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (name, what) in MICRO_WORKLOADS {
        let out = dir.join(format!("callgrind-{name}.out"));
        let st = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--toggle-collect=*cg_run*")
            .arg(&exe)
            .args(["--bench", "--callgrind-workload", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("valgrind: {e}"))?;
        if !st.success() {
            return Err(format!("valgrind on {name}: {st}"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let n: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no instruction total in {}", out.display()))?;
        rows.push((what, group_thousands(n)));
    }
    Ok(rows)
}

/// 1234567 → "1,234,567".
fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Samples daemon `pid` with `perf record` while `work` runs; returns the daemon's CPU time
/// (seconds, from `/proc`) over `work` and the top functions by their own share of samples.
fn perf_sample(pid: u32, data: &Path, work: impl FnOnce()) -> Result<(f64, Vec<String>), String> {
    let mut rec = Command::new("perf")
        .args(["record", "-F", "2999", "-g", "-o"])
        .arg(data)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let c0 = cpu_ticks(pid);
    work();
    let c1 = cpu_ticks(pid);
    // SAFETY: SIGINT to our own perf child makes it write its data and exit.
    unsafe {
        libc::kill(rec.id() as i32, libc::SIGINT);
    }
    let _ = rec.wait();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let top: Vec<String> = String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(15)
        .map(|l| {
            let l = l.trim_end();
            let cut: String = l.chars().take(110).collect();
            cut.trim_end().to_string()
        })
        .collect();
    Ok(((c1 - c0) as f64 / hz, top))
}

// ---------------------------------------------------------------------------------------
// The report

struct Doc {
    listing: Listing,
    virsh: Virsh,
    scale: Vec<ScaleRow>,
    creates: Vec<CreateRow>,
    micro: Option<Micro>,
    profile: Result<String, String>,
    load: (String, String),
    elapsed: Duration,
}

impl Default for Doc {
    fn default() -> Self {
        Doc {
            listing: Listing::default(),
            virsh: Virsh {
                per_node: None,
                three_nodes: None,
                libvirtd: Err("not measured".into()),
                kvmfs_walk: Duration::ZERO,
            },
            scale: Vec::new(),
            creates: Vec::new(),
            micro: None,
            profile: Err("not run".into()),
            load: (String::new(), String::new()),
            elapsed: Duration::ZERO,
        }
    }
}

const BEGIN: &str =
    "<!-- bench:begin (written by scripts/bench.sh; edits here are overwritten) -->";
const END: &str = "<!-- bench:end -->";

/// Puts this run's report between its markers in the existing file, keeping everything else
/// (other benchmark commands write their own sections); appends it when there are none.
fn splice(existing: &str, report: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}\n", report.trim_end());
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{block}{}",
                &existing[..b],
                &existing[e + END.len()..].trim_start_matches('\n')
            )
        }
        _ if existing.trim().is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{}\n\n{block}", existing.trim_end()),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {}", kernel.trim())
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Doc {
    fn render(&self, opts: &Opts) -> String {
        let mut s = String::new();
        let commit = git(&["rev-parse", "--short=12", "HEAD"]);
        // The report itself is rewritten during the run: it does not count as a change.
        let dirty = !git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!docs/BENCHMARKS.md",
        ])
        .is_empty();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "{}", include_str!("bench_intro.md").trim_end());
        let _ = writeln!(s);
        let _ = writeln!(s, "### This run\n");
        let _ = writeln!(s, "- Machine: {}", machine());
        let _ = writeln!(s, "- Date: {date}");
        let _ = writeln!(
            s,
            "- Commit: `{commit}`{}",
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "- Load average before and after: {} / {}; the run took {:.0} s{}",
            self.load.0,
            self.load.1,
            self.elapsed.as_secs_f64(),
            if opts.quick { " (`--quick`)" } else { "" }
        );
        let _ = writeln!(
            s,
            "- Wall-clock times are medians of {} runs, taken in turns across the compared \
             trees; the machine is shared with other work, so expect noise of tens of percent.",
            opts.runs()
        );
        let _ = writeln!(s);

        let _ = writeln!(s, "### Listing and reading: 300 instances on 3 nodes\n");
        let _ = writeln!(
            s,
            "In-process: `walk` is `readdir` of `/instances` with an `lstat` of each entry (what \
             `ls -l` does) and a `stat` of every `status` file; `read` opens, reads to the end \
             and closes every `status` file. As commands: `ls -l` plus one `stat -c %s` of the \
             300 `status` files; `cat` of the 300 files.\n"
        );
        let _ = writeln!(
            s,
            "| Workload | In-process | As commands | Per instance (in-process) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for (name, inproc, cmd, per) in &self.listing.rows {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                ms(*inproc),
                ms(*cmd),
                us(*per)
            );
        }
        let find = |k: &str| self.listing.rows.iter().find(|r| r.0 == k);
        if let (Some(wk), Some(wt), Some(rk), Some(rt)) = (
            find("walk: kvmfs"),
            find("walk: tmpfs"),
            find("read: kvmfs"),
            find("read: tmpfs"),
        ) {
            let _ = writeln!(
                s,
                "\nkvmfs / tmpfs: walk {} in-process ({} as commands), read {} ({} as commands).",
                ratio(wk.1, wt.1),
                ratio(wk.2, wt.2),
                ratio(rk.1, rt.1),
                ratio(rk.2, rt.2)
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "### Against `virsh list --all`\n");
        let _ = writeln!(s, "| What | Time |");
        let _ = writeln!(s, "|---|---|");
        if let Some(t) = self.virsh.per_node {
            let _ = writeln!(
                s,
                "| `virsh list --all`, one test-driver node of 100 domains | {} |",
                ms(t)
            );
        }
        if let Some(t) = self.virsh.three_nodes {
            let _ = writeln!(
                s,
                "| `virsh list --all` on each of the 3 nodes (one listing of the original) | {} |",
                ms(t)
            );
        }
        match &self.virsh.libvirtd {
            Ok(t) => {
                let _ = writeln!(
                    s,
                    "| `virsh list --all` through a private libvirtd, 300 domains (test driver) | {} |",
                    ms(*t)
                );
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "| `virsh list --all`, private libvirtd, 300 domains | not measured: {} |",
                    e.replace(['\n', '|'], " ")
                );
            }
        }
        let _ = writeln!(
            s,
            "| kvmfs walk (in-process, 300 instances), same run | {} |",
            ms(self.virsh.kvmfs_walk)
        );
        let best_virsh = [
            self.virsh.per_node,
            self.virsh.libvirtd.as_ref().ok().copied(),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(v) = best_virsh {
            let _ = writeln!(
                s,
                "\nThe kvmfs walk is {} faster than the fastest single `virsh list --all` above.",
                ratio(v, self.virsh.kvmfs_walk)
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "### Scale\n");
        let _ = writeln!(
            s,
            "Managed instances (a `ready` row per domain, its disk and seed volumes in the \
             node's pool) on 3 test-driver nodes. Walk and read \
             as above; RSS is the daemon's `VmRSS` after the walks; idle CPU is the daemon's \
             CPU time per second over 5 s with nothing changing (the pollers' cost). Nodes \
             *in the daemon*: libvirt's test driver runs inside kvmfs, so the RSS includes the \
             simulated nodes themselves (libvirt's parsed definition of every domain); \
             *behind libvirtd*: the same node files served by a private libvirtd, as real \
             nodes are, so the RSS is kvmfs's own.\n"
        );
        let _ = writeln!(
            s,
            "| Instances | Nodes | Walk | Walk per instance | Read all | Read per instance | Daemon RSS | Idle CPU | Mount + first listing |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.scale {
            let n = r.instances.max(1) as u32;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.1} MB | {:.0} % | {:.1} s |",
                r.instances,
                r.nodes,
                ms(r.walk),
                us(r.walk / n),
                ms(r.read),
                us(r.read / n),
                r.rss_kib as f64 / 1024.0,
                r.idle_cpu * 100.0,
                r.mount_secs
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "### Creates\n");
        let _ = writeln!(
            s,
            "16 writer threads, each `mkdir`, write `spec.json` (`{{\"vcpus\":1,\"ram_mb\":128,\"disk_gb\":1}}`) \
             and poll `status` until `running`; then 16 threads `rmdir` them all. Test-driver \
             nodes (five of them: the test driver's pools hold 100 GiB); the time runs from the \
             first `mkdir` to the last `running`. The last row starts with 10,000 managed \
             instances there (2,000 per node, with their volumes; the nodes run in the daemon, \
             with a libvirt deadline of 30 s).\n"
        );
        let _ = writeln!(
            s,
            "| Database | Instances there before | Created | To running | Creates/s | rmdir all | Deletes/s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &self.creates {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} s | {:.0} | {:.2} s | {:.0} |",
                r.db,
                r.present,
                r.n,
                r.elapsed.as_secs_f64(),
                r.n as f64 / r.elapsed.as_secs_f64(),
                r.delete.as_secs_f64(),
                r.n as f64 / r.delete.as_secs_f64()
            );
        }
        let _ = writeln!(s);

        if let Some(m) = &self.micro {
            let _ = writeln!(s, "### Placement and views\n");
            let _ = writeln!(s, "| What | Median |");
            let _ = writeln!(s, "|---|---|");
            for (what, time) in [
                (
                    "Placement of one instance over 100 nodes (`placement::choose`)",
                    us(m.place_100),
                ),
                (
                    "Building a view of 10,000 instances from scratch (`view::build`)",
                    ms(m.build_10k),
                ),
                (
                    "Rebuilding it when only node numbers moved",
                    us(m.rebuild_10k_nodes_only),
                ),
                (
                    "Rebuilding it when one domain changed: that instance alone",
                    us(m.rebuild_10k_one_changed),
                ),
                (
                    "Rebuilding it when one domain changed, every instance (the way before)",
                    ms(m.rebuild_10k_all_changed),
                ),
            ] {
                let _ = writeln!(s, "| {what} | {time} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "### Where the daemon's CPU goes (perf)\n");
        match &self.profile {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "`perf record` of the daemon while the walk and the read of 300 instances \
                     repeat, functions by their own share of the samples (kernel functions are \
                     `[k]`); the daemon's CPU time per round comes from `/proc`.\n\n{p}"
                );
            }
            Err(e) => {
                let _ = writeln!(s, "Not run in this run ({e}); run with `--profile`.\n");
            }
        }
        let _ = writeln!(s, "{}", include_str!("bench_notes.md").trim_end());
        s
    }
}

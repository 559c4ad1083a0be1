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
//! - `cat /metrics/kvmfs.prom` and the Zabbix discovery file at 300 and 10,000 instances,
//!   with the series count (its own section of the report, `--only metrics`);
//! - domain events: how soon a change behind kvmfs's back shows, and the idle cost at
//!   10,000 instances with and without whole listings at every poll (`--only events`);
//! - optionally, where the daemon's CPU goes, sampled with `perf` (`--profile`).
//!
//! Wall-clock numbers are medians of several runs; the machine is shared, so they are noisy.
//! It writes `docs/BENCHMARKS.md` (or `--out FILE`). Nothing here asserts on time.
//!
//! Under `cargo test --all-targets` it is built and does nothing (it only runs with `--bench`).

#[path = "../../tests/common/mod.rs"]
mod common;
mod creates;
mod doc;
mod events;
mod lab;
mod listing;
mod metrics;
mod micro;
mod profile;
mod scale;
mod util;
mod virsh;

use std::path::PathBuf;
use std::time::Instant;

pub use creates::*;
pub use doc::*;
pub use events::*;
pub use kvmfs::testnode::SimNode;
pub use lab::*;
pub use listing::*;
pub use metrics::*;
pub use micro::*;
pub use profile::*;
pub use scale::*;
pub use util::*;
pub use virsh::*;

pub const KVMFS: &str = env!("CARGO_BIN_EXE_kvmfs");

pub struct Opts {
    pub quick: bool,
    /// Only these sections (`--only listing,creates`); all when empty.
    pub only: Vec<String>,
    pub out: PathBuf,
    pub profile: bool,
    /// Where `--profile` keeps its `perf.data` files (`--perf-dir DIR`), for `perf report`.
    pub perf_dir: Option<PathBuf>,
    /// Set when this run is the child that valgrind's callgrind counts: it runs this one
    /// workload of `micro` once and writes nothing (`--callgrind-workload NAME`).
    pub callgrind_workload: Option<String>,
    pub scales: Vec<usize>,
    pub creates: usize,
}

impl Opts {
    pub fn parse() -> Option<Opts> {
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

    pub fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    pub fn runs(&self) -> usize {
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
    // The monitoring files have a block of their own: `--only metrics` rewrites only it.
    let main_sections = ["listing", "virsh", "scale", "creates", "micro"]
        .iter()
        .any(|s| opts.wants(s))
        || opts.profile;
    let save = |doc: &mut Doc| {
        doc.load = (load_before.clone(), loadavg());
        doc.elapsed = started.elapsed();
        let old = std::fs::read_to_string(&opts.out).unwrap_or_default();
        let mut new = old.clone();
        if main_sections {
            new = splice(&new, &doc.render(&opts));
        }
        if !doc.metrics.is_empty() {
            new = splice_between(&new, METRICS_BEGIN, METRICS_END, &doc.render_metrics(&opts));
        }
        if let Some(events) = &doc.events {
            new = splice_between(&new, EVENTS_BEGIN, EVENTS_END, &render_events(events));
        }
        std::fs::write(&opts.out, new).expect("write the benchmark report");
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
    if opts.wants("metrics") {
        doc.metrics = section("monitoring files", || metrics(&opts));
        save(&mut doc);
    }
    if opts.wants("events") {
        match section("domain events", || events(&opts)) {
            Ok(r) => doc.events = Some(r),
            Err(e) => eprintln!("bench: events not measured: {e}"),
        }
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

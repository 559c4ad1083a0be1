//! The report: docs/BENCHMARKS.md between its markers, with the machine, date and commit.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::*;

pub struct Doc {
    pub listing: Listing,
    pub virsh: Virsh,
    pub scale: Vec<ScaleRow>,
    pub creates: Vec<CreateRow>,
    pub micro: Option<Micro>,
    pub metrics: Vec<MetricsRow>,
    pub events: Option<EventsReport>,
    pub profile: Result<String, String>,
    pub load: (String, String),
    pub elapsed: Duration,
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
            metrics: Vec::new(),
            events: None,
            profile: Err("not run".into()),
            load: (String::new(), String::new()),
            elapsed: Duration::ZERO,
        }
    }
}

pub const BEGIN: &str =
    "<!-- bench:begin (written by scripts/bench.sh; edits here are overwritten) -->";

pub const END: &str = "<!-- bench:end -->";

pub const METRICS_BEGIN: &str =
    "<!-- bench-metrics:begin (written by scripts/bench.sh --only metrics, or a full run) -->";

pub const METRICS_END: &str = "<!-- bench-metrics:end -->";

pub const EVENTS_BEGIN: &str =
    "<!-- bench-events:begin (written by scripts/bench.sh --only events, or a full run) -->";

pub const EVENTS_END: &str = "<!-- bench-events:end -->";

/// The domain events' block: how soon a change behind kvmfs's back shows, and the idle
/// cost at 10,000 instances with and without whole listings at every poll.
pub fn render_events(r: &EventsReport) -> String {
    let mut s = String::new();
    let date = date_utc();
    let sorted = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let seen = sorted(&r.change_seen);
    let calls = sorted(&r.virsh_call);
    let pick = |v: &[Duration], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let _ = writeln!(
        s,
        "### Domain events
"
    );
    let _ = writeln!(
        s,
        "Machine: {}; date: {date}; commit `{}`.
",
        machine(),
        git(&["rev-parse", "--short=12", "HEAD"])
    );
    let _ = writeln!(
        s,
        "**A change behind kvmfs's back.** `virsh destroy test` and `virsh start test`, \
         alternately ({} times), on a private libvirtd serving the test driver's `default` \
         node, which kvmfs mounts with the default timing; the time from the `virsh` \
         command's return to `instances/test/status` reading the new state (read every \
         0.2 ms): median {}, 90th percentile {}, most {}. The `virsh` command itself took \
         {} (median). Without events a change shows at the next poll: up to `refresh_ms` \
         (500 ms) plus the poll.\n",
        seen.len(),
        ms(pick(&seen, 0.5)),
        ms(pick(&seen, 0.9)),
        ms(pick(&seen, 1.0)),
        ms(pick(&calls, 0.5)),
    );
    let _ = writeln!(
        s,
        "**Idle at 9,999 instances behind a libvirtd** (3 nodes, each a test-driver node \
         file served by a private libvirtd; `refresh_ms` 500). Idle CPU is the daemon's CPU \
         time per second over 10 s with nothing changing, after the first listings; RSS \
         is its `VmRSS` then.\n"
    );
    let _ = writeln!(s, "| Polling | Idle CPU | Daemon RSS |");
    let _ = writeln!(s, "|---|---|---|");
    for (label, cpu, rss) in &r.idle {
        let _ = writeln!(
            s,
            "| {label} | {:.1} % | {:.1} MB |",
            cpu * 100.0,
            *rss as f64 / 1024.0
        );
    }
    match &r.idle_profile {
        Ok(top) => {
            let _ = writeln!(
                s,
                "\nWhere the idle daemon's time goes with events (`perf`, 10 s):\n\n```\n{}\n```",
                top.join("\n")
            );
        }
        Err(e) => {
            let _ = writeln!(s, "\nNot profiled: {e}");
        }
    }
    s
}

/// Puts this run's report between its markers in the existing file, keeping everything else
/// (other benchmark commands write their own sections); appends it when there are none.
pub fn splice(existing: &str, report: &str) -> String {
    splice_between(existing, BEGIN, END, report)
}

/// `splice` for the block between `begin` and `end`.
pub fn splice_between(existing: &str, begin: &str, end: &str, report: &str) -> String {
    let block = format!("{begin}\n{}\n{end}\n", report.trim_end());
    match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{block}{}",
                &existing[..b],
                &existing[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ if existing.trim().is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{}\n\n{block}", existing.trim_end()),
    }
}

/// The date and time now, in UTC, as the reports give it.
pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> String {
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

pub fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Doc {
    /// The monitoring files' block: `cat` of `kvmfs.prom` and `instances.json`, sizes and
    /// series, with the machine and date of this run.
    pub fn render_metrics(&self, opts: &Opts) -> String {
        let mut s = String::new();
        let date = date_utc();
        let _ = writeln!(s, "### Monitoring files (`/metrics`)\n");
        let _ = writeln!(
            s,
            "`cat` (the command) of `/metrics/kvmfs.prom`, what node_exporter's textfile \
             collector reads at every scrape, and of `/metrics/zabbix/instances.json`, the \
             Zabbix discovery file; managed instances on 3 test-driver nodes in the daemon, \
             medians of {} runs. Both are rendered from the view at each read (the view's part \
             of `kvmfs.prom` once per view), without a call to a node or the database. \
             Machine: {}; date: {date}; commit `{}`.\n",
            opts.runs(),
            machine(),
            git(&["rev-parse", "--short=12", "HEAD"])
        );
        let _ = writeln!(
            s,
            "| Instances | `cat kvmfs.prom` | Size | Series | Per instance | Other series | `cat instances.json` | Size |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &self.metrics {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} KiB | {} | {:.0} | {} | {} | {:.1} KiB |",
                r.instances,
                ms(r.cat_prom),
                r.prom_bytes as f64 / 1024.0,
                r.series,
                r.instance_series as f64 / r.instances.max(1) as f64,
                r.series - r.instance_series,
                ms(r.cat_instances_json),
                r.instances_json_bytes as f64 / 1024.0
            );
        }
        s
    }

    pub fn render(&self, opts: &Opts) -> String {
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
        let date = date_utc();
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

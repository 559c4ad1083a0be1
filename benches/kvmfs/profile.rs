//! Where the daemon's CPU goes, sampled with `perf`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::Mounted;
use crate::*;

/// Where the daemon's CPU goes while the walk and the read repeat, during creates and while
/// idle: `perf` samples of the daemon (callgrind cannot run a FUSE daemon: valgrind holds its
/// lock across the daemon's `stat` of its own mountpoint, which only the daemon can answer),
/// and its CPU time per operation; and callgrind's instruction counts of the in-process
/// workloads of `micro` (placement, view builds).
pub fn profile(opts: &Opts) -> Result<String, String> {
    let lab = Lab::new(3, 100);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.perf_dir.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for (label, extra) in [
        ("kernel cache on", ""),
        ("kernel cache off", "[timing]\nkernel_cache_ms = 0\n"),
    ] {
        let m = Mounted::for_bench(&lab.config(extra));
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
    let m = Mounted::for_bench(&lab.config(""));
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
    let m = Mounted::for_bench(&lab.config("[timing]\nlibvirt_timeout_ms = 30000\n"));
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

/// Samples daemon `pid` with `perf record` while `work` runs; returns the daemon's CPU time
/// (seconds, from `/proc`) over `work` and the top functions by their own share of samples.
pub fn perf_sample(
    pid: u32,
    data: &Path,
    work: impl FnOnce(),
) -> Result<(f64, Vec<String>), String> {
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

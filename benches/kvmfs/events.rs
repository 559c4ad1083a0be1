//! What domain events buy: how soon a change made behind kvmfs's back shows, and what the
//! daemon costs when idle at 10,000 instances behind a libvirtd (polled for the nodes' own
//! numbers, listed whole every `full_poll_ms`), against a configuration that lists every
//! node whole at every poll (`full_poll_ms` = `refresh_ms`, as before events).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Mounted;
use crate::*;

pub struct EventsReport {
    /// From `virsh destroy` (or `start`) returning to `status` showing it: each try.
    pub change_seen: Vec<Duration>,
    /// How long each `virsh` call itself took (a process, a connection, the call).
    pub virsh_call: Vec<Duration>,
    /// (label, idle CPU share, RSS KiB) at 9,999 instances behind a libvirtd.
    pub idle: Vec<(&'static str, f64, u64)>,
    /// Where the idle daemon's time goes with events (`perf`'s top functions), if sampled.
    pub idle_profile: Result<Vec<String>, String>,
}

/// Reads `p` until it starts with `prefix` (at most 10 s).
fn wait_prefix(p: &Path, prefix: &str) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if std::fs::read_to_string(p).is_ok_and(|s| s.starts_with(prefix)) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn change_seen(report: &mut EventsReport) -> Result<(), String> {
    let d = PrivateLibvirtd::start()?;
    let uri = format!(
        "test+unix:///default?socket={}",
        d.dir.path().join("sock/libvirt-sock").display()
    );
    let m = Mounted::for_bench(&format!(
        "[[node]]\nname = 'n1'\nuri = '{uri}'\npool = 'default-pool'\n"
    ));
    let status = m.path("instances/test/status");
    if !wait_prefix(&status, "running") {
        return Err("the test domain never read running".into());
    }
    for i in 0..20 {
        let (word, want) = if i % 2 == 0 {
            ("destroy", "shutoff")
        } else {
            ("start", "running")
        };
        let t = Instant::now();
        let ok = Command::new("virsh")
            .args(["-c", &uri, word, "test"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let called = Instant::now();
        if !ok {
            return Err(format!("virsh {word} failed"));
        }
        if !wait_prefix(&status, want) {
            return Err(format!("status never read {want} after virsh {word}"));
        }
        report.change_seen.push(called.elapsed());
        report.virsh_call.push(called - t);
    }
    Ok(())
}

fn idle(
    report: &mut EventsReport,
    label: &'static str,
    timing: &str,
    profile: bool,
) -> Result<(), String> {
    let d = PrivateLibvirtd::start()?;
    let (_lab, m, _) = scale_mount_with(9999, Some(&d), timing);
    // Past the first whole listings.
    std::thread::sleep(Duration::from_secs(3));
    let c0 = cpu_ticks(m.pid());
    std::thread::sleep(Duration::from_secs(10));
    let c1 = cpu_ticks(m.pid());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    report
        .idle
        .push((label, (c1 - c0) as f64 / hz / 10.0, rss_kib(m.pid())));
    if profile {
        let data = d.dir.path().join("perf-idle-events.data");
        report.idle_profile = perf_sample(m.pid(), &data, || {
            std::thread::sleep(Duration::from_secs(10));
        })
        .map(|(_, top)| top);
    }
    Ok(())
}

pub fn events(_opts: &Opts) -> Result<EventsReport, String> {
    let mut report = EventsReport {
        change_seen: Vec::new(),
        virsh_call: Vec::new(),
        idle: Vec::new(),
        idle_profile: Err("not sampled".into()),
    };
    change_seen(&mut report)?;
    idle(
        &mut report,
        "events (default: full_poll_ms = 60000)",
        "",
        true,
    )?;
    idle(
        &mut report,
        "every poll whole (full_poll_ms = refresh_ms = 500)",
        "full_poll_ms = 500\n",
        false,
    )?;
    Ok(report)
}

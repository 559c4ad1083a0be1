//! How the walk, memory and idle CPU grow up to 10,000 instances.

use std::time::{Duration, Instant};

use crate::common::Mounted;
use crate::*;

pub struct ScaleRow {
    pub instances: usize,
    /// Where the simulated nodes live: in the daemon (libvirt's test driver in-process) or
    /// behind a private libvirtd (so the daemon's memory is its own).
    pub nodes: &'static str,
    pub walk: Duration,
    pub read: Duration,
    pub rss_kib: u64,
    pub idle_cpu: f64,
    pub mount_secs: f64,
}

pub fn scale(opts: &Opts) -> Vec<ScaleRow> {
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
pub fn scale_mount(n: usize, daemon: Option<&PrivateLibvirtd>) -> (Lab, Mounted, f64) {
    scale_mount_with(n, daemon, "")
}

/// `scale_mount` with more `[timing]` lines.
pub fn scale_mount_with(
    n: usize,
    daemon: Option<&PrivateLibvirtd>,
    timing: &str,
) -> (Lab, Mounted, f64) {
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
        extra.push_str(timing);
    } else if !timing.is_empty() {
        extra.push_str("[timing]\n");
        extra.push_str(timing);
    }
    let t = Instant::now();
    let m = Mounted::for_bench(&lab.config(&extra));
    adopt_domains(&m, 3, per_node);
    (lab, m, t.elapsed().as_secs_f64())
}

pub fn scale_row(opts: &Opts, n: usize, daemon: Option<&PrivateLibvirtd>) -> ScaleRow {
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

//! Measuring: medians, interleaved runs, the walks and reads measured, and the daemon's
//! memory and CPU.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Median of `runs` timed calls of `f`, after one untimed warm-up call.
pub fn median(runs: usize, mut f: impl FnMut()) -> Duration {
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
pub fn interleaved(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
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

pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

/// `ls -l` of the folder plus a `stat` of every `NAME/status`: what a listing tool does.
pub fn walk(dir: &Path) -> usize {
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
pub fn read_all(paths: &[PathBuf]) -> usize {
    let mut total = 0;
    let mut buf = Vec::with_capacity(256);
    for p in paths {
        buf.clear();
        let mut f = std::fs::File::open(p).expect("open status");
        total += f.read_to_end(&mut buf).expect("read status");
    }
    total
}

pub fn status_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path().join("status"))
        .collect();
    v.sort();
    v
}

pub fn run_quiet(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run a command");
    assert!(st.success(), "{cmd:?} failed");
}

pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1234567 → "1,234,567".
pub fn group_thousands(n: u64) -> String {
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

//! Listing and reading: `ls -l` and a stat of every `status`, and reading every `status`,
//! on kvmfs (caching on and off) and on tmpfs, in-process and as commands.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::Mounted;
use crate::*;

#[derive(Default)]
pub struct Listing {
    pub rows: Vec<(String, Duration, Duration, Duration)>,
    pub daemon_rss_kib: u64,
}

pub fn listing(opts: &Opts) -> Listing {
    let lab = Lab::new(3, 100);
    let cached = Mounted::for_bench(&lab.config(""));
    adopt_domains(&cached, 3, 100);
    let uncached = Mounted::for_bench(&lab.config("[timing]\nkernel_cache_ms = 0\n"));
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

//! The monitoring files at scale: `cat /metrics/kvmfs.prom` (what node_exporter's textfile
//! collector does at each scrape) and `cat /metrics/zabbix/instances.json` at 300 and
//! 10,000 managed instances, with their sizes and series counts (the cardinality).

use std::process::Command;
use std::time::Duration;

use crate::*;

pub struct MetricsRow {
    pub instances: usize,
    pub cat_prom: Duration,
    pub prom_bytes: usize,
    /// Samples in the file (lines that are neither HELP nor TYPE).
    pub series: usize,
    /// Of those, the ones named after an instance (`kvmfs_instance_*`).
    pub instance_series: usize,
    pub cat_instances_json: Duration,
    pub instances_json_bytes: usize,
}

pub fn metrics(opts: &Opts) -> Vec<MetricsRow> {
    let sizes: &[usize] = if opts.quick {
        &[300, 1000]
    } else {
        &[300, 10_000]
    };
    sizes.iter().map(|&n| metrics_row(opts, n)).collect()
}

fn cat(path: &std::path::Path) {
    run_quiet(Command::new("cat").arg(path));
}

fn metrics_row(opts: &Opts, n: usize) -> MetricsRow {
    let (_lab, m, _) = scale_mount(n, None);
    let prom = m.path("metrics/kvmfs.prom");
    let json = m.path("metrics/zabbix/instances.json");
    let runs = opts.runs();
    let cat_prom = median(runs, || cat(&prom));
    let cat_instances_json = median(runs, || cat(&json));
    let text = std::fs::read_to_string(&prom).expect("read kvmfs.prom");
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    MetricsRow {
        instances: m
            .path("instances")
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0),
        cat_prom,
        prom_bytes: text.len(),
        series: samples.len(),
        instance_series: samples
            .iter()
            .filter(|l| l.starts_with("kvmfs_instance_"))
            .count(),
        cat_instances_json,
        instances_json_bytes: std::fs::metadata(&json)
            .map(|m| m.len() as usize)
            .unwrap_or(0),
    }
}

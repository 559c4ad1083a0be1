//! `/metrics/kvmfs.prom`: the cluster and the daemon in Prometheus's text format (0.0.4),
//! as node_exporter's textfile collector reads it. The cluster's part is rendered from one
//! view (no backend call), the daemon's part from its counters (`metrics`).
//!
//! Invariants: every family has `# HELP` and `# TYPE` and its samples together, once; no
//! sample carries a timestamp (the textfile collector skips files with them); label values
//! are escaped; the families are there with zero nodes and zero instances too. Per instance
//! there are exactly `SERIES_PER_INSTANCE` series: the state is a label of one gauge worth 1
//! (`kvmfs_instance_state{state="running"} 1`), so an instance changing state replaces one
//! series instead of flipping one of fourteen.

use std::fmt::Write as _;

use crate::cluster::view::{INSTANCE_STATES, View};
use crate::metrics::{FuseOp, HistogramSnapshot, Metrics, build_info};

/// Series each instance adds: its state, vCPUs and memory.
pub const SERIES_PER_INSTANCE: usize = 3;

/// Prometheus text: families written one after another.
struct Out {
    s: String,
}

/// A label value, escaped as the text format wants: `\`, `"` and newlines.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes `\` and newlines (help texts here have neither; kept safe).
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                let _ = write!(self.s, "{k}=\"{}\"", escape_label(v));
            }
            self.s.push('}');
        }
        let _ = writeln!(self.s, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            let le = format!("{le}");
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count);
        self.sample(&format!("{name}_sum"), labels, Number(h.sum_seconds));
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// A float as the text format takes it (finite values as Rust prints them; never `NaN`).
struct Number(f64);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_finite() {
            write!(f, "{}", self.0)
        } else {
            write!(f, "0")
        }
    }
}

const MIB: u64 = 1 << 20;

/// The cluster's families, from one view: nodes and instances.
pub fn view_part(v: &View) -> String {
    let mut o = Out { s: String::new() };
    let nodes: Vec<_> = v.nodes.values().collect();

    o.family(
        "kvmfs_cluster_degraded",
        "gauge",
        "1 when /status reads degraded (database unreachable or a node offline), else 0.",
    );
    o.sample(
        "kvmfs_cluster_degraded",
        &[],
        u8::from(v.root_status() != "ok"),
    );
    o.family(
        "kvmfs_database_up",
        "gauge",
        "1 when the last database poll succeeded, else 0.",
    );
    o.sample("kvmfs_database_up", &[], u8::from(v.db_error.is_none()));

    type NodeValue = fn(&crate::cluster::view::NodeView) -> u64;
    let per_node: [(&str, &str, NodeValue); 8] = [
        (
            "kvmfs_node_up",
            "1 when the node's last poll succeeded (online), else 0.",
            |n| u64::from(n.online),
        ),
        (
            "kvmfs_node_vcpus",
            "CPUs the node has (libvirt's node info).",
            |n| u64::from(n.cpus),
        ),
        (
            "kvmfs_node_vcpus_committed",
            "vCPUs held by instances on the node.",
            |n| n.committed_vcpus,
        ),
        (
            "kvmfs_node_vcpus_capacity",
            "vCPUs placement may hand out on the node: CPUs times cpu_overcommit.",
            |n| n.capacity_vcpus,
        ),
        (
            "kvmfs_node_memory_bytes",
            "The node's physical memory in bytes.",
            |n| n.memory_total_mb.saturating_mul(MIB),
        ),
        (
            "kvmfs_node_memory_committed_bytes",
            "Memory held by instances on the node, in bytes.",
            |n| n.committed_ram_mb.saturating_mul(MIB),
        ),
        (
            "kvmfs_node_memory_capacity_bytes",
            "Memory placement may hand out on the node (memory times ram_overcommit), in bytes.",
            |n| n.capacity_ram_mb.saturating_mul(MIB),
        ),
        (
            "kvmfs_node_memory_free_bytes",
            "The node's free memory in bytes (measured, or total minus committed; see memory_source in info.json).",
            |n| n.memory_free_mb.saturating_mul(MIB),
        ),
    ];
    for (name, help, value) in per_node {
        o.family(name, "gauge", help);
        for n in &nodes {
            o.sample(name, &[("node", &n.name)], value(n));
        }
    }
    o.family(
        "kvmfs_node_score",
        "gauge",
        "Placement score of the node, 0 to 1 (0 when offline).",
    );
    for n in &nodes {
        o.sample("kvmfs_node_score", &[("node", &n.name)], Number(n.score));
    }

    // Instances by node and state, every state listed for every node (zeros included), so
    // a rule or trigger on one has a series from the start.
    let mut by_node: std::collections::BTreeMap<&str, [u64; INSTANCE_STATES.len()]> = nodes
        .iter()
        .map(|n| (n.name.as_str(), [0; INSTANCE_STATES.len()]))
        .collect();
    for i in v.instances.values() {
        let Some(node) = i.node.as_deref() else {
            continue;
        };
        let word = i.state_word();
        if let (Some(counts), Some(s)) = (
            by_node.get_mut(node),
            INSTANCE_STATES.iter().position(|w| *w == word),
        ) {
            counts[s] += 1;
        }
    }
    o.family(
        "kvmfs_node_instances",
        "gauge",
        "Instances on the node by state (the first word of their status file).",
    );
    for (node, counts) in &by_node {
        for (state, n) in INSTANCE_STATES.iter().zip(counts) {
            o.sample(
                "kvmfs_node_instances",
                &[("node", node), ("state", state)],
                n,
            );
        }
    }

    o.family(
        "kvmfs_instance_state",
        "gauge",
        "1 for each instance, its state (the first word of its status file) as the state label.",
    );
    for (name, i) in v.instances.iter() {
        let node = i.node.as_deref().unwrap_or("");
        o.sample(
            "kvmfs_instance_state",
            &[
                ("instance", name),
                ("node", node),
                ("state", i.state_word()),
            ],
            1,
        );
    }
    o.family(
        "kvmfs_instance_vcpus",
        "gauge",
        "vCPUs of the instance (its domain's, else its spec's).",
    );
    for (name, i) in v.instances.iter() {
        let node = i.node.as_deref().unwrap_or("");
        o.sample(
            "kvmfs_instance_vcpus",
            &[("instance", name), ("node", node)],
            i.vcpus(),
        );
    }
    o.family(
        "kvmfs_instance_memory_bytes",
        "gauge",
        "Memory of the instance in bytes (its domain's maximum, else its spec's).",
    );
    for (name, i) in v.instances.iter() {
        let node = i.node.as_deref().unwrap_or("");
        o.sample(
            "kvmfs_instance_memory_bytes",
            &[("instance", name), ("node", node)],
            i.memory_bytes(),
        );
    }
    o.s
}

/// The daemon's families, from its counters.
pub fn daemon_part(m: &Metrics) -> String {
    let mut o = Out { s: String::new() };
    let (version, commit) = build_info();
    o.family(
        "kvmfs_build_info",
        "gauge",
        "1, with the version and commit of the running kvmfs as labels.",
    );
    o.sample(
        "kvmfs_build_info",
        &[("version", version), ("commit", commit)],
        1,
    );
    o.family(
        "kvmfs_fuse_operations_total",
        "counter",
        "FUSE operations served, by kind.",
    );
    for op in FuseOp::ALL {
        o.sample(
            "kvmfs_fuse_operations_total",
            &[("op", op.name())],
            m.ops(op),
        );
    }
    o.family(
        "kvmfs_fuse_errors_total",
        "counter",
        "FUSE operations answered with an error, by errno.",
    );
    for (_, name, n) in m.errors() {
        o.sample("kvmfs_fuse_errors_total", &[("errno", &name)], n);
    }
    let counters = [
        (
            "kvmfs_instances_created_total",
            "Instances made (mkdir in /instances).",
            m.instances_created.get(),
        ),
        (
            "kvmfs_instances_deleted_total",
            "Instances deleted (rmdir, or a delete the reconciliation finished).",
            m.instances_deleted.get(),
        ),
        (
            "kvmfs_builds_failed_total",
            "Builds that failed and were undone.",
            m.builds_failed.get(),
        ),
        (
            "kvmfs_migrations_failed_total",
            "Migrations that left the instance on the node it was on.",
            m.migrations_failed.get(),
        ),
        (
            "kvmfs_reconcile_repairs_total",
            "What the reconciliation repaired: builds finished or undone, deletes finished, stray addresses released.",
            m.reconcile_repairs.get(),
        ),
        (
            "kvmfs_database_failovers_total",
            "Moves from the primary database to the replica.",
            m.db_failovers(),
        ),
    ];
    for (name, help, n) in counters {
        o.family(name, "counter", help);
        o.sample(name, &[], n);
    }
    o.family(
        "kvmfs_build_duration_seconds",
        "histogram",
        "Time builds took on each node, from the commit of spec.json to ready or failed.",
    );
    for n in m.nodes() {
        o.histogram(
            "kvmfs_build_duration_seconds",
            &[("node", &n.name)],
            &n.builds.snapshot(),
        );
    }
    o.family(
        "kvmfs_migration_duration_seconds",
        "histogram",
        "Time migrations that arrived took, from the write of node to ready on the target.",
    );
    o.histogram(
        "kvmfs_migration_duration_seconds",
        &[],
        &m.migrations.snapshot(),
    );
    o.family(
        "kvmfs_backend_call_duration_seconds",
        "histogram",
        "Time calls to each node's libvirt took (polls, re-reads, actions), up to their deadline.",
    );
    for n in m.nodes() {
        o.histogram(
            "kvmfs_backend_call_duration_seconds",
            &[("node", &n.name)],
            &n.backend_calls.snapshot(),
        );
    }
    o.family(
        "kvmfs_database_poll_duration_seconds",
        "histogram",
        "Time each database poll took (the fingerprint, and the vm table when it moved).",
    );
    o.histogram(
        "kvmfs_database_poll_duration_seconds",
        &[],
        &m.db_poll.snapshot(),
    );
    o.s
}

/// The whole file (the tree keeps the view's part per view: `Tree::metrics_file`).
#[cfg(test)]
pub fn render(v: &View, m: &Metrics) -> Vec<u8> {
    let mut s = view_part(v);
    s.push_str(&daemon_part(m));
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Counter;

    /// Checks the text format as the exposition format defines it (what promtool's linter
    /// and node_exporter's parser need): HELP and TYPE once per family, before its samples,
    /// which are contiguous; names and labels well-formed; values numbers; no timestamps.
    /// Returns the samples as (name, labels, value).
    fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut done: BTreeSet<String> = BTreeSet::new();
        assert!(text.ends_with('\n'), "ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(helped.insert(name.clone()), "HELP twice: {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap().to_string();
                let kind = it.next().unwrap().to_string();
                assert!(
                    ["gauge", "counter", "histogram"].contains(&kind.as_str()),
                    "{line}"
                );
                assert!(helped.contains(&name), "TYPE before HELP: {name}");
                assert!(typed.insert(name.clone(), kind).is_none(), "TYPE twice");
                if let Some(c) = current.replace(name.clone()) {
                    done.insert(c);
                }
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
            let family = current.clone().expect("a sample before any TYPE");
            let ok = match typed[&family].as_str() {
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string()),
                _ => name == family,
            };
            assert!(ok, "{name} outside its family {family}");
            assert!(!done.contains(&family), "{family} split");
            let mut map = BTreeMap::new();
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, r) = rest.split_once("=\"").expect("label=\"");
                // The value runs to the first unescaped quote.
                let mut v = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (_, '\\') => match chars.next().expect("escape").1 {
                            'n' => v.push('\n'),
                            c @ ('\\' | '"') => v.push(c),
                            c => panic!("bad escape \\{c}"),
                        },
                        (i, '"') => break i,
                        (_, c) => v.push(c),
                    }
                };
                map.insert(k.to_string(), v);
                rest = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
            }
            out.push((name.to_string(), map, value));
        }
        out
    }

    fn metrics() -> Metrics {
        Metrics::new(["n1".to_string()], Arc::new(Counter::new()))
    }

    #[test]
    fn zero_instances_and_zero_nodes_give_every_family() {
        let text = String::from_utf8(render(&View::default(), &metrics())).unwrap();
        let samples = parse(&text);
        for family in [
            "kvmfs_node_up",
            "kvmfs_node_instances",
            "kvmfs_instance_state",
            "kvmfs_instance_vcpus",
            "kvmfs_fuse_operations_total",
            "kvmfs_build_duration_seconds",
            "kvmfs_database_poll_duration_seconds",
            "kvmfs_database_failovers_total",
            "kvmfs_build_info",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        assert!(
            samples
                .iter()
                .all(|(n, _, _)| !n.starts_with("kvmfs_instance_"))
        );
        let count = samples
            .iter()
            .find(|(n, _, _)| n == "kvmfs_database_poll_duration_seconds_count")
            .unwrap();
        assert_eq!(count.2, 0.0);
    }

    #[test]
    fn nodes_and_instances_with_odd_names_are_escaped_and_counted() {
        use crate::cluster::view::fixtures::{domain, online, probe, view_of};
        use crate::hv::DomainState;
        let mut down = online("n2", probe(4, 4096), vec![]);
        down.status = crate::cluster::view::NodeStatus::Offline("gone".into());
        let rig = view_of(&[
            online(
                "n1",
                probe(8, 16384),
                vec![
                    domain("plain", 2, 1024, DomainState::Running),
                    domain("we\"ird\\na\nme", 1, 512, DomainState::Shutoff),
                ],
            ),
            down,
        ]);
        let m = metrics();
        m.op(FuseOp::Read);
        m.error(libc::ENOENT);
        m.db_poll.observe(std::time::Duration::from_millis(3));
        let text = String::from_utf8(render(&rig, &m)).unwrap();
        let samples = parse(&text);
        let find = |name: &str, label: &str, value: &str| {
            samples
                .iter()
                .filter(|(n, l, _)| n == name && l.get(label).map(String::as_str) == Some(value))
                .map(|(_, l, v)| (l.clone(), *v))
                .collect::<Vec<_>>()
        };
        // Every instance has its SERIES_PER_INSTANCE series, whatever its name holds.
        for name in rig.instances.keys() {
            let n = samples
                .iter()
                .filter(|(_, l, _)| l.get("instance") == Some(name))
                .count();
            assert_eq!(n, SERIES_PER_INSTANCE, "{name:?}");
        }
        let odd = find("kvmfs_instance_state", "instance", "we\"ird\\na\nme");
        assert_eq!(odd.len(), 1, "{text}");
        assert_eq!(odd[0].1, 1.0);
        for node in rig.nodes.keys() {
            let states = find("kvmfs_node_instances", "node", node);
            assert_eq!(states.len(), INSTANCE_STATES.len());
            let total: f64 = states.iter().map(|(_, v)| v).sum();
            assert_eq!(
                total as usize,
                rig.instances
                    .values()
                    .filter(|i| i.node.as_deref() == Some(node))
                    .count()
            );
        }
        assert_eq!(find("kvmfs_fuse_operations_total", "op", "read")[0].1, 1.0);
        assert_eq!(find("kvmfs_fuse_errors_total", "errno", "ENOENT")[0].1, 1.0);
        // Histograms: cumulative, +Inf equal to the count.
        let buckets = find("kvmfs_database_poll_duration_seconds_bucket", "le", "+Inf");
        assert_eq!(buckets[0].1, 1.0);
        assert!(!text.contains("NaN"));
    }

    #[test]
    fn label_values_escape_backslashes_quotes_and_newlines() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("ünï"), "ünï");
    }
}

//! File contents: which files each kind of folder holds and the bytes each one reads as.
//! Text files end with a newline; JSON files are pretty-printed and end with a newline.

use crate::cluster::view::{ImageView, InstanceView, NetworkView, NodeView, View};
use crate::config::Flavor;

/// The kinds of file in the tree. The index is part of the inode number: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Info,
    Status,
    Node,
    Ip,
    Error,
    Spec,
    SshKey,
    Ctl,
    Nodes,
    Size,
    Vcpus,
    RamMb,
}

const ALL: [FileKind; 12] = [
    FileKind::Info,
    FileKind::Status,
    FileKind::Node,
    FileKind::Ip,
    FileKind::Error,
    FileKind::Spec,
    FileKind::SshKey,
    FileKind::Ctl,
    FileKind::Nodes,
    FileKind::Size,
    FileKind::Vcpus,
    FileKind::RamMb,
];

impl FileKind {
    pub fn index(self) -> u64 {
        match self {
            FileKind::Info => 0,
            FileKind::Status => 1,
            FileKind::Node => 2,
            FileKind::Ip => 3,
            FileKind::Error => 4,
            FileKind::Spec => 5,
            FileKind::SshKey => 6,
            FileKind::Ctl => 7,
            FileKind::Nodes => 8,
            FileKind::Size => 9,
            FileKind::Vcpus => 10,
            FileKind::RamMb => 11,
        }
    }

    pub fn from_index(i: u64) -> Option<FileKind> {
        ALL.iter().copied().find(|f| f.index() == i)
    }

    pub fn file_name(self) -> &'static str {
        match self {
            FileKind::Info => "info.json",
            FileKind::Status => "status",
            FileKind::Node => "node",
            FileKind::Ip => "ip",
            FileKind::Error => "error",
            FileKind::Spec => "spec.json",
            FileKind::SshKey => "ssh_key",
            FileKind::Ctl => "ctl",
            FileKind::Nodes => "nodes",
            FileKind::Size => "size",
            FileKind::Vcpus => "vcpus",
            FileKind::RamMb => "ram_mb",
        }
    }
}

/// The files of `/metrics`. The index is part of the inode number: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricsFile {
    /// `/metrics/kvmfs.prom`: Prometheus's text format (`prom`).
    Prom,
    /// `/metrics/zabbix/nodes.json`: Zabbix discovery of the nodes (`zabbix`).
    ZabbixNodes,
    /// `/metrics/zabbix/instances.json`: Zabbix discovery of the instances.
    ZabbixInstances,
}

impl MetricsFile {
    pub const IN_METRICS: &[MetricsFile] = &[MetricsFile::Prom];
    /// In name order.
    pub const IN_ZABBIX: &[MetricsFile] = &[MetricsFile::ZabbixInstances, MetricsFile::ZabbixNodes];

    pub fn index(self) -> u64 {
        match self {
            MetricsFile::Prom => 0,
            MetricsFile::ZabbixNodes => 1,
            MetricsFile::ZabbixInstances => 2,
        }
    }

    pub fn from_index(i: u64) -> Option<MetricsFile> {
        [
            MetricsFile::Prom,
            MetricsFile::ZabbixNodes,
            MetricsFile::ZabbixInstances,
        ]
        .into_iter()
        .find(|f| f.index() == i)
    }

    pub fn file_name(self) -> &'static str {
        match self {
            MetricsFile::Prom => "kvmfs.prom",
            MetricsFile::ZabbixNodes => "nodes.json",
            MetricsFile::ZabbixInstances => "instances.json",
        }
    }
}

/// Names in an instance folder that only kvmfs's own files may have.
pub fn is_reserved_instance_name(name: &str) -> bool {
    name == super::snapshots::SNAPSHOTS_DIR || MANAGED_FILES.iter().any(|f| f.file_name() == name)
}

/// Permission bits of an instance file.
pub fn instance_perm(i: &InstanceView, f: FileKind) -> u16 {
    match f {
        FileKind::Spec if i.takes_spec() => 0o644,
        FileKind::SshKey => 0o600,
        FileKind::Ctl => 0o644,
        FileKind::Node if i.managed() => 0o644,
        _ => 0o444,
    }
}

pub const NODE_FILES: &[FileKind] = &[FileKind::Ctl, FileKind::Info, FileKind::Status];
pub const NETWORK_FILES: &[FileKind] = &[FileKind::Info, FileKind::Status];
pub const IMAGE_FILES: &[FileKind] = &[FileKind::Info, FileKind::Nodes, FileKind::Size];
pub const FLAVOR_FILES: &[FileKind] = &[FileKind::Info, FileKind::RamMb, FileKind::Vcpus];
const UNMANAGED_FILES: &[FileKind] = &[
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Status,
];
/// Every file a managed instance can have. `ssh_key` comes last, so the files of an instance
/// without a key are a prefix; listings sort by name.
const MANAGED_FILES: &[FileKind] = &[
    FileKind::Ctl,
    FileKind::Error,
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Spec,
    FileKind::Status,
    FileKind::SshKey,
];

/// Every kind of file an instance folder can hold (for invalidating all of them).
pub const INSTANCE_FILE_KINDS: &[FileKind] = MANAGED_FILES;

/// The files an instance folder holds.
pub fn instance_files(i: &InstanceView) -> &'static [FileKind] {
    if !i.managed() {
        UNMANAGED_FILES
    } else if i.has_private_key() {
        MANAGED_FILES
    } else {
        &MANAGED_FILES[..MANAGED_FILES.len() - 1]
    }
}

/// The uid owning an instance's folder: its creator, or the mount's owner.
pub fn instance_uid(i: &InstanceView, default: u32) -> u32 {
    i.owner().unwrap_or(default)
}

/// Target of `nodes/<n>/instances/<i>`.
pub fn link_target(instance: &str) -> String {
    format!("../../../instances/{instance}")
}

fn line(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(b'\n');
    v
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

pub fn node_file(n: &NodeView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(n),
        FileKind::Status => line(&n.status),
        FileKind::Ctl => line(crate::cluster::actions::NodeControl::WORDS),
        _ => Vec::new(),
    }
}

pub fn instance_file(i: &InstanceView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&i.info_json()),
        FileKind::Status => line(&i.status()),
        FileKind::Node => i.node.as_deref().map(line).unwrap_or_default(),
        FileKind::Ip => {
            let mut out = Vec::new();
            for a in i.addresses() {
                out.extend(line(&a));
            }
            out
        }
        FileKind::Error => i.error_text().map(line).unwrap_or_default(),
        FileKind::Spec => i
            .spec_text()
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default(),
        // Sealed in the row: the tree opens it (`Cluster::private_key`).
        FileKind::SshKey => Vec::new(),
        FileKind::Ctl => line(crate::cluster::actions::Control::WORDS),
        FileKind::Nodes | FileKind::Size | FileKind::Vcpus | FileKind::RamMb => Vec::new(),
    }
}

pub fn network_file(n: &NetworkView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&n.info_json()),
        FileKind::Status => line(&n.status()),
        _ => Vec::new(),
    }
}

pub fn image_file(i: &ImageView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&i.info_json()),
        FileKind::Size => line(&i.size_bytes().to_string()),
        FileKind::Nodes => {
            let mut out = Vec::new();
            for (n, _, _) in &i.per_node {
                out.extend(line(n));
            }
            out
        }
        _ => Vec::new(),
    }
}

pub fn flavor_file(name: &str, fl: &Flavor, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&serde_json::json!({
            "name": name,
            "vcpus": fl.vcpus,
            "ram_mb": fl.ram_mb,
        })),
        FileKind::Vcpus => line(&fl.vcpus.to_string()),
        FileKind::RamMb => line(&fl.ram_mb.to_string()),
        _ => Vec::new(),
    }
}

/// A Zabbix discovery file (`MetricsFile::Prom` is rendered by the tree, with the counters;
/// see `Tree::metrics_file`).
pub fn zabbix_file(v: &View, f: MetricsFile) -> Vec<u8> {
    match f {
        MetricsFile::ZabbixNodes => super::zabbix::nodes(v),
        MetricsFile::ZabbixInstances => super::zabbix::instances(v),
        MetricsFile::Prom => Vec::new(),
    }
}

/// `/status`: `ok`, or `degraded: ` and what is wrong (the database, offline nodes).
pub fn root_status(v: &View) -> Vec<u8> {
    line(&v.root_status())
}

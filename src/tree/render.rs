//! File contents: which files each kind of folder holds and the bytes each one reads as.
//! Text files end with a newline; JSON files are pretty-printed and end with a newline.

use crate::cluster::view::{InstanceView, NetworkView, NodeView};

/// The kinds of file in the tree. The index is part of the inode number: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Info,
    Status,
    Node,
    Ip,
    Error,
}

const ALL: [FileKind; 5] = [
    FileKind::Info,
    FileKind::Status,
    FileKind::Node,
    FileKind::Ip,
    FileKind::Error,
];

impl FileKind {
    pub fn index(self) -> u64 {
        match self {
            FileKind::Info => 0,
            FileKind::Status => 1,
            FileKind::Node => 2,
            FileKind::Ip => 3,
            FileKind::Error => 4,
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
        }
    }

    pub fn perm(self) -> u16 {
        0o444
    }
}

pub const NODE_FILES: &[FileKind] = &[FileKind::Info, FileKind::Status];
pub const NETWORK_FILES: &[FileKind] = &[FileKind::Info, FileKind::Status];
const UNMANAGED_FILES: &[FileKind] = &[FileKind::Info, FileKind::Ip, FileKind::Node, FileKind::Status];
const MANAGED_FILES: &[FileKind] = &[
    FileKind::Error,
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Status,
];

/// The files an instance folder holds.
pub fn instance_files(i: &InstanceView) -> &'static [FileKind] {
    if i.managed() {
        MANAGED_FILES
    } else {
        UNMANAGED_FILES
    }
}

/// The uid owning an instance's folder: its creator, or the mount's owner.
pub fn instance_uid(i: &InstanceView, default: u32) -> u32 {
    i.row
        .as_ref()
        .and_then(|r| u32::try_from(r.owner_uid).ok())
        .unwrap_or(default)
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
        FileKind::Error => i
            .row
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .filter(|e| !e.is_empty())
            .map(line)
            .unwrap_or_default(),
    }
}

pub fn network_file(n: &NetworkView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&n.info_json()),
        FileKind::Status => line(&n.status()),
        _ => Vec::new(),
    }
}

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
    Spec,
    SshKey,
    Ctl,
}

const ALL: [FileKind; 8] = [
    FileKind::Info,
    FileKind::Status,
    FileKind::Node,
    FileKind::Ip,
    FileKind::Error,
    FileKind::Spec,
    FileKind::SshKey,
    FileKind::Ctl,
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
        }
    }
}

/// Whether an instance still takes a (new) spec: a draft, or a build that failed.
pub fn takes_spec(i: &InstanceView) -> bool {
    i.row
        .as_ref()
        .is_some_and(|r| matches!(r.state.as_str(), "draft" | "failed"))
}

/// Permission bits of an instance file.
pub fn instance_perm(i: &InstanceView, f: FileKind) -> u16 {
    match f {
        FileKind::Spec if takes_spec(i) => 0o644,
        FileKind::SshKey => 0o600,
        FileKind::Ctl => 0o644,
        _ => 0o444,
    }
}

pub const NODE_FILES: &[FileKind] = &[FileKind::Info, FileKind::Status];
pub const NETWORK_FILES: &[FileKind] = &[FileKind::Info, FileKind::Status];
const UNMANAGED_FILES: &[FileKind] = &[
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Status,
];
const MANAGED_FILES: &[FileKind] = &[
    FileKind::Ctl,
    FileKind::Error,
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Spec,
    FileKind::Status,
];
const MANAGED_FILES_WITH_KEY: &[FileKind] = &[
    FileKind::Ctl,
    FileKind::Error,
    FileKind::Info,
    FileKind::Ip,
    FileKind::Node,
    FileKind::Spec,
    FileKind::SshKey,
    FileKind::Status,
];

/// The files an instance folder holds (sorted by name).
pub fn instance_files(i: &InstanceView) -> &'static [FileKind] {
    match &i.row {
        None => UNMANAGED_FILES,
        Some(r) if r.ssh_private_key.is_some() => MANAGED_FILES_WITH_KEY,
        Some(_) => MANAGED_FILES,
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
        FileKind::Spec => i
            .row
            .as_ref()
            .and_then(|r| r.spec.clone())
            .map(String::into_bytes)
            .unwrap_or_default(),
        FileKind::SshKey => i
            .row
            .as_ref()
            .and_then(|r| r.ssh_private_key.clone())
            .map(String::into_bytes)
            .unwrap_or_default(),
        FileKind::Ctl => line(crate::cluster::actions::Control::WORDS),
    }
}

pub fn network_file(n: &NetworkView, f: FileKind) -> Vec<u8> {
    match f {
        FileKind::Info => json(&n.info_json()),
        FileKind::Status => line(&n.status()),
        _ => Vec::new(),
    }
}

//! Shared storage: one NFS export (`[storage]`) that every node reaches, holding the base
//! images once and every instance's disk and seed. Nothing here mounts it: QEMU on the
//! nodes opens the files over NFS itself (libvirt network disks), and kvmfs makes and
//! deletes them from userspace — `qemu-img` for disks and seeds (`nfs::NfsShare`), a small
//! NFSv3 client of its own for looking files up, removing them and listing the export's
//! top folder with each file's size (`rpc`), since no packaged tool does that over NFS.
//! The listing is what `/images` shows with a shared storage.
//!
//! Invariants: every operation is bounded by `StorageConfig::timeout` (a silent server is
//! an error after it, never a hang), and nothing here overwrites a file: making a file
//! whose name is already on the share is `StorageError::Exists` and touches nothing, so a
//! file kvmfs did not make is never replaced (the caller then does not record it as made,
//! and never deletes it).

#[cfg(test)]
pub mod mem;
pub mod nfs;
pub mod rpc;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Errors from the shared storage. Messages are lowercase and name the share.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage {share}: {file} is already there; it is left alone")]
    Exists { share: String, file: String },
    #[error("storage {share}: {file} not found")]
    NotFound { share: String, file: String },
    #[error("storage {share} did not answer within {after:?}")]
    Timeout { share: String, after: Duration },
    #[error("storage {share}: {message}")]
    Failed { share: String, message: String },
    #[error("storage: bad file name {0:?}")]
    BadName(String),
}

/// An operation on the share; bounded by the share's timeout.
pub type ShareFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// Where a file of the share is, as the nodes' QEMU reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareLocation {
    /// `nfs`.
    pub protocol: &'static str,
    pub host: String,
    /// The file's path on the server (`/cloud/web1.disk.qcow2`): libvirt's `<source name>`.
    pub path: String,
}

/// A file of the share's top folder, as a listing found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFile {
    pub name: String,
    /// Its length in bytes (for a qcow2 image, the file's, not its virtual disk's).
    pub size_bytes: u64,
}

/// What kvmfs needs from the shared storage. File names are plain names in the export's
/// top folder (see `check_name`).
pub trait Share: Send + Sync + 'static {
    /// `nfs://HOST/export`, for messages and `/status`.
    fn describe(&self) -> String;
    /// Where file `name` is, for the domain XML.
    fn location(&self, name: &str) -> ShareLocation;
    /// Whether file `name` is on the share.
    fn exists<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool>;
    /// Makes `name` a qcow2 overlay of `base` (a qcow2 file on the share) of `gib` GiB.
    fn create_overlay<'a>(&'a self, name: &'a str, base: &'a str, gib: u64) -> ShareFuture<'a, ()>;
    /// Writes `data` as the new file `name` (the seed image).
    fn upload<'a>(&'a self, name: &'a str, data: Vec<u8>) -> ShareFuture<'a, ()>;
    /// Deletes `name`; `false` if it was not there.
    fn delete<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool>;
    /// The regular files of the export's top folder whose names `check_name` accepts,
    /// with their sizes, in name order (folders, links, hidden files and odd names are
    /// left out: no spec could name them).
    fn list(&self) -> ShareFuture<'_, Vec<ShareFile>>;
    /// Whether the share answers (its export's top folder can be looked into), within
    /// `within`: what `/status` says about it.
    fn probe(&self, within: Duration) -> ShareFuture<'_, ()>;
}

/// A file name kvmfs puts on the share: letters, digits, `.`, `_`, `-`, not starting with
/// `-` or `.` (so never an option, a hidden file, or a path).
pub fn check_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_go_to_the_share() {
        for ok in ["web1.disk.qcow2", "debian-12.qcow2", "a_b.seed.iso"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-rf", ".hidden", "a/b", "../x", "a b", "a\nb", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

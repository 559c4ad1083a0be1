//! (tests) An in-memory share with faults: the files it holds by name, and operations that
//! fail (refused, or silent past the bound) on demand, for the controller's in-process
//! tests of builds, undos, `rmdir` and `/images` on a shared storage.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Share, ShareFile, ShareFuture, ShareLocation, StorageError, check_name};

/// An operation of the share, for faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShareOp {
    Exists,
    CreateOverlay,
    Upload,
    Delete,
    List,
    Probe,
}

#[derive(Default)]
pub struct MemShare {
    /// The files by name, with their sizes in bytes.
    files: Mutex<BTreeMap<String, u64>>,
    /// Operations that fail this many more times.
    failing: Mutex<HashMap<ShareOp, u32>>,
    /// Every operation times out while set.
    silent: Mutex<bool>,
}

const SHARE: &str = "mem://st/cloud";

impl MemShare {
    pub fn with_files(files: &[&str]) -> MemShare {
        let s = MemShare::default();
        s.files
            .lock()
            .extend(files.iter().map(|f| (f.to_string(), 0)));
        s
    }

    pub fn files(&self) -> Vec<String> {
        self.files.lock().keys().cloned().collect()
    }

    /// Puts file `name` of `size` bytes there (or resizes it), as a user copying an image
    /// onto the share by hand.
    pub fn put(&self, name: &str, size: u64) {
        self.files.lock().insert(name.to_string(), size);
    }

    /// Takes file `name` away behind kvmfs's back.
    pub fn take(&self, name: &str) {
        self.files.lock().remove(name);
    }

    /// `op` fails its next `times` calls (as a server error).
    pub fn fail(&self, op: ShareOp, times: u32) {
        self.failing.lock().insert(op, times);
    }

    pub fn set_silent(&self, silent: bool) {
        *self.silent.lock() = silent;
    }

    fn check(&self, op: ShareOp) -> Result<(), StorageError> {
        if *self.silent.lock() {
            return Err(StorageError::Timeout {
                share: SHARE.into(),
                after: Duration::from_secs(1),
            });
        }
        let mut f = self.failing.lock();
        if let Some(n) = f.get_mut(&op).filter(|n| **n > 0) {
            *n -= 1;
            return Err(StorageError::Failed {
                share: SHARE.into(),
                message: format!("{op:?} failed (injected)"),
            });
        }
        Ok(())
    }

    fn make(&self, op: ShareOp, name: &str, size: u64) -> Result<(), StorageError> {
        check_name(name)?;
        self.check(op)?;
        let mut files = self.files.lock();
        if files.contains_key(name) {
            return Err(StorageError::Exists {
                share: SHARE.into(),
                file: name.to_string(),
            });
        }
        files.insert(name.to_string(), size);
        Ok(())
    }
}

impl Share for MemShare {
    fn describe(&self) -> String {
        SHARE.into()
    }

    fn location(&self, name: &str) -> ShareLocation {
        ShareLocation {
            protocol: "nfs",
            host: "st".into(),
            path: format!("/cloud/{name}"),
        }
    }

    fn exists<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool> {
        Box::pin(async move {
            check_name(name)?;
            self.check(ShareOp::Exists)?;
            Ok(self.files.lock().contains_key(name))
        })
    }

    fn create_overlay<'a>(
        &'a self,
        name: &'a str,
        base: &'a str,
        _gib: u64,
    ) -> ShareFuture<'a, ()> {
        Box::pin(async move {
            check_name(base)?;
            if !self.files.lock().contains_key(base) {
                return Err(StorageError::Failed {
                    share: SHARE.into(),
                    message: format!("qemu-img create: no backing file {base}"),
                });
            }
            // A fresh overlay holds its header only.
            self.make(ShareOp::CreateOverlay, name, 192 * 1024)
        })
    }

    fn upload<'a>(&'a self, name: &'a str, data: Vec<u8>) -> ShareFuture<'a, ()> {
        Box::pin(async move { self.make(ShareOp::Upload, name, data.len() as u64) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool> {
        Box::pin(async move {
            check_name(name)?;
            self.check(ShareOp::Delete)?;
            Ok(self.files.lock().remove(name).is_some())
        })
    }

    fn list(&self) -> ShareFuture<'_, Vec<ShareFile>> {
        Box::pin(async move {
            self.check(ShareOp::List)?;
            Ok(self
                .files
                .lock()
                .iter()
                .filter(|(name, _)| check_name(name).is_ok())
                .map(|(name, size)| ShareFile {
                    name: name.clone(),
                    size_bytes: *size,
                })
                .collect())
        })
    }

    fn probe(&self, _within: Duration) -> ShareFuture<'_, ()> {
        Box::pin(async move { self.check(ShareOp::Probe) })
    }
}

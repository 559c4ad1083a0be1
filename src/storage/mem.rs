//! (tests) An in-memory share with faults: the files it holds by name, and operations that
//! fail (refused, or silent past the bound) on demand, for the controller's in-process
//! tests of builds, undos and `rmdir` on a shared storage.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Share, ShareFuture, ShareLocation, StorageError, check_name};

/// An operation of the share, for faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShareOp {
    Exists,
    CreateOverlay,
    Upload,
    Delete,
    Probe,
}

#[derive(Default)]
pub struct MemShare {
    files: Mutex<BTreeSet<String>>,
    /// Operations that fail this many more times.
    failing: Mutex<HashMap<ShareOp, u32>>,
    /// Every operation times out while set.
    silent: Mutex<bool>,
}

const SHARE: &str = "mem://st/cloud";

impl MemShare {
    pub fn with_files(files: &[&str]) -> MemShare {
        let s = MemShare::default();
        s.files.lock().extend(files.iter().map(|f| f.to_string()));
        s
    }

    pub fn files(&self) -> Vec<String> {
        self.files.lock().iter().cloned().collect()
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

    fn make(&self, op: ShareOp, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        self.check(op)?;
        if !self.files.lock().insert(name.to_string()) {
            return Err(StorageError::Exists {
                share: SHARE.into(),
                file: name.to_string(),
            });
        }
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
            Ok(self.files.lock().contains(name))
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
            if !self.files.lock().contains(base) {
                return Err(StorageError::Failed {
                    share: SHARE.into(),
                    message: format!("qemu-img create: no backing file {base}"),
                });
            }
            self.make(ShareOp::CreateOverlay, name)
        })
    }

    fn upload<'a>(&'a self, name: &'a str, _data: Vec<u8>) -> ShareFuture<'a, ()> {
        Box::pin(async move { self.make(ShareOp::Upload, name) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> ShareFuture<'a, bool> {
        Box::pin(async move {
            check_name(name)?;
            self.check(ShareOp::Delete)?;
            Ok(self.files.lock().remove(name))
        })
    }

    fn probe(&self, _within: Duration) -> ShareFuture<'_, ()> {
        Box::pin(async move { self.check(ShareOp::Probe) })
    }
}

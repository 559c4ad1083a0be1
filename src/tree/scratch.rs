//! Scratch files: the files editors and tools create beside the one they edit (vim's `4913`
//! probe, `.spec.json.swp` and `spec.json~`, nano's backups, `spec.json.tmp` that a script
//! renames over `spec.json`). They live in memory in an instance's folder, belong to the user
//! who made them, and go away with the instance or the daemon. They are never stored or
//! sent anywhere; renaming one onto `spec.json` commits its content as the spec.
//!
//! A file belongs to one incarnation of an instance (the tree's instance id, see
//! `tree::Ino`): a folder made again under the same name starts empty. The bytes of every
//! file count against its owner's share (`[quotas] scratch_bytes`, `EDQUOT`) and
//! against the total (`MAX_TOTAL_BYTES`, `ENOSPC`), so no user can take the room others'
//! editors need.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::cluster::actions::ActionError;

/// Largest scratch file (a vim swap file for a 16 KiB spec is far smaller).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Scratch files one instance folder may hold.
pub const MAX_FILES_PER_INSTANCE: usize = 32;
/// Bytes all scratch files together may hold.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;

/// One scratch file.
#[derive(Debug, Clone)]
pub struct File {
    /// The tree's id of the instance incarnation whose folder holds it.
    pub instance: u64,
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// Every scratch file, by id (the id is part of the inode number and never reused).
pub struct Store {
    files: HashMap<u64, File>,
    by_path: HashMap<(u64, String), u64>,
    next: u64,
    total: usize,
    /// Bytes held per owner.
    by_user: HashMap<u32, usize>,
    /// Bytes one non-root user may hold (0: no limit but the total).
    per_user: usize,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(0)
    }
}

impl Store {
    /// A store where each user but root may hold `per_user` bytes (0: no per-user limit).
    pub fn new(per_user: usize) -> Store {
        Store {
            files: HashMap::new(),
            by_path: HashMap::new(),
            next: 0,
            total: 0,
            by_user: HashMap::new(),
            per_user,
        }
    }

    pub fn get(&self, id: u64) -> Option<&File> {
        self.files.get(&id)
    }

    pub fn find(&self, instance: u64, name: &str) -> Option<u64> {
        self.by_path.get(&(instance, name.to_string())).copied()
    }

    /// The scratch files of one instance, sorted by name, as (name, id).
    pub fn list(&self, instance: u64) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .files
            .iter()
            .filter(|(_, f)| f.instance == instance)
            .map(|(id, f)| (f.name.clone(), *id))
            .collect();
        v.sort();
        v
    }

    /// Creates an empty file, or returns the one of that name.
    pub fn create(
        &mut self,
        instance: u64,
        name: &str,
        mode: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, ActionError> {
        if let Some(id) = self.find(instance, name) {
            return Ok(id);
        }
        if self
            .files
            .values()
            .filter(|f| f.instance == instance)
            .count()
            >= MAX_FILES_PER_INSTANCE
        {
            return Err(ActionError::NoCapacity(format!(
                "this instance folder holds {MAX_FILES_PER_INSTANCE} scratch files already"
            )));
        }
        self.next += 1;
        let id = self.next;
        self.files.insert(
            id,
            File {
                instance,
                name: name.to_string(),
                data: Vec::new(),
                mode,
                uid,
                gid,
                mtime: SystemTime::now(),
            },
        );
        self.by_path.insert((instance, name.to_string()), id);
        Ok(id)
    }

    /// Checks that `uid` may hold `grow` more bytes, in all and in its own share.
    fn check_room(&self, uid: u32, grow: usize) -> Result<(), ActionError> {
        if grow == 0 {
            return Ok(());
        }
        if self.total + grow > MAX_TOTAL_BYTES {
            return Err(ActionError::NoCapacity(
                "scratch files of all instances are at their limit".into(),
            ));
        }
        let held = self.by_user.get(&uid).copied().unwrap_or(0);
        if uid != 0 && self.per_user > 0 && held + grow > self.per_user {
            return Err(ActionError::Quota(format!(
                "uid {uid} holds {held} bytes of scratch files; the limit is {} \
                 ([quotas] scratch_bytes)",
                self.per_user
            )));
        }
        Ok(())
    }

    /// Moves the byte count of `uid` by `new - old`.
    fn account(&mut self, uid: u32, old: usize, new: usize) {
        self.total = self.total - old + new;
        let held = self.by_user.entry(uid).or_insert(0);
        *held = *held - old + new;
        if *held == 0 {
            self.by_user.remove(&uid);
        }
    }

    /// Writes `data` at `offset`, growing the file.
    pub fn write(&mut self, id: u64, offset: u64, data: &[u8]) -> Result<(), ActionError> {
        let f = self
            .files
            .get(&id)
            .ok_or_else(|| ActionError::Stale("scratch file is gone".into()))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if end > MAX_FILE_BYTES {
            return Err(ActionError::TooBig(format!(
                "scratch files are limited to {MAX_FILE_BYTES} bytes"
            )));
        }
        let (uid, old) = (f.uid, f.data.len());
        self.check_room(uid, end.saturating_sub(old))?;
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[start..end].copy_from_slice(data);
        f.mtime = SystemTime::now();
        let new = f.data.len();
        self.account(uid, old, new);
        Ok(())
    }

    pub fn set_len(&mut self, id: u64, len: u64) -> Result<(), ActionError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FILE_BYTES {
            return Err(ActionError::TooBig(format!(
                "scratch files are limited to {MAX_FILE_BYTES} bytes"
            )));
        }
        let Some(f) = self.files.get(&id) else {
            return Err(ActionError::Stale("scratch file is gone".into()));
        };
        let (uid, old) = (f.uid, f.data.len());
        self.check_room(uid, len.saturating_sub(old))?;
        if let Some(f) = self.files.get_mut(&id) {
            f.data.resize(len, 0);
            f.mtime = SystemTime::now();
        }
        self.account(uid, old, len);
        Ok(())
    }

    pub fn set_attr(&mut self, id: u64, mode: Option<u16>, uid: Option<u32>, gid: Option<u32>) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        if let Some(m) = mode {
            f.mode = m & 0o7777;
        }
        if let Some(g) = gid {
            f.gid = g;
        }
        if let Some(u) = uid
            && u != f.uid
        {
            // The bytes follow the file to its new owner (only root gives files away).
            let (from, len) = (f.uid, f.data.len());
            f.uid = u;
            self.account(from, len, 0);
            self.account(u, 0, len);
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<File> {
        let f = self.files.remove(&id)?;
        self.by_path.remove(&(f.instance, f.name.clone()));
        self.account(f.uid, f.data.len(), 0);
        Some(f)
    }

    /// Renames a file within its instance folder, replacing a scratch file of the new name.
    pub fn rename(&mut self, id: u64, new_name: &str) {
        let Some(f) = self.files.get(&id) else { return };
        let instance = f.instance;
        if let Some(old) = self.find(instance, new_name)
            && old != id
        {
            self.remove(old);
        }
        if let Some(f) = self.files.get_mut(&id) {
            self.by_path.remove(&(f.instance, f.name.clone()));
            f.name = new_name.to_string();
            f.mtime = SystemTime::now();
            self.by_path.insert((instance, new_name.to_string()), id);
        }
    }

    /// Drops every scratch file of an instance incarnation (it was deleted).
    pub fn forget_instance(&mut self, instance: u64) {
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.instance == instance)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_truncate_rename_and_limits() {
        let mut s = Store::default();
        let a = s.create(7, "4913", 0o644, 1, 1).unwrap();
        s.write(a, 3, b"xy").unwrap();
        assert_eq!(s.get(a).unwrap().data, b"\0\0\0xy");
        s.set_len(a, 1).unwrap();
        assert_eq!(s.total, 1);
        let b = s.create(7, "b", 0o600, 1, 1).unwrap();
        s.write(b, 0, b"abc").unwrap();
        s.rename(b, "4913");
        assert_eq!(s.find(7, "4913"), Some(b));
        assert!(s.get(a).is_none(), "the replaced file is gone");
        assert_eq!(s.total, 3);
        assert!(matches!(
            s.write(b, MAX_FILE_BYTES as u64, b"z"),
            Err(ActionError::TooBig(_))
        ));
        for i in 0..MAX_FILES_PER_INSTANCE - 1 {
            s.create(7, &format!("f{i}"), 0o644, 1, 1).unwrap();
        }
        assert!(matches!(
            s.create(7, "one-more", 0o644, 1, 1),
            Err(ActionError::NoCapacity(_))
        ));
        // Another incarnation of the same name has a folder of its own.
        assert!(s.list(8).is_empty());
        s.forget_instance(7);
        assert!(s.list(7).is_empty());
        assert_eq!(s.total, 0);
        assert!(s.by_user.is_empty());
    }

    #[test]
    fn each_user_has_a_share_and_root_only_the_total() {
        let mut s = Store::new(10);
        let a = s.create(1, "a", 0o644, 1000, 1000).unwrap();
        s.write(a, 0, b"0123456789").unwrap();
        assert!(matches!(s.write(a, 10, b"x"), Err(ActionError::Quota(_))));
        assert_eq!(
            s.get(a).unwrap().data.len(),
            10,
            "a refused write keeps nothing"
        );
        let b = s.create(1, "b", 0o644, 1001, 1001).unwrap();
        s.write(b, 0, b"another user has a share of their own")
            .unwrap_err();
        s.write(b, 0, b"0123456789").unwrap();
        let r = s.create(1, "r", 0o644, 0, 0).unwrap();
        s.write(r, 0, &[0u8; 4096]).unwrap();
        // Given away by root: the bytes count against the new owner.
        s.set_attr(r, None, Some(1001), None);
        assert_eq!(s.by_user.get(&1001), Some(&4106));
        s.remove(a);
        assert_eq!(s.by_user.get(&1000), None);
        assert!(matches!(s.set_len(b, 11), Err(ActionError::Quota(_))));
        s.set_len(b, 2).unwrap();
    }
}

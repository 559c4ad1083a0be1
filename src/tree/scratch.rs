//! Scratch files: the files editors and tools create beside the one they edit (vim's `4913`
//! probe, `.spec.json.swp` and `spec.json~`, nano's backups, `spec.json.tmp` that a script
//! renames over `spec.json`). They live in memory in an instance's folder, belong to the user
//! who made them, and go away with the instance or the daemon. They are never stored or
//! sent anywhere; renaming one onto `spec.json` commits its content as the spec.

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
    pub instance: String,
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// Every scratch file, by id (the id is part of the inode number and never reused).
#[derive(Default)]
pub struct Store {
    files: HashMap<u64, File>,
    by_path: HashMap<(String, String), u64>,
    next: u64,
    total: usize,
}

impl Store {
    pub fn get(&self, id: u64) -> Option<&File> {
        self.files.get(&id)
    }

    pub fn find(&self, instance: &str, name: &str) -> Option<u64> {
        self.by_path
            .get(&(instance.to_string(), name.to_string()))
            .copied()
    }

    /// The scratch files of one instance, sorted by name, as (name, id).
    pub fn list(&self, instance: &str) -> Vec<(String, u64)> {
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
        instance: &str,
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
                "instance {instance} holds {MAX_FILES_PER_INSTANCE} scratch files already"
            )));
        }
        self.next += 1;
        let id = self.next;
        self.files.insert(
            id,
            File {
                instance: instance.to_string(),
                name: name.to_string(),
                data: Vec::new(),
                mode,
                uid,
                gid,
                mtime: SystemTime::now(),
            },
        );
        self.by_path
            .insert((instance.to_string(), name.to_string()), id);
        Ok(id)
    }

    /// Writes `data` at `offset`, growing the file.
    pub fn write(&mut self, id: u64, offset: u64, data: &[u8]) -> Result<(), ActionError> {
        let f = self
            .files
            .get(&id)
            .ok_or_else(|| ActionError::NotFound("scratch file is gone".into()))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if end > MAX_FILE_BYTES {
            return Err(ActionError::TooBig(format!(
                "scratch files are limited to {MAX_FILE_BYTES} bytes"
            )));
        }
        let grow = end.saturating_sub(f.data.len());
        if self.total + grow > MAX_TOTAL_BYTES {
            return Err(ActionError::NoCapacity(
                "scratch files of all instances are at their limit".into(),
            ));
        }
        self.total += grow;
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[start..end].copy_from_slice(data);
        f.mtime = SystemTime::now();
        Ok(())
    }

    pub fn set_len(&mut self, id: u64, len: u64) -> Result<(), ActionError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FILE_BYTES {
            return Err(ActionError::TooBig(format!(
                "scratch files are limited to {MAX_FILE_BYTES} bytes"
            )));
        }
        let Some(f) = self.files.get_mut(&id) else {
            return Err(ActionError::NotFound("scratch file is gone".into()));
        };
        let old = f.data.len();
        if self.total + len.saturating_sub(old) > MAX_TOTAL_BYTES {
            return Err(ActionError::NoCapacity(
                "scratch files of all instances are at their limit".into(),
            ));
        }
        f.data.resize(len, 0);
        f.mtime = SystemTime::now();
        self.total = self.total - old + len;
        Ok(())
    }

    pub fn set_attr(&mut self, id: u64, mode: Option<u16>, uid: Option<u32>, gid: Option<u32>) {
        if let Some(f) = self.files.get_mut(&id) {
            if let Some(m) = mode {
                f.mode = m & 0o7777;
            }
            if let Some(u) = uid {
                f.uid = u;
            }
            if let Some(g) = gid {
                f.gid = g;
            }
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<File> {
        let f = self.files.remove(&id)?;
        self.by_path.remove(&(f.instance.clone(), f.name.clone()));
        self.total -= f.data.len();
        Some(f)
    }

    /// Renames a file within its instance folder, replacing a scratch file of the new name.
    pub fn rename(&mut self, id: u64, new_name: &str) {
        let Some(f) = self.files.get(&id) else { return };
        let instance = f.instance.clone();
        if let Some(old) = self.find(&instance, new_name)
            && old != id
        {
            self.remove(old);
        }
        if let Some(f) = self.files.get_mut(&id) {
            self.by_path.remove(&(f.instance.clone(), f.name.clone()));
            f.name = new_name.to_string();
            f.mtime = SystemTime::now();
            self.by_path.insert((instance, new_name.to_string()), id);
        }
    }

    /// Drops every scratch file of an instance (it was deleted, or its name is new again).
    pub fn forget_instance(&mut self, instance: &str) {
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
        let a = s.create("web1", "4913", 0o644, 1, 1).unwrap();
        s.write(a, 3, b"xy").unwrap();
        assert_eq!(s.get(a).unwrap().data, b"\0\0\0xy");
        s.set_len(a, 1).unwrap();
        assert_eq!(s.total, 1);
        let b = s.create("web1", "b", 0o600, 1, 1).unwrap();
        s.write(b, 0, b"abc").unwrap();
        s.rename(b, "4913");
        assert_eq!(s.find("web1", "4913"), Some(b));
        assert!(s.get(a).is_none(), "the replaced file is gone");
        assert_eq!(s.total, 3);
        assert!(matches!(
            s.write(b, MAX_FILE_BYTES as u64, b"z"),
            Err(ActionError::TooBig(_))
        ));
        for i in 0..MAX_FILES_PER_INSTANCE - 1 {
            s.create("web1", &format!("f{i}"), 0o644, 1, 1).unwrap();
        }
        assert!(matches!(
            s.create("web1", "one-more", 0o644, 1, 1),
            Err(ActionError::NoCapacity(_))
        ));
        s.forget_instance("web1");
        assert!(s.list("web1").is_empty());
        assert_eq!(s.total, 0);
    }
}

//! kvmfs: a small KVM cloud whose interface is a FUSE filesystem.
//!
//! Layers, one way: `fs` (FUSE glue) → `tree` (inodes, contents, handles) → `cluster`
//! (controller: live view, pollers, actions) → backends `hv` (libvirt) and `db` (sqlx).
//! See docs/ARCHITECTURE.md.

pub mod cloudinit;
pub mod cluster;
pub mod config;
pub mod db;
pub mod demo;
pub mod failpoint;
pub mod fs;
pub mod fstab;
pub mod hv;
#[cfg(test)]
mod inprocess;
pub mod menu;
pub mod metrics;
pub mod model;
pub mod mount;
pub mod random;
pub mod secrets;
pub mod spec;
pub mod statedir;
pub mod storage;
#[cfg(test)]
pub mod testing;
pub mod testnode;
pub mod tree;

//! In-process tests of the lifecycle and of the tree's rules, on the rig of `testing`:
//! in-memory nodes, SQLite in a temporary folder, the tree called directly. One file per
//! concern.

mod builds;
mod lifecycle;
mod placement_quotas;
mod recovery;
mod shared_storage;
mod snapshots;
mod tree_files;
mod tree_writes;

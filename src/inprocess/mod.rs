//! In-process tests of the lifecycle and of the tree's rules, on the rig of `testing`:
//! in-memory nodes, SQLite in a temporary folder, the tree called directly. One file per
//! concern.

mod builds;
mod lifecycle;
mod migration;
mod placement_quotas;
mod recovery;
mod shared_storage;
mod snapshots;
mod tree_files;
mod tree_writes;

use crate::cluster::actions::ActionError;
use crate::testing::Rig;
use crate::tree::TreeError;

/// The action error of a result that must be one.
fn action_error<T: std::fmt::Debug>(r: Result<T, TreeError>) -> ActionError {
    match r {
        Err(TreeError::Action(e)) => e,
        other => panic!("expected an action error, got {other:?}"),
    }
}

/// The names in a folder, without `.` and `..`.
fn names_in(rig: &Rig, ino: u64) -> Vec<String> {
    let fh = rig.tree.opendir(ino).unwrap();
    let names = rig
        .tree
        .dir_entries(fh)
        .unwrap()
        .iter()
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| e.name.clone())
        .collect();
    rig.tree.release(fh);
    names
}

/// What an instance's `error` file reads.
fn error_file(rig: &Rig, name: &str) -> String {
    rig.read(&format!("instances/{name}/error")).unwrap()
}

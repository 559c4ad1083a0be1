//! The assembled, immutable picture of the cluster that every read is served from: nodes with
//! capacity and score, every domain on every node (managed or not), and the networks. A new
//! `View` is built whenever a node poll, a domain event or a database poll brings news; readers
//! hold an `Arc` to one view, so a listing never sees half an update.
//!
//! Views share what did not change: every node, instance, network and image is an `Arc`, and
//! `build` reuses the previous view's `Arc` when its inputs are the same objects (rows and
//! domain probes are `Arc`s too, reused by the pollers when equal). The instances are a
//! persistent map, and the pollers say which names changed (`Changed`), so a rebuild builds
//! those instances again and adjusts the nodes' totals by them: its cost follows what changed,
//! not the number of instances. "Did this instance change?" is a pointer comparison — which is
//! how the tree decides what to invalidate in the kernel's caches.

mod build;
mod capacity;
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
mod types;

pub use build::{Faults, build};
pub use capacity::Room;
pub use types::*;

/// A domain's snapshot as the view carries it (in its `DomainProbe`): the tree reads it from
/// here, not from `hv`.
pub use crate::hv::SnapshotProbe as SnapshotView;

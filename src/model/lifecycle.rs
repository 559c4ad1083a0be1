//! An instance's lifecycle as types: the state of its row (`vm.state`), the step a build or
//! delete is in (`vm.step`), and the parts made on its node (`vm.made`). The database layer
//! converts the columns once; everything above it sees these types, and each rule that
//! follows from a state (may the spec change, does it hold room, can a crash leave it half
//! done) is a method here, written once.
//!
//! ```text
//! mkdir ──▶ Draft ──spec.json──▶ Building ──▶ Ready
//!                                  │  ▲
//!                                  ▼  │ spec.json
//!                                 Failed
//! Draft, Ready, Failed, Deleting ──rmdir──▶ Deleting ──▶ (row gone)
//! Ready ──echo NODE > node──▶ Migrating ──▶ Ready (on NODE, or back where it was)
//! ```

use std::fmt;

/// Where a managed instance is in its lifecycle (`vm.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Made by `mkdir`, waiting for `spec.json`.
    Draft,
    /// Placed; its build runs (`Step` says where).
    Building,
    /// Built: its domain was started.
    Ready,
    /// Its build failed and was undone; takes a new spec.
    Failed,
    /// Being deleted.
    Deleting,
    /// Moving to another node (`vm.migrate_to`); ready again where it ends up.
    Migrating,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Draft,
        InstanceState::Building,
        InstanceState::Ready,
        InstanceState::Failed,
        InstanceState::Deleting,
        InstanceState::Migrating,
    ];

    /// The word stored in `vm.state`.
    pub fn word(self) -> &'static str {
        match self {
            InstanceState::Draft => "draft",
            InstanceState::Building => "building",
            InstanceState::Ready => "ready",
            InstanceState::Failed => "failed",
            InstanceState::Deleting => "deleting",
            InstanceState::Migrating => "migrating",
        }
    }

    pub fn from_word(word: &str) -> Option<InstanceState> {
        InstanceState::ALL.into_iter().find(|s| s.word() == word)
    }

    /// Whether `spec.json` may be (re)written: a draft, or a build that failed.
    pub fn takes_spec(self) -> bool {
        matches!(self, InstanceState::Draft | InstanceState::Failed)
    }

    /// Whether the instance holds room on its node (counts against it, and against its
    /// owner's quota of instances). A migrating one holds room on its target too.
    pub fn holds_room(self) -> bool {
        matches!(
            self,
            InstanceState::Building
                | InstanceState::Ready
                | InstanceState::Deleting
                | InstanceState::Migrating
        )
    }

    /// Whether a daemon runs an operation on it (a build, a delete, a migration) that a
    /// crash could leave half done, for the reconciliation to finish or undo.
    pub fn in_operation(self) -> bool {
        matches!(
            self,
            InstanceState::Building | InstanceState::Deleting | InstanceState::Migrating
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The step a build or a delete is in (`vm.step`), shown in `status` as
/// `building: <step>`. Recorded before the step runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Step {
    /// No operation runs (a draft, a built or failed instance).
    #[default]
    None,
    Placed,
    CheckingGit,
    AllocatingAddresses,
    GeneratingKey,
    CreatingDisk,
    WritingSeed,
    Starting,
    Deleting,
    /// A migration takes the snapshots' metadata off the source node (kept in the row).
    SavingSnapshots,
    /// A migration moves the domain (live, or its definition when it is stopped).
    Moving,
    /// A migration defines the snapshots again where the domain now is.
    RestoringSnapshots,
    /// A word kvmfs does not know (written by hand, or by another version): kept as it is.
    Other(String),
}

impl Step {
    /// The word stored in `vm.step` and shown in `status`.
    pub fn word(&self) -> &str {
        match self {
            Step::None => "",
            Step::Placed => "placed",
            Step::CheckingGit => "checking git",
            Step::AllocatingAddresses => "allocating addresses",
            Step::GeneratingKey => "generating key",
            Step::CreatingDisk => "creating disk",
            Step::WritingSeed => "writing seed",
            Step::Starting => "starting",
            Step::Deleting => "deleting",
            Step::SavingSnapshots => "saving snapshots",
            Step::Moving => "moving",
            Step::RestoringSnapshots => "restoring snapshots",
            Step::Other(s) => s,
        }
    }

    pub fn from_word(word: &str) -> Step {
        [
            Step::None,
            Step::Placed,
            Step::CheckingGit,
            Step::AllocatingAddresses,
            Step::GeneratingKey,
            Step::CreatingDisk,
            Step::WritingSeed,
            Step::Starting,
            Step::Deleting,
            Step::SavingSnapshots,
            Step::Moving,
            Step::RestoringSnapshots,
        ]
        .into_iter()
        .find(|s| s.word() == word)
        .unwrap_or_else(|| Step::Other(word.to_string()))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Whether `caller` may change, or read the private files of, an instance owned by `owner`
/// (`None`: not kvmfs's, so nobody's to change): its owner, or root.
pub fn may_act(owner: Option<u32>, caller: u32) -> bool {
    caller == 0 || owner == Some(caller)
}

/// The parts of an instance on its node that kvmfs made, stored in `vm.made`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Made {
    pub domain: bool,
    pub disk: bool,
    pub seed: bool,
    /// The disk and seed are files on the shared storage (`[storage]`), not volumes of the
    /// node's pool: the word `shared` in `vm.made`, recorded with the first of them, so
    /// whoever removes them later (an undo, `rmdir`, the reconciliation of another daemon)
    /// looks where they were made whatever the configuration says by then.
    pub shared: bool,
}

/// One part of an instance on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Domain,
    Disk,
    Seed,
}

impl Part {
    /// The order an undo or a delete removes the parts in: the domain first, so nothing
    /// uses the volumes any more.
    pub const REMOVAL_ORDER: [Part; 3] = [Part::Domain, Part::Disk, Part::Seed];

    /// The part's word in `vm.made`.
    pub fn word(self) -> &'static str {
        match self {
            Part::Domain => "domain",
            Part::Disk => "disk",
            Part::Seed => "seed",
        }
    }
}

impl Made {
    pub fn parse(s: &str) -> Made {
        let mut m = Made::default();
        for w in s.split(',') {
            match w.trim() {
                "domain" => m.domain = true,
                "disk" => m.disk = true,
                "seed" => m.seed = true,
                "shared" => m.shared = true,
                _ => {}
            }
        }
        m
    }

    pub fn has(self, p: Part) -> bool {
        match p {
            Part::Domain => self.domain,
            Part::Disk => self.disk,
            Part::Seed => self.seed,
        }
    }

    pub fn with(mut self, p: Part, on: bool) -> Made {
        match p {
            Part::Domain => self.domain = on,
            Part::Disk => self.disk = on,
            Part::Seed => self.seed = on,
        }
        self
    }

    /// Whether no part is left (where they were is then moot).
    pub fn is_empty(self) -> bool {
        !(self.domain || self.disk || self.seed)
    }
}

impl fmt::Display for Made {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = Part::REMOVAL_ORDER
            .into_iter()
            .filter(|p| self.has(*p))
            .map(Part::word)
            .collect();
        f.write_str(&parts.join(","))?;
        if self.shared && (self.disk || self.seed) {
            f.write_str(",shared")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_rules_hold() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::from_word(s.word()), Some(s));
            // No state both takes a spec and holds room: a spec only changes with nothing
            // on a node.
            assert!(!(s.takes_spec() && s.holds_room()), "{s}");
            assert!(!s.in_operation() || s.holds_room(), "{s}");
        }
        assert_eq!(InstanceState::from_word("built"), None);
        for w in ["", "placed", "checking git", "creating disk", "deleting"] {
            assert_eq!(Step::from_word(w).word(), w);
        }
        assert_eq!(Step::from_word("resizing"), Step::Other("resizing".into()));
        assert!(may_act(Some(5), 5) && may_act(Some(5), 0) && may_act(None, 0));
        assert!(!may_act(Some(5), 6) && !may_act(None, 6));
        let m = Made::parse("seed, domain,bogus");
        assert_eq!(m.to_string(), "domain,seed");
        assert!(Made::parse("").is_empty());
        let shared = Made::parse("disk,shared");
        assert!(shared.shared && shared.disk && !shared.seed);
        assert_eq!(shared.to_string(), "disk,shared");
        // Once its files are gone, where they were is no longer said.
        let gone = shared.with(Part::Disk, false);
        assert!(gone.is_empty());
        assert_eq!(gone.to_string(), "");
    }
}

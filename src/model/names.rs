//! Names that cross layers. A `NodeName` or `InstanceName` can only hold a value that is safe
//! as a file name, a libvirt domain name, a hostname label and an SQL key, so no later layer
//! re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest name accepted: a DNS label.
pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks the hostname-label shape shared by node and instance names: 1–63 characters of
/// `a-z`, `0-9` and `-`, starting with a letter or digit and not ending with `-`.
/// Lowercase only, so names stay unique under MariaDB's case-insensitive collation.
fn check_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_NAME_LEN {
        return Err("longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if s.starts_with('-') {
        return Err("must not start with '-'");
    }
    if s.ends_with('-') {
        return Err("must not end with '-'");
    }
    Ok(())
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                match check_label(&s) {
                    Ok(()) => Ok($name(s)),
                    Err(reason) => Err(NameError { name: s, reason }),
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

label_newtype!(
    /// A KVM node's name as configured (`kvm1`).
    NodeName
);
label_newtype!(
    /// The name of an instance kvmfs creates: its directory, domain name and hostname.
    InstanceName
);
label_newtype!(
    /// The name of an instance's snapshot: its folder under `snapshots/` and the libvirt
    /// snapshot's name (the same rules as instance names, so it is safe in XML and paths).
    SnapshotName
);

/// The volume holding an instance's disk in its node's pool. Instance names have no `.`,
/// so this never clashes with an image called `NAME.qcow2`.
pub fn disk_volume(instance: &str) -> String {
    format!("{instance}.disk.qcow2")
}

/// The volume holding an instance's NoCloud seed.
pub fn seed_volume(instance: &str) -> String {
    format!("{instance}.seed.iso")
}

/// The instance a disk or seed volume name belongs to, by its shape.
pub fn instance_of_volume(volume: &str) -> Option<&str> {
    volume
        .strip_suffix(".seed.iso")
        .or_else(|| volume.strip_suffix(".disk.qcow2"))
        .filter(|i| !i.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn accepted_names_are_safe_everywhere(s in prop_oneof![
            ".{0,80}",
            r#"[-a-z0-9./ \n'";$`|&*?\\A-Z_]{0,70}"#,
            "[a-z0-9-]{0,70}",
        ]) {
            let ok = InstanceName::new(s.clone());
            prop_assert_eq!(ok.is_ok(), NodeName::new(s.clone()).is_ok());
            match ok {
                // Safe as a file name, a libvirt name, a hostname, a shell word, an SQL
                // literal and a command-line argument that is never an option.
                Ok(n) => {
                    let n = n.as_str();
                    prop_assert!((1..=MAX_NAME_LEN).contains(&n.len()));
                    prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    prop_assert!(!n.starts_with('-') && !n.ends_with('-'));
                    prop_assert!(n != "." && n != "..");
                }
                Err(e) => {
                    prop_assert_eq!(&e.name, &s);
                    prop_assert!(e.to_string().starts_with("invalid name"));
                }
            }
        }

        #[test]
        fn every_label_is_accepted(s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            prop_assert!(InstanceName::new(s).is_ok());
        }

        #[test]
        fn one_bad_character_is_enough(
            head in "[a-z0-9]{0,30}",
            bad in r#"[^a-z0-9-]"#,
            tail in "[a-z0-9]{0,30}",
        ) {
            let name = format!("{head}{bad}{tail}");
            prop_assert!(InstanceName::new(name).is_err());
        }
    }

    #[test]
    fn labels() {
        for ok in ["a", "web1", "web-1", "0abc", &"x".repeat(63)] {
            assert!(InstanceName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a b",
            "a/b",
            "..",
            ".a",
            "a.b",
            "a_b",
            "é",
            "a\n",
            &"x".repeat(64),
            "a;rm",
            "a'b",
        ] {
            assert!(InstanceName::new(bad).is_err(), "{bad:?}");
        }
    }
}

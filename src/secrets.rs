//! Sealing instances' SSH private keys at rest. The database, its replicas and its backups
//! hold each private key only sealed (XChaCha20-Poly1305, a random 24-byte nonce per key)
//! under a key that only the control nodes hold, in a key file (`[secrets] key_file`,
//! 0600). A sealed key is bound to its row (the instance's name and incarnation are the
//! associated data), so it cannot be moved to another row and opened there.
//!
//! Stored form: `kvmfs-sealed-v1:<key id>:<base64 of nonce ‖ ciphertext>`, where the key id
//! is the first 8 hex digits of SHA-256 over a label and the key: it names the key without
//! revealing it, so a key being rotated out (`previous_key_files`) still opens what it
//! sealed, and a daemon can tell that a row was sealed under a key it does not hold.
//! Values without the prefix are keys stored in the clear by an earlier kvmfs; they are
//! read as they are and sealed at the next start or reconciliation.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest;

/// What every sealed value starts with.
pub const PREFIX: &str = "kvmfs-sealed-v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} must hold 64 hex digits (32 random bytes)")]
    Format(PathBuf),
    #[error(
        "key file {path} can be read by other users (mode {mode:04o}); refusing to use it. \
         Make it private: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot make key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "sealed with key {0}, which this kvmfs does not hold: give it the key file of the \
         control nodes ([secrets] key_file, or previous_key_files while rotating)"
    )]
    UnknownKey(String),
    #[error("the sealed key is damaged or belongs to another row: {0}")]
    Corrupt(&'static str),
    #[error("cannot seal: {0}")]
    Seal(String),
}

/// One key and its id.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let mut h = sha2::Sha256::new();
        h.update(b"kvmfs secret key id\0");
        h.update(bytes);
        let digest = h.finalize();
        Key {
            id: digest[..4].iter().map(|b| format!("{b:02x}")).collect(),
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }
}

/// The key that seals, and the keys being rotated out that still open.
pub struct KeyRing {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The associated data that binds a sealed key to its row.
pub fn row_binding(name: &str, incarnation: &str) -> String {
    format!("kvmfs ssh_private_key\0{name}\0{incarnation}")
}

/// Reads a key file: 64 hex digits, private to its owner.
fn read_key(path: &Path) -> Result<[u8; 32], SecretError> {
    let read = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let hex = text.trim();
    let mut key = [0u8; 32];
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SecretError::Format(path.to_path_buf()));
    }
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| SecretError::Format(path.to_path_buf()))?;
    }
    Ok(key)
}

/// Makes a new key file at `path` (mode 0600, never replacing one that exists).
fn create_key(path: &Path) -> Result<(), SecretError> {
    let err = |source| SecretError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut key = [0u8; 32];
    crate::random::fill(&mut key).map_err(err)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{hex}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

impl KeyRing {
    /// Loads the key file `current` (made first when missing and `create`) and the keys
    /// being rotated out. Returns whether the key file was made now.
    pub fn load(
        current: &Path,
        previous: &[PathBuf],
        create: bool,
    ) -> Result<(KeyRing, bool), SecretError> {
        let made = create && !current.exists();
        if made {
            match create_key(current) {
                Ok(()) => {}
                // Made by someone else meanwhile: use theirs.
                Err(SecretError::Create { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let ring = KeyRing {
            current: Key::new(&read_key(current)?),
            previous: previous
                .iter()
                .map(|p| read_key(p).map(|k| Key::new(&k)))
                .collect::<Result<_, _>>()?,
        };
        Ok((ring, made))
    }

    /// A ring of one key, for tests.
    pub fn from_bytes(key: &[u8; 32]) -> KeyRing {
        KeyRing {
            current: Key::new(key),
            previous: Vec::new(),
        }
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Whether a key with this id opens what it sealed.
    pub fn holds(&self, id: &str) -> bool {
        self.current.id == id || self.previous.iter().any(|k| k.id == id)
    }

    /// Seals `plain` for the row that `binding` (`row_binding`) names.
    pub fn seal(&self, binding: &str, plain: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce).map_err(|e| SecretError::Seal(e.to_string()))?;
        let sealed = self
            .current
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|e| SecretError::Seal(e.to_string()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            self.current.id,
            base64::engine::general_purpose::STANDARD.encode(blob)
        ))
    }

    /// Opens a stored value for the row `binding` names. A value an earlier kvmfs stored
    /// in the clear is returned as it is.
    pub fn open(&self, binding: &str, stored: &str) -> Result<Vec<u8>, SecretError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.as_bytes().to_vec());
        };
        let (id, b64) = rest
            .split_once(':')
            .ok_or(SecretError::Corrupt("no key id"))?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_string()))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::Corrupt("not base64"))?;
        if blob.len() < NONCE_LEN {
            return Err(SecretError::Corrupt("too short"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| SecretError::Corrupt("too short"))?;
        key.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: binding.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt("authentication failed"))
    }

    /// Whether a stored value should be sealed again: it is in the clear, or sealed under a
    /// key being rotated out.
    pub fn needs_reseal(&self, stored: &str) -> bool {
        match key_id_of(stored) {
            None => true,
            Some(id) => id != self.current.id && self.holds(id),
        }
    }
}

/// The id of the key a stored value was sealed with (`None`: in the clear).
pub fn key_id_of(stored: &str) -> Option<&str> {
    stored.strip_prefix(PREFIX)?.split(':').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_row_and_key() {
        let ring = KeyRing::from_bytes(&[7u8; 32]);
        let row = row_binding("web1", "abc");
        let sealed = ring
            .seal(&row, b"-----BEGIN OPENSSH PRIVATE KEY-----")
            .unwrap();
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("OPENSSH"));
        assert_eq!(key_id_of(&sealed), Some(ring.current_id()));
        assert_eq!(
            ring.open(&row, &sealed).unwrap(),
            b"-----BEGIN OPENSSH PRIVATE KEY-----"
        );
        // Two seals of one key differ (random nonces).
        assert_ne!(
            sealed,
            ring.seal(&row, b"-----BEGIN OPENSSH PRIVATE KEY-----")
                .unwrap()
        );
        // Another row (a new incarnation of the name) cannot open it.
        assert!(matches!(
            ring.open(&row_binding("web1", "abd"), &sealed),
            Err(SecretError::Corrupt(_))
        ));
        // Another key cannot either, and says which key it would take.
        let other = KeyRing::from_bytes(&[8u8; 32]);
        assert!(matches!(
            other.open(&row, &sealed),
            Err(SecretError::UnknownKey(id)) if id == ring.current_id()
        ));
        // A flipped byte is caught.
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(ring.open(&row, std::str::from_utf8(&bad).unwrap()).is_err());
        // Keys stored in the clear read as they are, and are due to be sealed.
        assert_eq!(ring.open(&row, "plain").unwrap(), b"plain");
        assert!(ring.needs_reseal("plain"));
        assert!(!ring.needs_reseal(&sealed));
    }

    #[test]
    fn key_files_are_made_private_and_rotation_opens_old_seals() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old.key");
        let (old, made) = KeyRing::load(&old_path, &[], true).unwrap();
        assert!(made);
        assert_eq!(std::fs::metadata(&old_path).unwrap().mode() & 0o777, 0o600);
        let row = row_binding("db1", "1");
        let sealed = old.seal(&row, b"secret").unwrap();
        // A second load finds the file and makes nothing.
        let (again, made) = KeyRing::load(&old_path, &[], true).unwrap();
        assert!(!made);
        assert_eq!(again.current_id(), old.current_id());

        let new_path = dir.path().join("new.key");
        let (ring, _) = KeyRing::load(&new_path, std::slice::from_ref(&old_path), true).unwrap();
        assert_ne!(ring.current_id(), old.current_id());
        assert_eq!(ring.open(&row, &sealed).unwrap(), b"secret");
        assert!(
            ring.needs_reseal(&sealed),
            "sealed under a key being rotated out"
        );

        // A key file others can read is refused.
        std::fs::set_permissions(
            &old_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            KeyRing::load(&old_path, &[], true),
            Err(SecretError::Exposed { .. })
        ));
        std::fs::write(dir.path().join("short.key"), "abcd").unwrap();
        std::fs::set_permissions(
            dir.path().join("short.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            KeyRing::load(&dir.path().join("short.key"), &[], false),
            Err(SecretError::Format(_))
        ));
        // 64 bytes that are not 64 hex digits: no panic, no key of zeros.
        for bad in ["\u{20ac}".repeat(21) + "a", "+0".repeat(32)] {
            std::fs::write(dir.path().join("short.key"), bad).unwrap();
            assert!(matches!(
                KeyRing::load(&dir.path().join("short.key"), &[], false),
                Err(SecretError::Format(_))
            ));
        }
    }
}

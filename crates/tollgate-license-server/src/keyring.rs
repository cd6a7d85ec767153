//! The signing keys: every `*.key` file of the key directory (`[signing] key_dir`).
//!
//! - A key file is a `tollgate-ed25519-private:…` line (`tollgate license keygen`'s format)
//!   and must be readable by its owner only: a key file with any group or world permission
//!   bit, or a key directory writable by group or others, is refused (the server does not
//!   start; a running server keeps its previous keys and logs the refusal).
//! - A file named `YYYYMMDDTHHMMSSZ-….key` becomes the signing key at that UTC time (its
//!   *activation*); any other name counts as activated at the epoch. The server signs with
//!   the activated key with the latest activation (ties: the name sorting last). `admin key
//!   rotate` writes `<activation>-<key id>.key` and `.pub`, so a rotation can be scheduled:
//!   publish the new `.pub` to agents first, and the server switches at the activation
//!   time by itself.
//! - Keys are read again when the directory changes (its modification time), so a rotation
//!   needs no restart. Key material is never logged: only key ids and file names.

use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tollgate_events::WallTime;
use tollgate_license::keys::KEY_FILE_LEN_MAX;
use tollgate_license::timestamp::parse_rfc3339;
use tollgate_license::{KeyError, PublicKey, SigningKey};

/// Most key files read from the key directory.
pub const KEY_COUNT_MAX: usize = 64;

/// Why the key directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is readable or writable by others (mode {mode:04o}): a signing key must be \
         mode 0600 (chmod 600 {})", path.display(), path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "key directory {} is writable by others (mode {mode:04o}): chmod go-w {}",
        path.display(), path.display()
    )]
    DirPermissions { path: PathBuf, mode: u32 },
    #[error("{}: {source}", path.display())]
    Key { path: PathBuf, source: KeyError },
    #[error("{}: larger than a key file", path.display())]
    TooLong { path: PathBuf },
    #[error("more than {KEY_COUNT_MAX} key files in {}", path.display())]
    TooMany { path: PathBuf },
    #[error(
        "no signing key in {}: create one with `tollgate license-server admin key rotate`",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// One key file.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub file_name: String,
    /// When it becomes the signing key (the epoch for names without a time).
    pub activation: WallTime,
    pub key: SigningKey,
}

/// The keys of the key directory, ordered by activation (then name).
#[derive(Debug, Clone)]
pub struct KeyRing {
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    /// Reads every `*.key` in `dir` (see the module doc for the checks). An empty directory
    /// is an error.
    pub fn load(dir: &Path) -> Result<KeyRing, KeyRingError> {
        let io_error = |source| KeyRingError::Io {
            path: dir.to_owned(),
            source,
        };
        let meta = fs::metadata(dir).map_err(io_error)?;
        if meta.mode() & 0o022 != 0 {
            return Err(KeyRingError::DirPermissions {
                path: dir.to_owned(),
                mode: meta.mode() & 0o7777,
            });
        }
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error)? {
            let item = item.map_err(io_error)?;
            let file_name = item.file_name().to_string_lossy().into_owned();
            if !file_name.ends_with(".key") || file_name.starts_with('.') {
                continue;
            }
            if entries.len() == KEY_COUNT_MAX {
                return Err(KeyRingError::TooMany {
                    path: dir.to_owned(),
                });
            }
            let path = item.path();
            let key = read_key(&path)?;
            entries.push(KeyEntry {
                activation: activation_of(&file_name),
                file_name,
                key,
            });
        }
        if entries.is_empty() {
            return Err(KeyRingError::Empty {
                path: dir.to_owned(),
            });
        }
        entries.sort_by(|a, b| (a.activation, &a.file_name).cmp(&(b.activation, &b.file_name)));
        Ok(KeyRing { entries })
    }

    /// The key that signs at `now`: the activated one with the latest activation.
    pub fn signing_key(&self, now: WallTime) -> Option<&KeyEntry> {
        self.entries.iter().rev().find(|e| e.activation <= now)
    }

    /// Every key, oldest activation first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The public keys, for `GET /api/v1/keys` and the admin CLI.
    pub fn public_keys(&self) -> impl Iterator<Item = (PublicKey, &KeyEntry)> {
        self.entries.iter().map(|e| (e.key.public_key(), e))
    }
}

/// Reads one private key file, refusing one others can read.
fn read_key(path: &Path) -> Result<SigningKey, KeyRingError> {
    let io_error = |source| KeyRingError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if meta.mode() & 0o077 != 0 {
        return Err(KeyRingError::KeyPermissions {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut text = String::new();
    file.take(KEY_FILE_LEN_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() > KEY_FILE_LEN_MAX {
        return Err(KeyRingError::TooLong {
            path: path.to_owned(),
        });
    }
    SigningKey::from_file_str(&text).map_err(|source| KeyRingError::Key {
        path: path.to_owned(),
        source,
    })
}

/// `20270115T000000Z-….key` → that instant; anything else → the epoch.
fn activation_of(file_name: &str) -> WallTime {
    let Some(stamp) = file_name.get(..16) else {
        return WallTime::ZERO;
    };
    let b = stamp.as_bytes();
    if b[8] != b'T' || b[15] != b'Z' || file_name.as_bytes().get(16) != Some(&b'-') {
        return WallTime::ZERO;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    parse_rfc3339(&text).unwrap_or(WallTime::ZERO)
}

/// `YYYYMMDDTHHMMSSZ` of `at` (UTC, seconds precision).
pub fn compact_utc(at: WallTime) -> String {
    let text =
        tollgate_license::timestamp::format_rfc3339(WallTime::from_unix_secs(at.unix_secs()));
    text.chars().filter(|c| !matches!(c, '-' | ':')).collect()
}

/// Creates a new key pair in `dir` (created 0700 if missing) that becomes the signing key
/// at `activation`: `<activation>-<key id>.key` (mode 0600, never overwritten) and
/// `.pub`. Returns the key and both paths.
pub fn create_key(
    dir: &Path,
    activation: WallTime,
) -> Result<(SigningKey, PathBuf, PathBuf), KeyRingError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyRingError::Write { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_error(dir))?;
    let key = SigningKey::generate_with(&mut rand::rngs::OsRng);
    let stem = format!("{}-{}", compact_utc(activation), key.key_id());
    let key_path = dir.join(format!("{stem}.key"));
    let pub_path = dir.join(format!("{stem}.pub"));
    // Never over an existing file, mode exact, synced with its directory entry.
    let write = |path: &Path, contents: &str, mode: u32| -> io::Result<()> {
        tollgate_durable::write_new(path, contents.as_bytes(), mode)?;
        Ok(())
    };
    write(&key_path, &key.to_file_string(), 0o600).map_err(write_error(&key_path))?;
    write(&pub_path, &key.public_key().to_file_string(), 0o644).map_err(write_error(&pub_path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((key, key_path, pub_path))
}

/// The key ring of a directory, re-read when the directory changes.
#[derive(Debug)]
pub struct KeyCache {
    dir: PathBuf,
    ring: std::sync::Arc<KeyRing>,
    modified: Option<SystemTime>,
    reloads: u64,
    refusals: u64,
}

impl KeyCache {
    /// Loads the directory (an error here stops the server from starting).
    pub fn open(dir: &Path) -> Result<KeyCache, KeyRingError> {
        let modified = fs::metadata(dir).and_then(|m| m.modified()).ok();
        let ring = KeyRing::load(dir)?;
        Ok(KeyCache {
            dir: dir.to_owned(),
            ring: std::sync::Arc::new(ring),
            modified,
            reloads: 0,
            refusals: 0,
        })
    }

    /// How many times a changed directory was re-read and its keys taken.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// How many times a changed directory was re-read and its keys refused (the previous
    /// ones kept).
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The current keys: re-read if the directory changed; if the new contents are refused,
    /// the previous keys stay (the refusal is logged once per change).
    pub fn ring(&mut self) -> std::sync::Arc<KeyRing> {
        let modified = fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if modified != self.modified {
            self.modified = modified;
            match KeyRing::load(&self.dir) {
                Ok(ring) => {
                    let ids: Vec<String> = ring
                        .entries()
                        .iter()
                        .map(|e| e.key.key_id().to_string())
                        .collect();
                    tracing::info!(key_dir = %self.dir.display(), key_ids = ?ids, "signing keys reloaded");
                    self.ring = std::sync::Arc::new(ring);
                    self.reloads += 1;
                }
                Err(e) => {
                    self.refusals += 1;
                    tracing::error!(key_dir = %self.dir.display(), error = %e, "signing keys refused; keeping the previous ones");
                }
            }
        }
        std::sync::Arc::clone(&self.ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const T0: WallTime = WallTime::from_unix_ms(1_900_000_000_000);

    fn key_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn activation_comes_from_the_file_name() {
        assert_eq!(
            activation_of("20300101T000000Z-abc.key"),
            parse_rfc3339("2030-01-01T00:00:00Z").unwrap()
        );
        for name in [
            "vendor.key",
            "2030.key",
            "20300101T000000Zabc.key",
            "20301301T000000Z-x.key",
            "é",
        ] {
            assert_eq!(activation_of(name), WallTime::ZERO, "{name}");
        }
        assert_eq!(
            compact_utc(parse_rfc3339("2030-01-02T03:04:05.678Z").unwrap()),
            "20300102T030405Z"
        );
    }

    #[test]
    fn signs_with_the_latest_activated_key() {
        let dir = key_dir();
        let (old, _, _) = create_key(dir.path(), T0).unwrap();
        let (new, _, _) = create_key(dir.path(), T0.plus_ms(1000 * 3600)).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.entries().len(), 2);
        assert_eq!(
            ring.signing_key(T0.minus_ms(1)).map(|e| e.key.key_id()),
            None
        );
        assert_eq!(ring.signing_key(T0).unwrap().key.key_id(), old.key_id());
        assert_eq!(
            ring.signing_key(T0.plus_ms(3_599_999))
                .unwrap()
                .key
                .key_id(),
            old.key_id()
        );
        assert_eq!(
            ring.signing_key(T0.plus_ms(3_600_000))
                .unwrap()
                .key
                .key_id(),
            new.key_id()
        );
    }

    #[test]
    fn a_keygen_key_with_any_name_is_activated_at_the_epoch() {
        let dir = key_dir();
        let key = SigningKey::from_seed(&[9; 32]);
        let path = dir.path().join("vendor.key");
        fs::write(&path, key.to_file_string()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        assert_eq!(
            ring.signing_key(WallTime::ZERO).unwrap().key.key_id(),
            key.key_id()
        );
    }

    #[test]
    fn refuses_readable_keys_writable_dirs_bad_files_and_an_empty_dir() {
        let dir = key_dir();
        let err = KeyRing::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyRingError::Empty { .. }), "{err}");

        let (_, key_path, _) = create_key(dir.path(), T0).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = KeyRing::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("tollgate-ed25519-private"));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = KeyRing::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyRingError::DirPermissions { .. }), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();

        let junk = dir.path().join("junk.key");
        fs::write(&junk, "not a key").unwrap();
        fs::set_permissions(&junk, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyRing::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyRingError::Key { .. }), "{err}");
    }

    #[test]
    fn created_key_files_have_exact_modes() {
        let dir = key_dir();
        let (_, key_path, pub_path) = create_key(dir.path(), T0).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&pub_path), 0o644);
    }

    #[test]
    fn cache_picks_up_a_rotation_and_keeps_keys_on_a_bad_change() {
        let dir = key_dir();
        let (first, _, _) = create_key(dir.path(), T0).unwrap();
        let mut cache = KeyCache::open(dir.path()).unwrap();
        assert_eq!(
            cache.ring().signing_key(T0).unwrap().key.key_id(),
            first.key_id()
        );
        assert_eq!((cache.reloads(), cache.refusals()), (0, 0));
        // Make sure the directory's modification time moves (it has the kernel's tick).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (second, _, _) = create_key(dir.path(), T0.plus_ms(1000)).unwrap();
        assert_eq!(
            cache
                .ring()
                .signing_key(T0.plus_ms(1000))
                .unwrap()
                .key
                .key_id(),
            second.key_id()
        );
        assert_eq!((cache.reloads(), cache.refusals()), (1, 0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let bad = dir.path().join("zz-bad.key");
        fs::write(&bad, "junk").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        // The re-read happened and was refused: only then does "kept" mean anything.
        let ring = cache.ring();
        assert_eq!((cache.reloads(), cache.refusals()), (1, 1));
        assert_eq!(ring.entries().len(), 2, "previous keys kept");
        assert_eq!(
            ring.signing_key(T0.plus_ms(1000)).unwrap().key.key_id(),
            second.key_id()
        );
        // Refused once per change, not on every look.
        cache.ring();
        assert_eq!((cache.reloads(), cache.refusals()), (1, 1));
    }
}

//! The agent's state directory: an exclusive lock, the fingerprint key, snapshots and the
//! runtime file that tells tools where the agent listens.
//!
//! Layout (all inside `state_dir`, created 0700):
//! - `agent.lock` — `flock`ed while an agent runs: two agents never share a state dir;
//! - `fingerprint.key` — 32 random bytes (0600) keying the call/registration fingerprints,
//!   so fingerprints restored from a snapshot still match the stops that come after a restart;
//! - `usage.snapshot` — the latest snapshot, replaced atomically (temp file, fsync, rename,
//!   fsync of the directory); a corrupt one is renamed `usage.snapshot.corrupt-<unix_ms>`;
//! - `usage.snapshot.mac` — the keyed BLAKE3 MAC (a secret derived from the node key) of
//!   the snapshot's trailer, which holds the length and hash of everything before it: the
//!   new snapshot's MAC on the first line, the one it replaces on the second, written
//!   before the rename, so a crash anywhere leaves the snapshot in place authenticated. A
//!   snapshot whose MAC is not there was edited (or written by another node, or by a
//!   version before the MAC): restored, and reported as a state reset
//!   (`snapshot_unauthenticated`, issue 16);
//! - `agent.json` — the bound addresses and pid of the running agent;
//! - `events.sock` — the unix event socket (by default).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tollgate_usage::FingerprintKey;

pub const LOCK_FILE: &str = "agent.lock";
pub const KEY_FILE: &str = "fingerprint.key";
pub const SNAPSHOT_FILE: &str = "usage.snapshot";
pub const SNAPSHOT_MAC_FILE: &str = "usage.snapshot.mac";
/// The snapshot bytes the MAC covers: its last bytes (the version-3 trailer: end magic,
/// length, BLAKE3 of everything before it).
pub const SNAPSHOT_MAC_TAIL_LEN: usize = 48;
/// The context the snapshot MAC key is derived from the node key with.
pub const SNAPSHOT_MAC_CONTEXT: &str = "tollgate 2026 usage snapshot mac";
/// The context the journal's record MAC key is derived from the node key with.
pub const JOURNAL_MAC_CONTEXT: &str = "tollgate 2026 usage journal mac";
pub const RUNTIME_FILE: &str = "agent.json";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state dir {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("state dir {path} is in use by another agent")]
    Locked { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: fingerprint key must be 32 bytes, found {len}")]
    BadKey { path: PathBuf, len: usize },
}

impl From<tollgate_durable::DurableError> for StateError {
    fn from(e: tollgate_durable::DurableError) -> StateError {
        match e {
            tollgate_durable::DurableError::Exists { path } => StateError::Io {
                path,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            },
            tollgate_durable::DurableError::Io { path, source } => StateError::Io { path, source },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An opened, locked state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
    /// Held across a whole checkpoint (rotate, snapshot, removal of the old segments): two
    /// checkpoints at once (the periodic one and the shutdown's, or a reconcile run's)
    /// could otherwise leave the older snapshot in place after the newer one removed the
    /// segment it names.
    checkpoint: parking_lot::Mutex<()>,
    /// Keys the snapshot MAC, once the node key is known ([`StateDir::set_mac_key`]).
    mac_key: std::sync::OnceLock<[u8; 32]>,
    /// Keys the journal's record MACs ([`StateDir::set_journal_key`]).
    journal_key: std::sync::OnceLock<[u8; 32]>,
}

/// Passes bytes through and keeps the last [`SNAPSHOT_MAC_TAIL_LEN`].
struct Tail<'a> {
    out: &'a mut dyn io::Write,
    tail: Vec<u8>,
}

impl io::Write for Tail<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.tail.extend_from_slice(&buf[..n]);
        let excess = self.tail.len().saturating_sub(SNAPSHOT_MAC_TAIL_LEN);
        self.tail.drain(..excess);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn snapshot_mac(key: &[u8; 32], bytes: &[u8]) -> String {
    let tail = &bytes[bytes.len().saturating_sub(SNAPSHOT_MAC_TAIL_LEN)..];
    blake3::keyed_hash(key, tail).to_hex().to_string()
}

impl StateDir {
    /// Creates the directory if needed and locks it for this process.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| StateError::Create {
                path: path.to_owned(),
                source,
            })?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StateError::Locked {
                path: path.to_owned(),
            });
        }
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
            checkpoint: parking_lot::Mutex::new(()),
            mac_key: std::sync::OnceLock::new(),
            journal_key: std::sync::OnceLock::new(),
        })
    }

    /// Serializes checkpoints of this state dir (see the field).
    pub fn checkpoint_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.checkpoint.lock()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint key, created (0600) on first use.
    pub fn fingerprint_key(&self) -> Result<FingerprintKey, StateError> {
        let path = self.path.join(KEY_FILE);
        match File::open(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::with_capacity(32);
                f.read_to_end(&mut bytes).map_err(io_err(&path))?;
                let key: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StateError::BadKey {
                            path: path.clone(),
                            len: bytes.len(),
                        })?;
                Ok(FingerprintKey(key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = FingerprintKey::generate(&mut rand::rngs::OsRng);
                write_atomically(&path, &key.0, 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Keys snapshot MACs with `key` (derived from the node key) from now on.
    pub fn set_mac_key(&self, key: [u8; 32]) {
        let _ = self.mac_key.set(key);
    }

    /// Keys the journal's record MACs with `key` (derived from the node key) from now on.
    pub fn set_journal_key(&self, key: [u8; 32]) {
        let _ = self.journal_key.set(key);
    }

    /// The key of the journal's record MACs, once set.
    pub fn journal_key(&self) -> Option<[u8; 32]> {
        self.journal_key.get().copied()
    }

    /// Records the MAC of the snapshot whose bytes end in `tail`, keeping the previous one
    /// (still the snapshot on disk until the rename).
    fn record_mac(&self, tail: &[u8]) -> Result<(), StateError> {
        let Some(key) = self.mac_key.get() else {
            return Ok(());
        };
        let path = self.path.join(SNAPSHOT_MAC_FILE);
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        let previous = previous.lines().next().unwrap_or("");
        let text = format!("{}\n{previous}\n", snapshot_mac(key, tail));
        write_atomically(&path, text.as_bytes(), 0o600)
    }

    /// Whether `bytes` (the snapshot read at start) carry this node's MAC; `None` without
    /// a key.
    pub fn snapshot_authentic(&self, bytes: &[u8]) -> Option<bool> {
        let key = self.mac_key.get()?;
        if bytes.len() < SNAPSHOT_MAC_TAIL_LEN {
            return Some(false);
        }
        let mac = snapshot_mac(key, bytes);
        let recorded =
            std::fs::read_to_string(self.path.join(SNAPSHOT_MAC_FILE)).unwrap_or_default();
        Some(recorded.lines().take(2).any(|l| l == mac))
    }

    /// Replaces the snapshot atomically: a crash leaves either the old or the new one.
    pub fn write_snapshot(&self, bytes: &[u8]) -> Result<(), StateError> {
        self.record_mac(bytes)?;
        write_atomically(&self.path.join(SNAPSHOT_FILE), bytes, 0o600)
    }

    /// Replaces the snapshot atomically with what `fill` streams (a snapshot of millions of
    /// entries is never built in memory); returns what `fill` returned.
    pub fn write_snapshot_with<T>(
        &self,
        fill: impl FnOnce(&mut dyn io::Write) -> io::Result<T>,
    ) -> Result<T, StateError> {
        let mut result = None;
        tollgate_durable::write_with(&self.path.join(SNAPSHOT_FILE), 0o600, |w| {
            let mut tail = Tail {
                out: w,
                tail: Vec::with_capacity(2 * SNAPSHOT_MAC_TAIL_LEN),
            };
            result = Some(fill(&mut tail)?);
            // Before the rename: the MAC file always names the snapshot in place.
            self.record_mac(&tail.tail).map_err(io::Error::other)?;
            Ok(())
        })?;
        Ok(result.expect("fill ran and succeeded"))
    }

    /// The snapshot's bytes, or `None` when there is none yet.
    pub fn read_snapshot(&self) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The snapshot file opened for streaming and its last [`SNAPSHOT_MAC_TAIL_LEN`] bytes
    /// (what [`StateDir::snapshot_authentic`] judges), or `None` when there is none yet.
    pub fn open_snapshot(&self) -> Result<Option<(File, Vec<u8>)>, StateError> {
        use std::io::{Seek, SeekFrom};
        let path = self.path.join(SNAPSHOT_FILE);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let tail_len = len.min(SNAPSHOT_MAC_TAIL_LEN as u64);
        let mut tail = Vec::with_capacity(SNAPSHOT_MAC_TAIL_LEN);
        file.seek(SeekFrom::Start(len - tail_len))
            .and_then(|_| (&mut file).take(tail_len).read_to_end(&mut tail))
            .map_err(io_err(&path))?;
        Ok(Some((file, tail)))
    }

    /// Moves an unreadable snapshot aside (kept for inspection) and returns its new path.
    pub fn quarantine_snapshot(&self, unix_ms: u64) -> Result<PathBuf, StateError> {
        let from = self.path.join(SNAPSHOT_FILE);
        let to = self.path.join(format!("{SNAPSHOT_FILE}.corrupt-{unix_ms}"));
        std::fs::rename(&from, &to).map_err(io_err(&from))?;
        Ok(to)
    }

    /// Writes `agent.json` (bound addresses, pid) for tools and tests.
    pub fn write_runtime(&self, json: &[u8]) -> Result<(), StateError> {
        write_atomically(&self.path.join(RUNTIME_FILE), json, 0o644)
    }

    /// Removes `agent.json` at shutdown.
    pub fn clear_runtime(&self) {
        let _ = std::fs::remove_file(self.path.join(RUNTIME_FILE));
    }
}

/// Replaces `path` durably through [`tollgate_durable::write`]: a unique temp file, fsync,
/// rename, fsync of the directory, one writer per path; a failure leaves the old file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    tollgate_durable::write(path, bytes, mode).map_err(StateError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_agent_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateDir::open(dir.path()).unwrap();
        let err = StateDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
    }

    #[test]
    fn fingerprint_key_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = StateDir::open(dir.path())
            .unwrap()
            .fingerprint_key()
            .unwrap();
        let k2 = StateDir::open(dir.path())
            .unwrap()
            .fingerprint_key()
            .unwrap();
        assert_eq!(k1.0, k2.0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn snapshot_round_trips_and_quarantine_moves_it_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.read_snapshot().unwrap(), None);
        s.write_snapshot(b"one").unwrap();
        s.write_snapshot(b"two").unwrap();
        assert_eq!(s.read_snapshot().unwrap().as_deref(), Some(&b"two"[..]));
        let moved = s.quarantine_snapshot(42).unwrap();
        assert!(moved.ends_with("usage.snapshot.corrupt-42"));
        assert_eq!(s.read_snapshot().unwrap(), None);
    }

    #[test]
    fn a_snapshot_edited_behind_the_agents_back_is_not_authentic() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let bytes = |n: u8| vec![n; 100];
        // Without a key nothing is judged.
        s.write_snapshot(&bytes(1)).unwrap();
        assert_eq!(s.snapshot_authentic(&bytes(1)), None);
        s.set_mac_key([7; 32]);
        s.write_snapshot_with(|w| w.write_all(&bytes(2))).unwrap();
        let on_disk = s.read_snapshot().unwrap().unwrap();
        assert_eq!(s.snapshot_authentic(&on_disk), Some(true));
        // What the agent judges at start: the tail read from the file.
        let (_, tail) = s.open_snapshot().unwrap().unwrap();
        assert_eq!(tail, on_disk[on_disk.len() - SNAPSHOT_MAC_TAIL_LEN..]);
        assert_eq!(s.snapshot_authentic(&tail), Some(true));
        // A crash before the rename leaves the previous snapshot: still authentic.
        s.write_snapshot(&bytes(3)).unwrap();
        assert_eq!(s.snapshot_authentic(&bytes(2)), Some(true));
        assert_eq!(s.snapshot_authentic(&bytes(3)), Some(true));
        // Edited (its trailer recomputed), older than the last two, or without the MAC
        // file: not authentic.
        let mut edited = bytes(3);
        edited[90] ^= 1;
        assert_eq!(s.snapshot_authentic(&edited), Some(false));
        s.write_snapshot(&bytes(4)).unwrap();
        assert_eq!(s.snapshot_authentic(&bytes(2)), Some(false));
        std::fs::remove_file(dir.path().join(SNAPSHOT_MAC_FILE)).unwrap();
        assert_eq!(s.snapshot_authentic(&bytes(4)), Some(false));
        // Another node's key does not make it authentic.
        s.write_snapshot(&bytes(5)).unwrap();
        drop(s);
        let other = StateDir::open(dir.path()).unwrap();
        other.set_mac_key([8; 32]);
        assert_eq!(other.snapshot_authentic(&bytes(5)), Some(false));
    }
}

//! The node identity key and the usage ledger on disk: the IO around `tollgate-ledger`.
//!
//! Files in the state dir:
//! - `node.key` — the node's Ed25519 secret seed (32 bytes, 0600), created at first start
//!   through the durable write path (`tollgate_durable::write_new`: never replaces a key). Its
//!   public key is the node's identity: `tollgate status`, `GET /api/v1/ledger`, and the
//!   license server, which binds it to the node at its first lease.
//! - `ledger/<first seq, 20 digits>.tgl` — segments of the append-only chain, each a run of
//!   frames (`docs/ledger.md`). An entry is appended and fsynced at every report interval;
//!   a segment past [`SEGMENT_BYTES_MAX`] is closed and the next entry opens a new one.
//!   Nothing ever rewrites or truncates a segment: a damaged tail found at start is left
//!   as evidence, and the chain goes on in a new segment from the last entry that decodes.
//!
//! - `ledger/delivered` — the seq of the last entry a usage report delivered (text). At start
//!   the entries after it are queued again, so entries written but not delivered before a
//!   stop reach the license server after the restart (no `gap` there).
//!
//! A node whose `node.key` is gone while the ledger remains gets a new key and continues
//! the chain with it (`key_change` to a verifier); a node whose ledger is gone starts a
//! new chain at seq 0 (`reset`). Both are counted as state resets seen.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use tollgate_ledger::{Chain, Entry, Head, NodeKey, PublicKey, SignedEntry, decode_frames};

use crate::state::StateError;

pub const NODE_KEY_FILE: &str = "node.key";
pub const LEDGER_DIR: &str = "ledger";
/// The seq of the last delivered entry, in the ledger directory.
pub const DELIVERED_FILE: &str = "delivered";
/// Extension of a ledger segment.
pub const SEGMENT_EXT: &str = "tgl";
/// A segment past this size is closed; the next entry opens a new one.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 20;
/// Most entries kept in memory for the next usage report (the oldest are dropped first;
/// they stay in the ledger on disk).
pub const UNSENT_ENTRIES_MAX: usize = 64;

/// Errors of the ledger's files.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the node key must be 32 bytes, found {len}")]
    BadKey { path: PathBuf, len: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the node key, or creates one (0600). The flag is true when it was created now.
pub fn node_key(state_dir: &Path) -> Result<(NodeKey, bool), LedgerError> {
    let path = state_dir.join(NODE_KEY_FILE);
    match File::open(&path) {
        Ok(mut f) => {
            let mut bytes = Vec::with_capacity(32);
            f.read_to_end(&mut bytes).map_err(io_err(&path))?;
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| LedgerError::BadKey {
                    path: path.clone(),
                    len: bytes.len(),
                })?;
            Ok((NodeKey::from_seed(&seed), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = NodeKey::generate_with(&mut rand::rngs::OsRng);
            // Never replaces a key: a second writer racing here fails instead.
            tollgate_durable::write_new(&path, &key.seed(), 0o600).map_err(StateError::from)?;
            Ok((key, true))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The segments of a ledger directory, in chain order (by name: the first seq, padded).
pub fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == SEGMENT_EXT))
        .collect();
    out.sort();
    Ok(out)
}

/// The bytes of a ledger: a directory's segments concatenated in order, or one file.
/// The flag is true for a directory (the whole chain, from seq 0).
pub fn read_ledger(path: &Path) -> io::Result<(Vec<u8>, bool)> {
    if path.is_dir() {
        let mut bytes = Vec::new();
        for segment in segments(path)? {
            bytes.extend(std::fs::read(segment)?);
        }
        Ok((bytes, true))
    } else {
        Ok((std::fs::read(path)?, false))
    }
}

/// Counters of the ledger, for `/metrics` and the API.
#[derive(Debug, Default, Clone, Copy)]
pub struct LedgerStats {
    pub entries_written: u64,
    pub write_failures: u64,
    /// State resets this agent detected at start (ledger lost, node key lost).
    pub resets_seen: u64,
}

#[derive(Debug)]
struct Inner {
    chain: Chain,
    segment: Option<PathBuf>,
    segment_bytes: u64,
    /// Start of the interval the next entry covers.
    interval_start_ms: u64,
    /// Entries not yet delivered in a usage report, oldest first.
    unsent: Vec<SignedEntry>,
    stats: LedgerStats,
}

/// The node's ledger: its key, its directory and its head.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    key: NodeKey,
    inner: Mutex<Inner>,
}

impl Ledger {
    /// Opens (creating) `<state_dir>/ledger` and finds the head of the chain. `key_created`:
    /// the node key was made just now (a lost key if a ledger exists).
    pub fn open(
        state_dir: &Path,
        key: NodeKey,
        key_created: bool,
        now_ms: u64,
    ) -> Result<Ledger, LedgerError> {
        let dir = state_dir.join(LEDGER_DIR);
        let existed = dir.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let mut stats = LedgerStats::default();
        let mut head = None;
        let mut segment = None;
        let mut segment_bytes = 0;
        let found = segments(&dir).map_err(io_err(&dir))?;
        if let Some(last) = found.last() {
            let bytes = std::fs::read(last).map_err(io_err(last))?;
            let (entries, bad) = decode_frames(&bytes);
            head = entries.last().map(Head::of);
            match bad {
                None => {
                    segment = Some(last.clone());
                    segment_bytes = bytes.len() as u64;
                }
                Some((offset, error)) => tracing::error!(
                    segment = %last.display(),
                    offset,
                    %error,
                    "ledger segment has a damaged tail; kept as evidence, the chain goes on in a new segment"
                ),
            }
        }
        if head.is_none() && !key_created && !existed {
            stats.resets_seen += 1;
            tracing::warn!(dir = %dir.display(), "no ledger found for an existing node key: a new chain starts (a state reset)");
        }
        if let Some(h) = &head
            && h.node_key != key.public()
        {
            stats.resets_seen += 1;
            tracing::warn!(
                ledger_key = %tollgate_ledger::public_key_text(&h.node_key),
                node_key = %tollgate_ledger::public_key_text(&key.public()),
                "the ledger was signed by another node key: the chain goes on with this one (a key change)"
            );
        }
        let delivered = std::fs::read_to_string(dir.join(DELIVERED_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let unsent = undelivered(&found, delivered);
        tracing::info!(
            node_key = %tollgate_ledger::public_key_text(&key.public()),
            head_seq = ?head.map(|h| h.seq),
            delivered_seq = ?delivered,
            undelivered = unsent.len(),
            "ledger opened"
        );
        Ok(Ledger {
            dir,
            key,
            inner: Mutex::new(Inner {
                chain: Chain::new(head),
                segment,
                segment_bytes,
                interval_start_ms: head.map_or(now_ms, |h| h.interval_end_ms.min(now_ms)),
                unsent,
                stats,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    pub fn head(&self) -> Option<Head> {
        self.inner.lock().chain.head()
    }

    pub fn stats(&self) -> LedgerStats {
        self.inner.lock().stats
    }

    /// Where the next entry's interval starts.
    pub fn interval_start_ms(&self) -> u64 {
        self.inner.lock().interval_start_ms
    }

    /// Signs `entry` as the next one, appends it to the current segment and fsyncs. The
    /// entry's interval ends where the next one starts.
    pub fn append(&self, entry: Entry) -> Result<SignedEntry, LedgerError> {
        let mut inner = self.inner.lock();
        let end = entry.interval_end_ms;
        let mut chain = inner.chain.clone();
        let signed = chain.append(&self.key, entry);
        let frame = signed.encode();
        let path = match &inner.segment {
            Some(p) if inner.segment_bytes < SEGMENT_BYTES_MAX => p.clone(),
            _ => self.dir.join(format!("{:020}.{SEGMENT_EXT}", signed.seq)),
        };
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(&frame)?;
                f.sync_all()
            });
        if let Err(e) = written {
            inner.stats.write_failures += 1;
            return Err(io_err(&path)(e));
        }
        if inner.segment.as_ref() != Some(&path) {
            // A new segment: make its directory entry durable too.
            tollgate_durable::sync_dir(&self.dir).map_err(StateError::from)?;
            inner.segment = Some(path);
            inner.segment_bytes = 0;
        }
        inner.segment_bytes += frame.len() as u64;
        inner.chain = chain;
        inner.interval_start_ms = end;
        inner.stats.entries_written += 1;
        if inner.unsent.len() == UNSENT_ENTRIES_MAX {
            inner.unsent.remove(0);
        }
        inner.unsent.push(signed.clone());
        Ok(signed)
    }

    /// The entries not yet delivered, oldest first.
    pub fn unsent(&self) -> Vec<SignedEntry> {
        self.inner.lock().unsent.clone()
    }

    /// Forgets the unsent entries up to and including `seq` (delivered), and records `seq`
    /// in `ledger/delivered` for the next start.
    pub fn delivered(&self, seq: u64) {
        self.inner.lock().unsent.retain(|e| e.seq > seq);
        let path = self.dir.join(DELIVERED_FILE);
        if let Err(e) = crate::state::write_atomically(&path, seq.to_string().as_bytes(), 0o600) {
            tracing::warn!(error = %e, "cannot record the delivered ledger seq; entries may be sent twice");
        }
    }
}

/// The entries after `delivered` (all, without a record), at most [`UNSENT_ENTRIES_MAX`] of
/// the newest, oldest first: read from the last segment backwards.
fn undelivered(segments: &[PathBuf], delivered: Option<u64>) -> Vec<SignedEntry> {
    let mut newest_first = Vec::new();
    'segments: for segment in segments.iter().rev() {
        let Ok(bytes) = std::fs::read(segment) else {
            break;
        };
        for e in decode_frames(&bytes).0.into_iter().rev() {
            if delivered.is_some_and(|d| e.seq <= d) || newest_first.len() == UNSENT_ENTRIES_MAX {
                break 'segments;
            }
            newest_first.push(e);
        }
    }
    newest_first.reverse();
    newest_first
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ledger::{FindingKind, verify};

    fn entry(end_ms: u64) -> Entry {
        Entry {
            node_id: "n1".into(),
            interval_start_ms: end_ms - 1000,
            interval_end_ms: end_ms,
            license_status: "NO_LICENSE".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn the_chain_survives_a_restart_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        assert!(created);
        let ledger = Ledger::open(dir.path(), key, created, 1000).unwrap();
        ledger.append(entry(2000)).unwrap();
        ledger.append(entry(3000)).unwrap();
        drop(ledger);
        let (key, created) = node_key(dir.path()).unwrap();
        assert!(!created);
        let ledger = Ledger::open(dir.path(), key, created, 4000).unwrap();
        assert_eq!(ledger.head().unwrap().seq, 1);
        assert_eq!(ledger.interval_start_ms(), 3000);
        assert_eq!(ledger.stats().resets_seen, 0);
        ledger.append(entry(5000)).unwrap();
        let (bytes, whole) = read_ledger(&dir.path().join(LEDGER_DIR)).unwrap();
        assert!(whole);
        let report = verify(&bytes, Some(&ledger.public_key()), true);
        assert_eq!(report.finding, None);
        assert_eq!(report.entries, 3);
    }

    #[test]
    fn entries_not_delivered_before_a_stop_are_queued_again_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 1000).unwrap();
        for end in [2000, 3000, 4000, 5000] {
            ledger.append(entry(end)).unwrap();
        }
        ledger.delivered(1);
        drop(ledger);
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 6000).unwrap();
        let seqs: Vec<u64> = ledger.unsent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        ledger.delivered(3);
        drop(ledger);
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 7000).unwrap();
        assert!(ledger.unsent().is_empty());
        // Without a record (an older agent), the newest entries are queued (the server
        // ignores those it holds).
        std::fs::remove_file(dir.path().join(LEDGER_DIR).join(DELIVERED_FILE)).unwrap();
        drop(ledger);
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 8000).unwrap();
        assert_eq!(ledger.unsent().len(), 4);
    }

    #[test]
    fn a_lost_key_continues_the_chain_with_a_key_change() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 1000).unwrap();
        ledger.append(entry(2000)).unwrap();
        drop(ledger);
        std::fs::remove_file(dir.path().join(NODE_KEY_FILE)).unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 3000).unwrap();
        assert_eq!(ledger.stats().resets_seen, 1);
        ledger.append(entry(4000)).unwrap();
        let (bytes, _) = read_ledger(&dir.path().join(LEDGER_DIR)).unwrap();
        let f = verify(&bytes, None, true).finding.unwrap();
        assert_eq!((f.kind, f.seq), (FindingKind::KeyChange, Some(1)));
    }

    #[test]
    fn a_damaged_tail_is_kept_and_the_chain_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 1000).unwrap();
        ledger.append(entry(2000)).unwrap();
        drop(ledger);
        let ledger_dir = dir.path().join(LEDGER_DIR);
        let seg = segments(&ledger_dir).unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let (key, created) = node_key(dir.path()).unwrap();
        let ledger = Ledger::open(dir.path(), key, created, 3000).unwrap();
        ledger.append(entry(4000)).unwrap();
        assert_eq!(segments(&ledger_dir).unwrap().len(), 2);
        let (bytes, _) = read_ledger(&ledger_dir).unwrap();
        let f = verify(&bytes, None, true).finding.unwrap();
        assert_eq!(f.kind, FindingKind::Malformed);
    }
}

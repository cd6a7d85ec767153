//! The journal writer: appends one record per receive batch to the current segment
//! *before* the batch is applied, so whatever the counts show survives a `kill -9` (the
//! bytes are in the kernel's page cache once `write(2)` returns). A power loss loses what
//! was not yet `fsync`ed: at most `fsync_interval` (a background thread syncs; with an
//! interval of zero every append is synced before it is applied).
//!
//! Format: [`tollgate_usage::journal`]. Ordering: [`Journal::lock`] is held across the
//! append *and* the apply of a batch, so the journal's order is the order batches reached
//! the tables, across threads, and [`Journal::rotate`] (under the same lock) guarantees
//! that every batch in the closed segments is already in the tables: a snapshot started
//! after a rotation contains them all.
//!
//! **Bounded, and suspended when full.** The segments on disk (the current one and those not
//! yet covered by a snapshot) never hold more than `max_bytes`. Normally a checkpoint every
//! few seconds keeps them small; while snapshots fail they grow. An append that would pass
//! `max_bytes`, or that fails (a full disk, an IO error), *suspends* the journal: that batch
//! and every later one is still applied (metering goes on) but not journalled, counted in
//! [`JournalStats::unjournaled`], logged once at error level, shown by
//! [`Journal::suspended`]. A failed append is truncated away, so the segment stays readable.
//! Appending stops at the first missing batch so that the journal on disk stays a *prefix* of
//! what was applied: a replay of it is the state as of the suspension, never a state with
//! one batch missing in the middle.
//!
//! The suspension is marked on disk by an empty file `gap-<segment>` ([`GAP_PREFIX`]; an
//! empty file needs no data block, so it can be made on a full disk). A rotation ends the
//! suspension (the new segment starts after the gap), unless the journal is still over
//! `max_bytes`; a snapshot started after that rotation covers the gap, and the checkpoint
//! that wrote it removes the marker with the old segments. A restart that finds a marker not
//! covered by the snapshot replays the journal only up to the gap and reports a state reset
//! (`journal_gap`): a crash while suspended loses what was applied since.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tollgate_usage::journal::{MacChain, RECORD_HEADER_LEN, SegmentHeader, segment_file_name};

/// Counters of the journal, for `/metrics`.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub write_failures: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_failures: AtomicU64,
    /// The segment being written.
    pub segment: AtomicU64,
    /// Batches applied but not journalled while the journal was suspended (full or failing).
    pub unjournaled: AtomicU64,
    /// Times the journal was suspended.
    pub suspensions: AtomicU64,
    /// Bytes of the segments on disk (current and not yet covered by a snapshot).
    pub retained_bytes: AtomicU64,
    /// 1 while suspended.
    pub suspended: AtomicU64,
}

/// Name prefix of the gap markers: `gap-<segment:020>` (module doc).
pub const GAP_PREFIX: &str = "gap-";

/// File name of the gap marker for `segment`.
pub fn gap_file_name(segment: u64) -> String {
    format!("{GAP_PREFIX}{segment:020}")
}

/// The segment of a gap marker's file name.
pub fn parse_gap_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GAP_PREFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Why the journal is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    /// Appending would pass `max_bytes` (snapshots have been failing).
    Full,
    /// An append failed (a full disk, an IO error).
    WriteFailed,
}

impl Suspension {
    pub fn as_str(self) -> &'static str {
        match self {
            Suspension::Full => "full",
            Suspension::WriteFailed => "write_failed",
        }
    }
}

/// The writer's state, behind [`Journal::lock`].
#[derive(Debug)]
pub struct JournalInner {
    file: Option<Arc<File>>,
    segment: u64,
    /// Bytes of whole records in the current segment (where a failed append is cut back to).
    len: u64,
    /// Bytes of the older segments still on disk.
    closed_bytes: u64,
    /// Set while appends are refused: why, and the segment the gap is in.
    suspended: Option<(Suspension, u64)>,
    sync_each: bool,
    /// The current segment's MAC chain: every record is sealed with it as it is appended.
    chain: MacChain,
}

impl JournalInner {
    fn retained(&self) -> u64 {
        self.closed_bytes + self.len
    }
}

/// The journal of one agent (module doc).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    fingerprint_key_id: u64,
    clock_offset_ms: i64,
    max_bytes: u64,
    mac_key: [u8; 32],
    inner: Mutex<JournalInner>,
    pub stats: JournalStats,
    dirty: AtomicBool,
}

fn open_segment(dir: &Path, header: &SegmentHeader) -> io::Result<File> {
    let path = dir.join(segment_file_name(header.segment));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(&header.encode())?;
    file.sync_all()?;
    tollgate_durable::sync_dir(dir)?;
    Ok(file)
}

impl Journal {
    /// Opens `dir` (created 0700) and starts segment `segment` (replacing a file of that
    /// number: the caller has replayed everything before). With `fsync_interval` zero every
    /// append is synced before it is applied. The segments on disk never pass `max_bytes`
    /// (module doc); older segments already there count against it until removed. Records
    /// are sealed with a MAC keyed by `mac_key` (`tollgate_usage::journal`, version 4).
    pub fn open(
        dir: &Path,
        segment: u64,
        fingerprint_key_id: u64,
        clock_offset_ms: i64,
        fsync_interval: Duration,
        max_bytes: u64,
        mac_key: [u8; 32],
    ) -> io::Result<Journal> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let header = SegmentHeader {
            segment,
            fingerprint_key_id,
            clock_offset_ms,
        };
        let file = open_segment(dir, &header)?;
        let chain = MacChain::new(&mac_key, &header.encode());
        let closed_bytes = segment_sizes(dir)
            .into_iter()
            .filter(|&(n, _)| n != segment)
            .map(|(_, len)| len)
            .sum();
        let stats = JournalStats::default();
        stats.segment.store(segment, Ordering::Relaxed);
        let journal = Journal {
            dir: dir.to_owned(),
            fingerprint_key_id,
            clock_offset_ms,
            max_bytes,
            mac_key,
            inner: Mutex::new(JournalInner {
                file: Some(Arc::new(file)),
                segment,
                len: tollgate_usage::journal::SEGMENT_HEADER_LEN as u64,
                closed_bytes,
                suspended: None,
                sync_each: fsync_interval.is_zero(),
                chain,
            }),
            stats,
            dirty: AtomicBool::new(false),
        };
        journal.publish(&journal.inner.lock());
        Ok(journal)
    }

    /// The bound on the segments on disk.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Why appends are refused right now, and the segment the gap is in; `None` while every
    /// applied batch is journalled.
    pub fn suspended(&self) -> Option<(Suspension, u64)> {
        self.inner.lock().suspended
    }

    fn publish(&self, inner: &JournalInner) {
        self.stats
            .retained_bytes
            .store(inner.retained(), Ordering::Relaxed);
        self.stats
            .suspended
            .store(u64::from(inner.suspended.is_some()), Ordering::Relaxed);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the journal for one batch: hold the guard across [`JournalGuard::append`] and
    /// the apply of what was appended.
    #[inline]
    pub fn lock(&self) -> JournalGuard<'_> {
        JournalGuard {
            journal: self,
            inner: self.inner.lock(),
        }
    }

    /// Closes the current segment and starts the next one; returns the new segment's number.
    /// Every batch in the older segments has been applied when this returns.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut inner = self.inner.lock();
        let next = inner.segment + 1;
        let header = SegmentHeader {
            segment: next,
            fingerprint_key_id: self.fingerprint_key_id,
            clock_offset_ms: self.clock_offset_ms,
        };
        let file = open_segment(&self.dir, &header)?;
        inner.chain = MacChain::new(&self.mac_key, &header.encode());
        // The old segment is synced by the next snapshot's durable write making it moot,
        // but sync it anyway so a power loss before that snapshot loses nothing more.
        let old = inner.file.replace(Arc::new(file));
        inner.segment = next;
        inner.closed_bytes += inner.len;
        inner.len = tollgate_usage::journal::SEGMENT_HEADER_LEN as u64;
        // The new segment starts after the gap: appends resume (the gap marker stays until a
        // snapshot covers it), unless the bound is still passed: then the gap goes on into
        // the new segment (batches applied from now on are in no snapshot yet either).
        if let Some((why, _)) = inner.suspended {
            if inner.retained() < self.max_bytes {
                inner.suspended = None;
                tracing::info!(
                    segment = next,
                    "journal resumed: batches are journalled again (the snapshot being written covers the gap)"
                );
            } else {
                inner.suspended = Some((why, next));
                self.mark_gap(next);
            }
        }
        self.publish(&inner);
        drop(inner);
        self.stats.segment.store(next, Ordering::Relaxed);
        if let Some(old) = old {
            let _ = old.sync_data();
        }
        Ok(next)
    }

    /// Removes the segments and gap markers numbered below `segment` (a snapshot now holds
    /// them).
    pub fn remove_before(&self, segment: u64) {
        remove_segments_before(&self.dir, segment);
        let mut inner = self.inner.lock();
        inner.closed_bytes = segment_sizes(&self.dir)
            .into_iter()
            .filter(|&(n, _)| n != inner.segment)
            .map(|(_, len)| len)
            .sum();
        self.publish(&inner);
    }

    /// `fsync` of the current segment if anything was appended since the last one. The
    /// file is synced outside the lock: ingest does not wait for the disk.
    pub fn sync(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let file = self.inner.lock().file.clone();
        if let Some(file) = file {
            match file.sync_data() {
                Ok(()) => self.stats.fsyncs.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.stats.fsync_failures.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Writes `head` then `tail` with one `writev(2)` when the kernel takes both at once (it does
/// for a regular file unless the disk fills midway), finishing a short write by hand.
fn write_all_two(file: &File, head: &[u8], tail: &[u8]) -> io::Result<()> {
    let mut f = file;
    let n = loop {
        match f.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(tail)]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 0 && head.len() + tail.len() > 0 {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    if n < head.len() {
        f.write_all(&head[n..])?;
        f.write_all(tail)
    } else {
        f.write_all(&tail[n - head.len()..])
    }
}

/// Removes journal segments and gap markers numbered below `segment` in `dir`; returns how
/// many segments.
pub fn remove_segments_before(dir: &Path, segment: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = tollgate_usage::journal::parse_segment_file_name(&name)
            && n < segment
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
        if let Some(n) = parse_gap_file_name(&name)
            && n < segment
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    removed
}

/// The segments in `dir` and their sizes.
fn segment_sizes(dir: &Path) -> Vec<(u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n =
                tollgate_usage::journal::parse_segment_file_name(&e.file_name().to_string_lossy())?;
            Some((n, e.metadata().ok()?.len()))
        })
        .collect()
}

/// The gap markers in `dir` (module doc), lowest first.
pub fn gap_markers(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut gaps: Vec<u64> = entries
        .flatten()
        .filter_map(|e| parse_gap_file_name(&e.file_name().to_string_lossy()))
        .collect();
    gaps.sort_unstable();
    gaps
}

/// The journal held for one batch.
pub struct JournalGuard<'a> {
    journal: &'a Journal,
    inner: MutexGuard<'a, JournalInner>,
}

impl JournalGuard<'_> {
    /// Releases the journal to the next waiter first (a long series of holders, such as a
    /// reconciliation's steps, then cannot starve the ingest threads).
    pub fn unlock_fair(self) {
        MutexGuard::unlock_fair(self.inner);
    }

    /// Appends one finished record (one `write(2)`); returns whether it is in the journal.
    /// The batch is applied either way; `false` means it is not crash-safe (module doc:
    /// the journal is suspended). On failure the segment is cut back to its last whole
    /// record.
    pub fn append(&mut self, record: &[u8]) -> bool {
        let journal = self.journal;
        let stats = &journal.stats;
        let inner = &mut *self.inner;
        if inner.suspended.is_some() {
            stats.unjournaled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if inner.retained() + record.len() as u64 > journal.max_bytes {
            journal.suspend(inner, Suspension::Full, None);
            return false;
        }
        let Some(file) = inner.file.as_ref() else {
            journal.suspend(inner, Suspension::WriteFailed, None);
            return false;
        };
        // Sealed with the chain's MAC in place of the checksum; the chain moves on only once
        // the record is written.
        let (header, chain) = inner.chain.seal(record);
        let written = write_all_two(file, &header, &record[RECORD_HEADER_LEN..]).and_then(|()| {
            if inner.sync_each {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                inner.chain = chain;
                inner.len += record.len() as u64;
                stats.records.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(record.len() as u64, Ordering::Relaxed);
                stats
                    .retained_bytes
                    .store(inner.retained(), Ordering::Relaxed);
                if !inner.sync_each {
                    journal.dirty.store(true, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                stats.write_failures.fetch_add(1, Ordering::Relaxed);
                // Cut the partial record away; if even that fails, stop using this file
                // (the next rotation opens a fresh one).
                if file.set_len(inner.len).is_err() {
                    inner.file = None;
                }
                journal.suspend(inner, Suspension::WriteFailed, Some(&e));
                false
            }
        }
    }
}

impl Journal {
    /// Creates the gap marker of `segment` (an empty file: no data block, so it can be made
    /// on a full disk); returns whether it is there.
    fn mark_gap(&self, segment: u64) -> bool {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(gap_file_name(segment)))
            .and_then(|f| f.sync_all())
            .and_then(|()| tollgate_durable::sync_dir(&self.dir).map_err(io::Error::from))
            .is_ok()
    }

    /// Stops appending until the next rotation: marks the gap on disk, logs once.
    fn suspend(&self, inner: &mut JournalInner, why: Suspension, error: Option<&io::Error>) {
        let segment = inner.segment;
        inner.suspended = Some((why, segment));
        self.stats.unjournaled.fetch_add(1, Ordering::Relaxed);
        self.stats.suspensions.fetch_add(1, Ordering::Relaxed);
        self.publish(inner);
        let marked = self.mark_gap(segment);
        let error = error.map(ToString::to_string);
        tracing::error!(
            reason = why.as_str(),
            segment,
            retained_bytes = inner.retained(),
            max_bytes = self.max_bytes,
            error = error.as_deref().unwrap_or(""),
            gap_marked = marked,
            "journal suspended: batches are applied but not crash-safe until a snapshot is written"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_events::MonoTime;
    use tollgate_usage::journal::{RecordBuilder, SEGMENT_HEADER_LEN, records_keyed};

    const KEY: [u8; 32] = [5; 32];

    #[test]
    fn appends_rotate_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let journal =
            Journal::open(dir.path(), 1, 9, 0, Duration::from_secs(1), 1 << 20, KEY).unwrap();
        let mut b = RecordBuilder::default();
        b.begin(MonoTime::from_unix_ms(5));
        b.push(b"call-start a\n");
        assert!(journal.lock().append(b.finish()));
        assert_eq!(journal.rotate().unwrap(), 2);
        b.begin(MonoTime::from_unix_ms(6));
        b.push(b"call-stop a\n");
        assert!(journal.lock().append(b.finish()));
        journal.sync();
        for (n, text) in [(1u64, &b"call-start a\n"[..]), (2, b"call-stop a\n")] {
            let bytes = std::fs::read(dir.path().join(segment_file_name(n))).unwrap();
            let (header, rest) = SegmentHeader::decode(&bytes).unwrap();
            assert_eq!((header.segment, header.fingerprint_key_id), (n, 9));
            let head: [u8; SEGMENT_HEADER_LEN] = bytes[..SEGMENT_HEADER_LEN].try_into().unwrap();
            let mut it = records_keyed(rest, 0, MacChain::new(&KEY, &head));
            let got: Vec<Vec<u8>> = it
                .by_ref()
                .flat_map(|r| r.datagrams().map(<[u8]>::to_vec).collect::<Vec<_>>())
                .collect();
            assert_eq!(got, vec![text.to_vec()]);
            assert_eq!(it.error, None);
        }
        journal.remove_before(2);
        assert!(!dir.path().join(segment_file_name(1)).exists());
        assert!(dir.path().join(segment_file_name(2)).exists());
        assert_eq!(journal.stats.records.load(Ordering::Relaxed), 2);
        assert_eq!(journal.stats.fsyncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_journal_suspends_until_a_rotation_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let header = tollgate_usage::journal::SEGMENT_HEADER_LEN as u64;
        let mut b = RecordBuilder::default();
        b.begin(MonoTime::from_unix_ms(5));
        b.push(b"call-start a\n");
        let record_len = b.finish().len() as u64;
        // Room for the header and three records.
        let journal = Journal::open(
            dir.path(),
            1,
            9,
            0,
            Duration::from_secs(1),
            header + 3 * record_len,
            KEY,
        )
        .unwrap();
        let appended: Vec<bool> = (0..5).map(|_| journal.lock().append(b.finish())).collect();
        assert_eq!(appended, [true, true, true, false, false]);
        assert_eq!(journal.suspended(), Some((Suspension::Full, 1)));
        assert_eq!(gap_markers(dir.path()), [1]);
        let stats = &journal.stats;
        assert_eq!(stats.unjournaled.load(Ordering::Relaxed), 2);
        assert_eq!(stats.suspensions.load(Ordering::Relaxed), 1);
        assert_eq!(stats.suspended.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.retained_bytes.load(Ordering::Relaxed),
            header + 3 * record_len
        );
        // A rotation while the old segment is still on disk (its snapshot failed): still
        // full, and the gap goes on into the new segment.
        assert_eq!(journal.rotate().unwrap(), 2);
        assert_eq!(journal.suspended(), Some((Suspension::Full, 2)));
        assert!(!journal.lock().append(b.finish()));
        assert_eq!(gap_markers(dir.path()), [1, 2]);
        // A snapshot covered segment 1: it goes with its marker; the next rotation resumes.
        journal.remove_before(2);
        assert_eq!(gap_markers(dir.path()), [2]);
        assert_eq!(stats.retained_bytes.load(Ordering::Relaxed), header);
        assert_eq!(journal.rotate().unwrap(), 3);
        assert_eq!(journal.suspended(), None);
        assert_eq!(stats.suspended.load(Ordering::Relaxed), 0);
        assert!(journal.lock().append(b.finish()));
        journal.remove_before(3);
        assert_eq!(gap_markers(dir.path()), Vec::<u64>::new());
        assert_eq!(
            stats.retained_bytes.load(Ordering::Relaxed),
            header + record_len
        );
        assert_eq!(stats.unjournaled.load(Ordering::Relaxed), 3);
    }
}

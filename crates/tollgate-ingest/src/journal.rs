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
//! **Failures.** A failed append (a full disk) is truncated away, so the segment stays
//! readable; the batch is still applied (metering goes on) but is counted in
//! [`JournalStats::write_failures`] and logged once per failure streak: such a batch is not
//! crash-safe until the next snapshot.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tollgate_usage::journal::{SegmentHeader, segment_file_name};

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
}

/// The writer's state, behind [`Journal::lock`].
#[derive(Debug)]
pub struct JournalInner {
    file: Option<Arc<File>>,
    segment: u64,
    /// Bytes of whole records in the current segment (where a failed append is cut back to).
    len: u64,
    failing: bool,
    sync_each: bool,
}

/// The journal of one agent (module doc).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    fingerprint_key_id: u64,
    clock_offset_ms: i64,
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
    /// number: the caller has replayed and checkpointed everything before). With
    /// `fsync_interval` zero every append is synced before it is applied.
    pub fn open(
        dir: &Path,
        segment: u64,
        fingerprint_key_id: u64,
        clock_offset_ms: i64,
        fsync_interval: Duration,
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
        let stats = JournalStats::default();
        stats.segment.store(segment, Ordering::Relaxed);
        Ok(Journal {
            dir: dir.to_owned(),
            fingerprint_key_id,
            clock_offset_ms,
            inner: Mutex::new(JournalInner {
                file: Some(Arc::new(file)),
                segment,
                len: tollgate_usage::journal::SEGMENT_HEADER_LEN as u64,
                failing: false,
                sync_each: fsync_interval.is_zero(),
            }),
            stats,
            dirty: AtomicBool::new(false),
        })
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
        // The old segment is synced by the next snapshot's durable write making it moot,
        // but sync it anyway so a power loss before that snapshot loses nothing more.
        let old = inner.file.replace(Arc::new(file));
        inner.segment = next;
        inner.len = tollgate_usage::journal::SEGMENT_HEADER_LEN as u64;
        inner.failing = false;
        drop(inner);
        self.stats.segment.store(next, Ordering::Relaxed);
        if let Some(old) = old {
            let _ = old.sync_data();
        }
        Ok(next)
    }

    /// Removes the segments numbered below `segment` (a snapshot now holds them).
    pub fn remove_before(&self, segment: u64) {
        remove_segments_before(&self.dir, segment);
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

/// Removes journal segments numbered below `segment` in `dir`; returns how many.
pub fn remove_segments_before(dir: &Path, segment: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(n) = tollgate_usage::journal::parse_segment_file_name(&name.to_string_lossy())
            && n < segment
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
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
    /// On failure the segment is cut back to its last whole record.
    pub fn append(&mut self, record: &[u8]) -> bool {
        let inner = &mut *self.inner;
        let Some(file) = inner.file.as_ref() else {
            self.journal
                .stats
                .write_failures
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let written = (&**file).write_all(record).and_then(|()| {
            if inner.sync_each {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        let stats = &self.journal.stats;
        match written {
            Ok(()) => {
                inner.len += record.len() as u64;
                stats.records.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(record.len() as u64, Ordering::Relaxed);
                if inner.failing {
                    inner.failing = false;
                    tracing::info!("journal writes succeed again");
                }
                if !inner.sync_each {
                    self.journal.dirty.store(true, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                stats.write_failures.fetch_add(1, Ordering::Relaxed);
                if !inner.failing {
                    inner.failing = true;
                    tracing::error!(error = %e, segment = inner.segment, "journal write failed: batches are applied but not crash-safe until writes succeed and a snapshot is written");
                }
                // Cut the partial record away; if even that fails, stop using this file
                // (the next rotation opens a fresh one).
                if file.set_len(inner.len).is_err() {
                    inner.file = None;
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_events::MonoTime;
    use tollgate_usage::journal::{RecordBuilder, records};

    #[test]
    fn appends_rotate_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), 1, 9, 0, Duration::from_secs(1)).unwrap();
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
            let mut it = records(rest, 0);
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
}

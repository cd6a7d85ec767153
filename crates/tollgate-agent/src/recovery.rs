//! Crash-exact state: the start-up recovery (snapshot + journal replay) and the checkpoint
//! (rotate the journal, write a snapshot, drop the journal it covers).
//!
//! **Why replay is exact.** The ingest threads append each batch to the journal and apply
//! it while holding the journal lock, so the journal holds every applied change in the order
//! the tables saw it. A checkpoint rotates the journal under that lock (every batch of the
//! older segments is applied by then), then takes the snapshot shard by shard while ingest
//! goes on into the new segment, records that segment's number in the snapshot, writes it
//! durably and only then deletes the older segments. At start the agent restores the
//! snapshot *as of the time it was taken* and replays every segment from the recorded
//! number on, each record at its original receive time. Events that reached the snapshot
//! and are replayed again change nothing: a start of an active call, a stop of an absent
//! one (which leaves a tombstone, as it did live), a refresh, a registration with the same
//! expiry and a `subscribers` value are idempotent and each key's final state is set by
//! its last event. Then a full sweep at the current time drops what expired meanwhile.
//!
//! Times: the tables run on the monotonic tables clock (`tollgate_ingest::tables_clock`),
//! anchored to the wall clock when the process starts, so a restarted agent reads the old
//! process's times as wall-clock times as of that process's start.

use std::path::Path;

use tollgate_ingest::journal::gap_file_name;
use tollgate_ingest::{Journal, LocalStats, Pipeline, tables_clock, wall_clock};
use tollgate_usage::Tables;
use tollgate_usage::journal::{
    KEYED_FORMAT_VERSION, MacChain, RecordError, SEGMENT_HEADER_LEN, SegmentHeader,
    parse_segment_file_name, records, records_keyed, records_unchecked, segment_file_name,
};

use crate::resets::{ResetReason, StateResets};
use crate::state::{StateDir, StateError};

/// The journal's directory inside the state dir.
pub const JOURNAL_DIR: &str = "journal";

/// What start-up recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Calls and contacts the snapshot put back.
    pub snapshot_calls: u64,
    pub snapshot_contacts: u64,
    /// Journal segments and records replayed.
    pub segments: u64,
    pub records: u64,
    /// A cut last record was dropped (expected after a crash or power loss).
    pub torn_tail: bool,
    /// The segment the new journal starts at.
    pub next_segment: u64,
}

/// Restores the snapshot, replays the journal and records any state reset. `replay` is a
/// pipeline on `tables` without a journal.
pub fn recover(
    state_dir: &StateDir,
    tables: &Tables,
    replay: &Pipeline,
    resets: &StateResets,
) -> Recovery {
    let dir = state_dir.path();
    let journal_dir = dir.join(JOURNAL_DIR);
    let ran_before = journal_dir.exists() || dir.join(crate::state::SNAPSHOT_FILE).exists();
    let wall_ms = wall_clock().unix_ms();
    let mut recovery = Recovery::default();

    // 1. The snapshot.
    let mut replay_from = None;
    match state_dir.open_snapshot() {
        Ok(Some((file, tail))) => {
            if state_dir.snapshot_authentic(&tail) == Some(false) {
                resets.record(
                    ResetReason::SnapshotUnauthenticated,
                    wall_ms,
                    "usage.snapshot does not carry this node's MAC (edited, or written by \
                     another node or an older version); restored, but its figures are not \
                     known to be what this node wrote",
                );
            }
            // As of the time it was taken: the journal replays what came after. Streamed:
            // checked whole, then restored frame by frame (never the file in memory).
            match tables.restore_reader(std::io::BufReader::with_capacity(1 << 20, file)) {
                Ok((r, snapshot)) => {
                    recovery.snapshot_calls = r.calls;
                    recovery.snapshot_contacts = r.contacts;
                    replay_from = Some(snapshot.journal_segment);
                    tracing::info!(
                        calls = r.calls,
                        contacts = r.contacts,
                        taken_at_ms = snapshot.wall_at.unix_ms(),
                        journal_segment = snapshot.journal_segment,
                        "restored usage from snapshot"
                    );
                }
                Err(e) => {
                    let moved = state_dir
                        .quarantine_snapshot(wall_ms)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|e2| format!("cannot be moved aside: {e2}"));
                    resets.record(
                        ResetReason::SnapshotUnreadable,
                        wall_ms,
                        format!("usage.snapshot: {e}; moved to {moved}"),
                    );
                }
            }
        }
        Ok(None) if ran_before => resets.record(
            ResetReason::SnapshotMissing,
            wall_ms,
            "usage.snapshot is missing though the state dir shows an earlier run",
        ),
        Ok(None) => {}
        Err(e) => resets.record(ResetReason::StateDirUnreadable, wall_ms, e.to_string()),
    }

    // 2. The journal segments, in order.
    let mut segments: Vec<u64> = match std::fs::read_dir(&journal_dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| parse_segment_file_name(&e.file_name().to_string_lossy()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            resets.record(
                ResetReason::JournalUnreadable,
                wall_ms,
                format!("{}: {e}", journal_dir.display()),
            );
            Vec::new()
        }
    };
    segments.sort_unstable();
    // Segments before the snapshot's are already in it (a crash between the snapshot and
    // their removal): drop them. Without a snapshot, everything there is replayed.
    let from = replay_from.unwrap_or(0);
    segments.retain(|&n| {
        if n < from {
            let _ = std::fs::remove_file(journal_dir.join(segment_file_name(n)));
            false
        } else {
            true
        }
    });
    // A gap the journal left while suspended (full or failing): a marker the snapshot covers
    // is stale; one it does not cover means the journal holds the events only up to the gap,
    // so replay stops there (a prefix of what was applied, never a state with a batch missing
    // in the middle) and the loss is a reset.
    let gaps = tollgate_ingest::journal::gap_markers(&journal_dir);
    for &gap in &gaps {
        if gap < from {
            let _ = std::fs::remove_file(journal_dir.join(gap_file_name(gap)));
        }
    }
    if let Some(&gap) = gaps.iter().find(|&&g| g >= from) {
        segments.retain(|&n| {
            if n > gap {
                let _ = std::fs::remove_file(journal_dir.join(segment_file_name(n)));
                false
            } else {
                true
            }
        });
        for &g in gaps.iter().filter(|&&g| g >= from) {
            let _ = std::fs::remove_file(journal_dir.join(gap_file_name(g)));
        }
        resets.record(
            ResetReason::JournalGap,
            wall_ms,
            format!(
                "the journal was suspended (full or failing) in segment {gap} and no snapshot was written after it: events applied since then are lost; replayed up to the gap"
            ),
        );
    }
    if replay_from.is_some_and(|n| n > 0) && segments.first() != Some(&from) {
        resets.record(
            ResetReason::JournalMissing,
            wall_ms,
            format!(
                "journal segment {} (named by the snapshot) is missing",
                segment_file_name(from)
            ),
        );
    }
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            resets.record(
                ResetReason::JournalMissing,
                wall_ms,
                format!(
                    "journal segments {} to {} are missing",
                    pair[0] + 1,
                    pair[1] - 1
                ),
            );
        }
    }
    let last = segments.last().copied();
    let mut stats = LocalStats::default();
    for &n in &segments {
        let path = journal_dir.join(segment_file_name(n));
        let is_last = Some(n) == last;
        let mac_key = state_dir.journal_key();
        match replay_segment(
            &path,
            tables.fingerprint_key_id(),
            mac_key.as_ref(),
            replay,
            &mut stats,
        ) {
            Ok((count, torn)) => {
                recovery.segments += 1;
                recovery.records += count;
                if let Some(torn) = torn {
                    if let RecordError::Unauthenticated { last, .. } = torn
                        && !(is_last && last)
                    {
                        // A whole record (its length is right) whose MAC fails, before the
                        // tail: not a cut write but an edit or damage.
                        resets.record(
                            ResetReason::JournalUnauthenticated,
                            wall_ms,
                            format!(
                                "{}: {torn}; the rest of that segment is lost",
                                path.display()
                            ),
                        );
                    } else if is_last && is_tail(&torn) {
                        recovery.torn_tail = true;
                        tracing::warn!(segment = n, error = %torn, "journal: a torn last record was dropped (a crash or power loss cut it; it was never applied)");
                    } else {
                        resets.record(
                            ResetReason::JournalUnreadable,
                            wall_ms,
                            format!(
                                "{}: {torn}; the rest of that segment is lost",
                                path.display()
                            ),
                        );
                    }
                }
            }
            Err(e) if is_last && e.is_torn_header() => {
                recovery.torn_tail = true;
                tracing::warn!(
                    segment = n,
                    "journal: the last segment's header was cut; nothing in it was applied"
                );
            }
            Err(e) => resets.record(
                ResetReason::JournalUnreadable,
                wall_ms,
                format!("{}: {e}", path.display()),
            ),
        }
    }
    // 3. Whatever expired while the agent was down.
    let now = tables_clock();
    tables.sweep(now, tables.shard_count());
    recovery.next_segment = last.unwrap_or(from).max(from) + 1;
    if recovery.records > 0 || recovery.torn_tail {
        let u = tables.usage();
        tracing::info!(
            segments = recovery.segments,
            records = recovery.records,
            calls = u.calls,
            registered_subscribers = u.registered_subscribers,
            "replayed the journal"
        );
    }
    recovery
}

#[derive(Debug, thiserror::Error)]
enum SegmentError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(tollgate_usage::journal::RecordError),
    #[error("written with another fingerprint key")]
    KeyMismatch,
}

/// Whether a read error is what a cut write leaves: the last record runs past the end, or
/// fails its check while ending exactly at the end (a power loss can leave whole-length
/// garbage). A failure with records after it is damage.
fn is_tail(error: &RecordError) -> bool {
    match *error {
        RecordError::Truncated { .. } | RecordError::Checksum { .. } => true,
        RecordError::Unauthenticated { last, .. } => last,
        _ => false,
    }
}

impl SegmentError {
    fn is_torn_header(&self) -> bool {
        matches!(
            self,
            SegmentError::Format(tollgate_usage::journal::RecordError::HeaderTruncated)
        )
    }
}

/// Replays one segment; returns the records applied and the error that stopped the read
/// early, if any.
fn replay_segment(
    path: &Path,
    key_id: u64,
    mac_key: Option<&[u8; 32]>,
    replay: &Pipeline,
    stats: &mut LocalStats,
) -> Result<(u64, Option<tollgate_usage::journal::RecordError>), SegmentError> {
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() {
        return Err(SegmentError::Format(
            tollgate_usage::journal::RecordError::HeaderTruncated,
        ));
    }
    let (header, rest) = SegmentHeader::decode(&bytes).map_err(SegmentError::Format)?;
    if header.fingerprint_key_id != key_id {
        return Err(SegmentError::KeyMismatch);
    }
    let keyed = SegmentHeader::version(&bytes).is_some_and(|v| v >= KEYED_FORMAT_VERSION);
    let mut it = match (keyed, mac_key) {
        (false, _) => records(rest, SEGMENT_HEADER_LEN),
        (true, Some(key)) => {
            let mut head = [0u8; SEGMENT_HEADER_LEN];
            head.copy_from_slice(&bytes[..SEGMENT_HEADER_LEN]);
            records_keyed(rest, SEGMENT_HEADER_LEN, MacChain::new(key, &head))
        }
        (true, None) => records_unchecked(rest, SEGMENT_HEADER_LEN),
    };
    let mut count = 0;
    let mut pending = tollgate_ingest::Pending::default();
    for record in it.by_ref() {
        if let Some(c) = record.corrections() {
            // A reconciliation step: applied as it was, entries added taking its owner.
            let owner = replay.tables.owners().intern(c.owner);
            replay.tables.apply_corrections(owner, &c.corrections);
        }
        // Decoded events (the receive loop's records): applied by the code that applied
        // them live, nothing answered.
        replay.apply_entries(
            record.now,
            record.entries(),
            &mut pending,
            stats,
            None,
            |_, _, _| {},
        );
        // Datagrams as received (the HEP collector's, and older segments').
        for datagram in record.datagrams() {
            replay.replay(record.now, datagram, stats);
        }
        count += 1;
    }
    Ok((count, it.error))
}

/// Writes a snapshot that makes the journal before `segment` unneeded, then removes those
/// segments. With a journal, it is rotated first and `segment` is the new one.
pub fn checkpoint(
    tables: &Tables,
    state_dir: &StateDir,
    journal: Option<&Journal>,
    segment: u64,
) -> Result<usize, StateError> {
    // One checkpoint at a time: a slower one finishing after a newer one would put back a
    // snapshot naming a segment the newer one removed.
    let _one = state_dir.checkpoint_lock();
    let segment = match journal {
        Some(j) => j.rotate().map_err(|source| StateError::Io {
            path: j.dir().to_owned(),
            source,
        })?,
        None => segment,
    };
    let now = tables_clock();
    let len = state_dir.write_snapshot_with(|w| {
        tables
            .write_snapshot(now, wall_clock(), segment, w)
            .map(|(_, len)| len)
    })?;
    match journal {
        Some(j) => j.remove_before(segment),
        None => {
            tollgate_ingest::journal::remove_segments_before(
                &state_dir.path().join(JOURNAL_DIR),
                segment,
            );
        }
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tollgate_events::{CallRef, Event};
    use tollgate_usage::{FingerprintKey, TablesConfig};

    use super::*;

    /// Regression (issue 11): the periodic checkpoint and the shutdown's ran at once, and the
    /// slower one's snapshot, naming an older segment, replaced the newer one after the
    /// newer one had removed that segment: the next start reported `journal_missing`.
    #[test]
    fn concurrent_checkpoints_always_leave_the_segment_the_snapshot_names() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = Arc::new(StateDir::open(dir.path()).unwrap());
        let tables = Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([3; 32]),
        ));
        let now = tables_clock();
        for i in 0..20_000u32 {
            let id = format!("c{i}");
            tables.apply(
                now,
                &Event::CallStart {
                    call: CallRef {
                        call_id: id.as_bytes(),
                        from_tag: None,
                    },
                    emergency: false,
                },
            );
        }
        let journal = Arc::new(
            Journal::open(
                &dir.path().join(JOURNAL_DIR),
                1,
                tables.fingerprint_key_id(),
                0,
                Duration::from_secs(1),
                u64::MAX,
                [9; 32],
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (t, s, j) = (
                    Arc::clone(&tables),
                    Arc::clone(&state_dir),
                    Arc::clone(&journal),
                );
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        checkpoint(&t, &s, Some(&j), 0).unwrap();
                        // Between checkpoints, the snapshot's segment is there.
                        let _between = s.checkpoint_lock();
                        let bytes = s.read_snapshot().unwrap().unwrap();
                        let named = tollgate_usage::decode_snapshot(&bytes)
                            .unwrap()
                            .journal_segment;
                        assert!(
                            s.path()
                                .join(JOURNAL_DIR)
                                .join(segment_file_name(named))
                                .exists(),
                            "the snapshot names segment {named}, which is gone"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bytes = state_dir.read_snapshot().unwrap().unwrap();
        let named = tollgate_usage::decode_snapshot(&bytes)
            .unwrap()
            .journal_segment;
        assert_eq!(
            named,
            journal
                .stats
                .segment
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        assert!(
            dir.path()
                .join(JOURNAL_DIR)
                .join(segment_file_name(named))
                .exists()
        );
    }
}

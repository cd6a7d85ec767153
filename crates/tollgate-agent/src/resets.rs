//! State resets: the agent started with less state than it had before (a snapshot or
//! journal missing or unreadable where the state directory shows an earlier run). A reset
//! is never silent: it is logged at error level, counted in
//! `tollgate_state_resets_total{reason}`, and kept as *pending* — in `/healthz`,
//! `GET /api/v1/state/resets` and on the web page — until an admin acknowledges it with
//! `POST /api/v1/state/resets/acknowledge`. Pending resets are stored in
//! `<state_dir>/state-resets.json` (durable write), so a restart does not hide one.
//!
//! Other parts of the agent (the ledger) report and read resets through
//! [`StateResets::record`] and [`StateResets::counts`]; the reasons are [`ResetReason`].

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Where pending (unacknowledged) resets are kept.
pub const RESETS_FILE: &str = "state-resets.json";

/// Why state was lost. The label values of `tollgate_state_resets_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// No snapshot, though the state dir shows an earlier run (deleted by hand?).
    SnapshotMissing,
    /// A snapshot that does not decode, fails its checksum or was made with another key.
    SnapshotUnreadable,
    /// A journal segment the snapshot needs is gone.
    JournalMissing,
    /// A journal segment damaged before its tail (a torn tail is expected and not a reset).
    JournalUnreadable,
    /// The state dir itself cannot be read.
    StateDirUnreadable,
    /// Another component (the ledger) found state it cannot trust.
    LedgerUnreadable,
    /// The journal was suspended (full or failing) and no snapshot covered the gap before
    /// the agent stopped: what was applied after the gap is lost.
    JournalGap,
    /// A snapshot without this node's MAC (`usage.snapshot.mac`): edited, written by
    /// another node, or by a version before the MAC. Restored all the same.
    SnapshotUnauthenticated,
    /// A journal record that fails its MAC (version-4 segments) before the segment's tail:
    /// edited, damaged, or written under another node key. Replay of that segment stops
    /// there.
    JournalUnauthenticated,
}

impl ResetReason {
    pub const ALL: [ResetReason; 9] = [
        ResetReason::SnapshotMissing,
        ResetReason::SnapshotUnreadable,
        ResetReason::JournalMissing,
        ResetReason::JournalUnreadable,
        ResetReason::StateDirUnreadable,
        ResetReason::LedgerUnreadable,
        ResetReason::JournalGap,
        ResetReason::SnapshotUnauthenticated,
        ResetReason::JournalUnauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::SnapshotMissing => "snapshot_missing",
            ResetReason::SnapshotUnreadable => "snapshot_unreadable",
            ResetReason::JournalMissing => "journal_missing",
            ResetReason::JournalUnreadable => "journal_unreadable",
            ResetReason::StateDirUnreadable => "state_dir_unreadable",
            ResetReason::LedgerUnreadable => "ledger_unreadable",
            ResetReason::JournalGap => "journal_gap",
            ResetReason::SnapshotUnauthenticated => "snapshot_unauthenticated",
            ResetReason::JournalUnauthenticated => "journal_unauthenticated",
        }
    }
}

/// One reset, as shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReset {
    pub reason: ResetReason,
    /// Unix milliseconds (wall clock) when it was seen.
    pub at_ms: u64,
    /// What was found, in words (file and error).
    pub detail: String,
}

/// The answer of `GET /api/v1/state/resets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetsReport {
    /// Resets not yet acknowledged by an admin (this run and earlier ones).
    pub pending: Vec<StateReset>,
    /// Resets seen by this process, by reason (what the metric counts).
    pub counts: Vec<(ResetReason, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: Vec<StateReset>,
    counts: [u64; ResetReason::ALL.len()],
}

/// Most pending resets kept; older ones are dropped first (they are in the log).
pub const PENDING_RESETS_MAX: usize = 64;

/// The agent's record of state resets (module doc).
#[derive(Debug)]
pub struct StateResets {
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
}

impl StateResets {
    /// Loads the pending resets of earlier runs from `state_dir` (an unreadable file is
    /// logged and replaced).
    pub fn open(state_dir: &Path) -> StateResets {
        let file = state_dir.join(RESETS_FILE);
        let pending = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Vec<StateReset>>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "pending state resets unreadable; starting a new list");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        StateResets {
            file: Some(file),
            inner: Mutex::new(Inner {
                pending,
                ..Inner::default()
            }),
        }
    }

    /// A record kept in memory only (tests, tools).
    pub fn in_memory() -> StateResets {
        StateResets {
            file: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a reset: error log, counter, pending until acknowledged.
    pub fn record(&self, reason: ResetReason, at_ms: u64, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::error!(
            reason = reason.as_str(),
            detail = %detail,
            "state reset: the agent starts with less state than it had; counts may be low until senders refresh (acknowledge with POST /api/v1/state/resets/acknowledge)"
        );
        let mut inner = self.inner.lock();
        let index = ResetReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        inner.counts[index] += 1;
        inner.pending.push(StateReset {
            reason,
            at_ms,
            detail,
        });
        let excess = inner.pending.len().saturating_sub(PENDING_RESETS_MAX);
        inner.pending.drain(..excess);
        self.save(&inner.pending);
    }

    /// Resets seen by this process, per reason (every reason, zeros included).
    pub fn counts(&self) -> Vec<(ResetReason, u64)> {
        let inner = self.inner.lock();
        ResetReason::ALL.iter().copied().zip(inner.counts).collect()
    }

    /// Resets not yet acknowledged.
    pub fn pending(&self) -> Vec<StateReset> {
        self.inner.lock().pending.clone()
    }

    pub fn report(&self) -> ResetsReport {
        ResetsReport {
            pending: self.pending(),
            counts: self.counts(),
        }
    }

    /// Clears the pending list (an admin has seen it); returns how many were cleared.
    pub fn acknowledge(&self, by: &str) -> usize {
        let mut inner = self.inner.lock();
        let cleared = inner.pending.len();
        inner.pending.clear();
        self.save(&inner.pending);
        if cleared > 0 {
            tracing::info!(by, cleared, "state resets acknowledged");
        }
        cleared
    }

    fn save(&self, pending: &[StateReset]) {
        let Some(file) = &self.file else { return };
        let result = if pending.is_empty() {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            serde_json::to_vec_pretty(pending)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    tollgate_durable::write(file, &json, 0o600).map_err(|e| e.to_string())
                })
        };
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "cannot store pending state resets");
        }
    }

    /// Prometheus lines for `tollgate_state_resets_total{reason}` (every reason).
    pub fn write_metrics(&self, m: &mut crate::metrics::MetricsWriter) {
        let counts = self.counts();
        m.labeled_counter(
            "tollgate_state_resets_total",
            "State resets seen at start (a snapshot or journal missing or unreadable after an earlier run), by reason.",
            "reason",
            counts.iter().map(|(reason, n)| (reason.as_str(), *n)),
        );
        m.gauge(
            "tollgate_state_resets_pending",
            "State resets not yet acknowledged by an admin.",
            self.inner.lock().pending.len(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_is_counted_kept_across_reopen_and_cleared_by_acknowledge() {
        let dir = tempfile::tempdir().unwrap();
        let resets = StateResets::open(dir.path());
        resets.record(ResetReason::SnapshotMissing, 1_000, "usage.snapshot: gone");
        let mut m = crate::metrics::MetricsWriter::default();
        resets.write_metrics(&mut m);
        let text = m.finish();
        assert!(text.contains("tollgate_state_resets_total{reason=\"snapshot_missing\"} 1\n"));
        assert!(text.contains("tollgate_state_resets_total{reason=\"journal_unreadable\"} 0\n"));
        assert!(text.contains("tollgate_state_resets_pending 1\n"));

        // A restart keeps it pending (the counter is per process).
        let reopened = StateResets::open(dir.path());
        assert_eq!(reopened.pending().len(), 1);
        assert_eq!(reopened.pending()[0].reason, ResetReason::SnapshotMissing);
        assert_eq!(reopened.acknowledge("admin"), 1);
        assert!(reopened.pending().is_empty());
        assert!(!dir.path().join(RESETS_FILE).exists());
        assert!(StateResets::open(dir.path()).pending().is_empty());
    }

    #[test]
    fn reason_labels_are_the_serde_names() {
        for reason in ResetReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}

//! Ingest counters. Each ingest thread counts into plain integers ([`LocalStats`]) and
//! publishes them once per receive batch into its own [`ThreadStats`] (one writer, so no
//! read-modify-write atomics on the hot path). Readers sum the threads ([`IngestStats`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use tollgate_events::{Malformed, Verb};

/// Upper bounds of the receive-batch-size histogram buckets (datagrams per `recvmmsg`).
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Why a whole datagram was dropped (the `reason` label of `datagrams_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DatagramDrop {
    /// Its `(sender, seq)` was seen before.
    Duplicate = 0,
    /// Larger than the receive slot (`max_datagram_bytes`).
    Oversize = 1,
}

impl DatagramDrop {
    pub const COUNT: usize = 2;
    pub const ALL: [DatagramDrop; Self::COUNT] = [DatagramDrop::Duplicate, DatagramDrop::Oversize];
    pub fn as_str(self) -> &'static str {
        match self {
            DatagramDrop::Duplicate => "duplicate",
            DatagramDrop::Oversize => "oversize",
        }
    }
}

/// What an applied event did, beyond its verb (the `outcome` label of
/// `event_outcomes_total`): the idempotency rules at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventOutcome {
    CallStarted = 0,
    CallAlreadyActive = 1,
    CallStopped = 2,
    CallUnknown = 3,
    CallRefreshed = 4,
    ContactAdded = 5,
    ContactRefreshed = 6,
    ContactRemoved = 7,
    ContactUnknown = 8,
    SubscribersSet = 9,
    AdmitOk = 10,
    AdmitDenied = 11,
    CallAlreadyStopped = 12,
    /// A contact beyond `max_contacts_per_aor` replaced the AoR's soonest-expiring one.
    ContactReplaced = 13,
}

impl EventOutcome {
    pub const COUNT: usize = 14;
    pub const ALL: [EventOutcome; Self::COUNT] = [
        EventOutcome::CallStarted,
        EventOutcome::CallAlreadyActive,
        EventOutcome::CallStopped,
        EventOutcome::CallUnknown,
        EventOutcome::CallRefreshed,
        EventOutcome::ContactAdded,
        EventOutcome::ContactRefreshed,
        EventOutcome::ContactRemoved,
        EventOutcome::ContactUnknown,
        EventOutcome::SubscribersSet,
        EventOutcome::AdmitOk,
        EventOutcome::AdmitDenied,
        EventOutcome::CallAlreadyStopped,
        EventOutcome::ContactReplaced,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::CallStarted => "call_started",
            EventOutcome::CallAlreadyActive => "call_already_active",
            EventOutcome::CallStopped => "call_stopped",
            EventOutcome::CallUnknown => "call_unknown",
            EventOutcome::CallRefreshed => "call_refreshed",
            EventOutcome::ContactAdded => "contact_added",
            EventOutcome::ContactRefreshed => "contact_refreshed",
            EventOutcome::ContactRemoved => "contact_removed",
            EventOutcome::ContactUnknown => "contact_unknown",
            EventOutcome::SubscribersSet => "subscribers_set",
            EventOutcome::AdmitOk => "admit_ok",
            EventOutcome::AdmitDenied => "admit_denied",
            EventOutcome::CallAlreadyStopped => "call_already_stopped",
            EventOutcome::ContactReplaced => "contact_replaced",
        }
    }
}

/// Why a well-formed event was refused by a table's configured cap (the `reason` label of
/// `tollgate_events_refused_total`). A refused event changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventRefusal {
    /// A `call-start` of a new call while `[calls] max_active_calls` calls are active.
    CallsTableFull = 0,
    /// A `reg` for a new AoR while `[registrations] max_aors` AoRs are registered.
    RegistrationsTableFull = 1,
}

impl EventRefusal {
    pub const COUNT: usize = 2;
    pub const ALL: [EventRefusal; Self::COUNT] = [
        EventRefusal::CallsTableFull,
        EventRefusal::RegistrationsTableFull,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventRefusal::CallsTableFull => "calls_table_full",
            EventRefusal::RegistrationsTableFull => "registrations_table_full",
        }
    }
}

/// What became of an OpenSIPS `event_datagram` notification (a datagram on an event socket
/// whose first non-blank byte is `{`): the `result` label of
/// `tollgate_opensips_notifications_total`. Index 0 is `applied` (an event reached the
/// tables), 1 `ignored` (well-formed, nothing to count: a failed dialog, an AoR event), the
/// others are `tollgate_opensips::OpensipsError` labels at `2 + error.index()`.
pub const OPENSIPS_RESULTS: [&str; OPENSIPS_RESULT_COUNT] = {
    let mut labels = ["applied"; OPENSIPS_RESULT_COUNT];
    labels[1] = "ignored";
    let mut i = 0;
    while i < tollgate_opensips::OpensipsError::COUNT {
        labels[2 + i] = tollgate_opensips::OpensipsError::LABELS[i];
        i += 1;
    }
    labels
};
/// Number of [`OPENSIPS_RESULTS`].
pub const OPENSIPS_RESULT_COUNT: usize = 2 + tollgate_opensips::OpensipsError::COUNT;
/// Index of `applied` in [`OPENSIPS_RESULTS`].
pub const OPENSIPS_APPLIED: usize = 0;
/// Index of `ignored` in [`OPENSIPS_RESULTS`].
pub const OPENSIPS_IGNORED: usize = 1;

/// A thread's private counters, between two publications.
#[derive(Debug, Default, Clone)]
pub struct LocalStats {
    pub datagrams: u64,
    pub bytes: u64,
    pub events: [u64; Verb::COUNT],
    pub malformed: [u64; Malformed::COUNT],
    pub dropped: [u64; DatagramDrop::COUNT],
    pub outcomes: [u64; EventOutcome::COUNT],
    pub refused: [u64; EventRefusal::COUNT],
    pub lost_datagrams: u64,
    pub sender_restarts: u64,
    pub batches: u64,
    pub batch_buckets: [u64; BATCH_BUCKETS.len() + 1],
    pub replies: u64,
    pub reply_errors: u64,
    /// `admit` answers left out of a reply that had reached `REPLY_BYTES_MAX`.
    pub reply_answers_dropped: u64,
    pub replies_unaddressable: u64,
    pub recv_errors: u64,
    /// OpenSIPS notifications, by [`OPENSIPS_RESULTS`] index.
    pub opensips: [u64; OPENSIPS_RESULT_COUNT],
}

impl LocalStats {
    pub fn record_batch(&mut self, size: usize) {
        self.batches += 1;
        let i = BATCH_BUCKETS
            .iter()
            .position(|&b| size as u64 <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[i] += 1;
    }
}

macro_rules! atomic_mirror {
    ($( $field:ident : $kind:tt ),* $(,)?) => {
        /// The published counters of one ingest thread (one writer: that thread).
        #[derive(Debug, Default)]
        pub struct ThreadStats {
            $( $field: atomic_mirror!(@ty $kind), )*
        }

        impl ThreadStats {
            /// Adds `local` to the published counters and zeroes it. Only the owning thread
            /// calls this, so a plain load + store is enough.
            pub fn publish(&self, local: &mut LocalStats) {
                $( atomic_mirror!(@add self.$field, local.$field, $kind); )*
                *local = LocalStats::default();
            }

            /// Adds the published counters into `sum`.
            pub fn add_to(&self, sum: &mut LocalStats) {
                $( atomic_mirror!(@read self.$field, sum.$field, $kind); )*
            }
        }
    };
    (@ty one) => { AtomicU64 };
    (@ty [$n:expr]) => { [AtomicU64; $n] };
    // Saturating: a counter that input can move (`lost_datagrams`) must never wrap or
    // panic, however hostile the numbers.
    (@add $a:expr, $l:expr, one) => {
        if $l != 0 { $a.store($a.load(Relaxed).saturating_add($l), Relaxed); }
    };
    (@add $a:expr, $l:expr, [$n:expr]) => {
        for (a, l) in $a.iter().zip($l.iter()) {
            if *l != 0 { a.store(a.load(Relaxed).saturating_add(*l), Relaxed); }
        }
    };
    (@read $a:expr, $s:expr, one) => { $s = $s.saturating_add($a.load(Relaxed)); };
    (@read $a:expr, $s:expr, [$n:expr]) => {
        for (a, s) in $a.iter().zip($s.iter_mut()) { *s = s.saturating_add(a.load(Relaxed)); }
    };
}

atomic_mirror! {
    datagrams: one,
    bytes: one,
    events: [Verb::COUNT],
    malformed: [Malformed::COUNT],
    dropped: [DatagramDrop::COUNT],
    outcomes: [EventOutcome::COUNT],
    refused: [EventRefusal::COUNT],
    lost_datagrams: one,
    sender_restarts: one,
    batches: one,
    batch_buckets: [BATCH_BUCKETS.len() + 1],
    replies: one,
    reply_errors: one,
    reply_answers_dropped: one,
    replies_unaddressable: one,
    recv_errors: one,
    opensips: [OPENSIPS_RESULT_COUNT],
}

impl ThreadStats {
    /// Datagrams published so far (for a watcher that waits for a count).
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Relaxed)
    }
}

/// A summed view of every ingest thread's counters.
#[derive(Debug, Default, Clone)]
pub struct StatsSnapshot {
    pub totals: LocalStats,
    /// Kernel receive-queue drops, summed over sockets.
    pub kernel_drops: u64,
}

/// The registry of every ingest thread's counters.
#[derive(Debug, Default, Clone)]
pub struct IngestStats {
    threads: Arc<Mutex<Vec<Arc<ThreadStats>>>>,
    /// Per socket: the kernel's cumulative receive-queue drop count (`SO_MEMINFO`), raised
    /// with `fetch_max` by whichever thread reads that socket.
    sockets: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl IngestStats {
    /// Registers a new thread's counters (at thread start, not on the hot path).
    pub fn register(&self) -> Arc<ThreadStats> {
        let t = Arc::new(ThreadStats::default());
        self.threads.lock().push(Arc::clone(&t));
        t
    }

    /// Registers a socket's kernel drop counter (at socket open).
    pub fn register_socket(&self) -> Arc<AtomicU64> {
        let d = Arc::new(AtomicU64::new(0));
        self.sockets.lock().push(Arc::clone(&d));
        d
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snap = StatsSnapshot::default();
        for t in self.threads.lock().iter() {
            t.add_to(&mut snap.totals);
        }
        snap.kernel_drops = self.sockets.lock().iter().map(|d| d.load(Relaxed)).sum();
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counts_add_up_across_threads() {
        let stats = IngestStats::default();
        let a = stats.register();
        let b = stats.register();
        let mut la = LocalStats {
            datagrams: 3,
            ..Default::default()
        };
        la.events[Verb::CallStart as usize] = 2;
        la.record_batch(3);
        a.publish(&mut la);
        assert_eq!(la.datagrams, 0, "publishing zeroes the local counters");
        let mut lb = LocalStats {
            datagrams: 4,
            ..Default::default()
        };
        lb.record_batch(200);
        b.publish(&mut lb);
        let snap = stats.snapshot();
        assert_eq!(snap.totals.datagrams, 7);
        assert_eq!(snap.totals.events[Verb::CallStart as usize], 2);
        assert_eq!(
            snap.totals.batch_buckets[2], 1,
            "3 datagrams fall in the <=4 bucket"
        );
        assert_eq!(
            snap.totals.batch_buckets[BATCH_BUCKETS.len()],
            1,
            "200 overflows"
        );
    }
}

//! Sans-IO usage tables: what is in use on this node right now.
//!
//! SKELETON: the public API below is the contract the IO crates code against; bodies are
//! being written.

use tollgate_events::{Event, Seq};

/// Wall-clock time as milliseconds since the Unix epoch. Always passed in, never read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_unix_ms(ms: u64) -> Self {
        Timestamp(ms)
    }
    pub const fn from_unix_secs(s: u64) -> Self {
        Timestamp(s * 1000)
    }
    pub const fn unix_ms(self) -> u64 {
        self.0
    }
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }
}

/// The secret key of the call/registration fingerprints.
#[derive(Clone)]
pub struct FingerprintKey(pub [u8; 32]);

/// Tunables of [`Tables`].
#[derive(Debug, Clone)]
pub struct TablesConfig {
    pub max_call_duration_s: u32,
    pub shard_count: usize,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig { max_call_duration_s: 4 * 3600, shard_count: 64 }
    }
}

/// The counts, read without a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub calls: u64,
    pub emergency_calls: u64,
    pub registered_subscribers: u64,
    pub registered_contacts: u64,
    pub subscribers: u64,
    pub subscribers_reported_at: Option<Timestamp>,
}

/// What one event did to the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    CallStarted,
    CallAlreadyActive,
    CallStopped,
    CallUnknown,
    CallRefreshed,
    ContactAdded,
    ContactRefreshed,
    ContactRemoved,
    ContactUnknown,
    SubscribersSet,
    /// Not a change (an `admit` query).
    NotAChange,
}

pub struct Tables {}

impl Tables {
    pub fn new(_config: TablesConfig, _key: FingerprintKey) -> Self {
        unimplemented!()
    }
    pub fn apply(&self, _now: Timestamp, _event: &Event<'_>) -> Outcome {
        unimplemented!()
    }
    pub fn usage(&self) -> Usage {
        unimplemented!()
    }
}

/// Per-sender sequence tracking.
pub struct SequenceTracker {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Apply the datagram; `lost` datagrams of this sender are now known lost.
    Fresh { lost: u64 },
    /// Seen before: drop the whole datagram.
    Duplicate,
}

impl SequenceTracker {
    pub fn check(&self, _now: Timestamp, _seq: &Seq<'_>) -> SeqVerdict {
        unimplemented!()
    }
}

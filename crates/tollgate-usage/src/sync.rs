//! Reconciliation lists pushed as `sync-*` text lines, for proxies without a list API
//! (FreeSWITCH, Asterisk, scripts).
//!
//! ```text
//! sync-begin <sender> <epoch>
//! sync-call <call-id> [tag=<from-tag>] [emergency]
//! sync-reg <aor> <contact> <expires-seconds>
//! sync-end <sender> <epoch> <calls> <contacts>
//! ```
//!
//! A list spans many datagrams. `sync-begin` opens it (and starts a reconciliation
//! [`Run`]: whatever events touch from then on is left alone); `sync-call` / `sync-reg`
//! lines go to the open list of the datagram's `seq` sender, or, in a datagram without
//! `seq`, to the only open list; `sync-end` closes it. Its counts must equal the lines
//! received, else a datagram was lost (or duplicated) and the list is discarded whole,
//! never applied half ([`SyncResult::Incomplete`]). A complete list is queued
//! ([`SyncLists::take_complete`]) and the IO layer applies it off the ingest thread with
//! [`Tables::reconcile`], scoped to the sender's own entries ([`crate::Owner`]).
//!
//! **Bounds.** At most [`SYNC_LISTS_MAX`] lists open at once, [`SYNC_LIST_ENTRIES_MAX`]
//! entries per list, [`SYNC_COMPLETE_MAX`] complete lists waiting; a list left open
//! [`SYNC_LIST_TTL_S`] without `sync-end` is discarded ([`SyncResult::Timeout`]).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate_events::SyncLine;

use crate::owners::Owner;
use crate::reconcile::{ProxyList, Run, Scope};
use crate::{MonoTime, Tables};

/// Most lists open at once (one per sender).
pub const SYNC_LISTS_MAX: usize = 16;
/// Most calls plus contacts in one list.
pub const SYNC_LIST_ENTRIES_MAX: u64 = 4_000_000;
/// Most complete lists waiting to be applied.
pub const SYNC_COMPLETE_MAX: usize = 4;
/// A list open longer than this without its `sync-end` is discarded.
pub const SYNC_LIST_TTL_S: u64 = 120;

/// What became of a list (or a stray line). Low cardinality: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SyncResult {
    /// Complete and queued to be applied.
    Complete = 0,
    /// `sync-end` counts differ from the lines received: a datagram was lost.
    Incomplete = 1,
    /// A new `sync-begin` from the same sender before this list's `sync-end`.
    Superseded = 2,
    /// A `sync-call`, `sync-reg` or `sync-end` with no open list it belongs to.
    Orphan = 3,
    /// More than [`SYNC_LIST_ENTRIES_MAX`] entries.
    TooLarge = 4,
    /// [`SYNC_LISTS_MAX`] lists already open, or [`SYNC_COMPLETE_MAX`] waiting.
    TooMany = 5,
    /// Open longer than [`SYNC_LIST_TTL_S`].
    Timeout = 6,
    /// The sender could not get an owner id ([`crate::OWNERS_MAX`] reached).
    NoOwner = 7,
}

impl SyncResult {
    pub const COUNT: usize = 8;
    pub const ALL: [SyncResult; SyncResult::COUNT] = [
        SyncResult::Complete,
        SyncResult::Incomplete,
        SyncResult::Superseded,
        SyncResult::Orphan,
        SyncResult::TooLarge,
        SyncResult::TooMany,
        SyncResult::Timeout,
        SyncResult::NoOwner,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncResult::Complete => "complete",
            SyncResult::Incomplete => "incomplete",
            SyncResult::Superseded => "superseded",
            SyncResult::Orphan => "orphan",
            SyncResult::TooLarge => "too_large",
            SyncResult::TooMany => "too_many",
            SyncResult::Timeout => "timeout",
            SyncResult::NoOwner => "no_owner",
        }
    }
}

struct OpenList {
    sender: Box<[u8]>,
    owner: Owner,
    epoch: u64,
    begun: MonoTime,
    list: ProxyList,
    run: Run,
}

/// A complete list, ready for [`Tables::reconcile`].
#[derive(Debug)]
pub struct CompleteList {
    /// The sender, lossily as UTF-8 (a metric label and log field).
    pub sender: String,
    pub epoch: u64,
    /// When its `sync-begin` arrived.
    pub begun: MonoTime,
    pub scope: Scope,
    pub list: ProxyList,
    pub run: Run,
}

/// The open and complete `sync-*` lists of one node. Held by [`Tables`].
#[derive(Default)]
pub struct SyncLists {
    open: Mutex<Vec<OpenList>>,
    complete: Mutex<Vec<CompleteList>>,
    results: [AtomicU64; SyncResult::COUNT],
}

impl std::fmt::Debug for SyncLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLists")
            .field("open", &self.open.lock().len())
            .finish_non_exhaustive()
    }
}

impl SyncLists {
    /// How many lists (or stray lines) ended with each result, indexed by
    /// `SyncResult as usize`.
    pub fn results(&self) -> [u64; SyncResult::COUNT] {
        std::array::from_fn(|i| self.results[i].load(Ordering::Relaxed))
    }

    fn count(&self, result: SyncResult) {
        self.results[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Tables {
    /// The `sync-*` lists (counters, complete lists).
    pub fn sync_lists(&self) -> &SyncLists {
        &self.sync
    }

    /// Handles one `sync-*` line of a datagram whose `seq` sender is `seq_sender`.
    /// Returns the result when the line ended a list (or was a stray line).
    pub fn sync_line(
        &self,
        now: MonoTime,
        seq_sender: Option<&[u8]>,
        line: &SyncLine<'_>,
    ) -> Option<SyncResult> {
        let sync = &self.sync;
        let mut open = sync.open.lock();
        let result = match *line {
            SyncLine::Begin { sender, epoch } => {
                let mut result = None;
                if let Some(i) = open.iter().position(|l| *l.sender == *sender) {
                    let old = open.swap_remove(i);
                    self.finish_run(old.run);
                    result = Some(SyncResult::Superseded);
                }
                if open.len() >= SYNC_LISTS_MAX {
                    sync.count(SyncResult::TooMany);
                    return Some(SyncResult::TooMany);
                }
                let owner = self.owners.intern(sender);
                if owner == Owner::NONE {
                    sync.count(SyncResult::NoOwner);
                    return Some(SyncResult::NoOwner);
                }
                open.push(OpenList {
                    sender: sender.into(),
                    owner,
                    epoch,
                    begun: now,
                    list: self.new_list(),
                    run: self.begin_run(),
                });
                result
            }
            SyncLine::Call { call, emergency } => match find_open(&mut open, seq_sender) {
                Some(i) => {
                    open[i].list.push_call(call, Some(emergency));
                    self.check_size(&mut open, i)
                }
                None => Some(SyncResult::Orphan),
            },
            SyncLine::Reg {
                aor,
                contact,
                expires_s,
            } => match find_open(&mut open, seq_sender) {
                Some(i) => {
                    let expires_at = now.unix_secs_u32().saturating_add(expires_s);
                    open[i].list.push_contact(aor, contact, expires_at);
                    self.check_size(&mut open, i)
                }
                None => Some(SyncResult::Orphan),
            },
            SyncLine::End {
                sender,
                epoch,
                calls,
                contacts,
            } => {
                match open
                    .iter()
                    .position(|l| *l.sender == *sender && l.epoch == epoch)
                {
                    None => Some(SyncResult::Orphan),
                    Some(i) => {
                        let list = open.swap_remove(i);
                        if list.list.call_count() != calls || list.list.contact_count() != contacts
                        {
                            self.finish_run(list.run);
                            Some(SyncResult::Incomplete)
                        } else {
                            let mut complete = sync.complete.lock();
                            if complete.len() >= SYNC_COMPLETE_MAX {
                                drop(complete);
                                self.finish_run(list.run);
                                Some(SyncResult::TooMany)
                            } else {
                                complete.push(CompleteList {
                                    sender: String::from_utf8_lossy(&list.sender).into_owned(),
                                    epoch: list.epoch,
                                    begun: list.begun,
                                    scope: Scope::Owner(list.owner),
                                    list: list.list,
                                    run: list.run,
                                });
                                Some(SyncResult::Complete)
                            }
                        }
                    }
                }
            }
        };
        if let Some(result) = result {
            sync.count(result);
        }
        result
    }

    fn check_size(&self, open: &mut Vec<OpenList>, i: usize) -> Option<SyncResult> {
        let list = &open[i].list;
        if list.call_count() + list.contact_count() <= SYNC_LIST_ENTRIES_MAX {
            return None;
        }
        let list = open.swap_remove(i);
        self.finish_run(list.run);
        Some(SyncResult::TooLarge)
    }

    /// Takes the complete lists waiting to be applied, and discards open lists older than
    /// [`SYNC_LIST_TTL_S`]. Call periodically from the IO layer; apply each list with
    /// [`Tables::reconcile`] and then [`Tables::finish_run`] its run.
    pub fn take_complete_sync_lists(&self, now: MonoTime) -> Vec<CompleteList> {
        let mut open = self.sync.open.lock();
        let mut i = 0;
        while i < open.len() {
            if now.unix_secs().saturating_sub(open[i].begun.unix_secs()) > SYNC_LIST_TTL_S {
                let list = open.swap_remove(i);
                self.finish_run(list.run);
                self.sync.count(SyncResult::Timeout);
            } else {
                i += 1;
            }
        }
        drop(open);
        std::mem::take(&mut *self.sync.complete.lock())
    }
}

/// The open list a data line belongs to: the `seq` sender's, else the only one.
fn find_open(open: &mut [OpenList], seq_sender: Option<&[u8]>) -> Option<usize> {
    match seq_sender {
        Some(sender) => open.iter().position(|l| *l.sender == *sender),
        None => (open.len() == 1).then_some(0),
    }
}

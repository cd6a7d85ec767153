//! Behaviour of [`Tables`] through its public API, one test per rule, and the call table
//! against a `HashMap` model.

use std::collections::HashMap;

use proptest::prelude::*;
use tollgate_events::{CallRef, Event};

use super::*;

/// A realistic time (2025-06-15), so stored times are far from their saturation points.
const T0_S: u64 = 1_750_000_000;

fn at(s: u64) -> MonoTime {
    MonoTime::from_unix_secs(T0_S + s)
}

fn config() -> TablesConfig {
    TablesConfig {
        max_call_duration_s: 3600,
        shard_count: 8,
        tombstone_ttl_s: 30,
        ..TablesConfig::default()
    }
}

fn tables() -> Tables {
    Tables::new(config(), FingerprintKey([9; 32]))
}

fn call(call_id: &str) -> CallRef<'_> {
    CallRef {
        call_id: call_id.as_bytes(),
        from_tag: None,
    }
}

fn start(call_id: &str) -> Event<'_> {
    Event::CallStart {
        call: call(call_id),
        emergency: false,
    }
}

fn start_emergency(call_id: &str) -> Event<'_> {
    Event::CallStart {
        call: call(call_id),
        emergency: true,
    }
}

fn stop(call_id: &str) -> Event<'_> {
    Event::CallStop {
        call: call(call_id),
    }
}

fn refresh(call_id: &str) -> Event<'_> {
    Event::CallRefresh {
        call: call(call_id),
    }
}

fn reg<'a>(aor: &'a str, contact: &'a str, expires_s: u32) -> Event<'a> {
    Event::Register {
        aor: aor.as_bytes(),
        contact: contact.as_bytes(),
        expires_s,
    }
}

/// Applies `(time, event, expected outcome)` steps in order.
fn check(t: &Tables, steps: &[(u64, Event<'_>, Outcome)]) {
    for (i, (s, event, expected)) in steps.iter().enumerate() {
        assert_eq!(t.apply(at(*s), event), *expected, "step {i}: {event:?}");
    }
}

fn calls(t: &Tables) -> (u64, u64) {
    let usage = t.usage();
    (usage.calls, usage.emergency_calls)
}

fn registered(t: &Tables) -> (u64, u64) {
    let usage = t.usage();
    (usage.registered_subscribers, usage.registered_contacts)
}

fn full_sweep(t: &Tables, s: u64) -> Swept {
    t.sweep(at(s), t.shard_count())
}

// ---- calls ----

#[test]
fn start_then_stop_counts_one_call_then_none() {
    let t = tables();
    check(&t, &[(0, start("a"), Outcome::CallStarted)]);
    assert_eq!(calls(&t), (1, 0));
    check(&t, &[(5, stop("a"), Outcome::CallStopped)]);
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn duplicate_start_changes_nothing_and_does_not_extend_the_deadline() {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (3000, start("a"), Outcome::CallAlreadyActive),
        ],
    );
    assert_eq!(calls(&t), (1, 0));
    // The deadline is still start + 3600 s, not 3000 + 3600 s.
    assert_eq!(full_sweep(&t, 3600).calls, 1);
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn stop_without_start_changes_nothing() {
    let t = tables();
    check(&t, &[(0, stop("a"), Outcome::CallUnknown)]);
    assert_eq!(t.usage(), Usage::default());
}

#[test]
fn second_stop_is_unknown() {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (1, stop("a"), Outcome::CallStopped),
            (2, stop("a"), Outcome::CallUnknown),
        ],
    );
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn refresh_pushes_the_deadline_to_now_plus_max_duration() {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (3000, refresh("a"), Outcome::CallRefreshed),
        ],
    );
    assert_eq!(full_sweep(&t, 6599).calls, 0);
    assert_eq!(calls(&t), (1, 0));
    assert_eq!(full_sweep(&t, 6600).calls, 1);
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn refresh_of_an_unknown_call_does_not_create_it() {
    let t = tables();
    check(&t, &[(0, refresh("a"), Outcome::CallUnknown)]);
    assert_eq!(calls(&t), (0, 0));
    check(&t, &[(1, stop("a"), Outcome::CallUnknown)]);
}

#[test]
fn emergency_flag_is_kept_and_counted() {
    let t = tables();
    check(
        &t,
        &[
            (0, start_emergency("sos"), Outcome::CallStarted),
            (0, start("a"), Outcome::CallStarted),
            // A duplicate start without the flag does not clear it.
            (1, start("sos"), Outcome::CallAlreadyActive),
            (2, refresh("sos"), Outcome::CallRefreshed),
        ],
    );
    assert_eq!(calls(&t), (2, 1));
    check(&t, &[(3, stop("sos"), Outcome::CallStopped)]);
    assert_eq!(calls(&t), (1, 0));
}

#[test]
fn from_tag_tells_calls_with_one_call_id_apart() {
    let t = tables();
    let tagged = |tag: &'static str| CallRef {
        call_id: b"same",
        from_tag: Some(tag.as_bytes()),
    };
    check(
        &t,
        &[
            (
                0,
                Event::CallStart {
                    call: tagged("x"),
                    emergency: false,
                },
                Outcome::CallStarted,
            ),
            (
                0,
                Event::CallStart {
                    call: tagged("y"),
                    emergency: false,
                },
                Outcome::CallStarted,
            ),
            (0, start("same"), Outcome::CallStarted),
            (
                1,
                Event::CallStop { call: tagged("x") },
                Outcome::CallStopped,
            ),
        ],
    );
    assert_eq!(calls(&t), (2, 0));
}

#[test]
fn call_without_stop_ends_after_max_call_duration() {
    let t = tables();
    check(&t, &[(0, start_emergency("a"), Outcome::CallStarted)]);
    assert_eq!(full_sweep(&t, 3599).calls, 0);
    let swept = full_sweep(&t, 3600);
    assert_eq!((swept.calls, swept.pass_completed), (1, true));
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn expired_call_is_counted_until_swept_or_touched() {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (0, start("b"), Outcome::CallStarted),
        ],
    );
    // Past the deadline, before any sweep: still counted.
    assert_eq!(calls(&t), (2, 0));
    // Touching it treats it as absent: a refresh does not revive it, and removes it.
    check(&t, &[(4000, refresh("a"), Outcome::CallUnknown)]);
    assert_eq!(calls(&t), (1, 0));
}

#[test]
fn start_for_an_expired_entry_restarts_it() {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (4000, start_emergency("a"), Outcome::CallStarted),
        ],
    );
    assert_eq!(calls(&t), (1, 1));
    // The new deadline counts from the restart.
    assert_eq!(full_sweep(&t, 7599).calls, 0);
    assert_eq!(full_sweep(&t, 7600).calls, 1);
}

#[test]
fn stop_for_an_expired_entry_is_unknown_and_removes_it() {
    let t = tables();
    check(
        &t,
        &[
            (0, start_emergency("a"), Outcome::CallStarted),
            (3600, stop("a"), Outcome::CallUnknown),
        ],
    );
    assert_eq!(calls(&t), (0, 0));
}

#[test]
fn late_start_after_its_stop_is_ignored() {
    let t = tables();
    check(
        &t,
        &[
            (0, stop("a"), Outcome::CallUnknown),
            (1, start("a"), Outcome::CallAlreadyStopped),
            (2, start("a"), Outcome::CallAlreadyStopped),
            (3, refresh("a"), Outcome::CallUnknown),
            (4, stop("a"), Outcome::CallUnknown),
        ],
    );
    assert_eq!(calls(&t), (0, 0));
    assert_eq!(t.tombstones(), 1);
}

#[test]
fn tombstone_lapses_after_its_ttl() {
    let t = tables();
    check(
        &t,
        &[
            (0, stop("a"), Outcome::CallUnknown),
            (30, start("a"), Outcome::CallStarted),
        ],
    );
    assert_eq!(calls(&t), (1, 0));
    assert_eq!(t.tombstones(), 0);
    check(&t, &[(31, stop("b"), Outcome::CallUnknown)]);
    let swept = full_sweep(&t, 61);
    assert_eq!((swept.tombstones, swept.calls), (1, 0));
    assert_eq!(t.tombstones(), 0);
}

#[test]
fn tombstones_are_bounded_per_shard() {
    let t = Tables::new(
        TablesConfig {
            shard_count: 1,
            ..config()
        },
        FingerprintKey([9; 32]),
    );
    let ids: Vec<String> = (0..TOMBSTONES_PER_SHARD_MAX + 10)
        .map(|i| format!("c{i}"))
        .collect();
    for id in &ids {
        check(&t, &[(0, stop(id), Outcome::CallUnknown)]);
    }
    assert_eq!(t.tombstones(), u64::from(TOMBSTONES_PER_SHARD_MAX));
    // Past the bound a stop without start just changes nothing: the late start counts.
    check(
        &t,
        &[(
            1,
            start(ids.last().map_or("", String::as_str)),
            Outcome::CallStarted,
        )],
    );
}

#[test]
fn zero_tombstone_ttl_disables_tombstones() {
    let t = Tables::new(
        TablesConfig {
            tombstone_ttl_s: 0,
            ..config()
        },
        FingerprintKey([9; 32]),
    );
    check(
        &t,
        &[
            (0, stop("a"), Outcome::CallUnknown),
            (1, start("a"), Outcome::CallStarted),
        ],
    );
    assert_eq!(t.tombstones(), 0);
}

#[test]
fn sweep_is_incremental_and_reports_each_full_pass() {
    let t = tables();
    for i in 0..100 {
        t.apply(at(0), &start(&format!("c{i}")));
    }
    let mut removed = 0;
    let mut passes = 0;
    for _ in 0..t.shard_count() * 2 {
        let swept = t.sweep(at(3600), 1);
        assert_eq!(swept.shards, 1);
        removed += swept.calls;
        passes += usize::from(swept.pass_completed);
    }
    assert_eq!((removed, passes), (100, 2));
    assert_eq!(calls(&t), (0, 0));
    // A budget beyond the shard count is one pass.
    assert_eq!(t.sweep(at(3600), usize::MAX).shards, t.shard_count());
}

#[test]
fn shard_count_is_rounded_up_to_a_power_of_two() {
    for (asked, used) in [
        (0, 1),
        (1, 1),
        (3, 4),
        (64, 64),
        (100, 128),
        (usize::MAX, SHARD_COUNT_MAX),
    ] {
        let t = Tables::new(
            TablesConfig {
                shard_count: asked,
                ..config()
            },
            FingerprintKey([9; 32]),
        );
        assert_eq!(t.shard_count(), used, "asked {asked}");
    }
}

#[test]
fn concurrent_appliers_keep_exact_counts() {
    let t = tables();
    std::thread::scope(|s| {
        for thread in 0..2 {
            let t = &t;
            s.spawn(move || {
                for i in 0..5_000 {
                    let id = format!("t{thread}-{i}");
                    t.apply(at(0), &start(&id));
                    if i % 2 == 0 {
                        t.apply(at(1), &stop(&id));
                    }
                }
            });
        }
    });
    assert_eq!(calls(&t), (5_000, 0));
}

// ---- registrations ----

#[test]
fn contact_is_added_refreshed_and_removed() {
    let t = tables();
    check(
        &t,
        &[
            (0, reg("alice", "sip:a@1", 600), Outcome::ContactAdded),
            (10, reg("alice", "sip:a@1", 600), Outcome::ContactRefreshed),
            (20, reg("alice", "sip:a@1", 0), Outcome::ContactRemoved),
            (21, reg("alice", "sip:a@1", 0), Outcome::ContactUnknown),
        ],
    );
    assert_eq!(registered(&t), (0, 0));
}

#[test]
fn aor_is_a_registered_subscriber_while_it_has_a_live_contact() {
    let t = tables();
    check(
        &t,
        &[
            (0, reg("alice", "sip:a@1", 600), Outcome::ContactAdded),
            (0, reg("alice", "sip:a@2", 600), Outcome::ContactAdded),
            (0, reg("alice", "sip:a@3", 600), Outcome::ContactAdded),
            (0, reg("bob", "sip:b@1", 600), Outcome::ContactAdded),
        ],
    );
    assert_eq!(registered(&t), (2, 4));
    check(
        &t,
        &[
            (1, reg("alice", "sip:a@1", 0), Outcome::ContactRemoved),
            (1, reg("alice", "sip:a@3", 0), Outcome::ContactRemoved),
        ],
    );
    assert_eq!(registered(&t), (2, 2));
    check(
        &t,
        &[(2, reg("alice", "sip:a@2", 0), Outcome::ContactRemoved)],
    );
    assert_eq!(registered(&t), (1, 1));
}

#[test]
fn removing_an_unknown_contact_changes_nothing() {
    let t = tables();
    check(
        &t,
        &[
            (0, reg("nobody", "sip:x", 0), Outcome::ContactUnknown),
            (0, reg("alice", "sip:a@1", 600), Outcome::ContactAdded),
            (0, reg("alice", "sip:other", 0), Outcome::ContactUnknown),
        ],
    );
    assert_eq!(registered(&t), (1, 1));
}

#[test]
fn contacts_expire_and_the_aor_goes_with_its_last_one() {
    let t = tables();
    check(
        &t,
        &[
            (0, reg("alice", "sip:a@1", 100), Outcome::ContactAdded),
            (0, reg("alice", "sip:a@2", 200), Outcome::ContactAdded),
        ],
    );
    assert_eq!(full_sweep(&t, 100).contacts, 1);
    assert_eq!(registered(&t), (1, 1));
    assert_eq!(full_sweep(&t, 200).contacts, 1);
    assert_eq!(registered(&t), (0, 0));
}

#[test]
fn expired_contacts_are_treated_as_absent_by_the_next_reg() {
    let t = tables();
    check(
        &t,
        &[
            (0, reg("alice", "sip:a@1", 100), Outcome::ContactAdded),
            (0, reg("alice", "sip:a@2", 100), Outcome::ContactAdded),
            // Both expired, not swept: this reg prunes them and adds itself.
            (150, reg("alice", "sip:a@1", 100), Outcome::ContactAdded),
        ],
    );
    assert_eq!(registered(&t), (1, 1));
    check(
        &t,
        &[(300, reg("alice", "sip:a@1", 0), Outcome::ContactUnknown)],
    );
    assert_eq!(registered(&t), (0, 0));
}

#[test]
fn contacts_per_aor_are_bounded() {
    let t = tables();
    let max = crate::MAX_CONTACTS_PER_AOR_DEFAULT as usize;
    for i in 0..max + 5 {
        let contact = format!("sip:a@{i}");
        let expected = if i < max {
            Outcome::ContactAdded
        } else {
            Outcome::ContactReplaced
        };
        check(&t, &[(i as u64, reg("alice", &contact, 600), expected)]);
    }
    assert_eq!(registered(&t), (1, max as u64));
}

#[test]
fn calls_beyond_max_active_calls_are_refused_and_change_nothing() {
    let t = Tables::new(
        TablesConfig {
            max_active_calls: 3,
            ..config()
        },
        FingerprintKey([9; 32]),
    );
    for i in 0..3 {
        let id = format!("c{i}");
        check(&t, &[(1, start(&id), Outcome::CallStarted)]);
    }
    check(
        &t,
        &[
            (1, start("c3"), Outcome::CallsTableFull),
            // A call already present is not refused, nor a stop.
            (1, start("c0"), Outcome::CallAlreadyActive),
            (2, stop("c0"), Outcome::CallStopped),
            (3, start("c3"), Outcome::CallStarted),
            (4, start("c4"), Outcome::CallsTableFull),
        ],
    );
    assert_eq!(calls(&t), (3, 0));
}

#[test]
fn aors_beyond_max_aors_are_refused_and_expires_above_the_maximum_is_a_bad_number() {
    let t = Tables::new(
        TablesConfig {
            max_aors: 2,
            max_expires_s: 3600,
            ..config()
        },
        FingerprintKey([9; 32]),
    );
    check(
        &t,
        &[
            (1, reg("alice", "sip:a@1", 3600), Outcome::ContactAdded),
            (1, reg("bob", "sip:b@1", 60), Outcome::ContactAdded),
            (
                1,
                reg("carol", "sip:c@1", 60),
                Outcome::RegistrationsTableFull,
            ),
            // A known AoR still takes contacts.
            (1, reg("alice", "sip:a@2", 60), Outcome::ContactAdded),
            (1, reg("alice", "sip:a@3", 3601), Outcome::BadNumber),
            (1, reg("alice", "sip:a@1", u32::MAX), Outcome::BadNumber),
        ],
    );
    assert_eq!(registered(&t), (2, 3));
    let subscribers = Event::Subscribers {
        count: tollgate_events::SUBSCRIBERS_MAX + 1,
    };
    assert_eq!(t.apply(at(1), &subscribers), Outcome::BadNumber);
    assert_eq!(t.usage().subscribers, 0);
}

// ---- subscribers, admit ----

#[test]
fn subscribers_sets_the_gauge_and_its_report_time() {
    let t = tables();
    assert_eq!(t.usage().subscribers_reported_at, None);
    check(
        &t,
        &[(
            7,
            Event::Subscribers { count: 1500 },
            Outcome::SubscribersSet,
        )],
    );
    let usage = t.usage();
    assert_eq!(
        (usage.subscribers, usage.subscribers_reported_at),
        (1500, Some(at(7)))
    );
}

#[test]
fn admit_changes_nothing() {
    let t = tables();
    check(
        &t,
        &[(
            0,
            Event::Admit {
                call_id: b"a",
                emergency: false,
            },
            Outcome::NotAChange,
        )],
    );
    assert_eq!(t.usage(), Usage::default());
    assert!(!Outcome::NotAChange.is_change());
}

// ---- peaks ----

#[test]
fn observe_peaks_feeds_the_current_usage() {
    let t = tables();
    t.apply(at(0), &start("a"));
    t.apply(at(0), &reg("alice", "sip:a", 600));
    t.observe_peaks(at(0));
    t.apply(at(1), &stop("a"));
    t.observe_peaks(at(1));
    assert_eq!(
        t.peaks().since_start(),
        PeakCounts {
            calls: 1,
            registered_subscribers: 1
        }
    );
    assert_eq!(t.peaks().minutes(at(1)).len(), 1);
}

// ---- snapshots ----

fn populated() -> Tables {
    let t = tables();
    check(
        &t,
        &[
            (0, start("a"), Outcome::CallStarted),
            (0, start_emergency("sos"), Outcome::CallStarted),
            (0, start("short"), Outcome::CallStarted),
            (0, stop("never-started"), Outcome::CallUnknown),
            (0, reg("alice", "sip:a@1", 600), Outcome::ContactAdded),
            (0, reg("alice", "sip:a@2", 60), Outcome::ContactAdded),
            (0, reg("bob", "sip:b@1", 60), Outcome::ContactAdded),
            (0, Event::Subscribers { count: 99 }, Outcome::SubscribersSet),
        ],
    );
    // "short" is refreshed less: make its deadline earlier than the others'.
    check(&t, &[(1000, refresh("a"), Outcome::CallRefreshed)]);
    check(&t, &[(1000, refresh("sos"), Outcome::CallRefreshed)]);
    t.observe_peaks(at(0));
    t
}

#[test]
fn a_restore_into_smaller_caps_keeps_what_fits_and_counts_the_rest() {
    let snapshot = populated().snapshot(at(10));
    let small = Tables::new(
        TablesConfig {
            max_active_calls: 2,
            max_aors: 1,
            ..config()
        },
        FingerprintKey([9; 32]),
    );
    let restored = small.restore(at(10), &snapshot).expect("same key");
    // One of the three calls, and the contacts of whichever AoR came second, are left out.
    assert_eq!(restored.calls, 2);
    assert_eq!(restored.dropped_full, 1 + (3 - restored.contacts));
    let usage = small.usage();
    assert_eq!((usage.calls, usage.registered_subscribers), (2, 1));
}

#[test]
fn snapshot_then_restore_gives_the_same_usage() {
    let t = populated();
    let snapshot =
        decode_snapshot(&encode_snapshot(&t.snapshot(at(10)))).expect("own snapshot decodes");
    assert_eq!(snapshot.calls.len(), 3);
    assert_eq!(snapshot.emergency_call_count(), 1);
    assert_eq!(snapshot.contact_count(), 3);
    let fresh = tables();
    let restored = fresh.restore(at(20), &snapshot).expect("same key");
    assert_eq!(
        restored,
        Restored {
            calls: 3,
            contacts: 3,
            dropped_expired: 0,
            dropped_full: 0
        }
    );
    assert_eq!(fresh.usage(), t.usage());
    assert_eq!(fresh.peaks().minutes(at(20)), t.peaks().minutes(at(20)));
    // The restored calls are the same calls: a stop finds them.
    check(&fresh, &[(30, stop("sos"), Outcome::CallStopped)]);
    // The snapshot does not carry tombstones.
    check(
        &fresh,
        &[(30, start("never-started"), Outcome::CallStarted)],
    );
}

#[test]
fn a_streamed_snapshot_restores_like_the_in_memory_one() {
    let t = populated();
    let (bytes, len) = t
        .write_snapshot(at(10), WallTime::from_unix_secs(5_000), 7, Vec::new())
        .expect("a Vec takes any write");
    assert_eq!(bytes.len() as u64, len);
    let mut expected = t.snapshot(at(10));
    expected.wall_at = WallTime::from_unix_secs(5_000);
    expected.journal_segment = 7;
    let mut decoded = decode_snapshot(&bytes).expect("own snapshot decodes");
    // Shard order differs between the two walks only if the walks differ; they do not.
    decoded.calls.sort_by_key(|c| c.fingerprint);
    expected.calls.sort_by_key(|c| c.fingerprint);
    assert_eq!(decoded, expected);

    let fresh = tables();
    let (restored, meta) = fresh.restore_bytes(&bytes).expect("same key");
    assert_eq!((restored.calls, restored.contacts), (3, 3));
    assert_eq!(
        (meta.journal_segment, meta.wall_at),
        (7, WallTime::from_unix_secs(5_000))
    );
    assert_eq!(fresh.usage(), t.usage());

    // A file cut anywhere, or with any byte changed, restores nothing at all (it is
    // streamed: checked whole in a first pass before the first change).
    for cut in 0..bytes.len() {
        let empty = tables();
        assert!(empty.restore_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        assert_eq!(empty.usage(), Usage::default(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 4;
        let empty = tables();
        assert!(empty.restore_bytes(&flipped).is_err(), "byte {i}");
        assert_eq!(empty.usage(), Usage::default(), "byte {i}");
    }
    let other = Tables::new(config(), FingerprintKey([1; 32]));
    assert!(matches!(
        other.restore_bytes(&bytes),
        Err(SnapshotError::KeyMismatch)
    ));
}

#[test]
fn restore_drops_what_expired_meanwhile() {
    let snapshot = populated().snapshot(at(10));
    // At 100 s, alice's "sip:a@2" and bob's contact have expired.
    let fresh = tables();
    let restored = fresh.restore(at(100), &snapshot).expect("same key");
    assert_eq!(
        restored,
        Restored {
            calls: 3,
            contacts: 1,
            dropped_expired: 2,
            dropped_full: 0
        }
    );
    assert_eq!(registered(&fresh), (1, 1));
    // At 3600 s "short" has ended too, and every contact.
    let fresh = tables();
    let restored = fresh.restore(at(3600), &snapshot).expect("same key");
    assert_eq!(
        restored,
        Restored {
            calls: 2,
            contacts: 0,
            dropped_expired: 4,
            dropped_full: 0
        }
    );
    assert_eq!(calls(&fresh), (2, 1));
    assert_eq!(registered(&fresh), (0, 0));
}

#[test]
fn restore_refuses_a_snapshot_of_another_key() {
    let snapshot = populated().snapshot(at(10));
    let other = Tables::new(config(), FingerprintKey([1; 32]));
    assert!(matches!(
        other.restore(at(10), &snapshot),
        Err(SnapshotError::KeyMismatch)
    ));
    assert_eq!(other.usage(), Usage::default());
}

#[test]
fn restore_keeps_entries_already_present() {
    let t = populated();
    let snapshot = t.snapshot(at(10));
    let restored = t.restore(at(10), &snapshot).expect("same key");
    assert_eq!((restored.calls, restored.contacts), (0, 0));
    assert_eq!(calls(&t), (3, 1));
    assert_eq!(registered(&t), (2, 3));
}

// ---- the call table against a model ----

#[derive(Debug, Clone)]
enum Op {
    Start { key: u8, emergency: bool },
    Stop { key: u8 },
    Refresh { key: u8 },
    Sweep,
    Advance { s: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, any::<bool>()).prop_map(|(key, emergency)| Op::Start { key, emergency }),
        3 => (0u8..8).prop_map(|key| Op::Stop { key }),
        2 => (0u8..8).prop_map(|key| Op::Refresh { key }),
        1 => Just(Op::Sweep),
        2 => (0u32..40).prop_map(|s| Op::Advance { s }),
    ]
}

const MODEL_MAX_DURATION_S: u32 = 60;
const MODEL_TOMBSTONE_TTL_S: u32 = 10;
/// Below the 8 keys the model uses, so the cap is reached.
const MODEL_MAX_ACTIVE_CALLS: u64 = 5;

#[derive(Debug, Clone, Copy)]
struct ModelEntry {
    deadline_s: u32,
    emergency: bool,
    tombstone: bool,
}

/// The rules of the call table, written as plainly as possible over a `HashMap`.
#[derive(Default)]
struct Model {
    entries: HashMap<u8, ModelEntry>,
}

impl Model {
    fn live(&self, key: u8, now_s: u32) -> Option<ModelEntry> {
        self.entries
            .get(&key)
            .copied()
            .filter(|e| now_s < e.deadline_s)
    }

    fn apply(&mut self, op: &Op, now_s: u32) -> Option<Outcome> {
        let call = |emergency| ModelEntry {
            deadline_s: now_s + MODEL_MAX_DURATION_S,
            emergency,
            tombstone: false,
        };
        let tombstone = ModelEntry {
            deadline_s: now_s + MODEL_TOMBSTONE_TTL_S,
            emergency: false,
            tombstone: true,
        };
        Some(match *op {
            Op::Start { key, emergency } => match self.live(key, now_s) {
                Some(e) if e.tombstone => Outcome::CallAlreadyStopped,
                Some(_) => Outcome::CallAlreadyActive,
                None => {
                    // An expired call is replaced in place; anything else adds a call, which
                    // the cap may refuse (expired calls count until swept).
                    let replaces = self.entries.get(&key).is_some_and(|e| !e.tombstone);
                    if !replaces && self.counts().0 >= MODEL_MAX_ACTIVE_CALLS {
                        return Some(Outcome::CallsTableFull);
                    }
                    self.entries.insert(key, call(emergency));
                    Outcome::CallStarted
                }
            },
            Op::Stop { key } => match self.live(key, now_s) {
                Some(e) if e.tombstone => Outcome::CallUnknown,
                Some(_) => {
                    self.entries.remove(&key);
                    Outcome::CallStopped
                }
                None => {
                    // Few keys: the per-shard tombstone bound is never reached here.
                    self.entries.insert(key, tombstone);
                    Outcome::CallUnknown
                }
            },
            Op::Refresh { key } => match self.live(key, now_s) {
                Some(e) if e.tombstone => Outcome::CallUnknown,
                Some(_) => {
                    self.entries.insert(
                        key,
                        ModelEntry {
                            emergency: self.entries[&key].emergency,
                            ..call(false)
                        },
                    );
                    Outcome::CallRefreshed
                }
                None => {
                    // An expired call is removed when touched; an expired tombstone stays.
                    if self.entries.get(&key).is_some_and(|e| !e.tombstone) {
                        self.entries.remove(&key);
                    }
                    Outcome::CallUnknown
                }
            },
            Op::Sweep => {
                self.entries.retain(|_, e| now_s < e.deadline_s);
                return None;
            }
            Op::Advance { .. } => return None,
        })
    }

    fn counts(&self) -> (u64, u64) {
        let calls = self.entries.values().filter(|e| !e.tombstone);
        let (n, emergency) = calls.fold((0, 0), |(n, em), e| (n + 1, em + u64::from(e.emergency)));
        (n, emergency)
    }
}

proptest! {
    // Deterministic (fixed seed) and merge-free (no regression files): a failure prints the
    // minimal sequence of operations; add it as a unit test.
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7011_6a7e),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn call_table_acts_like_a_hashmap_model(ops in proptest::collection::vec(op(), 1..200)) {
        let t = Tables::new(
            TablesConfig {
                max_call_duration_s: MODEL_MAX_DURATION_S,
                shard_count: 4,
                tombstone_ttl_s: MODEL_TOMBSTONE_TTL_S,
                max_active_calls: MODEL_MAX_ACTIVE_CALLS,
                ..TablesConfig::default()
            },
            FingerprintKey([5; 32]),
        );
        let mut model = Model::default();
        let mut now_s = T0_S as u32;
        for op in &ops {
            if let Op::Advance { s } = op {
                now_s += s;
            }
            let now = MonoTime::from_unix_secs(u64::from(now_s));
            let expected = model.apply(op, now_s);
            let id;
            let event = match *op {
                Op::Start { key, emergency } => {
                    id = format!("call-{key}");
                    Some(Event::CallStart { call: call(&id), emergency })
                }
                Op::Stop { key } => {
                    id = format!("call-{key}");
                    Some(Event::CallStop { call: call(&id) })
                }
                Op::Refresh { key } => {
                    id = format!("call-{key}");
                    Some(Event::CallRefresh { call: call(&id) })
                }
                Op::Sweep => {
                    t.sweep(now, t.shard_count());
                    None
                }
                Op::Advance { .. } => None,
            };
            if let Some(event) = event {
                // Every other event through the prefetch path: the same outcome.
                let outcome = if model.entries.len() % 2 == 0 {
                    t.apply(now, &event)
                } else {
                    t.apply_prefetched(now, &event, Owner::NONE, t.prefetch(&event))
                };
                prop_assert_eq!(Some(outcome), expected, "{:?}", op);
            }
            prop_assert_eq!(calls(&t), model.counts(), "after {:?}", op);
        }
    }
}

// ---- the registration table against a model ----

#[derive(Debug, Clone)]
enum RegOp {
    /// `reg aor-<aor> contact-<contact> <expires>`, where `expires` is 0 (remove), the op's
    /// own index + 1 (so no two bindings ever expire at the same second: which binding a
    /// full AoR replaces is then unambiguous) or above `max_expires_s`.
    Reg {
        aor: u8,
        contact: u8,
        kind: u8,
    },
    Sweep,
    Advance {
        s: u32,
    },
}

fn reg_op() -> impl Strategy<Value = RegOp> {
    prop_oneof![
        8 => (0u8..6, 0u8..5, 0u8..8).prop_map(|(aor, contact, kind)| RegOp::Reg { aor, contact, kind }),
        1 => Just(RegOp::Sweep),
        2 => (0u32..40).prop_map(|s| RegOp::Advance { s }),
    ]
}

const REG_MODEL_MAX_AORS: u64 = 4;
const REG_MODEL_MAX_CONTACTS: usize = 3;
const REG_MODEL_MAX_EXPIRES_S: u32 = 200;

/// The rules of the registration table over a `HashMap` of AoR → (contact, expires_at).
#[derive(Default)]
struct RegModel {
    aors: HashMap<u8, Vec<(u8, u32)>>,
}

impl RegModel {
    fn apply(&mut self, aor: u8, contact: u8, expires_s: u32, now_s: u32) -> Outcome {
        if expires_s > REG_MODEL_MAX_EXPIRES_S {
            return Outcome::BadNumber;
        }
        let Some(bindings) = self.aors.get_mut(&aor) else {
            if expires_s == 0 {
                return Outcome::ContactUnknown;
            }
            if self.aors.len() as u64 >= REG_MODEL_MAX_AORS {
                return Outcome::RegistrationsTableFull;
            }
            self.aors.insert(aor, vec![(contact, now_s + expires_s)]);
            return Outcome::ContactAdded;
        };
        bindings.retain(|&(_, at)| now_s < at);
        let found = bindings.iter().position(|&(c, _)| c == contact);
        let outcome = match (expires_s, found) {
            (0, Some(i)) => {
                bindings.remove(i);
                Outcome::ContactRemoved
            }
            (0, None) => Outcome::ContactUnknown,
            (_, Some(i)) => {
                bindings[i].1 = now_s + expires_s;
                Outcome::ContactRefreshed
            }
            (_, None) if bindings.len() < REG_MODEL_MAX_CONTACTS => {
                bindings.push((contact, now_s + expires_s));
                Outcome::ContactAdded
            }
            (_, None) => {
                let soonest = (0..bindings.len())
                    .min_by_key(|&i| bindings[i].1)
                    .unwrap_or(0);
                bindings[soonest] = (contact, now_s + expires_s);
                Outcome::ContactReplaced
            }
        };
        if bindings.is_empty() {
            self.aors.remove(&aor);
        }
        outcome
    }

    fn sweep(&mut self, now_s: u32) {
        for bindings in self.aors.values_mut() {
            bindings.retain(|&(_, at)| now_s < at);
        }
        self.aors.retain(|_, b| !b.is_empty());
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.aors.len() as u64,
            self.aors.values().map(|b| b.len() as u64).sum(),
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7e6_7ab1e),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn registration_table_acts_like_a_hashmap_model(ops in proptest::collection::vec(reg_op(), 1..150)) {
        let t = Tables::new(
            TablesConfig {
                shard_count: 2,
                max_aors: REG_MODEL_MAX_AORS,
                max_contacts_per_aor: REG_MODEL_MAX_CONTACTS as u32,
                max_expires_s: REG_MODEL_MAX_EXPIRES_S,
                ..config()
            },
            FingerprintKey([6; 32]),
        );
        let mut model = RegModel::default();
        let mut now_s = T0_S as u32;
        for (index, op) in ops.iter().enumerate() {
            let now = MonoTime::from_unix_secs(u64::from(now_s));
            match *op {
                RegOp::Reg { aor, contact, kind } => {
                    let expires_s = match kind {
                        0 | 1 => 0,
                        2 => REG_MODEL_MAX_EXPIRES_S + 1 + index as u32,
                        _ => index as u32 + 1,
                    };
                    let (aor_id, contact_id) = (format!("sip:aor-{aor}@x"), format!("sip:c-{contact}@y"));
                    let event = Event::Register {
                        aor: aor_id.as_bytes(),
                        contact: contact_id.as_bytes(),
                        expires_s,
                    };
                    let expected = model.apply(aor, contact, expires_s, now_s);
                    prop_assert_eq!(t.apply(now, &event), expected, "{:?} expires {}", op, expires_s);
                }
                RegOp::Sweep => {
                    t.sweep(now, t.shard_count());
                    model.sweep(now_s);
                    prop_assert_eq!(registered(&t), model.counts(), "after a sweep");
                }
                RegOp::Advance { s } => now_s += s,
            }
        }
        let now = MonoTime::from_unix_secs(u64::from(now_s));
        t.sweep(now, t.shard_count());
        model.sweep(now_s);
        prop_assert_eq!(registered(&t), model.counts());
    }
}

// ---- runs of call events applied grouped by shard ----

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7011_6a7f),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// `apply_calls` (one lock per shard for a long run) gives every event the outcome it
    /// gets applied alone, in order, and leaves the same counts: runs short and long, on a
    /// few keys (so a call's start, stop and refresh share a run), with a cap the runs reach
    /// (where grouping must fall back to the run's own order).
    #[test]
    fn a_run_applied_by_shard_acts_like_its_events_one_by_one(
        runs in proptest::collection::vec(
            proptest::collection::vec((0u8..3, 0u16..120, any::<bool>()), 1..400),
            1..6,
        ),
        cap in prop_oneof![Just(1_000_000u64), 10u64..80],
    ) {
        let config = TablesConfig {
            shard_count: 8,
            tombstone_ttl_s: 30,
            max_active_calls: cap,
            ..TablesConfig::default()
        };
        let grouped = Tables::new(config.clone(), FingerprintKey([6; 32]));
        let one_by_one = Tables::new(config, FingerprintKey([6; 32]));
        let mut scratch = GroupScratch::default();
        for (r, run) in runs.iter().enumerate() {
            let now = at(r as u64);
            let ids: Vec<String> = run.iter().map(|(_, key, _)| format!("call-{key}")).collect();
            let events: Vec<Event<'_>> = run
                .iter()
                .zip(&ids)
                .map(|((verb, _, emergency), id)| match verb {
                    0 => Event::CallStart { call: call(id), emergency: *emergency },
                    1 => Event::CallStop { call: call(id) },
                    _ => Event::CallRefresh { call: call(id) },
                })
                .collect();
            let ops: Vec<CallEvent> = events
                .iter()
                .map(|e| grouped.call_event(e, Owner::NONE).unwrap())
                .collect();
            let mut outcomes = vec![None; ops.len()];
            grouped.apply_calls(now, &ops, &mut scratch, |i, outcome| {
                assert!(outcomes[i].replace(outcome).is_none(), "event {i} applied twice");
            });
            for (i, event) in events.iter().enumerate() {
                let expected = one_by_one.apply(now, event);
                prop_assert_eq!(outcomes[i], Some(expected), "run {} event {}: {:?}", r, i, event);
            }
            prop_assert_eq!(grouped.usage(), one_by_one.usage());
        }
    }
}

#[test]
fn only_call_events_have_a_call_event() {
    let t = tables();
    let none = t.call_event(&Event::Subscribers { count: 1 }, Owner::NONE);
    assert!(none.is_none());
    let e = t.call_event(&start("a"), Owner(3)).unwrap();
    assert_eq!(e.op, CallOp::Start { emergency: false });
    assert_eq!(e.owner, Owner(3));
    assert_eq!(e.fingerprint, t.call_fingerprint(call("a")));
}

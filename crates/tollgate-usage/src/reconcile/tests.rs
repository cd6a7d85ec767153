//! Reconciliation and `sync-*` lists through the public API, one test per rule, and the
//! diff against a `HashMap` model.

use std::collections::HashMap;

use proptest::prelude::*;
use tollgate_events::{CallRef, Event, SyncLine};

use crate::{
    Corrections, FingerprintKey, MonoTime, Scope, SyncResult, TOUCHED_PER_SHARD_MAX, Tables,
    TablesConfig,
};

const T0_S: u64 = 1_750_000_000;

fn at(s: u64) -> MonoTime {
    MonoTime::from_unix_secs(T0_S + s)
}

fn tables() -> Tables {
    Tables::new(
        TablesConfig {
            max_call_duration_s: 3600,
            shard_count: 8,
            tombstone_ttl_s: 30,
            ..TablesConfig::default()
        },
        FingerprintKey([7; 32]),
    )
}

fn call(id: &str) -> CallRef<'_> {
    CallRef {
        call_id: id.as_bytes(),
        from_tag: Some(b"t"),
    }
}

fn start(id: &str, emergency: bool) -> Event<'_> {
    Event::CallStart {
        call: call(id),
        emergency,
    }
}

fn stop(id: &str) -> Event<'_> {
    Event::CallStop { call: call(id) }
}

fn reg<'a>(aor: &'a str, contact: &'a str, expires_s: u32) -> Event<'a> {
    Event::Register {
        aor: aor.as_bytes(),
        contact: contact.as_bytes(),
        expires_s,
    }
}

/// Runs one reconciliation of `calls` (id, emergency) and `contacts` (aor, contact,
/// expires in s) at `now`, with `during` applied between the start of the run and the list.
fn run(
    t: &Tables,
    now: MonoTime,
    scope: Scope,
    calls: &[(&str, Option<bool>)],
    contacts: &[(&str, &str, u32)],
    during: &[Event<'_>],
) -> Corrections {
    let run = t.begin_run();
    for event in during {
        t.apply(now, event);
    }
    let mut list = t.new_list();
    for (id, emergency) in calls {
        list.push_call(call(id), *emergency);
    }
    for (aor, contact, expires) in contacts {
        list.push_contact(
            aor.as_bytes(),
            contact.as_bytes(),
            now.unix_secs_u32() + expires,
        );
    }
    let corrections = t.reconcile(now, &run, list, scope, true);
    t.finish_run(run);
    corrections
}

#[test]
fn phantom_calls_are_removed_and_missing_calls_added() {
    let t = tables();
    t.apply(at(0), &start("kept", false));
    t.apply(at(0), &start("phantom", true));
    let c = run(
        &t,
        at(10),
        Scope::All,
        &[("kept", None), ("missing", Some(true))],
        &[],
        &[],
    );
    assert_eq!((c.phantom_calls, c.missing_calls), (1, 1));
    let usage = t.usage();
    assert_eq!((usage.calls, usage.emergency_calls), (2, 1));
    // Healed: the missing call is known (a late start changes nothing, its stop ends it).
    assert_eq!(
        t.apply(at(11), &start("missing", true)),
        crate::Outcome::CallAlreadyActive
    );
    assert_eq!(
        t.apply(at(11), &stop("missing")),
        crate::Outcome::CallStopped
    );
    assert_eq!(
        t.apply(at(11), &stop("phantom")),
        crate::Outcome::CallUnknown
    );
    // A second identical list changes nothing.
    let c = run(&t, at(12), Scope::All, &[("kept", None)], &[], &[]);
    assert_eq!(c, Corrections::default());
}

#[test]
fn emergency_flag_is_taken_from_the_proxy_when_it_says() {
    let t = tables();
    t.apply(at(0), &start("a", false));
    t.apply(at(0), &start("b", true));
    let c = run(
        &t,
        at(1),
        Scope::All,
        &[("a", Some(true)), ("b", None)],
        &[],
        &[],
    );
    assert_eq!(c.emergency_updates, 1);
    assert_eq!(t.usage().emergency_calls, 2);
    let c = run(
        &t,
        at(2),
        Scope::All,
        &[("a", Some(false)), ("b", Some(false))],
        &[],
        &[],
    );
    assert_eq!(c.emergency_updates, 2);
    assert_eq!(t.usage().emergency_calls, 0);
}

#[test]
fn events_during_the_fetch_are_left_alone() {
    let t = tables();
    t.apply(at(0), &start("ends-during-fetch", false));
    // The list predates both events: it still has the call that stopped, and lacks the
    // one that started.
    let during = [
        start("starts-during-fetch", false),
        stop("ends-during-fetch"),
    ];
    let c = run(
        &t,
        at(5),
        Scope::All,
        &[("ends-during-fetch", None)],
        &[],
        &during,
    );
    assert_eq!(c, Corrections::default());
    assert_eq!(t.usage().calls, 1);
    // The next run, with a list taken after both, agrees.
    let c = run(
        &t,
        at(6),
        Scope::All,
        &[("starts-during-fetch", None)],
        &[],
        &[],
    );
    assert_eq!(c, Corrections::default());
}

#[test]
fn a_recent_stop_of_an_unknown_call_blocks_its_re_adding() {
    let t = tables();
    t.apply(at(0), &stop("x"));
    let c = run(&t, at(1), Scope::All, &[("x", None)], &[], &[]);
    assert_eq!(c.missing_calls, 0);
    // Once the tombstone lapsed, the proxy's word counts.
    let c = run(&t, at(100), Scope::All, &[("x", None)], &[], &[]);
    assert_eq!(c.missing_calls, 1);
    assert_eq!(t.usage().calls, 1);
}

#[test]
fn a_source_corrects_only_what_its_sender_reported() {
    let t = tables();
    let kam1 = t.owners().intern(b"kam1");
    let kam2 = t.owners().intern(b"kam2");
    t.apply_from(at(0), &start("one", false), kam1);
    t.apply_from(at(0), &start("two", false), kam2);
    t.apply(at(0), &start("unowned", false));
    t.apply_from(at(0), &reg("sip:a@x", "sip:a@1", 600), kam1);
    t.apply_from(at(0), &reg("sip:b@x", "sip:b@1", 600), kam2);
    // kam1 restarted: its lists are empty. Only its own entries go.
    let c = run(&t, at(1), Scope::Owner(kam1), &[], &[], &[]);
    assert_eq!((c.phantom_calls, c.phantom_contacts), (1, 1));
    let usage = t.usage();
    assert_eq!((usage.calls, usage.registered_contacts), (2, 1));
    // What kam1 lists that nobody has is added as kam1's, so its next empty list removes it.
    let c = run(
        &t,
        at(2),
        Scope::Owner(kam1),
        &[("new", None)],
        &[("sip:c@x", "sip:c@1", 60)],
        &[],
    );
    assert_eq!((c.missing_calls, c.missing_contacts), (1, 1));
    let c = run(&t, at(3), Scope::Owner(kam1), &[], &[], &[]);
    assert_eq!((c.phantom_calls, c.phantom_contacts), (1, 1));
    // A source for the whole node owns everything.
    let c = run(&t, at(4), Scope::All, &[], &[], &[]);
    assert_eq!((c.phantom_calls, c.phantom_contacts), (2, 1));
    assert_eq!(t.usage(), crate::Usage::default());
}

#[test]
fn contacts_are_healed_with_the_proxy_expiry() {
    let t = tables();
    t.apply(at(0), &reg("sip:a@x", "sip:a@1", 600));
    t.apply(at(0), &reg("sip:a@x", "sip:a@2", 600));
    t.apply(at(0), &reg("sip:b@x", "sip:b@1", 600));
    let c = run(
        &t,
        at(10),
        Scope::All,
        &[],
        &[
            ("sip:a@x", "sip:a@1", 30),
            ("sip:c@x", "sip:c@1", 60),
            ("sip:c@x", "sip:c@2", 60),
        ],
        &[],
    );
    assert_eq!(
        (c.phantom_contacts, c.missing_contacts, c.expiry_updates),
        (2, 2, 1)
    );
    let usage = t.usage();
    assert_eq!(
        (usage.registered_subscribers, usage.registered_contacts),
        (2, 3)
    );
    // The expiry came from the proxy: a@1 lapses at 10 + 30 s.
    t.sweep(at(41), 8);
    assert_eq!(t.usage().registered_contacts, 2);
}

#[test]
fn a_registration_during_the_fetch_is_left_alone() {
    let t = tables();
    t.apply(at(0), &reg("sip:a@x", "sip:a@1", 600));
    let during = [reg("sip:b@x", "sip:b@1", 600), reg("sip:a@x", "sip:a@1", 0)];
    let c = run(
        &t,
        at(1),
        Scope::All,
        &[],
        &[("sip:a@x", "sip:a@1", 600)],
        &during,
    );
    assert_eq!(c, Corrections::default());
    assert_eq!(t.usage().registered_subscribers, 1);
}

#[test]
fn a_shard_with_too_many_events_during_the_fetch_is_skipped() {
    let t = tables();
    let run = t.begin_run();
    let ids: Vec<String> = (0..TOUCHED_PER_SHARD_MAX * 8 + 8)
        .map(|i| format!("c{i}"))
        .collect();
    for id in &ids {
        t.apply(at(0), &start(id, false));
    }
    let c = t.reconcile(at(1), &run, t.new_list(), Scope::All, true);
    t.finish_run(run);
    assert!(c.shards_skipped > 0);
    assert_eq!(c.phantom_calls, 0, "touched calls are never removed");
    // Once the run is over, a new one applies.
    let c = self::run(&t, at(2), Scope::All, &[], &[], &[]);
    assert_eq!(c.phantom_calls, ids.len() as u64);
}

fn sync<'a>(t: &Tables, sender: Option<&[u8]>, line: SyncLine<'a>) -> Option<SyncResult> {
    t.sync_line(at(1), sender, &line)
}

fn begin(sender: &str, epoch: u64) -> SyncLine<'_> {
    SyncLine::Begin {
        sender: sender.as_bytes(),
        epoch,
    }
}

fn end(sender: &str, epoch: u64, calls: u64, contacts: u64) -> SyncLine<'_> {
    SyncLine::End {
        sender: sender.as_bytes(),
        epoch,
        calls,
        contacts,
    }
}

fn sync_call(id: &str) -> SyncLine<'_> {
    SyncLine::Call {
        call: call(id),
        emergency: false,
    }
}

fn apply_complete(t: &Tables) -> Vec<(String, Corrections)> {
    t.take_complete_sync_lists(at(2))
        .into_iter()
        .map(|l| {
            let c = t.reconcile(at(2), &l.run, l.list, l.scope, true);
            t.finish_run(l.run);
            (l.sender, c)
        })
        .collect()
}

#[test]
fn a_complete_sync_list_heals_the_senders_calls() {
    let t = tables();
    let fs1 = t.owners().intern(b"fs1");
    t.apply_from(at(0), &start("phantom", false), fs1);
    t.apply_from(at(0), &start("kept", false), fs1);
    t.apply(at(0), &start("someone-elses", false));
    assert_eq!(sync(&t, None, begin("fs1", 7)), None);
    assert_eq!(sync(&t, None, sync_call("kept")), None);
    assert_eq!(sync(&t, None, sync_call("missing")), None);
    let reg = SyncLine::Reg {
        aor: b"sip:a@x",
        contact: b"sip:a@1",
        expires_s: 60,
    };
    assert_eq!(sync(&t, None, reg), None);
    assert_eq!(
        sync(&t, None, end("fs1", 7, 2, 1)),
        Some(SyncResult::Complete)
    );
    let applied = apply_complete(&t);
    assert_eq!(applied.len(), 1);
    let (sender, c) = &applied[0];
    assert_eq!(sender, "fs1");
    assert_eq!(
        (c.phantom_calls, c.missing_calls, c.missing_contacts),
        (1, 1, 1)
    );
    assert_eq!(t.usage().calls, 3);
    assert_eq!(t.sync_lists().results()[SyncResult::Complete as usize], 1);
}

#[test]
fn a_sync_list_with_a_lost_datagram_is_discarded_whole() {
    let t = tables();
    t.apply_from(at(0), &start("phantom", false), t.owners().intern(b"fs1"));
    sync(&t, None, begin("fs1", 1));
    for i in 0..49 {
        sync(&t, None, sync_call(&format!("c{i}")));
    }
    // The 50th datagram was lost: the counts say 50.
    assert_eq!(
        sync(&t, None, end("fs1", 1, 50, 0)),
        Some(SyncResult::Incomplete)
    );
    assert!(apply_complete(&t).is_empty());
    assert_eq!(t.usage().calls, 1, "nothing applied");
    assert_eq!(t.sync_lists().results()[SyncResult::Incomplete as usize], 1);
}

#[test]
fn sync_lines_go_to_their_seq_senders_list() {
    let t = tables();
    sync(&t, Some(b"a"), begin("a", 1));
    sync(&t, Some(b"b"), begin("b", 1));
    // Without seq, with two lists open, a line belongs to nobody.
    assert_eq!(sync(&t, None, sync_call("x")), Some(SyncResult::Orphan));
    sync(&t, Some(b"a"), sync_call("x"));
    assert_eq!(
        sync(&t, Some(b"b"), end("b", 1, 0, 0)),
        Some(SyncResult::Complete)
    );
    assert_eq!(
        sync(&t, Some(b"a"), end("a", 2, 1, 0)),
        Some(SyncResult::Orphan)
    );
    // A new begin from the same sender supersedes the open list.
    assert_eq!(
        sync(&t, Some(b"a"), begin("a", 3)),
        Some(SyncResult::Superseded)
    );
    assert_eq!(
        sync(&t, Some(b"a"), end("a", 3, 0, 0)),
        Some(SyncResult::Complete)
    );
    assert_eq!(apply_complete(&t).len(), 2);
}

#[test]
fn an_unfinished_sync_list_times_out() {
    let t = tables();
    sync(&t, None, begin("a", 1));
    assert!(
        t.take_complete_sync_lists(at(1 + crate::sync::SYNC_LIST_TTL_S + 1))
            .is_empty()
    );
    assert_eq!(t.sync_lists().results()[SyncResult::Timeout as usize], 1);
    assert_eq!(sync(&t, None, sync_call("x")), Some(SyncResult::Orphan));
}

proptest! {
    /// Whatever the tables held and whatever the proxy lists, after a run without
    /// concurrent events the calls equal the list (the model: a set).
    #[test]
    fn after_a_run_the_calls_equal_the_list(
        held in proptest::collection::vec((0u8..40, any::<bool>()), 0..60),
        listed in proptest::collection::vec((0u8..40, proptest::option::of(any::<bool>())), 0..60),
    ) {
        let t = tables();
        let mut model: HashMap<u8, bool> = HashMap::new();
        for (id, emergency) in &held {
            t.apply(at(0), &start(&id.to_string(), *emergency));
            model.entry(*id).or_insert(*emergency);
        }
        let ids: Vec<(String, Option<bool>)> =
            listed.iter().map(|(id, e)| (id.to_string(), *e)).collect();
        let refs: Vec<(&str, Option<bool>)> = ids.iter().map(|(id, e)| (id.as_str(), *e)).collect();
        run(&t, at(1), Scope::All, &refs, &[], &[]);
        let mut expected: HashMap<u8, bool> = HashMap::new();
        for (id, emergency) in &listed {
            // First listing wins (duplicates keep the first); unknown keeps what was held.
            expected.entry(*id).or_insert_with(|| emergency.unwrap_or(model.get(id).copied().unwrap_or(false)));
        }
        let usage = t.usage();
        prop_assert_eq!(usage.calls, expected.len() as u64);
        prop_assert_eq!(usage.emergency_calls, expected.values().filter(|e| **e).count() as u64);
    }
}

#[test]
fn events_touching_the_same_calls_again_and_again_never_skip_a_shard() {
    let t = tables();
    t.apply(at(0), &start("phantom", false));
    let run = t.begin_run();
    // Far more events than the bound, on a few calls: each is noted once.
    for i in 0..TOUCHED_PER_SHARD_MAX * 4 {
        let id = format!("busy{}", i % 16);
        t.apply(at(0), &start(&id, false));
        t.apply(at(0), &stop(&id));
    }
    let c = t.reconcile(at(1), &run, t.new_list(), Scope::All, true);
    t.finish_run(run);
    assert_eq!(c.shards_skipped, 0);
    assert_eq!(c.phantom_calls, 1);
}

/// What a live run did, in the order the tables saw it: events and journaled corrections.
#[derive(Debug, Clone)]
enum Logged {
    Start(String, bool),
    Stop(String),
    Reg(String, String, u32),
    Corrections(Vec<crate::Correction>),
}

/// The snapshot with its entries sorted, to compare two tables' contents.
fn contents(t: &Tables, now: crate::MonoTime) -> crate::Snapshot {
    let mut s = t.snapshot(now);
    s.calls.sort_by_key(|c| c.fingerprint);
    s.registrations.sort_by_key(|a| a.fingerprint);
    for aor in &mut s.registrations {
        aor.contacts.sort_by_key(|c| c.contact_hash);
    }
    s.tombstones.sort_by_key(|t| t.fingerprint);
    s
}

proptest! {
    /// A pass in steps of any budget, with events between the steps, ends with every entry
    /// no event touched equal to the list; and replaying the events and the journaled
    /// corrections in their order on a copy gives the same tables, counts included.
    #[test]
    fn a_stepped_pass_with_events_between_steps_replays_exactly(
        held_calls in proptest::collection::vec(0u8..40, 0..50),
        held_contacts in proptest::collection::vec((0u8..20, 0u8..3), 0..40),
        listed_calls in proptest::collection::vec((0u8..40, proptest::option::of(any::<bool>())), 0..50),
        listed_contacts in proptest::collection::vec((0u8..20, 0u8..3, 1u32..900), 0..40),
        events in proptest::collection::vec((0u8..4, 0u8..40), 0..30),
        budget in 1usize..8,
    ) {
        let live = tables();
        let copy = tables();
        let owner = live.owners().intern(b"kam1");
        prop_assert_eq!(copy.owners().intern(b"kam1"), owner);
        let mut log: Vec<Logged> = Vec::new();
        for id in &held_calls {
            log.push(Logged::Start(format!("c{id}"), false));
        }
        for (aor, contact) in &held_contacts {
            log.push(Logged::Reg(format!("a{aor}"), format!("k{contact}"), 600));
        }
        let apply = |t: &Tables, l: &Logged| match l {
            Logged::Start(id, e) => { t.apply_from(at(0), &start(id, *e), owner); }
            Logged::Stop(id) => { t.apply_from(at(0), &stop(id), owner); }
            Logged::Reg(aor, contact, expires) => {
                t.apply_from(at(0), &reg(aor, contact, *expires), owner);
            }
            Logged::Corrections(ops) => { t.apply_corrections(owner, ops); }
        };
        for l in &log {
            apply(&live, l);
        }
        let run = live.begin_run();
        let mut list = live.new_list();
        for (id, emergency) in &listed_calls {
            list.push_call(call(&format!("c{id}")), *emergency);
        }
        for (aor, contact, expires) in &listed_contacts {
            list.push_contact(format!("a{aor}").as_bytes(), format!("k{contact}").as_bytes(), at(1).unix_secs_u32() + expires);
        }
        let mut pass = live.reconcile_pass(list, Scope::Owner(owner), true);
        let mut touched_calls = std::collections::HashSet::new();
        let mut touched_aors = std::collections::HashSet::new();
        let mut pending = events.iter();
        loop {
            let mut journaled = Vec::new();
            let done = live.reconcile_step(at(1), &run, &mut pass, budget, &mut |ops| journaled.extend_from_slice(ops));
            if !journaled.is_empty() {
                log.push(Logged::Corrections(journaled));
            }
            if done {
                break;
            }
            if let Some((kind, id)) = pending.next() {
                let l = match kind {
                    0 => { touched_calls.insert(*id); Logged::Start(format!("c{id}"), true) }
                    1 => { touched_calls.insert(*id); Logged::Stop(format!("c{id}")) }
                    2 => { touched_aors.insert(id % 20); Logged::Reg(format!("a{}", id % 20), "k9".into(), 300) }
                    _ => { touched_aors.insert(id % 20); Logged::Reg(format!("a{}", id % 20), "k0".into(), 0) }
                };
                apply(&live, &l);
                log.push(l);
            }
        }
        live.finish_run(run);
        prop_assert_eq!(pass.corrections().shards_skipped, 0);
        // Untouched calls equal the list.
        let listed: std::collections::HashSet<u8> = listed_calls.iter().map(|(id, _)| *id).collect();
        for id in 0u8..40 {
            if touched_calls.contains(&id) {
                continue;
            }
            let outcome = live.apply_from(at(2), &Event::CallRefresh { call: call(&format!("c{id}")) }, owner);
            prop_assert_eq!(outcome == crate::Outcome::CallRefreshed, listed.contains(&id), "call c{}", id);
        }
        // The copy replays the log.
        for l in &log {
            apply(&copy, l);
        }
        // (The refreshes above moved deadlines: compare at a time both agree on counts.)
        prop_assert_eq!(copy.usage().registered_contacts, live.usage().registered_contacts);
        prop_assert_eq!(copy.usage().registered_subscribers, live.usage().registered_subscribers);
        prop_assert_eq!(copy.usage().calls, live.usage().calls);
        prop_assert_eq!(copy.usage().emergency_calls, live.usage().emergency_calls);
        let (a, b) = (contents(&live, at(2)), contents(&copy, at(2)));
        prop_assert_eq!(&a.registrations, &b.registrations);
        let fps = |s: &crate::Snapshot| s.calls.iter().map(|c| (c.fingerprint, c.emergency)).collect::<Vec<_>>();
        prop_assert_eq!(fps(&a), fps(&b));
        prop_assert_eq!(&a.tombstones, &b.tombstones);
        let _ = &touched_aors;
    }
}

#[test]
fn restored_entries_keep_their_owner_for_reconciliation() {
    let live = tables();
    live.owners().intern(b"someone-else");
    let kam = live.owners().intern(b"kam1");
    live.apply_from(at(0), &start("phantom", false), kam);
    live.apply_from(at(0), &reg("sip:a@x", "sip:a@1", 600), kam);
    live.apply(at(0), &start("unowned", false));
    let (bytes, _) = live
        .write_snapshot(
            at(1),
            crate::WallTime::from_unix_secs(T0_S + 1),
            0,
            Vec::new(),
        )
        .unwrap();
    // Streamed (the agent's path) and in memory, into tables that interned names in
    // another order.
    let snapshot = live.snapshot(at(1));
    for streamed in [true, false] {
        let t = tables();
        let kam = t.owners().intern(b"kam1");
        if streamed {
            t.restore_bytes(&bytes).unwrap();
        } else {
            t.restore(at(1), &snapshot).unwrap();
        }
        assert_eq!(t.usage().calls, 2);
        let c = run(&t, at(2), Scope::Owner(kam), &[], &[], &[]);
        assert_eq!((c.phantom_calls, c.phantom_contacts), (1, 1), "{c:?}");
        assert_eq!(t.usage().calls, 1, "the unowned call is not kam1's");
    }
}

/// Issue 15: an AoR the reconciliation gives its first contact on this node counts in the
/// cluster's AoR set right after the pass (its cluster fingerprint comes from the text the
/// proxy listed), not from its next REGISTER; one it removes leaves the set.
#[test]
fn aors_the_reconciliation_adds_or_removes_reach_the_cluster_aor_set() {
    use crate::{AorChange, cluster_fingerprint};
    let t = tables();
    let key = [5u8; 32];
    t.set_aor_key(&key);
    t.apply(at(0), &reg("kept", "c1", 600));
    t.apply(at(0), &reg("phantom", "c2", 600));
    t.drain_aor_changes();
    let c = run(
        &t,
        at(10),
        Scope::All,
        &[],
        &[
            ("kept", "c1", 590),
            ("missing", "c9", 600),
            ("missing", "c8", 600),
        ],
        &[],
    );
    assert_eq!((c.missing_contacts, c.phantom_contacts), (2, 1));
    let missing = cluster_fingerprint(&key, b"missing");
    let phantom = cluster_fingerprint(&key, b"phantom");
    let mut changes = t.drain_aor_changes().changes;
    changes.sort_by_key(|change| match change {
        AorChange::Added(fp) | AorChange::Removed(fp) => *fp,
    });
    let mut expected = vec![AorChange::Added(missing), AorChange::Removed(phantom)];
    expected.sort_by_key(|change| match change {
        AorChange::Added(fp) | AorChange::Removed(fp) => *fp,
    });
    assert_eq!(changes, expected);
    let mut set = t.aor_fingerprints();
    set.sort_unstable();
    let mut want = vec![cluster_fingerprint(&key, b"kept"), missing];
    want.sort_unstable();
    assert_eq!(set, want);
    // Its REGISTER later is a refresh: no change. Its last contact gone: removed.
    t.apply(at(11), &reg("missing", "c9", 600));
    assert!(t.drain_aor_changes().changes.is_empty());
    t.apply(at(12), &reg("missing", "c9", 0));
    t.apply(at(12), &reg("missing", "c8", 0));
    assert_eq!(
        t.drain_aor_changes().changes,
        vec![AorChange::Removed(missing)]
    );
}

/// A list built under one AoR key and applied after the key changed adds nothing to the
/// set (its fingerprints are under the old key): the AoR joins at its next REGISTER.
#[test]
fn a_reconciliation_across_a_key_change_adds_nothing_under_the_old_key() {
    use crate::{AorChange, cluster_fingerprint};
    let t = tables();
    t.set_aor_key(&[5u8; 32]);
    let run_ = t.begin_run();
    let mut list = t.new_list();
    list.push_contact(b"missing", b"c9", at(10).unix_secs_u32() + 600);
    t.set_aor_key(&[6u8; 32]);
    let c = t.reconcile(at(10), &run_, list, Scope::All, true);
    t.finish_run(run_);
    assert_eq!(c.missing_contacts, 1);
    assert!(t.drain_aor_changes().changes.is_empty());
    t.apply(at(11), &reg("missing", "c9", 600));
    assert_eq!(
        t.drain_aor_changes().changes,
        vec![AorChange::Added(cluster_fingerprint(
            &[6u8; 32], b"missing"
        ))]
    );
}

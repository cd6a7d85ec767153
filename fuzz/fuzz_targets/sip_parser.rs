//! Fuzzes the SIP parser (`tollgate_sip::SipMessage::parse`) and feeds what parses to the
//! mirror tracker.
//!
//! The input is split at NUL bytes into up to 16 messages, handled in order by one tracker
//! with the clock moving on. Invariants, beyond "never panics":
//! - every slice of a parsed message (start line, Call-ID, tags, URIs, header names and
//!   values, contact URIs) lies within the input (zero-copy);
//! - at most `HEADER_COUNT_MAX` headers and `CONTACT_COUNT_MAX` contacts are yielded (plus
//!   one error);
//! - the tracker's tables stay within their configured limits, and a message handled twice
//!   in a row emits nothing the second time (set semantics), unless a table was full or it
//!   is a REGISTER 200;
//! - sweeps far in the future empty the pending, dialog and ended tables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_events::MonoTime;
use tollgate_sip::message::{Contact, Method, StartLine};
use tollgate_sip::{
    CONTACT_COUNT_MAX, HEADER_COUNT_MAX, MirrorTracker, SipMessage, TrackerConfig, uri,
};

fn within(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= start + whole.len())
}

fn check_slices(input: &[u8], msg: &SipMessage<'_>) {
    let mut slices = vec![msg.call_id, msg.from.uri, msg.to.uri];
    slices.extend(msg.from.tag);
    slices.extend(msg.to.tag);
    match msg.start {
        StartLine::Request { method, uri } => {
            slices.push(uri);
            if let Method::Other(m) = method {
                slices.push(m);
            }
        }
        StartLine::Response { code, reason } => {
            assert!((100..=699).contains(&code));
            slices.push(reason);
        }
    }
    if let Method::Other(m) = msg.cseq.method {
        slices.push(m);
    }
    let mut headers = 0;
    for header in msg.headers() {
        let header = header.expect("a parsed message's headers parse again");
        headers += 1;
        slices.extend([header.name, header.value]);
    }
    assert_eq!(headers, msg.header_count);
    assert!(headers <= HEADER_COUNT_MAX);
    let mut contacts = 0;
    for contact in msg.contacts() {
        contacts += 1;
        if let Ok(Contact::Uri { uri, .. }) = contact {
            slices.push(uri);
        }
    }
    assert!(contacts <= CONTACT_COUNT_MAX + 1);
    for slice in slices {
        assert!(within(input, slice));
    }
}

/// How often a table was found full.
fn full(tracker: &MirrorTracker) -> u64 {
    let c = tracker.counters();
    c.pending_full + c.dialogs_full + c.ended_full + c.aors_full
}

fuzz_target!(|data: &[u8]| {
    let config = TrackerConfig {
        pending_count_max: 4,
        dialog_count_max: 4,
        ended_count_max: 4,
        aor_count_max: 4,
        ..TrackerConfig::default()
    };
    let mut tracker = MirrorTracker::new(config, [1, 2]).expect("valid config");
    let mut out = Vec::new();
    let mut now_ms = 1_700_000_000_000u64;
    for (i, input) in data.split(|&b| b == 0).take(16).enumerate() {
        now_ms += 1000;
        let now = MonoTime::from_unix_ms(now_ms);
        let Ok(msg) = SipMessage::parse(input) else {
            continue;
        };
        check_slices(input, &msg);
        let _ = uri::normalize_aor(msg.to.uri);
        let _ = uri::is_emergency(msg.to.uri, &tracker.config().emergency_numbers);

        let capture_id = (i % 2) as u32;
        tracker.handle(now, capture_id, &msg, &mut out);
        let before = (out.len(), full(&tracker));
        tracker.handle(now, capture_id, &msg, &mut out);
        // A full table degrades set semantics (documented); so does a REGISTER 200 that
        // leaves nothing to remember.
        if msg.cseq.method != Method::Register && full(&tracker) == before.1 {
            assert_eq!(out.len(), before.0, "a copy changed something: {out:?}");
        }
        assert!(tracker.pending_count() <= 4);
        assert!(tracker.dialog_count() <= 4);
        assert!(tracker.ended_count() <= 4);
        assert!(tracker.aor_count() <= 4);
        if i % 4 == 3 {
            tracker.expire(now, &mut out);
        }
    }
    // The first sweep ends dialogs (some with a stop, remembered as ended), the second
    // forgets them.
    tracker.expire(MonoTime::from_unix_ms(now_ms + 86_400_000), &mut out);
    tracker.expire(MonoTime::from_unix_ms(now_ms + 2 * 86_400_000), &mut out);
    assert_eq!(tracker.pending_count(), 0);
    assert_eq!(tracker.ended_count(), 0);
    assert_eq!(tracker.dialog_count(), 0);
});

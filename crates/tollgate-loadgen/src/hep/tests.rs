//! The writer's packets, fed to the real HEP decoder, mirror tracker and usage tables (no
//! socket), must leave the tables with exactly the ledger's counts, also when packets are
//! lost on the way.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate_sip::{MirrorTracker, TrackerConfig};
use tollgate_usage::{FingerprintKey, MonoTime, Tables, TablesConfig};

use super::*;
use crate::args::Mode;
use crate::ledger::Ledger;
use crate::model::{Model, ModelConfig};

fn config(seed: u64) -> ModelConfig {
    ModelConfig {
        mode: Mode::Erlang,
        seed,
        cps: 200.0,
        hold: Duration::from_millis(300),
        emergency_fraction: 0.1,
        flood_window: 1,
        call_refresh: Some(Duration::from_millis(100)),
        registrations: 50,
        contacts_per_aor: 3,
        reg_expires_s: 4,
        subscribers: Some(1234),
    }
}

/// Runs `seconds` of the model; each packet is lost with probability `loss`.
fn check(seed: u64, seconds: u64, loss: f64) {
    let mut model = Model::new(config(seed));
    let mut writer = HepWriter::new(Names::new("hep-test", seed), 1, Some(b"k".to_vec()), 50, 4);
    let mut ledger = Ledger::new(50);
    let mut tracker = MirrorTracker::new(TrackerConfig::default(), [seed, !seed]).unwrap();
    let tables = Tables::new(TablesConfig::default(), FingerprintKey([7; 32]));
    let mut rng = StdRng::seed_from_u64(seed ^ 0xdead);
    let mut events = Vec::new();
    let (mut packets, mut lost) = (0u64, 0u64);
    let end = Duration::from_secs(seconds);
    let mut now = Duration::ZERO;
    while now < end {
        while let Some(action) = model.poll_action(now) {
            let at = MonoTime::from_unix_ms(1_700_000_000_000 + now.as_millis() as u64);
            let books = writer.build(action, at.unix_ms() * 1000);
            let mut decided = false;
            for (i, bytes) in writer.packets().enumerate() {
                packets += 1;
                if rng.r#gen::<f64>() < loss {
                    lost += 1;
                    continue;
                }
                decided |= writer.is_deciding(i);
                let packet = tollgate_hep::decode(bytes).expect("the writer writes valid HEP");
                assert!(packet.auth_key_matches(b"k"));
                if let Some(datagram) = packet.log_events() {
                    for event in datagram.events {
                        tables.apply(at, &event.expect("a valid line"));
                    }
                    continue;
                }
                tracker
                    .handle_payload(at, packet.capture_id.unwrap(), packet.payload, &mut events)
                    .expect("the writer writes valid SIP");
                for event in events.drain(..) {
                    tables.apply(at, &event.as_event());
                }
            }
            if decided {
                match books {
                    Books::Action => ledger.apply(&action),
                    Books::ContactSet { aor, mask } => ledger.apply_contact_set(&action, aor, mask),
                }
            }
        }
        now = model.poll_timeout().min(end);
    }
    let usage = tables.usage();
    let got = (
        usage.calls,
        usage.emergency_calls,
        usage.registered_subscribers,
        usage.registered_contacts,
    );
    let expected = (
        ledger.active_calls(),
        ledger.emergency_calls(),
        ledger.registered_aors(),
        ledger.registered_contacts(),
    );
    assert_eq!(
        got, expected,
        "seed {seed}, {lost} of {packets} packets lost"
    );
    assert_eq!(
        Some(usage.subscribers).filter(|n| *n > 0),
        ledger.subscribers()
    );
    assert!(
        ledger.active_calls() > 10 && ledger.registered_contacts() > 50,
        "{expected:?}"
    );
    let c = tracker.counters();
    assert!(
        c.duplicates > 0 && c.calls_refreshed > 0 && c.contacts_removed > 0,
        "{c:?}"
    );
    assert!(c.calls_started_emergency > 0);
    if loss == 0.0 {
        assert_eq!(c.calls_started, ledger.verbs.call_start);
        assert_eq!(c.bye_unknown, 0);
    }
}

#[test]
fn mirrored_traffic_gives_the_ledgers_counts() {
    for seed in 1..4 {
        check(seed, 5, 0.0);
    }
}

#[test]
fn lost_packets_keep_the_ledger_exact() {
    for seed in 10..13 {
        check(seed, 5, 0.1);
    }
}

#[test]
fn a_call_is_fourteen_packets_and_sip_parses() {
    let mut writer = HepWriter::new(Names::new("lg", 1), 1, None, 1, 60);
    let mut count = 0;
    let mut messages = Vec::new();
    for action in [
        Action::CallStart {
            call: 5,
            emergency: true,
        },
        Action::CallStop { call: 5 },
    ] {
        writer.build(action, 1_700_000_000_000_000);
        for bytes in writer.packets() {
            count += 1;
            let packet = tollgate_hep::decode(bytes).unwrap();
            assert!(packet.auth_key.is_none());
            let msg = tollgate_sip::SipMessage::parse(packet.payload).unwrap();
            let line = packet.payload.split(|&b| b == b'\r').next().unwrap();
            messages.push(String::from_utf8(line.to_vec()).unwrap());
            assert_eq!(msg.call_id, b"lg5-0000000000000001@lg");
        }
    }
    assert_eq!(count, 14);
    assert_eq!(messages[0], "INVITE urn:service:sos SIP/2.0");
    assert_eq!(messages[6], "SIP/2.0 200 OK");
    assert_eq!(messages[10], "BYE sip:callee@198.51.100.3:5060 SIP/2.0");
    // The registration's 200 lists the whole set.
    writer.build(
        Action::Register {
            aor: 0,
            contact: 0,
            expires_s: 60,
        },
        0,
    );
    let books = writer.build(
        Action::Register {
            aor: 0,
            contact: 2,
            expires_s: 60,
        },
        0,
    );
    assert_eq!(
        books,
        Books::ContactSet {
            aor: 0,
            mask: 0b101
        }
    );
    let ok = writer.packets().nth(1).unwrap();
    let ok = tollgate_hep::decode(ok).unwrap();
    let msg = tollgate_sip::SipMessage::parse(ok.payload).unwrap();
    assert_eq!(msg.contacts().count(), 2);
    assert!(writer.is_deciding(1) && !writer.is_deciding(0));
}

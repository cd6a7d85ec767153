use std::net::UdpSocket;
use std::time::Instant;

use tollgate_hep::{HepBuilder, HepPacket};
use tollgate_usage::{FingerprintKey, Tables, TablesConfig, Usage};

use super::*;
use crate::stats::EventOutcome;

struct Harness {
    tables: Arc<Tables>,
    hep: HepIngest,
    tx: UdpSocket,
    builder: HepBuilder,
}

impl Harness {
    fn start(auth_key: Option<&[u8]>) -> Self {
        let tables = Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([7; 32]),
        ));
        let pipeline = Pipeline::for_tests(Arc::clone(&tables));
        let mut config = HepConfig::new("127.0.0.1:0".parse().unwrap());
        config.auth_key = auth_key.map(<[u8]>::to_vec);
        let hep = HepIngest::start(&config, pipeline).unwrap();
        assert_ne!(hep.local_addr().port(), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        Harness {
            tables,
            hep,
            tx,
            builder: HepBuilder::new(),
        }
    }

    fn send_packet(&mut self, packet: &HepPacket<'_>) {
        let bytes = self.builder.build(packet).unwrap();
        self.tx.send_to(bytes, self.hep.local_addr()).unwrap();
    }

    /// Sends a SIP message as a proxy mirrors it: twice, in and out.
    fn mirror(&mut self, sip: &str) {
        let (a, p, b) = (
            "10.0.0.1:5060".parse().unwrap(),
            "10.0.0.2:5060".parse().unwrap(),
            "10.0.0.3:5060".parse().unwrap(),
        );
        for (src, dst) in [(a, p), (p, b)] {
            let packet = HepPacket::sip(src, dst, 1_700_000_000_000_000, 7, sip.as_bytes());
            self.send_packet(&packet);
        }
    }

    fn wait(&self, what: &str, pred: impl Fn(&Usage, &HepSnapshot) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (usage, snap) = (self.tables.usage(), self.hep.snapshot());
            if pred(&usage, &snap) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {usage:?} {:?}",
                snap.packets
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn invite(call_id: &str) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
         Call-ID: {call_id}\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn ok_invite(call_id: &str) -> String {
    format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
         Call-ID: {call_id}\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>;tag=b1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn bye(call_id: &str) -> String {
    format!(
        "BYE sip:bob@10.0.0.3 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n\
         Call-ID: {call_id}\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>;tag=b1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn register_ok(cseq: u32, contacts: &[&str]) -> String {
    let mut msg = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{cseq}\r\n\
         Call-ID: reg-1@10.0.0.1\r\nFrom: <sip:carol@example.com>;tag=c1\r\n\
         To: <sip:carol@example.com>;tag=r1\r\nCSeq: {cseq} REGISTER\r\n"
    );
    for c in contacts {
        msg.push_str(&format!("Contact: <{c}>;expires=600\r\n"));
    }
    msg.push_str("Content-Length: 0\r\n\r\n");
    msg
}

#[test]
fn mirrored_call_starts_once_and_stops_on_bye() {
    let mut h = Harness::start(None);
    h.mirror(&invite("c1@h"));
    h.mirror(&ok_invite("c1@h"));
    h.wait("the call", |u, s| {
        u.calls == 1 && s.packets(HepResult::LABELS[HepResult::Sip as usize]) == 4
    });
    let snap = h.hep.snapshot();
    assert_eq!(snap.tracker.calls_started, 1);
    assert_eq!(
        snap.tracker.duplicates, 2,
        "the second INVITE and 200 copies"
    );
    assert_eq!(snap.dialogs, 1);
    assert_eq!(
        snap.ingest.totals.outcomes[EventOutcome::CallStarted as usize],
        1
    );
    h.mirror(&bye("c1@h"));
    h.wait("the stop", |u, s| u.calls == 0 && s.packets("sip") == 6);
    assert_eq!(h.hep.snapshot().tracker.calls_stopped_bye, 1);
}

#[test]
fn register_ok_replaces_the_binding_set() {
    let mut h = Harness::start(None);
    h.mirror(&register_ok(
        1,
        &["sip:carol@10.0.0.9", "sip:carol@10.0.0.10"],
    ));
    h.wait("two contacts", |u, _| {
        u.registered_subscribers == 1 && u.registered_contacts == 2
    });
    h.mirror(&register_ok(2, &["sip:carol@10.0.0.10"]));
    h.wait("one contact", |u, _| u.registered_contacts == 1);
    h.mirror(&register_ok(3, &[]));
    h.wait("unregistered", |u, _| {
        u.registered_subscribers == 0 && u.registered_contacts == 0
    });
}

#[test]
fn log_packets_carry_text_protocol_lines() {
    let mut h = Harness::start(None);
    let mut packet = HepPacket::sip(
        "10.0.0.2:5060".parse().unwrap(),
        "10.0.0.9:9060".parse().unwrap(),
        1_700_000_000_000_000,
        1,
        b"subscribers 42\ncall-start x@y tag=t\nbogus line\n",
    );
    packet.proto_type = Some(tollgate_hep::PROTO_TYPE_LOG);
    h.send_packet(&packet);
    h.wait("the log events", |u, s| {
        u.subscribers == 42 && u.calls == 1 && s.packets("log") == 1
    });
    let totals = h.hep.snapshot().ingest.totals;
    assert_eq!(
        totals.malformed[tollgate_events::Malformed::UnknownVerb as usize],
        1
    );
}

#[test]
fn bad_packets_are_counted_by_reason_and_dropped() {
    let mut h = Harness::start(Some(b"secret"));
    // Wrong key, no key, right key.
    let sip = invite("k@h");
    let ok = ok_invite("k@h");
    let src = "10.0.0.1:5060".parse().unwrap();
    let dst = "10.0.0.2:5060".parse().unwrap();
    for key in [Some(&b"wrong"[..]), None] {
        let mut packet = HepPacket::sip(src, dst, 0, 1, ok.as_bytes());
        packet.auth_key = key;
        h.send_packet(&packet);
    }
    for payload in [&sip, &ok] {
        let mut packet = HepPacket::sip(src, dst, 0, 1, payload.as_bytes());
        packet.auth_key = Some(b"secret\0");
        h.send_packet(&packet);
    }
    // Not HEP, HEPv2, a cut packet, a SIP packet that does not parse, RTCP.
    h.tx.send_to(b"call-start nope", h.hep.local_addr())
        .unwrap();
    h.tx.send_to(&[2, 16, 2, 17, 0, 0], h.hep.local_addr())
        .unwrap();
    let good = h
        .builder
        .build(&HepPacket::sip(src, dst, 0, 1, ok.as_bytes()))
        .unwrap()
        .to_vec();
    h.tx.send_to(&good[..good.len() - 3], h.hep.local_addr())
        .unwrap();
    let mut garbage = HepPacket::sip(src, dst, 0, 1, b"hello");
    garbage.auth_key = Some(b"secret");
    h.send_packet(&garbage);
    let mut rtcp = HepPacket::sip(src, dst, 0, 1, b"\x80\xc8");
    rtcp.auth_key = Some(b"secret");
    rtcp.proto_type = Some(5);
    h.send_packet(&rtcp);
    h.wait("every packet", |_, s| s.ingest.totals.datagrams == 9);
    let snap = h.hep.snapshot();
    let by_label: Vec<(&str, u64)> = HepResult::LABELS
        .iter()
        .copied()
        .zip(snap.packets)
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        by_label,
        [
            ("sip", 2),
            ("sip_malformed", 1),
            ("other_protocol", 1),
            ("auth_failed", 2),
            ("bad_magic", 1),
            ("unsupported_version", 1),
            ("length_mismatch", 1),
        ]
    );
    assert_eq!(h.tables.usage().calls, 1, "only the keyed 200 counts");
    // What the agent renders as tollgate_hep_{packets,tracker,tracker_entries,events}_*.
    assert_eq!(snap.packets("auth_failed"), 2);
    assert_eq!(snap.tracker.calls_started, 1);
    assert_eq!(snap.dialogs, 1);
    assert_eq!(
        snap.ingest.totals.events[tollgate_events::Verb::CallStart as usize],
        1
    );
}

#[test]
fn bad_configuration_is_refused() {
    let tables = Arc::new(Tables::new(
        TablesConfig::default(),
        FingerprintKey([7; 32]),
    ));
    let pipeline = Pipeline::for_tests(tables);
    let mut config = HepConfig::new("127.0.0.1:0".parse().unwrap());
    config.auth_key = Some(Vec::new());
    assert!(matches!(
        HepIngest::start(&config, pipeline.clone()),
        Err(IngestError::HepAuthKey)
    ));
    let mut config = HepConfig::new("127.0.0.1:0".parse().unwrap());
    config.tracker.emergency_numbers = vec![Vec::new()];
    let err = HepIngest::start(&config, pipeline).unwrap_err();
    assert!(err.to_string().contains("emergency"), "{err}");
}

#[test]
fn decode_error_labels_follow_the_decoder() {
    for error in HepError::ALL {
        assert_eq!(
            HepResult::LABELS[HepResult::decode_error_index(error)],
            error.as_str()
        );
    }
}

#[test]
fn hep_owner_names_spell_the_capture_id() {
    let mut buf = [0u8; super::HEP_OWNER_LEN_MAX];
    assert_eq!(super::hep_owner_name(0, &mut buf), b"hep-0");
    assert_eq!(super::hep_owner_name(2001, &mut buf), b"hep-2001");
    assert_eq!(super::hep_owner_name(u32::MAX, &mut buf), b"hep-4294967295");
}

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use tollgate_events::{CallRef, Event};

use super::*;

/// An INVITE as SIPp sends it to Kamailio.
const INVITE: &[u8] = b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-1-0\r\n\
From: sipp <sip:sipp@127.0.1.1:5061>;tag=4242SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-4242@127.0.1.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.1.1:5061\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length:   129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
s=-\r\n\
c=IN IP4 127.0.1.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// Appends one chunk, written by hand (not with the encoder under test).
fn raw_chunk(out: &mut Vec<u8>, vendor: u16, kind: u16, body: &[u8]) {
    out.extend_from_slice(&vendor.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// A packet from hand-written chunks, with a correct total length.
fn raw_packet(chunks: &[(u16, u16, &[u8])]) -> Vec<u8> {
    let mut out = b"HEP3\0\0".to_vec();
    for &(vendor, kind, body) in chunks {
        raw_chunk(&mut out, vendor, kind, body);
    }
    let len = out.len() as u16;
    out[4..6].copy_from_slice(&len.to_be_bytes());
    out
}

/// The chunks Kamailio's siptrace writes for one captured INVITE (with an auth key).
fn kamailio_chunks(payload: &[u8]) -> Vec<(u16, u16, &[u8])> {
    vec![
        (0, 1, &[2][..]),
        (0, 2, &[17]),
        (0, 3, &[127, 0, 1, 1]),
        (0, 4, &[127, 0, 0, 1]),
        (0, 7, &[0x13, 0xC5]), // 5061
        (0, 8, &[0x13, 0xC4]), // 5060
        (0, 9, &[0x65, 0x53, 0xF1, 0x00]),
        (0, 10, &[0x00, 0x01, 0xE2, 0x40]), // 123456 µs
        (0, 11, &[1]),
        (0, 12, &[0, 0, 0, 7]),
        (0, 14, b"myHep"),
        (0, 15, payload),
    ]
}

#[test]
fn kamailio_like_packet_decodes_every_field() {
    let bytes = raw_packet(&kamailio_chunks(INVITE));
    // 6 header + 87 bytes of fixed chunks + 11 auth key + 6 payload header + payload.
    assert_eq!(bytes.len(), 6 + 87 + 11 + 6 + INVITE.len());
    let packet = decode(&bytes).unwrap();
    assert_eq!(
        packet,
        HepPacket {
            ip_family: Some(FAMILY_IPV4),
            ip_proto: Some(IP_PROTO_UDP),
            src_addr: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))),
            dst_addr: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
            src_port: Some(5061),
            dst_port: Some(5060),
            timestamp_s: Some(0x6553_F100),
            timestamp_us: Some(123_456),
            proto_type: Some(PROTO_TYPE_SIP),
            capture_id: Some(7),
            auth_key: Some(b"myHep"),
            correlation_id: None,
            vlan: None,
            node_name: None,
            payload: INVITE,
        }
    );
    assert!(packet.is_sip() && !packet.is_log());
    assert_eq!(packet.timestamp_ms(), Some(0x6553_F100 * 1000 + 123));
    assert_eq!(packet.src(), Some("127.0.1.1:5061".parse().unwrap()));
    assert_eq!(packet.dst(), Some("127.0.0.1:5060".parse().unwrap()));
    assert!(packet.log_events().is_none());
}

#[test]
fn encoder_writes_kamailio_chunk_order() {
    let bytes = raw_packet(&kamailio_chunks(INVITE));
    let packet = decode(&bytes).unwrap();
    let mut builder = HepBuilder::new();
    assert_eq!(builder.build(&packet).unwrap(), &bytes[..]);
}

#[test]
fn sip_constructor_builds_what_siptrace_sends() {
    let src: SocketAddr = "127.0.1.1:5061".parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let mut packet = HepPacket::sip(src, dst, 0x6553_F100 * 1_000_000 + 123_456, 7, INVITE);
    packet.auth_key = Some(b"myHep");
    let mut out = Vec::new();
    encode(&packet, &mut out).unwrap();
    assert_eq!(out, raw_packet(&kamailio_chunks(INVITE)));
}

#[test]
fn ipv6_addresses_and_string_chunks_decode() {
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let bytes = raw_packet(&[
        (0, 1, &[10]),
        (0, 5, &src.octets()),
        (0, 6, &dst.octets()),
        (0, 17, b"corr-1"),
        (0, 18, &[0, 42]),
        (0, 19, b"sbc-eu-1"),
        (0, 15, b"x"),
    ]);
    let packet = decode(&bytes).unwrap();
    assert_eq!(packet.ip_family, Some(FAMILY_IPV6));
    assert_eq!(packet.src_addr, Some(IpAddr::V6(src)));
    assert_eq!(packet.dst_addr, Some(IpAddr::V6(dst)));
    assert_eq!(packet.correlation_id, Some(&b"corr-1"[..]));
    assert_eq!(packet.vlan, Some(42));
    assert_eq!(packet.node_name, Some(&b"sbc-eu-1"[..]));
    assert_eq!(packet.src(), None, "no port chunk");
    assert_eq!(packet.timestamp_ms(), None);
}

/// `check(bytes, expected)`: the decode result's label.
fn check(bytes: &[u8], expected: Result<(), &str>) {
    let got = decode(bytes).map(|_| ()).map_err(HepError::as_str);
    assert_eq!(got, expected, "{bytes:?}");
}

#[test]
fn bad_magic_is_rejected() {
    check(b"", Err("bad_magic"));
    check(b"HEP", Err("bad_magic"));
    check(b"HEP2\x00\x06", Err("bad_magic"));
    check(b"hep3\x00\x06", Err("bad_magic"));
    check(b"INVITE sip:x SIP/2.0\r\n", Err("bad_magic"));
}

#[test]
fn hep_v1_and_v2_are_told_apart_from_garbage() {
    // HEPv1: version 1, header length 16, family 2 (IPv4), protocol 17.
    check(
        &[1, 16, 2, 17, 0x13, 0xc4, 0x13, 0xc4],
        Err("unsupported_version"),
    );
    check(&[2, 28, 10, 17], Err("unsupported_version"));
    check(&[3, 16, 2, 17], Err("bad_magic"));
}

#[test]
fn total_length_must_equal_the_datagram_length() {
    check(b"HEP3", Err("length_mismatch"));
    check(b"HEP3\x00", Err("length_mismatch"));
    let mut bytes = raw_packet(&[(0, 15, b"x")]);
    check(&bytes, Ok(()));
    bytes.push(0);
    check(&bytes, Err("length_mismatch"));
    bytes.pop();
    bytes.pop();
    check(&bytes, Err("length_mismatch"));
    let mut bytes = raw_packet(&[(0, 15, b"x")]);
    bytes[5] += 1;
    check(&bytes, Err("length_mismatch"));
}

#[test]
fn chunk_length_below_six_or_past_the_end_is_rejected() {
    let good = raw_packet(&[(0, 1, &[2]), (0, 15, b"payload")]);
    check(&good, Ok(()));
    for bad_len in [0u16, 5, 8, 200] {
        let mut bytes = good.clone();
        bytes[10..12].copy_from_slice(&bad_len.to_be_bytes()); // first chunk's length
        check(&bytes, Err("bad_chunk_length"));
    }
    // The last chunk one byte longer than what is left.
    let mut bytes = good.clone();
    let at = bytes.len() - 7 - 2; // the payload chunk's length field
    bytes[at..at + 2].copy_from_slice(&14u16.to_be_bytes());
    check(&bytes, Err("bad_chunk_length"));
    // A chunk header cut short by the end of the packet.
    let mut bytes = raw_packet(&[(0, 15, b"payload")]);
    bytes.extend_from_slice(&[0, 0, 0]);
    let len = bytes.len() as u16;
    bytes[4..6].copy_from_slice(&len.to_be_bytes());
    check(&bytes, Err("bad_chunk_length"));
}

#[test]
fn fixed_size_chunks_of_the_wrong_size_are_rejected() {
    let sizes: [(u16, usize); 13] = [
        (1, 1),
        (2, 1),
        (11, 1),
        (7, 2),
        (8, 2),
        (18, 2),
        (3, 4),
        (4, 4),
        (9, 4),
        (10, 4),
        (12, 4),
        (5, 16),
        (6, 16),
    ];
    for (kind, size) in sizes {
        assert_eq!(chunk::fixed_size(kind), Some(size));
        for wrong in [0, size - 1, size + 1] {
            let body = vec![0u8; wrong];
            let bytes = raw_packet(&[(0, kind, &body), (0, 15, b"x")]);
            check(&bytes, Err("bad_fixed_size"));
        }
        let body = vec![0u8; size];
        check(&raw_packet(&[(0, kind, &body), (0, 15, b"x")]), Ok(()));
    }
    for kind in [13, 14, 15, 16, 17, 19, 20, 0xFFFF] {
        assert_eq!(chunk::fixed_size(kind), None);
    }
}

#[test]
fn other_vendors_chunks_are_skipped_by_length() {
    let bytes = raw_packet(&[
        (2, 15, b"kamailio's own payload chunk"),
        (3, 1, b"not one byte"), // OpenSIPS type 1: not a generic family chunk
        (0, 12, &[0, 0, 0, 9]),
        (4, 12, b"??"),
        (0, 15, b"the payload"),
        (0xFFFF, 0xFFFF, b""),
    ]);
    let packet = decode(&bytes).unwrap();
    assert_eq!(packet.payload, b"the payload");
    assert_eq!(packet.capture_id, Some(9));
    assert_eq!(packet.ip_family, None);
}

#[test]
fn unknown_generic_chunks_are_skipped() {
    let bytes = raw_packet(&[(0, 13, b"keepalive"), (0, 99, b""), (0, 15, b"p")]);
    assert_eq!(decode(&bytes).unwrap().payload, b"p");
}

#[test]
fn a_repeated_chunk_keeps_its_last_value() {
    let bytes = raw_packet(&[
        (0, 12, &[0, 0, 0, 1]),
        (0, 15, b"first"),
        (0, 12, &[0, 0, 0, 2]),
        (0, 15, b"second"),
    ]);
    let packet = decode(&bytes).unwrap();
    assert_eq!(
        (packet.capture_id, packet.payload),
        (Some(2), &b"second"[..])
    );
}

#[test]
fn a_packet_without_payload_is_rejected() {
    check(&raw_packet(&[]), Err("missing_payload"));
    check(
        &raw_packet(&[(0, 1, &[2]), (2, 15, b"vendor")]),
        Err("missing_payload"),
    );
    check(
        &raw_packet(&[(0, 16, b"\x1f\x8b...")]),
        Err("unsupported_payload"),
    );
    // With both, the plain payload is used.
    let bytes = raw_packet(&[(0, 16, b"\x1f\x8b..."), (0, 15, b"plain")]);
    assert_eq!(decode(&bytes).unwrap().payload, b"plain");
    // An empty payload is a payload.
    check(&raw_packet(&[(0, 15, b"")]), Ok(()));
}

#[test]
fn chunks_iterator_frames_every_chunk_then_stops_at_an_error() {
    let bytes = raw_packet(&kamailio_chunks(INVITE));
    let framed_chunks: Vec<_> = chunks(&bytes).unwrap().map(Result::unwrap).collect();
    assert_eq!(framed_chunks.len(), 12);
    let framed: usize = framed_chunks
        .iter()
        .map(|c| CHUNK_HEADER_LEN + c.body.len())
        .sum();
    assert_eq!(HEADER_LEN + framed, bytes.len());
    assert_eq!(
        framed_chunks[11],
        Chunk {
            vendor: 0,
            kind: 15,
            body: INVITE
        }
    );

    let mut bad = raw_packet(&[(0, 1, &[2]), (0, 15, b"x")]);
    bad[10..12].copy_from_slice(&3u16.to_be_bytes());
    let items: Vec<_> = chunks(&bad).unwrap().collect();
    assert_eq!(items, [Err(HepError::BadChunkLength)]);
}

#[test]
fn log_packets_carry_text_protocol_lines() {
    let mut packet = HepPacket::sip(
        "127.0.0.1:5060".parse().unwrap(),
        "127.0.0.1:9060".parse().unwrap(),
        0,
        1,
        b"call-start a84b4c76e66710@pc33 tag=1928301774\ncall-stop x\nbogus\n",
    );
    packet.proto_type = Some(PROTO_TYPE_LOG);
    packet.correlation_id = Some(b"a84b4c76e66710@pc33");
    let bytes = HepBuilder::new().build(&packet).unwrap().to_vec();
    let decoded = decode(&bytes).unwrap();
    assert!(decoded.is_log());
    let items: Vec<_> = decoded.log_events().unwrap().events.collect();
    assert_eq!(
        items,
        [
            Ok(Event::CallStart {
                call: CallRef {
                    call_id: b"a84b4c76e66710@pc33",
                    from_tag: Some(b"1928301774"),
                },
                emergency: false,
            }),
            Ok(Event::CallStop {
                call: CallRef {
                    call_id: b"x",
                    from_tag: None,
                },
            }),
            Err(tollgate_events::Malformed::UnknownVerb),
        ]
    );
}

#[test]
fn auth_key_comparison() {
    let mut packet = HepPacket::default();
    assert!(!packet.auth_key_matches(b"secret"));
    packet.auth_key = Some(b"secret");
    assert!(packet.auth_key_matches(b"secret"));
    assert!(!packet.auth_key_matches(b"secreT"));
    assert!(!packet.auth_key_matches(b"secret2"));
    assert!(!packet.auth_key_matches(b""));
    packet.auth_key = Some(b"secret\0");
    assert!(packet.auth_key_matches(b"secret"));
}

#[test]
fn encoder_refuses_what_does_not_fit_and_leaves_the_buffer_alone() {
    let big = vec![b'x'; CHUNK_BODY_LEN_MAX + 1];
    let packet = HepPacket {
        payload: &big,
        ..HepPacket::default()
    };
    let mut out = b"keep".to_vec();
    assert_eq!(
        encode(&packet, &mut out),
        Err(EncodeError::ChunkTooLong {
            kind: chunk::PAYLOAD,
            len: big.len()
        })
    );
    assert_eq!(out, b"keep");
    // Fits a chunk, not the packet.
    let packet = HepPacket {
        payload: &big[..CHUNK_BODY_LEN_MAX],
        capture_id: Some(1),
        ..HepPacket::default()
    };
    assert!(matches!(
        encode(&packet, &mut out),
        Err(EncodeError::PacketTooLong { .. })
    ));
    assert_eq!(out, b"keep");
    // The largest packet that fits.
    let packet = HepPacket {
        payload: &big[..PACKET_LEN_MAX - HEADER_LEN - CHUNK_HEADER_LEN],
        ..HepPacket::default()
    };
    let bytes = HepBuilder::new().build(&packet).unwrap().to_vec();
    assert_eq!(bytes.len(), PACKET_LEN_MAX);
    assert_eq!(decode(&bytes).unwrap(), packet);
}

#[test]
fn error_labels_are_unique_and_indexed_by_discriminant() {
    for (i, error) in HepError::ALL.iter().enumerate() {
        assert_eq!(*error as usize, i);
    }
    let mut labels: Vec<_> = HepError::ALL.iter().map(|e| e.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), HepError::COUNT);
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn bytes(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..len_max)
}

/// Owned fields of an arbitrary packet (the packet borrows its strings from them).
#[derive(Debug, Clone)]
#[allow(clippy::type_complexity)]
struct Fields {
    numbers: (
        Option<u8>,
        Option<u8>,
        Option<IpAddr>,
        Option<IpAddr>,
        Option<u16>,
        Option<u16>,
        Option<u32>,
        Option<u32>,
        Option<u8>,
        Option<u32>,
        Option<u16>,
    ),
    auth_key: Option<Vec<u8>>,
    correlation_id: Option<Vec<u8>>,
    node_name: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Fields {
    fn packet(&self) -> HepPacket<'_> {
        let n = self.numbers;
        HepPacket {
            ip_family: n.0,
            ip_proto: n.1,
            src_addr: n.2,
            dst_addr: n.3,
            src_port: n.4,
            dst_port: n.5,
            timestamp_s: n.6,
            timestamp_us: n.7,
            proto_type: n.8,
            capture_id: n.9,
            vlan: n.10,
            auth_key: self.auth_key.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            node_name: self.node_name.as_deref(),
            payload: &self.payload,
        }
    }
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (
            any::<Option<u8>>(),
            any::<Option<u8>>(),
            proptest::option::of(ip()),
            proptest::option::of(ip()),
            any::<Option<u16>>(),
            any::<Option<u16>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u8>>(),
            any::<Option<u32>>(),
            any::<Option<u16>>(),
        ),
        proptest::option::of(bytes(40)),
        proptest::option::of(bytes(40)),
        proptest::option::of(bytes(40)),
        bytes(600),
    )
        .prop_map(
            |(numbers, auth_key, correlation_id, node_name, payload)| Fields {
                numbers,
                auth_key,
                correlation_id,
                node_name,
                payload,
            },
        )
}

proptest! {
    #[test]
    fn encoded_packets_decode_equal(fields in fields()) {
        let packet = fields.packet();
        let mut builder = HepBuilder::new();
        let bytes = builder.build(&packet).unwrap().to_vec();
        prop_assert_eq!(decode(&bytes), Ok(packet));
        let framed: usize = chunks(&bytes)
            .unwrap()
            .map(|c| CHUNK_HEADER_LEN + c.unwrap().body.len())
            .sum();
        prop_assert_eq!(HEADER_LEN + framed, bytes.len());
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in bytes(300)) {
        let _ = decode(&bytes);
        let mut with_header = b"HEP3".to_vec();
        with_header.extend_from_slice(&((bytes.len() + 6) as u16).to_be_bytes());
        with_header.extend_from_slice(&bytes);
        if let Ok(packet) = decode(&with_header) {
            let again = HepBuilder::new().build(&packet).unwrap().to_vec();
            prop_assert_eq!(decode(&again), Ok(packet));
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_packets(
        fields in fields(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = HepBuilder::new().build(&fields.packet()).unwrap().to_vec();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        let _ = decode(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = decode(&bytes);
    }
}

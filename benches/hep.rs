//! HEPv3 ingest (crates `tollgate-hep` and `tollgate-sip`): what one mirrored call costs.
//!
//! A call as Kamailio's `siptrace` mirrors it is 13 HEP packets: INVITE, 180, 200, ACK, BYE
//! and its 200 each twice (received and relayed), and the 100 Trying once. The packets are
//! built like Kamailio's (chunks 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15; SIP as SIPp sends
//! it), for 1024 distinct calls.
//!
//! - `hep/decode`: decode the 13 packets of a call;
//! - `sip/parse`: parse their 13 SIP payloads;
//! - `tracker/handle`: feed the 13 parsed messages to a `MirrorTracker` (one `CallStart`, one
//!   `CallStop`), sweeping once per 1024 calls;
//! - `pipeline/call`: all three, packet by packet, as the HEP socket will run them.
//!
//! Throughput is in packets (13 per call: divide by 13 for calls per second). Run:
//! `cargo bench --bench hep` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_events::MonoTime;
use tollgate_hep::{HepBuilder, HepPacket};
use tollgate_sip::{MirrorTracker, OwnedEvent, SipMessage, TrackerConfig};

/// Distinct calls the benchmark cycles through.
const CALL_COUNT: usize = 1024;
/// HEP packets of one mirrored call.
const PACKETS_PER_CALL: usize = 13;
/// The clock moves this much between rounds of `CALL_COUNT` calls, so the tracker forgets
/// the ended dialogs of the previous round (its `ended_ttl_ms` is 64 s).
const ROUND_MS: u64 = 65_000;

/// The SIP messages of call `i`, in mirrored order.
fn call_messages(i: usize) -> Vec<String> {
    let call_id = format!("{i}-4242@127.0.1.1");
    let from = format!("sipp <sip:sipp@127.0.1.1:5061>;tag={i}SIPpTag00");
    let to = "<sip:service@127.0.0.1:5060>";
    let to_tagged = format!("{to};tag={i}SIPpTag01");
    let request = |method: &str, cseq: u32, to: &str, extra: &str| {
        format!(
            "{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-{i}-{cseq}\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: sip:sipp@127.0.1.1:5061\r\n\
             Max-Forwards: 70\r\n\
             {extra}"
        )
    };
    let response = |status: &str, cseq: u32, method: &str, to: &str| {
        format!(
            "SIP/2.0 {status}\r\n\
             Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-{i}-{cseq};received=127.0.1.1\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:127.0.1.1:5062;transport=UDP>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.1.1\r\ns=-\r\n\
               c=IN IP4 127.0.1.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = request(
        "INVITE",
        1,
        to,
        &format!(
            "Subject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
    let ack = request("ACK", 1, &to_tagged, "Content-Length: 0\r\n\r\n");
    let bye = request("BYE", 2, &to_tagged, "Content-Length: 0\r\n\r\n");
    let trying = response("100 Trying", 1, "INVITE", to);
    let ringing = response("180 Ringing", 1, "INVITE", &to_tagged);
    let ok = response("200 OK", 1, "INVITE", &to_tagged);
    let bye_ok = response("200 OK", 2, "BYE", &to_tagged);
    vec![
        invite.clone(),
        invite,
        trying,
        ringing.clone(),
        ringing,
        ok.clone(),
        ok,
        ack.clone(),
        ack,
        bye.clone(),
        bye,
        bye_ok.clone(),
        bye_ok,
    ]
}

/// The HEP packets of `CALL_COUNT` calls, `PACKETS_PER_CALL` each.
fn hep_packets() -> Vec<Vec<Vec<u8>>> {
    let proxy: SocketAddr = "127.0.0.1:5060".parse().expect("address");
    let uac: SocketAddr = "127.0.1.1:5061".parse().expect("address");
    let mut builder = HepBuilder::new();
    (0..CALL_COUNT)
        .map(|i| {
            call_messages(i)
                .iter()
                .enumerate()
                .map(|(n, sip)| {
                    let (src, dst) = if n % 2 == 0 {
                        (uac, proxy)
                    } else {
                        (proxy, uac)
                    };
                    let ts_us = 1_700_000_000_000_000 + (i * 1000 + n) as u64;
                    let packet = HepPacket::sip(src, dst, ts_us, 1, sip.as_bytes());
                    builder.build(&packet).expect("fits").to_vec()
                })
                .collect()
        })
        .collect()
}

/// Cycles through the calls with a clock that moves on every round, sweeping the tracker
/// at the start of each round.
struct Driver {
    tracker: MirrorTracker,
    next: usize,
    now_ms: u64,
    out: Vec<OwnedEvent>,
}

impl Driver {
    fn new() -> Self {
        Driver {
            tracker: MirrorTracker::new(TrackerConfig::default(), [1, 2]).expect("default config"),
            next: 0,
            now_ms: 1_700_000_000_000,
            out: Vec::with_capacity(8),
        }
    }

    /// The index of the next call; sweeps when a round starts.
    fn next_call(&mut self) -> usize {
        let i = self.next;
        if i == 0 {
            self.now_ms += ROUND_MS;
            self.tracker
                .expire(MonoTime::from_unix_ms(self.now_ms), &mut self.out);
            self.out.clear();
        }
        self.next = (i + 1) % CALL_COUNT;
        i
    }

    fn now(&self) -> MonoTime {
        MonoTime::from_unix_ms(self.now_ms)
    }

    /// Takes the events of one call, checking it was counted.
    fn finish_call(&mut self) {
        debug_assert_eq!(self.out.len(), 2, "{:?}", self.out);
        black_box(&self.out);
        self.out.clear();
    }
}

fn hep(c: &mut Criterion) {
    let packets = hep_packets();
    let bytes: usize = packets[0].iter().map(Vec::len).sum();
    eprintln!(
        "hep bench: {CALL_COUNT} calls of {PACKETS_PER_CALL} packets, {bytes} bytes per call (INVITE packet {} bytes)",
        packets[0][0].len()
    );
    let payloads: Vec<Vec<&[u8]>> = packets
        .iter()
        .map(|call| {
            call.iter()
                .map(|p| tollgate_hep::decode(p).expect("valid").payload)
                .collect()
        })
        .collect();
    let messages: Vec<Vec<SipMessage<'_>>> = payloads
        .iter()
        .map(|call| {
            call.iter()
                .map(|p| SipMessage::parse(p).expect("valid"))
                .collect()
        })
        .collect();
    // One full pass: every call starts and stops exactly once.
    let mut driver = Driver::new();
    for _ in 0..CALL_COUNT {
        let i = driver.next_call();
        let now = driver.now();
        for msg in &messages[i] {
            driver.tracker.handle(now, 1, msg, &mut driver.out);
        }
        assert_eq!(driver.out.len(), 2);
        driver.finish_call();
    }

    let mut group = c.benchmark_group("hep");
    group.throughput(Throughput::Elements(PACKETS_PER_CALL as u64));
    let mut i = 0;
    group.bench_function("decode", |b| {
        b.iter(|| {
            i = (i + 1) % CALL_COUNT;
            for packet in &packets[i] {
                black_box(tollgate_hep::decode(black_box(packet)).expect("valid"));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(PACKETS_PER_CALL as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            i = (i + 1) % CALL_COUNT;
            for payload in &payloads[i] {
                black_box(SipMessage::parse(black_box(payload)).expect("valid"));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("tracker");
    group.throughput(Throughput::Elements(PACKETS_PER_CALL as u64));
    let mut driver = Driver::new();
    group.bench_function("handle", |b| {
        b.iter(|| {
            let i = driver.next_call();
            let now = driver.now();
            for msg in &messages[i] {
                driver.tracker.handle(now, 1, msg, &mut driver.out);
            }
            driver.finish_call();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(PACKETS_PER_CALL as u64));
    let mut driver = Driver::new();
    group.bench_function("call", |b| {
        b.iter(|| {
            let i = driver.next_call();
            let now = driver.now();
            for packet in &packets[i] {
                let hep = tollgate_hep::decode(black_box(packet)).expect("valid");
                let capture_id = hep.capture_id.unwrap_or(0);
                driver
                    .tracker
                    .handle_payload(now, capture_id, hep.payload, &mut driver.out)
                    .expect("valid");
            }
            driver.finish_call();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hep
}
criterion_main!(benches);

//! Event decoding and encoding, text and binary (crate `tollgate-events`).
//!
//! - `text/line`: one typical `call-start` line, the unit of the "well under 50 ns" target;
//! - `text/datagram_1400` and `binary/datagram`: the same mix of events (call start, stop,
//!   refresh, reg, admit) as one 1400-byte text datagram and as one binary datagram;
//! - `encode/*`: building those datagrams with the crates' encoders.
//!
//! Throughput is in events. Run: `cargo bench --bench decode` (add `-- --quick` for a fast
//! pass).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_events::{CallRef, Event, binary, text};

const TYPICAL_LINE: &[u8] = b"call-start 3848276298220188511@10.0.0.1 tag=as5f3a emergency\n";

/// Path-MTU-sized datagram, as a proxy on a real network would send.
const DATAGRAM_LEN_MAX: usize = 1400;

/// The owned fields of the benchmark's events.
struct Fields {
    call_ids: Vec<Vec<u8>>,
    tags: Vec<Vec<u8>>,
    aors: Vec<Vec<u8>>,
    contacts: Vec<Vec<u8>>,
}

impl Fields {
    fn new(count: usize) -> Self {
        Fields {
            call_ids: (0..count)
                .map(|i| format!("{:010x}@10.0.0.1", i * 7919).into())
                .collect(),
            tags: (0..count)
                .map(|i| format!("{:06x}", i * 104_729).into())
                .collect(),
            aors: (0..count)
                .map(|i| format!("sip:u{i:04}@ex.com").into())
                .collect(),
            contacts: (0..count)
                .map(|i| format!("sip:u{i:04}@10.0.0.7").into())
                .collect(),
        }
    }

    /// A mix of events: 3/8 call-start (some emergency), 2/8 call-stop, 1/8 call-refresh,
    /// 1/8 reg, 1/8 admit.
    fn event(&self, i: usize) -> Event<'_> {
        let call = CallRef {
            call_id: &self.call_ids[i],
            from_tag: Some(&self.tags[i]),
        };
        match i % 8 {
            0..=2 => Event::CallStart {
                call,
                emergency: i.is_multiple_of(16),
            },
            3 | 4 => Event::CallStop { call },
            5 => Event::CallRefresh { call },
            6 => Event::Register {
                aor: &self.aors[i],
                contact: &self.contacts[i],
                expires_s: 3600,
            },
            _ => Event::Admit {
                call_id: &self.call_ids[i],
                emergency: false,
            },
        }
    }
}

/// As many events of the mix as fit one 1400-byte text datagram (with a `seq` line).
fn events(fields: &Fields) -> Vec<Event<'_>> {
    let mut encoder = text::Encoder::new(DATAGRAM_LEN_MAX);
    encoder.reset(Some((b"proxy-01", 1))).expect("seq line");
    let mut events = Vec::new();
    for i in 0.. {
        let event = fields.event(i);
        if encoder.push(&event).is_err() {
            break;
        }
        events.push(event);
    }
    events
}

fn text_datagram(events: &[Event<'_>]) -> Vec<u8> {
    let mut encoder = text::Encoder::new(DATAGRAM_LEN_MAX);
    encoder.reset(Some((b"proxy-01", 1))).expect("seq line");
    for event in events {
        encoder.push(event).expect("fits");
    }
    encoder.into_vec()
}

fn binary_datagram(events: &[Event<'_>]) -> Vec<u8> {
    let mut encoder = binary::Encoder::new(DATAGRAM_LEN_MAX);
    encoder.reset(Some((*b"proxy-01", 1)));
    for event in events {
        encoder.push(event).expect("fits");
    }
    encoder.into_vec()
}

/// Decodes a datagram and consumes every item; returns the number of events.
#[inline]
fn drain(datagram: &[u8]) -> usize {
    let decoded = tollgate_events::decode(black_box(datagram));
    black_box(decoded.seq);
    let mut count = 0;
    for item in decoded.events {
        count += usize::from(black_box(item).is_ok());
    }
    count
}

fn decode(c: &mut Criterion) {
    let fields = Fields::new(256);
    let events = events(&fields);
    let text = text_datagram(&events);
    let binary = binary_datagram(&events);
    assert_eq!(drain(TYPICAL_LINE), 1);
    assert_eq!(drain(&text), events.len());
    assert_eq!(drain(&binary), events.len());
    eprintln!(
        "decode bench: {} events; text datagram {} bytes, binary datagram {} bytes",
        events.len(),
        text.len(),
        binary.len()
    );

    let mut group = c.benchmark_group("text");
    group.throughput(Throughput::Elements(1));
    group.bench_function("line", |b| b.iter(|| drain(TYPICAL_LINE)));
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("datagram_1400", |b| b.iter(|| drain(&text)));
    group.finish();

    let mut group = c.benchmark_group("binary");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("datagram", |b| b.iter(|| drain(&binary)));
    group.finish();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(events.len() as u64));
    let mut encoder = text::Encoder::new(DATAGRAM_LEN_MAX);
    group.bench_function("text_datagram_1400", |b| {
        b.iter(|| {
            encoder.reset(Some((b"proxy-01", 1))).expect("seq line");
            for event in black_box(&events) {
                encoder.push(event).expect("fits");
            }
            black_box(encoder.as_bytes());
        })
    });
    let mut encoder = binary::Encoder::new(DATAGRAM_LEN_MAX);
    group.bench_function("binary_datagram", |b| {
        b.iter(|| {
            encoder.reset(Some((*b"proxy-01", 1)));
            for event in black_box(&events) {
                encoder.push(event).expect("fits");
            }
            black_box(encoder.as_bytes());
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decode
}
criterion_main!(benches);

//! Heap allocations per HEP message on the real HEP route: a `HepIngest` (the agent's HEP
//! collector: receive thread, `MirrorTracker`, tables, and the journal when on) on a
//! loopback socket, fed mirrored calls as Kamailio's `siptrace` sends them (13 packets a
//! call: INVITE, 180, 200, ACK, BYE and its 200 twice each, 100 Trying once). A counting
//! global allocator counts every allocation made by any thread but this one (the sender),
//! from the first packet until the collector has handled them all.
//!
//! Run: `cargo run -p hep-allocs [-- CALLS]` (default 2000 calls; `docs/performance.md`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate_hep::{HepBuilder, HepPacket};
use tollgate_ingest::{AdmitAll, HepConfig, HepIngest, Journal, Pipeline};
use tollgate_usage::{FingerprintKey, SequenceTracker, Tables, TablesConfig};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the sending thread: its own allocations are not the route's.
    static EXCLUDED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !EXCLUDED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && !EXCLUDED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The SIP messages of call `i`, in mirrored order (as `benches/hep.rs`).
fn call_messages(i: usize) -> Vec<String> {
    let call_id = format!("{i}-4242@127.0.1.1");
    let from = format!("sipp <sip:sipp@127.0.1.1:5061>;tag={i}SIPpTag00");
    let to = "<sip:service@127.0.0.1:5060>".to_owned();
    let to_tagged = format!("{to};tag={i}SIPpTag01");
    let request = |method: &str, cseq: u32, to: &str| {
        format!(
            "{method} sip:service@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-{i}-{cseq}\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: sip:sipp@127.0.1.1:5061\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let response = |status: &str, cseq: u32, method: &str, to: &str| {
        format!(
            "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-{i}-{cseq}\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:127.0.1.1:5062>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let invite = request("INVITE", 1, &to);
    let ack = request("ACK", 1, &to_tagged);
    let bye = request("BYE", 2, &to_tagged);
    let ringing = response("180 Ringing", 1, "INVITE", &to_tagged);
    let ok = response("200 OK", 1, "INVITE", &to_tagged);
    let bye_ok = response("200 OK", 2, "BYE", &to_tagged);
    vec![
        invite.clone(),
        invite,
        response("100 Trying", 1, "INVITE", &to),
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

fn run(calls: usize, journal: bool) -> anyhow::Result<(u64, u64)> {
    let dir = tempfile::tempdir()?;
    let tables = Arc::new(Tables::new(
        TablesConfig::default(),
        FingerprintKey([7; 32]),
    ));
    let journal = if journal {
        Some(Arc::new(Journal::open(
            &dir.path().join("journal"),
            1,
            tables.fingerprint_key_id(),
            tollgate_ingest::clock_offset_ms(),
            Duration::from_secs(1),
            u64::MAX,
            [9; 32],
        )?))
    } else {
        None
    };
    let pipeline = Pipeline {
        tables: Arc::clone(&tables),
        sequences: Arc::new(SequenceTracker::with_key(&FingerprintKey([8; 32]))),
        admission: Arc::new(AdmitAll),
        observer: None,
        journal,
    };
    let hep = HepIngest::start(&HepConfig::new("127.0.0.1:0".parse()?), pipeline)?;
    let (proxy, uac): (SocketAddr, SocketAddr) =
        ("127.0.0.1:5060".parse()?, "127.0.1.1:5061".parse()?);
    let mut builder = HepBuilder::new();
    let packets: Vec<Vec<u8>> = (0..calls)
        .flat_map(|i| call_messages(i).into_iter().enumerate().collect::<Vec<_>>())
        .map(|(n, sip)| {
            let (src, dst) = if n % 2 == 0 {
                (uac, proxy)
            } else {
                (proxy, uac)
            };
            let packet = HepPacket::sip(src, dst, 1_700_000_000_000_000, 1, sip.as_bytes());
            builder.build(&packet).map(<[u8]>::to_vec)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let to = hep.local_addr();
    let handled = |hep: &HepIngest| hep.snapshot().packets.iter().sum::<u64>();
    let base = handled(&hep);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    // One call at a time, waiting for the collector, so the socket never drops a packet.
    for (k, call) in packets.chunks(13).enumerate() {
        for p in call {
            tx.send_to(p, to)?;
        }
        let want = base + ((k + 1) * 13) as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while handled(&hep) < want {
            anyhow::ensure!(Instant::now() < deadline, "the collector lost packets");
            std::hint::spin_loop();
        }
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    anyhow::ensure!(
        tables.usage().calls == 0,
        "calls left: {:?}",
        tables.usage()
    );
    let n = packets.len() as u64;
    hep.shutdown();
    Ok((allocations, n))
}

fn main() -> anyhow::Result<()> {
    EXCLUDED.with(|e| e.set(true));
    let calls: usize = std::env::args().nth(1).map_or(Ok(2000), |a| a.parse())?;
    println!(
        "{:>8} {:>10} {:>12} {:>14} {:>16}",
        "journal", "packets", "allocations", "allocs/packet", "allocs/call (13)"
    );
    for journal in [false, true] {
        let (allocations, packets) = run(calls, journal)?;
        println!(
            "{:>8} {packets:>10} {allocations:>12} {:>14.2} {:>16.2}",
            if journal { "on" } else { "off" },
            allocations as f64 / packets as f64,
            allocations as f64 * 13.0 / packets as f64,
        );
    }
    Ok(())
}

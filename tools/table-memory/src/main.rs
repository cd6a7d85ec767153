//! Heap bytes per active call and per registered contact in `tollgate-usage`'s tables,
//! measured by counting: a `#[global_allocator]` wrapping the system allocator keeps the
//! number of live bytes requested, and each run reads it before and after filling fresh
//! tables. Allocator overhead (malloc headers, fragmentation) is not included; hash-table
//! slack (load factor, power-of-two growth) and spill vectors are.
//!
//! Exits 1 if a 1 M-entry run exceeds its target (64 bytes per call, 128 per contact).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_events::{CallRef, Event};
use tollgate_usage::{FingerprintKey, MonoTime, Tables, TablesConfig};

/// Counts the live bytes the program has requested.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const ENTRY_COUNT: usize = 1_000_000;
const CALL_BYTES_MAX: f64 = 64.0;
const CONTACT_BYTES_MAX: f64 = 128.0;

const NOW: MonoTime = MonoTime::from_unix_secs(1_750_000_000);

/// A field written into a stack buffer, so building it allocates nothing.
struct Field {
    buf: [u8; 64],
    len: usize,
}

impl Field {
    fn new(args: std::fmt::Arguments<'_>) -> Self {
        let mut buf = [0u8; 64];
        let mut cursor = &mut buf[..];
        let _ = cursor.write_fmt(args);
        let len = 64 - cursor.len();
        Field { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn new_tables() -> Tables {
    Tables::new(TablesConfig::default(), FingerprintKey([0x5a; 32]))
}

/// Live heap bytes of tables holding `calls` active calls (40-byte Call-IDs, tagged).
fn call_bytes(calls: usize) -> usize {
    let before = live_bytes();
    let tables = new_tables();
    for i in 0..calls {
        let id = Field::new(format_args!("{i:016x}f3b2c1d0@pc33.atlanta.example"));
        let call = CallRef {
            call_id: id.bytes(),
            from_tag: Some(b"as5f3a9c21"),
        };
        tables.apply(
            NOW,
            &Event::CallStart {
                call,
                emergency: i % 100 == 0,
            },
        );
    }
    assert_eq!(tables.usage().calls, calls as u64);
    let bytes = live_bytes() - before;
    drop(tables);
    bytes
}

/// Live heap bytes of tables holding `aors × contacts_per_aor` registered contacts.
fn contact_bytes(aors: usize, contacts_per_aor: usize) -> usize {
    let before = live_bytes();
    let tables = new_tables();
    for i in 0..aors {
        let aor = Field::new(format_args!("sip:user{i:08}@example.com"));
        for c in 0..contacts_per_aor {
            let contact = Field::new(format_args!("sip:user{i:08}@192.0.2.{c}:5060"));
            let event = Event::Register {
                aor: aor.bytes(),
                contact: contact.bytes(),
                expires_s: 3600,
            };
            tables.apply(NOW, &event);
        }
    }
    let usage = tables.usage();
    assert_eq!(usage.registered_subscribers, aors as u64);
    assert_eq!(usage.registered_contacts, (aors * contacts_per_aor) as u64);
    let bytes = live_bytes() - before;
    drop(tables);
    bytes
}

fn main() -> ExitCode {
    let shard_count = TablesConfig::default().shard_count;
    println!("live heap bytes per entry, counting allocator, {shard_count} shards");
    println!(
        "{:<26} {:>10} {:>14} {:>8}",
        "table", "entries", "bytes/entry", "target"
    );
    let mut over = false;
    let mut row = |name: &str, entries: usize, bytes: usize, target: Option<f64>| {
        let per_entry = bytes as f64 / entries as f64;
        let target_text = target.map_or(String::from("-"), |t| format!("≤ {t}"));
        println!("{name:<26} {entries:>10} {per_entry:>14.1} {target_text:>8}");
        if target.is_some_and(|t| per_entry > t) {
            over = true;
        }
    };
    row(
        "calls",
        ENTRY_COUNT,
        call_bytes(ENTRY_COUNT),
        Some(CALL_BYTES_MAX),
    );
    row(
        "contacts, 1 per AoR",
        ENTRY_COUNT,
        contact_bytes(ENTRY_COUNT, 1),
        Some(CONTACT_BYTES_MAX),
    );
    let aors = ENTRY_COUNT / 3;
    row(
        "contacts, 3 per AoR",
        aors * 3,
        contact_bytes(aors, 3),
        Some(CONTACT_BYTES_MAX),
    );
    // Hash tables grow by doubling: the cost per entry depends on where a count falls
    // between two growth steps. These rows show the spread around the 1 M target.
    for calls in [600_000, 900_000, 950_000, 1_200_000, 1_500_000, 1_800_000] {
        row("calls (growth spread)", calls, call_bytes(calls), None);
    }
    if over {
        eprintln!("table-memory: a 1 M-entry run exceeds its target");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

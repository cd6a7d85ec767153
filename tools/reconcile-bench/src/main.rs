//! Reconciliation at scale: `Tables` holding 100 k calls and 1 M contacts (by default) are
//! reconciled against a Kamailio 5.6 `dlg.list` and `ul.dump` answer of the same size, with
//! a drift on both sides (calls and contacts the proxy lists that the tables lack, and the
//! other way round), while an ingest thread applies events without pause, each appended to
//! a real journal (`tollgate_ingest::Journal` in a temp dir) under the journal lock first,
//! as the agent's receive loop does.
//!
//! The answers are generated as Kamailio prints them (every member of the recorded answers
//! in `crates/tollgate-reconcile/tests/answers/`, compact JSON as `jsonrpcs` sends it) and
//! streamed chunk by chunk through the real parser (`tollgate_reconcile::parse`) into a
//! `ProxyList`, then applied with the agent's own `reconcile::apply_list`: bounded steps
//! (`--step-entries`, default the agent's), each under the journal lock, its corrections
//! journaled before they are applied. `--step-entries 0` makes each step a whole shard's
//! sweep or mark (what the agent did before steps were bounded); `--no-journal` leaves the
//! journal out (only shard locks). `--write-answers DIR` also writes the answers to files.
//!
//! Printed: bytes and parse time/CPU of each answer, time and CPU of the correction pass,
//! the corrections (checked against the drift: exit 1 if they differ), and the ingest
//! thread's per-event lateness (p50, p99.9, p99.99, max) while idle, while the answers are
//! parsed and while the tables are corrected. The ingest thread keeps a fixed schedule
//! (`--ingest-rate`), and lateness is measured from when each event was due, so a stall
//! shows in every event due during it, not just the one that hit it. The difference between
//! the idle and the correction figures is the stall reconciliation causes.

use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate_events::{CallRef, Event};
use tollgate_ingest::Journal;
use tollgate_reconcile::{Expires, Limits, ListKind, ListSink, ProxyKind};
use tollgate_usage::journal::RecordBuilder;
use tollgate_usage::{FingerprintKey, ProxyList, Scope, Tables, TablesConfig};

const NOW_S: u64 = 1_796_570_700;

struct Options {
    ingest_rate: u64,
    step_entries: usize,
    journal: bool,
    dialogs: usize,
    contacts: usize,
    contacts_per_aor: usize,
    drift_percent: usize,
    write_answers: Option<std::path::PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        ingest_rate: 100_000,
        step_entries: tollgate_usage::STEP_ENTRIES_DEFAULT,
        journal: true,
        dialogs: 100_000,
        contacts: 1_000_000,
        contacts_per_aor: 1,
        drift_percent: 1,
        write_answers: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match arg.as_str() {
            "--dialogs" => o.dialogs = number(value()?)?,
            "--contacts" => o.contacts = number(value()?)?,
            "--contacts-per-aor" => o.contacts_per_aor = number(value()?)?.clamp(1, 16),
            "--drift-percent" => o.drift_percent = number(value()?)?.min(50),
            "--write-answers" => o.write_answers = Some(value()?.into()),
            "--step-entries" => {
                o.step_entries = match number(value()?)? {
                    0 => usize::MAX,
                    n => n,
                }
            }
            "--no-journal" => o.journal = false,
            "--ingest-rate" => o.ingest_rate = number(value()?)?.clamp(1, 10_000_000) as u64,
            "-h" | "--help" => {
                println!(
                    "reconcile-bench [--dialogs N (100000)] [--contacts N (1000000)] \
                     [--contacts-per-aor K (1)] [--drift-percent P (1)] [--step-entries N \
                     (1024; 0: a whole shard per step)] [--no-journal] [--ingest-rate EVENTS_PER_S \
                     (100000)] [--write-answers DIR]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Generates a Kamailio answer entry by entry as it is read: the answer is never in memory
/// whole (1 M contacts are about 700 MB of JSON).
struct Answer {
    kind: ListKind,
    /// Entries `start .. end` are listed.
    start: usize,
    next: usize,
    end: usize,
    contacts_per_aor: usize,
    state: u8, // 0 head, 1 entries, 2 tail, 3 done
    buf: Vec<u8>,
    pos: usize,
    bytes: u64,
}

impl Answer {
    fn new(kind: ListKind, start: usize, end: usize, contacts_per_aor: usize) -> Self {
        Answer {
            kind,
            start,
            next: start,
            end,
            contacts_per_aor,
            state: 0,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            bytes: 0,
        }
    }

    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        let mut s = String::with_capacity(64 * 1024);
        match (self.state, self.kind) {
            (0, ListKind::Dialogs) => {
                s.push_str(r#"{"jsonrpc":"2.0","result":["#);
                self.state = 1;
            }
            (0, ListKind::Contacts) => {
                s.push_str(r#"{"jsonrpc":"2.0","result":{"Domains":[{"Domain":{"Domain":"location","Size":1024,"AoRs":["#);
                self.state = 1;
            }
            (1, kind) => {
                while s.len() < 60 * 1024 && self.next < self.end {
                    let first = self.next == self.start;
                    match kind {
                        ListKind::Dialogs => dialog(&mut s, self.next, first),
                        ListKind::Contacts => aor(&mut s, self.next, self.contacts_per_aor, first),
                    }
                    self.next += 1;
                }
                if self.next >= self.end {
                    self.state = 2;
                }
            }
            (2, ListKind::Dialogs) => {
                s.push_str(r#"],"id":1}"#);
                self.state = 3;
            }
            (2, ListKind::Contacts) => {
                let _ = write!(
                    s,
                    r#"],"Stats":{{"Records":{},"Max-Slots":1}}}}}}]}},"id":1}}"#,
                    self.end
                );
                self.state = 3;
            }
            _ => {}
        }
        self.buf.extend_from_slice(s.as_bytes());
    }
}

impl Read for Answer {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.state == 3 {
                return Ok(0);
            }
            self.refill();
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.bytes += n as u64;
        Ok(n)
    }
}

fn call_id(i: usize) -> String {
    format!("{i}-28339@127.0.0.1")
}

fn from_tag(i: usize) -> String {
    format!("28339SIPpTag{i:03}")
}

fn aor_name(i: usize) -> String {
    format!("user{i}")
}

fn contact_uri(i: usize, k: usize) -> String {
    format!("sip:user{i}@192.0.2.{}:{}", k + 1, 5060 + (i % 1000))
}

/// One dialog, every member `dlg.list` prints (the recorded answer's first dialog).
fn dialog(s: &mut String, i: usize, first: bool) {
    if !first {
        s.push(',');
    }
    let start = NOW_S - 60 + (i % 60) as u64;
    let _ = write!(
        s,
        r#"{{"h_entry":{},"h_id":{},"ref":2,"call-id":"{}","from_uri":"sip:sipp@127.0.0.1:35093","to_uri":"sip:service@127.0.0.1:35060","state":4,"start_ts":{start},"init_ts":{start},"end_ts":0,"duration":{},"timeout":{},"lifetime":43200,"dflags":643,"sflags":0,"iflags":0,"caller":{{"tag":"{}","contact":"sip:sipp@127.0.0.1:35093","cseq":"1","route_set":"","socket":"udp:127.0.0.1:35060"}},"callee":{{"tag":"27592SIPpTag{i:03}","contact":"sip:127.0.0.1:35092;transport=UDP","cseq":"0","route_set":"","socket":"udp:127.0.0.1:35060"}},"profiles":[],"variables":[]}}"#,
        i % 4096,
        i,
        call_id(i),
        NOW_S - start,
        start + 43_200,
        from_tag(i),
    );
}

/// One AoR with its contacts, every member `ul.dump` prints.
fn aor(s: &mut String, i: usize, contacts: usize, first: bool) {
    if !first {
        s.push(',');
    }
    let _ = write!(
        s,
        r#"{{"Info":{{"AoR":"{}","HashID":{},"Contacts":["#,
        aor_name(i),
        (i as u64).wrapping_mul(2_654_435_761) & 0xffff_ffff
    );
    for k in 0..contacts {
        if k > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"Contact":{{"Address":"{}","Expires":3600,"Q":-1,"Call-ID":"{i}-27669@127.0.0.1","CSeq":1,"User-Agent":"tollgate-bench","Received":"[not set]","Path":"[not set]","State":"CS_SYNC","Flags":0,"CFlags":0,"Socket":"udp:127.0.0.1:35060","Methods":4294967295,"Ruid":"uloc-6b157e10-{i:x}-{k}","Instance":"[not set]","Reg-Id":0,"Server-Id":0,"Tcpconn-Id":-1,"Keepalive":0,"Last-Keepalive":{NOW_S},"KA-Roundtrip":0,"Last-Modified":{NOW_S}}}}}"#,
            contact_uri(i, k)
        );
    }
    s.push_str("]}}");
}

struct Fill {
    list: ProxyList,
    now_s: u32,
}

impl ListSink for Fill {
    fn call(&mut self, call: CallRef<'_>, emergency: Option<bool>) {
        self.list.push_call(call, emergency);
    }
    fn contact(&mut self, aor: &[u8], contact: &[u8], expires: Expires) {
        let at = match expires {
            Expires::In(s) => self.now_s.saturating_add(s),
            Expires::Permanent => u32::MAX,
        };
        self.list.push_contact(aor, contact, at);
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Phases the ingest thread records latencies for.
const PHASE_WARMUP: usize = 0;
const PHASE_IDLE: usize = 1;
const PHASE_PARSE: usize = 2;
const PHASE_CORRECT: usize = 3;
const PHASE_NAMES: [&str; 4] = ["warm-up", "idle", "parsing the answers", "correcting"];

/// Applies call starts, stops and registrations of its own (never listed) keys without
/// pause, timing each `Tables::apply`.
fn ingest(
    tables: Arc<Tables>,
    journal: Option<Arc<Journal>>,
    rate: u64,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Vec<Histogram<u64>>, u64) {
    let mut record = RecordBuilder::default();
    let mut text = String::with_capacity(128);
    let ids: Vec<String> = (0..8192).map(|i| format!("ingest-{i}@bench")).collect();
    let aors: Vec<String> = (0..8192).map(|i| format!("ingest-aor-{i}")).collect();
    let mut hists: Vec<Histogram<u64>> = (0..PHASE_NAMES.len())
        .map(|_| Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds"))
        .collect();
    let now = tollgate_ingest::tables_clock();
    let owner = tables.owners().intern(b"ingest");
    let mut n = 0u64;
    let started = Instant::now();
    let period_ns = 1e9 / rate as f64;
    while !stop.load(Ordering::Relaxed) {
        // Event `n` is due at its place in the schedule; lateness is measured from there, so
        // a stall delays (and shows in) every event due during it.
        let due = started + Duration::from_nanos((n as f64 * period_ns) as u64);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            if due - now > Duration::from_millis(1) {
                std::thread::sleep(due - now - Duration::from_micros(500));
            } else {
                std::hint::spin_loop();
            }
        }
        let i = (n as usize / 2) % ids.len();
        let call = CallRef {
            call_id: ids[i].as_bytes(),
            from_tag: None,
        };
        let event = match n % 4 {
            0 => Event::CallStart {
                call,
                emergency: false,
            },
            1 => Event::Register {
                aor: aors[i].as_bytes(),
                contact: b"sip:x@192.0.2.200",
                expires_s: 600,
            },
            2 => Event::CallStop { call },
            _ => Event::Register {
                aor: aors[i].as_bytes(),
                contact: b"sip:x@192.0.2.200",
                expires_s: 0,
            },
        };
        // The datagram as a proxy would send it (what the journal holds).
        text.clear();
        let _ = match n % 4 {
            0 => writeln!(text, "call-start {}", ids[i]),
            1 => writeln!(text, "reg {} sip:x@192.0.2.200 600", aors[i]),
            2 => writeln!(text, "call-stop {}", ids[i]),
            _ => writeln!(text, "reg {} sip:x@192.0.2.200 0", aors[i]),
        };
        let p = phase.load(Ordering::Relaxed);
        match &journal {
            Some(journal) => {
                let mut guard = journal.lock();
                record.begin(now);
                record.push(text.as_bytes());
                guard.append(record.finish());
                tables.apply_from(now, &event, owner);
            }
            None => {
                tables.apply_from(now, &event, owner);
            }
        }
        let ns = due.elapsed().as_nanos() as u64;
        let _ = hists[p].record(ns.max(1));
        n += 1;
    }
    (hists, n)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

fn main() -> ExitCode {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("reconcile-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let aor_count = o.contacts.div_ceil(o.contacts_per_aor);
    let call_drift = o.dialogs * o.drift_percent / 100;
    let aor_drift = aor_count * o.drift_percent / 100;
    if let Some(dir) = &o.write_answers
        && let Err(e) = write_answers(dir, &o, aor_count)
    {
        eprintln!("reconcile-bench: writing answers to {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let journal_dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("reconcile-bench: a temp dir for the journal: {e}");
            return ExitCode::from(2);
        }
    };

    let config = TablesConfig::default();
    let tables = Arc::new(Tables::new(config, FingerprintKey([7; 32])));
    let kam = tables.owners().intern(b"kam1");
    let now = tollgate_ingest::tables_clock();
    // The tables: listed entries `drift ..`, plus `drift` phantoms past the listed range.
    let filled = Instant::now();
    for i in call_drift..o.dialogs + call_drift {
        let (id, tag) = (call_id(i), from_tag(i));
        let call = CallRef {
            call_id: id.as_bytes(),
            from_tag: Some(tag.as_bytes()),
        };
        tables.apply_from(
            now,
            &Event::CallStart {
                call,
                emergency: false,
            },
            kam,
        );
    }
    for i in aor_drift..aor_count + aor_drift {
        let aor = aor_name(i);
        for k in 0..o.contacts_per_aor {
            let contact = contact_uri(i, k);
            tables.apply_from(
                now,
                &Event::Register {
                    aor: aor.as_bytes(),
                    contact: contact.as_bytes(),
                    expires_s: 3600,
                },
                kam,
            );
        }
    }
    let before = tables.usage();
    println!(
        "tables: {} calls, {} contacts of {} AoRs, {} shards (filled in {})",
        before.calls,
        before.registered_contacts,
        before.registered_subscribers,
        tables.shard_count(),
        ms(filled.elapsed())
    );

    let journal = if o.journal {
        match Journal::open(
            journal_dir.path(),
            1,
            tables.fingerprint_key_id(),
            0,
            Duration::from_secs(1),
            // No checkpoints here: unbounded, so every batch is appended.
            u64::MAX,
            [9; 32],
        ) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                eprintln!("reconcile-bench: opening the journal: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let phase = Arc::new(AtomicUsize::new(PHASE_WARMUP));
    let stop = Arc::new(AtomicBool::new(false));
    let ingest_thread = {
        let (tables, journal, phase, stop) = (
            Arc::clone(&tables),
            journal.clone(),
            Arc::clone(&phase),
            Arc::clone(&stop),
        );
        let rate = o.ingest_rate;
        std::thread::spawn(move || ingest(tables, journal, rate, phase, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    phase.store(PHASE_IDLE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));

    // The run, as the agent makes it: notes first, then the answers, then the corrections.
    phase.store(PHASE_PARSE, Ordering::Relaxed);
    let run_started = Instant::now();
    let run = tables.begin_run();
    let mut fill = Fill {
        list: tables.new_list(),
        now_s: now.unix_secs_u32(),
    };
    let mut answers = Vec::new();
    for (kind, end) in [
        (ListKind::Dialogs, o.dialogs),
        (ListKind::Contacts, aor_count),
    ] {
        let started = Instant::now();
        let cpu = thread_cpu();
        let mut answer = std::io::BufReader::with_capacity(
            64 * 1024,
            Answer::new(kind, 0, end, o.contacts_per_aor),
        );
        let parsed = tollgate_reconcile::parse(
            ProxyKind::Kamailio,
            kind,
            &mut answer,
            &mut fill,
            Limits::default(),
        );
        let cpu = thread_cpu().saturating_sub(cpu);
        let bytes = answer.get_ref().bytes;
        match parsed {
            Ok(p) => answers.push((kind, bytes, p.listed, started.elapsed(), cpu)),
            Err(e) => {
                eprintln!("reconcile-bench: the generated {kind:?} answer does not parse: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    phase.store(PHASE_CORRECT, Ordering::Relaxed);
    let started = Instant::now();
    let cpu = thread_cpu();
    let applied = tollgate_agent::reconcile::apply_list(
        &tables,
        journal.as_deref(),
        &run,
        fill.list,
        Scope::Owner(kam),
        true,
        o.step_entries,
    );
    let (corrections, journaled) = (applied.corrections, applied.journaled);
    let correct_cpu = thread_cpu().saturating_sub(cpu);
    let correct_wall = started.elapsed();
    tables.finish_run(run);
    let run_wall = run_started.elapsed();
    phase.store(PHASE_WARMUP, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let Ok((hists, events)) = ingest_thread.join() else {
        eprintln!("reconcile-bench: the ingest thread panicked");
        return ExitCode::FAILURE;
    };

    for (kind, bytes, listed, wall, cpu) in &answers {
        println!(
            "answer {:<8} {:>7.1} MB, {:>8} listed, parsed in {} ({} CPU)",
            match kind {
                ListKind::Dialogs => "dlg.list",
                ListKind::Contacts => "ul.dump",
            },
            *bytes as f64 / 1e6,
            listed,
            ms(*wall),
            ms(*cpu)
        );
    }
    println!(
        "corrections: {} ({} CPU) in {} steps of {} entries (longest {} wall, {} CPU), {}; \
         whole run {}",
        ms(correct_wall),
        ms(correct_cpu),
        applied.steps,
        if o.step_entries == usize::MAX {
            "a whole shard".to_string()
        } else {
            o.step_entries.to_string()
        },
        us(applied.step_max.as_nanos() as u64),
        us(applied.step_max_cpu.as_nanos() as u64),
        match (&journal, journaled) {
            (None, _) => "no journal".to_string(),
            (Some(j), true) => format!(
                "journaled ({} records, {:.1} MB written by both threads)",
                j.stats.records.load(Ordering::Relaxed),
                j.stats.bytes.load(Ordering::Relaxed) as f64 / 1e6
            ),
            (Some(_), false) => "a journal append failed".to_string(),
        },
        ms(run_wall)
    );
    println!(
        "  phantom_call {} missing_call {} phantom_contact {} missing_contact {} shards_skipped {}",
        corrections.phantom_calls,
        corrections.missing_calls,
        corrections.phantom_contacts,
        corrections.missing_contacts,
        corrections.shards_skipped
    );
    println!(
        "ingest: {events} events applied by one thread at {} events/s; lateness of one event \
         (journal append + apply, from when it was due):",
        o.ingest_rate
    );
    for (p, name) in PHASE_NAMES.iter().enumerate().skip(PHASE_IDLE) {
        let h = &hists[p];
        println!(
            "  {:<20} {:>9} events  p50 {:>8}  p99.9 {:>8}  p99.99 {:>8}  max {:>9}",
            name,
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.999)),
            us(h.value_at_quantile(0.9999)),
            us(h.max())
        );
    }
    let contacts_drift = aor_drift * o.contacts_per_aor;
    let expected = (call_drift, call_drift, contacts_drift, contacts_drift);
    let got = (
        corrections.phantom_calls as usize,
        corrections.missing_calls as usize,
        corrections.phantom_contacts as usize,
        corrections.missing_contacts as usize,
    );
    let after = tables.usage();
    // The ingest keys are its own; with its last stop/unregister applied the listed ones
    // remain, so the owned counts equal the answer's.
    if got != expected || corrections.shards_skipped != 0 {
        eprintln!("reconcile-bench: corrections {got:?}, expected {expected:?}");
        return ExitCode::FAILURE;
    }
    println!(
        "after: {} calls, {} contacts (the answer's {} and {}, plus the ingest thread's own)",
        after.calls, after.registered_contacts, o.dialogs, o.contacts
    );
    ExitCode::SUCCESS
}

fn write_answers(dir: &std::path::Path, o: &Options, aor_count: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (kind, end, name) in [
        (ListKind::Dialogs, o.dialogs, "dlg.list.json"),
        (ListKind::Contacts, aor_count, "ul.dump.json"),
    ] {
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
        std::io::copy(
            &mut Answer::new(kind, 0, end, o.contacts_per_aor),
            &mut file,
        )?;
    }
    Ok(())
}

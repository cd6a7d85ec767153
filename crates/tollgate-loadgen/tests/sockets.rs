//! Real sockets: the generator sends to a receiver in the test that decodes every datagram
//! with `tollgate_events::decode`, keeps the agent's books (a `HashMap` model of the call
//! and registration tables) and must end with exactly the report's counts.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use tollgate_events::{Event, Verb};
use tollgate_loadgen::{
    EndReason, Format, LoadgenArgs, LoadgenError, Mode, Progress, Report, Target,
};

/// What an agent would count from the datagrams received.
#[derive(Debug, Default)]
struct Books {
    datagrams: u64,
    bytes: u64,
    verbs: [u64; Verb::COUNT],
    malformed: u64,
    /// (call-id, from-tag) → emergency
    calls: HashMap<(Vec<u8>, Option<Vec<u8>>), bool>,
    contacts: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    subscribers: Option<u64>,
    seqs: Vec<(Vec<u8>, u64)>,
}

impl Books {
    fn take(&mut self, datagram: &[u8]) {
        self.datagrams += 1;
        self.bytes += datagram.len() as u64;
        let decoded = tollgate_events::decode(datagram);
        if let Some(seq) = decoded.seq {
            self.seqs.push((seq.sender.to_vec(), seq.n));
        }
        for event in decoded.events {
            let Ok(event) = event else {
                self.malformed += 1;
                continue;
            };
            self.verbs[event.verb() as usize] += 1;
            match event {
                Event::CallStart { call, emergency } => {
                    let key = (call.call_id.to_vec(), call.from_tag.map(<[u8]>::to_vec));
                    assert!(
                        self.calls.insert(key, emergency).is_none(),
                        "duplicate start"
                    );
                }
                Event::CallStop { call } => {
                    let key = (call.call_id.to_vec(), call.from_tag.map(<[u8]>::to_vec));
                    self.calls.remove(&key);
                }
                Event::CallRefresh { call } => {
                    let key = (call.call_id.to_vec(), call.from_tag.map(<[u8]>::to_vec));
                    assert!(
                        self.calls.contains_key(&key),
                        "refresh of a call that is not up"
                    );
                }
                Event::Register {
                    aor,
                    contact,
                    expires_s,
                } => {
                    let contacts = self.contacts.entry(aor.to_vec()).or_default();
                    if expires_s > 0 {
                        contacts.insert(contact.to_vec());
                    } else {
                        contacts.remove(contact);
                    }
                }
                Event::Subscribers { count } => self.subscribers = Some(count),
                Event::Admit { .. } => panic!("loadgen sends no admit"),
                Event::Sync(_) => panic!("loadgen sends no sync lines"),
            }
        }
    }

    fn check(&self, report: &Report) {
        assert_eq!(self.malformed, 0);
        assert_eq!(self.datagrams, report.datagrams_sent, "datagrams");
        assert_eq!(self.bytes, report.bytes_sent, "bytes");
        for verb in Verb::ALL {
            assert_eq!(
                self.verbs[verb as usize],
                report.events_by_verb.get(verb),
                "{verb:?}"
            );
        }
        assert_eq!(self.verbs.iter().sum::<u64>(), report.events_sent);
        assert_eq!(self.verbs[Verb::CallStart as usize], report.calls_started);
        assert_eq!(self.verbs[Verb::CallStop as usize], report.calls_stopped);
        assert_eq!(
            self.calls.len() as u64,
            report.expected_active_calls,
            "active calls"
        );
        let emergency = self.calls.values().filter(|e| **e).count() as u64;
        assert_eq!(
            emergency, report.expected_emergency_calls,
            "emergency calls"
        );
        let aors = self.contacts.values().filter(|c| !c.is_empty()).count() as u64;
        assert_eq!(
            aors, report.expected_registered_subscribers,
            "registered AoRs"
        );
        let contacts = self.contacts.values().map(|c| c.len() as u64).sum::<u64>();
        assert_eq!(
            contacts, report.expected_registered_contacts,
            "registered contacts"
        );
        assert_eq!(self.subscribers, report.expected_provisioned_subscribers);
    }

    /// Every datagram carried a sequence header from one sender, numbered 1, 2, 3, …
    fn check_seq(&self, sender: &[u8]) {
        assert_eq!(self.seqs.len() as u64, self.datagrams);
        for (i, (s, n)) in self.seqs.iter().enumerate() {
            assert_eq!(s, sender);
            assert_eq!(*n, i as u64 + 1);
        }
    }
}

/// Receives on a background thread until `done` is raised and the socket has been quiet
/// for a moment.
fn receive<F>(mut recv: F) -> (Arc<AtomicBool>, thread::JoinHandle<Books>)
where
    F: FnMut(&mut [u8]) -> io::Result<usize> + Send + 'static,
{
    let done = Arc::new(AtomicBool::new(false));
    let done_rx = Arc::clone(&done);
    let handle = thread::spawn(move || {
        let mut books = Books::default();
        let mut buf = vec![0u8; 65_536];
        loop {
            match recv(&mut buf) {
                Ok(len) => books.take(&buf[..len]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if done_rx.load(Relaxed) {
                        return books;
                    }
                }
                Err(e) => panic!("receive: {e}"),
            }
        }
    });
    (done, handle)
}

/// A receive buffer of 8 MiB, so a receiver thread that the scheduler holds back for a
/// moment loses nothing (SO_RCVBUFFORCE when allowed, else SO_RCVBUF up to rmem_max).
fn grow_receive_buffer(socket: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 8 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket descriptor and a c_int option value of the right length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn udp_receiver() -> (Target, Arc<AtomicBool>, thread::JoinHandle<Books>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    grow_receive_buffer(&socket);
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = Target::Udp(socket.local_addr().unwrap());
    let (done, handle) = receive(move |buf| socket.recv(buf));
    (target, done, handle)
}

fn unix_receiver(dir: &tempfile::TempDir) -> (Target, Arc<AtomicBool>, thread::JoinHandle<Books>) {
    let path = dir.path().join("events.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (done, handle) = receive(move |buf| socket.recv(buf));
    (Target::Unix(path), done, handle)
}

fn run_against(
    args: &LoadgenArgs,
    done: Arc<AtomicBool>,
    handle: thread::JoinHandle<Books>,
) -> (Report, Books) {
    let report = tollgate_loadgen::run(args, &AtomicBool::new(false)).unwrap();
    done.store(true, Relaxed);
    let books = handle.join().unwrap();
    (report, books)
}

fn erlang_args(target: Target) -> LoadgenArgs {
    LoadgenArgs {
        target,
        mode: Mode::Erlang,
        cps: 1000.0,
        hold: 0.3,
        emergency_pct: 10.0,
        call_refresh: 0.2,
        registrations: 300,
        contacts_per_aor: 2,
        reg_expires: 2,
        subscribers: Some(5000),
        batch: 4,
        duration: 2.5,
        seed: Some(42),
        sender_id: Some("lg-test".into()),
        ..LoadgenArgs::default()
    }
}

#[test]
fn erlang_over_udp_text_matches_the_report() {
    let (target, done, handle) = udp_receiver();
    let args = erlang_args(target);
    let (report, books) = run_against(&args, done, handle);
    books.check(&report);
    books.check_seq(b"lg-test");
    assert_eq!(report.ended_by, EndReason::Duration);
    assert!(
        (2.4..4.0).contains(&report.elapsed_s),
        "{}",
        report.elapsed_s
    );
    // ~2500 arrivals; refreshes, churn and the periodic subscriber count all happened.
    assert!(
        (2000..3000).contains(&report.calls_started),
        "{}",
        report.calls_started
    );
    assert!(report.expected_active_calls > 100 && report.expected_emergency_calls > 0);
    assert!(report.events_by_verb.call_refresh > 500);
    // 600 initial bindings, all refreshed (or removed) after ~1 s, some again after ~2 s.
    let reg = report.events_by_verb.reg;
    assert!((1200..2000).contains(&reg), "{reg}");
    assert_eq!(report.events_by_verb.subscribers, 1);
    // A few AoRs are offline (churn) at any time.
    let aors = report.expected_registered_subscribers;
    assert!((270..=300).contains(&aors), "{aors}");
    assert_eq!(report.datagrams_dropped, 0);
}

#[test]
fn erlang_over_udp_binary_with_stop_at_end_leaves_no_call_up() {
    let (target, done, handle) = udp_receiver();
    let args = LoadgenArgs {
        format: Format::Binary,
        stop_at_end: true,
        duration: 1.0,
        ..erlang_args(target)
    };
    let (report, books) = run_against(&args, done, handle);
    books.check(&report);
    books.check_seq(&tollgate_loadgen::binary_sender(b"lg-test"));
    assert_eq!(report.expected_active_calls, 0);
    assert_eq!(report.calls_started, report.calls_stopped);
    assert!(report.calls_started > 500);
}

#[test]
fn flood_over_unix_binary_matches_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (target, done, handle) = unix_receiver(&dir);
    let args = LoadgenArgs {
        target,
        format: Format::Binary,
        mode: Mode::Flood,
        flood_window: 100,
        emergency_pct: 5.0,
        batch: 32,
        max_datagram_bytes: 8000,
        max_events: Some(60_000),
        duration: 30.0,
        seed: Some(7),
        sender_id: Some("flood".into()),
        ..LoadgenArgs::default()
    };
    let (report, books) = run_against(&args, done, handle);
    books.check(&report);
    books.check_seq(b"flood\0\0\0");
    assert_eq!(report.ended_by, EndReason::MaxEvents);
    assert_eq!(report.events_sent, 60_000);
    assert_eq!(report.expected_active_calls, 100);
    assert_eq!(report.calls_started, 30_050);
    assert_eq!(report.datagrams_sent, 60_000_u64.div_ceil(32));
}

#[test]
fn flood_over_unix_text_without_seq_stop_at_end() {
    let dir = tempfile::tempdir().unwrap();
    let (target, done, handle) = unix_receiver(&dir);
    let args = LoadgenArgs {
        target,
        mode: Mode::Flood,
        flood_window: 10,
        batch: 1000,
        max_datagram_bytes: 1400,
        max_events: Some(20_000),
        no_seq: true,
        stop_at_end: true,
        ..LoadgenArgs::default()
    };
    let (report, books) = run_against(&args, done, handle);
    books.check(&report);
    assert!(books.seqs.is_empty());
    assert_eq!(report.expected_active_calls, 0);
    assert_eq!(report.events_sent, 20_000 + 10);
    // Batches are cut by size, not count.
    assert!(report.bytes_sent / report.datagrams_sent > 1000);
}

#[test]
fn flood_rate_cap_is_respected_over_udp() {
    let (target, done, handle) = udp_receiver();
    let args = LoadgenArgs {
        target,
        mode: Mode::Flood,
        rate: Some(2000.0),
        duration: 0.5,
        ..LoadgenArgs::default()
    };
    let (report, books) = run_against(&args, done, handle);
    books.check(&report);
    assert!(
        (900..=1010).contains(&report.datagrams_sent),
        "{}",
        report.datagrams_sent
    );
}

#[test]
fn stop_flag_ends_an_unbounded_run_and_progress_is_live() {
    let (target, done, handle) = udp_receiver();
    let args = LoadgenArgs {
        target,
        duration: 0.0,
        cps: 500.0,
        ..LoadgenArgs::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let runner = {
        let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
        thread::spawn(move || tollgate_loadgen::run_with_progress(&args, &stop, &progress))
    };
    // Progress is visible while it runs: poll for it instead of sleeping a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut live = progress.snapshot();
    while live.events_sent <= 50 {
        assert!(std::time::Instant::now() < deadline, "{live:?}");
        thread::sleep(Duration::from_millis(20));
        live = progress.snapshot();
    }
    stop.store(true, Relaxed);
    let report = runner.join().unwrap().unwrap();
    done.store(true, Relaxed);
    let books = handle.join().unwrap();
    books.check(&report);
    assert_eq!(report.ended_by, EndReason::Stopped);
    assert!(report.elapsed_s < 1.0);
    assert_eq!(progress.snapshot().events_sent, report.events_sent);
    assert_eq!(
        progress.snapshot().active_calls,
        report.expected_active_calls
    );
}

#[test]
fn udp_with_nobody_listening_counts_refusals_and_goes_on() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = LoadgenArgs {
        target: Target::Udp(port),
        cps: 200.0,
        duration: 0.3,
        ..LoadgenArgs::default()
    };
    let report = tollgate_loadgen::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.send_refused > 0, "{report:?}");
    // A refusal reports an earlier datagram's ICMP error; the refused one is sent again.
    assert_eq!(report.ended_by, EndReason::Duration);
    assert!(report.datagrams_sent > 20);
}

#[test]
fn unix_target_without_a_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let args = LoadgenArgs {
        target: Target::Unix(dir.path().join("missing.sock")),
        ..LoadgenArgs::default()
    };
    let error = tollgate_loadgen::run(&args, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(error, LoadgenError::Connect { .. }), "{error}");
    assert!(
        error.to_string().starts_with("cannot connect to unix:"),
        "{error}"
    );
}

#[test]
fn report_serializes_to_one_json_object_and_prints_a_summary() {
    let (target, done, handle) = udp_receiver();
    let args = LoadgenArgs {
        duration: 0.2,
        ..erlang_args(target)
    };
    let (report, _) = run_against(&args, done, handle);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "erlang");
    assert_eq!(json["format"], "text");
    assert_eq!(json["ended_by"], "duration");
    assert_eq!(json["expected_active_calls"], report.expected_active_calls);
    assert_eq!(json["events_by_verb"]["call_start"], report.calls_started);
    let summary = report.to_string();
    assert!(summary.contains("expected"), "{summary}");
    assert!(summary.contains(&format!("{} active calls", report.expected_active_calls)));
}

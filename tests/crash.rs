//! Crash-exactness, sled style: real agent processes killed with `kill -9` at random seeded
//! moments under a live stream of starts, stops, registrations and unregistrations, and
//! the loud state resets (issue 11).
//!
//! **How the sender knows what the agent applied.** Every datagram the sender sends ends
//! with an `admit` query. The agent answers a datagram's `admit` only after it appended the
//! whole datagram to its journal and applied the lines before it (one datagram is decoded
//! and applied in order), so a reply proves the datagram's changes are applied *and*
//! journalled. The sender keeps one datagram in flight and adds it to its truth only when
//! the reply comes. When a kill lands while a datagram is in flight, that datagram was
//! journalled whole or not at all (a record is one `write(2)`, applied only after it
//! returned; a cut record fails its checksum and is dropped at replay), so after the
//! restart the counts must equal the truth without it or with it — never anything else —
//! and each datagram is homogeneous (only starts, only stops, …) so the two differ. The
//! sender then sends the in-flight datagram again (every event is idempotent) and, once it
//! is acknowledged, the counts must equal the truth with it exactly.
//!
//! `TOLLGATE_CRASH_CYCLES` (default 50) and `TOLLGATE_CRASH_SEED` (default: from the clock,
//! printed) tune the run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Agent, http, write_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the agent must count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Truth {
    calls: BTreeSet<u64>,
    /// AoR → contacts.
    aors: BTreeMap<u64, BTreeSet<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    calls: u64,
    registered_subscribers: u64,
    registered_contacts: u64,
}

impl Truth {
    fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.len() as u64,
            registered_subscribers: self.aors.values().filter(|c| !c.is_empty()).count() as u64,
            registered_contacts: self.aors.values().map(|c| c.len() as u64).sum(),
        }
    }
}

/// One datagram's changes (homogeneous: one kind per datagram).
#[derive(Debug, Clone)]
enum Change {
    Start(Vec<u64>),
    Stop(Vec<u64>),
    Register(Vec<(u64, u64)>),
    Unregister(Vec<(u64, u64)>),
}

impl Change {
    fn apply(&self, t: &mut Truth) {
        match self {
            Change::Start(ids) => t.calls.extend(ids),
            Change::Stop(ids) => ids.iter().for_each(|id| {
                t.calls.remove(id);
            }),
            Change::Register(b) => b.iter().for_each(|(aor, c)| {
                t.aors.entry(*aor).or_default().insert(*c);
            }),
            Change::Unregister(b) => b.iter().for_each(|(aor, c)| {
                if let Some(set) = t.aors.get_mut(aor) {
                    set.remove(c);
                    if set.is_empty() {
                        t.aors.remove(aor);
                    }
                }
            }),
        }
    }

    fn datagram(&self, probe: u64) -> Vec<u8> {
        let mut out = String::new();
        match self {
            Change::Start(ids) => ids
                .iter()
                .for_each(|id| out.push_str(&format!("call-start crash-{id}@h tag=t{id}\n"))),
            Change::Stop(ids) => ids
                .iter()
                .for_each(|id| out.push_str(&format!("call-stop crash-{id}@h tag=t{id}\n"))),
            Change::Register(b) => b.iter().for_each(|(aor, c)| {
                out.push_str(&format!("reg sip:u{aor}@h sip:u{aor}-{c}@10.0.0.1 3600\n"))
            }),
            Change::Unregister(b) => b.iter().for_each(|(aor, c)| {
                out.push_str(&format!("reg sip:u{aor}@h sip:u{aor}-{c}@10.0.0.1 0\n"))
            }),
        }
        out.push_str(&format!("admit probe-{probe}\n"));
        out.into_bytes()
    }
}

/// A random homogeneous change that is a real change against `t`.
fn next_change(rng: &mut StdRng, t: &Truth, next_id: &mut u64) -> Change {
    let n = rng.gen_range(1..=6);
    let roll = rng.gen_range(0..100);
    if roll < 30 && t.calls.len() >= n {
        let ids: Vec<u64> = t.calls.iter().copied().collect();
        let start = rng.gen_range(0..=ids.len() - n);
        return Change::Stop(ids[start..start + n].to_vec());
    }
    if roll >= 85 && !t.aors.is_empty() {
        let bindings: Vec<(u64, u64)> = t
            .aors
            .iter()
            .flat_map(|(a, cs)| cs.iter().map(move |c| (*a, *c)))
            .collect();
        let k = n.min(bindings.len());
        let start = rng.gen_range(0..=bindings.len() - k);
        return Change::Unregister(bindings[start..start + k].to_vec());
    }
    if roll >= 65 {
        let b = (0..n)
            .map(|_| {
                *next_id += 1;
                // A few AoRs get a second contact.
                let aor = if rng.gen_bool(0.3) && !t.aors.is_empty() {
                    *t.aors.keys().nth(rng.gen_range(0..t.aors.len())).unwrap()
                } else {
                    *next_id
                };
                (aor, *next_id)
            })
            .collect();
        return Change::Register(b);
    }
    Change::Start(
        (0..n)
            .map(|_| {
                *next_id += 1;
                *next_id
            })
            .collect(),
    )
}

/// Sends `datagram` until its `admit` reply arrives (true) or `stop` is set (false).
fn send_acked(socket: &UdpSocket, to: SocketAddr, datagram: &[u8], stop: &AtomicBool) -> bool {
    let mut buf = [0u8; 512];
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if socket.send_to(datagram, to).is_err() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match socket.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n].starts_with(b"ok") || buf[..n].starts_with(b"deny") => {
                return true;
            }
            _ => {}
        }
    }
}

fn counts_of(agent: &Agent) -> Counts {
    let u = agent.usage();
    Counts {
        calls: u["calls"].as_u64().unwrap(),
        registered_subscribers: u["registered_subscribers"].as_u64().unwrap(),
        registered_contacts: u["registered_contacts"].as_u64().unwrap(),
    }
}

fn seed() -> u64 {
    std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[test]
fn kill_9_at_random_moments_loses_nothing_applied() {
    let seed = seed();
    let cycles: usize = std::env::var("TOLLGATE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    eprintln!("crash harness: seed {seed}, {cycles} cycles (TOLLGATE_CRASH_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Frequent snapshots, so kills land before, during and after checkpoints.
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 1\n");
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut truth = Truth::default();
    let mut next_id = 0u64;
    let mut probe = 0u64;
    let mut ambiguous_seen = 0;
    let started = Instant::now();
    let mut agent = Agent::start(&state, &config);
    for cycle in 0..cycles {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "crash harness over its time bound at cycle {cycle}"
        );
        let to = agent.udp();
        // The stream: one acknowledged datagram at a time until the kill.
        let kill_after = Duration::from_millis(rng.gen_range(5..400));
        let stop = Arc::new(AtomicBool::new(false));
        let killer = {
            let stop = Arc::clone(&stop);
            let pid = agent.child.id() as i32;
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                stop.store(true, Ordering::Relaxed);
            })
        };
        let mut in_flight = None;
        while !stop.load(Ordering::Relaxed) {
            let change = next_change(&mut rng, &truth, &mut next_id);
            probe += 1;
            let datagram = change.datagram(probe);
            if send_acked(&socket, to, &datagram, &stop) {
                change.apply(&mut truth);
            } else {
                in_flight = Some((change, datagram));
            }
        }
        killer.join().unwrap();
        let _ = agent.child.wait();
        drop(agent);

        agent = Agent::start(&state, &config);
        let without = truth.counts();
        let got = counts_of(&agent);
        match &in_flight {
            None => assert_eq!(got, without, "cycle {cycle} (seed {seed})"),
            Some((change, datagram)) => {
                let mut with = truth.clone();
                change.apply(&mut with);
                assert!(
                    got == without || got == with.counts(),
                    "cycle {cycle} (seed {seed}): counts {got:?} are neither {without:?} (in-flight datagram not journalled) nor {:?} (journalled)",
                    with.counts()
                );
                ambiguous_seen += usize::from(got == with.counts());
                // Idempotent: send it again, then the truth includes it for sure.
                let never = AtomicBool::new(false);
                assert!(send_acked(&socket, agent.udp(), datagram, &never));
                truth = with;
                assert_eq!(
                    counts_of(&agent),
                    truth.counts(),
                    "cycle {cycle} (seed {seed})"
                );
            }
        }
    }
    let (_, body) = agent.get("/healthz");
    assert_eq!(body, "ok\n", "no state reset in a crash-only run");
    eprintln!(
        "crash harness: {cycles} kills, final {:?}, {ambiguous_seen} in-flight datagrams found journalled, {:.1} s",
        truth.counts(),
        started.elapsed().as_secs_f64()
    );
    assert!(truth.counts().calls > 0 || truth.counts().registered_contacts > 0);
}

/// Starts an agent, applies some acknowledged traffic, kills it; returns the truth.
fn traffic_then_kill(state: &Path, config: &Path, seed: u64) -> Truth {
    let agent = Agent::start(state, config);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut truth, mut next_id) = (Truth::default(), 0);
    let never = AtomicBool::new(false);
    for probe in 0..200 {
        let change = next_change(&mut rng, &truth, &mut next_id);
        assert!(send_acked(
            &socket,
            agent.udp(),
            &change.datagram(probe),
            &never
        ));
        change.apply(&mut truth);
    }
    assert_eq!(counts_of(&agent), truth.counts());
    agent.kill9();
    truth
}

fn journal_segments(state: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(state.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_torn_journal_tail_is_dropped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // No periodic snapshot during the test: everything is in the journal.
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 3600\n");
    let truth = traffic_then_kill(&state, &config, 7);
    // A record cut short: a header claiming 4 KiB of body, and 10 bytes of it.
    let last = journal_segments(&state).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&4096u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 18]);
    std::fs::write(&last, bytes).unwrap();
    let agent = Agent::start(&state, &config);
    assert_eq!(counts_of(&agent), truth.counts());
    let (_, health) = agent.get("/healthz");
    assert_eq!(health, "ok\n", "a torn tail is not a state reset");
    let (status, err) = agent.stop();
    assert!(status.success());
    assert!(err.contains("torn"), "{err}");
}

#[test]
fn a_snapshot_deleted_by_hand_is_a_loud_reset_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = tollgate_agent::auth::hash_password("adminpw").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[state]\nsnapshot_interval_s = 1\n\n[[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n"
        ),
    );
    let truth = traffic_then_kill(&state, &config, 11);
    assert!(truth.counts().calls > 0);
    std::fs::remove_file(state.join("usage.snapshot")).unwrap();
    let agent = Agent::start(&state, &config);
    let (_, health) = agent.get("/healthz");
    assert!(
        health.starts_with("ok\nstate reset: snapshot_missing"),
        "{health}"
    );
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"snapshot_missing\"}"),
        Some(1.0)
    );
    let (status, _) = http(
        agent.rt.admin,
        "POST",
        "/api/v1/state/resets/acknowledge",
        None,
        b"",
    );
    assert_eq!(status, 401, "acknowledging needs an admin");
    // Still pending after a restart.
    agent.stop();
    let agent = Agent::start(&state, &config);
    let (_, health) = agent.get("/healthz");
    assert!(health.contains("snapshot_missing"), "{health}");
    let (status, body) = http(
        agent.rt.admin,
        "POST",
        "/api/v1/state/resets/acknowledge",
        Some(("ops", "adminpw")),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"acknowledged\":1"), "{body}");
    assert_eq!(agent.get("/healthz").1, "ok\n");
    // The counter counts this process's resets; the restart saw a snapshot again.
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"snapshot_missing\"}"),
        Some(0.0)
    );
}

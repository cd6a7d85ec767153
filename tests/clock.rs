//! Expiry runs on the monotonic tables clock: stepping the agent's wall clock an hour
//! forward or back expires nothing early and nothing late (issue 11 item 5).
//!
//! The agent's wall clock is stepped for real with libfaketime (`LD_PRELOAD`, an offset read
//! from a file on every call, the monotonic clock left alone). Without the library the test
//! says so loudly and passes only when `TOLLGATE_REQUIRE_FAKETIME` is unset.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Agent;

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn wall_clock_steps_of_an_hour_change_no_expiry() {
    if !Path::new(FAKETIME_LIB).exists() {
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_FAKETIME").is_none(),
            "libfaketime is required ({FAKETIME_LIB}; apt-get install faketime)"
        );
        eprintln!(
            "SKIPPED LOUDLY: {FAKETIME_LIB} not installed; the wall-clock step test did not run"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime.rc");
    std::fs::write(&offset, "+0\n").unwrap();
    // SAFETY: the only test in this binary sets these before it starts any thread of its
    // own; the variables only matter to the agent it spawns.
    unsafe {
        std::env::set_var("LD_PRELOAD", FAKETIME_LIB);
        std::env::set_var("FAKETIME_TIMESTAMP_FILE", &offset);
        std::env::set_var("FAKETIME_NO_CACHE", "1");
        std::env::set_var("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[general]\nnode_id = \"clock-node\"\n\n[ingest]\nudp = \"127.0.0.1:0\"\nsweep_interval_ms = 100\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[calls]\nmax_call_duration_s = 12\n",
    )
    .unwrap();
    let agent = Agent::start(&dir.path().join("state"), &config);
    let sent = Instant::now();
    agent.send_events(b"call-start clock-1\nreg sip:a@h sip:a@10.0.0.1 10\n");
    agent.wait_usage("the call and the contact", |u| {
        u["calls"] == 1 && u["registered_contacts"] == 1
    });

    // An hour forward: on a wall clock both would expire at the next sweep.
    std::fs::write(&offset, "+1h\n").unwrap();
    // The agent's own report shows the stepped wall clock: the step took effect.
    let stepped = || {
        let shown_ms = agent.usage()["timestamp_ms"].as_u64().unwrap();
        let real_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        shown_ms > real_ms + 3_000_000
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stepped() {
        assert!(
            Instant::now() < deadline,
            "libfaketime did not step the agent's clock: {}",
            agent.usage()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A marker that expires a second after the step: once the sweeper has removed it, a
    // full sweep ran after the step, and that sweep would have expired the call and the
    // contact too had expiry followed the wall clock.
    agent.send_events(b"reg sip:marker@h sip:marker@10.0.0.2 1\n");
    agent.wait_usage("the marker", |u| u["registered_subscribers"] == 2);
    let u = agent.wait_usage("a sweep after the step (the marker gone)", |u| {
        u["registered_subscribers"] != 2
    });
    // The contact's own expiry is 10 s after `sent` (less the tables' one-second
    // resolution): only before that can "still there" mean "not expired by the step".
    if sent.elapsed() < Duration::from_secs(9) {
        assert_eq!(
            u["calls"], 1,
            "a wall step forward expired a call early: {u}"
        );
        assert_eq!(
            (&u["registered_subscribers"], &u["registered_contacts"]),
            (&1.into(), &1.into()),
            "a wall step forward expired a contact early: {u}"
        );
    } else {
        common::skipped(
            "the wall-step-forward check",
            "the machine took 9 s to get there, past the contact's own expiry",
            "run it on a less loaded machine",
        );
    }

    // An hour back (from real time): on a wall clock nothing would expire for an hour.
    std::fs::write(&offset, "-1h\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut contact_gone, mut call_gone) = (None, None);
    while contact_gone.is_none() || call_gone.is_none() {
        assert!(
            Instant::now() < deadline,
            "a wall step back delayed expiry: {:#}",
            agent.usage()
        );
        let u = agent.usage();
        if contact_gone.is_none() && u["registered_contacts"] == 0 {
            contact_gone = Some(sent.elapsed());
        }
        if call_gone.is_none() && u["calls"] == 0 {
            call_gone = Some(sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Never early: the expiry after the event on the monotonic clock, less the tables'
    // one-second resolution (times are whole seconds, so an entry made at x.9 s ends up to
    // a second sooner). A step of an hour could not hide in that second.
    assert!(
        contact_gone.unwrap() >= Duration::from_secs(9),
        "{contact_gone:?}"
    );
    assert!(
        call_gone.unwrap() >= Duration::from_secs(11),
        "{call_gone:?}"
    );
}

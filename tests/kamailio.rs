//! End to end with the real Kamailio 5.6 and SIPp (Debian packages `kamailio`,
//! `sip-tester`): Kamailio proxies calls between SIPp callers and callees and keeps
//! registrations, runs `tests/kamailio/kamailio.cfg`, and tells two real agents about them:
//!
//! - agent **A** by the authoritative path: dialog event routes and the registrar send
//!   text-protocol lines with corex `send_data()` to its UDP event socket;
//! - agent **B** by mirroring: siptrace sends every SIP message as HEPv3 to its HEP socket.
//!
//! During and after the load both agents must count what Kamailio itself counts
//! (`kamcmd dlg.stats_active`, `kamcmd stats.get_statistics usrloc:`), with one documented
//! exception: a call that ends by Kamailio's dialog timeout (no BYE on the wire) ends on A
//! with Kamailio, and on B only at its `max_call_duration`.
//!
//! Without `kamailio`, `kamcmd` or `sipp` the test says why and passes, unless
//! `TOLLGATE_SIP_TESTS=1` (CI sets it), where it fails. Every wait is bounded.

mod common;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, write_config};

/// Kamailio's dialog timeout in the test: the call without a BYE ends there.
const DIALOG_TIMEOUT_S: u64 = 8;
/// Agent B's `max_call_duration_s`: the HEP path ends the call without a BYE here.
const HEP_MAX_CALL_DURATION_S: u64 = 12;
/// Holding time of the ordinary calls (shorter than the dialog timeout).
const HOLD_MS: u64 = 3000;
const CALLS: u32 = 20;
const BUSY_CALLS: u32 = 5;
const CANCELLED_CALLS: u32 = 5;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kamailio")
        .join(name)
}

/// The external programs, or why the test cannot run.
struct Tools {
    kamailio: PathBuf,
    kamcmd: PathBuf,
    sipp: PathBuf,
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn tools() -> Option<Tools> {
    let found = (find("kamailio"), find("kamcmd"), find("sipp"));
    if let (Some(kamailio), Some(kamcmd), Some(sipp)) = found {
        return Some(Tools {
            kamailio,
            kamcmd,
            sipp,
        });
    }
    let why = "kamailio, kamcmd and sipp are needed (apt-get install kamailio sip-tester)";
    if std::env::var("TOLLGATE_SIP_TESTS").as_deref() == Ok("1") {
        panic!("TOLLGATE_SIP_TESTS=1 but {why}");
    }
    common::skipped(
        "the Kamailio end-to-end test",
        why,
        "install kamailio and sipp (sip-tester); TOLLGATE_SIP_TESTS=1 makes it fail instead of skipping",
    );
    None
}

/// A free UDP port on loopback (bound, read, released).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Proc {
        let log = File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    /// Waits for the process to exit by itself (bounded) and returns its exit code.
    fn wait(mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What Kamailio counts, read with kamcmd over its binrpc control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KamCounts {
    /// Dialogs answered (`answering` + `ongoing`): the calls.
    calls: u64,
    /// Every dialog, early ones included.
    dialogs: u64,
    /// `usrloc:registered_users`: AoRs with contacts.
    users: u64,
    /// `usrloc:location_contacts`.
    contacts: u64,
}

/// What an agent counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AgentCounts {
    calls: u64,
    emergency_calls: u64,
    users: u64,
    contacts: u64,
}

fn agent_counts(agent: &Agent) -> AgentCounts {
    let u = agent.usage();
    let n = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("no {k} in {u}"));
    AgentCounts {
        calls: n("calls"),
        emergency_calls: n("emergency_calls"),
        users: n("registered_subscribers"),
        contacts: n("registered_contacts"),
    }
}

struct Kamailio {
    kamcmd: PathBuf,
    ctl: String,
    sip: SocketAddr,
    _proc: Proc,
}

impl Kamailio {
    fn kamcmd(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.kamcmd)
            .arg("-s")
            .arg(&self.ctl)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn counts(&self) -> KamCounts {
        let dialogs = self.kamcmd(&["dlg.stats_active"]).unwrap();
        let usrloc = self.kamcmd(&["stats.get_statistics", "usrloc:"]).unwrap();
        // `answering: 0` lines in the first, `usrloc:location_contacts = 3` in the second.
        let field = |text: &str, name: &str, sep: char| -> u64 {
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.trim().split_once(sep)?;
                    (k.trim() == name).then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        KamCounts {
            calls: field(&dialogs, "answering", ':') + field(&dialogs, "ongoing", ':'),
            dialogs: field(&dialogs, "all", ':'),
            users: field(&usrloc, "usrloc:registered_users", '='),
            contacts: field(&usrloc, "usrloc:location_contacts", '='),
        }
    }
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `within` with its last
/// error.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        let last = match check() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}: {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HEP address the agent reports in `agent.json`.
fn hep_addr(agent: &Agent) -> SocketAddr {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_dir.join("agent.json")).unwrap())
            .unwrap();
    json["hep"]
        .as_str()
        .unwrap_or_else(|| panic!("agent.json has no \"hep\" address: {json}"))
        .parse()
        .unwrap()
}

struct Scene {
    dir: tempfile::TempDir,
    tools: Tools,
    kam: Kamailio,
    events: Agent,
    hep: Agent,
    _callees: Vec<Proc>,
}

impl Scene {
    fn start(tools: Tools) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let events = {
            let state = dir.path().join("agent-events");
            std::fs::create_dir_all(&state).unwrap();
            let config = write_config(&state, "");
            Agent::start(&state, &config)
        };
        let hep = {
            let state = dir.path().join("agent-hep");
            std::fs::create_dir_all(&state).unwrap();
            let config = write_config(
                &state,
                &format!(
                    "[hep]\nlisten = \"127.0.0.1:0\"\n\n[calls]\nmax_call_duration_s = {HEP_MAX_CALL_DURATION_S}\n"
                ),
            );
            Agent::start(&state, &config)
        };
        let hep_addr = hep_addr(&hep);

        let run = dir.path().join("kamailio");
        std::fs::create_dir_all(&run).unwrap();
        let ctl = format!("unix:{}", run.join("ctl").display());
        let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let callee_ports = [(); 4].map(|_| free_udp_port());
        let define = |name: &str, value: String| format!("{name}={value}");
        let mut kamailio = Command::new(&tools.kamailio);
        kamailio
            .args(["-DD", "-E", "-f"])
            .arg(scenario("kamailio.cfg"))
            .arg("-Y")
            .arg(&run)
            .arg("-w")
            .arg(&run)
            .args(["-l", &format!("udp:{sip}"), "-m", "64", "-M", "8"])
            .args(["-A", &define("CTL_SOCKET", format!("\"{ctl}\""))])
            .args([
                "-A",
                &define("TOLLGATE_EVENTS", format!("\"sip:{}\"", events.udp())),
            ])
            .args(["-A", &define("TOLLGATE_HEP", format!("\"sip:{hep_addr}\""))])
            .args([
                "-A",
                &define("DIALOG_TIMEOUT", DIALOG_TIMEOUT_S.to_string()),
            ]);
        for (name, port) in ["UAS_CALL", "UAS_BUSY", "UAS_CANCEL", "UAS_NOBYE"]
            .iter()
            .zip(callee_ports)
        {
            kamailio.args(["-A", &define(name, format!("\"sip:127.0.0.1:{port}\""))]);
        }
        let kam = Kamailio {
            kamcmd: tools.kamcmd.clone(),
            ctl,
            sip,
            _proc: Proc::spawn("kamailio", &mut kamailio, &dir.path().join("kamailio.log")),
        };
        let log = dir.path().join("kamailio.log");
        wait_for("kamailio's control socket", Duration::from_secs(15), || {
            kam.kamcmd(&["dlg.stats_active"])
                .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
        });

        let callees = [
            ("sipp callee", "-sn", "uas"),
            ("sipp busy callee", "-sf", "uas_busy.xml"),
            ("sipp ringing callee", "-sf", "uas_cancel.xml"),
            ("sipp callee without BYE", "-sf", "uas_nobye.xml"),
        ]
        .into_iter()
        .zip(callee_ports)
        .enumerate()
        .map(|(i, ((name, flag, file), port))| {
            let mut sipp = Command::new(&tools.sipp);
            sipp.arg(flag);
            if flag == "-sf" {
                sipp.arg(scenario(file));
            } else {
                sipp.arg(file);
            }
            sipp.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"]);
            Proc::spawn(name, &mut sipp, &dir.path().join(format!("callee-{i}.log")))
        })
        .collect();
        Scene {
            dir,
            tools,
            kam,
            events,
            hep,
            _callees: callees,
        }
    }

    /// Starts a SIPp caller against Kamailio: `service` is the Request-URI user part (it
    /// picks the callee), `scenario` a file under tests/kamailio or `uac` (SIPp's own).
    fn caller(&self, service: &str, scenario_name: &str, extra: &[&str]) -> Proc {
        let mut sipp = Command::new(&self.tools.sipp);
        sipp.arg(self.kam.sip.to_string());
        if scenario_name == "uac" {
            sipp.args(["-sn", "uac"]);
        } else {
            sipp.arg("-sf").arg(scenario(scenario_name));
        }
        sipp.args(["-s", service, "-i", "127.0.0.1", "-nostdin"])
            .args(["-timeout", "30", "-timeout_error"])
            .args(extra);
        let log = self
            .dir
            .path()
            .join(format!("caller-{service}-{scenario_name}.log"));
        Proc::spawn("sipp caller", &mut sipp, &log)
    }

    /// Runs a SIPp caller to its end and asserts every one of its calls succeeded.
    fn run_caller(&self, service: &str, scenario_name: &str, extra: &[&str]) {
        let code = self
            .caller(service, scenario_name, extra)
            .wait(Duration::from_secs(40));
        assert_eq!(
            code,
            0,
            "sipp {service} {scenario_name} {extra:?} failed (exit {code}); see its log in {}",
            self.dir.path().display()
        );
    }

    /// Both agents count what Kamailio counts (calls, registered AoRs, contacts).
    fn all_agree(&self) -> Result<(KamCounts, AgentCounts), String> {
        let kam = self.kam.counts();
        let a = agent_counts(&self.events);
        let b = agent_counts(&self.hep);
        let same = |x: AgentCounts| {
            x.calls == kam.calls && x.users == kam.users && x.contacts == kam.contacts
        };
        if same(a) && same(b) && a.emergency_calls == b.emergency_calls {
            Ok((kam, a))
        } else {
            Err(format!(
                "kamailio {kam:?}, send_data agent {a:?}, HEP agent {b:?}"
            ))
        }
    }

    fn agree_on(&self, what: &str, calls: u64, users: u64, contacts: u64) -> AgentCounts {
        let within = Duration::from_secs(10);
        let (kam, agents) = wait_for(what, within, || {
            let (kam, a) = self.all_agree()?;
            if (kam.calls, kam.users, kam.contacts) == (calls, users, contacts) {
                Ok((kam, a))
            } else {
                Err(format!(
                    "all agree on {kam:?}, expected {calls} calls, {users} AoRs, {contacts} contacts"
                ))
            }
        });
        assert!(kam.dialogs >= kam.calls);
        agents
    }

    fn metric(agent: &Agent, series: &str) -> f64 {
        agent
            .metric(series)
            .unwrap_or_else(|| panic!("no metric {series}"))
    }
}

#[test]
fn agents_count_what_kamailio_counts() {
    let Some(tools) = tools() else {
        return;
    };
    let scene = Scene::start(tools);

    // Registrations: ten AoRs with three contacts each; three of them drop one contact;
    // two more AoRs register and unregister everything (`Contact: *`).
    scene.run_caller(
        "alice",
        "register.xml",
        &["-m", "10", "-r", "50", "-key", "expires", "3600"],
    );
    scene.run_caller("alice", "unregister_one.xml", &["-m", "3", "-r", "50"]);
    scene.run_caller(
        "bob",
        "register.xml",
        &["-m", "2", "-r", "50", "-key", "expires", "3600"],
    );
    scene.agree_on("registrations", 0, 12, 33);
    scene.run_caller("bob", "unregister_all.xml", &["-m", "2", "-r", "50"]);
    scene.agree_on("unregistrations", 0, 10, 27);
    // Contacts that lapse: Kamailio's usrloc removes them (the send_data agent hears
    // `reg … 0` from event_route[usrloc:contact-expired]); the HEP agent sees nothing on
    // the wire and lets them lapse by itself, at the same expiry.
    scene.run_caller(
        "carol",
        "register.xml",
        &["-m", "2", "-r", "50", "-key", "expires", "4"],
    );
    scene.agree_on("contacts about to expire", 0, 12, 33);
    scene.agree_on("contacts that expired", 0, 10, 27);

    // Calls, all at once: ordinary calls held HOLD_MS, an emergency call, busy calls,
    // cancelled calls, and one call that is never hung up.
    let hold = HOLD_MS.to_string();
    let calls = CALLS.to_string();
    let ordinary = scene.caller(
        "call",
        "uac",
        &["-m", &calls, "-l", &calls, "-r", "40", "-d", &hold],
    );
    let emergency = scene.caller("112", "uac", &["-m", "1", "-d", &hold]);
    let busy = scene.caller(
        "busy",
        "uac_busy.xml",
        &["-m", &BUSY_CALLS.to_string(), "-r", "20"],
    );
    let cancelled = scene.caller(
        "cancel",
        "uac_cancel.xml",
        &["-m", &CANCELLED_CALLS.to_string(), "-r", "20"],
    );
    let no_bye = scene.caller("nobye", "uac_nobye.xml", &["-m", "1"]);
    let up = u64::from(CALLS) + 2;
    let during = scene.agree_on("the calls, during the load", up, 10, 27);
    assert_eq!(
        during.emergency_calls, 1,
        "the call to 112 is an emergency call"
    );
    for (name, caller) in [
        ("ordinary", ordinary),
        ("emergency", emergency),
        ("busy", busy),
        ("cancelled", cancelled),
        ("no BYE", no_bye),
    ] {
        assert_eq!(
            caller.wait(Duration::from_secs(40)),
            0,
            "{name} calls failed"
        );
    }
    scene.agree_on("the calls, after the load", 1, 10, 27);

    // Busy and cancelled calls were never counted; every answered call was, once.
    let started = u64::from(CALLS) + 2;
    assert_eq!(
        Scene::metric(
            &scene.events,
            "tollgate_event_outcomes_total{outcome=\"call_started\"}"
        ),
        started as f64
    );
    assert_eq!(
        Scene::metric(
            &scene.hep,
            "tollgate_hep_tracker_total{counter=\"calls_started\"}"
        ),
        started as f64
    );
    // Every busy and cancelled call failed, once: Kamailio's worker processes can mirror an
    // INVITE's relayed copy after its final reply, and that late copy is not a new attempt.
    let failed = Scene::metric(
        &scene.hep,
        "tollgate_hep_tracker_total{counter=\"calls_failed\"}",
    );
    assert_eq!(
        failed,
        f64::from(BUSY_CALLS + CANCELLED_CALLS),
        "{failed} failed calls"
    );
    assert!(Scene::metric(&scene.hep, "tollgate_hep_packets_total{result=\"sip\"}") > 0.0);
    assert_eq!(
        Scene::metric(
            &scene.hep,
            "tollgate_hep_packets_total{result=\"auth_failed\"}"
        ),
        0.0
    );

    // The call without a BYE: Kamailio ends it at its dialog timeout and tells agent A
    // (event_route[dialog:end]); nothing goes on the wire, so agent B keeps it ...
    let timed_out = wait_for(
        "kamailio's dialog timeout",
        Duration::from_secs(DIALOG_TIMEOUT_S + 10),
        || {
            let kam = scene.kam.counts();
            let a = agent_counts(&scene.events);
            if kam.dialogs == 0 && a.calls == 0 {
                Ok(Instant::now())
            } else {
                Err(format!("kamailio {kam:?}, send_data agent {a:?}"))
            }
        },
    );
    assert_eq!(
        agent_counts(&scene.hep).calls,
        1,
        "the HEP agent cannot see a dialog timeout: it keeps the call until max_call_duration"
    );
    // ... until its max_call_duration.
    wait_for(
        "the HEP agent's max_call_duration",
        Duration::from_secs(HEP_MAX_CALL_DURATION_S + 5),
        || match agent_counts(&scene.hep).calls {
            0 => Ok(()),
            n => Err(format!("HEP agent still counts {n} call(s)")),
        },
    );
    assert!(
        timed_out.elapsed() > Duration::from_millis(500),
        "the HEP agent should end the call later than Kamailio's dialog timeout"
    );
    scene.agree_on("the end", 0, 10, 27);
}

/// docs/integrations/kamailio.md quotes the blocks of tests/kamailio/kamailio.cfg between
/// `# tollgate: <name> begin` and `# tollgate: <name> end`: the guide shows what the test
/// runs.
#[test]
fn the_guide_quotes_the_tested_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("tests/kamailio/kamailio.cfg")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/integrations/kamailio.md")).unwrap();
    let mut blocks = 0;
    let mut rest = config.as_str();
    while let Some(start) = rest.find("# tollgate: ") {
        let line_end = start + rest[start..].find('\n').unwrap();
        let marker = &rest[start..line_end];
        let name = marker
            .trim_start_matches("# tollgate: ")
            .trim_end_matches(" begin");
        assert!(marker.ends_with(" begin"), "unpaired marker {marker:?}");
        let end_marker = format!("# tollgate: {name} end");
        let end = line_end + rest[line_end..].find(&end_marker).unwrap();
        let block = &rest[line_end + 1..end];
        // The guide may indent differently: compare line by line, trimmed.
        let lines: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let guide_lines: Vec<&str> = guide
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let found = guide_lines
            .windows(lines.len())
            .any(|w| w == lines.as_slice());
        assert!(
            found,
            "docs/integrations/kamailio.md does not quote the `{name}` block of the tested config:\n{block}"
        );
        blocks += 1;
        rest = &rest[end + end_marker.len()..];
    }
    assert_eq!(
        blocks, 5,
        "modparams, invite, routes, reconcile modules and reconcile route"
    );
}

/// A free TCP port on loopback (bound, read, released).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reconciliation interval of the agents in the reconciliation test.
const RECONCILE_INTERVAL_S: u64 = 2;
/// Kamailio's dialog timeout in the reconciliation test: every call there ends by timeout
/// (none is hung up while Kamailio keeps it), after the late start and the restart of A.
const RECONCILE_DIALOG_TIMEOUT_S: u64 = 25;

/// Self-healing counts (issue 13): Kamailio with `jsonrpcs` + `xhttp` answers `dlg.list` and
/// `ul.dump`, and agents with a `[[reconcile]]` source converge to it whatever they missed:
/// - agent A (send_data) is down while calls and registrations happen; once started, it
///   counts what Kamailio counts within one interval;
/// - A is killed with `kill -9` while calls end (their stops are lost); after its restart
///   plus one interval it counts what Kamailio counts again;
/// - agent B (HEP only, `sender = "hep-1"`) keeps a call whose BYE never comes; Kamailio
///   times it out and B drops it at the next reconciliation, long before its
///   `max_call_duration_s`.
#[test]
fn agents_heal_from_kamailio_lists() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rpc_port = free_tcp_port();
    let events_port = free_udp_port();
    let reconcile = |sender: &str| {
        format!(
            "[[reconcile]]\nkind = \"kamailio\"\nurl = \"http://127.0.0.1:{rpc_port}/RPC\"\ninterval_s = {RECONCILE_INTERVAL_S}\n{sender}\n"
        )
    };
    let a_state = dir.path().join("agent-events");
    std::fs::create_dir_all(&a_state).unwrap();
    let a_config = a_state.join("agent.toml");
    std::fs::write(
        &a_config,
        format!(
            "[general]\nnode_id = \"a\"\n\n[ingest]\nudp = \"127.0.0.1:{events_port}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[state]\nsnapshot_interval_s = 1\n\n{}",
            reconcile("")
        ),
    )
    .unwrap();
    let hep = {
        let state = dir.path().join("agent-hep");
        std::fs::create_dir_all(&state).unwrap();
        let config = write_config(
            &state,
            &format!(
                "[hep]\nlisten = \"127.0.0.1:0\"\n\n[calls]\nmax_call_duration_s = 3600\n\n{}",
                reconcile("sender = \"hep-1\"")
            ),
        );
        Agent::start(&state, &config)
    };
    let hep_addr = hep_addr(&hep);

    let run = dir.path().join("kamailio");
    std::fs::create_dir_all(&run).unwrap();
    let ctl = format!("unix:{}", run.join("ctl").display());
    let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let (call_port, nobye_port) = (free_udp_port(), free_udp_port());
    let define = |name: &str, value: String| format!("{name}={value}");
    let mut kamailio = Command::new(&tools.kamailio);
    kamailio
        .args(["-DD", "-E", "-f"])
        .arg(scenario("kamailio.cfg"))
        .arg("-Y")
        .arg(&run)
        .arg("-w")
        .arg(&run)
        .args(["-l", &format!("udp:{sip}")])
        .args(["-l", &format!("tcp:127.0.0.1:{rpc_port}")])
        .args(["-m", "64", "-M", "8", "-A", "TOLLGATE_RPC"])
        .args(["-A", &define("CTL_SOCKET", format!("\"{ctl}\""))])
        .args([
            "-A",
            &define(
                "TOLLGATE_EVENTS",
                format!("\"sip:127.0.0.1:{events_port}\""),
            ),
        ])
        .args(["-A", &define("TOLLGATE_HEP", format!("\"sip:{hep_addr}\""))])
        .args([
            "-A",
            &define("DIALOG_TIMEOUT", RECONCILE_DIALOG_TIMEOUT_S.to_string()),
        ])
        .args([
            "-A",
            &define("UAS_CALL", format!("\"sip:127.0.0.1:{call_port}\"")),
        ])
        .args([
            "-A",
            &define("UAS_NOBYE", format!("\"sip:127.0.0.1:{nobye_port}\"")),
        ]);
    let log = dir.path().join("kamailio.log");
    let kam = Kamailio {
        kamcmd: tools.kamcmd.clone(),
        ctl,
        sip,
        _proc: Proc::spawn("kamailio", &mut kamailio, &log),
    };
    wait_for("kamailio's control socket", Duration::from_secs(15), || {
        kam.kamcmd(&["dlg.stats_active"])
            .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    });
    let callee = |name: &'static str, args: &[&str], port: u16, i: usize| {
        let mut sipp = Command::new(&tools.sipp);
        sipp.args(args)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"]);
        Proc::spawn(name, &mut sipp, &dir.path().join(format!("callee-{i}.log")))
    };
    let _callees = [
        callee("sipp callee", &["-sn", "uas"], call_port, 0),
        callee(
            "sipp callee without BYE",
            &["-sf", scenario("uas_nobye.xml").to_str().unwrap()],
            nobye_port,
            1,
        ),
    ];
    let caller = |service: &str, scenario_name: &str, extra: &[&str]| {
        let mut sipp = Command::new(&tools.sipp);
        sipp.arg(sip.to_string());
        if scenario_name == "uac" {
            sipp.args(["-sn", "uac"]);
        } else {
            sipp.arg("-sf").arg(scenario(scenario_name));
        }
        sipp.args(["-s", service, "-i", "127.0.0.1", "-nostdin"])
            .args(["-timeout", "60", "-timeout_error"])
            .args(extra);
        let log = dir.path().join(format!("caller-{service}.log"));
        Proc::spawn("sipp caller", &mut sipp, &log)
    };
    let agrees = |agent: &Agent, what: &str| -> Result<KamCounts, String> {
        let k = kam.counts();
        let a = agent_counts(agent);
        if (a.calls, a.users, a.contacts) == (k.calls, k.users, k.contacts) {
            Ok(k)
        } else {
            Err(format!("{what}: kamailio {k:?}, agent {a:?}"))
        }
    };
    let one_interval = Duration::from_secs(RECONCILE_INTERVAL_S * 2 + 8);

    // Agent A is down: registrations and long calls happen without it.
    assert_eq!(
        caller(
            "alice",
            "register.xml",
            &["-m", "5", "-r", "50", "-key", "expires", "3600"]
        )
        .wait(Duration::from_secs(40)),
        0
    );
    let _long = caller(
        "call",
        "uac",
        &["-m", "6", "-l", "6", "-r", "20", "-d", "120000"],
    );
    wait_for("6 calls up in kamailio", Duration::from_secs(20), || {
        let k = kam.counts();
        (k.calls == 6 && k.contacts == 15)
            .then_some(())
            .ok_or(format!("{k:?}"))
    });
    let agent = Agent::start(&a_state, &a_config);
    let k = wait_for("agent A, started late, agrees", one_interval, || {
        agrees(&agent, "after start")
    });
    assert_eq!((k.calls, k.users, k.contacts), (6, 5, 15));
    let missing = agent
        .metric("tollgate_reconcile_corrections_total{source=\"kamailio\",kind=\"missing_call\"}")
        .unwrap_or(0.0);
    assert_eq!(missing, 6.0, "the calls came from the reconciliation");

    // Short calls end while agent A is killed: their stops are lost.
    let short = caller(
        "call2",
        "uac",
        &["-m", "4", "-l", "4", "-r", "20", "-d", "4000"],
    );
    wait_for("agent A sees the short calls", one_interval, || {
        let a = agent_counts(&agent);
        (a.calls == 10).then_some(()).ok_or(format!("{a:?}"))
    });
    common::wait_next_snapshot(&agent); // a snapshot with the 10 calls
    agent.kill9();
    assert_eq!(short.wait(Duration::from_secs(40)), 0);
    wait_for(
        "the short calls ended in kamailio",
        Duration::from_secs(20),
        || {
            let k = kam.counts();
            (k.calls == 6).then_some(()).ok_or(format!("{k:?}"))
        },
    );
    let agent = Agent::start(&a_state, &a_config);
    wait_for("agent A, restarted, agrees", one_interval, || {
        agrees(&agent, "after restart")
    });

    // The HEP agent and calls Kamailio times out (no BYE on the wire): the HEP agent cannot
    // see the timeout, and drops them at the next reconciliation, not at its
    // max_call_duration_s (an hour).
    let no_bye = caller("nobye", "uac_nobye.xml", &["-m", "1"]);
    assert_eq!(no_bye.wait(Duration::from_secs(40)), 0);
    wait_for(
        "the HEP agent counts what kamailio counts",
        one_interval,
        || agrees(&hep, "HEP agent, calls up"),
    );
    wait_for(
        "kamailio's dialog timeout",
        Duration::from_secs(RECONCILE_DIALOG_TIMEOUT_S + 20),
        || {
            let k = kam.counts();
            (k.calls == 0).then_some(()).ok_or(format!("{k:?}"))
        },
    );
    wait_for(
        "the HEP agent drops the timed-out calls",
        one_interval,
        || agrees(&hep, "HEP agent, after the timeout"),
    );
    assert!(
        hep.metric("tollgate_reconcile_corrections_total{source=\"hep-1\",kind=\"phantom_call\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    wait_for("agent A still agrees", one_interval, || {
        agrees(&agent, "end")
    });
}

//! What the project ships for a NOC, checked against real agents: `deploy/grafana/` and
//! `deploy/prometheus/alerts.yml` may only name series that a running agent exports, and the
//! alert rules must fire on real faults. Two agents are meshed over QUIC with a license, then
//! driven into faults (over the license, denied admissions, a table at its cap, malformed
//! events, sequence gaps, a `kill -9`'d node). Their `/metrics` are scraped before and
//! after, and the scrapes become the input series of a `promtool test rules` unit test that
//! says which alerts fire when, and which stay quiet.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Agent, send_udp};
use tollgate_license::{LicenseSpec, SigningKey};
use tollgate_mesh::ClusterCa;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One scrape of an agent's `/metrics`: the sample lines, and when it was taken.
#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    unix_s: f64,
}

/// The recording both tests use (made once per test process).
struct Recorded {
    /// A and B healthy: meshed, licensed, idle.
    a_healthy: Scrape,
    b_healthy: Scrape,
    /// A after the faults (B is dead by then: its scrape fails).
    a_faulty: Scrape,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn scrape(agent: &Agent) -> Scrape {
    let unix_s = now_ms() as f64 / 1000.0;
    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200, "{text}");
    Scrape { text, unix_s }
}

/// Node `name`: its certificate from the cluster CA, and a config meshing it with `seeds`.
fn node_config(dir: &Path, ca: &ClusterCa, name: &str, seeds: &[String], extra: &str) -> PathBuf {
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let cert = ca.issue(name).unwrap();
    std::fs::write(node_dir.join("node.pem"), &cert.cert_pem).unwrap();
    std::fs::write(node_dir.join("node.key"), &cert.key_pem).unwrap();
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let config = node_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[general]\nnode_id = \"{name}\"\nlicense_key = \"NOC_1\"\n\n\
             [ingest]\nudp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nseeds = [{}]\nca = \"{}\"\n\
             cert = \"{}\"\nkey = \"{}\"\n\n{extra}\n",
            seeds.join(", "),
            dir.join("ca.pem").display(),
            node_dir.join("node.pem").display(),
            node_dir.join("node.key").display(),
        ),
    )
    .unwrap();
    config
}

fn wait_until(what: &str, secs: u64, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sign(vendor: &SigningKey, spec: &str) -> String {
    let doc = LicenseSpec::parse(spec)
        .unwrap()
        .to_document(
            vendor.key_id(),
            tollgate_events::WallTime::from_unix_ms(now_ms()),
        )
        .unwrap();
    tollgate_license::sign(&doc, vendor).unwrap()
}

fn license_body(agent: &Agent) -> String {
    common::http(
        agent.rt.admin,
        "GET",
        "/api/v1/license",
        Some(("ops", "pw")),
        b"",
    )
    .1
}

/// Runs the two agents through health and faults, once.
fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(record)
}

fn record() -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("noc test cluster").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let vendor = SigningKey::generate();
    let admin = tollgate_agent::auth::hash_password("pw").unwrap();
    // A license server that cannot be reached: the fetch series exist (failed), and the
    // license arrives by upload instead.
    let extra = format!(
        "[license]\ntrusted_keys = [\"{}\"]\nserver = \"https://127.0.0.1:1\"\ntoken = \"t\"\n\n\
         [[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n",
        vendor.public_key().to_file_string().trim()
    );
    // A holds at most 2 calls: its third is refused (calls_table_full).
    let a_extra = format!("{extra}\n[calls]\nmax_active_calls = 2\n");
    let a = Agent::start(
        &dir.path().join("a/state"),
        &node_config(dir.path(), &ca, "a", &[], &a_extra),
    );
    let seed = vec![a.rt.mesh.expect("a has a mesh address").to_string()];
    let b = Agent::start(
        &dir.path().join("b/state"),
        &node_config(dir.path(), &ca, "b", &seed, &extra),
    );

    // Healthy: a term license far from its end, a 14-day lease, one call allowed.
    let healthy = "license_key = \"NOC_1\"\ncustomer = \"NOC Telecom\"\nkind = \"term\"\n\
                   serial = 1\nvalid_until = \"2099-01-01T00:00:00Z\"\nlease_days = 14\n\n\
                   [limits]\ncalls = 1\nsubscribers = 1000\nregistered_subscribers = 1000\n\n[policy]\nmode = \"enforce\"\ngrace_pct = 0\n";
    let (status, body) = common::http(
        a.rt.admin,
        "PUT",
        "/api/v1/license",
        Some(("ops", "pw")),
        sign(&vendor, healthy).as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    wait_until("the license on B through the mesh", 30, || {
        license_body(&b).contains("NOC Telecom")
    });
    wait_until(
        "A and B connected, OK, snapshotted, a fetch attempted",
        60,
        || {
            [&a, &b].iter().all(|n| {
                n.metric("tollgate_mesh_peers_connected") == Some(1.0)
                    && n.metric("tollgate_snapshot_last_success_timestamp_seconds")
                        .is_some_and(|v| v > 0.0)
                    && n.metric("tollgate_license_status_code") == Some(0.0)
                    && n.get("/metrics").1.lines().any(|l| {
                        l.starts_with("tollgate_license_fetches_total{")
                            && l.rsplit_once(' ').is_some_and(|(_, v)| v != "0")
                    })
            })
        },
    );
    let a_healthy = scrape(&a);
    let b_healthy = scrape(&b);

    // Faults. A license 10 days from its end with a 1-day lease (serial 2, uploaded on A).
    let ending = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let ending = ending
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let ending_spec = healthy
        .replace("serial = 1", "serial = 2")
        .replace("2099-01-01T00:00:00Z", &ending)
        .replace("lease_days = 14", "lease_days = 1");
    let (status, body) = common::http(
        a.rt.admin,
        "PUT",
        "/api/v1/license",
        Some(("ops", "pw")),
        sign(&vendor, &ending_spec).as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    // Over the license (3 calls in the cluster, 1 allowed), A's table at its cap (a3).
    send_udp(a.udp(), b"call-start a1\ncall-start a2\ncall-start a3\n");
    send_udp(b.udp(), b"call-start b1\n");
    wait_until("A over the license", 30, || {
        a.metric("tollgate_license_status_code") == Some(2.0)
            && a.metric("tollgate_cluster_calls") == Some(3.0)
    });
    // An admission denied, a malformed line, a sequence gap (seq 1, then 5: 3 lost).
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(b"admit a9\n", a.udp()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"deny OVER_LIMIT\n");
    send_udp(a.udp(), b"no-such-verb x\n");
    send_udp(a.udp(), b"seq noc-proxy 1\ncall-refresh a1\n");
    send_udp(a.udp(), b"seq noc-proxy 5\ncall-refresh a1\n");
    // B dies: A sees it expire and keeps it listed ([mesh] expired_visible_s).
    b.kill9();
    wait_until("B expired on A, and every fault counted", 60, || {
        a.metric("tollgate_cluster_nodes{state=\"expired\"}") == Some(1.0)
            && a.metric("tollgate_datagrams_lost_total") == Some(3.0)
            && a.metric("tollgate_events_malformed_total{reason=\"unknown_verb\"}") == Some(1.0)
            && a.metric("tollgate_license_status_code") == Some(2.0)
    });
    let a_faulty = scrape(&a);
    // To look at what the rules ran on: NOC_DEBUG_DIR=/some/dir keeps the scrapes there
    // (and, below, the generated promtool unit test and rules).
    if let Ok(d) = std::env::var("NOC_DEBUG_DIR") {
        std::fs::write(format!("{d}/a_faulty.txt"), &a_faulty.text).unwrap();
        std::fs::write(format!("{d}/a_healthy.txt"), &a_healthy.text).unwrap();
    }
    let _ = a.stop();
    Recorded {
        a_healthy,
        b_healthy,
        a_faulty,
    }
}

/// `(name, labels)` of one sample line; `labels` is the text between the braces.
fn parse_sample(line: &str) -> Option<(&str, &str, &str)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    match series.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((series, "", value)),
    }
}

/// Series name → every label set (as `k="v"` text) seen in the scrapes.
fn exported(scrapes: &[&Scrape]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in scrapes {
        for (name, labels, _) in s.text.lines().filter_map(parse_sample) {
            out.entry(name.to_owned())
                .or_default()
                .insert(labels.to_owned());
        }
    }
    out
}

/// Every string in a JSON document (the dashboard's queries live in them).
fn json_strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// Every `tollgate_*` name in `text`, and every literal `label="value"` matcher written
/// right after one (`tollgate_x{limit="calls", job="$job"}`: `limit="calls"`).
fn referenced(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tollgate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        i = end;
        if !boundary {
            continue;
        }
        let matchers = out.entry(text[start..end].to_owned()).or_default();
        if let Some(rest) = text[end..].strip_prefix('{')
            && let Some(close) = rest.find('}')
        {
            for m in rest[..close].split(',') {
                let m = m.trim();
                if let Some((k, v)) = m.split_once("=\"")
                    && !k.ends_with('!')
                    && !k.ends_with('~')
                    && !v.contains('$')
                {
                    matchers.insert(format!("{}=\"{}", k.trim(), v));
                }
            }
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_name_only_series_real_agents_export() {
    let r = recorded();
    let have = exported(&[&r.a_healthy, &r.b_healthy, &r.a_faulty]);
    let dashboard =
        std::fs::read_to_string(format!("{ROOT}/deploy/grafana/tollgate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut dashboard_text = String::new();
    json_strings(&dashboard, &mut dashboard_text);
    let alerts = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap();

    for (file, text) in [
        ("deploy/grafana/tollgate.json", &dashboard_text),
        ("deploy/prometheus/alerts.yml", &alerts),
    ] {
        let wanted = referenced(text);
        assert!(
            wanted.len() >= 10,
            "{file}: too few metrics found ({wanted:?}): is the parser right?"
        );
        let mut missing = Vec::new();
        for (name, matchers) in &wanted {
            let Some(label_sets) = have.get(name) else {
                missing.push(name.clone());
                continue;
            };
            for m in matchers {
                if !label_sets.iter().any(|l| l.split(',').any(|kv| kv == m)) {
                    missing.push(format!("{name}{{{m}}} (labels seen: {label_sets:?})"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{file} names series no real agent exports:\n{}",
            missing.join("\n")
        );
    }
    // Every panel has a query, and none is left pointing at a fixed data source.
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel without targets: {p}"));
        assert!(!targets.is_empty(), "{}", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
}

/// Minutes of the healthy and of the faulty recording in the unit test's timeline.
const HEALTHY_MIN: u64 = 10;
const FAULTY_MIN: u64 = 80;

/// The input series of the promtool unit test: every sample of the scrapes, with the
/// `job` and `instance` labels a Prometheus scrape adds, healthy values for minutes
/// 0..HEALTHY_MIN, then faulty ones. Timestamps (`*_timestamp_seconds`) keep their age
/// relative to the scrape. B cannot be scraped after its `kill -9`: its `up` turns 0 and
/// its series go stale.
fn input_series(r: &Recorded) -> String {
    let job = "tollgate";
    // series → (values in the healthy minutes, values in the faulty minutes)
    let mut series: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let render = |s: &Scrape,
                  instance: &str,
                  healthy: bool,
                  out: &mut BTreeMap<String, (Vec<String>, Vec<String>)>| {
        let (first, count) = if healthy {
            (0, HEALTHY_MIN)
        } else {
            (HEALTHY_MIN, FAULTY_MIN)
        };
        for (name, labels, value) in s.text.lines().filter_map(parse_sample) {
            let labels = if labels.is_empty() {
                format!("job=\"{job}\",instance=\"{instance}\"")
            } else {
                format!("{labels},job=\"{job}\",instance=\"{instance}\"")
            };
            let key = format!("{name}{{{labels}}}");
            let values: Vec<String> = (0..count)
                .map(|m| {
                    let v: f64 = value.parse().unwrap_or(f64::NAN);
                    // 0 is "never": it stays 0.
                    if name.ends_with("_timestamp_seconds") && v != 0.0 {
                        let age = s.unix_s - v;
                        format!("{}", ((first + m) * 60) as f64 - age)
                    } else {
                        value.to_owned()
                    }
                })
                .collect();
            let entry = out.entry(key).or_default();
            if healthy {
                entry.0 = values
            } else {
                entry.1 = values
            }
        }
    };
    render(&r.a_healthy, "a", true, &mut series);
    render(&r.b_healthy, "b", true, &mut series);
    render(&r.a_faulty, "a", false, &mut series);
    let mut yaml = String::new();
    for (key, (healthy, faulty)) in &series {
        let healthy = if healthy.is_empty() {
            vec!["_".to_owned(); HEALTHY_MIN as usize]
        } else {
            healthy.clone()
        };
        let faulty = if !faulty.is_empty() {
            faulty.clone()
        } else {
            // Gone: stale from the first faulty minute.
            let mut v = vec!["stale".to_owned()];
            v.extend(std::iter::repeat_n("_".to_owned(), FAULTY_MIN as usize - 1));
            v
        };
        let _ = writeln!(
            yaml,
            "      - series: '{}'\n        values: '{} {}'",
            key.replace('\'', "''"),
            healthy.join(" "),
            faulty.join(" ")
        );
    }
    for (instance, faulty) in [("a", "1"), ("b", "0")] {
        let _ = writeln!(
            yaml,
            "      - series: 'up{{job=\"{job}\",instance=\"{instance}\"}}'\n        values: '{} {}'",
            vec!["1"; HEALTHY_MIN as usize].join(" "),
            vec![faulty; FAULTY_MIN as usize].join(" ")
        );
    }
    yaml
}

/// alerts.yml without its annotations: promtool compares annotations too, and theirs are
/// templates of `$value`; `promtool check rules` checks those templates.
fn rules_without_annotations(alerts: &str) -> String {
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    for line in alerts.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skipping {
            if line.trim().is_empty() || indent > depth {
                continue;
            }
            skipping = None;
        }
        if line.trim_start().starts_with("annotations:") {
            skipping = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_fire_on_faults_recorded_from_real_agents() {
    let alerts_path = format!("{ROOT}/deploy/prometheus/alerts.yml");
    let check = promtool(&["check", "rules", &alerts_path]);
    assert!(check.contains("SUCCESS"), "{check}");
    let alerts = std::fs::read_to_string(&alerts_path).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 15, "{names:?}");

    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alerts.yml"),
        rules_without_annotations(&alerts),
    )
    .unwrap();

    let a =
        |sev: &str, extra: &str| format!("{{severity: {sev}, job: tollgate, instance: a{extra}}}");
    // What must fire at each evaluation time; every other alert must be silent then.
    // Minute 9: healthy. 12: just after the faults. 85: counters have stopped moving, the
    // state-like faults remain, and the slow ones (`for: 15m`, `for: 1h`) have fired.
    let expected: [(u64, Vec<(&str, String)>); 3] = [
        (9, vec![]),
        (
            12,
            vec![
                ("TollgateLicenseNotOk", a("critical", "")),
                (
                    "TollgateAdmissionsDenied",
                    a("critical", ", code: OVER_LIMIT"),
                ),
                (
                    "TollgateMalformedEvents",
                    a("warning", ", reason: unknown_verb"),
                ),
                ("TollgateEventsLost", a("warning", "")),
                (
                    "TollgateEventsRefused",
                    a("critical", ", reason: calls_table_full"),
                ),
                ("TollgateClusterNodeExpired", a("critical", "")),
                (
                    "TollgateAgentDown",
                    "{severity: critical, job: tollgate, instance: b}".to_owned(),
                ),
            ],
        ),
        (
            85,
            vec![
                ("TollgateLicenseNotOk", a("critical", "")),
                ("TollgateLicenseLeaseEndingSoon", a("warning", "")),
                ("TollgateLicenseExpiresSoon", a("warning", "")),
                ("TollgateClusterNodeExpired", a("critical", "")),
                (
                    "TollgateAgentDown",
                    "{severity: critical, job: tollgate, instance: b}".to_owned(),
                ),
            ],
        ),
    ];
    let mut tests = String::new();
    for (minute, firing) in &expected {
        for name in &names {
            let _ = writeln!(
                tests,
                "      - eval_time: {minute}m\n        alertname: {name}"
            );
            let labels: Vec<&String> = firing
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, l)| l)
                .collect();
            if labels.is_empty() {
                let _ = writeln!(tests, "        exp_alerts: []");
            } else {
                let _ = writeln!(tests, "        exp_alerts:");
                for l in labels {
                    let _ = writeln!(tests, "          - exp_labels: {l}");
                }
            }
        }
        for (name, _) in firing {
            assert!(names.contains(name), "{name} is not in alerts.yml");
        }
    }
    let unit = format!(
        "rule_files:\n  - alerts.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{}    alert_rule_test:\n{tests}",
        input_series(r)
    );
    let unit_path = dir.path().join("alerts_test.yml");
    std::fs::write(&unit_path, &unit).unwrap();
    if let Ok(d) = std::env::var("NOC_DEBUG_DIR") {
        std::fs::write(format!("{d}/alerts_test.yml"), &unit).unwrap();
        std::fs::write(
            format!("{d}/alerts.yml"),
            rules_without_annotations(&alerts),
        )
        .unwrap();
    }
    let result = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&unit_path)
        .current_dir(dir.path())
        .output()
        .expect("promtool");
    assert!(
        result.status.success(),
        "promtool test rules on series recorded from real agents:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

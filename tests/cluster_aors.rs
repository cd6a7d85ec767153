//! Registered subscribers counted once across a cluster (issue 15): real agent processes
//! meshed over real QUIC on loopback. An AoR registered through several nodes is one
//! registered subscriber in `GET /api/v1/cluster` and `tollgate_cluster_registered_subscribers`
//! on every node; it stays while any node holds a live contact for it; a dead node's AoRs
//! go at its expiry; a restarted node counts nothing twice; fresh nodes that register before
//! they agree on the cluster's AoR key count nothing twice; a key rotation reaches every node.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mesh::{Fixture, cluster, node_entry, wait_cluster, wait_next_snapshot};
use common::{Agent, http, send_unix};

/// Quick snapshots, so that a killed node's restart restores what it held.
const SNAPSHOTS: &str = "\n[state]\nsnapshot_interval_s = 1\n";

fn registered(view: &serde_json::Value) -> u64 {
    view["usage"]["registered_subscribers"].as_u64().unwrap()
}

/// Sends `reg` lines through the agent's unix socket (reliable: it blocks rather than
/// drops), many lines per datagram.
fn send_regs(agent: &Agent, lines: &[String]) {
    let socket: &Path = &agent.unix();
    for chunk in lines.chunks(40) {
        send_unix(socket, chunk.concat().as_bytes());
    }
}

fn reg(aor: &str, contact: &str, expires_s: u32) -> String {
    format!("reg {aor} {contact} {expires_s}\n")
}

/// Polls every node until `pred` holds on all of them, asserting on every read that none
/// counts more than `most` registered subscribers.
fn wait_all_never_above(
    nodes: &[&Agent],
    what: &str,
    most: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<serde_json::Value> = nodes.iter().map(|node| cluster(node)).collect();
        for view in &views {
            assert!(registered(view) <= most, "counted twice ({what}): {view:#}");
        }
        if views.iter().all(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {views:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_same_aor_through_two_nodes_counts_once_until_its_last_contact_goes() {
    let fx = Fixture::new("aors");
    // Fresh nodes, each with a key of its own until they agree on the cluster's: every AoR
    // is registered the moment its node is up, before any key exchange, and still never
    // counts twice (issue 15: the fresh-node key race).
    let registrations = [
        reg("sip:alice@example.net", "sip:phone@10.0.0.1", 600),
        reg("sip:alice@example.net", "sip:soft@10.0.0.2", 600),
        reg("sip:bob@example.net", "sip:phone@10.0.0.3", 600),
    ];
    let mut nodes: Vec<Agent> = Vec::new();
    for (name, line) in ["a", "b", "c"].into_iter().zip(&registrations) {
        let seeds: Vec<String> = nodes
            .first()
            .map(|first| vec![first.rt.mesh.unwrap().to_string()])
            .unwrap_or_default();
        let node = Agent::start(&fx.state(name), &fx.node(name, &seeds, SNAPSHOTS));
        send_regs(&node, std::slice::from_ref(line));
        nodes.push(node);
    }
    let all: Vec<&Agent> = nodes.iter().collect();
    wait_all_never_above(&all, "alice once, bob once", 2, |v| {
        registered(v) == 2 && v["usage"]["registered_contacts"] == 3 && v["nodes_live"] == 3
    });
    for node in &nodes {
        let view = wait_cluster(node, "alice once, bob once", 20, |v| {
            registered(v) == 2 && v["usage"]["registered_contacts"] == 3
        });
        assert_eq!(view["registered_subscribers_sum"], 3, "{view:#}");
        assert_eq!(
            node.metric("tollgate_cluster_registered_subscribers"),
            Some(2.0)
        );
    }
    // Unregistered through A: B still holds a live contact.
    send_regs(
        &nodes[0],
        &[reg("sip:alice@example.net", "sip:phone@10.0.0.1", 0)],
    );
    for node in &nodes {
        wait_cluster(node, "alice still counted through B", 20, |v| {
            v["usage"]["registered_contacts"] == 2
        });
        assert_eq!(registered(&cluster(node)), 2);
    }
    // And through B: gone everywhere.
    send_regs(
        &nodes[1],
        &[reg("sip:alice@example.net", "sip:soft@10.0.0.2", 0)],
    );
    for node in &nodes {
        wait_cluster(node, "alice gone", 20, |v| {
            registered(v) == 1 && v["usage"]["registered_contacts"] == 1
        });
    }
    // Nothing readable crossed the mesh: the AoR never appears in a peer's view.
    let (_, body) = nodes[2].get("/api/v1/cluster");
    assert!(!body.contains("alice"), "{body}");
}

#[test]
fn a_killed_nodes_own_aors_drop_at_expiry_and_its_restart_counts_nothing_twice() {
    let fx = Fixture::new("aors");
    let mut nodes = fx.start(&["a", "b"], SNAPSHOTS);
    send_regs(&nodes[0], &[reg("sip:alice@x", "sip:a1@h", 600)]);
    send_regs(
        &nodes[1],
        &[
            reg("sip:alice@x", "sip:a2@h", 600),
            reg("sip:carol@x", "sip:c1@h", 600),
        ],
    );
    let all: Vec<&Agent> = nodes.iter().collect();
    wait_all_never_above(&all, "alice and carol", 2, |v| {
        registered(v) == 2 && v["nodes_live"] == 2
    });
    // kill -9 B (after a snapshot that holds its registrations and AoR index).
    let b = nodes.pop().unwrap();
    wait_next_snapshot(&b);
    let (b_state, b_config) = (b.state_dir.clone(), b.config.clone());
    b.kill9();
    let a = &nodes[0];
    // Suspect still counts; at expiry carol (only on B) goes, alice (also on A) stays.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let view = cluster(a);
        if node_entry(&view, "b")["counted"] != true {
            // The figures follow the node list within one push interval.
            wait_cluster(a, "carol gone with B", 5, |v| registered(v) == 1);
            break;
        }
        assert_eq!(registered(&view), 2, "B still counted: {view:#}");
        assert!(Instant::now() < deadline, "B never expired: {view:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Restart B on the same state: its snapshot and AoR index come back; alice and carol
    // count once each, never more.
    let b = Agent::start(&b_state, &b_config);
    assert_eq!(b.usage()["registered_subscribers"], 2, "restored");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views = [cluster(a), cluster(&b)];
        for view in &views {
            assert!(registered(view) <= 2, "counted twice: {view:#}");
        }
        if views
            .iter()
            .all(|v| registered(v) == 2 && v["nodes_live"] == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "B never came back: {views:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Carol's contact ends on B: gone everywhere.
    send_regs(&b, &[reg("sip:carol@x", "sip:c1@h", 0)]);
    for node in [a, &b] {
        wait_cluster(node, "carol gone", 20, |v| registered(v) == 1);
    }
}

#[test]
fn a_hundred_thousand_aors_over_three_nodes_with_30_percent_overlap_count_exactly() {
    const AORS: usize = 100_000;
    let fx = Fixture::new("aors");
    let nodes = fx.start(&["a", "b", "c"], SNAPSHOTS);
    let mut per_node: Vec<Vec<String>> = vec![Vec::new(); 3];
    for i in 0..AORS {
        let home = i % 3;
        per_node[home].push(reg(
            &format!("sip:user{i}@example.net"),
            "sip:ua@10.0.0.1",
            3600,
        ));
        // 30 % also registered through the next node.
        if i % 10 < 3 {
            per_node[(home + 1) % 3].push(reg(
                &format!("sip:user{i}@example.net"),
                "sip:ua2@10.0.0.2",
                3600,
            ));
        }
    }
    for (node, lines) in nodes.iter().zip(&per_node) {
        send_regs(node, lines);
    }
    for (node, lines) in nodes.iter().zip(&per_node) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while node.usage()["registered_subscribers"] != lines.len() {
            assert!(Instant::now() < deadline, "ingest: {:#}", node.usage());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let sum: usize = per_node.iter().map(Vec::len).sum();
    assert_eq!(sum, AORS + AORS * 3 / 10);
    for node in &nodes {
        let view = wait_cluster(node, "the exact distinct count", 60, |v| {
            registered(v) == AORS as u64
        });
        assert_eq!(view["registered_subscribers_sum"], sum, "{view:#}");
        assert_eq!(
            node.metric("tollgate_cluster_registered_subscribers"),
            Some(AORS as f64)
        );
    }
}

/// `POST /api/v1/cluster/aor-key/rotate` through real processes: admin only, the next
/// generation reaches every node (its view and its `aor-key` file), and each AoR moves to
/// it at its refresh: an AoR registered through two nodes counts once per key while only
/// one of them has refreshed it (as docs/cluster.md says), once when both have.
#[test]
fn a_rotated_aor_key_reaches_every_node_and_aors_move_to_it_at_their_refresh() {
    let fx = Fixture::new("aors");
    let hash = tollgate_agent::auth::hash_password("rotate-pw").unwrap();
    let extra = format!(
        "{SNAPSHOTS}\n[[admin.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
    );
    let nodes = fx.start(&["a", "b", "c"], &extra);
    let alice = |contact: &str| reg("sip:alice@example.net", contact, 600);
    send_regs(&nodes[0], &[alice("sip:phone@10.0.0.1")]);
    send_regs(&nodes[1], &[alice("sip:soft@10.0.0.2")]);
    send_regs(
        &nodes[2],
        &[reg("sip:bob@example.net", "sip:phone@10.0.0.3", 600)],
    );
    let all: Vec<&Agent> = nodes.iter().collect();
    wait_all_never_above(&all, "alice and bob, one key", 2, |v| {
        registered(v) == 2 && v["nodes_live"] == 3
    });
    let before = cluster(&nodes[0]);
    let generation = before["aor_key_generation"].as_u64().unwrap();
    let key_file = |node: &Agent| std::fs::read(node.state_dir.join("aor-key")).unwrap();
    let files_before: Vec<Vec<u8>> = nodes.iter().map(key_file).collect();

    let rotate = |auth| {
        http(
            nodes[1].rt.admin,
            "POST",
            "/api/v1/cluster/aor-key/rotate",
            auth,
            b"",
        )
    };
    assert_eq!(rotate(None).0, 401);
    assert_eq!(rotate(Some(("ops", "wrong"))).0, 401);
    let (status, body) = rotate(Some(("ops", "rotate-pw")));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["aor_key_generation"], generation + 1, "{answer:#}");
    let id = answer["aor_key_id"].as_str().unwrap().to_owned();
    assert_ne!(before["aor_key_id"], id.as_str());
    for (node, file_before) in nodes.iter().zip(&files_before) {
        wait_cluster(node, "the rotated key", 20, |v| {
            v["aor_key_id"] == id.as_str() && v["aor_key_generation"] == generation + 1
        });
        // Persisted: the file changes right after the view (the same tick).
        let deadline = Instant::now() + Duration::from_secs(10);
        while key_file(node) == *file_before {
            assert!(Instant::now() < deadline, "aor-key not rewritten");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Refreshed through A only: A's alice is under the new key, B's under the old one.
    send_regs(&nodes[0], &[alice("sip:phone@10.0.0.1")]);
    for node in &nodes {
        wait_cluster(node, "alice once per key", 20, |v| registered(v) == 3);
    }
    // And through B: one key, counted once again.
    send_regs(&nodes[1], &[alice("sip:soft@10.0.0.2")]);
    for node in &nodes {
        wait_cluster(node, "alice once", 20, |v| {
            registered(v) == 2 && v["registered_subscribers_sum"] == 3
        });
    }
}

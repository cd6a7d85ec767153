//! The mesh over real QUIC on loopback. Each node runs on its own tokio runtime, so a node
//! can be killed the way `kill -9` kills a process: its runtime is dropped, its tasks stop
//! without a word to the peers. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::broadcast;
use tollgate_mesh::{ClusterCa, Mesh, MeshConfig, NodeCert, tls};
use tollgate_replication::{Config, Event, Frame, NodeState, NodeUsage, Record, encode};

/// Timings short enough for tests, long enough for a busy 2-core machine.
fn replication() -> Config {
    Config {
        heartbeat_interval_ms: 200,
        suspect_after_ms: 1_000,
        expire_after_ms: 3_000,
        anti_entropy_interval_ms: 1_000,
        ..Config::default()
    }
}

const WAIT: Duration = Duration::from_secs(15);

struct Node {
    runtime: Runtime,
    mesh: Mesh,
    cert: NodeCert,
}

struct Options {
    seeds: Vec<SocketAddr>,
    listen: SocketAddr,
    incarnation: u64,
    advertise: Option<String>,
    /// A restarted node keeps its certificate and key.
    cert: Option<NodeCert>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seeds: Vec::new(),
            listen: "127.0.0.1:0".parse().unwrap(),
            incarnation: 1,
            advertise: None,
            cert: None,
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn start(ca: &ClusterCa, node_id: &str, options: Options) -> Node {
    let cert = options.cert.unwrap_or_else(|| ca.issue(node_id).unwrap());
    let runtime = runtime();
    let config = MeshConfig {
        node_id: node_id.to_owned(),
        listen: options.listen,
        advertise: options.advertise,
        seeds: options.seeds,
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        incarnation: options.incarnation,
        replication: replication(),
    };
    // A restart on the same port may find the old socket still closing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mesh = loop {
        let _entered = runtime.enter();
        match Mesh::start(config.clone()) {
            Ok(mesh) => break mesh,
            Err(error) if Instant::now() < deadline => {
                eprintln!("retrying start of {node_id}: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("{node_id}: {error}"),
        }
    };
    Node {
        runtime,
        mesh,
        cert,
    }
}

/// `count` nodes `n0…`, every one seeded with `n0`.
fn cluster(ca: &ClusterCa, count: usize) -> Vec<Node> {
    let first = start(ca, "n0", Options::default());
    let seed = first.mesh.local_addr();
    let mut nodes = vec![first];
    for i in 1..count {
        nodes.push(start(
            ca,
            &format!("n{i}"),
            Options {
                seeds: vec![seed],
                ..Options::default()
            },
        ));
    }
    nodes
}

fn usage(calls: u64) -> NodeUsage {
    NodeUsage {
        calls,
        emergency_calls: calls / 3,
        registered_subscribers: calls * 10,
        registered_contacts: calls * 12,
        ..NodeUsage::default()
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for an event matching `wanted` on `events` (received on `node`'s runtime).
fn wait_event(
    node: &Node,
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    node.runtime.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Ok(event) if wanted(&event) => return event,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    })
}

/// Kills a node as `kill -9` would: its tasks stop, nothing more is sent.
fn kill(node: Node) {
    let Node { runtime, mesh, .. } = node;
    drop(runtime);
    drop(mesh);
}

fn converge(nodes: &[Node], calls: &[u64]) {
    for (node, calls) in nodes.iter().zip(calls) {
        node.mesh.set_local_usage(usage(*calls));
    }
    for (node, calls) in nodes.iter().zip(calls) {
        wait_until("the snapshot shows the node's own share", || {
            node.mesh.snapshot().local == usage(*calls)
        });
    }
    let total: u64 = calls.iter().sum();
    for node in nodes {
        wait_until(
            &format!(
                "{} counts {total} calls on {} nodes",
                node.mesh.node_id(),
                nodes.len()
            ),
            || {
                let aggregate = node.mesh.aggregate();
                aggregate.calls == total && aggregate.nodes_live == nodes.len()
            },
        );
        let aggregate = node.mesh.aggregate();
        assert_eq!(
            aggregate.emergency_calls,
            calls.iter().map(|c| c / 3).sum::<u64>()
        );
        assert_eq!(aggregate.registered_subscribers, total * 10);
        assert_eq!(aggregate.registered_contacts, total * 12);
    }
}

#[test]
fn three_nodes_converge_to_the_exact_sum() {
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = cluster(&ca, 3);
    converge(&nodes, &[3, 4, 5]);
    // Every node is connected to both others, with transport figures.
    for node in &nodes {
        wait_until("a full mesh", || node.mesh.stats().peers_connected == 2);
        let infos = node.mesh.nodes();
        assert_eq!(infos.len(), 3);
        assert!(infos[0].view.local && infos[0].link.is_none());
        for info in &infos[1..] {
            let link = info.link.as_ref().expect("connected");
            assert!(link.bytes_sent > 0 && link.bytes_received > 0);
            assert!(link.rtt < Duration::from_secs(1));
        }
    }
    // A change is pushed again.
    nodes[1].mesh.set_local_usage(usage(40));
    for node in &nodes {
        wait_until("the change is everywhere", || {
            node.mesh.aggregate().calls == 48
        });
    }
    let stats = nodes[0].mesh.stats();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert!(stats.frames_received["record"].frames > 0);
    assert!(stats.udp.tx_bytes > 0);
}

#[test]
fn five_nodes_seeded_with_the_same_list_converge_to_the_exact_sum() {
    let ca = ClusterCa::generate("test").unwrap();
    // Every node gets every address as a seed, its own included (it is skipped).
    let sockets: Vec<std::net::UdpSocket> = (0..5)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    drop(sockets);
    let nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            start(
                &ca,
                &format!("n{i}"),
                Options {
                    listen: *addr,
                    seeds: addrs.clone(),
                    ..Options::default()
                },
            )
        })
        .collect();
    converge(&nodes, &[1, 2, 3, 4, 5]);
    for node in &nodes {
        wait_until("a full mesh", || node.mesh.stats().peers_connected == 4);
        let stats = node.mesh.stats();
        assert!(
            !stats.errors.contains_key("own_identity"),
            "a node dialed itself: {:?}",
            stats.errors
        );
    }
}

#[test]
fn a_killed_node_goes_suspect_then_expired_and_out_of_the_sum() {
    let ca = ClusterCa::generate("test").unwrap();
    let mut nodes = cluster(&ca, 3);
    converge(&nodes, &[3, 4, 5]);
    let mut events = nodes[0].mesh.subscribe();
    let killed_at = Instant::now();
    kill(nodes.pop().unwrap());
    wait_event(
        &nodes[0],
        &mut events,
        "n2 suspect",
        |event| matches!(event, Event::NodeSuspect { node_id } if node_id == "n2"),
    );
    let suspect_after = killed_at.elapsed();
    // Still counted while suspect.
    let aggregate = nodes[0].mesh.aggregate();
    assert!(
        aggregate.calls == 12 || aggregate.nodes_expired > 0,
        "{aggregate:?}"
    );
    wait_event(
        &nodes[0],
        &mut events,
        "n2 expired",
        |event| matches!(event, Event::NodeExpired { node_id, .. } if node_id == "n2"),
    );
    let expired_after = killed_at.elapsed();
    assert!(
        suspect_after >= Duration::from_millis(800),
        "{suspect_after:?}"
    );
    assert!(
        expired_after >= Duration::from_millis(2_800),
        "{expired_after:?}"
    );
    for node in &nodes {
        wait_until("n2 is out of the sum", || node.mesh.aggregate().calls == 7);
    }
}

#[test]
fn a_restart_with_the_next_incarnation_replaces_the_old_record_and_is_never_counted_twice() {
    let ca = ClusterCa::generate("test").unwrap();
    let mut nodes = cluster(&ca, 3);
    converge(&nodes, &[3, 5, 100]);
    let seed = nodes[0].mesh.local_addr();
    // Watch every aggregate n0 publishes while n2 restarts.
    let mut watch = nodes[0].mesh.watch_aggregate();
    let highest = nodes[0].runtime.spawn(async move {
        let mut highest = 0;
        while watch.changed().await.is_ok() {
            highest = highest.max(watch.borrow_and_update().calls);
        }
        highest
    });
    let mut events = nodes[0].mesh.subscribe();
    let old = nodes.pop().unwrap();
    let port = old.mesh.local_addr();
    let cert = old.cert.clone();
    kill(old);
    let restarted = start(
        &ca,
        "n2",
        Options {
            listen: port,
            seeds: vec![seed],
            incarnation: 2,
            cert: Some(cert),
            ..Options::default()
        },
    );
    restarted.mesh.set_local_usage(usage(200));
    nodes.push(restarted);
    wait_event(
        &nodes[0],
        &mut events,
        "n2 restarted",
        |event| matches!(event, Event::NodeRestarted { node_id, incarnation: 2 } if node_id == "n2"),
    );
    for node in &nodes {
        wait_until("the new record replaces the old one", || {
            node.mesh.aggregate().calls == 208
        });
        let n2 = node
            .mesh
            .nodes()
            .into_iter()
            .find(|info| info.view.node_id == "n2")
            .unwrap();
        assert_eq!(n2.view.incarnation, 2);
    }
    // The links to the restarted node come back: its stale connections are replaced, or
    // reset by the new process (same key, same stateless-reset key).
    for node in &nodes {
        wait_until("a full mesh again", || {
            node.mesh.stats().peers_connected == 2
        });
    }
    // Give any stale relay of the old record its chance to arrive, then check it never
    // counted twice. What could bring it to n0 now is n1's anti-entropy (the old process is
    // gone): wait until n0 has handled two more rounds of digests from each peer (fanout 2
    // of 2 peers: each peer digests n0 every round) and heard n1's record advance twice, all
    // sent after every node held incarnation 2.
    let digests = |node: &Node| {
        node.mesh
            .stats()
            .frames_received
            .get("digest")
            .map_or(0, |count| count.frames)
    };
    let n1_seq = |node: &Node| {
        node.mesh
            .nodes()
            .into_iter()
            .find(|info| info.view.node_id == "n1")
            .map_or(0, |info| info.view.seq)
    };
    let (digests_before, seq_before) = (digests(&nodes[0]), n1_seq(&nodes[0]));
    wait_until("two anti-entropy rounds at n0 after the restart", || {
        digests(&nodes[0]) >= digests_before + 4 && n1_seq(&nodes[0]) >= seq_before + 2
    });
    assert_eq!(nodes[0].mesh.aggregate().calls, 208);
    let Node { runtime, mesh, .. } = nodes.remove(0);
    drop(mesh);
    let highest = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), highest)
            .await
            .expect("watch task ends")
            .unwrap()
    });
    assert_eq!(
        highest, 208,
        "old and new incarnation were never summed (108 + 200)"
    );
}

#[test]
fn a_graceful_shutdown_takes_the_node_out_of_the_sum_at_once() {
    let ca = ClusterCa::generate("test").unwrap();
    let mut nodes = cluster(&ca, 3);
    converge(&nodes, &[3, 4, 5]);
    let mut events = nodes[0].mesh.subscribe();
    let Node { runtime, mesh, .. } = nodes.pop().unwrap();
    let started = Instant::now();
    runtime.block_on(mesh.clone().shutdown());
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_event(
        &nodes[0],
        &mut events,
        "n2 left",
        |event| matches!(event, Event::NodeLeft { node_id } if node_id == "n2"),
    );
    // Out of the sum well before suspicion (1 s) could have taken it out.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    for node in &nodes {
        wait_until("n2 is out of the sum", || node.mesh.aggregate().calls == 7);
        let n2 = node
            .mesh
            .nodes()
            .into_iter()
            .find(|info| info.view.node_id == "n2")
            .unwrap();
        assert_eq!(n2.view.state, NodeState::Left);
        assert!(!n2.view.counted);
    }
    assert_eq!(mesh.aggregate().nodes_left, 1);
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused_and_counted() {
    let ca = ClusterCa::generate("ours").unwrap();
    let intruders = ClusterCa::generate("theirs").unwrap();
    let a = start(&ca, "a", Options::default());
    a.mesh.set_local_usage(usage(3));

    // A whole node of the other CA dials us: it refuses our certificate, we never see it.
    let x = start(
        &intruders,
        "x",
        Options {
            seeds: vec![a.mesh.local_addr()],
            ..Options::default()
        },
    );
    x.mesh.set_local_usage(usage(1_000));
    wait_until("x's dial is refused", || {
        x.mesh
            .stats()
            .errors
            .get("dial_tls_refused")
            .copied()
            .unwrap_or(0)
            >= 1
    });

    // A client that trusts our CA but presents the other CA's certificate: our server
    // refuses it.
    let cert = intruders.issue("x2").unwrap();
    let client = tls::client_config(ca.cert_pem(), &cert.cert_pem, &cert.key_pem, 1_000).unwrap();
    let refused = a.runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(client, a.mesh.local_addr(), tls::SEED_SERVER_NAME)
            .unwrap();
        match connecting.await {
            // TLS 1.3: the client finishes before the server has checked its certificate;
            // the server's refusal then closes the connection.
            Ok(connection) => tokio::time::timeout(WAIT, connection.closed())
                .await
                .is_ok(),
            Err(_) => true,
        }
    });
    assert!(refused);
    wait_until("our server counts the refusal", || {
        a.mesh
            .stats()
            .errors
            .get("handshake_tls_refused")
            .copied()
            .unwrap_or(0)
            >= 1
    });
    let stats = a.mesh.stats();
    assert_eq!(stats.peers_connected, 0);
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(a.mesh.aggregate().calls, 3);
    assert_eq!(a.mesh.nodes().len(), 1);
    assert_eq!(x.mesh.aggregate().calls, 1_000);
}

#[test]
fn a_peer_presenting_this_nodes_own_id_is_refused_and_raises_the_alarm() {
    let ca = ClusterCa::generate("test").unwrap();
    let a = start(&ca, "a", Options::default());
    let mut events = a.mesh.subscribe();
    let _twin = start(
        &ca,
        "a",
        Options {
            seeds: vec![a.mesh.local_addr()],
            ..Options::default()
        },
    );
    wait_event(&a, &mut events, "the duplicate-node alarm", |event| {
        matches!(event, Event::DuplicateNode { .. })
    });
    assert!(a.mesh.stats().errors["own_identity"] >= 1);
    assert_eq!(a.mesh.stats().peers_connected, 0);
}

#[test]
fn a_bad_frame_closes_that_connection_only_and_is_counted() {
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = cluster(&ca, 2);
    converge(&nodes, &[3, 4]);
    let a = &nodes[0];
    let send_and_wait_close = |node_id: &str, datagram: Vec<u8>| {
        let cert = ca.issue(node_id).unwrap();
        let client =
            tls::client_config(ca.cert_pem(), &cert.cert_pem, &cert.key_pem, 1_000).unwrap();
        a.runtime.block_on(async {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let connection = endpoint
                .connect_with(client, a.mesh.local_addr(), tls::SEED_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            connection.send_datagram(datagram.into()).unwrap();
            let error = tokio::time::timeout(WAIT, connection.closed())
                .await
                .expect("the node closes the connection");
            match error {
                quinn::ConnectionError::ApplicationClosed(close) => close.reason.to_vec(),
                other => panic!("{other}"),
            }
        })
    };
    // Not a frame at all.
    let reason = send_and_wait_close("evil-1", vec![0xff, 1, 2, 3]);
    assert_eq!(reason, b"unknown_version");
    // A well-formed record of another node, pushed directly: a forgery.
    let forged = Frame::Record(Record {
        node_id: "n1".into(),
        incarnation: 9,
        seq: 9,
        flags: Default::default(),
        address: String::new(),
        license_serial: 0,
        usage: usage(1_000_000),
        aor_seq: 0,
        wall_time: Default::default(),
    });
    let reason = send_and_wait_close("evil-2", encode(&forged));
    assert_eq!(reason, b"forged_record");
    let stats = a.mesh.stats();
    assert_eq!(stats.errors["unknown_version"], 1);
    assert_eq!(stats.errors["forged_record"], 1);
    // The honest peer stayed connected and counted as before.
    assert_eq!(stats.peers_connected, 1);
    assert_eq!(stats.connections_replaced, 0);
    assert_eq!(a.mesh.aggregate().calls, 7);
    let n1 = a
        .mesh
        .nodes()
        .into_iter()
        .find(|i| i.view.node_id == "n1")
        .unwrap();
    assert!(n1.link.is_some());
}

#[test]
fn a_and_c_connected_only_through_b_converge() {
    let ca = ClusterCa::generate("test").unwrap();
    let b = start(&ca, "b", Options::default());
    // A and C advertise no address: nobody can dial them, so they stay apart.
    let leaf = |id| {
        start(
            &ca,
            id,
            Options {
                seeds: vec![b.mesh.local_addr()],
                advertise: Some(String::new()),
                ..Options::default()
            },
        )
    };
    let a = leaf("a");
    let c = leaf("c");
    a.mesh.set_local_usage(usage(3));
    b.mesh.set_local_usage(usage(4));
    c.mesh.set_local_usage(usage(5));
    for node in [&a, &b, &c] {
        wait_until("the sum through b", || node.mesh.aggregate().calls == 12);
    }
    assert_eq!(a.mesh.stats().peers_connected, 1);
    assert_eq!(c.mesh.stats().peers_connected, 1);
    let c_at_a = a
        .mesh
        .nodes()
        .into_iter()
        .find(|info| info.view.node_id == "c")
        .unwrap();
    assert!(c_at_a.link.is_none(), "a and c are not connected");
    // A change on C reaches A by anti-entropy through B.
    c.mesh.set_local_usage(usage(50));
    wait_until("c's change reaches a", || a.mesh.aggregate().calls == 57);
}

#[test]
fn a_license_set_on_one_node_is_offered_to_the_others() {
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = cluster(&ca, 3);
    converge(&nodes, &[1, 1, 1]);
    let mut events = nodes[2].mesh.subscribe();
    let document = b"-----BEGIN TOLLGATE LICENSE-----\nserial 7\n".to_vec();
    nodes[0].mesh.set_license(7, document.clone()).unwrap();
    let offered = wait_event(&nodes[2], &mut events, "the license offered", |event| {
        matches!(event, Event::LicenseOffered { .. })
    });
    let Event::LicenseOffered { from, armored } = offered else {
        unreachable!()
    };
    assert_eq!(from, "n0");
    assert_eq!(armored, document);
    wait_until("the serial is advertised", || {
        nodes[2].mesh.aggregate().license_serial_max == 7
    });
    assert!(nodes[0].mesh.set_license(8, vec![0; 1 << 20]).is_err());
}

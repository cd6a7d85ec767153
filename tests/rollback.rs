//! Issue 16: the rollback watermark lives on the other nodes too. Two meshed agents hold
//! license serial 9; node 2 is stopped, its `license.state` deleted, and restarted: an
//! upload of serial 8 on node 2 is refused `ROLLBACK`. And a node that never held serial 9
//! (bound to another host, so it cannot install it) still refuses serial 8 once a peer
//! advertises 9: the watermark is learned from the peers' mesh records.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, write_config};
use tollgate_license::{LicenseSpec, SigningKey};
use tollgate_mesh::ClusterCa;

const AUTH: Option<(&str, &str)> = Some(("ops", "pw"));

/// Node `name`'s certificate and a config that meshes it with `seeds`; `extra` appended.
fn node(
    dir: &Path,
    ca: &ClusterCa,
    name: &str,
    seeds: &[String],
    extra: &str,
) -> std::path::PathBuf {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let cert = ca.issue(name).unwrap();
    std::fs::write(node_dir.join("node.pem"), &cert.cert_pem).unwrap();
    std::fs::write(node_dir.join("node.key"), &cert.key_pem).unwrap();
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let config = write_config(
        &node_dir,
        &format!(
            "[mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nseeds = [{}]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            seeds.join(", "),
            ca_file.display(),
            node_dir.join("node.pem").display(),
            node_dir.join("node.key").display(),
        ),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("node_id = \"test-node\"", &format!("node_id = \"{name}\""));
    std::fs::write(&config, text).unwrap();
    config
}

fn license(vendor: &SigningKey, serial: u64, hosts: &str) -> String {
    let spec = format!(
        "license_key = \"MESH_1\"\ncustomer = \"Mesh Telecom\"\nkind = \"perpetual\"\nserial = {serial}\n\
         lease_days = 14\n{hosts}\n[limits]\ncalls = 8\n"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let doc = LicenseSpec::parse(&spec)
        .unwrap()
        .to_document(
            vendor.key_id(),
            tollgate_events::WallTime::from_unix_ms(now),
        )
        .unwrap();
    tollgate_license::sign(&doc, vendor).unwrap()
}

fn upload(agent: &Agent, text: &str) -> (u16, String) {
    common::http(
        agent.rt.admin,
        "PUT",
        "/api/v1/license",
        AUTH,
        text.as_bytes(),
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `agent` sees `peer` live in its cluster view.
fn sees(agent: &Agent, peer: &str) -> bool {
    let (_, body) = agent.get("/api/v1/cluster");
    serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
        v["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node_id"] == peer && n["state"] == "live")
        })
    })
}

fn serial_in_force(agent: &Agent) -> Option<u64> {
    let (_, body) = common::http(agent.rt.admin, "GET", "/api/v1/license", AUTH, b"");
    serde_json::from_str::<serde_json::Value>(&body).ok()?["license"]["serial"].as_u64()
}

#[test]
fn a_node_that_lost_its_license_state_refuses_an_older_serial_known_to_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("rollback cluster").unwrap();
    let vendor = SigningKey::generate();
    let admin = tollgate_agent::auth::hash_password("pw").unwrap();
    let extra = |host: &str| {
        format!(
            "\n[license]\ntrusted_keys = [\"{}\"]\nhost_id = \"{host}\"\n\n[[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n",
            vendor.public_key().to_file_string().trim()
        )
    };
    let one = Agent::start(
        &dir.path().join("n1/state"),
        &node(dir.path(), &ca, "n1", &[], &extra("host-1")),
    );
    let seed = vec![one.rt.mesh.expect("a mesh address").to_string()];
    let config2 = node(dir.path(), &ca, "n2", &seed, &extra("host-2"));
    let state2 = dir.path().join("n2/state");
    let two = Agent::start(&state2, &config2);

    // Serial 9 on both nodes (uploaded on node 1, carried by the mesh).
    let (status, body) = upload(&one, &license(&vendor, 9, ""));
    assert_eq!(status, 200, "{body}");
    wait_until("serial 9 on node 2", || serial_in_force(&two) == Some(9));

    // Node 2 stopped, its license.state deleted, restarted: serial 8 is a rollback.
    let (status, log) = two.stop();
    assert!(status.success(), "{log}");
    std::fs::remove_file(state2.join("license.state")).unwrap();
    let two = Agent::start(&state2, &config2);
    wait_until("node 2 to see node 1", || sees(&two, "n1"));
    let (status, body) = upload(&two, &license(&vendor, 8, ""));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("ROLLBACK"), "{body}");

    // Node 2 stopped again and everything about the license deleted; node 1 then holds
    // serial 10, bound to node 1's host, which node 2 cannot install: only node 1's mesh
    // record tells node 2 that serial 10 exists.
    let (status, log) = two.stop();
    assert!(status.success(), "{log}");
    for file in ["license.state", "license.current", "license.previous"] {
        let _ = std::fs::remove_file(state2.join(file));
    }
    let (status, body) = upload(&one, &license(&vendor, 10, "host_ids = [\"host-1\"]\n"));
    assert_eq!(status, 200, "{body}");
    let two = Agent::start(&state2, &config2);
    wait_until("node 2 to see node 1", || sees(&two, "n1"));
    wait_until("node 2 to learn serial 10 from node 1's record", || {
        let (_, body) = common::http(two.rt.admin, "GET", "/api/v1/license", AUTH, b"");
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|v| v["watermarks"]["serial_learned_max"] == 10)
    });
    assert_eq!(
        serial_in_force(&two),
        None,
        "node 2 cannot install serial 10"
    );
    let (status, body) = upload(&two, &license(&vendor, 9, ""));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("ROLLBACK"), "{body}");
    let (status, body) = upload(&two, &license(&vendor, 11, ""));
    assert_eq!(status, 200, "a newer serial is accepted: {body}");
}

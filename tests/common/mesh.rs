//! Mesh helpers shared by the cluster tests: a cluster CA in a temp dir, node certificates
//! and configs that mesh agents on loopback, and reads of `GET /api/v1/cluster`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate_mesh::ClusterCa;

use super::{Agent, write_config};

/// A temp dir with a cluster CA in it, and the nodes' configs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ca: ClusterCa,
    pub ca_file: PathBuf,
}

impl Fixture {
    pub fn new(ca_name: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(ca_name).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        Fixture { dir, ca, ca_file }
    }

    /// Node `name`'s state dir.
    pub fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("state")
    }

    /// Node `name`'s certificate and a config that meshes it with `seeds` on loopback.
    pub fn node(&self, name: &str, seeds: &[String], extra: &str) -> PathBuf {
        self.node_at("127.0.0.1:0", name, seeds, extra)
    }

    pub fn node_at(&self, listen: &str, name: &str, seeds: &[String], extra: &str) -> PathBuf {
        node_config_at(
            listen,
            self.dir.path(),
            &self.ca,
            &self.ca_file,
            name,
            seeds,
            extra,
        )
    }

    /// Starts nodes `names` in order, each seeded with the first one's mesh address.
    pub fn start(&self, names: &[&str], extra: &str) -> Vec<Agent> {
        let mut nodes: Vec<Agent> = Vec::new();
        for name in names {
            let seeds: Vec<String> = nodes
                .first()
                .map(|first| vec![first.rt.mesh.unwrap().to_string()])
                .unwrap_or_default();
            let config = self.node(name, &seeds, extra);
            nodes.push(Agent::start(&self.state(name), &config));
        }
        nodes
    }
}

/// Writes node `name`'s certificate files and a config that meshes it with `seeds`, the
/// mesh listening on `listen`.
pub fn node_config_at(
    listen: &str,
    dir: &Path,
    ca: &ClusterCa,
    ca_file: &Path,
    name: &str,
    seeds: &[String],
    extra: &str,
) -> PathBuf {
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let cert = ca.issue(name).unwrap();
    std::fs::write(node_dir.join("node.pem"), &cert.cert_pem).unwrap();
    std::fs::write(node_dir.join("node.key"), &cert.key_pem).unwrap();
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let config = write_config(
        &node_dir,
        &format!(
            "[mesh]\nenabled = true\nlisten = \"{listen}\"\nseeds = [{}]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
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

/// `GET /api/v1/cluster`, parsed.
pub fn cluster(agent: &Agent) -> serde_json::Value {
    let (status, body) = agent.get("/api/v1/cluster");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `GET /api/v1/cluster` until `pred` holds (panics after `secs`); returns that view.
pub fn wait_cluster(
    agent: &Agent,
    what: &str,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = cluster(agent);
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {c:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `id`'s entry in a cluster view (`Null` when not listed).
pub fn node_entry(view: &serde_json::Value, id: &str) -> serde_json::Value {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[allow(unused_imports)]
pub use super::wait_next_snapshot;

//! `tollgate status`: usage from a running agent's admin API, as a table or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use tollgate_agent::http::UsageReport;

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the agent's JSON (`GET /api/v1/usage`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Admin API of the agent to ask (`https://…` when it has `[admin] tls_cert`).
    #[arg(long, env = "TOLLGATE_ADMIN", default_value = "http://127.0.0.1:7173")]
    admin: String,
    /// Trust the certificates in this PEM file (the CA that signed the agent's admin
    /// certificate, or a self-signed certificate itself) for an `https` admin API.
    #[arg(long, value_name = "FILE", env = "TOLLGATE_ADMIN_CA")]
    ca: Option<PathBuf>,
    /// Do not verify the admin API's certificate (like `curl -k`).
    #[arg(long)]
    insecure: bool,
    /// Find the agent through its state directory (`agent.json`) instead of `--admin`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// User for the license details, when the agent has `[[admin.users]]`.
    #[arg(long, env = "TOLLGATE_USER")]
    user: Option<String>,
    /// Password of `--user`.
    #[arg(long, env = "TOLLGATE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

pub fn run(args: StatusArgs) -> Result<(), Failure> {
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca {
        for cert in read_certificates(path)? {
            client = client.add_root_certificate(cert);
        }
    }
    if args.insecure {
        client = client.danger_accept_invalid_certs(true);
    }
    let base = match &args.state_dir {
        Some(dir) => {
            let path = dir.join(tollgate_agent::state::RUNTIME_FILE);
            let text = std::fs::read(&path)
                .with_context(|| format!("no running agent found: cannot read {}", path.display()))
                .map_err(Failure::Unreachable)?;
            let info: tollgate_agent::RuntimeInfo = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not valid", path.display()))
                .map_err(Failure::Runtime)?;
            if !info.admin_tls {
                format!("http://{}", info.admin)
            } else {
                // The agent's own address, from its runtime file: the certificate is checked
                // against --ca, or else against the agent's certificate file itself (a
                // self-signed certificate, or a chain file with its issuer), but not for a
                // name, since the address is an IP the certificate need not name.
                if args.ca.is_none()
                    && let Some(cert) = &info.admin_tls_cert
                {
                    for cert in read_certificates(cert)? {
                        client = client.add_root_certificate(cert);
                    }
                }
                client = client.danger_accept_invalid_hostnames(true);
                format!("https://{}", info.admin)
            }
        }
        None => args.admin.trim_end_matches('/').to_owned(),
    };
    let url = format!("{base}/api/v1/usage");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let client = client
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot set up the HTTP client: {e}")))?;
    let get = |url: String| {
        let mut request = client.get(url).timeout(std::time::Duration::from_secs(5));
        if let Some(user) = &args.user {
            request = request.basic_auth(user, args.password.as_deref());
        }
        request.send()
    };
    let (body, license, cluster, ledger) = rt.block_on(async {
        let resp = get(url.clone())
            .await
            .with_context(|| format!("cannot reach the agent at {base}"))
            .map_err(Failure::Unreachable)?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| Failure::Unreachable(e.into()))?;
        if !status.is_success() {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "{url}: HTTP {status}: {body}"
            )));
        }
        let cluster = match get(format!("{base}/api/v1/cluster")).await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        // The license needs viewer credentials when the agent has users; usage does not.
        let license = match get(format!("{base}/api/v1/license")).await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok().map(Ok),
            Ok(r) => Some(Err(format!(
                "license details: HTTP {} (pass --user/--password)",
                r.status()
            ))),
            Err(e) => Some(Err(format!("license details: {e}"))),
        };
        let ledger = match get(format!("{base}/api/v1/ledger")).await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        Ok((body, license, cluster, ledger))
    })?;
    if args.json {
        let mut usage: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("unexpected answer from {url}"))
            .map_err(Failure::Runtime)?;
        if let Some(Ok(license)) = license {
            usage["license"] = license;
        }
        if let Some(cluster) = cluster {
            usage["cluster"] = cluster;
        }
        if let Some(ledger) = ledger {
            usage["ledger"] = ledger;
        }
        println!("{usage}");
        return Ok(());
    }
    let report: UsageReport = serde_json::from_str(&body)
        .with_context(|| format!("unexpected answer from {url}"))
        .map_err(Failure::Runtime)?;
    print!("{}", render(&report, &base));
    if let Some(l) = &ledger {
        print!("{}", render_ledger(l));
    }
    if let Some(c) = &cluster {
        print!("{}", render_cluster(c));
    }
    match license {
        Some(Ok(l)) => print!("{}", render_license(&l)),
        Some(Err(e)) => println!("{e}"),
        None => {}
    }
    Ok(())
}

/// Every certificate of a PEM file, for `--ca`.
fn read_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, Failure> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::Config)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{}: not a PEM certificate bundle", path.display()))
        .map_err(Failure::Config)?;
    if certs.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The node key and the ledger's head.
pub fn render_ledger(l: &serde_json::Value) -> String {
    let head = match l["head"]["seq"].as_u64() {
        Some(seq) => format!("seq {seq}"),
        None => "no entry yet".to_owned(),
    };
    format!(
        "node key: {}   ledger: {head}\n",
        l["node_public_key"].as_str().unwrap_or("?")
    )
}

/// The cluster part: the aggregate and one line per node.
pub fn render_cluster(c: &serde_json::Value) -> String {
    let mut s = String::new();
    let u = &c["usage"];
    let _ = writeln!(
        s,
        "\ncluster: {} calls ({} emergency), {} registered subscribers, {} subscribers; {} live, {} suspect, {} expired",
        u["calls"],
        u["emergency_calls"],
        u["registered_subscribers"],
        u["subscribers"],
        c["nodes_live"],
        c["nodes_suspect"],
        c["nodes_expired"]
    );
    let _ = writeln!(
        s,
        "{:<16}{:<9}{:>9}{:>12}{:>10}{:>10}  address",
        "node", "state", "calls", "registered", "age ms", "rtt ms"
    );
    for n in c["nodes"].as_array().into_iter().flatten() {
        let rtt = n["rtt_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let _ = writeln!(
            s,
            "{:<16}{:<9}{:>9}{:>12}{:>10}{:>10}  {}",
            n["node_id"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["calls"].to_string(),
            n["registered_subscribers"].to_string(),
            n["age_ms"].to_string(),
            rtt,
            n["address"].as_str().unwrap_or("")
        );
    }
    s
}

/// The license part of the table: state, each limit with usage and percentage.
pub fn render_license(l: &serde_json::Value) -> String {
    let mut s = String::new();
    let e = &l["evaluation"];
    let doc = &l["license"];
    let status = e["status"].as_str().unwrap_or("?");
    if doc.is_null() {
        let _ = writeln!(s, "\nlicense: none   state {status}");
        // Nothing in force because a candidate was refused: say which and why.
        if let Some(reason) = l["refused"]["reason"].as_str() {
            let _ = writeln!(
                s,
                "refused {} from {}: {reason}",
                l["refused"]["code"].as_str().unwrap_or("?"),
                l["refused"]["source"].as_str().unwrap_or("?"),
            );
        }
    } else {
        let _ = writeln!(
            s,
            "\nlicense {} ({}, {}, serial {})   state {status}   mode {}",
            doc["license_key"].as_str().unwrap_or("?"),
            doc["customer"].as_str().unwrap_or("?"),
            doc["kind"].as_str().unwrap_or("?"),
            doc["serial"],
            e["mode"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(
        s,
        "{:<26}{:>12}{:>12}{:>8}  state",
        "", "usage", "limit", "%"
    );
    for name in ["calls", "subscribers", "registered_subscribers"] {
        let l = &e["limits"][name];
        let limit = l["limit"]
            .as_u64()
            .map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        let pct = l["usage_pct"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}"));
        let _ = writeln!(
            s,
            "{:<26}{:>12}{:>12}{:>8}  {}",
            name.replace('_', " "),
            l["usage"].to_string(),
            limit,
            pct,
            l["status"].as_str().unwrap_or("?")
        );
    }
    if let Some(days) = e["days_to_expiry"].as_i64() {
        let _ = writeln!(s, "expires in {days} days");
    }
    if let Some(days) = e["days_to_lease_end"].as_i64() {
        let _ = writeln!(s, "signature lease ends in {days} days");
    }
    if let Some(text) = l["explanation"].as_str() {
        for line in text.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// The human table.
pub fn render(r: &UsageReport, base: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tollgate agent {}  (up {})  {base}",
        r.node_id,
        human_duration(r.uptime_s)
    );
    let _ = writeln!(s, "{:<26}{:>12}{:>12}", "", "now", "peak");
    let _ = writeln!(s, "{:<26}{:>12}{:>12}", "calls", r.calls, r.peak_calls);
    let _ = writeln!(s, "{:<26}{:>12}", "  of which emergency", r.emergency_calls);
    let _ = writeln!(
        s,
        "{:<26}{:>12}{:>12}",
        "registered subscribers", r.registered_subscribers, r.peak_registered_subscribers
    );
    let _ = writeln!(
        s,
        "{:<26}{:>12}",
        "registered contacts", r.registered_contacts
    );
    let reported = match r.subscribers_reported_at_ms {
        Some(at) => format!(
            "  (reported {} ago)",
            human_duration(r.timestamp_ms.saturating_sub(at) / 1000)
        ),
        None => "  (never reported)".to_owned(),
    };
    let _ = writeln!(
        s,
        "{:<26}{:>12}{reported}",
        "provisioned subscribers", r.subscribers
    );
    let i = &r.ingest;
    let _ = writeln!(
        s,
        "ingest: {} datagrams, {} events, {} malformed, {} duplicate, {} lost, {} kernel drops",
        i.datagrams, i.events, i.malformed, i.duplicate_datagrams, i.lost_datagrams, i.kernel_drops
    );
    s
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

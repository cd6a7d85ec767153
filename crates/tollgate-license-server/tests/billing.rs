//! The billing view and the node view over the admin API, on SQLite and PostgreSQL: usage
//! reports sent by the real client with hand-chosen intervals and peaks, and the monthly
//! rows (JSON and CSV) compared with figures computed by hand.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use support::pg::PgCluster;

use support::{CUSTOMER, Harness, LICENSE_KEY, MINUTE};
use tollgate_license::timestamp::DAY_MS;
use tollgate_license::timestamp::parse_rfc3339;
use tollgate_license_client::{UsageFigures, UsageReport};
use tollgate_license_server::admin_api::Role;
use tollgate_license_server::{Database, admin};

fn at(text: &str) -> u64 {
    parse_rfc3339(text).unwrap().unix_ms()
}

struct Sent {
    node: &'static str,
    since: Option<&'static str>,
    to: &'static str,
    serial: u64,
    /// Cluster-wide figures (`None`: a node outside a mesh, its own figures count).
    cluster: bool,
    peak_calls: u64,
    peak_registered: u64,
    subscribers: u64,
    peak_emergency: u64,
}

fn report(s: &Sent) -> UsageReport {
    let figures = UsageFigures {
        calls: 10,
        emergency_calls: 0,
        subscribers: s.subscribers,
        registered_subscribers: 5,
        peak_calls: s.peak_calls,
        peak_emergency_calls: s.peak_emergency,
        peak_registered_subscribers: s.peak_registered,
    };
    UsageReport {
        node_id: s.node.into(),
        agent_version: "0.1.0".into(),
        timestamp: parse_rfc3339(s.to).unwrap(),
        since: s.since.map(|t| parse_rfc3339(t).unwrap()),
        license_serial: Some(s.serial),
        node: if s.cluster {
            UsageFigures {
                calls: 1,
                ..UsageFigures::default()
            }
        } else {
            figures
        },
        cluster: s.cluster.then_some(figures),
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    }
}

async fn scenario(mut h: Harness) {
    // calls = 100 at serial 1; raised to 200 at serial 2.
    h.create_license("perpetual", None);
    h.act_ok(|ctx, store| {
        admin::update_license(
            ctx,
            store,
            LICENSE_KEY,
            &format!(
                "license_key = \"{LICENSE_KEY}\"\ncustomer = \"{CUSTOMER}\"\nkind = \"perpetual\"\n\
                 serial = 2\n[limits]\ncalls = 200\n"
            ),
        )
    });
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.act_ok(|ctx, store| admin::add_user(ctx, store, "vera", Role::Viewer, "viewer password"));
    let client = h.client(&token);
    let base = Sent {
        node: "sp1",
        since: None,
        to: "",
        serial: 1,
        cluster: true,
        peak_calls: 0,
        peak_registered: 5,
        subscribers: 500,
        peak_emergency: 0,
    };
    let sent = [
        // March. Over 100 from 10:00 to 10:02 (sp1) and 10:01 to 10:03 (sp2): 3 minutes.
        Sent {
            since: Some("2030-03-20T10:00:00Z"),
            to: "2030-03-20T10:02:00Z",
            peak_calls: 120,
            peak_registered: 40,
            ..base
        },
        Sent {
            node: "sp2",
            since: Some("2030-03-20T10:01:00Z"),
            to: "2030-03-20T10:03:00Z",
            peak_calls: 110,
            peak_emergency: 3,
            ..base
        },
        // Within the limit, and a node outside a mesh (its own figures).
        Sent {
            since: Some("2030-03-20T10:02:00Z"),
            to: "2030-03-20T10:04:00Z",
            cluster: false,
            peak_calls: 90,
            ..base
        },
        // An agent's first report: a peak, but no interval to count minutes in.
        Sent {
            since: None,
            to: "2030-03-22T08:00:00Z",
            peak_calls: 150,
            ..base
        },
        // Across the month boundary, over 100: 2 minutes in March, 3 in April.
        Sent {
            node: "sp2",
            since: Some("2030-03-31T23:58:00Z"),
            to: "2030-04-01T00:03:00Z",
            peak_calls: 101,
            peak_registered: 10,
            ..base
        },
        // April, under serial 2's limit of 200: not over.
        Sent {
            since: Some("2030-04-02T00:00:00Z"),
            to: "2030-04-02T00:02:00Z",
            serial: 2,
            peak_calls: 150,
            peak_registered: 10,
            ..base
        },
    ];
    for s in &sent {
        // Received 5 s after the agent read its figures.
        h.clock.store(at(s.to) + 5_000, Ordering::SeqCst);
        client.send_usage(&report(s)).await.unwrap();
    }
    // sp2's last report is a day older than sp1's: sp2 fell silent.
    h.advance(20 * MINUTE);

    let http = h.raw();
    let login: Value = http
        .post(format!("{}api/v1/admin/login", h.url()))
        .json(&json!({ "name": "vera", "password": "viewer password" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = login["token"].as_str().unwrap().to_owned();
    let get = |path: &str| {
        http.get(format!("{}api/v1/admin/{path}", h.url()))
            .bearer_auth(&session)
            .send()
    };

    let response = get("billing/monthly?from=2030-03&to=2030-04")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["from"].clone(), body["to"].clone()),
        (json!("2030-03"), json!("2030-04"))
    );
    let figure = |peak: u64, limit: Option<u64>, over: u64| json!({ "peak": peak, "limit": limit, "over_limit_minutes": over });
    assert_eq!(
        body["months"],
        json!([
            {
                "month": "2030-03", "customer": CUSTOMER, "license_key": LICENSE_KEY,
                "nodes": 2, "reports": 5,
                "calls": figure(150, Some(100), 5),
                "registered_subscribers": figure(40, None, 0),
                "subscribers": figure(500, None, 0),
                "peak_emergency_calls": 3,
            },
            {
                "month": "2030-04", "customer": CUSTOMER, "license_key": LICENSE_KEY,
                "nodes": 2, "reports": 2,
                "calls": figure(150, Some(200), 3),
                "registered_subscribers": figure(10, None, 0),
                "subscribers": figure(500, None, 0),
                "peak_emergency_calls": 0,
            },
        ])
    );

    let response = get("billing/monthly?from=2030-03&to=2030-04&format=csv")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "{}\r\n\
             2030-03,{CUSTOMER},{LICENSE_KEY},2,5,150,100,5,40,,0,500,,0,3\r\n\
             2030-04,{CUSTOMER},{LICENSE_KEY},2,2,150,200,3,10,,0,500,,0,0\r\n",
            tollgate_license_server::billing::CSV_HEADER
        )
    );
    // One month, one license; an unknown license has no rows; bad months are 400.
    let body: Value = get(&format!(
        "billing/monthly?from=2030-04&to=2030-04&license={LICENSE_KEY}"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["months"].as_array().unwrap().len(), 1);
    let body: Value = get("billing/monthly?from=2030-03&to=2030-04&license=NOPE")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["months"], json!([]));
    for bad in ["from=2030-13", "from=2030-05&to=2030-04", "format=xml"] {
        let response = get(&format!("billing/monthly?{bad}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // The node view: sp2 has not reported for a day (silent after 15 minutes by default),
    // sp1 for 20 minutes.
    let body: Value = get("nodes").await.unwrap().json().await.unwrap();
    assert_eq!(body["silent_after_s"], 900);
    let nodes: Vec<(String, bool, u64)> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_owned(),
                n["silent"].as_bool().unwrap(),
                n["silent_for_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            ("sp1".into(), true, 20 * MINUTE),
            ("sp2".into(), true, DAY_MS - MINUTE + 20 * MINUTE)
        ]
    );
    assert_eq!(body["nodes"][0]["license_serial"], 2);
    assert_eq!(body["nodes"][0]["client_address"], "127.0.0.1");
    let body: Value = get("nodes?silent=true&silent_after_s=1500")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let silent: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        silent,
        ["sp2"],
        "with a 25-minute threshold, only sp2 is silent"
    );
    let response = get("nodes?silent_after_s=0").await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Only vendor users see any of it.
    let response = http
        .get(format!("{}api/v1/admin/billing/monthly", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_billing_and_silent_nodes_on_sqlite() {
    scenario(Harness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_billing_and_silent_nodes_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("billing");
    scenario(Harness::start_on(Some(Database::Postgres(url)))).await;
}

//! The admin HTTP API (`/api/v1/admin/…`) over real TLS: vendor users added by the admin
//! action the CLI's `admin user add` runs, login and bearer sessions, roles, the
//! same actions as the CLI with the real actor in the audit log. Run on SQLite and on a
//! private PostgreSQL cluster.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::pg::PgCluster;
use support::{CUSTOMER, Harness, LICENSE_KEY};
use tollgate_license_server::Database;
use tollgate_license_server::admin;
use tollgate_license_server::admin_api::Role;

const OTHER_KEY: &str = "ACME_0002";

fn usage_report(h: &Harness, serial: u64) -> tollgate_license_client::UsageReport {
    tollgate_license_client::UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: tollgate_events::WallTime::from_unix_ms(h.now()),
        since: None,
        license_serial: Some(serial),
        node: tollgate_license_client::UsageFigures::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    }
}

struct Api<'a> {
    h: &'a Harness,
    http: reqwest::Client,
}

impl Api<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}api/v1/admin/{path}", self.h.url())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            "login",
            None,
            Some(json!({ "name": name, "password": password })),
        )
        .await
    }
}

async fn scenario(h: &Harness) {
    let alice = h.act_ok(|ctx, store| {
        admin::add_user(ctx, store, "alice", Role::Admin, "correct horse battery")
    });
    assert_eq!(
        (alice.name.as_str(), alice.role.as_str()),
        ("alice", "admin")
    );
    h.act_ok(|ctx, store| admin::add_user(ctx, store, "bob", Role::Viewer, "viewer password"));
    let short = h
        .act(|ctx, store| admin::add_user(ctx, store, "carol", Role::Admin, "short"))
        .unwrap_err();
    assert!(
        short.is_user_error() && short.to_string().contains("8 to"),
        "{short}"
    );
    let users = h.read(|db| db.users());
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(users.iter().all(|u| u.disabled_at_ms.is_none()));

    let api = Api { h, http: h.raw() };
    let (status, body) = api.login("alice", "wrong password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "bad_credentials");
    let (status, body) = api.login("nobody", "whatever it is").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("bad_credentials"))
    );
    let (status, body) = api.login("alice", "correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "admin");
    let alice = body["token"].as_str().unwrap().to_owned();
    let (_, body) = api.login("bob", "viewer password").await;
    let bob = body["token"].as_str().unwrap().to_owned();

    // No session, a bad one, a viewer asking for a change.
    let (status, body) = api
        .call(reqwest::Method::GET, "customers", None, None)
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("missing_token"))
    );
    let (status, body) = api.get("customers", "tgs_forged").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("bad_session"))
    );
    let (status, body) = api
        .post("customers", &bob, json!({ "name": CUSTOMER }))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    let (status, body) = api.get("whoami", &bob).await;
    assert_eq!((status, &body["role"]), (StatusCode::OK, &json!("viewer")));

    // The admin's actions: customer, license, token (shown once), revocation.
    let (status, body) = api
        .post("customers", &alice, json!({ "name": CUSTOMER }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post("customers", &alice, json!({ "name": CUSTOMER }))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("exists"))
    );
    let spec = format!(
        "license_key = \"{LICENSE_KEY}\"\ncustomer = \"{CUSTOMER}\"\nkind = \"perpetual\"\n\
         serial = 1\nvalid_from = \"2029-01-01T00:00:00Z\"\n[limits]\ncalls = 100\n"
    );
    let (status, body) = api.post("licenses", &alice, json!({ "spec": spec })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["serial"].as_u64(), &body["contract"]),
        (Some(1), &json!("active"))
    );
    let (status, body) = api
        .post("licenses", &alice, json!({ "spec": "not = [toml" }))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (status, body) = api
        .post(
            "tokens",
            &alice,
            json!({ "license": LICENSE_KEY, "allow": ["127.0.0.1"], "note": "sp1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let token_id = body["id"].as_i64().unwrap();
    let lease = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(lease.license_key, LICENSE_KEY);

    let (status, body) = api.get(&format!("licenses/{LICENSE_KEY}"), &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"][0]["last_used_from"], "127.0.0.1", "{body}");
    assert!(
        body["tokens"][0].get("token").is_none(),
        "a token is never shown again"
    );
    let (_, body) = api.get("licenses", &bob).await;
    assert_eq!(body["licenses"][0]["limits"]["calls"], 100, "{body}");
    let (status, body) = api.get("keys", &bob).await;
    assert_eq!(
        (status, &body["keys"][0]["signing"]),
        (StatusCode::OK, &json!(true))
    );

    // Suspending one license: a viewer may not; the admin's suspension refuses that
    // license's leases (403 `suspended`, as a customer's does) while usage reports are
    // still stored, and leaves the customer's other licenses alone; a resume signs again.
    let other_spec = spec.replace(LICENSE_KEY, OTHER_KEY);
    let (status, body) = api
        .post("licenses", &alice, json!({ "spec": other_spec }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post(
            "tokens",
            &alice,
            json!({ "license": OTHER_KEY, "allow": ["127.0.0.1"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut other = h.client_config(body["token"].as_str().unwrap());
    other.license_key = OTHER_KEY.into();
    let other = tollgate_license_client::LicenseClient::new(other).unwrap();
    let suspend = format!("licenses/{LICENSE_KEY}/suspend");
    let (status, body) = api.post(&suspend, &bob, json!({})).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    assert_eq!(
        h.read(|db| db.license_required(LICENSE_KEY))
            .suspended_at_ms,
        None
    );
    let (status, body) = api.post(&suspend, &alice, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["suspended"],
            &body["was_suspended"],
            &body["customer"]
        ),
        (&json!(true), &json!(false), &json!(CUSTOMER))
    );
    let (status, body) = api
        .post("licenses/NO_SUCH_KEY/suspend", &alice, json!({}))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("not_found")),
        "{body}"
    );
    let (_, body) = api.get(&format!("licenses/{LICENSE_KEY}"), &bob).await;
    assert!(body["suspended_at"].is_string(), "{body}");
    h.advance(11 * support::MINUTE);
    match h.client(&token).fetch_lease().await {
        Err(tollgate_license_client::FetchError::Http { status, error, .. }) => {
            assert_eq!((status, error.as_deref()), (403, Some("suspended")));
        }
        other => panic!("a suspended license's lease: {other:?}"),
    }
    h.client(&token)
        .send_usage(&usage_report(h, lease.serial))
        .await
        .unwrap();
    other.fetch_lease().await.unwrap();
    assert!(
        h.audit(Some(LICENSE_KEY))
            .iter()
            .any(|a| a.action == "lease.refused" && a.detail.contains("\"error\":\"suspended\"")),
        "{:?}",
        h.audit(Some(LICENSE_KEY))
    );
    let resume = format!("licenses/{LICENSE_KEY}/resume");
    let (status, _) = api.post(&resume, &bob, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api.post(&resume, &alice, json!({})).await;
    assert_eq!(
        (status, &body["suspended"], &body["was_suspended"]),
        (StatusCode::OK, &json!(false), &json!(true)),
        "{body}"
    );
    let resumed = h.client(&token).fetch_lease().await.unwrap();
    assert!(
        resumed.serial > lease.serial,
        "{} after {}",
        resumed.serial,
        lease.serial
    );
    assert_eq!(
        h.read(|db| db.license_required(LICENSE_KEY))
            .suspended_at_ms,
        None
    );

    let (status, body) = api
        .post(
            &format!("licenses/{LICENSE_KEY}/contract"),
            &alice,
            json!({ "contract": "lapsed" }),
        )
        .await;
    assert_eq!(
        (status, &body["previous"]),
        (StatusCode::OK, &json!("active")),
        "{body}"
    );
    let (status, body) = api
        .post(&format!("tokens/{token_id}/revoke"), &alice, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["revoked_at"].is_string());
    let refused = h.client(&token).fetch_lease().await.unwrap_err();
    assert_eq!(refused.status(), Some(403));

    // The audit log names the real actor, through the API and the CLI alike.
    let (_, body) = api.get("audit?limit=50", &bob).await;
    let actions: Vec<(String, String)> = body["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap().into(),
                a["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    for action in [
        "customer.add",
        "license.create",
        "token.issue",
        "contract.set",
        "token.revoke",
        "license.suspend",
        "license.resume",
    ] {
        assert!(
            actions.contains(&("user:alice".into(), action.into())),
            "{action} by user:alice in {actions:?}"
        );
    }
    assert!(
        actions
            .iter()
            .any(|(actor, action)| actor == "user:alice" && action == "admin.login")
    );
    assert!(
        h.audit(None)
            .iter()
            .any(|a| a.actor == "user:alice" && a.action == "token.revoke"),
        "the API's changes are in the same audit log"
    );

    // Logging out ends the session; disabling a user ends theirs.
    let (status, _) = api.post("logout", &alice, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.get("customers", &alice).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.act_ok(|ctx, store| admin::disable_user(ctx, store, "bob"));
    let (status, _) = api.get("customers", &bob).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.login("bob", "viewer password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_with_users_sessions_and_roles_on_sqlite() {
    let mut h = Harness::start();
    scenario(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_with_users_sessions_and_roles_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("admin_api");
    let mut h = Harness::start_on(Some(Database::Postgres(url)));
    scenario(&h).await;
    h.stop().await;
}

/// Failed logins are throttled per client address like the agent's admin API: after the
/// limit, 429 with `Retry-After` (even with the right password, which is not checked);
/// other addresses are unaffected; released after the pause; counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_admin_logins_are_throttled_per_address_with_retry_after() {
    use tollgate_license_server::throttle::{BAD_TOKEN_LIMIT, THROTTLE_MS};
    let mut h = Harness::start();
    h.act_ok(|ctx, store| admin::add_user(ctx, store, "alice", Role::Admin, "right password"));
    let api = Api {
        h: &h,
        http: h.raw(),
    };
    for _ in 0..=BAD_TOKEN_LIMIT {
        let (status, body) = api.login("alice", "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let response = api
        .http
        .post(api.url("login"))
        .json(&json!({ "name": "alice", "password": "right password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "throttled");

    // Another address logs in.
    let other = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(h.ca()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let other = Api { h: &h, http: other };
    let (status, body) = other.login("alice", "right password").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Released after the pause (the harness clock).
    h.advance(THROTTLE_MS);
    let (status, body) = api.login("alice", "right password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = h
        .raw()
        .get(format!("{}metrics", h.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tollgate_license_server_refusals_total{reason=\"login_throttled\"} 1",
        "tollgate_license_server_refusals_total{reason=\"bad_credentials\"} 11",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    h.stop().await;
}

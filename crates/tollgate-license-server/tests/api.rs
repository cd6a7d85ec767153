//! The license server in process, over real TLS on loopback, driven by the real license
//! client and the admin actions (what the CLI and the admin API run): tokens, addresses,
//! contracts, rotation, proxies, reports.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::{CUSTOMER, ConnectProxy, Harness, LICENSE_KEY, MINUTE, T0};
use tollgate_events::WallTime;
use tollgate_license::timestamp::DAY_MS;
use tollgate_license::{Kind, TrustedKeys, VerifyError};
use tollgate_license_client::{
    ClientConfig, Contract, FetchError, LicenseClient, UsageFigures, UsageReport,
};
use tollgate_license_server::KeyRing;
use tollgate_license_server::admin;

fn http_error(result: Result<impl std::fmt::Debug, FetchError>) -> (u16, String, &'static str) {
    match result {
        Err(e @ FetchError::Http { .. }) => {
            let reason = e.reason();
            match e {
                FetchError::Http { status, error, .. } => {
                    (status, error.unwrap_or_default(), reason)
                }
                _ => unreachable!(),
            }
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test]
async fn fetch_with_a_valid_token_gets_a_freshly_signed_lease() {
    let h = Harness::start();
    h.create_license("subscription", Some(T0 + 5 * DAY_MS));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.advance(MINUTE);

    let lease = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(lease.license_key, LICENSE_KEY);
    assert_eq!(lease.serial, 2, "created as serial 1, renewed once");
    assert!(lease.renewed);
    assert_eq!(lease.contract, Contract::Active);
    assert_eq!(lease.kind, Kind::Subscription);
    assert_eq!(lease.issued_at.unix_ms(), h.now());
    assert_eq!(lease.signature_valid_until.unix_ms(), h.now() + 14 * DAY_MS);
    assert_eq!(
        lease.valid_until.map(WallTime::unix_ms),
        Some(h.now() + 30 * DAY_MS),
        "rolled forward"
    );

    // The agent's side: it verifies with the vendor's public key.
    let verified = tollgate_license::verify(
        lease.license.as_bytes(),
        &TrustedKeys::single(h.first_key.clone()),
    )
    .unwrap();
    assert_eq!(verified.document().serial, 2);
    assert_eq!(verified.document().limits.calls, Some(100));
    assert_eq!(verified.document().customer, CUSTOMER);

    // Stored: current document and history, audit entry, token use.
    let record = h.read(|db| db.license_required(LICENSE_KEY));
    assert_eq!(record.serial, 2);
    assert_eq!(
        record.document, lease.license,
        "the current document is stored"
    );
    let history: Vec<(u64, String)> = h
        .read(|db| db.documents(LICENSE_KEY))
        .into_iter()
        .map(|d| (d.serial, d.cause))
        .collect();
    assert!(
        history.contains(&(1, "created".into())) && history.contains(&(2, "lease".into())),
        "{history:?}"
    );
    assert!(
        h.audit(Some(LICENSE_KEY))
            .iter()
            .any(|a| a.action == "lease.signed")
    );
    let tokens = h.read(|db| db.tokens(None));
    assert_eq!(tokens[0].last_used_from.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn a_token_used_from_another_source_address_is_403() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let mut config = h.client_config(&token);
    config.bind_address = Some(loopback(2));
    let result = LicenseClient::new(config).unwrap().fetch_lease().await;
    match &result {
        Err(FetchError::Http { message, .. }) => {
            assert!(
                message.as_deref().unwrap_or("").contains("127.0.0.2"),
                "{result:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        http_error(result),
        (403, "source_address_not_allowed".into(), "http_403")
    );

    // A network binding admits the whole network.
    let (_, wide) = h.issue_token(&["127.0.0.0/8"]);
    let mut config = h.client_config(&wide);
    config.bind_address = Some(loopback(2));
    assert!(
        LicenseClient::new(config)
            .unwrap()
            .fetch_lease()
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_license_key_is_404_even_with_a_valid_token() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let mut config = h.client_config(&token);
    config.license_key = "NO_SUCH_KEY".into();
    let result = LicenseClient::new(config).unwrap().fetch_lease().await;
    assert_eq!(
        http_error(result),
        (404, "unknown_license".into(), "http_404")
    );
}

#[tokio::test]
async fn a_bad_or_missing_token_is_401() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let result = h.client("tg_not_a_real_token").fetch_lease().await;
    assert_eq!(http_error(result), (401, "bad_token".into(), "http_401"));

    let url = format!("{}api/v1/licenses/{LICENSE_KEY}/lease", h.url());
    let response = h.raw().post(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "missing_token");
    // No audit entry for unauthenticated requests.
    assert!(!h.audited("lease.refused"));
}

#[tokio::test]
async fn a_revoked_token_is_403() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (id, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    client.fetch_lease().await.unwrap();
    let revoked = h.act_ok(|ctx, store| admin::revoke_token(ctx, store, id));
    assert_eq!(revoked.revoked_at_ms, Some(h.now()));
    assert_eq!(
        http_error(client.fetch_lease().await),
        (403, "token_revoked".into(), "http_403")
    );
    assert!(h.audited("token.revoke") && h.audited("lease.refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_rotate_with_a_grace_period_on_sqlite() {
    let h = Harness::start();
    support::tokens::token_expiry_and_rotation(&h).await;
}

#[tokio::test]
async fn a_lapsed_subscription_is_not_rolled_forward_and_ends_at_valid_until() {
    let h = Harness::start();
    let valid_until = T0 + 5 * DAY_MS;
    h.create_license("subscription", Some(valid_until));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    let previous =
        h.act_ok(|ctx, store| admin::set_contract(ctx, store, LICENSE_KEY, Contract::Lapsed));
    assert_eq!(previous, Contract::Active);

    h.advance(DAY_MS);
    let lease = client.fetch_lease().await.unwrap();
    assert_eq!(lease.contract, Contract::Lapsed);
    assert_eq!(
        lease.valid_until.map(WallTime::unix_ms),
        Some(valid_until),
        "not rolled forward"
    );
    assert_eq!(
        lease.signature_valid_until.unix_ms(),
        h.now() + 14 * DAY_MS,
        "lease renewed"
    );

    // At valid_until the license is over: nothing left to sign.
    h.advance(valid_until - h.now());
    assert_eq!(
        http_error(client.fetch_lease().await),
        (403, "contract_lapsed".into(), "http_403")
    );

    // Back to current: renewed and rolled forward at once.
    h.act_ok(|ctx, store| admin::set_contract(ctx, store, LICENSE_KEY, Contract::Active));
    let lease = client.fetch_lease().await.unwrap();
    assert_eq!(lease.contract, Contract::Active);
    assert_eq!(
        lease.valid_until.map(WallTime::unix_ms),
        Some(h.now() + 30 * DAY_MS)
    );
}

#[tokio::test]
async fn key_rotation_signs_new_leases_with_the_new_key_and_old_documents_still_verify() {
    let h = Harness::start();
    h.create_license("subscription", Some(T0 + 5 * DAY_MS));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    let old = client.fetch_lease().await.unwrap();
    assert_eq!(old.key_id, h.first_key.key_id());

    // A scheduled rotation: nothing changes until the activation time.
    let activation = WallTime::from_unix_ms(T0 + 60 * MINUTE);
    let (new_key, _, _) = h.act_ok(|ctx, store| admin::rotate_key(ctx, store, activation));
    let new_id = new_key.key_id().to_string();
    let ring = KeyRing::load(&h.config.key_dir).unwrap();
    assert_eq!(ring.entries().len(), 2);
    assert_eq!(
        ring.signing_key(WallTime::from_unix_ms(h.now()))
            .unwrap()
            .key
            .key_id(),
        h.first_key.key_id(),
        "scheduled, not signing yet"
    );
    h.advance(30 * MINUTE);
    let before = client.fetch_lease().await.unwrap();
    assert_eq!(before.key_id, h.first_key.key_id());

    h.advance(30 * MINUTE);
    let new = client.fetch_lease().await.unwrap();
    assert_eq!(new.key_id.to_string(), new_id);
    assert!(new.serial > before.serial);

    // Agents trusting both keys accept both documents; agents trusting only the old key
    // keep their old document and refuse the new one until they trust the new key.
    let both = h.trusted_all();
    assert_eq!(both.len(), 2);
    tollgate_license::verify(old.license.as_bytes(), &both).unwrap();
    tollgate_license::verify(new.license.as_bytes(), &both).unwrap();
    let only_old = TrustedKeys::single(h.first_key.clone());
    tollgate_license::verify(old.license.as_bytes(), &only_old).unwrap();
    assert!(matches!(
        tollgate_license::verify(new.license.as_bytes(), &only_old),
        Err(VerifyError::UnknownKey(_))
    ));
    let ring = KeyRing::load(&h.config.key_dir).unwrap();
    assert_eq!(
        ring.signing_key(WallTime::from_unix_ms(h.now()))
            .unwrap()
            .key
            .key_id()
            .to_string(),
        new_id
    );
    assert!(h.audited("key.rotate"));

    // The public keys endpoint lists both, the new one signing.
    let body: serde_json::Value = h
        .raw()
        .get(format!("{}api/v1/keys", h.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signing: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["signing"] == true)
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(signing, [new_id.as_str()]);
}

#[tokio::test]
async fn fetch_through_an_http_connect_proxy() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    // The token is bound to the proxy's egress address, as it must be behind a proxy.
    let (_, token) = h.issue_token(&["127.0.0.3"]);
    assert_eq!(
        http_error(h.client(&token).fetch_lease().await).0,
        403,
        "not from this host directly"
    );

    let proxy = ConnectProxy::start(Some(loopback(3)), false).await;
    let mut config = h.client_config(&token);
    config.proxy = Some(proxy.url());
    let client = LicenseClient::new(config).unwrap();
    let lease = client.fetch_lease().await.unwrap();
    assert_eq!(lease.license_key, LICENSE_KEY);
    assert!(proxy.count() >= 1, "the proxy carried the request");
    let tokens = h.read(|db| db.tokens(None));
    assert_eq!(tokens[0].last_used_from.as_deref(), Some("127.0.0.3"));
}

#[tokio::test]
async fn proxy_failures_are_classified_as_proxy() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);

    let refusing = ConnectProxy::start(None, true).await;
    let mut config = h.client_config(&token);
    config.proxy = Some(refusing.url());
    let error = LicenseClient::new(config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "proxy", "{error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = h.client_config(&token);
    config.proxy = Some(format!("http://127.0.0.1:{port}").parse().unwrap());
    let error = LicenseClient::new(config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "proxy", "{error}");
}

#[tokio::test]
async fn tls_connect_and_timeout_failures_are_classified() {
    let mut h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);

    // The server's self-signed certificate is not trusted without the CA bundle.
    let mut config = h.client_config(&token);
    config.ca_bundle = None;
    let error = LicenseClient::new(config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "tls", "{error}");

    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ClientConfig::new(
        format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port())
            .parse()
            .unwrap(),
        LICENSE_KEY,
        &token,
    );
    config.system_proxy = false;
    config.timeout = Duration::from_millis(300);
    let error = LicenseClient::new(config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "timeout", "{error}");
    drop(silent);

    // The server is down.
    let client = h.client(&token);
    h.stop().await;
    let error = client.fetch_lease().await.unwrap_err();
    assert_eq!(error.reason(), "connect", "{error}");
}

#[tokio::test]
async fn usage_reports_are_stored_and_listed() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    for (node, calls) in [("sp1", 10), ("sp2", 7)] {
        let report = UsageReport {
            node_id: node.into(),
            agent_version: "0.1.0".into(),
            timestamp: WallTime::from_unix_ms(h.now()),
            since: Some(WallTime::from_unix_ms(h.now() - 5 * MINUTE)),
            license_serial: Some(1),
            node: UsageFigures {
                calls,
                emergency_calls: 1,
                subscribers: 18,
                registered_subscribers: 5,
                peak_calls: calls + 2,
                peak_emergency_calls: 1,
                peak_registered_subscribers: 6,
            },
            cluster: Some(UsageFigures {
                calls: 17,
                ..UsageFigures::default()
            }),
            admissions_denied: Default::default(),
            ledger: Vec::new(),
        };
        client.send_usage(&report).await.unwrap();
        h.advance(1000);
    }
    let reports = h.read(|db| db.reports(Some(LICENSE_KEY), 20));
    assert_eq!(reports.len(), 2);
    let newest = &reports[0];
    assert_eq!(newest.report.node_id, "sp2");
    assert_eq!(
        (
            newest.report.node.calls,
            newest.report.node.peak_calls,
            newest.report.node.emergency_calls,
            newest.report.node.subscribers,
            newest.report.node.registered_subscribers,
            newest.report.node.peak_registered_subscribers,
        ),
        (7, 9, 1, 18, 5, 6)
    );
    assert_eq!(newest.report.cluster.map(|c| c.calls), Some(17));
    assert_eq!(newest.report.agent_version, "0.1.0");
    assert_eq!(newest.client_address, "127.0.0.1");

    // A malformed report is refused with a reason, and not stored.
    let url = format!("{}api/v1/licenses/{LICENSE_KEY}/usage", h.url());
    let response = h
        .raw()
        .post(&url)
        .bearer_auth(&token)
        .body(r#"{"node_id": ""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    let too_big = h
        .raw()
        .post(&url)
        .bearer_auth(&token)
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    assert_eq!(h.read(|db| db.reports(None, 20)).len(), 2);
}

#[tokio::test]
async fn leases_are_idempotent_within_the_reuse_window() {
    let h = Harness::start();
    h.create_license("subscription", Some(T0 + 5 * DAY_MS));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    let first = client.fetch_lease().await.unwrap();
    h.advance(3 * MINUTE);
    let again = client.fetch_lease().await.unwrap();
    assert_eq!(again.license, first.license, "the same bytes");
    assert_eq!(again.serial, first.serial);
    assert!(first.renewed && !again.renewed);

    // Concurrent requests from a cluster's nodes: one serial.
    let leases = futures_join(&client, 5).await;
    assert!(leases.iter().all(|l| l.serial == first.serial));

    h.advance(7 * MINUTE);
    let later = client.fetch_lease().await.unwrap();
    assert_eq!(
        later.serial,
        first.serial + 1,
        "a new serial once the window has passed"
    );
    assert!(h.audited("lease.reused"));
}

async fn futures_join(
    client: &LicenseClient,
    n: usize,
) -> Vec<tollgate_license_client::LeaseResponse> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.push(tokio::spawn(
            async move { client.fetch_lease().await.unwrap() },
        ));
    }
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap());
    }
    leases
}

#[tokio::test]
async fn the_database_survives_a_restart_and_serials_keep_growing() {
    let mut h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.advance(11 * MINUTE); // past the reuse window of the document signed at creation
    let first = h.client(&token).fetch_lease().await.unwrap();
    h.stop().await;
    h.advance(DAY_MS);
    h.restart();
    let second = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(second.serial, first.serial + 1);
    let history = h.read(|db| db.documents(LICENSE_KEY));
    assert_eq!(
        history.iter().filter(|d| d.cause == "lease").count(),
        2,
        "{history:?}"
    );
}

#[tokio::test]
async fn health_and_unknown_endpoints() {
    let h = Harness::start();
    let raw = h.raw();
    let ok = raw.get(format!("{}healthz", h.url())).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "ok");
    let missing = raw.get(format!("{}nope", h.url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let get_lease = raw
        .get(format!("{}api/v1/licenses/K/lease", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(get_lease.status(), 405);
}

#[tokio::test]
async fn a_readable_signing_key_refuses_the_start() {
    let mut h = Harness::start();
    h.stop().await;
    let key = std::fs::read_dir(&h.config.key_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .unwrap()
        .path();
    support::set_mode(&key, 0o644);
    let error = tollgate_license_server::LicenseServer::start(&h.config).unwrap_err();
    assert!(error.is_config(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("mode 0600") && text.contains("0644"),
        "{text}"
    );
    assert!(!text.contains("tollgate-ed25519-private"));
}

#[tokio::test]
async fn admin_refuses_bad_input_with_user_errors() {
    let h = Harness::start();
    let errors = [
        h.act(|ctx, store| admin::set_contract(ctx, store, "NOPE", Contract::Lapsed).map(|_| ())),
        h.act(|ctx, store| admin::revoke_token(ctx, store, 42).map(|_| ())),
        h.act(|ctx, store| admin::suspend_customer(ctx, store, "Nobody", true).map(|_| ())),
    ];
    for error in errors {
        let error = error.unwrap_err();
        assert!(error.is_user_error(), "{error}");
    }
    h.create_license("perpetual", None);
    let error = h
        .act(|ctx, store| {
            admin::issue_token(ctx, store, LICENSE_KEY, &["10.0.0.1/8".into()], None, None)
        })
        .unwrap_err();
    assert!(
        error.is_user_error() && error.to_string().contains("did you mean 10.0.0.0/8"),
        "{error}"
    );
    let error = h
        .act(|ctx, store| admin::issue_token(ctx, store, LICENSE_KEY, &[], None, None))
        .unwrap_err();
    assert!(error.is_user_error(), "{error}");
    let error = h
        .act(|ctx, store| admin::add_customer(ctx, store, CUSTOMER))
        .unwrap_err();
    assert!(error.is_user_error() && error.to_string().contains("already exists"));
    // A license for a customer that was not added.
    let error = h
        .create_license_from_spec(
            "license_key = \"X\"\ncustomer = \"Nobody\"\nkind = \"perpetual\"\nserial = 1\n",
        )
        .unwrap_err();
    assert!(
        error.is_user_error() && error.to_string().contains("customer add"),
        "{error}"
    );
}

#[tokio::test]
async fn license_update_raises_the_serial_and_keeps_history() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let spec = format!(
        "license_key = \"{LICENSE_KEY}\"\ncustomer = \"{CUSTOMER}\"\nkind = \"perpetual\"\n\
         serial = 1\n[limits]\ncalls = 500\n"
    );
    let (document, previous) =
        h.act_ok(|ctx, store| admin::update_license(ctx, store, LICENSE_KEY, &spec));
    assert_eq!((document.serial, previous), (2, 1));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let lease = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(lease.serial, 2, "signed moments ago: reused");
    assert!(!lease.renewed);
    let verified = tollgate_license::verify(lease.license.as_bytes(), &h.trusted_all()).unwrap();
    assert_eq!(verified.document().limits.calls, Some(500));
}

/// Issue 17: 1,000 bad tokens were answered one WARN line each. Now an address sending more
/// than the limit of missing or unknown tokens per minute gets 429 with Retry-After before
/// any database work; other addresses are unaffected; /metrics counts it all.
#[tokio::test]
async fn bad_tokens_from_one_address_are_throttled_with_retry_after() {
    use tollgate_license_server::throttle::BAD_TOKEN_LIMIT;
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1", "127.0.0.2"]);
    let url = format!("{}api/v1/licenses/{LICENSE_KEY}/lease", h.url());
    let raw = h.raw();
    for _ in 0..BAD_TOKEN_LIMIT {
        let response = raw.post(&url).bearer_auth("tg_guess").send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    // The one over the limit is still answered 401; from then on, 429.
    let response = raw.post(&url).bearer_auth("tg_guess").send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = raw.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        response.status(),
        429,
        "the address is throttled, whatever the token"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "throttled");

    // Another address with a good token is served.
    let mut config = h.client_config(&token);
    config.bind_address = Some(loopback(2));
    let lease = LicenseClient::new(config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap();
    assert_eq!(lease.license_key, LICENSE_KEY);

    // And released after the pause (the harness clock).
    h.advance(61_000);
    assert!(h.client(&token).fetch_lease().await.is_ok());

    let metrics = raw
        .get(format!("{}metrics", h.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tollgate_license_server_refusals_total{reason=\"bad_token\"} 11",
        "tollgate_license_server_refusals_total{reason=\"throttled\"} 1",
        "tollgate_license_server_leases_total{result=\"refused\"} 11",
        "tollgate_license_server_db_seconds_count{operation=\"lease\"} 13",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("tollgate_license_server_leases_total{result=\"reused\"} 2"),
        "{metrics}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A suspended customer's leases answer 403 `suspended` (audited, counted); usage reports
/// are still stored; a resume signs again.
#[tokio::test]
async fn a_suspended_customer_gets_403_suspended_until_resumed() {
    let h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let client = h.client(&token);
    let before = client.fetch_lease().await.unwrap();

    let before_suspend = h.act_ok(|ctx, store| admin::suspend_customer(ctx, store, CUSTOMER, true));
    assert_eq!(before_suspend.suspended_at_ms, None);
    let customer = h.read(|db| db.customer(CUSTOMER)).unwrap();
    assert_eq!(customer.suspended_at_ms, Some(h.now()));
    h.advance(11 * MINUTE);
    assert_eq!(
        http_error(client.fetch_lease().await),
        (403, "suspended".into(), "http_403")
    );
    let report = UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: WallTime::from_unix_ms(h.now()),
        since: None,
        license_serial: Some(before.serial),
        node: UsageFigures::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    };
    client.send_usage(&report).await.unwrap();
    assert!(h.audited("customer.suspend"));
    assert!(
        h.audit(None)
            .iter()
            .any(|a| a.action == "lease.refused" && a.detail.contains("\"error\":\"suspended\"")),
        "{:?}",
        h.audit(None)
    );

    h.act_ok(|ctx, store| admin::suspend_customer(ctx, store, CUSTOMER, false));
    let after = client.fetch_lease().await.unwrap();
    assert_eq!(after.serial, before.serial + 1);
    assert!(h.audited("customer.resume"));
    assert_eq!(
        h.read(|db| db.customer(CUSTOMER)).unwrap().suspended_at_ms,
        None
    );
}

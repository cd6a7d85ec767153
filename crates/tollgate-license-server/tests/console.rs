//! The vendor console (`/console/`) in a real browser: the server in process (real TLS),
//! a customer, a license, a usage report from node sp1 (silent since), an admin and a
//! viewer; `tests/browser/console.test.mjs` drives Debian's chromium through
//! playwright-core and checks each view.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (`npm ci` there).
//! When one is missing the test says so loudly and passes, unless `TOLLGATE_BROWSER_TESTS=1`
//! (CI), where it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{CUSTOMER, Harness, LICENSE_KEY, MINUTE};
use tollgate_events::WallTime;
use tollgate_license_client::{UsageFigures, UsageReport};
use tollgate_license_server::admin;
use tollgate_license_server::admin_api::Role;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn missing_prerequisite() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("`node` is not on PATH".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("tests/browser/node_modules is missing (cd tests/browser && npm ci)".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_administers_customers_licenses_tokens_and_shows_usage() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("TOLLGATE_BROWSER_TESTS").as_deref() != Ok("1"),
            "TOLLGATE_BROWSER_TESTS=1 but the console browser test cannot run: {why}"
        );
        eprintln!(
            "\n*** SKIPPED the console browser test: {why}\n*** to run it: install chromium and \
             run `npm ci` in tests/browser; TOLLGATE_BROWSER_TESTS=1 makes it fail instead\n"
        );
        return;
    }
    let mut h = Harness::start();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.act_ok(|ctx, store| admin::add_user(ctx, store, "alice", Role::Admin, "alice password"));
    h.act_ok(|ctx, store| admin::add_user(ctx, store, "vera", Role::Viewer, "vera password"));
    let report = UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: WallTime::from_unix_ms(h.now()),
        since: Some(WallTime::from_unix_ms(h.now() - 2 * MINUTE)),
        license_serial: Some(1),
        node: UsageFigures {
            calls: 90,
            peak_calls: 120,
            ..UsageFigures::default()
        },
        cluster: None,
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    };
    h.client(&token).send_usage(&report).await.unwrap();
    h.advance(30 * MINUTE);

    let url = format!("{}console/", h.url());
    let tokens_out = h.dir.path().join("console-tokens");
    let tokens_path = tokens_out.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("console.test.mjs")
            .current_dir(browser_dir())
            .env("TOLLGATE_CONSOLE_URL", url)
            .env("TOLLGATE_ADMIN_USER", "alice")
            .env("TOLLGATE_ADMIN_PASSWORD", "alice password")
            .env("TOLLGATE_VIEWER_USER", "vera")
            .env("TOLLGATE_VIEWER_PASSWORD", "vera password")
            .env("TOLLGATE_CUSTOMER", CUSTOMER)
            .env("TOLLGATE_LICENSE_KEY", LICENSE_KEY)
            .env("TOLLGATE_CHROMIUM", CHROMIUM)
            .env("TOLLGATE_TOKENS_OUT", &tokens_path)
            .output()
            .expect("start node")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "console.test.mjs:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // What the browser did is in the database, by its user.
    let audit = h.audit(None);
    for action in [
        "customer.suspend",
        "customer.resume",
        "license.update",
        "token.issue",
        "token.rotate",
    ] {
        assert!(
            audit
                .iter()
                .any(|a| a.actor == "user:alice" && a.action == action),
            "{action} by user:alice"
        );
    }
    // The tokens the page showed: the issued one (bound to 192.0.2.7 and 10.0.0.0/8, so
    // refused from here for its address, which proves it is known and not expired yet) and
    // its rotation; both are refused `token_expired` once the rotation's 2 hours are over for
    // the old one, never for the new one before 2031.
    let text = std::fs::read_to_string(&tokens_out).expect("the page wrote its tokens");
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 2, "{text}");
    let reason = |token: &str| {
        let token = token.to_owned();
        let client = h.client(&token);
        async move {
            match client.fetch_lease().await {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("{e:?}"),
            }
        }
    };
    for token in &shown {
        let answer = reason(token).await;
        assert!(answer.contains("source_address_not_allowed"), "{answer}");
    }
    h.advance(2 * 60 * MINUTE + 1);
    let old = reason(shown[0]).await;
    assert!(old.contains("token_expired"), "{old}");
    let new = reason(shown[1]).await;
    assert!(new.contains("source_address_not_allowed"), "{new}");
    h.stop().await;
}

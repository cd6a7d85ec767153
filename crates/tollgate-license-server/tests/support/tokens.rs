//! Token expiry and rotation, end to end: one scenario run on SQLite (`tests/api.rs`) and
//! on PostgreSQL (`tests/postgres.rs`) against a real server.

use tollgate_license_client::{FetchError, UsageFigures, UsageReport};
use tollgate_license_server::admin::{self, AdminError};
use tollgate_license_server::store::TokenState;

use super::{Harness, LICENSE_KEY, MINUTE};

const HOUR: u64 = 60 * MINUTE;

/// The refusal's status and error word, or `(200, "ok")`.
fn answer<T>(result: Result<T, FetchError>) -> (u16, String) {
    match result {
        Ok(_) => (200, "ok".into()),
        Err(FetchError::Http { status, error, .. }) => (status, error.unwrap_or_default()),
        Err(e) => panic!("expected an HTTP answer, got {e:?}"),
    }
}

fn report(h: &Harness) -> UsageReport {
    UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: tollgate_events::WallTime::from_unix_ms(h.now()),
        since: None,
        license_serial: Some(1),
        node: UsageFigures::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    }
}

fn rotate(h: &Harness, id: i64, grace_ms: u64) -> Result<admin::Rotated, AdminError> {
    h.act(|ctx, store| admin::rotate_token(ctx, store, id, grace_ms, None))
}

/// Expiry at issue refuses leases and reports from then on (403 `token_expired`, audited,
/// counted); a rotation's old token works through its grace period and no longer, a grace
/// of 0 revokes it at once; bad rotations and expiries are refused as input errors.
pub async fn token_expiry_and_rotation(h: &Harness) {
    h.create_license("perpetual", None);
    let allow = vec!["127.0.0.1".to_owned()];

    // Expiry at issue.
    let expires = h.now() + HOUR;
    let (expiring_id, expiring, _) = h.act_ok(|ctx, store| {
        admin::issue_token(ctx, store, LICENSE_KEY, &allow, None, Some(expires))
    });
    let client = h.client(&expiring);
    assert_eq!(answer(client.fetch_lease().await), (200, "ok".into()));
    assert_eq!(
        answer(client.send_usage(&report(h)).await),
        (200, "ok".into())
    );
    h.advance(HOUR - 1);
    assert_eq!(
        answer(client.fetch_lease().await),
        (200, "ok".into()),
        "not yet"
    );
    h.advance(1);
    assert_eq!(
        answer(client.fetch_lease().await),
        (403, "token_expired".into()),
        "refused from its expiry on"
    );
    assert_eq!(
        answer(client.send_usage(&report(h)).await),
        (403, "token_expired".into())
    );
    let audit = h.audit(Some(LICENSE_KEY));
    for action in ["lease.refused", "usage.refused"] {
        assert!(
            audit.iter().any(|a| a.action == action
                && a.actor == format!("token:{expiring_id}")
                && a.detail.contains("token_expired")),
            "{action} audited: {audit:#?}"
        );
    }
    let issued = audit
        .iter()
        .find(|a| a.action == "token.issue")
        .expect("token.issue audited");
    assert!(issued.detail.contains("expires_at"), "{}", issued.detail);
    let metrics = h
        .raw()
        .get(format!("{}metrics", h.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_license_server_refusals_total{reason=\"token_expired\"} 2"),
        "{metrics}"
    );
    let record = h.read(|db| db.token(expiring_id));
    assert_eq!(record.state(h.now()), TokenState::Expired(expires));

    // Rotation with a grace period.
    let (old_id, old) = h.issue_token(&["127.0.0.1"]);
    let rotated = rotate(h, old_id, 10 * MINUTE).unwrap();
    assert_ne!(rotated.token, old);
    assert_eq!(rotated.old.replaced_by, Some(rotated.id));
    assert_eq!(rotated.old.expires_at_ms, Some(h.now() + 10 * MINUTE));
    assert_eq!(rotated.old.revoked_at_ms, None);
    let new = h.read(|db| db.token(rotated.id));
    assert_eq!(
        (new.allowed.clone(), new.expires_at_ms),
        (rotated.old.allowed.clone(), None),
        "the same addresses; no expiry, as the old one had none"
    );
    assert_eq!(
        answer(h.client(&rotated.token).fetch_lease().await),
        (200, "ok".into())
    );
    assert_eq!(
        answer(h.client(&old).fetch_lease().await),
        (200, "ok".into()),
        "grace"
    );
    h.advance(10 * MINUTE);
    assert_eq!(
        answer(h.client(&old).fetch_lease().await),
        (403, "token_expired".into())
    );
    assert_eq!(
        answer(h.client(&rotated.token).fetch_lease().await),
        (200, "ok".into())
    );
    let error = rotate(h, old_id, MINUTE).unwrap_err();
    assert!(
        error.is_user_error() && error.to_string().contains("rotated already"),
        "{error}"
    );
    let error = rotate(h, expiring_id, MINUTE).unwrap_err();
    assert!(
        error.is_user_error() && error.to_string().contains("expired"),
        "{error}"
    );

    // A grace of 0 revokes the old token at once.
    let now = h.now();
    let second = rotate(h, rotated.id, 0).unwrap();
    assert_eq!(second.old.revoked_at_ms, Some(now));
    assert_eq!(
        answer(h.client(&rotated.token).fetch_lease().await),
        (403, "token_revoked".into())
    );
    assert_eq!(
        answer(h.client(&second.token).fetch_lease().await),
        (200, "ok".into())
    );
    assert!(
        h.audit(None)
            .iter()
            .filter(|a| a.action == "token.rotate")
            .count()
            == 2
    );

    // Bad input.
    let past = h.now() - 1;
    let error = h
        .act(|ctx, store| admin::issue_token(ctx, store, LICENSE_KEY, &allow, None, Some(past)))
        .unwrap_err();
    assert!(
        error.is_user_error() && error.to_string().contains("not in the future"),
        "{error}"
    );
    let error = rotate(h, second.id, admin::TOKEN_ROTATION_GRACE_MS_MAX + 1).unwrap_err();
    assert!(error.is_user_error(), "{error}");
    assert!(rotate(h, 999, MINUTE).unwrap_err().is_user_error());
}

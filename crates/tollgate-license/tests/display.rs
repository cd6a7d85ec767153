//! The log lines and the summary, exactly.

mod common;

use common::{at, document, now, signed, trusted};
use tollgate_license::{Context, Kind, Usage};

#[test]
fn the_ngcp_log_line() {
    let mut doc = document();
    doc.limits.calls = Some(10_000);
    doc.limits.subscribers = Some(1_000_000);
    doc.limits.registered_subscribers = Some(2_000_000);
    doc.valid_until = Some(at("2030-01-01T00:00:00Z"));
    doc.signature_valid_until = Some(at("2017-12-26T16:20:43Z"));
    assert_eq!(
        tollgate_license::log_line(&doc),
        "Valid license: [ABCDEFGHI_123456789_a1b2c3d4e5f6]: 10000 calls, 1000000 subscribers, \
         2000000 registered subscribers, valid until Tue Jan  1 00:00:00 2030 (signature valid \
         until Tue Dec 26 16:20:43 2017)"
    );
    doc.kind = Kind::Perpetual;
    doc.valid_until = None;
    doc.signature_valid_until = None;
    doc.limits.subscribers = None;
    assert_eq!(
        tollgate_license::log_line(&doc),
        "Valid license: [ABCDEFGHI_123456789_a1b2c3d4e5f6]: 10000 calls, unlimited subscribers, \
         2000000 registered subscribers, valid until forever (signature valid until forever)"
    );
    let usage = Usage {
        calls: 0,
        emergency_calls: 0,
        subscribers: 18,
        registered_subscribers: 0,
    };
    assert_eq!(
        tollgate_license::usage_report_line(&usage),
        "Usage report: 0 calls, 18 subscribers, 0 registered subscribers"
    );
}

#[test]
fn the_summary_shows_document_status_and_explanation() {
    let license = tollgate_license::verify(signed(&document()).as_bytes(), &trusted(&[1]))
        .expect("authentic");
    let usage = Usage {
        calls: 95,
        ..Usage::default()
    };
    let evaluation = tollgate_license::evaluate(Some(&license), &Context::at(now()), &usage);
    let summary = tollgate_license::summary(license.document(), Some(&evaluation));
    for expected in [
        "License       ABCDEFGHI_123456789_a1b2c3d4e5f6\n",
        "Kind          term\n",
        "Valid until   2028-01-01T00:00:00Z\n",
        "Features      pbx, fax\n",
        "Hosts         any host\n",
        "Policy        warn, warn at 90%, grace 10%, emergency calls exempt\n",
        "Status        WARNING\n",
        "  calls       95 of 100 (95.0%), headroom 5  WARNING\n",
        "concurrent-calls at 95% of the limit (95 of 100), at or above the 90% warning threshold",
    ] {
        assert!(summary.contains(expected), "{expected:?} not in\n{summary}");
    }
    let bare = tollgate_license::summary(license.document(), None);
    assert!(!bare.contains("Status"));
}

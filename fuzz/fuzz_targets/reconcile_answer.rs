//! Fuzzes the reconciliation answer parsers (`tollgate_reconcile::parse`): Kamailio
//! `dlg.list` / `ul.dump` and OpenSIPS `dlg_list` / `ul_dump`, whichever the first byte picks.
//!
//! Invariants, beyond "never panics":
//! - entries handed to the sink are exactly `listed`, and `listed + skipped == entries`;
//! - never more entries than the bound (a small one here, so the bound is exercised);
//! - every listed call has a non-empty Call-ID of at most 255 bytes and a From-tag that is
//!   absent or 1..=255 bytes; every listed contact a non-empty AoR and contact and an
//!   expiry of at least one second.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_events::{CallRef, FIELD_LEN_MAX};
use tollgate_reconcile::{Expires, Limits, ListKind, ListSink, ProxyKind, parse};

#[derive(Default)]
struct Check {
    entries: u64,
}

fn field_ok(f: &[u8]) -> bool {
    !f.is_empty() && f.len() <= FIELD_LEN_MAX
}

impl ListSink for Check {
    fn call(&mut self, call: CallRef<'_>, _emergency: Option<bool>) {
        assert!(field_ok(call.call_id));
        assert!(call.from_tag.is_none_or(field_ok));
        self.entries += 1;
    }
    fn contact(&mut self, aor: &[u8], contact: &[u8], expires: Expires) {
        assert!(field_ok(aor) && field_ok(contact));
        assert!(!matches!(expires, Expires::In(0)));
        self.entries += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let proxy = if selector & 1 == 0 {
        ProxyKind::Kamailio
    } else {
        ProxyKind::Opensips
    };
    let list = if selector & 2 == 0 {
        ListKind::Dialogs
    } else {
        ListKind::Contacts
    };
    let limits = Limits { entries_max: 64 };
    let mut check = Check::default();
    if let Ok(parsed) = parse(proxy, list, input, &mut check, limits) {
        assert_eq!(parsed.listed, check.entries);
        assert_eq!(parsed.listed + parsed.skipped, parsed.entries);
        assert!(parsed.entries <= limits.entries_max);
    }
});

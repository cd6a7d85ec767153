//! Prometheus text lines for the counters this crate owns and the agent's `/metrics` does
//! not know the shape of (OpenSIPS notifications, the HEP collector). The agent appends
//! them to its exposition document; names follow its rules
//! (`tollgate_<name>_<unit>[_total]`, low-cardinality labels).

use std::fmt::Write;

use crate::stats::{EventRefusal, LocalStats, OPENSIPS_RESULTS};

pub(crate) fn header(out: &mut impl Write, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub(crate) fn single(out: &mut impl Write, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

pub(crate) fn family<'a>(
    out: &mut impl Write,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, "counter", help);
    for (l, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// Writes `tollgate_opensips_notifications_total{result=…}` from the event sockets' summed
/// counters (`IngestStats::snapshot().totals`).
pub fn write_opensips_metrics(out: &mut impl Write, totals: &LocalStats) {
    family(
        out,
        "tollgate_opensips_notifications_total",
        "OpenSIPS event_datagram notifications on the event sockets, by result (applied, ignored, or why dropped).",
        "result",
        OPENSIPS_RESULTS
            .iter()
            .zip(totals.opensips)
            .map(|(l, v)| (*l, v)),
    );
}

/// Writes `tollgate_events_refused_total{reason=…}`: events a full table refused
/// (`calls_table_full`, `registrations_table_full`), from whichever sockets' counters are
/// passed (the agent sums the event sockets and the HEP collector: the table is the same).
pub fn write_refused_metrics(out: &mut impl Write, totals: &LocalStats) {
    family(
        out,
        "tollgate_events_refused_total",
        "Well-formed events refused because a table is at its configured cap ([calls] max_active_calls, [registrations] max_aors), by reason. A refused event changes nothing.",
        "reason",
        EventRefusal::ALL
            .iter()
            .map(|r| (r.as_str(), totals.refused[*r as usize])),
    );
}

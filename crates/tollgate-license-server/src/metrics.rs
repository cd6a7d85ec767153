//! The server's counters and `/metrics` (Prometheus text format 0.0.4, written through
//! `tollgate-prometheus`'s [`MetricsWriter`], the one writer the agent uses too).
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `tollgate_license_server_leases_total` | `result` = `signed`, `reused`, `refused` | lease requests answered |
//! | `tollgate_license_server_reports_total` | `result` = `stored`, `refused` | usage reports |
//! | `tollgate_license_server_refusals_total` | `reason` = the refusal's error word (`bad_token`, `token_revoked`, `token_expired`, `suspended`, `throttled`, …; `bad_credentials`, `login_throttled` for admin logins) | every refused client request and failed admin login |
//! | `tollgate_license_server_db_seconds` | `operation` = `lease`, `report` | histogram of the database transaction of each request |
//! | `tollgate_license_server_throttled_addresses` | — | addresses tracked by the bad-token throttle |

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tollgate_prometheus::MetricsWriter;

/// Upper bounds of the database latency buckets, seconds.
pub const DB_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative): one per bound of [`DB_BUCKETS_S`], then one for above
    /// the last bound.
    counts: Vec<u64>,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; DB_BUCKETS_S.len() + 1];
        }
        let bucket = DB_BUCKETS_S.partition_point(|bound| *bound < seconds);
        self.counts[bucket] += 1;
        self.sum_s += seconds;
    }
}

#[derive(Debug, Default)]
struct Counters {
    leases: BTreeMap<&'static str, u64>,
    reports: BTreeMap<&'static str, u64>,
    refusals: BTreeMap<&'static str, u64>,
    db: BTreeMap<&'static str, Histogram>,
}

/// The counters, shared by the request handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn lease(&self, result: &'static str) {
        *self.counters.lock().leases.entry(result).or_default() += 1;
    }

    pub fn report(&self, result: &'static str) {
        *self.counters.lock().reports.entry(result).or_default() += 1;
    }

    pub fn refusal(&self, reason: &'static str) {
        *self.counters.lock().refusals.entry(reason).or_default() += 1;
    }

    pub fn db(&self, operation: &'static str, took: Duration) {
        self.counters
            .lock()
            .db
            .entry(operation)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text.
    pub fn render(&self, throttled_addresses: usize) -> String {
        let c = self.counters.lock();
        let mut m = MetricsWriter::default();
        let pairs = |map: &BTreeMap<&'static str, u64>| -> Vec<(&'static str, u64)> {
            map.iter().map(|(k, v)| (*k, *v)).collect()
        };
        m.labeled_counter(
            "tollgate_license_server_leases_total",
            "Lease requests answered, by result.",
            "result",
            pairs(&c.leases),
        );
        m.labeled_counter(
            "tollgate_license_server_reports_total",
            "Usage reports, by result.",
            "result",
            pairs(&c.reports),
        );
        m.labeled_counter(
            "tollgate_license_server_refusals_total",
            "Refused client requests, by reason.",
            "reason",
            pairs(&c.refusals),
        );
        let name = "tollgate_license_server_db_seconds";
        m.header(
            name,
            "histogram",
            "Database transaction time of each client request.",
        );
        for (operation, h) in &c.db {
            m.histogram_series(
                name,
                &[("operation", operation)],
                DB_BUCKETS_S,
                &h.counts,
                h.sum_s,
            );
        }
        m.gauge(
            "tollgate_license_server_throttled_addresses",
            "Addresses tracked by the bad-token throttle.",
            throttled_addresses,
        );
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.lease("signed");
        m.lease("signed");
        m.refusal("bad_token");
        m.db("lease", Duration::from_micros(700));
        m.db("lease", Duration::from_millis(30));
        let text = m.render(3);
        assert!(text.contains("tollgate_license_server_leases_total{result=\"signed\"} 2\n"));
        assert!(text.contains("tollgate_license_server_refusals_total{reason=\"bad_token\"} 1\n"));
        assert!(text.contains("db_seconds_bucket{operation=\"lease\",le=\"0.0005\"} 0\n"));
        assert!(text.contains("db_seconds_bucket{operation=\"lease\",le=\"0.001\"} 1\n"));
        assert!(text.contains("db_seconds_bucket{operation=\"lease\",le=\"0.05\"} 2\n"));
        assert!(text.contains("db_seconds_bucket{operation=\"lease\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("db_seconds_count{operation=\"lease\"} 2\n"));
        assert!(text.contains("tollgate_license_server_throttled_addresses 3\n"));
    }

    /// The exact text the server's hand-written renderer produced before it went through
    /// the shared writer (captured from it): names, labels, order, numbers unchanged.
    #[test]
    fn renders_the_same_text_as_before_the_shared_writer() {
        let m = Metrics::default();
        for result in ["signed", "signed", "reused", "refused"] {
            m.lease(result);
        }
        m.report("stored");
        m.refusal("bad_token");
        m.refusal("throttled");
        m.db("lease", Duration::from_micros(700));
        m.db("lease", Duration::from_millis(30));
        m.db("report", Duration::from_secs(7));
        m.db("report", Duration::from_micros(250));
        let want = "\
             # HELP tollgate_license_server_leases_total Lease requests answered, by result.\n\
             # TYPE tollgate_license_server_leases_total counter\n\
             tollgate_license_server_leases_total{result=\"refused\"} 1\n\
             tollgate_license_server_leases_total{result=\"reused\"} 1\n\
             tollgate_license_server_leases_total{result=\"signed\"} 2\n\
             # HELP tollgate_license_server_reports_total Usage reports, by result.\n\
             # TYPE tollgate_license_server_reports_total counter\n\
             tollgate_license_server_reports_total{result=\"stored\"} 1\n\
             # HELP tollgate_license_server_refusals_total Refused client requests, by reason.\n\
             # TYPE tollgate_license_server_refusals_total counter\n\
             tollgate_license_server_refusals_total{reason=\"bad_token\"} 1\n\
             tollgate_license_server_refusals_total{reason=\"throttled\"} 1\n\
             # HELP tollgate_license_server_db_seconds Database transaction time of each client request.\n\
             # TYPE tollgate_license_server_db_seconds histogram\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.0005\"} 0\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.001\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.0025\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.005\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.01\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.025\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.05\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.1\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.25\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"0.5\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"1\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"2.5\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"5\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"lease\",le=\"+Inf\"} 2\n\
             tollgate_license_server_db_seconds_sum{operation=\"lease\"} 0.030699999999999998\n\
             tollgate_license_server_db_seconds_count{operation=\"lease\"} 2\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.0005\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.001\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.0025\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.005\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.01\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.025\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.05\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.1\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.25\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"0.5\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"1\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"2.5\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"5\"} 1\n\
             tollgate_license_server_db_seconds_bucket{operation=\"report\",le=\"+Inf\"} 2\n\
             tollgate_license_server_db_seconds_sum{operation=\"report\"} 7.00025\n\
             tollgate_license_server_db_seconds_count{operation=\"report\"} 2\n\
             # HELP tollgate_license_server_throttled_addresses Addresses tracked by the bad-token throttle.\n\
             # TYPE tollgate_license_server_throttled_addresses gauge\n\
             tollgate_license_server_throttled_addresses 3\n\
";
        assert_eq!(m.render(3), want);
        // Before any request: every family's header, no samples but the gauge.
        let empty = "\
             # HELP tollgate_license_server_leases_total Lease requests answered, by result.\n\
             # TYPE tollgate_license_server_leases_total counter\n\
             # HELP tollgate_license_server_reports_total Usage reports, by result.\n\
             # TYPE tollgate_license_server_reports_total counter\n\
             # HELP tollgate_license_server_refusals_total Refused client requests, by reason.\n\
             # TYPE tollgate_license_server_refusals_total counter\n\
             # HELP tollgate_license_server_db_seconds Database transaction time of each client request.\n\
             # TYPE tollgate_license_server_db_seconds histogram\n\
             # HELP tollgate_license_server_throttled_addresses Addresses tracked by the bad-token throttle.\n\
             # TYPE tollgate_license_server_throttled_addresses gauge\n\
             tollgate_license_server_throttled_addresses 0\n\
";
        assert_eq!(Metrics::default().render(0), empty);
    }
}

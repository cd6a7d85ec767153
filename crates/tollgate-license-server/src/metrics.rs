//! The server's counters and `/metrics` (Prometheus text format 0.0.4).
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `tollgate_license_server_leases_total` | `result` = `signed`, `reused`, `refused` | lease requests answered |
//! | `tollgate_license_server_reports_total` | `result` = `stored`, `refused` | usage reports |
//! | `tollgate_license_server_refusals_total` | `reason` = the refusal's error word (`bad_token`, `token_revoked`, `token_expired`, `suspended`, `throttled`, …; `bad_credentials`, `login_throttled` for admin logins) | every refused client request and failed admin login |
//! | `tollgate_license_server_db_seconds` | `operation` = `lease`, `report` | histogram of the database transaction of each request |
//! | `tollgate_license_server_throttled_addresses` | — | addresses tracked by the bad-token throttle |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the database latency buckets, seconds.
pub const DB_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    sum_s: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; DB_BUCKETS_S.len()];
        }
        for (bound, count) in DB_BUCKETS_S.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum_s += seconds;
        self.count += 1;
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
        let mut out = String::new();
        let counter = |out: &mut String,
                       name: &str,
                       help: &str,
                       label: &str,
                       map: &BTreeMap<&'static str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (value, count) in map {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
            }
        };
        counter(
            &mut out,
            "tollgate_license_server_leases_total",
            "Lease requests answered, by result.",
            "result",
            &c.leases,
        );
        counter(
            &mut out,
            "tollgate_license_server_reports_total",
            "Usage reports, by result.",
            "result",
            &c.reports,
        );
        counter(
            &mut out,
            "tollgate_license_server_refusals_total",
            "Refused client requests, by reason.",
            "reason",
            &c.refusals,
        );
        let name = "tollgate_license_server_db_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Database transaction time of each client request."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (operation, h) in &c.db {
            for (bound, count) in DB_BUCKETS_S.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{operation=\"{operation}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{operation=\"{operation}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{operation=\"{operation}\"}} {}", h.sum_s);
            let _ = writeln!(out, "{name}_count{{operation=\"{operation}\"}} {}", h.count);
        }
        let name = "tollgate_license_server_throttled_addresses";
        let _ = writeln!(
            out,
            "# HELP {name} Addresses tracked by the bad-token throttle."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {throttled_addresses}");
        out
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
}

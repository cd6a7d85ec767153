//! Prometheus text exposition (format 0.0.4), written by hand: a few dozen series do not
//! need a registry. The one writer of metrics text in tollgate: the agent's `/metrics` and
//! the license server's `/metrics` both go through [`MetricsWriter`].
//!
//! What it deliberately lacks: a registry, metric types with state, any dependency. The
//! crates keep their own numbers (plain counters and snapshots, their label names beside
//! them) and the binaries' metrics modules walk those numbers into a writer at scrape time.
//! Names follow `tollgate_<name>_<unit>[_total]`; dropped things carry a low-cardinality
//! `reason` label. The writer does not check names: the tests that scrape a real process
//! run `promtool check metrics` on the result.

use std::fmt::{Display, Write as _};

/// Builds one exposition document: a family's header ([`MetricsWriter::header`]) and then
/// its samples, family after family.
#[derive(Debug, Default)]
pub struct MetricsWriter {
    out: String,
}

impl MetricsWriter {
    /// `# HELP` and `# TYPE` of a family whose samples follow ([`MetricsWriter::sample`]).
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample with any number of labels (values escaped), after its family's header.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        for (i, (label, v)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.out, "{open}{label}=\"{}\"", escape_label(v));
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.header(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// One counter family with a single label.
    pub fn labeled_counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, "counter", help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], v);
        }
    }

    /// One gauge family with a single label.
    pub fn labeled_gauge<'a, V: Display>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, V)>,
    ) {
        self.header(name, "gauge", help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], v);
        }
    }

    /// A histogram family with one unlabelled series ([`MetricsWriter::histogram_series`]).
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[u64], counts: &[u64], sum: u64) {
        self.header(name, "histogram", help);
        self.histogram_series(name, &[], bounds, counts, sum);
    }

    /// One series of a histogram family, after its header: `counts` are per bucket (not
    /// cumulative), one per bound, and one more for above the last bound (`+Inf`; taken as
    /// 0 when missing). Writes the cumulative `_bucket` samples (`le` after `labels`),
    /// `_sum` and `_count`.
    pub fn histogram_series<B: Display>(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[B],
        counts: &[u64],
        sum: impl Display,
    ) {
        debug_assert!(counts.len() == bounds.len() || counts.len() == bounds.len() + 1);
        let bucket = format!("{name}_bucket");
        let mut bucket_sample = |le: &str, cumulative: u64| {
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, cumulative);
        };
        let mut cumulative = 0u64;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            bucket_sample(&bound.to_string(), cumulative);
        }
        cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
        bucket_sample("+Inf", cumulative);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the exposition format wants it: `\\`, `"` and newlines escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_carry_every_label_escaped() {
        let mut m = MetricsWriter::default();
        m.header("f", "counter", "help");
        m.sample("f", &[("source", "a\"b"), ("kind", "x")], 3);
        m.sample("f", &[], 4);
        let out = m.finish();
        assert_eq!(
            out,
            "# HELP f help\n# TYPE f counter\nf{source=\"a\\\"b\",kind=\"x\"} 3\nf 4\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = MetricsWriter::default();
        m.histogram("h", "help", &[1, 2], &[3, 4, 5], 99);
        assert_eq!(
            m.finish(),
            "# HELP h help\n# TYPE h histogram\n\
             h_bucket{le=\"1\"} 3\nh_bucket{le=\"2\"} 7\nh_bucket{le=\"+Inf\"} 12\n\
             h_sum 99\nh_count 12\n"
        );
    }

    #[test]
    fn labelled_histogram_series_put_le_last() {
        let mut m = MetricsWriter::default();
        m.header("d", "histogram", "help");
        m.histogram_series("d", &[("operation", "lease")], &[0.5, 1.0], &[1, 0], 0.25);
        m.histogram_series(
            "d",
            &[("operation", "report")],
            &[0.5, 1.0],
            &[0, 1, 2],
            9.5,
        );
        assert_eq!(
            m.finish(),
            "# HELP d help\n# TYPE d histogram\n\
             d_bucket{operation=\"lease\",le=\"0.5\"} 1\n\
             d_bucket{operation=\"lease\",le=\"1\"} 1\n\
             d_bucket{operation=\"lease\",le=\"+Inf\"} 1\n\
             d_sum{operation=\"lease\"} 0.25\nd_count{operation=\"lease\"} 1\n\
             d_bucket{operation=\"report\",le=\"0.5\"} 0\n\
             d_bucket{operation=\"report\",le=\"1\"} 1\n\
             d_bucket{operation=\"report\",le=\"+Inf\"} 3\n\
             d_sum{operation=\"report\"} 9.5\nd_count{operation=\"report\"} 3\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = MetricsWriter::default();
        m.labeled_gauge("g", "help", "peer", [("a\"b\\c\nd", 1), ("plain", 2)]);
        let out = m.finish();
        assert!(out.contains("g{peer=\"a\\\"b\\\\c\\nd\"} 1\n"), "{out}");
        assert!(out.contains("g{peer=\"plain\"} 2\n"));
    }
}

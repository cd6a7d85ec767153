//! The billing view: per calendar month (UTC), customer and license, the peak of each
//! licensed figure from the stored usage reports, the limit in force, and the minutes over
//! that limit — the figures a true-up invoice needs. Served as `GET
//! /api/v1/admin/billing/monthly`, `tollgate license-server admin reports monthly [--csv]`
//! and the console.
//!
//! How each figure is computed (exact, from the reports alone):
//!
//! - **The figure of a report** is the one the license is enforced against: the cluster's
//!   (`cluster`) when the node is in a mesh, the node's own (`node`) otherwise. Its peak is
//!   `max(peak_*, current)`: agents send the exact peak of the report's own interval
//!   (`since_ms` to `timestamp_ms`). `subscribers` has no peak field: its value is used.
//! - **A report's interval** is `since_ms`..`timestamp_ms` (just `timestamp_ms` for an
//!   agent's first report, which has no `since_ms`). A report counts in every month its
//!   interval touches.
//! - **The monthly peak** of a figure is the highest report peak of the month, across all
//!   the license's nodes.
//! - **The limit** is the one of the document the node was running (`license_serial` of the
//!   report, looked up in the license's history; the current document when the serial is
//!   unknown). A row shows the limit of its latest report.
//! - **Over-limit minutes** of a figure: the union, over the license's nodes, of the report
//!   intervals (clipped to the month) whose peak exceeded that report's limit, rounded up to
//!   whole minutes. The resolution is the report interval (`[license] report_interval_s` of
//!   the agents, 120 s by default): a peak says the limit was passed in the interval, not for
//!   how long.
//!
//! [`Monthly`] is the pure aggregation (reports in, rows out); [`monthly`] reads the store
//! page by page ([`PAGE_ROWS`] reports at a time), so a year of reports never sits in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use tollgate_events::WallTime;
use tollgate_license::Limits;
use tollgate_license_client::UsageFigures;

use crate::store::{Db, StoreError};

/// Reports read per database round trip.
pub const PAGE_ROWS: u32 = 2_000;
/// Most months one request covers.
pub const MONTH_COUNT_MAX: u32 = 120;
/// Most over-limit intervals remembered per row and figure (beyond, adjacent intervals are
/// merged as they come; the union stays exact as long as reports arrive in time order).
pub const INTERVALS_PER_ROW_MAX: usize = 100_000;

/// How long after a month its reports are still looked for (a report received later than
/// this after the month's end is not counted in it).
pub const RECEIVED_LATE_MS_MAX: u64 = 31 * DAY_MS;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// A calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    /// The month `ms` (Unix ms) falls in.
    pub fn of(ms: u64) -> Month {
        let days = i64::try_from(ms / DAY_MS).unwrap_or(i64::MAX);
        let (year, month, _) = civil_from_days(days);
        Month { year, month }
    }

    /// `2030-03`.
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("month {text:?}: expected YYYY-MM, like 2030-03");
        let (year, month) = text.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        let month: u32 = month.parse().map_err(|_| bad())?;
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    /// Its first millisecond, Unix ms.
    pub fn start_ms(self) -> u64 {
        let days = days_from_civil(self.year, self.month, 1);
        u64::try_from(days).unwrap_or(0) * DAY_MS
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The first millisecond of the next month.
    pub fn end_ms(self) -> u64 {
        self.next().start_ms()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (i32::try_from(year).unwrap_or(i32::MAX), month, day)
}

/// One report as the aggregation reads it.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub customer: &'a str,
    pub license_key: &'a str,
    pub node_id: &'a str,
    pub since_ms: Option<u64>,
    pub timestamp_ms: u64,
    /// The enforced figures: the cluster's, or the node's when it is not in a mesh.
    pub figures: UsageFigures,
    /// The limits of the document the node ran.
    pub limits: Limits,
}

/// The licensed figures, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Calls,
    RegisteredSubscribers,
    Subscribers,
}

impl Figure {
    pub const ALL: [Figure; 3] = [
        Figure::Calls,
        Figure::RegisteredSubscribers,
        Figure::Subscribers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Figure::Calls => "calls",
            Figure::RegisteredSubscribers => "registered_subscribers",
            Figure::Subscribers => "subscribers",
        }
    }

    fn peak(self, f: &UsageFigures) -> u64 {
        match self {
            Figure::Calls => f.peak_calls.max(f.calls),
            Figure::RegisteredSubscribers => {
                f.peak_registered_subscribers.max(f.registered_subscribers)
            }
            Figure::Subscribers => f.subscribers,
        }
    }

    fn limit(self, l: &Limits) -> Option<u64> {
        match self {
            Figure::Calls => l.calls,
            Figure::RegisteredSubscribers => l.registered_subscribers,
            Figure::Subscribers => l.subscribers,
        }
    }
}

/// One licensed figure of a row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FigureRow {
    pub peak: u64,
    /// The limit of the row's latest report (none: unlimited).
    pub limit: Option<u64>,
    pub over_limit_minutes: u64,
}

/// One month of one license.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MonthRow {
    /// `2030-03`.
    pub month: String,
    pub customer: String,
    pub license_key: String,
    /// Distinct nodes that reported.
    pub nodes: u64,
    pub reports: u64,
    pub calls: FigureRow,
    pub registered_subscribers: FigureRow,
    pub subscribers: FigureRow,
    pub peak_emergency_calls: u64,
}

#[derive(Debug, Default)]
struct Acc {
    nodes: BTreeSet<String>,
    reports: u64,
    peaks: [u64; 3],
    limits: [Option<u64>; 3],
    latest_ms: u64,
    /// Over-limit intervals per figure, merged as they come.
    over: [Vec<(u64, u64)>; 3],
    peak_emergency_calls: u64,
}

/// The monthly aggregation of reports between two months (inclusive).
#[derive(Debug)]
pub struct Monthly {
    first: Month,
    last: Month,
    rows: BTreeMap<(Month, String, String), Acc>,
}

impl Monthly {
    pub fn new(first: Month, last: Month) -> Monthly {
        Monthly {
            first,
            last,
            rows: BTreeMap::new(),
        }
    }

    /// Adds one report (any order; reports outside the months are ignored).
    pub fn add(&mut self, e: &Entry<'_>) {
        let end = e.timestamp_ms;
        let start = e.since_ms.unwrap_or(end).min(end);
        let mut month = Month::of(start).max(self.first);
        while month <= Month::of(end).min(self.last) {
            let (from, to) = (start.max(month.start_ms()), end.min(month.end_ms()));
            let acc = self
                .rows
                .entry((month, e.customer.to_owned(), e.license_key.to_owned()))
                .or_default();
            if !acc.nodes.contains(e.node_id) {
                acc.nodes.insert(e.node_id.to_owned());
            }
            acc.reports += 1;
            acc.peak_emergency_calls = acc.peak_emergency_calls.max(
                e.figures
                    .peak_emergency_calls
                    .max(e.figures.emergency_calls),
            );
            let latest = e.timestamp_ms >= acc.latest_ms;
            if latest {
                acc.latest_ms = e.timestamp_ms;
            }
            for (i, figure) in Figure::ALL.iter().enumerate() {
                let peak = figure.peak(&e.figures);
                let limit = figure.limit(&e.limits);
                acc.peaks[i] = acc.peaks[i].max(peak);
                if latest {
                    acc.limits[i] = limit;
                }
                if limit.is_some_and(|l| peak > l) && to > from {
                    add_interval(&mut acc.over[i], from, to);
                }
            }
            month = month.next();
        }
    }

    /// The rows, by month, then customer, then license.
    pub fn finish(self) -> Vec<MonthRow> {
        self.rows
            .into_iter()
            .map(|((month, customer, license_key), acc)| {
                let figure = |i: usize| FigureRow {
                    peak: acc.peaks[i],
                    limit: acc.limits[i],
                    over_limit_minutes: union_ms(&acc.over[i]).div_ceil(MINUTE_MS),
                };
                MonthRow {
                    month: month.to_string(),
                    customer,
                    license_key,
                    nodes: acc.nodes.len() as u64,
                    reports: acc.reports,
                    calls: figure(0),
                    registered_subscribers: figure(1),
                    subscribers: figure(2),
                    peak_emergency_calls: acc.peak_emergency_calls,
                }
            })
            .collect()
    }
}

/// Adds `[from, to)`, merging with the last interval when they touch (the common case:
/// consecutive reports of one node); bounded by [`INTERVALS_PER_ROW_MAX`].
fn add_interval(intervals: &mut Vec<(u64, u64)>, from: u64, to: u64) {
    if let Some(last) = intervals.last_mut()
        && from <= last.1
        && to >= last.0
    {
        last.0 = last.0.min(from);
        last.1 = last.1.max(to);
        return;
    }
    if intervals.len() >= INTERVALS_PER_ROW_MAX {
        // Compact: sort and merge what is there (the union is unchanged).
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(a, b) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *intervals = merged;
        if intervals.len() >= INTERVALS_PER_ROW_MAX {
            // Still full: widen the last interval (over-counts, never under-counts).
            if let Some(last) = intervals.last_mut() {
                last.0 = last.0.min(from);
                last.1 = last.1.max(to);
            }
            return;
        }
    }
    intervals.push((from, to));
}

/// The length of the union of intervals.
fn union_ms(intervals: &[(u64, u64)]) -> u64 {
    let mut sorted = intervals.to_vec();
    sorted.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for (a, b) in sorted {
        current = match current {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((a, b)) = current {
        total += b - a;
    }
    total
}

/// The CSV header of [`csv`].
pub const CSV_HEADER: &str = "month,customer,license_key,nodes,reports,\
peak_calls,limit_calls,calls_over_limit_minutes,\
peak_registered_subscribers,limit_registered_subscribers,registered_subscribers_over_limit_minutes,\
peak_subscribers,limit_subscribers,subscribers_over_limit_minutes,peak_emergency_calls";

/// RFC 4180 CSV (CRLF line ends, a header line); an unlimited figure's limit is empty.
pub fn csv(rows: &[MonthRow]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for r in rows {
        let mut fields = vec![
            r.month.clone(),
            csv_field(&r.customer),
            csv_field(&r.license_key),
            r.nodes.to_string(),
            r.reports.to_string(),
        ];
        for f in [&r.calls, &r.registered_subscribers, &r.subscribers] {
            fields.push(f.peak.to_string());
            fields.push(f.limit.map_or_else(String::new, |l| l.to_string()));
            fields.push(f.over_limit_minutes.to_string());
        }
        fields.push(r.peak_emergency_calls.to_string());
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(text: &str) -> String {
    // A leading = + - @ would be a formula to a spreadsheet: quote and prefix it.
    let guarded = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) || guarded != text {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// The months `first..=last`, checked against [`MONTH_COUNT_MAX`].
pub fn check_range(first: Month, last: Month) -> Result<(), String> {
    if first > last {
        return Err(format!("{first} is after {last}"));
    }
    let count = (last.year - first.year) * 12 + last.month as i32 - first.month as i32 + 1;
    if count > MONTH_COUNT_MAX as i32 {
        return Err(format!("at most {MONTH_COUNT_MAX} months at once"));
    }
    Ok(())
}

/// The months of a request: `from` and `to` (`YYYY-MM`, inclusive); `to` defaults to the
/// month of `now_ms`, `from` to 11 months before `to` (a year).
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now_ms: u64,
) -> Result<(Month, Month), String> {
    let last = to
        .map(Month::parse)
        .transpose()?
        .unwrap_or(Month::of(now_ms));
    let first = match from {
        Some(text) => Month::parse(text)?,
        None => (0..11).fold(last, |m, _| m.prev()),
    };
    check_range(first, last)?;
    Ok((first, last))
}

/// The billing rows of `first..=last` (of one license, or all), from the store.
pub fn monthly(
    db: &Db<'_>,
    first: Month,
    last: Month,
    license_key: Option<&str>,
) -> Result<Vec<MonthRow>, StoreError> {
    // A report is received after its interval ends: none received before the first month
    // (a day of margin for agents' clocks) covers it. One received after the last month
    // may still cover it (an agent cut off from the server sends one report for the whole
    // outage when it is back): read RECEIVED_LATE_MS_MAX beyond, and let the aggregation
    // clip.
    let from_ms = first.start_ms().saturating_sub(DAY_MS);
    let to_ms = last.end_ms().saturating_add(RECEIVED_LATE_MS_MAX);
    let mut aggregation = Monthly::new(first, last);
    let mut limits: HashMap<String, HashMap<u64, Limits>> = HashMap::new();
    let mut after_id = 0;
    loop {
        let page = db.reports_received_between(license_key, from_ms, to_ms, after_id, PAGE_ROWS)?;
        let Some(last_row) = page.last() else {
            break;
        };
        after_id = last_row.record.id;
        for row in &page {
            let r = &row.record;
            if !limits.contains_key(&r.license_key) {
                limits.insert(r.license_key.clone(), license_limits(db, &r.license_key)?);
            }
            let by_serial = &limits[&r.license_key];
            let serial = r
                .report
                .license_serial
                .filter(|s| by_serial.contains_key(s));
            let limit = serial
                .or_else(|| by_serial.keys().max().copied())
                .and_then(|s| by_serial.get(&s))
                .copied()
                .unwrap_or_default();
            aggregation.add(&Entry {
                customer: &row.customer,
                license_key: &r.license_key,
                node_id: &r.report.node_id,
                since_ms: r.report.since.map(WallTime::unix_ms),
                timestamp_ms: r.report.timestamp.unix_ms(),
                figures: r.report.cluster.unwrap_or(r.report.node),
                limits: limit,
            });
        }
        if page.len() < PAGE_ROWS as usize {
            break;
        }
    }
    Ok(aggregation.finish())
}

/// The limits of every document of a license's history, by serial.
fn license_limits(db: &Db<'_>, license_key: &str) -> Result<HashMap<u64, Limits>, StoreError> {
    db.documents(license_key)?
        .into_iter()
        .map(|d| {
            tollgate_license::parse(d.document.as_bytes())
                .map(|p| (d.serial, p.document.limits))
                .map_err(|e| {
                    StoreError::Corrupt(format!("document {license_key} serial {}: {e}", d.serial))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u64 {
        tollgate_license::timestamp::parse_rfc3339(text)
            .unwrap()
            .unix_ms()
    }

    #[test]
    fn months_and_their_boundaries() {
        let march = Month::parse("2030-03").unwrap();
        assert_eq!(march.start_ms(), ms("2030-03-01T00:00:00Z"));
        assert_eq!(march.end_ms(), ms("2030-04-01T00:00:00Z"));
        assert_eq!(Month::of(ms("2030-03-31T23:59:59.999Z")), march);
        assert_eq!(Month::of(ms("2030-04-01T00:00:00Z")), march.next());
        assert_eq!(
            Month::parse("2030-12").unwrap().next().to_string(),
            "2031-01"
        );
        assert_eq!(
            Month::parse("2031-01").unwrap().prev().to_string(),
            "2030-12"
        );
        assert_eq!(
            Month::parse("2028-02").unwrap().end_ms() - Month::parse("2028-02").unwrap().start_ms(),
            29 * DAY_MS,
            "a leap year"
        );
        for bad in ["2030-13", "2030-3", "30-03", "2030/03", "", "1969-12"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert!(check_range(march, march.prev()).is_err());
        assert!(check_range(march, march).is_ok());
    }

    fn figures(calls: u64, peak_calls: u64, registered: u64) -> UsageFigures {
        UsageFigures {
            calls,
            peak_calls,
            registered_subscribers: registered,
            peak_registered_subscribers: registered,
            subscribers: 1000,
            ..UsageFigures::default()
        }
    }

    fn limits(calls: u64) -> Limits {
        Limits {
            calls: Some(calls),
            subscribers: None,
            registered_subscribers: Some(500),
        }
    }

    #[test]
    fn peaks_across_nodes_and_over_limit_minutes_as_a_union_of_intervals() {
        let march = Month::parse("2030-03").unwrap();
        let mut m = Monthly::new(march, march);
        let t = ms("2030-03-10T12:00:00Z");
        let entry = |node, since: u64, to: u64, f: UsageFigures, l: Limits| Entry {
            customer: "Acme",
            license_key: "K",
            node_id: node,
            since_ms: Some(since),
            timestamp_ms: to,
            figures: f,
            limits: l,
        };
        // sp1: two 2-minute intervals over the limit of 100, then one under.
        m.add(&entry(
            "sp1",
            t,
            t + 120_000,
            figures(90, 120, 10),
            limits(100),
        ));
        m.add(&entry(
            "sp1",
            t + 120_000,
            t + 240_000,
            figures(90, 101, 10),
            limits(100),
        ));
        m.add(&entry(
            "sp1",
            t + 240_000,
            t + 360_000,
            figures(90, 95, 10),
            limits(100),
        ));
        // sp2 (same cluster) saw the overlap [t+60 s, t+180 s] over too: not counted twice.
        m.add(&entry(
            "sp2",
            t + 60_000,
            t + 180_000,
            figures(90, 110, 10),
            limits(100),
        ));
        // Another interval of 30 s: rounded up with the rest.
        m.add(&entry(
            "sp2",
            t + 600_000,
            t + 630_000,
            figures(90, 130, 10),
            limits(100),
        ));
        let rows = m.finish();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.nodes, r.reports), (2, 5));
        assert_eq!(r.calls.peak, 130);
        assert_eq!(r.calls.limit, Some(100));
        assert_eq!(
            r.calls.over_limit_minutes, 5,
            "4 min union + 30 s rounded up"
        );
        assert_eq!(r.registered_subscribers.over_limit_minutes, 0);
        assert_eq!(r.subscribers.peak, 1000);
        assert_eq!(r.subscribers.limit, None);
    }

    #[test]
    fn an_interval_across_a_month_boundary_counts_in_both_months_clipped() {
        let feb = Month::parse("2030-02").unwrap();
        let mut m = Monthly::new(feb, feb.next());
        let boundary = ms("2030-03-01T00:00:00Z");
        m.add(&Entry {
            customer: "Acme",
            license_key: "K",
            node_id: "sp1",
            since_ms: Some(boundary - 3 * MINUTE_MS),
            timestamp_ms: boundary + 2 * MINUTE_MS,
            figures: figures(5, 200, 1),
            limits: limits(100),
        });
        let rows = m.finish();
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.month.as_str(), r.calls.peak, r.calls.over_limit_minutes))
            .collect();
        assert_eq!(got, [("2030-02", 200, 3), ("2030-03", 200, 2)]);
    }

    #[test]
    fn the_limit_shown_is_the_latest_and_each_report_is_judged_by_its_own() {
        let march = Month::parse("2030-03").unwrap();
        let mut m = Monthly::new(march, march);
        let t = ms("2030-03-10T00:00:00Z");
        let mut add = |since: u64, limit: u64, peak: u64| {
            m.add(&Entry {
                customer: "Acme",
                license_key: "K",
                node_id: "sp1",
                since_ms: Some(since),
                timestamp_ms: since + MINUTE_MS,
                figures: figures(0, peak, 0),
                limits: limits(limit),
            });
        };
        add(t + 10 * MINUTE_MS, 200, 150); // raised limit, within it
        add(t, 100, 150); // older report, older limit: over
        let r = &m.finish()[0];
        assert_eq!(r.calls.limit, Some(200));
        assert_eq!(r.calls.over_limit_minutes, 1);
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_defuses_formulas() {
        let row = MonthRow {
            month: "2030-03".into(),
            customer: "Acme, \"the\" Telecom".into(),
            license_key: "=cmd".into(),
            nodes: 2,
            reports: 5,
            calls: FigureRow {
                peak: 130,
                limit: Some(100),
                over_limit_minutes: 5,
            },
            registered_subscribers: FigureRow::default(),
            subscribers: FigureRow {
                peak: 1000,
                limit: None,
                over_limit_minutes: 0,
            },
            peak_emergency_calls: 1,
        };
        let text = csv(&[row]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            "2030-03,\"Acme, \"\"the\"\" Telecom\",\"'=cmd\",2,5,130,100,5,0,,0,1000,,0,1"
        );
        assert_eq!(lines[2], "");
        assert_eq!(
            CSV_HEADER.split(',').count(),
            lines[1].split(',').count() - 1
        );
    }
}

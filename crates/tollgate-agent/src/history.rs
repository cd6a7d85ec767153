//! Usage history beyond the tables' 24 h of per-minute peaks: hourly peaks for 90 days
//! (this node's and, in a cluster, the cluster aggregate's), persisted in the state dir,
//! and the cluster aggregate's per-minute peaks for the last 24 h (in memory).
//!
//! No clock and no files here: [`History::observe`] takes the time and the figures (the
//! agent calls it every second), [`History::encode`] / [`History::decode`] give and take
//! the bytes of `<state_dir>/history.json`, which the agent writes with the durable-write
//! helper every [`PERSIST_INTERVAL_MS`] and at shutdown.
//!
//! **Bounds.** At most [`HOURS_KEPT`] hours (90 days) and [`CLUSTER_MINUTES_KEPT`] minutes
//! (24 h); older entries are dropped as new ones arrive, so the file stays under ~300 KiB.
//! A clock set back never rewrites an older hour with a later figure out of order: an
//! observation before the newest hour is folded into that hour's entry only if it exists.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub const HOUR_MS: u64 = 3_600_000;
pub const MINUTE_MS: u64 = 60_000;
/// Hourly entries kept: 90 days.
pub const HOURS_KEPT: usize = 90 * 24;
/// Cluster per-minute entries kept: 24 h.
pub const CLUSTER_MINUTES_KEPT: usize = 24 * 60;
/// The file in the state dir.
pub const HISTORY_FILE: &str = "history.json";
/// How often the agent writes the file (and once more at shutdown).
pub const PERSIST_INTERVAL_MS: u64 = 60_000;
/// The file's format version.
pub const FORMAT_VERSION: u32 = 1;
/// Largest file read back (90 days of hours take about 250 KiB).
pub const FILE_LEN_MAX: usize = 1024 * 1024;

/// The peaks of one hour. Cluster fields are absent for hours without a mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HourPeaks {
    pub hour_start_ms: u64,
    pub peak_calls: u64,
    pub peak_registered_subscribers: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_peak_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_peak_registered_subscribers: Option<u64>,
}

/// The cluster aggregate's peaks over one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMinute {
    pub minute_start_ms: u64,
    pub peak_calls: u64,
    pub peak_registered_subscribers: u64,
}

/// Calls and registered subscribers at one observation (or the peak over a period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    pub calls: u64,
    pub registered_subscribers: u64,
}

/// Why `history.json` could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history file larger than {FILE_LEN_MAX} bytes")]
    TooLong,
    #[error("history file is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("history file has format version {0}; this agent reads version {FORMAT_VERSION}")]
    Version(u32),
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    hours: Vec<HourPeaks>,
}

/// Hourly peaks for 90 days and the cluster's per-minute peaks for 24 h.
#[derive(Debug, Default)]
pub struct History {
    hours: VecDeque<HourPeaks>,
    cluster_minutes: VecDeque<ClusterMinute>,
    dirty: bool,
}

impl History {
    /// Folds one observation at `now_ms` in: `node` is this node's peak since the start of
    /// the current hour (or its current figures), `cluster` the aggregate now (`None`
    /// without a mesh).
    pub fn observe(&mut self, now_ms: u64, node: Sample, cluster: Option<Sample>) {
        let hour_start_ms = now_ms - now_ms % HOUR_MS;
        let entry = match self.hours.back().map(|h| h.hour_start_ms) {
            Some(last) if last == hour_start_ms => self.hours.back_mut(),
            Some(last) if last > hour_start_ms => self
                .hours
                .iter_mut()
                .rev()
                .find(|h| h.hour_start_ms == hour_start_ms),
            _ => {
                self.hours.push_back(HourPeaks {
                    hour_start_ms,
                    ..HourPeaks::default()
                });
                while self.hours.len() > HOURS_KEPT
                    || self.hours.front().is_some_and(|h| {
                        h.hour_start_ms + (HOURS_KEPT as u64) * HOUR_MS <= hour_start_ms
                    })
                {
                    self.hours.pop_front();
                }
                self.hours.back_mut()
            }
        };
        let Some(entry) = entry else {
            return;
        };
        let before = *entry;
        entry.peak_calls = entry.peak_calls.max(node.calls);
        entry.peak_registered_subscribers = entry
            .peak_registered_subscribers
            .max(node.registered_subscribers);
        if let Some(c) = cluster {
            entry.cluster_peak_calls = Some(entry.cluster_peak_calls.unwrap_or(0).max(c.calls));
            entry.cluster_peak_registered_subscribers = Some(
                entry
                    .cluster_peak_registered_subscribers
                    .unwrap_or(0)
                    .max(c.registered_subscribers),
            );
        }
        self.dirty |= *entry != before;
        if let Some(c) = cluster {
            self.observe_cluster_minute(now_ms, c);
        }
    }

    fn observe_cluster_minute(&mut self, now_ms: u64, c: Sample) {
        let minute_start_ms = now_ms - now_ms % MINUTE_MS;
        match self.cluster_minutes.back_mut() {
            Some(m) if m.minute_start_ms == minute_start_ms => {
                m.peak_calls = m.peak_calls.max(c.calls);
                m.peak_registered_subscribers =
                    m.peak_registered_subscribers.max(c.registered_subscribers);
            }
            Some(m) if m.minute_start_ms > minute_start_ms => {}
            _ => {
                self.cluster_minutes.push_back(ClusterMinute {
                    minute_start_ms,
                    peak_calls: c.calls,
                    peak_registered_subscribers: c.registered_subscribers,
                });
                while self.cluster_minutes.len() > CLUSTER_MINUTES_KEPT {
                    self.cluster_minutes.pop_front();
                }
            }
        }
    }

    /// Every hour kept, oldest first.
    pub fn hours(&self) -> Vec<HourPeaks> {
        self.hours.iter().copied().collect()
    }

    /// The cluster's per-minute peaks of the 24 h before `now_ms`, oldest first.
    pub fn cluster_minutes(&self, now_ms: u64) -> Vec<ClusterMinute> {
        let from = now_ms.saturating_sub(24 * HOUR_MS);
        self.cluster_minutes
            .iter()
            .filter(|m| m.minute_start_ms + MINUTE_MS > from)
            .copied()
            .collect()
    }

    /// Marks the hours as not written (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether an hour changed since the last [`History::encode`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The bytes of `history.json` (the hours; the cluster minutes are not kept across a
    /// restart). Clears the dirty flag.
    pub fn encode(&mut self) -> Vec<u8> {
        self.dirty = false;
        let file = File {
            version: FORMAT_VERSION,
            hours: self.hours(),
        };
        serde_json::to_vec(&file).unwrap_or_default()
    }

    /// Reads `history.json` back: hours sorted, deduplicated and cut to [`HOURS_KEPT`].
    pub fn decode(bytes: &[u8]) -> Result<History, HistoryError> {
        if bytes.len() > FILE_LEN_MAX {
            return Err(HistoryError::TooLong);
        }
        let file: File = serde_json::from_slice(bytes)?;
        if file.version != FORMAT_VERSION {
            return Err(HistoryError::Version(file.version));
        }
        let mut hours: Vec<HourPeaks> = file
            .hours
            .into_iter()
            .filter(|h| h.hour_start_ms % HOUR_MS == 0)
            .collect();
        hours.sort_by_key(|h| h.hour_start_ms);
        hours.dedup_by_key(|h| h.hour_start_ms);
        let skip = hours.len().saturating_sub(HOURS_KEPT);
        Ok(History {
            hours: hours.into_iter().skip(skip).collect(),
            cluster_minutes: VecDeque::new(),
            dirty: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;

    fn s(calls: u64, registered_subscribers: u64) -> Sample {
        Sample {
            calls,
            registered_subscribers,
        }
    }

    #[test]
    fn hours_keep_the_highest_figure_of_each_hour() {
        let mut h = History::default();
        h.observe(T0 + 10, s(5, 50), None);
        h.observe(T0 + 20 * MINUTE_MS, s(9, 40), None);
        h.observe(T0 + HOUR_MS - 1, s(7, 60), None);
        h.observe(T0 + HOUR_MS, s(1, 1), Some(s(30, 300)));
        h.observe(T0 + HOUR_MS + 5, s(0, 0), Some(s(20, 310)));
        assert_eq!(
            h.hours(),
            vec![
                HourPeaks {
                    hour_start_ms: T0,
                    peak_calls: 9,
                    peak_registered_subscribers: 60,
                    cluster_peak_calls: None,
                    cluster_peak_registered_subscribers: None,
                },
                HourPeaks {
                    hour_start_ms: T0 + HOUR_MS,
                    peak_calls: 1,
                    peak_registered_subscribers: 1,
                    cluster_peak_calls: Some(30),
                    cluster_peak_registered_subscribers: Some(310),
                },
            ]
        );
        assert_eq!(
            h.cluster_minutes(T0 + HOUR_MS + 5),
            vec![ClusterMinute {
                minute_start_ms: T0 + HOUR_MS,
                peak_calls: 30,
                peak_registered_subscribers: 310,
            }]
        );
    }

    #[test]
    fn ninety_days_are_kept_and_no_more() {
        let mut h = History::default();
        for hour in 0..(HOURS_KEPT as u64 + 50) {
            h.observe(T0 + hour * HOUR_MS, s(hour, 0), None);
        }
        let hours = h.hours();
        assert_eq!(hours.len(), HOURS_KEPT);
        assert_eq!(hours[0].hour_start_ms, T0 + 50 * HOUR_MS);
        // A gap longer than 90 days drops everything before it.
        h.observe(T0 + 200 * 24 * HOUR_MS, s(1, 1), None);
        assert_eq!(h.hours().len(), 1);
    }

    #[test]
    fn a_clock_set_back_only_updates_an_hour_that_exists() {
        let mut h = History::default();
        h.observe(T0, s(1, 1), None);
        h.observe(T0 + 2 * HOUR_MS, s(2, 2), None);
        h.observe(T0 + 10, s(8, 8), None);
        h.observe(T0 + HOUR_MS, s(9, 9), None);
        let hours = h.hours();
        assert_eq!(hours.len(), 2);
        assert_eq!((hours[0].peak_calls, hours[1].peak_calls), (8, 2));
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let mut h = History::default();
        h.observe(T0, s(3, 4), Some(s(5, 6)));
        h.observe(T0 + HOUR_MS, s(7, 8), None);
        assert!(h.is_dirty());
        let bytes = h.encode();
        assert!(!h.is_dirty());
        assert_eq!(History::decode(&bytes).expect("decodes").hours(), h.hours());
        assert!(matches!(
            History::decode(br#"{"version": 2, "hours": []}"#),
            Err(HistoryError::Version(2))
        ));
        assert!(matches!(
            History::decode(b"not json"),
            Err(HistoryError::Json(_))
        ));
        assert!(matches!(
            History::decode(&vec![b' '; FILE_LEN_MAX + 1]),
            Err(HistoryError::TooLong)
        ));
        // Unsorted, duplicated and misaligned hours are put in order.
        let messy = format!(
            r#"{{"version":1,"hours":[
            {{"hour_start_ms":{b},"peak_calls":2,"peak_registered_subscribers":0}},
            {{"hour_start_ms":{a},"peak_calls":1,"peak_registered_subscribers":0}},
            {{"hour_start_ms":{a},"peak_calls":9,"peak_registered_subscribers":0}},
            {{"hour_start_ms":{odd},"peak_calls":5,"peak_registered_subscribers":0}}]}}"#,
            a = T0,
            b = T0 + HOUR_MS,
            odd = T0 + 7
        );
        let hours = History::decode(messy.as_bytes()).expect("decodes").hours();
        assert_eq!(
            hours.iter().map(|h| h.hour_start_ms).collect::<Vec<_>>(),
            vec![T0, T0 + HOUR_MS]
        );
    }
}

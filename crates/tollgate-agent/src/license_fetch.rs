//! Fetching the license from the vendor's license server and sending usage reports: the IO
//! around `tollgate-license-client`'s sans-IO [`FetchSchedule`].
//!
//! - A fetch happens at start, daily at `[license] daily_at` local time (plus jitter), early
//!   when the lease nears its end, after failures with exponential backoff, and on demand
//!   (`POST /api/v1/license/reload`). Only one fetch runs at a time.
//! - A fetched document is installed through [`LicenseManager::install`]: verified against
//!   the trusted keys, never taken on the server's word.
//! - When the server cannot be reached, the license in force keeps working until its
//!   signature lease ends (then `LEASE_EXPIRED`). Each failure streak is logged once with
//!   its cause; every attempt is counted by result.
//! - A usage report goes out after each successful fetch and every `[report] interval_s`,
//!   with the peaks since the previous report.
//! - **Several servers** (`[license] server` as a list): one fetch tries the server that
//!   answered last, then the others in the configured order, moving on only when a server
//!   cannot be reached or fails (connection, TLS, timeout, proxy, 5xx, 429, a bad
//!   response); an answer such as 401/403/404 is the vendor's word and ends the attempt.
//!   When all fail, the schedule's backoff applies as for one server. The server that
//!   answered last is remembered ([`LicenseFetcher::source`], the `source` of
//!   `GET /api/v1/license`) and receives the usage reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tollgate_events::WallTime;
use tollgate_license_client::{
    FetchError, FetchReason, FetchSchedule, LicenseClient, Now, UsageFigures, UsageReport,
};

use crate::AgentState;
use crate::license::{InstallError, Installed};

/// Why a fetch did not leave a valid license from the server in force.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the license server's document was refused: {0}")]
    Refused(#[from] InstallError),
}

impl FetchFailure {
    /// Low-cardinality result label.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchFailure::Fetch(e) => e.reason(),
            FetchFailure::Refused(_) => "refused",
        }
    }
}

/// Counters of the fetcher, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct FetchStats {
    /// Attempts by result (`ok` or a failure reason).
    pub results: BTreeMap<&'static str, u64>,
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub last_failure_reason: Option<&'static str>,
    pub reports_sent: u64,
    pub reports_failed: u64,
}

/// The agent's license-server clients, schedule and counters.
#[derive(Debug)]
pub struct LicenseFetcher {
    /// Every server (its URL, its client), in the configured order.
    servers: Vec<(String, LicenseClient)>,
    /// The index of the server that answered last (tried first).
    preferred: Mutex<usize>,
    /// The URL of the server that answered last.
    source: Mutex<Option<String>>,
    schedule: Mutex<FetchSchedule>,
    /// Serializes fetches (the schedule's and the reload endpoint's).
    running: tokio::sync::Mutex<()>,
    stats: Mutex<FetchStats>,
    /// Start of the period the next usage report's peaks cover.
    report_since: Mutex<Option<WallTime>>,
    /// Denied admissions by code at the last delivered report (the next one sends the
    /// difference).
    report_denied: Mutex<[u64; tollgate_license::StatusCode::ALL.len()]>,
    /// Wakes the schedule loop when a reload fetched out of turn.
    wake: tokio::sync::Notify,
}

impl LicenseFetcher {
    /// `servers` in the configured order; at least one.
    pub fn new(servers: Vec<(String, LicenseClient)>, schedule: FetchSchedule) -> Self {
        assert!(!servers.is_empty(), "a fetcher needs a license server");
        LicenseFetcher {
            servers,
            preferred: Mutex::new(0),
            source: Mutex::new(None),
            schedule: Mutex::new(schedule),
            running: tokio::sync::Mutex::new(()),
            stats: Mutex::new(FetchStats::default()),
            report_since: Mutex::new(None),
            report_denied: Mutex::new([0; tollgate_license::StatusCode::ALL.len()]),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn stats(&self) -> FetchStats {
        self.stats.lock().clone()
    }

    /// The URL of the license server that answered last (none before the first answer).
    pub fn source(&self) -> Option<String> {
        self.source.lock().clone()
    }

    /// The order of one attempt: the server that answered last, then the others as
    /// configured.
    fn attempt_order(&self) -> Vec<usize> {
        let preferred = *self.preferred.lock();
        std::iter::once(preferred)
            .chain((0..self.servers.len()).filter(|&i| i != preferred))
            .collect()
    }

    /// Runs `call` on each server in [`Self::attempt_order`] until one answers (or refuses
    /// with the vendor's word); remembers that server. Returns the last result.
    async fn on_servers<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, FetchError>
    where
        F: FnMut(LicenseClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let mut last = None;
        for i in self.attempt_order() {
            let (url, client) = &self.servers[i];
            let result = call(client.clone()).await;
            match &result {
                Err(e) if try_next_server(e) && self.servers.len() > 1 => {
                    tracing::debug!(server = %url, cause = e.reason(), error = %e, "{what}: license server failed, trying the next");
                    last = Some(result);
                    continue;
                }
                _ => {}
            }
            let previous = std::mem::replace(&mut *self.preferred.lock(), i);
            let mut source = self.source.lock();
            if previous != i || source.is_none() {
                if source.is_some() {
                    tracing::info!(server = %url, "license server switched");
                }
                *source = Some(url.clone());
            }
            return result;
        }
        last.unwrap_or_else(|| Err(FetchError::Other("no license server configured".into())))
    }

    /// Fetches the lease now and installs it. `Ok` means the server's document is in force
    /// (newly installed, or the same as the one already in force).
    pub async fn fetch_now(
        &self,
        state: &AgentState,
        reason: &str,
    ) -> Result<Installed, FetchFailure> {
        let _one_at_a_time = self.running.lock().await;
        let result = match self
            .on_servers("license fetch", |client| async move {
                client.fetch_lease().await
            })
            .await
        {
            Ok(lease) => {
                let now = crate::wall_clock().unix_ms();
                // Issue 16: the server's clock and highest serial are watermarks, taken
                // before the document is judged.
                if let Some(server_ms) = lease.server_time.map(WallTime::unix_ms) {
                    state
                        .license
                        .observe_trusted_time(server_ms, now, "license server");
                }
                if let Some(serial) = lease.serial_issued_max {
                    state.license.learn_serial(serial, "license server");
                }
                match state
                    .license
                    .install(lease.license.as_bytes(), now, "license server")
                {
                    Ok(installed) => Ok(installed),
                    // Something newer is in force already (an upload, the mesh): keep it.
                    Err(InstallError::NotNewer {
                        current_serial,
                        serial,
                    }) => Ok(Installed {
                        changed: false,
                        license_key: lease.license_key.clone(),
                        serial: current_serial,
                        previous_serial: Some(current_serial),
                        message: format!(
                            "the license server's serial {serial} is not newer than serial {current_serial} in force"
                        ),
                    }),
                    Err(e) => Err(FetchFailure::Refused(e)),
                }
            }
            Err(e) => Err(FetchFailure::Fetch(e)),
        };
        let now = crate::wall_clock().unix_ms();
        state.license.license_server_answered();
        let first_failure;
        {
            let mut schedule = self.schedule.lock();
            let mut stats = self.stats.lock();
            first_failure = stats
                .last_failure_ms
                .is_none_or(|f| stats.last_success_ms.is_some_and(|s| s > f));
            match &result {
                Ok(_) => {
                    schedule.on_success(now);
                    stats.last_success_ms = Some(now);
                    *stats.results.entry("ok").or_default() += 1;
                }
                Err(e) => {
                    schedule.on_failure(now);
                    stats.last_failure_ms = Some(now);
                    stats.last_failure_reason = Some(e.reason());
                    *stats.results.entry(e.reason()).or_default() += 1;
                }
            }
        }
        match &result {
            Ok(installed) => {
                tracing::info!(
                    reason,
                    serial = installed.serial,
                    changed = installed.changed,
                    "license fetched from the license server"
                );
                self.wake.notify_one();
            }
            Err(e) if first_failure => tracing::error!(
                reason,
                cause = e.reason(),
                error = %e,
                "license fetch failed; the license in force keeps working until its signature lease ends"
            ),
            Err(e) => tracing::debug!(cause = e.reason(), error = %e, "license fetch failed again"),
        }
        if result.is_ok() {
            self.send_report(state).await;
        }
        result
    }

    /// Sends a usage report with the peaks since the previous one.
    pub async fn send_report(&self, state: &AgentState) {
        let now = crate::wall_clock();
        let since = *self.report_since.lock();
        let usage = state.tables.usage();
        // The maxima of this report's own interval (since the previous report was taken),
        // never below the current counts; given back if the report is not delivered.
        let peaks = state.tables.peaks().take_interval();
        // The next interval starts at today's level.
        state.tables.peaks().observe_interval(
            usage.calls,
            usage.emergency_calls,
            usage.registered_subscribers,
        );
        let node = UsageFigures {
            calls: usage.calls,
            emergency_calls: usage.emergency_calls,
            subscribers: usage.subscribers,
            registered_subscribers: usage.registered_subscribers,
            peak_calls: peaks.calls.max(usage.calls),
            peak_emergency_calls: peaks.emergency_calls.max(usage.emergency_calls),
            peak_registered_subscribers: peaks
                .registered_subscribers
                .max(usage.registered_subscribers),
        };
        let denied = state.denials.totals();
        let admissions_denied = {
            let reported = self.report_denied.lock();
            tollgate_license::StatusCode::ALL
                .into_iter()
                .map(|code| {
                    let i = code as usize;
                    (
                        code.as_str().to_owned(),
                        denied[i].saturating_sub(reported[i]),
                    )
                })
                .filter(|&(_, n)| n > 0)
                .collect()
        };
        // The ledger entries not yet delivered, oldest first, as many as one report carries.
        let unsent = state.ledger.unsent();
        let ledger_entries = &unsent[..unsent
            .len()
            .min(tollgate_license_client::LEDGER_ENTRIES_PER_REPORT_MAX)];
        let report = UsageReport {
            ledger: ledger_entries
                .iter()
                .map(|e| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(e.encode())
                })
                .collect(),
            admissions_denied,
            node_id: state.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            timestamp: now,
            since,
            license_serial: state.license.current().map(|c| c.document().serial),
            node,
            cluster: state.cluster_usage().map(|a| UsageFigures {
                calls: a.calls,
                emergency_calls: a.emergency_calls,
                subscribers: a.subscribers,
                registered_subscribers: a.registered_subscribers,
                ..UsageFigures::default()
            }),
        };
        let sent = self
            .on_servers("usage report", |client| {
                let report = &report;
                async move { client.send_usage(report).await }
            })
            .await;
        match sent {
            Ok(()) => {
                *self.report_since.lock() = Some(now);
                *self.report_denied.lock() = denied;
                if let Some(last) = ledger_entries.last() {
                    state.ledger.delivered(last.seq);
                }
                self.stats.lock().reports_sent += 1;
            }
            Err(e) => {
                state.tables.peaks().restore_interval(peaks);
                let mut stats = self.stats.lock();
                stats.reports_failed += 1;
                if stats.reports_failed == 1 || stats.reports_sent > 0 {
                    tracing::warn!(cause = e.reason(), error = %e, "usage report not delivered");
                }
            }
        }
    }

    /// The schedule loop: sleeps until the next fetch the schedule asks for, fetches, repeats.
    pub async fn run(self: Arc<Self>, state: Arc<AgentState>) {
        loop {
            let now = crate::wall_clock().unix_ms();
            let lease_end = state
                .license
                .current()
                .and_then(|c| c.document().signature_valid_until.map(WallTime::unix_ms));
            let next = self.schedule.lock().next_fetch(
                Now {
                    unix_ms: now,
                    utc_offset_s: local_utc_offset_s(now),
                },
                lease_end,
            );
            let wait = Duration::from_millis(next.at_ms.saturating_sub(now));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let _ = self.fetch_now(&state, reason_label(next.reason)).await;
                }
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Whether a failure says nothing about the vendor's decision (the server is down,
/// unreachable or failing), so another server may answer.
fn try_next_server(e: &FetchError) -> bool {
    match e {
        FetchError::Dns(_)
        | FetchError::Connect(_)
        | FetchError::Tls(_)
        | FetchError::Timeout(_)
        | FetchError::Proxy(_)
        | FetchError::BadResponse(_)
        | FetchError::Other(_) => true,
        FetchError::Http { status, .. } => *status >= 500 || *status == 429,
    }
}

fn reason_label(r: FetchReason) -> &'static str {
    r.as_str()
}

/// This host's UTC offset at `unix_ms`, in seconds (from the C library's time zone rules:
/// `localtime_r`, which is safe to call from any thread).
pub fn local_utc_offset_s(unix_ms: u64) -> i32 {
    let t = (unix_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff as i32
    }
}

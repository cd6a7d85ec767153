//! The agent's license: which document is current, where it is kept, how it is evaluated
//! every second against usage, and the lock-free admission gate the ingest threads read.
//!
//! Files in the state dir:
//! - `license.current` — the license in force (armored text, as signed);
//! - `license.previous` — the one it replaced, kept for the record (support, audit). It is
//!   never loaded, and it cannot be installed again: its serial is below the rollback
//!   watermark, so an upload of it is refused `ROLLBACK`. Going back to older terms takes a
//!   new document with a higher serial from the vendor;
//! - `license.state` — the rollback watermarks (highest serial accepted, latest wall-clock
//!   time seen), so a restart cannot be used to roll back the serial or the clock.
//!
//! Sources of a license, in order of trust: an upload (`PUT /api/v1/license`), a reload of
//! `[license] file`, the state dir at start. Whatever the source, a candidate replaces the
//! current license only if it verifies against the trusted keys, passes the rollback /
//! clock / host checks, has not already expired (`EXPIRED`: the current one stays), and
//! supersedes the current one (higher serial, or same serial with a later lease).
//!
//! A candidate refused while no license is in force is remembered ([`RefusedLicense`]):
//! the status is then the refusal's own code (`INVALID`, `ROLLBACK`, `HOST_MISMATCH`,
//! `NOT_YET_VALID`, `EXPIRED`), not `NO_LICENSE`, and under `unlicensed_mode = "enforce"`
//! `admit` denies with that code. Uploads are answered directly and not remembered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tollgate_events::WallTime;
use tollgate_ingest::{Admission, Decision};
use tollgate_license::{
    AdmissionGate, AdmissionPlan, Context, DenialCounters, Document, Evaluation, Mode, StatusCode,
    TrustedKeys, VerifiedLicense,
};
use tollgate_usage::Tables;

use crate::state::{StateDir, StateError, write_atomically};

pub const CURRENT_FILE: &str = "license.current";
pub const PREVIOUS_FILE: &str = "license.previous";
pub const WATERMARKS_FILE: &str = "license.state";

/// How often the clock watermark is written to disk (it is kept in memory every second).
pub const WATERMARK_PERSIST_MS: u64 = 60_000;
/// A threshold warning is repeated this often while it lasts.
pub const WARNING_REPEAT_MS: u64 = 24 * 3600 * 1000;

/// Why a candidate license was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Verify(#[from] tollgate_license::VerifyError),
    #[error("{0}")]
    Refused(#[from] tollgate_license::Refusal),
    #[error(
        "serial {serial} does not supersede the current license (serial {current_serial}); upload a newer document"
    )]
    NotNewer { serial: u64, current_serial: u64 },
    #[error(
        "serial {serial} already expired on {}; the license in force is kept",
        tollgate_license::timestamp::format_rfc3339(*valid_until)
    )]
    Expired { serial: u64, valid_until: WallTime },
    #[error("license key {found} does not match the configured license key {configured}")]
    WrongKey { found: String, configured: String },
    #[error("no license source: set [license] file, or upload one")]
    NoSource,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl InstallError {
    /// The stable status code a refusal maps to (for API bodies and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            InstallError::Verify(e) => e.code().as_str(),
            InstallError::Refused(r) => r.code().as_str(),
            InstallError::Expired { .. } => "EXPIRED",
            InstallError::NotNewer { .. } => "NOT_NEWER",
            InstallError::WrongKey { .. } => "WRONG_LICENSE_KEY",
            InstallError::NoSource => "NO_SOURCE",
            InstallError::Read { .. } | InstallError::State(_) => "IO_ERROR",
        }
    }
}

impl InstallError {
    /// The license status a refusal stands for, when the candidate was a license at all
    /// (not for an unreadable file or a candidate that is simply not newer).
    pub fn status_code(&self) -> Option<StatusCode> {
        match self {
            InstallError::Verify(e) => Some(e.code()),
            InstallError::Refused(r) => Some(r.code()),
            InstallError::Expired { .. } => Some(StatusCode::Expired),
            InstallError::WrongKey { .. } => Some(StatusCode::Invalid),
            InstallError::NotNewer { .. }
            | InstallError::NoSource
            | InstallError::Read { .. }
            | InstallError::State(_) => None,
        }
    }
}

/// The latest candidate refused from the state dir, `[license] file`, the license server
/// or the mesh (cleared when a license is installed). While no license is in force, the
/// status is its `code`. Shown in `GET /api/v1/license` as `refused`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefusedLicense {
    pub code: StatusCode,
    /// The refusal in words (the same text the log line has).
    pub reason: String,
    /// Where the candidate came from (`state dir`, `reload`, `license server`, `mesh (…)`).
    pub source: String,
    /// When it was refused, Unix ms.
    pub at_ms: u64,
    /// The candidate's license key and serial, when it was authentic.
    pub license_key: Option<String>,
    pub serial: Option<u64>,
    /// The authentic refused document (its limits and dates are shown, never applied).
    #[serde(skip)]
    pub document: Option<Document>,
}

/// What an install or reload did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    /// False when the candidate was the license already in force.
    pub changed: bool,
    pub license_key: String,
    pub serial: u64,
    pub previous_serial: Option<u64>,
    pub message: String,
}

/// The rollback defence, persisted across restarts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
struct Watermarks {
    serial_seen_max: Option<u64>,
    time_recorded_max_ms: Option<u64>,
    /// The highest serial learned from elsewhere (the mesh's records, the license server's
    /// lease answers): candidates below it are refused `ROLLBACK`, while the license in
    /// force is kept until the newer document arrives (issue 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial_learned_max: Option<u64>,
}

/// `CLOCK_SKEW`: what the agent's clock was found to be against a trusted clock: the
/// license server's (from its lease answers) or the mesh peers' (the median rule of
/// `tollgate_replication::clock`). Shown in `GET /api/v1/license` as `clock` (the one
/// licenses are judged by) and `clocks` (each source's latest).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClockCheck {
    /// `OK`, or `CLOCK_SKEW` when `|skew_ms|` exceeds `tolerance_ms`.
    pub status: &'static str,
    /// Trusted time minus this node's time, ms (positive: this node's clock is behind).
    pub skew_ms: i64,
    pub tolerance_ms: u64,
    /// Where the trusted time came from (`license server`, `peers`).
    pub source: String,
    /// When it was compared, Unix ms by this node's clock.
    pub checked_at_ms: u64,
}

impl ClockCheck {
    pub fn skewed(&self) -> bool {
        self.status == "CLOCK_SKEW"
    }

    /// `the license server's`, `the peers'`: for log lines and the explanation.
    pub fn source_possessive(&self) -> String {
        possessive(&self.source)
    }
}

fn possessive(source: &str) -> String {
    if source.ends_with('s') {
        format!("the {source}'")
    } else {
        format!("the {source}'s")
    }
}

/// The trusted clock sources, in the order their `CLOCK_SKEW` wins.
const CLOCK_SOURCES: usize = 2;
const CLOCK_SERVER: usize = 0;
const CLOCK_PEERS: usize = 1;

/// Settings of the license manager (from `[license]` and `[general]`).
#[derive(Debug, Clone, Default)]
pub struct LicenseSettings {
    pub license_key: Option<String>,
    pub file: Option<PathBuf>,
    pub trusted: TrustedKeys,
    pub host_id: Option<String>,
    pub unlicensed_mode: Mode,
    /// How far this node's clock may be from a trusted clock before `CLOCK_SKEW`, ms (0:
    /// the default, [`crate::config::CLOCK_SKEW_TOLERANCE_S_DEFAULT`]).
    pub clock_skew_tolerance_ms: u64,
}

/// What the log has already said, so transitions are logged once.
#[derive(Debug, Default)]
struct LogMemory {
    status: Option<StatusCode>,
    /// Per limit (calls, subscribers, registered_subscribers): status last logged and when.
    limits: [(Option<StatusCode>, u64); 3],
}

/// The agent's license state. Shared by the HTTP handlers, the evaluation task and (through
/// its gate) the ingest threads.
#[derive(Debug)]
pub struct LicenseManager {
    settings: LicenseSettings,
    state_dir: Arc<StateDir>,
    current: Mutex<Option<Arc<VerifiedLicense>>>,
    watermarks: Mutex<(Watermarks, u64)>,
    gate: Arc<AdmissionGate>,
    last: Mutex<Option<Arc<Evaluation>>>,
    refused: Mutex<Option<RefusedLicense>>,
    log: Mutex<LogMemory>,
    /// A license server is configured and its first fetch has not finished yet.
    awaiting_server: AtomicBool,
    /// The latest comparison with each trusted clock ([`CLOCK_SERVER`], [`CLOCK_PEERS`]);
    /// none before the first lease answer, or while no peer's clock is known.
    clocks: Mutex<[Option<ClockCheck>; CLOCK_SOURCES]>,
}

impl LicenseManager {
    /// Loads the watermarks and the best license found in the state dir and `[license]
    /// file`. Problems are logged, never fatal: the agent runs unlicensed until fixed.
    pub fn open(settings: LicenseSettings, state_dir: Arc<StateDir>, now_ms: u64) -> Self {
        let watermarks = read_watermarks(state_dir.path());
        let manager = LicenseManager {
            settings,
            state_dir,
            current: Mutex::new(None),
            watermarks: Mutex::new((watermarks, now_ms)),
            gate: Arc::new(AdmissionGate::new(AdmissionPlan::ADMIT_ALL)),
            last: Mutex::new(None),
            refused: Mutex::new(None),
            log: Mutex::new(LogMemory::default()),
            awaiting_server: AtomicBool::new(false),
            clocks: Mutex::new([None, None]),
        };
        let stored = manager.state_dir.path().join(CURRENT_FILE);
        match std::fs::read(&stored) {
            Ok(text) => match manager.install(&text, now_ms, "state dir") {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(code = e.code(), error = %e, path = %stored.display(), "stored license refused")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(error = %e, path = %stored.display(), "cannot read stored license")
            }
        }
        if manager.settings.file.is_some() {
            match manager.reload(now_ms) {
                Ok(_) => {}
                Err(InstallError::NotNewer { .. }) => {}
                Err(e) => tracing::error!(code = e.code(), error = %e, "license file refused"),
            }
        }
        if manager.current().is_none() {
            let status = manager.refused().map_or(StatusCode::NoLicense, |r| r.code);
            tracing::warn!(
                mode = ?manager.settings.unlicensed_mode,
                code = status.as_str(),
                "no valid license: running unlicensed (status {status})"
            );
        }
        manager
    }

    /// The gate the ingest threads consult for `admit`.
    pub fn gate(&self) -> Arc<AdmissionGate> {
        Arc::clone(&self.gate)
    }

    pub fn current(&self) -> Option<Arc<VerifiedLicense>> {
        self.current.lock().clone()
    }

    /// The latest refused candidate since the last install (see [`RefusedLicense`]).
    pub fn refused(&self) -> Option<RefusedLicense> {
        self.refused.lock().clone()
    }

    /// The latest evaluation (none before the first tick).
    pub fn last_evaluation(&self) -> Option<Arc<Evaluation>> {
        self.last.lock().clone()
    }

    pub fn settings(&self) -> &LicenseSettings {
        &self.settings
    }

    /// The context the license in force is evaluated in. `now_ms` is the trusted time.
    fn context(&self, now_ms: u64) -> Context<'_> {
        let (w, _) = *self.watermarks.lock();
        Context {
            now: WallTime::from_unix_ms(now_ms),
            host_id: self.settings.host_id.as_deref(),
            serial_seen_max: w.serial_seen_max,
            time_recorded_max: w.time_recorded_max_ms.map(WallTime::from_unix_ms),
            unlicensed_mode: self.settings.unlicensed_mode,
        }
    }

    /// The context a candidate is checked in: also below the serial learned from peers and
    /// the license server.
    fn candidate_context(&self, now_ms: u64) -> Context<'_> {
        let mut context = self.context(now_ms);
        let learned = self.watermarks.lock().0.serial_learned_max;
        context.serial_seen_max = context.serial_seen_max.max(learned);
        context
    }

    /// The time licenses are judged by: this node's clock, or, while it disagrees with a
    /// trusted clock by more than the tolerance (`CLOCK_SKEW`), the trusted clock's: the
    /// license server's when it says so, else the peers'.
    pub fn trusted_now(&self, local_ms: u64) -> u64 {
        match self.clock() {
            Some(c) if c.skewed() => local_ms.saturating_add_signed(c.skew_ms),
            _ => local_ms,
        }
    }

    /// The rollback watermarks as `GET /api/v1/license` shows them (`watermarks`).
    pub fn watermarks(&self) -> serde_json::Value {
        let (w, _) = *self.watermarks.lock();
        serde_json::json!({
            "serial_seen_max": w.serial_seen_max,
            "serial_learned_max": w.serial_learned_max,
            "time_recorded_max_ms": w.time_recorded_max_ms,
        })
    }

    /// The comparison licenses are judged by: the first `CLOCK_SKEW` of the license
    /// server's and the peers' (in that order), else the first one made.
    pub fn clock(&self) -> Option<ClockCheck> {
        let clocks = self.clocks.lock();
        clocks
            .iter()
            .flatten()
            .find(|c| c.skewed())
            .or_else(|| clocks.iter().flatten().next())
            .cloned()
    }

    /// The latest comparison with each source (license server, peers), as made.
    pub fn clocks(&self) -> Vec<ClockCheck> {
        self.clocks.lock().iter().flatten().cloned().collect()
    }

    fn tolerance_ms(&self) -> u64 {
        match self.settings.clock_skew_tolerance_ms {
            0 => crate::config::CLOCK_SKEW_TOLERANCE_S_DEFAULT * 1000,
            t => t,
        }
    }

    /// A trusted clock read `trusted_ms` when this node's read `local_ms` (the license
    /// server's `server_time_ms`, compared when its answer arrived). Beyond the tolerance
    /// this is `CLOCK_SKEW`: logged once at error, shown in `GET /api/v1/license`, and
    /// licenses are judged by the trusted time until a later comparison agrees.
    pub fn observe_trusted_time(&self, trusted_ms: u64, local_ms: u64, source: &str) {
        let skew_ms = i64::try_from(i128::from(trusted_ms) - i128::from(local_ms)).unwrap_or(
            if trusted_ms > local_ms {
                i64::MAX
            } else {
                i64::MIN
            },
        );
        let tolerance_ms = self.tolerance_ms();
        self.observe(CLOCK_SERVER, source, skew_ms, tolerance_ms, local_ms);
    }

    /// The mesh peers' clocks against this node's (`None`: no peer whose clock is known),
    /// by the rule of `tollgate_replication::clock`: beyond the tolerance plus the records'
    /// lag ([`tollgate_replication::PEER_CLOCK_SLACK_MS`]) this is `CLOCK_SKEW`, and,
    /// unless the license server's check says `CLOCK_SKEW` itself, licenses are judged by
    /// the peers' time. Called every push interval by the cluster task.
    pub fn observe_peers_time(
        &self,
        peers: Option<tollgate_replication::PeersTime>,
        local_ms: u64,
    ) {
        let tolerance_ms = self.tolerance_ms();
        match peers {
            Some(time) => self.observe(
                CLOCK_PEERS,
                "peers",
                time.offset_ms,
                tolerance_ms.saturating_add(tollgate_replication::PEER_CLOCK_SLACK_MS),
                local_ms,
            ),
            None => {
                if self.clocks.lock()[CLOCK_PEERS]
                    .take()
                    .is_some_and(|c| c.skewed())
                {
                    tracing::warn!(
                        "CLOCK_SKEW against the peers no longer known: no live peer's clock to compare with"
                    );
                }
            }
        }
    }

    fn observe(&self, slot: usize, source: &str, skew_ms: i64, tolerance_ms: u64, local_ms: u64) {
        let skewed = skew_ms.unsigned_abs() > tolerance_ms;
        let check = ClockCheck {
            status: if skewed { "CLOCK_SKEW" } else { "OK" },
            skew_ms,
            tolerance_ms,
            source: source.to_owned(),
            checked_at_ms: local_ms,
        };
        let was = self.clocks.lock()[slot]
            .replace(check)
            .is_some_and(|c| c.skewed());
        let whose = possessive(source);
        match (was, skewed) {
            (false, true) => tracing::error!(
                code = "CLOCK_SKEW",
                skew_ms,
                tolerance_ms,
                source,
                trusted_time = %tollgate_license::timestamp::format_rfc3339(WallTime::from_unix_ms(
                    local_ms.saturating_add_signed(skew_ms)
                )),
                "CLOCK_SKEW: this node's clock is {}s {} {whose} (tolerance {}s); licenses are judged by {whose} time",
                skew_ms.unsigned_abs() / 1000,
                if skew_ms > 0 { "behind" } else { "ahead of" },
                tolerance_ms / 1000
            ),
            (true, false) => {
                tracing::info!(skew_ms, source, "clock back within tolerance of {whose}")
            }
            _ => {}
        }
    }

    /// Raises the rollback watermark to `serial`, learned from `source` (a peer's record,
    /// the license server's `serial_issued_max`). Persisted; candidates below it are
    /// refused `ROLLBACK` from then on.
    pub fn learn_serial(&self, serial: u64, source: &str) {
        let mut w = self.watermarks.lock();
        if serial == 0 || w.0.serial_learned_max.is_some_and(|s| s >= serial) {
            return;
        }
        w.0.serial_learned_max = Some(serial);
        if let Err(e) = write_watermarks(self.state_dir.path(), &w.0) {
            tracing::warn!(error = %e, "cannot persist license watermarks");
        }
        if w.0.serial_seen_max.is_none_or(|s| s < serial) {
            tracing::info!(
                serial,
                source,
                "license serial watermark raised to {serial} (learned from the {source}): older serials are refused ROLLBACK"
            );
        }
    }

    /// Verifies `text` and makes it the current license if it supersedes the one in force.
    /// `source` says where it came from, for the log (`upload` for the API's uploads, which
    /// are answered directly; any other source's refusal is remembered for the status).
    pub fn install(
        &self,
        text: &[u8],
        now_ms: u64,
        source: &str,
    ) -> Result<Installed, InstallError> {
        let mut authentic = None;
        let result = self.install_checked(text, now_ms, source, &mut authentic);
        match &result {
            Ok(_) => *self.refused.lock() = None,
            Err(e) if source != "upload" => {
                if let Some(code) = e.status_code() {
                    *self.refused.lock() = Some(RefusedLicense {
                        code,
                        reason: e.to_string(),
                        source: source.to_owned(),
                        at_ms: now_ms,
                        license_key: authentic.as_ref().map(|d: &Document| d.license_key.clone()),
                        serial: authentic.as_ref().map(|d| d.serial),
                        document: authentic,
                    });
                }
            }
            Err(_) => {}
        }
        result
    }

    fn install_checked(
        &self,
        text: &[u8],
        now_ms: u64,
        source: &str,
        authentic: &mut Option<Document>,
    ) -> Result<Installed, InstallError> {
        let now_ms = self.trusted_now(now_ms);
        let candidate = tollgate_license::verify(text, &self.settings.trusted)?;
        *authentic = Some(candidate.document().clone());
        candidate.check(&self.candidate_context(now_ms))?;
        let doc = candidate.document();
        if let Some(configured) = &self.settings.license_key
            && &doc.license_key != configured
        {
            return Err(InstallError::WrongKey {
                found: doc.license_key.clone(),
                configured: configured.clone(),
            });
        }
        let mut current = self.current.lock();
        let previous_serial = current.as_ref().map(|c| c.document().serial);
        if let Some(cur) = current.as_ref()
            && cur.document() == doc
        {
            return Ok(Installed {
                changed: false,
                license_key: doc.license_key.clone(),
                serial: doc.serial,
                previous_serial,
                message: "this license is already in force".into(),
            });
        }
        // An authentic license that already expired never replaces anything (what was in
        // force at the last run is loaded from the state dir as it is, expired or not).
        if source != "state dir"
            && let Some(valid_until) = doc.valid_until
            && WallTime::from_unix_ms(now_ms) >= valid_until
        {
            return Err(InstallError::Expired {
                serial: doc.serial,
                valid_until,
            });
        }
        if let Some(cur) = current.as_ref()
            && !doc.supersedes(cur.document())
        {
            return Err(InstallError::NotNewer {
                serial: doc.serial,
                current_serial: cur.document().serial,
            });
        }
        // Persist before switching: what is in force is always what a restart loads.
        let dir = self.state_dir.path();
        let current_path = dir.join(CURRENT_FILE);
        if source != "state dir" {
            // The file in force is copied to `.previous`, never moved: whatever fails below
            // (a full disk while writing the new one), `license.current` stays in place.
            if current.is_some() {
                match std::fs::read(&current_path) {
                    Ok(old) => write_atomically(&dir.join(PREVIOUS_FILE), &old, 0o600)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(StateError::Io {
                            path: current_path.clone(),
                            source,
                        }
                        .into());
                    }
                }
            }
            write_atomically(&current_path, candidate.armored().as_bytes(), 0o600)?;
        }
        {
            let mut w = self.watermarks.lock();
            w.0.serial_seen_max = Some(w.0.serial_seen_max.unwrap_or(0).max(doc.serial));
            w.0.time_recorded_max_ms = Some(w.0.time_recorded_max_ms.unwrap_or(0).max(now_ms));
            write_watermarks(dir, &w.0)?;
            w.1 = now_ms;
        }
        tracing::info!("{}", tollgate_license::log_line(doc));
        tracing::info!(source, serial = doc.serial, previous_serial = ?previous_serial, key_id = %candidate.key_id(), "license installed");
        let installed = Installed {
            changed: true,
            license_key: doc.license_key.clone(),
            serial: doc.serial,
            previous_serial,
            message: match previous_serial {
                Some(p) => format!(
                    "license {} replaced serial {p} with serial {}",
                    doc.license_key, doc.serial
                ),
                None => format!(
                    "license {} serial {} installed",
                    doc.license_key, doc.serial
                ),
            },
        };
        *current = Some(Arc::new(candidate));
        Ok(installed)
    }

    /// Re-reads `[license] file` (or, without one, the stored current license) and installs
    /// it if it verifies. `Ok` means a valid license is in force afterwards.
    pub fn reload(&self, now_ms: u64) -> Result<Installed, InstallError> {
        let path = match &self.settings.file {
            Some(p) => p.clone(),
            None => {
                let stored = self.state_dir.path().join(CURRENT_FILE);
                if !stored.exists() {
                    return Err(InstallError::NoSource);
                }
                stored
            }
        };
        let text = std::fs::read(&path).map_err(|source| InstallError::Read {
            path: path.clone(),
            source,
        })?;
        match self.install(&text, now_ms, "reload") {
            // An upload newer than the file is in force: keep it, and say so.
            Err(InstallError::NotNewer {
                serial,
                current_serial,
            }) => Ok(Installed {
                changed: false,
                license_key: self
                    .current()
                    .map(|c| c.document().license_key.clone())
                    .unwrap_or_default(),
                serial: current_serial,
                previous_serial: Some(current_serial),
                message: format!(
                    "{} holds serial {serial}, not newer than serial {current_serial} in force; kept serial {current_serial}",
                    path.display()
                ),
            }),
            other => other,
        }
    }

    /// Evaluates the current license against `usage` at `now_ms`, publishes the admission
    /// plan to the gate, and logs transitions. Called every second by the agent.
    pub fn tick(&self, now_ms: u64, usage: &tollgate_license::Usage) -> Arc<Evaluation> {
        let now_ms = self.trusted_now(now_ms);
        {
            let mut w = self.watermarks.lock();
            // The clock watermark only moves forward; a clock set back is caught by
            // `check` through the context.
            if w.0.time_recorded_max_ms.is_none_or(|t| now_ms > t) {
                w.0.time_recorded_max_ms = Some(now_ms);
            }
            if now_ms.saturating_sub(w.1) >= WATERMARK_PERSIST_MS {
                if let Err(e) = write_watermarks(self.state_dir.path(), &w.0) {
                    tracing::warn!(error = %e, "cannot persist license watermarks");
                }
                w.1 = now_ms;
            }
        }
        let current = self.current();
        let context = self.context(now_ms);
        let evaluation = Arc::new(match (&current, self.refused.lock().as_ref()) {
            (None, Some(refused)) => tollgate_license::evaluate_refused(
                refused.code,
                &refused.reason,
                refused.document.as_ref(),
                &context,
                usage,
            ),
            _ => tollgate_license::evaluate(current.as_deref(), &context, usage),
        });
        self.gate.set(evaluation.admission);
        self.log_transitions(now_ms, &evaluation);
        *self.last.lock() = Some(Arc::clone(&evaluation));
        evaluation
    }

    /// A license server is configured: until [`LicenseManager::license_server_answered`],
    /// having no license is not logged as an error.
    pub fn await_license_server(&self) {
        self.awaiting_server.store(true, Relaxed);
    }

    /// The first fetch from the license server has finished (installed, refused or failed).
    pub fn license_server_answered(&self) {
        self.awaiting_server.store(false, Relaxed);
    }

    /// Writes the watermarks now (at shutdown).
    pub fn persist(&self) {
        let w = self.watermarks.lock();
        if let Err(e) = write_watermarks(self.state_dir.path(), &w.0) {
            tracing::warn!(error = %e, "cannot persist license watermarks");
        }
    }

    fn log_transitions(&self, now_ms: u64, e: &Evaluation) {
        let mut log = self.log.lock();
        // No license yet while the first fetch from the license server is under way is the
        // normal start of a new node, said at info ("waiting for the license server"), not
        // an error; it is logged (at error) only if still so once the server has answered
        // or failed.
        let waiting = e.status == StatusCode::NoLicense && self.awaiting_server.load(Relaxed);
        if log.status != Some(e.status) && !waiting {
            let explanation = e.explain();
            match e.status {
                StatusCode::Ok if log.status.is_some() => {
                    tracing::info!(
                        status = e.status.as_str(),
                        "license status back to OK: {explanation}"
                    )
                }
                StatusCode::Ok => {}
                StatusCode::Warning | StatusCode::LeaseExpired => {
                    tracing::warn!(
                        status = e.status.as_str(),
                        "license status {}: {explanation}",
                        e.status.as_str()
                    )
                }
                _ => tracing::error!(
                    status = e.status.as_str(),
                    "license status {}: {explanation}",
                    e.status.as_str()
                ),
            }
            log.status = Some(e.status);
        }
        for (i, (name, _, limit)) in e.limits.iter().into_iter().enumerate() {
            let (last, at) = log.limits[i];
            let bad = matches!(limit.status, StatusCode::Warning | StatusCode::OverLimit);
            let repeat = bad && now_ms.saturating_sub(at) >= WARNING_REPEAT_MS;
            if last != Some(limit.status) || repeat {
                let limit_value = limit
                    .limit
                    .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
                match limit.status {
                    StatusCode::Warning => tracing::warn!(
                        limit = name, usage = limit.usage, license_limit = %limit_value, warn_at = ?limit.warn_at,
                        "license threshold crossed: {name} at {} of {limit_value}", limit.usage
                    ),
                    StatusCode::OverLimit => tracing::error!(
                        limit = name, usage = limit.usage, license_limit = %limit_value,
                        "license limit exceeded: {name} at {} of {limit_value} (mode {:?})", limit.usage, e.mode
                    ),
                    _ if last.is_some_and(|s| {
                        matches!(s, StatusCode::Warning | StatusCode::OverLimit)
                    }) =>
                    {
                        tracing::info!(
                            limit = name,
                            usage = limit.usage,
                            "license usage back under the warning threshold: {name}"
                        )
                    }
                    _ => {}
                }
                log.limits[i] = (Some(limit.status), now_ms);
            }
        }
    }
}

fn read_watermarks(dir: &Path) -> Watermarks {
    let path = dir.join(WATERMARKS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(error = %e, path = %path.display(), "license watermarks unreadable; rollback defence starts over");
            Watermarks::default()
        }),
        Err(_) => Watermarks::default(),
    }
}

fn write_watermarks(dir: &Path, w: &Watermarks) -> Result<(), StateError> {
    let json = serde_json::to_vec(w).unwrap_or_default();
    write_atomically(&dir.join(WATERMARKS_FILE), &json, 0o600)
}

/// Answers `admit` on the ingest threads: one relaxed atomic load of the published plan,
/// and the current calls count (a lock-free sum) only when the plan needs it. A denial adds
/// one to this thread's stripe of `denied` (by code).
pub struct LicenseAdmission {
    pub gate: Arc<AdmissionGate>,
    pub calls: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub denied: Arc<DenialCounters>,
}

impl std::fmt::Debug for LicenseAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseAdmission")
            .field("plan", &self.gate.plan())
            .finish()
    }
}

impl LicenseAdmission {
    /// Admission against this node's own calls.
    pub fn local(
        gate: Arc<AdmissionGate>,
        tables: Arc<Tables>,
        denied: Arc<DenialCounters>,
    ) -> Self {
        LicenseAdmission {
            gate,
            calls: Arc::new(move || tables.usage().calls),
            denied,
        }
    }
}

impl Admission for LicenseAdmission {
    #[inline]
    fn decide(&self, _call_id: &[u8], emergency: bool) -> Decision {
        match self.gate.decide_with(emergency, || (self.calls)()) {
            tollgate_license::Decision::Admit => Decision::Admit,
            tollgate_license::Decision::Deny(code) => {
                self.denied.record(code);
                Decision::Deny(code.as_str())
            }
        }
    }
}

/// The license crate's view of usage, from the tables' counts.
pub fn license_usage(u: &tollgate_usage::Usage) -> tollgate_license::Usage {
    tollgate_license::Usage {
        calls: u.calls,
        emergency_calls: u.emergency_calls,
        subscribers: u.subscribers,
        registered_subscribers: u.registered_subscribers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::timestamp::{DAY_MS, format_rfc3339};
    use tollgate_license::{LicenseSpec, SigningKey};

    const NOW: u64 = 1_900_000_000_000;

    fn text(key: &SigningKey, serial: u64, valid_until_ms: u64) -> Vec<u8> {
        let spec = format!(
            "license_key = \"K1\"\ncustomer = \"C\"\nkind = \"term\"\nserial = {serial}\n\
             issued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\n[limits]\ncalls = 10\n",
            format_rfc3339(WallTime::from_unix_ms(NOW - 300 * DAY_MS)),
            format_rfc3339(WallTime::from_unix_ms(NOW - 300 * DAY_MS)),
            format_rfc3339(WallTime::from_unix_ms(valid_until_ms))
        );
        let doc = LicenseSpec::parse(&spec)
            .unwrap()
            .to_document(key.key_id(), WallTime::from_unix_ms(NOW))
            .unwrap();
        tollgate_license::sign(&doc, key).unwrap().into_bytes()
    }

    fn manager(key: &SigningKey, dir: &std::path::Path) -> LicenseManager {
        manager_at(key, dir, NOW)
    }

    fn manager_at(key: &SigningKey, dir: &std::path::Path, now_ms: u64) -> LicenseManager {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key.public_key()).unwrap();
        let settings = LicenseSettings {
            trusted,
            clock_skew_tolerance_ms: 300_000,
            ..LicenseSettings::default()
        };
        LicenseManager::open(settings, Arc::new(StateDir::open(dir).unwrap()), now_ms)
    }

    #[test]
    fn a_serial_learned_elsewhere_refuses_older_candidates_but_keeps_the_one_in_force() {
        let key = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let m = manager(&key, dir.path());
        m.install(&text(&key, 8, NOW + DAY_MS), NOW, "upload")
            .unwrap();
        m.learn_serial(9, "mesh");
        // The license in force stays (the newer document is on its way).
        let e = m.tick(NOW, &tollgate_license::Usage::default());
        assert_eq!(e.status, StatusCode::Ok);

        // A node with no license and no local record: the learned serial alone refuses.
        let dir = tempfile::tempdir().unwrap();
        let m = manager(&key, dir.path());
        m.install(&text(&key, 8, NOW + DAY_MS), NOW, "upload")
            .unwrap();
        drop(m);
        std::fs::remove_file(dir.path().join(WATERMARKS_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(CURRENT_FILE)).unwrap();
        let m = manager(&key, dir.path());
        m.learn_serial(9, "license server");
        let err = m
            .install(&text(&key, 8, NOW + DAY_MS), NOW, "upload")
            .unwrap_err();
        assert_eq!(err.code(), "ROLLBACK", "{err}");
        m.install(&text(&key, 9, NOW + DAY_MS), NOW, "upload")
            .unwrap();
        // Learned watermarks survive a restart.
        m.learn_serial(12, "mesh");
        drop(m);
        let m = manager(&key, dir.path());
        let err = m
            .install(&text(&key, 11, NOW + 2 * DAY_MS), NOW, "upload")
            .unwrap_err();
        assert_eq!(err.code(), "ROLLBACK", "{err}");
    }

    #[test]
    fn a_clock_far_from_the_servers_is_clock_skew_and_expiry_is_judged_by_the_servers_time() {
        let key = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let m = manager(&key, dir.path());
        // Expired 30 days ago by real time; this node's clock runs 270 days behind.
        let local = NOW - 270 * DAY_MS;
        let expired = text(&key, 3, NOW - 30 * DAY_MS);
        m.observe_trusted_time(NOW, local + 10_000, "license server");
        assert_eq!(m.clock().unwrap().status, "CLOCK_SKEW");
        let err = m.install(&expired, local, "license server").unwrap_err();
        assert_eq!(err.code(), "EXPIRED", "{err}");

        // Installed from the state dir (what was in force before) it evaluates EXPIRED.
        let m2dir = tempfile::tempdir().unwrap();
        std::fs::write(m2dir.path().join(CURRENT_FILE), &expired).unwrap();
        let m2 = manager_at(&key, m2dir.path(), local);
        let usage = tollgate_license::Usage::default();
        assert_eq!(
            m2.tick(local, &usage).status,
            StatusCode::Ok,
            "by the local clock"
        );
        m2.observe_trusted_time(NOW, local, "license server");
        assert_eq!(m2.tick(local, &usage).status, StatusCode::Expired);

        // Within the tolerance nothing changes.
        m2.observe_trusted_time(local + 299_000, local, "license server");
        assert_eq!(m2.clock().unwrap().status, "OK");
        assert_eq!(m2.trusted_now(local), local);
    }

    #[test]
    fn a_clock_far_behind_the_peers_is_clock_skew_and_the_server_s_skew_wins_over_theirs() {
        let key = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let local = NOW - 270 * DAY_MS;
        std::fs::write(
            dir.path().join(CURRENT_FILE),
            text(&key, 3, NOW - 30 * DAY_MS),
        )
        .unwrap();
        let m = manager_at(&key, dir.path(), local);
        let usage = tollgate_license::Usage::default();
        assert_eq!(m.tick(local, &usage).status, StatusCode::Ok);
        let peers = |offset_ms: i64| {
            Some(tollgate_replication::PeersTime {
                offset_ms,
                clocks: 2,
            })
        };
        // The peers' time 270 days later: CLOCK_SKEW, judged by it.
        m.observe_peers_time(peers(270 * DAY_MS as i64), local);
        let clock = m.clock().unwrap();
        assert_eq!(
            (clock.status, clock.source.as_str()),
            ("CLOCK_SKEW", "peers")
        );
        assert_eq!(clock.source_possessive(), "the peers'");
        assert_eq!(m.tick(local, &usage).status, StatusCode::Expired);
        // A license server that says this node is OK does not hide the peers' finding...
        m.observe_trusted_time(local, local, "license server");
        assert_eq!(m.clock().unwrap().source, "peers");
        assert_eq!(m.clocks().len(), 2);
        // ...and one that says CLOCK_SKEW itself wins over the peers'.
        m.observe_trusted_time(NOW + DAY_MS, local, "license server");
        assert_eq!(m.clock().unwrap().source, "license server");
        assert_eq!(m.trusted_now(local), NOW + DAY_MS);
        // The peers' slack: within the tolerance plus the records' lag nothing changes.
        let dir = tempfile::tempdir().unwrap();
        let m = manager_at(&key, dir.path(), NOW);
        let slack = tollgate_replication::PEER_CLOCK_SLACK_MS as i64;
        m.observe_peers_time(peers(300_000 + slack), NOW);
        assert_eq!(m.clock().unwrap().status, "OK");
        assert_eq!(m.trusted_now(NOW), NOW);
        m.observe_peers_time(peers(300_001 + slack), NOW);
        assert_eq!(m.clock().unwrap().status, "CLOCK_SKEW");
        // No live peer's clock any more: nothing to judge by but this node's clock.
        m.observe_peers_time(None, NOW);
        assert_eq!(m.clock(), None);
        assert_eq!(m.trusted_now(NOW), NOW);
    }
}

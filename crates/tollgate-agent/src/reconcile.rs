//! Self-healing counts: reconcile the tables with the SIP proxy's own lists (issue 13).
//!
//! Two ways in, one correction path ([`tollgate_usage::Tables::reconcile`]):
//! - **`[[reconcile]]` sources** (Kamailio `jsonrpcs` + `xhttp`, OpenSIPS `mi_http`): every
//!   `interval_s` (and on `POST /api/v1/reconcile`) the agent asks the proxy for its dialogs
//!   and contacts over HTTP, streams each answer into the `tollgate-reconcile` parser on a
//!   blocking thread (chunk by chunk: the answer never sits in memory whole), and applies
//!   the list shard by shard;
//! - **`sync-*` lists** pushed by a proxy on the event sockets: the ingest threads assemble
//!   them (`tollgate_usage::sync`); [`sync_task`] applies complete ones off the ingest path.
//!
//! A run starts noting what events touch *before* the first request goes out, so a call
//! started or stopped during the fetch is left alone. A run that fails (unreachable, slow,
//! an HTTP or JSON-RPC error, garbage, an answer over the bounds) changes nothing and is
//! counted by reason; the next run tries again. An empty answer (a restarted proxy) is
//! applied as the truth it is.
//!
//! Metrics: `tollgate_reconcile_runs_total{source,result}`,
//! `tollgate_reconcile_corrections_total{source,kind}` (kind `phantom_call`,
//! `missing_call`, `phantom_contact`, `missing_contact`),
//! `tollgate_reconcile_last_success_timestamp_seconds{source}`,
//! `tollgate_reconcile_last_duration_seconds{source}`,
//! `tollgate_reconcile_last_cpu_seconds{source}`, `tollgate_sync_lists_total{result}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tollgate_events::CallRef;
use tollgate_ingest::{tables_clock, wall_clock};
use tollgate_reconcile::{Expires, ListKind, ListSink, ParseError, ProxyKind};
use tollgate_usage::journal::RecordBuilder;
use tollgate_usage::{
    Corrections, ProxyList, Run, STEP_ENTRIES_DEFAULT, Scope, SyncResult, Tables,
};

use crate::config::ConfigError;
use crate::metrics::MetricsWriter;

/// Default `interval_s`.
pub const DEFAULT_INTERVAL_S: u64 = 30;
/// Default `timeout_s`: one fetch (request and whole answer).
pub const DEFAULT_TIMEOUT_S: u64 = 10;
/// Most bytes read from one answer (a guard against an endless body; the parser keeps
/// nothing but the entry it reads).
pub const ANSWER_BYTES_MAX: u64 = 4 << 30;
/// How often complete `sync-*` lists are looked for.
pub const SYNC_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `[[reconcile]]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub interval_s: Option<u64>,
    pub sender: Option<String>,
    pub timeout_s: Option<u64>,
}

/// One validated `[[reconcile]]` source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub kind: ProxyKind,
    pub url: String,
    /// Zero: only on demand.
    pub interval: Duration,
    /// Whose events it owns; `None` (allowed with one source only): every entry.
    pub sender: Option<String>,
    pub timeout: Duration,
}

impl SourceConfig {
    /// The `source` label: the sender, or the proxy kind for a single source without one.
    pub fn label(&self) -> &str {
        self.sender.as_deref().unwrap_or(self.kind.as_str())
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Validates the `[[reconcile]]` array.
pub fn validate(raw: Vec<RawReconcile>) -> Result<Vec<SourceConfig>, ConfigError> {
    let count = raw.len();
    let mut sources: Vec<SourceConfig> = Vec::with_capacity(count);
    for r in raw {
        let kind = match r.kind.as_deref() {
            Some("kamailio") => ProxyKind::Kamailio,
            Some("opensips") => ProxyKind::Opensips,
            Some(other) => {
                return Err(invalid(
                    "reconcile.kind",
                    format!("{other:?}: \"kamailio\" or \"opensips\""),
                ));
            }
            None => return Err(invalid("reconcile.kind", "missing")),
        };
        let url = r.url.ok_or_else(|| invalid("reconcile.url", "missing"))?;
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| invalid("reconcile.url", format!("{url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(invalid("reconcile.url", format!("{url:?}: an http(s) URL")));
        }
        let interval_s = r.interval_s.unwrap_or(DEFAULT_INTERVAL_S);
        if interval_s > 86_400 {
            return Err(invalid("reconcile.interval_s", "0 ..= 86400"));
        }
        let timeout_s = r.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
        if !(1..=600).contains(&timeout_s) {
            return Err(invalid("reconcile.timeout_s", "1 ..= 600"));
        }
        if let Some(sender) = &r.sender
            && (sender.is_empty()
                || sender.len() > tollgate_events::FIELD_LEN_MAX
                || sender.contains(|c: char| c.is_whitespace()))
        {
            return Err(invalid(
                "reconcile.sender",
                "1 to 255 bytes, no spaces (a `seq` sender id)",
            ));
        }
        if r.sender.is_none() && count > 1 {
            return Err(invalid(
                "reconcile.sender",
                "required when more than one [[reconcile]] source is configured",
            ));
        }
        if r.sender.is_some() && sources.iter().any(|s| s.sender == r.sender) {
            return Err(invalid(
                "reconcile.sender",
                "each source needs its own sender",
            ));
        }
        sources.push(SourceConfig {
            kind,
            url,
            interval: Duration::from_secs(interval_s),
            sender: r.sender,
            timeout: Duration::from_secs(timeout_s),
        });
    }
    Ok(sources)
}

/// Corrections by kind, as the API shows them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CorrectionCounts {
    pub phantom_call: u64,
    pub missing_call: u64,
    pub phantom_contact: u64,
    pub missing_contact: u64,
    /// Calls whose emergency flag was set to the proxy's.
    pub emergency_updates: u64,
    /// Contacts whose expiry was set to the proxy's.
    pub expiry_updates: u64,
    /// Shards left for the next run (too many events touched them during this one).
    pub shards_skipped: u64,
}

impl From<Corrections> for CorrectionCounts {
    fn from(c: Corrections) -> Self {
        CorrectionCounts {
            phantom_call: c.phantom_calls,
            missing_call: c.missing_calls,
            phantom_contact: c.phantom_contacts,
            missing_contact: c.missing_contacts,
            emergency_updates: c.emergency_updates,
            expiry_updates: c.expiry_updates,
            shards_skipped: c.shards_skipped,
        }
    }
}

/// One run of one source (or one applied `sync-*` list).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub source: String,
    /// `kamailio`, `opensips` or `sync`.
    pub kind: String,
    /// When the run started (Unix milliseconds).
    pub at_ms: u64,
    pub duration_ms: u64,
    /// CPU time of parsing and applying (the fetch's waiting excluded).
    pub cpu_ms: f64,
    /// Steps the corrections were applied in, and the longest one: the most any event
    /// waited for this run (each step holds the journal lock and one shard lock).
    #[serde(default)]
    pub steps: u64,
    #[serde(default)]
    pub step_max_us: u64,
    /// `ok`, or why nothing was changed.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Dialogs and contacts the proxy listed.
    pub listed_calls: u64,
    pub listed_contacts: u64,
    pub corrections: CorrectionCounts,
}

/// Totals of one source since start.
#[derive(Debug, Clone, Default)]
struct Stats {
    runs: BTreeMap<&'static str, u64>,
    corrections: CorrectionCounts,
    last: Option<RunReport>,
    last_success_ms: Option<u64>,
}

impl Stats {
    fn record(&mut self, result: &'static str, report: &RunReport) {
        *self.runs.entry(result).or_default() += 1;
        let c = &mut self.corrections;
        let r = &report.corrections;
        c.phantom_call += r.phantom_call;
        c.missing_call += r.missing_call;
        c.phantom_contact += r.phantom_contact;
        c.missing_contact += r.missing_contact;
        c.emergency_updates += r.emergency_updates;
        c.expiry_updates += r.expiry_updates;
        c.shards_skipped += r.shards_skipped;
        if result == "ok" {
            self.last_success_ms = Some(report.at_ms);
        }
        self.last = Some(report.clone());
    }
}

/// Why a run changed nothing. Low cardinality (`result` label).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot reach the proxy: {0}")]
    Unreachable(String),
    #[error("no complete answer within the timeout")]
    Timeout,
    #[error("the proxy answered HTTP {0}")]
    HttpStatus(u16),
    #[error(transparent)]
    Parse(ParseError),
    #[error("internal: {0}")]
    Internal(String),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Timeout => "timeout",
            Failure::HttpStatus(_) => "http_status",
            Failure::Parse(e) => e.reason(),
            Failure::Internal(_) => "internal",
        }
    }
}

/// Every `result` label a run can have.
pub const RUN_RESULTS: [&str; 9] = [
    "ok",
    "unreachable",
    "timeout",
    "http_status",
    "rpc_error",
    "garbage",
    "too_large",
    "io",
    "internal",
];

struct Source {
    config: SourceConfig,
    scope: Scope,
    stats: Mutex<Stats>,
    /// One run of a source at a time.
    running: tokio::sync::Mutex<()>,
}

/// The configured sources, the HTTP client, and what every run did.
pub struct Reconciler {
    tables: Arc<Tables>,
    journal: Option<Arc<tollgate_ingest::Journal>>,
    sources: Vec<Source>,
    client: reqwest::Client,
    /// Applied `sync-*` lists, by sender (bounded by the owner ids).
    sync: Mutex<BTreeMap<String, Stats>>,
    /// Signalled after a run that changed the tables: the agent then writes a checkpoint
    /// (snapshot), so corrections survive a crash like the events the journal holds.
    pub corrected: tokio::sync::Notify,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// Finishes a run whatever happens to the task holding it.
struct RunGuard {
    tables: Arc<Tables>,
    run: Option<Run>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            self.tables.finish_run(run);
        }
    }
}

/// Fills a [`ProxyList`] from a parser.
struct Fill {
    list: ProxyList,
    now_s: u32,
}

impl ListSink for Fill {
    fn call(&mut self, call: CallRef<'_>, emergency: Option<bool>) {
        self.list.push_call(call, emergency);
    }
    fn contact(&mut self, aor: &[u8], contact: &[u8], expires: Expires) {
        let expires_at = match expires {
            Expires::In(s) => self.now_s.saturating_add(s),
            Expires::Permanent => u32::MAX,
        };
        self.list.push_contact(aor, contact, expires_at);
    }
}

/// Feeds the parser (on a blocking thread) the body chunks the async side receives.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    current: Vec<u8>,
    offset: usize,
    total: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset >= self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > ANSWER_BYTES_MAX {
                        return Err(std::io::Error::other("answer over the byte limit"));
                    }
                    self.current = chunk;
                    self.offset = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// CPU time of the calling thread.
/// Applies a fetched list in bounded steps ([`Tables::reconcile_step`]), each under the
/// journal lock: its corrections are appended as a record of their own before they are
/// applied, so the journal holds them in the order the tables saw them and a `kill -9`
/// right after a correction replays it exactly. The journal lock is released fairly between
/// steps, so ingest waits at most one step (`step_entries` entries examined; the agent uses
/// [`STEP_ENTRIES_DEFAULT`]).
pub fn apply_list(
    tables: &Tables,
    journal: Option<&tollgate_ingest::Journal>,
    run: &Run,
    list: ProxyList,
    scope: Scope,
    contacts: bool,
    step_entries: usize,
) -> Applied {
    let owner = match scope {
        Scope::All => String::new(),
        Scope::Owner(owner) => tables.owners().name(owner).unwrap_or_default(),
    };
    let mut pass = tables.reconcile_pass(list, scope, contacts);
    let mut record = RecordBuilder::default();
    let mut journaled = true;
    let (mut step_max, mut step_max_cpu) = (Duration::ZERO, Duration::ZERO);
    loop {
        let step = Instant::now();
        let step_cpu = thread_cpu();
        let done = match journal {
            Some(journal) => {
                let mut guard = journal.lock();
                let now = tables_clock();
                let done =
                    tables.reconcile_step(now, run, &mut pass, step_entries, &mut |corrections| {
                        record.corrections(now, owner.as_bytes(), corrections);
                        journaled &= guard.append(record.finish());
                    });
                guard.unlock_fair();
                done
            }
            None => {
                journaled = false;
                tables.reconcile_step(tables_clock(), run, &mut pass, step_entries, &mut |_| {})
            }
        };
        step_max = step_max.max(step.elapsed());
        step_max_cpu = step_max_cpu.max(thread_cpu().saturating_sub(step_cpu));
        if done {
            break;
        }
    }
    let corrections = pass.corrections();
    Applied {
        corrections,
        journaled: journaled || corrections == Corrections::default(),
        steps: pass.steps(),
        step_max,
        step_max_cpu,
    }
}

/// What [`apply_list`] did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub corrections: Corrections,
    /// Whether every correction is in the journal (false without one, or after a failed
    /// append: the caller then asks for a checkpoint).
    pub journaled: bool,
    pub steps: u64,
    /// The longest step (wall clock): the most an event waited for this list, preemption
    /// of the applying thread included.
    pub step_max: Duration,
    /// The most CPU time one step took (the step's own work, whatever the machine's load).
    pub step_max_cpu: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Reconciler {
    /// The sources of `config`; a source's `sender` is interned first so its owner id is
    /// the same at every start.
    pub fn new(
        tables: Arc<Tables>,
        journal: Option<Arc<tollgate_ingest::Journal>>,
        sources: &[SourceConfig],
    ) -> Self {
        let sources = sources
            .iter()
            .map(|config| {
                let scope = match &config.sender {
                    None => Scope::All,
                    Some(sender) => Scope::Owner(tables.owners().intern(sender.as_bytes())),
                };
                Source {
                    config: config.clone(),
                    scope,
                    stats: Mutex::new(Stats::default()),
                    running: tokio::sync::Mutex::new(()),
                }
            })
            .collect();
        // No redirects: the configured URL is the proxy's endpoint.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        Reconciler {
            tables,
            journal,
            sources,
            client,
            sync: Mutex::new(BTreeMap::new()),
            corrected: tokio::sync::Notify::new(),
        }
    }

    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Runs every source now, one after the other.
    pub async fn run_all(&self) -> Vec<RunReport> {
        let mut reports = Vec::with_capacity(self.sources.len());
        for i in 0..self.sources.len() {
            reports.push(self.run_source(i).await);
        }
        reports
    }

    /// One run of source `i`: fetch both lists, then apply them (or nothing).
    pub async fn run_source(&self, i: usize) -> RunReport {
        let source = &self.sources[i];
        let _running = source.running.lock().await;
        let started_at = wall_clock();
        let clock = Instant::now();
        let guard = RunGuard {
            tables: Arc::clone(&self.tables),
            run: Some(self.tables.begin_run()),
        };
        let fetched = self.fetch_lists(source).await;
        let mut report = RunReport {
            source: source.config.label().to_owned(),
            kind: source.config.kind.as_str().to_owned(),
            at_ms: started_at.unix_ms(),
            duration_ms: 0,
            cpu_ms: 0.0,
            steps: 0,
            step_max_us: 0,
            result: "ok".into(),
            error: None,
            listed_calls: 0,
            listed_contacts: 0,
            corrections: CorrectionCounts::default(),
        };
        let result: &'static str = match fetched {
            Ok(fetched) => {
                report.listed_calls = fetched.list.call_count();
                report.listed_contacts = fetched.list.contact_count();
                let tables = Arc::clone(&self.tables);
                let journal = self.journal.clone();
                let scope = source.scope;
                let applied = tokio::task::spawn_blocking(move || {
                    let cpu = thread_cpu();
                    let run = guard.run.as_ref().map(|run| {
                        apply_list(
                            &tables,
                            journal.as_deref(),
                            run,
                            fetched.list,
                            scope,
                            fetched.contacts,
                            STEP_ENTRIES_DEFAULT,
                        )
                    });
                    drop(guard);
                    (run, thread_cpu().saturating_sub(cpu))
                })
                .await;
                match applied {
                    Ok((Some(applied), cpu)) => {
                        if !applied.journaled {
                            self.unjournaled();
                        }
                        report.corrections = applied.corrections.into();
                        report.steps = applied.steps;
                        report.step_max_us = applied.step_max.as_micros() as u64;
                        report.cpu_ms = (fetched.cpu + cpu).as_secs_f64() * 1e3;
                        "ok"
                    }
                    Ok((None, _)) => "internal",
                    Err(e) => {
                        report.error = Some(e.to_string());
                        "internal"
                    }
                }
            }
            Err(failure) => {
                drop(guard);
                report.error = Some(failure.to_string());
                failure.reason()
            }
        };
        report.result = result.to_owned();
        report.duration_ms = clock.elapsed().as_millis() as u64;
        self.log(&report, &source.stats.lock());
        source.stats.lock().record(result, &report);
        report
    }

    /// Corrections were applied that the journal does not hold (no journal, or an append
    /// failed): ask for a checkpoint so they survive a crash all the same.
    fn unjournaled(&self) {
        self.corrected.notify_one();
    }

    fn log(&self, report: &RunReport, before: &Stats) {
        let failed_before = before.last.as_ref().is_some_and(|l| l.result != "ok");
        if report.result != "ok" {
            // Once per failure streak (and on a change of reason).
            let same = before
                .last
                .as_ref()
                .is_some_and(|l| l.result == report.result);
            if !same {
                tracing::warn!(
                    source = %report.source,
                    result = %report.result,
                    error = report.error.as_deref().unwrap_or(""),
                    "reconciliation failed; nothing changed, the next run tries again"
                );
            }
            return;
        }
        let c = &report.corrections;
        let total = c.phantom_call + c.missing_call + c.phantom_contact + c.missing_contact;
        if total > 0 || failed_before {
            // At most one line per run of a source.
            tracing::info!(
                source = %report.source,
                phantom_call = c.phantom_call,
                missing_call = c.missing_call,
                phantom_contact = c.phantom_contact,
                missing_contact = c.missing_contact,
                emergency_updates = c.emergency_updates,
                expiry_updates = c.expiry_updates,
                shards_skipped = c.shards_skipped,
                listed_calls = report.listed_calls,
                listed_contacts = report.listed_contacts,
                duration_ms = report.duration_ms,
                "reconciled with the proxy"
            );
        }
    }

    async fn fetch_lists(&self, source: &Source) -> Result<Fetched, Failure> {
        let now_s = tables_clock().unix_secs_u32();
        let list = self.tables.new_list();
        let deadline = tokio::time::Instant::now() + source.config.timeout;
        let (list, _, cpu_dialogs) = self
            .fetch(source, ListKind::Dialogs, list, now_s, deadline)
            .await?;
        match self
            .fetch(source, ListKind::Contacts, list, now_s, deadline)
            .await
        {
            Ok((list, _, cpu_contacts)) => Ok(Fetched {
                list,
                contacts: true,
                cpu: cpu_dialogs + cpu_contacts,
            }),
            Err(Failure::Parse(ParseError::Rpc { message, .. }))
                if message.to_ascii_lowercase().contains("not found") =>
            {
                // No usrloc on this proxy (a proxy without registrar): calls only. The
                // list is gone with the failed parse: fetch the dialogs again.
                let list = self.tables.new_list();
                let (list, _, cpu) = self
                    .fetch(source, ListKind::Dialogs, list, now_s, deadline)
                    .await?;
                Ok(Fetched {
                    list,
                    contacts: false,
                    cpu: cpu_dialogs + cpu,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One request, its answer streamed into the parser on a blocking thread.
    async fn fetch(
        &self,
        source: &Source,
        which: ListKind,
        list: ProxyList,
        now_s: u32,
        deadline: tokio::time::Instant,
    ) -> Result<(ProxyList, tollgate_reconcile::Parsed, Duration), Failure> {
        let kind = source.config.kind;
        let send = self
            .client
            .post(&source.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(tollgate_reconcile::request(kind, which))
            .send();
        let mut response = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(Failure::Timeout),
            Ok(Err(e)) => return Err(Failure::Unreachable(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            return Err(Failure::HttpStatus(response.status().as_u16()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let parser = tokio::task::spawn_blocking(move || {
            let cpu = thread_cpu();
            let mut fill = Fill { list, now_s };
            let reader = std::io::BufReader::with_capacity(
                64 * 1024,
                ChunkReader {
                    rx,
                    current: Vec::new(),
                    offset: 0,
                    total: 0,
                },
            );
            let parsed = tollgate_reconcile::parse(
                kind,
                which,
                reader,
                &mut fill,
                tollgate_reconcile::Limits::default(),
            );
            (fill.list, parsed, thread_cpu().saturating_sub(cpu))
        });
        let mut transport: Option<Failure> = None;
        loop {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => {
                    transport = Some(Failure::Timeout);
                    let _ = tx.send(Err("timeout".into())).await;
                    break;
                }
                Ok(Ok(Some(chunk))) => {
                    if tx.send(Ok(chunk.to_vec())).await.is_err() {
                        break; // the parser stopped (an error or the bound): it says why
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    transport = Some(if e.is_timeout() {
                        Failure::Timeout
                    } else {
                        Failure::Unreachable(error_chain(&e))
                    });
                    let _ = tx.send(Err(e.to_string())).await;
                    break;
                }
            }
        }
        drop(tx);
        let (list, parsed, cpu) = parser.await.map_err(|e| Failure::Internal(e.to_string()))?;
        match parsed {
            Ok(parsed) => Ok((list, parsed, cpu)),
            Err(ParseError::Io(_)) if transport.is_some() => {
                Err(transport.unwrap_or(Failure::Timeout))
            }
            Err(e) => Err(Failure::Parse(e)),
        }
    }

    /// Applies the complete `sync-*` lists waiting in the tables.
    pub async fn apply_sync_lists(&self) -> Vec<RunReport> {
        let lists = self.tables.take_complete_sync_lists(tables_clock());
        let mut reports = Vec::with_capacity(lists.len());
        for list in lists {
            let tables = Arc::clone(&self.tables);
            let journal = self.journal.clone();
            let clock = Instant::now();
            let begun = list.begun;
            let sender = list.sender.clone();
            let (calls, contacts) = (list.list.call_count(), list.list.contact_count());
            let applied = tokio::task::spawn_blocking(move || {
                let cpu = thread_cpu();
                let guard = RunGuard {
                    tables: Arc::clone(&tables),
                    run: Some(list.run),
                };
                let corrections = guard.run.as_ref().map(|run| {
                    apply_list(
                        &tables,
                        journal.as_deref(),
                        run,
                        list.list,
                        list.scope,
                        true,
                        STEP_ENTRIES_DEFAULT,
                    )
                });
                drop(guard);
                (corrections, thread_cpu().saturating_sub(cpu))
            })
            .await;
            let (result, applied, cpu) = match applied {
                Ok((Some(applied), cpu)) => {
                    if !applied.journaled {
                        self.unjournaled();
                    }
                    ("ok", applied, cpu)
                }
                _ => (
                    "internal",
                    Applied {
                        corrections: Corrections::default(),
                        journaled: true,
                        steps: 0,
                        step_max: Duration::ZERO,
                        step_max_cpu: Duration::ZERO,
                    },
                    Duration::ZERO,
                ),
            };
            let report = RunReport {
                source: sender.clone(),
                kind: "sync".into(),
                at_ms: begun.unix_ms(),
                duration_ms: clock.elapsed().as_millis() as u64,
                cpu_ms: cpu.as_secs_f64() * 1e3,
                steps: applied.steps,
                step_max_us: applied.step_max.as_micros() as u64,
                result: result.into(),
                error: None,
                listed_calls: calls,
                listed_contacts: contacts,
                corrections: applied.corrections.into(),
            };
            let mut sync = self.sync.lock();
            let stats = sync.entry(sender).or_default();
            self.log(&report, stats);
            stats.record(result, &report);
            reports.push(report);
        }
        reports
    }

    /// The body of `GET /api/v1/reconcile`.
    pub fn status(&self) -> ReconcileStatus {
        let source_status =
            |label: String, kind: String, config: Option<&SourceConfig>, s: &Stats| SourceStatus {
                source: label,
                kind,
                url: config.map(|c| c.url.clone()),
                interval_s: config.map(|c| c.interval.as_secs()),
                sender: config.and_then(|c| c.sender.clone()),
                last_run: s.last.clone(),
                last_success_ms: s.last_success_ms,
                runs: s.runs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                corrections: s.corrections,
            };
        let mut sources: Vec<SourceStatus> = self
            .sources
            .iter()
            .map(|s| {
                source_status(
                    s.config.label().to_owned(),
                    s.config.kind.as_str().to_owned(),
                    Some(&s.config),
                    &s.stats.lock(),
                )
            })
            .collect();
        sources.extend(
            self.sync
                .lock()
                .iter()
                .map(|(sender, s)| source_status(sender.clone(), "sync".into(), None, s)),
        );
        let results = self.tables.sync_lists().results();
        ReconcileStatus {
            sources,
            sync_lists: SyncResult::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), results[*r as usize]))
                .collect(),
        }
    }

    /// Appends the reconciliation metrics.
    pub fn write_metrics(&self, m: &mut MetricsWriter) {
        let status = self.status();
        let name = "tollgate_reconcile_runs_total";
        m.header(
            name,
            "counter",
            "Reconciliation runs with a proxy's own lists (and applied sync-* lists), by source and result (ok, or why nothing was changed).",
        );
        for s in &status.sources {
            for result in RUN_RESULTS {
                let n = s.runs.get(result).copied().unwrap_or(0);
                m.sample(name, &[("source", &s.source), ("result", result)], n);
            }
        }
        let name = "tollgate_reconcile_corrections_total";
        m.header(
            name,
            "counter",
            "Calls and contacts corrected by reconciliation, by source and kind (phantom: counted here, not at the proxy, removed; missing: at the proxy, not counted here, added).",
        );
        for s in &status.sources {
            let c = &s.corrections;
            for (kind, n) in [
                ("phantom_call", c.phantom_call),
                ("missing_call", c.missing_call),
                ("phantom_contact", c.phantom_contact),
                ("missing_contact", c.missing_contact),
            ] {
                m.sample(name, &[("source", &s.source), ("kind", kind)], n);
            }
        }
        let name = "tollgate_reconcile_last_success_timestamp_seconds";
        m.header(
            name,
            "gauge",
            "When the last successful reconciliation of a source started (Unix seconds; 0: never).",
        );
        for s in &status.sources {
            let at = s.last_success_ms.map_or(0.0, |ms| ms as f64 / 1e3);
            m.sample(name, &[("source", &s.source)], at);
        }
        let name = "tollgate_reconcile_last_duration_seconds";
        m.header(
            name,
            "gauge",
            "Wall time of the last reconciliation run of a source (fetch, parse, apply).",
        );
        for s in &status.sources {
            let d = s
                .last_run
                .as_ref()
                .map_or(0.0, |r| r.duration_ms as f64 / 1e3);
            m.sample(name, &[("source", &s.source)], d);
        }
        let name = "tollgate_reconcile_last_cpu_seconds";
        m.header(
            name,
            "gauge",
            "CPU time of the last reconciliation run of a source (parse and apply).",
        );
        for s in &status.sources {
            let d = s.last_run.as_ref().map_or(0.0, |r| r.cpu_ms / 1e3);
            m.sample(name, &[("source", &s.source)], d);
        }
        let name = "tollgate_sync_lists_total";
        m.header(
            name,
            "counter",
            "sync-* lists and stray sync lines, by result (complete, or why discarded whole).",
        );
        for (result, n) in &status.sync_lists {
            m.sample(name, &[("result", result)], n);
        }
    }
}

/// An error and its causes, on one line (reqwest hides the interesting part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

struct Fetched {
    list: ProxyList,
    contacts: bool,
    cpu: Duration,
}

/// One source in `GET /api/v1/reconcile`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// The `source` label: the sender, the proxy kind, or a `sync-*` sender.
    pub source: String,
    /// `kamailio`, `opensips` or `sync`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The last run: time, duration, result, corrections by kind.
    pub last_run: Option<RunReport>,
    pub last_success_ms: Option<u64>,
    /// Runs since start, by result.
    pub runs: BTreeMap<String, u64>,
    /// Corrections since start, by kind.
    pub corrections: CorrectionCounts,
}

/// The body of `GET /api/v1/reconcile`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReconcileStatus {
    pub sources: Vec<SourceStatus>,
    /// `sync-*` lists by result since start.
    pub sync_lists: BTreeMap<String, u64>,
}

/// Runs source `i` every `interval` (the first run at start).
pub async fn source_task(reconciler: Arc<Reconciler>, i: usize) {
    let interval = reconciler.sources[i].config.interval;
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reconciler.run_source(i).await;
    }
}

/// Applies complete `sync-*` lists as they arrive.
pub async fn sync_task(reconciler: Arc<Reconciler>) {
    let mut tick = tokio::time::interval(SYNC_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reconciler.apply_sync_lists().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: &str, url: &str, sender: Option<&str>) -> RawReconcile {
        RawReconcile {
            kind: Some(kind.into()),
            url: Some(url.into()),
            interval_s: None,
            sender: sender.map(Into::into),
            timeout_s: None,
        }
    }

    #[test]
    fn sources_validate() {
        let one = validate(vec![raw("kamailio", "http://127.0.0.1:5071/RPC", None)]);
        let one = one.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one[0].interval, Duration::from_secs(DEFAULT_INTERVAL_S));
        assert_eq!(one[0].label(), "kamailio");
        // Two sources: each needs its own sender.
        let two = vec![
            raw("kamailio", "http://127.0.0.1:5071/RPC", Some("kam1")),
            raw("opensips", "http://127.0.0.1:8888/mi", None),
        ];
        assert!(validate(two).is_err());
        let two = vec![
            raw("kamailio", "http://127.0.0.1:5071/RPC", Some("kam1")),
            raw("opensips", "http://127.0.0.1:8888/mi", Some("kam1")),
        ];
        assert!(validate(two).is_err());
        for bad in [
            raw("freeswitch", "http://x/", None),
            raw("kamailio", "ftp://x/", None),
            raw("kamailio", "not a url", None),
            raw("kamailio", "http://x/", Some("a b")),
        ] {
            assert!(validate(vec![bad]).is_err());
        }
        let mut zero = raw("opensips", "http://127.0.0.1:8888/mi", None);
        zero.interval_s = Some(0);
        let zero = validate(vec![zero]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(zero[0].interval, Duration::ZERO);
    }
}

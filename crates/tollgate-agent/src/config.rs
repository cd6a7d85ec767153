//! The agent's configuration: one TOML file, every key optional, parsed in two stages —
//! [`RawConfig`] mirrors the file (unknown keys are errors that name the key), then
//! [`Config::from_raw`] validates it into typed values. `docs/configuration.md` lists every
//! key; a test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default UDP event address (MISSION.md).
pub const DEFAULT_EVENTS_UDP: &str = "127.0.0.1:7171";
/// Default admin HTTP address (MISSION.md).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7173";
/// Default state directory (MISSION.md).
pub const DEFAULT_STATE_DIR: &str = "./tollgate-state";
/// File name of the unix event socket inside the state dir.
pub const EVENTS_SOCKET_NAME: &str = "events.sock";
/// Highest `[calls] max_active_calls` and `[registrations] max_aors`: 10^9 entries is tens
/// of GB of tables.
pub const MAX_TABLE_ENTRIES: u64 = 1_000_000_000;
/// Highest `[registrations] max_expires_s`: one year.
pub const MAX_EXPIRES_S_LIMIT: u32 = 365 * 86_400;

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The file as written. Every field is optional; absent means the embedded default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub general: RawGeneral,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub ingest: RawIngest,
    #[serde(default)]
    pub calls: RawCalls,
    #[serde(default)]
    pub registrations: RawRegistrations,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub report: RawReport,
    #[serde(default)]
    pub license: RawLicense,
    #[serde(default)]
    pub mesh: RawMesh,
    #[serde(default)]
    pub hep: RawHep,
    /// `[[reconcile]]`: the proxies whose own lists heal the counts.
    #[serde(default)]
    pub reconcile: Vec<crate::reconcile::RawReconcile>,
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"text"` (default) or `"json"`.
    pub format: Option<String>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `key=value` fields then the message; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (journald, ELK): `timestamp`, `level`, `target`, the fields
    /// and `message` at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: expected \"text\" or \"json\"")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHep {
    pub listen: Option<String>,
    pub auth_key: Option<String>,
    pub emergency_numbers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMesh {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    #[serde(default)]
    pub seeds: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub expired_rule: Option<String>,
    pub expired_visible_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeneral {
    pub license_key: Option<String>,
    pub node_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<PathBuf>,
    pub snapshot_interval_s: Option<u64>,
    pub fsync_interval_ms: Option<u64>,
    pub journal_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub udp: Option<String>,
    pub unix: Option<String>,
    pub unix_mode: Option<String>,
    pub threads: Option<usize>,
    pub recv_batch: Option<usize>,
    pub max_datagram_bytes: Option<usize>,
    pub receive_buffer_bytes: Option<usize>,
    pub sweep_interval_ms: Option<u64>,
    pub busy_poll: Option<bool>,
    pub udp_replies: Option<bool>,
    pub admit_udp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalls {
    pub max_call_duration_s: Option<u32>,
    pub shard_count: Option<usize>,
    pub max_active_calls: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistrations {
    pub max_expires_s: Option<u32>,
    pub max_aors: Option<u64>,
    pub max_contacts_per_aor: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    /// HTTPS: the certificate chain (PEM, leaf first); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM); needs `tls_cert`.
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub header_timeout_s: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    pub login_failures_max: Option<u32>,
    pub login_failures_window_s: Option<u64>,
    #[serde(default)]
    pub users: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    pub password_hash: String,
    pub role: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLicense {
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    pub host_id: Option<String>,
    pub unlicensed_mode: Option<String>,
    pub server: Option<RawServers>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub proxy: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub daily_at: Option<String>,
    pub renew_before_days: Option<u64>,
    pub bind_address: Option<String>,
    pub clock_skew_tolerance_s: Option<u64>,
}

/// Default of `[license] clock_skew_tolerance_s`.
pub const CLOCK_SKEW_TOLERANCE_S_DEFAULT: u64 = 300;

/// `[license] server`: one URL, or a list tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawServers(pub Vec<String>);

impl<'de> Deserialize<'de> for RawServers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawServers, D::Error> {
        use serde::de::Error as _;
        match toml::Value::deserialize(d)? {
            toml::Value::String(url) => Ok(RawServers(vec![url])),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    toml::Value::String(url) => Ok(url),
                    other => Err(D::Error::custom(format!(
                        "license.server: expected URLs, found a {}",
                        other.type_str()
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(RawServers),
            other => Err(D::Error::custom(format!(
                "license.server: expected a URL or a list of URLs, found a {}",
                other.type_str()
            ))),
        }
    }
}

/// Most license servers `[license] server` may list.
pub const LICENSE_SERVER_COUNT_MAX: usize = 8;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    pub interval_s: Option<u64>,
}

impl RawConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// Validated, typed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub license_key: Option<String>,
    pub node_id: String,
    pub state_dir: PathBuf,
    pub snapshot_interval: Duration,
    /// How often the journal is synced to disk: what a power loss can lose at most. Zero:
    /// every batch is synced before it is applied.
    pub fsync_interval: Duration,
    /// The bound on the journal's segments on disk; past it the journal is suspended.
    pub journal_max_bytes: u64,
    pub events_udp: Option<SocketAddr>,
    pub events_unix: Option<PathBuf>,
    pub unix_mode: u32,
    pub ingest_threads: usize,
    pub recv_batch: usize,
    pub max_datagram_bytes: usize,
    pub receive_buffer_bytes: usize,
    pub sweep_interval: Duration,
    pub busy_poll: bool,
    /// `[ingest] udp_replies`: the UDP event sockets read source addresses and answer
    /// `admit`.
    pub udp_replies: bool,
    /// `[ingest] admit_udp`: a UDP socket of its own for `admit` queries.
    pub admit_udp: Option<SocketAddr>,
    pub max_call_duration_s: u32,
    pub shard_count: usize,
    /// `[calls] max_active_calls`.
    pub max_active_calls: u64,
    /// `[registrations] max_expires_s`, `max_aors`, `max_contacts_per_aor`.
    pub max_expires_s: u32,
    pub max_aors: u64,
    pub max_contacts_per_aor: u32,
    pub admin_listen: SocketAddr,
    /// `[admin] tls_cert` / `tls_key`: HTTPS for the admin API and the page.
    pub admin_tls: Option<AdminTls>,
    /// `[admin]` connection and login limits.
    pub admin_limits: AdminLimits,
    pub users: Vec<crate::auth::User>,
    pub report_interval: Duration,
    pub license_file: Option<PathBuf>,
    pub trusted_keys: tollgate_license::TrustedKeys,
    pub host_id: Option<String>,
    pub unlicensed_mode: tollgate_license::Mode,
    /// `[license] clock_skew_tolerance_s`, in ms: how far this node's clock may be from the
    /// license server's before `CLOCK_SKEW` (issue 16).
    pub clock_skew_tolerance_ms: u64,
    /// The license server client, when `[license] server` is set.
    pub license_server: Option<LicenseServerConfig>,
    /// The cluster mesh, when enabled.
    pub mesh: Option<MeshSettings>,
    /// The HEPv3 collector, when `[hep] listen` is set.
    pub hep_listen: Option<SocketAddr>,
    pub hep_auth_key: Option<String>,
    pub hep_emergency_numbers: Option<Vec<String>>,
    /// `[[reconcile]]` sources.
    pub reconcile: Vec<crate::reconcile::SourceConfig>,
    /// `[log] format`.
    pub log_format: LogFormat,
}

/// `[admin] tls_cert` and `tls_key`, checked at load (both files read and matched).
#[derive(Debug, Clone)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin HTTP server's limits (`[admin]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Most connections open at once; at the cap a new connection closes the one idle the
    /// longest.
    pub max_connections: usize,
    /// A request's header must arrive within this long of the connection's start (or of
    /// the first byte of a later request on the same connection).
    pub header_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Failed logins from one client address within `login_failures_window` before its
    /// requests with credentials are answered 429.
    pub login_failures_max: u32,
    pub login_failures_window: Duration,
}

/// Default mesh address (MISSION.md), used only when the mesh is enabled.
pub const DEFAULT_MESH_LISTEN: &str = "0.0.0.0:7172";

/// `[mesh]`, validated.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub seeds: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub expired_rule: tollgate_replication::ExpiredRule,
    /// `[mesh] expired_visible_s`, in ms.
    pub expired_visible_ms: u64,
}

/// `[license] server` and what goes with it.
#[derive(Debug, Clone)]
pub struct LicenseServerConfig {
    /// The client settings, for the first server.
    pub client: tollgate_license_client::ClientConfig,
    /// Every server, in the configured order (the first is `client.server_url`).
    pub servers: Vec<tollgate_license_client::Url>,
    pub schedule: tollgate_license_client::ScheduleConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are valid by construction (a test checks it).
        Config::from_raw(RawConfig::default(), None).unwrap_or_else(|e| panic!("bad defaults: {e}"))
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|e| invalid(key, format!("{value:?}: {e}")))
}

/// `""` and `"off"` switch an optional listener off.
fn is_off(value: &str) -> bool {
    value.is_empty() || value.eq_ignore_ascii_case("off")
}

/// `v` within `min ..= max`, else an error naming the key and the range (never a clamp).
fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    key: &'static str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if v >= min && v <= max {
        Ok(v)
    } else {
        Err(invalid(key, format!("{v} is out of range {min} ..= {max}")))
    }
}

/// Default `[state] fsync_interval_ms`.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Largest `[state] fsync_interval_ms`.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;
/// Default `[state] journal_max_bytes` (1 GiB).
pub const JOURNAL_MAX_BYTES_DEFAULT: u64 = 1 << 30;
/// Range of `[state] journal_max_bytes`: 64 KiB ..= 1 TiB.
pub const JOURNAL_MAX_BYTES_MIN: u64 = 64 << 10;
pub const JOURNAL_MAX_BYTES_MAX: u64 = 1 << 40;

impl Config {
    /// Validates `raw`; `state_dir_override` (the `--state-dir` flag) wins over `[state] dir`.
    pub fn from_raw(
        raw: RawConfig,
        state_dir_override: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let state_dir = state_dir_override
            .map(Path::to_path_buf)
            .or(raw.state.dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let node_id = match raw.general.node_id {
            Some(id) => id,
            None => hostname().unwrap_or_else(|| "tollgate".to_owned()),
        };
        if node_id.is_empty() || node_id.len() > 64 || node_id.contains(char::is_whitespace) {
            return Err(invalid("general.node_id", "1 to 64 characters, no spaces"));
        }
        let license_key = raw.general.license_key.filter(|k| !k.trim().is_empty());
        let events_udp = match raw.ingest.udp.as_deref() {
            None => Some(addr("ingest.udp", DEFAULT_EVENTS_UDP)?),
            Some(v) if is_off(v) => None,
            Some(v) => Some(addr("ingest.udp", v)?),
        };
        let events_unix = match raw.ingest.unix.as_deref() {
            None => Some(state_dir.join(EVENTS_SOCKET_NAME)),
            Some(v) if is_off(v) => None,
            Some(v) => Some(PathBuf::from(v)),
        };
        let unix_mode = match raw.ingest.unix_mode.as_deref() {
            None => 0o660,
            Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid("ingest.unix_mode", format!("{v:?} is not an octal mode"))
                })?,
        };
        let shard_count = in_range(
            "calls.shard_count",
            raw.calls.shard_count.unwrap_or(64),
            1,
            tollgate_usage::SHARD_COUNT_MAX,
        )?;
        if !shard_count.is_power_of_two() {
            return Err(invalid("calls.shard_count", "must be a power of two"));
        }
        let license_server = license_server(&raw.license, license_key.as_deref())?;
        let mesh = mesh_settings(&raw.mesh)?;
        let admin_tls = admin_tls(&raw.admin)?;
        if let Some(numbers) = &raw.hep.emergency_numbers {
            tollgate_ingest::TrackerConfig {
                emergency_numbers: numbers.iter().map(|n| n.as_bytes().to_vec()).collect(),
                ..Default::default()
            }
            .validate()
            .map_err(|e| invalid("hep.emergency_numbers", e.to_string()))?;
        }
        if raw
            .hep
            .auth_key
            .as_ref()
            .is_some_and(|k| k.len() > tollgate_ingest::hep::AUTH_KEY_LEN_MAX)
        {
            return Err(invalid("hep.auth_key", "at most 256 bytes"));
        }
        Ok(Config {
            license_key,
            node_id,
            snapshot_interval: Duration::from_secs(in_range(
                "state.snapshot_interval_s",
                raw.state.snapshot_interval_s.unwrap_or(5),
                1,
                86_400,
            )?),
            fsync_interval: Duration::from_millis(in_range(
                "state.fsync_interval_ms",
                raw.state
                    .fsync_interval_ms
                    .unwrap_or(FSYNC_INTERVAL_MS_DEFAULT),
                0,
                FSYNC_INTERVAL_MS_MAX,
            )?),
            journal_max_bytes: in_range(
                "state.journal_max_bytes",
                raw.state
                    .journal_max_bytes
                    .unwrap_or(JOURNAL_MAX_BYTES_DEFAULT),
                JOURNAL_MAX_BYTES_MIN,
                JOURNAL_MAX_BYTES_MAX,
            )?,
            state_dir,
            events_udp,
            events_unix,
            unix_mode,
            ingest_threads: in_range("ingest.threads", raw.ingest.threads.unwrap_or(1), 1, 64)?,
            recv_batch: in_range(
                "ingest.recv_batch",
                raw.ingest.recv_batch.unwrap_or(64),
                1,
                tollgate_ingest::RECV_BATCH_MAX,
            )?,
            max_datagram_bytes: in_range(
                "ingest.max_datagram_bytes",
                raw.ingest.max_datagram_bytes.unwrap_or(65_535),
                1,
                1 << 20,
            )?,
            receive_buffer_bytes: in_range(
                "ingest.receive_buffer_bytes",
                raw.ingest.receive_buffer_bytes.unwrap_or(8 << 20),
                4096,
                1 << 30,
            )?,
            sweep_interval: Duration::from_millis(in_range(
                "ingest.sweep_interval_ms",
                raw.ingest.sweep_interval_ms.unwrap_or(1000),
                1,
                3_600_000,
            )?),
            busy_poll: raw.ingest.busy_poll.unwrap_or(false),
            udp_replies: raw.ingest.udp_replies.unwrap_or(true),
            admit_udp: match raw.ingest.admit_udp.as_deref() {
                None => None,
                Some(v) if is_off(v) => None,
                Some(v) => Some(addr("ingest.admit_udp", v)?),
            },
            max_call_duration_s: in_range(
                "calls.max_call_duration_s",
                raw.calls.max_call_duration_s.unwrap_or(4 * 3600),
                1,
                30 * 86_400,
            )?,
            shard_count,
            max_active_calls: in_range(
                "calls.max_active_calls",
                raw.calls
                    .max_active_calls
                    .unwrap_or(tollgate_usage::MAX_ACTIVE_CALLS_DEFAULT),
                1,
                MAX_TABLE_ENTRIES,
            )?,
            max_expires_s: in_range(
                "registrations.max_expires_s",
                raw.registrations
                    .max_expires_s
                    .unwrap_or(tollgate_usage::MAX_EXPIRES_S_DEFAULT),
                1,
                MAX_EXPIRES_S_LIMIT,
            )?,
            max_aors: in_range(
                "registrations.max_aors",
                raw.registrations
                    .max_aors
                    .unwrap_or(tollgate_usage::MAX_AORS_DEFAULT),
                1,
                MAX_TABLE_ENTRIES,
            )?,
            max_contacts_per_aor: in_range(
                "registrations.max_contacts_per_aor",
                raw.registrations
                    .max_contacts_per_aor
                    .unwrap_or(tollgate_usage::MAX_CONTACTS_PER_AOR_DEFAULT),
                1,
                tollgate_usage::CONTACTS_PER_AOR_LIMIT as u32,
            )?,
            admin_limits: AdminLimits {
                max_connections: in_range(
                    "admin.max_connections",
                    raw.admin.max_connections.unwrap_or(256),
                    1,
                    65_536,
                )?,
                header_timeout: Duration::from_secs(in_range(
                    "admin.header_timeout_s",
                    raw.admin.header_timeout_s.unwrap_or(10),
                    1,
                    300,
                )?),
                idle_timeout: Duration::from_secs(in_range(
                    "admin.idle_timeout_s",
                    raw.admin.idle_timeout_s.unwrap_or(60),
                    1,
                    3600,
                )?),
                login_failures_max: in_range(
                    "admin.login_failures_max",
                    raw.admin.login_failures_max.unwrap_or(10),
                    1,
                    10_000,
                )?,
                login_failures_window: Duration::from_secs(in_range(
                    "admin.login_failures_window_s",
                    raw.admin.login_failures_window_s.unwrap_or(60),
                    1,
                    86_400,
                )?),
            },
            admin_listen: addr(
                "admin.listen",
                raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )?,
            admin_tls,
            report_interval: Duration::from_secs(in_range(
                "report.interval_s",
                raw.report.interval_s.unwrap_or(120),
                1,
                86_400,
            )?),
            users: raw
                .admin
                .users
                .into_iter()
                .map(|u| crate::auth::User::new(&u.name, &u.password_hash, &u.role))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("admin.users", e))?,
            license_file: raw.license.file,
            trusted_keys: trusted_keys(&raw.license.trusted_keys)?,
            host_id: raw.license.host_id.filter(|h| !h.is_empty()),
            license_server,
            mesh,
            hep_listen: match raw.hep.listen.as_deref() {
                None => None,
                Some(v) if is_off(v) => None,
                Some(v) => Some(addr("hep.listen", v)?),
            },
            hep_auth_key: raw.hep.auth_key.filter(|k| !k.is_empty()),
            hep_emergency_numbers: raw.hep.emergency_numbers,
            reconcile: crate::reconcile::validate(raw.reconcile)?,
            log_format: match raw.log.format.as_deref() {
                None => LogFormat::Text,
                Some(v) => v.parse().map_err(|e| invalid("log.format", e))?,
            },
            clock_skew_tolerance_ms: in_range(
                "license.clock_skew_tolerance_s",
                raw.license
                    .clock_skew_tolerance_s
                    .unwrap_or(CLOCK_SKEW_TOLERANCE_S_DEFAULT),
                1,
                86_400,
            )? * 1000,
            unlicensed_mode: match raw.license.unlicensed_mode.as_deref() {
                None | Some("warn") => tollgate_license::Mode::Warn,
                Some("enforce") => tollgate_license::Mode::Enforce,
                Some(other) => {
                    return Err(invalid(
                        "license.unlicensed_mode",
                        format!("{other:?}: expected \"warn\" or \"enforce\""),
                    ));
                }
            },
        })
    }

    /// Reads `path` (or takes the embedded defaults when `None`) and validates it.
    pub fn load(
        path: Option<&Path>,
        state_dir_override: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let raw = match path {
            Some(p) => RawConfig::load(p)?,
            None => RawConfig::default(),
        };
        Self::from_raw(raw, state_dir_override)
    }
}

/// `[license] server`, `token` / `token_file`, `proxy`, `ca_bundle`, `daily_at`,
/// `renew_before_days`, `bind_address`.
fn license_server(
    raw: &RawLicense,
    license_key: Option<&str>,
) -> Result<Option<LicenseServerConfig>, ConfigError> {
    let listed: Vec<&str> = raw
        .server
        .iter()
        .flat_map(|s| s.0.iter())
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if listed.is_empty() {
        return Ok(None);
    }
    if listed.len() > LICENSE_SERVER_COUNT_MAX {
        return Err(invalid(
            "license.server",
            format!("at most {LICENSE_SERVER_COUNT_MAX} servers"),
        ));
    }
    let mut servers: Vec<tollgate_license_client::Url> = Vec::new();
    for server in listed {
        let url: tollgate_license_client::Url = server
            .parse()
            .map_err(|e| invalid("license.server", format!("{server:?}: {e}")))?;
        if servers.contains(&url) {
            return Err(invalid(
                "license.server",
                format!("{server:?} is listed twice"),
            ));
        }
        servers.push(url);
    }
    let url = servers[0].clone();
    let license_key = license_key.ok_or_else(|| {
        invalid(
            "general.license_key",
            "required when [license] server is set",
        )
    })?;
    let token = match (&raw.token, &raw.token_file) {
        (Some(t), None) => t.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("license.token_file", format!("{}: {e}", path.display())))?
            .trim()
            .to_owned(),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "license.token",
                "set token or token_file, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "license.token",
                "required when [license] server is set",
            ));
        }
    };
    let mut client = tollgate_license_client::ClientConfig::new(url, license_key, &token);
    if let Some(proxy) = raw.proxy.as_deref().filter(|p| !p.is_empty()) {
        client.proxy = Some(
            proxy
                .parse()
                .map_err(|e| invalid("license.proxy", format!("{proxy:?}: {e}")))?,
        );
    }
    client.ca_bundle = raw.ca_bundle.clone();
    if let Some(addr) = raw.bind_address.as_deref() {
        client.bind_address = Some(
            addr.parse()
                .map_err(|e| invalid("license.bind_address", format!("{addr:?}: {e}")))?,
        );
    }
    let mut schedule = tollgate_license_client::ScheduleConfig::default();
    if let Some(at) = raw.daily_at.as_deref() {
        schedule.daily_at = at
            .parse()
            .map_err(|e| invalid("license.daily_at", format!("{at:?}: {e}")))?;
    }
    if let Some(days) = raw.renew_before_days {
        schedule.renew_before_ms =
            in_range("license.renew_before_days", days, 0, 365)? * 86_400_000;
    }
    Ok(Some(LicenseServerConfig {
        client,
        servers,
        schedule,
    }))
}

/// `[admin] tls_cert` and `tls_key`: both or neither (empty strings count as unset); the
/// files are read and the key matched to the certificate now, so a bad pair is a
/// configuration error at start rather than a server that cannot answer.
fn admin_tls(raw: &RawAdmin) -> Result<Option<AdminTls>, ConfigError> {
    let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    match (set(&raw.tls_cert), set(&raw.tls_key)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid("admin.tls_key", "required with admin.tls_cert")),
        (None, Some(_)) => Err(invalid("admin.tls_cert", "required with admin.tls_key")),
        (Some(cert), Some(key)) => {
            crate::admin_tls::server_config(&cert, &key)
                .map_err(|e| invalid("admin.tls_cert", e.to_string()))?;
            Ok(Some(AdminTls { cert, key }))
        }
    }
}

/// `[mesh]`: on when `enabled = true`, or by default when seeds are configured.
fn mesh_settings(raw: &RawMesh) -> Result<Option<MeshSettings>, ConfigError> {
    if !raw.enabled.unwrap_or(!raw.seeds.is_empty()) {
        return Ok(None);
    }
    let required = |key: &'static str, v: &Option<PathBuf>| {
        v.clone().ok_or_else(|| {
            invalid(
                key,
                "required when the mesh is enabled (see `tollgate cluster`)",
            )
        })
    };
    let expired_rule = match raw.expired_rule.as_deref() {
        None | Some("drop") => tollgate_replication::ExpiredRule::Drop,
        Some(rule) => match rule
            .strip_prefix("hold:")
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(s) => tollgate_replication::ExpiredRule::HoldFor {
                hold_ms: in_range("mesh.expired_rule", s, 1, 7 * 86_400)? * 1000,
            },
            None => {
                return Err(invalid(
                    "mesh.expired_rule",
                    format!("{rule:?}: expected \"drop\" or \"hold:<seconds>\""),
                ));
            }
        },
    };
    Ok(Some(MeshSettings {
        listen: addr(
            "mesh.listen",
            raw.listen.as_deref().unwrap_or(DEFAULT_MESH_LISTEN),
        )?,
        advertise: raw.advertise.clone().filter(|a| !a.is_empty()),
        seeds: raw.seeds.clone(),
        ca: required("mesh.ca", &raw.ca)?,
        cert: required("mesh.cert", &raw.cert)?,
        key: required("mesh.key", &raw.key)?,
        expired_rule,
        expired_visible_ms: in_range(
            "mesh.expired_visible_s",
            raw.expired_visible_s.unwrap_or(3600),
            0,
            7 * 86_400,
        )? * 1000,
    }))
}

/// `[license] trusted_keys`: each entry is a public key line
/// (`tollgate-ed25519-public:<id>:<base64>`) or the path of a file of such lines.
fn trusted_keys(entries: &[String]) -> Result<tollgate_license::TrustedKeys, ConfigError> {
    let key = "license.trusted_keys";
    let mut keys = tollgate_license::TrustedKeys::default();
    for entry in entries {
        let text = if entry.starts_with("tollgate-ed25519-public:") {
            entry.clone()
        } else {
            std::fs::read_to_string(entry).map_err(|e| invalid(key, format!("{entry}: {e}")))?
        };
        let parsed = tollgate_license::TrustedKeys::parse(&text)
            .map_err(|e| invalid(key, format!("{entry}: {e}")))?;
        for k in parsed.iter() {
            keys.insert(k.clone())
                .map_err(|e| invalid(key, e.to_string()))?;
        }
    }
    Ok(keys)
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::parse(text, Path::new("test.toml"))?, None)
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.events_udp, Some("127.0.0.1:7171".parse().unwrap()));
        assert_eq!(c.admin_listen, "127.0.0.1:7173".parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("./tollgate-state"));
        assert_eq!(
            c.events_unix,
            Some(PathBuf::from("./tollgate-state/events.sock"))
        );
        assert_eq!(c.max_call_duration_s, 14_400);
        assert_eq!(c.snapshot_interval, Duration::from_secs(5));
        assert_eq!(c.report_interval, Duration::from_secs(120));
        assert_eq!(c.license_key, None);
        assert_eq!(c.max_active_calls, 10_000_000);
        assert_eq!(c.max_expires_s, 604_800);
        assert_eq!((c.max_aors, c.max_contacts_per_aor), (10_000_000, 32));
        assert_eq!(
            c.admin_limits,
            AdminLimits {
                max_connections: 256,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                login_failures_max: 10,
                login_failures_window: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = parse("[ingest]\nudpp = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("udpp"), "{err}");
        let err = parse("[bogus]\n").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn license_server_is_one_url_or_a_list_in_order() {
        let head = "[general]\nlicense_key = \"K\"\n[license]\ntoken = \"tg_x\"\n";
        let one = parse(&format!("{head}server = \"https://ls1:7443\"\n")).unwrap();
        let one = one.license_server.unwrap();
        assert_eq!(one.servers.len(), 1);
        assert_eq!(one.client.server_url, one.servers[0]);
        let two = parse(&format!(
            "{head}server = [\"https://ls1:7443\", \"https://ls2:7443\"]\n"
        ))
        .unwrap()
        .license_server
        .unwrap();
        let hosts: Vec<_> = two.servers.iter().map(|u| u.host_str().unwrap()).collect();
        assert_eq!(hosts, ["ls1", "ls2"]);
        assert_eq!(two.client.server_url, two.servers[0]);
        assert!(
            parse(&format!("{head}server = []\n"))
                .unwrap()
                .license_server
                .is_none(),
            "an empty list is no server"
        );
        for (value, expected) in [
            ("[\"https://a\", \"https://a\"]", "listed twice"),
            ("[\"https://a\", 7]", "expected URLs"),
            ("7", "a URL or a list"),
            ("[\"not a url\"]", "license.server"),
        ] {
            let err = parse(&format!("{head}server = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{value}: {err}");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("\"https://ls{i}\"")).collect();
        let err = parse(&format!("{head}server = [{}]\n", nine.join(", ")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 8"), "{err}");
    }

    #[test]
    fn license_key_is_read_from_general() {
        let c = parse("[general]\nlicense_key = \"ABC_123\"\nnode_id = \"sip-1\"\n").unwrap();
        assert_eq!(c.license_key.as_deref(), Some("ABC_123"));
        assert_eq!(c.node_id, "sip-1");
    }

    #[test]
    fn listeners_can_be_switched_off_and_state_dir_overridden() {
        let raw =
            RawConfig::parse("[ingest]\nudp = \"off\"\nunix = \"\"\n", Path::new("t")).unwrap();
        let c = Config::from_raw(raw, Some(Path::new("/tmp/x"))).unwrap();
        assert_eq!(c.events_udp, None);
        assert_eq!(c.events_unix, None);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[ingest]\nudp = \"nonsense\"", "ingest.udp"),
            ("[calls]\nshard_count = 3", "calls.shard_count"),
            ("[ingest]\nunix_mode = \"999\"", "ingest.unix_mode"),
            ("[report]\ninterval_s = 0", "report.interval_s"),
            ("[general]\nnode_id = \"a b\"", "general.node_id"),
            // Out of range is an error, never a silent clamp.
            ("[ingest]\nrecv_batch = 5000", "ingest.recv_batch"),
            ("[ingest]\nthreads = 1000", "ingest.threads"),
            ("[calls]\nshard_count = 8192", "calls.shard_count"),
            (
                "[ingest]\nreceive_buffer_bytes = 0",
                "ingest.receive_buffer_bytes",
            ),
            (
                "[calls]\nmax_call_duration_s = 4294967295",
                "calls.max_call_duration_s",
            ),
            ("[calls]\nmax_active_calls = 0", "calls.max_active_calls"),
            (
                "[calls]\nmax_active_calls = 1000000001",
                "calls.max_active_calls",
            ),
            (
                "[registrations]\nmax_expires_s = 0",
                "registrations.max_expires_s",
            ),
            (
                "[registrations]\nmax_expires_s = 31536001",
                "registrations.max_expires_s",
            ),
            ("[registrations]\nmax_aors = 0", "registrations.max_aors"),
            (
                "[registrations]\nmax_contacts_per_aor = 1025",
                "registrations.max_contacts_per_aor",
            ),
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            ("[admin]\nheader_timeout_s = 0", "admin.header_timeout_s"),
            ("[admin]\nidle_timeout_s = 3601", "admin.idle_timeout_s"),
            (
                "[admin]\nlogin_failures_max = 0",
                "admin.login_failures_max",
            ),
            (
                "[admin]\nlogin_failures_window_s = 0",
                "admin.login_failures_window_s",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/configuration.md");
        for key in [
            "license_key",
            "node_id",
            "dir",
            "snapshot_interval_s",
            "udp",
            "unix",
            "unix_mode",
            "threads",
            "recv_batch",
            "max_datagram_bytes",
            "receive_buffer_bytes",
            "sweep_interval_ms",
            "max_call_duration_s",
            "shard_count",
            "listen",
            "interval_s",
            "busy_poll",
            "udp_replies",
            "admit_udp",
            "users",
            "name",
            "password_hash",
            "role",
            "file",
            "trusted_keys",
            "host_id",
            "unlicensed_mode",
            "server",
            "token",
            "token_file",
            "proxy",
            "ca_bundle",
            "daily_at",
            "renew_before_days",
            "bind_address",
            "clock_skew_tolerance_s",
            "enabled",
            "advertise",
            "seeds",
            "ca",
            "cert",
            "key",
            "expired_rule",
            "expired_visible_s",
            "auth_key",
            "emergency_numbers",
            "max_active_calls",
            "max_expires_s",
            "max_aors",
            "max_contacts_per_aor",
            "max_connections",
            "header_timeout_s",
            "idle_timeout_s",
            "login_failures_max",
            "login_failures_window_s",
            "kind",
            "url",
            "sender",
            "timeout_s",
        ] {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
        }
    }
}

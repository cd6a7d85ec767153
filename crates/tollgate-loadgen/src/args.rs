//! The command line of `tollgate loadgen`, and its validation into limits the generator trusts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::LoadgenError;

/// Longest `--sender-id`, in bytes. Call-ids embed it, and they must stay under
/// [`tollgate_events::FIELD_LEN_MAX`].
pub const SENDER_ID_LEN_MAX: usize = 64;
/// Most AoRs one run registers (`--registrations`).
pub const REGISTRATIONS_MAX: u32 = 10_000_000;
/// Most contacts per AoR (`--contacts-per-aor`).
pub const CONTACTS_PER_AOR_MAX: u32 = 16;
/// Most events in one datagram (`--batch`).
pub const BATCH_MAX: usize = 4096;
/// Smallest and largest `--max-datagram-bytes`. The upper bound is what a unix datagram
/// socket accepts by default and what fits a UDP datagram on loopback.
pub const DATAGRAM_BYTES_MIN: usize = 512;
pub const DATAGRAM_BYTES_MAX: usize = 65_000;
/// Most calls the `erlang` model keeps up at once (the pending-stop heap's bound). Arrivals
/// beyond it are skipped and counted, so memory stays bounded whatever `--cps`×`--hold` is.
pub const ACTIVE_CALLS_MAX: usize = 4_000_000;
/// Largest `--flood-window`.
pub const FLOOD_WINDOW_MAX: u32 = 1_000_000;

// Meant to be flattened into the binary's subcommand (`#[command(flatten)]`); built in code
// with `LoadgenArgs::default()`, which holds the same defaults as the command line. (A doc
// comment here would become clap's help text.)
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct LoadgenArgs {
    /// Where to send events: `udp:HOST:PORT` or `unix:/path/to/events.sock`.
    #[arg(long, value_name = "TARGET", default_value = "udp:127.0.0.1:7171")]
    pub target: Target,

    /// Wire format of the datagrams. `hep` sends the SIP messages a stateful proxy would
    /// mirror for each call and registration, as HEPv3 packets: point --target at the
    /// agent's HEP socket (udp:127.0.0.1:9060).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Shorthand for `--format hep`.
    #[arg(long)]
    pub hep: bool,

    /// Capture agent id in HEP packets (`--format hep`).
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub hep_capture_id: u32,

    /// Auth key chunk in HEP packets (`--format hep`), for a collector that checks one.
    #[arg(long, value_name = "KEY")]
    pub hep_auth_key: Option<String>,

    /// Traffic model: `flood` sends start/stop pairs as fast as possible (benchmarks);
    /// `erlang` sends Poisson call arrivals with exponential holding times, in real time.
    #[arg(long, value_enum, default_value_t = Mode::Erlang)]
    pub mode: Mode,

    /// Mean call arrivals per second (erlang mode; inter-arrival times are exponential).
    #[arg(long, value_name = "N", default_value_t = 100.0)]
    pub cps: f64,

    /// Mean call holding time in seconds (erlang mode; exponentially distributed).
    /// Offered load in Erlang is cps × hold.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub hold: f64,

    /// Percentage of calls marked `emergency` (0–100).
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    pub emergency_pct: f64,

    /// Number of calls kept open in flood mode: each new call stops the one started this
    /// many calls earlier.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub flood_window: u32,

    /// Send a `call-refresh` for every open call at this interval, in seconds (erlang mode;
    /// 0 never refreshes).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub call_refresh: f64,

    /// Number of AoRs to register. Initial registrations are spread over the first second.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub registrations: u32,

    /// Contacts bound to each AoR (one `reg` event each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub contacts_per_aor: u32,

    /// Registration expiry in seconds. Each AoR re-registers at about half of it; about 2%
    /// of refreshes instead unregister (expires 0) and come back later, so there is churn.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub reg_expires: u32,

    /// Provisioned subscriber count to announce (`subscribers N`) at start and every 5
    /// seconds.
    #[arg(long, value_name = "N")]
    pub subscribers: Option<u64>,

    /// Events per datagram. A partial batch is sent after at most 5 ms, so batching adds
    /// little latency in erlang mode.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: usize,

    /// Largest datagram to send, in bytes; a batch is sent early when the next event would
    /// not fit.
    #[arg(long, value_name = "BYTES", default_value_t = 1400)]
    pub max_datagram_bytes: usize,

    /// Stop generating after this many seconds (0: no time limit).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub duration: f64,

    /// Stop generating after this many events. Stops sent by --stop-at-end come on top.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,

    /// Seed for call-ids, tags and timing; the same seed and sender id replay the same run.
    /// Without it a seed is picked and printed in the report.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Sender id carried in sequence headers and call-ids (default `loadgen-<pid>`).
    /// No spaces, at most 64 bytes. Binary headers hold 8 sender bytes: the id zero-padded
    /// when it is that short, else its 64-bit FNV-1a hash.
    #[arg(long, value_name = "ID")]
    pub sender_id: Option<String>,

    /// Send datagrams without the per-sender sequence header (the `seq` line in text, the
    /// header's sequence fields in binary).
    #[arg(long)]
    pub no_seq: bool,

    /// At the end, send `call-stop` for every call still up, so the agent ends at zero calls.
    #[arg(long)]
    pub stop_at_end: bool,

    /// Print the report as one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,

    /// Cap on datagrams per second, meant for flood mode (default: no cap, as fast as the
    /// socket takes them).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
}

impl Default for LoadgenArgs {
    /// The command line's defaults (`tollgate loadgen` with no flags).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        <Wrapper as clap::Parser>::parse_from(["loadgen"]).args
    }
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        if let Some(addr) = s.strip_prefix("udp:") {
            addr.parse::<SocketAddr>()
                .map(Target::Udp)
                .map_err(|_| TargetError::BadAddress(addr.to_owned()))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError::EmptyPath);
            }
            Ok(Target::Unix(PathBuf::from(path)))
        } else {
            Err(TargetError::UnknownScheme(s.to_owned()))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Udp(addr) => write!(f, "udp:{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a `--target` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target {0:?} must start with `udp:` or `unix:`")]
    UnknownScheme(String),
    #[error("`{0}` is not an IP:PORT socket address")]
    BadAddress(String),
    #[error("unix target needs a path")]
    EmptyPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The line protocol (`call-start <call-id> …`).
    Text,
    /// The compact binary batch format.
    Binary,
    /// Mirrored SIP in HEPv3 packets (one SIP message per datagram; --batch, sequence
    /// headers and --max-datagram-bytes do not apply).
    Hep,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Binary => "binary",
            Format::Hep => "hep",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Start/stop pairs as fast as possible, keeping --flood-window calls open.
    Flood,
    /// Poisson arrivals, exponential holding times, registrations; paced in real time.
    Erlang,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Flood => "flood",
            Mode::Erlang => "erlang",
        })
    }
}

/// [`LoadgenArgs`] checked and turned into the units the generator works in.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub target: Target,
    pub format: Format,
    /// Capture id and auth key of HEP packets.
    pub hep_capture_id: u32,
    pub hep_auth_key: Option<Vec<u8>>,
    pub sender_id: String,
    pub seq: bool,
    pub batch: usize,
    pub datagram_bytes_max: usize,
    pub duration: Option<Duration>,
    pub events_max: Option<u64>,
    pub stop_at_end: bool,
    pub rate: Option<f64>,
    pub model: crate::model::ModelConfig,
}

fn bad(what: &str) -> LoadgenError {
    LoadgenError::InvalidArgs(what.to_owned())
}

fn seconds(value: f64, name: &str) -> Result<Duration, LoadgenError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| bad(&format!("{name} must be a finite number of seconds >= 0")))
}

impl LoadgenArgs {
    /// Checks every value and derives the generator's configuration.
    pub(crate) fn validate(&self) -> Result<Config, LoadgenError> {
        if !(self.cps.is_finite() && self.cps > 0.0 && self.cps <= 10_000_000.0) {
            return Err(bad("--cps must be > 0 and <= 10000000"));
        }
        if !(self.hold.is_finite() && self.hold > 0.0) {
            return Err(bad("--hold must be > 0 seconds"));
        }
        if !(0.0..=100.0).contains(&self.emergency_pct) {
            return Err(bad("--emergency-pct must be between 0 and 100"));
        }
        if self.flood_window == 0 || self.flood_window > FLOOD_WINDOW_MAX {
            return Err(bad(&format!(
                "--flood-window must be 1..={FLOOD_WINDOW_MAX}"
            )));
        }
        let call_refresh = seconds(self.call_refresh, "--call-refresh")?;
        if !call_refresh.is_zero() && call_refresh < Duration::from_millis(100) {
            return Err(bad("--call-refresh must be 0 or at least 0.1 seconds"));
        }
        if self.registrations > REGISTRATIONS_MAX {
            return Err(bad(&format!(
                "--registrations must be <= {REGISTRATIONS_MAX}"
            )));
        }
        if self.contacts_per_aor == 0 || self.contacts_per_aor > CONTACTS_PER_AOR_MAX {
            return Err(bad(&format!(
                "--contacts-per-aor must be 1..={CONTACTS_PER_AOR_MAX}"
            )));
        }
        if self.reg_expires < 2 {
            return Err(bad("--reg-expires must be at least 2 seconds"));
        }
        if self.batch == 0 || self.batch > BATCH_MAX {
            return Err(bad(&format!("--batch must be 1..={BATCH_MAX}")));
        }
        if !(DATAGRAM_BYTES_MIN..=DATAGRAM_BYTES_MAX).contains(&self.max_datagram_bytes) {
            return Err(bad(&format!(
                "--max-datagram-bytes must be {DATAGRAM_BYTES_MIN}..={DATAGRAM_BYTES_MAX}"
            )));
        }
        let duration = seconds(self.duration, "--duration")?;
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(bad("--rate must be > 0 datagrams per second"));
        }
        let sender_id = match &self.sender_id {
            Some(id) => id.clone(),
            None => format!("loadgen-{}", std::process::id()),
        };
        if sender_id.is_empty()
            || sender_id.len() > SENDER_ID_LEN_MAX
            || !sender_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad(&format!(
                "--sender-id must be 1..={SENDER_ID_LEN_MAX} printable ASCII bytes without spaces"
            )));
        }
        let format = if self.hep { Format::Hep } else { self.format };
        if format == Format::Hep && !matches!(self.target, Target::Udp(_)) {
            return Err(bad(
                "--format hep needs a udp: target (the agent's HEP socket)",
            ));
        }
        if self
            .hep_auth_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 256)
        {
            return Err(bad("--hep-auth-key must be 1 to 256 bytes"));
        }
        let seed = self.seed.unwrap_or_else(random_seed);
        Ok(Config {
            target: self.target.clone(),
            format,
            hep_capture_id: self.hep_capture_id,
            hep_auth_key: self.hep_auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
            seq: !self.no_seq && format != Format::Hep,
            batch: self.batch,
            datagram_bytes_max: self.max_datagram_bytes,
            duration: (!duration.is_zero()).then_some(duration),
            events_max: self.max_events,
            stop_at_end: self.stop_at_end,
            rate: self.rate,
            model: crate::model::ModelConfig {
                mode: self.mode,
                seed,
                cps: self.cps,
                hold: Duration::from_secs_f64(self.hold),
                emergency_fraction: self.emergency_pct / 100.0,
                flood_window: self.flood_window,
                call_refresh: (!call_refresh.is_zero()).then_some(call_refresh),
                registrations: self.registrations,
                contacts_per_aor: self.contacts_per_aor,
                reg_expires_s: self.reg_expires,
                subscribers: self.subscribers,
            },
            sender_id,
        })
    }
}

/// A seed for runs without `--seed`: clock and pid mixed, nothing cryptographic.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::ids::mix(nanos ^ (u64::from(std::process::id()) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_target(input: &str, expected: Result<Target, TargetError>) {
        assert_eq!(input.parse::<Target>(), expected, "{input}");
    }

    #[test]
    fn target_parsing() {
        check_target(
            "udp:127.0.0.1:7171",
            Ok(Target::Udp("127.0.0.1:7171".parse().unwrap())),
        );
        check_target("udp:[::1]:9", Ok(Target::Udp("[::1]:9".parse().unwrap())));
        check_target(
            "unix:/tmp/events.sock",
            Ok(Target::Unix("/tmp/events.sock".into())),
        );
        check_target(
            "unix:rel/events.sock",
            Ok(Target::Unix("rel/events.sock".into())),
        );
        check_target("unix:", Err(TargetError::EmptyPath));
        check_target(
            "udp:localhost:7171",
            Err(TargetError::BadAddress("localhost:7171".into())),
        );
        check_target(
            "udp:127.0.0.1",
            Err(TargetError::BadAddress("127.0.0.1".into())),
        );
        check_target(
            "127.0.0.1:7171",
            Err(TargetError::UnknownScheme("127.0.0.1:7171".into())),
        );
        check_target(
            "tcp:1.2.3.4:5",
            Err(TargetError::UnknownScheme("tcp:1.2.3.4:5".into())),
        );
    }

    #[test]
    fn target_display_round_trips() {
        for s in ["udp:127.0.0.1:7171", "udp:[::1]:9", "unix:/tmp/x.sock"] {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let args = LoadgenArgs::default();
        assert_eq!(args.target, Target::Udp("127.0.0.1:7171".parse().unwrap()));
        assert_eq!(args.format, Format::Text);
        assert_eq!(args.mode, Mode::Erlang);
        assert_eq!(args.cps, 100.0);
        assert_eq!(args.hold, 60.0);
        assert_eq!(args.emergency_pct, 0.0);
        assert_eq!(args.registrations, 0);
        assert_eq!(args.reg_expires, 3600);
        assert_eq!(args.batch, 1);
        assert_eq!(args.max_datagram_bytes, 1400);
        assert_eq!(args.duration, 10.0);
        assert!(!args.no_seq && !args.stop_at_end && !args.json);
        let config = args.validate().unwrap();
        assert_eq!(config.sender_id, format!("loadgen-{}", std::process::id()));
        assert!(config.seq);
    }

    #[test]
    fn cli_flags_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "loadgen",
            "--target",
            "unix:/run/ev.sock",
            "--format",
            "binary",
            "--mode",
            "flood",
            "--batch",
            "32",
            "--seed",
            "7",
            "--stop-at-end",
            "--rate",
            "5000",
        ])
        .unwrap();
        assert_eq!(cli.args.target, Target::Unix("/run/ev.sock".into()));
        assert_eq!(cli.args.format, Format::Binary);
        assert_eq!(cli.args.mode, Mode::Flood);
        assert_eq!(cli.args.batch, 32);
        assert_eq!(cli.args.seed, Some(7));
        assert!(cli.args.stop_at_end);
        assert_eq!(cli.args.rate, Some(5000.0));
        let err = <Cli as clap::Parser>::try_parse_from(["loadgen", "--target", "nope"]);
        assert!(err.is_err());
        for flags in [&["--hep"][..], &["--format", "hep"]] {
            let cli = <Cli as clap::Parser>::try_parse_from(
                [
                    "loadgen",
                    "--target",
                    "udp:127.0.0.1:9060",
                    "--hep-capture-id",
                    "9",
                ]
                .iter()
                .chain(flags),
            )
            .unwrap();
            let config = cli.args.validate().unwrap();
            assert_eq!(config.format, Format::Hep);
            assert_eq!(config.hep_capture_id, 9);
            assert!(!config.seq, "HEP has no sequence header");
        }
        let cli =
            <Cli as clap::Parser>::try_parse_from(["loadgen", "--hep", "--target", "unix:/x"])
                .unwrap();
        assert!(matches!(
            cli.args.validate(),
            Err(LoadgenError::InvalidArgs(_))
        ));
    }

    #[test]
    fn invalid_values_are_refused() {
        type Change = fn(&mut LoadgenArgs);
        let cases: [(&str, Change); 7] = [
            ("cps", |a| a.cps = 0.0),
            ("hold", |a| a.hold = f64::NAN),
            ("emergency", |a| a.emergency_pct = 101.0),
            ("batch", |a| a.batch = 0),
            ("datagram", |a| a.max_datagram_bytes = 100),
            ("sender", |a| a.sender_id = Some("has space".into())),
            ("duration", |a| a.duration = -1.0),
        ];
        for (name, change) in cases {
            let mut args = LoadgenArgs::default();
            change(&mut args);
            assert!(
                matches!(args.validate(), Err(LoadgenError::InvalidArgs(_))),
                "{name} accepted"
            );
        }
    }
}

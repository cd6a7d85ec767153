//! The server's configuration, in two stages: [`RawConfig`] is the TOML as written (unknown
//! keys are errors), [`Config`] is validated and typed, with every path resolved.
//!
//! Relative paths in a config file are relative to the file's directory. Without a config
//! file the server runs in development mode: loopback only, everything under
//! `./license-server-dev/` (see `docs/license-server.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use std::time::Duration;

use tollgate_license::timestamp::DAY;

use crate::lease::LeaseRules;
use crate::store::Database;

/// The default listen address (a contract: MISSION.md's address table).
pub const LISTEN_DEFAULT: &str = "0.0.0.0:7443";
/// Where a development server without a config file listens: loopback only.
pub const DEV_LISTEN_DEFAULT: &str = "127.0.0.1:7443";
/// Where a development server without a config file keeps its files.
pub const DEV_DIR_DEFAULT: &str = "license-server-dev";
/// The database file name when none is configured.
pub const DATABASE_DEFAULT: &str = "license-server.db";
/// The signing key directory name when none is configured.
pub const KEY_DIR_DEFAULT: &str = "signing-keys";
/// The directory, beside the database, where `--dev` keeps its self-signed certificate.
pub const DEV_TLS_DIR: &str = "dev-tls";

pub const LEASE_DAYS_DEFAULT: u64 = 14;
pub const LEASE_DAYS_MAX: u64 = 366;
pub const SUBSCRIPTION_PERIOD_DAYS_DEFAULT: u64 = 30;
pub const SUBSCRIPTION_PERIOD_DAYS_MAX: u64 = 3660;
pub const LEASE_REUSE_MINUTES_DEFAULT: u64 = 10;
pub const LEASE_REUSE_MINUTES_MAX: u64 = 24 * 60;
/// Longest config file read.
pub const CONFIG_LEN_MAX: u64 = 64 * 1024;

/// A configuration problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {problem}")]
    Value { key: &'static str, problem: String },
}

/// The config file as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub database: Option<RawDatabase>,
    pub lease_days: Option<u64>,
    pub subscription_period_days: Option<u64>,
    pub lease_reuse_minutes: Option<u64>,
    pub tls: Option<RawTls>,
    pub signing: Option<RawSigning>,
}

/// `database = "file.db"` (the original form) or a `[database]` table.
#[derive(Debug)]
pub enum RawDatabase {
    Path(PathBuf),
    Table(RawDatabaseTable),
}

impl<'de> Deserialize<'de> for RawDatabase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawDatabase, D::Error> {
        use serde::de::Error as _;
        match toml::Value::deserialize(d)? {
            toml::Value::String(path) => Ok(RawDatabase::Path(path.into())),
            table @ toml::Value::Table(_) => table
                .try_into()
                .map(RawDatabase::Table)
                .map_err(|e| D::Error::custom(format!("[database]: {}", e.message()))),
            other => Err(D::Error::custom(format!(
                "database: expected a file path or a [database] table, found a {}",
                other.type_str()
            ))),
        }
    }
}

/// `[database]`: `path` (SQLite, the default) or `url` (PostgreSQL), not both.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseTable {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub key_dir: PathBuf,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the certificate chain and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for `localhost` and `127.0.0.1`, generated into this
    /// directory on first start and reused after.
    Dev { dir: PathBuf },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: Database,
    pub key_dir: PathBuf,
    pub tls: TlsSource,
    pub rules: LeaseRules,
    /// Development mode: a self-signed certificate, and a first signing key created if the
    /// key directory has none.
    pub dev: bool,
}

impl Config {
    /// Reads `path` (or, without one, uses the development defaults) and validates it.
    /// `dev` replaces the configured certificate with a generated self-signed one.
    pub fn load(path: Option<&Path>, dev: bool) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = read_config(path)?;
                let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                let base = path.parent().unwrap_or(Path::new("."));
                Config::from_raw(raw, base, dev)
            }
            None => Config::dev_defaults(Path::new(DEV_DIR_DEFAULT)),
        }
    }

    /// The configuration of a development server keeping its files in `dir`: loopback
    /// only, self-signed certificate, a signing key created on first start.
    pub fn dev_defaults(dir: &Path) -> Result<Config, ConfigError> {
        let raw = RawConfig {
            listen: Some(DEV_LISTEN_DEFAULT.into()),
            ..RawConfig::default()
        };
        Config::from_raw(raw, dir, true)
    }

    /// Validates `raw`; relative paths are taken relative to `base`.
    pub fn from_raw(raw: RawConfig, base: &Path, dev: bool) -> Result<Config, ConfigError> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let listen_text = raw.listen.as_deref().unwrap_or(LISTEN_DEFAULT);
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Value {
                key: "listen",
                problem: format!("{listen_text:?} is not an address like 0.0.0.0:7443"),
            })?;
        let database = match raw.database {
            None => Database::Sqlite(resolve(Path::new(DATABASE_DEFAULT))),
            Some(RawDatabase::Path(path)) => Database::Sqlite(resolve(&path)),
            Some(RawDatabase::Table(table)) => match (table.path, table.url) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Value {
                        key: "database",
                        problem: "set path (SQLite) or url (PostgreSQL), not both".into(),
                    });
                }
                (Some(path), None) => Database::Sqlite(resolve(&path)),
                (None, Some(url)) => {
                    Database::postgres_url(&url).map_err(|problem| ConfigError::Value {
                        key: "database.url",
                        problem,
                    })?
                }
                (None, None) => Database::Sqlite(resolve(Path::new(DATABASE_DEFAULT))),
            },
        };
        let key_dir = resolve(
            raw.signing
                .as_ref()
                .map_or(Path::new(KEY_DIR_DEFAULT), |s| s.key_dir.as_path()),
        );
        let tls = match (raw.tls, dev) {
            (_, true) => TlsSource::Dev {
                dir: database
                    .sqlite_path()
                    .and_then(Path::parent)
                    .unwrap_or(base)
                    .join(DEV_TLS_DIR),
            },
            (Some(tls), false) => TlsSource::Files {
                cert: resolve(&tls.cert),
                key: resolve(&tls.key),
            },
            (None, false) => {
                return Err(ConfigError::Value {
                    key: "tls",
                    problem: "set [tls] cert and key (PEM files), or start with --dev for a \
                              self-signed certificate"
                        .into(),
                });
            }
        };
        let days = |key: &'static str, value: Option<u64>, default: u64, max: u64| {
            let value = value.unwrap_or(default);
            if value == 0 || value > max {
                return Err(ConfigError::Value {
                    key,
                    problem: format!("{value}: expected 1 to {max}"),
                });
            }
            Ok(value)
        };
        let lease_days = days(
            "lease_days",
            raw.lease_days,
            LEASE_DAYS_DEFAULT,
            LEASE_DAYS_MAX,
        )?;
        let period_days = days(
            "subscription_period_days",
            raw.subscription_period_days,
            SUBSCRIPTION_PERIOD_DAYS_DEFAULT,
            SUBSCRIPTION_PERIOD_DAYS_MAX,
        )?;
        let reuse_minutes = raw
            .lease_reuse_minutes
            .unwrap_or(LEASE_REUSE_MINUTES_DEFAULT);
        if reuse_minutes > LEASE_REUSE_MINUTES_MAX {
            return Err(ConfigError::Value {
                key: "lease_reuse_minutes",
                problem: format!("{reuse_minutes}: expected 0 to {LEASE_REUSE_MINUTES_MAX}"),
            });
        }
        Ok(Config {
            listen,
            database,
            key_dir,
            tls,
            rules: LeaseRules {
                lease: DAY.saturating_mul(u32::try_from(lease_days).unwrap_or(u32::MAX)),
                subscription_period: DAY
                    .saturating_mul(u32::try_from(period_days).unwrap_or(u32::MAX)),
                reuse_window: Duration::from_secs(reuse_minutes.saturating_mul(60)),
            },
            dev,
        })
    }
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(CONFIG_LEN_MAX + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > CONFIG_LEN_MAX {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            message: format!("longer than {CONFIG_LEN_MAX} bytes"),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, dev: bool) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), dev).map(|mut c| {
            // Paths relative to the temp dir, for comparisons.
            if let Database::Sqlite(path) = &c.database {
                c.database = Database::Sqlite(path.strip_prefix(dir.path()).unwrap().to_owned());
            }
            c.key_dir = c.key_dir.strip_prefix(dir.path()).unwrap().to_owned();
            c.tls = match c.tls {
                TlsSource::Files { cert, key } => TlsSource::Files {
                    cert: cert.strip_prefix(dir.path()).unwrap_or(&cert).to_owned(),
                    key: key.strip_prefix(dir.path()).unwrap_or(&key).to_owned(),
                },
                TlsSource::Dev { dir: d } => TlsSource::Dev {
                    dir: d.strip_prefix(dir.path()).unwrap().to_owned(),
                },
            };
            c
        })
    }

    const TLS: &str = "[tls]\ncert = \"tls/cert.pem\"\nkey = \"/etc/tollgate/key.pem\"\n";

    #[test]
    fn defaults_with_only_tls() {
        let c = load(TLS, false).unwrap();
        assert_eq!(c.listen, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(c.database, Database::Sqlite("license-server.db".into()));
        assert_eq!(c.key_dir, Path::new("signing-keys"));
        assert_eq!(
            c.tls,
            TlsSource::Files {
                cert: "tls/cert.pem".into(),
                key: "/etc/tollgate/key.pem".into()
            }
        );
        assert_eq!(c.rules.lease, 14 * DAY);
        assert_eq!(c.rules.subscription_period, 30 * DAY);
        assert_eq!(c.rules.reuse_window, Duration::from_secs(10 * 60));
        assert!(!c.dev);
    }

    #[test]
    fn every_key() {
        let text = format!(
            "listen = \"127.0.0.1:9443\"\ndatabase = \"db/ls.db\"\nlease_days = 7\n\
             subscription_period_days = 31\nlease_reuse_minutes = 0\n{TLS}\
             [signing]\nkey_dir = \"keys\"\n"
        );
        let c = load(&text, false).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(c.database, Database::Sqlite("db/ls.db".into()));
        assert_eq!(c.key_dir, Path::new("keys"));
        assert_eq!(c.rules.lease, 7 * DAY);
        assert_eq!(c.rules.subscription_period, 31 * DAY);
        assert_eq!(c.rules.reuse_window, Duration::ZERO);
    }

    #[test]
    fn dev_replaces_tls_with_a_generated_certificate_beside_the_database() {
        let c = load("database = \"state/ls.db\"\n", true).unwrap();
        assert_eq!(
            c.tls,
            TlsSource::Dev {
                dir: "state/dev-tls".into()
            }
        );
        assert!(c.dev);
    }

    #[test]
    fn no_config_file_is_a_loopback_dev_server() {
        let c = Config::load(None, false).unwrap();
        assert!(c.dev);
        assert!(c.listen.ip().is_loopback());
        assert_eq!(
            c.database,
            Database::Sqlite("license-server-dev/license-server.db".into())
        );
    }

    #[test]
    fn database_as_a_table_takes_a_path_or_a_postgres_url() {
        let c = load(&format!("[database]\npath = \"x/ls.db\"\n{TLS}"), false).unwrap();
        assert_eq!(c.database, Database::Sqlite("x/ls.db".into()));
        let url = "postgres://tollgate:secret@db.example:5432/licenses";
        let c = load(&format!("[database]\nurl = \"{url}\"\n{TLS}"), false).unwrap();
        assert_eq!(c.database, Database::Postgres(url.into()));
        assert_eq!(
            c.database.to_string(),
            "postgres://tollgate:***@db.example:5432/licenses",
            "the password is never shown"
        );
        for (table, expected) in [
            ("url = \"mysql://x\"\n", "database.url"),
            ("url = \"postgres://u@h\"\npath = \"a.db\"\n", "not both"),
            ("host = \"h\"\n", "host"),
        ] {
            let error = load(&format!("[database]\n{table}{TLS}"), false)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{table:?}: {error}");
        }
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, expected) in [
            ("", "tls: set [tls] cert and key"),
            ("listen = \"nowhere\"\n", "listen"),
            ("lease_days = 0\n", "lease_days: 0: expected 1 to 366"),
            (
                "subscription_period_days = 5000\n",
                "subscription_period_days",
            ),
            ("lease_reuse_minutes = 2000\n", "lease_reuse_minutes"),
            ("unknown = 1\n", "unknown field `unknown`"),
            ("[tls]\ncert = \"c\"\n", "missing field `key`"),
            ("[signing]\nkey = \"k\"\n", "unknown field `key`"),
        ] {
            let text = if expected.starts_with("tls") || !text.contains('[') {
                format!(
                    "{text}{}",
                    if expected.starts_with("tls") { "" } else { TLS }
                )
            } else {
                text.to_owned()
            };
            let error = load(&text, false).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}

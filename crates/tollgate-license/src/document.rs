//! The license document: what a license says, its TOML body (the signed bytes), and the
//! vendor's [`LicenseSpec`] it is made from.
//!
//! Parsing is two-stage: TOML into a raw, all-optional shape (unknown keys are errors), then
//! [`Document::validate`] into the typed document. Every string and list has a named bound.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use tollgate_events::WallTime;

use crate::keys::KeyId;
use crate::timestamp::{TIMESTAMP_MAX, format_rfc3339, parse_rfc3339};

/// Longest body (the signed TOML text), in bytes.
pub const BODY_LEN_MAX: usize = 64 * 1024;
/// Most feature names in a document.
pub const FEATURE_COUNT_MAX: usize = 256;
/// Longest feature name, in bytes (`[A-Za-z0-9_.-]`).
pub const FEATURE_LEN_MAX: usize = 64;
/// Most host ids a document may be bound to.
pub const HOST_ID_COUNT_MAX: usize = 64;
/// Longest host id, in bytes (printable ASCII without space, `"` or `\`).
pub const HOST_ID_LEN_MAX: usize = 128;
/// Longest license key, in bytes (`[A-Za-z0-9_.-]`).
pub const LICENSE_KEY_LEN_MAX: usize = 128;
/// Longest customer name, in bytes (any text without control characters).
pub const CUSTOMER_LEN_MAX: usize = 256;
/// Largest value of a limit (2^40, about 1.1 × 10^12): limit × (1 + grace) stays far from
/// overflow and fits the admission gate's 48-bit field.
pub const LIMIT_MAX: u64 = 1 << 40;
/// Largest grace, in percent of a limit.
pub const GRACE_PCT_MAX: u8 = 100;
/// Largest serial: TOML integers are signed 64-bit.
pub const SERIAL_MAX: u64 = i64::MAX as u64;
/// The body format this crate reads and writes (`version = 1`).
pub const FORMAT_VERSION: u32 = 1;

/// Why a document (or spec) was refused. Messages name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("body is longer than {BODY_LEN_MAX} bytes")]
    TooLong,
    #[error("not valid TOML for a license: {0}")]
    Toml(String),
    #[error("`{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: Cow<'static, str>,
    },
}

fn field_error(field: &'static str, problem: impl Into<Cow<'static, str>>) -> DocumentError {
    DocumentError::Field {
        field,
        problem: problem.into(),
    }
}

/// How a license lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Never expires (`valid_until` is absent).
    Perpetual,
    /// Expires at `valid_until`; new calls stop then, whatever the mode.
    Term,
    /// Expires at `valid_until`, which the license server rolls forward while the contract
    /// is active; once past it, behaves like an expired term license.
    Subscription,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Perpetual => "perpetual",
            Kind::Term => "term",
            Kind::Subscription => "subscription",
        }
    }
}

/// What crossing a limit does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report and warn only (the default).
    #[default]
    Warn,
    /// Deny admission of new calls beyond the limit plus grace.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// How limits are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Policy {
    pub mode: Mode,
    /// A limit warns once usage reaches this percentage of it (1..=100; default 90).
    pub warn_at_pct: u8,
    /// In enforce mode, new calls are admitted up to the calls limit plus this percentage
    /// (0..=[`GRACE_PCT_MAX`]; default 10).
    pub grace_pct: u8,
    /// Emergency calls are always admitted (default true).
    pub emergency_exempt: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Warn,
            warn_at_pct: 90,
            grace_pct: 10,
            emergency_exempt: true,
        }
    }
}

/// The licensed capacities; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Limits {
    /// Concurrent calls (emergency calls included).
    pub calls: Option<u64>,
    /// Provisioned subscribers on the platform.
    pub subscribers: Option<u64>,
    /// Subscribers with at least one live registration.
    pub registered_subscribers: Option<u64>,
}

/// A license document: everything a license says. Built by the vendor (from a
/// [`LicenseSpec`]), signed with [`crate::sign`], verified with [`crate::verify`].
///
/// Fields are public so the license server can derive documents; [`Document::validate`]
/// (run by signing and by parsing) enforces the invariants listed on each field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Document {
    /// The license key, e.g. `ABCDEFGHI_123456789_a1b2c3d4e5f6` (1..=[`LICENSE_KEY_LEN_MAX`]
    /// bytes of `[A-Za-z0-9_.-]`).
    pub license_key: String,
    /// Who the license is for (1..=[`CUSTOMER_LEN_MAX`] bytes, no control characters).
    pub customer: String,
    pub kind: Kind,
    /// Grows with every new document for the same license; a verifier refuses a serial
    /// lower than the highest it has seen (rollback). 0..=[`SERIAL_MAX`].
    pub serial: u64,
    /// When this document was signed (informational). JSON views name it `issued_at_ms`
    /// (Unix ms), the document itself `issued_at` (RFC 3339).
    #[serde(rename = "issued_at_ms")]
    pub issued_at: WallTime,
    /// Not valid before this.
    #[serde(rename = "valid_from_ms")]
    pub valid_from: WallTime,
    /// Not valid from this instant on: absent for perpetual, required otherwise, later than
    /// `valid_from`.
    #[serde(rename = "valid_until_ms")]
    pub valid_until: Option<WallTime>,
    /// The signature lease: from this instant on the document is `LEASE_EXPIRED` until
    /// renewed. Absent: no lease (an offline license that is never renewed).
    #[serde(rename = "signature_valid_until_ms")]
    pub signature_valid_until: Option<WallTime>,
    pub limits: Limits,
    /// Licensed feature names, unique, at most [`FEATURE_COUNT_MAX`].
    pub features: Vec<String>,
    /// If not empty, the license is valid only on a host with one of these ids (ASCII,
    /// compared case-insensitively), unique, at most [`HOST_ID_COUNT_MAX`].
    pub host_ids: Vec<String>,
    pub policy: Policy,
    /// The key that signs (or signed) this document; [`crate::sign`] sets it.
    pub key_id: KeyId,
}

impl Document {
    /// Checks every invariant documented on the fields.
    pub fn validate(&self) -> Result<(), DocumentError> {
        check_token("license_key", &self.license_key, LICENSE_KEY_LEN_MAX)?;
        if self.customer.is_empty() || self.customer.len() > CUSTOMER_LEN_MAX {
            return Err(field_error(
                "customer",
                format!("1 to {CUSTOMER_LEN_MAX} bytes"),
            ));
        }
        if self.customer.chars().any(char::is_control) {
            return Err(field_error(
                "customer",
                "control characters are not allowed",
            ));
        }
        if self.serial > SERIAL_MAX {
            return Err(field_error("serial", "larger than 2^63 - 1"));
        }
        for (field, at) in [
            ("issued_at", Some(self.issued_at)),
            ("valid_from", Some(self.valid_from)),
            ("valid_until", self.valid_until),
            ("signature_valid_until", self.signature_valid_until),
        ] {
            if at.is_some_and(|at| at > TIMESTAMP_MAX) {
                return Err(field_error(field, "later than 9999-12-31T23:59:59.999Z"));
            }
        }
        match (self.kind, self.valid_until) {
            (Kind::Perpetual, Some(_)) => {
                return Err(field_error("valid_until", "a perpetual license has no end"));
            }
            (Kind::Term | Kind::Subscription, None) => {
                return Err(field_error(
                    "valid_until",
                    "required for term and subscription",
                ));
            }
            (_, Some(until)) if until <= self.valid_from => {
                return Err(field_error("valid_until", "must be later than valid_from"));
            }
            _ => {}
        }
        for (field, limit) in [
            ("limits.calls", self.limits.calls),
            ("limits.subscribers", self.limits.subscribers),
            (
                "limits.registered_subscribers",
                self.limits.registered_subscribers,
            ),
        ] {
            if limit.is_some_and(|limit| limit > LIMIT_MAX) {
                return Err(field_error(field, format!("larger than {LIMIT_MAX}")));
            }
        }
        if self.features.len() > FEATURE_COUNT_MAX {
            return Err(field_error(
                "features",
                format!("more than {FEATURE_COUNT_MAX}"),
            ));
        }
        for (i, feature) in self.features.iter().enumerate() {
            check_token("features", feature, FEATURE_LEN_MAX)?;
            if self.features[..i].contains(feature) {
                return Err(field_error(
                    "features",
                    format!("`{feature}` is listed twice"),
                ));
            }
        }
        if self.host_ids.len() > HOST_ID_COUNT_MAX {
            return Err(field_error(
                "host_ids",
                format!("more than {HOST_ID_COUNT_MAX}"),
            ));
        }
        for (i, host_id) in self.host_ids.iter().enumerate() {
            let printable = |b: &u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\');
            if host_id.is_empty()
                || host_id.len() > HOST_ID_LEN_MAX
                || !host_id.as_bytes().iter().all(printable)
            {
                return Err(field_error(
                    "host_ids",
                    format!("1 to {HOST_ID_LEN_MAX} printable ASCII bytes without space, \" or \\"),
                ));
            }
            if self.host_ids[..i]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host_id))
            {
                return Err(field_error(
                    "host_ids",
                    format!("`{host_id}` is listed twice"),
                ));
            }
        }
        if !(1..=100).contains(&self.policy.warn_at_pct) {
            return Err(field_error("policy.warn_at_pct", "1 to 100"));
        }
        if self.policy.grace_pct > GRACE_PCT_MAX {
            return Err(field_error(
                "policy.grace_pct",
                format!("0 to {GRACE_PCT_MAX}"),
            ));
        }
        Ok(())
    }

    /// Whether `name` is a licensed feature (exact match).
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|feature| feature == name)
    }

    /// Whether the document may be used on a host with id `host_id` (`None`: the host id is
    /// unknown). A document without host ids may be used anywhere.
    pub fn allows_host(&self, host_id: Option<&str>) -> bool {
        self.host_ids.is_empty()
            || host_id.is_some_and(|id| self.host_ids.iter().any(|h| h.eq_ignore_ascii_case(id)))
    }

    /// Whether this document should replace `other` (both verified, same license): a higher
    /// serial wins; at equal serials the later lease, then the later issue time (so a
    /// re-signed copy of the same serial with a longer lease still spreads).
    pub fn supersedes(&self, other: &Document) -> bool {
        let rank = |d: &Document| {
            (
                d.serial,
                d.signature_valid_until
                    .unwrap_or(WallTime::from_unix_ms(u64::MAX)),
                d.issued_at,
            )
        };
        rank(self) > rank(other)
    }

    /// The document the license server signs at a renewal, at `now`: serial + 1, issued
    /// now, the lease ending at `now + lease`, and for a subscription (when
    /// `subscription_period` is given, i.e. the contract is active) `valid_until` rolled
    /// forward to at least `now + subscription_period`. Other kinds keep their
    /// validity. Sign the result with [`crate::sign`] (the key may be a newer one).
    pub fn renewed(
        &self,
        now: WallTime,
        lease: Duration,
        subscription_period: Option<Duration>,
    ) -> Result<Document, DocumentError> {
        let mut next = self.clone();
        next.serial = self
            .serial
            .checked_add(1)
            .filter(|&serial| serial <= SERIAL_MAX)
            .ok_or_else(|| field_error("serial", "cannot grow any further"))?;
        next.issued_at = now;
        next.signature_valid_until = Some(now + lease);
        if let (Kind::Subscription, Some(period)) = (self.kind, subscription_period) {
            let rolled = now + period;
            next.valid_until = Some(self.valid_until.map_or(rolled, |u| u.max(rolled)));
        }
        next.validate()?;
        Ok(next)
    }

    /// The body: canonical TOML, the exact bytes that are signed. Lines end in `\n` and
    /// never in a space, so the armor's normalization leaves it unchanged.
    pub fn to_body(&self) -> String {
        let mut body = String::with_capacity(1024);
        let line = |body: &mut String, key: &str, value: &str| {
            let _ = writeln!(body, "{key} = {value}");
        };
        line(&mut body, "version", &FORMAT_VERSION.to_string());
        line(&mut body, "license_key", &toml_string(&self.license_key));
        line(&mut body, "customer", &toml_string(&self.customer));
        line(&mut body, "kind", &toml_string(self.kind.as_str()));
        line(&mut body, "serial", &self.serial.to_string());
        let time = |at: WallTime| toml_string(&format_rfc3339(at));
        line(&mut body, "issued_at", &time(self.issued_at));
        line(&mut body, "valid_from", &time(self.valid_from));
        if let Some(until) = self.valid_until {
            line(&mut body, "valid_until", &time(until));
        }
        if let Some(until) = self.signature_valid_until {
            line(&mut body, "signature_valid_until", &time(until));
        }
        line(&mut body, "key_id", &toml_string(&self.key_id.to_string()));
        line(&mut body, "features", &toml_list(&self.features));
        line(&mut body, "host_ids", &toml_list(&self.host_ids));
        body.push_str("\n[limits]\n");
        for (key, limit) in [
            ("calls", self.limits.calls),
            ("subscribers", self.limits.subscribers),
            ("registered_subscribers", self.limits.registered_subscribers),
        ] {
            match limit {
                Some(limit) => line(&mut body, key, &limit.to_string()),
                None => {
                    let _ = writeln!(body, "# {key}: unlimited");
                }
            }
        }
        body.push_str("\n[policy]\n");
        line(&mut body, "mode", &toml_string(self.policy.mode.as_str()));
        line(
            &mut body,
            "warn_at_pct",
            &self.policy.warn_at_pct.to_string(),
        );
        line(&mut body, "grace_pct", &self.policy.grace_pct.to_string());
        line(
            &mut body,
            "emergency_exempt",
            &self.policy.emergency_exempt.to_string(),
        );
        body
    }

    /// Parses and validates a body. Any TOML that fits the schema is accepted (comments,
    /// key order, layout are free); unknown keys, a missing `version` or another version
    /// are refused.
    pub fn from_body(body: &str) -> Result<Document, DocumentError> {
        let raw = RawDocument::parse(body)?;
        match raw.version {
            Some(version) if version == i64::from(FORMAT_VERSION) => {}
            Some(version) => {
                return Err(field_error(
                    "version",
                    format!(
                        "version {version} is not supported (this build reads {FORMAT_VERSION})"
                    ),
                ));
            }
            None => return Err(field_error("version", "required")),
        }
        let key_id = raw
            .key_id
            .as_deref()
            .ok_or_else(|| field_error("key_id", "required"))?;
        let key_id = key_id
            .parse()
            .map_err(|_| field_error("key_id", "expected 16 lower-case hex digits"))?;
        let issued_at = raw
            .issued_at
            .as_deref()
            .ok_or_else(|| field_error("issued_at", "required"))?;
        let issued_at = timestamp("issued_at", issued_at)?;
        let valid_from = raw
            .valid_from
            .as_deref()
            .ok_or_else(|| field_error("valid_from", "required"))?;
        if raw.lease_days.is_some() {
            return Err(field_error(
                "lease_days",
                "only in a spec; a document names signature_valid_until",
            ));
        }
        let document = Document {
            license_key: raw.license_key,
            customer: raw.customer,
            kind: raw.kind,
            serial: raw.serial,
            issued_at,
            valid_from: timestamp("valid_from", valid_from)?,
            valid_until: optional_timestamp("valid_until", raw.valid_until.as_deref())?,
            signature_valid_until: optional_timestamp(
                "signature_valid_until",
                raw.signature_valid_until.as_deref(),
            )?,
            limits: raw.limits.into(),
            features: raw.features,
            host_ids: raw.host_ids,
            policy: raw.policy.into(),
            key_id,
        };
        document.validate()?;
        Ok(document)
    }
}

/// What the vendor writes to make a license: the document's fields minus `key_id` (the
/// signing key supplies it), with conveniences: `issued_at` defaults to the signing time,
/// `valid_from` to `issued_at`, and the lease may be given as `lease_days` (from
/// `issued_at`) instead of `signature_valid_until`. Times are RFC 3339 UTC strings.
///
/// ```toml
/// license_key = "ABCDEFGHI_123456789_a1b2c3d4e5f6"
/// customer = "Example Telecom"
/// kind = "term"
/// serial = 1
/// valid_until = "2030-01-01T00:00:00Z"
/// lease_days = 14
/// features = ["pbx"]
///
/// [limits]
/// calls = 10000
///
/// [policy]
/// mode = "enforce"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseSpec {
    raw: RawDocument,
}

impl LicenseSpec {
    /// Longest spec text, in bytes.
    pub const TEXT_LEN_MAX: usize = BODY_LEN_MAX;

    /// Parses a spec; problems with values are reported by [`LicenseSpec::to_document`].
    pub fn parse(text: &str) -> Result<LicenseSpec, DocumentError> {
        let raw = RawDocument::parse(text)?;
        if raw.key_id.is_some() {
            return Err(field_error(
                "key_id",
                "comes from the signing key, not the spec",
            ));
        }
        if raw.version.is_some_and(|v| v != i64::from(FORMAT_VERSION)) {
            return Err(field_error("version", "unsupported version"));
        }
        Ok(LicenseSpec { raw })
    }

    /// The document this spec describes, to be signed by the key `key_id` at `now`.
    pub fn to_document(&self, key_id: KeyId, now: WallTime) -> Result<Document, DocumentError> {
        let raw = &self.raw;
        let issued_at = optional_timestamp("issued_at", raw.issued_at.as_deref())?.unwrap_or(now);
        let valid_from =
            optional_timestamp("valid_from", raw.valid_from.as_deref())?.unwrap_or(issued_at);
        let signature_valid_until = match (raw.signature_valid_until.as_deref(), raw.lease_days) {
            (Some(_), Some(_)) => {
                return Err(field_error(
                    "lease_days",
                    "give either lease_days or signature_valid_until",
                ));
            }
            (Some(text), None) => Some(timestamp("signature_valid_until", text)?),
            (None, Some(days)) if days == 0 || days > 100 * 366 => {
                return Err(field_error("lease_days", "1 to 36600 days"));
            }
            (None, Some(days)) => Some(
                issued_at
                    + crate::timestamp::DAY.saturating_mul(u32::try_from(days).unwrap_or(u32::MAX)),
            ),
            (None, None) => None,
        };
        let document = Document {
            license_key: raw.license_key.clone(),
            customer: raw.customer.clone(),
            kind: raw.kind,
            serial: raw.serial,
            issued_at,
            valid_from,
            valid_until: optional_timestamp("valid_until", raw.valid_until.as_deref())?,
            signature_valid_until,
            limits: raw.limits.into(),
            features: raw.features.clone(),
            host_ids: raw.host_ids.clone(),
            policy: raw.policy.into(),
            key_id,
        };
        document.validate()?;
        Ok(document)
    }
}

/// The TOML shape shared by documents and specs; which keys each requires is checked by
/// the caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    version: Option<i64>,
    license_key: String,
    customer: String,
    kind: Kind,
    serial: u64,
    issued_at: Option<String>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    signature_valid_until: Option<String>,
    lease_days: Option<u64>,
    key_id: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    host_ids: Vec<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    policy: RawPolicy,
}

impl RawDocument {
    fn parse(text: &str) -> Result<RawDocument, DocumentError> {
        if text.len() > BODY_LEN_MAX {
            return Err(DocumentError::TooLong);
        }
        // The TOML parser bounds its own recursion ("recursion limit"), so deep nesting
        // is an error, not a stack overflow (tested below).
        toml::from_str(text).map_err(|e| DocumentError::Toml(e.message().to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    calls: Option<u64>,
    subscribers: Option<u64>,
    registered_subscribers: Option<u64>,
}

impl From<RawLimits> for Limits {
    fn from(raw: RawLimits) -> Limits {
        Limits {
            calls: raw.calls,
            subscribers: raw.subscribers,
            registered_subscribers: raw.registered_subscribers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<Mode>,
    warn_at_pct: Option<u8>,
    grace_pct: Option<u8>,
    emergency_exempt: Option<bool>,
}

impl From<RawPolicy> for Policy {
    fn from(raw: RawPolicy) -> Policy {
        let default = Policy::default();
        Policy {
            mode: raw.mode.unwrap_or(default.mode),
            warn_at_pct: raw.warn_at_pct.unwrap_or(default.warn_at_pct),
            grace_pct: raw.grace_pct.unwrap_or(default.grace_pct),
            emergency_exempt: raw.emergency_exempt.unwrap_or(default.emergency_exempt),
        }
    }
}

fn timestamp(field: &'static str, text: &str) -> Result<WallTime, DocumentError> {
    parse_rfc3339(text).map_err(|problem| field_error(field, problem))
}

fn optional_timestamp(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<WallTime>, DocumentError> {
    text.map(|text| timestamp(field, text)).transpose()
}

/// 1..=`len_max` bytes of `[A-Za-z0-9_.-]`.
fn check_token(field: &'static str, value: &str, len_max: usize) -> Result<(), DocumentError> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if value.is_empty() || value.len() > len_max || !value.as_bytes().iter().all(allowed) {
        return Err(field_error(
            field,
            format!("1 to {len_max} characters of A-Z a-z 0-9 _ . -"),
        ));
    }
    Ok(())
}

/// A TOML basic string: `"`, `\` and control characters escaped.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[]`, or one item per line (so a diff shows one changed feature as one changed line).
fn toml_list(items: &[String]) -> String {
    if items.is_empty() {
        return "[]".to_owned();
    }
    let mut out = String::from("[\n");
    for item in items {
        let _ = writeln!(out, "    {},", toml_string(item));
    }
    out.push(']');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A term license with every field set, for tests across the crate.
    pub(crate) fn sample() -> Document {
        Document {
            license_key: "ABCDEFGHI_123456789_a1b2c3d4e5f6".to_owned(),
            customer: "Example Telecom \"EU\" \\ Ltd".to_owned(),
            kind: Kind::Term,
            serial: 7,
            issued_at: WallTime::from_unix_ms(1_700_000_000_000),
            valid_from: WallTime::from_unix_ms(1_700_000_000_000),
            valid_until: Some(WallTime::from_unix_ms(1_893_456_000_000)),
            signature_valid_until: Some(WallTime::from_unix_ms(1_701_209_600_000)),
            limits: Limits {
                calls: Some(10_000),
                subscribers: Some(1_000_000),
                registered_subscribers: None,
            },
            features: vec!["pbx".to_owned(), "fax.t38".to_owned()],
            host_ids: vec!["00:16:3e:12:34:56".to_owned()],
            policy: Policy::default(),
            key_id: "0123456789abcdef".parse().expect("valid"),
        }
    }

    #[test]
    fn body_round_trips() {
        let document = sample();
        let body = document.to_body();
        assert_eq!(Document::from_body(&body), Ok(document.clone()));
        assert!(body.ends_with('\n'));
        assert!(body.lines().all(|l| !l.ends_with(' ')));
        assert!(body.contains("# registered_subscribers: unlimited\n"));

        let mut perpetual = document;
        perpetual.kind = Kind::Perpetual;
        perpetual.valid_until = None;
        perpetual.signature_valid_until = None;
        perpetual.features.clear();
        perpetual.host_ids.clear();
        perpetual.customer = "Ünïcødé\u{7f}".replace('\u{7f}', "");
        assert_eq!(Document::from_body(&perpetual.to_body()), Ok(perpetual));
    }

    #[test]
    fn policy_and_limits_default_when_absent() {
        let body = "version = 1\nlicense_key = \"K\"\ncustomer = \"C\"\nkind = \"perpetual\"\n\
                    serial = 0\nissued_at = \"2025-01-01T00:00:00Z\"\n\
                    valid_from = \"2025-01-01T00:00:00Z\"\nkey_id = \"0123456789abcdef\"\n";
        let document = Document::from_body(body).expect("valid");
        assert_eq!(document.policy, Policy::default());
        assert_eq!(document.limits, Limits::default());
        assert!(document.features.is_empty() && document.host_ids.is_empty());
    }

    #[track_caller]
    fn check_invalid(change: impl FnOnce(&mut Document), field: &str) {
        let mut document = sample();
        change(&mut document);
        match document.validate() {
            Err(DocumentError::Field { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error on {field}, got {other:?}"),
        }
        // The same problem is caught when parsing a body that says it.
        assert!(Document::from_body(&document.to_body()).is_err());
    }

    #[test]
    fn invariants_are_enforced() {
        check_invalid(|d| d.license_key.clear(), "license_key");
        check_invalid(|d| d.license_key = "A B".into(), "license_key");
        check_invalid(
            |d| d.license_key = "K".repeat(LICENSE_KEY_LEN_MAX + 1),
            "license_key",
        );
        check_invalid(|d| d.customer.clear(), "customer");
        check_invalid(|d| d.customer = "a\nb".into(), "customer");
        check_invalid(
            |d| d.customer = "c".repeat(CUSTOMER_LEN_MAX + 1),
            "customer",
        );
        check_invalid(|d| d.serial = SERIAL_MAX + 1, "serial");
        check_invalid(|d| d.valid_until = None, "valid_until");
        check_invalid(|d| d.valid_until = Some(d.valid_from), "valid_until");
        check_invalid(|d| d.kind = Kind::Perpetual, "valid_until");
        let mut late = sample();
        late.signature_valid_until = Some(TIMESTAMP_MAX.plus_ms(1));
        assert!(matches!(
            late.validate(),
            Err(DocumentError::Field {
                field: "signature_valid_until",
                ..
            })
        ));
        check_invalid(|d| d.limits.calls = Some(LIMIT_MAX + 1), "limits.calls");
        check_invalid(|d| d.features.push("pbx".into()), "features");
        check_invalid(|d| d.features.push("no spaces".into()), "features");
        check_invalid(
            |d| d.features = (0..=FEATURE_COUNT_MAX).map(|i| format!("f{i}")).collect(),
            "features",
        );
        check_invalid(|d| d.host_ids.push("00:16:3E:12:34:56".into()), "host_ids");
        check_invalid(|d| d.host_ids.push("a b".into()), "host_ids");
        check_invalid(|d| d.host_ids.push(String::new()), "host_ids");
        check_invalid(|d| d.policy.warn_at_pct = 0, "policy.warn_at_pct");
        check_invalid(|d| d.policy.warn_at_pct = 101, "policy.warn_at_pct");
        check_invalid(
            |d| d.policy.grace_pct = GRACE_PCT_MAX + 1,
            "policy.grace_pct",
        );
    }

    #[track_caller]
    fn check_body_error(body: &str, expected: &str) {
        let error = Document::from_body(body).expect_err(body).to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let good = sample().to_body();
        check_body_error(
            &good.replace("version = 1", "version = 2"),
            "version 2 is not supported",
        );
        check_body_error(&good.replace("version = 1\n", ""), "`version`: required");
        check_body_error(&format!("{good}extra = 1\n"), "unknown field");
        check_body_error(
            &good.replace("[policy]", "[policy]\nsurprise = true"),
            "unknown field",
        );
        check_body_error(
            &good.replace("kind = \"term\"", "kind = \"forever\""),
            "unknown variant",
        );
        check_body_error(&good.replace("serial = 7", "serial = -7"), "");
        check_body_error(
            &good.replace("2030-01-01T00:00:00Z", "2030-01-01"),
            "`valid_until`",
        );
        check_body_error(&good.replace("grace_pct = 10", "grace_pct = 300"), "");
        check_body_error(
            &good.replace("key_id = \"0123456789abcdef\"\n", ""),
            "`key_id`: required",
        );
        check_body_error(
            &good.replace("0123456789abcdef", "0123456789ABCDEF"),
            "`key_id`",
        );
        check_body_error("this is = not toml =", "TOML");
        check_body_error(&format!("a = {}", "[".repeat(30_000)), "TOML");
        check_body_error(&format!("{} = 1", vec!["a"; 30_000].join(".")), "TOML");
        check_body_error(&"#".repeat(BODY_LEN_MAX + 1), "longer than");
    }

    #[test]
    fn renewal_extends_the_lease_and_rolls_subscriptions() {
        let now = WallTime::from_unix_ms(1_800_000_000_000);
        let lease = 14 * crate::timestamp::DAY;
        let period = 30 * crate::timestamp::DAY;
        let term = sample();
        let renewed = term.renewed(now, lease, Some(period)).expect("valid");
        assert_eq!(renewed.serial, term.serial + 1);
        assert_eq!(renewed.issued_at, now);
        assert_eq!(renewed.signature_valid_until, Some(now + lease));
        assert_eq!(
            renewed.valid_until, term.valid_until,
            "a term does not roll"
        );
        assert!(renewed.supersedes(&term) && !term.supersedes(&renewed));

        let mut subscription = sample();
        subscription.kind = Kind::Subscription;
        subscription.valid_until = Some(now + crate::timestamp::DAY);
        let rolled = subscription
            .renewed(now, lease, Some(period))
            .expect("valid");
        assert_eq!(rolled.valid_until, Some(now + period));
        let lapsed = subscription.renewed(now, lease, None).expect("valid");
        assert_eq!(lapsed.valid_until, subscription.valid_until);

        let mut last = sample();
        last.serial = SERIAL_MAX;
        assert!(last.renewed(now, lease, None).is_err());
    }

    #[test]
    fn hosts_compare_case_insensitively() {
        let document = sample();
        assert!(document.allows_host(Some("00:16:3E:12:34:56")));
        assert!(!document.allows_host(Some("00:16:3e:12:34:57")));
        assert!(!document.allows_host(None));
        let mut unbound = document;
        unbound.host_ids.clear();
        assert!(unbound.allows_host(None) && unbound.allows_host(Some("anything")));
    }

    #[test]
    fn specs_fill_in_defaults() {
        let spec = LicenseSpec::parse(
            "license_key = \"K-1\"\ncustomer = \"C\"\nkind = \"subscription\"\nserial = 3\n\
             valid_until = \"2030-01-01T00:00:00Z\"\nlease_days = 14\n[limits]\ncalls = 10\n",
        )
        .expect("parses");
        let key_id: KeyId = "0123456789abcdef".parse().expect("valid");
        let now = WallTime::from_unix_ms(1_800_000_000_000);
        let document = spec.to_document(key_id, now).expect("valid");
        assert_eq!(document.issued_at, now);
        assert_eq!(document.valid_from, now);
        assert_eq!(
            document.signature_valid_until,
            Some(now + 14 * crate::timestamp::DAY)
        );
        assert_eq!(document.limits.calls, Some(10));
        assert_eq!(document.key_id, key_id);

        assert!(LicenseSpec::parse("key_id = \"0123456789abcdef\"\nlicense_key = \"K\"\ncustomer = \"C\"\nkind = \"term\"\nserial = 1\n").is_err());
        let both = LicenseSpec::parse(
            "license_key = \"K\"\ncustomer = \"C\"\nkind = \"perpetual\"\nserial = 1\n\
             lease_days = 1\nsignature_valid_until = \"2030-01-01T00:00:00Z\"\n",
        )
        .expect("parses");
        assert!(both.to_document(key_id, now).is_err());
    }
}

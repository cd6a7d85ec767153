//! The JSON the license server and its clients exchange, and the pure parsers for it.
//!
//! Both sides use these types, so the server and the agent cannot disagree about a field.
//! Every parser here is a pure function of bytes with a named size bound; none of them
//! panics on any input (the `lease_response` fuzz target holds [`parse_lease_response`] to
//! that and to the invariants on [`LeaseResponse`]).
//!
//! Times in a [`LeaseResponse`] are RFC 3339 UTC strings, exactly as in the license body
//! (`2030-01-01T00:00:00Z`); times in a [`UsageReport`] are Unix milliseconds, as in the
//! agent's own usage JSON.

use serde::{Deserialize, Serialize};
use tollgate_events::WallTime;
use tollgate_license::timestamp::{TIMESTAMP_MAX, format_rfc3339, parse_rfc3339};
use tollgate_license::{Document, KeyId, Kind, LICENSE_TEXT_LEN_MAX, LIMIT_MAX};

/// Longest lease response accepted: the longest license plus room for the envelope.
pub const LEASE_RESPONSE_LEN_MAX: usize = LICENSE_TEXT_LEN_MAX + 4 * 1024;
/// Longest usage report accepted.
pub const USAGE_REPORT_LEN_MAX: usize = 16 * 1024;
/// Longest lease request body accepted.
pub const LEASE_REQUEST_LEN_MAX: usize = 4 * 1024;
/// Longest error body a client reads.
pub const ERROR_BODY_LEN_MAX: usize = 4 * 1024;
/// Most deny codes in a usage report's `admissions_denied`.
pub const DENY_CODE_COUNT_MAX: usize = 32;
/// Longest deny code in a usage report, in bytes (`NOT_YET_VALID` is 13).
pub const DENY_CODE_LEN_MAX: usize = 32;
/// Longest node id in a report or lease request, in bytes.
pub const NODE_ID_LEN_MAX: usize = 128;
/// Longest agent version string, in bytes.
pub const AGENT_VERSION_LEN_MAX: usize = 64;

/// The path of the lease endpoint for `license_key` (already checked to be a license key).
pub fn lease_path(license_key: &str) -> String {
    format!("/api/v1/licenses/{license_key}/lease")
}

/// The path of the usage endpoint for `license_key`.
pub fn usage_path(license_key: &str) -> String {
    format!("/api/v1/licenses/{license_key}/usage")
}

/// Whether `text` is a well-formed license key (1 to 128 bytes of `A-Z a-z 0-9 _ . -`, the
/// rule of the license body) and safe as one URL path segment (not `.` or `..`).
pub fn is_license_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= tollgate_license::LICENSE_KEY_LEN_MAX
        && text.bytes().any(|b| b != b'.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The vendor's view of the customer's contract for a license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Contract {
    /// Leases are renewed and a subscription's `valid_until` rolls forward.
    Active,
    /// Leases are renewed but validity never grows: a subscription ends at its
    /// `valid_until`, after which the server answers 403 `contract_lapsed`.
    Lapsed,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::Active => "active",
            Contract::Lapsed => "lapsed",
        }
    }
}

/// Optional body of `POST /api/v1/licenses/{key}/lease` (an empty body is fine too): who
/// is asking, for the server's audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's Ed25519 public key (standard base64): the server binds it to the node at
    /// its first lease and checks the ledger entries against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

impl LeaseRequest {
    /// The JSON the agent sends.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The answer of `POST /api/v1/licenses/{key}/lease` (200).
///
/// **Invariant** (checked by [`parse_lease_response`], relied on by the fuzz target): the
/// envelope fields are those of the document in `license`, so a client may read them
/// without parsing the license; the license's signature is NOT checked here (that needs
/// the agent's trusted keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The armored, signed license text (`-----BEGIN TOLLGATE LICENSE-----` …).
    pub license: String,
    pub license_key: String,
    pub kind: Kind,
    pub serial: u64,
    #[serde(with = "key_id_text")]
    pub key_id: KeyId,
    #[serde(with = "rfc3339")]
    pub issued_at: WallTime,
    /// The lease end: the license is `LEASE_EXPIRED` from then on unless renewed.
    #[serde(with = "rfc3339")]
    pub signature_valid_until: WallTime,
    /// Absent for a perpetual license.
    #[serde(with = "rfc3339_option", default)]
    pub valid_until: Option<WallTime>,
    pub contract: Contract,
    /// False when the server answered with the document it signed moments ago (a repeated
    /// request within its reuse window), true when it signed a new serial for this request.
    pub renewed: bool,
    /// The server's clock when it answered (`server_time_ms`, Unix ms): the agent's trusted
    /// time (it reports `CLOCK_SKEW` when its own clock disagrees by more than its
    /// tolerance). Absent from older servers.
    #[serde(
        rename = "server_time_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub server_time: Option<WallTime>,
    /// The highest serial the server ever issued for this license key: the agent's
    /// rollback watermark (it refuses `ROLLBACK` any document below it). Absent from older
    /// servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_issued_max: Option<u64>,
}

/// The JSON body of every error answer of the license server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, low-cardinality reason: `missing_token`, `bad_token`, `token_revoked`,
    /// `token_expired`, `source_address_not_allowed`, `unknown_license`, `suspended`,
    /// `contract_lapsed`, `bad_request`, `throttled`, `internal`.
    pub error: String,
    /// One sentence for a human.
    pub message: String,
}

/// What a node counted, as sent in a usage report. Peaks are the highest values since the
/// previous report (since start for the first one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFigures {
    /// Active calls, emergency calls included.
    pub calls: u64,
    pub emergency_calls: u64,
    /// Provisioned subscribers (a platform-wide figure).
    pub subscribers: u64,
    /// Subscribers with at least one live registration.
    pub registered_subscribers: u64,
    #[serde(default)]
    pub peak_calls: u64,
    #[serde(default)]
    pub peak_emergency_calls: u64,
    #[serde(default)]
    pub peak_registered_subscribers: u64,
}

impl UsageFigures {
    fn check(&self, which: &'static str) -> Result<(), ResponseError> {
        let figures = [
            self.calls,
            self.emergency_calls,
            self.subscribers,
            self.registered_subscribers,
            self.peak_calls,
            self.peak_emergency_calls,
            self.peak_registered_subscribers,
        ];
        if figures.iter().any(|&f| f > LIMIT_MAX) {
            return Err(ResponseError::Field {
                field: which,
                problem: "a figure is larger than 2^40",
            });
        }
        Ok(())
    }
}

/// The body of `POST /api/v1/licenses/{key}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The reporting node (1 to 128 bytes, no control characters).
    pub node_id: String,
    /// The agent's version (at most 64 bytes, no control characters).
    pub agent_version: String,
    /// When the figures were read (`timestamp_ms`, Unix ms).
    #[serde(rename = "timestamp_ms")]
    pub timestamp: WallTime,
    /// Start of the period the peaks cover, the previous report (`since_ms`, Unix ms).
    #[serde(rename = "since_ms", default, skip_serializing_if = "Option::is_none")]
    pub since: Option<WallTime>,
    /// The serial of the license in force on the node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_serial: Option<u64>,
    /// This node's own figures.
    pub node: UsageFigures,
    /// The cluster-wide aggregate as this node sees it, when it is part of a mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<UsageFigures>,
    /// New calls this node denied admission during the period (`since_ms` to
    /// `timestamp_ms`; since the agent started for the first report), by deny code:
    /// `{"OVER_LIMIT": 4}`. Absent when none (and from agents before this field): a server
    /// reads absent as empty. At most [`DENY_CODE_COUNT_MAX`] codes of `A`–`Z` and `_`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub admissions_denied: std::collections::BTreeMap<String, u64>,
    /// The node's usage ledger entries not yet delivered, oldest first: each the standard
    /// base64 of one frame (docs/ledger.md). At most [`LEDGER_ENTRIES_PER_REPORT_MAX`], each
    /// at most [`LEDGER_ENTRY_TEXT_LEN_MAX`] characters. Absent from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger: Vec<String>,
}

/// Most ledger entries one usage report carries (the rest go in the next reports).
pub const LEDGER_ENTRIES_PER_REPORT_MAX: usize = 8;
/// Longest base64 text of one ledger frame (a 1 084-byte frame).
pub const LEDGER_ENTRY_TEXT_LEN_MAX: usize = 1448;

impl UsageReport {
    /// The JSON the agent sends.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks every bound documented on the fields.
    pub fn validate(&self) -> Result<(), ResponseError> {
        check_text("node_id", &self.node_id, 1, NODE_ID_LEN_MAX)?;
        check_text(
            "agent_version",
            &self.agent_version,
            0,
            AGENT_VERSION_LEN_MAX,
        )?;
        if self.timestamp > TIMESTAMP_MAX {
            return Err(ResponseError::Field {
                field: "timestamp_ms",
                problem: "after the year 9999",
            });
        }
        if self.since.is_some_and(|s| s > self.timestamp) {
            return Err(ResponseError::Field {
                field: "since_ms",
                problem: "later than timestamp_ms",
            });
        }
        if self.ledger.len() > LEDGER_ENTRIES_PER_REPORT_MAX
            || self
                .ledger
                .iter()
                .any(|e| e.is_empty() || e.len() > LEDGER_ENTRY_TEXT_LEN_MAX)
        {
            return Err(ResponseError::Field {
                field: "ledger",
                problem: "too many entries, or an entry of the wrong size",
            });
        }
        self.node.check("node")?;
        if let Some(cluster) = &self.cluster {
            cluster.check("cluster")?;
        }
        if self.admissions_denied.len() > DENY_CODE_COUNT_MAX
            || self.admissions_denied.keys().any(|code| {
                code.is_empty()
                    || code.len() > DENY_CODE_LEN_MAX
                    || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
        {
            return Err(ResponseError::Field {
                field: "admissions_denied",
                problem: "too many codes, or a code that is not A-Z and _",
            });
        }
        Ok(())
    }
}

fn check_text(
    field: &'static str,
    text: &str,
    len_min: usize,
    len_max: usize,
) -> Result<(), ResponseError> {
    if text.len() < len_min || text.len() > len_max {
        return Err(ResponseError::Field {
            field,
            problem: "wrong length",
        });
    }
    if text.chars().any(char::is_control) {
        return Err(ResponseError::Field {
            field,
            problem: "control characters",
        });
    }
    Ok(())
}

/// Why a body from the other side was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("body longer than {0} bytes")]
    TooLong(usize),
    #[error("not the expected JSON: {0}")]
    Json(String),
    #[error("the license in the response does not parse: {0}")]
    License(#[from] tollgate_license::FormatError),
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
    #[error("field {0} does not match the license document")]
    Mismatch(&'static str),
}

/// Parses and checks a lease response: size, JSON shape, the license text (armor and body,
/// not the signature), and that every envelope field equals the document's.
pub fn parse_lease_response(bytes: &[u8]) -> Result<LeaseResponse, ResponseError> {
    if bytes.len() > LEASE_RESPONSE_LEN_MAX {
        return Err(ResponseError::TooLong(LEASE_RESPONSE_LEN_MAX));
    }
    let response: LeaseResponse =
        serde_json::from_slice(bytes).map_err(|e| ResponseError::Json(e.to_string()))?;
    let parsed = tollgate_license::parse(response.license.as_bytes())?;
    response.check_against(&parsed.document)?;
    Ok(response)
}

impl LeaseResponse {
    /// The JSON the server sends.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The response describing `document`, signed as `license`.
    pub fn for_document(
        license: String,
        document: &Document,
        contract: Contract,
        renewed: bool,
    ) -> Option<LeaseResponse> {
        Some(LeaseResponse {
            license,
            license_key: document.license_key.clone(),
            kind: document.kind,
            serial: document.serial,
            key_id: document.key_id,
            issued_at: document.issued_at,
            signature_valid_until: document.signature_valid_until?,
            valid_until: document.valid_until,
            contract,
            renewed,
            server_time: None,
            serial_issued_max: None,
        })
    }

    /// Whether the envelope is that of `document` (see the type's invariant).
    pub fn check_against(&self, document: &Document) -> Result<(), ResponseError> {
        let checks = [
            ("license_key", self.license_key == document.license_key),
            ("kind", self.kind == document.kind),
            ("serial", self.serial == document.serial),
            ("key_id", self.key_id == document.key_id),
            ("issued_at", self.issued_at == document.issued_at),
            (
                "signature_valid_until",
                Some(self.signature_valid_until) == document.signature_valid_until,
            ),
            ("valid_until", self.valid_until == document.valid_until),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(ResponseError::Mismatch(field)),
            None => Ok(()),
        }
    }
}

/// Parses and checks a usage report (the server's side of the usage endpoint).
pub fn parse_usage_report(bytes: &[u8]) -> Result<UsageReport, ResponseError> {
    if bytes.len() > USAGE_REPORT_LEN_MAX {
        return Err(ResponseError::TooLong(USAGE_REPORT_LEN_MAX));
    }
    let report: UsageReport =
        serde_json::from_slice(bytes).map_err(|e| ResponseError::Json(e.to_string()))?;
    report.validate()?;
    Ok(report)
}

/// Parses a lease request body; an empty body is the default request.
pub fn parse_lease_request(bytes: &[u8]) -> Result<LeaseRequest, ResponseError> {
    if bytes.len() > LEASE_REQUEST_LEN_MAX {
        return Err(ResponseError::TooLong(LEASE_REQUEST_LEN_MAX));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(LeaseRequest::default());
    }
    let request: LeaseRequest =
        serde_json::from_slice(bytes).map_err(|e| ResponseError::Json(e.to_string()))?;
    if let Some(node_id) = &request.node_id {
        check_text("node_id", node_id, 1, NODE_ID_LEN_MAX)?;
    }
    if let Some(version) = &request.agent_version {
        check_text("agent_version", version, 0, AGENT_VERSION_LEN_MAX)?;
    }
    Ok(request)
}

/// Parses an error body, if it is one (clients show its message).
pub fn parse_error_body(bytes: &[u8]) -> Option<ErrorBody> {
    if bytes.len() > ERROR_BODY_LEN_MAX {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

mod rfc3339 {
    use super::{WallTime, format_rfc3339, parse_rfc3339};

    pub fn serialize<S: serde::Serializer>(at: &WallTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*at))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<WallTime, D::Error> {
        let text: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_option {
    use super::{WallTime, format_rfc3339, parse_rfc3339};

    pub fn serialize<S: serde::Serializer>(at: &Option<WallTime>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&format_rfc3339(*at)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<WallTime>, D::Error> {
        let text: Option<std::borrow::Cow<'de, str>> = serde::Deserialize::deserialize(d)?;
        text.map(|t| parse_rfc3339(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod key_id_text {
    use super::KeyId;

    pub fn serialize<S: serde::Serializer>(id: &KeyId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let text: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        text.parse::<KeyId>()
            .map_err(|_| serde::de::Error::custom("not a key id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::{LicenseSpec, SigningKey};

    const NOW: WallTime = WallTime::from_unix_ms(1_900_000_000_000);
    const MS: std::time::Duration = std::time::Duration::from_millis(1);

    fn signed(kind: &str) -> (String, Document) {
        let key = SigningKey::from_seed(&[3; 32]);
        let valid_until = if kind == "perpetual" {
            ""
        } else {
            "valid_until = \"2031-01-01T00:00:00Z\"\n"
        };
        let spec = LicenseSpec::parse(&format!(
            "license_key = \"K-1\"\ncustomer = \"C\"\nkind = \"{kind}\"\nserial = 7\n\
             {valid_until}lease_days = 14\n"
        ))
        .unwrap();
        let document = spec.to_document(key.key_id(), NOW).unwrap();
        (tollgate_license::sign(&document, &key).unwrap(), document)
    }

    fn response_json(kind: &str) -> Vec<u8> {
        let (text, document) = signed(kind);
        let response = LeaseResponse::for_document(text, &document, Contract::Active, true)
            .expect("has a lease");
        serde_json::to_vec(&response).unwrap()
    }

    #[test]
    fn lease_response_round_trips() {
        for kind in ["perpetual", "term", "subscription"] {
            let json = response_json(kind);
            let parsed = parse_lease_response(&json).unwrap();
            assert_eq!(serde_json::to_vec(&parsed).unwrap(), json);
            assert_eq!(parsed.serial, 7);
            assert_eq!(parsed.signature_valid_until, NOW.plus_ms(14 * 86_400_000));
        }
    }

    #[test]
    fn lease_response_times_are_rfc3339_text() {
        let value: serde_json::Value = serde_json::from_slice(&response_json("term")).unwrap();
        assert_eq!(value["valid_until"], "2031-01-01T00:00:00Z");
        assert_eq!(value["issued_at"], format_rfc3339(NOW));
        assert_eq!(value["contract"], "active");
        let value: serde_json::Value = serde_json::from_slice(&response_json("perpetual")).unwrap();
        assert!(value["valid_until"].is_null());
    }

    /// Each case changes one field of a good response; the parser must refuse it.
    #[test]
    fn lease_response_envelope_must_match_the_document() {
        let good: serde_json::Value = serde_json::from_slice(&response_json("term")).unwrap();
        let check = |field: &str, value: serde_json::Value, expected: &str| {
            let mut bad = good.clone();
            bad[field] = value;
            let error = parse_lease_response(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(error.to_string().contains(expected), "{field}: {error}");
        };
        check("serial", 8.into(), "serial does not match");
        check("license_key", "K-2".into(), "license_key does not match");
        check("kind", "perpetual".into(), "kind does not match");
        check("key_id", "0000000000000000".into(), "key_id does not match");
        check(
            "valid_until",
            serde_json::Value::Null,
            "valid_until does not match",
        );
        check(
            "signature_valid_until",
            "2030-01-01T00:00:00Z".into(),
            "signature_valid_until does not match",
        );
        check("issued_at", "2030-01-01T00:00:00+01:00".into(), "UTC time");
        check("license", "not a license".into(), "does not parse");
        check("contract", "cancelled".into(), "unknown variant");
    }

    #[test]
    fn lease_response_refuses_junk() {
        for junk in [
            &b""[..],
            b"{}",
            b"null",
            b"[1,2]",
            b"\xff\xfe",
            b"{\"license\": 1}",
        ] {
            assert!(parse_lease_response(junk).is_err(), "{junk:?}");
        }
        let long = vec![b' '; LEASE_RESPONSE_LEN_MAX + 1];
        assert_eq!(
            parse_lease_response(&long),
            Err(ResponseError::TooLong(LEASE_RESPONSE_LEN_MAX))
        );
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&response_json("subscription")).unwrap();
        value["added_in_a_later_version"] = 1.into();
        assert!(parse_lease_response(&serde_json::to_vec(&value).unwrap()).is_ok());
    }

    fn report() -> UsageReport {
        UsageReport {
            node_id: "sp1".into(),
            agent_version: "0.1.0".into(),
            timestamp: NOW,
            since: Some(NOW.minus_ms(300_000)),
            license_serial: Some(7),
            node: UsageFigures {
                calls: 10,
                peak_calls: 12,
                ..UsageFigures::default()
            },
            cluster: None,
            admissions_denied: [("OVER_LIMIT".to_owned(), 4)].into(),
            ledger: Vec::new(),
        }
    }

    #[test]
    fn usage_report_round_trips_and_checks_bounds() {
        let json = serde_json::to_vec(&report()).unwrap();
        assert_eq!(parse_usage_report(&json), Ok(report()));

        let check = |change: fn(&mut UsageReport), field: &str| {
            let mut bad = report();
            change(&mut bad);
            let error = parse_usage_report(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(error.to_string().contains(field), "{field}: {error}");
        };
        check(|r| r.node_id.clear(), "node_id");
        check(|r| r.node_id = "x".repeat(129), "node_id");
        check(|r| r.node_id = "a\nb".into(), "node_id");
        check(|r| r.agent_version = "v".repeat(65), "agent_version");
        check(|r| r.since = Some(NOW + MS), "since_ms");
        check(
            |r| r.timestamp = WallTime::from_unix_ms(u64::MAX),
            "timestamp_ms",
        );
        check(|r| r.node.calls = LIMIT_MAX + 1, "node");
        check(
            |r| {
                r.admissions_denied.insert("over limit".into(), 1);
            },
            "admissions_denied",
        );
        check(
            |r| {
                r.admissions_denied = (0..33).map(|i| ("X".repeat(i + 1), 1)).collect();
            },
            "admissions_denied",
        );
        check(
            |r| {
                r.cluster = Some(UsageFigures {
                    peak_registered_subscribers: u64::MAX,
                    ..UsageFigures::default()
                })
            },
            "cluster",
        );
    }

    #[test]
    fn usage_report_peaks_may_be_omitted() {
        let json = br#"{"node_id":"n","agent_version":"1","timestamp_ms":5,
            "node":{"calls":1,"emergency_calls":0,"subscribers":2,"registered_subscribers":3}}"#;
        let parsed = parse_usage_report(json).unwrap();
        assert_eq!(parsed.node.peak_calls, 0);
        assert_eq!(parsed.cluster, None);
        assert!(parsed.admissions_denied.is_empty());
        // And a report without denials says nothing about them (older servers see the
        // same JSON as before).
        let json = serde_json::to_string(&parsed).unwrap();
        assert!(!json.contains("admissions_denied"), "{json}");
    }

    #[test]
    fn lease_request_may_be_empty() {
        assert_eq!(parse_lease_request(b""), Ok(LeaseRequest::default()));
        assert_eq!(parse_lease_request(b" \n"), Ok(LeaseRequest::default()));
        let request = parse_lease_request(br#"{"node_id":"sp1","agent_version":"1"}"#).unwrap();
        assert_eq!(request.node_id.as_deref(), Some("sp1"));
        assert!(parse_lease_request(br#"{"node_id":""}"#).is_err());
    }

    #[test]
    fn license_keys_are_path_safe() {
        assert!(is_license_key("ABCDEFGHI_123456789_a1b2c3d4e5f6"));
        for bad in ["", ".", "..", "a/b", "a b", "..%2f", &"k".repeat(129), "é"] {
            assert!(!is_license_key(bad), "{bad:?}");
        }
    }
}

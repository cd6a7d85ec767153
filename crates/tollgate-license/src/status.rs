//! Stable status codes.

use std::fmt;
use std::str::FromStr;

/// A license status, overall or for one limit. The numeric value (`as u8`) is stable and
/// orders by precedence: when several apply, the highest is the overall status.
///
/// | code | value | meaning |
/// | --- | --- | --- |
/// | `OK` | 0 | valid, usage below every warning threshold |
/// | `WARNING` | 1 | a limit's usage is at or above `warn_at_pct` of it |
/// | `OVER_LIMIT` | 2 | a limit's usage is above the limit |
/// | `LEASE_EXPIRED` | 3 | the signature lease ended: renew |
/// | `EXPIRED` | 4 | past `valid_until` (term or subscription) |
/// | `NOT_YET_VALID` | 5 | before `valid_from` |
/// | `HOST_MISMATCH` | 6 | bound to other hosts |
/// | `ROLLBACK` | 7 | serial lower than the highest seen |
/// | `INVALID` | 8 | malformed, bad signature, unknown key, or the clock was set back |
/// | `NO_LICENSE` | 9 | no license at all (never combined with another) |
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum StatusCode {
    Ok = 0,
    Warning = 1,
    OverLimit = 2,
    LeaseExpired = 3,
    Expired = 4,
    NotYetValid = 5,
    HostMismatch = 6,
    Rollback = 7,
    Invalid = 8,
    NoLicense = 9,
}

impl StatusCode {
    /// Every code, in precedence order (index = numeric value).
    pub const ALL: [StatusCode; 10] = [
        StatusCode::Ok,
        StatusCode::Warning,
        StatusCode::OverLimit,
        StatusCode::LeaseExpired,
        StatusCode::Expired,
        StatusCode::NotYetValid,
        StatusCode::HostMismatch,
        StatusCode::Rollback,
        StatusCode::Invalid,
        StatusCode::NoLicense,
    ];

    /// The stable text code, e.g. `OVER_LIMIT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusCode::Ok => "OK",
            StatusCode::Warning => "WARNING",
            StatusCode::OverLimit => "OVER_LIMIT",
            StatusCode::LeaseExpired => "LEASE_EXPIRED",
            StatusCode::Expired => "EXPIRED",
            StatusCode::NotYetValid => "NOT_YET_VALID",
            StatusCode::HostMismatch => "HOST_MISMATCH",
            StatusCode::Rollback => "ROLLBACK",
            StatusCode::Invalid => "INVALID",
            StatusCode::NoLicense => "NO_LICENSE",
        }
    }

    /// The code with this numeric value.
    pub const fn from_u8(value: u8) -> Option<StatusCode> {
        if (value as usize) < StatusCode::ALL.len() {
            Some(StatusCode::ALL[value as usize])
        } else {
            None
        }
    }

    /// Whether `admit` can be denied with this code (every code but `OK` and `WARNING`).
    pub const fn can_deny(self) -> bool {
        (self as u8) >= (StatusCode::OverLimit as u8)
    }

    /// Whether this code says something about the license itself (not about usage).
    pub const fn is_license_problem(self) -> bool {
        (self as u8) >= (StatusCode::LeaseExpired as u8)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status code text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status code")]
pub struct UnknownStatusCode;

impl FromStr for StatusCode {
    type Err = UnknownStatusCode;

    fn from_str(text: &str) -> Result<StatusCode, UnknownStatusCode> {
        StatusCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .ok_or(UnknownStatusCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let expected = [
            "OK",
            "WARNING",
            "OVER_LIMIT",
            "LEASE_EXPIRED",
            "EXPIRED",
            "NOT_YET_VALID",
            "HOST_MISMATCH",
            "ROLLBACK",
            "INVALID",
            "NO_LICENSE",
        ];
        for (i, (code, text)) in StatusCode::ALL.into_iter().zip(expected).enumerate() {
            assert_eq!(code as usize, i);
            assert_eq!(StatusCode::from_u8(i as u8), Some(code));
            assert_eq!(code.as_str(), text);
            assert_eq!(code.to_string(), text);
            assert_eq!(text.parse(), Ok(code));
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<StatusCode>(&json).expect("parses"),
                code
            );
        }
        assert_eq!(StatusCode::from_u8(10), None);
        assert_eq!("ok".parse::<StatusCode>(), Err(UnknownStatusCode));
    }

    #[test]
    fn precedence_is_the_documented_order() {
        use StatusCode::*;
        let order = [Ok, Warning, OverLimit, LeaseExpired, Expired, NotYetValid];
        let order = [&order[..], &[HostMismatch, Rollback, Invalid]].concat();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]));
    }
}

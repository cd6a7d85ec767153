//! Signing, verifying, and deciding whether an authentic license is acceptable now.
//!
//! Two separate questions:
//! 1. **Is it authentic?** [`verify`]: armor and body well formed, key id trusted, signature
//!    good. The answer ([`VerifiedLicense`]) does not depend on time, host or history, so an
//!    expired or foreign license can still be displayed.
//! 2. **Is it acceptable here and now?** [`VerifiedLicense::check`] against a [`Context`]:
//!    the clock has not been set back, no rollback, this host is listed, already valid.
//!    Expiry and lease end are not refusals: they are statuses ([`crate::evaluate`]).

use std::time::Duration;

use tollgate_events::WallTime;

use crate::armor::{Armor, FormatError};
use crate::document::{Document, DocumentError, Mode};
use crate::keys::{KeyId, SigningKey, TrustedKeys};
use crate::status::StatusCode;
use crate::timestamp::format_rfc3339;

/// How far the clock may go back behind the latest time the agent recorded before a
/// license is refused: 5 minutes ("beyond 5 min" is refused, exactly 5 min is fine).
pub const CLOCK_BACK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a license text is not an authentic license.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed license: {0}")]
    Malformed(#[from] FormatError),
    #[error("signed by unknown key id {0}")]
    UnknownKey(KeyId),
    #[error("bad signature (key id {0})")]
    BadSignature(KeyId),
}

impl VerifyError {
    /// Always [`StatusCode::Invalid`].
    pub fn code(&self) -> StatusCode {
        StatusCode::Invalid
    }
}

/// Why an authentic license is not acceptable here and now. Checked in this order, which
/// is the status precedence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the clock was set back: it is {} but this agent already recorded {}",
        format_rfc3339(*now), format_rfc3339(*recorded)
    )]
    ClockSetBack { now: WallTime, recorded: WallTime },
    #[error("serial {serial} is lower than {serial_seen_max}, the highest seen (rollback)")]
    Rollback { serial: u64, serial_seen_max: u64 },
    #[error("not valid on this host (host id {})", host_id.as_deref().unwrap_or("unknown"))]
    HostNotListed { host_id: Option<String> },
    #[error("not valid before {}", format_rfc3339(*valid_from))]
    NotYetValid { valid_from: WallTime, now: WallTime },
}

impl Refusal {
    /// The status a refused license has: a clock set back makes it `INVALID` (there is no
    /// separate code; the explanation says why).
    pub fn code(&self) -> StatusCode {
        match self {
            Refusal::ClockSetBack { .. } => StatusCode::Invalid,
            Refusal::Rollback { .. } => StatusCode::Rollback,
            Refusal::HostNotListed { .. } => StatusCode::HostMismatch,
            Refusal::NotYetValid { .. } => StatusCode::NotYetValid,
        }
    }
}

/// Either question's "no".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl LicenseError {
    pub fn code(&self) -> StatusCode {
        match self {
            LicenseError::Verify(error) => error.code(),
            LicenseError::Refused(refusal) => refusal.code(),
        }
    }
}

/// What the verifier knows besides the license. All of it is passed in: this crate reads no
/// clock and no files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The current time (the wall clock, or a trusted clock while this one is skewed).
    pub now: WallTime,
    /// This host's id, if it has one (a host-bound license needs it).
    pub host_id: Option<&'a str>,
    /// The highest serial this agent has accepted (persisted), if any.
    pub serial_seen_max: Option<u64>,
    /// The latest time this agent recorded (persisted), if any.
    pub time_recorded_max: Option<WallTime>,
    /// The mode that applies when there is no acceptable license (none, invalid, refused):
    /// the agent's configuration, not the document's (default warn).
    pub unlicensed_mode: Mode,
}

impl Context<'static> {
    /// At `now`, with no host id, no history, and warn mode when unlicensed.
    pub fn at(now: WallTime) -> Context<'static> {
        Context {
            now,
            host_id: None,
            serial_seen_max: None,
            time_recorded_max: None,
            unlicensed_mode: Mode::Warn,
        }
    }
}

/// A license whose signature checked out against a trusted key. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLicense {
    document: Document,
    armored: String,
}

impl VerifiedLicense {
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// The canonical armored text (what to store, send over the mesh, show to the user).
    pub fn armored(&self) -> &str {
        &self.armored
    }

    pub fn key_id(&self) -> KeyId {
        self.document.key_id
    }

    /// Whether the license is acceptable in `context` (see the module doc). Expiry is not
    /// checked here.
    pub fn check(&self, context: &Context<'_>) -> Result<(), Refusal> {
        let document = &self.document;
        if let Some(recorded) = context.time_recorded_max
            && context.now.saturating_add(CLOCK_BACK_TOLERANCE) < recorded
        {
            return Err(Refusal::ClockSetBack {
                now: context.now,
                recorded,
            });
        }
        if let Some(serial_seen_max) = context.serial_seen_max
            && document.serial < serial_seen_max
        {
            return Err(Refusal::Rollback {
                serial: document.serial,
                serial_seen_max,
            });
        }
        if !document.allows_host(context.host_id) {
            return Err(Refusal::HostNotListed {
                host_id: context.host_id.map(str::to_owned),
            });
        }
        if context.now < document.valid_from {
            return Err(Refusal::NotYetValid {
                valid_from: document.valid_from,
                now: context.now,
            });
        }
        Ok(())
    }
}

/// Signs `document` with `key`: sets its `key_id` to the key's, validates it, and returns
/// the armored text. Deterministic (Ed25519), so the same document and key always give the
/// same text.
pub fn sign(document: &Document, key: &SigningKey) -> Result<String, DocumentError> {
    let mut document = document.clone();
    document.key_id = key.key_id();
    document.validate()?;
    let body = document.to_body();
    if body.len() > crate::document::BODY_LEN_MAX {
        return Err(DocumentError::TooLong);
    }
    let signature = key.sign_raw(&Armor::signed_message(key.key_id(), &body));
    let armor = Armor {
        body,
        key_id: key.key_id(),
        signature,
    };
    let text = armor.to_text();
    // Paired assertions: what we write, we read back identically.
    debug_assert_eq!(Armor::parse(text.as_bytes()).as_ref(), Ok(&armor));
    debug_assert_eq!(Document::from_body(&armor.body).as_ref(), Ok(&document));
    Ok(text)
}

/// A license text read without checking its signature: for display and diagnostics, never
/// for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLicense {
    pub armor: Armor,
    pub document: Document,
}

/// Reads a license text without checking the signature (see [`ParsedLicense`]).
pub fn parse(text: &[u8]) -> Result<ParsedLicense, FormatError> {
    let armor = Armor::parse(text)?;
    let document = Document::from_body(&armor.body)?;
    if document.key_id != armor.key_id {
        return Err(FormatError::KeyIdMismatch {
            body: document.key_id,
            armor: armor.key_id,
        });
    }
    Ok(ParsedLicense { armor, document })
}

/// Verifies a license text against the trusted keys: normalizes and splits the armor, looks
/// the key id up, checks the Ed25519 signature (strict) over [`Armor::signed_message`], and
/// only then parses the body, so unauthenticated bytes never reach the TOML parser.
pub fn verify(text: &[u8], trusted: &TrustedKeys) -> Result<VerifiedLicense, VerifyError> {
    let armor = Armor::parse(text)?;
    let key = trusted
        .get(&armor.key_id)
        .ok_or(VerifyError::UnknownKey(armor.key_id))?;
    let message = Armor::signed_message(armor.key_id, &armor.body);
    if !key.verify_raw(&message, &armor.signature) {
        return Err(VerifyError::BadSignature(armor.key_id));
    }
    let document = Document::from_body(&armor.body).map_err(FormatError::from)?;
    if document.key_id != armor.key_id {
        let mismatch = FormatError::KeyIdMismatch {
            body: document.key_id,
            armor: armor.key_id,
        };
        return Err(mismatch.into());
    }
    Ok(VerifiedLicense {
        document,
        armored: armor.to_text(),
    })
}

/// [`verify`], then [`VerifiedLicense::check`]: what an agent does before it replaces its
/// current license with an uploaded or fetched one.
pub fn verify_and_check(
    text: &[u8],
    trusted: &TrustedKeys,
    context: &Context<'_>,
) -> Result<VerifiedLicense, LicenseError> {
    let license = verify(text, trusted)?;
    license.check(context)?;
    Ok(license)
}

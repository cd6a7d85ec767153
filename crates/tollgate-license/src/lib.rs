//! Sans-IO signed licenses: what a license says, how it is written, signed and verified,
//! and what it means for a platform's usage right now.
//!
//! - [`document`]: the [`Document`] (license key, customer, kind, validity, signature lease,
//!   serial, limits, features, host ids, policy, key id), its canonical TOML body, and the
//!   vendor's [`LicenseSpec`].
//! - [`armor`]: the armored text form (`-----BEGIN TOLLGATE LICENSE-----`), its
//!   normalization (CRLF, trailing white space) and the signed message.
//! - [`keys`]: Ed25519 [`SigningKey`] / [`PublicKey`], their one-line file formats, key ids,
//!   and [`TrustedKeys`] for rotation.
//! - [`signing`]: [`sign`], [`verify()`] (is it authentic?) and
//!   [`VerifiedLicense::check`] (is it acceptable here and now? clock set back, rollback,
//!   host, not yet valid), kept apart so an expired license can still be shown.
//! - [`eval`]: [`evaluate`] → [`Evaluation`]: overall and per-limit [`StatusCode`],
//!   headroom, percentages, days to expiry and to lease end, plain-English explanations.
//! - [`admission`]: [`AdmissionPlan`] (computed by `evaluate`) and [`AdmissionGate`], one
//!   atomic word the ingest threads read to answer `admit` without a lock.
//! - [`display`]: the NGCP-style `Valid license: [KEY]: …` log line and the human summary.
//!
//! The byte-level format is specified in `docs/license-format.md`; a test keeps its example
//! verifying with its public key.
//!
//! ```
//! use tollgate_license::{Context, Usage, SigningKey, TrustedKeys, LicenseSpec, StatusCode};
//!
//! let key = SigningKey::from_seed(&[7; 32]);
//! let spec = LicenseSpec::parse(
//!     "license_key = \"K-1\"\ncustomer = \"Example\"\nkind = \"perpetual\"\nserial = 1\n\
//!      [limits]\ncalls = 100\n[policy]\nmode = \"enforce\"\n",
//! )?;
//! let now = tollgate_events::WallTime::from_unix_ms(1_800_000_000_000);
//! let text = tollgate_license::sign(&spec.to_document(key.key_id(), now)?, &key)?;
//!
//! let trusted = TrustedKeys::single(key.public_key());
//! let license = tollgate_license::verify(text.as_bytes(), &trusted)?;
//! let usage = Usage { calls: 95, ..Usage::default() };
//! let evaluation = tollgate_license::evaluate(Some(&license), &Context::at(now), &usage);
//! assert_eq!(evaluation.status, StatusCode::Warning);
//! assert!(evaluation.admission.decide(109, false).is_admit()); // the 110th call
//! assert!(!evaluation.admission.decide(110, false).is_admit()); // the 111th
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Invariants.**
//! - Only [`verify()`] makes a [`VerifiedLicense`]; its signature covers the domain
//!   separator, the key id and the exact body bytes; unauthenticated bytes never reach the
//!   TOML parser on that path.
//! - Every input has a named bound ([`BODY_LEN_MAX`], [`LICENSE_TEXT_LEN_MAX`],
//!   [`FEATURE_COUNT_MAX`], [`HOST_ID_COUNT_MAX`], [`TRUSTED_KEY_COUNT_MAX`], …); no input
//!   can make this crate panic.
//! - Whatever [`sign`] writes, [`parse`] reads back identically (asserted in debug builds).
//!
//! **What this crate deliberately lacks:** files, sockets, threads, logging and clocks. Time
//! comes in as a [`tollgate_events::WallTime`] (licenses are judged by the wall clock, or a
//! trusted one), durations as [`std::time::Duration`]; the documents keep RFC 3339 text and
//! the JSON views Unix milliseconds (`issued_at_ms`, `now_ms`, …). The highest serial seen
//! and the latest recorded time come in through [`Context`] and are persisted by the caller.
//! Entropy comes in as an argument too ([`SigningKey::generate_with`]). Its only tollgate
//! dependency is `tollgate-events`, for the time types.

pub mod admission;
pub mod armor;
pub mod display;
pub mod document;
pub mod eval;
pub mod keys;
pub mod signing;
pub mod status;
pub mod timestamp;

pub use admission::{AdmissionGate, AdmissionPlan, Decision, DenialCounters, calls_admit_max};
pub use armor::{Armor, FormatError, LICENSE_TEXT_LEN_MAX, SIGNATURE_CONTEXT, normalize};
pub use display::{log_line, summary, usage_report_line};
pub use document::{
    BODY_LEN_MAX, CUSTOMER_LEN_MAX, Document, DocumentError, FEATURE_COUNT_MAX, FEATURE_LEN_MAX,
    GRACE_PCT_MAX, HOST_ID_COUNT_MAX, HOST_ID_LEN_MAX, Kind, LICENSE_KEY_LEN_MAX, LIMIT_MAX,
    LicenseSpec, Limits, Mode, Policy, SERIAL_MAX,
};
pub use eval::{
    Evaluation, LimitStatus, LimitStatuses, Usage, evaluate, evaluate_refused, evaluate_rejected,
};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey, TRUSTED_KEY_COUNT_MAX, TrustedKeys};
pub use signing::{
    CLOCK_BACK_TOLERANCE, Context, LicenseError, ParsedLicense, Refusal, VerifiedLicense,
    VerifyError, parse, sign, verify, verify_and_check,
};
pub use status::StatusCode;

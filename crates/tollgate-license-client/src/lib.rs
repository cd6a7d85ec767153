//! The agent's side of the license server: fetch a lease, send usage reports, and decide
//! when to fetch next.
//!
//! - [`wire`]: the JSON both sides exchange ([`LeaseResponse`], [`UsageReport`],
//!   [`ErrorBody`]) and pure, bounded parsers for it ([`parse_lease_response`] is fuzzed).
//!   The license server uses this module too, so the two cannot drift apart.
//! - [`schedule`]: [`FetchSchedule`], a sans-IO schedule (at start, daily at a local time
//!   with jitter, early when the lease nears its end, exponential backoff with jitter after
//!   failures). Time and the UTC offset are arguments; tests inject them.
//! - `http` (feature `http`, on by default): [`LicenseClient`], reqwest with rustls, an
//!   explicit or system-wide proxy, an optional private CA, a source address to bind, and
//!   [`FetchError`] with a low-cardinality [`FetchError::reason`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate_license_client::{ClientConfig, LicenseClient};
//!
//! let config = ClientConfig::new(
//!     "https://licenses.example.com:7443".parse()?,
//!     "ABCDEFGHI_123456789_a1b2c3d4e5f6",
//!     "tg_…the token the vendor issued…",
//! );
//! let client = LicenseClient::new(config)?;
//! let lease = client.fetch_lease().await?;
//! // Verify and install `lease.license` with the agent's trusted keys.
//! println!("serial {} until {:?}", lease.serial, lease.signature_valid_until);
//! # Ok(()) }
//! ```
//!
//! **Boundary.** This crate never verifies a signature or installs a license: the agent
//! does (`LicenseManager::install`) with its trusted keys, so a compromised server or proxy
//! can at worst withhold a license, never grant one. It reads no clock and spawns no task:
//! the agent owns the loop (see [`schedule`] for the calling order).
//!
//! **What it deliberately lacks:** retries inside a request (the schedule retries),
//! caching, and any state on disk.

pub mod schedule;
pub mod wire;

#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use http::{
    CA_BUNDLE_LEN_MAX, CONNECT_TIMEOUT_MAX, ClientConfig, ClientError, FetchError, LicenseClient,
    TIMEOUT_DEFAULT,
};
#[cfg(feature = "http")]
pub use reqwest::Url;
pub use schedule::{FetchReason, FetchSchedule, LocalTime, NextFetch, Now, ScheduleConfig};
pub use wire::{
    Contract, ErrorBody, LEDGER_ENTRIES_PER_REPORT_MAX, LEDGER_ENTRY_TEXT_LEN_MAX, LeaseRequest,
    LeaseResponse, ResponseError, UsageFigures, UsageReport, parse_lease_response,
    parse_usage_report,
};
